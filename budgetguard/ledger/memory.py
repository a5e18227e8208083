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
# two distinct keys, hard dollar limits, the same amount > 0): (holds, cell,
# limit, other cell or None, its limit, amount, cells, part); no limit is inf.
_Hot = tuple[Any, ...]
# What every open reservation of those holds keeps: (cell, other cell or
# None, amount, memo); the memo is [tallies, their _Owed] of the tallies last
# settled with the holds, or [_NEVER, None].
_Part = tuple[Any, ...]
# An open reservation: (reservation, its cells, its _Part or _COLD_PART).
_Entry = tuple[Reservation, list[_Cell], _Part]
# A deferred sum: [amount owed to every cell, the tally cells] (see MemoryLedger._owe).
_Owed = list[Any]

_NEVER = object()  # a memo that matches no tallies
_COLD: _Hot = (_NEVER,)  # what _hot gives for holds not seen before (even for None)
_COLD_PART: _Part = (None, None, 0, (_NEVER, None))  # of a reservation not held hot
_CLOSED: _Entry = (None, [], _COLD_PART)  # type: ignore[assignment]  # what _open gives for no entry


def _bump(plan: _Plan, cell: _Cell, index: int, delta: int) -> None:
    """Plan ``cell[index] += delta`` (several bumps of one slot add up)."""
    slot = (id(cell), index)
    write = plan.get(slot)
    if write is None:
        plan[slot] = [cell, index, cell[index] + delta]
    else:
        write[2] += delta


def _apply(
    writes: Iterable[Sequence[Any]], closes: Iterable[tuple[dict[str, Any], str, None]] = ()
) -> None:
    """Do every planned ``container[index] = value``, then ``opened.pop(rid, None)``, in one step.

    ``deque(starmap(setitem, ...))`` runs entirely in C: no Python line runs
    between the first write and the last, so neither a signal handler
    (``KeyboardInterrupt``) nor a trace function can stop it half way.
    ``closes`` takes an ended reservation out of ``_open`` in the same step.
    """
    deque(chain(starmap(setitem, writes), starmap(dict.pop, closes)), maxlen=0)


