"""boto3's ``bedrock-runtime`` client, instrumented, against a loopback Bedrock runtime."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from budgetguard import BudgetExceededError, BudgetGuard, budget_scope, instrument, uninstrument
from budgetguard._instrument._bedrock import bedrock_model, invoke_arguments

from .conftest import reserved
from .fake_cloud import INPUT_TOKENS, OUTPUT_TOKENS, FakeCloud

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
# claude-3-5-sonnet, 1000 input and 500 output tokens: 1000 × 3 / 1e6 + 500 × 15 / 1e6
CLAUDE_COST = Decimal("0.0105")
MESSAGES = [{"role": "user", "content": [{"text": "Say hello to the wide world."}]}]
ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 600,
    "messages": [{"role": "user", "content": "Say hello to the wide world."}],
}


def _client(cloud: FakeCloud, attempts: int = 1) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=cloud.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}),
    )


@pytest.fixture
def bedrock(cloud: FakeCloud) -> Iterator[Any]:
    """Return a real boto3 bedrock-runtime client on the fake API, without retries."""
    client = _client(cloud)
    yield client
    client.close()


def _cost(model: str, input_price: str, output_price: str) -> Decimal:
    """Return what 1000 input and 500 output tokens cost at per-million prices."""
    return (INPUT_TOKENS * Decimal(input_price) + OUTPUT_TOKENS * Decimal(output_price)) / 1_000_000


@pytest.mark.parametrize(
    "model_id",
    [
        CLAUDE,
        f"us.{CLAUDE}",
        f"arn:aws:bedrock:us-east-1::foundation-model/{CLAUDE}",
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{CLAUDE}",
    ],
)
def test_converse_is_charged_its_usage(guard: BudgetGuard, bedrock: Any, model_id: str) -> None:
    """Charge converse exactly from its usage, for model ids, inference profiles and ARNs."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = bedrock.converse(modelId=model_id, messages=MESSAGES)
    assert reply["output"]["message"]["content"][0]["text"] == "Hello wide world"
    assert guard.spend("alice") == CLAUDE_COST
    assert reserved(guard, "alice") == 0


def test_arn_is_estimated_at_its_model_price(guard: BudgetGuard, bedrock: Any) -> None:
    """Admit an ARN call whose estimate at Claude's price fits, where the fallback would not."""
    # 600 output tokens: $0.009 at Claude's $15/M, $0.024 at the fallback's $40/M.
    guard.set_budget("0.015", user="alice")
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{CLAUDE}"
    with budget_scope("alice"):
        bedrock.converse(modelId=arn, messages=MESSAGES, inferenceConfig={"maxTokens": 600})
    assert guard.spend("alice") == CLAUDE_COST


def test_refused_calls_send_no_request(guard: BudgetGuard, bedrock: Any, cloud: FakeCloud) -> None:
    """Refuse every guarded operation before botocore sends anything."""
    guard.set_budget("0.0001", user="alice")
    body = json.dumps(ANTHROPIC_BODY)
    with budget_scope("alice"):
        with pytest.raises(BudgetExceededError):
            bedrock.converse(modelId=CLAUDE, messages=MESSAGES, inferenceConfig={"maxTokens": 600})
        with pytest.raises(BudgetExceededError):
            bedrock.converse_stream(
                modelId=CLAUDE, messages=MESSAGES, inferenceConfig={"maxTokens": 600}
            )
        with pytest.raises(BudgetExceededError):
            bedrock.invoke_model(modelId=CLAUDE, body=body)
        with pytest.raises(BudgetExceededError):
            bedrock.invoke_model_with_response_stream(modelId=CLAUDE, body=body)
    assert cloud.requests == []
    assert guard.spend("alice") == 0


def test_converse_stream_read_to_the_end_is_charged_once(
    guard: BudgetGuard, bedrock: Any, cloud: FakeCloud
) -> None:
    """Charge converse_stream once, from its metadata event, when read to the end."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)
        events = list(reply["stream"])
    texts = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert "".join(texts) == "Hello wide world"
    assert "metadata" in events[-1]
    assert guard.spend("alice") == CLAUDE_COST
    assert reserved(guard, "alice") == 0
    assert len(cloud.requests) == 1


def _early_cost(guard: BudgetGuard) -> Decimal:
    """Return what a Claude stream left after its first text costs: the prompt and that text."""
    from budgetguard.tokens import count_tokens

    prompt = count_tokens([{"role": "user", "content": MESSAGES[0]["content"][0]["text"]}], CLAUDE)
    output = count_tokens("Hello", "")
    return (prompt * Decimal(3) + output * Decimal(15)) / 1_000_000


def test_converse_stream_closed_early_settles(guard: BudgetGuard, bedrock: Any) -> None:
    """Settle a stream closed before its metadata at the prompt plus the text seen, estimated."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        stream = bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
        for event in stream:
            if "contentBlockDelta" in event:
                break
        stream.close()
        assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == _early_cost(guard)


