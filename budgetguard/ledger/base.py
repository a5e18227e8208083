"""The storage contract every ledger backend fulfils.

The ledger counts whole *units* per key; it knows nothing of dollars, users or
periods. The guard turns budgets into keys (the window is part of the key, so
a new period starts at zero with no background job) and amounts into units.

Every operation below is atomic on its own: the memory backend holds one lock,
SQLite runs one ``BEGIN IMMEDIATE`` transaction, Redis runs one Lua script.

Faults: an exception at any point of an operation (``KeyboardInterrupt``,
``SystemExit``, ``asyncio.CancelledError``, a lost connection) leaves the
ledger as if the operation had run completely or not at all, and the
connection usable. Every write that moves money carries an id (the
reservation id, or ``op_id`` for ``add``) and is idempotent on it, so a caller
that lost a reply may repeat the write with the same id: it changes nothing
the second time. A lost reply is a ``StorageError``; a driver's raw error
never escapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

from ..errors import StorageError

T = TypeVar("T")
logger = logging.getLogger("budgetguard")

__all__ = [
    "Balance",
    "BudgetChanges",
    "Hold",
    "Ledger",
    "Refusal",
    "Reservation",
    "check_op_id",
    "check_reservation",
    "check_units",
    "shielded",
    "shielded_reserve",
]


class Hold(NamedTuple):
    """One budget's part of a reservation: hold ``amount`` units on ``key``.

    ``limit`` is the budget's limit in units, or ``None`` for a key that only
    counts (it can never refuse).
    """

    key: str
    limit: int | None
    amount: int


class Reservation(NamedTuple):
    """Units held on several keys at once, all or nothing, until settled."""

    id: str
    holds: tuple[Hold, ...]
    expires_at: float  # seconds since the epoch; the ledger releases it after

    @property
    def keys(self) -> tuple[str, ...]:
        """Return the keys this reservation holds units on."""
        return tuple(hold.key for hold in self.holds)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the first hold that did not fit."""

    index: int
    key: str
    limit: int
    spent: int
    reserved: int
    requested: int


@dataclass(frozen=True, slots=True)
class Balance:
    """What a key holds: units spent and units reserved by open reservations."""

    spent: int = 0
    reserved: int = 0


class BudgetChanges(NamedTuple):
    """What changed in the stored budget definitions since a reader last looked.

    ``mark`` is a random id the ledger writes with the first definition it
    ever stores and loses only with the definitions (a ledger that lost its
    data has a new mark, or none); ``version`` grows with every
    ``put_budget`` and ``delete_budget``; ``changed`` maps a name to its
    definition, or to ``None`` when it was deleted; ``full`` says that
    ``changed`` holds every definition (the reader must forget the others).
    """

    mark: str | None
    version: int
    changed: dict[str, dict[str, Any] | None]
    full: bool


