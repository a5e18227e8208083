"""A ledger that lost its data is a failure the guard reports, never a silent run without limits.

Real redis-server: FLUSHALL, a restart without persistence, and eviction under
``allkeys-lru`` with a small ``maxmemory`` each take the budget definitions and
their mark; the guard refuses every call under ``fail_closed`` and logs once
(and counts ``budgetguard.storage_errors``) under ``fail_open``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from budgetguard import BudgetExceededError, BudgetGuard, StorageError
from budgetguard.ledger import BudgetChanges
from budgetguard.ledger.memory import MemoryLedger
from budgetguard.testing import ExportedMetrics, metrics_reader

from .conftest import RedisServer


def redis_client(url: str) -> Any:
    """Return a plain redis-py client."""
    import redis

    return redis.Redis.from_url(url)


def flushall(url: str) -> None:
    """Empty the server, as an operator's FLUSHALL does."""
    client = redis_client(url)
    client.flushall()
    client.close()


def restart(server: RedisServer) -> None:
    """Stop and start the server; it keeps nothing on disk, so everything is gone."""
    server.stop()
    server.start()


def evict(url: str) -> None:
    """Fill a server under allkeys-lru and a small maxmemory until the budgets are evicted."""
    client = redis_client(url)
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("maxmemory", str(used + 512 * 1024))
        filler = "x" * 4096
        for i in range(20_000):
            client.set(f"filler:{i}", filler)
            if i % 50 == 0 and not client.exists("{bg}:budgets"):
                return
        raise AssertionError("the budget definitions were never evicted")
    finally:
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


def own_server(redis_server: RedisServer | None) -> RedisServer:
    """Return this session's own redis-server, or skip: a restart needs one we can stop."""
    if redis_server is None:
        pytest.skip("restarting the server needs this session's own redis-server")
    return redis_server


LOSSES = ["flushall", "restart", "eviction"]


def lose(how: str, url: str, server: RedisServer | None) -> None:
    """Make the ledger lose its data in the way named."""
    if how == "flushall":
        flushall(url)
    elif how == "restart":
        restart(own_server(server))
    else:
        evict(url)


@pytest.fixture
def exported() -> Iterator[ExportedMetrics]:
    """Give a private MeterProvider with an in-memory reader."""
    with metrics_reader() as found:
        yield found


def storage_errors(exported: ExportedMetrics) -> int:
    """Return the total of budgetguard.storage_errors."""
    return sum(int(p.value) for p in exported.points("budgetguard.storage_errors"))


def guarded(guard: BudgetGuard, ran: list[int], estimate: str = "0.1") -> Callable[[], None]:
    """Return a guarded function of alice's that notes each time it runs."""
    return guard.budgeted(user="alice", estimate=estimate, cost=lambda result: estimate)(
        lambda: ran.append(1)
    )


