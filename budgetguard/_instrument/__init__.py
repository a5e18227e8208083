"""Budget every call of the official LLM clients and LiteLLM, process-wide.

``budgetguard.instrument()`` patches the SDKs' resource classes (so every
client, ``OpenAI``, ``AzureOpenAI``, ``AsyncOpenAI``, ``Anthropic``, ...,
old and new, is covered) and ``uninstrument()`` takes its wrappers off
again. Both are idempotent. Only libraries that are installed are patched; an
absent one is never imported.

Patched: ``openai`` ≥ 1 — ``chat.completions.create`` and ``parse``,
``responses.create``, ``parse`` and ``compact`` (also under ``beta``),
``embeddings.create``, ``completions.create``; ``anthropic`` —
``messages.create``, ``parse`` and ``stream`` (also under ``beta``); sync and
async. The SDKs' own helpers built on these (``chat.completions.stream``,
``responses.stream``, Anthropic's tool runners) are covered through them
(the OpenAI ``stream()`` managers are wrapped too, so that ``close()`` and
leaving ``with`` settle at once);
``tests/instrument/test_coverage.py`` walks the installed SDKs and fails on
a billed method that is not. Below them, the clients' ``request`` is a net
for a model-running path (``/chat/completions``, ``/responses``,
``/v1/messages``, ...) that no patched method sent: ``with_raw_response``
taken before ``instrument()``, resources built before it, methods a newer
SDK adds. ``mistralai``: see ``_mistral.py``; LiteLLM's entry points
(``litellm.completion``, ...): see ``_litellm.py``, patched when the program
imports ``litellm`` (it takes seconds to import, so ``instrument()`` does not).

Also patched, each only when installed (see ``_genai.py`` and
``_bedrock.py``): ``google-genai`` — the ``Models`` / ``AsyncModels``
methods that each send one request (``_generate_content``,
``_generate_content_stream``, ``_embed_content`` and the image and video
ones), so that the public ``generate_content``, ``generate_content_stream``,
``embed_content``, chats, automatic function calling and automatic
continuation are guarded and priced request by request; ``botocore`` —
``BaseClient._make_api_call``, filtered to the ``bedrock-runtime``
operations ``Converse``, ``ConverseStream``, ``InvokeModel`` and
``InvokeModelWithResponseStream`` (every other call passes straight
through). Not guarded yet: google-genai's batch and tuning jobs, Live API
and Interactions API; Bedrock's ``ApplyGuardrail``, ``StartAsyncInvoke`` and
bidirectional stream; aiobotocore. ``test_coverage.py`` fails on a billed
method or operation of either SDK that is neither guarded nor listed so.

Each call:

1. who pays: the user of the current ``budget_scope`` (inside a
   ``@budgeted`` function, that function's user);
2. the estimate: the call's own arguments (``model``, ``messages`` /
   ``input``, ``max_tokens`` / ``max_completion_tokens`` /
   ``max_output_tokens``) priced from the price table;
3. reserve it on every budget that applies — a refused call raises
   ``BudgetExceededError`` before any HTTP request leaves the process;
4. run the call; price the response from its usage; settle. HTTP errors,
   timeouts and cancellation release the reservation. Retries made by the
   client library happen inside the patched method: one call, one charge,
   for the one response that came back (a retried 500 is never billed).

Streams (``stream=True``, ``messages.stream(...)``, Responses events) come
back as a proxy that behaves exactly like the SDK's object (iteration,
``with``, ``close()``, ``get_final_message()``, ``text_stream``, ...) and
settles exactly once: when the stream is read to its end, closed, left
through ``with``, or garbage-collected after a ``break``. What a stream
cut short costs is its reported usage so far, else the prompt plus the text
seen, estimated. For OpenAI chat and completion streams that did not ask
for usage, budgetguard adds ``stream_options={"include_usage": True}`` and
hides the extra final chunk (the one with empty ``choices``) from the caller.

Calls outside any scope follow the guard's ``outside_scope``: ``"global"``
(the default) charges them to the global budget only; ``"refuse"`` raises
``BudgetExceededError`` for them, before the request.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import wrapt

from ..errors import ConfigurationError
from ..guard import BudgetGuard
from ._bedrock import bedrock_api_call
from ._genai import async_genai, sync_genai
from ._litellm import LITELLM_TARGETS
from ._mistral import MISTRAL_TARGETS
from ._wrappers import (
    GuardSource,
    Wrapper,
    async_method,
    async_request,
    async_stream_manager,
    helper_stream_manager,
    stream_manager,
    sync_method,
    sync_request,
)

__all__ = ["instrument", "instrumented", "uninstrument"]

logger = logging.getLogger("budgetguard")


class _Target(NamedTuple):
    """One method to patch: where it lives and how to wrap it (``cls`` "": a module's function)."""

    module: str
    cls: str
    method: str
    make: Callable[[GuardSource], Wrapper]


def _method(injects_usage: bool = False) -> Callable[[GuardSource], Wrapper]:
    return lambda guard_of: sync_method(guard_of, injects_usage)


def _async(injects_usage: bool = False) -> Callable[[GuardSource], Wrapper]:
    return lambda guard_of: async_method(guard_of, injects_usage)


# google-genai's methods that each send one billed request: (method, operation, streamed).
_GENAI_REQUESTS = (
    ("_generate_content", "generate_content", False),
    ("_generate_content_stream", "generate_content_stream", True),
    ("_embed_content", "embed_content", False),
    ("_generate_images", "generate_images", False),
    ("_edit_image", "edit_image", False),
    ("_upscale_image", "upscale_image", False),
    ("recontext_image", "recontext_image", False),
    ("segment_image", "segment_image", False),
    ("_generate_videos", "generate_videos", False),
)

_OPENAI_CHAT = "openai.resources.chat.completions"
_OPENAI_RESPONSES = "openai.resources.responses"
_OPENAI_BETA_RESPONSES = "openai.resources.beta.responses"
_TARGETS: dict[str, tuple[_Target, ...]] = {
    "openai": (
        _Target(_OPENAI_CHAT, "Completions", "create", _method(injects_usage=True)),
        _Target(_OPENAI_CHAT, "AsyncCompletions", "create", _async(injects_usage=True)),
        _Target(_OPENAI_CHAT, "Completions", "parse", _method()),
        _Target(_OPENAI_CHAT, "AsyncCompletions", "parse", _async()),
        # openai < 1.92 kept parse under beta; newer ones have no such module.
        _Target("openai.resources.beta.chat.completions", "Completions", "parse", _method()),
        _Target("openai.resources.beta.chat.completions", "AsyncCompletions", "parse", _async()),
        _Target(_OPENAI_RESPONSES, "Responses", "create", _method()),
        _Target(_OPENAI_RESPONSES, "AsyncResponses", "create", _async()),
        _Target(_OPENAI_RESPONSES, "Responses", "parse", _method()),
        _Target(_OPENAI_RESPONSES, "AsyncResponses", "parse", _async()),
        _Target(_OPENAI_RESPONSES, "Responses", "compact", _method()),
        _Target(_OPENAI_RESPONSES, "AsyncResponses", "compact", _async()),
        _Target(_OPENAI_BETA_RESPONSES, "Responses", "create", _method()),
        _Target(_OPENAI_BETA_RESPONSES, "AsyncResponses", "create", _async()),
        _Target(_OPENAI_BETA_RESPONSES, "Responses", "compact", _method()),
        _Target(_OPENAI_BETA_RESPONSES, "AsyncResponses", "compact", _async()),
        # The stream() helpers send through create; wrapped so that close() settles.
        _Target(_OPENAI_CHAT, "Completions", "stream", helper_stream_manager),
        _Target(_OPENAI_CHAT, "AsyncCompletions", "stream", helper_stream_manager),
        _Target(
            "openai.resources.beta.chat.completions", "Completions", "stream", helper_stream_manager
        ),
        _Target(
            "openai.resources.beta.chat.completions",
            "AsyncCompletions",
            "stream",
            helper_stream_manager,
        ),
        _Target(_OPENAI_RESPONSES, "Responses", "stream", helper_stream_manager),
        _Target(_OPENAI_RESPONSES, "AsyncResponses", "stream", helper_stream_manager),
        _Target("openai.resources.embeddings", "Embeddings", "create", _method()),
        _Target("openai.resources.embeddings", "AsyncEmbeddings", "create", _async()),
        _Target("openai.resources.completions", "Completions", "create", _method(True)),
        _Target("openai.resources.completions", "AsyncCompletions", "create", _async(True)),
        # The net below every method (see sync_request); last, so it is the
        # wrapper a method's own call passes through.
        _Target("openai._base_client", "SyncAPIClient", "request", sync_request),
        _Target("openai._base_client", "AsyncAPIClient", "request", async_request),
    ),
    "anthropic": (
        *(
            target
            for module in ("anthropic.resources.messages", "anthropic.resources.beta.messages")
            for target in (
                _Target(module, "Messages", "create", _method()),
                _Target(module, "AsyncMessages", "create", _async()),
                _Target(module, "Messages", "parse", _method()),
                _Target(module, "AsyncMessages", "parse", _async()),
                _Target(module, "Messages", "stream", stream_manager),
                _Target(module, "AsyncMessages", "stream", async_stream_manager),
            )
        ),
        _Target("anthropic._base_client", "SyncAPIClient", "request", sync_request),
        _Target("anthropic._base_client", "AsyncAPIClient", "request", async_request),
    ),
    # mistralai ≥ 2 keeps its resources in mistralai.client, version 1 in mistralai.
    "mistralai": tuple(
        _Target(f"{package}.{target.module}", target.cls, target.method, target.make)
        for package in ("mistralai.client", "mistralai")
        for target in MISTRAL_TARGETS
    ),
    # LiteLLM's entry points are functions of the litellm module.
    "litellm": tuple(
        _Target(target.module, "", target.function, target.make) for target in LITELLM_TARGETS
    ),
    # google-genai and boto3's bedrock-runtime: see _genai.py and _bedrock.py.
    "google.genai": tuple(
        _Target("google.genai.models", cls, method, make(operation, streamed))
        for method, operation, streamed in _GENAI_REQUESTS
        for cls, make in (("Models", sync_genai), ("AsyncModels", async_genai))
    ),
    "botocore": (_Target("botocore.client", "BaseClient", "_make_api_call", bedrock_api_call),),
}


# Packages that take seconds to import (LiteLLM builds its whole provider
# table): patched when the program imports them, not imported by instrument().
_ON_IMPORT = frozenset({"litellm"})

# How many ``__wrapped__`` links to follow looking for our wrapper.
_MAX_CHAIN = 64


class _Patch:
    """One method we wrapped: where, what was there before, and our wrapper object."""

    __slots__ = ("active", "cls", "method", "original", "outer", "wrapper")

    def __init__(self, cls: type | types.ModuleType, method: str) -> None:
        self.cls = cls
        self.method = method
        self.original: Any = cls.__dict__[method]  # the class attribute before patching
        self.wrapper: Any = None  # the wrapt FunctionWrapper, once installed
        # Another library's wrapper that ours was put inside (see _patch), else None.
        self.outer: Any = None
        # Read by wrapt at every call: a dormant wrapper calls straight through.
        self.active = True

    def enabled(self) -> bool:
        """Tell wrapt whether to run our wrapper (``False``: pass the call through)."""
        return self.active

    @property
    def name(self) -> str:
        """Return the patched attribute's dotted name, as users see it."""
        if isinstance(self.cls, types.ModuleType):
            return f"{self.cls.__name__}.{self.method}"
        return f"{self.cls.__module__}.{self.cls.__qualname__}.{self.method}"

    def is_outermost(self) -> bool:
        """Tell whether the class attribute is still our wrapper itself."""
        return self.cls.__dict__.get(self.method) is self.wrapper

    def is_reachable(self) -> bool:
        """Tell whether calls still reach our wrapper (the attribute, or what it wraps)."""
        found = self.cls.__dict__.get(self.method)
        for _ in range(_MAX_CHAIN):
            if found is self.wrapper:
                return True
            found = getattr(found, "__wrapped__", None)
            if found is None:
                return False
        return False


class _Patches:
    """What is patched now, to undo it; the one piece of state instrumentation needs."""

    def __init__(self) -> None:
        # Reentrant: a package patched on import may be imported while it is held.
        self.lock = threading.RLock()
        self.guard: BudgetGuard | None = None
        # Whether instrument() is in force, and the packages waiting to be imported.
        self.wanted = False
        self.hooked: set[str] = set()
        self.deployments: Mapping[str, str] = {}
        # Active patches, and dormant ones that another wrapper still holds.
        self.patches: list[_Patch] = []

    def __call__(self) -> BudgetGuard:
        """Return the guard calls are charged to (the wrappers' ``GuardSource``)."""
        return self.guard_of()

    def guard_of(self) -> BudgetGuard:
        """Return the guard calls are charged to: the one given, else the caller's.

        The caller's guard is that of the guarded call in progress, else that
        of the current scope (``guard.budget_scope``), else today's default.
        """
        guard = self.guard
        if guard is not None:
            return guard
        from .._call import current_call
        from ..guard import guard_for

        call = current_call()
        return call.guard if call is not None else guard_for(None)

    def active(self) -> list[_Patch]:
        """Return the patches that budget calls now."""
        return [patch for patch in self.patches if patch.active]


_patches = _Patches()


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _resolve(target: _Target) -> type | types.ModuleType | None:
    """Return the class (or module) a target patches, or ``None`` where this SDK has none."""
    try:
        module = importlib.import_module(target.module)
    except ImportError:
        return None
    if not target.cls:
        return module if callable(module.__dict__.get(target.method)) else None
    cls = getattr(module, target.cls, None)
    if not isinstance(cls, type) or target.method not in cls.__dict__:
        return None
    return cls


def instrument(
    guard: BudgetGuard | None = None, *, deployments: Mapping[str, str] | None = None
) -> list[str]:
    """Budget every call of the installed LLM clients and LiteLLM.

    ``guard`` is charged; ``None`` means the default guard, looked up at each
    call (so ``budgetguard.configure(...)`` afterwards still applies).
    ``deployments`` maps Azure deployment names to the models they serve
    (``{"my-gpt": "gpt-4o"}``): a call's estimate is priced as that model, and
    its cost from the model the response names. Calling it again only changes
    the guard and the deployments. Returns the patched methods' names.
    """
    named = dict(deployments or {})
    for name, model in named.items():
        if not isinstance(name, str) or not isinstance(model, str) or not model:
            raise ConfigurationError(
                f"deployments maps names to model names; got {name!r}: {model!r}"
            )
    with _patches.lock:
        _patches.guard = guard
        _patches.deployments = named
        _patches.wanted = True
        if not _patches.active():
            for package in _TARGETS:
                if not _installed(package):
                    continue
                if package in _ON_IMPORT and package not in sys.modules:
                    _patch_on_import(package)
                    continue
                _patch_package(package)
        return [patch.name for patch in _patches.active()]


def _patch_package(package: str) -> None:
    for target in _TARGETS[package]:
        cls = _resolve(target)
        if cls is not None:
            _patch(cls, target)


def _patch_on_import(package: str) -> None:
    """Patch ``package`` once the program imports it, if ``instrument()`` is still in force."""
    if package in _patches.hooked:
        return
    _patches.hooked.add(package)

    def imported(module: Any) -> None:
        with _patches.lock:
            if _patches.wanted:
                _patch_package(package)

    wrapt.register_post_import_hook(imported, package)


def _patch(cls: type | types.ModuleType, target: _Target) -> None:
    """Wrap one method, or wake our dormant wrapper of it if calls still reach it."""
    for patch in list(_patches.patches):
        if patch.cls is not cls or patch.method != target.method:
            continue
        if patch.active:
            return  # two targets naming one class (an SDK alias)
        if patch.is_reachable():
            # Another library wrapped ours and uninstrument() left it there:
            # enable it again rather than stack a second wrapper.
            patch.active = True
            return
        _patches.patches.remove(patch)  # replaced wholesale: ours is gone
    patch = _Patch(cls, target.method)
    wrapper = target.make(_patches)
    outer = patch.original
    if isinstance(outer, wrapt.FunctionWrapper):
        # Another instrumentation (OpenLLMetry, OpenTelemetry's contrib
        # packages) wrapped this method first: go inside its wrapper, as if it
        # had come second, so that its client span is current through the
        # whole guarded call, from the reservation to the settlement.
        patch.outer, patch.original = outer, outer.__wrapped__
        patch.wrapper = wrapt.FunctionWrapper(outer.__wrapped__, wrapper, patch.enabled)
        outer.__wrapped__ = patch.wrapper
    else:
        patch.wrapper = wrapt.wrap_object(
            cls, target.method, wrapt.FunctionWrapper, (wrapper, patch.enabled)
        )
    _patches.patches.append(patch)


def uninstrument() -> None:
    """Restore the clients' original methods; calls are no longer budgeted.

    A method that another library wrapped after ``instrument()`` (OpenTelemetry
    instrumentation, for one) keeps that wrapper: restoring the original would
    remove it too. There budgetguard's wrapper stays in the chain but passes
    calls straight through, and a ``RuntimeWarning`` names the method. A
    wrapper that ``instrument()`` put inside another library's (one that was
    there first) is taken out of that chain cleanly.
    """
    with _patches.lock:
        left: list[str] = []
        for patch in reversed(list(_patches.patches)):
            if patch.is_outermost():  # also a dormant one that the other wrapper let go
                setattr(patch.cls, patch.method, patch.original)
                _patches.patches.remove(patch)
                continue
            outer = patch.outer
            if outer is not None and getattr(outer, "__wrapped__", None) is patch.wrapper:
                outer.__wrapped__ = patch.original  # put inside: take ours out of the chain
                _patches.patches.remove(patch)
                continue
            if patch.active:
                left.append(patch.name)
            patch.active = False
            if not patch.is_reachable():  # replaced wholesale: nothing left to wake
                _patches.patches.remove(patch)
        _patches.guard = None
        _patches.deployments = {}
        _patches.wanted = False
    if left:
        message = (
            f"budgetguard.uninstrument(): something wrapped or replaced "
            f"{', '.join(reversed(left))} after instrument(); left in place, "
            "with budgetguard's wrapper passing calls through unbudgeted"
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def instrumented() -> bool:
    """Tell whether the clients are instrumented now."""
    return bool(_patches.active())
