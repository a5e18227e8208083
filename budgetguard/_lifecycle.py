"""The one lifecycle of a guarded call: decide, reserve, run, decide the end, write it.

1. ``_open`` decides (pure): who pays, which holds apply, what to reserve.
2. A shell does the I/O: ``_begin`` reserves, ``_abegin`` awaits the reservation.
3. The call runs inside ``with call:`` (the current call, restored by token).
4. ``_ending`` decides (pure) how it ends: units to settle or a release,
   tallies, the missing-cost and unknown-model policies.
5. A shell writes the end (``_close`` / ``_aclose``), then ``_ended`` learns,
   tells listeners and raises what the policies owe.

Every entry point goes through these steps; the sync and async shells differ
only in how they wait. ``BudgetGuard`` is made of this part and its queries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

from . import _hooks
from ._call import Call, _current_call
from ._outbox import Pending
from ._parts import GuardParts
from ._plan import Holder, Plan
from ._streams import guard_returned_stream
from .budgets import Budget
from .errors import (
    BudgetExceededError,
    EstimateMissingError,
    StorageError,
    UsageMissingError,
)
from .events import CallOutcome
from .ledger import Hold, Refusal, Reservation
from .money import from_units, to_decimal, to_units
from .pricing import lookup
from .pricing._price import TOKEN_PRICE_FIELDS
from .scope import Scope, current_user
from .scope import _current as _scope_var
from .telemetry import provider_name
from .usage import StreamMeter, Usage

__all__ = ["CallLifecycle", "OutcomeParts"]

logger = logging.getLogger("budgetguard")
_new = tuple.__new__
_NO_TAGS: Mapping[str, str] = MappingProxyType({})


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


class CallLifecycle(GuardParts):
    """The steps of every guarded call (a part of ``BudgetGuard``)."""

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
        tokens: tuple[int, int, int] | None = None,
        provider: str | None = None,
    ) -> _Opening:
        """Decide who pays and what a call reserves (no ledger I/O).

        ``tokens`` is the call's estimate in (input, output, all) tokens, reserved
        on token budgets; ``provider`` who serves it (else read from ``kind``).
        """
        if hooks:
            for hook in _hooks.active:
                self._before_hook(hook, user, model)
        cold = False
        origin = kind  # the method called, which names its SDK (kind is the learning key)
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
        planner = self._planner
        if planner._index_of is budgets and not planner._keyed:
            plan = planner._plans.get(user)  # the hot path: no method call
            if plan is None or not plan.since <= now < plan.until or plan.budgets is not budgets:
                plan = planner.plan(user, now, budgets)
        else:  # budgets on tags, models or providers: the plan depends on those too
            plan = planner.plan(user, now, budgets, tags, model, _provider(provider, origin, model))
        # A call known to cost nothing (its model is priced at zero) holds
        # nothing on dollar budgets: a spent one must not refuse it.
        free = units == 0 and model is not None and _free(model)
        if plan.simple and not free:
            holds = plan._held if plan._held_units == units else plan.holds(units)
            holders = plan.holders
        else:
            holds, holders = plan.holds_of(
                _amounts(units, tokens), now, free=free, inner=_current_call.get() is not None
            )
        if scope is not None and scope.caps and not free:  # scope caps count dollars
            holds = tuple(Hold(c.key, c.limit_units, units) for c in scope.caps) + holds
            holders = tuple(Holder("scope", None, c) for c in scope.caps) + holders
            for capped in scope.caps:
                capped.on_exit(self._forget_scope)
        # tuple.__new__ builds the record in C (a NamedTuple's own __new__ is Python).
        return _new(_Opening, (user, units, model, plan, holders, holds, tags, kind, cold, now))

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
        holds = tuple(h._replace(amount=learned) if h.unit == 0 else h for h in opening.holds)
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
            self,  # type: ignore[arg-type]  # the BudgetGuard this class is a part of
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
        model: str | None = None,
        scope: Scope | None = None,
        kind: str | None = None,
        tokens: tuple[int, int, int] | None = None,
        provider: str | None = None,
    ) -> Call:
        """Reserve ``estimate`` on every budget that applies, or raise ``BudgetExceededError``.

        ``estimate`` is dollars (``Decimal``), ledger units (``int``) or
        ``None``: learned per ``kind`` under ``on_missing_estimate``.
        ``tokens`` is what token budgets reserve: (input, output, all) tokens.
        """
        opening = self._open(user, estimate, model, scope, kind, tokens=tokens, provider=provider)
        pilot = None
        if opening.cold:
            pilot, opening = self._wait_cold(opening)
        # The hot path: one unpacking, the reservation built inline.
        user, units, model, plan, holders, holds, tags, kind, _, now = opening
        reservation: Reservation = _new(
            Reservation, (f"{self._id_prefix}{next(self._ids)}", holds, now + self.reservation_ttl)
        )
        if self._outbox.pending:  # charges a failed settle left: write them first
            self._flush_outbox()
        try:
            refusal = self.ledger.reserve(reservation) if holds else None
        except StorageError as error:
            return self._storage_down(error, opening, pilot)
        except BaseException:
            if pilot is not None:
                pilot.release()
            raise
        if refusal is None:
            # self is the BudgetGuard this class is a part of.
            return Call(self, user, reservation, plan, holders, units, model, tags, kind, pilot)  # type: ignore[arg-type]
        return self._opened(opening, reservation, refusal, pilot)

    def _run(
        self,
        user: str | None,
        units: int,
        model: str | None,
        kind: str | None,
        cost: Callable[[Any], object] | None,
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``wrapped`` as one guarded call with a known estimate of ``units``.

        The steps of ``_begin``, ``with call:`` and ``_complete`` in one frame
        for the case most calls are: a user's plan of dollar budgets, nothing
        to learn, no scope caps. Whatever else a call has takes those
        steps themselves (the same code every other entry point runs).
        """
        found = self._simple_plan(user, units)
        if found is None:  # the general steps
            call = self._begin(user, units, model, None, kind)
            plan = None
        else:
            plan, user, tags, now = found
            if _hooks.active:  # as _open: before anything is reserved
                for hook in _hooks.active:
                    self._before_hook(hook, user, model)
            holds = plan._held if plan._held_units == units else plan.holds(units)
            reservation: Reservation = _new(
                Reservation,
                (f"{self._id_prefix}{next(self._ids)}", holds, now + self.reservation_ttl),
            )
            holders = plan.holders
            try:
                refusal = self.ledger.reserve(reservation)
            except StorageError as error:  # fail_open: a call with no reservation
                opening = _new(
                    _Opening, (user, units, model, plan, holders, holds, tags, None, False, now)
                )
                call = self._storage_down(error, opening, None)
            else:
                if refusal is not None:
                    raise self._refused(refusal, holders, user, model)
                # self is the BudgetGuard this class is a part of.
                call = Call(self, user, reservation, plan, holders, units, model, tags)  # type: ignore[arg-type]
        # ``with call:`` inlined: set, then reset by token.
        token = _current_call.set(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _current_call.reset(token)
            self._finish(call, None, error=error)
            raise
        _current_call.reset(token)
        if (
            plan is None
            or call.reservation is None
            or call.charged
            or call.models
            or call.has_inner
            or call.parent is not None
        ):
            return self._complete(call, result, cost)
        if cost is not None:
            try:
                spent = _cost_units(cost(result))
            except BaseException as failure:  # charge the estimate, then report
                self._close(call, self._ending(call, None, owed=failure))
                return result
            ending = None
        else:
            proxy = guard_returned_stream(call, result)
            if proxy is not None:
                return proxy
            ending = self._ending_of_result(call, result, None)
            if ending.units is None or ending.owed is not None:
                self._close(call, ending)  # a release, or an error to raise once written
                return result
            spent, model = ending.units, ending.model or model
        # ``_close`` and ``_write_end`` of a settle, inlined.
        tallies = plan.tallies.get(model) if not tags else None
        if tallies is None:
            tallies = plan.tally_keys(model, tags)
        if ending is None:
            ending = _new(_Ending, (spent, None, None, None, True, False, None))
        try:
            if self._outbox.pending:
                self._flush_outbox()
            try:
                self.ledger.settle(call.reservation, spent, tallies)
            except StorageError as error:
                self._lost(error, call, call.reservation, spent, tallies, ending.usage)
            else:
                if spent and self._alerts.thresholds:
                    self._alerts.check(call)
        except BaseException:
            self._ended(call, ending, quiet=True)
            raise
        if ending.usage is not None:
            self._ended(call, ending)  # learns what the model wrote, then tells
        elif self._listeners or _hooks.active:
            self._tell(call, spent, ending)
        return result

    def _simple_plan(
        self, user: str | None, units: int
    ) -> tuple[Plan, str | None, Mapping[str, str], float] | None:
        """Return (plan, user, tags, now) of a call ``_run`` may make in one frame, else None.

        That is a call with an estimate, no scope caps, nothing in
        the outbox, budget definitions fresh and on users only, and a current
        plan of dollar budgets for its user.
        """
        scope = _scope_var.get()
        planner = self._planner
        if (
            not units
            or (scope is not None and scope.caps)
            or self._outbox.pending
            or planner._index_of is not self._budget_defs
            or planner._keyed
            or time.monotonic() - self._budgets_loaded_at >= self.budget_cache_ttl
        ):
            return None
        tags = _NO_TAGS
        if scope is not None:
            tags = scope.tags
            if user is None:
                user = scope.user
        elif user is None and self.outside_scope == "refuse":
            return None
        now = self.clock()
        plan = planner._plans.get(user)
        if (
            plan is None
            or not plan.simple
            or not plan.keys  # no budget applies: the general steps charge, not reserve
            or not plan.since <= now < plan.until
            or plan.budgets is not self._budget_defs
        ):
            return None
        return plan, user, tags, now

    async def _arun(
        self,
        user: str | None,
        units: int,
        model: str | None,
        kind: str | None,
        cost: Callable[[Any], object] | None,
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Do ``_run`` for a coroutine function: the ledger awaited, never blocking the loop."""
        found = self._simple_plan(user, units)
        if found is None:  # the general steps
            call = await self._abegin(user, units, model=model, kind=kind)
            plan = None
        else:
            plan, user, tags, now = found
            if _hooks.active:  # as _open: before anything is reserved
                for hook in _hooks.active:
                    self._before_hook(hook, user, model)
            holds = plan._held if plan._held_units == units else plan.holds(units)
            reservation: Reservation = _new(
                Reservation,
                (f"{self._id_prefix}{next(self._ids)}", holds, now + self.reservation_ttl),
            )
            try:
                refusal = await self.ledger.areserve(reservation)
            except StorageError as error:  # fail_open: a call with no reservation
                decided = (user, units, model, plan, plan.holders, holds, tags, None, False, now)
                opening = _new(_Opening, decided)
                call = self._storage_down(error, opening, None)
            else:
                if refusal is not None:
                    raise self._refused(refusal, plan.holders, user, model)
                # self is the BudgetGuard this class is a part of.
                call = Call(self, user, reservation, plan, plan.holders, units, model, tags)  # type: ignore[arg-type]
        try:
            with call:
                result = await wrapped(*args, **kwargs)
        except BaseException as error:  # CancelledError included: release
            await self._afinish(call, None, error=error)
            raise
        if (
            plan is None
            or call.reservation is None
            or call.charged
            or call.models
            or call.has_inner
            or call.parent is not None
        ):
            return await self._acomplete(call, result, cost)
        if cost is None:
            proxy = guard_returned_stream(call, result)
            if proxy is not None:
                return proxy
        ending = self._ending_of_result(call, result, cost)
        spent = ending.units
        if spent is None or ending.owed is not None:
            await self._aclose(call, ending)  # a release, or an error to raise once written
            return result
        model = ending.model or model
        tallies = plan.tallies.get(model) if not tags else None
        if tallies is None:
            tallies = plan.tally_keys(model, tags)
        try:
            if self._outbox.pending:
                await asyncio.to_thread(self._flush_outbox)
            try:
                await self.ledger.asettle(call.reservation, spent, tallies)
            except StorageError as error:
                self._lost(error, call, call.reservation, spent, tallies, ending.usage)
            else:
                if spent and self._alerts.thresholds:
                    await asyncio.to_thread(self._alerts.check, call)
        except BaseException:
            self._ended(call, ending, quiet=True)
            raise
        if ending.usage is not None:
            self._ended(call, ending)  # learns what the model wrote, then tells
        elif self._listeners or _hooks.active:
            self._tell(call, spent, ending)
        return result

    async def _abegin(
        self,
        user: str | None,
        estimate: Decimal | int | None = 0,
        *,
        model: str | None = None,
        scope: Scope | None = None,
        kind: str | None = None,
        tokens: tuple[int, int, int] | None = None,
        provider: str | None = None,
    ) -> Call:
        """Do ``_begin`` without blocking the event loop on the ledger."""
        budgets = None
        if self._budgets_due():
            # A shared ledger's budget definitions are due for a re-read:
            # do it in a thread, so the loop never waits on the network.
            budgets = await asyncio.to_thread(self._budgets)
        opening = self._open(
            user, estimate, model, scope, kind, budgets, tokens=tokens, provider=provider
        )
        pilot = None
        if opening.cold:
            pilot, opening = await self._await_cold(opening)
        reservation = self._reservation(opening)
        if self._outbox.pending:
            await asyncio.to_thread(self._flush_outbox)
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
            hook.before_call(self)  # type: ignore[arg-type]
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
        unit = "usd"
        amount = from_units
        if holder.kind == "scope":
            name, period, resets = "scope", "this block", None
        else:
            assert budget is not None
            name, period, resets = budget.name, budget.period.label, budget.resets_at(self.clock())
            if holder.owner is not None and holder.owner != budget.name:
                name = f"{budget.name} ({holder.owner})"  # "default (user:bob)"
            unit, amount = budget.unit, budget.amount
        error = BudgetExceededError(
            budget=name,
            user=user,
            limit=amount(refusal.limit),
            spent=amount(refusal.spent + getattr(refusal, "prior", 0)),
            reserved=amount(refusal.reserved),
            requested=amount(refusal.requested),
            period=None if unit == "concurrency" else period,
            resets_at=None if unit == "concurrency" else resets,
            unit=unit,
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
        cost: Decimal | int | None,
        model: str | None = None,
        usage: Usage | None = None,
        error: BaseException | None = None,
        priced: bool = True,
        estimated: bool = False,
        owed: BaseException | None = None,
    ) -> _Ending:
        """Decide what ending ``call`` writes (no ledger I/O).

        ``cost`` is what pricing found, in dollars or (an ``int``) in ledger
        units (``None``: nothing reported). Charges
        made with ``charge()`` during the call are added. A failed call with
        no known cost is released; a successful one follows ``on_missing_cost``.
        """
        if usage is not None:
            model = model or usage.model
            estimated = estimated or usage.estimated
        if owed is None and not priced:
            owed = self._pricer.unpriced_error(usage, priced)
        if cost is not None:
            units: int | None = (cost if isinstance(cost, int) else to_units(cost)) + call.charged
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
        return _new(_Ending, (units, model, usage, error, priced, estimated, owed))

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
                units = _cost_units(cost(result))
            except BaseException as failure:  # charge the estimate, then report
                return self._ending(call, None, error=error, owed=failure)
            return self._ending(call, units, None, None, error)
        found, usage, priced = self._pricer.units_of_result(call, result)
        if (
            found is not None
            and priced
            and usage is not None
            and error is None
            and not call.charged
        ):
            # What _ending decides for a priced usage and nothing else, without its frame.
            return _new(_Ending, (found, usage.model, usage, None, True, usage.estimated, None))
        return self._ending(call, found, usage=usage, error=error, priced=priced)

    def _ending_of_stream(
        self, call: Call, meter: StreamMeter | None, error: BaseException | None = None
    ) -> _Ending:
        """Decide the ending of a streamed call from what its chunks carried."""
        found, usage, priced = self._pricer.units_of_stream(call, meter)
        return self._ending(call, found, usage=usage, error=error, priced=priced)

    # -- the lifecycle: the shells that end a call ----------------------------------------

    def _close(self, call: Call, ending: _Ending) -> None:
        """Write ``ending`` to the ledger, then report it."""
        try:
            if self._write_end(call, ending) and (self._alerts.thresholds or call.plan.soft):
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
            if self._listeners or _hooks.active:
                self._tell(call, ending.units or 0, ending)
            return
        self._ended(call, ending)

    async def _aclose(self, call: Call, ending: _Ending) -> None:
        """Do ``_close`` without blocking the event loop on the ledger."""
        try:
            if await self._awrite_end(call, ending) and (self._alerts.thresholds or call.plan.soft):
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
        if self._outbox.pending:
            self._flush_outbox()
        tallies: tuple[str, ...] = ()
        try:
            if units is None:
                if reservation.holds:
                    self.ledger.release(reservation)
                return False
            tallies = self._tally_keys(call, ending.model)
            if reservation.holds:
                self.ledger.settle(reservation, _settled(call, ending.usage, units), tallies)
            else:
                # No budget held: the settle is a direct charge, counted once per id.
                self.ledger.add(tallies, units, op_id=reservation.id)
        except StorageError as error:
            self._lost(error, call, reservation, units, tallies, ending.usage)
            return False
        return bool(units)

    async def _awrite_end(self, call: Call, ending: _Ending) -> bool:
        """Do ``_write_end`` without blocking the event loop."""
        reservation = call.reservation
        if reservation is None:
            return False
        units = ending.units
        if self._outbox.pending:
            await asyncio.to_thread(self._flush_outbox)
        tallies: tuple[str, ...] = ()
        try:
            if units is None:
                if reservation.holds:
                    await self.ledger.arelease(reservation)
                return False
            tallies = self._tally_keys(call, ending.model)
            if reservation.holds:
                await self.ledger.asettle(reservation, _settled(call, ending.usage, units), tallies)
            else:
                await self.ledger.aadd(tallies, units, op_id=reservation.id)
        except StorageError as error:
            self._lost(error, call, reservation, units, tallies, ending.usage)
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

    def _lost(
        self,
        error: StorageError,
        call: Call,
        reservation: Reservation,
        units: int | None,
        tallies: tuple[str, ...],
        usage: Usage | None = None,
    ) -> None:
        """Keep a settle the ledger refused in the outbox; a failed release only logs.

        The call already ran: raising now would not unspend the money. The
        reservation's hold stays in the ledger until it expires; the outbox
        settles that same reservation (idempotent on its id) once the
        ledger answers again.
        """
        self._notify("storage_failed", error, policy=self.on_storage_error)
        if units is None:
            logger.warning("could not release a reservation (it expires by itself): %s", error)
            return
        amounts = _settled(call, usage, units) if reservation.holds else units
        if self._outbox.put(
            Pending(reservation.id, units, tallies, reservation, call.user, amounts)
        ):
            logger.error(
                "could not record $%s for user %r in the ledger (%s); kept in the outbox, "
                "written again on the next ledger operation",
                from_units(units),
                call.user,
                error,
            )

    def _tally_keys(self, call: Call, model: str | None) -> tuple[str, ...]:
        """Return the counters a settled call adds to besides its budgets."""
        if model is None:
            model = call.request_model or (call.models[0] if call.models else None)
        return call.plan.tally_keys(model, call.tags)

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
        # CallOutcome's fields in order, without its __new__'s frame.
        outcome: CallOutcome = _new(
            CallOutcome,
            (
                call.user,
                cost,
                time.perf_counter() - call.started,
                call.request_model,
                ending.model,
                call.provider or (usage.provider if usage is not None else None),
                usage.operation if usage is not None else None,
                usage,
                type(error).__qualname__ if error is not None else None,
                ending.priced,
                ending.estimated,
                call.tags,
                self._cost_source(ending),
                self._outcomes.reserved(call.estimate),
                self._outcomes.names(call.holders),
                call.span,
            ),
        )
        for listener in self._listeners:  # guard._notify, inlined on the path of every call
            try:
                listener.call_ended(outcome)
            except Exception:  # listeners observe: a broken exporter never breaks the call
                logger.exception("budgetguard listener %r failed", listener.call_ended)

    def _cost_source(self, ending: _Ending) -> str:
        """Say where an ended call's cost came from (``CallOutcome.cost_source``)."""
        if ending.estimated:
            return "estimate"
        usage = ending.usage
        if usage is None:
            return "given"
        if usage.reported_cost is not None and self._pricer.reported_cost == "use":
            return "reported"
        return "table"

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
            self._ending(call, cost, model, usage, error, priced, estimated),
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
            self._ending(call, cost, model, usage, error, priced, estimated),
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


class OutcomeParts:
    """What each CallOutcome repeats, made once: the amount held, the budgets' names.

    Calls of one user hold the same plan's holders and, mostly, the same
    estimate; building a Decimal and a tuple of names anew costs some 6,000
    instructions a call. Both caches are bounded (emptied when full).
    """

    __slots__ = ("_names", "_reserved")

    _LIMIT = 256

    def __init__(self) -> None:
        self._reserved: dict[int, Decimal] = {}
        self._names: dict[int, tuple[tuple[Holder, ...], tuple[str, ...]]] = {}

    def reserved(self, units: int) -> Decimal:
        """Return ``units`` as dollars."""
        found = self._reserved.get(units)
        if found is None:
            if len(self._reserved) >= self._LIMIT:
                self._reserved.clear()
            found = self._reserved[units] = from_units(units)
        return found

    def names(self, holders: tuple[Holder, ...]) -> tuple[str, ...]:
        """Return the names of the budgets ``holders`` stand for ("scope" for a scope cap)."""
        # Keyed by identity: a plan's holders are one tuple until its window ends.
        found = self._names.get(id(holders))
        if found is not None and found[0] is holders:
            return found[1]
        if len(self._names) >= self._LIMIT:
            self._names.clear()
        names = tuple(h.budget.name if h.budget is not None else "scope" for h in holders)
        self._names[id(holders)] = (holders, names)
        return names


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# The ledger's unit of each budget unit (``budgets.UNITS``): dollars, input,
# output and all tokens, requests, calls in flight.
_INPUT, _OUTPUT, _TOKENS, _REQUESTS, _CONCURRENCY = 1, 2, 3, 4, 5


def _amounts(units: int, tokens: tuple[int, int, int] | None) -> tuple[int, ...]:
    """Return what a call reserves in every unit: its estimate, its tokens, 1 request, 1 call."""
    if tokens is None:
        return (units, 0, 0, 0, 1, 1)
    return (units, *tokens, 1, 1)


def _settled(call: Call, usage: Usage | None, units: int) -> int | tuple[int, ...]:
    """Return what a settle charges: ``units`` alone, or one amount per unit.

    Tokens come from the usage; with none, the tokens reserved stay spent
    (as the estimate does for dollars), unless calls inside this one were
    guarded and charged their own. A call counts one request, and frees
    its place among the calls in flight.
    """
    reservation = call.reservation
    if call.plan.simple or reservation is None:
        return units
    if call.has_inner:
        return (units, 0, 0, 0, 0, 0)
    if usage is not None:
        given, written = usage.total_input_tokens, usage.total_output_tokens
        return (units, given, written, given + written, 1, 0)
    held = [0, 0, 0, 0]
    for hold in reservation.holds:
        if 0 < hold.unit < _REQUESTS:
            held[hold.unit] = hold.amount
    return (units, held[_INPUT], held[_OUTPUT], held[_TOKENS], 1, 0)


# The SDK a guarded method belongs to (the top module of its kind), by the
# name the GenAI conventions' registry gives its provider.
_VENDORS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "botocore": "aws.bedrock",
    "boto3": "aws.bedrock",
    "mistralai": "mistral_ai",
    "litellm": "litellm",
}


_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _provider(provider: str | None, kind: str | None, model: str | None) -> str | None:
    """Return who serves a call: the provider named, else the SDK of its kind, by model too."""
    if provider is None and kind is not None:
        # Kinds start with the SDK's package: "openai:/chat/completions", "google.genai...".
        found = _PACKAGE.match(kind)
        provider = _VENDORS.get(found.group()) if found is not None else None
    return provider_name(provider, model)


def _free(model: str) -> bool:
    """Tell whether ``model`` is priced at zero (a local model): it never spends dollars."""
    price = lookup(model)
    if price is None or price.per_request or price.long_context or price.dated:
        return False
    return not any(getattr(price, name) for name in TOKEN_PRICE_FIELDS)


# Costs given as text ("0.0005") by cost= functions, in ledger units: parsing
# a Decimal is the dearest step of a call that gives its cost (bounded).
_TEXT_UNITS: dict[str, int] = {}


def _cost_units(value: object) -> int:
    """Return a ``cost=`` function's answer in ledger units (checked as ``to_decimal`` does)."""
    if type(value) is str:
        units = _TEXT_UNITS.get(value)
        if units is None:
            units = to_units(to_decimal(value, "cost"))
            if len(_TEXT_UNITS) < 1024:
                _TEXT_UNITS[value] = units
        return units
    return to_units(to_decimal(value, "cost"))
