"""The engine: configuration, budgets, the one lifecycle of a guarded call, queries.

``BudgetGuard`` is the whole engine as an object; the module-level functions
in ``budgetguard`` delegate to one default guard, as ``logging`` does with its
root logger. Tests and multi-tenant applications make their own guards.

Every guarded call, whatever its entry point, goes through one lifecycle:

1. ``_open`` decides (pure): who pays, which holds apply, what to reserve.
2. A shell does the I/O: ``_begin`` reserves, ``_abegin`` awaits the reservation.
3. The call runs inside ``with call:`` (the current call, restored by token).
4. ``_ending`` decides (pure) how it ends: units to settle or a release,
   tallies, the missing-cost and unknown-model policies.
5. A shell writes the end (``_close`` / ``_aclose``), then ``_ended`` learns,
   tells listeners and raises what the policies owe.

The sync and async shells differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from . import _hooks, _keys
from ._alerts import Alerts
from ._call import Call, _current_call, current_call
from ._costing import FALLBACK_PRICE, Pricer
from ._estimate import MISSING_ESTIMATE_POLICIES, Learner, MissingEstimatePolicy
from ._plan import Holder, Plan, Planner
from .budgets import DEFAULT, GLOBAL, Budget, budget_name
from .errors import (
    BudgetExceededError,
    ConfigurationError,
    EstimateMissingError,
    StorageError,
    UsageMissingError,
)
from .events import BudgetStatus, CallOutcome, Listener, ThresholdCrossing
from .ledger import Hold, Ledger, Refusal, Reservation, ledger_from_url
from .money import from_units, to_decimal, to_units
from .periods import parse_tz, window_end_of
from .scope import Scope, current_scope, current_user
from .scope import _current as _scope_var
from .usage import StreamMeter, Usage, extract_usage

if TYPE_CHECKING:
    from .scope import budget_scope as _budget_scope

__all__ = ["FALLBACK_PRICE", "BudgetGuard", "Call", "charge", "current_call"]

logger = logging.getLogger("budgetguard")

StoragePolicy = Literal["fail_closed", "fail_open"]
MissingCostPolicy = Literal["estimate", "raise", "ignore"]
UnknownModelPolicy = Literal["fallback", "raise", "ignore"]
OutsideScopePolicy = Literal["global", "refuse"]

_STORAGE_POLICIES = ("fail_closed", "fail_open")
_MISSING_COST_POLICIES = ("estimate", "raise", "ignore")
_UNKNOWN_MODEL_POLICIES = ("fallback", "raise", "ignore")
_OUTSIDE_SCOPE_POLICIES = ("global", "refuse")
_NO_TAGS: Mapping[str, str] = MappingProxyType({})


# -- process identity ------------------------------------------------------------------
# Reservation ids are unique across every process sharing a ledger: a random
# tag per process, renewed in a forked child (gunicorn --preload, multiprocessing).
_process_tag = os.urandom(6).hex()
_guards: weakref.WeakSet[BudgetGuard] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _process_tag
    _process_tag = os.urandom(6).hex()
    for guard in list(_guards):
        guard._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Opening(NamedTuple):
    """What ``_open`` decided a call reserves, before any I/O."""

    user: str | None
    units: int
    model: str | None
    plan: Plan
    holders: tuple[Holder, ...]
    holds: tuple[Hold, ...]
    tags: Mapping[str, str]
    kind: str | None  # set when the estimate is learned, not given
    cold: bool  # nothing learned yet for ``kind``: admit one at a time
    now: float  # the guard's clock when the call was planned


class _Ending(NamedTuple):
    """What ``_ending`` decided a call's end writes and reports, before any I/O."""

    units: int | None  # None: release, nothing known to be spent
    model: str | None
    usage: Usage | None
    error: BaseException | None
    priced: bool
    estimated: bool
    owed: BaseException | None  # what the policies raise once the end is written


