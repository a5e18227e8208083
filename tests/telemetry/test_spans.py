"""Spans with cost, read through the OpenTelemetry SDK's in-memory span exporter."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from budgetguard import BudgetExceededError, BudgetGuard, CallOutcome
from budgetguard.telemetry import Spans


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Give an in-memory span exporter."""
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """Give a private TracerProvider exporting to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def openai_response() -> dict[str, Any]:
    """Return an OpenAI chat completion with 1000 prompt (200 cached) and 100 output tokens."""
    return {
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 200},
        },
    }


def guard_with(spans: Spans) -> BudgetGuard:
    """Return a guard with a $1 global budget telling ``spans``."""
    guard = BudgetGuard(metrics=False)
    guard.set_budget("1", period="daily")
    guard.add_listener(spans)
    return guard


def test_own_span_carries_usage_and_cost(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With own_spans, a call with no span around it gets a GenAI client span with cost."""
    guard = guard_with(Spans(tracer_provider=provider, own_spans=True, latest=False))
    guard.budgeted(model="gpt-4o", estimate="0.01")(openai_response)()
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat gpt-4o"
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] == 1000
    assert attributes["gen_ai.usage.output_tokens"] == 100
    assert attributes["budgetguard.cost.amount"] == pytest.approx(float(guard.spend()))
    assert attributes["budgetguard.cost.amount"] > 0
    assert attributes["budgetguard.cost.currency"] == "USD"
    assert attributes["budgetguard.outcome"] == "settled"
    assert "gen_ai.usage.cost.amount" not in attributes


def test_draft_cost_names_behind_the_opt_in(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental picks gen_ai.usage.cost.*."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental")
    guard = guard_with(Spans(tracer_provider=provider, own_spans=True))
    guard.budgeted(model="gpt-4o", estimate="0.01", cost=lambda _: "0.25")(lambda: None)()
    attributes = dict(exporter.get_finished_spans()[0].attributes or {})
    assert attributes["gen_ai.usage.cost.amount"] == 0.25
    assert attributes["gen_ai.usage.cost.currency"] == "USD"
    assert attributes["gen_ai.usage.cost.source"] == "local"
    assert "budgetguard.cost.amount" not in attributes


@pytest.mark.parametrize("mark", [{"gen_ai.operation.name": "chat"}, {"gen_ai.system": "openai"}])
def test_an_existing_genai_span_is_added_to_not_doubled(
    provider: TracerProvider, exporter: InMemorySpanExporter, mark: dict[str, str]
) -> None:
    """A GenAI span already open for the call (new or old conventions) gets the cost, alone."""
    guard = guard_with(Spans(tracer_provider=provider, own_spans=True, latest=False))
    tracer = provider.get_tracer("an.instrumentation")
    with tracer.start_as_current_span("chat gpt-4o", attributes=mark):
        guard.budgeted(model="gpt-4o", estimate="0.01", cost=lambda _: "0.5")(lambda: None)()
    (span,) = exporter.get_finished_spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "an.instrumentation"
    assert dict(span.attributes or {})["budgetguard.cost.amount"] == 0.5


