"""Concurrent update_cost calls: exact totals, no lost cent, no thread per write."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

from budgetguard import BudgetManager
from budgetguard.compat.server import BudgetServer

THREADS = 50
CALLS = 20
# $0.0000017 a call: not a binary fraction, so float sums would drift.
USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
RESPONSE = {"object": "chat.completion", "model": "gpt-3.5-turbo", "choices": [], "usage": USAGE}
PER_CALL = Decimal("0.000002")  # 1 token at $0.5/M + 1 at $1.5/M


def _race(budget_manager: BudgetManager, user: str) -> None:
    barrier = threading.Barrier(THREADS)

    def work(_: int) -> None:
        barrier.wait()
        for _ in range(CALLS):
            budget_manager.update_cost(user=user, completion_obj=RESPONSE)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))


def test_fifty_threads_lose_no_cent_locally() -> None:
    """50 threads × 20 update_cost on one user: the total is exact in memory and on disk."""
    budget_manager = BudgetManager("race")
    budget_manager.create_budget(total_budget=100, user="u")
    _race(budget_manager, "u")
    expected = PER_CALL * THREADS * CALLS
    assert budget_manager.get_current_cost("u") == expected == Decimal("0.002")
    assert budget_manager.get_model_cost("u") == {"gpt-3.5-turbo": expected}
    saved = json.loads(Path("race_user_cost.json").read_text(), parse_float=Decimal)
    assert saved["u"]["current_cost"] == expected


def test_update_cost_starts_no_threads() -> None:
    """A write happens in the caller's thread: no thread is started per update."""
    budget_manager = BudgetManager("threads")
    budget_manager.create_budget(total_budget=100, user="u")
    before = threading.active_count()
    for _ in range(20):
        budget_manager.update_cost(user="u", completion_obj=RESPONSE)
    assert threading.active_count() == before


def test_fifty_threads_lose_no_cent_through_the_server(server: BudgetServer) -> None:
    """50 threads of one hosted client, concurrently through the server: the total is exact."""
    budget_manager = BudgetManager("race", client_type="hosted", api_base=server.url)
    budget_manager.create_budget(total_budget=100, user="u")
    barrier = threading.Barrier(THREADS)

    def work(_: int) -> None:
        barrier.wait()
        for _ in range(4):
            budget_manager.update_cost(user="u", completion_obj=RESPONSE)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
    assert budget_manager.get_current_cost("u") == PER_CALL * THREADS * 4
