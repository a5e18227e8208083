"""On Redis, time is the server's: a skewed host cannot expire others' holds or move windows.

A host with a skewed clock is simulated by building its guard and ledger while
``time.time`` is skewed, with no ``clock=``: they keep the skewed function,
as every library call on such a host would. The ledger's default clock is
the server's, so the skew must not matter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from budgetguard import BudgetExceededError, BudgetGuard
from budgetguard.ledger import Hold, Reservation
from budgetguard.ledger.redis import RedisLedger

pytestmark = pytest.mark.redis

_real_time = time.time


def skewed(seconds: float) -> Callable[[], float]:
    """Return a clock ``seconds`` ahead of this host's (behind when negative)."""
    return lambda: _real_time() + seconds


def on_skewed_host(
    monkeypatch: pytest.MonkeyPatch, seconds: float, build: Callable[[], object]
) -> object:
    """Build something as a host whose clock is ``seconds`` off would: time.time skewed."""
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", skewed(seconds))
        return build()


def test_a_host_clock_ahead_does_not_expire_another_hosts_hold(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host 1,000 s ahead finds the other host's 900 s hold still held, and is refused."""
    here = RedisLedger(redis_url)
    ahead = on_skewed_host(monkeypatch, 1000, lambda: RedisLedger(redis_url))
    assert isinstance(ahead, RedisLedger) and ahead._host_clock() > time.time() + 999
    assert here.reserve(Reservation("here", (Hold("k", 100, 90),), here.clock() + 900)) is None
    refusal = ahead.reserve(Reservation("ahead", (Hold("k", 100, 50),), ahead.clock() + 900))
    assert refusal is not None and refusal.reserved == 90
    assert [r.id for r in ahead.open_reservations()] == ["here"]
    here.close()
    ahead.close()


def test_a_host_clock_behind_holds_for_its_whole_ttl(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host 1,000 s behind holds for 900 s by the server's clock, not -100 s."""
    here = RedisLedger(redis_url)
    behind = on_skewed_host(monkeypatch, -1000, lambda: RedisLedger(redis_url))
    assert isinstance(behind, RedisLedger)
    assert (
        behind.reserve(Reservation("behind", (Hold("k", 100, 40),), behind.clock() + 900)) is None
    )
    assert here.balances(["k"])["k"].reserved == 40
    (held,) = here.open_reservations()
    assert abs(held.expires_at - (time.time() + 900)) < 60
    here.close()
    behind.close()


def test_a_guard_on_a_host_ahead_cannot_overspend_a_budget_in_use(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one host's call holds most of a budget, a guard 1,000 s ahead is refused."""
    here = BudgetGuard(redis_url, metrics=False)
    ahead = on_skewed_host(monkeypatch, 1000, lambda: BudgetGuard(redis_url, metrics=False))
    assert isinstance(ahead, BudgetGuard)
    here.set_budget("1", user="alice")  # lifetime: no window for the skew to move
    holding, done = threading.Event(), threading.Event()

    @here.budgeted(user="alice", estimate="0.9", cost=lambda result: "0.9")
    def long_call() -> None:
        holding.set()
        done.wait(30)

    worker = threading.Thread(target=long_call)
    worker.start()
    try:
        assert holding.wait(30)
        with pytest.raises(BudgetExceededError):
            ahead.budgeted(user="alice", estimate="0.5", cost=lambda result: "0.5")(lambda: None)()
    finally:
        done.set()
        worker.join()
    assert str(here.spend("alice")) == "0.9"
    here.close()
    ahead.close()


def test_a_skewed_hosts_ledger_clock_reads_the_servers_time(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After sync_clock(), the clock of a ledger on a host 1,000 s off reads the server's time."""
    for skew in (1000, -1000):
        ledger = on_skewed_host(monkeypatch, skew, lambda: RedisLedger(redis_url))
        assert isinstance(ledger, RedisLedger)
        offset = ledger.sync_clock()
        assert abs(offset + skew) < 5  # the server (this host) is `skew` behind the skewed host
        assert abs(ledger.clock() - time.time()) < 5
        ledger.close()


def test_a_guard_on_a_host_a_day_ahead_charges_todays_window(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guard whose host clock is already in tomorrow charges and checks today's daily window."""
    now = datetime.now(timezone.utc)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), timezone.utc)
    skew = (midnight - now).total_seconds() + 3600  # an hour into tomorrow, by its own clock
    here = BudgetGuard(redis_url, metrics=False)
    ahead = on_skewed_host(monkeypatch, skew, lambda: BudgetGuard(redis_url, metrics=False))
    assert isinstance(ahead, BudgetGuard)
    here.set_budget("1", user="alice", period="daily")
    here.budgeted(user="alice", estimate="0.9", cost=lambda result: "0.9")(lambda: None)()
    assert str(ahead.spend("alice")) == "0.9"
    with pytest.raises(BudgetExceededError):
        ahead.budgeted(user="alice", estimate="0.5", cost=lambda result: "0.5")(lambda: None)()
    ahead.budgeted(user="alice", estimate="0.1", cost=lambda result: "0.1")(lambda: None)()
    assert here.spend("alice") == Decimal(1)
    here.close()
    ahead.close()


def test_with_an_explicit_clock_the_ledger_uses_it(redis_url: str) -> None:
    """clock= (tests) moves expiry by hand: a hold past its expiry is released."""
    now = [time.time()]
    ledger = RedisLedger(redis_url, clock=lambda: now[0])
    assert ledger.reserve(Reservation("r", (Hold("k", 100, 10),), now[0] + 60)) is None
    now[0] += 61
    assert ledger.balances(["k"])["k"].reserved == 0
    ledger.close()


def test_the_offset_is_measured_again_after_the_host_clock_steps(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background reader measures the offset again, so a host clock that steps is followed."""
    import budgetguard.guard as guard_module

    monkeypatch.setattr(guard_module, "CLOCK_SYNC_INTERVAL", 0.0)
    guard = BudgetGuard(redis_url, metrics=False, budget_cache_ttl=0.01)
    guard.set_budget("1", user="alice")
    ledger = guard.ledger
    assert isinstance(ledger, RedisLedger)
    ledger._host_clock = skewed(5000)  # the host's clock steps 5,000 s ahead
    assert guard.clock() > time.time() + 4000
    for _ in range(1000):
        guard.remaining("alice")  # a due re-read wakes the background reader
        if abs(guard.clock() - time.time()) < 5:
            break
        time.sleep(0.01)
    assert abs(guard.clock() - time.time()) < 5
    guard.close()
