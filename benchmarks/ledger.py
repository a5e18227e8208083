"""Measure reserve + settle per second on every ledger backend.

Run from the repository root::

    .venv/bin/python benchmarks/ledger.py [--seconds 3] [--redis-url redis://...]
        [--postgres-url postgresql://...]

Without ``--redis-url`` a private ``redis-server`` is started on a free port
(no persistence), so the figures never touch a shared server. Without
``--postgres-url`` a private PostgreSQL cluster is created with ``initdb``
and started with ``pg_ctl`` on a free port (defaults: ``fsync`` and
``synchronous_commit`` on, so a charge that returned is on disk, as with
SQLite's ``synchronous=full``; as the ``postgres`` user when run as root). For Redis the
script also counts round trips per reserve + settle with ``INFO commandstats``
and runs ``redis-benchmark -q -t set,incr -n 100000`` against the same server
for comparison. Results go to stdout as a table.
"""

from __future__ import annotations

import argparse
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
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budgetguard.ledger import Hold, Ledger, Reservation, ledger_from_url

LIMIT = 2**52  # never refuses: the benchmark measures the path that succeeds


def one_call(ledger: Ledger) -> None:
    """Reserve on a user and a global budget, then settle with a tally, as the guard does."""
    r = Reservation(
        uuid.uuid4().hex,
        (Hold("user:alice:2026-01", LIMIT, 1000), Hold("global:2026-01", LIMIT, 1000)),
        time.time() + 300,
    )
    if ledger.reserve(r) is not None:
        raise RuntimeError("benchmark reservation refused")
    ledger.settle(r, 900, ("model:gpt-4o:2026-01",))


def rate(ledger: Ledger, threads: int, seconds: float) -> float:
    """Return reserve + settle pairs per second with ``threads`` threads."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(index: int) -> None:
        while time.perf_counter() < stop:
            one_call(ledger)
            counts[index] += 1

    for _ in range(20):  # warm up: connections, scripts loaded, pages cached
        one_call(ledger)
    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a private redis-server and wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


def _as_server_user(argv: list[str]) -> list[str]:
    """Run ``argv`` as the postgres (or nobody) user when this is root: initdb refuses root."""
    if os.geteuid() != 0:
        return argv
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--", *argv]
    raise SystemExit("running as root without a postgres or nobody user; pass --postgres-url")


def start_postgres(directory: str) -> tuple[Callable[[], None], str]:
    """Create and start a private PostgreSQL cluster; return its stop function and URL."""
    found = shutil.which("initdb")
    candidates = [os.path.dirname(os.path.realpath(found))] if found else []
    candidates += ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    binaries = next((d for d in candidates if os.path.exists(os.path.join(d, "pg_ctl"))), None)
    if binaries is None:
        raise SystemExit("initdb/pg_ctl are not installed; pass --postgres-url")
    home = os.path.join(directory, "postgres")
    os.mkdir(home)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_as_server_user(["x"])[2])
        os.chmod(directory, 0o755)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    data = os.path.join(home, "data")
    port = free_port()

    def run(*argv: str) -> None:
        subprocess.run(_as_server_user(list(argv)), check=True, capture_output=True)

    run(os.path.join(binaries, "initdb"), "-D", data, "-U", "bench", "--auth=trust", "--no-sync")
    with open(os.path.join(data, "postgresql.conf"), "a") as conf:
        conf.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
        )
    pg_ctl = os.path.join(binaries, "pg_ctl")
    run(pg_ctl, "-D", data, "-l", os.path.join(home, "log"), "-w", "start")

    def stop() -> None:
        run(pg_ctl, "-D", data, "-m", "fast", "-w", "stop")

    return stop, f"postgresql://bench@127.0.0.1:{port}/postgres"


def round_trips(url: str, calls: int = 1000) -> tuple[float, float]:
    """Return (round trips, commands run by Redis) per reserve + settle."""
    import redis

    admin = redis.Redis.from_url(url)
    ledger = ledger_from_url(url, prefix="bench-rt")
    one_call(ledger)  # scripts loaded before counting
    admin.config_resetstat()
    for _ in range(calls):
        one_call(ledger)
    stats = admin.info("commandstats")
    admin.close()
    ledger.close()
    top_level = {"cmdstat_evalsha", "cmdstat_eval", "cmdstat_script", "cmdstat_ping"}
    trips = sum(v["calls"] for k, v in stats.items() if k in top_level)
    everything = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
    # everything counts the scripts' inner commands plus the EVALSHA calls.
    return trips / calls, everything / calls


def redis_benchmark(port: int) -> dict[str, float]:
    """Run redis-benchmark for SET and INCR against the private server."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    out = subprocess.run(
        [binary, "-p", str(port), "-q", "-t", "set,incr", "-n", "100000"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, float] = {}
    for line in out.replace("\r", "\n").splitlines():
        # "SET: 98716.68 requests per second, p50=0.263 msec"
        if "requests per second" in line:
            name, _, rest = line.partition(":")
            found[name.strip()] = float(rest.split()[0])
    return found


