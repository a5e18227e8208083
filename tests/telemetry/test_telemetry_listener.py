"""Telemetry as a listener, driven directly with events and a stub guard."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import weakref
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from budgetguard import telemetry as telemetry_module
from budgetguard.errors import BudgetExceededError, ConfigurationError, StorageError
from budgetguard.events import BudgetStatus, CallOutcome, ThresholdCrossing
from budgetguard.telemetry import DURATION_BUCKETS, OVERFLOW_USER, TOKEN_BUCKETS, Telemetry
from budgetguard.testing import ExportedMetrics, metrics_reader
from budgetguard.usage import Usage

GPT = {
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.operation.name": "chat",
}


@dataclass
class StubGuard:
    """Stand in for BudgetGuard: only budget_statuses() is needed."""

    statuses: list[BudgetStatus] = field(default_factory=list)
    reads: int = 0

    def budget_statuses(self) -> list[BudgetStatus]:
        """Return the configured statuses and count the reads."""
        self.reads += 1
        return self.statuses


def outcome(
    user: str | None = "alice",
    cost: str = "0.01",
    *,
    usage: object = None,
    error_type: str | None = None,
    priced: bool = True,
    duration: float = 0.5,
) -> CallOutcome:
    """Build the CallOutcome of one gpt-4o chat call."""
    return CallOutcome(
        user=user,
        cost=Decimal(cost),
        duration=duration,
        request_model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        provider="openai",
        operation="chat",
        usage=usage,
        error_type=error_type,
        priced=priced,
    )


def refusal(user: str = "alice") -> BudgetExceededError:
    """Build the error of a call refused by a user's monthly budget."""
    return BudgetExceededError(
        budget=f"user:{user}",
        user=user,
        limit=Decimal(1),
        spent=Decimal(1),
        reserved=Decimal(0),
        requested=Decimal("0.1"),
        period="monthly",
    )


def status(
    name: str, user: str | None, limit: str, spent: str, reserved: str = "0"
) -> BudgetStatus:
    """Build a monthly BudgetStatus."""
    return BudgetStatus(
        name=name,
        user=user,
        period="monthly",
        limit=Decimal(limit),
        spent=Decimal(spent),
        reserved=Decimal(reserved),
        resets_at=None,
    )


@pytest.fixture
def exported() -> ExportedMetrics:
    """Give a private MeterProvider with an in-memory reader."""
    with metrics_reader() as exported:
        yield exported


