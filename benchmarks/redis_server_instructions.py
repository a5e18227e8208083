"""CPU instructions redis-server spends per guarded call, counted by callgrind, beside ``limits``.

Run from the repository root::

    .venv/bin/python benchmarks/redis_server_instructions.py [--calls 1000]
        [--before /path/to/an/older/checkout] [--limits-python PYTHON] [--warm-up 50]

Starts a private redis-server under ``valgrind --tool=callgrind`` on a free
port, then for every code tree (this one, and ``--before``) and
``settle_delay`` of 0 and 0.005 runs, in a child process, 50 guarded calls to
warm up (a ``BudgetGuard`` with a user and a global budget, ``@budgeted`` with
an estimate and a ``cost=``, as ``redis_round_trips.py`` does), zeroes the
server's counters (``callgrind_control -z``), runs ``--calls`` more and
dumps them: server instructions per call. The same for ``limits``'
``FixedWindowRateLimiter.hit`` (``--limits-python``: an interpreter with
``limits[redis]``, which needs redis-py below 8). Unlike times, these counts
do not depend on the machine's load. Needs ``valgrind``.

``--warm-up 200`` counts the calls of a busy ledger: past 128 settled ids
Redis keeps that sorted set as a skiplist; below, as a listpack, whose
inserts cost some 20 k instructions each at a hundred entries, which the
default warm-up of 50 (kept so that counts compare with earlier ones)
includes for the first 78 counted calls.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

CHILD = """
import logging, subprocess, sys
logging.disable(logging.WARNING)  # the server has no persistence
kind, url, pid, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
warm_up = int(sys.argv[5])
if kind == "limits":
    from limits import RateLimitItemPerSecond
    from limits.storage import storage_from_string
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(storage_from_string(url))
    item = RateLimitItemPerSecond(10**9)

    def call():
        return limiter.hit(item, "alice")

    def close():
        pass
else:
    from budgetguard import BudgetGuard

    guard = BudgetGuard(ledger=url, metrics=False)
    guard.set_budget("1000000", user="alice", period="monthly")
    guard.set_budget("1000000", period="monthly")
    call = guard.budgeted(user="alice", estimate="0.001", cost=lambda result: "0.0009")(
        lambda: 1
    )
    close = guard.close
for _ in range(warm_up):  # warm up: connections, scripts loaded, budgets read
    call()
subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)
for _ in range(calls):
    call()
close()  # what a settle_delay still queues is written inside the count
"""


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def counted(pid: int, directory: str) -> int:
    """Dump the server's counters since the last zeroing; return its instructions."""
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    dumps = sorted(glob.glob(f"{directory}/out.{pid}*"), key=os.path.getmtime)
    text = Path(dumps[-1]).read_text()
    found = re.search(r"^summary: (\d+)", text, re.MULTILINE) or re.search(
        r"^totals: (\d+)", text, re.MULTILINE
    )
    if found is None:
        raise RuntimeError(f"no count in {dumps[-1]}")
    return int(found.group(1))


def main() -> None:
    """Count every tree and delay beside limits, and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=50, help="calls before the count")
    parser.add_argument("--before", type=Path, help="an older checkout to count too")
    parser.add_argument("--limits-python", help="an interpreter with limits[redis] installed")
    options = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt-get install -y valgrind redis-server)")
    runs: list[tuple[str, str, str, str]] = []  # (label, kind, python, code tree)
    trees = [("now", ROOT)] + ([("before", options.before.resolve())] if options.before else [])
    for name, tree in trees:
        for delay in ("0", "0.005"):
            runs.append(
                (f"guarded call, {name}, settle_delay={delay}", delay, sys.executable, str(tree))
            )
    if options.limits_python:
        runs.append(("limits fixed window hit", "limits", options.limits_python, ""))
    with tempfile.TemporaryDirectory(prefix="budgetguard-cg-redis-") as directory:
        port = free_port()
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={directory}/out.%p",
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--hz",
                "1",  # little background work inside the counts
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import redis

            deadline = time.monotonic() + 60
            while True:
                try:
                    admin = redis.Redis(port=port)
                    pid = int(admin.info("server")["process_id"])
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start under valgrind") from None
                    time.sleep(0.2)
            print(f"redis-server instructions per call ({options.calls} calls, callgrind)")
            for number, (label, kind, python, tree) in enumerate(runs):
                url = f"redis://127.0.0.1:{port}/0"
                if kind != "limits":
                    url += f"?settle_delay={kind}&prefix=t{number}"
                env = {**os.environ, "PYTHONPATH": tree} if tree else dict(os.environ)
                subprocess.run(
                    [
                        python,
                        "-c",
                        CHILD,
                        "limits" if kind == "limits" else "guarded",
                        url,
                        str(pid),
                        str(options.calls),
                        str(options.warm_up),
                    ],
                    env=env,
                    # python -c puts the working directory first on sys.path, before
                    # PYTHONPATH: run in the tree measured, or the repository's own
                    # budgetguard is counted for --before too.
                    cwd=tree or None,
                    check=True,
                )
                print(f"  {label:<40} {counted(pid, directory) // options.calls:>10,}", flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
