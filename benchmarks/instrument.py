"""Measure what instrumentation adds to a real SDK call against a loopback server.

Run: python benchmarks/instrument.py [--calls N] [--repeats R]

Drives the real openai and anthropic clients against the fake API of the
tests (tests/instrument/fake_llm.py) on 127.0.0.1: each case runs bare, then
instrumented (memory ledger, a budget set for the user, inside a
budget_scope), and prints microseconds per call and the ratio. Everything
runs in one process and one run, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import openai

import budgetguard as bg
from budgetguard import instrument, uninstrument

_FAKE = Path(__file__).resolve().parent.parent / "tests" / "instrument" / "fake_llm.py"


def _load_fake_api() -> object:
    spec = importlib.util.spec_from_file_location("fake_llm", _FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_llm"] = module
    spec.loader.exec_module(module)
    return module


def batch_us(function: Callable[[], object], calls: int) -> float:
    """Return microseconds per call over one batch of ``calls``."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls / 1000


def compare(
    function: Callable[[], object], guard: bg.BudgetGuard, calls: int, repeats: int
) -> tuple[float, float]:
    """Return the median µs per call bare and instrumented, batches interleaved.

    Alternating the two kinds of batch spreads the machine's drift (the
    server shares the CPU) over both sides of the ratio alike.
    """
    for _ in range(min(calls, 20)):  # warm connections, caches, tiktoken
        function()
    bare, guarded = [], []
    for _ in range(repeats):
        bare.append(batch_us(function, calls))
        instrument(guard)
        try:
            with bg.budget_scope("bench"):
                guarded.append(batch_us(function, calls))
        finally:
            uninstrument()
    return statistics.median(bare), statistics.median(guarded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    options = parser.parse_args()
    fake = _load_fake_api()
    messages = [{"role": "user", "content": "Say hello to the wide world, briefly."}]
    with fake.serve() as server:  # type: ignore[attr-defined]
        oai = openai.OpenAI(api_key="bench", base_url=f"{server.url}/v1", max_retries=0)
        claude = anthropic.Anthropic(api_key="bench", base_url=server.url, max_retries=0)
        cases: dict[str, Callable[[], object]] = {
            "openai chat.completions.create": lambda: oai.chat.completions.create(
                model="gpt-4o-mini", messages=messages, max_tokens=500
            ),
            "openai chat stream, read to the end": lambda: list(
                oai.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, max_tokens=500, stream=True
                )
            ),
            "openai embeddings.create": lambda: oai.embeddings.create(
                model="text-embedding-3-small", input="hello world", encoding_format="float"
            ),
            "anthropic messages.create": lambda: claude.messages.create(
                model="claude-haiku-4-5", max_tokens=500, messages=messages
            ),
        }
        guard = bg.BudgetGuard(metrics=False)
        guard.set_budget("1000000", user="bench")
        print(f"{options.repeats} interleaved batches of {options.calls} calls, median µs per call")
        print(f"{'case':40} {'bare':>9} {'instrumented':>13} {'ratio':>7} {'added':>8}")
        for name, function in cases.items():
            bare, guarded = compare(function, guard, options.calls, options.repeats)
            print(
                f"{name:40} {bare:9.1f} {guarded:13.1f} {guarded / bare:7.3f} {guarded - bare:8.1f}"
            )
        oai.close()
        claude.close()
        guard.close()


if __name__ == "__main__":
    main()
