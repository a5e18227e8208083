"""google-genai's ``models`` and ``aio.models``, instrumented, against a loopback Gemini API."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from google.genai.models import AsyncModels, Models

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope, instrument, uninstrument
from budgetguard._instrument._genai import genai_arguments
from budgetguard.pricing import lookup

from .conftest import reserved
from .fake_cloud import FakeCloud

MODEL = "gemini-2.5-flash"
# gemini-2.5-flash, 1000 input and 500 output tokens: 1000 × 0.30 / 1e6 + 500 × 2.50 / 1e6
CALL_COST = Decimal("0.00155")
# A stream left after its first chunk: that chunk reported the prompt only (1000 × 0.30 / 1e6).
PROMPT_COST = Decimal("0.0003")
# gemini-embedding-001, 1000 input tokens at $0.15/M.
EMBED_COST = Decimal("0.00015")


def _client(cloud: FakeCloud, retries: int = 0) -> genai.Client:
    retry = None
    if retries:
        retry = types.HttpRetryOptions(
            attempts=retries + 1, initial_delay=0.01, max_delay=0.01, http_status_codes=[500]
        )
    options = types.HttpOptions(base_url=cloud.url, retry_options=retry)
    return genai.Client(api_key="test", http_options=options)


@pytest.fixture
def gemini(cloud: FakeCloud) -> Iterator[genai.Client]:
    """Return a real google-genai client on the fake API."""
    client = _client(cloud)
    yield client
    client.close()


@pytest.fixture
async def agemini(cloud: FakeCloud) -> AsyncIterator[genai.Client]:
    """Return a real google-genai client whose ``aio`` side is used."""
    client = _client(cloud)
    yield client
    await client.aio.aclose()


def test_generate_content_is_charged_its_usage(guard: BudgetGuard, gemini: genai.Client) -> None:
    """Charge generate_content exactly what its usage_metadata costs, and hold nothing after."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = gemini.models.generate_content(model=MODEL, contents="Say hello")
    assert reply.text == "Hello wide world"
    assert guard.spend("alice") == CALL_COST
    assert reserved(guard, "alice") == 0


def test_vertex_ai_client_is_charged_the_same(guard: BudgetGuard, cloud: FakeCloud) -> None:
    """Charge a Vertex AI client (express mode) like the Gemini API one, plain and streamed."""
    options = types.HttpOptions(base_url=cloud.url)
    client = genai.Client(vertexai=True, api_key="test", http_options=options)
    try:
        with budget_scope("alice"):
            client.models.generate_content(model=MODEL, contents="Say hello")
            list(client.models.generate_content_stream(model=MODEL, contents="Say hello"))
    finally:
        client.close()
    assert [path.partition(":")[0] for path, _ in cloud.requests] == [
        f"/v1beta1/publishers/google/models/{MODEL}"
    ] * 2
    assert guard.spend("alice") == CALL_COST * 2


def test_model_resource_names_are_priced_as_the_model(
    guard: BudgetGuard, gemini: genai.Client
) -> None:
    """Charge ``models/gemini-2.5-flash`` and Content objects like the plain name and a string."""
    contents = [types.Content(role="user", parts=[types.Part(text="Say hello")])]
    with budget_scope("alice"):
        gemini.models.generate_content(model=f"models/{MODEL}", contents=contents)
    assert guard.spend("alice") == CALL_COST


