"""The service's budget administration over every subject, unit and mode, and boosts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from budgetguard.server import RunningServer

from .conftest import READ, call


def put(service: RunningServer, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """PUT one budget, expect success, and return the listed budgets by name."""
    reply = call(service.url + "/v1/budgets", "PUT", body)
    assert reply.status == 200, reply.json()
    return {row["budget"]: row for row in reply.json()["data"]}


def listed(service: RunningServer) -> dict[str, dict[str, Any]]:
    """GET /v1/budgets by budget name."""
    reply = call(service.url + "/v1/budgets", token=READ)
    assert reply.status == 200
    return {row["budget"]: row for row in reply.json()["data"]}


def test_budgets_of_every_subject_unit_and_mode_are_set_and_listed(
    service: RunningServer,
) -> None:
    """PUT takes tag, model, provider, unit, mode, parent, label and sliding; GET shows them."""
    put(service, {"tag": "org=acme", "limit": "100", "period": "monthly"})
    put(
        service,
        {"tag": "team=search", "limit": "10", "period": "monthly", "parent": "tag:org=acme"},
    )
    put(
        service,
        {"user": "alice", "limit": "1", "period": "daily", "label": "daily", "mode": "soft"},
    )
    put(
        service,
        {"model": "gpt-5*", "unit": "tokens", "limit": 20000, "period": 60, "sliding": True},
    )
    rows = put(
        service,
        {"provider": "openai", "unit": "requests", "limit": 5, "period": 60, "mode": "shadow"},
    )
    team = rows["tag:team=search"]
    assert (team["subject"], team["parent"], team["unit"], team["mode"]) == (
        "tag:team=search", "tag:org=acme", "usd", "hard",
    )  # fmt: skip
    alice = rows["daily@user:alice"]
    assert (alice["label"], alice["user"], alice["mode"]) == ("daily", "alice", "soft")
    tokens = rows["tokens@model:gpt-5*"]
    assert (tokens["unit"], tokens["limit"], tokens["sliding"]) == ("tokens", 20000, True)
    assert tokens["period"] == "every 60s"
    assert rows["requests@provider:openai"]["over"] == 0
    assert listed(service) == rows

    guard = service.guard
    budget = guard.get_budget(provider="openai", unit="requests")
    assert budget is not None and (budget.mode, budget.limit) == ("shadow", 5)


def test_a_boost_raises_the_limit_until_it_ends(service: RunningServer) -> None:
    """POST /v1/budgets/boost lists the boost; the budget's own limit is kept."""
    put(service, {"tag": "team=search", "limit": "10", "period": "monthly"})
    until = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    reply = call(
        service.url + "/v1/budgets/boost",
        "POST",
        {"tag": "team=search", "limit": "25", "until": until.isoformat()},
    )
    assert reply.status == 200, reply.json()
    (row,) = reply.json()["data"]
    # The row's limit is the one in force (its remaining and use follow it); the
    # boost is listed beside it, and the budget's own definition is kept.
    assert Decimal(str(row["limit"])) == 25
    assert service.guard.get_budget(tag="team=search").limit == 10  # type: ignore[union-attr]
    assert row["boost"]["limit"] == 25
    assert datetime.fromisoformat(row["boost"]["until"]) == until
    statuses = {status.name: status for status in service.guard.budget_statuses()}
    assert statuses["tag:team=search"].limit == 25

    reply = call(
        service.url + "/v1/budgets/boost",
        "POST",
        {"tag": "team=search", "limit": 30, "duration": 60},
    )
    assert reply.status == 200
    assert reply.json()["data"][0]["boost"]["limit"] == 30


@pytest.mark.parametrize(
    ("path", "method", "body", "message"),
    [
        ("/v1/budgets", "PUT", {"tag": "team", "limit": 1}, "key=value"),
        ("/v1/budgets", "PUT", {"user": "a", "tag": "a=b", "limit": 1}, "one subject"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": 1, "unit": "gallons"}, "unit must be"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": 1, "mode": "loud"}, "mode must be"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": "1.5", "unit": "tokens"}, "whole number"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": 1, "sliding": True}, "sliding"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": 1, "period": "fortnightly"}, "period"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": 1, "parent": "user:a"}, "own parent"),
        ("/v1/budgets", "PUT", {"user": "a", "limit": 1, "label": "a b"}, "label"),
        ("/v1/budgets/boost", "POST", {"user": "a", "limit": 2}, "until"),
        ("/v1/budgets/boost", "POST", {"user": "nobody", "limit": 2, "duration": 60}, "set it"),
        (
            "/v1/budgets/boost",
            "POST",
            {"user": "a", "limit": 2, "until": "2020-01-01T00:00:00+00:00"},
            "already past",
        ),
        (
            "/v1/budgets/boost",
            "POST",
            {"user": "a", "limit": 2, "until": "2099-01-01T00:00:00"},
            "offset",
        ),
    ],
)
def test_bad_budget_requests_are_refused_and_change_nothing(
    service: RunningServer, path: str, method: str, body: dict[str, Any], message: str
) -> None:
    """A 400 naming the problem; the budgets are as they were."""
    put(service, {"user": "a", "limit": "3", "period": "daily"})
    before = listed(service)
    reply = call(service.url + path, method, body)
    assert reply.status == 400, reply.json()
    assert message in reply.json()["error"]
    assert listed(service) == before


def test_boosting_needs_an_admin_token(service: RunningServer) -> None:
    """A read-only token cannot boost a budget."""
    put(service, {"user": "a", "limit": "3"})
    body = {"user": "a", "limit": 5, "duration": 60}
    assert call(service.url + "/v1/budgets/boost", "POST", body, token=READ).status == 403


def test_the_report_breaks_spend_down_by_tag(service: RunningServer) -> None:
    """GET /v1/report?by=tag gives one row per key=value with its spend."""
    guard = service.guard
    call_ = guard.budgeted(estimate="0.01", cost=lambda _: "0.01")(lambda: None)
    for team in ("search", "search", "infra"):
        with guard.budget_scope("alice", tags={"team": team}):
            call_()
    reply = call(service.url + "/v1/report?by=tag", token=READ)
    assert reply.status == 200
    spend = reply.json()["data"]["spend"]
    assert spend == [{"tag": "team=search", "spent": 0.02}, {"tag": "team=infra", "spent": 0.01}]
