"""The wrappers put around the SDK resource methods: reserve, call, price, settle.

Why the resource method and not the HTTP layer: ``Completions.create`` and
its siblings sit *outside* the SDK's retry loop (``create`` → ``_post`` →
``request`` retries inside). One wrapped call is therefore one reservation,
and only the response that finally comes back is priced: a 500 or a timeout
that the client retried produced no billed response and is charged nothing,
while the retry that succeeded is charged once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from .._call import Call, _current_call
from .._sdk_call import inside_sdk_call
from .._streams import (
    AsyncHelperStreamManagerProxy,
    AsyncMessageStreamManagerProxy,
    AsyncStreamProxy,
    HelperStreamManagerProxy,
    MessageStreamManagerProxy,
    RawResponseProxy,
    Settlement,
    StreamProxy,
    UsageMeter,
)
from ..guard import BudgetGuard
from ..scope import Scope, current_scope

__all__ = [
    "Describe",
    "Run",
    "Wrapper",
    "async_method",
    "async_request",
    "async_stream_manager",
    "guarded_method",
    "helper_stream_manager",
    "stream_manager",
    "sync_method",
    "sync_request",
]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


class GuardSource(Protocol):
    """Where the wrappers find the guard to charge, and the configured deployment names."""

    # Azure deployment names to the models they serve: what the estimate prices.
    deployments: Mapping[str, str]

    def __call__(self) -> BudgetGuard:
        """Return the guard calls are charged to now."""
        ...


# Set while an instrumented method runs, so that an SDK method which calls
# another instrumented one (helpers, older aliases) is charged once, not twice.
_inside = inside_sdk_call

# The SDKs pass every argument a helper did not receive as a sentinel
# (``openai.NOT_GIVEN`` / ``omit``, ``anthropic.NOT_GIVEN``): not a value.
_SENTINELS = frozenset({"NotGiven", "Omit"})


def _given(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return ``kwargs`` without the SDKs' "not given" sentinels."""
    for value in kwargs.values():
        if type(value).__name__ in _SENTINELS:
            return {k: v for k, v in kwargs.items() if type(v).__name__ not in _SENTINELS}
    return kwargs


class _Request:
    """What one intercepted call asks for: its estimate, model, and lazy prompt count."""

    __slots__ = ("estimate", "kind", "kwargs", "model", "user")

    def __init__(
        self,
        guard: BudgetGuard,
        kwargs: Mapping[str, Any],
        wrapped: Callable[..., Any],
        kind: str | None = None,
        deployments: Mapping[str, str] | None = None,
    ) -> None:
        given = _given(kwargs)
        named = given.get("model")
        if deployments and isinstance(named, str) and named in deployments:
            # An Azure deployment: estimate at the price of the model it serves.
            # The response names that model itself, and the cost is read from it.
            given = {**given, "model": deployments[named]}
        self.kwargs = given
        found = guard._estimate_units(given)
        if found is not None:
            self.estimate: Decimal | int | None = found[0]
            self.model: str | None = found[1]
        else:
            model = given.get("model")
            # Nothing to count (an embedding, an image, a request we do not
            # parse): the guard reserves what this method cost lately.
            self.estimate, self.model = None, model if isinstance(model, str) else None
        self.kind = kind or (
            f"{getattr(wrapped, '__module__', '')}.{getattr(wrapped, '__qualname__', '')}"
        )
        # Inside a @budgeted call, the decorator's user pays for what it calls.
        outer = _current_call.get()
        self.user = outer.user if outer is not None else None

    def tokens(self, guard: BudgetGuard) -> tuple[int, int, int] | None:
        """Estimate the call's (input, output, all) tokens, where some budget counts tokens."""
        if not guard._planner.counts_tokens(guard._budget_defs):
            return None
        from ..tokens import call_shape, count_tokens

        shape = call_shape(self.kwargs)
        if shape is None:
            return None
        given = count_tokens(shape.text_or_messages, shape.model)
        written = shape.max_output_tokens
        if written is None:
            written = guard.default_output_tokens
        return (given, written, given + written)

    def prompt_tokens(self) -> int:
        """Count the prompt's tokens (only needed when a stream reports no usage)."""
        from ..tokens import call_shape, count_tokens

        shape = call_shape(self.kwargs)
        if shape is None:
            return 0
        return count_tokens(shape.text_or_messages, shape.model)


def _raw_mode(kwargs: Mapping[str, Any]) -> str | None:
    """Return how ``with_raw_response`` / ``with_streaming_response`` asked for the response."""
    headers = kwargs.get("extra_headers")
    if isinstance(headers, Mapping):
        mode = headers.get("X-Stainless-Raw-Response")
        return mode if isinstance(mode, str) else None
    return None


