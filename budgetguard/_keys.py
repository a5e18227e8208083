"""Build and parse every ledger key: this module is the ledger's on-disk format.

The ledger stores whole units per key and knows nothing of what a key means;
the meaning lives here, and only here. Keys are ``|``-separated; user ids and
model names are escaped (``%`` → ``%25``, ``|`` → ``%7C``) so that any id fits.

====================================  ===========================================
key                                   what it counts
====================================  ===========================================
``b|<owner>|<window>``                a budget's use and holds in one window, in
                                      its unit; ``<owner>`` is the concrete
                                      budget name: ``global``, ``user:<id>``,
                                      ``tag:<k>=<v>``, ``daily@user:<id>``, ...
``b|<owner>|<window>|m=<model>``      that window's spend on one model
``t|``                                lifetime spend of everyone
``t|u=<user>`` / ``t|m=<model>``      lifetime spend of one user / one model
``t|u=<user>|m=<model>``              lifetime spend of one user on one model
``d|<day>|u=<user>|m=<model>``        spend of one day (of the guard's time zone)
``d|<day>|g=<tag key>=<value>``       spend of one day by the calls carrying a tag
``x|<budget window key>``             calls a soft or shadow budget had no room for
``s|<scope id>``                      a ``budget_scope(limit=...)`` block's cap
``a|<window key>|<fraction>``         an alert marker: the threshold fired once
``o|#``                               users a ``BudgetManager`` ever created
``o|<budget name>``                   one user's place in the creation order
====================================  ===========================================

Lifetime tallies are kept for ever, except that ``prune(before, lifetime=True)``
sheds the ``t|u=<user>...`` tallies of users with no budget of their own and
no ``d|`` day tally since ``before`` (``idle_user_tallies`` below).

Window ids (``2026-12``, ``2026-W49``, ``2026-12-01``, ``every86400s@...``, ``all``)
come from ``periods.py``; resets are lazy because the window is in the key.
An empty user or model field (``u=``, ``m=``) means "none".
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

__all__ = [
    "alert_key",
    "budget_key",
    "day_key",
    "escape",
    "idle_user_tallies",
    "model_key",
    "model_prefix",
    "over_key",
    "owner_of",
    "parse_tally",
    "place_key",
    "prunable_window",
    "scope_key",
    "tag_day_key",
    "tag_day_prefix",
    "tally_keys",
    "total_key",
    "unescape",
]

BUDGET = "b|"
TOTAL = "t|"
DAY = "d|"
SCOPE = "s|"
ALERT = "a|"
OVER = "x|"
MODEL = "|m="


def escape(text: str) -> str:
    """Make a user id or model name safe inside a ``|``-separated ledger key."""
    if "%" in text or "|" in text:
        return text.replace("%", "%25").replace("|", "%7C")
    return text


def unescape(text: str) -> str:
    """Undo ``escape``."""
    return text.replace("%7C", "|").replace("%25", "%") if "%" in text else text


def budget_key(owner: str, window_id: str) -> str:
    """Return the key of budget ``owner`` (``global``, ``user:<id>``) in one window."""
    return f"{BUDGET}{escape(owner)}|{window_id}"


def model_key(key: str, model: str | None) -> str:
    """Return the key counting the part of ``key`` spent on ``model``."""
    return f"{key}{MODEL}{escape(model) if model is not None else ''}"


def model_prefix(key: str) -> str:
    """Return the prefix of every per-model key under ``key``."""
    return key + MODEL


def total_key(user: str | None = None, model: str | None = None) -> str:
    """Return the lifetime tally of everyone, one user, one model, or both."""
    if user is None and model is None:
        return TOTAL
    if model is None:
        return f"{TOTAL}u={escape(user or '')}"
    if user is None:
        return f"{TOTAL}m={escape(model)}"
    return f"{TOTAL}u={escape(user)}{MODEL}{escape(model)}"


def day_key(day: str, user: str | None, model: str | None) -> str:
    """Return the tally of one day's spend by one user on one model."""
    u = escape(user) if user is not None else ""
    m = escape(model) if model is not None else ""
    return f"{DAY}{day}|u={u}{MODEL}{m}"


