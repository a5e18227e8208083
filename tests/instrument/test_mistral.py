"""The real ``mistralai`` client, instrumented, on a loopback server in Mistral's wire format."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope, instrument, uninstrument
from budgetguard.usage import accumulate

from .vendor_server import VendorServer, mistral_stream

mistralai_client = pytest.importorskip("mistralai.client")
Mistral = mistralai_client.Mistral

MESSAGES = [{"role": "user", "content": "Dis bonjour au monde entier."}]
# Every answer reports 2000 input and 300 output tokens.
# mistral-small-latest at $0.15/M input, $0.60/M output: 0.0003 + 0.00018
SMALL_COST = Decimal("0.00048")
# codestral-latest (an alias of codestral) at $0.30/M and $0.90/M: 0.0006 + 0.00027
CODESTRAL_COST = Decimal("0.00087")
# mistral-medium-latest at $1.50/M and $7.50/M: 0.003 + 0.00225 (agents answer with it)
MEDIUM_COST = Decimal("0.00525")
# mistral-embed at $0.10/M input
EMBED_COST = Decimal("0.0002")


@pytest.fixture
def client(api: VendorServer) -> Iterator[Any]:
    """Return a real ``Mistral`` client on the loopback server."""
    with Mistral(api_key="test", server_url=api.url) as made:
        yield made


@pytest.fixture
async def aclient(api: VendorServer) -> AsyncIterator[Any]:
    """Return a real ``Mistral`` client for async calls on the loopback server."""
    async with Mistral(api_key="test", server_url=api.url) as made:
        yield made


def settled(guard: BudgetGuard) -> bool:
    """Tell whether no reservation is left open."""
    return guard.ledger.open_reservations() == []


def test_chat_complete_is_charged_its_usage(guard: BudgetGuard, client: Any) -> None:
    """``chat.complete`` is priced from the response's usage and settled."""
    with budget_scope("alice"):
        reply = client.chat.complete(model="mistral-small-latest", messages=MESSAGES)
    assert reply.choices[0].message.content == "Bonjour le monde"
    assert guard.spend("alice") == SMALL_COST
    assert settled(guard)


async def test_chat_complete_async_is_charged_its_usage(guard: BudgetGuard, aclient: Any) -> None:
    """``chat.complete_async`` stays a coroutine and is priced from its usage."""
    with budget_scope("alice"):
        await aclient.chat.complete_async(model="mistral-small-latest", messages=MESSAGES)
    assert guard.spend("alice") == SMALL_COST
    assert settled(guard)


def test_chat_stream_is_charged_the_usage_of_its_last_event(
    guard: BudgetGuard, client: Any, api: VendorServer
) -> None:
    """The events of ``chat.stream`` wrap each chunk in ``.data``; the last one's usage is read."""
    with budget_scope("bob"):
        stream = client.chat.stream(model="mistral-small-latest", messages=MESSAGES)
        text = "".join(event.data.choices[0].delta.content or "" for event in stream)
    assert text == "Bonjour le monde"
    assert guard.spend("bob") == SMALL_COST
    assert settled(guard)
    assert api.requests[0][1]["stream"] is True


async def test_chat_stream_async_is_charged_the_usage_of_its_last_event(
    guard: BudgetGuard, aclient: Any
) -> None:
    """``chat.stream_async`` is read the same way, through ``async for``."""
    with budget_scope("bob"):
        stream = await aclient.chat.stream_async(model="mistral-small-latest", messages=MESSAGES)
        events = [event async for event in stream]
    assert events[-1].data.usage.prompt_tokens == 2000
    assert guard.spend("bob") == SMALL_COST
    assert settled(guard)


def test_chat_stream_in_with_block_left_early_is_settled(guard: BudgetGuard, client: Any) -> None:
    """A stream left through ``with`` after one event ends its reservation, charged its text."""
    guard.set_budget("1.00", user="carol")
    chat = client.chat
    with budget_scope("carol"), chat.stream(model="mistral-small-latest", messages=MESSAGES) as s:
        next(iter(s))
    assert settled(guard)
    # No usage arrived: the prompt and the text seen are estimated, never $0.
    assert Decimal(0) < guard.spend("carol") < SMALL_COST


