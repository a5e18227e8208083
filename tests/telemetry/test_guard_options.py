"""Spans and the metrics' options switched on from BudgetGuard(...) and configure(...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetguard as bg
from budgetguard import BudgetGuard, ConfigurationError
from budgetguard.telemetry import Spans, Telemetry
from budgetguard.testing import ExportedMetrics, metrics_reader


@pytest.fixture
def exported() -> Iterator[ExportedMetrics]:
    """Give a private MeterProvider with an in-memory reader."""
    with metrics_reader() as exported:
        yield exported


def priced(guard: BudgetGuard, model: str) -> Any:
    """Return a guarded call to ``model`` that costs $0.10."""
    return guard.budgeted(model=model, estimate="0.10", cost=lambda _: "0.10")(lambda: None)


def test_spans_from_the_constructor(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """BudgetGuard(spans=Spans(...)) puts every call on a span, with no add_listener."""
    guard = BudgetGuard(metrics=False, spans=Spans(tracer_provider=provider, own_spans=True))
    priced(guard, "gpt-4o")()
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat gpt-4o"
    assert dict(span.attributes or {})["budgetguard.cost.amount"] == 0.1


def test_spans_true_traces_through_the_global_provider() -> None:
    """spans=True adds a Spans listener on the global tracer provider."""
    guard = BudgetGuard(metrics=False, spans=True)
    (listener,) = guard._listeners
    assert isinstance(listener, Spans)
    assert listener.own_spans is False
    assert guard._current_span is not None
    assert BudgetGuard(metrics=False)._current_span is None


def test_telemetry_options_reach_the_metrics(exported: ExportedMetrics) -> None:
    """telemetry_options sets the model cap and the exported tag keys."""
    guard = BudgetGuard(
        meter_provider=exported.meter_provider,
        telemetry_options={"max_models": 1, "tag_keys": ["team"]},
    )
    with guard.budget_scope("alice", tags={"team": "search", "ticket": "T-1"}):
        priced(guard, "gpt-4o")()
        priced(guard, "claude-haiku-4-5")()
    values = {
        (p.attributes["gen_ai.request.model"], p.attributes["budgetguard.tag.team"]): p.value
        for p in exported.points("budgetguard.spend")
    }
    assert values == pytest.approx({("gpt-4o", "search"): 0.1, ("_other", "search"): 0.1})


def test_configure_takes_the_same_options(
    provider: TracerProvider, exporter: InMemorySpanExporter, exported: ExportedMetrics
) -> None:
    """configure(spans=..., telemetry_options=...) builds the default guard with them."""
    guard = bg.configure(
        meter_provider=exported.meter_provider,
        spans=Spans(tracer_provider=provider, own_spans=True),
        telemetry_options={"max_models": 0},
    )
    try:
        priced(guard, "gpt-4o")()
        assert len(exporter.get_finished_spans()) == 1
        (point,) = exported.points("budgetguard.spend")
        assert point.attributes["gen_ai.request.model"] == "_other"
    finally:
        bg.configure()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"spans": "yes"}, "spans must be True, False or a budgetguard.telemetry.Spans"),
        ({"telemetry_options": {"max_modles": 5}}, "unknown telemetry option.*max_modles"),
        ({"telemetry_options": ["max_models"]}, "telemetry_options must be a mapping"),
        ({"telemetry_options": {"max_models": -1}}, "max_models must be an int >= 0"),
        ({"metrics": False, "telemetry_options": {"max_models": 5}}, "metrics=False"),
    ],
)
def test_bad_telemetry_settings_are_refused(options: dict[str, Any], message: str) -> None:
    """Each bad setting raises ConfigurationError naming it, and builds no guard."""
    with pytest.raises(ConfigurationError, match=message):
        BudgetGuard(**options)


def test_telemetry_options_are_telemetry_keywords() -> None:
    """Every option telemetry_options accepts is a keyword of Telemetry."""
    from budgetguard.guard import _TELEMETRY_OPTIONS

    keywords = Telemetry.__init__.__code__.co_varnames
    assert set(_TELEMETRY_OPTIONS) <= set(keywords)
