"""Fixtures for the telemetry tests: the loopback fake LLM API and an in-memory span exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.instrument.fake_llm import FakeLLM, serve


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeLLM]:
    """Run one fake OpenAI / Azure OpenAI API on loopback for the session."""
    with serve() as state:
        yield state


@pytest.fixture
def llm(fake_api: FakeLLM) -> FakeLLM:
    """Return the fake API with nothing left from other tests."""
    fake_api.reset()
    return fake_api


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Give an in-memory span exporter."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """Give a private TracerProvider exporting to ``exporter`` as each span ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()
