"""Bad values are refused at the door, naming the value, and change nothing; money keeps its digits.

Periods that no window can be cut by, the user id ``""`` (which the ledger
reads as "no user"), and a caller's ``Decimal`` context that would round
amounts. Limits a backend cannot hold are in ``tests/ledger/test_limits_door.py``
(they need every backend).
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal, localcontext
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

import budgetguard as bg
from budgetguard import BudgetGuard
from budgetguard.compat import BudgetManager
from budgetguard.money import from_units, to_units
from budgetguard.usage import Usage

BAD_PERIODS = [
    pytest.param(10**20, "100000000000000000000", id="10**20"),
    pytest.param(float("inf"), "inf", id="inf"),
    pytest.param(float("nan"), "nan", id="nan"),
    pytest.param(timedelta(days=999_999_999), "999999999", id="999999999-days"),
    pytest.param(timedelta(days=36_526), "36526", id="a-century-and-a-day"),
    pytest.param(0.5, "0.5", id="half-a-second"),
    pytest.param(timedelta(milliseconds=1500), "microseconds=500000", id="1.5s"),
    pytest.param(-3600, "-3600", id="negative"),
    pytest.param(timedelta(hours=-1), "-1", id="negative-timedelta"),
    pytest.param(0, "0", id="zero"),
]


@pytest.mark.parametrize(("period", "named"), BAD_PERIODS)
def test_set_budget_refuses_a_period_no_window_can_be_cut_by(
    guard: BudgetGuard, period: object, named: str
) -> None:
    """The error names the period; the budget already set stays as it was."""
    guard.set_budget("5", user="alice", period="daily")
    with pytest.raises(ValueError, match="period") as refused:
        guard.set_budget("1", user="alice", period=period)
    assert named in str(refused.value)
    kept = guard.get_budget("alice")
    assert kept is not None and kept.limit == 5 and kept.period.name == "daily"
    with pytest.raises(ValueError, match="period"):
        guard.set_default_budget("1", period=period)
    assert guard.get_default_budget() is None


@pytest.mark.parametrize(
    "period", [1, 3600.0, timedelta(minutes=90), timedelta(days=36_525), "monthly", None]
)
def test_set_budget_accepts_whole_seconds_up_to_a_century(
    guard: BudgetGuard, period: object
) -> None:
    """Every period from one second to a century, in whole seconds, works for a call."""
    guard.set_budget("1", user="alice", period=period)

    @guard.budgeted(user="alice", estimate="0.1", cost=lambda _: "0.1")
    def call() -> str:
        return "ran"

    assert call() == "ran"
    assert guard.spend("alice") == Decimal("0.1")


# -- the user id "" ---------------------------------------------------------------------

EMPTY = "non-empty string, got ''"


def entry_points(guard: BudgetGuard) -> dict[str, Callable[[], Any]]:
    """Return every way of naming a user, each called with the user id ""."""

    def decorated_literal() -> Any:
        return guard.budgeted(user="", estimate="0.1")(lambda: "ran")

    def decorated_argument() -> Any:
        return guard.budgeted(user="who", estimate="0.1")(lambda who: "ran")(who="")

    def decorated_callable() -> Any:
        return guard.budgeted(user=lambda: "", estimate="0.1")(lambda: "ran")()

    def scoped() -> Any:
        with guard.budget_scope(""):
            pass

    def module_scope() -> Any:
        with bg.budget_scope(""):
            pass

    response = priced_response(1000)
    return {
        "set_budget": lambda: guard.set_budget("1", user=""),
        "budget_scope": scoped,
        "bg.budget_scope": module_scope,
        "@budgeted literal": decorated_literal,
        "@budgeted argument": decorated_argument,
        "@budgeted callable": decorated_callable,
        "charge": lambda: guard.charge("0.1", user=""),
        "record_spend": lambda: guard.record_spend("0.1", user=""),
        "record": lambda: guard.record(response, user=""),
        "spend": lambda: guard.spend(""),
        "remaining": lambda: guard.remaining(""),
        "delete_budget": lambda: guard.delete_budget(""),
        "BudgetManager.create_budget": lambda: BudgetManager(
            "door", client_type="local", guard=guard
        ).create_budget(1.0, ""),
    }


ENTRY_POINTS = [
    "set_budget",
    "budget_scope",
    "bg.budget_scope",
    "@budgeted literal",
    "@budgeted argument",
    "@budgeted callable",
    "charge",
    "record_spend",
    "record",
    "spend",
    "remaining",
    "delete_budget",
    "BudgetManager.create_budget",
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_user_id_empty_is_refused_everywhere_a_user_is_named(
    guard: BudgetGuard, entry: str
) -> None:
    """ "" would share the tallies of calls without a user: refused, and nothing is charged."""
    assert sorted(entry_points(guard)) == sorted(ENTRY_POINTS)
    guard.set_budget("1")
    with pytest.raises(ValueError, match=EMPTY):
        entry_points(guard)[entry]()
    assert guard.spend() == 0
    assert guard.ledger.scan("t|") == {}
    assert [budget.name for budget in guard.budgets()] == ["global"]


def test_a_user_id_of_spaces_is_a_user_of_its_own(guard: BudgetGuard) -> None:
    """Ids are kept as given: " " is refused nowhere and never shares the no-user tallies."""
    guard.set_budget("1", user=" ")
    guard.charge("0.25", user=" ")
    guard.charge("0.5")
    assert guard.spend(" ") == Decimal("0.25")
    assert guard.remaining(" ") == Decimal("0.75")
    assert guard.spend() == Decimal("0.75")


# -- budgetguard's own Decimal context ------------------------------------------------------

# gpt-4o costs $2.50 per million input tokens: 1,234,565 tokens cost $3.0864125.
TOKENS = 1_234_565
EXACT = Decimal("3.0864125")


def priced_response(input_tokens: int) -> ChatCompletion:
    """Return a real openai ChatCompletion that used ``input_tokens`` of gpt-4o."""
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-door",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hi"},
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": 0,
                "total_tokens": input_tokens,
            },
        }
    )


@pytest.fixture
def six_digits() -> Iterator[decimal.Context]:
    """Run the test with the caller's Decimal context at 6 digits, rounding down."""
    with localcontext() as context:
        context.prec = 6
        context.rounding = decimal.ROUND_DOWN
        yield context


