"""What only the PostgreSQL ledger does: schema, migrations, server faults, lost replies, options.

The contract itself (conformance, lifecycle, faults at every line, processes)
runs on PostgreSQL through the ``ledger_url`` parameterisation; this file
checks what a real server adds: restarts, terminated connections, statement
timeouts, migrations raced by processes, and replies lost after the server
committed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.ledger import Balance, Hold, Ledger, Reservation, ledger_from_url
from budgetguard.ledger._postgres_sql import SCHEMA_VERSION
from budgetguard.ledger.postgres import PostgresLedger

from ._proxy import FAR, MODES, DroppingProxy, LostReplies, fresh, lose, lose_async
from .conftest import PostgresServer, free_port, python_child, worker_env

pytestmark = pytest.mark.postgres


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on a plain psycopg connection and return its rows."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def own_server(postgres_server: PostgresServer | None) -> PostgresServer:
    """Return this session's own cluster, or skip: restarts need a server we control."""
    if postgres_server is None:
        pytest.skip("needs the session's own PostgreSQL cluster to restart it")
    return postgres_server


@pytest.fixture
def opened(postgres_url: str) -> Iterator[Callable[..., Ledger]]:
    """Return a factory of PostgreSQL ledgers, closed at the end."""
    made: list[Ledger] = []

    def make(url: str = postgres_url, **options: Any) -> Ledger:
        ledger = ledger_from_url(url, **options)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


# -- schema and migrations ---------------------------------------------------------


def test_schema_is_versioned(postgres_url: str, opened: Callable[..., Ledger]) -> None:
    """A new database gets budgetguard_schema at the current version; reopening keeps the data."""
    ledger = opened()
    assert isinstance(ledger, PostgresLedger)
    assert ledger.schema_version == SCHEMA_VERSION == 2
    assert sql(postgres_url, "SELECT id, version FROM public.budgetguard_schema") == [(1, 2)]
    ledger.add(["k"], 3)
    again = opened()
    assert again.balances(["k"])["k"] == Balance(3, 0)
    assert sql(postgres_url, "SELECT count(*) FROM public.budgetguard_schema") == [(1,)]


def test_a_newer_schema_is_refused(postgres_url: str, opened: Callable[..., Ledger]) -> None:
    """A database migrated by a newer budgetguard is refused with a StorageError saying so."""
    opened()
    sql(postgres_url, "UPDATE public.budgetguard_schema SET version = 99")
    with pytest.raises(StorageError, match="schema version 99, newer"):
        ledger_from_url(postgres_url)


def test_schemas_are_separate_ledgers(postgres_url: str, opened: Callable[..., Ledger]) -> None:
    """?schema=a and schema=b on one database do not see each other's spend or budgets."""
    a = opened(postgres_url + "?schema=tenant_a")
    b = opened(schema="tenant_b")
    a.add(["k"], 5)
    a.put_budget("x", {"limit": "1"})
    assert b.balances(["k"])["k"] == Balance()
    assert b.list_budgets() == {}
    assert a.balances(["k"])["k"] == Balance(5, 0)
    tables = sql(
        postgres_url,
        "SELECT table_schema, count(*) FROM information_schema.tables"
        " WHERE table_name LIKE 'budgetguard%%' GROUP BY 1 ORDER BY 1",
    )
    assert tables == [("tenant_a", 6), ("tenant_b", 6)]


MIGRATE = """
import os, sys, time
from budgetguard.ledger import ledger_from_url
url, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
ledger = ledger_from_url(url)
print(ledger.schema_version, flush=True)
ledger.close()
"""


@pytest.mark.slow
def test_migrations_raced_by_processes_run_once(postgres_url: str, tmp_path: Path) -> None:
    """Six processes open an empty database at once: each sees the last version, made once."""
    go = tmp_path / "go"
    url = postgres_url + "?schema=raced"
    children = [python_child("-c", MIGRATE, url, str(go)) for _ in range(6)]
    time.sleep(1.0)  # every child imported and waiting
    go.touch()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out.strip() == str(SCHEMA_VERSION)
    assert sql(postgres_url, "SELECT version FROM raced.budgetguard_schema") == [(SCHEMA_VERSION,)]
    assert sql(postgres_url, "SELECT count(*) FROM raced.budgetguard_budget_log") == [(1,)]


