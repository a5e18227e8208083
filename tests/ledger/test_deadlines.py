"""One deadline per ledger operation, whatever the queue in front of it; bad options refused."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.ledger import Balance, Hold, Reservation, ledger_from_url
from budgetguard.ledger.sqlite import SQLiteLedger


def race_writers(ledger: SQLiteLedger, threads: int) -> list[tuple[float, BaseException | None]]:
    """Run ``threads`` adds at once; return each one's duration and error."""
    results: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def write() -> None:
        start.wait()
        began = time.monotonic()
        error: BaseException | None = None
        try:
            ledger.add(["k"], 1)
        except StorageError as caught:
            error = caught
        with lock:
            results.append((time.monotonic() - began, error))

    workers = [threading.Thread(target=write) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def test_sqlite_writers_do_not_stack_their_waits(tmp_path: Path) -> None:
    """8 writers behind a held lock each give up after about timeout, not timeout × 8."""
    path = tmp_path / "a.db"
    ledger = SQLiteLedger(f"sqlite:///{path}?timeout=0.5")
    ledger.add(["k"], 0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        results = race_writers(ledger, 8)
        elapsed = time.monotonic() - began
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(error is not None for _, error in results)
    assert all("timeout=0.5s" in str(error) for _, error in results)
    assert max(duration for duration, _ in results) < 1.2, results
    assert elapsed < 1.5  # was 8 × busy_timeout = 4 s
    assert ledger.balances(["k"])["k"] == Balance(0, 0)
    ledger.close()


def test_sqlite_writers_succeed_when_the_lock_frees_in_time(tmp_path: Path) -> None:
    """Writers queued behind a lock released before their deadline all succeed, once each."""
    path = tmp_path / "a.db"
    ledger = SQLiteLedger(f"sqlite:///{path}?timeout=5")
    ledger.add(["k"], 0)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
    timer.start()
    results = race_writers(ledger, 8)
    timer.join()
    other.close()
    assert [error for _, error in results] == [None] * 8
    assert ledger.balances(["k"])["k"] == Balance(8, 0)
    ledger.close()


@pytest.mark.parametrize("operation", ["reserve", "settle", "add", "balances"])
def test_redis_operation_gives_up_at_its_deadline(silent_server: int, operation: str) -> None:
    """A Redis that never answers gives StorageError naming timeout=, after about timeout."""
    pytest.importorskip("redis")
    ledger = ledger_from_url(f"redis://127.0.0.1:{silent_server}/0?timeout=0.3&protocol=2")
    r = Reservation(uuid.uuid4().hex, (Hold("k", 10, 1),), time.time() + 60)
    calls = {
        "reserve": lambda: ledger.reserve(r),
        "settle": lambda: ledger.settle(r, 1),
        "add": lambda: ledger.add(["k"], 1, op_id="x"),
        "balances": lambda: ledger.balances(["k"]),
    }
    began = time.monotonic()
    with pytest.raises(StorageError, match=r"timeout=0\.3s"):
        calls[operation]()
    assert time.monotonic() - began < 0.6  # one deadline, not one per attempt
    ledger.close()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sqlite:///spend.db?timeout=abc", "'abc'"),
        ("sqlite:///spend.db?timeout=-1", "'-1'"),
        ("sqlite:///spend.db?timeout=nan", "'nan'"),
        ("sqlite:///spend.db?timeout=inf", "'inf'"),
        ("sqlite:///spend.db?busy_timeout=0", "'0'"),
        ("sqlite:///spend.db?timeout=1&busy_timeout=2", "busy_timeout"),
        ("sqlite:///spend.db?ended_ttl=nan", "'nan'"),
        ("sqlite:///spend.db?synchronous=maybe", "'maybe'"),
        ("sqlite:///spend.db?colour=blue", "colour"),
        ("redis://localhost:6379/0?timeout=nan", "'nan'"),
        ("redis://localhost:6379/0?timeout=0", "'0'"),
        ("redis://localhost:6379/0?socket_timeout=abc", "'abc'"),
        ("redis://localhost:6379/0?timeout=1&socket_timeout=2", "socket_timeout"),
        ("redis://localhost:6379/0?ended_ttl=-5", "'-5'"),
        ("redis://localhost:6379/0?ended_ttl=1e999", "'1e999'"),
        ("redis://localhost:6379/0?prefix=%7Bx%7D", "'{x}'"),
        ("redis://localhost:6379/abc", "'/abc'"),
        ("memory://somewhere", "'memory://somewhere'"),
        ("memory://?limit=5", "'memory://?limit=5'"),
    ],
)
def test_bad_url_parameters_name_the_value(
    url: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger URL with a bad parameter is refused with a ConfigurationError naming the value."""
    if url.startswith("redis"):
        pytest.importorskip("redis")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        ledger_from_url(url)
    assert named in str(caught.value)
    assert not (tmp_path / "spend.db").exists()  # refused before anything was created
