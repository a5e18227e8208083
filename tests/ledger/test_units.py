"""Units, soft holds and sliding windows: the ledger contract on every backend."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from budgetguard.ledger import Balance, Hold, Ledger, Refusal

from .conftest import Clock
from .test_conformance import reservation, snapshot

# The guard's convention (the ledger gives units no meaning).
DOLLARS, TOKENS_IN, TOKENS_OUT, TOKENS, REQUESTS, IN_FLIGHT = range(6)


class TestUnits:
    """Settle charges each held key the amount of its own unit."""

    def test_settle_charges_each_key_its_unit(self, ledger: Ledger) -> None:
        """Dollars on one key, tokens on another, requests on a third; tallies get unit 0."""
        r = reservation(
            Hold("usd", 1000, 40),
            Hold("tok", 10_000, 500, unit=TOKENS),
            Hold("req", 10, 1, unit=REQUESTS),
        )
        assert ledger.reserve(r) is None
        assert ledger.balances(["usd", "tok", "req"]) == {
            "usd": Balance(0, 40),
            "tok": Balance(0, 500),
            "req": Balance(0, 1),
        }
        assert ledger.settle(r, [35, 100, 200, 300, 1], ["tally"]) is True
        assert ledger.balances(["usd", "tok", "req", "tally"]) == {
            "usd": Balance(35, 0),
            "tok": Balance(300, 0),
            "req": Balance(1, 0),
            "tally": Balance(35, 0),
        }
        assert ledger.settle(r, [35, 100, 200, 300, 1], ["tally"]) is False
        assert ledger.balances(["usd", "tok", "req", "tally"])["tok"] == Balance(300, 0)

    def test_int_amount_charges_every_unit(self, ledger: Ledger) -> None:
        """A single int is charged to every held key whatever its unit, and to tallies."""
        r = reservation(Hold("usd", 100, 5), Hold("tok", 100, 5, unit=TOKENS))
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 7, ["t"]) is True
        assert ledger.balances(["usd", "tok", "t"]) == {
            "usd": Balance(7, 0),
            "tok": Balance(7, 0),
            "t": Balance(7, 0),
        }

    def test_tuple_amount_for_unit_zero_only(self, ledger: Ledger) -> None:
        """A one-element sequence settles holds of unit 0 like an int."""
        r = reservation(Hold("usd", 100, 5), Hold("usd", 100, 5))
        assert ledger.reserve(r) is None
        assert ledger.settle(r, (3,), ["t"]) is True
        assert ledger.balances(["usd", "t"]) == {"usd": Balance(6, 0), "t": Balance(3, 0)}

    def test_concurrency_limit_holds_one_and_settles_zero(self, ledger: Ledger) -> None:
        """Calls in flight: hold 1, settle 0; a limit of 2 refuses the third until one ends."""
        first = reservation(Hold("flight", 2, 1, unit=IN_FLIGHT))
        second = reservation(Hold("flight", 2, 1, unit=IN_FLIGHT))
        third = reservation(Hold("flight", 2, 1, unit=IN_FLIGHT))
        assert ledger.reserve(first) is None
        assert ledger.reserve(second) is None
        assert ledger.reserve(third) == Refusal(0, "flight", 2, 0, 2, 1)
        assert ledger.settle(first, [10, 0, 0, 0, 0, 0]) is True
        assert ledger.balances(["flight"])["flight"] == Balance(0, 1)
        assert ledger.reserve(third) is None
        assert ledger.settle(second, [10, 0, 0, 0, 0, 0]) is True
        assert ledger.settle(third, [10, 0, 0, 0, 0, 0]) is True
        assert ledger.balances(["flight"])["flight"] == Balance(0, 0)

    def test_expired_settle_charges_by_unit(self, ledger: Ledger, clock: Clock) -> None:
        """A reservation that expired is still charged, each key by its unit."""
        r = reservation(
            Hold("usd", 100, 5), Hold("tok", 100, 5, unit=TOKENS), expires_at=clock.now + 10
        )
        assert ledger.reserve(r) is None
        clock.advance(11)
        assert ledger.balances(["usd", "tok"]) == {"usd": Balance(), "tok": Balance()}
        assert ledger.settle(r, [4, 0, 0, 9]) is True
        assert ledger.balances(["usd", "tok"]) == {"usd": Balance(4, 0), "tok": Balance(9, 0)}

    def test_unknown_settle_charges_by_unit(self, ledger: Ledger) -> None:
        """A settle of a reservation never reserved charges each key by its unit."""
        r = reservation(Hold("usd", 100, 5), Hold("req", 100, 1, unit=REQUESTS))
        assert ledger.settle(r, [4, 0, 0, 0, 1], ["t"]) is True
        assert ledger.balances(["usd", "req", "t"]) == {
            "usd": Balance(4, 0),
            "req": Balance(1, 0),
            "t": Balance(4, 0),
        }

    @pytest.mark.parametrize(
        "amount",
        [[5, 1], [], [5, 1, 2, -1], [5, 1, 2, 1.5], [5, 1, 2, True], (5, "1", 2, 3), "5000", 1.0],
    )
    def test_bad_settle_amounts_raise_and_change_nothing(
        self, ledger: Ledger, amount: object
    ) -> None:
        """Too short a sequence, negative, fractional, boolean or textual amounts raise."""
        r = reservation(Hold("usd", 100, 5), Hold("tok", 100, 5, unit=TOKENS))
        assert ledger.reserve(r) is None
        before = snapshot(ledger, "usd", "tok", "t")
        with pytest.raises(ValueError):
            ledger.settle(r, amount, ["t"])  # type: ignore[arg-type]
        assert snapshot(ledger, "usd", "tok", "t") == before
        assert ledger.settle(r, [1, 0, 0, 2], ["t"]) is True

    async def test_async_settle_by_unit(self, ledger: Ledger) -> None:
        """asettle takes amounts per unit like settle, and raises on bad ones."""
        r = reservation(Hold("usd", 100, 5), Hold("tok", 100, 5, unit=TOKENS))
        assert await ledger.areserve(r) is None
        with pytest.raises(ValueError):
            await ledger.asettle(r, [1, 2])
        assert await ledger.asettle(r, [1, 2, 3, 4]) is True
        assert await ledger.asettle(r, [1, 2, 3, 4]) is False
        assert await ledger.abalances(["usd", "tok"]) == {
            "usd": Balance(1, 0),
            "tok": Balance(4, 0),
        }


class TestSoftHolds:
    """A soft hold never refuses; when it does not fit it counts on its over key."""

    def test_soft_hold_that_fits_is_held(self, ledger: Ledger) -> None:
        """A soft hold within its limit holds as usual and counts nothing."""
        assert ledger.reserve(reservation(Hold("soft", 100, 30, over="soft:over"))) is None
        assert ledger.balances(["soft", "soft:over"]) == {
            "soft": Balance(0, 30),
            "soft:over": Balance(),
        }

    def test_soft_hold_over_its_limit_is_held_and_counted(self, ledger: Ledger) -> None:
        """A soft hold that does not fit is held anyway and adds 1 to its over key."""
        ledger.add(["soft"], 90)
        r = reservation(Hold("soft", 100, 30, over="soft:over"))
        assert ledger.reserve(r) is None
        assert ledger.balances(["soft", "soft:over"]) == {
            "soft": Balance(90, 30),
            "soft:over": Balance(1, 0),
        }
        assert ledger.reserve(reservation(Hold("soft", 100, 0, over="soft:over"))) is None
        assert ledger.balances(["soft:over"])["soft:over"] == Balance(2, 0)
        assert ledger.settle(r, 25) is True
        assert ledger.balances(["soft", "soft:over"]) == {
            "soft": Balance(115, 0),
            "soft:over": Balance(2, 0),
        }

    def test_soft_holds_are_checked_against_the_state_before(self, ledger: Ledger) -> None:
        """Two soft holds on one key that each fit alone are both held, and none counted."""
        r = reservation(Hold("s", 10, 6, over="o"), Hold("s", 10, 6, over="o"))
        assert ledger.reserve(r) is None
        assert ledger.balances(["s", "o"]) == {"s": Balance(0, 12), "o": Balance()}
        again = reservation(Hold("s", 10, 1, over="o"), Hold("s", 10, 1, over="o"))
        assert ledger.reserve(again) is None
        assert ledger.balances(["s", "o"]) == {"s": Balance(0, 14), "o": Balance(2, 0)}

    def test_hard_refusal_changes_nothing_not_even_the_over_count(self, ledger: Ledger) -> None:
        """A reservation refused by a hard hold holds nothing and counts no soft miss."""
        ledger.add(["soft", "hard"], 100)
        before = snapshot(ledger, "soft", "hard", "soft:over")
        r = reservation(Hold("soft", 100, 5, over="soft:over"), Hold("hard", 100, 5))
        assert ledger.reserve(r) == Refusal(1, "hard", 100, 100, 0, 5)
        assert snapshot(ledger, "soft", "hard", "soft:over") == before
        assert ledger.balances(["soft:over"])["soft:over"] == Balance()

    def test_soft_hold_without_limit_never_counts(self, ledger: Ledger) -> None:
        """A soft hold with limit None always fits: its over key stays at 0."""
        ledger.add(["count"], 10**12)
        assert ledger.reserve(reservation(Hold("count", None, 10**9, over="c:over"))) is None
        assert ledger.balances(["count", "c:over"]) == {
            "count": Balance(10**12, 10**9),
            "c:over": Balance(),
        }

    def test_soft_misses_of_several_budgets_share_one_over_key(self, ledger: Ledger) -> None:
        """Two soft holds that miss in one reservation add 1 each to a shared over key."""
        ledger.add(["a", "b"], 10)
        r = reservation(Hold("a", 10, 1, over="shadow"), Hold("b", 10, 1, over="shadow"))
        assert ledger.reserve(r) is None
        assert ledger.balances(["shadow"])["shadow"] == Balance(2, 0)

    def test_expired_soft_hold_is_dropped_and_its_count_stays(
        self, ledger: Ledger, clock: Clock
    ) -> None:
        """Expiry drops a soft hold's units; the miss it counted stays counted."""
        ledger.add(["s"], 10)
        r = reservation(Hold("s", 10, 3, over="o"), expires_at=clock.now + 5)
        assert ledger.reserve(r) is None
        assert ledger.balances(["s", "o"]) == {"s": Balance(10, 3), "o": Balance(1, 0)}
        clock.advance(6)
        assert ledger.balances(["s", "o"]) == {"s": Balance(10, 0), "o": Balance(1, 0)}
        assert ledger.open_reservations() == []


