"""The memory ledger's hot path: holds and tallies seen before, looked up once.

A guard's calls reuse one holds tuple and one tallies tuple per plan, so
``memory://`` remembers their cells. These tests hold that what it
remembers never outlives what it stands for: a cleared key, a limit
reached, a tuple of another kind.
"""

from __future__ import annotations

import uuid

from budgetguard.ledger import Balance, Hold, Refusal, Reservation
from budgetguard.ledger.memory import MemoryLedger

FAR = 4_000_000_000.0
TALLIES = ("t|", "t|u=alice")


def reservation(holds: tuple[Hold, ...]) -> Reservation:
    return Reservation(uuid.uuid4().hex, holds, FAR)


def test_holds_seen_before_are_charged_and_refused_as_new_ones_are() -> None:
    ledger = MemoryLedger()
    holds = (Hold("user", 100, 30), Hold("global", None, 30))
    for _ in range(3):  # the first reserve looks the cells up, the others reuse them
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 20, TALLIES)
    refused = ledger.reserve(reservation(holds))  # 60 spent + 30 fits 100; one more does not
    assert refused is None
    assert ledger.reserve(reservation(holds)) == Refusal(0, "user", 100, 60, 30, 30)
    assert ledger.balances(["user", "global", "t|", "t|u=alice"]) == {
        "user": Balance(60, 30),
        "global": Balance(60, 30),
        "t|": Balance(60, 0),
        "t|u=alice": Balance(60, 0),
    }


def test_a_cleared_key_is_not_charged_through_a_remembered_cell() -> None:
    ledger = MemoryLedger()
    holds = (Hold("user", 100, 30),)
    r = reservation(holds)
    assert ledger.reserve(r) is None
    assert ledger.settle(r, 30, TALLIES)
    ledger.clear(["user", "t|"])  # drops both cells: nothing is held on them
    r = reservation(holds)
    assert ledger.reserve(r) is None  # room again: the new cell, not the dropped one
    assert ledger.balances(["user"])["user"] == Balance(0, 30)
    assert ledger.settle(r, 10, TALLIES)
    assert ledger.balances(["user", "t|", "t|u=alice"]) == {
        "user": Balance(10, 0),
        "t|": Balance(10, 0),
        "t|u=alice": Balance(40, 0),
    }


def test_a_settle_seen_before_is_counted_once_and_a_release_drops_its_hold() -> None:
    ledger = MemoryLedger()
    holds = (Hold("user", 1000, 5), Hold("global", 1000, 5))
    first = reservation(holds)
    assert ledger.reserve(first) is None
    assert ledger.settle(first, 4, TALLIES)
    second = reservation(holds)
    assert ledger.reserve(second) is None
    assert ledger.settle(second, 4, TALLIES)
    assert not ledger.settle(second, 4, TALLIES)  # the same id again: counted once
    third = reservation(holds)
    assert ledger.reserve(third) is None
    assert ledger.release(third)
    assert ledger.balances(["user", "global", "t|"]) == {
        "user": Balance(8, 0),
        "global": Balance(8, 0),
        "t|": Balance(8, 0),
    }
    assert ledger.open_reservations() == []


def test_holds_of_other_kinds_and_tallies_that_overlap_take_the_general_path() -> None:
    ledger = MemoryLedger()
    soft = (Hold("soft", 0, 1, unit=4, over="soft:over"),)  # a soft hold: counted, not refused
    for _ in range(2):
        assert ledger.reserve(reservation(soft)) is None
    assert ledger.balances(["soft:over"])["soft:over"] == Balance(2, 0)
    twice = (Hold("user", 100, 10), Hold("user", 100, 10))  # one key held twice
    for _ in range(2):
        r = reservation(twice)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 3, ("user",))  # a tally on a held key: charged twice over
    assert ledger.balances(["user"])["user"] == Balance(18, 0)
