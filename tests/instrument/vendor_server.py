"""A loopback HTTP server whose answers each test scripts, and Mistral's wire format.

``fake_llm.py`` answers OpenAI and Anthropic requests with fixed figures;
this one hands each request to a function the test sets (``server.route``),
so a test can answer in Mistral's format, or with usage of its choosing
(malformed counts, a provider-reported cost) through the real clients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler
from typing import Any

from .fake_llm import LoopbackHandler, LoopbackState, loopback, sse

Answer = tuple[int, str, bytes]
Route = Callable[[str, dict[str, Any]], Answer]

MISTRAL_INPUT = 2000
MISTRAL_OUTPUT = 300
TEXT = ["Bonjour", " le", " monde"]


def json_answer(body: Any, status: int = 200) -> Answer:
    """Return a JSON answer; ``body`` may be pre-encoded (to send ``Infinity`` and the like)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return status, "application/json", raw


def mistral_usage(prompt: int = MISTRAL_INPUT, completion: int = MISTRAL_OUTPUT) -> dict[str, Any]:
    """Return Mistral's ``UsageInfo``."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def mistral_completion(model: str, usage: Any = None) -> dict[str, Any]:
    """Return a Mistral ``ChatCompletionResponse`` (chat, FIM and agents share it)."""
    return {
        "id": "cmpl-m1",
        "object": "chat.completion",
        "model": model,
        "created": 1,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(TEXT), "tool_calls": None},
                "finish_reason": "stop",
            }
        ],
        "usage": mistral_usage() if usage is None else usage,
    }


def mistral_stream(model: str, usage: Any = None) -> bytes:
    """Return Mistral's chat stream: ``data:`` chunks, usage on the last, then ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-m1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    events += [(None, chunk({"content": text})) for text in TEXT]
    last = chunk({"content": ""}, "stop")
    last["usage"] = mistral_usage() if usage is None else usage
    events.append((None, last))
    events.append((None, "[DONE]"))
    return sse(events)


def mistral_embeddings(model: str, inputs: int) -> dict[str, Any]:
    """Return a Mistral ``EmbeddingResponse`` (input tokens only)."""
    return {
        "id": "emb-m1",
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "embedding": [0.1, 0.2, 0.3], "index": i} for i in range(inputs)
        ],
        "usage": {
            "prompt_tokens": MISTRAL_INPUT,
            "completion_tokens": 0,
            "total_tokens": MISTRAL_INPUT,
        },
    }


def conversation(model: str) -> dict[str, Any]:
    """Return a ``ConversationResponse``: outputs and usage, no model field."""
    return {
        "object": "conversation.response",
        "conversation_id": "conv-1",
        "outputs": [
            {
                "object": "entry",
                "type": "message.output",
                "id": "msg-1",
                "created_at": "2026-12-01T00:00:00Z",
                "model": model,
                "role": "assistant",
                "content": "".join(TEXT),
            }
        ],
        "usage": mistral_usage(),
    }


def conversation_stream(model: str) -> bytes:
    """Return a conversation stream: started, output deltas, ``conversation.response.done``."""
    events: list[tuple[str | None, Any]] = [
        (
            "conversation.response.started",
            {"type": "conversation.response.started", "conversation_id": "conv-1"},
        )
    ]
    for text in TEXT:
        events.append(
            (
                "message.output.delta",
                {
                    "type": "message.output.delta",
                    "id": "msg-1",
                    "model": model,
                    "role": "assistant",
                    "content": text,
                    "output_index": 0,
                    "content_index": 0,
                },
            )
        )
    events.append(
        (
            "conversation.response.done",
            {"type": "conversation.response.done", "usage": mistral_usage()},
        )
    )
    return sse(events)


def mistral_response(model: str) -> dict[str, Any]:
    """Return a response of Mistral's Responses API (OpenAI's format)."""
    return {
        "id": "resp-1",
        "object": "response",
        "created_at": 1.0,
        "model": model,
        "status": "completed",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "output": [
            {
                "type": "message",
                "id": "msg-1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "".join(TEXT), "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": MISTRAL_INPUT,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": MISTRAL_OUTPUT,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": MISTRAL_INPUT + MISTRAL_OUTPUT,
        },
    }


def mistral_response_stream(model: str) -> bytes:
    """Return a Responses stream: ``response.completed`` carries the response and its usage."""
    done = {"type": "response.completed", "sequence_number": 1, "response": mistral_response(model)}
    return sse([("response.completed", done)])


def mistral_route(path: str, body: dict[str, Any]) -> Answer:
    """Answer like Mistral's API."""
    model = str(body.get("model") or "mistral-medium-latest")
    stream = bool(body.get("stream"))
    if path in ("/v1/chat/completions", "/v1/fim/completions", "/v1/agents/completions"):
        if stream:
            return 200, "text/event-stream", mistral_stream(model)
        return json_answer(mistral_completion(model))
    if path == "/v1/embeddings":
        inputs = body.get("inputs")
        return json_answer(
            mistral_embeddings(model, len(inputs) if isinstance(inputs, list) else 1)
        )
    if path == "/v1/responses":
        if stream:
            return 200, "text/event-stream", mistral_response_stream(model)
        return json_answer(mistral_response(model))
    if path.startswith("/v1/conversations"):
        if stream:
            return 200, "text/event-stream", conversation_stream(model)
        return json_answer(conversation(model))
    return json_answer({"message": f"no such path {path}"}, 404)


class VendorServer(LoopbackState):
    """The server's state: the requests seen and the function that answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.route: Route = mistral_route

    def reset(self, route: Route = mistral_route) -> None:
        """Forget the requests seen and answer with ``route`` from now on."""
        with self.lock:
            self.requests.clear()
            self.route = route

    def answer(self, path: str, body: dict[str, Any]) -> Answer:
        """Record one request and return its answer."""
        with self.lock:
            self.requests.append((path, body))
            route = self.route
        return route(path.partition("?")[0], body)


def _handler(state: VendorServer) -> type[BaseHTTPRequestHandler]:
    class Handler(LoopbackHandler):
        def do_POST(self) -> None:
            self.reply(*state.answer(self.path, json.loads(self.read_body())))

    return Handler


def serve() -> AbstractContextManager[VendorServer]:
    """Run the scripted server on a free loopback port in a thread."""
    state = VendorServer()
    return loopback(state, _handler(state), "vendor-server")
