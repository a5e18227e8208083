"""Pricing: a dated table of model prices, and the exact cost of a call.

Each entry may carry ``max_output_tokens`` (what one call can ask for at
most: estimates never count more) and ``dated`` prices (in force from a
``since`` date until an ``until`` date); a call is priced at the prices in
force when it is priced, by the guard's clock.

The table ships in the package (``prices.json``, generated from a public price
source by ``scripts/update_prices.py``) and needs no network. Users add or
override prices with ``register_model(...)`` or a price file of their own
(``load_prices(path)``, same format).
"""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from importlib import resources
from typing import Any

from ._cost import SERVICE_TIERS, cost_of, price_units, price_usage
from ._price import Cost, DatedPrice, LongContextTier, ModelPrice, parse_price
from ._table import PriceTable, normalise_model_name

__all__ = [
    "SERVICE_TIERS",
    "Cost",
    "DatedPrice",
    "LongContextTier",
    "ModelPrice",
    "PriceTable",
    "cost_of",
    "default_table",
    "load_prices",
    "lookup",
    "normalise_model_name",
    "parse_price",
    "price_units",
    "price_usage",
    "register_model",
]

# The shipped table, loaded on first use. The only module-level state here.
_default: PriceTable | None = None
_default_lock = threading.Lock()


def _load_shipped() -> PriceTable:
    table = PriceTable()
    text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
    table.load_mapping(json.loads(text, parse_float=Decimal), source="budgetguard")
    return table


def default_table() -> PriceTable:
    """Return the process-wide table: the shipped prices plus the user's overrides."""
    global _default
    table = _default
    if table is None:
        with _default_lock:
            if _default is None:
                _default = _load_shipped()
            table = _default
    return table


def lookup(model: str) -> ModelPrice | None:
    """Return the price of ``model`` in the default table, or ``None``."""
    return default_table().lookup(model)


def register_model(model: str, *, input: Any, output: Any, **prices: Any) -> ModelPrice:
    """Add or override a model's prices (USD per million tokens) in the default table.

    Keyword arguments are those of ``PriceTable.register``: ``cached_input``,
    ``cache_write_5m``, ``cache_write_1h``, ``reasoning``, ``input_audio``,
    ``output_audio``, ``input_image``, ``batch_multiplier``, ``long_context``,
    ``service_tiers``, ``per_request``, ``max_output_tokens``, ``dated``,
    ``aliases``, ``provider``.
    """
    return default_table().register(model, input=input, output=output, **prices)


def load_prices(path: str) -> int:
    """Load a price file of the user's own into the default table; return the entries added."""
    return default_table().load_file(path)
