"""Set, boost, list or delete the budgets stored in a ledger: ``budgetguard budgets``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..budgets import (
    DEFAULT,
    GLOBAL,
    MODES,
    UNITS,
    Budget,
    check_name,
    labelled,
    split_name,
    subject_name,
)
from ..events import BudgetStatus
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
        "set, boost, list or delete budgets",
        "Manage the budgets stored in a ledger: a user's, everyone's (--global), each\n"
        "user's without one (--default), a tag's, a model's or a provider's; in dollars,\n"
        "tokens, requests or calls in flight. Applications sharing the ledger pick a\n"
        "change up within a second (SQLite, Redis).",
        "examples:\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --global --limit 500 "
        "--period daily\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --default --limit 5 "
        "--period monthly\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --user alice --limit 10 "
        "--period monthly --tz Europe/Paris\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --tag team=search --limit 100 "
        "--period monthly\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --model 'gpt-5*' --unit tokens "
        "--limit 200000 --period minute\n"
        "  budgetguard budgets boost --ledger sqlite:///spend.db --user alice --limit 20 "
        "--for 7d\n"
        "  budgetguard budgets list --ledger sqlite:///spend.db\n"
        "  budgetguard budgets delete --ledger sqlite:///spend.db --user alice",
        run,
    )
    actions = budgets.add_subparsers(title="actions", metavar="ACTION")
    actions.required = True

    set_ = _add_action(
        actions,
        "set",
        "set (or change) a budget: a user's, the global one, the default for every user, "
        "or a tag's, a model's or a provider's",
        "A period is daily, weekly, monthly or yearly (calendar windows in --tz), lifetime\n"
        "(the default, as in Python), or a window length: minute, hour, or e.g. 60s, 1m,\n"
        "90m, 12h, 7d. Changing a limit keeps what was already spent in the current window.\n"
        "--unit says what the limit counts: usd (dollars, the default), input_tokens,\n"
        "output_tokens, tokens, requests (calls started) or concurrency (calls in flight,\n"
        "no period). --mode hard refuses calls (the default), soft lets them run and\n"
        "alerts, shadow lets them run and only counts the calls it had no room for.\n"
        "A subject may have several budgets (another window, another unit): --label names\n"
        "them; a non-dollar budget is labelled by its unit unless given one. A SQLite file\n"
        "that does not exist is an error unless --create says to make it.\n\n"
        "examples:\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --create --user alice "
        "--limit 10 --period monthly\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --user alice --label daily "
        "--limit 1 --period daily\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --tag team=search --limit 100 "
        "--period monthly --parent global\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --tag 'tenant=*' --limit 20 "
        "--period daily --mode shadow\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --provider openai "
        "--unit requests --limit 600 --period minute --sliding\n"
        "  budgetguard budgets set --ledger sqlite:///spend.db --user alice "
        "--unit concurrency --limit 4",
        _run_set,
    )
    add_ledger(set_)
    _add_subject(set_, default=True)
    set_.add_argument(
        "--limit",
        type=_amount,
        required=True,
        metavar="LIMIT",
        help="the most per period: dollars for --unit usd (e.g. 10, 0.50), else a whole "
        "number of tokens, requests or calls",
    )
    set_.add_argument(
        "--period",
        type=_period,
        default=None,
        metavar="PERIOD",
        help="daily, weekly, monthly, yearly, lifetime (the default, as set_budget() "
        "in Python), minute, hour, or a length such as 60s, 1m, 12h, 7d",
    )
    _add_unit(set_)
    set_.add_argument(
        "--mode",
        choices=MODES,
        default="hard",
        help="hard refuses (default), soft runs and alerts, shadow runs and counts",
    )
    set_.add_argument(
        "--parent",
        metavar="NAME",
        help="a budget checked in the same reservation (e.g. global, tag:org=acme)",
    )
    set_.add_argument(
        "--sliding",
        action="store_true",
        help="a sliding window: count the previous window's use by the share still in view",
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

    boost = _add_action(
        actions,
        "boost",
        "give a budget another limit for a while; the budget itself stays as it is",
        "A boost replaces a budget's limit until it ends (--for a length, or --until a\n"
        "moment in ISO 8601; without an offset it is UTC), then the budget's own limit\n"
        "applies again with nothing to undo. A new boost replaces the last one.\n\n"
        "examples:\n"
        "  budgetguard budgets boost --ledger sqlite:///spend.db --user alice --limit 20 "
        "--for 7d\n"
        "  budgetguard budgets boost --ledger sqlite:///spend.db --tag team=search "
        "--limit 250 --until 2026-12-31T23:59:00Z",
        _run_boost,
    )
    add_ledger(boost)
    _add_subject(boost, default=True)
    boost.add_argument(
        "--limit",
        type=_amount,
        required=True,
        metavar="LIMIT",
        help="the limit while the boost lasts, in the budget's unit",
    )
    ends = boost.add_mutually_exclusive_group(required=True)
    ends.add_argument(
        "--for", dest="length", type=_length, metavar="LENGTH", help="e.g. 2h, 7d, 3600s"
    )
    ends.add_argument(
        "--until", type=_moment, metavar="WHEN", help="e.g. 2026-12-31T23:59:00Z (UTC if no offset)"
    )
    _add_unit(boost)

    list_ = _add_action(
        actions,
        "list",
        "list the budgets, their current window and the boosts in force",
        "Limits in dollars show as $, tokens, requests and calls in flight as counts.\n"
        "'over' is the number of calls a soft or shadow budget had no room for in its\n"
        "current window (it let them run). A default or per-value budget (--tag 'k=*')\n"
        "has one window per user or value: see budgetguard report for those.\n\n"
        "example:\n  budgetguard budgets list --ledger sqlite:///spend.db --format csv",
        _run_list,
    )
    add_ledger(list_)
    add_format(list_)

    delete = _add_action(
        actions,
        "delete",
        "delete a budget, or only its boost (what was spent stays recorded)",
        "examples:\n"
        "  budgetguard budgets delete --ledger sqlite:///spend.db --user alice\n"
        "  budgetguard budgets delete --ledger sqlite:///spend.db --user alice --boost",
        _run_delete,
    )
    add_ledger(delete)
    _add_subject(delete, default=True)
    _add_unit(delete)
    delete.add_argument("--boost", action="store_true", help="delete only the budget's boost")


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


def _add_subject(parser: argparse.ArgumentParser, *, default: bool) -> None:
    """Add the options that say whose budget: exactly one of them, and ``--label``."""
    owner = parser.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user", metavar="ID", help="one user's budget")
    owner.add_argument(
        "--global",
        dest="everyone",
        action="store_true",
        help="the global budget: all users' spend together",
    )
    if default:
        owner.add_argument(
            "--default",
            action="store_true",
            help="the budget of every user without one of their own (each separately)",
        )
    owner.add_argument(
        "--tag",
        metavar="KEY=VALUE",
        help="calls in a scope tagged KEY=VALUE (team=search); KEY=* gives each value its own",
    )
    owner.add_argument(
        "--model", metavar="PATTERN", help="calls of the models matching PATTERN (gpt-5*)"
    )
    owner.add_argument("--provider", metavar="NAME", help="calls through one provider (openai)")
    parser.add_argument(
        "--label",
        metavar="LABEL",
        help="which of the subject's budgets (e.g. daily): one subject may have several",
    )


def _add_unit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unit",
        choices=UNITS,
        default="usd",
        help="what the limit counts (default: usd)",
    )


# -- argument types: a bad value is a usage error (exit status 2) -----------------------------


def _amount(text: str) -> Decimal:
    from ..money import to_decimal

    try:
        return to_decimal(text, "limit")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Window lengths by name, as people type them for rate limits.
_NAMED = {"second": 1, "minute": 60, "minutely": 60, "hour": 3600, "hourly": 3600}
_PERIODS_HINT = (
    "use daily, weekly, monthly, yearly, lifetime, minute, hour, "
    "or a window length such as 60s, 1m, 90m, 12h, 7d"
)


def _seconds(text: str) -> int | None:
    """Return the seconds of a length such as 3600s, 90m, 1h, 7d, 2w (``None`` if not one)."""
    value = text.strip().lower()
    if value in _NAMED:
        return _NAMED[value]
    if value and value[-1] in _UNITS and value[:-1].isdigit():
        return int(value[:-1]) * _UNITS[value[-1]]
    if value.isdigit():
        return int(value)
    return None


def _period(text: str) -> object:
    """Turn a period name or a window length (minute, 3600s, 90m, 1h, 7d) into a budget period."""
    value = text.strip().lower()
    if value in CALENDAR_PERIODS or value == "lifetime":
        return value
    seconds = _seconds(value)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"unknown period {text!r}; {_PERIODS_HINT}")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a period must be longer than zero, got {text!r}")
    try:
        parse_period(seconds)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return seconds


def _length(text: str) -> timedelta:
    """Turn a length such as 2h or 7d into a ``timedelta`` (for a boost)."""
    seconds = _seconds(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(
            f"not a length of time: {text!r}; use e.g. 3600s, 90m, 12h, 7d, 2w"
        )
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a boost must last longer than zero, got {text!r}")
    if seconds > 100 * 366 * 86400:
        raise argparse.ArgumentTypeError(f"a boost of {text!r} is longer than a century")
    return timedelta(seconds=seconds)


def _moment(text: str) -> datetime:
    """Turn an ISO 8601 moment into an aware datetime (UTC when it has no offset)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a moment: {text!r}; use ISO 8601 such as 2026-12-31T23:59:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


