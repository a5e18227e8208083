"""Ledgers shared by several processes: races, crashes, outages, bad input."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.ledger import Balance, Hold, Ledger, Reservation, ledger_from_url

from .conftest import RedisServer, free_port, python_child, worker_env

WORKER = str(Path(__file__).with_name("_worker.py"))
CENT = 10_000_000  # 0.01 dollar in nano-dollar units


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start the worker script in a new Python process."""
    return python_child(WORKER, *args)


def outputs(children: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for the children; return their stdout, failing on any error."""
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(out.strip())
    return results


@pytest.mark.slow
@pytest.mark.shared_only
def test_four_processes_race_one_budget(ledger: Ledger, tmp_path: Path) -> None:
    """4 processes × 50 calls of 0.01 against 0.37: exactly 37 run, spent is exactly 0.37."""
    go = tmp_path / "go"
    children = [
        spawn("race", ledger.url, "50", str(CENT), str(37 * CENT), str(go)) for _ in range(4)
    ]
    time.sleep(0.5)  # let every child import and connect before the start
    go.touch()
    assert sum(int(out) for out in outputs(children)) == 37
    assert ledger.balances(["user"])["user"] == Balance(370_000_000, 0)


@pytest.mark.slow
@pytest.mark.shared_only
def test_settle_is_idempotent_across_processes(ledger: Ledger, tmp_path: Path) -> None:
    """Six processes settle one reservation at once: exactly one charges it."""
    r = Reservation("shared-" + uuid.uuid4().hex, (Hold("user", None, CENT),), time.time() + 60)
    assert ledger.reserve(r) is None
    go = tmp_path / "go"
    children = [spawn("settle", ledger.url, r.id, str(CENT), str(go)) for _ in range(6)]
    time.sleep(0.5)
    go.touch()
    assert sorted(outputs(children)) == ["0"] * 5 + ["1"]
    assert ledger.balances(["user"])["user"] == Balance(CENT, 0)
    assert ledger.open_reservations() == []


@pytest.mark.slow
@pytest.mark.shared_only
def test_killed_process_loses_no_reported_charge(
    ledger_url: str, make_ledger: Callable[..., Ledger]
) -> None:
    """SIGKILL mid-loop: every reported settle is recorded, and its open holds expire."""
    child = spawn("crash", ledger_url, str(CENT), "5")
    assert child.stdout is not None
    settled: list[str] = []
    deadline = time.monotonic() + 60
    while len(settled) < 200 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        settled.append(line.strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(settled) >= 200, child.stderr.read() if child.stderr else ""

    if ledger_url.startswith("sqlite"):
        path = ledger_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    ledger = make_ledger()
    spent = ledger.balances(["user"])["user"].spent
    # The settle in flight when the kill came may have committed unreported.
    assert spent in (len(settled) * CENT, (len(settled) + 1) * CENT)
    for reservation_id in settled:
        # Settling again is refused only if the first settle was recorded.
        assert not ledger.settle(Reservation(reservation_id, (Hold("user", None, 0),), 0), 0)
    assert ledger.balances(["user"])["user"].spent == spent

    later = make_ledger(clock=lambda: time.time() + 120)
    assert later.open_reservations() == []
    assert later.balances(["user", "held"]) == {
        "user": Balance(spent, 0),
        "held": Balance(0, 0),
    }


@pytest.mark.slow
@pytest.mark.shared_only
def test_guard_level_race(ledger: Ledger, tmp_path: Path) -> None:
    """4 processes × 50 guarded calls (estimate 0.01) against a 0.37 budget: exactly 37 run."""
    guard = pytest.importorskip("budgetguard.guard", reason="the guard has not landed yet")
    bg = guard.BudgetGuard(ledger=ledger.url)
    bg.set_budget("0.37")
    go = tmp_path / "go"
    children = [spawn("guard", ledger.url, "50", str(go)) for _ in range(4)]
    time.sleep(1.0)
    go.touch()
    assert sum(int(out) for out in outputs(children)) == 37
    assert str(bg.spend()) in ("0.37", "0.370000000")


# -- Redis outages ---------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_redis_outage_and_recovery(redis_server: RedisServer | None, redis_url: str) -> None:
    """Redis stopped: StorageError naming the URL; restarted: the same ledger object works."""
    if redis_server is None:
        pytest.skip("needs the session's own redis-server to stop and start it")
    ledger = ledger_from_url(redis_url, socket_timeout=2.0)
    r = Reservation(uuid.uuid4().hex, (Hold("user", 100, 10),), time.time() + 60)
    assert ledger.reserve(r) is None
    redis_server.stop()
    try:
        for operation in (
            lambda: ledger.reserve(Reservation("x", (Hold("user", 100, 1),), time.time() + 60)),
            lambda: ledger.settle(r, 10),
            lambda: ledger.balances(["user"]),
            lambda: ledger.get_budget("b"),
            ledger.ping,
        ):
            with pytest.raises(StorageError, match=f"cannot reach Redis at {redis_url}"):
                operation()
    finally:
        redis_server.start()
    # The server came back empty (no persistence); the ledger works again
    # without being rebuilt, and the scripts are loaded again on NOSCRIPT.
    assert ledger.reserve(Reservation("y", (Hold("user", 100, 10),), time.time() + 60)) is None
    assert ledger.balances(["user"])["user"] == Balance(0, 10)
    ledger.close()


@pytest.mark.redis
@pytest.mark.slow
async def test_redis_outage_async(redis_server: RedisServer | None, redis_url: str) -> None:
    """The asyncio path reports an outage as StorageError and recovers too."""
    if redis_server is None:
        pytest.skip("needs the session's own redis-server to stop and start it")
    ledger = ledger_from_url(redis_url, socket_timeout=2.0)
    await ledger.aadd(["k"], 1)
    redis_server.stop()
    try:
        with pytest.raises(StorageError):
            await ledger.abalances(["k"])
    finally:
        redis_server.start()
    await ledger.aadd(["k"], 2)
    assert await ledger.abalances(["k"]) == {"k": Balance(2, 0)}
    await ledger.aclose()


# -- bad input ------------------------------------------------------------------------


def test_unreachable_redis_is_a_storage_error() -> None:
    """A refused connection names the URL (password hidden) and the problem."""
    port = free_port()
    ledger = ledger_from_url(f"redis://:hunter2@127.0.0.1:{port}/0", socket_timeout=1.0)
    with pytest.raises(StorageError) as caught:
        ledger.reserve(Reservation("a", (Hold("k", 1, 1),), time.time() + 60))
    message = str(caught.value)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in message
    assert "hunter2" not in message and "hunter2" not in repr(ledger)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:notaport/0",
        "redis://localhost:6379/notadb",
        "redis://localhost:6379/0?prefix=%7Bx%7D",
        "redis://localhost:6379/0?ended_ttl=-1",
        "sqlite://spend.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:////no/such/directory/spend.db",
        "sqlite:///spend.db?synchronous=sometimes",
        "sqlite:///spend.db?colour=blue",
        "ftp://example.com/spend",
        "spend.db",
    ],
)
def test_malformed_urls_are_configuration_errors(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL that cannot work raises ConfigurationError saying what is wrong."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        ledger_from_url(url)
    print(caught.value)  # shown with -s: the messages are part of the feature


def test_missing_redis_package_names_the_extra() -> None:
    """Without redis-py, a redis:// URL says which extra to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from budgetguard.ledger import ledger_from_url\n"
        "from budgetguard.errors import ConfigurationError\n"
        "try:\n    ledger_from_url('redis://localhost')\n"
        "except ConfigurationError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(), check=True
    ).stdout
    assert "pip install 'budgetguard-llm[redis]'" in out
