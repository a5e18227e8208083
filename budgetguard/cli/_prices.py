"""Show a model's prices, or search the price table: ``budgetguard prices``."""

from __future__ import annotations

import argparse
import difflib
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..pricing._price import TOKEN_PRICE_FIELDS
from ._common import EXIT_OK, CommandError, add_command, add_format
from ._output import cell, plain, print_csv, print_json, print_table

if TYPE_CHECKING:
    from ._common import Subparsers

_PRICE_FIELDS = TOKEN_PRICE_FIELDS


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard prices`` to the command line."""
    prices = add_command(
        commands,
        "prices",
        "show a model's prices, or search the price table",
        "Show the prices budgetguard charges, in USD per million tokens.\n"
        "With MODEL: that model's prices (dated snapshots and routing prefixes such as\n"
        "'azure/' or 'bedrock/' are understood), or the models whose names contain\n"
        "MODEL. Without: the whole table.",
        "examples:\n"
        "  budgetguard prices gpt-4o-2024-08-06\n"
        "  budgetguard prices claude\n"
        "  budgetguard prices --provider gcp.gen_ai --format csv",
        run,
    )
    prices.add_argument("model", nargs="?", metavar="MODEL", help="a model name or part of one")
    prices.add_argument(
        "--provider",
        metavar="NAME",
        help="only this provider's models (openai, anthropic, gcp.gen_ai, ...)",
    )
    add_format(prices)


def run(args: argparse.Namespace) -> int:
    """Print one model's prices, or the table of the models that match."""
    from ..pricing import default_table

    table = default_table()
    entries = sorted(table, key=lambda p: ((p.provider or ""), p.model))
    if args.provider:
        entries = [p for p in entries if (p.provider or "").lower() == args.provider.lower()]
        if not entries:
            known = sorted({p.provider for p in table if p.provider})
            raise CommandError(
                f"no models of provider {args.provider!r}; known: {', '.join(known)}"
            )
    if args.model:
        found = table.lookup(args.model)
        if found is not None and (not args.provider or found in entries):
            _show_price(args.model, found, args.format)
            return EXIT_OK
        needle = args.model.lower()
        entries = [
            p
            for p in entries
            if needle in p.model.lower() or any(needle in a.lower() for a in p.aliases)
        ]
        if not entries:
            names = [p.model for p in table]
            close = difflib.get_close_matches(args.model.lower(), names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CommandError(f"no price known for model {args.model!r}{hint}")
    headers = [
        "model",
        "provider",
        "input",
        "output",
        "cached_input",
        "cache_write_5m",
        "reasoning",
    ]
    rows = [
        [p.model, p.provider, p.input, p.output, p.cached_input, p.cache_write_5m, p.reasoning]
        for p in entries
    ]
    if args.format == "json":
        print_json([_price_json(p) for p in entries])
    elif args.format == "csv":
        print_csv(headers, [[cell(v) for v in row] for row in rows])
    else:
        print(
            "USD per million tokens; '-' is billed at the nearest known price "
            "(cached input at input, reasoning at output)"
        )
        table_rows = [
            [
                str(r[0]),
                str(r[1] or "-"),
                *(plain(v) if isinstance(v, Decimal) else "-" for v in r[2:]),
            ]
            for r in rows
        ]
        print_table(headers, table_rows, numeric=[2, 3, 4, 5, 6])
        print(f"{len(rows)} models")
    return EXIT_OK


def _price_json(price: Any) -> dict[str, object]:
    data: dict[str, object] = {"model": price.model, "provider": price.provider}
    for name in _PRICE_FIELDS:
        data[name] = getattr(price, name)
    data["aliases"] = list(price.aliases)
    data["long_context"] = [
        {
            "above_input_tokens": tier.above_input_tokens,
            "input": tier.price.input,
            "output": tier.price.output,
        }
        for tier in price.long_context
    ]
    data["service_tiers"] = {
        name: {"input": tier.input, "output": tier.output}
        for name, tier in price.service_tiers.items()
    }
    data["per_request"] = dict(price.per_request)
    data["max_output_tokens"] = price.max_output_tokens
    data["dated"] = [
        {
            "since": _day(dated.since),
            "until": _day(dated.until),
            **{name: getattr(dated.price, name) for name in _PRICE_FIELDS},
            "per_request": dict(dated.price.per_request),
        }
        for dated in price.dated
    ]
    data["source"] = price.source
    data["checked"] = price.checked
    return data


def _show_price(asked: str, price: Any, form: str) -> None:
    if form == "json":
        print_json(_price_json(price))
        return
    if form == "csv":
        data = _price_json(price)
        headers = ["model", "provider", *_PRICE_FIELDS]
        print_csv(headers, [[cell(data[h]) for h in headers]])
        return
    if asked.strip().lower() != price.model.lower():
        print(f"{asked} is priced as {price.model}")
    print(f"{price.model} ({price.provider or 'unknown provider'}), USD per million tokens:")
    rows = []
    for name in _PRICE_FIELDS:
        value = getattr(price, name)
        if value is not None:
            rows.append([name.replace("_", " "), plain(value)])
    for tier in price.long_context:
        rows.append([f"input above {tier.above_input_tokens:,} tokens", plain(tier.price.input)])
        rows.append([f"output above {tier.above_input_tokens:,} tokens", plain(tier.price.output)])
    for name, tier in sorted(price.service_tiers.items()):
        rows.append([f"{name} tier input / output", f"{plain(tier.input)} / {plain(tier.output)}"])
    for name, fee in sorted(price.per_request.items()):
        what = "every call" if name == "call" else f"{name.replace('_', ' ')} (per request)"
        rows.append([what, plain(fee)])
    for dated in price.dated:
        when = _span(dated.since, dated.until)
        rows.append(
            [f"{when}: input / output", f"{plain(dated.price.input)} / {plain(dated.price.output)}"]
        )
        for name, fee in sorted(dated.price.per_request.items()):
            if price.per_request.get(name) != fee:
                rows.append([f"{when}: {name.replace('_', ' ')} fee", plain(fee)])
    print_table(["price", "USD"], rows)
    if price.max_output_tokens is not None:
        print(f"max output: {price.max_output_tokens:,} tokens a call (estimates count no more)")
    if price.aliases:
        print(f"also known as: {', '.join(price.aliases)}")
    checked = f", checked {price.checked}" if price.checked else ""
    print(f"source: {price.source}{checked}")


def _day(when: float | None) -> str | None:
    """Write a dated price's bound as an ISO date (a time too, when it is not midnight UTC)."""
    if when is None:
        return None
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(when, timezone.utc)
    if moment.hour == moment.minute == moment.second == 0:
        return moment.date().isoformat()
    return moment.isoformat()


def _span(since: float | None, until: float | None) -> str:
    if since is None:
        return f"until {_day(until)}"
    if until is None:
        return f"from {_day(since)}"
    return f"{_day(since)} to {_day(until)}"
