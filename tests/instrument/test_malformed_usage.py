"""Usage that cannot be read is never priced $0 silently, never crashes, never leaks the hold.

The real OpenAI client reads answers of a loopback server whose ``usage``
block hypothesis fills with malformed counts (negative, fractional,
boolean, infinite, NaN, junk strings, objects), sent as raw JSON so that
``Infinity`` and ``NaN`` arrive the way a sloppy proxy sends them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetguard import BudgetGuard, UsageMissingError, budget_scope, instrument, uninstrument
from budgetguard.money import from_units, to_units
from budgetguard.usage import Usage, accumulate, extract_usage
from budgetguard.usage.extractors import UnreadableUsage, from_openai_usage

from .fake_llm import chat_completion, sse
from .vendor_server import Answer, VendorServer, serve

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Count the tokens of this sentence, please."}]
ASKED = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100}

# Counts no one can bill: each must be treated as no usage at all.
MALFORMED = st.one_of(
    st.integers(max_value=-1),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda x: not (x >= 0 and x.is_integer())
    ),
    st.sampled_from([float("inf"), float("-inf"), float("nan")]),
    st.text(max_size=8).filter(lambda s: not (s.isascii() and s.isdigit())),
    st.lists(st.integers(0, 5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 5), max_size=2),
)
GOOD = st.integers(min_value=0, max_value=10**7)
FIELDS = ("prompt_tokens", "completion_tokens")


def encode(body: Any) -> bytes:
    """Encode like a proxy that lets ``Infinity`` and ``NaN`` through (Python's default)."""
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[VendorServer]:
    """Run one scripted server for this module."""
    with serve() as state:
        yield state


@pytest.fixture(scope="module")
def client(server: VendorServer) -> Iterator[openai.OpenAI]:
    """Return a real OpenAI client on the scripted server."""
    made = openai.OpenAI(api_key="test", base_url=f"{server.url}/v1", max_retries=0)
    yield made
    made.close()


def answering(usage: dict[str, Any]) -> Any:
    """Return a route answering every chat request with ``usage``."""

    def route(path: str, body: dict[str, Any]) -> Answer:
        reply = chat_completion(MODEL)
        reply["usage"] = usage
        if body.get("stream"):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}],
            }
            last = {**chunk, "choices": [], "usage": usage}
            # sse() writes NaN and Infinity as they come, like json.dumps.
            return 200, "text/event-stream", sse([(None, chunk), (None, last), (None, "[DONE]")])
        return 200, "application/json", encode(reply)

    return route


def estimate_of(guard: BudgetGuard) -> Decimal:
    """Return what the guard reserves for ``ASKED``, in whole ledger units."""
    found = guard.estimate_call(ASKED)
    assert found is not None
    return from_units(to_units(found[0]))


@st.composite
def malformed_usage(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """Draw a usage block with at least one malformed count; return it and that field's name."""
    bad = draw(st.sampled_from(FIELDS))
    usage: dict[str, Any] = {name: draw(GOOD) for name in FIELDS}
    usage[bad] = draw(MALFORMED)
    return usage, bad


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=malformed_usage(), streamed=st.booleans())
def test_malformed_usage_is_charged_the_estimate_with_a_warning(
    server: VendorServer, client: openai.OpenAI, case: tuple[dict[str, Any], str], streamed: bool
) -> None:
    """Any malformed count: the call returns, the estimate is charged, a warning names the field."""
    usage, field = case
    server.reset(answering(usage))
    guard = BudgetGuard(metrics=False)
    instrument(guard)
    try:
        with warnings.catch_warnings(record=True) as seen, budget_scope("alice"):
            warnings.simplefilter("always")
            if streamed:
                list(client.chat.completions.create(**ASKED, stream=True))
            else:
                client.chat.completions.create(**ASKED)
    finally:
        uninstrument()
    assert guard.ledger.open_reservations() == []
    assert guard.spend("alice") == estimate_of(guard) > 0
    messages = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert any(repr(field) in message for message in messages), messages
    guard.close()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=malformed_usage())
