"""Delete the counters of windows that ended long ago: ``budgetguard prune``."""

from __future__ import annotations

import argparse
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING

from ._common import EXIT_OK, UsageError, add_command, add_ledger, open_guard, positive_int

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard prune`` to the command line."""
    prune = add_command(
        commands,
        "prune",
        "delete the counters of windows that ended long ago",
        "Budgets reset lazily: every day, week or month leaves its counters in the\n"
        "ledger. Delete those of windows that ended before a date (lifetime totals,\n"
        "current windows and calls in flight are kept).",
        "examples:\n"
        "  budgetguard prune --ledger sqlite:///spend.db --keep-days 90\n"
        "  budgetguard prune --ledger sqlite:///spend.db --keep-days 90 --lifetime\n"
        "  budgetguard prune --ledger redis://localhost:6379/0 --before 2026-01-01",
        run,
    )
    add_ledger(prune)
    horizon = prune.add_mutually_exclusive_group(required=True)
    horizon.add_argument(
        "--before", type=_utc_date, metavar="YYYY-MM-DD", help="delete windows ended before this"
    )
    horizon.add_argument(
        "--keep-days", type=positive_int, metavar="N", help="keep the last N days of windows"
    )
    prune.add_argument(
        "--lifetime",
        action="store_true",
        help="also delete the lifetime totals of users with no budget of their own and no "
        "spend since the date (they start again at zero if they come back)",
    )


def _utc_date(text: str) -> datetime:
    """Parse ``YYYY-MM-DD`` as midnight UTC."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def run(args: argparse.Namespace) -> int:
    """Prune the ledger and say how many counters went."""
    before: datetime = args.before or (datetime.now(timezone.utc) - timedelta(days=args.keep_days))
    if before > datetime.now(timezone.utc):
        raise UsageError(
            f"argument --before: {before.date().isoformat()} is in the future; "
            "prune only removes windows that have ended"
        )
    with open_guard(args.ledger, must_exist=True) as guard:
        removed = guard.prune(before, lifetime=args.lifetime)
    what = (
        "counters of windows that ended"
        if not args.lifetime
        else "counters of windows and idle users"
    )
    print(f"pruned {removed} {what} before {before.date().isoformat()}")
    return EXIT_OK
