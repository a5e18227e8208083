"""The README's Python examples run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import budgetguard._default as default

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """Return the README's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_quick_start_runs_and_prints_what_it_says() -> None:
    """The quick start prints what it promises: spend, remaining, 2 of 32 run, the scope refusal."""
    default.configure(metrics=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(python_blocks()[0], "README quick start", "exec"), {})
    assert out.getvalue().split() == ["0.00036", "0.99964", "2", "0.00072", "scope", "0.0005"]


def test_every_python_block_runs() -> None:
    """Every Python example in the README runs without error on a fresh default guard."""
    for index, block in enumerate(python_blocks()):
        default.configure(metrics=False)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, f"README block {index}", "exec"), {})
