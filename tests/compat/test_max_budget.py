"""``budgetguard.max_budget``: LiteLLM's process-wide budget and its running total."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

import budgetguard as bg
from budgetguard import BudgetExceededError, BudgetManager

from . import conftest

MESSAGES = [{"role": "user", "content": "Hey, how's it going"}]


def test_set_exceed_refuse() -> None:
    """Calls run until the process spent max_budget; the next raises with both numbers."""
    guard = bg.BudgetGuard(metrics=False)
    completion = guard.budgeted(lambda **kw: conftest.completion(**kw))
    bg.max_budget = 0.005
    assert bg.max_budget == Decimal("0.005")
    spent = Decimal(0)
    calls = 0
    while True:
        try:
            completion(model="gpt-4", messages=MESSAGES)
        except BudgetExceededError as refused:
            assert refused.current_cost == spent == bg._current_cost
            assert refused.max_budget == Decimal("0.005")
            assert "Budget has been exceeded" in str(refused)
            break
        calls += 1
        spent = bg._current_cost
    assert calls == 4  # $0.00159 a call: the fourth passes $0.005
    assert spent >= Decimal("0.005")


def test_every_guard_and_async_calls_count() -> None:
    """The cap is the process's: spend through any guard counts, async calls are refused too."""
    one = bg.BudgetGuard(metrics=False)
    two = bg.BudgetGuard(metrics=False)

    async def acompletion(**kwargs: object) -> object:
        return conftest.completion(**kwargs)  # type: ignore[arg-type]

    bg.max_budget = 0.002
    one.budgeted(lambda **kw: conftest.completion(**kw))(model="gpt-4", messages=MESSAGES)
    two.record_spend("0.001")
    with pytest.raises(BudgetExceededError):
        asyncio.run(two.budgeted(acompletion)(model="gpt-4", messages=MESSAGES))


def test_off_by_default_and_with_none_or_zero() -> None:
    """No cap, ``None`` and ``0`` (LiteLLM's "off") let every call through."""
    guard = bg.BudgetGuard(metrics=False)
    completion = guard.budgeted(lambda **kw: conftest.completion(**kw))
    assert bg.max_budget is None
    for value in (None, 0):
        bg.max_budget = value
        assert bg.max_budget is None
        for _ in range(3):
            completion(model="gpt-4", messages=MESSAGES)


def test_infinity_turns_the_cap_off() -> None:
    """``float("inf")`` (LiteLLM's tests' way to lift the cap) turns it off, like ``None``."""
    guard = bg.BudgetGuard(metrics=False)
    bg.max_budget = 0.001
    guard.record_spend("0.002")
    with pytest.raises(BudgetExceededError):
        guard._begin(None)
    for infinite in (float("inf"), Decimal("Infinity")):
        bg.max_budget = infinite
        assert bg.max_budget is None
        guard._finish(guard._begin(None), Decimal("0.001"))
    assert bg._current_cost == Decimal("0.004")  # still counted while the cap is off


def test_bad_values_are_refused_and_change_nothing() -> None:
    """A max_budget that is not an amount raises at assignment and keeps the old cap."""
    bg.max_budget = 1
    for bad in ("lots", -1, float("nan"), float("-inf"), "inf", True):
        with pytest.raises(ValueError, match="max_budget"):
            bg.max_budget = bad
    assert bg.max_budget == 1


def test_current_cost_can_be_reset() -> None:
    """Assigning ``_current_cost = 0`` restarts the total, so calls are allowed again."""
    guard = bg.BudgetGuard(metrics=False)
    bg.max_budget = 0.001
    guard.record_spend("0.002")
    with pytest.raises(BudgetExceededError):
        guard._begin(None)
    bg._current_cost = 0
    assert bg._current_cost == 0
    guard._finish(guard._begin(None), Decimal("0.0001"))
    assert bg._current_cost == Decimal("0.0001")


def test_budget_manager_bookkeeping_is_not_counted_twice() -> None:
    """update_cost records a call made elsewhere: it does not add to the process total."""
    bg.max_budget = 1
    budget_manager = BudgetManager("p")
    budget_manager.create_budget(10, "u")
    budget_manager.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    assert budget_manager.get_current_cost("u") > 0
    assert bg._current_cost == 0


def test_importable_and_exported() -> None:
    """``max_budget`` and ``BudgetManager`` are part of the package's public names."""
    assert "max_budget" in bg.__all__ and "BudgetManager" in bg.__all__
    from budgetguard import max_budget

    assert max_budget is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_cap_holds_on_calls_that_run_in_one_frame(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call with an estimate and plain budgets keeps its one-frame path under a cap.

    The cap counts it and refuses the call after the process spent it, as on
    the general steps; no call falls back to them because a cap is set.
    """
    guard = bg.BudgetGuard(metrics=False)
    guard.set_budget("100", user="alice")
    general: list[int] = []
    name = "_begin" if kind == "sync" else "_abegin"
    begin = getattr(guard, name)
    monkeypatch.setattr(guard, name, lambda *a, **k: (general.append(1), begin(*a, **k))[1])
    decorate = guard.budgeted(user="alice", estimate="0.002", cost=lambda _: "0.0015")
    if kind == "sync":
        run = decorate(lambda: None)
    else:

        async def answer() -> None:
            return None

        arun = decorate(answer)

        def run() -> None:
            asyncio.run(arun())

    run()  # the first call reads the definitions (general steps), before any cap
    general.clear()
    bg.max_budget = 0.005
    bg._current_cost = 0  # a cap set by an earlier test may have counted the first call
    calls = 0
    with pytest.raises(BudgetExceededError) as refused:
        while calls < 10:
            run()
            calls += 1
    assert calls == 4  # $0.0015 a call: the fourth passes $0.005
    assert refused.value.current_cost == bg._current_cost == Decimal("0.006")
    # The first call and four counted ones; the refused call reserved nothing.
    assert guard.spend("alice") == Decimal("0.0075")
    assert general == []
