"""Ranking of memory search results: pure functions, no I/O.

A candidate's score is a weighted sum of normalised features::

    score = bm25 * lexical + vector * cosine + session * session_lexical + speaker * named_speaker
            + recency * 0.5 ** (age / half_life) + importance * importance + access * log-access

``lexical`` is BM25 divided by the best BM25 of the query (so it lies in [0, 1]); with neighbour
context on, a conversation turn takes ``max(own, 0.7 x previous turn, 0.5 x next turn)`` within its
session (the answer often follows the turn that named the topic). ``session_lexical`` is the summed
lexical evidence of the turn's session, normalised by the best session. ``named_speaker`` is 1 when the
query names the turn's speaker (``I``/``my``/``me`` name the user). The vector channel (when an
embedder is configured) joins by weighted fusion of the normalised cosine, which measured better than
equal-weight reciprocal-rank fusion on long conversations.

Example:
    >>> weights = RankingWeights(recency=0.0)           # an ablation: no recency
    >>> weights.with_changes(vector=0.5).vector
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from context_manager.core.memory.index import ColumnWeights

__all__ = [
    "FIRST_PERSON_WORDS",
    "Candidate",
    "RankingWeights",
    "deduplicate",
    "fts5_idf",
    "fuse",
    "idf_corrections",
    "named_speakers",
    "parse_session_date",
    "prune_common_terms",
    "recency_decay",
    "uniform_correction",
]

FIRST_PERSON_WORDS = frozenset({"i", "me", "my", "mine", "myself"})
"""Query words that name the user as the speaker."""

USER_SPEAKER_NAMES = frozenset({"user", "human"})
"""Speaker values that stand for the user."""

_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RankingWeights:
    """Weights and switches of the memory ranking (pass to ``MemoryManager(ranking=...)``).

    The defaults are the best combination measured on the long-conversation benchmark
    (``benchmarks/bench_retrieval.py``); set a weight to 0 or a switch to ``False`` for an ablation.
    """

    bm25: float = 1.0
    """Weight of the normalised BM25 score."""
    recency: float = 0.05
    """Weight of the recency decay ``0.5 ** (age / half_life)``."""
    importance: float = 0.1
    """Weight of the memory's importance."""
    access: float = 0.02
    """Weight of the access frequency ``log1p(count) / log1p(100)`` (capped at 1)."""
    vector: float = 2.0
    """Weight of the normalised cosine similarity (only with an embedder). With MiniLM, 2.0 measured best
    on the long-conversation benchmark (Recall@5 0.80 against 0.56 at 0.3, which under-used the channel)."""
    neighbour_context: bool = True
    """Let a turn score ``max(own, previous x neighbour_previous, next x neighbour_next)``."""
    neighbour_previous: float = 0.7
    """Share of the previous turn's lexical score a turn inherits."""
    neighbour_next: float = 0.5
    """Share of the next turn's lexical score a turn inherits."""
    speaker_boost: bool = True
    """Boost turns by a speaker the query names."""
    speaker: float = 0.1
    """Weight of the speaker boost."""
    session_score: bool = True
    """Add the session-level lexical score."""
    session: float = 0.1
    """Weight of the session-level lexical score."""
    context_columns: bool = True
    """Index the previous turn and the session date in lower-weighted FTS5 columns."""
    columns: ColumnWeights = field(default_factory=ColumnWeights)
    """BM25 weights of the FTS5 columns (used when ``context_columns`` is on)."""
    recency_half_life_days: float | None = None
    """Half-life of the recency decay; ``None`` takes ``config.recency_half_life_days``."""
    candidates: int = 50
    """How many BM25 (and vector) candidates each tier contributes before fusion."""
    common_term_ratio: float = 0.1
    """Query words found in more than this share of the memories (and in more than
    ``common_term_min_documents``) are left out of the full-text query when rarer words remain: they
    weigh almost nothing in BM25 yet dominate its cost (every matching memory must be scored).
    ``1.0`` keeps every word."""
    common_term_min_documents: int = 1000
    """Words in at most this many memories are always kept (they are cheap to score)."""
    common_term_max_documents: int = 2000
    """Words in more memories than this are left out too when rarer words remain, whatever the share;
    it bounds the cost of a query as the store grows (such words weigh little in BM25 at that size)."""

    def with_changes(self, **changes: Any) -> RankingWeights:
        """Return a copy with some weights changed."""
        return replace(self, **changes)

    @property
    def effective_columns(self) -> ColumnWeights:
        """The column weights in force (context and date weigh 0 when ``context_columns`` is off)."""
        if self.context_columns:
            return self.columns
        return replace(self.columns, context=0.0, date=0.0)