def test_known_sequence_exports_exact_values(exported: ExportedMetrics) -> None:
    """Spend, tokens, histograms, refusals, unpriced and storage errors match a known sequence."""
    guard = StubGuard()
    tel = Telemetry(guard, meter_provider=exported.meter_provider, user_attribute="raw")
    usage = Usage(
        input_tokens=100,
        cached_input_tokens=50,
        cache_write_5m_tokens=10,
        output_tokens=30,
        reasoning_tokens=20,
    )
    tel.call_ended(outcome("alice", "0.10", usage=usage, duration=0.3))
    tel.call_ended(outcome("alice", "0.20", usage=usage, duration=0.7))
    tel.call_ended(outcome("bob", "0.05", usage=Usage(input_tokens=5, output_tokens=1)))
    tel.call_ended(outcome("bob", "0.02", error_type="APITimeoutError", duration=3.0))
    tel.call_ended(outcome("bob", "0.03", priced=False))
    tel.call_refused(refusal("alice"), user="alice", request_model="gpt-4o")
    tel.storage_failed(StorageError("down"), policy="fail_open")

    alice = {**GPT, "user.id": "alice"}
    bob = {**GPT, "user.id": "bob"}
    assert exported.value("budgetguard.spend", alice) == pytest.approx(0.30)
    assert exported.value("budgetguard.spend", bob) == pytest.approx(0.10)
    assert len(exported.points("budgetguard.spend")) == 2
    assert exported.unit("budgetguard.spend") == "USD"
    tokens = {
        kind: exported.value("budgetguard.tokens", {**alice, "budgetguard.token.kind": kind})
        for kind in ("input", "cached_input", "cache_write", "output", "reasoning")
    }
    assert tokens == {
        "input": 200,
        "cached_input": 100,
        "cache_write": 20,
        "output": 60,
        "reasoning": 40,
    }

    # gen_ai.client.token.usage counts every input and output token, per call.
    inputs = exported.points("gen_ai.client.token.usage", {"gen_ai.token.type": "input"})
    assert [(p.count, p.sum) for p in inputs] == [(3, 160 + 160 + 5)]
    assert tuple(inputs[0].explicit_bounds) == TOKEN_BUCKETS
    assert inputs[0].attributes == {**GPT, "gen_ai.token.type": "input"}  # never the user
    assert exported.value("gen_ai.client.token.usage", {"gen_ai.token.type": "output"}) == 101

    ok = exported.points("gen_ai.client.operation.duration", {"error.type": None})
    assert [(p.count, p.sum) for p in ok] == [(4, pytest.approx(0.3 + 0.7 + 0.5 + 0.5))]
    assert tuple(ok[0].explicit_bounds) == DURATION_BUCKETS
    failed = exported.points("gen_ai.client.operation.duration", {"error.type": "APITimeoutError"})
    assert [(p.count, p.sum) for p in failed] == [(1, 3.0)]

    (refused,) = exported.points("budgetguard.refusals")
    assert dict(refused.attributes) == {
        "budgetguard.budget": "user",
        "budgetguard.period": "monthly",
        "user.id": "alice",
        "gen_ai.request.model": "gpt-4o",
    }
    assert refused.value == 1
    (unpriced,) = exported.points("budgetguard.unpriced")
    assert dict(unpriced.attributes) == {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
    }
    assert unpriced.value == 1
    (storage,) = exported.points("budgetguard.storage_errors")
    assert dict(storage.attributes) == {
        "budgetguard.policy": "fail_open",
        "error.type": "StorageError",
    }


def test_counters_are_cumulative_across_collections(exported: ExportedMetrics) -> None:
    """A second collection reports the running total, and queued histograms are not doubled."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    tel.call_ended(outcome(cost="0.25"))
    assert exported.value("budgetguard.spend") == 0.25
    tel.call_ended(outcome(cost="0.50"))
    assert exported.value("budgetguard.spend") == 0.75
    assert exported.count("gen_ai.client.operation.duration") == 2


def test_user_attribute_is_off_by_default(exported: ExportedMetrics) -> None:
    """Without user_attribute no series carries a user, and users share one series."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    tel.call_ended(outcome("alice", "0.1"))
    tel.call_ended(outcome("bob", "0.2"))
    (point,) = exported.points("budgetguard.spend")
    assert dict(point.attributes) == GPT
    assert point.value == pytest.approx(0.3)


def test_cardinality_cap_folds_extra_users_into_overflow(exported: ExportedMetrics) -> None:
    """Past max_users, users share the overflow value and no spend is lost."""
    tel = Telemetry(
        StubGuard(), meter_provider=exported.meter_provider, user_attribute="raw", max_users=3
    )
    for i in range(1000):
        tel.call_ended(outcome(f"user{i}", "0.001"))
    users = sorted(str(p.attributes["user.id"]) for p in exported.points("budgetguard.spend"))
    assert users == [OVERFLOW_USER, "user0", "user1", "user2"]
    assert exported.value("budgetguard.spend", {"user.id": OVERFLOW_USER}) == pytest.approx(0.997)
    assert exported.value("budgetguard.spend") == pytest.approx(1.0)
    # A user seen before the cap keeps its own series.
    tel.call_ended(outcome("user1", "1"))
    assert exported.value("budgetguard.spend", {"user.id": "user1"}) == pytest.approx(1.001)