def test_calls_in_a_request_span_are_events(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Without own_spans, each call in a plain request span is one budgetguard.call event."""
    guard = guard_with(Spans(tracer_provider=provider, latest=False))
    call = guard.budgeted(model="gpt-4o", estimate="0.01", cost=lambda cost: cost)(
        lambda cost: cost
    )
    with provider.get_tracer("app").start_as_current_span("GET /answer"):
        call("0.10")
        call("0.20")
    (span,) = exporter.get_finished_spans()
    costs = [e.attributes["budgetguard.cost.amount"] for e in span.events if e.attributes]
    assert [e.name for e in span.events] == ["budgetguard.call", "budgetguard.call"]
    assert costs == [0.1, 0.2]


def test_a_refusal_is_an_event_with_the_budget(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A refused call adds budgetguard.refused with the budget kind, period and amounts."""
    guard = guard_with(Spans(tracer_provider=provider, latest=False))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("GET /answer"), pytest.raises(BudgetExceededError):
        guard.budgeted(model="gpt-4o", estimate="2")(lambda: None)()
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "budgetguard.refused"
    assert dict(event.attributes or {}) == {
        "budgetguard.budget": "global",
        "budgetguard.period": "daily",
        "budgetguard.unit": "usd",
        "budgetguard.limit": 1.0,
        "budgetguard.spent": 0.0,
        "budgetguard.reserved": 0.0,
        "budgetguard.requested": 2.0,
    }
    assert dict(span.attributes or {})["budgetguard.outcome"] == "refused"


def test_a_refusal_by_a_requests_budget_says_its_unit(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A refusal by a budget of requests names that budget and counts in requests, not dollars."""
    guard = guard_with(Spans(tracer_provider=provider, latest=False))
    guard.set_budget(1, user="alice", unit="requests", period="daily")
    call = guard.budgeted(user="alice", model="gpt-4o", estimate="0.01")(lambda: None)
    call()
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("GET /answer"), pytest.raises(BudgetExceededError):
        call()
    (span,) = exporter.get_finished_spans()
    (event,) = [event for event in span.events if event.name == "budgetguard.refused"]
    attributes = dict(event.attributes or {})
    assert (attributes["budgetguard.budget"], attributes["budgetguard.unit"]) == (
        "requests@user",
        "requests",
    )
    assert (attributes["budgetguard.limit"], attributes["budgetguard.spent"]) == (1.0, 1.0)


def test_a_refusal_alone_is_a_span_in_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With own_spans and no span around, a refused call is a client span in error."""
    guard = guard_with(Spans(tracer_provider=provider, own_spans=True))
    with pytest.raises(BudgetExceededError):
        guard.budgeted(model="gpt-4o", estimate="2")(lambda: None)()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "BudgetExceededError"


def test_a_failed_call_is_marked(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A call that raised ends its own span in error with error.type."""
    guard = guard_with(Spans(tracer_provider=provider, own_spans=True))

    @guard.budgeted(model="gpt-4o", estimate="0.01")
    def fails() -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        fails()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["budgetguard.outcome"] == "failed"


def test_no_work_without_an_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the API's default provider (no SDK), no span attributes are even built."""
    spans = Spans(own_spans=True)

    def boom(*args: object) -> None:
        raise AssertionError("built attributes with no SDK")

    monkeypatch.setattr(spans, "_call", boom)
    monkeypatch.setattr(spans, "_outcome", boom)
    calls: list[str] = []
    monkeypatch.setattr("budgetguard.guard.logger.exception", lambda *a, **k: calls.append("x"))
    guard = guard_with(spans)
    guard.budgeted(model="gpt-4o", estimate="0.01", cost=lambda r: r)(lambda: "0.1")()
    with pytest.raises(BudgetExceededError):
        guard.budgeted(model="gpt-4o", estimate="2")(lambda: None)()
    assert calls == []


def test_a_stream_read_later_lands_on_the_span_open_when_it_began(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A GenAI span current as the call began gets the outcome, though the stream ends elsewhere."""
    guard = guard_with(Spans(tracer_provider=provider, own_spans=True, latest=False))
    guard.set_budget("0.50", user="alice", period="monthly")

    @guard.budgeted(user="alice", model="gpt-4o", estimate="0.02", cost=lambda _: "0.03")
    def chunks() -> Iterator[str]:
        yield from ("Hello", " world")

    tracer = provider.get_tracer("an.instrumentation")
    span = tracer.start_span("chat gpt-4o", attributes={"gen_ai.operation.name": "chat"})
    with trace.use_span(span, end_on_exit=False):
        stream = chunks()
        assert next(stream) == "Hello"
    # Read to its end outside that span's context, as instrumentations' stream wrappers do.
    with tracer.start_as_current_span("GET /elsewhere"):
        assert list(stream) == [" world"]
    span.end()
    elsewhere, genai = exporter.get_finished_spans()
    assert elsewhere.events == ()
    attributes = dict(genai.attributes or {})
    assert attributes["budgetguard.cost.amount"] == 0.03
    assert attributes["budgetguard.reservation.amount"] == 0.02
    assert attributes["budgetguard.budgets"] == ("user", "global")


def test_the_outcome_names_what_was_held(provider: TracerProvider) -> None:
    """CallOutcome carries the reservation and every budget held, scope caps first."""
    outcomes: list[CallOutcome] = []

    class Keep:
        def call_ended(self, outcome: CallOutcome) -> None:
            outcomes.append(outcome)

    guard = guard_with(Spans(tracer_provider=provider))
    guard.set_default_budget("0.50", period="monthly")
    guard.add_listener(Keep())  # type: ignore[arg-type]
    with guard.budget_scope("bob", limit="0.10"):
        guard.budgeted(model="gpt-4o", estimate="0.04", cost=lambda _: "0.01")(lambda: None)()
    (outcome,) = outcomes
    assert outcome.reserved == Decimal("0.04")
    assert outcome.cost == Decimal("0.01")
    assert outcome.budgets == ("scope", "default", "global")
    assert outcome.span is trace.INVALID_SPAN  # no span was current


def test_no_span_is_looked_up_without_a_spans_listener() -> None:
    """Only while a Spans listener is added does a call read the current span."""
    spans = Spans()
    guard = BudgetGuard(metrics=False)
    assert guard._current_span is None
    guard.add_listener(spans)
    assert guard._current_span is trace.get_current_span
    guard.remove_listener(spans)
    assert guard._current_span is None
