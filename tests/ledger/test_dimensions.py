"""Budgets over every subject, unit and mode, through the guard, on every backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from budgetguard import BudgetExceededError, BudgetGuard
from budgetguard.ledger import Ledger
from budgetguard.pricing import register_model

from .conftest import Clock

CENT = "0.01"


@pytest.fixture
def guard(make_ledger: Callable[..., Ledger], clock: Clock) -> Iterator[BudgetGuard]:
    """Return a guard (no metrics) on the backend under test, on the test's clock."""
    made = BudgetGuard(make_ledger(), metrics=False, clock=clock)
    yield made
    made.close()


def response(model: str = "gpt-4o-mini", given: int = 100, written: int = 50) -> dict[str, Any]:
    """Return an OpenAI-shaped chat completion that reports its usage."""
    return {
        "object": "chat.completion",
        "model": model,
        "usage": {"prompt_tokens": given, "completion_tokens": written},
    }


def runs(call: Callable[[], object], times: int) -> int:
    """Call ``call`` ``times`` times; return how many ran (the others were refused)."""
    ran = 0
    for _ in range(times):
        try:
            call()
        except BudgetExceededError:
            continue
        ran += 1
    return ran


def spent(guard: BudgetGuard, name: str) -> Decimal:
    """Return what the status of budget ``name`` says is spent in its window."""
    for status in guard.budget_statuses():
        if status.name == name:
            return status.spent
    raise AssertionError(f"no status for {name}: {guard.budget_statuses()}")


def test_tag_budget_caps_the_calls_of_tagged_scopes(guard: BudgetGuard) -> None:
    """A tag budget caps calls whose scope carries the tag, and only those."""
    guard.set_budget("0.05", tag="team=search", period="monthly")
    call = guard.budgeted(estimate=CENT, cost=lambda _: CENT)(lambda: None)
    with guard.budget_scope("alice", tags={"team": "search"}):
        assert runs(call, 8) == 5
    with guard.budget_scope("alice", tags={"team": "infra"}):
        assert runs(call, 3) == 3
    assert runs(call, 2) == 2
    assert spent(guard, "tag:team=search") == Decimal("0.05")


def test_a_per_value_tag_budget_gives_each_value_its_own(guard: BudgetGuard) -> None:
    """``tag:tenant=*`` caps every tenant separately; an exact tag budget overrides it."""
    guard.set_budget("0.02", tag="tenant=*", period="daily")
    guard.set_budget("0.04", tag="tenant=big", period="daily")
    call = guard.budgeted(estimate=CENT, cost=lambda _: CENT)(lambda: None)
    for tenant, fits in (("a", 2), ("b", 2), ("big", 4), ("a", 0)):
        with guard.budget_scope(tags={"tenant": tenant}):
            assert runs(call, 5) == fits, tenant


def test_model_pattern_budget_caps_every_matching_model_together(guard: BudgetGuard) -> None:
    """``model:gpt-5*`` caps the calls of all matching models on one key; others run."""
    guard.set_budget("0.03", model="gpt-5*", period="monthly")

    def make(model: str) -> Callable[[], object]:
        return guard.budgeted(estimate=CENT, cost=lambda _: CENT, model=model)(lambda: None)

    assert runs(make("gpt-5"), 2) == 2
    assert runs(make("gpt-5-mini"), 3) == 1
    assert runs(make("gpt-4o"), 3) == 3
    assert spent(guard, "model:gpt-5*") == Decimal("0.03")


def test_every_ancestor_is_checked_in_the_same_reservation(guard: BudgetGuard) -> None:
    """org -> team -> user: the tightest ancestor refuses, and nothing is held for it."""
    guard.set_budget("0.03", tag="org=acme", period="monthly")
    guard.set_budget("0.10", tag="team=search", period="monthly", parent="tag:org=acme")
    guard.set_budget("1.00", user="alice", period="monthly", parent="tag:team=search")
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    with pytest.raises(BudgetExceededError) as refused:
        for _ in range(10):
            call()
    assert refused.value.budget == "tag:org=acme"
    assert spent(guard, "tag:org=acme") == Decimal("0.03")
    assert spent(guard, "tag:team=search") == Decimal("0.03")
    assert spent(guard, "user:alice") == Decimal("0.03")
    assert guard.ledger.open_reservations() == []


