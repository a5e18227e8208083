"""Azure OpenAI is reported as ``azure.ai.openai``, and its content filter results break nothing.

The real ``openai.AzureOpenAI`` / ``AsyncAzureOpenAI`` clients call the loopback
API on Azure's paths (``/openai/deployments/{d}/chat/completions?api-version=``),
which answers as Azure does: ``prompt_filter_results`` on the answer, and
``content_filter_results`` on each choice; a stream opens with a chunk of
prompt filter results, no choices and no model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetguard as bg
from budgetguard import BudgetGuard, instrument, uninstrument
from budgetguard._instrument._wrappers import _provider_of
from budgetguard.telemetry import Spans
from budgetguard.testing import ExportedMetrics, metrics_reader
from tests.instrument.fake_llm import CHAT_MODEL, FakeLLM, azure_chat_completion

# 1000 input and 500 output tokens of gpt-4o-mini.
COST = Decimal("0.00045")
MESSAGES = [{"role": "user", "content": "Say hello"}]
AZURE = {"gen_ai.provider.name": "azure.ai.openai"}


@pytest.fixture
def exported() -> Iterator[ExportedMetrics]:
    """Give a private MeterProvider with an in-memory reader."""
    with metrics_reader() as exported:
        yield exported


@pytest.fixture
def guard(exported: ExportedMetrics, provider: TracerProvider) -> Iterator[BudgetGuard]:
    """Return a guard with metrics and own spans, instrumenting the openai clients."""
    made = BudgetGuard(
        meter_provider=exported.meter_provider,
        spans=Spans(tracer_provider=provider, own_spans=True),
    )
    made.set_budget("1", period="daily")
    instrument(made, deployments={"my-gpt": "gpt-4o-mini"})
    yield made
    uninstrument()
    made.close()


def azure(llm: FakeLLM) -> openai.AzureOpenAI:
    """Return a real Azure OpenAI client on the loopback API."""
    return openai.AzureOpenAI(
        api_key="test", azure_endpoint=llm.url, api_version="2024-10-21", max_retries=0
    )


def assert_reported_as_azure(
    guard: BudgetGuard, exported: ExportedMetrics, exporter: InMemorySpanExporter
) -> None:
    """Check one call was charged exactly and reported as Azure OpenAI, in metrics and span."""
    assert guard.spend() == COST
    assert exported.value("budgetguard.spend", AZURE) == pytest.approx(float(COST))
    assert exported.value("budgetguard.spend", {"gen_ai.provider.name": "openai"}) == 0
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert attributes["gen_ai.usage.input_tokens"] == 1000
    assert attributes["gen_ai.usage.output_tokens"] == 500
    assert attributes["budgetguard.cost.estimated"] is False


def test_azure_answer_is_reported_as_azure_openai(
    guard: BudgetGuard, llm: FakeLLM, exported: ExportedMetrics, exporter: InMemorySpanExporter
) -> None:
    """A chat answer through AzureOpenAI is charged its usage and named azure.ai.openai."""
    with azure(llm) as client:
        reply = client.chat.completions.create(model="my-gpt", messages=MESSAGES)
    path, _ = llm.requests[0]
    assert path.startswith("/openai/deployments/my-gpt/chat/completions?api-version=")
    # The filter results reach the caller untouched.
    assert reply.prompt_filter_results[0]["content_filter_results"]["hate"]["filtered"] is False  # type: ignore[attr-defined]
    assert_reported_as_azure(guard, exported, exporter)


@pytest.mark.parametrize("asked", [False, True], ids=["usage added", "usage asked"])
def test_azure_stream_is_charged_its_usage(
    guard: BudgetGuard,
    llm: FakeLLM,
    exported: ExportedMetrics,
    exporter: InMemorySpanExporter,
    asked: bool,
) -> None:
    """Azure's stream, opened by a chunk of prompt filters and no choices, is priced exactly."""
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if asked else {}
    with azure(llm) as client:
        chunks = list(
            client.chat.completions.create(
                model="my-gpt", messages=MESSAGES, stream=True, **options
            )
        )
    # The filter chunk reaches the caller; the usage chunk only where it was asked for.
    assert chunks[0].choices == []
    assert chunks[0].prompt_filter_results  # type: ignore[attr-defined]
    assert (chunks[-1].usage is not None) is asked
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello wide world"
    assert_reported_as_azure(guard, exported, exporter)


def test_async_azure_stream_is_charged_its_usage(
    guard: BudgetGuard, llm: FakeLLM, exported: ExportedMetrics, exporter: InMemorySpanExporter
) -> None:
    """AsyncAzureOpenAI's calls are Azure OpenAI too, streams included."""

    async def main() -> None:
        client = openai.AsyncAzureOpenAI(
            api_key="test", azure_endpoint=llm.url, api_version="2024-10-21", max_retries=0
        )
        try:
            stream = await client.chat.completions.create(
                model="my-gpt", messages=MESSAGES, stream=True
            )
            text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        finally:
            await client.close()
        assert "".join(text) == "Hello wide world"

    asyncio.run(main())
    assert_reported_as_azure(guard, exported, exporter)


def test_plain_openai_client_stays_openai(
    guard: BudgetGuard, llm: FakeLLM, exported: ExportedMetrics
) -> None:
    """The same call through the OpenAI client on OpenAI's paths is reported as openai."""
    with openai.OpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    openai_spend = exported.value("budgetguard.spend", {"gen_ai.provider.name": "openai"})
    assert openai_spend == pytest.approx(float(COST))
    assert exported.value("budgetguard.spend", AZURE) == 0


def test_azure_v1_endpoint_through_the_openai_client_is_azure() -> None:
    """Azure's v1 API is called with the plain OpenAI client; its host says Azure."""
    for base_url, expected in [
        ("https://my-resource.openai.azure.com/openai/v1/", "azure.ai.openai"),
        ("https://my-project.services.ai.azure.com/openai/v1/", "azure.ai.openai"),
        ("https://api.openai.com/v1", None),
    ]:
        with openai.OpenAI(api_key="test", base_url=base_url) as client:
            assert _provider_of(client.chat.completions) == expected, base_url
            assert _provider_of(client) == expected, base_url


def test_an_azure_answer_is_azure_by_its_filter_results(exported: ExportedMetrics) -> None:
    """Without instrumentation, an Azure answer's content filter results name the provider."""
    guard = BudgetGuard(meter_provider=exported.meter_provider)
    reply = openai.types.chat.ChatCompletion.model_validate(azure_chat_completion(CHAT_MODEL))
    usage = bg.extract_usage(reply)
    assert usage is not None
    assert usage.provider == "azure.ai.openai"
    assert (usage.input_tokens, usage.output_tokens) == (1000, 500)
    guard.budgeted(estimate="0.01")(lambda: reply)()
    assert exported.value("budgetguard.spend", AZURE) == pytest.approx(float(COST))
    guard.close()
