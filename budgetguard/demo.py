"""The workload behind ``budgetguard demo``: a small multi-user LLM app, offline.

Several users ask questions of OpenAI, Anthropic and Gemini models, some
answers streamed, one research agent runs under a per-run cap, and one user is
on a tiny trial budget. Every call goes through the real ``@budgeted``
decorator, ``budget_scope``, the price table, the ledger and the metrics; only
the model replies are made up, locally, in each provider's own response shape
(the JSON the official SDKs return from ``model_dump()``): no network, no key.

Nothing here prints: progress goes to the stream the caller hands over.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

from .decorators import budgeted
from .errors import BudgetExceededError
from .events import CallOutcome, ThresholdCrossing
from .guard import BudgetGuard
from .scope import budget_scope

__all__ = [
    "AGENT_LIMIT",
    "DemoResult",
    "FakeLLM",
    "LedgerInUseError",
    "Refused",
    "ledger_contents",
    "run_demo",
]

USER_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")

# (provider, model the app asks for, snapshot the provider answers with, weight)
MODELS: tuple[tuple[str, str, str, int], ...] = (
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 5),
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", 2),
    ("anthropic", "claude-haiku-4-5", "claude-haiku-4-5-20251001", 3),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", 2),
    ("gemini", "gemini-2.5-flash", "gemini-2.5-flash", 3),
    ("gemini", "gemini-2.5-pro", "gemini-2.5-pro", 1),
)
AGENT_MODEL = ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929")

#: What the demo's budgets are: global per day, default per user per month,
#: the trial user's per day, and the cap of one agent run.
GLOBAL_LIMIT = Decimal("25")
DEFAULT_LIMIT = Decimal("2")
TRIAL_LIMIT = Decimal("0.03")
AGENT_LIMIT = Decimal("0.05")

QUESTIONS = (
    "Summarise this support ticket and suggest a reply.",
    "Translate the release notes below into German.",
    "Which of these invoices look like duplicates?",
    "Write a SQL query that finds churned customers from the schema below.",
    "Explain the stack trace below to a junior engineer.",
    "Draft a polite follow-up email about the overdue order.",
    "Classify the sentiment of each review below.",
    "Extract the dates and amounts from this contract excerpt.",
)
WORDS = (
    "the", "customer", "order", "invoice", "shipping", "delay", "refund", "account",
    "payment", "service", "request", "error", "database", "query", "latency", "budget",
    "report", "quarterly", "revenue", "team", "release", "feature", "update", "deploy",
    "incident", "review", "contract", "clause", "party", "date",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    """One call the demo app makes on behalf of a user."""

    user: str
    provider: str
    model: str
    snapshot: str
    stream: bool
    question: str
    context_words: int
    max_tokens: int
    seed: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A call a budget refused, and why."""

    user: str
    model: str
    what: str  # "request" or "agent step N"
    error: BudgetExceededError


@dataclass
class Totals:
    """In-process totals of the calls that ran (a listener on the guard)."""

    calls: int = 0
    streamed: int = 0
    refused: int = 0
    spent: Decimal = Decimal(0)
    by_model: dict[str, Decimal] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    alerts: list[ThresholdCrossing] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def call_ended(self, outcome: CallOutcome) -> None:
        """Count one call and what it cost."""
        with self.lock:
            self.calls += 1
            self.spent += outcome.cost
            model = outcome.request_model or outcome.response_model or "?"
            self.by_model[model] = self.by_model.get(model, Decimal(0)) + outcome.cost
            usage = outcome.usage
            if usage is not None:
                self.input_tokens += usage.total_input_tokens
                self.output_tokens += usage.total_output_tokens

    def call_refused(
        self, error: BudgetExceededError, *, user: str | None, request_model: str | None
    ) -> None:
        """Count one refusal."""
        with self.lock:
            self.refused += 1

    def threshold_crossed(self, crossing: ThresholdCrossing) -> None:
        """Keep an alert."""
        with self.lock:
            self.alerts.append(crossing)

    def storage_failed(self, error: Exception, *, policy: str) -> None:
        """Ignore: a failing ledger surfaces as the call's own error."""