def test_converse_stream_left_with_break_settles_when_collected(
    guard: BudgetGuard, bedrock: Any
) -> None:
    """Settle a stream left with ``break`` once it is garbage-collected, exactly once."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)
        for event in reply["stream"]:
            if "contentBlockDelta" in event:
                break
        del reply, event
        gc.collect()
    assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == _early_cost(guard)


def test_stream_failing_half_way_is_charged_what_it_showed(
    guard: BudgetGuard, bedrock: Any, cloud: FakeCloud
) -> None:
    """Settle a stream that breaks with a model error at the prompt and the text it showed."""
    guard.set_budget("1", user="alice")
    cloud.fail_streams = True
    with budget_scope("alice"):
        stream = bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
        with pytest.raises(ClientError, match="modelStreamErrorException"):
            for _ in stream:
                pass
    assert reserved(guard, "alice") == 0
    assert guard.spend("alice") == _early_cost(guard)


@pytest.mark.parametrize(
    ("model_id", "body", "cost"),
    [
        (CLAUDE, ANTHROPIC_BODY, CLAUDE_COST),
        (
            "amazon.nova-lite-v1:0",
            {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 600}},
            _cost("nova", "0.06", "0.24"),
        ),
        (
            "amazon.titan-text-express-v1",
            {"inputText": "Say hello", "textGenerationConfig": {"maxTokenCount": 600}},
            _cost("titan", "0.2", "0.6"),
        ),
        (
            "meta.llama3-1-8b-instruct-v1:0",
            {"prompt": "Say hello", "max_gen_len": 600},
            _cost("llama", "0.22", "0.22"),
        ),
        # Mistral's body reports no usage: Bedrock's token-count headers are read.
        (
            "mistral.mistral-7b-instruct-v0:2",
            {"prompt": "<s>[INST] Say hello [/INST]", "max_tokens": 600},
            _cost("mistral", "0.15", "0.2"),
        ),
    ],
)
def test_invoke_model_is_charged_its_usage(
    guard: BudgetGuard, bedrock: Any, model_id: str, body: dict[str, Any], cost: Decimal
) -> None:
    """Charge invoke_model from its body, else Bedrock's headers; the caller can still read it."""
    with budget_scope("alice"):
        reply = bedrock.invoke_model(modelId=model_id, body=json.dumps(body))
    assert "Hello wide world" in reply["body"].read().decode()
    assert guard.spend("alice") == cost


@pytest.mark.parametrize("model_id", [CLAUDE, "amazon.titan-text-express-v1"])
def test_invoke_stream_is_charged_once(guard: BudgetGuard, bedrock: Any, model_id: str) -> None:
    """Charge invoke_model_with_response_stream once: Anthropic's events, else Bedrock's metrics."""
    cost = CLAUDE_COST if model_id == CLAUDE else _cost("titan", "0.2", "0.6")
    body = ANTHROPIC_BODY if model_id == CLAUDE else {"inputText": "Say hello"}
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = bedrock.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
        chunks = [json.loads(event["chunk"]["bytes"]) for event in reply["body"]]
    assert len(chunks) >= 3
    assert guard.spend("alice") == cost
    assert reserved(guard, "alice") == 0


def test_failed_call_releases_the_reservation(
    guard: BudgetGuard, bedrock: Any, cloud: FakeCloud
) -> None:
    """Charge and hold nothing after an HTTP 500 that botocore did not retry."""
    guard.set_budget("1", user="alice")
    cloud.failures = 2
    with budget_scope("alice"):
        with pytest.raises(ClientError):
            bedrock.converse(modelId=CLAUDE, messages=MESSAGES)
        with pytest.raises(ClientError):
            bedrock.converse_stream(modelId=CLAUDE, messages=MESSAGES)
    assert guard.spend("alice") == 0
    assert reserved(guard, "alice") == 0
    assert len(cloud.requests) == 2


