"""The flag an instrumented SDK method sets while it runs, so that it is charged once.

Set by the wrappers of ``budgetguard.instrument()`` and by the stream managers
that send their request later: an SDK method that calls another instrumented
one (helpers, older aliases), or the request net below every method, then
passes the call through instead of charging it a second time.
"""

from __future__ import annotations

import contextvars

__all__ = ["inside_sdk_call"]

inside_sdk_call: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "budgetguard_instrumented", default=False
)
