"""Stream accumulators: usage from the chunks of every provider's stream."""

from __future__ import annotations

from typing import Any

import anthropic.types
import openai.types.chat
import openai.types.responses
from google.genai import types as genai_types

from budgetguard.tokens import count_tokens
from budgetguard.usage import (
    StreamAccumulator,
    Usage,
    accumulate,
    accumulator_for,
)
from budgetguard.usage.streams import (
    AnthropicStream,
    BedrockStream,
    GeminiStream,
    OpenAIChatStream,
    OpenAIResponsesStream,
)


def chat_chunk(content: str | None, usage: dict[str, Any] | None = None) -> Any:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return openai.types.chat.ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": choices,
            "usage": usage,
        }
    )


def run(accumulator: StreamAccumulator, chunks: list[Any]) -> StreamAccumulator:
    for chunk in chunks:
        accumulator.add(chunk)
    return accumulator


def test_openai_chat_usage_on_last_chunk() -> None:
    """OpenAI chat: the include_usage chunk at the end carries the whole usage."""
    chunks = [
        chat_chunk("Hel"),
        chat_chunk("lo"),
        chat_chunk(
            None,
            {
                "prompt_tokens": 20,
                "completion_tokens": 5,
                "total_tokens": 25,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
        ),
    ]
    accumulator = accumulator_for(chunks[0])
    assert isinstance(accumulator, OpenAIChatStream)
    run(accumulator, chunks)
    usage = accumulator.usage()
    assert usage is not None and not usage.estimated
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (12, 8, 5)
    assert usage.model == "gpt-4o-2024-08-06"
    assert accumulator.text() == "Hello"


def test_openai_chat_cut_off_is_estimated_from_text() -> None:
    """OpenAI chat without include_usage: output estimated from text, input from the caller."""
    accumulator = run(OpenAIChatStream(), [chat_chunk("Hello"), chat_chunk(" world, how are you?")])
    usage = accumulator.usage(prompt_tokens=42)
    assert usage is not None and usage.estimated
    assert usage.input_tokens == 42
    assert usage.output_tokens == count_tokens("Hello world, how are you?", "gpt-4o")
    assert usage.output_tokens > 0
    assert usage.model == "gpt-4o-2024-08-06"


def test_responses_stream_completed_event() -> None:
    """Responses API: response.completed carries the usage; deltas carry the text."""
    completed = openai.types.responses.ResponseCompletedEvent.model_validate(
        {
            "type": "response.completed",
            "sequence_number": 3,
            "response": {
                "id": "resp_1",
                "object": "response",
                "created_at": 1,
                "status": "completed",
                "model": "gpt-5",
                "output": [],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": {
                    "input_tokens": 100,
                    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                    "output_tokens": 50,
                    "output_tokens_details": {"reasoning_tokens": 30},
                    "total_tokens": 150,
                },
            },
        }
    )
    delta = {
        "type": "response.output_text.delta",
        "delta": "Hi",
        "item_id": "m",
        "output_index": 0,
        "content_index": 0,
        "sequence_number": 2,
    }
    accumulator = accumulator_for(delta)
    assert isinstance(accumulator, OpenAIResponsesStream)
    run(accumulator, [delta, completed])
    usage = accumulator.usage()
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (100, 20, 30)
    assert accumulator.text() == "Hi"


def test_responses_stream_cut_off_is_estimated() -> None:
    """Responses API stream that stops before response.completed is estimated."""
    delta = {"type": "response.output_text.delta", "delta": "partial answer"}
    usage = accumulate([delta, delta])
    assert usage is not None and usage.estimated
    assert usage.output_tokens == count_tokens("partial answerpartial answer", "")


def anthropic_events() -> list[Any]:
    start = anthropic.types.RawMessageStartEvent.model_validate(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "cache_read_input_tokens": 1000,
                    "cache_creation_input_tokens": 300,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": 100,
                        "ephemeral_1h_input_tokens": 200,
                    },
                    "output_tokens": 1,
                },
            },
        }
    )
    text = anthropic.types.RawContentBlockDeltaEvent.model_validate(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi!"}}
    )

    def delta(output_tokens: int) -> Any:
        return anthropic.types.RawMessageDeltaEvent.model_validate(
            {
                "type": "message_delta",
                "delta": {"stop_reason": None, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        )

    return [start, text, delta(10), delta(15), {"type": "message_stop"}]


def test_anthropic_message_delta_is_cumulative() -> None:
    """Anthropic: message_delta output_tokens overwrite (15), never sum (1 + 10 + 15)."""
    events = anthropic_events()
    accumulator = accumulator_for(events[0])
    assert isinstance(accumulator, AnthropicStream)
    run(accumulator, events)
    usage = accumulator.usage()
    assert usage == Usage(
        input_tokens=25,
        cached_input_tokens=1000,
        cache_write_5m_tokens=100,
        cache_write_1h_tokens=200,
        output_tokens=15,
        model="claude-sonnet-4-5",
        provider="anthropic",
        operation="chat",
    )
    assert accumulator.text() == "Hi!"


def test_anthropic_cut_off_after_start_keeps_reported_input() -> None:
    """Anthropic stream cut after message_start: input figures are the reported ones."""
    events = anthropic_events()[:2]
    usage = run(AnthropicStream(), events).usage()
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (25, 1000, 1)


def test_anthropic_cut_off_before_start_is_estimated() -> None:
    """Anthropic stream with only text deltas is estimated from its text."""
    events = anthropic_events()[1:2]
    usage = accumulate(events, prompt_tokens=7)
    assert usage is not None and usage.estimated
    assert (usage.input_tokens, usage.output_tokens) == (7, count_tokens("Hi!", ""))


def gemini_chunk(text: str, metadata: dict[str, Any] | None) -> Any:
    return genai_types.GenerateContentResponse.model_validate(
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}],
            "usage_metadata": metadata,
            "model_version": "gemini-2.5-flash",
        }
    )