class TestSlidingWindows:
    """A hold with a prior key counts the weighted spend of the previous window."""

    def test_prior_part_is_counted(self, ledger: Ledger) -> None:
        """Prior spent 100 at half weight counts 50: a hold of 51 is refused, 50 fits."""
        ledger.add(["w:prev"], 100)
        hold = Hold("w:now", 100, 51, prior="w:prev", weight=500_000)
        assert ledger.reserve(reservation(hold)) == Refusal(0, "w:now", 100, 0, 0, 51, 50)
        assert ledger.reserve(reservation(hold._replace(amount=50))) is None
        assert ledger.balances(["w:now", "w:prev"]) == {
            "w:now": Balance(0, 50),
            "w:prev": Balance(100, 0),
        }

    def test_prior_part_rounds_down(self, ledger: Ledger) -> None:
        """floor(spent * weight / 1_000_000): 7 at a third counts 2."""
        ledger.add(["prev"], 7)
        hold = Hold("now", 10, 9, prior="prev", weight=333_334)
        assert ledger.reserve(reservation(hold)) == Refusal(0, "now", 10, 0, 0, 9, 2)
        assert ledger.reserve(reservation(hold._replace(amount=8))) is None

    def test_prior_part_is_exact_for_a_large_spend(self, ledger: Ledger) -> None:
        """The prior part of a spend of 2**50 units is floor(spent * weight / 10**6) exactly."""
        spent, weight = 2**50 + 987_654_321, 333_333
        part = spent * weight // 1_000_000
        ledger.add(["prev"], spent)
        hold = Hold("now", part + 10, 11, prior="prev", weight=weight)
        assert ledger.reserve(reservation(hold)) == Refusal(0, "now", part + 10, 0, 0, 11, part)
        assert ledger.reserve(reservation(hold._replace(amount=10))) is None

    def test_zero_hold_with_the_prior_part_at_the_limit_is_refused(self, ledger: Ledger) -> None:
        """A hold of 0 is refused when spent + reserved + the prior part reach the limit."""
        ledger.add(["prev"], 40)
        ledger.add(["now"], 80)
        hold = Hold("now", 100, 0, prior="prev", weight=500_000)
        assert ledger.reserve(reservation(hold)) == Refusal(0, "now", 100, 80, 0, 0, 20)
        assert ledger.reserve(reservation(hold._replace(weight=499_999))) is None

    def test_missing_prior_key_counts_zero(self, ledger: Ledger) -> None:
        """A prior key that holds nothing counts 0, and is not created."""
        hold = Hold("now", 100, 100, prior="never", weight=1_000_000)
        assert ledger.reserve(reservation(hold)) is None
        assert ledger.scan("never") == {}

    def test_prior_key_is_only_read(self, ledger: Ledger) -> None:
        """Reserving and settling a windowed hold never changes the prior key."""
        ledger.add(["prev"], 60)
        r = reservation(Hold("now", 100, 10, prior="prev", weight=500_000))
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 10) is True
        assert ledger.balances(["prev", "now"]) == {"prev": Balance(60, 0), "now": Balance(10, 0)}

    def test_soft_windowed_hold_counts_its_miss(self, ledger: Ledger) -> None:
        """A soft hold that misses only because of the prior part counts on its over key."""
        ledger.add(["prev"], 100)
        r = reservation(Hold("now", 100, 60, over="o", prior="prev", weight=500_000))
        assert ledger.reserve(r) is None
        assert ledger.balances(["now", "o"]) == {"now": Balance(0, 60), "o": Balance(1, 0)}


