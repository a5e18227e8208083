"""Read a provider's usage report into one normalised ``Usage``.

Extractors are duck-typed: they read attributes of the vendors' pydantic
objects and keys of plain dicts alike, so no vendor SDK is imported. Each one
turns its provider's convention into the disjoint buckets of ``Usage``:

- OpenAI (Chat Completions, legacy Completions, Embeddings), Mistral, DeepSeek
  and LiteLLM count cache reads *inside* ``prompt_tokens``; OpenAI counts
  reasoning *inside* ``completion_tokens``. Both are subtracted out.
- Anthropic and Bedrock count cache reads and writes *on top of* the input.
- Gemini counts cache reads inside ``prompt_token_count`` but thinking tokens
  and tool-use prompt tokens *outside* their counts.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from ._record import Usage, _filled

logger = logging.getLogger("budgetguard")

__all__ = [
    "UnreadableUsage",
    "extract_usage",
    "from_anthropic_usage",
    "from_bedrock_usage",
    "from_cohere_usage",
    "from_gemini_usage",
    "from_langchain_usage",
    "from_openai_usage",
    "from_responses_usage",
    "gemini_rest_to_sdk",
    "read_usage",
    "with_reported_cost",
    "with_service_tier",
    "with_web_search_calls",
]


# Per class: whether it is a pydantic model, and the top-level module it comes
# from. Reading either off a pydantic class goes through its metaclass's
# __getattr__ hook, a few hundred nanoseconds, on every response.
_PYDANTIC: dict[type, bool] = {}
_VENDOR: dict[type, str] = {}
_CLASSES_KEPT = 1024  # classes are few; a program that makes them by the thousand gets a reset


def _is_pydantic(cls: type) -> bool:
    found = _PYDANTIC.get(cls)
    if found is None:
        found = getattr(cls, "__pydantic_fields__", None) is not None
        if len(_PYDANTIC) >= _CLASSES_KEPT:
            _PYDANTIC.clear()
        _PYDANTIC[cls] = found
    return found


def _get(obj: Any, key: str) -> Any:
    """Return ``obj[key]`` for mappings, ``obj.key`` otherwise, ``None`` when absent."""
    if type(obj) is dict:
        return obj.get(key)
    if obj is None:
        return None
    if _is_pydantic(type(obj)):
        # Pydantic models keep fields in __dict__ and unknown keys in
        # __pydantic_extra__. Reading them directly avoids getattr's miss path,
        # which raises and catches an AttributeError: microseconds per miss.
        value = obj.__dict__.get(key)
        if value is None:
            extra = obj.__pydantic_extra__
            if extra:
                value = extra.get(key)
        return value
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _view(obj: Any) -> Any:
    """Return a dict of a pydantic model's fields (cheap to read many keys from), else ``obj``."""
    if type(obj) is dict or obj is None:
        return obj
    if _is_pydantic(type(obj)):
        extra = obj.__pydantic_extra__
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    return obj


