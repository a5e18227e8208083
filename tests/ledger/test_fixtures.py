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
def test_needs_postgres(postgres_url):
    pass


def test_needs_redis(redis_url):
    pass
"""

SERVERS = [
    (POSTGRES_URL_ENV, REQUIRE_POSTGRES_ENV, "no initdb/pg_ctl"),
    (REDIS_URL_ENV, REQUIRE_REDIS_ENV, "no redis-server on PATH"),
]


@pytest.mark.parametrize("required", [True, False], ids=["required", "optional"])
def test_a_missing_server_fails_when_required_and_skips_otherwise(
    tmp_path: Path, required: bool
) -> None:
    """BUDGETGUARD_REQUIRE_POSTGRES=1 (or _REDIS=1) turns a skip without a server into an error."""
    (tmp_path / "conftest.py").write_text(PROBE_CONFTEST)
    (tmp_path / "test_probe.py").write_text(PROBE_TEST)
    env = worker_env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # a quicker start; the probe needs none
    for url_env, require_env, _ in SERVERS:
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
    shown = run.stdout + run.stderr
    if required:
        # pytest.fail in a fixture: each test errors at setup; the run fails, nothing skips.
        assert "2 errors" in run.stdout and "skipped" not in run.stdout, shown
    else:
        assert "2 skipped" in run.stdout, shown
    for _, require_env, reason in SERVERS:
        assert (f"{require_env}=1 but {reason}" if required else reason) in run.stdout, shown
