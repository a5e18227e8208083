"""The in-process ledger: fast, exact, and private to one process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base import Balance, Ledger, Refusal, Reservation, check_reservation

__all__ = ["MemoryLedger"]

# How many ended reservation ids are remembered, so that a late second settle
# of the same reservation is recognised and ignored.
_ENDED_MEMORY = 100_000


class MemoryLedger(Ledger):
    """Keep spend in a dict behind one lock.

    Thread-safe and asyncio-safe (no operation awaits while holding the lock).
    Spend is per process and lost on exit: several workers each get their own
    budget. Use ``sqlite://`` or ``redis://`` to share one.
    """

    schemes = ("memory",)
    shared = False

    def __init__(self, url: str = "memory://", *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, clock=clock)
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._open: dict[str, Reservation] = {}
        self._next_sweep = float("-inf")
        self._ended: OrderedDict[str, bool] = OrderedDict()  # id -> settled?
        self._budgets: dict[str, dict[str, Any]] = {}

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them."""
        holds = reservation.holds
        for hold in holds:
            # Inline checks: this runs on every guarded call (check_reservation
            # says the same, slower).
            amount, limit = hold.amount, hold.limit
            if (
                type(amount) is not int
                or amount < 0
                or (limit is not None and (type(limit) is not int or limit < 0))
                or type(hold.key) is not str
            ):
                check_reservation(reservation)
        if type(reservation.id) is not str or not reservation.id:
            check_reservation(reservation)
        with self._lock:
            rid = reservation.id
            if rid in self._open or rid in self._ended:
                raise ValueError(f"reservation id {rid!r} was used before")
            self._expire(self.clock())
            spent, reserved = self._spent, self._reserved
            for index, (key, limit, amount) in enumerate(holds):
                if limit is None:
                    continue
                used = spent.get(key, 0) + reserved.get(key, 0)
                if used + amount > limit or (amount == 0 and used >= limit):
                    return Refusal(
                        index, key, limit, spent.get(key, 0), reserved.get(key, 0), amount
                    )
            for key, _, amount in holds:
                reserved[key] = reserved.get(key, 0) + amount
            self._open[rid] = reservation
            if reservation.expires_at < self._next_sweep:
                self._next_sweep = reservation.expires_at
            return None

    def settle(self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()) -> bool:
        """Charge ``amount`` to every held key and tally; drop the holds once."""
        if type(amount) is not int or amount < 0:
            _check_amount(amount)
        with self._lock:
            rid = reservation.id
            ended = self._ended
            if ended.get(rid):
                return False
            if self._open.pop(rid, None) is not None:
                self._drop_holds(reservation)
            ended[rid] = True
            if len(ended) > _ENDED_MEMORY:
                ended.popitem(last=False)
            spent = self._spent
            for key, _, _ in reservation.holds:
                spent[key] = spent.get(key, 0) + amount
            for key in tallies:
                spent[key] = spent.get(key, 0) + amount
            return True

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging."""
        with self._lock:
            if self._open.pop(reservation.id, None) is None:
                return False
            self._drop_holds(reservation)
            self._end(reservation.id, settled=False)
            return True

    def add(self, keys: Sequence[str], amount: int) -> None:
        """Charge ``amount`` to every key unconditionally."""
        _check_amount(amount)
        with self._lock:
            for key in keys:
                self._spent[key] = self._spent.get(key, 0) + amount

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for."""
        with self._lock:
            self._expire(self.clock())
            return {
                key: Balance(self._spent.get(key, 0), self._reserved.get(key, 0)) for key in keys
            }

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""
        with self._lock:
            self._expire(self.clock())
            keys = {k for k, v in self._spent.items() if v and k.startswith(prefix)}
            keys.update(k for k, v in self._reserved.items() if v and k.startswith(prefix))
            return {k: Balance(self._spent.get(k, 0), self._reserved.get(k, 0)) for k in keys}

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys."""
        with self._lock:
            for key in keys:
                self._spent.pop(key, None)

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""
        with self._lock:
            self._expire(self.clock())
            return list(self._open.values())

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition under ``name``."""
        with self._lock:
            self._budgets[name] = dict(definition)

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``."""
        with self._lock:
            found = self._budgets.get(name)
            return dict(found) if found is not None else None

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition."""
        with self._lock:
            return self._budgets.pop(name, None) is not None

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition."""
        with self._lock:
            return {name: dict(d) for name, d in self._budgets.items()}

    # -- internals ----------------------------------------------------------------

    def _drop_holds(self, reservation: Reservation) -> None:
        reserved = self._reserved
        for key, _, amount in reservation.holds:
            left = reserved.get(key, 0) - amount
            if left > 0:
                reserved[key] = left
            else:
                reserved.pop(key, None)

    def _end(self, reservation_id: str, *, settled: bool) -> None:
        self._ended[reservation_id] = settled
        if len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _expire(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Open reservations are the calls in flight, few at any time: sweeping
        # them all once the earliest expiry has passed is cheaper than keeping
        # a heap that every settled call would leave an entry in.
        earliest = float("inf")
        for reservation in list(self._open.values()):
            if reservation.expires_at <= now:
                del self._open[reservation.id]
                self._drop_holds(reservation)
                self._end(reservation.id, settled=False)
            elif reservation.expires_at < earliest:
                earliest = reservation.expires_at
        self._next_sweep = earliest


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"amount must be a non-negative whole number of units, got {amount!r}")
