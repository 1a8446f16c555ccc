"""Learn the memory ranking's fusion weights on real conversations; write ``ranking_weights.json``.

For every question of every conversation (a file in the LoCoMo format, see ``benchmarks/locomo.py``) the
library gathers its candidates exactly as ``search_memory`` does (fresh store per conversation, turns added
per session with their conversation metadata, the question as typed) and records each candidate's features
(:data:`context_manager.core.memory.ranking.FEATURES`) and whether it is an evidence turn. A linear model over
the features is then fitted by a listwise logistic loss (softmax over a question's candidates, the evidence
turns the targets), weights kept >= 0, with a small L2 penalty; ``bm25`` is scaled to 1.

Validation is leave-one-conversation-out: each conversation is ranked by weights fitted on the others, and the
held-out Recall@5 / MRR are reported next to the weights in use, with every feature left out of the fit in
turn (the ablation that decides whether a feature stays). The shipped weights are then fitted on every
conversation.

Importance and access count are not fitted: the conversations carry no importance and each question is asked
once. Their weights are set by hand (``HAND_SET``) and recorded as such in the file.

Usage::

    python benchmarks/fit_ranking.py --locomo ../shared/data/locomo_dev.json              # report only
    python benchmarks/fit_ranking.py --locomo ../shared/data/locomo_dev.json --embedder minilm --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402
from locomo import Conversation, load_locomo, score_ranking  # noqa: E402
from locomo_bench import FixedClock, _timestamp, get_embedder  # noqa: E402

from context_manager.core.memory.ranking import FEATURES, WEIGHTS_FILE, RankingWeights, candidate_features  # noqa: E402

HAND_SET = {"importance": 0.1, "access": 0.02}
"""Weights the conversations cannot teach (no importance labels, no repeated questions)."""
L2 = 1e-3
LIMIT = 10
WEIGHTS_PATH = (
    Path(__file__).resolve().parent.parent / "src" / "context_manager" / "core" / "memory" / WEIGHTS_FILE
)


@dataclass(slots=True)
class QuestionCandidates:
    """One question: its candidates' features, which are evidence, tie-break order, the evidence count."""

    conversation: str
    category: int
    features: np.ndarray  # (candidates, FEATURES)
    labels: np.ndarray  # bool per candidate
    timestamps: np.ndarray  # newer first on ties
    keys: list[str | None]
    evidence: tuple[str, ...]


async def gather(conversation: Conversation, embedder: str | None, workdir: Path) -> list[QuestionCandidates]:
    """Index a conversation as ``bench_retrieval.py --locomo`` does and record every question's candidates."""
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.manager import MemoryManager

    storage = Path(tempfile.mkdtemp(prefix="fit-", dir=workdir))
    clock = FixedClock(_timestamp(conversation.turns[0].session_date))
    # the weights in use (they pick the feedback query's words from the first pass's best hits, as at search
    # time), with every feature whose weight also switches its gathering on (vector, period, feedback, time)
    shipped = RankingWeights.learned(embedder=embedder is not None)
    ranking = shipped.with_changes(
        **{name: 1.0 for name in ("vector", "period", "feedback", "time") if getattr(shipped, name) <= 0}
    )
    manager = MemoryManager(
        ContextManagerConfig(storage_path=storage, embedder="none"),
        embedder=get_embedder(embedder) if embedder else None,
        ranking=ranking,
        clock=clock,
    )
    await manager.initialize()
    found: list[QuestionCandidates] = []
    try:
        sessions: dict[int, list[Any]] = defaultdict(list)
        for turn in conversation.turns:
            sessions[turn.session].append(turn)
        key_of: dict[str, str] = {}
        for turns in sessions.values():
            clock.moment = _timestamp(turns[0].session_date)
            memories = await manager.add_memories(
                [{"content": turn.text, "metadata": turn.metadata(conversation.sample_id)} for turn in turns]
            )
            key_of.update((memory.id, turn.key) for memory, turn in zip(memories, turns, strict=True))
        clock.moment = _timestamp(conversation.last_date) + 86400.0
        half_life = manager.config.recency_half_life_days
        for question in conversation.questions:
            gathered = await manager._gather_candidates(question.text, max(ranking.candidates, 2 * LIMIT))
            if gathered is None:
                continue
            candidates = gathered.candidates
            rows = candidate_features(
                candidates,
                now=gathered.now,
                half_life_days=half_life,
                query_speakers=gathered.speakers,
                query_periods=gathered.periods,
                query_asks_when=gathered.asks_when,
            )
            keys = [key_of.get(candidate.id) for candidate in candidates]
            found.append(
                QuestionCandidates(
                    conversation.sample_id,
                    question.category,
                    np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES)),
                    np.asarray([key in question.evidence for key in keys], dtype=bool),
                    np.asarray([candidate.timestamp for candidate in candidates], dtype=np.float64),
                    keys,
                    question.evidence,
                )
            )
    finally:
        await manager.close()
    return found