def make_version_1(url: str, schema: str) -> None:
    """Create a schema as budgetguard with schema version 1 left it (its one migration run)."""
    from budgetguard.ledger._postgres_sql import MIGRATIONS

    sql(url, f'CREATE SCHEMA "{schema}"')
    sql(
        url,
        f'CREATE TABLE "{schema}".budgetguard_schema (id int PRIMARY KEY CHECK (id = 1),'
        " version int NOT NULL, migrated_at timestamptz NOT NULL DEFAULT now())",
    )
    sql(url, MIGRATIONS[0].replace("__schema__", f'"{schema}"'))
    sql(url, f'INSERT INTO "{schema}".budgetguard_schema (id, version) VALUES (1, 1)')


def test_version_1_schema_is_upgraded_keeping_its_reservations(postgres_url: str) -> None:
    """A version 1 schema with open holds upgrades; the old holds round-trip and end."""
    make_version_1(postgres_url, "old")
    # Written through version 1's own functions, as an older budgetguard would.
    old_reserve = (
        'SELECT o_status FROM "old".budgetguard_reserve(%s, %s::text[], %s::bigint[],'
        " %s::bigint[], %s::float8, %s::float8, %s::float8)"
    )
    assert sql(
        postgres_url, old_reserve, ("a", ["k", "g"], [100, None], [4, 3], FAR, None, 3600.0)
    ) == [(0,)]
    assert sql(postgres_url, old_reserve, ("b", ["k"], [100], [5], FAR, None, 3600.0)) == [(0,)]
    ledger = ledger_from_url(postgres_url + "?schema=old")
    try:
        assert isinstance(ledger, PostgresLedger)
        assert ledger.schema_version == SCHEMA_VERSION == 2
        found = {r.id: r for r in ledger.open_reservations()}
        assert found["a"].holds == (Hold("k", 100, 4), Hold("g", None, 3))
        assert ledger.balances(["k", "g"]) == {"k": Balance(0, 9), "g": Balance(0, 3)}
        assert ledger.settle(found["a"], [2], ["t"]) is True
        assert ledger.balances(["k", "g", "t"]) == {
            "k": Balance(2, 5),
            "g": Balance(2, 0),
            "t": Balance(2, 0),
        }
        # Version 1's settle still works for a process not yet restarted.
        assert sql(
            postgres_url,
            'SELECT "old".budgetguard_settle(%s, %s::text[], %s::bigint, %s::float8)',
            ("b", ["k"], 1, None),
        ) == [(True,)]
        assert ledger.balances(["k"])["k"] == Balance(3, 0)
        new = Reservation("c", (Hold("k", 100, 1, unit=3, over="o", prior="p", weight=9),), FAR)
        assert ledger.reserve(new) is None
        assert ledger.open_reservations() == [new]
    finally:
        ledger.close()


