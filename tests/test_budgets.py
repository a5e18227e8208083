"""Budgets: definitions, global and default budgets, and the spend queries."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgetguard import Budget, BudgetExceededError, BudgetGuard, charge


def test_set_and_get_a_user_budget(guard: BudgetGuard) -> None:
    """set_budget stores a user's budget that get_budget returns."""
    made = guard.set_budget("10.00", user="alice", period="monthly")
    found = guard.get_budget("alice")
    assert isinstance(found, Budget)
    assert found is made
    assert (found.limit, found.period.name, found.name, found.user) == (
        Decimal("10.00"),
        "monthly",
        "user:alice",
        "alice",
    )
    assert guard.get_budget("bob") is None
    assert guard.get_budget() is None


def test_set_and_get_the_global_budget(guard: BudgetGuard) -> None:
    """With no user, set_budget sets the global budget."""
    guard.set_budget("500", period="daily")
    found = guard.get_budget()
    assert found is not None
    assert (found.name, found.user, found.limit) == ("global", None, Decimal(500))


def test_delete_budget(guard: BudgetGuard) -> None:
    """delete_budget removes a budget and says whether there was one."""
    guard.set_budget("1", user="alice")
    guard.set_budget("2")
    assert guard.delete_budget("alice") is True
    assert guard.delete_budget("alice") is False
    assert guard.get_budget("alice") is None
    assert guard.delete_budget() is True
    assert guard.get_budget() is None


def test_deleted_budget_no_longer_refuses(guard: BudgetGuard) -> None:
    """After delete_budget a user's calls are not limited by it any more."""
    guard.set_budget("1", user="alice")
    guard.record_spend("1", user="alice")
    with pytest.raises(BudgetExceededError):
        guard._begin("alice", Decimal("0.1"))
    guard.delete_budget("alice")
    call = guard._begin("alice", Decimal("0.1"))
    guard._finish(call, Decimal("0.1"))
    assert guard.remaining("alice") is None


def test_list_budgets(guard: BudgetGuard) -> None:
    """budgets() lists the global, default and user budgets, sorted by name."""
    guard.set_budget("1", user="bob")
    guard.set_budget("2", user="alice")
    guard.set_budget("3")
    guard.set_default_budget("4")
    names = [budget.name for budget in guard.budgets()]
    assert names == ["default", "global", "user:alice", "user:bob"]


def test_global_budget_counts_every_user(guard: BudgetGuard) -> None:
    """The global budget adds up the spend of all users and refuses once it is spent."""
    guard.set_budget("1.00", period="monthly")
    guard.record_spend("0.40", user="alice")
    guard.record_spend("0.50", user="bob")
    guard.record_spend("0.05")
    assert guard.spend() == Decimal("0.95")
    assert guard.remaining() == Decimal("0.05")
    assert guard.remaining("carol") == Decimal("0.05")
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("carol", Decimal("0.10"))
    assert caught.value.budget == "global"
    assert caught.value.spent == Decimal("0.95")


def test_global_budget_refuses_calls_of_users_with_their_own_budget(guard: BudgetGuard) -> None:
    """A user's own budget does not exempt them from the global one."""
    guard.set_budget("1", period="daily")
    guard.set_budget("100", user="alice", period="daily")
    guard.record_spend("1", user="bob")
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("alice", Decimal("0.01"))
    assert caught.value.budget == "global"


def test_default_budget_applies_to_each_user_separately(guard: BudgetGuard) -> None:
    """Users without a budget each get their own copy of the default budget."""
    guard.set_default_budget("1.00", period="daily")
    guard.record_spend("0.80", user="alice")
    assert guard.spend("alice") == Decimal("0.80")
    assert guard.spend("bob") == Decimal(0)
    assert guard.remaining("bob") == Decimal("1.00")
    call = guard._begin("bob", Decimal("0.80"))
    guard._finish(call, Decimal("0.80"))
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("alice", Decimal("0.30"))
    assert caught.value.budget == "default (user:alice)"
    assert caught.value.user == "alice"


def test_own_budget_wins_over_the_default(guard: BudgetGuard) -> None:
    """A user with a budget of their own is not limited by the default."""
    guard.set_default_budget("1")
    guard.set_budget("5", user="vip")
    assert guard.budget_for("vip") is guard.get_budget("vip")
    assert guard.budget_for("nobody") is guard.get_default_budget()
    call = guard._begin("vip", Decimal(3))
    guard._finish(call, Decimal(3))
    assert guard.remaining("vip") == Decimal(2)
    assert guard.get_default_budget() is not None
    assert guard.delete_default_budget() is True
    assert guard.get_default_budget() is None
    assert guard.remaining("nobody") is None


