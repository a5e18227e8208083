"""The memory ledger's hot path: holds and tallies seen before, looked up once.

A guard's calls reuse one holds tuple and one tallies tuple per plan, so
``memory://`` remembers their cells. These tests hold that what it
remembers never outlives what it stands for: a cleared key, a limit
reached, a tuple of another kind.
"""

from __future__ import annotations

import random
import uuid

import pytest

from budgetguard.ledger import Balance, Hold, Refusal, Reservation
from budgetguard.ledger.memory import MemoryLedger

from .test_faults import interrupted

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


def test_the_hot_path_and_the_general_path_keep_the_same_balances() -> None:
    """Random reserves, settles, releases, adds, reads and clears: hot and general agree."""
    rng = random.Random(20261202)
    plans = [
        (Hold("user", 400, 30), Hold("global", None, 30)),
        (Hold("bob", 90, 20), Hold("global", 10_000, 20)),
        (Hold("solo", 150, 25),),
        (Hold("t|", 500, 40),),  # a key other calls tally: held here
        (Hold("t|x", 300, 30), Hold("global", None, 30)),
        (Hold("user", 400, 30), Hold("t|u=bob", 200, 5), Hold("a", 1, 0)),  # three: general
    ]
    tallies = [("t|", "t|u=alice", "d|m="), ("t|", "t|u=bob"), (), ("user", "t|x")]
    keys = sorted({h.key for holds in plans for h in holds} | {k for t in tallies for k in t})
    now = [FAR - 10_000.0]
    hot, general = MemoryLedger(clock=lambda: now[0]), MemoryLedger(clock=lambda: now[0])
    opened: list[Reservation] = []
    for step in range(4000):
        roll = rng.random()
        if roll < 0.35 or not opened:
            holds = rng.choice(plans if step > 100 else plans[:3])  # tallies deferred first
            r = Reservation(f"r{step}", holds, now[0] + rng.choice((5, 50, 500)))
            copy = Reservation(r.id, tuple(list(holds)), r.expires_at)  # never these holds
            outcome = hot.reserve(r)
            assert outcome == general.reserve(copy), f"step {step}"
            if outcome is None:
                opened.append(r)
        elif roll < 0.65:
            r = opened.pop(rng.randrange(len(opened)))
            amount, charged = rng.randrange(0, 60), rng.choice(tallies)
            copy = Reservation(r.id, tuple(list(r.holds)), r.expires_at)
            done = hot.settle(r, amount, charged)
            assert done == general.settle(copy, amount, list(charged)), f"step {step}"
            if rng.random() < 0.1:  # a repeat changes nothing
                assert not hot.settle(r, amount, charged)
                assert not general.settle(copy, amount, list(charged))
        elif roll < 0.72:
            r = opened.pop(rng.randrange(len(opened)))
            assert hot.release(r) == general.release(r), f"step {step}"
        elif roll < 0.80:
            chosen, amount = rng.sample(keys, 2), rng.randrange(1, 30)
            assert hot.add(chosen, amount) == general.add(chosen, amount)
        elif roll < 0.86:
            prefix = rng.choice(("", "t|", "u", "glob"))
            assert hot.scan(prefix) == general.scan(prefix), f"step {step}"
        elif roll < 0.90:
            chosen = rng.sample(keys, 2)
            hot.clear(chosen)
            general.clear(chosen)
        elif roll < 0.94:
            now[0] += rng.choice((1, 20, 200))  # some holds expire
        else:
            r = opened[rng.randrange(len(opened))]
            with pytest.raises(ValueError, match="used before"):
                hot.reserve(r)
        if rng.random() < 0.1:  # a read folds what is owed: not after every step
            assert hot.balances(keys) == general.balances(keys), f"step {step}"
    assert hot.balances(keys) == general.balances(keys)
    assert hot._owing and hot._hot  # the hot path really ran
    assert general.open_reservations() == hot.open_reservations()


