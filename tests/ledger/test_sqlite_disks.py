"""SQLite on bad disks (full, read-only, corrupted): a clear StorageError, nothing settled lost.

The full and read-only cases mount a small tmpfs, which needs root (CI runs
as root); they skip only where the mount is impossible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetguard.errors import StorageError
from budgetguard.ledger import Balance, Hold, Reservation
from budgetguard.ledger.sqlite import SQLiteLedger

from .conftest import worker_env

FAR = 10**10


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a 2 MiB tmpfs and return its directory; unmount it afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(chunk)
        except OSError:
            pass
    return filler


def settle_one(ledger: SQLiteLedger, index: int) -> None:
    """Reserve and settle one call, with a new tally key (so the file must grow)."""
    r = Reservation(uuid.uuid4().hex, (Hold("user", None, 1),), FAR)
    assert ledger.reserve(r) is None
    ledger.settle(r, 1, (f"tally-{index}-{'x' * 200}",))


def test_full_disk_is_a_storage_error_and_loses_nothing(small_disk: Path) -> None:
    """On a full disk writes raise StorageError saying so; what settled before stays, exactly."""
    url = f"sqlite:///{small_disk / 'spend.db'}?timeout=5"
    ledger = SQLiteLedger(url)
    for index in range(20):
        settle_one(ledger, index)
    filler = fill(small_disk)
    settled = 20
    error: StorageError | None = None
    for index in range(20, 20_000):
        try:
            settle_one(ledger, index)
        except StorageError as caught:
            error = caught
            break
        settled += 1
    assert error is not None, "the disk never filled up"
    assert "disk is full" in str(error) or "full" in str(error).lower()
    assert str(small_disk / "spend.db") in str(error)
    # Nothing that settled was lost, nothing of the failed call half-written.
    assert ledger.balances(["user"])["user"] == Balance(settled, 0)
    assert ledger.open_reservations() == []
    # Space back: the same ledger (and connection) writes again.
    filler.unlink()
    settle_one(ledger, 99_999)
    assert ledger.balances(["user"])["user"] == Balance(settled + 1, 0)
    ledger.close()
    reopened = SQLiteLedger(url)
    assert reopened.balances(["user"])["user"] == Balance(settled + 1, 0)
    reopened.close()


READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import sys, uuid
    from budgetguard.errors import StorageError
    from budgetguard.ledger import Hold, Reservation
    from budgetguard.ledger.sqlite import SQLiteLedger

    try:
        ledger = SQLiteLedger(sys.argv[1])
    except StorageError as error:
        print("open:StorageError:" + str(error))
        sys.exit(0)
    r = Reservation(uuid.uuid4().hex, (Hold("user", None, 1),), 10**10)
    for name, call in (
        ("reserve", lambda: ledger.reserve(r)),
        ("settle", lambda: ledger.settle(r, 1)),
        ("add", lambda: ledger.add(["user"], 1, op_id="x")),
        ("read", lambda: print("SPENT", ledger.balances(["user"])["user"].spent)),
    ):
        try:
            call()
            print(name + ":ok")
        except StorageError as error:
            print(name + ":StorageError:" + str(error))
    """
)


def on_read_only(url: str) -> list[str]:
    """Use the ledger at ``url`` (on a read-only file system) in a child; return what happened."""
    result = subprocess.run(
        [sys.executable, "-c", READ_ONLY_SCRIPT, url],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=60,
    )
    assert result.returncode != -7, "the process died of SIGBUS"
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def check_read_only(lines: list[str], spent: int) -> None:
    """Writes (or the open itself) gave a read-only StorageError; reads show every charge."""
    if lines and lines[0].startswith("open:"):
        assert "StorageError" in lines[0] and "read-only" in lines[0], lines
        return
    writes = [line for line in lines if line.split(":")[0] in ("reserve", "settle", "add")]
    assert len(writes) == 3 and all(":StorageError:" in line for line in writes), lines
    assert all("read-only" in line for line in writes), writes
    assert f"SPENT {spent}" in lines or any(line.startswith("read:StorageError") for line in lines)


