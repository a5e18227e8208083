"""Records serialise to JSON without losing a digit: exact strings or exact JSON numbers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from budgetguard import BudgetManager
from budgetguard.compat import json_safe


def _manager() -> BudgetManager:
    budget_manager = BudgetManager("p")
    budget_manager.create_budget("10.00", "alice", "monthly")
    budget_manager.create_budget(1, "bob")
    for _ in range(3):  # 3 × $0.000018: the sum must stay exact
        budget_manager.update_cost(
            user="alice",
            model="gpt-3.5-turbo",
            input_text="hello world",
            output_text="it's a sunny day in san francisco",
        )
    return budget_manager


def test_records_hold_decimals_that_plain_json_refuses() -> None:
    """The gap users hit: ``json.dumps(user_dict)`` raises, because amounts are Decimal."""
    with pytest.raises(TypeError, match="Decimal"):
        json.dumps(_manager().user_dict)


def test_as_dict_json_safe_gives_exact_strings() -> None:
    """``as_dict(json_safe=True)`` dumps as is; every amount is its exact decimal string."""
    budget_manager = _manager()
    data = json.loads(json.dumps(budget_manager.as_dict(json_safe=True)))
    assert list(data) == ["alice", "bob"]
    alice = data["alice"]
    assert alice["current_cost"] == "0.000054" == str(3 * Decimal("0.000018"))
    assert alice["model_cost"] == {"gpt-3.5-turbo": "0.000054"}
    assert alice["total_budget"] == "10"
    assert Decimal(alice["current_cost"]) == budget_manager.get_current_cost("alice")
    assert isinstance(alice["created_at"], float)  # timestamps stay numbers, as in LiteLLM
    assert budget_manager.as_dict() == budget_manager.user_dict  # the default keeps Decimal


def test_json_safe_any_record_and_tiny_amounts() -> None:
    """``json_safe`` takes any returned record; a nano-dollar reads 0.000000001, not 1E-9."""
    budget_manager = BudgetManager("p")
    budget_manager.create_budget(1, "u")
    budget_manager.update_cost(user="u", model="text-embedding-3-small", input_text="a")
    record = budget_manager.update_cost(user="u", model="text-embedding-3-small", input_text="a")
    safe = json_safe(record)
    cost = budget_manager.get_current_cost("u")
    assert cost < Decimal("0.0001") and "E" in str(cost)  # what default=str would write
    assert json.loads(json.dumps(safe))["user"]["current_cost"] == format(cost, "f")
    assert "E" not in safe["user"]["current_cost"]


def test_to_json_writes_exact_numbers() -> None:
    """``to_json()`` writes amounts as JSON numbers with every digit; read with Decimal, exact."""
    budget_manager = _manager()
    text = budget_manager.to_json(indent=2)
    assert '"current_cost": 0.000054' in text
    again = json.loads(text, parse_float=Decimal)
    for user, record in budget_manager.user_dict.items():
        for amount in ("total_budget", "current_cost", "model_cost"):
            assert again[user][amount] == record[amount]


def test_default_str_recipe_round_trips() -> None:
    """The migration guide's one-liner, ``json.dumps(record, default=str)``, keeps amounts exact."""
    budget_manager = _manager()
    text = json.dumps(budget_manager.user_dict, default=str)
    assert Decimal(json.loads(text)["alice"]["current_cost"]) == Decimal("0.000054")
