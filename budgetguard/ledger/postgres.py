"""The PostgreSQL ledger: durable budgets shared by every process on every host.

URLs are libpq's, plus options of the ledger's own as query parameters::

    postgresql://user:password@db.internal:5432/app
    postgres://db.internal/app?timeout=2&schema=budgets&pool_size=20
    postgresql:///app?host=/var/run/postgresql     (a Unix socket)

Ledger options (query parameters or keyword arguments): ``timeout`` the
deadline of one operation in seconds (default 5), ``idempotency_ttl``
seconds for which ended reservation ids and ``add`` op ids are remembered
(default 3600, at least 60), ``schema`` the schema holding the ledger's
tables (default ``public``; created if missing), ``pool_size`` the most
connections one process opens (default 10). Every other query parameter
(``sslmode``, ``application_name``, ...) goes to libpq.

Every operation is one call of one server-side plpgsql function (see
``_postgres_sql``): one statement, one transaction, one round trip, all or
nothing across every hold. The connections are psycopg 3 connections in
autocommit mode, ``pool_size`` at most per process (sync callers) and per
event loop (async callers, on psycopg's own async I/O, no threads). They are
pooled by this module (``_Connections``, ``_AsyncConnections``) rather than
by psycopg_pool, whose ``ConnectionPool`` was left starved or locked by a
``KeyboardInterrupt`` landing inside it (its lock held, a connection handed
out and lost: the fault suite failed with ``PoolTimeout``), and whose
``AsyncConnectionPool`` kept reconnecting in a background task after a lost
reply, so that its event loop could not shut down. These pools hold no lock
across lines, run nothing in the background, and forget a connection lost
half way when it is garbage collected.

Deadlines: every connection runs with ``statement_timeout`` and
``lock_timeout`` set to ``timeout``, and waits for a pooled connection are
bounded by what is left of it, so an operation gives up after at most about
twice ``timeout`` (a wait for the pool, then the statement), with a
``StorageError`` naming ``timeout=``. A timed-out statement was rolled back
by the server. Connecting is bounded by libpq's ``connect_timeout`` and a
host that stops acknowledging by ``tcp_user_timeout`` (both default from
``timeout``); a server that accepts data and never answers is not bounded
on the client side.

Faults: a connection that breaks (the server restarted, the connection was
terminated, the reply was lost) is a ``StorageError`` saying that the write
may have run; repeating it with the same id changes nothing, since every
function checks the id first. A reserve whose reply was lost is released at
once (best effort; else it expires). Connections that the server closed
while idle in the pool are noticed before use, without a round trip, and
replaced.

Time: expiry and the idempotency window use the server's clock, so hosts
whose clocks disagree still agree; a ``clock=`` given to the constructor
(tests) is used instead.

Units are ``bigint`` (exact 64-bit integers); amounts and limits up to
``max_units`` = 2**62 - 1 are accepted, and checks add them as ``numeric``,
so a comparison never overflows.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import secrets
import select
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .._dist import install_hint
from ..errors import ConfigurationError, StorageError
from ._postgres_sql import MIGRATIONS, SCHEMA_VERSION
from .base import (
    Balance,
    BudgetChanges,
    Hold,
    Ledger,
    Refusal,
    Reservation,
    budget_from_json,
    budget_to_json,
    check_op_id,
    check_reservation,
    check_settle_amount,
    check_units,
    shielded,
    shielded_reserve,
)

__all__ = ["PostgresLedger"]

logger = logging.getLogger("budgetguard")
T = TypeVar("T")

_DEFAULT_TIMEOUT = 5.0
_DEFAULT_IDEMPOTENCY_TTL = 3600.0
_MIN_IDEMPOTENCY_TTL = 60.0
_DEFAULT_POOL_SIZE = 10
_MAX_UNITS = 2**62
# pg_advisory_xact_lock(class, hashtext(schema)) serialises migrations.
_MIGRATION_LOCK = 0x62676C67  # "bglg"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_OPTIONS = ("timeout", "idempotency_ttl", "schema", "pool_size")


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as error:
        # ImportError too: psycopg without libpq (and without psycopg[binary]).
        raise ConfigurationError(
            "the postgresql:// ledger needs psycopg 3, which is not installed or cannot "
            f"load libpq ({error}); install it with: {install_hint('postgres')} "
            "(add psycopg[binary] where libpq is missing)"
        ) from error
    return psycopg


class PostgresLedger(Ledger):
    """Keep spend in PostgreSQL, one server-side function per operation.

    Options (keyword arguments or URL query parameters): ``timeout``
    seconds per operation (default 5); ``idempotency_ttl`` seconds ended
    ids are remembered (default 3600, at least 60); ``schema`` where the
    tables live (default ``public``); ``pool_size`` connections per process
    (default 10). ``clock`` replaces the server's clock (tests).
    """

    schemes = ("postgresql", "postgres")
    shared = True
    max_units = _MAX_UNITS - 1

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        timeout: float | str | None = None,
        idempotency_ttl: float | str | None = None,
        schema: str | None = None,
        pool_size: int | str | None = None,
    ) -> None:
        super().__init__(url, clock=clock if clock is not None else time.time)
        #: Whether time comes from ``clock`` (True) or from the server's clock.
        self.own_clock = clock is not None
        self.safe_url = redact(url)
        parts = urlsplit(url)
        if parts.scheme.lower() not in self.schemes:
            raise ConfigurationError(f"not a PostgreSQL URL: {self.safe_url!r}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        given = {
            "timeout": timeout,
            "idempotency_ttl": idempotency_ttl,
            "schema": schema,
            "pool_size": pool_size,
        }
        for name in _OPTIONS:
            value = query.pop(name, None)
            if given[name] is None:
                given[name] = value
        #: Seconds one operation may take (each of the pool wait and the statement).
        self.timeout = _seconds("timeout", given["timeout"], _DEFAULT_TIMEOUT, self.safe_url)
        self.idempotency_ttl = _seconds(
            "idempotency_ttl", given["idempotency_ttl"], _DEFAULT_IDEMPOTENCY_TTL, self.safe_url
        )
        if self.idempotency_ttl < _MIN_IDEMPOTENCY_TTL:
            raise ConfigurationError(
                f"idempotency_ttl must be at least {_MIN_IDEMPOTENCY_TTL:g} seconds, got "
                f"{given['idempotency_ttl']!r} ({self.safe_url})"
            )
        schema_name = given["schema"] if given["schema"] is not None else "public"
        if not isinstance(schema_name, str) or not _SCHEMA_NAME.fullmatch(schema_name):
            raise ConfigurationError(
                f"schema must be a lower-case SQL name (letters, digits, _), got "
                f"{schema_name!r} ({self.safe_url})"
            )
        self.schema = schema_name
        self.pool_size = _pool_size(given["pool_size"], self.safe_url)
        self._psycopg = _import_psycopg()
        # libpq's own connect timeout bounds a connect attempt (libpq's minimum is 2 s);
        # tcp_user_timeout (libpq 12+) ends a connection whose host stopped
        # acknowledging what was sent (a dead host, a network cut), which
        # statement_timeout, counted by that server, cannot.
        query.setdefault("connect_timeout", str(max(2, round(self.timeout))))
        if self._psycopg.pq.version() >= 120000:
            query.setdefault("tcp_user_timeout", str(max(1, int(self.timeout * 1000))))
        # quote, not quote_plus: libpq reads "+" as a plus, not a space
        # (options=-c%20statement_timeout%3D1000 must stay one option).
        self._conninfo = urlunsplit(
            (
                parts.scheme,
                parts.netloc,
                parts.path,
                urlencode(query, quote_via=quote),
                parts.fragment,
            )
        )
        try:
            self._psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except self._psycopg.ProgrammingError as error:
            raise ConfigurationError(
                f"malformed PostgreSQL URL {self.safe_url!r}: {redact_text(str(error))}"
            ) from None
        quoted = f'"{self.schema}"'
        self._sql = {
            "reserve": f"SELECT * FROM {quoted}.budgetguard_reserve("
            "%s, %s::text[], %s::bigint[], %s::bigint[], %s::int2[], %s::text[], %s::text[],"
            " %s::int4[], %s::float8, %s::float8, %s::float8)",
            "settle": f"SELECT {quoted}.budgetguard_settle("
            "%s, %s::text[], %s::bigint[], %s::float8)",
            "release": f"SELECT {quoted}.budgetguard_release(%s, %s::float8)",
            "add": f"SELECT {quoted}.budgetguard_add("
            "%s::text[], %s::bigint, %s::text, %s::float8, %s::float8)",
            "balances": f"SELECT * FROM {quoted}.budgetguard_balances(%s::text[], %s::float8)",
            "scan": f"SELECT * FROM {quoted}.budgetguard_scan(%s::text, %s::float8)",
            "open": f"SELECT * FROM {quoted}.budgetguard_open(%s::float8)",
            "clear": f"SELECT {quoted}.budgetguard_clear(%s::text[])",
            "put_budget": f"SELECT {quoted}.budgetguard_put_budget("
            "%s::text, %s::text, %s::text, %s::float8)",
            "delete_budget": f"SELECT {quoted}.budgetguard_delete_budget(%s::text, %s::float8)",
            "get_budget": f"SELECT definition FROM {quoted}.budgetguard_budgets "
            "WHERE name = %s AND definition IS NOT NULL",
            "list_budgets": f"SELECT name, definition FROM {quoted}.budgetguard_budgets "
            "WHERE definition IS NOT NULL ORDER BY name",
            # One statement, one snapshot: the log row and the rows it describes agree.
            "budget_changes": f"""
                WITH log AS (SELECT mark, version, forgotten
                             FROM {quoted}.budgetguard_budget_log WHERE id = 1),
                     ask AS (SELECT log.*, (%(mark)s::text IS NULL
                                 OR log.mark IS DISTINCT FROM %(mark)s::text
                                 OR %(version)s::bigint < log.forgotten
                                 OR %(version)s::bigint > log.version) AS full
                             FROM log)
                SELECT ask.mark, ask.version, ask.full, b.name, b.definition
                FROM ask LEFT JOIN LATERAL (
                    -- Two branches, each gated by ask.full, so that an
                    -- incremental read walks the version index over what
                    -- changed, not every definition (set_budget stays O(1)).
                    SELECT a.name, a.definition FROM {quoted}.budgetguard_budgets a
                    WHERE ask.full AND a.definition IS NOT NULL
                    UNION ALL
                    SELECT c.name, c.definition FROM {quoted}.budgetguard_budgets c
                    WHERE NOT ask.full AND c.version > %(version)s::bigint
                ) b ON true
                ORDER BY b.name""",
            "ping": "SELECT 1",
            "schema_version": f"SELECT version FROM {quoted}.budgetguard_schema WHERE id = 1",
        }
        self._closed = False
        self._reset_pools()
        self._async_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncConnections] = (
            weakref.WeakKeyDictionary()
        )
        self._migrate()

    def __repr__(self) -> str:
        return f"PostgresLedger({self.safe_url!r})"

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them, in one function call."""
        params = self._reserve_params(reservation)
        deadline = time.monotonic() + self.timeout
        try:
            row = self._one("reserve", params, deadline, action="reserve")
        except StorageError:
            # The function may have run: release the id (which also stops a
            # reserve still on its way), or its hold would last until expiry.
            self._release_quietly(reservation, deadline)
            raise
        return _refusal(reservation, row)

    def settle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Charge every held key (by its unit) and tally; drop the holds once."""
        params = self._settle_params(reservation, amount, tallies)
        return bool(self._one("settle", params, action="settle")[0])

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging."""
        params = (_text(reservation.id, "reservation id"), self._now())
        return bool(self._one("release", params, action="release")[0])

    def add(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Charge ``amount`` to every key unconditionally, once per ``op_id``."""
        params = self._add_params(keys, amount, op_id)
        return bool(self._one("add", params, action="add")[0])

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for."""
        asked = _keys(keys)
        rows = self._all("balances", (asked, self._now()), action="read")
        return _balances(asked, rows)

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""
        rows = self._all("scan", (_text(prefix, "prefix"), self._now()), action="read")
        return {key: Balance(int(spent), int(reserved)) for key, spent, reserved in rows}

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""
        asked = _keys(keys)
        if asked:
            self._one("clear", (asked,), action="clear")

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""
        return _reservations(self._all("open", (self._now(),), action="read"))

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition under ``name``."""
        params = (*_budget(name, definition), secrets.token_hex(16), self._now())
        self._one("put_budget", params, action="store a budget in")

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``."""
        rows = self._all("get_budget", (name,), action="read")
        return budget_from_json(rows[0][0]) if rows else None

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition (a tombstone stays for ``budget_changes``)."""
        params = (_text(name, "budget name"), self._now())
        return bool(self._one("delete_budget", params, action="delete a budget in")[0])

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition."""
        rows = self._all("list_budgets", (), action="read")
        return {name: budget_from_json(text) for name, text in rows}

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the definitions changed after ``since`` (all of them when ``full``)."""
        params = _since(since)
        return _changes(self._all("budget_changes", params, action="read"))

    def ping(self) -> None:
        """Check that the server answers."""
        self._one("ping", (), action="reach")

    def close(self) -> None:
        """Close this process's connections (asyncio pools close in ``aclose``)."""
        self._closed = True
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            pool.close()

    @property
    def schema_version(self) -> int:
        """Return the schema version recorded in the database."""
        return int(self._one("schema_version", (), action="read")[0])

    # -- asynchronous variants: psycopg's async connections -----------------------

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` on an async connection; release it if the caller gives up."""
        params = self._reserve_params(reservation)
        return await shielded_reserve(
            self, asyncio.ensure_future(self._areserve(reservation, params)), reservation
        )

    async def _areserve(self, reservation: Reservation, params: tuple[Any, ...]) -> Refusal | None:
        deadline = time.monotonic() + self.timeout
        try:
            row = await self._aone("reserve", params, deadline, action="reserve")
        except StorageError:
            await self._arelease_quietly(reservation, deadline)
            raise
        return _refusal(reservation, row)

    async def asettle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Do ``settle`` on an async connection, finished even if the caller gives up."""
        params = self._settle_params(reservation, amount, tallies)
        row = await shielded(self, self._aone("settle", params, action="settle"))
        return bool(row[0])

    async def arelease(self, reservation: Reservation) -> bool:
        """Do ``release`` on an async connection, finished even if the caller gives up."""
        params = (_text(reservation.id, "reservation id"), self._now())
        row = await shielded(self, self._aone("release", params, action="release"))
        return bool(row[0])

    async def aadd(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Do ``add`` on an async connection, finished even if the caller gives up."""
        params = self._add_params(keys, amount, op_id)
        row = await shielded(self, self._aone("add", params, action="add"))
        return bool(row[0])

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` on an async connection."""
        asked = _keys(keys)
        rows = await self._aall("balances", (asked, self._now()), action="read")
        return _balances(asked, rows)

    async def abudget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Do ``budget_changes`` on an async connection."""
        params = _since(since)
        return _changes(await self._aall("budget_changes", params, action="read"))

    async def aping(self) -> None:
        """Do ``ping`` on an async connection."""
        await self._aone("ping", (), action="reach")

    async def aclose(self) -> None:
        """Close this event loop's pool and the synchronous one."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            pool = self._async.pop(loop, None)
        if pool is not None:
            await pool.close()
        self.close()

    # -- parameters -----------------------------------------------------------------

    def _now(self) -> float | None:
        """Return the ledger's time for the server, or None for the server's own clock."""
        return float(self.clock()) if self.own_clock else None

    def _reserve_params(self, reservation: Reservation) -> tuple[Any, ...]:
        check_reservation(reservation)
        _text(reservation.id, "reservation id")
        keys = _keys(reservation.keys)
        limits = [None if h.limit is None else _units(h.limit) for h in reservation.holds]
        amounts = [_units(h.amount) for h in reservation.holds]
        holds = reservation.holds
        plain = all(h.unit == 0 and h.over is None and h.prior is None for h in holds)
        for h in holds:
            for key in (h.over, h.prior):
                if key is not None:
                    _text(key, "key")
        return (
            reservation.id,
            keys,
            limits,
            amounts,
            # All NULL for plain holds (the common case): nothing more to store.
            None if plain else [h.unit for h in holds],
            None if plain else [h.over for h in holds],
            None if plain else [h.prior for h in holds],
            None if plain else [h.weight for h in holds],
            float(reservation.expires_at),
            self._now(),
            self.idempotency_ttl,
        )

    def _settle_params(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str]
    ) -> tuple[Any, ...]:
        charges, tally = check_settle_amount(amount, reservation.holds)
        pairs = [*zip(reservation.keys, charges, strict=True), *((key, tally) for key in tallies)]
        keys = _keys([key for key, _ in pairs])  # every key checked, charged or not
        # A charge of 0 changes nothing: left out, so its counter is not even locked.
        charged = [
            (key, _units(charge))
            for key, charge in zip(keys, (c for _, c in pairs), strict=True)
            if charge
        ]
        return (
            _text(reservation.id, "reservation id"),
            [key for key, _ in charged],
            [charge for _, charge in charged],
            self._now(),
        )

    def _add_params(self, keys: Sequence[str], amount: int, op_id: str | None) -> tuple[Any, ...]:
        _units(amount)
        check_op_id(op_id)
        if op_id is not None:
            _text(op_id, "op_id")
        return (_keys(keys), amount, op_id, self._now(), self.idempotency_ttl)

    # -- the synchronous pool ---------------------------------------------------------

    def _reset_pools(self) -> None:
        # At start and in a forked child. Connections inherited through fork
        # share their sockets with the parent: they are kept (closing one
        # would end the parent's session) but never used.
        inherited = getattr(self, "_pool", None)
        if inherited is not None:
            self._orphans: list[Any] = [*getattr(self, "_orphans", []), inherited]
        self._pid = os.getpid()
        self._pool: _Connections | None = None

    def _configure(self, conn: Any) -> None:
        milliseconds = max(1, int(self.timeout * 1000))
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('lock_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false)",
            (str(milliseconds), str(milliseconds), str(milliseconds)),
        )

    def _connect(self) -> Any:
        conn = self._psycopg.connect(self._conninfo, autocommit=True)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _sync_pool(self) -> _Connections:
        if self._pid != os.getpid():
            self._reset_pools()
        if self._closed:
            raise StorageError(f"the PostgreSQL ledger {self.safe_url} is closed")
        pool = self._pool
        if pool is None:
            # Two threads may both build one; the one stored last is kept,
            # the other's connections are closed when it is collected.
            pool = self._pool = _Connections(self._connect, self.pool_size)
        return pool

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageError(
                f"the PostgreSQL ledger at {self.safe_url} did not answer within "
                f"timeout={self.timeout:g}s"
            )
        return left

    def _run(self, name: str, params: Any, deadline: float | None, action: str) -> list[Any]:
        """Run one statement (one function call) and return its rows."""
        psycopg = self._psycopg
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        while True:
            try:
                pool = self._sync_pool()
                conn = pool.take(self._left, deadline)
                try:
                    rows: list[Any] = conn.execute(self._sql[name], params).fetchall()
                except psycopg.Error:
                    pool.give(conn)  # kept after an error reply, dropped if broken
                    raise
                # Given back only after a whole reply: one cut short by an
                # interrupt is never reused; it is dropped when collected.
                pool.give(conn)
                return rows
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                # The server rolled the transaction back: running it again is safe.
                self._left(deadline)
                continue
            except psycopg.Error as error:
                raise self._storage_error(action, error) from error

    def _one(
        self, name: str, params: Any, deadline: float | None = None, *, action: str
    ) -> tuple[Any, ...]:
        rows = self._run(name, params, deadline, action)
        if len(rows) != 1:
            raise StorageError(
                f"unexpected reply from PostgreSQL at {self.safe_url}: {len(rows)} rows for {name}"
            )
        row: tuple[Any, ...] = rows[0]
        return row

    def _all(self, name: str, params: Any, *, action: str) -> list[Any]:
        return self._run(name, params, None, action)

    def _release_quietly(self, reservation: Reservation, deadline: float) -> None:
        # Within what is left of the reserve's own deadline: a server that
        # does not answer gets no second wait; the hold then expires.
        try:
            self._one("release", (reservation.id, self._now()), deadline, action="release")
        except StorageError as error:
            logger.warning(
                "could not release reservation %s after a lost reply (%s); it expires on its own",
                reservation.id,
                error,
            )

    # -- the asynchronous pools ------------------------------------------------------

    def _async_pool(self) -> _AsyncConnections:
        if self._closed:
            raise StorageError(f"the PostgreSQL ledger {self.safe_url} is closed")
        loop = asyncio.get_running_loop()
        with self._async_lock:
            pool = self._async.get(loop)
            if pool is None:
                pool = self._async[loop] = _AsyncConnections(self._aconnect, self.pool_size)
        return pool

    async def _aconnect(self) -> Any:
        conn = await self._psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            milliseconds = str(max(1, int(self.timeout * 1000)))
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('lock_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (milliseconds, milliseconds, milliseconds),
            )
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _arun(self, name: str, params: Any, deadline: float | None, action: str) -> list[Any]:
        psycopg = self._psycopg
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        while True:
            try:
                pool = self._async_pool()
                conn = await pool.take(self._left, deadline)
                try:
                    cursor = await conn.execute(self._sql[name], params)
                    rows: list[Any] = await cursor.fetchall()
                except psycopg.Error:
                    await pool.give(conn)
                    raise
                await pool.give(conn)
                return rows
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                self._left(deadline)
                continue
            except (psycopg.Error, asyncio.TimeoutError) as error:
                raise self._storage_error(action, error) from error

    async def _aone(
        self, name: str, params: Any, deadline: float | None = None, *, action: str
    ) -> tuple[Any, ...]:
        rows = await self._arun(name, params, deadline, action)
        if len(rows) != 1:
            raise StorageError(
                f"unexpected reply from PostgreSQL at {self.safe_url}: {len(rows)} rows for {name}"
            )
        row: tuple[Any, ...] = rows[0]
        return row

    async def _aall(self, name: str, params: Any, *, action: str) -> list[Any]:
        return await self._arun(name, params, None, action)

    async def _arelease_quietly(self, reservation: Reservation, deadline: float) -> None:
        try:
            await self._aone("release", (reservation.id, self._now()), deadline, action="release")
        except StorageError as error:
            logger.warning(
                "could not release reservation %s after a lost reply (%s); it expires on its own",
                reservation.id,
                error,
            )

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create or upgrade the schema once, safely when several processes start together."""
        psycopg = self._psycopg
        quoted = f'"{self.schema}"'
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                self._configure(conn)
                if self._current_version(conn) == SCHEMA_VERSION:
                    return  # the common case: no lock, no DDL
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (_MIGRATION_LOCK, self.schema),
                    )
                    found = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                    ).fetchone()
                    if found is None:
                        conn.execute(f"CREATE SCHEMA {quoted}")
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {quoted}.budgetguard_schema ("
                        " id int PRIMARY KEY CHECK (id = 1), version int NOT NULL,"
                        " migrated_at timestamptz NOT NULL DEFAULT now())"
                    )
                    conn.execute(
                        f"INSERT INTO {quoted}.budgetguard_schema (id, version) VALUES (1, 0)"
                        " ON CONFLICT (id) DO NOTHING"
                    )
                    version = self._current_version(conn)
                    if version > SCHEMA_VERSION:
                        raise StorageError(self._too_new(version))
                    for number in range(version, SCHEMA_VERSION):
                        conn.execute(MIGRATIONS[number].replace("__schema__", quoted))
                        conn.execute(
                            f"UPDATE {quoted}.budgetguard_schema"
                            " SET version = %s, migrated_at = now() WHERE id = 1",
                            (number + 1,),
                        )
                        logger.info(
                            "PostgreSQL ledger %s: schema %s migrated to version %d",
                            self.safe_url,
                            self.schema,
                            number + 1,
                        )
        except psycopg.Error as error:
            raise self._storage_error("open", error) from error

    def _current_version(self, conn: Any) -> int:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{self.schema}".budgetguard_schema',)
        ).fetchone()
        if not row[0]:
            return 0
        found = conn.execute(self._sql["schema_version"]).fetchone()
        version = int(found[0]) if found is not None else 0
        if version > SCHEMA_VERSION:
            raise StorageError(self._too_new(version))
        return version

    def _too_new(self, version: int) -> str:
        return (
            f"the PostgreSQL ledger {self.safe_url} (schema {self.schema}) has schema version "
            f"{version}, newer than this budgetguard understands ({SCHEMA_VERSION}); "
            "upgrade budgetguard"
        )

    # -- errors ------------------------------------------------------------------------

    def _storage_error(self, action: str, error: BaseException) -> StorageError:
        psycopg = self._psycopg
        errors = psycopg.errors
        kind = type(error).__name__
        lost = False
        if isinstance(error, errors.QueryCanceled | errors.LockNotAvailable):
            problem = (
                f"the operation did not finish within timeout={self.timeout:g}s "
                "(the server rolled it back)"
            )
        elif isinstance(error, asyncio.TimeoutError | TimeoutError):
            problem = f"no connection within timeout={self.timeout:g}s (the server does not answer)"
        elif isinstance(error, errors.InsufficientPrivilege):
            problem = "the database user lacks a privilege the ledger needs"
        elif isinstance(error, errors.UndefinedTable | errors.UndefinedFunction):
            problem = (
                f"the ledger's tables or functions are missing from schema {self.schema} "
                "(dropped after the ledger opened?)"
            )
        elif isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
            problem = "cannot reach PostgreSQL"
            lost = True
        else:
            problem = "PostgreSQL reported an error"
        text = (
            f"cannot {action} the PostgreSQL ledger at {self.safe_url}: {problem} "
            f"({kind}: {redact_text(str(error)).strip()})"
        )
        if lost:
            text += " (a write may have run; repeat it with the same id, it counts once)"
        return StorageError(text)