def test_a_parent_cycle_is_refused_and_changes_nothing(guard: BudgetGuard) -> None:
    """A parent that would make a budget its own ancestor is refused at the door."""
    guard.set_budget("1", tag="team=a", parent="tag:team=b")
    guard.set_budget("1", tag="team=b")
    with pytest.raises(ValueError, match="own ancestor"):
        guard.set_budget("1", tag="team=b", parent="tag:team=a")
    assert guard.get_budget(tag="team=b").parent is None  # type: ignore[union-attr]


def test_several_windows_per_subject(guard: BudgetGuard, clock: Clock) -> None:
    """$0.02 a day and $0.05 a month for one user: both hold, each in its own window."""
    clock.now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc).timestamp()
    guard.set_budget("0.05", user="alice", period="monthly")
    guard.set_budget("0.02", user="alice", period="daily", label="daily")
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    per_day = []
    for _ in range(5):  # two calls fit each day, five in the month
        per_day.append(runs(call, 4))
        clock.advance(86400)
    assert per_day == [2, 2, 1, 0, 0]
    assert spent(guard, "user:alice") == Decimal("0.05")


def test_tokens_per_minute_reserve_the_estimate_and_charge_the_usage(guard: BudgetGuard) -> None:
    """A tokens budget reserves ``tokens=`` and is charged the tokens the response reports."""
    guard.set_budget(1000, user="alice", unit="tokens", period=60)

    @guard.budgeted(user="alice", estimate=CENT, tokens=(300, 200))
    def call() -> dict[str, Any]:
        return response(given=200, written=100)

    assert runs(call, 2) == 2  # each reserves 500, settles 300
    assert spent(guard, "tokens@user:alice") == Decimal(600)
    with pytest.raises(BudgetExceededError) as refused:
        call()  # 600 + 500 > 1000
    assert refused.value.unit == "tokens"
    assert "1000 tokens" in str(refused.value)


def test_input_and_output_token_budgets_count_their_own_side(guard: BudgetGuard) -> None:
    """input_tokens and output_tokens budgets are charged the input and the output."""
    guard.set_budget(10_000, user="alice", unit="input_tokens", period="daily")
    guard.set_budget(10_000, user="alice", unit="output_tokens", period="daily")
    call = guard.budgeted(user="alice", estimate=CENT)(lambda: response(given=120, written=30))
    assert runs(call, 3) == 3
    assert spent(guard, "input_tokens@user:alice") == Decimal(360)
    assert spent(guard, "output_tokens@user:alice") == Decimal(90)


def test_requests_per_window(guard: BudgetGuard, clock: Clock) -> None:
    """A requests budget counts calls per window; the next window starts again."""
    guard.set_budget(3, user="alice", unit="requests", period=60)
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    assert runs(call, 5) == 3
    clock.advance(61)  # the window is anchored at the budget's creation, to the microsecond
    assert runs(call, 5) == 3


def test_concurrency_counts_calls_in_flight(guard: BudgetGuard) -> None:
    """A concurrency limit refuses a call while that many are running, and frees on exit."""
    guard.set_budget(1, user="alice", unit="concurrency")
    inside: list[str] = []

    @guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)
    def outer() -> None:
        with pytest.raises(BudgetExceededError) as refused:
            inner()
        inside.append(refused.value.unit)

    @guard.budgeted(user=lambda: "alice", estimate=CENT, cost=lambda _: CENT)
    def inner() -> None:
        pass

    # A nested guarded call does not take a place of its own (its outer call holds it)...
    @guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)
    def nested() -> None:
        inner()

    nested()
    # ... but a second call of the user from another thread does not fit while one runs.
    started, release = threading.Event(), threading.Event()

    @guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)
    def slow() -> None:
        started.set()
        release.wait(10)

    worker = threading.Thread(target=slow)
    worker.start()
    assert started.wait(10)
    with pytest.raises(BudgetExceededError) as refused:
        inner()
    release.set()
    worker.join()
    assert refused.value.unit == "concurrency"
    assert "1 calls in flight at most" in str(refused.value)
    inner()  # free again
    assert guard.ledger.open_reservations() == []


