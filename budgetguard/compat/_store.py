"""A LiteLLM project's users, budgets and spend, kept by a ``BudgetGuard``.

Each LiteLLM user is a budgetguard user budget (optionally under a namespace,
so that many projects share one ledger); ``current_cost`` is the spend of the
budget's current window and ``model_cost`` its per-model split. Nothing here
keeps a copy of the numbers: every read asks the ledger, every charge is one
atomic ledger operation.

Users are listed in the order they were created, as LiteLLM's user dict
keeps them. The ledger stores budgets by name, so the order has keys of its
own, outside every budget's ``b|`` keys (prune and reports never see them):

- ``o|#`` counts the users ever created, over every project of the ledger;
- ``o|<budget name>`` (escaped like budget keys, e.g. ``o|user:alice``) holds
  the count at the user's first creation; creating the user again keeps it.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from .. import _keys
from ..budgets import Budget, budget_name, escape, unescape
from ..errors import BudgetGuardError
from ..guard import BudgetGuard
from ..ledger import Balance, Hold, Reservation
from ..money import from_units, to_decimal, to_units
from ..periods import CALENDAR_PERIODS

__all__ = [
    "DURATIONS",
    "ProjectStore",
    "UnknownUserError",
    "UserEntry",
    "parse_created_at",
    "period_from_duration",
]

logger = logging.getLogger("budgetguard")

DURATIONS = CALENDAR_PERIODS
_DAY = 86400
# LiteLLM stores a duration as a number of days ("monthly" is 28); these
# lengths are read back as the calendar period they stand for.
_DAYS_TO_PERIOD = {
    1: "daily",
    7: "weekly",
    28: "monthly",
    29: "monthly",
    30: "monthly",
    31: "monthly",
    365: "yearly",
    366: "yearly",
}

UserEntry = dict[str, Any]

#: The ledger key counting users ever created (the format lives in _keys.py).
_CREATED = _keys.CREATED


class UnknownUserError(BudgetGuardError, KeyError):
    """Report a user with no budget in the project (LiteLLM raises a bare ``KeyError``)."""

    def __init__(self, user: str, project: str) -> None:
        self.user = user
        self.project = project
        super().__init__(
            f"user {user!r} has no budget in project {project!r}; call create_budget first"
        )

    def __str__(self) -> str:
        # KeyError would show the message quoted like a key.
        return str(self.args[0])


def period_from_duration(duration: object) -> object:
    """Turn a LiteLLM ``duration`` (a period name or a number of days) into a budgetguard period."""
    if duration is None:
        return None
    if isinstance(duration, str):
        if duration in DURATIONS:
            return duration
        raise ValueError(
            f"duration must be one of {', '.join(DURATIONS)} or None, got {duration!r}"
        )
    if isinstance(duration, (int, float, Decimal)) and not isinstance(duration, bool):
        days = to_decimal(duration, "duration")
        if days <= 0:
            raise ValueError(f"duration must be a positive number of days, got {duration!r}")
        if days == days.to_integral_value() and int(days) in _DAYS_TO_PERIOD:
            return _DAYS_TO_PERIOD[int(days)]
        return timedelta(seconds=float(days * _DAY))
    raise ValueError(f"duration must be a period name or a number of days, got {duration!r}")


def parse_created_at(value: object) -> datetime | None:
    """Turn a LiteLLM ``created_at`` (seconds since the epoch) or a datetime into a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("created_at must be an aware datetime or seconds since the epoch")
        return value
    seconds = to_decimal(value, "created_at")
    return datetime.fromtimestamp(float(seconds), timezone.utc)


def _timestamp(value: object, name: str) -> float | None:
    if value is None:
        return None
    return float(to_decimal(value, name))


@dataclass(frozen=True)
class _Entry:
    """One user's LiteLLM record, validated."""

    user: str
    total_budget: Decimal | None
    has_duration: bool
    period: object
    created_at: datetime | None
    current_cost: Decimal | None
    model_cost: dict[str, Decimal]
    last_updated_at: float | None


def _parse_entry(user: object, raw: object) -> _Entry:
    if not isinstance(user, str) or not user:
        raise ValueError(f"user ids must be non-empty strings, got {user!r}")
    if not isinstance(raw, Mapping):
        raise ValueError(f"user {user!r}: expected an object, got {type(raw).__name__}")
    try:
        total = raw.get("total_budget")
        models = raw.get("model_cost") or {}
        if not isinstance(models, Mapping):
            raise ValueError(f"model_cost must be an object, got {type(models).__name__}")
        current = raw.get("current_cost")
        return _Entry(
            user=user,
            total_budget=None if total is None else to_decimal(total, "total_budget"),
            has_duration="duration" in raw,
            period=period_from_duration(raw.get("duration")),
            created_at=parse_created_at(raw.get("created_at")),
            current_cost=None if current is None else to_decimal(current, "current_cost"),
            model_cost={
                str(model): to_decimal(cost, f"model_cost[{model!r}]")
                for model, cost in models.items()
            },
            last_updated_at=_timestamp(raw.get("last_updated_at"), "last_updated_at"),
        )
    except ValueError as error:
        raise ValueError(f"user {user!r}: {error}") from None