class _Slot:
    """The right to hold one open connection; it gives itself back when collected.

    A connection holds its slot (``slot_of``); when the connection is closed
    or lost and collected, nothing holds the slot any more and a new one
    takes its place in the free list: no interrupt can leak a place.
    """

    __slots__ = ("free",)

    def __init__(self, free: collections.deque[_Slot]) -> None:
        # A weak reference: a free list being destroyed takes no new slots.
        self.free = weakref.ref(free)

    def __del__(self) -> None:
        free = self.free()
        if free is not None:
            free.append(_Slot(free))


class _Connections:
    """This process's synchronous connections: about ``size`` open at most, idle ones reused.

    Built so that an interrupt at any line (``KeyboardInterrupt``) cannot
    leave it stuck: it holds no lock across lines (psycopg_pool's workers
    and its lock could be left waiting forever), the idle list and the free
    slots are deques whose ``append`` and ``pop`` are atomic, and a
    connection lost half way, between ``take`` and ``give``, is dropped when
    it is garbage collected, its ``_Slot`` going back to the free list.
    """

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self.size = size
        self.idle: collections.deque[Any] = collections.deque()
        self.slots: collections.deque[_Slot] = collections.deque()
        for _ in range(size):
            self.slots.append(_Slot(self.slots))
        self.slot_of: weakref.WeakKeyDictionary[Any, _Slot] = weakref.WeakKeyDictionary()
        self.closed = False

    def take(self, left: Callable[[float], float], deadline: float) -> Any:
        """Return a healthy idle connection, or a new one; wait while ``size`` are busy."""
        pause = 0.001
        while True:
            try:
                conn = self.idle.pop()
            except IndexError:
                conn = None
            if conn is not None:
                if _healthy(conn):
                    return conn
                self.drop(conn)
                continue
            left(deadline)  # StorageError once the deadline has passed
            try:
                slot: _Slot | None = self.slots.pop()
            except IndexError:
                slot = None
            if slot is not None:
                conn = None
                try:
                    conn = self._connect()
                    self.slot_of[conn] = slot
                    return conn
                except BaseException:
                    # Interrupted half way: close what was opened and put the
                    # slot back now, not when the traceback is collected.
                    if conn is not None:
                        self.drop(conn)
                    del slot
                    raise
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.02)

    def give(self, conn: Any) -> None:
        """Take back a connection whose whole reply was read."""
        if self.closed or len(self.idle) >= self.size or not _healthy(conn):
            self.drop(conn)
        else:
            self.idle.append(conn)

    def drop(self, conn: Any) -> None:
        """Close a connection and free its place."""
        self.slot_of.pop(conn, None)
        with suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close the idle connections; the busy ones are closed when given back."""
        self.closed = True
        while True:
            try:
                conn = self.idle.pop()
            except IndexError:
                return
            self.drop(conn)


class _AsyncConnections:
    """One event loop's async connections, kept like ``_Connections`` (no background tasks).

    psycopg's async connections belong to the loop that opened them, so each
    loop has its own. Nothing runs in the background: a loop that closes
    leaves nothing pending, and its idle connections close when collected.
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], size: int) -> None:
        self._connect = connect
        self.size = size
        self.idle: collections.deque[Any] = collections.deque()
        self.slots: collections.deque[_Slot] = collections.deque()
        for _ in range(size):
            self.slots.append(_Slot(self.slots))
        self.slot_of: weakref.WeakKeyDictionary[Any, _Slot] = weakref.WeakKeyDictionary()
        self.closed = False

    async def take(self, left: Callable[[float], float], deadline: float) -> Any:
        """Return a healthy idle connection, or a new one; wait while ``size`` are busy."""
        pause = 0.001
        while True:
            try:
                conn = self.idle.pop()
            except IndexError:
                conn = None
            if conn is not None:
                if _healthy(conn):
                    return conn
                await self.drop(conn)
                continue
            left(deadline)
            try:
                slot: _Slot | None = self.slots.pop()
            except IndexError:
                slot = None
            if slot is not None:
                conn = None
                try:
                    conn = await asyncio.wait_for(self._connect(), left(deadline))
                    self.slot_of[conn] = slot
                    return conn
                except BaseException:
                    # Interrupted or cancelled half way: close what was opened
                    # and put the slot back now, not when the traceback goes.
                    if conn is not None:
                        await self.drop(conn)
                    del slot
                    raise
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.02)

    async def give(self, conn: Any) -> None:
        """Take back a connection whose whole reply was read."""
        if self.closed or len(self.idle) >= self.size or not _healthy(conn):
            await self.drop(conn)
        else:
            self.idle.append(conn)

    async def drop(self, conn: Any) -> None:
        """Close a connection and free its place."""
        self.slot_of.pop(conn, None)
        with suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        """Close the idle connections; the busy ones are closed when given back."""
        self.closed = True
        while True:
            try:
                conn = self.idle.pop()
            except IndexError:
                return
            await self.drop(conn)


