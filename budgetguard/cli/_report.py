"""Report spend, limits, what is left and open reservations: ``budgetguard report``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

from ..periods import CALENDAR_PERIODS
from ._common import (
    EXIT_OK,
    add_command,
    add_format,
    add_ledger,
    open_guard,
    safe_url,
    time_zone,
)
from ._output import iso, money, percent, plain, print_csv, print_json, print_table, when

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard report`` to the command line."""
    report = add_command(
        commands,
        "report",
        "show spend, limits, what is left, open reservations and reset times",
        "Report what a ledger holds: every budget in its window (limit, spent,\n"
        "reserved by calls in flight, remaining, when it resets), spend broken down\n"
        "by user and/or model, or by tag, and the reservations still open. Limits in\n"
        "dollars show as $, tokens, requests and calls in flight as counts; 'over' is\n"
        "the calls a soft or shadow budget had no room for (it let them run).\n\n"
        "--period current|previous: budgets are shown in their own current or\n"
        "previous window (a monthly budget's month, a daily budget's day). The\n"
        "breakdown covers one calendar window (--calendar, default: the global\n"
        "budget's period, else monthly), summed from per-day tallies: days are those\n"
        "of the time zone of the applications that wrote the ledger (UTC unless they\n"
        "configured tz=), and --tz must match it.\n"
        "--by tag sums the per-day tag tallies of calls made in a budget_scope(tags=...);\n"
        "a call with two tags counts under each, so shares may add up past 100%.\n"
        "--period all: the breakdown covers all time (lifetime tallies; by tag, every\n"
        "day the ledger still keeps); budgets\n"
        "are shown in their current window.\n\n"
        "--format table (default) prints readable tables; csv prints one table, the\n"
        "breakdown when --by is given, else the budgets; json prints everything.\n"
        "Amounts in csv and json are exact decimal strings (dollars, or counts for\n"
        "tokens, requests and calls in flight); tables round dollars to $0.000001.",
        "  budgetguard report --ledger sqlite:///spend.db\n"
        "  budgetguard report --ledger sqlite:///spend.db --by user,model --period previous\n"
        "  budgetguard report --ledger sqlite:///spend.db --by tag\n"
        "  budgetguard report --ledger redis://localhost:6379/0 --by model --format csv "
        "> spend.csv\n"
        "  budgetguard report --ledger sqlite:///spend.db --format json | jq .budgets",
        run,
    )
    add_ledger(report)
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
        metavar="user|model|user,model|tag",
        help="break spend down by user, by model, both, or by tag (default: user)",
    )
    report.add_argument(
        "--calendar",
        choices=CALENDAR_PERIODS,
        default=None,
        help="calendar window of the breakdown for current/previous",
    )
    report.add_argument(
        "--tz",
        type=time_zone,
        default="UTC",
        metavar="ZONE",
        help="time zone of the calendar windows (default: UTC)",
    )
    add_format(report)


def _by(text: str) -> tuple[str, ...]:
    from ..report import BREAKDOWNS

    found = BREAKDOWNS.get(text.replace(" ", "").lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"cannot break spend down by {text!r}; use user, model, user,model or tag"
        )
    return found


def run(args: argparse.Namespace) -> int:
    """Print the report of the ledger in the format asked for."""
    from ..report import build_report

    by = args.by if args.by is not None else ("user",)
    with open_guard(args.ledger, must_exist=True, tz=args.tz) as guard:
        report = build_report(guard, period=args.period, by=by, calendar=args.calendar)
    if args.format == "json":
        print_json(_report_json(report))
    elif args.format == "csv":
        if args.by is not None:
            print_csv(*_spend_rows(report))
        else:
            print_csv(*_budget_rows(report))
    else:
        heading = {"current": "current windows", "previous": "previous windows", "all": "all time"}[
            report.period
        ]
        print(
            f"budgetguard report: {safe_url(args.ledger)}, {heading}, "
            f"at {when(report.generated_at)} UTC"
        )
        print()
        report_tables(report, sys.stdout)
    return EXIT_OK


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
        "subject",
        "unit",
        "mode",
        "over",
    ]
    rows: list[list[object]] = [
        [
            row.budget,
            row.user,
            row.period,
            row.window,
            plain(row.limit),
            plain(row.spent),
            plain(row.reserved),
            plain(row.remaining),
            plain(row.used.quantize(Decimal("0.0001"))),
            iso(row.resets_at),
            row.subject,
            row.unit,
            row.mode,
            row.over,
        ]
        for row in report.budgets
    ]
    return headers, rows


