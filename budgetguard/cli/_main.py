"""Build the ``budgetguard`` command line and run the command it names."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .._dist import install_hint
from ..errors import BudgetGuardError
from . import _budgets, _cost, _demo, _prices, _prune, _report, _serve
from ._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    UsageError,
)

DESCRIPTION = f"""\
Keep LLM spend under control: see who spent what, set limits, price calls.

Every command that reads or changes budgets takes --ledger URL, the same URL
your application passes to budgetguard.configure(ledger=...):
  memory://                 this process only
  sqlite:///spend.db        a file shared by the processes of one host
  redis://localhost:6379/0  shared by every host, with the redis extra:
                            {install_hint("redis")}
Set BUDGETGUARD_LEDGER to skip typing it.
"""

EPILOG = """\
start here:
  budgetguard demo                     see it at work, offline, no API key
  budgetguard report --ledger sqlite:///budgetguard-demo.db
  budgetguard budgets set --ledger sqlite:///spend.db --user alice \\
      --limit 10 --period monthly
  budgetguard prices claude-sonnet-4-5
  budgetguard cost --model gpt-4o --input 12000 --output 800

Run 'budgetguard COMMAND --help' for the options of one command.
"""

# In the order the help lists them.
COMMANDS = (_demo, _report, _budgets, _prices, _cost, _prune, _serve)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``budgetguard`` command line; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_library_logs()
    try:
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `budgetguard prices | head`: the reader left; say nothing.
        _silence_stdout()
        return EXIT_OK
    except UsageError as error:
        args.parser.error(str(error))  # exits with status 2
        return EXIT_USAGE
    except (CommandError, BudgetGuardError, OSError, ValueError, LookupError) as error:
        if os.environ.get("BUDGETGUARD_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # a bug: still one line, with a way to see more
        if os.environ.get("BUDGETGUARD_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(error).__name__}: {_one_line(error)} "
            "(set BUDGETGUARD_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole command line; each command adds its own sub-parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _quiet_library_logs() -> None:
    """Show the library's warnings (alerts, unpriced models) as plain lines on stderr."""
    logger = logging.getLogger("budgetguard")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