def test_a_reserve_on_a_key_tallied_hot_sees_what_the_tallies_owe() -> None:
    """Deferred tally charges count against a hold on that key before it is checked."""
    ledger = MemoryLedger()
    holds = (Hold("user", 10_000, 10),)
    for _ in range(4):  # hot after the first: the tally "t|" is owed, not written
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 5, ("t|",))
    held = (Hold("t|", 35, 10),)  # 20 spent: 10 more fits
    for _ in range(2):  # twice: holds that fit are remembered unless they read an owed key
        r = reservation(held)
        assert ledger.reserve(r) is None
        assert ledger.release(r)
    for _ in range(2):  # 10 more owed
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 5, ("t|",))
    assert ledger.reserve(reservation(held)) == Refusal(0, "t|", 35, 30, 0, 10)
    assert ledger.balances(["t|", "user"]) == {"t|": Balance(30, 0), "user": Balance(30, 0)}


def test_clearing_an_owed_key_that_an_open_reservation_holds_forgets_what_it_owed() -> None:
    """clear sets the spend to 0 with the owed charges in it, and the hold stays."""
    ledger = MemoryLedger()
    holding = reservation((Hold("t|", None, 4), Hold("a", None, 4), Hold("b", None, 4)))
    assert ledger.reserve(holding) is None  # three holds: the general path
    holds = (Hold("user", None, 10),)
    for _ in range(3):
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 5, ("t|",))  # 15 owed to "t|"
    ledger.clear(["t|"])
    assert ledger.balances(["t|"])["t|"] == Balance(0, 4)
    assert ledger.settle(holding, 1)
    assert ledger.balances(["t|", "user"]) == {"t|": Balance(1, 0), "user": Balance(15, 0)}


def test_a_key_held_hot_is_never_a_deferred_tally() -> None:
    """Tallies naming a key held hot charge it at once: the next hot reserve sees it."""
    ledger = MemoryLedger()
    limited = (Hold("shared", 30, 10),)
    for _ in range(2):  # these holds are hot now
        r = reservation(limited)
        assert ledger.reserve(r) is None
        assert ledger.release(r)
    other = (Hold("user", None, 1),)
    for _ in range(3):
        r = reservation(other)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 7, ("shared",))  # 21 spent on "shared"
    assert ledger.reserve(reservation(limited)) == Refusal(0, "shared", 30, 21, 0, 10)


def test_past_4096_tallies_tuples_the_deferred_sums_are_folded_and_forgotten() -> None:
    """Many tallies tuples: bounded, every charge kept, no old memo defers a key held since."""
    ledger = MemoryLedger()
    mine, tallies = (Hold("user", None, 1),), ("x",)
    for _ in range(2):  # hot, and "x" is deferred with these holds
        r = reservation(mine)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 1, tallies)
    waiting = reservation(mine)
    assert ledger.reserve(waiting) is None  # open across what follows
    others = (Hold("other", None, 1), Hold("global", None, 1))
    for i in range(4200):  # one tuple each: the memory of them is emptied once full
        r = reservation(others)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 2, ("t|", f"t|u={i}"))
    assert len(ledger._owing) < 4096
    assert ledger.balances(["t|", "t|u=0", "t|u=4199", "x"]) == {
        "t|": Balance(8400, 0),
        "t|u=0": Balance(2, 0),
        "t|u=4199": Balance(2, 0),
        "x": Balance(2, 0),
    }
    held = (Hold("x", 12, 5),)  # "x" is held hot now
    for _ in range(2):
        r = reservation(held)
        assert ledger.reserve(r) is None
        assert ledger.release(r)
    assert ledger.settle(waiting, 8, tallies)  # on the cell: the old memo is forgotten
    assert ledger.reserve(reservation(held)) == Refusal(0, "x", 12, 10, 0, 5)


def owing_ledger() -> tuple[MemoryLedger, tuple[Hold, ...], tuple[str, ...]]:
    """Return a ledger whose hot settles owe 12 to each of three tallies."""
    ledger = MemoryLedger()
    holds, tallies = (Hold("user", None, 3), Hold("global", None, 3)), ("t|", "t|u=a", "d|m=")
    for _ in range(3):
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 4, tallies)
    return ledger, holds, tallies


KEYS = ["user", "global", "t|", "t|u=a", "d|m="]
NEW = ("t|", "t|u=b")  # tallies not settled with owing_ledger's holds before


