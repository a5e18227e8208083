"""``budgetguard budgets`` and ``report --by tag`` over every subject, unit and mode, in process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetguard import BudgetGuard
from budgetguard.cli import main


@pytest.fixture
def url(tmp_path: Path) -> str:
    """Return the URL of a SQLite ledger file that exists (with no budgets)."""
    made = f"sqlite:///{tmp_path / 'spend.db'}"
    BudgetGuard(made, metrics=False).close()
    return made


@pytest.fixture
def guard(url: str) -> Iterator[BudgetGuard]:
    """Return an application's guard on the same ledger as the command line."""
    made = BudgetGuard(url, metrics=False, budget_cache_ttl=0)
    yield made
    made.close()


def budgets(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``budgetguard budgets ARGS``, expect success, and return what it printed."""
    assert main(["budgets", *args]) == 0
    return capsys.readouterr().out


def listed(capsys: pytest.CaptureFixture[str], url: str) -> dict[str, dict[str, Any]]:
    """Return ``budgets list --format json`` by budget name."""
    rows = json.loads(budgets(capsys, "list", "--ledger", url, "--format", "json"))
    return {row["budget"]: row for row in rows}


def test_every_subject_kind_is_set_as_python_would(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """Tag, model, provider, label, unit, mode, parent and sliding reach the ledger as given."""
    ledger = ("--ledger", url)
    out = budgets(
        capsys, "set", *ledger, "--tag", "team=search", "--limit", "100", "--period", "monthly"
    )
    assert out.startswith("set budget tag:team=search: $100 monthly (UTC)")
    budgets(capsys, "set", *ledger, "--global", "--limit", "500", "--period", "daily")
    budgets(
        capsys, "set", *ledger, "--user", "alice", "--limit", "5", "--period", "daily",
        "--label", "daily", "--parent", "tag:team=search", "--mode", "soft",
    )  # fmt: skip
    out = budgets(
        capsys, "set", *ledger, "--model", "gpt-5*", "--unit", "tokens", "--limit", "200000",
        "--period", "minute", "--sliding",
    )  # fmt: skip
    assert "set budget tokens@model:gpt-5*: 200000 tokens every 60s (UTC), sliding" in out
    budgets(
        capsys, "set", *ledger, "--provider", "openai", "--unit", "requests", "--limit", "600",
        "--period", "1h", "--mode", "shadow",
    )  # fmt: skip
    budgets(capsys, "set", *ledger, "--user", "bob", "--unit", "concurrency", "--limit", "4")
    budgets(
        capsys, "set", *ledger, "--default", "--limit", "2", "--period", "7d", "--label", "week"
    )

    assert guard.get_budget(tag="team=search") is not None
    alice = guard.get_budget("alice", label="daily")
    assert alice is not None and (alice.mode, alice.parent) == ("soft", "tag:team=search")
    tokens = guard.get_budget(model="gpt-5*", unit="tokens")
    assert tokens is not None and tokens.sliding and tokens.limit == 200000
    assert tokens.period.length == timedelta(minutes=1)
    requests = guard.get_budget(provider="openai", unit="requests")
    assert requests is not None and requests.mode == "shadow"
    assert requests.period.length == timedelta(hours=1)
    bob = guard.get_budget("bob", unit="concurrency")
    assert bob is not None and bob.limit == 4
    week = guard.get_default_budget(label="week")
    assert week is not None and week.period.length == timedelta(days=7)

    rows = listed(capsys, url)
    assert set(rows) == {
        "tag:team=search",
        "global",
        "daily@user:alice",
        "tokens@model:gpt-5*",
        "requests@provider:openai",
        "concurrency@user:bob",
        "week@default",
    }
    row = rows["daily@user:alice"]
    assert (row["subject"], row["label"], row["user"], row["unit"]) == (
        "user:alice", "daily", "alice", "usd",
    )  # fmt: skip
    assert (row["mode"], row["parent"], row["limit"], row["spent"]) == (
        "soft", "tag:team=search", "5", "0",
    )  # fmt: skip
    assert rows["tokens@model:gpt-5*"]["sliding"] is True
    assert rows["concurrency@user:bob"]["period"] is None
    assert rows["requests@provider:openai"]["over"] == 0
    assert rows["global"]["over"] is None  # a hard budget refuses; it counts nothing over


@pytest.mark.parametrize(
    ("typed", "seconds"),
    [("minute", 60), ("hour", 3600), ("60s", 60), ("1m", 60), ("1h", 3600), ("7d", 604800)],
)
def test_periods_take_what_people_type_for_rate_limits(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard, typed: str, seconds: int
) -> None:
    """minute, hour, 60s, 1m, 1h and 7d are windows of that many seconds."""
    budgets(capsys, "set", "--ledger", url, "--user", "a", "--limit", "1", "--period", typed)
    found = guard.get_budget("a")
    assert found is not None and found.period.length == timedelta(seconds=seconds)


def test_the_list_table_shows_dollars_as_dollars_and_counts_as_counts(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """A dollar limit reads $12.50 in the table, a token limit reads 30000."""
    guard.set_budget("12.5", user="alice", period="monthly")
    guard.set_budget(30000, user="alice", unit="tokens", period=60)
    lines = budgets(capsys, "list", "--ledger", url).splitlines()
    assert lines[0].split()[:7] == ["subject", "label", "unit", "mode", "parent", "period", "limit"]
    dollars = next(line for line in lines if line.startswith("user:alice") and " usd " in line)
    tokens = next(line for line in lines if " tokens " in line)
    assert "$12.50" in dollars.split()
    assert "30000" in tokens.split() and "$" not in tokens


def test_a_boost_shows_in_the_list_and_can_be_deleted(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """boost --until raises the limit in force; delete --boost brings the budget's own back."""
    guard.set_budget("10", user="alice", period="monthly")
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=3)
    out = budgets(
        capsys, "boost", "--ledger", url, "--user", "alice", "--limit", "25",
        "--until", until.isoformat(),
    )  # fmt: skip
    assert out.startswith("boosted budget user:alice: $25 until")
    row = listed(capsys, url)["user:alice"]
    assert (row["limit"], row["boost_limit"], row["remaining"]) == ("10", "25", "25")
    assert datetime.fromisoformat(row["boost_until"]) == until
    statuses = {status.name: status for status in guard.budget_statuses()}
    assert statuses["user:alice"].limit == Decimal(25)

    out = budgets(
        capsys, "boost", "--ledger", url, "--user", "alice", "--limit", "30", "--for", "7d"
    )
    row = listed(capsys, url)["user:alice"]
    assert row["boost_limit"] == "30"
    left = datetime.fromisoformat(row["boost_until"]) - datetime.now(timezone.utc)
    assert timedelta(days=6) < left <= timedelta(days=7)

    out = budgets(capsys, "delete", "--ledger", url, "--user", "alice", "--boost")
    assert "deleted the boost of budget user:alice" in out
    row = listed(capsys, url)["user:alice"]
    assert (row["boost_limit"], row["remaining"]) == (None, "10")
    assert guard.get_budget("alice") is not None  # the budget itself stays