def test_hashed_users_are_salted_and_stable() -> None:
    """Hashed mode exports a truncated keyed hash: stable per salt, never the raw id."""
    values = []
    for salt in ("s1", "s1", "s2"):
        with metrics_reader() as exported:
            tel = Telemetry(
                StubGuard(),
                meter_provider=exported.meter_provider,
                user_attribute="hashed",
                user_salt=salt,
            )
            tel.call_ended(outcome("alice@example.com"))
            (point,) = exported.points("budgetguard.spend")
            assert "user.id" not in point.attributes
            values.append(point.attributes["user.hash"])
    assert values[0] == values[1] != values[2]
    assert len(values[0]) == 16 and int(values[0], 16) >= 0
    assert "alice" not in values[0]


def test_hashed_users_need_a_salt() -> None:
    """Asking for hashed users without a salt is a configuration error."""
    with pytest.raises(ConfigurationError, match="user_salt"):
        Telemetry(StubGuard(), user_attribute="hashed")


@pytest.mark.parametrize(
    "options",
    [
        {"user_attribute": "plain"},
        {"max_users": -1},
        {"max_users": True},
        {"max_models": -1},
        {"tag_keys": "team"},
    ],
)
def test_bad_options_are_rejected(options: dict[str, object]) -> None:
    """Unknown user modes and negative caps raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Telemetry(StubGuard(), **options)  # type: ignore[arg-type]


def test_budget_gauges_read_the_guard_once_per_collection(exported: ExportedMetrics) -> None:
    """The four budget gauges come from one budget_statuses() read per collection."""
    guard = StubGuard(
        [
            status("global", None, "100", "40", "5"),
            status("user:alice", "alice", "10", "4", "1"),
            status("user:bob", "bob", "10", "12"),
        ]
    )
    tel = Telemetry(guard, meter_provider=exported.meter_provider, user_attribute="raw")
    alice = {"budgetguard.budget": "user", "budgetguard.period": "monthly", "user.id": "alice"}
    exported.reader.get_metrics_data()
    assert guard.reads == 1
    assert exported.value("budgetguard.budget.limit", alice) == 10
    assert exported.value("budgetguard.budget.spent", alice) == 4
    assert exported.value("budgetguard.budget.reserved", alice) == 1
    assert exported.value("budgetguard.budget.remaining", alice) == 5
    assert exported.value("budgetguard.budget.remaining", {"user.id": "bob"}) == 0
    assert exported.value("budgetguard.budget.remaining", {"budgetguard.budget": "global"}) == 55
    assert guard.reads == 7  # one per collection: each value() collects
    guard.statuses[0] = status("global", None, "100", "50")
    assert exported.value("budgetguard.budget.spent", {"budgetguard.budget": "global"}) == 50
    assert repr(tel).startswith("Telemetry(")


def test_budget_gauges_never_sum_user_budgets(exported: ExportedMetrics) -> None:
    """With the user attribute off, a $1 and a $5 user budget give no summed $6 series."""
    guard = StubGuard(
        [
            status("global", None, "100", "7"),
            status("user:alice", "alice", "1", "0.5"),
            status("user:bob", "bob", "5", "1"),
        ]
    )
    tel = Telemetry(guard, meter_provider=exported.meter_provider)
    (point,) = exported.points("budgetguard.budget.limit")
    assert dict(point.attributes) == {
        "budgetguard.budget": "global",
        "budgetguard.period": "monthly",
        "budgetguard.unit": "usd",
        "budgetguard.mode": "hard",
    }
    assert point.value == 100
    assert tel.user_attribute == "off"


def test_budget_gauges_of_users_past_the_cap_are_left_out(exported: ExportedMetrics) -> None:
    """Users past max_users share no budget gauge; users under it keep their own."""
    guard = StubGuard(
        [status("user:alice", "alice", "1", "0"), status("user:bob", "bob", "5", "0")]
    )
    tel = Telemetry(
        guard, meter_provider=exported.meter_provider, user_attribute="raw", max_users=1
    )
    points = exported.points("budgetguard.budget.limit")
    assert [(dict(p.attributes)["user.id"], p.value) for p in points] == [("alice", 1)]
    assert tel.user_attribute == "raw"


def test_model_names_are_capped(exported: ExportedMetrics) -> None:
    """Past max_models distinct models, calls are counted under the model _other."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider, max_models=2)
    for index in range(50):
        tel.call_ended(CallOutcome(None, Decimal("0.01"), 0.1, request_model=f"ft:model-{index}"))
    values = {
        dict(p.attributes)["gen_ai.request.model"]: p.value
        for p in exported.points("budgetguard.spend")
    }
    assert values == pytest.approx({"ft:model-0": 0.01, "ft:model-1": 0.01, "_other": 0.48})