# --------------------------------------------------------------------------- model


def fit(questions: list[QuestionCandidates], active: list[str]) -> dict[str, float]:
    """Fit the weights of the ``active`` features (the others stay at their hand-set value or 0)."""
    from scipy.optimize import minimize

    columns = [FEATURES.index(name) for name in active]
    fixed = np.zeros(len(FEATURES))
    for name, value in HAND_SET.items():
        fixed[FEATURES.index(name)] = value
    usable = [q for q in questions if q.labels.any()]
    matrices = [q.features for q in usable]
    offsets = [q.features @ fixed for q in usable]
    targets = [q.labels / q.labels.sum() for q in usable]

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        total = 0.0
        gradient = np.zeros(len(columns))
        for matrix, offset, target in zip(matrices, offsets, targets, strict=True):
            scores = matrix[:, columns] @ weights + offset
            scores -= scores.max()
            probabilities = np.exp(scores)
            probabilities /= probabilities.sum()
            total -= float(target @ np.log(probabilities + 1e-12))
            gradient -= matrix[:, columns].T @ (target - probabilities)
        count = len(matrices)
        return total / count + L2 * float(weights @ weights), gradient / count + 2 * L2 * weights

    start = np.ones(len(columns))
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * len(columns))
    weights = {name: 0.0 for name in FEATURES}
    weights.update(HAND_SET)
    weights.update({name: float(value) for name, value in zip(active, result.x, strict=True)})
    return weights


def normalised(weights: dict[str, float]) -> dict[str, float]:
    """Scale so that ``bm25`` weighs 1 (the hand-set weights keep their value: set on that scale)."""
    scale = weights["bm25"] or 1.0
    return {name: round(value if name in HAND_SET else value / scale, 4) for name, value in weights.items()}


def evaluate(questions: list[QuestionCandidates], weights: dict[str, float]) -> dict[str, float]:
    """Mean R@1/R@5/R@10/MRR when ranking every question's candidates by ``weights``."""
    vector = np.asarray([weights[name] for name in FEATURES])
    scores = []
    for question in questions:
        fused = question.features @ vector
        order = np.lexsort((-question.timestamps, -fused))[:LIMIT]
        scores.append(score_ranking([question.keys[i] for i in order], question.evidence))
    return {
        "R@1": float(np.mean([s.recall[1] for s in scores])),
        "R@5": float(np.mean([s.recall[5] for s in scores])),
        "R@10": float(np.mean([s.recall[10] for s in scores])),
        "MRR": float(np.mean([s.reciprocal_rank for s in scores])),
    }


