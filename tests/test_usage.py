"""Usage extraction from every provider's response, as SDK objects and as dicts."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from decimal import Decimal
from typing import Any

import anthropic.types
import openai.types
import openai.types.chat
import openai.types.responses
import pytest
from google.genai import types as genai_types

from budgetguard.usage import Usage, extract_usage


def chat_completion(usage: dict[str, Any], model: str = "gpt-4o-2024-08-06") -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1677652288,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!"},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def anthropic_message(usage: dict[str, Any], model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def test_openai_chat_cached_and_reasoning_are_carved_out() -> None:
    """OpenAI chat: cached tokens leave input, reasoning leaves output."""
    response = openai.types.chat.ChatCompletion.model_validate(
        chat_completion(
            {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0},
            },
            model="o3-2025-04-16",
        )
    )
    usage = extract_usage(response)
    assert usage == Usage(
        input_tokens=86,
        cached_input_tokens=1920,
        output_tokens=108,
        reasoning_tokens=192,
        model="o3-2025-04-16",
        provider="openai",
        operation="chat",
    )
    assert usage is not None and usage.total_input_tokens == 2006
    assert usage.total_output_tokens == 300


def test_openai_chat_cache_writes_audio_and_images_are_disjoint() -> None:
    """OpenAI chat: cache writes, audio and image tokens are split out of prompt_tokens."""
    response = openai.types.chat.ChatCompletion.model_validate(
        chat_completion(
            {
                "prompt_tokens": 1000,
                "completion_tokens": 50,
                "total_tokens": 1050,
                "prompt_tokens_details": {
                    "cached_tokens": 100,
                    "cache_write_tokens": 200,
                    "audio_tokens": 300,
                    "image_tokens": 50,
                },
                "completion_tokens_details": {"audio_tokens": 20},
            },
            model="gpt-realtime",
        )
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_5m_tokens) == (
        350,
        100,
        200,
    )
    assert (usage.input_audio_tokens, usage.input_image_tokens) == (300, 50)
    assert (usage.output_tokens, usage.output_audio_tokens) == (30, 20)
    assert usage.total_input_tokens == 1000


def test_openai_responses_api_usage() -> None:
    """Responses API: cached and reasoning details are carved out of their totals."""
    response = openai.types.responses.Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1741476542,
            "status": "completed",
            "model": "gpt-5-2025-08-07",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 1000,
                "input_tokens_details": {
                    "cached_tokens": 400,
                    "cache_write_tokens": 100,
                    "cache_write_tokens_details": {"ttl_30m_tokens": 60, "ttl_12h_tokens": 40},
                },
                "output_tokens": 500,
                "output_tokens_details": {"reasoning_tokens": 300},
                "total_tokens": 1500,
            },
        }
    )
    usage = extract_usage(response)
    assert usage == Usage(
        input_tokens=500,
        cached_input_tokens=400,
        cache_write_5m_tokens=60,
        cache_write_1h_tokens=40,
        output_tokens=200,
        reasoning_tokens=300,
        model="gpt-5-2025-08-07",
        provider="openai",
        operation="chat",
    )


def test_openai_embeddings_usage() -> None:
    """Embeddings: prompt tokens only, operation 'embeddings'."""
    response = openai.types.CreateEmbeddingResponse.model_validate(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.operation) == (8, 0, "embeddings")


def test_openai_legacy_completion_usage() -> None:
    """Legacy Completions: operation 'text_completion'."""
    response = openai.types.Completion.model_validate(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1589478378,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": "yes", "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (5, 7)
    assert usage.operation == "text_completion"


def test_anthropic_cache_reads_and_writes_are_on_top_of_input() -> None:
    """Anthropic: cache reads and 5m/1h writes are separate from input_tokens."""
    response = anthropic.types.Message.model_validate(
        anthropic_message(
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
            }
        )
    )
    usage = extract_usage(response)
    assert usage == Usage(
        input_tokens=50,
        cached_input_tokens=10000,
        cache_write_5m_tokens=1000,
        cache_write_1h_tokens=2000,
        output_tokens=400,
        web_search_requests=2,
        model="claude-sonnet-4-5",
        provider="anthropic",
        operation="chat",
    )


def test_anthropic_writes_without_split_are_5m_and_thinking_is_reasoning() -> None:
    """Anthropic: an unsplit cache write is a 5-minute write; thinking tokens become reasoning."""
    response = anthropic.types.Message.model_validate(
        anthropic_message(
            {
                "input_tokens": 10,
                "cache_creation_input_tokens": 700,
                "output_tokens": 900,
                "output_tokens_details": {"thinking_tokens": 600},
            }
        )
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (700, 0)
    assert (usage.output_tokens, usage.reasoning_tokens) == (300, 600)


def test_gemini_cached_inside_prompt_thinking_and_tool_use_outside() -> None:
    """Gemini: cached content leaves prompt; thoughts and tool-use prompt tokens are added."""
    response = genai_types.GenerateContentResponse.model_validate(
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}],
            "usage_metadata": {
                "prompt_token_count": 5000,
                "cached_content_token_count": 4000,
                "candidates_token_count": 200,
                "thoughts_token_count": 800,
                "tool_use_prompt_token_count": 30,
                "total_token_count": 6030,
            },
            "model_version": "gemini-2.5-pro",
        }
    )
    usage = extract_usage(response)
    assert usage == Usage(
        input_tokens=1030,
        cached_input_tokens=4000,
        output_tokens=200,
        reasoning_tokens=800,
        model="gemini-2.5-pro",
        provider="gcp.gen_ai",
        operation="generate_content",
    )


def test_gemini_audio_modality_is_split_out() -> None:
    """Gemini: uncached audio prompt tokens go to input_audio_tokens."""
    response = genai_types.GenerateContentResponse.model_validate(
        {
            "usage_metadata": {
                "prompt_token_count": 1000,
                "prompt_tokens_details": [
                    {"modality": "TEXT", "token_count": 400},
                    {"modality": "AUDIO", "token_count": 600},
                ],
                "candidates_token_count": 10,
            },
            "model_version": "gemini-2.5-flash",
        }
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.input_audio_tokens) == (400, 600)


def test_bedrock_converse_cache_details_split_by_ttl() -> None:
    """Bedrock Converse: camelCase usage, cache on top of input, cacheDetails split by TTL."""
    response = {
        "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": 120,
            "outputTokens": 80,
            "totalTokens": 1400,
            "cacheReadInputTokens": 1000,
            "cacheWriteInputTokens": 200,
            "cacheDetails": [{"inputTokens": 50, "ttl": "1h"}, {"inputTokens": 150, "ttl": "5m"}],
        },
        "metrics": {"latencyMs": 100},
    }
    usage = extract_usage(response)
    assert usage == Usage(
        input_tokens=120,
        cached_input_tokens=1000,
        cache_write_5m_tokens=150,
        cache_write_1h_tokens=50,
        output_tokens=80,
        provider="aws.bedrock",
        operation="chat",
    )


def test_cohere_v2_prefers_billed_units() -> None:
    """Cohere v2: billed_units win over raw tokens."""
    response = {
        "id": "c1",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        "finish_reason": "COMPLETE",
        "usage": {
            "billed_units": {"input_tokens": 5, "output_tokens": 418},
            "tokens": {"input_tokens": 71, "output_tokens": 420},
        },
    }
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.provider) == (5, 418, "cohere")


def test_cohere_v1_meta_billed_units() -> None:
    """Cohere v1: billed units under meta."""
    usage = extract_usage(
        {"text": "hi", "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 4}}}
    )
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (3, 4)


def test_mistral_dict_is_openai_shaped_with_provider() -> None:
    """Mistral: OpenAI-shaped usage, cached inside prompt, provider mistral_ai."""
    response = chat_completion(
        {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
        model="mistral-large-latest",
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.provider) == (40, 60, "mistral_ai")


def test_deepseek_cache_hit_tokens() -> None:
    """DeepSeek: prompt_cache_hit_tokens are cache reads inside prompt_tokens."""
    response = chat_completion(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "total_tokens": 110,
            "prompt_cache_hit_tokens": 64,
            "prompt_cache_miss_tokens": 36,
        },
        model="deepseek-chat",
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.provider) == (36, 64, "deepseek")


def test_litellm_style_anthropic_cache_fields() -> None:
    """LiteLLM: cache_read/cache_creation fields are inside prompt_tokens and carved out."""
    response = chat_completion(
        {
            "prompt_tokens": 3050,
            "completion_tokens": 10,
            "total_tokens": 3060,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 1000,
        },
        model="anthropic/claude-sonnet-4-5",
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_5m_tokens) == (
        50,
        2000,
        1000,
    )


def test_no_usage_gives_none() -> None:
    """A response with no usage we recognise gives None, never a zero Usage."""
    assert extract_usage(None) is None
    assert extract_usage({"id": "x", "choices": []}) is None
    assert extract_usage(object()) is None
    assert extract_usage("text") is None


def test_bare_usage_block_is_understood() -> None:
    """A usage block on its own (OpenAI or Anthropic shape) is understood."""
    usage = extract_usage({"prompt_tokens": 10, "completion_tokens": 5})
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (10, 5)
    usage = extract_usage({"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 2})
    assert usage is not None and usage.cached_input_tokens == 2


def test_usage_addition_and_totals() -> None:
    """Usage adds bucket by bucket and keeps the first model named."""
    a = Usage(input_tokens=1, output_tokens=2, model="m")
    b = Usage(cached_input_tokens=3, reasoning_tokens=4, model="n", estimated=True)
    total = a + b
    assert (total.input_tokens, total.cached_input_tokens, total.reasoning_tokens) == (1, 3, 4)
    assert (total.model, total.estimated, total.total_tokens) == ("m", True, 10)


def test_usage_rejects_negative_counts() -> None:
    """A negative or non-int count is refused."""
    with pytest.raises(ValueError, match="input_tokens"):
        Usage(input_tokens=-1)
    with pytest.raises(ValueError, match="output_tokens"):
        Usage(output_tokens=1.5)  # type: ignore[arg-type]


def test_langchain_message_usage_is_read_as_langchain_not_gemini() -> None:
    """Read an AIMessage's usage_metadata: cache reads and reasoning out of the totals."""
    messages = pytest.importorskip("langchain_core.messages")
    message = messages.AIMessage(
        content="Hello",
        response_metadata={"model_name": "gpt-4o-mini-2024-07-18", "model_provider": "openai"},
        usage_metadata={
            "input_tokens": 1000,
            "output_tokens": 500,
            "total_tokens": 1500,
            "input_token_details": {"cache_read": 200},
            "output_token_details": {"reasoning": 100},
        },
    )
    usage = extract_usage(message)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens) == (800, 200)
    assert (usage.output_tokens, usage.reasoning_tokens) == (400, 100)
    assert usage.model == "gpt-4o-mini-2024-07-18"


