"""Run the ``budgetguard`` command: ``python -m budgetguard.cli --help``."""

from __future__ import annotations

import sys

from ._main import main

sys.exit(main())
