"""Settles that ride along with the next command (``settle_delay``): same guarantees, fewer trips.

With ``settle_delay`` a settle is queued in the ledger and sent in
the same round trip as this process's next command, or by a flusher thread
once it waited that long. These tests check what the module docstring
promises: each queued write counts once even when a reply is lost; its hold
stays in Redis until it lands; reads of this process see it; a crash loses
only the queued settles, whose holds then expire uncharged; a forked child
never sends its parent's queue; exactly the admissible number of calls runs
under contention.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.ledger import Balance, Hold, Ledger, Reservation, ledger_from_url
from budgetguard.ledger.redis import RedisLedger, _Ending, _Queue

from . import test_conformance as conformance
from ._proxy import FAR, CuttableProxy, DroppingProxy, fresh, lose
from .conftest import worker_env

pytestmark = pytest.mark.redis

WORKER = str(Path(__file__).with_name("_worker.py"))
CENT = 10_000_000  # 0.01 dollar in nano-dollar units


def delayed(url: str, delay: float = 0.005) -> str:
    """Return ``url`` with a settle_delay."""
    return f"{url}{'&' if '?' in url else '?'}settle_delay={delay}"


def wait_until(check: object, seconds: float = 30.0) -> None:
    """Poll ``check`` until it is true (the flusher and expiry run on their own time)."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


# -- the conformance suite, with settles queued --------------------------------------------


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest) -> str:
    """Run the conformance classes below on Redis only, with settle_delay on."""
    if request.param != "redis":
        pytest.skip("settle_delay is a Redis option")
    return delayed(str(request.getfixturevalue("redis_url")))


class TestReserveDelayed(conformance.TestReserve):
    """Reserve's contract holds with queued settles."""


class TestSettleDelayed(conformance.TestSettle):
    """Settle's contract holds with queued settles (a repeat is False while it is queued)."""


class TestReleaseDelayed(conformance.TestRelease):
    """Release's contract holds with queued settles (releases carry them, in order)."""


class TestExpiryDelayed(conformance.TestExpiry):
    """Expiry works the same with queued settles."""


class TestAddAndReadDelayed(conformance.TestAddAndRead):
    """Reads see this process's queued writes."""


class TestConcurrencyDelayed(conformance.TestConcurrency):
    """Threads racing one limit: exactly the admissible number, with queued settles."""


class TestExactlyOnceDelayed(conformance.TestExactlyOnce):
    """Every write counts once, with queued settles."""


# -- what only settle_delay does -------------------------------------------------------------


@pytest.fixture
def direct(redis_url: str) -> Iterator[Ledger]:
    """Return a ledger on the same Redis that writes at once, to read the truth."""
    ledger = ledger_from_url(redis_url)
    yield ledger
    ledger.close()


def test_settle_delay_is_checked_at_the_door(redis_url: str) -> None:
    """A negative, too long or non-numeric settle_delay is refused, naming the option."""
    for bad in ("-1", "2", "nan", "soon"):
        with pytest.raises(ConfigurationError, match="settle_delay"):
            ledger_from_url(delayed(redis_url, bad))  # type: ignore[arg-type]
    assert RedisLedger(redis_url).settle_delay == 0
    assert RedisLedger(redis_url, settle_delay=0.01).settle_delay == 0.01


def test_a_queued_settle_keeps_its_hold_until_it_lands(redis_url: str, direct: Ledger) -> None:
    """Until it is written, other processes see the hold (conservative), never a gap."""
    ledger = RedisLedger(delayed(redis_url, 1.0))
    r = fresh(7)
    assert ledger.reserve(r) is None
    assert ledger.settle(r, 5, ("tally",)) is True
    assert ledger.settle(r, 5, ("tally",)) is False  # still queued: a repeat changes nothing
    assert direct.balances(["user"])["user"] == Balance(0, 7)
    ledger.flush()
    assert direct.balances(["user", "tally"]) == {"user": Balance(5, 0), "tally": Balance(5, 0)}
    ledger.close()


