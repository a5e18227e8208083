"""Count what reading one response's usage and pricing it into ledger units costs.

The path measured is the one a guarded call ends on: ``Pricer.of_result`` (read
the usage of an OpenAI ``ChatCompletion``, price it for a known model) and the
ledger units it comes to.

Timing, both paths side by side in one run (compare the ratio, not the µs)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/extract_price.py

Instruction counts (repeatable whatever the load): N calls minus a 0-call run::

    for n in 0 2000; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/ep.$n.out \\
        .venv/bin/python benchmarks/extract_price.py $n units; done
    # (summary of 2000) - (summary of 0), divided by 2000

The second argument picks the path: ``units`` (what the lifecycle calls,
integers end to end) or ``decimal`` (``Pricer.price`` then ``to_units``,
which listeners and ``guard.price`` still use).
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from typing import Any

import openai.types.chat

from budgetguard._call import Call
from budgetguard._costing import Pricer
from budgetguard._estimate import Learner
from budgetguard.money import to_units
from budgetguard.pricing import default_table
from budgetguard.usage import extract_usage


def _response() -> Any:
    return openai.types.chat.ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 2000,
                "completion_tokens": 300,
                "total_tokens": 2300,
                "prompt_tokens_details": {"cached_tokens": 1500, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 100, "audio_tokens": 0},
            },
        }
    )


def _paths() -> dict[str, Callable[[], object]]:
    """Return each path as a callable of no arguments that prices the same response."""
    default_table()  # load the shipped table outside the measurement
    pricer = Pricer("fallback", ("10", "40"), 1000, Learner())
    call = Call.__new__(Call)
    call.has_inner = False
    call.request_model = "gpt-4o"
    response = _response()

    def decimal() -> object:
        usage = extract_usage(response)
        assert usage is not None
        cost, _ = pricer.price(usage, "gpt-4o")
        return to_units(cost)

    paths: dict[str, Callable[[], object]] = {"decimal": decimal}
    paths["extract"] = lambda: extract_usage(response)
    usage = extract_usage(response)
    assert usage is not None
    price_units = getattr(pricer, "price_units", None)
    if price_units is not None:
        paths["price"] = lambda: price_units(usage, "gpt-4o")
    units_of_result = getattr(pricer, "units_of_result", None)
    if units_of_result is not None:
        paths["units"] = lambda: units_of_result(call, response)[0]
    else:  # before the integer path existed: what the lifecycle did
        paths["units"] = lambda: to_units(pricer.of_result(call, response)[0])  # type: ignore[arg-type]
    return paths


def _best_us(stmt: Callable[[], object], number: int) -> float:
    return min(timeit.Timer(stmt).repeat(repeat=7, number=number)) / number * 1e6


def main() -> None:
    """Run N calls of one path (callgrind), or time every path (no arguments)."""
    paths = _paths()
    if len(sys.argv) > 1:
        run = paths[sys.argv[2] if len(sys.argv) > 2 else "units"]
        for _ in range(int(sys.argv[1])):
            run()
        return
    figures = {name: _best_us(run, 20_000) for name, run in paths.items()}
    for name, micros in figures.items():
        print(f"extract + price to units, {name:8s} {micros:6.2f} us")
    print(f"decimal / units: {figures['decimal'] / figures['units']:.2f}x")


if __name__ == "__main__":
    main()
