"""budgetguard: keep LLM spend under control.

Wrap LLM calls with ``@budgeted`` or ``with budget_scope(user)``; budgetguard
knows who each call is for, prices it exactly from its usage, charges an
exact ledger atomically, refuses calls that would break a budget before any
money is spent, and exports spend as OpenTelemetry metrics.
"""

from __future__ import annotations

import sys
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._default import configure, default_guard
from .budgets import Budget
from .decorators import arg, budgeted
from .errors import (
    BudgetExceededError,
    BudgetGuardError,
    ConfigurationError,
    StorageError,
    UnknownModelError,
    UsageMissingError,
)
from .events import BudgetStatus, CallOutcome, ThresholdCrossing
from .guard import BudgetGuard, charge
from .scope import budget_scope, current_scope, current_user, run_in_context, submit_in_context

if TYPE_CHECKING:
    from ._instrument import instrument, uninstrument

# LiteLLM's global budget: ``budgetguard.max_budget = 0.001`` caps this
# process's spend through guarded calls, ``budgetguard._current_cost`` is its
# running total. Both are properties of the module's class (see
# compat/_process.py), so an assignment is validated and takes effect at once;
# these annotations only tell type checkers that they exist.
max_budget: Decimal | float | int | None
_current_cost: Decimal

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetExceededError",
    "BudgetGuard",
    "BudgetGuardError",
    "BudgetManager",
    "BudgetStatus",
    "CallOutcome",
    "ConfigurationError",
    "StorageError",
    "ThresholdCrossing",
    "UnknownModelError",
    "UsageMissingError",
    "__version__",
    "arg",
    "budget_scope",
    "budgeted",
    "budgets",
    "charge",
    "configure",
    "cost_of",
    "count_tokens",
    "current_scope",
    "current_user",
    "default_guard",
    "delete_budget",
    "extract_usage",
    "get_budget",
    "instrument",
    "load_prices",
    "max_budget",
    "projected_cost",
    "record",
    "register_model",
    "remaining",
    "reset",
    "run_in_context",
    "set_budget",
    "set_default_budget",
    "spend",
    "spend_by_model",
    "submit_in_context",
    "uninstrument",
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


def __getattr__(name: str) -> Any:
    # Pricing and token counting load their data on first use, not at import.
    if name in ("cost_of", "register_model", "load_prices"):
        from . import pricing

        return getattr(pricing, name)
    if name in ("count_tokens", "projected_cost"):
        from . import tokens

        return getattr(tokens, name)
    if name in ("instrument", "uninstrument"):
        # Patching needs wrapt and the stream proxies: load them on first use.
        from . import _instrument

        return getattr(_instrument, name)
    if name == "BudgetManager":
        from .compat import BudgetManager

        return BudgetManager
    if name == "extract_usage":
        from .usage import extract_usage

        return extract_usage
    raise AttributeError(f"module 'budgetguard' has no attribute {name!r}")


from .compat._process import install as _install_max_budget  # noqa: E402 - needs the API above

_install_max_budget(sys.modules[__name__])