def _healthy(conn: Any) -> bool:
    """Return False for a connection that must not be used: closed, busy or cut by the server.

    No round trip: an idle connection whose socket is readable has been told
    something by the server, which, while idle, is that it was terminated
    (a restart, ``pg_terminate_backend``). A connection whose lock is held
    while it sits unused was interrupted half way (its lock never released).
    """
    try:
        if conn.closed or conn.broken or conn.lock.locked():
            return False
        pgconn = conn.pgconn
        if pgconn.transaction_status != 0:  # not IDLE
            return False
        # The server said something to an idle connection: almost always that
        # it ended it (rarely a notice or a setting change, for which
        # dropping the connection costs one reconnect).
        return not _readable(pgconn.socket)
    except Exception:
        return False


def _readable(fd: int) -> bool:
    """Tell whether a socket has something to read, now, without waiting.

    ``poll`` rather than ``select``: ``select`` refuses descriptors past
    ``FD_SETSIZE`` (1024), which a busy process reaches, and every
    connection would then look broken and be opened again on every call.
    """
    if _POLL is None:  # Windows: no poll
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    poller = _POLL()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


_POLL = getattr(select, "poll", None)


def _refusal(reservation: Reservation, row: tuple[Any, ...]) -> Refusal | None:
    try:
        status = int(row[0])
        if status == -1:
            raise ValueError(f"reservation id {reservation.id!r} was used before")
        if status == 0:
            return None
        index = int(row[1])
        hold = reservation.holds[index]
        assert hold.limit is not None  # only holds with a limit refuse
        return Refusal(
            index, hold.key, hold.limit, int(row[2]), int(row[3]), hold.amount, int(row[4] or 0)
        )
    except (TypeError, IndexError) as error:
        raise StorageError(f"unexpected reply from PostgreSQL: {row!r:.120} ({error})") from None


