"""Stand-ins for stream objects that settle their call's reservation exactly once.

Used by the instrumented clients and for streams returned by ``@budgeted``
functions: ``@budgeted def chat(): return client.chat.completions.create(...,
stream=True)`` returns before a token is generated, so settling then would
charge a guess; the caller gets a proxy that settles from the chunks instead.

Each proxy behaves like the object it wraps (``isinstance``, attributes,
helper methods pass through ``wrapt.ObjectProxy``) and ends the call's
reservation when the stream is consumed, closed, left through ``with``,
broken out of and collected, or fails half way.
"""

from __future__ import annotations

import codecs
import inspect
import json
import logging
import threading
import types
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import wrapt

from ._call import Call
from ._sdk_call import inside_sdk_call
from .usage import StreamMeter, extract_usage

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = [
    "AsyncHelperStreamManagerProxy",
    "AsyncMessageStreamManagerProxy",
    "AsyncMessageStreamProxy",
    "AsyncStreamProxy",
    "BodyMeter",
    "HelperStreamManagerProxy",
    "MessageStreamManagerProxy",
    "MessageStreamProxy",
    "RawResponseProxy",
    "Settlement",
    "StreamProxy",
    "UsageMeter",
    "guard_returned_stream",
    "is_guarded",
    "is_stream",
]

logger = logging.getLogger("budgetguard")

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt < 2 proxies are not subscriptable at run time
    _Proxy = wrapt.ObjectProxy


class UsageMeter(StreamMeter):
    """Read a stream's usage from its chunks, counting the prompt when none was reported."""

    __slots__ = ()

    def __init__(self, request_model: str | None, prompt_tokens: Callable[[], int]) -> None:
        super().__init__(request_model, prompt_tokens)


class SnapshotMeter(UsageMeter):
    """Read the usage of an Anthropic ``MessageStream`` from the SDK's own message snapshot.

    The helper methods (``get_final_message``, ``text_stream``, ``until_done``)
    iterate the SDK stream from inside, past any proxy, so the snapshot the
    SDK accumulates is the one record of what every path consumed.
    """

    __slots__ = ("_stream",)

    def __init__(
        self, request_model: str | None, prompt_tokens: Callable[[], int], stream: Any
    ) -> None:
        super().__init__(request_model, prompt_tokens)
        self._stream = stream

    def usage(self) -> Any:
        """Return the usage of the message snapshot, else the prompt-only estimate."""
        snapshot = None
        peek = getattr(self._stream, "_current_snapshot_or_none", None)
        if callable(peek):
            snapshot = peek()
        else:
            try:
                snapshot = self._stream.current_message_snapshot
            except AssertionError:  # no message_start seen yet
                snapshot = None
        found = extract_usage(snapshot) if snapshot is not None else None
        if found is not None:
            return found
        return super().usage()


class Settlement:
    """End one call's reservation exactly once, whichever way the stream ends first."""

    __slots__ = ("_done", "_finalizer", "_lock", "call", "guard", "meter")

    def __init__(self, guard: BudgetGuard, call: Call, meter: StreamMeter) -> None:
        self.guard = guard
        self.call = call
        self.meter = meter
        self._done = False
        # The garbage collector may run the safety net on any thread.
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def watch(self, proxy: object) -> None:
        """Settle as abandoned when ``proxy`` is collected before the stream ended."""
        finalizer = weakref.finalize(proxy, self._collected)
        # At interpreter exit the ledger may already be gone; crashed
        # reservations expire by themselves.
        finalizer.atexit = False
        self._finalizer = finalizer

    def _claim(self) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
        if self._finalizer is not None:
            self._finalizer.detach()
        return True

    @property
    def done(self) -> bool:
        """Tell whether the reservation has ended."""
        return self._done

    def settle(self, error: BaseException | None = None) -> None:
        """Charge what the stream cost (or release it), unless already done."""
        if self._claim():
            self.guard._complete_stream(self.call, self.meter, error=error)

    async def asettle(self, error: BaseException | None = None) -> None:
        """Do ``settle`` without blocking the event loop on the ledger."""
        if self._claim():
            await self.guard._acomplete_stream(self.call, self.meter, error=error)

    def _collected(self) -> None:
        # A finalizer cannot await: even async streams settle synchronously
        # here, and nothing may propagate out of the garbage collector.
        if not self._claim():
            return
        try:
            self.guard._complete_stream(self.call, self.meter)
        except Exception:
            logger.exception("budgetguard could not settle a stream that was garbage-collected")


