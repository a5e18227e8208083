"""The process-wide budget LiteLLM exposes as ``litellm.max_budget``.

``budgetguard.max_budget = 0.001`` caps what this process may spend through
guarded calls, whatever guard or ledger they use; ``budgetguard._current_cost``
is the running total. Like LiteLLM, the cap is checked before each call
against what finished calls cost, and the call that is refused raises
``BudgetExceededError`` carrying ``current_cost`` and ``max_budget``.

Assignments to the module attribute are caught by giving the ``budgetguard``
module a class with properties: the value is validated once, when it is set,
and the guard's hot path only reads the core's hook registry, empty in a process
that sets no cap.
"""

from __future__ import annotations

import math
import threading
import types
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING

from .. import _hooks
from ..errors import BudgetExceededError
from ..money import from_units, to_decimal, to_units

if TYPE_CHECKING:
    from ..guard import BudgetGuard

__all__ = ["ProcessBudget", "exempt", "install", "process_budget"]


class ProcessBudget:
    """Hold this process's cap and the spend counted against it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._units = 0
        self.limit: Decimal | None = None
        # Guards whose spend is bookkeeping of calls made elsewhere (a
        # BudgetManager's); counting it would count the same call twice.
        self._exempt: weakref.WeakSet[BudgetGuard] = weakref.WeakSet()

    @property
    def current_cost(self) -> Decimal:
        """Return what guarded calls of this process spent since counting began."""
        return from_units(self._units)

    def set_limit(self, value: object) -> None:
        """Set the cap in dollars; ``None``, ``0`` or infinity turns it off, as in LiteLLM."""
        if _is_positive_infinity(value):
            value = None  # LiteLLM's tests lift the cap this way
        limit = None if value is None else to_decimal(value, "max_budget")
        self.limit = limit if limit else None
        # Counting starts with the first cap and keeps its total when the cap
        # is lifted, so that setting it again continues where it was.
        if self.limit is not None:
            _hooks.add(self)

    def set_current_cost(self, value: object) -> None:
        """Set the running total (``budgetguard._current_cost = 0`` restarts it)."""
        units = to_units(to_decimal(value, "_current_cost"))
        with self._lock:
            self._units = units

    def before_call(self, guard: BudgetGuard) -> None:
        """Refuse a call once the process has spent its cap."""
        limit = self.limit
        if limit is None or guard in self._exempt:
            return
        spent = from_units(self._units)
        if spent >= limit:
            raise BudgetExceededError(
                budget="max_budget",
                limit=limit,
                spent=spent,
                reserved=Decimal(0),
                requested=Decimal(0),
                period="this process",
                message=f"Budget has been exceeded! Current cost: {spent}, Max budget: {limit} "
                "(budgetguard.max_budget, this process's spend through guarded calls)",
            )

    def after_call(self, guard: BudgetGuard, cost: Decimal) -> None:
        """Count ``cost`` dollars a call of ``guard`` spent."""
        if guard in self._exempt:
            return
        units = to_units(cost)
        with self._lock:
            self._units += units


def _is_positive_infinity(value: object) -> bool:
    if isinstance(value, float):
        return value == math.inf
    return isinstance(value, Decimal) and value.is_infinite() and value > 0


process_budget = ProcessBudget()


def exempt(guard: BudgetGuard) -> None:
    """Keep ``guard``'s spend out of the process total (it records calls counted elsewhere)."""
    process_budget._exempt.add(guard)


class _BudgetguardModule(types.ModuleType):
    """The ``budgetguard`` module, with LiteLLM's global budget as assignable attributes."""

    @property
    def max_budget(self) -> Decimal | None:
        """Return the process-wide cap in dollars, ``None`` when there is none."""
        return process_budget.limit

    @max_budget.setter
    def max_budget(self, value: object) -> None:
        process_budget.set_limit(value)

    @property
    def _current_cost(self) -> Decimal:
        """Return this process's spend through guarded calls (LiteLLM's name)."""
        return process_budget.current_cost

    @_current_cost.setter
    def _current_cost(self, value: object) -> None:
        process_budget.set_current_cost(value)


def install(module: types.ModuleType) -> None:
    """Give the ``budgetguard`` module its assignable ``max_budget`` and ``_current_cost``."""
    module.__class__ = _BudgetguardModule
