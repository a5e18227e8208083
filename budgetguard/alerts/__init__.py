"""Deliver budget alerts to people: signed webhooks, Slack, Microsoft Teams, email, the log.

Each sink is a ``Listener`` and a callable, so either of these works::

    guard = BudgetGuard(alert_thresholds=(0.8, 1.0), on_threshold=WebhookSink(url, secret=s))
    guard.add_listener(SlackSink(slack_url))
    guard.add_listener(TeamsSink(teams_workflow_url))
    guard.add_listener(EmailSink("smtp.example.com", starttls=True, username=u, password=p,
                                 sender="budgets@example.com", recipients=["ops@example.com"]))

The guard fires each threshold once per budget window across every process
sharing the ledger; a sink sends what it is given once, off the caller's
thread, retrying with backoff a bounded number of times.
"""

from __future__ import annotations

from ._sinks import (
    EmailSink,
    LogSink,
    SlackSink,
    TeamsSink,
    WebhookSink,
    alert_payload,
    sign,
    teams_card,
)

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
