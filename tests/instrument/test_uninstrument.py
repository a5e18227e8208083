"""uninstrument() removes only budgetguard's own wrapper, never one applied after it."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
import wrapt
from openai.resources.chat.completions import AsyncCompletions, Completions

from budgetguard import BudgetGuard, budget_scope, instrument, uninstrument
from budgetguard._instrument import instrumented

from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
# gpt-4o-mini, 1000 input and 500 output tokens (every answer of the fake API):
# 1000 × 0.15 / 1e6 + 500 × 0.60 / 1e6 = $0.00045
CHAT_COST = Decimal("0.00045")
CREATE = f"{Completions.__module__}.Completions.create"


class OtherWrapper:
    """A second instrumentation, applied with wrapt the way OpenTelemetry's does."""

    def __init__(self, cls: type, method: str) -> None:
        self.cls, self.method = cls, method
        self.calls = 0
        self.installed = wrapt.wrap_function_wrapper(cls, method, self)

    def __call__(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        self.calls += 1
        return wrapped(*args, **kwargs)

    def remove(self) -> None:
        """Undo it as OpenTelemetry's ``unwrap`` does: put back what it wrapped."""
        setattr(self.cls, self.method, self.cls.__dict__[self.method].__wrapped__)


@pytest.fixture
def own() -> Iterator[BudgetGuard]:
    """Return a private guard; afterwards nothing of budgetguard is left patched."""
    made = BudgetGuard(metrics=False)
    originals = {cls: cls.__dict__["create"] for cls in (Completions, AsyncCompletions)}
    yield made
    uninstrument()
    made.close()
    for cls, original in originals.items():
        assert cls.__dict__["create"] is original


def ask(client: openai.OpenAI) -> None:
    """Make one chat call for alice."""
    with budget_scope("alice"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_uninstrument_keeps_a_wrapper_applied_after_it(
    llm: FakeLLM, oai: openai.OpenAI, own: BudgetGuard, caplog: pytest.LogCaptureFixture
) -> None:
    """The later wrapper stays and still runs; budgetguard warns, names it, and stops charging."""
    instrument(own)
    other = OtherWrapper(Completions, "create")
    try:
        ask(oai)
        assert (other.calls, own.spend("alice")) == (1, CHAT_COST)

        with (
            caplog.at_level(logging.WARNING, "budgetguard"),
            pytest.warns(RuntimeWarning, match=re.escape(CREATE)) as warned,
        ):
            uninstrument()
        assert len(warned) == 1
        assert CREATE in caplog.text
        assert not instrumented()
        assert Completions.__dict__["create"] is other.installed

        ask(oai)
        assert other.calls == 2
        assert own.spend("alice") == CHAT_COST  # the second call was not charged
        assert len(llm.requests) == 2
    finally:
        other.remove()


def test_reinstrument_under_a_later_wrapper_charges_once(
    llm: FakeLLM, oai: openai.OpenAI, own: BudgetGuard
) -> None:
    """instrument() again wakes budgetguard's wrapper beneath the other one: one charge a call."""
    instrument(own)
    other = OtherWrapper(Completions, "create")
    try:
        with pytest.warns(RuntimeWarning):
            uninstrument()
        stacked = Completions.__dict__["create"]

        assert CREATE in instrument(own)
        assert instrumented()
        assert Completions.__dict__["create"] is stacked  # woken, not wrapped again
        ask(oai)
        assert (other.calls, own.spend("alice")) == (1, CHAT_COST)

        with pytest.warns(RuntimeWarning, match="Completions.create"):
            uninstrument()
        ask(oai)
        assert (other.calls, own.spend("alice")) == (2, CHAT_COST)
    finally:
        other.remove()
    # With the other wrapper gone, budgetguard's is outermost again: the
    # own fixture's uninstrument() restores the true original, silently.


async def test_async_method_under_a_later_wrapper_passes_through(
    llm: FakeLLM, aoai: openai.AsyncOpenAI, own: BudgetGuard
) -> None:
    """A disabled async wrapper still returns the coroutine the caller awaits, uncharged."""
    instrument(own)
    other = OtherWrapper(AsyncCompletions, "create")
    try:
        with pytest.warns(RuntimeWarning, match="AsyncCompletions.create"):
            uninstrument()
        with budget_scope("alice"):
            await aoai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert other.calls == 1
        assert own.spend("alice") == 0
    finally:
        other.remove()


def test_uninstrument_alone_restores_without_a_warning(
    llm: FakeLLM, oai: openai.OpenAI, own: BudgetGuard, recwarn: pytest.WarningsRecorder
) -> None:
    """With nothing wrapped on top, the original comes back and nothing is warned."""
    original = Completions.__dict__["create"]
    instrument(own)
    assert Completions.__dict__["create"] is not original
    uninstrument()
    assert Completions.__dict__["create"] is original
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    ask(oai)
    assert own.spend("alice") == 0