@dataclass(slots=True)
class Candidate:
    """A memory competing for a place in the results, with its raw features."""

    id: str
    """Memory id."""
    bm25: float = 0.0
    """Positive BM25 score (0 when it did not match lexically)."""
    cosine: float | None = None
    """Cosine similarity with the query, when the vector channel is on."""
    importance: float = 0.5
    """The memory's importance."""
    timestamp: float = 0.0
    """When the memory happened (session date if known, else created_at), seconds since the epoch."""
    access_count: int = 0
    """How many times it was returned before."""
    session: tuple[str | None, str] | None = None
    """``(user_id, session_id)`` for conversation turns."""
    turn_index: int | None = None
    """Position in the session."""
    speaker: str | None = None
    """Who said it."""
    score: float = 0.0
    """The fused score (filled in by :func:`fuse`)."""


def recency_decay(age_seconds: float, half_life_days: float) -> float:
    """``0.5 ** (age / half_life)``, 1.0 for memories from the future."""
    if age_seconds <= 0:
        return 1.0
    return float(0.5 ** (age_seconds / (half_life_days * _SECONDS_PER_DAY)))


def named_speakers(tokens: Iterable[str]) -> frozenset[str]:
    """The speakers a query names: its words, plus ``user`` when it says I/me/my."""
    words = set(tokens)
    if words & FIRST_PERSON_WORDS:
        words |= USER_SPEAKER_NAMES
    return frozenset(words)


def _speaker_named(speaker: str | None, named: frozenset[str]) -> bool:
    if not speaker or not named:
        return False
    lowered = speaker.lower()
    return lowered in named or lowered.split(" ", 1)[0] in named