def test_a_sliding_window_counts_the_previous_window_by_its_share(
    make_ledger: Callable[..., Ledger], clock: Clock
) -> None:
    """Halfway into a window, half of the previous window's requests still count."""
    guard = BudgetGuard(make_ledger(), metrics=False, clock=clock)
    start = datetime.fromtimestamp(clock.now // 60 * 60, timezone.utc)
    guard.set_budget(10, user="alice", unit="requests", period=60, sliding=True, created_at=start)
    clock.now = start.timestamp() + 1
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    assert runs(call, 12) == 10
    clock.now = start.timestamp() + 60 + 30  # the previous window counts 10 * 0.5
    assert runs(call, 12) == 5
    clock.now = start.timestamp() + 60 + 54  # 10 * 0.1 = 1 of the previous, 5 of this one
    assert runs(call, 12) == 4
    guard.close()


def test_shadow_budget_refuses_nothing_and_counts_exactly(guard: BudgetGuard) -> None:
    """A shadow budget lets 100 racing calls run and counts the 63 it had no room for."""
    guard.set_budget("0.37", user="alice", period="monthly", mode="shadow")
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    barrier = threading.Barrier(100)
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            call()
        except BaseException as error:  # any refusal is a failure here
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    (status,) = [s for s in guard.budget_statuses() if s.name == "user:alice"]
    assert (status.mode, status.over, status.spent) == ("shadow", 63, Decimal("1.00"))


def test_soft_budget_lets_calls_run_and_alerts_once(
    make_ledger: Callable[..., Ledger], clock: Clock
) -> None:
    """A soft budget runs every call, counts those past its limit and alerts once at 100 %."""
    crossings: list[Any] = []
    guard = BudgetGuard(make_ledger(), metrics=False, clock=clock, on_threshold=crossings.append)
    guard.set_budget("0.03", user="alice", period="monthly", mode="soft")
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    assert runs(call, 6) == 6
    (status,) = guard.budget_statuses()
    assert (status.over, status.spent) == (3, Decimal("0.06"))
    assert [(c.budget, c.fraction) for c in crossings] == [("user:alice", Decimal(1))]
    guard.close()


def test_zero_cost_calls_are_not_refused_by_a_spent_dollar_budget(guard: BudgetGuard) -> None:
    """A model priced at zero (a local model) runs when the dollar budget is spent."""
    register_model("test-local-free-model", input=0, output=0)
    guard.set_budget("0.01", user="alice", period="monthly")
    guard.set_budget(4, user="alice", unit="requests", period="daily")  # record_spend counts one
    paid = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    free = guard.budgeted(
        user="alice", model="test-local-free-model", estimate=0, cost=lambda _: 0
    )(lambda: None)
    paid()
    assert runs(paid, 1) == 0
    with guard.budget_scope("alice", limit="0.01"):  # a spent scope cap counts dollars too
        guard.record_spend("0.01")
        free()
    free()  # the dollar budget is spent, but this call costs nothing...
    with pytest.raises(BudgetExceededError) as refused:
        free()  # ... while its requests limit still counts it
    assert refused.value.unit == "requests"


def test_a_boost_raises_the_limit_until_it_ends(guard: BudgetGuard, clock: Clock) -> None:
    """A boost lifts a limit for a while; the base budget is untouched and applies after."""
    clock.now = datetime(2026, 12, 10, 12, tzinfo=timezone.utc).timestamp()
    guard.set_budget("0.02", user="alice", period="monthly")
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    assert runs(call, 3) == 2
    guard.boost_budget("0.04", user="alice", duration=timedelta(hours=1))
    assert runs(call, 3) == 2
    assert guard.get_budget(user="alice").limit == Decimal("0.02")  # type: ignore[union-attr]
    clock.advance(3601)
    assert runs(call, 1) == 0


def test_a_boost_of_no_budget_is_refused(guard: BudgetGuard) -> None:
    """Boosting a budget that does not exist names the problem and stores nothing."""
    with pytest.raises(ValueError, match="no budget 'user:bob' to boost"):
        guard.boost_budget("5", user="bob", duration=60)
    assert guard.budgets() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unit": "bananas"}, "unknown unit"),
        ({"mode": "strict"}, "unknown mode"),
        ({"label": "has space"}, "label"),
        ({"tag": "no-equals-sign"}, "key=value"),
        ({"tag": "team=x", "user": "alice"}, "one subject"),
        ({"unit": "tokens", "limit": "1.5"}, "whole number"),
        ({"sliding": True}, "sliding budget needs a period"),
        ({"parent": "default"}, "not one budget"),
    ],
)
def test_bad_budgets_are_refused_at_the_door(
    guard: BudgetGuard, options: dict[str, Any], message: str
) -> None:
    """Malformed subjects, units, modes, labels and limits raise and store nothing."""
    options = dict(options)
    limit = options.pop("limit", "1")
    with pytest.raises(ValueError, match=message):
        guard.set_budget(limit, **options)
    assert guard.budgets() == []