class _Attributes:
    """Read an object that is neither a mapping nor a pydantic model by its attributes."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def get(self, key: str) -> Any:
        return getattr(self._obj, key, None)


_NOTHING: Mapping[str, Any] = MappingProxyType({})


def _fields(obj: Any) -> Any:
    """Return something whose ``.get(key)`` is ``_get(obj, key)``: the cheap way to read many keys.

    A dict is itself, a pydantic model the dict of its fields, ``None`` an
    empty mapping, any other object a reader of its attributes.
    """
    cls = type(obj)  # obj.__class__ would go through a pydantic model's __getattr__ hook
    if cls is dict:
        return obj
    if obj is None:
        return _NOTHING
    if _PYDANTIC.get(cls) or _is_pydantic(cls):
        extra = obj.__pydantic_extra__
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    if isinstance(obj, (Mapping, _Attributes)):
        return obj  # already a view, or read as one
    return _Attributes(obj)


class UnreadableUsage(ValueError):
    """A usage report that carries a count budgetguard cannot read as a number of tokens.

    Raised by the normalisers (``from_openai_usage``, ...); ``extract_usage``
    turns it into "no usage", with a warning naming the field, so that the
    guard's ``on_missing_cost`` policy decides what the call is charged.
    """

    def __init__(self, field: str | None, value: Any) -> None:
        self.field = field
        self.value = value
        where = f"usage field {field!r}" if field else "a usage count"
        super().__init__(f"{where} is {value!r}, not a count of tokens")


# A count longer than this many digits is no token count (10^18 tokens).
_MAX_DIGITS = 18


def _int(value: Any, field: str | None = None) -> int:
    """Turn a reported count into a non-negative int; ``None`` (absent) is 0.

    A count is an int, a whole finite float (proxies that serialise numbers
    as floats: ``120000.0``) or a string of ASCII digits (``"120000"``: the
    figure is unambiguous). Anything else — a negative or fractional number,
    ``NaN`` or ``Infinity``, a boolean, any other string or object — raises
    ``UnreadableUsage``: it is not priced as zero.
    """
    if value.__class__ is int:
        if value >= 0:
            return value
    elif value is None:
        return 0
    elif value.__class__ is float:
        if value >= 0 and value.is_integer():  # NaN and ±inf are not integers
            return int(value)
    elif (
        value.__class__ is str
        and 0 < len(value) <= _MAX_DIGITS
        and value.isascii()
        and value.isdigit()
    ):
        return int(value)
    raise UnreadableUsage(field, value)


def _count(obj: Any, field: str) -> int:
    """Return the count ``obj`` reports under ``field`` (0 when absent)."""
    return _int(_get(obj, field), field)


def _has(obj: Any, key: str) -> bool:
    return _get(obj, key) is not None


def _model(response: Any) -> str | None:
    return _model_in(_fields(response))


def _model_in(view: Any) -> str | None:
    """Return the model a response (read through ``_fields``) names."""
    model = view.get("model")
    if isinstance(model, str) and model:
        return model
    outputs = view.get("outputs")
    if isinstance(outputs, (list, tuple)):
        # A mistralai ConversationResponse names the model on each output entry.
        for entry in reversed(outputs):
            model = _get(entry, "model")
            if isinstance(model, str) and model:
                return model
    return None


def _vendor_of(obj: Any) -> str:
    """Return the top-level module of ``obj``'s class ("openai", "litellm", "builtins", ...)."""
    cls = type(obj)
    vendor = _VENDOR.get(cls)
    if vendor is None:
        vendor = cls.__module__.partition(".")[0]
        if len(_VENDOR) >= _CLASSES_KEPT:
            _VENDOR.clear()
        _VENDOR[cls] = vendor
    return vendor


# Model-name prefixes that identify the vendor of an OpenAI-shaped response that is
# a plain dict (Mistral, DeepSeek and xAI speak the OpenAI wire format).
_PROVIDER_BY_MODEL_PREFIX = (
    ("mistral", "mistral_ai"),
    ("ministral", "mistral_ai"),
    ("magistral", "mistral_ai"),
    ("codestral", "mistral_ai"),
    ("devstral", "mistral_ai"),
    ("pixtral", "mistral_ai"),
    ("voxtral", "mistral_ai"),
    ("open-mistral", "mistral_ai"),
    ("open-mixtral", "mistral_ai"),
    ("deepseek", "deepseek"),
    ("grok", "x_ai"),
)
_MODEL_PREFIXES = tuple(prefix for prefix, _ in _PROVIDER_BY_MODEL_PREFIX)


