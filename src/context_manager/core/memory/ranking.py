"""Ranking of memory search results: pure functions, no I/O.

A candidate's score is a weighted sum of features, each in [0, 1]::

    score = bm25 * lexical + previous * lexical(previous turn) + next * lexical(next turn)
            + session * session_lexical + speaker * named_speaker + recency * 0.5 ** (age / half_life)
            + importance * importance + access * log-access + vector * cosine + period * in_named_period
            + feedback * feedback_lexical + time * states_time

``lexical`` is BM25 divided by the best BM25 of the query. For a conversation turn, ``previous`` and
``next`` are the lexical scores of its neighbouring turns in the same session (the answer often follows the
turn that named the topic). ``session_lexical`` is the summed BM25 of the turn's session, normalised by the
best session (a memory that is not a conversation turn is a session of its own). ``named_speaker`` is 1
when the query names the turn's speaker (``I``/``my``/``me`` name the user). Both are scaled by
``sqrt(max(lexical, previous, next))``: being in the right session or said by the right person counts only
with some evidence of the turn's own. ``cosine`` (only with an embedder) is the query's cosine similarity
divided by the best one. ``in_named_period`` is 1 when the query names a month or a year ("in May 2023",
"on October 13", "in 2022", see :func:`named_periods`) and the memory's date (its session date, else when it
was stored) falls in one of them. ``feedback_lexical`` is the BM25 of the question expanded with the rarest
words of the first pass's best hits (:func:`feedback_terms`; pseudo-relevance feedback), divided by its best
one: the first pass's BM25 plus that of a second query of the added words alone (FTS5 and ``ts_rank`` sum a
row's score over the query's words), which finds turns that share no word with the question but talk about
what its best hits talk about (the other half of a multi-hop answer). ``states_time`` (for questions asking
when, see :func:`asks_when`) is 1 for a turn whose text states a time ("last Friday", "yesterday", "in May",
see :func:`mentions_time`), scaled like ``named_speaker``: the answer to "When did Jon ..." is the turn that
says when, not every turn about it.

The weights are learned, not hand-set: ``benchmarks/fit_ranking.py`` fits a logistic model over these
features on real long conversations (leave-one-conversation-out cross-validated) and writes
``ranking_weights.json``, shipped with the package: one set for lexical search and one for search with an
embedder. Importance and access count cannot be learned from those conversations (they carry no importance
and are asked once); their small weights are set by hand and documented there.

Example:
    >>> weights = RankingWeights(recency=0.0)           # an ablation: no recency
    >>> weights.with_changes(vector=0.5).vector
    0.5
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.memory.embeddings import is_similarity_floor
from context_manager.core.memory.index import ColumnWeights, fold_case
from context_manager.core.memory.validation import is_finite

__all__ = [
    "ABLATIONS",
    "FEATURES",
    "FIRST_PERSON_WORDS",
    "Candidate",
    "RankingWeights",
    "asks_when",
    "bm25_idf",
    "candidate_features",
    "deduplicate",
    "feedback_terms",
    "fts5_idf",
    "fuse",
    "idf_corrections",
    "in_period",
    "learned_weights",
    "mentions_time",
    "named_periods",
    "named_speakers",
    "parse_session_date",
    "prune_common_terms",
    "recency_decay",
    "uniform_correction",
    "without_speaker_names",
]

FIRST_PERSON_WORDS = frozenset({"i", "me", "my", "mine", "myself"})
"""Query words that name the user as the speaker."""

USER_SPEAKER_NAMES = frozenset({"user", "human"})
"""Speaker values that stand for the user."""

_ROLE_SPEAKERS = USER_SPEAKER_NAMES | {"assistant", "system", "tool", "ai", "bot"}
# speaker values that are roles, not names: a query word "user" is not a reference to a person

FEATURES = (
    "bm25",
    "previous",
    "next",
    "session",
    "speaker",
    "recency",
    "importance",
    "access",
    "vector",
    "period",
    "feedback",
    "time",
)
"""The ranking features, in the order of :func:`candidate_features`; each has a weight of that name."""

WEIGHTS_FILE = "ranking_weights.json"
"""The learned weights, package data of :mod:`context_manager.core.memory`."""

_SECONDS_PER_DAY = 86400.0

_MONTHS = {
    name: number
    for number, name in enumerate(
        (
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ),
        start=1,
    )
}
# month names that are also common words count only next to a number or after a preposition of time
_AMBIGUOUS_MONTHS = frozenset({"march", "may"})
_TIME_PREPOSITIONS = frozenset(
    {"in", "of", "since", "during", "early", "late", "mid", "until", "before", "after"}
)
_YEAR = re.compile(r"(?:19|20)\d\d")
# a question that asks when: it starts with "when", "what year/month/day/date/time" or "how long ago"
_WHEN_QUESTION = re.compile(r"^\W*(?:when|what (?:year|month|day|date|time)|how long ago)\b", re.IGNORECASE)
# a text that states a time: relative words, a season this year, a weekday, a month, a year (whole words;
# broad on purpose, "may" the verb and "next" in "next to" count too: it only ranks candidates that already
# match the question, and was measured with this list)
_TIME_EXPRESSION = re.compile(
    r"\b(?:yesterday|today|tonight|tomorrow|ago|last|next|recently|weekends?|weeks?|months?|years?"
    r"|this (?:morning|summer|winter|spring|fall)"
    r"|mondays?|tuesdays?|wednesdays?|thursdays?|fridays?|saturdays?|sundays?"
    r"|january|february|march|april|may|june|july|august|september|october|november|december"
    r"|(?:19|20)\d\d)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+")


@functools.cache
def learned_weights() -> dict[str, dict[str, float]]:
    """The shipped weight sets by name (``"lexical"``, ``"embedder"``), read once from the package data."""
    text = resources.files("context_manager.core.memory").joinpath(WEIGHTS_FILE).read_text("utf-8")
    data = json.loads(text)
    return {
        name: {feature: float(value) for feature, value in data[name].items()}
        for name in ("lexical", "embedder")
    }


def _learned(feature: str) -> Any:
    # the lexical set for every weight, but the vector weight comes from the set fitted with an embedder
    source = "embedder" if feature == "vector" else "lexical"
    return field(default_factory=lambda: learned_weights()[source][feature])


_SWITCHES = (
    "neighbour_context",
    "speaker_boost",
    "session_score",
    "stop_words",
    "context_columns",
    "vector_query_without_speakers",
)
_COUNTS = {
    "candidates": 1,
    "common_term_min_documents": 0,
    "common_term_max_documents": 0,
    "feedback_hits": 0,
    "feedback_terms": 0,
    "feedback_min_documents": 0,
    "feedback_min_memories": 0,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A number (not a bool) that a float holds finitely (not 10**400, which no float holds)."""
    return _is_number(value) and is_finite(value)


