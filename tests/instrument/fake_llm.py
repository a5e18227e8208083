"""A loopback HTTP server that answers like the OpenAI and Anthropic APIs, JSON and SSE.

Every answer reports 1000 input and 500 output tokens, so costs are easy to
work out by hand. The server records each request (path and JSON body) and
can be told to answer the next requests with HTTP 500, or to wait first.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

INPUT_TOKENS = 1000
OUTPUT_TOKENS = 500
TEXT = ["Hello", " wide", " world"]
CHAT_MODEL = "gpt-4o-mini-2024-07-18"
CLAUDE_MODEL = "claude-haiku-4-5-20251001"


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    """Return server-sent events: an optional ``event:`` line, then ``data:``, then a blank line."""
    out = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        body = data if isinstance(data, str) else json.dumps(data)
        out.append(f"{head}data: {body}\n\n")
    return "".join(out).encode()


def served_tier(body: dict[str, Any]) -> str:
    """Return the tier OpenAI says it served a request in: the one asked for, else default."""
    asked = body.get("service_tier")
    return asked if asked in ("flex", "priority") else "default"


def chat_completion(model: str, tier: str = "default") -> dict[str, Any]:
    """Return a ``chat.completion`` object."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "service_tier": tier,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(TEXT), "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": INPUT_TOKENS,
            "completion_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        },
    }


def chat_stream(model: str, include_usage: bool) -> bytes:
    """Return a chat stream: role chunk, text chunks, finish chunk, [usage chunk], [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            body["usage"] = None  # the API sends null on every chunk but the last
        return body

    events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    events += [(None, chunk({"content": text})) for text in TEXT]
    events.append((None, chunk({}, "stop")))
    if include_usage:
        events.append(
            (
                None,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": INPUT_TOKENS,
                        "completion_tokens": OUTPUT_TOKENS,
                        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
                    },
                },
            )
        )
    events.append((None, "[DONE]"))
    return sse(events)


# Azure OpenAI's content filter verdicts, as its chat answers carry them.
_AZURE_FILTERS = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}


def azure_chat_completion(model: str) -> dict[str, Any]:
    """Return a chat completion as Azure OpenAI answers: with its content filter results."""
    reply = chat_completion(model)
    reply["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}]
    reply["choices"][0]["content_filter_results"] = _AZURE_FILTERS
    reply["system_fingerprint"] = "fp_azure"
    return reply


def azure_chat_stream(model: str, include_usage: bool) -> bytes:
    """Return a chat stream as Azure OpenAI sends it.

    It opens with a chunk of prompt filter results, no choices and no model,
    and each later chunk carries its choice's content filter results.
    """
    first = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}],
    }
    events: list[tuple[str | None, Any]] = [(None, first)]
    for data in chat_events(model, include_usage):
        if isinstance(data, dict):
            for choice in data["choices"]:
                choice["content_filter_results"] = _AZURE_FILTERS if choice["delta"] else {}
        events.append((None, data))
    return sse(events)


def chat_events(model: str, include_usage: bool) -> list[Any]:
    """Return the ``data`` of each event of a chat stream (``chat_stream`` sends them)."""
    return [
        json.loads(line[len("data: ") :]) if line != "data: [DONE]" else "[DONE]"
        for line in chat_stream(model, include_usage).decode().split("\n")
        if line.startswith("data: ")
    ]


def text_completion(model: str, stream: bool, include_usage: bool) -> bytes:
    """Return a legacy ``text_completion``, as JSON or as a stream."""
    usage = {
        "prompt_tokens": INPUT_TOKENS,
        "completion_tokens": OUTPUT_TOKENS,
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
    }

    def body(text: str, finish: str | None, with_usage: Any) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": with_usage,
        }

    if not stream:
        return json.dumps(body("".join(TEXT), "stop", usage)).encode()
    events: list[tuple[str | None, Any]] = [(None, body(t, None, None)) for t in TEXT]
    if include_usage:
        last = body("", None, usage)
        last["choices"] = []
        events.append((None, last))
    events.append((None, "[DONE]"))
    return sse(events)


def response_object(
    model: str, status: str, usage: bool, tier: str = "default", searches: int = 0
) -> dict[str, Any]:
    """Return a Responses API ``response`` object; ``searches`` web-search calls lead its output."""
    searched = [
        {
            "type": "web_search_call",
            "id": f"ws_{n}",
            "status": "completed",
            "action": {"type": "search", "query": "hello"},
        }
        for n in range(searches)
    ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": model,
        "service_tier": tier,
        "output": [
            *searched,
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "".join(TEXT), "annotations": []}],
            },
        ]
        if status == "completed"
        else searched,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        }
        if usage
        else None,
    }


def responses_stream(model: str, tier: str = "default", searches: int = 0) -> bytes:
    """Return Responses events: created, item and part added, text deltas, completed (usage)."""
    events: list[tuple[str | None, Any]] = [
        (
            "response.created",
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": response_object(model, "in_progress", usage=False),
            },
        ),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "sequence_number": 1,
                "output_index": 0,
                "item": {
                    "type": "message",
                    "id": "msg_1",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            },
        ),
        (
            "response.content_part.added",
            {
                "type": "response.content_part.added",
                "sequence_number": 2,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        ),
    ]
    for n, text in enumerate(TEXT, start=3):
        events.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "sequence_number": n,
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": text,
                    "logprobs": [],
                },
            )
        )
    events.append(
        (
            "response.completed",
            {
                "type": "response.completed",
                "sequence_number": len(TEXT) + 3,
                "response": response_object(
                    model, "completed", usage=True, tier=tier, searches=searches
                ),
            },
        )
    )
    return sse(events)


def compacted_response() -> dict[str, Any]:
    """Return a ``response.compaction`` object, as ``responses.compact`` gets it."""
    body = response_object("", "completed", usage=True)
    return {
        "id": "resp_2",
        "object": "response.compaction",
        "created_at": 1,
        "output": [],
        "usage": body["usage"],
    }


def embedding(model: str, encoding: str) -> dict[str, Any]:
    """Return an embeddings list; base64 when the client asked for it (the SDK's default)."""
    vector = [0.25, -0.5, 1.0]
    value: Any = vector
    if encoding == "base64":
        value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": value}],
        "model": model,
        "usage": {"prompt_tokens": INPUT_TOKENS, "total_tokens": INPUT_TOKENS},
    }


