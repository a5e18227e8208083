"""The plan of holds: which budget keys a call reserves on, until a window ends.

A plan depends on who the call is for (its user, tags, model and provider)
and on the budget definitions, never on a call's estimate, so one plan
serves every such call until the first of its windows (or the day of its
tallies, or a boost) ends. Plans are swept when they expire, not evicted at
a fixed count: the cache holds the subjects active today.

Which budgets apply to a call: the user's own (else the default), each of
the user's labelled budgets (``daily@user:alice``, else ``daily@default``),
the global ones, the budgets of each tag the call's scope carries (the exact
value, else the ``*`` one), of every model pattern its model matches, of its
provider, and every ancestor (``parent``) of those, each key held once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import datetime, timezone, tzinfo
from typing import NamedTuple

from . import _keys
from .budgets import BOOST, DEFAULT, GLOBAL, UNITS, Budget, budget_name, labelled, split_name
from .ledger import Hold
from .periods import Period

__all__ = ["Holder", "Plan", "Planner"]

_DAY = Period("daily")
_USD = 0
_CONCURRENCY = UNITS.index("concurrency")
_TOKEN_UNITS = ("input_tokens", "output_tokens", "tokens")
#: The most tags of one call that get a day tally (``report --by tag``).
_TALLIED_TAGS = 8


class Holder(NamedTuple):
    """What a hold of a reservation stands for, to explain a refusal."""

    kind: str  # "scope", "user", "global", "tag", "model", "provider", "default"
    budget: Budget | None
    scope: object  # the Scope, for kind "scope"
    owner: str | None = None  # the concrete subject held: "user:bob" for the default budget


class _Slot(NamedTuple):
    """One budget key of a plan, before a call's amounts are known."""

    key: str
    limit: int
    unit: int
    over: str | None  # soft and shadow budgets count the calls they had no room for here
    prior: str | None  # a sliding budget's previous window
    start: float  # a sliding budget's window, to weigh the previous one
    length: float


class Plan:
    """The budget keys of one subject's calls, valid while ``since <= now < until``."""

    __slots__ = (
        "_held",
        "_held_units",
        "budgets",
        "day",
        "holders",
        "keys",
        "simple",
        "since",
        "slots",
        "soft",
        "tallies",
        "until",
        "usd_keys",
        "user",
    )

    def __init__(
        self,
        user: str | None,
        slots: tuple[_Slot, ...],
        holders: tuple[Holder, ...],
        since: float,
        until: float,
        budgets: dict[str, Budget],
        day: str,
    ) -> None:
        self.user = user
        self.slots = slots
        self.keys = tuple((s.key, s.limit) for s in slots)  # (key, limit in units)
        self.holders = holders
        # Valid while since <= now < until: a clock that steps back is honoured.
        self.since = since
        self.until = until
        self.budgets = budgets  # the definitions this plan was made from
        self.day = day
        # Dollar budgets only, hard, no sliding: the hot path builds holds from units alone.
        self.simple = all(s.unit == _USD and s.over is None and s.prior is None for s in slots)
        self.soft = any(s.over is not None for s in slots)
        self.usd_keys = tuple(s.key for s in slots if s.unit == _USD)
        self.tallies: dict[object, tuple[str, ...]] = {}
        self._held_units = -1
        self._held: tuple[Hold, ...] = ()

    def holds(self, units: int) -> tuple[Hold, ...]:
        """Return the holds of a call reserving ``units`` (the last amount is remembered)."""
        if units != self._held_units:
            self._held = tuple(Hold(key, limit, units) for key, limit in self.keys)
            self._held_units = units
        return self._held

    def holds_of(
        self, amounts: tuple[int, ...], now: float, *, free: bool, inner: bool
    ) -> tuple[tuple[Hold, ...], tuple[Holder, ...]]:
        """Return the holds (and their holders) of a call reserving ``amounts`` at ``now``.

        ``amounts`` has one amount per unit. A call known to cost nothing
        (``free``: its model's price is zero) holds nothing on dollar
        budgets, so a spent one does not refuse it. A call made inside
        another guarded call (``inner``) takes no place among the calls in
        flight: the outer call holds it.
        """
        holds: list[Hold] = []
        holders: list[Holder] = []
        for slot, holder in zip(self.slots, self.holders, strict=True):
            if (free and slot.unit == _USD) or (inner and slot.unit == _CONCURRENCY):
                continue
            weight = 0
            if slot.prior is not None:
                share = 1.0 - (now - slot.start) / slot.length
                weight = min(1_000_000, max(0, round(share * 1_000_000)))
            holds.append(
                Hold(
                    slot.key,
                    slot.limit,
                    amounts[slot.unit],
                    slot.unit,
                    slot.over,
                    slot.prior if weight else None,
                    weight,
                )
            )
            holders.append(holder)
        return tuple(holds), tuple(holders)

    def tally_keys(
        self, model: str | None, tags: Mapping[str, str] | None = None
    ) -> tuple[str, ...]:
        """Return the counters a settled call adds to besides its budgets.

        ``tags`` are the call's own (its scope's): the plan may serve calls
        with other tags, which no budget looks at, so they are not the plan's.
        """
        found: object = model
        if tags:
            found = (model, tuple(sorted(tags.items()))[:_TALLIED_TAGS])
        keys = self.tallies.get(found)
        if keys is None:
            tagged = found[1] if isinstance(found, tuple) else ()
            keys = _keys.tally_keys(self.user, model, self.day, self.usd_keys, tagged)
            if len(self.tallies) < 64:  # models (and tag sets) per subject per day: bounded
                self.tallies[found] = keys
        return keys


