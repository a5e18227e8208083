"""Metrics of a real BudgetGuard, read with budgetguard.testing.metrics_reader."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetguard import BudgetExceededError, BudgetGuard, ThresholdCrossing
from budgetguard.testing import ExportedMetrics, metrics_reader


@pytest.fixture
def exported() -> Iterator[ExportedMetrics]:
    """Give a private MeterProvider with an in-memory reader."""
    with metrics_reader() as exported:
        yield exported


def priced_call(guard: BudgetGuard) -> Any:
    """Return a guarded function whose cost is given by its argument."""

    # estimate=0: this function states each call's cost itself; holds are not under test.
    @guard.budgeted(user="user", estimate=0, cost=lambda result: result["cost"], model="gpt-4o")
    def call(user: str, cost: str, fail: bool = False) -> dict[str, str]:
        if fail:
            raise RuntimeError("the provider timed out")
        return {"cost": cost}

    return call


def openai_response(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """Return an OpenAI chat completion as a plain dict, usage included."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def test_known_sequence_with_refusal_failure_and_alerts(exported: ExportedMetrics) -> None:
    """A sequence of paid, failed and refused calls exports exact spend, refusals and alerts."""
    crossings: list[ThresholdCrossing] = []
    guard = BudgetGuard(
        ledger="memory://",
        meter_provider=exported.meter_provider,
        user_attribute="raw",
        alert_thresholds=["0.5", "0.8"],
        on_threshold=crossings.append,
    )
    guard.set_budget("1.00", user="alice", period="monthly")
    guard.set_budget("10", period="daily")
    call = priced_call(guard)
    call("alice", "0.30")
    call("alice", "0.30")  # 0.60: crosses 0.5
    with pytest.raises(RuntimeError):
        call("alice", "0", fail=True)
    call("alice", "0.30")  # 0.90: crosses 0.8
    call("alice", "0.01")  # 0.91: no new crossing
    with pytest.raises(BudgetExceededError):
        guard.budgeted(user="alice", estimate="0.20", model="gpt-4o")(lambda: None)()
    call("bob", "0.05")

    model = {"gen_ai.request.model": "gpt-4o"}
    assert exported.value("budgetguard.spend", {**model, "user.id": "alice"}) == pytest.approx(0.91)
    assert exported.value("budgetguard.spend", {"user.id": "bob"}) == pytest.approx(0.05)
    assert guard.spend(user="alice") == Decimal("0.91")

    (refused,) = exported.points("budgetguard.refusals")
    assert dict(refused.attributes) == {
        "budgetguard.budget": "user",
        "budgetguard.period": "monthly",
        "user.id": "alice",
        "gen_ai.request.model": "gpt-4o",
    }
    assert refused.value == 1

    assert [c.fraction for c in crossings] == [Decimal("0.5"), Decimal("0.8")]
    alerts = {
        p.attributes["budgetguard.threshold"]: p.value
        for p in exported.points("budgetguard.alerts")
    }
    assert alerts == {"0.5": 1, "0.8": 1}

    # Durations: every call that ran, the failed one under its error type;
    # the refused call never ran.
    assert exported.count("gen_ai.client.operation.duration", {"error.type": None}) == 5
    (failed,) = exported.points("gen_ai.client.operation.duration", {"error.type": "RuntimeError"})
    assert failed.count == 1

    alice = {"budgetguard.budget": "user", "user.id": "alice", "budgetguard.period": "monthly"}
    assert exported.value("budgetguard.budget.limit", alice) == 1
    assert exported.value("budgetguard.budget.spent", alice) == pytest.approx(0.91)
    assert exported.value("budgetguard.budget.remaining", alice) == pytest.approx(0.09)
    daily = {"budgetguard.budget": "global", "budgetguard.period": "daily"}
    (global_status,) = [s for s in guard.budget_statuses() if s.name == "global"]
    assert exported.value("budgetguard.budget.spent", daily) == float(global_status.spent)
    assert exported.value("budgetguard.budget.limit", daily) == 10
    assert exported.value("budgetguard.budget.reserved", daily) == 0


def test_usage_from_a_response_is_exported(exported: ExportedMetrics) -> None:
    """Tokens read from a provider response reach both token instruments, and spend matches."""
    guard = BudgetGuard(meter_provider=exported.meter_provider)

    @guard.budgeted(user="carol")
    def ask() -> dict[str, Any]:
        return openai_response(prompt=1000, completion=200, cached=400)

    ask()
    ask()
    attributes = {
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.operation.name": "chat",
    }
    assert float(guard.spend(user="carol")) == pytest.approx(
        exported.value("budgetguard.spend", attributes)
    )
    assert exported.value("budgetguard.spend") > 0
    kinds = {
        p.attributes["budgetguard.token.kind"]: p.value
        for p in exported.points("budgetguard.tokens", attributes)
    }
    assert kinds == {"input": 1200, "cached_input": 800, "output": 400}
    usage = exported.points("gen_ai.client.token.usage", {"gen_ai.token.type": "input"})
    assert [(p.count, p.sum) for p in usage] == [(2, 2000)]
    assert exported.value("gen_ai.client.token.usage", {"gen_ai.token.type": "output"}) == 400


