"""Every billed method of the installed openai and anthropic SDKs is guarded."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from decimal import Decimal

import anthropic
import openai
import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope

from .conftest import reserved
from .fake_llm import FakeLLM

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
CLAUDE = "claude-haiku-4-5"
# gpt-4o-mini, 1000 input and 500 output tokens: 0.00015 + 0.0003
CHAT_COST = Decimal("0.00045")
# claude-haiku-4-5, 1000 input and 500 output tokens: 0.001 + 0.0025
MESSAGE_COST = Decimal("0.0035")

# A resource class that posts to one of these paths runs a model: each of its
# public methods is billed unless it is listed below as free.
_BILLED_PATH = re.compile(
    r'"/(?:v1/messages|chat/completions|completions|responses|embeddings)(?:/compact)?[?"]'
)

# Methods of those classes that send no billed request, or that build on a
# guarded method (charged through it), or are not yet covered (stated here so
# that a new SDK method is never assumed free).
_FREE = {
    "retrieve",  # reads a stored object
    "update",
    "list",
    "delete",
    "cancel",
    "count_tokens",  # free token counting
    "stream",  # openai helpers: built on create / parse
    "tool_runner",  # anthropic helpers: built on create / stream
    "thread",
    # Not covered yet: the Realtime websocket (no HTTP request to guard).
    "connect",
    # Connection managers of the websocket above.
    "send",
    "on",
    "off",
    "once",
    "enter",
}
# Helpers that are guarded themselves because they do not call a guarded method.
_GUARDED_HELPERS = {"anthropic": {"stream"}}


def _billed_methods(package: str) -> set[str]:
    """Return ``module.Class.method`` of every public method of the SDK's billed resources."""
    found: set[str] = set()
    root = importlib.import_module(f"{package}.resources")
    for info in pkgutil.walk_packages(root.__path__, f"{root.__name__}."):
        module = importlib.import_module(info.name)
        for name, cls in vars(module).items():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            if name.endswith(("WithRawResponse", "WithStreamingResponse")):
                continue  # views of the resource class's own methods
            if not _BILLED_PATH.search(inspect.getsource(cls)):
                continue
            for method, value in vars(cls).items():
                if method.startswith("_") or not callable(value):
                    continue
                if method in _FREE and method not in _GUARDED_HELPERS.get(package, set()):
                    continue
                found.add(f"{cls.__module__}.{cls.__qualname__}.{method}")
    return found


@pytest.mark.parametrize("package", ["openai", "anthropic"])
def test_every_billed_sdk_method_is_guarded(guard: BudgetGuard, package: str) -> None:
    """Fail when the installed SDK has a billed resource method that instrument() leaves out."""
    from budgetguard import instrument

    patched = set(instrument(guard))
    billed = _billed_methods(package)
    assert billed, f"found no billed resources in {package}: the walk is broken"
    assert sorted(billed - patched) == []


def test_responses_parse_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge responses.parse from its usage."""
    with budget_scope("alice"):
        oai.responses.parse(model="gpt-4o-mini", input="Say hello")
    assert guard.spend("alice") == CHAT_COST


def test_responses_parse_over_budget_sends_no_request(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """Refuse responses.parse over budget before the request leaves."""
    guard.set_budget("0.000001", user="alice")
    with budget_scope("alice"), pytest.raises(BudgetExceededError):
        oai.responses.parse(model="gpt-4o-mini", input="Say hello", max_output_tokens=100)
    assert llm.requests == []


async def test_async_responses_parse_is_charged(
    guard: BudgetGuard, aoai: openai.AsyncOpenAI
) -> None:
    """Charge an async responses.parse from its usage."""
    async with budget_scope("alice"):
        await aoai.responses.parse(model="gpt-4o-mini", input="Say hello")
    assert guard.spend("alice") == CHAT_COST


def test_beta_responses_create_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge beta.responses.create, plain and streamed, from its usage."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        oai.beta.responses.create(model="gpt-4o-mini", input="Say hello")
        list(oai.beta.responses.create(model="gpt-4o-mini", input="Say hello", stream=True))
    assert guard.spend("alice") == CHAT_COST * 2
    assert reserved(guard, "alice") == 0


def test_beta_responses_over_budget_send_no_request(
    guard: BudgetGuard, oai: openai.OpenAI, llm: FakeLLM
) -> None:
    """Refuse beta.responses.create over budget before the request leaves."""
    guard.set_budget("0.000001", user="alice")
    with budget_scope("alice"), pytest.raises(BudgetExceededError):
        oai.beta.responses.create(model="gpt-4o-mini", input="Say hello", max_output_tokens=100)
    assert llm.requests == []


def test_responses_compact_is_charged(guard: BudgetGuard, oai: openai.OpenAI) -> None:
    """Charge responses.compact, which runs the model, from its usage."""
    with budget_scope("alice"):
        oai.responses.compact(model="gpt-4o-mini", input="Say hello")
    assert guard.spend("alice") == CHAT_COST


def test_messages_parse_is_charged(guard: BudgetGuard, claude: anthropic.Anthropic) -> None:
    """Charge messages.parse from its usage."""
    with budget_scope("alice"):
        claude.messages.parse(model=CLAUDE, max_tokens=600, messages=MESSAGES)
    assert guard.spend("alice") == MESSAGE_COST


def test_messages_parse_over_budget_sends_no_request(
    guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """Refuse messages.parse over budget before the request leaves."""
    guard.set_budget("0.000001", user="alice")
    with budget_scope("alice"), pytest.raises(BudgetExceededError):
        claude.messages.parse(model=CLAUDE, max_tokens=600, messages=MESSAGES)
    assert llm.requests == []


async def test_async_beta_messages_are_charged(
    guard: BudgetGuard, aclaude: anthropic.AsyncAnthropic
) -> None:
    """Charge async beta.messages.create and parse from their usage."""
    async with budget_scope("alice"):
        await aclaude.beta.messages.create(model=CLAUDE, max_tokens=600, messages=MESSAGES)
        await aclaude.beta.messages.parse(model=CLAUDE, max_tokens=600, messages=MESSAGES)
    assert guard.spend("alice") == MESSAGE_COST * 2


def test_beta_messages_are_charged_once_each(
    guard: BudgetGuard, claude: anthropic.Anthropic
) -> None:
    """Charge beta.messages.create, parse and stream once each, from their usage."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        claude.beta.messages.create(model=CLAUDE, max_tokens=600, messages=MESSAGES)
        claude.beta.messages.parse(model=CLAUDE, max_tokens=600, messages=MESSAGES)
        with claude.beta.messages.stream(model=CLAUDE, max_tokens=600, messages=MESSAGES) as stream:
            assert stream.get_final_text() == "Hello wide world"
    assert guard.spend("alice") == MESSAGE_COST * 3
    assert reserved(guard, "alice") == 0


def test_beta_messages_over_budget_send_no_request(
    guard: BudgetGuard, claude: anthropic.Anthropic, llm: FakeLLM
) -> None:
    """Refuse beta.messages.create and stream over budget before any request leaves."""
    guard.set_budget("0.000001", user="alice")
    with budget_scope("alice"):
        with pytest.raises(BudgetExceededError):
            claude.beta.messages.create(model=CLAUDE, max_tokens=600, messages=MESSAGES)
        with (
            pytest.raises(BudgetExceededError),
            claude.beta.messages.stream(model=CLAUDE, max_tokens=600, messages=MESSAGES),
        ):
            pass
    assert llm.requests == []