def test_generate_content_over_budget_sends_no_request(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Refuse generate_content before any request leaves when its estimate breaks the budget."""
    guard.set_budget("0.0001", user="alice")
    config = types.GenerateContentConfig(max_output_tokens=100)
    with budget_scope("alice"), pytest.raises(BudgetExceededError):
        gemini.models.generate_content(model=MODEL, contents="Say hello", config=config)
    assert cloud.requests == []
    assert guard.spend("alice") == 0


def test_every_model_method_over_budget_sends_no_request(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Refuse the stream, embeddings and chats before any request leaves."""
    guard.set_budget("0.0001", user="alice")
    config = types.GenerateContentConfig(max_output_tokens=100)
    with budget_scope("alice"):
        with pytest.raises(BudgetExceededError):
            for _ in gemini.models.generate_content_stream(
                model=MODEL, contents="Say hello", config=config
            ):
                pass
        with pytest.raises(BudgetExceededError):
            gemini.chats.create(model=MODEL, config=config).send_message("Say hello")
        guard.set_budget("0.0000001", user="alice")
        with pytest.raises(BudgetExceededError):
            gemini.models.embed_content(model="gemini-embedding-001", contents=["x " * 2000])
    assert cloud.requests == []


def test_stream_read_to_the_end_is_charged_once(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Charge a stream once, from its last usage_metadata, when read to the end."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        chunks = list(gemini.models.generate_content_stream(model=MODEL, contents="Say hello"))
    assert "".join(chunk.text or "" for chunk in chunks) == "Hello wide world"
    assert guard.spend("alice") == CALL_COST
    assert reserved(guard, "alice") == 0
    assert len(cloud.requests) == 1


def test_stream_closed_early_is_charged_what_it_reported(
    guard: BudgetGuard, gemini: genai.Client
) -> None:
    """Settle a stream closed after its first chunk at the usage that chunk reported."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = gemini.models.generate_content_stream(model=MODEL, contents="Say hello")
        assert next(stream).text == "Hello"
        stream.close()
        assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == PROMPT_COST


def test_stream_left_with_break_settles_when_collected(
    guard: BudgetGuard, gemini: genai.Client
) -> None:
    """Settle a stream left with ``break`` once it is garbage-collected, exactly once."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = gemini.models.generate_content_stream(model=MODEL, contents="Say hello")
        for _ in stream:
            break
        del stream
        gc.collect()
    assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == PROMPT_COST


def test_failed_request_releases_the_reservation(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Charge nothing and hold nothing after an HTTP 500, plain and streamed."""
    guard.set_budget("1", user="alice")
    cloud.failures = 2
    with budget_scope("alice"):
        with pytest.raises(errors.ServerError):
            gemini.models.generate_content(model=MODEL, contents="Say hello")
        with pytest.raises(errors.ServerError):
            list(gemini.models.generate_content_stream(model=MODEL, contents="Say hello"))
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0
    assert len(cloud.requests) == 2


def test_stream_failing_half_way_is_charged_what_it_reported(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Settle a stream that breaks with an error chunk at the usage reported before it."""
    guard.set_budget("1", user="alice")
    cloud.fail_streams = True
    with budget_scope("alice"), pytest.raises(errors.ServerError):
        for _ in gemini.models.generate_content_stream(model=MODEL, contents="Say hello"):
            pass
    assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == PROMPT_COST


def test_retried_request_is_charged_once(guard: BudgetGuard, cloud: FakeCloud) -> None:
    """Charge a request the SDK retried after a 500 once, for the response that came back."""
    client = _client(cloud, retries=2)
    cloud.failures = 1
    try:
        with budget_scope("alice"):
            client.models.generate_content(model=MODEL, contents="Say hello")
    finally:
        client.close()
    assert len(cloud.requests) == 2
    assert guard.spend("alice") == CALL_COST


def test_embeddings_are_charged_their_usage(guard: BudgetGuard, gemini: genai.Client) -> None:
    """Charge embed_content from the usage_metadata of its reply."""
    with budget_scope("alice"):
        reply = gemini.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert reply.embeddings is not None and len(reply.embeddings) == 2
    assert guard.spend("alice") == EMBED_COST


def test_embeddings_without_usage_follow_the_missing_cost_policy(
    cloud: FakeCloud, gemini: genai.Client
) -> None:
    """Charge an embedding reply without usage its estimate, never $0, and warn under raise."""
    cloud.embed_usage = False
    made = BudgetGuard(metrics=False, on_missing_cost="raise")
    instrument(made)
    try:
        with budget_scope("alice"), pytest.raises(Exception, match="no usage"):
            gemini.models.embed_content(model="gemini-embedding-001", contents=["hello " * 50])
        assert made.spend("alice") > 0
    finally:
        uninstrument()
        made.close()


def test_chat_turns_are_charged_each(guard: BudgetGuard, gemini: genai.Client) -> None:
    """Charge each turn of chats.create(...).send_message through models."""
    chat = gemini.chats.create(model=MODEL)
    with budget_scope("alice"):
        chat.send_message("Say hello")
        chat.send_message("Again")
    assert guard.spend("alice") == CALL_COST * 2


def get_weather(city: str) -> str:
    """Return the weather in ``city`` (a tool the model calls)."""
    return f"Sunny in {city}"


def test_function_calling_loop_is_charged_per_request(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Charge each request of automatic function calling for its own usage, not the last only."""
    config = types.GenerateContentConfig(tools=[get_weather])
    with budget_scope("alice"):
        reply = gemini.models.generate_content(model=MODEL, contents="Weather?", config=config)
    assert reply.text == "Hello wide world"
    assert len(cloud.requests) == 2
    assert guard.spend("alice") == CALL_COST * 2


def test_function_calling_turn_that_breaks_the_budget_is_refused(
    guard: BudgetGuard, gemini: genai.Client, cloud: FakeCloud
) -> None:
    """Refuse the second request of a function-calling loop once the first spent the budget."""
    guard.set_budget("0.002", user="alice")
    # The second turn's estimate (200 output tokens, $0.0005) exceeds the $0.00045 left.
    config = types.GenerateContentConfig(tools=[get_weather], max_output_tokens=200)
    with budget_scope("alice"), pytest.raises(BudgetExceededError):
        gemini.models.generate_content(model=MODEL, contents="Weather?", config=config)
    assert len(cloud.requests) == 1
    assert guard.spend("alice") == CALL_COST


async def test_async_generate_content_is_charged(guard: BudgetGuard, agemini: genai.Client) -> None:
    """Charge aio.models.generate_content from its usage; the method stays a coroutine."""
    async with budget_scope("alice"):
        reply = await agemini.aio.models.generate_content(model=MODEL, contents="Say hello")
    assert reply.text == "Hello wide world"
    assert guard.spend("alice") == CALL_COST


async def test_async_over_budget_sends_no_request(
    guard: BudgetGuard, agemini: genai.Client, cloud: FakeCloud
) -> None:
    """Refuse aio generate_content, its stream and embeddings before any request leaves."""
    guard.set_budget("0.0001", user="alice")
    config = types.GenerateContentConfig(max_output_tokens=100)
    models = agemini.aio.models
    async with budget_scope("alice"):
        with pytest.raises(BudgetExceededError):
            await models.generate_content(model=MODEL, contents="Say hello", config=config)
        with pytest.raises(BudgetExceededError):
            async for _ in await models.generate_content_stream(
                model=MODEL, contents="Say hello", config=config
            ):
                pass
        guard.set_budget("0.0000001", user="alice")
        with pytest.raises(BudgetExceededError):
            await models.embed_content(model="gemini-embedding-001", contents=["x " * 2000])
    assert cloud.requests == []


async def test_async_stream_is_charged_once(guard: BudgetGuard, agemini: genai.Client) -> None:
    """Charge an aio stream read to the end once, from its last usage_metadata."""
    guard.set_budget("1", user="alice")
    async with budget_scope("alice"):
        stream = await agemini.aio.models.generate_content_stream(model=MODEL, contents="Hi")
        texts = [chunk.text async for chunk in stream]
    assert "".join(text or "" for text in texts) == "Hello wide world"
    assert guard.spend("alice") == CALL_COST
    assert reserved(guard, "alice") == 0


async def test_async_stream_left_with_break_settles(
    guard: BudgetGuard, agemini: genai.Client
) -> None:
    """Settle an aio stream left with ``break`` once it is closed or collected."""
    guard.set_budget("1", user="alice")
    async with budget_scope("alice"):
        stream = await agemini.aio.models.generate_content_stream(model=MODEL, contents="Hi")
        async for _ in stream:
            break
        await stream.aclose()
        del stream
        gc.collect()
        # The SDK's inner generators are closed by the event loop, a step or two later.
        for _ in range(10):
            if reserved(guard, "alice") == 0:
                break
            await asyncio.sleep(0)
    assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == PROMPT_COST


async def test_async_failed_request_releases(
    guard: BudgetGuard, agemini: genai.Client, cloud: FakeCloud
) -> None:
    """Charge and hold nothing after an aio request failed with HTTP 500."""
    guard.set_budget("1", user="alice")
    cloud.failures = 2
    async with budget_scope("alice"):
        with pytest.raises(errors.ServerError):
            await agemini.aio.models.generate_content(model=MODEL, contents="Say hello")
        # The async stream posts when it is first iterated.
        stream = await agemini.aio.models.generate_content_stream(model=MODEL, contents="Hi")
        with pytest.raises(errors.ServerError):
            async for _ in stream:
                pass
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0


def test_image_generation_is_guarded_and_says_it_is_unpriced(
    guard: BudgetGuard, cloud: FakeCloud
) -> None:
    """Warn that image calls have no price, and refuse them once a budget has nothing left."""
    client = genai.Client(
        vertexai=True, api_key="test", http_options=types.HttpOptions(base_url=cloud.url)
    )
    guard.set_budget("0.001", user="alice")
    try:
        with budget_scope("alice"):
            with pytest.warns(RuntimeWarning, match="no per-image or per-second prices"):
                reply = client.models.generate_images(
                    model="imagen-4.0-generate-001", prompt="a cat"
                )
            assert reply.generated_images is not None and len(reply.generated_images) == 1
            guard.charge("0.001")
            with pytest.raises(BudgetExceededError):
                client.models.generate_images(model="imagen-4.0-generate-001", prompt="a cat")
    finally:
        client.close()
    assert len(cloud.requests) == 1


def test_arguments_are_read_for_the_estimate() -> None:
    """Read contents of every shape, the system instruction, the output limit and candidates."""
    config = types.GenerateContentConfig(
        system_instruction="Be brief", max_output_tokens=64, candidate_count=2
    )
    contents: list[Any] = [
        "plain",
        types.Part(text="a part"),
        {"role": "model", "parts": [{"text": "a dict"}]},
        types.Content(role="user", parts=[types.Part.from_bytes(data=b"x", mime_type="image/png")]),
    ]
    found = genai_arguments(
        {
            "model": "publishers/google/models/gemini-2.5-flash",
            "contents": contents,
            "config": config,
        }
    )
    assert found["model"] == MODEL and lookup(found["model"]) is not None
    assert found["system"] == "Be brief"
    assert (found["max_output_tokens"], found["n"]) == (64, 2)
    assert found["messages"] == [
        {"role": "model", "content": [{"type": "text", "text": "a dict"}]},
        {"role": "user", "content": [{"type": "image"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "plain"}, {"type": "text", "text": "a part"}],
        },
    ]
    assert genai_arguments({"model": "tunedModels/123", "contents": "x"})["model"] == (
        "tunedModels/123"
    )


def test_estimate_bounds_the_reservation(guard: BudgetGuard, gemini: genai.Client) -> None:
    """Admit a call whose max_output_tokens estimate fits though the default output would not."""
    # 40 output tokens at $2.50/M is $0.0001; the default output size is far more.
    for user in ("alice", "bob"):
        guard.set_budget("0.00011", user=user)
    config = types.GenerateContentConfig(max_output_tokens=40)
    with budget_scope("alice"):
        gemini.models.generate_content(model=MODEL, contents="Hi", config=config)
    with budget_scope("bob"), pytest.raises(BudgetExceededError):
        gemini.models.generate_content(model=MODEL, contents="Hi")
    assert guard.spend("alice") == CALL_COST


def test_uninstrument_restores_the_sdk(guard: BudgetGuard) -> None:
    """Take the wrappers off every patched google-genai method."""
    patched = [name for name in instrument(guard) if name.startswith("google.genai")]
    assert "google.genai.models.Models._generate_content" in patched
    assert "google.genai.models.AsyncModels._generate_content_stream" in patched
    uninstrument()
    for cls in (Models, AsyncModels):
        for method in ("_generate_content", "_generate_content_stream", "_embed_content"):
            assert not hasattr(cls.__dict__[method], "__wrapped__")


def test_budgeted_function_returning_a_stream_is_charged_once(
    guard: BudgetGuard, gemini: genai.Client
) -> None:
    """Charge a @budgeted function that returns the SDK's lazy stream once, from its usage."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.01")
    def chat() -> Any:
        return gemini.models.generate_content_stream(model=MODEL, contents="Say hello")

    assert [chunk.text for chunk in chat()] == ["Hello", " wide", " world"]
    assert guard.spend("alice") == CALL_COST
    assert reserved(guard, "alice") == 0


async def test_budgeted_coroutine_returning_an_async_stream_is_charged_once(
    guard: BudgetGuard, agemini: genai.Client
) -> None:
    """Charge a @budgeted coroutine that returns an aio stream once, from its usage."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.01")
    async def chat() -> Any:
        return await agemini.aio.models.generate_content_stream(model=MODEL, contents="Hi")

    stream = await chat()
    assert [chunk.text async for chunk in stream] == ["Hello", " wide", " world"]
    assert guard.spend("alice") == CALL_COST
    assert reserved(guard, "alice") == 0
