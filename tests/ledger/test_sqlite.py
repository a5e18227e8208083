"""What only the SQLite ledger does: files, schema versions, durability settings."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.ledger import Balance, Hold, Reservation, ledger_from_url
from budgetguard.ledger.sqlite import SCHEMA_VERSION, SQLiteLedger

from .conftest import worker_env


def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///name is relative to the working directory, sqlite:////path is absolute."""
    monkeypatch.chdir(tmp_path)
    relative = ledger_from_url("sqlite:///spend.db")
    absolute = ledger_from_url(f"sqlite:///{tmp_path / 'spend.db'}")
    assert isinstance(relative, SQLiteLedger) and isinstance(absolute, SQLiteLedger)
    assert relative.path == absolute.path == str(tmp_path / "spend.db")
    relative.add(["k"], 1)
    assert absolute.balances(["k"])["k"] == Balance(1, 0)
    relative.close()
    absolute.close()


def test_schema_is_versioned(tmp_path: Path) -> None:
    """A new file gets the current schema version in PRAGMA user_version, and WAL."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    assert ledger.schema_version == SCHEMA_VERSION == 5
    with sqlite3.connect(tmp_path / "a.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {
        "counters",
        "reservations",
        "ended",
        "budgets",
        "added",
        "budget_deleted",
        "budget_meta",
    }
    ledger.close()
    # Opening again runs no migration and keeps the data.
    SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}").close()


def test_synchronous_setting(tmp_path: Path) -> None:
    """synchronous is FULL by default and NORMAL on request."""
    full = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    normal = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}?synchronous=normal")
    # 2 is FULL, 1 is NORMAL; each connection has its own setting.
    assert full._connection().execute("PRAGMA synchronous").fetchone() == (2,)
    assert normal._connection().execute("PRAGMA synchronous").fetchone() == (1,)
    full.close()
    normal.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer budgetguard is not touched."""
    path = tmp_path / "a.db"
    SQLiteLedger(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99, newer"):
        SQLiteLedger(f"sqlite:///{path}")


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    """A SQLite file of some other application is not adopted."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StorageError, match="not a budgetguard ledger"):
        SQLiteLedger(f"sqlite:///{path}")


def test_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    """A file that is not a database gives a StorageError naming the path."""
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database\x00" * 400)
    with pytest.raises(StorageError) as caught:
        SQLiteLedger(f"sqlite:///{path}")
    assert str(path) in str(caught.value)
    assert "corrupt or is not a SQLite database" in str(caught.value)


def test_directory_as_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A path naming a directory is refused before anything is opened."""
    with pytest.raises(ConfigurationError, match="is a directory"):
        SQLiteLedger(f"sqlite:///{tmp_path}")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """Return a directory that an unprivileged user can read (for the read-only tests)."""
    directory = Path(tempfile.mkdtemp(prefix="budgetguard-ro-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def drop_root_powers() -> None:
    """Make a root child obey file permissions: drop the capabilities that override them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def open_as_unprivileged(url: str) -> str:
    """Open ``url`` and add to it as a user without write permission; return the error."""
    code = (
        "import sys\n"
        "from budgetguard.ledger import ledger_from_url\n"
        "from budgetguard.errors import StorageError\n"
        "try:\n"
        "    ledger_from_url(sys.argv[1]).add(['k'], 1)\n"
        "except StorageError as e:\n"
        "    print('StorageError:', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, url],
        capture_output=True,
        text=True,
        env=worker_env(),
        preexec_fn=drop_root_powers if os.geteuid() == 0 else None,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_read_only_file_is_a_storage_error(shared_dir: Path) -> None:
    """A ledger file the process may not write gives a clear StorageError."""
    path = shared_dir / "spend.db"
    SQLiteLedger(f"sqlite:///{path}").close()
    for name in os.listdir(shared_dir):
        (shared_dir / name).chmod(0o444)
    message = open_as_unprivileged(f"sqlite:///{path}")
    assert message.startswith("StorageError:"), message
    assert str(path) in message
    assert "read-only" in message or "cannot be opened" in message


def test_unwritable_directory_is_a_storage_error(shared_dir: Path) -> None:
    """A new ledger in a directory the process may not write gives a clear StorageError."""
    shared_dir.chmod(0o555)
    path = shared_dir / "new.db"
    message = open_as_unprivileged(f"sqlite:///{path}")
    assert message.startswith("StorageError:"), message
    assert str(path) in message


def test_closed_ledger_raises(tmp_path: Path) -> None:
    """A closed ledger reports that it is closed."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    ledger.close()
    with pytest.raises(StorageError, match="closed"):
        ledger.balances(["k"])


def test_ended_ids_are_pruned(tmp_path: Path) -> None:
    """Ended reservation ids are forgotten after ended_ttl, bounding the table."""
    from budgetguard.ledger import Hold, Reservation

    now = [1000.0]
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}?ended_ttl=60", clock=lambda: now[0])
    for i in range(5):
        ledger.settle(Reservation(f"r{i}", (Hold("k", None, 1),), 2000), 1)
    now[0] += 61
    ledger.reserve(Reservation("fresh", (Hold("k", None, 1),), 5000))
    rows = ledger._connection().execute("SELECT count(*) FROM ended").fetchone()
    assert rows == (0,)
    ledger.close()


def test_writers_wait_for_each_other(tmp_path: Path) -> None:
    """A write lock held by another connection makes a writer wait, then succeed."""
    import threading

    path = tmp_path / "a.db"
    ledger = SQLiteLedger(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    timer.start()
    ledger.add(["k"], 1)  # waits for the other connection's commit
    timer.join()
    assert ledger.balances(["k"])["k"] == Balance(1, 0)
    other.close()
    ledger.close()


def test_busy_timeout_is_a_storage_error(tmp_path: Path) -> None:
    """A write lock held past busy_timeout gives a StorageError that says so."""
    path = tmp_path / "a.db"
    ledger = SQLiteLedger(f"sqlite:///{path}?busy_timeout=0.2")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StorageError, match=r"busy_timeout=0\.2s"):
        ledger.add(["k"], 1)
    other.execute("ROLLBACK")
    other.close()
    ledger.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """A ledger inherited through fork (gunicorn preload) opens fresh connections in the child."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    ledger.add(["k"], 1)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ledger.add(["k"], 10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ledger.balances(["k"])["k"] == Balance(11, 0)
    ledger.close()


def test_version_1_file_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    """A ledger written by schema version 1 gains the later tables and keeps every balance."""
    from budgetguard.ledger.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO counters (key, spent, reserved) VALUES ('k', 42, 0)")
        db.execute("PRAGMA user_version = 1")
    ledger = SQLiteLedger(f"sqlite:///{path}")
    assert ledger.schema_version == SCHEMA_VERSION
    assert ledger.balances(["k"])["k"] == Balance(42, 0)
    assert ledger.add(["k"], 1, op_id="once") is True
    assert ledger.add(["k"], 1, op_id="once") is False
    assert ledger.balances(["k"])["k"] == Balance(43, 0)
    ledger.close()


def test_op_ids_are_pruned(tmp_path: Path) -> None:
    """Op ids of add are forgotten after ended_ttl, bounding the table."""
    now = [1000.0]
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}?ended_ttl=60", clock=lambda: now[0])
    for i in range(5):
        ledger.add(["k"], 1, op_id=f"op{i}")
    now[0] += 61
    ledger.add(["k"], 1, op_id="fresh")
    rows = ledger._connection().execute("SELECT count(*) FROM added").fetchone()
    assert rows == (1,)
    ledger.close()


def _file_at_version(tmp_path: Path, version: int, *rows: str) -> Path:
    """Write a ledger file as budgetguard's schema ``version`` made it, holding ``rows``."""
    from budgetguard.ledger.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for migration in MIGRATIONS[:version]:
            for statement in migration:
                db.execute(statement)
        for row in rows:
            db.execute(row)
        db.execute(f"PRAGMA user_version = {version}")
    return path


def test_version_3_file_is_upgraded_keeping_its_reservations(tmp_path: Path) -> None:
    """A version 3 file (holds of [key, limit, amount]) upgrades; its open holds still end."""
    # What version 3 wrote for an open reservation and an expired one.
    path = _file_at_version(
        tmp_path,
        3,
        "INSERT INTO counters (key, spent, reserved) VALUES ('k', 5, 7), ('g', 0, 3)",
        "INSERT INTO reservations (id, holds, expires_at) VALUES"
        """ ('open', '[["k", 100, 4], ["g", null, 3]]', 1e10),"""
        """ ('late', '[["k", 100, 3]]', 1.0)""",
    )
    ledger = SQLiteLedger(f"sqlite:///{path}")
    assert ledger.schema_version == SCHEMA_VERSION == 5
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
    assert ledger.open_reservations() == [
        Reservation("open", (Hold("k", 100, 4), Hold("g", None, 3)), 1e10)
    ]
    assert ledger.balances(["k", "g"]) == {"k": Balance(5, 4), "g": Balance(0, 3)}
    assert ledger.settle(ledger.open_reservations()[0], [2], ["t"]) is True
    assert ledger.balances(["k", "g", "t"]) == {
        "k": Balance(7, 0),
        "g": Balance(2, 0),
        "t": Balance(2, 0),
    }
    # New holds are written in the new form next to the old rows.
    new = Reservation("new", (Hold("k", 100, 1, unit=3, over="o"),), 1e10)
    assert ledger.reserve(new) is None
    assert ledger.open_reservations() == [new]
    ledger.close()
    # And an older budgetguard would refuse the file: its version is above 3.
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] > 3


def test_version_4_file_is_upgraded_keeping_every_id(tmp_path: Path) -> None:
    """A version 4 file upgrades; its open holds, ended ids and charge op ids all still count."""
    # What version 4 wrote: an open reservation, a settled one, a charge op id.
    path = _file_at_version(
        tmp_path,
        4,
        "INSERT INTO counters (key, spent, reserved) VALUES ('k', 5, 4)",
        "INSERT INTO reservations (id, holds, expires_at) VALUES"
        """ ('open', '[["k", 100, 4]]', 1e10)""",
        "INSERT INTO ended (id, settled, at) VALUES ('done', 1, 1e10)",
        "INSERT INTO added (id, at) VALUES ('charged', 1e10)",
    )
    ledger = SQLiteLedger(f"sqlite:///{path}", clock=lambda: 1e9)
    assert ledger.schema_version == SCHEMA_VERSION
    with sqlite3.connect(path) as db:
        tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    for table in ("reservations", "ended", "added"):
        assert "WITHOUT ROWID" in tables[table]
    assert {"reservations_by_expiry", "ended_by_time", "added_by_time"} <= indexes
    assert ledger.open_reservations() == [Reservation("open", (Hold("k", 100, 4),), 1e10)]
    # The settled id stays settled, the op id stays used, the open hold still ends.
    assert ledger.settle(Reservation("done", (Hold("k", 100, 4),), 1e10), 3) is False
    with pytest.raises(ValueError, match="used before"):
        ledger.reserve(Reservation("done", (Hold("k", 100, 1),), 1e10))
    assert ledger.add(["k"], 1, op_id="charged") is False
    assert ledger.settle(ledger.open_reservations()[0], 2) is True
    assert ledger.balances(["k"]) == {"k": Balance(7, 0)}
    ledger.close()


def test_hold_that_fits_once_expired_holds_end_is_admitted_within_the_second(
    tmp_path: Path,
) -> None:
    """A reserve that fits only without expired holds ends them first, even between the sweeps."""
    now = [1000.0]
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}", clock=lambda: now[0])
    assert ledger.reserve(Reservation("old", (Hold("k", 10, 8),), 1000.5)) is None
    assert ledger.reserve(Reservation("soft-old", (Hold("s", 10, 8),), 1000.5)) is None
    now[0] = 1000.6  # expired, and less than a second after the last sweep
    assert ledger.reserve(Reservation("new", (Hold("k", 10, 8),), 2000.0)) is None
    assert ledger.reserve(Reservation("soft", (Hold("s", 10, 8, over="o"),), 2000.0)) is None
    assert ledger.balances(["k", "s", "o"]) == {
        "k": Balance(0, 8),
        "s": Balance(0, 8),
        "o": Balance(0, 0),
    }
    # The refusal of a hold that does not fit even so reports the balance after the sweep.
    refusal = ledger.reserve(Reservation("big", (Hold("k", 10, 3),), 2000.0))
    assert refusal is not None and (refusal.spent, refusal.reserved) == (0, 8)
    ledger.close()


