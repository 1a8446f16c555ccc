"""Persisted-conversation benchmark: resuming and adding, side by side with raw reads and writes.

Run:  python benchmarks/bench_conversation.py [--backend sqlite|postgres|both] [--json PATH] [--quick]

Measured in one run, per backend:
1. resume a conversation of 200, 1,000 and 5,000 messages (a 128k-token window: nothing compressed at
   1,000; the 5,000-message one has compressed many times, so resuming replays compressions; snapshots
   at the default 1,000 changes): load the records, replay them and rebuild the window
   (``PersistedConversation.open``), p50/p95 of 20 resumes, vs the raw read of the same rows
   (``SELECT payload ... ORDER BY version`` + one JSON parse with the same decoder: ``orjson`` when
   installed); plus a whole ``initialize()`` of a manager resuming the 1,000-message conversation against
   one without a conversation id on the same storage (memory opening is most of it);
2. ``add_message`` p50/p99 of a persisted conversation (stored, committed, before it returns) vs the
   same manager without a conversation id, and vs a raw one-row ``INSERT`` + commit on the same backend
   (SQLite WAL ``synchronous=NORMAL``; PostgreSQL autocommit: the same durability).
Target (issue 12): resuming a 1,000-message conversation < 20 ms. The load average is printed with the
figures. PostgreSQL: ``--dsn`` (or ``CONTEXT_MANAGER_BENCH_POSTGRES_DSN``), else a private embedded server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from context_manager import ContextManagerConfig, EnhancedContextManager  # noqa: E402
from context_manager.core.context_window import ContextWindow  # noqa: E402
from context_manager.core.conversations.codec import loads_many  # noqa: E402
from context_manager.core.conversations.persistence import PersistedConversation  # noqa: E402

WORDS = [
    *("order", "parcel", "refund", "invoice", "address", "courier", "warehouse"),
    *("delay", "ticket", "window", "Lyon", "Oslo", "box", "gate"),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def text(i: int) -> str:
    return f"turn {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(18 + i % 12))


def config_for(backend: str, storage: Path, dsn: str | None, **options: Any) -> ContextManagerConfig:
    base: dict[str, Any] = {
        "storage_path": storage,
        "max_tokens": 128_000,
        "enable_health_checks": False,
        "enable_performance_monitor": False,
        # the conversation is measured, not the vector channel: "auto" would load MiniLM at initialize()
        "embedder": "none",
    }
    if backend == "postgres":
        base.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
    base.update(options)
    return ContextManagerConfig(**base)


async def write_conversation(config: ContextManagerConfig, conversation: str, messages: int) -> int:
    async with EnhancedContextManager(config, conversation_id=conversation) as manager:
        batch = 100
        for start in range(0, messages, batch):
            await manager.add_messages(
                [
                    {"role": "user" if i % 2 == 0 else "assistant", "content": text(i)}
                    for i in range(start, min(messages, start + batch))
                ]
            )
        await manager.flush()
        return int(manager.get_context_summary()["compression_count"])


async def time_resume(manager: EnhancedContextManager, conversation: str, rounds: int) -> list[float]:
    """Resume ``conversation`` into a fresh window ``rounds`` times (the manager's open store)."""
    store = await manager._open_conversation_store()
    timings = []
    for _ in range(rounds):
        window = ContextWindow(manager.config.max_tokens)
        started = time.perf_counter()
        persisted = PersistedConversation(store, conversation, window)
        await persisted.open()
        timings.append((time.perf_counter() - started) * 1000.0)
        window.set_journal(None)
    return timings


def raw_read_sqlite(path: Path, conversation: str, rounds: int) -> list[float]:
    connection = sqlite3.connect(path)
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        rows = connection.execute(
            "SELECT payload FROM conversation_records WHERE conversation_id = ? ORDER BY version",
            (conversation,),
        ).fetchall()
        loads_many([row[0] for row in rows])
        timings.append((time.perf_counter() - started) * 1000.0)
    connection.close()
    return timings


def raw_read_postgres(dsn: str, conversation: str, rounds: int) -> list[float]:
    import psycopg

    timings = []
    with psycopg.connect(dsn) as connection:
        for _ in range(rounds):
            started = time.perf_counter()
            rows = connection.execute(
                "SELECT payload::text FROM cm_conversation_records "
                "WHERE conversation_id = %s ORDER BY version",
                (conversation,),
            ).fetchall()
            loads_many([row[0] for row in rows])
            timings.append((time.perf_counter() - started) * 1000.0)
    return timings


async def time_adds(config: ContextManagerConfig, conversation: str | None, count: int) -> list[float]:
    timings = []
    async with EnhancedContextManager(config, conversation_id=conversation) as manager:
        for i in range(count):
            content = text(i)
            started = time.perf_counter()
            await manager.add_message("user", content)
            timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def raw_inserts_sqlite(path: Path, count: int) -> list[float]:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, payload TEXT)")
    timings = []
    for i in range(count):
        payload = json.dumps({"message": {"role": "user", "content": text(i)}})
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO raw (payload) VALUES (?)", (payload,))
        connection.execute("COMMIT")
        timings.append((time.perf_counter() - started) * 1000.0)
    connection.close()
    return timings


