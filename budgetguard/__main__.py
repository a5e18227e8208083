"""Run the ``budgetguard`` command: ``python -m budgetguard --help``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