def mount(*args: str) -> None:
    """Run mount with ``args``, or skip the test if that is impossible here."""
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed: {result.stderr.strip()}")


def test_read_only_file_system_is_a_storage_error_not_sigbus(small_disk: Path) -> None:
    """A ledger on a read-only file system gives StorageError (read-only), never SIGBUS."""
    live = SQLiteLedger(f"sqlite:///{small_disk / 'spend.db'}")
    for _ in range(5):
        r = Reservation(uuid.uuid4().hex, (Hold("user", None, 1),), FAR)
        live.reserve(r)
        live.settle(r, 1)
    # 1. A live ledger (WAL and its shared-memory index in use) seen read-only.
    view = small_disk.parent / "read-only-view"
    view.mkdir()
    mount("--bind", str(small_disk), str(view))
    try:
        mount("-o", "remount,ro,bind", str(view))
        check_read_only(on_read_only(f"sqlite:///{view / 'spend.db'}?timeout=2"), 5)
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
    assert live.balances(["user"])["user"] == Balance(5, 0)
    live.close()
    # 2. The whole file system turned read-only after the ledger was closed.
    mount("-o", "remount,ro", str(small_disk))
    check_read_only(on_read_only(f"sqlite:///{small_disk / 'spend.db'}?timeout=2"), 5)


def test_corrupted_file_is_a_clear_storage_error(tmp_path: Path) -> None:
    """A ledger file damaged on disk gives StorageError saying it is corrupt, not a raw error."""
    path = tmp_path / "spend.db"
    ledger = SQLiteLedger(f"sqlite:///{path}")
    for index in range(200):
        ledger.add([f"user-{index}-{'x' * 100}"], 1)
    ledger.close()
    size = path.stat().st_size
    with open(path, "r+b") as file:  # damage every page but the first (the header)
        for offset in range(4096, size, 4096):
            file.seek(offset + 8)
            file.write(os.urandom(64))
    errors: list[str] = []
    try:
        damaged = SQLiteLedger(f"sqlite:///{path}")
        for call in (
            lambda: damaged.balances([f"user-{i}-{'x' * 100}" for i in range(200)]),
            lambda: damaged.scan("user-"),
            lambda: damaged.add(["user-1"], 1),
        ):
            try:
                call()
            except StorageError as error:
                errors.append(str(error))
    except StorageError as error:
        errors.append(str(error))
    assert errors, "the damage went unnoticed"
    assert all(str(path) in e for e in errors)
    assert any("corrupt" in e for e in errors), errors


def test_a_settle_on_a_full_disk_is_charged_once_space_is_back(small_disk: Path) -> None:
    """A guarded call whose settle meets a full disk runs, waits in the outbox, is charged later."""
    from decimal import Decimal

    from budgetguard import BudgetGuard

    url = f"sqlite:///{small_disk / 'spend.db'}?timeout=5"
    guard = BudgetGuard(url, metrics=False)
    guard.set_budget("10", user="alice")
    other = SQLiteLedger(url)  # uses up what the file has left once the disk is full
    filler: list[Path] = []

    @guard.budgeted(user="alice", estimate="1", cost=lambda _: "0.25")
    def call() -> str:
        filler.append(fill(small_disk))
        for index in range(20_000):
            try:
                settle_one(other, index)
            except StorageError:
                break
        else:
            raise AssertionError("the disk never filled up")
        return "ran"

    assert call() == "ran"
    assert len(guard._outbox) == 1
    filler[0].unlink()
    assert guard.spend("alice") == Decimal("0.25")  # written first, then read
    assert len(guard._outbox) == 0
    guard.close()
    other.close()
    reader = BudgetGuard(url, metrics=False)
    assert reader.spend("alice") == Decimal("0.25")
    assert reader.ledger.open_reservations() == []
    reader.close()
