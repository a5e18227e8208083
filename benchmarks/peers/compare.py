"""budgetguard beside LiteLLM's BudgetManager and tokencost, on one workload, in one run.

Run (after ``bash benchmarks/peers/setup.sh``, which makes /tmp/peers-venv)::

    LITELLM_LOCAL_MODEL_COST_MAP=True /tmp/peers-venv/bin/python benchmarks/peers/compare.py

(``run_all.py`` runs these same measurements through ``measure()``, beside the others.)

Three measurements, every tool on the same calls (gpt-4o-mini chat completions
with seeded token counts; LiteLLM ``ModelResponse`` objects, which budgetguard
reads as they are; tokencost is given their token counts):

1. time per charged call, one thread: check the user's budget, then charge
   the call's cost the way each tool's documentation shows;
2. exactness: each tool's running total against the exact decimal sum of the
   same charges, and 100,000 charges of $0.000001 (which must make $0.1);
3. 16 threads racing one budget that fits exactly K calls, each call taking
   1 ms of "LLM latency" between the check and the charge: how many calls got
   through (more than K is overspend) and how many errors were raised.

LiteLLM and tokencost are never dependencies of budgetguard: they live in the
separate environment setup.sh creates. The network is closed, hence
``LITELLM_LOCAL_MODEL_COST_MAP``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MODEL = "gpt-4o-mini"
THREADS = 16
LATENCY = 0.001  # seconds of "LLM call" between the check and the charge


def responses(count: int, seed: int) -> list[dict[str, Any]]:
    """Return ``count`` chat completions of gpt-4o-mini with seeded token counts."""
    rng = random.Random(seed)
    found = []
    for number in range(count):
        prompt, completion = rng.randint(50, 4000), rng.randint(10, 800)
        found.append(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )
    return found


def exact_total(calls: list[dict[str, Any]], per_input: Decimal, per_output: Decimal) -> Decimal:
    """Return the exact cost of ``calls`` at prices per token."""
    usages = [call["usage"] for call in calls]
    return sum(
        (u["prompt_tokens"] * per_input + u["completion_tokens"] * per_output for u in usages),
        Decimal(0),
    )


# -- the three tools, each used as its documentation shows ------------------------------------


class BudgetGuardTool:
    """``@budgeted``: reserve before the call, settle from the response's usage after."""

    name = "budgetguard"

    def __init__(self, ledger: str, limit: Decimal, estimate: Decimal | None) -> None:
        import budgetguard as bg

        self.bg = bg
        self.guard = bg.BudgetGuard(ledger, metrics=False)
        self.guard.set_budget(limit, user="alice")
        self.estimate = estimate

        @bg.budgeted(user="user", estimate=estimate or Decimal(0), guard=self.guard)
        def call(user: str, response: Any, latency: float) -> Any:
            if latency:
                time.sleep(latency)
            return response

        self._call = call

    def charged_call(self, response: Any, latency: float = 0.0) -> bool:
        """Make one guarded call; ``False`` when the budget refused it."""
        try:
            self._call("alice", response, latency)
        except self.bg.BudgetExceededError:
            return False
        return True

    def total(self) -> Decimal:
        """Return what the ledger holds for alice."""
        return self.guard.spend("alice")

    def close(self) -> None:
        """Close the ledger."""
        self.guard.close()


class LiteLLMTool:
    """LiteLLM's documented pattern: get_current_cost <= get_total_budget, call, update_cost."""

    name = "litellm BudgetManager"

    def __init__(self, limit: Decimal) -> None:
        from litellm import BudgetManager

        # Every update_cost starts a thread that rewrites user_cost.json in the
        # working directory; a new manager reads that file at once. Let the
        # savers finish and start each manager in an empty directory, or it
        # loads an earlier run's totals (or a half-written file).
        _join_savers()
        os.chdir(tempfile.mkdtemp(prefix="litellm-"))
        self.manager = BudgetManager(project_name="bench", client_type="local")
        self.manager.create_budget(total_budget=float(limit), user="alice")

    def charged_call(self, response: Any, latency: float = 0.0) -> bool:
        """Check, "call", charge; ``False`` when the check refused."""
        manager = self.manager
        if manager.get_current_cost(user="alice") > manager.get_total_budget("alice"):
            return False
        if latency:
            time.sleep(latency)
        manager.update_cost(user="alice", completion_obj=response)
        return True

    def total(self) -> Decimal:
        """Return the float total LiteLLM keeps, exactly as that float."""
        return Decimal(self.manager.get_current_cost(user="alice"))

    def close(self) -> None:
        """Nothing to close."""


