"""What a collector and Prometheus receive: OTLP/HTTP to a loopback receiver, /metrics scraped."""

from __future__ import annotations

import gzip
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from budgetguard import BudgetExceededError, BudgetGuard

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prometheus.py"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP metrics endpoint that keeps every request it decodes."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[ExportMetricsServiceRequest] = []

    @property
    def url(self) -> str:
        """Return the endpoint's URL."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1/metrics"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        """Decode one export request and acknowledge it."""
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """Run an OTLP/HTTP receiver on loopback in a thread."""
    # A proxy from the environment must not intercept loopback traffic.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def decoded(requests: list[ExportMetricsServiceRequest]) -> dict[str, list[tuple[dict, Any]]]:
    """Return {metric name: [(attributes, data point)]} from the last export."""
    found: dict[str, list[tuple[dict, Any]]] = {}
    last = requests[-1]
    for resource_metrics in last.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "budgetguard"
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points:
                    attributes = {a.key: a.value.string_value for a in point.attributes}
                    found.setdefault(metric.name, []).append((attributes, point))
    return found


def test_otlp_http_export_reaches_a_collector(receiver: Receiver) -> None:
    """A collector receives spend, refusals, budgets and histograms over OTLP/HTTP protobuf."""
    exporter = OTLPMetricExporter(endpoint=receiver.url, timeout=10)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    guard = BudgetGuard(meter_provider=provider, user_attribute="raw")
    guard.set_budget("1", user="alice", period="monthly")

    @guard.budgeted(user="alice", cost=lambda result: result, model="gpt-4o")
    def call(cost: str) -> str:
        return cost

    call("0.25")
    call("0.50")
    with pytest.raises(BudgetExceededError):
        guard.budgeted(user="alice", estimate="0.5", model="gpt-4o")(lambda: None)()
    assert provider.force_flush(timeout_millis=10_000)
    provider.shutdown()

    metrics = decoded(receiver.requests)
    ((spend_attributes, spend),) = metrics["budgetguard.spend"]
    assert spend_attributes == {"gen_ai.request.model": "gpt-4o", "user.id": "alice"}
    assert spend.as_double == 0.75
    ((refusal_attributes, refusal),) = metrics["budgetguard.refusals"]
    assert refusal_attributes["budgetguard.budget"] == "user"
    assert refusal.as_double == 1
    ((_, remaining),) = metrics["budgetguard.budget.remaining"]
    assert remaining.as_double == 0.25
    ((duration_attributes, duration),) = metrics["gen_ai.client.operation.duration"]
    assert duration_attributes == {"gen_ai.request.model": "gpt-4o"}
    assert duration.count == 2
    assert list(duration.explicit_bounds)[:3] == [0.01, 0.02, 0.04]


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str, deadline: float) -> str:
    """Fetch ``url`` until it answers with budgetguard metrics or the deadline passes."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            text: str = opener.open(url, timeout=5).read().decode()
            if "budgetguard_spend" in text:
                return text
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no budgetguard metrics at {url}")
        time.sleep(0.1)


def test_prometheus_example_serves_spend() -> None:
    """examples/prometheus.py serves /metrics with budgetguard_spend at the demo's spend."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(port), "--calls", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 30)
    finally:
        process.terminate()
        process.wait(timeout=10)
    (line,) = [line for line in text.splitlines() if line.startswith("budgetguard_spend")]
    match = re.fullmatch(r"budgetguard_spend_USD_total\{(.*)\} (\S+)", line)
    assert match is not None, line
    assert float(match.group(2)) == 0.375
    assert 'gen_ai_request_model="gpt-4o"' in match.group(1)
    assert re.search(r'user_hash="[0-9a-f]{16}"', match.group(1))
    assert "# TYPE budgetguard_spend_USD_total counter" in text
    assert re.search(r'budgetguard_budget_limit_USD\{.*budgetguard_budget="user".*\} 5\.0', text)
