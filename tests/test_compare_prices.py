"""scripts/compare_prices.py: the development-time comparison with genai-prices and LiteLLM."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_prices.py"

# A stand-in for the genai-prices package: its data module as the script reads
# it (providers with models, each priced per million tokens; a dated price as
# a list of conditional prices). Written as a wheel, the way `pip download`
# brings it.
_GENAI_INIT = '__version__ = "9.9.9"\n'
_GENAI_DATA = """
import datetime as _dt
from types import SimpleNamespace as _N

class TieredPrices:
    def __init__(self, base, tiers):
        self.base, self.tiers = base, tiers

class StartDateConstraint:
    def __init__(self, start_date):
        self.start_date = start_date

def _model(id, **prices):
    return _N(id=id, prices=_N(**prices))

providers = [
    _N(id="openai", models=[
        _model("gpt-4o-mini", input_mtok=0.15, output_mtok=0.6),
        _model("gpt-4o", input_mtok=5, output_mtok=20),  # both differ
        _model("no-such-model-xyz", input_mtok=1, output_mtok=2),
        _model("dall-e-3", input_mtok=None),  # priced per image: not compared
        _model("text-embedding-3-small", input_mtok=0.02),  # no output price: 0
    ]),
    _N(id="google", models=[
        # Tiered: compared at the price below the first tier.
        _model("gemini-2.5-pro", input_mtok=TieredPrices(1.25, []), output_mtok=10),
    ]),
    _N(id="anthropic", models=[
        # Dated: the price that took effect last is the one compared.
        _N(id="claude-haiku-4-5", prices=[
            _N(constraint=None, prices=_N(input_mtok=9, output_mtok=9)),
            _N(constraint=StartDateConstraint(_dt.date(2000, 1, 1)),
               prices=_N(input_mtok=1, output_mtok=5)),
            _N(constraint=StartDateConstraint(_dt.date(2999, 1, 1)),
               prices=_N(input_mtok=7, output_mtok=7)),
        ]),
    ]),
    _N(id="mistral", models=[_model("mistral-large-xyz", input_mtok=1, output_mtok=1)]),
]
"""


def _genai_wheel(tmp_path: Path, data: str = _GENAI_DATA) -> Path:
    wheel = tmp_path / "genai_prices-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as made:
        made.writestr("genai_prices/__init__.py", _GENAI_INIT)
        made.writestr("genai_prices/data.py", data)
    return wheel


def _run(
    tmp_path: Path, data: object, *, genai: str = "providers = []\n"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    wheel = _genai_wheel(tmp_path, genai)
    return subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--litellm-map", str(path)),
            *("--genai-prices", str(wheel), "--json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_a_map_that_agrees_reports_nothing(tmp_path: Path) -> None:
    """A LiteLLM map with the shipped price, and an empty genai-prices, exit 0."""
    agreed = {
        "gpt-4o-mini": {
            "mode": "chat",
            "litellm_provider": "openai",
            "input_cost_per_token": 1.5e-07,
            "output_cost_per_token": 6e-07,
        }
    }
    done = _run(tmp_path, agreed)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["litellm"]["openai"] == {"compared": 1, "missing": [], "different": []}
    assert report["sources"]["genai-prices"] == "genai-prices 9.9.9"


def test_unknown_and_differently_priced_models_are_named(tmp_path: Path) -> None:
    """LiteLLM's chat models unknown or priced otherwise are listed; other modes are not."""
    data = {
        "no-such-model-xyz": {"mode": "chat", "litellm_provider": "anthropic"},
        "gpt-4o-mini": {
            "mode": "chat",
            "litellm_provider": "openai",
            "input_cost_per_token": 3e-07,  # twice the shipped price
            "output_cost_per_token": 6e-07,
        },
        "text-embedding-3-small": {"mode": "embedding", "litellm_provider": "openai"},
        "mistral-large": {"mode": "chat", "litellm_provider": "mistral"},
    }
    done = _run(tmp_path, data)
    assert done.returncode == 1
    report = json.loads(done.stdout)["litellm"]
    assert report["anthropic"]["missing"] == ["no-such-model-xyz"]
    (different,) = report["openai"]["different"]
    assert different["model"] == "gpt-4o-mini"
    assert different["ours_theirs"] == {"input": ["0.15", "0.3"]}
    assert report["openai"]["compared"] == 1  # embeddings and other providers are not compared


def test_genai_prices_models_unknown_or_priced_otherwise_are_named(tmp_path: Path) -> None:
    """genai-prices is read from a wheel: unknown models and price differences are listed."""
    done = _run(tmp_path, {}, genai=_GENAI_DATA)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)["genai-prices"]
    assert report["openai"]["missing"] == ["no-such-model-xyz"]
    (different,) = report["openai"]["different"]
    # Prices written as plain decimals ("20", not "2E+1").
    assert different == {
        "model": "gpt-4o",
        "ours_theirs": {"input": ["2.5", "5"], "output": ["10", "20"]},
    }
    assert report["openai"]["compared"] == 4  # the per-image model is not a token model
    # The tiered Gemini price and today's dated Claude price agree with the table.
    assert report["gemini"] == {"compared": 1, "missing": [], "different": []}
    assert report["anthropic"] == {"compared": 1, "missing": [], "different": []}
    assert set(report) == {"openai", "anthropic", "gemini"}  # mistral is not compared


def test_a_peer_that_cannot_be_read_is_named_and_the_other_still_compared(
    tmp_path: Path,
) -> None:
    """genai-prices not found at the path given: said on stderr; LiteLLM's map is compared."""
    path = tmp_path / "map.json"
    path.write_text("{}", encoding="utf-8")
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--litellm-map", str(path)),
            *("--genai-prices", str(tmp_path / "none.whl"), "--json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "cannot import genai-prices from" in done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"sources", "litellm"}


def test_an_unreadable_map_is_named_and_exits_2(tmp_path: Path) -> None:
    """A LiteLLM map that is not JSON is named, and the script exits 2."""
    path = tmp_path / "map.json"
    path.write_text("[not json", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--litellm-map", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "cannot read the LiteLLM map" in done.stderr