def _join_savers() -> None:
    """Wait for every thread but this one (LiteLLM's background savers) to end."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=10)


class TokencostTool:
    """tokencost prices tokens; the budget is the app's own dict (tokencost has none)."""

    name = "tokencost + dict"

    def __init__(self, limit: Decimal) -> None:
        import tokencost

        self.cost = tokencost.calculate_cost_by_tokens
        self.limit = limit
        self.spent: dict[str, Decimal] = {"alice": Decimal(0)}

    def charged_call(self, response: Any, latency: float = 0.0) -> bool:
        """Check, "call", charge; ``False`` when the check refused."""
        if self.spent["alice"] >= self.limit:
            return False
        if latency:
            time.sleep(latency)
        usage = response["usage"]
        cost = self.cost(usage["prompt_tokens"], MODEL, "input") + self.cost(
            usage["completion_tokens"], MODEL, "output"
        )
        self.spent["alice"] += cost
        return True

    def total(self) -> Decimal:
        """Return the app's total."""
        return self.spent["alice"]

    def close(self) -> None:
        """Nothing to close."""


# -- measurements ----------------------------------------------------------------------------------


def per_call_us(make: Callable[[], Any], calls: list[Any], repeats: int) -> tuple[float, Any]:
    """Return the median microseconds per charged call over fresh tools, and the last tool."""
    runs = []
    tool = None
    for _ in range(repeats):
        if tool is not None:
            tool.close()
        tool = make()
        start = time.perf_counter()
        for call in calls:
            tool.charged_call(call)
        runs.append((time.perf_counter() - start) / len(calls) * 1e6)
    return statistics.median(runs), tool


def race(make: Callable[[], Any], response: Any, attempts: int) -> tuple[int, int, Decimal]:
    """Race THREADS threads through one budget; return (calls admitted, errors, final total)."""
    tool = make()
    admitted = 0
    errors: list[BaseException] = []
    lock = threading.Lock()
    previous_hook = threading.excepthook

    def background_error(args: threading.ExceptHookArgs) -> None:
        # LiteLLM saves its dict from a new thread on every update.
        if args.exc_value is not None:
            with lock:
                errors.append(args.exc_value)

    threading.excepthook = background_error
    barrier = threading.Barrier(THREADS)

    def worker() -> None:
        nonlocal admitted
        barrier.wait()
        for _ in range(attempts):
            try:
                if tool.charged_call(response, LATENCY):
                    with lock:
                        admitted += 1
            except Exception as error:
                with lock:
                    errors.append(error)

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            for future in [pool.submit(worker) for _ in range(THREADS)]:
                future.result()
        _join_savers()
    finally:
        threading.excepthook = previous_hook
    total = tool.total()
    tool.close()
    return admitted, len(errors), total


def micro_charges(count: int) -> dict[str, Decimal]:
    """Add ``count`` charges of $0.000001 the way each tool adds; return each total."""
    import budgetguard as bg

    guard = bg.BudgetGuard("memory://", metrics=False)
    for _ in range(count):
        guard.record_spend("0.000001", user="alice")
    ours = guard.spend("alice")
    # LiteLLM's update_cost: user_dict[user]["current_cost"] = cost + current (floats).
    litellm_total = 0.0
    for _ in range(count):
        litellm_total = 0.000001 + litellm_total
    # tokencost returns Decimal(str(price)) * tokens; the app sums Decimals.
    tokencost_total = sum((Decimal(str(1e-06)) for _ in range(count)), Decimal(0))
    return {
        "budgetguard": ours,
        "litellm BudgetManager": Decimal(litellm_total),
        "tokencost + dict": tokencost_total,
    }


def _short(amount: Decimal) -> str:
    """Return an amount cut to 24 significant characters (floats carry ~55 decimals)."""
    text = str(amount)
    return text if len(text) <= 24 else text[:23] + "…"


