"""Benchmark the per-call cost path and token counting.

Run: ``.venv/bin/python benchmarks/pricing.py``

- extract + price: microseconds to read the usage of one response object
  (OpenAI ChatCompletion, Anthropic Message, google-genai response) and price it.
- count_tokens: throughput relative to calling tiktoken's ``encode`` directly.
"""

from __future__ import annotations

import timeit

import anthropic.types
import openai.types.chat
from google.genai import types as genai_types

from budgetguard import tokens
from budgetguard.pricing import cost_of, default_table
from budgetguard.usage import extract_usage


def _best_us(stmt: object, number: int) -> float:
    timer = timeit.Timer(stmt)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def main() -> None:
    """Print the figures."""
    default_table()  # load the shipped table outside the timings
    openai_response = openai.types.chat.ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 2000,
                "completion_tokens": 300,
                "total_tokens": 2300,
                "prompt_tokens_details": {"cached_tokens": 1500, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 100, "audio_tokens": 0},
            },
        }
    )
    anthropic_response = anthropic.types.Message.model_validate(
        {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": 10000,
                "cache_creation_input_tokens": 3000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
                "output_tokens": 400,
            },
        }
    )
    gemini_response = genai_types.GenerateContentResponse.model_validate(
        {
            "usage_metadata": {
                "prompt_token_count": 5000,
                "cached_content_token_count": 4000,
                "candidates_token_count": 200,
                "thoughts_token_count": 800,
            },
            "model_version": "gemini-2.5-pro",
        }
    )
    for label, response in (
        ("OpenAI ChatCompletion", openai_response),
        ("Anthropic Message", anthropic_response),
        ("google-genai response", gemini_response),
    ):
        usage = extract_usage(response)
        assert usage is not None
        extract = _best_us(lambda r=response: extract_usage(r), 20_000)
        price = _best_us(lambda u=usage: cost_of(u), 20_000)
        both = _best_us(lambda r=response: cost_of(extract_usage(r)), 20_000)  # type: ignore[arg-type]
        print(
            f"{label:24s} extract {extract:5.2f} us  price {price:5.2f} us  "
            f"extract+price {both:5.2f} us"
        )

    encoding = tokens.encoding_for("gpt-4o")
    assert encoding is not None
    text = (
        "The quick brown fox jumps over the lazy dog. "
        "def f(x):\n    return x * 2\n"
        "日本語のテキスト 😀 "
    ) * 200
    raw = _best_us(lambda: len(encoding.encode_ordinary(text)), 50)
    ours = _best_us(lambda: tokens.count_tokens(text, "gpt-4o"), 50)
    chars = len(text)
    print(
        f"count_tokens on {chars} chars: raw tiktoken {raw:8.1f} us, count_tokens {ours:8.1f} us "
        f"({raw / ours:.2f}x raw throughput, {chars / ours:.1f} chars/us)"
    )
    messages = [{"role": "user", "content": "Summarise this: " + "word " * 40}] * 20
    raw_m = _best_us(
        lambda: sum(len(encoding.encode_ordinary(m["content"])) for m in messages), 200
    )
    ours_m = _best_us(lambda: tokens.count_tokens(messages, "gpt-4o"), 200)
    print(
        f"count_tokens on 20 chat messages: raw tiktoken {raw_m:6.1f} us, "
        f"count_tokens {ours_m:6.1f} us ({raw_m / ours_m:.2f}x raw throughput)"
    )


if __name__ == "__main__":
    main()