def _openai_shaped_provider(vendor: str, view: Any, model: str | None) -> str:
    """Name the provider of an OpenAI-shaped response (read through ``_fields``)."""
    # Azure OpenAI answers carry content filter results; OpenAI sends none.
    if view.get("prompt_filter_results") is not None:
        return "azure.ai.openai"
    choices = view.get("choices")
    if choices and _fields(choices[0]).get("content_filter_results") is not None:
        return "azure.ai.openai"
    if vendor in ("openai", "litellm", "mistralai"):
        return "mistral_ai" if vendor == "mistralai" else vendor
    if model:
        lowered = model.lower()
        if not lowered.startswith(_MODEL_PREFIXES):  # one test for the common case
            return "openai"
        for prefix, provider in _PROVIDER_BY_MODEL_PREFIX:
            if lowered.startswith(prefix):
                return provider
    return "openai"


# The keys of an OpenAI-shaped usage block that only other vendors (DeepSeek,
# LiteLLM's Anthropic-style cache counts) send.
_CACHE_KEYS = frozenset(
    {
        "prompt_cache_hit_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation",
    }
)


def from_openai_usage(
    usage: Any,
    *,
    model: str | None = None,
    provider: str | None = "openai",
    operation: str | None = None,
    service_tier: str | None = None,
) -> Usage:
    """Normalise an OpenAI-style usage block (``prompt_tokens`` / ``completion_tokens``).

    Serves Chat Completions, legacy Completions, Embeddings, Mistral, DeepSeek
    and LiteLLM. Cache reads, cache writes, audio and image tokens are inside
    ``prompt_tokens``; reasoning and audio are inside ``completion_tokens``.
    """
    # The hot path of every OpenAI-shaped call: each block read once as a
    # mapping, a count that is absent or a plain int taken as it is (anything
    # else goes through _int), one Usage built positionally.
    usage = _fields(usage)
    get = usage.get
    prompt = get("prompt_tokens")
    if prompt is None:
        prompt = 0
    elif prompt.__class__ is not int or prompt < 0:
        prompt = _int(prompt, "prompt_tokens")
    completion = get("completion_tokens")
    if completion is None:
        completion = 0
    elif completion.__class__ is not int or completion < 0:
        completion = _int(completion, "completion_tokens")

    details = _fields(get("prompt_tokens_details"))
    cached = details.get("cached_tokens")
    if cached is None:
        cached = 0
    elif cached.__class__ is not int or cached < 0:
        cached = _int(cached, "cached_tokens")
    cache_write = details.get("cache_write_tokens")
    if cache_write is None:
        cache_write = 0
    elif cache_write.__class__ is not int or cache_write < 0:
        cache_write = _int(cache_write, "cache_write_tokens")
    audio_in = details.get("audio_tokens")
    if audio_in is None:
        audio_in = 0
    elif audio_in.__class__ is not int or audio_in < 0:
        audio_in = _int(audio_in, "audio_tokens")
    image_in = details.get("image_tokens")
    if image_in is None:
        image_in = 0
    elif image_in.__class__ is not int or image_in < 0:
        image_in = _int(image_in, "image_tokens")
    write_1h = 0
    # OpenAI's own blocks carry none of the keys below: one test in C for
    # them all (a block that is no dict reads each key).
    if type(usage) is not dict or not _CACHE_KEYS.isdisjoint(usage):
        if not cached:
            # DeepSeek reports its cache hits beside, not inside, the details.
            found = get("prompt_cache_hit_tokens")
            if found is not None:
                cached = _int(found, "prompt_cache_hit_tokens")
        if not cached:
            # LiteLLM normalises Anthropic-style cache reads under this name; it
            # still counts them inside prompt_tokens.
            found = get("cache_read_input_tokens")
            if found is not None:
                cached = _int(found, "cache_read_input_tokens")
        if not cache_write:
            found = get("cache_creation_input_tokens")
            if found is not None:
                cache_write = _int(found, "cache_creation_input_tokens")
        split = get("cache_creation")
    else:
        split = None
    # LiteLLM splits Anthropic's cache writes by lifetime in
    # prompt_tokens_details.cache_creation_token_details (or passes Anthropic's
    # own cache_creation through): 1-hour writes cost more than 5-minute ones.
    found = details.get("cache_creation_token_details")
    if found is not None:
        split = found
    if split is not None:
        write_1h = _count(split, "ephemeral_1h_input_tokens")
        if write_1h:
            cache_write = max(cache_write, write_1h + _count(split, "ephemeral_5m_input_tokens"))

    out_details = _fields(get("completion_tokens_details"))
    reasoning = out_details.get("reasoning_tokens")
    if reasoning is None:
        reasoning = 0
    elif reasoning.__class__ is not int or reasoning < 0:
        reasoning = _int(reasoning, "reasoning_tokens")
    audio_out = out_details.get("audio_tokens")
    if audio_out is None:
        audio_out = 0
    elif audio_out.__class__ is not int or audio_out < 0:
        audio_out = _int(audio_out, "audio_tokens")

    # Every count is a non-negative int by now (cache_write >= write_1h): no
    # need for the public constructor's checks.
    return _filled(
        max(prompt - cached - cache_write - audio_in - image_in, 0),  # input_tokens
        cached,  # cached_input_tokens
        cache_write - write_1h,  # cache_write_5m_tokens
        write_1h,  # cache_write_1h_tokens
        max(completion - reasoning - audio_out, 0),  # output_tokens
        reasoning,  # reasoning_tokens
        audio_in,  # input_audio_tokens
        audio_out,  # output_audio_tokens
        image_in,  # input_image_tokens
        0,  # web_search_requests
        model,
        provider,
        operation,
        False,  # estimated
        service_tier,
        None,  # reported_cost
        None,  # cost_reporter
    )


