"""How long ``cleanup()`` takes to store ~1,400 queued evicted messages with the MiniLM embedder.

    python benchmarks/bench_eviction_drain.py [--rounds 3] [--messages 1650] [--json results.json]
    python benchmarks/bench_eviction_drain.py --baseline-src /tmp/base/src   # before / after, interleaved

Each round runs in a fresh process on a fresh store: the packaged ``all-MiniLM-L6-v2`` (what
``embedder="auto"`` picks when the ``embeddings`` extra is installed; here a subclass that counts the calls
to ``embed``) is loaded first, ``add_messages`` puts ``--messages`` chat turns into an 8k window (one
compression evicts most of them into the window's queue), and ``cleanup()`` is timed (wall clock, the
process's CPU time, and the wall time spent in ``embed`` calls): it waits until the eviction writer has
stored every queued message. Meanwhile a ticker task wakes every
millisecond and measures the loop thread's CPU time and the wall time since its last turn: the longest
interval bounds how long the drain held the loop (CPU time is not inflated by other processes on a shared
machine; it may add up several short steps run in one interval, so it is an upper bound). The ticker
sleeps rather than spins: a task spinning on ``sleep(0)`` would contend for the GIL with the embedding
thread and slow the drain it measures.

With ``--baseline-src`` the rounds alternate between another source tree (``git archive`` of an older
commit) and this one, so both meet the same machine load; the stored memories of the first round of each
tree are compared (same contents; the largest difference between their vectors is printed).
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

# Runs in a child process with the tree under test first on sys.path.
_CHILD = r"""
import asyncio, json, sys, time
import numpy as np
from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.memory.embeddings import SentenceTransformerEmbedder
from context_manager.core.memory.models import MemoryTier

storage, count, dump = sys.argv[1], int(sys.argv[2]), sys.argv[3]
WORDS = "the deployment pipeline failed because cache key changed after upgrade invoice 4471 Dana".split()


class CountingEmbedder(SentenceTransformerEmbedder):
    calls = []
    seconds = 0.0

    def embed(self, texts):
        self.calls.append(len(texts))
        started = time.perf_counter()
        try:
            return super().embed(texts)
        finally:
            CountingEmbedder.seconds += time.perf_counter() - started


def text(number):  # 4 to 30 words: chat turns
    length = 4 + number * 13 % 27
    return f"{number}: " + " ".join(WORDS[(number * 7 + i) % len(WORDS)] for i in range(length))


async def main():
    embedder = CountingEmbedder()
    embedder.embed(["load the model before the clock starts"])
    embedder.calls.clear()
    CountingEmbedder.seconds = 0.0
    config = ContextManagerConfig(max_tokens=8_000, storage_path=storage, medium_term_memory_size=20_000)
    manager = EnhancedContextManager(config, embedder=embedder)
    await manager.initialize()
    history = [{"role": "user" if i % 2 else "assistant", "content": text(i)} for i in range(count)]
    await manager.add_messages(history)
    queued = len(manager.context_window.evicted_messages)
    steps = []

    async def ticker():
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)  # not sleep(0): a spinning task would take the GIL from the embedder
            steps.append((time.thread_time() - cpu, time.perf_counter() - wall))

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started, cpu = time.perf_counter(), time.process_time()
    await manager.cleanup()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    embed_seconds = CountingEmbedder.seconds
    ticking.cancel()
    calls = list(embedder.calls)
    # what was stored: every medium-term memory's content and vector
    check = EnhancedContextManager(config, embedder=embedder)
    await check.initialize()
    backend = check.memory_manager._backend
    memories = sorted(await backend.members(MemoryTier.MEDIUM), key=lambda m: m.content)
    vectors = await backend.vectors_of([m.id for m in memories])
    await check.cleanup()
    np.savez(dump, contents=np.array([m.content for m in memories]),
             vectors=np.stack([vectors[m.id] for m in memories]))
    print(json.dumps({
        "queued": queued,
        "stored": len(memories),
        "cleanup_s": elapsed,
        "cleanup_cpu_s": cpu,
        "embed_s": embed_seconds,
        "max_step_cpu_ms": max(s[0] for s in steps) * 1000.0,
        "max_step_wall_ms": max(s[1] for s in steps) * 1000.0,
        "steps": len(steps),
        "embed_calls": len(calls),
        "texts_per_call": max(calls) if calls else 0,
    }))


asyncio.run(main())
"""


def run_round(tree: Path, count: int, dump: Path) -> dict[str, Any]:
    """One fresh process on a fresh store; returns the child's figures."""
    with tempfile.TemporaryDirectory(prefix="bench-eviction-") as storage:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHON_CONTEXT_MANAGER_EMBEDDER": "auto"}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, storage, str(count), str(dump)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run the rounds and print the figures (and optionally write them as JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1650, help="messages added (most are evicted)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tree")
    parser.add_argument("--baseline-src", type=Path, help="another tree's src/ to compare, interleaved")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    import numpy as np

    trees = {"this tree": SOURCE}
    if args.baseline_src is not None:
        trees = {"baseline": args.baseline_src.resolve(), "this tree": SOURCE}
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-eviction-dumps-") as dumps:
        for round_number in range(args.rounds):
            for name, tree in trees.items():
                dump = Path(dumps) / f"{name.replace(' ', '-')}-{round_number}.npz"
                figures = run_round(tree, args.messages, dump)
                samples[name].append(figures)
                print(
                    f"round {round_number + 1} {name:>9}: {figures['queued']} queued, "
                    f"{figures['stored']} stored; "
                    f"cleanup {figures['cleanup_s']:.2f} s (process CPU {figures['cleanup_cpu_s']:.2f} s, "
                    f"in embed {figures['embed_s']:.2f} s); longest loop step "
                    f"{figures['max_step_cpu_ms']:.1f} ms CPU / {figures['max_step_wall_ms']:.1f} ms wall "
                    f"({figures['steps']} steps); {figures['embed_calls']} embed calls, "
                    f"up to {figures['texts_per_call']} texts each",
                    flush=True,
                )
        if "baseline" in trees:
            before = np.load(Path(dumps) / "baseline-0.npz")
            after = np.load(Path(dumps) / "this-tree-0.npz")
            same = before["contents"].tolist() == after["contents"].tolist()
            difference = float(np.abs(before["vectors"] - after["vectors"]).max()) if same else float("nan")
            print(f"stored memories identical: {same}; largest vector difference: {difference:.2e}")
    summary: dict[str, Any] = {}
    for name, results in samples.items():
        summary[name] = {
            key: statistics.median(r[key] for r in results)
            for key in (
                "cleanup_s",
                "cleanup_cpu_s",
                "embed_s",
                "max_step_cpu_ms",
                "max_step_wall_ms",
                "embed_calls",
            )
        }
        print(f"{name:>9} median: " + ", ".join(f"{k} {v:.2f}" for k, v in summary[name].items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2))


if __name__ == "__main__":
    main()
