"""The ``budgetguard`` command: a demo, spend reports, budgets, prices and costs.

Exit status: 0 on success, 1 when something went wrong at run time (a ledger
that cannot be reached, an unknown model, ...), 2 for bad arguments, 130 when
interrupted. Errors are one line on stderr, without a traceback (set
``BUDGETGUARD_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from . import __version__
from .budgets import DEFAULT, GLOBAL, Budget
from .errors import BudgetGuardError, ConfigurationError
from .guard import BudgetGuard
from .periods import CALENDAR_PERIODS, parse_period, parse_tz, tz_name

__all__ = ["main"]

PROG = "budgetguard"
LEDGER_ENV = "BUDGETGUARD_LEDGER"
FORMATS = ("table", "csv", "json")

DESCRIPTION = """\
Keep LLM spend under control: see who spent what, set limits, price calls.

Every command that reads or changes budgets takes --ledger URL, the same URL
your application passes to budgetguard.configure(ledger=...):
  memory://                     this process only (the demo's default)
  sqlite:///spend.db            a file shared by the processes of one host
  redis://localhost:6379/0      shared by every host (pip install 'budgetguard[redis]')
Set BUDGETGUARD_LEDGER to skip typing it.
"""

EPILOG = """\
start here:
  budgetguard demo                              see budgetguard at work, offline, no API key
  budgetguard demo --ledger sqlite:///spend.db  ... and keep what it spent
  budgetguard report --ledger sqlite:///spend.db
  budgetguard budgets set --ledger sqlite:///spend.db --user alice --limit 10 --period monthly
  budgetguard prices claude-sonnet-4-5
  budgetguard cost --model gpt-4o --input 12000 --output 800

Run 'budgetguard COMMAND --help' for the options of one command.
"""


class CommandError(Exception):
    """Stop the command with a one-line message and exit status 1."""


# -- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``budgetguard`` command line; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_library_logs()
    try:
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `budgetguard prices | head`: the reader left; say nothing.
        _silence_stdout()
        return 0
    except UsageError as error:
        args.parser.error(str(error))  # exits with status 2
        return 2
    except (CommandError, BudgetGuardError, OSError, ValueError, LookupError) as error:
        if os.environ.get("BUDGETGUARD_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug: still one line, with a way to see more
        if os.environ.get("BUDGETGUARD_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(error).__name__}: {_one_line(error)} "
            "(set BUDGETGUARD_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1


class UsageError(Exception):
    """Reject an argument whose problem shows only once it is used (exit status 2)."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _quiet_library_logs() -> None:
    """Show the library's warnings (alerts, unpriced models) as plain lines on stderr."""
    logger = logging.getLogger("budgetguard")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


# -- argument types: a bad value is a usage error (exit status 2) -----------------------------


def _amount(text: str) -> Decimal:
    from .money import to_decimal

    try:
        return to_decimal(text, "limit")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of tokens: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a token count cannot be negative: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _period(text: str) -> object:
    """Turn a period name or a window length (3600s, 90m, 1h, 7d) into a budget period."""
    value = text.strip().lower()
    if value in CALENDAR_PERIODS or value == "lifetime":
        return value
    if value and value[-1] in _UNITS and value[:-1].isdigit():
        seconds = int(value[:-1]) * _UNITS[value[-1]]
    elif value.isdigit():
        seconds = int(value)
    else:
        raise argparse.ArgumentTypeError(
            f"unknown period {text!r}; use daily, weekly, monthly, yearly, lifetime, "
            "or a window length such as 3600s, 90m, 12h, 7d"
        )
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a period must be longer than zero, got {text!r}")
    parse_period(seconds)
    return seconds


