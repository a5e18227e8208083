"""@budgeted on every kind of function: who pays, what is reserved, what is charged."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

import budgetguard as bg
from budgetguard import BudgetExceededError, BudgetGuard, arg, budget_scope, budgeted, charge


@pytest.fixture(autouse=True)
def _global_budget(guard: BudgetGuard) -> None:
    """Give the guard a generous global budget, so that every call holds a reservation."""
    guard.set_budget("1000")


def no_open_reservations(guard: BudgetGuard) -> bool:
    assert guard.get_budget() is not None  # without a budget nothing is ever reserved
    return guard.ledger.open_reservations() == []


# -- the shapes of the decorator and of the functions --------------------------------------


def test_bare_decorator_uses_the_default_guard() -> None:
    """@budgeted without parentheses guards the function with the default guard."""

    @budgeted
    def call() -> str:
        charge("0.25")
        return "ok"

    bg.set_budget("0.60", user="alice")
    with budget_scope("alice"):
        assert call() == "ok"
        assert call() == "ok"  # no estimate: it reserves the $0.25 the first call cost
        with pytest.raises(BudgetExceededError):
            call()  # $0.50 spent + $0.25 learned > $0.60: refused before it runs
    assert bg.spend("alice") == Decimal("0.50")


def test_decorator_with_arguments(guard: BudgetGuard) -> None:
    """@budgeted(...) with options guards the function with the given guard."""

    @budgeted(guard=guard, user="alice", cost=lambda result: result)
    def call(amount: str) -> str:
        return amount

    assert call("0.20") == "0.20"
    assert guard.spend("alice") == Decimal("0.20")


def test_keeps_name_doc_and_signature(guard: BudgetGuard) -> None:
    """The wrapper keeps __name__, __doc__, __wrapped__ and inspect.signature."""

    def answer(question: str, *, model: str = "m", retries: int = 2) -> str:
        """Answer a question."""
        return question

    wrapped = guard.budgeted(answer)
    assert wrapped.__name__ == "answer"
    assert wrapped.__doc__ == "Answer a question."
    assert inspect.signature(wrapped) == inspect.signature(answer)
    assert wrapped.__wrapped__ is answer


async def test_async_function_stays_a_coroutine_function(guard: BudgetGuard) -> None:
    """An async def stays a coroutine function and is charged after it is awaited."""

    @guard.budgeted(user="alice", cost=lambda _: "0.5")
    async def call(x: int) -> int:
        """Double x."""
        await asyncio.sleep(0)
        return x * 2

    assert inspect.iscoroutinefunction(call)
    assert call.__name__ == "call"
    assert await call(21) == 42
    assert guard.spend("alice") == Decimal("0.5")


def test_generator_function_is_guarded(guard: BudgetGuard) -> None:
    """A generator function stays a generator function; cost= receives the items."""

    @guard.budgeted(user="alice", cost=lambda items: Decimal(len(items)) / 10)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    assert inspect.isgeneratorfunction(numbers.__wrapped__)
    assert list(numbers(3)) == [0, 1, 2]
    assert guard.spend("alice") == Decimal("0.3")
    assert no_open_reservations(guard)


async def test_async_generator_function_is_guarded(guard: BudgetGuard) -> None:
    """An async generator is charged when it finishes."""

    @guard.budgeted(user="alice")
    async def chunks() -> AsyncIterator[str]:
        for text in ("a", "b"):
            charge("0.01", model="m")
            yield text

    assert [c async for c in chunks()] == ["a", "b"]
    assert guard.spend("alice") == Decimal("0.02")
    assert no_open_reservations(guard)


def test_method_with_user_argument(guard: BudgetGuard) -> None:
    """On a method, user= names an argument after self; calls through the class work too."""

    class Bot:
        @guard.budgeted(user="customer", cost=lambda _: "0.1")
        def reply(self, customer: str, text: str) -> str:
            return f"{customer}:{text}"

    bot = Bot()
    assert bot.reply("alice", "hi") == "alice:hi"
    assert bot.reply(customer="bob", text="yo") == "bob:yo"
    assert Bot.reply(bot, "carol", "hey") == "carol:hey"
    assert guard.spend("alice") == Decimal("0.1")
    assert guard.spend("bob") == Decimal("0.1")
    assert guard.spend("carol") == Decimal("0.1")


def test_classmethod(guard: BudgetGuard) -> None:
    """@budgeted on a classmethod charges the named user."""

    class Bot:
        @classmethod
        @guard.budgeted(user="customer", cost=lambda _: "0.1")
        def reply(cls, customer: str) -> str:
            return cls.__name__

    assert Bot.reply("alice") == "Bot"
    assert Bot().reply("bob") == "Bot"
    assert guard.spend("alice") == Decimal("0.1")
    assert guard.spend("bob") == Decimal("0.1")


def test_budgeted_above_classmethod(guard: BudgetGuard) -> None:
    """@budgeted placed above @classmethod also charges the named user."""

    class Bot:
        @guard.budgeted(user="customer", cost=lambda _: "0.1")
        @classmethod
        def reply(cls, customer: str) -> str:
            return cls.__name__

    assert Bot.reply("alice") == "Bot"
    assert guard.spend("alice") == Decimal("0.1")


async def test_budgeted_above_async_classmethod(guard: BudgetGuard) -> None:
    """@budgeted above an async @classmethod guards the awaited call."""

    class Bot:
        @guard.budgeted(user="customer", cost=lambda _: "0.1")
        @classmethod
        async def reply(cls, customer: str) -> str:
            await asyncio.sleep(0)
            return cls.__name__

    assert inspect.iscoroutinefunction(Bot.reply)
    assert await Bot.reply("alice") == "Bot"
    assert guard.spend("alice") == Decimal("0.1")


def test_staticmethod(guard: BudgetGuard) -> None:
    """@budgeted on a staticmethod charges the named user."""

    class Bot:
        @staticmethod
        @guard.budgeted(user="customer", cost=lambda _: "0.1")
        def reply(customer: str) -> str:
            return customer

    assert Bot.reply("alice") == "alice"
    assert Bot().reply("bob") == "bob"
    assert guard.spend("alice") == Decimal("0.1")
    assert guard.spend("bob") == Decimal("0.1")


def test_a_plain_function_is_wrapped_unbound_and_every_shell_reads_it_as_none(
    guard: BudgetGuard,
) -> None:
    """wrapt is told a plain function is unbound (no __self__ lookup per call); shells see None.

    Each kind of function takes ``self`` first without being a method, so a
    shell that took wrapt's marker for an instance would look for the user
    one argument too early. The same function put on a class afterwards
    binds as wrapt binds it, and a bound method wrapped keeps wrapt's default.
    """
    from budgetguard import decorators

    class Bot:
        name = "bot"

        def greet(self, customer: str) -> str:
            return f"{self.name}:{customer}"

    def reply(self: Bot, customer: str) -> str:
        return f"{self.name}:{customer}"

    async def areply(self: Bot, customer: str) -> str:
        return customer

    def chunks(self: Bot, customer: str) -> Iterator[str]:
        yield customer

    async def achunks(self: Bot, customer: str) -> AsyncIterator[str]:
        yield customer

    guarded = [
        guard.budgeted(user="customer", cost=lambda _: "0.1")(function)
        for function in (reply, areply, chunks, achunks)
    ]
    assert [g._self_instance for g in guarded] == [decorators._UNBOUND] * 4
    sync, coroutine, generator, agenerator = guarded
    bot = Bot()

    async def drain() -> list[str]:
        return [c async for c in agenerator(bot, "dave")]

    assert sync(bot, "alice") == "bot:alice"
    assert asyncio.run(coroutine(bot, "bob")) == "bob"
    assert list(generator(bot, "carol")) == ["carol"]
    assert asyncio.run(drain()) == ["dave"]

    Bot.answer = sync  # type: ignore[attr-defined]
    assert bot.answer("erin") == "bot:erin"  # type: ignore[attr-defined]
    assert Bot.answer(bot, "frank") == "bot:frank"  # type: ignore[attr-defined]
    bound = guard.budgeted(user="customer", cost=lambda _: "0.1")(bot.greet)
    assert bound._self_instance is None  # a bound method: wrapt's default binding
    assert bound("grace") == "bot:grace"
    for user in ("alice", "bob", "carol", "dave", "erin", "frank", "grace"):
        assert guard.spend(user) == Decimal("0.1")
    assert no_open_reservations(guard)


async def test_async_method(guard: BudgetGuard) -> None:
    """An async method stays a coroutine function and charges the named user."""

    class Bot:
        @guard.budgeted(user="customer", cost=lambda _: "0.1")
        async def reply(self, customer: str) -> str:
            return customer

    assert inspect.iscoroutinefunction(Bot().reply)
    assert await Bot().reply("alice") == "alice"
    assert guard.spend("alice") == Decimal("0.1")


# -- who pays -------------------------------------------------------------------------------


def test_user_literal(guard: BudgetGuard) -> None:
    """A user= string that names no argument is the paying user itself."""

    @guard.budgeted(user="acme", cost=lambda _: "1")
    def call(x: int) -> int:
        return x

    call(1)
    assert guard.spend("acme") == Decimal(1)


def test_user_argument_name_positional_keyword_and_default(guard: BudgetGuard) -> None:
    """user= naming an argument reads it positionally, by keyword, or from its default."""

    @guard.budgeted(user="who", cost=lambda _: "1")
    def call(text: str, who: str = "anon") -> str:
        return text

    call("a", "alice")
    call("b", who="bob")
    call("c")
    assert guard.spend("alice") == guard.spend("bob") == guard.spend("anon") == Decimal(1)


def test_user_int_id_is_used_as_a_string(guard: BudgetGuard) -> None:
    """An int user id taken from an argument is charged as its string."""

    @guard.budgeted(user="user_id", cost=lambda _: "1")
    def call(user_id: int) -> None:
        pass

    call(42)
    assert guard.spend("42") == Decimal(1)


def test_user_arg_marker(guard: BudgetGuard) -> None:
    """arg("name") names an argument explicitly; a missing one fails at decoration."""

    @guard.budgeted(user=arg("customer"), cost=lambda _: "1")
    def call(customer: str) -> None:
        pass

    call("alice")
    assert guard.spend("alice") == Decimal(1)
    with pytest.raises(TypeError, match="nobody"):

        @guard.budgeted(user=arg("nobody"))
        def broken(customer: str) -> None:
            pass


def test_user_callable_receives_the_call_arguments(guard: BudgetGuard) -> None:
    """A callable user= is given the call's arguments and returns the user."""
    seen: list[tuple[Any, ...]] = []

    def who(request: dict[str, str], *, flag: bool = False) -> str:
        seen.append((request, flag))
        return request["user"]

    @guard.budgeted(user=who, cost=lambda _: "1")
    def call(request: dict[str, str], *, flag: bool = False) -> None:
        pass

    call({"user": "alice"}, flag=True)
    assert seen == [({"user": "alice"}, True)]
    assert guard.spend("alice") == Decimal(1)


