"""Alert delivery to a real HTTP receiver on loopback: signed, retried, once, off the caller."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from budgetguard import BudgetGuard, ThresholdCrossing
from budgetguard.alerts import LogSink, SlackSink, WebhookSink

SECRET = "s3cret"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records requests and replies with ``status``."""

    def __init__(self, port: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = status
        self.delay = delay
        self.fail_first = 0  # answer 503 to this many requests first
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                receiver.requests.append((dict(self.headers.items()), body))
                status = receiver.status
                if receiver.fail_first:
                    receiver.fail_first -= 1
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status < 300:
                    receiver.received.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Give a receiver that answers 200."""
    receiver = Receiver()
    yield receiver
    receiver.stop()


def crossing(fraction: str = "0.8", window: str = "2026-12") -> ThresholdCrossing:
    """Build the crossing of alice's $1 monthly budget."""
    return ThresholdCrossing(
        budget="user:alice",
        user="alice",
        period="monthly",
        fraction=Decimal(fraction),
        limit=Decimal("1.00"),
        spent=Decimal("0.85"),
        window=window,
    )


def free_port() -> int:
    """Return a loopback port nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_webhook_is_signed_and_carries_the_alert(receiver: Receiver) -> None:
    """The receiver verifies the HMAC-SHA256 of timestamp and body, and reads exact amounts."""
    sink = WebhookSink(receiver.url, secret=SECRET)
    sink(crossing())
    assert sink.flush(5)
    ((headers, body),) = receiver.requests
    timestamp = headers["X-Budgetguard-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(headers["X-Budgetguard-Signature"], f"sha256={expected.hexdigest()}")
    assert abs(int(timestamp) - time.time()) < 60
    payload = json.loads(body)
    assert payload["budget"] == "user:alice"
    assert (payload["threshold"], payload["limit"], payload["spent"]) == ("0.8", "1.00", "0.85")
    assert headers["Idempotency-Key"] == payload["id"] == "user:alice|2026-12|0.8"
    sink.close()


def test_alert_arrives_once_the_receiver_is_back() -> None:
    """A receiver down for a while gets the alert, once, after it comes back."""
    port = free_port()
    sink = WebhookSink(
        f"http://127.0.0.1:{port}/hook",
        secret=SECRET,
        backoff=0.05,
        max_backoff=0.2,
        max_attempts=50,
    )
    sink(crossing())
    time.sleep(0.5)  # several attempts fail: nobody listens
    receiver = Receiver(port)
    try:
        assert receiver.received.wait(5)
        assert sink.flush(5)
        assert len(receiver.requests) == 1
    finally:
        sink.close()
        receiver.stop()


def test_retries_are_bounded() -> None:
    """A receiver that always fails with 503 sees exactly max_attempts requests."""
    receiver = Receiver(status=503)
    sink = WebhookSink(receiver.url, backoff=0.01, max_backoff=0.02, max_attempts=3)
    try:
        sink(crossing())
        assert sink.flush(5)
        assert len(receiver.requests) == 3
    finally:
        sink.close()
        receiver.stop()


def test_a_client_error_is_not_retried() -> None:
    """A 400 reply is final: the alert is not sent again."""
    receiver = Receiver(status=400)
    sink = WebhookSink(receiver.url, backoff=0.01, max_attempts=5)
    try:
        sink(crossing())
        assert sink.flush(5)
        assert len(receiver.requests) == 1
    finally:
        sink.close()
        receiver.stop()


def test_the_same_alert_is_sent_once(receiver: Receiver) -> None:
    """A crossing handed to the sink twice is delivered once; another window is another alert."""
    sink = WebhookSink(receiver.url)
    sink(crossing())
    sink(crossing())
    sink(crossing(window="2027-01"))
    assert sink.flush(5)
    assert sorted(json.loads(body)["window"] for _, body in receiver.requests) == [
        "2026-12",
        "2027-01",
    ]
    sink.close()


def test_delivery_never_blocks_the_call() -> None:
    """A guarded call that crosses a threshold returns before a slow receiver answers."""
    receiver = Receiver(delay=1.0)
    sink = WebhookSink(receiver.url)
    guard = BudgetGuard(metrics=False, alert_thresholds=["0.5"], on_threshold=sink)
    guard.set_budget("1", period="daily")
    try:
        started = time.perf_counter()
        guard.charge("0.75", user="alice")
        assert time.perf_counter() - started < 0.5
        assert receiver.received.wait(5)
        assert sink.flush(5)
    finally:
        sink.close()
        receiver.stop()


def test_guard_sends_each_threshold_once_per_window(receiver: Receiver) -> None:
    """Spending on past a threshold, a guard with a listener sink delivers it once."""
    sink = WebhookSink(receiver.url)
    guard = BudgetGuard(metrics=False, alert_thresholds=["0.5", "0.9"])
    guard.add_listener(sink)
    guard.set_budget("1", period="daily")
    for _ in range(10):
        guard.charge("0.1", user="bob")
    assert sink.flush(5)
    assert sorted(json.loads(body)["threshold"] for _, body in receiver.requests) == ["0.5", "0.9"]
    sink.close()


def test_slack_gets_a_text_message(receiver: Receiver) -> None:
    """SlackSink posts {"text": ...} naming the budget, the percentage and the amounts."""
    sink = SlackSink(receiver.url)
    sink(crossing())
    assert sink.flush(5)
    ((_, body),) = receiver.requests
    assert json.loads(body) == {
        "text": ":warning: Budget user:alice reached 80% of its limit: "
        "$0.85 of $1.00 (monthly, 2026-12)"
    }
    sink.close()


def test_log_sink_logs_the_alert(caplog: pytest.LogCaptureFixture) -> None:
    """LogSink writes one WARNING line on budgetguard.alerts."""
    with caplog.at_level(logging.WARNING, logger="budgetguard.alerts"):
        LogSink()(crossing())
    (record,) = [r for r in caplog.records if r.name == "budgetguard.alerts"]
    assert record.levelno == logging.WARNING
    assert "reached 80% of its limit" in record.getMessage()


def test_a_script_that_exits_at_once_still_delivers(receiver: Receiver) -> None:
    """A process that crosses a threshold and exits right away delivers the alert first."""
    script = textwrap.dedent(
        f"""
        import budgetguard as bg
        from budgetguard.alerts import WebhookSink

        guard = bg.BudgetGuard(
            metrics=False, alert_thresholds=[0.5], on_threshold=WebhookSink({receiver.url!r})
        )
        guard.set_budget("1", period="daily")
        guard.charge("0.75", user="alice")
        """
    )
    receiver.fail_first = 1  # the retry comes a second later, after the main thread ended
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert receiver.received.is_set()
    assert len(receiver.requests) == 2
