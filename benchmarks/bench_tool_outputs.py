"""Megabyte tool outputs cut into the context window (issue 18.8): time on the event loop, memory left.

A tool returns a 1.3 MB log dump (distinct for every call); ``execute_tool_calls_in_window`` cuts each
result to the tool's ``max_output_tokens`` (800) in a window of 8,000 tokens with the exact o200k
counter. Printed: wall time, the CPU time the event-loop thread spent (and its longest single step, from
a task that yields in a loop), the process RSS growth after the run (garbage collected) and the characters
held in the token counter's cache. Before issue 18.8 was fixed, 200 outputs took 16 s on the loop and left
474 MB (every slice the binary search counted was cached).

    python benchmarks/bench_tool_outputs.py [--outputs 200] [--rows 27000] [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import psutil

from context_manager.core.context_window import ContextWindow
from context_manager.core.messages import ToolCall
from context_manager.core.tokens import ExactTokenCounter
from context_manager.core.tool_system import ToolManager
from context_manager.core.tool_system.window_calls import execute_tool_calls_in_window


def log_dump(rows: int) -> str:
    return "".join(f"row {i}: status ok, latency {i % 97} ms, region eu-{i % 5}\n" for i in range(rows))


async def run(outputs: int, rows: int) -> dict[str, Any]:
    body = log_dump(rows)

    async def dump(part: int) -> str:
        """Return a log dump (over a megabyte)."""
        return f"part {part}\n" + body

    tools = ToolManager()
    tools.register_function_tool("dump", dump, "Dump logs", max_output_tokens=800)
    counter = ExactTokenCounter("o200k_base")
    window = ContextWindow(max_tokens=8000, counter=counter)
    counter.count("warm up the encoder")
    process = psutil.Process()
    gc.collect()
    rss_before = process.memory_info().rss
    steps: list[float] = []

    async def ticker() -> None:  # the loop thread's CPU time between two turns of this task
        while True:
            started = time.thread_time()
            await asyncio.sleep(0)
            steps.append(time.thread_time() - started)

    loop_cpu_before = time.thread_time()
    wall_before = time.perf_counter()
    ticking = asyncio.create_task(ticker())
    try:
        for part in range(outputs):
            calls = [ToolCall(id=f"d{part}", name="dump", arguments={"part": part})]
            [result] = await execute_tool_calls_in_window(tools, window, calls)
            assert result.success and window.messages[-1].metadata.get("truncated")
    finally:
        ticking.cancel()
    wall = time.perf_counter() - wall_before
    loop_cpu = time.thread_time() - loop_cpu_before
    gc.collect()
    rss_after = process.memory_info().rss
    return {
        "benchmark": "tool_outputs",
        "outputs": outputs,
        "output_chars": len(body) + len("part 0\n"),
        "wall_s": round(wall, 3),
        "loop_cpu_s": round(loop_cpu, 3),
        "loop_longest_step_ms": round(max(steps, default=0.0) * 1000, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1e6, 1),
        "count_cache_chars": getattr(counter, "cache_chars", None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outputs", type=int, default=200, help="tool outputs to cut (default 200)")
    parser.add_argument("--rows", type=int, default=27_000, help="log rows per output (27,000: 1.3 MB)")
    parser.add_argument("--quick", action="store_true", help="20 outputs (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    options = parser.parse_args()
    if options.quick:
        options.outputs = 20
    figures = asyncio.run(run(options.outputs, options.rows))
    f = figures
    print(
        f"{f['outputs']} outputs of {f['output_chars'] / 1e6:.2f} MB: wall {f['wall_s']:.2f} s, "
        f"event-loop CPU {f['loop_cpu_s']:.2f} s (longest step {f['loop_longest_step_ms']:.1f} ms), "
        f"RSS +{f['rss_growth_mb']:.0f} MB, count cache {f['count_cache_chars']} characters"
    )
    if options.json is not None:
        options.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
