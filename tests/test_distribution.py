"""The distribution's own name and extras: every install hint must lead to this package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest

from budgetguard import _dist
from budgetguard.errors import ConfigurationError
from budgetguard.ledger import ledger_from_url

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Extras for developers of budgetguard, not for its users.
DEVELOPER_EXTRAS = {"test", "dev", "docs"}  # docs: what builds the site, not a feature

#: ``pip install 'NAME[extra,...]'`` or ``pip install NAME``, as messages and docs write it.
INSTALL = re.compile(
    r"pip install (?:-U |--upgrade )?['\"]?"  # the command, a quote
    r"([A-Za-z0-9_.<>\- ]+?)(?:\[([^\]]*)\])?"  # the name, [the extras]
    r"['\"]?(?=[\s)`'\",;]|$)"  # the closing quote, then the end of the hint
)


def _texts() -> list[tuple[str, str]]:
    paths = [*sorted((ROOT / "budgetguard").rglob("*.py")), ROOT / "README.md"]
    paths += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "examples").rglob("*.py"))
    paths.append(ROOT / "CHANGELOG.md")
    return [(str(path.relative_to(ROOT)), path.read_text()) for path in paths if path.exists()]


def test_the_distribution_has_a_name_of_its_own() -> None:
    """pyproject's name is the one every hint uses, not the index's unrelated budgetguard."""
    assert PROJECT["name"] == _dist.DISTRIBUTION
    assert PROJECT["name"] != "budgetguard"
    assert PROJECT["scripts"]["budgetguard"] == "budgetguard.cli:main"


def test_the_extras_the_package_names_are_the_ones_pyproject_defines() -> None:
    """_dist.EXTRAS and pyproject's user-facing extras are the same set."""
    defined = set(PROJECT["optional-dependencies"]) - DEVELOPER_EXTRAS
    assert set(_dist.EXTRAS) == defined
    with pytest.raises(ValueError):
        _dist.install_hint("mysql")


def test_every_install_hint_names_this_distribution_and_a_defined_extra() -> None:
    """No message, doc or example installs the unrelated budgetguard or a missing extra."""
    defined = set(PROJECT["optional-dependencies"])
    found = 0
    for name, text in _texts():
        assert "budgetguard[" not in text, f"{name} names the extra of the unrelated 'budgetguard'"
        for match in INSTALL.finditer(text):
            target, extras = match.group(1).strip(), match.group(2)
            first = target.split()[0] if target.split() else target
            if first == "budgetguard":
                raise AssertionError(f"{name}: {match.group(0)!r} installs someone else's project")
            if first in (_dist.DISTRIBUTION, "-e", ".", "<this") and extras:
                for extra in extras.split(","):
                    assert extra.strip() in defined, f"{name}: {match.group(0)!r}: no such extra"
                found += 1
    assert found >= 3  # the check is looking at real hints


def test_a_missing_redis_client_names_the_extra_in_process() -> None:
    """A redis:// URL without redis-py says: pip install 'budgetguard-llm[redis]'."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from budgetguard.ledger import ledger_from_url\n"
        "from budgetguard.errors import ConfigurationError\n"
        "try:\n    ledger_from_url('rediss://localhost')\n"
        "except ConfigurationError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "pip install 'budgetguard-llm[redis]'" in out


def test_an_unknown_scheme_names_no_extra() -> None:
    """A scheme budgetguard does not serve gets no made-up extra in its message."""
    with pytest.raises(ConfigurationError) as caught:
        ledger_from_url("mysql://localhost/db")
    assert "pip install" not in str(caught.value)
