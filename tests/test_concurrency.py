"""Check and charge are one step: racing callers never overspend a budget."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope, submit_in_context

CALLERS = 100


def race_threads(guard: BudgetGuard, users: list[str | None]) -> tuple[int, int]:
    """Run one guarded call per user in its own thread, all at once; count runs and refusals."""
    barrier = threading.Barrier(len(users))
    ran: list[str | None] = []

    @guard.budgeted(user=lambda who: who, estimate="0.01", cost=lambda _: "0.01")
    def call(who: str | None) -> None:
        ran.append(who)
        time.sleep(0.005)  # hold the reservation while the others try

    refused = 0
    lock = threading.Lock()

    def worker(who: str | None) -> None:
        nonlocal refused
        barrier.wait()
        try:
            call(who)
        except BudgetExceededError:
            with lock:
                refused += 1

    threads = [threading.Thread(target=worker, args=(who,)) for who in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(ran), refused


def test_hundred_threads_against_a_user_budget(guard: BudgetGuard) -> None:
    """100 threads, estimate 0.01 each, budget 0.25: exactly 25 run and 0.25 is spent."""
    guard.set_budget("0.25", user="alice")
    ran, refused = race_threads(guard, ["alice"] * CALLERS)
    assert (ran, refused) == (25, 75)
    assert guard.spend("alice") == Decimal("0.25")
    assert guard.remaining("alice") == Decimal(0)
    assert guard.ledger.open_reservations() == []


def test_hundred_threads_mixed_users_against_the_global_budget(guard: BudgetGuard) -> None:
    """100 threads of 10 users against a 0.25 global budget: exactly 25 run in total."""
    guard.set_budget("0.25")
    users: list[str | None] = [f"user{i % 10}" for i in range(CALLERS)]
    ran, refused = race_threads(guard, users)
    assert (ran, refused) == (25, 75)
    assert guard.spend() == Decimal("0.25")
    assert sum(guard.spend(f"user{i}") for i in range(10)) == Decimal("0.25")
    assert guard.ledger.open_reservations() == []


def test_hundred_threads_against_user_default_and_global_budgets(guard: BudgetGuard) -> None:
    """Per-user default budgets and the global one all hold under a race."""
    guard.set_default_budget("0.03")
    guard.set_budget("0.25")
    users: list[str | None] = [f"user{i % 20}" for i in range(CALLERS)]
    ran, _ = race_threads(guard, users)
    assert ran <= 25
    assert guard.spend() == Decimal(ran) / 100
    for i in range(20):
        assert guard.spend(f"user{i}") <= Decimal("0.03")
    assert ran == 25  # 20 users x 3 calls = 60 fit the users, 25 fit the total


async def test_hundred_tasks_against_a_user_budget(guard: BudgetGuard) -> None:
    """100 asyncio tasks, estimate 0.01 each, budget 0.25: exactly 25 run, 0.25 spent."""
    guard.set_budget("0.25", user="alice")
    ran: list[int] = []

    @guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.01")
    async def call(i: int) -> int:
        ran.append(i)
        await asyncio.sleep(0.01)  # every reservation is held at once
        return i

    results = await asyncio.gather(*(call(i) for i in range(CALLERS)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(ran) == 25
    assert len(refused) == 75
    assert guard.spend("alice") == Decimal("0.25")
    assert guard.ledger.open_reservations() == []


async def test_hundred_tasks_mixed_users_against_the_global_budget(guard: BudgetGuard) -> None:
    """100 tasks of 10 users in their own scopes against a 0.25 global budget: 25 run."""
    guard.set_budget("0.25")
    ran: list[str] = []

    @guard.budgeted(estimate="0.01", cost=lambda _: "0.01")
    async def call() -> None:
        await asyncio.sleep(0.01)

    async def as_user(i: int) -> None:
        async with budget_scope(f"user{i % 10}"):
            await call()
            ran.append(f"user{i % 10}")

    results = await asyncio.gather(*(as_user(i) for i in range(CALLERS)), return_exceptions=True)
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 75
    assert len(ran) == 25
    assert guard.spend() == Decimal("0.25")
    assert sum(guard.spend(f"user{i}") for i in range(10)) == Decimal("0.25")


def test_hundred_threads_share_one_scope_cap(guard: BudgetGuard) -> None:
    """Calls carried into a thread pool share their block's cap: exactly 25 of 100 run."""

    @guard.budgeted(estimate="0.01", cost=lambda _: "0.01")
    def call() -> None:
        time.sleep(0.005)

    outcomes: list[str] = []
    with ThreadPoolExecutor(max_workers=32) as pool, budget_scope("alice", limit="0.25"):
        futures = [submit_in_context(pool, call) for _ in range(CALLERS)]
        for future in futures:
            try:
                future.result()
                outcomes.append("ran")
            except BudgetExceededError:
                outcomes.append("refused")
    assert outcomes.count("ran") == 25
    assert guard.spend("alice") == Decimal("0.25")
