"""Read a request body as JSON that cannot hurt the service: bounded, shallow, finite."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["MAX_DEPTH", "BadRequest", "parse_json"]

#: Objects and arrays nest at most this deep (a LiteLLM user dict needs 4).
MAX_DEPTH = 32
#: Numbers beyond 10**MAX_EXPONENT are refused: no budget is that many dollars, and
#: ``Decimal("1e999999999")`` would make the ledger build a billion-digit integer.
MAX_EXPONENT = 15


# Amounts arrive as strings too ("0.0012"): the same bound applies to them.
_NUMERIC = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


class BadRequest(Exception):
    """Report a request the client must fix, with its HTTP status (400 unless told)."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number budgetguard accepts")


_LARGEST = Decimal(10) ** MAX_EXPONENT


def _too_large(value: Decimal) -> bool:
    # Look at the exponent first: comparing 1e999999999 itself would be slow.
    return bool(value) and (value.adjusted() > MAX_EXPONENT or abs(value) > _LARGEST)


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal can hold at all
        raise ValueError(f"the number {text[:40]} is too large") from None


def _number(text: str) -> Decimal:
    value = _decimal(text)
    if _too_large(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_EXPONENT + 1 or abs(int(text)) > 10**MAX_EXPONENT:
        raise ValueError(f"the number {text[:40]} is too large")
    return int(text)


def parse_json(body: bytes) -> dict[str, Any]:
    """Parse ``body`` as one JSON object; raise ``BadRequest`` for anything else.

    Fractional numbers become exact ``Decimal``; NaN, infinities, huge numbers
    and nesting deeper than ``MAX_DEPTH`` are refused before any of it is used.
    """
    _check_depth(body)
    try:
        value = json.loads(
            body,
            parse_float=_number,
            parse_int=_integer,
            parse_constant=_refuse_constant,
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    _check_numeric_strings(value)
    return value


def _check_numeric_strings(value: Any) -> None:
    """Refuse lone surrogates, and strings that are numbers too large for any amount."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("strings must be valid Unicode (no lone surrogates)") from None
        if len(value) < 4096 and _NUMERIC.fullmatch(value):
            try:
                too_large = _too_large(_decimal(value.strip()))
            except ValueError:
                too_large = True
            if too_large:
                raise BadRequest(f"the number {value[:40]!r} is too large")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_numeric_strings(key)
            _check_numeric_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_numeric_strings(item)


def _check_depth(body: bytes) -> None:
    """Refuse deep nesting before parsing: the parser would recurse once per level."""
    # Fewer brackets than the limit cannot nest deeper: skip the byte loop.
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                raise BadRequest(f"the body nests deeper than {MAX_DEPTH} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1
