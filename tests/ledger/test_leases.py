"""Budget leases over every shared ledger: the contract, the bound, crashes, faults, fork."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from budgetguard import BudgetExceededError, BudgetGuard
from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.ledger import (
    Balance,
    Hold,
    LeasedLedger,
    Ledger,
    Refusal,
    Reservation,
    leased,
    ledger_from_url,
)

from ._proxy import CuttableProxy, DroppingProxy, ForwardingProxy
from .conftest import Clock, worker_env
from .test_processes import outputs, spawn

pytestmark = pytest.mark.shared_only

FAR = 10**10
CENT = 10_000_000


def reservation(*holds: Hold, expires_at: float = FAR) -> Reservation:
    """Build a reservation with a fresh id."""
    return Reservation(uuid.uuid4().hex, holds, expires_at)


@pytest.fixture
def inner(make_ledger: Callable[..., Ledger]) -> Ledger:
    """Return the shared ledger under test, on the controlled clock."""
    return make_ledger()


@pytest.fixture
def make_leased(inner: Ledger) -> Iterator[Callable[..., LeasedLedger]]:
    """Return a factory of leased ledgers over ``inner`` (no thread), closed at the end."""
    opened: list[LeasedLedger] = []

    def make(over: Ledger | None = None, **options: object) -> LeasedLedger:
        options.setdefault("background", False)
        ledger = LeasedLedger(over or inner, **options)  # type: ignore[arg-type]
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def leases(make_leased: Callable[..., LeasedLedger]) -> LeasedLedger:
    """Return a leased ledger over ``inner`` (slices of a quarter of a limit, no thread)."""
    return make_leased(slice_fraction=0.25)


class TestContract:
    """The ledger contract holds through the wrapper."""

    def test_reserve_is_local_and_shows_as_held(self, leases: LeasedLedger, inner: Ledger) -> None:
        """A reservation with room in a slice is held here; the inner ledger holds the slice."""
        r = reservation(Hold("user", 100, 10), Hold("count", None, 10))
        assert leases.reserve(r) is None
        assert leases.balances(["user", "count"]) == {
            "user": Balance(0, 10),
            "count": Balance(0, 10),
        }
        assert inner.balances(["user", "count"]) == {"user": Balance(0, 25), "count": Balance()}
        operations = leases.inner_operations
        second = reservation(Hold("user", 100, 10))
        assert leases.reserve(second) is None
        assert leases.inner_operations == operations  # no round trip
        assert {x.id for x in leases.open_reservations()} == {r.id, second.id}

    def test_settle_charges_once_and_flushes_exactly(
        self, leases: LeasedLedger, inner: Ledger
    ) -> None:
        """Settle charges here at once, once per id; the inner ledger gets it at the flush."""
        r = reservation(Hold("user", 100, 30), Hold("global", 1000, 30))
        assert leases.reserve(r) is None
        assert leases.settle(r, 25, ["model", "tag"]) is True
        assert leases.settle(r, 25, ["model", "tag"]) is False
        keys = ["user", "global", "model", "tag"]
        assert leases.balances(keys) == dict.fromkeys(keys, Balance(25, 0))
        assert inner.balances(["model"])["model"] == Balance()
        leases.flush_now()
        assert inner.balances(keys) == dict.fromkeys(keys, Balance(25, 0))
        assert inner.open_reservations() == []
        assert leases.settle(r, 25) is False

    def test_per_unit_amounts(self, leases: LeasedLedger, inner: Ledger) -> None:
        """Each hold is charged its own unit's amount; tallies unit 0."""
        r = reservation(Hold("usd", 1000, 50), Hold("tokens", 10_000, 400, unit=3))
        assert leases.reserve(r) is None
        assert leases.settle(r, [40, 0, 0, 350], ["tally"])
        leases.flush_now()
        assert inner.balances(["usd", "tokens", "tally"]) == {
            "usd": Balance(40, 0),
            "tokens": Balance(350, 0),
            "tally": Balance(40, 0),
        }

    def test_refusal_reports_the_numbers_and_changes_nothing(
        self, leases: LeasedLedger, inner: Ledger
    ) -> None:
        """A refusal names the hold and the numbers as this process sees them; nothing changes."""
        inner.add(["user"], 50)
        held = reservation(Hold("user", 100, 30))
        assert leases.reserve(held) is None
        before = leases.balances(["user", "other"])
        refused = reservation(Hold("other", None, 1), Hold("user", 100, 21))
        assert leases.reserve(refused) == Refusal(1, "user", 100, 50, 30, 21)
        assert leases.balances(["user", "other"]) == before
        assert leases.reserve(reservation(Hold("user", 100, 20))) is None  # the exact fit

    def test_zero_hold_on_spent_budget_is_refused(self, leases: LeasedLedger) -> None:
        """A hold of 0 on a key at its limit is refused, as without leases."""
        first = reservation(Hold("user", 100, 100))
        assert leases.reserve(first) is None
        assert leases.settle(first, 100)
        assert leases.reserve(reservation(Hold("user", 100, 0))) == Refusal(
            0, "user", 100, 100, 0, 0
        )

    def test_reused_id_raises(self, leases: LeasedLedger) -> None:
        """An id may be used once: open, settled or released, reuse raises."""
        rs = [reservation(Hold("k", 100, 1)) for _ in range(3)]
        for r in rs:
            assert leases.reserve(r) is None
        leases.settle(rs[1], 1)
        leases.release(rs[2])
        for r in rs:
            with pytest.raises(ValueError, match="used before"):
                leases.reserve(r)

    @pytest.mark.parametrize(
        "hold",
        [Hold("k", 100, -1), Hold("k", 100, 1.5), Hold("k", -1, 1), Hold("k", 100, 1, unit=99)],  # type: ignore[arg-type]
    )
    def test_bad_input_raises_and_changes_nothing(
        self, leases: LeasedLedger, inner: Ledger, hold: Hold
    ) -> None:
        """A malformed hold, expiry or amount raises ValueError; nothing is held or leased."""
        with pytest.raises(ValueError):
            leases.reserve(reservation(hold))
        with pytest.raises(ValueError, match="expiry"):
            leases.reserve(reservation(Hold("k", 100, 1), expires_at=float("nan")))
        r = reservation(Hold("k", 100, 1))
        assert leases.reserve(r) is None
        with pytest.raises(ValueError):
            leases.settle(r, -3)
        assert leases.balances(["k"])["k"] == Balance(0, 1)
        assert inner.open_reservations()[0].holds[0].amount == 25  # the one lease, nothing else

    def test_holds_and_tallies_seen_before_still_meet_the_door(
        self, leases: LeasedLedger, inner: Ledger
    ) -> None:
        """A holds tuple checked once skips its checks; the id and expiry never do."""
        holds = (Hold("k", 100, 1),)
        tallies = ("t",)
        first = Reservation("first", holds, FAR)
        assert leases.reserve(first) is None
        assert leases.settle(first, 1, tallies) is True
        for bad_id, expires_at in (
            ("", FAR),
            (7, FAR),
            ("x", float("nan")),
            ("y", float("inf")),
            ("z", True),
            ("w", "soon"),
        ):
            with pytest.raises(ValueError):
                leases.reserve(Reservation(bad_id, holds, expires_at))  # type: ignore[arg-type]
        second = Reservation("second", holds, FAR)
        assert leases.reserve(second) is None
        with pytest.raises(ValueError, match="tallies"):
            leases.settle(second, 1, ["t", 3])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="tallies"):
            leases.settle(second, 1, "t")
        # A tuple checked as one kind is no pass as the other.
        with pytest.raises(ValueError, match="hold"):
            leases.reserve(Reservation("third", tallies, FAR))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="tallies"):
            leases.settle(second, 1, holds)  # type: ignore[arg-type]
        assert leases.settle(second, 1, tallies) is True
        leases.flush_now()
        assert inner.balances(["k", "t"]) == {"k": Balance(2, 0), "t": Balance(2, 0)}

    def test_release_and_settle_after_release(self, leases: LeasedLedger, inner: Ledger) -> None:
        """Release frees the hold once; a settle after it still charges, once."""
        r = reservation(Hold("user", 100, 30))
        assert leases.reserve(r) is None
        assert leases.release(r) is True
        assert leases.release(r) is False
        assert leases.balances(["user"])["user"] == Balance()
        assert leases.settle(r, 10) is True
        assert leases.settle(r, 10) is False
        leases.flush_now()
        assert inner.balances(["user"])["user"] == Balance(10, 0)

    def test_settle_of_a_reservation_made_elsewhere(
        self, leases: LeasedLedger, inner: Ledger
    ) -> None:
        """A reservation this process never admitted is settled on the inner ledger, once."""
        r = reservation(Hold("user", 100, 30))
        assert inner.reserve(r) is None
        assert leases.settle(r, 7) is True
        assert leases.settle(r, 7) is False
        assert inner.balances(["user"])["user"] == Balance(7, 0)

    def test_local_holds_expire(self, leases: LeasedLedger, inner: Ledger, clock: Clock) -> None:
        """Past its expiry a local hold is gone; a late settle still charges, once."""
        r = reservation(Hold("user", 100, 20), expires_at=clock.now + 30)
        assert leases.reserve(r) is None
        clock.advance(31)
        assert leases.balances(["user"])["user"] == Balance()
        assert leases.open_reservations() == []
        assert leases.release(r) is False
        assert leases.settle(r, 12) is True
        assert leases.settle(r, 12) is False
        leases.flush_now()
        assert inner.balances(["user"])["user"] == Balance(12, 0)
        with pytest.raises(ValueError):
            leases.reserve(r)

    def test_soft_and_sliding_holds_pass_through(self, leases: LeasedLedger, inner: Ledger) -> None:
        """A soft hold or a sliding window goes to the inner ledger as it is, exactly."""
        inner.add(["prev"], 100)
        soft = reservation(Hold("user", 10, 20, over="over"))
        sliding = reservation(Hold("win", 100, 10, prior="prev", weight=500_000))
        assert leases.reserve(soft) is None
        assert leases.reserve(sliding) is None
        assert {x.id for x in inner.open_reservations()} == {soft.id, sliding.id}
        assert inner.balances(["over"])["over"] == Balance(1, 0)
        assert leases.settle(soft, 5) and leases.settle(sliding, 6)
        assert inner.balances(["user", "win"]) == {"user": Balance(5, 0), "win": Balance(6, 0)}

    def test_slices_shrink_near_the_limit(
        self, inner: Ledger, make_leased: Callable[..., LeasedLedger]
    ) -> None:
        """A second holder gets a quarter of what is left, then what it misses; never more."""
        first = make_leased(slice_fraction=0.6)
        second = make_leased(slice_fraction=0.6)
        assert first.reserve(reservation(Hold("user", 100, 10))) is None  # a slice of 60
        assert second.reserve(reservation(Hold("user", 100, 10))) is None  # 40 left: 10
        assert inner.balances(["user"])["user"] == Balance(0, 70)
        assert second.reserve(reservation(Hold("user", 100, 12))) is None  # 30 left: 7 < 12
        assert inner.balances(["user"])["user"] == Balance(0, 82)
        # 18 are left and this process has no room: 19 cannot fit anywhere.
        refusal = second.reserve(reservation(Hold("user", 100, 19)))
        assert refusal == Refusal(0, "user", 100, 0, 22 + 60, 19)
        # 18 fit exactly: a quarter of what is left (4) is less than the call asks.
        assert second.reserve(reservation(Hold("user", 100, 18))) is None
        assert inner.balances(["user"])["user"] == Balance(0, 100)
        first.flush_now()  # first returns nothing: its call is in flight
        assert inner.balances(["user"])["user"] == Balance(0, 100)

    async def test_async_twins(self, leases: LeasedLedger, inner: Ledger) -> None:
        """Every a-method does what its synchronous twin does."""
        r = reservation(Hold("k", 10, 4))
        assert await leases.areserve(r) is None
        refusal = await leases.areserve(reservation(Hold("k", 10, 7)))
        assert refusal == Refusal(0, "k", 10, 0, 4, 7)
        assert await leases.arelease(r) is True
        assert await leases.arelease(r) is False
        assert await leases.asettle(r, 3, ["t"]) is True
        assert await leases.asettle(r, 3, ["t"]) is False
        s = reservation(Hold("k", 10, 2))
        assert await leases.areserve(s) is None
        assert await leases.asettle(s, 2, ["t"]) is True
        assert await leases.abalances(["k", "t"]) == {"k": Balance(5, 0), "t": Balance(5, 0)}
        await leases.aflush_now()
        assert await inner.abalances(["k", "t"]) == {"k": Balance(5, 0), "t": Balance(5, 0)}

    async def test_tasks_race_one_small_limit(self, leases: LeasedLedger, inner: Ledger) -> None:
        """100 tasks race a limit that fits 7: exactly 7 win, and the inner ledger agrees."""

        async def attempt() -> bool:
            r = reservation(Hold("user", 70, 10))
            if await leases.areserve(r) is not None:
                return False
            return await leases.asettle(r, 10)

        results = await asyncio.gather(*(attempt() for _ in range(100)))
        assert sum(results) == 7
        await leases.aflush_now()
        assert await inner.abalances(["user"]) == {"user": Balance(70, 0)}

    def test_close_returns_every_lease(
        self, make_ledger: Callable[..., Ledger], inner: Ledger
    ) -> None:
        """close() returns every lease with its spend: the inner ledger ends exact, nothing open."""
        ledger = LeasedLedger(make_ledger(), slice_fraction=0.5)
        for _ in range(3):
            r = reservation(Hold("user", 100, 5), Hold("count", None, 1, unit=1))
            assert ledger.reserve(r) is None
            assert ledger.settle(r, [4, 1])
        open_ = reservation(Hold("user", 100, 5))
        assert ledger.reserve(open_) is None
        assert ledger.release(open_)
        ledger.close()
        assert inner.balances(["user", "count"]) == {
            "user": Balance(12, 0),
            "count": Balance(3, 0),
        }
        assert inner.open_reservations() == []


