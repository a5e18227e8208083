"""Export spend, tokens, budgets and refusals as OpenTelemetry metrics.

budgetguard depends on ``opentelemetry-api`` only. With no SDK configured every
instrument is a no-op; with one, the user's own readers and exporters receive
the instruments below, on a meter named ``budgetguard``:

- ``budgetguard.spend`` (USD, counter): money spent by this process, by
  ``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.response.model``,
  ``gen_ai.operation.name`` and the user where enabled;
- ``budgetguard.tokens`` (counter): the same, and ``budgetguard.token.kind``
  (input, cached_input, cache_write, output, reasoning, audio and image kinds);
- ``gen_ai.client.token.usage`` (histogram, ``{token}``): per call, by the
  gen_ai attributes and ``gen_ai.token.type`` (input / output), with the
  semantic conventions' bucket boundaries; never by user (a histogram series
  is some 16 series in a backend);
  with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` the draft
  counters ``gen_ai.client.inference.usage.input_tokens``, ``.output_tokens``,
  ``.cache_read.input_tokens``, ``.cache_write.input_tokens`` and
  ``.reasoning.output_tokens`` (by ``gen_ai.token.modality``) replace it;
- ``gen_ai.client.operation.duration`` (histogram, s): the gen_ai attributes
  and ``error.type`` for calls that failed;
- ``budgetguard.budget.limit`` / ``.spent`` / ``.reserved`` / ``.remaining``
  (USD, gauges read from the ledger when a reader collects), for dollar
  budgets: by ``budgetguard.budget`` (``global``, ``user``, ``daily@user``,
  ``default``, ``tag:team=search``, ``model:gpt-5*`` ...),
  ``budgetguard.period``, ``budgetguard.unit``, ``budgetguard.mode`` and user;
- ``budgetguard.quota.limit`` / ``.used`` / ``.reserved`` / ``.remaining``
  (``{count}``, gauges): the same for budgets counted in tokens, requests or
  calls in flight, ``budgetguard.unit`` saying which;
- ``budgetguard.budget.over`` (``{call}``, gauge): calls a soft or shadow
  budget had no room for in its current window (it let them run);
- ``budgetguard.refusals``, ``budgetguard.unpriced``, ``budgetguard.alerts``,
  ``budgetguard.storage_errors`` (counters);
- ``budgetguard.outbox.size`` (gauge, charges) and ``budgetguard.outbox.dropped``
  (counter, charges): settles the ledger could not take, waiting in this
  process to be written again, and those dropped because the outbox was full.

Model names are bounded too: the ``max_models`` request and response models
seen most keep their names, every other one is ``"_other"``. The first ones
seen take the places; a model later seen more than twice as often as the
least seen named one takes that one's place: the displaced model's series
end, its later calls count under ``_other``, and the newcomer's series start
then (its earlier calls stay in ``_other``), so no cumulative series ever
goes down. Histograms (and, with ``aggregate=False``, every instrument) keep
the series they recorded, so they can hold a few more model names than
``max_models`` over a long run.
Providers are named as in the conventions' registry (``azure.ai.openai`` for
Azure OpenAI, ``aws.bedrock``, ``gcp.gemini``, ...). Scope tags are exported,
as ``budgetguard.tag.<key>``, only for the keys listed in ``tag_keys``, each
with at most ``max_tag_values`` distinct values.

A budget gauge never sums unrelated budgets: one series is one budget. The
``budgetguard.budget`` attribute is the budget's name with any user id taken
out (``user:alice`` is ``user``, ``daily@user:alice`` is ``daily@user``);
budgets of other subjects keep their whole name, since administrators set
them and they are few. A per-user budget is exported only with its own user
value, so with the user attribute off (or for users past the cap) per-user
budgets have no gauge at all. Default budgets and per-value tag budgets
(``tag:tenant=*``) have one window per user or value and no gauge. So the
budget series number the budgets set for subjects other than users, plus
at most ``max_users`` per labelled user budget. Refusals and alerts name
budgets the same way (a per-value budget by its ``=*`` name). Guards that
share one MeterProvider never add their budget gauges together either: guards
on one shared ledger report its budgets once, and where guards on different
ledgers report budgets of the same name, each series carries
``budgetguard.ledger`` (the ledger's URL without password; ``memory://#<n>``
for a guard's own memory ledger).

The user attribute is ``user.id`` (``user_attribute="raw"``) or ``user.hash``
(``"hashed"``: HMAC-SHA256 with a salt, truncated), and absent by default. At
most ``max_users`` distinct users get their own value; the rest share
``"_other"``, so a million users cannot blow up a metrics backend.

The hot path: an SDK ``Counter.add`` or ``Histogram.record`` costs several
microseconds, and a call feeds about eight instruments. So by default
(``aggregate=True``) ``call_ended`` only appends the (frozen) outcome to a
queue under a lock, about 0.3 µs with or without an SDK. When a reader
collects, the first callback drains the queue: spend and tokens are summed per
attribute set in process (spend exactly, in ``Decimal``) and published
through observable counters, and the histogram measurements are recorded then,
on the collecting thread. The queue is bounded: with no SDK behind the
instruments a full queue is dropped (a direct call on the no-op API would be
lost too); with an SDK that has not collected for that long, the call is
handled on the caller's thread instead. Histograms recorded at collection time
carry no trace exemplars; ``aggregate=False`` records everything on the
caller's thread, exemplars included, at several times the cost.
``benchmarks/telemetry.py`` has the figures.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import itertools
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from operator import attrgetter, methodcaller
from typing import TYPE_CHECKING, Any, Literal, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    NoOpMeterProvider,
    Observation,
)

from ._spans import Spans
from ._spans import latest_conventions as _latest_conventions
from .errors import ConfigurationError
from .events import BudgetStatus, CallOutcome, ThresholdCrossing
from .money import MONEY
from .scope import current_scope

if TYPE_CHECKING:
    from .errors import BudgetExceededError

__all__ = [
    "DURATION_BUCKETS",
    "OVERFLOW_USER",
    "OVERFLOW_VALUE",
    "TOKEN_BUCKETS",
    "Spans",
    "StatusSource",
    "Telemetry",
    "UserAttribute",
]

_log = logging.getLogger(__name__)

UserAttribute = Literal["off", "raw", "hashed"]

#: The user value shared by every user past ``max_users``.
OVERFLOW_USER = "_other"

#: The model (or tag) value shared by every name past the cap.
OVERFLOW_VALUE = "_other"

# Provider names budgetguard or LiteLLM use, as the GenAI conventions' registry spells them.
_REGISTRY_PROVIDERS = {
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "xai": "x_ai",
}
# Model prefixes (LiteLLM's routing names) that say who served an OpenAI-shaped call.
_PROVIDER_BY_MODEL_PREFIX = (
    ("azure/", "azure.ai.openai"),
    ("azure_ai/", "azure.ai.inference"),
    ("bedrock/", "aws.bedrock"),
    ("vertex_ai/", "gcp.vertex_ai"),
    ("gemini/", "gcp.gemini"),
)

#: Bucket boundaries the GenAI semantic conventions give ``gen_ai.client.token.usage``.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip

#: Bucket boundaries the GenAI semantic conventions give ``gen_ai.client.operation.duration``.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip

# Queued histogram measurements per Telemetry before calls record directly
# again: bounds memory when nothing ever collects (no SDK, or no reader).
_MAX_PENDING = 16384

# A snapshot of budget statuses older than this is never reused by a gauge.
_SNAPSHOT_MAX_AGE = 5.0

# Usage fields, in the order of ``_TOKEN_KINDS``; several fields can share a kind.
_TOKEN_FIELDS = (
    ("input_tokens", "input"),
    ("cached_input_tokens", "cached_input"),
    ("cache_write_5m_tokens", "cache_write"),
    ("cache_write_1h_tokens", "cache_write"),
    ("output_tokens", "output"),
    ("reasoning_tokens", "reasoning"),
    ("input_audio_tokens", "input_audio"),
    ("output_audio_tokens", "output_audio"),
    ("input_image_tokens", "input_image"),
)
_read_counts = attrgetter(*(name for name, _ in _TOKEN_FIELDS))
# Which fields are input and which output for gen_ai.client.token.usage, which
# counts every billable token (cached and reasoning ones included).
_IS_INPUT = tuple(
    kind in ("input", "cached_input", "cache_write", "input_audio", "input_image")
    for _, kind in _TOKEN_FIELDS
)

_ZERO = Decimal(0)

# The draft GenAI token counters (semantic-conventions-genai, not yet released),
# and the counters and modality each budgetguard token kind adds to. Input and
# output counts include their cached, cache-write and reasoning parts.
_INFERENCE_COUNTERS = (
    "gen_ai.client.inference.usage.input_tokens",
    "gen_ai.client.inference.usage.output_tokens",
    "gen_ai.client.inference.usage.cache_read.input_tokens",
    "gen_ai.client.inference.usage.cache_write.input_tokens",
    "gen_ai.client.inference.usage.reasoning.output_tokens",
)
_IN, _OUT, _CACHE_READ, _CACHE_WRITE, _REASONING = _INFERENCE_COUNTERS
_INFERENCE_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "input": ((_IN, "text"),),
    "cached_input": ((_IN, "text"), (_CACHE_READ, "text")),
    "cache_write": ((_IN, "text"), (_CACHE_WRITE, "text")),
    "input_audio": ((_IN, "audio"),),
    "input_image": ((_IN, "image"),),
    "output": ((_OUT, "text"),),
    "reasoning": ((_OUT, "text"), (_REASONING, "text")),
    "output_audio": ((_OUT, "audio"),),
}

AttributeValue = str | bool | int | float
Attributes = dict[str, AttributeValue]
# (provider, request model, response model, operation)
_ModelKey = tuple[str | None, str | None, str | None, str | None]
# (attribute name, value) of the user attribute, or None where it is off
_UserLabel = tuple[str, str] | None
# Exported tags: ((attribute name, value), ...) in tag_keys order
_TagItems = tuple[tuple[str, str], ...]
_CallKey = tuple[_ModelKey, _UserLabel, _TagItems]
# Attributes as a hashable key: ((name, value), ...)
_Items = tuple[tuple[str, AttributeValue], ...]

_MODEL_ATTRIBUTES = (
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.operation.name",
)


class StatusSource(Protocol):
    """What Telemetry needs from a guard: its budgets' current state."""

    def budget_statuses(self) -> list[BudgetStatus]:
        """Return every defined budget's current window, read from the ledger."""
        ...


