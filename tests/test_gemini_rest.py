"""Gemini replies in the REST API's camelCase JSON are read like the SDK's."""

from __future__ import annotations

from decimal import Decimal

from budgetguard.pricing import cost_of, lookup
from budgetguard.usage import accumulate, extract_usage

REST_REPLY = {
    "candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}}],
    "usageMetadata": {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 200,
        "candidatesTokenCount": 300,
        "thoughtsTokenCount": 100,
        "totalTokenCount": 1600,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
    },
    "modelVersion": "gemini-2.5-flash",
}


def test_rest_reply_usage_is_normalised_like_the_sdk() -> None:
    """Cached tokens come out of the prompt and thinking tokens count as reasoning."""
    usage = extract_usage(REST_REPLY)
    assert usage is not None
    assert usage.model == "gemini-2.5-flash"
    assert (usage.input_tokens, usage.cached_input_tokens) == (1000, 200)
    assert (usage.output_tokens, usage.reasoning_tokens) == (300, 100)


def test_rest_reply_is_priced_exactly() -> None:
    """The REST reply costs what its figures cost at the table's prices, worked out here."""
    usage = extract_usage(REST_REPLY)
    price = lookup("gemini-2.5-flash")
    assert usage is not None and price is not None and price.cached_input is not None
    # 1000 uncached input + 200 cached input + (300 output + 100 thinking) at output price.
    expected = (1000 * price.input + 200 * price.cached_input + 400 * price.output) / Decimal(
        1_000_000
    )
    assert cost_of(usage).total == expected


def test_rest_stream_takes_the_last_usage_metadata() -> None:
    """A REST stream's chunks in camelCase give the last chunk's usage."""
    chunks = [
        {
            "candidates": [{"content": {"parts": [{"text": "Hel"}]}}],
            "modelVersion": "gemini-2.5-flash",
        },
        {
            "candidates": [{"content": {"parts": [{"text": "lo"}]}}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2},
            "modelVersion": "gemini-2.5-flash",
        },
    ]
    usage = accumulate(chunks)
    assert usage is not None and not usage.estimated
    assert (usage.input_tokens, usage.output_tokens, usage.model) == (10, 2, "gemini-2.5-flash")
