"""Accumulate usage from a streamed response, chunk by chunk.

Each provider reports a stream's usage its own way:

- OpenAI Chat Completions: the last chunk carries ``usage`` (with
  ``stream_options={"include_usage": True}``); earlier chunks carry none.
- OpenAI Responses: the ``response.completed`` event carries ``response.usage``.
- Anthropic: ``message_start`` carries the input and cache figures;
  ``message_delta`` carries ``usage.output_tokens`` *cumulatively*, so the
  last value is kept, never summed.
- google-genai: every chunk may carry ``usage_metadata``; the last one wins.
- Bedrock ConverseStream: the ``metadata`` event carries ``usage``.
- mistralai: each event wraps an OpenAI-shaped chunk in ``.data``; the last
  one carries ``usage``. Conversation streams end with a
  ``conversation.response.done`` event that carries it.

A chunk whose usage cannot be read (see ``extract_usage``) makes the whole
stream's usage unreadable: ``usage()`` is ``None``, with a warning naming the
field, and the guard's ``on_missing_cost`` policy decides the charge.

A stream that ends (or is abandoned) before any usage arrives is estimated
from the text seen, with ``estimated=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._record import Usage
from .extractors import (
    UnreadableUsage,
    _get,
    _int,
    _warn_unreadable,
    from_anthropic_usage,
    from_bedrock_usage,
    from_gemini_usage,
    from_responses_usage,
    gemini_rest_to_sdk,
    read_usage,
    with_service_tier,
    with_web_search_calls,
)

__all__ = [
    "AnthropicStream",
    "BedrockStream",
    "GeminiStream",
    "MistralStream",
    "OpenAIChatStream",
    "OpenAIResponsesStream",
    "StreamAccumulator",
    "StreamMeter",
    "accumulate",
    "accumulator_for",
]

# Text kept for an estimate is capped: a runaway stream must not hold memory.
_TEXT_LIMIT = 4_000_000


class StreamAccumulator:
    """Collect a stream's usage and text; subclasses know one provider's events."""

    provider: str | None = None
    operation: str | None = "chat"

    def __init__(self) -> None:
        self._usage: Usage | None = None
        self._parts: list[str] = []
        self._chars = 0
        self._truncated = 0
        self._model: str | None = None
        self.chunks = 0
        # Why the stream's usage cannot be read, once a chunk showed it cannot.
        self.unreadable: str | None = None

    @property
    def model(self) -> str | None:
        """Return the model the stream names, once a chunk has named it."""
        return self._model

    def add(self, chunk: object) -> None:
        """Take one chunk or event of the stream into account."""
        self.chunks += 1
        try:
            self._add(chunk)
        except UnreadableUsage as error:
            self._unreadable(str(error))
        except Exception as error:  # a chunk that raises when read: not the caller's fault
            self._unreadable(
                f"reading a {type(chunk).__qualname__} chunk raised "
                f"{type(error).__qualname__}: {error}"
            )

    def _unreadable(self, why: str) -> None:
        if self.unreadable is None:
            self.unreadable = why
            _warn_unreadable(f"{why}; treating the stream as one without usage")

    def _add(self, chunk: object) -> None:
        usage = read_usage(chunk)
        if usage is not None:
            self._usage = usage
        self._note_model(_get(chunk, "model"))

    def _note_model(self, model: Any) -> None:
        if self._model is None and isinstance(model, str) and model:
            self._model = model

    def _note_text(self, text: Any) -> None:
        if not isinstance(text, str) or not text:
            return
        room = _TEXT_LIMIT - self._chars
        if room <= 0:
            self._truncated += len(text)
            return
        self._parts.append(text[:room])
        self._chars += min(len(text), room)
        self._truncated += max(len(text) - room, 0)

    def text(self) -> str:
        """Return the text seen so far (what an estimate is counted from)."""
        return "".join(self._parts)

    @property
    def has_usage(self) -> bool:
        """Tell whether the provider's own usage report has arrived."""
        return self._usage is not None

    def usage(self, prompt_tokens: int | None = None) -> Usage | None:
        """Return the stream's usage: as reported, or estimated from its text.

        Without a report, output is counted from the text seen and input is
        ``prompt_tokens`` (the caller's pre-call count) or 0; the result is
        marked ``estimated``. ``None`` when the stream showed nothing at all,
        or when a chunk carried usage that cannot be read.
        """
        if self.unreadable is not None:
            return None
        usage = self._usage
        if usage is not None:
            if usage.model is None and self._model is not None:
                usage = usage.replace(model=self._model)
            return usage
        if not self.chunks and prompt_tokens is None:
            return None
        from ..tokens import count_tokens

        model = self._model or ""
        output = count_tokens(self.text(), model) if self._parts else 0
        if self._truncated:
            # Past the cap, count the rest at the usual four characters a token.
            output += -(-self._truncated // 4)
        return Usage(
            input_tokens=prompt_tokens or 0,
            output_tokens=output,
            model=self._model,
            provider=self.provider,
            operation=self.operation,
            estimated=True,
        )


class OpenAIChatStream(StreamAccumulator):
    """Accumulate ``ChatCompletionChunk`` objects (and OpenAI-shaped chunks of LiteLLM, Mistral)."""

    provider = "openai"

    def _add(self, chunk: object) -> None:
        self._note_model(_get(chunk, "model"))
        for choice in _get(chunk, "choices") or ():
            delta = _get(choice, "delta")
            self._note_text(_get(delta, "content"))
            self._note_text(_get(delta, "reasoning_content"))
            for call in _get(delta, "tool_calls") or ():
                function = _get(call, "function")
                self._note_text(_get(function, "name"))
                self._note_text(_get(function, "arguments"))
            # Legacy Completions stream text on the choice itself.
            self._note_text(_get(choice, "text"))
        if _get(chunk, "usage") is not None:
            usage = read_usage(chunk)
            if usage is not None:
                self._usage = usage


class MistralStream(OpenAIChatStream):
    """Accumulate mistralai stream events: each wraps its chunk in ``.data``.

    Chat, FIM and agents streams send ``CompletionEvent(data=CompletionChunk)``,
    whose last chunk carries ``usage``; conversation streams send events with
    a ``type``, and ``conversation.response.done`` carries the usage.
    """

    provider = "mistral_ai"

    def _add(self, chunk: object) -> None:
        data = _get(chunk, "data")
        if data is None:
            data = chunk
        kind = _get(data, "type")
        if isinstance(kind, str):
            if kind == "conversation.response.done":
                usage = read_usage(data)
                if usage is not None:
                    self._usage = usage.replace(provider=self.provider)
            elif kind == "message.output.delta":
                self._note_text(_get(data, "content"))
            elif kind.startswith("response."):
                # The Responses API in OpenAI's format: the final event holds the response.
                if _get(_get(data, "response"), "usage") is not None:
                    usage = read_usage(data)
                    if usage is not None:
                        self._usage = usage.replace(provider=self.provider)
                if kind.endswith(".delta"):
                    self._note_text(_get(data, "delta"))
            self._note_model(_get(data, "model"))
            return
        super()._add(data)
        if self._usage is not None and self._usage.provider != self.provider:
            self._usage = self._usage.replace(provider=self.provider)


class OpenAIResponsesStream(StreamAccumulator):
    """Accumulate Responses API stream events; ``response.completed`` holds the usage."""

    provider = "openai"

    def _add(self, chunk: object) -> None:
        kind = _get(chunk, "type")
        response = _get(chunk, "response")
        if response is not None:
            self._note_model(_get(response, "model"))
            usage = _get(response, "usage")
            # "response.completed", and also "incomplete" / "failed": those are billed too.
            if usage is not None:
                found = from_responses_usage(usage, model=_get(response, "model"))
                found = with_web_search_calls(found, response)
                self._usage = with_service_tier(found, response, usage)
        if isinstance(kind, str) and kind.endswith(".delta"):
            self._note_text(_get(chunk, "delta"))


class AnthropicStream(StreamAccumulator):
    """Accumulate Anthropic Messages stream events.

    ``message_start`` gives input and cache figures; each ``message_delta``
    gives the cumulative output so far (and, on newer APIs, cumulative input
    figures), which replace, never add to, what came before.
    """

    provider = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[str, Any] = {}

    def _add(self, chunk: object) -> None:
        kind = _get(chunk, "type")
        if kind == "message_start":
            message = _get(chunk, "message")
            self._note_model(_get(message, "model"))
            self._merge(_get(message, "usage"))
        elif kind == "message_delta":
            self._merge(_get(chunk, "usage"))
        elif kind == "content_block_delta":
            delta = _get(chunk, "delta")
            for key in ("text", "thinking", "partial_json"):
                self._note_text(_get(delta, key))

    def _merge(self, usage: Any) -> None:
        if usage is None:
            return
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cache_creation",
            "server_tool_use",
            "output_tokens_details",
            "service_tier",
        ):
            value = _get(usage, key)
            if value is not None:
                # Cumulative figures: the latest value is the whole count so far.
                self._fields[key] = value
        found = from_anthropic_usage(self._fields, model=self._model)
        self._usage = with_service_tier(found, None, self._fields)


