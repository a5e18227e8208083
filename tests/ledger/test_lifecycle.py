"""The call lifecycle at the guard's level, on every backend: holds, streams, forks, ends."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

import budgetguard as bg
from budgetguard import BudgetExceededError, BudgetGuard, EstimateMissingError

# gpt-4o-mini: 1000 input and 500 output tokens = 1000 × 0.15/1e6 + 500 × 0.60/1e6
CALL_COST = Decimal("0.00045")


def chat_response(model: str = "gpt-4o-mini") -> dict[str, Any]:
    """Return an OpenAI chat completion with usage, as a plain dict."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
    }


@pytest.fixture
def guard(ledger_url: str) -> Iterator[BudgetGuard]:
    """Return a guard (no metrics) on the backend under test."""
    made = BudgetGuard(ledger_url, metrics=False)
    yield made
    made.close()


def run_threads(count: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads released at once; return results or errors."""
    barrier = threading.Barrier(count)

    def one(i: int) -> Any:
        barrier.wait()
        try:
            return target(i)
        except BudgetExceededError as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_quick_start_shape_without_estimate_admits_at_most_three_of_32(
    guard: BudgetGuard,
) -> None:
    """A function with no estimate and no model arguments still holds: 32 callers, 2 fit."""
    guard.set_budget(CALL_COST * 2, user="alice")
    ran = itertools.count()

    @guard.budgeted(user="user")
    def answer(user: str, question: str) -> dict[str, Any]:
        next(ran)
        time.sleep(0.02)  # the LLM thinks: every caller is in flight at once
        return chat_response()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_threads(32, lambda i: answer("alice", f"question {i}"))
    ran_count = next(ran)
    assert ran_count <= 3
    assert sum(not isinstance(r, BudgetExceededError) for r in results) == ran_count
    assert guard.spend("alice") <= CALL_COST * 2
    assert guard.ledger.open_reservations() == []
    named = [w for w in caught if "answer gave no estimate" in str(w.message)]
    assert len(named) == 1  # one warning, naming the function, the first time


async def test_quick_start_shape_async_admits_at_most_three_of_32(guard: BudgetGuard) -> None:
    """The async twin: 32 tasks against a budget that fits 2 calls, no estimate given."""
    guard.set_budget(CALL_COST * 2, user="alice")
    ran = itertools.count()

    @guard.budgeted(user="user")
    async def answer(user: str, question: str) -> dict[str, Any]:
        next(ran)
        await asyncio.sleep(0.02)
        return chat_response()

    async def one(i: int) -> Any:
        try:
            return await answer("alice", f"question {i}")
        except BudgetExceededError as error:
            return error

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await asyncio.gather(*(one(i) for i in range(32)))
    assert next(ran) <= 3
    assert guard.spend("alice") <= CALL_COST * 2
    assert await guard.aspend("alice") == guard.spend("alice")
    assert guard.ledger.open_reservations() == []


def test_learned_estimate_keeps_spend_within_one_call_of_the_limit(guard: BudgetGuard) -> None:
    """After warm-up, costs varying ±50 %: 64 callers against 10 calls' worth overshoot < 1 call."""
    mean = Decimal("0.01")
    costs = [mean * (Decimal("0.5") + Decimal(i) / 31) for i in range(32)]  # 0.5× … 1.5×

    @guard.budgeted(user="user", cost=lambda result: result)
    def work(user: str, cost: Decimal) -> Decimal:
        time.sleep(0.01)
        return cost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cost in costs:  # warm-up, on a user with no budget
            work("warm-up", cost)
    limit = mean * 10
    guard.set_budget(limit, user="alice")
    results = run_threads(64, lambda i: work("alice", costs[(i * 7) % 32]))
    assert any(isinstance(r, BudgetExceededError) for r in results)
    assert guard.spend("alice") <= limit + max(costs)
    assert guard.ledger.open_reservations() == []


def test_on_missing_estimate_raise_refuses_before_the_call(ledger_url: str) -> None:
    """on_missing_estimate='raise': a call with nothing to estimate from never runs."""
    guard = BudgetGuard(ledger_url, metrics=False, on_missing_estimate="raise")
    ran = []

    @guard.budgeted(user="alice")
    def answer(question: str) -> None:
        ran.append(question)

    with pytest.raises(EstimateMissingError, match="answer"):
        answer("hello")
    assert ran == []
    guard.close()


def test_on_missing_estimate_zero_holds_nothing(ledger_url: str) -> None:
    """on_missing_estimate='zero' is the user's explicit choice: no hold, no slow start."""
    guard = BudgetGuard(ledger_url, metrics=False, on_missing_estimate="zero")
    guard.set_budget(CALL_COST * 2, user="alice")

    @guard.budgeted(user="alice")
    def answer() -> dict[str, Any]:
        return chat_response()

    answer()
    answer()
    with pytest.raises(BudgetExceededError):
        answer()  # spent in full: even a $0 hold does not fit
    guard.close()


def test_positional_model_and_messages_are_estimated(guard: BudgetGuard) -> None:
    """ask('alice', 'gpt-4o', msgs): the estimate reads positional arguments too."""
    guard.set_budget("0.0001", user="alice")
    ran = []

    @guard.budgeted(user="user")
    def ask(user: str, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        ran.append(model)
        return chat_response(model)

    with pytest.raises(BudgetExceededError) as refused:
        ask("alice", "gpt-4o", [{"role": "user", "content": "Write a long story."}])
    assert ran == []  # refused before any money was spent
    assert refused.value.requested > Decimal("0.0001")


def test_estimate_counts_n_choices(guard: BudgetGuard) -> None:
    """n=3 choices reserve three times the output of one."""
    arguments = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1000,
    }
    one = guard.estimate_call(arguments)
    three = guard.estimate_call({**arguments, "n": 3})
    assert one is not None and three is not None
    # 1,000 output tokens at $0.60/M: each extra choice adds $0.0006.
    assert three[0] - one[0] == Decimal("0.0012")


def test_learned_output_size_replaces_the_fixed_default(guard: BudgetGuard) -> None:
    """Without max_tokens, the estimate uses what calls of the model wrote lately."""
    arguments = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    before = guard.estimate_call(arguments)

    @guard.budgeted(user="alice")
    def answer(model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        return chat_response(model)  # writes 500 tokens

    answer(**arguments)
    after = guard.estimate_call(arguments)
    assert before is not None and after is not None
    # 1,024 default output tokens became the 500 learned: 524 × $0.60/M less.
    assert before[0] - after[0] == Decimal("0.0003144")


async def test_nested_async_budgeted_keeps_the_outer_call(guard: BudgetGuard) -> None:
    """charge() after 'await inner()' lands on the outer call, not on the default guard."""

    @guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.01")
    async def inner() -> None:
        return None

    @guard.budgeted(user="alice", estimate="0.10")
    async def outer() -> None:
        await inner()
        bg.charge("0.05")

    await outer()
    assert guard.spend("alice") == Decimal("0.06")
    assert bg.spend() == 0  # nothing leaked to the default guard
    assert guard.ledger.open_reservations() == []


def test_charge_in_a_scope_of_a_guard_charges_that_guard(guard: BudgetGuard) -> None:
    """budgetguard.charge() outside a call, in guard.budget_scope(), charges that guard."""
    with guard.budget_scope("alice"):
        bg.charge("0.50")
    assert guard.spend("alice") == Decimal("0.50")
    assert bg.spend("alice") == 0


def test_charge_with_a_user_inside_a_call_charges_the_calls_guard(guard: BudgetGuard) -> None:
    """charge(user=...) inside a call records it at once for that user, on the call's guard."""

    @guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.01")
    def call() -> None:
        bg.charge("0.20", user="bob")

    call()
    assert guard.spend("bob") == Decimal("0.20")
    assert guard.spend("alice") == Decimal("0.01")
    assert bg.spend("bob") == 0


def test_guard_methods_mirror_the_module_functions(guard: BudgetGuard) -> None:
    """guard.charge, guard.budget_scope, guard.record and guard.prune exist and work."""
    guard.set_budget("1", user="alice")
    with guard.budget_scope("alice", limit="0.5"):
        guard.charge("0.25")
    assert guard.record(chat_response(), user="alice") == CALL_COST
    assert guard.spend("alice") == Decimal("0.25") + CALL_COST
    assert guard.remaining("alice") == Decimal("0.75") - CALL_COST
    assert guard.prune(datetime.now(timezone.utc)) == 0  # nothing ended a day ago


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["raising finally", "ignores GeneratorExit"])
def test_generator_whose_cleanup_raises_ends_its_hold(guard: BudgetGuard, how: str) -> None:
    """A generator whose own cleanup raises still ends its hold and keeps what it charged."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.40")
    def items() -> Iterator[int]:
        bg.charge("0.02")
        if how == "raising finally":
            try:
                yield 1
                yield 2
            finally:
                raise ValueError("cleanup failed")
        else:
            while True:
                try:
                    yield 1
                except GeneratorExit:
                    continue  # yields again: Python raises RuntimeError

    stream = items()
    assert next(stream) == 1
    with pytest.raises((ValueError, RuntimeError)):
        stream.close()
    assert guard.ledger.open_reservations() == []
    assert guard.spend("alice") == Decimal("0.02")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["raising finally", "ignores GeneratorExit"])
async def test_async_generator_whose_cleanup_raises_ends_its_hold(
    guard: BudgetGuard, how: str
) -> None:
    """The async twin: aclose() raising still ends the hold and keeps the charges."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.40")
    async def items() -> AsyncIterator[int]:
        bg.charge("0.02")
        if how == "raising finally":
            try:
                yield 1
                yield 2
            finally:
                raise ValueError("cleanup failed")
        else:
            while True:
                try:
                    yield 1
                except GeneratorExit:
                    continue

    stream = items()
    assert await stream.__anext__() == 1
    with pytest.raises((ValueError, RuntimeError)):
        await stream.aclose()
    assert guard.ledger.open_reservations() == []
    assert guard.spend("alice") == Decimal("0.02")