class Ledger(ABC):
    """Store spend per key, check-and-reserve atomically, settle idempotently.

    Subclasses declare the URL ``schemes`` they serve and implement the
    synchronous operations; the asynchronous ones default to the synchronous
    ones, which suits backends that never block (memory). Backends that do
    I/O override the ``a``-prefixed methods so an event loop never waits on
    the network or the disk.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when every process (and host) using the same URL sees the same spend.
    shared: ClassVar[bool] = False
    #: The largest amount or limit, in units, this backend holds exactly (``None``:
    #: no bound). Larger ones raise ``ValueError``; a guard should refuse budgets
    #: above it when they are set, not on every later call.
    max_units: ClassVar[int | None] = None

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        #: Seconds since the epoch; tests pass a controlled clock to expire reservations.
        self.clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- the hot path ---------------------------------------------------------

    @abstractmethod
    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them.

        A hold fits when ``spent + reserved + amount <= limit``; a hold of 0
        on a key already at or over its limit does not fit either, so a spent
        budget refuses calls with no estimate. Reservations past their expiry
        are released first. Return ``None`` on success, else the first hold
        that did not fit; a refusal changes nothing.
        """

    @abstractmethod
    def settle(self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()) -> bool:
        """Charge ``amount`` to every held key and every tally key; drop the holds.

        Idempotent per reservation id: the first call charges and returns
        ``True``, later calls change nothing and return ``False``. A
        reservation that expired or was released is still charged (the money
        was spent), but its holds are not dropped twice.
        """

    @abstractmethod
    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of a reservation without charging; ``False`` if already ended.

        The id counts as used afterwards even if it was never reserved, so a
        reserve of the same id that arrives late (its reply was lost, or the
        caller gave up) is refused and holds nothing.
        """

    @abstractmethod
    def add(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Charge ``amount`` to every key unconditionally (spend recorded after the fact).

        With an ``op_id`` the charge happens once: a repeat with the same id
        (a retry after a lost reply) changes nothing and returns ``False``.
        Ids are remembered as long as ended reservation ids. Return ``True``
        when this call charged.
        """

    # -- reading and administration -------------------------------------------

    @abstractmethod
    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for (zero for unknown keys)."""

    @abstractmethod
    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""

    @abstractmethod
    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""

    @abstractmethod
    def open_reservations(self) -> list[Reservation]:
        """Return the reservations not yet settled, released or expired."""

    @abstractmethod
    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition (a JSON-able mapping) under ``name``."""

    @abstractmethod
    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``, or ``None``."""

    @abstractmethod
    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition; ``False`` if there was none."""

    @abstractmethod
    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition by name."""

    def ping(self) -> None:  # noqa: B027 - backends without storage are always up
        """Check that the storage answers; raise ``StorageError`` if it does not."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections and files; the ledger is unusable afterwards."""

    # -- asynchronous variants --------------------------------------------------

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` without blocking the event loop."""
        return self.reserve(reservation)

    async def asettle(
        self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()
    ) -> bool:
        """Do ``settle`` without blocking the event loop."""
        return self.settle(reservation, amount, tallies)

    async def arelease(self, reservation: Reservation) -> bool:
        """Do ``release`` without blocking the event loop."""
        return self.release(reservation)

    async def aadd(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Do ``add`` without blocking the event loop."""
        return self.add(keys, amount, op_id=op_id)

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` without blocking the event loop."""
        return self.balances(keys)

    async def aping(self) -> None:
        """Do ``ping`` without blocking the event loop."""
        self.ping()

    async def aclose(self) -> None:
        """Do ``close`` without blocking the event loop."""
        self.close()

    # -- budget changes (default: every definition, every time) -------------------

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the definitions changed after ``since`` (a ``(mark, version)`` pair).

        This default keeps no log: it answers with every definition and
        ``full=True``, which is always correct. Backends that record a mark
        and a version answer with only what changed.
        """
        return BudgetChanges(None, 0, dict(self.list_budgets()), True)

    async def abudget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Do ``budget_changes`` without blocking the event loop."""
        return self.budget_changes(since)


class _ThreadedAsync(Ledger):
    """Run the synchronous operations in a worker thread for async callers.

    For backends whose client is blocking (SQLite); subclass it instead of
    ``Ledger``. A thread cannot be cancelled: a caller that gives up (a
    ``wait_for`` timeout, ``cancel()``) leaves the write to finish in its
    thread; a reserve that succeeds after its caller gave up is released.
    """

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` in a worker thread; release it if the caller gives up."""
        return await shielded_reserve(
            self, asyncio.ensure_future(asyncio.to_thread(self.reserve, reservation)), reservation
        )

    async def asettle(
        self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()
    ) -> bool:
        """Do ``settle`` in a worker thread, finished even if the caller gives up."""
        return await shielded(self, asyncio.to_thread(self.settle, reservation, amount, tallies))

    async def arelease(self, reservation: Reservation) -> bool:
        """Do ``release`` in a worker thread, finished even if the caller gives up."""
        return await shielded(self, asyncio.to_thread(self.release, reservation))

    async def aadd(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Do ``add`` in a worker thread, finished even if the caller gives up."""
        return await shielded(self, asyncio.to_thread(self.add, keys, amount, op_id=op_id))

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` in a worker thread."""
        return await asyncio.to_thread(self.balances, keys)

    async def aping(self) -> None:
        """Do ``ping`` in a worker thread."""
        await asyncio.to_thread(self.ping)

    async def aclose(self) -> None:
        """Do ``close`` in a worker thread."""
        await asyncio.to_thread(self.close)


def _keep(ledger: Ledger, future: asyncio.Future[Any]) -> None:
    # Writes that outlive the caller that started them are kept by their
    # ledger: the event loop holds only weak references to tasks, so a write
    # whose caller was cancelled could otherwise be garbage collected half way.
    running: set[asyncio.Future[Any]] = ledger.__dict__.setdefault("_background", set())
    running.add(future)
    future.add_done_callback(running.discard)


async def shielded(ledger: Ledger, write: Awaitable[T]) -> T:
    """Await a write of ``ledger`` that runs to its end even if the caller is cancelled."""
    task = asyncio.ensure_future(write)
    _keep(ledger, task)
    return await asyncio.shield(task)


async def shielded_reserve(
    ledger: Ledger, task: asyncio.Future[Refusal | None], reservation: Reservation
) -> Refusal | None:
    """Await a reserve; if the caller gives up first, release it once it has ended.

    The reserve may still hold units when it ends (it reached the storage):
    nobody would ever settle them, so they are released in the background.
    """
    _keep(ledger, task)
    try:
        return await asyncio.shield(task)
    except BaseException:
        if not task.done() or not task.cancelled():
            task.add_done_callback(lambda done: _release_abandoned(ledger, done, reservation))
        raise


def _release_abandoned(
    ledger: Ledger, done: asyncio.Future[Refusal | None], reservation: Reservation
) -> None:
    if done.cancelled():
        outcome: object = None
    else:
        error = done.exception()
        if isinstance(error, ValueError):  # refused as malformed or reused: nothing held
            return
        outcome = None if error is not None else done.result()
    if outcome is not None:  # a refusal holds nothing
        return
    try:
        _keep(ledger, asyncio.ensure_future(_release_quietly(ledger, reservation)))
    except RuntimeError:  # the loop is closing; the hold expires on its own
        logger.warning("reservation %s abandoned; it expires on its own", reservation.id)


async def _release_quietly(ledger: Ledger, reservation: Reservation) -> None:
    try:
        await ledger.arelease(reservation)
    except Exception as error:  # the hold expires on its own
        logger.warning(
            "could not release abandoned reservation %s (%s); it expires on its own",
            reservation.id,
            error,
        )


def check_units(amount: object, name: str = "amount") -> int:
    """Return ``amount`` if it is a whole number of units >= 0, else raise ``ValueError``."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"{name} must be a non-negative whole number of units, got {amount!r}")
    return amount


def check_op_id(op_id: object) -> None:
    """Raise ``ValueError`` unless ``op_id`` is ``None`` or a non-empty string."""
    if op_id is not None and (not isinstance(op_id, str) or not op_id):
        raise ValueError(f"op_id must be a non-empty string or None, got {op_id!r}")


def check_reservation(reservation: Reservation) -> None:
    """Raise ``ValueError`` unless every hold of ``reservation`` is well formed."""
    if not isinstance(reservation.id, str) or not reservation.id:
        raise ValueError(f"reservation id must be a non-empty string, got {reservation.id!r}")
    expires_at = reservation.expires_at
    if (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        # A NaN expiry never passes: the hold would never end.
        raise ValueError(
            f"reservation expiry must be a finite number of seconds, got {expires_at!r}"
        )
    for hold in reservation.holds:
        if not isinstance(hold.key, str):
            raise ValueError(f"hold key must be a string, got {hold.key!r}")
        check_units(hold.amount, f"amount held on {hold.key!r}")
        if hold.limit is not None:
            check_units(hold.limit, f"limit of {hold.key!r}")


def budget_to_json(name: str, definition: Mapping[str, Any]) -> str:
    """Serialise a budget definition for storage; ``ValueError`` if it cannot be."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"budget name must be a non-empty string, got {name!r}")
    try:
        return json.dumps(dict(definition), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"budget {name!r} definition is not JSON-able: {error}") from None


def budget_from_json(text: str) -> dict[str, Any]:
    """Read a stored budget definition back; ``StorageError`` if it is not an object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StorageError(f"stored budget definition is not a JSON object: {text[:80]!r}")
    return value
