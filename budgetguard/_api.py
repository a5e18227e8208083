"""The module-level functions: each one is the default guard's method of the same name.

As ``logging``'s module functions use the root logger, these use the guard
that ``configure()`` set (a ``memory://`` one until then). Every function
here is a ``BudgetGuard`` method too; multi-tenant apps call those.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from ._default import default_guard
from .budgets import Budget

__all__ = [
    "aremaining",
    "aspend",
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
) -> Budget:
    """Set the budget of ``user``, or with no user the global budget (default guard)."""
    return default_guard().set_budget(limit, user=user, period=period, tz=tz, created_at=created_at)


def set_default_budget(limit: object, *, period: object = None, tz: object = None) -> Budget:
    """Give every user without a budget of their own this budget (default guard)."""
    return default_guard().set_default_budget(limit, period=period, tz=tz)


def get_budget(user: str | None = None) -> Budget | None:
    """Return the budget of ``user`` or the global one (default guard)."""
    return default_guard().get_budget(user)


def delete_budget(user: str | None = None) -> bool:
    """Delete the budget of ``user`` or the global one (default guard)."""
    return default_guard().delete_budget(user)


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


def get_default_budget() -> Budget | None:
    """Return the default budget for users without one of their own (default guard)."""
    return default_guard().get_default_budget()


def delete_default_budget() -> bool:
    """Delete the default budget (default guard)."""
    return default_guard().delete_default_budget()


def prune(before: datetime) -> int:
    """Delete the counters of windows that ended before ``before`` (default guard)."""
    return default_guard().prune(before)


async def aspend(user: str | None = None, *, model: str | None = None) -> Decimal:
    """Do ``spend`` without blocking the event loop (default guard)."""
    return await default_guard().aspend(user, model=model)


async def aremaining(user: str | None = None) -> Decimal | None:
    """Do ``remaining`` without blocking the event loop (default guard)."""
    return await default_guard().aremaining(user)
