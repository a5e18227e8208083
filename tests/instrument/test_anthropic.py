"""The real anthropic client, instrumented, against the loopback fake API."""

from __future__ import annotations

import gc
from decimal import Decimal

import anthropic
import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope
from budgetguard.pricing import lookup

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
MODEL = "claude-haiku-4-5"

# claude-haiku-4-5: $1 per million input tokens, $5 per million output.
# The fake API reports 1000 input and 500 output tokens:
# 1000 × 1 / 1e6 + 500 × 5 / 1e6 = 0.001 + 0.0025 = $0.0035
MESSAGE_COST = Decimal("0.0035")
# Cut short after message_start: 1000 input and the 1 output token it reports:
# 1000 × 1 / 1e6 + 1 × 5 / 1e6 = 0.001 + 0.000005 = $0.001005
STARTED_COST = Decimal("0.001005")


def test_price_table_matches_the_hand_arithmetic() -> None:
    """Check the prices the hand-worked costs of these tests rely on."""
    price = lookup(MODEL)
    assert price is not None and (price.input, price.output) == (Decimal("1"), Decimal("5"))


def test_sync_message_is_charged(guard: BudgetGuard, claude: anthropic.Anthropic) -> None:
    """Charge messages.create exactly what its usage costs, to the scope's user."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = claude.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES)
    assert reply.content[0].text == "Hello wide world"  # type: ignore[union-attr]
    assert guard.spend("alice") == MESSAGE_COST
    assert reserved(guard, "alice") == 0


async def test_async_message_is_charged(
    guard: BudgetGuard, aclaude: anthropic.AsyncAnthropic
) -> None:
    """Charge an async messages.create exactly."""
    async with budget_scope("alice"):
        await aclaude.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES)
    assert guard.spend("alice") == MESSAGE_COST


def test_create_stream_is_charged(guard: BudgetGuard, claude: anthropic.Anthropic) -> None:
    """Charge messages.create(stream=True) read to its end from its events' usage."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = claude.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES, stream=True)
        assert isinstance(stream, anthropic.Stream)
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert guard.spend("alice") == MESSAGE_COST
    assert reserved(guard, "alice") == 0


def test_create_stream_abandoned_is_collected(
    guard: BudgetGuard, claude: anthropic.Anthropic
) -> None:
    """Settle a stream abandoned after two events when collected: the usage reported so far."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = claude.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES, stream=True)
        next(stream)
        next(stream)
        del stream
        gc.collect()
    assert guard.spend("alice") == STARTED_COST
    assert reserved(guard, "alice") == 0


def test_messages_stream_get_final_message(guard: BudgetGuard, claude: anthropic.Anthropic) -> None:
    """Charge messages.stream(...) once, through with and get_final_message()."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        with claude.messages.stream(model=MODEL, max_tokens=600, messages=MESSAGES) as stream:
            message = stream.get_final_message()
            assert reserved(guard, "alice") == 0  # settled once consumed
        assert message.usage.output_tokens == 500
    assert guard.spend("alice") == MESSAGE_COST


def test_messages_stream_text_stream(guard: BudgetGuard, claude: anthropic.Anthropic) -> None:
    """Charge messages.stream(...) read through text_stream, settled on leaving with."""
    with (
        budget_scope("alice"),
        claude.messages.stream(model=MODEL, max_tokens=600, messages=MESSAGES) as stream,
    ):
        text = "".join(stream.text_stream)
    assert text == "Hello wide world"
    assert guard.spend("alice") == MESSAGE_COST


def test_messages_stream_left_early(guard: BudgetGuard, claude: anthropic.Anthropic) -> None:
    """Settle messages.stream(...) left after two events: the usage of message_start."""
    guard.set_budget("1", user="alice")
    with (
        budget_scope("alice"),
        claude.messages.stream(model=MODEL, max_tokens=600, messages=MESSAGES) as stream,
    ):
        next(stream)
        next(stream)
    assert guard.spend("alice") == STARTED_COST
    assert reserved(guard, "alice") == 0


async def test_async_messages_stream(guard: BudgetGuard, aclaude: anthropic.AsyncAnthropic) -> None:
    """Charge async messages.stream(...) once, through async with and get_final_message()."""
    guard.set_budget("1", user="alice")
    async with (
        budget_scope("alice"),
        aclaude.messages.stream(model=MODEL, max_tokens=600, messages=MESSAGES) as stream,
    ):
        message = await stream.get_final_message()
    assert message.content[0].text == "Hello wide world"  # type: ignore[union-attr]
    assert guard.spend("alice") == MESSAGE_COST
    assert reserved(guard, "alice") == 0


def test_messages_stream_refused_sends_no_request(
    guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """Refuse messages.stream(...) over budget on entry, before the request leaves."""
    guard.set_budget("0.0001", user="alice")
    with budget_scope("alice"), pytest.raises(BudgetExceededError):  # noqa: SIM117
        with claude.messages.stream(model=MODEL, max_tokens=600, messages=MESSAGES):
            pass
    assert llm.requests == []


def test_http_500_releases(guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM) -> None:
    """Release the reservation of a message that got HTTP 500, and charge nothing."""
    guard.set_budget("1", user="alice")
    llm.failures = 1
    with budget_scope("alice"), pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES)
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0


def test_stream_500_releases(guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM) -> None:
    """Release the reservation of messages.stream(...) whose request got HTTP 500."""
    guard.set_budget("1", user="alice")
    llm.failures = 1
    with budget_scope("alice"), pytest.raises(anthropic.InternalServerError):  # noqa: SIM117
        with claude.messages.stream(model=MODEL, max_tokens=600, messages=MESSAGES):
            pass
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0


def test_retried_500_is_charged_once(guard: BudgetGuard, llm: FakeLLM) -> None:
    """Charge a message the client retried (500, then 200) once."""
    client = anthropic.Anthropic(api_key="test", base_url=llm.url, max_retries=2)
    llm.failures = 1
    with budget_scope("alice"):
        client.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES)
    client.close()
    assert len(llm.requests) == 2
    assert guard.spend("alice") == MESSAGE_COST


def test_refused_message_sends_no_request(
    guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """Refuse a message whose max_tokens alone would break the budget, before any request."""
    # 600 output tokens × $5/M = $0.003 > $0.002
    guard.set_budget("0.002", user="alice")
    with budget_scope("alice"), pytest.raises(BudgetExceededError):
        claude.messages.create(model=MODEL, max_tokens=600, messages=MESSAGES)
    assert llm.requests == []
