"""``budgetguard.instrument`` is the function, whatever was imported first."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import budgetguard
import budgetguard._instrument

_ROOT = Path(__file__).resolve().parent.parent.parent

# Each runs in a fresh interpreter, before ``budgetguard.instrument`` is looked up.
FIRST_IMPORTS = [
    "import budgetguard",
    "import budgetguard._instrument",
    "import budgetguard._instrument._wrappers",
    "import budgetguard._streams",
    "from budgetguard._instrument import instrument",
    "from budgetguard import instrument",
]

_CHECK = """
import inspect
import budgetguard
import budgetguard._instrument
for name in ("instrument", "uninstrument"):
    found = getattr(budgetguard, name)
    assert inspect.isfunction(found), (name, found)
    assert found is getattr(budgetguard._instrument, name), name
from budgetguard import instrument, uninstrument
assert inspect.isfunction(instrument) and inspect.isfunction(uninstrument)
"""


@pytest.mark.parametrize("first", FIRST_IMPORTS)
def test_instrument_is_the_function_whatever_the_import_order(first: str) -> None:
    """Importing the private subpackage or its modules first never shadows the function."""
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}  # this checkout, not an installed copy
    done = subprocess.run(
        [sys.executable, "-c", f"{first}\n{_CHECK}"],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_instrument_and_uninstrument_are_exported_functions() -> None:
    """The package exports both as plain functions, the same objects as the private module's."""
    assert inspect.isfunction(budgetguard.instrument)
    assert budgetguard.instrument is budgetguard._instrument.instrument
    assert budgetguard.uninstrument is budgetguard._instrument.uninstrument
    assert {"instrument", "uninstrument"} <= set(budgetguard.__all__)