# -- the race: dollars, tokens per minute and concurrency on overlapping subjects ---------


def _mixed_budgets(guard: BudgetGuard) -> None:
    guard.set_budget("0.37", user="alice", period="monthly")  # 37 calls of a cent
    guard.set_budget(3000, tag="team=search", unit="tokens", period=60)  # 30 calls of 100
    guard.set_budget(25, tag="team=search", unit="concurrency")  # 25 at once


def _check_counters(guard: BudgetGuard) -> None:
    statuses = {s.name: s for s in guard.budget_statuses()}
    assert statuses["user:alice"].spent == Decimal("0.30")
    assert statuses["tokens@tag:team=search"].spent == Decimal(3000)
    assert statuses["concurrency@tag:team=search"].reserved == 0
    for status in statuses.values():
        assert status.spent + status.reserved <= status.limit, status
    assert guard.ledger.open_reservations() == []


def _thread_wave(guard: BudgetGuard) -> tuple[int, int]:
    """Race 100 threads once; admitted calls hold their place until all have tried.

    Return how many ran and the most that ran at once.
    """
    lock = threading.Lock()
    everyone = threading.Event()
    counts = {"tried": 0, "running": 0, "peak": 0}

    def attempted() -> None:
        with lock:
            counts["tried"] += 1
            if counts["tried"] == 100:
                everyone.set()

    @guard.budgeted(user="alice", estimate=CENT, tokens=100, cost=lambda _: CENT)
    def call() -> None:
        with lock:
            counts["running"] += 1
            counts["peak"] = max(counts["peak"], counts["running"])
        attempted()
        everyone.wait(30)  # hold the place until every caller has tried
        with lock:
            counts["running"] -= 1

    barrier = threading.Barrier(100)
    results: list[bool] = []

    def one() -> None:
        barrier.wait()
        try:
            with guard.budget_scope(tags={"team": "search"}):
                call()
        except BudgetExceededError:
            attempted()
            results.append(False)
            return
        results.append(True)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(results), counts["peak"]


def test_hundred_threads_race_dollars_tokens_and_concurrency(guard: BudgetGuard) -> None:
    """100 threads, three waves: concurrency admits 25, then tokens 5, then nothing."""
    _mixed_budgets(guard)
    for wave, admissible in enumerate((25, 5, 0)):
        ran, peak = _thread_wave(guard)
        assert ran == admissible, f"wave {wave}"
        assert peak <= 25
    _check_counters(guard)


async def _task_wave(guard: BudgetGuard) -> int:
    """Race 100 tasks once; admitted calls hold their place until all have tried."""
    everyone = asyncio.Event()
    tried = [0]

    def attempted() -> None:
        tried[0] += 1
        if tried[0] == 100:
            everyone.set()

    @guard.budgeted(user="alice", estimate=CENT, tokens=100, cost=lambda _: CENT)
    async def call() -> None:
        attempted()
        await asyncio.wait_for(everyone.wait(), 30)

    async def one() -> bool:
        try:
            async with guard.budget_scope(tags={"team": "search"}):
                await call()
        except BudgetExceededError:
            attempted()
            return False
        return True

    return sum(await asyncio.gather(*(one() for _ in range(100))))


async def test_hundred_tasks_race_dollars_tokens_and_concurrency(guard: BudgetGuard) -> None:
    """100 asyncio tasks, three waves: concurrency admits 25, then tokens 5, then nothing."""
    _mixed_budgets(guard)
    for wave, admissible in enumerate((25, 5, 0)):
        assert await _task_wave(guard) == admissible, f"wave {wave}"
    _check_counters(guard)


