"""Alerts on a ledger shared by several processes: each one is sent once, by one of them."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from .conftest import python_child

# Each process: a guard on the shared ledger with the same budgets and
# thresholds, waiting for the go file, then 25 charges of one cent for alice.
CHILD = """
import sys, time
from pathlib import Path
import budgetguard as bg
url, go = sys.argv[1], Path(sys.argv[2])
guard = bg.BudgetGuard(
    url, metrics=False, alert_thresholds=["0.5", "0.9"],
    on_threshold=lambda crossing: print(crossing.id, flush=True),
)
guard.set_budget("1", period="daily")
guard.set_budget("0.5", user="alice", period="daily")
while not go.exists():
    time.sleep(0.005)
for _ in range(25):
    guard.charge("0.01", user="alice")
guard.close()
"""


@pytest.mark.slow
@pytest.mark.shared_only
def test_each_alert_is_sent_once_across_processes(ledger_url: str, tmp_path: Path) -> None:
    """4 processes spend $1 of one ledger together: each threshold of each budget fires once."""
    go = tmp_path / "go"
    children = [python_child("-c", CHILD, ledger_url, str(go)) for _ in range(4)]
    time.sleep(0.5)  # let every child import and connect before the start
    go.touch()
    fired: Counter[tuple[str, str]] = Counter()
    windows = set()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        for alert in out.split():
            budget, window, threshold = alert.split("|")
            fired[budget, threshold] += 1
            windows.add(window)
    # A process that counted only its own crossings would send each of these up to 4 times.
    assert fired == {
        (budget, threshold): 1
        for budget in ("global", "user:alice")
        for threshold in ("0.5", "0.9")
    }
    assert len(windows) == 1 and windows <= {today(), today(-1)}


def today(days: int = 0) -> str:
    """Return the UTC date ``days`` from now, as daily windows name it."""
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%d")
