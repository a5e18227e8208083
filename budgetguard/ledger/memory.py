"""The in-process ledger: fast, exact, and private to one process."""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, starmap
from operator import setitem
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigurationError
from .base import (
    TOMBSTONE_SECONDS,
    WEIGHT_SCALE,
    Balance,
    BudgetChanges,
    Hold,
    Ledger,
    Refusal,
    Reservation,
    budget_from_json,
    budget_to_json,
    check_hold_extras,
    check_idempotency_ttl,
    check_op_id,
    check_reservation,
    check_settle_amount,
    check_units,
)

__all__ = ["MemoryLedger"]

T = TypeVar("T")

_INF = float("inf")
_NUMBERS = frozenset((float, int))

# A counter cell: [spent, reserved]. One list per key, looked up once per
# reservation and kept with it, so settle and release touch no dict again.
_Cell = list[int]
# Planned writes: (id(cell), index) -> [cell, index, new value].
_Plan = dict[tuple[int, int], list[Any]]
# An ended reservation id, or ("add", op_id) for a direct charge.
_EndedId = str | tuple[str, str]
# A reservation's holds seen before, when they are the common kind (one or
# two distinct keys, hard dollar limits, the same amount > 0): the holds
# tuple, then per key its cell and limit, then the amount, then the cells.
_Hot = tuple[Any, ...]
# A settle seen before: (tallies, holds, writer, tally cells, held cells, amount held).
_HotSettle = tuple[Any, ...]


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

    Idempotency memory (``memory://?idempotency_ttl=SECONDS``, default 3600,
    at least 60): ended reservation ids and ``add`` op ids are kept in two
    generations of ``idempotency_ttl`` each, so an id is remembered at least
    that long and at most twice that, and forgetting is one step.
    """

    schemes = ("memory",)
    shared = False

    def __init__(
        self,
        url: str = "memory://",
        *,
        clock: Callable[[], float] = time.time,
        idempotency_ttl: float | str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/") or parts.fragment:
            raise ConfigurationError(
                f"a memory:// ledger takes no host or path, got {url!r}; "
                "use 'memory://' (options: ?idempotency_ttl=SECONDS)"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        ttl = idempotency_ttl if idempotency_ttl is not None else query.pop("idempotency_ttl", None)
        query.pop("idempotency_ttl", None)
        if query:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(query))} in {url!r}; known: idempotency_ttl"
            )
        super().__init__(url, clock=clock)
        #: Seconds for which ended reservation ids and add op ids are remembered, at least.
        self.idempotency_ttl = check_idempotency_ttl(ttl, url)
        self._lock = threading.Lock()
        self._cells: dict[str, _Cell] = {}
        # Tuples of tally keys -> their cells and the cells' ids (see _tally_entry).
        self._tally_cells: dict[Sequence[str], tuple[list[_Cell], frozenset[int]] | None] = {}
        # id(holds) -> _Hot, and id(tallies) -> _HotSettle: the hot path's
        # cells looked up once (see _hot_reserve, _hot_settle). ``clear``
        # empties both when it drops a cell; bounded.
        self._hot: dict[int, _Hot] = {}
        self._hot_settles: dict[int, _HotSettle] = {}
        self._open: dict[str, tuple[Reservation, list[_Cell]]] = {}
        self._next_sweep = float("inf")
        # id -> settled?, in two generations: _ended, and _ended_old before it.
        self._ended: dict[_EndedId, bool] = {}
        self._ended_old: dict[_EndedId, bool] = {}
        self._rotate_at = self.clock() + self.idempotency_ttl
        # Budget definitions; None for a deleted one whose name is still kept.
        self._budgets: dict[str, str | None] = {}  # as JSON: every read gets its own copy
        self._meta: list[Any] = [None, 0, 0]  # mark, version, floor
        self._versions: dict[str, int] = {}  # name -> version of its last change
        self._log: list[tuple[int, str]] = []  # (version, name), in version order
        self._deleted: dict[str, float] = {}  # name -> when deleted, oldest first

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
        hot = self._hot.get(id(holds))
        if hot is not None and hot[0] is holds:  # these very holds, checked before
            with self._lock: return self._hot_reserve(reservation, rid, hot, expires_at)  # noqa: E701  # fmt: skip

        # One line on purpose (see _locked): the lock is released whatever happens.
        try:
            with self._lock: return self._reserve(reservation, rid, holds, expires_at)  # noqa: E701  # fmt: skip
        except (TypeError, ValueError):
            check_reservation(reservation)  # a hold of the wrong shape: say which
            raise

    def _reserve(
        self, reservation: Reservation, rid: str, holds: tuple[Hold, ...], expires_at: float
    ) -> Refusal | None:
        """Do ``reserve`` (the lock held)."""
        if rid in self._open or rid in self._ended or rid in self._ended_old:
            raise ValueError(f"reservation id {rid!r} was used before")
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        if now >= self._rotate_at:
            self._rotate(now)
        cells = self._cells
        found: list[_Cell] = []
        writes: list[list[Any]] = []  # [cell, 1, new reserved], one per distinct cell
        overs: list[list[Any]] = []  # [cell, 0, new spent], one per distinct over key
        zero = 0  # Hold's default unit and weight
        for index, (key, limit, amount, unit, over, prior, weight) in enumerate(holds):
            # Checked inline, as cheaply as Python allows: this runs on
            # every guarded call (check_reservation words the error).
            if type(amount) is not int or amount < 0:
                check_reservation(reservation)
            cell = cells.get(key)
            if cell is None:
                if type(key) is not str:
                    check_reservation(reservation)
                cell = cells[key] = [0, 0]  # an empty cell changes no balance
            if over is not None or prior is not None or unit is not zero or weight is not zero:
                # Not the default hold (a unit, a soft hold, a sliding
                # window, or a malformed one): off the inline path. An
                # identity test is the cheapest; an int 0 that is not
                # CPython's cached one merely takes the general path.
                check_hold_extras(holds[index])
                refusal = self._fit(index, key, limit, amount, over, prior, weight, cell, overs)
                if refusal is not None:
                    return refusal
            elif limit is not None:
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
        if overs:
            writes += overs
        writes.append([self._open, rid, (reservation, found)])
        _apply(writes)
        if not overs and 0 < len(holds) < 3:
            self._remember_hot(holds, found)
        return None

    def _remember_hot(self, holds: tuple[Hold, ...], cells: list[_Cell]) -> None:
        """Keep the cells of ``holds`` if they are the common kind (lock held; see ``_Hot``)."""
        amount = holds[0].amount
        if type(holds) is not tuple or len({id(cell) for cell in cells}) != len(cells):
            return
        for _key, limit, held, unit, over, prior, weight in holds:
            if (
                type(held) is not int
                or held != amount
                or held <= 0
                or (limit is not None and type(limit) is not int)
                or unit != 0
                or over is not None
                or prior is not None
                or weight != 0
            ):
                return
        if len(self._hot) >= 4096:
            self._hot = {}
        limits = [_INF if hold.limit is None else hold.limit for hold in holds]  # None: no limit
        if len(cells) == 1:
            self._hot[id(holds)] = (holds, cells[0], limits[0], amount, cells)
        else:
            self._hot[id(holds)] = (holds, cells[0], limits[0], cells[1], limits[1], amount, cells)

    def _hot_reserve(
        self, reservation: Reservation, rid: str, hot: _Hot, expires_at: float
    ) -> Refusal | None:
        """Do ``_reserve`` for holds seen before (the lock held): no search, two stores.

        The writes are one line of stores, with no call between them, so no
        interrupt lands half way (see ``_apply``). A hold with no room takes
        the general path, which words the refusal.
        """
        opened = self._open
        if rid in opened or rid in self._ended or rid in self._ended_old:
            raise ValueError(f"reservation id {rid!r} was used before")
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        if now >= self._rotate_at:
            self._rotate(now)
        if len(hot) == 5:
            _, cell, limit, amount, cells = hot
            held = cell[1] + amount
            if cell[0] + held > limit:
                return self._reserve(reservation, rid, reservation.holds, expires_at)
            if expires_at < self._next_sweep:
                self._next_sweep = expires_at
            cell[1], opened[rid] = held, (reservation, cells)  # one step
            return None
        _, first, first_limit, second, second_limit, amount, cells = hot
        held, other = first[1] + amount, second[1] + amount
        if first[0] + held > first_limit or second[0] + other > second_limit:
            return self._reserve(reservation, rid, reservation.holds, expires_at)
        if expires_at < self._next_sweep:
            self._next_sweep = expires_at
        first[1], second[1], opened[rid] = held, other, (reservation, cells)  # one step
        return None

    def settle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Charge every held key (by its unit) and tally; drop the holds once."""
        if type(amount) is not int or amount < 0:
            # Amounts per unit (or a bad amount, which raises here).
            charges, amount = check_settle_amount(amount, reservation.holds)
            return self._locked(lambda: self._settle_units(reservation, charges, amount, tallies))

        with self._lock: return self._settle(reservation, amount, tallies)  # noqa: E701  # fmt: skip

    def _settle(self, reservation: Reservation, amount: int, tallies: Sequence[str]) -> bool:
        """Do ``settle`` with one amount for every key (the lock held)."""
        rid = reservation.id
        ended = self._ended
        state = ended.get(rid)
        if state is None:
            state = self._ended_old.get(rid)
        if state:
            return False
        entry = self._open.get(rid) if state is None else None
        if entry is not None and type(tallies) is tuple:
            hot = self._hot_settles.get(id(tallies))
            if hot is None or hot[0] is not tallies or hot[1] is not reservation.holds:
                hot = self._hot_settle_of(reservation.holds, entry[1], tallies)
            if hot is not None and hot[4] is entry[1]:
                # Seen before: one generated assignment makes every write.
                hot[2](hot[3], hot[4], amount, hot[5], ended, rid)
                self._open.pop(rid, None)
                return True
            # The common case: distinct held keys and tallies, the tallies'
            # cells known from an earlier settle (a plan settles the same
            # tallies every call). One list built in C, no search.
            known = self._tally_cells.get(tallies)
            if known is None:
                known = self._tally_entry(tallies)
            held_cells = entry[1]
            if known and len(held_cells) < 4:
                ids = [id(cell) for cell in held_cells]
                if len(set(ids)) == len(ids) and known[1].isdisjoint(ids):
                    planned: list[list[Any]] = [[cell, 0, cell[0] + amount] for cell in known[0]]
                    for cell, hold in zip(held_cells, reservation.holds, strict=True):
                        planned.append([cell, 0, cell[0] + amount])
                        planned.append([cell, 1, cell[1] - hold.amount])
                    planned.append([ended, rid, True])
                    _apply(planned)
                    self._open.pop(rid, None)
                    return True
        # [cell, 0, new spent] and [cell, 1, new reserved], one per distinct
        # cell and index, planned inline (no call per key: the hot path).
        writes: list[list[Any]] = []
        if entry is not None:
            for cell, hold in zip(entry[1], reservation.holds, strict=True):
                held = hold.amount
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
            charged = chain([hold.key for hold in reservation.holds], tallies)
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
        return True

    def _hot_settle_of(
        self, holds: tuple[Hold, ...], cells: list[_Cell], tallies: tuple[str, ...]
    ) -> _HotSettle | None:
        """Plan the settles of ``holds`` with ``tallies`` once, if both are the common kind."""
        hot = self._hot.get(id(holds))
        if hot is None or hot[0] is not holds or hot[-1] is not cells:
            return None
        known = self._tally_cells.get(tallies)
        if known is None:
            known = self._tally_entry(tallies)
        if not known or not known[1].isdisjoint(map(id, cells)):
            return None
        tally_cells = known[0]
        if len(tally_cells) > 32:
            return None
        if len(self._hot_settles) >= 4096:
            self._hot_settles = {}
        write = _settle_writer(len(tally_cells), len(cells))
        found = (tallies, holds, write, tally_cells, cells, holds[0].amount)
        self._hot_settles[id(tallies)] = found
        return found

    def _settle_units(
        self, reservation: Reservation, charges: list[int], tally: int, tallies: Sequence[str]
    ) -> bool:
        """Settle with ``charges[i]`` for hold ``i`` and ``tally`` for each tally (lock held)."""
        rid = reservation.id
        ended = self._ended
        state = ended.get(rid)
        if state is None:
            state = self._ended_old.get(rid)
        if state:
            return False
        entry = self._open.get(rid) if state is None else None
        plan: _Plan = {}
        if entry is not None:
            for cell, hold, charge in zip(entry[1], reservation.holds, charges, strict=True):
                _bump(plan, cell, 0, charge)
                _bump(plan, cell, 1, -hold.amount)
        else:  # expired or released: charge, but the holds are already gone
            for hold, charge in zip(reservation.holds, charges, strict=True):
                _bump(plan, self._cell(hold.key), 0, charge)
        for key in tallies:
            _bump(plan, self._cell(key), 0, tally)
        _apply(chain(plan.values(), ((ended, rid, True),)))
        self._open.pop(rid, None)
        return True

    def _fit(
        self,
        index: int,
        key: str,
        limit: int | None,
        amount: int,
        over: str | None,
        prior: str | None,
        weight: int,
        cell: _Cell,
        overs: list[list[Any]],
    ) -> Refusal | None:
        """Check one hold with a soft ``over`` or a ``prior`` window (lock held).

        Return the refusal of a hard hold that does not fit; plan the ``over``
        count of a soft one that does not fit (into ``overs``).
        """
        if limit is None:
            return None
        if type(limit) is not int or limit < 0:
            check_units(limit, f"limit of {key!r}")
        part = 0
        if prior is not None:
            prior_cell = self._cells.get(prior)
            if prior_cell is not None:
                part = prior_cell[0] * weight // WEIGHT_SCALE
        used = cell[0] + cell[1] + part
        if used + amount <= limit and (amount != 0 or used < limit):
            return None
        if over is None:
            return Refusal(index, key, limit, cell[0], cell[1], amount, part)
        counted = self._cell(over)
        for write in overs:
            if write[0] is counted:
                write[2] += 1
                break
        else:
            overs.append([counted, 0, counted[0] + 1])
        return None

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging."""

        def locked() -> bool:
            rid = reservation.id
            if rid in self._ended or rid in self._ended_old:
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
                if ("add", op_id) in self._ended or ("add", op_id) in self._ended_old:
                    return False
                marker = ((self._ended, ("add", op_id), True),)
            plan: _Plan = {}
            for key in keys:
                _bump(plan, self._cell(key), 0, amount)
            _apply(chain(plan.values(), marker))
            now = self.clock()
            if now >= self._rotate_at:
                self._rotate(now)
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
                    # The caches of cells may point at this one.
                    self._tally_cells, self._hot, self._hot_settles = {}, {}, {}
                    del self._cells[key]

        return self._locked(locked)

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""

        def locked() -> list[Reservation]:
            self._expire(self.clock())
            ended, old = self._ended, self._ended_old
            return [r for rid, (r, _) in self._open.items() if rid not in ended and rid not in old]

        return self._locked(locked)

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition under ``name``."""

        text = budget_to_json(name, definition)  # refuses what another backend would

        def locked() -> None:
            mark, version, _ = self._meta
            version += 1
            # The log entry first: should the step below not happen, a reader
            # only looks at a name that did not change.
            self._log.append((version, name))
            _apply(
                (
                    (self._budgets, name, text),
                    (self._versions, name, version),
                    (self._meta, 0, mark or uuid.uuid4().hex),
                    (self._meta, 1, version),
                )
            )
            self._deleted.pop(name, None)
            self._compact_log()

        return self._locked(locked)

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``."""

        def locked() -> dict[str, Any] | None:
            found = self._budgets.get(name)
            return budget_from_json(found) if found is not None else None

        return self._locked(locked)

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition."""

        def locked() -> bool:
            if self._budgets.get(name) is None:
                return False
            version = self._meta[1] + 1
            self._log.append((version, name))
            now = self.clock()
            _apply(
                (
                    (self._budgets, name, None),
                    (self._versions, name, version),
                    (self._meta, 1, version),
                    (self._deleted, name, now),
                )
            )
            self._forget_deleted(now)
            self._compact_log()
            return True

        return self._locked(locked)

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition."""

        def locked() -> dict[str, dict[str, Any]]:
            return {name: budget_from_json(d) for name, d in self._budgets.items() if d is not None}

        return self._locked(locked)

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the definitions changed after ``since`` (see ``Ledger.budget_changes``)."""

        def locked() -> BudgetChanges:
            mark, version, floor = self._meta
            if since is None or since[0] != mark or not floor <= since[1] <= version:
                everything = {
                    name: budget_from_json(d) for name, d in self._budgets.items() if d is not None
                }
                return BudgetChanges(mark, version, dict(everything), True)
            start = bisect_right(self._log, (since[1], "\U0010ffff"))
            changed: dict[str, dict[str, Any] | None] = {}
            for _, name in self._log[start:]:
                found = self._budgets.get(name)
                changed[name] = budget_from_json(found) if found is not None else None
            return BudgetChanges(mark, version, changed, False)

        return self._locked(locked)

    # -- internals ----------------------------------------------------------------

    def _locked(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` holding the lock, which is released whatever happens."""
        # One line on purpose: since PEP 626 the exit of a ``with`` block
        # counts as a new line of the ``with`` statement, and an interrupt
        # delivered there (by a trace function, for one) would skip
        # ``__exit__`` and leave the lock held. On one line there is none.
        with self._lock: return operation()  # noqa: E701  # fmt: skip

    def _tally_entry(self, tallies: Sequence[str]) -> tuple[list[_Cell], frozenset[int]] | None:
        """Remember the cells of a tuple of distinct tally keys (lock held); None otherwise.

        Tallies repeat call after call (one tuple per plan and model), so
        their cells are looked up once. ``clear`` forgets every entry when it
        drops a cell. Bounded: emptied when full.
        """
        if type(tallies) is not tuple or len(set(tallies)) != len(tallies):
            return None
        if any(type(key) is not str for key in tallies):
            return None
        cells = [self._cell(key) for key in tallies]
        if len(self._tally_cells) >= 4096:
            self._tally_cells = {}
        found = self._tally_cells[tallies] = (cells, frozenset(map(id, cells)))
        return found

    def _cell(self, key: str) -> _Cell:
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = [0, 0]  # an empty cell changes no balance
        return cell

    def _end(self, rid: str, entry: tuple[Reservation, list[_Cell]] | None) -> None:
        """Drop the holds of ``entry`` (if open) and record ``rid`` as released, in one step."""
        plan: _Plan = {}
        if entry is not None:
            for cell, hold in zip(entry[1], entry[0].holds, strict=True):
                _bump(plan, cell, 1, -hold.amount)
        _apply(chain(plan.values(), ((self._ended, rid, False),)))
        self._open.pop(rid, None)

    def _rotate(self, now: float) -> None:
        """Start a new generation of ended ids; forget the one before the last."""
        # An open entry whose id is ended is left over from an interrupted
        # clean-up; drop it before its id is forgotten, or it would count again.
        old = self._ended_old
        for rid in [rid for rid in self._open if rid in old]:
            del self._open[rid]
        # Settle and release add to the current generation without rotating,
        # so it may hold ids that ended just now: it becomes the old one.
        self._ended_old, self._ended = self._ended, {}
        self._rotate_at = now + self.idempotency_ttl

    def _forget_deleted(self, now: float) -> None:
        """Forget the names of definitions deleted more than a day ago."""
        deleted = self._deleted
        while deleted:
            name, at = next(iter(deleted.items()))
            if at > now - TOMBSTONE_SECONDS:
                break
            version = self._versions.pop(name, 0)
            if self._budgets.get(name, 0) is None:
                del self._budgets[name]
            if version > self._meta[2]:
                self._meta[2] = version
            del deleted[name]

    def _compact_log(self) -> None:
        """Keep one log entry per name once the log has grown past twice their number."""
        if len(self._log) > 2 * len(self._versions) + 64:
            self._log = sorted((version, name) for name, version in self._versions.items())

    def _expire(self, now: float) -> None:
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Open reservations are the calls in flight, few at any time: sweeping
        # them all once the earliest expiry has passed is cheaper than keeping
        # a heap that every settled call would leave an entry in.
        earliest = float("inf")
        ended, old = self._ended, self._ended_old
        for rid, entry in list(self._open.items()):
            expires_at = entry[0].expires_at
            if rid in ended or rid in old:
                del self._open[rid]
            elif expires_at <= now:
                self._end(rid, entry)
            elif expires_at < earliest:
                earliest = expires_at
        self._next_sweep = earliest


_SettleWriter = Callable[[list[_Cell], list[_Cell], int, int, dict[_EndedId, bool], str], None]
_WRITERS: dict[tuple[int, int], _SettleWriter] = {}


def _settle_writer(tallies: int, holds: int) -> _SettleWriter:
    """Return a function settling ``holds`` held cells and ``tallies`` tally cells in one step.

    Made once per shape from source, as ``collections.namedtuple`` makes its
    methods: every write is a target of one assignment, with no call between
    them, so no interrupt (a signal, a trace function) lands half way and the
    writes cost a store each. What it does for 2 tallies and 1 hold::

        def write(t, c, amount, held, ended, rid):
            t0, t1 = t
            c0, = c
            t0[0], t1[0], c0[0], c0[1], ended[rid] = (
                t0[0] + amount, t1[0] + amount, c0[0] + amount, c0[1] - held, True)
    """
    found = _WRITERS.get((tallies, holds))
    if found is not None:
        return found
    t = [f"t{i}" for i in range(tallies)]
    c = [f"c{i}" for i in range(holds)]
    targets = [f"{name}[0]" for name in t]
    values = [f"{name}[0] + amount" for name in t]
    for name in c:
        targets += (f"{name}[0]", f"{name}[1]")
        values += (f"{name}[0] + amount", f"{name}[1] - held")
    lines = ["def write(t, c, amount, held, ended, rid):"]
    if t:
        lines.append(f"    {', '.join(t)}, = t")
    lines.append(f"    {', '.join(c)}, = c")
    lines.append(f"    {', '.join(targets)}, ended[rid] = {', '.join(values)}, True")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # our own source, made from two counts
    writer: _SettleWriter = namespace["write"]
    _WRITERS[(tallies, holds)] = writer
    return writer


def _balance(cell: _Cell | None) -> Balance:
    return Balance(cell[0], cell[1]) if cell is not None else Balance()
