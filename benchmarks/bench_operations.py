"""Operations benchmark: monitor recording overhead, controller throughput, idle monitor CPU.

Run:  python benchmarks/bench_operations.py [--json PATH] [--quick]

Everything is measured in one run, next to its baseline:
1. ``PerformanceMonitor.record_operation`` and ``operation_timer`` overhead in ns per call, against a
   no-op function call with the same arguments and ``contextlib.nullcontext()``; also the library path
   (``record_library_operation`` fanning out to one running monitor) and the ``monitored_operation``
   decorator around an async method against the bare method;
2. 10,000 trivial async tasks through ``ConcurrencyController(max_concurrent_tasks=10)`` (submit all,
   then wait for each) against ``asyncio.Semaphore(10)`` + ``asyncio.gather`` (target <= 2x);
3. CPU used by an idle monitor sampling every 0.1 s for a few seconds, against the same idle loop without
   a monitor (target < 1% of one core).
4. The health check's database check at 50,000 long-term memories (``--quick``: 5,000): the full
   ``check_integrity()`` (``PRAGMA integrity_check`` and FTS5's ``integrity-check`` under the write
   lock) against the quick one the periodic check runs (``quick_check`` and an index read on a separate
   read-only connection), and the latency of ``add_memory`` calls made while each runs (issue 18.10).
Bounded to about 90 s on a small machine, most of it building the 50,000 memories (``--quick``: a few
seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from context_manager.core.async_operations import ConcurrencyController
from context_manager.core.performance_monitor import (
    PerformanceMonitor,
    monitored_operation,
    record_library_operation,
)

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")


def _noop(name: str, duration_s: float, success: bool) -> None:
    return None


def _per_call_ns(function: Any, calls: int, repeats: int) -> float:
    """Best-of-``repeats`` time per call in ns."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        function(calls)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def bench_recording(calls: int, repeats: int) -> dict[str, float]:
    monitor = PerformanceMonitor()

    def baseline_call(n: int) -> None:
        for _ in range(n):
            _noop("op", 0.001, True)

    def record(n: int) -> None:
        for _ in range(n):
            monitor.record_operation("op", 0.001, True)

    def baseline_with(n: int) -> None:
        for _ in range(n):
            with contextlib.nullcontext():
                pass

    def timer(n: int) -> None:
        for _ in range(n):
            with monitor.operation_timer("timed"):
                pass

    results = {
        "noop_call_ns": _per_call_ns(baseline_call, calls, repeats),
        "record_operation_ns": _per_call_ns(record, calls, repeats),
        "nullcontext_ns": _per_call_ns(baseline_with, calls, repeats),
        "operation_timer_ns": _per_call_ns(timer, calls, repeats),
    }
    results["record_operation_overhead_ns"] = results["record_operation_ns"] - results["noop_call_ns"]
    results["operation_timer_overhead_ns"] = results["operation_timer_ns"] - results["nullcontext_ns"]

    async def library_path() -> tuple[float, float, float]:
        running = PerformanceMonitor(sample_interval=60.0)
        await running.start_monitoring()
        try:
            fan_out = _per_call_ns(
                lambda n: [record_library_operation("add_message", 0.001, True) for _ in range(n)],
                calls,
                repeats,
            )

            class Service:
                performance_monitor = None

                async def bare(self) -> int:
                    return 1

                @monitored_operation("decorated")
                async def decorated(self) -> int:
                    return 1

            service = Service()

            async def loop(method: Any, n: int) -> float:
                start = time.perf_counter_ns()
                for _ in range(n):
                    await method()
                return (time.perf_counter_ns() - start) / n

            bare = min([await loop(service.bare, calls) for _ in range(repeats)])
            decorated = min([await loop(service.decorated, calls) for _ in range(repeats)])
        finally:
            await running.stop_monitoring()
        return fan_out, bare, decorated

    fan_out, bare, decorated = asyncio.run(library_path())
    results["record_library_operation_one_monitor_ns"] = fan_out
    results["bare_async_method_ns"] = bare
    results["monitored_async_method_ns"] = decorated
    results["monitored_operation_overhead_ns"] = decorated - bare
    return results


async def _trivial(value: int) -> int:
    return value


async def _semaphore_gather(total: int, limit: int) -> float:
    semaphore = asyncio.Semaphore(limit)

    async def run(value: int) -> int:
        async with semaphore:
            return await _trivial(value)

    start = time.perf_counter()
    results = await asyncio.gather(*(run(index) for index in range(total)))
    elapsed = time.perf_counter() - start
    assert results == list(range(total))
    return elapsed


