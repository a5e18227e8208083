"""A table of model prices, and how a model name finds its price."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from ..errors import ConfigurationError
from ._price import ModelPrice, parse_price

__all__ = ["PriceTable", "normalise_model_name"]

logger = logging.getLogger("budgetguard")

# Routing prefixes that name where a model is served, not which model it is.
# Stripped one at a time from the left, so "openrouter/anthropic/claude-x" and
# "bedrock/converse/us.anthropic.claude-x-v1:0" both come down to "claude-x".
_ROUTE_PREFIXES = (
    "openrouter/",
    "azure/",
    "azure_ai/",
    "bedrock/",
    "converse/",
    "invoke/",
    "vertex_ai/",
    "vertex_ai_beta/",
    "litellm_proxy/",
    "openai/",
    "text-completion-openai/",
    "anthropic/",
    "gemini/",
    "google/",
    "models/",
    "publishers/google/models/",
    "x-ai/",
    "xai/",
    "mistral/",
    "mistralai/",
    "deepseek/",
    "cohere/",
    "cohere_chat/",
)
# Bedrock cross-region inference profiles and vendor namespaces.
_BEDROCK_REGION = re.compile(r"^(?:us|eu|apac|ap|jp|au|ca|us-gov|global|in)\.")
_BEDROCK_VENDOR = re.compile(
    r"^(?:anthropic|openai|mistral|cohere|deepseek|xai|google|moonshotai)\."
)
# A Bedrock version suffix ("-v1:0", "-v2:0", ":0").
_BEDROCK_VERSION = re.compile(r"(?:-v\d+)?:\d+$")

# What may follow a known model name for the longer name to be the same model:
# dates and snapshot stamps ("-2024-08-06", "-20250514", "-0613", "-002",
# "-08-2024", "-preview-05-20"), release labels ("-latest", "-preview",
# "-exp") and provider versions ("-v1:0", "@20250514"). Never a word such as
# "-mini" or "-pro": that is another model.
_VERSION_SUFFIX = re.compile(
    r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{2}-\d{2}(?:-\d{2})?|\d{2}-\d{4}|\d{3,8}"
    r"|latest|preview|exp|experimental|v\d+(?:[.:]\d+)*|\d+:\d+))+"
)

_CACHE_LIMIT = 4096


def normalise_model_name(model: str) -> list[str]:
    """Return the names to try for ``model``, most specific first (lowercase, prefixes stripped)."""
    name = model.strip().lower()
    names = [name]
    changed = True
    while changed:
        changed = False
        for prefix in _ROUTE_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                names.append(name)
                changed = True
        stripped = _BEDROCK_REGION.sub("", name, count=1)
        stripped = _BEDROCK_VENDOR.sub("", stripped, count=1)
        if stripped != name:
            name = stripped
            names.append(name)
            changed = True
    if name.startswith("ft:"):
        # An OpenAI fine-tune, "ft:<base>:<org>:<suffix>:<id>", is billed at its
        # base model's fine-tune price ("ft:gpt-4o-mini-2024-07-18" extends
        # the table's "ft:gpt-4o-mini" by a date).
        base = name[3:].partition(":")[0]
        if base:
            names.append(f"ft:{base}")
    elif ".ft-" in name:
        # Azure names fine-tunes "<base>.ft-<id>".
        names.append(name.partition(".ft-")[0] + ".ft")
    without_version = _BEDROCK_VERSION.sub("", name)
    if without_version != name:
        names.append(without_version)
    if "@" in name:
        # Vertex AI writes snapshots as "claude-sonnet-4@20250514".
        names.append(name.replace("@", "-"))
    # Keep order, drop repeats.
    return list(dict.fromkeys(names))


class PriceTable:
    """Map model names (and their aliases) to prices, with a cached, forgiving lookup.

    Lookup tries the exact name, then normalised forms (lowercase, routing
    prefixes such as ``azure/``, ``bedrock/``, ``vertex_ai/``,
    ``openrouter/<vendor>/`` and Bedrock ids stripped), then the longest known
    name that the given one extends by a date or version suffix only — so
    ``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``, never ``gpt-4o``.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._entries: dict[str, ModelPrice] = {}
        self._names: dict[str, ModelPrice] = {}
        self._cache: dict[str, ModelPrice | None] = {}
        self._lock = threading.Lock()
        if prices:
            for price in prices.values():
                self.add(price)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(list(self._entries.values()))

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def add(self, price: ModelPrice) -> ModelPrice:
        """Add or replace ``price`` under its model name and aliases."""
        with self._lock:
            key = price.model.lower()
            old = self._entries.get(key)
            if old is not None:
                # A replaced entry's aliases must not keep pointing at the old price.
                for alias in (old.model, *old.aliases):
                    if self._names.get(alias.lower()) is old:
                        del self._names[alias.lower()]
            self._entries[key] = price
            for alias in price.aliases:
                self._names[alias.lower()] = price
            # The model's own name wins over another entry's alias.
            self._names[key] = price
            self._cache = {}
        return price

    def register(
        self,
        model: str,
        *,
        input: Any,
        output: Any,
        cached_input: Any = None,
        cache_write_5m: Any = None,
        cache_write_1h: Any = None,
        reasoning: Any = None,
        input_audio: Any = None,
        output_audio: Any = None,
        input_image: Any = None,
        batch_multiplier: Any = None,
        long_context: list[Mapping[str, Any]] | None = None,
        service_tiers: Mapping[str, Mapping[str, Any]] | None = None,
        per_request: Mapping[str, Any] | None = None,
        max_output_tokens: int | None = None,
        dated: list[Mapping[str, Any]] | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        provider: str | None = None,
        source: str = "user",
        checked: str | None = None,
    ) -> ModelPrice:
        """Add (or override) a model's prices, in USD per million tokens.

        ``max_output_tokens`` caps what an estimate counts for one call;
        ``dated`` lists prices in force only between dates
        (``[{"until": "2026-01-01", "input": "3"}]``), each naming what differs.
        """
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
        spec: dict[str, Any] = {
            "input": input,
            "output": output,
            "cached_input": cached_input,
            "cache_write_5m": cache_write_5m,
            "cache_write_1h": cache_write_1h,
            "reasoning": reasoning,
            "input_audio": input_audio,
            "output_audio": output_audio,
            "input_image": input_image,
            "batch_multiplier": batch_multiplier,
            "long_context": long_context,
            "service_tiers": service_tiers,
            "per_request": per_request,
            "max_output_tokens": max_output_tokens,
            "dated": dated,
            "aliases": list(aliases),
            "provider": provider,
            "source": source,
            "checked": checked,
        }
        try:
            price = parse_price(model.strip(), spec, source=source)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        return self.add(price)

    def load_mapping(self, data: Mapping[str, Any], *, source: str = "user") -> int:
        """Add every entry of a parsed price file; return how many were added."""
        models = data.get("models", data) if isinstance(data, Mapping) else None
        if not isinstance(models, Mapping):
            raise ConfigurationError("a price file holds an object of models")
        parsed = []
        for name, entry in models.items():
            try:
                parsed.append(parse_price(str(name), entry, source=source))
            except ValueError as error:
                raise ConfigurationError(str(error)) from None
        # All or nothing: a bad entry leaves the table as it was.
        for price in parsed:
            self.add(price)
        return len(parsed)

    def load_file(self, path: str | os.PathLike[str]) -> int:
        """Add every entry of a JSON price file (the format of the shipped table)."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle, parse_float=Decimal)
        except OSError as error:
            raise ConfigurationError(f"cannot read price file {path!s}: {error}") from None
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"price file {path!s} is not JSON: {error}") from None
        return self.load_mapping(data, source=f"file:{os.fspath(path)}")

    def lookup(self, model: str) -> ModelPrice | None:
        """Return the price of ``model``, or ``None`` when no known name matches."""
        cache = self._cache
        try:
            return cache[model]
        except KeyError:
            pass
        price = self._find(model) if isinstance(model, str) else None
        if len(cache) >= _CACHE_LIMIT:
            # Model names come from callers; keep the cache bounded.
            cache.clear()
        cache[model] = price
        return price

    def _find(self, model: str) -> ModelPrice | None:
        names = self._names
        candidates = normalise_model_name(model)
        for name in candidates:
            found = names.get(name)
            if found is not None:
                return found
        for name in candidates:
            found = self._by_prefix(name)
            if found is not None:
                return found
        return None

    def _by_prefix(self, name: str) -> ModelPrice | None:
        names = self._names
        cut = len(name)
        while True:
            cut = max(name.rfind("-", 0, cut), name.rfind("@", 0, cut))
            if cut <= 0:
                return None
            found = names.get(name[:cut])
            if found is not None and _VERSION_SUFFIX.fullmatch(name, cut):
                logger.debug("priced model %r as %r (snapshot of a known model)", name, found.model)
                return found