def test_a_flush_after_redis_forgot_its_scripts_loads_them_and_writes(
    redis_url: str, direct: Ledger
) -> None:
    """flush() first after SCRIPT FLUSH (as after a restart) loads the script and writes."""
    ledger = RedisLedger(delayed(redis_url, 1.0))
    r = fresh(7)
    assert ledger.reserve(r) is None
    assert ledger.settle(r, 5, ("tally",)) is True  # queued
    admin = redis.Redis.from_url(redis_url)
    admin.script_flush()
    admin.close()
    ledger.flush()
    assert direct.balances(["user", "tally"]) == {"user": Balance(5, 0), "tally": Balance(5, 0)}
    assert ledger.settle(r, 5, ("tally",)) is False  # written once
    ledger.flush()
    assert direct.balances(["tally"]) == {"tally": Balance(5, 0)}
    ledger.close()


def test_reads_of_this_process_see_its_queued_settles(redis_url: str, direct: Ledger) -> None:
    """balances, scan, open_reservations and budget reads carry the queue: read-your-writes."""
    ledger = ledger_from_url(delayed(redis_url, 1.0))
    reads: list[Callable[[], bool]] = [
        lambda: ledger.balances(["user"])["user"] == Balance(5, 0),
        lambda: ledger.scan("us") == {"user": Balance(10, 0)},
        lambda: ledger.open_reservations() == [],
        lambda: ledger.list_budgets() == {},
        lambda: ledger.get_budget("nope") is None,
    ]
    for read in reads:
        r = fresh(7)
        assert ledger.reserve(r) is None
        ledger.settle(r, 5)
        before = direct.balances(["user"])["user"]
        assert before.reserved == 7  # not written yet
        read()
        after = direct.balances(["user"])["user"]
        assert after == Balance(before.spent + 5, 0)  # the read wrote it first
    assert ledger.balances(["user"])["user"] == Balance(25, 0)
    ledger.close()


def test_the_next_command_carries_the_settle_in_one_round_trip(
    redis_url: str, direct: Ledger
) -> None:
    """Reserve + settle pairs cost one request each: the settle rides with the next reserve."""
    ledger = RedisLedger(delayed(redis_url, 1.0))
    sent = [0]
    link = ledger._link()
    real = link.conn.send_packed_command

    def counting(*args: object, **kwargs: object) -> object:
        sent[0] += 1
        return real(*args, **kwargs)

    ledger.reserve(fresh())  # connect and load the scripts before counting
    ledger.flush()
    link.conn.send_packed_command = counting
    for _ in range(20):
        r = fresh(7)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 5) is True
    assert sent[0] == 20
    assert ledger.balances(["user"])["user"] == Balance(19 * 5 + 5, 7)  # the first one's hold
    ledger.close()


def test_the_flusher_writes_a_settle_nobody_carries(redis_url: str, direct: Ledger) -> None:
    """An idle process's settle is written after settle_delay by the flusher thread."""
    ledger = ledger_from_url(delayed(redis_url, 0.02))
    r = fresh(7)
    assert ledger.reserve(r) is None
    assert ledger.settle(r, 5) is True
    wait_until(lambda: direct.balances(["user"])["user"] == Balance(5, 0))
    ledger.close()


def test_the_flusher_writes_a_settle_after_redis_forgot_its_scripts(
    redis_url: str, direct: Ledger
) -> None:
    """The flusher, first to write after SCRIPT FLUSH (a restart), loads the script and lands."""
    ledger = ledger_from_url(delayed(redis_url, 0.05))
    first = fresh()
    assert ledger.reserve(first) is None  # the scripts are loaded
    assert ledger.release(first) is True
    ledger.flush()
    admin = redis.Redis.from_url(redis_url)
    admin.script_flush()
    admin.close()
    r = fresh(7)
    # Reserve runs its own script (loaded again on NOSCRIPT); the settle's batch
    # script is still missing when the flusher sends it.
    assert ledger.reserve(r) is None
    assert ledger.settle(r, 5, ("tally",)) is True
    wait_until(lambda: direct.balances(["tally"])["tally"] == Balance(5, 0))
    assert direct.balances(["user"])["user"] == Balance(5, 0)
    ledger.close()


