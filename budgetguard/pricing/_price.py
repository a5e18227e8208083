"""The price of one model, and the cost of one call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from ..money import MONEY, to_decimal

__all__ = ["TOKEN_PRICE_FIELDS", "Cost", "LongContextTier", "ModelPrice", "parse_price"]

# Prices per million tokens. ``input`` and ``output`` are required; the others
# fall back as documented on ``ModelPrice``.
TOKEN_PRICE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write_5m",
    "cache_write_1h",
    "reasoning",
    "input_audio",
    "output_audio",
    "input_image",
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class LongContextTier:
    """Re-price the whole request at ``price`` once its input exceeds ``above_input_tokens``."""

    above_input_tokens: int
    price: ModelPrice


@dataclass(frozen=True)
class ModelPrice:
    """Hold one model's prices in USD per million tokens, as exact ``Decimal``.

    Missing prices fall back to the nearest one that is known, so a gap in the
    table never makes tokens free: ``cached_input``, ``cache_write_5m``,
    ``input_audio`` and ``input_image`` to ``input``; ``cache_write_1h`` to
    ``cache_write_5m``; ``reasoning`` and ``output_audio`` to ``output``.

    ``long_context`` tiers (sorted by threshold) re-price the *whole* request
    when its total input exceeds a threshold. ``service_tiers`` holds the
    ``batch``, ``flex``, ``priority`` (...) variants, each a full
    ``ModelPrice``. ``per_request`` holds fees per call of a server tool, in
    USD per call (``{"web_search": Decimal("0.01")}``).
    """

    model: str
    input: Decimal
    output: Decimal
    provider: str | None = None
    cached_input: Decimal | None = None
    cache_write_5m: Decimal | None = None
    cache_write_1h: Decimal | None = None
    reasoning: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    long_context: tuple[LongContextTier, ...] = ()
    service_tiers: Mapping[str, ModelPrice] = field(
        default_factory=lambda: _EMPTY, compare=False, repr=False
    )
    per_request: Mapping[str, Decimal] = field(default_factory=lambda: _EMPTY, compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False, repr=False)
    source: str = "user"
    checked: str | None = None

    def for_tier(self, tier: str) -> ModelPrice | None:
        """Return the prices of service tier ``tier`` (``standard`` is this price itself)."""
        if tier == "standard":
            return self
        return self.service_tiers.get(tier)

    def for_input(self, total_input_tokens: int) -> ModelPrice:
        """Return the prices that apply to a request with this many input tokens."""
        for tier in reversed(self.long_context):
            if total_input_tokens > tier.above_input_tokens:
                return tier.price
        return self


@dataclass(frozen=True)
class Cost:
    """Hold the exact cost of one call and where it comes from.

    ``breakdown`` maps each priced component (``input``, ``cached_input``,
    ``cache_write_5m``, ``cache_write_1h``, ``output``, ``reasoning``,
    ``input_audio``, ``output_audio``, ``input_image``, ``web_search``) to its
    USD amount; the amounts add up to ``total``.
    """

    total: Decimal
    breakdown: Mapping[str, Decimal]
    model: str
    price: ModelPrice
    estimated: bool = False
    tier: str = "standard"


def _price_value(data: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    value = data.get(key)
    if value is None:
        return None
    return to_decimal(value, f"{where}.{key}")


def _token_prices(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    prices: dict[str, Any] = {}
    for key in TOKEN_PRICE_FIELDS:
        value = _price_value(data, key, where)
        if value is not None:
            prices[key] = value
    return prices


def _scaled(price: ModelPrice, factor: Decimal) -> ModelPrice:
    """Return ``price`` with every token price multiplied by ``factor`` (fees unchanged)."""
    changes: dict[str, Any] = {}
    for key in TOKEN_PRICE_FIELDS:
        value = getattr(price, key)
        if value is not None:
            changes[key] = MONEY.multiply(value, factor)
    changes["long_context"] = tuple(
        LongContextTier(t.above_input_tokens, _scaled(t.price, factor)) for t in price.long_context
    )
    return replace(price, **changes)


def _long_context(base: ModelPrice, data: Any, where: str) -> tuple[LongContextTier, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ValueError(f"{where}.long_context must be a list")
    tiers = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}.long_context[{i}] must be an object")
        threshold = item.get("above_input_tokens")
        if type(threshold) is not int or threshold < 0:
            raise ValueError(
                f"{where}.long_context[{i}].above_input_tokens must be a non-negative int"
            )
        # A tier names only what changes; everything else is the base price.
        tier_price = replace(base, **_token_prices(item, f"{where}.long_context[{i}]"))
        tier_price = replace(tier_price, long_context=(), service_tiers=_EMPTY)
        tiers.append(LongContextTier(threshold, tier_price))
    tiers.sort(key=lambda t: t.above_input_tokens)
    return tuple(tiers)


def parse_price(model: str, data: Mapping[str, Any], *, source: str = "user") -> ModelPrice:
    """Build a ``ModelPrice`` from one entry of a price file (strings or numbers)."""
    where = f"price of {model!r}"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object")
    prices = _token_prices(data, where)
    for required in ("input", "output"):
        if required not in prices:
            raise ValueError(f"{where} needs an {required!r} price")
    per_request_data = data.get("per_request") or {}
    if not isinstance(per_request_data, Mapping):
        raise ValueError(f"{where}.per_request must be an object")
    per_request = {
        str(name): to_decimal(value, f"{where}.per_request.{name}")
        for name, value in per_request_data.items()
    }
    aliases = data.get("aliases") or ()
    if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"{where}.aliases must be a list of strings")
    base = ModelPrice(
        model=model,
        input=prices.pop("input"),
        output=prices.pop("output"),
        provider=data.get("provider"),
        per_request=MappingProxyType(per_request),
        aliases=tuple(aliases),
        source=str(data.get("source") or source),
        checked=data.get("checked"),
        **prices,
    )
    base = replace(base, long_context=_long_context(base, data.get("long_context"), where))

    tiers: dict[str, ModelPrice] = {}
    tier_data = data.get("service_tiers") or {}
    if not isinstance(tier_data, Mapping):
        raise ValueError(f"{where}.service_tiers must be an object")
    for name, spec in tier_data.items():
        tier_where = f"{where}.service_tiers.{name}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{tier_where} must be an object")
        multiplier = _price_value(spec, "multiplier", tier_where)
        if multiplier is not None:
            tier_price = _scaled(base, multiplier)
        else:
            tier_price = replace(base, **_token_prices(spec, tier_where))
            if "long_context" in spec:
                tiers_spec = spec["long_context"]
                tier_price = replace(
                    tier_price, long_context=_long_context(tier_price, tiers_spec, tier_where)
                )
        tiers[str(name)] = replace(tier_price, service_tiers=_EMPTY)
    batch = _price_value(data, "batch_multiplier", where)
    if batch is not None and "batch" not in tiers:
        tiers["batch"] = replace(_scaled(base, batch), service_tiers=_EMPTY)
    return replace(base, service_tiers=MappingProxyType(tiers))