class _Index:
    """The budget definitions sorted by what selects them, made once per set of definitions."""

    def __init__(self, budgets: Mapping[str, Budget]) -> None:
        self.user_labels: set[str | None] = {None}
        self.globals: list[Budget] = []
        self.tags: dict[str, dict[str, list[Budget]]] = {}  # key -> value ("*" too) -> budgets
        self.models: list[tuple[str, Budget]] = []
        self.providers: dict[str, list[Budget]] = {}
        self.boosts: dict[str, Budget] = {}
        #: Whether some budget counts tokens: only then are a call's tokens estimated.
        self.tokens = False
        for name, budget in budgets.items():
            if budget.unit in _TOKEN_UNITS:
                self.tokens = True
            if name.startswith(BOOST):
                self.boosts[name[1:]] = budget
                continue
            try:
                label, subject = split_name(name)
            except ValueError:  # written by a newer version: not ours to apply
                continue
            kind, _, value = subject.partition(":")
            if subject == GLOBAL:
                self.globals.append(budget)
            elif kind in ("user", DEFAULT):
                self.user_labels.add(label)
            elif kind == "tag":
                key, _, tag_value = value.partition("=")
                self.tags.setdefault(key, {}).setdefault(tag_value, []).append(budget)
            elif kind == "model":
                self.models.append((value, budget))
            elif kind == "provider":
                self.providers.setdefault(value, []).append(budget)
        self.globals.sort(key=lambda b: b.name)
        self.models.sort(key=lambda item: item[1].name)


