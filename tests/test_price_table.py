"""The price table's output limits and dated prices: parsed, validated, applied, shown."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetguard import BudgetGuard, ConfigurationError
from budgetguard.pricing import PriceTable, cost_of, lookup, register_model
from budgetguard.tokens import count_tokens, projected_cost
from budgetguard.usage import Usage

MESSAGES = [{"role": "user", "content": "Say hello to the wide world."}]
CHANGE = datetime(2026, 3, 1, tzinfo=timezone.utc)  # the made-up price change below


def _at(*when: int) -> float:
    return datetime(*when, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


@pytest.fixture(scope="module")
def dated_model() -> str:
    """Register a model whose price rose on 2026-03-01: $2/$8 before, $3/$12 from then on."""
    register_model(
        "bg-test-dated-model",
        input="3",
        output="12",
        max_output_tokens=4000,
        dated=[{"until": "2026-03-01", "input": "2", "output": "8"}],
    )
    return "bg-test-dated-model"


# -- max_output_tokens -------------------------------------------------------------------------


def test_shipped_table_knows_output_limits() -> None:
    """The shipped table carries the vendors' output limits for the common models."""
    for model, limit in (("gpt-4o-mini", 16384), ("claude-haiku-4-5", 64000), ("o3", 100000)):
        price = lookup(model)
        assert price is not None and price.max_output_tokens == limit, model


def test_estimate_above_the_models_limit_counts_the_limit(dated_model: str) -> None:
    """max_tokens above the model's limit is estimated at the limit, per choice."""
    guard = BudgetGuard(metrics=False)
    try:
        asked = {"model": dated_model, "messages": MESSAGES}
        at_limit = guard.estimate_call({**asked, "max_tokens": 4000})
        above = guard.estimate_call({**asked, "max_tokens": 1_000_000})
        two = guard.estimate_call({**asked, "max_tokens": 1_000_000, "n": 2})
        below = guard.estimate_call({**asked, "max_tokens": 100})
    finally:
        guard.close()
    assert at_limit is not None and above is not None and two is not None and below is not None
    assert above == at_limit
    prompt = Decimal(count_tokens(MESSAGES, dated_model))
    output_price = Decimal(12)  # now, the price from 2026-03-01 on
    assert two[0] - above[0] == 4000 * output_price / 1_000_000
    assert below[0] < at_limit[0]
    assert at_limit[0] == (prompt * 3 + 4000 * output_price) / 1_000_000


def test_projected_cost_caps_max_tokens_at_the_limit(dated_model: str) -> None:
    """projected_cost counts at most the model's max_output_tokens (unless told not to)."""
    capped = projected_cost(dated_model, MESSAGES, 1_000_000)
    assert capped == projected_cost(dated_model, MESSAGES, 4000)
    assert projected_cost(dated_model, MESSAGES, 1_000_000, capped=False) > capped


@pytest.mark.parametrize("bad", [0, -5, 1.5, "4096", True])
def test_bad_max_output_tokens_is_refused_and_changes_nothing(bad: object) -> None:
    """A max_output_tokens that is not a positive whole number is refused, naming the field."""
    table = PriceTable()
    table.register("kept", input="1", output="2")
    with pytest.raises(ConfigurationError, match="max_output_tokens"):
        table.load_mapping(
            {
                "kept": {"input": "9", "output": "9"},
                "bad": {"input": "1", "output": "2", "max_output_tokens": bad},
            }
        )
    kept = table.lookup("kept")
    assert kept is not None and kept.input == Decimal(1)  # all or nothing
    assert table.lookup("bad") is None


# -- dated prices ------------------------------------------------------------------------------


def test_dated_price_applies_on_each_side_of_its_change(dated_model: str) -> None:
    """cost_of prices at the prices in force at the instant given."""
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    before = cost_of(usage, dated_model, at=CHANGE.timestamp() - 1)
    on = cost_of(usage, dated_model, at=CHANGE.timestamp())
    assert before.total == Decimal(10)  # 2 + 8
    assert on.total == Decimal(15)  # 3 + 12: `until` is exclusive


def test_guard_charges_the_price_in_force_by_its_clock(clock: Any, dated_model: str) -> None:
    """A guard with a controlled clock charges across the change date at each side's price."""
    guard = BudgetGuard(metrics=False, clock=clock)
    try:
        guard.set_budget("100", user="alice")

        @guard.budgeted(user="alice", estimate="1")
        def chat() -> dict[str, Any]:
            # An OpenAI-shaped response: 1M tokens in and out.
            return {
                "object": "chat.completion",
                "model": dated_model,
                "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000},
            }

        clock.set(datetime(2026, 2, 28, 23, 59, 59, tzinfo=timezone.utc))
        chat()
        assert guard.spend("alice") == Decimal(10)
        clock.set(CHANGE)
        chat()
        assert guard.spend("alice") == Decimal(25)
        # The estimate follows the clock too: the same call costs more from the change on.
        asked = {"model": dated_model, "messages": MESSAGES, "max_tokens": 1000}
        after = guard.estimate_call(asked)
        clock.set(datetime(2026, 2, 1, tzinfo=timezone.utc))
        before = guard.estimate_call(asked)
        assert before is not None and after is not None and before[0] < after[0]
    finally:
        guard.close()


