"""``update_cost`` with texts: the prompt as a chat message, the output as plain text."""

from __future__ import annotations

from decimal import Decimal

from budgetguard import BudgetManager, count_tokens
from budgetguard.pricing import cost_of
from budgetguard.usage import Usage

MODEL = "gpt-3.5-turbo"  # $0.50 in, $1.50 out per million tokens
INPUT = "hello world"
OUTPUT = "it's a sunny day in san francisco"


def _charged(**texts: str) -> Decimal:
    budget_manager = BudgetManager("p")
    budget_manager.create_budget(10, "u")
    budget_manager.update_cost(user="u", model=MODEL, **texts)
    return budget_manager.get_current_cost("u")


def test_litellm_documentation_example_costs_what_the_provider_bills() -> None:
    """LiteLLM's text example: 9 prompt tokens (framing included) and 9 output tokens, $0.000018."""
    assert count_tokens([{"role": "user", "content": INPUT}], MODEL) == 9
    assert count_tokens(OUTPUT, MODEL) == 9
    assert _charged(input_text=INPUT, output_text=OUTPUT) == Decimal("0.000018")


def test_output_has_no_message_framing() -> None:
    """The output alone is its own tokens at the output price, not a 16-token chat message."""
    assert _charged(output_text=OUTPUT) == 9 * Decimal("1.5") / 10**6 == Decimal("0.0000135")


def test_the_documented_difference_from_litellm() -> None:
    """LiteLLM's rule (output as a chat message) is 7 tokens more: $0.0000285, 37 % above."""
    as_message = count_tokens([{"role": "user", "content": OUTPUT}], MODEL)
    assert as_message - count_tokens(OUTPUT, MODEL) == 7
    litellm = cost_of(Usage(input_tokens=9, output_tokens=as_message, model=MODEL)).total
    ours = _charged(input_text=INPUT, output_text=OUTPUT)
    assert litellm == Decimal("0.0000285")
    assert litellm - ours == 7 * Decimal("1.5") / 10**6 == Decimal("0.0000105")
    assert round((ours - litellm) / litellm * 100) == -37
