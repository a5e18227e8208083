"""Compare the shipped price table with genai-prices and LiteLLM's map: what is missing, differs.

A development-time check, run before a release or after ``update_prices.py``::

    python scripts/compare_prices.py                      # both, from installed packages
    python scripts/compare_prices.py --litellm-map FILE   # LiteLLM's map from a file
    python scripts/compare_prices.py --genai-prices WHEEL # genai-prices from a wheel or folder
    python scripts/compare_prices.py --json               # the full lists, machine-readable

Neither peer needs to be installed in the project's environment; both can be
fetched once as files and read offline::

    pip download --no-deps genai-prices litellm -d /tmp/peers
    unzip /tmp/peers/litellm-*.whl 'litellm/model_prices_and_context_window_backup.json' -d /tmp/l
    python scripts/compare_prices.py --genai-prices /tmp/peers/genai_prices-*.whl \
        --litellm-map /tmp/l/litellm/model_prices_and_context_window_backup.json

LiteLLM's ``model_prices_and_context_window`` JSON is read as data (litellm
itself is never imported: it takes seconds and touches the network).
genai-prices (pure Python, its data a module) is imported, from the wheel or
folder given, else from the environment; it needs pydantic. Each model of the
providers compared (OpenAI, Anthropic, Gemini; LiteLLM's chat models only) is
looked up the way a call would be (``budgetguard.pricing.lookup``, with its
name normalisation), at the prices in force today. It reports, per source and
provider: models the peer prices and budgetguard does not know, and models
whose input or output price (and, against LiteLLM, ``max_output_tokens``)
differs by more than ``--tolerance``. Exit status 0 when nothing is missing or
different, 1 otherwise, 2 when neither peer can be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from budgetguard.pricing import ModelPrice, lookup

#: LiteLLM's provider name -> the name printed here.
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
#: genai-prices' provider id -> the name printed here.
GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}
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


def _text(value: Decimal) -> str:
    """Write a price as a plain decimal ("10", "0.075"), never in exponent form."""
    return format(value.normalize(), "f")


def _differs(ours: Decimal, theirs: Decimal, tolerance: Decimal) -> bool:
    if ours == theirs:
        return False
    return abs(ours - theirs) > tolerance * max(abs(ours), abs(theirs))


def _empty() -> dict[str, dict[str, Any]]:
    return {name: {"compared": 0, "missing": [], "different": []} for name in PROVIDERS.values()}


def _price_changes(
    price: ModelPrice, theirs: Mapping[str, Decimal | None], tolerance: Decimal
) -> dict[str, list[str]]:
    """Return ``{field: [ours, theirs]}`` for the token prices that differ beyond ``tolerance``."""
    changes: dict[str, list[str]] = {}
    for field in ("input", "output"):
        value = theirs.get(field)
        ours: Decimal = getattr(price, field)
        if value is not None and _differs(ours, value, tolerance):
            changes[field] = [_text(ours), _text(value)]
    return changes


def _finish(report: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for section in report.values():
        section["missing"] = sorted(set(section["missing"]))
    return report


def _today() -> float:
    return dt.datetime.now(dt.timezone.utc).timestamp()


def compare(data: Mapping[str, Any], tolerance: Decimal) -> dict[str, dict[str, Any]]:
    """Return, per provider, the chat models of LiteLLM's map compared, missing and different."""
    report = _empty()
    now = _today()
    for provider, model, entry in chat_models(data):
        section = report[provider]
        section["compared"] += 1
        found = lookup(model)
        if found is None:
            section["missing"].append(model)
            continue
        price = found.at(now)
        changes = _price_changes(
            price,
            {
                "input": _per_million(entry.get("input_cost_per_token")),
                "output": _per_million(entry.get("output_cost_per_token")),
            },
            tolerance,
        )
        limit = entry.get("max_output_tokens")
        if (
            isinstance(limit, int)
            and price.max_output_tokens is not None
            and limit != price.max_output_tokens
        ):
            changes["max_output_tokens"] = [str(price.max_output_tokens), str(limit)]
        if changes:
            section["different"].append({"model": model, "ours_theirs": changes})
    return _finish(report)


def _mtok(value: Any) -> Decimal | None:
    """Return a genai-prices price per million tokens (a tiered one at its base), or ``None``."""
    if value is None or isinstance(value, bool):
        return None
    base = getattr(value, "base", value)  # TieredPrices: the price below the first tier
    try:
        return Decimal(str(base))
    except ArithmeticError:
        return None


