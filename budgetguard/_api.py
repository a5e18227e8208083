"""The module-level functions: each one is the default guard's method of the same name.

As ``logging``'s module functions use the root logger, these use the guard
that ``configure()`` set (a ``memory://`` one until then). Every function
here is a ``BudgetGuard`` method too; multi-tenant apps call those.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ._default import default_guard
from .budgets import Budget

__all__ = [
    "aremaining",
    "aspend",
    "boost_budget",
    "budgets",
    "delete_budget",
    "delete_default_budget",
    "get_budget",
    "get_default_budget",
    "prune",
    "record",
    "remaining",
    "reset",
    "set_budget",
    "set_default_budget",
    "spend",
    "spend_by_model",
]


def set_budget(
    limit: object,
    *,
    user: str | None = None,
    period: object = None,
    tz: object = None,
    created_at: datetime | None = None,
    tag: str | tuple[str, str] | None = None,
    model: str | None = None,
    provider: str | None = None,
    unit: str = "usd",
    mode: str = "hard",
    parent: str | None = None,
    label: str | None = None,
    sliding: bool = False,
) -> Budget:
    """Set the budget of ``user``, a tag, a model or a provider, or the global one (default guard).

    The keywords are those of :meth:`BudgetGuard.set_budget`.
    """
    return default_guard().set_budget(
        limit, user=user, period=period, tz=tz, created_at=created_at,
        tag=tag, model=model, provider=provider, unit=unit, mode=mode,
        parent=parent, label=label, sliding=sliding,
    )  # fmt: skip


def set_default_budget(
    limit: object,
    *,
    period: object = None,
    tz: object = None,
    unit: str = "usd",
    mode: str = "hard",
    parent: str | None = None,
    label: str | None = None,
    sliding: bool = False,
) -> Budget:
    """Give every user without a budget of their own this budget (default guard)."""
    return default_guard().set_default_budget(
        limit, period=period, tz=tz, unit=unit, mode=mode, parent=parent, label=label,
        sliding=sliding,
    )  # fmt: skip


def boost_budget(
    limit: object,
    *,
    until: datetime | None = None,
    duration: timedelta | float | None = None,
    user: str | None = None,
    tag: str | tuple[str, str] | None = None,
    model: str | None = None,
    provider: str | None = None,
    default: bool = False,
    unit: str = "usd",
    label: str | None = None,
) -> Budget:
    """Give a budget another limit until a time, the budget itself unchanged (default guard).

    The keywords are those of :meth:`BudgetGuard.boost_budget`.
    """
    return default_guard().boost_budget(
        limit, until=until, duration=duration, user=user, tag=tag, model=model,
        provider=provider, default=default, unit=unit, label=label,
    )  # fmt: skip


def get_budget(
    user: str | None = None,
    *,
    tag: str | tuple[str, str] | None = None,
    model: str | None = None,
    provider: str | None = None,
    unit: str = "usd",
    label: str | None = None,
) -> Budget | None:
    """Return the budget of ``user``, of another subject, or the global one (default guard)."""
    return default_guard().get_budget(
        user, tag=tag, model=model, provider=provider, unit=unit, label=label
    )


def delete_budget(
    user: str | None = None,
    *,
    tag: str | tuple[str, str] | None = None,
    model: str | None = None,
    provider: str | None = None,
    unit: str = "usd",
    label: str | None = None,
    boost: bool = False,
) -> bool:
    """Delete the budget of ``user`` (or another subject's), or only its boost (default guard)."""
    return default_guard().delete_budget(
        user, tag=tag, model=model, provider=provider, unit=unit, label=label, boost=boost
    )


def budgets() -> list[Budget]:
    """Return every budget of the default guard."""
    return default_guard().budgets()


def spend(user: str | None = None, *, model: str | None = None) -> Decimal:
    """Return what ``user`` (or everyone) spent in the current period (default guard)."""
    return default_guard().spend(user, model=model)


def spend_by_model(user: str | None = None) -> dict[str, Decimal]:
    """Return this period's spend per model (default guard)."""
    return default_guard().spend_by_model(user)


def remaining(user: str | None = None) -> Decimal | None:
    """Return what is left of the tightest budget that applies, or ``None`` (default guard)."""
    return default_guard().remaining(user)


def reset(user: str | None = None) -> None:
    """Start the current period of ``user``'s budget again at zero (default guard)."""
    default_guard().reset(user)


def record(response: Any, *, user: str | None = None, model: str | None = None) -> Decimal:
    """Charge a response to the current scope from its usage (default guard)."""
    return default_guard().record(response, user=user, model=model)


def get_default_budget(*, unit: str = "usd", label: str | None = None) -> Budget | None:
    """Return the default budget for users without one of their own (default guard)."""
    return default_guard().get_default_budget(unit=unit, label=label)


def delete_default_budget(
    *, unit: str = "usd", label: str | None = None, boost: bool = False
) -> bool:
    """Delete the default budget, or only its boost (default guard)."""
    return default_guard().delete_default_budget(unit=unit, label=label, boost=boost)


def prune(before: datetime, *, lifetime: bool = False) -> int:
    """Delete the counters of windows that ended before ``before`` (default guard).

    A ``before`` in the future is refused with ``ValueError`` (never
    clamped): a window that has not ended is never pruned. ``lifetime=True``
    also deletes idle users' lifetime tallies; see ``BudgetGuard.prune``.
    """
    return default_guard().prune(before, lifetime=lifetime)


async def aspend(user: str | None = None, *, model: str | None = None) -> Decimal:
    """Do ``spend`` without blocking the event loop (default guard)."""
    return await default_guard().aspend(user, model=model)


async def aremaining(user: str | None = None) -> Decimal | None:
    """Do ``remaining`` without blocking the event loop (default guard)."""
    return await default_guard().aremaining(user)