def from_responses_usage(usage: Any, *, model: str | None = None) -> Usage:
    """Normalise an OpenAI Responses API usage block (``input_tokens`` with details)."""
    usage = _view(usage)
    total_in = _count(usage, "input_tokens")
    total_out = _count(usage, "output_tokens")
    details = _get(usage, "input_tokens_details")
    cached = _count(details, "cached_tokens")
    write = _count(details, "cache_write_tokens")
    ttl = _get(details, "cache_write_tokens_details")
    write_long = _count(ttl, "ttl_12h_tokens")
    # Short-retention writes fill the "5m" bucket, extended retention the "1h" one.
    write_short = max(write - write_long, 0) if ttl is not None else write
    reasoning = _count(_get(usage, "output_tokens_details"), "reasoning_tokens")
    return Usage(
        input_tokens=max(total_in - cached - write, 0),
        cached_input_tokens=cached,
        cache_write_5m_tokens=write_short,
        cache_write_1h_tokens=write_long,
        output_tokens=max(total_out - reasoning, 0),
        reasoning_tokens=reasoning,
        model=model,
        provider="openai",
        operation="chat",
    )


def from_anthropic_usage(
    usage: Any,
    *,
    model: str | None = None,
    provider: str | None = "anthropic",
) -> Usage:
    """Normalise an Anthropic Messages usage block.

    Cache reads and writes come on top of ``input_tokens``. Writes are split by
    lifetime in ``cache_creation``; without it they are 5-minute writes, the
    default. ``output_tokens`` includes thinking, which
    ``output_tokens_details.thinking_tokens`` breaks out where present.
    """
    usage = _view(usage)
    write_total = _count(usage, "cache_creation_input_tokens")
    creation = _get(usage, "cache_creation")
    if creation is not None:
        write_5m = _count(creation, "ephemeral_5m_input_tokens")
        write_1h = _count(creation, "ephemeral_1h_input_tokens")
        # Should the split not add up, bill the remainder at the 5-minute rate.
        write_5m += max(write_total - write_5m - write_1h, 0)
    else:
        write_5m, write_1h = write_total, 0
    output = _count(usage, "output_tokens")
    thinking = _count(_get(usage, "output_tokens_details"), "thinking_tokens")
    thinking = min(thinking, output)
    return Usage(
        input_tokens=_count(usage, "input_tokens"),
        cached_input_tokens=_count(usage, "cache_read_input_tokens"),
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        output_tokens=output - thinking,
        reasoning_tokens=thinking,
        web_search_requests=_count(_get(usage, "server_tool_use"), "web_search_requests"),
        model=model,
        provider=provider,
        operation="chat",
    )


