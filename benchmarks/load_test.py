"""Load and leak test: long runs through the public API, with throughput, RSS and event-loop lag.

    python benchmarks/load_test.py                 # the full run (~10-20 min on a small loaded machine)
    python benchmarks/load_test.py --quick         # the CI-sized run (tests/reliability/test_load.py)
    python benchmarks/load_test.py --json out.json --markdown

Three workloads, each in a fresh storage directory, each on one event loop:

1. **messages** - ``add_message`` calls (1,000,000 in the full run) through a 128k-token window with the
   default compression: every evicted message goes to medium-term memory and on to long-term SQLite.
   Checked: the window never exceeds ``max_tokens``; the in-process tiers stay within their capacities.
2. **memory** - a store preloaded with 100,000 memories, then 8 writers (``add_memory``) and 8 readers
   (``search_memory`` / ``search_by_tags``) running concurrently for a bounded time. Checked afterwards:
   every acknowledged write is found by id, and the memory count is preload + writes.
3. **tools** - tool calls (100,000 in the full run) through ``EnhancedContextManager``: typed, cacheable,
   rate-limited (per caller key) and sync tools via ``execute_tool``, and batches through
   ``execute_tool_calls`` (which append paired messages to the window). Checked: the call counters in
   ``get_tool_stats()`` match the calls made exactly; the rate limiter and cache stay bounded.

For each workload: throughput, RSS at the start of the measured phase and at the end (after a warm-up
that fills the window / caches, so growth means a leak, not a full buffer), and the event-loop lag
p50/p99/max measured by a sampler task that asks for a 5 ms sleep and records how late it wakes. The
workload yields to the loop (``await asyncio.sleep(0)``) after every call, as an application waiting on
a model would, so the lag is the longest time one library call holds the loop.

RSS bounds checked (exit status 1 when broken): growth after warm-up <= ``--max-rss-growth-mb``
(default 64 MB; the window, the in-process tiers, the tool cache and the monitors' ring buffers are all
bounded, so a leak shows up as growth proportional to the number of calls).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

if "CM_SRC" in os.environ:  # e.g. a snapshot of src/ to measure while the tree is being edited
    sys.path.insert(0, os.environ["CM_SRC"])
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from context_manager import (  # noqa: E402
    ContextManagerConfig,
    EnhancedContextManager,
    MemoryManager,
    ToolCategory,
)

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")

_WORDS = (  # noqa: SIM905 - a readable sentence, not a word list
    "the deployment pipeline failed because the cache key changed after we upgraded the compiler "
    "please check invoice for Acme Corp due on March 3rd and send the summary to Dana retrieval "
    "quality improved when we added stemming and neighbour context 東京の天気は晴れです "
    "naïve café résumé okay let's continue with the migration plan database index latency budget rollout"
).split()

_LAG_INTERVAL = 0.005


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def make_text(rng: random.Random, words: int, tag: int) -> str:
    return f"[{tag}] " + " ".join(rng.choice(_WORDS) for _ in range(words))


class LagSampler:
    """Measures event-loop lag: how late a task asking for a short sleep wakes up."""

    def __init__(self, interval: float = _LAG_INTERVAL) -> None:
        self.interval = interval
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.lags_ms.append(max(0.0, (loop.time() - start - self.interval) * 1000))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {
            "lag_samples": len(self.lags_ms),
            "lag_p50_ms": round(percentile(self.lags_ms, 0.50), 2),
            "lag_p99_ms": round(percentile(self.lags_ms, 0.99), 2),
            "lag_max_ms": round(max(self.lags_ms, default=0.0), 2),
        }


@dataclass
class WorkloadResult:
    """Figures of one workload."""

    name: str
    operations: int = 0
    seconds: float = 0.0
    throughput_per_s: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_mb: float = 0.0
    lag: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def measured(
    result: WorkloadResult, body: Callable[[], Awaitable[int]], progress: Callable[[str], None]
) -> None:
    """Run ``body`` (the measured phase) under the lag sampler, recording time, RSS and operations."""
    gc.collect()
    result.rss_start_mb = round(rss_mb(), 1)
    sampler = LagSampler()
    sampler.start()
    started = time.perf_counter()
    result.operations = await body()
    result.seconds = round(time.perf_counter() - started, 2)
    result.lag = await sampler.stop()
    gc.collect()
    result.rss_end_mb = round(rss_mb(), 1)
    result.rss_growth_mb = round(result.rss_end_mb - result.rss_start_mb, 1)
    result.throughput_per_s = round(result.operations / result.seconds, 1) if result.seconds else 0.0
    progress(
        f"{result.name}: {result.operations} ops in {result.seconds} s "
        f"({result.throughput_per_s}/s), RSS {result.rss_start_mb} -> {result.rss_end_mb} MB, "
        f"lag p99 {result.lag['lag_p99_ms']} ms"
    )


def config_for(directory: str, **overrides: Any) -> ContextManagerConfig:
    values: dict[str, Any] = {
        "cache_path": directory,
        "enable_health_checks": False,
    }
    values.update(overrides)
    return ContextManagerConfig(**values)


# -- 1. messages ------------------------------------------------------------------------------------


async def workload_messages(count: int, warmup: int, progress: Callable[[str], None]) -> WorkloadResult:
    result = WorkloadResult("messages")
    rng = random.Random(7)
    texts = [make_text(rng, rng.randint(8, 60), i) for i in range(4096)]
    roles = ("user", "assistant")
    max_tokens = 128_000
    with tempfile.TemporaryDirectory() as directory:
        config = config_for(directory, max_tokens=max_tokens)
        async with EnhancedContextManager(config) as manager:
            largest = 0
            for index in range(warmup):  # fill the window and the in-process tiers first
                await manager.add_message(roles[index & 1], texts[index & 4095])
                await asyncio.sleep(0)

            async def body() -> int:
                nonlocal largest
                add = manager.add_message
                for index in range(warmup, warmup + count):
                    await add(roles[index & 1], f"{index} {texts[index & 4095]}")
                    await asyncio.sleep(0)
                    if index % 1000 == 0:
                        tokens = manager.get_context_summary()["token_count"]
                        largest = max(largest, tokens)
                        if tokens > max_tokens:
                            result.problems.append(f"window at {tokens} tokens > {max_tokens}")
                    if index % 100_000 == 0 and index > warmup:
                        progress(f"  messages: {index - warmup} added, RSS {rss_mb():.0f} MB")
                return count

            await measured(result, body, progress)
            summary = manager.get_context_summary()
            await manager.flush()  # the evicted messages still queued for memory, then memory's own flush
            stats = await manager.memory_manager.get_memory_stats()
            result.details = {
                "max_tokens": max_tokens,
                "warmup_messages": warmup,
                "window_tokens_end": summary["token_count"],
                "window_messages_end": summary["message_count"],
                "largest_window_tokens_seen": largest,
                "compressions": manager.get_context_summary()["compression_count"],
                "memories_by_tier": stats["by_tier"],
                "bytes_on_disk": stats["bytes_on_disk"]["total"],
            }
            capacity = stats["capacity"]
            for tier in ("short", "medium"):
                if stats["by_tier"][tier] > capacity[tier]:
                    result.problems.append(
                        f"{tier}-term tier holds {stats['by_tier'][tier]} > capacity {capacity[tier]}"
                    )
    return result


# -- 2. memory --------------------------------------------------------------------------------------


async def workload_memory(
    preload: int, seconds: float, workers: int, progress: Callable[[str], None]
) -> WorkloadResult:
    result = WorkloadResult("memory")
    rng = random.Random(11)
    tags = [f"topic{i}" for i in range(50)]
    with tempfile.TemporaryDirectory() as directory:
        config = config_for(directory)
        async with MemoryManager(config) as memory:
            batch = 5000
            for start in range(0, preload, batch):
                await memory.add_memories(
                    [
                        {
                            "content": make_text(rng, rng.randint(6, 30), i),
                            "importance": rng.random(),
                            "tags": [rng.choice(tags)],
                        }
                        for i in range(start, min(preload, start + batch))
                    ]
                )
            progress(f"  memory: preloaded {preload}")
            # warm-up: one search per worker so lazily built structures exist before measuring
            for _ in range(workers):
                await memory.search_memory(rng.choice(_WORDS), limit=10)

            acknowledged: list[str] = []
            writes = 0
            searches = 0
            search_ms: list[float] = []
            write_ms: list[float] = []
            errors: list[str] = []
            deadline = 0.0

            async def writer(seed: int) -> None:
                nonlocal writes
                local = random.Random(seed)
                while time.perf_counter() < deadline:
                    begin = time.perf_counter()
                    try:
                        added = await memory.add_memory(
                            make_text(local, local.randint(6, 30), seed),
                            importance=local.random(),
                            tags=[local.choice(tags)],
                        )
                    except Exception as error:  # counted: any error is a finding
                        errors.append(f"add_memory: {type(error).__name__}: {error}")
                        continue
                    write_ms.append((time.perf_counter() - begin) * 1000)
                    acknowledged.append(added.id)
                    writes += 1
                    await asyncio.sleep(0)

            async def reader(seed: int) -> None:
                nonlocal searches
                local = random.Random(seed)
                while time.perf_counter() < deadline:
                    begin = time.perf_counter()
                    try:
                        if local.random() < 0.8:
                            query = " ".join(local.choice(_WORDS) for _ in range(local.randint(1, 4)))
                            await memory.search_memory(query, limit=10)
                        else:
                            await memory.search_by_tags([local.choice(tags)], limit=10)
                    except Exception as error:
                        errors.append(f"search: {type(error).__name__}: {error}")
                        continue
                    search_ms.append((time.perf_counter() - begin) * 1000)
                    searches += 1
                    await asyncio.sleep(0)

            async def body() -> int:
                nonlocal deadline
                deadline = time.perf_counter() + seconds
                await asyncio.gather(
                    *(writer(100 + i) for i in range(workers)), *(reader(200 + i) for i in range(workers))
                )
                return writes + searches

            await measured(result, body, progress)
            missing = 0
            for memory_id in acknowledged:
                if await memory.get_memory(memory_id) is None:
                    missing += 1
            stats = await memory.get_memory_stats()
            result.details = {
                "preloaded": preload,
                "writers": workers,
                "readers": workers,
                "seconds_bounded": seconds,
                "writes": writes,
                "searches": searches,
                "writes_per_s": round(writes / result.seconds, 1) if result.seconds else 0.0,
                "searches_per_s": round(searches / result.seconds, 1) if result.seconds else 0.0,
                "write_p99_ms": round(percentile(write_ms, 0.99), 2),
                "search_p50_ms": round(percentile(search_ms, 0.50), 2),
                "search_p99_ms": round(percentile(search_ms, 0.99), 2),
                "total_memories": stats["total_memories"],
                "acknowledged_missing": missing,
                "errors": errors[:5],
            }
            if missing:
                result.problems.append(f"{missing} acknowledged writes not found by id")
            if errors:
                result.problems.append(f"{len(errors)} calls raised, e.g. {errors[0]}")
            if stats["total_memories"] != preload + writes:
                result.problems.append(
                    f"total_memories {stats['total_memories']} != preload {preload} + writes {writes}"
                )
    return result


# -- 3. tools ---------------------------------------------------------------------------------------


async def typed_tool(text: str, repeat: int = 1) -> dict[str, Any]:
    """Echo a text.

    Args:
        text: What to echo.
        repeat: How many times.
    """
    return {"text": text * repeat, "length": len(text) * repeat}


async def lookup_tool(key: int) -> int:
    """A cacheable lookup.

    Args:
        key: The key.
    """
    return key * 2


async def limited_tool(value: int) -> int:
    """A rate-limited tool.

    Args:
        value: Any number.
    """
    return value


def sync_tool(value: int) -> int:
    """A sync tool (runs in a worker thread).

    Args:
        value: Any number.
    """
    return value + 1


_LOG_ROWS = "".join(
    f"row {i}: status ok, latency {i % 97} ms, region eu-west-{i % 3}\n" for i in range(22_000)
)


async def dump_tool(part: int) -> str:
    """A tool whose output is a megabyte and more (a log dump): it is cut in the window.

    Args:
        part: Which dump.
    """
    return f"dump {part}\n" + _LOG_ROWS


async def workload_tools(count: int, warmup: int, progress: Callable[[str], None]) -> WorkloadResult:
    result = WorkloadResult("tools")
    with tempfile.TemporaryDirectory() as directory:
        config = config_for(directory, max_tokens=32_000)
        async with EnhancedContextManager(config) as manager:
            tools = manager.tool_manager
            tools.register_function_tool("echo", typed_tool, category=ToolCategory.TEXT)
            tools.register_function_tool("lookup", lookup_tool, cacheable=True, cache_ttl=60.0)
            tools.register_function_tool("limited", limited_tool, rate_limit=5, rate_window=60.0)
            tools.register_function_tool("sync", sync_tool)
            tools.register_function_tool("dump", dump_tool, max_output_tokens=2_000)
            made: dict[str, int] = {"echo": 0, "lookup": 0, "limited": 0, "sync": 0, "dump": 0}
            outcomes: dict[str, int] = {"success": 0, "rate_limited": 0, "other_failure": 0}
            batch_calls = 0

            async def one(index: int) -> int:
                """Make the call(s) for step ``index``; return how many tool calls were made."""
                nonlocal batch_calls
                kind = index % 10
                if (
                    index % 250 == 125
                ):  # a model asks for a megabyte log dump: cut in the window, kept on disk
                    [dumped] = await manager.execute_tool_calls(
                        [{"id": f"dump{index}", "name": "dump", "arguments": {"part": index}}]
                    )
                    made["dump"] += 1
                    batch_calls += 1
                    outcomes["success" if dumped.success else "other_failure"] += 1
                    return 1
                if kind < 4:
                    outcome = await manager.execute_tool(
                        "echo", text=f"t{index % 5000}", repeat=1 + index % 3
                    )
                    made["echo"] += 1
                elif kind < 6:
                    outcome = await manager.execute_tool("lookup", key=index % 2000)
                    made["lookup"] += 1
                elif kind < 8:
                    # a new caller key every 50 calls: exercises per-caller limiter state
                    outcome = await tools.call_tool(
                        "limited", {"value": index}, caller_key=f"user-{index // 50}"
                    )
                    made["limited"] += 1
                elif kind == 8:
                    outcome = await manager.execute_tool("sync", value=index)
                    made["sync"] += 1
                else:  # a model response with two tool calls, appended to the window
                    calls = [
                        {"id": f"c{index}a", "name": "echo", "arguments": {"text": f"b{index}"}},
                        {"id": f"c{index}b", "name": "lookup", "arguments": {"key": index % 2000}},
                    ]
                    results = await manager.execute_tool_calls(calls)
                    made["echo"] += 1
                    made["lookup"] += 1
                    batch_calls += 2
                    for item in results:
                        outcomes["success" if item.success else "other_failure"] += 1
                    return 2
                if outcome.success:
                    outcomes["success"] += 1
                elif outcome.error_type is not None and outcome.error_type.value == "rate_limited":
                    outcomes["rate_limited"] += 1
                else:
                    outcomes["other_failure"] += 1
                return 1

            for index in range(warmup):
                await one(index)
            made = dict.fromkeys(made, 0)
            outcomes = dict.fromkeys(outcomes, 0)
            batch_calls = 0
            before = tools.get_tool_stats()

            async def body() -> int:
                calls = 0
                index = warmup
                while calls < count:
                    calls += await one(index)
                    index += 1
                    await asyncio.sleep(0)
                    if index % 5000 == 0:
                        tools.purge_expired_cache()  # the documented way to drop idle limiter keys
                return calls

            await measured(result, body, progress)
            after = tools.get_tool_stats()
            counted = {name: after["tools"][name]["calls"] - before["tools"][name]["calls"] for name in made}
            result.details = {
                "calls_by_tool": made,
                "outcomes": outcomes,
                "calls_via_execute_tool_calls": batch_calls,
                "stats_calls_by_tool": counted,
                "cache_entries_end": after["cache"]["entries"],
                "megabyte_outputs": made["dump"],
                "dump_output_chars": len(_LOG_ROWS),
                "token_count_cache_chars": manager.context_window.counter.cache_chars  # type: ignore[attr-defined]
                if hasattr(manager.context_window.counter, "cache_chars")
                else None,
                "window_tokens_end": manager.get_context_summary()["token_count"],
                "compressions": manager.get_context_summary()["compression_count"],
            }
            if counted != made:
                result.problems.append(f"get_tool_stats counts {counted} != calls made {made}")
            if outcomes["other_failure"]:
                result.problems.append(f"{outcomes['other_failure']} unexpected tool failures")
    return result


# -- main -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    messages: int
    message_warmup: int
    memories: int
    memory_seconds: float
    tool_calls: int
    tool_warmup: int


FULL = Scale(1_000_000, 50_000, 100_000, 60.0, 100_000, 5_000)
QUICK = Scale(12_000, 8_000, 5_000, 3.0, 5_000, 1_000)


def to_markdown(results: list[WorkloadResult], header: dict[str, Any]) -> str:
    lines = [
        f"Run: {header['date']}, {header['platform']}, Python {header['python']}, "
        f"{header['cpus']} CPUs (shared with other jobs), scale {header['scale']}.",
        "",
        "| workload | operations | seconds | ops/s | RSS start MB | RSS end MB | growth MB | lag p50 ms "
        "| lag p99 ms | lag max ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results:
        lines.append(
            f"| {item.name} | {item.operations:,} | {item.seconds} | {item.throughput_per_s:,.0f} "
            f"| {item.rss_start_mb} | {item.rss_end_mb} | {item.rss_growth_mb} | {item.lag['lag_p50_ms']} "
            f"| {item.lag['lag_p99_ms']} | {item.lag['lag_max_ms']} |"
        )
    return "\n".join(lines)


async def run(
    scale: Scale, workloads: list[str], max_growth_mb: float, progress: Callable[[str], None]
) -> list[WorkloadResult]:
    results: list[WorkloadResult] = []
    if "messages" in workloads:
        results.append(await workload_messages(scale.messages, scale.message_warmup, progress))
    if "memory" in workloads:
        results.append(await workload_memory(scale.memories, scale.memory_seconds, 8, progress))
    if "tools" in workloads:
        results.append(await workload_tools(scale.tool_calls, scale.tool_warmup, progress))
    for item in results:
        if item.rss_growth_mb > max_growth_mb:
            item.problems.append(f"RSS grew {item.rss_growth_mb} MB > {max_growth_mb} MB")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI-sized run")
    parser.add_argument(
        "--workload", action="append", choices=("messages", "memory", "tools"), help="run only these"
    )
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table at the end")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    workloads = args.workload or ["messages", "memory", "tools"]

    def progress(line: str) -> None:
        print(line, flush=True)

    header = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "scale": "quick" if args.quick else "full",
        "load_average": os.getloadavg(),
    }
    results = asyncio.run(run(scale, workloads, args.max_rss_growth_mb, progress))
    payload = {"header": header, "scale": asdict(scale), "results": [asdict(item) for item in results]}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    if args.markdown:
        print(to_markdown(results, header))
    problems = [f"{item.name}: {problem}" for item in results for problem in item.problems]
    for problem in problems:
        print(f"PROBLEM {problem}", flush=True)
    print("load test " + ("FAILED" if problems else "passed"), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
