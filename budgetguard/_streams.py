"""Streams returned by guarded functions: charged from their chunks, however they end.

``@budgeted def chat(): return client.chat.completions.create(..., stream=True)``
returns before a single token has been generated. Settling then would charge
a guess; instead the caller gets a drop-in proxy of the stream that meters its
chunks and settles the call when the stream ends, is closed, is left half way
or is garbage-collected.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from .usage import StreamMeter

if TYPE_CHECKING:
    from ._call import Call

__all__ = ["guard_returned_stream", "is_stream"]

# Stream classes of the SDKs, by module root and class name: matched by name
# so that no SDK is imported to find out.
_SDK_STREAMS = {
    "openai": frozenset({"Stream", "AsyncStream"}),
    "anthropic": frozenset({"Stream", "AsyncStream"}),
    "litellm": frozenset({"CustomStreamWrapper"}),
    "google": frozenset({"Stream", "AsyncStream"}),
}


def is_stream(result: Any) -> bool:
    """Tell whether ``result`` is a stream of chunks that a guarded call must meter."""
    if isinstance(result, (types.GeneratorType, types.AsyncGeneratorType)):
        return True  # google-genai's generate_content_stream, users' own generators
    cls = type(result)
    names = _SDK_STREAMS.get(cls.__module__.partition(".")[0])
    return names is not None and any(base.__name__ in names for base in cls.__mro__)


def guard_returned_stream(call: Call, result: Any) -> Any:
    """Return a proxy of ``result`` that settles ``call`` from its chunks, or ``None``."""
    from ._instrument._streams import AsyncStreamProxy, Settlement, StreamProxy, is_guarded

    if not is_stream(result) or is_guarded(result):
        return None
    settlement = Settlement(call.guard, call, StreamMeter(call.request_model))
    if hasattr(result, "__anext__") or isinstance(result, types.AsyncGeneratorType):
        return AsyncStreamProxy(result, settlement, False)
    return StreamProxy(result, settlement, False)
