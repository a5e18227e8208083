"""The engine: refusals and their errors, settling, policies, the module-level API."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from conftest import Clock

import budgetguard as bg
from budgetguard import (
    BudgetExceededError,
    BudgetGuard,
    BudgetGuardError,
    ConfigurationError,
    StorageError,
    UsageMissingError,
    budget_scope,
)
from budgetguard.ledger import Refusal, Reservation
from budgetguard.ledger.memory import MemoryLedger


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]


# -- BudgetExceededError ----------------------------------------------------------------------


def refusal_of_user_budget(clock: Clock, guard: BudgetGuard) -> BudgetExceededError:
    clock.set(utc(2024, 1, 20, 12))
    guard.set_budget("1.00", user="alice", period="monthly")
    guard.record_spend("0.70", user="alice")
    guard._begin("alice", Decimal("0.20"))  # held, not yet spent
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("alice", Decimal("0.15"))
    return caught.value


def test_refusal_carries_the_numbers(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """BudgetExceededError names user, budget, limit, spent, reserved, requested, period, reset."""
    error = refusal_of_user_budget(clock, clocked_guard)
    assert error.user == "alice"
    assert error.budget == "user:alice"
    assert error.limit == Decimal("1.00")
    assert error.spent == Decimal("0.70")
    assert error.reserved == Decimal("0.20")
    assert error.requested == Decimal("0.15")
    assert error.period == "monthly"
    assert error.resets_at == utc(2024, 2, 1)
    assert error.remaining == Decimal("0.10")
    assert isinstance(error, BudgetGuardError)


def test_refusal_has_litellm_attribute_names(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """current_cost is the spend and max_budget the limit, as LiteLLM names them."""
    error = refusal_of_user_budget(clock, clocked_guard)
    assert error.current_cost == Decimal("0.70")
    assert error.max_budget == Decimal("1.00")


def test_refusal_message_is_readable(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """The message says which budget, whose, and every number, with the reset time."""
    message = str(refusal_of_user_budget(clock, clocked_guard))
    for part in ("user:alice", "'alice'", "monthly", "$1,", "$0.7,", "$0.2,", "$0.15"):
        assert part in message
    assert "2024-02-01T00:00:00+00:00" in message


def test_refusal_pickles(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """A BudgetExceededError survives pickling with its fields and message."""
    error = refusal_of_user_budget(clock, clocked_guard)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is BudgetExceededError
    assert str(again) == str(error)
    assert again.__dict__ == error.__dict__
    assert again.max_budget == Decimal("1.00")


def test_refusal_by_the_global_budget(guard: BudgetGuard) -> None:
    """A refusal by the global budget says budget='global' and names the caller."""
    guard.set_budget("1", period="daily")
    guard.record_spend("1", user="bob")
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("alice", 0)
    assert (caught.value.budget, caught.value.user, caught.value.period) == (
        "global",
        "alice",
        "daily",
    )


def test_refusal_by_a_scope_cap(guard: BudgetGuard) -> None:
    """A refusal by a scope's cap says budget='scope' and has no reset time."""
    with budget_scope("alice", limit="0.10"), pytest.raises(BudgetExceededError) as caught:
        guard._begin(None, Decimal("0.11"))
    error = caught.value
    assert (error.budget, error.user, error.period, error.resets_at) == (
        "scope",
        "alice",
        "this block",
        None,
    )
    assert error.limit == Decimal("0.10")
    assert error.requested == Decimal("0.11")


def test_lifetime_budget_refusal_has_no_reset(guard: BudgetGuard) -> None:
    """A lifetime budget never resets, and the error says so by resets_at=None."""
    guard.set_budget("0.01", user="alice")
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("alice", Decimal("0.02"))
    assert caught.value.resets_at is None
    assert "resets" not in str(caught.value)


def test_refusal_changes_nothing(guard: BudgetGuard) -> None:
    """A refused reservation holds nothing on any budget, even those that had room."""
    guard.set_budget("10", user="alice")
    guard.set_budget("1")
    with pytest.raises(BudgetExceededError):
        guard._begin("alice", Decimal(2))
    assert guard.ledger.open_reservations() == []
    assert guard.remaining("alice") == Decimal(1)
    assert guard.get_budget("alice") is not None
    assert guard.remaining() == Decimal(1)


# -- settling -------------------------------------------------------------------------------


def test_settle_is_idempotent_in_the_ledger(guard: BudgetGuard) -> None:
    """Settling one reservation twice charges it once."""
    guard.set_budget("1", user="alice")
    call = guard._begin("alice", Decimal("0.5"))
    reservation = call.reservation
    assert reservation is not None
    assert guard.ledger.settle(reservation, 300_000_000) is True
    assert guard.ledger.settle(reservation, 300_000_000) is False
    assert guard.spend("alice") == Decimal("0.3")