def test_chat_stream_broken_off_and_collected_is_settled(guard: BudgetGuard, client: Any) -> None:
    """A stream broken out of and dropped is settled when it is garbage-collected."""
    with budget_scope("dave"):
        for _event in client.chat.stream(model="mistral-small-latest", messages=MESSAGES):
            break
    gc.collect()
    assert settled(guard)
    assert guard.spend("dave") > 0


def test_fim_complete_and_stream_are_charged(guard: BudgetGuard, client: Any) -> None:
    """``fim.complete`` and ``fim.stream`` are charged their usage at the model's price."""
    with budget_scope("erin"):
        client.fim.complete(model="codestral-latest", prompt="def add(a, b):", suffix="")
        list(client.fim.stream(model="codestral-latest", prompt="def add(a, b):"))
    assert guard.spend("erin") == 2 * CODESTRAL_COST
    assert settled(guard)


async def test_fim_async_calls_are_charged(guard: BudgetGuard, aclient: Any) -> None:
    """``fim.complete_async`` and ``fim.stream_async`` are charged their usage."""
    with budget_scope("erin"):
        await aclient.fim.complete_async(model="codestral-latest", prompt="def add(a, b):")
        stream = await aclient.fim.stream_async(model="codestral-latest", prompt="x")
        async for _event in stream:
            pass
    assert guard.spend("erin") == 2 * CODESTRAL_COST
    assert settled(guard)


def test_embeddings_create_is_charged_its_input(guard: BudgetGuard, client: Any) -> None:
    """``embeddings.create`` is charged its prompt tokens at the embedding model's price."""
    with budget_scope("frank"):
        client.embeddings.create(model="mistral-embed", inputs=["one", "two"])
    assert guard.spend("frank") == EMBED_COST
    assert settled(guard)


async def test_embeddings_create_async_is_charged(guard: BudgetGuard, aclient: Any) -> None:
    """``embeddings.create_async`` is charged its prompt tokens."""
    with budget_scope("frank"):
        await aclient.embeddings.create_async(model="mistral-embed", inputs="one")
    assert guard.spend("frank") == EMBED_COST


def test_agents_are_priced_at_the_model_the_response_names(guard: BudgetGuard, client: Any) -> None:
    """An agent call names no model; the response's model prices it, sync and streamed."""
    with budget_scope("gina"):
        client.agents.complete(agent_id="ag-1", messages=MESSAGES)
        list(client.agents.stream(agent_id="ag-1", messages=MESSAGES))
    assert guard.spend("gina") == 2 * MEDIUM_COST
    assert settled(guard)


def test_conversations_are_priced_at_the_model_of_their_outputs(
    guard: BudgetGuard, client: Any
) -> None:
    """A conversation reply names its model on its output entries, streamed or not."""
    conversations = client.beta.conversations
    with budget_scope("hank"):
        reply = conversations.start(model="mistral-small-latest", inputs="Bonjour ?")
        # The server answers an append (which names no model) with mistral-medium-latest.
        conversations.append(conversation_id=reply.conversation_id, inputs="Encore.")
        events = list(conversations.start_stream(model="mistral-small-latest", inputs="Salut"))
    assert events[-1].data.type == "conversation.response.done"
    assert guard.spend("hank") == 2 * SMALL_COST + MEDIUM_COST
    assert settled(guard)


async def test_conversation_stream_async_is_charged(guard: BudgetGuard, aclient: Any) -> None:
    """``start_stream_async`` is charged the usage of its ``conversation.response.done`` event."""
    with budget_scope("hank"):
        stream = await aclient.beta.conversations.start_stream_async(
            model="mistral-small-latest", inputs="Salut"
        )
        async for _event in stream:
            pass
    assert guard.spend("hank") == SMALL_COST
    assert settled(guard)


def test_responses_create_is_charged_streamed_or_not(guard: BudgetGuard, client: Any) -> None:
    """Mistral's Responses API (OpenAI's format) is charged its usage, with ``stream=True`` too."""
    with budget_scope("kim"):
        reply = client.responses.create(model="mistral-small-latest", input="Bonjour ?")
        frames = list(
            client.responses.create(model="mistral-small-latest", input="Bonjour ?", stream=True)
        )
    assert reply.usage.input_tokens == 2000
    assert frames[-1].data.type == "response.completed"
    assert guard.spend("kim") == 2 * SMALL_COST
    assert settled(guard)