def from_langchain_usage(metadata: Any, *, model: str | None = None) -> Usage:
    """Normalise LangChain's ``AIMessage.usage_metadata`` (any provider's chat model).

    ``input_tokens`` counts every input token, cache reads
    (``input_token_details.cache_read``) and writes (``cache_creation``)
    included; ``output_tokens`` includes ``output_token_details.reasoning``.
    """
    metadata = _view(metadata)
    total_in = _count(metadata, "input_tokens")
    total_out = _count(metadata, "output_tokens")
    details_in = _get(metadata, "input_token_details")
    cached = _count(details_in, "cache_read")
    written = _count(details_in, "cache_creation")
    audio_in = _count(details_in, "audio")
    details_out = _get(metadata, "output_token_details")
    reasoning = min(_count(details_out, "reasoning"), total_out)
    audio_out = min(_count(details_out, "audio"), total_out - reasoning)
    return Usage(
        input_tokens=max(total_in - cached - written - audio_in, 0),
        cached_input_tokens=cached,
        cache_write_5m_tokens=written,
        input_audio_tokens=audio_in,
        output_tokens=total_out - reasoning - audio_out,
        reasoning_tokens=reasoning,
        output_audio_tokens=audio_out,
        model=model,
        provider="langchain",
        operation="chat",
    )


def _langchain_model(message: Any) -> str | None:
    """Return the model a LangChain message's ``response_metadata`` names."""
    metadata = _get(message, "response_metadata")
    for key in ("model_name", "model", "model_id"):
        value = _get(metadata, key)
        if isinstance(value, str) and value:
            return value
    return None


def _modality_count(details: Any, modality: str) -> int:
    """Sum the ``token_count`` of one modality in a Gemini ``ModalityTokenCount`` list."""
    if not isinstance(details, (list, tuple)):
        return 0
    total = 0
    for item in details:
        found = _get(item, "modality")
        # The SDK uses an enum whose value is the name; dicts carry the string.
        name = getattr(found, "value", found)
        if isinstance(name, str) and name.upper() == modality:
            total += _int(_get(item, "token_count"))
    return total


def from_gemini_usage(metadata: Any, *, model: str | None = None) -> Usage:
    """Normalise a google-genai ``usage_metadata`` block.

    ``prompt_token_count`` includes cached content; ``thoughts_token_count`` and
    ``tool_use_prompt_token_count`` are outside ``candidates_token_count`` and
    ``prompt_token_count``, and both are billed (thinking as output, tool-use
    prompts as input).
    """
    metadata = _view(metadata)
    prompt = _int(_get(metadata, "prompt_token_count"))
    cached = min(_int(_get(metadata, "cached_content_token_count")), prompt)
    tool_prompt = _int(_get(metadata, "tool_use_prompt_token_count"))
    audio_in = _modality_count(_get(metadata, "prompt_tokens_details"), "AUDIO")
    audio_cached = _modality_count(_get(metadata, "cache_tokens_details"), "AUDIO")
    # Only uncached audio is carved out; cached audio stays with the cache reads.
    audio_in = max(audio_in - audio_cached, 0)
    audio_in = min(audio_in, max(prompt - cached, 0))
    return Usage(
        input_tokens=max(prompt - cached - audio_in, 0) + tool_prompt,
        cached_input_tokens=cached,
        output_tokens=_int(_get(metadata, "candidates_token_count")),
        reasoning_tokens=_int(_get(metadata, "thoughts_token_count")),
        input_audio_tokens=audio_in,
        model=model,
        provider="gcp.gen_ai",
        operation="generate_content",
    )