def cross_validate(
    questions: list[QuestionCandidates], active: list[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Leave-one-conversation-out: held-out figures over every question, and each fold's weights."""
    conversations = sorted({q.conversation for q in questions})
    held_out_scores: list[QuestionCandidates] = []
    folds = []
    weighted: list[tuple[QuestionCandidates, dict[str, float]]] = []
    for held_out in conversations:
        training = [q for q in questions if q.conversation != held_out]
        weights = normalised(fit(training, active))
        test = [q for q in questions if q.conversation == held_out]
        folds.append({"held_out": held_out, "weights": weights, **evaluate(test, weights)})
        weighted.extend((q, weights) for q in test)
        held_out_scores.extend(test)
    # pooled over every held-out question (each ranked by its own fold's weights)
    totals: dict[str, list[float]] = defaultdict(list)
    for question, weights in weighted:
        for metric, value in evaluate([question], weights).items():
            totals[metric].append(value)
    return {metric: float(np.mean(values)) for metric, values in totals.items()}, folds


def report(name: str, figures: dict[str, float]) -> str:
    return f"{name:<44} " + " ".join(f"{metric} {value:.3f}" for metric, value in figures.items())


async def main_async(args: argparse.Namespace) -> int:
    conversations = load_locomo(args.locomo, limit=args.conversations)
    load = os.getloadavg()
    print(f"{len(conversations)} conversations; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    embedders = [None] + ([args.embedder] if args.embedder else [])
    output: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fit-ranking-") as workdir:
        for embedder in embedders:
            started = time.perf_counter()
            questions: list[QuestionCandidates] = []
            for conversation in conversations:
                questions.extend(await gather(conversation, embedder, Path(workdir)))
            label = "embedder" if embedder else "lexical"
            print(
                f"\n[{label}{f' = {embedder}' if embedder else ''}] {len(questions)} questions gathered in "
                f"{time.perf_counter() - started:.0f} s"
            )
            learnable = [f for f in FEATURES if f not in HAND_SET and (embedder or f != "vector")]
            current = {
                name: getattr(RankingWeights.learned(embedder=embedder is not None), name)
                for name in FEATURES
            }
            print(report("weights in use (ranking_weights.json)", evaluate(questions, current)))
            overall, folds = cross_validate(questions, learnable)
            print(report("fitted, leave-one-conversation-out", overall))
            for fold in folds:
                print(report(f"  held out {fold['held_out']}", {k: fold[k] for k in ("R@5", "MRR")}))
            ablation = {}
            for feature in learnable:
                if feature == "bm25":
                    continue
                held, _ = cross_validate(questions, [f for f in learnable if f != feature])
                ablation[feature] = held
                print(report(f"  without {feature}", held))
            final = normalised(fit(questions, learnable))
            print("weights fitted on every conversation:", final)
            output[label] = {
                "weights": final,
                "cross_validated": {k: round(v, 4) for k, v in overall.items()},
                "ablation_cross_validated": {
                    f: {k: round(v, 4) for k, v in held.items()} for f, held in ablation.items()
                },
                "embedder": embedder,
            }
    if args.write:
        document = {
            "about": (
                "Fusion weights of the memory ranking (context_manager.core.memory.ranking), learned by "
                "benchmarks/fit_ranking.py on the development conversations (listwise logistic loss, weights "
                ">= 0, leave-one-conversation-out validated); importance and access are set by hand."
            ),
            "command": " ".join(["python", "benchmarks/fit_ranking.py", *sys.argv[1:]]),
            "hand_set": sorted(HAND_SET),
        }
        previous = json.loads(WEIGHTS_PATH.read_text("utf-8"))
        for label in ("lexical", "embedder"):
            if label in output:
                document[label] = output[label]["weights"]
                document[f"{label}_validation"] = {
                    key: value for key, value in output[label].items() if key != "weights"
                }
            else:
                document[label] = previous[label]
                if f"{label}_validation" in previous:
                    document[f"{label}_validation"] = previous[f"{label}_validation"]
        WEIGHTS_PATH.write_text(json.dumps(document, indent=2) + "\n", "utf-8")
        print(f"wrote {WEIGHTS_PATH}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Learn the memory ranking's fusion weights.")
    parser.add_argument("--locomo", required=True, metavar="PATH", help="conversations in the LoCoMo format")
    parser.add_argument("--conversations", type=int, metavar="N", help="only the first N conversations")
    parser.add_argument("--embedder", metavar="NAME", help="also fit the weights used with this embedder")
    parser.add_argument("--write", action="store_true", help="write src/.../ranking_weights.json")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
