"""Share what several commands use: exit statuses, errors, options and opening a ledger."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError
from ..guard import BudgetGuard
from ..periods import parse_tz

if TYPE_CHECKING:
    from typing import TypeAlias

    #: What ``ArgumentParser.add_subparsers`` returns; commands add themselves to it.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

PROG = "budgetguard"
LEDGER_ENV = "BUDGETGUARD_LEDGER"
FORMATS = ("table", "csv", "json")

EXIT_OK = 0
EXIT_ERROR = 1  # something went wrong at run time
EXIT_USAGE = 2  # bad arguments (argparse exits with 2 too)
EXIT_INTERRUPTED = 130

#: A command's body: it gets the parsed arguments and returns the exit status.
Run = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """Stop the command with a one-line message and exit status 1."""


class UsageError(Exception):
    """Reject an argument whose problem shows only once it is used (exit status 2)."""


# -- sub-parsers -------------------------------------------------------------------------------


def add_command(
    commands: Subparsers, name: str, summary: str, description: str, epilog: str, run: Run
) -> argparse.ArgumentParser:
    """Add the sub-parser of one command; parsing it sets ``args.run`` and ``args.parser``."""
    sub = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(run=run, parser=sub)
    return sub


def add_ledger(parser: argparse.ArgumentParser) -> None:
    """Add ``--ledger URL``, required unless ``BUDGETGUARD_LEDGER`` is set."""
    default = os.environ.get(LEDGER_ENV)
    parser.add_argument(
        "--ledger",
        type=ledger_url,
        default=default,
        required=default is None,
        metavar="URL",
        help=f"the ledger: sqlite:///spend.db, redis://host:6379/0, ... (or set {LEDGER_ENV})",
    )


def add_format(parser: argparse.ArgumentParser) -> None:
    """Add ``--format table|csv|json``."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table for people (default), csv or json for scripts",
    )


# -- argument types: a bad value is a usage error (exit status 2) -----------------------------


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def time_zone(text: str) -> str:
    """Check that ``text`` names a time zone; return it unchanged."""
    try:
        parse_tz(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(
            f"{error} (use an IANA name such as Europe/Paris)"
        ) from None
    return text


def ledger_url(text: str) -> str:
    """Check that ``text`` looks like a ledger URL; return it unchanged."""
    if "://" not in text:
        raise argparse.ArgumentTypeError(
            f"not a ledger URL: {text!r}; use memory://, sqlite:///path/spend.db "
            "or redis://host:6379/0"
        )
    return text


def safe_url(url: str) -> str:
    """Return a URL without its password, for output."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return url.replace(parts.netloc, netloc)
    return url


# -- opening a ledger -------------------------------------------------------------------------


@contextmanager
def open_guard(
    url: str, *, must_exist: bool = False, tz: str = "UTC", **options: Any
) -> Iterator[BudgetGuard]:
    """Open the ledger at ``url`` and check that it answers; close it afterwards."""
    if must_exist:
        _check_exists(url)
    options.setdefault("metrics", False)
    try:
        guard = BudgetGuard(url, tz=tz, **options)
    except ConfigurationError as error:
        raise UsageError(f"argument --ledger: {error}") from None
    try:
        guard.ledger.ping()
        yield guard
    finally:
        guard.close()


def _check_exists(url: str) -> None:
    """Refuse to report on a SQLite file that is not there (opening it would create it)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if path and not path.startswith("file:") and path != ":memory:":
        path = os.path.abspath(path)
        if not os.path.exists(path):
            raise CommandError(
                f"no ledger at {path}: the file does not exist (check the path; "
                "sqlite:///rel.db is relative, sqlite:////abs.db absolute)"
            )