def is_guarded(stream: Any) -> bool:
    """Tell whether ``stream`` is already one of budgetguard's settling proxies."""
    return isinstance(stream, (_SettlingProxy, _AsyncSettlingProxy))


def _error_of(exc: BaseException | None) -> BaseException | None:
    return None if isinstance(exc, GeneratorExit) else exc


def _is_usage_only(chunk: Any) -> bool:
    """Tell the final chunk that ``include_usage`` adds: usage, and no choices."""
    return not getattr(chunk, "choices", True) and getattr(chunk, "usage", None) is not None


_S = TypeVar("_S", bound="_SettlingProxy")
_A = TypeVar("_A", bound="_AsyncSettlingProxy")


# The settlements of the streams opened while an SDK helper's stream manager
# is entered (``chat.completions.stream()``, ``responses.stream()``): the
# helper closes the HTTP response itself, past the stream proxy, so its
# manager proxy must know which settlement to end.
_opened: ContextVar[list[Settlement] | None] = ContextVar("budgetguard_opened", default=None)


def _note_opened(settlement: Settlement) -> None:
    opened = _opened.get()
    if opened is not None:
        opened.append(settlement)


class _SettlingProxy(_Proxy):
    """A stream stand-in whose ``close()`` and ``with`` exit end the reservation."""

    def __init__(self, stream: Any, settlement: Settlement) -> None:
        super().__init__(stream)
        self._self_settlement = settlement
        settlement.watch(self)
        _note_opened(settlement)

    def close(self) -> None:
        """Close the stream and settle what it cost so far."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_settlement.settle()

    def __enter__(self: _S) -> _S:
        self.__wrapped__.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_settlement.settle(_error_of(exc))


class _AsyncSettlingProxy(_Proxy):
    """An async stream stand-in whose ``close()`` and ``async with`` exit end the reservation."""

    def __init__(self, stream: Any, settlement: Settlement) -> None:
        super().__init__(stream)
        self._self_settlement = settlement
        settlement.watch(self)
        _note_opened(settlement)

    async def close(self) -> None:
        """Close the stream and settle what it cost so far."""
        try:
            await self.__wrapped__.close()
        finally:
            await self._self_settlement.asettle()

    async def __aenter__(self: _A) -> _A:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            await self._self_settlement.asettle(_error_of(exc))


class StreamProxy(_SettlingProxy):
    """Wrap an OpenAI or Anthropic ``Stream``: meter each chunk, settle when it ends.

    ``nest`` makes the call current while the stream makes its next chunk: a
    lazy stream returned by a guarded function (a LangChain ``stream()``, a
    generator) may send its request then, and the instrumented call it sends
    is that call's, charged once to its user.
    """

    def __init__(
        self, stream: Any, settlement: Settlement, hide_usage_chunk: bool, nest: bool = False
    ) -> None:
        super().__init__(stream, settlement)
        self._self_hide = hide_usage_chunk
        self._self_nest = nest

    def __iter__(self) -> StreamProxy:
        return self

    def __next__(self) -> Any:
        settlement: Settlement = self._self_settlement
        while True:
            try:
                if self._self_nest:
                    with settlement.call:
                        chunk = self.__wrapped__.__next__()
                else:
                    chunk = self.__wrapped__.__next__()
            except StopIteration:
                settlement.settle()
                raise
            except BaseException as error:
                settlement.settle(_error_of(error))
                raise
            settlement.meter.add(chunk)
            # The caller did not ask for usage: budgetguard did, so its extra
            # chunk (no choices) must not reach code doing chunk.choices[0].
            if self._self_hide and _is_usage_only(chunk):
                continue
            return chunk


class AsyncStreamProxy(_AsyncSettlingProxy):
    """Wrap an ``AsyncStream``: meter each chunk, settle when it ends (``nest``: as above)."""

    def __init__(
        self, stream: Any, settlement: Settlement, hide_usage_chunk: bool, nest: bool = False
    ) -> None:
        super().__init__(stream, settlement)
        self._self_hide = hide_usage_chunk
        self._self_nest = nest

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        settlement: Settlement = self._self_settlement
        while True:
            try:
                if self._self_nest:
                    with settlement.call:
                        chunk = await self.__wrapped__.__anext__()
                else:
                    chunk = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                await settlement.asettle()
                raise
            except BaseException as error:  # CancelledError included
                await settlement.asettle(_error_of(error))
                raise
            settlement.meter.add(chunk)
            if self._self_hide and _is_usage_only(chunk):
                continue
            return chunk


class MessageStreamProxy(_SettlingProxy):
    """Wrap an Anthropic ``MessageStream``; its helpers settle once they have consumed it."""

    def __iter__(self) -> MessageStreamProxy:
        return self

    def __next__(self) -> Any:
        try:
            return self.__wrapped__.__next__()
        except StopIteration:
            self._self_settlement.settle()
            raise
        except BaseException as error:
            self._self_settlement.settle(_error_of(error))
            raise

    def get_final_message(self) -> Any:
        """Read the stream to its end, settle, and return the final message."""
        try:
            return self.__wrapped__.get_final_message()
        finally:
            self._self_settlement.settle()

    def get_final_text(self) -> str:
        """Read the stream to its end, settle, and return the text of the final message."""
        try:
            return str(self.__wrapped__.get_final_text())
        finally:
            self._self_settlement.settle()

    def until_done(self) -> None:
        """Read the stream to its end and settle."""
        try:
            self.__wrapped__.until_done()
        finally:
            self._self_settlement.settle()


class AsyncMessageStreamProxy(_AsyncSettlingProxy):
    """Wrap an Anthropic ``AsyncMessageStream``; its helpers settle once they have consumed it."""

    def __aiter__(self) -> AsyncMessageStreamProxy:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            await self._self_settlement.asettle()
            raise
        except BaseException as error:
            await self._self_settlement.asettle(_error_of(error))
            raise

    async def get_final_message(self) -> Any:
        """Read the stream to its end, settle, and return the final message."""
        try:
            return await self.__wrapped__.get_final_message()
        finally:
            await self._self_settlement.asettle()

    async def get_final_text(self) -> str:
        """Read the stream to its end, settle, and return the text of the final message."""
        try:
            return str(await self.__wrapped__.get_final_text())
        finally:
            await self._self_settlement.asettle()

    async def until_done(self) -> None:
        """Read the stream to its end and settle."""
        try:
            await self.__wrapped__.until_done()
        finally:
            await self._self_settlement.asettle()


# What a stream manager needs to open its reservation when it is entered:
# the guard, the user, the estimate, the model and a lazy prompt count.
Opener = Callable[[], "tuple[BudgetGuard, Call, Callable[[], int]]"]


class MessageStreamManagerProxy(_Proxy):
    """Wrap ``messages.stream(...)``: reserve on ``with`` entry, settle on exit.

    The HTTP request leaves when the manager is entered, so the budget is
    checked then (with the scope that was current when ``stream()`` was called).
    """

    def __init__(self, manager: Any, opener: Opener) -> None:
        super().__init__(manager)
        self._self_opener = opener
        self._self_stream: MessageStreamProxy | None = None

    def __enter__(self) -> MessageStreamProxy:
        guard, call, prompt_tokens = self._self_opener()
        token = inside_sdk_call.set(True)  # the request it sends is this call
        try:
            stream = self.__wrapped__.__enter__()
        except BaseException as error:
            guard._finish(call, None, error=error)
            raise
        finally:
            inside_sdk_call.reset(token)
        meter = SnapshotMeter(call.request_model, prompt_tokens, stream)
        proxy = MessageStreamProxy(stream, Settlement(guard, call, meter))
        self._self_stream = proxy
        return proxy

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            stream = self._self_stream
            if stream is not None:
                stream._self_settlement.settle(_error_of(exc))


AsyncOpener = Callable[[], Any]  # a coroutine function returning what Opener returns


class AsyncMessageStreamManagerProxy(_Proxy):
    """Wrap async ``messages.stream(...)``: reserve on ``async with`` entry, settle on exit."""

    def __init__(self, manager: Any, opener: AsyncOpener) -> None:
        super().__init__(manager)
        self._self_opener = opener
        self._self_stream: AsyncMessageStreamProxy | None = None

    async def __aenter__(self) -> AsyncMessageStreamProxy:
        try:
            guard, call, prompt_tokens = await self._self_opener()
        except BaseException:
            # Refused (or cancelled) before the request: the SDK's manager
            # will never await the request it prepared when stream() was called.
            _drop_unsent(self.__wrapped__)
            raise
        token = inside_sdk_call.set(True)  # the request it sends is this call
        try:
            stream = await self.__wrapped__.__aenter__()
        except BaseException as error:  # CancelledError included: release
            await guard._afinish(call, None, error=error)
            raise
        finally:
            inside_sdk_call.reset(token)
        meter = SnapshotMeter(call.request_model, prompt_tokens, stream)
        proxy = AsyncMessageStreamProxy(stream, Settlement(guard, call, meter))
        self._self_stream = proxy
        return proxy

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            stream = self._self_stream
            if stream is not None:
                await stream._self_settlement.asettle(_error_of(exc))


def _drop_unsent(manager: Any) -> None:
    """Close the request coroutines an async stream manager made but never awaited.

    ``AsyncAnthropic().messages.stream(...)`` builds its ``post`` coroutine
    at once and awaits it on ``async with`` entry. When budgetguard refuses
    the entry, nothing ever awaits it: closing it keeps Python from warning
    "coroutine ... was never awaited" about a request that was never meant
    to leave.
    """
    for value in list(getattr(manager, "__dict__", {}).values()):
        if inspect.iscoroutine(value) and inspect.getcoroutinestate(value) == inspect.CORO_CREATED:
            value.close()


class HelperStreamProxy(_Proxy):
    """Wrap an OpenAI helper stream (``ChatCompletionStream``, ``ResponseStream``).

    The helper reads a settling stream proxy, so reading it to its end
    settles; but its ``close()`` closes the HTTP response directly, past that
    proxy. Here ``close()`` and ``with`` exit settle what was read so far.
    """

    def __init__(self, stream: Any, settlement: Settlement) -> None:
        super().__init__(stream)
        self._self_settlement = settlement

    def __iter__(self) -> Any:
        return iter(self.__wrapped__)

    def __next__(self) -> Any:
        return self.__wrapped__.__next__()

    def close(self) -> None:
        """Close the response and settle what the stream cost so far."""
        try:
            self.__wrapped__.close()
        finally:
            self._self_settlement.settle()

    def __enter__(self) -> HelperStreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_settlement.settle(_error_of(exc))


class AsyncHelperStreamProxy(_Proxy):
    """Wrap an OpenAI async helper stream: ``close()`` and ``async with`` exit settle."""

    def __init__(self, stream: Any, settlement: Settlement) -> None:
        super().__init__(stream)
        self._self_settlement = settlement

    def __aiter__(self) -> Any:
        return self.__wrapped__.__aiter__()

    async def __anext__(self) -> Any:
        return await self.__wrapped__.__anext__()

    async def close(self) -> None:
        """Close the response and settle what the stream cost so far."""
        try:
            await self.__wrapped__.close()
        finally:
            await self._self_settlement.asettle()

    async def __aenter__(self) -> AsyncHelperStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            await self._self_settlement.asettle(_error_of(exc))


def _opened_by(enter: Callable[[], Any]) -> tuple[Any, Settlement | None]:
    """Run ``enter``; return what it returned and the settlement of the stream it opened."""
    opened: list[Settlement] = []
    token = _opened.set(opened)
    try:
        result = enter()
    finally:
        _opened.reset(token)
    return result, (opened[-1] if opened else None)


class HelperStreamManagerProxy(_Proxy):
    """Wrap OpenAI's ``chat.completions.stream()`` / ``responses.stream()`` manager.

    Entering it sends the request through the instrumented ``create``, which
    reserves (or refuses) and returns a settling stream; leaving the ``with``
    block, or closing the stream, settles that reservation at once, not when
    the stream is garbage-collected. A manager that opens no billed request
    (``responses.stream(response_id=...)`` retrieves one) passes through.
    """

    def __init__(self, manager: Any) -> None:
        super().__init__(manager)
        self._self_settlement: Settlement | None = None

    def __enter__(self) -> Any:
        stream, settlement = _opened_by(self.__wrapped__.__enter__)
        if settlement is None:
            return stream
        self._self_settlement = settlement
        return HelperStreamProxy(stream, settlement)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            if self._self_settlement is not None:
                self._self_settlement.settle(_error_of(exc))


class AsyncHelperStreamManagerProxy(_Proxy):
    """Wrap the async ``chat.completions.stream()`` / ``responses.stream()`` manager."""

    def __init__(self, manager: Any) -> None:
        super().__init__(manager)
        self._self_settlement: Settlement | None = None

    async def __aenter__(self) -> Any:
        opened: list[Settlement] = []
        token = _opened.set(opened)
        try:
            stream = await self.__wrapped__.__aenter__()
        finally:
            _opened.reset(token)
        if not opened:
            return stream
        self._self_settlement = opened[-1]
        return AsyncHelperStreamProxy(stream, opened[-1])

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            if self._self_settlement is not None:
                await self._self_settlement.asettle(_error_of(exc))


# A JSON body larger than this is not kept to be priced (no real response is).
_BODY_LIMIT = 64 * 1024 * 1024


class BodyMeter:
    """Read a response body that the caller reads as bytes, text or lines, for its usage.

    A streamed body is server-sent events: each ``data:`` event is decoded and
    given to the call's stream meter as it completes, so a body read half way
    is priced like any stream cut short. Any other body is JSON, priced from
    its usage once read to its end.
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_parts",
        "_pending",
        "_size",
        "complete",
        "fed",
        "meter",
        "streamed",
    )

    def __init__(self, meter: StreamMeter, streamed: bool) -> None:
        self.meter = meter
        self.streamed = streamed
        self.fed = False  # whether the caller read any of the body
        self.complete = False  # whether the caller read all of it
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # the text of a line not yet ended
        self._data: list[str] = []  # the data lines of the event being read
        self._parts: list[bytes] | None = []
        self._size = 0

    def feed(self, data: bytes | str) -> None:
        """Take one piece of the body, as read by the caller."""
        self.fed = True
        if not self.streamed:
            raw = data.encode() if isinstance(data, str) else data
            self._size += len(raw)
            if self._parts is not None:
                self._parts.append(raw)
                if self._size > _BODY_LIMIT:
                    self._parts = None
            return
        text = data if isinstance(data, str) else self._decoder.decode(data)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            line = line.removesuffix("\r")
            if not line:
                self._dispatch()  # a blank line ends an event
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
                if len(self._data) == 1 and self._dispatch(eager=True):
                    continue  # one line of JSON: the caller has seen the whole event

    def take_all(self, body: bytes) -> None:
        """Take the whole body at once (``read()``, ``text()``, ``json()``)."""
        if self.fed:
            return  # read through an iterator already: do not count it twice
        self.feed(body)
        if self.streamed:
            self.feed("\n\n")  # the last event may lack its blank line
        self.complete = True

    def _dispatch(self, eager: bool = False) -> bool:
        """Give the event's data to the meter; say whether it was a whole JSON object."""
        data = "\n".join(self._data)
        if not data:
            return False
        try:
            decoded = json.loads(data)
        except ValueError:
            if not eager:
                self._data = []  # "[DONE]", or not JSON: nothing to meter
            return False
        self._data = []
        if isinstance(decoded, dict):
            self.meter.add(decoded)
        return True

    def body(self) -> Any:
        """Return the decoded JSON body, or ``None`` when it is not all there or not JSON."""
        if self.streamed or not self.complete or self._parts is None:
            return None
        try:
            return json.loads(b"".join(self._parts))
        except ValueError:
            return None


