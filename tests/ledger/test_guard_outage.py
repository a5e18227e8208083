"""A guard on Redis through an outage: the configured policy, then recovery without a restart."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgetguard import BudgetGuard, StorageError

from .conftest import RedisServer


def own_server(redis_server: RedisServer | None) -> RedisServer:
    """Return this session's own redis-server, or skip: an outage needs one we can stop."""
    if redis_server is None:
        pytest.skip("the outage tests stop the server, so they need their own redis-server")
    return redis_server


@pytest.mark.slow
def test_fail_closed_refuses_during_an_outage_and_recovers(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    """With Redis down the call is refused with StorageError and never runs; back up, it runs."""
    server = own_server(redis_server)
    guard = BudgetGuard(redis_url, metrics=False, budget_cache_ttl=0)
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guard.budgeted(user="alice", estimate="0.1", cost=lambda result: "0.1")(
        lambda: ran.append(1)
    )
    call()
    server.stop()
    try:
        with pytest.raises(StorageError):
            call()
        assert ran == [1]
    finally:
        server.start()
    # The data died with the server (it keeps nothing on disk): set the budget again.
    guard.set_budget("1", user="alice")
    call()
    assert ran == [1, 1]
    assert guard.spend("alice") == Decimal("0.1")


@pytest.mark.slow
def test_fail_open_runs_during_an_outage_and_recovers(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    """With Redis down and fail_open the call runs unchecked; back up, charging resumes."""
    server = own_server(redis_server)
    guard = BudgetGuard(redis_url, metrics=False, on_storage_error="fail_open")
    guard.set_budget("1", user="alice")
    ran: list[int] = []
    call = guard.budgeted(user="alice", estimate="0.1", cost=lambda result: "0.1")(
        lambda: ran.append(1)
    )
    server.stop()
    try:
        call()
        assert ran == [1]
    finally:
        server.start()
    guard.set_budget("1", user="alice")
    call()
    assert ran == [1, 1]
    assert guard.spend("alice") == Decimal("0.1")
