"""Helpers for testing code that uses budgetguard.

Metrics: :func:`metrics_reader` gives a private OpenTelemetry MeterProvider
backed by the SDK's ``InMemoryMetricReader`` (``pip install opentelemetry-sdk``)
and reads back what budgetguard exported::

    from budgetguard.testing import metrics_reader

    def test_spend_is_exported():
        with metrics_reader() as exported:
            guard = BudgetGuard(meter_provider=exported.meter_provider)
            ...
            assert exported.value("budgetguard.spend", {"gen_ai.request.model": "gpt-4o"}) == 0.25
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .errors import ConfigurationError

__all__ = ["ExportedMetrics", "metrics_reader"]


class ExportedMetrics:
    """Read the metrics a MeterProvider's in-memory reader collects.

    Every read collects afresh, so it sees every call made before it.
    """

    def __init__(self, meter_provider: Any, reader: Any) -> None:
        self.meter_provider = meter_provider
        self.reader = reader

    def names(self) -> set[str]:
        """Return the names of every metric exported so far."""
        return {metric.name for metric in self._metrics()}

    def points(self, name: str, attributes: Mapping[str, Any] | None = None) -> list[Any]:
        """Return the SDK data points of metric ``name`` whose attributes include ``attributes``.

        Sums and gauges have ``.value``; histograms ``.count``, ``.sum``,
        ``.bucket_counts`` and ``.explicit_bounds``; all have ``.attributes``.
        """
        wanted = dict(attributes or {})
        return [
            point
            for metric in self._metrics()
            if metric.name == name
            for point in metric.data.data_points
            if all(point.attributes.get(key) == value for key, value in wanted.items())
        ]

    def value(self, name: str, attributes: Mapping[str, Any] | None = None) -> float:
        """Return the total of metric ``name`` over the points that match ``attributes``.

        For a histogram this is the sum of the recorded values; 0 when
        nothing matches.
        """
        total = 0.0
        for point in self.points(name, attributes):
            total += point.sum if hasattr(point, "bucket_counts") else point.value
        return total

    def count(self, name: str, attributes: Mapping[str, Any] | None = None) -> int:
        """Return how many values histogram ``name`` recorded over the matching points."""
        return sum(int(point.count) for point in self.points(name, attributes))

    def unit(self, name: str) -> str | None:
        """Return the unit of metric ``name``, or None when it was not exported."""
        for metric in self._metrics():
            if metric.name == name:
                return str(metric.unit)
        return None

    def _metrics(self) -> Iterator[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                yield from scope_metrics.metrics


@contextmanager
def metrics_reader() -> Iterator[ExportedMetrics]:
    """Give a private MeterProvider with an in-memory reader; shut it down afterwards.

    Pass ``exported.meter_provider`` to ``BudgetGuard(meter_provider=...)``;
    the global MeterProvider is left alone.
    """
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:  # the SDK is a test dependency, not a core one
        raise ConfigurationError(
            "budgetguard.testing.metrics_reader needs the OpenTelemetry SDK: "
            "pip install opentelemetry-sdk"
        ) from None
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        yield ExportedMetrics(provider, reader)
    finally:
        provider.shutdown()