async def _controller(total: int, limit: int) -> float:
    controller = ConcurrencyController(max_concurrent_tasks=limit, max_queue_size=total)
    await controller.start()
    start = time.perf_counter()
    ids = [await controller.submit_task(f"t{index}", _trivial, index) for index in range(total)]
    results = [await controller.wait_for_task(task_id) for task_id in ids]
    elapsed = time.perf_counter() - start
    await controller.stop()
    assert results == list(range(total))
    stats = controller.get_stats()
    assert stats.peak_running <= limit and stats.completed == total
    return elapsed


def bench_controller(total: int, limit: int, rounds: int) -> dict[str, float]:
    async def main() -> tuple[list[float], list[float]]:
        baseline, ours = [], []
        for _ in range(rounds):  # interleaved so both see the same machine load
            gc.collect()
            baseline.append(await _semaphore_gather(total, limit))
            gc.collect()
            ours.append(await _controller(total, limit))
        return baseline, ours

    baseline, ours = asyncio.run(main())
    paired = [mine / theirs for mine, theirs in zip(ours, baseline, strict=True)]
    return {
        "tasks": total,
        "max_concurrent_tasks": limit,
        "rounds": rounds,
        "semaphore_gather_best_s": min(baseline),
        "controller_best_s": min(ours),
        "semaphore_gather_median_s": statistics.median(baseline),
        "controller_median_s": statistics.median(ours),
        "ratio_of_bests": min(ours) / min(baseline),
        "ratio_paired_median": statistics.median(paired),
        "ratio_paired_min": min(paired),
        "controller_tasks_per_s": total / min(ours),
    }


def bench_idle_monitor(seconds: float, interval: float) -> dict[str, float]:
    async def idle(with_monitor: bool) -> tuple[float, float, int]:
        monitor = PerformanceMonitor(sample_interval=interval) if with_monitor else None
        if monitor is not None:
            await monitor.start_monitoring()
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
        samples = 0
        if monitor is not None:
            samples = len(monitor.samples())
            await monitor.stop_monitoring()
        return cpu, wall, samples

    async def main() -> dict[str, float]:
        base_cpu, base_wall, _ = await idle(False)
        cpu, wall, samples = await idle(True)
        return {
            "seconds": wall,
            "sample_interval_s": interval,
            "samples": samples,
            "idle_loop_cpu_percent": 100.0 * base_cpu / base_wall,
            "idle_loop_with_monitor_cpu_percent": 100.0 * cpu / wall,
            "monitor_cpu_percent_of_one_core": 100.0 * max(0.0, cpu / wall - base_cpu / base_wall),
            "cpu_per_sample_us": 1e6 * max(0.0, cpu - base_cpu * wall / base_wall) / max(samples, 1),
        }

    return asyncio.run(main())