class GeminiStream(StreamAccumulator):
    """Accumulate google-genai response chunks; the last ``usage_metadata`` wins."""

    provider = "gcp.gen_ai"
    operation = "generate_content"

    def _add(self, chunk: object) -> None:
        if type(chunk) is dict and ("usageMetadata" in chunk or "modelVersion" in chunk):
            chunk = gemini_rest_to_sdk(chunk)
        self._note_model(_get(chunk, "model_version"))
        for candidate in _get(chunk, "candidates") or ():
            for part in _get(_get(candidate, "content"), "parts") or ():
                self._note_text(_get(part, "text"))
        metadata = _get(chunk, "usage_metadata")
        if metadata is not None and (
            _int(_get(metadata, "prompt_token_count"))
            or _int(_get(metadata, "candidates_token_count"))
            or _int(_get(metadata, "total_token_count"))
        ):
            self._usage = from_gemini_usage(metadata, model=self._model)


class BedrockStream(StreamAccumulator):
    """Accumulate Bedrock ConverseStream events; the ``metadata`` event holds the usage."""

    provider = "aws.bedrock"

    def _add(self, chunk: object) -> None:
        delta = _get(_get(chunk, "contentBlockDelta"), "delta")
        if delta is not None:
            self._note_text(_get(delta, "text"))
            self._note_text(_get(_get(delta, "toolUse"), "input"))
            self._note_text(_get(_get(delta, "reasoningContent"), "text"))
        metadata = _get(chunk, "metadata")
        if metadata is not None and _get(metadata, "usage") is not None:
            self._usage = from_bedrock_usage(_get(metadata, "usage"), model=self._model)


