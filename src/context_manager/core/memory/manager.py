"""``MemoryManager``: three durable tiers behind one async API with ranked search.

Placement and movement:

* a new memory enters the short-term tier (in process, journaled to the medium-term log so it survives
  a crash); one with ``importance >= config.long_term_importance_threshold`` is also written to the
  long-term database at once. An explicit ``tier=`` puts it in that tier only.
* when the short-term tier overflows, its least valuable memories (importance, recency, access count)
  move to the medium-term tier (or are dropped from short-term if they already have a long-term copy);
  when the medium-term tier overflows, its least valuable memories move to the long-term database.
* memories searched often (``promotion_access_count`` hits) and consolidated memories move up to the
  long-term tier.
* the long-term capacity is a soft limit: going over it logs a warning and shows in the stats, because
  nothing leaves the system except through :meth:`MemoryManager.cleanup_old_memories` or
  :meth:`MemoryManager.delete_memory`, which both report what they removed.

Every acknowledged write is durable: the journal line is flushed to the OS (fsynced with
``config.fsync``) and long-term writes are committed in WAL mode before the call returns. A lock file
(``storage_path/.lock``, holding pid and host) stops a second process from opening the same storage:
it gets :class:`~context_manager.core.errors.StorageLockedError`.

Example:
    >>> async with MemoryManager(ContextManagerConfig(storage_path="/tmp/mem")) as memory:
    ...     await memory.add_memory("Paris is the capital of France", importance=0.8, tags=["geo"])
    ...     results = await memory.search_memory("capital of france")
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import (
    InvalidArgumentError,
    InvalidMemoryError,
    LifecycleError,
    MemoryNotFoundError,
    StorageError,
)
from context_manager.core.memory.consolidation import near_duplicate_groups
from context_manager.core.memory.file_store import LOG_FILE_NAME, FileStore, JsonlLog
from context_manager.core.memory.in_memory_store import InMemoryStore
from context_manager.core.memory.index import Stemmer, VectorIndex, build_match, owner_token, query_tokens
from context_manager.core.memory.locking import (
    LOCK_FILE_NAME,
    acquire_lock,
    make_private_directory,
    release_lock,
)
from context_manager.core.memory.models import ALL_USERS, AllUsers, Memory, MemoryTier, new_memory_id
from context_manager.core.memory.ranking import (
    Candidate,
    RankingWeights,
    fuse,
    named_speakers,
    parse_session_date,
    prune_common_terms,
    recency_decay,
)
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME, SQLiteStore
from context_manager.core.memory.store import TurnKey
from context_manager.core.memory.validation import (
    check_content,
    check_importance,
    check_limit,
    check_metadata,
    check_path,
    check_tags,
    check_tier,
    check_tiers,
    check_time,
    check_user,
    json_safe,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy

    from context_manager.core.memory.embeddings import Embedder
    from context_manager.core.messages import Message

__all__ = ["ALL_USERS", "AllUsers", "MemoryManager"]

logger = logging.getLogger(__name__)

_TOUCH_BATCH = 256
_SHRINK_TO = 0.9  # an overflowing tier is brought down to 90 % of its capacity in one batch
_IMPORT_BATCH = 2000
_INLINE_POSTINGS = 5000  # long-term queries scoring fewer postings run on the loop (no thread hop)


UserScope = str | None | AllUsers
Clock = Callable[[], float]


class MemoryManager:
    """Three memory tiers (short, medium, long) with ranked search, consolidation and cleanup.

    Args:
        config: Settings (``storage_path``, tier sizes, long-term threshold, recency half-life, fsync).
        embedder: Optional :class:`~context_manager.core.memory.embeddings.Embedder` for the vector
            channel (e.g. ``SentenceTransformerEmbedder()``); lexical search only when ``None``.
        ranking: Ranking weights and feature switches (defaults are the best measured).
        clock: Returns the current time in seconds since the epoch (``time.time`` by default).
        promotion_access_count: Search hits after which a memory moves up to the long-term tier.
    """

    def __init__(
        self,
        config: ContextManagerConfig | None = None,
        *,
        embedder: Embedder | None = None,
        ranking: RankingWeights | None = None,
        clock: Clock | None = None,
        promotion_access_count: int = 5,
    ) -> None:
        if config is not None and not isinstance(config, ContextManagerConfig):
            raise InvalidArgumentError("config", config, "a ContextManagerConfig or None")
        if ranking is not None and not isinstance(ranking, RankingWeights):
            raise InvalidArgumentError("ranking", ranking, "a RankingWeights or None")
        if embedder is not None and not (hasattr(embedder, "embed") and hasattr(embedder, "dimension")):
            raise InvalidArgumentError("embedder", embedder, "an Embedder (dimension, embed(texts)) or None")
        if clock is not None and not callable(clock):
            raise InvalidArgumentError("clock", clock, "a callable returning seconds since the epoch")
        if (
            isinstance(promotion_access_count, bool)
            or not isinstance(promotion_access_count, int)
            or (promotion_access_count < 1)
        ):
            raise InvalidArgumentError("promotion_access_count", promotion_access_count, "an integer >= 1")
        self.config = config if config is not None else ContextManagerConfig()
        """The settings (read at ``initialize()``)."""
        self.ranking = ranking if ranking is not None else RankingWeights()
        """The ranking weights in force."""
        self.embedder = embedder
        """The embedder of the vector channel, or ``None``."""
        self.promotion_access_count = promotion_access_count
        """Search hits after which a memory moves up to the long-term tier."""
        self._clock: Clock = clock if clock is not None else time.time
        self._state: Literal["new", "ready", "closed"] = "new"
        self._path: Path | None = None
        self._lock_fd: int | None = None
        self._log: JsonlLog | None = None
        self._short: InMemoryStore | None = None
        self._medium: FileStore | None = None
        self._long: SQLiteStore | None = None
        self._write_lock = asyncio.Lock()
        self._pending_touches: dict[str, tuple[float, int]] = {}
        self._long_copies: set[str] = set()  # short-term ids that also have a long-term copy
        self._last_turn: dict[tuple[str | None, str], tuple[int, str]] = {}
        self._vectors: dict[str, VectorIndex] = {}
        self._stemmer: Stemmer | None = None
        self._owners: set[str | None] = set()  # every user_id that ever had a memory here (superset)
        self._background: set[asyncio.Task[None]] = set()
        self._over_capacity_warned = False
        self._compacting = False
        self._turn_counters: dict[tuple[str | None, str], int] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def storage_path(self) -> Path:
        """The directory holding the log, the database and the lock file."""
        return self._path if self._path is not None else self.config.resolved_storage_path

    @property
    def is_initialized(self) -> bool:
        """True between ``initialize()`` and ``close()``."""
        return self._state == "ready"

    async def initialize(self) -> None:
        """Open (creating if needed) the storage, replay the log and rebuild the volatile tiers.

        Calling it again on an open manager does nothing.

        Raises:
            StorageLockedError: another process holds ``storage_path``.
            StorageCorruptedError: the log or the database is damaged (nothing is overwritten).
            StorageError: the directory cannot be created or a file cannot be opened.
            LifecycleError: the manager was closed.
        """
        if self._state == "ready":
            return
        if self._state == "closed":
            raise LifecycleError("initialize: this MemoryManager was closed; create a new one")
        path = self.config.resolved_storage_path
        await asyncio.to_thread(make_private_directory, path)
        self._path = path
        self._lock_fd = await asyncio.to_thread(acquire_lock, path / LOCK_FILE_NAME)
        try:
            await asyncio.to_thread(self._open_stores, path)
            if self.embedder is not None:
                await self._load_vectors()
        except BaseException:
            self._close_stores()
            release_lock(self._lock_fd)
            self._lock_fd = None
            raise
        self._state = "ready"
        await self._rebalance()
        logger.debug("memory opened at %s", path)

    def _open_stores(self, path: Path) -> None:
        weights = self.ranking.effective_columns
        long_store = SQLiteStore(path / DATABASE_FILE_NAME, fsync=self.config.fsync, weights=weights)
        self._long = long_store
        long_store.open()
        log = JsonlLog(path / LOG_FILE_NAME, fsync=self.config.fsync)
        self._log = log
        live = log.open()
        self._short = InMemoryStore(MemoryTier.SHORT, journal=log, weights=weights)
        self._medium = FileStore(log, weights=weights)
        short = [memory for memory in live.values() if memory.tier is MemoryTier.SHORT]
        medium = [memory for memory in live.values() if memory.tier is not MemoryTier.SHORT]
        self._short.load(short)
        self._medium.load(medium)
        self._owners = {memory.user_id for memory in live.values()} | long_store.owners()
        if short:
            self._long_copies = set(long_store.get_many([memory.id for memory in short]))

    def _close_stores(self) -> None:
        if self._stemmer is not None:
            self._stemmer.close()
            self._stemmer = None
        for store in (self._short, self._medium):
            if store is not None:
                store.close()
        if self._log is not None:
            self._log.close()
        if self._long is not None:
            self._long.close()

    async def close(self) -> None:
        """Finish background work, persist pending access updates, close files and release the lock.

        Safe to call more than once.
        """
        if self._state != "ready":
            self._state = "closed"
            return
        await self._drain_background()
        try:
            async with self._write_lock:
                await self._flush_touches_locked()
        finally:
            self._state = "closed"
            await asyncio.to_thread(self._close_stores)
            release_lock(self._lock_fd)
            self._lock_fd = None
            logger.debug("memory closed")

    async def __aenter__(self) -> MemoryManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _stores(self, operation: str) -> tuple[InMemoryStore, FileStore, SQLiteStore]:
        if self._state == "ready" and self._short and self._medium and self._long:
            return self._short, self._medium, self._long
        if self._state == "new":
            raise LifecycleError(
                f"{operation}: the memory manager is not initialized; call `await initialize()` first"
            )
        raise LifecycleError(f"{operation}: the memory manager was closed; create a new one")

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("memory background task failed: %s", task.exception())

    async def _drain_background(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # --- adding ----------------------------------------------------------------------------------

    async def add_memory(
        self,
        content: str,
        importance: float = 0.5,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        tier: MemoryTier | str | None = None,
        *,
        source: str = "api",
    ) -> Memory:
        """Store a memory durably and return it.

        Args:
            content: The text to remember (non-empty).
            importance: 0 (trivial) to 1 (critical); at ``config.long_term_importance_threshold`` or
                above the memory is also written to the long-term tier at once.
            tags: Labels for :meth:`search_by_tags`.
            metadata: JSON-serialisable data; conversation turns pass ``session_id``, ``turn_index``,
                ``speaker`` and ``session_date``, which search uses.
            user_id: The owner (``None``: the default namespace).
            tier: Put the memory in this tier only (``"short"``, ``"medium"``, ``"long"``).
            source: Where it comes from (``"api"``, ``"context"`` ...).

        Returns:
            A copy of the stored memory (changing it changes nothing stored).

        Raises:
            InvalidMemoryError: a bad argument; nothing is stored.
            StorageError: the write failed.
            LifecycleError: before ``initialize()`` or after ``close()``.
        """
        memory = self._build_memory(content, importance, tags, metadata, user_id, tier, source)
        explicit_tier = None if tier is None else MemoryTier.parse(tier)
        memories = await self._add_many([(memory, explicit_tier)])
        return memories[0].copy()

    async def add_memories(self, items: Sequence[Mapping[str, Any]]) -> list[Memory]:
        """Store several memories at once (one journal write, one transaction).

        Args:
            items: Dicts of :meth:`add_memory` keyword arguments (``content`` required).

        Raises:
            InvalidMemoryError: any item is bad; nothing is stored.
        """
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise InvalidMemoryError("items", items, "a list of dicts of add_memory arguments")
        prepared: list[tuple[Memory, MemoryTier | None]] = []
        allowed = {"content", "importance", "tags", "metadata", "user_id", "tier", "source"}
        for item in items:
            if not isinstance(item, Mapping) or "content" not in item or not set(item) <= allowed:
                raise InvalidMemoryError(
                    "items",
                    item,
                    "dicts with 'content' and optional " + ", ".join(sorted(allowed - {"content"})),
                )
            memory = self._build_memory(
                item["content"],
                item.get("importance", 0.5),
                item.get("tags"),
                item.get("metadata"),
                item.get("user_id"),
                item.get("tier"),
                item.get("source", "api"),
            )
            tier = item.get("tier")
            prepared.append((memory, None if tier is None else MemoryTier.parse(tier)))
        memories = await self._add_many(prepared)
        return [memory.copy() for memory in memories]

    def _build_memory(
        self,
        content: Any,
        importance: Any,
        tags: Any,
        metadata: Any,
        user_id: Any,
        tier: Any,
        source: Any,
    ) -> Memory:
        check_content(content)
        importance = check_importance(importance)
        tag_list = check_tags(tags)
        metadata_dict = check_metadata(metadata)
        check_user(user_id, allow_all=False)
        if tier is not None:
            check_tier(tier)
        if not isinstance(source, str) or not source:
            raise InvalidMemoryError("source", source, "a non-empty string")
        now = self._clock()
        self._owners.add(user_id)
        return Memory(
            id=new_memory_id(),
            content=content,
            importance=importance,
            tags=tag_list,
            created_at=now,
            last_accessed=now,
            metadata=metadata_dict,
            user_id=user_id,
            source=source,
        )

    async def _add_many(self, items: Sequence[tuple[Memory, MemoryTier | None]]) -> list[Memory]:
        short, medium, long_store = self._stores("add_memory")
        threshold = self.config.long_term_importance_threshold
        async with self._write_lock:
            for memory, _ in items:
                self._attach_context(memory)
            to_short = [m for m, tier in items if tier in (None, MemoryTier.SHORT)]
            to_medium = [m for m, tier in items if tier is MemoryTier.MEDIUM]
            to_long = [m for m, tier in items if tier is MemoryTier.LONG]
            copies = [m.copy() for m, tier in items if tier is None and m.importance >= threshold]
            if to_long or copies:
                await asyncio.to_thread(long_store.put, to_long + copies)
                self._long_copies.update(copy.id for copy in copies)
            # The journal write is one small buffered write() of whole lines: it stays on the loop.
            if to_short:
                short.put(to_short)
            if to_medium:
                medium.put(to_medium)
            if self.embedder is not None:
                await self._embed_and_store([m for m, _ in items])
            overflowing = (
                short.count() > self.config.short_term_memory_size
                or medium.count() > self.config.medium_term_memory_size
            )
        if overflowing:
            if short.count() > self.config.short_term_memory_size:
                async with self._write_lock:
                    self._move_short_overflow()
            if medium.count() > self.config.medium_term_memory_size:
                self._spawn(self._rebalance())
        self._maybe_compact()
        return [memory for memory, _ in items]

    def _attach_context(self, memory: Memory) -> None:
        """Index the previous turn of the same session with a conversation turn (low-weight column)."""
        session_id, turn_index = memory.session_id, memory.turn_index
        if session_id is None or turn_index is None:
            return
        key = (memory.user_id, session_id)
        previous = self._last_turn.get(key)
        if previous is not None and previous[0] == turn_index - 1 and not memory.context:
            memory.context = previous[1]
        if previous is None or turn_index >= previous[0]:
            self._last_turn[key] = (turn_index, memory.content[:300])
            if len(self._last_turn) > 10_000:
                self._last_turn.pop(next(iter(self._last_turn)))

    async def remember_messages(
        self,
        messages: Sequence[Message],
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        session_date: str | None = None,
    ) -> list[Memory]:
        """Write messages (e.g. evicted by compression) to the medium-term tier, durably.

        Each becomes a memory with ``source="context"`` and metadata ``role``, ``message_id``,
        ``timestamp``, ``session_id``, ``turn_index`` (taken from the message metadata, else counted per
        session in timestamp order), ``speaker`` (the message's name or role) and ``session_date`` (from
        the message metadata, else the message's date). Priority maps to importance (low 0.3, normal
        0.5, high 0.7, critical 0.9). Empty messages are skipped.
        """
        items: list[tuple[Memory, MemoryTier | None]] = []
        session = session_id if session_id is not None else "default"
        for message in sorted(messages, key=lambda m: m.timestamp):
            if not message.content.strip():
                continue
            message_metadata = dict(message.metadata)
            turn_key = (user_id, str(message_metadata.get("session_id", session)))
            turn_index = self._turn_counters.get(turn_key, 0)
            self._turn_counters[turn_key] = turn_index + 1
            metadata: dict[str, Any] = {
                **message_metadata,
                "role": message.role.value,
                "message_id": message.id,
                "timestamp": message.timestamp,
            }
            metadata.setdefault("session_id", session)
            metadata.setdefault("turn_index", turn_index)
            metadata.setdefault("speaker", message.name or message.role.value)
            date = message_metadata.get("session_date", session_date)
            if date is None:
                date = datetime.fromtimestamp(message.timestamp).date().isoformat()
            metadata["session_date"] = date
            priority = getattr(message.priority, "value", "normal")
            importance = {"low": 0.3, "normal": 0.5, "high": 0.7, "critical": 0.9}.get(priority, 0.5)
            memory = self._build_memory(
                message.content,
                importance,
                None,
                json_safe(metadata),
                user_id,
                MemoryTier.MEDIUM,
                "context",
            )
            memory.created_at = message.timestamp
            items.append((memory, MemoryTier.MEDIUM))
        if not items:
            return []
        return [memory.copy() for memory in await self._add_many(items)]

    # --- vectors ---------------------------------------------------------------------------------

    def _embedding_model(self) -> str:
        embedder = self.embedder
        assert embedder is not None
        name = getattr(embedder, "model_name", None) or getattr(embedder, "model_path", None)
        return f"{type(embedder).__name__}:{name or ''}:{embedder.dimension}"

    async def _embed(self, texts: list[str]) -> numpy.ndarray:
        assert self.embedder is not None
        return await asyncio.to_thread(self.embedder.embed, texts)

    async def _embed_and_store(self, memories: Sequence[Memory]) -> None:
        if not memories or self.embedder is None:
            return
        vectors = await self._embed([memory.content for memory in memories])
        for memory, vector in zip(memories, vectors, strict=True):
            index = self._vectors.get(owner_token(memory.user_id))
            if index is None:
                index = self._vectors[owner_token(memory.user_id)] = VectorIndex(int(vectors.shape[1]))
            index.add([memory.id], vector[None, :])
        assert self._long is not None
        await asyncio.to_thread(
            self._long.save_vectors, self._embedding_model(), [m.id for m in memories], vectors
        )

    async def _load_vectors(self) -> None:
        assert self.embedder is not None and self._long is not None
        dimension = int(self.embedder.dimension)
        ids, matrix = await asyncio.to_thread(self._long.load_vectors, self._embedding_model(), dimension)
        vectors = dict(zip(ids, range(len(ids)), strict=True))
        owners: dict[str, str] = {}
        missing: list[Memory] = []
        memories = await asyncio.to_thread(self._all_memories)
        for memory in memories:
            owners[memory.id] = owner_token(memory.user_id)
            if memory.id not in vectors:
                missing.append(memory)
        for memory_id, row in vectors.items():
            owner = owners.get(memory_id)
            if owner is None:
                continue
            index = self._vectors.get(owner)
            if index is None:
                index = self._vectors[owner] = VectorIndex(dimension)
            index.add([memory_id], matrix[row : row + 1])
        for start in range(0, len(missing), 512):
            await self._embed_and_store(missing[start : start + 512])

    def _all_memories(self) -> list[Memory]:
        short, medium, long_store = self._short, self._medium, self._long
        assert short is not None and medium is not None and long_store is not None
        found: dict[str, Memory] = {}
        for memory in long_store.all():
            found[memory.id] = memory
        for store in (medium, short):
            for memory in store.all():
                found[memory.id] = memory
        return list(found.values())

    # --- searching -------------------------------------------------------------------------------

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
        stems = self._stems(tokens) if weights.common_term_ratio < 1.0 else list(tokens)
        frequencies: dict[str, int] = {}
        volatile_total = 0
        for store in (short, medium):
            volatile_total += store.count()
            for term, count in store.document_frequencies(stems).items():
                frequencies[term] = frequencies.get(term, 0) + count

        long_frequencies: dict[str, int] = {}
        total = volatile_total
        if weights.common_term_ratio < 1.0 and search_long:
            # an index seek per word: bounded and fast, so it runs on the loop
            total += long_store.count()
            long_frequencies = long_store.document_frequencies(stems)
            for term, count in long_frequencies.items():
                frequencies[term] = frequencies.get(term, 0) + count
        kept = prune_common_terms(
            tokens,
            stems,
            frequencies,
            total,
            weights.common_term_ratio,
            weights.common_term_min_documents,
            weights.common_term_max_documents,
        )
        match = build_match(kept, owner)

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
            kept_stems = dict(zip(tokens, stems, strict=True))
            postings = sum(long_frequencies.get(kept_stems[token], 0) for token in kept)
            if long_frequencies and postings <= _INLINE_POSTINGS:
                # scoring a few thousand postings takes well under a millisecond: cheaper than a thread hop
                long_hits = long_store.search(match, pool)
            else:
                long_hits = await asyncio.to_thread(long_store.search, match, pool)
        query_vector = (await self._embed([query]))[0] if use_vectors else None
        found: dict[str, tuple[Memory, float]] = {}
        for store in (short, medium):
            if tier_filter is not None and store.tier not in tier_filter:
                continue
            for memory, bm25 in store.search(match, pool):
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

    async def _get_many(self, ids: Sequence[str]) -> dict[str, Memory]:
        short, medium, long_store = self._stores("get_memory")
        found = await asyncio.to_thread(long_store.get_many, list(ids))
        found.update(medium.get_many(ids))
        found.update(short.get_many(ids))
        return found

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

    # --- reading, updating, deleting by id -------------------------------------------------------

    async def get_memory(self, memory_id: str) -> Memory | None:
        """Return the memory with this id (from its fastest tier), or ``None``.

        Ids are unguessable, so lookups by id are not restricted to a user.
        """
        if not isinstance(memory_id, str) or not memory_id:
            raise InvalidMemoryError("memory_id", memory_id, "a non-empty string")
        found = await self._get_many([memory_id])
        memory = found.get(memory_id)
        return None if memory is None else memory.copy()

    async def update_memory(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        importance: float | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        tier: MemoryTier | str | None = None,
    ) -> Memory:
        """Change a memory in every tier that holds it (and move it when ``tier`` is given).

        Raises:
            MemoryNotFoundError: no memory has this id.
            InvalidMemoryError: a bad argument; nothing is changed.
        """
        if not isinstance(memory_id, str) or not memory_id:
            raise InvalidMemoryError("memory_id", memory_id, "a non-empty string")
        changes: dict[str, Any] = {}
        if content is not None:
            check_content(content)
            changes["content"] = content
        if importance is not None:
            changes["importance"] = check_importance(importance)
        if tags is not None:
            changes["tags"] = check_tags(tags)
        if metadata is not None:
            changes["metadata"] = check_metadata(metadata)
        target = None if tier is None else check_tier(tier)
        short, medium, long_store = self._stores("update_memory")
        async with self._write_lock:
            copies = await self._locate(memory_id)
            if not copies:
                raise MemoryNotFoundError(memory_id)
            primary = copies[0].copy(**changes)
            if target is None:
                for copy in copies:
                    updated = copy.copy(**changes)
                    await self._put(updated, copy.tier)
            else:
                for copy in copies:
                    if copy.tier is not target:
                        await self._remove(copy.id, copy.tier, moving=True)
                await self._put(primary, target)
                self._long_copies.discard(memory_id)
            if self.embedder is not None and content is not None:
                await self._embed_and_store([primary])
        result = await self.get_memory(memory_id)
        assert result is not None
        return result

    async def delete_memory(self, memory_id: str) -> Memory:
        """Delete a memory from every tier; return what was deleted.

        Raises:
            MemoryNotFoundError: no memory has this id.
        """
        if not isinstance(memory_id, str) or not memory_id:
            raise InvalidMemoryError("memory_id", memory_id, "a non-empty string")
        self._stores("delete_memory")
        async with self._write_lock:
            copies = await self._locate(memory_id)
            if not copies:
                raise MemoryNotFoundError(memory_id)
            for copy in copies:
                await self._remove(memory_id, copy.tier)
        return copies[0].copy()

    async def _locate(self, memory_id: str) -> list[Memory]:
        """Every stored copy of a memory, fastest tier first."""
        short, medium, long_store = self._stores("locate")
        copies = [m for m in (short.get(memory_id), medium.get(memory_id)) if m is not None]
        in_long = await asyncio.to_thread(long_store.get, memory_id)
        if in_long is not None:
            copies.append(in_long)
        return copies

    async def _put(self, memory: Memory, tier: MemoryTier) -> None:
        short, medium, long_store = self._stores("put")
        if tier is MemoryTier.SHORT:
            short.put([memory])
        elif tier is MemoryTier.MEDIUM:
            medium.put([memory])
        else:
            await asyncio.to_thread(long_store.put, [memory])

    async def _remove(self, memory_id: str, tier: MemoryTier, *, moving: bool = False) -> None:
        short, medium, long_store = self._stores("remove")
        if not moving:
            self._pending_touches.pop(memory_id, None)
        if tier is MemoryTier.SHORT:
            short.delete([memory_id])
            self._long_copies.discard(memory_id)
        elif tier is MemoryTier.MEDIUM:
            medium.delete([memory_id])
        else:
            await asyncio.to_thread(long_store.delete, [memory_id])
        if not moving:
            for index in self._vectors.values():
                index.remove([memory_id])

    # --- movement between tiers ------------------------------------------------------------------

    def _value(self, memory: Memory, now: float) -> float:
        """How much a memory deserves a faster tier: importance, recency of use, access count."""
        recency = recency_decay(now - max(memory.created_at, memory.last_accessed), 1.0)
        access = min(1.0, math.log1p(memory.access_count) / math.log1p(100.0))
        return 0.5 * memory.importance + 0.3 * recency + 0.2 * access

    def _move_short_overflow(self) -> None:
        """Move the least valuable short-term memories down to medium-term (call with the write lock)."""
        short, medium, _ = self._stores("rebalance")
        capacity = self.config.short_term_memory_size
        if short.count() <= capacity:
            return
        now = self._clock()
        excess = short.count() - int(capacity * _SHRINK_TO)
        victims = sorted(short.all(), key=lambda m: self._value(m, now))[:excess]
        with_copy = [m.id for m in victims if m.id in self._long_copies]
        if with_copy:
            short.delete(with_copy)  # the long-term copy stays
            self._long_copies.difference_update(with_copy)
        moving = [m for m in victims if m.id not in self._long_copies and m.id not in set(with_copy)]
        if moving:
            short.delete([m.id for m in moving], log=False)  # the put below records the move
            medium.put(moving)

    async def _rebalance(self) -> None:
        """Bring every tier back within its capacity (short -> medium -> long)."""
        if self._state != "ready":
            return
        short, medium, long_store = self._stores("rebalance")
        async with self._write_lock:
            self._move_short_overflow()
            capacity = self.config.medium_term_memory_size
            if medium.count() > capacity:
                now = self._clock()
                excess = medium.count() - int(capacity * _SHRINK_TO)
                victims = sorted(medium.all(), key=lambda m: self._value(m, now))[:excess]
                await self._move_to_long(victims)
            if not self._over_capacity_warned:
                count = await asyncio.to_thread(long_store.count)
                if count > self.config.long_term_memory_size:
                    self._over_capacity_warned = True
                    logger.warning(
                        "long-term memory holds %d memories, over its capacity of %d; nothing is dropped: "
                        "run cleanup_old_memories() or raise long_term_memory_size",
                        count,
                        self.config.long_term_memory_size,
                    )

    async def _move_to_long(self, memories: Sequence[Memory]) -> None:
        """Write memories to long-term (committed), then drop their volatile copies (call with the lock)."""
        short, medium, long_store = self._stores("move")
        if not memories:
            return
        copies = [memory.copy() for memory in memories]
        await asyncio.to_thread(long_store.put, copies)
        ids = [memory.id for memory in memories]
        medium.delete([i for i in ids if i in medium])
        in_short = [i for i in ids if i in short]
        self._long_copies.update(in_short)  # short-term keeps its fast copy; long has the durable one

    # --- access bookkeeping ----------------------------------------------------------------------

    async def _flush_touches(self) -> None:
        if self._state != "ready":
            return
        async with self._write_lock:
            await self._flush_touches_locked()

    async def _flush_touches_locked(self) -> None:
        if not self._pending_touches:
            return
        short, medium, long_store = self._stores("flush")
        pending, self._pending_touches = self._pending_touches, {}
        short.touch(pending)
        medium.touch(pending)
        await asyncio.to_thread(long_store.touch, pending)
        hot = [
            memory
            for memory in list(medium.get_many(list(pending)).values())
            + [m for m in short.get_many(list(pending)).values() if m.id not in self._long_copies]
            if memory.access_count >= self.promotion_access_count
        ]
        if hot:
            await self._move_to_long(hot)

    # --- consolidation ---------------------------------------------------------------------------

    async def consolidate_memories(
        self,
        similarity_threshold: float = 0.85,
        *,
        user_id: UserScope = None,
        semantic_threshold: float = 0.95,
    ) -> dict[str, Any]:
        """Merge near-duplicate memories into one long-term memory each.

        Two memories are near-duplicates when the Jaccard similarity of their word sets is at least
        ``similarity_threshold`` (or, with an embedder, their cosine is at least ``semantic_threshold``).
        The merged memory keeps the most important text, the highest importance, the union of tags,
        the summed access counts and ``merged_from``; the originals are marked ``superseded_by`` (hidden
        from search, kept until cleanup) so :meth:`undo_consolidation` can reverse a wrong merge.

        Returns:
            ``consolidated_count`` (originals merged), ``groups`` (one dict per merge: ``merged_id``,
            ``merged_from``, ``content``), ``merged_ids`` (the new memories), ``examined``.
        """
        if (
            isinstance(similarity_threshold, bool)
            or not isinstance(similarity_threshold, int | float)
            or not (0 < similarity_threshold <= 1)
        ):
            raise InvalidMemoryError("similarity_threshold", similarity_threshold, "a number > 0 and <= 1")
        if (
            isinstance(semantic_threshold, bool)
            or not isinstance(semantic_threshold, int | float)
            or not (0 < semantic_threshold <= 1)
        ):
            raise InvalidMemoryError("semantic_threshold", semantic_threshold, "a number > 0 and <= 1")
        check_user(user_id, allow_all=True)
        self._stores("consolidate_memories")
        async with self._write_lock:
            await self._flush_touches_locked()
            memories = [
                m
                for m in await asyncio.to_thread(self._all_memories)
                if m.superseded_by is None and (user_id is ALL_USERS or m.user_id == user_id)
            ]
            groups = near_duplicate_groups(
                memories,
                float(similarity_threshold),
                self._cosine_function() if self.embedder is not None else None,
                float(semantic_threshold),
            )
            now = self._clock()
            report_groups: list[dict[str, Any]] = []
            merged_memories: list[Memory] = []
            superseded: list[Memory] = []
            for group in groups:
                primary = max(group, key=lambda m: (m.importance, m.created_at))
                tags: dict[str, None] = {}
                for member in group:
                    tags.update(dict.fromkeys(member.tags))
                merged = primary.copy(
                    id=new_memory_id(),
                    importance=max(m.importance for m in group),
                    tags=list(tags),
                    tier=MemoryTier.LONG,
                    created_at=min(m.created_at for m in group),
                    last_accessed=max(max(m.last_accessed for m in group), now),
                    access_count=sum(m.access_count for m in group),
                    source="consolidation",
                    superseded_by=None,
                    merged_from=[m.id for m in group],
                )
                merged_memories.append(merged)
                superseded.extend(member.copy(superseded_by=merged.id) for member in group)
                report_groups.append(
                    {
                        "merged_id": merged.id,
                        "merged_from": list(merged.merged_from),
                        "content": merged.content,
                    }
                )
            if merged_memories:
                await self._put_all(merged_memories, superseded)
                if self.embedder is not None:
                    await self._embed_and_store(merged_memories)
        return {
            "consolidated_count": len(superseded),
            "groups": report_groups,
            "merged_ids": [memory.id for memory in merged_memories],
            "examined": len(memories),
        }

    async def _put_all(self, new_long: Sequence[Memory], updated: Sequence[Memory]) -> None:
        """Write new long-term memories and updated copies (in their own tiers), long-term first."""
        short, medium, long_store = self._stores("put")
        long_updates = []
        short_updates = []
        medium_updates = []
        for memory in updated:
            if memory.tier is MemoryTier.LONG:
                long_updates.append(memory)
            elif memory.tier is MemoryTier.SHORT:
                short_updates.append(memory)
            else:
                medium_updates.append(memory)
        await asyncio.to_thread(long_store.put, list(new_long) + long_updates)
        # a short-term memory may also have a long-term copy: update it too
        extra = [m.copy() for m in short_updates if m.id in self._long_copies]
        if extra:
            await asyncio.to_thread(long_store.put, extra)
        short.put(short_updates)
        medium.put(medium_updates)

    def _cosine_function(self) -> Callable[[str, str], float | None]:
        def cosine(first: str, second: str) -> float | None:
            for index in self._vectors.values():
                a = index.get(first)
                if a is not None:
                    b = index.get(second)
                    return None if b is None else float(a @ b)
            return None

        return cosine

    async def undo_consolidation(self, merged_id: str) -> dict[str, Any]:
        """Reverse a consolidation: delete the merged memory and make its originals visible again.

        Returns:
            ``restored`` (ids made visible again) and ``deleted`` (the merged id).

        Raises:
            MemoryNotFoundError: no memory has this id.
            InvalidMemoryError: the memory is not the result of a consolidation.
        """
        merged = await self.get_memory(merged_id)
        if merged is None:
            raise MemoryNotFoundError(merged_id)
        if not merged.merged_from:
            raise InvalidMemoryError("merged_id", merged_id, "the id of a consolidated memory")
        async with self._write_lock:
            originals = await self._get_all_copies(merged.merged_from)
            restored = [m.copy(superseded_by=None) for m in originals if m.superseded_by == merged_id]
            await self._put_all([], restored)
            for copy in await self._locate(merged_id):
                await self._remove(merged_id, copy.tier)
        return {"restored": sorted({m.id for m in restored}), "deleted": merged_id}

    async def _get_all_copies(self, ids: Sequence[str]) -> list[Memory]:
        short, medium, long_store = self._stores("copies")
        found = list((await asyncio.to_thread(long_store.get_many, list(ids))).values())
        found += list(medium.get_many(ids).values()) + list(short.get_many(ids).values())
        return found

    # --- cleanup ---------------------------------------------------------------------------------

    async def cleanup_old_memories(
        self,
        max_age_days: float = 30.0,
        *,
        user_id: UserScope = None,
        keep_importance: float | None = None,
        remove_superseded: bool = True,
    ) -> dict[str, Any]:
        """Delete memories not created or used for ``max_age_days`` days, and superseded originals.

        Args:
            max_age_days: Age (since creation or last access, whichever is later) beyond which a memory
                is removed; 0 removes every memory not used right now.
            user_id: Whose memories (``None``: the default namespace; :data:`ALL_USERS`: everyone's).
            keep_importance: Memories at least this important are kept whatever their age.
            remove_superseded: Also delete the originals that a consolidation superseded.

        Returns:
            ``removed_count``, ``by_tier`` (``short``/``medium``/``long`` counts), ``superseded_removed``,
            ``removed_ids``, ``max_age_days``.
        """
        if (
            isinstance(max_age_days, bool)
            or not isinstance(max_age_days, int | float)
            or not (math.isfinite(max_age_days) and max_age_days >= 0)
        ):
            raise InvalidMemoryError("max_age_days", max_age_days, "a finite number >= 0")
        if keep_importance is not None:
            keep_importance = check_importance(keep_importance, field="keep_importance")
        check_user(user_id, allow_all=True)
        self._stores("cleanup_old_memories")
        cutoff = self._clock() - float(max_age_days) * 86400.0
        async with self._write_lock:
            await self._flush_touches_locked()
            copies = await asyncio.to_thread(self._all_copies)
            by_tier = {tier.value: 0 for tier in MemoryTier}
            removed: dict[str, Memory] = {}
            superseded_removed: set[str] = set()
            for memory in copies:
                if user_id is not ALL_USERS and memory.user_id != user_id:
                    continue
                is_superseded = remove_superseded and memory.superseded_by is not None
                too_old = max(memory.created_at, memory.last_accessed) < cutoff and (
                    keep_importance is None or memory.importance < keep_importance
                )
                if is_superseded or too_old:
                    await self._remove(memory.id, memory.tier)
                    by_tier[memory.tier.value] += 1
                    removed[memory.id] = memory
                    if is_superseded:
                        superseded_removed.add(memory.id)
        return {
            "removed_count": len(removed),
            "by_tier": by_tier,
            "superseded_removed": len(superseded_removed),
            "removed_ids": sorted(removed),
            "max_age_days": float(max_age_days),
        }

    def _all_copies(self) -> list[Memory]:
        short, medium, long_store = self._short, self._medium, self._long
        assert short is not None and medium is not None and long_store is not None
        return list(short.all()) + list(medium.all()) + list(long_store.all())

    # --- statistics ------------------------------------------------------------------------------

    async def get_memory_stats(self, *, user_id: UserScope = None) -> dict[str, Any]:
        """Counts and health of the memory.

        Args:
            user_id: Whose memories (``None``: the default namespace; :data:`ALL_USERS`: everyone's,
                with a ``by_user`` breakdown).

        Returns:
            ``total_memories``, ``by_tier``, ``capacity``, ``over_capacity`` (tiers), ``superseded``,
            ``oldest``/``newest`` (epoch seconds or ``None``), ``mean_importance``, ``bytes_on_disk``
            (``log``, ``database``, ``total``), ``pending_access_updates``, ``index`` (``status``,
            ``vectors``), ``storage_path`` and, for :data:`ALL_USERS`, ``by_user``.
        """
        check_user(user_id, allow_all=True)
        short, medium, long_store = self._stores("get_memory_stats")
        copies = await asyncio.to_thread(self._all_copies)
        by_tier = {tier.value: 0 for tier in MemoryTier}
        by_user: dict[str, int] = {}
        seen: set[str] = set()
        superseded = 0
        oldest: float | None = None
        newest: float | None = None
        importance_total = 0.0
        for memory in copies:
            if user_id is not ALL_USERS and memory.user_id != user_id:
                continue
            by_tier[memory.tier.value] += 1
            if memory.id in seen:
                continue
            seen.add(memory.id)
            owner = "default" if memory.user_id is None else memory.user_id
            by_user[owner] = by_user.get(owner, 0) + 1
            if memory.superseded_by is not None:
                superseded += 1
            oldest = memory.created_at if oldest is None else min(oldest, memory.created_at)
            newest = memory.created_at if newest is None else max(newest, memory.created_at)
            importance_total += memory.importance
        capacity = {
            "short": self.config.short_term_memory_size,
            "medium": self.config.medium_term_memory_size,
            "long": self.config.long_term_memory_size,
        }
        assert self._log is not None
        log_bytes = self._log.size()
        database_bytes = long_store.size()
        stats: dict[str, Any] = {
            "total_memories": len(seen),
            "by_tier": by_tier,
            "capacity": capacity,
            "over_capacity": [tier for tier, count in by_tier.items() if count > capacity[tier]],
            "superseded": superseded,
            "oldest": oldest,
            "newest": newest,
            "mean_importance": importance_total / len(seen) if seen else None,
            "bytes_on_disk": {
                "log": log_bytes,
                "database": database_bytes,
                "total": log_bytes + database_bytes,
            },
            "pending_access_updates": len(self._pending_touches),
            "index": {
                "status": "ok",
                "engine": "sqlite-fts5 bm25",
                "vectors": sum(len(index) for index in self._vectors.values()),
            },
            "storage_path": str(self.storage_path),
        }
        if user_id is ALL_USERS:
            stats["by_user"] = by_user
        return stats

    # --- export / import -------------------------------------------------------------------------

    async def export_memories(self, path: str | Path, *, user_id: UserScope = None) -> int:
        """Write memories (one JSON object per line, every field, superseded ones too) to ``path``.

        A memory held in two tiers is written once (its fastest tier). Returns how many were written.
        """
        check_user(user_id, allow_all=True)
        target = check_path(path)
        self._stores("export_memories")
        async with self._write_lock:
            await self._flush_touches_locked()
            copies = await asyncio.to_thread(self._all_copies)

        def write() -> int:
            seen: set[str] = set()
            count = 0
            temporary = target.with_name(target.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for memory in copies:
                    if memory.id in seen or (user_id is not ALL_USERS and memory.user_id != user_id):
                        continue
                    seen.add(memory.id)
                    handle.write(json.dumps(memory.to_dict(), ensure_ascii=False) + "\n")
                    count += 1
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            return count

        try:
            return await asyncio.to_thread(write)
        except OSError as error:
            raise StorageError(f"cannot export memories to {target}: {error}", path=target) from error

    async def import_memories(self, path: str | Path) -> dict[str, Any]:
        """Load memories written by :meth:`export_memories` (ids kept; existing ids are replaced).

        Every line is validated first: one bad line raises and nothing is imported. Memories go to
        their recorded tier; what does not fit a tier's capacity flows to the next one.

        Returns:
            ``imported``, ``replaced`` (ids that already existed) and ``by_tier``.

        Raises:
            InvalidMemoryError: a line is not a valid memory (its line number is in the message).
            StorageError: the file cannot be read.
        """
        source = check_path(path)
        short, medium, long_store = self._stores("import_memories")
        try:
            lines = await asyncio.to_thread(source.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise StorageError(f"cannot read memories from {source}: {error}", path=source) from error
        memories: dict[str, Memory] = {}
        for number, line in enumerate(lines.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                memory = Memory.from_dict(data)
                check_content(memory.content)
                memory.importance = check_importance(memory.importance)
                memory.tags = check_tags(memory.tags)
                memory.metadata = check_metadata(memory.metadata)
                check_user(memory.user_id, allow_all=False)
            except InvalidMemoryError as error:
                raise InvalidMemoryError(
                    f"{source}:{number}",
                    line[:80],
                    "a memory as written by export_memories",
                    detail=str(error),
                ) from error
            except (ValueError, KeyError, TypeError) as error:
                raise InvalidMemoryError(
                    f"{source}:{number}",
                    line[:80],
                    "a memory as written by export_memories",
                    detail=str(error),
                ) from error
            memories[memory.id] = memory
        self._owners.update(memory.user_id for memory in memories.values())
        by_tier = {tier.value: 0 for tier in MemoryTier}
        async with self._write_lock:
            existing = await self._get_many(list(memories))
            for memory_id in existing:
                for copy in await self._locate(memory_id):
                    await self._remove(memory_id, copy.tier, moving=True)
            placement = self._place_for_import(list(memories.values()))
            long_items = placement[MemoryTier.LONG]
            for start in range(0, len(long_items), _IMPORT_BATCH * 5):
                await asyncio.to_thread(long_store.put, long_items[start : start + _IMPORT_BATCH * 5])
            for store, tier in ((medium, MemoryTier.MEDIUM), (short, MemoryTier.SHORT)):
                items = placement[tier]
                for start in range(0, len(items), _IMPORT_BATCH):
                    store.put(items[start : start + _IMPORT_BATCH])
            for tier, items in placement.items():
                by_tier[tier.value] = len(items)
            if self.embedder is not None:
                values = list(memories.values())
                for start in range(0, len(values), 512):
                    await self._embed_and_store(values[start : start + 512])
        self._maybe_compact()
        return {"imported": len(memories), "replaced": len(existing), "by_tier": by_tier}

    def _place_for_import(self, memories: list[Memory]) -> dict[MemoryTier, list[Memory]]:
        """Put each memory in its recorded tier; overflow (least valuable first) flows down a tier."""
        short, medium, _ = self._stores("import_memories")
        now = self._clock()
        placement: dict[MemoryTier, list[Memory]] = {tier: [] for tier in MemoryTier}
        for memory in memories:
            placement[memory.tier].append(memory)
        room = {
            MemoryTier.SHORT: self.config.short_term_memory_size - short.count(),
            MemoryTier.MEDIUM: self.config.medium_term_memory_size - medium.count(),
        }
        for tier, lower in ((MemoryTier.SHORT, MemoryTier.MEDIUM), (MemoryTier.MEDIUM, MemoryTier.LONG)):
            items = placement[tier]
            space = max(0, room[tier])
            if len(items) > space:
                items.sort(key=lambda m: self._value(m, now), reverse=True)
                placement[tier], overflow = items[:space], items[space:]
                placement[lower].extend(overflow)
        return placement

    # --- maintenance -----------------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        log, short, medium = self._log, self._short, self._medium
        if log is None or short is None or medium is None or self._state != "ready":
            return
        live = short.count() + medium.count()
        if log.record_count > 2 * live + 10_000 and not self._compacting:
            self._compacting = True
            self._spawn(self._compact())

    async def _compact(self) -> None:
        try:
            async with self._write_lock:
                if self._state == "ready":
                    await self._compact_locked()
        finally:
            self._compacting = False

    async def _compact_locked(self) -> tuple[int, int]:
        short, medium, _ = self._stores("compact")
        assert self._log is not None
        live = [memory.copy() for memory in list(medium.all()) + list(short.all())]
        return await asyncio.to_thread(self._log.compact, live)

    async def optimize(self) -> dict[str, Any]:
        """Persist access updates, compact the log, merge FTS5 segments, checkpoint the WAL.

        Returns:
            ``log_bytes_before``/``after``, ``database_bytes_before``/``after``, ``duration_ms``.
        """
        short, medium, long_store = self._stores("optimize")
        started = time.perf_counter()
        async with self._write_lock:
            await self._flush_touches_locked()
            database_before = long_store.size()
            log_before, log_after = await self._compact_locked()
            short.optimize_index()
            medium.optimize_index()
            await asyncio.to_thread(long_store.optimize)
            database_after = long_store.size()
        return {
            "log_bytes_before": log_before,
            "log_bytes_after": log_after,
            "database_bytes_before": database_before,
            "database_bytes_after": database_after,
            "duration_ms": (time.perf_counter() - started) * 1000.0,
        }

    async def check_integrity(self) -> dict[str, Any]:
        """Check the database (``PRAGMA integrity_check``) and every FTS5 index.

        Returns:
            ``ok`` (bool), ``sqlite``, ``fts``, ``short_index``, ``medium_index`` (``"ok"`` or problems).
        """
        short, medium, long_store = self._stores("check_integrity")
        async with self._write_lock:
            result: dict[str, Any] = dict(await asyncio.to_thread(long_store.check_integrity))
            result["short_index"] = short.check_index()
            result["medium_index"] = medium.check_index()
        result["ok"] = all(value == "ok" for value in result.values())
        return result

    async def rebuild_index(self) -> dict[str, int]:
        """Rebuild every FTS5 index from the stored memories; return the rows indexed per tier."""
        short, medium, long_store = self._stores("rebuild_index")
        async with self._write_lock:
            weights = self.ranking.effective_columns
            short.rebuild_index(weights)
            medium.rebuild_index(weights)
            long_count = await asyncio.to_thread(long_store.rebuild_index)
        return {"short": short.count(), "medium": medium.count(), "long": long_count}

    async def flush(self) -> None:
        """Persist pending access-count updates and finish background moves now."""
        self._stores("flush")
        await self._drain_background()
        await self._flush_touches()
