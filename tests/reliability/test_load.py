"""Load and leaks, CI-sized: ``benchmarks/load_test.py --quick`` as a real subprocess.

The full run (1,000,000 ``add_message`` calls through a 128k-token window, 100,000 memories with 8 writers
and 8 readers, 100,000 tool calls) is ``python benchmarks/load_test.py``; this test runs the same code at
CI size (``RELIABILITY_FULL=1`` runs the full size here too) and checks what the script checks:

* throughput is measured and every operation completed;
* RSS after the warm-up grows by at most 64 MB (the window, the in-process tiers, the tool cache, the rate
  limiter and the monitors' ring buffers are all bounded);
* the window never exceeds ``max_tokens``; the in-process memory tiers stay within their capacities;
* every acknowledged memory write is found afterwards and the memory count adds up;
* ``get_tool_stats()`` counts exactly the calls made, megabyte tool outputs included (one in 250 calls);
* event-loop lag stays bounded: median lateness of a 5 ms timer <= 100 ms, worst <= 5 s (generous: the
  machine running CI is shared; measured figures are in the assertion's comment).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from context_manager import ContextManagerConfig, MemoryManager
from tests.reliability.conftest import FULL_RUN

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"


def test_load_run_holds_its_bounds(tmp_path: Path) -> None:
    report = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--json", str(report)]
    if not FULL_RUN:
        command.append("--quick")
    completed = subprocess.run(command, capture_output=True, text=True, timeout=7200 if FULL_RUN else 600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    data = json.loads(report.read_text(encoding="utf-8"))
    results = {item["name"]: item for item in data["results"]}
    assert set(results) == {"messages", "memory", "tools"}
    scale = data["scale"]
    for item in results.values():
        assert item["problems"] == []
        assert item["throughput_per_s"] > 0 and item["operations"] > 0
        assert item["rss_growth_mb"] <= 64.0
        assert item["lag"]["lag_samples"] > 0
        # measured (2 CPUs, load average 5.5): p50 2-11 ms, max 17-574 ms. The bounds leave room for a
        # shared machine and still catch the loop being held for seconds (as cutting megabyte tool
        # outputs once did) or most of the time
        assert item["lag"]["lag_p50_ms"] <= 100, f"{item['name']}: the loop is held most of the time"
        assert item["lag"]["lag_max_ms"] <= 5_000, f"{item['name']}: the loop was held for seconds"

    messages = results["messages"]
    assert messages["operations"] == scale["messages"]
    assert messages["details"]["largest_window_tokens_seen"] <= messages["details"]["max_tokens"]
    assert messages["details"]["compressions"] > 0, "the run must go through compressions"

    memory = results["memory"]["details"]
    assert memory["acknowledged_missing"] == 0 and memory["writes"] > 0 and memory["searches"] > 0
    assert memory["total_memories"] == memory["preloaded"] + memory["writes"]

    for name, item in results.items():
        print(
            f"\nLOAD-FIGURES {name}: {item['operations']} ops, {item['throughput_per_s']}/s, "
            f"RSS {item['rss_start_mb']} -> {item['rss_end_mb']} MB, lag p99 {item['lag']['lag_p99_ms']} ms"
        )

    tools = results["tools"]
    assert tools["operations"] >= scale["tool_calls"]
    assert tools["details"]["stats_calls_by_tool"] == tools["details"]["calls_by_tool"]
    assert tools["details"]["outcomes"]["rate_limited"] > 0, "the rate limiter must be exercised"
    # megabyte tool outputs (issue 18.8): cut in the window, kept on disk; the RSS bound above holds with them
    assert tools["details"]["megabyte_outputs"] >= 10 and tools["details"]["dump_output_chars"] > 1_000_000
    assert tools["details"]["token_count_cache_chars"] <= 2_000_000


async def _time_short_term_overflow(directory: Path, count: int) -> float:
    """Seconds for the write that pushes ``count`` short-term memories (half with a long-term copy) down."""
    config = ContextManagerConfig(
        cache_path=directory,
        short_term_memory_size=count + 10,
        medium_term_memory_size=10 * count,
        long_term_memory_size=10 * count,
    )
    async with MemoryManager(config) as memory:
        items = [{"content": f"memory {i} text", "importance": 0.9 if i % 2 else 0.1} for i in range(count)]
        await memory.add_memories(items)
        config.short_term_memory_size = 10  # the next write overflows the tier by `count`
        started = time.perf_counter()
        await memory.add_memory("one more")
        return time.perf_counter() - started


def test_moving_memories_down_a_tier_is_not_quadratic(tmp_path: Path) -> None:
    """Found by the memory load: the short-term overflow rebuilt a set per victim (O(victims x copies)).

    8x the memories must cost well under 12x the time (it was ~21x: 0.09 s -> 1.8 s here).
    """

    def best(count: int) -> float:
        return min(
            asyncio.run(_time_short_term_overflow(tmp_path / f"{count}-{attempt}", count))
            for attempt in range(3)
        )

    small, large = best(1000), best(8000)
    assert large < 12 * small + 0.05, (small, large)