class RawResponseProxy(_Proxy):
    """Wrap the response of ``with_raw_response`` / ``with_streaming_response``: price its body.

    The body is the caller's to read, so nothing is read here. ``parse()``
    prices what it returns from its usage, or hands back a settling proxy of
    the stream it returns. ``read()``, ``text()``, ``json()``, ``iter_bytes()``,
    ``iter_text()`` and ``iter_lines()`` are metered on the way to the caller:
    the call is priced from the usage in the bytes, and an event stream read
    half way like any stream cut short. A response closed, left or collected
    unread (or a JSON body read only in part) ends its call under
    ``on_missing_cost``, as a response without usage.
    """

    def __init__(
        self, response: Any, settlement: Settlement, hide_usage_chunk: bool, streamed: bool = False
    ) -> None:
        super().__init__(response)
        self._self_settlement = settlement
        self._self_hide = hide_usage_chunk
        self._self_stream: Any = None
        self._self_body = BodyMeter(settlement.meter, streamed)
        finalizer = weakref.finalize(self, _end_read, settlement, self._self_body)
        finalizer.atexit = False
        settlement._finalizer = finalizer

    def _self_priced(self, parsed: Any) -> Any:
        settlement: Settlement = self._self_settlement
        if self._self_stream is not None:
            return self._self_stream
        if is_stream(parsed) and not settlement.done:
            meter_of = settlement.meter
            # The stream proxy settles from here on; this one lets go.
            if settlement._claim():
                handed = Settlement(settlement.guard, settlement.call, meter_of)
                if hasattr(parsed, "__anext__"):
                    self._self_stream = AsyncStreamProxy(parsed, handed, self._self_hide)
                else:
                    self._self_stream = StreamProxy(parsed, handed, self._self_hide)
                return self._self_stream
        return parsed

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        """Parse the body (the SDK's own ``parse``) and price it, once."""
        parse = self.__wrapped__.parse
        if inspect.iscoroutinefunction(parse):
            return self._self_aparse(parse, args, kwargs)
        try:
            parsed = parse(*args, **kwargs)
        except BaseException as error:
            _end_unparsed(self._self_settlement, error)
            raise
        if not is_stream(parsed) and self._self_settlement._claim():
            settlement: Settlement = self._self_settlement
            settlement.guard._complete(settlement.call, parsed)
        return self._self_priced(parsed)

    async def _self_aparse(
        self, parse: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            parsed = await parse(*args, **kwargs)
        except BaseException as error:
            await _aend_unparsed(self._self_settlement, error)
            raise
        if not is_stream(parsed) and self._self_settlement._claim():
            settlement: Settlement = self._self_settlement
            await settlement.guard._acomplete(settlement.call, parsed)
        return self._self_priced(parsed)

    # -- the body read as bytes, text or lines --------------------------------------------

    def read(self) -> Any:
        """Read the whole body (the SDK's ``read()``) and price the call from it."""
        return self._self_whole(self.__wrapped__.read)

    def text(self) -> Any:
        """Read the body as text (the SDK's ``text()``) and price the call from it."""
        return self._self_whole(self.__wrapped__.text)

    def json(self) -> Any:
        """Read the body as JSON (the SDK's ``json()``) and price the call from it."""
        return self._self_whole(self.__wrapped__.json)

    def _self_whole(self, read: Callable[[], Any]) -> Any:
        if inspect.iscoroutinefunction(read):
            return self._self_awhole(read)
        try:
            result = read()
        except BaseException as error:
            _end_read(self._self_settlement, self._self_body, _error_of(error))
            raise
        self._self_body.take_all(self.__wrapped__.http_response.content)
        _end_read(self._self_settlement, self._self_body)
        return result

    async def _self_awhole(self, read: Callable[[], Any]) -> Any:
        try:
            result = await read()
        except BaseException as error:
            await _aend_read(self._self_settlement, self._self_body, _error_of(error))
            raise
        self._self_body.take_all(self.__wrapped__.http_response.content)
        await _aend_read(self._self_settlement, self._self_body)
        return result

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        """Iterate the body's bytes (the SDK's ``iter_bytes()``), metering them."""
        return self._self_pieces(self.__wrapped__.iter_bytes(*args, **kwargs), "")

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        """Iterate the body's text (the SDK's ``iter_text()``), metering it."""
        return self._self_pieces(self.__wrapped__.iter_text(*args, **kwargs), "")

    def iter_lines(self) -> Any:
        """Iterate the body's lines (the SDK's ``iter_lines()``), metering them."""
        return self._self_pieces(self.__wrapped__.iter_lines(), "\n")

    def _self_pieces(self, source: Any, end: str) -> Any:
        if hasattr(source, "__anext__"):
            return _ametered(source, self._self_settlement, self._self_body, end)
        return _metered(source, self._self_settlement, self._self_body, end)

    def close(self) -> Any:
        """Close the response; unread, its call ends as one without usage."""
        closed = self.__wrapped__.close()
        if inspect.isawaitable(closed):
            return self._self_aclose(closed)
        _end_read(self._self_settlement, self._self_body)
        return closed

    async def _self_aclose(self, closed: Any) -> None:
        try:
            await closed
        finally:
            await _aend_read(self._self_settlement, self._self_body)


def _metered(source: Any, settlement: Settlement, body: BodyMeter, end: str) -> Any:
    """Yield what ``source`` yields, metering it; end the call when it ends."""
    try:
        for piece in source:
            body.feed(piece + end if end else piece)
            yield piece
    except BaseException as error:  # GeneratorExit included: read only in part
        _end_read(settlement, body, _error_of(error))
        raise
    body.feed("\n\n")
    body.complete = True
    _end_read(settlement, body)


async def _ametered(source: Any, settlement: Settlement, body: BodyMeter, end: str) -> Any:
    """Do ``_metered`` for an async iterator."""
    try:
        async for piece in source:
            body.feed(piece + end if end else piece)
            yield piece
    except BaseException as error:  # GeneratorExit and CancelledError included
        await _aend_read(settlement, body, _error_of(error))
        raise
    body.feed("\n\n")
    body.complete = True
    await _aend_read(settlement, body)


def _end_read(settlement: Settlement, body: BodyMeter, error: BaseException | None = None) -> None:
    """End a raw response's call from what the caller read of its body, once."""
    if not body.fed:
        _end_unparsed(settlement, error)
        return
    if not settlement._claim():
        return
    guard, call = settlement.guard, settlement.call
    if body.streamed:
        guard._complete_stream(call, settlement.meter, error=error)
        return
    parsed = body.body()
    if parsed is None:
        guard._finish(call, None, error=error)  # part of a JSON body: on_missing_cost
    else:
        guard._complete(call, parsed)


async def _aend_read(
    settlement: Settlement, body: BodyMeter, error: BaseException | None = None
) -> None:
    """Do ``_end_read`` without blocking the event loop on the ledger."""
    if not body.fed:
        await _aend_unparsed(settlement, error)
        return
    if not settlement._claim():
        return
    guard, call = settlement.guard, settlement.call
    if body.streamed:
        await guard._acomplete_stream(call, settlement.meter, error=error)
        return
    parsed = body.body()
    if parsed is None:
        await guard._afinish(call, None, error=error)
    else:
        await guard._acomplete(call, parsed)


def _end_unparsed(settlement: Settlement, error: BaseException | None = None) -> None:
    """End a raw response's call that was never parsed: as a response without usage."""
    if settlement._claim():
        settlement.guard._finish(settlement.call, None, error=error)


async def _aend_unparsed(settlement: Settlement, error: BaseException | None = None) -> None:
    """Do ``_end_unparsed`` without blocking the event loop on the ledger."""
    if settlement._claim():
        await settlement.guard._afinish(settlement.call, None, error=error)


# Stream classes of the SDKs, by module root and class name: matched by name
# so that no SDK is imported to find out.
_SDK_STREAMS = {
    "openai": frozenset({"Stream", "AsyncStream"}),
    "anthropic": frozenset({"Stream", "AsyncStream"}),
    "litellm": frozenset({"CustomStreamWrapper"}),
    "google": frozenset({"Stream", "AsyncStream"}),
}


# Per class: whether its instances are streams (decided once; classes are few,
# a program that makes them by the thousand gets a reset).
_STREAM_CLASSES: dict[type, bool] = {}
_STREAM_CLASSES_KEPT = 1024


def is_stream(result: Any) -> bool:
    """Tell whether ``result`` is a stream of chunks that a guarded call must meter."""
    cls = type(result)
    found = _STREAM_CLASSES.get(cls)
    if found is None:
        found = _is_stream_class(cls)
        if len(_STREAM_CLASSES) >= _STREAM_CLASSES_KEPT:
            _STREAM_CLASSES.clear()
        _STREAM_CLASSES[cls] = found
    return found


def _is_stream_class(cls: type) -> bool:
    """Decide ``is_stream`` for the instances of ``cls``."""
    if issubclass(cls, (types.GeneratorType, types.AsyncGeneratorType)):
        return True  # google-genai's generate_content_stream, users' own generators
    # A stream class of an SDK, or a subclass of one (made anywhere).
    return any(
        base.__name__ in _SDK_STREAMS.get(base.__module__.partition(".")[0], ())
        for base in cls.__mro__
    )


def guard_returned_stream(call: Call, result: Any) -> Any:
    """Return a proxy of ``result`` that settles ``call`` from its chunks, or ``None``."""
    if not is_stream(result) or is_guarded(result):
        return None
    settlement = Settlement(call.guard, call, StreamMeter(call.request_model))
    if hasattr(result, "__anext__") or isinstance(result, types.AsyncGeneratorType):
        return AsyncStreamProxy(result, settlement, False, nest=True)
    return StreamProxy(result, settlement, False, nest=True)