@pytest.mark.slow
def test_migration_from_version_1_raced_by_processes_runs_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Six processes open a version 1 schema at once: it is upgraded once, all see version 2."""
    make_version_1(postgres_url, "raced1")
    go = tmp_path / "go"
    url = postgres_url + "?schema=raced1"
    children = [python_child("-c", MIGRATE, url, str(go)) for _ in range(6)]
    time.sleep(1.0)  # every child imported and waiting
    go.touch()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out.strip() == str(SCHEMA_VERSION)
    assert sql(postgres_url, "SELECT version FROM raced1.budgetguard_schema") == [(SCHEMA_VERSION,)]
    columns = sql(
        postgres_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'raced1'"
        " AND table_name = 'budgetguard_reservations' AND column_name IN"
        " ('units', 'overs', 'priors', 'weights') ORDER BY 1",
    )
    assert columns == [("overs",), ("priors",), ("units",), ("weights",)]


def test_connections_past_descriptor_1024_are_reused(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """A busy process's sockets pass fd 1024 (select's limit): idle connections are reused."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this process may open {hard} files at most")
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        ledger = opened(postgres_url)
        assert isinstance(ledger, PostgresLedger)
        ledger.ping()
        pool = ledger._pool
        assert pool is not None and len(pool.idle) == 1
        (conn,) = pool.idle
        assert conn.pgconn.socket > 1024
        ledger.ping()
        assert list(pool.idle) == [conn]  # the same connection again, not a new one
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connects_interrupted_while_their_tracebacks_live_leak_no_slot(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """More interrupted connects than pool_size, their errors kept: the pool still serves."""
    ledger = opened(postgres_url + "?pool_size=2&timeout=3")
    assert isinstance(ledger, PostgresLedger)
    kept: list[BaseException] = []  # what a test runner or a logger keeps: the tracebacks
    real = ledger._connect
    failing = [5]

    def connect() -> Any:
        if failing[0]:
            failing[0] -= 1
            raise KeyboardInterrupt
        return real()

    ledger._connect = connect  # type: ignore[method-assign]
    ledger._pool = None
    for _ in range(5):
        try:
            ledger.ping()
        except KeyboardInterrupt as error:
            kept.append(error)
    ledger.ping()  # StorageError (no free slot within timeout=3) if the slots leaked
    assert len(kept) == 5


def test_a_pool_opens_at_most_pool_size_connections(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """40 threads race through pool_size=3: the server never sees more than 3 of its sessions."""
    ledger = opened(postgres_url + "?pool_size=3&application_name=bg-pool-test")
    ledger.ping()
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            rows = sql(
                postgres_url,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bg-pool-test'",
            )
            seen.append(rows[0][0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    barrier = threading.Barrier(40)

    def call(_: int) -> bool:
        barrier.wait()
        r = fresh(1)
        return ledger.reserve(r) is None and ledger.settle(r, 1)

    try:
        with ThreadPoolExecutor(40) as pool:
            assert all(pool.map(call, range(40)))
    finally:
        stop.set()
        watcher.join()
    assert seen and max(seen) <= 3
    assert ledger.balances(["user"])["user"] == Balance(40, 0)


# -- server faults -------------------------------------------------------------------


def exactly_once(ledger: Ledger, op_id: str) -> None:
    """Charge 1 unit under ``op_id``, repeating the same write after every StorageError."""
    deadline = time.monotonic() + 60
    while True:
        try:
            ledger.add(["k"], 1, op_id=op_id)
            return
        except StorageError:
            assert time.monotonic() < deadline, "the ledger never came back"
            time.sleep(0.05)


@pytest.mark.slow
def test_server_restarted_mid_run_charges_each_write_once(
    postgres_server: PostgresServer | None, postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """pg_ctl restart while a thread charges: errors are StorageErrors, retries count once."""
    server = own_server(postgres_server)
    ledger = opened(timeout=2)
    r = fresh()
    assert ledger.reserve(r) is None
    ledger.add(["k"], 0)
    done = threading.Event()
    errors: list[BaseException] = []

    def charge() -> None:
        try:
            for i in range(300):
                exactly_once(ledger, f"op-{i}")
                if i == 60:
                    done.set()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            done.set()

    worker = threading.Thread(target=charge)
    worker.start()
    assert done.wait(60)
    server.restart()
    worker.join(120)
    assert not worker.is_alive() and errors == []
    # Durable: spend and the open hold survived the restart; every write counted once.
    assert ledger.balances(["k", "user"]) == {"k": Balance(300, 0), "user": Balance(0, 7)}
    assert ledger.settle(r, 5) is True
    assert ledger.balances(["user"])["user"] == Balance(5, 0)


@pytest.mark.slow
async def test_async_side_survives_a_restart(
    postgres_server: PostgresServer | None, opened: Callable[..., Ledger]
) -> None:
    """The async pool drops the connections a restart cut and works again without a rebuild."""
    server = own_server(postgres_server)
    ledger = opened(timeout=2)
    await ledger.aadd(["k"], 1)
    await asyncio.to_thread(server.restart)
    for _ in range(50):
        try:
            await ledger.aadd(["k"], 2, op_id="after")
            break
        except StorageError:
            await asyncio.sleep(0.1)
    assert await ledger.abalances(["k"]) == {"k": Balance(3, 0)}
    await ledger.aclose()


def test_terminated_connections_are_replaced(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """pg_terminate_backend on every ledger connection: the next operations simply work."""
    ledger = opened(postgres_url + "?application_name=bg-terminated")
    r = fresh()
    assert ledger.reserve(r) is None
    killed = sql(
        postgres_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'bg-terminated'",
    )
    assert killed[0][0] >= 1
    time.sleep(0.2)  # the FATAL message reaches the idle sockets
    assert ledger.settle(r, 4) is True
    assert ledger.balances(["user", "global"]) == {"user": Balance(4, 0), "global": Balance(4, 0)}


def test_terminated_mid_statement_is_a_storage_error_and_the_retry_counts_once(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """A connection killed while its add waits on a lock: StorageError, retry charges once."""
    import psycopg

    ledger = opened(timeout=10)
    ledger.add(["k"], 1)
    holder = psycopg.connect(postgres_url)
    holder.execute("SELECT 1 FROM public.budgetguard_counters WHERE key = 'k' FOR UPDATE")
    caught: list[BaseException] = []
    writer = threading.Thread(
        target=lambda: _catch(caught, lambda: ledger.add(["k"], 5, op_id="killed"))
    )
    writer.start()
    for _ in range(100):  # wait until the add is blocked on the lock
        waiting = sql(
            postgres_url,
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%%budgetguard_add%%'",
        )
        if waiting:
            break
        time.sleep(0.05)
    assert waiting, "the add never waited on the lock"
    sql(postgres_url, "SELECT pg_terminate_backend(%s)", (waiting[0][0],))
    writer.join(10)
    holder.rollback()
    holder.close()
    assert len(caught) == 1 and isinstance(caught[0], StorageError)
    assert "same id" in str(caught[0])
    assert ledger.add(["k"], 5, op_id="killed") is True  # the killed one had rolled back
    assert ledger.add(["k"], 5, op_id="killed") is False
    assert ledger.balances(["k"])["k"] == Balance(6, 0)


def _catch(into: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as error:
        into.append(error)


#: The balances before and after an operation that a held row stopped.
UNMOVED = {"user": Balance(10, 0), "global": Balance(10, 0)}


@pytest.fixture
def held_row(postgres_url: str, opened: Callable[..., Ledger]) -> Iterator[Ledger]:
    """Return a ledger (``timeout=0.5``) holding ``UNMOVED``, its ``user`` row locked elsewhere.

    Reads are not blocked by the lock (they see the last committed rows).
    """
    import psycopg

    ledger = opened(timeout=0.5)
    ledger.add(["user", "global"], 10)
    holder = psycopg.connect(postgres_url)
    holder.execute("SELECT 1 FROM public.budgetguard_counters WHERE key = 'user' FOR UPDATE")
    yield ledger
    holder.rollback()
    holder.close()


@pytest.mark.parametrize("operation", ["reserve", "settle", "add", "clear"])
def test_a_held_lock_gives_a_timeout_error_and_changes_nothing(
    held_row: Ledger, operation: str
) -> None:
    """Another connection holds the counter row: the operation ends at timeout=, nothing moved."""
    ledger, r = held_row, fresh()
    calls: dict[str, Callable[[], object]] = {
        "reserve": lambda: ledger.reserve(r),
        "settle": lambda: ledger.settle(r, 3),
        "add": lambda: ledger.add(["user"], 3, op_id="held"),
        "clear": lambda: ledger.clear(["user"]),
    }
    with pytest.raises(StorageError, match=r"timeout=0\.5s") as caught:
        calls[operation]()
    assert "rolled it back" in str(caught.value)  # the server's timeout ended it
    assert ledger.balances(["user", "global"]) == UNMOVED
    assert ledger.open_reservations() == []


@pytest.mark.parametrize("operation", ["areserve", "asettle", "aadd"])
async def test_an_async_operation_on_a_held_lock_ends_at_timeout_and_changes_nothing(
    held_row: Ledger, operation: str
) -> None:
    """The async connections carry the deadline too: a held row ends the call, nothing moved."""
    ledger, r = held_row, fresh()
    assert await ledger.abalances(["user", "global"]) == UNMOVED  # this loop's pool is open
    calls: dict[str, Callable[[], Any]] = {
        "areserve": lambda: ledger.areserve(r),
        "asettle": lambda: ledger.asettle(r, 3),
        "aadd": lambda: ledger.aadd(["user"], 3, op_id="held"),
    }
    with pytest.raises(StorageError, match=r"timeout=0\.5s") as caught:
        # wait_for only so that a missing deadline fails the test instead of hanging it.
        await asyncio.wait_for(calls[operation](), 30)
    assert "rolled it back" in str(caught.value)
    assert await ledger.abalances(["user", "global"]) == UNMOVED
    assert ledger.open_reservations() == []
    await ledger.aclose()


def test_a_wait_for_a_pooled_connection_ends_at_timeout(opened: Callable[..., Ledger]) -> None:
    """Every connection of the pool busy: the next operation gives up at timeout=, then works."""
    ledger = opened(timeout=0.3, pool_size=1)
    assert isinstance(ledger, PostgresLedger)
    ledger.ping()
    pool = ledger._sync_pool()
    busy = pool.take(ledger._left, time.monotonic() + 5)  # the pool's only connection
    caught: list[BaseException] = []
    waiter = threading.Thread(
        target=lambda: _catch(caught, lambda: ledger.add(["k"], 1, op_id="waited"))
    )
    try:
        waiter.start()
        waiter.join(30)  # only so that an unbounded wait fails instead of hanging
        assert not waiter.is_alive(), "the wait for a pooled connection was not bounded"
    finally:
        pool.give(busy)
    assert len(caught) == 1 and isinstance(caught[0], StorageError)
    assert "did not answer within timeout=0.3s" in str(caught[0])
    assert ledger.add(["k"], 1, op_id="waited") is True  # the one that gave up wrote nothing
    assert ledger.balances(["k"])["k"] == Balance(1, 0)


async def test_an_async_wait_for_a_pooled_connection_ends_at_timeout(
    opened: Callable[..., Ledger],
) -> None:
    """The async twin: the loop's only connection busy, the next call gives up at timeout=."""
    ledger = opened(timeout=0.3, pool_size=1)
    assert isinstance(ledger, PostgresLedger)
    await ledger.aping()
    pool = ledger._async_pool()
    busy = await pool.take(ledger._left, time.monotonic() + 5)
    try:
        with pytest.raises(StorageError, match=r"did not answer within timeout=0\.3s"):
            await asyncio.wait_for(ledger.aadd(["k"], 1, op_id="waited"), 30)
    finally:
        await pool.give(busy)
    assert await ledger.aadd(["k"], 1, op_id="waited") is True
    assert await ledger.abalances(["k"]) == {"k": Balance(1, 0)}
    await ledger.aclose()


async def test_async_operations_use_async_connections_and_no_thread(
    opened: Callable[..., Ledger],
) -> None:
    """Every a-method runs on psycopg's AsyncConnection in the loop: no thread, no sync pool."""
    import psycopg

    ledger = opened()
    assert isinstance(ledger, PostgresLedger)
    threads = set(threading.enumerate())
    r = fresh()
    assert await ledger.areserve(r) is None
    assert await ledger.asettle(r, 4) is True
    assert await ledger.arelease(fresh()) is False
    assert await ledger.aadd(["k"], 2, op_id="native") is True
    assert await ledger.abalances(["user", "k"]) == {"user": Balance(4, 0), "k": Balance(2, 0)}
    assert (await ledger.abudget_changes(None)).full
    await ledger.aping()
    assert set(threading.enumerate()) == threads
    assert ledger._pool is None  # the synchronous pool was never opened
    pool = ledger._async_pool()
    assert pool.idle and all(isinstance(c, psycopg.AsyncConnection) for c in pool.idle)
    await ledger.aclose()


def test_a_server_that_never_answers_is_a_storage_error(silent_server: int) -> None:
    """A server that accepts and never answers: the connect gives up (connect_timeout)."""
    with pytest.raises(StorageError, match="cannot reach PostgreSQL"):
        ledger_from_url(f"postgresql://u@127.0.0.1:{silent_server}/db?timeout=1")


def test_unreachable_server_is_a_storage_error_without_the_password() -> None:
    """A refused connection names the URL (password hidden) and the problem."""
    port = free_port()
    with pytest.raises(StorageError) as caught:
        ledger_from_url(f"postgresql://user:hunter2@127.0.0.1:{port}/db?timeout=1")
    message = str(caught.value)
    assert f"postgresql://user:***@127.0.0.1:{port}/db" in message
    assert "cannot reach PostgreSQL" in message and "hunter2" not in message


# -- lost replies ------------------------------------------------------------------------


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[DroppingProxy]:
    """Return a proxy in front of the test's PostgreSQL."""
    parts = urlsplit(postgres_url)
    assert parts.hostname is not None and parts.port is not None
    running = DroppingProxy(parts.hostname, parts.port)
    yield running
    running.close()


@pytest.fixture
def through(proxy: DroppingProxy, postgres_url: str) -> Iterator[Ledger]:
    """Return a ledger (one connection) that talks to PostgreSQL through the proxy."""
    parts = urlsplit(postgres_url)
    ledger = ledger_from_url(
        f"postgresql://{parts.username}@127.0.0.1:{proxy.port}{parts.path}?timeout=5&pool_size=1"
    )
    # Every statement prepared (psycopg prepares on the 5th run, in a round
    # trip of its own): the next request is the one whose reply is lost.
    for i in range(8):
        warm = Reservation(f"warm-{i}", (Hold("warm", None, 1),), FAR)
        ledger.reserve(warm)
        ledger.settle(warm, 0)
        ledger.release(warm)
        ledger.add(["warm"], 0, op_id=f"warm-{i}")
        ledger.balances(["warm"])
    yield ledger
    ledger.close()


@pytest.fixture
def direct(postgres_url: str) -> Iterator[Ledger]:
    """Return a ledger on the same database without the proxy, to read the truth."""
    ledger = ledger_from_url(postgres_url)
    yield ledger
    ledger.close()


@pytest.mark.parametrize("mode", MODES)
def test_lost_reserve_reply_holds_nothing(
    mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """A reserve whose reply was lost is released; its retry is refused and changes nothing."""
    r = fresh()
    if mode == "sync":
        error = lose(proxy, lambda: through.reserve(r))
    else:
        error = lose_async(proxy, through, lambda: through.areserve(r), close=False)
    assert "same id" in str(error)
    assert direct.balances(["user", "global"]) == {"user": Balance(), "global": Balance()}
    assert direct.open_reservations() == []
    with pytest.raises(ValueError, match="used before"):
        direct.reserve(r)


class TestPostgresLostReplies(LostReplies):
    """The lost-reply checks of every shared ledger, on PostgreSQL."""

    close_async = False


# -- budget changes and idempotency ids ---------------------------------------------------


def test_budget_changes_follow_puts_and_deletes(opened: Callable[..., Ledger]) -> None:
    """A mark appears with the first definition; since=(mark, version) returns only changes."""
    ledger = opened()
    empty = ledger.budget_changes(None)
    assert (empty.mark, empty.version, empty.changed, empty.full) == (None, 0, {}, True)
    ledger.put_budget("a", {"limit": "1"})
    ledger.put_budget("b", {"limit": "2"})
    first = ledger.budget_changes(None)
    assert first.mark is not None and first.version == 2 and first.full
    assert first.changed == {"a": {"limit": "1"}, "b": {"limit": "2"}}
    assert ledger.budget_changes((first.mark, first.version)) == (first.mark, 2, {}, False)
    ledger.put_budget("a", {"limit": "3"})
    assert ledger.delete_budget("b") is True
    assert ledger.delete_budget("b") is False  # changes nothing, no new version
    later = ledger.budget_changes((first.mark, first.version))
    assert later == (first.mark, 4, {"a": {"limit": "3"}, "b": None}, False)
    # Another mark (a ledger that lost its data and started again): everything.
    assert ledger.budget_changes(("other", 4)) == (first.mark, 4, {"a": {"limit": "3"}}, True)
    assert ledger.budget_changes((first.mark, 99)).full  # a version from the future
    assert ledger.list_budgets() == {"a": {"limit": "3"}}
    assert ledger.get_budget("b") is None


async def test_async_budget_changes(opened: Callable[..., Ledger]) -> None:
    """abudget_changes answers like budget_changes, on an async connection."""
    ledger = opened()
    ledger.put_budget("a", {"limit": "1"})
    assert await ledger.abudget_changes(None) == ledger.budget_changes(None)
    await ledger.aclose()


def test_put_budget_writes_one_row(postgres_url: str, opened: Callable[..., Ledger]) -> None:
    """put_budget is O(1): other definitions keep their version (no rewrite of all of them)."""
    ledger = opened()
    for i in range(50):
        ledger.put_budget(f"b{i}", {"limit": str(i)})
    ledger.put_budget("b7", {"limit": "70"})
    rows = dict(sql(postgres_url, "SELECT name, version FROM public.budgetguard_budgets"))
    assert rows["b7"] == 51 and rows["b8"] == 9 and rows["b49"] == 50


def test_an_incremental_budget_read_touches_only_what_changed(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """With 20,000 definitions, reading the one that changed reads a few rows, not all."""
    import json

    ledger = opened()
    ledger.put_budget("first", {"limit": "1"})
    sql(
        postgres_url,
        "INSERT INTO public.budgetguard_budgets (name, definition, version, changed_at) "
        "SELECT 'filler-' || i, '{\"limit\": \"1\"}', 1, 0 FROM generate_series(1, 20000) i",
    )
    sql(postgres_url, "ANALYZE public.budgetguard_budgets")
    seen = ledger.budget_changes(None)
    assert seen.full and len(seen.changed) == 20001
    ledger.put_budget("changed", {"limit": "2"})
    changes = ledger.budget_changes((seen.mark, seen.version))
    assert not changes.full and list(changes.changed) == ["changed"]
    import psycopg

    query = ledger._sql["budget_changes"]  # type: ignore[attr-defined]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        explained = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {query}",
            {"mark": seen.mark, "version": seen.version},
        ).fetchone()
    assert explained is not None
    plan = explained[0] if isinstance(explained[0], list) else json.loads(explained[0])
    read = 0
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", ()))
        if node.get("Relation Name") == "budgetguard_budgets" and node.get("Actual Loops"):
            read += node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        read += node.get("Rows Removed by Join Filter", 0)
    assert read < 100, f"the incremental read went through {read} rows"


def test_old_tombstones_are_pruned_and_old_readers_reload(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """Tombstones older than a day go; a reader older than the pruned one gets full=True."""
    now = [time.time()]
    ledger = opened(clock=lambda: now[0])
    ledger.put_budget("a", {"limit": "1"})
    ledger.put_budget("gone", {"limit": "1"})
    seen = ledger.budget_changes(None)
    ledger.delete_budget("gone")
    now[0] += 86400 + 1
    ledger.put_budget("c", {"limit": "1"})  # prunes the day-old tombstone
    assert sql(postgres_url, "SELECT count(*) FROM public.budgetguard_budgets") == [(2,)]
    stale = ledger.budget_changes((seen.mark or "", seen.version))
    assert stale.full and stale.changed == {"a": {"limit": "1"}, "c": {"limit": "1"}}
    recent = ledger.budget_changes((stale.mark or "", stale.version - 1))
    assert not recent.full and recent.changed == {"c": {"limit": "1"}}


def test_ended_ids_are_pruned_after_the_idempotency_ttl(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """Ended reservation ids and op ids older than idempotency_ttl are forgotten, a few a call."""
    now = [time.time()]
    ledger = opened(postgres_url + "?idempotency_ttl=60", clock=lambda: now[0])
    assert isinstance(ledger, PostgresLedger) and ledger.idempotency_ttl == 60
    for i in range(5):
        r = fresh()
        ledger.reserve(r)
        ledger.settle(r, 1)
        ledger.add(["k"], 1, op_id=f"op-{i}")
    assert ledger.add(["k"], 1, op_id="op-0") is False  # remembered within the TTL
    now[0] += 61
    ledger.reserve(fresh())
    assert sql(postgres_url, "SELECT count(*) FROM public.budgetguard_added") == [(0,)]
    assert sql(
        postgres_url, "SELECT count(*) FROM public.budgetguard_reservations WHERE state <> 0"
    ) == [(0,)]
    assert ledger.add(["k"], 1, op_id="op-0") is True  # forgotten: a new charge


# -- the door --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("idempotency_ttl=30", "at least 60"),
        ("idempotency_ttl=abc", "'abc'"),
        ("timeout=0", "'0'"),
        ("timeout=nan", "'nan'"),
        ("schema=Bad-Name", "'Bad-Name'"),
        ("pool_size=0", "'0'"),
        ("colour=blue", "colour"),
    ],
)
def test_bad_options_are_refused_before_connecting(query: str, named: str) -> None:
    """A bad option is a ConfigurationError naming it, raised before any connection."""
    port = free_port()  # nobody listens: refused at the door, not by the server
    with pytest.raises(ConfigurationError) as caught:
        ledger_from_url(f"postgresql://u:secret@127.0.0.1:{port}/db?{query}")
    assert named in str(caught.value)
    assert "secret" not in str(caught.value)


def test_nul_in_a_key_is_a_value_error(opened: Callable[..., Ledger]) -> None:
    """PostgreSQL text cannot hold NUL: such a key is refused with ValueError, nothing written."""
    ledger = opened()
    with pytest.raises(ValueError, match="NUL"):
        ledger.add(["a\x00b"], 1)
    with pytest.raises(ValueError, match="NUL"):
        ledger.reserve(Reservation("r", (Hold("a\x00", 10, 1),), FAR))
    assert ledger.scan("") == {}


def test_libpq_parameters_keep_their_spaces(
    postgres_url: str, opened: Callable[..., Ledger]
) -> None:
    """libpq's own query parameters reach the server intact (a space is not turned into +)."""
    ledger = opened(postgres_url + "?application_name=bg%20spaced&options=-c%20work_mem%3D5MB")
    ledger.ping()
    names = sql(
        postgres_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bg spaced'",
    )
    assert names[0][0] >= 1


def test_postgres_scheme_is_an_alias(postgres_url: str, opened: Callable[..., Ledger]) -> None:
    """postgres:// opens the same ledger as postgresql://."""
    first = opened()
    alias = opened(postgres_url.replace("postgresql://", "postgres://", 1))
    assert isinstance(alias, PostgresLedger)
    first.add(["k"], 2)
    assert alias.balances(["k"])["k"] == Balance(2, 0)


def test_server_clock_is_used_without_a_clock(opened: Callable[..., Ledger]) -> None:
    """Without clock=, expiry follows the server's clock: a past expiry is released."""
    ledger = opened()
    gone = Reservation("gone", (Hold("user", 10, 8),), time.time() - 5)
    assert ledger.reserve(gone) is None
    assert ledger.reserve(fresh(5)) is None  # the expired 8 no longer counts
    assert ledger.balances(["user"])["user"] == Balance(0, 5)


def test_missing_psycopg_names_the_extra() -> None:
    """Without psycopg, a postgresql:// URL says which extra to install."""
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from budgetguard.ledger import ledger_from_url\n"
        "from budgetguard.errors import ConfigurationError\n"
        "try:\n    ledger_from_url('postgresql://localhost/db')\n"
        "except ConfigurationError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(), check=True
    ).stdout
    assert "pip install 'budgetguard-llm[postgres]'" in out