def test_finishing_a_call_twice_charges_once(guard: BudgetGuard) -> None:
    """guard.finish on the same call twice charges it once."""
    guard.set_budget("1", user="alice")
    call = guard._begin("alice", Decimal("0.5"))
    guard._finish(call, Decimal("0.25"))
    guard._finish(call, Decimal("0.25"))
    assert guard.spend("alice") == Decimal("0.25")
    assert guard.spend() == Decimal("0.25")


def test_estimate_is_held_then_the_actual_cost_charged(guard: BudgetGuard) -> None:
    """The estimate is reserved before the call; the actual cost replaces it after."""
    guard.set_budget("1", user="alice")
    call = guard._begin("alice", Decimal("0.4"))
    assert guard.remaining("alice") == Decimal("0.6")
    assert guard.spend("alice") == Decimal(0)
    guard._finish(call, Decimal("0.1"))
    assert guard.spend("alice") == Decimal("0.1")
    assert guard.remaining("alice") == Decimal("0.9")


def test_cost_above_the_estimate_and_the_limit_is_charged_in_full(guard: BudgetGuard) -> None:
    """A call that cost more than its estimate is charged it all, even past the limit."""
    guard.set_budget("1", user="alice")
    call = guard._begin("alice", Decimal("0.1"))
    guard._finish(call, Decimal("1.5"))
    assert guard.spend("alice") == Decimal("1.5")
    assert guard.remaining("alice") == Decimal(0)
    with pytest.raises(BudgetExceededError):
        guard._begin("alice", 0)


def test_release_on_error_charges_nothing(guard: BudgetGuard) -> None:
    """A call that failed with no known cost is released, not charged."""
    guard.set_budget("1", user="alice")
    call = guard._begin("alice", Decimal("0.4"))
    guard._finish(call, None, error=RuntimeError())
    assert guard.ledger.open_reservations() == []
    assert guard.spend("alice") == Decimal(0)


def test_crashed_call_reservation_expires(clock: Clock) -> None:
    """A reservation never ended (a crashed process) is dropped after reservation_ttl."""
    guard = BudgetGuard(metrics=False, clock=clock, reservation_ttl=60)
    guard.set_budget("1", user="alice")
    guard._begin("alice", Decimal("0.9"))
    with pytest.raises(BudgetExceededError):
        guard._begin("alice", Decimal("0.2"))
    clock.advance(59)
    assert guard.remaining("alice") == Decimal("0.1")
    clock.advance(1)
    assert guard.remaining("alice") == Decimal(1)
    assert guard.ledger.open_reservations() == []
    guard._begin("alice", Decimal("0.2"))
    guard.close()


# -- policies -------------------------------------------------------------------------------


def test_missing_cost_charges_the_estimate_by_default(guard: BudgetGuard) -> None:
    """With on_missing_cost='estimate' a call that reports no cost is charged its estimate."""

    @guard.budgeted(user="alice", estimate="0.3")
    def call() -> None:
        pass

    call()
    assert guard.on_missing_cost == "estimate"
    assert guard.spend("alice") == Decimal("0.3")


def test_missing_cost_ignore_charges_nothing() -> None:
    """With on_missing_cost='ignore' a call that reports no cost is charged nothing."""
    guard = BudgetGuard(metrics=False, on_missing_cost="ignore")
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.3")
    def call() -> None:
        pass

    call()
    assert guard.spend("alice") == Decimal(0)
    assert guard.ledger.open_reservations() == []
    guard.close()


def test_missing_cost_raise_raises_and_ends_the_reservation() -> None:
    """With on_missing_cost='raise' the call raises UsageMissingError and holds nothing after."""
    guard = BudgetGuard(metrics=False, on_missing_cost="raise")
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.3")
    def call() -> str:
        return "answer"

    with pytest.raises(UsageMissingError):
        call()
    assert guard.ledger.open_reservations() == []
    assert guard.spend("alice") == Decimal("0.3")  # the call ran: its estimate stays spent
    guard.close()


async def test_missing_cost_raise_async() -> None:
    """on_missing_cost='raise' ends the reservation of an async call too."""
    guard = BudgetGuard(metrics=False, on_missing_cost="raise")
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.3")
    async def call() -> str:
        return "answer"

    with pytest.raises(UsageMissingError):
        await call()
    assert guard.ledger.open_reservations() == []
    guard.close()


