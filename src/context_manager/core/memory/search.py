"""Ranked search (``MemoryManager.search_memory``) and tag search across the three tiers.

The backend returns lexical candidates with BM25 scores comparable across tiers (filters applied in its
candidate query), the vector channel adds its nearest neighbours, conversation neighbours join, a second
query of the rarest words of the best hits adds its own (pseudo-relevance feedback), and
:func:`~context_manager.core.memory.ranking.fuse` orders them: the same ranking on every backend. Returned
memories count as accessed; those updates are written in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NamedTuple

from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.backend import LexicalQuery
from context_manager.core.memory.embeddings import (
    CONTENTLESS_TEXTS,
    contentless_direction,
    similarity_floor,
)
from context_manager.core.memory.index import content_tokens, query_tokens, segment_tokens
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.memory.ranking import (
    Candidate,
    asks_when,
    feedback_terms,
    fuse,
    mentions_time,
    named_periods,
    named_speakers,
    parse_session_date,
    without_speaker_names,
)
from context_manager.core.memory.state import UserScope
from context_manager.core.memory.store import TurnKey
from context_manager.core.memory.tiers import TierMovement, embedder_failed
from context_manager.core.memory.validation import (
    check_importance,
    check_limit,
    check_tags,
    check_tiers,
    check_time,
    check_user,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = ["MemorySearch"]

_TOUCH_BATCH = 256
_HIT_WORDS = 200
"""At most this many distinct words of a hit are considered for the feedback query."""


class GatheredCandidates(NamedTuple):
    """A query's candidates before fusion, with what the ranking needs to know about the query."""

    memories: dict[str, Memory]
    """The candidate memories by id."""
    candidates: list[Candidate]
    """Their raw features."""
    speakers: frozenset[str]
    """The speakers the query names (:func:`~context_manager.core.memory.ranking.named_speakers`)."""
    periods: frozenset[tuple[int | None, int | None]]
    """The months and years it names (:func:`~context_manager.core.memory.ranking.named_periods`)."""
    now: float
    """The clock when it was asked."""
    asks_when: bool = False
    """Whether it asks when (:func:`~context_manager.core.memory.ranking.asks_when`)."""


