"""Alert sinks: a webhook (JSON, HMAC-SHA256 signed), Slack, Microsoft Teams, email, the log."""

from __future__ import annotations

import atexit
import collections
import email.utils
import hashlib
import hmac
import json
import logging
import queue
import random
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..events import CallOutcome, ThresholdCrossing

if TYPE_CHECKING:
    from ..errors import BudgetExceededError

__all__ = [
    "EmailSink",
    "LogSink",
    "SlackSink",
    "TeamsSink",
    "WebhookSink",
    "alert_payload",
    "sign",
    "teams_card",
]

logger = logging.getLogger("budgetguard.alerts")

#: The header carrying ``sha256=<hex>``: HMAC-SHA256 of ``"<timestamp>.<body>"``.
SIGNATURE_HEADER = "X-Budgetguard-Signature"
#: The header carrying the Unix time the body was signed at, in seconds.
TIMESTAMP_HEADER = "X-Budgetguard-Timestamp"

# HTTP statuses worth trying again: the receiver may succeed later.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Alerts waiting for the worker; past this, new alerts are dropped and logged.
_MAX_QUEUED = 1000
# How many delivered alert ids a sink remembers to refuse sending one twice.
_REMEMBERED = 10000


def alert_payload(crossing: ThresholdCrossing) -> dict[str, Any]:
    """Return the JSON body of an alert; amounts are exact decimal strings."""
    return {
        "type": f"budget.{crossing.kind}",
        "id": crossing.id,
        "budget": crossing.budget,
        "user": crossing.user,
        "period": crossing.period,
        "window": crossing.window,
        "threshold": str(crossing.fraction),
        "limit": str(crossing.limit),
        "spent": str(crossing.spent),
        "runs_out_at": crossing.runs_out_at.isoformat() if crossing.runs_out_at else None,
        "text": _text(crossing),
    }


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """Return the signature header value of ``body`` sent at ``timestamp``.

    Signing the timestamp with the body lets a receiver refuse old replays.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _text(crossing: ThresholdCrossing) -> str:
    if crossing.runs_out_at is not None:
        return (
            f"At this rate budget {crossing.budget} runs out on "
            f"{crossing.runs_out_at:%Y-%m-%d %H:%M} UTC: ${crossing.spent} of "
            f"${crossing.limit} spent ({crossing.period}, {crossing.window})"
        )
    return (
        f"Budget {crossing.budget} reached {crossing.percent}% of its limit: "
        f"${crossing.spent} of ${crossing.limit} ({crossing.period}, {crossing.window})"
    )


class _Sink:
    """A Listener that reacts to threshold crossings only; also callable as on_threshold."""

    def __call__(self, crossing: ThresholdCrossing) -> None:
        self.threshold_crossed(crossing)

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Deliver one alert."""
        raise NotImplementedError

    def call_ended(self, outcome: CallOutcome) -> None:
        """Ignore calls: only alerts are delivered."""

    def call_refused(
        self, error: BudgetExceededError, *, user: str | None, request_model: str | None
    ) -> None:
        """Ignore refusals: only alerts are delivered."""

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        """Ignore storage failures: only alerts are delivered."""


class LogSink(_Sink):
    """Write each alert to a logger (``budgetguard.alerts`` at WARNING by default)."""

    def __init__(self, logger_: logging.Logger | None = None, level: int = logging.WARNING) -> None:
        self.logger = logger_ or logger
        self.level = level

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Log one alert."""
        self.logger.log(self.level, "%s", _text(crossing), extra={"budget_alert": crossing.id})


class _QueuedSink(_Sink):
    """Deliver alerts from one background thread: queued once per id, retried with backoff.

    The caller's thread only puts the alert on a queue. The worker calls
    ``_attempt``; while it says "try again" (a network error, a timeout, a
    temporary refusal) it waits ``backoff`` seconds, doubling up to
    ``max_backoff`` (with jitter), for at most ``max_attempts`` attempts, then
    logs the alert as lost. An alert id the sink has already delivered or
    queued is not sent again. At interpreter exit the sink waits up to
    ``exit_timeout`` seconds for queued alerts, so a short script that crossed
    a threshold does not exit before telling anyone.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        exit_timeout: float,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        if not (timeout > 0 and backoff >= 0 and max_backoff >= backoff):
            raise ConfigurationError(
                "timeout must be > 0 and 0 <= backoff <= max_backoff, got "
                f"timeout={timeout!r}, backoff={backoff!r}, max_backoff={max_backoff!r}"
            )
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.exit_timeout = exit_timeout
        self._queue: queue.Queue[ThresholdCrossing | None] = queue.Queue(_MAX_QUEUED)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = threading.Event()

    #: Where alerts go, as logged when one is lost.
    target = ""

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Queue one alert for delivery; return at once."""
        with self._lock:
            if self._closed.is_set() or crossing.id in self._seen:
                return
            self._seen[crossing.id] = None
            if len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name=f"budgetguard-{type(self).__name__}", daemon=True
                )
                self._worker.start()
                atexit.register(_flush_at_exit, weakref.ref(self))
        try:
            self._queue.put_nowait(crossing)
        except queue.Full:
            logger.error("alert queue full, dropping the alert: %s", _text(crossing))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert is delivered or given up; return whether it was."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Deliver what is queued (waiting at most ``timeout``) and stop the worker."""
        self.flush(timeout)
        with self._lock:
            self._closed.set()
            worker = self._worker
        if worker is not None:
            self._queue.put(None)
            worker.join(timeout)

    # -- the worker --------------------------------------------------------

    def _run(self) -> None:
        while True:
            crossing = self._queue.get()
            try:
                if crossing is None:
                    return
                self._deliver(crossing)
            except Exception:  # the worker must outlive any one alert
                logger.exception("budgetguard could not deliver an alert")
            finally:
                self._queue.task_done()

    def _deliver(self, crossing: ThresholdCrossing) -> None:
        delay = self.backoff
        for attempt in range(1, self.max_attempts + 1):
            retry, reason = self._attempt(crossing)
            if not retry:
                return
            if attempt == self.max_attempts or self._closed.is_set():
                break
            # Full jitter on the upper half: receivers coming back are not stampeded.
            self._closed.wait(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.max_backoff)
        logger.error(
            "alert %s not delivered to %s after %d attempts (%s): %s",
            crossing.id,
            self.target,
            attempt,
            reason,
            _text(crossing),
        )

    def _attempt(self, crossing: ThresholdCrossing) -> tuple[bool, str]:
        """Send once; return (whether to try again, why it failed)."""
        raise NotImplementedError