def main() -> None:
    """Measure every backend and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--redis-url", help="use this Redis instead of a private server")
    parser.add_argument("--postgres-url", help="use this PostgreSQL instead of a private cluster")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="budgetguard-bench-") as directory:
        server = None
        port = 0
        redis_url = options.redis_url
        if redis_url is None:
            server, port = start_redis(directory)
            redis_url = f"redis://127.0.0.1:{port}/0"
        stop_postgres = None
        postgres_url = options.postgres_url
        if postgres_url is None:
            stop_postgres, postgres_url = start_postgres(directory)
        backends: list[tuple[str, Callable[[], Ledger]]] = [
            ("memory://", lambda: ledger_from_url("memory://")),
            (
                "sqlite synchronous=full",
                lambda: ledger_from_url(f"sqlite:///{os.path.join(directory, 'full.db')}"),
            ),
            (
                "sqlite synchronous=normal",
                lambda: ledger_from_url(
                    f"sqlite:///{os.path.join(directory, 'normal.db')}?synchronous=normal"
                ),
            ),
            ("redis:// (local)", lambda: ledger_from_url(redis_url, prefix="bench")),
            (
                "postgresql:// (local)",
                lambda: ledger_from_url(postgres_url, schema="budgetguard_bench"),
            ),
        ]
        rows = []
        try:
            for name, make in backends:
                ledger = make()
                single = rate(ledger, 1, options.seconds)
                eight = rate(ledger, 8, options.seconds)
                ledger.close()
                rows.append((name, single, eight))
            trips, commands = round_trips(redis_url)
            reference = redis_benchmark(port) if server is not None else {}
        finally:
            if server is not None:
                server.terminate()
                server.wait()
            if stop_postgres is not None:
                stop_postgres()

    out = sys.stdout
    out.write(
        f"reserve + settle pairs per second ({options.seconds:g}s each, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n\n"
    )
    out.write(f"| {'backend':<26} | {'1 thread':>10} | {'8 threads':>10} |\n")
    out.write(f"|{'-' * 28}|{'-' * 12}|{'-' * 12}|\n")
    for name, single, eight in rows:
        out.write(f"| {name:<26} | {single:>10,.0f} | {eight:>10,.0f} |\n")
    out.write(
        f"\nRedis: {trips:g} round trips (EVALSHA) per reserve + settle; about "
        f"{commands:.1f} commands executed by Redis including those inside the scripts\n"
    )
    if reference:
        listed = ", ".join(f"{k} {v:,.0f}/s" for k, v in reference.items())
        out.write(f"redis-benchmark -q -t set,incr -n 100000 (50 clients): {listed}\n")
    out.write(
        "PostgreSQL: 2 round trips (one function call each) per reserve + settle; "
        f"psycopg {_psycopg_version()}\n"
    )


def _psycopg_version() -> str:
    """Return psycopg's version and libpq wrapper (c, binary or python)."""
    import psycopg

    return f"{psycopg.__version__} ({psycopg.pq.__impl__} wrapper, libpq {psycopg.pq.version()})"


if __name__ == "__main__":
    main()
