"""The local client's file: LiteLLM's user_cost.json imported, saves atomic and crash-safe."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from budgetguard import BudgetManager, StorageError

DAY = 86400


def _litellm_file(now: float) -> dict[str, object]:
    """Return what LiteLLM's BudgetManager writes to user_cost.json."""
    return {
        "alice": {
            "total_budget": 10,
            "current_cost": 0.00123,
            "model_cost": {"gpt-3.5-turbo": 0.001, "gpt-4": 0.00023},
        },
        "bob": {  # "monthly" is 28 days in LiteLLM; its period still runs
            "total_budget": 5.0,
            "duration": 28,
            "created_at": now - 3 * DAY,
            "last_updated_at": now - 1 * DAY,
            "current_cost": 0.5,
            "model_cost": {"gpt-4o": 0.5},
        },
        "carol": {  # daily, last reset three days ago: LiteLLM would reset it now
            "total_budget": 1,
            "duration": 1,
            "created_at": now - 3 * DAY,
            "last_updated_at": now - 3 * DAY,
            "current_cost": 0.7,
            "model_cost": {"gpt-4o": 0.7},
        },
        "dave": {"total_budget": 3},
    }


def test_litellm_user_cost_json_is_imported() -> None:
    """An existing user_cost.json is imported exactly and the project gets its own file."""
    legacy = Path("user_cost.json")
    legacy.write_text(json.dumps(_litellm_file(time.time()), indent=4))
    before = legacy.read_bytes()

    budget_manager = BudgetManager(project_name="test_project")

    assert budget_manager.get_users() == ["alice", "bob", "carol", "dave"]
    assert budget_manager.get_current_cost("alice") == Decimal("0.00123")
    assert budget_manager.get_model_cost("alice") == {
        "gpt-3.5-turbo": Decimal("0.001"),
        "gpt-4": Decimal("0.00023"),
    }
    assert budget_manager.get_total_budget("bob") == Decimal("5")
    assert budget_manager.get_current_cost("bob") == Decimal("0.5")
    assert budget_manager.user_dict["bob"]["duration"] in (28, 29, 30, 31)  # calendar month
    assert budget_manager.get_current_cost("carol") == 0  # a past day's spend
    assert budget_manager.get_current_cost("dave") == 0
    assert budget_manager.get_model_cost("dave") == {}
    assert legacy.read_bytes() == before  # LiteLLM's file is left as it was
    saved = json.loads(Path("test_project_user_cost.json").read_text(), parse_float=Decimal)
    assert saved["alice"]["current_cost"] == Decimal("0.00123")


def test_project_file_round_trips_exactly() -> None:
    """What one BudgetManager saved, the next one reads back to the last digit."""
    first = BudgetManager("exact")
    first.create_budget(total_budget="0.3", user="u", duration="yearly", created_at=1_700_000_000)
    for _ in range(3):
        first.update_cost(user="u", model="gpt-4o", input_text="one two three", output_text="x")
    second = BudgetManager("exact")
    assert second.user_dict == first.user_dict
    assert second.get_current_cost("u") == first.get_current_cost("u") > 0
    second.load_data()  # importing again adds nothing
    assert second.get_current_cost("u") == first.get_current_cost("u")


def test_projects_keep_separate_files() -> None:
    """Each project has its own file; names are percent-encoded into one safe file name."""
    BudgetManager("a/b").create_budget(1, "u")
    BudgetManager("other").create_budget(2, "v")
    assert Path("a%2Fb_user_cost.json").exists() and Path("other_user_cost.json").exists()
    assert BudgetManager("a/b").get_users() == ["u"]


def test_path_can_name_litellms_file() -> None:
    """path="user_cost.json" reads and writes LiteLLM's file itself."""
    Path("user_cost.json").write_text(json.dumps({"x": {"total_budget": 1, "current_cost": 0.25}}))
    budget_manager = BudgetManager("p", path="user_cost.json")
    budget_manager.update_cost(user="x", model="gpt-4o", input_text="hi", output_text="hi")
    saved = json.loads(Path("user_cost.json").read_text(), parse_float=Decimal)
    assert saved["x"]["current_cost"] == budget_manager.get_current_cost("x") > Decimal("0.25")