def test_missing_cost_raise_does_not_fire_when_charged() -> None:
    """A call whose cost was charged is fine under on_missing_cost='raise'."""
    guard = BudgetGuard(metrics=False, on_missing_cost="raise")

    @guard.budgeted(user="alice", cost=lambda _: "0.1")
    def call() -> None:
        pass

    call()
    assert guard.spend("alice") == Decimal("0.1")
    guard.close()


def test_outside_scope_refuse() -> None:
    """outside_scope='refuse' refuses calls with no scope and no user, and only those."""
    guard = BudgetGuard(metrics=False, outside_scope="refuse")
    ran: list[str | None] = []

    @guard.budgeted(cost=lambda _: "0.1")
    def call() -> None:
        ran.append(bg.current_user())

    with pytest.raises(BudgetExceededError) as caught:
        call()
    assert caught.value.budget == "outside-scope"
    assert "outside_scope" in str(caught.value)
    assert ran == []
    with budget_scope("alice"):
        call()
    guard.budgeted(user="bob", cost=lambda _: "0.1")(lambda: None)()
    assert ran == ["alice"]
    assert guard.spend("bob") == Decimal("0.1")
    guard.close()


def test_outside_scope_global_charges_the_total(guard: BudgetGuard) -> None:
    """By default a call outside any scope counts against the global budget."""
    guard.set_budget("0.25")

    @guard.budgeted(cost=lambda _: "0.1")
    def call() -> None:
        pass

    call()
    call()
    with pytest.raises(BudgetExceededError):
        call()  # $0.20 spent + the $0.10 learned > $0.25
    assert guard.spend() == Decimal("0.2")


class BrokenLedger(MemoryLedger):
    """A memory ledger whose storage can be switched off: every operation raises."""

    broken = False

    def _check(self) -> None:
        if self.broken:
            raise StorageError("storage is down")

    def reserve(self, reservation: Reservation) -> Refusal | None:
        self._check()
        return super().reserve(reservation)

    def settle(self, reservation: Reservation, amount: int, tallies: Sequence[str] = ()) -> bool:
        self._check()
        return super().settle(reservation, amount, tallies)

    def release(self, reservation: Reservation) -> bool:
        self._check()
        return super().release(reservation)

    def add(self, keys: Sequence[str], amount: int) -> None:
        self._check()
        super().add(keys, amount)

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        self._check()
        return super().list_budgets()

    def put_budget(self, name: str, definition: Any) -> None:
        self._check()
        super().put_budget(name, definition)


class SharedBrokenLedger(BrokenLedger):
    """The same, posing as shared storage, so that budgets are re-read from it."""

    shared: ClassVar[bool] = True


def test_fail_closed_refuses_when_storage_is_down() -> None:
    """on_storage_error='fail_closed' (the default) raises StorageError and skips the call."""
    ledger = BrokenLedger()
    guard = BudgetGuard(ledger, metrics=False)
    guard.set_budget("1", user="alice")
    ledger.broken = True
    ran: list[bool] = []

    @guard.budgeted(user="alice", estimate="0.1")
    def call() -> None:
        ran.append(True)

    with pytest.raises(StorageError):
        call()
    assert ran == []
    assert guard.on_storage_error == "fail_closed"


def test_fail_open_runs_the_call_when_storage_is_down(caplog: pytest.LogCaptureFixture) -> None:
    """on_storage_error='fail_open' runs the call, logs, and does not raise."""
    ledger = BrokenLedger()
    guard = BudgetGuard(ledger, metrics=False, on_storage_error="fail_open")
    guard.set_budget("1", user="alice")
    ledger.broken = True

    @guard.budgeted(user="alice", estimate="0.1", cost=lambda _: "0.1")
    def call() -> str:
        return "ran"

    with caplog.at_level(logging.WARNING, logger="budgetguard"):
        assert call() == "ran"
    assert "fail_open" in caplog.text
    ledger.broken = False
    assert guard.ledger.open_reservations() == []


def test_fail_open_with_shared_storage_down_runs_the_call() -> None:
    """fail_open also holds when the budget definitions cannot be re-read."""
    ledger = SharedBrokenLedger()
    guard = BudgetGuard(ledger, metrics=False, on_storage_error="fail_open", budget_cache_ttl=0)
    guard.set_budget("1", user="alice")
    ledger.broken = True

    @guard.budgeted(user="alice", estimate="0.1", cost=lambda _: "0.1")
    def call() -> str:
        return "ran"

    assert call() == "ran"