class TestNewFieldsAtTheDoor:
    """Malformed units, over keys, priors and weights raise and change nothing."""

    @pytest.mark.parametrize(
        ("fields", "named"),
        [
            ({"unit": -1}, "unit"),
            ({"unit": 16}, "unit"),
            ({"unit": True}, "unit"),
            ({"unit": 1.0}, "unit"),
            ({"unit": "1"}, "unit"),
            ({"over": ""}, "over"),
            ({"over": 3}, "over"),
            ({"prior": ""}, "prior"),
            ({"prior": b"p", "weight": 1}, "prior"),
            ({"prior": "p", "weight": -1}, "weight"),
            ({"prior": "p", "weight": 1_000_001}, "weight"),
            ({"prior": "p", "weight": 0.5}, "weight"),
            ({"prior": "p", "weight": True}, "weight"),
            ({"prior": "p"}, "weight"),
            ({"weight": 10}, "prior"),
        ],
    )
    def test_bad_fields_raise_naming_the_field(
        self, ledger: Ledger, fields: dict[str, Any], named: str
    ) -> None:
        """Each bad field is a ValueError naming it; nothing is held or counted."""
        ledger.add(["p"], 10)
        before = snapshot(ledger, "k", "good", "p", "o")
        r = reservation(Hold("good", 10, 1, over="o"), Hold("k", 10, 1)._replace(**fields))
        with pytest.raises(ValueError, match=named):
            ledger.reserve(r)
        assert snapshot(ledger, "k", "good", "p", "o") == before
        # The id was not consumed.
        assert ledger.reserve(r._replace(holds=r.holds[:1])) is None

    async def test_bad_fields_raise_on_async_reserve(self, ledger: Ledger) -> None:
        """areserve checks the new fields too."""
        with pytest.raises(ValueError, match="unit"):
            await ledger.areserve(reservation(Hold("k", 10, 1, unit=99)))
        assert await ledger.abalances(["k"]) == {"k": Balance()}

    def test_open_reservations_round_trip_every_field(self, ledger: Ledger) -> None:
        """open_reservations returns units, over keys, priors and weights as reserved."""
        r = reservation(
            Hold("usd", 100, 5),
            Hold("tok", None, 50, unit=TOKENS),
            Hold("soft", 10, 3, over="soft:over"),
            Hold("win", 1000, 7, unit=TOKENS_OUT, over="win:o", prior="win:p", weight=250_000),
            Hold("flight", 4, 1, unit=15),
        )
        assert ledger.reserve(r) is None
        assert ledger.open_reservations() == [r]

    def test_expiry_drops_the_holds_of_every_unit(self, ledger: Ledger, clock: Clock) -> None:
        """An expired reservation gives back what it held on every key, whatever its kind."""
        ledger.add(["soft"], 10)
        r = reservation(
            Hold("usd", 100, 5),
            Hold("tok", 1000, 500, unit=TOKENS),
            Hold("flight", 2, 1, unit=IN_FLIGHT),
            Hold("soft", 10, 3, unit=REQUESTS, over="soft:over"),
            Hold("win", 100, 9, unit=TOKENS_IN, prior="soft", weight=100_000),
            expires_at=clock.now + 5,
        )
        assert ledger.reserve(r) is None
        clock.advance(6)
        assert ledger.balances(["usd", "tok", "flight", "soft", "win", "soft:over"]) == {
            "usd": Balance(),
            "tok": Balance(),
            "flight": Balance(),
            "soft": Balance(10, 0),
            "win": Balance(),
            "soft:over": Balance(1, 0),
        }
        assert ledger.open_reservations() == []