def _spend_rows(report: Any) -> tuple[list[str], list[list[object]]]:
    headers = [*report.by, "spent", "since", "until"]
    rows: list[list[object]] = [
        [
            *(getattr(row, field) for field in report.by),
            plain(row.spent),
            iso(report.since),
            iso(report.until),
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
                "subject": row.subject,
                "unit": row.unit,
                "mode": row.mode,
                "over": row.over,
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


def report_tables(report: Any, out: TextIO) -> None:
    """Print the budgets, the spend breakdown and the open reservations as tables."""
    label = "their previous window" if report.period == "previous" else "their current window"
    print(f"Budgets, in {label}:", file=out)
    if report.budgets:
        rows = [
            [
                _shown_budget(row),
                row.user or "-",
                row.period if row.unit != "concurrency" else "-",
                row.window,
                _amount(row.limit, row.unit),
                _amount(row.spent, row.unit),
                _amount(row.reserved, row.unit),
                _amount(row.remaining, row.unit),
                percent(row.used),
                str(row.over) if row.mode != "hard" else "-",
                when(row.resets_at) if row.unit != "concurrency" else "-",
            ]
            for row in report.budgets
        ]
        ends = "ended (UTC)" if report.period == "previous" else "resets (UTC)"
        print_table(
            [
                "budget",
                "user",
                "period",
                "window",
                "limit",
                "spent",
                "reserved",
                "remaining",
                "used",
                "over",
                ends,
            ],
            rows,
            numeric=[4, 5, 6, 7, 8, 9],
            out=out,
        )
    else:
        print("  none set (budgetguard budgets set --help)", file=out)
    print(file=out)
    spend_table(report, out)
    print(file=out)
    if report.reservations:
        print(f"Open reservations (calls in flight): {len(report.reservations)}", file=out)
        rows = [
            [row.id, ", ".join(row.budgets), money(row.held), when(row.expires_at)]
            for row in report.reservations[:20]
        ]
        print_table(["id", "holds on", "held $", "expires (UTC)"], rows, numeric=[2], out=out)
        if len(report.reservations) > 20:
            print(f"  ... and {len(report.reservations) - 20} more", file=out)
    else:
        print("Open reservations (calls in flight): none", file=out)


def _shown_budget(row: Any) -> str:
    """Return a budget row's name, with its unit and mode when they are not the usual ones."""
    name = str(row.budget)
    if row.subject is not None and row.subject != name.rpartition("@")[2]:
        name = f"{name} ({row.subject})"  # "tag:tenant=* (tag:tenant=acme)"
    if row.mode != "hard":
        name += f" [{row.mode}]"
    return name


def _amount(amount: Decimal, unit: str) -> str:
    """Return ``$1.50`` for dollars, a plain count for tokens, requests and calls."""
    return f"${money(amount)}" if unit == "usd" else plain(amount)


def spend_table(report: Any, out: TextIO) -> None:
    """Print the spend breakdown of a report, with each row's share of the total."""
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
            money(row.spent),
            percent(row.spent / total) if total else "-",
        ]
        for row in report.spend
    ]
    rows.append([*(["total"] + [""] * (len(report.by) - 1)), money(total), ""])
    width = len(report.by)
    print_table([*report.by, "spent $", "share"], rows, numeric=[width, width + 1], out=out)


def _day(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).date().isoformat() if moment is not None else "-"
