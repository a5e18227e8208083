"""Backends for the ledger conformance suite: memory, SQLite, a real Redis and PostgreSQL.

The Redis backend uses ``BUDGETGUARD_TEST_REDIS_URL`` when it is set (its
database is flushed before every test), else a ``redis-server`` this session
starts on a free port in a temporary directory. Without either the Redis tests
skip, unless ``BUDGETGUARD_REQUIRE_REDIS=1`` (CI), where they fail.

The PostgreSQL backend likewise uses ``BUDGETGUARD_TEST_POSTGRES_URL`` when it
is set (the ledger's tables are dropped before every test), else a cluster
this session creates with ``initdb`` and runs with ``pg_ctl`` on a free port
in a temporary directory (as the ``postgres`` or ``nobody`` user when the
tests run as root). Without either the PostgreSQL tests skip, unless
``BUDGETGUARD_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from budgetguard.ledger import Ledger, ledger_from_url

REDIS_URL_ENV = "BUDGETGUARD_TEST_REDIS_URL"
REQUIRE_REDIS_ENV = "BUDGETGUARD_REQUIRE_REDIS"
POSTGRES_URL_ENV = "BUDGETGUARD_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "BUDGETGUARD_REQUIRE_POSTGRES"
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


def postgres_binaries() -> Path | None:
    """Return the directory holding initdb and pg_ctl (PATH, /usr/local/bin, Debian's), or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates.append(Path("/usr/local/bin"))
    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


class PostgresServer:
    """A PostgreSQL cluster this test session owns: it can be stopped, started and restarted."""

    def __init__(self, binaries: Path, directory: Path) -> None:
        self.binaries = binaries
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.user = self._os_user()
        self.url = f"postgresql://budgetguard@127.0.0.1:{self.port}/budgetguard"
        self.admin_url = f"postgresql://budgetguard@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _os_user() -> str | None:
        """Return the OS user to run the server as (None: this one); root may not run it."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            return name
        raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run initdb as")

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(command)
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        """Create the cluster (trust authentication on loopback) and its database."""
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chmod(self.directory, 0o755)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.binaries / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "budgetguard",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                "unix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
        self.start()
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE budgetguard")

    def _ctl(self, *arguments: str, check: bool = True) -> None:
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), *arguments, check=check)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("-l", str(self.directory / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server (its data stays on disk)."""
        self._ctl("-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        """Restart the server: every connection is cut, the data stays."""
        log = str(self.directory / "server.log")
        self._ctl("-l", log, "-m", "fast", "-w", "-t", "60", "restart")

    def running(self) -> bool:
        """Return True if the server answers on its port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """Create and start this session's own PostgreSQL cluster, if the binaries are installed."""
    if os.environ.get(POSTGRES_URL_ENV):
        yield None
        return
    binaries = postgres_binaries()
    if binaries is None:
        yield None
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="budgetguard-postgres-") as directory:
        server = PostgresServer(binaries, Path(directory))
        server.init()
        try:
            yield server
        finally:
            server.stop()


#: Drop what PostgreSQL ledgers created, and nothing else: the budgetguard_*
#: tables and functions of public, and the other schemas holding a ledger
#: (those are named by ?schema= and hold only the ledger's objects).
POSTGRES_RESET = """
DO $$
DECLARE item record;
BEGIN
    FOR item IN SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
        WHERE c.relname = 'budgetguard_schema' AND n.nspname <> 'public'
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', item.nspname);
    END LOOP;
    FOR item IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname LIKE 'budgetguard\\_%'
    LOOP
        EXECUTE format('DROP TABLE IF EXISTS public.%I CASCADE', item.relname);
    END LOOP;
    FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proname LIKE 'budgetguard\\_%'
    LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', item.signature);
    END LOOP;
END
$$;
"""


@pytest.fixture
def postgres_url(postgres_server: PostgresServer | None) -> str:
    """Return the URL of a database without ledger tables, or skip (fail in CI) without one."""
    url = os.environ.get(POSTGRES_URL_ENV) or (postgres_server.url if postgres_server else None)
    if url is None:
        reason = f"no initdb/pg_ctl (or no psycopg) and {POSTGRES_URL_ENV} is not set"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}")
        pytest.skip(reason)
    if postgres_server is not None and not postgres_server.running():
        postgres_server.start()  # a previous test stopped it and failed before restarting
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if postgres_server is not None:
            # Our own cluster: connections of earlier tests' ledgers would
            # hold locks on what is dropped. (A given URL's other users are
            # left alone.)
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        conn.execute(POSTGRES_RESET)
    return url


@pytest.fixture
def clock() -> Clock:
    """Return a clock that moves only when the test says so."""
    return Clock()


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
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
    if backend == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
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
    config.addinivalue_line("markers", "shared_only: run only on sqlite, redis and postgresql")


def worker_env() -> dict[str, str]:
    """Return the environment for child processes: budgetguard importable from the repo."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def python_child(*args: str) -> subprocess.Popen[str]:
    """Start ``python *args`` (a script, or ``-c CODE ...``) with budgetguard importable.

    Its stdout and stderr are captured as text.
    """
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Return the port of a server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for sock in accepted:
        sock.close()
