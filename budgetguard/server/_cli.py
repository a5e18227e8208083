"""The ``serve`` command's options and body, kept here so the CLI only calls one function."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import NoReturn

from .._dist import install_hint
from ..errors import ConfigurationError
from ._config import READ_TOKEN_ENV, TOKEN_ENV, ServerConfig, load_tokens

__all__ = ["EXTRA_HINT", "add_arguments", "config_from_args", "main", "run_from_args"]

#: How to get the server's dependencies, without naming the distribution.
EXTRA_HINT = f"install the 'server' extra: {install_hint('server')}"
LEDGER_ENV = "BUDGETGUARD_LEDGER"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {text}")
    return value


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser, *, ledger: bool = False) -> None:
    """Add the options of ``serve`` to ``parser`` (``--ledger`` too when ``ledger``)."""
    if ledger:
        default = os.environ.get(LEDGER_ENV)
        parser.add_argument(
            "--ledger",
            default=default or "memory://",
            metavar="URL",
            help=f"the ledger: sqlite:///spend.db, redis://host:6379/0, ... (or {LEDGER_ENV})",
        )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="port, 0 for any free one (default: 8000)"
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"bearer tokens, one a line: 'admin TOKEN' or 'read TOKEN' (default: {TOKEN_ENV} "
        f"is the admin token, {READ_TOKEN_ENV} a read-only one)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        "--no-auth",
        dest="no_auth",
        action="store_true",
        help="serve without tokens; refused unless --host is a loopback address",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients use to reach the service (repeat; '*' for any); "
        "loopback names are always allowed",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://admin.example) whose pages may call the API (repeat)",
    )
    parser.add_argument(
        "--max-body",
        type=_positive(int),
        default=1024 * 1024,
        metavar="BYTES",
        help="largest request body (default: 1048576)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="time a client has to send a request (default: 5)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int),
        default=2048,
        metavar="N",
        help="open connections at most; more are answered 503 (default: 2048)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the service's configuration from parsed ``serve`` options."""
    tokens = load_tokens(args.token_file)
    return ServerConfig(
        ledger=args.ledger,
        host=args.host,
        port=args.port,
        tokens=tokens,
        no_auth=args.no_auth,
        allowed_hosts=tuple(args.allowed_host),
        allowed_origins=tuple(args.allowed_origin),
        max_body=args.max_body,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
    )


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    parser = getattr(args, "parser", None)
    if isinstance(parser, argparse.ArgumentParser):
        parser.error(message)  # exits with status 2
    raise SystemExit(2)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``serve`` with parsed options; return the exit status.

    A configuration that cannot be safe (no token, no auth off loopback, a bad
    ledger URL) exits 2 through the parser; a missing extra raises
    ``ConfigurationError`` and an unreachable ledger ``StorageError``.
    """
    try:
        config = config_from_args(args)
        config.check()
    except ConfigurationError as error:
        _usage(args, str(error))
    try:
        from . import _run
    except ImportError as error:
        raise ConfigurationError(
            f"the budget service needs Starlette and uvicorn ({error}); {EXTRA_HINT}"
        ) from None
    # The service logs where it listens, and failed requests, at INFO and above.
    logging.getLogger("budgetguard").setLevel(logging.INFO)
    try:
        guard = _run.open_guard(config.ledger)
    except ConfigurationError as error:
        _usage(args, f"argument --ledger: {error}")
    _run.serve(config, guard)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service from the command line (``python -m budgetguard.server``)."""
    parser = argparse.ArgumentParser(
        prog="python -m budgetguard.server",
        description="Serve budgets, spend and a dashboard over authenticated HTTP.",
    )
    add_arguments(parser, ledger=True)
    args = parser.parse_args(argv)
    args.parser = parser
    if not logging.getLogger("budgetguard").handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run_from_args(args)