def _balances(keys: list[str], rows: list[Any]) -> dict[str, Balance]:
    if len(rows) != len(keys):
        raise StorageError(
            f"unexpected reply from PostgreSQL: {len(rows)} balances for {len(keys)}"
        )
    return {
        key: Balance(int(spent), int(reserved))
        for key, (spent, reserved) in zip(keys, rows, strict=True)
    }


def _reservations(rows: list[Any]) -> list[Reservation]:
    found = []
    for rid, keys, limits, amounts, expires_at, units, overs, priors, weights in rows:
        n = len(keys)
        holds = tuple(
            Hold(
                key,
                None if limit is None else int(limit),
                int(amount),
                int(unit),
                over,
                prior,
                int(weight),
            )
            for key, limit, amount, unit, over, prior, weight in zip(
                keys,
                limits,
                amounts,
                units or [0] * n,  # NULL: every hold plain (or written by version 1)
                overs or [None] * n,
                priors or [None] * n,
                weights or [0] * n,
                strict=True,
            )
        )
        found.append(Reservation(rid, holds, float(expires_at)))
    return found


def _since(since: tuple[str, int] | None) -> dict[str, Any]:
    if since is None:
        return {"mark": None, "version": 0}
    try:
        mark, version = since
    except (TypeError, ValueError):
        raise ValueError(f"since must be None or a (mark, version) pair, got {since!r}") from None
    if not isinstance(mark, str) or isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"since must be None or a (mark, version) pair, got {since!r}")
    return {"mark": mark, "version": version}


