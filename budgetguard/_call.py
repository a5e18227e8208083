"""One guarded call in progress, and the one way to enter and leave it.

Every entry point (``@budgeted`` of every kind, instrumented clients, the
streams they return, ``BudgetManager``) makes a ``Call`` through the guard
and runs user code inside ``with call:``, which sets the ContextVar and
restores the previous value by token, so nesting works in threads and tasks.
Nothing else sets the ContextVar.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

    from ._plan import Holder, Plan
    from .guard import BudgetGuard
    from .ledger import Reservation

__all__ = ["Call", "current_call"]


class Call:
    """One guarded call: its reservation and what it has cost so far."""

    __slots__ = (
        "_outer",
        "_token",
        "charged",
        "estimate",
        "guard",
        "has_inner",
        "holders",
        "inner_units",
        "kind",
        "models",
        "parent",
        "pilot",
        "plan",
        "provider",
        "request_model",
        "reservation",
        "span",
        "started",
        "tags",
        "user",
    )

    def __init__(
        self,
        guard: BudgetGuard,
        user: str | None,
        reservation: Reservation | None,
        plan: Plan,
        holders: tuple[Holder, ...],
        estimate: int,
        request_model: str | None,
        tags: Mapping[str, str],
        kind: str | None = None,
        pilot: threading.Lock | None = None,
    ) -> None:
        self.guard = guard
        self.user = user
        self.reservation = reservation  # None when storage failed open
        self.plan = plan
        self.holders = holders
        self.estimate = estimate
        self.request_model = request_model
        self.tags = tags
        #: What the guard learns this call's cost under, when it had to guess.
        self.kind = kind
        #: The slow-start gate this call holds as the first of its kind.
        self.pilot = pilot
        self.charged = 0  # units charged with charge() inside the call
        self.inner_units = 0  # units the guarded calls made inside it settled
        self.models: tuple[str, ...] = ()  # models named by charge(), rarely any
        # A guarded call made while this one runs (an instrumented client call
        # inside a @budgeted function, a nested @budgeted) charges itself;
        # this call must then neither price the same response again nor fall
        # back to its own estimate.
        self.has_inner = False
        parent = self.parent = _current_call.get()
        if parent is not None:
            parent.has_inner = True
        self.started = time.perf_counter()
        #: The provider an instrumented client named (``azure.ai.openai``), else None.
        self.provider: str | None = None
        #: The OpenTelemetry span current as the call begins, where a listener
        #: traces calls (``Spans``): another instrumentation's GenAI client
        #: span is current here, and still open when the call ends.
        current_span = guard._current_span
        self.span: Any = current_span() if current_span is not None else None
        self._token: contextvars.Token[Call | None] | None = None
        self._outer: list[contextvars.Token[Call | None]] | None = None  # re-entered

    def __enter__(self) -> Call:
        """Make this the current call; leaving the block restores the previous one by token."""
        token = _current_call.set(self)
        if self._token is None:
            self._token = token
        else:  # entered again before leaving (a generator driven from inside itself)
            if self._outer is None:
                self._outer = []
            self._outer.append(self._token)
            self._token = token
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = self._token
        assert token is not None
        self._token = self._outer.pop() if self._outer else None
        _current_call.reset(token)

    def add(self, units: int, model: str | None) -> None:
        """Add ``units`` charged by ``charge()`` while the call runs."""
        self.charged += units
        if model is not None and model not in self.models:
            self.models = (*self.models, model)

    def __repr__(self) -> str:
        return f"Call(user={self.user!r}, model={self.request_model!r}, kind={self.kind!r})"


_current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "budgetguard_call", default=None
)


def current_call() -> Call | None:
    """Return the guarded call in progress in this context, if any."""
    return _current_call.get()


def call_user() -> Any:
    """Return the user of the call in progress, or ``None`` (instrumented calls inherit it)."""
    call = _current_call.get()
    return call.user if call is not None else None