def test_without_user_the_scope_user_pays(guard: BudgetGuard) -> None:
    """Without user= the current scope's user pays; outside a scope only the total counts."""

    @guard.budgeted(cost=lambda _: "1")
    def call() -> None:
        pass

    with budget_scope("alice"):
        call()
    call()
    assert guard.spend("alice") == Decimal(1)
    assert guard.spend() == Decimal(2)


def test_explicit_user_wins_over_the_scope(guard: BudgetGuard) -> None:
    """user= on the decorator overrides the scope's user."""

    @guard.budgeted(user="bob", cost=lambda _: "1")
    def call() -> None:
        pass

    with budget_scope("alice"):
        call()
    assert guard.spend("bob") == Decimal(1)
    assert guard.spend("alice") == Decimal(0)


def test_bad_user_type_is_refused(guard: BudgetGuard) -> None:
    """A user= that is neither a string nor a callable is a TypeError."""
    with pytest.raises(TypeError):
        guard.budgeted(user=3.5)(lambda: None)


# -- estimate and cost --------------------------------------------------------------------


def test_estimate_amount_is_reserved_during_the_call(guard: BudgetGuard) -> None:
    """estimate= is held on the budget while the function runs."""
    guard.set_budget("1", user="alice")
    during: list[Decimal | None] = []

    @guard.budgeted(user="alice", estimate="0.40", cost=lambda _: "0.10")
    def call() -> None:
        during.append(guard.remaining("alice"))

    call()
    assert during == [Decimal("0.60")]
    assert guard.remaining("alice") == Decimal("0.90")


