"""Measure what instrumentation adds to google-genai and boto3 Bedrock calls on loopback.

Run: python benchmarks/instrument_cloud.py [--calls N] [--repeats R]

Drives the real google-genai and boto3 clients against the fake Gemini and
Bedrock APIs of the tests (tests/instrument/fake_cloud.py) on 127.0.0.1, the
same way as benchmarks/instrument.py: each case bare, then instrumented, in
interleaved batches, and prints microseconds per call and the ratio. The
last case is a boto3 call budgetguard passes through (CountTokens): what
every other AWS call of an instrumented process pays.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import boto3
from botocore.config import Config
from google import genai
from google.genai import types

import budgetguard as bg

_HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path, package: Path | None = None) -> ModuleType:
    search = None if package is None else [str(package)]
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wrapper_alone(calls: int, repeats: int) -> None:
    """Print µs per call of the wrappers alone, given canned replies (no HTTP, no noise of it)."""
    import statistics
    import time

    from budgetguard._instrument import _patches
    from budgetguard._instrument._bedrock import bedrock_api_call
    from budgetguard._instrument._genai import sync_genai

    guard = bg.BudgetGuard(metrics=False)
    guard.set_budget("1000000", user="bench")
    bg.instrument(guard)
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    reply = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
        "usage": {"inputTokens": 1000, "outputTokens": 500, "totalTokens": 1500},
    }
    params = {
        "modelId": "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "messages": [{"role": "user", "content": [{"text": "Say hello, briefly."}]}],
        "inferenceConfig": {"maxTokens": 500},
    }
    response = types.GenerateContentResponse.model_validate(
        {
            "candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}}],
            "usage_metadata": {"prompt_token_count": 1000, "candidates_token_count": 500},
            "model_version": "gemini-2.5-flash",
        }
    )
    config = types.GenerateContentConfig(max_output_tokens=500)
    converse = bedrock_api_call(_patches)
    generate = sync_genai("generate_content")(_patches)
    arguments = {"model": "gemini-2.5-flash", "contents": "Say hello", "config": config}
    cases: dict[str, Callable[[], object]] = {
        "bedrock Converse wrapper": lambda: converse(
            lambda *_: reply, client, ("Converse", params), {}
        ),
        "bedrock wrapper, call passed through": lambda: converse(
            lambda *_: reply, client, ("CountTokens", params), {}
        ),
        "genai _generate_content wrapper": lambda: generate(
            lambda **_: response, None, (), arguments
        ),
    }
    print(f"wrappers alone, canned replies: median µs per call of {repeats} batches of {calls}")
    with bg.budget_scope("bench"):
        for name, function in cases.items():
            batches = []
            for _ in range(repeats):
                start = time.perf_counter_ns()
                for _ in range(calls):
                    function()
                batches.append((time.perf_counter_ns() - start) / calls / 1000)
            print(f"{name:42} {statistics.median(batches):9.2f}")
    bg.uninstrument()
    client.close()
    guard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=9)
    options = parser.parse_args()
    fakes = _HERE.parent / "tests" / "instrument"  # a package: fake_cloud imports fake_llm
    _load("fakes", fakes / "__init__.py", package=fakes)
    fake = importlib.import_module("fakes.fake_cloud")
    shared = _load("instrument_bench", _HERE / "instrument.py")
    claude = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    messages = [{"role": "user", "content": [{"text": "Say hello to the wide world, briefly."}]}]
    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "Say hello to the wide world, briefly."}],
        }
    )
    with fake.serve() as server:
        gemini = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=server.url))
        config = types.GenerateContentConfig(max_output_tokens=500)
        bedrock = boto3.client(
            "bedrock-runtime",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(retries={"total_max_attempts": 1}),
        )

        def count_tokens() -> None:
            # The fake has no CountTokens: a 404, sent unbudgeted.
            with contextlib.suppress(bedrock.exceptions.ClientError):
                bedrock.count_tokens(modelId=claude, input={"converse": {"messages": messages}})

        cases: dict[str, Callable[[], object]] = {
            "genai generate_content": lambda: gemini.models.generate_content(
                model="gemini-2.5-flash", contents="Say hello", config=config
            ),
            "genai stream, read to the end": lambda: list(
                gemini.models.generate_content_stream(
                    model="gemini-2.5-flash", contents="Say hello", config=config
                )
            ),
            "genai embed_content": lambda: gemini.models.embed_content(
                model="gemini-embedding-001", contents=["hello world"]
            ),
            "bedrock converse": lambda: bedrock.converse(
                modelId=claude, messages=messages, inferenceConfig={"maxTokens": 500}
            ),
            "bedrock converse_stream, read to the end": lambda: list(
                bedrock.converse_stream(
                    modelId=claude, messages=messages, inferenceConfig={"maxTokens": 500}
                )["stream"]
            ),
            "bedrock invoke_model (Anthropic body)": lambda: bedrock.invoke_model(
                modelId=claude, body=body
            )["body"].read(),
            "boto3 call passed through": count_tokens,
        }
        guard = bg.BudgetGuard(metrics=False)
        guard.set_budget("1000000", user="bench")
        print(f"{options.repeats} interleaved batches of {options.calls} calls, median µs per call")
        print(f"{'case':42} {'bare':>9} {'instrumented':>13} {'ratio':>7} {'added':>8}")
        for name, function in cases.items():
            bare, guarded = shared.compare(function, guard, options.calls, options.repeats)
            print(
                f"{name:42} {bare:9.1f} {guarded:13.1f} {guarded / bare:7.3f} {guarded - bare:8.1f}"
            )
        gemini.close()
        bedrock.close()
        guard.close()
    wrapper_alone(options.calls * 20, options.repeats)


if __name__ == "__main__":
    main()
