"""Bounded latency storage: a fixed-size uniform reservoir per operation, and percentiles over them."""

from __future__ import annotations

import math
import numbers
import random
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.performance_monitor.metrics import OperationStats

__all__ = [
    "LatencyReservoir",
    "ReservoirFigures",
    "figures_stats",
    "overall_stats",
    "percentile",
    "recent_stats",
]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ascending values by linear interpolation (numpy's default).

    Returns 0.0 for an empty list.

    Raises:
        InvalidArgumentError: ``fraction`` is not a number from 0 to 1.
    """
    value: object = fraction  # numpy's numbers too
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise InvalidArgumentError("fraction", fraction, "a number from 0 to 1 (0.95 for p95)")
    fraction = float(value)
    if not sorted_values:
        return 0.0
    position = (len(sorted_values) - 1) * fraction
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * weight


class LatencyReservoir:
    """A uniform random sample of at most ``capacity`` values (Vitter's algorithm R) plus exact totals.

    Up to ``capacity`` values the percentiles are exact; beyond, they are estimated from a uniform
    sample of everything seen, in constant memory. The latest ``capacity`` values are also kept with
    their time (a ring of 16 bytes a value) for the figures of a recent window (:func:`recent_stats`).
    ``count`` counts the operations accepted (with a duration); ``rejected`` those refused for bad
    input, which did no work and have no place in the latency figures. Not thread-safe: the monitor
    holds its lock.
    """

    __slots__ = (
        "_next",
        "_random",
        "_ring",
        "_ring_size",
        "_sorted",
        "capacity",
        "count",
        "failures",
        "max",
        "min",
        "rejected",
        "total",
        "values",
    )

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.values: list[float] = []
        self.count = 0
        self.failures = 0
        self.rejected = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0
        self._random = random.Random(seed)
        self._sorted: list[float] | None = None
        # the latest values with their time: [time, duration, time, duration ...], a failure's duration
        # stored as -1 - duration
        self._ring = array("d")
        self._ring_size = 2 * capacity
        self._next = 0

    def add(self, value: float, success: bool, timestamp: float = 0.0) -> None:
        """Count one duration (seconds, recorded at ``timestamp``).

        It is kept in the sample with probability capacity / count, and in the ring of the latest ones.
        """
        ring, slot = self._ring, self._next
        if slot < len(ring):
            ring[slot] = timestamp
            ring[slot + 1] = value if success else -1.0 - value  # a failure: negative
        else:  # not full yet
            ring.append(timestamp)
            ring.append(value if success else -1.0 - value)
        slot += 2
        self._next = 0 if slot == self._ring_size else slot
        self.count += 1
        if not success:
            self.failures += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if len(self.values) < self.capacity:
            self.values.append(value)
        else:
            slot = int(self._random.random() * self.count)  # uniform in [0, count); cheaper than randrange
            if slot >= self.capacity:
                return
            self.values[slot] = value
        self._sorted = None

    def reject(self) -> None:
        """Count one operation refused for bad input (no duration: it did no work)."""
        self.rejected += 1

    def figures(self) -> ReservoirFigures:
        """A copy of the totals and kept values, to compute from outside the monitor's lock.

        The values are the sorted ones when they are at hand (never changed in place: a new add drops
        them), else a copy in sample order.
        """
        values = self._sorted if self._sorted is not None else list(self.values)
        return ReservoirFigures(
            self.count, self.failures, self.rejected, self.total, self.min, self.max, values
        )

    def recent(self) -> array[float]:
        """A copy of the ring of latest values (for :func:`recent_stats`, outside the monitor's lock)."""
        return array("d", self._ring)

    def quantiles(self, *fractions: float) -> list[float]:
        """Return the quantiles (seconds) of the kept values (sorted once until the next add)."""
        if self._sorted is None:
            self._sorted = sorted(self.values)
        return [percentile(self._sorted, fraction) for fraction in fractions]

    def stats(self, name: str) -> OperationStats:
        """Return this operation's figures in milliseconds."""
        p50, p95, p99 = self.quantiles(0.5, 0.95, 0.99)
        return _operation_stats(name, self, (p50, p95, p99))


def recent_stats(name: str, ring: array[float], since: float) -> OperationStats:
    """Return the figures of the values of ``ring`` (:meth:`LatencyReservoir.recent`) since ``since``.

    At most the latest ``capacity`` values, so a busy operation is judged on its latest ones; ``rejected``
    is 0 (a rejected call has no duration).
    """
    picked = [ring[index + 1] for index in range(0, len(ring), 2) if ring[index] >= since]
    failures = sum(1 for value in picked if value < 0)
    ordered = sorted(value if value >= 0 else -1.0 - value for value in picked)
    count = len(ordered)
    p50, p95, p99 = (percentile(ordered, fraction) * 1000.0 for fraction in (0.5, 0.95, 0.99))
    return OperationStats(
        name=name,
        count=count,
        successes=count - failures,
        failures=failures,
        error_rate=failures / count if count else 0.0,
        avg_ms=sum(ordered) / count * 1000.0 if count else 0.0,
        min_ms=ordered[0] * 1000.0 if count else 0.0,
        max_ms=ordered[-1] * 1000.0 if count else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
    )


@dataclass(frozen=True, slots=True)
class ReservoirFigures:
    """What :func:`overall_stats` reads of a reservoir, copied (:meth:`LatencyReservoir.figures`)."""

    count: int
    failures: int
    rejected: int
    total: float
    min: float
    max: float
    values: list[float]


def figures_stats(name: str, figures: ReservoirFigures) -> OperationStats:
    """:meth:`LatencyReservoir.stats` of a copy (:meth:`LatencyReservoir.figures`)."""
    ordered = sorted(figures.values)  # linear when they are sorted already
    quantiles = tuple(percentile(ordered, fraction) for fraction in (0.5, 0.95, 0.99))
    return _operation_stats(name, figures, quantiles)


def _operation_stats(
    name: str, figures: LatencyReservoir | ReservoirFigures, quantiles: tuple[float, ...]
) -> OperationStats:
    p50, p95, p99 = quantiles
    count = figures.count
    return OperationStats(
        name=name,
        count=count + figures.rejected,
        successes=count - figures.failures,
        failures=figures.failures,
        error_rate=figures.failures / count if count else 0.0,
        avg_ms=figures.total / count * 1000.0 if count else 0.0,
        min_ms=figures.min * 1000.0 if count else 0.0,
        max_ms=figures.max * 1000.0,
        p50_ms=p50 * 1000.0,
        p95_ms=p95 * 1000.0,
        p99_ms=p99 * 1000.0,
        rejected=figures.rejected,
    )


def overall_stats(reservoirs: Sequence[LatencyReservoir | ReservoirFigures]) -> OperationStats:
    """Figures over every operation, from the per-operation reservoirs (no second reservoir to feed).

    Totals are exact. Percentiles are exact while every reservoir holds all its values; beyond, each
    kept value stands for ``count / kept`` operations of its kind (a weighted quantile).
    """
    count = sum(reservoir.count for reservoir in reservoirs)
    failures = sum(reservoir.failures for reservoir in reservoirs)
    rejected = sum(reservoir.rejected for reservoir in reservoirs)
    total = sum(reservoir.total for reservoir in reservoirs)
    if all(reservoir.count == len(reservoir.values) for reservoir in reservoirs):
        ordered = sorted(value for reservoir in reservoirs for value in reservoir.values)
        p50, p95, p99 = (percentile(ordered, fraction) for fraction in (0.5, 0.95, 0.99))
    else:
        p50, p95, p99 = _weighted_quantiles(reservoirs, (0.5, 0.95, 0.99))
    return OperationStats(
        name="all",
        count=count + rejected,
        successes=count - failures,
        failures=failures,
        error_rate=failures / count if count else 0.0,
        avg_ms=total / count * 1000.0 if count else 0.0,
        min_ms=min((reservoir.min for reservoir in reservoirs if reservoir.count), default=0.0) * 1000.0,
        max_ms=max((reservoir.max for reservoir in reservoirs), default=0.0) * 1000.0,
        p50_ms=p50 * 1000.0,
        p95_ms=p95 * 1000.0,
        p99_ms=p99 * 1000.0,
        rejected=rejected,
    )


def _weighted_quantiles(
    reservoirs: Sequence[LatencyReservoir | ReservoirFigures], fractions: tuple[float, ...]
) -> list[float]:
    """Per fraction, the smallest kept value whose weight up to it reaches that fraction of the total.

    Each kept value weighs ``count / kept`` of its reservoir. A binary search over the sorted values,
    counting each reservoir's weight up to a value with a bisection: sorting (value, weight) pairs of 500
    full reservoirs took a second, and every scrape computes this.
    """
    kept = [
        (sorted(reservoir.values), reservoir.count / len(reservoir.values))
        for reservoir in reservoirs
        if reservoir.values
    ]
    every = sorted(chain.from_iterable(values for values, _ in kept))
    if not every:
        return [0.0 for _ in fractions]
    total_weight = sum(len(values) * weight for values, weight in kept)

    def weight_up_to(value: float) -> float:
        return sum(weight * bisect_right(values, value) for values, weight in kept)

    results = []
    for fraction in fractions:
        target = fraction * total_weight
        low, high = 0, len(every) - 1
        if weight_up_to(every[high]) < target:  # rounding: the largest value
            results.append(every[high])
            continue
        while low < high:
            middle = (low + high) // 2
            if weight_up_to(every[middle]) >= target:
                high = middle
            else:
                low = middle + 1
        results.append(every[low])
    return results
