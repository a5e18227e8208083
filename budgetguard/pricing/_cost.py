"""The exact cost of one call: usage times price."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, UnknownModelError
from ..money import MONEY, to_units
from ._price import Cost, ModelPrice
from ._units import integer_total

if TYPE_CHECKING:
    from ..usage import Usage
    from ._table import PriceTable

__all__ = ["SERVICE_TIERS", "cost_of", "estimate_units", "price_units", "price_usage"]


def _default_table() -> PriceTable:
    # Imported late: the package imports this module. After the first call the
    # import is a dictionary hit in sys.modules.
    from . import default_table

    return default_table()


SERVICE_TIERS = frozenset({"standard", "batch", "flex", "priority", "fast"})

_ZERO = Decimal(0)
_multiply, _add, _scaleb = MONEY.multiply, MONEY.add, MONEY.scaleb


def price_usage(
    usage: Usage, price: ModelPrice, *, tier: str | None = None, at: float | None = None
) -> Cost:
    """Return the cost of ``usage`` at ``price`` (no lookup).

    ``tier`` defaults to the one the response reported (``usage.service_tier``),
    else ``"standard"``. ``at`` (a POSIX timestamp, default now) picks the
    dated prices in force then.
    """
    if price.dated:
        price = price.at(time.time() if at is None else at)
    if tier is None:
        tier = usage.service_tier or "standard"
    if tier not in SERVICE_TIERS and tier not in price.service_tiers:
        raise ConfigurationError(
            f"unknown service tier {tier!r}; use one of {sorted(SERVICE_TIERS)}"
        )
    # A model with no price for this tier is billed at its standard price: that
    # over-charges a batch call rather than letting spend escape the budget.
    tiered = price.for_tier(tier) or price
    # Above a long-context threshold the provider re-prices the whole request.
    p = tiered.for_input(usage.total_input_tokens)

    # Each component: tokens x price per million. A missing price falls back to
    # the nearest known one (cached input to input, reasoning to output, ...):
    # never to zero.
    cache_5m = p.cache_write_5m if p.cache_write_5m is not None else p.input
    parts = (
        ("input", usage.input_tokens, p.input),
        ("cached_input", usage.cached_input_tokens, p.cached_input),
        ("cache_write_5m", usage.cache_write_5m_tokens, cache_5m),
        (
            "cache_write_1h",
            usage.cache_write_1h_tokens,
            p.cache_write_1h if p.cache_write_1h is not None else cache_5m,
        ),
        ("output", usage.output_tokens, p.output),
        ("reasoning", usage.reasoning_tokens, p.reasoning),
        ("input_audio", usage.input_audio_tokens, p.input_audio),
        ("output_audio", usage.output_audio_tokens, p.output_audio),
        ("input_image", usage.input_image_tokens, p.input_image),
    )
    breakdown: dict[str, Decimal] = {}
    total = _ZERO
    for name, tokens, unit in parts:
        if not tokens:
            continue
        if unit is None:
            unit = p.output if name in ("reasoning", "output_audio") else p.input
        # In budgetguard's own context, whatever the caller's; scaleb(-6)
        # divides by one million exactly.
        amount = _scaleb(_multiply(unit, tokens), -6)
        breakdown[name] = amount
        # The first part is the total so far: one context call fewer.
        total = amount if total is _ZERO else _add(total, amount)
    if usage.web_search_requests:
        fee = p.per_request.get("web_search")
        if fee is None:
            fee = price.per_request.get("web_search", _ZERO)
        amount = _multiply(fee, usage.web_search_requests)
        breakdown["web_search"] = amount
        total = _add(total, amount)
    # A fee on every call of the model, whatever its usage says.
    call_fee = p.per_request.get("call", price.per_request.get("call"))
    if call_fee:
        breakdown["call"] = call_fee
        total = _add(total, call_fee)
    return Cost(
        total=total,
        breakdown=breakdown,
        model=price.model,
        price=p,
        estimated=usage.estimated,
        tier=tier,
    )


def price_units(
    usage: Usage, price: ModelPrice, *, tier: str | None = None, at: float | None = None
) -> int:
    """Return what ``price_usage`` charges the ledger: its total in whole units, rounded up.

    The same prices, fallbacks, tiers, long-context bands, dated prices and
    fees, and exactly the same result as ``to_units(price_usage(...).total)``,
    but in integers (``ModelPrice.unit_price``), without building a ``Cost``.
    """
    base = price
    if price.dated:
        # One instant for both paths, should this call end on the Decimal one.
        at = time.time() if at is None else at
        price = price.at(at)
    if tier is None:
        tier = usage.service_tier or "standard"
    if tier == "standard":
        p = price
    else:
        if tier not in SERVICE_TIERS and tier not in price.service_tiers:
            raise ConfigurationError(
                f"unknown service tier {tier!r}; use one of {sorted(SERVICE_TIERS)}"
            )
        p = price.service_tiers.get(tier) or price
    if p.long_context:
        p = p.for_input(usage.total_input_tokens)
    # A tier or band carries its model's fees in every table budgetguard
    # builds; one built by hand with fees of its own takes the Decimal path,
    # whose fallbacks between the two sets of fees are the rule.
    if p is price or p.per_request is price.per_request:
        units = integer_total(usage, p.unit_price)
        if units is not None:
            return units
    return to_units(price_usage(usage, base, tier=tier, at=at).total)


def estimate_units(
    price: ModelPrice, input_tokens: int, output_tokens: int, *, at: float | None = None
) -> int | None:
    """Return ``price_units`` of a standard-tier usage of only input and output tokens.

    The estimate of a call before it runs, priced with no ``Usage`` built.
    ``None`` when the integer path cannot hold the sum exactly (the caller
    then prices a ``Usage`` with ``price_units``, which takes the Decimal path).
    """
    if price.dated:
        price = price.at(time.time() if at is None else at)
    p = price.for_input(input_tokens) if price.long_context else price
    if p is not price and p.per_request is not price.per_request:
        return None  # a band with fees of its own: price_units' rule
    unit = p.unit_price
    total = unit.call + input_tokens * unit.input + output_tokens * unit.output
    if total >= unit.limit:
        return None
    scale = unit.scale
    return total if scale == 1 else -(-total // scale)


def cost_of(
    usage: Usage,
    model: str | None = None,
    *,
    tier: str | None = None,
    table: PriceTable | None = None,
    at: float | None = None,
) -> Cost:
    """Return the exact cost of ``usage``, priced as ``model`` (default: the model it names).

    ``tier`` defaults to the service tier the response reported, else standard.
    ``at`` (a POSIX timestamp, default now) picks the dated prices in force then.

    Raises ``UnknownModelError`` when no price is known; the guard decides what
    to do then.
    """
    name = model if model is not None else usage.model
    if not name:
        raise UnknownModelError(
            "", "cannot price usage that names no model; pass model=... to cost_of"
        )
    if table is None:
        table = _default_table()
    price = table.lookup(name)
    if price is None:
        raise UnknownModelError(name)
    return price_usage(usage, price, tier=tier, at=at)
