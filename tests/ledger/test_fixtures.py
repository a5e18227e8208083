"""The server fixtures' own promise: without a server, CI fails where a laptop skips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import (
    POSTGRES_URL_ENV,
    REDIS_URL_ENV,
    REQUIRE_POSTGRES_ENV,
    REQUIRE_REDIS_ENV,
    worker_env,
)

# A test session in which the server binaries cannot be found: the fixtures
# are this repository's own, with their lookup of the binaries replaced.
PROBE_CONFTEST = """
import types

import tests.ledger.conftest as fixtures

fixtures.postgres_binaries = lambda: None
fixtures.shutil = types.SimpleNamespace(which=lambda name: None)

from tests.ledger.conftest import postgres_server, postgres_url, redis_server, redis_url  # noqa
"""

PROBE_TEST = """
def test_needs_a_server({fixture}):
    pass
"""

SERVERS = {
    "postgres_url": (POSTGRES_URL_ENV, REQUIRE_POSTGRES_ENV, "no initdb/pg_ctl"),
    "redis_url": (REDIS_URL_ENV, REQUIRE_REDIS_ENV, "no redis-server on PATH"),
}


@pytest.mark.parametrize("fixture", sorted(SERVERS))
@pytest.mark.parametrize("required", [True, False], ids=["required", "optional"])
def test_a_missing_server_fails_when_required_and_skips_otherwise(
    tmp_path: Path, fixture: str, required: bool
) -> None:
    """BUDGETGUARD_REQUIRE_POSTGRES=1 (or _REDIS=1) turns a skip without a server into an error."""
    url_env, require_env, reason = SERVERS[fixture]
    (tmp_path / "conftest.py").write_text(PROBE_CONFTEST)
    (tmp_path / "test_probe.py").write_text(PROBE_TEST.format(fixture=fixture))
    env = worker_env()
    env.pop(url_env, None)
    env[require_env] = "1" if required else ""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rEs", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if required:
        # pytest.fail in a fixture: the test errors at setup (the run fails; nothing skipped).
        assert "1 error" in run.stdout and "skipped" not in run.stdout, run.stdout + run.stderr
        assert f"{require_env}=1 but {reason}" in run.stdout
    else:
        assert "1 skipped" in run.stdout, run.stdout + run.stderr
        assert reason in run.stdout