def test_delete_names_the_budget_by_subject_unit_and_label(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """delete --tag ... --unit requests deletes that budget and leaves the subject's others."""
    guard.set_budget("1", tag="team=x", period="daily")
    guard.set_budget(10, tag="team=x", unit="requests", period=60)
    out = budgets(capsys, "delete", "--ledger", url, "--tag", "team=x", "--unit", "requests")
    assert "deleted budget requests@tag:team=x" in out
    assert set(listed(capsys, url)) == {"tag:team=x"}
    assert main(["budgets", "delete", "--ledger", url, "--tag", "team=x", "--unit", "requests"])
    assert "no budget requests@tag:team=x" in capsys.readouterr().err


def test_the_over_count_of_a_shadow_budget_is_listed(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """A shadow budget lets every call run; the list shows how many it had no room for."""
    guard.set_budget(2, tag="team=x", unit="requests", period="daily", mode="shadow")
    call = guard.budgeted(estimate="0.01", cost=lambda _: "0.01")(lambda: None)
    with guard.budget_scope("alice", tags={"team": "x"}):
        for _ in range(5):
            call()
    row = listed(capsys, url)["requests@tag:team=x"]
    assert (row["spent"], row["over"], row["mode"]) == ("5", 3, "shadow")


ONE = ["--ledger", "{url}", "--user", "a", "--limit", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", *ONE, "--unit", "tokens", "--limit", "1.5"], "whole number"),
        (["set", *ONE, "--unit", "gallons"], "invalid choice"),
        (["set", *ONE, "--mode", "loud"], "invalid choice"),
        (["set", "--ledger", "{url}", "--tag", "team", "--limit", "1"], "argument --tag"),
        (["set", "--ledger", "{url}", "--model", "", "--limit", "1"], "argument --model"),
        (["set", *ONE, "--label", "a label"], "argument --label"),
        (["set", *ONE, "--parent", "nobody"], "argument --parent"),
        (["set", *ONE, "--parent", "user:a"], "its own parent"),
        (["set", *ONE, "--parent", "default"], "not one budget"),
        (["set", *ONE, "--sliding"], "sliding"),
        (["set", *ONE, "--unit", "concurrency", "--period", "daily"], "no period"),
        (["set", *ONE, "--period", "fortnightly"], "unknown period"),
        (["set", *ONE, "--global"], "not allowed with"),
        (
            ["set", "--ledger", "{url}", "--tag", "a=b", "--model", "m", "--limit", "1"],
            "not allowed",
        ),
        (["boost", *ONE, "--for", "0s"], "longer than zero"),
        (["boost", *ONE, "--for", "soon"], "not a length"),
        (["boost", *ONE, "--until", "yesterday"], "not a moment"),
        (["boost", *ONE, "--until", "2020-01-01T00:00:00Z"], "already past"),
        (["boost", *ONE], "one of the arguments --for --until is required"),
    ],
)
def test_bad_input_is_a_usage_error_that_stores_nothing(
    capsys: pytest.CaptureFixture[str],
    url: str,
    guard: BudgetGuard,
    args: list[str],
    message: str,
) -> None:
    """Exit 2 with a line naming the problem; the ledger's budgets are as they were."""
    guard.set_budget("3", user="a", period="daily")
    before = {budget.name: budget.to_dict() for budget in guard.budgets()}
    with pytest.raises(SystemExit) as exited:
        main(["budgets", *(arg.format(url=url) for arg in args)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert {budget.name: budget.to_dict() for budget in guard.budgets()} == before


def test_boosting_a_budget_that_is_not_set_is_a_run_time_error(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """Exit 1 naming the budget to set first; nothing is stored."""
    status = main(
        ["budgets", "boost", "--ledger", url, "--tag", "a=b", "--limit", "1", "--for", "1h"]
    )
    assert status == 1
    assert "no budget tag:a=b" in capsys.readouterr().err
    assert guard.budgets() == []


def test_report_by_tag_sums_the_spend_of_each_tag(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """report --by tag gives one row per key=value with what its calls spent."""
    call = guard.budgeted(estimate="0.01", cost=lambda _: "0.01")(lambda: None)
    for tenant in ("acme", "beta", "acme"):
        with guard.budget_scope("alice", tags={"team": "search", "tenant": tenant}):
            call()
    assert main(["report", "--ledger", url, "--by", "tag", "--format", "json"]) == 0
    breakdown = json.loads(capsys.readouterr().out)["breakdown"]
    assert breakdown["by"] == ["tag"]
    assert {row["tag"]: row["spent"] for row in breakdown["rows"]} == {
        "team=search": "0.03",
        "tenant=acme": "0.02",
        "tenant=beta": "0.01",
    }
    assert main(["report", "--ledger", url, "--by", "tag"]) == 0
    table = capsys.readouterr().out
    assert "Spend by tag" in table and "tenant=acme" in table


def test_the_default_budget_can_be_boosted_and_its_boost_deleted(
    capsys: pytest.CaptureFixture[str], url: str, guard: BudgetGuard
) -> None:
    """boost --default raises every user's default limit for a while; delete --boost ends it."""
    guard.set_default_budget("2", period="daily")
    budgets(capsys, "boost", "--ledger", url, "--default", "--limit", "5", "--for", "1h")
    assert [budget.limit for budget in guard.budgets() if budget.name == "+default"] == [5]
    out = budgets(capsys, "delete", "--ledger", url, "--default", "--boost")
    assert "deleted the boost of budget default" in out
    assert [budget.name for budget in guard.budgets()] == ["default"]
