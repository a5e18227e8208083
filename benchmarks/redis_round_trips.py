"""Measure the Redis ledger beside ``limits``' fixed window, on one private server, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/redis_round_trips.py [--seconds 3]
        [--before /path/to/an/older/checkout] [--delays 0,0.005]

For every code tree (this one, and ``--before`` if given) and every
``settle_delay`` (``--delays``, for both trees) it prints reserve + settle
pairs per second and guarded calls per second (a ``BudgetGuard`` on the
Redis ledger, ``@budgeted`` with a user, an estimate and a ``cost=``), on 1
and 8 threads of one process and on 4 processes, then round trips and Redis
commands per call; beside them ``limits``' ``FixedWindowRateLimiter.hit`` on
the same server (``pip install 'limits[redis]'``: a benchmark-only
dependency; ``--limits-python`` runs it with another interpreter, such as
``/tmp/peers-venv-limits/bin/python`` from ``benchmarks/peers/setup.sh``,
since ``limits`` needs redis-py below 8; ``--without-limits`` leaves it out).

Every measurement runs in its own child process (``PYTHONPATH`` set to the
code tree measured), so an older checkout is measured with its own code.
Round trips are counted client-side (every ``send_packed_command`` of
redis-py is one request the client then waits on); commands are the delta of
``INFO commandstats``, scripts' inner commands included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
LIMIT = 2**52  # never refuses: the benchmark measures the path that succeeds


# -- the workloads, run inside child processes ---------------------------------------------


def _count_round_trips() -> list[int]:
    """Count every request redis-py sends (one ``send_packed_command`` = one round trip)."""
    import redis.connection

    counter = [0]
    real = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return real(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    return counter


def _pairs(url: str) -> tuple[Any, Any]:
    from budgetguard.ledger import Hold, Reservation, ledger_from_url

    ledger = ledger_from_url(url, prefix="bench")

    def one() -> None:
        r = Reservation(
            uuid.uuid4().hex,
            (Hold("user:alice:2026-01", LIMIT, 1000), Hold("global:2026-01", LIMIT, 1000)),
            time.time() + 300,
        )
        if ledger.reserve(r) is not None:
            raise RuntimeError("benchmark reservation refused")
        ledger.settle(r, 900, ("model:gpt-4o:2026-01",))

    return one, ledger.close


def _guarded(url: str) -> tuple[Any, Any]:
    from budgetguard import BudgetGuard

    guard = BudgetGuard(ledger=url, metrics=False)
    guard.set_budget("1000000", user="alice", period="monthly")
    guard.set_budget("1000000", period="monthly")

    @guard.budgeted(user="alice", estimate="0.001", cost=lambda result: "0.0009")  # type: ignore[untyped-decorator]
    def call() -> int:
        return 1

    return call, guard.close


def _limits(url: str) -> tuple[Any, Any]:
    from limits import RateLimitItemPerSecond
    from limits.storage import storage_from_string
    from limits.strategies import FixedWindowRateLimiter

    storage = storage_from_string(url)
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(10**9)

    def one() -> None:
        if not limiter.hit(item, "alice"):
            raise RuntimeError("benchmark limit refused")

    return one, lambda: None


WORKLOADS = {"pairs": _pairs, "guarded": _guarded, "limits": _limits}


def worker(kind: str, url: str, threads: int, seconds: float, go: str) -> None:
    """Run ``kind`` on ``threads`` threads for ``seconds`` after ``go`` exists; print JSON."""
    import logging

    logging.getLogger("budgetguard").setLevel(logging.ERROR)  # the server has no persistence
    trips = _count_round_trips()
    one, close = WORKLOADS[kind](url)
    for _ in range(50):  # warm up: connections, scripts loaded
        one()
    print("ready", flush=True)
    while go and not os.path.exists(go):
        time.sleep(0.0005)
    counts = [0] * threads
    trips_before = trips[0]
    cpu = time.process_time()
    start = time.perf_counter()
    stop = start + seconds

    def work(index: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            one()
            n += 1
        counts[index] = n

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    sent = trips[0] - trips_before
    close()
    result = {"calls": sum(counts), "seconds": elapsed, "round_trips": sent, "cpu": cpu}
    print(json.dumps(result), flush=True)


# -- the parent: a private server, children, the table ---------------------------------------


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a private redis-server without persistence and wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
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


def server_counts(port: int) -> tuple[int, float]:
    """Return the commands Redis ran (scripts' inner ones included, INFO excepted) and its CPU s."""
    import redis

    admin = redis.Redis(port=port)
    stats = admin.info("commandstats")
    cpu = admin.info("cpu")
    admin.close()
    commands = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def measure(
    kind: str,
    url: str,
    code: Path,
    threads: int,
    processes: int,
    seconds: float,
    port: int,
    python: str = sys.executable,
) -> dict[str, float]:
    """Run ``processes`` children of ``threads`` threads each; return calls/s and counts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code)
    with tempfile.TemporaryDirectory() as scratch:
        go = os.path.join(scratch, "go")
        children = [
            subprocess.Popen(
                [python, str(HERE), "--worker", kind, url, str(threads), str(seconds), go],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=scratch,
            )
            for _ in range(processes)
        ]
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit(f"{kind} worker failed to start")
        before, server_cpu = server_counts(port)
        Path(go).touch()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=seconds + 120)
            if child.returncode != 0:
                raise SystemExit(f"{kind} worker failed")
            results.append(json.loads(out.strip().splitlines()[-1]))
        after, server_cpu_after = server_counts(port)
    calls = sum(r["calls"] for r in results)
    rate = sum(r["calls"] / r["seconds"] for r in results)
    # The close() of each child (which writes what it still queues) is inside the delta.
    return {
        "rate": rate,
        "round_trips": sum(r["round_trips"] for r in results) / calls,
        "commands": (after - before) / calls,
        "client_us": 1e6 * sum(r["cpu"] for r in results) / calls,
        "server_us": 1e6 * (server_cpu_after - server_cpu) / calls,
    }


def main() -> None:
    """Measure every code tree and delay beside limits, and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--before", type=Path, help="an older checkout to measure too")
    parser.add_argument("--delays", default="0,0.005", help="settle_delay values (this tree)")
    parser.add_argument("--rounds", type=int, default=5, help="best of this many rounds")
    parser.add_argument(
        "--limits-python",
        default=sys.executable,
        help="the interpreter that runs limits (it needs redis-py < 8)",
    )
    parser.add_argument(
        "--without-limits",
        action="store_true",
        help="leave out limits (no interpreter with it at hand): rates only, no ratios",
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        kind, url, threads, seconds, go = options.worker
        worker(kind, url, int(threads), float(seconds), go)
        return

    shapes = [("1 thread", 1, 1), ("8 threads", 8, 1), ("4 processes", 1, 4)]
    runs: list[tuple[str, str, Path, str]] = []  # (label, kind, code, url query)
    delays = options.delays.split(",")
    if options.before is not None:
        for delay in delays:  # the older tree with the same settle_delay values
            for kind in ("pairs", "guarded"):
                label = f"{kind}, before, delay={delay}"
                runs.append((label, kind, options.before.resolve(), f"?settle_delay={delay}"))
    for delay in delays:
        for kind in ("pairs", "guarded"):
            runs.append((f"{kind}, settle_delay={delay}", kind, ROOT, f"?settle_delay={delay}"))
    if not options.without_limits:
        runs.append(("limits fixed window", "limits", ROOT, ""))

    with tempfile.TemporaryDirectory(prefix="budgetguard-bench-") as directory:
        server, port = start_redis(directory)
        base = f"redis://127.0.0.1:{port}/0"
        # Rounds interleave every workload, and each cell keeps its best figures:
        # on a shared machine other load only ever slows a run down.
        best: dict[tuple[int, int], dict[str, float]] = {}
        try:
            for _ in range(options.rounds):
                for i, (_, kind, code, query) in enumerate(runs):
                    for j, (_, threads, processes) in enumerate(shapes):
                        url = base + query
                        python = options.limits_python if kind == "limits" else sys.executable
                        got = measure(
                            kind, url, code, threads, processes, options.seconds, port, python
                        )
                        kept = best.setdefault((i, j), got)
                        # The best of each figure: the highest rate, the least CPU.
                        kept["rate"] = max(kept["rate"], got["rate"])
                        kept["client_us"] = min(kept["client_us"], got["client_us"])
                        kept["server_us"] = min(kept["server_us"], got["server_us"])
        finally:
            server.terminate()
            server.wait()

    table = [(run[0], [best[i, j] for j in range(len(shapes))]) for i, run in enumerate(runs)]
    limits_row = None if options.without_limits else table[-1][1]
    out = sys.stdout
    out.write(
        f"Calls per second on one private redis-server ({options.seconds:g}s each, best of "
        f"{options.rounds} interleaved rounds, {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]})"
        + (
            "; without limits\n\n"
            if limits_row is None
            else "; in brackets: limits' rate / this rate\n\n"
        )
    )
    header = " | ".join(f"{name:>20}" for name, _, _ in shapes)
    out.write(f"| {'workload':<30} | {header} | trips/call | cmds/call | client µs | server µs |\n")
    out.write(
        f"|{'-' * 32}|"
        + "|".join("-" * 22 for _ in shapes)
        + "|------------|-----------|-----------|-----------|\n"
    )
    for label, row in table:
        if limits_row is None:
            cells = " | ".join(f"{r['rate']:>20,.0f}" for r in row)
        else:
            cells = " | ".join(
                f"{r['rate']:>11,.0f} ({limits['rate'] / r['rate']:>4.2f}x)"
                for r, limits in zip(row, limits_row, strict=True)
            )
        # Per-call counts from the 1-thread run (the 8-thread one carries more per trip).
        out.write(
            f"| {label:<30} | {cells} | {row[0]['round_trips']:>10.2f} | "
            f"{row[0]['commands']:>9.1f} | {row[0]['client_us']:>9.1f} | "
            f"{row[0]['server_us']:>9.1f} |\n"
        )
    out.write(
        "\ntrips/call: requests sent per call (a pipeline is one); cmds/call: commands Redis "
        "ran per call, scripts' inner commands included; client µs / server µs: CPU time per "
        "call of the calling process and of redis-server (less sensitive to other load than "
        "rates). All four from the 1-thread run.\n"
    )


if __name__ == "__main__":
    main()
