"""The open-resume-close cycle of a persisted conversation, stage by stage (a web worker's request).

    python benchmarks/bench_resume_cycle.py [--messages 1000] [--rounds 30] [--json results.json] [--quick]
    python benchmarks/bench_resume_cycle.py --baseline-src /tmp/base/src   # before / after, interleaved

A conversation of ``--messages`` messages is written once (a 128k window: nothing compressed), then each
round resumes it as a new worker does and times every stage with the wall clock: ``ContextManagerConfig()``,
``EnhancedContextManager(config, conversation_id=...)``, ``initialize()``, ``get_context()``, one
``add_message`` and ``cleanup()``. Two configurations: the defaults (``embedder="auto"``, health checks and
the performance monitor on) and the one ``bench_peers_conversation.py`` uses (``embedder="none"``, health
checks and monitor off).

With ``--baseline-src`` the same rounds also run on another source tree (say ``git archive`` of an older
commit), each round in a fresh process, alternating between the two trees, so both meet the same machine
load; the store is the same files. Figures are p50 and p90 per stage, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src"
STAGES = ["config", "construct", "initialize", "get_context", "add_message", "cleanup", "total"]
CONFIGS = {
    "defaults": {},
    "peers-bench": {"embedder": "none", "enable_health_checks": False, "enable_performance_monitor": False},
}

# Runs in a child process with the tree under test first on sys.path.
_CHILD = r"""
import asyncio, json, sys, time
from context_manager import ContextManagerConfig, EnhancedContextManager

storage, options, cycles, build = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
clock = time.perf_counter


async def write(count):
    config = ContextManagerConfig(max_tokens=128_000, storage_path=storage, **options)
    async with EnhancedContextManager(config, conversation_id="resume-bench") as manager:
        await manager.add_messages([
            {"role": "user" if i % 2 == 0 else "assistant",
             "content": f"Message {i} about the weather in Paris and the budget review, item {i * 7}."}
            for i in range(count)
        ])


async def cycle():
    times = {}
    started = clock()
    config = ContextManagerConfig(max_tokens=128_000, storage_path=storage, **options)
    times["config"] = clock()
    manager = EnhancedContextManager(config, conversation_id="resume-bench")
    times["construct"] = clock()
    await manager.initialize()
    times["initialize"] = clock()
    manager.get_context()
    times["get_context"] = clock()
    await manager.add_message("user", "one more question")
    times["add_message"] = clock()
    await manager.cleanup()
    times["cleanup"] = clock()
    result, previous = {}, started
    for stage, at in times.items():
        result[stage] = (at - previous) * 1000.0
        previous = at
    result["total"] = (previous - started) * 1000.0
    return result


async def main():
    if build:
        await write(build)
        return
    await cycle()  # warm-up: imports, first-use caches
    print(json.dumps([await cycle() for _ in range(cycles)]))


asyncio.run(main())
"""


def run_child(
    source: Path, storage: Path, options: dict[str, Any], cycles: int, build: int = 0
) -> list[dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(source))
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(storage), json.dumps(options), str(cycles), str(build)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"child on {source} failed:\n{completed.stderr}")
    return [] if build else json.loads(completed.stdout)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages in the conversation")
    parser.add_argument("--rounds", type=int, default=30, help="resume cycles timed per tree and config")
    parser.add_argument("--baseline-src", type=Path, help="another tree's src/ to compare, interleaved")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and messages, for a smoke run")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    messages = 200 if args.quick else args.messages
    trees = {"this tree": SOURCE}
    if args.baseline_src is not None:
        trees = {"baseline": args.baseline_src.resolve(), "this tree": SOURCE}
    per_process = 5  # cycles per child process; processes alternate between the trees
    figures: dict[str, Any] = {"messages": messages, "rounds": rounds, "quick": args.quick}
    for name, options in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix="bench-resume-") as directory:
            storage = Path(directory)
            run_child(SOURCE, storage, options, 0, build=messages)
            samples: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
            while min(len(s) for s in samples.values()) < rounds:
                for tree, source in trees.items():
                    samples[tree].extend(run_child(source, storage, options, per_process))
            print(f"\n{name} ({messages} messages, {rounds}+ cycles per tree; ms, p50 / p90)")
            print(f"{'stage':12s}" + "".join(f"{tree:>22s}" for tree in trees))
            for stage in STAGES:
                cells = []
                for tree in trees:
                    values = [sample[stage] for sample in samples[tree]]
                    p50, p90 = statistics.median(values), percentile(values, 0.9)
                    figures[f"{name} {tree} {stage} p50 ms"] = round(p50, 2)
                    figures[f"{name} {tree} {stage} p90 ms"] = round(p90, 2)
                    cells.append(f"{p50:9.2f} / {p90:8.2f}")
                print(f"{stage:12s}" + "".join(f"{cell:>22s}" for cell in cells))
            if "baseline" in trees:
                before = statistics.median(s["total"] for s in samples["baseline"])
                after = statistics.median(s["total"] for s in samples["this tree"])
                figures[f"{name} total speedup vs baseline"] = round(before / after, 2)
                print(f"total p50: {before:.1f} -> {after:.1f} ms ({before / after:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
