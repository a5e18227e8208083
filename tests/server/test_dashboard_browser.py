"""The spend dashboard in a real headless Chromium: sign-in, numbers that match the ledger."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetguard.server import RunningServer

from .conftest import ADMIN, READ, call

websockets_sync = pytest.importorskip("websockets.sync.client")

pytestmark = pytest.mark.timeout(120)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("BUDGETGUARD_REQUIRE_CHROMIUM"):
        pytest.fail("no Chromium found; .ci/run installs Debian's chromium package")
    pytest.skip("no Chromium on this machine (apt-get install chromium)")


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page session."""

    def __init__(self, url: str) -> None:
        self._stack = contextlib.ExitStack()
        self._socket = self._stack.enter_context(
            websockets_sync.connect(url, max_size=64 * 1024 * 1024)
        )
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        self._socket.send(json.dumps(message))
        while True:
            reply = json.loads(self._socket.recv(timeout=30))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self._events.append(reply)

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """Return the next ``event`` (one seen already counts)."""
        deadline = time.monotonic() + timeout
        while True:
            for position, seen in enumerate(self._events):
                if seen.get("method") == event:
                    del self._events[: position + 1]
                    return seen
            self._events.append(
                json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            )

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its value."""
        found = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return found["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait until the page has loaded."""
        self._events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def close(self) -> None:
        """Close the connection."""
        self._stack.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """Start a headless Chromium and attach to one fresh page."""
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            _browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            assert process.poll() is None, "chromium exited while starting"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        tools.send("Page.enable")
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield tools
        tools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _spend(service: RunningServer) -> None:
    guard = service.guard
    guard.set_budget("100", period="monthly")
    guard.set_budget("10", user="alice", period="monthly")
    guard.set_budget("2", user="bob", period="daily")
    guard.set_budget("0.50", user="carol", period="monthly")
    guard.record_spend("3.25", user="alice", model="gpt-4o")
    guard.record_spend("1.5", user="alice", model="claude-sonnet-4")
    guard.record_spend("1.70", user="bob", model="gpt-4o-mini")
    guard.record_spend("0.50", user="carol", model="gpt-4o")


def _money(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def test_dashboard_signs_in_and_matches_the_ledger(
    service: RunningServer, browser: DevTools, tmp_path: Path
) -> None:
    """Behind auth the page asks for a token; once signed in its numbers are the ledger's."""
    _spend(service)
    browser.open(service.url + "/")
    assert browser.evaluate("location.pathname") == "/login"
    browser.evaluate(
        f"document.querySelector('input[name=token]').value = {json.dumps('wrong' * 5)};"
        "document.querySelector('form').submit()"
    )
    browser.wait_for("Page.loadEventFired")
    assert "not valid" in browser.evaluate("document.body.innerText")
    browser.evaluate(
        f"document.querySelector('input[name=token]').value = {json.dumps(READ)};"
        "document.querySelector('form').submit()"
    )
    browser.wait_for("Page.loadEventFired")
    assert browser.evaluate("location.pathname") == "/"
    rows = browser.evaluate(
        "[...document.querySelectorAll('#budgets tbody tr')].map(r => ({"
        "budget: r.dataset.budget, user: r.dataset.user,"
        "limit: r.querySelector('.limit').textContent,"
        "spent: r.querySelector('.spent').textContent,"
        "remaining: r.querySelector('.remaining').textContent}))"
    )
    shown = {row["budget"]: row for row in rows}
    for status in service.guard.budget_statuses():
        row = shown[status.name]
        assert _money(row["limit"]) == status.limit
        assert _money(row["spent"]) == status.spent
        assert _money(row["remaining"]) == max(Decimal(0), status.limit - status.spent)
    assert len(rows) == len(service.guard.budget_statuses()) == 4
    assert _money(browser.evaluate("document.getElementById('total').textContent")) == Decimal(
        "6.95"
    )
    assert browser.evaluate("document.getElementById('exhausted').textContent") == "1"
    top = browser.evaluate(
        "[...document.querySelectorAll('#top-users tbody td:first-child')].map(c => c.textContent)"
    )
    assert top == ["alice", "bob", "carol"]
    days = browser.evaluate("[...document.querySelectorAll('#per-day .day')].map(d => d.title)")
    assert len(days) == 14 and days[-1].endswith(": $6.95")
    assert all(day.endswith(": $0.00") for day in days[:-1])
    # The page loaded nothing from anywhere else.
    assert (
        browser.evaluate(
            "performance.getEntriesByType('resource')"
            ".filter(e => !e.name.startsWith(location.origin)).length"
        )
        == 0
    )
    shot = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    (tmp_path / "dashboard.png").write_bytes(shot)
    if os.environ.get("BUDGETGUARD_SCREENSHOT"):
        Path(os.environ["BUDGETGUARD_SCREENSHOT"]).write_bytes(shot)


def test_session_cookie_cannot_change_anything(service: RunningServer, browser: DevTools) -> None:
    """The dashboard's cookie opens read routes only: a fetch to an admin route gets 401."""
    service.guard.set_budget("10", user="alice")
    # The page's own policy forbids fetch(); lift it to act as injected script would.
    browser.send("Page.setBypassCSP", enabled=True)
    browser.open(service.url + "/login")
    browser.evaluate(
        f"document.querySelector('input[name=token]').value = {json.dumps(ADMIN)};"
        "document.querySelector('form').submit()"
    )
    browser.wait_for("Page.loadEventFired")
    result = browser.send(
        "Runtime.evaluate",
        expression=(
            "fetch('/v1/spend', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            "body: JSON.stringify({user: 'alice', cost: '5'})}).then(r => r.status)"
        ),
        awaitPromise=True,
        returnByValue=True,
    )
    assert result["result"]["value"] == 401
    assert service.guard.spend("alice") == 0
    assert call(service.url + "/v1/budgets", token=None).status == 401
