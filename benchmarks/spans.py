"""CPU instructions the Spans listener adds to a guarded call, counted by callgrind.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/spans.py [--calls N]

Each case is one ``@budgeted`` call on the memory ledger (a user and a global
budget, metrics off, ``cost=`` given), counted as ``(instructions of N calls -
instructions of 0 calls) / N`` with ``PYTHONHASHSEED=0``, so start-up and
imports cancel out. Cases:

- ``no spans``: no Spans listener (the baseline);
- ``a listener``: a listener that does nothing (what any listener costs: the
  guard builds each call's outcome for it);
- ``spans, no SDK``: ``spans=True`` with only ``opentelemetry-api`` (no-op spans);
- ``genai span``: an SDK TracerProvider, each call inside a GenAI span (as
  OpenLLMetry's or the contrib instrumentation's): cost and outcome added to it;
- ``own span``: an SDK TracerProvider, ``own_spans=True``, no span around: a
  client span of budgetguard's own per call.

The GenAI span of the ``genai span`` case is opened in every case (without a
listener too), so the difference is what the listener adds. Spans go to a
processor that drops them. Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from hotpath import per_call

CALL = """
import sys
import budgetguard as bg
from budgetguard.telemetry import Spans
n, mode = int(sys.argv[1]), sys.argv[2]
provider = None
if mode in ("genai", "own", "genai-base"):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
spans = {
    "none": None,
    "listener": None,
    "noop": True,
    "genai-base": None,
    "genai": Spans(tracer_provider=provider),
    "own": Spans(tracer_provider=provider, own_spans=True),
}[mode]
guard = bg.BudgetGuard("memory://", metrics=False, spans=spans)
if mode == "listener":

    class Nothing:
        def call_ended(self, outcome): pass
        def call_refused(self, error, *, user, request_model): pass
        def threshold_crossed(self, crossing): pass
        def storage_failed(self, error, *, policy): pass

    guard.add_listener(Nothing())
guard.set_budget("1000000", user="alice", period="monthly")
guard.set_budget("10000000", period="monthly")
call = guard.budgeted(user="alice", estimate="0.001", cost=lambda r: "0.0005")(lambda: None)
if mode.startswith("genai"):
    tracer = provider.get_tracer("an.instrumentation")
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}

    def one():
        with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):
            call()
else:
    one = call
one(); one()
for _ in range(n):
    one()
"""

CASES = (
    ("no spans", "none", "none"),
    ("a listener", "listener", "none"),
    ("spans, no SDK", "noop", "none"),
    ("genai span", "genai", "genai-base"),
    ("own span", "own", "none"),
)


def main() -> None:
    """Print the instructions per call of each case and what the listener adds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install -y valgrind")
    here = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "spans_call.py"
        script.write_text(CALL)
        counted: dict[str, int] = {}
        print(f"{'case':<16}{'per call':>12}{'baseline':>12}{'added':>12}")
        for label, mode, base in CASES:
            for name in (mode, base):
                if name not in counted:
                    counted[name] = per_call(script, name, here, args.calls)
            added = counted[mode] - counted[base]
            print(f"{label:<16}{counted[mode]:>12,}{counted[base]:>12,}{added:>12,}")


if __name__ == "__main__":
    main()
