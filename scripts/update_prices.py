"""Regenerate budgetguard/pricing/prices.json from the genai-prices data set.

The source is the MIT-licensed data bundled in the ``genai-prices`` package
(pydantic/genai-prices). It is a development-time input only: install it in a
throwaway virtualenv, never into the project's environment::

    python -m venv /tmp/gp-venv
    /tmp/gp-venv/bin/pip install genai-prices
    /tmp/gp-venv/bin/python scripts/update_prices.py            # writes the table
    /tmp/gp-venv/bin/python scripts/update_prices.py --check    # exits 1 if stale

Entries the source lacks, and corrections to it, live in
``scripts/price_overrides.json``; each says where its prices come from.
The output is sorted and stable: the same source and date give the same file.

Prices the source dates (a ``start_date`` constraint) are written as the price
in force on ``--as-of`` at the top of the entry, plus a ``dated`` list with
the others and the dates they hold between, so the table stays right across
a price change. ``max_output_tokens`` comes from LiteLLM's model map (also
MIT-licensed, a development-time input too)::

    pip download --no-deps litellm -d /tmp/litellm-wheel
    unzip /tmp/litellm-wheel/*.whl 'litellm/model_prices_and_context_window_backup.json' -d /tmp/l
    .../python scripts/update_prices.py \
        --litellm-map /tmp/l/litellm/model_prices_and_context_window_backup.json

Without ``--litellm-map`` the limits already in the table are kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "budgetguard" / "pricing" / "prices.json"
OVERRIDES = Path(__file__).resolve().parent / "price_overrides.json"

# Source provider id -> OpenTelemetry gen_ai.provider.name. Order matters: the
# first provider to claim a model name or alias keeps it (the vendor's own
# price wins over a reseller's).
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gcp.gen_ai",
    "x-ai": "x_ai",
    "deepseek": "deepseek",
    "mistral": "mistral_ai",
    "cohere": "cohere",
    "aws": "aws.bedrock",
    "azure": "azure.ai.inference",
    "moonshotai": "moonshot",
    "zai": "zai",
}
# Source price keys -> ours. Keys not listed (per-hour audio, pages, ...) are
# not token prices and are left out.
TOKEN_KEYS = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write_5m",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
    "input_audio_mtok": "input_audio",
    "output_audio_mtok": "output_audio",
    "input_image_mtok": "input_image",
}
# Variant conditions -> our service tier names.
VARIANTS = {
    ("processing", "batch"): "batch",
    ("service_tier", "flex"): "flex",
    ("service_tier", "priority"): "priority",
    ("speed", "fast"): "fast",
}


def _text(value: Decimal) -> str:
    """Write a price as a plain decimal string ("0.075", "10"), never in exponent form."""
    text = format(value.normalize(), "f")
    return text


def _aliases(clause: Any) -> list[str]:
    """Collect the literal model names a source match clause accepts."""
    from genai_prices import types as t

    if isinstance(clause, t.ClauseEquals):
        return [clause.equals]
    if isinstance(clause, (t.ClauseStartsWith, t.ClauseContains, t.ClauseEndsWith)):
        value = getattr(clause, "starts_with", None) or getattr(clause, "contains", None)
        value = value or getattr(clause, "ends_with", "")
        value = value.rstrip("-@.:/")
        # A fragment such as "claude-sonnet-4-2025" or "/x" is not a name.
        return [value] if value and "/" not in value else []
    if isinstance(clause, t.ClauseOr):
        return [name for sub in clause.or_ for name in _aliases(sub)]
    if isinstance(clause, t.ClauseAnd):
        return [name for sub in clause.and_[:1] for name in _aliases(sub)]
    return []


def _standard_price(model: Any, as_of: dt.date) -> Any:
    """Return the source's prices in force on ``as_of``, at the dearest hour of the day.

    Some vendors (DeepSeek) charge more at peak hours. A budget must hold at any
    hour, so where a daily window is dearer than the all-day price, the peak
    price is the one kept.
    """
    from genai_prices import types as t

    if isinstance(model.prices, t.ModelPrice):
        return model.prices
    chosen = model.prices[0].prices
    peak = None
    for conditional in model.prices:
        constraint = conditional.constraint
        started = isinstance(constraint, t.StartDateConstraint) and constraint.start_date <= as_of
        if constraint is None or started:
            chosen = conditional.prices
        elif isinstance(constraint, t.TimeOfDateConstraint):
            peak = conditional.prices
    if peak is not None and _base(peak.input_mtok) > _base(chosen.input_mtok):
        return peak
    return chosen


def _start_dates(model: Any) -> list[dt.date]:
    """Return the dates on which the source says a model's price changes."""
    from genai_prices import types as t

    if isinstance(model.prices, t.ModelPrice):
        return []
    return sorted(
        {
            c.constraint.start_date
            for c in model.prices
            if isinstance(c.constraint, t.StartDateConstraint)
        }
    )