def test_a_busy_process_does_not_wake_the_flusher_once_per_settle(
    redis_url: str, direct: Ledger
) -> None:
    """Settles the next reserve carries leave the flusher asleep: not one wake per call."""
    delay = 0.005
    ledger = RedisLedger(delayed(redis_url, delay))
    queue = ledger._queue
    looks = [0]
    real = queue.due_in

    def counting(delay: float) -> float | None:
        looks[0] += 1
        return real(delay)

    queue.due_in = counting  # type: ignore[method-assign]
    start = time.monotonic()
    for _ in range(2000):
        r = Reservation(uuid.uuid4().hex, (Hold("user", None, 2),), FAR)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 1) is True
    ledger.close()
    periods = (time.monotonic() - start) / delay
    # While settles flow the flusher looks two or three times per
    # settle_delay; woken by every settle (which the next reserve had already
    # carried) it looked once per call. Not a speed assert: the bound grows
    # with the time the loop took.
    assert looks[0] <= 5 * periods + 10, (looks[0], periods)
    assert direct.balances(["user"])["user"] == Balance(2000, 0)


def test_only_a_parked_flusher_is_woken_by_a_settle() -> None:
    """A put wakes the flusher only once it found the queue empty, not on every settle."""
    queue = _Queue()
    assert queue.put(_Ending("a", (), time.monotonic())) is True
    assert queue.wake.is_set()  # the flusher starts parked
    queue.wake.clear()  # the flusher woke, and sleeps until "a" is due
    assert queue.due_in(1.0) is not None
    assert queue.put(_Ending("b", (), time.monotonic())) is True
    assert not queue.wake.is_set()  # no wake for "b": the flusher looks again by itself
    carried = queue.take(everything=False)
    assert carried is not None
    queue.done(carried[0], ok=True)
    assert queue.due_in(1.0) is None  # nothing waits: the flusher parks
    assert queue.put(_Ending("c", (), time.monotonic())) is True
    assert queue.wake.is_set()


def test_close_writes_the_queue(redis_url: str, direct: Ledger) -> None:
    """close() writes what is queued; settles after it are written at once."""
    ledger = ledger_from_url(delayed(redis_url, 1.0))
    r = fresh(7)
    ledger.reserve(r)
    ledger.settle(r, 5)
    ledger.close()
    assert direct.balances(["user"])["user"] == Balance(5, 0)
    r2 = fresh(7)
    ledger.reserve(r2)
    assert ledger.settle(r2, 2) is True
    assert direct.balances(["user"])["user"] == Balance(7, 0)
    ledger.close()


async def test_async_settles_are_queued_and_carried(redis_url: str, direct: Ledger) -> None:
    """asettle queues like settle; the next command (arelease) carries it; abalances reads it."""
    ledger = ledger_from_url(delayed(redis_url, 1.0))
    r, gone, last = fresh(7), fresh(3), fresh(2)
    assert await ledger.areserve(r) is None
    assert await ledger.areserve(gone) is None
    assert await ledger.asettle(r, 5) is True
    assert await ledger.asettle(r, 5) is False  # a repeat while queued
    assert direct.balances(["user"])["user"] == Balance(0, 10)
    assert await ledger.arelease(gone) is True  # written at once, the settle before it
    assert direct.balances(["user"])["user"] == Balance(5, 0)
    assert await ledger.areserve(last) is None
    assert await ledger.asettle(last, 1) is True
    assert await ledger.abalances(["user"]) == {"user": Balance(6, 0)}
    assert await ledger.asettle(last, 1) is False  # landed: this process remembers it
    await ledger.aclose()


# -- lost replies ----------------------------------------------------------------------------