def test_an_interrupt_at_any_line_of_a_fold_leaves_every_tally_exact() -> None:
    """KeyboardInterrupt at any line of the read that folds: counted once, never half."""
    at = 0
    while True:
        at += 1
        ledger, holds, tallies = owing_ledger()
        tracer = interrupted(lambda ledger=ledger: ledger.balances(KEYS), at)  # type: ignore[misc]
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 4, tallies)  # owed again, after the fold or not
        assert ledger.balances(KEYS) == dict.fromkeys(KEYS, Balance(16, 0)), f"at line {at}"
        if not tracer.fired:
            break
    assert at > 5


def test_an_interrupt_at_any_line_of_a_clear_forgets_the_owed_spend_or_nothing() -> None:
    """KeyboardInterrupt at any line of clear: the key is 0 or all it was; the others exact."""
    at = 0
    while True:
        at += 1
        ledger, holds, tallies = owing_ledger()
        tracer = interrupted(lambda ledger=ledger: ledger.clear(["t|"]), at)  # type: ignore[misc]
        left = ledger.balances(["t|"])["t|"]
        assert left in (Balance(0, 0), Balance(12, 0)), f"at line {at}"
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 4, tallies)
        expected = {**dict.fromkeys(KEYS, Balance(16, 0)), "t|": Balance(left.spent + 4, 0)}
        assert ledger.balances(KEYS) == expected, f"at line {at}"
        if not tracer.fired:
            break
    assert at > 5


def test_an_interrupt_at_any_line_of_a_settle_with_new_tallies_charges_once() -> None:
    """KeyboardInterrupt at any line of a hot settle that first remembers its tallies."""
    at = 0
    while True:
        at += 1
        ledger, holds, _ = owing_ledger()
        r = reservation(holds)
        assert ledger.reserve(r) is None
        tracer = interrupted(lambda r=r, ledger=ledger: ledger.settle(r, 5, NEW), at)  # type: ignore[misc]
        if tracer.fired:
            ledger.settle(r, 5, NEW)  # the retry: a no-op if the first one counted
        assert not ledger.settle(r, 5, NEW)
        again = reservation(holds)
        assert ledger.reserve(again) is None
        assert ledger.settle(again, 1, NEW)
        assert ledger.balances([*KEYS, "t|u=b"]) == {
            "user": Balance(18, 0),
            "global": Balance(18, 0),
            "t|": Balance(18, 0),
            "t|u=a": Balance(12, 0),
            "d|m=": Balance(12, 0),
            "t|u=b": Balance(6, 0),
        }, f"at line {at}"
        assert ledger.open_reservations() == []
        if not tracer.fired:
            break
    assert at > 10


def test_a_reservation_without_holds_tuple_gets_the_checks_words() -> None:
    """holds=None is refused by check_reservation, not by the hot path's unpacking."""
    with pytest.raises((TypeError, ValueError)) as raised:
        MemoryLedger().reserve(Reservation("r", None, FAR))  # type: ignore[arg-type]
    assert "unpack" not in str(raised.value)


@pytest.mark.parametrize(
    ("rid", "expires_at", "words"),
    [
        ("", FAR, "reservation id"),
        (7, FAR, "reservation id"),
        ("r", float("inf"), "expiry"),
        ("r", float("nan"), "expiry"),
        ("r", True, "expiry"),
        ("r", "soon", "expiry"),
    ],
)
def test_a_bad_reservation_on_holds_seen_before_is_refused_with_the_checks_words(
    rid: object, expires_at: object, words: str
) -> None:
    """A bad id or expiry with hot holds: check_reservation's ValueError, nothing held."""
    ledger = MemoryLedger()
    holds = (Hold("user", 100, 30), Hold("global", None, 30))
    for _ in range(2):  # hot now
        r = reservation(holds)
        assert ledger.reserve(r) is None
        assert ledger.release(r)
    with pytest.raises(ValueError, match=words):
        ledger.reserve(Reservation(rid, holds, expires_at))  # type: ignore[arg-type]
    assert ledger.balances(["user", "global"]) == dict.fromkeys(["user", "global"], Balance())
    assert ledger.open_reservations() == []
