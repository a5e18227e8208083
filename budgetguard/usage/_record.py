"""One normalised record of what a call consumed."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from decimal import Decimal

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


@dataclass(frozen=True, slots=True)
class Usage:
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
    """

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

    def __post_init__(self) -> None:
        # Spelled out rather than looped over getattr: this runs once per call.
        for value in (
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
        ):
            if value.__class__ is not int or value < 0:
                self._reject()
        cost = self.reported_cost
        if cost is not None and (cost.__class__ is not Decimal or not cost.is_finite() or cost < 0):
            raise ValueError(
                f"Usage.reported_cost must be a finite, non-negative Decimal, got {cost!r}"
            )

    def _reject(self) -> None:
        for name in _COUNTS:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")

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
        return replace(self, model=model)

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


# Keep the tuple honest if a field is added without updating it.
assert set(_COUNTS) == {f.name for f in fields(Usage) if f.type == "int"}