def test_fail_closed_with_shared_storage_down_refuses() -> None:
    """fail_closed refuses when the budget definitions cannot be re-read."""
    ledger = SharedBrokenLedger()
    guard = BudgetGuard(ledger, metrics=False, budget_cache_ttl=0)
    guard.set_budget("1", user="alice")
    ledger.broken = True

    @guard.budgeted(user="alice", estimate="0.1")
    def call() -> str:
        return "ran"

    with pytest.raises(StorageError):
        call()


def test_storage_failing_after_the_call_keeps_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the ledger breaks while the call runs, the result is returned and the loss logged."""
    ledger = BrokenLedger()
    guard = BudgetGuard(ledger, metrics=False)
    guard.set_budget("1", user="alice")

    @guard.budgeted(user="alice", estimate="0.1", cost=lambda _: "0.1")
    def call() -> str:
        ledger.broken = True
        return "answer"

    with caplog.at_level(logging.ERROR, logger="budgetguard"):
        assert call() == "answer"
    assert "could not record" in caplog.text


def test_set_budget_with_storage_down_raises() -> None:
    """Administrative operations raise StorageError whatever the policy."""
    ledger = BrokenLedger()
    guard = BudgetGuard(ledger, metrics=False, on_storage_error="fail_open")
    ledger.broken = True
    with pytest.raises(StorageError):
        guard.set_budget("1", user="alice")
    ledger.broken = False
    assert guard.get_budget("alice") is None


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"on_storage_error": "explode"},
        {"on_missing_cost": "guess"},
        {"on_unknown_model": "pray"},
        {"outside_scope": "anywhere"},
        {"reservation_ttl": 0},
        {"reservation_ttl": -5},
        {"ledger": "not a url"},
        {"ledger": "ftp://example.com"},
        {"tz": "Nowhere/Special"},
    ],
)
def test_bad_options_raise_configuration_error(options: dict[str, Any]) -> None:
    """BudgetGuard refuses bad options with ConfigurationError naming the option's value."""
    with pytest.raises(ConfigurationError) as caught:
        BudgetGuard(metrics=False, **options)
    assert str(next(iter(options.values()))) in str(caught.value)
    assert isinstance(caught.value, BudgetGuardError)
    assert isinstance(caught.value, ValueError)


def test_guard_takes_a_ledger_instance() -> None:
    """A Ledger instance is used as is."""
    ledger = MemoryLedger()
    guard = BudgetGuard(ledger, metrics=False)
    assert guard.ledger is ledger
    assert "memory://" in repr(guard)


# -- the module-level API -------------------------------------------------------------------


def test_module_functions_use_the_default_guard() -> None:
    """bg.set_budget, bg.spend, bg.remaining, bg.reset and friends act on the default guard."""
    budget = bg.set_budget("2", user="alice", period="monthly")
    assert bg.get_budget("alice") is budget
    assert bg.default_guard().get_budget("alice") is budget
    bg.set_budget("10")
    bg.set_default_budget("1")
    assert [b.name for b in bg.budgets()] == ["default", "global", "user:alice"]

    @bg.budgeted(user="alice", cost=lambda _: "0.5", model="m")
    def call() -> None:
        pass

    call()
    assert bg.spend("alice") == Decimal("0.5")
    assert bg.spend() == Decimal("0.5")
    assert bg.spend("alice", model="m") == Decimal("0.5")
    assert bg.spend_by_model("alice") == {"m": Decimal("0.5")}
    assert bg.remaining("alice") == Decimal("1.5")
    bg.reset("alice")
    assert bg.spend("alice") == Decimal(0)
    assert bg.delete_budget("alice") is True
    assert bg.remaining("alice") == Decimal(1)  # the default now applies


def test_configure_replaces_the_default_guard() -> None:
    """bg.configure builds a new default guard with the options given."""
    bg.set_budget("1", user="alice")
    guard = bg.configure("memory://", metrics=False, on_missing_cost="ignore")
    assert bg.default_guard() is guard
    assert guard.on_missing_cost == "ignore"
    assert bg.get_budget("alice") is None  # a fresh memory ledger


def test_configure_with_bad_options_keeps_the_old_guard() -> None:
    """A configure() that fails leaves the previous default guard in place."""
    before = bg.default_guard()
    with pytest.raises(ConfigurationError):
        bg.configure("memory://", metrics=False, outside_scope="sometimes")
    assert bg.default_guard() is before


def test_guard_budgeted_method() -> None:
    """guard.budgeted(...) is @budgeted bound to that guard, not the default one."""
    guard = BudgetGuard(metrics=False)

    @guard.budgeted(user="alice", cost=lambda _: "0.1")
    def call() -> None:
        pass

    call()
    assert guard.spend("alice") == Decimal("0.1")
    assert bg.spend("alice") == Decimal(0)
    guard.close()
