"""budgetguard: keep LLM spend under control.

Wrap LLM calls with ``@budgeted`` or ``with budget_scope(user)``; budgetguard
knows who each call is for, prices it exactly from its usage, charges an
exact ledger atomically, refuses calls that would break a budget before any
money is spent, and exports spend as OpenTelemetry metrics.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._api import (
    aremaining,
    aspend,
    boost_budget,
    budgets,
    delete_budget,
    delete_default_budget,
    get_budget,
    get_default_budget,
    prune,
    record,
    remaining,
    reset,
    set_budget,
    set_default_budget,
    spend,
    spend_by_model,
)
from ._call import current_call
from ._default import configure, default_guard
from .budgets import Budget
from .decorators import arg, budgeted, literal
from .errors import (
    BudgetExceededError,
    BudgetGuardError,
    ConfigurationError,
    EstimateMissingError,
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
    "BudgetServerError",
    "BudgetStatus",
    "CallOutcome",
    "ConfigurationError",
    "EstimateMissingError",
    "StorageError",
    "ThresholdCrossing",
    "UnknownModelError",
    "UnknownUserError",
    "UsageMissingError",
    "__version__",
    "aremaining",
    "arg",
    "aspend",
    "boost_budget",
    "budget_scope",
    "budgeted",
    "budgets",
    "charge",
    "configure",
    "cost_of",
    "count_tokens",
    "current_call",
    "current_scope",
    "current_user",
    "default_guard",
    "delete_budget",
    "delete_default_budget",
    "extract_usage",
    "get_budget",
    "get_default_budget",
    "instrument",
    "literal",
    "load_prices",
    "max_budget",
    "projected_cost",
    "prune",
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
    if name in ("BudgetManager", "BudgetServerError", "UnknownUserError"):
        from . import compat

        return getattr(compat, name)
    if name == "extract_usage":
        from .usage import extract_usage

        return extract_usage
    raise AttributeError(f"module 'budgetguard' has no attribute {name!r}")


from .compat._process import install as _install_max_budget  # noqa: E402 - needs the API above

_install_max_budget(sys.modules[__name__])
