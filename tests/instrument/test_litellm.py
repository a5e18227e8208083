"""Real LiteLLM, instrumented, on the loopback servers: charged once, at LiteLLM's own cost."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope, instrument, uninstrument

from .conftest import Outcomes
from .fake_llm import FakeLLM, message
from .vendor_server import VendorServer, json_answer, serve

# LiteLLM fetches its price map from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
# gpt-4o-mini, 1000 input and 500 output tokens (every answer of fake_llm):
# 1000 × 0.15 / 1e6 + 500 × 0.60 / 1e6
CHAT_COST = Decimal("0.00045")


@pytest.fixture
def outcomes(guard: BudgetGuard) -> Outcomes:
    """Return the ended calls of the instrumented guard."""
    found = Outcomes()
    guard.add_listener(found)
    return found


def chat(llm: FakeLLM, **extra: Any) -> dict[str, Any]:
    """Return LiteLLM arguments for an ``openai/`` model on the fake OpenAI API."""
    return {
        "model": "openai/gpt-4o-mini",
        "messages": MESSAGES,
        "api_base": f"{llm.url}/v1",
        "api_key": "test",
        **extra,
    }


def test_openai_model_is_charged_once_with_both_instrumented(
    guard: BudgetGuard, llm: FakeLLM, outcomes: Outcomes
) -> None:
    """``openai/...`` goes through the instrumented OpenAI client, and is charged once."""
    assert "openai.resources.chat.completions.completions.Completions.create" in instrument(guard)
    with budget_scope("alice"):
        litellm.completion(**chat(llm))
    assert guard.spend("alice") == CHAT_COST
    assert len(llm.requests) == 1
    assert len(outcomes.ended) == 1
    assert outcomes.ended[0].cost_source == "reported"
    assert outcomes.ended[0].usage.cost_reporter == "litellm"
    assert guard.ledger.open_reservations() == []


def test_positional_model_and_messages_are_estimated(guard: BudgetGuard, llm: FakeLLM) -> None:
    """``completion(model, messages)`` given positionally is estimated and refused alike."""
    guard.set_budget("0.00001", user="bob")
    with budget_scope("bob"), pytest.raises(BudgetExceededError):
        litellm.completion(
            "openai/gpt-4o-mini", MESSAGES, api_base=f"{llm.url}/v1", api_key="t", max_tokens=500
        )
    assert llm.requests == []


def test_litellm_response_cost_is_the_charge(guard: BudgetGuard, llm: FakeLLM) -> None:
    """LiteLLM's ``response_cost`` (custom prices here) is charged, with a warning it differs."""
    # 1000 × 1e-5 + 500 × 2e-5 = $0.02, where budgetguard's table says $0.00045.
    prices = {"input_cost_per_token": 1e-5, "output_cost_per_token": 2e-5}
    with budget_scope("carol"), pytest.warns(RuntimeWarning, match="reports a cost of"):
        reply = litellm.completion(**chat(llm, **prices))
    assert reply._hidden_params["response_cost"] == pytest.approx(0.02)
    assert guard.spend("carol") == Decimal("0.02")


def test_reported_cost_ignore_prices_from_the_table(llm: FakeLLM) -> None:
    """``reported_cost="ignore"`` prices the usage from budgetguard's table instead."""
    made = BudgetGuard(metrics=False, reported_cost="ignore")
    found = Outcomes()
    made.add_listener(found)
    instrument(made)
    try:
        with budget_scope("dave"):
            litellm.completion(**chat(llm, input_cost_per_token=1e-5, output_cost_per_token=2e-5))
    finally:
        uninstrument()
    assert made.spend("dave") == CHAT_COST
    assert found.ended[0].cost_source == "table"
    made.close()


def test_stream_is_charged_once_and_the_usage_chunk_hidden(
    guard: BudgetGuard, llm: FakeLLM
) -> None:
    """A stream is charged its usage; the usage chunk budgetguard asked for is not shown."""
    with budget_scope("erin"):
        chunks = list(litellm.completion(**chat(llm, stream=True)))
    assert all(chunk.choices for chunk in chunks)
    assert llm.requests[0][1]["stream_options"] == {"include_usage": True}
    assert guard.spend("erin") == CHAT_COST
    assert guard.ledger.open_reservations() == []


def test_stream_that_asked_for_usage_keeps_its_usage_chunk(
    guard: BudgetGuard, llm: FakeLLM
) -> None:
    """A caller that asked for usage still gets the usage chunk."""
    options = {"include_usage": True}
    with budget_scope("erin"):
        chunks = list(litellm.completion(**chat(llm, stream=True, stream_options=options)))
    assert chunks[-1].usage.prompt_tokens == 1000
    assert guard.spend("erin") == CHAT_COST


