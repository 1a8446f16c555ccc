"""Ranked search (``MemoryManager.search_memory``) and tag search across the three tiers.

Lexical candidates come from one FTS5 BM25 engine per tier (comparable scores), the vector channel adds
its nearest neighbours, conversation neighbours join, and :func:`~context_manager.core.memory.ranking.fuse`
orders them. Returned memories count as accessed; those updates are written in batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.index import Stemmer, build_match, owner_token, query_tokens
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.memory.ranking import (
    Candidate,
    fuse,
    idf_corrections,
    named_speakers,
    parse_session_date,
    prune_common_terms,
    uniform_correction,
)
from context_manager.core.memory.state import UserScope
from context_manager.core.memory.store import MemoryStore, TurnKey
from context_manager.core.memory.tiers import TierMovement
from context_manager.core.memory.validation import (
    check_importance,
    check_limit,
    check_tags,
    check_tiers,
    check_time,
    check_user,
)

__all__ = ["MemorySearch"]

if TYPE_CHECKING:
    from context_manager.core.memory.sqlite_store import SQLiteStore

_T = TypeVar("_T")
_TOUCH_BATCH = 256
_INLINE_POSTINGS = 5000  # long-term queries scoring fewer postings run on the loop when its lock is free


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
            tags: Only memories carrying at least one of these tags.
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
        short, medium, long_store = self._stores("search_memory")
        tokens = query_tokens(query)
        if limit == 0 or not tokens:
            return []
        weights = self.ranking
        # the owner clause costs a join with a long doclist: skip it while only this owner has memories
        single_owner = user_id is not ALL_USERS and self._owners <= {user_id}
        owner = None if user_id is ALL_USERS or single_owner else owner_token(user_id)
        filtered = bool(tag_filter or min_importance is not None or since_ts or until_ts)
        pool = max(weights.candidates, 2 * limit) * (4 if filtered else 1)
        search_long = tier_filter is None or MemoryTier.LONG in tier_filter
        stems = self._stems(tokens)
        # per-tier document frequencies: an index seek per word, bounded and fast, so on the loop; the
        # long-term store's only while its lock is free (a writer thread may hold it for a long commit)
        long_counts: dict[str, int] | None = None
        if search_long:  # an index seek per word: inline unless a writer holds the store
            long_counts = await _read_long(long_store, long_store.document_frequencies, stems)
        tier_totals = {short.tier: short.count(), medium.tier: medium.count()}
        tier_frequencies = {
            short.tier: short.document_frequencies(stems),
            medium.tier: medium.document_frequencies(stems),
        }
        if long_counts is not None:
            tier_totals[MemoryTier.LONG] = long_store.count()
            tier_frequencies[MemoryTier.LONG] = long_counts
        frequencies: dict[str, int] = {}
        for tier_counts in tier_frequencies.values():
            for term, count in tier_counts.items():
                frequencies[term] = frequencies.get(term, 0) + count
        total = sum(tier_totals.values())
        kept = prune_common_terms(
            tokens,
            stems,
            frequencies,
            total,
            weights.common_term_ratio,
            weights.common_term_min_documents,
            weights.common_term_max_documents,
        )
        stem_of = dict(zip(tokens, stems, strict=True))
        match = build_match(kept, owner)

        def tier_search(store: MemoryStore) -> list[tuple[Memory, float]]:
            """BM25 candidates of one tier, scored with the IDF of every tier searched (comparable)."""
            corrections = idf_corrections(
                [stem_of[token] for token in kept],
                tier_frequencies[store.tier],
                tier_totals[store.tier],
                frequencies,
                total,
            )
            factor = uniform_correction(corrections)
            if factor is not None:
                return [(memory, bm25 * factor) for memory, bm25 in store.search(match, pool)]
            parts = [(build_match([token], owner), corrections.get(stem_of[token], 1.0)) for token in kept]
            return store.search_weighted(parts, pool)

        def keep(memory: Memory) -> bool:
            if memory.superseded_by is not None:
                return False
            if user_id is not ALL_USERS and memory.user_id != user_id:
                return False
            if tier_filter is not None and memory.tier not in tier_filter:
                return False
            if tag_filter is not None and tag_filter.isdisjoint(memory.tags):
                return False
            if min_importance is not None and memory.importance < min_importance:
                return False
            if since_ts is not None and memory.created_at < since_ts:
                return False
            return not (until_ts is not None and memory.created_at > until_ts)

        use_vectors = self.embedder is not None and weights.vector > 0 and bool(self._vectors)
        long_hits: list[tuple[Memory, float]] = []
        if search_long:
            long_frequencies = tier_frequencies[MemoryTier.LONG]
            postings = sum(long_frequencies.get(stem_of[token], 0) for token in kept)
            if long_frequencies and postings <= _INLINE_POSTINGS:
                # scoring a few thousand postings takes well under a millisecond: cheaper than a thread hop
                long_hits = await _read_long(long_store, tier_search, long_store)
            else:
                long_hits = await asyncio.to_thread(tier_search, long_store)
        query_vector = (await self._embed([query]))[0] if use_vectors else None
        found: dict[str, tuple[Memory, float]] = {}
        for store in (short, medium):
            if tier_filter is not None and store.tier not in tier_filter:
                continue
            for memory, bm25 in tier_search(store):
                if keep(memory):
                    found[memory.id] = (memory, bm25)
        for memory, bm25 in long_hits:
            if not keep(memory):
                continue
            previous = found.get(memory.id)
            if previous is None:
                found[memory.id] = (memory, bm25)
            elif bm25 > previous[1]:
                found[memory.id] = (previous[0], bm25)  # keep the fastest tier's copy

        cosines: dict[str, float] = {}
        if query_vector is not None:
            indexes = self._vectors.values() if owner is None else [self._vectors.get(owner)]
            extra: list[str] = []
            for index in indexes:
                if index is None:
                    continue
                for memory_id, cosine in index.search(query_vector, pool):
                    cosines[memory_id] = cosine
                    if memory_id not in found:
                        extra.append(memory_id)
                cosines.update(index.scores_for(query_vector, [i for i in found if i not in cosines]))
            if extra:
                for memory in (await self._get_many(extra)).values():
                    if keep(memory):
                        found[memory.id] = (memory, 0.0)

        if weights.neighbour_context and found:
            await self._add_neighbours(found, keep)

        now = self._clock()
        half_life = weights.recency_half_life_days or self.config.recency_half_life_days
        candidates = [
            self._candidate(memory, bm25, cosines.get(memory.id)) for memory, bm25 in found.values()
        ]
        ranked = fuse(
            candidates,
            weights,
            now=now,
            half_life_days=half_life,
            query_speakers=named_speakers(tokens) if weights.speaker_boost else frozenset(),
        )
        results = []
        for candidate in ranked[:limit]:
            memory = found[candidate.id][0]
            results.append(self._record_access(memory, now, candidate.score))
        if len(self._pending_touches) >= _TOUCH_BATCH:
            self._spawn(self._flush_touches())
        return results

    def _stems(self, tokens: Sequence[str]) -> list[str]:
        if self._stemmer is None:
            self._stemmer = Stemmer()
        return self._stemmer.stems(tokens)

    def _candidate(self, memory: Memory, bm25: float, cosine: float | None) -> Candidate:
        pending = self._pending_touches.get(memory.id)
        session_id = memory.session_id
        timestamp = parse_session_date(memory.session_date) if memory.session_date else None
        if timestamp is None:
            timestamp = memory.created_at
        elif memory.turn_index is not None:
            timestamp += memory.turn_index  # later turns of one session are slightly newer
        return Candidate(
            id=memory.id,
            bm25=bm25,
            cosine=cosine,
            importance=memory.importance,
            timestamp=timestamp,
            access_count=max(memory.access_count, pending[1] if pending else 0),
            session=None if session_id is None else (memory.user_id, session_id),
            turn_index=memory.turn_index,
            speaker=memory.speaker,
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
        short, medium, long_store = self._stores("search_memory")
        neighbours = short.find_turns(wanted) + medium.find_turns(wanted)
        neighbours += await asyncio.to_thread(long_store.find_turns, wanted)
        for memory in neighbours:
            if memory.id not in found and keep(memory):
                found[memory.id] = (memory, 0.0)

    def _record_access(self, memory: Memory, now: float, score: float) -> Memory:
        pending = self._pending_touches.get(memory.id)
        count = max(memory.access_count, pending[1] if pending else 0) + 1
        self._pending_touches[memory.id] = (now, count)
        if memory.tier is not MemoryTier.LONG:
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
        short, medium, long_store = self._stores("search_by_tags")
        if limit == 0:
            return []
        found: dict[str, Memory] = {}
        if tier_filter is None or MemoryTier.LONG in tier_filter:
            for memory in await asyncio.to_thread(long_store.with_tags, wanted):
                found[memory.id] = memory
        for store in (medium, short):
            if tier_filter is None or store.tier in tier_filter:
                for memory in store.with_tags(wanted):
                    found[memory.id] = memory
        required = set(wanted)
        selected = [
            memory
            for memory in found.values()
            if memory.superseded_by is None
            and (user_id is ALL_USERS or memory.user_id == user_id)
            and (tier_filter is None or memory.tier in tier_filter)
            and (match == "any" or required.issubset(memory.tags))
        ]
        selected.sort(key=lambda m: (-m.importance, -m.created_at))
        return [memory.copy() for memory in selected[:limit]]


async def _read_long(store: SQLiteStore, read: Callable[..., _T], *args: Any) -> _T:
    """Run a short read of the long-term store on the loop when its lock is free, else in a thread.

    The loop never waits on the lock: a writer thread holding it for a long transaction would stall it.
    """
    with store.held_if_free() as free:
        if free:
            return read(*args)
    return await asyncio.to_thread(read, *args)
