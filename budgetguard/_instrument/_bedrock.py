"""The wrapper of boto3's ``bedrock-runtime`` client: reserve, send, price, settle.

boto3 clients are classes generated at run time, one per service, each of
whose operations calls ``BaseClient._make_api_call(operation_name,
api_params)``. budgetguard wraps that one method and passes every call
straight through unless it is a billed ``bedrock-runtime`` operation
(``Converse``, ``ConverseStream``, ``InvokeModel``,
``InvokeModelWithResponseStream``). It sits above botocore's retry handler:
one call is one reservation, and a retried throttle or 500 is charged once.
A refused call raises ``BudgetExceededError`` before botocore builds the
request.

Usage: Converse reports ``usage`` (camelCase, cache reads and writes on top
of the input); ConverseStream's ``metadata`` event does. InvokeModel's body
is the model's own format: Anthropic's Messages (``usage``), Nova
(``usage``, camelCase), Titan (``inputTextTokenCount``, ``tokenCount``),
Llama (``prompt_token_count``, ``generation_token_count``); any other
falls back to the token counts Bedrock puts in the response headers.
InvokeModelWithResponseStream's chunks carry the model's events and, last,
``amazon-bedrock-invocationMetrics``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any

from .._costing import bedrock_arguments
from .._sdk_call import inside_sdk_call
from .._streams import Settlement, StreamProxy, UsageMeter
from ..usage import Usage
from ..usage.extractors import from_bedrock_usage
from ._wrappers import GuardSource, Wrapper, _Request

__all__ = ["BEDROCK_OPERATIONS", "bedrock_api_call", "bedrock_model", "invoke_arguments"]

# The billed operations of ``bedrock-runtime`` that budgetguard guards.
BEDROCK_OPERATIONS = frozenset(
    {"Converse", "ConverseStream", "InvokeModel", "InvokeModelWithResponseStream"}
)
_SERVICE = "bedrock-runtime"
# Bedrock's own count of a call's tokens, on every InvokeModel response.
_INPUT_HEADER = "x-amzn-bedrock-input-token-count"
_OUTPUT_HEADER = "x-amzn-bedrock-output-token-count"
_METRICS = "amazon-bedrock-invocationMetrics"


def bedrock_model(model_id: str) -> str:
    """Return the model a Bedrock ``modelId`` names: an ARN's foundation model or profile id.

    ``arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-…`` and
    ``arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-…``
    name the id after the slash. An application inference profile or a
    provisioned model hides its model behind an opaque id: the ARN is kept,
    and priced as a model with no known price.
    """
    if not model_id.startswith("arn:"):
        return model_id
    parts = model_id.split(":", 5)
    if len(parts) < 6:
        return model_id
    kind, _, name = parts[5].partition("/")
    if kind in ("foundation-model", "inference-profile") and name:
        return name
    return model_id


def _body_of(params: Mapping[str, Any]) -> Any:
    """Return an InvokeModel request body as JSON, or ``None`` (a file, not JSON)."""
    body = params.get("body")
    if isinstance(body, (bytes, bytearray, str)):
        try:
            return json.loads(body)
        except ValueError:
            return None
    return None


def invoke_arguments(model: str, body: Any) -> dict[str, Any]:
    """Read an InvokeModel body (the model's own format) as an OpenAI-shaped call.

    Anthropic and Nova bodies carry ``messages`` (and ``system``), with
    ``max_tokens`` or ``inferenceConfig.maxTokens``; Llama and Mistral a
    ``prompt`` with ``max_gen_len`` / ``max_tokens``; Titan an
    ``inputText`` with ``textGenerationConfig.maxTokenCount``; Cohere a
    ``message`` or ``texts``.
    """
    if not isinstance(body, Mapping):
        return {"model": model}
    if isinstance(body.get("messages"), list):
        found = bedrock_arguments(
            {
                "modelId": model,
                "messages": body["messages"],
                "system": body.get("system"),
                "inferenceConfig": body.get("inferenceConfig"),
            }
        )
        if type(body.get("max_tokens")) is int:
            found["max_tokens"] = body["max_tokens"]
        return found
    found = {"model": model}
    for key in ("prompt", "inputText", "message"):
        if isinstance(body.get(key), str):
            found["prompt"] = body[key]
            break
    else:
        texts = body.get("texts")
        if isinstance(texts, list):
            found["prompt"] = "\n".join(str(text) for text in texts)
    config = body.get("textGenerationConfig")
    limits = [body.get("max_gen_len"), body.get("max_tokens"), body.get("max_tokens_to_sample")]
    if isinstance(config, Mapping):
        limits.append(config.get("maxTokenCount"))
    for limit in limits:
        if type(limit) is int:
            found["max_tokens"] = limit
            break
    return found


def _described(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Return a Bedrock call's parameters as the OpenAI-shaped arguments estimates read."""
    model_id = params.get("modelId")
    if not isinstance(model_id, str):
        return {}
    model = bedrock_model(model_id)
    if operation.startswith("Converse"):
        return bedrock_arguments({**params, "modelId": model})
    return invoke_arguments(model, _body_of(params))


def _count(value: Any) -> int | None:
    """Return a token count Bedrock reported (an int, or a header's digits), else ``None``."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _counted(
    input_tokens: Any, output_tokens: Any, cache_read: Any = 0, cache_write: Any = 0
) -> Any:
    """Return counts as a Converse-style ``usage`` response, or ``None`` without both counts."""
    read_in, read_out = _count(input_tokens), _count(output_tokens)
    if read_in is None or read_out is None:
        return None
    return {
        "usage": {
            "inputTokens": read_in,
            "outputTokens": read_out,
            "cacheReadInputTokens": _count(cache_read) or 0,
            "cacheWriteInputTokens": _count(cache_write) or 0,
        }
    }


def _invoke_usage(body: Any, headers: Mapping[str, Any]) -> Any:
    """Return what an InvokeModel response is priced from: its body's usage, else the headers'.

    Anthropic (``usage`` with ``input_tokens``) and Nova (``usage`` with
    ``inputTokens``) bodies are read as they are, cache figures included;
    Titan and Llama bodies are turned into a ``usage`` block.
    """
    if isinstance(body, Mapping):
        if isinstance(body.get("usage"), Mapping):
            return body
        if "inputTextTokenCount" in body:  # Titan text and embeddings
            results = body.get("results")
            output = 0
            if isinstance(results, list):
                output = sum(_count(item.get("tokenCount")) or 0 for item in results)
            found = _counted(body["inputTextTokenCount"], output)
            if found is not None:
                return found
        if "prompt_token_count" in body:  # Llama
            found = _counted(body["prompt_token_count"], body.get("generation_token_count"))
            if found is not None:
                return found
    return _counted(headers.get(_INPUT_HEADER), headers.get(_OUTPUT_HEADER))


def _headers(result: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = result.get("ResponseMetadata")
    headers = metadata.get("HTTPHeaders") if isinstance(metadata, Mapping) else None
    return headers if isinstance(headers, Mapping) else {}


def _read_body(result: dict[str, Any]) -> Any:
    """Read an InvokeModel response's body, put an unread copy back, and return it as JSON."""
    from botocore.response import StreamingBody  # type: ignore[import-untyped]

    body = result.get("body")
    read = getattr(body, "read", None)
    if not callable(read):
        return None
    data = read()
    result["body"] = StreamingBody(io.BytesIO(data), len(data))
    try:
        return json.loads(data)
    except ValueError:
        return None  # an image, or a body in a format the caller chose


class InvokeStreamMeter(UsageMeter):
    """Read InvokeModelWithResponseStream chunks: the model's events, then Bedrock's metrics.

    Each ``chunk`` event holds the model's own event as JSON bytes. Anthropic
    and Nova events are read for their usage; the last chunk of every model
    carries ``amazon-bedrock-invocationMetrics``, the counts used when the
    model's events report none.
    """

    __slots__ = ("_metrics",)

    def __init__(self, request_model: str | None, prompt_tokens: Callable[[], int]) -> None:
        super().__init__(request_model, prompt_tokens)
        self._metrics: Any = None

    def add(self, chunk: Any) -> None:
        """Decode one ``chunk`` event and look at the model event inside it."""
        payload = chunk.get("chunk") if isinstance(chunk, Mapping) else None
        data = payload.get("bytes") if isinstance(payload, Mapping) else None
        if not isinstance(data, (bytes, bytearray, str)):
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, Mapping):
            return
        metrics = event.get(_METRICS)
        if isinstance(metrics, Mapping):
            self._metrics = _counted(
                metrics.get("inputTokenCount"),
                metrics.get("outputTokenCount"),
                metrics.get("cacheReadInputTokenCount", 0),
                metrics.get("cacheWriteInputTokenCount", 0),
            )
        super().add(event)

    def usage(self) -> Usage | None:
        """Return the model events' reported usage, else Bedrock's metrics, else an estimate."""
        found = super().usage()
        if (found is None or found.estimated) and self._metrics is not None:
            model = found.model if found is not None else None
            return from_bedrock_usage(self._metrics["usage"], model=model or self.request_model)
        return found


