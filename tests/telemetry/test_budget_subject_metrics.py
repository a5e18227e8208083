"""Budget gauges over every subject, unit and mode, read through the OpenTelemetry SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from budgetguard import BudgetExceededError, BudgetGuard
from budgetguard.testing import ExportedMetrics, metrics_reader


@pytest.fixture
def exported() -> Iterator[ExportedMetrics]:
    """Give a private MeterProvider with an in-memory reader."""
    with metrics_reader() as exported:
        yield exported


def response(given: int = 200, written: int = 100) -> dict[str, Any]:
    """Return an OpenAI chat completion of gpt-4o-mini that reports its usage."""
    return {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": given, "completion_tokens": written},
    }


def series(exported: ExportedMetrics, name: str) -> dict[tuple[Any, ...], float]:
    """Return metric ``name``'s points by (budget, unit, mode, user.id)."""
    found: dict[tuple[Any, ...], float] = {}
    for point in exported.points(name):
        attributes = dict(point.attributes)
        key = (
            attributes["budgetguard.budget"],
            attributes["budgetguard.unit"],
            attributes["budgetguard.mode"],
            attributes.get("user.id"),
        )
        assert key not in found, f"two series of {name} for {key}"
        found[key] = point.value
    return found


def budgets_of_every_kind(guard: BudgetGuard) -> None:
    """Set dollar, token, request and concurrency budgets on users, tags and models."""
    guard.set_budget("100", period="daily")
    guard.set_budget("10", user="alice", period="monthly")
    guard.set_budget("1", user="alice", period="daily", label="daily")
    guard.set_budget("20", user="bob", period="monthly")
    guard.set_budget("50", tag="team=search", period="monthly")
    guard.set_budget("5", tag="tenant=*", period="daily")  # one window per tenant: no gauge
    guard.set_default_budget("2", period="monthly")  # one window per user: no gauge
    guard.set_budget(5000, model="gpt-4o*", unit="tokens", period=60)
    guard.set_budget(2, tag="team=search", unit="requests", period=60, mode="shadow")
    guard.set_budget(3, user="alice", unit="concurrency")


def test_each_budget_is_one_series_in_its_own_unit(exported: ExportedMetrics) -> None:
    """Dollar budgets on the USD gauges, counts on the quota gauges, none summed with another."""
    guard = BudgetGuard(meter_provider=exported.meter_provider, user_attribute="raw")
    budgets_of_every_kind(guard)
    call = guard.budgeted(
        user="alice", estimate="0.01", cost=lambda _: "0.01", model="gpt-4o-mini", tokens=(200, 100)
    )(response)
    with guard.budget_scope("alice", tags={"team": "search", "tenant": "acme"}):
        for _ in range(5):
            call()

    usd = ("usd", "hard")
    assert series(exported, "budgetguard.budget.limit") == {
        ("global", *usd, None): 100,
        ("user", *usd, "alice"): 10,
        ("daily@user", *usd, "alice"): 1,
        ("user", *usd, "bob"): 20,
        ("tag:team=search", *usd, None): 50,
    }
    spent = series(exported, "budgetguard.budget.spent")
    assert spent[("tag:team=search", *usd, None)] == pytest.approx(0.05)
    assert spent[("user", *usd, "bob")] == 0
    assert exported.unit("budgetguard.budget.limit") == "USD"

    assert series(exported, "budgetguard.quota.limit") == {
        ("tokens@model:gpt-4o*", "tokens", "hard", None): 5000,
        ("requests@tag:team=search", "requests", "shadow", None): 2,
        ("concurrency@user", "concurrency", "hard", "alice"): 3,
    }
    used = series(exported, "budgetguard.quota.used")
    assert used[("tokens@model:gpt-4o*", "tokens", "hard", None)] == 5 * 300
    assert used[("requests@tag:team=search", "requests", "shadow", None)] == 5
    remaining = series(exported, "budgetguard.quota.remaining")
    assert remaining[("tokens@model:gpt-4o*", "tokens", "hard", None)] == 5000 - 1500
    assert remaining[("concurrency@user", "concurrency", "hard", "alice")] == 3
    assert exported.unit("budgetguard.quota.limit") == "{count}"

    # Only soft and shadow budgets count calls over: the shadow one had room for 2 of 5.
    assert series(exported, "budgetguard.budget.over") == {
        ("requests@tag:team=search", "requests", "shadow", None): 3
    }
    assert exported.unit("budgetguard.budget.over") == "{call}"


def test_without_the_user_attribute_only_budgets_of_other_subjects_have_gauges(
    exported: ExportedMetrics,
) -> None:
    """User budgets need their user value; tag, model and global budgets are exported as named."""
    guard = BudgetGuard(meter_provider=exported.meter_provider)
    budgets_of_every_kind(guard)
    assert {key[0] for key in series(exported, "budgetguard.budget.limit")} == {
        "global",
        "tag:team=search",
    }
    assert {key[0] for key in series(exported, "budgetguard.quota.limit")} == {
        "tokens@model:gpt-4o*",
        "requests@tag:team=search",
    }


def test_a_soft_budget_counts_the_calls_it_let_past_its_limit(exported: ExportedMetrics) -> None:
    """A soft dollar budget lets calls run past its limit; budget.over counts them."""
    guard = BudgetGuard(meter_provider=exported.meter_provider, alert_thresholds=[])
    guard.set_budget("0.02", tag="team=x", period="daily", mode="soft")
    call = guard.budgeted(estimate="0.01", cost=lambda _: "0.01")(lambda: None)
    with guard.budget_scope(tags={"team": "x"}):
        for _ in range(5):
            call()
    over = {("tag:team=x", "usd", "soft", None): 3}
    assert series(exported, "budgetguard.budget.over") == over
    assert series(exported, "budgetguard.budget.spent") == {
        ("tag:team=x", "usd", "soft", None): 0.05
    }


def test_refusals_name_a_per_value_budget_by_its_star(exported: ExportedMetrics) -> None:
    """A refusal by tag:tenant=* is counted under that name, never under the tenant's value."""
    guard = BudgetGuard(meter_provider=exported.meter_provider)
    guard.set_budget("0.01", tag="tenant=*", period="daily")
    guard.set_budget(1, model="gpt-4o*", unit="requests", period="daily")
    call = guard.budgeted(estimate="0.01", cost=lambda _: "0.01")(lambda: None)
    for tenant in ("a", "b", "c"):
        with guard.budget_scope(tags={"tenant": tenant}):
            call()
            with pytest.raises(BudgetExceededError):
                call()
    ask = guard.budgeted(estimate="0", cost=lambda _: "0", model="gpt-4o-mini")(lambda: None)
    ask()
    with pytest.raises(BudgetExceededError):
        ask()
    refusals = {
        point.attributes["budgetguard.budget"]: point.value
        for point in exported.points("budgetguard.refusals")
    }
    assert refusals == {"tag:tenant=*": 3, "requests@model:gpt-4o*": 1}
