"""The ledger contract, checked on every backend (memory, sqlite, redis)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from budgetguard.ledger import Balance, Hold, Ledger, Refusal, Reservation

from .conftest import Clock

FAR = 10**10  # an expiry far in the future


def reservation(*holds: Hold, expires_at: float = FAR, id: str | None = None) -> Reservation:
    """Build a reservation with a fresh id."""
    return Reservation(id or uuid.uuid4().hex, holds, expires_at)


def snapshot(ledger: Ledger, *keys: str) -> tuple[dict[str, Balance], list[str]]:
    """Return the balances of ``keys`` and the open reservation ids."""
    return ledger.balances(keys), sorted(r.id for r in ledger.open_reservations())


class TestReserve:
    """Check-and-hold, all or nothing."""

    def test_reserve_holds_units(self, ledger: Ledger) -> None:
        """A reservation that fits is held: reserved grows, spent does not."""
        r = reservation(Hold("user", 100, 30))
        assert ledger.reserve(r) is None
        assert ledger.balances(["user"]) == {"user": Balance(0, 30)}
        assert [x.id for x in ledger.open_reservations()] == [r.id]

    def test_exact_fit_is_accepted(self, ledger: Ledger) -> None:
        """spent + reserved + amount == limit fits."""
        ledger.add(["user"], 60)
        assert ledger.reserve(reservation(Hold("user", 100, 30))) is None
        assert ledger.reserve(reservation(Hold("user", 100, 10))) is None
        assert ledger.balances(["user"])["user"] == Balance(60, 40)

    def test_refusal_reports_the_numbers(self, ledger: Ledger) -> None:
        """A refusal names the hold, limit, spent, reserved and requested units."""
        ledger.add(["user"], 50)
        assert ledger.reserve(reservation(Hold("user", 100, 30))) is None
        refusal = ledger.reserve(reservation(Hold("other", None, 1), Hold("user", 100, 21)))
        assert refusal == Refusal(1, "user", 100, 50, 30, 21)

    def test_refusal_changes_nothing(self, ledger: Ledger) -> None:
        """All or nothing: a refused reservation holds none of its keys."""
        ledger.add(["global"], 95)
        before = snapshot(ledger, "user", "global", "tally")
        refused = reservation(
            Hold("user", 100, 10), Hold("tally", None, 10), Hold("global", 100, 10)
        )
        assert ledger.reserve(refused) == Refusal(2, "global", 100, 95, 0, 10)
        assert snapshot(ledger, "user", "global", "tally") == before
        # The refused id was not consumed: it may be used again once it fits.
        ledger.clear(["global"])
        assert ledger.reserve(refused) is None

    def test_zero_hold_on_spent_budget_is_refused(self, ledger: Ledger) -> None:
        """A hold of 0 on a key at its limit is refused; below the limit it fits."""
        ledger.add(["user"], 99)
        assert ledger.reserve(reservation(Hold("user", 100, 0))) is None
        ledger.add(["user"], 1)
        assert ledger.reserve(reservation(Hold("user", 100, 0))) == Refusal(
            0, "user", 100, 100, 0, 0
        )

    def test_key_without_limit_never_refuses(self, ledger: Ledger) -> None:
        """A hold with limit None only counts."""
        ledger.add(["count"], 10**12)
        assert ledger.reserve(reservation(Hold("count", None, 10**12))) is None
        assert ledger.balances(["count"])["count"] == Balance(10**12, 10**12)

    def test_zero_limit_refuses_everything(self, ledger: Ledger) -> None:
        """A budget of 0 refuses even a call with no estimate."""
        assert ledger.reserve(reservation(Hold("user", 0, 0))) == Refusal(0, "user", 0, 0, 0, 0)

    def test_holds_are_checked_against_the_state_before(self, ledger: Ledger) -> None:
        """Two holds on one key are each checked against the balance before the reservation."""
        assert ledger.reserve(reservation(Hold("k", 10, 6), Hold("k", 10, 6))) is None
        assert ledger.balances(["k"])["k"] == Balance(0, 12)

    def test_reused_id_raises(self, ledger: Ledger) -> None:
        """A reservation id may be used once: open, settled or released, reuse raises."""
        open_ = reservation(Hold("k", 100, 1))
        settled = reservation(Hold("k", 100, 1))
        released = reservation(Hold("k", 100, 1))
        for r in (open_, settled, released):
            assert ledger.reserve(r) is None
        ledger.settle(settled, 1)
        ledger.release(released)
        before = snapshot(ledger, "k")
        for r in (open_, settled, released):
            with pytest.raises(ValueError, match="used before"):
                ledger.reserve(r)
        assert snapshot(ledger, "k") == before

    @pytest.mark.parametrize("amount", [-1, 1.5, True, "3"])
    def test_bad_amount_raises_and_changes_nothing(self, ledger: Ledger, amount: object) -> None:
        """Negative, fractional, boolean or textual amounts raise ValueError."""
        with pytest.raises(ValueError):
            ledger.reserve(reservation(Hold("k", 100, amount)))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ledger.add(["k"], amount)  # type: ignore[arg-type]
        r = reservation(Hold("k", 100, 1))
        ledger.reserve(r)
        with pytest.raises(ValueError):
            ledger.settle(r, amount)  # type: ignore[arg-type]
        assert ledger.balances(["k"])["k"] == Balance(0, 1)

    def test_the_very_same_holds_again_and_again(self, ledger: Ledger) -> None:
        """One holds tuple reserved call after call (as a plan's): held, refused and charged right.

        A ledger that remembers what it found for holds it saw (memory://
        keeps the tallies' cells) must not, after a ``clear``, write to what
        it forgot.
        """
        holds = (Hold("k", 9, 4), Hold("g", None, 4))
        tallies = ("t",)
        first = Reservation("s1", holds, FAR)
        assert ledger.reserve(first) is None
        assert ledger.settle(first, 3, tallies)
        ledger.clear(["k", "g", "t"])
        after_clear = Reservation("s2", holds, FAR)
        assert ledger.reserve(after_clear) is None
        assert ledger.balances(["k", "g"]) == {"k": Balance(0, 4), "g": Balance(0, 4)}
        assert ledger.settle(after_clear, 3, tallies)
        assert not ledger.settle(after_clear, 3, tallies)  # once
        third = Reservation("s3", holds, FAR)
        assert ledger.reserve(third) is None
        assert ledger.settle(third, 3, tallies)
        assert ledger.balances(["k", "g", "t"]) == {
            "k": Balance(6, 0),
            "g": Balance(6, 0),
            "t": Balance(6, 0),
        }
        assert ledger.reserve(Reservation("s4", holds, FAR)) == Refusal(0, "k", 9, 6, 0, 4)
        assert ledger.open_reservations() == []

    def test_open_reservations_round_trip(self, ledger: Ledger) -> None:
        """open_reservations returns the reservation as it was reserved."""
        r = reservation(Hold("a", 100, 5), Hold("b", None, 7), expires_at=FAR + 0.5)
        ledger.reserve(r)
        assert ledger.open_reservations() == [r]

    def test_large_amounts_are_exact(self, ledger: Ledger) -> None:
        """Sums up to 2**52 + 1 units (four million dollars) are compared exactly."""
        big = 2**51
        r = reservation(Hold("k", 2 * big + 1, big))
        assert ledger.reserve(r) is None
        assert ledger.reserve(reservation(Hold("k", 2 * big + 1, big + 2))) is not None
        assert ledger.reserve(reservation(Hold("k", 2 * big + 1, big + 1))) is None
        ledger.settle(r, big - 1)
        assert ledger.balances(["k"])["k"] == Balance(big - 1, big + 1)

    def test_unicode_and_odd_keys(self, ledger: Ledger) -> None:
        """Keys are opaque strings: unicode, spaces, glob and JSON characters work."""
        keys = ["usér:ünï", "a b", "x*[?]\\", 'q"uote', "{tag}"]
        r = reservation(*(Hold(k, 10, 1) for k in keys))
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 2)
        assert ledger.balances(keys) == {k: Balance(2, 0) for k in keys}


class TestSettle:
    """Charge once per reservation id."""

    def test_settle_charges_holds_and_tallies(self, ledger: Ledger) -> None:
        """Settle charges every held key and every tally key, and drops the holds."""
        r = reservation(Hold("user", 100, 30), Hold("global", 1000, 30))
        ledger.reserve(r)
        assert ledger.settle(r, 25, tallies=["model:gpt", "tag:x"]) is True
        assert ledger.balances(["user", "global", "model:gpt", "tag:x"]) == {
            "user": Balance(25, 0),
            "global": Balance(25, 0),
            "model:gpt": Balance(25, 0),
            "tag:x": Balance(25, 0),
        }
        assert ledger.open_reservations() == []

    def test_settle_is_idempotent(self, ledger: Ledger) -> None:
        """A second settle of one reservation changes nothing and returns False."""
        r = reservation(Hold("user", 100, 30))
        ledger.reserve(r)
        assert ledger.settle(r, 20, ["t"]) is True
        assert ledger.settle(r, 20, ["t"]) is False
        assert ledger.settle(r, 99) is False
        assert ledger.balances(["user", "t"]) == {"user": Balance(20, 0), "t": Balance(20, 0)}

    def test_settle_may_exceed_the_estimate(self, ledger: Ledger) -> None:
        """The real cost is charged even when it is above the estimate and the limit."""
        r = reservation(Hold("user", 100, 10))
        ledger.reserve(r)
        assert ledger.settle(r, 150)
        assert ledger.balances(["user"])["user"] == Balance(150, 0)
        assert ledger.reserve(reservation(Hold("user", 100, 0))) is not None

    def test_settle_after_release_charges_without_dropping_twice(self, ledger: Ledger) -> None:
        """A released reservation is still charged on settle; its holds are not dropped again."""
        r = reservation(Hold("user", 100, 30))
        other = reservation(Hold("user", 100, 40))
        ledger.reserve(r)
        ledger.reserve(other)
        assert ledger.release(r) is True
        assert ledger.settle(r, 10) is True
        assert ledger.balances(["user"])["user"] == Balance(10, 40)
        assert ledger.settle(r, 10) is False

    def test_settle_after_expiry_charges(self, ledger: Ledger, clock: Clock) -> None:
        """An expired reservation is still charged on settle, once."""
        r = reservation(Hold("user", 100, 30), expires_at=clock.now + 60)
        other = reservation(Hold("user", 100, 5))
        ledger.reserve(r)
        ledger.reserve(other)
        clock.advance(61)
        assert ledger.balances(["user"])["user"] == Balance(0, 5)
        assert ledger.settle(r, 12) is True
        assert ledger.balances(["user"])["user"] == Balance(12, 5)
        assert ledger.settle(r, 12) is False

    def test_settle_of_unknown_reservation_charges(self, ledger: Ledger) -> None:
        """Settling a reservation this ledger never held still records the spend once."""
        r = reservation(Hold("user", 100, 30))
        assert ledger.settle(r, 7) is True
        assert ledger.settle(r, 7) is False
        assert ledger.balances(["user"])["user"] == Balance(7, 0)

    def test_settle_zero(self, ledger: Ledger) -> None:
        """A settle of 0 ends the reservation and charges nothing."""
        r = reservation(Hold("user", 100, 30))
        ledger.reserve(r)
        assert ledger.settle(r, 0) is True
        assert ledger.balances(["user"])["user"] == Balance(0, 0)
        assert ledger.scan("") == {}


class TestRelease:
    """Drop holds without charging."""

    def test_release_drops_holds(self, ledger: Ledger) -> None:
        """Release frees the held units and returns True once."""
        r = reservation(Hold("user", 100, 30), Hold("global", None, 30))
        ledger.reserve(r)
        assert ledger.release(r) is True
        assert ledger.release(r) is False
        assert ledger.balances(["user", "global"]) == {"user": Balance(), "global": Balance()}
        assert ledger.open_reservations() == []

    def test_release_after_settle_is_false(self, ledger: Ledger) -> None:
        """A settled reservation cannot be released."""
        r = reservation(Hold("user", 100, 30))
        ledger.reserve(r)
        ledger.settle(r, 30)
        assert ledger.release(r) is False
        assert ledger.balances(["user"])["user"] == Balance(30, 0)

    def test_release_of_unknown_is_false(self, ledger: Ledger) -> None:
        """Releasing a reservation never made returns False and changes nothing."""
        assert ledger.release(reservation(Hold("user", 100, 30))) is False
        assert ledger.balances(["user"])["user"] == Balance()


class TestExpiry:
    """Reservations of a crashed caller end by themselves."""

    def test_expired_reservation_is_released_lazily(self, ledger: Ledger, clock: Clock) -> None:
        """Past its expiry a reservation no longer holds units and is no longer open."""
        r = reservation(Hold("user", 100, 80), expires_at=clock.now + 30)
        ledger.reserve(r)
        assert ledger.reserve(reservation(Hold("user", 100, 30))) is not None
        clock.advance(29)
        assert ledger.balances(["user"])["user"] == Balance(0, 80)
        clock.advance(1)
        assert ledger.reserve(reservation(Hold("user", 100, 30))) is None
        assert ledger.balances(["user"])["user"] == Balance(0, 30)
        assert r.id not in {x.id for x in ledger.open_reservations()}
        assert ledger.release(r) is False

    def test_many_expired_reservations(self, ledger: Ledger, clock: Clock) -> None:
        """More expired reservations than one call releases are all released before a refusal."""
        for _ in range(250):
            ledger.reserve(reservation(Hold("user", 1000, 4), expires_at=clock.now + 1))
        assert ledger.reserve(reservation(Hold("user", 1000, 1))) is not None
        clock.advance(2)
        assert ledger.reserve(reservation(Hold("user", 1000, 1000))) is None
        assert ledger.balances(["user"])["user"] == Balance(0, 1000)
        assert len(ledger.open_reservations()) == 1

    def test_expired_id_cannot_be_reused(self, ledger: Ledger, clock: Clock) -> None:
        """An id that expired is used, too."""
        r = reservation(Hold("user", 100, 10), expires_at=clock.now + 1)
        ledger.reserve(r)
        clock.advance(5)
        assert ledger.open_reservations() == []
        with pytest.raises(ValueError):
            ledger.reserve(r)


class TestAddAndRead:
    """Unconditional charges, balances, scan, clear."""

    def test_add_charges_every_key_unconditionally(self, ledger: Ledger) -> None:
        """add charges even past a limit and never refuses."""
        ledger.add(["a", "b"], 5)
        ledger.add(["a"], 10**15)
        assert ledger.balances(["a", "b"]) == {"a": Balance(10**15 + 5, 0), "b": Balance(5, 0)}

    def test_unknown_keys_are_zero(self, ledger: Ledger) -> None:
        """balances returns zero for keys never charged, in the order asked."""
        assert ledger.balances(["x", "y"]) == {"x": Balance(), "y": Balance()}
        assert ledger.balances([]) == {}

    def test_exact_sum_of_many_small_adds(self, ledger: Ledger) -> None:
        """10_000 adds of 1 unit sum to exactly 10_000."""
        for _ in range(10_000):
            ledger.add(["k"], 1)
        assert ledger.balances(["k"])["k"] == Balance(10_000, 0)

    def test_scan_by_prefix(self, ledger: Ledger) -> None:
        """scan returns the keys with the prefix that hold something, exactly matched."""
        ledger.add(["user:a:2026", "user:b:2026", "global:2026", "User:c"], 3)
        ledger.reserve(reservation(Hold("user:c:2026", 100, 4)))
        ledger.add(["user:zero"], 0)
        assert ledger.scan("user:") == {
            "user:a:2026": Balance(3, 0),
            "user:b:2026": Balance(3, 0),
            "user:c:2026": Balance(0, 4),
        }
        assert set(ledger.scan("")) == {
            "user:a:2026",
            "user:b:2026",
            "user:c:2026",
            "global:2026",
            "User:c",
        }

    def test_scan_prefix_with_pattern_characters(self, ledger: Ledger) -> None:
        """Glob and LIKE characters in a prefix are matched literally."""
        ledger.add(["a*[x]%_?:1", "ab", "a*[x]%_?"], 1)
        assert set(ledger.scan("a*[x]%_?:")) == {"a*[x]%_?:1"}
        assert set(ledger.scan("a*")) == {"a*[x]%_?:1", "a*[x]%_?"}

    def test_clear_forgets_spend_keeps_holds(self, ledger: Ledger) -> None:
        """clear zeroes spend; open reservations stay held."""
        ledger.add(["k", "other"], 50)
        r = reservation(Hold("k", 100, 20))
        ledger.reserve(r)
        ledger.clear(["k"])
        assert ledger.balances(["k", "other"]) == {"k": Balance(0, 20), "other": Balance(50, 0)}
        ledger.clear([])
        assert ledger.settle(r, 5)
        assert ledger.balances(["k"])["k"] == Balance(5, 0)

    def test_settles_after_clearing_their_tallies_count_again(self, ledger: Ledger) -> None:
        """Tallies cleared between two settles of the same tally keys count the second one."""
        tallies = ("t|a", "t|b")
        first, second = reservation(Hold("k", 100, 1)), reservation(Hold("k", 100, 1))
        ledger.reserve(first)
        ledger.settle(first, 5, tallies)
        ledger.clear(list(tallies))
        ledger.reserve(second)
        ledger.settle(second, 3, tallies)
        assert ledger.balances(list(tallies)) == {"t|a": Balance(3, 0), "t|b": Balance(3, 0)}
        assert ledger.balances(["k"])["k"] == Balance(8, 0)


class TestBudgets:
    """Budget definitions stored in the ledger."""

    def test_budget_round_trip(self, ledger: Ledger) -> None:
        """put/get/list/delete budget definitions."""
        definition = {"limit": "10.00", "period": "monthly", "user": "alice", "n": [1, 2]}
        assert ledger.get_budget("alice") is None
        ledger.put_budget("alice", definition)
        ledger.put_budget("global", {"limit": "500"})
        assert ledger.get_budget("alice") == definition
        ledger.put_budget("global", {"limit": "600"})
        assert ledger.list_budgets() == {"alice": definition, "global": {"limit": "600"}}
        assert ledger.delete_budget("alice") is True
        assert ledger.delete_budget("alice") is False
        assert ledger.list_budgets() == {"global": {"limit": "600"}}

    @pytest.mark.shared_only
    def test_budgets_are_shared(self, make_ledger: Callable[..., Ledger]) -> None:
        """A budget set through one ledger object is seen by another on the same URL."""
        first, second = make_ledger(), make_ledger()
        first.put_budget("team", {"limit": "1"})
        assert second.get_budget("team") == {"limit": "1"}
        first.add(["k"], 3)
        assert second.balances(["k"])["k"] == Balance(3, 0)


class TestConcurrency:
    """Exactly as many callers as fit get through."""

    def test_threads_race_one_small_limit(self, ledger: Ledger) -> None:
        """100 threads race a limit that fits 7: exactly 7 reserve."""
        barrier = threading.Barrier(100)

        def attempt(_: int) -> bool:
            barrier.wait()
            return ledger.reserve(reservation(Hold("user", 70, 10), Hold("g", None, 10))) is None

        with ThreadPoolExecutor(100) as pool:
            results = list(pool.map(attempt, range(100)))
        assert sum(results) == 7
        assert ledger.balances(["user", "g"]) == {"user": Balance(0, 70), "g": Balance(0, 70)}

    def test_threads_reserve_and_settle(self, ledger: Ledger) -> None:
        """100 threads reserve and settle against a limit of 37 calls: spend is exact."""

        def call(_: int) -> bool:
            r = reservation(Hold("user", 370, 10))
            if ledger.reserve(r) is not None:
                return False
            assert ledger.settle(r, 10)
            return True

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, range(100)))
        assert sum(results) == 37
        assert ledger.balances(["user"])["user"] == Balance(370, 0)

    async def test_tasks_race_one_small_limit(self, ledger: Ledger) -> None:
        """100 asyncio tasks race a limit that fits 7 through the a-methods: exactly 7 win."""

        async def attempt() -> bool:
            r = reservation(Hold("user", 70, 10))
            if await ledger.areserve(r) is not None:
                return False
            return await ledger.asettle(r, 10)

        results = await asyncio.gather(*(attempt() for _ in range(100)))
        assert sum(results) == 7
        assert await ledger.abalances(["user"]) == {"user": Balance(70, 0)}

    async def test_async_variants(self, ledger: Ledger) -> None:
        """Every a-method does what its synchronous twin does."""
        await ledger.aping()
        r = reservation(Hold("k", 10, 4))
        assert await ledger.areserve(r) is None
        assert await ledger.areserve(reservation(Hold("k", 10, 7))) == Refusal(0, "k", 10, 0, 4, 7)
        assert await ledger.arelease(r) is True
        assert await ledger.arelease(r) is False
        assert await ledger.asettle(r, 3, ["t"]) is True
        assert await ledger.asettle(r, 3, ["t"]) is False
        await ledger.aadd(["k", "t"], 2)
        assert await ledger.abalances(["k", "t"]) == {"k": Balance(5, 0), "t": Balance(5, 0)}
        with pytest.raises(ValueError):
            await ledger.areserve(r)


class TestExactlyOnce:
    """Every money-moving write carries an id and counts once."""

    def test_add_with_op_id_charges_once(self, ledger: Ledger) -> None:
        """add with an op_id charges the first time (True) and never again (False)."""
        assert ledger.add(["a", "b"], 5, op_id="op-1") is True
        assert ledger.add(["a", "b"], 5, op_id="op-1") is False
        assert ledger.add(["a"], 5, op_id="op-2") is True
        assert ledger.balances(["a", "b"]) == {"a": Balance(10, 0), "b": Balance(5, 0)}

    def test_add_without_op_id_keeps_the_old_call(self, ledger: Ledger) -> None:
        """add(keys, units) as the guard calls it still charges every time."""
        ledger.add(["a"], 5)
        ledger.add(["a"], 5)
        assert ledger.balances(["a"])["a"] == Balance(10, 0)

    @pytest.mark.parametrize("op_id", ["", 5, b"x"])
    def test_bad_op_id_raises_and_changes_nothing(self, ledger: Ledger, op_id: object) -> None:
        """An op_id that is not a non-empty string raises ValueError and charges nothing."""
        with pytest.raises(ValueError, match="op_id"):
            ledger.add(["a"], 5, op_id=op_id)  # type: ignore[arg-type]
        assert ledger.balances(["a"])["a"] == Balance()

    def test_release_before_reserve_makes_a_late_reserve_hold_nothing(self, ledger: Ledger) -> None:
        """A release that overtakes its reserve (a lost reply) wins: the late reserve is refused."""
        r = reservation(Hold("user", 100, 30))
        assert ledger.release(r) is False
        with pytest.raises(ValueError, match="used before"):
            ledger.reserve(r)
        assert ledger.balances(["user"])["user"] == Balance()
        assert ledger.open_reservations() == []
        assert ledger.settle(r, 4) is True  # the money was still spent
        assert ledger.balances(["user"])["user"] == Balance(4, 0)

    def test_duplicate_holds_and_tallies_on_one_key_add_up(self, ledger: Ledger) -> None:
        """A key held twice and also tallied is charged once per mention, its holds dropped."""
        r = reservation(Hold("k", 100, 6), Hold("k", 100, 6))
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 5, ("k", "t", "t")) is True
        assert ledger.balances(["k", "t"]) == {"k": Balance(15, 0), "t": Balance(10, 0)}
        assert ledger.settle(r, 5, ("k",)) is False

    async def test_async_add_with_op_id_charges_once(self, ledger: Ledger) -> None:
        """aadd with an op_id charges once, like add."""
        assert await ledger.aadd(["a"], 5, op_id="op") is True
        assert await ledger.aadd(["a"], 5, op_id="op") is False
        assert ledger.add(["a"], 5, op_id="op") is False
        assert await ledger.abalances(["a"]) == {"a": Balance(5, 0)}


class TestDoor:
    """What the backend cannot hold is refused before anything changes."""

    @pytest.mark.parametrize("expires_at", [float("nan"), float("inf"), "soon", None])
    def test_bad_expiry_raises_and_holds_nothing(self, ledger: Ledger, expires_at: object) -> None:
        """A reservation whose expiry is NaN, infinite or not a number raises ValueError."""
        r = Reservation("r", (Hold("k", 100, 5),), expires_at)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="expiry"):
            ledger.reserve(r)
        assert ledger.balances(["k"])["k"] == Balance()
        assert ledger.open_reservations() == []

    @pytest.mark.parametrize(
        ("hold", "named"),
        [
            (Hold(5, 100, 1), "key"),  # type: ignore[arg-type]
            (Hold("k", -1, 1), "limit"),
            (Hold("k", True, 1), "limit"),
            (Hold("k", 1.5, 1), "limit"),  # type: ignore[arg-type]
            (Hold("k", 100, 1, unit=-1), "unit"),
            (Hold("k", 100, 1, unit=True), "unit"),
            (Hold("k", 100, 1, unit=False), "unit"),  # equal to 0, yet not a unit
            (Hold("k", 100, 1, unit=0.0), "unit"),  # type: ignore[arg-type]
            (Hold("k", 100, 1, prior="p", weight=True), "weight"),
            (Hold("k", 100, 1, over=""), "over"),
            (Hold("k", 100, 1, prior="p"), "weight"),
            (Hold("k", 100, 1, weight=5), "prior"),
            (("k", 100, 1), "Hold"),
        ],
    )
    def test_malformed_hold_raises_naming_it_and_holds_nothing(
        self, ledger: Ledger, hold: Hold, named: str
    ) -> None:
        """A hold of the wrong shape raises ValueError naming what is wrong; nothing is held."""
        good = Hold("g", 100, 1)
        with pytest.raises(ValueError, match=named):
            ledger.reserve(Reservation("r", (good, hold), time.time() + 60))
        assert ledger.balances(["g", "k"]) == {"g": Balance(), "k": Balance()}
        assert ledger.open_reservations() == []

    def test_amounts_up_to_max_units_are_exact_and_larger_refused(self, ledger: Ledger) -> None:
        """max_units is held exactly; one more raises ValueError and changes nothing."""
        top = ledger.max_units
        if top is None:
            top = 2**80  # memory: Python integers
        else:
            with pytest.raises(ValueError, match="too large"):
                ledger.add(["k"], top + 1)
        ledger.add(["k"], top)
        assert ledger.balances(["k"])["k"] == Balance(top, 0)
