"""Scopes: who pays, nesting, caps, and carrying the context into tasks and threads."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from budgetguard import (
    BudgetExceededError,
    BudgetGuard,
    budget_scope,
    current_scope,
    current_user,
    run_in_context,
    submit_in_context,
)


def test_sync_context_manager_sets_and_restores_the_user() -> None:
    """Inside `with budget_scope(...)` current_user() is that user; outside it is None."""
    assert current_user() is None
    with budget_scope("alice") as scope:
        assert current_user() == "alice"
        assert current_scope() is scope
    assert current_user() is None
    assert current_scope() is None


async def test_async_context_manager_sets_and_restores_the_user() -> None:
    """`async with budget_scope(...)` works like the sync form."""
    async with budget_scope("alice", tags={"team": "a"}) as scope:
        assert current_user() == "alice"
        assert scope.tags == {"team": "a"}
    assert current_user() is None


def test_scope_is_restored_after_an_exception() -> None:
    """An exception leaving the block still restores the outer scope."""
    with budget_scope("outer"):
        with pytest.raises(RuntimeError), budget_scope("inner"):
            raise RuntimeError("boom")
        assert current_user() == "outer"


def test_decorator_on_a_function() -> None:
    """@budget_scope(...) runs each call of a function in the scope."""

    @budget_scope("alice")
    def who() -> str | None:
        """Say who pays."""
        return current_user()

    assert who() == "alice"
    assert who.__name__ == "who"
    assert who.__doc__ == "Say who pays."
    assert current_user() is None


async def test_decorator_on_a_coroutine_function() -> None:
    """@budget_scope(...) on an async function stays a coroutine function."""
    import inspect

    @budget_scope("bob")
    async def who() -> str | None:
        await asyncio.sleep(0)
        return current_user()

    assert inspect.iscoroutinefunction(who)
    assert await who() == "bob"
    assert current_user() is None


def test_nested_scopes_restore_the_outer_one() -> None:
    """Leaving an inner scope brings back the outer scope object itself."""
    with budget_scope("alice") as outer:
        with budget_scope("bob") as inner:
            assert current_user() == "bob"
            assert inner.parent is outer
        assert current_scope() is outer
    assert current_scope() is None


def test_one_scope_object_can_be_reentered() -> None:
    """The same budget_scope object nests in itself and unwinds in order."""
    scope = budget_scope("alice")
    with scope as first:
        with scope as second:
            assert second.parent is first
        assert current_scope() is first
    assert current_scope() is None


def test_inner_scope_inherits_the_user_and_merges_tags() -> None:
    """A scope without a user inherits the outer user; tags merge, inner wins."""
    outer = budget_scope("alice", tags={"team": "a", "env": "prod"})
    with outer, budget_scope(tags={"env": "test", "run": "1"}) as inner:
        assert inner.user == "alice"
        assert current_user() == "alice"
        assert dict(inner.tags) == {"team": "a", "env": "test", "run": "1"}


def test_scope_user_must_be_a_string() -> None:
    """A non-string user is a TypeError."""
    with pytest.raises(TypeError):
        budget_scope(42)  # type: ignore[arg-type]


def test_calls_in_a_scope_are_charged_to_its_user(guard: BudgetGuard) -> None:
    """A @budgeted call without user= charges the scope's user."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(cost=lambda _: "0.30")
    def call() -> None:
        pass

    with budget_scope("alice"):
        call()
    assert guard.spend("alice") == Decimal("0.30")


def test_scope_limit_caps_the_block(guard: BudgetGuard) -> None:
    """limit= refuses calls once the block itself has spent its cap."""

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call() -> None:
        pass

    with budget_scope("alice", limit="0.25"):
        call()
        call()
        with pytest.raises(BudgetExceededError) as caught:
            call()
    assert caught.value.budget == "scope"
    assert caught.value.limit == Decimal("0.25")
    assert caught.value.spent == Decimal("0.20")
    assert caught.value.user == "alice"
    assert guard.spend("alice") == Decimal("0.20")
    with budget_scope("alice", limit="0.25"):  # a new block starts again
        call()


def test_scope_limit_applies_on_top_of_the_user_budget(guard: BudgetGuard) -> None:
    """A generous scope cap does not lift the user's own budget."""
    guard.set_budget("0.15", user="alice")

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call() -> None:
        pass

    with budget_scope("alice", limit="5"):
        call()
        with pytest.raises(BudgetExceededError) as caught:
            call()
    assert caught.value.budget == "user:alice"


