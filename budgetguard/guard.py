"""The engine: budgets, the before and after steps of every guarded call, queries.

``BudgetGuard`` is the whole engine as an object; the module-level functions
in ``budgetguard`` delegate to one default guard, as ``logging`` does with its
root logger. Tests and multi-tenant applications make their own guards.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol

from .budgets import DEFAULT, GLOBAL, Budget, budget_name, escape, unescape
from .errors import (
    BudgetExceededError,
    ConfigurationError,
    StorageError,
    UnknownModelError,
    UsageMissingError,
)
from .events import BudgetStatus, CallOutcome, Listener, ThresholdCrossing
from .ledger import Hold, Ledger, Refusal, Reservation, ledger_from_url
from .money import from_units, to_decimal, to_units
from .periods import Period, parse_tz, window_end_of
from .pricing import cost_of, lookup
from .scope import Scope, current_scope, current_user
from .scope import _current as _scope_var
from .tokens import call_shape, count_tokens, projected_cost
from .usage import accumulator_for, extract_usage

__all__ = ["BudgetGuard", "Call", "charge", "current_call"]

logger = logging.getLogger("budgetguard")

StoragePolicy = Literal["fail_closed", "fail_open"]
MissingCostPolicy = Literal["estimate", "raise", "ignore"]
UnknownModelPolicy = Literal["fallback", "raise", "ignore"]
OutsideScopePolicy = Literal["global", "refuse"]

_STORAGE_POLICIES = ("fail_closed", "fail_open")
_MISSING_COST_POLICIES = ("estimate", "raise", "ignore")
_UNKNOWN_MODEL_POLICIES = ("fallback", "raise", "ignore")
# What a model with no known price costs under on_unknown_model="fallback",
# dollars per million input and output tokens: deliberately on the high side
# of today's frontier models, so that unknown spend is over- not under-counted.
FALLBACK_PRICE = (Decimal("10"), Decimal("40"))
_OUTSIDE_SCOPE_POLICIES = ("global", "refuse")

# Reservation ids are unique across every process sharing a ledger.
_PROCESS_TAG = os.urandom(6).hex()
_PLAN_CACHE_SIZE = 4096
_NO_TAGS: Mapping[str, str] = MappingProxyType({})


class ProcessCap(Protocol):
    """The process-wide cap behind ``budgetguard.max_budget`` (see ``budgetguard.compat``)."""

    def check(self, guard: BudgetGuard) -> None:
        """Raise ``BudgetExceededError`` when the process has spent its cap."""

    def add(self, guard: BudgetGuard, cost: Decimal) -> None:
        """Count what a call of ``guard`` spent."""


# Installed by budgetguard.compat once a max_budget is set; a process without
# one pays a single global read per call.
process_cap: ProcessCap | None = None


class _Holder(NamedTuple):
    """What a hold of a reservation stands for, to explain a refusal."""

    kind: str  # "scope", "user", "global"
    budget: Budget | None
    scope: Scope | None


class _Plan:
    """The budget holds of one user's calls, cached until a window ends."""

    __slots__ = ("budgets", "day", "holders", "holds", "since", "tallies", "until", "user")

    def __init__(
        self,
        user: str | None,
        holds: tuple[Hold, ...],
        holders: tuple[_Holder, ...],
        since: float,
        until: float,
        budgets: dict[str, Budget],
        day: str,
    ) -> None:
        self.user = user
        self.holds = holds
        self.holders = holders
        # Valid while since <= now < until: a clock that steps back is honoured.
        self.since = since
        self.until = until  # seconds since the epoch: the first window end
        self.budgets = budgets  # the definitions this plan was made from
        self.day = day
        self.tallies: dict[str | None, tuple[str, ...]] = {}

    def tally_keys(self, model: str | None) -> tuple[str, ...]:
        """Return the counters a settled call adds to besides its budgets."""
        keys = self.tallies.get(model)
        if keys is None:
            u = escape(self.user) if self.user is not None else ""
            m = escape(model) if model is not None else ""
            found = ["t|", f"t|u={u}", f"t|m={m}", f"t|u={u}|m={m}", f"d|{self.day}|u={u}|m={m}"]
            found.extend(f"{hold.key}|m={m}" for hold in self.holds)
            keys = self.tallies[model] = tuple(found)
        return keys


class Call:
    """One guarded call in progress: its reservation and what it has cost so far."""

    __slots__ = (
        "charged",
        "estimate",
        "guard",
        "has_inner",
        "holders",
        "models",
        "parent",
        "plan",
        "request_model",
        "reservation",
        "started",
        "tags",
        "user",
    )

    def __init__(
        self,
        guard: BudgetGuard,
        user: str | None,
        reservation: Reservation | None,
        plan: _Plan,
        holders: tuple[_Holder, ...],
        estimate: int,
        request_model: str | None,
        tags: Mapping[str, str],
    ) -> None:
        self.guard = guard
        self.user = user
        self.reservation = reservation  # None when storage failed open
        self.plan = plan
        self.holders = holders
        self.estimate = estimate
        self.request_model = request_model
        self.tags = tags
        self.charged = 0  # units charged with charge() inside the call
        self.models: list[str] = []
        # A guarded call made while this one runs (an instrumented client call
        # inside a @budgeted function, a nested @budgeted) charges itself;
        # this call must then neither price the same response again nor fall
        # back to its own estimate.
        self.has_inner = False
        self.parent = _current_call.get()
        if self.parent is not None:
            self.parent.has_inner = True
        self.started = time.perf_counter()

    def add(self, units: int, model: str | None) -> None:
        """Add ``units`` charged by ``charge()`` while the call runs."""
        self.charged += units
        if model is not None and model not in self.models:
            self.models.append(model)