def _tz(text: str) -> str:
    try:
        parse_tz(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(
            f"{error} (use an IANA name such as Europe/Paris)"
        ) from None
    return text


def _ledger_url(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"not a ledger URL: {text!r}; use memory://, sqlite:///path/spend.db "
            "or redis://host:6379/0"
        )
    return text


def _by(text: str) -> tuple[str, ...]:
    from .report import BREAKDOWNS

    found = BREAKDOWNS.get(text.replace(" ", "").lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"cannot break spend down by {text!r}; use user, model or user,model"
        )
    return found


# -- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True

    def command(
        name: str,
        summary: str,
        description: str,
        epilog: str,
        run: Callable[[argparse.Namespace], int],
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run, parser=sub)
        return sub

    demo = command(
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
        _run_demo,
    )
    demo.add_argument(
        "--ledger",
        type=_ledger_url,
        default="memory://",
        metavar="URL",
        help="where spend is kept (default: memory://, gone when the demo ends)",
    )
    demo.add_argument(
        "--users",
        type=_positive_int,
        default=6,
        metavar="N",
        help="how many users (default: 6, at least 2)",
    )
    demo.add_argument(
        "--calls",
        type=_positive_int,
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

    report = command(
        "report",
        "show spend, limits, what is left, open reservations and reset times",
        "Report what a ledger holds: every budget in its window (limit, spent,\n"
        "reserved by calls in flight, remaining, when it resets), spend broken down\n"
        "by user and/or model, and the reservations still open.\n\n"
        "--period current|previous: budgets are shown in their own current or\n"
        "previous window (a monthly budget's month, a daily budget's day). The\n"
        "breakdown covers one calendar window (--calendar, default: the global\n"
        "budget's period, else monthly), summed from per-day tallies: days are those\n"
        "of the time zone of the applications that wrote the ledger (UTC unless they\n"
        "configured tz=), and --tz must match it.\n"
        "--period all: the breakdown covers all time (lifetime tallies); budgets\n"
        "are shown in their current window.\n\n"
        "--format table (default) prints readable tables; csv prints one table, the\n"
        "breakdown when --by is given, else the budgets; json prints everything.\n"
        "Amounts in csv and json are exact decimal strings in USD; tables round\n"
        "them to $0.000001.",
        "examples:\n"
        "  budgetguard report --ledger sqlite:///spend.db\n"
        "  budgetguard report --ledger sqlite:///spend.db --by user,model --period previous\n"
        "  budgetguard report --ledger redis://localhost:6379/0 --by model --format csv "
        "> spend.csv\n"
        "  budgetguard report --ledger sqlite:///spend.db --format json | jq .budgets",
        _run_report,
    )
    _add_ledger(report)
    report.add_argument(
        "--period",
        choices=("current", "previous", "all"),
        default="current",
        help="which window to report (default: current)",
    )
    report.add_argument(
        "--by",
        type=_by,
        default=None,
        metavar="user|model|user,model",
        help="break spend down by user, by model, or both (default: user)",
    )
    report.add_argument(
        "--calendar",
        choices=CALENDAR_PERIODS,
        default=None,
        help="calendar window of the breakdown for current/previous",
    )
    report.add_argument(
        "--tz",
        type=_tz,
        default="UTC",
        metavar="ZONE",
        help="time zone of the calendar windows (default: UTC)",
    )
    _add_format(report)

    budgets = command(
        "budgets",
        "set, list or delete budgets",
        "Manage the budgets stored in a ledger. Applications sharing the ledger\n"
        "pick a change up within a second (SQLite, Redis).",
        "examples:\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --global --limit 500 "
        "--period daily\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --default --limit 5 "
        "--period monthly\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --user alice --limit 10 "
        "--period monthly --tz Europe/Paris\n"
        "  budgetguard budgets list --ledger sqlite:///spend.db\n"
        "  budgetguard budgets delete --ledger sqlite:///spend.db --user alice",
        _run_budgets_help,
    )
    actions = budgets.add_subparsers(title="actions", metavar="ACTION")
    actions.required = True

    def action(
        name: str, summary: str, epilog: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = actions.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run, parser=sub)
        return sub

    set_ = action(
        "set",
        "set (or change) a budget: one user's, the global one, or the default for every user",
        "A period is daily, weekly, monthly or yearly (calendar windows in --tz), lifetime,\n"
        "or a window length such as 3600s, 90m, 12h, 7d. Changing a limit keeps what was\n"
        "already spent in the current window.\n\n"
        "examples:\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --user alice --limit 10 "
        "--period monthly\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --global --limit 500 "
        "--period daily",
        _run_budgets_set,
    )
    _add_ledger(set_)
    _add_owner(set_)
    set_.add_argument(
        "--limit",
        type=_amount,
        required=True,
        metavar="USD",
        help="the most that may be spent per period, in dollars (e.g. 10, 0.50)",
    )
    set_.add_argument(
        "--period",
        type=_period,
        default="monthly",
        metavar="PERIOD",
        help="daily, weekly, monthly (default), yearly, lifetime, or e.g. 3600s",
    )
    set_.add_argument(
        "--tz",
        type=_tz,
        default="UTC",
        metavar="ZONE",
        help="time zone of calendar periods (default: UTC)",
    )

    list_ = action(
        "list",
        "list the budgets and their current window",
        "example:\n  budgetguard budgets list --ledger sqlite:///spend.db --format csv",
        _run_budgets_list,
    )
    _add_ledger(list_)
    _add_format(list_)

    delete = action(
        "delete",
        "delete a budget (what was spent stays recorded)",
        "example:\n  budgetguard budgets delete --ledger sqlite:///spend.db --user alice",
        _run_budgets_delete,
    )
    _add_ledger(delete)
    _add_owner(delete)

    prices = command(
        "prices",
        "show a model's prices, or search the price table",
        "Show the prices budgetguard charges, in USD per million tokens.\n"
        "With MODEL: that model's prices (dated snapshots and routing prefixes such as\n"
        "'azure/' or 'bedrock/' are understood), or the models whose names contain\n"
        "MODEL. Without: the whole table.",
        "examples:\n"
        "  budgetguard prices gpt-4o-2024-08-06\n"
        "  budgetguard prices claude\n"
        "  budgetguard prices --provider gcp.gen_ai --format csv",
        _run_prices,
    )
    prices.add_argument("model", nargs="?", metavar="MODEL", help="a model name or part of one")
    prices.add_argument(
        "--provider",
        metavar="NAME",
        help="only this provider's models (openai, anthropic, gcp.gen_ai, ...)",
    )
    _add_format(prices)

    cost = command(
        "cost",
        "price one call from its token counts",
        "Price one call exactly, from its token counts. Every count is its own bucket,\n"
        "as budgetguard bills them: --input excludes cache reads (--cached) and\n"
        "--output excludes reasoning tokens (--reasoning).",
        "examples:\n"
        "  budgetguard cost --model gpt-4o --input 12000 --output 800\n"
        "  budgetguard cost --model claude-sonnet-4-5 --input 2000 --cached 30000 --output 500\n"
        "  budgetguard cost --model o4-mini --input 900 --output 300 --reasoning 2000",
        _run_cost,
    )
    cost.add_argument("--model", required=True, metavar="MODEL", help="the model to price")
    cost.add_argument(
        "--input", type=_count, required=True, metavar="N", help="uncached input tokens"
    )
    cost.add_argument(
        "--output", type=_count, required=True, metavar="N", help="visible output tokens"
    )
    cost.add_argument(
        "--cached",
        type=_count,
        default=0,
        metavar="N",
        help="input tokens read from the prompt cache",
    )
    cost.add_argument(
        "--cache-write",
        type=_count,
        default=0,
        metavar="N",
        help="input tokens written to the prompt cache (5-minute lifetime)",
    )
    cost.add_argument(
        "--reasoning",
        type=_count,
        default=0,
        metavar="N",
        help="reasoning (thinking) output tokens",
    )
    cost.add_argument(
        "--tier",
        default="standard",
        metavar="TIER",
        help="service tier: standard (default), batch, flex, priority",
    )
    cost.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="output format (default: table)",
    )

    prune = command(
        "prune",
        "delete the counters of windows that ended long ago",
        "Budgets reset lazily: every day, week or month leaves its counters in the\n"
        "ledger. Delete those of windows that ended before a date (lifetime totals,\n"
        "current windows and calls in flight are kept).",
        "examples:\n"
        "  budgetguard prune --ledger sqlite:///spend.db --keep-days 90\n"
        "  budgetguard prune --ledger redis://localhost:6379/0 --before 2026-01-01",
        _run_prune,
    )
    _add_ledger(prune)
    horizon = prune.add_mutually_exclusive_group(required=True)
    horizon.add_argument(
        "--before", type=_utc_date, metavar="YYYY-MM-DD", help="delete windows ended before this"
    )
    horizon.add_argument(
        "--keep-days", type=_positive_int, metavar="N", help="keep the last N days of windows"
    )

    serve = command(
        "serve",
        "serve the LiteLLM-compatible budget API over HTTP",
        "Serve budgetguard's LiteLLM-compatible budget API for a ledger over HTTP.",
        "example:\n  budgetguard serve --ledger redis://localhost:6379/0 --port 8000",
        _run_serve,
    )
    _add_ledger(serve)
    importlib.import_module("budgetguard.server").add_arguments(serve)
    return parser


def _add_ledger(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(LEDGER_ENV)
    parser.add_argument(
        "--ledger",
        type=_ledger_url,
        default=default,
        required=default is None,
        metavar="URL",
        help=f"the ledger: sqlite:///spend.db, redis://host:6379/0, ... (or set {LEDGER_ENV})",
    )


def _add_owner(parser: argparse.ArgumentParser) -> None:
    owner = parser.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user", metavar="ID", help="one user's budget")
    owner.add_argument(
        "--global",
        dest="everyone",
        action="store_true",
        help="the global budget: all users' spend together",
    )
    owner.add_argument(
        "--default",
        action="store_true",
        help="the budget of every user without one of their own (each separately)",
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table for people (default), csv or json for scripts",
    )


# -- opening a ledger -------------------------------------------------------------------------


@contextmanager
def _open_guard(
    url: str, *, must_exist: bool = False, tz: str = "UTC", **options: Any
) -> Iterator[BudgetGuard]:
    """Open the ledger at ``url`` and check that it answers; close it afterwards."""
    if must_exist:
        _check_exists(url)
    options.setdefault("metrics", False)
    try:
        guard = BudgetGuard(url, tz=tz, **options)
    except ConfigurationError as error:
        raise UsageError(f"argument --ledger: {error}") from None
    try:
        guard.ledger.ping()
        yield guard
    finally:
        guard.close()


def _check_exists(url: str) -> None:
    """Refuse to report on a SQLite file that is not there (opening it would create it)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if path and not path.startswith("file:") and path != ":memory:":
        path = os.path.abspath(path)
        if not os.path.exists(path):
            raise CommandError(
                f"no ledger at {path}: the file does not exist (check the path; "
                "sqlite:///rel.db is relative, sqlite:////abs.db absolute)"
            )


# -- formatting -------------------------------------------------------------------------------


def _plain(amount: Decimal) -> str:
    """Return an exact amount without exponent: ``0.00001``, ``25``."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _money(amount: Decimal) -> str:
    """Return an amount for a table: at most six decimals, at least two."""
    rounded = amount.quantize(Decimal("0.000001"))
    text = _plain(rounded)
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat() if moment is not None else None


def _percent(fraction: Decimal) -> str:
    return f"{(fraction * 100).quantize(Decimal('0.1'))}%"


def _print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[int] = (),
    out: TextIO | None = None,
) -> None:
    """Print aligned columns; numeric columns line up on their decimal point."""
    out = out or sys.stdout
    cells = [list(row) for row in rows]
    for column in numeric:
        decimals = max((len(_after_point(row[column])) for row in cells), default=0)
        for row in cells:
            tail = _after_point(row[column])
            row[column] = row[column] + " " * (decimals - len(tail))
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    right = set(numeric)

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if i in right else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)), file=out)
    print("  ".join("-" * width for width in widths), file=out)
    for row in cells:
        print(line(row), file=out)


