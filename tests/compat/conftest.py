"""Fixtures for the LiteLLM compatibility tests: a scratch directory, fake LLM calls, a server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

import budgetguard as bg
from budgetguard.compat.server import BudgetServer, make_server
from budgetguard.tokens import count_tokens

#: What every fake completion answers with, in tokens.
COMPLETION_TOKENS = 20


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in its own directory (LiteLLM keeps files there); drop max_budget after."""
    monkeypatch.chdir(tmp_path)
    yield
    bg.max_budget = None
    bg._current_cost = 0


def completion(model: str, messages: list[dict[str, Any]], **_: Any) -> ChatCompletion:
    """Stand in for ``litellm.completion``: a real OpenAI ChatCompletion with usage."""
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "It's going well, thanks!"},
                }
            ],
            "usage": {
                "prompt_tokens": count_tokens(messages, model),
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": count_tokens(messages, model) + COMPLETION_TOKENS,
            },
        }
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BudgetServer]:
    """Run a budget server on a free loopback port over a SQLite ledger."""
    running = make_server(f"sqlite:///{tmp_path / 'server.db'}", "127.0.0.1", 0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join(timeout=10)