class BudgetGuard:
    """Check budgets before LLM calls and charge their cost after, atomically.

    ``ledger`` is a URL (``memory://``, ``sqlite:///spend.db``, ``redis://...``)
    or a ``Ledger``. ``tz`` is the default time zone of calendar periods.
    ``on_storage_error`` says what happens when the ledger cannot be reached:
    ``"fail_closed"`` (default: refuse the call with ``StorageError``) or
    ``"fail_open"`` (run it, log, count).
    ``on_missing_cost`` says what a call whose cost nothing reported is
    charged: its estimate (default), nothing, or an error.
    ``on_missing_estimate`` says what a call reserves when it gives no
    ``estimate=`` and none can be computed from its arguments: ``"learn"``
    (default: the high end of what recent calls of the same function and
    model cost; before the first one has settled, calls of that kind run one
    at a time), ``"raise"`` (``EstimateMissingError`` before the call) or
    ``"zero"`` (hold nothing: concurrent calls can overshoot, by your choice).
    ``on_unknown_model``: what a call to a model with no known price costs:
    ``"fallback"`` (default: ``fallback_price`` dollars per million input and
    output tokens, with a warning once per model), ``"raise"`` or ``"ignore"``.
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
        on_missing_estimate: MissingEstimatePolicy = "learn",
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
        _check_choice("on_missing_estimate", on_missing_estimate, MISSING_ESTIMATE_POLICIES)
        _check_choice("on_unknown_model", on_unknown_model, _UNKNOWN_MODEL_POLICIES)
        _check_choice("outside_scope", outside_scope, _OUTSIDE_SCOPE_POLICIES)
        if not reservation_ttl > 0 or reservation_ttl == float("inf"):
            raise ConfigurationError(
                f"reservation_ttl must be a positive finite number of seconds, "
                f"got {reservation_ttl!r}"
            )
        if isinstance(default_output_tokens, bool) or not isinstance(default_output_tokens, int):
            raise ConfigurationError(
                f"default_output_tokens must be a whole number, got {default_output_tokens!r}"
            )
        if default_output_tokens < 0:
            raise ConfigurationError(
                f"default_output_tokens must be 0 or more, got {default_output_tokens!r}"
            )
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
        self.on_missing_estimate = on_missing_estimate
        self.outside_scope = outside_scope
        self._learner = Learner()
        self._pricer = Pricer(
            on_unknown_model, fallback_price, default_output_tokens, self._learner
        )
        self._alerts = Alerts(self, alert_thresholds, on_threshold)
        self._budget_defs: dict[str, Budget] = {}
        self._budgets_loaded_at = float("-inf")
        self._cache_lock = threading.Lock()
        self._planner = Planner(self.tz)
        self._ids = itertools.count(1)
        self._id_prefix = f"{_process_tag}.{id(self):x}."
        self._listeners: list[Listener] = []
        self.telemetry: Any = None
        _guards.add(self)
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

    # -- settings read by other layers -----------------------------------------------

    @property
    def on_unknown_model(self) -> str:
        """Return what a call to a model with no known price costs (see the class)."""
        return self._pricer.on_unknown_model

    @property
    def fallback_price(self) -> tuple[Decimal, Decimal]:
        """Return the fallback price, dollars per million input and output tokens."""
        return self._pricer.fallback_price

    @property
    def default_output_tokens(self) -> int:
        """Return the output size assumed for a call that sets no limit, before learning."""
        return self._pricer.default_output_tokens

    @property
    def alert_thresholds(self) -> tuple[Decimal, ...]:
        """Return the fractions of a limit at which alerts fire."""
        return self._alerts.thresholds

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
            self._budget_defs = {**self._budget_defs, name: budget}
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
            budgets = dict(self._budget_defs)
            budgets.pop(name, None)
            self._budget_defs = budgets
        return deleted

    def budgets(self) -> list[Budget]:
        """Return every budget: global, default and per user."""
        return sorted(self._budgets(refresh=True).values(), key=lambda b: b.name)

    def _budgets(self, refresh: bool = False) -> dict[str, Budget]:
        now = time.monotonic()
        if not refresh and now - self._budgets_loaded_at < self.budget_cache_ttl:
            return self._budget_defs
        return self._load_budgets(refresh, now)

    def _load_budgets(self, refresh: bool, now: float) -> dict[str, Budget]:
        try:
            stored = self._guard_storage(self.ledger.list_budgets)
        except StorageError:
            if refresh or self.on_storage_error == "fail_closed":
                raise
            stored = None
        if stored is None:  # storage failed open: keep what we knew
            return self._budget_defs
        known_defs = self._budget_defs
        fresh: dict[str, Budget] = {}
        for name, data in stored.items():
            known = known_defs.get(name)
            try:
                budget = Budget.from_dict(name, data)
            except (KeyError, ValueError, ConfigurationError) as error:
                logger.error("ignoring unreadable budget %r in the ledger: %s", name, error)
                continue
            # Reuse the cached object so its window cache survives.
            fresh[name] = known if known is not None and known.same_definition(budget) else budget
        with self._cache_lock:
            self._budget_defs = fresh
            self._budgets_loaded_at = now
        return fresh

    def _budgets_due(self) -> bool:
        """Tell whether a shared ledger's budget definitions are due for a re-read."""
        return time.monotonic() - self._budgets_loaded_at >= self.budget_cache_ttl

    # -- the lifecycle: deciding how a call starts ------------------------------------------

    def _open(
        self,
        user: str | None,
        estimate: Decimal | int | None,
        model: str | None,
        scope: Scope | None,
        kind: str | None,
        budgets: dict[str, Budget] | None = None,
        *,
        hooks: bool = True,
    ) -> _Opening:
        """Decide who pays and what a call reserves (no ledger I/O)."""
        if hooks:
            for hook in _hooks.active:
                self._before_hook(hook, user, model)
        cold = False
        if estimate is None:
            units, kind, cold = self._learned_units(kind or "call", model)
        else:
            units = estimate if isinstance(estimate, int) else to_units(estimate)
            kind = None
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
        if budgets is None:
            budgets = (
                self._budget_defs
                if time.monotonic() - self._budgets_loaded_at < self.budget_cache_ttl
                else self._budgets()
            )
        now = self.clock()
        plan = self._planner._plans.get(user)  # the hot path: no method call
        if plan is None or not plan.since <= now < plan.until or plan.budgets is not budgets:
            plan = self._planner.plan(user, now, budgets)
        holds = plan._held if plan._held_units == units else plan.holds(units)
        holders = plan.holders
        if scope is not None and scope.caps:
            holds = tuple(Hold(c.key, c.limit_units, units) for c in scope.caps) + holds
            holders = tuple(Holder("scope", None, c) for c in scope.caps) + holders
            for capped in scope.caps:
                capped.on_exit(self._forget_scope)
        return _Opening(user, units, model, plan, holders, holds, tags, kind, cold, now)

    def _learned_units(self, kind: str, model: str | None) -> tuple[int, str | None, bool]:
        """Return (units, kind, cold) for a call that gave no estimate."""
        policy = self.on_missing_estimate
        if policy == "zero":
            return 0, None, False
        name = f"{kind} [{model}]" if model is not None else kind
        if policy == "raise":
            raise EstimateMissingError(
                f"{name} gave no estimate= and none can be computed from its arguments "
                "(no model and messages); pass estimate=, or choose "
                "on_missing_estimate='learn'"
            )
        learned = self._learner.cost(name)
        if learned is not None:
            return learned, name, False
        self._pricer.warn_once(
            f"estimate:{name}",
            f"{name} gave no estimate=: budgetguard runs its calls one at a time until "
            "the first one has settled, then reserves what recent calls cost. Pass "
            "estimate= (dollars, or a callable of the arguments) to reserve your own.",
        )
        return 0, name, True

    def _reservation(self, opening: _Opening) -> Reservation:
        return Reservation(self._new_id(), opening.holds, opening.now + self.reservation_ttl)

    def _new_id(self, kind: str = "") -> str:
        return f"{self._id_prefix}{kind}{next(self._ids)}"

    def _relearn(self, opening: _Opening) -> _Opening:
        """Redo a cold opening once the first call of its kind has taught its cost."""
        assert opening.kind is not None
        learned = self._learner.cost(opening.kind)
        if learned is None:
            return opening
        holds = tuple(Hold(h.key, h.limit, learned) for h in opening.holds)
        return opening._replace(units=learned, holds=holds, cold=False)

    def _opened(
        self,
        opening: _Opening,
        reservation: Reservation | None,
        refusal: Refusal | None,
        pilot: threading.Lock | None,
    ) -> Call:
        """Turn a reservation's answer into the call, or into the refusal it owes."""
        if refusal is not None:
            if pilot is not None:
                pilot.release()
            raise self._refused(refusal, opening.holders, opening.user, opening.model)
        return Call(
            self,
            opening.user,
            reservation,
            opening.plan,
            opening.holders,
            opening.units,
            opening.model,
            opening.tags,
            opening.kind,
            pilot,
        )

    # -- the lifecycle: the shells that start a call ---------------------------------------

    def _begin(
        self,
        user: str | None,
        estimate: Decimal | int | None = 0,
        *,
        model: str | None = None,
        scope: Scope | None = None,
        kind: str | None = None,
    ) -> Call:
        """Reserve ``estimate`` on every budget that applies, or raise ``BudgetExceededError``.

        ``estimate`` is dollars (``Decimal``), ledger units (``int``) or
        ``None``: learned per ``kind`` under ``on_missing_estimate``.
        """
        opening = self._open(user, estimate, model, scope, kind)
        pilot = None
        if opening.cold:
            pilot, opening = self._wait_cold(opening)
        # The hot path: one unpacking, the reservation built inline.
        user, units, model, plan, holders, holds, tags, kind, _, now = opening
        reservation = Reservation(
            f"{self._id_prefix}{next(self._ids)}", holds, now + self.reservation_ttl
        )
        try:
            refusal = self.ledger.reserve(reservation) if holds else None
        except StorageError as error:
            return self._storage_down(error, opening, pilot)
        except BaseException:
            if pilot is not None:
                pilot.release()
            raise
        if refusal is None:
            return Call(self, user, reservation, plan, holders, units, model, tags, kind, pilot)
        return self._opened(opening, reservation, refusal, pilot)

    async def _abegin(
        self,
        user: str | None,
        estimate: Decimal | int | None = 0,
        *,
        model: str | None = None,
        scope: Scope | None = None,
        kind: str | None = None,
    ) -> Call:
        """Do ``_begin`` without blocking the event loop on the ledger."""
        budgets = None
        if self._budgets_due():
            # A shared ledger's budget definitions are due for a re-read:
            # do it in a thread, so the loop never waits on the network.
            budgets = await asyncio.to_thread(self._budgets)
        opening = self._open(user, estimate, model, scope, kind, budgets)
        pilot = None
        if opening.cold:
            pilot, opening = await self._await_cold(opening)
        reservation = self._reservation(opening)
        try:
            refusal = await self.ledger.areserve(reservation) if opening.holds else None
        except StorageError as error:
            return self._storage_down(error, opening, pilot)
        except BaseException:
            if pilot is not None:
                pilot.release()
            raise
        return self._opened(opening, reservation, refusal, pilot)

    def _wait_cold(self, opening: _Opening) -> tuple[threading.Lock | None, _Opening]:
        """Wait until this call may run as the first of its kind, or has a learned cost."""
        assert opening.kind is not None
        gate = self._learner.gate(opening.kind)
        if self._holds_gate(gate) or _on_event_loop():
            # Re-entered by the pilot itself, or on an event loop's thread
            # where blocking would stall the pilot: run with no hold.
            return None, opening
        if not gate.acquire(timeout=self.reservation_ttl):
            return None, opening
        return self._after_gate(gate, opening)

    async def _await_cold(self, opening: _Opening) -> tuple[threading.Lock | None, _Opening]:
        """Do ``_wait_cold`` without blocking the event loop."""
        assert opening.kind is not None
        gate = self._learner.gate(opening.kind)
        if self._holds_gate(gate):
            return None, opening
        deadline = time.monotonic() + self.reservation_ttl
        pause = 0.001
        while not gate.acquire(blocking=False):
            if time.monotonic() >= deadline:
                return None, opening
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return self._after_gate(gate, opening)

    def _after_gate(
        self, gate: threading.Lock, opening: _Opening
    ) -> tuple[threading.Lock | None, _Opening]:
        # The wait may have been long: the reservation's expiry counts from now.
        opening = opening._replace(now=self.clock())
        relearned = self._relearn(opening)
        if not relearned.cold:
            gate.release()  # the pilot has settled: reserve what it cost
            return None, relearned
        return gate, opening

    def _holds_gate(self, gate: threading.Lock) -> bool:
        call = _current_call.get()
        while call is not None:
            if call.pilot is gate:
                return True
            call = call.parent
        return False

    def _before_hook(self, hook: _hooks.CallHook, user: str | None, model: str | None) -> None:
        try:
            hook.before_call(self)
        except BudgetExceededError as error:
            error.user = user if user is not None else current_user()
            self._notify("call_refused", error, user=error.user, request_model=model)
            raise

    def _refused(
        self,
        refusal: Refusal,
        holders: tuple[Holder, ...],
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
        self._notify("call_refused", error, user=user, request_model=model)
        return error

    def _storage_down(
        self, error: StorageError, opening: _Opening, pilot: threading.Lock | None
    ) -> Call:
        self._notify("storage_failed", error, policy=self.on_storage_error)
        if self.on_storage_error == "fail_closed":
            if pilot is not None:
                pilot.release()
            logger.error("ledger unavailable, refusing the call (fail_closed): %s", error)
            raise error
        logger.warning("ledger unavailable, letting the call run unchecked (fail_open): %s", error)
        return self._opened(opening, None, None, pilot)

    def _forget_scope(self, key: str) -> None:
        try:
            self.ledger.clear([key])
        except StorageError as error:  # the counter is only garbage now
            logger.warning("could not drop the counter of a finished scope: %s", error)

    # -- the lifecycle: deciding how a call ends --------------------------------------------

    def _ending(
        self,
        call: Call,
        cost: Decimal | None,
        *,
        model: str | None = None,
        usage: Usage | None = None,
        error: BaseException | None = None,
        priced: bool = True,
        estimated: bool = False,
        owed: BaseException | None = None,
    ) -> _Ending:
        """Decide what ending ``call`` writes (no ledger I/O).

        ``cost`` is what pricing found (``None``: nothing reported). Charges
        made with ``charge()`` during the call are added. A failed call with
        no known cost is released; a successful one follows ``on_missing_cost``.
        """
        if usage is not None:
            model = model or usage.model
            estimated = estimated or usage.estimated
        if owed is None and not priced:
            owed = self._pricer.unpriced_error(usage, priced)
        if cost is not None:
            units: int | None = to_units(cost) + call.charged
        elif call.charged or call.models or call.has_inner:
            units = call.charged
        elif error is not None:
            units = None  # nothing known to be spent: release
        elif self.on_missing_cost == "ignore":
            units = 0
        else:
            # "estimate", and "raise" too: the call ran and its cost is unknown,
            # so its estimate stays spent before the error is reported.
            units, estimated = call.estimate, True
            if self.on_missing_cost == "raise" and owed is None:
                owed = UsageMissingError(
                    "the call reported no usage and no cost; pass cost=, call charge(), "
                    "or choose on_missing_cost='estimate'"
                )
        return _Ending(units, model, usage, error, priced, estimated, owed)

    def _ending_of_result(
        self,
        call: Call,
        result: Any,
        cost: Callable[[Any], object] | None,
        error: BaseException | None = None,
    ) -> _Ending:
        """Decide the ending of a call that returned ``result``."""
        if cost is not None:
            try:
                amount = to_decimal(cost(result), "cost")
            except BaseException as failure:  # charge the estimate, then report
                return self._ending(call, None, error=error, owed=failure)
            return self._ending(call, amount, error=error)
        found, usage, priced = self._pricer.of_result(call, result)
        return self._ending(call, found, usage=usage, error=error, priced=priced)

    def _ending_of_stream(
        self, call: Call, meter: StreamMeter | None, error: BaseException | None = None
    ) -> _Ending:
        """Decide the ending of a streamed call from what its chunks carried."""
        found, usage, priced = self._pricer.of_stream(call, meter)
        return self._ending(call, found, usage=usage, error=error, priced=priced)

    # -- the lifecycle: the shells that end a call ----------------------------------------

    def _close(self, call: Call, ending: _Ending) -> None:
        """Write ``ending`` to the ledger, then report it."""
        try:
            if self._write_end(call, ending) and self._alerts.thresholds:
                self._alerts.check(call)
        except BaseException:
            self._ended(call, ending, quiet=True)
            raise
        if (
            call.kind is None
            and call.parent is None
            and ending.usage is None
            and ending.owed is None
            and call.pilot is None
        ):
            # The hot path: nothing to learn or raise, only listeners to tell.
            self._tell(call, ending.units or 0, ending)
            return
        self._ended(call, ending)

    async def _aclose(self, call: Call, ending: _Ending) -> None:
        """Do ``_close`` without blocking the event loop on the ledger."""
        try:
            if await self._awrite_end(call, ending) and self._alerts.thresholds:
                # Reads the ledger (and may claim an alert marker): off the loop.
                await asyncio.to_thread(self._alerts.check, call)
        except BaseException:
            self._ended(call, ending, quiet=True)
            raise
        self._ended(call, ending)

    def _write_end(self, call: Call, ending: _Ending) -> bool:
        """Settle or release ``call``; return whether money was charged."""
        reservation = call.reservation
        if reservation is None:  # storage failed open at the start
            return False
        units = ending.units
        try:
            if units is None:
                if reservation.holds:
                    self.ledger.release(reservation)
                return False
            tallies = self._tally_keys(call, ending.model)
            if reservation.holds:
                self.ledger.settle(reservation, units, tallies)
            else:
                self.ledger.add(tallies, units)
        except StorageError as error:
            self._lost(error, call, units)
            return False
        return bool(units)

    async def _awrite_end(self, call: Call, ending: _Ending) -> bool:
        """Do ``_write_end`` without blocking the event loop."""
        reservation = call.reservation
        if reservation is None:
            return False
        units = ending.units
        try:
            if units is None:
                if reservation.holds:
                    await self.ledger.arelease(reservation)
                return False
            tallies = self._tally_keys(call, ending.model)
            if reservation.holds:
                await self.ledger.asettle(reservation, units, tallies)
            else:
                await self.ledger.aadd(tallies, units)
        except StorageError as error:
            self._lost(error, call, units)
            return False
        return bool(units)

    def _ended(self, call: Call, ending: _Ending, *, quiet: bool = False) -> None:
        """Learn from an ended call, free its slow-start gate, report it, raise what is owed."""
        units = ending.units
        try:
            if units is not None:
                if call.kind is not None and not ending.estimated:
                    self._learner.learn_cost(call.kind, units + call.inner_units)
                if call.parent is not None:
                    call.parent.inner_units += units
            usage = ending.usage
            if usage is not None and not usage.estimated and usage.model:
                self._learner.learn_output(usage.model, usage.total_output_tokens)
        finally:
            if call.pilot is not None:
                pilot, call.pilot = call.pilot, None
                pilot.release()
        self._tell(call, units or 0, ending)
        if not quiet and ending.owed is not None:
            raise ending.owed

    def _lost(self, error: StorageError, call: Call, units: int | None) -> None:
        # The call already ran: raising now would not unspend the money. Log
        # loudly; the reservation expires by itself.
        self._notify("storage_failed", error, policy=self.on_storage_error)
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

    def _tell(self, call: Call, units: int, ending: _Ending) -> None:
        hooks = _hooks.active
        if not self._listeners and not (hooks and units):
            return  # nobody to tell: skip building the Decimal
        cost = from_units(units)
        if units:
            for hook in hooks:
                self._safely(hook.after_call, self, cost)
        if not self._listeners:
            return
        usage = ending.usage
        error = ending.error
        outcome = CallOutcome(
            call.user,
            cost,
            time.perf_counter() - call.started,
            call.request_model,
            ending.model,
            usage.provider if usage is not None else None,
            usage.operation if usage is not None else None,
            usage,
            type(error).__qualname__ if error is not None else None,
            ending.priced,
            ending.estimated,
            call.tags,
        )
        self._notify("call_ended", outcome)

    # -- the lifecycle: entry points for the shells ---------------------------------------

    def _finish(
        self,
        call: Call,
        cost: Decimal | None,
        *,
        model: str | None = None,
        usage: Any = None,
        error: BaseException | None = None,
        priced: bool = True,
        estimated: bool = False,
    ) -> None:
        """End ``call``: settle what it cost, or release it when nothing was spent."""
        self._close(
            call,
            self._ending(
                call,
                cost,
                model=model,
                usage=usage,
                error=error,
                priced=priced,
                estimated=estimated,
            ),
        )

    async def _afinish(
        self,
        call: Call,
        cost: Decimal | None,
        *,
        model: str | None = None,
        usage: Any = None,
        error: BaseException | None = None,
        priced: bool = True,
        estimated: bool = False,
    ) -> None:
        """Do ``_finish`` without blocking the event loop on the ledger."""
        await self._aclose(
            call,
            self._ending(
                call,
                cost,
                model=model,
                usage=usage,
                error=error,
                priced=priced,
                estimated=estimated,
            ),
        )

    def _complete(
        self,
        call: Call,
        result: Any,
        cost: Callable[[Any], object] | None = None,
        *,
        error: BaseException | None = None,
    ) -> Any:
        """End ``call`` with its result: price it (``cost(result)`` or its usage) and settle.

        A stream returned by the call is handed back as a proxy that settles
        from its chunks' usage however the stream ends.
        """
        if cost is None and error is None and not call.has_inner:
            from ._streams import guard_returned_stream

            proxy = guard_returned_stream(call, result)
            if proxy is not None:
                return proxy
        self._close(call, self._ending_of_result(call, result, cost, error))
        return result

    async def _acomplete(
        self,
        call: Call,
        result: Any,
        cost: Callable[[Any], object] | None = None,
        *,
        error: BaseException | None = None,
    ) -> Any:
        """Do ``_complete`` without blocking the event loop on the ledger."""
        if cost is None and error is None and not call.has_inner:
            from ._streams import guard_returned_stream

            proxy = guard_returned_stream(call, result)
            if proxy is not None:
                return proxy
        await self._aclose(call, self._ending_of_result(call, result, cost, error))
        return result

    def _complete_stream(
        self, call: Call, meter: StreamMeter | None, *, error: BaseException | None = None
    ) -> None:
        """End a streamed call from the usage its chunks carried, or its text, or release it."""
        self._close(call, self._ending_of_stream(call, meter, error))

    async def _acomplete_stream(
        self, call: Call, meter: StreamMeter | None, *, error: BaseException | None = None
    ) -> None:
        """Do ``_complete_stream`` without blocking the event loop on the ledger."""
        await self._aclose(call, self._ending_of_stream(call, meter, error))

    def _stream_meter(self, call: Call) -> StreamMeter:
        """Return what watches a stream's chunks for its usage (for generators and streams)."""
        return StreamMeter(call.request_model)

    # -- pricing ---------------------------------------------------------------------------

    def estimate_call(self, arguments: Mapping[str, Any]) -> tuple[Decimal, str] | None:
        """Return the projected cost and model of an LLM call from its arguments, or ``None``."""
        return self._pricer.estimate(arguments)

    def price(self, usage: Any, model: str | None = None) -> tuple[Decimal, bool]:
        """Return the exact cost of ``usage`` and whether its model had a price."""
        return self._pricer.price(usage, model)

    def warn_once(self, topic: str, message: str) -> None:
        """Warn (``warnings`` and the log) about ``topic`` the first time only."""
        self._pricer.warn_once(topic, message)

    # -- recording spend directly ------------------------------------------------------------

    def charge(
        self, amount: object, *, model: str | None = None, user: str | None = None
    ) -> Decimal:
        """Charge ``amount`` dollars: to this guard's call in progress, else record it now.

        Inside a call of this guard (and without ``user=``) the amount is
        added to the call's cost and settled with it. Elsewhere it is recorded
        at once against ``user`` or the current scope's user: never refused
        (the money is spent), but the next call is.
        """
        value = to_decimal(amount, "amount")
        call = _current_call.get()
        if call is not None and call.guard is self and user is None:
            call.add(to_units(value), model)
            return value
        return self.record_spend(value, user=user, model=model)

    def record_spend(
        self, amount: object, *, user: str | None = None, model: str | None = None
    ) -> Decimal:
        """Record spend that already happened against the current scope's budgets."""
        value = to_decimal(amount, "amount")
        scope = current_scope()
        opening = self._open(user, 0, model, scope, None, hooks=False)
        call = Call(
            self,
            opening.user,
            Reservation(self._new_id(), opening.holds, 0.0),
            opening.plan,
            opening.holders,
            0,
            model,
            opening.tags,
        )
        units = to_units(value)
        tallies = self._tally_keys(call, model)
        self._guard_storage(self.ledger.add, (*call.reservation.keys, *tallies), units)  # type: ignore[union-attr]
        if self._alerts.thresholds and units:
            self._alerts.check(call)
        self._tell(call, units, _Ending(units, model, None, None, True, False, None))
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
        cost, priced = self._pricer.price(usage, model)
        self.record_spend(cost, user=user, model=usage.model or model)
        owed = self._pricer.unpriced_error(usage, priced)
        if owed is not None:
            raise owed
        return cost

    # -- scopes and decorators bound to this guard ----------------------------------------------

    def budget_scope(
        self,
        user: str | None = None,
        *,
        limit: object = None,
        tags: Mapping[str, str] | None = None,
    ) -> _budget_scope:
        """Return a ``budget_scope`` bound to this guard: calls and charges inside use it."""
        from .scope import budget_scope

        return budget_scope(user, limit=limit, tags=tags, guard=self)

    def budgeted(self, func: Any = None, /, **options: Any) -> Any:
        """Guard a function with this guard; see ``budgetguard.budgeted``."""
        from .decorators import budgeted

        return budgeted(func, guard=self, **options)

    # -- queries ------------------------------------------------------------------------------

    def spend(self, user: str | None = None, *, model: str | None = None) -> Decimal:
        """Return what ``user`` (or everyone) spent in the current period of their budget.

        Without a budget that applies, return the lifetime total. ``model=``
        narrows it to one model.
        """
        key = self._spend_key(user, model)
        balance = self._guard_storage(self.ledger.balances, [key])
        return from_units(balance[key].spent) if balance else Decimal(0)

    async def aspend(self, user: str | None = None, *, model: str | None = None) -> Decimal:
        """Do ``spend`` without blocking the event loop on the ledger."""
        key = await asyncio.to_thread(self._spend_key, user, model)
        balance = await self._aguard_storage(self.ledger.abalances([key]))
        return from_units(balance[key].spent) if balance else Decimal(0)

    def _spend_key(self, user: str | None, model: str | None) -> str:
        budget = self.budget_for(user)
        if budget is not None:
            key = budget.key(self.clock(), user=user)
            return _keys.model_key(key, model) if model is not None else key
        return _keys.total_key(user, model)

    def remaining(self, user: str | None = None) -> Decimal | None:
        """Return what is left of the tightest budget that applies, or ``None`` if none does."""
        keys = self._remaining_keys(user)
        if not keys:
            return None
        balances = self._guard_storage(self.ledger.balances, [k for k, _ in keys]) or {}
        return self._tightest(keys, balances)

    async def aremaining(self, user: str | None = None) -> Decimal | None:
        """Do ``remaining`` without blocking the event loop on the ledger."""
        keys = await asyncio.to_thread(self._remaining_keys, user)
        if not keys:
            return None
        balances = await self._aguard_storage(self.ledger.abalances([k for k, _ in keys]))
        return self._tightest(keys, balances or {})

    def _remaining_keys(self, user: str | None) -> list[tuple[str, Budget]]:
        now = self.clock()
        keys: list[tuple[str, Budget]] = []
        own = self.budget_for(user) if user is not None else None
        if own is not None:
            keys.append((own.key(now, user=user), own))
        shared = self.get_budget(None)
        if shared is not None:
            keys.append((shared.key(now), shared))
        return keys

    @staticmethod
    def _tightest(keys: list[tuple[str, Budget]], balances: Mapping[str, Any]) -> Decimal:
        found: list[Decimal] = []
        for key, budget in keys:
            balance = balances.get(key)
            used = (balance.spent + balance.reserved) if balance else 0
            found.append(max(Decimal(0), budget.limit - from_units(used)))
        return min(found)

    def spend_by_model(self, user: str | None = None) -> dict[str, Decimal]:
        """Return spend per model in the current period of the budget that applies."""
        budget = self.budget_for(user)
        if budget is not None:
            prefix = _keys.model_prefix(budget.key(self.clock(), user=user))
        else:
            prefix = _keys.model_prefix(_keys.total_key(user)) if user else "t|m="
        found = self._guard_storage(self.ledger.scan, prefix) or {}
        return {
            _keys.unescape(key[len(prefix) :]): from_units(balance.spent)
            for key, balance in sorted(found.items())
            if "|" not in key[len(prefix) :] and balance.spent
        }

    async def aspend_by_model(self, user: str | None = None) -> dict[str, Decimal]:
        """Do ``spend_by_model`` without blocking the event loop on the ledger."""
        return await asyncio.to_thread(self.spend_by_model, user)

    async def abudgets(self) -> list[Budget]:
        """Do ``budgets`` without blocking the event loop on the ledger."""
        return await asyncio.to_thread(self.budgets)

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
        for prefix in _keys.prunable_prefixes():
            found = self._guard_storage(self.ledger.scan, prefix) or {}
            for key, balance in found.items():
                window = _keys.prunable_window(key)
                if balance.reserved or window is None:
                    continue
                end = window_end_of(window)
                if end is not None and end <= cutoff:
                    doomed.append(key)
        for start in range(0, len(doomed), 500):
            self._guard_storage(self.ledger.clear, doomed[start : start + 500])
        if doomed:
            self._alerts.forget(doomed)
            logger.info("pruned %d counters of windows that ended before %s", len(doomed), cutoff)
        return len(doomed)

    def reset(self, user: str | None = None) -> None:
        """Start the current period of ``user``'s budget (or the global one) again at zero."""
        budget = self.budget_for(user)
        if budget is None:
            return
        key = budget.key(self.clock(), user=user)
        found = self._guard_storage(self.ledger.scan, _keys.model_prefix(key)) or {}
        self._guard_storage(self.ledger.clear, [key, *found])
        self._alerts.forget([key])

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

    def close(self) -> None:
        """Stop exporting metrics and close the ledger."""
        if self.telemetry is not None:
            self.remove_listener(self.telemetry)
            self._safely(self.telemetry.shutdown)
        _guards.discard(self)
        self.ledger.close()

    def _notify(self, event: str, *args: Any, **kwargs: Any) -> None:
        for listener in self._listeners:
            self._safely(getattr(listener, event), *args, **kwargs)

    @staticmethod
    def _safely(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # Listeners observe; a broken exporter must never break the user's call.
        try:
            function(*args, **kwargs)
        except Exception:
            logger.exception("budgetguard listener %r failed", function)

    def _guard_storage(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Run an administrative ledger operation, telling listeners when storage fails."""
        try:
            return operation(*args)
        except StorageError as error:
            self._notify("storage_failed", error, policy=self.on_storage_error)
            raise

    async def _aguard_storage(self, operation: Any) -> Any:
        try:
            return await operation
        except StorageError as error:
            self._notify("storage_failed", error, policy=self.on_storage_error)
            raise

    def _after_fork(self) -> None:
        """Take fresh ids and locks in a forked child; the ledgers reconnect by themselves."""
        self._id_prefix = f"{_process_tag}.{id(self):x}."
        self._ids = itertools.count(1)
        self._cache_lock = threading.Lock()
        # A gate held by a parent's thread would stay shut in the child for ever.
        self._learner.after_fork()


def charge(amount: object, *, model: str | None = None, user: str | None = None) -> Decimal:
    """Charge ``amount`` dollars for the call in progress, or record it in the current scope.

    Inside a guarded call the amount is added to that call's cost and settled
    with it (``user=`` records it at once for that user instead). Elsewhere it
    is recorded at once, against the current scope's user (or ``user=``), on
    the guard the scope was entered through, else the default guard.
    """
    call = _current_call.get()
    if call is not None:
        return call.guard.charge(amount, model=model, user=user)
    return _guard_in_scope().charge(amount, model=model, user=user)


def _guard_in_scope() -> BudgetGuard:
    """Return the guard of the current scope, else the default guard."""
    scope = _scope_var.get()
    bound = scope.guard if scope is not None else None
    if isinstance(bound, BudgetGuard):
        return bound
    from ._default import default_guard

    return default_guard()


def guard_for(explicit: BudgetGuard | None) -> BudgetGuard:
    """Return ``explicit``, else the guard of the current scope, else the default guard."""
    return explicit if explicit is not None else _guard_in_scope()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_user(user: object) -> None:
    if user is not None and not isinstance(user, str):
        raise ValueError(f"user must be a str or None, not {type(user).__name__}")
