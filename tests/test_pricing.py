"""Exact costs, price lookup, and user overrides."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic.types
import openai.types.chat
import pytest
from google.genai import types as genai_types

import budgetguard.pricing as pricing
from budgetguard.errors import ConfigurationError, UnknownModelError
from budgetguard.pricing import PriceTable, cost_of, default_table, lookup
from budgetguard.usage import Usage, extract_usage

D = Decimal

# Prices fixed for these tests (copied from the vendors' lists in late 2026), so
# that regenerating the shipped table never changes the arithmetic below.
TEST_PRICES: dict[str, Any] = {
    "gpt-4o": {
        "aliases": ["gpt-4o-2024-08-06"],
        "input": "2.5",
        "cached_input": "1.25",
        "output": "10",
        "per_request": {"web_search": "0.01"},
        "service_tiers": {
            "batch": {"input": "1.25", "output": "5"},
            "priority": {"input": "4.25", "cached_input": "2.125", "output": "17"},
        },
    },
    "gpt-4o-mini": {"input": "0.15", "cached_input": "0.075", "output": "0.6"},
    "o3": {
        "input": "2",
        "cached_input": "0.5",
        "output": "8",
        "service_tiers": {"flex": {"input": "1", "cached_input": "0.25", "output": "4"}},
    },
    "gpt-5.4": {
        "input": "2.5",
        "cached_input": "0.25",
        "output": "15",
        "long_context": [
            {"above_input_tokens": 272000, "input": "5", "cached_input": "0.5", "output": "22.5"}
        ],
    },
    "gpt-6-sol": {"input": "2", "cached_input": "0.2", "cache_write_5m": "2.5", "output": "10"},
    "claude-sonnet-4-5": {
        "aliases": ["claude-sonnet-4.5"],
        "input": "3",
        "cached_input": "0.3",
        "cache_write_5m": "3.75",
        "cache_write_1h": "6",
        "output": "15",
        "per_request": {"web_search": "0.01"},
        "long_context": [
            {
                "above_input_tokens": 200000,
                "input": "6",
                "cached_input": "0.6",
                "cache_write_5m": "7.5",
                "cache_write_1h": "12",
                "output": "22.5",
            }
        ],
        "service_tiers": {
            "batch": {
                "input": "1.5",
                "cached_input": "0.15",
                "cache_write_5m": "1.875",
                "cache_write_1h": "3",
                "output": "7.5",
                "long_context": [
                    {
                        "above_input_tokens": 200000,
                        "input": "3",
                        "cached_input": "0.3",
                        "cache_write_5m": "3.75",
                        "cache_write_1h": "6",
                        "output": "11.25",
                    }
                ],
            }
        },
    },
    "claude-opus-4-1": {
        "input": "15",
        "cached_input": "1.5",
        "cache_write_5m": "18.75",
        "cache_write_1h": "30",
        "output": "75",
    },
    "claude-haiku-4-5": {
        "input": "1",
        "cached_input": "0.1",
        "cache_write_5m": "1.25",
        "cache_write_1h": "2",
        "output": "5",
        "batch_multiplier": "0.5",
    },
    "gemini-2.5-pro": {
        "input": "1.25",
        "cached_input": "0.125",
        "output": "10",
        "long_context": [
            {"above_input_tokens": 200000, "input": "2.5", "cached_input": "0.25", "output": "15"}
        ],
        "service_tiers": {
            "batch": {
                "input": "0.625",
                "output": "5",
                "long_context": [{"above_input_tokens": 200000, "input": "1.25", "output": "7.5"}],
            }
        },
    },
    "gemini-2.5-flash": {
        "input": "0.3",
        "cached_input": "0.03",
        "output": "2.5",
        "input_audio": "1",
    },
    "amazon.nova-pro-v1:0": {"input": "0.8", "cached_input": "0.2", "output": "3.2"},
    "command-r-plus": {"input": "2.5", "output": "10"},
    "mistral-medium-2508": {"input": "0.4", "cached_input": "0.04", "output": "2"},
    "deepseek-chat": {"input": "0.27", "cached_input": "0.07", "output": "1.1"},
    "text-embedding-3-small": {
        "input": "0.02",
        "output": "0",
        "service_tiers": {"batch": {"input": "0.01", "output": "0"}},
    },
    "grok-4": {"input": "3", "cached_input": "0.75", "output": "15"},
    "plain-model": {"input": "1", "output": "2"},
}


@pytest.fixture
def table() -> PriceTable:
    prices = PriceTable()
    prices.load_mapping({"models": TEST_PRICES})
    return prices


@pytest.fixture(autouse=True)
def fresh_default_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # register_model and load_prices change the process-wide table: give each test its own.
    monkeypatch.setattr(pricing, "_default", None)


def openai_chat(model: str, usage: dict[str, Any]) -> Usage:
    response = openai.types.chat.ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )
    found = extract_usage(response)
    assert found is not None
    return found


def anthropic_msg(model: str, usage: dict[str, Any]) -> Usage:
    response = anthropic.types.Message.model_validate(
        {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )
    found = extract_usage(response)
    assert found is not None
    return found


def gemini(model: str, metadata: dict[str, Any]) -> Usage:
    response = genai_types.GenerateContentResponse.model_validate(
        {"usage_metadata": metadata, "model_version": model}
    )
    found = extract_usage(response)
    assert found is not None
    return found


def plain(model: str, **counts: int) -> Usage:
    return Usage(model=model, **counts)


# Each case: (usage, tier, expected total). Prices are per million tokens, so
# every component is tokens x price / 1,000,000.
COST_CASES = [
    pytest.param(
        # 1000 x 2.5 = 2500 -> 0.0025; 500 x 10 = 5000 -> 0.005; total 0.0075
        plain("gpt-4o", input_tokens=1000, output_tokens=500),
        "standard",
        D("0.0075"),
        id="openai-plain",
    ),
    pytest.param(
        # prompt 2000 of which 1500 cached: 500 x 2.5 = 0.00125; 1500 x 1.25 = 0.001875;
        # 100 x 10 = 0.001; total 0.004125
        openai_chat(
            "gpt-4o-2024-08-06",
            {
                "prompt_tokens": 2000,
                "completion_tokens": 100,
                "total_tokens": 2100,
                "prompt_tokens_details": {"cached_tokens": 1500},
            },
        ),
        "standard",
        D("0.004125"),
        id="openai-cache-read-snapshot",
    ),
    pytest.param(
        # snapshot of gpt-4o-mini, not gpt-4o: 10000 x 0.15 = 0.0015; 1000 x 0.6 = 0.0006
        plain("gpt-4o-mini-2024-07-18", input_tokens=10000, output_tokens=1000),
        "standard",
        D("0.0021"),
        id="openai-mini-snapshot",
    ),
    pytest.param(
        # completion 1000 incl. 800 reasoning: in 100 x 2 = 0.0002; out 200 x 8 = 0.0016;
        # reasoning 800 x 8 = 0.0064; total 0.0082
        openai_chat(
            "o3",
            {
                "prompt_tokens": 100,
                "completion_tokens": 1000,
                "total_tokens": 1100,
                "completion_tokens_details": {"reasoning_tokens": 800},
            },
        ),
        "standard",
        D("0.0082"),
        id="openai-reasoning",
    ),
    pytest.param(
        # flex: 100 x 1 = 0.0001; 200 x 4 = 0.0008; 800 x 4 = 0.0032; total 0.0041
        plain("o3", input_tokens=100, output_tokens=200, reasoning_tokens=800),
        "flex",
        D("0.0041"),
        id="openai-flex",
    ),
    pytest.param(
        # batch: 1M x 1.25 = 1.25; 1M x 5 = 5; total 6.25
        plain("gpt-4o", input_tokens=1_000_000, output_tokens=1_000_000),
        "batch",
        D("6.25"),
        id="openai-batch",
    ),
    pytest.param(
        # priority: 1000 x 4.25 = 0.00425; 1000 x 2.125 = 0.002125; 1000 x 17 = 0.017
        plain("gpt-4o", input_tokens=1000, cached_input_tokens=1000, output_tokens=1000),
        "priority",
        D("0.023375"),
        id="openai-priority",
    ),
    pytest.param(
        # exactly at the 272k threshold is not above it: 272000 x 2.5 = 0.68; 1000 x 15 = 0.015
        plain("gpt-5.4", input_tokens=272000, output_tokens=1000),
        "standard",
        D("0.695"),
        id="openai-long-context-at-threshold",
    ),
    pytest.param(
        # one token above: whole request re-priced: 272001 x 5 = 1.360005; 1000 x 22.5 = 0.0225
        plain("gpt-5.4", input_tokens=272001, output_tokens=1000),
        "standard",
        D("1.382505"),
        id="openai-long-context-above",
    ),
    pytest.param(
        # cached tokens count toward the threshold (300000 > 272000):
        # 100000 x 5 = 0.5; 200000 x 0.5 = 0.1; total 0.6
        plain("gpt-5.4", input_tokens=100000, cached_input_tokens=200000),
        "standard",
        D("0.6"),
        id="openai-long-context-via-cache",
    ),
    pytest.param(
        # OpenAI cache write: 1000 x 2 = 0.002; 4000 x 2.5 = 0.01; 100 x 10 = 0.001
        plain("gpt-6-sol", input_tokens=1000, cache_write_5m_tokens=4000, output_tokens=100),
        "standard",
        D("0.013"),
        id="openai-cache-write",
    ),
    pytest.param(
        # 1h write with no 1h price falls back to the 5m write price: 1000 x 2.5 = 0.0025
        plain("gpt-6-sol", cache_write_1h_tokens=1000),
        "standard",
        D("0.0025"),
        id="openai-1h-write-falls-back-to-write-price",
    ),
    pytest.param(
        # 50 x 3 = 0.00015; 10000 x 0.3 = 0.003; 1000 x 3.75 = 0.00375; 2000 x 6 = 0.012;
        # 400 x 15 = 0.006; 2 searches x 0.01 = 0.02; total 0.0449
        anthropic_msg(
            "claude-sonnet-4-5-20250929",
            {
                "input_tokens": 50,
                "cache_read_input_tokens": 10000,
                "cache_creation_input_tokens": 3000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1000,
                    "ephemeral_1h_input_tokens": 2000,
                },
                "output_tokens": 400,
                "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0},
            },
        ),
        "standard",
        D("0.0449"),
        id="anthropic-cache-5m-1h-web-search",
    ),
    pytest.param(
        # 150000 + 60000 cached = 210000 > 200000: 150000 x 6 = 0.9; 60000 x 0.6 = 0.036;
        # 1000 x 22.5 = 0.0225; total 0.9585
        plain(
            "claude-sonnet-4-5", input_tokens=150000, cached_input_tokens=60000, output_tokens=1000
        ),
        "standard",
        D("0.9585"),
        id="anthropic-long-context",
    ),
    pytest.param(
        # cache writes count toward the threshold (200100 > 200000):
        # 100 x 6 = 0.0006; 200000 x 12 = 2.4; total 2.4006
        plain("claude-sonnet-4.5", input_tokens=100, cache_write_1h_tokens=200000),
        "standard",
        D("2.4006"),
        id="anthropic-long-context-via-1h-write",
    ),
    pytest.param(
        # batch (input below 200k): 100000 x 1.5 = 0.15; 100000 x 7.5 = 0.75; total 0.9
        plain("claude-sonnet-4-5", input_tokens=100_000, output_tokens=100_000),
        "batch",
        D("0.9"),
        id="anthropic-batch",
    ),
    pytest.param(
        # batch above 200k: 300000 x 3 = 0.9; 10000 x 11.25 = 0.1125; total 1.0125
        plain("claude-sonnet-4-5", input_tokens=300000, output_tokens=10000),
        "batch",
        D("1.0125"),
        id="anthropic-batch-long-context",
    ),
    pytest.param(
        # Bedrock inference-profile id: 1000 x 15 = 0.015; 1000 x 75 = 0.075; total 0.09
        plain("us.anthropic.claude-opus-4-1-20250805-v1:0", input_tokens=1000, output_tokens=1000),
        "standard",
        D("0.09"),
        id="anthropic-on-bedrock-id",
    ),
    pytest.param(
        # batch multiplier 0.5: 2M x 0.5 = 1; 1M x 0.05 = 0.05; 1M x 2.5 = 2.5; total 3.55
        plain(
            "claude-haiku-4-5",
            input_tokens=2_000_000,
            cached_input_tokens=1_000_000,
            output_tokens=1_000_000,
        ),
        "batch",
        D("3.55"),
        id="anthropic-batch-multiplier",
    ),
    pytest.param(
        # thinking inside output_tokens: 10 x 1 = 0.00001; 300 x 5 = 0.0015;
        # 600 thinking x 5 = 0.003; total 0.00451
        anthropic_msg(
            "claude-haiku-4-5",
            {
                "input_tokens": 10,
                "output_tokens": 900,
                "output_tokens_details": {"thinking_tokens": 600},
            },
        ),
        "standard",
        D("0.00451"),
        id="anthropic-thinking",
    ),
    pytest.param(
        # input 5000 - 4000 cached + 30 tool-use = 1030 x 1.25 = 0.0012875;
        # 4000 x 0.125 = 0.0005; 200 x 10 = 0.002; 800 thoughts x 10 = 0.008; total 0.0117875
        gemini(
            "gemini-2.5-pro",
            {
                "prompt_token_count": 5000,
                "cached_content_token_count": 4000,
                "candidates_token_count": 200,
                "thoughts_token_count": 800,
                "tool_use_prompt_token_count": 30,
            },
        ),
        "standard",
        D("0.0117875"),
        id="gemini-cache-thinking-tool-use",
    ),
    pytest.param(
        # 250000 > 200000: 250000 x 2.5 = 0.625; 1000 x 15 = 0.015; total 0.64
        gemini("gemini-2.5-pro", {"prompt_token_count": 250000, "candidates_token_count": 1000}),
        "standard",
        D("0.64"),
        id="gemini-long-context",
    ),
    pytest.param(
        # batch above 200k: 250000 x 1.25 = 0.3125; 1000 x 7.5 = 0.0075; total 0.32
        plain("gemini-2.5-pro", input_tokens=250000, output_tokens=1000),
        "batch",
        D("0.32"),
        id="gemini-batch-long-context",
    ),
    pytest.param(
        # 400 text x 0.3 = 0.00012; 600 audio x 1 = 0.0006; 10 x 2.5 = 0.000025; total 0.000745
        gemini(
            "gemini-2.5-flash",
            {
                "prompt_token_count": 1000,
                "prompt_tokens_details": [
                    {"modality": "TEXT", "token_count": 400},
                    {"modality": "AUDIO", "token_count": 600},
                ],
                "candidates_token_count": 10,
            },
        ),
        "standard",
        D("0.000745"),
        id="gemini-audio",
    ),
    pytest.param(
        # "models/" and "vertex_ai/" prefixes: 1M x 0.3 = 0.3
        plain("vertex_ai/models/gemini-2.5-flash", input_tokens=1_000_000),
        "standard",
        D("0.3"),
        id="gemini-prefixed-name",
    ),
    pytest.param(
        # Bedrock Converse dict, model from the request:
        # 120 x 0.8 = 0.000096; 1000 x 0.2 = 0.0002; 80 x 3.2 = 0.000256; total 0.000552
        extract_usage(
            {
                "usage": {
                    "inputTokens": 120,
                    "outputTokens": 80,
                    "totalTokens": 1200,
                    "cacheReadInputTokens": 1000,
                }
            }
        ).with_model("amazon.nova-pro-v1:0"),  # Converse responses do not name the model
        "standard",
        D("0.000552"),
        id="bedrock-nova-cache-read",
    ),
    pytest.param(
        # no write price: 1000 written x input price 0.8 = 0.0008
        plain("bedrock/amazon.nova-pro-v1:0", cache_write_5m_tokens=1000),
        "standard",
        D("0.0008"),
        id="bedrock-write-falls-back-to-input",
    ),
    pytest.param(
        # billed units: 5 x 2.5 = 0.0000125; 418 x 10 = 0.00418; total 0.0041925
        extract_usage(
            {
                "model": "command-r-plus-08-2024",
                "usage": {
                    "billed_units": {"input_tokens": 5, "output_tokens": 418},
                    "tokens": {"input_tokens": 71, "output_tokens": 418},
                },
            }
        ),
        "standard",
        D("0.0041925"),
        id="cohere-billed-units",
    ),
    pytest.param(
        # 40 x 0.4 = 0.000016; 60 x 0.04 = 0.0000024; 20 x 2 = 0.00004; total 0.0000584
        extract_usage(
            {
                "model": "mistral-medium-2508",
                "object": "chat.completion",
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 20,
                    "total_tokens": 120,
                    "prompt_tokens_details": {"cached_tokens": 60},
                },
            }
        ),
        "standard",
        D("0.0000584"),
        id="mistral-cached",
    ),
    pytest.param(
        # 36 x 0.27 = 0.00000972; 64 x 0.07 = 0.00000448; 10 x 1.1 = 0.000011; total 0.0000252
        extract_usage(
            {
                "model": "deepseek-chat",
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 10,
                    "total_tokens": 110,
                    "prompt_cache_hit_tokens": 64,
                    "prompt_cache_miss_tokens": 36,
                },
            }
        ),
        "standard",
        D("0.0000252"),
        id="deepseek-cache-hit",
    ),
    pytest.param(
        # 8 x 0.02 = 0.00000016
        plain("text-embedding-3-small", input_tokens=8),
        "standard",
        D("0.00000016"),
        id="embeddings",
    ),
    pytest.param(
        # batch embeddings: 1M x 0.01 = 0.01
        plain("text-embedding-3-small", input_tokens=1_000_000),
        "batch",
        D("0.01"),
        id="embeddings-batch",
    ),
    pytest.param(
        # no cached price: cached tokens at the input price: 1000 x 1 = 0.001; 1000 x 2 = 0.002
        plain("plain-model", cached_input_tokens=1000, output_tokens=1000),
        "standard",
        D("0.003"),
        id="missing-cached-price-uses-input",
    ),
    pytest.param(
        # reasoning and audio output with no own price: at the output price:
        # (100 + 50) x 2 = 0.0003
        plain("plain-model", reasoning_tokens=100, output_audio_tokens=50),
        "standard",
        D("0.0003"),
        id="missing-reasoning-price-uses-output",
    ),
    pytest.param(
        # openrouter/<vendor>/ prefix: 1000 x 3 = 0.003; 1000 x 0.75 = 0.00075; 1000 x 15 = 0.015
        plain(
            "openrouter/x-ai/grok-4",
            input_tokens=1000,
            cached_input_tokens=1000,
            output_tokens=1000,
        ),
        "standard",
        D("0.01875"),
        id="xai-via-openrouter",
    ),
    pytest.param(
        # azure/ prefix on a snapshot: 1000 x 2.5 = 0.0025; 500 x 10 = 0.005
        plain("azure/gpt-4o-2024-08-06", input_tokens=1000, output_tokens=500),
        "standard",
        D("0.0075"),
        id="azure-snapshot",
    ),
    pytest.param(
        # no batch price known: standard price, never less: 1000 x 0.15 = 0.00015
        plain("gpt-4o-mini", input_tokens=1000),
        "batch",
        D("0.00015"),
        id="batch-unknown-falls-back-to-standard",
    ),
]


@pytest.mark.parametrize(("usage", "tier", "expected"), COST_CASES)
def test_cost_cases(usage: Usage, tier: str, expected: Decimal, table: PriceTable) -> None:
    """Each hand-worked cost matches to the last digit, and the breakdown adds up."""
    cost = cost_of(usage, tier=tier, table=table)
    assert cost.total == expected
    assert sum(cost.breakdown.values(), D(0)) == cost.total
    assert all(isinstance(v, Decimal) for v in cost.breakdown.values())


def test_cost_case_count() -> None:
    """At least thirty cost cases are worked out by hand."""
    assert len(COST_CASES) >= 30


def test_cost_breakdown_names_components(table: PriceTable) -> None:
    """The breakdown names each priced component."""
    usage = plain(
        "claude-sonnet-4-5",
        input_tokens=1,
        cached_input_tokens=1,
        cache_write_5m_tokens=1,
        cache_write_1h_tokens=1,
        output_tokens=1,
        reasoning_tokens=1,
        web_search_requests=1,
    )
    cost = cost_of(usage, table=table)
    assert set(cost.breakdown) == {
        "input",
        "cached_input",
        "cache_write_5m",
        "cache_write_1h",
        "output",
        "reasoning",
        "web_search",
    }
    assert cost.breakdown["cache_write_1h"] == D("0.000006")
    assert cost.model == "claude-sonnet-4-5"


def test_unknown_model_raises(table: PriceTable) -> None:
    """A model with no price raises UnknownModelError naming it."""
    with pytest.raises(UnknownModelError) as caught:
        cost_of(plain("no-such-model", input_tokens=1), table=table)
    assert caught.value.model == "no-such-model"


def test_usage_without_model_raises(table: PriceTable) -> None:
    """Usage that names no model cannot be priced without model=."""
    with pytest.raises(UnknownModelError):
        cost_of(Usage(input_tokens=1), table=table)
    assert cost_of(Usage(input_tokens=1_000_000), "gpt-4o", table=table).total == D("2.5")


def test_unknown_tier_is_a_configuration_error(table: PriceTable) -> None:
    """A misspelt service tier is refused, not silently priced."""
    with pytest.raises(ConfigurationError):
        cost_of(plain("gpt-4o", input_tokens=1), tier="bacth", table=table)


def test_estimated_usage_gives_estimated_cost(table: PriceTable) -> None:
    """An estimated usage yields a cost marked estimated."""
    usage = Usage(input_tokens=10, model="gpt-4o", estimated=True)
    assert cost_of(usage, table=table).estimated


def test_million_micro_charges_sum_exactly(table: PriceTable) -> None:
    """One hundred thousand 10-token charges at $1/M sum to exactly $1."""
    usage = Usage(input_tokens=10, model="plain-model")
    price = table.lookup("plain-model")
    assert price is not None
    total = sum((cost_of(usage, table=table).total for _ in range(100_000)), D(0))
    assert total == D(1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("azure/gpt-4o", "gpt-4o"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1"),
        ("bedrock/global.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("vertex_ai/claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("gemini/gemini-2.5-pro", "gemini-2.5-pro"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.5-pro-preview-06-05", "gemini-2.5-pro"),
        ("openrouter/google/gemini-2.5-pro", "gemini-2.5-pro"),
        ("o3-2025-04-16", "o3"),
        ("mistral/mistral-medium-2508", "mistral-medium-2508"),
    ],
)
def test_lookup_aliases_and_snapshots(name: str, expected: str, table: PriceTable) -> None:
    """Routing prefixes, case and dated snapshots resolve to the base model."""
    price = table.lookup(name)
    assert price is not None and price.model == expected


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o-minix",  # not a version suffix
        "gpt-4o-realtime",  # another model of the family
        "claude-sonnet-4-5-turbo",
        "gpt-5.4-mini",  # a different model, not a snapshot of gpt-5.4
        "o3-pro",
        "gpt-4",  # a prefix of a known name is not that name
        "",
    ],
)
def test_lookup_never_crosses_families(name: str, table: PriceTable) -> None:
    """A longer name that adds a word, not a version, is another model: no price."""
    assert table.lookup(name) is None


def test_lookup_is_cached_and_cache_resets_on_register(table: PriceTable) -> None:
    """Lookups are cached, and registering a price invalidates the cache."""
    assert table.lookup("new-model-2025-01-01") is None
    table.register("new-model", input="1", output="2")
    price = table.lookup("new-model-2025-01-01")
    assert price is not None and price.model == "new-model"
    assert table.lookup("new-model-2025-01-01") is price


def test_register_model_overrides_default_table() -> None:
    """register_model replaces a shipped price in the default table."""
    before = lookup("gpt-4o")
    assert before is not None
    register_result = pricing.register_model("gpt-4o", input="100", output="200", provider="openai")
    assert register_result.input == D(100)
    after = lookup("gpt-4o-2024-08-06")
    assert after is not None and after.input == D(100) and after.output == D(200)
    assert cost_of(Usage(input_tokens=10, model="gpt-4o")).total == D("0.001")


def test_register_model_rejects_bad_prices() -> None:
    """Negative or non-numeric prices are a configuration error and change nothing."""
    with pytest.raises(ConfigurationError):
        pricing.register_model("my-model", input="-1", output="1")
    with pytest.raises(ConfigurationError):
        pricing.register_model("my-model", input="abc", output="1")
    assert lookup("my-model") is None


def test_load_prices_overrides_and_adds(tmp_path: Path) -> None:
    """A user's price file adds models and overrides shipped ones."""
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    "in-house-llm": {"input": "0.5", "output": "1.5", "aliases": ["ihl"]},
                    "claude-haiku-4-5": {"input": "9", "output": "9"},
                }
            }
        )
    )
    assert pricing.load_prices(str(path)) == 2
    mine = lookup("ihl")
    assert mine is not None and mine.model == "in-house-llm" and mine.output == D("1.5")
    haiku = lookup("claude-haiku-4-5-20251001")
    assert haiku is not None and haiku.input == D(9)


