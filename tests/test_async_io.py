"""Async guarded calls never do the ledger's blocking work on the event loop's thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from budgetguard import BudgetGuard
from budgetguard.ledger.base import Balance, BudgetChanges
from budgetguard.ledger.memory import MemoryLedger


class WatchedLedger(MemoryLedger):
    """A memory ledger that notes the threads its synchronous reads run on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, set[int]] = {"budget_changes": set(), "balances": set()}

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        self.threads["budget_changes"].add(threading.get_ident())
        return super().budget_changes(since)

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        self.threads["balances"].add(threading.get_ident())
        return super().balances(keys)


async def test_budget_refresh_and_alerts_run_off_the_loop() -> None:
    """Re-reading budget definitions and checking alert thresholds happen in worker threads."""
    ledger = WatchedLedger()
    guard = BudgetGuard(ledger, budget_cache_ttl=0, alert_thresholds=[0.5], metrics=False)
    guard.set_budget("1", user="alice")
    loop_thread = threading.get_ident()
    ledger.threads["budget_changes"].clear()

    @guard.budgeted(user="alice", cost=lambda result: "0.6")
    async def call() -> None:
        return None

    await call()
    assert ledger.threads["budget_changes"], "the budgets were re-read"
    assert loop_thread not in ledger.threads["budget_changes"]
    assert ledger.threads["balances"], "the alert threshold was checked"
    assert loop_thread not in ledger.threads["balances"]
