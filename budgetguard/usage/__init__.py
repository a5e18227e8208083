"""Usage: what a call consumed, read from any major provider's response or stream."""

from __future__ import annotations

from ._record import Usage
from .extractors import extract_usage
from .streams import StreamAccumulator, StreamMeter, accumulate, accumulator_for

__all__ = [
    "StreamAccumulator",
    "StreamMeter",
    "Usage",
    "accumulate",
    "accumulator_for",
    "extract_usage",
]
