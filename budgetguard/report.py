"""Read a ledger into a spend report: budgets, spend breakdowns, open reservations.

The report reads what every guard sharing the ledger wrote; it changes nothing.
Budgets are reported in their own windows (the current or the previous one).
Breakdowns by user and model come from the tallies every settled call adds:
lifetime tallies (``t|...``) for ``all``, and per-day tallies
(``d|<YYYY-MM-DD>|u=<user>|m=<model>``) summed over the days of one calendar
window for ``current`` and ``previous``. The breakdown by tag sums the per-day
tag tallies (``d|<day>|g=<key>=<value>``; for ``all``, every day the ledger
still keeps). Those days are the days of the time
zone of the guards that wrote them (UTC unless they were configured
otherwise), so a breakdown window is a whole number of those days.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Literal

from ._keys import over_key, owner_of, parse_tally, unescape
from .budgets import DEFAULT, GLOBAL, Budget, labelled, limit_at, split_name, user_of
from .guard import BudgetGuard
from .ledger import Balance
from .money import from_units
from .periods import CALENDAR_PERIODS, Period, Window

__all__ = [
    "BREAKDOWNS",
    "PERIODS",
    "BudgetRow",
    "Report",
    "ReservationRow",
    "SpendRow",
    "build_report",
]

ReportPeriod = Literal["current", "previous", "all"]
PERIODS: tuple[ReportPeriod, ...] = ("current", "previous", "all")
#: The breakdowns a report can give, as ``--by`` spells them.
BREAKDOWNS: dict[str, tuple[str, ...]] = {
    "user": ("user",),
    "model": ("model",),
    "user,model": ("user", "model"),
    "model,user": ("user", "model"),
    "tag": ("tag",),
}


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One budget in one window: its limit, what is spent and held, when it resets."""

    budget: str  # "global", "user:alice", or "default" for a user under the default budget
    user: str | None
    period: str
    window: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    resets_at: datetime | None  # the window's end (for "previous": when it ended)
    unit: str = "usd"  # what limit, spent and reserved count (dollars, tokens, requests...)
    mode: str = "hard"
    #: Calls a soft or shadow budget had no room for in this window (it let them run).
    over: int = 0
    subject: str | None = None  # the concrete subject: "tag:tenant=acme" for "tag:tenant=*"

    @property
    def remaining(self) -> Decimal:
        """Return what is left of the limit, never below zero."""
        return max(Decimal(0), self.limit - self.spent - self.reserved)

    @property
    def used(self) -> Decimal:
        """Return the fraction of the limit spent or held (0 for a zero limit with no spend)."""
        taken = self.spent + self.reserved
        if not self.limit:
            return Decimal(1) if taken else Decimal(0)
        return taken / self.limit


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend of one user, one model, one user on one model, or one tag."""

    user: str | None
    model: str | None
    spent: Decimal
    tag: str | None = None  # "team=search", for the breakdown by tag


@dataclass(frozen=True, slots=True)
class ReservationRow:
    """One reservation still open: a call in flight (or one whose process died)."""

    id: str
    budgets: tuple[str, ...]
    held: Decimal
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``budgetguard report`` shows, as exact amounts."""

    period: ReportPeriod
    by: tuple[str, ...]
    generated_at: datetime
    #: The breakdown's window: its calendar period and bounds (``None`` for ``all``).
    calendar: str | None
    since: datetime | None
    until: datetime | None
    budgets: tuple[BudgetRow, ...]
    spend: tuple[SpendRow, ...]
    total: Decimal
    reservations: tuple[ReservationRow, ...]


