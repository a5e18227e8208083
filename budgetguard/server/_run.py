"""Run the budget service under uvicorn: one bound socket, bounded connections, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..guard import BudgetGuard
from ._app import create_app
from ._config import ServerConfig, shown_url

__all__ = ["RunningServer", "open_guard", "serve", "start"]

logger = logging.getLogger("budgetguard")


def _timed_protocol(read_timeout: float) -> type[H11Protocol]:
    """Return uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

    uvicorn closes idle keep-alive connections but waits forever for the first
    request of a fresh connection, and for headers sent a byte at a time:
    1,100 such connections use up a process's file descriptors.
    """

    class TimedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:
                self._disarm()  # the headers are in; the body has its own deadline

        def on_response_complete(self) -> None:
            before = self.cycle
            super().on_response_complete()
            if self.cycle is before and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol


def open_guard(ledger: str) -> BudgetGuard:
    """Open ``ledger`` and check that it answers; raise ``StorageError`` when it does not."""
    guard = BudgetGuard(ledger, metrics=False)
    try:
        guard.ledger.ping()
        guard.budgets()  # a ledger that answers pings but cannot be read is not up either
    except BaseException:
        guard.close()
        raise
    return guard


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGINT or SIGTERM without dying of the signal after."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Shut down gracefully on SIGINT and SIGTERM, then return normally.

        uvicorn raises the signal again once it has shut down, which kills the
        process before the ledger is closed; returning lets ``serve`` close it
        and the command exit 0.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only: a background server is stopped in code
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _uvicorn_server(guard: BudgetGuard, config: ServerConfig) -> uvicorn.Server:
    settings = uvicorn.Config(
        create_app(guard, config),
        http=_timed_protocol(config.read_timeout),
        lifespan="off",
        limit_concurrency=config.max_connections,
        timeout_keep_alive=max(1, round(config.keep_alive)),
        timeout_graceful_shutdown=max(1, round(config.shutdown_timeout)),
        server_header=False,
        date_header=True,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        h11_max_incomplete_event_size=64 * 1024,
    )
    return _Server(settings)


class RunningServer:
    """A budget service running in a background thread (for tests and embedding)."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, guard: BudgetGuard) -> None:
        self._server = server
        self._socket = sock
        self.guard = guard
        host, port = sock.getsockname()[:2]
        self.host = str(host)
        self.port = int(port)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="budgetguard-server", daemon=True
        )

    @property
    def url(self) -> str:
        """Return the base URL clients use (``api_base``)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def _start(self) -> None:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the budget service stopped while starting")
            self._thread.join(0.01)

    def stop(self) -> None:
        """Stop serving, let requests in flight finish, and close the ledger."""
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()
        self.guard.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def start(config: ServerConfig, guard: BudgetGuard | None = None) -> RunningServer:
    """Start the service of ``config`` in a background thread; ``port=0`` picks a free port."""
    config.check()
    own = guard is None
    opened = open_guard(config.ledger) if guard is None else guard
    try:
        sock = _bind(config.host, config.port)
    except BaseException:
        if own:
            opened.close()
        raise
    running = RunningServer(_uvicorn_server(opened, config), sock, opened)
    running._start()
    return running


def serve(config: ServerConfig, guard: BudgetGuard | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then finish requests in flight and close the ledger.

    Raises ``ConfigurationError`` for a configuration that must not start,
    ``StorageError`` when the ledger does not answer, and ``OSError`` when the
    address cannot be bound, all before anything listens. A given ``guard``
    is used instead of opening ``config.ledger`` (and closed at the end too).
    """
    config.check()
    if guard is None:
        guard = open_guard(config.ledger)
    try:
        sock = _bind(config.host, config.port)
        with contextlib.closing(sock):
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in str(host) else host
            logger.info(
                "budget service for %s listening on http://%s:%s%s",
                shown_url(guard.ledger.url),
                shown,
                port,
                " WITHOUT AUTHENTICATION" if config.no_auth else "",
            )
            _uvicorn_server(guard, config).run(sockets=[sock])
    finally:
        guard.close()
    logger.info("budget service stopped; ledger closed")
