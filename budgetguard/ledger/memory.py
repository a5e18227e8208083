"""The in-process ledger: fast, exact, and private to one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base import Balance, Ledger, Refusal, Reservation, check_reservation, check_units

__all__ = ["MemoryLedger"]

# How many ended reservation ids are remembered, so that a late second settle
# of the same reservation is recognised and ignored.
_ENDED_MEMORY = 100_000

# A counter cell: [spent, reserved]. One list per key, looked up once per
# reservation and kept with it, so settle and release touch no dict again.
_Cell = list[int]


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
        self._cells: dict[str, _Cell] = {}
        self._open: dict[str, tuple[Reservation, list[_Cell]]] = {}
        self._next_sweep = float("inf")
        self._ended: dict[str, bool] = {}  # id -> settled?, oldest first
        self._budgets: dict[str, dict[str, Any]] = {}

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them."""
        rid, holds, expires_at = reservation
        if type(rid) is not str or not rid:
            check_reservation(reservation)
        with self._lock:
            if rid in self._open or rid in self._ended:
                raise ValueError(f"reservation id {rid!r} was used before")
            if self.clock() >= self._next_sweep:
                self._sweep(self.clock())
            cells = self._cells
            found: list[_Cell] = []
            for index, (key, limit, amount) in enumerate(holds):
                # Checked inline, as cheaply as Python allows: this runs on
                # every guarded call (check_reservation words the error).
                if type(amount) is not int or amount < 0:
                    check_reservation(reservation)
                cell = cells.get(key)
                if cell is None:
                    if type(key) is not str:
                        check_reservation(reservation)
                    cell = cells[key] = [0, 0]
                if limit is not None:
                    if type(limit) is not int or limit < 0:
                        check_reservation(reservation)
                    used = cell[0] + cell[1]
                    if used + amount > limit or (amount == 0 and used >= limit):
                        return Refusal(index, key, limit, cell[0], cell[1], amount)
                found.append(cell)
            for cell, (_, _, amount) in zip(found, holds, strict=True):
                cell[1] += amount
            self._open[rid] = (reservation, found)
            if expires_at < self._next_sweep:
                self._next_sweep = expires_at
            return None

    def settle(self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()) -> bool:
        """Charge ``amount`` to every held key and tally; drop the holds once."""
        if type(amount) is not int or amount < 0:
            check_units(amount)
        with self._lock:
            rid = reservation.id
            ended = self._ended
            if ended.get(rid):
                return False
            entry = self._open.pop(rid, None)
            if entry is not None:
                for cell, (_, _, held) in zip(entry[1], reservation.holds, strict=True):
                    cell[0] += amount
                    cell[1] -= held
            else:  # expired or released: charge, but the holds are already gone
                cells = self._cells
                for key, _, _ in reservation.holds:
                    cells.setdefault(key, [0, 0])[0] += amount
            ended[rid] = True
            if len(ended) > 2 * _ENDED_MEMORY:
                self._forget_oldest()
            self._add(tallies, amount)
            return True

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging."""
        with self._lock:
            entry = self._open.pop(reservation.id, None)
            if entry is None:
                return False
            self._drop(entry)
            self._end(reservation.id, settled=False)
            return True

    def add(self, keys: Sequence[str], amount: int) -> None:
        """Charge ``amount`` to every key unconditionally."""
        check_units(amount)
        with self._lock:
            self._add(keys, amount)

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for."""
        with self._lock:
            self._expire(self.clock())
            cells = self._cells
            return {key: _balance(cells.get(key)) for key in keys}

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""
        with self._lock:
            self._expire(self.clock())
            return {
                key: Balance(cell[0], cell[1])
                for key, cell in self._cells.items()
                if (cell[0] or cell[1]) and key.startswith(prefix)
            }

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""
        with self._lock:
            for key in keys:
                cell = self._cells.get(key)
                if cell is None:
                    continue
                if cell[1]:
                    cell[0] = 0  # an open reservation still points at this cell
                else:
                    del self._cells[key]

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""
        with self._lock:
            self._expire(self.clock())
            return [reservation for reservation, _ in self._open.values()]

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

    def _add(self, keys: Sequence[str], amount: int) -> None:
        cells = self._cells
        for key in keys:
            cell = cells.get(key)
            if cell is None:
                cells[key] = [amount, 0]
            else:
                cell[0] += amount

    def _drop(self, entry: tuple[Reservation, list[_Cell]]) -> None:
        reservation, cells = entry
        for cell, (_, _, held) in zip(cells, reservation.holds, strict=True):
            cell[1] -= held

    def _end(self, reservation_id: str, *, settled: bool) -> None:
        self._ended[reservation_id] = settled
        if len(self._ended) > 2 * _ENDED_MEMORY:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        # Keep the newest ids (a dict keeps insertion order); trimming in one
        # batch is cheaper per settle than an OrderedDict's bookkeeping.
        recent = list(self._ended.items())[-_ENDED_MEMORY:]
        self._ended = dict(recent)

    def _expire(self, now: float) -> None:
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Open reservations are the calls in flight, few at any time: sweeping
        # them all once the earliest expiry has passed is cheaper than keeping
        # a heap that every settled call would leave an entry in.
        earliest = float("inf")
        for rid, entry in list(self._open.items()):
            expires_at = entry[0].expires_at
            if expires_at <= now:
                del self._open[rid]
                self._drop(entry)
                self._end(rid, settled=False)
            elif expires_at < earliest:
                earliest = expires_at
        self._next_sweep = earliest


def _balance(cell: _Cell | None) -> Balance:
    return Balance(cell[0], cell[1]) if cell is not None else Balance()
