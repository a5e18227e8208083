"""TCP proxies between a ledger and its real server, and the lost-reply checks they serve.

``DroppingProxy`` forwards every byte and, when armed, swallows the next
reply after the server ran the request, then cuts the connection: the ledger
cannot know whether its write ran. ``CuttableProxy`` cuts every connection and
refuses new ones until restored: an outage. ``LostReplies`` holds the
lost-reply tests that Redis and PostgreSQL both pass; a test module subclasses
it (``Test…``) and gives it the ``proxy``, ``through`` and ``direct`` fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest

from budgetguard.errors import StorageError
from budgetguard.ledger import Balance, Hold, Ledger, Reservation

FAR = 10**10
MODES = ["sync", "async"]


class ForwardingProxy:
    """Forward TCP connections from a free loopback port to ``host:port``, both ways."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def accepting(self) -> bool:
        """Return whether a new connection is forwarded (else it is closed at once)."""
        return True

    def forward(self, data: bytes, replies: bool) -> bool:
        """Return whether ``data`` (from the server if ``replies``) goes on; False cuts the pair."""
        return True

    def cut(self) -> None:
        """Close every connection."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self.closed = True
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.accepting():
                client.close()
                continue
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
            if not data or not self.forward(data, replies):
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


class DroppingProxy(ForwardingProxy):
    """Forward TCP connections; when armed, drop the next reply after the server ran it."""

    def __init__(self, host: str, port: int) -> None:
        self.armed = threading.Event()
        self.dropped = 0
        super().__init__(host, port)

    def arm(self) -> None:
        """Drop the reply to the next request that any connection sends."""
        self.armed.set()

    def forward(self, data: bytes, replies: bool) -> bool:
        if replies and self.armed.is_set():
            # The server ran the command (this is its reply): lose it.
            self.armed.clear()
            self.dropped += 1
            return False
        return True


class CuttableProxy(ForwardingProxy):
    """Forward TCP connections; ``down()`` cuts them all and refuses new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.up = threading.Event()
        self.up.set()
        super().__init__(host, port)

    def down(self) -> None:
        """Cut every connection; new ones are closed at once until ``restore()``."""
        self.up.clear()
        self.cut()

    def restore(self) -> None:
        """Accept and forward connections again."""
        self.up.set()

    def accepting(self) -> bool:
        return self.up.is_set()


def fresh(amount: int = 7) -> Reservation:
    """Return a reservation of ``amount`` on the user and global keys with a new id."""
    return Reservation(
        uuid.uuid4().hex, (Hold("user", 1000, amount), Hold("global", None, amount)), FAR
    )


def lose(proxy: DroppingProxy, write: Callable[[], Any], *, arm: bool = True) -> StorageError:
    """Run ``write`` with its reply lost; return the StorageError it raised."""
    if arm:
        proxy.arm()
    with pytest.raises(StorageError) as caught:
        write()
    assert proxy.dropped == 1, "the request never reached the server"
    return caught.value


def lose_async(
    proxy: DroppingProxy, ledger: Ledger, write: Callable[[], Awaitable[Any]], *, close: bool
) -> StorageError:
    """Run an async write with its reply lost, on an event loop whose connection is ready.

    ``close`` closes the ledger's async side at the end of the loop (Redis);
    PostgreSQL's ``aclose()`` would close the whole ledger, which the test uses
    again, so there the loop's connections close when they are collected.
    """

    async def main() -> None:
        await ledger.aping()  # connect (and its handshake) before the reply to lose
        proxy.arm()
        try:
            await write()
        finally:
            if close:
                await ledger.aclose()

    return lose(proxy, lambda: asyncio.run(main()), arm=False)


class LostReplies:
    """Lost-reply tests every shared ledger passes: each write counts once, its retry nothing."""

    # Whether the async writes close the ledger's async side after their loop.
    close_async: ClassVar[bool]

    def lose_async(
        self, proxy: DroppingProxy, ledger: Ledger, write: Callable[[], Awaitable[Any]]
    ) -> StorageError:
        return lose_async(proxy, ledger, write, close=self.close_async)

    @pytest.mark.parametrize("mode", MODES)
    def test_lost_settle_reply_charges_once(
        self, mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
    ) -> None:
        """A settle whose reply was lost charged once; its retry returns False, charges nothing."""
        r = fresh()
        assert through.reserve(r) is None
        if mode == "sync":
            lose(proxy, lambda: through.settle(r, 5, ("tally",)))
        else:
            self.lose_async(proxy, through, lambda: through.asettle(r, 5, ("tally",)))
        expected = {"user": Balance(5, 0), "global": Balance(5, 0), "tally": Balance(5, 0)}
        assert direct.balances(["user", "global", "tally"]) == expected
        assert through.settle(r, 5, ("tally",)) is False
        assert direct.balances(["user", "global", "tally"]) == expected

    @pytest.mark.parametrize("mode", MODES)
    def test_lost_release_reply_releases_once(
        self, mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
    ) -> None:
        """A release whose reply was lost released; its retry returns False."""
        r = fresh()
        assert through.reserve(r) is None
        if mode == "sync":
            lose(proxy, lambda: through.release(r))
        else:
            self.lose_async(proxy, through, lambda: through.arelease(r))
        assert direct.balances(["user"])["user"] == Balance()
        assert through.release(r) is False
        assert direct.open_reservations() == []

    @pytest.mark.parametrize("mode", MODES)
    def test_lost_add_reply_charges_once(
        self, mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
    ) -> None:
        """An add with an op id whose reply was lost charged once; its retry charges nothing."""
        op = uuid.uuid4().hex
        if mode == "sync":
            lose(proxy, lambda: through.add(["user", "global"], 100, op_id=op))
        else:
            self.lose_async(proxy, through, lambda: through.aadd(["user", "global"], 100, op_id=op))
        expected = {"user": Balance(100, 0), "global": Balance(100, 0)}
        assert direct.balances(["user", "global"]) == expected
        assert through.add(["user", "global"], 100, op_id=op) is False
        assert direct.balances(["user", "global"]) == expected

    def test_lost_add_without_id_is_never_run_twice(
        self, proxy: DroppingProxy, through: Ledger, direct: Ledger
    ) -> None:
        """An add without an op id and a lost reply ran once: no hidden retry (was $2 for $1)."""
        lose(proxy, lambda: through.add(["user"], 100))
        assert direct.balances(["user"])["user"] == Balance(100, 0)