class WebhookSink(_QueuedSink):
    """POST each alert as signed JSON to ``url`` from a background thread.

    The worker sends it with ``Idempotency-Key: <alert id>``; a network
    error, a timeout or a 408/425/429/5xx reply is retried with backoff (see
    the options below), other replies are final. With ``secret``, the body is
    signed (``X-Budgetguard-Signature``, see :func:`sign`). An alert id the
    sink has already delivered or queued is not sent again, and queued alerts
    are delivered before the interpreter exits (up to ``exit_timeout``).
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes | None = None,
        timeout: float = 5.0,
        max_attempts: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        exit_timeout: float = 10.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"a webhook URL must be http:// or https://, not {url!r}")
        super().__init__(
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            exit_timeout=exit_timeout,
        )
        self.url = self.target = url
        self._secret = secret
        self._headers = dict(headers or {})
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _body(self, crossing: ThresholdCrossing) -> bytes:
        return json.dumps(alert_payload(crossing), separators=(",", ":")).encode()

    def _attempt(self, crossing: ThresholdCrossing) -> tuple[bool, str]:
        return self._post(crossing, self._body(crossing))

    def _post(self, crossing: ThresholdCrossing, body: bytes) -> tuple[bool, str]:
        """Send once; return (whether to try again, why it failed)."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "budgetguard",
            "Idempotency-Key": crossing.id,
            **self._headers,
        }
        if self._secret is not None:
            timestamp = str(int(self._clock()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return False, ""
        except urllib.error.HTTPError as error:
            if error.code in _RETRY_STATUSES:
                return True, f"HTTP {error.code}"
            logger.error("alert %s refused by %s: HTTP %d", crossing.id, self.url, error.code)
            return False, f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            return True, str(getattr(error, "reason", error))


class SlackSink(WebhookSink):
    """Post each alert to a Slack incoming webhook as a short message."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)

    def _body(self, crossing: ThresholdCrossing) -> bytes:
        text = f":warning: {_text(crossing)}"
        return json.dumps({"text": text}).encode()


class TeamsSink(WebhookSink):
    """Post each alert to a Microsoft Teams channel as an Adaptive Card.

    ``url`` is the channel's Workflows webhook ("Post to a channel when a
    webhook request is received") or a legacy incoming webhook; both take a
    ``message`` with an Adaptive Card attachment. Delivery, retries and
    options are those of :class:`WebhookSink`.
    """

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)

    def _body(self, crossing: ThresholdCrossing) -> bytes:
        return json.dumps(teams_card(crossing)).encode()


def teams_card(crossing: ThresholdCrossing) -> dict[str, Any]:
    """Return the Teams message of an alert: one Adaptive Card with its text and figures."""
    facts = [{"title": title, "value": value} for title, value in _facts(crossing)]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": _subject(crossing),
                "weight": "Bolder",
                "size": "Medium",
                "style": "heading",
                "wrap": True,
            },
            {"type": "TextBlock", "text": _text(crossing), "wrap": True},
            {"type": "FactSet", "facts": facts},
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _subject(crossing: ThresholdCrossing) -> str:
    if crossing.runs_out_at is not None:
        return f"Budget {crossing.budget} runs out on {crossing.runs_out_at:%Y-%m-%d}"
    return f"Budget {crossing.budget} reached {crossing.percent}% of ${crossing.limit}"


def _facts(crossing: ThresholdCrossing) -> list[tuple[str, str]]:
    facts = [
        ("Budget", crossing.budget),
        ("Period", f"{crossing.period} ({crossing.window})"),
        ("Spent", f"${crossing.spent}"),
        ("Limit", f"${crossing.limit}"),
    ]
    if crossing.runs_out_at is not None:
        facts.append(("Runs out", f"{crossing.runs_out_at:%Y-%m-%d %H:%M} UTC"))
    else:
        facts.append(("Threshold", f"{crossing.percent}%"))
    return facts


class EmailSink(_QueuedSink):
    """Mail each alert through an SMTP server, from a background thread.

    ``host`` and ``port`` (default 587 with ``starttls=True``, else 25) name
    the server; ``sender`` and ``recipients`` the envelope and headers. With
    ``starttls=True`` the connection is upgraded to TLS (verified with
    ``ssl_context``, default: the system's trust store) before anything else
    is sent, and ``username`` / ``password`` log in; a login without TLS is
    refused here, since it would send the password in clear.

    Delivery is that of :class:`WebhookSink`: never on the caller's thread,
    once per alert id, retried with backoff on network errors, timeouts and
    the server's temporary (4xx) replies; a permanent (5xx) refusal is final.
    Each alert's ``Message-ID`` is derived from its id, so a retry after a
    reply lost in transit is the same message, which receiving systems
    de-duplicate.
    """

    def __init__(
        self,
        host: str,
        *,
        sender: str,
        recipients: str | Iterable[str],
        port: int | None = None,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        subject_prefix: str = "[budgetguard]",
        timeout: float = 10.0,
        max_attempts: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        exit_timeout: float = 10.0,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"host must name the SMTP server, not {host!r}")
        if port is None:
            port = 587 if starttls else 25
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
        named = [recipients] if isinstance(recipients, str) else list(recipients)
        for address in (sender, *named):
            if not isinstance(address, str) or "@" not in address:
                raise ConfigurationError(f"{address!r} is not an email address")
        if not named:
            raise ConfigurationError("recipients must name at least one address")
        if password is not None and username is None:
            raise ConfigurationError("password= needs username=")
        if username is not None and not starttls:
            raise ConfigurationError(
                "username= without starttls=True would send the password in clear; "
                "pass starttls=True"
            )
        super().__init__(
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            exit_timeout=exit_timeout,
        )
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = tuple(named)
        self.starttls = starttls
        self.username = username
        self._password = password
        self._ssl_context = ssl_context
        self.subject_prefix = subject_prefix
        self.target = f"smtp://{host}:{port}"

    def __repr__(self) -> str:
        return f"EmailSink({self.target!r}, recipients={list(self.recipients)!r})"

    def message(self, crossing: ThresholdCrossing) -> EmailMessage:
        """Return the email of one alert."""
        message = EmailMessage()
        subject = _subject(crossing)
        message["Subject"] = f"{self.subject_prefix} {subject}" if self.subject_prefix else subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Date"] = email.utils.formatdate(usegmt=True)
        digest = hashlib.sha256(crossing.id.encode()).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@budgetguard.alert>"
        message["X-Budgetguard-Alert"] = crossing.id
        lines = [_text(crossing), ""]
        lines += [f"{title}: {value}" for title, value in _facts(crossing)]
        message.set_content("\n".join(lines) + "\n")
        return message

    def _attempt(self, crossing: ThresholdCrossing) -> tuple[bool, str]:
        message = self.message(crossing)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=self._ssl_context or ssl.create_default_context())
                if self.username is not None:
                    smtp.login(self.username, self._password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            return self._refused(crossing, codes, f"recipients refused: {error.recipients}")
        except smtplib.SMTPResponseException as error:
            reply = (
                error.smtp_error.decode(errors="replace")
                if isinstance(error.smtp_error, bytes)
                else str(error.smtp_error)
            )
            return self._refused(crossing, [error.smtp_code], f"SMTP {error.smtp_code} {reply}")
        except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as error:
            # The server cannot do what was configured (STARTTLS), or is not
            # who it says: trying again changes nothing.
            logger.error("alert %s not sent to %s: %s", crossing.id, self.target, error)
            return False, str(error)
        except (smtplib.SMTPException, OSError) as error:
            return True, str(error) or type(error).__name__
        if refused:
            # Some recipients have it: sending again would mail them twice.
            logger.error("alert %s refused for %s by %s", crossing.id, refused, self.target)
        return False, ""

    def _refused(
        self, crossing: ThresholdCrossing, codes: list[int], reason: str
    ) -> tuple[bool, str]:
        """Retry a temporary (4xx) refusal; log a permanent one as final."""
        if codes and all(400 <= code < 500 for code in codes):
            return True, reason
        logger.error("alert %s refused by %s: %s", crossing.id, self.target, reason)
        return False, reason


def _flush_at_exit(ref: weakref.ref[_QueuedSink]) -> None:
    sink = ref()
    if sink is not None:
        sink.close(sink.exit_timeout)