def test_dated_prices_with_since_and_until_pick_their_interval() -> None:
    """Three intervals: before, a bounded promotion, and the entry's own price after it."""
    table = PriceTable()
    table.load_mapping(
        {
            "promo": {
                "input": "1",
                "output": "4",
                "per_request": {"call": "0.5"},
                "dated": [
                    {"until": "2026-01-01", "input": "2"},
                    {"since": "2026-01-01", "until": "2026-02-01T12:00:00+00:00", "input": "0.5"},
                ],
            }
        }
    )
    price = table.lookup("promo")
    assert price is not None
    assert price.at(_at(2025, 12, 31, 23)).input == Decimal(2)
    assert price.at(_at(2026, 1, 15)).input == Decimal("0.5")
    assert price.at(_at(2026, 2, 1, 12)).input == Decimal(1)
    # A dated price names only what changes: the rest is the entry's.
    assert price.at(_at(2026, 1, 15)).output == Decimal(4)
    assert price.at(_at(2026, 1, 15)).per_request["call"] == Decimal("0.5")


@pytest.mark.parametrize(
    ("dated", "message"),
    [
        ([{"input": "2"}], "needs a 'since' or an 'until'"),
        ([{"since": "2026-02-01", "until": "2026-01-01"}], "'since' must come before"),
        ([{"since": "March 2026"}], "must be a date such as"),
        ([{"since": 20260101}], "must be a date string"),
        ([{"until": "2026-02-01"}, {"until": "2026-03-01"}], "overlap"),
        ([{"since": "2026-01-01"}, {"since": "2026-02-01", "until": "2026-03-01"}], "overlap"),
        ([{"until": "2026-01-01", "dated": []}], "cannot hold dated prices"),
        ({"until": "2026-01-01"}, "must be a list"),
        ([{"until": "2026-01-01", "input": "-1"}], "input"),
    ],
)
def test_bad_dated_prices_are_refused_and_change_nothing(dated: Any, message: str) -> None:
    """Malformed dated prices are refused with a message naming the problem."""
    table = PriceTable()
    with pytest.raises(ConfigurationError, match=message):
        table.load_mapping({"m": {"input": "1", "output": "2", "dated": dated}})
    assert table.lookup("m") is None


def test_entry_without_the_new_fields_reads_as_before() -> None:
    """An entry of the older format (no limit, no dates) prices the same at every instant."""
    table = PriceTable()
    table.load_mapping({"old": {"input": "1", "output": "2"}})
    price = table.lookup("old")
    assert price is not None and price.max_output_tokens is None and price.dated == ()
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    early = cost_of(usage, "old", table=table, at=0.0)
    late = cost_of(usage, "old", table=table, at=_at(2030, 1, 1))
    assert early.total == late.total == Decimal(1)


def test_shipped_table_keeps_format_1_and_dates_its_price_changes() -> None:
    """The shipped file stays format 1; a change the source dates is in the entry's dated list."""
    path = Path(__file__).resolve().parent.parent / "budgetguard" / "pricing" / "prices.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == 1
    o3 = lookup("o3")
    assert o3 is not None
    # OpenAI cut o3's price by 80 % on 2025-06-10.
    assert o3.at(_at(2025, 6, 9)).input == Decimal(10)
    assert o3.at(_at(2025, 6, 10)).input == Decimal(2)


# -- the per-call fee --------------------------------------------------------------------------


def test_search_preview_models_charge_a_fee_on_every_call() -> None:
    """gpt-4o(-mini)-search-preview: tokens plus $0.025 for the search every call makes."""
    usage = Usage(input_tokens=1000, output_tokens=500)
    mini = cost_of(usage, "gpt-4o-mini-search-preview-2025-03-11")
    assert mini.model == "gpt-4o-mini-search-preview"
    assert mini.breakdown["call"] == Decimal("0.025")
    assert mini.total == Decimal("0.00045") + Decimal("0.025")
    full = cost_of(usage, "gpt-4o-search-preview")
    assert full.total == Decimal("0.0075") + Decimal("0.025")
    plain = cost_of(usage, "gpt-4o-mini")
    assert "call" not in plain.breakdown and plain.total == Decimal("0.00045")


# -- the CLI -----------------------------------------------------------------------------------


def _prices(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "budgetguard", "prices", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_prices_command_shows_the_limit_the_fee_and_the_dated_prices() -> None:
    """`budgetguard prices` shows max output, a per-call fee and dated prices (text and JSON)."""
    done = _prices("gpt-4o-mini-search-preview")
    assert done.returncode == 0, done.stderr
    assert "every call" in done.stdout and "0.025" in done.stdout
    assert "max output: 16,384 tokens" in done.stdout
    o3 = _prices("o3")
    assert "until 2025-06-10: input / output" in o3.stdout
    data = json.loads(_prices("o3", "--format", "json").stdout)
    assert data["max_output_tokens"] == 100000
    assert data["dated"][0]["until"] == "2025-06-10"
    assert Decimal(data["dated"][0]["input"]) == Decimal(10)