_ANTHROPIC_EVENTS = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "ping",
    }
)


_BEDROCK_EVENTS = (
    "messageStart",
    "contentBlockDelta",
    "contentBlockStart",
    "metadata",
    "messageStop",
)


def _langchain_accumulator(chunk: object) -> StreamAccumulator | None:
    """Return an accumulator for a LangChain message chunk (``usage/_langchain.py``), else None."""
    if not type(chunk).__module__.startswith("langchain_core."):
        return None
    from ._langchain import LangChainStream, is_langchain_chunk

    return LangChainStream() if is_langchain_chunk(chunk) else None


def _is_mistral_event(chunk: object) -> bool:
    """Tell a mistralai stream event: a ``CompletionEvent`` or ``ConversationEvents``."""
    if type(chunk).__module__.partition(".")[0] == "mistralai":
        return True
    if type(chunk) is not dict or set(chunk) - {"event", "data", "id", "retry"}:
        return False
    data = chunk.get("data")
    # A plain-dict event wrapping a chunk (``{"data": {"choices": ...}}``).
    return isinstance(data, dict) and ("choices" in data or "type" in data)


def accumulator_for(chunk: object) -> StreamAccumulator | None:
    """Return a fresh accumulator for the stream whose first chunk or event is ``chunk``.

    ``None`` when the chunk belongs to no stream format known here. The chunk
    itself is not added: pass it to ``add`` as well.
    """
    langchain = _langchain_accumulator(chunk)
    if langchain is not None:
        return langchain
    if _is_mistral_event(chunk):
        return MistralStream()
    kind = _get(chunk, "type")
    if isinstance(kind, str):
        if kind in _ANTHROPIC_EVENTS:
            return AnthropicStream()
        if kind.startswith("response."):
            return OpenAIResponsesStream()
    if (
        _get(chunk, "usage_metadata") is not None
        or _get(chunk, "usageMetadata") is not None
        or _get(chunk, "candidates") is not None
    ):
        return GeminiStream()
    obj = _get(chunk, "object")
    if obj in ("chat.completion.chunk", "text_completion") or _get(chunk, "choices") is not None:
        return OpenAIChatStream()
    for key in _BEDROCK_EVENTS:
        if _get(chunk, key) is not None:
            return BedrockStream()
    return None


def accumulate(chunks: Iterable[object], *, prompt_tokens: int | None = None) -> Usage | None:
    """Return the usage of a whole stream (reported, or estimated when it never came)."""
    accumulator: StreamAccumulator | None = None
    for chunk in chunks:
        if accumulator is None:
            accumulator = accumulator_for(chunk)
            if accumulator is None:
                return None
        accumulator.add(chunk)
    if accumulator is None:
        return None
    return accumulator.usage(prompt_tokens=prompt_tokens)


class StreamMeter:
    """Watch a stream's chunks and read its usage when it ends.

    The right accumulator is picked from the first chunk; streams of things
    that are not provider chunks are ignored. ``prompt_tokens``, when given,
    counts the prompt (lazily, only when needed) for a stream that ends with
    no usage report: it was still billed for its whole prompt.
    """

    __slots__ = ("_accumulator", "_decided", "_prompt_tokens", "request_model")

    def __init__(
        self, request_model: str | None, prompt_tokens: Callable[[], int] | None = None
    ) -> None:
        self.request_model = request_model
        self._prompt_tokens = prompt_tokens
        self._accumulator: StreamAccumulator | None = None
        self._decided = False

    @property
    def recognised(self) -> bool:
        """Tell whether the chunks seen so far are a provider's stream chunks."""
        return self._accumulator is not None

    def add(self, chunk: Any) -> None:
        """Look at one chunk."""
        if not self._decided:
            self._decided = True
            if chunk is None or isinstance(chunk, (str, bytes, int, float)):
                return
            self._accumulator = accumulator_for(chunk)
        if self._accumulator is not None:
            self._accumulator.add(chunk)

    def usage(self) -> Usage | None:
        """Return the reported usage, else an estimate from the prompt and the text seen."""
        accumulator = self._accumulator
        if self._prompt_tokens is None:
            return accumulator.usage() if accumulator is not None else None
        if accumulator is not None:
            if accumulator.unreadable is not None:
                return None  # the guard's on_missing_cost decides, not a guess
            if accumulator.has_usage:
                return accumulator.usage()
            return accumulator.usage(self._prompt_tokens())
        return Usage(
            input_tokens=self._prompt_tokens(),
            output_tokens=0,
            model=self.request_model,
            estimated=True,
        )
