"""Writes to one tier, movement between tiers, vectors and log compaction for the memory manager.

Overflow moves the least valuable memories (importance, recency of use, access count) down a tier;
memories searched often move up to long-term. Every write here runs with the manager's write lock held.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from context_manager.core.memory.index import VectorIndex, owner_token
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.ranking import recency_decay
from context_manager.core.memory.state import ManagerState

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = ["TierMovement"]

logger = logging.getLogger(__name__)

_SHRINK_TO = 0.9  # an overflowing tier is brought down to 90 % of its capacity in one batch
_DELETE_CHUNK = 128  # volatile copies dropped per event-loop step after a move to long-term
_MOVE_CHUNK = 64  # short-term memories moved down to medium-term per event-loop step


class TierMovement(ManagerState):
    """Placement of memories in tiers, moves between tiers, the vector channel's storage, compaction."""

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

    def _value(self, memory: Memory, now: float) -> float:
        """How much a memory deserves a faster tier: importance, recency of use, access count."""
        recency = recency_decay(now - max(memory.created_at, memory.last_accessed), 1.0)
        access = min(1.0, math.log1p(memory.access_count) / math.log1p(100.0))
        return 0.5 * memory.importance + 0.3 * recency + 0.2 * access

    async def _move_short_overflow(self) -> None:
        """Move the least valuable short-term memories down to medium-term (call with the write lock).

        The move runs a bounded chunk per event-loop step (index deletes and inserts); each memory is in
        exactly one of the two tiers at every step.
        """
        short, medium, _ = self._stores("rebalance")
        capacity = self.config.short_term_memory_size
        if short.count() <= capacity:
            return
        now = self._clock()
        excess = short.count() - int(capacity * _SHRINK_TO)
        victims = sorted(short.all(), key=lambda m: self._value(m, now))[:excess]
        for start in range(0, len(victims), _MOVE_CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = victims[start : start + _MOVE_CHUNK]
            with_copy = [m.id for m in chunk if m.id in self._long_copies]
            if with_copy:
                short.delete(with_copy)  # the long-term copy stays
                self._long_copies.difference_update(with_copy)
            dropped = set(with_copy)
            moving = [m for m in chunk if m.id not in dropped]
            if moving:
                short.delete([m.id for m in moving], log=False)  # the put below records the move
                medium.put(moving)

    async def _rebalance(self) -> None:
        """Bring every tier back within its capacity (short -> medium -> long)."""
        if self._state != "ready":
            return
        short, medium, long_store = self._stores("rebalance")
        async with self._write_lock:
            await self._move_short_overflow()
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
        in_medium = [i for i in ids if i in medium]
        for start in range(0, len(in_medium), _DELETE_CHUNK):
            if start:
                await asyncio.sleep(0)  # FTS deletes: a bounded chunk per event-loop step
            medium.delete(in_medium[start : start + _DELETE_CHUNK])
        in_short = [i for i in ids if i in short]
        self._long_copies.update(in_short)  # short-term keeps its fast copy; long has the durable one

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

    def _cosine_function(self) -> Callable[[str, str], float | None]:
        def cosine(first: str, second: str) -> float | None:
            for index in self._vectors.values():
                a = index.get(first)
                if a is not None:
                    b = index.get(second)
                    return None if b is None else float(a @ b)
            return None

        return cosine