# -- the actions ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print the help of ``budgets``: it needs an action (argparse insists on one first)."""
    args.parser.print_help()
    return EXIT_USAGE


def _subject(args: argparse.Namespace) -> str:
    """Return the subject the options name: ``global``, ``user:alice``, ``tag:team=x``, ..."""
    user: str | None = args.user
    if user is not None and not user.strip():
        raise UsageError("argument --user: a user id cannot be empty")
    try:
        return subject_name(
            user,
            tag=args.tag,
            model=args.model,
            provider=args.provider,
            default=bool(getattr(args, "default", False)),
        )
    except ValueError as error:
        given = [name for name in ("tag", "model", "provider") if getattr(args, name) is not None]
        option = f"--{given[0]}" if given else None
        raise UsageError(f"argument {option}: {error}" if option else str(error)) from None


def _name(args: argparse.Namespace) -> str:
    """Return the name of the budget the options name (a non-dollar unit labels it)."""
    subject = _subject(args)
    label = args.label if args.label is not None else (None if args.unit == "usd" else args.unit)
    try:
        return labelled(label, subject)
    except ValueError as error:
        raise UsageError(f"argument --label: {error}") from None


def _keywords(subject: str) -> dict[str, Any]:
    """Return the keywords of ``set_budget`` and the like that name ``subject``."""
    kind, _, rest = subject.partition(":")
    if kind in ("user", "tag", "model", "provider"):
        return {kind: rest}
    return {}


