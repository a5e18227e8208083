"""Budget the calls of the ``mistralai`` client (``Mistral``) that run a model.

Patched, sync and async (``*_async``), on the resource classes so every
``Mistral`` client is covered: ``chat.complete`` / ``stream`` (and
``parse*``, built on them), ``fim.complete`` / ``stream``,
``agents.complete`` / ``stream``, ``embeddings.create``, and the billed
conversation calls ``beta.conversations.start`` / ``append`` / ``restart``
and their ``*_stream`` twins (``run_async`` goes through them), and
``responses.create`` (streamed with ``stream=True``). The SDK of
version 1 keeps these modules at ``mistralai.<name>``, later ones at
``mistralai.client.<name>``; both are looked for.

The methods that stream (``stream``, ``*_stream``) have no ``stream=True``
argument: their wrappers say so themselves. What they return, an
``EventStream`` of events that wrap each chunk in ``.data``, comes back as
a proxy that settles once from the last event's ``usage``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ._wrappers import Describe, GuardSource, Invoke, Wrapper, _run_async, _run_sync, guarded_method

__all__ = ["MISTRAL_TARGETS", "MistralTarget"]


class MistralTarget(NamedTuple):
    """One mistralai method to patch: module (without the ``client.`` layer), class, method."""

    module: str
    cls: str
    method: str
    make: Callable[[GuardSource], Wrapper]


def _described(kwargs: Mapping[str, Any], streamed: bool) -> dict[str, Any]:
    """Return a mistralai call's arguments as the guard reads them for its estimate."""
    described = dict(kwargs)
    if "inputs" in described and "input" not in described:
        inputs = described["inputs"]
        if isinstance(inputs, (str, list)):
            # Conversations take ``inputs``: a prompt (str) or message entries.
            described["input"] = inputs
    args = described.get("completion_args")
    if isinstance(args, Mapping) and "max_tokens" not in described:
        described["max_tokens"] = args.get("max_tokens")
    described["stream"] = streamed
    return described


def _streamed(kwargs: Mapping[str, Any], streamed: bool | None) -> bool:
    """Tell whether a call streams: by its method (``stream``), else by ``stream=True``."""
    return streamed if streamed is not None else kwargs.get("stream") is True


def _describe(streamed: bool | None) -> Describe:
    """Return how a wrapper reads a call: streamed or not by its method, else by ``stream=True``."""

    def describe(
        guard_of: GuardSource,
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[dict[str, Any], Invoke]:
        return (
            _described(kwargs, _streamed(kwargs, streamed)),
            lambda _asked: wrapped(*args, **kwargs),
        )

    return describe


def _sync(streamed: bool | None) -> Callable[[GuardSource], Wrapper]:
    return guarded_method(_describe(streamed), _run_sync)


def _async(streamed: bool | None) -> Callable[[GuardSource], Wrapper]:
    return guarded_method(_describe(streamed), _run_async)


def _pairs(module: str, cls: str, once: str, streamed: str) -> tuple[MistralTarget, ...]:
    """Return the four targets of a resource: a call and a stream, sync and async."""
    return (
        MistralTarget(module, cls, once, _sync(False)),
        MistralTarget(module, cls, f"{once}_async", _async(False)),
        MistralTarget(module, cls, streamed, _sync(True)),
        MistralTarget(module, cls, f"{streamed}_async", _async(True)),
    )


MISTRAL_TARGETS: tuple[MistralTarget, ...] = (
    *_pairs("chat", "Chat", "complete", "stream"),
    *_pairs("fim", "Fim", "complete", "stream"),
    *_pairs("agents", "Agents", "complete", "stream"),
    MistralTarget("embeddings", "Embeddings", "create", _sync(False)),
    MistralTarget("embeddings", "Embeddings", "create_async", _async(False)),
    *_pairs("conversations", "Conversations", "start", "start_stream"),
    *_pairs("conversations", "Conversations", "append", "append_stream"),
    *_pairs("conversations", "Conversations", "restart", "restart_stream"),
    # The Responses API (mistralai ≥ 3): streams with stream=True, OpenAI's format.
    MistralTarget("responses", "Responses", "create", _sync(None)),
    MistralTarget("responses", "Responses", "create_async", _async(None)),
)
