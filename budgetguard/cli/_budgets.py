"""Set, list or delete the budgets stored in a ledger: ``budgetguard budgets``."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..budgets import DEFAULT, GLOBAL, Budget
from ..periods import CALENDAR_PERIODS, parse_period, tz_name
from ._common import (
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    Run,
    UsageError,
    add_command,
    add_format,
    add_ledger,
    open_guard,
    safe_url,
    time_zone,
)
from ._output import cell, money, plain, print_csv, print_json, print_table, when

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard budgets`` and its actions to the command line."""
    budgets = add_command(
        commands,
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
        run,
    )
    actions = budgets.add_subparsers(title="actions", metavar="ACTION")
    actions.required = True

    set_ = _add_action(
        actions,
        "set",
        "set (or change) a budget: one user's, the global one, or the default for every user",
        "A period is daily, weekly, monthly or yearly (calendar windows in --tz), lifetime\n"
        "(the default, as in Python), or a window length such as 3600s, 90m, 12h, 7d.\n"
        "Changing a limit keeps what was already spent in the current window. A SQLite\n"
        "file that does not exist is an error unless --create says to make it.\n\n"
        "examples:\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --create --user alice "
        "--limit 10 --period monthly\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --global --limit 500 "
        "--period daily",
        _run_set,
    )
    add_ledger(set_)
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
        default="lifetime",
        metavar="PERIOD",
        help="daily, weekly, monthly, yearly, lifetime (the default, as set_budget() "
        "in Python), or e.g. 3600s",
    )
    set_.add_argument(
        "--create",
        action="store_true",
        help="create the SQLite ledger file if it does not exist (otherwise a missing "
        "file is an error: a mistyped path must not become a new, empty ledger)",
    )
    set_.add_argument(
        "--tz",
        type=time_zone,
        default="UTC",
        metavar="ZONE",
        help="time zone of calendar periods (default: UTC)",
    )

    list_ = _add_action(
        actions,
        "list",
        "list the budgets and their current window",
        "example:\n  budgetguard budgets list --ledger sqlite:///spend.db --format csv",
        _run_list,
    )
    add_ledger(list_)
    add_format(list_)

    delete = _add_action(
        actions,
        "delete",
        "delete a budget (what was spent stays recorded)",
        "example:\n  budgetguard budgets delete --ledger sqlite:///spend.db --user alice",
        _run_delete,
    )
    add_ledger(delete)
    _add_owner(delete)


def _add_action(
    actions: Subparsers, name: str, summary: str, epilog: str, run: Run
) -> argparse.ArgumentParser:
    """Add one action of ``budgets``; its description is its summary as a sentence."""
    sub = actions.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(run=run, parser=sub)
    return sub


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


# -- argument types: a bad value is a usage error (exit status 2) -----------------------------


def _amount(text: str) -> Decimal:
    from ..money import to_decimal

    try:
        return to_decimal(text, "limit")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


# -- the actions ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print the help of ``budgets``: it needs an action (argparse insists on one first)."""
    args.parser.print_help()
    return EXIT_USAGE


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


def _run_set(args: argparse.Namespace) -> int:
    name, user = _owner(args)
    period = None if args.period == "lifetime" else args.period
    with open_guard(args.ledger, must_exist=not args.create, tz=args.tz) as guard:
        if name == DEFAULT:
            budget = guard.set_default_budget(args.limit, period=period, tz=args.tz)
        else:
            budget = guard.set_budget(args.limit, user=user, period=period, tz=args.tz)
        now = guard.clock()
        window = budget.window(now)
        spent = guard.spend(user) if name != DEFAULT else None
    resets = f", resets {when(window.end)} UTC" if window.end is not None else ""
    so_far = f"; ${plain(spent)} spent so far in this window" if spent is not None else ""
    print(
        f"set budget {name}: ${plain(budget.limit)} {budget.period.label} "
        f"({tz_name(budget.tz)}){resets}{so_far}"
    )
    if urlsplit(args.ledger).scheme.lower() == "memory":
        print(
            f"{PROG}: note: a memory:// ledger ends with this command; nothing was kept",
            file=sys.stderr,
        )
    return EXIT_OK


def _run_list(args: argparse.Namespace) -> int:
    with open_guard(args.ledger, must_exist=True) as guard:
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
        print_json([dict(zip(headers, row, strict=True)) for row in data])
    elif args.format == "csv":
        print_csv(headers, [[cell(value) for value in row] for row in data])
    elif not data:
        print("no budgets set (budgetguard budgets set --help)")
    else:
        table = [
            [
                str(row[0]),
                row[1] or "-",
                money(row[2]),
                row[3],
                row[4],
                money(row[5]) if row[5] is not None else "-",
                money(row[6]) if row[6] is not None else "-",
                when(row[7]) if row[5] is not None else "-",
                when(row[8]),
            ]
            for row in data
        ]
        print_table(
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
    return EXIT_OK


def _run_delete(args: argparse.Namespace) -> int:
    name, user = _owner(args)
    with open_guard(args.ledger, must_exist=True) as guard:
        deleted = guard.delete_default_budget() if name == DEFAULT else guard.delete_budget(user)
    if not deleted:
        raise CommandError(f"no budget {name} in {safe_url(args.ledger)}")
    print(f"deleted budget {name} (its spend records stay in the ledger)")
    return EXIT_OK