def raw_inserts_postgres(dsn: str, count: int) -> list[float]:
    import psycopg

    timings = []
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS cm_bench_raw (id bigserial PRIMARY KEY, payload jsonb)"
        )
        for i in range(count):
            payload = json.dumps({"message": {"role": "user", "content": text(i)}})
            started = time.perf_counter()
            connection.execute("INSERT INTO cm_bench_raw (payload) VALUES (%s)", (payload,))
            timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
    }


async def run_backend(backend: str, directory: Path, dsn: str | None, quick: bool) -> dict[str, Any]:
    sizes = [200, 1000] if quick else [200, 1000, 5000]
    rounds = 5 if quick else 20
    adds = 200 if quick else 1000
    storage = directory / backend
    config = config_for(backend, storage, dsn)
    result: dict[str, Any] = {"backend": backend, "resume": {}}
    for size in sizes:
        small = config_for(backend, storage, dsn, max_tokens=128_000 if size <= 1000 else 32_000)
        compressions = await write_conversation(small, f"c{size}", size)
        async with EnhancedContextManager(small) as manager:
            resume = await time_resume(manager, f"c{size}", rounds)
        if backend == "sqlite":
            raw = raw_read_sqlite(storage / "conversations.sqlite3", f"c{size}", rounds)
        else:
            assert dsn is not None
            raw = raw_read_postgres(dsn, f"c{size}", rounds)
        entry = {"compressions": compressions, "resume": summary(resume), "raw_read": summary(raw)}
        entry["ratio_p50"] = round(entry["resume"]["p50_ms"] / max(entry["raw_read"]["p50_ms"], 1e-6), 2)
        result["resume"][str(size)] = entry
        print(
            f"[{backend}] resume {size} messages ({compressions} compressions): "
            f"p50 {entry['resume']['p50_ms']:.2f} ms"
            f" p95 {entry['resume']['p95_ms']:.2f} ms | raw read p50 {entry['raw_read']['p50_ms']:.2f} ms"
            f" | ratio {entry['ratio_p50']}x",
            flush=True,
        )
    initialize = []
    for _ in range(max(3, rounds // 4)):
        started = time.perf_counter()
        manager = EnhancedContextManager(config, conversation_id="c1000")
        await manager.initialize()
        initialize.append((time.perf_counter() - started) * 1000.0)
        await manager.cleanup()
    result["initialize_1000"] = summary(initialize)
    plain_initialize = []
    for _ in range(max(3, rounds // 4)):
        started = time.perf_counter()
        manager = EnhancedContextManager(config)
        await manager.initialize()
        plain_initialize.append((time.perf_counter() - started) * 1000.0)
        await manager.cleanup()
    result["initialize_without_conversation"] = summary(plain_initialize)
    print(
        f"[{backend}] initialize() resuming 1000 messages: p50 {result['initialize_1000']['p50_ms']:.1f} ms"
        f" | without a conversation id: {result['initialize_without_conversation']['p50_ms']:.1f} ms"
    )
    persisted = await time_adds(config, "adds", adds)
    plain = await time_adds(config, None, adds)
    if backend == "sqlite":
        raw = raw_inserts_sqlite(directory / "raw.sqlite3", adds)
    else:
        assert dsn is not None
        raw = raw_inserts_postgres(dsn, adds)
    result["add"] = {
        "persisted": summary(persisted),
        "in_process": summary(plain),
        "raw_insert": summary(raw),
    }
    result["add"]["persisted_vs_raw_p50"] = round(
        result["add"]["persisted"]["p50_ms"] / max(result["add"]["raw_insert"]["p50_ms"], 1e-6), 2
    )
    add = result["add"]
    print(
        f"[{backend}] add_message p50/p99: persisted {add['persisted']['p50_ms']:.3f}/"
        f"{add['persisted']['p99_ms']:.3f} ms, in process {add['in_process']['p50_ms']:.3f}/"
        f"{add['in_process']['p99_ms']:.3f} ms, raw insert {add['raw_insert']['p50_ms']:.3f}/"
        f"{add['raw_insert']['p99_ms']:.3f} ms | persisted vs raw p50 {add['persisted_vs_raw_p50']}x",
        flush=True,
    )
    target = result["resume"]["1000"]["resume"]["p50_ms"]
    result["meets_resume_target"] = target < 20.0
    print(f"[{backend}] resume 1000 < 20 ms: {'met' if target < 20.0 else 'MISSED'} ({target:.2f} ms p50)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--dsn", help="an external PostgreSQL server (default: a private embedded one)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    try:
        import orjson  # noqa: F401

        decoder = "orjson"
    except ImportError:
        decoder = "json"
    figures: dict[str, Any] = {
        "quick": args.quick,
        "decoder": decoder,
        "load_before": os.getloadavg(),
        "backends": {},
    }
    print(f"JSON decoder: {decoder}")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="cm-bench-conversation-") as name:
        directory = Path(name)
        server = None
        for backend in backends:
            dsn = None
            if backend == "postgres":
                import postgres_bench

                dsn = args.dsn or os.environ.get("CONTEXT_MANAGER_BENCH_POSTGRES_DSN")
                if dsn is None:
                    (directory / "pg").mkdir()
                    dsn, server = postgres_bench.start_server(directory / "pg")
                _, dsn = postgres_bench.create_schema(dsn)
            figures["backends"][backend] = asyncio.run(run_backend(backend, directory, dsn, args.quick))
        if server is not None:
            import postgres_bench

            postgres_bench.stop_server(server, directory / "pg")
    figures["load_after"] = os.getloadavg()
    print(f"load average after: {os.getloadavg()}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
