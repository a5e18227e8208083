"""Cached windows follow the clock both ways."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from budgetguard import BudgetGuard


def test_a_clock_stepping_back_charges_the_earlier_window(
    clock: Any, clocked_guard: BudgetGuard
) -> None:
    """After the clock steps back across a month boundary, spend lands in the earlier month."""
    guard = clocked_guard
    guard.set_budget("10", user="alice", period="monthly")
    charge = guard.budgeted(user="alice", cost=lambda result: "1")(lambda: None)
    clock.set(datetime(2026, 2, 1, 0, 30, tzinfo=timezone.utc))
    charge()
    clock.set(datetime(2026, 1, 31, 23, 30, tzinfo=timezone.utc))
    charge()
    charge()
    assert guard.spend("alice") == Decimal(2)
    clock.set(datetime(2026, 2, 1, 1, 0, tzinfo=timezone.utc))
    assert guard.spend("alice") == Decimal(1)


def test_budget_window_of_a_past_instant_is_that_instants_window() -> None:
    """Budget.window(now) for an instant before the cached window returns the earlier window."""
    guard = BudgetGuard(metrics=False)
    budget = guard.set_budget("1", period="daily")
    late = datetime(2026, 3, 2, 12, tzinfo=timezone.utc).timestamp()
    early = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()
    assert budget.window(late).id == "2026-03-02"
    assert budget.window(early).id == "2026-03-01"
