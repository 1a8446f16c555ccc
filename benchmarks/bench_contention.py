"""Memory writes under contention (issue 15.6): add_memory latency with concurrent writers and readers.

    python benchmarks/bench_contention.py                      # 100k memories, 8 writers + 8 readers, 2 runs
    python benchmarks/bench_contention.py --preload 20000 --seconds 10 --runs 1     # a quick look
    python benchmarks/bench_contention.py --json contention.json

The store is preloaded once (``import_memories`` of a generated JSON Lines file: the short and medium
tiers full, the rest long-term) and copied afresh for every run and phase, so each starts from the same
files. Texts, tags and the reader mix are the memory workload of ``load_test.py`` (issue 8's figure: write
p99 4.4 s at 100k with 16 concurrent callers). Each run has two phases on one event loop:

1. **writers alone**: ``--writers`` tasks calling ``add_memory`` (random importance: about 30 % also
   write a long-term copy; the short-term tier overflows every hundred or so adds and moves memories
   down, the medium tier overflows into long-term) for ``--seconds / 3``: the baseline;
2. **contention**: the same writers plus ``--readers`` tasks (80 % ``search_memory`` of 1-4 words, 20 %
   ``search_by_tags``) for ``--seconds``.

Reported per phase: write p50/p95/p99/max, search p50/p99, operations per second, event-loop lag, and the
ratio of the contended write p99 to the baseline's. Checked after each phase: every acknowledged write is
found by id and ``total_memories`` is the preload plus the writes (nothing lost). The load average of the
machine is printed before and after (the figures are only comparable at similar load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if "CM_SRC" in os.environ:  # e.g. a snapshot of src/ to measure while the tree is being edited
    sys.path.insert(0, os.environ["CM_SRC"])
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_test import _WORDS, LagSampler, make_text  # noqa: E402 - the same workload as issue 8's figure

from context_manager import ContextManagerConfig, MemoryManager  # noqa: E402

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")

_TAGS = [f"topic{i}" for i in range(50)]
_TARGET_P99_MS = 250.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def config_for(storage: Path) -> ContextManagerConfig:
    return ContextManagerConfig(
        storage_path=storage, cache_path=storage.parent / "cache", enable_health_checks=False
    )


def write_preload_file(source: Path, count: int, rng: random.Random) -> None:
    """The preload as an export file: ``count`` long-term memories with the load test's texts and tags."""
    now = time.time()
    with open(source, "w", encoding="utf-8") as handle:
        for number in range(count):
            record = {
                "id": f"preload-{number}",
                "content": make_text(rng, rng.randint(6, 30), number),
                "importance": rng.random(),
                "tags": [rng.choice(_TAGS)],
                "tier": "long",
                "created_at": now - (count - number),
                "last_accessed": now - (count - number),
            }
            handle.write(json.dumps(record) + "\n")


async def preload(storage: Path, count: int) -> float:
    """Write ``count`` memories as an export file and import them; return the seconds it took."""
    rng = random.Random(11)
    source = storage.parent / "preload.jsonl"
    await asyncio.to_thread(write_preload_file, source, count, rng)
    started = time.perf_counter()
    async with MemoryManager(config_for(storage)) as memory:
        await memory.import_memories(source)
        # fill the volatile tiers the way traffic does, so overflow moves happen during the run
        for start in range(0, 3000, 500):
            await memory.add_memories(
                [
                    {"content": make_text(rng, rng.randint(6, 30), n), "importance": rng.random() * 0.6}
                    for n in range(start, start + 500)
                ]
            )
    source.unlink()
    return time.perf_counter() - started


