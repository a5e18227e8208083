"""The real openai client, instrumented, against the loopback fake API."""

from __future__ import annotations

import asyncio
import gc
from decimal import Decimal

import openai
import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope
from budgetguard.pricing import lookup
from budgetguard.tokens import count_tokens

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]

# gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output.
# Every answer of the fake API reports 1000 input and 500 output tokens:
# 1000 × 0.15 / 1e6 + 500 × 0.60 / 1e6 = 0.00015 + 0.0003 = $0.00045
CHAT_COST = Decimal("0.00045")


def test_price_table_matches_the_hand_arithmetic() -> None:
    """Check the prices the hand-worked costs of these tests rely on."""
    mini = lookup("gpt-4o-mini")
    assert mini is not None and (mini.input, mini.output) == (Decimal("0.15"), Decimal("0.6"))
    embed = lookup("text-embedding-3-small")
    assert embed is not None and embed.input == Decimal("0.02")
    instruct = lookup("gpt-3.5-turbo-instruct")
    assert instruct is not None and (instruct.input, instruct.output) == (
        Decimal("1.5"),
        Decimal("2"),
    )


def test_sync_chat_is_charged_from_its_usage(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge a sync chat completion exactly what its usage costs, to the scope's user."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "Hello wide world"
    assert guard.spend("alice") == CHAT_COST
    assert guard.spend_by_model("alice") == {"gpt-4o-mini-2024-07-18": CHAT_COST}
    assert reserved(guard, "alice") == 0


def test_parse_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge chat.completions.parse once, like create."""
    with budget_scope("alice"):
        oai.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES)
    assert guard.spend("alice") == CHAT_COST


async def test_async_chat_is_charged(guard: BudgetGuard, aoai: openai.AsyncOpenAI) -> None:
    """Charge an async chat completion exactly, and keep create a coroutine."""
    async with budget_scope("alice"):
        reply = await aoai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.usage is not None and reply.usage.total_tokens == 1500
    assert guard.spend("alice") == CHAT_COST


def test_stream_read_to_the_end_is_charged_once(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """Charge a fully read stream from its usage chunk, which the caller never sees."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        assert isinstance(stream, openai.Stream)
        texts = [chunk.choices[0].delta.content for chunk in stream]  # no IndexError
    assert texts == ["", "Hello", " wide", " world", None]
    assert llm.requests[-1][1]["stream_options"] == {"include_usage": True}
    assert guard.spend("alice") == CHAT_COST
    assert reserved(guard, "alice") == 0


def test_usage_chunk_stays_for_a_caller_who_asked(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Show the usage-only chunk to a caller who asked for include_usage, and charge once."""
    with budget_scope("alice"):
        chunks = list(
            oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert guard.spend("alice") == CHAT_COST


def _abandoned_cost() -> Decimal:
    # Cut short after two chunks, no usage came: the prompt (counted with
    # tiktoken) plus the text seen ("" and "Hello"), at gpt-4o-mini prices.
    prompt = count_tokens(MESSAGES, "gpt-4o-mini")
    seen = count_tokens("Hello", "gpt-4o-mini")
    return (prompt * Decimal("0.15") + seen * Decimal("0.6")) / 1_000_000


def test_stream_broken_out_of_and_closed_settles(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Settle a stream abandoned after two chunks when it is closed: prompt plus text seen."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        for n, _ in enumerate(stream, start=1):
            if n == 2:
                break
        assert reserved(guard, "alice") > 0  # still open: still held
        stream.close()
        stream.close()  # a second close charges nothing more
    assert guard.spend("alice") == _abandoned_cost()
    assert reserved(guard, "alice") == 0


def test_stream_abandoned_and_collected_settles(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Settle a stream abandoned after two chunks when it is garbage-collected."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        next(stream)
        next(stream)
        del stream
        gc.collect()
    assert guard.spend("alice") == _abandoned_cost()
    assert reserved(guard, "alice") == 0


def test_stream_as_context_manager_settles(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Settle a stream left through ``with`` half read."""
    guard.set_budget("1", user="alice")
    with (
        budget_scope("alice"),
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream,
    ):
        next(stream)
        next(stream)
    assert guard.spend("alice") == _abandoned_cost()
    assert reserved(guard, "alice") == 0


def test_stream_helper_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge the SDK's chat.completions.stream helper once, through create."""
    with (
        budget_scope("alice"),
        oai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream,
    ):
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello wide world"
    assert guard.spend("alice") == CHAT_COST


async def test_async_stream_is_charged(guard: BudgetGuard, aoai: openai.AsyncOpenAI) -> None:
    """Charge an async stream read to its end; hide the usage chunk."""
    guard.set_budget("1", user="alice")
    async with budget_scope("alice"):
        stream = await aoai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        assert isinstance(stream, openai.AsyncStream)
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert guard.spend("alice") == CHAT_COST
    assert reserved(guard, "alice") == 0


async def test_async_stream_abandoned_settles(guard: BudgetGuard, aoai: openai.AsyncOpenAI) -> None:
    """Settle an async stream abandoned after two chunks when it is closed."""
    guard.set_budget("1", user="alice")
    async with budget_scope("alice"):
        stream = await aoai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async for n, _ in _enumerate(stream):
            if n == 2:
                break
        await stream.close()
    assert guard.spend("alice") == _abandoned_cost()
    assert reserved(guard, "alice") == 0


async def _enumerate(stream: openai.AsyncStream[object]):  # type: ignore[no-untyped-def]
    n = 0
    async for item in stream:
        n += 1
        yield n, item


def test_http_500_releases_the_reservation(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """Release the reservation of a call that got HTTP 500, and charge nothing."""
    guard.set_budget("1", user="alice")
    llm.failures = 1
    with budget_scope("alice"), pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0


def test_retried_500_is_charged_once(guard: BudgetGuard, llm: FakeLLM) -> None:
    """Charge a call the client retried (500, then 200) once: only the final response bills."""
    client = openai.OpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=2)
    llm.failures = 1
    with budget_scope("alice"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.close()
    assert len(llm.requests) == 2
    assert guard.spend("alice") == CHAT_COST


def test_refused_call_sends_no_request(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """Refuse a call over budget before any HTTP request leaves the process."""
    guard.set_budget("0.000001", user="alice")
    with budget_scope("alice"), pytest.raises(BudgetExceededError) as refused:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    assert refused.value.user == "alice"
    assert llm.requests == []
    assert guard.spend("alice") == 0


def test_outside_scope_refuse_sends_no_request(llm: FakeLLM, oai: openai.OpenAI) -> None:
    """Refuse a call outside any scope under outside_scope='refuse', before the request."""
    from budgetguard import instrument, uninstrument

    strict = BudgetGuard(metrics=False, outside_scope="refuse")
    instrument(strict)
    try:
        with pytest.raises(BudgetExceededError):
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert llm.requests == []
    finally:
        uninstrument()
        strict.close()


def test_outside_scope_global_charges_the_global_budget(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Charge a call outside any scope to the global budget only, by default."""
    guard.set_budget("1")
    oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert guard.spend() == CHAT_COST


async def test_concurrent_calls_against_a_small_budget(
    guard: BudgetGuard, aoai: openai.AsyncOpenAI, llm: FakeLLM
) -> None:
    """Let exactly N of many concurrent async calls through a budget sized for N."""
    kwargs = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1000}
    found = guard.estimate_call(kwargs)
    assert found is not None
    estimate = found[0]  # prompt tokens × $0.15/M + 1000 × $0.60/M
    fits = 3
    guard.set_budget(estimate * fits + estimate / 2, user="alice")
    llm.delay = 0.2  # every reservation is made before any call settles

    async def one() -> bool:
        try:
            await aoai.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        except BudgetExceededError:
            return False
        return True

    async with budget_scope("alice"):
        results = await asyncio.gather(*(one() for _ in range(12)))
    assert sum(results) == fits
    assert len(llm.requests) == fits
    assert guard.spend("alice") == CHAT_COST * fits
    assert reserved(guard, "alice") == 0


async def test_cancelled_call_releases(
    guard: BudgetGuard, aoai: openai.AsyncOpenAI, llm: FakeLLM
) -> None:
    """Release the reservation of an async call cancelled while it waits for the answer."""
    guard.set_budget("1", user="alice")
    llm.delay = 1.0
    async with budget_scope("alice"):
        task = asyncio.ensure_future(
            aoai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        )
        await asyncio.sleep(0.2)
        assert reserved(guard, "alice") > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0


def test_embeddings_are_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge embeddings from their usage: input only."""
    with budget_scope("alice"):
        result = oai.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert result.data[0].embedding == [0.25, -0.5, 1.0]
    # text-embedding-3-small: 1000 × $0.02 / 1e6 = $0.00002
    assert guard.spend("alice") == Decimal("0.00002")


async def test_async_embeddings_are_charged(guard: BudgetGuard, aoai: openai.AsyncOpenAI) -> None:
    """Charge async embeddings from their usage."""
    async with budget_scope("alice"):
        await aoai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert guard.spend("alice") == Decimal("0.00002")


def test_responses_are_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge a Responses API call from its usage."""
    with budget_scope("alice"):
        response = oai.responses.create(model="gpt-4o-mini", input="Say hello")
    assert response.output_text == "Hello wide world"
    assert guard.spend("alice") == CHAT_COST


def test_responses_stream_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge a Responses stream from its response.completed event."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        kinds = [
            event.type
            for event in oai.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
        ]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert guard.spend("alice") == CHAT_COST
    assert reserved(guard, "alice") == 0


async def test_async_responses_are_charged(guard: BudgetGuard, aoai: openai.AsyncOpenAI) -> None:
    """Charge an async Responses API call."""
    async with budget_scope("alice"):
        await aoai.responses.create(model="gpt-4o-mini", input="Say hello")
    assert guard.spend("alice") == CHAT_COST


def test_legacy_completions_are_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge legacy completions, plain and streamed (usage chunk hidden)."""
    # gpt-3.5-turbo-instruct: 1000 × 1.5 / 1e6 + 500 × 2 / 1e6 = 0.0015 + 0.001 = $0.0025
    with budget_scope("alice"):
        oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
        chunks = list(
            oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello", stream=True)
        )
    assert all(chunk.choices for chunk in chunks)
    assert guard.spend("alice") == Decimal("0.0025") * 2


def test_raw_response_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge with_raw_response calls from the parsed body."""
    with budget_scope("alice"):
        raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert raw.parse().usage is not None
    assert guard.spend("alice") == CHAT_COST


def test_uninstrument_restores_and_instrument_is_idempotent(
    llm: FakeLLM, oai: openai.OpenAI
) -> None:
    """Patch once however often instrument() runs, and charge nothing after uninstrument()."""
    from openai.resources.chat.completions import Completions

    from budgetguard import instrument, uninstrument

    original = Completions.__dict__["create"]
    own = BudgetGuard(metrics=False)
    try:
        first = instrument(own)
        assert instrument(own) == first
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert own.spend() == CHAT_COST
    finally:
        uninstrument()
        uninstrument()
    assert Completions.__dict__["create"] is original
    oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert own.spend() == CHAT_COST
    own.close()