@dataclass(frozen=True, slots=True)
class RankingWeights:
    """Weights and switches of the memory ranking (pass to ``MemoryManager(ranking=...)``).

    The defaults are the weights learned for lexical search (``ranking_weights.json``); a
    ``MemoryManager`` with an embedder and no ``ranking`` uses :meth:`learned` ``(embedder=True)``. Set a
    weight to 0 or a switch to ``False`` for an ablation.
    """

    bm25: float = _learned("bm25")
    """Weight of the normalised BM25 score."""
    previous: float = _learned("previous")
    """Weight of the previous turn's normalised BM25 score (conversation turns)."""
    next: float = _learned("next")
    """Weight of the next turn's normalised BM25 score (conversation turns)."""
    session: float = _learned("session")
    """Weight of the session-level lexical score."""
    speaker: float = _learned("speaker")
    """Weight of the speaker boost (the query names the turn's speaker)."""
    recency: float = _learned("recency")
    """Weight of the recency decay ``0.5 ** (age / half_life)``."""
    importance: float = _learned("importance")
    """Weight of the memory's importance (set by hand: the training conversations carry none)."""
    access: float = _learned("access")
    """Weight of the access frequency ``log1p(count) / log1p(100)`` (capped at 1; set by hand)."""
    vector: float = _learned("vector")
    """Weight of the normalised cosine similarity (only with an embedder)."""
    period: float = _learned("period")
    """Weight of the date match (the memory's date falls in a month or year the query names)."""
    feedback: float = _learned("feedback")
    """Weight of the expanded query's normalised BM25 (pseudo-relevance feedback; 0 skips the second query,
    of the added words)."""
    time: float = _learned("time")
    """Weight of the time match (the query asks when and the memory's text states a time)."""
    neighbour_context: bool = True
    """Fetch the neighbouring turns of matched turns and score them by their neighbours."""
    speaker_boost: bool = True
    """Boost turns by a speaker the query names."""
    session_score: bool = True
    """Add the session-level lexical score."""
    stop_words: bool = True
    """Leave English function words (:data:`~context_manager.core.memory.index.STOP_WORDS`) out of the
    full-text query when it has other words."""
    context_columns: bool = True
    """Index the previous turn and the session date in lower-weighted FTS5 columns."""
    columns: ColumnWeights = field(default_factory=ColumnWeights)
    """BM25 weights of the FTS5 columns (used when ``context_columns`` is on)."""
    recency_half_life_days: float | None = None
    """Half-life of the recency decay; ``None`` takes ``config.recency_half_life_days``."""
    candidates: int = 30
    """How many BM25 (and vector) candidates each tier contributes before fusion."""
    common_term_ratio: float = 0.1
    """Query words found in more than this share of the memories (and in more than
    ``common_term_min_documents``) are left out of the full-text query when rarer words remain: they
    weigh almost nothing in BM25 yet dominate its cost (every matching memory must be scored).
    ``1.0`` keeps every word."""
    common_term_min_documents: int = 200
    """Words in at most this many memories are always kept (they are cheap to score)."""
    common_term_max_documents: int = 2000
    """Words in more memories than this are left out too when rarer words remain, whatever the share;
    it bounds the cost of a query as the store grows (such words weigh little in BM25 at that size)."""
    feedback_hits: int = 3
    """How many of the first pass's best results lend words to the feedback query (those that are
    conversation turns: no feedback query when none is)."""
    feedback_terms: int = 5
    """How many of their words (the rarest in the store) are added to the question for the feedback query."""
    feedback_min_documents: int = 3
    """Words indexed in fewer rows are not added: they can only find the hit they came from (a turn's
    words are indexed twice, in its own row and in the next turn's context column, hence 3)."""
    vector_query_without_speakers: bool = True
    """The vector channel embeds the query with the names of the candidate turns' speakers replaced by
    "they" (:func:`without_speaker_names`): a turn's text rarely names its own speaker (that is metadata,
    which the speaker feature uses), so a name in the query pulls its embedding towards the turns that
    address that person, said by someone else."""
    feedback_min_memories: int = 200
    """No feedback query in a store of fewer memories: there, which words are rare says little, and a
    hit's own words mostly promote the hit itself (the ``common_term_min_documents`` scale)."""
    vector_min_similarity: float | None = None
    """The least cosine similarity with the query that a memory found by the vector channel alone (it
    matches none of the query's words) must have to be a candidate: a query about something the store
    never mentions then finds nothing, instead of the least unrelated memories. Memories that match a word
    of the query are never left out for a low similarity. ``0`` keeps every nearest neighbour; ``None``
    (the default) takes the embedder's own ``min_similarity`` (0.2 for the packaged MiniLM, chosen on the
    development conversations), or no floor for an embedder that has none: similarity scales differ from
    one model to another. A number in [0, 1]. With a floor above 0, such a memory must also be closer to the
    query than to text that says nothing (the mean of
    :data:`~context_manager.core.memory.embeddings.CONTENTLESS_TEXTS`): a one-word query is as similar
    to any short memory ("seats" to "qwerty": 0.31) as the floor allows, and such a memory is closer still to
    contentless text."""

    def __post_init__(self) -> None:
        for name in FEATURES:  # a negative weight would rank a feature's best matches last
            value = getattr(self, name)
            if not _is_finite_number(value) or value < 0:
                raise InvalidArgumentError(name, value, "a finite weight >= 0 (0 switches the feature off)")
        for name in _SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(name, getattr(self, name), "True or False")
        for name, least in _COUNTS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidArgumentError(name, value, f"an integer >= {least}")
        ratio = self.common_term_ratio
        if not _is_number(ratio) or not 0 < ratio <= 1:
            raise InvalidArgumentError("common_term_ratio", ratio, "a share in (0, 1] (1.0 keeps every word)")
        half_life = self.recency_half_life_days
        if half_life is not None and (not _is_finite_number(half_life) or not half_life > 0):
            raise InvalidArgumentError(
                "recency_half_life_days", half_life, "None (the config's) or a number of days > 0"
            )
        if not isinstance(self.columns, ColumnWeights):
            raise InvalidArgumentError("columns", self.columns, "a ColumnWeights")
        floor = self.vector_min_similarity
        if floor is not None and not is_similarity_floor(floor):
            raise InvalidArgumentError(
                "vector_min_similarity",
                floor,
                "None (the embedder's floor) or a number from 0 (no floor) to 1 (a cosine similarity)",
            )

    @classmethod
    def learned(cls, *, embedder: bool = False, **changes: Any) -> RankingWeights:
        """The shipped weights fitted for lexical search, or for search with an embedder, with ``changes``."""
        values: dict[str, Any] = dict(learned_weights()["embedder" if embedder else "lexical"])
        values.update(changes)
        return cls(**values)

    def with_changes(self, **changes: Any) -> RankingWeights:
        """Return a copy with some weights changed."""
        return replace(self, **changes)

    def feature_weights(self) -> tuple[float, ...]:
        """The weight of each of :data:`FEATURES`, 0 for a feature switched off."""
        values = {name: float(getattr(self, name)) for name in FEATURES}
        if not self.neighbour_context:
            values["previous"] = values["next"] = 0.0
        if not self.speaker_boost:
            values["speaker"] = 0.0
        if not self.session_score:
            values["session"] = 0.0
        return tuple(values[name] for name in FEATURES)

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
    feedback: float = 0.0
    """BM25 of the question expanded with the feedback words: the first pass's plus the added words' (0 when
    neither matched or there was no feedback query)."""
    states_time: bool = False
    """Its text states a time (:func:`mentions_time`); only looked at for queries that ask when."""
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