@pytest.mark.redis
@pytest.mark.parametrize("how", LOSSES)
def test_fail_closed_refuses_every_call_after_the_ledger_lost_its_data(
    how: str,
    redis_url: str,
    redis_server: RedisServer | None,
    exported: ExportedMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After FLUSHALL, a restart or eviction every call raises StorageError and never runs."""
    guard = BudgetGuard(redis_url, budget_cache_ttl=0, meter_provider=exported.meter_provider)
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guarded(guard, ran)
    call()
    lose(how, redis_url, redis_server)
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        for _ in range(3):
            with pytest.raises(StorageError, match="lost its data") as raised:
                call()
    assert ran == [1]
    assert "Re-create the budgets" in str(raised.value)
    assert "set_budget" in str(raised.value)
    assert sum("lost its data" in r.getMessage() for r in caplog.records) == 1
    assert storage_errors(exported) >= 3
    guard.close()


@pytest.mark.redis
@pytest.mark.parametrize("how", LOSSES)
def test_fail_open_logs_once_counts_and_keeps_the_known_limits(
    how: str,
    redis_url: str,
    redis_server: RedisServer | None,
    exported: ExportedMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under fail_open calls go on against the budgets known before, with one error logged."""
    guard = BudgetGuard(
        redis_url,
        budget_cache_ttl=0,
        on_storage_error="fail_open",
        meter_provider=exported.meter_provider,
    )
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guarded(guard, ran)
    call()
    lose(how, redis_url, redis_server)
    before = storage_errors(exported)
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        for _ in range(3):
            call()
        with pytest.raises(BudgetExceededError):  # the $1 limit still holds
            guarded(guard, ran, estimate="5")()
    assert ran == [1, 1, 1, 1]
    lost = [r for r in caplog.records if "lost its data" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.ERROR
    assert storage_errors(exported) == before + 1
    guard.close()


@pytest.mark.redis
def test_a_guard_that_sets_the_budgets_again_takes_the_new_ledger(redis_url: str) -> None:
    """set_budget after a loss clears it for this guard; another guard that saw the old mark
    still refuses."""
    guard = BudgetGuard(redis_url, budget_cache_ttl=0, metrics=False)
    other = BudgetGuard(redis_url, budget_cache_ttl=0, metrics=False)
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call, other_call = guarded(guard, ran), guarded(other, ran)
    call()
    other_call()
    flushall(redis_url)
    with pytest.raises(StorageError):
        call()
    guard.set_budget("1", user="alice")
    call()
    assert guard.spend("alice") == Decimal("0.1")
    with pytest.raises(StorageError, match="replaced"):
        other_call()
    assert ran == [1, 1, 1]
    guard.close()
    other.close()


@pytest.mark.redis
def test_set_budget_after_an_unnoticed_loss_logs_it_and_goes_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A loss first seen by this guard's own set_budget is logged as an error, not refused."""
    guard = BudgetGuard(redis_url, budget_cache_ttl=3600, metrics=False)
    guard.set_budget("1", user="alice")
    guard.set_budget("5")
    flushall(redis_url)
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        guard.set_budget("2", user="bob")
    assert any("lost its data" in r.getMessage() for r in caplog.records)
    assert [b.name for b in guard.budgets()] == ["user:bob"]
    guard.close()


@pytest.mark.redis
def test_the_background_reader_finds_the_loss(redis_url: str) -> None:
    """With a positive budget_cache_ttl the loss is found off the caller's thread, then refused."""
    guard = BudgetGuard(redis_url, budget_cache_ttl=0.01, metrics=False)
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guarded(guard, ran)
    call()
    flushall(redis_url)
    deadline = time.monotonic() + 30
    while True:
        try:
            call()
        except StorageError as error:
            assert "lost its data" in str(error)
            break
        assert time.monotonic() < deadline, "the loss was never found"
        time.sleep(0.01)
    guard.close()


class SlowSharedLedger(MemoryLedger):
    """A memory ledger that says it is shared and notes where budget_changes runs."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.reads = threading.Event()

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        self.threads.append(threading.get_ident())
        self.reads.set()
        return super().budget_changes(since)


def test_due_rereads_run_in_the_background_never_on_the_callers_thread() -> None:
    """After the first read, a call that finds the definitions due does not read them itself."""
    ledger = SlowSharedLedger()
    guard = BudgetGuard(ledger, budget_cache_ttl=0.001, metrics=False)
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guarded(guard, ran, estimate="0.001")
    call()
    caller = threading.get_ident()
    ledger.threads.clear()
    ledger.reads.clear()
    for _ in range(50):
        time.sleep(0.002)
        call()
    assert ledger.reads.wait(30), "the definitions were never re-read"
    assert ledger.threads and caller not in ledger.threads
    guard.close()
    assert not any(t.name == "budgetguard-budgets" and t.is_alive() for t in threading.enumerate())


def test_a_change_made_elsewhere_reaches_the_guard_through_the_background_reader() -> None:
    """A definition written to the ledger by someone else shows up without a call waiting."""
    ledger = SlowSharedLedger()
    guard = BudgetGuard(ledger, budget_cache_ttl=0.001, metrics=False)
    guard.set_budget("1", user="alice")
    ledger.put_budget("user:alice", {**guard.get_budget("alice").to_dict(), "limit": "0.05"})  # type: ignore[union-attr]
    ran: list[int] = []
    deadline = time.monotonic() + 30
    while True:
        try:
            guarded(guard, ran, estimate="0.1")()
        except BudgetExceededError:
            break
        assert time.monotonic() < deadline, "the new limit never arrived"
        time.sleep(0.005)
    guard.close()


@pytest.mark.redis
def test_opening_a_guard_on_redis_warns_about_durability_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The test server keeps nothing on disk: the guard says so when it opens the ledger."""
    with caplog.at_level(logging.WARNING, logger="budgetguard"):
        guard = BudgetGuard(redis_url, metrics=False)
        again = BudgetGuard(guard.ledger, metrics=False)
    warned = [r for r in caplog.records if "persistence is off" in r.getMessage()]
    assert len(warned) == 1
    again.close()
    guard.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_background_reader() -> None:
    """A guard whose reader ran before a fork re-reads in the child too, on the child's thread."""
    ledger = SlowSharedLedger()
    guard = BudgetGuard(ledger, budget_cache_ttl=0.001, metrics=False)
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guarded(guard, ran, estimate="0.1")
    call()
    time.sleep(0.005)
    call()  # wakes the parent's reader
    assert ledger.reads.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: lower the limit behind the guard's back, wait to be refused
        code = 1
        try:
            ledger.put_budget(
                "user:alice", {**guard.get_budget("alice").to_dict(), "limit": "0.05"}
            )  # type: ignore[union-attr]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    call()
                except BudgetExceededError:
                    code = 0
                    break
                time.sleep(0.005)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child never saw the new limit"
    guard.close()
