"""Run a small multi-user LLM app offline and show what budgetguard saw: ``budgetguard demo``."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..guard import BudgetGuard
from ._common import EXIT_OK, UsageError, add_command, ledger_url, positive_int, safe_url
from ._output import money, percent, plain, print_table
from ._report import report_tables, spend_table

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard demo`` to the command line."""
    demo = add_command(
        commands,
        "demo",
        "run a small multi-user LLM app offline and show what budgetguard saw",
        "Run a realistic workload through budgetguard, with no network and no API key:\n"
        "several users calling OpenAI, Anthropic and Gemini models (some answers\n"
        "streamed), one research agent under a per-run cap, and one user on a tiny\n"
        "trial budget so that you see calls being refused. The replies are made up\n"
        "locally in each provider's real response shape; everything else -- the\n"
        "@budgeted decorator, budget_scope, the price table, the ledger, the\n"
        "OpenTelemetry metrics -- is the real thing.\n\n"
        "Progress goes to stderr; the exported metrics and the spend report to stdout.",
        "examples:\n"
        "  budgetguard demo\n"
        "  budgetguard demo --users 10 --calls 1000\n"
        "  budgetguard demo --ledger sqlite:///spend.db && "
        "budgetguard report --ledger sqlite:///spend.db",
        run,
    )
    demo.add_argument(
        "--ledger",
        type=ledger_url,
        default="memory://",
        metavar="URL",
        help="where spend is kept (default: memory://, gone when the demo ends)",
    )
    demo.add_argument(
        "--users",
        type=positive_int,
        default=6,
        metavar="N",
        help="how many users (default: 6, at least 2)",
    )
    demo.add_argument(
        "--calls",
        type=positive_int,
        default=240,
        metavar="N",
        help="how many calls in all, besides the agent's (default: 240)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=7,
        metavar="N",
        help="random seed: the same seed makes the same workload (default: 7)",
    )
    demo.add_argument(
        "--latency",
        type=float,
        default=0.002,
        metavar="SECONDS",
        help="how long each made-up reply takes (default: 0.002)",
    )
    demo.add_argument(
        "--otel-json",
        action="store_true",
        help="print the metrics as the console exporter's raw JSON",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo workload, then print its metrics, spend report and refusals."""
    from ..demo import run_demo

    if args.users < 2:
        raise UsageError("argument --users: the demo needs at least 2 users")
    if args.calls < args.users:
        raise UsageError(f"argument --calls: give at least one call per user ({args.users})")
    if args.latency < 0 or args.latency > 5:
        raise UsageError("argument --latency: use 0 to 5 seconds")
    progress = sys.stderr
    print(f"budgetguard demo: ledger {safe_url(args.ledger)}, seed {args.seed}", file=progress)

    def guard_factory(url: str, **options: Any) -> BudgetGuard:
        guard = BudgetGuard(url, **options)
        try:
            guard.ledger.ping()
        except BaseException:
            guard.close()
            raise
        return guard

    try:
        result = run_demo(
            args.ledger,
            users=args.users,
            calls=args.calls,
            seed=args.seed,
            latency=args.latency,
            progress=progress,
            guard_factory=guard_factory,
            metrics_json=args.otel_json,
        )
    except ConfigurationError as error:
        raise UsageError(f"argument --ledger: {error}") from None
    try:
        _show_demo(result, args)
    finally:
        result.close()
    return EXIT_OK


def _show_demo(result: Any, args: argparse.Namespace) -> None:
    from ..report import build_report

    totals = result.totals
    out = sys.stdout
    print(file=out)
    if result.metrics is None:
        print("== Metrics ==", file=out)
        print(
            "The OpenTelemetry SDK is not installed (pip install opentelemetry-sdk), so no\n"
            "metrics were exported; these are the in-process totals the guard's listeners saw:",
            file=out,
        )
    else:
        print("== OpenTelemetry metrics exported (ConsoleMetricExporter) ==", file=out)
        out.write(result.metrics)
        print(file=out)
        print("In-process totals the guard's listeners saw:", file=out)
    print(
        f"  calls ran: {totals.calls}   refused: {totals.refused}   "
        f"tokens in/out: {totals.input_tokens:,}/{totals.output_tokens:,}   "
        f"spent: ${plain(totals.spent)}",
        file=out,
    )
    rows = [
        [model, money(amount)]
        for model, amount in sorted(totals.by_model.items(), key=lambda item: -item[1])
    ]
    print_table(["model", "spent"], rows, numeric=[1])
    for crossing in totals.alerts:
        print(
            f"  alert: budget {crossing.budget} passed {percent(crossing.fraction)} of "
            f"${plain(crossing.limit)} ({crossing.period}): ${plain(crossing.spent)} spent",
            file=out,
        )

    guard = result.guard
    report = build_report(guard, period="current", by=("user",))
    print(file=out)
    print(f"== Spend report ({result.seconds:.2f}s, ledger {safe_url(args.ledger)}) ==", file=out)
    report_tables(report, out)
    by_model = build_report(guard, period="current", by=("model",))
    print(file=out)
    spend_table(by_model, out)

    print(file=out)
    print(f"== Refused calls: {len(result.refused)} (the LLM was never called) ==", file=out)
    shown: set[tuple[str, str]] = set()
    for refusal in result.refused:
        kind = (refusal.user, refusal.error.budget)
        count = sum(1 for r in result.refused if (r.user, r.error.budget) == kind)
        if kind in shown:
            continue
        shown.add(kind)
        also = f" (and {count - 1} more like it)" if count > 1 else ""
        print(f"- {refusal.user}, {refusal.what} to {refusal.model}{also}:", file=out)
        print(f"    BudgetExceededError: {refusal.error}", file=out)
    print(file=out)
    stopped = next((r for r in result.refused if r.what.startswith("agent")), None)
    why = f"; {stopped.what} was refused by budget {stopped.error.budget}" if stopped else ""
    print(
        f"The agent run for {result.agent_user} (capped at ${plain(_agent_limit())}) made "
        f"{result.agent_steps} steps for ${money(result.agent_spent)}{why}.",
        file=out,
    )
    if urlsplit(args.ledger).scheme == "memory":
        print(
            "The memory:// ledger is gone now; run with --ledger sqlite:///spend.db to keep it "
            "and try 'budgetguard report'.",
            file=out,
        )
    else:
        print(
            f"See it again: budgetguard report --ledger {safe_url(args.ledger)} --by user,model",
            file=out,
        )


def _agent_limit() -> Decimal:
    from ..demo import AGENT_LIMIT

    return AGENT_LIMIT
