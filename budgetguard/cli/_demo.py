"""Run a small multi-user LLM app offline and show what budgetguard saw: ``budgetguard demo``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..guard import BudgetGuard
from ._common import (
    EXIT_OK,
    CommandError,
    UsageError,
    add_command,
    ledger_url,
    positive_int,
    safe_url,
)
from ._output import money, percent, plain, print_table
from ._report import spend_table

if TYPE_CHECKING:
    from ..demo import DemoResult
    from ._common import Subparsers

#: Output is laid out for a terminal this wide when it cannot be measured (a pipe, a file).
DEFAULT_WIDTH = 80


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard demo`` to the command line."""
    demo = add_command(
        commands,
        "demo",
        "run a small multi-user LLM app offline and show what budgetguard saw",
        "Run a realistic workload through budgetguard, with no network and no API\n"
        "key: several users calling OpenAI, Anthropic and Gemini models (some answers\n"
        "streamed), one research agent under a per-run cap, and one user on a tiny\n"
        "trial budget, so that you see calls being refused. The replies are made up\n"
        "locally in each provider's real response shape; everything else -- the\n"
        "@budgeted decorator, budget_scope, the price table, the ledger, the\n"
        "OpenTelemetry metrics -- is the real thing.\n\n"
        "The demo writes to a new SQLite file of its own (its path is printed), so\n"
        "that 'budgetguard report' can read it afterwards. It refuses a --ledger that\n"
        "already holds budgets or spend; --force adds demo users (demo-alice, ...)\n"
        "to it instead, keeps its budgets, and never writes under a user it knows.\n\n"
        "Progress goes to stderr; the summary, the metrics and the spend report to\n"
        "stdout.",
        "examples:\n"
        "  budgetguard demo\n"
        "  budgetguard demo --users 10 --calls 1000\n"
        "  budgetguard demo --metrics            # and every exported data point\n"
        "  budgetguard demo --ledger memory://   # keep nothing",
        run,
    )
    demo.add_argument(
        "--ledger",
        type=ledger_url,
        default=None,
        metavar="URL",
        help="where spend is kept (default: a new SQLite file in the temporary directory)",
    )
    demo.add_argument(
        "--force",
        action="store_true",
        help="run on a --ledger that already holds budgets or spend, as demo-* users",
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
        "--metrics",
        action="store_true",
        help="also print every exported OpenTelemetry data point, after the report",
    )
    demo.add_argument(
        "--otel-json",
        action="store_true",
        help="also print the metrics as the OpenTelemetry SDK's raw JSON",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo workload, then print what happened, the metrics and the spend report."""
    from ..demo import LedgerInUseError, run_demo

    if args.users < 2:
        raise UsageError("argument --users: the demo needs at least 2 users")
    if args.calls < args.users:
        raise UsageError(f"argument --calls: give at least one call per user ({args.users})")
    if args.latency < 0 or args.latency > 5:
        raise UsageError("argument --latency: use 0 to 5 seconds")
    own_file = args.ledger is None
    if own_file:
        folder = tempfile.mkdtemp(prefix="budgetguard-demo-")
        args.ledger = "sqlite:///" + os.path.join(folder, "demo.db")
    progress = sys.stderr
    print(f"budgetguard demo, seed {args.seed}, ledger:", file=progress)
    print(f"  {safe_url(args.ledger)}", file=progress)

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
            force=args.force,
            guard_factory=guard_factory,
        )
    except ConfigurationError as error:
        raise UsageError(f"argument --ledger: {error}") from None
    except LedgerInUseError as error:
        raise CommandError(f"not touching {safe_url(args.ledger)}: {error}") from None
    try:
        show_demo(result, args.ledger, sys.stdout, width=output_width(sys.stdout))
        if args.metrics and result.metrics is not None:
            print("\n== Every exported data point (--metrics) ==", file=sys.stdout)
            sys.stdout.write(result.metrics_text())
        if args.otel_json and result.metrics is not None:
            print("\n== The OpenTelemetry SDK's JSON (--otel-json) ==", file=sys.stdout)
            sys.stdout.write(result.metrics_json())
    finally:
        result.close()
    return EXIT_OK


def output_width(out: TextIO) -> int:
    """Return the width to lay the output out in: the terminal's, else ``COLUMNS``, else 80."""
    if out.isatty():
        return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)
    try:
        return max(40, int(os.environ.get("COLUMNS", DEFAULT_WIDTH)))
    except ValueError:
        return DEFAULT_WIDTH


