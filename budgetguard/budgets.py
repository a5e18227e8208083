"""Budget definitions and the ledger keys they charge."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any

from ._keys import budget_key, escape, unescape
from .money import to_decimal, to_units
from .periods import Period, Window, parse_period, parse_tz, tz_name

__all__ = [
    "DEFAULT",
    "EMPTY_USER",
    "GLOBAL",
    "Budget",
    "budget_name",
    "escape",
    "unescape",
    "user_of",
]

GLOBAL = "global"
DEFAULT = "default"


def budget_name(user: str | None) -> str:
    """Return the name a budget is stored under: ``global`` or ``user:<id>``.

    The user id ``""`` raises ``ValueError``: in the ledger's keys an empty
    user field means "no user", so it would share the tallies of calls made
    without one. Ids made of spaces are distinct ids and are kept as given.
    """
    if user is None:
        return GLOBAL
    if not user:
        raise ValueError(EMPTY_USER)
    return f"user:{user}"


EMPTY_USER = (
    "user must be a non-empty string, got ''; pass user=None for calls without a user "
    "(in the ledger an empty user means none)"
)


def user_of(name: str) -> str | None:
    """Return the user a budget name belongs to (``None`` for global and default)."""
    return name[5:] if name.startswith("user:") else None


@dataclass(eq=False)
class Budget:
    """A spending limit per period: for one user, for everyone, or the default."""

    limit: Decimal
    period: Period
    tz: tzinfo
    name: str  # "global", "default" or "user:<id>"
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # The current window, cached until it ends: building it costs microseconds
    # and every guarded call needs it.
    _window: Window | None = field(default=None, init=False, repr=False)
    _window_start: float = field(default=float("inf"), init=False, repr=False)
    _window_end: float = field(default=-1.0, init=False, repr=False)
    _limit_units: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._limit_units = to_units(self.limit)

    @classmethod
    def create(
        cls,
        limit: object,
        *,
        name: str,
        period: object = None,
        tz: object = None,
        created_at: datetime | None = None,
    ) -> Budget:
        """Validate user input and build a budget (nothing is stored)."""
        return cls(
            limit=to_decimal(limit, "limit"),
            period=parse_period(period),
            tz=parse_tz(tz),
            name=name,
            created_at=created_at or datetime.now(timezone.utc),
        )

    @property
    def user(self) -> str | None:
        """Return the user this budget belongs to, ``None`` for global or default."""
        return user_of(self.name)

    @property
    def limit_units(self) -> int:
        """Return the limit in ledger units."""
        return self._limit_units

    def window(self, now: float | None = None) -> Window:
        """Return the window that contains ``now`` (seconds since the epoch)."""
        if now is None:
            now = time.time()
        if self._window_start <= now < self._window_end and self._window is not None:
            return self._window
        at = datetime.fromtimestamp(now, timezone.utc)
        window = self.period.window(at, self.tz, self.created_at)
        if window.start is not None and window.start.timestamp() > now:
            return window  # a clock that went back: do not cache
        self._window = window
        self._window_start = window.start.timestamp() if window.start else float("-inf")
        self._window_end = window.end.timestamp() if window.end else float("inf")
        return window

    def resets_at(self, now: float | None = None) -> datetime | None:
        """Return when the current window ends and spend starts again at zero."""
        return self.window(now).end

    def key(self, now: float | None = None, *, user: str | None = None) -> str:
        """Return the ledger key of the current window for ``user`` (default budgets)."""
        return self.key_for_window(self.window(now), user=user)

    def key_for_window(self, window: Window, *, user: str | None = None) -> str:
        """Return the ledger key of a given window."""
        owner = self.name if user is None else budget_name(user)
        return budget_key(owner, window.id)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able definition the ledger stores."""
        return {
            "limit": str(self.limit),
            "period": self.period.to_json(),
            "tz": tz_name(self.tz),
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Budget:
        """Rebuild a budget from the ledger's stored definition."""
        return cls.create(
            data["limit"],
            name=name,
            period=data.get("period"),
            tz=data.get("tz"),
            created_at=datetime.fromisoformat(data["created_at"]),
        )

    def same_definition(self, other: Budget) -> bool:
        """Tell whether two budgets would charge the same keys with the same limit."""
        return self.to_dict() == other.to_dict() and self.name == other.name

    def __repr__(self) -> str:
        return f"Budget({self.name!r}, limit={self.limit}, period={self.period.label!r})"