def parse_session_date(value: str | None) -> float | None:
    """Seconds since the epoch of an ISO-like date (``2023-05-08`` or with time); ``None`` if unparsable."""
    if not value:
        return None
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def fuse(
    candidates: Sequence[Candidate],
    weights: RankingWeights,
    *,
    now: float,
    half_life_days: float,
    query_speakers: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """Score every candidate and return them best first (ties: newer first).

    Candidates that are neighbouring turns of matched turns should be included with ``bm25=0`` so
    they can inherit their neighbours' scores.
    """
    if not candidates:
        return []
    best_bm25 = max(candidate.bm25 for candidate in candidates)
    lexical = {c.id: (c.bm25 / best_bm25 if best_bm25 > 0 else 0.0) for c in candidates}

    if weights.neighbour_context:
        by_turn = {
            (c.session, c.turn_index): lexical[c.id]
            for c in candidates
            if c.session is not None and c.turn_index is not None
        }
        adjusted = {}
        for c in candidates:
            own = lexical[c.id]
            if c.session is not None and c.turn_index is not None:
                previous = by_turn.get((c.session, c.turn_index - 1), 0.0)
                following = by_turn.get((c.session, c.turn_index + 1), 0.0)
                own = max(own, weights.neighbour_previous * previous, weights.neighbour_next * following)
            adjusted[c.id] = own
        lexical = adjusted

    session_lexical: dict[tuple[str | None, str], float] = {}
    if weights.session_score and weights.session:
        for c in candidates:
            if c.session is not None and c.bm25 > 0:
                session_lexical[c.session] = session_lexical.get(c.session, 0.0) + c.bm25
        best_session = max(session_lexical.values(), default=0.0)
        if best_session > 0:
            session_lexical = {key: value / best_session for key, value in session_lexical.items()}

    best_cosine = max((c.cosine for c in candidates if c.cosine is not None), default=0.0)
    access_scale = math.log1p(100.0)
    for c in candidates:
        score = weights.bm25 * lexical[c.id]
        if c.cosine is not None and weights.vector and best_cosine > 0:
            score += weights.vector * max(c.cosine, 0.0) / best_cosine
        if c.session is not None and session_lexical:
            score += weights.session * session_lexical.get(c.session, 0.0)
        if weights.speaker_boost and weights.speaker and _speaker_named(c.speaker, query_speakers):
            score += weights.speaker
        if weights.recency:
            score += weights.recency * recency_decay(now - c.timestamp, half_life_days)
        score += weights.importance * c.importance
        if weights.access and c.access_count > 0:
            score += weights.access * min(1.0, math.log1p(c.access_count) / access_scale)
        c.score = score
    return sorted(candidates, key=lambda c: (-c.score, -c.timestamp))


def prune_common_terms(
    tokens: Sequence[str],
    stems: Sequence[str],
    frequencies: dict[str, int],
    total: int,
    ratio: float,
    min_documents: int = 0,
    max_documents: int | None = None,
) -> list[str]:
    """Drop the tokens whose stem is in more than ``ratio`` of ``total`` documents (and ``min_documents``).

    With ``max_documents``, tokens in more documents than that are dropped whatever their share. When no
    kept token matches anything, the rarest token that does is kept too.
    """
    if ratio >= 1.0 or total <= 0 or not tokens:
        return list(tokens)
    limit = max(ratio * total, min_documents)
    if max_documents is not None:
        limit = min(limit, max_documents)
    pairs = list(zip(tokens, stems, strict=True))
    kept = [token for token, stem in pairs if frequencies.get(stem, 0) <= limit]
    if any(frequencies.get(stem, 0) > 0 for token, stem in pairs if token in kept):
        return kept
    matching = [(token, stem) for token, stem in pairs if frequencies.get(stem, 0) > 0]
    if not matching:
        return list(tokens)
    rarest = min(matching, key=lambda pair: frequencies[pair[1]])
    return [*kept, rarest[0]]


def fts5_idf(total: int, documents: int) -> float:
    """The IDF FTS5's ``bm25()`` gives a term in ``documents`` of ``total`` rows (1e-6 when not positive).

    ``total`` below ``documents`` (a count read just before a concurrent write) counts as ``documents``.
    """
    total = max(total, documents)
    idf = math.log((total - documents + 0.5) / (documents + 0.5))
    return idf if idf > 0.0 else 1e-6


def idf_corrections(
    stems: Iterable[str],
    tier_frequencies: dict[str, int],
    tier_total: int,
    frequencies: dict[str, int],
    total: int,
) -> dict[str, float]:
    """Per query term found in a tier: the IDF over every tier divided by the tier's own IDF.

    Each tier has its own FTS5 index, whose ``bm25()`` weighs a term by the IDF of that index alone: in a
    small tier a word found in half its rows weighs nothing (FTS5 clamps the IDF to 1e-6), however rare it
    is overall. A term's BM25 contribution in a tier times its correction is the contribution it would
    have if every memory sat in one index, so scores from different tiers compare.

    Args:
        stems: The query's (stemmed) terms.
        tier_frequencies: Rows of the tier containing each term.
        tier_total: Rows in the tier.
        frequencies: Rows containing each term, summed over the tiers searched.
        total: Rows in the tiers searched.
    """
    corrections: dict[str, float] = {}
    for stem in stems:
        documents = tier_frequencies.get(stem, 0)
        if documents > 0:
            overall = fts5_idf(total, max(frequencies.get(stem, 0), documents))
            corrections[stem] = overall / fts5_idf(tier_total, documents)
    return corrections


def uniform_correction(corrections: dict[str, float], tolerance: float = 0.1) -> float | None:
    """One factor for every term when the corrections agree within ``tolerance`` (relative), else ``None``.

    Scaling a whole BM25 score by one factor is then accurate enough and needs no per-term query.
    """
    if not corrections:
        return 1.0
    low, high = min(corrections.values()), max(corrections.values())
    if high <= low * (1.0 + tolerance):
        return (low + high) / 2.0
    return None


def deduplicate(ids_in_order: Iterable[str]) -> list[str]:
    """Keep the first occurrence of every id (the same memory can sit in two tiers)."""
    return list(dict.fromkeys(ids_in_order))


ABLATIONS: dict[str, dict[str, Any]] = {
    "neighbour context": {"neighbour_context": False},
    "speaker boost": {"speaker_boost": False},
    "session score": {"session_score": False},
    "context columns": {"context_columns": False},
    "recency": {"recency": 0.0},
    "importance": {"importance": 0.0},
    "access": {"access": 0.0},
}
"""Each ranking feature switched off (changes to :class:`RankingWeights`), for ablation tables."""