def _ask_for_usage(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask an OpenAI stream to report its usage; say whether the caller had not asked."""
    options = kwargs.get("stream_options")
    if isinstance(options, Mapping):
        if options.get("include_usage"):
            return kwargs, False
        return {**kwargs, "stream_options": {**options, "include_usage": True}}, True
    if options is not None and type(options).__name__ not in _SENTINELS:
        return kwargs, False  # something we do not understand: leave it alone
    return {**kwargs, "stream_options": {"include_usage": True}}, True


def _unread(raw: str | None, streamed: bool) -> bool:
    """Tell a raw response whose body is the caller's to read, so priced when parsed.

    ``with_streaming_response`` ("stream") hands back an unread body, and a
    raw stream is read by the caller: reading either here would consume it.
    """
    return raw == "stream" or (raw is not None and streamed)


def _response_to_price(result: Any, raw: str | None) -> Any:
    """Return the object whose usage a response is priced from."""
    if raw is not None:
        # with_raw_response: an (API|LegacyAPI)Response whose parse() is
        # cached, so reading it here costs the caller nothing.
        parse = getattr(result, "parse", None)
        if callable(parse):
            return parse()
    return result


Invoke = Callable[[dict[str, Any]], Any]

# The GenAI registry's name for Azure OpenAI, and the hosts that serve it
# (the v1 API is called through the plain ``OpenAI`` client, by base_url).
_AZURE = "azure.ai.openai"
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
_azure_classes: dict[type, bool] = {}


def _provider_of(instance: Any) -> str | None:
    """Return ``azure.ai.openai`` for a call sent by an Azure OpenAI client, else ``None``.

    ``instance`` is the resource (``client.chat.completions``) or the client
    itself (the ``request`` net). The response alone says ``openai``.
    """
    client = getattr(instance, "_client", instance)
    cls = type(client)
    azure = _azure_classes.get(cls)
    if azure is None:
        # AzureOpenAI and AsyncAzureOpenAI share openai.lib.azure.BaseAzureClient.
        azure = _azure_classes[cls] = any(c.__name__ == "BaseAzureClient" for c in cls.__mro__)
    if azure:
        return _AZURE
    host = getattr(getattr(client, "base_url", None), "host", None)
    return _AZURE if isinstance(host, str) and host.endswith(_AZURE_HOSTS) else None


def _run_sync(
    guard_of: GuardSource,
    wrapped: Callable[..., Any],
    described: dict[str, Any],
    invoke: Invoke,
    injects_usage: bool,
    kind: str | None = None,
    provider: str | None = None,
) -> Any:
    """Guard one synchronous request: reserve, ``invoke`` it, price, settle.

    ``described`` is the request as keyword arguments (``model``,
    ``messages``, ``stream``, ``extra_headers``, ...); ``invoke`` sends it,
    given those arguments with ``stream_options`` added where budgetguard
    asks an OpenAI stream for its usage.
    """
    guard = guard_of()
    request = _Request(guard, described, wrapped, kind, guard_of.deployments)
    raw = _raw_mode(described)
    streamed = described.get("stream") is True
    hide = False
    asked = described
    if streamed and injects_usage:
        asked, hide = _ask_for_usage(described)
    # Refused here: BudgetExceededError before any request leaves.
    call = guard._begin(
        request.user,
        request.estimate,
        model=request.model,
        kind=request.kind,
        provider=provider,
        tokens=request.tokens(guard),
    )
    call.provider = provider
    token = _inside.set(True)
    try:
        result = invoke(asked)
    except BaseException as error:  # HTTP error, timeout, interrupt: release
        guard._finish(call, None, error=error)
        raise
    finally:
        _inside.reset(token)
    if streamed and raw is None:
        return StreamProxy(result, _settlement(guard, call, request), hide)
    if _unread(raw, streamed):
        return RawResponseProxy(result, _settlement(guard, call, request), hide, streamed)
    guard._complete(call, _response_to_price(result, raw))
    return result


async def _run_async(
    guard_of: GuardSource,
    wrapped: Callable[..., Any],
    described: dict[str, Any],
    invoke: Invoke,
    injects_usage: bool,
    kind: str | None = None,
    provider: str | None = None,
) -> Any:
    """Do ``_run_sync`` for a coroutine; ``invoke`` returns an awaitable."""
    guard = guard_of()
    request = _Request(guard, described, wrapped, kind, guard_of.deployments)
    raw = _raw_mode(described)
    streamed = described.get("stream") is True
    hide = False
    asked = described
    if streamed and injects_usage:
        asked, hide = _ask_for_usage(described)
    call = await guard._abegin(
        request.user,
        request.estimate,
        model=request.model,
        kind=request.kind,
        provider=provider,
        tokens=request.tokens(guard),
    )
    call.provider = provider
    token = _inside.set(True)
    try:
        result = await invoke(asked)
    except BaseException as error:  # CancelledError included: release
        await guard._afinish(call, None, error=error)
        raise
    finally:
        _inside.reset(token)
    if streamed and raw is None:
        return AsyncStreamProxy(result, _settlement(guard, call, request), hide)
    if _unread(raw, streamed):
        return RawResponseProxy(result, _settlement(guard, call, request), hide, streamed)
    await guard._acomplete(call, _response_to_price(result, raw))
    return result


def sync_method(guard_of: GuardSource, injects_usage: bool) -> Wrapper:
    """Return the wrapper of a synchronous resource method (``create``, ``parse``)."""

    def call_sync(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _inside.get():
            return wrapped(*args, **kwargs)
        return _run_sync(
            guard_of,
            wrapped,
            kwargs,
            lambda asked: wrapped(*args, **asked),
            injects_usage,
            provider=_provider_of(instance),
        )

    return call_sync


def async_method(guard_of: GuardSource, injects_usage: bool) -> Wrapper:
    """Return the wrapper of an async resource method; it stays a coroutine."""

    def call_async(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _inside.get():
            return wrapped(*args, **kwargs)
        return _run_async(
            guard_of,
            wrapped,
            kwargs,
            lambda asked: wrapped(*args, **asked),
            injects_usage,
            provider=_provider_of(instance),
        )

    return call_async


# How a wrapper of one SDK sends its call through the guard: ``_run_sync`` or
# ``_run_async`` (or a function choosing between them).
Run = Callable[[GuardSource, Callable[..., Any], dict[str, Any], Invoke, bool, str | None], Any]

# What a wrapper made by ``guarded_method`` learns of one call: the request as
# keyword arguments (what the estimate reads), and how to send it.
Describe = Callable[
    [GuardSource, Callable[..., Any], tuple[Any, ...], dict[str, Any]],
    tuple[dict[str, Any], Invoke],
]


def guarded_method(
    describe: Describe, run: Run, injects_usage: bool = False, kind: str | None = None
) -> Callable[[GuardSource], Wrapper]:
    """Return the maker of a wrapper that guards each call ``describe`` reads.

    The wrapper passes a call made inside another instrumented one straight
    through; any other goes to ``run`` with what ``describe(guard_of,
    wrapped, args, kwargs)`` returns: the request as keyword arguments and
    the function that sends it. The SDK modules (google-genai, mistralai,
    LiteLLM) keep their own specifics in their ``describe`` and ``run``.
    """

    def make(guard_of: GuardSource) -> Wrapper:
        def call(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            if _inside.get():
                return wrapped(*args, **kwargs)
            described, invoke = describe(guard_of, wrapped, args, kwargs)
            return run(guard_of, wrapped, described, invoke, injects_usage, kind)

        return call

    return make


# What the SDKs' clients post to when they run a model, without the query
# (the beta resources add ``?beta=true``), and whether it is an OpenAI stream
# that reports its usage only when asked.
_BILLED_PATHS = {
    "/chat/completions": True,
    "/completions": True,
    "/responses": False,
    "/responses/compact": False,
    "/embeddings": False,
    "/v1/messages": False,
}


def _billed_post(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, str] | None:
    """Return the options and path of a client ``request`` that runs a model, else ``None``."""
    options = args[1] if len(args) > 1 else kwargs.get("options")
    if getattr(options, "method", None) != "post":
        return None
    url = getattr(options, "url", None)
    if not isinstance(url, str):
        return None
    path = url.partition("?")[0]
    if path not in _BILLED_PATHS or not isinstance(getattr(options, "json_data", None), Mapping):
        return None
    return options, path


def _described(options: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return a client request as the keyword arguments of the method that would send it."""
    described = dict(options.json_data)
    described["stream"] = kwargs.get("stream") is True
    headers = getattr(options, "headers", None)
    if isinstance(headers, Mapping):
        described["extra_headers"] = headers
    return described


def _send_asked(options: Any, described: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Return how to put ``stream_options`` budgetguard added into the request's body."""

    def put(asked: dict[str, Any]) -> None:
        if asked is not described:
            options.json_data = {**options.json_data, "stream_options": asked["stream_options"]}

    return put


def sync_request(guard_of: GuardSource) -> Wrapper:
    """Return the net under every resource method: the client's ``request`` of a billed path.

    Catches what no method wrapper saw: ``with_raw_response`` taken before
    ``instrument()`` (it holds the unpatched method), resources built before
    it, and methods a newer SDK added. It sits above the retry loop, so one
    call is still one charge.
    """

    def call_sync(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        found = None if _inside.get() else _billed_post(args, kwargs)
        if found is None:
            return wrapped(*args, **kwargs)
        options, path = found
        described = _described(options, kwargs)
        put = _send_asked(options, described)

        def invoke(asked: dict[str, Any]) -> Any:
            put(asked)
            return wrapped(*args, **kwargs)

        kind = f"{type(instance).__module__.partition('.')[0]}:{path}"
        return _run_sync(
            guard_of, wrapped, described, invoke, _BILLED_PATHS[path], kind, _provider_of(instance)
        )

    return call_sync


def async_request(guard_of: GuardSource) -> Wrapper:
    """Return the async twin of ``sync_request``; it stays a coroutine."""

    def call_async(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        found = None if _inside.get() else _billed_post(args, kwargs)
        if found is None:
            return wrapped(*args, **kwargs)
        options, path = found
        described = _described(options, kwargs)
        put = _send_asked(options, described)

        def invoke(asked: dict[str, Any]) -> Any:
            put(asked)
            return wrapped(*args, **kwargs)

        kind = f"{type(instance).__module__.partition('.')[0]}:{path}"
        return _run_async(
            guard_of, wrapped, described, invoke, _BILLED_PATHS[path], kind, _provider_of(instance)
        )

    return call_async


def _settlement(guard: BudgetGuard, call: Call, request: _Request) -> Settlement:
    return Settlement(guard, call, UsageMeter(call.request_model, request.prompt_tokens))


def _manager_request(
    guard_of: GuardSource, kwargs: Mapping[str, Any], wrapped: Callable[..., Any]
) -> tuple[BudgetGuard, _Request, Scope | None]:
    """Return what a stream manager reserves with when it is entered later."""
    guard = guard_of()
    # The request leaves on entry; who pays is whoever was in scope here.
    return guard, _Request(guard, kwargs, wrapped, None, guard_of.deployments), current_scope()


def stream_manager(guard_of: GuardSource) -> Wrapper:
    """Return the wrapper of Anthropic's ``Messages.stream``: a manager that reserves on entry."""

    def call_stream(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _inside.get():
            return wrapped(*args, **kwargs)
        guard, request, scope = _manager_request(guard_of, kwargs, wrapped)

        def open_call() -> tuple[BudgetGuard, Call, Callable[[], int]]:
            call = guard._begin(
                request.user,
                request.estimate,
                model=request.model,
                scope=scope,
                kind=request.kind,
                tokens=request.tokens(guard),
            )
            return guard, call, request.prompt_tokens

        return MessageStreamManagerProxy(wrapped(*args, **kwargs), open_call)

    return call_stream


def async_stream_manager(guard_of: GuardSource) -> Wrapper:
    """Return the wrapper of ``AsyncMessages.stream``: a manager that reserves on entry."""

    def call_stream(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _inside.get():
            return wrapped(*args, **kwargs)
        guard, request, scope = _manager_request(guard_of, kwargs, wrapped)

        async def open_call() -> tuple[BudgetGuard, Call, Callable[[], int]]:
            call = await guard._abegin(
                request.user,
                request.estimate,
                model=request.model,
                scope=scope,
                kind=request.kind,
                tokens=request.tokens(guard),
            )
            return guard, call, request.prompt_tokens

        return AsyncMessageStreamManagerProxy(wrapped(*args, **kwargs), open_call)

    return call_stream


def helper_stream_manager(guard_of: GuardSource) -> Wrapper:
    """Return the wrapper of OpenAI's ``stream()`` helpers (chat completions, responses).

    The helper sends its request through the instrumented ``create`` when
    its manager is entered, so that is where the call is reserved or
    refused; the manager proxy makes ``close()`` and leaving the ``with``
    block settle it at once. Sync and async managers alike.
    """

    def call_stream(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        manager = wrapped(*args, **kwargs)
        if _inside.get():
            return manager
        if hasattr(manager, "__aenter__"):
            return AsyncHelperStreamManagerProxy(manager)
        return HelperStreamManagerProxy(manager)

    return call_stream
