"""Group commit on SQLite: concurrent writes of one process share one transaction.

Batches are made deterministic by holding the ledger's write lock (what a
leader holds while its batch runs) until the callers under test are queued;
``_apply`` is wrapped to record the size of every batch that ran.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import budgetguard.ledger.sqlite as sqlite_ledger
from budgetguard.errors import StorageError
from budgetguard.ledger import Balance, Hold, Refusal, Reservation
from budgetguard.ledger.sqlite import SQLiteLedger

from .conftest import worker_env
from .test_faults import Interrupt, writes_at_once

FAR = 10**10


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of operations of every batch transaction that runs."""
    sizes: list[int] = []
    apply = sqlite_ledger._apply

    def recording(db: sqlite3.Connection, batch: list[Any]) -> None:
        sizes.append(len(batch))
        apply(db, batch)

    monkeypatch.setattr(sqlite_ledger, "_apply", recording)
    return sizes


@pytest.fixture
def no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make queued callers wake only when answered or nudged (or at their deadline)."""
    monkeypatch.setattr(sqlite_ledger, "_POLL", 30.0)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., SQLiteLedger]]:
    """Return a factory of SQLite ledgers on one file, closed at the end."""
    made: list[SQLiteLedger] = []

    def factory(query: str = "synchronous=normal", **options: Any) -> SQLiteLedger:
        ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'group.db'}?{query}", **options)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        ledger.close()


def queued(ledger: SQLiteLedger, n: int) -> None:
    """Wait until ``n`` operations wait in the ledger's queue."""
    for _ in range(5000):
        if len(ledger._queue) == n:
            return
        time.sleep(0.001)
    raise AssertionError(f"{len(ledger._queue)} operations queued, expected {n}")