def test_estimate_callable_receives_the_arguments(guard: BudgetGuard) -> None:
    """A callable estimate= is computed from the call's arguments."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate=lambda n: Decimal(n) / 10, cost=lambda _: 0)
    def call(n: int) -> None:
        pass

    call(10)
    with pytest.raises(BudgetExceededError) as caught:
        call(11)
    assert caught.value.requested == Decimal("1.1")


def test_estimate_too_big_is_refused_before_the_body_runs(guard: BudgetGuard) -> None:
    """A refused call raises BudgetExceededError and never runs the function."""
    guard.set_budget("0.05", user="alice")
    ran: list[bool] = []

    @guard.budgeted(user="alice", estimate="0.10")
    def call() -> None:
        ran.append(True)

    with pytest.raises(BudgetExceededError):
        call()
    assert ran == []
    assert guard.spend("alice") == Decimal(0)


async def test_async_refusal_does_not_run_the_body(guard: BudgetGuard) -> None:
    """A refused coroutine raises when awaited and never runs."""
    guard.set_budget("0", user="alice")
    ran: list[bool] = []

    @guard.budgeted(user="alice")
    async def call() -> None:
        ran.append(True)

    with pytest.raises(BudgetExceededError):
        await call()
    assert ran == []


def test_generator_refusal_does_not_run_the_body(guard: BudgetGuard) -> None:
    """A refused generator raises on first iteration and never runs."""
    guard.set_budget("0", user="alice")
    ran: list[bool] = []

    @guard.budgeted(user="alice")
    def gen() -> Iterator[int]:
        ran.append(True)
        yield 1

    with pytest.raises(BudgetExceededError):
        next(gen())
    assert ran == []


def test_spent_budget_refuses_calls_without_estimate(guard: BudgetGuard) -> None:
    """A budget already at its limit refuses even a call with no estimate."""
    guard.set_budget("0.10", user="alice")
    guard.record_spend("0.10", user="alice")

    @guard.budgeted(user="alice")
    def call() -> None:
        pass

    with pytest.raises(BudgetExceededError):
        call()


def test_cost_callable_receives_the_result(guard: BudgetGuard) -> None:
    """cost= is given the result and its amount is charged."""

    @guard.budgeted(user="alice", cost=lambda result: result["cost"])
    def call() -> dict[str, str]:
        return {"cost": "0.0123"}

    assert call() == {"cost": "0.0123"}
    assert guard.spend("alice") == Decimal("0.0123")


def test_charge_inside_the_call_with_model(guard: BudgetGuard) -> None:
    """charge(amount, model=) inside a guarded call is settled with it, by model."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.5")
    def call() -> None:
        assert charge("0.02", model="gpt-4o") == Decimal("0.02")
        charge(0.03, model="gpt-4o-mini")
        assert guard.spend("alice") == Decimal(0)  # not yet: settled at the end

    call()
    assert guard.spend("alice") == Decimal("0.05")
    assert guard.spend("alice", model="gpt-4o") == Decimal("0.05")
    assert no_open_reservations(guard)


