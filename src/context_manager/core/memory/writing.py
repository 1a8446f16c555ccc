"""Adding, updating and deleting memories (``MemoryManager.add_memory`` and friends)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import (
    InvalidMemoryError,
    MemoryNotFoundError,
    StorageError,
)
from context_manager.core.memory.models import Memory, MemoryTier, new_memory_id
from context_manager.core.memory.tiers import _CONSOLIDATION_LOCKS, _WRITE_ROUNDS, TierMovement
from context_manager.core.memory.validation import (
    check_content,
    check_importance,
    check_memory_id,
    check_metadata,
    check_moment,
    check_tags,
    check_text,
    check_tier,
    check_user,
    json_safe,
)
from context_manager.core.memory.write_health import records_write_outcome

if TYPE_CHECKING:  # pragma: no cover
    from context_manager.core.memory.backend import MemoryBackend
    from context_manager.core.messages import Message

__all__ = ["MemoryWriting", "merged_originals", "message_memory_id"]

logger = logging.getLogger(__name__)

_REMEMBER_CHUNK = 64  # messages written per event-loop step by remember_messages (~5-10 ms of work)
_LARGE_MESSAGE_CHARS = 65_536
"""An evicted message longer than this goes to the long-term tier, which lives on disk and is indexed in a
worker thread: indexing a pasted document of megabytes in the in-process tiers held the event loop."""
_OVERFLOW_LIMIT = 1.25  # a write finding a tier this far over its capacity waits for the overflow move


def message_memory_id(namespace: str, message_id: str) -> str:
    """The id of the memory that holds a message of a persisted conversation (stable, 32 hex characters)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"context-manager:{namespace}:{message_id}").hex