def _after_point(text: str) -> str:
    """Return what follows the decimal point, ``.`` included (``"%"`` counts as a digit)."""
    if "." not in text:
        return ""
    return text[text.index(".") :]


def _print_csv(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, datetime):
        return _iso(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# -- demo -------------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.users < 2:
        raise UsageError("argument --users: the demo needs at least 2 users")
    if args.calls < args.users:
        raise UsageError(f"argument --calls: give at least one call per user ({args.users})")
    if args.latency < 0 or args.latency > 5:
        raise UsageError("argument --latency: use 0 to 5 seconds")
    progress = sys.stderr
    print(f"budgetguard demo: ledger {_safe(args.ledger)}, seed {args.seed}", file=progress)

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
    return 0


def _safe(url: str) -> str:
    """Return a URL without its password, for output."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return url.replace(parts.netloc, netloc)
    return url


def _show_demo(result: Any, args: argparse.Namespace) -> None:
    from .report import build_report

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
        f"spent: ${_plain(totals.spent)}",
        file=out,
    )
    rows = [
        [model, _money(amount)]
        for model, amount in sorted(totals.by_model.items(), key=lambda item: -item[1])
    ]
    _print_table(["model", "spent"], rows, numeric=[1])
    for crossing in totals.alerts:
        print(
            f"  alert: budget {crossing.budget} passed {_percent(crossing.fraction)} of "
            f"${_plain(crossing.limit)} ({crossing.period}): ${_plain(crossing.spent)} spent",
            file=out,
        )

    guard = result.guard
    report = build_report(guard, period="current", by=("user",))
    print(file=out)
    print(f"== Spend report ({result.seconds:.2f}s, ledger {_safe(args.ledger)}) ==", file=out)
    _report_tables(report, out)
    by_model = build_report(guard, period="current", by=("model",))
    print(file=out)
    _spend_table(by_model, out)

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
        f"The agent run for {result.agent_user} (capped at ${_plain(_agent_limit())}) made "
        f"{result.agent_steps} steps for ${_money(result.agent_spent)}{why}.",
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
            f"See it again: budgetguard report --ledger {_safe(args.ledger)} --by user,model",
            file=out,
        )


def _agent_limit() -> Decimal:
    from .demo import AGENT_LIMIT

    return AGENT_LIMIT


# -- report -----------------------------------------------------------------------------------


def _run_report(args: argparse.Namespace) -> int:
    from .report import build_report

    by = args.by if args.by is not None else ("user",)
    with _open_guard(args.ledger, must_exist=True, tz=args.tz) as guard:
        report = build_report(guard, period=args.period, by=by, calendar=args.calendar)
    if args.format == "json":
        _print_json(_report_json(report))
    elif args.format == "csv":
        if args.by is not None:
            _print_csv(*_spend_rows(report))
        else:
            _print_csv(*_budget_rows(report))
    else:
        heading = {"current": "current windows", "previous": "previous windows", "all": "all time"}[
            report.period
        ]
        print(
            f"budgetguard report: {_safe(args.ledger)}, {heading}, "
            f"at {_when(report.generated_at)} UTC"
        )
        print()
        _report_tables(report, sys.stdout)
    return 0


def _budget_rows(report: Any) -> tuple[list[str], list[list[object]]]:
    headers = [
        "budget",
        "user",
        "period",
        "window",
        "limit",
        "spent",
        "reserved",
        "remaining",
        "used",
        "resets_at",
    ]
    rows: list[list[object]] = [
        [
            row.budget,
            row.user,
            row.period,
            row.window,
            _plain(row.limit),
            _plain(row.spent),
            _plain(row.reserved),
            _plain(row.remaining),
            _plain(row.used.quantize(Decimal("0.0001"))),
            _iso(row.resets_at),
        ]
        for row in report.budgets
    ]
    return headers, rows


def _spend_rows(report: Any) -> tuple[list[str], list[list[object]]]:
    headers = [*report.by, "spent", "since", "until"]
    rows: list[list[object]] = [
        [
            *(getattr(row, field) for field in report.by),
            _plain(row.spent),
            _iso(report.since),
            _iso(report.until),
        ]
        for row in report.spend
    ]
    return headers, rows


def _report_json(report: Any) -> dict[str, object]:
    return {
        "generated_at": report.generated_at,
        "period": report.period,
        "breakdown": {
            "by": list(report.by),
            "calendar": report.calendar,
            "since": report.since,
            "until": report.until,
            "rows": [
                {**{field: getattr(row, field) for field in report.by}, "spent": row.spent}
                for row in report.spend
            ],
            "total": report.total,
        },
        "budgets": [
            {
                "budget": row.budget,
                "user": row.user,
                "period": row.period,
                "window": row.window,
                "limit": row.limit,
                "spent": row.spent,
                "reserved": row.reserved,
                "remaining": row.remaining,
                "used": row.used.quantize(Decimal("0.0001")),
                "resets_at": row.resets_at,
            }
            for row in report.budgets
        ],
        "open_reservations": [
            {
                "id": row.id,
                "budgets": list(row.budgets),
                "held": row.held,
                "expires_at": row.expires_at,
            }
            for row in report.reservations
        ],
    }


def _report_tables(report: Any, out: TextIO) -> None:
    label = "their previous window" if report.period == "previous" else "their current window"
    print(f"Budgets, in {label}:", file=out)
    if report.budgets:
        rows = [
            [
                row.budget,
                row.user or "-",
                row.period,
                row.window,
                _money(row.limit),
                _money(row.spent),
                _money(row.reserved),
                _money(row.remaining),
                _percent(row.used),
                _when(row.resets_at),
            ]
            for row in report.budgets
        ]
        ends = "ended (UTC)" if report.period == "previous" else "resets (UTC)"
        _print_table(
            [
                "budget",
                "user",
                "period",
                "window",
                "limit $",
                "spent $",
                "reserved $",
                "remaining $",
                "used",
                ends,
            ],
            rows,
            numeric=[4, 5, 6, 7, 8],
            out=out,
        )
    else:
        print("  none set (budgetguard budgets set --help)", file=out)
    print(file=out)
    _spend_table(report, out)
    print(file=out)
    if report.reservations:
        print(f"Open reservations (calls in flight): {len(report.reservations)}", file=out)
        rows = [
            [row.id, ", ".join(row.budgets), _money(row.held), _when(row.expires_at)]
            for row in report.reservations[:20]
        ]
        _print_table(["id", "holds on", "held $", "expires (UTC)"], rows, numeric=[2], out=out)
        if len(report.reservations) > 20:
            print(f"  ... and {len(report.reservations) - 20} more", file=out)
    else:
        print("Open reservations (calls in flight): none", file=out)


def _spend_table(report: Any, out: TextIO) -> None:
    what = " and ".join(report.by)
    if report.period == "all":
        print(f"Spend by {what}, all time:", file=out)
    else:
        print(
            f"Spend by {what}, {report.calendar} window {_day(report.since)} to "
            f"{_day(report.until)} (UTC days):",
            file=out,
        )
    if not report.spend:
        print("  nothing spent", file=out)
        return
    total = report.total
    rows = [
        [
            *((getattr(row, field) or "(none)") for field in report.by),
            _money(row.spent),
            _percent(row.spent / total) if total else "-",
        ]
        for row in report.spend
    ]
    rows.append([*(["total"] + [""] * (len(report.by) - 1)), _money(total), ""])
    width = len(report.by)
    _print_table([*report.by, "spent $", "share"], rows, numeric=[width, width + 1], out=out)


def _day(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).date().isoformat() if moment is not None else "-"


# -- budgets ----------------------------------------------------------------------------------


def _run_budgets_help(args: argparse.Namespace) -> int:
    args.parser.print_help()
    return 2


def _owner(args: argparse.Namespace) -> tuple[str, str | None]:
    """Return (budget name, user) from --user / --global / --default."""
    if args.default:
        return DEFAULT, None
    if args.everyone:
        return GLOBAL, None
    user: str = args.user
    if not user.strip():
        raise UsageError("argument --user: a user id cannot be empty")
    return f"user:{user}", user


def _run_budgets_set(args: argparse.Namespace) -> int:
    name, user = _owner(args)
    period = None if args.period == "lifetime" else args.period
    with _open_guard(args.ledger, tz=args.tz) as guard:
        if name == DEFAULT:
            budget = guard.set_default_budget(args.limit, period=period, tz=args.tz)
        else:
            budget = guard.set_budget(args.limit, user=user, period=period, tz=args.tz)
        now = guard.clock()
        window = budget.window(now)
        spent = guard.spend(user) if name != DEFAULT else None
    resets = f", resets {_when(window.end)} UTC" if window.end is not None else ""
    so_far = f"; ${_plain(spent)} spent so far in this window" if spent is not None else ""
    print(
        f"set budget {name}: ${_plain(budget.limit)} {budget.period.label} "
        f"({tz_name(budget.tz)}){resets}{so_far}"
    )
    if urlsplit(args.ledger).scheme.lower() == "memory":
        print(
            f"{PROG}: note: a memory:// ledger ends with this command; nothing was kept",
            file=sys.stderr,
        )
    return 0


def _run_budgets_list(args: argparse.Namespace) -> int:
    with _open_guard(args.ledger, must_exist=True) as guard:
        budgets = guard.budgets()
        statuses = {status.name: status for status in guard.budget_statuses()}
    rows: list[tuple[Budget, Any]] = [(budget, statuses.get(budget.name)) for budget in budgets]
    order = {GLOBAL: 0, DEFAULT: 1}
    rows.sort(key=lambda item: (order.get(item[0].name, 2), item[0].name))
    headers = [
        "budget",
        "user",
        "limit",
        "period",
        "tz",
        "spent",
        "remaining",
        "resets_at",
        "created_at",
    ]
    data: list[list[Any]] = [
        [
            budget.name,
            budget.user,
            budget.limit,
            budget.period.label,
            tz_name(budget.tz),
            status.spent if status is not None else None,
            status.remaining if status is not None else None,
            status.resets_at if status is not None else None,
            budget.created_at,
        ]
        for budget, status in rows
    ]
    if args.format == "json":
        _print_json([dict(zip(headers, row, strict=True)) for row in data])
    elif args.format == "csv":
        _print_csv(headers, [[_cell(value) for value in row] for row in data])
    elif not data:
        print("no budgets set (budgetguard budgets set --help)")
    else:
        table = [
            [
                str(row[0]),
                row[1] or "-",
                _money(row[2]),
                row[3],
                row[4],
                _money(row[5]) if row[5] is not None else "-",
                _money(row[6]) if row[6] is not None else "-",
                _when(row[7]) if row[5] is not None else "-",
                _when(row[8]),
            ]
            for row in data
        ]
        _print_table(
            [
                "budget",
                "user",
                "limit $",
                "period",
                "tz",
                "spent $",
                "remaining $",
                "resets (UTC)",
                "created (UTC)",
            ],
            table,
            numeric=[2, 5, 6],
        )
    return 0


def _cell(value: object) -> object:
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _run_budgets_delete(args: argparse.Namespace) -> int:
    name, user = _owner(args)
    with _open_guard(args.ledger, must_exist=True) as guard:
        deleted = guard.delete_default_budget() if name == DEFAULT else guard.delete_budget(user)
    if not deleted:
        raise CommandError(f"no budget {name} in {_safe(args.ledger)}")
    print(f"deleted budget {name} (its spend records stay in the ledger)")
    return 0


# -- prices and cost --------------------------------------------------------------------------


_PRICE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write_5m",
    "cache_write_1h",
    "reasoning",
    "input_audio",
    "output_audio",
    "input_image",
)


def _run_prices(args: argparse.Namespace) -> int:
    from .pricing import default_table

    table = default_table()
    entries = sorted(table, key=lambda p: ((p.provider or ""), p.model))
    if args.provider:
        entries = [p for p in entries if (p.provider or "").lower() == args.provider.lower()]
        if not entries:
            known = sorted({p.provider for p in table if p.provider})
            raise CommandError(
                f"no models of provider {args.provider!r}; known: {', '.join(known)}"
            )
    if args.model:
        found = table.lookup(args.model)
        if found is not None and (not args.provider or found in entries):
            _show_price(args.model, found, args.format)
            return 0
        needle = args.model.lower()
        entries = [
            p
            for p in entries
            if needle in p.model.lower() or any(needle in a.lower() for a in p.aliases)
        ]
        if not entries:
            names = [p.model for p in table]
            close = difflib.get_close_matches(args.model.lower(), names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CommandError(f"no price known for model {args.model!r}{hint}")
    headers = [
        "model",
        "provider",
        "input",
        "output",
        "cached_input",
        "cache_write_5m",
        "reasoning",
    ]
    rows = [
        [p.model, p.provider, p.input, p.output, p.cached_input, p.cache_write_5m, p.reasoning]
        for p in entries
    ]
    if args.format == "json":
        _print_json([_price_json(p) for p in entries])
    elif args.format == "csv":
        _print_csv(headers, [[_cell(v) for v in row] for row in rows])
    else:
        print(
            "USD per million tokens; '-' is billed at the nearest known price "
            "(cached input at input, reasoning at output)"
        )
        table_rows = [
            [
                str(r[0]),
                str(r[1] or "-"),
                *(_plain(v) if isinstance(v, Decimal) else "-" for v in r[2:]),
            ]
            for r in rows
        ]
        _print_table(headers, table_rows, numeric=[2, 3, 4, 5, 6])
        print(f"{len(rows)} models")
    return 0


def _price_json(price: Any) -> dict[str, object]:
    data: dict[str, object] = {"model": price.model, "provider": price.provider}
    for name in _PRICE_FIELDS:
        data[name] = getattr(price, name)
    data["aliases"] = list(price.aliases)
    data["long_context"] = [
        {
            "above_input_tokens": tier.above_input_tokens,
            "input": tier.price.input,
            "output": tier.price.output,
        }
        for tier in price.long_context
    ]
    data["service_tiers"] = {
        name: {"input": tier.input, "output": tier.output}
        for name, tier in price.service_tiers.items()
    }
    data["per_request"] = dict(price.per_request)
    data["source"] = price.source
    data["checked"] = price.checked
    return data


def _show_price(asked: str, price: Any, form: str) -> None:
    if form == "json":
        _print_json(_price_json(price))
        return
    if form == "csv":
        data = _price_json(price)
        headers = ["model", "provider", *_PRICE_FIELDS]
        _print_csv(headers, [[_cell(data[h]) for h in headers]])
        return
    if asked.strip().lower() != price.model.lower():
        print(f"{asked} is priced as {price.model}")
    print(f"{price.model} ({price.provider or 'unknown provider'}), USD per million tokens:")
    rows = []
    for name in _PRICE_FIELDS:
        value = getattr(price, name)
        if value is not None:
            rows.append([name.replace("_", " "), _plain(value)])
    for tier in price.long_context:
        rows.append([f"input above {tier.above_input_tokens:,} tokens", _plain(tier.price.input)])
        rows.append([f"output above {tier.above_input_tokens:,} tokens", _plain(tier.price.output)])
    for name, tier in sorted(price.service_tiers.items()):
        rows.append(
            [f"{name} tier input / output", f"{_plain(tier.input)} / {_plain(tier.output)}"]
        )
    for name, fee in sorted(price.per_request.items()):
        rows.append([f"{name.replace('_', ' ')} (per request)", _plain(fee)])
    _print_table(["price", "USD"], rows)
    if price.aliases:
        print(f"also known as: {', '.join(price.aliases)}")
    checked = f", checked {price.checked}" if price.checked else ""
    print(f"source: {price.source}{checked}")


def _run_cost(args: argparse.Namespace) -> int:
    from .errors import UnknownModelError
    from .pricing import cost_of, default_table
    from .usage import Usage

    usage = Usage(
        input_tokens=args.input,
        cached_input_tokens=args.cached,
        cache_write_5m_tokens=args.cache_write,
        output_tokens=args.output,
        reasoning_tokens=args.reasoning,
        model=args.model,
    )
    try:
        cost = cost_of(usage, args.model, tier=args.tier)
    except UnknownModelError:
        names = [p.model for p in default_table()]
        close = difflib.get_close_matches(args.model.lower(), names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CommandError(
            f"no price known for model {args.model!r}{hint} (see 'budgetguard prices')"
        ) from None
    except ConfigurationError as error:
        raise UsageError(f"argument --tier: {error}") from None
    tokens = {
        "input": args.input,
        "cached_input": args.cached,
        "cache_write_5m": args.cache_write,
        "output": args.output,
        "reasoning": args.reasoning,
    }
    if args.format == "json":
        _print_json(
            {
                "model": args.model,
                "priced_as": cost.model,
                "tier": cost.tier,
                "tokens": tokens,
                "breakdown": dict(cost.breakdown),
                "total": cost.total,
            }
        )
        return 0
    priced = f" (priced as {cost.model})" if cost.model.lower() != args.model.lower() else ""
    tier = f", {cost.tier} tier" if cost.tier != "standard" else ""
    print(f"{args.model}{priced}{tier}")
    rows = []
    for name, amount in cost.breakdown.items():
        count = tokens.get(name, 0)
        unit = getattr(cost.price, name, None)
        rate = f"${_plain(unit)}/M" if isinstance(unit, Decimal) else "-"
        if name == "cached_input" and cost.price.cached_input is None:
            rate = f"${_plain(cost.price.input)}/M"
        if name == "reasoning" and cost.price.reasoning is None:
            rate = f"${_plain(cost.price.output)}/M"
        if name == "cache_write_5m" and cost.price.cache_write_5m is None:
            rate = f"${_plain(cost.price.input)}/M"
        rows.append([name.replace("_", " "), f"{count:,}", rate, _plain(amount)])
    rows.append(["total", f"{sum(tokens.values()):,}", "", _plain(cost.total)])
    _print_table(["tokens", "count", "price", "USD"], rows, numeric=[1, 3])
    return 0


# -- serve ------------------------------------------------------------------------------------


def _utc_date(text: str) -> datetime:
    """Parse ``YYYY-MM-DD`` as midnight UTC."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _run_prune(args: argparse.Namespace) -> int:
    before: datetime = args.before or (datetime.now(timezone.utc) - timedelta(days=args.keep_days))
    with _open_guard(args.ledger, must_exist=True) as guard:
        removed = guard.prune(before)
    print(f"pruned {removed} counters of windows that ended before {before.date().isoformat()}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    # The service, its options and its exit statuses live in budgetguard.server.
    status: int = importlib.import_module("budgetguard.server").run_from_args(args)
    return status


if __name__ == "__main__":  # pragma: no cover - python -m budgetguard.cli
    sys.exit(main())
