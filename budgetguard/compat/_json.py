"""JSON that keeps amounts exact: ``Decimal`` in, plain JSON numbers out, ``Decimal`` back.

``dumps`` writes amounts as JSON numbers with every digit (``0.000018``);
``json_safe`` turns them into the same digits as strings (``"0.000018"``), for
code that hands records to ``json.dumps``, a web framework or a logger.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = ["dumps", "json_safe", "loads"]


def loads(text: str | bytes) -> Any:
    """Parse JSON, reading every fractional number as an exact ``Decimal``."""
    return json.loads(text, parse_float=Decimal)


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Write JSON with ``Decimal`` amounts as exact numbers (``json`` would refuse them)."""
    parts: list[str] = []
    _write(value, parts, indent, 0)
    return "".join(parts)


def json_safe(value: Any) -> Any:
    """Return a copy of ``value`` that ``json.dumps`` accepts: each ``Decimal`` as its exact string.

    ``Decimal("0.000018")`` becomes ``"0.000018"`` (never ``"1.8E-5"``), and
    ``Decimal(s)`` gives the amount back to the last digit. Mappings become
    dicts, lists and tuples lists; other values are returned as they are.
    """
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def _number(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"cannot write {value} as JSON")
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _write(value: Any, out: list[str], indent: int | None, level: int) -> None:
    if isinstance(value, Decimal):
        out.append(_number(value))
    elif value is None or isinstance(value, (str, bool, int, float)):
        out.append(json.dumps(value))
    elif isinstance(value, Mapping):
        items = list(value.items())
        if not items:
            out.append("{}")
            return
        inner, outer, colon = _spacing(indent, level)
        out.append("{")
        for position, (key, item) in enumerate(items):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            out.append(("," if position else "") + inner + json.dumps(key) + colon)
            _write(item, out, indent, level + 1)
        out.append(outer + "}")
    elif isinstance(value, Sequence):
        if not value:
            out.append("[]")
            return
        inner, outer, _ = _spacing(indent, level)
        out.append("[")
        for position, item in enumerate(value):
            out.append(("," if position else "") + inner)
            _write(item, out, indent, level + 1)
        out.append(outer + "]")
    else:
        raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _spacing(indent: int | None, level: int) -> tuple[str, str, str]:
    if indent is None:
        return "", "", ": "
    return "\n" + " " * (indent * (level + 1)), "\n" + " " * (indent * level), ": "
