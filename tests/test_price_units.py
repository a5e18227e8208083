"""The integer pricing path charges exactly what the Decimal path charges, over the whole table."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import pytest

from budgetguard.errors import ConfigurationError
from budgetguard.money import to_units
from budgetguard.pricing import (
    SERVICE_TIERS,
    ModelPrice,
    PriceTable,
    default_table,
    price_units,
    price_usage,
)
from budgetguard.pricing._cost import estimate_units
from budgetguard.pricing._units import integer_total
from budgetguard.usage import Usage
from budgetguard.usage._record import _COUNTS

# Magnitudes of one bucket's count: none, small, typical, a long context,
# absurd but within what a provider could send (18 digits), and far beyond.
_REALISTIC = (0, 1, 7, 999, 4_321, 128_000, 2_000_001, 10**9 + 7, 10**18 - 1)
_HUGE = (10**25 + 3, 10**40 + 11, 10**60 + 1)


def _usages(seed: int, count: int, *, huge: bool) -> Iterator[Usage]:
    rng = random.Random(seed)
    sizes = _REALISTIC + (_HUGE if huge else ())
    for _ in range(count):
        counts = {}
        for name in _COUNTS:
            if name == "web_search_requests":
                counts[name] = rng.choice((0, 0, 1, 3, 10**6))
            elif rng.random() < 0.5:
                top = rng.choice(sizes)
                counts[name] = rng.randint(top // 2, top) if top else 0
            else:
                counts[name] = 0
        yield Usage(**counts)


def _variants(price: ModelPrice) -> Iterator[tuple[str, float]]:
    """Yield every (tier, instant) that prices ``price`` differently."""
    instants = [0.0, 4_102_444_800.0]  # 1970 and 2100: outside (or inside) every dated price
    for dated in price.dated:
        for bound in (dated.since, dated.until):
            if bound is not None:
                instants += [bound - 0.5, bound]
    for tier in sorted(SERVICE_TIERS | set(price.service_tiers)):
        for instant in instants:
            yield tier, instant


def _both(usage: Usage, price: ModelPrice, tier: str, at: float) -> tuple[int, int]:
    decimal = to_units(price_usage(usage, price, tier=tier, at=at).total)
    return price_units(usage, price, tier=tier, at=at), decimal


def test_integer_path_equals_decimal_path_over_the_whole_table() -> None:
    """Every shipped price, tier, dated price and band: the same units as the Decimal path."""
    usages = list(_usages(seed=16, count=12, huge=True))
    # A long-context band is crossed by input alone: one usage just over each threshold.
    checked = 0
    for price in default_table():
        extra = [
            Usage(input_tokens=band.above_input_tokens + 1, output_tokens=1_000)
            for band in price.long_context
        ]
        for tier, at in _variants(price):
            for usage in usages + extra:
                ours, decimal = _both(usage, price, tier, at)
                assert ours == decimal, (price.model, tier, at, usage)
                checked += 1
    assert checked > 10_000


def test_integer_path_covers_every_realistic_count() -> None:
    """Counts a provider can report (under 10**18 a bucket) never fall back to Decimal."""
    usages = list(_usages(seed=17, count=30, huge=False))
    for price in default_table():
        resolved = [price, *price.service_tiers.values(), *(d.price for d in price.dated)]
        resolved += [band.price for p in list(resolved) for band in p.long_context]
        for p in resolved:
            for usage in usages:
                assert integer_total(usage, p.unit_price) is not None, (p.model, usage)


_ODD_PRICES: dict[str, dict[str, Any]] = {
    # Prices with more decimals than a unit per token holds, multipliers that
    # add more, fees with more than nine decimals, and long-context bands.
    "odd-decimals": {
        "input": "0.0000123",
        "output": "1.23456789",
        "cached_input": "0.00000001",
        "reasoning": "3.000000007",
        "batch_multiplier": "0.37",
        "per_request": {"web_search": "0.0123456789012", "call": "0.000000000001"},
        "service_tiers": {"flex": {"multiplier": "0.333"}, "priority": {"input": "7.77777"}},
        "long_context": [
            {"above_input_tokens": 1000, "input": "0.5000001"},
            {"above_input_tokens": 10**6, "output": "99.9"},
        ],
    },
    "written-with-zeros": {"input": "2.500000000", "output": "10.00", "cache_write_5m": "3.750"},
    "whole-dollars": {"input": 3, "output": 15, "per_request": {"call": 1}},
    # So many digits that even ordinary counts overflow MONEY's 50: Decimal rounds.
    "forty-digits": {
        "input": "1.234567890123456789012345678901234567891",
        "output": "98765432109876543210.98765432109876543211",
    },
    "dated": {
        "input": "1",
        "output": "2",
        "dated": [
            {"until": "2026-01-01", "input": "0.3333"},
            {"since": "2027-01-01", "output": "5"},
        ],
    },
}


def test_integer_path_equals_decimal_path_for_odd_prices() -> None:
    """Prices with many decimals, multipliers, tiny fees and bands: still the same units."""
    table = PriceTable()
    table.load_mapping(_ODD_PRICES)
    usages = list(_usages(seed=18, count=60, huge=True))
    usages += [Usage(input_tokens=1), Usage(web_search_requests=1), Usage()]
    for price in table:
        for tier, at in _variants(price):
            for usage in usages:
                ours, decimal = _both(usage, price, tier, at)
                assert ours == decimal, (price.model, tier, at, usage)


def test_totals_beyond_fifty_digits_fall_back_to_the_decimal_path() -> None:
    """Where the Decimal path rounds, its figure is charged: the integer sum alone would differ."""
    table = PriceTable()
    table.load_mapping(_ODD_PRICES)
    price = table.lookup("forty-digits")
    assert price is not None
    # Even ordinary counts could overflow 50 digits at this price: left to Decimal.
    assert integer_total(Usage(input_tokens=123, output_tokens=45), price.unit_price) is None
    usage = Usage(input_tokens=10**60 + 123_456_789, output_tokens=987_654_321)
    exact = math.ceil(
        (usage.input_tokens * Fraction(price.input) + usage.output_tokens * Fraction(price.output))
        * 10**3
    )
    ours = price_units(usage, price)
    assert ours == to_units(price_usage(usage, price).total)
    assert ours != exact  # the Decimal path rounds at 50 digits, and that is what is charged
    # And a shipped price, with a count of 61 digits.
    gpt = default_table().lookup("gpt-4o")
    assert gpt is not None
    huge = Usage(input_tokens=10**60 + 1, output_tokens=3)
    assert integer_total(huge, gpt.unit_price) is None
    assert price_units(huge, gpt) == to_units(price_usage(huge, gpt).total)


def test_sub_unit_totals_round_up_like_to_units() -> None:
    """A cost with a fraction of a unit is charged the next whole unit, as today."""
    table = PriceTable()
    table.register("tiny", input="0.0001", output="0.0001")
    price = table.lookup("tiny")
    assert price is not None
    # 0.0001 $/M is 0.1 unit a token: 1 token is 0.1 unit, charged 1; 10 are exactly 1.
    assert price_units(Usage(input_tokens=1), price) == 1
    assert price_units(Usage(input_tokens=10), price) == 1
    assert price_units(Usage(input_tokens=11), price) == 2
    assert price_units(Usage(), price) == 0


def test_caller_decimal_context_changes_nothing() -> None:
    """A caller's low-precision Decimal context does not reach either path."""
    price = default_table().lookup("gpt-4o")
    assert price is not None
    usage = Usage(input_tokens=123_457, cached_input_tokens=98_765, output_tokens=54_321)
    expected = to_units(price_usage(usage, price).total)
    with localcontext() as context:
        context.prec = 3
        assert price_units(usage, price) == expected