def call_to(model: str, cost: str = "0.01", usage: object = None) -> CallOutcome:
    """Build the CallOutcome of one call to ``model``."""
    return CallOutcome(None, Decimal(cost), 0.1, request_model=model, usage=usage)


def spend_by_model(exported: ExportedMetrics) -> dict[str, float]:
    """Return the exported spend of each request model."""
    return {
        str(p.attributes["gen_ai.request.model"]): round(p.value, 6)
        for p in exported.points("budgetguard.spend")
    }


def test_a_model_seen_most_takes_a_place_from_one_seen_least(exported: ExportedMetrics) -> None:
    """Past the cap, a model seen more than twice as often as a named one is named instead."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider, max_models=2)
    tel.call_ended(call_to("ft:once-a"))
    tel.call_ended(call_to("ft:once-b"))
    for _ in range(2):
        tel.call_ended(call_to("gpt-4o"))
    assert spend_by_model(exported) == {"ft:once-a": 0.01, "ft:once-b": 0.01, "_other": 0.02}
    for _ in range(8):  # the third call is named; once-a, the first least seen, gives way
        tel.call_ended(call_to("gpt-4o"))
    # Every series only grew: gpt-4o's starts when it is named, once-a's ends.
    assert spend_by_model(exported) == {"ft:once-b": 0.01, "gpt-4o": 0.08, "_other": 0.02}
    tel.call_ended(call_to("ft:once-a"))
    assert spend_by_model(exported) == {"ft:once-b": 0.01, "gpt-4o": 0.08, "_other": 0.03}


def test_twenty_thousand_models_keep_the_top_ones_and_few_series(
    exported: ExportedMetrics,
) -> None:
    """20,000 one-off names, then two busy models too: the busy two are named, series stay few."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider, max_models=5)
    usage = Usage(input_tokens=10, output_tokens=5)
    for index in range(20_000):
        tel.call_ended(call_to(f"ft:one-off-{index}", "0.001", usage))
        if index >= 100 and index % 10 == 0:  # the places are long taken by one-offs
            tel.call_ended(call_to("gpt-4o", "0.001", usage))
            tel.call_ended(call_to("claude-sonnet-4-5", "0.001", usage))
        if index % 1000 == 999:
            exported.points("budgetguard.spend")  # a reader collects now and then
    spend = spend_by_model(exported)
    named = {f"ft:one-off-{index}" for index in (2, 3, 4)} | {"gpt-4o", "claude-sonnet-4-5"}
    assert set(spend) == named | {"_other"}
    assert spend["gpt-4o"] == spend["claude-sonnet-4-5"] == pytest.approx(1.988)
    # The histograms also keep the two one-offs the busy models displaced.
    histogram = exported.points("gen_ai.client.token.usage")
    models = {str(p.attributes["gen_ai.request.model"]) for p in histogram}
    assert models == set(spend) | {"ft:one-off-0", "ft:one-off-1"}


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "azure/gpt-4o", "azure.ai.openai"),
        ("litellm", "bedrock/anthropic.claude-3", "aws.bedrock"),
        ("azure", "my-deployment", "azure.ai.openai"),
        ("openai", "gpt-4o", "openai"),
    ],
)
def test_providers_use_the_registry_names(
    exported: ExportedMetrics, provider: str, model: str, expected: str
) -> None:
    """Azure OpenAI, Bedrock and others are named as the conventions' registry names them."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    tel.call_ended(CallOutcome(None, Decimal("0.01"), 0.1, request_model=model, provider=provider))
    (point,) = exported.points("budgetguard.spend")
    assert point.attributes["gen_ai.provider.name"] == expected


def test_only_listed_tags_reach_the_metrics(exported: ExportedMetrics) -> None:
    """Tags whose keys are listed in tag_keys are exported; other tags are not."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider, tag_keys=["team"])
    tags = {"team": "search", "request_id": "r-123"}
    tel.call_ended(CallOutcome(None, Decimal("0.25"), 0.1, tags=tags))
    (point,) = exported.points("budgetguard.spend")
    assert dict(point.attributes) == {"budgetguard.tag.team": "search"}
    assert point.value == 0.25