def test_changing_a_limit_keeps_the_spend(guard: BudgetGuard) -> None:
    """Raising or lowering a limit keeps what was spent in the window."""
    guard.set_budget("1", user="alice", period="monthly")
    guard.record_spend("0.75", user="alice")
    guard.set_budget("2", user="alice", period="monthly")
    assert guard.spend("alice") == Decimal("0.75")
    assert guard.remaining("alice") == Decimal("1.25")
    guard.set_budget("0.5", user="alice", period="monthly")
    assert guard.spend("alice") == Decimal("0.75")
    assert guard.remaining("alice") == Decimal(0)
    with pytest.raises(BudgetExceededError):
        guard._begin("alice", 0)


def test_remaining_is_none_without_a_budget(guard: BudgetGuard) -> None:
    """remaining() is None when no budget applies."""
    guard.record_spend("3", user="alice")
    assert guard.remaining("alice") is None
    assert guard.remaining() is None


def test_remaining_is_the_tightest_budget(guard: BudgetGuard) -> None:
    """remaining(user) is the smaller of what is left of the user's and the global budget."""
    guard.set_budget("10", user="alice")
    guard.set_budget("3")
    guard.record_spend("2", user="bob")
    assert guard.remaining("alice") == Decimal(1)
    guard.record_spend("0.5", user="alice")
    assert guard.remaining("alice") == Decimal("0.5")
    guard.set_budget("100")
    assert guard.remaining("alice") == Decimal("9.5")


def test_remaining_counts_open_reservations(guard: BudgetGuard) -> None:
    """Money held by a call in flight is not available to others."""
    guard.set_budget("1", user="alice")
    call = guard._begin("alice", Decimal("0.4"))
    assert guard.remaining("alice") == Decimal("0.6")
    assert guard.spend("alice") == Decimal(0)
    guard._finish(call, Decimal("0.1"))
    assert guard.remaining("alice") == Decimal("0.9")


def test_spend_without_a_budget_is_the_lifetime_total(guard: BudgetGuard) -> None:
    """Spend is tracked even for users without a budget."""
    guard.record_spend("0.25", user="alice")
    guard.record_spend("0.5", user="bob")
    assert guard.spend("alice") == Decimal("0.25")
    assert guard.spend() == Decimal("0.75")


def test_spend_by_model(guard: BudgetGuard) -> None:
    """spend(model=) and spend_by_model() split spend by model."""
    guard.set_budget("10", user="alice", period="monthly")

    @guard.budgeted(user="alice")
    def call() -> None:
        charge("0.10", model="gpt-4o")
        charge("0.05", model="gpt-4o-mini")

    call()
    call()
    guard.record_spend("0.01", user="alice", model="claude|x")
    assert guard.spend("alice") == Decimal("0.31")
    assert guard.spend("alice", model="gpt-4o") == Decimal("0.30")
    assert guard.spend("alice", model="claude|x") == Decimal("0.01")
    assert guard.spend("alice", model="nothing") == Decimal(0)
    by_model = guard.spend_by_model("alice")
    assert by_model == {"gpt-4o": Decimal("0.30"), "claude|x": Decimal("0.01")}
    assert guard.spend_by_model("bob") == {}


def test_spend_by_model_without_a_budget(guard: BudgetGuard) -> None:
    """spend_by_model works for users and everyone when no budget is set."""
    guard.record_spend("1", user="alice", model="m1")
    guard.record_spend("2", user="bob", model="m2")
    assert guard.spend_by_model("alice") == {"m1": Decimal(1)}
    assert guard.spend_by_model() == {"m1": Decimal(1), "m2": Decimal(2)}
    assert guard.spend(model="m2") == Decimal(2)


def test_reset_a_user(guard: BudgetGuard) -> None:
    """reset(user) starts the user's current window at zero, models included."""
    guard.set_budget("1", user="alice")
    guard.set_budget("1", user="bob")
    guard.record_spend("1", user="alice", model="m")
    guard.record_spend("0.5", user="bob")
    guard.reset("alice")
    assert guard.spend("alice") == Decimal(0)
    assert guard.spend("alice", model="m") == Decimal(0)
    assert guard.spend_by_model("alice") == {}
    assert guard.spend("bob") == Decimal("0.5")
    guard._begin("alice", Decimal("0.9"))


def test_reset_the_global_budget(guard: BudgetGuard) -> None:
    """reset() with no user starts the global budget's window at zero."""
    guard.set_budget("1")
    guard.record_spend("1", user="alice")
    guard.reset()
    assert guard.spend() == Decimal(0)
    assert guard.remaining() == Decimal(1)


def test_budget_definition_round_trips(guard: BudgetGuard) -> None:
    """A budget's stored definition rebuilds the same budget."""
    budget = guard.set_budget("2.50", user="a|b", period="weekly", tz="Europe/Paris")
    again = Budget.from_dict(budget.name, budget.to_dict())
    assert again.same_definition(budget)
    assert again.limit == Decimal("2.50")


def test_user_id_must_be_a_string(guard: BudgetGuard) -> None:
    """A non-string user id is refused by set_budget."""
    with pytest.raises(ValueError, match="user"):
        guard.set_budget("1", user=42)  # type: ignore[arg-type]
