"""What to reserve for a call that says nothing of its cost: learned, never $0.

A call with no ``estimate=`` whose arguments name no model and prompt still
holds a realistic amount: the guard remembers, per kind of call (the guarded
function or instrumented method, and the model), the last actual costs and
reserves their high end. Before the first call of a kind has settled there is
nothing to learn from, so calls of that kind are admitted one at a time
("slow start"): the first runs alone with no hold, and the ones queued behind
it then reserve what it cost. Output sizes are learned per model the same
way, for calls that do not set ``max_tokens``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = ["ArgumentReader", "History", "Learner", "MissingEstimatePolicy"]

MissingEstimatePolicy = Literal["learn", "raise", "zero"]
MISSING_ESTIMATE_POLICIES = ("learn", "raise", "zero")

# Enough samples to see the spread of a kind of call, few enough to follow a
# change of prompt or model within minutes.
_SAMPLES = 32
# Kinds are (function, model) pairs: bounded by the code and the price table,
# but a model name built from user input must not grow memory for ever.
_MAX_KINDS = 4096


class History:
    """The last few values of one kind of call, and their maximum."""

    __slots__ = ("_next", "high", "values")

    def __init__(self) -> None:
        self.values: list[int] = []
        self._next = 0
        self.high = 0

    def add(self, value: int) -> None:
        """Remember ``value``, forgetting the oldest beyond the window."""
        values = self.values
        if len(values) < _SAMPLES:
            values.append(value)
            self.high = max(self.high, value)
            return
        dropped = values[self._next]
        values[self._next] = value
        self._next = (self._next + 1) % _SAMPLES
        if value >= self.high:
            self.high = value
        elif dropped >= self.high:
            self.high = max(values)


class Learner:
    """Learn per kind what calls cost and per model how much they write (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._costs: dict[str, History] = {}
        self._outputs: dict[str, History] = {}
        self._gates: dict[str, threading.Lock] = {}

    def cost(self, kind: str) -> int | None:
        """Return the high end of recent actual costs of ``kind`` in units, or ``None``."""
        history = self._costs.get(kind)
        return history.high if history is not None else None

    def learn_cost(self, kind: str, units: int) -> None:
        """Remember what one call of ``kind`` cost."""
        self._learn(self._costs, kind, units)

    def output_tokens(self, model: str) -> int | None:
        """Return the high end of recent output sizes of ``model``, or ``None``."""
        history = self._outputs.get(model)
        return history.high if history is not None else None

    def learn_output(self, model: str, tokens: int) -> None:
        """Remember how many tokens one call of ``model`` wrote."""
        self._learn(self._outputs, model, tokens)

    def gate(self, kind: str) -> threading.Lock:
        """Return the lock that admits the calls of a kind not yet learned one at a time."""
        gate = self._gates.get(kind)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(kind, threading.Lock())
        return gate

    def forget(self) -> None:
        """Forget everything learned (tests; a guard whose prices changed)."""
        with self._lock:
            self._costs.clear()
            self._outputs.clear()

    def after_fork(self) -> None:
        """Take fresh locks in a forked child: one held by a parent's thread stays shut."""
        self._lock = threading.Lock()
        self._gates = {}

    def _learn(self, table: dict[str, History], kind: str, value: int) -> None:
        with self._lock:
            history = table.get(kind)
            if history is None:
                if len(table) >= _MAX_KINDS:
                    del table[next(iter(table))]  # the oldest kind
                history = table[kind] = History()
            history.add(value)


# The arguments call_shape() reads: read positionally too.
_SHAPE_NAMES = frozenset(
    {
        "model",
        "modelId",
        "inferenceConfig",
        "messages",
        "input",
        "contents",
        "prompt",
        "system",
        "instructions",
        "config",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
    }
)

Reader = Callable[[tuple[Any, ...], Mapping[str, Any], bool], Mapping[str, Any]]


class ArgumentReader:
    """Read a call's LLM arguments by name, positional or keyword, bound once per function."""

    __slots__ = ("_bound_first", "_positions", "relevant")

    def __init__(self, func: Callable[..., Any]) -> None:
        self._positions: tuple[tuple[str, int], ...] = ()
        try:
            parameters = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            parameters = []
        positional = [
            p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self._positions = tuple(
            (p.name, index) for index, p in enumerate(positional) if p.name in _SHAPE_NAMES
        )
        #: Whether the function can receive anything an estimate reads.
        self.relevant = bool(self._positions) or any(
            p.kind is p.VAR_KEYWORD or p.name in _SHAPE_NAMES for p in parameters
        )
        self._bound_first = bool(positional) and positional[0].name in ("self", "cls")

    def read(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], bound: bool
    ) -> Mapping[str, Any]:
        """Return the call's arguments an estimate reads, keyword or positional."""
        if not args or not self._positions:
            return kwargs
        shift = 1 if bound and self._bound_first else 0
        found: dict[str, Any] | None = None
        for name, index in self._positions:
            at = index - shift
            if 0 <= at < len(args) and name not in kwargs:
                if found is None:
                    found = dict(kwargs)
                found[name] = args[at]
        return found if found is not None else kwargs
