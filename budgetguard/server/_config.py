"""What a budget service needs to start: where it listens, who may call it, its limits."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigurationError

__all__ = [
    "READ_TOKEN_ENV",
    "TOKEN_ENV",
    "AccessScope",
    "ServerConfig",
    "Tokens",
    "digest",
    "is_loopback",
    "load_tokens",
    "normalise_origins",
    "shown_url",
]

#: The admin token (the master key), when no token file is given.
TOKEN_ENV = "BUDGETGUARD_TOKEN"
#: An optional read-only token, for dashboards and reporting jobs.
READ_TOKEN_ENV = "BUDGETGUARD_READ_TOKEN"

AccessScope = Literal["read", "admin"]
_SCOPES: tuple[AccessScope, ...] = ("read", "admin")
#: Shorter tokens are guessable; 16 characters is LiteLLM's ``sk-`` key order of size.
MIN_TOKEN_LENGTH = 16


class Tokens:
    """Bearer tokens and their scopes, compared in constant time."""

    def __init__(self, tokens: Mapping[str, AccessScope]) -> None:
        for token, scope in tokens.items():
            if scope not in _SCOPES:
                raise ConfigurationError(f"unknown token scope {scope!r}; use read or admin")
            if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
                raise ConfigurationError(
                    f"a token must be at least {MIN_TOKEN_LENGTH} characters without spaces"
                )
        # Digests of equal length, so that comparing them reveals nothing about a token's length.
        self._digests = [(digest(token), scope) for token, scope in tokens.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def digests(self) -> list[bytes]:
        """Return the SHA-256 digest of every token (what sessions are derived from)."""
        return [stored for stored, _ in self._digests]

    def scope_of(self, token: str) -> AccessScope | None:
        """Return the scope ``token`` grants, or ``None``; every stored token is compared."""
        wanted = digest(token)
        found: AccessScope | None = None
        for stored, scope in self._digests:
            if hmac.compare_digest(stored, wanted) and found != "admin":
                found = scope
        return found


def digest(token: str) -> bytes:
    """Return the SHA-256 digest of ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def load_tokens(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Tokens:
    """Read the tokens from ``path`` (one per line, ``admin TOKEN`` or ``read TOKEN``) or the env.

    A line with a bare token is an admin token; blank lines and ``#`` comments
    are skipped. Without a file, ``BUDGETGUARD_TOKEN`` is the admin token and
    ``BUDGETGUARD_READ_TOKEN`` an optional read-only one.
    """
    env = os.environ if environ is None else environ
    tokens: dict[str, AccessScope] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"cannot read the token file {path}: {error}") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) == 1:
                parts = ["admin", parts[0]]
            if len(parts) != 2 or parts[0] not in _SCOPES:
                raise ConfigurationError(
                    f"{path}, line {number}: expected 'admin TOKEN', 'read TOKEN' or 'TOKEN'"
                )
            scope: AccessScope = "admin" if parts[0] == "admin" else "read"
            tokens[parts[1]] = "admin" if tokens.get(parts[1]) == "admin" else scope
        if not tokens:
            raise ConfigurationError(f"the token file {path} holds no token")
        return Tokens(tokens)
    admin = env.get(TOKEN_ENV, "").strip()
    read = env.get(READ_TOKEN_ENV, "").strip()
    if read:
        tokens[read] = "read"
    if admin:
        tokens[admin] = "admin"
    return Tokens(tokens)


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` (an address or ``localhost``) only accepts local connections."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class ServerConfig:
    """Everything a budget service is started with; ``check()`` refuses what cannot be safe."""

    ledger: str = "memory://"
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: Tokens = field(default_factory=lambda: Tokens({}))
    #: Serve without authentication: only allowed on a loopback address.
    no_auth: bool = False
    #: Host names clients use to reach the service (``*``: any); loopback names always pass.
    allowed_hosts: tuple[str, ...] = ()
    #: Extra origins (``https://admin.example``) whose pages may call the API.
    allowed_origins: tuple[str, ...] = ()
    #: Largest request body, in bytes.
    max_body: int = 1024 * 1024
    #: Seconds a client has to send a whole request (headers and body).
    read_timeout: float = 5.0
    #: Seconds an idle keep-alive connection stays open.
    keep_alive: float = 5.0
    #: Open connections at most; more are answered 503.
    max_connections: int = 2048
    #: Seconds in-flight requests get to finish on shutdown.
    shutdown_timeout: float = 10.0

    def check(self) -> None:
        """Raise ``ConfigurationError`` for a configuration that must not start."""
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be between 0 and 65535, got {self.port}")
        if self.no_auth and not is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to serve without authentication on {self.host}: "
                "--insecure-no-auth is only allowed on a loopback address such as 127.0.0.1"
            )
        if not self.no_auth and not self.tokens:
            raise ConfigurationError(
                f"no token: set {TOKEN_ENV} or pass --token-file PATH "
                "(or --insecure-no-auth on a loopback address, for local experiments)"
            )
        if _is_wildcard(self.host) and not self.allowed_hosts:
            raise ConfigurationError(
                f"listening on {self.host or 'every address'} needs --allowed-host NAME "
                "for each name clients use to reach it (or --allowed-host '*')"
            )
        for number, name in (
            (self.max_body, "max_body"),
            (self.max_connections, "max_connections"),
        ):
            if number < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {number}")
        for seconds, name in (
            (self.read_timeout, "read_timeout"),
            (self.keep_alive, "keep_alive"),
            (self.shutdown_timeout, "shutdown_timeout"),
        ):
            if not seconds > 0:
                raise ConfigurationError(f"{name} must be a positive number, got {seconds}")

    def host_names(self) -> frozenset[str]:
        """Return the lower-case host names a ``Host`` header may carry."""
        names = {"localhost", "127.0.0.1", "[::1]", "::1"}
        if not _is_wildcard(self.host):
            names.add(self.host.lower())
        names.update(name.lower() for name in self.allowed_hosts)
        return frozenset(names)


def shown_url(url: str) -> str:
    """Return a ledger URL fit to show: passwords (``redis://:secret@host``) become ``***``."""
    url = re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def normalise_origins(origins: Iterable[str]) -> frozenset[str]:
    """Return origins without a trailing slash, lower-case."""
    return frozenset(origin.rstrip("/").lower() for origin in origins)
