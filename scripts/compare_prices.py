"""Compare the shipped price table with LiteLLM's model map: what is missing, what differs.

A development-time check, run before a release or after ``update_prices.py``::

    python scripts/compare_prices.py                      # LiteLLM's map from an installed litellm
    python scripts/compare_prices.py --litellm-map FILE   # or from a file
    python scripts/compare_prices.py --json               # the full lists, machine-readable

It reads LiteLLM's ``model_prices_and_context_window`` JSON as data (litellm
itself is never imported: it takes seconds and touches the network) and looks
each chat model of the providers compared (OpenAI, Anthropic, Gemini) up the
way a call would (``budgetguard.pricing.lookup``, with its name
normalisation). It reports, per provider: models LiteLLM prices and
budgetguard does not know, and models whose input or output price, or
``max_output_tokens``, differs by more than ``--tolerance``. Exit status 0
when nothing is missing or different, 1 otherwise, 2 when no map is found.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from budgetguard.pricing import lookup

#: LiteLLM's provider name -> the name printed here.
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
_MAP_FILE = "model_prices_and_context_window_backup.json"
_MILLION = Decimal(1_000_000)


def installed_map() -> Path | None:
    """Return the map bundled with an installed litellm, found without importing it."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / _MAP_FILE
        if path.is_file():
            return path
    return None


def chat_models(data: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """Yield (provider, model, entry) for the chat models of the providers compared."""
    for name, entry in data.items():
        if not isinstance(entry, Mapping) or entry.get("mode") != "chat":
            continue
        provider = PROVIDERS.get(str(entry.get("litellm_provider")))
        if provider is None:
            continue
        # LiteLLM keys Gemini models as "gemini/gemini-2.5-pro"; callers send the bare name.
        yield provider, name.rpartition("/")[2], entry


def _per_million(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return Decimal(str(value)) * _MILLION


def _differs(ours: Decimal, theirs: Decimal, tolerance: Decimal) -> bool:
    if ours == theirs:
        return False
    return abs(ours - theirs) > tolerance * max(abs(ours), abs(theirs))


def compare(data: Mapping[str, Any], tolerance: Decimal) -> dict[str, dict[str, Any]]:
    """Return, per provider, the models compared, missing and different."""
    report: dict[str, dict[str, Any]] = {
        name: {"compared": 0, "missing": [], "different": []} for name in PROVIDERS.values()
    }
    for provider, model, entry in chat_models(data):
        section = report[provider]
        section["compared"] += 1
        price = lookup(model)
        if price is None:
            section["missing"].append(model)
            continue
        changes: dict[str, list[str]] = {}
        for field, key in (("input", "input_cost_per_token"), ("output", "output_cost_per_token")):
            theirs = _per_million(entry.get(key))
            ours: Decimal = getattr(price, field)
            if theirs is not None and _differs(ours, theirs, tolerance):
                changes[field] = [str(ours), str(theirs.normalize())]
        limit = entry.get("max_output_tokens")
        if (
            isinstance(limit, int)
            and price.max_output_tokens is not None
            and limit != price.max_output_tokens
        ):
            changes["max_output_tokens"] = [str(price.max_output_tokens), str(limit)]
        if changes:
            section["different"].append({"model": model, "ours_theirs": changes})
    for section in report.values():
        section["missing"] = sorted(set(section["missing"]))
    return report


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; exit 1 when anything is missing or differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm-map", type=Path, help="LiteLLM's model map JSON")
    parser.add_argument(
        "--tolerance", type=Decimal, default=Decimal("0.01"), help="relative (0.01 = 1%%)"
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    path = args.litellm_map or installed_map()
    if path is None:
        print("no LiteLLM map: pass --litellm-map or install litellm", file=sys.stderr)
        return 2
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"cannot read the LiteLLM map {path}: {error}", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print(f"the LiteLLM map {path} is not a JSON object", file=sys.stderr)
        return 2
    report = compare(data, args.tolerance)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for provider, section in report.items():
            print(
                f"{provider}: {section['compared']} chat models in LiteLLM's map, "
                f"{len(section['missing'])} unknown to budgetguard, "
                f"{len(section['different'])} priced differently"
            )
            for model in section["missing"]:
                print(f"  missing  {model}")
            for item in section["different"]:
                print(f"  differs  {item['model']}: {item['ours_theirs']}")
    bad = any(section["missing"] or section["different"] for section in report.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
