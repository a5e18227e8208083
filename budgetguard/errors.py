"""Exceptions raised by budgetguard."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

__all__ = [
    "BudgetExceededError",
    "BudgetGuardError",
    "ConfigurationError",
    "EstimateMissingError",
    "StorageError",
    "UnknownModelError",
    "UsageMissingError",
]


class BudgetGuardError(Exception):
    """Root of every error budgetguard raises on purpose."""


class ConfigurationError(BudgetGuardError, ValueError):
    """Reject a configuration that cannot work (bad URL, missing extra, bad option)."""


class StorageError(BudgetGuardError):
    """Report that the ledger's storage could not be read or written."""


class UnknownModelError(BudgetGuardError, LookupError):
    """Report a model with no known price, under ``on_unknown_model="raise"``."""

    def __init__(self, model: str, message: str | None = None) -> None:
        self.model = model
        super().__init__(
            message
            or f"no price known for model {model!r}; register one with "
            "budgetguard.register_model(...) or choose another on_unknown_model policy"
        )


class EstimateMissingError(BudgetGuardError):
    """Refuse a call with no estimate, under ``on_missing_estimate="raise"``."""


class UsageMissingError(BudgetGuardError):
    """Report a response that carries no usage, under ``on_missing_usage="raise"``."""


class BudgetExceededError(BudgetGuardError):
    """Refuse a call that would take a budget over its limit.

    Carries the numbers a person needs to act: who, which budget, its limit,
    what is spent and reserved, what the call asked for, and when it resets.
    ``current_cost`` and ``max_budget`` are LiteLLM's names for ``spent`` and
    ``limit``.
    """

    def __init__(
        self,
        *,
        budget: str,
        limit: Decimal,
        spent: Decimal,
        reserved: Decimal,
        requested: Decimal,
        user: str | None = None,
        period: str | None = None,
        resets_at: datetime | None = None,
        message: str | None = None,
    ) -> None:
        self.budget = budget
        self.user = user
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.period = period
        self.resets_at = resets_at
        super().__init__(message or self._describe())

    @property
    def current_cost(self) -> Decimal:
        """Return the spend so far (LiteLLM's name)."""
        return self.spent

    @property
    def max_budget(self) -> Decimal:
        """Return the budget's limit (LiteLLM's name)."""
        return self.limit

    @property
    def remaining(self) -> Decimal:
        """Return what is left of the budget before this call."""
        return max(Decimal(0), self.limit - self.spent - self.reserved)

    def _describe(self) -> str:
        who = f" for user {self.user!r}" if self.user is not None else ""
        period = f" ({self.period})" if self.period else ""
        resets = f"; resets at {self.resets_at.isoformat()}" if self.resets_at else ""
        return (
            f"budget {self.budget}{period}{who} exceeded: limit ${self.limit}, "
            f"spent ${self.spent}, reserved ${self.reserved}, "
            f"this call needs ${self.requested}{resets}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__ needs help to survive pickling (multiprocessing).
        return (_rebuild_exceeded, (self.__dict__.copy(), str(self)))


def _rebuild_exceeded(state: dict[str, object], message: str) -> BudgetExceededError:
    error = BudgetExceededError.__new__(BudgetExceededError)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
