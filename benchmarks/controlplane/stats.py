"""Latency summaries: p50, p99 and max of one set of samples, and the pairing that makes them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """Seconds; ``count`` is how many samples there were (the rest were lost or unmatched)."""

    count: int
    p50: float | None
    p99: float | None
    max: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the value below which ``q`` percent of samples fall.

    Nearest rank (not interpolation) so that p99 of 100 samples is the 99th
    sample, a latency that really happened.
    """
    if not sorted_values:
        raise ValueError("percentile of no samples")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(values: Iterable[float]) -> Summary:
    ordered = sorted(values)
    if not ordered:
        return Summary(0, None, None, None)
    # 0.1 ms is finer than anything a watch event over loopback can tell apart.
    p50, p99, top = (
        round(v, 4) for v in (percentile(ordered, 50), percentile(ordered, 99), ordered[-1])
    )
    return Summary(len(ordered), p50, p99, top)


def deltas(start: Mapping[str, float], end: Mapping[str, float]) -> list[float]:
    """``end[k] - start[k]`` for every key present in both."""
    return [end[k] - start[k] for k in start.keys() & end.keys()]


def ordered_deltas(starts: Iterable[float], ends: Iterable[float]) -> list[float]:
    """The k-th end minus the k-th start, both in time order.

    For Jobs that name no event (KEDA's ScaledJob Jobs are interchangeable),
    the k-th Job created answers the k-th event published.
    """
    return [e - s for s, e in zip(sorted(starts), sorted(ends), strict=False)]