def parse_user_dict(data: object) -> list[_Entry]:
    """Validate a whole LiteLLM user dict before anything is applied (all or nothing)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected an object of users, got {type(data).__name__}")
    return [_parse_entry(user, raw) for user, raw in data.items()]


class ProjectStore:
    """Keep one project's LiteLLM users as budgets of ``guard`` (ids prefixed by ``namespace``)."""

    def __init__(self, guard: BudgetGuard, project: str, namespace: str = "") -> None:
        self.guard = guard
        self.project = project
        self.namespace = namespace
        self._owner = "user:" + namespace

    # -- reading --------------------------------------------------------------------

    def users(self) -> list[str]:
        """Return the project's users in the order they were created.

        Users with no recorded place (budgets set through the guard itself,
        or stored before places were recorded) come first, by name.
        """
        prefix = self._owner
        names = [
            budget.name[len(prefix) :]
            for budget in self.guard.budgets()
            if budget.name.startswith(prefix) and len(budget.name) > len(prefix)
        ]
        places = self.guard.ledger.scan(_keys.place_key(prefix))
        empty = Balance()
        return sorted(
            names, key=lambda user: (places.get(self._place_key(user), empty).spent, user)
        )

    def has(self, user: str) -> bool:
        """Tell whether ``user`` has a budget in the project."""
        return self._budget(user) is not None

    def entry(self, user: str) -> UserEntry:
        """Return ``user``'s LiteLLM record, or raise ``UnknownUserError``."""
        budget = self._require(user)
        key = budget.key(self.guard.clock())
        found = self.guard.ledger.scan(key)
        return self._entry(budget, key, found)

    def entries(self) -> dict[str, UserEntry]:
        """Return every user's LiteLLM record, reading the ledger once."""
        found = self.guard.ledger.scan("b|" + escape(self._owner))
        now = self.guard.clock()
        result: dict[str, UserEntry] = {}
        for user in self.users():
            budget = self._budget(user)
            if budget is not None:
                result[user] = self._entry(budget, budget.key(now), found)
        return result

    def _entry(self, budget: Budget, key: str, found: Mapping[str, Balance]) -> UserEntry:
        balance = found.get(key)
        models: dict[str, Decimal] = {}
        prefix = key + "|m="
        for name, held in sorted(found.items()):
            model = name[len(prefix) :]
            if name.startswith(prefix) and model and "|" not in model and held.spent:
                models[unescape(model)] = from_units(held.spent)
        entry: UserEntry = {
            "total_budget": budget.limit,
            "current_cost": from_units(balance.spent) if balance is not None else Decimal(0),
            "model_cost": models,
        }
        if budget.period.name != "lifetime":
            window = budget.window(self.guard.clock())
            assert window.start is not None and window.end is not None
            entry["duration"] = _days(budget, window.start, window.end)
            entry["created_at"] = budget.created_at.timestamp()
            # LiteLLM's last reset is when the current window began.
            entry["last_updated_at"] = window.start.timestamp()
        return entry

    # -- writing --------------------------------------------------------------------

    def create(
        self, user: str, total_budget: object, period: object, created_at: datetime | None
    ) -> UserEntry:
        """Set ``user``'s budget; spend already recorded in the window is kept."""
        self._place(user)
        self.guard.set_budget(
            total_budget, user=self.namespace + user, period=period, created_at=created_at
        )
        return self.entry(user)

    def add_cost(self, user: str, cost: Decimal, model: str | None) -> None:
        """Charge ``cost`` to ``user`` atomically, split by ``model``."""
        self._require(user)
        # A fresh context: the caller's budget_scope (and its caps) belongs to
        # the calls it guards, not to this bookkeeping.
        contextvars.Context().run(
            self.guard.record_spend, cost, user=self.namespace + user, model=model
        )

    def reset(self, user: str) -> None:
        """Start ``user``'s current window again at zero, model split included."""
        self._require(user)
        self.guard.reset(self.namespace + user)

    def import_new(self, data: object) -> list[str]:
        """Import a LiteLLM user dict, skipping users the ledger already knows; return the imported.

        Skipping known users makes importing idempotent, and keeps a stale
        file from overwriting spend that a shared ledger counted since.
        """
        entries = parse_user_dict(data)
        for entry in entries:
            if entry.total_budget is None:
                raise ValueError(f"user {entry.user!r}: total_budget is missing")
        imported: list[str] = []
        now = self.guard.clock()
        for entry in entries:
            if self.has(entry.user):
                continue
            self._place(entry.user)
            self.guard.set_budget(
                entry.total_budget,
                user=self.namespace + entry.user,
                period=entry.period,
                created_at=entry.created_at,
            )
            budget = self._require(entry.user)
            key = self._import_key(budget, entry, now)
            if entry.current_cost:
                self.guard.ledger.add([key], to_units(entry.current_cost))
            for model, cost in entry.model_cost.items():
                if cost:
                    self.guard.ledger.add([f"{key}|m={escape(model)}"], to_units(cost))
            imported.append(entry.user)
        return imported

    def _import_key(self, budget: Budget, entry: _Entry, now: float) -> str:
        """Return the window a LiteLLM ``current_cost`` belongs to.

        It counts from ``last_updated_at`` (LiteLLM's last reset). While
        LiteLLM's own period has not run out, it is spend of the current
        window; once it has, LiteLLM would have reset it, so it goes to the
        window it was spent in, usually a past one.
        """
        window = budget.window(now)
        last = entry.last_updated_at
        if last is None or budget.period.name == "lifetime" or window.start is None:
            return budget.key_for_window(window)
        length = _litellm_days(budget, window.start, window.end)
        if last + length * _DAY > now:
            return budget.key_for_window(window)
        at = datetime.fromtimestamp(last, timezone.utc)
        return budget.key_for_window(budget.period.window(at, budget.tz, budget.created_at))

    def apply(self, data: object) -> list[str]:
        """Apply a LiteLLM ``/set_budget`` user dict; return the users it touched.

        Budgets are set as given. Costs are absolute in LiteLLM's protocol, so
        a posted ``current_cost`` raises the stored one to it and ``0`` resets
        it; a lower, non-zero value comes from a writer that missed other
        processes' spend and is ignored (never let spend escape).
        """
        entries = parse_user_dict(data)
        for entry in entries:
            if entry.total_budget is None and not self.has(entry.user):
                raise ValueError(f"user {entry.user!r}: total_budget is missing for a new user")
        for entry in entries:
            if entry.total_budget is not None:
                self.create(entry.user, entry.total_budget, entry.period, entry.created_at)
            if entry.current_cost is not None:
                self._raise_cost(entry)
        return [entry.user for entry in entries]

    def _raise_cost(self, entry: _Entry) -> None:
        assert entry.current_cost is not None
        stored = self.entry(entry.user)
        current: Decimal = stored["current_cost"]
        if entry.current_cost == 0:
            if current:
                self.reset(entry.user)
            return
        if entry.current_cost < current:
            logger.warning(
                "project %r user %r: ignoring current_cost %s below the stored %s "
                "(a writer that missed other processes' spend)",
                self.project,
                entry.user,
                entry.current_cost,
                current,
            )
            return
        stored_models: dict[str, Decimal] = stored["model_cost"]
        left = entry.current_cost - current
        for model, cost in entry.model_cost.items():
            delta = min(cost - stored_models.get(model, Decimal(0)), left)
            if delta > 0:
                self.add_cost(entry.user, delta, model)
                left -= delta
        if left > 0:
            self.add_cost(entry.user, left, None)

    def _place_key(self, user: str) -> str:
        return _keys.place_key(budget_name(self.namespace + user))

    def _place(self, user: str) -> None:
        """Record ``user``'s place in the creation order, unless it has one."""
        ledger = self.guard.ledger
        key = self._place_key(user)
        if ledger.balances([key])[key].spent:
            return
        ledger.add([_CREATED], 1)
        place = ledger.balances([_CREATED])[_CREATED].spent
        # Write the place only where none is: a hold whose limit is the place
        # itself is refused, atomically, once the key holds anything, so two
        # processes creating the same new user cannot add up two places.
        hold = Reservation(f"o-{uuid.uuid4().hex}", (Hold(key, place, place),), ledger.clock() + 60)
        if ledger.reserve(hold) is None:
            ledger.settle(hold, place)

    def _budget(self, user: str) -> Budget | None:
        return self.guard.get_budget(self.namespace + user)

    def _require(self, user: str) -> Budget:
        budget = self._budget(user)
        if budget is None:
            raise UnknownUserError(user, self.project)
        return budget


def _days(budget: Budget, start: datetime, end: datetime) -> int | Decimal:
    """Return the length of a window in days, as LiteLLM's ``duration`` field holds it."""
    if budget.period.length is not None:
        days = Decimal(int(budget.period.length.total_seconds())) / _DAY
        return int(days) if days == days.to_integral_value() else days
    # Calendar days in the budget's zone: a DST day is still one day.
    return (end.astimezone(budget.tz).date() - start.astimezone(budget.tz).date()).days


def _litellm_days(budget: Budget, start: datetime, end: datetime | None) -> float:
    if end is None:
        return float("inf")
    return float(_days(budget, start, end))
