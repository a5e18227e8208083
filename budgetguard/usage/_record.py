"""One normalised record of what a call consumed."""

from __future__ import annotations

import dataclasses
from dataclasses import FrozenInstanceError, dataclass
from decimal import Decimal
from typing import Any

__all__ = ["Usage"]

# Every token count sits in exactly one of these buckets, so that the sum of the
# buckets is what the provider billed and pricing never counts a token twice.
_COUNTS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "web_search_requests",
)
_FIELDS = (
    *_COUNTS,
    "model",
    "provider",
    "operation",
    "estimated",
    "service_tier",
    "reported_cost",
    "cost_reporter",
)


class _Slots:
    """The storage of a ``Usage``: its fields as plain slots."""

    __slots__ = _FIELDS

    input_tokens: int
    cached_input_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    output_tokens: int
    reasoning_tokens: int
    input_audio_tokens: int
    output_audio_tokens: int
    input_image_tokens: int
    web_search_requests: int
    model: str | None
    provider: str | None
    operation: str | None
    estimated: bool
    service_tier: str | None
    reported_cost: Decimal | None
    cost_reporter: str | None


class _Filling(_Slots):
    """A ``Usage`` being filled in: the same layout, but its slots can be written."""

    __slots__ = ()


_new = object.__new__


def _reject_counts(values: tuple[object, ...]) -> None:
    for name, value in zip(_COUNTS, values, strict=True):
        if type(value) is not int or value < 0:
            raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")


def _check_cost(cost: object) -> None:
    if type(cost) is not Decimal or not cost.is_finite() or cost < 0:
        raise ValueError(
            f"Usage.reported_cost must be a finite, non-negative Decimal, got {cost!r}"
        )