@dataclass
class DemoResult:
    """What a demo run did: its guard (still open), refusals, totals, exported metrics."""

    guard: BudgetGuard
    users: tuple[str, ...]
    trial_user: str
    agent_user: str
    refused: list[Refused]
    totals: Totals
    agent_steps: int
    agent_spent: Decimal
    seconds: float
    #: The SDK's ``MetricsData`` read once at the end, or ``None`` without the OpenTelemetry SDK.
    metrics: Any | None
    #: What the ledger held before the demo wrote to it (budgets, keys); (0, 0) when new.
    found: tuple[int, int] = (0, 0)
    _provider: Any = None

    def metrics_text(self) -> str:
        """Return every exported data point, one a line: ``name{attr="value",...} value``."""
        return format_metrics(self.metrics) if self.metrics is not None else ""

    def metrics_json(self) -> str:
        """Return the exported metrics as the OpenTelemetry SDK's own JSON."""
        if self.metrics is None:
            return ""
        text: str = self.metrics.to_json(indent=2)
        return text + "\n"

    def close(self) -> None:
        """Shut the metrics pipeline and the guard down."""
        self.guard.close()
        if self._provider is not None:
            self._provider.shutdown()


def demo_prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    """Count a prompt as the demo's fake provider does: four characters a token, plus framing.

    Fixed on purpose: the demo's figures must not depend on which tokenizer
    (tiktoken's cache, the ``tokens`` extra, or none) is installed.
    """
    return sum(-(-len(str(message.get("content", ""))) // 4) + 4 for message in messages) + 3


def demo_estimate(*args: Any, **kwargs: Any) -> Decimal:
    """Return what a demo call may cost: its prompt and ``max_tokens`` at the model's price."""
    from .pricing import cost_of
    from .usage import Usage

    model = str(kwargs["model"])
    usage = Usage(
        input_tokens=demo_prompt_tokens(kwargs["messages"]),
        output_tokens=int(kwargs["max_tokens"]),
        model=model,
        estimated=True,
    )
    return cost_of(usage, model).total


class FakeLLM:
    """Answer like OpenAI, Anthropic and Gemini do, in their JSON shapes, without a network."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

    # -- what every provider needs --------------------------------------------------

    def _sizes(
        self, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> tuple[int, int, int, str]:
        rng = random.Random(seed)
        # The fake provider counts the prompt its own fixed way, so that the
        # demo's figures are the same whatever tokenizer is installed.
        prompt_tokens = demo_prompt_tokens(messages)
        output_tokens = rng.randint(max(16, max_tokens // 5), max_tokens)
        # A prompt seen a moment ago is partly served from the provider's cache.
        cached = (prompt_tokens // 2) // 64 * 64 if rng.random() < 0.3 else 0
        text = " ".join(rng.choice(WORDS) for _ in range(max(1, output_tokens * 3 // 4)))
        if self.latency:
            time.sleep(self.latency)
        return prompt_tokens, output_tokens, cached, text

    @staticmethod
    def _id(prefix: str, seed: int) -> str:
        return prefix + hashlib.sha1(str(seed).encode()).hexdigest()[:24]

    @staticmethod
    def _pieces(text: str, count: int = 6) -> list[str]:
        words = text.split(" ")
        size = max(1, math.ceil(len(words) / count))
        return [" ".join(words[i : i + size]) + " " for i in range(0, len(words), size)]

    # -- OpenAI Chat Completions ------------------------------------------------------

    def openai_chat(
        self, snapshot: str, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> dict[str, Any]:
        """Return a ``chat.completion`` as the OpenAI API sends it."""
        prompt, output, cached, text = self._sizes(messages, max_tokens, seed)
        return {
            "id": self._id("chatcmpl-", seed),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": snapshot,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt + output,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_demo",
        }

    def openai_chat_stream(
        self, snapshot: str, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> Iterator[dict[str, Any]]:
        """Yield ``chat.completion.chunk`` objects, usage last (``include_usage``)."""
        whole = self.openai_chat(snapshot, messages, max_tokens, seed)
        base = {
            "id": whole["id"],
            "object": "chat.completion.chunk",
            "created": whole["created"],
            "model": snapshot,
            "system_fingerprint": "fp_demo",
        }
        yield {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
            "usage": None,
        }
        for piece in self._pieces(whole["choices"][0]["message"]["content"]):
            yield {
                **base,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                "usage": None,
            }
        yield {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": None,
        }
        yield {**base, "choices": [], "usage": whole["usage"]}

    # -- Anthropic Messages ------------------------------------------------------------

    def anthropic_message(
        self, snapshot: str, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> dict[str, Any]:
        """Return a Messages API ``message``: cache reads come on top of ``input_tokens``."""
        prompt, output, cached, text = self._sizes(messages, max_tokens, seed)
        return {
            "id": self._id("msg_", seed),
            "type": "message",
            "role": "assistant",
            "model": snapshot,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt - cached,
                "output_tokens": output,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
                "service_tier": "standard",
            },
        }

    def anthropic_stream(
        self, snapshot: str, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> Iterator[dict[str, Any]]:
        """Yield Messages stream events; ``message_delta`` carries the cumulative output."""
        whole = self.anthropic_message(snapshot, messages, max_tokens, seed)
        usage = whole["usage"]
        yield {
            "type": "message_start",
            "message": {
                **whole,
                "content": [],
                "stop_reason": None,
                "usage": {**usage, "output_tokens": 1},
            },
        }
        yield {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        for piece in self._pieces(whole["content"][0]["text"]):
            yield {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
        yield {"type": "content_block_stop", "index": 0}
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
        yield {"type": "message_stop"}

    # -- Gemini (google-genai GenerateContentResponse) -----------------------------------

    def gemini_generate(
        self, snapshot: str, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> dict[str, Any]:
        """Return a ``GenerateContentResponse`` as google-genai's ``model_dump()`` gives it."""
        prompt, output, cached, text = self._sizes(messages, max_tokens, seed)
        # 2.5 models think before they answer; thinking is billed as output.
        thoughts = output // 3 if "2.5" in snapshot else 0
        return {
            "candidates": [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finish_reason": "STOP",
                    "index": 0,
                }
            ],
            "usage_metadata": {
                "prompt_token_count": prompt,
                "candidates_token_count": output,
                "thoughts_token_count": thoughts,
                "cached_content_token_count": cached,
                "total_token_count": prompt + output + thoughts,
            },
            "model_version": snapshot,
            "response_id": self._id("", seed),
        }

    def gemini_stream(
        self, snapshot: str, messages: Sequence[dict[str, str]], max_tokens: int, seed: int
    ) -> Iterator[dict[str, Any]]:
        """Yield response chunks; every one carries the usage so far, the last one all of it."""
        whole = self.gemini_generate(snapshot, messages, max_tokens, seed)
        metadata = whole["usage_metadata"]
        pieces = self._pieces(whole["candidates"][0]["content"]["parts"][0]["text"])
        for number, piece in enumerate(pieces, 1):
            last = number == len(pieces)
            yield {
                "candidates": [
                    {
                        "content": {"parts": [{"text": piece}], "role": "model"},
                        "finish_reason": "STOP" if last else None,
                        "index": 0,
                    }
                ],
                "usage_metadata": metadata
                if last
                else {
                    "prompt_token_count": metadata["prompt_token_count"],
                    "total_token_count": metadata["prompt_token_count"],
                },
                "model_version": whole["model_version"],
            }

    # -- one entry point ----------------------------------------------------------------

    def reply(
        self,
        provider: str,
        snapshot: str,
        messages: Sequence[dict[str, str]],
        max_tokens: int,
        seed: int,
        *,
        stream: bool,
    ) -> Any:
        """Answer as ``provider`` would: a response, or an iterator of chunks."""
        if provider == "openai":
            make = self.openai_chat_stream if stream else self.openai_chat
        elif provider == "anthropic":
            make = self.anthropic_stream if stream else self.anthropic_message
        else:
            make = self.gemini_stream if stream else self.gemini_generate
        return make(snapshot, messages, max_tokens, seed)


def _messages(question: str, context_words: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    context = " ".join(rng.choice(WORDS) for _ in range(context_words))
    return [
        {"role": "system", "content": "You are a helpful assistant for an online shop."},
        {"role": "user", "content": f"{question}\n\n{context}"},
    ]


def plan_requests(users: Sequence[str], calls: int, seed: int) -> list[list[Request]]:
    """Return each user's requests, in order: the same for the same seed."""
    rng = random.Random(seed)
    weights = [weight for *_, weight in MODELS]
    plans: list[list[Request]] = [[] for _ in users]
    for number in range(calls):
        index = number % len(users)
        provider, model, snapshot, _ = rng.choices(MODELS, weights)[0]
        plans[index].append(
            Request(
                user=users[index],
                provider=provider,
                model=model,
                snapshot=snapshot,
                stream=rng.random() < 0.35,
                question=rng.choice(QUESTIONS),
                context_words=rng.randint(80, 1500),
                max_tokens=rng.choice((256, 512, 1024)),
                seed=rng.getrandbits(32),
            )
        )
    return plans


class _Progress:
    """Show how far the workload is: one redrawn line on a terminal, a few lines in a log.

    Every other line written while the bar is shown -- the demo's own, and the
    library's log records (the 80 % alert) through ``handler()`` -- first clears
    the bar and then draws it again below, so that the two never share a line.
    """

    def __init__(self, out: TextIO | None, total: int, spent: Callable[[], Decimal]) -> None:
        self.out = out
        self.total = max(total, 1)
        self.done = 0
        self.refused = 0
        self.spent = spent
        self.lock = threading.RLock()
        self.tty = bool(out is not None and out.isatty())
        # COLUMNS, else the terminal's width, else 80: logs are read in terminals too.
        self.width = shutil.get_terminal_size((80, 24)).columns
        self._drawn = False  # the bar is on the terminal's last line, without a newline
        self._finished = False
        self._shown = 0  # tenths of the work already logged, off a terminal

    def say(self, text: str) -> None:
        """Write one line of progress, above the bar on a terminal."""
        if self.out is None:
            return
        # A line longer than the terminal would push the bar down a row.
        text = "\n".join(textwrap.wrap(text, self.width - 1, subsequent_indent="    "))
        with self.lock:
            if self._drawn:
                self.out.write("\r\033[K")
            self.out.write(text + "\n")
            if self._drawn:
                self._draw()
            self.out.flush()

    def tick(self, refused: bool) -> None:
        """Count one finished call."""
        with self.lock:
            self.done += 1
            self.refused += refused
            if self.out is None or self._finished:
                return
            if self.tty:
                self._draw()
                self.out.flush()
                return
            step = self.done * 10 // self.total
            if step != self._shown:
                self._shown = step
                self.out.write(self._line() + "\n")
                self.out.flush()

    def finish(self) -> None:
        """Leave the bar where it is, complete; later lines go below it and never redraw it."""
        with self.lock:
            if self.out is not None and self._drawn:
                self.out.write("\n")
                self.out.flush()
            self._drawn = False
            self._finished = True

    def handler(self) -> logging.Handler:
        """Return a logging handler that writes its records as lines of this progress."""
        progress = self

        class _Lines(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    progress.say(f"{record.levelname.lower()}: {record.getMessage()}")
                except Exception:  # pragma: no cover - logging must not break the demo
                    self.handleError(record)

        return _Lines(logging.INFO)

    def _draw(self) -> None:
        assert self.out is not None
        self._drawn = True
        self.out.write("\r\033[K" + self._line()[: self.width - 1])

    def _line(self) -> str:
        filled = self.done * 20 // self.total
        bar = "#" * filled + "." * (20 - filled)
        return (
            f"  [{bar}] {self.done}/{self.total} calls  "
            f"${self.spent().quantize(Decimal('0.0001'))}  {self.refused} refused"
        )


def _metrics_pipeline() -> Any | None:
    """Return an SDK reader that keeps the metrics in memory; ``None`` without the SDK."""
    try:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        return None
    return InMemoryMetricReader()


def format_metrics(data: Any) -> str:
    """Render SDK ``MetricsData`` one data point a line: ``name{attr="value",...} value``."""
    lines: list[str] = []
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                unit = f" ({metric.unit})" if metric.unit else ""
                lines.append(f"{metric.name}{unit}")
                for point in metric.data.data_points:
                    attributes = ",".join(
                        f'{key}="{value}"' for key, value in sorted(point.attributes.items())
                    )
                    if hasattr(point, "bucket_counts"):
                        shown = f"count={point.count} sum={_number(point.sum)}"
                    else:
                        shown = _number(point.value)
                    lines.append(f"  {{{attributes}}} {shown}")
    return "\n".join(lines) + "\n"


def _number(value: float | int) -> str:
    if isinstance(value, float):
        return f"{value:.9g}"
    return str(value)


def metric_summary(data: Any) -> list[tuple[str, str, int, str]]:
    """Summarise SDK ``MetricsData``: per instrument its unit, number of series and total.

    Counters show the sum of their series, histograms their count and sum,
    gauges the value of each budget they describe.
    """
    rows: list[tuple[str, str, int, str]] = []
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = list(metric.data.data_points)
                if not points:
                    continue
                if hasattr(points[0], "bucket_counts"):
                    count = sum(point.count for point in points)
                    total = sum(point.sum for point in points)
                    shown = f"{count:,} values, sum {_short(total)}"
                elif type(metric.data).__name__ == "Gauge":
                    shown = ", ".join(
                        f"{point.attributes.get('budgetguard.budget', '?')} {_short(point.value)}"
                        for point in points
                    )
                else:
                    shown = _short(sum(point.value for point in points))
                rows.append((metric.name, metric.unit or "", len(points), shown))
    return rows


def _short(value: float | int) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    text = f"{value:.6g}"
    if "e" in text:  # 7.5e-05: people read amounts without exponents
        text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text


def run_demo(
    ledger: str = "memory://",
    *,
    users: int = 6,
    calls: int = 240,
    seed: int = 7,
    latency: float = 0.002,
    workers: int = 4,
    progress: TextIO | None = None,
    metrics: bool = True,
    force: bool = False,
    guard_factory: Callable[..., BudgetGuard] = BudgetGuard,
) -> DemoResult:
    """Run the demo workload against ``ledger``; return the guard (open) and what happened.

    A ledger that already holds budgets or spend is refused with
    ``LedgerInUseError`` before anything is written, unless ``force``. Even
    then the demo's made-up spend goes only to users of its own (``demo-alice``,
    ...) that the ledger has never seen, with budgets of their own: no global
    or default budget is set or changed, since those would bind its real users.
    """
    if users < 2:
        raise ValueError(f"the demo needs at least 2 users, got {users}")
    if calls < users:
        raise ValueError(f"the demo needs at least one call per user ({users}), got {calls}")
    reader = _metrics_pipeline() if metrics else None
    provider: Any = None
    if reader is not None:
        from opentelemetry.sdk.metrics import MeterProvider

        provider = MeterProvider(metric_readers=[reader])
    guard = guard_factory(ledger, meter_provider=provider, alert_thresholds=("0.8",))
    try:
        found = ledger_contents(guard)
        names = _user_names(guard, users, found, force)
    except BaseException:
        guard.close()
        if provider is not None:
            provider.shutdown()
        raise
    trial_user, agent_user = names[-1], names[0] if users < 4 else names[2]
    totals = Totals()
    guard.add_listener(totals)
    show = _Progress(progress, calls, lambda: totals.spent)
    library_log = logging.getLogger("budgetguard")
    saved_handlers, saved_propagate = library_log.handlers[:], library_log.propagate
    if progress is not None:
        # The library's own lines (the 80 % alert) go above the bar, never into it.
        library_log.handlers = [show.handler()]
        library_log.propagate = False
    try:
        return _run(
            guard,
            provider,
            reader,
            names,
            trial_user,
            agent_user,
            totals,
            show,
            calls=calls,
            seed=seed,
            latency=latency,
            workers=workers,
            found=found,
        )
    finally:
        library_log.handlers, library_log.propagate = saved_handlers, saved_propagate


class LedgerInUseError(Exception):
    """Refuse to run the demo on a ledger that holds budgets or spend of its own."""


def ledger_contents(guard: BudgetGuard) -> tuple[int, int]:
    """Return how many budgets and how many non-empty counters ``guard``'s ledger holds."""
    return len(guard.ledger.list_budgets()), len(guard.ledger.scan(""))


def _user_names(
    guard: BudgetGuard, users: int, found: tuple[int, int], force: bool
) -> tuple[str, ...]:
    names = tuple(
        USER_NAMES[i] if i < len(USER_NAMES) else f"user-{i + 1:03d}" for i in range(users)
    )
    if found == (0, 0):
        return names
    budgets, counters = found
    if not force:
        raise LedgerInUseError(
            f"the ledger already holds {budgets} budget(s) and {counters} counter(s) of spend; "
            "the demo would add budgets and made-up spend to it. Run it on a ledger of its "
            "own (the default), or pass --force to add demo users (demo-alice, ...) with "
            "budgets of their own to this one, leaving its other budgets alone"
        )
    names = tuple(f"demo-{name}" for name in names)
    taken = _known_users(guard)
    clash = sorted(set(names) & taken)
    if clash:
        raise LedgerInUseError(
            f"the ledger already has users named {', '.join(clash)}; the demo never writes "
            "made-up spend under a user a ledger knows, even with --force"
        )
    return names


def _known_users(guard: BudgetGuard) -> set[str]:
    """Return every user the ledger has a budget, a hold or spend for."""
    from ._keys import unescape
    from .budgets import user_of

    users = {user for name in guard.ledger.list_budgets() if (user := user_of(name))}
    for key in guard.ledger.scan(""):
        for part in key.split("|"):
            if part.startswith("u=") and part != "u=":
                users.add(unescape(part[2:]))
            elif part.startswith("user:"):
                users.add(unescape(part[5:]))
    return users


def _run(
    guard: BudgetGuard,
    provider: Any,
    reader: Any,
    names: tuple[str, ...],
    trial_user: str,
    agent_user: str,
    totals: Totals,
    show: _Progress,
    *,
    calls: int,
    seed: int,
    latency: float,
    workers: int,
    found: tuple[int, int],
) -> DemoResult:
    started = time.perf_counter()
    if found == (0, 0):
        guard.set_budget(GLOBAL_LIMIT, period="daily")
        guard.set_default_budget(DEFAULT_LIMIT, period="monthly")
        show.say(
            f"budgets: global ${GLOBAL_LIMIT}/day, every user ${DEFAULT_LIMIT}/month, "
            f"{trial_user} ${TRIAL_LIMIT}/day"
        )
    else:
        # A ledger in use (--force): a global or default budget would bind its real
        # users too, so the demo's users get budgets of their own instead.
        for name in names[:-1]:
            guard.set_budget(DEFAULT_LIMIT, user=name, period="monthly")
        show.say(
            f"budgets: each demo user ${DEFAULT_LIMIT}/month, {trial_user} ${TRIAL_LIMIT}/day;"
        )
        show.say("  the ledger's own global and default budgets are left as they are")
    guard.set_budget(TRIAL_LIMIT, user=trial_user, period="daily")
    show.say(f"one agent run for {agent_user} capped at ${AGENT_LIMIT}")
    show.say(f"{len(names)} users, {calls} calls to 6 OpenAI, Anthropic and Gemini models")

    llm = FakeLLM(latency)

    # The app's two LLM entry points, guarded like any app would guard its own:
    # the paying user is the function's ``user`` argument, the estimate is the
    # prompt and max_tokens at the model's price, the cost the reply's usage.
    @budgeted(user="user", guard=guard, estimate=demo_estimate)
    def ask(
        user: str,
        *,
        provider: str,
        model: str,
        snapshot: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        seed: int,
    ) -> Any:
        return llm.reply(provider, snapshot, messages, max_tokens, seed, stream=False)

    @budgeted(user="user", guard=guard, estimate=demo_estimate)
    def ask_streaming(
        user: str,
        *,
        provider: str,
        model: str,
        snapshot: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        seed: int,
    ) -> Iterator[Any]:
        yield from llm.reply(provider, snapshot, messages, max_tokens, seed, stream=True)

    refused: list[Refused] = []
    refused_lock = threading.Lock()

    def serve(requests: list[Request]) -> None:
        for request in requests:
            kwargs: dict[str, Any] = {
                "provider": request.provider,
                "model": request.model,
                "snapshot": request.snapshot,
                "messages": _messages(request.question, request.context_words, request.seed),
                "max_tokens": request.max_tokens,
                "seed": request.seed,
            }
            try:
                if request.stream:
                    for _chunk in ask_streaming(request.user, **kwargs):
                        pass  # a real app would forward each chunk to the browser
                else:
                    ask(request.user, **kwargs)
            except BudgetExceededError as error:
                with refused_lock:
                    refused.append(Refused(request.user, request.model, "request", error))
                show.tick(True)
                continue
            show.tick(False)

    plans = plan_requests(names, calls, seed)
    users = len(names)
    # One worker per user at a time: a user's own calls stay in order, so the
    # same seed refuses the same calls, while users run concurrently.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, users))) as pool:
        for finished in [pool.submit(serve, plan) for plan in plans]:
            finished.result()
    show.finish()

    agent_steps, agent_spent = _agent_run(guard, llm, agent_user, seed, show, refused)
    seconds = time.perf_counter() - started

    exported: Any = None
    if reader is not None:
        exported = reader.get_metrics_data()
    return DemoResult(
        guard=guard,
        users=names,
        trial_user=trial_user,
        agent_user=agent_user,
        refused=refused,
        totals=totals,
        agent_steps=agent_steps,
        agent_spent=agent_spent,
        seconds=seconds,
        metrics=exported,
        found=found,
        _provider=provider,
    )


def _six(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.000001"))


def _agent_run(
    guard: BudgetGuard,
    llm: FakeLLM,
    user: str,
    seed: int,
    show: _Progress,
    refused: list[Refused],
) -> tuple[int, Decimal]:
    """Run a research agent whose context grows each step, until its run cap stops it."""
    provider, model, snapshot = AGENT_MODEL

    @budgeted(guard=guard, estimate=demo_estimate)  # who pays: the enclosing budget_scope
    def step(*, model: str, messages: list[dict[str, str]], max_tokens: int, seed: int) -> Any:
        return llm.reply(provider, snapshot, messages, max_tokens, seed, stream=False)

    show.say(f"agent run for {user} on {model}, capped at ${AGENT_LIMIT}:")
    rng = random.Random(seed + 1)
    messages = _messages("Research our three biggest competitors' pricing.", 300, seed)
    spent = Decimal(0)
    steps = 0
    with budget_scope(user, limit=AGENT_LIMIT, tags={"agent": "research"}):
        for number in range(1, 60):
            before = guard.spend(user)
            try:
                reply = step(
                    model=model, messages=messages, max_tokens=600, seed=rng.getrandbits(32)
                )
            except BudgetExceededError as error:
                refused.append(Refused(user, model, f"agent step {number}", error))
                show.say(f"  step {number}: refused by the run's cap, the agent stops")
                break
            cost = guard.spend(user) - before
            spent += cost
            steps = number
            show.say(f"  step {number}: ${_six(cost)} (run so far ${_six(spent)})")
            # The agent keeps the tool output and its answer in its context.
            found = " ".join(rng.choice(WORDS) for _ in range(400))
            messages = [
                *messages,
                {"role": "assistant", "content": reply["content"][0]["text"]},
                {"role": "user", "content": f"Tool result:\n{found}"},
            ]
    return steps, spent
