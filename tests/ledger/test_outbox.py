"""No charge is lost to a storage failure: the outbox keeps it and writes it once the ledger is up.

Outages are real: on SQLite another connection holds the write lock (the
guard's writes time out with ``StorageError``, its reads still work); on
Redis and PostgreSQL a TCP proxy between the guard and the server cuts every
connection and refuses new ones, or swallows one reply after the server ran
the command. ``memory://`` never fails, so these tests run on the shared
backends only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from budgetguard import BudgetGuard, ConfigurationError, StorageError, _hooks

from ._proxy import CuttableProxy, DroppingProxy
from .conftest import worker_env

pytestmark = pytest.mark.shared_only

COST = "0.25"


class Outage:
    """A ledger URL for the guard, and a way to take that ledger down and bring it back."""

    def __init__(self, ledger_url: str) -> None:
        self.truth = ledger_url  # what a second guard reads the ledger through
        self._blocker: sqlite3.Connection | None = None
        self._proxy: CuttableProxy | None = None
        parts = urlsplit(ledger_url)
        if parts.scheme == "sqlite":
            self.path = parts.path
            self.url = f"{ledger_url}?timeout=0.3"
        else:
            assert parts.hostname is not None and parts.port is not None
            self._proxy = CuttableProxy(parts.hostname, parts.port)
            user = f"{parts.username}@" if parts.username else ""
            self.url = f"{parts.scheme}://{user}127.0.0.1:{self._proxy.port}{parts.path}?timeout=2"

    @property
    def sqlite(self) -> bool:
        """Tell whether the ledger is SQLite (its reads work during the outage)."""
        return self._proxy is None

    def down(self) -> None:
        """Make every write of the guard fail with StorageError."""
        if self._proxy is not None:
            self._proxy.down()
            return
        self._blocker = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._blocker.execute("BEGIN IMMEDIATE")

    def up(self) -> None:
        """Let the guard write again."""
        if self._proxy is not None:
            self._proxy.restore()
            return
        assert self._blocker is not None
        self._blocker.execute("ROLLBACK")
        self._blocker.close()
        self._blocker = None

    def close(self) -> None:
        """Bring the ledger back and stop the proxy."""
        if self._blocker is not None:
            self.up()
        if self._proxy is not None:
            self._proxy.close()


@pytest.fixture
def outage(ledger_url: str) -> Iterator[Outage]:
    """Return the outage controls for the backend under test."""
    controls = Outage(ledger_url)
    yield controls
    controls.close()


def make_guard(outage: Outage, **options: Any) -> BudgetGuard:
    """Return a guard on the outage's ledger with alice's budget of $10."""
    options.setdefault("metrics", False)
    guard = BudgetGuard(outage.url, **options)
    guard.set_budget("10", user="alice")
    return guard


def truth(outage: Outage, user: str = "alice") -> Decimal:
    """Return what a fresh guard, with nothing in its own outbox, reads as ``user``'s spend."""
    reader = BudgetGuard(outage.truth, metrics=False)
    try:
        return reader.spend(user)
    finally:
        reader.close()


def call_that_takes_the_ledger_down(guard: BudgetGuard, outage: Outage) -> Any:
    """Return a guarded function whose ledger goes down while it runs (so its settle fails)."""

    @guard.budgeted(user="alice", estimate="1", cost=lambda _: COST)
    def call() -> str:
        outage.down()
        return "ran"

    return call


