"""An instrumented client call inside a @budgeted function is charged once."""

from __future__ import annotations

from decimal import Decimal

import openai

from budgetguard import BudgetGuard, budget_scope

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
# gpt-4o-mini, 1000 input and 500 output tokens (every answer of the fake API):
# 1000 × 0.15 / 1e6 + 500 × 0.60 / 1e6 = $0.00045
CHAT_COST = Decimal("0.00045")


def test_budgeted_function_returning_the_response_is_charged_once(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """The decorator does not price again a response the instrumented client already charged."""

    @guard.budgeted(user="alice")
    def answer() -> object:
        return oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    answer()
    assert guard.spend("alice") == CHAT_COST
    assert guard.ledger.open_reservations() == []


def test_budgeted_generator_over_an_instrumented_stream_is_charged_once(
    guard: BudgetGuard, oai: openai.OpenAI
) -> None:
    """A @budgeted generator relaying an instrumented stream's chunks does not count them twice."""

    @guard.budgeted(user="bob")
    def relay() -> object:
        stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        yield from stream

    with budget_scope("someone-else"):
        chunks = list(relay())
    assert chunks
    assert guard.spend("bob") == CHAT_COST
    assert guard.spend("someone-else") == 0
    assert guard.ledger.open_reservations() == []
