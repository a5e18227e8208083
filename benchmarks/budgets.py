"""Measure what many budget definitions cost: guarded calls, set_budget, Redis bytes per call.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/budgets.py [--users 100000] [--seconds 5]

Three figures, on SQLite (a file in a temporary directory) and on a private
``redis-server`` started on a free port (no persistence):

- **calls with N user budgets defined**: one guarded call (``@budgeted`` with
  an estimate and a cost) timed alone, for ``--seconds``: the median, the 99th
  percentile, the slowest call and how many took longer than 50 ms. A guard
  that re-reads every definition on the caller's thread shows up as one slow
  call per ``budget_cache_ttl``.
- **set_budget**: the time of ``--set`` calls of ``guard.set_budget`` for new
  users on an empty ledger.
- **Redis bytes per call** (``INFO memory``'s ``used_memory``): after
  ``--calls`` guarded calls, and again after the guard's clock has moved past
  the ledger's idempotency memory and the same number of calls ran again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budgetguard import BudgetGuard
from budgetguard.budgets import Budget


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server; return it and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def define_users(guard: BudgetGuard, users: int) -> None:
    """Store ``users`` user budgets straight in the ledger (the guard is not involved)."""
    created = datetime.now(timezone.utc)
    for i in range(users):
        budget = Budget.create("10", name=f"user:u{i}", period="monthly", created_at=created)
        guard.ledger.put_budget(budget.name, budget.to_dict())


def time_calls(guard: BudgetGuard, seconds: float) -> dict[str, float]:
    """Time one guarded call again and again for ``seconds``."""

    @guard.budgeted(user="u1", estimate="0.000001", cost=lambda _: "0.000001")
    def call() -> None:
        return None

    call()  # the first call loads the definitions
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "calls": len(times),
        "median_us": statistics.median(times) * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "max_ms": times[-1] * 1e3,
        "over_50ms": sum(1 for t in times if t > 0.05),
    }


def server_cpu(url: str) -> float:
    """Return the CPU seconds a Redis server has used (0 for other ledgers)."""
    if not url.startswith("redis"):
        return 0.0
    import redis

    client = redis.Redis.from_url(url)
    info = client.info("cpu")
    client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def time_set_budget(url: str, count: int) -> tuple[float, float, float, float, float]:
    """Return the wall, this process's CPU and the server's CPU seconds of ``count`` set_budget,
    and this process's CPU for the first and the last tenth of them."""
    guard = BudgetGuard(url, metrics=False)
    started, cpu, server = time.perf_counter(), time.process_time(), server_cpu(url)
    tenth = max(1, count // 10)
    marks: list[float] = []
    for i in range(count):
        if i in (0, tenth, count - tenth):
            marks.append(time.process_time())
        guard.set_budget("5", user=f"s{i}")
    marks.append(time.process_time())
    first, last = marks[1] - marks[0], marks[3] - marks[2]
    elapsed = time.perf_counter() - started
    cpu, server = time.process_time() - cpu, server_cpu(url) - server
    guard.close()
    return elapsed, cpu, server, first, last


def used_memory(client: Any) -> int:
    """Return Redis's ``used_memory`` in bytes."""
    return int(client.info("memory")["used_memory"])


def redis_bytes(url: str, calls: int) -> dict[str, float]:
    """Return Redis's growth per guarded call, before and after the idempotency memory ends."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    now = [time.time()]
    guard = BudgetGuard(url, metrics=False, clock=lambda: now[0])
    guard.set_budget("1000000", user="u1")

    @guard.budgeted(user="u1", estimate="0.000001", cost=lambda _: "0.000001")
    def call() -> None:
        return None

    call()
    base = used_memory(client)
    for _ in range(calls):
        call()
    first = used_memory(client)
    now[0] += 2 * 3600  # past the idempotency memory (an hour by default; 7 days before)
    for _ in range(calls):
        call()
    second = used_memory(client)
    guard.close()
    client.close()
    return {"per_call": (first - base) / calls, "per_call_after_ttl": (second - base) / (2 * calls)}


def main() -> None:
    """Print every figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--set", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--only", choices=["calls", "set", "bytes"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["calls", "set", "bytes"])
    with tempfile.TemporaryDirectory(prefix="bg-bench-") as directory:
        process, redis_url = start_redis(directory)
        try:
            urls = {
                "sqlite": f"sqlite:///{os.path.join(directory, 'calls.db')}?synchronous=normal",
                "redis": redis_url,
            }
            if "calls" in only:
                for name, url in urls.items():
                    guard = BudgetGuard(url, metrics=False)
                    define_users(guard, args.users)
                    figures = time_calls(guard, args.seconds)
                    guard.close()
                    print(
                        f"{name:6} {args.users} user budgets: {figures['calls']:.0f} calls, "
                        f"median {figures['median_us']:.0f} us, p99 {figures['p99_us']:.0f} us, "
                        f"max {figures['max_ms']:.1f} ms, {figures['over_50ms']:.0f} over 50 ms"
                    )
            if "set" in only:
                import redis

                redis.Redis.from_url(redis_url).flushdb()
                for name, url in {
                    "memory": "memory://",
                    "sqlite": f"sqlite:///{os.path.join(directory, 'set.db')}?synchronous=normal",
                    "redis": redis_url,
                }.items():
                    wall, cpu, server, first, last = time_set_budget(url, args.set)
                    print(
                        f"{name:6} {args.set} set_budget calls: {wall * 1000:.0f} ms wall, "
                        f"{cpu * 1000:.0f} ms CPU here, {server * 1000:.0f} ms CPU in Redis; "
                        f"CPU of the first tenth {first * 1000:.0f} ms, last tenth "
                        f"{last * 1000:.0f} ms"
                    )
            if "bytes" in only:
                figures = redis_bytes(redis_url, args.calls)
                print(
                    f"redis  bytes per call: {figures['per_call']:.0f} "
                    f"({args.calls} calls); after the ttl and {args.calls} more: "
                    f"{figures['per_call_after_ttl']:.0f} per call of both runs"
                )
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