def from_bedrock_usage(usage: Any, *, model: str | None = None) -> Usage:
    """Normalise a Bedrock Converse ``usage`` block (camelCase, cache on top of input).

    ``cacheDetails`` splits writes by TTL (``5m`` / ``1h``); without it every
    write is a 5-minute write.
    """
    write_total = _int(_get(usage, "cacheWriteInputTokens"))
    write_5m = write_1h = 0
    details = _get(usage, "cacheDetails")
    if isinstance(details, (list, tuple)) and details:
        for item in details:
            count = _int(_get(item, "inputTokens"))
            if _get(item, "ttl") == "1h":
                write_1h += count
            else:
                write_5m += count
        write_5m += max(write_total - write_5m - write_1h, 0)
    else:
        write_5m = write_total
    return Usage(
        input_tokens=_int(_get(usage, "inputTokens")),
        cached_input_tokens=_int(_get(usage, "cacheReadInputTokens")),
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        output_tokens=_int(_get(usage, "outputTokens")),
        model=model,
        provider="aws.bedrock",
        operation="chat",
    )


def from_cohere_usage(usage: Any, *, model: str | None = None) -> Usage:
    """Normalise a Cohere usage block, preferring ``billed_units`` over raw ``tokens``."""
    billed = _get(usage, "billed_units")
    counts = billed if billed is not None else _get(usage, "tokens")
    return Usage(
        input_tokens=_count(counts, "input_tokens"),
        output_tokens=_count(counts, "output_tokens"),
        model=model,
        provider="cohere",
        operation="chat",
    )


def _openai_operation(view: Any) -> str | None:
    kind = view.get("object")
    if kind == "chat.completion" or kind == "chat.completion.chunk":
        return "chat"
    if kind == "text_completion":
        return "text_completion"
    if kind == "list" or kind == "embedding":
        return "embeddings"
    if view.get("choices") is not None:
        return "chat"
    if isinstance(view.get("data"), (list, tuple)):
        return "embeddings"
    return None


# How providers name the tier a call was served in, as the price table names it.
# OpenAI answers "default" (or "auto", "scale") for the standard tier.
_TIERS = {"flex": "flex", "priority": "priority", "batch": "batch"}


def _service_tier(response: Any, usage: Any) -> str | None:
    """Return the service tier a response says it was served in (OpenAI: on the
    response; Anthropic: in the usage block), or ``None`` for the standard tier.

    Both are read through ``_fields``.
    """
    tier = response.get("service_tier")
    if not isinstance(tier, str):
        tier = usage.get("service_tier")
        if not isinstance(tier, str):
            return None
    return _TIERS.get(tier.lower())


def with_web_search_calls(found: Usage, response: Any) -> Usage:
    """Return ``found`` counting the ``web_search_call`` items of a Responses ``output``.

    OpenAI bills each web-search tool call per call, beside its tokens; the
    usage block does not count them, the output does.
    """
    output = _get(response, "output")
    if not isinstance(output, (list, tuple)):
        return found
    calls = sum(1 for item in output if _get(item, "type") == "web_search_call")
    return found.replace(web_search_requests=calls) if calls else found


def with_service_tier(found: Usage, response: Any, usage: Any) -> Usage:
    """Return ``found`` noting the service tier ``response`` or its ``usage`` block reports."""
    tier = _service_tier(_fields(response), _fields(usage))
    return found if tier is None else found.replace(service_tier=tier)


def _from_usage_block(usage: Any, response: Any, view: Any = _NOTHING) -> Usage | None:
    """Pick the right normaliser for a ``usage`` block; note its tier and any reported cost.

    ``view`` is ``_fields(response)``, when the caller has it already.
    """
    block = _fields(usage)
    if response is None:
        vendor = ""
    else:
        vendor = _vendor_of(response)
        if view is _NOTHING:
            view = _fields(response)
    # The tier goes into the one Usage built, not a copy of it.
    found = _normalise_block(usage, block, response, vendor, view, _service_tier(view, block))
    if found is None:
        return None
    return _with_reported_cost(found, response, block, vendor)


