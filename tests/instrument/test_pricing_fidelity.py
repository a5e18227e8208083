"""Instrumented calls are priced as the provider bills them: tier, per-call fees, model names."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from budgetguard import BudgetGuard, budget_scope

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]


def test_priority_tier_chat_is_charged_the_priority_price(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Charge a chat answered in the priority tier at gpt-4o-mini's priority price."""
    with budget_scope("alice"):
        reply = oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, service_tier="priority"
        )
    assert reply.service_tier == "priority"
    # 1000 × 0.25 / 1e6 + 500 × 1 / 1e6 = 0.00025 + 0.0005
    assert guard.spend("alice") == Decimal("0.00075")


def test_flex_tier_responses_are_charged_the_flex_price(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Charge Responses answered in the flex tier, plain and streamed, at the flex price."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        oai.responses.create(model="gpt-5-mini", input="Say hello", service_tier="flex")
        list(
            oai.responses.create(
                model="gpt-5-mini", input="Say hello", service_tier="flex", stream=True
            )
        )
    # gpt-5-mini flex: 1000 × 0.125 / 1e6 + 500 × 1 / 1e6 = 0.000125 + 0.0005
    assert guard.spend("alice") == Decimal("0.000625") * 2
    assert reserved(guard, "alice") == 0


def test_default_tier_is_charged_the_standard_price(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge a call the API served in its default tier at the standard price."""
    with budget_scope("alice"):
        oai.responses.create(model="gpt-5-mini", input="Say hello", service_tier="auto")
    # 1000 × 0.25 / 1e6 + 500 × 2 / 1e6 = 0.00025 + 0.001
    assert guard.spend("alice") == Decimal("0.00125")


def test_openai_web_search_calls_are_charged_their_fee(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Charge each web_search_call of a Responses answer $0.01, plain and streamed."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        oai.responses.create(model="gpt-4o-mini", input="Say hello", tools=[{"type": "web_search"}])
        list(
            oai.responses.create(
                model="gpt-4o-mini", input="Say hello", tools=[{"type": "web_search"}], stream=True
            )
        )
    # 0.00045 of tokens + one search at gpt-4o-mini's $0.01 per call, twice
    assert guard.spend("alice") == (Decimal("0.00045") + Decimal("0.01")) * 2
    assert reserved(guard, "alice") == 0


def test_fine_tuned_model_is_charged_its_fine_tune_price(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """Charge a call of a fine-tune at its base model's fine-tune price, not the fallback."""
    with budget_scope("alice"):
        oai.responses.create(model="ft:gpt-4o-mini-2024-07-18:acme::abc123", input="Say hello")
    # ft:gpt-4o-mini: 1000 × 0.3 / 1e6 + 500 × 1.2 / 1e6 = 0.0003 + 0.0006
    assert guard.spend("alice") == Decimal("0.0009")


def test_azure_deployment_is_estimated_as_the_model_it_serves(llm: FakeLLM) -> None:
    """Estimate an Azure deployment at its configured model's price; charge the response's."""
    from budgetguard import BudgetExceededError, instrument, uninstrument

    client = openai.AzureOpenAI(
        api_key="test", azure_endpoint=llm.url, api_version="2024-10-21", max_retries=0
    )
    own = BudgetGuard(metrics=False)
    try:
        own.set_budget("0.02", user="alice")
        instrument(own)  # no mapping: "my-gpt" is estimated at the fallback price
        with budget_scope("alice"), pytest.raises(BudgetExceededError):
            client.chat.completions.create(model="my-gpt", messages=MESSAGES, max_tokens=500)
        instrument(own, deployments={"my-gpt": "gpt-4o-mini"})
        with budget_scope("alice"):
            reply = client.chat.completions.create(
                model="my-gpt", messages=MESSAGES, max_tokens=500
            )
        assert reply.model == "gpt-4o-mini-2024-07-18"
        assert own.spend("alice") == Decimal("0.00045")
        assert llm.requests[-1][0].startswith("/openai/deployments/my-gpt/")
    finally:
        uninstrument()
        client.close()
        own.close()


def test_azure_deployment_is_charged_at_the_model_the_response_names(llm: FakeLLM) -> None:
    """A deployment mapped to gpt-4o but answered by gpt-4o-mini is charged gpt-4o-mini's price."""
    from budgetguard import instrument, uninstrument

    client = openai.AzureOpenAI(
        api_key="test", azure_endpoint=llm.url, api_version="2024-10-21", max_retries=0
    )
    own = BudgetGuard(metrics=False)
    try:
        instrument(own, deployments={"my-gpt": "gpt-4o"})
        with budget_scope("alice"):
            stream = client.chat.completions.create(
                model="my-gpt", messages=MESSAGES, max_tokens=500, stream=True
            )
            list(stream)
            reply = client.chat.completions.create(
                model="my-gpt", messages=MESSAGES, max_tokens=500
            )
        assert reply.model == "gpt-4o-mini-2024-07-18"
        # gpt-4o-mini, 1000 input and 500 output tokens, twice; at gpt-4o's
        # $2.50/$10 per 1M it would be 0.0075 each.
        assert own.spend("alice") == Decimal("0.00045") * 2
        assert own.ledger.open_reservations() == []
    finally:
        uninstrument()
        client.close()
        own.close()
