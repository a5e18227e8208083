"""Budget leases: guarded calls on Redis with and without, and 1,000 simulated hosts.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/leases.py [--seconds 3] [--processes 8]
        [--redis-url redis://...] [--hosts 1000] [--calls 1000] [--before DIR] [--callgrind]

``--before DIR`` runs every case on an older checkout too (its ``budgetguard``
package), case by case next to this tree's, in the same run. ``--callgrind``
adds the CPU instructions of one guarded call (memory ledger, and leased
Redis with every call admitted in a slice), counted by callgrind as
``(instructions of N calls - instructions of 0 calls) / N``: unlike times,
they do not depend on the machine's load.

Part 1 starts a private ``redis-server`` (unless ``--redis-url``) and runs
``--processes`` processes, each making guarded calls (``@budgeted`` with an
estimate, a global budget that never runs out) for ``--seconds``, through
``BudgetGuard(ledger="redis://...")`` and through
``BudgetGuard(ledger=LeasedLedger(RedisLedger(...)))``, and for reference
with a ``memory://`` ledger in each process (nothing shared). It prints calls per
second (all processes together), the CPU time of a call in the calling
process, and Redis round trips per call (every operation the Redis ledger is
asked for, by the guard or by the leases, counted in the process: each is one
script or one read).

Part 2 simulates ``--hosts`` hosts sharing one budget in this process: each
host a ``LeasedLedger`` over one shared inner ledger (``memory://``: its
operations stand for Redis load, and are counted). Hosts call in a seeded
random order, each call reserving an estimate on the global budget and a
tally, and settling a cost at or below it. Two budgets: one with room for
every call, one that runs out (demand 125 % of the limit). Printed: calls
admitted against the limit, spend charged against the costs of the admitted
calls (exact), and inner operations per call with and without leases. The
simulated hosts make all their calls within one flush period (``flush`` is
an hour here); a real host adds at most about 3 inner operations per leased
key per ``flush`` seconds (a return, a roll-over) to these figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# The code tree whose budgetguard this process imports: this one, or --before's.
sys.path.insert(0, os.environ.get("LEASES_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))

from budgetguard.ledger import Hold, LeasedLedger, Ledger, Reservation, ledger_from_url
from budgetguard.ledger.memory import MemoryLedger

HERE = Path(__file__).resolve().parents[1]

# -- part 1: Redis, several processes ---------------------------------------------------


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server (no persistence) and wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


def child(url: str, leases: str, seconds: str, go: str) -> None:
    """Make guarded calls until the time is up; print calls, CPU seconds, inner operations."""
    from budgetguard.guard import BudgetGuard

    logging.getLogger("budgetguard").setLevel(logging.ERROR)  # persistence is off: known
    redis_ledger = ledger_from_url(url if leases != "memory" else "memory://")
    trips = count_round_trips(redis_ledger)
    ledger = LeasedLedger(redis_ledger) if leases == "1" else redis_ledger
    guard = BudgetGuard(ledger=ledger)

    @guard.budgeted(estimate="0.01", user="alice")
    def call() -> None:
        pass

    call()  # connect, load the scripts, read the budgets
    while not os.path.exists(go):
        time.sleep(0.001)
    trips_before = trips[0]
    calls = 0
    cpu = time.process_time()
    stop = time.perf_counter() + float(seconds)
    while time.perf_counter() < stop:
        for _ in range(100):
            call()
        calls += 100
    cpu = time.process_time() - cpu
    operations = trips[0] - trips_before
    guard.ledger.close()
    print(calls, cpu, operations, flush=True)


#: What a ledger sends to its server, one round trip each on Redis (one script or one read).
OPERATIONS = (
    "reserve",
    "settle",
    "release",
    "add",
    "balances",
    "scan",
    "open_reservations",
    "get_budget",
    "list_budgets",
    "budget_changes",
    "put_budget",
    "ping",
)


def count_round_trips(ledger: Ledger) -> list[int]:
    """Count every operation ``ledger`` is asked for from now on; return the counter."""
    counter = [0]
    for name in OPERATIONS:
        method = getattr(ledger, name)

        def counted(*args: object, _method: Any = method, **kwargs: object) -> Any:
            counter[0] += 1
            return _method(*args, **kwargs)

        setattr(ledger, name, counted)
    return counter


def tree_env(tree: Path) -> dict[str, str]:
    """Return the environment of a child process that imports ``tree``'s budgetguard."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["LEASES_BENCH_TREE"] = str(tree)
    return env


