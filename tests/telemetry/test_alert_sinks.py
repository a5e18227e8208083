"""Alert delivery to a real HTTP receiver on loopback: signed, retried, once, off the caller."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from budgetguard import BudgetGuard, ConfigurationError, ThresholdCrossing
from budgetguard.alerts import EmailSink, LogSink, SlackSink, TeamsSink, WebhookSink

SECRET = "s3cret"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records requests and replies with ``status``."""

    def __init__(self, port: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = status
        self.delay = delay
        self.fail_first = 0  # answer 503 to this many requests first
        self.received = threading.Event()
        # While set to an unset Event, every reply waits for it (a receiver that hangs).
        self.gate: threading.Event | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                if receiver.gate is not None:
                    receiver.gate.wait(60)
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
    """A receiver down for a while gets the alert, signed and whole, once, after it comes back."""
    port = free_port()
    sink = WebhookSink(
        f"http://127.0.0.1:{port}/hook",
        secret=SECRET,
        backoff=0.05,
        max_backoff=0.2,
        max_attempts=50,
    )
    failed = threading.Semaphore(0)
    attempt = sink._attempt

    def counted(alert: ThresholdCrossing) -> tuple[bool, str]:
        retry, reason = attempt(alert)
        if retry:
            failed.release()
        return retry, reason

    sink._attempt = counted  # type: ignore[method-assign]
    sink(crossing())
    for _ in range(3):  # nobody listens: three attempts fail before the receiver starts
        assert failed.acquire(timeout=5)
    receiver = Receiver(port)
    try:
        assert receiver.received.wait(5)
        assert sink.flush(5)
        ((headers, body),) = receiver.requests
        timestamp = headers["X-Budgetguard-Timestamp"]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        assert headers["X-Budgetguard-Signature"] == f"sha256={expected.hexdigest()}"
        payload = json.loads(body)
        assert payload["id"] == headers["Idempotency-Key"] == "user:alice|2026-12|0.8"
        assert (payload["threshold"], payload["limit"], payload["spent"]) == ("0.8", "1.00", "0.85")
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
    receiver = Receiver()
    receiver.gate = threading.Event()  # the receiver answers only when the test lets it
    sink = WebhookSink(receiver.url)
    guard = BudgetGuard(metrics=False, alert_thresholds=["0.5"], on_threshold=sink)
    guard.set_budget("1", period="daily")
    try:
        guard.charge("0.75", user="alice")
        # A delivery on the caller's thread would have waited for the answer.
        assert not receiver.received.is_set()
        receiver.gate.set()
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


# -- Microsoft Teams -------------------------------------------------------------------


def test_teams_gets_an_adaptive_card(receiver: Receiver) -> None:
    """TeamsSink posts a message whose one attachment is an Adaptive Card with the figures."""
    sink = TeamsSink(receiver.url)
    sink(crossing())
    assert sink.flush(5)
    ((headers, body),) = receiver.requests
    assert headers["Content-Type"] == "application/json"
    message = json.loads(body)
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    title, text, facts = card["body"]
    assert title["text"] == "Budget user:alice reached 80% of $1.00"
    assert text["text"] == (
        "Budget user:alice reached 80% of its limit: $0.85 of $1.00 (monthly, 2026-12)"
    )
    assert {fact["title"]: fact["value"] for fact in facts["facts"]} == {
        "Budget": "user:alice",
        "Period": "monthly (2026-12)",
        "Spent": "$0.85",
        "Limit": "$1.00",
        "Threshold": "80%",
    }
    sink.close()


def test_teams_forecast_card_says_when_the_budget_runs_out(receiver: Receiver) -> None:
    """A forecast alert's card names the day the limit runs out."""
    forecast = ThresholdCrossing(
        budget="global",
        user=None,
        period="monthly",
        fraction=Decimal(1),
        limit=Decimal(100),
        spent=Decimal(60),
        window="2026-12",
        kind="forecast",
        runs_out_at=datetime(2026, 12, 19, 6, 0, tzinfo=timezone.utc),
    )
    sink = TeamsSink(receiver.url)
    sink(forecast)
    assert sink.flush(5)
    card = json.loads(receiver.requests[0][1])["attachments"][0]["content"]
    assert card["body"][0]["text"] == "Budget global runs out on 2026-12-19"
    facts = {fact["title"]: fact["value"] for fact in card["body"][2]["facts"]}
    assert facts["Runs out"] == "2026-12-19 06:00 UTC"


def test_teams_alert_arrives_once_the_workflow_is_back() -> None:
    """A Teams workflow down for a while gets the card once it answers again (202)."""
    port = free_port()
    sink = TeamsSink(f"http://127.0.0.1:{port}/workflows/1", backoff=0.05, max_backoff=0.2)
    sink.max_attempts = 50
    sink(crossing())
    time.sleep(0.5)  # several attempts fail: nobody listens
    receiver = Receiver(port, status=202)
    try:
        assert receiver.received.wait(5)
        assert sink.flush(5)
        sink(crossing())  # the same alert again: not sent twice
        assert sink.flush(5)
        assert len(receiver.requests) == 1
    finally:
        sink.close()
        receiver.stop()


# -- email -----------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler that keeps each message, and can refuse or hold the next ones."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.Message]] = []
        self.sessions: list[tuple[bool, bool]] = []  # (over TLS, logged in) per message
        self.replies: list[str] = []  # answer the next DATA with these, first
        self.attempts = 0
        self.hold: threading.Event | None = None
        self.received = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        if self.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 30)
        if self.replies:
            return self.replies.pop(0)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        self.sessions.append((session.ssl is not None, bool(session.authenticated)))
        self.received.set()
        return "250 OK"


