"""The storage contract every ledger backend fulfils.

The ledger counts whole *units* per key; it knows nothing of dollars, users or
periods. The guard turns budgets into keys (the window is part of the key, so
a new period starts at zero with no background job) and amounts into units.

Every operation below is atomic on its own: the memory backend holds one lock,
SQLite runs one ``BEGIN IMMEDIATE`` transaction, Redis runs one Lua script.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from ..errors import StorageError

__all__ = [
    "Balance",
    "Hold",
    "Ledger",
    "Refusal",
    "Reservation",
    "check_reservation",
    "check_units",
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
        """Drop the holds of a reservation without charging; ``False`` if already ended."""

    @abstractmethod
    def add(self, keys: Sequence[str], amount: int) -> None:
        """Charge ``amount`` to every key unconditionally (spend recorded after the fact)."""

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

    async def aadd(self, keys: Sequence[str], amount: int) -> None:
        """Do ``add`` without blocking the event loop."""
        self.add(keys, amount)

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` without blocking the event loop."""
        return self.balances(keys)

    async def aping(self) -> None:
        """Do ``ping`` without blocking the event loop."""
        self.ping()

    async def aclose(self) -> None:
        """Do ``close`` without blocking the event loop."""
        self.close()


class _ThreadedAsync(Ledger):
    """Run the synchronous operations in a worker thread for async callers.

    For backends whose client is blocking (SQLite); subclass it instead of ``Ledger``.
    """

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` in a worker thread."""
        return await asyncio.to_thread(self.reserve, reservation)

    async def asettle(
        self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()
    ) -> bool:
        """Do ``settle`` in a worker thread."""
        return await asyncio.to_thread(self.settle, reservation, amount, tallies)

    async def arelease(self, reservation: Reservation) -> bool:
        """Do ``release`` in a worker thread."""
        return await asyncio.to_thread(self.release, reservation)

    async def aadd(self, keys: Sequence[str], amount: int) -> None:
        """Do ``add`` in a worker thread."""
        await asyncio.to_thread(self.add, keys, amount)

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` in a worker thread."""
        return await asyncio.to_thread(self.balances, keys)

    async def aping(self) -> None:
        """Do ``ping`` in a worker thread."""
        await asyncio.to_thread(self.ping)

    async def aclose(self) -> None:
        """Do ``close`` in a worker thread."""
        await asyncio.to_thread(self.close)


def check_units(amount: object, name: str = "amount") -> int:
    """Return ``amount`` if it is a whole number of units >= 0, else raise ``ValueError``."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"{name} must be a non-negative whole number of units, got {amount!r}")
    return amount


def check_reservation(reservation: Reservation) -> None:
    """Raise ``ValueError`` unless every hold of ``reservation`` is well formed."""
    if not isinstance(reservation.id, str) or not reservation.id:
        raise ValueError(f"reservation id must be a non-empty string, got {reservation.id!r}")
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