def test_gemini_last_usage_metadata_wins() -> None:
    """Gemini: every chunk may carry usage_metadata; the last one is the total."""
    chunks = [
        gemini_chunk("Hel", {"prompt_token_count": 10, "candidates_token_count": 1}),
        gemini_chunk("lo", {"prompt_token_count": 10, "candidates_token_count": 2}),
        gemini_chunk(
            "!",
            {"prompt_token_count": 10, "candidates_token_count": 3, "thoughts_token_count": 40},
        ),
    ]
    accumulator = accumulator_for(chunks[0])
    assert isinstance(accumulator, GeminiStream)
    run(accumulator, chunks)
    usage = accumulator.usage()
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (10, 3, 40)
    assert usage.model == "gemini-2.5-flash"
    assert accumulator.text() == "Hello!"


def test_gemini_cut_off_is_estimated() -> None:
    """Gemini stream whose chunks carry no usage is estimated from its text."""
    usage = accumulate([gemini_chunk("Hello there", None)])
    assert usage is not None and usage.estimated
    assert usage.output_tokens == count_tokens("Hello there", "gemini-2.5-flash")


def bedrock_events(with_metadata: bool) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Hello"}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
    ]
    if with_metadata:
        events.append(
            {
                "metadata": {
                    "usage": {
                        "inputTokens": 30,
                        "outputTokens": 4,
                        "totalTokens": 534,
                        "cacheReadInputTokens": 500,
                    },
                    "metrics": {"latencyMs": 10},
                }
            }
        )
    return events


def test_bedrock_metadata_event() -> None:
    """Bedrock ConverseStream: the metadata event carries the usage."""
    events = bedrock_events(with_metadata=True)
    accumulator = accumulator_for(events[0])
    assert isinstance(accumulator, BedrockStream)
    run(accumulator, events)
    usage = accumulator.usage()
    assert usage is not None and not usage.estimated
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (30, 500, 4)


def test_bedrock_cut_off_is_estimated() -> None:
    """Bedrock stream without its metadata event is estimated from the text."""
    usage = accumulate(bedrock_events(with_metadata=False))
    assert usage is not None and usage.estimated
    assert usage.output_tokens == count_tokens("Hello", "")


def test_unknown_chunks_have_no_accumulator() -> None:
    """Chunks of no known stream format get no accumulator."""
    assert accumulator_for({"foo": 1}) is None
    assert accumulator_for("text") is None
    assert accumulate([{"foo": 1}]) is None
    assert accumulate([]) is None


def test_empty_accumulator_has_no_usage_unless_prompt_known() -> None:
    """A stream that showed nothing gives None, or the prompt alone when it is known."""
    assert OpenAIChatStream().usage() is None
    usage = OpenAIChatStream().usage(prompt_tokens=12)
    assert usage is not None and usage.estimated
    assert (usage.input_tokens, usage.output_tokens) == (12, 0)


def test_what_is_a_stream_is_decided_per_class_and_stays_right() -> None:
    """Generators and the SDKs' stream classes (and subclasses) are streams; nothing else is.

    Asked twice per object, so the second answer comes from what was decided
    for its class.
    """
    import openai

    from budgetguard import _streams

    def numbers() -> Any:
        yield 1

    async def anumbers() -> Any:
        yield 1

    class MyStream(openai.Stream):  # type: ignore[type-arg]
        def __init__(self) -> None:  # no HTTP response behind it
            pass

    lookalike = type("Stream", (), {"__module__": "mine.streams"})
    sdk_like = type("Stream", (), {"__module__": "anthropic._streaming"})
    cases = [
        (numbers(), True),
        (anumbers(), True),
        (MyStream(), True),
        (sdk_like(), True),
        (lookalike(), False),
        ({"choices": []}, False),
        ("text", False),
        (None, False),
    ]
    for _ in range(2):
        for value, expected in cases:
            assert _streams.is_stream(value) is expected, value
