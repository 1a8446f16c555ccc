"""Operations: performance monitor figures, the concurrency controller, a health report, and a quick
throughput measurement of the main calls.

Run alone with ``python examples/performance_demo.py [--verbose]`` or through ``main_example.py performance``.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _common import ExampleContext, example_context, expect

from context_manager import (
    ConcurrencyController,
    ContextManagerConfig,
    EnhancedContextManager,
    HealthChecker,
    HealthState,
    PerformanceMonitor,
    TaskTimeoutError,
)


async def monitor_figures(ctx: ExampleContext) -> None:
    ctx.section("PerformanceMonitor: timings, percentiles, process samples, health score, advice")
    config = ContextManagerConfig(max_tokens=2000, cache_path=ctx.storage("monitor"))
    monitor = PerformanceMonitor(sample_interval=0.05)
    await monitor.start_monitoring()
    try:
        async with EnhancedContextManager(config=config) as manager:
            for index in range(200):
                with monitor.operation_timer("add_message"):
                    await manager.add_message(
                        "user", f"Message {index}: the order {index} was shipped today."
                    )
            for query in ("order shipped", "message 12", "today", "order 150"):
                with monitor.operation_timer("search_memory"):
                    await manager.search_memory(query, limit=5)
            for _ in range(3):  # a failing operation, recorded as such
                monitor.record_operation("export_invoice", 0.002, False, error="invoice template missing")
        await monitor.wait_for_sample()
        metrics = monitor.get_current_metrics()
        summary = monitor.get_performance_summary()
    finally:
        await monitor.stop_monitoring()

    expect(metrics.total_operations >= 207, f"every operation was recorded ({metrics.total_operations})")
    expect(metrics.failures >= 3, "the failures were recorded")
    expect(metrics.memory_usage_mb > 0, "the sampler measured the process's memory")
    ctx.console.print(
        ctx.table(
            "get_current_metrics()",
            [
                "operations",
                "failures",
                "ops/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "RSS MB",
                "CPU %",
                "loop lag ms",
                "health",
            ],
            [
                [
                    metrics.total_operations,
                    metrics.failures,
                    f"{metrics.operations_per_second:.0f}",
                    f"{metrics.p50_latency_ms:.3f}",
                    f"{metrics.p95_latency_ms:.3f}",
                    f"{metrics.p99_latency_ms:.3f}",
                    f"{metrics.memory_usage_mb:.1f}",
                    f"{metrics.cpu_percent:.0f}",
                    f"{metrics.event_loop_lag_ms:.2f}",
                    f"{metrics.health_score:.2f}",
                ]
            ],
        )
    )
    rows = [
        [name, s["count"], s["failures"], f"{s['p50_ms']:.3f}", f"{s['p95_ms']:.3f}", f"{s['max_ms']:.3f}"]
        for name, s in sorted(summary["operations"].items())
    ]
    ctx.console.print(
        ctx.table("per operation", ["operation", "count", "failed", "p50 ms", "p95 ms", "max ms"], rows)
    )
    ctx.ok(
        f"health score {summary['health_score']:.2f} from the recorded data; "
        f"{len(summary['recommendations'])} recommendation(s)"
    )
    for line in summary["recommendations"]:
        ctx.info(f"- {line}")
    ctx.detail(summary["system"])


async def system_status(ctx: ExampleContext) -> None:
    ctx.section("The manager's own monitor, get_system_status() and optimize_system()")
    config = ContextManagerConfig(max_tokens=2000, cache_path=ctx.storage("status"))
    topics = ["TLS certificates", "DNS records", "backups", "on-call rota", "disk quotas", "VPN access"]
    async with EnhancedContextManager(config=config) as manager:
        for index in range(60):
            await manager.add_message(
                "user", f"Turn {index}: a question about {topics[index % len(topics)]}."
            )
        await manager.memory_manager.add_memory("Certificates are renewed by the platform team")
        await manager.memory_manager.add_memory("The certificates are renewed by the platform team")
        await manager.search_memory("who renews certificates", limit=3)
        await manager.execute_tool("no_such_tool")
        status = manager.get_system_status()
        report = await manager.optimize_system()
    monitor = status.get("monitor")
    expect(
        monitor is not None and monitor["total_operations"] >= 62, "the manager records its own operations"
    )
    expect(status["tools"]["unknown_tool_calls"] == 1, "the failed tool call is counted")
    ctx.console.print(
        ctx.table(
            "get_system_status()",
            ["state", "messages", "tokens", "compressions", "operations", "error rate", "p95 ms", "health"],
            [
                [
                    status["state"],
                    status["context"]["message_count"],
                    status["context"]["token_count"],
                    status["context"]["compression_count"],
                    monitor["total_operations"],
                    f"{monitor['error_rate']:.1%}",
                    f"{monitor['p95_latency_ms']:.3f}",
                    f"{monitor['health_score']:.2f}",
                ]
            ],
        )
    )
    expect(report["memory"]["consolidated_count"] == 2, "optimize_system merges the near-duplicate memories")
    ctx.ok(
        f"optimize_system(): merged {report['memory']['consolidated_count']} near-duplicate memories, "
        f"log {report['memory']['log_bytes_before']} -> {report['memory']['log_bytes_after']} bytes, "
        f"{report['duration_ms']:.0f} ms"
    )
    ctx.detail(report)


async def concurrency(ctx: ExampleContext) -> None:
    ctx.section("ConcurrencyController: bounded, prioritised tasks with timeouts")
    started_order: list[str] = []
    running = 0
    peak = 0

    async def fetch(name: str, seconds: float) -> str:
        nonlocal running, peak
        started_order.append(name)
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(seconds)
        finally:
            running -= 1
        return f"{name} done"

    async def broken() -> None:
        raise ValueError("upstream returned malformed JSON")

    controller = ConcurrencyController(max_concurrent_tasks=3)
    await controller.start()
    try:
        ids = []
        for index in range(8):
            ids.append(await controller.submit_task(f"page-{index}", fetch, f"page-{index}", 0.02))
        urgent = await controller.submit_task("urgent", fetch, "urgent", 0.01, priority="critical")
        too_slow = await controller.submit_task("too-slow", fetch, "too-slow", 5.0, timeout=0.1)
        failing = await controller.submit_task("broken", broken)
        results = [await controller.wait_for_task(task_id) for task_id in ids]
        expect(await controller.wait_for_task(urgent) == "urgent done", "the urgent task completes")
        try:
            await controller.wait_for_task(too_slow)
        except TaskTimeoutError as error:
            ctx.ok(f"timeout delivered through wait_for_task: {error}")
        else:
            expect(False, "the slow task must time out")
        try:
            await controller.wait_for_task(failing)
        except ValueError as error:
            ctx.ok(f"the task's own exception is re-raised by wait_for_task: ValueError({error})")
        stats = controller.get_stats()
    finally:
        await controller.stop()

    expect(len(results) == 8 and all(r.endswith("done") for r in results), "all page tasks complete")
    expect(peak <= 3 and stats.peak_running <= 3, f"never more than 3 at once (peak {peak})")
    expect(
        started_order.index("urgent") < started_order.index("page-7"),
        "the critical task overtakes queued normal ones",
    )
    ctx.console.print(
        ctx.table(
            "get_stats()",
            ["submitted", "completed", "failed", "timed out", "peak running", "limit", "mean wait ms"],
            [
                [
                    stats.submitted,
                    stats.completed,
                    stats.failed,
                    stats.timed_out,
                    stats.peak_running,
                    stats.max_concurrent_tasks,
                    f"{stats.mean_wait_seconds * 1000:.1f}",
                ]
            ],
        )
    )
    ctx.ok(f"start order: {', '.join(started_order)} (critical 'urgent' jumped the queue)")


async def health(ctx: ExampleContext) -> None:
    ctx.section("HealthChecker: checks, score, diagnostic report")
    config = ContextManagerConfig(cache_path=ctx.storage("health"))
    async with EnhancedContextManager(config=config) as manager:
        await manager.memory_manager.add_memory("Health checks look at storage, SQLite and the event loop")
        checker = HealthChecker(check_interval=5.0, context_manager=manager)
        await checker.start()
        try:
            status = await checker.perform_health_check()
            report = await checker.generate_diagnostic_report()
        finally:
            await checker.stop()
    expect(
        status.checks["database"].status is HealthState.HEALTHY, "a fresh store passes the integrity check"
    )
    expect(status.checks["storage"].status is HealthState.HEALTHY, "the storage directory is writable")
    ctx.console.print(
        ctx.table(
            f"perform_health_check(): {status.status.value}, score {status.health_score:.2f}",
            ["check", "status", "ms", "message"],
            [[r.name, r.status.value, f"{r.duration_ms:.1f}", r.message] for r in status.checks.values()],
        )
    )
    ctx.ok(
        f"diagnostic report: status {report.status.value}, {len(report.recommendations)} recommendation(s), "
        f"python {report.system['python']}, {report.system['process_memory_mb']:.0f} MB RSS"
    )
    for line in report.recommendations:
        ctx.info(f"- {line}")
    ctx.detail(report.storage)


async def throughput(ctx: ExampleContext) -> None:
    ctx.section("Throughput of the main calls (rough figures; see benchmarks/ for measured ones)")
    config = ContextManagerConfig(max_tokens=4000, cache_path=ctx.storage("throughput"))
    async with EnhancedContextManager(config=config) as manager:
        count = 2000
        started = time.perf_counter()
        for index in range(count):
            await manager.add_message(
                "user" if index % 2 == 0 else "assistant",
                f"Turn {index}: we discussed invoice {index % 97} and shipment {index}.",
            )
        add_seconds = time.perf_counter() - started
        summary = manager.get_context_summary()
        expect(summary["token_count"] <= 4000, "the budget holds under load")
        searches = 50
        started = time.perf_counter()
        for index in range(searches):
            await manager.search_memory(f"invoice {index} shipment", limit=5)
        search_seconds = time.perf_counter() - started
    ctx.console.print(
        ctx.table(
            "measured in this run",
            ["operation", "count", "per call", "calls/s"],
            [
                [
                    "add_message (window full, compressing)",
                    count,
                    f"{add_seconds / count * 1e6:.0f} µs",
                    f"{count / add_seconds:,.0f}",
                ],
                [
                    "search_memory over evicted turns",
                    searches,
                    f"{search_seconds / searches * 1e3:.2f} ms",
                    f"{searches / search_seconds:,.0f}",
                ],
            ],
        )
    )
    ctx.ok(f"{summary['compression_count']} compressions kept {count} messages within 4,000 tokens")


async def run(ctx: ExampleContext) -> None:
    """Run every operations example."""
    await monitor_figures(ctx)
    await system_status(ctx)
    await concurrency(ctx)
    await health(ctx)
    await throughput(ctx)


if __name__ == "__main__":
    with example_context(verbose="--verbose" in sys.argv[1:]) as context:
        asyncio.run(run(context))