class TestMixedRace:
    """Dollars, tokens and calls in flight reserved together: exactly the admissible number win."""

    # Admissible: dollars fit 7 (70 / 10), tokens fit 9 (900 / 100), in flight fit 5.
    # Where nobody settles, the calls in flight are the tightest: 5 win.
    @staticmethod
    def _holds(soft: bool = False, flight: int = 5) -> tuple[Hold, ...]:
        return (
            Hold("usd", 70, 10),
            Hold("tok", 900, 100, unit=TOKENS),
            Hold("flight", flight, 1, unit=IN_FLIGHT),
            Hold("shadow", 0, 1, over="shadow:over") if soft else Hold("count", None, 1),
        )

    def test_threads_race_dollars_tokens_and_calls_in_flight(self, ledger: Ledger) -> None:
        """32 threads race three limits at once: exactly 5 win, no counter above its limit."""
        barrier = threading.Barrier(32)

        def attempt(_: int) -> bool:
            barrier.wait()
            return ledger.reserve(reservation(*self._holds(soft=True))) is None

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(attempt, range(32)))
        assert sum(results) == 5
        assert ledger.balances(["usd", "tok", "flight", "shadow", "shadow:over"]) == {
            "usd": Balance(0, 50),
            "tok": Balance(0, 500),
            "flight": Balance(0, 5),
            "shadow": Balance(0, 5),
            "shadow:over": Balance(5, 0),  # every winner's soft hold missed; losers count none
        }

    def test_threads_reserve_and_settle_by_unit(self, ledger: Ledger) -> None:
        """Threads reserve and settle per unit: in-flight slots come back, dollars run out at 7."""

        def call(_: int) -> bool:
            # As many slots as workers: only the dollars decide, so exactly 7 run.
            r = reservation(*self._holds(flight=8))
            if ledger.reserve(r) is not None:
                return False
            assert ledger.settle(r, [10, 0, 0, 50, 0, 0]) is True
            return True

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(32)))
        assert sum(results) == 7
        assert ledger.balances(["usd", "tok", "flight", "count"]) == {
            "usd": Balance(70, 0),
            "tok": Balance(350, 0),
            "flight": Balance(0, 0),
            "count": Balance(70, 0),
        }

    async def test_tasks_race_dollars_tokens_and_calls_in_flight(self, ledger: Ledger) -> None:
        """32 asyncio tasks race three limits through the a-methods: exactly 5 win."""

        async def attempt() -> bool:
            return await ledger.areserve(reservation(*self._holds())) is None

        results = await asyncio.gather(*(attempt() for _ in range(32)))
        assert sum(results) == 5
        assert await ledger.abalances(["usd", "tok", "flight"]) == {
            "usd": Balance(0, 50),
            "tok": Balance(0, 500),
            "flight": Balance(0, 5),
        }

    async def test_tasks_reserve_and_settle_by_unit(self, ledger: Ledger) -> None:
        """32 tasks reserve and settle per unit: exactly 7 run, spend exact, no slot left held."""

        async def call() -> bool:
            r = reservation(*self._holds())
            if await ledger.areserve(r) is not None:
                return False
            await asyncio.sleep(0)
            return await ledger.asettle(r, [10, 0, 0, 50, 0, 0])

        results: list[bool] = []
        for _ in range(4):
            results += await asyncio.gather(*(call() for _ in range(8)))
        assert sum(results) == 7
        assert await ledger.abalances(["usd", "tok", "flight"]) == {
            "usd": Balance(70, 0),
            "tok": Balance(350, 0),
            "flight": Balance(0, 0),
        }