def _run_set(args: argparse.Namespace) -> int:
    name = _name(args)
    subject = split_name(name)[1]
    if args.unit == "concurrency" and args.period not in (None, "lifetime"):
        raise UsageError(
            "argument --period: a concurrency limit counts calls in flight and has no period"
        )
    period = None if args.period in (None, "lifetime") else args.period
    _check_limit(args.limit, args.unit)
    if args.parent is not None:
        try:
            check_name(args.parent)
        except ValueError as error:
            raise UsageError(
                f"argument --parent: {error} (e.g. global, user:alice, tag:org=acme)"
            ) from None
    options: dict[str, Any] = {
        "unit": args.unit,
        "mode": args.mode,
        "parent": args.parent,
        "label": args.label,
        "sliding": args.sliding,
    }
    # Everything the guard would refuse is refused before the ledger is opened:
    # bad input exits 2 and changes nothing.
    _check(
        lambda: Budget.create(
            args.limit, name=name, period=period, tz=args.tz, unit=args.unit,
            mode=args.mode, parent=args.parent, sliding=args.sliding,
        )
    )  # fmt: skip
    with open_guard(args.ledger, must_exist=not args.create, tz=args.tz) as guard:
        known = {budget.name for budget in guard.budgets()}
        if subject == DEFAULT:
            budget = _check(
                lambda: guard.set_default_budget(args.limit, period=period, tz=args.tz, **options)
            )
        else:
            budget = _check(
                lambda: guard.set_budget(
                    args.limit, period=period, tz=args.tz, **_keywords(subject), **options
                )
            )
        status = _status_of(guard.budget_statuses(), budget.name)
        window = budget.window(guard.clock())
    resets = f", resets {when(window.end)} UTC" if window.end is not None else ""
    so_far = ""
    if status is not None and budget.unit != "concurrency":
        verb = "spent" if budget.unit == "usd" else "used"
        so_far = f"; {_amount_text(status.spent, budget.unit)} {verb} so far in this window"
    what = "" if budget.unit == "usd" else f" {_unit_word(budget.unit)}"
    period_text = (
        "" if budget.unit == "concurrency" else f" {budget.period.label} ({tz_name(budget.tz)})"
    )
    extra = "".join(
        [
            f", {budget.mode}" if budget.mode != "hard" else "",
            ", sliding" if budget.sliding else "",
            f", parent {budget.parent}" if budget.parent is not None else "",
        ]
    )
    print(
        f"set budget {budget.name}: {_amount_text(budget.limit, budget.unit)}{what}"
        f"{period_text}{extra}{resets}{so_far}"
    )
    if budget.parent is not None and budget.parent not in known:
        print(
            f"{PROG}: note: its parent {budget.parent} is not set (yet); until it is, "
            "only this budget is checked",
            file=sys.stderr,
        )
    _note_memory(args.ledger)
    return EXIT_OK


