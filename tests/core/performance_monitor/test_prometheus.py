"""Prometheus export (core/performance_monitor/prometheus.py)."""

from __future__ import annotations

import sys
from typing import Any

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


# ------------------------------------------------------------------- several monitors in one process


def _exposed_families(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def test_two_monitors_with_the_default_namespace_in_one_plain_registry_are_refused_when_registered() -> None:
    """Two managers' monitors registered with the default namespace on a plain ``CollectorRegistry()``
    were both accepted and every scrape exposed each metric family twice, with the same series (no label
    to tell them apart): Prometheus refuses such a scrape. Now the second registration raises, as
    ``prometheus_client.REGISTRY`` (which describes collectors) already did."""
    from prometheus_client import CollectorRegistry, generate_latest

    first, second = PerformanceMonitor(), PerformanceMonitor()
    first.record_operation("add_message", 0.001, True)
    second.record_operation("add_message", 0.001, False)
    registry = CollectorRegistry()
    registry.register(first.prometheus_collector())
    with pytest.raises(ValueError, match="Duplicated timeseries.*context_manager_operations_total"):
        registry.register(second.prometheus_collector())
    families = _exposed_families(generate_latest(registry).decode())
    assert len(families) == len(set(families))  # each family once: a scrape Prometheus accepts


@pytest.mark.parametrize("auto_describe", [True, False])
def test_several_monitors_export_through_one_collector_with_a_label_each(auto_describe: bool) -> None:
    """Two managers in one process could not both be exported with the default namespace: the default
    registry refused the second collector (``Duplicated timeseries``), a plain one exposed both under the
    same series. One collector for several monitors gives every series a label naming its monitor."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from context_manager.core.performance_monitor import PrometheusCollector

    support, billing = PerformanceMonitor(), PerformanceMonitor()
    for _ in range(3):
        support.record_operation("add_message", 0.002, True)
    billing.record_operation("add_message", 0.004, False)
    billing.record_token_usage("summarize", 100, 20)
    registry = CollectorRegistry(auto_describe=auto_describe)  # prometheus_client.REGISTRY: auto_describe
    registry.register(PrometheusCollector({"support": support, "billing": billing}, label="manager"))
    value = registry.get_sample_value
    success = {"operation": "add_message", "outcome": "success"}
    failure = {"operation": "add_message", "outcome": "failure"}
    assert value("context_manager_operations_total", {"manager": "support", **success}) == 3
    assert value("context_manager_operations_total", {"manager": "support", **failure}) == 0
    assert value("context_manager_operations_total", {"manager": "billing", **success}) == 0
    assert value("context_manager_operations_total", {"manager": "billing", **failure}) == 1
    assert value("context_manager_error_rate", {"manager": "support"}) == 0.0
    assert value("context_manager_error_rate", {"manager": "billing"}) == 1.0
    latency = {"operation": "add_message", "quantile": "0.5"}
    assert value("context_manager_operation_latency_seconds", {"manager": "support", **latency}) == (
        pytest.approx(0.002)
    )
    assert (
        value(
            "context_manager_tokens_total",
            {"manager": "billing", "operation": "summarize", "direction": "input"},
        )
        == 100
    )
    assert (
        value(
            "context_manager_tokens_total",
            {"manager": "support", "operation": "summarize", "direction": "input"},
        )
        is None
    )
    assert value("context_manager_health_score", {"manager": "billing"}) is not None
    assert value("context_manager_health_score") is None  # no unlabelled series beside them
    text = generate_latest(registry).decode()
    families = _exposed_families(text)
    assert len(families) == len(set(families))
    parsed = {family.name for family in text_string_to_metric_families(text)}  # a valid exposition
    assert "context_manager_operations" in parsed and "context_manager_health_score" in parsed


def test_collectors_with_their_own_namespace_coexist_in_one_registry() -> None:
    from prometheus_client import REGISTRY, CollectorRegistry

    first, second = PerformanceMonitor(), PerformanceMonitor()
    first.record_operation("op", 0.001, True)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(first.prometheus_collector(namespace="support"))
    registry.register(second.prometheus_collector(namespace="billing"))
    assert (
        registry.get_sample_value("support_operations_total", {"operation": "op", "outcome": "success"}) == 1
    )
    assert (
        registry.get_sample_value("billing_operations_total", {"operation": "op", "outcome": "success"})
        is None
    )
    # registering in the process's default registry and unregistering leaves it as it was
    collector = first.prometheus_collector(namespace="cm_test_isolated")
    REGISTRY.register(collector)
    try:
        assert REGISTRY.get_sample_value("cm_test_isolated_health_score") == 1.0
    finally:
        REGISTRY.unregister(collector)


@pytest.mark.parametrize(
    ("monitors", "label", "message"),
    [
        ({}, "monitor", "^monitor: got {}; allowed a PerformanceMonitor, or a non-empty mapping"),
        ({"a": "monitor"}, "monitor", r"^monitor\['a'\]: got 'monitor'; allowed a PerformanceMonitor"),
        ({"": None}, "monitor", r"^monitor key: got ''; allowed a non-empty string \(the label value\)"),
        ({3: None}, "monitor", r"^monitor key: got 3; allowed a non-empty string \(the label value\)"),
        (None, "quantile", "^label: got 'quantile'; allowed a Prometheus label name"),
        (None, "__name", "^label: got '__name'; allowed a Prometheus label name"),
        (None, "manager name", "^label: got 'manager name'; allowed a Prometheus label name"),
        (None, 5, "^label: got 5; allowed a Prometheus label name"),
    ],
)
def test_a_bad_mapping_of_monitors_or_label_is_refused(monitors: Any, label: Any, message: str) -> None:
    from context_manager.core.errors import InvalidArgumentError
    from context_manager.core.performance_monitor import PrometheusCollector

    if monitors is None:
        monitors = {"support": PerformanceMonitor()}
    elif any(value is None for value in monitors.values()):
        monitors = {key: PerformanceMonitor() for key in monitors}
    with pytest.raises(InvalidArgumentError, match=message):
        PrometheusCollector(monitors, label=label)


def test_the_same_monitor_under_two_label_values_is_refused() -> None:
    """It would be counted twice by every sum() over the label."""
    from context_manager.core.errors import InvalidArgumentError
    from context_manager.core.performance_monitor import PrometheusCollector

    monitor = PerformanceMonitor()
    with pytest.raises(InvalidArgumentError, match=r"^monitor\['b'\]: got .*it is the monitor of 'a'"):
        PrometheusCollector({"a": monitor, "b": monitor})


def test_the_collector_keeps_its_own_copy_of_the_mapping() -> None:
    """A scrape in the HTTP server's thread must not see the caller's dict change size under it."""
    from prometheus_client import CollectorRegistry

    from context_manager.core.performance_monitor import PrometheusCollector

    monitors = {"a": PerformanceMonitor()}
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(monitors))
    monitors["b"] = PerformanceMonitor()
    assert registry.get_sample_value("context_manager_health_score", {"monitor": "a"}) == 1.0
    assert registry.get_sample_value("context_manager_health_score", {"monitor": "b"}) is None


def test_rejected_calls_are_exported_as_their_own_outcome() -> None:
    """Calls refused for bad input are neither successes nor failures: the export had no series for
    them (they were counted as failures before)."""
    from prometheus_client import CollectorRegistry

    from context_manager.core.errors import InvalidRoleError

    monitor = PerformanceMonitor()
    monitor.record_operation("add_message", 0.002, True)
    monitor.record_operation("add_message", 0.0001, False, error=InvalidRoleError("role", "robot", "user"))
    registry = CollectorRegistry()
    registry.register(monitor.prometheus_collector())
    value = registry.get_sample_value
    labels = {"operation": "add_message"}
    assert value("context_manager_operations_total", {**labels, "outcome": "rejected"}) == 1
    assert value("context_manager_operations_total", {**labels, "outcome": "failure"}) == 0
    assert value("context_manager_error_rate") == 0.0


def test_a_name_with_a_lone_surrogate_is_refused_and_cannot_break_the_scrape() -> None:
    """An operation name with a lone surrogate (a file name decoded with surrogateescape, say) was
    recorded, and from then on every scrape of the registry failed with UnicodeEncodeError: one bad name
    took down every metric of the process. Now it is refused where it comes in, recording nothing."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from context_manager.core.errors import InvalidArgumentError, InvalidMetricError
    from context_manager.core.performance_monitor import PrometheusCollector, monitored_operation

    monitor = PerformanceMonitor()
    registry = CollectorRegistry()
    registry.register(monitor.prometheus_collector())
    monitor.record_operation('quote " backslash \\ newline \n', 0.001, True)  # escaped by the exposition
    bad = "report-\udcff.txt"
    refused = "^name: got 'report-\\\\udcff.txt'; allowed a non-empty string of valid Unicode text"
    with pytest.raises(InvalidMetricError, match=refused):
        monitor.record_operation(bad, 0.001, True)
    with pytest.raises(InvalidMetricError, match=refused):
        monitor.record_token_usage(bad, 1, 1)
    with pytest.raises(InvalidMetricError, match=refused):
        monitor.operation_timer(bad)
    with pytest.raises(InvalidMetricError, match=refused):
        monitored_operation(bad)
    with pytest.raises(InvalidArgumentError, match="^monitor key: got .*; allowed a non-empty string"):
        PrometheusCollector({bad: PerformanceMonitor()})
    families = {
        family.name: family for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = families["context_manager_operations"].samples
    assert {sample.labels["operation"] for sample in samples} == {'quote " backslash \\ newline \n'}
    assert monitor.operation_stats().keys() == {'quote " backslash \\ newline \n'}
    assert monitor.token_usage() == {}
