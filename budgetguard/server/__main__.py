"""Run the budget service: ``python -m budgetguard.server --ledger URL``."""

import sys

from . import main

sys.exit(main())