@pytest.fixture
def proxy(redis_url: str) -> Iterator[DroppingProxy]:
    """Return a proxy in front of the test's Redis."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    running = DroppingProxy(parts.hostname, parts.port)
    yield running
    running.close()


@pytest.fixture
def through(proxy: DroppingProxy, redis_url: str) -> Iterator[RedisLedger]:
    """Return a ledger with queued settles that talks to Redis through the proxy, warmed up."""
    path = urlsplit(redis_url).path
    ledger = RedisLedger(f"redis://127.0.0.1:{proxy.port}{path}?timeout=5&settle_delay=1")
    warm = Reservation("warm", (Hold("warm", None, 1),), FAR)
    ledger.reserve(warm)
    ledger.settle(warm, 0)
    ledger.release(Reservation("warm2", (), FAR))
    ledger.balances(["warm"])  # every script loaded, the queue written
    yield ledger
    ledger.close()


def test_lost_reply_of_a_carrying_reserve_charges_the_settle_once(
    proxy: DroppingProxy, through: RedisLedger, direct: Ledger
) -> None:
    """The reserve that carried a settle lost its reply: the settle counts once, nothing leaks."""
    first = fresh(7)
    assert through.reserve(first) is None
    assert through.settle(first, 5, ("tally",)) is True
    second = fresh(7)
    lose(proxy, lambda: through.reserve(second))
    # The settle landed (its batch ran) or is still queued; either way it counts once.
    through.flush()
    through.flush()
    expected = {"user": Balance(5, 0), "global": Balance(5, 0), "tally": Balance(5, 0)}
    assert direct.balances(["user", "global", "tally"]) == expected
    assert direct.open_reservations() == []  # the lost reserve was released
    assert through.balances(["user", "global", "tally"]) == expected


def test_lost_reply_of_a_flush_is_retried_with_the_same_ids(
    proxy: DroppingProxy, through: RedisLedger, direct: Ledger
) -> None:
    """A flush whose reply was lost keeps its entries; their retry changes nothing twice."""
    settled, other = fresh(7), fresh(3)
    assert through.reserve(settled) is None
    assert through.reserve(other) is None
    through.settle(settled, 5)
    through.settle(other, 1)
    lose(proxy, through.flush)
    assert through._queue.size() == 2  # kept, to be sent again
    through.flush()
    assert through._queue.size() == 0
    assert direct.balances(["user"])["user"] == Balance(6, 0)
    assert direct.open_reservations() == []


def test_async_lost_reply_of_a_carrying_reserve_charges_once(
    proxy: DroppingProxy, through: RedisLedger, direct: Ledger
) -> None:
    """On the asyncio client too, a carried settle whose reply was lost counts once."""
    first = fresh(7)
    assert through.reserve(first) is None
    through.settle(first, 5)

    async def main() -> None:
        await through.aping()  # connected; aping carries the queue, so queue one more
        again = fresh(4)
        assert await through.areserve(again) is None
        await through.asettle(again, 4)
        proxy.arm()
        try:
            with pytest.raises(StorageError):
                await through.areserve(fresh(1))
        finally:
            await through.aclose()

    asyncio.run(main())
    assert proxy.dropped == 1
    assert direct.balances(["user"])["user"] == Balance(9, 0)
    assert direct.open_reservations() == []


def test_an_outage_keeps_the_queue_and_settles_go_straight_to_the_caller(
    redis_url: str, direct: Ledger
) -> None:
    """While Redis is unreachable, queued settles stay queued; new settles raise StorageError."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    cuttable = CuttableProxy(parts.hostname, parts.port)
    ledger = RedisLedger(f"redis://127.0.0.1:{cuttable.port}{parts.path}?timeout=1&settle_delay=1")
    try:
        r, later = fresh(7), fresh(3)
        assert ledger.reserve(r) is None
        assert ledger.reserve(later) is None
        ledger.settle(r, 5)
        cuttable.down()
        with pytest.raises(StorageError):
            ledger.flush()
        # A failed batch: settles are now written at once, so the guard's outbox sees failures.
        with pytest.raises(StorageError):
            ledger.settle(later, 2)
        assert ledger._queue.size() == 1
        cuttable.restore()
        ledger.flush()
        assert ledger.settle(later, 2) is True  # a batch landed: queued again
        ledger.flush()
        assert direct.balances(["user"])["user"] == Balance(7, 0)
    finally:
        ledger.close()
        cuttable.close()


# -- contention, processes, crashes, fork --------------------------------------------------


def test_eight_threads_run_exactly_the_admissible_calls(redis_url: str, direct: Ledger) -> None:
    """8 threads × 50 reserve + settle against room for 37: exactly 37, spent exact after close."""
    ledger = ledger_from_url(delayed(redis_url))
    won = []
    go = threading.Barrier(8)

    def work() -> None:
        go.wait()
        for _ in range(50):
            r = Reservation(uuid.uuid4().hex, (Hold("user", 37 * CENT, CENT),), time.time() + 60)
            if ledger.reserve(r) is None:
                assert ledger.settle(r, CENT)
                won.append(r.id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.close()
    assert len(won) == 37
    assert direct.balances(["user"])["user"] == Balance(37 * CENT, 0)


def test_eight_threads_of_guarded_calls_run_exactly_the_admissible_calls(
    redis_url: str,
) -> None:
    """A BudgetGuard on a delayed Redis ledger: 8 threads × 20 calls of $0.01 under $0.37."""
    from budgetguard import BudgetExceededError, BudgetGuard

    guard = BudgetGuard(ledger=delayed(redis_url), metrics=False)
    guard.set_budget("0.37", user="alice")
    ran = []

    @guard.budgeted(user="alice", estimate="0.01", cost=lambda result: "0.01")  # type: ignore[untyped-decorator]
    def call() -> int:
        ran.append(1)
        return 1

    def work() -> None:
        for _ in range(20):
            with contextlib.suppress(BudgetExceededError):
                call()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ran) == 37
    guard.close()
    truth = BudgetGuard(ledger=redis_url, metrics=False)
    assert truth.spend("alice") == Decimal("0.37")
    truth.close()


