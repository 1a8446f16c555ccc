"""Benchmark of the tool system's hot paths, each against a baseline measured in the same run.

    python benchmarks/bench_tools.py [--iterations 20000] [--json results.json]

1. Dispatch overhead: ``await manager.execute("typed", a=..., b=..., c=...)`` (a typed tool with three
   arguments, validated by pydantic, not cacheable, so every call is a cache miss) minus a direct
   ``await typed(a=..., b=..., c=...)`` of the same function. Target: p50 overhead <= 25 microseconds.
2. Cache-hit latency: ``execute`` of a cacheable tool with arguments already cached.
3. Throughput of 1,000 concurrent calls: ``asyncio.gather`` of 1,000 ``execute`` calls and one
   ``execute_tool_calls`` batch of 1,000 provider calls (bounded by ``max_concurrent_tool_calls``),
   against ``asyncio.gather`` of 1,000 direct awaits.
4. Sync tools: ``execute`` of a trivial sync tool (it runs in the tool manager's own threads) against
   ``asyncio.to_thread`` of the same function (the event loop's default pool).
5. Isolation: a long-term ``add_memory`` (SQLite in a worker thread) while 20 sync tools hang in
   their threads, against the same write with no tool running (issue 18.9: it used to wait for a
   thread of the shared pool; 2.8 s).

Latencies are timed per call with ``perf_counter_ns`` (the timer's own cost is in both sides); the
direct and managed loops alternate in rounds so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from context_manager.core.config import ContextManagerConfig  # noqa: E402
from context_manager.core.tool_system import ToolManager  # noqa: E402

TARGET_OVERHEAD_P50_US = 25.0


async def typed(a: int, b: str, c: float) -> dict[str, Any]:
    """A small typed tool.

    Args:
        a: A count.
        b: A label.
        c: A weight.
    """
    return {"a": a, "b": b, "c": c}


async def yielding(n: int) -> int:
    await asyncio.sleep(0)
    return n


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_us(samples_ns: list[int]) -> dict[str, float]:
    values = [sample / 1000.0 for sample in samples_ns]
    return {
        "p50_us": percentile(values, 0.50),
        "p99_us": percentile(values, 0.99),
        "mean_us": statistics.fmean(values),
    }


async def time_direct(iterations: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for index in range(iterations):
        started = clock()
        await typed(a=index, b="label", c=0.5)
        samples.append(clock() - started)
    return samples


async def time_execute(manager: ToolManager, name: str, iterations: int, *, vary: bool) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    execute = manager.execute
    for index in range(iterations):
        started = clock()
        result = await execute(name, a=index if vary else 1, b="label", c=0.5)
        samples.append(clock() - started)
        if not result.success:
            raise RuntimeError(result.error)
    return samples


async def dispatch_overhead(iterations: int, rounds: int = 5) -> dict[str, Any]:
    manager = ToolManager(ContextManagerConfig())
    manager.register_function_tool("typed", typed, "Typed tool")
    manager.register_function_tool("typed_cached", typed, "Typed tool, cached", cacheable=True)
    await time_execute(manager, "typed", 2000, vary=True)  # warm up
    await time_direct(2000)
    await time_execute(manager, "typed_cached", 10, vary=False)  # fills the one cache entry
    direct: list[int] = []
    managed: list[int] = []
    cached: list[int] = []
    per_round = max(iterations // rounds, 1)
    gc.collect()
    for _ in range(rounds):
        direct += await time_direct(per_round)
        managed += await time_execute(manager, "typed", per_round, vary=True)
        cached += await time_execute(manager, "typed_cached", per_round, vary=False)
    direct_stats = summary_us(direct)
    managed_stats = summary_us(managed)
    cached_stats = summary_us(cached)
    overhead = {
        "p50_us": managed_stats["p50_us"] - direct_stats["p50_us"],
        "p99_us": managed_stats["p99_us"] - direct_stats["p99_us"],
    }
    return {
        "iterations": per_round * rounds,
        "direct_await": direct_stats,
        "execute_cache_miss": managed_stats,
        "overhead": overhead,
        "overhead_ratio_p50": managed_stats["p50_us"] / direct_stats["p50_us"],
        "cache_hit": cached_stats,
        "cache_hit_vs_miss_p50": cached_stats["p50_us"] / managed_stats["p50_us"],
        "target_overhead_p50_us": TARGET_OVERHEAD_P50_US,
        "meets_target": overhead["p50_us"] <= TARGET_OVERHEAD_P50_US,
    }


async def throughput(concurrent: int = 1000, repeats: int = 5) -> dict[str, Any]:
    manager = ToolManager(ContextManagerConfig())
    manager.register_function_tool("yielding", yielding, "Yields once")
    calls = [
        {
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": "yielding", "arguments": f'{{"n": {index}}}'},
        }
        for index in range(concurrent)
    ]

    async def direct_batch() -> None:
        await asyncio.gather(*(yielding(n) for n in range(concurrent)))

    async def execute_batch() -> None:
        results = await asyncio.gather(*(manager.execute("yielding", n=n) for n in range(concurrent)))
        assert all(result.success for result in results)

    async def tool_calls_batch() -> None:
        results = await manager.execute_tool_calls(calls)
        assert [result.result for result in results] == list(range(concurrent))

    timings: dict[str, list[float]] = {"direct_gather": [], "execute_gather": [], "execute_tool_calls": []}
    for _ in range(repeats):
        for name, batch in (
            ("direct_gather", direct_batch),
            ("execute_gather", execute_batch),
            ("execute_tool_calls", tool_calls_batch),
        ):
            started = time.perf_counter()
            await batch()
            timings[name].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in timings.items()}
    return {
        "concurrent_calls": concurrent,
        "max_concurrent_tool_calls": manager.config.max_concurrent_tool_calls,
        "seconds_best_of": repeats,
        **{f"{name}_calls_per_s": concurrent / seconds for name, seconds in best.items()},
        **{f"{name}_ms": seconds * 1000 for name, seconds in best.items()},
        "execute_gather_vs_direct": best["execute_gather"] / best["direct_gather"],
        "execute_tool_calls_vs_direct": best["execute_tool_calls"] / best["direct_gather"],
    }


def blocking_add(a: int, b: int) -> int:
    return a + b


async def sync_dispatch(iterations: int, rounds: int = 5) -> dict[str, Any]:
    manager = ToolManager(ContextManagerConfig())
    manager.register_function_tool("blocking_add", blocking_add, "Adds in a thread")
    clock = time.perf_counter_ns

    async def via_manager(count: int) -> list[int]:
        samples = []
        for n in range(count):
            started = clock()
            result = await manager.execute("blocking_add", a=n, b=1)
            samples.append(clock() - started)
            if not result.success:
                raise RuntimeError(result.error)
        return samples

    async def via_to_thread(count: int) -> list[int]:
        samples = []
        for n in range(count):
            started = clock()
            await asyncio.to_thread(blocking_add, n, 1)
            samples.append(clock() - started)
        return samples

    await via_manager(500)
    await via_to_thread(500)
    per_round = max(iterations // (4 * rounds), 1)  # a thread hop costs ~50-100 us: fewer calls
    managed: list[int] = []
    baseline: list[int] = []
    for _ in range(rounds):
        baseline += await via_to_thread(per_round)
        managed += await via_manager(per_round)
    managed_stats, baseline_stats = summary_us(managed), summary_us(baseline)
    return {
        "iterations": per_round * rounds,
        "asyncio_to_thread": baseline_stats,
        "execute_sync_tool": managed_stats,
        "execute_vs_to_thread_p50": managed_stats["p50_us"] / baseline_stats["p50_us"],
    }


async def isolation(tmp: Path, hung: int = 20, writes: int = 20) -> dict[str, Any]:
    import threading

    from context_manager.core.memory.manager import MemoryManager

    gate = threading.Event()

    def hangs() -> None:
        gate.wait(60)

    async def write_times(memory: MemoryManager, label: str) -> list[float]:
        times = []
        for number in range(writes):
            started = time.perf_counter()
            await memory.add_memory(f"{label} write {number}", importance=0.9)  # long-term: a thread
            times.append((time.perf_counter() - started) * 1000.0)
        return times

    config = ContextManagerConfig(cache_path=tmp, max_tool_timeout=0.05)
    manager = ToolManager(config)
    manager.register_function_tool("hangs", hangs, "Blocks its thread")
    async with MemoryManager(config) as memory:
        quiet = await write_times(memory, "quiet")
        try:
            results = await asyncio.gather(*(manager.execute("hangs") for _ in range(hung)))
            assert all(result.error_type == "timeout" for result in results)
            busy = await write_times(memory, "busy")
            abandoned = manager.get_tool_stats()["threads"]["abandoned"]
        finally:
            gate.set()
    return {
        "hung_sync_tools": hung,
        "abandoned_threads_during": abandoned,
        "add_memory_quiet_p50_ms": statistics.median(quiet),
        "add_memory_with_hung_tools_p50_ms": statistics.median(busy),
        "add_memory_with_hung_tools_max_ms": max(busy),
        "hung_vs_quiet_p50": statistics.median(busy) / statistics.median(quiet),
    }


async def main_async(iterations: int) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        isolated = await isolation(Path(directory))
    return {
        "benchmark": "tools",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dispatch": await dispatch_overhead(iterations),
        "throughput": await throughput(),
        "sync_tools": await sync_dispatch(iterations),
        "isolation": isolated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000, help="timed calls per measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    arguments = parser.parse_args()
    report = asyncio.run(main_async(arguments.iterations))
    dispatch = report["dispatch"]
    flow = report["throughput"]
    print(f"tool dispatch ({dispatch['iterations']} calls, typed tool with 3 arguments, cache miss)")
    for label, key in (
        ("direct await", "direct_await"),
        ("execute", "execute_cache_miss"),
        ("cache hit", "cache_hit"),
    ):
        stats = dispatch[key]
        print(f"  {label:<14} p50 {stats['p50_us']:7.2f} us   p99 {stats['p99_us']:7.2f} us")
    verdict = "meets" if dispatch["meets_target"] else "MISSES"
    print(
        f"  overhead       p50 {dispatch['overhead']['p50_us']:7.2f} us"
        f"   p99 {dispatch['overhead']['p99_us']:7.2f} us"
        f"   ({verdict} the target p50 <= {TARGET_OVERHEAD_P50_US:g} us; "
        f"execute/direct p50 = {dispatch['overhead_ratio_p50']:.1f}x)"
    )
    print(f"  cache hit / cache miss p50 = {dispatch['cache_hit_vs_miss_p50']:.2f}x")
    print(f"throughput of {flow['concurrent_calls']} concurrent calls (best of {flow['seconds_best_of']})")
    print(
        f"  direct gather       {flow['direct_gather_calls_per_s']:10.0f} calls/s"
        f"  ({flow['direct_gather_ms']:.1f} ms)"
    )
    print(
        f"  execute gather      {flow['execute_gather_calls_per_s']:10.0f} calls/s"
        f"  ({flow['execute_gather_ms']:.1f} ms,"
        f" {flow['execute_gather_vs_direct']:.1f}x direct)"
    )
    print(
        f"  execute_tool_calls  {flow['execute_tool_calls_calls_per_s']:10.0f} calls/s  "
        f"({flow['execute_tool_calls_ms']:.1f} ms, {flow['execute_tool_calls_vs_direct']:.1f}x direct, "
        f"at most {flow['max_concurrent_tool_calls']} at once)"
    )
    sync = report["sync_tools"]
    print(f"sync tool dispatch ({sync['iterations']} calls, a trivial function in a worker thread)")
    for label, key in (("asyncio.to_thread", "asyncio_to_thread"), ("execute", "execute_sync_tool")):
        stats = sync[key]
        print(f"  {label:<18} p50 {stats['p50_us']:7.2f} us   p99 {stats['p99_us']:7.2f} us")
    print(f"  execute / to_thread p50 = {sync['execute_vs_to_thread_p50']:.2f}x")
    isolated = report["isolation"]
    print(
        f"long-term add_memory while {isolated['hung_sync_tools']} sync tools hang "
        f"({isolated['abandoned_threads_during']} abandoned threads): p50 "
        f"{isolated['add_memory_with_hung_tools_p50_ms']:.2f} ms (max "
        f"{isolated['add_memory_with_hung_tools_max_ms']:.2f} ms) vs "
        f"{isolated['add_memory_quiet_p50_ms']:.2f} ms with none = {isolated['hung_vs_quiet_p50']:.2f}x"
    )
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