class Planner:
    """Make and cache plans, keyed by user (and tags, model, provider where budgets need them)."""

    __slots__ = ("_index", "_index_of", "_keyed", "_next_sweep", "_plans", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._plans: dict[object, Plan] = {}
        self._next_sweep = float("-inf")
        self._index: _Index | None = None
        self._index_of: dict[str, Budget] | None = None
        #: Whether some budget is on tags, models or providers (plans then depend on them).
        self._keyed = False

    def index(self, budgets: dict[str, Budget]) -> _Index:
        """Return the index of ``budgets`` (made again when the definitions change)."""
        if self._index is None or self._index_of is not budgets:
            self._index = _Index(budgets)
            self._index_of = budgets
            self._keyed = bool(self._index.tags or self._index.models or self._index.providers)
        return self._index

    def counts_tokens(self, budgets: dict[str, Budget]) -> bool:
        """Tell whether some budget counts tokens (calls then estimate theirs)."""
        return self.index(budgets).tokens

    def subject_key(
        self,
        user: str | None,
        tags: Mapping[str, str],
        model: str | None,
        provider: str | None,
        budgets: dict[str, Budget],
    ) -> object:
        """Return what a call's plan is cached under: only what some budget looks at."""
        index = self.index(budgets)
        if not (index.tags or index.models or index.providers):
            return user
        return (
            user,
            tuple(sorted((k, v) for k, v in tags.items() if k in index.tags)),
            model if index.models else None,
            provider if index.providers else None,
        )

    def plan(
        self,
        user: str | None,
        now: float,
        budgets: dict[str, Budget],
        tags: Mapping[str, str] | None = None,
        model: str | None = None,
        provider: str | None = None,
    ) -> Plan:
        """Return the plan of a call for ``user`` (with its tags, model, provider) at ``now``."""
        cached = self.subject_key(user, tags or {}, model, provider, budgets)
        plan = self._plans.get(cached)
        if plan is None or not plan.since <= now < plan.until or plan.budgets is not budgets:
            plan = self._new(cached, user, now, budgets, tags or {}, model, provider)
        return plan

    def forget(self) -> None:
        """Drop every plan and the index (the budget definitions changed)."""
        self._plans = {}
        self._index = self._index_of = None

    def changed(self, name: str) -> None:
        """Drop what the definition ``name`` feeds: one user's plan, or every plan."""
        if name.startswith("user:") and not self._keyed:
            # A user's own budget feeds that user's plan alone (the index
            # holds no user names), so setting 100,000 of them stays cheap.
            self._plans.pop(name[5:], None)
        else:
            self.forget()

    def _new(
        self,
        cached: object,
        user: str | None,
        now: float,
        budgets: dict[str, Budget],
        tags: Mapping[str, str],
        model: str | None,
        provider: str | None,
    ) -> Plan:
        index = self.index(budgets)
        day = _DAY.window(datetime.fromtimestamp(now, timezone.utc), self.tz)
        assert day.end is not None
        bounds = [
            day.start.timestamp() if day.start is not None else float("-inf"),
            day.end.timestamp(),
        ]
        # (budget, the concrete subject it is held for), in the order refusals are checked.
        found: list[tuple[str, Budget, str]] = []
        if user is not None:
            own = budget_name(user)
            for label in sorted(index.user_labels, key=lambda x: (x is not None, x or "")):
                budget = budgets.get(labelled(label, own)) or budgets.get(labelled(label, DEFAULT))
                if budget is not None:
                    found.append(
                        (
                            "user" if budget.name != labelled(label, DEFAULT) else DEFAULT,
                            budget,
                            own,
                        )
                    )
        for budget in index.globals:
            found.append(("global", budget, GLOBAL))
        for key in sorted(tags):
            by_value = index.tags.get(key)
            if not by_value:
                continue
            subject = f"tag:{key}={tags[key]}"
            exact = by_value.get(tags[key], [])
            labels = {b.label for b in exact}
            found.extend(("tag", b, subject) for b in exact)
            found.extend(
                ("tag", b, subject) for b in by_value.get("*", []) if b.label not in labels
            )
        if model is not None:
            for pattern, budget in index.models:
                if fnmatch.fnmatchcase(model, pattern):
                    found.append(("model", budget, budget.subject))
        if provider is not None:
            found.extend(("provider", b, b.subject) for b in index.providers.get(provider, []))
        self._add_ancestors(found, budgets)
        slots: list[_Slot] = []
        holders: list[Holder] = []
        seen: set[str] = set()
        for kind, budget, subject in found:
            slot = self._slot(budget, subject, now, index, bounds)
            if slot.key in seen:
                continue
            seen.add(slot.key)
            slots.append(slot)
            holders.append(Holder(kind, budget, None, labelled(budget.label, subject)))
        plan = Plan(user, tuple(slots), tuple(holders), bounds[0], bounds[1], budgets, day.id)
        if now >= self._next_sweep:
            # Every plan ends by the end of its day: sweeping once a day keeps
            # the cache to the subjects of the current day, with no cliff.
            self._plans = {u: p for u, p in self._plans.items() if p.since <= now < p.until}
            self._next_sweep = day.end.timestamp()
        self._plans[cached] = plan
        return plan

    @staticmethod
    def _add_ancestors(found: list[tuple[str, Budget, str]], budgets: Mapping[str, Budget]) -> None:
        """Append every budget's parents (once each; a cycle stops where it closes)."""
        named = {budget.name for _, budget, _ in found}
        position = 0
        while position < len(found):
            parent = found[position][1].parent
            position += 1
            if parent is None or parent in named:
                continue
            budget = budgets.get(parent)
            if budget is None or budget.subject == DEFAULT or budget.subject.endswith("=*"):
                continue  # a parent must be one concrete budget; a missing one is skipped
            named.add(parent)
            found.append((budget.kind, budget, budget.subject))

    def _slot(
        self, budget: Budget, subject: str, now: float, index: _Index, bounds: list[float]
    ) -> _Slot:
        """Return the slot of ``budget`` held for ``subject``, and narrow the plan's validity."""
        limit = budget.limit_units
        boost = index.boosts.get(budget.name)
        if boost is not None and boost.until is not None:
            ends = boost.until.timestamp()
            if now < ends:
                limit = boost.limit_units
                bounds[1] = min(bounds[1], ends)
        window = budget.window(now)
        if window.end is not None:
            bounds[1] = min(bounds[1], window.end.timestamp())
        if window.start is not None:
            bounds[0] = max(bounds[0], window.start.timestamp())
        owner = labelled(budget.label, subject)
        key = _keys.budget_key(owner, window.id)
        over = _keys.over_key(key) if budget.mode != "hard" else None
        prior = None
        start = length = 0.0
        if budget.sliding and window.start is not None and window.end is not None:
            previous = budget.period.previous(window, budget.tz, budget.created_at)
            prior = _keys.budget_key(owner, previous.id)
            start, length = window.start.timestamp(), (window.end - window.start).total_seconds()
        return _Slot(key, limit, UNITS.index(budget.unit), over, prior, start, length)