class Caller(threading.Thread):
    """Run one ledger operation in a thread; keep its result or its exception."""

    def __init__(self, operation: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.operation = operation
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Run the operation."""
        try:
            self.result = self.operation()
        except BaseException as error:  # kept for the test to look at
            self.error = error

    def outcome(self) -> object:
        """Wait for the operation; return its result or its exception."""
        self.join(20)
        assert not self.is_alive(), "a caller was left waiting"
        return self.error if self.error is not None else self.result


def queue_behind_lock(ledger: SQLiteLedger, operations: list[Callable[[], object]]) -> list[Caller]:
    """Start one caller per operation, in order, each queued before the next starts.

    The caller must hold ``ledger._write_lock``: nobody can lead meanwhile.
    """
    callers = []
    for n, operation in enumerate(operations, 1):
        caller = Caller(operation)
        caller.start()
        queued(ledger, n)
        callers.append(caller)
    return callers


def hold(key: str, limit: int | None, amount: int) -> Reservation:
    """Return a reservation of ``amount`` on ``key`` with a new id."""
    return Reservation(uuid.uuid4().hex, (Hold(key, limit, amount),), FAR)


def test_racing_threads_win_exactly_what_fits(
    make: Callable[..., SQLiteLedger], batches: list[int]
) -> None:
    """8 threads × 200 reserve + settle on a limit of 137 calls: exactly 137 win, spent exact."""
    ledger = make("synchronous=full")
    wins: list[int] = [0] * 8
    start = threading.Barrier(8)

    def work(index: int) -> None:
        start.wait()
        for _ in range(200):
            r = Reservation(
                uuid.uuid4().hex, (Hold("user", 10 * 137, 10), Hold("global", None, 10)), FAR
            )
            if ledger.reserve(r) is None:
                assert ledger.settle(r, 10, ("tally",)) is True
                wins[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(wins) == 137
    assert ledger.balances(["user", "global", "tally"]) == {
        "user": Balance(1370, 0),
        "global": Balance(1370, 0),
        "tally": Balance(1370, 0),
    }
    assert ledger.open_reservations() == []
    assert max(batches) > 1, "no two writes ever shared a transaction"


def test_one_failing_operation_leaves_its_batch_committed(
    make: Callable[..., SQLiteLedger], batches: list[int], no_polling: None
) -> None:
    """In one batch: a reused id fails alone; refusals and repeats see the earlier ops."""
    ledger = make()
    used = hold("user", 10, 1)
    assert ledger.reserve(used) is None
    assert ledger.settle(used, 1) is True
    first, second = hold("user", 10, 6), hold("user", 10, 6)
    batches.clear()
    with ledger._write_lock:
        callers = queue_behind_lock(
            ledger,
            [
                lambda: ledger.reserve(first),
                lambda: ledger.reserve(used),  # a reused id
                lambda: ledger.reserve(second),  # refused: first holds 6 of the 9 left
                lambda: ledger.add(["tally"], 5, op_id="charge"),
                lambda: ledger.add(["tally"], 5, op_id="charge"),  # the same charge again
                lambda: ledger.settle(first, 4),  # sees the reserve of this batch
                lambda: ledger.release(second),  # never held: False
            ],
        )
    ledger._nudge()
    outcomes = [caller.outcome() for caller in callers]
    assert batches == [7]
    assert outcomes[0] is None
    assert isinstance(outcomes[1], ValueError) and "was used before" in str(outcomes[1])
    assert isinstance(outcomes[2], Refusal) and outcomes[2].reserved == 6
    assert outcomes[3:] == [True, False, True, False]
    assert ledger.balances(["user", "tally"]) == {"user": Balance(5, 0), "tally": Balance(5, 0)}
    assert ledger.open_reservations() == []
    with pytest.raises(ValueError, match="was used before"):
        ledger.reserve(second)  # its release marked the id used


def test_a_failing_transaction_fails_every_operation_in_it(
    make: Callable[..., SQLiteLedger], batches: list[int], no_polling: None, tmp_path: Path
) -> None:
    """A batch that cannot begin (lock held elsewhere past the deadline): all told, none run."""
    ledger = make("synchronous=normal&timeout=0.5")
    ledger.add(["k"], 0)
    other = sqlite3.connect(tmp_path / "group.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with ledger._write_lock:
            callers = queue_behind_lock(ledger, [lambda: ledger.add(["k"], 1)] * 3)
        ledger._nudge()
        outcomes = [caller.outcome() for caller in callers]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(outcome, StorageError) for outcome in outcomes), outcomes
    assert all("timeout=0.5s" in str(outcome) for outcome in outcomes)
    assert ledger.balances(["k"])["k"] == Balance(0, 0)
    assert ledger.add(["k"], 1) is True  # the connection that led still works


def test_a_caller_alone_never_waits_for_company(
    make: Callable[..., SQLiteLedger], batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread's writes run at once, one per transaction, without a queue, savepoint or wait."""
    ledger = make()
    statements: list[str] = []
    waits: list[object] = []
    armed = sqlite_ledger._armed_wake

    def counted() -> threading.Lock:
        waits.append(1)
        return armed()

    monkeypatch.setattr(sqlite_ledger, "_armed_wake", counted)
    ledger._connection().set_trace_callback(statements.append)
    batches.clear()
    r = hold("user", 100, 5)
    assert ledger.reserve(r) is None
    assert ledger.settle(r, 3) is True
    assert ledger.add(["k"], 1, op_id="a") is True
    assert batches == []  # never queued
    assert waits == []
    assert [s for s in statements if s.upper().startswith("BEGIN")] == ["BEGIN IMMEDIATE"] * 3
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]


def test_first_caller_after_a_batch_with_company_leads_the_next_batch(
    make: Callable[..., SQLiteLedger], batches: list[int]
) -> None:
    """After a batch of several writes the next caller leads a batch; once alone, it goes alone."""
    ledger = make()
    ledger._company = True  # as after a batch of several callers' writes
    batches.clear()
    r = hold("user", 100, 5)
    assert ledger.reserve(r) is None  # led a batch (of its own write only: nobody came)
    assert batches == [1]
    assert ledger.settle(r, 3) is True  # that batch had no company: alone again
    assert batches == [1]
    assert ledger.balances(["user"])["user"] == Balance(3, 0)