def test_generator_returned_by_a_guarded_function_is_charged_from_its_chunks(
    guard: BudgetGuard,
) -> None:
    """A plain function returning a generator of chunks settles when the chunks are consumed."""
    guard.set_budget("1", user="alice")

    def chunks() -> Iterator[dict[str, Any]]:
        yield {"object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": []}
        yield {**chat_response(), "object": "chat.completion.chunk", "choices": []}

    @guard.budgeted(user="alice", estimate="0.05")
    def chat() -> Iterator[dict[str, Any]]:
        return chunks()

    stream = chat()
    assert len(guard.ledger.open_reservations()) == 1  # held while the stream is read
    assert len(list(stream)) == 2
    assert guard.spend("alice") == CALL_COST  # the usage, not the $0.05 estimate
    assert guard.ledger.open_reservations() == []


@pytest.mark.shared_only
def test_forked_child_uses_fresh_ids_with_a_guard_built_before_the_fork(
    guard: BudgetGuard,
) -> None:
    """A child forked after the guard was built (gunicorn --preload) never reuses its ids."""
    guard.set_budget("10", user="alice")

    @guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.01")
    def call() -> None:
        return None

    call()  # the parent has used ids before the fork

    def child() -> None:
        try:
            for _ in range(3):
                call()
            with guard.budget_scope("alice", limit="1"):
                call()
        except BaseException:
            os._exit(1)
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0
    for _ in range(4):
        call()  # and the parent's next ids do not collide with the child's
    assert guard.spend("alice") == Decimal("0.09")
    assert guard.ledger.open_reservations() == []


