"""Put each guarded call's budget outcome, cost and usage on OpenTelemetry spans.

A listener, through ``opentelemetry-api`` only; added with
``BudgetGuard(spans=True)`` or ``guard.add_listener(Spans())``. The span a
call belongs to is the one current as the call begins (noted by the guard
while a ``Spans`` listener is added), so a stream read to its end later, in
another context, still lands on the span opened for it. For each call that ran:

- when that span is a GenAI span (OpenLLMetry's, the contrib
  instrumentation's, or the user's with ``gen_ai.operation.name``,
  ``gen_ai.provider.name`` or the older ``gen_ai.system``), the cost
  and the budget outcome (``budgetguard.reservation.amount`` held while it
  ran, ``budgetguard.budgets`` held, ``budgetguard.outcome``) are added to
  it: no second span for one call. ``budgetguard.instrument()`` puts its
  wrapper inside OpenLLMetry's or the contrib instrumentation's, whichever
  was installed first, so their span is the one current;
- else, with ``own_spans=True``, a GenAI client span of its own,
  ``"{operation} {model}"``, covering the call, with the gen_ai attributes,
  token usage, cost and outcome;
- else the current span, if one records, gets a ``budgetguard.call`` event
  with the same attributes (an event per call: several calls in one request
  span do not overwrite each other).

A refused call is a ``budgetguard.refused`` event, with the budget, its
period, its unit and the amounts, on the current span (or a span of its own, in error,
with ``own_spans=True``).

Cost attributes follow the draft GenAI cost convention
(``gen_ai.usage.cost.amount``, ``.currency``, ``.source``) when
``OTEL_SEMCONV_STABILITY_OPT_IN`` lists ``gen_ai_latest_experimental``, and
are ``budgetguard.cost.amount`` / ``.currency`` otherwise, so that no backend
reads a draft name it was not asked for. With no SDK, the API's spans do not
record and every method returns after one check.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanKind,
    Status,
    StatusCode,
)

from .events import CallOutcome, ThresholdCrossing

if TYPE_CHECKING:
    from .errors import BudgetExceededError

__all__ = ["Spans", "latest_conventions"]

_OPT_IN = "gen_ai_latest_experimental"


def latest_conventions() -> bool:
    """Return whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the latest GenAI conventions."""
    values = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return _OPT_IN in (value.strip() for value in values.split(","))


def _kind(budget: str) -> str:
    # Budget names embed user ids ("user:alice"); spans carry the kind only.
    return budget.split(" (", 1)[0].split(":", 1)[0]


# Any of these on the current span says another instrumentation opened it for
# the call: OpenLLMetry sets gen_ai.system (older conventions), the contrib
# packages gen_ai.operation.name and gen_ai.provider.name.
_GENAI_MARKS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system")


def _is_genai(span: Any) -> bool:
    # The SDK's spans expose their attributes; the API's interface does not.
    attributes = getattr(span, "attributes", None)
    return attributes is not None and any(mark in attributes for mark in _GENAI_MARKS)


class Spans:
    """Record budget outcomes, cost and usage on spans (a :class:`~budgetguard.events.Listener`)."""

    #: Asks the guard to note the span current as each call begins
    #: (``CallOutcome.span``): a stream ends long after its span stopped
    #: being current, and the outcome belongs on that span.
    traces_calls = True

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        own_spans: bool = False,
        latest: bool | None = None,
    ) -> None:
        """Trace through ``tracer_provider`` (default: the global one).

        ``latest`` picks the draft cost names; ``None`` reads
        ``OTEL_SEMCONV_STABILITY_OPT_IN`` now.
        """
        from . import telemetry

        self._tracer = trace.get_tracer(
            "budgetguard", telemetry._version(), tracer_provider=tracer_provider
        )
        self._provider = tracer_provider
        self.own_spans = own_spans
        self.latest = latest_conventions() if latest is None else latest
        prefix = "gen_ai.usage.cost" if self.latest else "budgetguard.cost"
        self._amount = f"{prefix}.amount"
        self._currency = f"{prefix}.currency"
        self._source = f"{prefix}.source" if self.latest else None

    def __repr__(self) -> str:
        return f"Spans(own_spans={self.own_spans}, latest={self.latest})"

    # -- Listener ---------------------------------------------------------

    def call_ended(self, outcome: CallOutcome) -> None:
        """Add a call's cost and outcome to its span, or open one, or add an event."""
        span = outcome.span
        if span is None or not span.is_recording():
            span = trace.get_current_span()
        if not span.is_recording():
            if self.own_spans and self._traced():
                self._own_span(outcome)
            return
        if _is_genai(span):
            span.set_attributes(self._outcome(outcome))
        elif self.own_spans:
            self._own_span(outcome)
        else:
            span.add_event("budgetguard.call", {**self._call(outcome), **self._outcome(outcome)})

    def call_refused(
        self, error: BudgetExceededError, *, user: str | None, request_model: str | None
    ) -> None:
        """Add a refusal event naming the budget and the amounts."""
        span = trace.get_current_span()
        if not span.is_recording() and not (self.own_spans and self._traced()):
            return
        event: dict[str, Any] = {
            "budgetguard.budget": _kind(error.budget),
            # The amounts below are in this unit: dollars, tokens, requests or calls.
            "budgetguard.unit": getattr(error, "unit", "usd"),
            "budgetguard.limit": float(error.limit),
            "budgetguard.spent": float(error.spent),
            "budgetguard.reserved": float(error.reserved),
            "budgetguard.requested": float(error.requested),
        }
        if error.period is not None:
            event["budgetguard.period"] = error.period
        if span.is_recording() and (_is_genai(span) or not self.own_spans):
            span.add_event("budgetguard.refused", event)
            span.set_attribute("budgetguard.outcome", "refused")
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "budgetguard.outcome": "refused",
            "error.type": type(error).__qualname__,
        }
        if request_model is not None:
            attributes["gen_ai.request.model"] = request_model
        name = f"chat {request_model}" if request_model else "chat"
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as own:
            own.add_event("budgetguard.refused", event)
            own.set_status(Status(StatusCode.ERROR, "refused by budget"))

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Ignore alerts: they are not about one call."""

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        """Ignore ledger failures here: metrics count them."""

    def _traced(self) -> bool:
        """Return whether an SDK is behind the tracer: only then is a span of our own worth it."""
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        return not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)

    # -- attributes -------------------------------------------------------

    def _outcome(self, outcome: CallOutcome) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            self._amount: float(outcome.cost),
            self._currency: "USD",
            "budgetguard.outcome": "failed" if outcome.error_type else "settled",
            "budgetguard.cost.estimated": outcome.estimated,
            "budgetguard.reservation.amount": float(outcome.reserved),
        }
        if outcome.budgets:
            attributes["budgetguard.budgets"] = [_kind(name) for name in outcome.budgets]
        if self._source is not None:
            attributes[self._source] = "local"  # priced by budgetguard's table
        if not outcome.priced:
            attributes["budgetguard.cost.priced"] = False
        return attributes

    def _call(self, outcome: CallOutcome) -> dict[str, Any]:
        from .telemetry import provider_name

        usage = outcome.usage
        attributes: dict[str, Any] = {}
        operation = outcome.operation or getattr(usage, "operation", None)
        provider = provider_name(
            outcome.provider or getattr(usage, "provider", None), outcome.request_model
        )
        response_model = outcome.response_model or getattr(usage, "model", None)
        for name, value in (
            ("gen_ai.operation.name", operation),
            ("gen_ai.provider.name", provider),
            ("gen_ai.request.model", outcome.request_model),
            ("gen_ai.response.model", response_model),
            ("error.type", outcome.error_type),
        ):
            if value is not None:
                attributes[name] = value
        if usage is not None:
            # The conventions' input count includes cached input tokens.
            inputs = sum(
                getattr(usage, field, 0) or 0
                for field in (
                    "input_tokens",
                    "cached_input_tokens",
                    "cache_write_5m_tokens",
                    "cache_write_1h_tokens",
                    "input_audio_tokens",
                    "input_image_tokens",
                )
            )
            outputs = sum(
                getattr(usage, field, 0) or 0
                for field in ("output_tokens", "reasoning_tokens", "output_audio_tokens")
            )
            attributes["gen_ai.usage.input_tokens"] = inputs
            attributes["gen_ai.usage.output_tokens"] = outputs
            cached = getattr(usage, "cached_input_tokens", 0) or 0
            if cached:
                attributes["gen_ai.usage.cache_read.input_tokens"] = cached
        return attributes

    def _own_span(self, outcome: CallOutcome) -> None:
        attributes = {**self._call(outcome), **self._outcome(outcome)}
        attributes.setdefault("gen_ai.operation.name", "chat")
        model = outcome.request_model or attributes.get("gen_ai.response.model")
        name = f"{attributes['gen_ai.operation.name']} {model}" if model else "chat"
        end = time.time_ns()
        span = self._tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=end - int(outcome.duration * 1e9),
        )
        if outcome.error_type is not None:
            span.set_status(Status(StatusCode.ERROR, outcome.error_type))
        span.end(end_time=end)
