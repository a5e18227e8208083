"""Raw and streaming responses of the instrumented clients are priced from their usage."""

from __future__ import annotations

import gc
from decimal import Decimal

import anthropic
import openai
import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
# gpt-4o-mini, 1000 input and 500 output tokens: 0.00015 + 0.0003
CHAT_COST = Decimal("0.00045")
# claude-haiku-4-5, 1000 input and 500 output tokens: 0.001 + 0.0025
MESSAGE_COST = Decimal("0.0035")


def test_streaming_response_parsed_is_charged_its_usage(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Charge with_streaming_response from the body it parses, not the estimate."""
    guard.set_budget("1", user="alice")
    with (
        budget_scope("alice"),
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        ) as response,
    ):
        assert response.parse().usage is not None
    assert guard.spend("alice") == CHAT_COST
    assert reserved(guard, "alice") == 0


async def test_async_streaming_response_parsed_is_charged_its_usage(
    guard: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """Charge an async with_streaming_response from the body it parses."""
    guard.set_budget("1", user="alice")
    async with (
        budget_scope("alice"),
        aoai.responses.with_streaming_response.create(
            model="gpt-4o-mini", input="Say hello"
        ) as response,
    ):
        await response.parse()
    assert guard.spend("alice") == CHAT_COST
    assert reserved(guard, "alice") == 0


def test_streaming_response_of_a_stream_is_charged_its_usage(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """Charge with_streaming_response(stream=True) from the stream's usage chunk, hidden."""
    guard.set_budget("1", user="alice")
    with (
        budget_scope("alice"),
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ) as response,
    ):
        chunks = list(response.parse())
    assert all(chunk.choices for chunk in chunks)
    assert llm.requests[-1][1]["stream_options"] == {"include_usage": True}
    assert guard.spend("alice") == CHAT_COST
    assert reserved(guard, "alice") == 0


def test_raw_response_stream_is_charged_its_usage(
    guard: BudgetGuard, claude: anthropic.Anthropic
) -> None:
    """Charge with_raw_response(stream=True) from the events' usage once read."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        raw = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES, stream=True
        )
        kinds = [event.type for event in raw.parse()]
    assert kinds[-1] == "message_stop"
    assert guard.spend("alice") == MESSAGE_COST
    assert reserved(guard, "alice") == 0


def test_streaming_response_left_unparsed_ends_its_reservation(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """End the reservation of a streaming response read as bytes, under on_missing_cost."""
    guard.set_budget("1", user="alice")
    with (
        budget_scope("alice"),
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=500
        ) as response,
    ):
        response.read()
    gc.collect()
    assert reserved(guard, "alice") == 0
    assert guard.spend("alice") > 0  # the estimate: never $0


def test_raw_response_taken_before_instrument_is_charged(
    llm: FakeLLM, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    """Charge with_raw_response views taken before instrument(), and refuse them over budget."""
    from budgetguard import instrument, uninstrument

    openai_raw = oai.chat.completions.with_raw_response  # cached: holds the plain method
    anthropic_raw = claude.messages.with_raw_response
    own = BudgetGuard(metrics=False)
    instrument(own)
    try:
        own.set_budget("1", user="alice")
        with budget_scope("alice"):
            assert openai_raw.create(model="gpt-4o-mini", messages=MESSAGES).parse().usage
            anthropic_raw.create(model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES)
            chunks = list(
                openai_raw.create(model="gpt-4o-mini", messages=MESSAGES, stream=True).parse()
            )
        assert all(chunk.choices for chunk in chunks)  # the usage chunk stays hidden
        assert own.spend("alice") == CHAT_COST * 2 + MESSAGE_COST
        assert reserved(own, "alice") == 0
        own.set_budget("0.000001", user="bob")
        sent = len(llm.requests)
        with budget_scope("bob"), pytest.raises(BudgetExceededError):
            openai_raw.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
        assert len(llm.requests) == sent
    finally:
        uninstrument()
        own.close()


def test_patched_methods_are_charged_once_with_the_request_net(
    guard: BudgetGuard, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    """Charge a patched method once: the net under it lets its own request through."""
    with budget_scope("alice"):
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES
        ) as stream:
            stream.get_final_text()
    assert guard.spend("alice") == CHAT_COST + MESSAGE_COST