def test_budgeted_function_returning_a_langchain_message_is_charged() -> None:
    """Charge a @budgeted function that returns a LangChain AIMessage what its usage costs."""
    from decimal import Decimal

    from budgetguard import BudgetGuard

    messages = pytest.importorskip("langchain_core.messages")
    guard = BudgetGuard(metrics=False, on_missing_cost="raise")

    @guard.budgeted(user="alice", estimate="0.01")
    def ask() -> Any:
        return messages.AIMessage(
            content="Hello",
            response_metadata={"model_name": "gpt-4o-mini"},
            usage_metadata={"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500},
        )

    ask()
    # gpt-4o-mini: 1000 × 0.15 / 1e6 + 500 × 0.6 / 1e6
    assert guard.spend("alice") == Decimal("0.00045")
    guard.close()


def test_usage_is_immutable() -> None:
    """A Usage refuses assignment and deletion of any field, like the frozen dataclass it was."""
    usage = Usage(input_tokens=5, model="gpt-4o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.input_tokens = 6  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del usage.model  # type: ignore[misc]
    with pytest.raises(AttributeError):
        usage.extra = 1  # type: ignore[attr-defined]
    assert usage.input_tokens == 5 and usage.model == "gpt-4o"


def test_usage_compares_hashes_and_prints_by_fields() -> None:
    """Equal fields make equal, equally hashed Usages; the repr names every field."""
    one = Usage(3, 4, model="m", reported_cost=Decimal("0.5"), cost_reporter="litellm")
    two = Usage(
        input_tokens=3,
        cached_input_tokens=4,
        model="m",
        reported_cost=Decimal("0.5"),
        cost_reporter="litellm",
    )
    assert one == two and hash(one) == hash(two)
    assert one != Usage(3, 4, model="other", reported_cost=Decimal("0.5"), cost_reporter="litellm")
    assert one != (3, 4)
    assert repr(Usage(output_tokens=2)) == (
        "Usage(input_tokens=0, cached_input_tokens=0, cache_write_5m_tokens=0, "
        "cache_write_1h_tokens=0, output_tokens=2, reasoning_tokens=0, input_audio_tokens=0, "
        "output_audio_tokens=0, input_image_tokens=0, web_search_requests=0, model=None, "
        "provider=None, operation=None, estimated=False, service_tier=None, "
        "reported_cost=None, cost_reporter=None)"
    )


def test_usage_copies_pickles_and_answers_dataclass_helpers() -> None:
    """pickle, copy, dataclasses.replace/fields/asdict and match all see the same fields."""
    usage = Usage(10, output_tokens=7, model="m", service_tier="flex", estimated=True)
    assert pickle.loads(pickle.dumps(usage)) == usage
    assert copy.copy(usage) == usage and copy.deepcopy(usage) == usage
    changed = dataclasses.replace(usage, model="n")
    assert changed == usage.replace(model="n") == usage.with_model("n")
    assert changed.model == "n" and changed.input_tokens == 10 and usage.model == "m"
    assert [f.name for f in dataclasses.fields(Usage)][:2] == [
        "input_tokens",
        "cached_input_tokens",
    ]
    assert dataclasses.asdict(usage)["service_tier"] == "flex"
    match usage:
        case Usage(10, output_tokens=7):
            pass
        case _:
            pytest.fail("positional and keyword patterns match the fields")
    with pytest.raises(TypeError, match="no field 'colour'"):
        usage.replace(colour="red")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"input_tokens": -1}, "Usage.input_tokens must be a non-negative int, got -1"),
        ({"web_search_requests": True}, "Usage.web_search_requests must be a non-negative int"),
        ({"output_tokens": 1.0}, "Usage.output_tokens must be a non-negative int, got 1.0"),
        ({"reasoning_tokens": -(2**70)}, "Usage.reasoning_tokens must be a non-negative int"),
        ({"reported_cost": Decimal("NaN")}, "reported_cost must be a finite, non-negative"),
        ({"reported_cost": Decimal(-1)}, "reported_cost must be a finite, non-negative"),
        ({"reported_cost": 0.5}, "reported_cost must be a finite, non-negative"),
    ],
)
def test_usage_rejects_bad_counts_naming_the_field(arguments: dict[str, Any], message: str) -> None:
    """A negative, boolean or non-int count, or a bad reported cost, raises naming the field."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Usage(**arguments)
