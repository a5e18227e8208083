"""What a guard reports: spend, what is left, per model, and the ledger's upkeep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from . import _keys
from ._parts import GuardParts
from .budgets import DEFAULT, Budget, limit_at, user_of
from .events import BudgetStatus
from .money import MONEY, from_units
from .periods import window_end_of

__all__ = ["BudgetQueries"]

logger = logging.getLogger("budgetguard")


class BudgetQueries(GuardParts):
    """Read spend and remaining budget; prune and reset windows (a part of ``BudgetGuard``)."""

    # -- queries ------------------------------------------------------------------------------

    def spend(self, user: str | None = None, *, model: str | None = None) -> Decimal:
        """Return what ``user`` (or everyone) spent in the current period of their budget.

        Without a budget that applies, return the lifetime total. ``model=``
        narrows it to one model. Charges this process keeps in its outbox
        (the ledger failed to take them) are included.
        """
        key = self._spend_key(user, model)
        if self._outbox.pending:
            self._flush_outbox()
        balance = self._guard_storage(self.ledger.balances, [key])
        return self._spent(key, balance)

    async def aspend(self, user: str | None = None, *, model: str | None = None) -> Decimal:
        """Do ``spend`` without blocking the event loop on the ledger."""
        key = await asyncio.to_thread(self._spend_key, user, model)
        if self._outbox.pending:
            await asyncio.to_thread(self._flush_outbox)
        balance = await self._aguard_storage(self.ledger.abalances([key]))
        return self._spent(key, balance)

    def _spent(self, key: str, balances: Mapping[str, Any] | None) -> Decimal:
        units = balances[key].spent if balances and key in balances else 0
        if self._outbox.pending:
            units += self._outbox.units_on([key], self.clock(), held=False).get(key, 0)
        return from_units(units)

    def _spend_key(self, user: str | None, model: str | None) -> str:
        budget = self.budget_for(user)
        if budget is not None:
            key = budget.key(self.clock(), user=user)
            return _keys.model_key(key, model) if model is not None else key
        return _keys.total_key(user, model)

    def remaining(self, user: str | None = None) -> Decimal | None:
        """Return what is left of the tightest budget that applies, or ``None`` if none does.

        Charges waiting in this process's outbox count as spent.
        """
        keys = self._remaining_keys(user)
        if not keys:
            return None
        if self._outbox.pending:
            self._flush_outbox()
        balances = self._guard_storage(self.ledger.balances, [k for k, _ in keys]) or {}
        return self._tightest(keys, balances)

    async def aremaining(self, user: str | None = None) -> Decimal | None:
        """Do ``remaining`` without blocking the event loop on the ledger."""
        keys = await asyncio.to_thread(self._remaining_keys, user)
        if not keys:
            return None
        if self._outbox.pending:
            await asyncio.to_thread(self._flush_outbox)
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

    def _tightest(self, keys: list[tuple[str, Budget]], balances: Mapping[str, Any]) -> Decimal:
        waiting: dict[str, int] = {}
        if self._outbox.pending:
            # The ledger still holds a failed settle's estimate until its
            # reservation expires: only the part above it is missing there.
            waiting = self._outbox.units_on([k for k, _ in keys], self.clock(), held=True)
        found: list[Decimal] = []
        budgets, now = self._budgets(), self.clock()
        for key, budget in keys:
            balance = balances.get(key)
            used = (balance.spent + balance.reserved) if balance else 0
            used += waiting.get(key, 0)
            limit = limit_at(budget, budgets, now)
            found.append(max(Decimal(0), MONEY.subtract(limit, from_units(used))))
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

    def prune(self, before: datetime, *, lifetime: bool = False) -> int:
        """Delete the counters of budget windows and days that ended before ``before``.

        Resets are lazy, so every window leaves its counters behind; a
        long-running ledger sheds them with this. Lifetime totals, current
        windows and open reservations are kept. Window ids name local dates
        of the budget's time zone, so only windows that ended a full day
        before ``before`` go. A ``before`` in the future is refused with
        ``ValueError``. Return how many counters were deleted.

        ``lifetime=True`` also deletes the lifetime tallies (``spend(user)``
        where no budget applies, and per model) of every user who has no
        budget of their own and no spend since ``before`` (no day counter
        that ended less than a day before it). A default budget does not
        count as the user's own: it is kept per window. Everyone's totals,
        those of calls without a user and every key that holds a
        reservation stay. A user who comes back starts a new lifetime tally.
        """
        if before.tzinfo is None:
            raise ValueError("before must be an aware datetime (e.g. with tzinfo=timezone.utc)")
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        if before > now:
            # A window that has not ended is never pruned: a future date
            # would zero today's spend and let refused calls run again.
            raise ValueError(
                f"before must not be in the future: {before.isoformat()} is after "
                f"{now.isoformat()}; prune only removes windows that have ended"
            )
        cutoff = before - timedelta(days=1)
        doomed: list[str] = []
        recent_days: list[str] = []
        for prefix in _keys.prunable_prefixes():
            found = self._guard_storage(self.ledger.scan, prefix) or {}
            for key, balance in found.items():
                window = _keys.prunable_window(key)
                if window is None:
                    continue
                end = window_end_of(window)
                if not balance.reserved and end is not None and end <= cutoff:
                    doomed.append(key)
                elif prefix == _keys.DAY:
                    recent_days.append(key)
        windows = len(doomed)
        if lifetime:
            doomed.extend(self._idle_lifetime_tallies(recent_days))
        for start in range(0, len(doomed), 500):
            self._guard_storage(self.ledger.clear, doomed[start : start + 500])
        if doomed:
            self._alerts.forget(doomed[:windows])
            logger.info(
                "pruned %d counters of windows that ended before %s and %d lifetime tallies",
                windows,
                cutoff,
                len(doomed) - windows,
            )
        return len(doomed)

    def _idle_lifetime_tallies(self, recent_days: list[str]) -> list[str]:
        """Return the lifetime tallies of users with no budget of their own and no recent day."""
        tallies = self._guard_storage(self.ledger.scan, _keys.USER_TALLY) or {}
        if not tallies:
            return []
        active = {_keys.user_of_tally(key) for key in recent_days}
        budgeted = {
            user for name in self._budgets(refresh=True) if (user := user_of(name)) is not None
        }
        held = {
            hold.key
            for reservation in self._guard_storage(self.ledger.open_reservations)
            for hold in reservation.holds
        }
        candidates = [key for key, balance in tallies.items() if not balance.reserved]
        return [
            key for key in _keys.idle_user_tallies(candidates, active, budgeted) if key not in held
        ]

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
        """Return every budget's state in its current window (for metrics and reports).

        Budgets held for many subjects (the default budgets, per-value tag
        budgets ``tag:k=*``) and boosts have no one window and are left out;
        a boost in force shows as its budget's limit.
        """
        now = self.clock()
        budgets = dict(self._budgets())  # a copy: other threads update it in place
        keyed: list[tuple[str, Budget, str | None, Decimal]] = []
        for _, budget in sorted(budgets.items()):
            if budget.is_boost or budget.subject == DEFAULT or budget.subject.endswith("=*"):
                continue
            keyed.append((budget.key(now), budget, budget.user, limit_at(budget, budgets, now)))
        if not keyed:
            return []
        overs = [_keys.over_key(key) for key, budget, _, _ in keyed if budget.mode != "hard"]
        balances = self.ledger.balances([key for key, _, _, _ in keyed] + overs)
        return [
            BudgetStatus(
                name=budget.name,
                user=user,
                period=budget.period.label,
                limit=limit,
                spent=budget.amount(balances[key].spent),
                reserved=budget.amount(balances[key].reserved),
                resets_at=budget.resets_at(now),
                unit=budget.unit,
                mode=budget.mode,
                over=balances[_keys.over_key(key)].spent if budget.mode != "hard" else 0,
            )
            for key, budget, user, limit in keyed
        ]