def test_plans_are_kept_per_user_not_per_estimate(guard: BudgetGuard) -> None:
    """Calls of one user with varying estimates share one plan; 2,000 users have 2,000."""
    guard.set_default_budget("100", period="daily")
    guard.set_budget("1000", period="monthly")
    for units in range(1, 50):
        guard._finish(guard._begin("alice", units), Decimal(0))
    assert len(guard._planner._plans) == 1
    for i in range(2_000):
        guard._finish(guard._begin(f"user-{i}", 1), Decimal(0))
    assert len(guard._planner._plans) == 2_001  # no cliff: none was thrown away


# -- the decorator and scopes under concurrency, on every backend ---------------------------


def test_threads_race_a_decorated_function_exactly_k_win(guard: BudgetGuard) -> None:
    """64 threads through @budgeted against a budget that fits 5 calls: exactly 5 run."""
    guard.set_budget("0.50", user="alice")
    ran = itertools.count()

    @guard.budgeted(user="alice", estimate="0.10", cost=lambda _: "0.10")
    def call(i: int) -> None:
        next(ran)
        time.sleep(0.005)

    results = run_threads(64, call)
    assert next(ran) == 5
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 59
    assert guard.spend("alice") == Decimal("0.50")
    assert guard.ledger.open_reservations() == []


