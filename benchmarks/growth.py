"""Measure the ledger's growth per call and per distinct user, and a call under many budgets.

Run from the repository root::

    .venv/bin/python benchmarks/growth.py [--calls 5000] [--users 5000] [--budgets 100000]

For each backend (``memory``, ``sqlite``, ``redis``, ``postgresql``):

- **bytes per call**: ``--calls`` guarded calls by one user with a budget of
  their own (the growth is what the ledger keeps per call: ended reservation
  ids, remembered so a retry after a lost reply charges once);
- **bytes per distinct user**: ``--users`` calls, each by a new user with no
  budget of their own (under a global budget), less the per-call growth:
  the lifetime and day tallies a user leaves behind;
- **after prune --lifetime**: what is left of that per-user growth once
  ``guard.prune(..., lifetime=True)`` has shed the idle users' tallies;
- **a call with N user budgets defined**: ``--budgets`` user budgets are
  written, then one user's guarded calls run for ``--seconds``; the
  median, 99th percentile and worst call show the cost of re-reading the
  budget definitions (every ``budget_cache_ttl`` on a shared ledger),
  beside the median of the same call with one budget defined;
- **set_budget**: the time of one ``guard.set_budget`` with 1,000 budgets
  defined and with ``--budgets`` defined (the mean of 200 each): equal
  times mean it costs the same however many exist.

Growth is measured with ``tracemalloc`` (memory: the whole process), the
pages in use after a WAL checkpoint (SQLite: the file itself shrinks only
with ``VACUUM``) and ``INFO memory``
``used_memory`` (Redis) and the size of the ledger's tables and indexes
after ``VACUUM FULL``, in a schema of its own (PostgreSQL). Without ``--redis-url`` a private
``redis-server`` is started on a free port (no persistence); without
``--postgres-url`` a private cluster (``initdb``, as in ``ledger.py``).
Budgets are written through the ledger's ``put_budget``, one by one, so the
script runs the same whatever ``set_budget`` costs.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budgetguard import BudgetGuard
from budgetguard.budgets import Budget, budget_name


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis(directory: str) -> Iterator[str]:
    """Run a redis-server of this script's own on a free port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


class Meter:
    """Read how many bytes a backend's storage holds now."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url

    def start(self) -> None:
        """Start counting (memory: trace the process's allocations)."""
        if self.backend == "memory":
            tracemalloc.start()

    def bytes(self) -> int:
        """Return the storage's size in bytes."""
        if self.backend == "memory":
            return tracemalloc.get_traced_memory()[0]
        if self.backend == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            # The pages in use: a deleted row frees its page for reuse, but
            # the file shrinks only with VACUUM.
            db = sqlite3.connect(path)
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                free = db.execute("PRAGMA freelist_count").fetchone()[0]
                size = db.execute("PRAGMA page_size").fetchone()[0]
            finally:
                db.close()
            return int((pages - free) * size)
        if self.backend == "postgresql":
            import psycopg

            server, _, query = self.url.partition("?schema=")
            with psycopg.connect(server, autocommit=True) as db:
                tables = [
                    f'"{query}"."{row[0]}"'
                    for row in db.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (query,)
                    )
                ]
                total = 0
                for table in tables:
                    # Live rows and their indexes: dead ones are space for reuse.
                    db.execute(f"VACUUM FULL {table}")
                    found = db.execute(
                        "SELECT pg_total_relation_size(%s::regclass)", (table,)
                    ).fetchone()
                    total += int(found[0]) if found else 0
            return total
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()

    def stop(self) -> None:
        """Stop counting."""
        if self.backend == "memory":
            tracemalloc.stop()


def guarded(guard: BudgetGuard, user: str) -> Callable[[], object]:
    """Return a guarded function for ``user`` that costs $0.001."""
    return guard.budgeted(user=user, estimate="0.002", cost=lambda _: "0.001", model="gpt-4o")(
        lambda: None
    )


