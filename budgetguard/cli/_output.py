"""Format amounts, times and tables the same way in every command's output."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import TextIO


def plain(amount: Decimal) -> str:
    """Return an exact amount without exponent: ``0.00001``, ``25``."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def money(amount: Decimal) -> str:
    """Return an amount for a table: at most six decimals, at least two."""
    rounded = amount.quantize(Decimal("0.000001"))
    text = plain(rounded)
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def when(moment: datetime | None) -> str:
    """Return a moment for a table, in UTC to the minute, or ``never``."""
    if moment is None:
        return "never"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def iso(moment: datetime | None) -> str | None:
    """Return a moment for csv and json: ISO 8601 in UTC."""
    return moment.astimezone(timezone.utc).isoformat() if moment is not None else None


def percent(fraction: Decimal) -> str:
    """Return a fraction as a percentage to one decimal: ``42.0%``."""
    return f"{(fraction * 100).quantize(Decimal('0.1'))}%"


def cell(value: object) -> object:
    """Return a value for a csv cell: exact amounts, ISO times, the rest as is."""
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, datetime):
        return iso(value)
    return value


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[int] = (),
    out: TextIO | None = None,
) -> None:
    """Print aligned columns; numeric columns line up on their decimal point."""
    out = out or sys.stdout
    cells = [list(row) for row in rows]
    for column in numeric:
        decimals = max((len(_after_point(row[column])) for row in cells), default=0)
        for row in cells:
            tail = _after_point(row[column])
            row[column] = row[column] + " " * (decimals - len(tail))
    widths = [len(header) for header in headers]
    for row in cells:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))
    right = set(numeric)

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if i in right else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)), file=out)
    print("  ".join("-" * width for width in widths), file=out)
    for row in cells:
        print(line(row), file=out)


def _after_point(text: str) -> str:
    """Return what follows the decimal point, ``.`` included (``"%"`` counts as a digit)."""
    if "." not in text:
        return ""
    return text[text.index(".") :]


def print_csv(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print one csv table on stdout; ``None`` is an empty cell."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout: amounts as exact strings, times in ISO."""
    json.dump(data, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
