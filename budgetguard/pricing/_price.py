"""The price of one model, and the cost of one call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import cached_property
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from ..money import MONEY, to_decimal
from ._units import UnitPrice, prepare

__all__ = [
    "TOKEN_PRICE_FIELDS",
    "Cost",
    "DatedPrice",
    "LongContextTier",
    "ModelPrice",
    "parse_instant",
    "parse_price",
]

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
class DatedPrice:
    """The prices a model has from ``since`` (inclusive) until ``until`` (exclusive).

    Both are POSIX timestamps (UTC); ``None`` leaves that side open.
    """

    since: float | None
    until: float | None
    price: ModelPrice

    def covers(self, when: float) -> bool:
        """Tell whether this price is in force at ``when``."""
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )


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
    USD per call: ``web_search`` per web search the response reports
    (``{"web_search": Decimal("0.01")}``), ``call`` once on every call of the
    model (OpenAI's ``*-search-preview`` chat models search on every call).

    ``max_output_tokens`` is the most output one call of the model can ask
    for; an estimate never counts more (the vendors reject a larger
    ``max_tokens``). ``dated`` holds the prices that apply only between two
    dates (``at(when)`` picks the one in force); outside them, these are the
    prices.
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
    max_output_tokens: int | None = None
    dated: tuple[DatedPrice, ...] = field(default=(), compare=False, repr=False)

    def at(self, when: float) -> ModelPrice:
        """Return the prices in force at ``when`` (a POSIX timestamp)."""
        for dated in self.dated:
            if dated.covers(when):
                return dated.price
        return self

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

    @cached_property
    def unit_price(self) -> UnitPrice:
        """Return these prices (this tier and band, no lookup) as whole units per token.

        Prepared on first use and kept: pricing a call is then integer
        arithmetic (``pricing.price_units``).
        """
        return prepare(self)


@dataclass(frozen=True)
class Cost:
    """Hold the exact cost of one call and where it comes from.

    ``breakdown`` maps each priced component (``input``, ``cached_input``,
    ``cache_write_5m``, ``cache_write_1h``, ``output``, ``reasoning``,
    ``input_audio``, ``output_audio``, ``input_image``, ``web_search``,
    ``call``) to its USD amount; the amounts add up to ``total``.
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


def parse_instant(value: Any, where: str) -> float:
    """Return the POSIX timestamp of a price date: ``"2026-01-01"`` (midnight UTC) or ISO 8601.

    A date and time without an offset is UTC.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{where} must be a date such as '2026-01-01' or an ISO 8601 time, got {value!r}"
            ) from None
    else:
        raise ValueError(f"{where} must be a date string such as '2026-01-01', got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _max_output(data: Mapping[str, Any], where: str) -> int | None:
    value = data.get("max_output_tokens")
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise ValueError(
            f"{where}.max_output_tokens must be a positive whole number, got {value!r}"
        )
    return value


_DATE_KEYS = ("since", "until")


def _dated(model: str, data: Mapping[str, Any], where: str, source: str) -> tuple[DatedPrice, ...]:
    """Parse an entry's ``dated`` list: each item is the entry with the fields it names replaced."""
    items = data.get("dated")
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ValueError(f"{where}.dated must be a list")
    own = {key: value for key, value in data.items() if key != "dated"}
    found: list[DatedPrice] = []
    for i, item in enumerate(items):
        item_where = f"{where}.dated[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{item_where} must be an object")
        if "dated" in item:
            raise ValueError(f"{item_where} cannot hold dated prices of its own")
        bounds = [
            parse_instant(item[key], f"{item_where}.{key}") if item.get(key) is not None else None
            for key in _DATE_KEYS
        ]
        since, until = bounds
        if since is None and until is None:
            raise ValueError(f"{item_where} needs a 'since' or an 'until' date")
        if since is not None and until is not None and since >= until:
            raise ValueError(f"{item_where}: 'since' must come before 'until'")
        merged = {**own, **{k: v for k, v in item.items() if k not in _DATE_KEYS}}
        price = parse_price(model, merged, source=source)
        found.append(DatedPrice(since, until, price))
    ordered = sorted(found, key=lambda d: float("-inf") if d.since is None else d.since)
    for before, after in pairwise(ordered):
        if before.until is None or after.since is None or after.since < before.until:
            raise ValueError(f"{where}.dated: two dated prices overlap")
    return tuple(ordered)


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
        max_output_tokens=_max_output(data, where),
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
    return replace(
        base,
        service_tiers=MappingProxyType(tiers),
        dated=_dated(model, data, where, source),
    )
