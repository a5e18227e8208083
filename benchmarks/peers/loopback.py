"""A loopback server that answers ``POST /v1/chat/completions`` the way OpenAI's API does.

Run on its own (``python benchmarks/peers/loopback.py``) it prints its URL on
the first line of stdout and serves until killed; ``run_all.py`` starts it in
a process of its own, so the server's work never competes with the measured
client for one interpreter's lock. Every answer reports 1000 input and 500
output tokens of ``gpt-4o-mini-2024-07-18``. The same approach as the test
suite's ``tests/instrument/fake_llm.py``, cut to the one endpoint the
benchmark calls.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "gpt-4o-mini-2024-07-18"
INPUT_TOKENS = 1000
OUTPUT_TOKENS = 500


def chat_completion(model: str) -> dict[str, Any]:
    """Return a ``chat.completion`` object with fixed usage."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello wide world", "refusal": None},
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


_BODY = json.dumps(chat_completion(MODEL)).encode()


class Handler(BaseHTTPRequestHandler):
    """Answer every POST to the chat endpoint with the same completion; keep connections open."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm
    # and the client's delayed ACK add 40 ms to every answer.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the benchmark reads only the first line of stdout."""


def main() -> None:
    """Serve on a free loopback port; print the base URL first."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