def message(model: str, tier: str = "standard") -> dict[str, Any]:
    """Return an Anthropic ``message``; ``tier`` is what its usage says it was served in."""
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(TEXT)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "service_tier": tier,
        },
    }


def message_stream(model: str) -> bytes:
    """Return Anthropic events: message_start … message_delta (cumulative output) … message_stop."""
    start = message(model)
    start.update(
        content=[], stop_reason=None, usage={"input_tokens": INPUT_TOKENS, "output_tokens": 1}
    )
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for text in TEXT:
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return sse(events)


class LoopbackState:
    """What the loopback fakes' states share: a lock, the requests seen, the server's URL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Return the base URL (no path)."""
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


class FakeLLM(LoopbackState):
    """The server's state: requests seen, failures and delay to apply."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0  # answer this many next requests with HTTP 500
        self.delay = 0.0  # seconds to wait before answering

    def reset(self) -> None:
        """Forget requests, failures and delay."""
        with self.lock:
            self.requests.clear()
            self.failures = 0
            self.delay = 0.0

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
        """Return status, content type and body for one request."""
        with self.lock:
            self.requests.append((path, body))
            if self.failures:
                self.failures -= 1
                error = {"error": {"message": "boom", "type": "server_error"}}
                return 500, "application/json", json.dumps(error).encode()
            delay = self.delay
        if delay:
            time.sleep(delay)
        model = body.get("model", "")
        stream = bool(body.get("stream"))
        path = path.partition("?")[0]  # the beta resources add ?beta=true
        azure = path.startswith("/openai/deployments/")
        if azure:
            # Azure: /openai/deployments/<deployment>/chat/completions?api-version=...
            path = "/v1/" + path.split("/", 4)[4]
        if azure and path == "/v1/chat/completions":
            wants = bool((body.get("stream_options") or {}).get("include_usage"))
            if stream:
                return 200, "text/event-stream", azure_chat_stream(CHAT_MODEL, wants)
            return 200, "application/json", json.dumps(azure_chat_completion(CHAT_MODEL)).encode()
        if path == "/v1/chat/completions":
            if stream:
                wants = bool((body.get("stream_options") or {}).get("include_usage"))
                return 200, "text/event-stream", chat_stream(model, wants)
            # The search-preview models answer as their dated snapshot, like the API.
            served = f"{model}-2025-03-11" if model.endswith("-search-preview") else CHAT_MODEL
            reply = chat_completion(served, served_tier(body))
            return 200, "application/json", json.dumps(reply).encode()
        if path == "/v1/completions":
            wants = bool((body.get("stream_options") or {}).get("include_usage"))
            kind = "text/event-stream" if stream else "application/json"
            return 200, kind, text_completion(model, stream, wants)
        if path == "/v1/responses":
            tier = served_tier(body)
            # One web-search call per web_search tool offered.
            searches = sum(1 for t in body.get("tools") or [] if t.get("type") == "web_search")
            if stream:
                return 200, "text/event-stream", responses_stream(model, tier, searches)
            reply = response_object(model, "completed", True, tier, searches)
            return 200, "application/json", json.dumps(reply).encode()
        if path == "/v1/responses/compact":
            return 200, "application/json", json.dumps(compacted_response()).encode()
        if path == "/v1/embeddings":
            encoding = body.get("encoding_format", "float")
            return 200, "application/json", json.dumps(embedding(model, encoding)).encode()
        if path == "/v1/messages":
            if stream:
                return 200, "text/event-stream", message_stream(model)
            # An account with Priority Tier capacity: "auto" is served there.
            tier = "priority" if body.get("service_tier") == "auto" else "standard"
            return 200, "application/json", json.dumps(message(model, tier)).encode()
        return 404, "application/json", b'{"error": {"message": "no such path"}}'


class LoopbackHandler(BaseHTTPRequestHandler):
    """The request handler the loopback fakes share: kept-alive HTTP/1.1, quiet."""

    # HTTP/1.1 with Content-Length: the clients keep their connections.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's
    # algorithm and delayed ACKs add 40 ms to every kept-alive answer.
    disable_nagle_algorithm = True

    def read_body(self, empty: bytes = b"{}") -> bytes:
        """Return the request's body, or ``empty`` when it has none."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else empty

    def reply(
        self, status: int, kind: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send one answer with its length and any extra headers."""
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        # A cancelled call's client is gone: there is no one to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


State = TypeVar("State", bound=LoopbackState)


@contextmanager
def loopback(state: State, handler: type[BaseHTTPRequestHandler], name: str) -> Iterator[State]:
    """Serve ``state`` with ``handler`` on a free loopback port, in a thread named ``name``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _handler(state: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(LoopbackHandler):
        def do_POST(self) -> None:
            status, kind, payload = state.answer(self.path, json.loads(self.read_body()))
            # Retry at once, not after 0.5 s.
            self.reply(status, kind, payload, {"retry-after-ms": "1"} if status >= 500 else None)

    return Handler


def serve() -> AbstractContextManager[FakeLLM]:
    """Run the fake API on a free loopback port in a thread."""
    state = FakeLLM()
    return loopback(state, _handler(state), "fake-llm")
