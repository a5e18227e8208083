"""``@budgeted``: guard any function, coroutine or generator with a budget."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar, overload

import wrapt

from ._call import Call, _current_call
from ._costing import model_argument
from ._estimate import ArgumentReader
from .budgets import EMPTY_USER
from .guard import BudgetGuard, guard_for
from .money import to_decimal, to_units

__all__ = ["arg", "budgeted", "literal"]

P = ParamSpec("P")
R = TypeVar("R")


class arg(str):  # lower case: reads as a marker in the decorator's arguments
    """Name an argument of the call explicitly: ``@budgeted(user=arg("customer"))``."""

    __slots__ = ()


class literal(str):  # lower case: reads as a marker in the decorator's arguments
    """Name a user id explicitly: ``@budgeted(user=literal("usr"))`` charges the user "usr"."""

    __slots__ = ()


class _Spec:
    """What one ``@budgeted(...)`` says, resolved once per decorated function."""

    __slots__ = (
        "arguments",
        "cost",
        "estimate",
        "fixed",
        "guard",
        "kind",
        "model",
        "tokens",
        "tokens_from",
        "user",
        "user_from",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        user: object,
        estimate: object,
        cost: Callable[[Any], object] | None,
        model: str | None,
        guard: BudgetGuard | None,
        tokens: object = None,
    ) -> None:
        self.guard = guard
        #: What token budgets reserve: (input, output, total) tokens, or a callable giving it.
        self.tokens: tuple[int, int, int] | None = None
        self.tokens_from: Callable[..., tuple[int, int, int] | None] | None = None
        if callable(tokens):
            reckon = tokens

            def tokens_from(*args: Any, **kwargs: Any) -> tuple[int, int, int] | None:
                return token_estimate(reckon(*args, **kwargs))

            self.tokens_from = tokens_from
        else:
            self.tokens = token_estimate(tokens)
        self.model = model
        self.cost = cost
        self.user = user
        self.user_from = _user_resolver(func, user)
        #: What the guard learns this function's cost under when it must guess.
        self.kind = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
        self.arguments = ArgumentReader(func)
        if estimate is None or callable(estimate):
            self.estimate: object = estimate
        else:
            self.estimate = to_units(to_decimal(estimate, "estimate"))
        #: The call's estimate and model are known before its arguments are read.
        self.fixed = (
            type(self.estimate) is int
            and self.tokens is None
            and self.tokens_from is None
            and (model is not None or not self.arguments.relevant)
        )

    def resolve(
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[BudgetGuard, str | None, int | Decimal | None, str | None]:
        """Return the guard, the user, the estimate (``None``: learn it) and the model."""
        guard = self.guard if self.guard is not None else guard_for(None)
        user = self.user_from(instance, args, kwargs) if self.user_from is not None else None
        estimate = self.estimate
        model = self.model
        if estimate is None:
            if self.arguments.relevant:
                arguments = self.arguments.read(args, kwargs, instance is not None)
                found = guard._estimate_units(arguments)
                if found is not None:
                    return guard, user, found[0], model or found[1]
                if model is None:
                    model = model_argument(arguments)
            return guard, user, None, model
        if not isinstance(estimate, int):
            estimate = to_decimal(estimate(*args, **kwargs), "estimate")  # type: ignore[operator]
        if model is None and self.arguments.relevant:
            model = model_argument(self.arguments.read(args, kwargs, instance is not None))
        return guard, user, estimate, model

    def _begin(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """Start a call of the function: resolve who pays and reserve (sync shell)."""
        guard, user, estimate, model = self.resolve(instance, args, kwargs)
        tokens = self.tokens if self.tokens_from is None else self.tokens_from(*args, **kwargs)
        return guard._begin(user, estimate, model=model, kind=self.kind, tokens=tokens)

    async def _abegin(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """Start a call of the function without blocking the event loop (async shell)."""
        guard, user, estimate, model = self.resolve(instance, args, kwargs)
        tokens = self.tokens if self.tokens_from is None else self.tokens_from(*args, **kwargs)
        return await guard._abegin(user, estimate, model=model, kind=self.kind, tokens=tokens)


def _user_resolver(
    func: Callable[..., Any], user: object
) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], str | None] | None:
    """Return how to find the paying user of a call, decided once per function."""
    if user is None:
        return None
    if callable(user):

        def from_callable(
            instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> str | None:
            return _as_user(user(*args, **kwargs))

        return from_callable
    if not isinstance(user, str):
        raise TypeError(f"user= must be a str or a callable, not {type(user).__name__}")
    if not user:
        raise ValueError(EMPTY_USER)
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in parameters]
    if isinstance(user, literal) or user not in names:
        if isinstance(user, arg):
            raise TypeError(f"{func.__qualname__} has no argument named {str(user)!r}")
        if not isinstance(user, literal):
            _refuse_misspelt_argument(func, user, names)
        fixed = str(user)
        return lambda instance, args, kwargs: fixed
    name = str(user)
    position = names.index(name)
    parameter = parameters[position]
    bound_first = bool(names) and names[0] in ("self", "cls")

    def from_argument(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if name in kwargs:
            return _as_user(kwargs[name])
        # wrapt passes a bound call's arguments without self/cls.
        index = position - 1 if instance is not None and bound_first else position
        if 0 <= index < len(args):
            return _as_user(args[index])
        if parameter.default is not inspect.Parameter.empty:
            return _as_user(parameter.default)
        raise TypeError(f"{func.__qualname__}() missing the argument {name!r} that names the user")

    return from_argument


def _refuse_misspelt_argument(func: Callable[..., Any], user: str, names: list[str]) -> None:
    """Refuse a literal ``user=`` that looks like a misspelt argument name (``"usr"``).

    The rule: a ``user=`` string names an argument when the function has one
    by that name; otherwise it is the id of the user who pays, unless it is
    a near miss of an argument's name, which is refused here, at decoration,
    so that a typo never charges a user literally named after it. Mark a
    literal that looks like an argument with ``literal("usr")``, an argument
    with ``arg("user")``.
    """
    import difflib

    candidates = [name for name in names if name not in ("self", "cls")]
    close = difflib.get_close_matches(user, candidates, n=1, cutoff=0.75)
    if close:
        raise TypeError(
            f"@budgeted(user={user!r}) names no argument of {func.__qualname__}(), but "
            f"{close[0]!r} does: write user={close[0]!r} (or arg({close[0]!r})) to charge "
            f"the caller's {close[0]}, or user=literal({user!r}) to charge a user "
            f"literally named {user!r}"
        )


def _as_user(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"the user must be a str (or an int id), not {type(value).__name__}")


@overload
def budgeted(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def budgeted(
    func: None = None,
    /,
    *,
    user: object = None,
    estimate: object = None,
    cost: Callable[[Any], object] | None = None,
    model: str | None = None,
    guard: BudgetGuard | None = None,
    tokens: object = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def budgeted(
    func: Callable[..., Any] | None = None,
    /,
    *,
    user: object = None,
    estimate: object = None,
    cost: Callable[[Any], object] | None = None,
    model: str | None = None,
    guard: BudgetGuard | None = None,
    tokens: object = None,
) -> Any:
    """Check the budgets before each call of the function and charge its cost after.

    ``user`` is who pays: the name of one of the function's arguments (or
    ``arg("name")`` to be explicit), a literal id (``literal("id")`` to be
    explicit; an unmarked string that is a near miss of an argument's name is
    refused as a likely typo), or a callable given the call's arguments;
    without it the current ``budget_scope``'s user pays.
    ``estimate`` (dollars, or a callable of the arguments) is reserved before
    the call; by default it is the projected cost when the arguments carry a
    ``model`` and ``messages``/``input``/``contents``, else 0. The cost comes
    from ``cost(result)``, from the response's own usage priced by model, and
    from ``charge()`` calls made while the function runs. Works on plain and
    async functions, generators and async generators, methods and classmethods.
    ``tokens`` is what token budgets reserve: an int (at most this many
    tokens in all), an ``(input, output)`` pair, or a callable of the
    arguments giving either; the tokens the response reports are charged.
    """

    def decorate(wrapped: Callable[..., Any]) -> Any:
        # Above @classmethod or @staticmethod, look at the function inside: the
        # descriptor itself has no signature and hides async and generators.
        function: Any = wrapped
        if isinstance(wrapped, (classmethod, staticmethod)):
            function = wrapped.__func__
        spec = _Spec(function, user, estimate, cost, model, guard, tokens)
        if inspect.isasyncgenfunction(function):
            return _function_wrapper(wrapped, _async_generator_wrapper(spec))
        if inspect.iscoroutinefunction(function):
            return _function_wrapper(wrapped, _async_wrapper(spec))
        if inspect.isgeneratorfunction(function):
            return _function_wrapper(wrapped, _generator_wrapper(spec))
        return _function_wrapper(wrapped, _sync_wrapper(spec))

    if func is not None:
        return decorate(func)
    return decorate


Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

# The instance wrapt hands a wrapper for a plain function called as one (not
# bound as a method); every shell reads it as None.
_UNBOUND: Any = object()


def _function_wrapper(wrapped: Callable[..., Any], wrapper: Wrapper) -> Any:
    """Return wrapt's ``FunctionWrapper`` of ``wrapped``, told up front that a function is unbound.

    Called as a plain function, wrapt's wrapper asks the wrapped object for
    ``__self__`` on every call, in case it was a method bound before it was
    wrapped; a plain function has none, so each call raises and clears an
    AttributeError: about 3,800 CPU instructions, 7 % of a guarded call.
    Made with an instance of ``_UNBOUND`` instead of None, the wrapper skips
    that question; wrapt's binding of methods, classmethods and staticmethods
    (its ``__get__``) is untouched. Anything but a plain function, or a wrapt
    whose wrapper base does not take that argument, keeps wrapt's default.
    """
    found = wrapt.FunctionWrapper(wrapped, wrapper)
    base: Any = wrapt.FunctionWrapper.__base__
    if not inspect.isfunction(wrapped) or base.__name__ != "_FunctionWrapperBase":
        return found
    try:
        base.__init__(found, wrapped, _UNBOUND, wrapper, None, found._self_binding)
    except TypeError:  # another constructor: make it again, as wrapt's default
        return wrapt.FunctionWrapper(wrapped, wrapper)
    if found._self_instance is not _UNBOUND or found._self_binding != "function":
        return wrapt.FunctionWrapper(wrapped, wrapper)
    return found


def _sync_wrapper(spec: _Spec) -> Wrapper:
    def call_sync(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if instance is _UNBOUND:
            instance = None
        if spec.fixed:  # a known estimate, no tokens, a model known without the arguments
            guard = spec.guard if spec.guard is not None else guard_for(None)
            user_from = spec.user_from
            user = user_from(instance, args, kwargs) if user_from is not None else None
            units: Any = spec.estimate  # an int: what fixed says
            return guard._run(user, units, spec.model, spec.kind, spec.cost, wrapped, args, kwargs)
        guard, user, estimate, model = spec.resolve(instance, args, kwargs)
        if type(estimate) is int and spec.tokens is None and spec.tokens_from is None:
            return guard._run(user, estimate, model, spec.kind, spec.cost, wrapped, args, kwargs)
        tokens = spec.tokens if spec.tokens_from is None else spec.tokens_from(*args, **kwargs)
        call = guard._begin(user, estimate, model, None, spec.kind, tokens)
        # ``with call:`` inlined on the hottest path: set, then reset by token.
        token = _current_call.set(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _current_call.reset(token)
            guard._finish(call, None, error=error)
            raise
        _current_call.reset(token)
        return guard._complete(call, result, spec.cost)

    return call_sync


def _async_wrapper(spec: _Spec) -> Wrapper:
    def call_async(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if instance is _UNBOUND:
            instance = None

        async def run() -> Any:
            if spec.fixed:  # as call_sync
                guard = spec.guard if spec.guard is not None else guard_for(None)
                user_from = spec.user_from
                user = user_from(instance, args, kwargs) if user_from is not None else None
                units: Any = spec.estimate
                return await guard._arun(
                    user, units, spec.model, spec.kind, spec.cost, wrapped, args, kwargs
                )
            guard, user, estimate, model = spec.resolve(instance, args, kwargs)
            if type(estimate) is int and spec.tokens is None and spec.tokens_from is None:
                return await guard._arun(
                    user, estimate, model, spec.kind, spec.cost, wrapped, args, kwargs
                )
            tokens = spec.tokens if spec.tokens_from is None else spec.tokens_from(*args, **kwargs)
            call = await guard._abegin(user, estimate, model=model, kind=spec.kind, tokens=tokens)
            try:
                with call:
                    result = await wrapped(*args, **kwargs)
            except BaseException as error:  # CancelledError included: release
                await call.guard._afinish(call, None, error=error)
                raise
            return await call.guard._acomplete(call, result, spec.cost)

        return run()

    return call_async


def _generator_wrapper(spec: _Spec) -> Wrapper:
    def call_generator(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[Any, Any, Any]:
        return _guarded_generator(
            spec, wrapped, None if instance is _UNBOUND else instance, args, kwargs
        )

    return call_generator


class _Yielded:
    """What a guarded generator yielded so far: the items for ``cost=``, and its meter."""

    __slots__ = ("finished", "items", "meter", "outcome")

    def __init__(self, spec: _Spec, call: Call) -> None:
        self.items: list[Any] | None = [] if spec.cost is not None else None
        self.meter = call.guard._stream_meter(call)
        self.outcome: BaseException | None = None
        self.finished = False

    def add(self, item: Any) -> None:
        if self.items is not None:
            self.items.append(item)
        self.meter.add(item)

    def error(self) -> BaseException | None:
        """Return the error the generator ended with; ``None`` when consumed or abandoned."""
        outcome = self.outcome
        return None if isinstance(outcome, GeneratorExit) else outcome

    def use_cost(self) -> bool:
        return self.items is not None and bool(self.items or not self.error())


def _guarded_generator(
    spec: _Spec,
    wrapped: Callable[..., Any],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Generator[Any, Any, Any]:
    """Run a generator under a reservation that ends however the generator ends.

    The budget is checked when iteration starts. ``break``, ``close()``,
    garbage collection, errors, and a generator whose own cleanup raises all
    end the reservation: what was consumed is charged (``charge()`` calls,
    ``cost(items)``, the chunks' usage), else it is released.
    """
    call = spec._begin(instance, args, kwargs)
    seen = _Yielded(spec, call)
    inner: Generator[Any, Any, Any] | None = None
    try:
        with call:
            inner = wrapped(*args, **kwargs)
        send: Callable[[Any], Any] = inner.send
        value: Any = None
        while True:
            try:
                with call:
                    item = send(value)
            except StopIteration as stop:
                seen.finished = True
                return stop.value
            seen.add(item)
            try:
                value = yield item
                send = inner.send
            except GeneratorExit:
                raise
            except BaseException as thrown:
                value, send = thrown, _thrower(inner)
    except BaseException as error:
        seen.outcome = error
        raise
    finally:
        try:
            if inner is not None and not seen.finished:
                with call:
                    inner.close()  # may raise: its own finally, or GeneratorExit ignored
        except BaseException as cleanup:
            seen.outcome = seen.outcome if seen.error() is not None else cleanup
            raise
        finally:
            _end_generator(call, spec, seen)


def _thrower(inner: Generator[Any, Any, Any]) -> Callable[[Any], Any]:
    def throw(error: BaseException) -> Any:
        return inner.throw(error)

    return throw


def _end_generator(call: Call, spec: _Spec, seen: _Yielded) -> None:
    """Settle a generator's call from what it yielded, or release it."""
    if seen.use_cost():
        call.guard._complete(call, seen.items, spec.cost, error=seen.error())
    else:
        call.guard._complete_stream(call, seen.meter, error=seen.error())


async def _aend_generator(call: Call, spec: _Spec, seen: _Yielded) -> None:
    """Do ``_end_generator`` without blocking the event loop."""
    if seen.use_cost():
        await call.guard._acomplete(call, seen.items, spec.cost, error=seen.error())
    else:
        await call.guard._acomplete_stream(call, seen.meter, error=seen.error())


def _async_generator_wrapper(spec: _Spec) -> Wrapper:
    def call_async_generator(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[Any, Any]:
        return _guarded_async_generator(
            spec, wrapped, None if instance is _UNBOUND else instance, args, kwargs
        )

    return call_async_generator


async def _guarded_async_generator(
    spec: _Spec,
    wrapped: Callable[..., Any],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncGenerator[Any, Any]:
    """Run an async generator under a reservation that ends however it ends."""
    call = await spec._abegin(instance, args, kwargs)
    seen = _Yielded(spec, call)
    inner: AsyncGenerator[Any, Any] | None = None
    try:
        with call:
            inner = wrapped(*args, **kwargs)
        assert inner is not None
        value: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                with call:
                    if thrown is not None:
                        item = await inner.athrow(thrown)
                    else:
                        item = await inner.asend(value)
            except StopAsyncIteration:
                seen.finished = True
                return
            seen.add(item)
            thrown = None
            try:
                value = yield item
            except GeneratorExit:
                raise
            except BaseException as error:
                thrown = error
    except BaseException as error:
        seen.outcome = error
        raise
    finally:
        try:
            if inner is not None and not seen.finished:
                with call:
                    await inner.aclose()
        except BaseException as cleanup:
            seen.outcome = seen.outcome if seen.error() is not None else cleanup
            raise
        finally:
            await _aend_generator(call, spec, seen)


def token_estimate(value: object) -> tuple[int, int, int] | None:
    """Turn ``tokens=`` (an int, an ``(input, output)`` pair or None) into (input, output, all)."""
    if value is None:
        return None
    if type(value) is int and value >= 0:
        return (value, value, value)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(type(part) is int and part >= 0 for part in value)
    ):
        return (value[0], value[1], value[0] + value[1])
    raise ValueError(
        f"tokens must be a whole number of tokens or an (input, output) pair, got {value!r}"
    )
