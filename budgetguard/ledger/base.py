"""The storage contract every ledger backend fulfils.

The ledger counts whole *units* per key; it knows nothing of dollars, users or
periods. The guard turns budgets into keys (the window is part of the key, so
a new period starts at zero with no background job) and amounts into units.

Every operation below is atomic on its own: the memory backend holds one lock,
SQLite runs one ``BEGIN IMMEDIATE`` transaction, Redis runs one Lua script,
PostgreSQL one function call.

One reservation may hold several *kinds* of units at once (dollars on one key,
tokens on another, a call slot on a third): each ``Hold`` names the ``unit``
(an index, 0 to 15) of the amount that ``settle`` charges it, so one settle
charges every key its own kind. A hold may be *soft* (``over``: it never
refuses, and a hold that did not fit counts 1 on the ``over`` key) and may
count part of an earlier window's spend (``prior`` and ``weight``: a sliding
window). The ledger gives units no meaning; see ``Hold``.

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

from ..errors import ConfigurationError, StorageError

T = TypeVar("T")
logger = logging.getLogger("budgetguard")

__all__ = [
    "MAX_UNIT",
    "WEIGHT_SCALE",
    "Balance",
    "BudgetChanges",
    "Hold",
    "Ledger",
    "Refusal",
    "Reservation",
    "check_hold_extras",
    "check_idempotency_ttl",
    "check_op_id",
    "check_reservation",
    "check_settle_amount",
    "check_units",
    "shielded",
    "shielded_reserve",
]


#: Units a hold may name: ``Hold.unit`` is an index into settle's amounts, 0 to this.
MAX_UNIT = 15
#: ``Hold.weight`` is in millionths of the prior key's spend.
WEIGHT_SCALE = 1_000_000


class Hold(NamedTuple):
    """One budget's part of a reservation: hold ``amount`` units on ``key``.

    ``limit`` is the budget's limit in units, or ``None`` for a key that only
    counts (it can never refuse).

    ``unit`` picks which of ``settle``'s amounts this key is charged (0 to
    ``MAX_UNIT``). The ledger gives units no meaning; the guard's convention
    is 0 dollars (cost units), 1 input tokens, 2 output tokens, 3 total
    tokens, 4 requests (hold 1, settle 1) and 5 calls in flight (hold 1,
    settle 0: the hold is the count, the settle only drops it).

    ``over`` makes the hold *soft*: it never refuses. When it does not fit,
    it is held anyway and 1 is added to the spend of the key ``over``, in the
    same atomic step (a count of the calls that came when the budget had no
    room: soft and shadow budgets).

    ``prior`` and ``weight`` make a sliding window: ``floor(spent(prior) *
    weight / WEIGHT_SCALE)`` of the previous window's key counts as used too.
    The prior key is only read. Both are given or neither.
    """

    key: str
    limit: int | None
    amount: int
    unit: int = 0
    over: str | None = None
    prior: str | None = None
    weight: int = 0


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
    """Why a reservation was refused: the first hard hold that did not fit.

    ``prior`` is the part of the previous window's spend the hold counted
    (0 unless the hold has a ``prior`` key).
    """

    index: int
    key: str
    limit: int
    spent: int
    reserved: int
    requested: int
    prior: int = 0


@dataclass(frozen=True, slots=True)
class Balance:
    """What a key holds: units spent and units reserved by open reservations."""

    spent: int = 0
    reserved: int = 0


class BudgetChanges(NamedTuple):
    """The budget definitions that changed since a point a reader saw before.

    ``mark`` is the ledger's random id of its store of definitions: written in
    the same atomic step as the first definition ever stored, kept as long as
    the definitions exist, gone with them (``None``: no definition was ever
    stored, or they were lost). ``version`` counts every ``put_budget`` and
    ``delete_budget``. ``changed`` maps a name to its definition, or to
    ``None`` for one deleted. With ``full`` set, ``changed`` holds every
    definition there is (and no deletions): the reader must replace what it
    knew rather than apply changes.
    """

    mark: str | None
    version: int
    changed: dict[str, dict[str, Any] | None]
    full: bool


#: How long a ledger keeps the names of deleted definitions at least, so that
#: a reader that last looked this long ago still learns of a deletion
#: incrementally (older readers get ``full``).
TOMBSTONE_SECONDS = 24 * 3600.0

#: The default and the least ``idempotency_ttl``: how long ended reservation
#: ids and ``add`` op ids are remembered.
IDEMPOTENCY_TTL = 3600.0
MIN_IDEMPOTENCY_TTL = 60.0


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

        A hold fits when ``spent + reserved + prior_part + amount <= limit``
        (``prior_part`` is ``floor(spent(prior) * weight / 1_000_000)``, 0
        without a ``prior``); a hold of 0 on a key already at or over its
        limit does not fit either, so a spent budget refuses calls with no
        estimate. ``limit=None`` always fits. Every hold is checked against
        the state before this reservation.

        A hard hold (no ``over``) that does not fit refuses the reservation:
        return the ``Refusal`` of the first such hold; nothing changes (no
        hold, no ``over`` count). Otherwise every hold is held, and every soft
        hold that did not fit adds 1 to the spend of its ``over`` key, in the
        same atomic step; return ``None``. Reservations past their expiry are
        released first.
        """

    @abstractmethod
    def settle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Charge every held key and every tally key; drop the holds.

        ``amount`` is one whole number of units, charged to every key, or a
        sequence indexed by unit: a held key is charged ``amount[hold.unit]``
        and every tally key ``amount[0]``. An amount of 0 charges nothing but
        still drops the hold. A negative or non-integer amount, or a sequence
        too short for some hold's unit, raises ``ValueError`` and changes
        nothing.

        Idempotent per reservation id: the first call charges and returns
        ``True``, later calls change nothing and return ``False``. A
        reservation that expired or was released is still charged (the money
        was spent), each key by its unit, but its holds are not dropped twice.
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

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the definitions changed after ``since``, a ``(mark, version)`` seen before.

        ``since=None``, a mark that differs from the ledger's (its
        definitions were lost and perhaps created anew) or a version older
        than the deletions the ledger still remembers give ``full=True``.
        This default reads every definition each time; backends override it
        to read only what changed.
        """
        return BudgetChanges(None, 0, dict(self.list_budgets()), True)

    def ping(self) -> None:  # noqa: B027 - backends without storage are always up
        """Check that the storage answers; raise ``StorageError`` if it does not."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections and files; the ledger is unusable afterwards."""

    # -- asynchronous variants --------------------------------------------------

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` without blocking the event loop."""
        return self.reserve(reservation)

    async def asettle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
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

    async def abudget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Do ``budget_changes`` without blocking the event loop."""
        return self.budget_changes(since)

    async def aping(self) -> None:
        """Do ``ping`` without blocking the event loop."""
        self.ping()

    async def aclose(self) -> None:
        """Do ``close`` without blocking the event loop."""
        self.close()


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
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
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

    async def abudget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Do ``budget_changes`` in a worker thread."""
        return await asyncio.to_thread(self.budget_changes, since)

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


def check_idempotency_ttl(value: object, url: str, name: str = "idempotency_ttl") -> float:
    """Return ``value`` (``None``: the default) as seconds, at least ``MIN_IDEMPOTENCY_TTL``.

    A ``ConfigurationError`` naming the option (``name``) otherwise.
    """
    if value is None:
        return IDEMPOTENCY_TTL
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not MIN_IDEMPOTENCY_TTL <= number < float("inf"):
        raise ConfigurationError(
            f"{name} must be a number of seconds of at least "
            f"{MIN_IDEMPOTENCY_TTL:g} (a retry must still find the id), got {value!r} ({url})"
        )
    return number


def check_units(amount: object, name: str = "amount") -> int:
    """Return ``amount`` if it is a whole number of units >= 0, else raise ``ValueError``."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"{name} must be a non-negative whole number of units, got {amount!r}")
    return amount


def check_op_id(op_id: object) -> None:
    """Raise ``ValueError`` unless ``op_id`` is ``None`` or a non-empty string."""
    if op_id is not None and (not isinstance(op_id, str) or not op_id):
        raise ValueError(f"op_id must be a non-empty string or None, got {op_id!r}")


_NUMBERS = frozenset((int, float))
_INF = float("inf")


def check_reservation(reservation: Reservation) -> None:
    """Raise ``ValueError`` unless every hold of ``reservation`` is well formed."""
    # The common shape passes with exact-type tests only (every shared
    # ledger runs this once per call); anything else gets the full checks,
    # which word the error.
    rid: object = None
    holds: tuple[Hold, ...] = ()
    expires_at: float = _INF
    if type(reservation) is Reservation:
        rid, holds, expires_at = reservation
    if type(rid) is str and rid and type(expires_at) in _NUMBERS and -_INF < expires_at < _INF:
        for hold in holds:
            if (
                type(hold) is not Hold
                or type(hold[0]) is not str
                or type(hold[2]) is not int
                or hold[2] < 0
                or (hold[1] is not None and (type(hold[1]) is not int or hold[1] < 0))
            ):
                break
            unit, weight = hold[3], hold[6]
            if (
                type(unit) is not int
                or unit
                or hold[4] is not None
                or hold[5] is not None
                or type(weight) is not int
                or weight
            ):
                check_hold_extras(hold)  # not a plain hold (or False, 0.0...): every check
        else:
            return
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
        if not isinstance(hold, tuple) or len(hold) != len(Hold._fields):
            raise ValueError(f"a hold must be a Hold, got {hold!r}")
        if not isinstance(hold.key, str):
            raise ValueError(f"hold key must be a string, got {hold.key!r}")
        check_units(hold.amount, f"amount held on {hold.key!r}")
        if hold.limit is not None:
            check_units(hold.limit, f"limit of {hold.key!r}")
        check_hold_extras(hold)


def check_hold_extras(hold: Hold) -> None:
    """Raise ``ValueError`` unless ``unit``, ``over``, ``prior`` and ``weight`` are well formed."""
    unit, over, prior, weight = hold.unit, hold.over, hold.prior, hold.weight
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit <= MAX_UNIT:
        raise ValueError(
            f"unit of the hold on {hold.key!r} must be a whole number from 0 to {MAX_UNIT}, "
            f"got {unit!r}"
        )
    if over is not None and (not isinstance(over, str) or not over):
        raise ValueError(
            f"over of the hold on {hold.key!r} must be a non-empty key or None, got {over!r}"
        )
    if prior is not None and (not isinstance(prior, str) or not prior):
        raise ValueError(
            f"prior of the hold on {hold.key!r} must be a non-empty key or None, got {prior!r}"
        )
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= WEIGHT_SCALE:
        raise ValueError(
            f"weight of the hold on {hold.key!r} must be a whole number of millionths "
            f"from 0 to {WEIGHT_SCALE}, got {weight!r}"
        )
    if (prior is None) != (weight == 0):
        raise ValueError(
            f"prior and weight of the hold on {hold.key!r} go together: a prior key needs "
            f"a weight above 0 and a weight needs a prior key, got prior={prior!r}, "
            f"weight={weight!r}"
        )


def check_settle_amount(amount: object, holds: Sequence[Hold]) -> tuple[list[int], int]:
    """Return what settle charges each hold of ``holds`` and each tally, from ``amount``.

    ``amount`` is a whole number of units (charged to every key) or a
    sequence of them indexed by unit (a hold is charged ``amount[hold.unit]``,
    a tally ``amount[0]``). ``ValueError`` naming the problem otherwise.
    """
    if type(amount) is int and amount >= 0:
        return [amount] * len(holds), amount
    if isinstance(amount, int) and not isinstance(amount, bool):
        check_units(amount)
        return [amount] * len(holds), amount
    if isinstance(amount, str | bytes) or not isinstance(amount, Sequence):
        raise ValueError(
            f"amount must be a non-negative whole number of units or a sequence of them "
            f"indexed by unit, got {amount!r}"
        )
    amounts = [check_units(each, f"amount of unit {unit}") for unit, each in enumerate(amount)]
    if not amounts:
        raise ValueError("amount must name at least unit 0 (what tallies are charged), got []")
    charges: list[int] = []
    for hold in holds:
        unit = hold.unit
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < len(amounts):
            raise ValueError(
                f"amount has {len(amounts)} unit(s) but the hold on {hold.key!r} is charged "
                f"unit {unit!r}"
            )
        charges.append(amounts[unit])
    return charges, amounts[0]


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