def test_charge_outside_a_call_records_on_the_default_guard() -> None:
    """charge() outside any guarded call records spend at once against the scope's user."""
    with budget_scope("alice"):
        charge("0.5", model="m")
    charge("0.25", user="bob")
    assert bg.spend("alice") == Decimal("0.5")
    assert bg.spend("bob") == Decimal("0.25")
    assert bg.spend_by_model("alice") == {"m": Decimal("0.5")}


def test_cost_and_charge_add_up(guard: BudgetGuard) -> None:
    """The cost of the result and charge() calls are both charged."""

    @guard.budgeted(user="alice", cost=lambda _: "0.1")
    def call() -> None:
        charge("0.2")

    call()
    assert guard.spend("alice") == Decimal("0.3")


def test_cost_above_the_estimate_is_charged_in_full(guard: BudgetGuard) -> None:
    """A call that cost more than its estimate is charged what it cost."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.75")
    def call() -> None:
        pass

    call()
    assert guard.spend("alice") == Decimal("0.75")


# -- a reservation always ends ----------------------------------------------------------------


def test_exception_in_the_body_releases_the_reservation(guard: BudgetGuard) -> None:
    """An exception in the function releases its reservation and charges nothing."""
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.5")
    def call() -> None:
        assert len(guard.ledger.open_reservations()) == 1
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError, match="provider down"):
        call()
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal(0)
    assert guard.remaining("alice") == Decimal(1)


def test_exception_after_charge_keeps_what_was_charged(guard: BudgetGuard) -> None:
    """Money charged before an exception is still spent."""

    @guard.budgeted(user="alice", estimate="0.5")
    def call() -> None:
        charge("0.2")
        raise RuntimeError

    with pytest.raises(RuntimeError):
        call()
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.2")


async def test_async_exception_releases(guard: BudgetGuard) -> None:
    """An exception in a coroutine releases its reservation."""

    @guard.budgeted(user="alice", estimate="0.5")
    async def call() -> None:
        await asyncio.sleep(0)
        raise ValueError

    with pytest.raises(ValueError):
        await call()
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal(0)


async def test_cancellation_releases_the_reservation(guard: BudgetGuard) -> None:
    """Cancelling a task in a guarded coroutine releases its reservation."""
    guard.set_budget("1", user="alice")
    started = asyncio.Event()

    @guard.budgeted(user="alice", estimate="0.5")
    async def call() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    assert len(guard.ledger.open_reservations()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal(0)


async def test_timeout_releases_the_reservation(guard: BudgetGuard) -> None:
    """asyncio.wait_for cancelling a guarded coroutine releases its reservation."""

    @guard.budgeted(user="alice", estimate="0.5")
    async def call() -> None:
        await asyncio.sleep(10)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call(), 0.01)
    assert no_open_reservations(guard)


def make_stream(guard: BudgetGuard, log: list[str]) -> Any:
    guard.set_budget("10", user="alice")

    @guard.budgeted(user="alice", estimate="0.5")
    def stream() -> Iterator[int]:
        try:
            for i in range(10):
                charge("0.01")
                yield i
        finally:
            log.append("inner closed")

    return stream


def test_generator_abandoned_with_break(guard: BudgetGuard) -> None:
    """break out of a generator ends its reservation and charges what charge() recorded."""
    log: list[str] = []
    gen = make_stream(guard, log)()
    for i in gen:
        if i == 2:
            break
    gen.close()  # what leaving a for loop over a temporary does by refcount
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.03")


def test_generator_abandoned_by_break_over_a_temporary(guard: BudgetGuard) -> None:
    """break out of `for x in stream()` ends the reservation when the generator is dropped."""
    log: list[str] = []
    stream = make_stream(guard, log)
    for i in stream():
        if i == 1:
            break
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.02")


def test_generator_close(guard: BudgetGuard) -> None:
    """close() half way ends the reservation and charges what was recorded."""
    log: list[str] = []
    gen = make_stream(guard, log)()
    assert [next(gen), next(gen), next(gen), next(gen)] == [0, 1, 2, 3]
    assert len(guard.ledger.open_reservations()) == 1
    gen.close()
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.04")


def test_generator_exception_thrown_in(guard: BudgetGuard) -> None:
    """An exception thrown into a generator ends it, its reservation and charges what was spent."""
    log: list[str] = []
    gen = make_stream(guard, log)()
    next(gen)
    with pytest.raises(KeyError):
        gen.throw(KeyError("stop"))
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.01")


def test_generator_that_handles_a_thrown_exception_goes_on(guard: BudgetGuard) -> None:
    """A generator that catches a thrown exception keeps streaming under the same call."""

    @guard.budgeted(user="alice")
    def stream() -> Iterator[str]:
        while True:
            try:
                charge("0.01")
                yield "tick"
            except ValueError:
                charge("0.1")
                yield "handled"
                return

    gen = stream()
    assert next(gen) == "tick"
    assert gen.throw(ValueError()) == "handled"
    with pytest.raises(StopIteration):
        next(gen)
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.11")


def test_generator_garbage_collected(guard: BudgetGuard) -> None:
    """A generator dropped half way ends its reservation when collected."""
    log: list[str] = []
    gen = make_stream(guard, log)()
    next(gen)
    next(gen)
    del gen
    gc.collect()
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.02")


def test_generator_error_in_body_releases(guard: BudgetGuard) -> None:
    """An error raised inside a generator before any charge releases its reservation."""

    @guard.budgeted(user="alice", estimate="0.5")
    def stream() -> Iterator[int]:
        yield 1
        raise RuntimeError("broken stream")

    gen = stream()
    assert next(gen) == 1
    with pytest.raises(RuntimeError, match="broken stream"):
        next(gen)
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal(0)


def test_generator_return_value_and_send(guard: BudgetGuard) -> None:
    """send() reaches the inner generator and its return value comes out."""

    @guard.budgeted(user="alice", cost=lambda items: "0")
    def echo() -> Any:
        got = yield "ready"
        yield got
        return "done"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send("hello") == "hello"
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "done"
    assert no_open_reservations(guard)


def make_async_stream(guard: BudgetGuard, log: list[str]) -> Any:
    guard.set_budget("10", user="alice")

    @guard.budgeted(user="alice", estimate="0.5")
    async def stream() -> AsyncIterator[int]:
        try:
            for i in range(10):
                charge("0.01")
                await asyncio.sleep(0)
                yield i
        finally:
            log.append("inner closed")

    return stream


async def test_async_generator_aclose(guard: BudgetGuard) -> None:
    """aclose() half way ends the reservation and charges what was recorded."""
    log: list[str] = []
    agen = make_async_stream(guard, log)()
    assert [await agen.__anext__() for _ in range(3)] == [0, 1, 2]
    assert len(guard.ledger.open_reservations()) == 1
    await agen.aclose()
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.03")


async def test_async_generator_break_then_aclose(guard: BudgetGuard) -> None:
    """break out of `async for` followed by aclose() ends the reservation."""
    log: list[str] = []
    agen = make_async_stream(guard, log)()
    async for i in agen:
        if i == 1:
            break
    await agen.aclose()
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.02")


async def test_async_generator_exception_thrown_in(guard: BudgetGuard) -> None:
    """athrow() ends the async generator and its reservation."""
    log: list[str] = []
    agen = make_async_stream(guard, log)()
    await agen.__anext__()
    with pytest.raises(KeyError):
        await agen.athrow(KeyError("stop"))
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.01")


async def test_async_generator_error_in_body_releases(guard: BudgetGuard) -> None:
    """An error inside an async generator before any charge releases its reservation."""

    @guard.budgeted(user="alice", estimate="0.5")
    async def stream() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError):
        async for _ in stream():
            pass
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal(0)


async def test_async_generator_garbage_collected(guard: BudgetGuard) -> None:
    """An async generator dropped half way ends its reservation once the loop finalises it."""
    log: list[str] = []
    agen = make_async_stream(guard, log)()
    await agen.__anext__()
    del agen
    gc.collect()
    for _ in range(10):
        await asyncio.sleep(0)
    assert log == ["inner closed"]
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.01")


async def test_async_generator_cancelled(guard: BudgetGuard) -> None:
    """Cancelling a task consuming an async generator ends the reservation."""
    log: list[str] = []
    stream = make_async_stream(guard, log)

    async def consume() -> None:
        async for i in stream():
            if i == 1:
                await asyncio.Event().wait()

    task = asyncio.create_task(consume())
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(10):
        await asyncio.sleep(0)
    gc.collect()
    for _ in range(10):
        await asyncio.sleep(0)
    assert no_open_reservations(guard)
    assert guard.spend("alice") == Decimal("0.02")


def test_user_that_looks_like_a_misspelt_argument_is_refused(guard: BudgetGuard) -> None:
    """@budgeted(user="usr") on f(user, ...) is refused at decoration, naming the argument."""

    def answer(user: str, question: str) -> None:
        return None

    with pytest.raises(TypeError, match="'user'"):
        guard.budgeted(user="usr")(answer)


def test_marked_literal_user_charges_that_user(guard: BudgetGuard) -> None:
    """user=literal("usr") charges a user literally named "usr", even beside an argument 'user'."""

    @guard.budgeted(user=bg.literal("usr"), cost=lambda _: "0.01")
    def answer(user: str) -> None:
        return None

    answer("alice")
    assert guard.spend("usr") == Decimal("0.01")
    assert guard.spend("alice") == 0


def test_unrelated_literal_user_stays_a_literal(guard: BudgetGuard) -> None:
    """A user= string far from every argument name is a literal id, as before."""

    @guard.budgeted(user="alice", cost=lambda _: "0.01")
    def answer(question: str) -> None:
        return None

    answer("hi")
    assert guard.spend("alice") == Decimal("0.01")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_estimate_callable_is_asked_once_per_call(kind: str) -> None:
    guard = BudgetGuard("memory://", metrics=False)
    guard.set_budget("10", user="alice")
    asked: list[str] = []

    def estimate(prompt: str) -> str:
        asked.append(prompt)
        return "0.01"

    if kind == "sync":

        @guard.budgeted(user="alice", estimate=estimate, cost=lambda r: "0.002")
        def call(prompt: str) -> str:
            return prompt

        for prompt in ("a", "b"):
            call(prompt)
    else:

        @guard.budgeted(user="alice", estimate=estimate, cost=lambda r: "0.002")
        async def acall(prompt: str) -> str:
            return prompt

        async def both() -> None:
            for prompt in ("a", "b"):
                await acall(prompt)

        asyncio.run(both())
    assert asked == ["a", "b"]
    assert guard.spend("alice") == Decimal("0.004")


class _Outcomes:
    """A listener that keeps each call's outcome."""

    def __init__(self) -> None:
        self.ended: list[Any] = []

    def call_ended(self, outcome: Any) -> None:
        self.ended.append(outcome)

    def call_refused(self, error: Any, *, user: Any, request_model: Any) -> None:
        pass

    def threshold_crossed(self, crossing: Any) -> None:
        pass

    def storage_failed(self, error: Any, *, policy: Any) -> None:
        pass