def named_periods(text: str) -> frozenset[tuple[int | None, int | None]]:
    """The ``(year, month)`` periods a query names; ``None`` stands for any year or any month.

    "in May 2023" gives ``{(2023, 5)}``, "on October 13" ``{(None, 10)}``, "in 2022" ``{(2022, None)}``.
    "may" and "march" count as months only next to a number or after a preposition of time ("in May",
    "May 7"), not in "What may she ...".

    Example:
        >>> sorted(named_periods("What did Gina do in July 2023?"))
        [(2023, 7)]
    """
    words = _WORD.findall(text.lower())
    years: list[int | None] = [year for year in sorted({int(w) for w in words if _YEAR.fullmatch(w)})]
    periods: set[tuple[int | None, int | None]] = set()
    for position, word in enumerate(words):
        month = _MONTHS.get(word)
        if month is None:
            continue
        if word in _AMBIGUOUS_MONTHS:
            before = words[position - 1] if position > 0 else ""
            after = words[position + 1] if position + 1 < len(words) else ""
            if not (before in _TIME_PREPOSITIONS or before.isdigit() or after.isdigit()):
                continue
        periods.update((year, month) for year in (years or [None]))
    if not periods:
        periods.update((year, None) for year in years)
    return frozenset(periods)


def asks_when(text: str) -> bool:
    """Whether a query asks when something happened ("When did ...", "What year ...", "How long ago ...").

    Example:
        >>> asks_when("When did Jon open his dance studio?"), asks_when("Where did Jon dance?")
        (True, False)
    """
    return _WHEN_QUESTION.search(text) is not None


