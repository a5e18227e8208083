"""A loopback HTTP server that answers like the Gemini API and AWS Bedrock's runtime.

Gemini (``google-genai`` with ``http_options.base_url``): ``:generateContent``
as JSON, ``:streamGenerateContent?alt=sse`` as server-sent events whose last
chunk carries the whole ``usageMetadata``, ``:batchEmbedContents`` and
``:predict`` (images). Bedrock (boto3 with ``endpoint_url``): ``converse``
as JSON, ``converse-stream`` and ``invoke-with-response-stream`` in AWS's
binary event-stream framing (prelude, headers, CRC32s), ``invoke`` with the
model's own body and Bedrock's token-count headers.

Every answer reports 1000 input and 500 output tokens. The server records
each request (path and JSON body), and can be told to fail the next ones
with HTTP 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote

from .fake_llm import LoopbackHandler, LoopbackState, loopback

INPUT_TOKENS = 1000
OUTPUT_TOKENS = 500
TEXT = ["Hello", " wide", " world"]
GEMINI_VERSION = "gemini-2.5-flash"

Answer = tuple[int, str, bytes, dict[str, str]]


def _json(body: Any, headers: dict[str, str] | None = None) -> Answer:
    return 200, "application/json", json.dumps(body).encode(), headers or {}


# -- Gemini -------------------------------------------------------------------------------


def gemini_usage(output: int = OUTPUT_TOKENS) -> dict[str, Any]:
    """Return a ``usageMetadata`` block in the REST API's camelCase."""
    usage: dict[str, Any] = {"promptTokenCount": INPUT_TOKENS, "totalTokenCount": INPUT_TOKENS}
    if output:
        usage["candidatesTokenCount"] = output
        usage["totalTokenCount"] = INPUT_TOKENS + output
    return usage


def gemini_chunk(text: str, usage: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """Return one ``GenerateContentResponse`` as the REST API sends it."""
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": GEMINI_VERSION,
        "responseId": "resp-1",
    }


def gemini_stream(fail: bool = False) -> bytes:
    """Return a Gemini SSE stream: each chunk has the prompt count, the last one everything.

    ``fail``: an error chunk follows the first one, as the API sends when it fails half way.
    """
    chunks: list[dict[str, Any]] = [gemini_chunk(text, gemini_usage(0)) for text in TEXT[:-1]]
    chunks.append(gemini_chunk(TEXT[-1], gemini_usage(), "STOP"))
    if fail:
        chunks[1:] = [{"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}]
    return "".join(f"data: {json.dumps(chunk)}\r\n\r\n" for chunk in chunks).encode()


def _answered(body: dict[str, Any]) -> bool:
    """Tell whether a request's contents already carry a function's response."""
    return any(
        "functionResponse" in part
        for content in body.get("contents") or []
        for part in content.get("parts") or []
    )


def function_call() -> dict[str, Any]:
    """Return a reply that asks the caller to run ``get_weather`` (automatic function calling)."""
    reply = gemini_chunk("", gemini_usage(), "STOP")
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    reply["candidates"][0]["content"]["parts"] = [call]
    return reply


def gemini_answer(
    path: str, body: dict[str, Any], with_usage: bool, fail_stream: bool = False
) -> Answer:
    """Answer a Gemini API request (``/v1beta/models/<model>:<method>``)."""
    method = path.rpartition(":")[2].partition("?")[0]
    if method == "generateContent":
        if body.get("tools") and not _answered(body):
            return _json(function_call())
        return _json(gemini_chunk("".join(TEXT), gemini_usage(), "STOP"))
    if method == "streamGenerateContent":
        return 200, "text/event-stream", gemini_stream(fail_stream), {}
    if method == "batchEmbedContents":
        requests = body.get("requests") or []
        reply: dict[str, Any] = {"embeddings": [{"values": [0.25, -0.5, 1.0]} for _ in requests]}
        if with_usage:
            reply["usageMetadata"] = {"promptTokenCount": INPUT_TOKENS}
        return _json(reply)
    if method == "predict":
        image = base64.b64encode(b"\x89PNG fake").decode()
        return _json({"predictions": [{"bytesBase64Encoded": image, "mimeType": "image/png"}]})
    return 404, "application/json", b'{"error": {"code": 404, "message": "no such method"}}', {}


# -- Bedrock ------------------------------------------------------------------------------


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """Encode one AWS event-stream message: prelude + its CRC, headers, payload, message CRC."""
    # Each header: name length, name, type 7 (string), value length, value.
    encoded = b"".join(
        struct.pack("B", len(name))
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def event(kind: str, body: dict[str, Any]) -> bytes:
    """Encode one event of a Bedrock stream (``:event-type`` ``kind``, a JSON payload)."""
    headers = {":message-type": "event", ":event-type": kind, ":content-type": "application/json"}
    return event_message(headers, json.dumps(body).encode())


def bedrock_usage() -> dict[str, int]:
    """Return a Converse ``usage`` block."""
    return {
        "inputTokens": INPUT_TOKENS,
        "outputTokens": OUTPUT_TOKENS,
        "totalTokens": INPUT_TOKENS + OUTPUT_TOKENS,
    }


def converse_reply() -> dict[str, Any]:
    """Return a Converse response."""
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": "".join(TEXT)}]}},
        "stopReason": "end_turn",
        "usage": bedrock_usage(),
        "metrics": {"latencyMs": 12},
    }


def stream_exception() -> bytes:
    """Encode the exception a Bedrock stream ends with when the model fails half way."""
    headers = {
        ":message-type": "exception",
        ":exception-type": "modelStreamErrorException",
        ":content-type": "application/json",
    }
    return event_message(
        headers, json.dumps({"message": "boom", "originalStatusCode": 500}).encode()
    )


def converse_stream(fail: bool = False) -> bytes:
    """Return ConverseStream events: messageStart, deltas, stops, then metadata with usage.

    ``fail``: the stream breaks with a ``modelStreamErrorException`` after the first text.
    """
    events = [event("messageStart", {"role": "assistant"})]
    if fail:
        events.append(
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}})
        )
        return b"".join(events) + stream_exception()
    events += [
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})
        for text in TEXT
    ]
    events.append(event("contentBlockStop", {"contentBlockIndex": 0}))
    events.append(event("messageStop", {"stopReason": "end_turn"}))
    events.append(event("metadata", {"usage": bedrock_usage(), "metrics": {"latencyMs": 12}}))
    return b"".join(events)


