"""Tokens, configuration checks, safe JSON and shown URLs of the service, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetguard.errors import ConfigurationError
from budgetguard.server import BadRequest, ServerConfig, Tokens, load_tokens
from budgetguard.server._body import parse_json
from budgetguard.server._config import is_loopback, shown_url

A = "a" * 20
R = "r" * 20


def test_tokens_grant_their_scope() -> None:
    """A token maps to its scope; an unknown, empty or prefix token to nothing."""
    tokens = Tokens({A: "admin", R: "read"})
    assert tokens.scope_of(A) == "admin" and tokens.scope_of(R) == "read"
    assert tokens.scope_of("") is None and tokens.scope_of(A[:-1]) is None
    assert tokens.scope_of(A + "x") is None


@pytest.mark.parametrize("token", ["short", "has a space in it ok", ""])
def test_weak_tokens_are_refused(token: str) -> None:
    """Tokens under 16 characters or with spaces are refused."""
    with pytest.raises(ConfigurationError):
        Tokens({token: "admin"})


def test_token_file_lines(tmp_path: Path) -> None:
    """A token file holds 'admin TOKEN', 'read TOKEN' or a bare admin TOKEN, and comments."""
    path = tmp_path / "tokens"
    path.write_text(f"# service tokens\n\nread {R}\n{A}\n")
    tokens = load_tokens(path)
    assert len(tokens) == 2
    assert tokens.scope_of(A) == "admin" and tokens.scope_of(R) == "read"


@pytest.mark.parametrize("text", ["", "# nothing\n", f"owner {A}\n", f"admin {A} extra\n"])
def test_bad_token_files_are_refused(tmp_path: Path, text: str) -> None:
    """An empty file, an unknown scope or a malformed line is a ConfigurationError."""
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ConfigurationError):
        load_tokens(path)


def test_tokens_from_the_environment() -> None:
    """BUDGETGUARD_TOKEN is the admin token, BUDGETGUARD_READ_TOKEN a read-only one."""
    tokens = load_tokens(environ={"BUDGETGUARD_TOKEN": A, "BUDGETGUARD_READ_TOKEN": R})
    assert tokens.scope_of(A) == "admin" and tokens.scope_of(R) == "read"
    assert not load_tokens(environ={})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    """Only loopback addresses and localhost count as loopback."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ServerConfig(), "no token"),
        (ServerConfig(no_auth=True, host="0.0.0.0"), "loopback"),
        (ServerConfig(tokens=Tokens({A: "admin"}), host="0.0.0.0"), "--allowed-host"),
        (ServerConfig(no_auth=True, port=70000), "port"),
        (ServerConfig(no_auth=True, read_timeout=0), "read_timeout"),
        (ServerConfig(no_auth=True, max_body=0), "max_body"),
    ],
)
def test_unsafe_configurations_do_not_start(config: ServerConfig, message: str) -> None:
    """check() refuses what must not start, naming the problem."""
    with pytest.raises(ConfigurationError, match=message):
        config.check()


def test_numbers_are_exact_and_bounded() -> None:
    """Fractions parse as exact Decimals; huge numbers are refused."""
    from decimal import Decimal

    assert parse_json(b'{"cost": 0.1}') == {"cost": Decimal("0.1")}
    assert parse_json(b'{"cost": "1e15", "n": 123}') == {"cost": "1e15", "n": 123}
    for body in (b'{"c": 1e16}', b'{"c": "1E+16"}', b'{"c": ["9' + b"9" * 20 + b'"]}'):
        with pytest.raises(BadRequest, match="too large"):
            parse_json(body)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """A string full of brackets is not deep nesting."""
    assert parse_json(b'{"note": "' + b"[{" * 100 + b'"}') == {"note": "[{" * 100}


def test_passwords_are_hidden_from_shown_urls() -> None:
    """Ledger URLs are shown with their passwords replaced by ***."""
    assert shown_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert shown_url("redis://app:pw@cache/0") == "redis://app:***@cache/0"
    assert shown_url("rediss://cache/0?password=pw&ssl=1") == "rediss://cache/0?password=***&ssl=1"
    assert shown_url("sqlite:///spend.db") == "sqlite:///spend.db"
