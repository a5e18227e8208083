"""The plan of holds: which budget keys a user's calls reserve on, until a window ends.

A plan depends on the user and the budget definitions only, never on a call's
estimate, so one plan serves every call of a user until the first of its
windows (or the day of its tallies) ends. Plans are swept when they expire,
not evicted at a fixed count: the cache holds the users active today.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import NamedTuple

from . import _keys
from .budgets import DEFAULT, GLOBAL, Budget, budget_name
from .ledger import Hold
from .periods import Period

__all__ = ["Holder", "Plan", "Planner"]

_DAY = Period("daily")


class Holder(NamedTuple):
    """What a hold of a reservation stands for, to explain a refusal."""

    kind: str  # "scope", "user", "global"
    budget: Budget | None
    scope: object  # the Scope, for kind "scope"


class Plan:
    """The budget keys of one user's calls, valid while ``since <= now < until``."""

    __slots__ = (
        "_held",
        "_held_units",
        "budgets",
        "day",
        "holders",
        "keys",
        "since",
        "tallies",
        "until",
        "user",
    )

    def __init__(
        self,
        user: str | None,
        keys: tuple[tuple[str, int], ...],
        holders: tuple[Holder, ...],
        since: float,
        until: float,
        budgets: dict[str, Budget],
        day: str,
    ) -> None:
        self.user = user
        self.keys = keys  # (key, limit in units) per budget that applies
        self.holders = holders
        # Valid while since <= now < until: a clock that steps back is honoured.
        self.since = since
        self.until = until
        self.budgets = budgets  # the definitions this plan was made from
        self.day = day
        self.tallies: dict[str | None, tuple[str, ...]] = {}
        self._held_units = -1
        self._held: tuple[Hold, ...] = ()

    def holds(self, units: int) -> tuple[Hold, ...]:
        """Return the holds of a call reserving ``units`` (the last amount is remembered)."""
        if units != self._held_units:
            self._held = tuple(Hold(key, limit, units) for key, limit in self.keys)
            self._held_units = units
        return self._held

    def tally_keys(self, model: str | None) -> tuple[str, ...]:
        """Return the counters a settled call adds to besides its budgets."""
        keys = self.tallies.get(model)
        if keys is None:
            keys = _keys.tally_keys(self.user, model, self.day, (k for k, _ in self.keys))
            if len(self.tallies) < 64:  # models per user per day: bounded
                self.tallies[model] = keys
        return keys


class Planner:
    """Make and cache plans, keyed by user."""

    __slots__ = ("_next_sweep", "_plans", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._plans: dict[str | None, Plan] = {}
        self._next_sweep = float("-inf")

    def plan(self, user: str | None, now: float, budgets: dict[str, Budget]) -> Plan:
        """Return the plan of ``user``'s calls at ``now``."""
        plan = self._plans.get(user)
        if plan is None or not plan.since <= now < plan.until or plan.budgets is not budgets:
            plan = self._new(user, now, budgets)
        return plan

    def forget(self) -> None:
        """Drop every plan (the budget definitions changed)."""
        self._plans = {}

    def _new(self, user: str | None, now: float, budgets: dict[str, Budget]) -> Plan:
        keys: list[tuple[str, int]] = []
        holders: list[Holder] = []
        day = _DAY.window(datetime.fromtimestamp(now, timezone.utc), self.tz)
        assert day.end is not None
        until = day.end.timestamp()
        since = day.start.timestamp() if day.start is not None else float("-inf")
        found: list[tuple[str, Budget | None]] = []
        if user is not None:
            found.append(("user", budgets.get(budget_name(user)) or budgets.get(DEFAULT)))
        found.append(("global", budgets.get(GLOBAL)))
        for kind, budget in found:
            if budget is None:
                continue
            window = budget.window(now)
            # The global budget counts everyone's spend on one key; only a
            # user's own (or default) budget is keyed by the user.
            owner = user if kind == "user" else None
            keys.append((budget.key_for_window(window, user=owner), budget.limit_units))
            holders.append(Holder(kind, budget, None))
            if window.end is not None:
                until = min(until, window.end.timestamp())
            if window.start is not None:
                since = max(since, window.start.timestamp())
        plan = Plan(user, tuple(keys), tuple(holders), since, until, budgets, day.id)
        if now >= self._next_sweep:
            # Every plan ends by the end of its day: sweeping once a day keeps
            # the cache to the users of the current day, with no cliff.
            self._plans = {u: p for u, p in self._plans.items() if p.since <= now < p.until}
            self._next_sweep = day.end.timestamp()
        self._plans[user] = plan
        return plan
