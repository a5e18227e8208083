"""What the guard tells its listeners (telemetry, alerts) about each call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .errors import BudgetExceededError

__all__ = ["BudgetStatus", "CallOutcome", "Listener", "ThresholdCrossing"]

_NO_TAGS: Mapping[str, str] = MappingProxyType({})


class CallOutcome(NamedTuple):
    """One guarded call that ran: who paid, for what, and how it ended.

    A named tuple: one is built per call, and tuples are the cheapest record.
    """

    user: str | None
    cost: Decimal
    duration: float  # seconds, wall clock of the wrapped call
    request_model: str | None = None
    response_model: str | None = None
    provider: str | None = None  # gen_ai.provider.name
    operation: str | None = None  # gen_ai.operation.name
    usage: Any = None  # budgetguard.usage.Usage when the response reported one
    error_type: str | None = None  # exception class name when the call failed
    priced: bool = True  # False when the model had no known price
    estimated: bool = False  # True when the cost is an estimate (no usage reported)
    tags: Mapping[str, str] = _NO_TAGS
    # Where ``cost`` came from: "reported" (the response's own figure,
    # ``usage.cost_reporter`` says whose), "table" (usage × budgetguard's
    # prices), "estimate" (no readable usage), "given" (``cost=``, ``charge()``).
    cost_source: str = "given"
    reserved: Decimal = Decimal(0)  # what the call held on its budgets while it ran
    # The budgets the call was held against, innermost first: "scope",
    # "user:alice" (or "default" for a user under the default budget), "global".
    budgets: tuple[str, ...] = ()
    # The OpenTelemetry span that was current when the call began, where a
    # listener asked for it (``Spans``): the GenAI client span another
    # instrumentation opened for the call, still open when the call ends.
    span: Any = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget's state in its current window, as the guard reads it from the ledger."""

    name: str  # "global", "user:alice", "tag:team=search", "daily@user:alice", ...
    user: str | None
    period: str  # "daily", "monthly", "lifetime", "rolling:3600s" ...
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    resets_at: datetime | None
    unit: str = "usd"  # what limit, spent and reserved count: dollars, tokens, requests...
    mode: str = "hard"  # "hard", "soft" or "shadow"
    over: int = 0  # calls a soft or shadow budget had no room for in this window

    @property
    def remaining(self) -> Decimal:
        """Return what is left to spend, never below zero."""
        return max(Decimal(0), self.limit - self.spent - self.reserved)


@dataclass(frozen=True, slots=True)
class ThresholdCrossing:
    """A budget's spend went past a configured fraction of its limit."""

    budget: str
    user: str | None
    period: str
    fraction: Decimal  # the configured threshold, e.g. Decimal("0.8")
    limit: Decimal
    spent: Decimal
    window: str  # which window of the period crossed
    kind: str = "threshold"  # or "forecast": the limit runs out before the window ends
    runs_out_at: datetime | None = None  # a forecast's moment the limit runs out

    @property
    def id(self) -> str:
        """Return what names this alert: one budget, window and threshold (or forecast)."""
        what = "forecast" if self.kind == "forecast" else self.fraction
        return f"{self.budget}|{self.window}|{what}"

    @property
    def percent(self) -> str:
        """Return the threshold as a percentage without trailing zeros ("80")."""
        return format((self.fraction * 100).normalize(), "f")


class Listener(Protocol):
    """Receive the guard's events; every method must be cheap and must not raise."""

    def call_ended(self, outcome: CallOutcome) -> None:
        """Record a call that ran (successfully or not) and what it cost."""

    def call_refused(
        self, error: BudgetExceededError, *, user: str | None, request_model: str | None
    ) -> None:
        """Record a call a budget refused before it ran."""

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Record a budget passing one of its alert thresholds."""

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        """Record a ledger failure and the policy applied (fail_open / fail_closed)."""