async def test_tasks_race_a_decorated_coroutine_exactly_k_win(guard: BudgetGuard) -> None:
    """64 tasks through an async @budgeted against a budget that fits 5 calls: exactly 5 run."""
    guard.set_budget("0.50", user="alice")
    ran = itertools.count()

    @guard.budgeted(user="alice", estimate="0.10", cost=lambda _: "0.10")
    async def call() -> None:
        next(ran)
        await asyncio.sleep(0.005)

    results = await asyncio.gather(*(call() for _ in range(64)), return_exceptions=True)
    assert next(ran) == 5
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 59
    assert guard.spend("alice") == Decimal("0.50")
    assert guard.ledger.open_reservations() == []


def test_threads_share_one_scope_cap(guard: BudgetGuard) -> None:
    """Threads carrying one scope (run_in_context) share its cap: exactly 3 of 32 run."""
    ran = itertools.count()

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call(i: int) -> None:
        next(ran)
        time.sleep(0.005)

    with guard.budget_scope("alice", limit="0.30"):
        in_scope = bg.run_in_context(call)
        results = run_threads(32, in_scope)
    assert next(ran) == 3
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 29
    assert guard.spend("alice") == Decimal("0.30")


def test_generators_race_exactly_k_start(guard: BudgetGuard) -> None:
    """Guarded generators are checked when iteration starts: 16 threads, 4 fit."""
    guard.set_budget("0.40", user="alice")

    @guard.budgeted(user="alice", estimate="0.10", cost=lambda items: "0.10")
    def numbers() -> Iterator[int]:
        time.sleep(0.005)
        yield 1
        yield 2

    results = run_threads(16, lambda i: list(numbers()))
    assert sum(r == [1, 2] for r in results) == 4
    assert guard.spend("alice") == Decimal("0.40")
    assert guard.ledger.open_reservations() == []


async def test_cancelled_call_releases_its_hold(guard: BudgetGuard) -> None:
    """A task cancelled mid-call releases its reservation: the budget is whole again."""
    guard.set_budget("0.10", user="alice")
    started = asyncio.Event()

    @guard.budgeted(user="alice", estimate="0.10")
    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await started.wait()
    assert await guard.aremaining("alice") == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.ledger.open_reservations() == []
    assert await guard.aremaining("alice") == Decimal("0.10")


def test_abandoned_generator_releases_its_hold(guard: BudgetGuard) -> None:
    """A guarded generator dropped half way (break, then collected) ends its reservation."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.40")
    def numbers() -> Iterator[int]:
        yield from range(10)

    for number in numbers():
        if number == 2:
            break
    import gc

    gc.collect()
    assert guard.ledger.open_reservations() == []
    assert guard.spend("alice") == Decimal("0.40")  # nothing reported: the estimate


def test_bedrock_model_id_is_estimated_at_its_own_price(guard: BudgetGuard) -> None:
    """converse(modelId=..., messages=[{content: [{text}]}]) is estimated at the model's price."""
    arguments = {
        "modelId": "amazon.nova-lite-v1:0",
        "messages": [{"role": "user", "content": [{"text": "Write a haiku about budgets."}]}],
        "inferenceConfig": {"maxTokens": 1000},
    }
    found = guard.estimate_call(arguments)
    assert found is not None
    cost, model = found
    assert model == "amazon.nova-lite-v1:0"
    # 1,000 output tokens at $0.24/M plus a short prompt at $0.06/M, not the fallback's $40/M.
    assert Decimal("0.00024") < cost < Decimal("0.0003")

    ran = []

    @guard.budgeted(user="alice")
    def converse(modelId: str, messages: list[Any], inferenceConfig: dict[str, int]) -> None:
        ran.append(modelId)

    guard.set_budget("0.0002", user="alice")
    with pytest.raises(BudgetExceededError):
        converse(**arguments)
    assert ran == []


def test_generator_without_estimate_also_holds_what_it_learned(guard: BudgetGuard) -> None:
    """The learned hold covers generators too: 16 threads, a budget that fits 2, at most 3 run."""
    guard.set_budget(CALL_COST * 2, user="alice")
    ran = itertools.count()

    @guard.budgeted(user="alice")
    def chunks(i: int) -> Iterator[dict[str, Any]]:
        next(ran)
        time.sleep(0.02)
        yield {**chat_response(), "object": "chat.completion.chunk", "choices": []}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_threads(16, lambda i: list(chunks(i)))
    assert next(ran) <= 3
    assert guard.spend("alice") <= CALL_COST * 2
    assert guard.ledger.open_reservations() == []
