"""Backends for the ledger conformance suite: memory, SQLite and a real Redis.

The Redis backend uses ``BUDGETGUARD_TEST_REDIS_URL`` when it is set (its
database is flushed before every test), else a ``redis-server`` this session
starts on a free port in a temporary directory. Without either the Redis tests
skip, unless ``BUDGETGUARD_REQUIRE_REDIS=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from budgetguard.ledger import Ledger, ledger_from_url

REDIS_URL_ENV = "BUDGETGUARD_TEST_REDIS_URL"
REQUIRE_REDIS_ENV = "BUDGETGUARD_REQUIRE_REDIS"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server this test session owns: it can be stopped and started on one port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10s")

    def stop(self) -> None:
        """Stop the server (its data is lost: it runs without persistence)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """Start this session's own redis-server, if the binary is installed."""
    if os.environ.get(REDIS_URL_ENV):
        yield None
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="budgetguard-redis-") as directory:
        server = RedisServer(binary, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer | None) -> str:
    """Return the URL of a flushed Redis database, or skip (fail in CI) without one."""
    url = os.environ.get(REDIS_URL_ENV) or (redis_server.url if redis_server else None)
    if url is None:
        reason = f"no redis-server on PATH and {REDIS_URL_ENV} is not set"
        if os.environ.get(REQUIRE_REDIS_ENV) == "1":
            pytest.fail(f"{REQUIRE_REDIS_ENV}=1 but {reason}")
        pytest.skip(reason)
    if redis_server is not None and redis_server.process is None:
        redis_server.start()  # a previous test stopped it and failed before restarting
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def clock() -> Clock:
    """Return a clock that moves only when the test says so."""
    return Clock()


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
SHARED_BACKENDS = [param for param in BACKENDS if param.id != "memory"]


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty ledger of the backend under test."""
    backend: str = request.param
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'spend.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def make_ledger(ledger_url: str, clock: Clock) -> Iterator[Callable[..., Ledger]]:
    """Return a factory of ledgers on the backend under test (closed at the end)."""
    opened: list[Ledger] = []

    def make(**options: Any) -> Ledger:
        options.setdefault("clock", clock)
        ledger = ledger_from_url(ledger_url, **options)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    """Return an empty ledger of the backend under test, on the controlled clock."""
    return make_ledger()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that asks for a ledger once per backend (shared ones if so marked)."""
    if "ledger_url" in metafunc.fixturenames:
        shared = metafunc.definition.get_closest_marker("shared_only") is not None
        metafunc.parametrize("ledger_url", SHARED_BACKENDS if shared else BACKENDS, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker that limits a test to backends shared between processes."""
    config.addinivalue_line("markers", "shared_only: run only on sqlite and redis")


def worker_env() -> dict[str, str]:
    """Return the environment for child processes: budgetguard importable from the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env
