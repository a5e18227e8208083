"""What the parts of ``BudgetGuard`` may rely on: its state and shared helpers.

``BudgetGuard`` is made of parts (the call lifecycle, the queries), each in
a module of its own. This class names, for the type checker only, what the
guard gives every part; at run time it adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._alerts import Alerts
    from ._costing import Pricer
    from ._estimate import Learner
    from ._lifecycle import OutcomeParts
    from ._outbox import Outbox
    from ._plan import Planner
    from .budgets import Budget
    from .events import Listener
    from .ledger import Ledger

__all__ = ["GuardParts"]


class GuardParts:
    """The state and helpers a part of ``BudgetGuard`` may use."""

    __slots__ = ()

    if TYPE_CHECKING:  # given by BudgetGuard.__init__ and its own methods
        ledger: Ledger
        clock: Callable[[], float]
        tz: tzinfo
        reservation_ttl: float
        budget_cache_ttl: float
        on_storage_error: str
        on_missing_cost: str
        on_missing_estimate: str
        outside_scope: str
        _learner: Learner
        _pricer: Pricer
        _alerts: Alerts
        _planner: Planner
        _ids: Iterator[int]
        _id_prefix: str
        _listeners: list[Listener]
        _outcomes: OutcomeParts
        _budget_defs: dict[str, Budget]
        _budgets_loaded_at: float
        _outbox: Outbox

        def _budgets(self, refresh: bool = False) -> dict[str, Budget]: ...
        def _budgets_due(self) -> bool: ...
        def _flush_outbox(self, *, final: bool = False) -> bool: ...
        def _notify(self, event: str, *args: Any, **kwargs: Any) -> None: ...
        def _safely(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...
        def _guard_storage(self, operation: Callable[..., Any], *args: Any) -> Any: ...
        def budget_for(self, user: str | None) -> Budget | None: ...
        def get_budget(self, user: str | None = None) -> Budget | None: ...
        def budgets(self) -> list[Budget]: ...
        async def _aguard_storage(self, operation: Any) -> Any: ...
