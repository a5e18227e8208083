"""BudgetExceededError: budgetguard's keyword form and LiteLLM's positional constructor."""

from __future__ import annotations

import pickle
from decimal import Decimal

import pytest

import budgetguard as bg
from budgetguard import BudgetExceededError


def test_litellm_positional_constructor() -> None:
    """``BudgetExceededError(current_cost, max_budget)`` builds, with LiteLLM's message."""
    error = BudgetExceededError(0.0015, 0.001)
    assert error.current_cost == Decimal("0.0015") and error.max_budget == Decimal("0.001")
    assert error.spent == Decimal("0.0015") and error.limit == Decimal("0.001")
    assert str(error) == "Budget has been exceeded! Current cost: 0.0015, Max budget: 0.001"
    assert error.message == str(error)
    assert error.budget == "max_budget" and error.user is None
    assert isinstance(error.current_cost, Decimal)


def test_litellm_message_and_keywords() -> None:
    """LiteLLM's optional message, positional or by keyword, replaces the default text."""
    assert str(BudgetExceededError(1, 2, "over")) == "over"
    error = BudgetExceededError(current_cost=3, max_budget="2.50", message="over again")
    assert str(error) == "over again" and error.max_budget == Decimal("2.50")


class TenantOverBudget(BudgetExceededError):
    """A subclass as code written for LiteLLM's error defines it."""

    def __init__(self, tenant: str, current_cost: float, max_budget: float) -> None:
        super().__init__(current_cost, max_budget)
        self.tenant = tenant
        self.current_cost = current_cost  # LiteLLM's __init__ assigns this too


def test_litellm_style_subclass_raises_and_is_caught() -> None:
    """A subclass written for LiteLLM's constructor raises, is caught and pickles as itself."""
    with pytest.raises(bg.BudgetGuardError) as caught:
        raise TenantOverBudget("acme", 12.5, 10.0)
    error = caught.value
    assert isinstance(error, TenantOverBudget)
    assert error.current_cost == Decimal("12.5") and error.remaining == 0
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is TenantOverBudget and again.tenant == "acme"
    assert again.current_cost == Decimal("12.5") and str(again) == str(error)


def test_keyword_form_unchanged() -> None:
    """budgetguard's keyword form still builds its own message and pickles."""
    error = BudgetExceededError(
        budget="user:alice",
        user="alice",
        limit=Decimal("1"),
        spent=Decimal("0.9"),
        reserved=Decimal("0.05"),
        requested=Decimal("0.1"),
        period="monthly",
    )
    assert str(error).startswith("budget user:alice (monthly) for user 'alice' exceeded")
    assert error.message == str(error) and error.remaining == Decimal("0.05")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is BudgetExceededError and again.__dict__ == error.__dict__


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ((1,), {}, "both current_cost and max_budget"),
        ((1, 2), {"budget": "global"}, "not both"),
        ((), {"budget": "global"}, "missing limit"),
        (("lots", 2), {}, "current_cost must be a number"),
        ((1, True), {}, "max_budget must be a number"),
    ],
)
def test_bad_constructor_calls_are_clear(
    args: tuple[object, ...], kwargs: dict[str, object], words: str
) -> None:
    """A half-given or mixed constructor call raises TypeError saying what is wrong."""
    with pytest.raises(TypeError, match=words):
        BudgetExceededError(*args, **kwargs)  # type: ignore[call-overload]
