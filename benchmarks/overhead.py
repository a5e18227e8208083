"""Measure what budgetguard adds to a call: nanoseconds per call and ratios.

Run: python benchmarks/overhead.py [--calls N]

Compares a bare function, the same under wrapt's bare FunctionWrapper, the
same under ``@budgeted`` (memory ledger, metrics off and on with no
OpenTelemetry SDK installed as the provider), and a ``budget_scope``
enter/exit. Every figure in one run, so ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import wrapt

import budgetguard as bg


def per_call_ns(function: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Return the median over ``repeats`` runs of nanoseconds per call."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            function()
        runs.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    calls = parser.parse_args().calls

    def bare() -> int:
        return 1

    @wrapt.decorator
    def passthrough(wrapped, instance, args, kwargs):  # type: ignore[no-untyped-def]
        return wrapped(*args, **kwargs)

    wrapped_only = passthrough(bare)

    quiet = bg.BudgetGuard(metrics=False)
    quiet.set_budget("1000000", period="monthly")
    quiet.set_budget("1000000", user="alice", period="daily")
    decorated = quiet.budgeted(user="alice", estimate="0.0001", cost=lambda r: "0.0001")(bare)
    decorated_scope_user = quiet.budgeted(estimate="0.0001", cost=lambda r: "0.0001")(bare)

    metered = bg.BudgetGuard(metrics=True)
    metered.set_budget("1000000", period="monthly")
    metered.set_budget("1000000", user="alice", period="daily")
    decorated_metrics = metered.budgeted(user="alice", estimate="0.0001", cost=lambda r: "0.0001")(
        bare
    )

    no_budget = bg.BudgetGuard(metrics=False)
    decorated_no_budget = no_budget.budgeted(user="alice", cost=lambda r: "0.0001")(bare)

    many = bg.BudgetGuard(metrics=False)
    many.set_budget("1000000", period="monthly")
    many.set_default_budget("1000000", period="daily")
    per_user = many.budgeted(user="user", estimate="0.0001", cost=lambda r: "0.0001")(
        lambda user: 1
    )
    one_user = itertools.repeat("alice")
    ten_thousand = itertools.cycle([f"user-{i}" for i in range(10_000)])

    def same_user() -> None:
        per_user(next(one_user))

    def distinct_users() -> None:
        per_user(next(ten_thousand))

    def scoped() -> None:
        with bg.budget_scope("alice"):
            pass

    def scope_call() -> None:
        with bg.budget_scope("alice"):
            decorated_scope_user()

    results = {
        "bare function": per_call_ns(bare, calls),
        "wrapt FunctionWrapper only": per_call_ns(wrapped_only, calls),
        "@budgeted, 2 budgets, metrics off": per_call_ns(decorated, calls),
        "@budgeted, 2 budgets, metrics on (no SDK)": per_call_ns(decorated_metrics, calls),
        "@budgeted, no budget set": per_call_ns(decorated_no_budget, calls),
        "@budgeted, default budget, 1 user": per_call_ns(same_user, calls),
        "@budgeted, default budget, 10,000 users": per_call_ns(distinct_users, calls),
        "budget_scope enter/exit": per_call_ns(scoped, calls),
        "budget_scope + @budgeted call": per_call_ns(scope_call, calls),
    }
    base = results["bare function"]
    print(f"{'case':45} {'ns/call':>10} {'added ns':>10} {'ratio':>8}")
    for name, ns in results.items():
        print(f"{name:45} {ns:10.0f} {ns - base:10.0f} {ns / base:8.1f}")
    assert quiet.spend("alice") > 0  # the calls really charged the ledger


if __name__ == "__main__":
    main()