def _run_boost(args: argparse.Namespace) -> int:
    name = _name(args)
    subject = split_name(name)[1]
    _check_limit(args.limit, args.unit)
    with open_guard(args.ledger, must_exist=True) as guard:
        now = datetime.fromtimestamp(guard.clock(), timezone.utc)
        if args.until is not None and args.until <= now:
            raise UsageError(f"argument --until: {args.until.isoformat()} is already past")
        ends: dict[str, Any] = (
            {"until": args.until} if args.until is not None else {"duration": args.length}
        )
        if name not in {budget.name for budget in guard.budgets()}:
            raise CommandError(
                f"no budget {name} in {safe_url(args.ledger)} to boost; set it first "
                f"({PROG} budgets set)"
            )
        boost = _check(
            lambda: guard.boost_budget(
                args.limit,
                **ends,
                **_keywords(subject),
                default=subject == DEFAULT,
                unit=args.unit,
                label=args.label,
            )
        )
    assert boost.until is not None
    print(
        f"boosted budget {name}: {_amount_text(boost.limit, boost.unit)} until "
        f"{when(boost.until)} UTC (then its own limit again)"
    )
    _note_memory(args.ledger)
    return EXIT_OK


def _check_limit(limit: Decimal, unit: str) -> None:
    """Refuse a fractional limit of tokens, requests or calls (dollars may have cents)."""
    if unit != "usd" and limit != limit.to_integral_value():
        raise UsageError(
            f"argument --limit: a limit of {unit} is a whole number, got {plain(limit)}"
        )


def _check(work: Any) -> Any:
    """Run ``work``; a ``ValueError`` (a limit, label or parent refused) is a usage error."""
    try:
        return work()
    except ValueError as error:
        raise UsageError(str(error)) from None


def _note_memory(url: str) -> None:
    if urlsplit(url).scheme.lower() == "memory":
        print(
            f"{PROG}: note: a memory:// ledger ends with this command; nothing was kept",
            file=sys.stderr,
        )


def _status_of(statuses: list[BudgetStatus], name: str) -> BudgetStatus | None:
    return next((status for status in statuses if status.name == name), None)


def _unit_word(unit: str) -> str:
    return {"concurrency": "calls in flight"}.get(unit, unit.replace("_", " "))


def _amount_text(amount: Decimal, unit: str) -> str:
    """Return an amount as people read it: ``$10`` for dollars, ``20000`` for counts."""
    return f"${plain(amount)}" if unit == "usd" else plain(amount)


def _cell_text(amount: Decimal | None, unit: str) -> str:
    """Return an amount for the table: ``$10.00`` for dollars, ``20000`` for counts."""
    if amount is None:
        return "-"
    return f"${money(amount)}" if unit == "usd" else plain(amount)