def mentions_time(text: str) -> bool:
    """Whether a text states a time: the ``time`` feature's test of a memory (see :func:`asks_when`).

    A relative one ("yesterday", "last week", "two years ago", "next Friday", "this summer", "recently"), a
    weekday, a month or a year, as a whole word in English. Broad on purpose ("may" the verb counts): the
    feature only reorders candidates that match the question, scaled by their own match.

    Example:
        >>> mentions_time("I finished my screenplay last Friday!"), mentions_time("I love painting.")
        (True, False)
    """
    return _mentions_time(text)


@functools.lru_cache(maxsize=4096)
def _mentions_time(text: str) -> bool:
    # the same turns come back query after query: the scan of a long text costs more than the lookup
    return _TIME_EXPRESSION.search(text) is not None


def without_speaker_names(text: str, speakers: Iterable[str]) -> str:
    """The query as the vector channel embeds it: each speaker's name replaced by "they" ("their" for "X's").

    A speaker matches by its whole value or its first word, as a whole word, in any case. Role values
    ("user", "assistant") are not names and stay. A query that is nothing but names is returned unchanged.

    Example:
        >>> without_speaker_names("When did Caroline go to Melanie's party?", ["Caroline", "Melanie Lee"])
        'When did they go to their party?'
    """
    names: set[str] = set()
    for speaker in speakers:
        lowered = speaker.strip().lower()
        if lowered and lowered not in _ROLE_SPEAKERS:
            names.update((lowered, lowered.split(" ", 1)[0]))
    if not names:
        return text
    pattern = _speaker_pattern(tuple(sorted(names, key=lambda name: (-len(name), name))))
    replaced = pattern.sub(lambda match: "their" if match.group(1) else "they", text)
    if replaced == text or not set(_WORD.findall(replaced.lower())) - {"they", "their"}:
        return text
    return replaced


