"""Budget LiteLLM's entry points: ``litellm.completion``, ``embedding``, ``responses``, ...

Patched on the ``litellm`` module, sync and async: ``completion`` /
``acompletion``, ``text_completion`` / ``atext_completion``, ``embedding``
/ ``aembedding`` and ``responses`` / ``aresponses`` where the installed
version has them. ``litellm.Router`` calls them, so it is covered too; a
name imported with ``from litellm import completion`` *before*
``instrument()`` keeps the unpatched function.

LiteLLM sends most providers' requests through the official clients
(``openai/...`` models through ``openai.OpenAI``): the call is guarded once,
here, at the entry point, and the client's own instrumented methods below it
pass it through (the same flag that keeps an SDK helper from being charged
twice). The charge is LiteLLM's own ``response._hidden_params
["response_cost"]`` where it worked one out (a stream's is in its last
chunk's ``usage.cost``), else the usage priced from budgetguard's table.

Streams ask for usage (``stream_options={"include_usage": True}``) when the
caller did not; the extra usage-only chunk is then hidden from the caller.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from ._wrappers import GuardSource, Invoke, Wrapper, _run_async, _run_sync, guarded_method

__all__ = ["LITELLM_TARGETS", "LiteLLMTarget"]


class LiteLLMTarget(NamedTuple):
    """One function of the ``litellm`` module to patch, and how to wrap it."""

    module: str
    function: str
    make: Callable[[GuardSource], Wrapper]


class _Binder:
    """Read a call, naming its positional arguments (``completion("gpt-4o", messages)``)."""

    __slots__ = ("names", "wrapped")

    def __init__(self) -> None:
        self.wrapped: Callable[..., Any] | None = None
        self.names: tuple[str, ...] = ()

    def describe(
        self,
        guard_of: GuardSource,
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[dict[str, Any], Invoke]:
        """Return the call's arguments by name, and how to send it (``Describe``)."""
        described = kwargs
        if args:
            if wrapped is not self.wrapped:
                try:
                    parameters = list(inspect.signature(wrapped).parameters.values())
                except (TypeError, ValueError):
                    parameters = []
                self.names = tuple(
                    p.name
                    for p in parameters
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                )
                self.wrapped = wrapped
            described = {**dict(zip(self.names, args, strict=False)), **kwargs}
        return described, lambda asked: wrapped(*args, **_added(kwargs, described, asked))


def _run_completion(
    guard_of: GuardSource,
    wrapped: Callable[..., Any],
    described: dict[str, Any],
    invoke: Invoke,
    injects_usage: bool,
    kind: str | None,
) -> Any:
    """Guard a sync entry point's call; ``completion(acompletion=True)`` returns a coroutine."""
    if described.get("acompletion") is True:
        return _run_async(guard_of, wrapped, described, invoke, injects_usage, kind)
    return _run_sync(guard_of, wrapped, described, invoke, injects_usage, kind)


def _sync(injects_usage: bool) -> Callable[[GuardSource], Wrapper]:
    return guarded_method(_Binder().describe, _run_completion, injects_usage)


def _async(injects_usage: bool) -> Callable[[GuardSource], Wrapper]:
    return guarded_method(_Binder().describe, _run_async, injects_usage)


def _added(
    kwargs: dict[str, Any], described: dict[str, Any], asked: dict[str, Any]
) -> dict[str, Any]:
    """Return ``kwargs`` with the ``stream_options`` budgetguard added, if it added them."""
    if asked is described:
        return kwargs
    return {**kwargs, "stream_options": asked["stream_options"]}


LITELLM_TARGETS: tuple[LiteLLMTarget, ...] = (
    LiteLLMTarget("litellm", "completion", _sync(injects_usage=True)),
    LiteLLMTarget("litellm", "acompletion", _async(injects_usage=True)),
    LiteLLMTarget("litellm", "text_completion", _sync(injects_usage=True)),
    LiteLLMTarget("litellm", "atext_completion", _async(injects_usage=True)),
    LiteLLMTarget("litellm", "embedding", _sync(injects_usage=False)),
    LiteLLMTarget("litellm", "aembedding", _async(injects_usage=False)),
    LiteLLMTarget("litellm", "responses", _sync(injects_usage=False)),
    LiteLLMTarget("litellm", "aresponses", _async(injects_usage=False)),
)