def show_demo(result: DemoResult, ledger: str, out: TextIO, *, width: int = DEFAULT_WIDTH) -> None:
    """Print what the demo did: a summary, the refusals, the metrics, then the spend report."""
    from ..demo import AGENT_LIMIT
    from ..report import build_report

    def say(text: str = "", indent: str = "") -> None:
        lines = textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ")
        print("\n".join(lines), file=out)

    totals = result.totals
    print(file=out)
    print("== What happened ==", file=out)
    rows = [
        ["calls that ran", f"{totals.calls:,}"],
        ["calls refused", f"{totals.refused:,}, before the LLM was called"],
        ["tokens", f"{totals.input_tokens:,} in, {totals.output_tokens:,} out"],
        ["spent", f"${plain(totals.spent)} in {result.seconds:.1f} s"],
    ]
    stopped = next((r for r in result.refused if r.what.startswith("agent")), None)
    agent = f"{result.agent_user}: {result.agent_steps} steps, ${money(result.agent_spent)}"
    if stopped is not None:
        agent += f"; step {stopped.what.split()[-1]} refused by its ${plain(AGENT_LIMIT)} cap"
    rows.append(["agent run", agent])
    for crossing in totals.alerts:
        rows.append(
            [
                "alert",
                f"{crossing.budget} passed {percent(crossing.fraction)} of "
                f"${plain(crossing.limit)} ({crossing.period})",
            ]
        )
    for label, text in rows:
        say(f"{label:<16}{text}", "  ")

    print(file=out)
    print(f"== Refused calls: {len(result.refused)} ==", file=out)
    shown: set[tuple[str, str]] = set()
    for refusal in result.refused:
        kind = (refusal.user, refusal.error.budget)
        if kind in shown:
            continue
        shown.add(kind)
        count = sum(1 for r in result.refused if (r.user, r.error.budget) == kind)
        also = f" (and {count - 1} more like it)" if count > 1 else ""
        say(f"- {refusal.user}, {refusal.what} to {refusal.model}{also}:")
        say(f"BudgetExceededError: {refusal.error}", "    ")

    print(file=out)
    if result.metrics is None:
        print("== Metrics ==", file=out)
        say(
            "The OpenTelemetry SDK is not installed (pip install opentelemetry-sdk), so no "
            "metrics were exported; the totals above are what the guard's listeners saw."
        )
    else:
        _metrics_table(result, out, width)

    guard = result.guard
    print(file=out)
    print("== Spend report ==", file=out)
    _budgets_table(build_report(guard, period="current", by=("user",)), out)
    print(file=out)
    spend_table(build_report(guard, period="current", by=("user",)), out)
    print(file=out)
    spend_table(build_report(guard, period="current", by=("model",)), out)
    print(file=out)
    if urlsplit(ledger).scheme == "memory":
        say("The memory:// ledger is gone now; run without --ledger to keep it in a file.")
    else:
        # A command to copy: broken only where the shell allows it, never wrapped.
        print("See it again:", file=out)
        print("  budgetguard report --by user,model \\", file=out)
        print(f"      --ledger {safe_url(ledger)}", file=out)


def _metrics_table(result: DemoResult, out: TextIO, width: int) -> None:
    from ..demo import metric_summary

    print("== OpenTelemetry metrics (--metrics prints every data point) ==", file=out)
    rows = [
        [name, unit, str(series), total]
        for name, unit, series, total in metric_summary(result.metrics)
    ]
    fixed = max(len(r[0]) for r in rows) + max(len(r[1]) for r in rows) + 1 + 3 * 2
    room = max(12, width - fixed)
    for row in rows:
        if len(row[3]) > room:
            row[3] = row[3][: room - 3] + "..."
    print_table(["instrument", "unit", "n", "total (n: series)"], rows, numeric=[2], out=out)


def _budgets_table(report: Any, out: TextIO) -> None:
    print("Budgets, in their current window:", file=out)
    rows = [
        [
            row.user or "everyone",
            "own" if row.budget.startswith("user:") else row.budget,
            row.period,
            money(row.limit),
            money(row.spent),
            money(row.remaining),
            percent(row.used),
            row.resets_at.strftime("%m-%d %H:%M") if row.resets_at is not None else "never",
        ]
        for row in report.budgets
    ]
    headers = ["who", "budget", "period", "limit $", "spent $", "left $", "used", "resets UTC"]
    print_table(headers, rows, numeric=[3, 4, 5, 6], out=out)
    if report.reservations:
        print(f"Open reservations (calls in flight): {len(report.reservations)}", file=out)