_USAGE = {"prompt_tokens": 1_000, "completion_tokens": 200}
_RESULTS: dict[str, Any] = {
    "priced": {"object": "chat.completion", "model": "gpt-4o-mini", "usage": _USAGE},
    "unknown model": {"object": "chat.completion", "model": "no-such-model", "usage": _USAGE},
    "no model": {"object": "chat.completion", "usage": _USAGE},
    "reported cost": {
        "object": "chat.completion",
        "model": "openai/gpt-4o-mini",
        "usage": {**_USAGE, "cost": 0.000123},
    },
    "no usage": {"object": "chat.completion", "model": "gpt-4o-mini"},
    "cached": {
        "model": "deepseek-chat",
        "usage": {**_USAGE, "prompt_cache_hit_tokens": 600},
    },
}


def _ended_on(
    monkeypatch: pytest.MonkeyPatch, ttl: float, kind: str, response: Any, policy: dict[str, str]
) -> tuple[Decimal, list[str], Any]:
    """Return the spend, errors and last outcome of two calls that answer ``response``."""
    guard = BudgetGuard(metrics=False, budget_cache_ttl=ttl, **policy)  # type: ignore[arg-type]
    guard.set_budget("100", user="alice")
    outcomes = _Outcomes()
    guard.add_listener(outcomes)
    general: list[int] = []
    name = "_begin" if kind == "sync" else "_abegin"
    begin = getattr(guard, name)
    monkeypatch.setattr(guard, name, lambda *a, **k: (general.append(1), begin(*a, **k))[1])
    decorate = guard.budgeted(user="alice", estimate="0.01", model="gpt-4o")
    if kind == "sync":
        run = decorate(lambda: response)
    else:

        async def answer() -> Any:
            return response

        arun = decorate(answer)

        def run() -> Any:
            return asyncio.run(arun())

    raised = []
    for _ in range(2):  # the first call reads the definitions; the second is compared
        general.clear()
        try:
            run()
        except Exception as error:
            raised.append(type(error).__name__)
    assert (len(general) > 0) == (ttl == 0), "the path under test was not taken"
    spent = guard.spend("alice")
    guard.close()
    outcome = outcomes.ended[-1]
    assert len(outcome) == len(type(outcome)._fields)  # every field of CallOutcome filled
    return spent, raised, outcome._replace(duration=0, span=None)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("result", sorted(_RESULTS))
