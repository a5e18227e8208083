"""Ledgers: where spend is stored, chosen by URL.

``memory://`` (this process only), ``sqlite:///path/spend.db`` (one host,
many processes), ``postgresql://host/db`` (many hosts, durable),
``redis://host:port/db`` (many hosts).
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from .._dist import install_hint
from ..errors import ConfigurationError
from .base import Balance, BudgetChanges, Hold, Ledger, Refusal, Reservation
from .leases import LeasedLedger

__all__ = [
    "Balance",
    "BudgetChanges",
    "Hold",
    "LeasedLedger",
    "Ledger",
    "Refusal",
    "Reservation",
    "leased",
    "ledger_from_url",
    "register_backend",
]

# scheme -> the extra that installs its client; schemes served by the stdlib have none.
_EXTRAS: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "postgresql": "postgres",
    "postgres": "postgres",
}

# scheme -> "module:Class"; imported only when a URL asks for it, so that an
# optional client (redis) is never imported by users who do not need it.
_BACKENDS: dict[str, str] = {
    "memory": "budgetguard.ledger.memory:MemoryLedger",
    "sqlite": "budgetguard.ledger.sqlite:SQLiteLedger",
    "redis": "budgetguard.ledger.redis:RedisLedger",
    "rediss": "budgetguard.ledger.redis:RedisLedger",
    "unix": "budgetguard.ledger.redis:RedisLedger",
    "postgresql": "budgetguard.ledger.postgres:PostgresLedger",
    "postgres": "budgetguard.ledger.postgres:PostgresLedger",
}


def register_backend(scheme: str, target: str | type[Ledger]) -> None:
    """Serve URLs of ``scheme`` with a ledger class (or its ``"module:Class"`` path)."""
    if not isinstance(target, str):
        target = f"{target.__module__}:{target.__qualname__}"
    _BACKENDS[scheme.lower()] = target


def ledger_from_url(url: str | Ledger, **options: Any) -> Ledger:
    """Open the ledger a URL names; a ``Ledger`` instance is returned as is."""
    if isinstance(url, Ledger):
        return url
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"ledger must be a URL such as 'memory://', 'sqlite:///spend.db' or "
            f"'redis://localhost:6379/0', got {url!r}"
        )
    scheme = urlsplit(url).scheme.lower()
    target = _BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise ConfigurationError(f"unknown ledger scheme {scheme!r} in {url!r}; known: {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        extra = _EXTRAS.get(scheme)
        hint = f"; install it with: {install_hint(extra)}" if extra else ""
        raise ConfigurationError(
            f"the {scheme}:// ledger needs a package that is not installed ({error.name}){hint}"
        ) from error
    cls: type[Ledger] = getattr(module, class_name)
    return cls(url, **options)


def leased(ledger: str | Ledger, **options: Any) -> LeasedLedger:
    """Wrap a shared ledger (or its URL) in budget leases: see ``LeasedLedger``.

    ``options`` are ``LeasedLedger``'s (``slice_fraction``, ``ttl``, ``flush``,
    ``background``). A ledger that is not shared (``memory://``) gains nothing
    from leases and is refused.
    """
    inner = ledger_from_url(ledger)
    if not inner.shared:
        raise ConfigurationError(
            f"leases share a budget between processes; {inner.url!r} is private to one "
            "process: use it without leases"
        )
    return LeasedLedger(inner, **options)