def test_settle_drops_the_holds_the_file_records(tmp_path: Path) -> None:
    """A settle given other holds for a reservation id drops what the file holds for it."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    assert ledger.reserve(Reservation("r", (Hold("a", 100, 4), Hold("b", None, 6)), 1e10)) is None
    assert ledger.settle(Reservation("r", (Hold("a", 100, 1), Hold("b", None, 1)), 1e10), 2)
    assert ledger.balances(["a", "b"]) == {"a": Balance(2, 0), "b": Balance(2, 0)}
    ledger.close()


def test_settle_given_holds_that_cannot_be_hashed_drops_what_the_file_records(
    tmp_path: Path,
) -> None:
    """A settle whose holds cannot be hashed (settle checks less than reserve) still settles."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    assert ledger.reserve(Reservation("r", (Hold("a", 100, 4),), 1e10)) is None
    odd = Reservation("r", (Hold("a", 100, 4, over=["x"]),), 1e10)  # type: ignore[arg-type]
    assert ledger.settle(odd, 3) is True
    assert ledger.balances(["a"]) == {"a": Balance(3, 0)}
    assert ledger.open_reservations() == []
    ledger.close()


class _UnhashableKey(str):
    """A str whose instances cannot be hashed."""

    __hash__ = None  # type: ignore[assignment]