def bench_integrity_check(memories: int, rounds: int) -> dict[str, Any]:
    import tempfile

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.manager import MemoryManager

    words = ["invoice", "payment", "order", "shipping", "delivery", "porto", "lisbon", "python", "tool"]

    async def writes_during(memory: MemoryManager, quick: bool) -> tuple[float, list[float]]:
        """Run one check; meanwhile add memories back to back; return its seconds and the writes' ms."""
        started = time.perf_counter()
        check = asyncio.ensure_future(memory.check_integrity(quick=quick))
        latencies: list[float] = []
        number = 0
        while not check.done():
            begin = time.perf_counter()
            await memory.add_memory(f"written during the check {number}", importance=0.9)
            latencies.append((time.perf_counter() - begin) * 1000.0)
            number += 1
        result = await check
        assert result["ok"], result
        return time.perf_counter() - started, latencies

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as directory:
            config = ContextManagerConfig(cache_path=directory, long_term_memory_size=10 * memories)
            async with MemoryManager(config) as memory:
                for start in range(0, memories, 5000):
                    batch = range(start, min(start + 5000, memories))
                    texts = [" ".join(f"{words[(n + k) % 9]}{n % 997}" for k in range(12)) for n in batch]
                    await memory.add_memories([{"content": text, "tier": "long"} for text in texts])
                figures: dict[str, list[float]] = {name: [] for name in ("full_s", "quick_s")}
                worst: dict[str, float] = {"full": 0.0, "quick": 0.0}
                medians: dict[str, list[float]] = {"full": [], "quick": []}
                for _ in range(rounds):  # interleaved: both see the same machine load
                    for mode in ("full", "quick"):
                        seconds, latencies = await writes_during(memory, quick=mode == "quick")
                        figures[f"{mode}_s"].append(seconds)
                        worst[mode] = max(worst[mode], max(latencies))
                        medians[mode].append(statistics.median(latencies))
        return {
            "memories": memories,
            "rounds": rounds,
            "full_check_s": statistics.median(figures["full_s"]),
            "quick_check_s": statistics.median(figures["quick_s"]),
            "write_max_ms_during_full": worst["full"],
            "write_max_ms_during_quick": worst["quick"],
            "write_p50_ms_during_full": statistics.median(medians["full"]),
            "write_p50_ms_during_quick": statistics.median(medians["quick"]),
        }

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small counts")
    arguments = parser.parse_args()
    quick = arguments.quick

    recording = bench_recording(calls=20_000 if quick else 200_000, repeats=3 if quick else 5)
    print("1. monitor recording overhead (best of runs, ns per call)")
    print(f"   no-op call with the same arguments   {recording['noop_call_ns']:8.0f}")
    print(
        f"   record_operation                     {recording['record_operation_ns']:8.0f}"
        f"   overhead {recording['record_operation_overhead_ns']:.0f} ns"
    )
    print(f"   with nullcontext()                   {recording['nullcontext_ns']:8.0f}")
    print(
        f"   with operation_timer()               {recording['operation_timer_ns']:8.0f}"
        f"   overhead {recording['operation_timer_overhead_ns']:.0f} ns"
    )
    print(
        f"   record_library_operation (1 running) {recording['record_library_operation_one_monitor_ns']:8.0f}"
    )
    print(
        f"   await monitored method vs bare       {recording['monitored_async_method_ns']:8.0f}"
        f" vs {recording['bare_async_method_ns']:.0f}"
        f"   overhead {recording['monitored_operation_overhead_ns']:.0f} ns"
    )

    controller = bench_controller(total=2_000 if quick else 10_000, limit=10, rounds=3 if quick else 7)
    ratio = controller["ratio_paired_median"]
    print(f"2. {controller['tasks']:,} trivial tasks, limit {controller['max_concurrent_tasks']}")
    print(
        f"   asyncio.Semaphore + gather           {controller['semaphore_gather_best_s'] * 1e3:8.1f} ms best,"
        f" {controller['semaphore_gather_median_s'] * 1e3:.1f} ms median"
    )
    print(
        f"   ConcurrencyController                {controller['controller_best_s'] * 1e3:8.1f} ms best,"
        f" {controller['controller_median_s'] * 1e3:.1f} ms median"
    )
    print(
        f"   ratio (median of {controller['rounds']} paired rounds)   {ratio:8.2f}x"
        f"   (best/best {controller['ratio_of_bests']:.2f}x;"
        f" target <= 2x: {'met' if ratio <= 2.0 else 'MISSED'})"
    )

    idle = bench_idle_monitor(seconds=1.0 if quick else 5.0, interval=0.1)
    print(f"3. idle monitor sampling every {idle['sample_interval_s']} s for {idle['seconds']:.1f} s")
    print(f"   idle loop without monitor            {idle['idle_loop_cpu_percent']:8.3f} % of one core")
    print(f"   idle loop with monitor               {idle['idle_loop_with_monitor_cpu_percent']:8.3f} %")
    print(
        f"   monitor cost                         {idle['monitor_cpu_percent_of_one_core']:8.3f} % of a core"
        f"   ({idle['samples']} samples, {idle['cpu_per_sample_us']:.0f} µs each)"
        f"   (target < 1%: {'met' if idle['monitor_cpu_percent_of_one_core'] < 1.0 else 'MISSED'})"
    )

    integrity = bench_integrity_check(memories=5_000 if quick else 50_000, rounds=2 if quick else 3)
    print(
        f"4. database check at {integrity['memories']:,} long-term memories (median of {integrity['rounds']})"
    )
    print(
        f"   full check_integrity() (write lock)  {integrity['full_check_s'] * 1e3:8.0f} ms;"
        f" add_memory meanwhile: max {integrity['write_max_ms_during_full']:.0f} ms"
    )
    print(
        f"   quick check (read-only connection)   {integrity['quick_check_s'] * 1e3:8.0f} ms;"
        f" add_memory meanwhile: max {integrity['write_max_ms_during_quick']:.0f} ms,"
        f" p50 {integrity['write_p50_ms_during_quick']:.1f} ms"
    )
    print(
        "   quick / full duration                "
        f"{integrity['quick_check_s'] / integrity['full_check_s']:8.2f}x"
    )

    if arguments.json is not None:
        payload = {
            "python": sys.version.split()[0],
            "recording": recording,
            "controller": controller,
            "idle_monitor": idle,
            "integrity_check": integrity,
        }
        arguments.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
