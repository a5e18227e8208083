"""A cost the response reports itself (OpenRouter's ``usage.cost``) is the charge."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from budgetguard import BudgetGuard, budget_scope, instrument, uninstrument
from budgetguard.events import CallOutcome
from budgetguard.usage import extract_usage

from .conftest import Outcomes
from .fake_llm import chat_completion, sse
from .vendor_server import Answer, VendorServer, serve

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello through a router."}]
# What the price table says 1000 input and 500 output tokens of gpt-4o-mini cost.
TABLE_COST = Decimal("0.00045")


def openrouter(extra: dict[str, Any]) -> Any:
    """Return a route answering like OpenRouter: OpenAI's format, ``usage`` with its cost."""

    def route(path: str, body: dict[str, Any]) -> Answer:
        reply = chat_completion(MODEL)
        reply["usage"].update(extra)
        if body.get("stream"):
            chunk = {
                "id": "gen-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}],
            }
            last = {**chunk, "choices": [], "usage": reply["usage"]}
            return 200, "text/event-stream", sse([(None, chunk), (None, last), (None, "[DONE]")])
        return 200, "application/json", json.dumps(reply).encode()

    return route


@pytest.fixture(scope="module")
def server() -> Iterator[VendorServer]:
    """Run one scripted server for this module."""
    with serve() as state:
        yield state


@pytest.fixture
def client(server: VendorServer) -> Iterator[openai.OpenAI]:
    """Return a real OpenAI client pointed at the OpenRouter-like server."""
    made = openai.OpenAI(api_key="test", base_url=f"{server.url}/v1", max_retries=0)
    yield made
    made.close()


def run(
    server: VendorServer,
    client: openai.OpenAI,
    extra: dict[str, Any],
    *,
    stream: bool = False,
    reported_cost: str = "use",
) -> tuple[BudgetGuard, CallOutcome]:
    """Make one instrumented call answered with ``extra`` in its usage; return guard and outcome."""
    server.reset(openrouter(extra))
    guard = BudgetGuard(metrics=False, reported_cost=reported_cost)  # type: ignore[arg-type]
    ended = Outcomes()
    guard.add_listener(ended)
    instrument(guard)
    try:
        with budget_scope("alice"):
            if stream:
                list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
            else:
                client.chat.completions.create(model=MODEL, messages=MESSAGES)
    finally:
        uninstrument()
    assert guard.ledger.open_reservations() == []
    (outcome,) = ended.ended
    return guard, outcome


def test_openrouter_cost_is_charged(server: VendorServer, client: openai.OpenAI) -> None:
    """``usage.cost`` is what the call is charged, and the outcome says so."""
    guard, outcome = run(server, client, {"cost": 0.0005})
    assert guard.spend("alice") == Decimal("0.0005")
    assert outcome.cost_source == "reported"
    assert outcome.usage.cost_reporter == "openrouter"


def test_openrouter_cost_in_a_stream_is_charged(
    server: VendorServer, client: openai.OpenAI
) -> None:
    """A stream's last chunk carries ``usage.cost``: that is the charge."""
    guard, outcome = run(server, client, {"cost": 0.0004}, stream=True)
    assert guard.spend("alice") == Decimal("0.0004")
    assert outcome.cost_source == "reported"


def test_byok_adds_the_upstream_inference_cost(server: VendorServer, client: openai.OpenAI) -> None:
    """With a key of your own, OpenRouter's fee and the provider's upstream cost are both spent."""
    extra = {
        "cost": 0.00002,
        "is_byok": True,
        "cost_details": {"upstream_inference_cost": 0.00045},
    }
    guard, _ = run(server, client, extra)
    assert guard.spend("alice") == Decimal("0.00047")


def test_cost_far_from_the_table_warns_once(
    server: VendorServer, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A reported cost more than a quarter off the table's is charged, with a logged warning."""
    with (
        caplog.at_level(logging.WARNING, logger="budgetguard"),
        pytest.warns(RuntimeWarning, match=r"reports a cost of \$0.002 .*table says \$0.00045"),
    ):
        guard, _ = run(server, client, {"cost": 0.002})
    assert guard.spend("alice") == Decimal("0.002")
    logged = [r.getMessage() for r in caplog.records if r.name == "budgetguard"]
    assert sum("reports a cost of $0.002" in message for message in logged) == 1


def test_cost_close_to_the_table_does_not_warn(server: VendorServer, client: openai.OpenAI) -> None:
    """A reported cost within the tolerance is charged quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard, _ = run(server, client, {"cost": 0.0005})
    assert guard.spend("alice") == Decimal("0.0005")


def test_reported_cost_ignore_charges_the_table(
    server: VendorServer, client: openai.OpenAI
) -> None:
    """``reported_cost="ignore"`` prices the tokens from budgetguard's table."""
    guard, outcome = run(server, client, {"cost": 0.002}, reported_cost="ignore")
    assert guard.spend("alice") == TABLE_COST
    assert outcome.cost_source == "table"
    assert outcome.usage.reported_cost == Decimal("0.002")


@pytest.mark.parametrize("bad", [-0.1, "a lot", float("inf"), True, [1]])
def test_unreadable_cost_falls_back_to_the_tokens(
    server: VendorServer, client: openai.OpenAI, bad: Any
) -> None:
    """A cost that is no amount is ignored, with a warning; the tokens are priced instead."""
    with pytest.warns(RuntimeWarning, match="'cost'"):
        guard, outcome = run(server, client, {"cost": bad})
    assert guard.spend("alice") == TABLE_COST
    assert outcome.cost_source == "table"


def test_cost_given_as_a_string_is_read_exactly() -> None:
    """A numeric string cost is read as an exact Decimal."""
    usage = extract_usage(
        {"model": MODEL, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": "0.0001"}}
    )
    assert usage is not None
    assert usage.reported_cost == Decimal("0.0001")


def test_invalid_reported_cost_option_is_refused() -> None:
    """An unknown ``reported_cost`` choice is a configuration error naming the choices."""
    from budgetguard.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="reported_cost must be one of use, ignore"):
        BudgetGuard(metrics=False, reported_cost="maybe")  # type: ignore[arg-type]
