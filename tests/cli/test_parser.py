"""The ``budgetguard`` parser, built in process: one module per command."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from budgetguard import __version__
from budgetguard.cli import _main, main


def test_commands_are_listed_in_the_order_of_the_help() -> None:
    """Add every command's sub-parser, in the order the help lists them."""
    parser = _main.build_parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    assert list(commands.choices) == [
        "demo",
        "report",
        "budgets",
        "prices",
        "cost",
        "prune",
        "serve",
    ]


@pytest.mark.parametrize("module", _main.COMMANDS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_command_module_adds_a_parser_and_runs(module: object) -> None:
    """Give every command module an add_parser(commands) and a run(args) function."""
    assert callable(getattr(module, "add_parser", None))
    assert callable(getattr(module, "run", None))


def test_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """Return 0 from main() and print the cost table of a known model."""
    status = main(["cost", "--model", "gpt-4o", "--input", "1000", "--output", "100"])
    assert status == 0
    assert capsys.readouterr().out.startswith("gpt-4o")


def test_python_dash_m_budgetguard_cli_runs_the_command() -> None:
    """Run the same command line from ``python -m budgetguard.cli``."""
    done = subprocess.run(
        [sys.executable, "-m", "budgetguard.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout == f"budgetguard {__version__}\n"
