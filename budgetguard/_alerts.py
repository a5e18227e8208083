"""Budget alerts: tell people once when spend crosses a fraction of a limit.

Each threshold fires once per budget window across every process sharing
the ledger: the first process to reserve the window's marker key fires it.

Thresholds are one list for every budget, or a mapping from budgets to their
own lists: a budget's name (``"global"``, ``"user:alice"``), then its kind
(``"user"`` for every user's budget, the default one included), then ``"*"``.
A budget that matches no entry has no alerts.

``"forecast"`` in a list asks for a forecast alert: once per window, when the
spend so far, projected at the same rate to the end of the window, would
exceed the limit ("at this rate this monthly budget runs out on the 19th").
It waits until a tenth of the window has passed, so that one early call does
not predict the month. Inside, it is the threshold ``FORECAST`` (-1, which no
real threshold can be), so that it shares the markers of the other alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

from . import _keys
from .budgets import DEFAULT, GLOBAL, Budget
from .errors import ConfigurationError, StorageError
from .events import ThresholdCrossing
from .ledger import Hold, Reservation
from .money import MONEY, to_decimal

if TYPE_CHECKING:
    from ._call import Call
    from .guard import BudgetGuard

__all__ = ["FORECAST", "Alerts", "runs_out_at"]

#: The threshold that stands for the forecast alert.
FORECAST = Decimal(-1)

_FULL = Decimal(1)
# The share of a window that must have passed before a forecast is trusted.
_FORECAST_AFTER = 0.1

logger = logging.getLogger("budgetguard")


class Alerts:
    """Check a guard's alert thresholds after the calls that spent money."""

    def __init__(
        self,
        guard: BudgetGuard,
        thresholds: Iterable[object],
        on_threshold: Callable[[ThresholdCrossing], object] | None,
    ) -> None:
        self.guard = guard
        self.per_budget: dict[str, tuple[Decimal, ...]] = {}
        if isinstance(thresholds, Mapping):
            for name, fractions in thresholds.items():
                if not isinstance(name, str) or isinstance(fractions, str | bytes):
                    raise ConfigurationError(
                        "alert_thresholds maps budget names to lists of fractions, "
                        f"not {name!r}: {fractions!r}"
                    )
                self.per_budget[name] = _fractions(fractions)
            union = {f for fractions in self.per_budget.values() for f in fractions}
            # Truthy whenever some budget has alerts: the lifecycle checks it.
            self.thresholds = tuple(sorted(union))
        else:
            self.thresholds = _fractions(thresholds)
            self.per_budget["*"] = self.thresholds
        self.on_threshold = on_threshold
        self.fired: set[tuple[str, Decimal]] = set()

    def forget(self, keys: Iterable[str] | None = None) -> None:
        """Forget which alerts fired on ``keys`` (all when ``None``), after a reset or prune."""
        if keys is None:
            self.fired = set()
            return
        gone = set(keys)
        self.fired = {item for item in self.fired if item[0] not in gone}

    def check(self, call: Call) -> None:
        """Fire every threshold that ``call``'s budgets crossed and that has not fired yet."""
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
        guard = self.guard
        try:
            balances = guard.ledger.balances([hold.key for hold, _ in budget_holds])
        except StorageError:
            return
        for hold, holder in budget_holds:
            assert holder.budget is not None and hold.limit is not None
            spent = balances[hold.key].spent
            for fraction in self.thresholds_of(holder.budget, call.user):
                if (hold.key, fraction) in self.fired:
                    continue
                at = None
                if fraction == FORECAST:
                    window = holder.budget.window(guard.clock())
                    if window.start is None or window.end is None:
                        continue  # a lifetime budget has no rate to project
                    at = runs_out_at(spent, hold.limit, window.start, window.end, guard.clock())
                    if at is None:
                        continue
                elif spent < MONEY.multiply(fraction, hold.limit):
                    continue
                self.fired.add((hold.key, fraction))
                if self._claim(hold.key, fraction):
                    self._fire(hold, holder.budget, call.user, fraction, spent, at)

    def thresholds_of(self, budget: Budget, user: str | None) -> tuple[Decimal, ...]:
        """Return the fractions at which ``budget`` (held for ``user``) alerts."""
        per_budget = self.per_budget
        name = budget.name
        if name == DEFAULT and user is not None:
            name = f"user:{user}"
        kind = "user" if budget.kind == DEFAULT else budget.kind
        found: tuple[Decimal, ...] = ()
        for candidate in (name, budget.name, "global" if name == GLOBAL else kind, "*"):
            fractions = per_budget.get(candidate)
            if fractions is not None:
                found = fractions
                break
        if budget.mode == "soft" and _FULL not in found:
            # A soft budget lets calls past its limit: it says so when they pass it.
            found = (*found, _FULL)
        return found

    def _claim(self, key: str, fraction: Decimal) -> bool:
        # One marker counter per budget window and threshold: the first
        # process to reserve it fires the alert, every other one is refused.
        guard = self.guard
        marker = Reservation(
            guard._new_id("alert"),
            (Hold(_keys.alert_key(key, fraction), 1, 1),),
            guard.clock() + guard.reservation_ttl,
        )
        try:
            if guard.ledger.reserve(marker) is not None:
                return False
            guard.ledger.settle(marker, 1)
        except StorageError:
            return True
        return True

    def _fire(
        self,
        hold: Hold,
        budget: Budget,
        user: str | None,
        fraction: Decimal,
        spent: int,
        forecast: datetime | None = None,
    ) -> None:
        window = hold.key.rsplit("|", 1)[-1]
        crossing = ThresholdCrossing(
            budget=budget.name if budget.name != DEFAULT else f"default (user:{user})",
            user=user if budget.name != GLOBAL else None,
            period=budget.period.label,
            fraction=fraction,
            limit=budget.limit,
            spent=budget.amount(spent),
            window=window,
            kind="threshold" if forecast is None else "forecast",
            runs_out_at=forecast,
        )
        if forecast is not None:
            logger.warning(
                "budget %s runs out on %s at this rate: $%s of $%s spent (%s)",
                crossing.budget,
                forecast.isoformat(timespec="minutes"),
                crossing.spent,
                crossing.limit,
                crossing.period,
            )
        else:
            logger.warning(
                "budget %s reached %s%% of its limit: $%s of $%s (%s)",
                crossing.budget,
                crossing.percent,
                crossing.spent,
                crossing.limit,
                crossing.period,
            )
        self.guard._notify("threshold_crossed", crossing)
        if self.on_threshold is not None:
            self.guard._safely(self.on_threshold, crossing)


def _fractions(values: Iterable[object]) -> tuple[Decimal, ...]:
    """Return alert thresholds as sorted Decimals ("forecast" as FORECAST), refusing bad ones."""
    return tuple(
        sorted({FORECAST if f == "forecast" else to_decimal(f, "alert threshold") for f in values})
    )


def runs_out_at(
    spent: int, limit: int, start: datetime, end: datetime, now: float
) -> datetime | None:
    """Return when a window's limit runs out at the rate spent so far, if before ``end``.

    ``spent`` and ``limit`` are in the same units. ``None`` when the window is
    too young to tell (less than a tenth gone) or the limit lasts the window.
    """
    begun, ends = start.timestamp(), end.timestamp()
    elapsed = now - begun
    if spent <= 0 or elapsed < _FORECAST_AFTER * (ends - begun):
        return None
    out = begun + elapsed * limit / spent
    if out >= ends:
        return None
    return datetime.fromtimestamp(out, timezone.utc)