def growth(backend: str, url: str, calls_n: int, users_n: int) -> dict[str, float]:
    """Return bytes per call, per distinct user, and per user left after a lifetime prune."""
    meter = Meter(backend, url)
    meter.start()
    try:
        guard = BudgetGuard(url, metrics=False, budget_cache_ttl=60)
        guard.set_budget("1000000", period="monthly")
        guard.set_budget("1000000", user="alice", period="monthly")
        call = guarded(guard, "alice")
        for _ in range(50):  # warm: connections, scripts, plans, pages
            call()
        before = meter.bytes()
        for _ in range(calls_n):
            call()
        per_call = (meter.bytes() - before) / calls_n
        before = meter.bytes()
        for index in range(users_n):
            guarded(guard, f"visitor-{index:07d}")()
        per_user = (meter.bytes() - before) / users_n - per_call
        # Prune as if a month had passed: the visitors are idle since.
        later = datetime.now(timezone.utc) + timedelta(days=40)
        guard.clock = lambda: later.timestamp()
        guard.prune(later - timedelta(days=2), lifetime=True)
        guard._planner.forget()  # the per-process plan cache of today's users
        after = (meter.bytes() - before) / users_n - per_call
        guard.close()
    finally:
        meter.stop()
    return {"per_call": per_call, "per_user": per_user, "after_prune": after}


def write_budgets(url: str, count: int) -> float:
    """Store ``count`` user budgets through the ledger; return the seconds it took."""
    url += _no_fsync(url)  # no fsync per budget: only the writing is faster
    guard = BudgetGuard(url, metrics=False)
    budget = Budget.create("1000000", name="user:x", period="monthly")
    definition = budget.to_dict()
    start = time.perf_counter()
    for index in range(count):
        guard.ledger.put_budget(budget_name(f"member-{index:07d}"), definition)
    took = time.perf_counter() - start
    guard.close()
    return took


def set_budget_cost(url: str, counts: tuple[int, ...], repeats: int = 200) -> dict[int, float]:
    """Return the mean µs of one ``set_budget`` once each of ``counts`` budgets is defined."""
    guard = BudgetGuard(url, metrics=False)
    definition = Budget.create("1000000", name="user:x", period="monthly").to_dict()
    found: dict[int, float] = {}
    defined = 0
    for count in counts:
        while defined < count:  # the filling is not timed
            guard.ledger.put_budget(budget_name(f"filler-{defined:07d}"), definition)
            defined += 1
        guard._budgets(refresh=True)
        start = time.perf_counter()
        for index in range(repeats):
            guard.set_budget("1000000", user=f"timed-{count}-{index}", period="monthly")
        found[count] = (time.perf_counter() - start) / repeats * 1e6
        defined += repeats
    guard.close()
    return found


def call_cost(url: str, seconds: float) -> dict[str, float]:
    """Return the latency of one user's guarded calls, in microseconds, over ``seconds``."""
    guard = BudgetGuard(url, metrics=False)
    call = guarded(guard, "member-0000001")
    call()  # the first one reads every budget
    timings: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    guard.close()
    timings.sort()
    return {
        "calls": len(timings),
        "median": statistics.median(timings) * 1e6,
        "p99": timings[int(len(timings) * 0.99)] * 1e6,
        "worst": timings[-1] * 1e6,
    }