def build_report(
    guard: BudgetGuard,
    *,
    period: ReportPeriod = "current",
    by: Sequence[str] = ("user",),
    calendar: str | None = None,
    now: float | None = None,
) -> Report:
    """Read the budgets, the spend breakdown and the open reservations of ``guard``'s ledger.

    ``calendar`` is the calendar period of the breakdown for ``current`` and
    ``previous`` (default: the global budget's period when it is a calendar
    one, else ``monthly``); it is read in ``guard.tz``.
    """
    if period not in PERIODS:
        raise ValueError(f"unknown report period {period!r}; use one of {', '.join(PERIODS)}")
    for field in by:
        if field not in ("user", "model", "tag"):
            raise ValueError(f"cannot break spend down by {field!r}; use user and/or model, or tag")
    if "tag" in by and len(by) > 1:
        raise ValueError("spend by tag is a breakdown of its own: by=('tag',)")
    moment = guard.clock() if now is None else now
    budgets = {budget.name: budget for budget in guard.budgets()}
    rows = _budget_rows(guard, budgets, period, moment)
    if period == "all" and "tag" in by:
        spend, total = _daily_spend(guard, tuple(by), None, guard.tz)
        chosen, since, until = None, None, None
    elif period == "all":
        spend, total = _lifetime_spend(guard, tuple(by))
        chosen, since, until = None, None, None
    else:
        chosen = calendar or _calendar_of(budgets.get(GLOBAL))
        window = _calendar_window(chosen, guard.tz, moment, previous=period == "previous")
        spend, total = _daily_spend(guard, tuple(by), window, guard.tz)
        since, until = window.start, window.end
    return Report(
        period=period,
        by=tuple(by),
        generated_at=datetime.fromtimestamp(moment, timezone.utc),
        calendar=chosen,
        since=since,
        until=until,
        budgets=rows,
        spend=spend,
        total=total,
        reservations=_reservations(guard),
    )


def _calendar_of(budget: Budget | None) -> str:
    if budget is not None and budget.period.name in CALENDAR_PERIODS:
        return budget.period.name
    return "monthly"


def _calendar_window(name: str, tz: tzinfo, now: float, *, previous: bool) -> Window:
    if name not in CALENDAR_PERIODS:
        choices = ", ".join(CALENDAR_PERIODS)
        raise ValueError(f"unknown calendar period {name!r}; use one of {choices}")
    calendar = Period(name)
    window = calendar.window(datetime.fromtimestamp(now, timezone.utc), tz)
    return calendar.previous(window, tz) if previous else window


def _window_of(budget: Budget, period: ReportPeriod, now: float) -> Window:
    window = budget.window(now)
    if period == "previous":
        return budget.period.previous(window, budget.tz, budget.created_at)
    return window


def _budget_rows(
    guard: BudgetGuard, budgets: dict[str, Budget], period: ReportPeriod, now: float
) -> tuple[BudgetRow, ...]:
    """Return one row per budget window: explicit budgets, and the subjects of shared ones.

    A default budget (``default``, ``daily@default``) charges each user on
    keys named after them, and a per-value budget (``tag:tenant=*``) each
    value: the ledger is scanned for the ones with spend in this window.
    """
    wanted: list[tuple[str, Budget, str | None, Window, str]] = []
    shared: list[tuple[Budget, str, str]] = []  # (budget, key prefix, owner prefix)
    for name, budget in budgets.items():
        if budget.is_boost:
            continue
        label, subject = split_name(name)
        if subject == DEFAULT:
            owner = labelled(label, "user:")
            shared.append((budget, "b|" + owner, owner))
            continue
        if subject.endswith("=*"):
            owner = labelled(label, subject[:-1])
            shared.append((budget, "b|" + owner, owner))
            continue
        window = _window_of(budget, period, now)
        wanted.append((budget.key_for_window(window), budget, budget.user, window, subject))
    for budget, prefix, owner in shared:
        window = _window_of(budget, period, now)
        # Escaped owners: "b|daily@user:alice|2026-12-01" and the like.
        for key in sorted(guard.ledger.scan(prefix)):
            parts = key.split("|")
            if len(parts) != 3 or parts[2] != window.id:
                continue
            name = unescape(parts[1])
            if name in budgets or not name.startswith(owner):
                continue
            subject = split_name(name)[1]
            wanted.append((key, budget, user_of(subject), window, subject))
    if not wanted:
        return ()
    keys = [key for key, *_ in wanted]
    overs = [over_key(key) for key, budget, *_ in wanted if budget.mode != "hard"]
    balances = guard.ledger.balances(keys + overs)
    rows = [
        BudgetRow(
            budget=budget.name,
            user=user,
            period=budget.period.label,
            window=window.id,
            limit=limit_at(budget, budgets, now) if period == "current" else budget.limit,
            spent=budget.amount(balances.get(key, Balance()).spent),
            reserved=budget.amount(balances.get(key, Balance()).reserved),
            resets_at=window.end,
            unit=budget.unit,
            mode=budget.mode,
            over=balances.get(over_key(key), Balance()).spent if budget.mode != "hard" else 0,
            subject=subject,
        )
        for key, budget, user, window, subject in wanted
    ]
    rows.sort(key=lambda row: (row.budget != GLOBAL, row.user or "", row.subject or "", row.budget))
    return tuple(rows)


