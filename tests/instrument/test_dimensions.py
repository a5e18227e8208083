"""Provider, model and token budgets on the real instrumented clients."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import openai
import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope

from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]


def test_provider_budget_caps_one_provider_only(
    guard: BudgetGuard, oai: openai.OpenAI, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """A provider budget on openai refuses openai calls before they are sent; anthropic runs."""
    guard.set_budget(1, provider="openai", unit="requests", period="daily")
    with budget_scope("alice"):
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        sent = len(llm.requests)
        with pytest.raises(BudgetExceededError) as refused:
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert len(llm.requests) == sent  # refused before any request left
        claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=50, messages=MESSAGES)
    assert refused.value.budget == "requests@provider:openai"


def test_model_budget_applies_to_instrumented_calls(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """A model pattern budget refuses the matching model once it is spent; others run."""
    guard.set_budget("0.001", model="gpt-4o-mini*", period="monthly")
    with budget_scope("alice"):
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(BudgetExceededError):
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    (status,) = [s for s in guard.budget_statuses() if s.name == "model:gpt-4o-mini*"]
    assert status.spent == Decimal("0.00045")


def test_token_budget_is_charged_the_tokens_the_response_reports(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Token budgets count the usage of instrumented calls (1000 in, 500 out each)."""
    guard.set_budget(10_000, user="alice", unit="tokens", period=60)
    guard.set_budget(1500, user="alice", unit="output_tokens", period=60)
    with budget_scope("alice"):
        for _ in range(3):  # each reserves max_tokens=100 of output, and writes 500
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
        with pytest.raises(BudgetExceededError) as refused:
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    statuses = {s.name: s for s in guard.budget_statuses()}
    assert statuses["tokens@user:alice"].spent == 4500
    assert statuses["output_tokens@user:alice"].spent == 1500
    assert refused.value.unit == "output_tokens"


def test_instrumented_calls_reserve_their_estimated_tokens(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """A tokens budget reserves the prompt's tokens plus max_tokens before the call is sent."""
    guard.set_budget(600, user="alice", unit="tokens", period=60)
    with budget_scope("alice"), pytest.raises(BudgetExceededError) as refused:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=600)
    assert refused.value.unit == "tokens"
    assert refused.value.requested > 600  # the prompt's tokens and the 600 it may write
    assert llm.requests == []
