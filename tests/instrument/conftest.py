"""Fixtures: the loopback fake API, an instrumented guard, and real SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from budgetguard import BudgetGuard, instrument, uninstrument
from budgetguard.events import CallOutcome

from . import fake_cloud, vendor_server
from .fake_cloud import FakeCloud
from .fake_llm import FakeLLM, serve
from .vendor_server import VendorServer


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeLLM]:
    """Run one fake API server for the whole session."""
    with serve() as state:
        yield state


@pytest.fixture
def llm(fake_server: FakeLLM) -> FakeLLM:
    """Return the fake API with no requests, failures or delay left from other tests."""
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="module")
def cloud_server() -> Iterator[FakeCloud]:
    """Run one fake Gemini and Bedrock API for the module."""
    with fake_cloud.serve() as state:
        yield state


@pytest.fixture
def cloud(cloud_server: FakeCloud) -> FakeCloud:
    """Return the fake cloud API with no requests or failures left from other tests."""
    cloud_server.reset()
    return cloud_server


@pytest.fixture(scope="module")
def server() -> Iterator[VendorServer]:
    """Run one scripted server for the module."""
    with vendor_server.serve() as state:
        yield state


@pytest.fixture
def api(server: VendorServer) -> VendorServer:
    """Return the scripted server with no requests left from other tests."""
    server.reset()
    return server


class Outcomes:
    """A listener that keeps every ended call."""

    def __init__(self) -> None:
        self.ended: list[CallOutcome] = []

    def call_ended(self, outcome: CallOutcome) -> None:
        self.ended.append(outcome)

    def call_refused(self, error: Any, *, user: Any, request_model: Any) -> None:
        pass

    def threshold_crossed(self, crossing: Any) -> None:
        pass

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        pass


@pytest.fixture
def guard() -> Iterator[BudgetGuard]:
    """Return a private guard (no metrics) that the clients are instrumented with."""
    made = BudgetGuard(metrics=False)
    instrument(made)
    yield made
    uninstrument()
    made.close()


@pytest.fixture
def oai(llm: FakeLLM) -> Iterator[openai.OpenAI]:
    """Return a real OpenAI client on the fake API, without retries."""
    client = openai.OpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=0)
    yield client
    client.close()


@pytest.fixture
async def aoai(llm: FakeLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    """Return a real AsyncOpenAI client on the fake API, without retries."""
    client = openai.AsyncOpenAI(api_key="test", base_url=f"{llm.url}/v1", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
def claude(llm: FakeLLM) -> Iterator[anthropic.Anthropic]:
    """Return a real Anthropic client on the fake API, without retries."""
    client = anthropic.Anthropic(api_key="test", base_url=llm.url, max_retries=0)
    yield client
    client.close()


@pytest.fixture
async def aclaude(llm: FakeLLM) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """Return a real AsyncAnthropic client on the fake API, without retries."""
    client = anthropic.AsyncAnthropic(api_key="test", base_url=llm.url, max_retries=0)
    yield client
    await client.close()


def reserved(guard: BudgetGuard, user: str) -> Decimal:
    """Return what is still held in reservations on ``user``'s budget (it must be set)."""
    remaining = guard.remaining(user)
    budget = guard.budget_for(user)
    assert remaining is not None and budget is not None
    return budget.limit - guard.spend(user) - remaining
