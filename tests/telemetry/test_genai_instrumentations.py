"""One client span per call under the real GenAI instrumentations of the openai client.

OpenLLMetry's ``opentelemetry-instrumentation-openai`` and OpenTelemetry's
contrib ``opentelemetry-instrumentation-openai-v2`` each open a client span
around ``chat.completions.create``. With ``budgetguard.instrument()`` too, in
either order, the call must come out as that one span, carrying their
``gen_ai.*`` attributes and budgetguard's cost and budget outcome; and
``Spans(own_spans=True)`` must not open a second one.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as Contrib
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from budgetguard import BudgetExceededError, BudgetGuard, instrument, uninstrument
from budgetguard._instrument import _TARGETS
from budgetguard.telemetry import Spans
from tests.instrument.fake_llm import FakeLLM

# 1000 input and 500 output tokens of gpt-4o-mini: $0.00015 + $0.0003.
COST = 0.00045
MESSAGES = [{"role": "user", "content": "Say hello"}]
INSTRUMENTATIONS = {"openllmetry": OpenLLMetry, "contrib": Contrib}


@pytest.fixture(scope="module")
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Give one TracerProvider for the module: the contrib package keeps the first it sees."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def provider(tracing: tuple[TracerProvider, InMemorySpanExporter]) -> TracerProvider:
    """Return the module's TracerProvider."""
    return tracing[0]


@pytest.fixture
def exporter(tracing: tuple[TracerProvider, InMemorySpanExporter]) -> InMemorySpanExporter:
    """Return the module's span exporter, emptied."""
    tracing[1].clear()
    return tracing[1]


@pytest.fixture(params=["openllmetry", "contrib"])
def theirs(request: pytest.FixtureRequest) -> str:
    """Name the GenAI instrumentation under test."""
    name: str = request.param
    return name


@pytest.fixture(params=["theirs first", "budgetguard first"])
def instrumented(
    request: pytest.FixtureRequest,
    theirs: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> Iterator[BudgetGuard]:
    """Instrument openai with ``theirs`` and budgetguard, in the order named; undo both."""
    guard = BudgetGuard(metrics=False, spans=Spans(tracer_provider=provider, own_spans=True))
    guard.set_budget("1", period="daily")
    guard.set_budget("0.50", user="alice", period="monthly")
    before = methods()
    instrumentor = INSTRUMENTATIONS[theirs]()
    if request.param == "theirs first":
        instrumentor.instrument(tracer_provider=provider)
        instrument(guard)
    else:
        instrument(guard)
        instrumentor.instrument(tracer_provider=provider)
    yield guard
    if request.param == "theirs first":
        uninstrument()
        instrumentor.uninstrument()
    else:
        instrumentor.uninstrument()
        uninstrument()
    restore(before)
    guard.close()


def methods() -> dict[tuple[type, str], Any]:
    """Return the openai resource methods that budgetguard or theirs may wrap."""
    found = {}
    for target in (t for targets in _TARGETS.values() for t in targets):
        try:
            cls = getattr(importlib.import_module(target.module), target.cls, None)
        except ImportError:  # a module of another openai version
            continue
        if isinstance(cls, type):
            found.update({(cls, name): value for name, value in vars(cls).items()})
    return found


def restore(before: dict[tuple[type, str], Any]) -> None:
    """Put back methods left wrapped: OpenLLMetry's uninstrument misses the moved modules."""
    for (cls, name), value in before.items():
        if vars(cls).get(name) is not value:
            setattr(cls, name, value)


def sync_create(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=600)


def sync_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=600,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Hello wide world"
    )


async def async_create(client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=600)


async def async_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=600,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(text) == "Hello wide world"


def run(guard: BudgetGuard, call: Callable[..., Any], llm: FakeLLM) -> None:
    """Make one call as alice, through a sync or an async client as ``call`` needs."""
    if asyncio.iscoroutinefunction(call):

        async def main() -> None:
            client = openai.AsyncOpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=0)
            try:
                with guard.budget_scope("alice"):
                    await call(client)
            finally:
                await client.close()

        asyncio.run(main())
        return
    with (
        openai.OpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=0) as client,
        guard.budget_scope("alice"),
    ):
        call(client)


def the_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """Return the one span exported, failing if there are more."""
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [spans[0].name], "one span per call, not two"
    return spans[0]


@pytest.mark.parametrize(
    "call",
    [sync_create, sync_stream, async_create, async_stream],
    ids=["sync", "stream", "async", "async-stream"],
)
def test_one_span_carries_their_attributes_and_the_budget_outcome(
    instrumented: BudgetGuard,
    theirs: str,
    llm: FakeLLM,
    exporter: InMemorySpanExporter,
    call: Callable[..., Any],
) -> None:
    """Their client span is the one span of the call, and it carries cost and budgets too."""
    run(instrumented, call, llm)
    span = the_span(exporter)
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name != "budgetguard"
    attributes = dict(span.attributes or {})
    # Theirs:
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    # The fake API names its snapshot in answers, and echoes the model in streams.
    assert attributes["gen_ai.response.model"] in ("gpt-4o-mini-2024-07-18", "gpt-4o-mini")
    assert attributes["gen_ai.usage.input_tokens"] == 1000
    assert attributes["gen_ai.usage.output_tokens"] == 500
    # Ours:
    assert attributes["budgetguard.cost.amount"] == pytest.approx(COST)
    assert attributes["budgetguard.cost.currency"] == "USD"
    assert attributes["budgetguard.outcome"] == "settled"
    assert attributes["budgetguard.budgets"] == ("user", "global")
    # 10 prompt tokens and max_tokens=600 of gpt-4o-mini held while it ran.
    assert attributes["budgetguard.reservation.amount"] == pytest.approx(0.0003615, rel=0.05)
    assert float(instrumented.spend("alice")) == pytest.approx(COST)
    assert len(llm.requests) == 1


def test_a_refused_call_is_an_event_on_their_span(
    instrumented: BudgetGuard, llm: FakeLLM, exporter: InMemorySpanExporter
) -> None:
    """A call the budget refuses sends nothing; their span records the refusal, alone."""
    instrumented.set_budget("0.0001", user="alice", period="monthly")
    with pytest.raises(BudgetExceededError):
        run(instrumented, sync_create, llm)
    assert llm.requests == []
    span = the_span(exporter)
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name != "budgetguard"
    assert span.status.status_code is StatusCode.ERROR
    (refused,) = [event for event in span.events if event.name == "budgetguard.refused"]
    assert dict(refused.attributes or {})["budgetguard.budget"] == "user"
    assert dict(span.attributes or {})["budgetguard.outcome"] == "refused"


def test_uninstrument_leaves_their_instrumentation_working(
    theirs: str, provider: TracerProvider, llm: FakeLLM, exporter: InMemorySpanExporter
) -> None:
    """budgetguard put inside their wrapper comes out again: calls are traced, not budgeted."""
    guard = BudgetGuard(metrics=False, spans=Spans(tracer_provider=provider))
    before = methods()
    instrumentor = INSTRUMENTATIONS[theirs]()
    instrumentor.instrument(tracer_provider=provider)
    try:
        instrument(guard)
        with openai.OpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=0) as client:
            sync_create(client)
            assert float(guard.spend()) == pytest.approx(COST)
            uninstrument()
            exporter.clear()
            sync_create(client)
    finally:
        instrumentor.uninstrument()
        restore(before)
    span = the_span(exporter)
    assert "budgetguard.cost.amount" not in dict(span.attributes or {})
    assert float(guard.spend()) == pytest.approx(COST)
