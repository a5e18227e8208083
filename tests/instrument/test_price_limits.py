"""The price table's per-call fee and output limits, through the real OpenAI client."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai

from budgetguard import BudgetGuard, budget_scope

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES: Any = [{"role": "user", "content": "What happened in the news today?"}]
# 1000 input and 500 output tokens (every answer of the fake API), plus the
# $0.025 web-search fee of every call of a search-preview model.
MINI_SEARCH_COST = Decimal("0.00015") + Decimal("0.0003") + Decimal("0.025")
SEARCH_COST = Decimal("0.0025") + Decimal("0.005") + Decimal("0.025")


def test_search_preview_chat_completion_is_charged_its_search_fee(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """A chat completion of gpt-4o-mini-search-preview is charged its tokens and its search."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = oai.chat.completions.create(model="gpt-4o-mini-search-preview", messages=MESSAGES)
        oai.chat.completions.create(model="gpt-4o-search-preview", messages=MESSAGES)
    assert reply.model == "gpt-4o-mini-search-preview-2025-03-11"
    assert guard.spend("alice") == MINI_SEARCH_COST + SEARCH_COST
    assert guard.spend_by_model("alice") == {
        "gpt-4o-mini-search-preview-2025-03-11": MINI_SEARCH_COST,
        "gpt-4o-search-preview-2025-03-11": SEARCH_COST,
    }
    assert reserved(guard, "alice") == 0


def test_search_preview_stream_is_charged_its_search_fee(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """A streamed search-preview chat completion is charged the fee once, with its usage."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = oai.chat.completions.create(
            model="gpt-4o-mini-search-preview", messages=MESSAGES, stream=True
        )
        list(stream)
    assert guard.spend("alice") == MINI_SEARCH_COST
    assert reserved(guard, "alice") == 0


def test_max_tokens_above_the_models_limit_is_reserved_at_the_limit(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """max_tokens=1,000,000 on gpt-4o-mini (16,384 at most) holds the limit's worth, not $0.60."""
    # 16,384 output tokens at $0.60/M is $0.0098; a million would be $0.60.
    guard.set_budget("0.05", user="alice")
    held: list[Decimal] = []
    with budget_scope("alice"):
        stream = oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=1_000_000, stream=True
        )
        held.append(reserved(guard, "alice"))
        list(stream)
    assert len(llm.requests) == 1  # admitted: the estimate fits the $0.05 budget
    assert Decimal("0.0098") < held[0] < Decimal("0.0100")
    assert guard.spend("alice") == Decimal("0.00045")
