"""``bench_retrieval.py --locomo PATH``: evidence recall of memory search on real long conversations.

Each conversation gets a fresh store per configuration; its turns are added the way an application would
(one ``add_memories`` call per session, each turn with ``session_id``, ``turn_index``, ``speaker`` and
``session_date`` metadata, the clock at the session's date), then every answerable question is asked as typed
(``search_memory(question, limit=10)``), the clock the day after the last session. Reported per question
category and overall: Recall@1/5/10, MRR, nDCG@10, search p50/p95 (wall time), index time per turn; side by
side with a raw SQLite FTS5 BM25 query over the same texts in the same run, and an ablation table (each
ranking feature off, one at a time).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locomo import CATEGORY_NAMES, Conversation, QuestionScore, load_locomo, score_ranking

LIMIT = 10
_WORD = re.compile(r"[^\W_]+")


@dataclass(slots=True)
class LocomoResult:
    """Scores and timings of one configuration over every conversation."""

    name: str
    scores: list[tuple[int, QuestionScore]] = field(default_factory=list)  # (category, score)
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # the process's CPU time per search (library runs)
    index_seconds: float = 0.0
    turns: int = 0
    notes: str = ""

    def metric(self, name: str, category: int | None = None) -> float:
        chosen = [score for cat, score in self.scores if category is None or cat == category]
        if not chosen:
            return 0.0
        if name.startswith("R@"):
            k = int(name[2:])
            return statistics.fmean(score.recall[k] for score in chosen)
        if name == "MRR":
            return statistics.fmean(score.reciprocal_rank for score in chosen)
        if name == "nDCG@10":
            return statistics.fmean(score.ndcg10 for score in chosen)
        raise KeyError(name)

    def percentile(self, fraction: float, *, cpu: bool = False) -> float:
        ordered = sorted(self.cpu_ms if cpu else self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]

    def summary(self) -> dict[str, Any]:
        metrics = ("R@1", "R@5", "R@10", "MRR", "nDCG@10")
        categories = sorted({category for category, _ in self.scores})
        return {
            "name": self.name,
            **{metric: round(self.metric(metric), 4) for metric in metrics},
            "questions": len(self.scores),
            "search_p50_ms": round(self.percentile(0.5), 3),
            "search_p95_ms": round(self.percentile(0.95), 3),
            "search_cpu_p50_ms": round(self.percentile(0.5, cpu=True), 3) if self.cpu_ms else None,
            "search_cpu_p95_ms": round(self.percentile(0.95, cpu=True), 3) if self.cpu_ms else None,
            "index_seconds": round(self.index_seconds, 3),
            "index_ms_per_turn": round(1000 * self.index_seconds / self.turns, 3) if self.turns else None,
            "per_category": {
                CATEGORY_NAMES.get(category, str(category)): {
                    "questions": sum(1 for cat, _ in self.scores if cat == category),
                    **{metric: round(self.metric(metric, category), 4) for metric in metrics},
                }
                for category in categories
            },
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- raw FTS5 baseline


def run_raw(conversation: Conversation, result: LocomoResult, *, tokenizer: str) -> None:
    """Plain FTS5 BM25 over the turns' text: the question's words quoted and OR-ed, ``ORDER BY rank``."""
    started = time.perf_counter()
    connection = sqlite3.connect(":memory:")
    connection.execute(f"CREATE VIRTUAL TABLE turns USING fts5(content, tokenize='{tokenizer}')")
    keys = [turn.key for turn in conversation.turns]
    connection.executemany(
        "INSERT INTO turns(rowid, content) VALUES (?, ?)",
        [(position, turn.text) for position, turn in enumerate(conversation.turns)],
    )
    connection.commit()
    result.index_seconds += time.perf_counter() - started
    result.turns += len(conversation.turns)
    try:
        for question in conversation.questions:
            started = time.perf_counter()
            tokens = list(dict.fromkeys(match.group(0) for match in _WORD.finditer(question.text.lower())))
            expression = " OR ".join('"' + token.replace('"', '""') + '"' for token in tokens)
            rows = connection.execute(
                "SELECT rowid FROM turns WHERE turns MATCH ? ORDER BY rank LIMIT ?", (expression, LIMIT)
            ).fetchall()
            ranked = [keys[rowid] for (rowid,) in rows]
            result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            result.scores.append((question.category, score_ranking(ranked, question.evidence)))
    finally:
        connection.close()


# --------------------------------------------------------------------------- the library


@dataclass(slots=True)
class LibrarySetup:
    """One configuration of the library's memory search."""

    name: str
    ranking_changes: dict[str, Any] = field(default_factory=dict)
    embedder: str | None = None
    notes: str = ""


class FixedClock:
    """A clock pinned to a moment, moved by hand (turns are added at their session's date)."""

    def __init__(self, moment: float) -> None:
        self.moment = moment

    def __call__(self) -> float:
        return self.moment


