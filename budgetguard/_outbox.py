"""Charges the ledger could not take, kept in this process and written again later.

A call has run and its money is spent; if the settle (or a direct charge)
then fails with ``StorageError``, the charge is not lost: it waits here and
is written again before the guard's next ledger operation, at ``close()`` and
when the interpreter exits. Every entry keeps the id it was first written
with (the reservation id of a settle, the ``op_id`` of a direct charge), and
every ledger is idempotent on those ids, so a charge whose first write did
land (its reply was lost) still counts once.

The rule for the reservation of a failed settle: its hold stays in the
ledger, where it keeps counting against the budget until it expires after
the guard's ``reservation_ttl``; the retry settles *that same reservation*,
which charges the real cost and drops the hold (or, once expired, only
charges). While an entry waits, ``spend()`` and ``remaining()`` of this
process add it to what the ledger reports; other processes see it once it is
written.

The outbox is bounded: a charge that finds it full is dropped, logged with
its amount at ``ERROR`` and counted (``budgetguard.outbox.dropped``). A
forked child starts with an empty outbox: the parent writes its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import NamedTuple

from .errors import StorageError
from .ledger import Ledger, Reservation
from .money import from_units

__all__ = ["DEFAULT_OUTBOX_SIZE", "Outbox", "Pending"]

logger = logging.getLogger("budgetguard")

DEFAULT_OUTBOX_SIZE = 10_000


class Pending(NamedTuple):
    """One charge waiting to be written, under the id it was first written with."""

    id: str
    units: int
    keys: tuple[str, ...]  # the counters charged besides the reservation's holds
    reservation: Reservation | None  # a settle; None for a direct charge (``add``)
    user: str | None
    #: What the settle charges per unit (tokens, requests...), when not ``units`` alone.
    amounts: int | tuple[int, ...] | None = None

    def write(self, ledger: Ledger) -> None:
        """Write this charge once more (idempotent on its id)."""
        reservation = self.reservation
        if reservation is not None and reservation.holds:
            amounts = self.amounts if self.amounts is not None else self.units
            ledger.settle(reservation, amounts, self.keys)
        else:
            ledger.add(self.keys, self.units, op_id=self.id)

    def counted_on(self, key: str) -> bool:
        """Tell whether writing this charge adds to ``key``."""
        if key in self.keys:
            return True
        reservation = self.reservation
        return reservation is not None and any(hold.key == key for hold in reservation.holds)

    def held_on(self, key: str, now: float) -> int:
        """Return what the ledger still holds for this charge on ``key`` (0 once expired)."""
        reservation = self.reservation
        if reservation is None or now >= reservation.expires_at:
            return 0
        return sum(hold.amount for hold in reservation.holds if hold.key == key)


class Outbox:
    """A bounded queue of charges to write again, oldest first, one flusher at a time."""

    def __init__(self, capacity: int = DEFAULT_OUTBOX_SIZE) -> None:
        self.capacity = capacity
        #: Waiting charges by id; the hot path only tests whether it is empty.
        self.pending: dict[str, Pending] = {}
        self.dropped = 0
        self.dropped_units = 0
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def __len__(self) -> int:
        return len(self.pending)

    def put(self, entry: Pending) -> bool:
        """Keep ``entry`` to write later; ``False`` (and a loud log) if the outbox is full."""
        with self._lock:
            if entry.id in self.pending:
                return True
            if len(self.pending) < self.capacity:
                self.pending[entry.id] = entry
                return True
            self.dropped += 1
            self.dropped_units += entry.units
            size = len(self.pending)
        logger.error(
            "budgetguard outbox is full (%d charges waiting for the ledger): dropped a charge "
            "of $%s for user %r; it will never reach the ledger (raise outbox_size, or fix "
            "the ledger)",
            size,
            from_units(entry.units),
            entry.user,
        )
        return False

    def flush(self, ledger: Ledger) -> bool:
        """Write waiting charges, oldest first, until one fails; return whether all went.

        A thread that finds another one flushing returns at once (``False``):
        the ledger is being written, there is no need to queue behind it.
        """
        if not self._flushing.acquire(blocking=False):
            return False
        try:
            for entry in list(self.pending.values()):
                try:
                    entry.write(ledger)
                except StorageError as error:
                    logger.warning(
                        "budgetguard outbox: the ledger still fails (%s); %d charges wait",
                        error,
                        len(self.pending),
                    )
                    return False
                except Exception:
                    # Not a storage failure: writing it again would fail again.
                    logger.exception(
                        "budgetguard outbox: dropped a charge of $%s for user %r that the "
                        "ledger refused",
                        from_units(entry.units),
                        entry.user,
                    )
                    self._count_dropped(entry)
                with self._lock:
                    self.pending.pop(entry.id, None)
            return True
        finally:
            self._flushing.release()

    def units_on(self, keys: Iterable[str], now: float, *, held: bool) -> dict[str, int]:
        """Return, per key, the waiting units the ledger does not count yet.

        With ``held`` the part the ledger still holds for the charge
        (its reservation has not expired) is left out, as ``remaining()``
        already counts holds.
        """
        entries = list(self.pending.values())
        found: dict[str, int] = {}
        for key in keys:
            total = 0
            for entry in entries:
                if entry.counted_on(key):
                    total += entry.units - (entry.held_on(key, now) if held else 0)
            if total > 0:
                found[key] = total
        return found

    def forget(self) -> None:
        """Start empty with fresh locks (in a forked child: the parent writes its own)."""
        self.pending = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def waiting_units(self) -> int:
        """Return the units of every waiting charge."""
        return sum(entry.units for entry in list(self.pending.values()))

    def _count_dropped(self, entry: Pending) -> None:
        with self._lock:
            self.dropped += 1
            self.dropped_units += entry.units
