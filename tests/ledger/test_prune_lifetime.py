"""prune(lifetime=True) sheds the lifetime tallies of idle users without a budget, per backend."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from budgetguard import BudgetGuard
from budgetguard.cli import main
from budgetguard.ledger import Ledger

from .conftest import Clock


def at(clock: Clock, *when: int) -> None:
    """Set the clock to a UTC instant."""
    clock.now = datetime(*when, tzinfo=timezone.utc).timestamp()


def keys_of(guard: BudgetGuard, user: str) -> set[str]:
    """Return every ledger key that names ``user``."""
    return {key for key in guard.ledger.scan("") if f"u={user}" in key or f"user:{user}" in key}


MARCH = datetime(2026, 3, 1, tzinfo=timezone.utc)


def spend_in_january_and_march(guard: BudgetGuard, clock: Clock) -> None:
    """bob and erin spend in January only; carol (her own budget) too; dave in March."""
    at(clock, 2026, 1, 10, 12)
    guard.set_budget("10", user="carol", period=None)  # lifetime: her own budget
    guard.set_default_budget("5", period="monthly")
    for user in ("bob", "carol", "erin"):
        guard.record_spend("1", user=user, model="gpt-4o")
    guard.record_spend("1", model="gpt-4o")  # a call without a user
    at(clock, 2026, 3, 5, 12)
    guard.record_spend("2", user="dave", model="gpt-4o")


def test_lifetime_prune_drops_idle_users_without_a_budget_and_keeps_the_rest(
    make_ledger: Callable[..., Ledger], clock: Clock
) -> None:
    """bob's lifetime tallies go; carol (own budget), dave (active), everyone's totals stay."""
    guard = BudgetGuard(make_ledger(), clock=clock, metrics=False, budget_cache_ttl=0)
    spend_in_january_and_march(guard, clock)
    lifetime_bob = {"t|u=bob", "t|u=bob|m=gpt-4o"}
    assert lifetime_bob <= keys_of(guard, "bob")

    assert guard.prune(MARCH) > 0
    assert keys_of(guard, "bob") == lifetime_bob  # without lifetime=True they stay

    removed = guard.prune(MARCH, lifetime=True)

    assert removed == 4  # bob's and erin's two tallies each
    assert keys_of(guard, "bob") == set()
    assert keys_of(guard, "erin") == set()
    assert {"t|u=carol", "t|u=carol|m=gpt-4o", "b|user:carol|all"} <= keys_of(guard, "carol")
    assert "t|u=dave" in keys_of(guard, "dave")
    totals = guard.ledger.balances(["t|", "t|m=gpt-4o", "t|u="])
    assert {key: balance.spent for key, balance in totals.items()} == {
        "t|": 6 * 10**9,
        "t|m=gpt-4o": 6 * 10**9,
        "t|u=": 1 * 10**9,
    }
    assert guard.spend("carol") == Decimal(1)
    assert guard.remaining("carol") == Decimal(9)
    assert guard.spend("dave") == Decimal(2)
    # bob comes back: a new lifetime tally from zero.
    guard.record_spend("0.5", user="bob")
    assert guard.ledger.balances(["t|u=bob"])["t|u=bob"].spent == 5 * 10**8


def test_lifetime_prune_keeps_nothing_of_a_thousand_idle_users(
    make_ledger: Callable[..., Ledger], clock: Clock
) -> None:
    """The ledger grows with distinct users no more: after the prune no key names any of them."""
    guard = BudgetGuard(make_ledger(), clock=clock, metrics=False, budget_cache_ttl=0)
    at(clock, 2026, 1, 10, 12)
    for index in range(1000):
        guard.record_spend("0.001", user=f"visitor-{index}", model="gpt-4o")
    at(clock, 2026, 3, 5, 12)
    guard.prune(MARCH, lifetime=True)
    assert sorted(guard.ledger.scan("")) == ["t|", "t|m=gpt-4o"]
    assert guard.ledger.balances(["t|"])["t|"].spent == 10**9


def test_lifetime_prune_from_the_command_line(tmp_path: Path, clock: Clock) -> None:
    """budgetguard prune --lifetime sheds idle users' lifetime tallies and says how many."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    guard = BudgetGuard(url, clock=clock, metrics=False, budget_cache_ttl=0)
    spend_in_january_and_march(guard, clock)
    guard.close()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["prune", "--ledger", url, "--before", "2026-03-01", "--lifetime"])
    assert code == 0
    assert out.getvalue().startswith("pruned ")
    assert "idle users" in out.getvalue()
    reader = BudgetGuard(url, metrics=False)
    assert keys_of(reader, "bob") == set()
    assert "t|u=carol" in keys_of(reader, "carol")
    reader.close()
