"""Streaming responses read as bytes, text or lines are charged from the usage in the bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from budgetguard import BudgetGuard, budget_scope

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES: Any = [{"role": "user", "content": "Say hello to the wide world."}]
# gpt-4o-mini, 1000 input and 500 output tokens: 0.00015 + 0.0003
CHAT_COST = Decimal("0.00045")
# claude-haiku-4-5, 1000 input and 500 output tokens: 0.001 + 0.0025
MESSAGE_COST = Decimal("0.0035")


@pytest.fixture
def alice(guard: BudgetGuard) -> BudgetGuard:
    """Give alice (and bob) a budget large enough for every call here."""
    guard.set_budget("1", user="alice")
    guard.set_budget("1", user="bob")
    return guard


def _all_of(read: str) -> Callable[[Any], object]:
    """Return how to read a whole streaming response the way ``read`` names."""
    readers: dict[str, Callable[[Any], object]] = {
        "read": lambda r: r.read(),
        "text": lambda r: r.text(),
        "json": lambda r: r.json(),
        "iter_bytes": lambda r: b"".join(r.iter_bytes(chunk_size=7)),
        "iter_text": lambda r: "".join(r.iter_text(chunk_size=5)),
        "iter_lines": lambda r: list(r.iter_lines()),
    }
    return readers[read]


READS = ["read", "text", "json", "iter_bytes", "iter_text", "iter_lines"]


@pytest.mark.parametrize("read", READS)
def test_chat_body_read_as_bytes_is_charged_its_usage(
    alice: BudgetGuard, oai: openai.OpenAI, read: str
) -> None:
    """A JSON chat completion read through any byte reader is charged its usage exactly."""
    with (
        budget_scope("alice"),
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=2000
        ) as response,
    ):
        _all_of(read)(response)
    assert alice.spend("alice") == CHAT_COST  # not the estimate for 2,000 output tokens
    assert reserved(alice, "alice") == 0


@pytest.mark.parametrize("read", [r for r in READS if r != "json"])
def test_chat_stream_read_as_bytes_is_charged_its_usage(
    alice: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM, read: str
) -> None:
    """A chat event stream read as bytes, text or lines is charged from its usage chunk."""
    with (
        budget_scope("alice"),
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ) as response,
    ):
        _all_of(read)(response)
    assert llm.requests[-1][1]["stream_options"] == {"include_usage": True}
    assert alice.spend("alice") == CHAT_COST
    assert reserved(alice, "alice") == 0


def test_responses_and_anthropic_streams_read_as_lines_are_charged_their_usage(
    alice: BudgetGuard, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    """Responses events and Anthropic events, read as lines, are charged from their usage."""
    with budget_scope("alice"):
        with oai.responses.with_streaming_response.create(
            model="gpt-4o-mini", input="Say hello", stream=True
        ) as response:
            lines = list(response.iter_lines())
        assert any("response.completed" in line for line in lines)
        with claude.messages.with_streaming_response.create(
            model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES, stream=True
        ) as events:
            list(events.iter_lines())
        with claude.messages.with_streaming_response.create(
            model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES
        ) as message:
            assert json.loads(message.read())["usage"]["output_tokens"] == 500
    assert alice.spend("alice") == CHAT_COST + MESSAGE_COST * 2
    assert reserved(alice, "alice") == 0


def test_stream_read_half_way_as_lines_is_charged_like_a_stream_cut_short(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Two events read as lines, then closed: charged what the SDK stream closed there is."""
    with budget_scope("alice"):
        with oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=2000
        ) as response:
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("data:")
                if seen == 2:  # the role chunk and "Hello"
                    break
        assert reserved(alice, "alice") == 0
    with budget_scope("bob"):
        stream = oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=2000
        )
        chunks = iter(stream)
        next(chunks), next(chunks)
        stream.close()
    partial = alice.spend("alice")
    assert partial == alice.spend("bob")  # the same rule as any stream cut short
    assert Decimal(0) < partial < CHAT_COST  # the prompt and "Hello", estimated


def test_json_body_read_in_part_is_charged_under_on_missing_cost(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Part of a JSON body holds no usage: the call is charged its estimate, never $0."""
    asked: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2000}
    estimate = alice.estimate_call(asked)
    assert estimate is not None
    with (
        budget_scope("alice"),
        oai.chat.completions.with_streaming_response.create(**asked) as response,
    ):
        for _piece in response.iter_bytes(chunk_size=10):
            break
    assert reserved(alice, "alice") == 0
    assert alice.spend("alice") == estimate[0]


@pytest.mark.parametrize("read", ["read", "text", "json", "iter_bytes", "iter_lines"])
async def test_async_body_read_as_bytes_is_charged_its_usage(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI, read: str
) -> None:
    """An async JSON chat completion read through any byte reader is charged its usage."""
    async with (
        budget_scope("alice"),
        aoai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=2000
        ) as response,
    ):
        if read in ("read", "text", "json"):
            await getattr(response, read)()
        else:
            [piece async for piece in getattr(response, read)()]
    assert alice.spend("alice") == CHAT_COST
    assert reserved(alice, "alice") == 0


async def test_async_stream_read_as_lines_is_charged_its_usage(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """An async chat event stream read as lines is charged from its usage chunk."""
    async with (
        budget_scope("alice"),
        aoai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ) as response,
    ):
        lines = [line async for line in response.iter_lines()]
    assert lines[-1] == "data: [DONE]" or "[DONE]" in "".join(lines)
    assert alice.spend("alice") == CHAT_COST
    assert reserved(alice, "alice") == 0


async def test_async_stream_read_half_way_as_bytes_ends_its_hold(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """An async event stream read in part as bytes ends its hold when the response closes."""
    async with budget_scope("alice"):
        async with aoai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=2000
        ) as response:
            pieces = response.iter_bytes(chunk_size=64)
            async for _piece in pieces:
                break
            await pieces.aclose()
        assert reserved(alice, "alice") == 0
    assert Decimal(0) < alice.spend("alice") < CHAT_COST
