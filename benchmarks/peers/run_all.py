"""Every budgetguard figure next to its peers, in one run: one table and one JSON file.

Run (after ``bash benchmarks/peers/setup.sh``, which makes /tmp/peers-venv)::

    /tmp/peers-venv/bin/python benchmarks/peers/run_all.py
    /tmp/peers-venv/bin/python benchmarks/peers/readme_table.py    # README's table from the JSON

Each section runs in a fresh interpreter of its own (instrumentations patch
classes process-wide, LiteLLM changes global state), one after another, never
side by side; the figures of a section, and so every ratio, come from one run
on one machine. The machines are shared and noisy: compare within a run, not
across runs. Sections:

- ``hot``: what ``@budgeted`` adds to a bare function (memory ledger, a user
  and a global budget, ``cost=``, metrics off) against wrapt's bare wrapper;
  an auto-priced call (``model`` + ``messages``, an OpenAI ``ChatCompletion``
  back); extract + price one response against LiteLLM's ``completion_cost``
  and tokencost. With valgrind installed, CPU instructions per call counted
  by callgrind (N calls minus 0 calls): repeatable whatever the load.
- ``charge``: ``compare.py``: check + charge per call against LiteLLM's
  ``BudgetManager.update_cost`` and tokencost, exactness, 16 threads racing
  one budget.
- ``loopback``: the real openai client against a loopback OpenAI server in
  another process: bare, instrumented by budgetguard, instrumented by
  OpenLLMetry (``opentelemetry-instrumentation-openai``, reporting to an
  OpenTelemetry SDK tracer provider with a batch processor); LangChain's
  ``ChatOpenAI`` bare, inside ``get_openai_callback()``, and under
  budgetguard's instrumentation. Each batch a fresh process, the cases
  interleaved in rotating order; the median wall time of a call, and the
  client process's CPU time per call (its own work, whatever the server's
  process and the machine do).
- ``redis``: guarded calls per second on a private redis-server against
  ``limits``' fixed window on the same server, 1 and 8 threads and 4
  processes: budgetguard with two round trips a call (the default), one
  (``settle_delay=0.005``) and budget leases (``leases=True``).
- ``sqlite``: guarded calls per second, ``synchronous=full`` and ``normal``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata as metadata
import json
import multiprocessing
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SECTIONS = ("hot", "charge", "loopback", "redis", "sqlite")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "side_by_side.json"
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello wide world"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
}
MESSAGES = [{"role": "user", "content": "Say hello to the wide world, briefly."}]
HUGE = "1000000"


def best_ns(function: Callable[[], object], calls: int, repeats: int) -> float:
    """Return the best of ``repeats`` batches, in nanoseconds per call.

    The fastest batch is the one the other work on the machine disturbed
    least (as ``timeit`` reports); callgrind's counts beside it need no such care.
    """
    runs = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            function()
        runs.append((time.perf_counter_ns() - start) / calls)
    return min(runs)


# -- hot: the in-process paths ---------------------------------------------------------------------


def hot_cases(peers: bool = True) -> dict[str, Callable[[], object]]:
    """Return the in-process cases by name, all built (imports done, objects made).

    ``peers=False`` leaves out LiteLLM and tokencost: importing LiteLLM takes
    seconds, minutes under callgrind, and callgrind counts budgetguard's cases only.
    """
    import openai.types.chat
    import wrapt

    import budgetguard as bg
    from budgetguard.pricing import cost_of, default_table
    from budgetguard.usage import extract_usage

    default_table()

    def bare() -> int:
        return 1

    @wrapt.decorator
    def passthrough(wrapped, instance, args, kwargs):  # type: ignore[no-untyped-def]
        return wrapped(*args, **kwargs)

    guard = bg.BudgetGuard(metrics=False)
    guard.set_budget(HUGE, period="monthly")
    guard.set_budget(HUGE, user="alice", period="daily")
    decorated = guard.budgeted(user="alice", estimate="0.0001", cost=lambda r: "0.0001")(bare)

    response = openai.types.chat.ChatCompletion.model_validate(CHAT_RESPONSE)

    @guard.budgeted(user="alice")  # type: ignore[untyped-decorator]
    def priced(model: str, messages: list[dict[str, str]]) -> Any:
        return response

    cases: dict[str, Callable[[], object]] = {
        "bare": bare,
        "wrapt": passthrough(bare),
        "budgeted": decorated,
        "auto_priced": lambda: priced(model="gpt-4o-mini", messages=MESSAGES),
        "extract_price": lambda: cost_of(extract_usage(response)),  # type: ignore[arg-type]
    }
    if not peers:
        return cases
    import litellm
    import tokencost

    model_response = litellm.ModelResponse(**CHAT_RESPONSE)
    calculate = tokencost.calculate_cost_by_tokens
    cases["litellm_completion_cost"] = lambda: litellm.completion_cost(
        completion_response=model_response
    )
    cases["tokencost_by_tokens"] = lambda: (
        calculate(1000, "gpt-4o-mini", "input") + calculate(500, "gpt-4o-mini", "output")
    )
    return cases


CALLGRIND_CASES = ("bare", "wrapt", "budgeted", "auto_priced", "extract_price")


def section_hot(options: argparse.Namespace) -> dict[str, Any]:
    """Time the in-process paths; count their instructions with callgrind when it is there."""
    cases = hot_cases()
    for function in cases.values():  # warm: first-call caches, learned estimates
        for _ in range(200):
            function()
    found: dict[str, Any] = {
        "ns_per_call": {
            name: best_ns(function, options.hot_calls, options.repeats)
            for name, function in cases.items()
        }
    }
    found["instructions"] = callgrind_counts(options.callgrind_calls)
    return found


def callgrind_counts(calls: int) -> dict[str, float] | None:
    """Return CPU instructions per call for each case, by callgrind: N calls minus 0 calls.

    The probe starts with instrumentation off (imports under full callgrind
    take minutes) and it is switched on with ``callgrind_control`` only
    around the calls, the same way for N and for 0 calls.
    """
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None or calls <= 0:
        return None

    def instructions(case: str, count: int) -> int:
        with tempfile.TemporaryDirectory() as directory:
            probe = subprocess.Popen(
                [
                    *(valgrind, "--tool=callgrind", "--instr-atstart=no"),
                    *(f"--callgrind-out-file={directory}/out", sys.executable, __file__),
                    *("--probe", case, "--probe-calls", str(count)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            assert probe.stdin is not None and probe.stdout is not None
            for switch in ("on", "off"):
                if probe.stdout.readline().strip() not in ("ready", "done"):
                    raise RuntimeError(f"callgrind probe failed: {probe.communicate()[1][-2000:]}")
                subprocess.run(
                    [control, "-i", switch, str(probe.pid)], check=True, capture_output=True
                )
                probe.stdin.write("\n")
                probe.stdin.flush()
            _, errors = probe.communicate(timeout=600)
        match = re.search(r"Collected\s*:\s*(\d+)", errors)
        if probe.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind printed no count:\n{errors[-2000:]}")
        return int(match.group(1))

    base = instructions("bare", 0)
    return {case: (instructions(case, calls) - base) / calls for case in CALLGRIND_CASES}


def probe(case: str, calls: int) -> None:
    """Build budgetguard's hot cases, warm them, then call one ``calls`` times (under callgrind).

    Says ``ready`` and waits for a line (instrumentation is switched on), makes
    the calls, says ``done`` and waits again (switched off).
    """
    cases = hot_cases(peers=False)
    for function in cases.values():
        for _ in range(200):
            function()
    function = cases[case]
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(calls):
        function()
    print("done", flush=True)
    sys.stdin.readline()


# -- charge: compare.py ----------------------------------------------------------------------------


def section_charge(options: argparse.Namespace) -> dict[str, Any]:
    """Check + charge beside LiteLLM's BudgetManager and tokencost (compare.py)."""
    import compare

    return compare.measure(calls=options.charge_calls, repeats=3, seed=1)


