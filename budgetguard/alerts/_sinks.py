"""Alert sinks: a webhook (JSON, HMAC-SHA256 signed), Slack incoming webhooks, the log."""

from __future__ import annotations

import atexit
import collections
import hashlib
import hmac
import json
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..events import CallOutcome, ThresholdCrossing

if TYPE_CHECKING:
    from ..errors import BudgetExceededError

__all__ = ["LogSink", "SlackSink", "WebhookSink", "alert_payload", "sign"]

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


class WebhookSink(_Sink):
    """POST each alert as signed JSON to ``url`` from a background thread.

    The caller's thread only puts the alert on a queue. The worker sends it
    with ``Idempotency-Key: <alert id>``; on a network error, a timeout or a
    408/425/429/5xx reply it waits ``backoff`` seconds, doubling up to
    ``max_backoff`` (with jitter), for at most ``max_attempts`` attempts, then
    logs the alert as lost. Other replies are final. An alert id the sink has
    already delivered or queued is not sent again. At interpreter exit the
    sink waits up to ``exit_timeout`` seconds for queued alerts, so a short
    script that crossed a threshold does not exit before telling anyone.
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
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"a webhook URL must be http:// or https://, not {url!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        if not (timeout > 0 and backoff >= 0 and max_backoff >= backoff):
            raise ConfigurationError(
                "timeout must be > 0 and 0 <= backoff <= max_backoff, got "
                f"timeout={timeout!r}, backoff={backoff!r}, max_backoff={max_backoff!r}"
            )
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._headers = dict(headers or {})
        self._clock = clock
        self.exit_timeout = exit_timeout
        self._queue: queue.Queue[ThresholdCrossing | None] = queue.Queue(_MAX_QUEUED)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

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
        body = self._body(crossing)
        delay = self.backoff
        for attempt in range(1, self.max_attempts + 1):
            retry, reason = self._post(crossing, body)
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
            self.url,
            attempt,
            reason,
            _text(crossing),
        )

    def _body(self, crossing: ThresholdCrossing) -> bytes:
        return json.dumps(alert_payload(crossing), separators=(",", ":")).encode()

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


def _flush_at_exit(ref: weakref.ref[WebhookSink]) -> None:
    sink = ref()
    if sink is not None:
        sink.close(sink.exit_timeout)