def measure(calls: int = 5000, repeats: int = 3, seed: int = 1) -> dict[str, Any]:
    """Run the three measurements; return their figures (JSON-ready: floats, ints, strings)."""
    import importlib.metadata as metadata

    import litellm
    import tokencost

    from budgetguard._dist import DISTRIBUTION

    # Our distribution's name: the index's "budgetguard" is another project.
    names = (DISTRIBUTION, "litellm", "tokencost")
    versions = {name: metadata.version(name) for name in names}

    plain = responses(calls, seed)
    wrapped = [litellm.ModelResponse(**r) for r in plain]
    huge = Decimal(10**6)
    work = tempfile.mkdtemp(prefix="peers-bench-")
    os.chdir(work)  # LiteLLM writes user_cost.json into the working directory

    # Prices each tool uses for gpt-4o-mini, per token.
    info = litellm.model_cost[MODEL]
    prices = {
        "budgetguard": (Decimal("0.15") / 10**6, Decimal("0.6") / 10**6),
        "litellm BudgetManager": (
            Decimal(repr(info["input_cost_per_token"])),
            Decimal(repr(info["output_cost_per_token"])),
        ),
        "tokencost + dict": (
            Decimal(str(tokencost.TOKEN_COSTS[MODEL]["input_cost_per_token"])),
            Decimal(str(tokencost.TOKEN_COSTS[MODEL]["output_cost_per_token"])),
        ),
    }
    fresh = iter(range(1_000_000))

    def sqlite_url() -> str:
        return f"sqlite:///{Path(work) / f'spend-{next(fresh)}.db'}"

    makers: list[tuple[str, Callable[[], Any], list[Any]]] = [
        ("budgetguard (memory://)",
         lambda: BudgetGuardTool("memory://", huge, Decimal("0.001")), wrapped),
        ("budgetguard (sqlite)",
         lambda: BudgetGuardTool(sqlite_url(), huge, Decimal("0.001")), wrapped),
        ("litellm BudgetManager", lambda: LiteLLMTool(huge), wrapped),
        ("tokencost + dict", lambda: TokencostTool(huge), plain),
    ]  # fmt: skip

    per_call: dict[str, dict[str, Any]] = {}
    for label, make, batch in makers:
        microseconds, tool = per_call_us(make, batch, repeats)
        key = "budgetguard" if label.startswith("budgetguard") else label
        expected = exact_total(plain, *prices[key])
        got = tool.total()
        per_call[label] = {
            "us_per_call": microseconds,
            "total": str(got),
            "exact": str(expected),
            "drift": float(got - expected),
        }
        tool.close()

    micro = {
        name: {"total": str(total), "drift": float(total - Decimal("0.1"))}
        for name, total in micro_charges(100_000).items()
    }

    call = plain[0]
    cost = exact_total([call], *prices["budgetguard"])
    fits = 40
    limit = cost * fits
    racers: list[tuple[str, Callable[[], Any], Any]] = [
        ("budgetguard (memory://)", lambda: BudgetGuardTool("memory://", limit, cost), wrapped[0]),
        ("budgetguard (sqlite)",
         lambda: BudgetGuardTool(sqlite_url(), limit, cost), wrapped[0]),
        ("litellm BudgetManager", lambda: LiteLLMTool(limit), wrapped[0]),
        ("tokencost + dict", lambda: TokencostTool(limit), call),
    ]  # fmt: skip
    raced: dict[str, dict[str, Any]] = {}
    for label, make, response in racers:
        admitted, errors, total = race(make, response, attempts=10)
        raced[label] = {
            "admitted": admitted,
            "overspend": admitted - fits,
            "errors": errors,
            "total": str(total),
        }
    return {
        "versions": versions,
        "calls": calls,
        "repeats": repeats,
        "per_call": per_call,
        "micro_charges": micro,
        "race": {
            "threads": THREADS,
            "attempts": 10,
            "latency_ms": LATENCY * 1000,
            "fits": fits,
            "limit": str(limit),
            "tools": raced,
        },
    }


def main() -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per timing run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    found = measure(options.calls, options.repeats, options.seed)
    versions = found["versions"]
    print(f"python {sys.version.split()[0]}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    print(f"\n1+2. {options.calls} gpt-4o-mini calls, one thread, check + charge per call")
    print(f"{'tool':<26}{'us/call':>10}  {'total charged':>26}  {'exact total':>22}  drift")
    for label, row in found["per_call"].items():
        print(
            f"{label:<26}{row['us_per_call']:>10.1f}  {_short(Decimal(row['total'])):>26}  "
            f"{row['exact']:>22}  {row['drift']:+.1e}"
        )

    print("\n2b. 100,000 charges of $0.000001 (exactly $0.1)")
    for name, row in found["micro_charges"].items():
        print(f"{name:<26}{_short(Decimal(row['total'])):>26}  off by {row['drift']:+.1e}")

    race_found = found["race"]
    print(
        f"\n3. {THREADS} threads x 10 attempts, {LATENCY * 1000:.0f} ms per call, "
        f"budget fits exactly {race_found['fits']} calls (${race_found['limit']})"
    )
    print(f"{'tool':<26}{'admitted':>9}{'overspend':>11}{'errors':>8}  final total")
    for label, row in race_found["tools"].items():
        print(
            f"{label:<26}{row['admitted']:>9}{row['overspend']:>+11}{row['errors']:>8}  "
            f"{_short(Decimal(row['total']))}"
        )


if __name__ == "__main__":
    main()
