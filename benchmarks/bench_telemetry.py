"""Cost of the OpenTelemetry instrumentation, against the same calls with it switched off, in one run.

    python benchmarks/bench_telemetry.py [--iterations 5000] [--quick] [--json results.json]

Three managers do the same work: ``enable_opentelemetry=False`` (the baseline), enabled with no SDK
configured (what most users run: the library sees no provider at ``initialize()`` and records nothing), and
enabled with the SDK (a ``BatchSpanProcessor`` into an in-memory exporter, a metric reader collected at the
end). Per call, timed with ``perf_counter_ns``: ``add_message`` of a short text into a window that never
compresses, ``search_memory`` over 500 memories, ``execute_tool`` of a trivial typed tool. The three
configurations alternate in rounds so drift on a shared machine hits them alike. The figures are ratios
of p50 against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from context_manager import ContextManagerConfig, EnhancedContextManager  # noqa: E402
from context_manager.core.telemetry import configure_opentelemetry  # noqa: E402
from context_manager.core.tool_system import tool  # noqa: E402

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")

CONFIGURATIONS = ("off", "no_sdk", "sdk")


@tool(name="add")
async def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


async def open_manager(name: str, directory: Path) -> EnhancedContextManager:
    if name == "sdk":
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
        configure_opentelemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        )
    else:
        configure_opentelemetry()
    config = ContextManagerConfig(
        max_tokens=10_000_000,
        cache_path=directory / name,
        enable_health_checks=False,
        enable_opentelemetry=name != "off",
    )
    manager = EnhancedContextManager(config)
    await manager.initialize()
    configure_opentelemetry()
    manager.tool_manager.register_tool(add)
    await manager.memory_manager.add_memories(
        [{"content": f"note {n}: the harbour lanterns were lit at {n % 24}:00"} for n in range(500)]
    )
    return manager


async def timed(calls: int, step: Callable[[int], Awaitable[Any]]) -> list[int]:
    samples = []
    for number in range(calls):
        started = time.perf_counter_ns()
        await step(number)
        samples.append(time.perf_counter_ns() - started)
    return samples


async def run(iterations: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        managers = {name: await open_manager(name, Path(directory)) for name in CONFIGURATIONS}
        operations: dict[str, Callable[[EnhancedContextManager], Callable[[int], Awaitable[Any]]]] = {
            "add_message": lambda m: lambda n: m.add_message("user", f"message {n} about the harbour"),
            "search_memory": lambda m: lambda n: m.search_memory(f"lanterns {n % 24}:00", limit=5),
            "execute_tool": lambda m: lambda n: m.execute_tool("add", a=n, b=1),
        }
        samples: dict[str, dict[str, list[int]]] = {
            op: {name: [] for name in CONFIGURATIONS} for op in operations
        }
        per_round = max(iterations // rounds, 1)
        for operation, make in operations.items():
            calls = per_round if operation != "search_memory" else max(per_round // 10, 1)
            for _ in range(rounds):
                for name in CONFIGURATIONS:
                    gc.collect()
                    samples[operation][name] += await timed(calls, make(managers[name]))
        for manager in managers.values():
            await manager.cleanup()
    figures: dict[str, Any] = {}
    for operation, by_name in samples.items():
        p50 = {name: statistics.median(values) / 1000.0 for name, values in by_name.items()}
        figures[operation] = {
            **{f"p50_us_{name}": round(value, 2) for name, value in p50.items()},
            "no_sdk_vs_off": round(p50["no_sdk"] / p50["off"], 3),
            "sdk_vs_off": round(p50["sdk"] / p50["off"], 3),
            "sdk_overhead_us": round(p50["sdk"] - p50["off"], 2),
            "calls_per_configuration": len(by_name["off"]),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000, help="calls per configuration and operation")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--quick", action="store_true", help="a smoke run (500 calls)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    iterations = 500 if args.quick else args.iterations
    figures = asyncio.run(run(iterations, args.rounds))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"benchmark": "telemetry", "load_average_1m": load, **figures}
    print(f"OpenTelemetry cost per call (p50, load average {load:.2f})" if load is not None else "")
    for operation, values in figures.items():
        print(
            f"  {operation:14} off {values['p50_us_off']:8.1f} us   "
            f"no SDK {values['p50_us_no_sdk']:8.1f} us ({values['no_sdk_vs_off']:.2f}x)   "
            f"SDK {values['p50_us_sdk']:8.1f} us ({values['sdk_vs_off']:.2f}x)"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
