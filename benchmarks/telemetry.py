"""Measure what Telemetry.call_ended costs per guarded call.

    .venv/bin/python benchmarks/telemetry.py [--calls N]

Compares: no OpenTelemetry SDK (the API's no-op proxy), the SDK with the
aggregated design (in-process totals + observable counters, histogram
measurements queued until collection), and the SDK with every measurement
recorded on the caller's thread (``aggregate=False``). For the aggregated
design the work moved to collection time is measured too, per call.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from decimal import Decimal

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from budgetguard.events import BudgetStatus, CallOutcome
from budgetguard.telemetry import Telemetry
from budgetguard.usage import Usage

USERS = 50


class Guard:
    """Stand in for BudgetGuard: no budgets to read."""

    def budget_statuses(self) -> list[BudgetStatus]:
        """Return no budgets."""
        return []


def outcomes() -> list[CallOutcome]:
    """Return the outcomes of typical chat calls by USERS users."""
    usage = Usage(
        input_tokens=1200,
        cached_input_tokens=800,
        output_tokens=300,
        reasoning_tokens=120,
        model="gpt-4o-2024-08-06",
        provider="openai",
        operation="chat",
    )
    return [
        CallOutcome(
            user=f"user{i}",
            cost=Decimal("0.004215"),
            duration=0.8,
            request_model="gpt-4o",
            response_model="gpt-4o-2024-08-06",
            provider="openai",
            operation="chat",
            usage=usage,
        )
        for i in range(USERS)
    ]


def per_call(record: Callable[[CallOutcome], None], calls: int, repeats: int = 3) -> float:
    """Return the best ns per call of ``record`` over ``repeats`` runs of ``calls`` calls."""
    items = outcomes()
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter_ns()
        for i in range(calls):
            record(items[i % USERS])
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def main() -> None:
    """Print ns per call for each configuration and the ratios between them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    calls = parser.parse_args().calls
    guard = Guard()
    rows: list[tuple[str, float]] = []

    def baseline(outcome: CallOutcome) -> None:
        pass

    rows.append(("empty listener (function call only)", per_call(baseline, calls)))

    # No SDK: the global provider is the API's proxy and nothing ever sets it.
    no_sdk = Telemetry(guard, user_attribute="raw")
    rows.append(("no SDK, aggregated (default)", per_call(no_sdk.call_ended, calls)))
    no_sdk_direct = Telemetry(
        guard, meter_provider=NoOpMeterProvider(), user_attribute="raw", aggregate=False
    )
    rows.append(("no SDK, direct instrument calls", per_call(no_sdk_direct.call_ended, calls)))

    reader = InMemoryMetricReader()
    aggregated = Telemetry(
        guard, meter_provider=MeterProvider(metric_readers=[reader]), user_attribute="raw"
    )
    reader.get_metrics_data()
    # One collection per run, as a periodic reader would do, so the queue
    # never hits its bound; collection time is reported separately.
    collect_ns: list[float] = []

    def aggregated_call(outcome: CallOutcome) -> None:
        aggregated.call_ended(outcome)

    hot = float("inf")
    for _ in range(3):
        batch = min(calls, 8000)
        hot = min(hot, per_call(aggregated_call, batch, repeats=1))
        start = time.perf_counter_ns()
        reader.get_metrics_data()
        collect_ns.append((time.perf_counter_ns() - start) / batch)
    rows.append(("SDK, aggregated (default): hot path", hot))
    rows.append(("SDK, aggregated: collection work, per call", min(collect_ns)))

    direct_reader = InMemoryMetricReader()
    direct = Telemetry(
        guard,
        meter_provider=MeterProvider(metric_readers=[direct_reader]),
        user_attribute="raw",
        aggregate=False,
    )
    rows.append(("SDK, direct instrument calls", per_call(direct.call_ended, calls // 4)))

    width = max(len(label) for label, _ in rows)
    reference = dict(rows)["SDK, aggregated (default): hot path"]
    print(f"{'configuration':{width}}  {'ns/call':>9}  {'x aggregated SDK':>16}")
    for label, ns in rows:
        print(f"{label:{width}}  {ns:9.0f}  {ns / reference:16.2f}")


if __name__ == "__main__":
    main()