# -- loopback: real clients against a loopback server ----------------------------------------------


@contextmanager
def loopback_server() -> Iterator[str]:
    """Run loopback.py in its own process; yield its base URL."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "loopback.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError("the loopback server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class _Discard:
    """A span exporter that drops what it is given: the SDK's work is counted, no I/O."""

    def export(self, spans: object) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing buffered."""
        return True


LOOPBACK_CASES = (
    "openai bare",
    "openai + budgetguard",
    "openai + OpenLLMetry",
    "ChatOpenAI bare",
    "ChatOpenAI + get_openai_callback",
    "ChatOpenAI + budgetguard",
)


def loopback_child(case: str, url: str, calls: int) -> dict[str, Any]:
    """Time ``calls`` calls of one loopback case in this fresh process.

    Every batch is a process of its own: OpenLLMetry's ``uninstrument()``
    leaves the openai client about three times slower than before
    ``instrument()`` (measured here), so no case may follow another in one
    process. Every process installs the same OpenTelemetry SDK tracer provider.
    """
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import openai
    from langchain_community.callbacks import get_openai_callback
    from langchain_openai import ChatOpenAI
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import budgetguard as bg

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard()))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    client = openai.OpenAI(api_key="bench", base_url=f"{url}/v1", max_retries=0)
    chat = ChatOpenAI(
        model="gpt-4o-mini",
        api_key="bench",  # type: ignore[arg-type]
        base_url=f"{url}/v1",
        max_retries=0,
    )
    guard = bg.BudgetGuard(metrics=False)
    guard.set_budget(HUGE, user="bench")
    if case.startswith("openai"):

        def function() -> object:
            return client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=500,
            )
    else:

        def function() -> object:
            return chat.invoke("Say hello to the wide world, briefly.", max_tokens=500)

    found: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if case.endswith("budgetguard"):
            bg.instrument(guard)
            stack.callback(bg.uninstrument)
            stack.enter_context(bg.budget_scope("bench"))
        elif case.endswith("OpenLLMetry"):
            from opentelemetry.instrumentation.openai import OpenAIInstrumentor

            OpenAIInstrumentor().instrument(tracer_provider=provider)
        elif case.endswith("get_openai_callback"):
            handler = stack.enter_context(get_openai_callback())
        for _ in range(20):  # warm: connections, caches, first-call imports
            function()
        walls = []
        cpu = time.process_time_ns()
        for _ in range(calls):
            start = time.perf_counter_ns()
            function()
            walls.append(time.perf_counter_ns() - start)
        found["cpu_ns_per_call"] = (time.process_time_ns() - cpu) / calls
        found["wall_ns"] = walls
        # Each instrumented call must really have been charged / counted.
        if case.endswith("budgetguard"):
            found["charged_per_call"] = str(guard.spend("bench") / (calls + 20))
        if case.endswith("get_openai_callback"):
            found["charged_per_call"] = str(handler.total_cost / (calls + 20))
    client.close()
    provider.shutdown()
    return found


def section_loopback(options: argparse.Namespace) -> dict[str, Any]:
    """Time openai and ChatOpenAI calls bare and under each instrumentation, interleaved.

    Per call: wall time (median over every call: the machine's stalls are
    heavy-tailed) and the client process's CPU time (per batch, median over
    batches; it counts the client and its helper threads, such as the span
    exporter's, never the server's work or the time spent waiting for it).
    """
    walls: dict[str, list[int]] = {case: [] for case in LOOPBACK_CASES}
    cpus: dict[str, list[float]] = {case: [] for case in LOOPBACK_CASES}
    charged: dict[str, str] = {}
    names = list(LOOPBACK_CASES)
    with loopback_server() as url:
        for repeat in range(options.loopback_repeats):
            turn = repeat % len(names)  # each case takes every place in the order
            for case in names[turn:] + names[:turn]:
                with tempfile.TemporaryDirectory(prefix="side-by-side-") as directory:
                    out = Path(directory) / "child.json"
                    argv = [sys.executable, __file__, "--loopback-child", case]
                    argv += ["--loopback-url", url, "--loopback-calls", str(options.loopback_calls)]
                    subprocess.run([*argv, "--section-out", str(out)], check=True, cwd=directory)
                    found = json.loads(out.read_text())
                walls[case] += found["wall_ns"]
                cpus[case].append(found["cpu_ns_per_call"])
                if "charged_per_call" in found:
                    charged[case] = found["charged_per_call"]
    return {
        "calls_per_batch": options.loopback_calls,
        "batches": options.loopback_repeats,
        "us_per_call": {case: statistics.median(w) / 1000 for case, w in walls.items()},
        "cpu_us_per_call": {case: statistics.median(c) / 1000 for case, c in cpus.items()},
        "charged_per_call": charged,
    }


# -- redis and sqlite: guarded calls per second ----------------------------------------------------


#: budgetguard's ways of using one Redis: two round trips a call (the default),
#: one (a settle rides with the next command, ``settle_delay``), and leases
#: (slices of the budgets taken in one round trip, spent in the process).
GUARDED_KINDS = {
    "budgetguard": ("", False),
    "budgetguard, settle_delay": ("?settle_delay=0.005", False),
    "budgetguard, leases": ("", True),
}


def guarded_call(url: str, leases: bool = False) -> tuple[Callable[[], object], Any]:
    """Return a ``@budgeted`` call on ``url`` (a user and a global budget, cost=) and its guard."""
    import budgetguard as bg

    guard = bg.BudgetGuard(url, metrics=False, leases=True if leases else None)
    guard.set_budget(HUGE, period="monthly")
    guard.set_budget(HUGE, user="alice", period="daily")

    @guard.budgeted(user="alice", estimate="0.0001", cost=lambda r: "0.0001")  # type: ignore[untyped-decorator]
    def call() -> int:
        return 1

    return call, guard


def limits_call(url: str, both: bool) -> Callable[[], object]:
    """Return one ``limits`` fixed-window hit (or a user and a global hit) on Redis at ``url``."""
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(storage_from_string(url))
    per_user = parse("1000000000/hour")
    overall = parse("1000000000/hour")

    def one() -> bool:
        return limiter.hit(per_user, "user", "alice")

    def two() -> bool:
        return limiter.hit(per_user, "user", "alice") and limiter.hit(overall, "global")

    return two if both else one


def make_call(kind: str, url: str) -> Callable[[], object]:
    """Return the call of ``kind``: one of GUARDED_KINDS, limits, or limits with two limits."""
    if kind in GUARDED_KINDS:
        options, leases = GUARDED_KINDS[kind]
        return guarded_call(url + options, leases)[0]
    return limits_call(url, both=kind == "limits x2")


def _threads(count: int) -> str:
    """Return "1 thread", "8 threads"."""
    return f"{count} thread" if count == 1 else f"{count} threads"


def per_second(call: Callable[[], object], threads: int, seconds: float) -> float:
    """Return calls per second of ``call`` from ``threads`` threads."""
    for _ in range(50):
        call()
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(index: int) -> None:
        while time.perf_counter() < stop:
            call()
            counts[index] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def _process_worker(kind: str, url: str, seconds: float, ready: Any, go: Any, out: Any) -> None:
    quiet_redis_warning()
    call = make_call(kind, url)
    for _ in range(50):
        call()
    ready.release()
    go.wait()
    count, stop = 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        call()
        count += 1
    out.put(count)


def per_second_processes(kind: str, url: str, processes: int, seconds: float) -> float:
    """Return calls per second summed over ``processes`` processes, started together."""
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Semaphore(0), context.Event(), context.Queue()
    workers = [
        context.Process(target=_process_worker, args=(kind, url, seconds, ready, go, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.acquire()
    go.set()
    total = sum(out.get(timeout=seconds + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return float(total / seconds)


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """Run a private redis-server (no persistence) on a free port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="side-by-side-redis-") as directory:
        process = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def commands_per_call(url: str, call: Callable[[], object], calls: int = 500) -> float:
    """Return the commands Redis ran per call, counting those inside scripts."""
    import redis

    admin = redis.Redis.from_url(url)
    call()
    admin.config_resetstat()
    for _ in range(calls):
        call()
    stats = admin.info("commandstats")
    admin.close()
    return float(sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info") / calls)


def limits_python() -> str:
    """Return the interpreter with limits: VENV-limits beside this venv (setup.sh), else this."""
    beside = Path(f"{sys.prefix}-limits") / "bin" / "python"
    return str(beside) if beside.exists() else sys.executable


def quiet_redis_warning() -> None:
    """Silence the Redis ledger's no-persistence warning: the private server has none on purpose.

    budgetguard and limits share that server, so neither pays for persistence.
    """
    import logging

    logging.getLogger("budgetguard").setLevel(logging.ERROR)


def redis_child(options: argparse.Namespace) -> dict[str, Any]:
    """Measure one kind in one setting on the Redis at ``--redis-url`` (in a child process)."""
    kind, url = options.redis_child, options.redis_url
    quiet_redis_warning()
    if options.threads == 0:
        return {"commands_per_call": commands_per_call(url, make_call(kind, url))}
    if options.processes_now:
        return {"rate": per_second_processes(kind, url, options.processes_now, options.seconds)}
    return {"rate": per_second(make_call(kind, url), options.threads, options.seconds)}


def section_redis(options: argparse.Namespace) -> dict[str, Any]:
    """Guarded calls per second on Redis beside limits' fixed window, one server.

    budgetguard runs in this interpreter's environment, limits in its own (see
    setup.sh); every measurement is a fresh child process on the same server,
    and the kinds take turns within each repeat.
    """
    import redis

    pythons = {
        **dict.fromkeys(GUARDED_KINDS, sys.executable),
        "limits": limits_python(),
        "limits x2": limits_python(),
    }
    found: dict[str, Any] = {"commands_per_call": {}}

    def child(kind: str, threads: int, processes: int) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="side-by-side-") as directory:
            out = Path(directory) / "child.json"
            argv = [pythons[kind], __file__, "--redis-child", kind, "--redis-url", url]
            argv += ["--threads", str(threads), "--processes-now", str(processes)]
            argv += ["--seconds", str(options.seconds), "--section-out", str(out)]
            subprocess.run(argv, check=True, cwd=directory)
            answer: dict[str, Any] = json.loads(out.read_text())
            return answer

    settings = [(1, 0), (8, 0)] + ([(0, options.processes)] if options.processes else [])
    rates: dict[str, dict[str, list[float]]] = {kind: {} for kind in pythons}
    with redis_server() as url:
        found["redis_server"] = redis.Redis.from_url(url).info("server")["redis_version"]
        for kind in pythons:
            found["commands_per_call"][kind] = child(kind, 0, 0)["commands_per_call"]
        for _ in range(options.redis_repeats):
            for threads, processes in settings:
                label = f"{processes} processes" if processes else _threads(threads)
                for kind in pythons:
                    rate = child(kind, threads if not processes else 1, processes)["rate"]
                    rates[kind].setdefault(label, []).append(rate)
    found["calls_per_second"] = {
        kind: {setting: statistics.median(r) for setting, r in by.items()}
        for kind, by in rates.items()
    }
    found["limits_python"] = limits_python()
    found["limits_versions"] = json.loads(
        subprocess.run(
            [
                limits_python(),
                "-c",
                "import json, importlib.metadata as m;"
                "print(json.dumps({n: m.version(n) for n in ('limits', 'redis')}))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return found


def section_sqlite(options: argparse.Namespace) -> dict[str, Any]:
    """Guarded calls per second on SQLite, synchronous=full and normal, 1 and 8 threads."""
    found: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="side-by-side-sqlite-") as directory:
        for name, query in (("full", ""), ("normal", "?synchronous=normal")):
            call, guard = guarded_call(f"sqlite:///{directory}/{name}.db{query}")
            found[name] = {
                _threads(threads): per_second(call, threads, options.seconds) for threads in (1, 8)
            }
            guard.close()
    return found


# -- the driver ------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Return the versions of everything measured."""
    names = (
        "budgetguard-llm",
        "litellm",
        "tokencost",
        "openai",
        "langchain-openai",
        "langchain-community",
        "langchain-core",
        "redis",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-openai",
        "wrapt",
    )
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_section(name: str, options: argparse.Namespace) -> dict[str, Any]:
    """Run one section in a fresh interpreter; return what it measured."""
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as directory:
        out = Path(directory) / "section.json"
        argv = [sys.executable, __file__, "--section", name, "--section-out", str(out)]
        for option in (
            "hot_calls",
            "callgrind_calls",
            "charge_calls",
            "loopback_calls",
            "loopback_repeats",
            "repeats",
            "redis_repeats",
            "seconds",
            "processes",
        ):
            argv += [f"--{option.replace('_', '-')}", str(getattr(options, option))]
        started = time.monotonic()
        subprocess.run(argv, check=True, cwd=directory)
        found: dict[str, Any] = json.loads(out.read_text())
        found["seconds_taken"] = round(time.monotonic() - started, 1)
        return found


def main() -> None:
    """Run the sections (or one, in a child), print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run these sections only")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--hot-calls", type=int, default=20_000)
    parser.add_argument("--callgrind-calls", type=int, default=2_000, help="0: no callgrind")
    parser.add_argument("--charge-calls", type=int, default=5_000)
    parser.add_argument("--loopback-calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7, help="batches per timed case")
    parser.add_argument("--loopback-repeats", type=int, default=6, help="processes per case")
    parser.add_argument("--redis-repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per calls/s measurement")
    parser.add_argument("--processes", type=int, default=4, help="0: no multi-process run")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-calls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--redis-child", help=argparse.SUPPRESS)
    parser.add_argument("--loopback-child", help=argparse.SUPPRESS)
    parser.add_argument("--loopback-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--processes-now", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.probe:
        probe(options.probe, options.probe_calls)
        return
    if options.loopback_child:
        found = loopback_child(options.loopback_child, options.loopback_url, options.loopback_calls)
        options.section_out.write_text(json.dumps(found))
        return
    if options.redis_child:
        options.section_out.write_text(json.dumps(redis_child(options)))
        return
    if options.section:
        found = globals()[f"section_{options.section}"](options)
        options.section_out.write_text(json.dumps(found))
        return

    import readme_table

    load = os.getloadavg()
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load],
            "versions": versions(),
            "options": {
                name: value
                for name, value in vars(options).items()
                if name not in ("json", "redis_child", "redis_url", "threads", "processes_now")
                and not name.startswith(("section", "probe", "loopback_child", "loopback_url"))
            },
        },
        "sections": {},
    }
    for name in options.only or SECTIONS:
        print(f"[{name}] running...", file=sys.stderr, flush=True)
        result["sections"][name] = run_section(name, options)
    result["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(readme_table.render(result))
    print(f"\nwritten: {options.json}")


if __name__ == "__main__":
    main()
