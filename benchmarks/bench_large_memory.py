"""Megabyte texts added to long-term memory, against a raw SQLite FTS5 insert of the same text.

A tool output over 64 KB is stored whole in the long-term tier (``execute_tool_calls``). For each kind of
text (a log dump with many distinct tokens, JSON, prose with a few accented words) and each size, printed:
a raw FTS5 ``INSERT`` + ``COMMIT`` (``porter unicode61 remove_diacritics 2``, WAL, ``synchronous=NORMAL``,
a fresh file), ``MemoryManager.add_memory(text, tier="long")`` on a fresh store (a first add of 800 words
loads the embedder), and the longest wall-clock gap between two turns of a task that yields in a loop
while the add runs (how long the event loop was held). ``--embedder minilm`` needs the ``embeddings`` extra.

    python benchmarks/bench_large_memory.py [--sizes 0.1,1,5] [--embedder none|minilm] [--quick] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from context_manager import ContextManagerConfig
from context_manager.core.memory import MemoryManager


def log_text(size: int) -> str:
    rng = random.Random(1)
    lines: list[str] = []
    total = 0
    while total < size:
        line = (
            f"2026-12-06T06:{len(lines) % 60:02d}:00Z INFO worker-{rng.randint(0, 999)} "
            f"req={rng.getrandbits(64):016x} path=/api/v{rng.randint(1, 9)}/item/{rng.randint(0, 10**6)} "
            f"took={rng.random() * 1000:.3f}ms user=u{rng.randint(0, 10**5)}\n"
        )
        lines.append(line)
        total += len(line)
    return "".join(lines)[:size]


def json_text(size: int) -> str:
    rng = random.Random(2)
    items: list[dict[str, Any]] = []
    total = 0
    while total < size:
        item = {
            "id": rng.getrandbits(40),
            "name": f"item{rng.randint(0, 10**6)}",
            "tags": [f"t{rng.randint(0, 5000)}" for _ in range(3)],
            "score": rng.random(),
        }
        items.append(item)
        total += len(json.dumps(item)) + 2
    return json.dumps(items)[:size]


def prose_text(size: int) -> str:
    rng = random.Random(3)
    common = [
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "for",
        "on",
        "with",
        "as",
        "by",
        "at",
        "from",
        "that",
        "this",
        "it",
        "be",
        "are",
        "café",
    ]
    words = [
        f"w{rng.randint(0, 20000)}" if rng.random() < 0.3 else rng.choice(common) for _ in range(size // 4)
    ]
    return " ".join(words)[:size]


KINDS: dict[str, Callable[[int], str]] = {"log": log_text, "json": json_text, "prose": prose_text}


def raw_insert(directory: Path, text: str) -> float:
    db = sqlite3.connect(directory / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE VIRTUAL TABLE f USING fts5(content, tokenize='porter unicode61 remove_diacritics 2')")
    started = time.perf_counter()
    db.execute("BEGIN")
    db.execute("INSERT INTO f(content) VALUES (?)", (text,))
    db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


async def add_once(directory: Path, text: str, embedder: str) -> tuple[float, float]:
    config = ContextManagerConfig(storage_path=directory / "memory", embedder=embedder)  # type: ignore[arg-type]
    async with MemoryManager(config) as memory:
        await memory.add_memory("warm up the model " * 200, tier="long")  # loads it, runs 256 tokens
        longest = 0.0
        done = False

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0)
                now = time.perf_counter()
                longest, last = max(longest, now - last), now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.perf_counter()
        await memory.add_memory(text, tier="long")
        elapsed = time.perf_counter() - started
        done = True
        await ticking
    return elapsed, longest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="0.1,1,5", help="text sizes in MB, comma-separated")
    parser.add_argument("--kinds", default="log,json,prose", help="text kinds: " + ", ".join(KINDS))
    parser.add_argument("--embedder", default="none", choices=["none", "minilm"])
    parser.add_argument("--quick", action="store_true", help="0.1 and 1 MB only (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    options = parser.parse_args()
    if options.quick:
        options.sizes = "0.1,1"
    rows: list[dict[str, Any]] = []
    for kind in options.kinds.split(","):
        for size in (float(part) for part in options.sizes.split(",")):
            text = KINDS[kind](int(size * 1_000_000))
            with tempfile.TemporaryDirectory() as name:
                directory = Path(name)
                raw = raw_insert(directory, text)
                added, longest = asyncio.run(add_once(directory, text, options.embedder))
            row = {
                "kind": kind,
                "mb": size,
                "raw_fts5_s": raw,
                "add_memory_s": added,
                "longest_step_ms": longest * 1e3,
            }
            rows.append(row)
            print(
                f"{kind:5} {size:4.1f} MB: raw FTS5 insert {raw:6.2f} s, add_memory {added:6.2f} s "
                f"({added / raw:5.1f}x), longest loop step {longest * 1e3:5.0f} ms",
                flush=True,
            )
    if options.json is not None:
        options.json.write_text(json.dumps({"embedder": options.embedder, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
