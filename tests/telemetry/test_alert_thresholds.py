"""Alert thresholds per budget: by name, by kind, and for every budget."""

from __future__ import annotations

from typing import Any

import pytest

from budgetguard import BudgetGuard, ConfigurationError, ThresholdCrossing


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
