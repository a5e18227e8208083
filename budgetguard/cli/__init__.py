"""Run the ``budgetguard`` command: a demo, spend reports, budgets, prices and costs.

Exit status: 0 on success, 1 when something went wrong at run time (a ledger
that cannot be reached, an unknown model, ...), 2 for bad arguments, 130 when
interrupted. Errors are one line on stderr, without a traceback (set
``BUDGETGUARD_DEBUG=1`` to see one).

Each command lives in its own private module (``_demo``, ``_report``, ...),
which adds its sub-parser and runs it; ``_main`` builds the whole parser.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
