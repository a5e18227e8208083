"""A call refused by budgetguard.max_budget reaches the guard's listeners."""

from __future__ import annotations

from typing import Any

import pytest

import budgetguard as bg


class Refusals:
    """Collect the refusals a guard reports (only call_refused matters here)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    def call_refused(self, error: Any, *, user: str | None, request_model: str | None) -> None:
        self.seen.append((error.budget, user, request_model))

    def call_ended(self, outcome: Any) -> None:
        pass

    def threshold_crossed(self, crossing: Any) -> None:
        pass

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        pass


def test_max_budget_refusal_is_reported_to_listeners() -> None:
    """The process cap's refusal is told to listeners with the scope's user and the model."""
    guard = bg.BudgetGuard(metrics=False)
    refusals = Refusals()
    guard.add_listener(refusals)
    bg.max_budget = 0.001
    call = guard.budgeted(cost=lambda result: "0.002", model="gpt-4o")(lambda: None)
    with bg.budget_scope("alice"):
        call()
        with pytest.raises(bg.BudgetExceededError) as refused:
            call()
    assert refused.value.max_budget == refused.value.limit
    assert refusals.seen == [("max_budget", "alice", "gpt-4o")]
