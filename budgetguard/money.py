"""Exact amounts of money.

Amounts are ``Decimal`` in the public API and whole *units* in the ledger. A
unit is one nano-dollar (10**-9 USD): small enough that every price per
million tokens with up to three decimals is exact per token, and large enough
that a Redis Lua script (whose numbers are doubles, exact to 2**53) counts
budgets of up to nine million dollars without rounding.

Every computation on money uses ``MONEY``, budgetguard's own ``Decimal``
context (50 digits), through its methods (``MONEY.multiply``, ``MONEY.add``,
``MONEY.scaleb``), never the operators, which round to the *caller's*
context: an application that sets ``getcontext().prec = 6`` must not turn a
$3.0864125 call into $3.08641.
"""

from __future__ import annotations

from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)

__all__ = ["MONEY", "UNITS_PER_DOLLAR", "Amount", "from_units", "to_decimal", "to_units"]

#: budgetguard's Decimal context: exact for any price times any token count
#: (prices have at most a few decimals, counts at most 20 digits).
MONEY = Context(
    prec=50,
    rounding=ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
_scaleb = MONEY.scaleb

Amount = Decimal | int | str | float

UNITS_PER_DOLLAR = 10**9


def to_decimal(value: object, name: str = "amount", *, allow_negative: bool = False) -> Decimal:
    """Turn a user-given amount into an exact ``Decimal``.

    Floats are taken by their shortest repr, so ``0.1`` means ``Decimal("0.1")``.
    Booleans, NaN, infinities and (unless allowed) negative amounts raise
    ``ValueError`` naming the argument.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not a bool ({value!r})")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name} is not a number: {value!r}") from None
    else:
        raise ValueError(f"{name} must be a Decimal, int, str or float, not {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if result < 0 and not allow_negative:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return result


def to_units(amount: Decimal) -> int:
    """Convert dollars to whole ledger units, rounding up so spend never escapes."""
    scaled = _scaleb(amount, 9)
    units = int(scaled)  # truncates towards zero
    return units + 1 if units < scaled else units


def from_units(units: int) -> Decimal:
    """Convert whole ledger units back to dollars, exactly."""
    if units % UNITS_PER_DOLLAR == 0:
        return Decimal(units // UNITS_PER_DOLLAR)  # plain "10", not "1E+1"
    return MONEY.normalize(_scaleb(Decimal(units), -9))
