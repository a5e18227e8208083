"""Process-wide hooks around every guarded call, for layers built on the core.

The LiteLLM-compatible ``budgetguard.max_budget`` is one such layer: it caps
the process's spend whatever guard a call uses. It registers a hook here; the
core never reads anything the compatibility layer owns. A process with no
hook pays one tuple truth test per call.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["CallHook", "active", "add", "remove"]


class CallHook(Protocol):
    """Something told before each guarded call starts and after it is charged."""

    def before_call(self, guard: BudgetGuard) -> None:
        """Raise ``BudgetExceededError`` to refuse the call before anything is reserved."""

    def after_call(self, guard: BudgetGuard, cost: Decimal) -> None:
        """Count what a call of ``guard`` was charged."""


#: The hooks in force, in the order they were added (read on the hot path).
active: tuple[CallHook, ...] = ()
_lock = threading.Lock()


def add(hook: CallHook) -> None:
    """Call ``hook`` around every guarded call of this process, once."""
    global active
    with _lock:
        if hook not in active:
            active = (*active, hook)


def remove(hook: CallHook) -> None:
    """Stop calling ``hook``."""
    global active
    with _lock:
        active = tuple(h for h in active if h is not hook)