def main() -> None:
    """Run every measurement on every backend and print two tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--budgets", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--redis-url", help="a Redis database to FLUSH and use")
    parser.add_argument(
        "--postgres-url", help="a PostgreSQL database to use (schemas growth_* are created)"
    )
    parser.add_argument("--backends", default="memory,sqlite,redis,postgresql")
    args = parser.parse_args()
    backends = args.backends.split(",")
    grown: dict[str, dict[str, float]] = {}
    costs: dict[str, dict[str, Any]] = {}
    baseline: dict[str, float] = {}  # median µs of the same call with one budget defined
    setting: dict[str, dict[int, float]] = {}
    counts = (1000, args.budgets)
    with (
        tempfile.TemporaryDirectory(prefix="budgetguard-growth-") as directory,
        _redis(args.redis_url, directory, "redis" in backends) as redis_url,
        _postgres(args.postgres_url, directory, "postgresql" in backends) as postgres_url,
    ):

        def fresh(backend: str, name: str) -> str:
            if backend == "memory":
                return "memory://"
            if backend == "sqlite":
                return f"sqlite:///{directory}/{name}.db"
            if backend == "postgresql":
                assert postgres_url is not None
                return f"{postgres_url}?schema=growth_{name}"  # a new schema each time
            import redis

            client = redis.Redis.from_url(redis_url)
            client.flushdb()
            client.close()
            return str(redis_url)

        for backend in backends:
            grown[backend] = growth(backend, fresh(backend, "growth"), args.calls, args.users)
            print(f"{backend}: growth measured", file=sys.stderr)
        for backend in backends:
            for count in (1, args.budgets):  # the same call with one budget, the baseline
                if backend == "memory":
                    # A memory ledger lives in one guard: write the budgets through it.
                    found = _memory_cost(count, args.seconds)
                else:
                    url = fresh(backend, f"budgets{count}")
                    took = write_budgets(url, count)
                    found = {**call_cost(url, args.seconds), "write": took}
                if count == 1:
                    baseline[backend] = found["median"]
                else:
                    costs[backend] = found
            print(f"{backend}: call cost measured", file=sys.stderr)
        for backend in backends:
            url = fresh(backend, "set_budget")
            # One fsync per write would hide what set_budget itself costs.
            setting[backend] = set_budget_cost(url + _no_fsync(url), counts)
            print(f"{backend}: set_budget measured", file=sys.stderr)
    print(f"growth: {args.calls:,} calls by one user, {args.users:,} distinct users\n")
    print(
        "| backend | bytes per call | bytes per distinct user | per user after a lifetime prune |"
    )
    print("|---|---:|---:|---:|")
    for backend, found in grown.items():
        print(
            f"| {backend} | {found['per_call']:,.0f} | {found['per_user']:,.0f} "
            f"| {found['after_prune']:,.0f} |"
        )
    print(f"\none guarded call with {args.budgets:,} user budgets defined ({args.seconds:g} s)\n")
    print(
        "| backend | calls | median µs | p99 µs | worst µs | median µs, 1 budget "
        "| writing the budgets |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend, found in costs.items():
        print(
            f"| {backend} | {found['calls']:,} | {found['median']:,.0f} | {found['p99']:,.0f} "
            f"| {found['worst']:,.0f} | {baseline[backend]:,.0f} | {found['write']:.1f} s |"
        )
    print("\none set_budget (µs, mean of 200) with this many budgets defined\n")
    print("| backend | " + " | ".join(f"{count:,} budgets" for count in counts) + " | ratio |")
    print("|---|" + "---:|" * (len(counts) + 1))
    for backend, times in setting.items():
        cells = " | ".join(f"{times[count]:,.0f}" for count in counts)
        print(f"| {backend} | {cells} | {times[counts[-1]] / times[counts[0]]:.2f} |")


def _no_fsync(url: str) -> str:
    """Return the query to add to ``url`` so that its writes skip the fsync."""
    if url.startswith("sqlite:"):
        return "?synchronous=normal"
    if url.startswith("postgresql:"):
        return "&options=-c%20synchronous_commit%3Doff"
    return ""


@contextmanager
def _redis(url: str | None, directory: str, wanted: bool) -> Iterator[str | None]:
    if url is not None or not wanted:
        yield url
        return
    with private_redis(directory) as started:
        yield started


@contextmanager
def _postgres(url: str | None, directory: str, wanted: bool) -> Iterator[str | None]:
    if url is not None or not wanted:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ledger import start_postgres  # benchmarks/ledger.py

    stop, started = start_postgres(directory)
    try:
        yield started
    finally:
        stop()


def _memory_cost(budgets: int, seconds: float) -> dict[str, Any]:
    guard = BudgetGuard("memory://", metrics=False)
    definition = Budget.create("1000000", name="user:x", period="monthly").to_dict()
    start = time.perf_counter()
    for index in range(budgets):
        guard.ledger.put_budget(budget_name(f"member-{index:07d}"), definition)
    took = time.perf_counter() - start
    guard._budgets(refresh=True)
    call = guarded(guard, "member-0000001")
    call()
    timings: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        begun = time.perf_counter()
        call()
        timings.append(time.perf_counter() - begun)
    timings.sort()
    return {
        "calls": len(timings),
        "median": statistics.median(timings) * 1e6,
        "p99": timings[int(len(timings) * 0.99)] * 1e6,
        "worst": timings[-1] * 1e6,
        "write": took,
    }


if __name__ == "__main__":
    main()