def test_reserve_of_a_key_that_cannot_be_hashed_holds_it(tmp_path: Path) -> None:
    """A key of a str type that cannot be hashed is held and released as any key."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    reservation = Reservation("u", (Hold(_UnhashableKey("b"), 100, 4),), 1e10)
    assert ledger.reserve(reservation) is None
    assert ledger.balances(["b"]) == {"b": Balance(0, 4)}
    assert ledger.release(reservation) is True
    assert ledger.balances(["b"]) == {"b": Balance(0, 0)}
    ledger.close()


def test_settle_charges_each_hold_and_tally_in_one_write(tmp_path: Path) -> None:
    """A settle drops each hold's own amount, charges each key its unit and each tally once."""
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}")
    r = Reservation("r", (Hold("a", 100, 4), Hold("b", 100, 6, unit=1), Hold("c", None, 5)), 1e10)
    assert ledger.reserve(Reservation("other", (Hold("a", 100, 2),), 1e10)) is None
    assert ledger.reserve(r) is None
    assert ledger.settle(r, [3, 0], ["t", "u"]) is True
    assert ledger.balances(["a", "b", "c", "t", "u"]) == {
        "a": Balance(3, 2),  # the other reservation still holds its 2
        "b": Balance(0, 0),
        "c": Balance(3, 0),
        "t": Balance(3, 0),
        "u": Balance(3, 0),
    }
    assert ledger.scan("b") == {}  # a key left with nothing is dropped
    # A tally on a held key, and a key held twice: each still counts once per entry.
    twice = Reservation("twice", (Hold("k", 100, 4), Hold("k", 100, 1)), 1e10)
    assert ledger.reserve(twice) is None
    assert ledger.settle(twice, 2, ["k"]) is True
    assert ledger.balances(["k"]) == {"k": Balance(6, 0)}
    ledger.close()


