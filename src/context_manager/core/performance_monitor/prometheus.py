"""Prometheus export of monitors' figures (``pip install 'python-context-manager[prometheus]'``)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import InvalidArgumentError, InvalidSettingError, MissingDependencyError
from context_manager.core.text import encodable

if TYPE_CHECKING:
    from context_manager.core.performance_monitor.monitor import PerformanceMonitor

__all__ = ["PrometheusCollector"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OWN_LABELS = ("operation", "outcome", "quantile", "direction")  # the collector's own label names

# (suffix, documentation) of the one-value gauges, in the order they are exposed
_GAUGES = (
    ("error_rate", "Failures / operations over the monitor's lifetime."),
    ("operations_per_second", "Throughput over the last minute."),
    ("memory_usage_bytes", "Resident memory of the process."),
    ("cpu_percent", "CPU use of the process, percent of one core."),
    ("event_loop_lag_seconds", "How late the sampler's timer fired."),
    ("health_score", "Health score in [0, 1]."),
)


class PrometheusCollector:
    """A ``prometheus_client`` collector for one :class:`PerformanceMonitor`, or several in one process.

    Register it with ``registry.register(collector)``. Metrics (prefix ``namespace``):
    ``_operations_total{operation,outcome}``, ``_operation_latency_seconds{operation,quantile}``,
    ``_tokens_total{operation,direction}`` (model tokens, e.g. of LLM summaries; direction ``input`` or
    ``output``), ``_error_rate``, ``_operations_per_second``, ``_memory_usage_bytes``, ``_cpu_percent``,
    ``_event_loop_lag_seconds`` and ``_health_score``.

    A registry exposes each metric name once, so two collectors with the same ``namespace`` cannot share
    one: registering the second raises prometheus_client's ``ValueError`` ("Duplicated timeseries"). To
    export several monitors (the monitors of two context managers, say) through one registry, give one
    collector a mapping of label values to monitors: every series then carries the label ``label``
    naming its monitor (``context_manager_operations_total{manager="support",...}``), each family is
    exposed once, and the figures of one monitor never mix with another's.

    Args:
        monitor: The monitor whose figures are exported, or a non-empty mapping of label values
            (non-empty strings of valid Unicode text) to distinct monitors. The mapping is copied: to
            change the set, register a new collector (``registry.unregister(old)``).
        namespace: Prefix of every metric name.
        label: With a mapping, the name of the label that tells the monitors apart (a Prometheus label
            name, not one of the collector's own: operation, outcome, quantile, direction). Not used
            for one monitor, whose series keep no extra label.

    Raises:
        InvalidArgumentError: ``monitor`` is neither a :class:`PerformanceMonitor` nor such a mapping.
        InvalidSettingError: ``namespace`` is not a valid start of a metric name, or ``label`` is not a
            label name the collector can use.
        MissingDependencyError: ``prometheus_client`` is not installed.
    """

    def __init__(
        self,
        monitor: PerformanceMonitor | Mapping[str, PerformanceMonitor],
        namespace: str = "context_manager",
        *,
        label: str = "monitor",
    ) -> None:
        from context_manager.core.performance_monitor.monitor import PerformanceMonitor

        if not isinstance(namespace, str) or not _METRIC_NAME.fullmatch(namespace):
            raise InvalidSettingError(
                "namespace",
                namespace,
                "a Prometheus metric name prefix (letters, digits, _ and :, not first a digit)",
            )
        members: list[tuple[str, PerformanceMonitor]] = []
        if isinstance(monitor, Mapping):
            if not monitor:
                raise InvalidArgumentError(
                    "monitor", monitor, "a PerformanceMonitor, or a non-empty mapping of label values to them"
                )
            if (
                not isinstance(label, str)
                or not _LABEL_NAME.fullmatch(label)
                or label.startswith("__")
                or label in _OWN_LABELS
            ):
                raise InvalidSettingError(
                    "label",
                    label,
                    "a Prometheus label name (letters, digits and _, not first a digit, not starting with "
                    f"__) other than the collector's own ({', '.join(_OWN_LABELS)})",
                )
            seen: dict[int, str] = {}
            for value, member in monitor.items():
                # an empty label value is no label at all; a lone surrogate fails every scrape (not UTF-8)
                if not isinstance(value, str) or not value or not encodable(value):
                    raise InvalidArgumentError(
                        "monitor key",
                        value,
                        "a non-empty string (the label value) of valid Unicode text (no lone surrogates)",
                    )
                if not isinstance(member, PerformanceMonitor):
                    raise InvalidArgumentError(f"monitor[{value!r}]", member, "a PerformanceMonitor")
                if id(member) in seen:  # every sum() over the label would count it twice
                    raise InvalidArgumentError(
                        f"monitor[{value!r}]",
                        member,
                        f"a monitor given once: it is the monitor of {seen[id(member)]!r} too",
                    )
                seen[id(member)] = value
                members.append((value, member))
        elif isinstance(monitor, PerformanceMonitor):  # else an AttributeError at the first scrape
            members.append(("", monitor))
        else:
            raise InvalidArgumentError(
                "monitor", monitor, "a PerformanceMonitor, or a non-empty mapping of label values to them"
            )
        try:
            import prometheus_client.core as families
        except ImportError:
            raise MissingDependencyError("prometheus_collector", "prometheus-client", "prometheus") from None
        labelled = isinstance(monitor, Mapping)
        self.monitor: PerformanceMonitor | None = None if labelled else members[0][1]
        """The monitor whose figures are exported (``None`` for a collector of several)."""
        self.monitors: dict[str, PerformanceMonitor] = dict(members) if labelled else {}
        """Label value -> monitor, for a collector of several (empty for one)."""
        self.namespace = namespace
        """Prefix of every metric name."""
        self.label: str | None = label if labelled else None
        """The label telling the monitors apart (``None`` for one monitor)."""
        self._members = tuple(members)
        self._families: Any = families

    def _new_families(self) -> tuple[Any, Any, Any, list[Any]]:
        """Empty families: operations, latency, tokens and the one-value gauges."""
        families, prefix = self._families, self.namespace
        extra = [] if self.label is None else [self.label]
        operations = families.CounterMetricFamily(
            f"{prefix}_operations",
            "Operations recorded, by outcome (success, failure, rejected: refused for bad input).",
            labels=[*extra, "operation", "outcome"],
        )
        latency = families.GaugeMetricFamily(
            f"{prefix}_operation_latency_seconds",
            "Operation latency quantiles.",
            labels=[*extra, "operation", "quantile"],
        )
        tokens = families.CounterMetricFamily(
            f"{prefix}_tokens",
            "Model tokens billed, by operation and direction.",
            labels=[*extra, "operation", "direction"],
        )
        gauges = [
            families.GaugeMetricFamily(f"{prefix}_{suffix}", documentation, labels=extra)
            for suffix, documentation in _GAUGES
        ]
        return operations, latency, tokens, gauges

    def describe(self) -> Iterator[Any]:
        """Yield the metric families without samples (``registry.register`` checks their names).

        So every registry, not only one created with ``auto_describe=True`` (as ``REGISTRY`` is), refuses
        a second collector exposing the same names instead of exposing each family twice.
        """
        operations, latency, tokens, gauges = self._new_families()
        yield operations
        yield latency
        yield tokens
        yield from gauges

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by the Prometheus registry on each scrape)."""
        operations, latency, tokens, gauges = self._new_families()
        labelled = self.label is not None
        for value, monitor in self._members:
            extra = [value] if labelled else []
            metrics = monitor.get_current_metrics()
            for name, stats in monitor.operation_stats().items():
                operations.add_metric([*extra, name, "success"], stats.successes)
                operations.add_metric([*extra, name, "failure"], stats.failures)
                operations.add_metric([*extra, name, "rejected"], stats.rejected)
                for quantile, value_ms in (
                    ("0.5", stats.p50_ms),
                    ("0.95", stats.p95_ms),
                    ("0.99", stats.p99_ms),
                ):
                    latency.add_metric([*extra, name, quantile], value_ms / 1000.0)
            for name, usage in monitor.token_usage().items():
                tokens.add_metric([*extra, name, "input"], usage["input_tokens"])
                tokens.add_metric([*extra, name, "output"], usage["output_tokens"])
            figures = (
                metrics.error_rate,
                metrics.operations_per_second,
                metrics.memory_usage_mb * 1048576.0,
                metrics.cpu_percent,
                metrics.event_loop_lag_ms / 1e3,
                metrics.health_score,
            )
            for gauge, figure in zip(gauges, figures, strict=True):
                gauge.add_metric(extra, figure)
        yield operations
        yield latency
        yield tokens
        yield from gauges
