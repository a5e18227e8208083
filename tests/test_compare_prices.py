"""scripts/compare_prices.py: the development-time comparison with LiteLLM's model map."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_prices.py"


def _run(tmp_path: Path, data: object) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--litellm-map", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_a_map_that_agrees_reports_nothing(tmp_path: Path) -> None:
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
    assert report["openai"] == {"compared": 1, "missing": [], "different": []}


def test_unknown_and_differently_priced_models_are_named(tmp_path: Path) -> None:
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
    report = json.loads(done.stdout)
    assert report["anthropic"]["missing"] == ["no-such-model-xyz"]
    (different,) = report["openai"]["different"]
    assert different["model"] == "gpt-4o-mini"
    assert different["ours_theirs"] == {"input": ["0.15", "0.3"]}
    assert report["openai"]["compared"] == 1  # embeddings and other providers are not compared


def test_an_unreadable_map_is_named_and_exits_2(tmp_path: Path) -> None:
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
