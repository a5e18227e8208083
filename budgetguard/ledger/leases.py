"""Budget leases: spend slices of a shared budget at memory speed.

``LeasedLedger(inner)`` wraps a shared ledger (Redis, SQLite, PostgreSQL) and
fulfils the same contract. For a budget key it takes a *slice* in one round
trip: an inner reservation (a *lease*) holding ``S`` units on that key (one
lease holds the slices of every key a call lacks room on, all or nothing).
Calls are then admitted locally, with no round trip, while the slices of
this process have room: ``held + spent + amount <= S`` summed over its
slices of each key with a limit, where ``held`` are the holds of its open
calls and ``spent`` what its settled calls charged. A lease is returned by
settling its inner reservation with exactly what was spent from it, which
charges the real spend and drops the ``S`` hold in one idempotent write.

Slices shrink as a budget nears its limit: a lease first asks for ``limit *
slice_fraction``; refused, for a quarter of what the refusal says is left;
refused again, for exactly what the call lacks; then the call goes to the
inner ledger as it is (today's exact behaviour). Every slice is at least
what the call lacks. A call that cannot fit even with this process's own
unused slices is refused at once, with the numbers this process sees.

**The bound.** The shared ledger holds every slice for as long as it is
leased, so admissions across all processes never exceed a limit except by
calls whose cost overruns their own estimate: the same bound as without
leases. A budget can refuse early by at most the unused slices of *other*
processes (never by this process's own), until they return them: within
``2 * flush`` seconds while they run, idle or busy, and ``ttl`` seconds after
they crashed; a process that remembers a refusal (below) sees the room at
most ``flush`` seconds later still.

**Remembered refusals.** A lease refused because the budget is spent (what
a call lacks beyond this process's own slices exceeds what the shared
ledger has left, other holders' slices counted as used) is remembered for
that key and limit until the next tick, at most ``flush`` seconds: a call
on the key that still lacks more than was left is refused here, with the
numbers of that refusal, and no round trip. Calls that fit this process's
own slices are admitted as before, one lacking no more than was left asks
the shared ledger, and a key is forgotten at once when its limit differs
(a changed budget; a new window is a new key), when this process returns a
slice of it or ends a passed-through reservation on it, and on
``flush_now()``. So a spent budget costs the shared ledger at most one
refused lease (asked for at up to three sizes) per key per ``flush``
seconds in each process, and one more after each slice it returns; room
that others return is admitted here within ``flush`` seconds.

**Returning.** Every ``flush`` seconds (checked on each operation with a
monotonic clock, and by a daemon thread while the process is idle) every
lease stops admitting; one without calls in flight is returned at once, one
with calls in flight is *rolled over* at the next tick: the held amounts
move to a new inner reservation (without a limit: they were admitted
already) and the old one is returned with its spend. A slice that runs out
is returned as soon as its calls end; ``close()`` and exit return the rest.
Charges of keys without a limit and of tallies are written with ``add``
under an ``op_id`` (keys with equal amounts in one write). A write that
fails is kept, with the same id, for the next flush: never lost, never
doubled. As long as the process reaches the shared ledger at least once per
``ttl``, a call keeps its hold there for as long as its reservation lasts.

**A crashed holder.** Its leases expire ``ttl`` seconds after they were
taken or last rolled over, and the shared ledger releases them
*uncharged*: the spend the process made since its last flush (what its calls
spent in its last ``2 * flush`` seconds at most, and at most its slices plus
those calls' overruns) is not charged. Charging it instead would need the
shared ledger to charge an expired reservation on its own, which the
contract has no way to say.

**What this process reads.** ``balances`` and ``scan`` add this process's
unflushed spend and count its local holds in place of its slices, so
``spend()`` and ``remaining()`` read here are exact (a read that races this
process's own flush in another thread may be off by that flush until it
ends). Other processes see the spend within ``2 * flush`` seconds.

Passed through unchanged to the inner ledger: reservations with a soft hold
(``over``), a sliding window (``prior``), a key held twice, or more than 16
keys with a limit; ``add``; budget definitions, ``clear`` and ``ping``.

Processes and threads: a forked child drops its parent's leases, holds and
unflushed spend (they stay the parent's to return). One lock guards the
local state; it is never held across an inner call.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from ..errors import ConfigurationError, StorageError
from .base import (
    IDEMPOTENCY_TTL,
    MAX_UNIT,
    Balance,
    BudgetChanges,
    Hold,
    Ledger,
    Refusal,
    Reservation,
    check_op_id,
    check_reservation,
    check_settle_amount,
    check_units,
)

__all__ = ["LeasedLedger"]

logger = logging.getLogger("budgetguard")
T = TypeVar("T")

#: A lease holds each of its keys under its own unit, so one settle charges each its spend.
MAX_LEASE_KEYS = MAX_UNIT + 1

# How many leases one reserve asks the inner ledger for before it falls back
# to passing the call through.
_ATTEMPTS = 6


class _Lease:
    """One inner reservation holding a slice of each of its keys (hold ``i`` is unit ``i``)."""

    __slots__ = (
        "expires_at",
        "held",
        "inner",
        "keys",
        "limits",
        "queued",
        "renewal",
        "retired",
        "rolling",
        "sizes",
        "spent",
        "usable_until",
    )

    def __init__(self, inner: Reservation, limits: dict[str, int], usable_until: float) -> None:
        self.inner = inner
        self.keys = tuple(hold.key for hold in inner.holds)
        self.sizes = {hold.key: hold.amount for hold in inner.holds}
        self.limits = limits
        self.held = dict.fromkeys(self.keys, 0)
        self.spent = dict.fromkeys(self.keys, 0)
        self.expires_at = inner.expires_at
        self.usable_until = usable_until
        #: No new holds: the lease is returned once its holds end.
        self.retired = False
        #: Retired and drained: on the list of leases to return.
        self.queued = False
        #: Being moved onto a new inner reservation (its calls run long).
        self.rolling = False
        self.renewal: Reservation | None = None

    def room(self, key: str) -> int:
        return self.sizes[key] - self.held[key] - self.spent[key]

    def drained(self) -> bool:
        return not any(self.held.values())


class _Local:
    """A reservation admitted here: per hold, its key, amount and the slices it took."""

    __slots__ = ("parts", "reservation")

    def __init__(
        self,
        reservation: Reservation,
        parts: list[tuple[str, int, tuple[tuple[_Lease, int], ...]]],
    ) -> None:
        self.reservation = reservation
        self.parts = parts


class _Need:
    """What a reserve needs from the inner ledger: slices for ``holds`` (index, hold, missing)."""

    __slots__ = ("holds",)

    def __init__(self, holds: list[tuple[int, Hold, int]]) -> None:
        self.holds = holds


_PASS = object()  # the reservation goes to the inner ledger as it is
_AGAIN = object()  # look at this process's slices again

# Every LeasedLedger alive, to drop leases in a forked child and flush at exit.
_LIVE: weakref.WeakSet[LeasedLedger] = weakref.WeakSet()


def _after_fork() -> None:
    for ledger in list(_LIVE):
        ledger._forget_after_fork()


def _at_exit() -> None:
    for ledger in list(_LIVE):
        try:
            ledger.flush_now()
        except Exception as error:  # at exit there is nobody left to raise to
            logger.warning("could not flush %r at exit: %s", ledger, error)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
atexit.register(_at_exit)


def _number(value: object, name: str, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
        bound = f"above {low:g}" + (f" and below {high:g}" if high < math.inf else "")
        raise ConfigurationError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


class LeasedLedger(Ledger):
    """Admit calls against slices of a shared ledger's budgets, locally.

    ``slice_fraction``: the slice a lease asks for first, as a fraction of the
    budget's limit (at least the amount asked). ``ttl``: seconds a lease is
    held by the inner ledger if it is never returned (a crashed process).
    ``flush``: seconds after which leases are returned and tally charges
    written, at most ``ttl / 4``. ``background``: run a daemon thread that
    flushes an idle process (off: only operations and ``close`` flush).
    """

    def __init__(
        self,
        inner: Ledger,
        *,
        slice_fraction: float = 0.01,
        ttl: float = 120.0,
        flush: float = 1.0,
        background: bool = True,
    ) -> None:
        if not isinstance(inner, Ledger) or isinstance(inner, LeasedLedger):
            raise ConfigurationError(
                f"LeasedLedger wraps a ledger (not a leased one), got {inner!r}"
            )
        self.slice_fraction = _number(slice_fraction, "slice_fraction", low=0.0, high=1.0 + 1e-12)
        self.ttl = _number(ttl, "ttl", low=0.0)
        self.flush = _number(flush, "flush", low=0.0)
        if self.flush > self.ttl / 4:
            raise ConfigurationError(
                f"flush ({flush!r}s) must be at most a quarter of ttl ({ttl!r}s): a lease "
                "must be returned well before the shared ledger lets it expire"
            )
        super().__init__(inner.url, clock=inner.clock)
        self.inner = inner
        self.shared = inner.shared  # type: ignore[misc]
        self.max_units = inner.max_units  # type: ignore[misc]
        self.idempotency_ttl = float(getattr(inner, "idempotency_ttl", IDEMPOTENCY_TTL))
        #: Inner operations this ledger made (reserve, settle, add, ...), for benchmarks.
        self.inner_operations = 0
        self._background = background
        self._lock = threading.Lock()
        # One lease taken at a time per process (threads) and per event loop
        # (tasks): a caller that finds one being taken waits for it, then
        # tries this process's slices again, so a process never refuses a call
        # its own slices (taken a moment before, by another caller) have room for.
        self._acquiring = threading.Lock()
        self._aacquiring: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._reset_state()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"LeasedLedger({self.inner!r})"

    def _reset_state(self) -> None:
        self._usable: dict[str, list[_Lease]] = {}  # key -> leases admitting new holds on it
        self._leases: list[_Lease] = []  # every lease not yet returned
        self._returning: list[_Lease] = []  # retired and drained: to return
        self._open: dict[str, _Local] = {}
        self._passed: dict[str, float] = {}  # ids reserved on the inner ledger -> expiry
        self._ended: dict[str, bool] = {}  # id -> settled (True) or released/expired
        self._ended_old: dict[str, bool] = {}
        self._free_held: dict[str, int] = {}  # local holds on keys without a limit
        self._pending: dict[str, int] = {}  # unflushed charges of keys without a lease
        # Unflushed tally charges by the tuple of keys a settle named: one
        # write per call, spread over the keys when taken (or read).
        self._tallied: dict[tuple[str, ...], int] = {}
        self._outgoing: list[tuple[str, tuple[str, ...], int]] = []  # (op_id, keys, amount)
        self._rolls: list[_Lease] = []  # busy leases to move onto a new inner reservation
        self._old: list[tuple[Reservation, list[int]]] = []  # rolled-over reservations to return
        # key -> (limit, what the inner ledger had left, the refusal seen): a
        # lease refused because the budget is spent, remembered until the next tick.
        self._refused: dict[str, tuple[int, int, Refusal]] = {}
        self._next_sweep = math.inf
        self._next_flush = time.monotonic() + self.flush
        self._rotate_at = self.clock() + self.idempotency_ttl
        self._next_due = self._rotate_at  # the earlier of the two: housekeeping is due

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._acquiring = threading.Lock()
        self._aacquiring = weakref.WeakKeyDictionary()
        self._reset_state()
        self._thread = None
        self._wake = threading.Event()

    def _start_thread(self) -> None:
        # Started by the first lease, so a ledger never used costs no thread.
        if self._background and self._thread is None and not self._closed:
            ref = weakref.ref(self)
            wake = self._wake
            period = self.flush

            def run() -> None:
                while not wake.wait(period):
                    ledger = ref()
                    if ledger is None or ledger._closed:
                        return
                    try:
                        ledger._flush_if_due()
                    except Exception as error:  # kept for the next try
                        logger.warning("budget lease flush failed, will retry: %s", error)
                    del ledger

            self._thread = threading.Thread(target=run, name="budgetguard-leases", daemon=True)
            self._thread.start()

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them (locally when a slice has room)."""
        _check_reservation(reservation)
        # Admitted in a slice with nothing to flush, the common case: one lock, no closure.
        with self._lock: outcome = self._admit(reservation)  # noqa: E701  # fmt: skip
        if outcome is None and not (self._returning or self._outgoing or self._old or self._rolls):
            return None  # nothing to flush (the test of _busy, without a call)
        caps: dict[str, int] = {}
        attempts = 0
        while attempts < _ATTEMPTS:
            if outcome is _AGAIN:
                outcome = self._locked(lambda: self._admit(reservation))
            try:
                self._flush_work(quiet=True)
            except BaseException:  # interrupted or cancelled: the caller never learns of it
                if outcome is None:
                    self._locked(partial(self._release_local, reservation))
                raise
            if outcome is None:
                return None
            if outcome is _PASS:
                return self._pass(reservation)
            if isinstance(outcome, Refusal):
                return outcome  # refused since the last tick: answered from memory
            assert isinstance(outcome, _Need)
            need, outcome = outcome, _AGAIN
            if not self._acquiring.acquire(blocking=False):
                # Another thread is taking a lease: wait for it, then look again.
                self._acquiring.acquire(timeout=self.ttl)
                self._acquiring.release()
                continue
            attempts += 1
            try:
                # Taken meanwhile by the thread before: this process may have room now.
                again = self._locked(lambda: self._admit(reservation))
                if again is None:
                    return None
                if again is _PASS:
                    return self._pass(reservation)
                if isinstance(again, Refusal):
                    return again
                assert isinstance(again, _Need)
                need = again
                lease = self._lease_for(need, caps)
                self.inner_operations += 1
                try:
                    refusal = self.inner.reserve(lease.inner)
                except StorageError:
                    # The lease may be held (a lost reply): give it back if the
                    # storage answers, else it expires after ttl.
                    with contextlib.suppress(StorageError):
                        self.inner_operations += 1
                        self.inner.release(lease.inner)
                    raise
                if refusal is None:
                    self._locked(partial(self._install, lease))
                    continue
            finally:
                self._acquiring.release()
            answer = self._shrink(need, refusal, caps)
            if answer is _PASS:
                break
            if isinstance(answer, Refusal):
                return answer
        return self._pass(reservation)

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve``; only the inner operations are awaited."""
        _check_reservation(reservation)
        with self._lock: outcome = self._admit(reservation)  # noqa: E701  # fmt: skip
        if outcome is None and not (self._returning or self._outgoing or self._old or self._rolls):
            return None  # nothing to flush (the test of _busy, without a call)
        caps: dict[str, int] = {}
        attempts = 0
        while attempts < _ATTEMPTS:
            if outcome is _AGAIN:
                outcome = self._locked(lambda: self._admit(reservation))
            try:
                await self._aflush_work(quiet=True)
            except BaseException:  # interrupted or cancelled: the caller never learns of it
                if outcome is None:
                    self._locked(partial(self._release_local, reservation))
                raise
            if outcome is None:
                return None
            if outcome is _PASS:
                return await self._apass(reservation)
            if isinstance(outcome, Refusal):
                return outcome  # refused since the last tick: answered from memory
            assert isinstance(outcome, _Need)
            need, outcome = outcome, _AGAIN
            acquiring = self._task_lock()
            if acquiring.locked():
                # Another task is taking a lease: wait for it, then look again.
                async with acquiring:
                    pass
                continue
            attempts += 1
            async with acquiring:
                # Taken meanwhile by the task before: this process may have room now.
                again = self._locked(lambda: self._admit(reservation))
                if again is None:
                    return None
                if again is _PASS:
                    return await self._apass(reservation)
                if isinstance(again, Refusal):
                    return again
                assert isinstance(again, _Need)
                need = again
                lease = self._lease_for(need, caps)
                self.inner_operations += 1
                try:
                    refusal = await self.inner.areserve(lease.inner)
                except StorageError:
                    # The lease may be held (a lost reply): give it back if the
                    # storage answers, else it expires after ttl.
                    with contextlib.suppress(StorageError):
                        self.inner_operations += 1
                        await self.inner.arelease(lease.inner)
                    raise
                if refusal is None:
                    self._locked(partial(self._install, lease))
                    continue
            answer = self._shrink(need, refusal, caps)
            if answer is _PASS:
                break
            if isinstance(answer, Refusal):
                return answer
        return await self._apass(reservation)

    def _task_lock(self) -> asyncio.Lock:
        """Return the lock of lease-taking for the running event loop's tasks."""
        loop = asyncio.get_running_loop()
        lock = self._aacquiring.get(loop)
        if lock is None:
            lock = self._aacquiring[loop] = asyncio.Lock()
        return lock

    def _pass(self, reservation: Reservation) -> Refusal | None:
        self.inner_operations += 1
        return self._passed_through(reservation, self.inner.reserve(reservation))

    async def _apass(self, reservation: Reservation) -> Refusal | None:
        self.inner_operations += 1
        return self._passed_through(reservation, await self.inner.areserve(reservation))

    def _passed_through(self, reservation: Reservation, refusal: Refusal | None) -> Refusal | None:
        """Remember a reservation held by the inner ledger; word a refusal as seen here."""
        if refusal is None:
            self._locked(partial(self._passed.__setitem__, reservation.id, reservation.expires_at))
            return None
        hold = reservation.holds[refusal.index]
        return self._locked(lambda: self._refusal(refusal.index, hold, refusal))

    def settle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Charge a reservation once: locally if it was admitted here, else on the inner ledger."""
        if type(amount) is int and amount >= 0:  # one amount for every key, the common case
            charges, tally = [amount] * len(reservation.holds), amount
        else:
            charges, tally = check_settle_amount(amount, reservation.holds)
        _check_keys(tallies)
        with self._lock: where = self._settle_local(reservation, charges, tally, tallies)  # noqa: E701  # fmt: skip
        if where is None:
            if self._returning or self._outgoing or self._old or self._rolls:
                self._flush_work(quiet=True)
            return True
        if where is False:
            return False
        self.inner_operations += 1
        done = self.inner.settle(reservation, amount, tallies)
        self._locked(lambda: self._end(reservation, True))
        return done

    async def asettle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Do ``settle``; only the inner operations are awaited."""
        charges, tally = check_settle_amount(amount, reservation.holds)
        _check_keys(tallies)
        where = self._locked(lambda: self._settle_local(reservation, charges, tally, tallies))
        if where is None:
            await self._aflush_work(quiet=True)
            return True
        if where is False:
            return False
        self.inner_operations += 1
        done = await self.inner.asettle(reservation, amount, tallies)
        self._locked(lambda: self._end(reservation, True))
        return done

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of a reservation without charging; ``False`` if already ended."""
        where = self._locked(lambda: self._release_local(reservation))
        if where is not None:
            self._flush_work(quiet=True)
            return where
        self.inner_operations += 1
        done = self.inner.release(reservation)
        self._locked(lambda: self._end(reservation, False))
        return done

    async def arelease(self, reservation: Reservation) -> bool:
        """Do ``release``; only the inner operation is awaited."""
        where = self._locked(lambda: self._release_local(reservation))
        if where is not None:
            await self._aflush_work(quiet=True)
            return where
        self.inner_operations += 1
        done = await self.inner.arelease(reservation)
        self._locked(lambda: self._end(reservation, False))
        return done

    def add(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Charge ``amount`` to every key on the inner ledger (at once, not leased)."""
        check_units(amount)
        check_op_id(op_id)
        self.inner_operations += 1
        return self.inner.add(keys, amount, op_id=op_id)

    async def aadd(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Do ``add`` on the inner ledger without blocking the event loop."""
        check_units(amount)
        check_op_id(op_id)
        self.inner_operations += 1
        return await self.inner.aadd(keys, amount, op_id=op_id)

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balances of the inner ledger as this process's own calls leave them."""
        self._flush_work(quiet=True)
        found = self.inner.balances(keys)
        return self._locked(partial(self._adjust_all, keys, found))

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` without blocking the event loop."""
        await self._aflush_work(quiet=True)
        found = await self.inner.abalances(keys)
        return self._locked(partial(self._adjust_all, keys, found))

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything, as seen here."""
        self._flush_work(quiet=True)
        found = self.inner.scan(prefix)

        def locked() -> dict[str, Balance]:
            self._housekeeping(self.clock())
            keys = set(found)
            keys.update(key for key in self._local_keys() if key.startswith(prefix))
            result = {}
            for key in sorted(keys):
                balance = self._adjust(key, found.get(key, Balance()))
                if balance.spent or balance.reserved:
                    result[key] = balance
            return result

        return self._locked(locked)

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys on the inner ledger (flushed first)."""
        self.flush_now()
        self.inner.clear(keys)

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations admitted here or passed through that are still open."""
        inner = self.inner.open_reservations()

        def locked() -> list[Reservation]:
            self._sweep(self.clock())
            leases = {lease.inner.id for lease in self._leases}
            leases.update(old.id for old, _ in self._old)
            mine = [entry.reservation for entry in self._open.values()]
            return mine + [r for r in inner if r.id not in leases]

        return self._locked(locked)

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition on the inner ledger."""
        self.inner.put_budget(name, definition)

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return a budget definition from the inner ledger."""
        return self.inner.get_budget(name)

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition on the inner ledger."""
        return self.inner.delete_budget(name)

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every budget definition of the inner ledger."""
        return self.inner.list_budgets()

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the inner ledger's budget changes."""
        return self.inner.budget_changes(since)

    async def abudget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Do ``budget_changes`` without blocking the event loop."""
        return await self.inner.abudget_changes(since)

    def ping(self) -> None:
        """Check that the inner ledger answers."""
        self.inner.ping()

    async def aping(self) -> None:
        """Do ``ping`` without blocking the event loop."""
        await self.inner.aping()

    def check_durability(self) -> list[str]:
        """Return the inner ledger's durability problems (Redis), or none."""
        check = getattr(self.inner, "check_durability", None)
        return list(check()) if callable(check) else []

    def flush_now(self) -> None:
        """Return every lease without holds and write every unflushed charge now.

        Leases with calls in flight are retired and returned when those end.
        Raise ``StorageError`` if the inner ledger fails; what was not
        written is kept for the next flush.
        """
        self._locked(self._retire_all)
        self._flush_work(force=True)

    async def aflush_now(self) -> None:
        """Do ``flush_now`` without blocking the event loop."""
        self._locked(self._retire_all)
        await self._aflush_work(force=True)

    def close(self) -> None:
        """Flush, stop the flushing thread, and close the inner ledger."""
        if self._closed:
            return
        try:
            self.flush_now()
        finally:
            self._closed = True
            self._wake.set()
            _LIVE.discard(self)
            self.inner.close()

    async def aclose(self) -> None:
        """Do ``close`` without blocking the event loop."""
        if self._closed:
            return
        try:
            await self.aflush_now()
        finally:
            self._closed = True
            self._wake.set()
            _LIVE.discard(self)
            await self.inner.aclose()

    # -- local steps (lock held) -------------------------------------------------

    def _locked(self, operation: Callable[[], T]) -> T:
        # One line, as in memory.py: no line between acquiring and the body.
        with self._lock: return operation()  # noqa: E701  # fmt: skip

    def _admit(self, reservation: Reservation) -> object:
        """Admit ``reservation`` against the slices, or say what it needs (lock held).

        Return ``None`` (admitted), ``_PASS`` (not leasable), a ``Refusal``
        (remembered) or a ``_Need``.
        """
        rid, holds, expires_at = reservation
        if rid in self._open or rid in self._ended or rid in self._ended_old or rid in self._passed:
            raise ValueError(f"reservation id {rid!r} was used before")
        now = self.clock()
        if now >= self._next_due or time.monotonic() >= self._next_flush:
            self._housekeeping(now)
        if len(holds) > 1:
            keys = {hold[0] for hold in holds}
            limited = sum(hold[1] is not None for hold in holds)
            if len(keys) < len(holds) or limited > MAX_LEASE_KEYS:
                return _PASS
        lacking: list[tuple[int, Hold, int]] | None = None
        parts: list[tuple[str, int, tuple[tuple[_Lease, int], ...]]] = []
        usable_leases = self._usable
        for index, hold in enumerate(holds):
            key, limit, amount, _, over, prior, _ = hold
            if over is not None or prior is not None:
                return _PASS
            if limit is None:
                parts.append((key, amount, ()))
                continue
            usable = usable_leases.get(key)
            if usable:
                # The first usable slice with room enough, most often the only one.
                lease = usable[0]
                if (
                    lease.limits[key] == limit
                    and now < lease.usable_until
                    and lease.sizes[key] - lease.held[key] - lease.spent[key] >= max(amount, 1)
                ):
                    parts.append((key, amount, ((lease, amount),)))
                    continue
            # A hold may take its units from several slices of its key: what
            # this process leased is one pool, so it never refuses while its
            # own slices have room.
            takes: list[tuple[_Lease, int]] = []
            missing = amount
            for lease in tuple(usable) if usable else ():
                if lease.limits[key] != limit or now >= lease.usable_until:
                    self._retire(lease)
                    continue
                room = lease.sizes[key] - lease.held[key] - lease.spent[key]
                if room <= 0:
                    self._retire(lease)  # the slice ran out: returned once its calls end
                    continue
                if missing or not takes:
                    take = min(room, missing)
                    takes.append((lease, take))
                    missing -= take
            if missing or not takes:  # a hold of 0 fits where some slice has room
                if lacking is None:
                    lacking = []
                lacking.append((index, hold, missing))
            else:
                parts.append((key, amount, tuple(takes)))
        if lacking is not None:
            return self._lacking(lacking)
        free_held = self._free_held
        for key, amount, takes_ in parts:
            if not takes_:
                free_held[key] = free_held.get(key, 0) + amount
            for lease, take in takes_:
                lease.held[key] += take
        self._open[rid] = _Local(reservation, parts)
        if self._thread is None:
            self._start_thread()
        if expires_at < self._next_sweep:
            self._next_sweep = expires_at
            if expires_at < self._next_due:
                self._next_due = expires_at
        return None

    def _lacking(self, lacking: list[tuple[int, Hold, int]]) -> object:
        """Return what a reserve that lacks room needs, or its remembered refusal (lock held)."""
        refused = self._refused
        if refused:
            for index, hold, missing in lacking:
                known = refused.get(hold.key)
                # Refused since the last tick with this limit, and what is
                # missing still exceeds what the inner ledger had left.
                if known is not None and known[0] == hold.limit:
                    _, remaining, seen = known
                    if missing > remaining or remaining <= 0:
                        return Refusal(
                            index,
                            hold.key,
                            seen.limit,
                            seen.spent,
                            seen.reserved,
                            hold.amount,
                            seen.prior,
                        )
        return _Need(lacking)

    def _lease_for(self, need: _Need, caps: Mapping[str, int]) -> _Lease:
        """Build the lease to ask for: a slice of every key in ``need``.

        A slice is ``limit * slice_fraction``, or the cap a refusal set, and
        at least what the hold is missing (at least 1).
        """
        now = self.clock()
        holds = []
        limits = {}
        for unit, (_, hold, missing) in enumerate(need.holds):
            limit = hold.limit
            assert limit is not None
            size = caps.get(hold.key)
            if size is None:
                size = min(limit, int(limit * self.slice_fraction))
            holds.append(Hold(hold.key, limit, max(missing, size, 1), unit))
            limits[hold.key] = limit
        inner = Reservation(f"lease-{uuid.uuid4().hex}", tuple(holds), now + self.ttl)
        return _Lease(inner, limits, now + self.ttl / 2)

    def _install(self, lease: _Lease) -> None:
        self._leases.append(lease)
        for key in lease.keys:
            self._usable.setdefault(key, []).append(lease)
        self._start_thread()

    def _shrink(self, need: _Need, refusal: Refusal, caps: dict[str, int]) -> object:
        """After a lease was refused: the caller's refusal, ``None`` to ask again, or ``_PASS``.

        Refused when the hold cannot fit even with this process's own unused
        slices: what it is missing now exceeds what the inner ledger had left.
        """
        index, hold, _ = need.holds[refusal.index]
        remaining = refusal.limit - refusal.spent - refusal.reserved - refusal.prior

        def locked() -> object:
            slices = self._usable.get(hold.key, ())
            if hold.amount == 0:
                if any(lease.room(hold.key) > 0 for lease in slices):
                    return None  # a slice of this process has room now
                if remaining <= 0:
                    return self._remember(index, hold, refusal, remaining)
            else:
                missing = hold.amount
                for lease in slices:
                    missing -= max(0, min(lease.room(hold.key), missing))
                if not missing:
                    return None
                if missing > remaining:
                    return self._remember(index, hold, refusal, remaining)
            cap = caps.get(hold.key)
            if cap == 0:  # refused at the exact amount too: pass the call through
                return _PASS
            caps[hold.key] = 0 if cap is not None else remaining // 4
            return None

        return self._locked(locked)

    def _remember(self, index: int, hold: Hold, refusal: Refusal, remaining: int) -> Refusal:
        """Return the caller's refusal; remember it for ``hold``'s key until the next tick."""
        seen = self._refusal(index, hold, refusal)
        assert hold.limit is not None
        self._refused[hold.key] = (hold.limit, remaining, seen)
        return seen

    def _refusal(self, index: int, hold: Hold, refusal: Refusal) -> Refusal:
        seen = self._adjust(hold.key, Balance(refusal.spent, refusal.reserved))
        return Refusal(
            index, hold.key, refusal.limit, seen.spent, seen.reserved, hold.amount, refusal.prior
        )

    def _settle_local(
        self, reservation: Reservation, charges: list[int], tally: int, tallies: Sequence[str]
    ) -> bool | None:
        """Settle a reservation admitted here: ``None`` done, ``False`` ended, ``True`` inner."""
        now = self.clock()
        if now >= self._next_due or time.monotonic() >= self._next_flush:
            self._housekeeping(now)
        rid = reservation.id
        entry = self._open.pop(rid, None)
        if entry is None:
            # Settled before: False. Passed through, released, expired or never
            # seen: True, the inner ledger answers.
            return not self._ended.get(rid, self._ended_old.get(rid))
        pending = self._pending
        for (key, amount, takes), charge in zip(entry.parts, charges, strict=True):
            if not takes:
                self._unhold(key, amount)
                if charge:
                    pending[key] = pending.get(key, 0) + charge
                continue
            lease = takes[0][0]
            lease.spent[key] += charge  # the whole charge on one slice
            if len(takes) == 1:
                held = lease.held[key] = lease.held[key] - takes[0][1]
                if lease.retired or lease.sizes[key] - held - lease.spent[key] <= 0:
                    self._retire(lease)  # the slice ran out
                    self._maybe_return(lease)
                continue
            for lease, take in takes:
                held = lease.held[key] = lease.held[key] - take
                if lease.sizes[key] - held - lease.spent[key] <= 0:
                    self._retire(lease)  # the slice ran out
                if lease.retired:
                    self._maybe_return(lease)
        if tally:
            if type(tallies) is not tuple:
                tallies = tuple(tallies)
            tallied = self._tallied
            tallied[tallies] = tallied.get(tallies, 0) + tally
        self._ended[rid] = True
        return None

    def _release_local(self, reservation: Reservation) -> bool | None:
        """Release a reservation admitted here: its answer, or ``None`` for the inner ledger."""
        self._housekeeping(self.clock())
        rid = reservation.id
        if rid in self._ended or rid in self._ended_old:
            return False
        entry = self._open.pop(rid, None)
        if entry is None:
            return None
        self._drop(entry)
        self._ended[rid] = False
        return True

    def _drop(self, entry: _Local) -> None:
        for key, amount, takes in entry.parts:
            if not takes:
                self._unhold(key, amount)
            for lease, take in takes:
                lease.held[key] -= take
                self._maybe_return(lease)

    def _unhold(self, key: str, amount: int) -> None:
        left = self._free_held[key] - amount
        if left:
            self._free_held[key] = left
        else:
            del self._free_held[key]

    def _maybe_return(self, lease: _Lease) -> None:
        if lease.retired and not lease.queued and not lease.rolling and lease.drained():
            lease.queued = True
            self._returning.append(lease)

    def _end(self, reservation: Reservation, settled: bool) -> None:
        rid = reservation.id
        self._forget_refusals(hold.key for hold in reservation.holds)  # room may be back
        self._passed.pop(rid, None)
        if settled or rid not in self._ended:
            self._ended[rid] = settled

    def _retire(self, lease: _Lease) -> None:
        if lease.retired:
            return
        lease.retired = True
        for key in lease.keys:
            usable = self._usable.get(key)
            if usable is not None and lease in usable:
                usable.remove(lease)
                if not usable:
                    del self._usable[key]
        self._maybe_return(lease)

    def _forget_refusals(self, keys: Iterable[str]) -> None:
        if self._refused:
            for key in keys:
                self._refused.pop(key, None)

    def _retire_all(self) -> None:
        self._refused.clear()  # remembered refusals last until the next tick or flush
        for lease in list(self._leases):
            self._retire(lease)
        self._take_pending()

    def _take_pending(self) -> None:
        """Move unflushed charges into writes with their ids (equal amounts share one add)."""
        pending = self._pending
        for keys, tally in self._tallied.items():
            for key in keys:
                pending[key] = pending.get(key, 0) + tally
        self._tallied = {}
        if not pending:
            return
        groups: dict[int, list[str]] = {}
        for key, amount in self._pending.items():
            groups.setdefault(amount, []).append(key)
        self._outgoing.extend(
            (f"lease-add-{uuid.uuid4().hex}", tuple(keys), amount)
            for amount, keys in groups.items()
        )
        self._pending = {}

    def _housekeeping(self, now: float) -> None:
        if now >= self._next_sweep:
            self._sweep(now)
        if now >= self._rotate_at:
            self._ended_old, self._ended = self._ended, {}
            self._rotate_at = now + self.idempotency_ttl
            # Passed-through reservations nobody ended: the inner ledger expired them.
            self._passed = {rid: at for rid, at in self._passed.items() if at > now}
            self._next_due = min(self._next_sweep, self._rotate_at)
        if time.monotonic() >= self._next_flush:
            self._tick()

    def _sweep(self, now: float) -> None:
        earliest = math.inf
        for rid, entry in list(self._open.items()):
            expires_at = entry.reservation.expires_at
            if expires_at <= now:
                del self._open[rid]
                self._drop(entry)
                self._ended[rid] = False
            elif expires_at < earliest:
                earliest = expires_at
        self._next_sweep = earliest
        self._next_due = min(earliest, self._rotate_at)

    def _local_keys(self) -> Iterable[str]:
        for lease in self._leases:
            yield from lease.keys
        yield from self._free_held
        yield from self._pending
        for keys in self._tallied:
            yield from keys
        for _, keys, _ in self._outgoing:
            yield from keys

    def _adjust_all(self, keys: Sequence[str], found: Mapping[str, Balance]) -> dict[str, Balance]:
        self._housekeeping(self.clock())
        return {key: self._adjust(key, found[key]) for key in keys}

    def _adjust(self, key: str, balance: Balance) -> Balance:
        """Return ``balance`` (the inner ledger's) as this process's own calls leave it."""
        spent, reserved = balance.spent, balance.reserved
        now = self.clock()
        for lease in self._leases:
            if key in lease.sizes:
                spent += lease.spent[key]
                reserved += lease.held[key]
                if now < lease.expires_at:  # still held by the inner ledger
                    reserved -= lease.sizes[key]
        for old, charges in self._old:
            for hold, charge in zip(old.holds, charges, strict=True):
                if hold.key == key:
                    spent += charge
                    if now < old.expires_at:
                        reserved -= hold.amount
        spent += self._pending.get(key, 0)
        for keys, tally in self._tallied.items():
            spent += tally * keys.count(key)
        for _, keys, amount in self._outgoing:
            spent += amount * keys.count(key)
        reserved += self._free_held.get(key, 0)
        return Balance(spent, max(reserved, 0))

    # -- flushing ------------------------------------------------------------------

    def _flush_if_due(self) -> None:
        def locked() -> None:
            if time.monotonic() >= self._next_flush:
                self._tick()

        self._locked(locked)
        self._flush_work()

    def _tick(self) -> None:
        """Every ``flush`` seconds: retire every lease, roll the busy ones over (lock held).

        A lease retired at an earlier tick that still has calls in flight is
        rolled over: the held amounts move to a new inner reservation and the
        old one is returned with its spend. So spend reaches the shared ledger
        within two ticks however long calls run, and a call's hold outlives
        the lease's ``ttl`` as long as this process runs.
        """
        now = time.monotonic()
        self._next_flush = now + self.flush
        for lease in self._leases:
            if lease.retired and not lease.rolling and not lease.drained():
                lease.rolling = True
                self._rolls.append(lease)
        self._retire_all()

    def _work(self, force: bool) -> list[tuple[str, Any]]:
        """Return the writes to make now, in order (lock held)."""
        if force:
            self._take_pending()
        return (
            [("roll", lease) for lease in self._rolls]
            + [("old", old) for old in self._old]
            + [("return", lease) for lease in self._returning]
            + [("add", add) for add in self._outgoing]
        )

    def _busy(self) -> bool:
        return bool(self._returning or self._outgoing or self._old or self._rolls)

    def _flush_work(self, force: bool = False, *, quiet: bool = False) -> None:
        """Make the writes due: roll-overs, returns of leases, unflushed charges.

        ``quiet``: on the way of an operation that succeeded locally, a
        storage error is logged and the writes kept for the next flush.
        """
        if not force and not self._busy():
            return
        try:
            for kind, item in self._passes(force):
                if kind == "roll":
                    renewal = self._locked(partial(self._renewal, item))
                    if renewal is not None:
                        self.inner_operations += 1
                        # "used before": an earlier try whose reply was lost holds it.
                        with contextlib.suppress(ValueError):
                            self.inner.reserve(renewal)
                        self._locked(partial(self._rolled, item, renewal))
                    continue
                self.inner_operations += 1
                if kind == "add":
                    self.inner.add(item[1], item[2], op_id=item[0])
                else:
                    reservation, charges = self._returnable(kind, item)
                    self.inner.settle(reservation, charges)
                self._locked(partial(self._written, kind, item))
        except StorageError as error:
            if not quiet:
                raise
            logger.warning("budget lease flush failed, will retry: %s", error)

    async def _aflush_work(self, force: bool = False, *, quiet: bool = False) -> None:
        """Do ``_flush_work`` without blocking the event loop."""
        if not force and not self._busy():
            return
        try:
            for kind, item in self._passes(force):
                if kind == "roll":
                    renewal = self._locked(partial(self._renewal, item))
                    if renewal is not None:
                        self.inner_operations += 1
                        # "used before": an earlier try whose reply was lost holds it.
                        with contextlib.suppress(ValueError):
                            await self.inner.areserve(renewal)
                        self._locked(partial(self._rolled, item, renewal))
                    continue
                self.inner_operations += 1
                if kind == "add":
                    await self.inner.aadd(item[1], item[2], op_id=item[0])
                else:
                    reservation, charges = self._returnable(kind, item)
                    await self.inner.asettle(reservation, charges)
                self._locked(partial(self._written, kind, item))
        except StorageError as error:
            if not quiet:
                raise
            logger.warning("budget lease flush failed, will retry: %s", error)

    def _passes(self, force: bool) -> Iterator[tuple[str, Any]]:
        # A roll-over queues the return of the reservation it replaced: a
        # second pass makes it at once.
        for _ in range(2):
            work = self._locked(lambda: self._work(force))
            if not work:
                return
            yield from work

    def _returnable(self, kind: str, item: Any) -> tuple[Reservation, list[int]]:
        if kind == "old":
            return item  # type: ignore[no-any-return]
        # A drained, retired lease gains no holds: its spend no longer changes,
        # so a retry (after a lost reply) settles the same amounts under the same id.
        lease: _Lease = item
        return lease.inner, [lease.spent[key] for key in lease.keys]

    def _renewal(self, lease: _Lease) -> Reservation | None:
        """Return the reservation that takes over the holds of a busy lease (lock held).

        Kept on the lease until it is in place, so a retry after a lost reply
        asks for the same id (and a second hold is never made).
        """
        if lease.renewal is None and (lease.drained() or lease not in self._leases):
            lease.rolling = False
            if lease in self._rolls:
                self._rolls.remove(lease)
            self._maybe_return(lease)
            return None
        if lease.renewal is None:
            holds = tuple(
                Hold(key, None, lease.held[key], unit) for unit, key in enumerate(lease.keys)
            )
            lease.renewal = Reservation(f"lease-{uuid.uuid4().hex}", holds, self.clock() + self.ttl)
        return lease.renewal

    def _rolled(self, lease: _Lease, renewal: Reservation) -> None:
        """Move ``lease`` onto ``renewal``; queue its old reservation's return (lock held)."""
        if lease in self._rolls:
            self._rolls.remove(lease)
        lease.rolling = False
        lease.renewal = None
        self._old.append((lease.inner, [lease.spent[key] for key in lease.keys]))
        lease.inner = renewal
        lease.sizes = {hold.key: hold.amount for hold in renewal.holds}
        lease.spent = dict.fromkeys(lease.keys, 0)
        lease.expires_at = renewal.expires_at
        self._maybe_return(lease)  # its last call may have ended meanwhile

    def _written(self, kind: str, item: Any) -> None:
        if kind == "add":
            if item in self._outgoing:
                self._outgoing.remove(item)
        elif kind == "old":
            if item in self._old:
                self._old.remove(item)
            self._forget_refusals(hold.key for hold in item[0].holds)  # its unused slice is free
        else:
            self._forget_refusals(item.keys)  # its unused slice is free
            if item in self._returning:
                self._returning.remove(item)
            if item in self._leases:
                self._leases.remove(item)


# Holds tuples, and apart from them tallies tuples (a tuple good as one is
# not good as the other), checked before, by id; the tuple itself is kept,
# so an id reused by another tuple never passes. A guard sends the same few
# tuples call after call, which need no check again. Bounded.
_CHECKED_HOLDS: dict[int, tuple[Any, ...]] = {}
_CHECKED_TALLIES: dict[int, tuple[Any, ...]] = {}
_CHECKED_KEPT = 4096


def _remember_checked(checked: dict[int, tuple[Any, ...]], value: tuple[Any, ...]) -> None:
    if len(checked) >= _CHECKED_KEPT:
        checked.clear()
    checked[id(value)] = value


def _check_reservation(reservation: Reservation) -> None:
    """Do ``check_reservation``, with every hold of a holds tuple seen before taken as checked."""
    if type(reservation) is Reservation:
        rid, holds, expires_at = reservation
        if (
            _CHECKED_HOLDS.get(id(holds)) is holds
            and type(rid) is str
            and rid
            and (type(expires_at) is float or type(expires_at) is int)
            and not expires_at - expires_at  # nan for inf and nan
        ):
            return
        check_reservation(reservation)
        if type(holds) is tuple:
            _remember_checked(_CHECKED_HOLDS, holds)
        return
    check_reservation(reservation)


def _check_keys(keys: Sequence[str]) -> None:
    if _CHECKED_TALLIES.get(id(keys)) is keys:
        return
    if isinstance(keys, str):
        raise ValueError(f"tallies must be a sequence of keys, not one string: {keys!r}")
    for key in keys:
        if type(key) is not str and not isinstance(key, str):
            raise ValueError(f"tallies must be a sequence of keys, got {keys!r}")
    if type(keys) is tuple:
        _remember_checked(_CHECKED_TALLIES, keys)