class MemoryWriting(TierMovement):
    """``add_memory``, ``add_memories``, ``remember_messages``, ``update_memory``, ``delete_memory``."""

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
        memory_id: str | None = None,
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
            memory_id: Your own id for the memory, which makes the add idempotent: retrying an add that
                failed part-way (``StorageError``) with the same id stores one memory; an id already
                holding the same content returns that memory unchanged. By default a fresh random id.

        Returns:
            A copy of the stored memory (changing it changes nothing stored).

        Raises:
            InvalidMemoryError: a bad argument (or ``memory_id`` already holds other content); nothing
                is stored.
            StorageError: the write failed.
            LifecycleError: before ``initialize()`` or after ``close()``.
        """
        memory = self._build_memory(content, importance, tags, metadata, user_id, tier, source, memory_id)
        explicit_tier = None if tier is None else MemoryTier.parse(tier)
        memories = await self._add_many([(memory, explicit_tier)], explicit_ids=memory_id is not None)
        return memories[0].copy()

    async def add_memories(self, items: Sequence[Mapping[str, Any]]) -> list[Memory]:
        """Store several memories at once (one journal write, one transaction).

        Args:
            items: Dicts of :meth:`add_memory` keyword arguments (``content`` required; ``memory_id``
                makes that item idempotent, as in :meth:`add_memory`).

        Raises:
            InvalidMemoryError: any item is bad (or reuses an id for other content); nothing is stored.
        """
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise InvalidMemoryError("items", items, "a list of dicts of add_memory arguments")
        prepared: list[tuple[Memory, MemoryTier | None]] = []
        allowed = {"content", "importance", "tags", "metadata", "user_id", "tier", "source", "memory_id"}
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
                item.get("memory_id"),
            )
            tier = item.get("tier")
            prepared.append((memory, None if tier is None else MemoryTier.parse(tier)))
        explicit = any(item.get("memory_id") is not None for item in items)
        memories = await self._add_many(prepared, explicit_ids=explicit)
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
        memory_id: Any = None,
    ) -> Memory:
        check_content(content)
        check_memory_id(memory_id, optional=True)
        importance = check_importance(importance)
        tag_list = check_tags(tags)
        metadata_dict = check_metadata(metadata)
        check_user(user_id, allow_all=False)
        if tier is not None:
            check_tier(tier)
        check_text(source, "source")
        now = self._clock()
        return Memory(
            id=new_memory_id() if memory_id is None else memory_id,
            content=content,
            importance=importance,
            tags=tag_list,
            created_at=now,
            last_accessed=now,
            metadata=metadata_dict,
            user_id=user_id,
            source=source,
        )

    @records_write_outcome
    async def _add_many(
        self,
        items: Sequence[tuple[Memory, MemoryTier | None]],
        *,
        explicit_ids: bool = False,
        archive: bool = False,
    ) -> list[Memory]:
        """Store new memories; with ``explicit_ids`` an id already holding the same content is returned.

        ``archive``: the ids are derived from messages (:meth:`remember_messages`): an id already stored
        is that message, archived before (and maybe edited since): it is returned, whatever its content.
        """
        backend = self._require("add_memory")
        order = [memory.id for memory, _ in items]
        existing: dict[str, Memory] = {}
        threshold = self.config.long_term_importance_threshold
        if (
            backend.shared
            and not self._closing
            and not explicit_ids
            and self.embedder is None
            and all(m.session_id is None and (tier or m.importance < threshold) for m, tier in items)
        ):
            # New memories on a storage other processes write at the same moment (PostgreSQL), each one row
            # written by one statement: another write of this process cannot come between the steps of
            # such an add (it has one), so adds go on side by side over the connection pool (8 writer
            # tasks: 2,600 adds/s against 1,586 one at a time). The write lock stays for an add in several
            # steps (an important memory's long-term copy, its vector: a delete or a consolidation between
            # them would find the memory half written), an id given by the caller (its idempotency check
            # reads, then writes), a conversation turn (its context comes from the turn before), and once
            # close() has begun.
            self._open_adds += 1
            self._no_open_adds.clear()
            try:
                short_count, medium_count, _ = await self._store_new(backend, items)
            finally:
                self._open_adds -= 1
                if not self._open_adds:
                    self._no_open_adds.set()
        else:
            async with self._write_lock:
                backend = self._require("add_memory")  # closed while this add waited: a clear error
                if explicit_ids:
                    wants_long = {m.id for m, tier in items if tier is None and m.importance >= threshold}
                    items, existing = await self._known_ids(items, archive=archive)
                    await self._complete_long_copies([existing[i] for i in wants_long if i in existing])
                    if not items:
                        return [existing[memory_id] for memory_id in order]
                    items, short_count, medium_count = await self._store_new_ids(
                        backend, items, existing, archive=archive
                    )
                else:
                    short_count, medium_count, _ = await self._store_new(backend, items)
        short_capacity = self.config.short_term_memory_size
        medium_capacity = self.config.medium_term_memory_size
        written: dict[str, Memory] | None = None
        if short_count > short_capacity or medium_count > medium_capacity:
            task = self._start_rebalance()
            if (
                short_count > short_capacity * _OVERFLOW_LIMIT
                or medium_count > medium_capacity * _OVERFLOW_LIMIT
            ):
                # back-pressure: writes faster than the moves wait for them rather than let a tier (the
                # short- and medium-term ones are indexed in process on SQLite) grow without bound; a
                # failed move is not this write's failure (the memories are stored): the task reports it.
                # What this write returns is the memories as written (the in-process tiers keep these very
                # objects, and a move meanwhile changes their tier)
                written = {memory.id: memory.copy() for memory, _ in items}
                await asyncio.wait({task})
        self._maybe_compact()
        if written is None:
            written = {memory.id: memory for memory, _ in items}
        return [written.get(memory_id) or existing[memory_id] for memory_id in order]

    async def _counts_after_write(self, backend: MemoryBackend) -> tuple[int, int]:
        """The short- and medium-term counts a write checks for an overflow, without a round trip if known.

        A shared storage (PostgreSQL) keeps the counts it read last with this process's changes applied,
        and re-reads them every half second: that re-read used to be one add's second round trip (issue
        12: the add p99). Now a write takes the kept counts (this process's own adds are in them, so its
        own overflows show at once) and a count due a re-read is re-read in the background
        (:meth:`_recount`), which starts the overflow move itself when another process filled a tier.
        """
        # KnownCounts is optional for a backend of your own (getattr: an isinstance() of a runtime protocol
        # costs tens of microseconds a write)
        known_count: Callable[[MemoryTier], tuple[int, bool] | None] | None
        known_count = getattr(backend, "known_count", None)
        short = None if known_count is None else known_count(MemoryTier.SHORT)
        medium = None if known_count is None else known_count(MemoryTier.MEDIUM)
        if short is None or medium is None:
            return await backend.count(MemoryTier.SHORT), await backend.count(MemoryTier.MEDIUM)
        recounting = self._recount_task is not None and not self._recount_task.done()
        if (short[1] or medium[1]) and not recounting and not self._closing:  # close() drained the tasks
            self._recount_task = self._spawn(self._recount())
        return short[0], medium[0]

    async def _recount(self) -> None:
        """Re-read the short- and medium-term counts (see :meth:`_counts_after_write`); move an overflow."""
        if self._state != "ready":
            return
        backend = self._require("count")
        try:
            short_count = await backend.count(MemoryTier.SHORT)
            medium_count = await backend.count(MemoryTier.MEDIUM)
        except StorageError as error:  # a read: the next write that finds the count due tries again
            logger.warning("memory tier count failed: %s", error)
            return
        over = (
            short_count > self.config.short_term_memory_size
            or medium_count > self.config.medium_term_memory_size
        )
        if over and self._state == "ready":
            self._start_rebalance()

    async def _store_new(
        self,
        backend: MemoryBackend,
        items: Sequence[tuple[Memory, MemoryTier | None]],
        *,
        only_new: bool = False,
    ) -> tuple[int, int, list[str]]:
        """Write new memories to their tiers (an important one also to long-term).

        ``only_new``: write only the ids no tier holds (:meth:`MemoryBackend.put_new`).

        Returns:
            The short- and medium-term counts after the write, and the ids left out as already stored.
        """
        threshold = self.config.long_term_importance_threshold
        written_turns: dict[tuple[str | None, str], tuple[int, str]] = {}
        for memory, _ in items:
            await self._attach_context(memory, written_turns)
        to_short = [m for m, tier in items if tier in (None, MemoryTier.SHORT)]
        to_medium = [m for m, tier in items if tier is MemoryTier.MEDIUM]
        to_long = [m for m, tier in items if tier is MemoryTier.LONG]
        copies = [m.copy() for m, tier in items if tier is None and m.importance >= threshold]
        # long-term after the short-term copies (the embedded store notes which short-term memories have a
        # long copy); on PostgreSQL in one transaction, so no process sees a short-term row without its copy
        groups = [(MemoryTier.SHORT, to_short), (MemoryTier.MEDIUM, to_medium)]
        groups.append((MemoryTier.LONG, to_long + copies))
        taken: list[str] = []
        if only_new:
            taken = await backend.put_new(groups)
        else:
            await backend.put_tiers(groups)
        if self.embedder is not None:
            skipped = set(taken)
            await self._embed_and_store([m for m, _ in items if m.id not in skipped])
        short_count, medium_count = await self._counts_after_write(backend)
        return short_count, medium_count, taken

    async def _store_new_ids(
        self,
        backend: MemoryBackend,
        items: Sequence[tuple[Memory, MemoryTier | None]],
        existing: dict[str, Memory],
        *,
        archive: bool = False,
    ) -> tuple[list[tuple[Memory, MemoryTier | None]], int, int]:
        """Write memories with ids the caller chose, each only if no tier holds its id yet.

        Another process may store one of the ids between :meth:`_known_ids` and the write (the same
        retried add, the same message archived twice): that one is not written over, it is read and
        checked like an id found before (added to ``existing``). Returns the items written and the
        short- and medium-term counts.
        """
        written: list[tuple[Memory, MemoryTier | None]] = []
        short_count = medium_count = 0
        for _ in range(_WRITE_ROUNDS):
            short_count, medium_count, taken = await self._store_new(backend, items, only_new=True)
            late = set(taken)
            written += [item for item in items if item[0].id not in late]
            if not late:
                break
            items, found = await self._known_ids(
                [item for item in items if item[0].id in late], archive=archive
            )
            existing.update(found)
            if not items:
                break
        else:
            raise StorageError(
                f"memories {sorted(m.id for m, _ in items)} were stored and deleted by other processes "
                f"{_WRITE_ROUNDS} times while this add wrote them; nothing of them was written"
            )
        return written, short_count, medium_count

    async def _complete_long_copies(self, retried: Sequence[Memory]) -> None:
        """Write the long-term copy an idempotent retry's memory should have and lacks.

        An important memory is written to the short-term tier, then copied to the long-term one; when the
        second write raised (``StorageError``), the retry finds the memory stored and finishes the write
        instead of returning it without its durable long-term copy.
        """
        if not retried:
            return
        # copied from the memory as stored when the copy is written, never from the retry's read of it:
        # another process may have merged, changed or deleted it since (a put of that read would undo it)
        await self._require("add_memory").add_long_copies([memory.id for memory in retried])

    async def _known_ids(
        self, items: Sequence[tuple[Memory, MemoryTier | None]], *, archive: bool = False
    ) -> tuple[list[tuple[Memory, MemoryTier | None]], dict[str, Memory]]:
        """Split off the items whose id is already stored with the same content (an idempotent retry).

        ``archive``: the same user is enough (see :meth:`_add_many`).

        Raises:
            InvalidMemoryError: an id is repeated in ``items`` or already holds other content.
        """
        ids = [memory.id for memory, _ in items]
        if len(set(ids)) != len(ids):
            repeated = next(i for i in ids if ids.count(i) > 1)
            raise InvalidMemoryError("memory_id", repeated, "ids that differ within one call")
        stored = await self._get_many(ids)
        if not stored:
            return list(items), {}
        fresh: list[tuple[Memory, MemoryTier | None]] = []
        existing: dict[str, Memory] = {}
        for memory, tier in items:
            found = stored.get(memory.id)
            if found is None:
                fresh.append((memory, tier))
            elif found.user_id == memory.user_id and (archive or found.content == memory.content):
                existing[found.id] = found
            else:
                raise InvalidMemoryError(
                    "memory_id",
                    memory.id,
                    "an id not used by another memory (this id already holds different content or belongs "
                    "to another user)",
                )
        return fresh, existing

    async def _attach_context(
        self, memory: Memory, written_turns: dict[tuple[str | None, str], tuple[int, str]]
    ) -> None:
        """Index the previous turn of the same session with a conversation turn (low-weight column).

        ``written_turns``: the last turn per session of the write this memory is part of (the previous turn
        may be one of them, not stored yet). On a storage of this process only, the last turn this process
        wrote is remembered across writes (``_last_turn``: an edit or delete here updates it); on a shared
        one (PostgreSQL) another process may have edited or deleted that turn since (``update_memory``
        redacting a secret), so a turn not of this write is read from the storage.
        """
        session_id, turn_index = memory.session_id, memory.turn_index
        if session_id is None or turn_index is None:
            return
        key = (memory.user_id, session_id)
        backend = self._require("add_memory")
        turns = written_turns if backend.shared else self._last_turn
        previous = turns.get(key)
        if not memory.context:
            if previous is not None and previous[0] == turn_index - 1:
                memory.context = previous[1]
            elif turn_index > 0:  # written by another process, or before a restart: ask the storage
                found = await backend.find_turns([(memory.user_id, session_id, turn_index - 1)])
                if found:
                    memory.context = found[0].content[:300]
        if previous is None or turn_index >= previous[0]:
            turns[key] = (turn_index, memory.content[:300])
            if len(turns) > 10_000:
                turns.pop(next(iter(turns)))

    async def remember_messages(
        self,
        messages: Sequence[Message],
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        session_date: str | None = None,
        id_namespace: str | None = None,
    ) -> list[Memory]:
        """Write messages (e.g. evicted by compression) to the medium-term tier, durably.

        A message of more than 65,536 characters (a pasted document) goes to the long-term tier instead,
        which lives on disk and is indexed in a worker thread.

        Each becomes a memory with ``source="context"`` and metadata ``role``, ``message_id``,
        ``timestamp``, ``session_id``, ``turn_index`` (taken from the message metadata, else counted per
        session in timestamp order), ``speaker`` (the message's name or role) and ``session_date`` (from
        the message metadata, else the message's date). Priority maps to importance (low 0.3, normal
        0.5, high 0.7, critical 0.9). A message's tool calls are part of its memory's text (a line per
        call: ``[tool call NAME] ARGUMENTS-JSON``; metadata ``tool_calls`` lists their ids and names, a tool
        result's memory has ``tool_call_id``), so an assistant message that only calls tools is stored
        too; messages with neither text nor calls are skipped. Large batches are written in chunks,
        one per event-loop step: every message is stored and searchable when the call returns (a crash
        in the middle of the call may keep the first chunks only).

        With ``id_namespace`` (a persisted conversation's id) each memory's id is derived from the namespace
        and the message id, so writing the same messages again (after a crash, from another process) stores
        each of them once; a message stored already keeps its ``turn_index`` and takes no number, the new
        ones continue after the last one stored (on PostgreSQL whichever process wrote it: see
        :meth:`_remember_chunk`).
        """
        for position, message in enumerate(messages):  # each is dated below: refused before any write
            check_moment(getattr(message, "timestamp", None), f"messages[{position}].timestamp")
        drafts: list[tuple[Memory, MemoryTier, tuple[str | None, str]]] = []
        session = session_id if session_id is not None else "default"
        for message in sorted(messages, key=lambda m: m.timestamp):
            text = message_text(message)
            if not text.strip():
                continue
            message_metadata = dict(message.metadata)
            metadata: dict[str, Any] = {
                **message_metadata,
                "role": message.role.value,
                "message_id": message.id,
                "timestamp": message.timestamp,
            }
            if message.tool_calls:
                metadata["tool_calls"] = [{"id": call.id, "name": call.name} for call in message.tool_calls]
            if message.tool_call_id is not None:
                metadata["tool_call_id"] = message.tool_call_id
            metadata.setdefault("session_id", session)
            metadata.setdefault("speaker", message.name or message.role.value)
            date = message_metadata.get("session_date", session_date)
            if date is None:
                date = datetime.fromtimestamp(message.timestamp).date().isoformat()
            metadata["session_date"] = date
            priority = getattr(message.priority, "value", "normal")
            importance = {"low": 0.3, "normal": 0.5, "high": 0.7, "critical": 0.9}.get(priority, 0.5)
            tier = MemoryTier.LONG if len(text) > _LARGE_MESSAGE_CHARS else MemoryTier.MEDIUM
            memory = self._build_memory(
                text,
                importance,
                None,
                json_safe(metadata),
                user_id,
                tier,
                "context",
                None if id_namespace is None else message_memory_id(id_namespace, message.id),
            )
            memory.created_at = message.timestamp
            drafts.append((memory, tier, (user_id, str(message_metadata.get("session_id", session)))))
        written: list[Memory] = []
        for first in range(0, len(drafts), _REMEMBER_CHUNK):
            if first:
                # a compression evicts hundreds of messages: written a chunk per loop step, so the
                # indexing (FTS inserts, journal) never holds the event loop for long
                await asyncio.sleep(0)
            chunk = drafts[first : first + _REMEMBER_CHUNK]
            written += await self._remember_chunk(chunk, derived_ids=id_namespace is not None)
        return written

    async def _remember_chunk(
        self, chunk: Sequence[tuple[Memory, MemoryTier, tuple[str | None, str]]], *, derived_ids: bool
    ) -> list[Memory]:
        """Number the turns of a chunk of :meth:`remember_messages` and write it; return copies.

        A memory without a ``turn_index`` of its own gets the next number of its (user, session): on a
        storage of this process only, counted from the highest number stored, read once; on a shared one
        (PostgreSQL) read again for every chunk (other processes write the same conversation), under a
        cross-process lock per session held until the chunk is written, so two processes never give out
        the same number. With ``derived_ids`` (a persisted conversation) a message whose memory is stored
        already is returned as stored and takes no number (a re-write left a gap).

        Left open: a lock connection lost in the middle of a chunk releases the lock on the server (see
        :meth:`PostgresDatabase.advisory_locks`), and a process writing the same session at that moment may
        give out numbers this chunk is writing; a memory added with ``add_memory`` and turn metadata of its
        own is not numbered here at all.
        """
        backend = self._require("remember_messages")
        names = sorted({f"turns:{json.dumps(key)}" for _, _, key in chunk})
        # one chunk at a time in this process (it holds at most one lock connection), in every process one
        # chunk of a session at a time (taken in one order: two chunks of several sessions never deadlock)
        async with self._turn_lock, backend.exclusive(*names):
            backend = self._require("remember_messages")
            stored: dict[str, Memory] = {}
            items: list[tuple[Memory, MemoryTier | None]] = [(memory, tier) for memory, tier, _ in chunk]
            if derived_ids:
                items, stored = await self._known_ids(items, archive=True)
            counters: dict[tuple[str | None, str], int] = {}
            for memory, _, key in chunk:
                if memory.id in stored:
                    continue
                turn_index = counters.get(key)
                if turn_index is None:
                    turn_index = None if backend.shared else self._turn_counters.get(key)
                if turn_index is None:  # continue the session's numbering across restarts and processes
                    last = await backend.last_turn_index(*key)
                    turn_index = 0 if last is None else last + 1
                for floors in self._import_turn_floors:  # an import writing this session's turns by chunks
                    turn_index = max(turn_index, floors.get(key, 0))
                counters[key] = turn_index + 1
                memory.metadata.setdefault("turn_index", turn_index)
            new: list[Memory] = []
            try:
                if items:
                    new = await self._add_many(items, explicit_ids=derived_ids, archive=derived_ids)
            except BaseException:
                # maybe written in part: the next chunk of these sessions reads their last number again
                for key in counters:
                    self._turn_counters.pop(key, None)
                raise
            if not backend.shared:
                self._turn_counters.update(counters)
        by_id = {memory.id: memory for memory in new}
        return [(by_id.get(memory.id) or stored[memory.id]).copy() for memory, _, _ in chunk]

    async def _embed_messages_ahead(self, messages: Sequence[Message]) -> None:
        """Embed the texts :meth:`remember_messages` will store for ``messages`` in one call, ahead of it.

        What the eviction writer does before writing a group of evicted messages a few per loop step:
        those writes then reuse the vectors (see :meth:`_embed_ahead`) instead of calling the model for
        every few messages.
        """
        if self.embedder is None:
            return
        texts = [text for text in map(message_text, messages) if text.strip()]
        await self._embed_ahead(texts)

    @records_write_outcome
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
            StorageError: the write failed; the memory is as it was (a crash part-way is settled when the
                store next opens).
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
        self._require("update_memory")
        async with self._write_lock:
            # once begun, to its end: cancelled part-way, the memory's old long-term copy stayed beside the
            # new one in another tier (the next open undid the update); a cancelled caller waits for it.
            # On a shared storage the update is one transaction: cancelled before it committed (waiting
            # for another process's row lock), it is rolled back and the caller is not kept waiting
            began = asyncio.Event()
            update = asyncio.ensure_future(self._update_locked(memory_id, changes, target, content, began))
            await self._to_its_end("update_memory", update, began.is_set)
        result = await self.get_memory(memory_id)
        if result is None:  # another process sharing the storage deleted it since
            raise MemoryNotFoundError(memory_id)
        return result

    async def _update_locked(
        self,
        memory_id: str,
        changes: dict[str, Any],
        target: MemoryTier | None,
        content: str | None,
        began: asyncio.Event,
    ) -> None:
        """The writes of :meth:`update_memory` (call with the write lock); ``began`` set once one is made."""
        backend = self._require("update_memory")
        self._unreserve([memory_id])
        before = await self._locate(memory_id) if content is not None else []
        # only the fields given are written, to every copy where it is now (a copy another process moved
        # meanwhile is changed where it went; a change another process made to another field stays);
        # with a tier, the memory ends up there only; a memory another process deleted is not brought back
        try:
            updated = await backend.update([memory_id], changes, target)
        except asyncio.CancelledError:
            # rolled back, or (on a shared storage) committed while its commit was in flight: then the
            # follow-up below is owed, done in the background once it is known (the caller is not held)
            if content is not None:
                self._follow_up_later(memory_id, before[0] if before else None, content)
            raise
        except StorageError:
            # the embedded store deleted the old text's vector before the write it refused (the memory put
            # back as it was); on a shared storage a failure may come after the commit (a lost connection):
            # the memory, as it is stored now, is embedded again in the background (or by the next open)
            if content is not None and self.embedder is not None and before:
                self._embed_later(before[:1])
            raise
        if not updated:
            raise MemoryNotFoundError(memory_id)
        began.set()
        if before:
            await self._echo_new_text(before[0], content)
        if self.embedder is not None and content is not None:
            copies = await self._locate(memory_id)
            if copies:
                await self._embed_and_store(copies[:1])

    @records_write_outcome
    async def delete_memory(self, memory_id: str) -> Memory:
        """Delete a memory from every tier; return what was deleted.

        A consolidated memory (``merged_from`` set) is deleted with the originals it merged: they hold
        the text it was made of and, superseded by a memory that no longer exists, would stay hidden with
        nothing to restore them. Recursively: an original that is itself a consolidated memory takes its
        own originals with it. Each of them is erased like the memory itself (every tier, its vector, the
        storage's traces). The memory returned names its originals in ``merged_from``.

        Raises:
            MemoryNotFoundError: no memory has this id.
            StorageError: a write failed (a full disk); what was deleted is put back, so the memory (and
                its originals) are as they were (one a process sharing the storage deleted meanwhile stays
                deleted).
        """
        if not isinstance(memory_id, str) or not memory_id:
            raise InvalidMemoryError("memory_id", memory_id, "a non-empty string")
        backend = self._require("delete_memory")
        found = await self._locate(memory_id)
        if not found:
            raise MemoryNotFoundError(memory_id)
        async with contextlib.AsyncExitStack() as held:
            if found[0].merged_from:
                # the originals it holds are read, then deleted: no consolidation or undo (in any process
                # sharing the storage) meanwhile; in the order a consolidation takes these locks
                await held.enter_async_context(self._consolidation_lock)
                await held.enter_async_context(backend.exclusive(*_CONSOLIDATION_LOCKS))
            await held.enter_async_context(self._write_lock)
            copies = await self._locate(memory_id)
            if not copies:
                raise MemoryNotFoundError(memory_id)
            # once begun, to its end: cancelled part-way, a memory stayed in short-term without its long-term
            # copy (or its originals were deleted and it was not); a cancelled caller waits for it. On a
            # shared storage each copy's delete is a transaction: cancelled before the first committed
            # (waiting for another process's row lock), nothing is deleted and the caller is not kept waiting
            removed: list[Memory] = []
            delete = asyncio.ensure_future(self._delete_locked(memory_id, copies, removed))
            await self._to_its_end("delete_memory", delete, lambda: bool(removed))
        return copies[0].copy()

    async def _delete_locked(self, memory_id: str, copies: Sequence[Memory], removed: list[Memory]) -> None:
        """The writes of :meth:`delete_memory` (call with its locks): the memory's originals, then itself.

        Each copy deleted is appended to ``removed`` (empty when called).
        """
        absorbed = await self._absorbed(copies[:1])
        by_original: dict[str, list[Memory]] = {}
        for copy in absorbed:  # deepest first
            by_original.setdefault(copy.id, []).append(copy)
        located: dict[str, list[Memory]] = {}
        backend = self._require("delete_memory")
        try:
            if absorbed:
                # the originals and the memory at once: one transaction per copy, cut short as the first
                # original's delete committed (a cancellation on a shared storage, a process killed on
                # any), left that original deleted and the others and the memory stored, and an undo then
                # brought back part of the originals (the embedded store records the delete with its
                # long-term copies and finishes it when it opens)
                deleted = set(await backend.delete_together([*by_original, memory_id]))
                removed += [copy for copy in [*absorbed, *copies] if (copy.id, copy.tier) in deleted]
            else:
                for original_id, original_copies in by_original.items():
                    await self._delete_every_copy(original_id, original_copies, removed, located)
                await self._delete_every_copy(memory_id, copies, removed, located)
        except asyncio.CancelledError:
            # cancelled before a delete returned: rolled back, or (on a shared storage) committed while its
            # commit was in flight; then the delete had begun: finished in the background, and what is gone
            # erased (its vector)
            self._forget_later([*absorbed, *copies], copies)
            raise
        except StorageError:
            # a write refused part-way (a full disk): what was deleted is put back, so the memory and
            # its originals are as they were (if that fails too, part of them stays deleted)
            with contextlib.suppress(StorageError):
                await self._put_back(removed, located)
            raise
        for deleted_id in (*by_original, memory_id):  # deleted: their pending accesses have no row
            self._pending_touches.pop(deleted_id, None)
        await self._forget([*absorbed, *copies])


async def merged_originals(memory: MemoryWriting, merged: Memory) -> list[str]:
    """The ids of the originals ``delete_memory(merged.id)`` deletes with it, nearest first.

    An original goes with the merged memory while it is still superseded by it (an original that is a
    merged memory itself takes its own originals along).
    """
    found: list[str] = []
    parents = [merged]
    while parents:
        level: list[Memory] = []
        for parent in parents:
            for original_id in parent.merged_from:
                original = await memory.get_memory(original_id) if original_id not in found else None
                if original is not None and original.superseded_by == parent.id:
                    found.append(original_id)
                    level.append(original)
        parents = level
    return found


def message_text(message: Message) -> str:
    """The text a message is remembered by: its content, then a line per tool call it makes."""
    if not message.tool_calls:
        return message.content
    calls = "\n".join(f"[tool call {call.name}] {call.arguments_json()}" for call in message.tool_calls)
    return f"{message.content}\n{calls}" if message.content.strip() else calls