async def test_acompletion_and_its_stream_are_charged_once(
    guard: BudgetGuard, llm: FakeLLM
) -> None:
    """``acompletion`` stays a coroutine; it and its stream are each charged once."""
    import inspect

    assert inspect.iscoroutinefunction(litellm.acompletion)
    with budget_scope("frank"):
        await litellm.acompletion(**chat(llm))
        stream = await litellm.acompletion(**chat(llm, stream=True))
        async for _chunk in stream:
            pass
    assert guard.spend("frank") == 2 * CHAT_COST
    assert len(llm.requests) == 2
    assert guard.ledger.open_reservations() == []


async def test_completion_with_acompletion_true_is_guarded_as_a_coroutine(
    guard: BudgetGuard, llm: FakeLLM
) -> None:
    """``completion(acompletion=True)`` returns a coroutine, charged once when awaited."""
    with budget_scope("frank"):
        pending = litellm.completion(**chat(llm, acompletion=True))
        await pending
    assert guard.spend("frank") == CHAT_COST
    assert len(llm.requests) == 1
    assert guard.ledger.open_reservations() == []


def test_embedding_and_responses_are_charged(guard: BudgetGuard, llm: FakeLLM) -> None:
    """``embedding`` and ``responses`` are charged once each."""
    base = {"api_base": f"{llm.url}/v1", "api_key": "test"}
    with budget_scope("gina"):
        litellm.embedding(model="openai/text-embedding-3-small", input=["a"], **base)
        litellm.responses(model="openai/gpt-4o-mini", input="hi", **base)
    # text-embedding-3-small: 1000 × $0.02/M; the Responses call 1000 in, 500 out.
    assert guard.spend("gina") == Decimal("0.00002") + CHAT_COST
    assert len(llm.requests) == 2


async def test_aembedding_is_charged(guard: BudgetGuard, llm: FakeLLM) -> None:
    """``aembedding`` is charged once."""
    with budget_scope("gina"):
        await litellm.aembedding(
            model="openai/text-embedding-3-small",
            input=["a"],
            api_base=f"{llm.url}/v1",
            api_key="k",
        )
    assert guard.spend("gina") == Decimal("0.00002")


@pytest.fixture
def anthropic_api() -> Iterator[VendorServer]:
    """Run a server answering Anthropic messages that wrote 1000 tokens to the 1-hour cache."""

    def route(path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
        reply = message(str(body["model"]), "standard")
        reply["usage"] = {
            "input_tokens": 100,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
            "output_tokens": 500,
        }
        return json_answer(reply)

    with serve() as state:
        state.reset(route)
        yield state


# claude-haiku-4-5: 100 × $1/M + 1000 × $2/M (1-hour writes) + 500 × $5/M.
# At the 5-minute rate ($1.25/M) it would be $0.00385.
ONE_HOUR_COST = Decimal("0.0046")


@pytest.mark.parametrize("reported_cost", ["use", "ignore"])
def test_one_hour_cache_writes_are_priced_at_the_one_hour_rate(
    anthropic_api: VendorServer, reported_cost: str
) -> None:
    """1-hour cache writes cost the 1-hour rate, from LiteLLM's cost and from the table alike."""
    made = BudgetGuard(metrics=False, reported_cost=reported_cost)  # type: ignore[arg-type]
    instrument(made)
    try:
        with budget_scope("hank"), warnings.catch_warnings():
            warnings.simplefilter("error")  # the two figures agree: no warning
            litellm.completion(
                model="anthropic/claude-haiku-4-5-20251001",
                messages=MESSAGES,
                api_base=anthropic_api.url,
                api_key="test",
            )
    finally:
        uninstrument()
    assert made.spend("hank") == ONE_HOUR_COST
    made.close()


def test_refused_call_sends_nothing(guard: BudgetGuard, llm: FakeLLM) -> None:
    """A call the budget cannot afford is refused before LiteLLM sends anything."""
    guard.set_budget("0.00001", user="ivy")
    with budget_scope("ivy"), pytest.raises(BudgetExceededError):
        litellm.completion(**chat(llm, max_tokens=500))
    assert llm.requests == []
    assert guard.ledger.open_reservations() == []


def test_uninstrument_leaves_litellm_unbudgeted(llm: FakeLLM) -> None:
    """After ``uninstrument()`` LiteLLM's calls are not charged."""
    made = BudgetGuard(metrics=False)
    instrument(made)
    uninstrument()
    with budget_scope("jo"):
        litellm.completion(**chat(llm))
    assert made.spend("jo") == 0
    assert not hasattr(litellm.completion, "__self_wrapper__")
    made.close()


def test_litellm_imported_after_instrument_is_patched_on_import() -> None:
    """``instrument()`` does not import LiteLLM; importing it later patches it."""
    script = (
        "import sys, budgetguard\n"
        "budgetguard.instrument()\n"
        "assert 'litellm' not in sys.modules\n"
        "import litellm\n"
        "print(type(litellm.completion).__name__, type(litellm.aembedding).__name__)\n"
        "budgetguard.uninstrument()\n"
        "print(type(litellm.completion).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert done.stdout.split() == ["FunctionWrapper", "FunctionWrapper", "function"]