def test_tag_values_are_capped(exported: ExportedMetrics) -> None:
    """Past max_tag_values distinct values, a tag reads _other."""
    tel = Telemetry(
        StubGuard(), meter_provider=exported.meter_provider, tag_keys=["team"], max_tag_values=1
    )
    for team in ("search", "ads", "maps"):
        tel.call_ended(CallOutcome(None, Decimal("1"), 0.1, tags={"team": team}))
    values = {
        p.attributes["budgetguard.tag.team"]: p.value for p in exported.points("budgetguard.spend")
    }
    assert values == {"search": 1, "_other": 2}


def test_failing_ledger_read_drops_gauges_only(exported: ExportedMetrics) -> None:
    """A ledger failure at collection time leaves the gauges out and the counters in."""

    class Broken:
        def budget_statuses(self) -> list[BudgetStatus]:
            raise StorageError("redis is down")

    tel = Telemetry(Broken(), meter_provider=exported.meter_provider)
    tel.call_ended(outcome(cost="0.5"))
    assert exported.points("budgetguard.budget.limit") == []
    assert exported.value("budgetguard.spend") == 0.5


def test_threshold_crossings_are_counted(exported: ExportedMetrics) -> None:
    """Each crossing the guard reports adds one alert with its budget, period and threshold."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider, user_attribute="raw")
    for fraction in ("0.5", "0.8"):
        tel.threshold_crossed(
            ThresholdCrossing(
                budget="user:alice",
                user="alice",
                period="monthly",
                fraction=Decimal(fraction),
                limit=Decimal(10),
                spent=Decimal(9),
                window="2026-11",
            )
        )
    tel.threshold_crossed(
        ThresholdCrossing(
            budget="global",
            user=None,
            period="daily",
            fraction=Decimal("0.5"),
            limit=Decimal(100),
            spent=Decimal(60),
            window="2026-11-28",
        )
    )
    assert exported.value("budgetguard.alerts") == 3
    assert exported.value("budgetguard.alerts", {"budgetguard.threshold": "0.8"}) == 1
    (point,) = exported.points("budgetguard.alerts", {"budgetguard.budget": "global"})
    assert dict(point.attributes) == {
        "budgetguard.budget": "global",
        "budgetguard.period": "daily",
        "budgetguard.threshold": "0.5",
    }


def test_two_telemetries_on_one_provider_are_summed(exported: ExportedMetrics) -> None:
    """Two guards on one MeterProvider both report: counters add up, budgets stay apart."""
    guards = [
        StubGuard([status("global", None, "10", "1")]),
        StubGuard([status("global", None, "20", "2")]),
    ]
    first, second = (Telemetry(g, meter_provider=exported.meter_provider) for g in guards)
    first.call_ended(outcome(cost="0.1"))
    second.call_ended(outcome(cost="0.2"))
    second.call_refused(refusal(), user="alice", request_model=None)
    (spend,) = exported.points("budgetguard.spend")
    assert spend.value == pytest.approx(0.3)
    # Two guards' global budgets are two budgets: never one series of $30.
    limits = sorted(
        (p.value, p.attributes["budgetguard.ledger"])
        for p in exported.points("budgetguard.budget.limit")
    )
    assert [value for value, _ in limits] == [10, 20]
    assert limits[0][1] != limits[1][1]
    assert exported.value("budgetguard.refusals") == 1
    assert exported.count("gen_ai.client.operation.duration") == 2
    second.shutdown()
    (limit,) = exported.points("budgetguard.budget.limit")
    assert limit.value == 10
    assert "budgetguard.ledger" not in limit.attributes
    assert exported.value("budgetguard.spend") == pytest.approx(0.1)


def test_two_providers_are_independent() -> None:
    """Telemetries on separate MeterProviders never see each other's calls."""
    with metrics_reader() as one, metrics_reader() as two:
        guard = StubGuard()
        first = Telemetry(guard, meter_provider=one.meter_provider)
        second = Telemetry(guard, meter_provider=two.meter_provider)
        first.call_ended(outcome(cost="1"))
        second.call_ended(outcome(cost="2"))
        assert one.value("budgetguard.spend") == 1
        assert two.value("budgetguard.spend") == 2