def test_long_calls_keep_their_hold_and_spend_is_flushed(
    inner: Ledger, clock: Clock, make_leased: Callable[..., LeasedLedger]
) -> None:
    """A call running past the lease's ttl keeps its hold; the spend around it is flushed."""
    leases = make_leased(slice_fraction=0.5, ttl=1.0, flush=0.05)
    long = reservation(Hold("user", 100, 10))
    short = reservation(Hold("user", 100, 10))
    assert leases.reserve(long) is None and leases.reserve(short) is None
    assert leases.settle(short, 7)

    def ticks(count: int) -> None:
        for _ in range(count):
            time.sleep(0.06)
            leases.balances(["user"])  # the tick plans the writes...
            leases.balances(["user"])  # ...the next operation makes them

    ticks(2)  # retired, then rolled over: the unused slice and the short call's spend go back
    assert inner.balances(["user"])["user"] == Balance(7, 10)
    for _ in range(3):
        clock.advance(0.6)  # past the first lease's ttl, then the next one's
        ticks(2)
        assert inner.balances(["user"])["user"] == Balance(7, 10)
    assert leases.balances(["user"])["user"] == Balance(7, 10)
    assert leases.settle(long, 9)
    leases.flush_now()
    assert inner.balances(["user"])["user"] == Balance(16, 0)
    assert inner.open_reservations() == []