def _changes(rows: list[Any]) -> BudgetChanges:
    if not rows:
        raise StorageError("unexpected reply from PostgreSQL: no budget log row")
    mark, version, full = rows[0][0], int(rows[0][1]), bool(rows[0][2])
    changed: dict[str, dict[str, Any] | None] = {}
    for _mark, _version, _full, name, text in rows:
        if name is not None:
            changed[name] = budget_from_json(text) if text is not None else None
    return BudgetChanges(mark, version, changed, full)


def _text(value: object, what: str) -> str:
    """Return ``value`` if PostgreSQL can store it as text; ``ValueError`` if not."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} contains a NUL character, which PostgreSQL refuses")
    return value


def _keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str):
        raise ValueError(f"keys must be a sequence of strings, not one string: {keys!r}")
    return [_text(key, "key") for key in keys]


def _budget(name: str, definition: Mapping[str, Any]) -> tuple[str, str]:
    text = budget_to_json(name, definition)
    return _text(name, "budget name"), text


def _units(amount: int) -> int:
    check_units(amount)
    if amount >= _MAX_UNITS:
        raise ValueError(
            f"amount {amount} is too large for the PostgreSQL ledger (max {_MAX_UNITS - 1})"
        )
    return amount


def _seconds(name: str, value: object, default: float, url: str) -> float:
    if value is None:
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < float("inf"):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds, got {value!r} ({url})"
        )
    return number


def _pool_size(value: object, url: str) -> int:
    if value is None:
        return _DEFAULT_POOL_SIZE
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ConfigurationError(f"pool_size must be a positive integer, got {value!r} ({url})")
    return number


def redact(url: str) -> str:
    """Return ``url`` with its password (in the authority or the query) replaced by ``***``."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):[^/?#@]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def redact_text(text: str) -> str:
    """Hide anything that looks like a password inside an error message."""
    text = re.sub(r"password=\S+", "password=***", text, flags=re.IGNORECASE)
    return " ".join(redact(word) if "://" in word else word for word in text.split(" "))