def test_queued_caller_gives_up_at_its_deadline_and_runs_nothing(
    make: Callable[..., SQLiteLedger], batches: list[int], no_polling: None
) -> None:
    """A caller still queued when its deadline passes gets StorageError; its write never runs."""
    ledger = make("synchronous=normal&timeout=0.3")
    batches.clear()
    with ledger._write_lock:
        (caller,) = queue_behind_lock(ledger, [lambda: ledger.add(["k"], 1)])
        outcome = caller.outcome()  # the lock is still held: nobody can lead
    assert isinstance(outcome, StorageError) and "timeout=0.3s" in str(outcome)
    assert len(ledger._queue) == 0
    ledger.add(["other"], 1)  # a write runs after the caller gave up
    assert ledger.balances(["k", "other"]) == {"k": Balance(0, 0), "other": Balance(1, 0)}
    assert batches == []  # the queued write never ran


def test_taken_operation_outcome_stands_past_its_deadline(
    make: Callable[..., SQLiteLedger], batches: list[int], no_polling: None
) -> None:
    """A caller whose batch is running when its deadline passes gets the committed outcome."""
    slow = threading.Event()

    def clock() -> float:
        if slow.is_set():
            slow.clear()
            time.sleep(0.6)  # the batch runs past the deadlines of its callers
        return time.time()

    ledger = make("synchronous=normal&timeout=0.3", clock=clock)
    batches.clear()
    with ledger._write_lock:
        callers = queue_behind_lock(
            ledger,
            [lambda: ledger.add(["k"], 1, op_id="slow"), lambda: ledger.add(["k"], 2, op_id="b")],
        )
        slow.set()
    ledger._nudge()
    assert [caller.outcome() for caller in callers] == [True, True]
    assert batches == [2]
    assert ledger.balances(["k"])["k"] == Balance(3, 0)


def charge(ledger: SQLiteLedger, op_id: str) -> Callable[[], object]:
    """Return an add of 1 to ``others`` with ``op_id``."""
    return lambda: ledger.add(["others"], 1, op_id=op_id)


def test_interrupted_leader_at_every_line_leaves_no_caller_waiting(
    make: Callable[..., SQLiteLedger], batches: list[int]
) -> None:
    """KeyboardInterrupt at any line of a leader's batch: others all answered, totals exact."""
    ledger, other = make(timeout=5), make(timeout=5)
    ledger.add(["own"], 0)
    at = 0
    probes = 0
    led = 0
    while True:
        at += 1
        op = uuid.uuid4().hex
        with ledger._write_lock:
            callers = queue_behind_lock(ledger, [charge(ledger, f"{op}-{i}") for i in range(3)])
        batches.clear()
        tracer = Interrupt(at)
        sys.settrace(tracer)
        try:
            ledger.add(["own"], 1, op_id=op)
        except KeyboardInterrupt:
            assert tracer.fired
        finally:
            sys.settrace(None)
        assert [caller.outcome() for caller in callers] == [True] * 3, f"at line event {at}"
        led += 4 in batches  # this thread led the batch of all four
        if tracer.fired:
            writes_at_once(other, "probe")
            probes += 1
            ledger.add(["own"], 1, op_id=op)  # the caller's retry: a no-op if it had committed
        assert not ledger._write_lock.locked()
        assert len(ledger._queue) == 0
        assert ledger.balances(["own", "others"]) == {
            "own": Balance(at, 0),
            "others": Balance(3 * at, 0),
        }, f"after an interrupt at line event {at}"
        if not tracer.fired:
            break
    assert at > 20  # the leader's path really ran line by line
    # This thread led the batch of all four at many line events (a follower
    # may lead once nudged, more often on a loaded machine: how often is no guarantee).
    assert led >= 10
    assert ledger.balances(["probe"])["probe"] == Balance(probes, 0)


