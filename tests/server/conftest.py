"""Fixtures for the budget service: a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from budgetguard.server import RunningServer, ServerConfig, Tokens, start

ADMIN = "admin-token-for-tests-0001"
READ = "read-token-for-tests-0002"


class Reply:
    """One HTTP answer: status, headers, body (JSON decoded when it is JSON)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """Return the body as JSON."""
        return json.loads(self.body)


def call(
    url: str,
    method: str = "GET",
    body: bytes | dict[str, Any] | None = None,
    *,
    token: str | None = ADMIN,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Send one request; a dict body is sent as JSON; HTTP errors are returned, not raised."""
    sent = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RunningServer]:
    """Run the budget service over a SQLite ledger with an admin and a read-only token."""
    config = ServerConfig(
        ledger=f"sqlite:///{tmp_path / 'service.db'}",
        port=0,
        tokens=Tokens({ADMIN: "admin", READ: "read"}),
        read_timeout=1.0,
        max_body=64 * 1024,
    )
    with start(config) as running:
        yield running
