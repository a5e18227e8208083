"""The Redis ledger with redis-py's own RESP parser as well as hiredis's.

The ``redis`` extra installs hiredis, so redis-py parses replies in C (about
14 % fewer instructions per guarded call). Without it, redis-py falls back to
its Python parser, which reads a cut-short reply differently. The suite runs
with hiredis; this test runs the Redis fault, lost-reply and contract tests
again in a child session where hiredis cannot be imported.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, worker_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# Hide hiredis before redis-py is imported: redis-py then picks its Python parser.
CHILD = """
import sys
sys.modules["hiredis"] = None
import redis.utils
assert not redis.utils.HIREDIS_AVAILABLE, "hiredis was still found"
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_the_ledger_holds_with_redis_pys_python_parser() -> None:
    """Faults, lost replies and the contract pass on Redis without hiredis too."""
    pytest.importorskip("hiredis", reason="hiredis absent: the whole suite runs this parser")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "redis and not settle_delay",
            "tests/ledger/test_faults.py",
            "tests/ledger/test_lost_replies.py",
            "tests/ledger/test_conformance.py",
        ],
        cwd=REPO_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
