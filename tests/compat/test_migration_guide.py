"""The migration guide's warning and its watch-only recipes hold as written."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

import budgetguard as bg
from budgetguard import BudgetExceededError, ThresholdCrossing

from . import conftest

README = Path(__file__).resolve().parents[2] / "README.md"
MESSAGES = [{"role": "user", "content": "Hey, how's it going"}]


def _guide() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"^## Migrating from LiteLLM\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found is not None
    return found.group(1)


def test_guide_says_first_that_max_budget_is_enforced() -> None:
    """Before any list of differences, the guide warns that max_budget now refuses calls."""
    guide = _guide()
    warning = guide.index("**budgetguard enforces `max_budget`; LiteLLM 1.110 does not.**")
    assert warning < guide.index("Where LiteLLM is wrong or unsafe")
    assert "watch-only" in guide[warning : warning + 1500]
    assert "as in LiteLLM, this cap is checked" not in guide.lower()


def test_watch_only_cap_counts_and_refuses_nothing_until_lowered() -> None:
    """A far-off cap counts every call and refuses none; lowering it to the plan enforces."""
    guard = bg.BudgetGuard(metrics=False)
    completion = guard.budgeted(lambda **kw: conftest.completion(**kw))
    planned = Decimal("0.005")
    bg.max_budget = 1_000_000
    for _ in range(10):  # $0.00159 a call: three times the planned cap
        completion(model="gpt-4", messages=MESSAGES)
    assert bg._current_cost >= 3 * planned  # the warning's condition holds
    bg.max_budget = planned
    with pytest.raises(BudgetExceededError):
        completion(model="gpt-4", messages=MESSAGES)


def test_shared_budget_alert_fires_at_a_tenth_and_refuses_at_the_limit() -> None:
    """alert_thresholds=(0.1,) on a $50 budget: one alert past $5, no refusal before $50."""
    crossings: list[ThresholdCrossing] = []
    guard = bg.BudgetGuard(metrics=False, alert_thresholds=(0.1,), on_threshold=crossings.append)
    guard.set_budget("50")
    guard.record_spend("4.99")
    assert crossings == []
    guard.record_spend("0.02")
    guard.record_spend("40")
    assert [(c.fraction, c.limit) for c in crossings] == [(Decimal("0.1"), Decimal("50"))]
    guard._finish(guard._begin(None, Decimal("4.98")), Decimal("4.98"))  # $49.99: still allowed
    guard.record_spend("0.01")
    with pytest.raises(BudgetExceededError):
        guard._begin(None, Decimal("0.01"))
