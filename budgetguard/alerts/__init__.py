"""Deliver budget alerts to people: signed webhooks, Slack and the log.

Each sink is a ``Listener`` and a callable, so either of these works::

    guard = BudgetGuard(alert_thresholds=(0.8, 1.0), on_threshold=WebhookSink(url, secret=s))
    guard.add_listener(SlackSink(slack_url))

The guard fires each threshold once per budget window across every process
sharing the ledger; a sink sends what it is given once, off the caller's
thread, retrying with backoff a bounded number of times.
"""

from __future__ import annotations

from ._sinks import LogSink, SlackSink, WebhookSink, alert_payload, sign

__all__ = ["LogSink", "SlackSink", "WebhookSink", "alert_payload", "sign"]