def test_retried_calls_are_charged_once(guard: BudgetGuard, cloud: FakeCloud) -> None:
    """Charge each call that botocore retried after a 500 once, for the response that came back."""
    client = _client(cloud, attempts=3)
    guard.set_budget("1", user="alice")
    try:
        with budget_scope("alice"):
            cloud.failures = 1
            client.converse(modelId=CLAUDE, messages=MESSAGES)
            cloud.failures = 1
            list(client.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"])
            cloud.failures = 1
            client.invoke_model(modelId=CLAUDE, body=json.dumps(ANTHROPIC_BODY))
    finally:
        client.close()
    assert len(cloud.requests) == 6
    assert guard.spend("alice") == CLAUDE_COST * 3
    assert reserved(guard, "alice") == 0


def test_invoke_stream_left_with_break_settles_when_collected(
    guard: BudgetGuard, bedrock: Any
) -> None:
    """Settle an invoke stream left after its first chunk once collected, at what it reported."""
    guard.set_budget("1", user="alice")
    with budget_scope("alice"):
        reply = bedrock.invoke_model_with_response_stream(
            modelId=CLAUDE, body=json.dumps(ANTHROPIC_BODY)
        )
        for _ in reply["body"]:
            break
        del reply
        gc.collect()
    assert reserved(guard, "alice") == 0
    # message_start reported the prompt and one output token: 1000 × 3 / 1e6 + 1 × 15 / 1e6.
    assert guard.spend("alice") == Decimal("0.003015")


def test_other_services_and_operations_pass_through(
    guard: BudgetGuard, bedrock: Any, cloud: FakeCloud
) -> None:
    """Leave other services and unbilled operations untouched: nothing reserved or charged."""
    s3 = boto3.client(
        "s3",
        endpoint_url=cloud.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}),
    )
    guard.set_budget("0", user="alice")
    try:
        # The fake answers 404 to both: the requests left, unbudgeted, though alice has $0.
        with budget_scope("alice"):
            with pytest.raises(ClientError):
                s3.put_object(Bucket="b", Key="k", Body=b"x")
            with pytest.raises(ClientError):
                bedrock.count_tokens(modelId=CLAUDE, input={"converse": {"messages": MESSAGES}})
    finally:
        s3.close()
    assert len(cloud.requests) == 2
    assert guard.spend("alice") == 0


def test_model_ids_and_bodies_are_read_for_the_estimate() -> None:
    """Read ARNs to their model, and each family's body to a prompt and an output limit."""
    assert bedrock_model(f"arn:aws:bedrock:us-east-1::foundation-model/{CLAUDE}") == CLAUDE
    profile = "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0"
    assert bedrock_model(profile) == "eu.amazon.nova-lite-v1:0"
    opaque = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    assert bedrock_model(opaque) == opaque
    assert invoke_arguments(CLAUDE, {**ANTHROPIC_BODY, "system": "Be brief"}) == {
        "model": CLAUDE,
        "messages": [{"role": "user", "content": "Say hello to the wide world."}],
        "system": "Be brief",
        "max_tokens": 600,
    }
    titan = {"inputText": "Hi", "textGenerationConfig": {"maxTokenCount": 50}}
    assert invoke_arguments("amazon.titan-text-express-v1", titan) == {
        "model": "amazon.titan-text-express-v1",
        "prompt": "Hi",
        "max_tokens": 50,
    }
    assert invoke_arguments("meta.llama3", {"prompt": "Hi", "max_gen_len": 9})["max_tokens"] == 9
    assert invoke_arguments("cohere.embed", {"texts": ["a", "b"]})["prompt"] == "a\nb"


def test_uninstrument_restores_botocore(guard: BudgetGuard) -> None:
    """Put BaseClient._make_api_call back as it was before instrument()."""
    uninstrument()
    original = botocore.client.BaseClient.__dict__["_make_api_call"]
    assert "botocore.client.BaseClient._make_api_call" in instrument(guard)
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is not original
    uninstrument()
    assert botocore.client.BaseClient.__dict__["_make_api_call"] is original


_ABSENT = """
import importlib.abc
import sys


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("botocore", "boto3") or name.startswith("google.genai"):
            raise ModuleNotFoundError(name)
        return None


sys.meta_path.insert(0, Hide())
import budgetguard

names = budgetguard.instrument()
assert any(name.startswith("openai.") for name in names), names
assert not [n for n in names if n.startswith(("google.genai", "botocore"))], names
loaded = [m for m in sys.modules if m.startswith(("google.genai", "botocore", "boto3"))]
assert not loaded, loaded
budgetguard.uninstrument()
"""

_LAZY = """
import sys
import budgetguard
loaded = [m for m in sys.modules if m.startswith(("google.genai", "botocore", "boto3"))]
assert not loaded, loaded
"""


@pytest.mark.parametrize("script", [_ABSENT, _LAZY], ids=["absent", "installed"])
def test_sdks_are_imported_only_when_installed_and_instrumented(script: str) -> None:
    """Never import google-genai or botocore when absent, nor on ``import budgetguard``."""
    root = Path(__file__).resolve().parent.parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