def test_a_settle_that_fails_while_the_ledger_is_down_is_charged_once_when_it_is_back(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    """The call returns; its charge waits in the outbox; the next operation writes it, once."""
    guard = make_guard(outage)
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        assert call_that_takes_the_ledger_down(guard, outage)() == "ran"
    assert "kept in the outbox" in caplog.text
    assert len(guard._outbox) == 1
    outage.up()
    assert truth(outage) == 0  # not written yet: nothing has touched the ledger since
    assert guard.spend("alice") == Decimal(COST)  # the query wrote it first
    assert len(guard._outbox) == 0
    assert truth(outage) == Decimal(COST)
    # The hold of the failed settle was dropped by the retry: $10 - $0.25 is left.
    assert guard.remaining("alice") == Decimal("9.75")
    guard.close()
    assert truth(outage) == Decimal(COST)


def test_the_next_guarded_call_writes_the_waiting_charge_first(outage: Outage) -> None:
    """A charge in the outbox is written by the next call's reserve, before it is checked."""
    guard = make_guard(outage)
    call_that_takes_the_ledger_down(guard, outage)()
    outage.up()

    @guard.budgeted(user="alice", estimate="0.1", cost=lambda _: "0.1")
    def cheap() -> str:
        return "ok"

    assert cheap() == "ok"
    assert len(guard._outbox) == 0
    assert truth(outage) == Decimal("0.35")
    guard.close()


def test_a_settle_whose_reply_was_lost_is_charged_exactly_once(redis_url: str) -> None:
    """Redis ran the settle but its reply was lost: the outbox's retry changes nothing."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    proxy = DroppingProxy(parts.hostname, parts.port)
    guard = BudgetGuard(f"redis://127.0.0.1:{proxy.port}{parts.path}?timeout=5", metrics=False)
    try:
        guard.set_budget("10", user="alice")

        @guard.budgeted(user="alice", estimate="1", cost=lambda _: COST)
        def call(lose: bool) -> str:
            if lose:
                proxy.arm()  # the next request is this call's settle
            return "ran"

        call(False)  # connected, every script loaded
        assert call(True) == "ran"
        assert proxy.dropped == 1
        assert len(guard._outbox) == 1
        assert guard.spend("alice") == Decimal("0.5")
        assert len(guard._outbox) == 0
        reader = BudgetGuard(redis_url, metrics=False)
        assert reader.spend("alice") == Decimal("0.5")
        assert reader.remaining("alice") == Decimal("9.5")
        reader.close()
    finally:
        guard.close()
        proxy.close()


def test_a_direct_charge_whose_reply_was_lost_is_charged_exactly_once(redis_url: str) -> None:
    """charge() outside a call: a lost reply is written again with the same id, counted once."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    proxy = DroppingProxy(parts.hostname, parts.port)
    guard = BudgetGuard(f"redis://127.0.0.1:{proxy.port}{parts.path}?timeout=5", metrics=False)
    try:
        guard.set_budget("10", user="alice")
        guard.charge("0.5", user="alice")  # connected, every script loaded
        proxy.arm()
        assert guard.charge("1", user="alice") == Decimal(1)
        assert proxy.dropped == 1
        assert len(guard._outbox) == 0  # written again at once
        assert guard.spend("alice") == Decimal("1.5")
    finally:
        guard.close()
        proxy.close()


def test_a_direct_charge_while_the_ledger_is_down_waits_and_is_written_once(
    outage: Outage,
) -> None:
    """charge() during an outage does not raise: the money is spent, the outbox keeps it."""
    guard = make_guard(outage)
    outage.down()
    assert guard.charge("0.5", user="alice") == Decimal("0.5")
    assert len(guard._outbox) == 1
    outage.up()
    assert guard.spend("alice") == Decimal("0.5")
    assert guard.spend("alice") == Decimal("0.5")
    guard.close()
    assert truth(outage) == Decimal("0.5")


def test_spend_during_the_outage_counts_the_waiting_charge(outage: Outage, ledger_url: str) -> None:
    """Where the ledger can still be read, spend() adds what waits in the outbox."""
    if not outage.sqlite:
        pytest.skip("only SQLite can be read while its writes fail")
    guard = make_guard(outage)
    call_that_takes_the_ledger_down(guard, outage)()
    assert guard.spend("alice") == Decimal(COST)  # the flush failed; the read worked
    assert len(guard._outbox) == 1
    # The ledger still holds the $1 estimate, which covers the $0.25: $9 left.
    assert guard.remaining("alice") == Decimal(9)
    outage.up()
    guard.close()
    assert truth(outage) == Decimal(COST)


async def test_an_async_settle_that_fails_is_kept_and_written_by_the_next_call(
    outage: Outage,
) -> None:
    """The async shells keep a failed settle and write it, off the event loop, before the next."""
    guard = make_guard(outage)

    @guard.budgeted(user="alice", estimate="1", cost=lambda _: COST)
    async def call(down: bool) -> str:
        if down:
            outage.down()
        return "ran"

    assert await call(True) == "ran"
    assert len(guard._outbox) == 1
    outage.up()
    assert await call(False) == "ran"
    assert len(guard._outbox) == 0
    assert await guard.aspend("alice") == Decimal("0.5")
    await asyncio.to_thread(guard.close)
    assert truth(outage) == Decimal("0.5")


def test_close_writes_what_waits(outage: Outage) -> None:
    """close() writes the outbox before it closes the ledger."""
    guard = make_guard(outage)
    call_that_takes_the_ledger_down(guard, outage)()
    outage.up()
    guard.close()
    assert truth(outage) == Decimal(COST)


def test_close_with_the_ledger_still_down_says_the_charges_are_lost(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    """A guard closed during the outage logs how many charges, and how much, never landed."""
    guard = make_guard(outage)
    call_that_takes_the_ledger_down(guard, outage)()
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        guard.close()
    assert "1 charges ($0.25) the ledger never took" in caplog.text


def test_a_full_outbox_drops_loudly_and_counts(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    """Three settles fail with room for two: two are written later, one is dropped and said."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    guard = make_guard(outage, metrics=True, meter_provider=provider, outbox_size=2)
    # The three calls and this thread: the ledger goes down only once every
    # call has its reservation's answer. (Seeing three open reservations in
    # the ledger was not enough: a reply still on its way through the proxy
    # was cut with it, and that call failed before it ran.)
    started = threading.Barrier(4, timeout=60)
    release = threading.Event()

    @guard.budgeted(user="alice", estimate="1", cost=lambda _: COST)
    def call() -> str:
        started.wait()
        assert release.wait(timeout=60)
        return "ran"

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait()
    assert len(guard.ledger.open_reservations()) == 3
    outage.down()
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        release.set()
        for thread in threads:
            thread.join()
    assert len(guard._outbox) == 2
    assert guard._outbox.dropped == 1
    full = [r.getMessage() for r in caplog.records if "outbox is full" in r.getMessage()]
    assert len(full) == 1 and "dropped a charge of $0.25 for user 'alice'" in full[0]
    points = metric_points(reader)
    assert points["budgetguard.outbox.size"] == 2
    assert points["budgetguard.outbox.dropped"] == 1
    outage.up()
    assert guard.spend("alice") == Decimal("0.5")
    assert metric_points(reader)["budgetguard.outbox.size"] == 0
    guard.close()
    provider.shutdown()
    assert truth(outage) == Decimal("0.5")


def metric_points(reader: InMemoryMetricReader) -> dict[str, float]:
    """Collect through the SDK and return each budgetguard.outbox.* instrument's one value."""
    data = reader.get_metrics_data()
    found: dict[str, float] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("budgetguard.outbox."):
                    (point,) = metric.data.data_points
                    found[metric.name] = point.value
    return found


def test_a_forked_child_does_not_write_its_parents_outbox(outage: Outage) -> None:
    """The child of a fork starts with an empty outbox; the parent's charge is written once."""
    guard = make_guard(outage)
    call_that_takes_the_ledger_down(guard, outage)()
    assert len(guard._outbox) == 1
    outage.up()
    pid = os.fork()
    if pid == 0:  # the child: an empty outbox, and close() writes nothing
        code = 0 if len(guard._outbox) == 0 else 1
        guard.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert truth(outage) == 0
    guard.close()
    assert truth(outage) == Decimal(COST)


def test_the_outbox_is_written_at_interpreter_exit(outage: Outage, tmp_path: Path) -> None:
    """A process that never calls close() writes its waiting charges as it exits."""
    if outage.sqlite:
        # Another connection of the child's own holds the write lock.
        setup = f"""
            import sqlite3
            url = {outage.url!r}
            blocker = sqlite3.connect({outage.path!r}, isolation_level=None)
            down = lambda: blocker.execute("BEGIN IMMEDIATE")
            up = lambda: blocker.execute("ROLLBACK")
            """
    else:
        # The child's own proxy between it and the server, cut while the call runs.
        parts = urlsplit(outage.truth)
        user = f"{parts.username}@" if parts.username else ""
        setup = f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from _proxy import CuttableProxy
            proxy = CuttableProxy({parts.hostname!r}, {parts.port!r})
            url = f"{parts.scheme}://{user}127.0.0.1:{{proxy.port}}{parts.path}?timeout=2"
            down, up = proxy.down, proxy.restore
            """
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(setup)
        + textwrap.dedent(
            f"""
            from budgetguard import BudgetGuard

            guard = BudgetGuard(url, metrics=False)
            guard.set_budget("10", user="alice")

            @guard.budgeted(user="alice", estimate="1", cost=lambda _: {COST!r})
            def call():
                down()
                return "ran"

            assert call() == "ran"
            assert len(guard._outbox) == 1
            up()
            # no close(): the atexit hook writes it
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=worker_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert truth(outage) == Decimal(COST)


@pytest.mark.parametrize("size", [-1, 1.5, True, "10"])
def test_outbox_size_must_be_a_whole_number(size: object, ledger_url: str) -> None:
    """A bad outbox_size is refused when the guard is built, naming the value."""
    with pytest.raises(ConfigurationError, match="outbox_size"):
        BudgetGuard(ledger_url, outbox_size=size, metrics=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("steps", ["one-frame", "general"])
def test_a_reserve_that_fails_follows_the_policy_on_every_path(
    outage: Outage, monkeypatch: pytest.MonkeyPatch, policy: str, kind: str, steps: str
) -> None:
    """fail_closed refuses before the call runs, fail_open runs it unchecked; then charging resumes.

    ``steps``: the one-frame path of a common call (definitions fresh), or the
    general steps (``budget_cache_ttl=0`` re-reads them every call).
    """
    ttl = 0 if steps == "general" else 3600
    guard = make_guard(outage, on_storage_error=policy, budget_cache_ttl=ttl)
    general: list[int] = []
    begin, abegin = guard._begin, guard._abegin

    def counted_begin(*args: Any, **kwargs: Any) -> Any:
        general.append(1)
        return begin(*args, **kwargs)

    async def counted_abegin(*args: Any, **kwargs: Any) -> Any:
        general.append(1)
        return await abegin(*args, **kwargs)

    # A process-wide max_budget left by another test (its hook counts every
    # call, on the general steps) is not this test's business.
    monkeypatch.setattr(_hooks, "active", ())
    monkeypatch.setattr(guard, "_begin", counted_begin)
    monkeypatch.setattr(guard, "_abegin", counted_abegin)
    ran: list[int] = []
    if kind == "sync":

        @guard.budgeted(user="alice", estimate="1", cost=lambda _: COST)
        def sync_call() -> None:
            ran.append(1)

        def call() -> None:
            sync_call()
    else:

        @guard.budgeted(user="alice", estimate="1", cost=lambda _: COST)
        async def async_call() -> None:
            ran.append(1)

        def call() -> None:
            asyncio.run(async_call())

    call()  # warm: definitions read, the plan made
    general.clear()
    outage.down()
    try:
        if policy == "fail_closed":
            with pytest.raises(StorageError):
                call()
            assert ran == [1]  # refused before it ran
        else:
            call()
            assert ran == [1, 1]  # ran unchecked, charged nothing
        assert (len(general) > 0) == (steps == "general")  # the path under test was taken
    finally:
        outage.up()
    call()
    guard.close()
    assert truth(outage) == Decimal(COST) * 2
