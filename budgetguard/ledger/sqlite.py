"""The SQLite ledger: durable, shared by every process on one host.

URLs name a file, as SQLAlchemy does::

    sqlite:///spend.db              relative to the working directory
    sqlite:////var/lib/app/spend.db absolute (four slashes)
    sqlite:///spend.db?synchronous=normal&timeout=10

``sqlite:///:memory:`` is refused: an in-memory SQLite database is private to
one connection, so it would be neither shared nor durable; ``memory://`` is the
ledger for that.

Durability: the database runs in WAL mode with ``synchronous=FULL`` by
default, so a charge that returned is on disk, surviving ``kill -9`` *and* a
power loss, at the price of one fsync per operation (well under a millisecond
on an SSD, nothing next to an LLM call). ``synchronous=normal`` skips that
fsync; with WAL a committed transaction still survives the process being
killed (it is in the OS page cache), but the last ones may be lost if the
machine itself goes down.

Concurrency: every write runs in a ``BEGIN IMMEDIATE`` transaction, so
processes queue on SQLite's write lock and a check can never be separated
from its charge. Each thread has its own connection.

Group commit: the writes of one process's threads join one queue, in order.
A thread that finds no batch running leads: it takes every queued write (up
to 64) and runs them in one transaction, each in its own savepoint, so one
that fails (a reused reservation id) is undone alone while the others commit;
a write sees the writes before it in its batch. Every caller returns only
after the transaction holding its write has committed (with ``synchronous=
full``, one fsync then covers the whole batch) and gets its own write's
outcome. A thread that finds nobody queued and no batch running skips the
queue: its write runs at once in a transaction of its own, as without group
commit (no waiting for company), unless the last batch had company: then it
leads a batch, which yields once before taking the queue, so that the callers
that batch has just answered, a step from their next write, share its commit
instead of queueing behind a commit of one write. Other processes still queue
on SQLite's lock: each process batches its own threads.

Bounded waits: every operation has one deadline, ``timeout`` seconds (default
30) from its start, whatever the queue in front of it. A write still queued
when its deadline passes is taken out and never runs: ``StorageError``. A
batch sets SQLite's busy timeout to what is left of the earliest deadline in
it (or up to a sixteenth less, so that one setting serves many batches) and
drops the writes already late; if the lock is not free by then, every
write of the batch gets a ``StorageError`` and none ran. A write already
taken into a running batch when its deadline passes keeps that batch's
outcome (committed or not); its caller waits for it, no longer than the
batch, whose wait for the lock is bounded by that same deadline.

Faults: the transaction is ``with connection:``, whose exit (``COMMIT``, or
``ROLLBACK`` on any exception, ``KeyboardInterrupt`` included) runs in C, so
an interrupt cannot land between the last statement and the end of the
transaction; a connection found inside a transaction (a ``COMMIT`` that
failed) is rolled back before its next use. An interrupt (``KeyboardInterrupt``,
``SystemExit`` from a signal handler) in a leader rolls its batch back and
puts the other callers' writes back at the head of the queue, where the next
leader runs them; the interrupted caller's own write did not run. An
interrupt in a waiting caller takes its write out of the queue (it never
runs), or, if a batch already holds it, leaves that batch's outcome standing.
Either way every other caller is answered and no lock stays held.
``mmap_size`` is 0, so a file on a disk that fails or turns read-only gives
an error, not a ``SIGBUS``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigurationError, StorageError
from .base import (
    TOMBSTONE_SECONDS,
    WEIGHT_SCALE,
    Balance,
    BudgetChanges,
    Hold,
    Refusal,
    Reservation,
    _ThreadedAsync,
    budget_from_json,
    budget_to_json,
    check_idempotency_ttl,
    check_op_id,
    check_reservation,
    check_settle_amount,
    check_units,
)

__all__ = ["SQLiteLedger"]

T = TypeVar("T")

logger = logging.getLogger("budgetguard")

#: Each entry upgrades the schema from version ``index`` to ``index + 1``;
#: ``PRAGMA user_version`` records how many have run. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE counters (
            key TEXT PRIMARY KEY,
            spent INTEGER NOT NULL DEFAULT 0,
            reserved INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE reservations (
            id TEXT PRIMARY KEY,
            holds TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX reservations_by_expiry ON reservations (expires_at)",
        """CREATE TABLE ended (
            id TEXT PRIMARY KEY,
            settled INTEGER NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX ended_by_time ON ended (at)",
        "CREATE TABLE budgets (name TEXT PRIMARY KEY, definition TEXT NOT NULL)",
    ),
    (
        # Ids of direct charges (add with op_id), so a retried charge counts once.
        "CREATE TABLE added (id TEXT PRIMARY KEY, at REAL NOT NULL)",
        "CREATE INDEX added_by_time ON added (at)",
    ),
    (
        # Incremental reads of budget definitions (budget_changes): a version
        # per change, the names of deleted ones for a day, and the mark of
        # this store of definitions. A file that already holds definitions
        # gets its mark here, in the same transaction.
        "ALTER TABLE budgets ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX budgets_by_version ON budgets (version)",
        """CREATE TABLE budget_deleted (
            name TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX budget_deleted_by_version ON budget_deleted (version)",
        "CREATE INDEX budget_deleted_by_time ON budget_deleted (at)",
        """CREATE TABLE budget_meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            mark TEXT NOT NULL,
            version INTEGER NOT NULL,
            floor INTEGER NOT NULL
        )""",
        "INSERT INTO budget_meta (id, mark, version, floor)"
        " SELECT 1, lower(hex(randomblob(16))), 0, 0 WHERE EXISTS (SELECT 1 FROM budgets)",
    ),
    (
        # Holds with a unit, a soft over key or a sliding window: the holds
        # JSON of a reservation may now hold [key, limit, amount, unit, over,
        # prior, weight] as well as [key, limit, amount]. Rows written before
        # read as they are; the version number is what changes, so that an
        # older budgetguard refuses a file it would misread.
        "SELECT 1",
    ),
    (
        # The tables keyed by an id keep their rows in the id's own B-tree
        # (WITHOUT ROWID): a write of a reservation, an ended id or an op id
        # updates one B-tree fewer (no rowid table beside the id's index),
        # so a transaction writes fewer pages. Rows are copied as they are.
        """CREATE TABLE reservations_v5 (
            id TEXT PRIMARY KEY,
            holds TEXT NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO reservations_v5 (id, holds, expires_at)"
        " SELECT id, holds, expires_at FROM reservations WHERE id IS NOT NULL",
        "DROP TABLE reservations",
        "ALTER TABLE reservations_v5 RENAME TO reservations",
        "CREATE INDEX reservations_by_expiry ON reservations (expires_at)",
        """CREATE TABLE ended_v5 (
            id TEXT PRIMARY KEY,
            settled INTEGER NOT NULL,
            at REAL NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO ended_v5 (id, settled, at)"
        " SELECT id, settled, at FROM ended WHERE id IS NOT NULL",
        "DROP TABLE ended",
        "ALTER TABLE ended_v5 RENAME TO ended",
        "CREATE INDEX ended_by_time ON ended (at)",
        "CREATE TABLE added_v5 (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID",
        "INSERT INTO added_v5 (id, at) SELECT id, at FROM added WHERE id IS NOT NULL",
        "DROP TABLE added",
        "ALTER TABLE added_v5 RENAME TO added",
        "CREATE INDEX added_by_time ON added (at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite integers are signed 64-bit; a sum past this would silently turn into
# a float, so amounts are kept well below it.
_MAX_UNITS = 2**62
_INF_TIME = float("inf")
_SYNCHRONOUS = ("full", "normal", "extra")


#: Operations run in one transaction at most (group commit).
_BATCH = 64
#: Seconds a queued caller sleeps before looking again if no one woke it
#: (a leader interrupted before it could): nobody is left waiting for long.
_POLL = 0.05
#: Whether a leader whose last batch had company yields once before taking
#: the next batch (see ``_lead``).
_COMMIT_DELAY = True
_QUEUED, _TAKEN, _DONE, _ABANDONED = "queued", "taken", "done", "abandoned"


class _Op(Generic[T]):
    """One write waiting in (or taken from) the queue of a ledger's group commit."""

    __slots__ = ("body", "deadline", "outcome", "state", "wake")

    def __init__(self, body: Callable[[sqlite3.Cursor], T], deadline: float) -> None:
        self.body = body
        self.deadline = deadline  # time.monotonic() by which it must be done
        self.state = _QUEUED
        #: (failed, value or exception), once run; None if not run or rolled back.
        self.outcome: tuple[bool, Any] | None = None
        #: Released when answered, or when it may lead; made once its caller waits.
        self.wake: threading.Lock | None = None


def _armed_wake() -> threading.Lock:
    """Return a wake for a waiting caller: a lock held until someone releases it.

    A plain lock rather than ``threading.Event``: releasing it is one C call,
    so an interrupt in the thread that wakes cannot leave it half set (an
    ``Event`` is Python code around a ``Condition`` whose lock it could keep).
    """
    wake = threading.Lock()
    wake.acquire()
    return wake


def _wake_up(wake: threading.Lock | None) -> None:
    """Release ``wake`` if it is held; waking twice is waking once."""
    if wake is not None and wake.locked():
        with suppress(RuntimeError):  # another thread released it first
            wake.release()


class _Connection:
    """Hold one thread's connection (sqlite3 connections cannot be weakly referenced)."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db


class SQLiteLedger(_ThreadedAsync):
    """Keep spend in one SQLite file that every process on the host shares.

    Options (keyword arguments or URL query parameters): ``timeout`` the
    deadline of one operation in seconds, including every wait for another
    thread's or process's write lock (default 30; ``busy_timeout`` is the
    older name of the same option);
    ``synchronous`` ``"full"`` (default) or ``"normal"``;
    ``idempotency_ttl`` seconds for which settled and released reservation
    ids and ``add`` op ids are remembered, so that a late repeated settle or
    a retried charge is ignored (default 3600, at least 60; ``ended_ttl`` is
    the older name).
    """

    schemes = ("sqlite",)
    shared = True
    max_units = 2**62 - 1

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float | str | None = None,
        busy_timeout: float | str | None = None,
        synchronous: str | None = None,
        idempotency_ttl: float | str | None = None,
        ended_ttl: float | str | None = None,
    ) -> None:
        super().__init__(url, clock=clock)
        path, query = _parse_url(url)
        self.path = path
        given = {
            name: value
            for name, value in (
                ("timeout", timeout if timeout is not None else query.pop("timeout", None)),
                (
                    "busy_timeout",
                    busy_timeout if busy_timeout is not None else query.pop("busy_timeout", None),
                ),
            )
            if value is not None
        }
        if len(given) > 1:
            raise ConfigurationError(
                f"timeout and busy_timeout name the same deadline; give one ({url!r})"
            )
        self._timeout_name, raw = next(iter(given.items()), ("timeout", 30.0))
        #: Seconds one operation may take, waits for the write lock included.
        self.timeout = _positive(self._timeout_name, raw, url)
        self.busy_timeout = self.timeout  # the older name
        self.idempotency_ttl = _idempotency_ttl(idempotency_ttl, ended_ttl, query, url)
        self.ended_ttl = self.idempotency_ttl  # the older name
        mode = str(synchronous if synchronous is not None else query.pop("synchronous", "full"))
        if mode.lower() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {mode!r} in {url!r}"
            )
        self.synchronous = mode.lower()
        if query:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(query))} in {url!r}; "
                "known: timeout, busy_timeout, synchronous, idempotency_ttl, ended_ttl"
            )
        self._closed = False
        self._forget_at = -_INF_TIME  # when ended and added ids are next forgotten (_forget)
        self._expire_at = -_INF_TIME  # when a reserve next ends expired reservations
        #: The holds JSON of the last reservations, by their holds: a settle
        #: finds the text its reserve wrote instead of writing it again.
        self._written = functools.lru_cache(maxsize=1024)(_holds_json)
        self._reset_connections()
        self._open_database()

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them, in one transaction."""
        check_reservation(reservation)
        rid, holds, expires = reservation
        # One pass over the holds gives what the transaction needs: the read,
        # its arguments, the charge of the held amounts and the holds JSON.
        # The read gives whether the id was used and what every limited hold
        # is checked against: the same SQL text for the same shape of holds,
        # so it stays prepared in the connection's statement cache.
        shape: list[int] = []
        read_args: list[object] = [rid]
        charges: list[object] = []
        for hold in holds:
            key, limit, amount = hold[0], hold[1], hold[2]
            if amount >= _MAX_UNITS:
                _check_fits(amount)
            charges += (key, amount)
            if limit is None:
                shape.append(0)
            elif hold[5] is None:
                shape.append(1)
                read_args.append(key)
            else:
                shape.append(2)
                read_args += (key, hold[5])
        read_sql = _check_sql(tuple(shape))
        # One statement charges the held amounts (in chunks past 200 holds).
        charge_sql = _charge_sql(len(holds), "reserved") if 0 < len(holds) <= 200 else None
        try:
            holds_json = self._written(holds)
        except TypeError:  # a field that cannot be hashed (a str subclass, say)
            holds_json = _holds_json(holds)
        expires_at = float(expires)

        def run(db: sqlite3.Cursor) -> Refusal | None:
            now = self.clock()
            # Expired reservations are released once a second, and at once
            # whenever a hold would not fit: releasing only frees units, so
            # what fits is the same as if every reserve released them first.
            expired = self._expire_if_time(db, now)
            row = db.execute(read_sql, read_args).fetchone()
            if row[0]:
                raise ValueError(f"reservation id {rid!r} was used before")
            found = _fit(holds, row)
            if found is not None and not expired and self._expire(db, now):
                found = _fit(holds, db.execute(read_sql, read_args).fetchone())
            missed: list[str] = []  # the over keys of soft holds that did not fit
            if found is not None:
                index, missed = found
                if index >= 0:
                    hold = holds[index]
                    spent, reserved = db.execute(
                        "SELECT spent, reserved FROM counters WHERE key = ?", (hold.key,)
                    ).fetchone() or (0, 0)
                    part = 0
                    if hold.prior is not None:
                        prior = db.execute(
                            "SELECT spent FROM counters WHERE key = ?", (hold.prior,)
                        ).fetchone()
                        if prior is not None:
                            part = prior[0] * hold.weight // WEIGHT_SCALE
                    return Refusal(index, hold.key, hold.limit, spent, reserved, hold.amount, part)  # type: ignore[arg-type]
            if charge_sql is not None:
                db.execute(charge_sql, charges)
            elif holds:
                _charge(db, [(hold.key, hold.amount) for hold in holds], "reserved")
            if missed:
                db.executemany(
                    "INSERT INTO counters (key, spent) VALUES (?, 1) ON CONFLICT (key)"
                    " DO UPDATE SET spent = spent + 1",
                    [(key,) for key in missed],
                )
            db.execute(
                "INSERT INTO reservations (id, holds, expires_at) VALUES (?, ?, ?)",
                (rid, holds_json, expires_at),
            )
            if not self._forget_at - 1.0 <= now < self._forget_at:
                self._forget(db, now)
            return None

        return self._transact(run)

    def settle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Charge every held key (by its unit) and tally; drop the holds once."""
        charges, tally = check_settle_amount(amount, reservation.holds)
        _check_fits(*charges, tally)

        rid = reservation.id
        # What reserve wrote for these holds: if the row holds that, its
        # holds are these, and need no parsing.
        holds = reservation.holds
        try:
            written = (self._written(holds), holds)
        except TypeError:  # a field that cannot be hashed (settle checks less than reserve)
            written = (_holds_json(holds), holds)

        def run(db: sqlite3.Cursor) -> bool:
            held = _take_holds(db, rid)  # the holds JSON if open, its row gone
            if held is None:
                row = db.execute("SELECT settled FROM ended WHERE id = ?", (rid,)).fetchone()
                if row is not None and row[0]:
                    return False  # settled before
            if not self._finish(
                db,
                rid,
                held,
                settled=True,
                charges=charges,
                written=written,
                tallies=tallies,
                tally=tally,
            ):
                # Expired or released (its holds gone): charge the keys all the same.
                _charge(db, list(zip(reservation.keys, charges, strict=True)))
                if tallies:
                    _charge_all(db, tallies, tally)
            return True

        return self._transact(run)

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging."""

        def run(db: sqlite3.Cursor) -> bool:
            if (
                db.execute("SELECT 1 FROM reservations WHERE id = ?", (reservation.id,)).fetchone()
                is None
            ):
                # Never reserved (or already ended): mark the id used, so a
                # reserve that arrives late holds nothing.
                db.execute(
                    "INSERT INTO ended (id, settled, at) VALUES (?, 0, ?) ON CONFLICT (id)"
                    " DO NOTHING",
                    (reservation.id, self.clock()),
                )
                return False
            self._end(db, reservation.id, settled=False)
            return True

        return self._transact(run)

    def add(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Charge ``amount`` to every key unconditionally, once per ``op_id``."""
        check_units(amount)
        _check_fits(amount)
        check_op_id(op_id)

        def run(db: sqlite3.Cursor) -> bool:
            if op_id is not None:
                now = self.clock()
                db.execute("DELETE FROM added WHERE at < ?", (now - self.idempotency_ttl,))
                if not db.execute(
                    "INSERT INTO added (id, at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                    (op_id, now),
                ).rowcount:
                    return False
            db.executemany(
                "INSERT INTO counters (key, spent) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET spent = spent + excluded.spent",
                [(key, amount) for key in keys],
            )
            return True

        return self._transact(run)

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for."""
        self._expire_if_due()
        with self._read() as db:
            found: dict[str, Balance] = {}
            for key in dict.fromkeys(keys):
                row = db.execute(
                    "SELECT spent, reserved FROM counters WHERE key = ?", (key,)
                ).fetchone()
                found[key] = Balance(*row) if row is not None else Balance()
            return {key: found[key] for key in keys}

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""
        self._expire_if_due()
        with self._read() as db:
            # ``key >= prefix`` lets the primary key index skip ahead; substr
            # does the exact (case-sensitive, unlike LIKE) prefix test.
            rows = db.execute(
                "SELECT key, spent, reserved FROM counters WHERE key >= ?"
                " AND substr(key, 1, ?) = ? AND (spent != 0 OR reserved != 0)",
                (prefix, len(prefix), prefix),
            ).fetchall()
        return {key: Balance(spent, reserved) for key, spent, reserved in rows}

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""

        def run(db: sqlite3.Cursor) -> None:
            db.executemany("UPDATE counters SET spent = 0 WHERE key = ?", [(k,) for k in keys])
            db.executemany(
                "DELETE FROM counters WHERE key = ? AND spent = 0 AND reserved = 0",
                [(k,) for k in keys],
            )

        self._transact(run)

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""
        self._expire_if_due()
        with self._read() as db:
            rows = db.execute(
                "SELECT id, holds, expires_at FROM reservations ORDER BY expires_at, id"
            ).fetchall()
        return [
            Reservation(rid, tuple(Hold(*row) for row in json.loads(holds)), at)
            for rid, holds, at in rows
        ]

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition under ``name``."""
        text = budget_to_json(name, definition)

        def run(db: sqlite3.Cursor) -> None:
            version = _next_version(db)
            db.execute(
                "INSERT INTO budgets (name, definition, version) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,"
                " version = excluded.version",
                (name, text, version),
            )
            db.execute("DELETE FROM budget_deleted WHERE name = ?", (name,))

        self._transact(run)

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``."""
        with self._read() as db:
            row = db.execute("SELECT definition FROM budgets WHERE name = ?", (name,)).fetchone()
        return budget_from_json(row[0]) if row is not None else None

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition."""

        def run(db: sqlite3.Cursor) -> bool:
            if db.execute("DELETE FROM budgets WHERE name = ?", (name,)).rowcount == 0:
                return False
            version = _next_version(db)
            now = self.clock()
            db.execute(
                "INSERT INTO budget_deleted (name, version, at) VALUES (?, ?, ?) ON CONFLICT"
                " (name) DO UPDATE SET version = excluded.version, at = excluded.at",
                (name, version, now),
            )
            # Names deleted more than a day ago are forgotten; a reader that
            # last looked before them gets a full read (floor).
            cutoff = now - TOMBSTONE_SECONDS
            (forgotten,) = db.execute(
                "SELECT max(version) FROM budget_deleted WHERE at < ?", (cutoff,)
            ).fetchone()
            if forgotten is not None:
                db.execute("UPDATE budget_meta SET floor = max(floor, ?)", (forgotten,))
                db.execute("DELETE FROM budget_deleted WHERE at < ?", (cutoff,))
            return True

        return self._transact(run)

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition."""
        with self._read() as db:
            rows = db.execute("SELECT name, definition FROM budgets ORDER BY name").fetchall()
        return {name: budget_from_json(text) for name, text in rows}

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the definitions changed after ``since`` (see ``Ledger.budget_changes``)."""
        with self._read() as db:
            # One read transaction: the mark, the version and the rows agree.
            db.execute("BEGIN")
            try:
                return _changes(db, since)
            finally:
                db.execute("ROLLBACK")

    def ping(self) -> None:
        """Check that the database file can be read."""
        with self._read() as db:
            db.execute("SELECT count(*) FROM budgets").fetchone()

    def close(self) -> None:
        """Close every connection this ledger opened."""
        self._closed = True
        with self._registry_lock:
            for holder in list(self._holders):
                holder.db.close()
            self._holders.clear()

    @property
    def schema_version(self) -> int:
        """Return the schema version recorded in the database file."""
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    # -- internals ----------------------------------------------------------------

    def _reset_connections(self) -> None:
        # Called at start and in a forked child: a connection or lock inherited
        # through fork must not be used (SQLite forbids it), only forgotten.
        self._pid = os.getpid()
        self._local = threading.local()
        self._write_lock = threading.Lock()  # held by the leader of a batch
        self._queue_lock = threading.Lock()  # guards the queue and the states of its operations
        self._queue: deque[_Op[Any]] = deque()
        self._company = False  # the last batch held more than one operation
        self._registry_lock = threading.Lock()
        self._holders: weakref.WeakSet[_Connection] = weakref.WeakSet()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._reset_connections()
        if self._closed:
            raise StorageError(f"the SQLite ledger {self.path} is closed")
        holder: _Connection | None = getattr(self._local, "holder", None)
        if holder is None:
            holder = _Connection(self._connect())
            self._local.holder = holder
            with self._registry_lock:
                self._holders.add(holder)
        return holder.db

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module must not open transactions behind
        # our back; every write says BEGIN IMMEDIATE itself.
        # check_same_thread=False only so that close() may run in any thread;
        # each connection is otherwise used by the thread that opened it.
        db = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            # No memory-mapped reads of the database file: a disk that fails
            # or turns read-only under a mapping kills the process (SIGBUS).
            db.execute("PRAGMA mmap_size = 0")
        except BaseException:
            db.close()
            raise
        return db

    def _open_database(self) -> None:
        with self._errors("open"):
            db = self._connection()
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # WAL needs shared memory; some network file systems refuse it.
                logger.warning(
                    "SQLite ledger %s runs in journal mode %r, not WAL: "
                    "readers will wait for writers",
                    self.path,
                    mode,
                )
            self._transact(self._migrate)

    def _migrate(self, db: sqlite3.Cursor) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the SQLite ledger {self.path} has schema version {version}, newer than "
                f"this budgetguard understands ({SCHEMA_VERSION}); upgrade budgetguard"
            )
        if (
            version == 0
            and db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        ):
            raise StorageError(
                f"{self.path} is a SQLite database but not a budgetguard ledger "
                "(it has tables and no schema version); give the ledger its own file"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                db.execute(statement)
            # PRAGMA takes no parameters; the number is ours, not user input.
            db.execute(f"PRAGMA user_version = {number + 1}")
            logger.info("SQLite ledger %s migrated to schema version %d", self.path, number + 1)

    def _transact(self, body: Callable[[sqlite3.Cursor], T]) -> T:
        """Run ``body`` in a ``BEGIN IMMEDIATE`` transaction within this operation's deadline.

        Group commit: the operation joins this process's queue of writes;
        one thread at a time (the leader, holding the write lock) runs every
        queued operation, up to ``_BATCH``, in one transaction, and each
        caller gets its own operation's outcome once that transaction has
        committed. A caller alone runs at once, its write in a transaction
        of its own: nobody waits for company. After a batch that had
        company, the next caller leads a batch even if nobody is queued yet
        (see ``_lead``): those just answered are about to write again.
        """
        deadline = time.monotonic() + self.timeout
        try:
            db = self._connection()
            if not self._queue and not self._write_lock.locked() and not self._company:
                # One line on purpose: since PEP 626 the exit of a ``with``
                # block counts as a line of its own, and an interrupt
                # delivered there (by a trace function, for one) would skip
                # ``__exit__`` and keep the lock held.
                with self._write_lock: result = self._alone(db, body, deadline)  # noqa: E701  # fmt: skip
                self._nudge()  # callers that came meanwhile: one of them leads next
                return result
        except BaseException as error:
            self._nudge()
            if isinstance(error, sqlite3.Error):
                raise self._failed("write", error) from error
            raise
        return self._queued(db, _Op(body, deadline))

    def _alone(
        self, db: sqlite3.Connection, body: Callable[[sqlite3.Cursor], T], deadline: float
    ) -> T:
        _heal(db)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageError(self._late("write"))
        # What is left of this operation's deadline, not a fresh timeout:
        # waits must not add up along the queue of writers.
        self._busy(db, max(1, int(left * 1000)))
        # ``with db`` ends the transaction in C: COMMIT after the body, or
        # ROLLBACK on any exception, KeyboardInterrupt included.
        with db: return _begin(db, body)  # noqa: E701  # fmt: skip

    def _queued(self, db: sqlite3.Connection, op: _Op[T]) -> T:
        """Join the queue with ``op``; lead a batch or wait for one to answer."""
        try:
            with self._queue_lock: self._queue.append(op)  # noqa: E701  # fmt: skip
            while op.state is not _DONE:
                if not self._write_lock.locked():
                    with self._write_lock: self._lead(db, op)  # noqa: E701  # fmt: skip
                    self._nudge()
                    if op.state is not _TAKEN:  # else a batch holds it: wait, do not spin
                        continue
                wake = op.wake
                if wake is None:
                    # Made only when there is company to wait for. The leader
                    # marks an operation done, then wakes it if it has a
                    # wake; this gives it one, then looks at the state again.
                    op.wake = _armed_wake()
                    continue
                left = op.deadline - time.monotonic()
                if left <= 0 and self._abandon(op):
                    raise StorageError(self._late("write"))
                # Past its deadline but taken into a batch: that batch is
                # about to end (its wait for SQLite's lock ends by the
                # earliest deadline in it), and its outcome stands.
                wake.acquire(timeout=min(left, _POLL) if left > 0 else _POLL)
        except BaseException as error:
            # Not run if still queued (its caller gives up); if a batch holds
            # it, that batch's outcome stands: commit or not, all or nothing.
            self._abandon(op)
            self._nudge()
            if isinstance(error, sqlite3.Error):
                raise self._failed("write", error) from error
            raise
        return self._outcome(op)

    def _outcome(self, op: _Op[T]) -> T:
        assert op.outcome is not None  # DONE means answered
        failed, value = op.outcome
        if failed:
            if isinstance(value, sqlite3.Error):
                raise StorageError(self._describe("write", value)) from value
            raise value
        return value  # type: ignore[no-any-return]

    def _abandon(self, op: _Op[Any]) -> bool:
        """Take ``op`` out of the queue if no batch has taken it; say whether it was."""
        with self._queue_lock: return self._unqueue(op)  # noqa: E701  # fmt: skip

    def _unqueue(self, op: _Op[Any]) -> bool:
        if op.state is not _QUEUED:
            return False
        op.state = _ABANDONED
        with suppress(ValueError):  # a batch interrupted while taking it holds it
            self._queue.remove(op)
        return True

    def _nudge(self) -> None:
        """Wake the first queued caller, so that it leads the next batch."""
        queue = self._queue
        if not queue:  # nobody waits (the common case alone: no exception raised)
            return
        try:
            wake = queue[0].wake
        except IndexError:  # taken by a leader meanwhile
            return
        _wake_up(wake)

    def _lead(self, db: sqlite3.Connection, own: _Op[Any]) -> None:
        """Run the queued operations (``own`` among them if still queued) in one transaction."""
        batch: list[_Op[Any]] = []
        failure: BaseException | None = None
        answered = False
        # Every caller of the batch must be answered (or its operation queued
        # again) whatever line an interrupt lands on, in the inner ``finally``
        # too: then the outer one answers again (answering is idempotent).
        try:
            try:
                if self._company and _COMMIT_DELAY:
                    # The last batch had company: let the callers that are a
                    # step from their next write join this one (as
                    # PostgreSQL's commit_delay does, for one switch of threads).
                    time.sleep(0)
                with self._queue_lock: self._take(batch)  # noqa: E701  # fmt: skip
                self._company = len(batch) > 1
                self._run(db, batch)
            except Exception as error:
                failure = error  # every operation of the batch that has no outcome gets it
            except BaseException as error:
                failure = error
                raise
            finally:
                with self._queue_lock: self._answer(batch, own, failure)  # noqa: E701  # fmt: skip
                answered = True
        finally:
            if not answered:
                with self._queue_lock: self._answer(batch, own, failure)  # noqa: E701  # fmt: skip

    def _take(self, batch: list[_Op[Any]]) -> None:
        queue = self._queue
        while queue and len(batch) < _BATCH:
            batch.append(queue.popleft())
        for op in batch:
            op.state = _TAKEN

    def _run(self, db: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
        now = time.monotonic()
        live: list[_Op[Any]] = []
        for op in batch:
            if op.deadline <= now:
                op.outcome = (True, StorageError(self._late("write")))
            else:
                live.append(op)
        if not live:
            return
        _heal(db)
        # What is left of the earliest deadline in the batch, not a fresh
        # timeout: waits must not add up along the queue of writers.
        left = (live[0].deadline if len(live) == 1 else min(op.deadline for op in live)) - now
        self._busy(db, max(1, int(left * 1000)))
        try:
            # ``with db`` ends the transaction in C: COMMIT after the
            # operations, or ROLLBACK on any exception, interrupts included.
            with db: _apply(db, live)  # noqa: E701  # fmt: skip
        except BaseException:
            for op in live:
                op.outcome = None  # rolled back: nothing of the batch was written
            raise

    def _answer(self, batch: list[_Op[Any]], own: _Op[Any], failure: BaseException | None) -> None:
        """Give every operation of ``batch`` its outcome, or queue it again if it did not run."""
        interrupted = not isinstance(failure, Exception)
        again: list[_Op[Any]] = []
        for op in batch:
            if op.state is _DONE or op.state is _ABANDONED:
                continue
            if op.outcome is None and interrupted:
                # The leader was interrupted before this operation committed:
                # nothing of it was written. Its own caller gets the
                # interrupt; the others' operations go back to the queue.
                if op is own:
                    op.state = _ABANDONED
                elif op.state is _TAKEN or op not in self._queue:
                    again.append(op)
                continue
            if op.outcome is None:
                op.outcome = (True, failure)
            op.state = _DONE
            if op is not own:
                _wake_up(op.wake)
        for op in reversed(again):
            op.state = _QUEUED
            self._queue.appendleft(op)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._errors("read"):
            db = self._connection()
            _heal(db)
            # A read gets the whole timeout, not what the last write left over.
            self._busy(db, int(self.timeout * 1000))
            yield db

    def _busy(self, db: sqlite3.Connection, milliseconds: int) -> None:
        """Set this thread's connection's busy timeout to ``milliseconds``, or nearly.

        A timeout already set is kept if it is no longer than ``milliseconds``
        and at most a sixteenth shorter: each new value is a PRAGMA to
        prepare (its text differs), and a batch's deadline moves on every time.
        """
        current = getattr(self._local, "busy_ms", None)
        if current is None or not milliseconds - (milliseconds >> 4) <= current <= milliseconds:
            db.execute(f"PRAGMA busy_timeout = {milliseconds}")
            self._local.busy_ms = milliseconds

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise self._failed(action, error) from error

    def _failed(self, action: str, error: sqlite3.Error) -> StorageError:
        holder: _Connection | None = getattr(self._local, "holder", None)
        if holder is not None:
            with suppress(sqlite3.Error):  # else healed again before the next use
                _heal(holder.db)
        return StorageError(self._describe(action, error))

    def _late(self, action: str) -> str:
        return (
            f"cannot {action} the SQLite ledger {self.path}: the operation did not finish "
            f"within {self._timeout_name}={self.timeout:g}s (other writers held the lock)"
        )

    def _describe(self, action: str, error: sqlite3.Error) -> str:
        text = str(error)
        lowered = text.lower()
        if _read_only_file_system(self.path):
            hint = (
                "its file system is mounted read-only; the ledger needs to write the file "
                "and its -wal and -shm files next to it"
            )
        elif "readonly" in lowered or "read-only" in lowered:
            hint = "the file or its directory is read-only; the ledger needs to write both"
        elif "not a database" in lowered or "malformed" in lowered:
            hint = "the file is corrupt or is not a SQLite database"
        elif "unable to open" in lowered:
            hint = "the file cannot be opened (missing directory or no permission)"
        elif "locked" in lowered or "busy" in lowered:
            hint = (
                f"another process held the write lock past the deadline of "
                f"{self._timeout_name}={self.timeout:g}s"
            )
        elif "full" in lowered:
            hint = "the disk is full; nothing of this operation was written"
        elif "disk i/o" in lowered:
            hint = "the disk reported an I/O error; nothing of this operation was written"
        else:
            hint = "SQLite reported an error"
        return f"cannot {action} the SQLite ledger {self.path}: {hint} ({text})"

    def _expire(self, db: sqlite3.Cursor, now: float) -> bool:
        """End every reservation expired by ``now``; return whether there was one."""
        rows = db.execute(
            "SELECT id FROM reservations WHERE expires_at <= ? ORDER BY expires_at", (now,)
        ).fetchall()
        for (reservation_id,) in rows:
            self._end(db, reservation_id, settled=False)
        return bool(rows)

    def _expire_if_time(self, db: sqlite3.Cursor, now: float) -> bool:
        """End the expired reservations at most once a second; return whether it ran.

        A clock that went back starts the second again, as in ``_forget``.
        """
        if self._expire_at - 1.0 <= now < self._expire_at:
            return False
        self._expire_at = now + 1.0
        self._expire(db, now)
        return True

    def _expire_if_due(self) -> None:
        # Reads stay read-only unless something has expired, so a balance
        # check does not queue behind writers for nothing.
        now = self.clock()
        with self._read() as db:
            due = db.execute(
                "SELECT 1 FROM reservations WHERE expires_at <= ? LIMIT 1", (now,)
            ).fetchone()
        if due is not None:

            def run(db: sqlite3.Cursor) -> None:
                self._expire(db, now)

            self._transact(run)

    def _end(
        self,
        db: sqlite3.Cursor,
        reservation_id: str,
        *,
        settled: bool,
        charges: Sequence[int] | None = None,
    ) -> bool:
        """Drop the holds of an open reservation (if it is open) and record how it ended.

        With ``charges`` (one per hold), each held key is charged in the same
        write that drops its hold; return whether it was (the reservation was
        open, with as many holds).
        """
        held = _take_holds(db, reservation_id)
        return self._finish(db, reservation_id, held, settled=settled, charges=charges)

    def _finish(
        self,
        db: sqlite3.Cursor,
        reservation_id: str,
        held: str | None,
        *,
        settled: bool,
        charges: Sequence[int] | None = None,
        written: tuple[str, Sequence[Hold]] | None = None,
        tallies: Sequence[str] = (),
        tally: int = 0,
    ) -> bool:
        """Do what ``_end`` does, given the reservation's holds JSON taken in this transaction.

        ``held`` is None when the reservation is not open; its row is gone
        (``_take_holds``). ``written`` is a JSON text and the holds it stands
        for, used instead of parsing ``held`` when it is that text. When the
        holds are charged, each key of ``tallies`` is charged ``tally`` too
        (else not at all).
        """
        charged = False
        if held is not None:
            # A Hold is the row it was written from: key, limit, amount, ...
            holds: Sequence[Sequence[Any]] = (
                written[1] if written is not None and held == written[0] else json.loads(held)
            )
            if charges is not None and len(charges) == len(holds):
                # One pass: each hold's key, charge and held amount, and the
                # holds charged nothing (only those may be left empty).
                rows: list[Any] = []
                uncharged = []
                for hold, charge in zip(holds, charges, strict=True):
                    rows += (hold[0], charge, hold[2])
                    if not charge:
                        uncharged.append(hold)
                count = len(holds)
                if (
                    count
                    and 3 * count + len(tallies) < 999
                    and len({*rows[::3], *tallies}) == count + len(tallies)
                ):
                    # Every key once: one statement charges the holds and the
                    # tallies and drops the holds.
                    if tallies:
                        rows.append(tally)
                        rows += tallies
                    db.execute(_settle_sql(count, len(tallies)), rows)
                else:
                    db.executemany(
                        "INSERT INTO counters (key, spent) VALUES (?, ?) ON CONFLICT (key)"
                        " DO UPDATE SET spent = spent + excluded.spent,"
                        " reserved = max(reserved - ?, 0)",
                        [rows[i : i + 3] for i in range(0, 3 * count, 3)],
                    )
                    if tallies:
                        _charge_all(db, tallies, tally)
                # A key charged something holds something: only the others may
                # be empty (and a tally's key keeps its row, as a tally's does).
                holds = [h for h in uncharged if h[0] not in tallies] if uncharged else uncharged
                charged = True
            else:
                db.executemany(
                    "UPDATE counters SET reserved = max(reserved - ?, 0) WHERE key = ?",
                    [(hold[2], hold[0]) for hold in holds],
                )
            if holds:
                db.executemany(
                    "DELETE FROM counters WHERE key = ? AND spent = 0 AND reserved = 0",
                    [(hold[0],) for hold in holds],
                )
        db.execute(
            "INSERT INTO ended (id, settled, at) VALUES (?, ?, ?) ON CONFLICT (id)"
            " DO UPDATE SET settled = excluded.settled, at = excluded.at",
            (reservation_id, int(settled), self.clock()),
        )
        return charged

    def _forget(self, db: sqlite3.Cursor, now: float) -> None:
        """Forget ended and added ids past ``idempotency_ttl``, at most once a second.

        An id is so remembered at least ``idempotency_ttl`` seconds and at
        most one more; a clock that went back starts the second again.
        """
        if self._forget_at - 1.0 <= now < self._forget_at:
            return
        self._forget_at = now + 1.0
        db.execute("DELETE FROM ended WHERE at < ?", (now - self.idempotency_ttl,))
        db.execute("DELETE FROM added WHERE at < ?", (now - self.idempotency_ttl,))


def _next_version(db: sqlite3.Cursor) -> int:
    """Count one change of the budget definitions; the first ever writes the mark."""
    row = db.execute("SELECT version FROM budget_meta WHERE id = 1").fetchone()
    if row is None:
        db.execute(
            "INSERT INTO budget_meta (id, mark, version, floor) VALUES (1, ?, 1, 0)",
            (uuid.uuid4().hex,),
        )
        return 1
    version = int(row[0]) + 1
    db.execute("UPDATE budget_meta SET version = ? WHERE id = 1", (version,))
    return version


def _changes(db: sqlite3.Connection, since: tuple[str, int] | None) -> BudgetChanges:
    meta = db.execute("SELECT mark, version, floor FROM budget_meta WHERE id = 1").fetchone()
    mark, version, floor = meta if meta is not None else (None, 0, 0)
    if since is None or since[0] != mark or not floor <= since[1] <= version:
        rows = db.execute("SELECT name, definition FROM budgets ORDER BY name").fetchall()
        return BudgetChanges(mark, version, {n: budget_from_json(t) for n, t in rows}, True)
    changed: dict[str, dict[str, Any] | None] = {
        name: None
        for (name,) in db.execute(
            "SELECT name FROM budget_deleted WHERE version > ?", (since[1],)
        ).fetchall()
    }
    for name, text in db.execute(
        "SELECT name, definition FROM budgets WHERE version > ?", (since[1],)
    ).fetchall():
        changed[name] = budget_from_json(text)
    return BudgetChanges(mark, version, changed, False)


def _idempotency_ttl(
    value: float | str | None, older: float | str | None, query: dict[str, str], url: str
) -> float:
    """Read ``idempotency_ttl`` (or its older name ``ended_ttl``) from the keywords or the URL."""
    given = {
        name: found
        for name, found in (
            ("idempotency_ttl", value if value is not None else query.pop("idempotency_ttl", None)),
            ("ended_ttl", older if older is not None else query.pop("ended_ttl", None)),
        )
        if found is not None
    }
    if len(given) > 1:
        raise ConfigurationError(
            f"idempotency_ttl and ended_ttl name the same option; give one ({url!r})"
        )
    name, raw = next(iter(given.items()), ("idempotency_ttl", None))
    return check_idempotency_ttl(raw, repr(url), name)


def _take_holds(db: sqlite3.Cursor, reservation_id: str) -> str | None:
    """Delete an open reservation's row; return its holds JSON, or None if it is not open."""
    # SELECT then DELETE rather than DELETE ... RETURNING, which needs SQLite
    # 3.35 (2021) and costs more (its rows go through a temporary table); the
    # transaction makes the pair atomic.
    row = db.execute("SELECT holds FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
    if row is None:
        return None
    db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
    return row[0]  # type: ignore[no-any-return]


def _begin(db: sqlite3.Connection, body: Callable[[sqlite3.Cursor], T]) -> T:
    """Open the transaction and run ``body`` in it, with one cursor for every statement.

    ``Connection.execute`` makes a cursor per statement; one cursor per
    transaction costs less. It dies with the transaction (its caller's frame),
    so a statement an interrupt left unfinished is reset with it.
    """
    cursor = db.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    return body(cursor)


def _apply(db: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
    """Run the operations of ``batch`` in the transaction, each all or nothing."""
    if len(batch) == 1:  # alone: the transaction is the operation's own
        op = batch[0]
        op.outcome = (False, _begin(db, op.body))
        return
    cursor = db.cursor()  # one for the whole batch, as in _begin
    cursor.execute("BEGIN IMMEDIATE")
    # Optimistic: the operations run one after another in one savepoint of
    # the batch, not one each (two statements per batch, not per write).
    # If one fails (a reused id, say), the batch so far is undone and run
    # again with a savepoint per operation, so that the failing one is undone
    # alone and the others still commit.
    cursor.execute("SAVEPOINT batch")
    for op in batch:
        try:
            value = op.body(cursor)
        except Exception:
            if not db.in_transaction:
                raise  # SQLite ended the whole transaction (a full disk, an I/O error)
            cursor.execute("ROLLBACK TO batch")
            cursor.execute("RELEASE batch")
            _apply_each(db, cursor, batch)
            return
        op.outcome = (False, value)
    cursor.execute("RELEASE batch")


def _apply_each(db: sqlite3.Connection, cursor: sqlite3.Cursor, batch: list[_Op[Any]]) -> None:
    """Run every operation of ``batch`` in a savepoint of its own (one may fail alone)."""
    for op in batch:
        cursor.execute("SAVEPOINT operation")
        try:
            value = op.body(cursor)
        except Exception as error:
            if not db.in_transaction:
                raise  # SQLite ended the whole transaction (a full disk, an I/O error)
            cursor.execute("ROLLBACK TO operation")
            cursor.execute("RELEASE operation")
            op.outcome = (True, error)
        else:
            cursor.execute("RELEASE operation")
            op.outcome = (False, value)


def _read_only_file_system(path: str) -> bool:
    """Return True if the directory of ``path`` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(os.path.dirname(path)).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows), or the directory is gone
        return False


def _heal(db: sqlite3.Connection) -> None:
    """Roll back a transaction left open on ``db`` (a COMMIT that failed)."""
    if db.in_transaction:
        db.rollback()


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    if parts.netloc:
        raise ConfigurationError(
            f"{url!r} names a host ({parts.netloc!r}); a SQLite ledger is a file: "
            f"use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if not path:
        raise ConfigurationError(
            f"{url!r} names no file; use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"{url!r}: an in-memory SQLite database is private to one connection; "
            "use 'memory://' for a ledger in this process, or name a file"
        )
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigurationError(
            f"cannot open the SQLite ledger {path}: directory {directory} does not exist"
        )
    if os.path.isdir(path):
        raise ConfigurationError(f"cannot open the SQLite ledger {path}: it is a directory")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query[name] = value
    return path, query


def _positive(name: str, value: object, url: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds, got {value!r} ({url!r})"
        )
    return number


def _holds_json(holds: Sequence[Hold]) -> str:
    """Return the JSON of a reservation's holds, as ``json.dumps`` of their rows writes it.

    Plain holds (checked by ``check_reservation``: a str key, int amounts)
    are written by hand, the rest by ``json.dumps``.
    """
    parts = []
    for hold in holds:
        key, limit, amount, unit, over, prior, _ = hold
        if unit != 0 or over is not None or prior is not None:
            return json.dumps([_hold_row(hold) for hold in holds])
        parts.append(
            f"[{_json_string(key)}, {'null' if limit is None else int(limit)}, {int(amount)}]"
        )
    return "[" + ", ".join(parts) + "]"


_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _hold_row(hold: Hold) -> list[Any]:
    """Return the JSON row of a hold: [key, limit, amount], with the rest if not defaults."""
    if hold.unit == 0 and hold.over is None and hold.prior is None:
        return [hold.key, hold.limit, hold.amount]
    return list(hold)


def _charge(db: sqlite3.Cursor, rows: list[tuple[str, int]], column: str = "spent") -> None:
    """Add each ``(key, amount)`` to the key's ``column``: one statement per 200 rows.

    A key twice in one statement adds up (SQLite applies the rows in order).
    """
    for start in range(0, len(rows), 200):
        chunk = rows[start : start + 200]
        db.execute(_charge_sql(len(chunk), column), [value for row in chunk for value in row])


@functools.lru_cache(maxsize=128)
def _settle_sql(holds: int, tallies: int) -> str:
    """Return the charge of a settle: ``holds`` distinct held keys, then ``tallies`` others.

    Parameters: key, charge and held amount of each hold, then the tally's
    amount and the tally keys. A held key is charged its charge and drops its
    held amount (never below 0); a tally key is charged the tally.
    """
    rows = [f"(?{3 * i + 1}, ?{3 * i + 2})" for i in range(holds)]
    rows += [f"(?{3 * holds + 2 + j}, ?{3 * holds + 1})" for j in range(tallies)]
    drops = " ".join(f"WHEN ?{3 * i + 1} THEN ?{3 * i + 3}" for i in range(holds))
    return (
        "INSERT INTO counters (key, spent) VALUES "
        + ", ".join(rows)
        + " ON CONFLICT (key) DO UPDATE SET spent = spent + excluded.spent,"
        + f" reserved = max(reserved - CASE key {drops} ELSE 0 END, 0)"
    )


def _charge_all(db: sqlite3.Cursor, keys: Sequence[str], amount: int) -> None:
    """Add ``amount`` to the spend of every key of ``keys``: one statement per 200 keys."""
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        db.execute(_charge_all_sql(len(chunk)), (amount, *chunk))


@functools.lru_cache(maxsize=128)
def _charge_all_sql(rows: int) -> str:
    return (
        "INSERT INTO counters (key, spent) VALUES "
        + ", ".join([f"(?{row + 2}, ?1)" for row in range(rows)])
        + " ON CONFLICT (key) DO UPDATE SET spent = spent + excluded.spent"
    )


@functools.lru_cache(maxsize=128)
def _charge_sql(rows: int, column: str) -> str:
    return (
        f"INSERT INTO counters (key, {column}) VALUES "
        + ", ".join(["(?, ?)"] * rows)
        + f" ON CONFLICT (key) DO UPDATE SET {column} = {column} + excluded.{column}"
    )


@functools.lru_cache(maxsize=128)
def _check_sql(shape: tuple[int, ...]) -> str:
    """Return the read of a reserve: whether its id was used, then what its limited holds use.

    ``shape`` has one entry per hold: 0 for no limit, 1 for a limit, 2 for a
    limit with a prior key. The row holds the used flag, then for each
    limited hold its key's ``spent + reserved`` (and its prior key's spent,
    or NULL where that key holds nothing).
    """
    columns = [
        "EXISTS (SELECT 1 FROM reservations WHERE id = ?1)"
        " OR EXISTS (SELECT 1 FROM ended WHERE id = ?1)"
    ]
    for kind in shape:
        if kind:
            columns.append("coalesce((SELECT spent + reserved FROM counters WHERE key = ?), 0)")
        if kind == 2:
            columns.append("(SELECT spent FROM counters WHERE key = ?)")
    return "SELECT " + ", ".join(columns)


def _fit(holds: Sequence[Hold], row: Sequence[Any]) -> tuple[int, list[str]] | None:
    """Check every hold against the balances of ``row`` (see ``_check_sql``).

    Return None if every hold fits; else the index of the first hard hold
    that does not (-1 if none) and the over keys of the soft holds that did
    not fit before it.
    """
    missed: list[str] = []
    column = 1
    for index, hold in enumerate(holds):
        limit = hold.limit
        if limit is None:
            continue
        used = row[column]
        column += 1
        if hold.prior is not None:
            prior = row[column]
            column += 1
            if prior is not None:
                used += prior * hold.weight // WEIGHT_SCALE
        amount = hold.amount
        if used + amount > limit or (amount == 0 and used >= limit):
            if hold.over is None:
                return index, missed
            missed.append(hold.over)
    return (-1, missed) if missed else None


def _check_fits(*amounts: int) -> None:
    for amount in amounts:
        if amount >= _MAX_UNITS:
            raise ValueError(
                f"amount {amount} is too large for the SQLite ledger (max {_MAX_UNITS - 1})"
            )
