"""Measure SQLite group commit: pairs/s and guarded calls/s, before and after, in one run.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/sqlite_group_commit.py \\
        [--before e1a0506] [--seconds 3]

For each of ``synchronous=full`` and ``synchronous=normal``, on 1 and 8
threads: reserve + settle pairs per second straight on the ledger (a user and
a global hold, a tally at settle, as the guard does), and guarded calls per
second (``BudgetGuard(ledger)`` with a monthly and a per-user budget and a
``@budgeted(user=..., estimate=..., cost=...)`` function that does nothing).
``--before REV`` also loads ``budgetguard/ledger/sqlite.py`` as it was at git
revision ``REV`` (the ledger without group commit) and measures it in the
same run, interleaved with the current one (in alternating order), so the
ratios hold on a noisy machine. Each figure is the median of ``--repeats`` runs.
A second table gives the CPU time (user + system, every thread of the process)
per pair or call, which the load of other jobs moves less than the rates.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import budgetguard as bg  # noqa: E402
from budgetguard.ledger import Hold, Ledger, Reservation  # noqa: E402
from budgetguard.ledger.sqlite import SQLiteLedger  # noqa: E402

LIMIT = 2**52  # never refuses: the benchmark measures the path that succeeds


def load_before(revision: str) -> type[Ledger]:
    """Return SQLiteLedger as it was at ``revision``, imported beside the current one."""
    source = subprocess.run(
        ["git", "show", f"{revision}:budgetguard/ledger/sqlite.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = "budgetguard.ledger._sqlite_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "budgetguard.ledger"
    sys.modules[name] = module
    exec(compile(source, f"{revision}:budgetguard/ledger/sqlite.py", "exec"), module.__dict__)
    ledger_class: type[Ledger] = module.SQLiteLedger
    return ledger_class


def pair(ledger: Ledger) -> None:
    """Reserve on a user and a global budget, then settle with a tally, as the guard does."""
    r = Reservation(
        uuid.uuid4().hex,
        (Hold("user:alice:2026-01", LIMIT, 1000), Hold("global:2026-01", LIMIT, 1000)),
        time.time() + 300,
    )
    if ledger.reserve(r) is not None:
        raise RuntimeError("benchmark reservation refused")
    ledger.settle(r, 900, ("model:gpt-4o:2026-01",))


def pairs(ledger: Ledger) -> Callable[[], None]:
    """Return one reserve + settle pair on ``ledger``, as a function of nothing."""
    return lambda: pair(ledger)


def guarded(ledger: Ledger, guards: list[bg.BudgetGuard]) -> Callable[[], None]:
    """Return a guarded function on ``ledger``: a monthly and a per-user budget, exact cost."""
    guard = bg.BudgetGuard(ledger, metrics=False)
    guards.append(guard)
    guard.set_budget("1000000", period="monthly")
    guard.set_budget("1000000", user="alice", period="daily")

    def call() -> None:
        return None

    wrapped: Callable[[], None] = guard.budgeted(
        user="alice", estimate="0.001", cost=lambda result: "0.0009"
    )(call)
    return wrapped


def rate(work: Callable[[], None], threads: int, seconds: float) -> tuple[float, float]:
    """Return calls of ``work`` per second with ``threads`` threads, and CPU µs per call."""
    for _ in range(20):  # warm up: connections open, pages cached
        work()
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(index: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            work()
            n += 1
        counts[index] = n

    start = time.perf_counter()
    cpu = time.process_time()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu = time.process_time() - cpu
    calls = sum(counts)
    return calls / (time.perf_counter() - start), cpu * 1e6 / max(calls, 1)


def fsync_ms(directory: str, count: int = 100) -> float:
    """Return the median milliseconds of one small write + fsync in ``directory``."""
    times = []
    fd = os.open(os.path.join(directory, "fsync-probe"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return statistics.median(times) * 1000


def main() -> None:
    """Measure every combination and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision of the ledger to compare with")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    options = parser.parse_args()
    counts = [int(n) for n in options.threads.split(",")]
    versions: list[tuple[str, type[Ledger]]] = [("now", SQLiteLedger)]
    if options.before:
        versions.insert(0, (f"before ({options.before})", load_before(options.before)))

    figures: dict[tuple[str, str, str, int], list[float]] = {}
    cpus: dict[tuple[str, str, str, int], list[float]] = {}
    fsyncs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="budgetguard-bench-") as directory:
        for repeat in range(options.repeats):
            fsyncs.append(fsync_ms(directory))
            for mode in ("full", "normal"):
                for what in ("pairs", "guarded calls"):
                    for threads in counts:
                        # The order alternates between repeats: a file or a
                        # disk cache warmed by the first must not favour either.
                        order = versions if repeat % 2 == 0 else versions[::-1]
                        for label, ledger_class in order:
                            path = os.path.join(directory, f"{label[:3]}-{mode}-{repeat}.db")
                            ledger = ledger_class(f"sqlite:///{path}?synchronous={mode.upper()}")
                            guards: list[bg.BudgetGuard] = []
                            work = pairs(ledger) if what == "pairs" else guarded(ledger, guards)
                            figure, cpu = rate(work, threads, options.seconds)
                            for guard in guards:
                                guard.close()
                            ledger.close()
                            figures.setdefault((mode, what, label, threads), []).append(figure)
                            cpus.setdefault((mode, what, label, threads), []).append(cpu)

    out = sys.stdout
    out.write(
        f"SQLite ledger, per second, median of {options.repeats} runs of {options.seconds:g}s "
        f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite "
        f"{__import__('sqlite3').sqlite_version})\n\n"
    )

    def median(mode: str, what: str, label: str, threads: int) -> float:
        return statistics.median(figures[(mode, what, label, threads)])

    heads = " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)

    def table(values: dict[tuple[str, str, str, int], list[float]], ratios: bool) -> None:
        """Write one table of medians (and the now / before ratios when asked)."""
        out.write(f"| synchronous | measure | ledger | {heads} |\n")
        out.write("|---|---|---|" + "---:|" * len(counts) + "\n")
        for mode in ("full", "normal"):
            for what in ("pairs", "guarded calls"):
                for label, _ in versions:
                    cells = " | ".join(
                        f"{statistics.median(values[(mode, what, label, n)]):,.0f}" for n in counts
                    )
                    out.write(f"| {mode} | {what} | {label} | {cells} |\n")
                if ratios:
                    before = versions[0][0]
                    cells = " | ".join(
                        f"{median(mode, what, 'now', n) / median(mode, what, before, n):.2f}×"
                        for n in counts
                    )
                    out.write(f"| {mode} | {what} | ratio now / before | {cells} |\n")

    table(figures, bool(options.before))
    out.write("\nCPU µs per pair or call (user + system, median):\n\n")
    table(cpus, False)
    fsync = statistics.median(fsyncs)
    out.write(
        f"\nfsync of a small write in the same directory: {fsync:.2f} ms (median; "
        f"{min(fsyncs):.2f}–{max(fsyncs):.2f} over the repeats). With T threads at most T "
        "writes share one commit, and a guarded call is two writes (reserve, settle), so "
        "synchronous=full allows at most about T / (2 × fsync) guarded calls per second: "
        + ", ".join(f"{n / (2 * fsync / 1000):,.0f} for {n}" for n in counts)
        + ".\n"
    )


if __name__ == "__main__":
    main()
