"""The README's performance table is generated from the committed side-by-side run.

``benchmarks/peers/readme_table.py`` writes the table between two marker
comments from ``benchmarks/results/side_by_side.json``; the benchmark itself
never runs here.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "side_by_side.json"


def _load_generator() -> ModuleType:
    path = ROOT / "benchmarks" / "peers" / "readme_table.py"
    spec = importlib.util.spec_from_file_location("readme_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_table", module)
    spec.loader.exec_module(module)
    return module


table = _load_generator()


@pytest.fixture
def result() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(RESULT.read_text(encoding="utf-8"))
    return loaded


def _document(inside: str) -> str:
    return f"# Title\n\nbefore the table\n{table.START}\n{inside}\n{table.END}\nafter the table\n"


def test_rewrite_replaces_only_the_text_between_the_markers(result: dict[str, Any]) -> None:
    old = _document("| stale | table |")
    new = table.rewrite(old, table.render(result))
    head, _, rest = new.partition(table.START)
    inside, _, tail = rest.partition(table.END)
    assert head == "# Title\n\nbefore the table\n"
    assert tail == "\nafter the table\n"
    assert inside == f"\n{table.render(result)}\n"
    assert "stale" not in new


def test_rewrite_is_idempotent(result: dict[str, Any]) -> None:
    once = table.rewrite(_document("old"), table.render(result))
    assert table.rewrite(once, table.render(result)) == once


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{table.START}\nonly the start\n",
        f"{table.END}\n{table.START}\nreversed\n",
        f"{table.START}\n{table.END}\n{table.START}\n{table.END}\n",
    ],
)
def test_rewrite_refuses_text_without_one_pair_of_markers(text: str) -> None:
    with pytest.raises(ValueError, match="perf-table"):
        table.rewrite(text, "| a |")


def test_the_table_follows_the_figures_in_the_result(result: dict[str, Any]) -> None:
    changed = copy.deepcopy(result)
    ns = changed["sections"]["hot"]["ns_per_call"]
    ns["budgeted"] = ns["bare"] + 123_456.0
    changed["sections"]["redis"]["calls_per_second"]["limits"]["1 thread"] = 98_765.0
    text = table.render(changed)
    assert "123 µs added" in text
    assert "98.8 k" in text
    assert text != table.render(result)


def test_the_readme_table_is_the_one_the_committed_result_makes(
    result: dict[str, Any], tmp_path: Path
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table.rewrite(readme, table.render(result)) == readme, (
        "README.md's performance table is stale: run python benchmarks/peers/readme_table.py"
    )
    copied = tmp_path / "README.md"
    copied.write_text(readme, encoding="utf-8")
    assert table.main(["--json", str(RESULT), "--readme", str(copied), "--check"]) == 0
    copied.write_text(readme.replace(table.END, f"stale row\n{table.END}"), encoding="utf-8")
    assert table.main(["--json", str(RESULT), "--readme", str(copied), "--check"]) == 1
