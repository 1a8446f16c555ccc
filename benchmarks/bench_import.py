"""``import_memories`` of LoCoMo turns with the default embedder: its time, and how long a write waits.

    python benchmarks/bench_import.py [--memories 1000] [--rounds 2]
    python benchmarks/bench_import.py --baseline-src /tmp/base/src   # before / after, interleaved

An export of the first ``--memories`` turns of ``/work/shared/data/locomo_dev.json`` (or ``--data``), all
long-term, is imported into a new SQLite store with the MiniLM embedder (loaded and run once before). One
second into the import an ``add_memory`` is made: its wait is what any other write (the indexing of evicted
messages among them) waits for while an import runs. Each round runs in a fresh process with the tree under
test first on ``sys.path``; with ``--baseline-src`` the rounds alternate between another source tree (``git
archive`` of an older commit) and this one, so both meet the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src"

# Runs in a child process with the tree under test first on sys.path.
_CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
from context_manager import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

source, storage, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

async def main():
    config = ContextManagerConfig(storage_path=storage, long_term_memory_size=10 * count, embedder="minilm")
    async with MemoryManager(config) as manager:
        await manager.add_memory("loads and runs the model once")
        started = time.perf_counter()
        importing = asyncio.create_task(manager.import_memories(source))
        await asyncio.sleep(1.0)
        before = time.perf_counter()
        await manager.add_memory("written during the import")
        waited = time.perf_counter() - before
        await importing
        print(json.dumps({"import_s": time.perf_counter() - started, "add_wait_s": waited}))

asyncio.run(main())
"""


def write_export(data: Path, path: Path, count: int) -> int:
    """Write the first ``count`` LoCoMo turns as an export; return how many there were."""
    turns: list[str] = []
    for conversation in json.loads(data.read_text(encoding="utf-8")):
        for value in conversation["conversation"].values():
            if isinstance(value, list):
                turns.extend(turn["text"] for turn in value if isinstance(turn, dict) and "text" in turn)
    with path.open("w", encoding="utf-8") as handle:
        for number, text in enumerate(turns[:count]):
            record = {
                "id": f"turn-{number:05d}",
                "content": text,
                "tier": "long",
                "tiers": ["long"],
                "importance": 0.4,
                "created_at": 1_700_000_000.0 + number,
                "last_accessed": 1_700_000_000.0 + number,
                "metadata": {},
            }
            handle.write(json.dumps(record) + "\n")
    return min(count, len(turns))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/locomo_dev.json"))
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    trees = [("this tree", SOURCE)]
    if args.baseline_src is not None:
        trees.insert(0, ("baseline", args.baseline_src.resolve()))
    with tempfile.TemporaryDirectory(prefix="bench-import-") as scratch:
        source = Path(scratch) / "export.jsonl"
        count = write_export(args.data, source, args.memories)
        for round_number in range(args.rounds):
            for label, tree in trees:
                storage = Path(scratch) / f"store-{round_number}-{label.replace(' ', '-')}"
                env = dict(os.environ, PYTHONPATH=str(tree))
                output = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(source), str(storage), str(count)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                figures = json.loads(output.strip().splitlines()[-1])
                print(
                    f"round {round_number + 1} {label}: {count} memories imported in "
                    f"{figures['import_s']:.1f} s; add_memory 1 s in waited {figures['add_wait_s']:.2f} s"
                )


if __name__ == "__main__":
    main()