def _dated(model: Any, as_of: dt.date, current: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the prices a model has on other dates than ``as_of``, each with its dates.

    Each interval between two change dates is priced as the source prices
    its first day; the one holding ``as_of`` is the entry itself. A field the
    entry has and an interval lacks is written as null (not priced then).
    """
    dates = _start_dates(model)
    if not dates:
        return []
    bounds: list[dt.date | None] = [None, *dates, None]
    out = []
    for since, until in itertools.pairwise(bounds):
        if (since is None or since <= as_of) and (until is None or as_of < until):
            continue  # the interval in force: the entry's own prices
        day = since if since is not None else dates[0] - dt.timedelta(days=1)
        prices = _convert(_standard_price(model, day))
        if prices == {k: v for k, v in current.items() if k in prices or k in TOKEN_FIELDS}:
            continue
        item: dict[str, Any] = {}
        if since is not None:
            item["since"] = since.isoformat()
        if until is not None:
            item["until"] = until.isoformat()
        for key in sorted({*prices, *(k for k in current if k in TOKEN_FIELDS)}):
            item[key] = prices.get(key)
        out.append(item)
    return out


TOKEN_FIELDS = frozenset({*TOKEN_KEYS.values(), "per_request", "long_context"})


def _litellm_limits(path: Path | None) -> dict[str, int]:
    """Return LiteLLM's ``max_output_tokens`` per model name (lowercase), or nothing."""
    if path is None:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    limits = {}
    for name, entry in data.items():
        value = entry.get("max_output_tokens") if isinstance(entry, dict) else None
        if type(value) is int and value > 0:
            limits[name.lower()] = value
    return limits


def _kept_limits(path: Path) -> dict[str, int]:
    """Return the ``max_output_tokens`` of the table as it is now (kept without a new map)."""
    if not path.exists():
        return {}
    models = json.loads(path.read_text(encoding="utf-8")).get("models", {})
    return {
        name: entry["max_output_tokens"]
        for name, entry in models.items()
        if "max_output_tokens" in entry
    }


def _base(value: Any) -> Decimal:
    from genai_prices import types as t

    if isinstance(value, t.TieredPrices):
        return Decimal(value.base)
    return Decimal(value) if value is not None else Decimal(0)


def _convert(price: Any) -> dict[str, Any]:
    """Turn one source price set into our entry fields, long-context tiers included."""
    from genai_prices import types as t

    out: dict[str, Any] = {}
    tiered: dict[str, Any] = {}
    for key, value in sorted(vars(price).items()):
        if value is None or key.startswith("_"):
            continue
        if key == "web_searches_kcount":
            base = value.base if isinstance(value, t.TieredPrices) else value
            out.setdefault("per_request", {})["web_search"] = _text(base / 1000)
            continue
        ours = TOKEN_KEYS.get(key)
        if ours is None:
            continue
        if isinstance(value, t.TieredPrices):
            out[ours] = _text(value.base)
            tiered[ours] = value
        else:
            out[ours] = _text(value)
    thresholds = sorted({tier.start for value in tiered.values() for tier in value.tiers})
    if thresholds:
        tiers = []
        for threshold in thresholds:
            entry: dict[str, Any] = {"above_input_tokens": threshold}
            for ours, value in sorted(tiered.items()):
                applicable = value.base
                for tier in value.tiers:
                    if tier.start <= threshold:
                        applicable = tier.price
                entry[ours] = _text(applicable)
            tiers.append(entry)
        out["long_context"] = tiers
    return out


def build(as_of: dt.date, limits: dict[str, int] | None = None) -> dict[str, Any]:
    """Build the whole table from the source data, the overrides and the output limits."""
    limits = limits or {}
    import genai_prices
    from genai_prices import data

    version = getattr(genai_prices, "__version__", "unknown")
    source = f"genai-prices {version}"
    by_id = {provider.id: provider for provider in data.providers}
    models: dict[str, dict[str, Any]] = {}
    claimed: set[str] = set()
    for provider_id, otel_name in PROVIDERS.items():
        provider = by_id.get(provider_id)
        if provider is None:
            print(f"warning: source has no provider {provider_id!r}", file=sys.stderr)
            continue
        for model in provider.models:
            key = model.id.lower()
            if key in claimed or key.endswith(":free"):
                continue
            if provider_id == "google" and key.startswith("claude"):
                continue  # Vertex resells Anthropic at Anthropic's prices.
            if provider_id == "aws" and (".anthropic." in key or ".openai." in key):
                continue  # Bedrock ids of these map onto the vendor's own entry.
            entry = _convert(_standard_price(model, as_of))
            if "input" not in entry:
                continue  # Priced per hour, page or character: not a token model.
            if "output" not in entry:
                # Embedding models produce no output tokens, so no output price.
                entry["output"] = "0"
            tiers: dict[str, Any] = {}
            for variant in model.price_variants or ():
                for condition in variant.when.items():
                    name = VARIANTS.get(condition)
                    converted = _convert(variant.prices)
                    converted.pop("per_request", None)
                    if name and converted:
                        tiers[name] = converted
            if tiers:
                entry["service_tiers"] = dict(sorted(tiers.items()))
            dated = _dated(model, as_of, entry)
            if dated:
                entry["dated"] = dated
            names = [n.lower() for n in _aliases(model.match)]
            entry["aliases"] = sorted({n for n in names if n and n != key})
            entry["provider"] = otel_name
            entry["source"] = source
            entry["checked"] = as_of.isoformat()
            models[key] = entry
            claimed.add(key)
            # A reseller's entry for a name the vendor already prices is a duplicate.
            claimed.update(entry["aliases"])

    # Drop aliases that collide with another entry's name or with an earlier alias.
    seen: set[str] = set(models)
    for key in models:  # insertion order: vendor order above
        kept = []
        for alias in models[key]["aliases"]:
            if alias not in seen:
                kept.append(alias)
                seen.add(alias)
        models[key]["aliases"] = kept

    overrides = json.loads(OVERRIDES.read_text(encoding="utf-8"))
    # An override's names are its own: a generated entry keeps none of them
    # as an alias (genai-prices files the search-preview models under gpt-4o-mini).
    taken = {
        name.lower()
        for key, entry in overrides["models"].items()
        for name in (key, *entry.get("aliases", ()))
    }
    for entry in models.values():
        entry["aliases"] = [alias for alias in entry["aliases"] if alias not in taken]
    for key, entry in overrides["models"].items():
        entry = dict(entry)
        if "source" not in entry:
            raise SystemExit(f"override {key!r} must say where its prices come from")
        entry.setdefault("checked", overrides.get("checked", as_of.isoformat()))
        models[key.lower()] = entry
    for key, entry in models.items():
        if not entry.get("aliases"):
            entry.pop("aliases", None)
        if "max_output_tokens" not in entry:
            limit = limits.get(key)
            if limit is None:
                limit = next((limits[a] for a in entry.get("aliases", ()) if a in limits), None)
            if limit is not None:
                entry["max_output_tokens"] = limit

    return {
        "format": 1,
        "about": (
            "Prices in USD per million tokens (per_request: USD per call; call: a fee on "
            "every call). max_output_tokens: the most output one call can ask for. dated: "
            "prices in force from 'since' (inclusive) until 'until' (exclusive), UTC dates, "
            "each naming what differs from the entry. Generated by "
            "scripts/update_prices.py from the MIT-licensed genai-prices data "
            "(https://github.com/pydantic/genai-prices) plus scripts/price_overrides.json."
        ),
        "source": source,
        "generated": as_of.isoformat(),
        "models": dict(sorted(models.items())),
    }


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the shipped price table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date.today())
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the table would change")
    parser.add_argument(
        "--litellm-map",
        type=Path,
        help="LiteLLM's model_prices_and_context_window JSON, for max_output_tokens",
    )
    args = parser.parse_args(argv)
    try:
        import genai_prices  # noqa: F401
    except ImportError:
        print(__doc__, file=sys.stderr)
        return 2
    limits = _kept_limits(args.output)
    limits.update(_litellm_limits(args.litellm_map))
    table = build(args.as_of, limits)
    text = json.dumps(table, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        # The date alone changing is not staleness.
        current_table = json.loads(current) if current else {}
        same = {**current_table, "generated": None} == {**table, "generated": None}
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {len(table['models'])} models to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
