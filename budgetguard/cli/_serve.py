"""Serve the authenticated budget service and its dashboard: ``budgetguard serve``."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

from ._common import add_command, add_ledger

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard serve`` to the command line."""
    serve = add_command(
        commands,
        "serve",
        "serve the budget API (LiteLLM-compatible) and the spend dashboard over HTTP",
        "Serve budgetguard's authenticated budget API (LiteLLM-compatible routes "
        "included) and its spend dashboard for a ledger over HTTP.",
        "example:\n  BUDGETGUARD_TOKEN=... budgetguard serve --ledger redis://localhost:6379/0 "
        "--port 8000",
        run,
    )
    add_ledger(serve)
    # The service's own options (host, port, tokens, limits) live with it.
    importlib.import_module("budgetguard.server").add_arguments(serve)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; the service decides its own exit statuses."""
    status: int = importlib.import_module("budgetguard.server").run_from_args(args)
    return status
