"""Lost replies on Redis: every money-moving write counts exactly once.

A TCP proxy on loopback sits between the ledger and ``redis-server``. Armed,
it forwards the next request, lets the server run it, then swallows the
reply and cuts the client's connection: the ledger cannot know whether its
script ran. The test checks that the write counted once (no hidden retry ran
it twice), that the ledger said ``StorageError``, and that a retry with the
same id changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from budgetguard.errors import StorageError
from budgetguard.ledger import Balance, Hold, Ledger, Reservation, ledger_from_url

pytestmark = pytest.mark.redis

FAR = 10**10


class DroppingProxy:
    """Forward TCP connections to Redis; when armed, drop the next reply after the server ran it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.dropped = 0
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        """Drop the reply to the next request that any connection sends."""
        self.armed.set()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self.closed = True
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if replies and self.armed.is_set():
                # The server ran the command (this is its reply): lose it.
                self.armed.clear()
                self.dropped += 1
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[DroppingProxy]:
    """Return a proxy in front of the test's Redis."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    running = DroppingProxy(parts.hostname, parts.port)
    yield running
    running.close()


@pytest.fixture
def through(proxy: DroppingProxy, redis_url: str) -> Iterator[Ledger]:
    """Return a ledger that talks to Redis through the proxy."""
    path = urlsplit(redis_url).path
    ledger = ledger_from_url(f"redis://127.0.0.1:{proxy.port}{path}?timeout=5")
    # Connected and every script loaded: the next request is the one to lose
    # (a first EVALSHA would get NOSCRIPT, which runs nothing).
    warm = Reservation("warm", (Hold("warm", None, 1),), FAR)
    ledger.reserve(warm)
    ledger.settle(warm, 0)
    ledger.release(warm)
    ledger.add(["warm"], 0, op_id="warm")
    ledger.balances(["warm"])
    ledger.open_reservations()
    yield ledger
    ledger.close()


@pytest.fixture
def direct(redis_url: str) -> Iterator[Ledger]:
    """Return a ledger on the same Redis without the proxy, to read the truth."""
    ledger = ledger_from_url(redis_url)
    yield ledger
    ledger.close()


def fresh() -> Reservation:
    """Return a reservation of 7 units on the user and global keys."""
    return Reservation(uuid.uuid4().hex, (Hold("user", 1000, 7), Hold("global", None, 7)), FAR)


def lose(proxy: DroppingProxy, write: Callable[[], Any], *, arm: bool = True) -> StorageError:
    """Run ``write`` with its reply lost; return the StorageError it raised."""
    if arm:
        proxy.arm()
    with pytest.raises(StorageError) as caught:
        write()
    assert proxy.dropped == 1, "the request never reached the server"
    return caught.value


def lose_async(
    proxy: DroppingProxy, ledger: Ledger, write: Callable[[], Awaitable[Any]]
) -> StorageError:
    """Run an async write with its reply lost, on an event loop whose connection is ready."""

    async def main() -> None:
        await ledger.aping()  # connect (and its handshake) before the reply to lose
        proxy.arm()
        try:
            await write()
        finally:
            await ledger.aclose()

    return lose(proxy, lambda: asyncio.run(main()), arm=False)


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
def test_lost_reserve_reply_holds_nothing(
    mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """A reserve whose reply was lost is released; its retry is refused and changes nothing."""
    r = fresh()
    if mode == "sync":
        error = lose(proxy, lambda: through.reserve(r))
    else:
        error = lose_async(proxy, through, lambda: through.areserve(r))
    assert "same id" in str(error)
    assert direct.balances(["user", "global"]) == {"user": Balance(), "global": Balance()}
    assert direct.open_reservations() == []
    with pytest.raises(ValueError, match="used before"):
        through.reserve(r)
    assert direct.balances(["user"])["user"] == Balance()


@pytest.mark.parametrize("mode", MODES)
def test_lost_settle_reply_charges_once(
    mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """A settle whose reply was lost charged once; its retry returns False and charges nothing."""
    r = fresh()
    assert through.reserve(r) is None
    if mode == "sync":
        lose(proxy, lambda: through.settle(r, 5, ("tally",)))
    else:
        lose_async(proxy, through, lambda: through.asettle(r, 5, ("tally",)))
    expected = {"user": Balance(5, 0), "global": Balance(5, 0), "tally": Balance(5, 0)}
    assert direct.balances(["user", "global", "tally"]) == expected
    assert through.settle(r, 5, ("tally",)) is False
    assert direct.balances(["user", "global", "tally"]) == expected


@pytest.mark.parametrize("mode", MODES)
def test_lost_release_reply_releases_once(
    mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """A release whose reply was lost released; its retry returns False."""
    r = fresh()
    assert through.reserve(r) is None
    if mode == "sync":
        lose(proxy, lambda: through.release(r))
    else:
        lose_async(proxy, through, lambda: through.arelease(r))
    assert direct.balances(["user"])["user"] == Balance()
    assert through.release(r) is False
    assert direct.open_reservations() == []


@pytest.mark.parametrize("mode", MODES)
def test_lost_add_reply_charges_once(
    mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """An add with an op id whose reply was lost charged once; its retry charges nothing."""
    op = uuid.uuid4().hex
    if mode == "sync":
        lose(proxy, lambda: through.add(["user", "global"], 100, op_id=op))
    else:
        lose_async(proxy, through, lambda: through.aadd(["user", "global"], 100, op_id=op))
    expected = {"user": Balance(100, 0), "global": Balance(100, 0)}
    assert direct.balances(["user", "global"]) == expected
    assert through.add(["user", "global"], 100, op_id=op) is False
    assert direct.balances(["user", "global"]) == expected


def test_lost_add_without_id_is_never_run_twice(
    proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """An add without an op id and a lost reply ran once: no hidden client retry (was $2 for $1)."""
    lose(proxy, lambda: through.add(["user"], 100))
    assert direct.balances(["user"])["user"] == Balance(100, 0)


def test_ledger_works_after_a_lost_reply(
    proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """The connection cut by a lost reply is replaced: the next operations answer correctly."""
    lose(proxy, lambda: through.add(["user"], 1, op_id="x"))
    for i in range(5):
        assert through.add(["user"], 1, op_id=f"y{i}") is True
    assert through.balances(["user"])["user"] == Balance(6, 0)


def test_charge_outside_a_call_counts_once_when_its_reply_is_lost(
    proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """guard.charge() outside a call whose reply is lost retries with its id: $1.00, not $2.00."""
    from decimal import Decimal

    from budgetguard import BudgetGuard

    guard = BudgetGuard(through, metrics=False)
    guard.set_budget("10", user="alice")
    guard.spend("alice")  # every script the charge needs is loaded: lose the charge itself
    proxy.arm()
    assert guard.charge("1.00", user="alice") == Decimal("1.00")
    assert proxy.dropped == 1
    truth = BudgetGuard(direct, metrics=False)
    assert truth.spend("alice") == Decimal("1.00")