def test_aggregate_modes_must_agree_on_one_provider(exported: ExportedMetrics) -> None:
    """A direct-mode Telemetry cannot join an aggregated one on the same provider."""
    first = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    assert repr(first) == "Telemetry(user_attribute='off', aggregate=True, closed=False)"
    with pytest.raises(ConfigurationError, match="aggregate"):
        Telemetry(StubGuard(), meter_provider=exported.meter_provider, aggregate=False)


def test_direct_mode_exports_the_same_data() -> None:
    """aggregate=False records on the caller's thread and exports the same values."""
    results = []
    for aggregate in (True, False):
        with metrics_reader() as exported:
            tel = Telemetry(
                StubGuard(),
                meter_provider=exported.meter_provider,
                user_attribute="raw",
                aggregate=aggregate,
            )
            tel.call_ended(outcome("alice", "0.25", usage=Usage(input_tokens=7, output_tokens=3)))
            tel.call_ended(outcome("bob", "0.5", error_type="KeyError", priced=False))
            results.append(
                {
                    name: sorted(
                        (tuple(sorted(p.attributes.items())), exported.value(name, p.attributes))
                        for p in exported.points(name)
                    )
                    for name in exported.names()
                }
            )
    assert results[0] == results[1]
    assert set(results[0]) >= {"budgetguard.spend", "budgetguard.tokens", "budgetguard.unpriced"}


def test_shutdown_flushes_and_stops_reporting(exported: ExportedMetrics) -> None:
    """After shutdown the queued histograms are recorded and the counters disappear."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    tel.call_ended(outcome(cost="0.5"))
    tel.shutdown()
    tel.call_ended(outcome(cost="0.5"))
    assert exported.count("gen_ai.client.operation.duration") == 1
    assert exported.points("budgetguard.spend") == []


def test_queue_is_bounded_when_nothing_collects(
    exported: ExportedMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the queue bound, calls record their histograms directly; none is lost."""
    monkeypatch.setattr(telemetry_module, "_MAX_PENDING", 10)
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    for _ in range(25):
        tel.call_ended(outcome())
    assert len(tel._pending) == 10
    assert exported.count("gen_ai.client.operation.duration") == 25
    assert list(tel._pending) == []


def test_duck_typed_usage_and_missing_attributes(exported: ExportedMetrics) -> None:
    """Any object with Usage's fields works; unknown model fields are left out, not None."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    usage = SimpleNamespace(input_tokens=3, output_tokens=4, model="claude-x", provider="anthropic")
    tel.call_ended(CallOutcome(user=None, cost=Decimal("0.1"), duration=0.1, usage=usage))
    (point,) = exported.points("budgetguard.spend")
    assert dict(point.attributes) == {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.response.model": "claude-x",
    }
    assert exported.value("budgetguard.tokens", {"budgetguard.token.kind": "output"}) == 4


def test_listener_never_raises(exported: ExportedMetrics, caplog: pytest.LogCaptureFixture) -> None:
    """A malformed event is logged, not raised, and costs no other call its figures."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    tel.call_ended(CallOutcome(user=None, cost=None, duration=0.1))  # type: ignore[arg-type]
    tel.call_ended(outcome(cost="0.5"))
    tel.call_refused(None, user=None, request_model=None)  # type: ignore[arg-type]
    assert exported.value("budgetguard.spend") == 0.5
    assert "failed to record a call" in caplog.text
    assert "failed to record a refusal" in caplog.text


