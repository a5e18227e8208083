"""The SDKs' stream helpers settle when closed or left, and a refusal leaks no coroutine.

``chat.completions.stream()`` and ``responses.stream()`` close their HTTP
response themselves, past the settling proxy of the stream they read; these
tests hold on to the stream object while checking the ledger, so a pass
cannot come from garbage collection.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES: Any = [{"role": "user", "content": "Say hello to the wide world."}]
# gpt-4o-mini, 1000 input and 500 output tokens: 0.00015 + 0.0003
CHAT_COST = Decimal("0.00045")


@pytest.fixture
def alice(guard: BudgetGuard) -> BudgetGuard:
    """Give alice a budget large enough for every call here."""
    guard.set_budget("1", user="alice")
    return guard


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Keep the cycle collector off, so nothing is settled by garbage collection."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _never_awaited(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "was never awaited" in str(w.message)]


@pytest.mark.usefixtures("no_gc")
def test_chat_stream_helper_left_half_way_settles_on_exit(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Leaving chat.completions.stream()'s with block half way ends the hold at once."""
    with budget_scope("alice"):
        with oai.chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=500
        ) as stream:
            events = iter(stream)
            next(events)
            assert reserved(alice, "alice") > 0  # held while it streams
        assert reserved(alice, "alice") == 0  # `stream` is still alive: not the GC
    assert Decimal(0) < alice.spend("alice") < CHAT_COST  # the prompt and the text seen
    assert alice.ledger.open_reservations() == []
    del stream, events


@pytest.mark.usefixtures("no_gc")
def test_chat_stream_helper_closed_half_way_settles_at_close(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """close() on the helper's stream ends the hold before the with block ends."""
    with (
        budget_scope("alice"),
        oai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream,
    ):
        next(iter(stream))
        stream.close()
        assert reserved(alice, "alice") == 0
        charged = alice.spend("alice")
    assert alice.spend("alice") == charged > 0  # the exit did not charge it again


def test_chat_stream_helper_read_to_the_end_is_charged_its_usage_once(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """get_final_completion() reads the stream; the call is charged its usage, once."""
    with (
        budget_scope("alice"),
        oai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream,
    ):
        completion = stream.get_final_completion()
    assert completion.choices[0].message.content == "Hello wide world"
    assert alice.spend("alice") == CHAT_COST
    assert reserved(alice, "alice") == 0


def test_chat_stream_helper_refused_on_entry_sends_nothing(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """A stream() over budget raises on entry, like the SDK's request, and sends nothing."""
    guard.set_budget("0.000001", user="bob")
    with budget_scope("bob"):
        manager = oai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(BudgetExceededError), manager:
            pass
    assert llm.requests == []
    assert guard.ledger.open_reservations() == []


@pytest.mark.usefixtures("no_gc")
def test_responses_stream_helper_left_half_way_settles_on_exit(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Leaving responses.stream()'s with block half way ends the hold at once."""
    with budget_scope("alice"):
        with oai.responses.stream(
            model="gpt-4o-mini", input="Say hello", max_output_tokens=500
        ) as stream:
            next(iter(stream))
            assert reserved(alice, "alice") > 0
        assert reserved(alice, "alice") == 0
    assert alice.ledger.open_reservations() == []
    del stream


def test_responses_stream_helper_read_to_the_end_is_charged_its_usage(
    alice: BudgetGuard, oai: openai.OpenAI
) -> None:
    """responses.stream() read to its end is charged from response.completed's usage."""
    with budget_scope("alice"), oai.responses.stream(model="gpt-4o-mini", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.usage is not None
    assert alice.spend("alice") == CHAT_COST
    assert reserved(alice, "alice") == 0


@pytest.mark.usefixtures("no_gc")
async def test_async_chat_stream_helper_left_half_way_settles_on_exit(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """Leaving an async chat.completions.stream() half way ends the hold at once."""
    async with budget_scope("alice"):
        async with aoai.chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=500
        ) as stream:
            async for _event in stream:
                break
            assert reserved(alice, "alice") > 0
        assert reserved(alice, "alice") == 0
    assert alice.spend("alice") > 0
    del stream


@pytest.mark.usefixtures("no_gc")
async def test_async_chat_stream_helper_closed_half_way_settles_at_close(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """await stream.close() on an async helper stream ends the hold at once."""
    async with (
        budget_scope("alice"),
        aoai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream,
    ):
        await stream.__anext__()
        await stream.close()
        assert reserved(alice, "alice") == 0


async def test_async_chat_stream_helper_read_to_the_end_is_charged_once(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """An async helper stream read to its end is charged its usage, once."""
    async with (
        budget_scope("alice"),
        aoai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream,
    ):
        await stream.get_final_completion()
    assert alice.spend("alice") == CHAT_COST
    assert reserved(alice, "alice") == 0


@pytest.mark.usefixtures("no_gc")
async def test_async_responses_stream_helper_left_half_way_settles_on_exit(
    alice: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """Leaving an async responses.stream() half way ends the hold at once."""
    async with budget_scope("alice"):
        async with aoai.responses.stream(model="gpt-4o-mini", input="Say hello") as stream:
            async for _event in stream:
                break
        assert reserved(alice, "alice") == 0
    del stream


async def test_refused_async_stream_helpers_raise_on_entry_and_leak_no_coroutine(
    guard: BudgetGuard,
    aoai: openai.AsyncOpenAI,
    aclaude: anthropic.AsyncAnthropic,
    llm: FakeLLM,
) -> None:
    """Every async stream helper over budget raises on async-with entry; nothing warns."""
    guard.set_budget("0.000001", user="bob")
    managers: list[Any] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with budget_scope("bob"):
            managers = [
                aclaude.messages.stream(
                    model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES
                ),
                aclaude.beta.messages.stream(
                    model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES
                ),
                aoai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES),
                aoai.responses.stream(model="gpt-4o-mini", input="Say hello"),
            ]
            for manager in managers:
                # The SDKs return the manager itself, not a coroutine: the
                # refusal comes where the request would leave, on entry.
                assert hasattr(manager, "__aenter__")
                with pytest.raises(BudgetExceededError):
                    async with manager:
                        pass
        del managers, manager
        gc.collect()
    assert _never_awaited(caught) == []
    assert llm.requests == []
    assert guard.ledger.open_reservations() == []


def test_refused_anthropic_stream_raises_on_entry(
    guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """The sync messages.stream() over budget raises on entry and sends nothing."""
    guard.set_budget("0.000001", user="bob")
    with budget_scope("bob"):
        manager = claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=600, messages=MESSAGES
        )
        with pytest.raises(BudgetExceededError), manager:
            pass
    assert llm.requests == []
