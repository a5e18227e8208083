"""Serve the LiteLLM-compatible budget API over HTTP: ``budgetguard serve``."""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ._common import EXIT_OK, CommandError, UsageError, add_command, add_ledger, positive_int

if TYPE_CHECKING:
    from ._common import Subparsers


def add_parser(commands: Subparsers) -> None:
    """Add ``budgetguard serve`` to the command line."""
    serve = add_command(
        commands,
        "serve",
        "serve the LiteLLM-compatible budget API over HTTP",
        "Serve budgetguard's LiteLLM-compatible budget API for a ledger over HTTP.",
        "example:\n  budgetguard serve --ledger redis://localhost:6379/0 --port 8000",
        run,
    )
    add_ledger(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=positive_int, default=8000, help="port (default: 8000)")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    try:
        # Owned by the compat module, which may not be there yet.
        serve = importlib.import_module("budgetguard.compat.server").serve
    except ImportError as error:
        missing = getattr(error, "name", None) or ""
        if missing.startswith("budgetguard"):
            raise CommandError(
                "the LiteLLM-compatible server is not available in this version of budgetguard "
                "(budgetguard.compat.server is missing)"
            ) from None
        raise CommandError(f"the server needs a package that is not installed: {error}") from None
    # The server logs where it listens (and failed requests) at INFO and above.
    logging.getLogger("budgetguard").setLevel(logging.INFO)
    try:
        serve(args.ledger, args.host, args.port)
    except ConfigurationError as error:
        raise UsageError(f"argument --ledger: {error}") from None
    return EXIT_OK
