"""Lost replies on Redis: every money-moving write counts exactly once.

A TCP proxy on loopback sits between the ledger and ``redis-server``. Armed,
it forwards the next request, lets the server run it, then swallows the
reply and cuts the client's connection: the ledger cannot know whether its
script ran. The test checks that the write counted once (no hidden retry ran
it twice), that the ledger said ``StorageError``, and that a retry with the
same id changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from budgetguard.ledger import Balance, Hold, Ledger, Reservation, ledger_from_url

from ._proxy import FAR, MODES, DroppingProxy, LostReplies, fresh, lose, lose_async

pytestmark = pytest.mark.redis


@pytest.fixture
def proxy(redis_url: str) -> Iterator[DroppingProxy]:
    """Return a proxy in front of the test's Redis."""
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    running = DroppingProxy(parts.hostname, parts.port)
    yield running
    running.close()


@pytest.fixture
def through(proxy: DroppingProxy, redis_url: str) -> Iterator[Ledger]:
    """Return a ledger that talks to Redis through the proxy."""
    path = urlsplit(redis_url).path
    ledger = ledger_from_url(f"redis://127.0.0.1:{proxy.port}{path}?timeout=5")
    # Connected and every script loaded: the next request is the one to lose
    # (a first EVALSHA would get NOSCRIPT, which runs nothing).
    warm = Reservation("warm", (Hold("warm", None, 1),), FAR)
    ledger.reserve(warm)
    ledger.settle(warm, 0)
    ledger.release(warm)
    ledger.add(["warm"], 0, op_id="warm")
    ledger.balances(["warm"])
    ledger.open_reservations()
    yield ledger
    ledger.close()


@pytest.fixture
def direct(redis_url: str) -> Iterator[Ledger]:
    """Return a ledger on the same Redis without the proxy, to read the truth."""
    ledger = ledger_from_url(redis_url)
    yield ledger
    ledger.close()


@pytest.mark.parametrize("mode", MODES)
def test_lost_reserve_reply_holds_nothing(
    mode: str, proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """A reserve whose reply was lost is released; its retry is refused and changes nothing."""
    r = fresh()
    if mode == "sync":
        error = lose(proxy, lambda: through.reserve(r))
    else:
        error = lose_async(proxy, through, lambda: through.areserve(r), close=True)
    assert "same id" in str(error)
    assert direct.balances(["user", "global"]) == {"user": Balance(), "global": Balance()}
    assert direct.open_reservations() == []
    with pytest.raises(ValueError, match="used before"):
        through.reserve(r)
    assert direct.balances(["user"])["user"] == Balance()


class TestRedisLostReplies(LostReplies):
    """The lost-reply checks of every shared ledger, on Redis."""

    close_async = True


def test_ledger_works_after_a_lost_reply(
    proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """The connection cut by a lost reply is replaced: the next operations answer correctly."""
    lose(proxy, lambda: through.add(["user"], 1, op_id="x"))
    for i in range(5):
        assert through.add(["user"], 1, op_id=f"y{i}") is True
    assert through.balances(["user"])["user"] == Balance(6, 0)


def test_charge_outside_a_call_counts_once_when_its_reply_is_lost(
    proxy: DroppingProxy, through: Ledger, direct: Ledger
) -> None:
    """guard.charge() outside a call whose reply is lost retries with its id: $1.00, not $2.00."""
    from decimal import Decimal

    from budgetguard import BudgetGuard

    guard = BudgetGuard(through, metrics=False)
    guard.set_budget("10", user="alice")
    guard.spend("alice")  # every script the charge needs is loaded: lose the charge itself
    proxy.arm()
    assert guard.charge("1.00", user="alice") == Decimal("1.00")
    assert proxy.dropped == 1
    truth = BudgetGuard(direct, metrics=False)
    assert truth.spend("alice") == Decimal("1.00")


def test_budget_manager_update_cost_counts_once_when_its_reply_is_lost(
    proxy: DroppingProxy, through: Ledger, direct: Ledger, tmp_path: Path
) -> None:
    """BudgetManager.update_cost (and the service's /update_cost, its store) charges once."""
    from budgetguard import BudgetGuard, BudgetManager

    manager = BudgetManager(
        "lost", guard=BudgetGuard(through, metrics=False), path=tmp_path / "a.json"
    )
    manager.create_budget(10, "alice")
    manager.create_budget(10, "bob")
    call = {"model": "gpt-4o", "input_text": "hello there", "output_text": "general kenobi"}
    manager.update_cost(user="bob", **call)  # every script loaded; the cost of one update
    once = manager.get_current_cost("bob")
    assert once > 0
    proxy.arm()
    manager.update_cost(user="alice", **call)
    assert proxy.dropped == 1
    truth = BudgetManager(
        "lost", guard=BudgetGuard(direct, metrics=False), path=tmp_path / "b.json"
    )
    assert truth.get_current_cost("alice") == once