async def test_responses_create_async_is_charged(guard: BudgetGuard, aclient: Any) -> None:
    """``responses.create_async`` is charged its usage."""
    with budget_scope("kim"):
        await aclient.responses.create_async(model="mistral-small-latest", input="Bonjour ?")
    assert guard.spend("kim") == SMALL_COST


@pytest.mark.parametrize("method", ["complete", "stream"])
def test_refused_call_sends_nothing(
    guard: BudgetGuard, client: Any, api: VendorServer, method: str
) -> None:
    """A call its budget cannot afford is refused before any request leaves."""
    guard.set_budget("0.0001", user="ivy")
    with budget_scope("ivy"), pytest.raises(BudgetExceededError):
        getattr(client.chat, method)(
            model="mistral-small-latest", messages=MESSAGES, max_tokens=500
        )
    assert api.requests == []
    assert guard.spend("ivy") == 0
    assert settled(guard)


async def test_refused_async_call_sends_nothing(
    guard: BudgetGuard, aclient: Any, api: VendorServer
) -> None:
    """An async call its budget cannot afford is refused before any request leaves."""
    guard.set_budget("0.0001", user="ivy")
    with budget_scope("ivy"), pytest.raises(BudgetExceededError):
        await aclient.chat.stream_async(
            model="mistral-small-latest", messages=MESSAGES, max_tokens=500
        )
    assert api.requests == []


def test_uninstrument_stops_charging(api: VendorServer) -> None:
    """After ``uninstrument()`` the client is no longer budgeted."""
    made = BudgetGuard(metrics=False)
    instrument(made)
    uninstrument()
    with Mistral(api_key="test", server_url=api.url) as client, budget_scope("jo"):
        client.chat.complete(model="mistral-small-latest", messages=MESSAGES)
    assert made.spend("jo") == 0
    assert len(api.requests) == 1
    made.close()


def test_plain_dict_mistral_events_are_accumulated() -> None:
    """Mistral events as plain dicts (``{"data": chunk}``) are read like the SDK's objects."""
    import json

    lines = mistral_stream("mistral-small-latest").decode().split("\n\n")
    events = [
        {"data": json.loads(line[len("data: ") :])} for line in lines if line.startswith("data: {")
    ]
    usage = accumulate(events)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (2000, 300)
    assert usage.provider == "mistral_ai"
    assert not usage.estimated


# The paths that run a model and report usage; every SDK method posting to one is guarded.
BILLED_PATHS = {
    "/v1/chat/completions",
    "/v1/fim/completions",
    "/v1/agents/completions",
    "/v1/embeddings",
    "/v1/conversations",
    "/v1/conversations/{conversation_id}",
    "/v1/conversations/{conversation_id}/restart",
    "/v1/responses",
}


def billed_methods() -> list[tuple[type, str, str]]:
    """Walk the installed SDK: each resource method that posts to a billed path, and the path."""
    import importlib
    import inspect
    import pkgutil
    import re

    found = []
    request = re.compile(r'method="POST",\s*path="([^"#]+)')
    for info in pkgutil.iter_modules(mistralai_client.__path__):
        module = importlib.import_module(f"mistralai.client.{info.name}")
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for name, member in vars(cls).items():
                function = getattr(member, "__wrapped__", member)
                if name.startswith("_") or not inspect.isfunction(function):
                    continue
                for path in request.findall(inspect.getsource(function)):
                    if path in BILLED_PATHS:
                        found.append((cls, name, path))
    return found


def test_every_billed_sdk_method_is_guarded(guard: BudgetGuard) -> None:
    """Every method of the installed SDK that posts to a billed path is instrumented."""
    import wrapt

    found = billed_methods()
    assert len(found) >= 26  # chat, fim, agents ×4, embeddings ×2, conversations ×12, responses ×2
    unguarded = [
        f"{cls.__qualname__}.{name} ({path})"
        for cls, name, path in found
        if not isinstance(vars(cls)[name], wrapt.FunctionWrapper)
    ]
    assert unguarded == []