def test_thresholds_fire_once_per_budget_window(exported: ExportedMetrics) -> None:
    """Spending on past a threshold does not count the same alert again."""
    guard = BudgetGuard(meter_provider=exported.meter_provider, alert_thresholds=["0.5"])
    guard.set_budget("1", period="daily")
    call = priced_call(guard)
    for _ in range(8):
        call("dave", "0.1")
    (point,) = exported.points("budgetguard.alerts")
    assert dict(point.attributes) == {
        "budgetguard.budget": "global",
        "budgetguard.period": "daily",
        "budgetguard.threshold": "0.5",
    }
    assert point.value == 1


def test_cardinality_cap_through_the_guard(exported: ExportedMetrics) -> None:
    """With max_users the guard's users beyond the cap share the overflow series."""
    guard = BudgetGuard(meter_provider=exported.meter_provider, user_attribute="raw", max_users=2)
    call = priced_call(guard)
    for i in range(5):
        call(f"u{i}", "0.01")
    values = {p.attributes["user.id"]: p.value for p in exported.points("budgetguard.spend")}
    assert values == pytest.approx({"u0": 0.01, "u1": 0.01, "_other": 0.03})


def test_hashed_users_through_the_guard(exported: ExportedMetrics) -> None:
    """Hashed users never show the raw id, in counters or budget gauges."""
    guard = BudgetGuard(
        meter_provider=exported.meter_provider, user_attribute="hashed", user_salt="pepper"
    )
    guard.set_budget("5", user="erin@example.com", period="monthly")
    priced_call(guard)("erin@example.com", "0.5")
    (spend,) = exported.points("budgetguard.spend")
    (limit,) = exported.points("budgetguard.budget.limit")
    assert spend.attributes["user.hash"] == limit.attributes["user.hash"]
    every_value = [
        str(value)
        for name in exported.names()
        for point in exported.points(name)
        for value in point.attributes.values()
    ]
    assert not any("erin" in value for value in every_value)


def test_two_guards_side_by_side(exported: ExportedMetrics) -> None:
    """Two guards on one provider both report; on their own providers they stay apart."""
    first = BudgetGuard(meter_provider=exported.meter_provider)
    second = BudgetGuard(meter_provider=exported.meter_provider)
    first.set_budget("10", period="daily")
    second.set_budget("20", period="daily")
    priced_call(first)("a", "0.25")
    priced_call(second)("b", "0.50")
    assert exported.value("budgetguard.spend") == pytest.approx(0.75)
    # Each guard's memory ledger holds its own global budget: two series, not one of $30.
    limits = {
        p.attributes["budgetguard.ledger"]: p.value
        for p in exported.points("budgetguard.budget.limit")
    }
    assert sorted(limits.values()) == [10, 20]
    assert all(label.startswith("memory://#") for label in limits)
    with metrics_reader() as other:
        third = BudgetGuard(meter_provider=other.meter_provider)
        priced_call(third)("c", "2")
        assert other.value("budgetguard.spend") == 2
    assert exported.value("budgetguard.spend") == pytest.approx(0.75)
    second.close()
    assert exported.value("budgetguard.spend") == pytest.approx(0.25)
    assert exported.value("budgetguard.budget.limit") == 10


def test_two_guards_on_one_shared_ledger_report_its_budgets_once(
    exported: ExportedMetrics, tmp_path: Path
) -> None:
    """Guards on one SQLite file read the same budgets: each gauge is one series, not doubled."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    first = BudgetGuard(url, meter_provider=exported.meter_provider)
    second = BudgetGuard(url, meter_provider=exported.meter_provider)
    first.set_budget("10", period="daily")
    second.set_budget("10", period="daily")
    priced_call(first)("a", "0.25")
    priced_call(second)("b", "0.50")
    assert exported.value("budgetguard.spend") == pytest.approx(0.75)
    (limit,) = exported.points("budgetguard.budget.limit")
    assert (limit.value, "budgetguard.ledger" in limit.attributes) == (10, False)
    (spent,) = exported.points("budgetguard.budget.spent")
    assert spent.value == pytest.approx(0.75)
    first.close()
    second.close()


def test_metrics_off_exports_nothing(exported: ExportedMetrics) -> None:
    """metrics=False creates no instruments and no listener."""
    guard = BudgetGuard(meter_provider=exported.meter_provider, metrics=False)
    priced_call(guard)("frank", "1")
    assert guard.telemetry is None
    assert exported.names() == set()


def test_listed_tags_reach_spend_and_refusals(exported: ExportedMetrics) -> None:
    """A scope's listed tag labels the spend and the refusals of its calls; others do not."""
    from budgetguard.telemetry import Telemetry

    guard = BudgetGuard(metrics=False)
    tel = Telemetry(guard, meter_provider=exported.meter_provider, tag_keys=["team"])
    guard.add_listener(tel)
    guard.set_budget("1", period="daily")
    call = priced_call(guard)
    with guard.budget_scope("alice", tags={"team": "search", "ticket": "T-1"}):
        call("alice", "0.40")
        with pytest.raises(BudgetExceededError):
            guard.budgeted(estimate="5", model="gpt-4o")(lambda: None)()
    team = {"budgetguard.tag.team": "search"}
    (spend,) = exported.points("budgetguard.spend")
    assert dict(spend.attributes) == {"gen_ai.request.model": "gpt-4o", **team}
    assert spend.value == pytest.approx(0.40)
    (refused,) = exported.points("budgetguard.refusals")
    assert refused.attributes["budgetguard.tag.team"] == "search"