def test_load_prices_bad_file_changes_nothing(tmp_path: Path) -> None:
    """A price file with one bad entry is refused whole."""
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"models": {"a": {"input": "1", "output": "1"}, "b": {"input": "1"}}})
    )
    with pytest.raises(ConfigurationError, match="output"):
        pricing.load_prices(str(path))
    assert lookup("a") is None


def test_shipped_table_is_large_dated_and_exact() -> None:
    """The shipped table has 300+ entries, each with a source, a date and Decimal prices."""
    shipped = default_table()
    assert len(shipped) >= 300
    for price in shipped:
        assert price.source and price.checked
        assert isinstance(price.input, Decimal) and isinstance(price.output, Decimal)
        assert price.input >= 0 and price.output >= 0


@pytest.mark.parametrize(
    "name",
    [
        "gpt-6-sol",
        "gpt-5.5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5-pro",
        "gpt-4.1",
        "gpt-4o",
        "o3",
        "o4-mini",
        "text-embedding-3-large",
        "claude-opus-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-3-5-haiku-20241022",
        "gemini-3.1-pro-preview",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "grok-4",
        "deepseek-chat",
        "mistral-large-latest",
        "command-a",
        "embed-english-v3.0",
    ],
)
def test_shipped_table_covers_current_models(name: str) -> None:
    """The shipped table prices the models people use today."""
    assert lookup(name) is not None