def redis_run(
    url: str, processes: int, leases: str, seconds: float, tree: Path = HERE
) -> dict[str, float]:
    """Run the guarded-call processes once; return the figures."""
    from budgetguard.guard import BudgetGuard

    setup = BudgetGuard(ledger=url)
    setup.set_budget("1000000")  # never runs out: the path that succeeds
    setup.ledger.close()
    with tempfile.TemporaryDirectory() as directory:
        go = os.path.join(directory, "go")
        env = tree_env(tree)
        argv = [sys.executable, __file__, "--child", url, leases, str(seconds), go]
        children = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(processes)
        ]
        time.sleep(1.5 + 0.2 * processes)  # imports and connections, before the start
        Path(go).touch()
        results = []
        for process in children:
            out, _ = process.communicate(timeout=120 + seconds)
            if process.returncode != 0:
                raise SystemExit(f"a benchmark process failed ({process.returncode})")
            calls, cpu, operations = out.split()
            results.append((int(calls), float(cpu), int(operations)))
    calls = sum(r[0] for r in results)
    return {
        "calls/s": calls / seconds,
        "cpu_us": 1e6 * sum(r[1] for r in results) / calls,
        "trips/call": sum(r[2] for r in results) / calls,
    }


# -- part 2: the simulation --------------------------------------------------------------

ESTIMATE = 1_000