#: What a leased ledger can ask of the shared ledger it wraps.
OPERATIONS = ("reserve", "settle", "release", "add", "balances", "scan", "open_reservations")


def count_operations(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every operation ``ledger`` is asked for from now on; return the counter."""
    counter = [0]
    for name in OPERATIONS:
        method = getattr(ledger, name)

        def counted(*args: object, _method: Any = method, **kwargs: object) -> Any:
            counter[0] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(ledger, name, counted)
    return counter


def test_refusals_are_answered_here_until_room_may_be_back(
    inner: Ledger,
    make_ledger: Callable[..., Ledger],
    make_leased: Callable[..., LeasedLedger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spent budget's refusal is remembered: no shared operation until limit or room changes."""
    holder = make_leased(slice_fraction=0.5, ttl=240.0, flush=60.0)
    mine = make_ledger()  # late's own connection: its operations alone are counted
    late = make_leased(mine, slice_fraction=0.5, ttl=240.0, flush=60.0)
    held = reservation(Hold("user", 100, 10))
    assert holder.reserve(held) is None  # a slice of 50
    first = reservation(Hold("user", 100, 10))
    assert late.reserve(first) is None  # the other 50
    assert late.settle(first, 10)  # 40 left in late's slice, none on the shared ledger
    operations = count_operations(mine, monkeypatch)
    refusal = late.reserve(reservation(Hold("user", 100, 45), Hold("g", None, 45)))
    assert refusal == Refusal(0, "user", 100, 10, 50 + 0, 45)
    assert operations[0] == 1  # the lease it asked for, refused
    for amount in (45, 41, 100):
        again = late.reserve(reservation(Hold("user", 100, amount), Hold("g", None, amount)))
        assert again == Refusal(0, "user", 100, 10, 50, amount)
    assert operations[0] == 1  # answered from memory
    # What fits this process's own slice is admitted as before, still locally.
    fits = reservation(Hold("user", 100, 40))
    assert late.reserve(fits) is None and late.release(fits)
    assert operations[0] == 1
    # Another process returning its slice is seen here at the next flush, not before.
    assert holder.settle(held, 5)
    holder.flush_now()  # 45 of holder's slice back on the shared ledger
    assert late.reserve(reservation(Hold("user", 100, 45))) is not None
    assert operations[0] == 1
    late.flush_now()  # a flush forgets every refusal (and returns late's slice)
    after = reservation(Hold("user", 100, 45))
    assert late.reserve(after) is None and late.settle(after, 45)
    assert operations[0] > 1
    # Spent again (40 left): a raised limit is a new question for the shared ledger.
    assert late.reserve(reservation(Hold("user", 100, 45))) is not None
    seen = operations[0]
    assert late.reserve(reservation(Hold("user", 100, 45))) is not None
    assert operations[0] == seen
    raised = reservation(Hold("user", 200, 45))
    assert late.reserve(raised) is None and late.settle(raised, 45)
    assert operations[0] > seen
    late.flush_now()
    assert inner.balances(["user"])["user"] == Balance(10 + 5 + 45 + 45, 0)


def test_refused_budget_admits_again_after_a_flush_period(
    inner: Ledger,
    make_ledger: Callable[..., Ledger],
    make_leased: Callable[..., LeasedLedger],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices another process returns are admissible here once ``flush`` seconds have passed."""
    holder = make_leased(slice_fraction=0.6, ttl=1.0, flush=0.05)
    mine = make_ledger()  # late's own connection: its operations alone are counted
    late = make_leased(mine, slice_fraction=0.6, ttl=1.0, flush=0.05)
    held = reservation(Hold("user", 100, 10))
    assert holder.reserve(held) is None  # a slice of 60: 40 left
    assert late.reserve(reservation(Hold("user", 100, 50))) is not None
    assert holder.release(held)
    holder.flush_now()  # the slice of 60 is back
    operations = count_operations(mine, monkeypatch)
    time.sleep(0.06)  # one flush period: the refusal is forgotten at the next operation
    admitted = reservation(Hold("user", 100, 50))
    assert late.reserve(admitted) is None
    assert operations[0] >= 1
    assert late.settle(admitted, 50)
    late.flush_now()
    assert inner.balances(["user"])["user"] == Balance(50, 0)


def test_bad_options_are_configuration_errors(inner: Ledger) -> None:
    """Options that cannot work raise ConfigurationError naming them; memory:// is refused."""
    for options in (
        {"slice_fraction": 0},
        {"slice_fraction": 1.5},
        {"ttl": -1},
        {"flush": "1"},
        {"ttl": 10, "flush": 5},
    ):
        with pytest.raises(ConfigurationError):
            LeasedLedger(inner, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="private to one process"):
        leased("memory://")
    assert isinstance(leased(inner, flush=0.5), LeasedLedger)


# -- across processes -------------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_never_pass_the_limit(inner: Ledger, tmp_path: Path) -> None:
    """4 processes × 50 leased calls of 0.01 against 0.37: at most 37 run; spend exact."""
    go = tmp_path / "go"
    children = [
        spawn("lease-race", inner.url, "50", str(CENT), str(37 * CENT), "0.1", str(go))
        for _ in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    won = sum(int(out) for out in outputs(children))
    assert 0 < won <= 37
    later = ledger_from_url(inner.url)
    try:
        assert later.balances(["user", "tally"]) == {
            "user": Balance(won * CENT, 0),
            "tally": Balance(won * CENT, 0),
        }
        assert later.open_reservations() == []
    finally:
        later.close()


@pytest.mark.slow
def test_four_guarded_processes_never_pass_the_limit(inner: Ledger, tmp_path: Path) -> None:
    """4 processes × 50 guarded calls (estimate 0.01) over leases against 0.37: at most 37."""
    from budgetguard.guard import BudgetGuard

    bg = BudgetGuard(ledger=inner.url)
    bg.set_budget("0.37")
    go = tmp_path / "go"
    children = [spawn("lease-guard", inner.url, "50", str(go)) for _ in range(4)]
    time.sleep(1.0)
    go.touch()
    ran = sum(int(out) for out in outputs(children))
    assert 0 < ran <= 37
    assert bg.spend() == Decimal(ran) / 100
    assert bg.ledger.open_reservations() == []
    bg.ledger.close()


def test_threads_race_one_small_limit(leases: LeasedLedger, inner: Ledger) -> None:
    """100 threads race a limit that fits 7 through one leased ledger: at most 7; spend exact."""
    barrier = threading.Barrier(100)

    def attempt(_: int) -> bool:
        barrier.wait()
        r = reservation(Hold("user", 70, 10), Hold("g", None, 10))
        if leases.reserve(r) is not None:
            return False
        return leases.settle(r, 10)

    with ThreadPoolExecutor(100) as pool:
        won = sum(pool.map(attempt, range(100)))
    assert 0 < won <= 7
    leases.flush_now()
    assert inner.balances(["user", "g"]) == {
        "user": Balance(10 * won, 0),
        "g": Balance(10 * won, 0),
    }
    assert inner.open_reservations() == []


@pytest.mark.slow
def test_killed_holder_is_returned_uncharged_after_ttl(inner: Ledger) -> None:
    """SIGKILL: the lease stays held until ttl, then is released; the unflushed spend is lost."""
    ttl = 4.0
    child = spawn("lease-hang", inner.url, str(CENT), str(100 * CENT), "0.2", str(ttl), "5", "3")
    assert child.stdout is not None
    line = child.stdout.readline()
    killed_at = time.time()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert line.strip() == "ready", child.stderr.read() if child.stderr else ""
    now = ledger_from_url(inner.url, clock=lambda: killed_at)
    later = ledger_from_url(inner.url, clock=lambda: killed_at + ttl + 1)
    try:
        # Flushed: 5 calls, charged. Not flushed: 3 calls, inside a slice of 20 still held.
        assert now.balances(["user"])["user"] == Balance(5 * CENT, 20 * CENT)
        assert later.balances(["user"])["user"] == Balance(5 * CENT, 0)
        assert later.open_reservations() == []
    finally:
        now.close()
        later.close()


@pytest.mark.slow
def test_exit_returns_the_leases(inner: Ledger) -> None:
    """A process that exits without close() returns its leases with their spend (atexit)."""
    code = (
        "import sys, time, uuid\n"
        "from budgetguard.ledger import Hold, LeasedLedger, Reservation, ledger_from_url\n"
        "ledger = LeasedLedger(ledger_from_url(sys.argv[1]), slice_fraction=0.5)\n"
        "for _ in range(3):\n"
        "    r = Reservation(uuid.uuid4().hex, (Hold('user', 100, 10),), time.time() + 60)\n"
        "    assert ledger.reserve(r) is None and ledger.settle(r, 7, ('tally',))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, inner.url],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    later = ledger_from_url(inner.url)
    try:
        assert later.balances(["user", "tally"]) == {
            "user": Balance(21, 0),
            "tally": Balance(21, 0),
        }
        assert later.open_reservations() == []
    finally:
        later.close()


def test_fork_drops_the_parents_leases(
    inner: Ledger, make_leased: Callable[..., LeasedLedger]
) -> None:
    """A forked child holds none of its parent's leases or spend; each flushes its own."""
    ledger = make_leased(slice_fraction=0.5)
    for _ in range(3):
        r = reservation(Hold("user", 100 * CENT, CENT))
        assert ledger.reserve(r) is None
        assert ledger.settle(r, CENT, ("tally",))
    pid = os.fork()
    if pid == 0:  # the child: its own state only
        code = 1
        try:
            empty = ledger.balances(["tally"])["tally"] == Balance()
            r = reservation(Hold("user", 100 * CENT, CENT))
            fits = ledger.reserve(r) is None and ledger.settle(r, CENT, ("tally",))
            ledger.flush_now()
            code = 0 if empty and fits else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert inner.balances(["tally"])["tally"] == Balance(CENT, 0)  # the child's call alone
    ledger.flush_now()
    assert inner.balances(["user", "tally"]) == {
        "user": Balance(4 * CENT, 0),
        "tally": Balance(4 * CENT, 0),
    }
    assert inner.open_reservations() == []


# -- faults ------------------------------------------------------------------------------


def _through(
    ledger_url: str, clock: Clock, kind: type[ForwardingProxy]
) -> Iterator[tuple[Any, Ledger, Ledger]]:
    if ledger_url.startswith("sqlite"):
        pytest.skip("SQLite has no connection to cut or lose a reply on")
    parts = urlsplit(ledger_url)
    assert parts.hostname is not None and parts.port is not None
    proxy = kind(parts.hostname, parts.port)
    through_url = ledger_url.replace(f":{parts.port}/", f":{proxy.port}/", 1)
    options: dict[str, Any] = {"clock": clock}
    if ledger_url.startswith("redis"):
        options["socket_timeout"] = 2.0
    through = ledger_from_url(through_url, **options)
    direct = ledger_from_url(ledger_url, clock=clock)
    yield proxy, through, direct
    through.close()
    direct.close()
    proxy.close()


@pytest.fixture
def proxied(ledger_url: str, clock: Clock) -> Iterator[tuple[DroppingProxy, Ledger, Ledger]]:
    """Return a proxy that can lose replies, a ledger through it and one direct (Redis, PG)."""
    yield from _through(ledger_url, clock, DroppingProxy)


@pytest.fixture
def cuttable(ledger_url: str, clock: Clock) -> Iterator[tuple[CuttableProxy, Ledger, Ledger]]:
    """Return a proxy that can cut the storage off, a ledger through it and one direct."""
    yield from _through(ledger_url, clock, CuttableProxy)


def test_storage_outage_admits_within_slices_and_flushes_later(
    cuttable: tuple[CuttableProxy, Ledger, Ledger], make_leased: Callable[..., LeasedLedger]
) -> None:
    """The storage down: calls within a slice still run, a new slice is a StorageError; the
    spend reaches the ledger, once, when it is back."""
    proxy, through, direct = cuttable
    leases = make_leased(through, slice_fraction=0.5)
    first = reservation(Hold("user", 100, 10))
    assert leases.reserve(first) is None  # a slice of 50, taken while the storage is up
    proxy.down()
    try:
        for _ in range(4):
            r = reservation(Hold("user", 100, 10), Hold("count", None, 1, unit=1))
            assert leases.reserve(r) is None
            assert leases.settle(r, [10, 1])
        with pytest.raises(StorageError):
            leases.reserve(reservation(Hold("user", 100, 10)))  # the slice is full
        with pytest.raises(StorageError):
            leases.flush_now()
    finally:
        proxy.restore()
    assert leases.settle(first, 10)
    leases.flush_now()
    assert direct.balances(["user", "count"]) == {
        "user": Balance(50, 0),
        "count": Balance(4, 0),
    }
    assert direct.open_reservations() == []


def test_lost_flush_replies_are_retried_without_double_counting(
    proxied: tuple[DroppingProxy, Ledger, Ledger], make_leased: Callable[..., LeasedLedger]
) -> None:
    """A flush whose reply was lost is kept and retried under the same ids: charged once."""
    proxy, through, direct = proxied
    leases = make_leased(through, slice_fraction=0.5)
    r = reservation(Hold("user", 1000, 10))
    assert leases.reserve(r) is None
    assert leases.settle(r, 8, ("tally",))
    proxy.arm()  # the lease's return runs, its reply is lost
    with pytest.raises(StorageError):
        leases.flush_now()
    assert proxy.dropped == 1
    assert direct.balances(["user", "tally"]) == {"user": Balance(8, 0), "tally": Balance()}
    assert leases.balances(["user", "tally"]) == {"user": Balance(8, 0), "tally": Balance(8, 0)}
    leases.flush_now()
    assert direct.balances(["user", "tally"]) == {"user": Balance(8, 0), "tally": Balance(8, 0)}

    counted = reservation(Hold("count", None, 3))  # no limit: a charge written with add
    assert leases.reserve(counted) is None
    assert leases.settle(counted, 3, ("tally",))
    proxy.arm()  # the add runs, its reply is lost
    with pytest.raises(StorageError):
        leases.flush_now()
    assert proxy.dropped == 2
    leases.flush_now()
    leases.flush_now()
    assert direct.balances(["count", "tally"]) == {"count": Balance(3, 0), "tally": Balance(11, 0)}
    assert leases.balances(["user", "count", "tally"]) == direct.balances(
        ["user", "count", "tally"]
    )
    assert direct.open_reservations() == []


def test_a_guard_takes_leases_when_asked(ledger_url: str) -> None:
    """BudgetGuard(leases=True) admits exactly what the budget fits, charged once."""
    guard = BudgetGuard(ledger_url, metrics=False, leases={"flush": 0.05})
    try:
        assert type(guard.ledger).__name__ == "LeasedLedger"
        guard.set_budget("0.37", user="alice", period="monthly")
        call = guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.01")(lambda: 1)
        ran = 0
        for _ in range(50):
            try:
                call()
            except BudgetExceededError:
                continue
            ran += 1
        assert ran == 37
        assert guard.spend("alice") == Decimal("0.37")
    finally:
        guard.close()


def test_a_guard_refuses_a_spent_budget_locally_until_it_is_raised(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused guarded calls of a spent budget ask no shared ledger; a raised limit runs again."""
    guard = BudgetGuard(ledger_url, metrics=False, leases={"flush": 60.0, "ttl": 240.0})
    try:
        guard.set_budget("0.05", user="alice", period="monthly")
        call = guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.01")(lambda: 1)
        for _ in range(5):
            call()
        with pytest.raises(BudgetExceededError):
            call()  # the first refusal asks the shared ledger
        assert isinstance(guard.ledger, LeasedLedger)
        operations = count_operations(guard.ledger.inner, monkeypatch)
        for _ in range(20):
            with pytest.raises(BudgetExceededError):
                call()
        assert operations[0] == 0
        guard.set_budget("0.10", user="alice", period="monthly")
        for _ in range(5):
            call()
        assert operations[0] > 0
        assert guard.spend("alice") == Decimal("0.10")
    finally:
        guard.close()


def test_leases_are_refused_on_a_private_ledger() -> None:
    """leases= on memory:// names the problem at the door."""
    with pytest.raises(ConfigurationError, match="private to one process"):
        BudgetGuard("memory://", metrics=False, leases=True)
    with pytest.raises(ConfigurationError, match="leases must be True"):
        BudgetGuard("memory://", metrics=False, leases="yes")