@functools.lru_cache(maxsize=256)
def _speaker_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(['\u2019]s)?(?![^\W_])", re.IGNORECASE)


def in_period(timestamp: float, periods: frozenset[tuple[int | None, int | None]]) -> bool:
    """Whether a moment (epoch seconds, UTC) falls in one of ``periods`` (see :func:`named_periods`)."""
    if not periods:
        return False
    moment = _utc_date(int(timestamp) // 86400)
    return any(
        (year is None or year == moment[0]) and (month is None or month == moment[1])
        for year, month in periods
    )


@functools.lru_cache(maxsize=65536)
def _utc_date(day: int) -> tuple[int, int]:
    try:
        moment = datetime.fromtimestamp(day * 86400, UTC)
    except (ValueError, OverflowError, OSError):  # before year 1 or after 9999 (stored by an older import)
        return 0, 0  # in no period
    return moment.year, moment.month


def _speaker_named(speaker: str | None, named: frozenset[str]) -> bool:
    if not speaker or not named:
        return False
    lowered = fold_case(speaker)  # as the query's words were (``query_tokens``)
    return lowered in named or lowered.split(" ", 1)[0] in named


@functools.lru_cache(maxsize=4096)
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


def candidate_features(
    candidates: Sequence[Candidate],
    *,
    now: float,
    half_life_days: float,
    query_speakers: frozenset[str] = frozenset(),
    query_periods: frozenset[tuple[int | None, int | None]] = frozenset(),
    query_asks_when: bool = False,
) -> list[tuple[float, ...]]:
    """The value of each of :data:`FEATURES` for each candidate (a row per candidate, each value in [0, 1]).

    Candidates that are neighbouring turns of matched turns should be included with ``bm25=0``: they
    score through their neighbours' ``previous``/``next`` features. ``query_speakers``,
    ``query_periods`` and ``query_asks_when`` describe the query (:func:`named_speakers`,
    :func:`named_periods`, :func:`asks_when`); the ``time`` feature is 0 unless it asks when.
    """
    if not candidates:
        return []
    best_bm25 = max(candidate.bm25 for candidate in candidates)
    scale = 1.0 / best_bm25 if best_bm25 > 0 else 0.0
    by_turn: dict[tuple[tuple[str | None, str], int], float] = {}
    session_totals: dict[tuple[str | None, str], float] = {}
    for c in candidates:
        if c.session is not None:
            if c.turn_index is not None:  # two memories claiming one turn: the better one counts
                key = (c.session, c.turn_index)
                by_turn[key] = max(by_turn.get(key, 0.0), c.bm25 * scale)
            if c.bm25 > 0:
                session_totals[c.session] = session_totals.get(c.session, 0.0) + c.bm25
    # a memory that is not a conversation turn is a session of its own (so it is not outranked by turns
    # merely for being in a session)
    best_session = max(
        [*session_totals.values(), *(c.bm25 for c in candidates if c.session is None)], default=0.0
    )
    session_scale = 1.0 / best_session if best_session > 0 else 0.0
    best_feedback = max(candidate.feedback for candidate in candidates)
    feedback_scale = 1.0 / best_feedback if best_feedback > 0 else 0.0
    best_cosine = max((c.cosine for c in candidates if c.cosine is not None), default=0.0)
    cosine_scale = 1.0 / best_cosine if best_cosine > 0 else 0.0
    access_scale = 1.0 / math.log1p(100.0)
    rows: list[tuple[float, ...]] = []
    for c in candidates:
        own = c.bm25 * scale
        previous = following = session = 0.0
        if c.session is None:
            session = c.bm25 * session_scale
        else:
            session = session_totals.get(c.session, 0.0) * session_scale
            if c.turn_index is not None:
                previous = by_turn.get((c.session, c.turn_index - 1), 0.0)
                following = by_turn.get((c.session, c.turn_index + 1), 0.0)
        # the session and speaker features say "this turn is in the right place, by the right person": they
        # count in proportion to the turn's own evidence (its text or a neighbour's), so a turn that matches
        # nothing cannot outrank a memory that matches the query just by being in a conversation
        relevance = math.sqrt(max(own, previous, following))
        cosine = max(c.cosine, 0.0) * cosine_scale if c.cosine is not None else 0.0
        # the date counts for any candidate with some evidence (its text, a neighbour's or its meaning): the
        # month named is often the only clue to which of several similar turns is meant
        evidence = relevance > 0 or cosine > 0
        dated = 1.0 if evidence and query_periods and in_period(c.timestamp, query_periods) else 0.0
        rows.append(
            (
                own,
                previous,
                following,
                session * relevance,
                relevance if _speaker_named(c.speaker, query_speakers) else 0.0,
                recency_decay(now - c.timestamp, half_life_days),
                c.importance,
                min(1.0, math.log1p(c.access_count) * access_scale) if c.access_count > 0 else 0.0,
                cosine,
                dated,
                c.feedback * feedback_scale,
                relevance if query_asks_when and c.states_time else 0.0,
            )
        )
    return rows


def fuse(
    candidates: Sequence[Candidate],
    weights: RankingWeights,
    *,
    now: float,
    half_life_days: float,
    query_speakers: frozenset[str] = frozenset(),
    query_periods: frozenset[tuple[int | None, int | None]] = frozenset(),
    query_asks_when: bool = False,
) -> list[Candidate]:
    """Score every candidate (the weighted sum of its features) and return them best first.

    Ties go to the newer memory, then to the smaller id, so the order never depends on the input order.
    """
    rows = candidate_features(
        candidates,
        now=now,
        half_life_days=half_life_days,
        query_speakers=query_speakers,
        query_periods=query_periods,
        query_asks_when=query_asks_when,
    )
    vector = weights.feature_weights()
    for candidate, row in zip(candidates, rows, strict=True):
        candidate.score = sum(map(operator.mul, vector, row))
    return sorted(candidates, key=lambda c: (-c.score, -c.timestamp, c.id))


def feedback_terms(
    hits: Sequence[Iterable[str]],
    query: Iterable[str],
    frequencies: Mapping[str, int],
    total: int,
    count: int,
    min_documents: int = 2,
) -> list[str]:
    """The words to add to a query for its feedback pass: the rarest words of its best hits.

    A word scores ``log(total / documents)`` for each hit it occurs in; words of the query, numbers, words
    found in fewer than ``min_documents`` rows (they can only find the hit they came from) or in every row
    score nothing. The ``count`` best are returned, best first (ties alphabetically).

    Args:
        hits: The words of each of the best hits (first pass), best hit first.
        query: The query's words.
        frequencies: How many memories contain each word (a word missing counts as none).
        total: How many memories there are.
        count: At most this many words.
        min_documents: Words in fewer rows are left out.

    Example:
        >>> frequencies = {"turtle": 3, "tank": 9, "the": 90}
        >>> feedback_terms([["turtle", "tank", "the"], ["tank"]], ["pets"], frequencies, 100, 2)
        ['tank', 'turtle']
    """
    if count <= 0 or total <= 0:
        return []
    excluded = set(query)
    scores: dict[str, float] = {}
    for words in hits:
        for word in dict.fromkeys(words):
            documents = frequencies.get(word, 0)
            if word in excluded or word.isdigit() or documents < max(min_documents, 1) or documents >= total:
                continue
            scores[word] = scores.get(word, 0.0) + math.log(total / documents)
    ranked = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    return [word for word, _ in ranked[:count]]


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


def bm25_idf(total: int, documents: int) -> float:
    """The IDF the ranking gives a term found in ``documents`` of ``total`` rows.

    ``log(1 + (N - n + 0.5) / (n + 0.5))``.

    Unlike FTS5's own IDF it never drops to (nearly) zero: in a store of a dozen memories, a word found in
    half of them still counts (FTS5 gives it 1e-6, so a memory matching it scores like one matching nothing).
    For rare words the two agree within a few percent.
    """
    total = max(total, documents)
    return math.log(1.0 + (total - documents + 0.5) / (documents + 0.5))


def idf_corrections(
    stems: Iterable[str],
    tier_frequencies: dict[str, int],
    tier_total: int,
    frequencies: dict[str, int],
    total: int,
) -> dict[str, float]:
    """Per query term found in a tier: :func:`bm25_idf` over every tier divided by the tier's own FTS5 IDF.

    Each tier has its own FTS5 index, whose ``bm25()`` weighs a term by the IDF of that index alone: in a
    small tier a word found in half its rows weighs nothing (FTS5 clamps the IDF to 1e-6), however rare it
    is overall. A term's BM25 contribution in a tier times its correction is the contribution it would
    have if every memory sat in one index scored with :func:`bm25_idf`, so scores from different tiers
    compare, and a word common in a tiny store still counts.

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
            overall = bm25_idf(total, max(frequencies.get(stem, 0), documents))
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
    "bm25": {"bm25": 0.0},
    "neighbour turns": {"neighbour_context": False},
    "session score": {"session_score": False},
    "speaker boost": {"speaker_boost": False},
    "context columns": {"context_columns": False},
    "stop words": {"stop_words": False},
    "recency": {"recency": 0.0},
    "importance": {"importance": 0.0},
    "access": {"access": 0.0},
    "vector": {"vector": 0.0},
    "named period": {"period": 0.0},
    "feedback": {"feedback": 0.0},
    "time": {"time": 0.0},
    "vector query without speakers": {"vector_query_without_speakers": False},
}
"""Each ranking feature switched off (changes to :class:`RankingWeights`), for ablation tables."""
