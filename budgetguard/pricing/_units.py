"""Prices prepared as whole numbers, so that pricing a call is integer arithmetic.

The table holds dollars per million tokens as ``Decimal``; the ledger counts
units (``money.UNITS_PER_DOLLAR``). A price prepared here holds, per token
bucket, ledger units per token times ``scale`` (a power of ten large enough
that every price and fee of the model is a whole number), so the cost of a
call is one sum of products and one rounding up: ``ceil(total / scale)``.

That is exactly what ``to_units(price_usage(...).total)`` gives — the Decimal
path rounds nothing but the final conversion up, and so does this one —
whenever the Decimal path is itself exact. ``MONEY`` keeps 50 digits; for
counts and prices so large that a Decimal sum would need more, ``limit``
sends the call to the Decimal path, so both paths always agree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from ..money import MONEY, UNITS_PER_DOLLAR

if TYPE_CHECKING:
    from ..usage import Usage
    from ._price import ModelPrice

__all__ = ["UnitPrice", "integer_total", "prepare"]

# Dollars per million tokens to units per token.
_PER_TOKEN = UNITS_PER_DOLLAR // 1_000_000


class UnitPrice:
    """One resolved price (a tier, a long-context band) in units per token, times ``scale``.

    Every bucket's fallback (cached input to input, reasoning to output, ...)
    is already resolved. ``web_search`` and ``call`` are fees per request in
    units times ``scale`` (0 when the model has none). ``limit`` is the first
    scaled total the Decimal path could not hold exactly.
    """

    __slots__ = (
        "cache_write_1h",
        "cache_write_5m",
        "cached_input",
        "call",
        "input",
        "input_audio",
        "input_image",
        "limit",
        "output",
        "output_audio",
        "reasoning",
        "scale",
        "web_search",
    )

    def __init__(
        self,
        tokens: tuple[int, int, int, int, int, int, int, int, int],
        web_search: int,
        call: int,
        scale: int,
        limit: int,
    ) -> None:
        (
            self.input,
            self.cached_input,
            self.cache_write_5m,
            self.cache_write_1h,
            self.output,
            self.reasoning,
            self.input_audio,
            self.output_audio,
            self.input_image,
        ) = tokens
        self.web_search = web_search
        self.call = call
        self.scale = scale
        self.limit = limit


def _decimals(value: Decimal) -> int:
    """Return how many decimal places ``value`` needs (0 for a whole number)."""
    exponent = value.normalize(MONEY).as_tuple().exponent
    assert isinstance(exponent, int)  # finite: the table holds no NaN or infinity
    return max(-exponent, 0)


def _exponent(value: Decimal) -> int:
    """Return the exponent ``value`` is written with (``2.50`` -> -2): what Decimal sums keep."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return exponent


def prepare(price: ModelPrice) -> UnitPrice:
    """Return ``price`` (one tier and band; its own fees) as whole numbers per token."""
    cache_5m = price.cache_write_5m if price.cache_write_5m is not None else price.input
    # The fallbacks of pricing._cost.price_usage, bucket by bucket, in Usage's order.
    per_million = (
        price.input,
        price.cached_input if price.cached_input is not None else price.input,
        cache_5m,
        price.cache_write_1h if price.cache_write_1h is not None else cache_5m,
        price.output,
        price.reasoning if price.reasoning is not None else price.output,
        price.input_audio if price.input_audio is not None else price.input,
        price.output_audio if price.output_audio is not None else price.output,
        price.input_image if price.input_image is not None else price.input,
    )
    fees = [
        fee
        for fee in (price.per_request.get("web_search"), price.per_request.get("call"))
        if fee is not None
    ]
    # Units per token are dollars per million times 1,000: three decimals are
    # free; a fee in dollars has nine.
    digits = max(
        [_decimals(value) - 3 for value in per_million] + [_decimals(fee) - 9 for fee in fees]
    )
    power = max(digits, 0)
    scale = 10**power

    def whole(value: Decimal, factor: int) -> int:
        exact = MONEY.multiply(value, factor * scale)
        assert exact == exact.to_integral_value(), "a scale that leaves a fraction"
        return int(exact)

    tokens = tuple(whole(value, _PER_TOKEN) for value in per_million)
    web_search = price.per_request.get("web_search")
    call = price.per_request.get("call")
    # The Decimal path's total is exact while its coefficient has at most
    # MONEY.prec digits. Its exponent is the smallest of its terms' (a token
    # price's, six lower for the division by a million; a fee's own), so
    # with the smallest of them all the bound is safe for any usage.
    smallest = min([_exponent(value) - 6 for value in per_million] + [_exponent(f) for f in fees])
    # total dollars = scaled / (scale * 10**9); coefficient = dollars * 10**-smallest.
    shift = MONEY.prec + smallest + 9 + power
    return UnitPrice(
        tokens,  # type: ignore[arg-type]
        whole(web_search, UNITS_PER_DOLLAR) if web_search is not None else 0,
        whole(call, UNITS_PER_DOLLAR) if call else 0,
        scale,
        10**shift if shift >= 0 else 0,
    )


def integer_total(usage: Usage, prepared: UnitPrice) -> int | None:
    """Return what ``usage`` costs at ``prepared``, in whole units rounded up; ``None`` if too big.

    ``None`` means the Decimal path would round inside the sum: price such a
    call with it, to charge exactly what it charges.
    """
    # Most calls fill three or four of the ten buckets: a zero costs a test,
    # not a multiplication and an addition of Python ints.
    total = prepared.call
    if n := usage.input_tokens:
        total += n * prepared.input
    if n := usage.cached_input_tokens:
        total += n * prepared.cached_input
    if n := usage.cache_write_5m_tokens:
        total += n * prepared.cache_write_5m
    if n := usage.cache_write_1h_tokens:
        total += n * prepared.cache_write_1h
    if n := usage.output_tokens:
        total += n * prepared.output
    if n := usage.reasoning_tokens:
        total += n * prepared.reasoning
    if n := usage.input_audio_tokens:
        total += n * prepared.input_audio
    if n := usage.output_audio_tokens:
        total += n * prepared.output_audio
    if n := usage.input_image_tokens:
        total += n * prepared.input_image
    if n := usage.web_search_requests:
        total += n * prepared.web_search
    if total >= prepared.limit:
        return None
    scale = prepared.scale
    if scale == 1:
        return total
    return -(-total // scale)
