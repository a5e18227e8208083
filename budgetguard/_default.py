"""The default guard behind the module-level functions, as ``logging``'s root logger."""

from __future__ import annotations

import threading
from typing import Any

from .guard import BudgetGuard

__all__ = ["configure", "default_guard"]

_guard: BudgetGuard | None = None
_lock = threading.Lock()


def default_guard() -> BudgetGuard:
    """Return the default guard, creating it (``memory://``) on first use."""
    guard = _guard
    if guard is None:
        with _lock:
            if _guard is None:
                _set(BudgetGuard())
            guard = _guard
    assert guard is not None
    return guard


def configure(ledger: Any = "memory://", **options: Any) -> BudgetGuard:
    """Replace the default guard with one built from these options; return it.

    Takes the same arguments as ``BudgetGuard``. The previous default guard
    is closed (its metrics stop, its ledger connection closes).
    """
    guard = BudgetGuard(ledger, **options)
    with _lock:
        previous = _guard
        _set(guard)
    if previous is not None:
        previous.close()
    return guard


def _set(guard: BudgetGuard | None) -> None:
    global _guard
    _guard = guard
