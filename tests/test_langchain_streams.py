"""A LangChain chat model's stream is charged once, from its usage summed as LangChain sums it."""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from functools import reduce
from typing import Any

import pytest

from budgetguard import BudgetGuard, budget_scope, instrument, uninstrument

pytest.importorskip("langchain_core")
messages = pytest.importorskip("langchain_core.messages")
langchain_openai = pytest.importorskip("langchain_openai")

from instrument.fake_llm import FakeLLM, serve  # noqa: E402  (tests/ is on the path)

# The fake API reports 1000 input and 500 output tokens for every answer.
CHAT_COST = Decimal("0.00045")  # gpt-4o-mini: 0.00015 + 0.0003
MESSAGE_COST = Decimal("0.0035")  # claude-haiku-4-5: 0.001 + 0.0025
ESTIMATE = Decimal("0.05")  # far from both: a pass cannot come from the estimate


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    """Run the loopback OpenAI-shaped API for this module."""
    with serve() as state:
        yield state


@pytest.fixture
def plain() -> Iterator[BudgetGuard]:
    """Return a guard that no client is instrumented with, alice's budget set."""
    made = BudgetGuard(metrics=False)
    made.set_budget("1", user="alice")
    yield made
    made.close()


def _chat(llm: FakeLLM) -> Any:
    return langchain_openai.ChatOpenAI(
        model="gpt-4o-mini",
        api_key="test",
        base_url=f"{llm.url}/v1",
        max_retries=0,
        stream_usage=True,
    )


def test_langchain_openai_stream_returned_is_charged_its_usage(
    plain: BudgetGuard, llm: FakeLLM
) -> None:
    """ChatOpenAI.stream() returned by a guarded function is charged the usage chunk's cost."""
    model = _chat(llm)

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def ask() -> Any:
        return model.stream("Say hello to the wide world.")

    chunks = list(ask())
    whole = reduce(operator.add, chunks)
    assert whole.usage_metadata["input_tokens"] == 1000  # LangChain's own sum
    assert whole.content == "Hello wide world"
    assert plain.spend("alice") == CHAT_COST
    assert plain.spend_by_model("alice") == {"gpt-4o-mini": CHAT_COST}
    assert plain.ledger.open_reservations() == []


def test_langchain_stream_yielded_by_a_guarded_generator_is_charged_once(
    plain: BudgetGuard, llm: FakeLLM
) -> None:
    """A @budgeted generator re-yielding ChatOpenAI's chunks is charged their usage once."""
    model = _chat(llm)

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def ask() -> Iterator[Any]:
        yield from model.stream("Say hello to the wide world.")

    list(ask())
    assert plain.spend("alice") == CHAT_COST
    assert plain.ledger.open_reservations() == []


async def test_langchain_astream_returned_is_charged_its_usage(
    plain: BudgetGuard, llm: FakeLLM
) -> None:
    """ChatOpenAI.astream() returned by an async guarded function is charged its usage."""
    model = _chat(llm)

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    async def ask() -> AsyncIterator[Any]:
        return model.astream("Say hello to the wide world.")

    chunks = [chunk async for chunk in await ask()]
    assert chunks
    assert plain.spend("alice") == CHAT_COST
    assert plain.ledger.open_reservations() == []


def test_langchain_stream_with_the_client_instrumented_is_charged_once(llm: FakeLLM) -> None:
    """With instrument(), the OpenAI call under ChatOpenAI is charged, and nothing again."""
    guard = BudgetGuard(metrics=False)
    guard.set_budget("1", user="alice")
    guard.set_budget("10")  # a global budget, which every call is charged to as well
    instrument(guard)
    try:
        model = _chat(llm)
        with budget_scope("alice"):
            list(model.stream("Say hello to the wide world."))
        assert guard.spend("alice") == CHAT_COST

        @guard.budgeted(user="alice", estimate=ESTIMATE)
        def ask() -> Any:
            return model.stream("Say hello to the wide world.")

        list(ask())  # the request leaves on the first next(), inside the guarded call
        assert guard.spend("alice") == CHAT_COST * 2
        assert guard.spend() == CHAT_COST * 2  # the global budget: once per call too
        assert guard.ledger.open_reservations() == []
    finally:
        uninstrument()
        guard.close()


def test_usage_in_pieces_is_summed_as_langchain_sums_it(plain: BudgetGuard) -> None:
    """Input on the first chunk, output in pieces (ChatAnthropic's way): summed, priced once."""
    chunk = messages.AIMessageChunk

    def pieces() -> Iterator[Any]:
        yield chunk(
            content="",
            usage_metadata={"input_tokens": 1000, "output_tokens": 0, "total_tokens": 1000},
            response_metadata={"model_name": "claude-haiku-4-5"},
        )
        for text, out in (("Hello", 1), (" wide", 0), (" world", 499)):
            yield chunk(
                content=text,
                usage_metadata={"input_tokens": 0, "output_tokens": out, "total_tokens": out},
            )

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def ask() -> Iterator[Any]:
        return pieces()

    chunks = list(ask())
    whole = reduce(operator.add, chunks)
    assert whole.usage_metadata == {
        "input_tokens": 1000,
        "output_tokens": 500,
        "total_tokens": 1500,
    }
    assert plain.spend("alice") == MESSAGE_COST
    assert plain.spend_by_model("alice") == {"claude-haiku-4-5": MESSAGE_COST}


def test_cached_and_reasoning_details_are_summed_too(plain: BudgetGuard) -> None:
    """Token details (cache reads, reasoning) add up across chunks like the totals do."""
    chunk = messages.AIMessageChunk

    def pieces() -> Iterator[Any]:
        yield chunk(
            content="a",
            usage_metadata={
                "input_tokens": 1000,
                "output_tokens": 100,
                "total_tokens": 1100,
                "input_token_details": {"cache_read": 400},
                "output_token_details": {"reasoning": 50},
            },
            response_metadata={"model_name": "gpt-4o-mini"},
        )
        yield chunk(
            content="b",
            usage_metadata={
                "input_tokens": 0,
                "output_tokens": 400,
                "total_tokens": 400,
                "output_token_details": {"reasoning": 50},
            },
        )

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def ask() -> Iterator[Any]:
        return pieces()

    chunks = list(ask())
    summed = reduce(operator.add, chunks).usage_metadata
    # gpt-4o-mini: 600 input at 0.15, 400 cached at 0.075, 500 output (reasoning too) at 0.60
    expected = (600 * Decimal("0.15") + 400 * Decimal("0.075") + 500 * Decimal("0.6")) / 10**6
    assert summed["output_token_details"] == {"reasoning": 100}
    assert plain.spend("alice") == expected


def test_langchain_stream_closed_half_way_ends_its_hold(plain: BudgetGuard, llm: FakeLLM) -> None:
    """A LangChain stream closed after two chunks ends its hold, charging the text it showed."""
    model = _chat(llm)

    @plain.budgeted(user="alice", estimate=ESTIMATE)
    def ask() -> Any:
        return model.stream("Say hello to the wide world.")

    stream = ask()
    next(stream), next(stream)
    # ChatOpenAI names the model on its last chunk only: cut short, the stream
    # names none, and the text seen is charged at the fallback price, never $0.
    with pytest.warns(RuntimeWarning, match="no price known"):
        stream.close()
    assert plain.ledger.open_reservations() == []
    assert Decimal(0) < plain.spend("alice") < ESTIMATE