def test_scope_limit_applies_on_top_of_the_global_budget(guard: BudgetGuard) -> None:
    """A scope cap does not lift the global budget either."""
    guard.set_budget("0.15")

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call() -> None:
        pass

    with budget_scope("alice", limit="5"):
        call()
        with pytest.raises(BudgetExceededError) as caught:
            call()
    assert caught.value.budget == "global"


def test_nested_caps_all_apply(guard: BudgetGuard) -> None:
    """An inner cap and the outer cap both count the inner block's spend."""

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call() -> None:
        pass

    with budget_scope("alice", limit="0.35"):
        call()
        with budget_scope(limit="0.15"):
            call()
            with pytest.raises(BudgetExceededError) as inner:
                call()
        assert inner.value.limit == Decimal("0.15")
        with budget_scope(limit="1.00"):
            call()  # outer block has now spent 0.30
            with pytest.raises(BudgetExceededError) as outer:
                call()
        assert outer.value.limit == Decimal("0.35")
        assert outer.value.spent == Decimal("0.30")


def test_scope_cap_counter_is_dropped_after_the_block(guard: BudgetGuard) -> None:
    """When a capped block ends its counter leaves the ledger."""

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call() -> None:
        pass

    with budget_scope("alice", limit="1") as scope:
        call()
        assert guard.ledger.balances([scope.key])[scope.key].spent == 100_000_000
    assert guard.ledger.scan("s|") == {}
    assert guard.spend("alice") == Decimal("0.10")


async def test_context_flows_into_asyncio_tasks() -> None:
    """Tasks started with asyncio.gather see the scope they were created in."""

    async def who(delay: float) -> str | None:
        await asyncio.sleep(delay)
        return current_user()

    async with budget_scope("alice"):
        found = await asyncio.gather(who(0.01), who(0), asyncio.create_task(who(0)))
    assert found == ["alice", "alice", "alice"]


async def test_tasks_in_different_scopes_do_not_mix() -> None:
    """Concurrent tasks each keep their own scope."""

    async def run(user: str) -> list[str | None]:
        seen = []
        async with budget_scope(user):
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append(current_user())
        return seen

    results = await asyncio.gather(*(run(f"u{i}") for i in range(5)))
    assert results == [[f"u{i}"] * 3 for i in range(5)]


async def test_scope_cap_holds_across_gathered_tasks(guard: BudgetGuard) -> None:
    """Gathered tasks inside one capped block share its cap."""

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    async def call() -> str:
        await asyncio.sleep(0)
        return "ok"

    async with budget_scope("alice", limit="0.30"):
        results = await asyncio.gather(*(call() for _ in range(5)), return_exceptions=True)
    assert results.count("ok") == 3
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 2
    assert guard.spend("alice") == Decimal("0.30")


def test_run_in_context_carries_the_scope_into_a_thread_pool() -> None:
    """run_in_context and submit_in_context carry the scope; a plain submit does not."""
    with ThreadPoolExecutor(max_workers=2) as pool, budget_scope("alice"):
        plain = pool.submit(current_user).result()
        wrapped = pool.submit(run_in_context(current_user)).result()
        submitted = submit_in_context(pool, current_user).result()
    assert plain is None
    assert wrapped == "alice"
    assert submitted == "alice"


def test_run_in_context_passes_arguments() -> None:
    """A function bound with run_in_context receives its arguments."""

    def greet(greeting: str, *, mark: str) -> str:
        return f"{greeting} {current_user()}{mark}"

    with ThreadPoolExecutor(max_workers=1) as pool, budget_scope("bob"):
        assert submit_in_context(pool, greet, "hi", mark="!").result() == "hi bob!"
        bound = run_in_context(current_user)
    assert bound() == "bob"  # the binding outlives the block
    assert current_user() is None


async def test_run_in_context_with_run_in_executor() -> None:
    """loop.run_in_executor runs a bound function in the scope."""
    loop = asyncio.get_running_loop()
    async with budget_scope("carol"):
        found = await loop.run_in_executor(None, run_in_context(current_user))
    assert found == "carol"


def test_guarded_calls_in_threads_charge_the_scope_user(guard: BudgetGuard) -> None:
    """Calls submitted with submit_in_context are charged to the scope's user and cap."""
    guard.set_budget("10", user="alice")

    @guard.budgeted(estimate="0.10", cost=lambda _: "0.10")
    def call() -> str | None:
        return current_user()

    with ThreadPoolExecutor(max_workers=4) as pool, budget_scope("alice", limit="0.50"):
        futures = [submit_in_context(pool, call) for _ in range(8)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except BudgetExceededError:
                outcomes.append("refused")
    assert outcomes.count("alice") == 5
    assert outcomes.count("refused") == 3
    assert guard.spend("alice") == Decimal("0.50")