@pytest.mark.parametrize(
    "policy",
    [
        {},
        {"on_unknown_model": "ignore"},
        {"on_unknown_model": "raise"},
        {"on_missing_cost": "ignore"},
        {"on_missing_cost": "raise"},
    ],
    ids=["defaults", "unknown-ignore", "unknown-raise", "missing-ignore", "missing-raise"],
)
def test_a_result_ends_the_same_in_one_frame_and_on_the_general_steps(
    monkeypatch: pytest.MonkeyPatch, kind: str, result: str, policy: dict[str, str]
) -> None:
    """What an auto-priced call is charged, raises and reports does not depend on its path.

    The one-frame path (definitions fresh) against the general steps
    (``budget_cache_ttl=0`` re-reads them every call), for every kind of
    ending a response can have.
    """
    from budgetguard import _hooks

    monkeypatch.setattr(_hooks, "active", ())  # a max_budget left by another test
    one_frame = _ended_on(monkeypatch, 3600, kind, _RESULTS[result], policy)
    general = _ended_on(monkeypatch, 0, kind, _RESULTS[result], policy)
    assert one_frame == general


class _Broken(_Outcomes):
    def call_ended(self, outcome: Any) -> None:
        raise RuntimeError("exporter down")


@pytest.mark.parametrize("ttl", [3600, 0], ids=["one-frame", "general"])
def test_a_listener_that_raises_never_breaks_the_call_nor_the_next_listener(
    ttl: float, caplog: pytest.LogCaptureFixture
) -> None:
    """The call returns and is charged; the listeners after the broken one still hear of it."""
    guard = BudgetGuard(metrics=False, budget_cache_ttl=ttl)
    guard.set_budget("10", user="alice")
    after = _Outcomes()
    guard.add_listener(_Broken())
    guard.add_listener(after)
    call = guard.budgeted(user="alice", estimate="0.01", cost=lambda _: "0.002")(lambda: "done")
    with caplog.at_level("ERROR", logger="budgetguard"):
        assert call() == "done"
        assert call() == "done"
    assert guard.spend("alice") == Decimal("0.004")
    assert [outcome.cost for outcome in after.ended] == [Decimal("0.002")] * 2
    assert (
        sum("listener" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
        == 2
    )
    guard.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("ttl", [3600, 0], ids=["one-frame", "general"])
@pytest.mark.parametrize("extra", [None, "0.5"], ids=["priced", "with-charge"])
def test_a_priced_response_is_charged_and_reported_under_its_own_model(
    kind: str, ttl: float, extra: str | None
) -> None:
    """The response's model, not the decorator's, is what the spend is kept and reported under.

    With ``charge()`` inside the call, that amount is added to the priced cost.
    """
    from budgetguard.pricing import cost_of
    from budgetguard.usage import extract_usage

    response = _RESULTS["priced"]
    usage = extract_usage(response)
    assert usage is not None
    priced = cost_of(usage).total
    guard = BudgetGuard(metrics=False, budget_cache_ttl=ttl)
    guard.set_budget("100", user="alice")
    outcomes = _Outcomes()
    guard.add_listener(outcomes)

    def answer_now() -> Any:
        if extra is not None:
            charge(extra)
        return response

    async def answer() -> Any:
        return answer_now()

    decorate = guard.budgeted(user="alice", estimate="1", model="gpt-4o")
    for _ in range(2):  # the first call reads the definitions; the second takes the path
        if kind == "sync":
            decorate(answer_now)()
        else:
            asyncio.run(decorate(answer)())
    expected = priced + (Decimal(extra) if extra else 0)
    assert guard.spend("alice") == 2 * expected
    assert guard.spend_by_model("alice") == {"gpt-4o-mini": 2 * expected}
    assert [o.response_model for o in outcomes.ended] == ["gpt-4o-mini"] * 2
    assert [o.cost for o in outcomes.ended] == [expected] * 2
    guard.close()
