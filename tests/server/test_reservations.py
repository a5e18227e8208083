"""Reserve, settle and release over HTTP: atomic against the budget, idempotent on the id."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from budgetguard.server import RunningServer

from .conftest import READ, call

pytestmark = pytest.mark.timeout(120)


def _reserve(service: RunningServer, ident: str, estimate: str = "1", user: str = "alice") -> int:
    body = {"id": ident, "user": user, "estimate": estimate, "model": "gpt-4o"}
    return call(service.url + "/v1/reservations", "POST", body).status


def _held(service: RunningServer) -> Decimal:
    [row] = call(service.url + "/v1/budgets").json()["data"]
    return Decimal(str(row["reserved"]))


def test_reserve_then_settle(service: RunningServer) -> None:
    """A reservation holds its estimate; settling charges the cost and frees the hold."""
    service.guard.set_budget("10", user="alice")
    reply = call(
        service.url + "/v1/reservations",
        "POST",
        {"id": "req-1", "user": "alice", "estimate": "2.5", "model": "gpt-4o"},
    )
    assert reply.status == 200 and reply.json()["data"]["status"] == "open"
    assert _held(service) == Decimal("2.5")
    settled = call(service.url + "/v1/reservations/req-1/settle", "POST", {"cost": "1.25"})
    assert settled.json()["data"] == {"id": "req-1", "status": "settled", "spent": 1.25}
    assert _held(service) == 0 and service.guard.spend("alice") == Decimal("1.25")
    assert service.guard.spend_by_model("alice") == {"gpt-4o": Decimal("1.25")}


def test_retries_are_idempotent(service: RunningServer) -> None:
    """The same reserve or settle sent twice holds and charges once."""
    service.guard.set_budget("10", user="alice")
    assert _reserve(service, "req-2", "3") == 200
    assert _reserve(service, "req-2", "3") == 200
    assert _held(service) == 3
    for _ in range(2):
        reply = call(service.url + "/v1/reservations/req-2/settle", "POST", {"cost": "2"})
        assert reply.json()["data"]["spent"] == 2
    assert service.guard.spend("alice") == 2 and _held(service) == 0
    assert _reserve(service, "req-2") == 409  # an ended id is not reused


def test_release_frees_the_hold(service: RunningServer) -> None:
    """Releasing charges nothing; releasing again answers the same."""
    service.guard.set_budget("10", user="alice")
    assert _reserve(service, "req-3", "4") == 200
    for _ in range(2):
        reply = call(service.url + "/v1/reservations/req-3/release", "POST", {})
        assert reply.json()["data"]["status"] == "released"
    assert service.guard.spend("alice") == 0 and _held(service) == 0


def test_refusal_is_402_with_the_numbers(service: RunningServer) -> None:
    """A reservation that does not fit answers 402 with limit, spent and requested."""
    service.guard.set_budget("1", user="alice")
    reply = call(
        service.url + "/v1/reservations", "POST", {"id": "big", "user": "alice", "estimate": "5"}
    )
    assert reply.status == 402
    refused = reply.json()["refused"]
    assert (refused["limit"], refused["requested"], refused["user"]) == (1, 5, "alice")
    assert _reserve(service, "big", "0.5") == 200  # a refused id may be tried again


def test_unknown_ids_and_read_tokens(service: RunningServer) -> None:
    """Settling an unknown id is 404; a read-only token cannot reserve."""
    reply = call(service.url + "/v1/reservations/nope/settle", "POST", {"cost": "1"})
    assert reply.status == 404
    body = {"id": "r", "user": "alice", "estimate": "1"}
    assert call(service.url + "/v1/reservations", "POST", body, token=READ).status == 403
    assert call(service.url + "/v1/reservations", "POST", {"id": "", "estimate": "1"}).status == 400


def test_concurrent_reservations_admit_exactly_what_fits(service: RunningServer) -> None:
    """40 clients race for a budget that fits 7 holds of $1: exactly 7 get through."""
    service.guard.set_budget("7", user="alice")
    statuses: list[int] = []
    lock = threading.Lock()

    def one(number: int) -> None:
        status = _reserve(service, f"race-{number}", "1")
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) == 7 and statuses.count(402) == 33
    assert _held(service) == 7


def test_same_id_at_once_holds_once(service: RunningServer) -> None:
    """20 concurrent reserves with one id hold the estimate once and all get the same reply."""
    service.guard.set_budget("100", user="alice")
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(_reserve(service, "dup", "2")))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    assert _held(service) == 2