def test_unknown_service_tier_is_refused() -> None:
    """An unknown tier raises the same ConfigurationError as the Decimal path."""
    price = default_table().lookup("gpt-4o")
    assert price is not None
    with pytest.raises(ConfigurationError, match="unknown service tier 'turbo'"):
        price_units(Usage(input_tokens=1), price, tier="turbo")


def test_hand_built_tier_with_fees_of_its_own_is_priced_like_the_decimal_path() -> None:
    """A tier whose fees differ from its model's takes the Decimal rules for fees."""
    tier = ModelPrice("m", Decimal(1), Decimal(2), per_request={"call": Decimal("0.5")})
    price = ModelPrice(
        "m",
        Decimal(1),
        Decimal(2),
        per_request={"web_search": Decimal("0.01")},
        service_tiers={"flex": tier},
    )
    usage = Usage(input_tokens=1_000, web_search_requests=2, service_tier="flex")
    # flex's own call fee, and the model's web search fee: $0.001 + $0.02 + $0.5.
    assert price_units(usage, price) == to_units(price_usage(usage, price).total) == 521_000_000


def _exact_units(usage: Usage, price: ModelPrice) -> int:
    """Work out the standard-tier charge with fractions, from the documented fallbacks."""
    p = price.for_input(usage.total_input_tokens)
    cache_5m = p.cache_write_5m if p.cache_write_5m is not None else p.input

    def either(value: Decimal | None, fallback: Decimal) -> Fraction:
        return Fraction(value if value is not None else fallback)

    dollars = (
        usage.input_tokens * Fraction(p.input)
        + usage.cached_input_tokens * either(p.cached_input, p.input)
        + usage.cache_write_5m_tokens * Fraction(cache_5m)
        + usage.cache_write_1h_tokens * either(p.cache_write_1h, cache_5m)
        + usage.output_tokens * Fraction(p.output)
        + usage.reasoning_tokens * either(p.reasoning, p.output)
        + usage.input_audio_tokens * either(p.input_audio, p.input)
        + usage.output_audio_tokens * either(p.output_audio, p.output)
        + usage.input_image_tokens * either(p.input_image, p.input)
    ) / 10**6
    dollars += usage.web_search_requests * Fraction(p.per_request.get("web_search", 0))
    dollars += Fraction(p.per_request.get("call", 0))
    return math.ceil(dollars * 10**9)


