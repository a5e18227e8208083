"""LangChain's message chunks: a chat model's ``stream()`` / ``astream()``, metered.

LangChain puts usage on ``AIMessageChunk.usage_metadata`` and combines chunks
by *adding* their usage (``AIMessageChunk.__add__`` → ``add_usage``): ChatOpenAI
reports it all on the last chunk, ChatAnthropic the input on the first and
the output in pieces. The accumulator adds it up the same way and prices the
sum once, as LangChain's own total for the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .extractors import _get, _langchain_model, from_langchain_usage
from .streams import StreamAccumulator

__all__ = ["LangChainStream", "is_langchain_chunk"]


def is_langchain_chunk(chunk: object) -> bool:
    """Tell a LangChain message chunk (``AIMessageChunk`` and its kin) from other chunks."""
    cls = type(chunk)
    return cls.__module__.startswith("langchain_core.") and hasattr(chunk, "usage_metadata")


def _added(left: Any, right: Any) -> Any:
    """Add two usage records the way LangChain's ``add_usage`` does: numbers summed, per key."""
    if not isinstance(left, Mapping):
        return dict(right)
    out = dict(left)
    for key, value in right.items():
        if isinstance(value, Mapping):
            out[key] = _added(out.get(key), value)
        elif isinstance(value, int) and not isinstance(value, bool):
            previous = out.get(key)
            out[key] = (previous if isinstance(previous, int) else 0) + value
        elif key not in out:
            out[key] = value
    return out


class LangChainStream(StreamAccumulator):
    """Accumulate LangChain ``AIMessageChunk`` objects; their usage is summed, never replaced."""

    provider = "langchain"

    def __init__(self) -> None:
        super().__init__()
        self._summed: Any = None

    def _add(self, chunk: object) -> None:
        self._note_model(_langchain_model(chunk))
        content = _get(chunk, "content")
        if isinstance(content, str):
            self._note_text(content)
        elif isinstance(content, list):
            for block in content:
                self._note_text(block if isinstance(block, str) else _get(block, "text"))
        metadata = _get(chunk, "usage_metadata")
        if isinstance(metadata, Mapping) and metadata:
            self._summed = _added(self._summed, metadata)
            self._usage = from_langchain_usage(self._summed, model=self._model)
