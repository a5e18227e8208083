"""Exact money: what amounts are accepted, how they add up, and what is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgetguard import BudgetGuard, budget_scope
from budgetguard.ledger.memory import MemoryLedger
from budgetguard.money import UNITS_PER_DOLLAR, from_units, to_decimal, to_units


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Decimal("0.50"), Decimal("0.50")),
        (3, Decimal(3)),
        ("0.50", Decimal("0.50")),
        (" 2.5 ", Decimal("2.5")),
        (0.1, Decimal("0.1")),
        (1e-06, Decimal("0.000001")),
        (0.3, Decimal("0.3")),
    ],
)
def test_to_decimal_accepts_decimal_int_str_and_float(given: object, expected: Decimal) -> None:
    """Decimal, int, str and float (by its shortest repr) become the exact Decimal."""
    result = to_decimal(given)
    assert isinstance(result, Decimal)
    assert result == expected


def test_float_is_taken_by_shortest_repr_not_binary_value() -> None:
    """0.1 means Decimal('0.1'), not the binary 0.1000000000000000055511151231257827."""
    assert to_decimal(0.1) == Decimal("0.1")
    assert to_decimal(0.1) != Decimal.from_float(0.1)


@pytest.mark.parametrize(
    "bad",
    [
        -1,
        Decimal("-0.01"),
        "-5",
        -0.5,
        float("nan"),
        Decimal("NaN"),
        "nan",
        float("inf"),
        float("-inf"),
        Decimal("Infinity"),
        "inf",
        True,
        False,
        "ten dollars",
        "",
        "1,50",
        None,
        [1],
    ],
)
def test_bad_amounts_raise_value_error_naming_the_argument(bad: object) -> None:
    """Negative, NaN, infinite, bool, malformed and non-number amounts raise ValueError."""
    with pytest.raises(ValueError, match="price_cap"):
        to_decimal(bad, "price_cap")


def test_negative_allowed_only_when_asked() -> None:
    """allow_negative=True lets a negative amount through, exactly."""
    assert to_decimal("-0.25", allow_negative=True) == Decimal("-0.25")


def test_units_round_trip_exactly() -> None:
    """Dollars to nano-dollar units and back is exact."""
    assert UNITS_PER_DOLLAR == 10**9
    assert to_units(Decimal("0.000001")) == 1000
    assert from_units(1000) == Decimal("0.000001")
    assert from_units(to_units(Decimal("12.345678901"))) == Decimal("12.345678901")
    assert from_units(10 * UNITS_PER_DOLLAR) == Decimal(10)
    assert str(from_units(10 * UNITS_PER_DOLLAR)) == "10"


def test_to_units_rounds_a_fraction_of_a_unit_up() -> None:
    """An amount below one unit is charged one unit, so spend never escapes."""
    assert to_units(Decimal("0.0000000001")) == 1
    assert to_units(Decimal("0.0000000011")) == 2
    assert to_units(Decimal(0)) == 0


def test_one_million_micro_dollar_charges_sum_to_exactly_one_dollar() -> None:
    """One million charges of $0.000001 in the ledger add up to exactly $1."""
    ledger = MemoryLedger()
    units = to_units(to_decimal("0.000001"))
    add = ledger.add
    for _ in range(1_000_000):
        add(("k",), units)
    total = from_units(ledger.balances(["k"])["k"].spent)
    assert total == Decimal(1)
    assert str(total) == "1"


def test_float_charges_do_not_drift() -> None:
    """Ten thousand float charges of 0.0001 sum to exactly $1 through the guard."""
    guard = BudgetGuard(metrics=False)
    for _ in range(10_000):
        guard.record_spend(0.0001, user="alice")
    assert guard.spend("alice") == Decimal(1)
    assert guard.spend() == Decimal(1)
    assert sum([0.0001] * 10_000) != 1.0  # what binary floats would have given
    guard.close()


def test_ten_thousand_decorated_calls_sum_exactly(guard: BudgetGuard) -> None:
    """Ten thousand guarded calls costing $0.0001 each charge exactly $1."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", cost=lambda _: "0.0001")
    def call() -> None:
        """Cost a hundredth of a cent."""

    for _ in range(10_000):
        call()
    assert guard.spend("alice") == Decimal(1)
    assert guard.remaining("alice") == Decimal(0)


def test_spend_and_remaining_return_decimal(guard: BudgetGuard) -> None:
    """Queries answer in Decimal."""
    guard.set_budget(1.5, user="bob")
    guard.record_spend(0.2, user="bob")
    assert isinstance(guard.spend("bob"), Decimal)
    assert guard.spend("bob") == Decimal("0.2")
    assert guard.remaining("bob") == Decimal("1.3")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "lots", True])
def test_bad_set_budget_leaves_the_old_budget(guard: BudgetGuard, bad: object) -> None:
    """A rejected set_budget raises ValueError naming limit and changes nothing."""
    guard.set_budget("5", user="alice", period="monthly")
    with pytest.raises(ValueError, match="limit"):
        guard.set_budget(bad, user="alice", period="daily")
    kept = guard.get_budget("alice")
    assert kept is not None
    assert kept.limit == Decimal(5)
    assert kept.period.name == "monthly"


def test_bad_period_in_set_budget_changes_nothing(guard: BudgetGuard) -> None:
    """An unknown period is refused and the old budget stays."""
    guard.set_budget("5", user="alice", period="monthly")
    with pytest.raises(ValueError, match="period"):
        guard.set_budget("7", user="alice", period="fortnightly")
    kept = guard.get_budget("alice")
    assert kept is not None and kept.limit == Decimal(5)


def test_bad_amount_to_record_spend_changes_nothing(guard: BudgetGuard) -> None:
    """A negative or NaN recorded spend raises and is not recorded."""
    guard.record_spend("0.5", user="alice")
    for bad in (-1, float("nan"), "x"):
        with pytest.raises(ValueError, match="amount"):
            guard.record_spend(bad, user="alice")
    assert guard.spend("alice") == Decimal("0.5")


@pytest.mark.parametrize(
    ("option", "bad"),
    [("estimate", -1), ("estimate", float("nan")), ("estimate", "abc")],
)
def test_bad_estimate_is_refused_at_decoration(
    guard: BudgetGuard, option: str, bad: object
) -> None:
    """A bad literal estimate raises ValueError naming it when the function is decorated."""
    with pytest.raises(ValueError, match=option):
        guard.budgeted(**{option: bad})(lambda: None)


def test_bad_scope_limit_raises_naming_limit() -> None:
    """budget_scope(limit=-1) raises ValueError naming limit."""
    with pytest.raises(ValueError, match="limit"):
        budget_scope("alice", limit=-1)
    with pytest.raises(ValueError, match="limit"):
        budget_scope("alice", limit=float("nan"))