def _timestamp(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp()


class CachingEmbedder:
    """Wraps an embedder: the vectors of stored turns (batches) are computed once and reused by later
    configurations; every query (a batch of one) is embedded live, so search latency stays real. The first
    configuration that embeds a conversation pays (and reports) the real index cost."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dimension = inner.dimension
        self.name = getattr(inner, "name", type(inner).__name__)
        self.min_similarity = getattr(inner, "min_similarity", None)  # the vector channel's floor
        self._cache: dict[str, Any] = {}

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        if len(texts) == 1 and texts[0] not in self._cache:
            return self.inner.embed(texts)
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing), strict=True):
                self._cache[text] = vector
        return np.stack([self._cache[text] for text in texts]).astype(np.float32)


_EMBEDDERS: dict[str, CachingEmbedder] = {}


def get_embedder(kind: str) -> CachingEmbedder:
    """A cached embedder by name (resolved the way ``ContextManagerConfig.embedder`` resolves it)."""
    if kind not in _EMBEDDERS:
        from context_manager.core.memory.embeddings import create_embedder

        embedder = create_embedder(kind)
        if embedder is None:
            raise SystemExit(f"embedder {kind!r} is not available here")
        embedder.embed(["warm up"])  # load the model outside the timed part
        _EMBEDDERS[kind] = CachingEmbedder(embedder)
    return _EMBEDDERS[kind]


async def run_library(
    conversation: Conversation,
    setup: LibrarySetup,
    result: LocomoResult,
    workdir: Path,
    backend_options: Callable[[], dict[str, Any]],
    *,
    on_candidates: Callable[[Any, Any, Sequence[str]], None] | None = None,
) -> None:
    """Index one conversation in a fresh store and ask its questions; add the figures to ``result``."""
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.memory.ranking import RankingWeights

    storage = Path(tempfile.mkdtemp(prefix="locomo-", dir=workdir))
    # the embedder is explicit: "none" for lexical search (the default "auto" would pick MiniLM if installed)
    config = ContextManagerConfig(storage_path=storage, embedder="none", **backend_options())
    clock = FixedClock(_timestamp(conversation.turns[0].session_date))
    ranking = RankingWeights.learned(embedder=setup.embedder is not None, **setup.ranking_changes)
    embedder = get_embedder(setup.embedder) if setup.embedder else None
    manager = MemoryManager(config, embedder=embedder, ranking=ranking, clock=clock)
    await manager.initialize()
    key_of: dict[str, str] = {}
    try:
        sessions: dict[int, list[Any]] = defaultdict(list)
        for turn in conversation.turns:
            sessions[turn.session].append(turn)
        started = time.perf_counter()
        for turns in sessions.values():
            clock.moment = _timestamp(turns[0].session_date)
            memories = await manager.add_memories(
                [{"content": turn.text, "metadata": turn.metadata(conversation.sample_id)} for turn in turns]
            )
            key_of.update((memory.id, turn.key) for memory, turn in zip(memories, turns, strict=True))
        result.index_seconds += time.perf_counter() - started
        result.turns += len(conversation.turns)
        clock.moment = _timestamp(conversation.last_date) + 86400.0
        for question in conversation.questions:
            if on_candidates is not None:
                on_candidates(manager, question, key_of)
            started, started_cpu = time.perf_counter(), time.process_time()
            found = await manager.search_memory(question.text, limit=LIMIT)
            result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            result.cpu_ms.append((time.process_time() - started_cpu) * 1000.0)
            ranked = [key_of.get(memory.id) for memory in found]
            result.scores.append((question.category, score_ranking(ranked, question.evidence)))
    finally:
        await manager.close()


def ablation_setups(base: dict[str, Any], embedder: str | None, label: str) -> list[LibrarySetup]:
    """The default ranking with each feature off, one at a time."""
    from context_manager.core.memory.ranking import ABLATIONS

    return [
        LibrarySetup(f"  {label} - {feature}", {**base, **changes}, embedder)
        for feature, changes in ABLATIONS.items()
        if embedder is not None or not feature.startswith("vector")
    ]


def library_setups(embedders: Sequence[str], *, ablations: bool) -> list[LibrarySetup]:
    setups = [LibrarySetup("library, lexical (embedder=none)", {})]
    if ablations:
        setups += ablation_setups({}, None, "lexical")
    for kind in embedders:
        setups.append(LibrarySetup(f"library, embedder={kind}", {}, kind))
        if ablations:
            setups += ablation_setups({}, kind, kind)
    return setups


# --------------------------------------------------------------------------- report

METRICS = ("R@1", "R@5", "R@10", "MRR", "nDCG@10")


def format_tables(results: Sequence[LocomoResult]) -> str:
    lines = []
    header = (
        f"{'configuration':<46} " + " ".join(f"{m:>7}" for m in METRICS) + f" {'p50 ms':>7} {'p95 ms':>7}"
        f" {'idx ms/turn':>11}"
    )
    lines += [header, "-" * len(header)]
    for result in results:
        per_turn = 1000 * result.index_seconds / result.turns if result.turns else 0.0
        lines.append(
            f"{result.name:<46} "
            + " ".join(f"{result.metric(m):>7.3f}" for m in METRICS)
            + f" {result.percentile(0.5):>7.2f} {result.percentile(0.95):>7.2f} {per_turn:>11.2f}"
        )
    categories = sorted({category for result in results for category, _ in result.scores})
    lines += ["", "R@5 / MRR by question category (questions)"]
    counts = {c: sum(1 for cat, _ in results[0].scores if cat == c) for c in categories}
    lines.append(
        f"{'configuration':<46} "
        + " ".join(f"{CATEGORY_NAMES.get(c, str(c)) + f' ({counts[c]})':>20}" for c in categories)
    )
    for result in results:
        cells = [f"{result.metric('R@5', c):>10.3f} / {result.metric('MRR', c):.3f}" for c in categories]
        lines.append(f"{result.name:<46} " + " ".join(f"{cell:>20}" for cell in cells))
    return "\n".join(lines)


def markdown_tables(results: Sequence[LocomoResult]) -> str:
    categories = sorted({category for result in results for category, _ in result.scores})
    lines = [
        "| configuration | " + " | ".join(METRICS) + " | p50 ms | p95 ms | index ms/turn |",
        "|---" * (len(METRICS) + 4) + "|",
    ]
    for result in results:
        per_turn = 1000 * result.index_seconds / result.turns if result.turns else 0.0
        lines.append(
            f"| {result.name.strip()} | "
            + " | ".join(f"{result.metric(m):.3f}" for m in METRICS)
            + f" | {result.percentile(0.5):.2f} | {result.percentile(0.95):.2f} | {per_turn:.2f} |"
        )
    lines += [
        "",
        "| configuration (R@5) | " + " | ".join(CATEGORY_NAMES.get(c, str(c)) for c in categories) + " |",
        "|---" * (len(categories) + 1) + "|",
    ]
    for result in results:
        lines.append(
            f"| {result.name.strip()} | "
            + " | ".join(f"{result.metric('R@5', c):.3f}" for c in categories)
            + " |"
        )
    return "\n".join(lines) + "\n"


async def run_locomo(
    args: Any, backend_options: Callable[[], dict[str, Any]], backend_name: str
) -> dict[str, Any]:
    """Run every configuration over the conversations of ``args.locomo``; print and return the figures."""
    conversations = load_locomo(args.locomo, limit=args.conversations)
    questions = sum(len(c.questions) for c in conversations)
    turns = sum(len(c.turns) for c in conversations)
    load = os.getloadavg()
    print(
        f"LoCoMo file {args.locomo}: {len(conversations)} conversations, {turns} turns, "
        f"{questions} questions (categories 1-4); top {LIMIT}; memory backend {backend_name}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    embedders = [kind for kind in (args.embedder or []) if kind != "none"]
    results = [LocomoResult("raw FTS5 BM25 (unicode61), as typed"), LocomoResult("raw FTS5 BM25 + porter")]
    for conversation in conversations:
        run_raw(conversation, results[0], tokenizer="unicode61")
        run_raw(conversation, results[1], tokenizer="porter unicode61")
    if not args.raw_only:
        setups = library_setups(embedders, ablations=not args.no_ablations)
        with tempfile.TemporaryDirectory(prefix="bench-locomo-") as workdir:
            for setup in setups:
                result = LocomoResult(setup.name, notes=setup.notes)
                for conversation in conversations:
                    await run_library(conversation, setup, result, Path(workdir), backend_options)
                results.append(result)
                print(
                    f"  ran {setup.name.strip()}: R@5 {result.metric('R@5'):.3f} "
                    f"MRR {result.metric('MRR'):.3f} p95 {result.percentile(0.95):.2f} ms "
                    f"(CPU time p50 {result.percentile(0.5, cpu=True):.2f} ms, "
                    f"p95 {result.percentile(0.95, cpu=True):.2f} ms)",
                    flush=True,
                )
    print()
    print(format_tables(results))
    after = os.getloadavg()
    print(f"\nload average at the end {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    if args.markdown:
        await asyncio.to_thread(Path(args.markdown).write_text, markdown_tables(results), "utf-8")
        print(f"wrote {args.markdown}")
    return {
        "dataset": {
            "path": str(args.locomo),
            "conversations": len(conversations),
            "turns": turns,
            "questions": questions,
        },
        "limit": LIMIT,
        "backend": backend_name,
        "load_average": {"start": list(load), "end": list(after)},
        "results": [result.summary() for result in results],
    }