def _rows(totals: dict[tuple[str | None, ...], int], by: tuple[str, ...]) -> tuple[SpendRow, ...]:
    rows = []
    for values, units in totals.items():
        if not units:
            continue
        named = dict(zip(by, values, strict=True))
        rows.append(
            SpendRow(named.get("user"), named.get("model"), from_units(units), named.get("tag"))
        )
    rows.sort(key=lambda row: (-row.spent, row.user or "", row.model or "", row.tag or ""))
    return tuple(rows)


def _lifetime_spend(
    guard: BudgetGuard, by: tuple[str, ...]
) -> tuple[tuple[SpendRow, ...], Decimal]:
    """Break lifetime spend down from the ``t|`` tallies."""
    ledger = guard.ledger
    total = ledger.balances(["t|"]).get("t|", Balance()).spent
    if not by:
        return (), from_units(total)
    prefix = "t|u=" if by[0] == "user" else "t|m="
    fields = 2 if len(by) == 2 else 1
    totals: dict[tuple[str | None, ...], int] = defaultdict(int)
    for key, balance in ledger.scan(prefix).items():
        rest = key[2:]
        if rest.count("|") + 1 != fields:
            continue
        parsed = parse_tally(rest)
        totals[tuple(parsed.get(field) for field in by)] += balance.spent
    return _rows(totals, by), from_units(total)


def _daily_spend(
    guard: BudgetGuard, by: tuple[str, ...], window: Window | None, tz: tzinfo
) -> tuple[tuple[SpendRow, ...], Decimal]:
    """Sum the per-day tallies of the days in ``window`` (days of ``tz``; ``None``: every day)."""
    if window is None:
        first, last, prefix = "", "\uffff", "d|"
    else:
        assert window.start is not None and window.end is not None
        first = window.start.astimezone(tz).date().isoformat()
        # The window ends at midnight: the last day in it is the one before.
        last = (window.end.astimezone(tz) - timedelta(microseconds=1)).date().isoformat()
        prefix = "d|" + _common_prefix(first, last)
    totals: dict[tuple[str | None, ...], int] = defaultdict(int)
    total = 0
    by_tag = by == ("tag",)
    for key, balance in guard.ledger.scan(prefix).items():
        day, _, rest = key[2:].partition("|")
        if not first <= day <= last:
            continue
        if rest.startswith("g="):  # a tag tally: the same money as a user tally
            if by_tag:
                key_part, _, value = rest[2:].partition("=")
                totals[(f"{unescape(key_part)}={unescape(value)}",)] += balance.spent
            continue
        total += balance.spent
        if by and not by_tag:
            parsed = parse_tally(rest)
            totals[tuple(parsed.get(field) for field in by)] += balance.spent
    return _rows(totals, by), from_units(total)


def _common_prefix(first: str, last: str) -> str:
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    return first[:size]


def _reservations(guard: BudgetGuard) -> tuple[ReservationRow, ...]:
    rows = [
        ReservationRow(
            id=reservation.id,
            budgets=tuple(owner_of(hold.key) for hold in reservation.holds),
            # Dollars only: token, request and concurrency holds count other units.
            held=from_units(
                max((hold.amount for hold in reservation.holds if hold.unit == 0), default=0)
            ),
            expires_at=datetime.fromtimestamp(reservation.expires_at, timezone.utc),
        )
        for reservation in guard.ledger.open_reservations()
    ]
    rows.sort(key=lambda row: row.expires_at)
    return tuple(rows)