class MemorySearch(TierMovement):
    """``search_memory`` and ``search_by_tags``."""

    async def search_memory(
        self,
        query: str,
        limit: int = 10,
        *,
        tags: Sequence[str] | None = None,
        user_id: UserScope = None,
        tiers: Iterable[MemoryTier | str] | None = None,
        min_importance: float | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
    ) -> list[Memory]:
        """Find the memories most relevant to ``query``, best first, each with its ``score``.

        The query is plain text (FTS5 operators and quotes in it are ordinary characters). Results are
        ranked by BM25 fused with recency, importance, access frequency, conversation features and the
        vector channel (see :mod:`~context_manager.core.memory.ranking`), deduplicated across tiers.
        Superseded memories are hidden. Returned memories count as accessed (recorded in batches).

        Args:
            query: What to look for.
            limit: At most this many results (0 returns none).
            tags: Only memories carrying at least one of these tags, compared exactly as stored (case and
                Unicode form); ``None``: no filter, an empty list: no memory.
            user_id: Whose memories (``None``: the default namespace; :data:`ALL_USERS`: everyone's).
            tiers: Only these tiers.
            min_importance: Only memories at least this important.
            since: Only memories created at or after this time (epoch seconds or datetime).
            until: Only memories created at or before this time.

        Raises:
            InvalidMemoryError: a bad argument (non-string query, negative limit ...).
            LifecycleError: before ``initialize()`` or after ``close()``.
        """
        if not isinstance(query, str):
            raise InvalidMemoryError("query", query, "a string")
        limit = check_limit(limit)
        tag_filter = set(check_tags(tags)) if tags is not None else None
        check_user(user_id, allow_all=True)
        tier_filter = check_tiers(tiers)
        if min_importance is not None:
            min_importance = check_importance(min_importance, field="min_importance")
        since_ts = check_time(since, "since")
        until_ts = check_time(until, "until")
        self._require("search_memory")
        if limit == 0:
            return []
        gathered = await self._gather_candidates(
            query,
            max(self.ranking.candidates, 2 * limit),
            user_id=user_id,
            tiers=None if tier_filter is None else frozenset(tier_filter),
            tags=None if tag_filter is None else frozenset(tag_filter),
            min_importance=min_importance,
            since=since_ts,
            until=until_ts,
        )
        if gathered is None:
            return []
        weights = self.ranking
        half_life = weights.recency_half_life_days or self.config.recency_half_life_days
        now = gathered.now
        ranked = fuse(
            gathered.candidates,
            weights,
            now=now,
            half_life_days=half_life,
            query_speakers=gathered.speakers,
            query_periods=gathered.periods,
            query_asks_when=gathered.asks_when,
        )
        found = gathered.memories
        results = []
        for candidate in ranked[:limit]:
            results.append(self._record_access(found[candidate.id], now, candidate.score))
        if len(self._pending_touches) >= _TOUCH_BATCH:
            self._spawn(self._flush_touches())
        return results

    async def _gather_candidates(
        self,
        query: str,
        pool: int,
        *,
        user_id: UserScope = None,
        tiers: frozenset[MemoryTier] | None = None,
        tags: frozenset[str] | None = None,
        min_importance: float | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> GatheredCandidates | None:
        """The candidates of a (validated) query with their raw features, before fusion.

        Returns ``None`` when the query has no words. ``benchmarks/fit_ranking.py`` learns the fusion
        weights from these.
        """
        backend = self._require("search_memory")
        tokens = query_tokens(query, symbols=True)  # an emoji is a word of a search
        if not tokens:
            return None
        weights = self.ranking
        lexical = LexicalQuery(
            tokens=tuple(content_tokens(tokens) if weights.stop_words else tokens),
            limit=pool,
            scope=user_id,
            tiers=tiers,
            tags=tags,
            min_importance=min_importance,
            since=since,
            until=until,
            common_term_ratio=weights.common_term_ratio,
            common_term_min_documents=weights.common_term_min_documents,
            common_term_max_documents=weights.common_term_max_documents,
        )
        use_vectors = self.embedder is not None and weights.vector > 0 and backend.vector_count() > 0
        found: dict[str, tuple[Memory, float]] = {
            memory.id: (memory, bm25) for memory, bm25 in await backend.search(lexical)
        }
        keep = lexical.accepts

        cosines: dict[str, float] = {}
        query_vector: numpy.ndarray | None = None
        floor = 0.0
        contentless: numpy.ndarray | None = None
        if use_vectors:
            vector_query = query
            if weights.vector_query_without_speakers:
                # the speakers among the lexical candidates: a query naming a speaker matches their turns
                turn_speakers = {memory.speaker for memory, _ in found.values()}
                vector_query = without_speaker_names(query, (name for name in turn_speakers if name))
            chosen = weights.vector_min_similarity
            floor = similarity_floor(self.embedder) if chosen is None else chosen
            texts = [vector_query]
            known = self._contentless
            # with a floor, the embedder's vector of contentless text is made once, with the first query
            learn = floor > 0.0 and (known is None or known[0] is not self.embedder)
            if learn:
                texts.extend(CONTENTLESS_TEXTS)
            try:
                vectors = await self._embed(texts)
                query_vector = vectors[0]
                if learn:
                    known = self._contentless = (self.embedder, contentless_direction(vectors[1:]))
            except Exception as error:  # the words still answer
                embedder_failed(error, "this search ranks by words only")
            if floor > 0.0 and known is not None:
                contentless = known[1]
        if query_vector is not None:
            extra: dict[str, float] = {}
            for memory_id, cosine in await backend.nearest(query_vector, user_id, pool):
                cosines[memory_id] = cosine
                # a nearest neighbour that matched no word joins only if it is similar enough (0: always)
                if memory_id not in found and (floor <= 0.0 or cosine >= floor):
                    extra[memory_id] = cosine
            cosines.update(await backend.similarities(query_vector, [i for i in found if i not in cosines]))
            if extra and contentless is not None:
                # and closer to the query than to text that says nothing: under MiniLM a short query is as
                # close to any short memory ("seats" to "qwerty": 0.31), closer still to contentless text
                noise = await backend.similarities(contentless, list(extra))
                extra = {i: cosine for i, cosine in extra.items() if cosine > noise.get(i, -1.0)}
            if extra:
                for memory in (await self._get_many(list(extra))).values():
                    if keep(memory):
                        found[memory.id] = (memory, 0.0)

        if weights.neighbour_context and found:
            await self._add_neighbours(found, keep)

        when = weights.time > 0 and asks_when(query)
        candidates = [
            self._candidate(memory, bm25, cosines.get(memory.id), when) for memory, bm25 in found.values()
        ]
        speakers = named_speakers(tokens) if weights.speaker_boost else frozenset()
        periods = named_periods(query) if weights.period > 0 else frozenset()
        now = self._clock()
        if weights.feedback > 0 and candidates:
            candidates = await self._feedback_pass(
                lexical, found, candidates, speakers, periods, now, query_vector, when
            )
        memories = {memory_id: pair[0] for memory_id, pair in found.items()}
        return GatheredCandidates(memories, candidates, speakers, periods, now, when)

    async def _feedback_pass(
        self,
        lexical: LexicalQuery,
        found: dict[str, tuple[Memory, float]],
        candidates: list[Candidate],
        speakers: frozenset[str],
        periods: frozenset[tuple[int | None, int | None]],
        now: float,
        query_vector: numpy.ndarray | None,
        when: bool,
    ) -> list[Candidate]:
        """Pseudo-relevance feedback: score the question plus the rarest words of its best hits.

        A row's BM25 is a sum over the query's words, so the expanded question's score is the first pass's
        plus that of a second query of the added words alone: rare words, a cheap query (the whole expanded
        question again cost as much as the first pass). Every candidate gets that sum as its ``feedback``;
        the memories only the second query finds join the candidates (adds ``found`` entries with a
        first-pass BM25 of 0). Only the best hits
        that are conversation turns lend words; skipped when there are none, and in a store of fewer than
        ``feedback_min_memories`` memories.
        """
        if all(candidate.session is None for candidate in candidates):
            return candidates  # no conversation turn to lend words (see below): spare the first-pass fusion
        backend = self._require("search_memory")
        weights = self.ranking
        ranked = fuse(
            candidates,
            weights,
            now=now,
            half_life_days=weights.recency_half_life_days or self.config.recency_half_life_days,
            query_speakers=speakers,
            query_periods=periods,
            query_asks_when=when,
        )
        # conversation turns only: the feedback query was learned and measured on conversations (the other
        # half of a multi-hop answer is another turn); elsewhere it would cost a second query unvalidated
        best = [c for c in ranked[: weights.feedback_hits] if c.score > 0 and c.session is not None]
        # each word as the terms the index holds (a Chinese or Japanese run as its pairs): a run's whole
        # sentence is no term, so it was in no memory and lent nothing
        hit_words = [
            segment_tokens(
                content_tokens(query_tokens(found[c.id][0].content, limit=_HIT_WORDS)), limit=_HIT_WORDS
            )
            for c in best
        ]
        words = list(dict.fromkeys(word for words in hit_words for word in words))
        if not words:
            return candidates
        frequencies, total = await backend.term_frequencies(words)
        if total < weights.feedback_min_memories:
            return candidates
        expansion = feedback_terms(
            hit_words,
            segment_tokens(lexical.tokens),
            frequencies,
            total,
            weights.feedback_terms,
            weights.feedback_min_documents,
        )
        if not expansion:
            return candidates
        hits = await backend.search(replace(lexical, tokens=tuple(expansion)))
        feedback = {memory.id: bm25 for memory, bm25 in hits}
        new = [memory for memory, _ in hits if memory.id not in found and lexical.accepts(memory)]
        cosines: dict[str, float] = {}
        if new and query_vector is not None:
            cosines = await backend.similarities(query_vector, [memory.id for memory in new])
        for candidate in candidates:  # the added words' share plus the question's own (its first-pass BM25)
            candidate.feedback = feedback.get(candidate.id, 0.0) + candidate.bm25
        for memory in new:
            found[memory.id] = (memory, 0.0)
            candidate = self._candidate(memory, 0.0, cosines.get(memory.id), when)
            candidate.feedback = feedback[memory.id]
            candidates.append(candidate)
        return candidates

    def _candidate(self, memory: Memory, bm25: float, cosine: float | None, when: bool) -> Candidate:
        """The ranking candidate of ``memory``.

        ``when``: the query asks when; only then is the text looked at for a stated time
        (:func:`~context_manager.core.memory.ranking.mentions_time`).
        """
        pending = self._pending_touches.get(memory.id)
        metadata = memory.metadata
        session_id = memory.session_id if "session_id" in metadata else None
        turn_index = memory.turn_index if "turn_index" in metadata else None
        date = metadata.get("session_date")
        timestamp = parse_session_date(str(date)) if date else None
        if timestamp is None:
            timestamp = memory.created_at
        elif turn_index is not None:
            timestamp += turn_index  # later turns of one session are slightly newer
        return Candidate(
            id=memory.id,
            bm25=bm25,
            cosine=cosine,
            importance=memory.importance,
            timestamp=timestamp,
            access_count=max(memory.access_count, pending[1]) if pending else memory.access_count,
            session=None if session_id is None else (memory.user_id, session_id),
            turn_index=turn_index,
            speaker=memory.speaker if "speaker" in metadata else None,
            states_time=when and mentions_time(memory.content),
        )

    async def _add_neighbours(
        self, found: dict[str, tuple[Memory, float]], keep: Callable[[Memory], bool]
    ) -> None:
        present: set[TurnKey] = set()
        for memory, _ in found.values():
            session_id, turn_index = memory.session_id, memory.turn_index
            if session_id is not None and turn_index is not None:
                present.add((memory.user_id, session_id, turn_index))
        wanted: list[TurnKey] = []
        for memory, bm25 in found.values():
            session_id, turn_index = memory.session_id, memory.turn_index
            if bm25 <= 0 or session_id is None or turn_index is None:
                continue
            for neighbour in (turn_index - 1, turn_index + 1):
                key = (memory.user_id, session_id, neighbour)
                if key not in present:
                    present.add(key)
                    wanted.append(key)
        if not wanted:
            return
        neighbours = await self._require("search_memory").find_turns(wanted)
        for memory in neighbours:
            if memory.id not in found and keep(memory):
                found[memory.id] = (memory, 0.0)

    def _record_access(self, memory: Memory, now: float, score: float) -> Memory:
        pending = self._pending_touches.get(memory.id)
        count = max(memory.access_count, pending[1] if pending else 0) + 1
        added = (pending[2] if pending else 0) + 1  # this process's accesses since the last batch
        self._pending_touches[memory.id] = (now, count, added, memory.user_id)
        if memory.tier is not MemoryTier.LONG:
            self._touched_volatile.add(memory.id)
            memory.access_count = count  # the in-process object; persisted with the next batch
            memory.last_accessed = now
        return memory.copy(access_count=count, last_accessed=now, score=score)

    async def search_by_tags(
        self,
        tags: Sequence[str],
        match: Literal["any", "all"] = "any",
        limit: int = 10,
        *,
        user_id: UserScope = None,
        tiers: Iterable[MemoryTier | str] | None = None,
    ) -> list[Memory]:
        """Return memories carrying ``any`` (or ``all``) of ``tags``, most important and newest first.

        Tags are compared exactly as stored (case and Unicode form: "Roadmap" does not find "roadmap").

        Raises:
            InvalidMemoryError: bad tags, match mode, limit, user or tiers.
        """
        wanted = check_tags(tags)
        if tags is None or not wanted:
            raise InvalidMemoryError("tags", tags, "a non-empty list of strings")
        if match not in ("any", "all"):
            raise InvalidMemoryError("match", match, "'any' or 'all'")
        limit = check_limit(limit)
        check_user(user_id, allow_all=True)
        tier_filter = check_tiers(tiers)
        backend = self._require("search_by_tags")
        if limit == 0:
            return []
        found = await backend.with_tags(
            wanted, user_id, None if tier_filter is None else frozenset(tier_filter)
        )
        required = set(wanted)
        selected = [
            memory
            for memory in found
            if memory.superseded_by is None
            and (user_id is ALL_USERS or memory.user_id == user_id)
            and (tier_filter is None or memory.tier in tier_filter)
            and (match == "any" or required.issubset(memory.tags))
        ]
        selected.sort(key=lambda m: (-m.importance, -m.created_at, m.id))  # ties: the same on every backend
        return [memory.copy() for memory in selected[:limit]]

    async def recent_memories(self, limit: int = 10, *, user_id: UserScope = None) -> list[Memory]:
        """Return the user's ``limit`` newest memories, newest first (merged originals left out).

        A listing, not a search: it does not count as an access. Each memory appears once, from its
        fastest tier. The long-term tier answers from an index, so the cost does not grow with the store.

        Raises:
            InvalidMemoryError: a bad limit or user.
        """
        limit = check_limit(limit)
        check_user(user_id, allow_all=True)
        backend = self._require("recent_memories")
        if limit == 0:
            return []
        return [memory.copy() for memory in await backend.newest(user_id, limit)]