def family(model_id: str) -> str:
    """Return the body format of a Bedrock model id: anthropic, nova, titan, llama or other."""
    for name, marker in (
        ("anthropic", "anthropic."),
        ("nova", "amazon.nova"),
        ("titan", "amazon.titan"),
        ("llama", "meta.llama"),
    ):
        if marker in model_id:
            return name
    return "other"


def invoke_body(kind: str) -> dict[str, Any]:
    """Return an InvokeModel response body in the model family's own format."""
    text = "".join(TEXT)
    if kind == "anthropic":
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-sonnet-20240620",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
        }
    if kind == "nova":
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "end_turn",
            "usage": bedrock_usage(),
        }
    if kind == "titan":
        return {
            "inputTextTokenCount": INPUT_TOKENS,
            "results": [
                {"tokenCount": OUTPUT_TOKENS, "outputText": text, "completionReason": "FINISH"}
            ],
        }
    if kind == "llama":
        return {
            "generation": text,
            "prompt_token_count": INPUT_TOKENS,
            "generation_token_count": OUTPUT_TOKENS,
            "stop_reason": "stop",
        }
    return {"outputs": [{"text": text, "stop_reason": "stop"}]}  # Mistral: no usage in the body


def _chunk(body: dict[str, Any]) -> bytes:
    return event("chunk", {"bytes": base64.b64encode(json.dumps(body).encode()).decode()})


def invoke_stream(kind: str) -> bytes:
    """Return InvokeModelWithResponseStream chunks; the last carries Bedrock's metrics."""
    metrics = {
        "inputTokenCount": INPUT_TOKENS,
        "outputTokenCount": OUTPUT_TOKENS,
        "invocationLatency": 12,
        "firstByteLatency": 3,
    }
    if kind == "anthropic":
        start = invoke_body("anthropic")
        start.update(
            content=[], stop_reason=None, usage={"input_tokens": INPUT_TOKENS, "output_tokens": 1}
        )
        bodies: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        bodies += [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in TEXT
        ]
        bodies.append({"type": "content_block_stop", "index": 0})
        bodies.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            }
        )
        bodies.append({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})
    else:  # Titan's format: text chunks, and the metrics on the last one
        bodies = [{"outputText": t, "index": 0} for t in TEXT]
        bodies[-1]["amazon-bedrock-invocationMetrics"] = metrics
    return b"".join(_chunk(body) for body in bodies)


def bedrock_answer(path: str, fail_stream: bool = False) -> Answer:
    """Answer a bedrock-runtime request (``/model/<modelId>/<operation>``)."""
    _, _, rest = path.partition("/model/")
    model_id, _, operation = rest.rpartition("/")
    model_id = unquote(model_id)
    stream = "application/vnd.amazon.eventstream"
    if operation == "converse":
        return _json(converse_reply())
    if operation == "converse-stream":
        return 200, stream, converse_stream(fail_stream), {}
    kind = family(model_id)
    if operation == "invoke":
        counts = {
            "X-Amzn-Bedrock-Input-Token-Count": str(INPUT_TOKENS),
            "X-Amzn-Bedrock-Output-Token-Count": str(OUTPUT_TOKENS),
        }
        return _json(invoke_body(kind), counts)
    if operation == "invoke-with-response-stream":
        return 200, stream, invoke_stream(kind), {}
    return 404, "application/json", b'{"message": "no such operation"}', {}


class FakeCloud(LoopbackState):
    """The server's state: requests seen, and failures to apply."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0  # answer this many next requests with HTTP 500
        self.embed_usage = True  # whether batchEmbedContents reports usageMetadata
        self.fail_streams = False  # whether streams break half way (an error mid-stream)

    def reset(self) -> None:
        """Forget requests and failures."""
        with self.lock:
            self.requests.clear()
            self.failures = 0
            self.embed_usage = True
            self.fail_streams = False

    def answer(self, path: str, body: dict[str, Any]) -> Answer:
        """Return status, content type, body and extra headers for one request."""
        with self.lock:
            self.requests.append((path, body))
            if self.failures:
                self.failures -= 1
                error = {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}
                headers = {"x-amzn-ErrorType": "InternalServerException"}
                return 500, "application/json", json.dumps(error).encode(), headers
            with_usage, fail = self.embed_usage, self.fail_streams
        if path.startswith("/model/"):
            return bedrock_answer(path, fail)
        return gemini_answer(path, body, with_usage, fail)


def _handler(state: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(LoopbackHandler):
        def do_POST(self) -> None:
            raw = self.read_body(b"")
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {}
            self.reply(*state.answer(self.path, body))

        do_PUT = do_POST  # S3, for a service budgetguard leaves alone

    return Handler


def serve() -> AbstractContextManager[FakeCloud]:
    """Run the fake Gemini and Bedrock APIs on a free loopback port in a thread."""
    state = FakeCloud()
    return loopback(state, _handler(state), "fake-cloud")
