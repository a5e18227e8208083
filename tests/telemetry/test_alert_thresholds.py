"""Alert thresholds per budget: by name, by kind, and for every budget."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from budgetguard import BudgetGuard, ConfigurationError, ThresholdCrossing
from budgetguard._alerts import FORECAST
from budgetguard.alerts import alert_payload


def spender(guard: BudgetGuard) -> Any:
    """Return a guarded function that costs what its argument says."""

    @guard.budgeted(user="user", estimate=0, cost=lambda result: result, model="gpt-4o")
    def call(user: str, cost: str) -> str:
        return cost

    return call


def crossings_of(thresholds: object) -> tuple[BudgetGuard, list[ThresholdCrossing]]:
    """Return a guard with a $1 global, a $1 alice and a $1 bob budget, and its crossings."""
    crossings: list[ThresholdCrossing] = []
    guard = BudgetGuard(metrics=False, alert_thresholds=thresholds, on_threshold=crossings.append)
    guard.set_budget("10", period="daily")
    guard.set_budget("1", user="alice", period="monthly")
    guard.set_budget("1", user="bob", period="monthly")
    return guard, crossings


def test_each_budget_alerts_at_its_own_thresholds() -> None:
    """A budget named in the mapping uses its own list; other users use the kind's list."""
    guard, crossings = crossings_of({"user:alice": ["0.25"], "user": ["0.9"], "global": ["0.5"]})
    call = spender(guard)
    call("alice", "0.30")
    call("bob", "0.30")
    assert [(c.budget, c.fraction) for c in crossings] == [("user:alice", 0.25)]
    call("bob", "0.65")  # bob at 0.95 of $1; global at 1.25 of $10
    assert [(c.budget, str(c.fraction)) for c in crossings[1:]] == [("user:bob", "0.9")]


def test_budgets_outside_the_mapping_have_no_alerts() -> None:
    """With only the global budget listed, users' budgets never alert."""
    guard, crossings = crossings_of({"global": ["0.1"]})
    spender(guard)("alice", "0.99")
    assert [(c.budget, str(c.fraction)) for c in crossings] == []
    spender(guard)("bob", "0.99")
    assert [(c.budget, str(c.fraction)) for c in crossings] == [("global", "0.1")]


def test_star_applies_to_every_budget_not_listed() -> None:
    """A "*" entry is the list of every budget the mapping does not name."""
    guard, crossings = crossings_of({"*": ["0.5"], "global": []})
    spender(guard)("alice", "0.6")
    assert [c.budget for c in crossings] == ["user:alice"]


def test_a_plain_list_still_applies_to_every_budget() -> None:
    """A list of fractions, as before, alerts on every budget."""
    guard, crossings = crossings_of(["0.05"])
    spender(guard)("alice", "0.6")
    assert sorted(c.budget for c in crossings) == ["global", "user:alice"]


@pytest.mark.parametrize("thresholds", [{"global": "0.5"}, {"global": ["-1"]}, {1: ["0.5"]}])
def test_bad_threshold_mappings_are_refused(thresholds: object) -> None:
    """A string instead of a list, a negative fraction or a non-string name raise."""
    with pytest.raises((ConfigurationError, ValueError)):
        BudgetGuard(metrics=False, alert_thresholds=thresholds)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_forecast_says_when_a_monthly_budget_runs_out() -> None:
    """$4 of $10 spent by 6 December runs out on the 16th at that rate; it alerts once."""
    start = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
    clock = Clock(start + 2 * 86400)  # 3 December: too early to tell
    crossings: list[ThresholdCrossing] = []
    guard = BudgetGuard(
        metrics=False, clock=clock, alert_thresholds=["forecast"], on_threshold=crossings.append
    )
    guard.set_budget("10", period="monthly")
    guard.charge("1", user="alice")
    assert crossings == []
    clock.now = start + 6 * 86400  # 7 December 00:00, 6 days in
    guard.charge("3", user="alice")  # $4 in 6 days: $10 after 15 days
    (crossing,) = crossings
    assert crossing.kind == "forecast"
    assert crossing.runs_out_at == datetime(2026, 12, 16, tzinfo=timezone.utc)
    assert crossing.id == "global|2026-12|forecast"
    guard.charge("1", user="alice")
    assert len(crossings) == 1


def test_no_forecast_when_the_budget_lasts_the_window() -> None:
    """Spend on pace to stay under the limit raises no forecast alert."""
    start = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
    crossings: list[ThresholdCrossing] = []
    guard = BudgetGuard(
        metrics=False,
        clock=Clock(start + 15 * 86400),
        alert_thresholds=["forecast"],
        on_threshold=crossings.append,
    )
    guard.set_budget("10", period="monthly")
    guard.charge("4", user="alice")  # $4 in 15 of 31 days: $8.27 by the end
    assert crossings == []


def test_forecast_text_names_the_day() -> None:
    """The alert's text says at this rate the budget runs out on a date."""
    crossing = ThresholdCrossing(
        budget="global",
        user=None,
        period="monthly",
        fraction=FORECAST,
        limit=Decimal(10),
        spent=Decimal(4),
        window="2026-12",
        kind="forecast",
        runs_out_at=datetime(2026, 12, 19, tzinfo=timezone.utc),
    )
    payload = alert_payload(crossing)
    assert payload["type"] == "budget.forecast"
    assert payload["text"].startswith("At this rate budget global runs out on 2026-12-19")