def test_shipped_long_context_tiers_exist() -> None:
    """Gemini 2.5 Pro is re-priced above 200k input tokens in the shipped table."""
    price = lookup("gemini-2.5-pro")
    assert price is not None and price.long_context
    assert price.long_context[0].above_input_tokens == 200000
    assert price.long_context[0].price.input > price.input


def test_cost_of_prices_the_service_tier_the_usage_reports() -> None:
    """Price usage served in the priority tier at that tier's price, unless told otherwise."""
    from budgetguard.usage import Usage

    usage = Usage(input_tokens=1000, output_tokens=500, service_tier="priority")
    # gpt-4o-mini priority: 1000 × 0.25 / 1e6 + 500 × 1 / 1e6
    assert cost_of(usage, "gpt-4o-mini").total == Decimal("0.00075")
    assert cost_of(usage, "gpt-4o-mini", tier="standard").total == Decimal("0.00045")


def test_anthropic_usage_reads_the_tier_it_was_served_in() -> None:
    """Read Anthropic's usage.service_tier, and OpenAI's "default" as the standard tier."""
    from budgetguard.usage import extract_usage

    message = {
        "type": "message",
        "model": "claude-haiku-4-5",
        "usage": {"input_tokens": 10, "output_tokens": 5, "service_tier": "batch"},
    }
    found = extract_usage(message)
    assert found is not None and found.service_tier == "batch"
    chat = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "service_tier": "default",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    found = extract_usage(chat)
    assert found is not None and found.service_tier is None


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini"),
        ("ft:gpt-4o-2024-08-06:acme:support:B1c2D3e4", "ft:gpt-4o"),
        ("ft:gpt-3.5-turbo-0125:acme::xyz", "ft:gpt-3.5-turbo-"),
        ("gpt-4o-mini-2024-07-18.ft-0123456789abcdef", "gpt-4o-mini-2024-07-18.ft-"),
        ("ft:gpt-4.1-2025-04-14:acme::abc123", "ft:gpt-4.1-2025-04-14"),
        ("ft:gpt-4.1-mini-2025-04-14:acme:support:x1", "ft:gpt-4.1-mini-2025-04-14"),
        ("ft:gpt-4.1-nano-2025-04-14:acme::x2", "ft:gpt-4.1-nano-2025-04-14"),
        ("ft:o4-mini-2025-04-16:acme::x3", "ft:o4-mini-2025-04-16"),
        ("ft:gpt-4-0613:acme::x4", "ft:gpt-4-0613"),
    ],
)
def test_fine_tuned_models_are_priced_at_their_base_fine_tune_price(model: str, entry: str) -> None:
    """Price a fine-tune's full name at the table's fine-tune entry of its base model."""
    found = lookup(model)
    assert found is not None and found.model == entry


def test_fine_tunes_of_gpt_4_1_cost_more_than_their_base() -> None:
    """A gpt-4.1 fine-tune is charged its fine-tune price ($3/$12 per 1M), not gpt-4.1's ($2/$8)."""
    base, tuned = lookup("gpt-4.1-2025-04-14"), lookup("ft:gpt-4.1-2025-04-14:acme::abc123")
    assert base is not None and (base.input, base.output) == (D(2), D(8))
    assert tuned is not None and (tuned.input, tuned.output) == (D(3), D(12))
    assert tuned.cached_input == D("0.75") and tuned.max_output_tokens == 32768


def test_fine_tune_of_an_unpriced_base_stays_unknown() -> None:
    """Leave a fine-tune of a base with no fine-tune price unknown, not at the base price."""
    assert lookup("ft:gpt-9-turbo:acme::abc") is None
