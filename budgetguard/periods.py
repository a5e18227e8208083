"""Budget periods: calendar windows in a time zone, and fixed-length windows.

A window is a half-open interval ``[start, end)`` with a stable ``id``. The id
is part of every ledger key, so a new window starts at zero by itself: resets
are lazy and need no background job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError

__all__ = [
    "CALENDAR_PERIODS",
    "MAX_PERIOD",
    "Period",
    "PeriodLike",
    "Window",
    "parse_period",
    "parse_tz",
    "tz_name",
    "window_end_of",
]

CALENDAR_PERIODS = ("daily", "weekly", "monthly", "yearly")
PeriodLike = Literal["daily", "weekly", "monthly", "yearly"] | timedelta | str | None

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class Window:
    """One window of a period: ``[start, end)``; ``None`` bounds are open."""

    id: str
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class Period:
    """A budget period: ``daily`` ... ``yearly``, ``lifetime``, or fixed-length windows.

    Calendar periods follow the calendar of the budget's time zone (ISO weeks
    start on Monday; ``monthly`` is the calendar month, never 28 or 30 days).
    A fixed-length period (``timedelta``) cuts time into consecutive windows of
    that length, counted from an anchor (the budget's creation time).
    """

    name: str  # "daily" | "weekly" | "monthly" | "yearly" | "lifetime" | "every"
    length: timedelta | None = None

    @property
    def label(self) -> str:
        """Return the period as people read it: ``monthly``, ``every 3600s``."""
        if self.length is not None:
            return f"every {int(self.length.total_seconds())}s"
        return self.name

    def to_json(self) -> str | float | None:
        """Return the period in the form budget definitions store."""
        if self.length is not None:
            return self.length.total_seconds()
        return None if self.name == "lifetime" else self.name

    def window(self, at: datetime, tz: tzinfo, anchor: datetime | None = None) -> Window:
        """Return the window of this period that contains the instant ``at``."""
        if at.tzinfo is None:
            raise ValueError("at must be an aware datetime")
        if self.name == "lifetime":
            return Window("all", None, None)
        if self.length is not None:
            return _fixed_window(at, self.length, anchor or _EPOCH)
        local = at.astimezone(tz)
        day = local.date()
        if self.name == "daily":
            first, following = day, day + timedelta(days=1)
            window_id = day.isoformat()
        elif self.name == "weekly":
            first = day - timedelta(days=day.weekday())
            following = first + timedelta(days=7)
            iso_year, iso_week, _ = day.isocalendar()
            window_id = f"{iso_year}-W{iso_week:02d}"
        elif self.name == "monthly":
            first = day.replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
            window_id = f"{day.year:04d}-{day.month:02d}"
        else:  # yearly
            first, following = date(day.year, 1, 1), date(day.year + 1, 1, 1)
            window_id = f"{day.year:04d}"
        return Window(window_id, _midnight(first, tz), _midnight(following, tz))

    def previous(self, window: Window, tz: tzinfo, anchor: datetime | None = None) -> Window:
        """Return the window just before ``window`` (lifetime has none but itself)."""
        if window.start is None:
            return window
        return self.window(window.start - timedelta(microseconds=1), tz, anchor)


def _midnight(day: date, tz: tzinfo) -> datetime:
    # Midnight local time; zoneinfo resolves the rare zones whose midnight is
    # skipped by a DST change to the instant after the gap.
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(timezone.utc)


def _fixed_window(at: datetime, length: timedelta, anchor: datetime) -> Window:
    index = (at - anchor) // length
    start = anchor + index * length
    seconds = int(length.total_seconds())
    return Window(f"every{seconds}s@{int(start.timestamp())}", start, start + length)


#: The longest fixed-length period: a century (for longer, a lifetime budget).
MAX_PERIOD = timedelta(days=36_525)


def parse_period(value: object) -> Period:
    """Turn ``"monthly"``, ``None``, ``"lifetime"``, a ``timedelta`` or seconds into a Period.

    A fixed-length period is a whole number of seconds from one second to a
    century (``MAX_PERIOD``); anything else (negative, sub-second, fractional
    seconds, NaN, infinite, longer) raises ``ValueError`` naming the value.
    """
    if value is None or value == "lifetime":
        return Period("lifetime")
    if isinstance(value, Period):
        return value
    if isinstance(value, str) and value in CALENDAR_PERIODS:
        return Period(value)
    if isinstance(value, timedelta) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        return Period("every", _length(value))
    raise ValueError(
        f"unknown period {value!r}; use 'daily', 'weekly', 'monthly', 'yearly', "
        "None (lifetime) or a datetime.timedelta"
    )


def _length(value: timedelta | float) -> timedelta:
    """Check a fixed period's length (a ``timedelta`` or seconds) and return it."""
    if isinstance(value, timedelta):
        length = value
    else:
        if not math.isfinite(value):
            raise ValueError(f"period must be a finite number of seconds, got {value!r}")
        if value <= 0:
            raise ValueError(f"period must be a positive duration, got {value!r}")
        if value > MAX_PERIOD.total_seconds():
            # Checked before timedelta(), which overflows past 999,999,999 days.
            raise ValueError(_too_long(value))
        length = timedelta(seconds=value)
    if length <= timedelta(0):
        raise ValueError(f"period must be a positive duration, got {value!r}")
    if length > MAX_PERIOD:
        raise ValueError(_too_long(value))
    if length < timedelta(seconds=1) or length % timedelta(seconds=1):
        raise ValueError(
            f"period must be a whole number of seconds (one at least), got {value!r}: "
            "windows are keyed by the second"
        )
    return length


def _too_long(value: object) -> str:
    return (
        f"period must be at most {MAX_PERIOD.days} days (a century), got {value!r}; "
        "use period=None for a budget that never resets"
    )


def parse_tz(value: object) -> tzinfo:
    """Turn ``"UTC"``, ``"America/New_York"`` or a ``tzinfo`` into a time zone."""
    if value is None:
        return timezone.utc
    if isinstance(value, tzinfo):
        return value
    if isinstance(value, str):
        if value.upper() == "UTC":
            return timezone.utc
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {value!r}") from None
    raise ConfigurationError(f"tz must be a zone name or a tzinfo, not {type(value).__name__}")


def tz_name(tz: tzinfo) -> str:
    """Return the name a time zone is stored under (``"UTC"`` or its IANA key)."""
    if tz is timezone.utc:
        return "UTC"
    key = getattr(tz, "key", None)
    if isinstance(key, str):
        return key
    raise ConfigurationError(f"time zone {tz!r} has no IANA name; use zoneinfo.ZoneInfo")


_DAILY_ID = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEKLY_ID = re.compile(r"^(\d{4})-W(\d{2})$")
_MONTHLY_ID = re.compile(r"^(\d{4})-(\d{2})$")
_YEARLY_ID = re.compile(r"^(\d{4})$")
_EVERY_ID = re.compile(r"^every(\d+)s@(-?\d+)$")


def window_end_of(window_id: str) -> datetime | None:
    """Return when the window with this id ends, read from the id alone; ``None`` if never.

    Calendar ids name local dates of an unknown time zone, so the end is
    given as UTC midnight: within a day of the true end. Unknown ids and
    lifetime (``all``) give ``None``.
    """
    try:
        if found := _DAILY_ID.match(window_id):
            year, month, day = map(int, found.groups())
            end = date(year, month, day) + timedelta(days=1)
        elif found := _WEEKLY_ID.match(window_id):
            year, week = map(int, found.groups())
            end = date.fromisocalendar(year, week, 1) + timedelta(days=7)
        elif found := _MONTHLY_ID.match(window_id):
            year, month = map(int, found.groups())
            end = date(year + month // 12, month % 12 + 1, 1)
        elif found := _YEARLY_ID.match(window_id):
            end = date(int(found.group(1)) + 1, 1, 1)
        elif found := _EVERY_ID.match(window_id):
            length, start = map(int, found.groups())
            return datetime.fromtimestamp(start + length, timezone.utc)
        else:
            return None
    except ValueError:  # a date that does not exist: not one of our ids
        return None
    return datetime(end.year, end.month, end.day, tzinfo=timezone.utc)