class Usage(_Slots):
    """Hold the tokens (and per-request units) one call consumed, by price bucket.

    The buckets are disjoint, whatever the provider's own convention:

    - ``input_tokens``: uncached text input, without cache reads, cache writes,
      audio or image tokens.
    - ``cached_input_tokens``: input read from a prompt cache.
    - ``cache_write_5m_tokens`` / ``cache_write_1h_tokens``: input written to a
      cache with a short (Anthropic 5 minutes, OpenAI's default retention) or
      long (Anthropic 1 hour, OpenAI extended retention) lifetime.
    - ``output_tokens``: visible output, without reasoning or audio.
    - ``reasoning_tokens``: hidden reasoning ("thinking") output.
    - ``input_audio_tokens`` / ``output_audio_tokens`` / ``input_image_tokens``:
      media tokens, where the provider reports them separately.
    - ``web_search_requests``: calls billed per request, not per token.

    ``service_tier`` is the tier the provider says it served the call in
    (``"priority"``, ``"flex"``, ``"batch"``; ``None`` for standard), which
    prices it.

    ``estimated`` is true when any figure was counted locally rather than
    reported by the provider (a stream that ended without usage, say).

    ``reported_cost`` is what the response says the call cost, in dollars,
    where it says so (OpenRouter's ``usage.cost``, LiteLLM's
    ``response_cost``); the call is charged that rather than the price
    table's figure. ``cost_reporter`` names who reported it
    (``"openrouter"``, ``"litellm"``).

    A ``Usage`` is immutable and compares, hashes and prints by its fields.
    It is a plain slotted class, built once per response, and still answers
    to ``dataclasses.replace``, ``fields`` and ``asdict`` as the frozen
    dataclass it used to be.
    """

    __slots__ = ()
    __match_args__ = (
        "input_tokens",
        "cached_input_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "reasoning_tokens",
        "input_audio_tokens",
        "output_audio_tokens",
        "input_image_tokens",
        "web_search_requests",
        "model",
        "provider",
        "operation",
        "estimated",
        "service_tier",
        "reported_cost",
        "cost_reporter",
    )

    def __new__(
        cls,
        input_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_5m_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        output_tokens: int = 0,
        reasoning_tokens: int = 0,
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
        input_image_tokens: int = 0,
        web_search_requests: int = 0,
        model: str | None = None,
        provider: str | None = None,
        operation: str | None = None,
        estimated: bool = False,
        service_tier: str | None = None,
        reported_cost: Decimal | None = None,
        cost_reporter: str | None = None,
    ) -> Usage:
        # Spelled out rather than looped over: this runs once per call.
        if (
            input_tokens.__class__ is not int
            or cached_input_tokens.__class__ is not int
            or cache_write_5m_tokens.__class__ is not int
            or cache_write_1h_tokens.__class__ is not int
            or output_tokens.__class__ is not int
            or reasoning_tokens.__class__ is not int
            or input_audio_tokens.__class__ is not int
            or output_audio_tokens.__class__ is not int
            or input_image_tokens.__class__ is not int
            or web_search_requests.__class__ is not int
            or input_tokens < 0
            or cached_input_tokens < 0
            or cache_write_5m_tokens < 0
            or cache_write_1h_tokens < 0
            or output_tokens < 0
            or reasoning_tokens < 0
            or input_audio_tokens < 0
            or output_audio_tokens < 0
            or input_image_tokens < 0
            or web_search_requests < 0
        ):
            _reject_counts(
                (
                    input_tokens,
                    cached_input_tokens,
                    cache_write_5m_tokens,
                    cache_write_1h_tokens,
                    output_tokens,
                    reasoning_tokens,
                    input_audio_tokens,
                    output_audio_tokens,
                    input_image_tokens,
                    web_search_requests,
                )
            )
        if reported_cost is not None:
            _check_cost(reported_cost)
        return _filled(
            input_tokens,
            cached_input_tokens,
            cache_write_5m_tokens,
            cache_write_1h_tokens,
            output_tokens,
            reasoning_tokens,
            input_audio_tokens,
            output_audio_tokens,
            input_image_tokens,
            web_search_requests,
            model,
            provider,
            operation,
            estimated,
            service_tier,
            reported_cost,
            cost_reporter,
            cls,
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return (
            self.input_tokens,
            self.cached_input_tokens,
            self.cache_write_5m_tokens,
            self.cache_write_1h_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.input_audio_tokens,
            self.output_audio_tokens,
            self.input_image_tokens,
            self.web_search_requests,
            self.model,
            self.provider,
            self.operation,
            self.estimated,
            self.service_tier,
            self.reported_cost,
            self.cost_reporter,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(_FIELDS, self._values(), strict=True)
        )
        return f"{self.__class__.__qualname__}({fields})"

    def __reduce__(self) -> tuple[type[Usage], tuple[Any, ...]]:
        return self.__class__, self._values()

    @property
    def cache_write_tokens(self) -> int:
        """Return the input tokens written to a cache, whatever their lifetime."""
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def total_input_tokens(self) -> int:
        """Return every input token: uncached, cache reads, cache writes and media."""
        return (
            self.input_tokens
            + self.cached_input_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.input_audio_tokens
            + self.input_image_tokens
        )

    @property
    def total_output_tokens(self) -> int:
        """Return every output token: visible, reasoning and audio."""
        return self.output_tokens + self.reasoning_tokens + self.output_audio_tokens

    @property
    def total_tokens(self) -> int:
        """Return all tokens, input and output."""
        return self.total_input_tokens + self.total_output_tokens

    def with_model(self, model: str | None) -> Usage:
        """Return a copy that names ``model`` (the request's, when the response names none)."""
        return self.replace(model=model)

    def replace(self, **changes: Any) -> Usage:
        """Return a copy with the fields ``changes`` names set anew (``dataclasses.replace``)."""
        values = dict(zip(_FIELDS, self._values(), strict=True))
        for name in changes:
            if name not in values:
                raise TypeError(f"Usage has no field {name!r}")
        values.update(changes)
        return self.__class__(**values)

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        counts = {name: getattr(self, name) + getattr(other, name) for name in _COUNTS}
        # A reported cost covers the whole sum only when both parts reported one.
        both = self.reported_cost is not None and other.reported_cost is not None
        return Usage(
            **counts,
            model=self.model if self.model is not None else other.model,
            provider=self.provider if self.provider is not None else other.provider,
            operation=self.operation if self.operation is not None else other.operation,
            estimated=self.estimated or other.estimated,
            service_tier=self.service_tier if self.service_tier is not None else other.service_tier,
            reported_cost=self.reported_cost + other.reported_cost if both else None,  # type: ignore[operator]
            cost_reporter=(self.cost_reporter or other.cost_reporter) if both else None,
        )


def _filled(
    input_tokens: int,
    cached_input_tokens: int,
    cache_write_5m_tokens: int,
    cache_write_1h_tokens: int,
    output_tokens: int,
    reasoning_tokens: int,
    input_audio_tokens: int,
    output_audio_tokens: int,
    input_image_tokens: int,
    web_search_requests: int,
    model: str | None,
    provider: str | None,
    operation: str | None,
    estimated: bool,
    service_tier: str | None,
    reported_cost: Decimal | None,
    cost_reporter: str | None,
    cls: type[Usage] = Usage,
) -> Usage:
    """Build a ``Usage`` from figures already checked: non-negative ints, a valid cost.

    The extractors call this directly, with counts that went through their
    own checks, skipping the type call and the public constructor's checks.
    """
    # Filled in through a writable twin of the same layout, then turned into
    # a Usage: plain slot stores, where a frozen dataclass pays for one
    # object.__setattr__ call per field.
    usage: Any = _new(_Filling)
    usage.input_tokens = input_tokens
    usage.cached_input_tokens = cached_input_tokens
    usage.cache_write_5m_tokens = cache_write_5m_tokens
    usage.cache_write_1h_tokens = cache_write_1h_tokens
    usage.output_tokens = output_tokens
    usage.reasoning_tokens = reasoning_tokens
    usage.input_audio_tokens = input_audio_tokens
    usage.output_audio_tokens = output_audio_tokens
    usage.input_image_tokens = input_image_tokens
    usage.web_search_requests = web_search_requests
    usage.model = model
    usage.provider = provider
    usage.operation = operation
    usage.estimated = estimated
    usage.service_tier = service_tier
    usage.reported_cost = reported_cost
    usage.cost_reporter = cost_reporter
    # A subclass that adds storage of its own cannot take this layout: TypeError.
    usage.__class__ = cls
    return usage  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Spec:
    """The fields of ``Usage`` as a dataclass declares them, for ``dataclasses`` helpers."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    web_search_requests: int = 0
    model: str | None = None
    provider: str | None = None
    operation: str | None = None
    estimated: bool = False
    service_tier: str | None = None
    reported_cost: Decimal | None = None
    cost_reporter: str | None = None


# Usage was a frozen dataclass; code that reads it with dataclasses.fields,
# asdict or replace keeps working. The fields are declared once, checked here.
Usage.__dataclass_fields__ = _Spec.__dataclass_fields__  # type: ignore[attr-defined]
Usage.__dataclass_params__ = _Spec.__dataclass_params__  # type: ignore[attr-defined]
assert tuple(f.name for f in dataclasses.fields(_Spec)) == _FIELDS == Usage.__match_args__
assert set(_COUNTS) == {f.name for f in dataclasses.fields(_Spec) if f.type == "int"}