def smtp_server(mailbox: Mailbox, port: int = 0, **options: Any) -> Controller:
    """Start a real SMTP server (aiosmtpd) on loopback, in its own thread."""
    controller = Controller(mailbox, hostname="127.0.0.1", port=port or free_port(), **options)
    controller.start()
    return controller


def mail_sink(port: int, **options: Any) -> EmailSink:
    """Return an email sink to the loopback server on ``port``, retrying quickly."""
    options.setdefault("backoff", 0.05)
    options.setdefault("max_backoff", 0.2)
    return EmailSink(
        "127.0.0.1",
        port=port,
        sender="budgets@example.com",
        recipients=["ops@example.com", "cfo@example.com"],
        **options,
    )


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """Give a mailbox behind a plain SMTP server, and the server's port."""
    box = Mailbox()
    controller = smtp_server(box)
    yield box, controller.port
    controller.stop()


def test_email_reaches_a_real_smtp_server(mailbox: tuple[Mailbox, int]) -> None:
    """EmailSink mails the alert's text and figures to every recipient."""
    box, port = mailbox
    sink = mail_sink(port)
    sink(crossing())
    assert sink.flush(5)
    ((sender, recipients, message),) = box.messages
    assert sender == "budgets@example.com"
    assert recipients == ["ops@example.com", "cfo@example.com"]
    assert message["Subject"] == "[budgetguard] Budget user:alice reached 80% of $1.00"
    assert message["To"] == "ops@example.com, cfo@example.com"
    assert message["X-Budgetguard-Alert"] == "user:alice|2026-12|0.8"
    assert message["Message-ID"] == sink.message(crossing())["Message-ID"]
    body = message.get_body().get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert body.startswith("Budget user:alice reached 80% of its limit: $0.85 of $1.00")
    assert "Spent: $0.85\nLimit: $1.00\n" in body
    sink.close()


def test_email_arrives_once_the_server_is_back() -> None:
    """An SMTP server down for a while gets the alert, exactly once, after it comes back."""
    port = free_port()
    sink = mail_sink(port, max_attempts=50)
    sink(crossing())
    time.sleep(0.5)  # several attempts fail: nobody listens
    box = Mailbox()
    controller = smtp_server(box, port)
    try:
        assert box.received.wait(10)
        assert sink.flush(5)
        sink(crossing())  # the same alert again: not sent twice
        assert sink.flush(5)
        assert len(box.messages) == 1
    finally:
        sink.close()
        controller.stop()


def test_a_temporary_refusal_is_retried_and_a_permanent_one_is_not(
    mailbox: tuple[Mailbox, int],
) -> None:
    """451 is tried again until accepted; 550 is final after one attempt."""
    box, port = mailbox
    box.replies = ["451 4.3.0 try again later", "451 4.3.0 try again later"]
    sink = mail_sink(port, backoff=0.01, max_backoff=0.02)
    sink(crossing())
    assert sink.flush(5)
    assert (box.attempts, len(box.messages)) == (3, 1)
    box.replies = ["550 5.1.1 no such mailbox"]
    sink(crossing("0.9"))
    assert sink.flush(5)
    assert (box.attempts, len(box.messages)) == (4, 1)
    sink.close()


def test_email_is_never_sent_on_the_callers_thread(mailbox: tuple[Mailbox, int]) -> None:
    """The charge that crosses a threshold returns while the SMTP server still holds the mail."""
    box, port = mailbox
    box.hold = threading.Event()
    sink = mail_sink(port)
    guard = BudgetGuard(metrics=False, alert_thresholds=["0.5"], on_threshold=sink)
    guard.set_budget("1", period="daily")
    try:
        guard.charge("0.75", user="alice")
        # Sent on this thread, the charge would have waited for the server.
        assert box.messages == []
    finally:
        box.hold.set()
    assert sink.flush(10)
    assert len(box.messages) == 1
    sink.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_email_over_starttls_logs_in(tmp_path: Path) -> None:
    """With starttls=True the sink upgrades to TLS, verifies the server and logs in."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append((data.login, data.password))
        return AuthResult(success=(data.login, data.password) == (b"alerts", b"pa55"))

    box = Mailbox()
    controller = smtp_server(
        box,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    trusted = ssl.create_default_context(cafile=str(cert))
    sink = mail_sink(
        controller.port, starttls=True, ssl_context=trusted, username="alerts", password="pa55"
    )
    try:
        sink(crossing())
        assert sink.flush(10)
        assert len(box.messages) == 1
        assert box.sessions == [(True, True)]
        assert logins == [(b"alerts", b"pa55")]
    finally:
        sink.close()
        controller.stop()


def test_email_to_an_untrusted_server_is_not_sent(tmp_path: Path) -> None:
    """A server whose certificate does not verify gets nothing, and no retries."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    box = Mailbox()
    controller = smtp_server(box, tls_context=server_tls, require_starttls=True)
    sink = mail_sink(controller.port, starttls=True)  # the system's trust store
    try:
        sink(crossing())
        assert sink.flush(10)
        assert box.messages == []
        assert box.attempts == 0
    finally:
        sink.close()
        controller.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"recipients": []}, "at least one address"),
        ({"recipients": ["ops"]}, "'ops' is not an email address"),
        ({"sender": "budgets"}, "'budgets' is not an email address"),
        ({"username": "alerts", "password": "pa55"}, "in clear"),
        ({"password": "pa55"}, "password= needs username="),
        ({"port": 0}, "port must be"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_email_settings_are_refused(options: dict[str, Any], message: str) -> None:
    """Each bad setting raises ConfigurationError naming it."""
    settings: dict[str, Any] = {
        "sender": "budgets@example.com",
        "recipients": ["ops@example.com"],
        **options,
    }
    with pytest.raises(ConfigurationError, match=message):
        EmailSink("smtp.example.com", **settings)