class MemoryLedger(Ledger):
    """Keep spend in a dict behind one lock.

    Thread-safe and asyncio-safe (no operation awaits while holding the lock).
    Spend is per process and lost on exit: several workers each get their own
    budget. Use ``sqlite://`` or ``redis://`` to share one.

    Exception safety: every operation checks and plans first, then applies
    all its writes in one step (``_apply``, or one line of stores on the hot
    path), which also takes an ended reservation out of ``_open``. A
    reservation id found in ``_ended`` is ended even if ``_open`` still
    listed it; readers skip such entries.

    Deferred tallies: a settle on the hot path adds its amount to one sum
    per tuple of tallies instead of to each tally's cell (see ``_owe``);
    ``_fold`` adds the sums to the cells, in one step, before anything reads
    a cell's spend (``balances``, ``scan``, ``clear``, a reserve whose holds
    read an owed key). Every other write only adds to a cell, which the sums
    do not change.

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
        # id(holds) -> _Hot: the hot path's cells looked up once (see
        # _reserve), and the keys they hold. ``clear`` empties it when it
        # drops a cell; bounded.
        self._hot: dict[int, _Hot] = {}
        self._hot_keys: set[str] = set()
        # id(tallies) -> (tallies, _Owed), the keys owed, and the sums not
        # yet folded into their cells (see _owe, _fold).
        self._owing: dict[int, tuple[tuple[str, ...], _Owed]] = {}
        self._owed_keys: set[str] = set()
        self._owed: list[_Owed] = []
        self._open: dict[str, _Entry] = {}
        # id -> settled?, in two generations: _ended, and _ended_old before it.
        self._ended: dict[_EndedId, bool] = {}
        self._ended_old: dict[_EndedId, bool] = {}
        self._rotate_at = self.clock() + self.idempotency_ttl
        # The next sweep: no later than the earliest expiry of an open
        # reservation, nor than the next rotation (which _sweep does too).
        self._next_sweep = self._rotate_at
        # Budget definitions; None for a deleted one whose name is still kept.
        self._budgets: dict[str, str | None] = {}  # as JSON: every read gets its own copy
        self._meta: list[Any] = [None, 0, 0]  # mark, version, floor
        self._versions: dict[str, int] = {}  # name -> version of its last change
        self._log: list[tuple[int, str]] = []  # (version, name), in version order
        self._deleted: dict[str, float] = {}  # name -> when deleted, oldest first

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them."""
        # One line on purpose (see _locked): the lock is released whatever happens.
        with self._lock: return self._reserve(reservation)  # noqa: E701  # fmt: skip

    def _reserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` (the lock held): holds seen before in this one frame.

        The writes are one line of stores, with no call between them, so no
        interrupt lands half way (see ``_apply``). Other holds, a bad
        reservation and a hold with no room take ``_reserve_any``, which
        checks and words the refusal.
        """
        rid, holds, expires_at = reservation
        hot = self._hot.get(id(holds), _COLD)
        if (
            hot[0] is not holds  # not these very holds, checked before
            or type(rid) is not str
            or not rid
            or (type(expires_at) is not float and type(expires_at) is not int)
            or expires_at - expires_at  # nan for inf and nan, which is true
        ):
            return self._reserve_any(reservation)
        opened = self._open
        if rid in opened or rid in self._ended or rid in self._ended_old:
            raise ValueError(f"reservation id {rid!r} was used before")
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        _, cell, limit, other, other_limit, amount, cells, part = hot
        held = cell[1] + amount
        if other is None:  # one hold
            if cell[0] + held > limit:
                return self._reserve_any(reservation)
            if expires_at < self._next_sweep:
                self._next_sweep = expires_at
            cell[1], opened[rid] = held, (reservation, cells, part)  # one step
            return None
        other_held = other[1] + amount
        if cell[0] + held > limit or other[0] + other_held > other_limit:
            return self._reserve_any(reservation)
        if expires_at < self._next_sweep:
            self._next_sweep = expires_at
        cell[1], other[1], opened[rid] = held, other_held, (reservation, cells, part)  # one step
        return None

    def _reserve_any(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` for any reservation (the lock held), checking it first."""
        rid, holds, expires_at = reservation
        if (
            type(rid) is not str
            or not rid
            or type(expires_at) not in _NUMBERS
            or not -_INF < expires_at < _INF
        ):
            check_reservation(reservation)
        try:
            return self._reserve_holds(reservation, rid, holds, expires_at)
        except (TypeError, ValueError):
            check_reservation(reservation)  # a hold of the wrong shape: say which
            raise

    def _reserve_holds(
        self, reservation: Reservation, rid: str, holds: tuple[Hold, ...], expires_at: float
    ) -> Refusal | None:
        """Do ``reserve`` for holds of any kind (the lock held)."""
        if rid in self._open or rid in self._ended or rid in self._ended_old:
            raise ValueError(f"reservation id {rid!r} was used before")
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        if self._owed and self._reads_owed(holds):
            self._fold()  # the limits below read what the cells have spent
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
            # Planned inline (no call per hold); a key held twice adds up in one write.
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
        writes.append([self._open, rid, (reservation, found, _COLD_PART)])
        _apply(writes)
        if not overs and 0 < len(holds) < 3:
            self._remember_hot(holds, found)
        return None

    def _reads_owed(self, holds: tuple[Hold, ...]) -> bool:
        """Say whether ``holds`` read the spend of a cell that is owed deferred charges."""
        owed = self._owed_keys
        return any(key in owed or prior in owed for key, _, _, _, _, prior, _ in holds)

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
        keys = [hold.key for hold in holds]
        if not self._owed_keys.isdisjoint(keys):
            return  # _reserve reads these cells without folding: they must owe nothing
        if len(self._hot) >= 4096:
            self._hot, self._hot_keys = {}, set()
        limits = [_INF if hold.limit is None else hold.limit for hold in holds]  # None: no limit
        other, other_limit = (cells[1], limits[1]) if len(cells) == 2 else (None, _INF)
        part = (cells[0], other, amount, [_NEVER, None])
        self._hot_keys.update(keys)  # first: should the next line not run, this is harmless
        self._hot[id(holds)] = (holds, cells[0], limits[0], other, other_limit, amount, cells, part)

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
        """Do ``settle`` with one amount for every key (the lock held): a hot one in this frame.

        A reservation of holds seen before (``_reserve``), settled with the
        tallies last settled with those holds, is charged here: its held
        cells directly, its tallies into one deferred sum (see ``_owe``).
        The writes are one line of stores, no call between them; the
        reservation's id leaves ``_open`` on the same line. Anything else
        takes ``_settle_any``.
        """
        rid = reservation[0]
        opened = self._open
        opened_as, _, part = opened.get(rid, _CLOSED)
        cell, other, held, memo = part
        if opened_as is not reservation or memo[0] is not tallies:
            return self._settle_any(reservation, amount, tallies)
        owed = memo[1]
        if not owed[0] and amount:
            self._owed.append(owed)  # first: should the step not happen, a 0 is folded
        ended = self._ended
        values: tuple[int, ...]
        if other is None:
            values = (cell[0] + amount, cell[1] - held, owed[0] + amount)
            cell[0], cell[1], owed[0] = values; ended[rid] = True; del opened[rid]  # noqa: E702  # fmt: skip
            return True
        values = (
            cell[0] + amount,
            cell[1] - held,
            other[0] + amount,
            other[1] - held,
            owed[0] + amount,
        )
        # One line on purpose: a line event (an interrupt) falls before it or after it.
        cell[0], cell[1], other[0], other[1], owed[0] = values; ended[rid] = True; del opened[rid]  # noqa: E702  # fmt: skip
        return True

    def _settle_any(self, reservation: Reservation, amount: int, tallies: Sequence[str]) -> bool:
        """Do ``settle`` with one amount for any reservation (the lock held)."""
        rid = reservation.id
        entry = self._open.get(rid)
        if entry is not None and entry[0] is reservation and entry[2] is not _COLD_PART:
            # Hot holds with tallies not settled with them last: remember
            # the tallies' deferred sum with the holds, and settle hot.
            owed = self._owe(tallies) if type(tallies) is tuple else None
            if owed is not None:
                memo = entry[2][3]
                memo[1], memo[0] = owed, tallies  # one step
                return self._settle(reservation, amount, tallies)
        ended = self._ended
        state = ended.get(rid)
        if state is None:
            state = self._ended_old.get(rid)
        if state:
            return False
        if state is not None:
            entry = None
        closes = ((self._open, rid, None),)
        if entry is not None and type(tallies) is tuple:
            # Distinct held keys and tallies, the tallies' cells known from
            # an earlier settle (a plan settles the same tallies every
            # call). One list built in C, no search.
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
                    _apply(planned, closes)
                    return True
        # [cell, 0, new spent] and [cell, 1, new reserved], one per distinct
        # cell and index, planned inline (no call per key).
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
        _apply(writes, closes)
        return True

    def _owe(self, tallies: tuple[str, ...]) -> _Owed | None:
        """Return the deferred sum of ``tallies`` (made once); None if they cannot have one.

        A hot settle adds its amount to one sum instead of to every tally
        cell; ``_fold`` adds the sums to the cells before anything reads
        their spend. ``_reserve`` reads hot holds' cells without folding, so
        no key is both held hot (``_hot_keys``) and owed (``_owed_keys``).
        """
        found = self._owing.get(id(tallies))
        if found is not None and found[0] is tallies:
            return found[1]
        if any(type(key) is not str for key in tallies) or not self._hot_keys.isdisjoint(tallies):
            return None
        if len(self._owing) >= 4096:
            self._forget_owing()
        known = self._tally_entry(tallies)
        if known is None:
            return None
        owed: _Owed = [0, known[0]]
        self._owed_keys.update(tallies)  # first: should the next line not run, this is harmless
        self._owing[id(tallies)] = (tallies, owed)
        return owed

    def _fold(self) -> None:
        """Add every deferred sum to its tally cells and zero the sums, in one step (lock held)."""
        owed = self._owed
        if not owed:
            return
        plan: _Plan = {}
        for sum_of in {id(sum_of): sum_of for sum_of in owed}.values():
            for cell in sum_of[1]:
                _bump(plan, cell, 0, sum_of[0])
        _apply(chain(plan.values(), [(sum_of, 0, 0) for sum_of in owed]))
        owed.clear()  # should this not run, the next fold adds zeros

    def _forget_owing(self) -> None:
        """Fold, then forget every deferred sum and the memos pointing at them (lock held)."""
        self._fold()
        # A memo is reached through a remembered holds tuple or an open reservation.
        parts = [hot[7] for hot in self._hot.values()]
        parts += [entry[2] for entry in self._open.values() if entry[2] is not _COLD_PART]
        for part in parts:
            part[3][0] = _NEVER
        self._owing, self._owed_keys = {}, set()

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
        _apply(chain(plan.values(), ((ended, rid, True),)), ((self._open, rid, None),))
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
            self._fold()
            cells = self._cells
            return {key: _balance(cells.get(key)) for key in keys}

        return self._locked(locked)

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""

        def locked() -> dict[str, Balance]:
            self._expire(self.clock())
            self._fold()
            return {
                key: Balance(cell[0], cell[1])
                for key, cell in self._cells.items()
                if (cell[0] or cell[1]) and key.startswith(prefix)
            }

        return self._locked(locked)

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""

        def locked() -> None:
            self._fold()  # what is forgotten includes what is owed
            for key in keys:
                cell = self._cells.get(key)
                if cell is None:
                    continue
                if cell[1]:
                    cell[0] = 0  # an open reservation still points at this cell
                else:
                    # The caches of cells may point at this one.
                    self._forget_owing()
                    self._tally_cells, self._hot, self._hot_keys = {}, {}, set()
                    del self._cells[key]

        return self._locked(locked)

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""

        def locked() -> list[Reservation]:
            self._expire(self.clock())
            ended, old = self._ended, self._ended_old
            opened = self._open.items()
            return [entry[0] for rid, entry in opened if rid not in ended and rid not in old]

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

    def _end(self, rid: str, entry: _Entry | None) -> None:
        """Drop the holds of ``entry`` (if open) and record ``rid`` as released, in one step."""
        plan: _Plan = {}
        if entry is not None:
            for cell, hold in zip(entry[1], entry[0].holds, strict=True):
                _bump(plan, cell, 1, -hold.amount)
        _apply(chain(plan.values(), ((self._ended, rid, False),)), ((self._open, rid, None),))

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
        if now >= self._rotate_at:
            self._rotate(now)
        earliest = self._rotate_at
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


def _balance(cell: _Cell | None) -> Balance:
    return Balance(cell[0], cell[1]) if cell is not None else Balance()
