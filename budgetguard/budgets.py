"""Budget definitions and the ledger keys they charge.

A budget caps one *subject* in one *unit* over one window:

==========================  ================================================
name                        whose calls it caps
==========================  ================================================
``global``                  everyone's, together
``default``                 each user's without a budget of their own
``user:<id>``               one user's
``tag:<key>=<value>``       calls in a scope tagged ``key=value``;
                            ``tag:<key>=*`` gives each value its own budget
``model:<pattern>``         calls of the models matching a pattern
                            (``gpt-5*``), all of them together
``provider:<name>``         calls through one provider (``openai``,
                            ``azure.ai.openai``, ``aws.bedrock``)
``<label>@<subject>``       a further budget of the same subject: another
                            window or unit (``daily@user:alice``)
``+<budget name>``          a boost: a temporary limit for that budget,
                            until a time, the base budget left as it is
==========================  ================================================

Units: ``usd`` (the default), ``input_tokens``, ``output_tokens``,
``tokens``, ``requests`` (calls started) and ``concurrency`` (calls in
flight). Modes: ``hard`` refuses, ``soft`` lets the call run and alerts,
``shadow`` lets it run and only counts the calls it would have refused.
A budget may name a ``parent`` budget: every ancestor is checked in the same
reservation as the budget itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any

from ._keys import budget_key, escape, unescape
from .money import from_units, to_decimal, to_units
from .periods import Period, Window, parse_period, parse_tz, tz_name

__all__ = [
    "DEFAULT",
    "EMPTY_USER",
    "GLOBAL",
    "MODES",
    "UNITS",
    "Budget",
    "budget_name",
    "escape",
    "limit_at",
    "split_name",
    "subject_name",
    "unescape",
    "user_of",
]

GLOBAL = "global"
DEFAULT = "default"
BOOST = "+"

#: The units a budget counts, in the order of the ledger's unit index (see
#: ``Hold.unit``): a settle charges each key the amount of its unit.
UNITS = ("usd", "input_tokens", "output_tokens", "tokens", "requests", "concurrency")
MODES = ("hard", "soft", "shadow")
_KINDS = ("user:", "tag:", "model:", "provider:")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def subject_name(
    user: str | None = None,
    *,
    tag: str | tuple[str, str] | None = None,
    model: str | None = None,
    provider: str | None = None,
    default: bool = False,
) -> str:
    """Return the name of one subject: ``global``, ``user:<id>``, ``tag:k=v``, ...

    At most one of ``user``, ``tag``, ``model``, ``provider`` (and
    ``default``); none names the global budget. A tag is ``"key=value"`` or
    a ``(key, value)`` pair; the value ``*`` gives every value its own budget.
    """
    given = [
        name
        for name, value in (("user", user), ("tag", tag), ("model", model), ("provider", provider))
        if value is not None
    ]
    if default:
        given.append("default")
    if len(given) > 1:
        raise ValueError(f"a budget has one subject; got {' and '.join(given)}")
    if default:
        return DEFAULT
    if tag is not None:
        key, value = _tag(tag)
        return f"tag:{key}={value}"
    if model is not None:
        return f"model:{_text(model, 'model')}"
    if provider is not None:
        return f"provider:{_text(provider, 'provider')}"
    return budget_name(user)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"{what} must be a non-empty string without edge spaces, got {value!r}")
    return value


def _tag(tag: object) -> tuple[str, str]:
    """Check a tag (``"team=search"`` or ``("team", "search")``) and return its parts."""
    if isinstance(tag, str):
        key, sep, value = tag.partition("=")
        if not sep:
            raise ValueError(f"a tag is 'key=value', got {tag!r}")
    elif isinstance(tag, tuple) and len(tag) == 2:
        key, value = tag
    else:
        raise ValueError(f"a tag is 'key=value' or a (key, value) pair, got {tag!r}")
    key = _text(key, "tag key")
    if "=" in key:
        raise ValueError(f"a tag key cannot contain '=', got {key!r}")
    return key, _text(value, "tag value")


def split_name(name: str) -> tuple[str | None, str]:
    """Split a budget name into its label (``None`` for a subject's first) and subject."""
    if name in (GLOBAL, DEFAULT) or name.startswith(_KINDS):
        return None, name
    label, sep, subject = name.partition("@")
    if sep and _LABEL.match(label) and (subject in (GLOBAL, DEFAULT) or subject.startswith(_KINDS)):
        return label, subject
    raise ValueError(f"not a budget name: {name!r}")


def labelled(label: str | None, subject: str) -> str:
    """Return the name of ``subject``'s budget called ``label`` (``None``: its first)."""
    if label is None:
        return subject
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ValueError(
            f"a budget label is letters, digits, '_', '.' or '-' (64 at most), got {label!r}"
        )
    return f"{label}@{subject}"


def check_name(name: str) -> str:
    """Return ``name`` if it names a budget (``user:alice``, ``daily@tag:team=x``), else raise."""
    if not isinstance(name, str):
        raise ValueError(f"a budget name is a string, not {type(name).__name__}")
    base = name[1:] if name.startswith(BOOST) else name
    _, subject = split_name(base)
    if subject.startswith("tag:"):
        _tag(subject[4:])
    return name


@dataclass(eq=False)
class Budget:
    """A limit per period on one subject, in one unit (see the module's table)."""

    limit: Decimal
    period: Period
    tz: tzinfo
    name: str  # "global", "default", "user:<id>", "tag:k=v", "daily@user:<id>", ...
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    unit: str = "usd"
    mode: str = "hard"
    parent: str | None = None  # the name of a budget checked with this one
    sliding: bool = False  # count the previous window's spend by the share of it still in view
    until: datetime | None = None  # a boost's end (boosts only)
    # The current window, cached until it ends: building it costs microseconds
    # and every guarded call needs it.
    _window: Window | None = field(default=None, init=False, repr=False)
    _window_start: float = field(default=float("inf"), init=False, repr=False)
    _window_end: float = field(default=-1.0, init=False, repr=False)
    _limit_units: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._limit_units = to_units(self.limit) if self.unit == "usd" else int(self.limit)

    @classmethod
    def create(
        cls,
        limit: object,
        *,
        name: str,
        period: object = None,
        tz: object = None,
        created_at: datetime | None = None,
        unit: object = "usd",
        mode: object = "hard",
        parent: object = None,
        sliding: object = False,
        until: object = None,
    ) -> Budget:
        """Validate user input and build a budget (nothing is stored)."""
        check_name(name)
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}; use one of {', '.join(UNITS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if parent is not None:
            if not isinstance(parent, str) or parent.startswith(BOOST):
                raise ValueError(f"parent must be a budget name, got {parent!r}")
            check_name(parent)
            if parent == name:
                raise ValueError(f"budget {name!r} cannot be its own parent")
        if not isinstance(sliding, bool):
            raise ValueError(f"sliding must be True or False, got {sliding!r}")
        found_period = parse_period(period)
        if unit == "concurrency":
            found_period = parse_period(None)  # calls in flight: no window
        if sliding and found_period.name == "lifetime":
            raise ValueError("a sliding budget needs a period: a lifetime has no previous window")
        if sliding and unit == "concurrency":
            raise ValueError("a concurrency limit has no window to slide")
        if until is not None and not isinstance(until, datetime):
            raise ValueError(f"until must be a datetime, got {until!r}")
        if isinstance(until, datetime) and until.tzinfo is None:
            raise ValueError("until must be an aware datetime (with a time zone)")
        return cls(
            limit=to_decimal(limit, "limit") if unit == "usd" else _count(limit, str(unit)),
            period=found_period,
            tz=parse_tz(tz),
            name=name,
            created_at=created_at or datetime.now(timezone.utc),
            unit=str(unit),
            mode=str(mode),
            parent=parent,
            sliding=sliding,
            until=until,
        )

    @property
    def user(self) -> str | None:
        """Return the user this budget belongs to, ``None`` for any other subject."""
        return user_of(self.subject)

    @property
    def subject(self) -> str:
        """Return whose calls this budget caps: ``user:alice``, ``tag:team=x``, ``global``."""
        name = self.name[1:] if self.name.startswith(BOOST) else self.name
        return split_name(name)[1]

    @property
    def label(self) -> str | None:
        """Return the label that tells this budget from its subject's others (``None``: first)."""
        name = self.name[1:] if self.name.startswith(BOOST) else self.name
        return split_name(name)[0]

    @property
    def kind(self) -> str:
        """Return the subject's kind: ``global``, ``default``, ``user``, ``tag``, ``model``, ..."""
        return self.subject.partition(":")[0]

    @property
    def is_boost(self) -> bool:
        """Tell whether this is a boost (``+<name>``) rather than a budget."""
        return self.name.startswith(BOOST)

    @property
    def limit_units(self) -> int:
        """Return the limit in ledger units (micro-units of a dollar, or the count)."""
        return self._limit_units

    def amount(self, units: int) -> Decimal:
        """Turn ledger units of this budget's unit into dollars or a count."""
        return from_units(units) if self.unit == "usd" else Decimal(units)

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

    def key_for_window(
        self, window: Window, *, user: str | None = None, subject: str | None = None
    ) -> str:
        """Return the ledger key of a given window.

        ``user`` names whose window a default budget keys; ``subject`` the
        concrete subject of a per-value budget (``tag:tenant=acme`` for
        ``tag:tenant=*``).
        """
        if subject is None:
            subject = budget_name(user) if user is not None else self.subject
        return budget_key(labelled(self.label, subject), window.id)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able definition the ledger stores."""
        found: dict[str, Any] = {
            "limit": str(self.limit),
            "period": self.period.to_json(),
            "tz": tz_name(self.tz),
            "created_at": self.created_at.isoformat(),
        }
        # Written only when set, so that the definitions of dollar budgets
        # stay readable by earlier versions.
        if self.unit != "usd":
            found["unit"] = self.unit
        if self.mode != "hard":
            found["mode"] = self.mode
        if self.parent is not None:
            found["parent"] = self.parent
        if self.sliding:
            found["sliding"] = True
        if self.until is not None:
            found["until"] = self.until.isoformat()
        return found

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Budget:
        """Rebuild a budget from the ledger's stored definition."""
        until = data.get("until")
        return cls.create(
            data["limit"],
            name=name,
            period=data.get("period"),
            tz=data.get("tz"),
            created_at=datetime.fromisoformat(data["created_at"]),
            unit=data.get("unit", "usd"),
            mode=data.get("mode", "hard"),
            parent=data.get("parent"),
            sliding=data.get("sliding", False),
            until=datetime.fromisoformat(until) if until is not None else None,
        )

    def same_definition(self, other: Budget) -> bool:
        """Tell whether two budgets would charge the same keys with the same limit."""
        return self.to_dict() == other.to_dict() and self.name == other.name

    def __repr__(self) -> str:
        extra = "" if self.unit == "usd" else f", unit={self.unit!r}"
        if self.mode != "hard":
            extra += f", mode={self.mode!r}"
        return f"Budget({self.name!r}, limit={self.limit}, period={self.period.label!r}{extra})"


def limit_at(budget: Budget, budgets: Mapping[str, Budget], now: float) -> Decimal:
    """Return ``budget``'s limit at ``now``: its boost's while one is in force."""
    boost = budgets.get(BOOST + budget.name)
    if boost is not None and boost.until is not None and now < boost.until.timestamp():
        return boost.limit
    return budget.limit


def _count(value: object, unit: str) -> Decimal:
    """Check a limit counted in whole units (tokens, requests, calls)."""
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise ValueError(f"a {unit} limit is a whole number, got {value!r}")
    try:
        number = Decimal(value) if not isinstance(value, Decimal) else value
    except ArithmeticError:
        raise ValueError(f"a {unit} limit is a whole number, got {value!r}") from None
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        raise ValueError(f"a {unit} limit is a whole number, not negative, got {value!r}")
    if number >= 2**62:
        raise ValueError(f"a {unit} limit of {value!r} is too large")
    return Decimal(int(number))