def tally_keys(
    user: str | None,
    model: str | None,
    day: str,
    budget_keys: Iterable[str],
    tags: Iterable[tuple[str, str]] = (),
) -> tuple[str, ...]:
    """Return every counter a settled call adds to besides the budgets it held."""
    u = escape(user) if user is not None else ""
    m = escape(model) if model is not None else ""
    found = [TOTAL, f"{TOTAL}u={u}", f"{TOTAL}m={m}", f"{TOTAL}u={u}{MODEL}{m}"]
    found.append(f"{DAY}{day}|u={u}{MODEL}{m}")
    found.extend(f"{key}{MODEL}{m}" for key in budget_keys)
    found.extend(tag_day_key(day, key, value) for key, value in tags)
    return tuple(found)


def tag_day_key(day: str, key: str, value: str) -> str:
    """Return the tally of one day's spend by the calls tagged ``key=value``."""
    return f"{DAY}{day}|g={escape(key)}={escape(value)}"


def tag_day_prefix(day: str) -> str:
    """Return the prefix of one day's tag tallies."""
    return f"{DAY}{day}|g="


def over_key(key: str) -> str:
    """Return the counter of calls a soft or shadow budget's window had no room for."""
    return OVER + key


ORDER = "o|"
#: The counter of users a ``BudgetManager`` ever created.
CREATED = "o|#"


def place_key(budget_name: str) -> str:
    """Return the key holding a ``BudgetManager`` user's place in the creation order."""
    return ORDER + escape(budget_name)


def scope_key(scope_id: str) -> str:
    """Return the key counting one scope block's spend against its cap."""
    return SCOPE + scope_id


def alert_key(key: str, fraction: Decimal) -> str:
    """Return the marker that an alert at ``fraction`` of ``key`` has fired."""
    return f"{ALERT}{key}|{fraction}"


def owner_of(key: str) -> str:
    """Name what a held key belongs to: ``user:alice``, ``global``, ``scope`` or the key."""
    if key.startswith(SCOPE):
        return "scope"
    if key.startswith(BUDGET):
        return unescape(key.split("|")[1])
    return key


def parse_tally(text: str) -> dict[str, str | None]:
    """Turn ``u=alice|m=gpt-4o`` into ``{"user": "alice", "model": "gpt-4o"}``."""
    found: dict[str, str | None] = {}
    for part in text.split("|"):
        name, _, value = part.partition("=")
        field = {"u": "user", "m": "model", "g": "tag"}.get(name)
        if field is not None:
            found[field] = unescape(value) if value else None
    return found


# (prefix, index of the window id among the key's |-separated parts)
_WINDOWED = ((BUDGET, 2), (DAY, 1), (ALERT + BUDGET, 3), (OVER + BUDGET, 3))


#: The prefix of every lifetime tally of one user (``t|u=<user>`` and per model).
USER_TALLY = TOTAL + "u="


def user_of_tally(key: str) -> str | None:
    """Return the user of a ``t|u=...`` or ``d|<day>|u=...`` tally (``None``: no user)."""
    if key.startswith(DAY):
        key = key.split("|", 2)[2] if key.count("|") >= 2 else ""
    elif key.startswith(TOTAL):
        key = key[len(TOTAL) :]
    return parse_tally(key).get("user")


def day_of(key: str) -> str | None:
    """Return the day id of a ``d|<day>|...`` tally, else ``None``."""
    if not key.startswith(DAY):
        return None
    parts = key.split("|")
    return parts[1] if len(parts) > 1 else None


def idle_user_tallies(
    tallies: Iterable[str], active_users: set[str | None], budgeted: set[str]
) -> list[str]:
    """Return the user lifetime tallies that may go: not active, no budget of their own.

    ``active_users`` are the users with a day tally still recent;
    ``budgeted`` the users with a budget of their own. The tallies of calls
    without a user (``t|u=``) always stay.
    """
    doomed: list[str] = []
    for key in tallies:
        if not key.startswith(USER_TALLY):
            continue
        user = user_of_tally(key)
        if user is None or user in active_users or user in budgeted:
            continue
        doomed.append(key)
    return doomed


def prunable_prefixes() -> tuple[str, ...]:
    """Return the prefixes of the keys that belong to one window (``prune`` scans these)."""
    return tuple(prefix for prefix, _ in _WINDOWED)


def prunable_window(key: str) -> str | None:
    """Return the window id of a windowed key, or ``None`` for keys kept for ever."""
    for prefix, position in _WINDOWED:
        if key.startswith(prefix):
            parts = key.split("|")
            return parts[position] if len(parts) > position else None
    return None
