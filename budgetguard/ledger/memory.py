"""The in-process ledger: fast, exact, and private to one process."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, starmap
from operator import setitem
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import (
    Balance,
    Ledger,
    Refusal,
    Reservation,
    check_op_id,
    check_reservation,
    check_units,
)

__all__ = ["MemoryLedger"]

T = TypeVar("T")

# How many ended reservation ids (and add op ids) are remembered, so that a
# late second settle of the same reservation is recognised and ignored.
_ENDED_MEMORY = 100_000

_INF = float("inf")
_NUMBERS = frozenset((float, int))

# A counter cell: [spent, reserved]. One list per key, looked up once per
# reservation and kept with it, so settle and release touch no dict again.
_Cell = list[int]
# Planned writes: (id(cell), index) -> [cell, index, new value].
_Plan = dict[tuple[int, int], list[Any]]
# An ended reservation id, or ("add", op_id) for a direct charge.
_EndedId = str | tuple[str, str]


def _bump(plan: _Plan, cell: _Cell, index: int, delta: int) -> None:
    """Plan ``cell[index] += delta`` (several bumps of one slot add up)."""
    slot = (id(cell), index)
    write = plan.get(slot)
    if write is None:
        plan[slot] = [cell, index, cell[index] + delta]
    else:
        write[2] += delta


def _apply(writes: Iterable[Sequence[Any]]) -> None:
    """Do every planned ``container[index] = value`` in one step.

    ``deque(starmap(setitem, ...))`` runs entirely in C: no Python line runs
    between the first write and the last, so neither a signal handler
    (``KeyboardInterrupt``) nor a trace function can stop it half way.
    """
    deque(starmap(setitem, writes), maxlen=0)


class MemoryLedger(Ledger):
    """Keep spend in a dict behind one lock.

    Thread-safe and asyncio-safe (no operation awaits while holding the lock).
    Spend is per process and lost on exit: several workers each get their own
    budget. Use ``sqlite://`` or ``redis://`` to share one.

    Exception safety: every operation checks and plans first, then applies
    all its writes in one step (``_apply``). A reservation id found in
    ``_ended`` is ended even if ``_open`` still lists it (an interrupt landed
    between the step and the clean-up that removes it); readers skip such
    entries.
    """

    schemes = ("memory",)
    shared = False

    def __init__(self, url: str = "memory://", *, clock: Callable[[], float] = time.time) -> None:
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigurationError(
                f"a memory:// ledger takes no host, path or options, got {url!r}; "
                "use exactly 'memory://'"
            )
        super().__init__(url, clock=clock)
        self._lock = threading.Lock()
        self._cells: dict[str, _Cell] = {}
        self._open: dict[str, tuple[Reservation, list[_Cell]]] = {}
        self._next_sweep = float("inf")
        self._ended: dict[_EndedId, bool] = {}  # id -> settled?, oldest first
        self._budgets: dict[str, dict[str, Any]] = {}

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them."""
        rid, holds, expires_at = reservation
        if (
            type(rid) is not str
            or not rid
            or type(expires_at) not in _NUMBERS
            or not -_INF < expires_at < _INF
        ):
            check_reservation(reservation)

        def locked() -> Refusal | None:
            if rid in self._open or rid in self._ended:
                raise ValueError(f"reservation id {rid!r} was used before")
            if self.clock() >= self._next_sweep:
                self._sweep(self.clock())
            cells = self._cells
            found: list[_Cell] = []
            writes: list[list[Any]] = []  # [cell, 1, new reserved], one per distinct cell
            for index, (key, limit, amount) in enumerate(holds):
                # Checked inline, as cheaply as Python allows: this runs on
                # every guarded call (check_reservation words the error).
                if type(amount) is not int or amount < 0:
                    check_reservation(reservation)
                cell = cells.get(key)
                if cell is None:
                    if type(key) is not str:
                        check_reservation(reservation)
                    cell = cells[key] = [0, 0]  # an empty cell changes no balance
                if limit is not None:
                    if type(limit) is not int or limit < 0:
                        check_reservation(reservation)
                    used = cell[0] + cell[1]
                    if used + amount > limit or (amount == 0 and used >= limit):
                        return Refusal(index, key, limit, cell[0], cell[1], amount)
                found.append(cell)
                # Planned inline (no call per hold: this is the hot path); a
                # key held twice adds up in one write.
                for write in writes:
                    if write[0] is cell:
                        write[2] += amount
                        break
                else:
                    writes.append([cell, 1, cell[1] + amount])
            # Lowered before the holds exist: an early sweep finds nothing,
            # a late one would leave an expired hold in place.
            if expires_at < self._next_sweep:
                self._next_sweep = expires_at
            writes.append([self._open, rid, (reservation, found)])
            _apply(writes)
            return None

        return self._locked(locked)

    def settle(self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()) -> bool:
        """Charge ``amount`` to every held key and tally; drop the holds once."""
        if type(amount) is not int or amount < 0:
            check_units(amount)

        def locked() -> bool:
            rid = reservation.id
            ended = self._ended
            state = ended.get(rid)
            if state:
                return False
            entry = self._open.get(rid) if state is None else None
            # [cell, 0, new spent] and [cell, 1, new reserved], one per distinct
            # cell and index, planned inline (no call per key: the hot path).
            writes: list[list[Any]] = []
            if entry is not None:
                for cell, (_, _, held) in zip(entry[1], reservation.holds, strict=True):
                    for i in range(0, len(writes), 2):
                        if writes[i][0] is cell:  # a key held twice: [spent], [reserved]
                            writes[i][2] += amount
                            writes[i + 1][2] -= held
                            break
                    else:
                        writes.append([cell, 0, cell[0] + amount])
                        writes.append([cell, 1, cell[1] - held])
                charged: Iterable[str] = tallies
            else:  # expired or released: charge, but the holds are already gone
                charged = chain([key for key, _, _ in reservation.holds], tallies)
            cells = self._cells
            for key in charged:
                tally = cells.get(key)
                if tally is None:
                    tally = cells[key] = [0, 0]  # an empty cell changes no balance
                for write in writes:
                    if write[0] is tally and write[1] == 0:
                        write[2] += amount
                        break
                else:
                    writes.append([tally, 0, tally[0] + amount])
            writes.append([ended, rid, True])
            _apply(writes)
            self._open.pop(rid, None)
            if len(ended) > 2 * _ENDED_MEMORY:
                self._forget_oldest()
            return True

        return self._locked(locked)

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging."""

        def locked() -> bool:
            rid = reservation.id
            if rid in self._ended:
                self._open.pop(rid, None)
                return False
            entry = self._open.get(rid)
            self._end(rid, entry)
            return entry is not None

        return self._locked(locked)

    def add(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Charge ``amount`` to every key unconditionally, once per ``op_id``."""
        check_units(amount)
        check_op_id(op_id)

        def locked() -> bool:
            marker: tuple[tuple[Any, ...], ...] = ()
            if op_id is not None:
                if ("add", op_id) in self._ended:
                    return False
                marker = ((self._ended, ("add", op_id), True),)
            plan: _Plan = {}
            for key in keys:
                _bump(plan, self._cell(key), 0, amount)
            _apply(chain(plan.values(), marker))
            if len(self._ended) > 2 * _ENDED_MEMORY:
                self._forget_oldest()
            return True

        return self._locked(locked)

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for."""

        def locked() -> dict[str, Balance]:
            self._expire(self.clock())
            cells = self._cells
            return {key: _balance(cells.get(key)) for key in keys}

        return self._locked(locked)

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""

        def locked() -> dict[str, Balance]:
            self._expire(self.clock())
            return {
                key: Balance(cell[0], cell[1])
                for key, cell in self._cells.items()
                if (cell[0] or cell[1]) and key.startswith(prefix)
            }

        return self._locked(locked)

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""

        def locked() -> None:
            for key in keys:
                cell = self._cells.get(key)
                if cell is None:
                    continue
                if cell[1]:
                    cell[0] = 0  # an open reservation still points at this cell
                else:
                    del self._cells[key]

        return self._locked(locked)

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""

        def locked() -> list[Reservation]:
            self._expire(self.clock())
            ended = self._ended
            return [r for rid, (r, _) in self._open.items() if rid not in ended]

        return self._locked(locked)

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition under ``name``."""

        def locked() -> None:
            self._budgets[name] = dict(definition)

        return self._locked(locked)

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``."""

        def locked() -> dict[str, Any] | None:
            found = self._budgets.get(name)
            return dict(found) if found is not None else None

        return self._locked(locked)

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition."""

        def locked() -> bool:
            return self._budgets.pop(name, None) is not None

        return self._locked(locked)

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition."""

        def locked() -> dict[str, dict[str, Any]]:
            return {name: dict(d) for name, d in self._budgets.items()}

        return self._locked(locked)

    # -- internals ----------------------------------------------------------------

    def _locked(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` holding the lock, which is released whatever happens."""
        # One line on purpose: since PEP 626 the exit of a ``with`` block
        # counts as a new line of the ``with`` statement, and an interrupt
        # delivered there (by a trace function, for one) would skip
        # ``__exit__`` and leave the lock held. On one line there is none.
        with self._lock: return operation()  # noqa: E701  # fmt: skip

    def _cell(self, key: str) -> _Cell:
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = [0, 0]  # an empty cell changes no balance
        return cell

    def _end(self, rid: str, entry: tuple[Reservation, list[_Cell]] | None) -> None:
        """Drop the holds of ``entry`` (if open) and record ``rid`` as released, in one step."""
        plan: _Plan = {}
        if entry is not None:
            for cell, (_, _, held) in zip(entry[1], entry[0].holds, strict=True):
                _bump(plan, cell, 1, -held)
        _apply(chain(plan.values(), ((self._ended, rid, False),)))
        self._open.pop(rid, None)
        if len(self._ended) > 2 * _ENDED_MEMORY:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        # An open entry whose id is ended is left over from an interrupted
        # clean-up; drop it before its id is forgotten, or it would count again.
        for rid in [rid for rid in self._open if rid in self._ended]:
            del self._open[rid]
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
        ended = self._ended
        for rid, entry in list(self._open.items()):
            expires_at = entry[0].expires_at
            if rid in ended:
                del self._open[rid]
            elif expires_at <= now:
                self._end(rid, entry)
            elif expires_at < earliest:
                earliest = expires_at
        self._next_sweep = earliest


def _balance(cell: _Cell | None) -> Balance:
    return Balance(cell[0], cell[1]) if cell is not None else Balance()
