"""Prometheus export (core/performance_monitor/prometheus.py)."""

from __future__ import annotations

import sys

import pytest

from context_manager.core.performance_monitor import (
    PerformanceMonitor,
)

# --------------------------------------------------------------------------------------- prometheus


async def test_prometheus_collector_exposes_the_same_figures() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    monitor = PerformanceMonitor(sample_interval=0.01)
    for _ in range(3):
        monitor.record_operation("add_message", 0.002, True)
    monitor.record_operation("add_message", 0.004, False)
    registry = CollectorRegistry()
    registry.register(monitor.prometheus_collector())
    async with monitor:
        await monitor.wait_for_sample()
        value = registry.get_sample_value
        assert (
            value("context_manager_operations_total", {"operation": "add_message", "outcome": "success"}) == 3
        )
        assert (
            value("context_manager_operations_total", {"operation": "add_message", "outcome": "failure"}) == 1
        )
        p50 = value(
            "context_manager_operation_latency_seconds", {"operation": "add_message", "quantile": "0.5"}
        )
        assert p50 == pytest.approx(0.002)
        assert value("context_manager_error_rate") == pytest.approx(0.25)
        assert value("context_manager_health_score") == pytest.approx(monitor.health_score())
        assert value("context_manager_memory_usage_bytes") > 1e6
        assert value("context_manager_event_loop_lag_seconds") is not None
        assert value("context_manager_tokens_total", {"operation": "summarize", "direction": "input"}) is None
        monitor.record_token_usage("summarize", 120, 30)
        assert value("context_manager_tokens_total", {"operation": "summarize", "direction": "input"}) == 120
        assert value("context_manager_tokens_total", {"operation": "summarize", "direction": "output"}) == 30
        text = generate_latest(registry).decode()
    assert "context_manager_cpu_percent" in text and "context_manager_operations_per_second" in text


def test_prometheus_collector_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from context_manager.core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(MissingDependencyError, match=r"python-context-manager\[prometheus\]"):
        PerformanceMonitor().prometheus_collector()


@pytest.mark.parametrize("namespace", [None, "", 3, "9lives", "chat bot", "a-b"])
def test_prometheus_collector_refuses_a_namespace_that_is_no_metric_name(namespace: object) -> None:
    """The prefix was pasted in as given and mangled at scrape time: ``None`` exported
    ``None_operations_total``, ``3`` ``__operations_total``, ``"a-b"`` ``a_b_operations_total``."""
    from context_manager.core.errors import InvalidSettingError

    monitor = PerformanceMonitor()
    with pytest.raises(
        InvalidSettingError, match="^namespace: got .*; allowed a Prometheus metric name prefix"
    ):
        monitor.prometheus_collector(namespace=namespace)  # type: ignore[arg-type]
    assert monitor.prometheus_collector(namespace="chat_bot:v2").namespace == "chat_bot:v2"


@pytest.mark.parametrize("monitor", [None, "monitor", object()])
def test_prometheus_collector_refuses_what_is_no_monitor(monitor: object) -> None:
    """PrometheusCollector(None) was made, then failed with AttributeError inside registry.register()."""
    from prometheus_client import CollectorRegistry

    from context_manager.core.errors import InvalidArgumentError
    from context_manager.core.performance_monitor import PrometheusCollector

    with pytest.raises(InvalidArgumentError, match=r"^monitor: got .*; allowed a PerformanceMonitor"):
        PrometheusCollector(monitor)  # type: ignore[arg-type]
    CollectorRegistry().register(PrometheusCollector(PerformanceMonitor()))


def test_prometheus_series_stay_bounded_by_max_operation_names() -> None:
    from prometheus_client import CollectorRegistry

    monitor = PerformanceMonitor(max_operation_names=2)
    for user in range(100):
        monitor.record_operation(f"GET /users/{user}", 0.001, True)
    registry = CollectorRegistry()
    registry.register(monitor.prometheus_collector())
    operations = {
        sample.labels["operation"]
        for family in registry.collect()
        if family.name == "context_manager_operations"
        for sample in family.samples
    }
    assert operations == {"GET /users/0", "GET /users/1", PerformanceMonitor.OVERFLOW_OPERATION}
    overflow = {"operation": PerformanceMonitor.OVERFLOW_OPERATION, "outcome": "success"}
    assert registry.get_sample_value("context_manager_operations_total", overflow) == 98
