"""Expose budgetguard's metrics to Prometheus at http://127.0.0.1:PORT/metrics.

    pip install budgetguard-llm opentelemetry-sdk opentelemetry-exporter-prometheus
    python examples/prometheus.py 9464
    curl -s http://127.0.0.1:9464/metrics | grep budgetguard_

The guard reports to the MeterProvider it is given; the Prometheus reader
turns each collection into the text format, served by prometheus_client's
HTTP server. Spend appears as ``budgetguard_spend_USD_total``.
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import budgetguard as bg


def serve(port: int, *, addr: str = "127.0.0.1") -> bg.BudgetGuard:
    """Start the /metrics endpoint and return a guard that reports to it."""
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    start_http_server(port, addr=addr)
    return bg.BudgetGuard(
        ledger="memory://",
        meter_provider=provider,
        # Per-user series, hashed: user ids are personal, and capped at 100.
        user_attribute="hashed",
        user_salt="change-me: a secret shared by your processes",
        alert_thresholds=["0.5", "0.8"],
    )


def demo(guard: bg.BudgetGuard, calls: int) -> Decimal:
    """Make ``calls`` fake LLM calls of $0.125 for alice and return what they cost."""
    guard.set_budget("5", user="alice", period="daily")
    guard.set_budget("100", period="monthly")

    @guard.budgeted(user="alice", cost=lambda response: response["cost"], model="gpt-4o")
    def answer(question: str) -> dict[str, str]:
        return {"answer": f"echo: {question}", "cost": "0.125"}

    for i in range(calls):
        answer(f"question {i}")
    return guard.spend(user="alice")


def main(argv: list[str] | None = None) -> None:
    """Serve /metrics on the port given on the command line, after a few demo calls."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="port of the /metrics endpoint")
    parser.add_argument("--addr", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--calls", type=int, default=3, help="demo calls to make first")
    args = parser.parse_args(argv)
    guard = serve(args.port, addr=args.addr)
    spent = demo(guard, args.calls)
    print(f"spent ${spent}; metrics at http://{args.addr}:{args.port}/metrics", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