def test_recorded_spend_charges_each_unit_its_own_amount(guard: BudgetGuard) -> None:
    """record() charges dollars, one request and the response's tokens, each on its budgets."""
    guard.set_budget("1", user="alice", period="monthly")
    guard.set_budget(10, user="alice", unit="requests", period="daily")
    guard.set_budget(10_000, user="alice", unit="tokens", period="daily")
    guard.set_budget(2, user="alice", unit="concurrency")
    guard.record(response(given=100, written=50), user="alice")
    guard.record_spend("0.25", user="alice")
    statuses = {s.name: s for s in guard.budget_statuses()}
    assert statuses["requests@user:alice"].spent == 2
    assert statuses["tokens@user:alice"].spent == 150
    assert statuses["concurrency@user:alice"].spent == 0
    assert statuses["user:alice"].spent == Decimal("0.25") + Decimal("0.000045")


def test_tag_tallies_follow_each_calls_own_tags(guard: BudgetGuard) -> None:
    """One user's calls under tags a, b, a: the report by tag gives a 2 cents, b 1 cent."""
    from budgetguard.report import build_report

    guard.set_budget("1", user="alice", period="monthly")
    call = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)
    for team in ("a", "b", "a"):
        with guard.budget_scope(tags={"team": team}):
            call()
    spend = {row.tag: row.spent for row in build_report(guard, by=("tag",)).spend}
    assert spend == {"team=a": Decimal("0.02"), "team=b": Decimal("0.01")}


def test_remaining_counts_a_boost_in_force(guard: BudgetGuard) -> None:
    """remaining() uses the boosted limit while the boost lasts."""
    guard.set_budget("0.10", user="alice", period="monthly")
    guard.boost_budget("0.25", user="alice", duration=3600)
    assert guard.remaining("alice") == Decimal("0.25")
    assert guard.delete_budget(user="alice", boost=True)
    assert guard.remaining("alice") == Decimal("0.10")


def test_a_failed_settle_keeps_every_units_amount_in_the_outbox() -> None:
    """A settle the ledger refuses is written later with its tokens and request, not only $."""
    from budgetguard.errors import StorageError
    from budgetguard.ledger.memory import MemoryLedger

    class Flaky(MemoryLedger):
        fail = 1

        def settle(self, reservation: Any, amount: Any, tallies: Any = ()) -> bool:
            if self.fail:
                self.fail -= 1
                raise StorageError("the disk is full")
            return super().settle(reservation, amount, tallies)

    guard = BudgetGuard(Flaky(), metrics=False)
    guard.set_budget(10_000, user="alice", unit="tokens", period="daily")
    guard.set_budget(10, user="alice", unit="requests", period="daily")
    call = guard.budgeted(user="alice", estimate=CENT)(lambda: response(given=100, written=50))
    call()  # its settle fails: kept in the outbox
    assert len(guard._outbox) == 1
    call()  # the outbox is written first, then this call
    statuses = {s.name: s for s in guard.budget_statuses()}
    assert statuses["tokens@user:alice"].spent == 300
    assert statuses["requests@user:alice"].spent == 2
    assert statuses["tokens@user:alice"].reserved == 0
    guard.close()


async def test_concurrency_holds_for_as_long_as_a_generator_runs(guard: BudgetGuard) -> None:
    """Sync and async generators hold their place until they end, and free it then."""
    guard.set_budget(1, user="alice", unit="concurrency")
    plain = guard.budgeted(user="alice", estimate=CENT, cost=lambda _: CENT)(lambda: None)

    @guard.budgeted(user="alice", estimate=CENT)
    def numbers() -> Iterator[int]:
        yield 1
        yield 2

    @guard.budgeted(user="alice", estimate=CENT)
    async def letters() -> Any:
        yield "a"
        yield "b"

    running = numbers()
    assert next(running) == 1
    assert runs(plain, 1) == 0  # the generator still runs
    assert list(running) == [2]
    assert runs(plain, 1) == 1
    streaming = letters()
    assert await streaming.__anext__() == "a"
    assert runs(plain, 1) == 0
    assert [x async for x in streaming] == ["b"]
    assert runs(plain, 1) == 1
    assert guard.ledger.open_reservations() == []
