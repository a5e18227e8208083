"""Faults at every line: interrupts, cancellations, and what the ledger looks like afterwards.

``sys.settrace`` raises ``KeyboardInterrupt`` at the n-th line that runs in
any Python frame (budgetguard, contextlib, redis-py, ...) during one ledger
operation, for every n until the operation runs to its end. After each
interrupt the test does what a caller does after an exception (release the
reservation; repeat the settle with the same id) and checks: totals exact,
nothing held, another connection can write at once, and this one still works.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from budgetguard.ledger import Balance, Hold, Ledger, Reservation

FAR = 10**10
LIMIT = 10**6


class Interrupt:
    """A trace function that raises KeyboardInterrupt at the ``at``-th line event."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.lines = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        """Trace every new frame until the interrupt has fired."""
        return None if self.fired else self.line

    def line(self, frame: FrameType, event: str, arg: Any) -> Any:
        """Count line events; raise at the chosen one."""
        if self.fired:
            return None
        if event == "line":
            self.lines += 1
            if self.lines == self.at:
                self.fired = True
                raise KeyboardInterrupt(f"injected at line event {self.at}")
        return self.line


def interrupted(operation: Callable[[], object], at: int | None) -> Interrupt:
    """Run ``operation`` with an interrupt at line event ``at``; return the tracer."""
    tracer = Interrupt(at)
    sys.settrace(tracer)
    try:
        operation()
    except KeyboardInterrupt:
        assert tracer.fired
    finally:
        sys.settrace(None)
    return tracer


def writes_at_once(other: Ledger, key: str) -> None:
    """Assert that ``other`` (another connection) can write within 5 s: no lock was left held."""
    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(other.add([key], 1) or True))
    thread.start()
    thread.join(5)
    assert done == [True], "another connection could not write: a lock was left held"


#: The holds every reservation of ``fresh(same=True)`` shares, as a guard's
#: calls share their plan's (what a ledger caches for holds it saw is then
#: in play too).
SAME_HOLDS = (Hold("user", LIMIT, 7), Hold("global", None, 7))


def fresh(amount: int = 7, *, same: bool = False) -> Reservation:
    """Return a reservation on the user and global keys with a new id.

    ``same``: with the very holds tuple of every other such reservation.
    """
    if same and amount == 7:
        return Reservation(uuid.uuid4().hex, SAME_HOLDS, FAR)
    return Reservation(
        uuid.uuid4().hex, (Hold("user", LIMIT, amount), Hold("global", None, amount)), FAR
    )


async def background_writes_done(ledger: Ledger) -> None:
    """Wait until the writes callers gave up on have ended (reserves, then their releases).

    A reserve still queued when its caller gave up may land after the
    caller's release, and is released once it has: counting open holds
    cannot tell that one is still on its way, so wait for the writes.
    """
    for _ in range(3000):
        if not ledger.__dict__.get("_background"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"writes still running: {ledger.__dict__.get('_background')}")


@pytest.fixture
def pair(ledger_url: str, make_ledger: Callable[..., Ledger]) -> tuple[Ledger, Ledger]:
    """Return the ledger under test and a second one on the same storage (memory: the same)."""
    if ledger_url == "memory://":
        ledger = other = make_ledger()
    else:
        ledger, other = make_ledger(timeout=5), make_ledger(timeout=5)
    ledger.add(["user"], 100)  # connections open, scripts loaded
    return ledger, other


@pytest.mark.parametrize("same", [False, True], ids=["new-holds", "same-holds"])
def test_interrupt_at_every_line_of_reserve(pair: tuple[Ledger, Ledger], same: bool) -> None:
    """KeyboardInterrupt at any line of reserve, then release: nothing held, totals exact."""
    ledger, other = pair
    if same:  # holds seen before: the path of every call after a plan's first
        warm = fresh(same=True)
        assert ledger.reserve(warm) is None
        assert ledger.release(warm)
    probes = 0
    at = 0
    while True:
        at += 1
        r = fresh(same=same)
        tracer = interrupted(lambda r=r: ledger.reserve(r), at)  # type: ignore[misc]
        if not tracer.fired:
            break
        writes_at_once(other, "probe")
        probes += 1
        assert ledger.release(r) in (True, False)  # what a caller does after an error
        assert ledger.balances(["user", "global"]) == {
            "user": Balance(100, 0),
            "global": Balance(0, 0),
        }, f"after an interrupt at line event {at}"
        assert ledger.open_reservations() == []
    assert at > 10  # the operation really ran line by line
    assert ledger.balances(["probe"])["probe"] == Balance(probes, 0)
    # The same connection still works, and the last (uninterrupted) reserve holds.
    assert ledger.balances(["user"])["user"] == Balance(100, 7)
    ledger.settle(r, 5)
    assert ledger.balances(["user", "global"]) == {"user": Balance(105, 0), "global": Balance(5, 0)}


@pytest.mark.parametrize("same", [False, True], ids=["new-holds", "same-holds"])
def test_interrupt_at_every_line_of_settle(pair: tuple[Ledger, Ledger], same: bool) -> None:
    """KeyboardInterrupt at any line of settle, then settle again: charged exactly once."""
    ledger, other = pair
    at = 0
    charged = 0
    tallies = ("tally",)  # one tuple, as a plan's: memory:// remembers its cells
    while True:
        at += 1
        r = fresh(same=same)
        assert ledger.reserve(r) is None
        tracer = interrupted(lambda r=r: ledger.settle(r, 3, tallies), at)  # type: ignore[misc]
        if tracer.fired:
            writes_at_once(other, "probe")
            ledger.settle(r, 3, tallies)  # the retry: a no-op if the first one counted
        charged += 3
        assert ledger.balances(["user", "global", "tally"]) == {
            "user": Balance(100 + charged, 0),
            "global": Balance(charged, 0),
            "tally": Balance(charged, 0),
        }, f"after an interrupt at line event {at}"
        assert ledger.open_reservations() == []
        if not tracer.fired:
            break
    assert at > 10


def mixed() -> Reservation:
    """Return a reservation of dollars, tokens, a soft hold that misses and a sliding window."""
    return Reservation(
        uuid.uuid4().hex,
        (
            Hold("user", LIMIT, 7),
            Hold("tokens", LIMIT, 50, unit=3),
            Hold("soft", 0, 1, unit=4, over="soft:over"),
            Hold("window", LIMIT, 2, unit=1, prior="user", weight=500_000),
        ),
        FAR,
    )


def test_interrupt_at_every_line_of_a_mixed_reserve(pair: tuple[Ledger, Ledger]) -> None:
    """An interrupt at any line of a reserve with a soft miss: holds and miss count go together."""
    ledger, other = pair
    keys = ["user", "tokens", "soft", "window"]
    at = 0
    took = 0  # reserves that held (their release dropped something)
    while True:
        at += 1
        r = mixed()
        tracer = interrupted(lambda r=r: ledger.reserve(r), at)  # type: ignore[misc]
        if not tracer.fired:
            break
        writes_at_once(other, "probe")
        took += ledger.release(r) is True
        assert ledger.balances([*keys, "soft:over"]) == {
            "user": Balance(100, 0),
            "tokens": Balance(),
            "soft": Balance(),
            "window": Balance(),
            "soft:over": Balance(took, 0),
        }, f"after an interrupt at line event {at}"
        assert ledger.open_reservations() == []
    assert at > 10
    assert ledger.open_reservations() == [r]
    assert ledger.settle(r, [9, 2, 0, 60, 1]) is True
    assert ledger.balances([*keys, "soft:over"]) == {
        "user": Balance(109, 0),
        "tokens": Balance(60, 0),
        "soft": Balance(1, 0),
        "window": Balance(2, 0),
        "soft:over": Balance(took + 1, 0),
    }


def test_interrupt_at_every_line_of_a_settle_by_unit(pair: tuple[Ledger, Ledger]) -> None:
    """An interrupt at any line of a settle per unit, then the retry: each key charged once."""
    ledger, other = pair
    at = 0
    n = 0
    amounts = (3, 1, 0, 40, 1)
    while True:
        at += 1
        r = mixed()
        assert ledger.reserve(r) is None
        tracer = interrupted(lambda r=r: ledger.settle(r, amounts, ("tally",)), at)  # type: ignore[misc]
        if tracer.fired:
            writes_at_once(other, "probe")
            ledger.settle(r, amounts, ("tally",))  # the retry: a no-op if the first one counted
        n += 1
        assert ledger.balances(["user", "tokens", "soft", "window", "tally"]) == {
            "user": Balance(100 + 3 * n, 0),
            "tokens": Balance(40 * n, 0),
            "soft": Balance(n, 0),
            "window": Balance(n, 0),
            "tally": Balance(3 * n, 0),
        }, f"after an interrupt at line event {at}"
        assert ledger.open_reservations() == []
        if not tracer.fired:
            break
    assert at > 10


def test_interrupt_at_every_line_of_add(pair: tuple[Ledger, Ledger]) -> None:
    """KeyboardInterrupt at any line of add with an op id, then add again: charged once."""
    ledger, other = pair
    at = 0
    while True:
        at += 1
        op = uuid.uuid4().hex
        tracer = interrupted(lambda op=op: ledger.add(["user"], 2, op_id=op), at)  # type: ignore[misc]
        if tracer.fired:
            writes_at_once(other, "probe")
        ledger.add(["user"], 2, op_id=op)
        assert ledger.balances(["user"])["user"] == Balance(100 + 2 * at, 0)
        if not tracer.fired:
            break


async def test_cancelled_reserves_leave_no_hold(ledger: Ledger) -> None:
    """Callers cancelled at any point of areserve (and again in arelease) leave nothing held."""
    for delay in (0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01):
        rs = [fresh() for _ in range(20)]

        async def call(r: Reservation) -> None:
            try:
                await ledger.areserve(r)
                await asyncio.sleep(0)
            finally:
                await ledger.arelease(r)

        tasks = [asyncio.ensure_future(call(r)) for r in rs]
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()  # a second cancel, during the release
        await asyncio.gather(*tasks, return_exceptions=True)
        await background_writes_done(ledger)
        assert ledger.open_reservations() == [], f"holds left with delay {delay}"
        assert ledger.balances(["user"])["user"].reserved == 0


async def test_wait_for_timeout_on_areserve_leaves_no_hold(ledger: Ledger) -> None:
    """A wait_for timeout while areserve runs releases the reserve once it completes."""
    for _ in range(20):
        r = fresh()
        try:
            await asyncio.wait_for(ledger.areserve(r), timeout=0.0001)
        except asyncio.TimeoutError:
            pass
        else:
            await ledger.arelease(r)
    await background_writes_done(ledger)
    assert ledger.open_reservations() == []
    assert ledger.balances(["user"])["user"] == Balance(0, 0)


async def test_cancelled_settle_still_charges(ledger: Ledger) -> None:
    """A settle whose caller is cancelled still charges, once."""
    rs = [fresh() for _ in range(10)]
    for r in rs:
        assert await ledger.areserve(r) is None
    tasks = [asyncio.ensure_future(ledger.asettle(r, 4)) for r in rs]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(200):
        if ledger.balances(["user"])["user"] == Balance(40, 0):
            break
        await asyncio.sleep(0.01)
    assert ledger.balances(["user"])["user"] == Balance(40, 0)
    for r in rs:
        assert await ledger.asettle(r, 4) is False
