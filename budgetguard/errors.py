"""Exceptions raised by budgetguard."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import overload

from .money import Amount

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

    Two constructors: budgetguard's keywords (``budget=``, ``limit=``,
    ``spent=``, ``reserved=``, ``requested=``, ...), and LiteLLM's
    ``BudgetExceededError(current_cost, max_budget, message=None)``, so code
    that raises or subclasses LiteLLM's error keeps working. In LiteLLM's
    form the amounts become exact ``Decimal`` (a float by its shortest repr)
    and the budget is ``"max_budget"``.
    """

    @overload
    def __init__(
        self, current_cost: Amount, max_budget: Amount, message: str | None = None
    ) -> None: ...

    @overload
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
        unit: str = "usd",
    ) -> None: ...

    def __init__(
        self,
        current_cost: Amount | None = None,
        max_budget: Amount | None = None,
        message: str | None = None,
        *,
        budget: str | None = None,
        limit: Decimal | None = None,
        spent: Decimal | None = None,
        reserved: Decimal | None = None,
        requested: Decimal | None = None,
        user: str | None = None,
        period: str | None = None,
        resets_at: datetime | None = None,
        unit: str = "usd",
    ) -> None:
        ours = {
            "budget": budget,
            "limit": limit,
            "spent": spent,
            "reserved": reserved,
            "requested": requested,
        }
        if current_cost is not None or max_budget is not None:
            given = {**ours, "user": user, "period": period, "resets_at": resets_at}
            mixed = [name for name, value in given.items() if value is not None]
            if mixed:
                raise TypeError(
                    "BudgetExceededError takes either LiteLLM's (current_cost, max_budget, "
                    f"message) or budgetguard's keywords, not both (got {', '.join(mixed)})"
                )
            if current_cost is None or max_budget is None:
                raise TypeError("BudgetExceededError needs both current_cost and max_budget")
            budget = "max_budget"
            limit = _exact(max_budget, "max_budget")
            spent = _exact(current_cost, "current_cost")
            reserved = requested = Decimal(0)
            # LiteLLM's wording, with the numbers as the caller gave them.
            message = message or (
                f"Budget has been exceeded! Current cost: {current_cost}, Max budget: {max_budget}"
            )
        else:
            missing = [name for name, value in ours.items() if value is None]
            if missing:
                raise TypeError(
                    f"BudgetExceededError() missing {', '.join(missing)} (or give LiteLLM's "
                    "current_cost and max_budget)"
                )
        assert budget is not None and limit is not None and spent is not None
        assert reserved is not None and requested is not None
        self.budget = budget
        self.user = user
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.period = period
        self.resets_at = resets_at
        #: What the amounts count: ``usd`` (dollars), ``tokens``, ``requests``, ``concurrency``...
        self.unit = unit
        #: The text of the error (LiteLLM's attribute; ``str(error)`` is the same).
        self.message = message or self._describe()
        super().__init__(self.message)

    @property
    def current_cost(self) -> Decimal:
        """Return the spend so far (LiteLLM's name)."""
        return self.spent

    @current_cost.setter
    def current_cost(self, value: Amount) -> None:
        # LiteLLM's __init__ assigns it; subclasses written for LiteLLM may too.
        self.spent = _exact(value, "current_cost")

    @property
    def max_budget(self) -> Decimal:
        """Return the budget's limit (LiteLLM's name)."""
        return self.limit

    @max_budget.setter
    def max_budget(self, value: Amount) -> None:
        self.limit = _exact(value, "max_budget")

    @property
    def remaining(self) -> Decimal:
        """Return what is left of the budget before this call."""
        return max(Decimal(0), self.limit - self.spent - self.reserved)

    def _describe(self) -> str:
        who = f" for user {self.user!r}" if self.user is not None else ""
        period = f" ({self.period})" if self.period else ""
        resets = f"; resets at {self.resets_at.isoformat()}" if self.resets_at else ""
        unit = getattr(self, "unit", "usd")
        if unit == "concurrency":
            return (
                f"budget {self.budget}{who} exceeded: {self.limit} calls in flight at most, "
                f"{self.reserved} running"
            )
        if unit != "usd":
            what = unit.replace("_", " ")
            return (
                f"budget {self.budget}{period}{who} exceeded: limit {self.limit} {what}, "
                f"used {self.spent}, reserved {self.reserved}, "
                f"this call needs {self.requested}{resets}"
            )
        return (
            f"budget {self.budget}{period}{who} exceeded: limit ${self.limit}, "
            f"spent ${self.spent}, reserved ${self.reserved}, "
            f"this call needs ${self.requested}{resets}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling (multiprocessing) would call __init__ with the message as
        # current_cost; rebuild from the state instead, keeping the subclass.
        return (_rebuild_exceeded, (self.__dict__.copy(), str(self), type(self)))


def _exact(value: object, name: str) -> Decimal:
    """Turn an amount given to the error into a ``Decimal``; floats by their shortest repr.

    Lenient on purpose (an infinite ``max_budget`` is kept): building an
    error must not fail on the numbers it reports, only on a non-number.
    """
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            pass
    raise TypeError(f"{name} must be a number, got {value!r}")


def _rebuild_exceeded(
    state: dict[str, object],
    message: str,
    cls: type[BudgetExceededError] = BudgetExceededError,
) -> BudgetExceededError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