def simulate(
    hosts: int, calls: int, limit_calls: int, leases: bool, seed: int = 7
) -> dict[str, float]:
    """Run ``hosts`` × ``calls`` calls against one budget; return the figures."""
    inner = MemoryLedger()
    operations = [0]
    limit = limit_calls * ESTIMATE
    ledgers: list[Ledger]
    if leases:
        fraction = 1 / (2 * hosts)  # all slices together hold at most half the budget
        ledgers = [
            LeasedLedger(inner, slice_fraction=fraction, ttl=4 * 3600, flush=3600, background=False)
            for _ in range(hosts)
        ]
    else:
        ledgers = [inner] * hosts
    rng = random.Random(seed)
    order = [host for host in range(hosts) for _ in range(calls)]
    rng.shuffle(order)
    costs = [rng.randint(ESTIMATE // 2, ESTIMATE) for _ in order]
    admitted = 0
    charged = 0
    start = time.perf_counter()
    for host, cost in zip(order, costs, strict=True):
        ledger = ledgers[host]
        r = Reservation(uuid.uuid4().hex, (Hold("global", limit, ESTIMATE),), 10**10)
        if not leases:
            operations[0] += 1
        if ledger.reserve(r) is None:
            if not leases:
                operations[0] += 1
            ledger.settle(r, cost, ("model:gpt-4o",))
            admitted += 1
            charged += cost
    for ledger in ledgers:
        if isinstance(ledger, LeasedLedger):
            ledger.flush_now()
    elapsed = time.perf_counter() - start
    if leases:
        operations[0] = sum(
            ledger.inner_operations for ledger in ledgers if isinstance(ledger, LeasedLedger)
        )
    balance = inner.balances(["global", "model:gpt-4o"])
    total = len(order)
    assert balance["global"].spent == charged, "spend is not exact"
    assert balance["model:gpt-4o"].spent == charged, "tally is not exact"
    assert balance["global"].reserved == 0 and inner.open_reservations() == []
    assert charged <= limit, "the bound was broken"
    return {
        "calls": total,
        "admitted": admitted,
        "spent": charged,
        "limit": limit,
        "ops": operations[0],
        "ops/call": operations[0] / total,
        "ops/admitted": operations[0] / max(admitted, 1),
        "us/call": 1e6 * elapsed / total,
    }


def simulate_in(
    tree: Path, hosts: int, calls: int, limit_calls: int, leases: bool
) -> dict[str, float]:
    """Run ``simulate`` in a child process importing ``tree``'s budgetguard."""
    argv = [sys.executable, __file__, "--simulate", str(hosts), str(calls), str(limit_calls)]
    argv.append("1" if leases else "0")
    done = subprocess.run(argv, capture_output=True, text=True, env=tree_env(tree), check=False)
    if done.returncode != 0:
        raise SystemExit(f"a simulation failed:\n{done.stderr}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# -- callgrind: instructions of one guarded call ------------------------------------------


def count_calls(mode: str, url: str, n: str) -> None:
    """Make N guarded calls (after a warm-up) on the memory ledger or leased ``url``."""
    from budgetguard.guard import BudgetGuard

    logging.getLogger("budgetguard").setLevel(logging.ERROR)
    if mode == "memory":
        guard = BudgetGuard(ledger="memory://")
        guard.set_budget("1000000")
    else:
        # Every call admitted in a slice: no flush within the run (that is the
        # per-call share; a flush adds about 3 round trips per flush seconds).
        inner = ledger_from_url(url)
        ledger = LeasedLedger(inner, ttl=4 * 3600, flush=3600, background=False)
        guard = BudgetGuard(ledger=ledger)

    @guard.budgeted(estimate="0.01", user="alice")
    def call() -> None:
        pass

    for _ in range(200):
        call()
    for _ in range(int(n)):
        call()


def instructions(tree: Path, mode: str, url: str, calls: int) -> float:
    """Return callgrind's instructions per guarded call, N calls minus 0 calls."""
    counts = []
    for n in (0, calls):
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        argv += [sys.executable, __file__, "--count", mode, url, str(n)]
        env = tree_env(tree)
        env["PYTHONHASHSEED"] = "0"
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"callgrind failed:\n{done.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--redis-url")
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000, help="calls per simulated host")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--before", type=Path, help="an older checkout to run beside this one")
    parser.add_argument("--callgrind", action="store_true", help="count instructions too")
    args = parser.parse_args()
    logging.getLogger("budgetguard").setLevel(logging.ERROR)  # persistence is off: known
    trees = [("", HERE)]
    if args.before is not None:
        trees.append((", before", args.before.resolve()))

    if not args.skip_redis:
        with tempfile.TemporaryDirectory() as directory:
            server = None
            url = args.redis_url
            if url is None:
                server, url = start_redis(directory)
            try:
                print(f"## Redis, {args.processes} processes, {args.seconds:g} s each run")
                print()
                print("| ledger | guarded calls/s | CPU µs per call | Redis round trips per call |")
                print("|---|---|---|---|")
                names = {
                    "0": "`redis://`",
                    "1": "`LeasedLedger(redis://)`",
                    "memory": "`memory://` in each process (no sharing: the floor)",
                }
                import redis

                for leases, name in names.items():
                    for label, tree in trees:
                        redis.Redis.from_url(url).flushdb()
                        got = redis_run(url, args.processes, leases, args.seconds, tree)
                        trips = f"{got['trips/call']:.4f}" if leases != "memory" else "none"
                        print(
                            f"| {name}{label} | {got['calls/s']:,.0f} | {got['cpu_us']:.1f} "
                            f"| {trips} |",
                            flush=True,
                        )
                if args.callgrind:
                    print()
                    print("## Instructions per guarded call (callgrind, 2,000 calls)")
                    print()
                    print("| ledger | instructions per call |")
                    print("|---|---|")
                    for mode, name in (
                        ("memory", "`memory://`"),
                        ("leased", "`LeasedLedger(redis://)`, admitted in a slice"),
                    ):
                        for label, tree in trees:
                            redis.Redis.from_url(url).flushdb()
                            if mode == "leased":
                                from budgetguard.guard import BudgetGuard

                                setup = BudgetGuard(ledger=url)
                                setup.set_budget("1000000")
                                setup.ledger.close()
                            count = instructions(tree, mode, url, 2000)
                            print(f"| {name}{label} | {count:,.0f} |", flush=True)
            finally:
                if server is not None:
                    server.terminate()
                    server.wait()
        print()

    calls = args.hosts * args.calls
    print(f"## {args.hosts:,} simulated hosts × {args.calls:,} calls, one budget")
    print()
    print(
        "| budget | ledger | admitted | limit (calls) | spent = Σ admitted costs "
        "| inner ops | per call | per admitted call | µs per call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for budget, limit_calls in (("room for every call", calls * 2), ("runs out", calls * 3 // 5)):
        figures = {}
        for leases, label, tree in [(False, "", HERE)] + [(True, lb, t) for lb, t in trees]:
            got = simulate_in(tree, args.hosts, args.calls, limit_calls, leases)
            figures[label if leases else None] = got
            name = f"LeasedLedger{label}" if leases else "no leases"
            print(
                f"| {budget} | {name} | {got['admitted']:,} | {limit_calls:,} | "
                f"{got['spent']:,} ≤ {got['limit']:,} | {got['ops']:,} | "
                f"{got['ops/call']:.4f} | {got['ops/admitted']:.4f} | {got['us/call']:.1f} |",
                flush=True,
            )
        for label, _ in trees:
            ratio = figures[None]["ops/call"] / figures[label]["ops/call"]
            admitted = figures[None]["ops/admitted"] / figures[label]["ops/admitted"]
            print(
                f"| {budget} | **fall with leases{label}** | | | | "
                f"| **{ratio:.0f}×** | **{admitted:.0f}×** | |"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--simulate":
        hosts, calls, limit_calls, leases = (int(value) for value in sys.argv[2:6])
        print(json.dumps(simulate(hosts, calls, limit_calls, bool(leases))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--count":
        count_calls(*sys.argv[2:])
    else:
        main()
