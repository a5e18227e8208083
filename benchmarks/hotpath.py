"""CPU instructions per guarded call on the memory ledger, counted by callgrind.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/hotpath.py [--before DIR] [--calls N]

Counts what one ``@budgeted`` call costs (a user and a global budget, metrics
off unless a case says so) as ``(instructions of N calls - instructions of 0
calls) / N``, so the interpreter's start-up and imports cancel out, with
``PYTHONHASHSEED=0``.
Instruction counts do not depend on the machine's load, unlike times. Cases:

- ``cost=``: the function gives its cost (``cost=lambda r: "0.0005"``);
- ``cost=, async``: the same as a coroutine function, awaited in one event loop;
- ``cost=, metrics``: the ``cost=`` case with metrics on, as a guard has them
  by default (no OpenTelemetry SDK installed: what the guard itself does);
- ``auto-priced``: it returns an OpenAI-shaped chat completion, read and priced;
- ``conversation``: no estimate given: each call sends a 20-message history
  with one new question (estimated from the prompt), and is auto-priced;
- ``ledger only``: one memory-ledger reserve and settle with seven tallies,
  as a guarded call makes them;
- ``cost=, sqlite``: the ``cost=`` case on a SQLite file (the client's side:
  Python, the sqlite3 module and SQLite's own C code; no fsync wait);
- ``cost=, redis`` (with ``--redis-url``): the ``cost=`` case on that Redis,
  counting this process only (redis-py, and hiredis when installed).

``--before DIR`` counts a checkout of an earlier revision (its ``budgetguard``
package) in the same run. Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CALL = """
import sys
import budgetguard as bg
n, mode = int(sys.argv[1]), sys.argv[2]
url = "memory://"
if mode == "sqlite":  # a fresh SQLite file (synchronous=normal: no fsync wait)
    import tempfile
    url = f"sqlite:///{tempfile.mkdtemp()}/hot.db?synchronous=normal"
elif mode == "redis":  # --redis-url (the process's side: Python, redis-py, hiredis if installed)
    import logging, os
    logging.disable(logging.WARNING)  # a test server without persistence is expected
    url = os.environ["HOTPATH_REDIS_URL"]
    import redis
    redis.Redis.from_url(url).flushdb()  # every run (and tree) starts on an empty database
guard = bg.BudgetGuard(url, metrics=mode == "metrics")  # metrics on: what a guard has by default
guard.set_budget("1000000", user="alice", period="monthly")
guard.set_budget("5000000", period="monthly")
RESPONSE = {"object": "chat.completion", "model": "gpt-4o-mini",
            "usage": {"prompt_tokens": 100, "completion_tokens": 50}}
if mode == "async":  # a coroutine function, awaited n times in one event loop
    import asyncio
    async def answer():
        return None
    acall = guard.budgeted(user="alice", estimate="0.001", cost=lambda r: "0.0005")(answer)
    async def calls(count):
        for _ in range(count):
            await acall()
    asyncio.run(calls(n + 2))
    raise SystemExit
if mode == "chat":  # auto-priced and estimated from the prompt: a conversation of 20 turns
    @guard.budgeted(user="alice")
    def chat(model, messages):
        return RESPONSE
    history = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    for i in range(n + 2):  # each turn sends the history again, with one new question
        history.append({"role": "user", "content": f"Question {i}: what is {i} times {i + 1}?"})
        chat(model="gpt-4o-mini", messages=history)
        history.append({"role": "assistant", "content": f"{i} times {i + 1} is {i * (i + 1)}."})
        del history[1:-19]  # the system prompt and the last 19 messages
    raise SystemExit
if mode in ("cost", "metrics", "sqlite", "redis"):
    call = guard.budgeted(user="alice", estimate="0.001", cost=lambda r: "0.0005")(lambda: None)
else:
    call = guard.budgeted(user="alice", estimate="0.001")(lambda: RESPONSE)
call(); call()
for _ in range(n):
    call()
"""

LEDGER = """
import sys, time
from budgetguard.ledger import Hold, Reservation, ledger_from_url
n = int(sys.argv[1])
ledger = ledger_from_url("memory://")
holds = (Hold("b|user:alice|2026-12", 10**15, 1000), Hold("b|global|2026-12", 10**16, 1000))
tallies = ("t|", "t|u=alice", "t|m=", "t|u=alice|m=", "d|2026-12-01|u=alice|m=",
           "b|user:alice|2026-12|m=", "b|global|2026-12|m=")
expires = time.time() + 900
for reservation in [Reservation(f"r{i}", holds, expires) for i in range(n + 2)]:
    ledger.reserve(reservation)
    ledger.settle(reservation, 500, tallies)
"""

CASES = (
    ("cost=", CALL, "cost"),
    ("cost=, async", CALL, "async"),
    ("cost=, metrics", CALL, "metrics"),
    ("auto-priced", CALL, "usage"),
    ("conversation", CALL, "chat"),
    ("ledger only", LEDGER, "-"),
    ("cost=, sqlite", CALL, "sqlite"),
)


def instructions(script: Path, calls: int, mode: str, path: str) -> int:
    """Return the instructions callgrind counts for one run of ``script``."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": path}
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/out",
                sys.executable,
                str(script),
                str(calls),
                mode,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no count in callgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_call(script: Path, mode: str, path: str, calls: int) -> int:
    """Return the instructions of one call: N calls minus none, over N."""
    return (instructions(script, calls, mode, path) - instructions(script, 0, mode, path)) // calls


def main() -> None:
    """Print the instructions per call of each case (and of ``--before``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="a checkout of an earlier revision, to count beside")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--redis-url", help="also count the cost= call on this Redis (its database is emptied)"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install -y valgrind")
    here = str(Path(__file__).resolve().parents[1])
    trees = [("now", here)] + ([("before", args.before)] if args.before else [])
    with tempfile.TemporaryDirectory() as scratch:
        print(f"{'case':<16}" + "".join(f"{name:>12}" for name, _ in trees))
        cases = CASES
        if args.redis_url:
            os.environ["HOTPATH_REDIS_URL"] = args.redis_url
            cases += (("cost=, redis", CALL, "redis"),)
        for label, text, mode in cases:
            script = Path(scratch) / f"case_{mode}.py"  # not redis.py: it would shadow redis-py
            script.write_text(text)
            counts = [per_call(script, mode, path, args.calls) for _, path in trees]
            print(f"{label:<16}" + "".join(f"{count:>12,}" for count in counts))


if __name__ == "__main__":
    main()