def test_queue_without_sdk_is_dropped_not_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a no-op provider a full queue starts afresh: bounded memory, no recording work."""
    monkeypatch.setattr(telemetry_module, "_MAX_PENDING", 10)
    tel = Telemetry(StubGuard(), meter_provider=NoOpMeterProvider())
    for _ in range(25):
        tel.call_ended(outcome())
    assert len(tel._pending) == 5
    assert tel._spend == {}


def test_concurrent_calls_sum_exactly(exported: ExportedMetrics) -> None:
    """Eight threads recording at once lose no call and no cent."""
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider, user_attribute="raw")

    def work(n: int) -> None:
        for _ in range(2000):
            tel.call_ended(outcome(f"user{n}", "0.000001", usage=Usage(input_tokens=1)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(20):  # collect while the threads record
        exported.reader.get_metrics_data()
    for thread in threads:
        thread.join()
    assert exported.value("budgetguard.spend") == pytest.approx(0.016)
    assert sum(tel._spend.values()) == Decimal("0.016")  # exact, once drained
    assert exported.count("gen_ai.client.operation.duration") == 16000
    assert exported.value("budgetguard.tokens") == 16000


def test_meter_made_before_the_global_provider_reports_after() -> None:
    """Instruments from the API's proxy meter report once the app sets its global provider."""
    script = textwrap.dedent(
        """
        from decimal import Decimal
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from budgetguard.events import CallOutcome
        from budgetguard.telemetry import Telemetry

        class Guard:
            def budget_statuses(self):
                return []

        guard = Guard()
        tel = Telemetry(guard)  # no SDK yet: the API's proxy
        tel.call_ended(CallOutcome(user=None, cost=Decimal("0.25"), duration=0.1))
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        tel.call_ended(CallOutcome(user=None, cost=Decimal("0.5"), duration=0.1))
        found = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        found[m.name] = getattr(p, "value", None) or p.count
        print(found["budgetguard.spend"], found["gen_ai.client.operation.duration"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    # Spend is an in-process total, so the call made before the SDK counts too.
    assert result.stdout.split() == ["0.75", "2"]


def test_dropped_provider_and_telemetry_are_released() -> None:
    """Neither the instruments cache nor a live Telemetry keeps a dropped provider alive."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    guard = StubGuard()
    tel = Telemetry(guard, meter_provider=provider)
    provider_ref, tel_ref = weakref.ref(provider), weakref.ref(tel)
    provider.shutdown()
    del provider, reader, tel
    gc.collect()
    assert provider_ref() is None
    assert tel_ref() is None


def test_latest_conventions_count_tokens_by_modality(
    exported: ExportedMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the GenAI opt-in, inference usage counters replace the token histogram."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    usage = Usage(input_tokens=700, cached_input_tokens=300, output_tokens=80, reasoning_tokens=20)
    tel.call_ended(outcome(usage=usage))
    text = {**GPT, "gen_ai.token.modality": "text"}
    prefix = "gen_ai.client.inference.usage"
    assert exported.value(f"{prefix}.input_tokens", text) == 1000
    assert exported.value(f"{prefix}.cache_read.input_tokens", text) == 300
    assert exported.value(f"{prefix}.output_tokens", text) == 100
    assert exported.value(f"{prefix}.reasoning.output_tokens", text) == 20
    assert "gen_ai.client.token.usage" not in exported.names()


@pytest.mark.parametrize("opt_in", ["", "http", "gen_ai_latest_experimental_not"])
def test_released_conventions_without_the_opt_in(
    exported: ExportedMetrics, monkeypatch: pytest.MonkeyPatch, opt_in: str
) -> None:
    """Without gen_ai_latest_experimental listed, the released token histogram is exported alone."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    tel = Telemetry(StubGuard(), meter_provider=exported.meter_provider)
    tel.call_ended(outcome(usage=Usage(input_tokens=700, output_tokens=80)))
    assert exported.value("gen_ai.client.token.usage", {"gen_ai.token.type": "input"}) == 700
    assert not [name for name in exported.names() if name.startswith("gen_ai.client.inference")]
