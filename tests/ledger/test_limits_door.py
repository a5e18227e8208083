"""set_budget refuses a limit the backend cannot hold exactly, on every backend; nothing changes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgetguard import BudgetGuard
from budgetguard.money import from_units


def test_a_limit_above_what_the_ledger_holds_is_refused_when_set(ledger_url: str) -> None:
    """Above max_units: ValueError naming the limit and the most; the old budget stays."""
    guard = BudgetGuard(ledger_url, metrics=False)
    try:
        guard.set_budget("5", user="alice")
        most = guard.ledger.max_units
        if most is None:
            # memory:// counts Python ints: any finite limit holds, and a call under it runs.
            guard.set_budget("1e30", user="alice")
            guard.charge("1", user="alice")
            assert guard.remaining("alice") == Decimal("9" * 30)
            return
        too_much = from_units(most + 1)
        for limit in (str(too_much), "1e9999", 10**20):
            with pytest.raises(ValueError, match="holds exactly") as refused:
                guard.set_budget(limit, user="alice")
            assert repr(limit) in str(refused.value)
            with pytest.raises(ValueError, match="holds exactly"):
                guard.set_default_budget(limit)
        fresh = BudgetGuard(ledger_url, metrics=False)
        kept = fresh.get_budget("alice")
        assert kept is not None and kept.limit == 5
        assert fresh.get_default_budget() is None
        fresh.close()
        # The largest limit it does hold works for a call.
        guard.set_budget(from_units(most), user="alice")
        guard.charge("1", user="alice")
        assert guard.remaining("alice") == from_units(most) - 1
    finally:
        guard.close()
