"""Drop-in replacements for LiteLLM's budget API, built on budgetguard's exact ledger.

``BudgetManager`` has LiteLLM's methods and return shapes; ``budgetguard.max_budget``
and ``budgetguard._current_cost`` are LiteLLM's process-wide budget;
``budgetguard.compat.server`` serves LiteLLM's hosted budget protocol on any ledger,
without authentication (for tests; ``budgetguard serve`` runs ``budgetguard.server``);
``json_safe(record)`` makes any returned record safe for ``json.dumps``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BudgetManager", "BudgetServerError", "UnknownUserError", "json_safe"]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``import budgetguard`` loads this package for
    # max_budget and should not pay for the HTTP client and file handling.
    if name in ("BudgetManager", "BudgetServerError"):
        from . import budget_manager

        return getattr(budget_manager, name)
    if name == "json_safe":
        from ._json import json_safe

        return json_safe
    if name == "UnknownUserError":
        from ._store import UnknownUserError

        return UnknownUserError
    raise AttributeError(f"module 'budgetguard.compat' has no attribute {name!r}")