def test_settle_release_and_expiry_each_end_a_reservation_once(tmp_path: Path) -> None:
    """Settle, release and expiry end a reservation once; a late settle charges, once."""
    now = [1000.0]
    ledger = SQLiteLedger(f"sqlite:///{tmp_path / 'a.db'}", clock=lambda: now[0])
    settled = Reservation("settled", (Hold("a", 100, 4), Hold("b", None, 6)), 1e10)
    assert ledger.reserve(settled) is None
    assert ledger.settle(settled, 3, ["t"]) is True
    assert ledger.settle(settled, 3, ["t"]) is False  # once
    released = Reservation("released", (Hold("a", 100, 5),), 1e10)
    assert ledger.reserve(released) is None
    assert ledger.release(released) is True
    assert ledger.release(released) is False
    assert ledger.settle(released, 1) is True  # a late settle charges all the same, once
    assert ledger.settle(released, 1) is False
    expired = Reservation("expired", (Hold("a", 100, 7),), 1000.5)
    assert ledger.reserve(expired) is None
    now[0] = 1002.0
    assert ledger.open_reservations() == []  # the read ended it
    assert ledger.settle(expired, 2) is True
    assert ledger.balances(["a", "b", "t"]) == {
        "a": Balance(3 + 1 + 2, 0),
        "b": Balance(3, 0),
        "t": Balance(3, 0),
    }
    never = Reservation("never", (Hold("a", 100, 1),), 1e10)
    assert ledger.release(never) is False
    with pytest.raises(ValueError, match="used before"):
        ledger.reserve(never)  # a released id holds nothing, even late
    assert ledger.open_reservations() == []
    ledger.close()
