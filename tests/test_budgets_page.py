"""The examples of docs/budgets.md run as written and print what they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import budgetguard._default as default

PAGE = Path(__file__).resolve().parents[1] / "docs" / "budgets.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_page_has_examples() -> None:
    """The page shows subjects, labels, units, sliding, modes, parents, boosts and free models."""
    assert len(BLOCKS) == 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_example_runs_and_prints_what_its_comments_say(index: int) -> None:
    """Each block runs on a fresh default guard; a printed line matches its ``# comment``."""
    default.configure(metrics=False)
    block = BLOCKS[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"docs/budgets.md block {index}", "exec"), {})
    promised = [
        line.split("# ", 1)[1].strip()
        for line in block.splitlines()
        if line.lstrip().startswith("print(") and "# " in line
    ]
    printed = out.getvalue().splitlines()
    for line in promised:
        assert line in printed, (line, printed)