class EventStreamProxy(StreamProxy):
    """Wrap botocore's ``EventStream`` (iterable, not an iterator): meter each event, settle once.

    The stream settles when it is read to its end, on ``close()``, on an
    error, or when it is garbage-collected after a ``break``.
    """

    def __init__(self, stream: Any, settlement: Settlement) -> None:
        super().__init__(stream, settlement, False)
        self._self_events: Any = None

    def __iter__(self) -> EventStreamProxy:
        return self

    def __next__(self) -> Any:
        settlement: Settlement = self._self_settlement
        try:
            if self._self_events is None:
                self._self_events = iter(self.__wrapped__)
            event = next(self._self_events)
        except StopIteration:
            settlement.settle()
            raise
        except BaseException as error:
            settlement.settle(None if isinstance(error, GeneratorExit) else error)
            raise
        settlement.meter.add(event)
        return event


def _operation(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    operation = args[0] if args else kwargs.get("operation_name")
    params = args[1] if len(args) > 1 else kwargs.get("api_params")
    return operation, params


def _service(client: Any) -> str | None:
    model = getattr(getattr(client, "meta", None), "service_model", None)
    name = getattr(model, "service_name", None)
    return name if isinstance(name, str) else None


def bedrock_api_call(guard_of: GuardSource) -> Wrapper:
    """Return the wrapper of ``BaseClient._make_api_call``: guard billed bedrock-runtime calls."""

    def call_sync(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        operation, params = _operation(args, kwargs)
        if (
            operation not in BEDROCK_OPERATIONS
            or not isinstance(params, Mapping)
            or inside_sdk_call.get()
            or _service(instance) != _SERVICE
        ):
            return wrapped(*args, **kwargs)
        guard = guard_of()
        described = _described(operation, params)
        kind = f"aws.bedrock:{operation}"
        request = _Request(guard, described, wrapped, kind, guard_of.deployments)
        # Refused here: BudgetExceededError before botocore builds the request.
        call = guard._begin(
            request.user,
            request.estimate,
            model=request.model,
            kind=kind,
            tokens=request.tokens(guard),
            provider="aws.bedrock",
        )
        token = inside_sdk_call.set(True)
        try:
            result = wrapped(*args, **kwargs)
            body = _read_body(result) if operation == "InvokeModel" else None
        except BaseException as error:  # ClientError, a timeout, an interrupt: release
            guard._finish(call, None, error=error)
            raise
        finally:
            inside_sdk_call.reset(token)
        if operation == "InvokeModel":
            guard._complete(call, _invoke_usage(body, _headers(result)))
            return result
        if operation == "Converse":
            guard._complete(call, result)
            return result
        key = "stream" if operation == "ConverseStream" else "body"
        meter: UsageMeter
        if operation == "ConverseStream":
            meter = UsageMeter(call.request_model, request.prompt_tokens)
        else:
            meter = InvokeStreamMeter(call.request_model, request.prompt_tokens)
        result[key] = EventStreamProxy(result[key], Settlement(guard, call, meter))
        return result

    return call_sync
