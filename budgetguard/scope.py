"""Who pays for a call: the current scope, carried by a ContextVar."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from decimal import Decimal
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ._keys import scope_key
from .budgets import EMPTY_USER
from .money import to_decimal, to_units

__all__ = [
    "Scope",
    "budget_scope",
    "current_scope",
    "current_user",
    "run_in_context",
    "submit_in_context",
]

P = ParamSpec("P")
R = TypeVar("R")

_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "budgetguard_scope", default=None
)
# Scope ids must be unique across the processes sharing a ledger: the prefix
# is random per process, the counter is cheap and thread-safe under the GIL.
_process_tag = os.urandom(4).hex()
_scope_ids = itertools.count(1)


def _after_fork_in_child() -> None:
    # A forked child must not reuse its parent's scope keys on a shared ledger.
    global _process_tag, _scope_ids
    _process_tag = os.urandom(4).hex()
    _scope_ids = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Scope:
    """One ``budget_scope`` block: who pays, its tags, its own cap, its parent."""

    __slots__ = (
        "_cleanups",
        "caps",
        "guard",
        "id",
        "limit",
        "limit_units",
        "parent",
        "tags",
        "user",
    )

    def __init__(
        self,
        user: str | None,
        limit: Decimal | None,
        tags: Mapping[str, str],
        parent: Scope | None,
        guard: Any = None,
    ) -> None:
        self.id = f"{_process_tag}.{next(_scope_ids)}"
        #: The guard the block was entered through (``guard.budget_scope``), else
        #: the one of the enclosing scope; ``None`` means the default guard.
        self.guard: Any = guard if guard is not None else (parent.guard if parent else None)
        self.user = user
        self.limit = limit
        self.limit_units = to_units(limit) if limit is not None else None
        self.tags = tags
        self.parent = parent
        #: This scope and its ancestors that carry a limit, innermost first.
        self.caps: tuple[Scope, ...] = (self,) if limit is not None else ()
        if parent is not None and parent.caps:
            self.caps += parent.caps
        self._cleanups: list[Callable[[str], None]] = []

    def on_exit(self, cleanup: Callable[[str], None]) -> None:
        """Call ``cleanup(self.key)`` when the block ends (guards drop its counter then)."""
        if cleanup not in self._cleanups:
            self._cleanups.append(cleanup)

    def _close(self) -> None:
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in cleanups:
            cleanup(self.key)

    @property
    def key(self) -> str:
        """Return the ledger key that counts this block's spend against its cap."""
        return scope_key(self.id)

    def __repr__(self) -> str:
        return f"Scope(user={self.user!r}, limit={self.limit}, tags={dict(self.tags)!r})"


def current_scope() -> Scope | None:
    """Return the innermost active scope, or ``None`` outside any."""
    return _current.get()


def current_user() -> str | None:
    """Return the user the current scope charges, or ``None``."""
    scope = _current.get()
    return scope.user if scope is not None else None


class budget_scope:  # lower case: used like a function, as contextlib's helpers are
    """Charge every guarded call in a block (or a decorated function) to ``user``.

    Works as ``with``, ``async with`` and as a decorator of plain and async
    functions. ``limit`` caps this block alone (one request, one agent run),
    on top of the user's and the global budget. Nested scopes inherit the
    outer user unless they name their own, merge tags, and every cap on the
    way out applies. Leaving a scope restores the outer one. ``guard`` (or
    ``BudgetGuard.budget_scope``) binds the block to a guard: guarded calls
    and ``charge()`` inside it use that guard unless they name their own.
    """

    def __init__(
        self,
        user: str | None = None,
        *,
        limit: object = None,
        tags: Mapping[str, str] | None = None,
        guard: Any = None,
    ) -> None:
        if user is not None and not isinstance(user, str):
            raise TypeError(f"user must be a str or None, not {type(user).__name__}")
        if user == "":
            raise ValueError(EMPTY_USER)
        self.user = user
        self.limit = to_decimal(limit, "limit") if limit is not None else None
        self.tags = dict(tags or {})
        self.guard = guard
        self._tokens: list[tuple[contextvars.Token[Scope | None], Scope]] = []

    def _enter(self) -> Scope:
        parent = _current.get()
        user = self.user if self.user is not None else (parent.user if parent else None)
        tags = {**parent.tags, **self.tags} if parent is not None and parent.tags else self.tags
        scope = Scope(user, self.limit, tags, parent, self.guard)
        self._tokens.append((_current.set(scope), scope))
        return scope

    def _exit(self) -> Scope:
        token, scope = self._tokens.pop()
        _current.reset(token)
        return scope

    def __enter__(self) -> Scope:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()._close()

    async def __aenter__(self) -> Scope:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._exit()
        if scope._cleanups:
            # Dropping a capped scope's counter is a ledger write: off the loop.
            await asyncio.to_thread(scope._close)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Run every call of ``func`` inside a fresh scope like this one."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_scoped(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self._copy():
                    return await func(*args, **kwargs)

            return async_scoped  # type: ignore[return-value]

        @functools.wraps(func)
        def scoped(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._copy():
                return func(*args, **kwargs)

        return scoped

    def _copy(self) -> budget_scope:
        # Each call gets its own scope (and its own cap): a decorated function
        # may run many times at once in threads or tasks.
        return budget_scope(self.user, limit=self.limit, tags=self.tags, guard=self.guard)


def run_in_context(func: Callable[P, R]) -> Callable[P, R]:
    """Bind ``func`` to the current context, for a thread pool or a callback.

    ``loop.run_in_executor`` and ``Executor.submit`` do not copy contextvars;
    ``executor.submit(run_in_context(f), x)`` runs ``f`` in this scope.
    """
    context = contextvars.copy_context()

    @functools.wraps(func)
    def in_context(*args: P.args, **kwargs: P.kwargs) -> R:
        # A Context can be entered by one thread at a time: run in a copy.
        return context.copy().run(func, *args, **kwargs)

    return in_context


def submit_in_context(
    executor: Executor, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> Future[R]:
    """Submit ``func`` to ``executor`` so that it runs in the current scope."""
    return executor.submit(run_in_context(func), *args, **kwargs)
