"""The wrappers of google-genai's ``Models`` / ``AsyncModels``: one per request sent.

Patched are the private methods that each send one HTTP request
(``_generate_content``, ``_generate_content_stream``, ``_embed_content``,
the image and video ones), not the public ``generate_content``: the public
method may send several requests for one call (automatic function calling
runs the model again with each tool result; automatic continuation follows
continuation tokens), each billed for its own usage. Each request is
therefore reserved before it leaves, refused when it would break a budget
(also the second turn of a function-calling loop) and priced from its own
``usage_metadata``. They sit above the SDK's retry loop (tenacity in
``BaseApiClient._request``): a retried request is charged once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ._wrappers import Describe, GuardSource, Invoke, Wrapper, _run_async, _run_sync, guarded_method

__all__ = ["async_genai", "genai_arguments", "sync_genai"]

# A part that is not text costs about an image's tokens in an estimate.
_MEDIA = ("inline_data", "file_data", "video_metadata")


def _dumped(value: Any) -> Any:
    """Return a pydantic object's dict form (google-genai's ``types``), else ``value``."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, Mapping):
        return dump(exclude_none=True)
    return value


def _part(part: Any) -> dict[str, Any]:
    """Return one google-genai part as an OpenAI-shaped content part."""
    part = _dumped(part)
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping):
        return {"type": "image"}  # a PIL image, a File, bytes: media
    text = part.get("text")
    if isinstance(text, str):
        return {"type": "text", "text": text}
    for key in ("function_call", "function_response", "executable_code"):
        if part.get(key) is not None:
            return {"type": "text", "text": str(part[key])}
    if any(part.get(key) is not None for key in _MEDIA):
        return {"type": "image"}
    return {"type": "text", "text": ""}


def _messages(contents: Any) -> list[dict[str, Any]]:
    """Return google-genai ``contents`` (str, Part, Content, dicts, lists of them) as messages."""
    if contents is None:
        return []
    if not isinstance(contents, (list, tuple)):
        contents = [contents]
    messages: list[dict[str, Any]] = []
    loose: list[dict[str, Any]] = []  # bare parts: the SDK joins them into one user turn
    for item in contents:
        item = _dumped(item)
        if isinstance(item, Mapping) and "parts" in item:
            role = item.get("role")
            parts = item.get("parts") or []
            messages.append(
                {
                    "role": role if isinstance(role, str) else "user",
                    "content": [_part(part) for part in parts],
                }
            )
        else:
            loose.append(_part(item))
    if loose:
        messages.append({"role": "user", "content": loose})
    return messages


def _config(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _model_name(model: Any) -> str | None:
    """Return the model a google-genai ``model=`` names, without its resource path.

    ``models/gemini-2.5-flash``, ``publishers/google/models/…`` and
    ``projects/p/locations/l/publishers/google/models/…`` name
    ``gemini-2.5-flash``; a tuned model (``tunedModels/123``) keeps its name.
    """
    if not isinstance(model, str) or not model:
        return None
    head, marker, tail = model.rpartition("models/")
    if marker and tail and not head.endswith("tuned"):
        return tail
    return model


def genai_arguments(kwargs: Mapping[str, Any], streamed: bool = False) -> dict[str, Any]:
    """Read google-genai arguments (``model``, ``contents``, ``config``) as an OpenAI-shaped call.

    ``contents`` may be a string, a ``Part``, a ``Content``, their dict forms
    or a list of any of them; ``config.system_instruction`` is the system
    message, ``config.max_output_tokens`` bounds the output and
    ``config.candidate_count`` multiplies it. Embedding calls pass
    ``contents``, ``content`` or ``batch_contents``.
    """
    found: dict[str, Any] = {}
    model = _model_name(kwargs.get("model"))
    if model is not None:
        found["model"] = model
    for key in ("contents", "content", "batch_contents"):
        if kwargs.get(key) is not None:
            found["messages"] = _messages(kwargs[key])
            break
    config = kwargs.get("config")
    if config is not None:
        system = _config(config, "system_instruction")
        if system is not None and "messages" in found:
            texts = [
                part["text"]
                for message in _messages(system)
                for part in message["content"]
                if part.get("type") == "text"
            ]
            found["system"] = "\n".join(texts)
        limit = _config(config, "max_output_tokens")
        if type(limit) is int and limit >= 0:
            found["max_output_tokens"] = limit
        choices = _config(config, "candidate_count")
        if type(choices) is int and choices > 1:
            found["n"] = choices
    if streamed:
        found["stream"] = True
    return found


def _primed(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """Yield ``first`` and then the rest of the stream; closing it closes the SDK's generator."""
    yield first
    yield from rest


def _empty() -> Iterator[Any]:
    """Yield nothing: a stream that ended before its first chunk."""
    yield from ()


def _send_now(stream: Iterator[Any]) -> Iterator[Any]:
    """Send a sync stream's request now, so that an HTTP error is the call's, not a chunk's.

    The SDK's generator posts on its first ``next()``: an error there must
    release the reservation like any failed request, not be priced as a
    stream cut short.
    """
    try:
        first = next(stream)
    except StopIteration:
        return _empty()
    return _primed(first, stream)


# Operations billed per image or per second of video: the price table has no
# such prices and their replies carry no usage, so they are checked against the
# budget but cost what ``on_missing_cost`` says (nothing learned: $0). Said once.
_UNPRICED = frozenset(
    {
        "generate_images",
        "edit_image",
        "upscale_image",
        "recontext_image",
        "segment_image",
        "generate_videos",
    }
)


def _warn_unpriced(guard_of: GuardSource, operation: str) -> None:
    guard_of().warn_once(
        f"genai-unpriced:{operation}",
        f"budgetguard has no per-image or per-second prices for google-genai's "
        f"{operation}: such calls are refused when a budget has nothing left, but "
        "their cost is not known (they follow on_missing_cost); record it with "
        "budgetguard.charge(...)",
    )


def _describe(operation: str, streamed: bool, send_now: bool) -> Describe:
    """Return how the wrapper of one ``Models`` / ``AsyncModels`` method reads a call."""
    unpriced = operation in _UNPRICED

    def describe(
        guard_of: GuardSource,
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[dict[str, Any], Invoke]:
        if unpriced:
            _warn_unpriced(guard_of, operation)
        if send_now:

            def invoke(_asked: dict[str, Any]) -> Any:
                return _send_now(wrapped(*args, **kwargs))

        else:

            def invoke(_asked: dict[str, Any]) -> Any:
                return wrapped(*args, **kwargs)

        return genai_arguments(kwargs, streamed), invoke

    return describe


def sync_genai(operation: str, streamed: bool = False) -> Callable[[GuardSource], Wrapper]:
    """Return the maker of the wrapper of one request-sending ``Models`` method."""
    return guarded_method(
        _describe(operation, streamed, send_now=streamed),
        _run_sync,
        kind=f"google.genai:{operation}",
    )


def async_genai(operation: str, streamed: bool = False) -> Callable[[GuardSource], Wrapper]:
    """Return the maker of the wrapper of one request-sending ``AsyncModels`` method.

    The async stream method is a coroutine that posts and then returns an
    async generator, so its request has left (or failed) when it returns.
    """
    return guarded_method(
        _describe(operation, streamed, send_now=False),
        _run_async,
        kind=f"google.genai:{operation}",
    )