def _version() -> str:
    # Read at construction time, not import time: budgetguard/__init__.py
    # imports the guard, which imports this module.
    version = getattr(sys.modules.get("budgetguard"), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        from ._dist import DISTRIBUTION

        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source checkout
        return ""


_SUBJECTS = ("tag:", "model:", "provider:")


def _budget_kind(name: str) -> str:
    """Return a budget's name without the user id it may embed ("user:alice" -> "user").

    The guard names budgets "global", "user:<id>", "daily@user:<id>",
    "tag:team=search", "default (user:<id>)", "tag:tenant=* (tag:tenant=acme)",
    "scope"; what follows " (" names the concrete subject, which is left out
    (users and tag values are unbounded). The user is exported separately,
    under the user_attribute policy. Other subjects keep their whole name.
    """
    name = name.split(" (", 1)[0]
    if name.startswith("user:"):
        return "user"
    if name.startswith(_SUBJECTS):
        return name
    label, at, subject = name.partition("@")
    if at and subject.startswith("user:"):
        return f"{label}@user"
    return name


def _model_items(model: _ModelKey) -> _Items:
    """Return the gen_ai.* attributes of a call, leaving out unknown ones (None is not allowed)."""
    return tuple(
        (name, value)
        for name, value in zip(_MODEL_ATTRIBUTES, model, strict=True)
        if value is not None
    )


def provider_name(provider: str | None, model: str | None = None) -> str | None:
    """Return the conventions' registry name of the provider that served ``model``."""
    if model is not None and (provider is None or provider in ("openai", "litellm")):
        for prefix, name in _PROVIDER_BY_MODEL_PREFIX:
            if model.startswith(prefix):
                return name
    if provider is None:
        return None
    return _REGISTRY_PROVIDERS.get(provider, provider)


class _Capped:
    """Keep the first ``limit`` distinct values of an attribute; map later ones to _other."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str | None:
        if value is None:
            return None
        known = self._values.get(value)
        if known is not None:
            return known
        with self._lock:
            if len(self._values) >= self._limit:
                return self._values.get(value, OVERFLOW_VALUE)
            return self._values.setdefault(value, value)


class _TopNames:
    """Name the ``limit`` values of an attribute seen most; map the others to _other.

    The first ``limit`` distinct values take the places. From then on every
    other value is counted too (at most ``4 * limit + 16`` of them: when that
    many are counted, the less seen half is forgotten, so memory stays
    bounded), and one seen more than twice as often as the least seen named
    value takes its place. Counts only grow, so each change needs a newcomer
    to double the count it displaces: a few changes in a process's life, no
    flapping between two values. A displaced value is listed in ``retired``
    for the Telemetry to end its series; its later calls count under
    ``_other``. The newcomer's series starts when it is named (its earlier
    calls stay in ``_other``), so every cumulative series only grows.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._named: dict[str, int] = {}  # named value -> calls since it was named
        self._counted: dict[str, int] = {}  # other values -> calls since they were counted
        self._room = 4 * limit + 16
        self._floor = 0  # at most the least count among the named values
        self.retired: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str | None:
        if value is None:
            return None
        with self._lock:
            named = self._named
            count = named.get(value)
            if count is not None:
                named[value] = count + 1
                return value
            if len(named) < self._limit:
                named[value] = 1
                return value
            if not self._limit:
                return OVERFLOW_VALUE
            counted = self._counted
            seen = counted.get(value, 0) + 1
            if seen == 1 and len(counted) >= self._room:
                # Keep the more seen half: a value seen often stays counted.
                kept = sorted(counted.items(), key=lambda item: item[1])[len(counted) // 2 :]
                self._counted = counted = dict(kept)
            counted[value] = seen
            if seen > 2 * self._floor:
                least = min(named, key=named.__getitem__)
                self._floor = named[least]
                if seen > 2 * self._floor:
                    del named[least], counted[value]
                    named[value] = seen
                    counted[least] = self._floor
                    self.retired.append(least)
                    self._floor = min(named.values())
                    return value
            return OVERFLOW_VALUE

    def take_retired(self) -> set[str]:
        """Return the values displaced since the last call, and forget them."""
        with self._lock:
            retired, self.retired = set(self.retired), []
        return retired


class _UserLabels:
    """Turn user ids into bounded, optionally hashed attribute values."""

    def __init__(self, mode: UserAttribute, salt: str | None, max_users: int) -> None:
        self.mode = mode
        self._key = salt.encode() if salt is not None else b""
        self._max_users = max_users
        self._name = "user.hash" if mode == "hashed" else "user.id"
        self.overflow: tuple[str, str] = (self._name, OVERFLOW_USER)
        # Only the first max_users users are remembered, so memory stays
        # bounded too; every later user maps to the overflow value unhashed.
        self._labels: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def label(self, user: str | None) -> _UserLabel:
        """Return the (attribute, value) pair for a user, or None when not exported."""
        if user is None or self.mode == "off":
            return None
        label = self._labels.get(user)
        if label is not None:
            return label
        with self._lock:
            label = self._labels.get(user)
            if label is not None:
                return label
            if len(self._labels) >= self._max_users:
                return self.overflow
            label = (self._name, self._value(user))
            self._labels[user] = label
            return label

    def _value(self, user: str) -> str:
        if self.mode == "raw":
            return user
        # HMAC rather than sha256(salt + user): the standard keyed hash, and
        # still stable across processes that share the salt.
        return hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()[:16]


class _Instruments:
    """The instruments of one MeterProvider, shared by every Telemetry on it.

    The SDK keeps the first callbacks registered for an instrument name and
    silently drops those of a second registration, so two guards on one
    provider must share one set of observable instruments whose callbacks
    read every live Telemetry.
    """

    def __init__(self, meter: Meter, provider: Any, *, aggregate: bool, latest: bool) -> None:
        self.aggregate = aggregate
        self.latest = latest
        # What tells whether an SDK is behind the instruments: an explicit
        # no-op provider never has one; the API's proxy has one once the
        # application sets its global provider. The proxy is a process-wide
        # singleton, so holding it keeps nothing alive.
        self._noop = isinstance(provider, NoOpMeterProvider)
        self._proxy = provider if _is_proxy(provider) else None
        self._members: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        self._members_lock = threading.Lock()
        self.spend: Counter | None = None
        self.tokens: Counter | None = None
        if aggregate:
            # Registered first so that its callback, which also records the
            # queued histogram measurements, runs before the SDK reads storage.
            meter.create_observable_counter(
                "budgetguard.spend", [self._observe(methodcaller("_spend_points"))],
                unit="USD", description=_SPEND_DESCRIPTION,
            )  # fmt: skip
            meter.create_observable_counter(
                "budgetguard.tokens", [self._observe(methodcaller("_token_points"))],
                unit="{token}", description=_TOKENS_DESCRIPTION,
            )  # fmt: skip
        else:
            self.spend = meter.create_counter(
                "budgetguard.spend", unit="USD", description=_SPEND_DESCRIPTION
            )
            self.tokens = meter.create_counter(
                "budgetguard.tokens", unit="{token}", description=_TOKENS_DESCRIPTION
            )
        self.token_usage: Histogram | None = None
        if latest:
            # The draft conventions replace the histogram with counters by modality.
            for name in _INFERENCE_COUNTERS:
                meter.create_observable_counter(
                    name,
                    [self._observe(methodcaller("_inference_points", name))],
                    unit="{token}",
                    description="Tokens used by GenAI inference calls.",
                )
        else:
            self.token_usage = meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
            )
        self.duration: Histogram = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        for event, unit, description in _EVENTS:
            meter.create_observable_counter(
                f"budgetguard.{event}",
                [self._observe(methodcaller("_event_points", event))],
                unit=unit,
                description=description,
            )
        # The outbox of charges the ledger could not take (budgetguard._outbox).
        meter.create_observable_gauge(
            "budgetguard.outbox.size", [self._observe(methodcaller("_outbox_points", "size"))],
            unit="{charge}", description="Charges waiting to be written to the ledger again.",
        )  # fmt: skip
        meter.create_observable_counter(
            "budgetguard.outbox.dropped",
            [self._observe(methodcaller("_outbox_points", "dropped"))],
            unit="{charge}", description="Charges dropped because the outbox was full.",
        )  # fmt: skip
        for field in ("limit", "spent", "reserved", "remaining"):
            meter.create_observable_gauge(
                f"budgetguard.budget.{field}",
                [self._observe(methodcaller("_budget_points", field), budgets=True)],
                unit="USD",
                description=f"The {field} amount of each dollar budget in its current window.",
            )
        # Budgets of tokens, requests and calls in flight: one instrument per
        # field, budgetguard.unit saying what it counts (see the module's doc).
        for field in _QUOTA_FIELDS:
            meter.create_observable_gauge(
                f"budgetguard.quota.{field}",
                [self._observe(methodcaller("_budget_points", field, quota=True), budgets=True)],
                unit="{count}",
                description=f"The {field} count of each budget of tokens, requests or calls "
                "in flight, in its current window.",
            )
        meter.create_observable_gauge(
            "budgetguard.budget.over",
            [self._observe(methodcaller("_over_points"), budgets=True)],
            unit="{call}",
            description="Calls a soft or shadow budget had no room for in its current window.",
        )  # fmt: skip

    def discards(self) -> bool:
        """Return whether recording is a no-op because no SDK is configured."""
        return self._noop or (
            self._proxy is not None and metrics.get_meter_provider() is self._proxy
        )

    def join(self, telemetry: Telemetry) -> None:
        """Add a Telemetry whose figures the callbacks report."""
        with self._members_lock:
            self._members.add(telemetry)

    def leave(self, telemetry: Telemetry) -> None:
        """Stop reporting a Telemetry's figures."""
        with self._members_lock:
            self._members.discard(telemetry)

    def _observe(
        self,
        points: Callable[[Telemetry], Iterable[tuple[Attributes, float]]],
        *,
        budgets: bool = False,
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._members_lock:
                members = list(self._members)
            if len(members) == 1:
                return [Observation(value, attributes) for attributes, value in points(members[0])]
            if budgets:
                return _budget_observations(members, points)
            # Several guards share the instruments: one observation per
            # attribute set, or the SDK would keep only the last.
            merged: dict[tuple[tuple[str, AttributeValue], ...], tuple[Attributes, float]] = {}
            for member in members:
                for attributes, value in points(member):
                    key = tuple(sorted(attributes.items()))
                    previous = merged.get(key)
                    merged[key] = (attributes, value + (previous[1] if previous else 0.0))
            return [Observation(value, attributes) for attributes, value in merged.values()]

        return callback


def _budget_observations(
    members: list[Telemetry], points: Callable[[Telemetry], Iterable[tuple[Attributes, float]]]
) -> list[Observation]:
    """Return budget gauge points of several guards on one provider, never added together.

    Guards on one shared ledger (the same URL) read the same budgets: each
    series is reported once. Guards on different ledgers have different
    budgets even where the names agree (each its own ``global``): where their
    series would meet, each carries ``budgetguard.ledger`` naming its ledger.
    """
    by_ledger: dict[str, dict[_Items, tuple[Attributes, float]]] = {}
    for member in sorted(members, key=attrgetter("_sequence")):
        # The first guard of a ledger speaks for it: the others read the same rows.
        by_ledger.setdefault(member._ledger_label(), dict(
            (tuple(sorted(attributes.items())), (attributes, value))
            for attributes, value in points(member)
        ))  # fmt: skip
    seen: dict[_Items, int] = {}
    for series in by_ledger.values():
        for key in series:
            seen[key] = seen.get(key, 0) + 1
    observations = []
    for label, series in by_ledger.items():
        for key, (attributes, value) in series.items():
            if seen[key] > 1:
                attributes = {**attributes, "budgetguard.ledger": label}
            observations.append(Observation(value, attributes))
    return observations


#: The quota gauges' fields and the BudgetStatus attribute each one reads.
_QUOTA_FIELDS = {
    "limit": "limit",
    "used": "spent",
    "reserved": "reserved",
    "remaining": "remaining",
}

_SPEND_DESCRIPTION = "Money spent on LLM calls by this process."
_TOKENS_DESCRIPTION = "Tokens used by LLM calls, by kind."
_EVENTS = (
    ("refusals", "{call}", "Calls refused by a budget."),
    ("unpriced", "{call}", "Calls whose model had no known price."),
    ("alerts", "{alert}", "Budget alert thresholds crossed."),
    ("storage_errors", "{error}", "Ledger failures."),
)

# One set of instruments per MeterProvider (see _Instruments), the only
# module-level state here; weak keys, so a dropped provider takes its
# instruments with it.
_instruments: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_instruments_lock = threading.Lock()
# Numbers each Telemetry in order of creation (names a guard's own ledger).
_sequence = itertools.count(1)


def _is_proxy(provider: Any) -> bool:
    try:  # the API keeps its proxy class private; without it, assume an SDK
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - a future API version
        return False
    return isinstance(provider, _ProxyMeterProvider)


def _instruments_for(meter_provider: Any, aggregate: bool, latest: bool) -> _Instruments:
    # The global provider is the API's proxy until the application sets one:
    # keyed by the proxy, the instruments follow it to the real provider.
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _instruments_lock:
        instruments = _instruments.get(provider)
        if instruments is None:
            meter = metrics.get_meter("budgetguard", _version(), meter_provider=provider)
            instruments = _Instruments(meter, provider, aggregate=aggregate, latest=latest)
            _instruments[provider] = instruments
        elif instruments.aggregate != aggregate:
            raise ConfigurationError(
                "guards sharing a MeterProvider must agree on aggregate=: "
                f"this one asks for {aggregate}, an earlier one chose {instruments.aggregate}"
            )
        elif instruments.latest != latest:
            raise ConfigurationError(
                "guards sharing a MeterProvider must agree on the GenAI conventions: "
                f"this one asks for latest={latest}, an earlier one chose {instruments.latest}"
            )
        return instruments


class Telemetry:
    """Publish one guard's calls, refusals, alerts and budgets as OpenTelemetry metrics.

    Implements :class:`budgetguard.events.Listener`. Every listener method is
    cheap, thread-safe and never raises: telemetry must not break a call.
    """

    def __init__(
        self,
        guard: StatusSource,
        *,
        meter_provider: Any = None,
        user_attribute: UserAttribute = "off",
        user_salt: str | None = None,
        max_users: int = 100,
        aggregate: bool = True,
        max_models: int = 100,
        tag_keys: Iterable[str] = (),
        max_tag_values: int = 100,
        latest_conventions: bool | None = None,
    ) -> None:
        """Create the instruments (or join those of ``meter_provider``) and start reporting.

        ``meter_provider`` defaults to the global one; instruments made before
        the application sets its global provider report once it does.
        ``tag_keys`` names the scope tags to export; no tag is exported by default.
        ``latest_conventions`` (default: ``OTEL_SEMCONV_STABILITY_OPT_IN`` lists
        ``gen_ai_latest_experimental``) replaces ``gen_ai.client.token.usage``
        with the draft ``gen_ai.client.inference.usage.*`` counters.
        """
        if user_attribute not in ("off", "raw", "hashed"):
            raise ConfigurationError(
                f"user_attribute must be 'off', 'raw' or 'hashed', not {user_attribute!r}"
            )
        if user_attribute == "hashed" and not user_salt:
            # Unsalted hashes of user ids (often emails) fall to a dictionary
            # attack; a random salt would change at every restart.
            raise ConfigurationError(
                "user_attribute='hashed' needs user_salt=..., a secret shared by the "
                "processes whose metrics should agree"
            )
        for name, cap in (
            ("max_users", max_users),
            ("max_models", max_models),
            ("max_tag_values", max_tag_values),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ConfigurationError(f"{name} must be an int >= 0, not {cap!r}")
        if isinstance(tag_keys, str) or not all(isinstance(key, str) for key in tag_keys):
            raise ConfigurationError(f"tag_keys must be a list of tag names, not {tag_keys!r}")

        # A weak reference where possible: the guard owns this object, and a
        # strong one back would keep a dropped guard reporting until the
        # cycle collector runs.
        self._guard: Callable[[], StatusSource | None]
        try:
            self._guard = weakref.ref(guard)
        except TypeError:
            self._guard = lambda: guard
        self._users = _UserLabels(user_attribute, user_salt, max_users)
        self._models = _TopNames(max_models)
        self._tags = tuple(
            (key, f"budgetguard.tag.{key}", _Capped(max_tag_values))
            for key in dict.fromkeys(tag_keys)
        )
        self._lock = threading.Lock()
        self._closed = False
        self._spend: dict[_CallKey, Decimal] = {}
        self._tokens: dict[tuple[_CallKey, str], int] = {}
        self._events: dict[str, dict[_Items, int]] = {event: {} for event, _, _ in _EVENTS}
        # Calls waiting for the next collection. An append to a deque is one
        # step in C, so call_ended takes no lock; _flush takes them from the
        # left under _lock, and a call appended meanwhile waits for the next.
        self._pending: deque[CallOutcome] = deque()
        # Attribute dicts are built once per key and reused; they are never
        # mutated after being handed to OpenTelemetry.
        self._call_attributes: dict[_CallKey, Attributes] = {}
        self._token_attributes: dict[tuple[_CallKey, str], Attributes] = {}
        self._histogram_attributes: dict[tuple[str, _ModelKey, str | None], Attributes] = {}
        self._snapshot: list[BudgetStatus] = []
        self._snapshot_at = 0.0
        self._snapshot_readers: set[str] = set()
        self._snapshot_lock = threading.Lock()
        if latest_conventions is None:
            latest_conventions = _latest_conventions()
        self._sequence = next(_sequence)
        self._instruments = _instruments_for(meter_provider, aggregate, latest_conventions)
        # 0 when closed or with aggregate=False: every call takes _overflow.
        self._max_pending = _MAX_PENDING if aggregate else 0
        self._instruments.join(self)

    def _ledger_label(self) -> str:
        """Name this guard's ledger: its URL (no password) if shared, else one per guard."""
        ledger = getattr(self._guard(), "ledger", None)
        url = getattr(ledger, "safe_url", None) or getattr(ledger, "url", None)
        if isinstance(url, str) and getattr(ledger, "shared", False):
            return url
        # A memory ledger (or a guard with none) is this guard's own.
        return f"{url if isinstance(url, str) else 'guard'}#{self._sequence}"

    @property
    def user_attribute(self) -> UserAttribute:
        """Return how users appear in the metrics: off, raw or hashed."""
        return self._users.mode

    def shutdown(self) -> None:
        """Record what is queued and stop reporting this guard's figures."""
        self._closed = True
        self._max_pending = 0
        self._flush()
        self._instruments.leave(self)

    # -- Listener ---------------------------------------------------------

    def call_ended(self, outcome: CallOutcome) -> None:
        """Queue a call for the next collection, which counts its spend and tokens."""
        # The whole per-call cost when an SDK collects regularly: an append,
        # with no lock (see _pending). Threads that pass the bound together
        # overshoot it by one call each. The outcome is frozen: it can wait.
        pending = self._pending
        if len(pending) < self._max_pending:
            pending.append(outcome)
            return
        self._overflow(outcome)

    def call_refused(
        self, error: BudgetExceededError, *, user: str | None, request_model: str | None
    ) -> None:
        """Count a call a budget refused, by budget."""
        try:
            items: list[tuple[str, AttributeValue]] = [
                ("budgetguard.budget", _budget_kind(error.budget))
            ]
            if error.period is not None:
                items.append(("budgetguard.period", error.period))
            label = self._users.label(user)
            if label is not None:
                items.append(label)
            if request_model is not None:
                items.append(("gen_ai.request.model", self._models(request_model) or ""))
            if self._tags:
                scope = current_scope()
                if scope is not None:
                    items.extend(self._tag_items(scope.tags))
            self._count("refusals", tuple(items))
            self._end_retired_models()
        except Exception:
            _log.exception("budgetguard telemetry failed to record a refusal")

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Count a budget passing one of its alert thresholds."""
        try:
            items: list[tuple[str, AttributeValue]] = [
                ("budgetguard.budget", _budget_kind(crossing.budget)),
                ("budgetguard.period", crossing.period),
                (
                    "budgetguard.threshold",
                    "forecast" if crossing.kind == "forecast" else str(crossing.fraction),
                ),
            ]
            label = self._users.label(crossing.user)
            if label is not None:
                items.append(label)
            self._count("alerts", tuple(items))
        except Exception:
            _log.exception("budgetguard telemetry failed to record an alert")

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        """Count a ledger failure, by policy and error type."""
        try:
            items = (("budgetguard.policy", policy), ("error.type", type(error).__name__))
            self._count("storage_errors", items)
        except Exception:
            _log.exception("budgetguard telemetry failed to record a storage error")

    def _count(self, event: str, items: _Items) -> None:
        counts = self._events[event]
        with self._lock:
            counts[items] = counts.get(items, 0) + 1

    # -- hot path ---------------------------------------------------------

    def _overflow(self, outcome: CallOutcome) -> None:
        """Handle a call that found the queue full (or this Telemetry shut down)."""
        if self._closed:
            return
        if self._max_pending and self._instruments.discards():
            # No SDK: whatever is queued can never be read, as a direct
            # Counter.add on the API's no-op would be lost too. Start afresh.
            with self._lock:  # not while a flush takes them
                self._pending.clear()
                self._pending.append(outcome)
            return
        # An SDK that has not collected for a long while, or aggregate=False:
        # handle this call on the caller's thread rather than let the queue
        # grow without bound.
        self._absorb([outcome])

    def _flush(self) -> None:
        """Count and record every queued call."""
        queued = self._pending
        with self._lock:  # one flush at a time: each takes what is queued as it starts
            pending = [queued.popleft() for _ in range(len(queued))]
        if pending:
            self._absorb(pending)

    def _absorb(self, outcomes: list[CallOutcome]) -> None:
        """Add calls to the spend and token totals and record their histograms."""
        instruments = self._instruments
        spend: dict[_CallKey, Decimal] = {}
        rows: dict[_CallKey, list[tuple[int, ...]]] = {}
        for outcome in outcomes:
            try:
                key, counts = self._describe(outcome)
                spend[key] = spend.get(key, _ZERO) + outcome.cost
                model = key[0]
                if counts is not None:
                    rows.setdefault(key, []).append(counts)
                if counts is not None and instruments.token_usage is not None:
                    inputs = sum(
                        n for n, is_input in zip(counts, _IS_INPUT, strict=True) if is_input
                    )
                    outputs = sum(counts) - inputs
                    instruments.token_usage.record(
                        inputs, self._histogram_attributes_for("input", model)
                    )
                    instruments.token_usage.record(
                        outputs, self._histogram_attributes_for("output", model)
                    )
                instruments.duration.record(
                    outcome.duration, self._histogram_attributes_for("", model, outcome.error_type)
                )
                if not outcome.priced:
                    self._count("unpriced", _model_items((model[0], model[1], None, None)))
            except Exception:  # one malformed event must not cost the others
                _log.exception("budgetguard telemetry failed to record a call: %r", outcome)
        tokens: dict[tuple[_CallKey, str], int] = {}
        for key, key_rows in rows.items():
            # Column sums in C: one pass per key, not per call and kind.
            for (_, kind), total in zip(
                _TOKEN_FIELDS, map(sum, zip(*key_rows, strict=True)), strict=True
            ):
                if total:
                    tokens[key, kind] = tokens.get((key, kind), 0) + total
        if instruments.spend is not None and instruments.tokens is not None:  # aggregate=False
            for key, cost in spend.items():
                instruments.spend.add(float(cost), self._call_attributes_for(key))
            for token_key, count in tokens.items():
                instruments.tokens.add(count, self._token_attributes_for(token_key))
            if not instruments.latest:
                self._end_retired_models()
                return
        with self._lock:
            for key, cost in spend.items():
                self._spend[key] = MONEY.add(self._spend.get(key, _ZERO), cost)
            for token_key, count in tokens.items():
                self._tokens[token_key] = self._tokens.get(token_key, 0) + count
        self._end_retired_models()

    def _end_retired_models(self) -> None:
        """End the series of models that more used ones displaced from the named ones."""
        if not self._models.retired:
            return
        retired = self._models.take_retired()

        def keeps(model: _ModelKey) -> bool:
            return model[1] not in retired and model[2] not in retired

        def keeps_items(items: _Items) -> bool:
            return not any(name == "gen_ai.request.model" and value in retired
                           for name, value in items)  # fmt: skip

        with self._lock:
            self._spend = {key: value for key, value in self._spend.items() if keeps(key[0])}
            self._tokens = {key: value for key, value in self._tokens.items() if keeps(key[0][0])}
            for event in ("refusals", "unpriced"):
                counts = self._events[event]  # changed in place: _count holds it
                for items in [items for items in counts if not keeps_items(items)]:
                    del counts[items]
        # The attribute caches are rebuilt as needed; histograms keep what they recorded.
        self._call_attributes = {k: v for k, v in self._call_attributes.items() if keeps(k[0])}
        self._token_attributes = {k: v for k, v in self._token_attributes.items() if keeps(k[0][0])}
        self._histogram_attributes = {
            k: v for k, v in self._histogram_attributes.items() if keeps(k[1])
        }

    def _describe(self, outcome: CallOutcome) -> tuple[_CallKey, tuple[int, ...] | None]:
        """Return a call's series key and its token counts (None without usage)."""
        usage = outcome.usage
        request = outcome.request_model
        tags = self._tag_items(outcome.tags) if self._tags else ()
        capped = self._models
        if usage is None:
            model = (provider_name(outcome.provider, request), capped(request),
                     capped(outcome.response_model), outcome.operation)  # fmt: skip
            return (model, self._users.label(outcome.user), tags), None
        # Usage is duck-typed: any object with these fields will do.
        model = (
            provider_name(outcome.provider or getattr(usage, "provider", None), request),
            capped(request),
            capped(outcome.response_model or getattr(usage, "model", None)),
            outcome.operation or getattr(usage, "operation", None),
        )
        try:
            counts = _read_counts(usage)  # one C call for budgetguard's Usage
        except AttributeError:
            counts = tuple(getattr(usage, name, 0) for name, _ in _TOKEN_FIELDS)
        return (model, self._users.label(outcome.user), tags), counts

    def _tag_items(self, tags: Mapping[str, str]) -> _TagItems:
        """Return the exported tags of a call, each value capped."""
        items = []
        for key, attribute, capped in self._tags:
            value = tags.get(key)
            if value is not None:
                items.append((attribute, capped(str(value)) or ""))
        return tuple(items)

    # -- attributes -------------------------------------------------------

    def _call_attributes_for(self, key: _CallKey) -> Attributes:
        attributes = self._call_attributes.get(key)
        if attributes is None:
            attributes = dict(_model_items(key[0]))
            if key[1] is not None:
                attributes[key[1][0]] = key[1][1]
            attributes.update(key[2])
            self._call_attributes[key] = attributes
        return attributes

    def _token_attributes_for(self, key: tuple[_CallKey, str]) -> Attributes:
        attributes = self._token_attributes.get(key)
        if attributes is None:
            attributes = {**self._call_attributes_for(key[0]), "budgetguard.token.kind": key[1]}
            self._token_attributes[key] = attributes
        return attributes

    def _histogram_attributes_for(
        self, token_type: str, model: _ModelKey, error_type: str | None = None
    ) -> Attributes:
        key = (token_type, model, error_type)
        attributes = self._histogram_attributes.get(key)
        if attributes is None:
            attributes = dict(_model_items(model))
            if token_type:
                attributes["gen_ai.token.type"] = token_type
            if error_type is not None:
                attributes["error.type"] = error_type
            self._histogram_attributes[key] = attributes
        return attributes

    # -- collection -------------------------------------------------------

    def _spend_points(self) -> list[tuple[Attributes, float]]:
        # The first callback of each collection: record the queued histogram
        # measurements now so that this collection includes them.
        self._flush()
        with self._lock:
            spend = list(self._spend.items())
        return [(self._call_attributes_for(key), float(total)) for key, total in spend]

    def _token_points(self) -> list[tuple[Attributes, float]]:
        with self._lock:
            tokens = list(self._tokens.items())
        return [(self._token_attributes_for(key), float(count)) for key, count in tokens]

    def _inference_points(self, name: str) -> list[tuple[Attributes, float]]:
        """Return one draft inference counter's totals, by model and modality (never by user)."""
        with self._lock:
            tokens = list(self._tokens.items())
        totals: dict[tuple[_ModelKey, str], int] = {}
        for ((model, _, _), kind), count in tokens:
            for counter, modality in _INFERENCE_KINDS[kind]:
                if counter == name:
                    totals[model, modality] = totals.get((model, modality), 0) + count
        return [
            ({**dict(_model_items(model)), "gen_ai.token.modality": modality}, float(count))
            for (model, modality), count in totals.items()
        ]

    def _event_points(self, event: str) -> list[tuple[Attributes, float]]:
        with self._lock:
            counts = list(self._events[event].items())
        return [(dict(items), float(count)) for items, count in counts]

    def _outbox_points(self, field: str) -> list[tuple[Attributes, float]]:
        """Return the guard's outbox size or its count of dropped charges."""
        outbox = getattr(self._guard(), "_outbox", None)
        if outbox is None:
            return []
        return [({}, float(len(outbox) if field == "size" else outbox.dropped))]

    def _budget_points(self, field: str, *, quota: bool = False) -> list[tuple[Attributes, float]]:
        """Return one point per budget of one field: dollar budgets, or (``quota``) the others."""
        read = _QUOTA_FIELDS[field] if quota else field
        return self._series(
            f"quota.{field}" if quota else field,
            lambda status: (status.unit != "usd") == quota,
            lambda status: getattr(status, read),
        )

    def _over_points(self) -> list[tuple[Attributes, float]]:
        """Return the calls each soft or shadow budget had no room for in its window."""
        return self._series("over", lambda status: status.mode != "hard", lambda s: s.over)

    def _series(
        self,
        reader: str,
        wanted: Callable[[BudgetStatus], bool],
        value: Callable[[BudgetStatus], Decimal | int],
    ) -> list[tuple[Attributes, float]]:
        totals: dict[tuple[str, str, str, str, _UserLabel], Decimal] = {}
        overflow = self._users.overflow
        for status in self._statuses(reader):
            if not wanted(status):
                continue
            label = self._users.label(status.user)
            if status.user is not None and (label is None or label == overflow):
                # A user's budget without its own user value (attribute off,
                # or past the cap) would be summed with other users' budgets:
                # a limit of $6 for a $1 and a $5 user means nothing.
                continue
            key = (_budget_kind(status.name), status.period, status.unit, status.mode, label)
            totals[key] = totals.get(key, _ZERO) + value(status)
        points = []
        for (budget, period, unit, mode, user), total in totals.items():
            attributes: Attributes = {
                "budgetguard.budget": budget,
                "budgetguard.period": period,
                "budgetguard.unit": unit,
                "budgetguard.mode": mode,
            }
            if user is not None:
                attributes[user[0]] = user[1]
            points.append((attributes, float(total)))
        return points

    def _statuses(self, field: str) -> list[BudgetStatus]:
        """Return the guard's budget statuses, read once per collection for all the gauges."""
        guard = self._guard()
        if guard is None or self._closed:
            return []
        with self._snapshot_lock:
            now = time.monotonic()
            # A gauge that already read this snapshot asks again only in the
            # next collection: that is when to read the ledger again.
            if field in self._snapshot_readers or now - self._snapshot_at > _SNAPSHOT_MAX_AGE:
                try:
                    self._snapshot = list(guard.budget_statuses())
                except Exception:
                    _log.warning("budgetguard could not read budgets for metrics", exc_info=True)
                    self._snapshot = []
                self._snapshot_at = now
                self._snapshot_readers = set()
            self._snapshot_readers.add(field)
            return self._snapshot

    def __repr__(self) -> str:
        return (
            f"Telemetry(user_attribute={self._users.mode!r}, "
            f"aggregate={self._instruments.aggregate}, closed={self._closed})"
        )