async def phase(storage: Path, seconds: float, writers: int, readers: int, seed: int) -> dict[str, Any]:
    """One measured phase on a copy of the preloaded store; returns its figures."""
    write_ms: list[float] = []
    search_ms: list[float] = []
    acknowledged: list[str] = []
    errors: list[str] = []
    async with MemoryManager(config_for(storage)) as memory:
        before = (await memory.get_memory_stats())["total_memories"]
        for word in _WORDS[:8]:  # warm-up: lazily built structures exist before measuring
            await memory.search_memory(word, limit=10)
        deadline = time.perf_counter() + seconds

        async def writer(number: int) -> None:
            local = random.Random(seed * 1000 + number)
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                try:
                    added = await memory.add_memory(
                        make_text(local, local.randint(6, 30), number),
                        importance=local.random(),
                        tags=[local.choice(_TAGS)],
                    )
                except Exception as error:  # any error is a finding
                    errors.append(f"add_memory: {type(error).__name__}: {error}")
                    continue
                write_ms.append((time.perf_counter() - begin) * 1000)
                acknowledged.append(added.id)
                await asyncio.sleep(0)

        async def reader(number: int) -> None:
            local = random.Random(seed * 1000 + 500 + number)
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                try:
                    if local.random() < 0.8:
                        query = " ".join(local.choice(_WORDS) for _ in range(local.randint(1, 4)))
                        await memory.search_memory(query, limit=10)
                    else:
                        await memory.search_by_tags([local.choice(_TAGS)], limit=10)
                except Exception as error:
                    errors.append(f"search: {type(error).__name__}: {error}")
                    continue
                search_ms.append((time.perf_counter() - begin) * 1000)
                await asyncio.sleep(0)

        sampler = LagSampler()
        sampler.start()
        started = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(writers)), *(reader(i) for i in range(readers)))
        elapsed = time.perf_counter() - started
        lag = await sampler.stop()
        await memory.flush()
        missing = [memory_id for memory_id in acknowledged if await memory.get_memory(memory_id) is None]
        after = (await memory.get_memory_stats())["total_memories"]
    return {
        "seconds": round(elapsed, 2),
        "writes": len(write_ms),
        "searches": len(search_ms),
        "writes_per_s": round(len(write_ms) / elapsed, 1),
        "searches_per_s": round(len(search_ms) / elapsed, 1),
        "write_ms": {
            "p50": round(percentile(write_ms, 0.50), 2),
            "p95": round(percentile(write_ms, 0.95), 2),
            "p99": round(percentile(write_ms, 0.99), 2),
            "max": round(max(write_ms, default=0.0), 2),
        },
        "search_ms": {
            "p50": round(percentile(search_ms, 0.50), 2),
            "p99": round(percentile(search_ms, 0.99), 2),
        },
        "lag": lag,
        "lost": len(missing),
        "total_memories_ok": after == before + len(acknowledged),
        "errors": errors[:5],
    }


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "preload": arguments.preload,
        "writers": arguments.writers,
        "readers": arguments.readers,
        "seconds": arguments.seconds,
        "cpus": os.cpu_count(),
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="cm-contention-") as directory:
        root = Path(directory)
        master = root / "master" / "storage"
        master.parent.mkdir()
        results["preload_seconds"] = round(await preload(master, arguments.preload), 1)
        print(f"preloaded {arguments.preload} memories in {results['preload_seconds']} s", flush=True)
        for number in range(arguments.runs):
            figures: dict[str, Any] = {"load_average": [round(value, 2) for value in os.getloadavg()]}
            for name, seconds, readers in (
                ("writers_alone", arguments.seconds / 3, 0),
                ("contention", arguments.seconds, arguments.readers),
            ):
                storage = root / f"run{number}-{name}" / "storage"
                shutil.copytree(master, storage)
                figures[name] = await phase(storage, seconds, arguments.writers, readers, seed=number)
                shutil.rmtree(storage.parent)
                print(f"run {number + 1} {name}: {json.dumps(figures[name])}", flush=True)
            alone, contended = figures["writers_alone"]["write_ms"], figures["contention"]["write_ms"]
            figures["write_p99_ratio"] = round(contended["p99"] / alone["p99"], 2) if alone["p99"] else None
            figures["write_p99_target_met"] = contended["p99"] < _TARGET_P99_MS
            results["runs"].append(figures)
    results["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    return results


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"{results['preload']:,} memories, {results['writers']} writers + {results['readers']} readers, "
        f"{results['seconds']:g} s per contended phase, {results['cpus']} CPUs, load average "
        f"{results['load_average_before'][0]} before / {results['load_average_after'][0]} after",
        "",
        "| run | phase | writes/s | write p50 / p95 / p99 / max ms | searches/s | search p50 / p99 ms "
        "| lag p99 ms | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, figures in enumerate(results["runs"], start=1):
        for name in ("writers_alone", "contention"):
            phase_figures = figures[name]
            writes, searches = phase_figures["write_ms"], phase_figures["search_ms"]
            lines.append(
                f"| {number} (load {figures['load_average'][0]}) | {name.replace('_', ' ')} "
                f"| {phase_figures['writes_per_s']} "
                f"| {writes['p50']} / {writes['p95']} / {writes['p99']} / {writes['max']} "
                f"| {phase_figures['searches_per_s']} | {searches['p50']} / {searches['p99']} "
                f"| {phase_figures['lag']['lag_p99_ms']} | {phase_figures['lost']} |"
            )
        lines.append(
            f"| {number} | contended / alone write p99 | {figures['write_p99_ratio']}x | target p99 < "
            f"{_TARGET_P99_MS:g} ms: {'met' if figures['write_p99_target_met'] else 'missed'} | | | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preload", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the contended phase")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args(argv)
    results = asyncio.run(run(arguments))
    print(to_markdown(results))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=2))
    lost = sum(
        figures[name]["lost"] for figures in results["runs"] for name in ("writers_alone", "contention")
    )
    consistent = all(
        figures[name]["total_memories_ok"] and not figures[name]["errors"]
        for figures in results["runs"]
        for name in ("writers_alone", "contention")
    )
    return 0 if lost == 0 and consistent else 1


if __name__ == "__main__":
    raise SystemExit(main())
