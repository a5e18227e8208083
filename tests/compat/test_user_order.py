"""``get_users()`` and ``user_dict`` list users in the order they were created, as LiteLLM does."""

from __future__ import annotations

import json
from pathlib import Path

import budgetguard as bg
from budgetguard import BudgetManager
from budgetguard.compat.server import BudgetServer

CREATED = ["carol", "alice", "bob"]


def _create_all(budget_manager: BudgetManager) -> None:
    for user in CREATED:
        budget_manager.create_budget(10, user)


def test_local_users_in_creation_order() -> None:
    """Users come back in creation order, not sorted; creating one again keeps its place."""
    budget_manager = BudgetManager("p")
    _create_all(budget_manager)
    budget_manager.create_budget(20, "alice", "daily")  # a changed budget, same place
    budget_manager.create_budget(1, "aaron")
    expected = [*CREATED, "aaron"]
    assert budget_manager.get_users() == expected
    assert list(budget_manager.user_dict) == expected
    saved = json.loads(Path("p_user_cost.json").read_text())
    assert list(saved) == expected


def test_order_survives_the_file_and_a_shared_ledger(tmp_path: Path) -> None:
    """A new process reading the file, or sharing the ledger, sees the same order."""
    _create_all(BudgetManager("p"))
    assert BudgetManager("p").get_users() == CREATED  # imported from the file, in its order

    guard = bg.BudgetGuard(f"sqlite:///{tmp_path / 'spend.db'}", metrics=False)
    _create_all(BudgetManager("q", guard=guard, path=tmp_path / "q.json"))
    other = bg.BudgetGuard(f"sqlite:///{tmp_path / 'spend.db'}", metrics=False)
    second = BudgetManager("q", guard=other, path=tmp_path / "q2.json")
    second.create_budget(5, "aaron")
    assert second.get_users() == [*CREATED, "aaron"]


def test_litellm_file_order_is_kept() -> None:
    """An imported LiteLLM user_cost.json keeps its users in the file's order."""
    users = {name: {"total_budget": 1, "current_cost": 0} for name in ["zed", "amy", "kim"]}
    Path("user_cost.json").write_text(json.dumps(users))
    assert BudgetManager("p").get_users() == ["zed", "amy", "kim"]


def test_hosted_users_in_creation_order(server: BudgetServer) -> None:
    """Through ``budgetguard serve``, every client sees the users in creation order."""
    _create_all(BudgetManager("p", client_type="hosted", api_base=server.url))
    again = BudgetManager("p", client_type="hosted", api_base=server.url)
    assert again.get_users() == CREATED
    assert list(again.user_dict) == CREATED
