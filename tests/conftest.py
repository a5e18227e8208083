"""Shared fixtures: a fresh default guard per test, a private guard, a controlled clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from budgetguard import BudgetGuard, _default

# The suite is hermetic: no background tokenizer download (the test of that
# download turns it back on with a fake network).
os.environ.setdefault("BUDGETGUARD_TOKENIZER_DOWNLOAD", "0")


class Clock:
    """A clock the test moves by hand: seconds since the epoch, as ``time.time``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        """Move the clock to an aware ``datetime``."""
        self.now = when.timestamp()

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


@pytest.fixture(autouse=True)
def _fresh_default_guard() -> Iterator[None]:
    """Give every test its own default guard (no metrics) and close it afterwards."""
    previous = _default._guard
    _default._set(BudgetGuard(metrics=False))
    yield
    guard = _default._guard
    _default._set(previous)
    if guard is not None:
        guard.close()


@pytest.fixture
def guard() -> Iterator[BudgetGuard]:
    """Return a private guard on a memory ledger, without metrics."""
    made = BudgetGuard(metrics=False)
    yield made
    made.close()


@pytest.fixture
def clock() -> Clock:
    """Return a controlled clock set to 2024-01-15 12:00 UTC."""
    return Clock(datetime(2024, 1, 15, 12, tzinfo=timezone.utc).timestamp())


@pytest.fixture
def clocked_guard(clock: Clock) -> Iterator[BudgetGuard]:
    """Return a private guard (no metrics) whose clock and ledger follow ``clock``."""
    made = BudgetGuard(metrics=False, clock=clock)
    yield made
    made.close()