_current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "budgetguard_call", default=None
)


def current_call() -> Call | None:
    """Return the guarded call in progress in this context, if any."""
    return _current_call.get()


def charge(amount: object, *, model: str | None = None, user: str | None = None) -> Decimal:
    """Charge ``amount`` dollars for the call in progress, or record it in the current scope.

    Inside a ``@budgeted`` call the amount is added to that call's cost and
    settled with it. Elsewhere it is recorded at once, against the current
    scope's user (or ``user=``), on the default guard.
    """
    value = to_decimal(amount, "amount")
    call = _current_call.get()
    if call is not None and user is None:
        call.add(to_units(value), model)
        return value
    from . import _default

    _default.default_guard().record_spend(value, user=user, model=model)
    return value


class StreamMeter:
    """Watch a stream's chunks and read its usage when it ends.

    The right accumulator is picked from the first chunk; streams of things
    that are not provider chunks are ignored.
    """

    __slots__ = ("_accumulator", "_decided", "request_model")

    def __init__(self, request_model: str | None) -> None:
        self.request_model = request_model
        self._accumulator: Any = None
        self._decided = False

    def add(self, chunk: Any) -> None:
        """Look at one chunk."""
        if not self._decided:
            self._decided = True
            if chunk is None or isinstance(chunk, (str, bytes, int, float)):
                return
            self._accumulator = accumulator_for(chunk)
        if self._accumulator is not None:
            self._accumulator.add(chunk)

    def usage(self) -> Any:
        """Return the stream's usage: reported, else estimated from its text, else ``None``."""
        if self._accumulator is None:
            return None
        return self._accumulator.usage()


class _CachedBudgets:
    """The guard's view of the budget definitions stored in the ledger."""

    __slots__ = ("budgets", "loaded_at")

    def __init__(self) -> None:
        self.budgets: dict[str, Budget] = {}
        self.loaded_at = float("-inf")