def _in_force(model: Any, today: dt.date) -> Any:
    """Return the prices a genai-prices model has today (its dated ones by their start date)."""
    prices = model.prices
    if not isinstance(prices, list):
        return prices
    chosen = prices[0].prices
    for conditional in prices:
        constraint = conditional.constraint
        start = getattr(constraint, "start_date", None)
        if constraint is None or (isinstance(start, dt.date) and start <= today):
            chosen = conditional.prices
    return chosen


def genai_models(providers: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """Yield (provider, model) for the models of the genai-prices providers compared."""
    for provider in providers:
        name = GENAI_PROVIDERS.get(str(getattr(provider, "id", "")))
        if name is None:
            continue
        for model in provider.models:
            yield name, model


def compare_genai_prices(providers: Iterable[Any], tolerance: Decimal) -> dict[str, dict[str, Any]]:
    """Return, per provider, genai-prices' token-priced models compared, missing and different."""
    report = _empty()
    today = dt.datetime.now(dt.timezone.utc).date()
    now = _today()
    for provider, model in genai_models(providers):
        prices = _in_force(model, today)
        theirs = {
            "input": _mtok(getattr(prices, "input_mtok", None)),
            "output": _mtok(getattr(prices, "output_mtok", None)),
        }
        if theirs["input"] is None:
            continue  # priced per image, second or character: not a token model
        section = report[provider]
        section["compared"] += 1
        found = lookup(str(model.id))
        if found is None:
            section["missing"].append(str(model.id))
            continue
        if theirs["output"] is None:
            theirs["output"] = Decimal(0)  # embeddings: no output price
        changes = _price_changes(found.at(now), theirs, tolerance)
        if changes:
            section["different"].append({"model": str(model.id), "ours_theirs": changes})
    return _finish(report)


def load_genai_prices(path: Path | None) -> tuple[str, list[Any]] | None:
    """Return genai-prices' version and providers, from ``path`` (wheel or folder) or installed."""
    if path is not None:
        sys.path.insert(0, str(path))
    try:
        data = importlib.import_module("genai_prices.data")
    except ImportError as error:
        if path is not None:
            print(f"cannot import genai-prices from {path}: {error}", file=sys.stderr)
        return None
    package = sys.modules["genai_prices"]
    version = getattr(package, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version("genai-prices")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version), list(data.providers)


def _litellm_version(path: Path) -> str:
    """Name the map read: the installed litellm's version when the map is its own."""
    if path == installed_map():
        try:
            return f"LiteLLM {importlib.metadata.version('litellm')} map"
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"LiteLLM map {path.name}"


def _print(title: str, report: Mapping[str, Mapping[str, Any]], unit: str) -> None:
    print(title)
    for provider, section in report.items():
        print(
            f"  {provider}: {section['compared']} {unit}, "
            f"{len(section['missing'])} unknown to budgetguard, "
            f"{len(section['different'])} priced differently"
        )
        for model in section["missing"]:
            print(f"    missing  {model}")
        for item in section["different"]:
            print(f"    differs  {item['model']}: {item['ours_theirs']}")


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; exit 1 when anything is missing or differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm-map", type=Path, help="LiteLLM's model map JSON")
    parser.add_argument(
        "--genai-prices", type=Path, help="a genai-prices wheel or folder (else the installed one)"
    )
    parser.add_argument(
        "--tolerance", type=Decimal, default=Decimal("0.01"), help="relative (0.01 = 1%%)"
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    titles: dict[str, str] = {}
    path = args.litellm_map or installed_map()
    if path is None:
        print("no LiteLLM map: pass --litellm-map or install litellm", file=sys.stderr)
    else:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"cannot read the LiteLLM map {path}: {error}", file=sys.stderr)
            return 2
        if not isinstance(data, dict):
            print(f"the LiteLLM map {path} is not a JSON object", file=sys.stderr)
            return 2
        reports["litellm"] = compare(data, args.tolerance)
        titles["litellm"] = _litellm_version(Path(path))
    genai = load_genai_prices(args.genai_prices)
    if genai is None:
        print("no genai-prices: pass --genai-prices or install it", file=sys.stderr)
    else:
        version, providers = genai
        reports["genai-prices"] = compare_genai_prices(providers, args.tolerance)
        titles["genai-prices"] = f"genai-prices {version}"
    if not reports:
        return 2
    if args.json:
        print(json.dumps({"sources": titles, **reports}, indent=1))
    else:
        units = {"litellm": "chat models", "genai-prices": "token-priced models"}
        for source, report in reports.items():
            _print(f"{titles[source]}:", report, units[source])
    bad = any(
        section["missing"] or section["different"]
        for report in reports.values()
        for section in report.values()
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
