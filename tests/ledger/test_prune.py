"""Pruning drops the counters of past windows on every backend and keeps what still counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from budgetguard import BudgetExceededError, BudgetGuard
from budgetguard.ledger import Ledger

from .conftest import Clock


def at(clock: Clock, *when: int) -> None:
    """Set the clock to a UTC instant."""
    clock.now = datetime(*when, tzinfo=timezone.utc).timestamp()


def test_prune_drops_past_windows_and_keeps_current_and_lifetime(
    make_ledger: Callable[..., Ledger], clock: Clock
) -> None:
    """January's window and day counters go; March's window and the lifetime totals stay."""
    guard = BudgetGuard(make_ledger(), clock=clock, metrics=False, budget_cache_ttl=0)
    at(clock, 2026, 1, 10, 12)
    guard.set_budget("10", user="alice", period="monthly")
    guard.set_budget("100", period="daily")
    call = guard.budgeted(user="alice", cost=lambda result: "1", model="gpt-4o")(lambda: None)
    call()
    at(clock, 2026, 3, 5, 12)
    call()
    call()
    before = {key for key in guard.ledger.scan("") if key.startswith(("b|", "d|"))}
    assert any("2026-01" in key for key in before)

    removed = guard.prune(datetime(2026, 3, 1, tzinfo=timezone.utc))

    after = set(guard.ledger.scan(""))
    gone = {key for key in before if key not in after}
    assert removed == len(gone) > 0
    assert all("2026-01" in key for key in gone)
    assert not any("2026-01" in key for key in after)
    assert guard.spend("alice") == Decimal(2)  # March, this period
    assert guard.spend("alice", model="gpt-4o") == Decimal(2)
    assert guard.ledger.balances(["t|u=alice"])["t|u=alice"].spent == 3 * 10**9  # lifetime


def test_prune_needs_an_aware_instant(make_ledger: Callable[..., Ledger]) -> None:
    """A naive datetime is refused with a clear error and nothing is deleted."""
    guard = BudgetGuard(make_ledger(), metrics=False)
    guard.record_spend("1", user="alice")
    with pytest.raises(ValueError, match="aware"):
        guard.prune(datetime(2030, 1, 1))
    assert guard.spend("alice") == Decimal(1)


def test_prune_refuses_a_future_date_and_keeps_todays_spend(
    make_ledger: Callable[..., Ledger],
) -> None:
    """guard.prune(now + 3 days) is refused: today's spend stays and refused calls stay refused."""
    from datetime import timedelta, timezone

    guard = BudgetGuard(make_ledger(), metrics=False)
    guard.set_budget("1", user="alice", period="daily")
    guard.record_spend("1", user="alice")
    call = guard.budgeted(user="alice", estimate="0.5", cost=lambda result: "0.5")(lambda: None)
    with pytest.raises(BudgetExceededError):
        call()
    now = datetime.fromtimestamp(guard.clock(), timezone.utc)
    with pytest.raises(ValueError, match="future"):
        guard.prune(now + timedelta(days=3))
    with pytest.raises(ValueError, match="future"):
        guard.prune(now + timedelta(days=3), lifetime=True)
    assert guard.spend("alice") == Decimal(1)
    with pytest.raises(BudgetExceededError):
        call()


def test_module_prune_refuses_a_future_date_too(make_ledger: Callable[..., Ledger]) -> None:
    """budgetguard.prune (the default guard) refuses a future date and passes lifetime= on."""
    from datetime import timedelta

    import budgetguard as bg

    bg.configure(ledger=make_ledger(), metrics=False)
    bg.charge("1", user="alice")
    with pytest.raises(ValueError, match="future"):
        bg.prune(datetime.now(timezone.utc) + timedelta(days=3), lifetime=True)
    assert bg.spend(user="alice") == Decimal(1)
    assert bg.prune(datetime.now(timezone.utc), lifetime=True) == 0