@pytest.mark.usefixtures("six_digits")
def test_a_call_is_charged_to_the_last_digit_whatever_the_callers_context(
    guard: BudgetGuard,
) -> None:
    """With getcontext().prec = 6 a $3.0864125 call is charged $3.0864125, not $3.08641."""
    guard.set_budget("10", user="alice")
    response = priced_response(TOKENS)

    @guard.budgeted(user="alice", estimate="4")
    def call() -> ChatCompletion:
        return response

    call()
    assert guard.spend("alice") == EXACT
    assert guard.remaining("alice") == Decimal("6.9135875")
    assert guard.price(Usage(input_tokens=TOKENS, model="gpt-4o")) == (EXACT, True)
    assert guard.record(response, user="bob") == EXACT
    assert guard.spend("bob") == EXACT


@pytest.mark.usefixtures("six_digits")
def test_units_and_dollars_convert_exactly_whatever_the_callers_context() -> None:
    """to_units and from_units keep every digit under a 6-digit context."""
    assert to_units(EXACT) == 3_086_412_500
    assert from_units(3_086_412_500) == EXACT
    assert to_units(Decimal("1234567.000000001")) == 1_234_567_000_000_001
    assert from_units(1_234_567_000_000_001) == Decimal("1234567.000000001")


@pytest.mark.usefixtures("six_digits")
def test_the_fallback_price_is_exact_whatever_the_callers_context() -> None:
    """A model with no price is charged at the fallback price to the last digit."""
    guard = BudgetGuard("memory://", metrics=False, fallback_price=("1.234567", "0"))
    with pytest.warns(RuntimeWarning):
        cost, priced = guard.price(Usage(input_tokens=TOKENS, model="no-such-model-door"))
    assert not priced
    assert cost == Decimal("1.524153208355")  # 1,234,565 x $1.234567 per million


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("reservation_ttl", float("nan")),
        ("reservation_ttl", float("inf")),
        ("reservation_ttl", 0),
        ("reservation_ttl", -5),
        ("default_output_tokens", -5000),
        ("outbox_size", -1),
    ],
)
def test_a_guard_refuses_options_that_would_fail_every_call(option: str, value: object) -> None:
    """A NaN time-to-live (which let a fail_open guard run unchecked) is refused when built."""
    with pytest.raises(bg.ConfigurationError, match=option):
        BudgetGuard("memory://", metrics=False, **{option: value})