def test_integer_path_is_exact() -> None:
    """Realistic counts cost what exact fractions say, rounded up to the next unit."""
    usages = list(_usages(seed=19, count=10, huge=False))
    table = PriceTable()
    table.load_mapping({k: v for k, v in _ODD_PRICES.items() if k != "forty-digits"})
    for price in [*default_table(), *table]:
        current = price.at(4_102_444_800.0)
        for usage in usages:
            assert price_units(usage, current, tier="standard") == _exact_units(usage, current)


def test_an_estimate_priced_without_a_usage_charges_what_its_usage_would() -> None:
    """``estimate_units`` (input and output tokens, standard tier) equals ``price_units``.

    Over every shipped and odd price, dated prices and long-context bands
    included; where it gives up (``None``) the caller prices the ``Usage``.
    """
    table = PriceTable()
    table.load_mapping(_ODD_PRICES)
    rng = random.Random(19)
    sizes = [*_REALISTIC, *_HUGE]
    pairs = [(rng.choice(sizes), rng.choice(sizes)) for _ in range(40)]
    checked = given_up = 0
    for price in [*default_table(), *table]:
        bands = [(band.above_input_tokens + 1, 1_000) for band in price.long_context]
        instants = {at for _, at in _variants(price)}
        for at in sorted(instants):
            for tokens, output in pairs + bands + [(0, 0), (1, 0), (0, 1)]:
                usage = Usage(input_tokens=tokens, output_tokens=output, estimated=True)
                ours = estimate_units(price, tokens, output, at=at)
                if ours is None:
                    given_up += 1
                    realistic = tokens < 10**18 and output < 10**18
                    assert not realistic or price.model == "forty-digits", (price.model, tokens)
                    continue
                assert ours == price_units(usage, price, at=at), (price.model, at, tokens, output)
                checked += 1
    assert checked > 10_000 and given_up > 0