@pytest.mark.slow
def test_four_processes_run_exactly_the_admissible_calls(
    redis_url: str, direct: Ledger, tmp_path: Path
) -> None:
    """4 processes × 50 calls with queued settles: exactly 37 run; each writes its queue at exit."""
    go = tmp_path / "go"
    url = delayed(redis_url)
    children = [
        subprocess.Popen(
            [sys.executable, WORKER, "race", url, "50", str(CENT), str(37 * CENT), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for _ in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    total = 0
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        total += int(out.strip())
    assert total == 37
    assert direct.balances(["user"])["user"] == Balance(37 * CENT, 0)


CRASHING_CHILD = """
import sys, time
from budgetguard.ledger import Hold, Reservation, ledger_from_url
ledger = ledger_from_url(sys.argv[1])
written = Reservation("written", (Hold("user", None, 5),), time.time() + 600)
ledger.reserve(written)
ledger.settle(written, 5)
ledger.flush()
queued = Reservation("queued", (Hold("user", None, 7),), time.time() + 1)
ledger.reserve(queued)
ledger.settle(queued, 7)
print("queued", flush=True)
time.sleep(60)
"""


def test_a_killed_process_loses_only_its_queued_settles_whose_holds_expire_uncharged(
    redis_url: str, direct: Ledger
) -> None:
    """SIGKILL with a settle queued: what was written stays; the queued hold expires, uncharged."""
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CHILD, delayed(redis_url, 1.0)],
        stdout=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "queued"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert direct.balances(["user"])["user"] == Balance(5, 7)  # the queued one still holds
    wait_until(lambda: direct.open_reservations() == [])  # its 1 s time to live passes
    assert direct.balances(["user"])["user"] == Balance(5, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_sends_its_parents_queue(redis_url: str, direct: Ledger) -> None:
    """A child forked with settles queued starts with an empty queue; the parent writes its own."""
    ledger = ledger_from_url(delayed(redis_url, 1.0))
    r = fresh(7)
    ledger.reserve(r)
    ledger.settle(r, 5)
    pid = os.fork()
    if pid == 0:  # the child: a read would carry the queue, but the child's is empty
        code = 0
        try:
            if ledger.balances(["user"])["user"] != Balance(0, 7):
                code = 3
            ledger.close()
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert direct.balances(["user"])["user"] == Balance(0, 7)
    assert ledger.balances(["user"])["user"] == Balance(5, 0)
    ledger.close()
    assert direct.balances(["user"])["user"] == Balance(5, 0)


def test_a_flushed_script_cache_never_loses_a_queued_settle(redis_url: str, direct: Ledger) -> None:
    """NOSCRIPT on a carried batch: it is loaded and sent again; reads still see it."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    ledger = RedisLedger(delayed(redis_url, 1.0))
    try:
        r = fresh(7)
        assert ledger.reserve(r) is None
        ledger.settle(r, 5)
        admin.script_flush()
        assert ledger.balances(["user"])["user"] == Balance(5, 0)
        again = fresh(7)
        assert ledger.reserve(again) is None
        ledger.settle(again, 1)
        admin.script_flush()
        assert ledger.reserve(fresh(1)) is None  # both scripts reloaded, the settle carried
        assert direct.balances(["user"])["user"] == Balance(6, 1)
    finally:
        ledger.close()
        admin.close()


async def test_async_reads_see_a_queued_settle_after_noscript(
    redis_url: str, direct: Ledger
) -> None:
    """The asyncio client reloads the batch script too and reads its own writes."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    ledger = RedisLedger(delayed(redis_url, 1.0))
    try:
        r = fresh(7)
        assert await ledger.areserve(r) is None
        await ledger.asettle(r, 5)
        admin.script_flush()
        assert await ledger.abalances(["user"]) == {"user": Balance(5, 0)}
    finally:
        await ledger.aclose()
        admin.close()