def test_malformed_file_is_a_clear_error() -> None:
    """A file that is not LiteLLM's format raises StorageError naming the file."""
    Path("bad_user_cost.json").write_text('{"u": {"total_budget": "lots"}}')
    with pytest.raises(StorageError, match=r"bad_user_cost\.json"):
        BudgetManager("bad")
    Path("bad_user_cost.json").write_text('{"u": ')
    with pytest.raises(StorageError, match=r"bad_user_cost\.json"):
        BudgetManager("bad")


def test_failed_rename_leaves_previous_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the rename leaves the previous file whole and no temporary file."""
    budget_manager = BudgetManager("crash")
    budget_manager.create_budget(total_budget=10, user="u")
    before = Path("crash_user_cost.json").read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    budget_manager.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    with pytest.raises(StorageError, match="disk pulled out"):
        budget_manager.save_data()
    assert Path("crash_user_cost.json").read_bytes() == before
    assert [p.name for p in Path().iterdir()] == ["crash_user_cost.json"]


def test_failed_write_midway_leaves_previous_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash half way through writing the new data leaves the previous file whole."""
    budget_manager = BudgetManager("crash")
    budget_manager.create_budget(total_budget=10, user="u")
    before = Path("crash_user_cost.json").read_bytes()

    real_fsync = os.fsync

    def crash(fd: int) -> None:
        os.write(fd, b"garbage")  # some of the new bytes reached the disk
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(StorageError, match="power cut"):
        budget_manager.save_data()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert Path("crash_user_cost.json").read_bytes() == before
    assert [p.name for p in Path().iterdir()] == ["crash_user_cost.json"]


def test_autosave_failure_keeps_the_charge(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed save after update_cost is logged; the charge stays and the next save writes it."""
    budget_manager = BudgetManager("crash")
    budget_manager.create_budget(total_budget=10, user="u")
    real_replace = os.replace

    def crash(*args: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(os, "replace", crash)
    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        budget_manager.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    assert "read-only file system" in caplog.text
    spent = budget_manager.get_current_cost("u")
    assert spent > 0
    monkeypatch.setattr(os, "replace", real_replace)
    budget_manager.update_budget_all_users()
    saved = json.loads(Path("crash_user_cost.json").read_text(), parse_float=Decimal)
    assert saved["u"]["current_cost"] == spent


_KILLED_WRITER = """
import os, sys, time
from budgetguard import BudgetManager

budget_manager = BudgetManager("crash", autosave=False)
budget_manager.update_cost(user="u", model="gpt-4o", input_text="hi " * 5000, output_text="yo")

def hang(fd):
    os.write(fd, b"half written")
    open("writing", "w").close()
    time.sleep(60)

os.fsync = hang
budget_manager.save_data()
"""


@pytest.mark.slow
def test_process_killed_mid_write_leaves_previous_file() -> None:
    """A process killed (SIGKILL) while writing leaves the previous file whole and readable."""
    budget_manager = BudgetManager("crash")
    budget_manager.create_budget(total_budget=10, user="u")
    before = Path("crash_user_cost.json").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER])
    try:
        deadline = time.monotonic() + 30
        while not Path("writing").exists():
            assert child.poll() is None, "the writer exited before writing"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert Path("crash_user_cost.json").read_bytes() == before
    assert BudgetManager("crash").get_current_cost("u") == 0


def test_budgets_on_a_shared_guard_are_enforced(tmp_path: Path) -> None:
    """With guard=, the users' budgets are that guard's: its guarded calls are refused by them."""
    from budgetguard import BudgetExceededError, BudgetGuard

    from . import conftest

    guard = BudgetGuard(f"sqlite:///{tmp_path / 'spend.db'}", metrics=False)
    budget_manager = BudgetManager("shared", guard=guard)
    budget_manager.create_budget(total_budget="0.002", user="alice", duration="daily")
    completion = guard.budgeted(user="user")(
        lambda user, **kw: conftest.completion(**kw)  # type: ignore[misc]
    )
    messages = [{"role": "user", "content": "Hey"}]
    completion("alice", model="gpt-4", messages=messages, max_tokens=20)
    assert budget_manager.get_current_cost("alice") == guard.spend("alice") > 0
    with pytest.raises(BudgetExceededError):
        completion("alice", model="gpt-4", messages=messages, max_tokens=20)
    other = BudgetManager("shared", guard=BudgetGuard(guard.ledger.url, metrics=False))
    assert other.get_current_cost("alice") == budget_manager.get_current_cost("alice")
