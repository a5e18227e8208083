"""Reservations held for HTTP clients: reserve, then settle or release, each idempotent on an id.

A client in any language picks the id (an idempotency key) and may retry any
step after a lost reply: a second reserve with the same id returns the first
hold instead of holding twice, a second settle returns the first settlement.
The guard's ``Call`` lives in this process; if the service restarts, the
ledger lets the reservation expire (``reservation_ttl``) as it does for a
crashed process.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from ..guard import BudgetGuard, Call
from ._body import BadRequest

__all__ = ["MAX_ID", "Reservations", "check_id"]

#: Longest id a client may choose (a UUID is 36 characters).
MAX_ID = 128


@dataclass
class _Entry:
    """One open id: being reserved (``ready`` unset), then holding its call."""

    ready: threading.Event = field(default_factory=threading.Event)
    call: Call | None = None
    expires_at: float = 0.0
    reply: dict[str, Any] | None = None  # what reserve answered
    error: BaseException | None = None


def check_id(value: object) -> str:
    """Return a valid client-chosen id, or raise ``BadRequest``."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID or not value.isprintable():
        raise BadRequest(f"id must be a printable string of 1 to {MAX_ID} characters")
    return value


class Reservations:
    """Open reservations by id, and the replies of ids that ended (both bounded)."""

    def __init__(
        self, guard: BudgetGuard, max_open: int = 100_000, remember: int = 100_000
    ) -> None:
        self.guard = guard
        self.max_open = max_open
        self.remember = remember
        self._open: dict[str, _Entry] = {}
        self._ended: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def reserve(
        self, ident: str, user: str | None, estimate: Decimal, model: str | None
    ) -> dict[str, Any]:
        """Hold ``estimate`` on every budget of ``user`` under ``ident``, once."""
        with self._lock:
            if ident in self._ended:
                raise BadRequest(f"reservation {ident!r} has already ended; use a new id", 409)
            entry = self._open.get(ident)
            mine = entry is None
            if entry is None:
                if len(self._open) >= self.max_open:
                    self._forget_expired()
                if len(self._open) >= self.max_open:
                    raise BadRequest("too many open reservations; settle or release some", 503)
                entry = self._open[ident] = _Entry()
        if not mine:
            # A retry, or the same id sent twice at once: answer what the first got.
            entry.ready.wait(60)
            if entry.error is not None:
                raise entry.error
            if entry.reply is None:
                raise BadRequest(f"reservation {ident!r} is still being made; retry", 409)
            return entry.reply
        try:
            call = self.guard._begin(user, estimate, model=model)
        except BaseException as error:
            with self._lock:
                self._open.pop(ident, None)  # a refused id may be tried again later
            entry.error = error
            entry.ready.set()
            raise
        reservation = call.reservation
        entry.call = call
        entry.expires_at = reservation.expires_at if reservation is not None else time.time()
        entry.reply = {
            "id": ident,
            "user": user,
            "model": model,
            "held": estimate,
            "expires_at": datetime.fromtimestamp(entry.expires_at, timezone.utc).isoformat(),
            "status": "open",
        }
        entry.ready.set()
        return entry.reply

    def settle(self, ident: str, cost: Decimal | None, model: str | None) -> dict[str, Any]:
        """Charge ``cost`` for ``ident`` (``None``: release the hold); a retry answers the same."""
        with self._lock:
            ended = self._ended.get(ident)
            if ended is not None:
                return ended
            entry = self._open.get(ident)
            if entry is None or entry.call is None:
                raise BadRequest(f"no open reservation {ident!r} (it may have expired)", 404)
            call, entry.call = entry.call, None  # only one settle may end the call
        if cost is None:
            self.guard._finish(call, None, error=_Released())
            ended = {"id": ident, "status": "released", "spent": Decimal(0)}
        else:
            self.guard._finish(call, cost, model=model)
            ended = {"id": ident, "status": "settled", "spent": cost}
        with self._lock:
            self._open.pop(ident, None)
            self._ended[ident] = ended
            while len(self._ended) > self.remember:
                self._ended.popitem(last=False)
        return ended

    def _forget_expired(self) -> None:
        """Drop open reservations past their expiry: the ledger has released them."""
        now = time.time()
        for ident in [
            i for i, e in self._open.items() if e.call is not None and e.expires_at < now
        ]:
            del self._open[ident]


class _Released(Exception):
    """The client released its reservation: the call did not happen or failed."""
