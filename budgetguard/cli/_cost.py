"""Price one call from its token counts: ``budgetguard cost``."""

from __future__ import annotations

import argparse
import difflib
from decimal import Decimal
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ._common import EXIT_OK, CommandError, UsageError, add_command
from ._output import plain, print_json, print_table

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard cost`` to the command line."""
    cost = add_command(
        commands,
        "cost",
        "price one call from its token counts",
        "Price one call exactly, from its token counts. Every count is its own bucket,\n"
        "as budgetguard bills them: --input excludes cache reads (--cached) and\n"
        "--output excludes reasoning tokens (--reasoning).",
        "examples:\n"
        "  budgetguard cost --model gpt-4o --input 12000 --output 800\n"
        "  budgetguard cost --model claude-sonnet-4-5 --input 2000 --cached 30000 --output 500\n"
        "  budgetguard cost --model o4-mini --input 900 --output 300 --reasoning 2000",
        run,
    )
    cost.add_argument("--model", required=True, metavar="MODEL", help="the model to price")
    cost.add_argument(
        "--input", type=_count, required=True, metavar="N", help="uncached input tokens"
    )
    cost.add_argument(
        "--output", type=_count, required=True, metavar="N", help="visible output tokens"
    )
    cost.add_argument(
        "--cached",
        type=_count,
        default=0,
        metavar="N",
        help="input tokens read from the prompt cache",
    )
    cost.add_argument(
        "--cache-write",
        type=_count,
        default=0,
        metavar="N",
        help="input tokens written to the prompt cache (5-minute lifetime)",
    )
    cost.add_argument(
        "--reasoning",
        type=_count,
        default=0,
        metavar="N",
        help="reasoning (thinking) output tokens",
    )
    cost.add_argument(
        "--tier",
        default="standard",
        metavar="TIER",
        help="service tier: standard (default), batch, flex, priority",
    )
    cost.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="output format (default: table)",
    )


def _count(text: str) -> int:
    """Parse a token count: a whole number, ``_`` and ``,`` allowed as separators."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of tokens: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a token count cannot be negative: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Print what the call costs, bucket by bucket."""
    from ..errors import UnknownModelError
    from ..pricing import cost_of, default_table
    from ..usage import Usage

    usage = Usage(
        input_tokens=args.input,
        cached_input_tokens=args.cached,
        cache_write_5m_tokens=args.cache_write,
        output_tokens=args.output,
        reasoning_tokens=args.reasoning,
        model=args.model,
    )
    try:
        cost = cost_of(usage, args.model, tier=args.tier)
    except UnknownModelError:
        names = [p.model for p in default_table()]
        close = difflib.get_close_matches(args.model.lower(), names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CommandError(
            f"no price known for model {args.model!r}{hint} (see 'budgetguard prices')"
        ) from None
    except ConfigurationError as error:
        raise UsageError(f"argument --tier: {error}") from None
    tokens = {
        "input": args.input,
        "cached_input": args.cached,
        "cache_write_5m": args.cache_write,
        "output": args.output,
        "reasoning": args.reasoning,
    }
    if args.format == "json":
        print_json(
            {
                "model": args.model,
                "priced_as": cost.model,
                "tier": cost.tier,
                "tokens": tokens,
                "breakdown": dict(cost.breakdown),
                "total": cost.total,
            }
        )
        return EXIT_OK
    priced = f" (priced as {cost.model})" if cost.model.lower() != args.model.lower() else ""
    tier = f", {cost.tier} tier" if cost.tier != "standard" else ""
    print(f"{args.model}{priced}{tier}")
    rows = []
    for name, amount in cost.breakdown.items():
        count = tokens.get(name, 0)
        unit = getattr(cost.price, name, None)
        rate = f"${plain(unit)}/M" if isinstance(unit, Decimal) else "-"
        if name == "cached_input" and cost.price.cached_input is None:
            rate = f"${plain(cost.price.input)}/M"
        if name == "reasoning" and cost.price.reasoning is None:
            rate = f"${plain(cost.price.output)}/M"
        if name == "cache_write_5m" and cost.price.cache_write_5m is None:
            rate = f"${plain(cost.price.input)}/M"
        rows.append([name.replace("_", " "), f"{count:,}", rate, plain(amount)])
    rows.append(["total", f"{sum(tokens.values()):,}", "", plain(cost.total)])
    print_table(["tokens", "count", "price", "USD"], rows, numeric=[1, 3])
    return EXIT_OK