def _run_list(args: argparse.Namespace) -> int:
    with open_guard(args.ledger, must_exist=True) as guard:
        every = guard.budgets()
        statuses = {status.name: status for status in guard.budget_statuses()}
        now = datetime.fromtimestamp(guard.clock(), timezone.utc)
    boosts = {
        budget.name[1:]: budget
        for budget in every
        if budget.is_boost and budget.until is not None and budget.until > now
    }
    rows: list[tuple[Budget, BudgetStatus | None]] = [
        (budget, statuses.get(budget.name)) for budget in every if not budget.is_boost
    ]
    order = {GLOBAL: 0, DEFAULT: 1}
    rows.sort(
        key=lambda item: (
            order.get(item[0].subject, 2),
            item[0].subject,
            item[0].label is not None,
            item[0].name,
        )
    )
    headers = [
        "budget",
        "subject",
        "label",
        "user",
        "unit",
        "mode",
        "parent",
        "limit",
        "period",
        "sliding",
        "tz",
        "spent",
        "reserved",
        "remaining",
        "over",
        "boost_limit",
        "boost_until",
        "resets_at",
        "created_at",
    ]
    data: list[list[Any]] = []
    for budget, status in rows:
        boost = boosts.get(budget.name)
        data.append(
            [
                budget.name,
                budget.subject,
                budget.label,
                budget.user,
                budget.unit,
                budget.mode,
                budget.parent,
                budget.limit,
                budget.period.label if budget.unit != "concurrency" else None,
                budget.sliding,
                tz_name(budget.tz),
                status.spent if status is not None else None,
                status.reserved if status is not None else None,
                status.remaining if status is not None else None,
                status.over if status is not None and budget.mode != "hard" else None,
                boost.limit if boost is not None else None,
                boost.until if boost is not None else None,
                status.resets_at if status is not None else None,
                budget.created_at,
            ]
        )
    if args.format == "json":
        print_json([dict(zip(headers, row, strict=True)) for row in data])
    elif args.format == "csv":
        print_csv(headers, [[cell(value) for value in row] for row in data])
    elif not data:
        print("no budgets set (budgetguard budgets set --help)")
    else:
        _print_list(headers, data)
    return EXIT_OK


def _print_list(headers: list[str], data: list[list[Any]]) -> None:
    column = {name: index for index, name in enumerate(headers)}
    table = []
    for row in data:
        unit = row[column["unit"]]

        def value(name: str, row: list[Any] = row) -> Any:
            return row[column[name]]

        boost = "-"
        if value("boost_limit") is not None:
            boost = f"{_cell_text(value('boost_limit'), unit)} until {when(value('boost_until'))}"
        table.append(
            [
                value("subject"),
                value("label") or "-",
                unit,
                value("mode"),
                value("parent") or "-",
                (value("period") or "-") + (", sliding" if value("sliding") else ""),
                _cell_text(value("limit"), unit),
                _cell_text(value("spent"), unit),
                _cell_text(value("reserved"), unit),
                _cell_text(value("remaining"), unit),
                str(value("over")) if value("over") is not None else "-",
                boost,
                when(value("resets_at"))
                if value("spent") is not None and unit != "concurrency"
                else "-",
            ]
        )
    print_table(
        [
            "subject",
            "label",
            "unit",
            "mode",
            "parent",
            "period",
            "limit",
            "spent",
            "reserved",
            "remaining",
            "over",
            "boost (UTC)",
            "resets (UTC)",
        ],
        table,
        numeric=[6, 7, 8, 9, 10],
    )


def _run_delete(args: argparse.Namespace) -> int:
    name = _name(args)
    subject = split_name(name)[1]
    with open_guard(args.ledger, must_exist=True) as guard:
        if subject == DEFAULT:
            deleted = guard.delete_default_budget(
                unit=args.unit, label=args.label, boost=args.boost
            )
        else:
            deleted = guard.delete_budget(
                **_keywords(subject), unit=args.unit, label=args.label, boost=args.boost
            )
    what = f"boost of budget {name}" if args.boost else f"budget {name}"
    if not deleted:
        raise CommandError(f"no {what} in {safe_url(args.ledger)}")
    if args.boost:
        print(f"deleted the {what} (its own limit applies again)")
    else:
        print(f"deleted {what} (its spend records stay in the ledger)")
    return EXIT_OK
