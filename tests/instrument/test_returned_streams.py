"""A stream returned by a @budgeted function, without instrument(), is charged from its usage."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from budgetguard import BudgetGuard, instrument, uninstrument

from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
# 1000 input and 500 output tokens (every answer of the fake API):
CHAT_COST = Decimal("0.00045")  # gpt-4o-mini: 1000 × 0.15/1e6 + 500 × 0.60/1e6
ESTIMATE = Decimal("0.05")  # deliberately far from the real cost


@pytest.fixture
def plain() -> Iterator[BudgetGuard]:
    """Return a guard that no client is instrumented with."""
    made = BudgetGuard(metrics=False)
    made.set_budget("1", user="alice")
    yield made
    made.close()


def test_openai_stream_returned_is_charged_its_usage(
    plain: BudgetGuard, oai: openai.OpenAI
) -> None:
    """An openai Stream returned by a guarded function settles from its usage chunk."""

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def chat() -> Any:
        return oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )

    stream = chat()
    assert isinstance(stream, openai.Stream)  # a drop-in proxy
    assert len(plain.ledger.open_reservations()) == 1  # held while it streams
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert plain.spend("alice") == CHAT_COST  # not the $0.05 estimate
    assert plain.ledger.open_reservations() == []


def test_openai_stream_returned_and_closed_half_way_ends_its_hold(
    plain: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Closing a returned stream half way ends the reservation (charged from the text seen)."""

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def chat() -> Any:
        return oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )

    stream = chat()
    next(iter(stream))
    stream.close()
    assert plain.ledger.open_reservations() == []
    assert Decimal(0) <= plain.spend("alice") < ESTIMATE


async def test_async_openai_stream_returned_is_charged_its_usage(
    plain: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """An AsyncStream returned by an async guarded function settles from its usage chunk."""

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    async def chat() -> Any:
        return await aoai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )

    stream = await chat()
    assert isinstance(stream, openai.AsyncStream)
    chunks = [chunk async for chunk in stream]
    assert chunks
    assert plain.spend("alice") == CHAT_COST
    assert plain.ledger.open_reservations() == []


def test_anthropic_stream_returned_is_charged_its_usage(
    plain: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """An anthropic Stream of events returned by a guarded function settles from its usage."""

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def chat() -> Any:
        return claude.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=500,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )

    events = list(chat())
    assert events
    expected = plain.price(_anthropic_usage(), "claude-3-5-haiku-latest")[0]
    assert plain.spend("alice") == expected
    assert plain.ledger.open_reservations() == []


def _anthropic_usage() -> Any:
    from budgetguard.usage import Usage

    from .fake_llm import INPUT_TOKENS, OUTPUT_TOKENS

    return Usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)


def test_instrumented_stream_returned_is_not_wrapped_or_charged_twice(
    plain: BudgetGuard, oai: openai.OpenAI
) -> None:
    """With instrument(), the returned stream is the instrumented proxy alone: charged once."""
    instrument(plain)
    try:

        @plain.budgeted(user="alice")
        def chat() -> Any:
            return oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
            )

        stream = chat()
        assert type(stream).__name__ == "StreamProxy"
        assert type(stream.__wrapped__) is openai.Stream  # one proxy, not two
        list(stream)
    finally:
        uninstrument()
    assert plain.spend("alice") == CHAT_COST
    assert plain.ledger.open_reservations() == []
