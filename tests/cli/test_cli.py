"""The ``budgetguard`` command, run as a subprocess: output and exit status."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

TIMEOUT = 120


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m budgetguard ARGS`` and return what it did."""
    environment = {k: v for k, v in os.environ.items() if k != "BUDGETGUARD_LEDGER"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "budgetguard", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the URL of a SQLite ledger the demo has written to."""
    path = tmp_path_factory.mktemp("demo") / "spend.db"
    url = f"sqlite:///{path}"
    done = run("demo", "--ledger", url, "--users", "4", "--calls", "80", "--latency", "0")
    assert done.returncode == 0, done.stderr
    return url


# -- help and basics -------------------------------------------------------------------------


def test_help_lists_every_command_with_examples() -> None:
    """Show every command and a few examples in the top-level help."""
    done = run("--help")
    assert done.returncode == 0
    for command in ("demo", "report", "budgets", "prices", "cost", "serve"):
        assert command in done.stdout
    assert "start here:" in done.stdout
    assert "budgetguard demo" in done.stdout


def test_every_subcommand_has_help() -> None:
    """Exit 0 with a usage line for every subcommand's --help."""
    for command in (
        ["demo"],
        ["report"],
        ["budgets"],
        ["budgets", "set"],
        ["budgets", "list"],
        ["budgets", "delete"],
        ["prices"],
        ["cost"],
        ["prune"],
        ["serve"],
    ):
        done = run(*command, "--help")
        assert done.returncode == 0, command
        assert done.stdout.startswith("usage: budgetguard " + " ".join(command))


def test_no_command_is_a_usage_error() -> None:
    """Exit 2 and say a command is needed when none is given."""
    done = run()
    assert done.returncode == 2
    assert "required" in done.stderr


def test_version() -> None:
    """Print the version."""
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("budgetguard ")


# -- demo ------------------------------------------------------------------------------------


def test_demo_on_memory_shows_metrics_report_and_a_refusal() -> None:
    """Run the demo offline: progress on stderr, metrics, report and refusals on stdout."""
    done = run("demo", "--users", "3", "--calls", "60", "--latency", "0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "calls" in done.stderr and "agent run" in done.stderr
    assert "budgetguard.spend " in out and "USD" in out
    assert "budgetguard.refusals" in out
    assert "Budgets, in their current window:" in out
    assert "Spend by user" in out
    assert "BudgetExceededError: budget user:" in out
    assert "budget scope (this block)" in out
    assert "Traceback" not in done.stderr


def test_demo_is_fast_by_default() -> None:
    """Finish the default demo within a few seconds."""
    import time

    started = time.perf_counter()
    done = run("demo")
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 30


def test_demo_rejects_too_few_users() -> None:
    """Exit 2 for a demo with a single user."""
    done = run("demo", "--users", "1")
    assert done.returncode == 2
    assert "at least 2 users" in done.stderr


def test_report_reads_what_the_demo_wrote(demo_db: str) -> None:
    """Report the demo's budgets and spend from its SQLite file in a second process."""
    done = run("report", "--ledger", demo_db)
    assert done.returncode == 0, done.stderr
    assert "global" in done.stdout
    assert "alice" in done.stdout
    assert "total" in done.stdout
    assert "Open reservations (calls in flight): none" in done.stdout


def test_report_json_parses_and_adds_up(demo_db: str) -> None:
    """Give exact amounts in JSON whose breakdown adds up to its total."""
    done = run("report", "--ledger", demo_db, "--format", "json", "--by", "user,model")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = data["breakdown"]["rows"]
    assert rows and {"user", "model", "spent"} <= set(rows[0])
    total = sum(Decimal(row["spent"]) for row in rows)
    assert total == Decimal(data["breakdown"]["total"])
    global_row = next(b for b in data["budgets"] if b["budget"] == "global")
    assert Decimal(global_row["spent"]) == total  # every call today was charged to both
    assert data["open_reservations"] == []


def test_report_csv_parses(demo_db: str) -> None:
    """Print one clean CSV table: budgets, or the breakdown with --by."""
    done = run("report", "--ledger", demo_db, "--format", "csv")
    assert done.returncode == 0, done.stderr
    budgets = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {row["budget"] for row in budgets} >= {"global", "default"}
    for row in budgets:
        Decimal(row["limit"]), Decimal(row["spent"]), Decimal(row["remaining"])
    done = run("report", "--ledger", demo_db, "--format", "csv", "--by", "model", "--period", "all")
    assert done.returncode == 0, done.stderr
    models = list(csv.DictReader(io.StringIO(done.stdout)))
    assert models and list(models[0])[:2] == ["model", "spent"]


def test_report_previous_window_is_empty_for_todays_demo(demo_db: str) -> None:
    """Show yesterday's window with nothing spent."""
    done = run("report", "--ledger", demo_db, "--period", "previous")
    assert done.returncode == 0, done.stderr
    assert "previous window" in done.stdout
    assert "nothing spent" in done.stdout


def test_report_ledger_from_the_environment(demo_db: str) -> None:
    """Take the ledger from BUDGETGUARD_LEDGER when --ledger is not given."""
    done = run("report", "--format", "json", env={"BUDGETGUARD_LEDGER": demo_db})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["budgets"]


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["report", "--ledger", "not-a-url"], 2, "not a ledger URL"),
        (["report", "--ledger", "foo://x"], 2, "unknown ledger scheme"),
        (["report", "--ledger", "sqlite:////no/such/dir/x.db"], 1, "no ledger at"),
        (["report", "--ledger", "memory://", "--period", "weird"], 2, "invalid choice"),
        (["report", "--ledger", "memory://", "--by", "team"], 2, "cannot break spend down"),
        (["report"], 2, "--ledger"),
        (
            ["budgets", "set", "--ledger", "memory://", "--user", "a", "--limit", "-1"],
            2,
            "must not be negative",
        ),
        (["budgets", "set", "--ledger", "memory://", "--user", "a", "--limit", "nan"], 2, "finite"),
        (
            [
                "budgets",
                "set",
                "--ledger",
                "memory://",
                "--user",
                "a",
                "--limit",
                "1",
                "--period",
                "fortnightly",
            ],
            2,
            "unknown period",
        ),
        (
            [
                "budgets",
                "set",
                "--ledger",
                "memory://",
                "--user",
                "a",
                "--limit",
                "1",
                "--tz",
                "Mars/Olympus",
            ],
            2,
            "unknown time zone",
        ),
        (["budgets", "set", "--ledger", "memory://", "--limit", "1"], 2, "one of the arguments"),
        (
            ["budgets", "set", "--ledger", "memory://", "--user", "a", "--global", "--limit", "1"],
            2,
            "not allowed with",
        ),
        (
            ["cost", "--model", "no-such-model-xyz", "--input", "1", "--output", "1"],
            1,
            "no price known",
        ),
        (["cost", "--model", "gpt-4o", "--input", "-5", "--output", "1"], 2, "negative"),
        (["cost", "--model", "gpt-4o", "--input", "ten", "--output", "1"], 2, "whole number"),
        (["prices", "no-such-model-xyz"], 1, "no price known"),
        (["prices", "--provider", "nobody"], 1, "no models of provider"),
    ],
)
def test_bad_input_gets_one_clear_line(args: list[str], status: int, message: str) -> None:
    """Exit 2 for bad arguments, 1 for run-time failures, with a message and no traceback."""
    done = run(*args)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_redis_is_exit_1() -> None:
    """Exit 1 naming the Redis that cannot be reached."""
    done = run("report", "--ledger", "redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_redis_password_is_not_printed() -> None:
    """Keep a Redis password out of the error message."""
    done = run("budgets", "list", "--ledger", "redis://:hunter2@127.0.0.1:1/0")
    assert done.returncode == 1
    assert "hunter2" not in done.stderr


# -- budgets ------------------------------------------------------------------------------------


def test_budgets_set_list_delete(tmp_path: Path) -> None:
    """Set, list and delete budgets of a user, everyone and the default in a SQLite file."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    done = run(
        "budgets",
        "set",
        "--ledger",
        url,
        "--create",
        "--user",
        "alice",
        "--limit",
        "10",
        "--period",
        "monthly",
        "--tz",
        "Europe/Paris",
    )
    assert done.returncode == 0, done.stderr
    assert "set budget user:alice: $10 monthly (Europe/Paris)" in done.stdout
    assert (
        run(
            "budgets", "set", "--ledger", url, "--global", "--limit", "500", "--period", "daily"
        ).returncode
        == 0
    )
    assert (
        run(
            "budgets", "set", "--ledger", url, "--default", "--limit", "2.50", "--period", "12h"
        ).returncode
        == 0
    )

    listed = run("budgets", "list", "--ledger", url, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    budgets = {row["budget"]: row for row in json.loads(listed.stdout)}
    assert budgets["user:alice"]["limit"] == "10"
    assert budgets["user:alice"]["tz"] == "Europe/Paris"
    assert budgets["global"]["period"] == "daily"
    assert budgets["default"]["period"] == "every 43200s"

    table = run("budgets", "list", "--ledger", url)
    assert table.returncode == 0
    assert table.stdout.splitlines()[2].startswith("global")

    done = run("budgets", "delete", "--ledger", url, "--user", "alice")
    assert done.returncode == 0 and "deleted budget user:alice" in done.stdout
    again = run("budgets", "delete", "--ledger", url, "--user", "alice")
    assert again.returncode == 1 and "no budget user:alice" in again.stderr
    listed = run("budgets", "list", "--ledger", url, "--format", "csv")
    assert "user:alice" not in listed.stdout


def test_budgets_list_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    """Refuse to read a SQLite ledger that does not exist, and do not create it."""
    path = tmp_path / "missing.db"
    done = run("budgets", "list", "--ledger", f"sqlite:///{path}")
    assert done.returncode == 1
    assert not path.exists()


def test_a_set_budget_refuses_calls_in_another_process(tmp_path: Path) -> None:
    """Apply a budget set from the command line to an application sharing the ledger."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    set_bob = ("budgets", "set", "--ledger", url, "--create", "--user", "bob", "--limit", "0")
    assert run(*set_bob).returncode == 0
    code = (
        "from decimal import Decimal\n"
        "import budgetguard as bg\n"
        f"guard = bg.BudgetGuard({url!r}, metrics=False)\n"
        "try:\n"
        "    guard._begin('bob', Decimal('0.01'))\n"
        "except bg.BudgetExceededError as error:\n"
        "    print('refused', error.budget)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "refused user:bob" in done.stdout, done.stderr


# -- prices and cost -----------------------------------------------------------------------------


def test_prices_of_a_snapshot_name_the_base_model() -> None:
    """Price a dated snapshot as its model and show where the price comes from."""
    done = run("prices", "gpt-4o-2024-08-06")
    assert done.returncode == 0
    assert "is priced as gpt-4o" in done.stdout
    assert "input" in done.stdout and "source:" in done.stdout


def test_prices_search_and_formats() -> None:
    """Search by part of a name; give CSV and JSON for scripts."""
    done = run("prices", "claude", "--format", "csv")
    assert done.returncode == 0
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and all("claude" in row["model"] for row in rows)
    whole = run("prices", "--format", "json")
    models = json.loads(whole.stdout)
    assert len(models) > 100
    assert all(Decimal(m["input"]) >= 0 for m in models)


def test_cost_is_exact() -> None:
    """Price 12,000 input and 800 output tokens of gpt-4o at exactly $0.038."""
    done = run(
        "cost", "--model", "gpt-4o", "--input", "12000", "--output", "800", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["total"] == "0.038"
    assert data["breakdown"] == {"input": "0.03", "output": "0.008"}


def test_cost_table_with_cache_and_reasoning() -> None:
    """Show each bucket on its own line, with its price, and the total."""
    done = run(
        "cost",
        "--model",
        "claude-sonnet-4-5",
        "--input",
        "2000",
        "--cached",
        "30000",
        "--output",
        "500",
    )
    assert done.returncode == 0, done.stderr
    assert "cached input" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].split()[-1] == "0.0225"


# -- serve ---------------------------------------------------------------------------------------


def test_serve_answers_litellm_budget_requests(tmp_path: Path) -> None:
    """Serve the LiteLLM budget protocol on a loopback port, behind a token, until stopped."""
    import importlib.util
    import socket
    import time
    import urllib.request

    if importlib.util.find_spec("uvicorn") is None:
        pytest.skip("the server extra is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'served.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "budgetguard", "serve", "--ledger", url, "--port", str(port)],
        env={**os.environ, "BUDGETGUARD_TOKEN": "cli-test-token-0123456789"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = json.dumps({"project_name": "demo"}).encode()
        deadline = time.monotonic() + 20
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/get_budget",
                data=body,
                method="POST",
                headers={
                    "Authorization": "Bearer cli-test-token-0123456789",
                    "Content-Type": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    reply = json.loads(answer.read())
                break
            except OSError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.1)
        assert reply["status"] == "success"
    finally:
        server.terminate()
        server.communicate(timeout=10)


def test_demo_without_the_opentelemetry_sdk_prints_in_process_totals() -> None:
    """Say the SDK is absent and still show the totals and the report."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None\n"
        "sys.modules['opentelemetry.sdk.metrics'] = None\n"
        "from budgetguard.cli import main\n"
        "sys.exit(main(['demo', '--users', '2', '--calls', '20', '--latency', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert "OpenTelemetry SDK is not installed" in done.stdout
    assert "calls that ran" in done.stdout
    assert "Spend by user" in done.stdout


# -- prune ----------------------------------------------------------------------------------------


def test_prune_keeps_recent_windows_and_lifetime_totals(tmp_path: Path) -> None:
    """Prune nothing of today's windows; a future date is refused (exit 2), deleting nothing."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    done = run("demo", "--ledger", url, "--users", "3", "--calls", "30", "--latency", "0")
    assert done.returncode == 0, done.stderr
    total_before = json.loads(
        run("report", "--ledger", url, "--period", "all", "--format", "json").stdout
    )

    kept = run("prune", "--ledger", url, "--keep-days", "30")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("pruned 0 counters")

    pruned = run("prune", "--ledger", url, "--before", "2999-01-01")
    assert pruned.returncode == 2 and "in the future" in pruned.stderr
    total_after = json.loads(
        run("report", "--ledger", url, "--period", "all", "--format", "json").stdout
    )
    assert total_after["breakdown"]["total"] == total_before["breakdown"]["total"]
    assert total_after["breakdown"]["rows"] == total_before["breakdown"]["rows"]


def test_prune_needs_a_horizon_and_a_real_date(tmp_path: Path) -> None:
    """Prune without --before/--keep-days, or with a bad date, is a usage error (exit 2)."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert run("prune", "--ledger", url).returncode == 2
    bad = run("prune", "--ledger", url, "--before", "2026-02-30")
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_budgets_set_refuses_a_missing_sqlite_file_unless_asked_to_create(tmp_path: Path) -> None:
    """A mistyped SQLite path is an error (exit 1) and creates nothing; --create makes the file."""
    path = tmp_path / "typo.db"
    url = f"sqlite:///{path}"
    refused = run("budgets", "set", "--ledger", url, "--user", "a", "--limit", "1")
    assert refused.returncode == 1 and "does not exist" in refused.stderr
    assert not path.exists()
    made = run("budgets", "set", "--ledger", url, "--create", "--user", "a", "--limit", "1")
    assert made.returncode == 0, made.stderr
    assert path.exists()


def test_budgets_set_defaults_to_lifetime_as_python_does(tmp_path: Path) -> None:
    """budgets set without --period makes the same lifetime budget as set_budget() in Python."""
    import budgetguard as bg

    url = f"sqlite:///{tmp_path / 'p.db'}"
    done = run("budgets", "set", "--ledger", url, "--create", "--user", "a", "--limit", "1")
    assert done.returncode == 0, done.stderr
    guard = bg.BudgetGuard(url, metrics=False)
    try:
        from_cli = guard.get_budget("a")
        from_python = guard.set_budget("1", user="b")
        assert from_cli is not None
        assert from_cli.period.label == from_python.period.label == "lifetime"
    finally:
        guard.close()