class BudgetGuard:
    """Check budgets before LLM calls and charge their cost after, atomically.

    ``ledger`` is a URL (``memory://``, ``sqlite:///spend.db``, ``redis://...``)
    or a ``Ledger``. ``tz`` is the default time zone of calendar periods.
    ``on_storage_error`` says what happens when the ledger cannot be reached:
    ``"fail_closed"`` (default: refuse the call with ``StorageError`` — a
    budget that cannot be checked is not enforced, and an LLM bill is exactly
    what budgetguard exists to stop) or ``"fail_open"`` (run it, log, count).
    ``on_missing_cost`` says what a call whose cost nothing reported is
    charged: its estimate (default), nothing, or an error.
    ``on_unknown_model``: what a call to a model with no known price costs:
    ``"fallback"`` (default: ``fallback_price`` dollars per million input and
    output tokens, with a warning once per model and the ``budgetguard.unpriced``
    metric), ``"raise"`` (refuse it before the call when the model is known
    then; after the call, charge the fallback and raise ``UnknownModelError``),
    or ``"ignore"`` (record $0: spend escapes the budget, by your choice).
    ``outside_scope``: ``"global"`` charges calls made outside any
    ``budget_scope`` (and without ``user=``) to the global budget only;
    ``"refuse"`` refuses them.
    """

    def __init__(
        self,
        ledger: str | Ledger = "memory://",
        *,
        tz: object = "UTC",
        reservation_ttl: float = 900.0,
        budget_cache_ttl: float | None = None,
        on_storage_error: StoragePolicy = "fail_closed",
        on_missing_cost: MissingCostPolicy = "estimate",
        on_unknown_model: UnknownModelPolicy = "fallback",
        fallback_price: tuple[object, object] = FALLBACK_PRICE,
        outside_scope: OutsideScopePolicy = "global",
        default_output_tokens: int = 1024,
        alert_thresholds: Iterable[object] = (),
        on_threshold: Callable[[ThresholdCrossing], object] | None = None,
        metrics: bool = True,
        meter_provider: Any = None,
        user_attribute: Literal["off", "raw", "hashed"] = "off",
        user_salt: str | None = None,
        max_users: int = 100,
        clock: Callable[[], float] | None = None,
    ) -> None:
        _check_choice("on_storage_error", on_storage_error, _STORAGE_POLICIES)
        _check_choice("on_missing_cost", on_missing_cost, _MISSING_COST_POLICIES)
        _check_choice("on_unknown_model", on_unknown_model, _UNKNOWN_MODEL_POLICIES)
        _check_choice("outside_scope", outside_scope, _OUTSIDE_SCOPE_POLICIES)
        if reservation_ttl <= 0:
            raise ConfigurationError(f"reservation_ttl must be positive, got {reservation_ttl!r}")
        self.clock: Callable[[], float] = clock or time.time
        self.ledger = (
            ledger_from_url(ledger, clock=self.clock) if isinstance(ledger, str) else ledger
        )
        self.tz = parse_tz(tz)
        self.reservation_ttl = float(reservation_ttl)
        # A private ledger sees every change at once; a shared one is re-read
        # at most this often, so another process's set_budget shows up.
        if budget_cache_ttl is None:
            budget_cache_ttl = 1.0 if self.ledger.shared else float("inf")
        self.budget_cache_ttl = float(budget_cache_ttl)
        self.on_storage_error = on_storage_error
        self.on_missing_cost = on_missing_cost
        self.on_unknown_model = on_unknown_model
        self.outside_scope = outside_scope
        self.default_output_tokens = default_output_tokens
        self.fallback_price = (
            to_decimal(fallback_price[0], "fallback_price input"),
            to_decimal(fallback_price[1], "fallback_price output"),
        )
        self.alert_thresholds = tuple(
            sorted(to_decimal(f, "alert threshold") for f in alert_thresholds)
        )
        self.on_threshold = on_threshold
        self._fired: set[tuple[str, Decimal]] = set()
        self._cache = _CachedBudgets()
        self._cache_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._id_prefix = f"{_PROCESS_TAG}.{id(self):x}."
        self._plans: dict[tuple[str | None, int], _Plan] = {}
        self._day = Period("daily")
        self._listeners: list[Listener] = []
        self._warned: set[str] = set()
        self.telemetry: Any = None
        if metrics:
            from .telemetry import Telemetry

            self.telemetry = Telemetry(
                self,
                meter_provider=meter_provider,
                user_attribute=user_attribute,
                user_salt=user_salt,
                max_users=max_users,
            )
            self.add_listener(self.telemetry)

    def __repr__(self) -> str:
        return f"BudgetGuard(ledger={self.ledger.url!r})"

    # -- budgets -------------------------------------------------------------------

    def set_budget(
        self,
        limit: object,
        *,
        user: str | None = None,
        period: object = None,
        tz: object = None,
        created_at: datetime | None = None,
    ) -> Budget:
        """Set the budget of ``user``, or with no user the global budget over all spend.

        ``period`` is ``"daily"``, ``"weekly"``, ``"monthly"``, ``"yearly"``,
        ``None`` (lifetime) or a ``timedelta`` (windows of that length from
        ``created_at``). Changing a limit keeps what was spent in the window.
        """
        _check_user(user)
        return self._store(budget_name(user), limit, period, tz, created_at)

    def set_default_budget(
        self, limit: object, *, period: object = None, tz: object = None
    ) -> Budget:
        """Give every user without a budget of their own this budget (each user separately)."""
        return self._store(DEFAULT, limit, period, tz, None)

    def _store(
        self, name: str, limit: object, period: object, tz: object, created_at: datetime | None
    ) -> Budget:
        old = self._budgets().get(name)
        budget = Budget.create(
            limit,
            name=name,
            period=period,
            tz=self.tz if tz is None else tz,
            # Keep the anchor of fixed-length windows when only the limit changes.
            created_at=created_at
            or (
                old.created_at
                if old is not None
                else datetime.fromtimestamp(self.clock(), timezone.utc)
            ),
        )
        self._guard_storage(self.ledger.put_budget, name, budget.to_dict())
        with self._cache_lock:
            self._cache.budgets = {**self._cache.budgets, name: budget}
        return budget

    def get_budget(self, user: str | None = None) -> Budget | None:
        """Return the budget set for ``user`` (or the global one), not the default."""
        return self._budgets().get(budget_name(user))

    def get_default_budget(self) -> Budget | None:
        """Return the default budget for users without one of their own."""
        return self._budgets().get(DEFAULT)

    def budget_for(self, user: str | None) -> Budget | None:
        """Return the budget that applies to ``user``: their own, else the default."""
        budgets = self._budgets()
        if user is None:
            return budgets.get(GLOBAL)
        return budgets.get(budget_name(user)) or budgets.get(DEFAULT)

    def delete_budget(self, user: str | None = None) -> bool:
        """Delete the budget of ``user`` (or the global one); spend records stay."""
        return self._delete(budget_name(user))

    def delete_default_budget(self) -> bool:
        """Delete the default budget."""
        return self._delete(DEFAULT)

    def _delete(self, name: str) -> bool:
        deleted = bool(self._guard_storage(self.ledger.delete_budget, name))
        with self._cache_lock:
            budgets = dict(self._cache.budgets)
            budgets.pop(name, None)
            self._cache.budgets = budgets
        return deleted

    def budgets(self) -> list[Budget]:
        """Return every budget: global, default and per user."""
        return sorted(self._budgets(refresh=True).values(), key=lambda b: b.name)

    def _budgets(self, refresh: bool = False) -> dict[str, Budget]:
        cache = self._cache
        now = time.monotonic()
        if not refresh and now - cache.loaded_at < self.budget_cache_ttl:
            return cache.budgets
        try:
            stored = self._guard_storage(self.ledger.list_budgets)
        except StorageError:
            if refresh or self.on_storage_error == "fail_closed":
                raise
            stored = None
        if stored is None:  # storage failed open: keep what we knew
            return cache.budgets
        fresh: dict[str, Budget] = {}
        for name, data in stored.items():
            known = cache.budgets.get(name)
            try:
                budget = Budget.from_dict(name, data)
            except (KeyError, ValueError, ConfigurationError) as error:
                logger.error("ignoring unreadable budget %r in the ledger: %s", name, error)
                continue
            # Reuse the cached object so its window cache survives.
            fresh[name] = known if known is not None and known.same_definition(budget) else budget
        with self._cache_lock:
            cache.budgets = fresh
            cache.loaded_at = now
        return fresh

    # -- before the call -------------------------------------------------------------

    def begin(
        self,
        user: str | None,
        estimate: Decimal | int = 0,
        *,
        model: str | None = None,
        scope: Scope | None = None,
    ) -> Call:
        """Reserve ``estimate`` on every budget that applies, or raise ``BudgetExceededError``.

        ``estimate`` is dollars (``Decimal``) or, as an ``int``, ledger units.
        """
        if process_cap is not None:
            self._check_process_cap(user, model)
        reservation, plan, holders, units, tags, user = self._plan(user, estimate, scope)
        if reservation.holds:
            try:
                refusal = self.ledger.reserve(reservation)
            except StorageError as error:
                return self._storage_down(error, user, plan, holders, units, model, tags)
            if refusal is not None:
                raise self._refused(refusal, holders, user, model)
        return Call(self, user, reservation, plan, holders, units, model, tags)

    async def abegin(
        self,
        user: str | None,
        estimate: Decimal | int = 0,
        *,
        model: str | None = None,
        scope: Scope | None = None,
    ) -> Call:
        """Do ``begin`` without blocking the event loop on the ledger."""
        budgets = None
        if time.monotonic() - self._cache.loaded_at >= self.budget_cache_ttl:
            # A shared ledger's budget definitions are due for a re-read:
            # do it in a thread, so the loop never waits on the network.
            budgets = await asyncio.to_thread(self._budgets)
        if process_cap is not None:
            self._check_process_cap(user, model)
        reservation, plan, holders, units, tags, user = self._plan(user, estimate, scope, budgets)
        if reservation.holds:
            try:
                refusal = await self.ledger.areserve(reservation)
            except StorageError as error:
                return self._storage_down(error, user, plan, holders, units, model, tags)
            if refusal is not None:
                raise self._refused(refusal, holders, user, model)
        return Call(self, user, reservation, plan, holders, units, model, tags)

    def _plan(
        self,
        user: str | None,
        estimate: Decimal | int,
        scope: Scope | None,
        budgets: dict[str, Budget] | None = None,
    ) -> tuple[Reservation, _Plan, tuple[_Holder, ...], int, Mapping[str, str], str | None]:
        units = estimate if isinstance(estimate, int) else to_units(estimate)
        if scope is None:
            scope = _scope_var.get()
        tags: Mapping[str, str] = _NO_TAGS
        if scope is not None:
            tags = scope.tags
            if user is None:
                user = scope.user
        elif user is None and self.outside_scope == "refuse":
            raise BudgetExceededError(
                budget="outside-scope",
                limit=Decimal(0),
                spent=Decimal(0),
                reserved=Decimal(0),
                requested=from_units(units),
                message="call made outside any budget_scope and without a user, and this "
                "guard refuses those (outside_scope='refuse')",
            )
        now = self.clock()
        if budgets is None:
            budgets = self._budgets()
        plan = self._plans.get((user, units))
        if plan is None or not plan.since <= now < plan.until or plan.budgets is not budgets:
            plan = self._new_plan(user, units, now, budgets)
        holds, holders = plan.holds, plan.holders
        if scope is not None and scope.caps:
            holds = tuple(Hold(c.key, c.limit_units, units) for c in scope.caps) + holds
            holders = tuple(_Holder("scope", None, c) for c in scope.caps) + holders
            for capped in scope.caps:
                capped.on_exit(self._forget_scope)
        reservation = Reservation(
            f"{self._id_prefix}{next(self._ids)}", holds, now + self.reservation_ttl
        )
        return reservation, plan, holders, units, tags, user

    def _new_plan(
        self, user: str | None, units: int, now: float, budgets: dict[str, Budget]
    ) -> _Plan:
        """Work out which budget keys a call of ``user`` holds, valid until a window ends."""
        holds: list[Hold] = []
        holders: list[_Holder] = []
        day = self._day.window(datetime.fromtimestamp(now, timezone.utc), self.tz)
        assert day.end is not None
        until = day.end.timestamp()
        since = day.start.timestamp() if day.start is not None else float("-inf")
        found: list[tuple[str, Budget | None]] = []
        if user is not None:
            own = budgets.get(budget_name(user)) or budgets.get(DEFAULT)
            found.append(("user", own))
        found.append(("global", budgets.get(GLOBAL)))
        for kind, budget in found:
            if budget is None:
                continue
            window = budget.window(now)
            # The global budget counts everyone's spend on one key; only a
            # user's own (or default) budget is keyed by the user.
            owner = user if kind == "user" else None
            holds.append(Hold(budget.key_for_window(window, user=owner), budget.limit_units, units))
            holders.append(_Holder(kind, budget, None))
            if window.end is not None:
                until = min(until, window.end.timestamp())
            if window.start is not None:
                since = max(since, window.start.timestamp())
        plan = _Plan(user, tuple(holds), tuple(holders), since, until, budgets, day.id)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[(user, units)] = plan
        return plan

    def _check_process_cap(self, user: str | None, model: str | None) -> None:
        """Apply ``budgetguard.max_budget``, telling listeners of a refusal."""
        assert process_cap is not None
        try:
            process_cap.check(self)
        except BudgetExceededError as error:
            error.user = user if user is not None else current_user()
            for listener in self._listeners:
                _safely(listener.call_refused, error, user=error.user, request_model=model)
            raise

    def _refused(
        self,
        refusal: Refusal,
        holders: tuple[_Holder, ...],
        user: str | None,
        model: str | None,
    ) -> BudgetExceededError:
        holder = holders[refusal.index]
        budget = holder.budget
        if holder.kind == "scope":
            name, period, resets = "scope", "this block", None
        else:
            assert budget is not None
            name, period, resets = budget.name, budget.period.label, budget.resets_at(self.clock())
            if holder.kind == "user" and budget.name == DEFAULT:
                name = f"default (user:{user})"
        error = BudgetExceededError(
            budget=name,
            user=user,
            limit=from_units(refusal.limit),
            spent=from_units(refusal.spent),
            reserved=from_units(refusal.reserved),
            requested=from_units(refusal.requested),
            period=period,
            resets_at=resets,
        )
        for listener in self._listeners:
            _safely(listener.call_refused, error, user=user, request_model=model)
        return error

    def _storage_down(
        self,
        error: StorageError,
        user: str | None,
        plan: _Plan,
        holders: tuple[_Holder, ...],
        units: int,
        model: str | None,
        tags: Mapping[str, str],
    ) -> Call:
        for listener in self._listeners:
            _safely(listener.storage_failed, error, policy=self.on_storage_error)
        if self.on_storage_error == "fail_closed":
            logger.error("ledger unavailable, refusing the call (fail_closed): %s", error)
            raise error
        logger.warning("ledger unavailable, letting the call run unchecked (fail_open): %s", error)
        return Call(self, user, None, plan, holders, units, model, tags)

    def _forget_scope(self, key: str) -> None:
        try:
            self.ledger.clear([key])
        except StorageError as error:  # the counter is only garbage now
            logger.warning("could not drop the counter of a finished scope: %s", error)

    # -- after the call --------------------------------------------------------------------

    def finish(
        self,
        call: Call,
        cost: Decimal | None,
        *,
        model: str | None = None,
        usage: Any = None,
        error: BaseException | None = None,
        priced: bool = True,
        estimated: bool = False,
        provider: str | None = None,
        operation: str | None = None,
    ) -> None:
        """End ``call``: settle what it cost, or release it when nothing was spent.

        ``cost`` is what pricing found (``None``: nothing reported). Charges
        made with ``charge()`` during the call are added. A failed call with
        no known cost is released; a successful one follows ``on_missing_cost``.
        """
        units, estimated, missing = self._final_units(call, cost, error, estimated)
        self._end(call, units, model)
        self._tell(call, units or 0, model, usage, error, priced, estimated, provider, operation)
        self._raise_missing(missing)

    async def afinish(
        self,
        call: Call,
        cost: Decimal | None,
        *,
        model: str | None = None,
        usage: Any = None,
        error: BaseException | None = None,
        priced: bool = True,
        estimated: bool = False,
        provider: str | None = None,
        operation: str | None = None,
    ) -> None:
        """Do ``finish`` without blocking the event loop on the ledger."""
        units, estimated, missing = self._final_units(call, cost, error, estimated)
        await self._aend(call, units, model)
        self._tell(call, units or 0, model, usage, error, priced, estimated, provider, operation)
        self._raise_missing(missing)

    def _final_units(
        self, call: Call, cost: Decimal | None, error: BaseException | None, estimated: bool
    ) -> tuple[int | None, bool, bool]:
        """Return (units to charge or None to release, estimated, nothing reported the cost)."""
        if cost is not None:
            return to_units(cost) + call.charged, estimated, False
        if call.charged or call.models or call.has_inner:
            return call.charged, estimated, False
        if error is not None:
            return None, estimated, False  # nothing known to be spent: release
        if self.on_missing_cost == "ignore":
            return 0, estimated, True
        # "estimate", and "raise" too: the call ran and its cost is unknown,
        # so its estimate stays spent before the error is reported.
        return call.estimate, True, True

    def _raise_missing(self, missing: bool) -> None:
        if missing and self.on_missing_cost == "raise":
            raise UsageMissingError(
                "the call reported no usage and no cost; pass cost=, call charge(), "
                "or choose on_missing_cost='estimate'"
            )

    def _end(self, call: Call, units: int | None, model: str | None = None) -> None:
        reservation = call.reservation
        if reservation is None:  # storage failed open at the start
            return
        try:
            if units is None:
                if reservation.holds:
                    self.ledger.release(reservation)
                return
            tallies = self._tally_keys(call, model)
            if reservation.holds:
                self.ledger.settle(reservation, units, tallies)
            else:
                self.ledger.add(tallies, units)
        except StorageError as error:
            self._lost(error, call, units)
            return
        if self.alert_thresholds and units:
            self._check_thresholds(call)

    async def _aend(self, call: Call, units: int | None, model: str | None = None) -> None:
        reservation = call.reservation
        if reservation is None:
            return
        try:
            if units is None:
                if reservation.holds:
                    await self.ledger.arelease(reservation)
                return
            tallies = self._tally_keys(call, model)
            if reservation.holds:
                await self.ledger.asettle(reservation, units, tallies)
            else:
                await self.ledger.aadd(tallies, units)
        except StorageError as error:
            self._lost(error, call, units)
            return
        if self.alert_thresholds and units:
            # Reads the ledger (and may claim an alert marker): off the loop.
            await asyncio.to_thread(self._check_thresholds, call)

    def _lost(self, error: StorageError, call: Call, units: int | None) -> None:
        # The call already ran: raising now would not unspend the money. Log
        # loudly; the reservation expires by itself.
        for listener in self._listeners:
            _safely(listener.storage_failed, error, policy=self.on_storage_error)
        logger.error(
            "could not record $%s for user %r in the ledger: %s",
            from_units(units or 0),
            call.user,
            error,
        )

    def _tally_keys(self, call: Call, model: str | None) -> tuple[str, ...]:
        """Return the counters a settled call adds to besides its budgets."""
        if model is None:
            model = call.request_model or (call.models[0] if call.models else None)
        return call.plan.tally_keys(model)

    def _tell(
        self,
        call: Call,
        units: int,
        model: str | None,
        usage: Any,
        error: BaseException | None,
        priced: bool,
        estimated: bool,
        provider: str | None,
        operation: str | None,
    ) -> None:
        if not self._listeners and (process_cap is None or not units):
            return  # nobody to tell: skip building the Decimal
        cost = from_units(units)
        if process_cap is not None and units:
            process_cap.add(self, cost)
        if not self._listeners:
            return
        outcome = CallOutcome(
            call.user,
            cost,
            time.perf_counter() - call.started,
            call.request_model,
            model,
            provider,
            operation,
            usage,
            type(error).__qualname__ if error is not None else None,
            priced,
            estimated,
            call.tags,
        )
        for listener in self._listeners:
            _safely(listener.call_ended, outcome)

    def _check_thresholds(self, call: Call) -> None:
        reservation = call.reservation
        if reservation is None:
            return
        budget_holds = [
            (hold, holder)
            for hold, holder in zip(reservation.holds, call.holders, strict=True)
            if holder.budget is not None and hold.limit
        ]
        if not budget_holds:
            return
        try:
            balances = self.ledger.balances([hold.key for hold, _ in budget_holds])
        except StorageError:
            return
        for hold, holder in budget_holds:
            assert holder.budget is not None and hold.limit is not None
            spent = balances[hold.key].spent
            for fraction in self.alert_thresholds:
                if spent < fraction * hold.limit or (hold.key, fraction) in self._fired:
                    continue
                self._fired.add((hold.key, fraction))
                if self._claim_alert(hold.key, fraction):
                    self._alert(hold, holder.budget, call.user, fraction, spent)

    def _claim_alert(self, key: str, fraction: Decimal) -> bool:
        # One marker counter per budget window and threshold: the first
        # process to reserve it fires the alert, every other one is refused.
        marker = Reservation(
            f"{self._id_prefix}alert{next(self._ids)}",
            (Hold(f"a|{key}|{fraction}", 1, 1),),
            self.clock() + self.reservation_ttl,
        )
        try:
            if self.ledger.reserve(marker) is not None:
                return False
            self.ledger.settle(marker, 1)
        except StorageError:
            return True
        return True

    def _alert(
        self, hold: Hold, budget: Budget, user: str | None, fraction: Decimal, spent: int
    ) -> None:
        window = hold.key.rsplit("|", 1)[-1]
        crossing = ThresholdCrossing(
            budget=budget.name if budget.name != DEFAULT else f"default (user:{user})",
            user=user if budget.name != GLOBAL else None,
            period=budget.period.label,
            fraction=fraction,
            limit=budget.limit,
            spent=from_units(spent),
            window=window,
        )
        logger.warning(
            "budget %s reached %s%% of its limit: $%s of $%s (%s)",
            crossing.budget,
            format((fraction * 100).normalize(), "f"),
            crossing.spent,
            crossing.limit,
            crossing.period,
        )
        for listener in self._listeners:
            _safely(listener.threshold_crossed, crossing)
        if self.on_threshold is not None:
            _safely(self.on_threshold, crossing)

    # -- pricing -------------------------------------------------------------------------

    def estimate_call(self, kwargs: Mapping[str, Any]) -> tuple[Decimal, str] | None:
        """Return the projected cost and model of an LLM call from its keyword arguments.

        ``None`` when the arguments name no model or carry no prompt. A model
        with no price is refused here under ``on_unknown_model="raise"``,
        before any money is spent.
        """
        model = kwargs.get("model")
        if not isinstance(model, str):
            return None
        shape = call_shape(kwargs)
        if shape is None:
            return None
        output = shape.max_output_tokens
        if output is None:
            output = self.default_output_tokens
        price = lookup(shape.model)
        if price is None:
            if self.on_unknown_model == "raise":
                raise UnknownModelError(shape.model)
            if self.on_unknown_model == "ignore":
                return Decimal(0), shape.model
            tokens = count_tokens(shape.text_or_messages, shape.model)
            return self._fallback_cost(tokens, output), shape.model
        return (
            projected_cost(
                shape.model,
                shape.text_or_messages,
                output,
                default_output_tokens=self.default_output_tokens,
            ),
            shape.model,
        )

    def _fallback_cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        per_input, per_output = self.fallback_price
        return (input_tokens * per_input + output_tokens * per_output) / 1_000_000

    def price(self, usage: Any, model: str | None = None) -> tuple[Decimal, bool]:
        """Return the exact cost of ``usage`` and whether its model had a price.

        Applies ``on_unknown_model`` to a model with no price: the fallback
        price with a warning once per model, $0, or ``UnknownModelError``
        (raised by the caller after the call is charged).
        """
        name = usage.model or model
        try:
            if name is None:
                raise UnknownModelError("", "the response names no model and none was given")
            return cost_of(usage, name).total, True
        except UnknownModelError:
            if self.on_unknown_model == "ignore":
                return Decimal(0), False
            self.warn_once(
                f"unpriced:{name}",
                f"no price known for model {name!r}; charging the fallback price "
                f"(${self.fallback_price[0]}/M input, ${self.fallback_price[1]}/M output). "
                "Register a price with budgetguard.register_model(...)",
            )
            cost = self._fallback_cost(usage.total_input_tokens, usage.total_output_tokens)
            return cost, False

    def _priced_result(self, call: Call, result: Any) -> tuple[Decimal | None, Any, bool]:
        """Return (cost, usage, priced) of a response; cost ``None`` if it reports no usage."""
        if (
            call.has_inner
            or result is None
            or isinstance(result, (str, bytes, int, float, Decimal))
        ):
            return None, None, True
        usage = extract_usage(result)
        if usage is None:
            return None, None, True
        cost, priced = self.price(usage, call.request_model)
        return cost, usage, priced

    def complete(
        self,
        call: Call,
        result: Any,
        cost: Callable[[Any], object] | None = None,
        *,
        error: BaseException | None = None,
    ) -> Any:
        """End ``call`` with its result: price it (``cost(result)`` or its usage) and settle."""
        if cost is not None:
            try:
                amount = to_decimal(cost(result), "cost")
            except BaseException as failure:
                self.finish(call, None, error=error)  # charge the estimate, then report
                raise failure
            self.finish(call, amount, error=error)
            return result
        found, usage, priced = self._priced_result(call, result)
        self._finish_priced(call, found, usage, priced, error)
        return result

    async def acomplete(
        self,
        call: Call,
        result: Any,
        cost: Callable[[Any], object] | None = None,
        *,
        error: BaseException | None = None,
    ) -> Any:
        """Do ``complete`` without blocking the event loop on the ledger."""
        if cost is not None:
            try:
                amount = to_decimal(cost(result), "cost")
            except BaseException as failure:
                await self.afinish(call, None, error=error)
                raise failure
            await self.afinish(call, amount, error=error)
            return result
        found, usage, priced = self._priced_result(call, result)
        await self._afinish_priced(call, found, usage, priced, error)
        return result

    def _finish_priced(
        self,
        call: Call,
        amount: Decimal | None,
        usage: Any,
        priced: bool,
        error: BaseException | None,
    ) -> None:
        self.finish(
            call,
            amount,
            model=usage.model if usage is not None else None,
            usage=usage,
            error=error,
            priced=priced,
            estimated=bool(usage is not None and usage.estimated),
            provider=usage.provider if usage is not None else None,
            operation=usage.operation if usage is not None else None,
        )
        self._raise_unpriced(usage, priced)

    async def _afinish_priced(
        self,
        call: Call,
        amount: Decimal | None,
        usage: Any,
        priced: bool,
        error: BaseException | None,
    ) -> None:
        await self.afinish(
            call,
            amount,
            model=usage.model if usage is not None else None,
            usage=usage,
            error=error,
            priced=priced,
            estimated=bool(usage is not None and usage.estimated),
            provider=usage.provider if usage is not None else None,
            operation=usage.operation if usage is not None else None,
        )
        self._raise_unpriced(usage, priced)

    def _raise_unpriced(self, usage: Any, priced: bool) -> None:
        if not priced and self.on_unknown_model == "raise":
            raise UnknownModelError(
                usage.model or "",
                f"no price known for model {usage.model!r}; the call was charged the "
                "fallback price. Register a price with budgetguard.register_model(...)",
            )

    def stream_meter(self, call: Call) -> StreamMeter:
        """Return what watches a stream's chunks for its usage (for generators and streams)."""
        return StreamMeter(call.request_model)

    def complete_stream(
        self,
        call: Call,
        meter: StreamMeter | None,
        *,
        error: BaseException | None = None,
    ) -> None:
        """End a streamed call from the usage its chunks carried, or its text, or release it."""
        amount, usage, priced = self._priced_stream(call, meter)
        self._finish_priced(call, amount, usage, priced, error)

    async def acomplete_stream(
        self,
        call: Call,
        meter: StreamMeter | None,
        *,
        error: BaseException | None = None,
    ) -> None:
        """Do ``complete_stream`` without blocking the event loop on the ledger."""
        amount, usage, priced = self._priced_stream(call, meter)
        await self._afinish_priced(call, amount, usage, priced, error)

    def _priced_stream(
        self, call: Call, meter: StreamMeter | None
    ) -> tuple[Decimal | None, Any, bool]:
        if call.has_inner:
            return None, None, True  # the calls made inside charged themselves
        usage = meter.usage() if meter is not None else None
        if usage is None:
            return None, None, True
        if usage.model is None and call.request_model is not None:
            usage = usage.with_model(call.request_model)
        cost, priced = self.price(usage, call.request_model)
        return cost, usage, priced

    # -- recording spend directly -------------------------------------------------------------

    def record_spend(
        self, amount: object, *, user: str | None = None, model: str | None = None
    ) -> Decimal:
        """Record spend that already happened against the current scope's budgets.

        Never refuses (the money is spent), but pushes the budgets towards
        their limits so that the next call is refused.
        """
        value = to_decimal(amount, "amount")
        scope = current_scope()
        if user is None and scope is not None:
            user = scope.user
        reservation, plan, holders, _, tags, user = self._plan(user, Decimal(0), scope)
        call = Call(self, user, reservation, plan, holders, 0, model, tags)
        units = to_units(value)
        tallies = self._tally_keys(call, model)
        self._guard_storage(self.ledger.add, (*reservation.keys, *tallies), units)
        if self.alert_thresholds and units:
            self._check_thresholds(call)
        self._tell(call, units, model, None, None, True, False, None, None)
        return value

    def record(
        self, response: Any, *, user: str | None = None, model: str | None = None
    ) -> Decimal:
        """Charge a response that was obtained outside any guarded call, from its usage.

        Charged to ``user`` or the current scope's user, on every budget that
        applies. A response without usage raises ``UsageMissingError``.
        """
        usage = extract_usage(response)
        if usage is None:
            raise UsageMissingError(
                f"cannot record a {type(response).__name__}: it carries no usage budgetguard reads"
            )
        cost, priced = self.price(usage, model)
        self.record_spend(cost, user=user, model=usage.model or model)
        self._raise_unpriced(usage, priced)
        return cost

    # -- queries ------------------------------------------------------------------------------

    def spend(self, user: str | None = None, *, model: str | None = None) -> Decimal:
        """Return what ``user`` (or everyone) spent in the current period of their budget.

        Without a budget that applies, return the lifetime total. ``model=``
        narrows it to one model.
        """
        key = self._spend_key(user, model)
        balance = self._guard_storage(self.ledger.balances, [key])
        return from_units(balance[key].spent) if balance else Decimal(0)

    def _spend_key(self, user: str | None, model: str | None) -> str:
        budget = self.budget_for(user)
        suffix = f"|m={escape(model)}" if model is not None else ""
        if budget is not None:
            return budget.key(self.clock(), user=user) + suffix
        if user is None:
            return f"t|{suffix[1:]}" if suffix else "t|"
        return f"t|u={escape(user)}{suffix}"

    def remaining(self, user: str | None = None) -> Decimal | None:
        """Return what is left of the tightest budget that applies, or ``None`` if none does."""
        found: list[Decimal] = []
        now = self.clock()
        keys: list[tuple[str, Budget]] = []
        own = self.budget_for(user) if user is not None else None
        if own is not None:
            keys.append((own.key(now, user=user), own))
        shared = self.get_budget(None)
        if shared is not None:
            keys.append((shared.key(now), shared))
        if not keys:
            return None
        balances = self._guard_storage(self.ledger.balances, [k for k, _ in keys]) or {}
        for key, budget in keys:
            balance = balances.get(key)
            used = (balance.spent + balance.reserved) if balance else 0
            found.append(max(Decimal(0), budget.limit - from_units(used)))
        return min(found)

    def spend_by_model(self, user: str | None = None) -> dict[str, Decimal]:
        """Return spend per model in the current period of the budget that applies."""
        budget = self.budget_for(user)
        if budget is not None:
            prefix = budget.key(self.clock(), user=user) + "|m="
        elif user is None:
            prefix = "t|m="
        else:
            prefix = f"t|u={escape(user)}|m="
        found = self._guard_storage(self.ledger.scan, prefix) or {}
        return {
            unescape(key[len(prefix) :]): from_units(balance.spent)
            for key, balance in sorted(found.items())
            if "|" not in key[len(prefix) :] and balance.spent
        }

    def prune(self, before: datetime) -> int:
        """Delete the counters of budget windows and days that ended before ``before``.

        Resets are lazy, so every window leaves its counters behind; a
        long-running ledger sheds them with this. Lifetime totals, current
        windows and open reservations are kept. Window ids name local dates
        of the budget's time zone, so only windows that ended a full day
        before ``before`` go. Return how many counters were deleted.
        """
        if before.tzinfo is None:
            raise ValueError("before must be an aware datetime (e.g. with tzinfo=timezone.utc)")
        cutoff = before - timedelta(days=1)
        doomed: list[str] = []
        # b|<owner>|<window>[|m=..], d|<day>|u=..|m=.., a|b|<owner>|<window>|<fraction>
        for prefix, position in (("b|", 2), ("d|", 1), ("a|b|", 3)):
            found = self._guard_storage(self.ledger.scan, prefix) or {}
            for key, balance in found.items():
                parts = key.split("|")
                if balance.reserved or len(parts) <= position:
                    continue
                end = window_end_of(parts[position])
                if end is not None and end <= cutoff:
                    doomed.append(key)
        for start in range(0, len(doomed), 500):
            self._guard_storage(self.ledger.clear, doomed[start : start + 500])
        if doomed:
            gone = set(doomed)
            self._fired = {item for item in self._fired if item[0] not in gone}
            logger.info("pruned %d counters of windows that ended before %s", len(doomed), cutoff)
        return len(doomed)

    def reset(self, user: str | None = None) -> None:
        """Start the current period of ``user``'s budget (or the global one) again at zero."""
        budget = self.budget_for(user)
        if budget is None:
            return
        key = budget.key(self.clock(), user=user)
        found = self._guard_storage(self.ledger.scan, key + "|m=") or {}
        self._guard_storage(self.ledger.clear, [key, *found])
        self._fired = {item for item in self._fired if item[0] != key}

    def budget_statuses(self) -> list[BudgetStatus]:
        """Return every budget's state in its current window (for metrics and reports)."""
        now = self.clock()
        budgets = self._budgets()
        keyed: list[tuple[str, Budget, str | None]] = []
        for name, budget in sorted(budgets.items()):
            if name == DEFAULT:
                continue
            keyed.append((budget.key(now), budget, budget.user))
        if not keyed:
            return []
        balances = self.ledger.balances([key for key, _, _ in keyed])
        return [
            BudgetStatus(
                name=budget.name,
                user=user,
                period=budget.period.label,
                limit=budget.limit,
                spent=from_units(balances[key].spent),
                reserved=from_units(balances[key].reserved),
                resets_at=budget.resets_at(now),
            )
            for key, budget, user in keyed
        ]

    # -- wiring ----------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Tell ``listener`` about every call, refusal, alert and storage failure."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop telling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def budgeted(self, func: Any = None, /, **options: Any) -> Any:
        """Guard a function with this guard; see ``budgetguard.budgeted``."""
        from .decorators import budgeted

        return budgeted(func, guard=self, **options)

    def close(self) -> None:
        """Stop exporting metrics and close the ledger."""
        if self.telemetry is not None:
            self.remove_listener(self.telemetry)
            _safely(self.telemetry.shutdown)
        self.ledger.close()

    def _guard_storage(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Run an administrative ledger operation, applying the storage policy."""
        try:
            return operation(*args)
        except StorageError as error:
            for listener in self._listeners:
                _safely(listener.storage_failed, error, policy=self.on_storage_error)
            raise

    def warn_once(self, topic: str, message: str) -> None:
        """Warn (``warnings`` and the log) about ``topic`` the first time only."""
        if topic in self._warned:
            return
        self._warned.add(topic)
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_user(user: object) -> None:
    if user is not None and not isinstance(user, str):
        raise ValueError(f"user must be a str or None, not {type(user).__name__}")


def _safely(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    # Listeners observe; a broken exporter must never break the user's call.
    try:
        function(*args, **kwargs)
    except Exception:
        logger.exception("budgetguard listener %r failed", function)