def _money(value: Any, field: str) -> Decimal:
    """Read a reported cost in dollars: a finite, non-negative number or numeric string."""
    if value.__class__ is int or value.__class__ is float:
        if math.isfinite(value) and value >= 0:
            # repr() is the shortest string that reads back as the same float.
            return Decimal(repr(value)) if value.__class__ is float else Decimal(value)
    elif value.__class__ is str or value.__class__ is Decimal:
        try:
            amount = Decimal(value)
        except InvalidOperation:
            pass
        else:
            if amount.is_finite() and amount >= 0:
                return amount
    raise UnreadableUsage(field, value)


def _litellm_cost(response: Any) -> Any:
    """Return LiteLLM's ``response._hidden_params["response_cost"]``, or ``None``."""
    if response is None or _vendor_of(response) != "litellm":
        return None
    return _hidden_cost(response)


def _hidden_cost(response: Any) -> Any:
    try:
        hidden = getattr(response, "_hidden_params", None)
    except Exception:  # a property of a foreign object: no cost, not a crash
        return None
    return hidden.get("response_cost") if isinstance(hidden, Mapping) else None


def with_reported_cost(found: Usage, response: Any, usage: Any) -> Usage:
    """Return ``found`` with the cost the response reports itself, where it reports one.

    - LiteLLM: ``response._hidden_params["response_cost"]``, the cost LiteLLM
      worked out for the call (from the provider's own figure where there is
      one, else from LiteLLM's price map).
    - OpenRouter: ``usage.cost``, the credits charged. With a key of your own
      (``usage.is_byok``), ``cost`` is only OpenRouter's fee and the provider
      bills ``cost_details.upstream_inference_cost`` to that key: the charge
      is both.

    A reported cost that is not a finite, non-negative number is left out,
    with a warning: the call is then priced from its tokens.
    """
    vendor = _vendor_of(response) if response is not None else ""
    return _with_reported_cost(found, response, _fields(usage), vendor)


def _with_reported_cost(found: Usage, response: Any, usage: Any, vendor: str) -> Usage:
    """Do ``with_reported_cost`` on a usage block read through ``_fields``.

    ``vendor`` is ``_vendor_of(response)`` (``""`` for no response).
    """
    try:
        litellm = _hidden_cost(response) if vendor == "litellm" else None
        if litellm is not None:
            amount = _money(litellm, "response_cost")
            return found.replace(reported_cost=amount, cost_reporter="litellm")
        cost = usage.get("cost")
        if cost is None:
            return found
        amount = _money(cost, "cost")
        if usage.get("is_byok") is True:
            upstream = _get(usage.get("cost_details"), "upstream_inference_cost")
            if upstream is not None:
                amount += _money(upstream, "cost_details.upstream_inference_cost")
        # LiteLLM puts its own figure there in a stream's last chunk.
        reporter = "litellm" if vendor == "litellm" else "openrouter"
        return found.replace(reported_cost=amount, cost_reporter=reporter)
    except UnreadableUsage as error:
        _warn_unreadable(f"{error}; pricing the call from its tokens instead")
        return found


def _normalise_block(
    usage: Any, block: Any, response: Any, vendor: str, view: Any, tier: str | None
) -> Usage | None:
    """Pick the right normaliser for a ``usage`` block by the fields it carries.

    ``block`` and ``view`` are ``usage`` and the response read through
    ``_fields``, ``vendor`` is the response's (``_vendor_of``); the result
    notes the service ``tier``.
    """
    model = _model_in(view)
    get = block.get
    if get("prompt_tokens") is not None or get("completion_tokens") is not None:
        return from_openai_usage(
            block,
            model=model,
            provider=_openai_shaped_provider(vendor, view, model),
            operation=_openai_operation(view),
            service_tier=tier,
        )
    if get("inputTokens") is not None or get("outputTokens") is not None:
        found = from_bedrock_usage(usage, model=model)
    elif get("billed_units") is not None or get("tokens") is not None:
        found = from_cohere_usage(usage, model=model)
    elif get("input_tokens") is not None or get("output_tokens") is not None:
        if view.get("object") == "response" or get("input_tokens_details") is not None:
            found = from_responses_usage(usage, model=model)
            if vendor == "mistralai":  # Mistral's Responses API
                found = found.replace(provider="mistral_ai")
            found = with_web_search_calls(found, response)
        else:
            provider = "litellm" if vendor == "litellm" else "anthropic"
            found = from_anthropic_usage(usage, model=model, provider=provider)
    else:
        return None
    return found if tier is None else found.replace(service_tier=tier)