def lead_when_queued(
    ledger: SQLiteLedger, locked: threading.Event, finished: threading.Event
) -> None:
    """Hold the write lock until a caller is queued (or done), then run its batch as a leader."""
    with ledger._write_lock:
        locked.set()
        while not ledger._queue and not finished.is_set():
            time.sleep(0.0005)
        ledger._lead(ledger._connection(), sqlite_ledger._Op(lambda db: None, FAR))
    ledger._nudge()


def test_interrupted_follower_at_every_line_is_run_once_or_not_at_all(
    make: Callable[..., SQLiteLedger],
) -> None:
    """KeyboardInterrupt at any line of a queued caller: its write ran once or not; lock free."""
    ledger = make(timeout=5)
    ledger.add(["own"], 0)
    at = 0
    while True:
        at += 1
        op = uuid.uuid4().hex
        locked = threading.Event()
        finished = threading.Event()

        helper = threading.Thread(target=lead_when_queued, args=(ledger, locked, finished))
        helper.start()
        locked.wait()
        tracer = Interrupt(at)
        sys.settrace(tracer)
        try:
            ledger.add(["own"], 1, op_id=op)
        except KeyboardInterrupt:
            assert tracer.fired
        finally:
            sys.settrace(None)
            finished.set()
        helper.join(20)
        assert not helper.is_alive()
        if tracer.fired:
            ledger.add(["own"], 1, op_id=op)  # the caller's retry
        assert not ledger._write_lock.locked()
        assert len(ledger._queue) == 0
        assert ledger.balances(["own"])["own"] == Balance(at, 0), f"at line event {at}"
        if not tracer.fired:
            break
    assert at > 10


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_signal_in_a_queued_caller_runs_nothing_and_frees_the_queue(
    make: Callable[..., SQLiteLedger], tmp_path: Path
) -> None:
    """SIGALRM raising in a caller queued behind a stuck batch: its write never runs."""
    ledger = make(timeout=10)
    ledger.add(["t", "main"], 0)
    other = sqlite3.connect(tmp_path / "group.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the leader below waits for SQLite's lock

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGALRM")

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        stuck = Caller(lambda: ledger.add(["t"], 1))
        stuck.start()
        for _ in range(5000):  # the leader has taken its batch and waits in BEGIN
            if ledger._write_lock.locked() and not ledger._queue:
                break
            time.sleep(0.001)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            ledger.add(["main"], 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        other.execute("ROLLBACK")
        other.close()
    assert stuck.outcome() is True
    assert len(ledger._queue) == 0
    assert ledger.balances(["t", "main"]) == {"t": Balance(1, 0), "main": Balance(0, 0)}
    assert ledger.add(["main"], 1) is True


CHILD = """
import sys, threading, time, os, uuid
from budgetguard.ledger import Hold, Reservation, ledger_from_url
url, go, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
ledger = ledger_from_url(url)
won = [0] * 4
def work(i):
    while not os.path.exists(go):
        time.sleep(0.001)
    for _ in range(25):
        r = Reservation(uuid.uuid4().hex, (Hold("user", limit, 10),), time.time() + 60)
        if ledger.reserve(r) is None:
            assert ledger.settle(r, 10)
            won[i] += 1
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(won), flush=True)
"""


@pytest.mark.slow
def test_processes_of_batching_threads_win_exactly_what_fits(tmp_path: Path) -> None:
    """4 processes × 4 threads × 25 calls against a limit of 37: exactly 37 run."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    SQLiteLedger(url).close()
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(go), str(37 * 10)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for _ in range(4)
    ]
    time.sleep(0.5)  # every child imported and connected before the start
    go.touch()
    won = 0
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        won += int(out)
    assert won == 37
    ledger = SQLiteLedger(url)
    assert ledger.balances(["user"])["user"] == Balance(370, 0)
    assert ledger.open_reservations() == []
    ledger.close()