def test_on_missing_cost_raise_applies_to_malformed_usage(
    server: VendorServer, client: openai.OpenAI, case: tuple[dict[str, Any], str]
) -> None:
    """Under ``on_missing_cost="raise"`` malformed usage raises, after charging the estimate."""
    server.reset(answering(case[0]))
    guard = BudgetGuard(metrics=False, on_missing_cost="raise")
    instrument(guard)
    try:
        with warnings.catch_warnings(), budget_scope("bob"):
            warnings.simplefilter("ignore")
            with pytest.raises(UsageMissingError):
                client.chat.completions.create(**ASKED)
    finally:
        uninstrument()
    assert guard.ledger.open_reservations() == []
    assert guard.spend("bob") == estimate_of(guard)
    guard.close()


def test_digit_strings_are_read_as_counts(server: VendorServer, client: openai.OpenAI) -> None:
    """``"120000"`` is a count a proxy sent as a string: it is priced as that count."""
    server.reset(answering({"prompt_tokens": "120000", "completion_tokens": "500"}))
    guard = BudgetGuard(metrics=False)
    instrument(guard)
    try:
        with budget_scope("carol"):
            client.chat.completions.create(**ASKED)
    finally:
        uninstrument()
    # 120000 × $0.15/M + 500 × $0.60/M
    assert guard.spend("carol") == Decimal("0.0183")
    guard.close()


class RaisingUsage:
    """A response whose ``usage`` attribute raises when read."""

    model = MODEL

    @property
    def usage(self) -> Any:
        raise RuntimeError("the proxy's object broke")


def test_usage_attribute_that_raises_is_charged_the_estimate() -> None:
    """A ``usage`` that raises does not crash the call; the estimate is charged, with a warning."""
    guard = BudgetGuard(metrics=False)

    @guard.budgeted(user="dave", estimate="0.01")
    def answer() -> RaisingUsage:
        return RaisingUsage()

    with pytest.warns(RuntimeWarning, match="RuntimeError: the proxy's object broke"):
        answer()
    assert guard.spend("dave") == Decimal("0.01")
    assert guard.ledger.open_reservations() == []


def test_a_chunk_that_raises_makes_the_stream_unreadable() -> None:
    """A stream chunk whose usage raises leaves the stream without usage, not priced at $0."""

    class Chunk:
        object = "chat.completion.chunk"
        choices = ()
        model = MODEL

        @property
        def usage(self) -> Any:
            raise ValueError("bad chunk")

    with pytest.warns(RuntimeWarning, match="bad chunk"):
        assert accumulate([Chunk()]) is None


@pytest.mark.parametrize(
    ("value", "readable"),
    [
        (120, 120),
        (120.0, 120),
        ("120", 120),
        (None, 0),
        (-1, None),
        (True, None),
        (1.5, None),
        (float("inf"), None),
        (float("nan"), None),
        ("12a", None),
        ("-5", None),
        (" 5", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("9" * 19, None),
    ],
)
def test_what_counts_as_a_count(value: Any, readable: int | None) -> None:
    """The normaliser reads ints, whole floats and ASCII digit strings, and nothing else."""
    block = {"prompt_tokens": value, "completion_tokens": 0}
    if readable is None:
        with pytest.raises(UnreadableUsage, match="prompt_tokens"):
            from_openai_usage(block, model=MODEL)
        with pytest.warns(RuntimeWarning, match="'prompt_tokens'"):
            assert extract_usage({"model": MODEL, "usage": block}) is None
    else:
        assert from_openai_usage(block, model=MODEL).input_tokens == readable


def test_usage_rejects_a_reported_cost_that_is_no_amount() -> None:
    """``Usage.reported_cost`` must be a finite, non-negative Decimal."""
    for bad in (Decimal("-1"), Decimal("NaN"), Decimal("Infinity"), 0.5):
        with pytest.raises(ValueError, match="reported_cost"):
            Usage(reported_cost=bad)  # type: ignore[arg-type]