def _warn_unreadable(message: str) -> None:
    logger.warning("budgetguard: %s", message)
    warnings.warn(f"budgetguard: {message}", RuntimeWarning, stacklevel=3)


def extract_usage(response: object) -> Usage | None:
    """Return the usage a provider reported in ``response``, or ``None`` if it carries none.

    Understands OpenAI (Chat Completions, Responses, Embeddings, legacy
    Completions), Anthropic Messages, google-genai ``GenerateContentResponse``,
    Bedrock Converse, Cohere v1/v2, Mistral, DeepSeek and LiteLLM responses, as
    vendor objects or plain dicts. A bare usage block is understood too.

    Usage that cannot be read — a count that is negative, fractional,
    infinite, NaN, a boolean or a non-numeric string, or an attribute that
    raises — is no usage: this returns ``None`` with a ``RuntimeWarning``
    naming the field, and the guard's ``on_missing_cost`` policy decides the
    charge. It never raises.
    """
    try:
        return read_usage(response)
    except UnreadableUsage as error:
        _warn_unreadable(f"{error}; treating the response as one without usage")
    except Exception as error:  # a vendor object that raises when read: not the caller's fault
        _warn_unreadable(
            f"reading the usage of a {type(response).__qualname__} raised "
            f"{type(error).__qualname__}: {error}; treating it as a response without usage"
        )
    return None


def read_usage(response: object) -> Usage | None:
    """Do ``extract_usage``, but raise ``UnreadableUsage`` for usage that cannot be read."""
    if response is None:
        return None
    if type(response) is dict and "usageMetadata" in response:
        response = gemini_rest_to_sdk(response)
    view = _fields(response)
    metadata = view.get("usage_metadata")
    if metadata is not None:
        if _has(metadata, "input_tokens") or _has(metadata, "output_tokens"):
            return from_langchain_usage(metadata, model=_langchain_model(response))
        return from_gemini_usage(metadata, model=_model_in(view) or _gemini_version(response))
    usage = view.get("usage")
    if usage is not None:
        return _from_usage_block(usage, response, view)
    # A Responses stream event or a wrapper that nests the response.
    inner = view.get("response")
    if inner is not None and inner is not response and _has(inner, "usage"):
        return read_usage(inner)
    # Cohere v1 keeps its billed units under ``meta``.
    meta = view.get("meta")
    if meta is not None and _has(meta, "billed_units"):
        return from_cohere_usage(meta, model=_model_in(view))
    # Last, a bare usage block handed over on its own.
    return _from_bare_block(response)


def _gemini_version(response: Any) -> str | None:
    version = _get(response, "model_version")
    return version if isinstance(version, str) and version else None


def _from_bare_block(block: Any) -> Usage | None:
    if _has(block, "prompt_token_count") or _has(block, "candidates_token_count"):
        return from_gemini_usage(block)
    for key in ("prompt_tokens", "inputTokens", "billed_units", "input_tokens"):
        if _has(block, key):
            return _from_usage_block(block, None)
    return None


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _snake_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_snake(key): _snake_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_snake_keys(item) for item in value]
    return value


def gemini_rest_to_sdk(payload: dict[str, Any]) -> dict[str, Any]:
    """Rename a Gemini REST reply's camelCase keys (``usageMetadata``) to the SDK's snake_case.

    The REST API and the google-genai SDK carry the same figures under
    different spellings; the extractors read the SDK's.
    """
    return {_snake(key): _snake_keys(item) for key, item in payload.items()}
