"""Writes to one tier, movement between tiers, vectors and log compaction for the memory manager.

Overflow moves the least valuable memories (importance, recency of use, access count) down a tier;
memories searched often move up to long-term. Every write here runs with the manager's write lock held
(the overflow moves, in the background, take it per chunk).
The backend (:mod:`~context_manager.core.memory.backend`) does the storage; this module decides what
goes where, identically for every backend.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import StorageError
from context_manager.core.memory.backend import TIER_ORDER, AccessCounter, MemoryBackend, tier_value
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.state import ManagerState
from context_manager.core.threads import to_the_end, to_the_end_once_begun

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = ["TierMovement"]

logger = logging.getLogger(__name__)

# An overflowing tier is brought down to 98 % of its capacity in one batch: small moves, often. The work
# per memory moved is the same, but a move of 10 % of the tier at once (100 memories at the default
# short-term capacity) slowed the adds it overlapped: on PostgreSQL add p99 1.55-1.96 ms at 90 % against
# 1.47-1.48 ms at 98 % (raw insert p99 0.72-0.78 ms), throughput within 3 % (eighteenth session).
_SHRINK_TO = 0.98
# A victim selection ranks the whole tier; it also keeps the next 30 % of the capacity in that order for
# the next overflows (for at most 30 s), so the tier is ranked once every sixteen overflows instead of every
# time: on PostgreSQL each ranking is a read of the tier beside the adds, and slows those it overlaps.
_RESERVE_SHARE = 0.3
_RESERVE_SECONDS = 30.0
_REBALANCE_ROUNDS = 20  # victim selections per rebalance at most (writes may refill the tiers meanwhile)
_WRITE_ROUNDS = 8  # attempts to change a memory another process keeps moving to another tier
_EMBED_BATCH = 512  # memories embedded per call when the vector channel catches up
_AHEAD_TEXTS = 2048  # vectors embedded ahead kept at most: groups of 256 of eight writers at once
_EMBED_WARNING_EVERY = 60.0  # seconds between warnings of a failing embedder (the others are logged at debug)
_last_embed_warning = -_EMBED_WARNING_EVERY


def embedder_failed(error: Exception, consequence: str) -> None:
    """Log that the embedder raised ``error`` and what the memory does instead (a warning a minute at most).

    The vector channel is an addition to the words: a model that fails (out of memory, a file missing) must
    not fail the writes and searches the words serve, nor fail a write that is already stored.
    """
    global _last_embed_warning
    now = time.monotonic()
    level = logging.DEBUG
    if now - _last_embed_warning >= _EMBED_WARNING_EVERY:
        _last_embed_warning = now
        level = logging.WARNING
    logger.log(level, "the embedder failed (%s: %s); %s", type(error).__name__, error, consequence)


# Consolidation (and its undo) reads memories, then merges them: one process at a time does the work, and
# no process moves a tier's overflow meanwhile. The merge is correct without these locks (``backend.merge``
# checks every original under its own per-memory lock: a consolidation that lost its lock connection, or
# ran beside a move, merges nothing twice and brings nothing back); they keep two processes from doing the
# same scan at once. The cross-process locks come first, the manager's write lock last: an overflow move
# holds its lock while it waits for the write lock, so the other order could deadlock two processes.
# Before them, this process's consolidations take turns (``_consolidation_lock``). The delete of a merged
# memory holds them too: no merge or undo changes which originals it holds while it deletes them.
_CONSOLIDATION_LOCKS = ("consolidate", "short-term overflow", "medium-term overflow")


class TierMovement(ManagerState):
    """Placement of memories in tiers, moves between tiers, the vector channel's storage, compaction."""

    async def _remove(self, memory_id: str, tier: MemoryTier) -> bool:
        """Delete one copy; whether it was there. A real delete: then :meth:`_forget`.

        Its pending accesses stay: a delete that fails part-way puts the copies back, history included.
        """
        backend = self._require("remove")
        return bool(await backend.delete(tier, [memory_id]))

    async def _delete_every_copy(
        self,
        memory_id: str,
        copies: Sequence[Memory],
        removed: list[Memory] | None = None,
        located: dict[str, list[Memory]] | None = None,
    ) -> None:
        """Delete every copy of a memory (``copies``, as read); call with the write lock, then ``_forget``.

        The slowest tier's copy goes first: on the embedded store a write the log refuses after the
        long-term copy was deleted can put that copy back (:meth:`_put_back`) in the tier that remembers
        which short-term memories have a long-term copy. Each copy deleted is appended to ``removed``;
        ``located[memory_id]`` holds the copies the latest round set out to delete.

        A process sharing the storage may move a copy to the next tier meanwhile (its move locks the rows:
        it saw the delete, or it finished first and the copy is found here and deleted in the next round).

        Raises:
            StorageError: a write failed (``removed`` holds what was deleted before it); or copies kept
                coming back in another tier (this memory's entries leave ``removed``: they are not to be
                put back; the ones of memories deleted before it, its originals, stay to be put back).
        """
        start = len(removed) if removed is not None else 0
        found = list(copies)
        for _ in range(_WRITE_ROUNDS):
            if located is not None:
                located[memory_id] = list(found)
            for copy in sorted(found, key=lambda memory: -TIER_ORDER[memory.tier]):
                if await self._remove(memory_id, copy.tier) and removed is not None:
                    removed.append(copy)
            found = await self._locate(memory_id)
            if not found:
                return
        if removed is not None:
            del removed[start:]  # moved meanwhile, not refused: put back, a copy could be held in two tiers
        raise StorageError(
            f"memory {memory_id} kept coming back in another tier after {_WRITE_ROUNDS} deletes"
        )

    async def _put_back(self, removed: Sequence[Memory], located: Mapping[str, Sequence[Memory]]) -> None:
        """Store again the copies a delete that failed part-way removed (``removed``), each in its tier.

        ``located``: the copies the delete last set out to delete, per memory. A memory the delete had not
        removed all of those of, and that has no copy left now, was deleted by a process sharing the
        storage meanwhile (which reported it deleted): it stays deleted. The fastest tier first: a
        long-term copy put back beside its short-term one is then known as its durable copy. A copy that
        cannot be written either stays deleted (the write that failed raises).
        """
        backend = self._require("delete_memory")
        taken = {(copy.id, copy.tier) for copy in removed}
        partly = {
            memory_id
            for memory_id, copies in located.items()
            if any((copy.id, copy.tier) not in taken for copy in copies)
        }
        if partly:
            held = {copy.id for copy in await backend.copies(sorted(partly))}
            removed = [copy for copy in removed if copy.id not in partly or copy.id in held]
        by_tier: dict[MemoryTier, list[Memory]] = {}
        for copy in removed:
            by_tier.setdefault(copy.tier, []).append(copy.copy())
        for tier in sorted(by_tier, key=lambda tier: TIER_ORDER[tier]):
            await backend.put(tier, by_tier[tier])

    async def _absorbed(self, merged: Sequence[Memory]) -> list[Memory]:
        """Every stored copy of the originals that consolidations folded into ``merged``, deepest first.

        An original is folded into a merged memory while it is ``superseded_by`` it (the merged memory's
        ``merged_from`` names it). An original may be a merged memory itself (a later consolidation merged
        an earlier one): its own originals are folded in too, and come before it. Deleted in this order,
        an interrupted delete leaves merged memories whose originals are gone (as a cleanup leaves them),
        never originals superseded by a memory that no longer exists.
        """
        backend = self._require("delete_memory")
        levels: list[list[Memory]] = []
        parents = {memory.id: memory for memory in merged if memory.merged_from}
        seen = set(parents)
        while parents:
            wanted = [i for parent in parents.values() for i in parent.merged_from if i not in seen]
            level = [
                copy
                for copy in await backend.copies(list(dict.fromkeys(wanted)))
                if copy.superseded_by is not None and copy.superseded_by in parents
            ]
            seen.update(copy.id for copy in level)
            levels.append(level)
            parents = {copy.id: copy for copy in level if copy.merged_from}
        return [copy for level in reversed(levels) for copy in level]

    async def _to_its_end(self, what: str, work: asyncio.Future[Any], begun: Callable[[], bool]) -> Any:
        """Await ``work`` to its end even if cancelled (on a shared storage, once ``begun()``); its result.

        Before ``begun()`` a cancellation rolls a shared storage's transaction back: see
        :func:`to_the_end_once_begun`.
        """
        if self._require(what).shared:
            return await to_the_end_once_begun(work, begun)
        return await to_the_end(work)

    async def _forget(self, deleted: Sequence[Memory]) -> None:
        """Erase what remains of deleted memories now in no tier (call with the write lock, after deleting).

        The backend scrubs its files (journal records, vectors; see :meth:`MemoryBackend.forget`). A
        conversation turn's text is also the next turn's ``context`` (its first 300 characters, indexed
        in a low-weight column): that copy is cleared, the next turn rewritten, and its earlier versions
        scrubbed, so the deleted text is neither found by search nor left in the storage.
        """
        backend = self._require("forget")
        unique = {memory.id: memory for memory in deleted}
        if not unique:
            return
        remaining = {memory.id for memory in await backend.copies(list(unique))}
        gone = [memory for memory_id, memory in unique.items() if memory_id not in remaining]
        if not gone:
            return
        echoes: dict[tuple[str | None, str, int], str] = {}
        for memory in gone:
            session_id, turn_index = memory.session_id, memory.turn_index
            if session_id is None or turn_index is None:
                continue
            echoes[(memory.user_id, session_id, turn_index + 1)] = memory.content[:300]
            if self._last_turn.get((memory.user_id, session_id)) == (turn_index, memory.content[:300]):
                del self._last_turn[(memory.user_id, session_id)]  # the next turn must not pick it up
        rewritten: list[str] = []
        if echoes:
            gone_ids = {memory.id for memory in gone}
            stale = [
                memory.id
                for memory in await backend.find_turns(list(echoes))
                if memory.id not in gone_ids
                and memory.context
                and memory.turn_index is not None
                and memory.session_id is not None
                and echoes.get((memory.user_id, memory.session_id, memory.turn_index)) == memory.context
            ]
            if stale:
                await backend.update(stale, {"context": ""})
                rewritten = stale
        await backend.forget([memory.id for memory in gone], rewritten)

    async def _echo_new_text(self, old: Memory, content: str | None) -> None:
        """A conversation turn's text was replaced (call with the write lock): the next turn's copy follows.

        The next turn indexes its predecessor's text as its ``context``: left as it was, the replaced
        words (a redacted secret, say) would still find that turn, and the manager's last-turn cache would
        hand them to the turn written next.
        """
        session_id, turn_index = old.session_id, old.turn_index
        if content is None or session_id is None or turn_index is None:
            return
        old_echo, new_echo = old.content[:300], content[:300]
        if old_echo == new_echo:
            return
        key = (old.user_id, session_id)
        if self._last_turn.get(key) == (turn_index, old_echo):
            self._last_turn[key] = (turn_index, new_echo)
        backend = self._require("update_memory")
        stale = [
            memory.id
            for memory in await backend.find_turns([(old.user_id, session_id, turn_index + 1)])
            if memory.id != old.id and memory.context == old_echo
        ]
        if stale:
            await backend.update(stale, {"context": new_echo})

    def _value(self, memory: Memory, now: float) -> float:
        """How much a memory deserves a faster tier (see :func:`.backend.tier_value`)."""
        return tier_value(
            memory.importance, memory.created_at, memory.last_accessed, memory.access_count, now
        )

    async def _move_overflow(self, source: MemoryTier, target: MemoryTier, capacity: int) -> bool:
        """Move the least valuable memories of ``source`` to ``target``, a chunk per hold of the write lock.

        Runs in the background (:meth:`_rebalance`), never inline in a write: the victims are chosen
        without the write lock (by the backend: :meth:`MemoryBackend.overflow_victims`), then moved
        ``backend.move_chunk`` at a time, each chunk one :meth:`MemoryBackend.move_down` under the lock,
        which takes the victims' current copies (a victim deleted, updated or moved meanwhile is skipped
        or moved as it is now). A short-term victim that already has a long-term copy just loses its
        short-term one. Every memory is in at least one tier at every step. Processes sharing a storage
        take turns (one moves, the others skip: the overflow is the same for all).

        Returns:
            Whether it moved anything (``False``: within capacity, or another process moves it).
        """
        backend = self._require("rebalance")
        count = await backend.count(source)
        if count <= capacity:
            return False
        async with backend.try_exclusive(f"{source.value}-term overflow") as ours:
            if not ours:
                return False  # another process moves it
            keep = int(capacity * _SHRINK_TO)
            victims = self._reserved_victims(source, count - keep)
            reserved = victims is not None
            if victims is None:
                victims = await self._rank_victims(source, capacity, keep)
            if not victims:
                return False  # within capacity after all
            chunk = backend.move_chunk
            for first in range(0, len(victims), chunk):
                await asyncio.sleep(0)  # a chunk per event-loop step, even where no call below yields
                async with self._write_lock:
                    if self._state != "ready":
                        return False
                    group = victims[first : first + chunk]
                    moved = await backend.move_down(group, source, target)
                if reserved and moved < len(group):
                    # reserved victims gone meanwhile: moved or deleted by another process (whose move may
                    # also have brought the tier back within its capacity, unseen by the count used here),
                    # or by this one. The next round counts again and ranks the tier if it is still over.
                    self._victim_reserve.pop(source, None)
                    return True
            return True

    async def _rank_victims(self, source: MemoryTier, capacity: int, keep: int) -> list[str]:
        """The victims of an overflow down to ``keep``, ranked now; the next ones are kept in reserve.

        The backend ranks the tier down to ``keep`` less :data:`_RESERVE_SHARE` of the capacity: the
        victims beyond those of this overflow (the least valuable of the memories kept) are the reserve
        :meth:`_reserved_victims` hands out at the next overflows.
        """
        backend = self._require("rebalance")
        reserve = int(capacity * _RESERVE_SHARE)
        ranked = await backend.overflow_victims(source, capacity, max(0, keep - reserve), self._clock())
        # the tier holds len(ranked) + max(0, keep - reserve) memories: this overflow takes it down to keep
        now_count = len(ranked) - min(reserve, keep)
        if now_count <= 0:
            self._victim_reserve.pop(source, None)
            return []
        self._victim_reserve[source] = (ranked[now_count:], self._clock())
        return ranked[:now_count]

    def _unreserve(self, memory_ids: Iterable[str]) -> None:
        """Take memories out of the victim reserves: they were changed or used since the ranking."""
        if not self._victim_reserve:
            return
        changed = set(memory_ids)
        for tier, (ids, ranked_at) in list(self._victim_reserve.items()):
            self._victim_reserve[tier] = ([i for i in ids if i not in changed], ranked_at)

    def _reserved_victims(self, source: MemoryTier, needed: int) -> list[str] | None:
        """``needed`` victims from the reserve of the last ranking, or ``None`` (rank the tier again).

        The reserve serves while it is younger than :data:`_RESERVE_SECONDS` and holds ``needed`` ids.
        Its order is the ranking's. A memory changed or used since then (updated, found by a search,
        merged, imported again) has left the reserve (:meth:`_unreserve`); a memory added since then is
        not a candidate until the next ranking (a tier's capacity is a soft limit). A reserved id
        deleted or moved meanwhile is skipped by the move, which then stops using the reserve.
        """
        held = self._victim_reserve.get(source)
        if held is None or needed <= 0:
            return None
        ids, ranked_at = held
        if len(ids) < needed or not 0 <= self._clock() - ranked_at <= _RESERVE_SECONDS:
            self._victim_reserve.pop(source, None)
            return None
        self._victim_reserve[source] = (ids[needed:], ranked_at)
        return ids[:needed]

    def _start_rebalance(self) -> asyncio.Task[None]:
        """Start the background move of the overflow (or have the running one go round again); its task.

        The overflow moves in the background (it needs the write lock, a chunk at a time), never in the
        write that finds it: one rebalance at a time is enough, it keeps moving until both tiers are within
        their capacity.
        """
        task = self._rebalance_task
        if task is None or task.done():
            task = self._rebalance_task = self._spawn(self._rebalance())
        else:  # it may be past its last capacity check: it goes round again before it ends
            self._rebalance_again = True
        return task

    async def _rebalance(self) -> None:
        """Bring every tier back within its capacity (short -> medium -> long), in the background.

        Writes never move an overflow themselves: the first write that finds a tier over its capacity
        starts this task (see ``_add_many``), which moves it a chunk at a time, taking the write lock per
        chunk, so writes go on between chunks instead of waiting for the whole batch (issue 15.6: 200
        memories committed under the lock held every writer for 100-250 ms at 100k memories; issue 12:
        the short-term overflow moved inline made one PostgreSQL add in a hundred 5-10 times slower than
        a raw insert). Writes made meanwhile may push a tier over again: it picks new victims until both
        tiers are within their capacity (writes far over a capacity wait: see ``_add_many``).
        """
        while self._state == "ready":
            self._rebalance_again = False
            await self._rebalance_rounds()
            # no await between this check and the end of the task: a write that finds an overflow either
            # set the flag before it, or sees this task done and starts a new one
            if not self._rebalance_again:
                return

    async def _rebalance_rounds(self) -> None:
        """Move overflows until both tiers are within capacity (or enough rounds), then check long-term."""
        if self._state != "ready":
            return
        backend = self._require("rebalance")
        for _ in range(_REBALANCE_ROUNDS):
            if self._state != "ready":
                return
            moved_short = await self._move_overflow(
                MemoryTier.SHORT, MemoryTier.MEDIUM, self.config.short_term_memory_size
            )
            if self._state != "ready":
                return
            moved_medium = await self._move_overflow(
                MemoryTier.MEDIUM, MemoryTier.LONG, self.config.medium_term_memory_size
            )
            if not (moved_short or moved_medium):
                break
        if not self._over_capacity_warned and self._state == "ready":
            count = await backend.count(MemoryTier.LONG)
            if count > self.config.long_term_memory_size:
                self._over_capacity_warned = True
                logger.warning(
                    "long-term memory holds %d memories, over its capacity of %d; nothing is dropped: "
                    "run cleanup_old_memories() or raise long_term_memory_size",
                    count,
                    self.config.long_term_memory_size,
                )

    async def _move_to_long(self, memories: Sequence[Memory]) -> None:
        """Copy memories to long-term (committed), then drop their medium-term copies (call with the lock).

        A short-term memory keeps its fast copy; the long-term one is the durable one.
        """
        backend = self._require("move")
        for tier in (MemoryTier.SHORT, MemoryTier.MEDIUM):
            group = [memory for memory in memories if memory.tier is tier]
            if group:
                await backend.move(group, tier, MemoryTier.LONG)

    async def _flush_touches(self) -> None:
        if self._state != "ready":
            return
        async with self._write_lock:
            await self._flush_touches_locked()

    async def _flush_touches_locked(self) -> None:
        if not self._pending_touches and not self._unsettled_accesses and not self._touched_volatile:
            return
        backend = self._require("flush")
        if self._unsettled_accesses and isinstance(backend, AccessCounter):
            await self._add_unsettled_accesses(backend)
        # emptied in place: a finalizer holds this dict (see manager._close_collected)
        pending = dict(self._pending_touches)
        self._pending_touches.clear()
        volatile, self._touched_volatile = self._touched_volatile, set()
        self._unreserve(volatile)  # used since the ranking: worth more now (long-term copies never move)
        try:
            if not pending:
                pass  # only the batches earlier flushes left unsettled, added above
            elif isinstance(backend, AccessCounter):  # other processes count too: add this one's accesses
                batch = {memory_id: (at, added) for memory_id, (at, _, added, _) in pending.items()}
                attempts: list[str] = []
                try:
                    await backend.add_accesses(batch, attempts)
                except (asyncio.CancelledError, StorageError):
                    # cancelled (a caller's timeout, a close) or failed: maybe committed, maybe not. Kept with
                    # the ids of the transactions that tried, for the next flush, which asks the server
                    # whether one of them committed: added once, never lost, never twice
                    self._unsettled_accesses.append((batch, attempts))
                    raise
            else:
                try:
                    await backend.touch({i: (at, count) for i, (at, count, _, _) in pending.items()})
                except (asyncio.CancelledError, StorageError):
                    # the counts are absolute: written again by the next flush, merged with the accesses
                    # recorded meanwhile (written already or not, each is counted once)
                    self._keep_touches(pending)
                    raise
        except BaseException:
            self._touched_volatile.update(volatile)  # looked at by the flush that writes them
            raise
        # a memory found in long-term (search returns the fastest tier's copy) has nothing to move up: only
        # the copies of those found in short- or medium-term are read back (at 100k memories, reading every
        # touched long-term row held the loop about 9 ms per flush); those of this flush and those of the
        # batches an earlier flush left unsettled, added above
        if volatile:
            try:
                await self._promote_accessed(backend, volatile)
            except BaseException:
                self._touched_volatile.update(volatile)  # cut short: the next flush looks at them again
                raise

    async def _promote_accessed(self, backend: MemoryBackend, ids: Iterable[str]) -> None:
        """Move to long-term those of ``ids`` (short- or medium-term when searched) accessed often enough."""
        copies = await backend.copies(list(ids))
        with_copy = await backend.long_copies([m.id for m in copies if m.tier is MemoryTier.SHORT])
        hot = [
            memory
            for memory in copies
            if memory.access_count >= self.promotion_access_count
            and (
                memory.tier is MemoryTier.MEDIUM
                or (memory.tier is MemoryTier.SHORT and memory.id not in with_copy)
            )
        ]
        if hot:
            await self._move_to_long(hot)

    def _keep_touches(self, pending: Mapping[str, tuple[float, int, int, str | None]]) -> None:
        """Put back a batch of absolute access counts a flush did not write, merged with the newer ones.

        An access recorded since was counted from what was stored (the batch or not) or from the batch
        itself: its count is at least the batch's plus the accesses recorded since.
        """
        for memory_id, (at, count, added, owner) in pending.items():
            newer = self._pending_touches.get(memory_id)
            if newer is None:
                self._pending_touches[memory_id] = (at, count, added, owner)
            else:
                self._pending_touches[memory_id] = (
                    max(at, newer[0]),
                    max(newer[1], count + newer[2]),
                    added + newer[2],
                    newer[3],
                )

    async def _add_unsettled_accesses(self, backend: AccessCounter) -> None:
        """Add the batches of accesses earlier flushes left unsettled (:meth:`_flush_touches_locked`).

        Each is retried with the ids of its earlier attempts (written once even if one of them committed),
        oldest first; one that fails again stays for the next flush.
        """
        while self._unsettled_accesses:
            batch, attempts = self._unsettled_accesses[0]
            await backend.add_accesses(batch, attempts)
            self._unsettled_accesses.pop(0)

    def _maybe_compact(self) -> None:
        backend = self._backend
        if backend is None or self._state != "ready" or self._compacting:
            return
        if backend.needs_compaction():
            self._compacting = True
            self._spawn(self._compact())

    async def _compact(self) -> None:
        try:
            async with self._write_lock:
                if self._state == "ready":
                    await self._require("compact").compact()
        finally:
            self._compacting = False

    def _embedding_model(self) -> str:
        """The key stored vectors are kept under: another key means another model (re-embed them).

        An embedder's ``name`` when it has one (the packaged MiniLM's does not depend on where it is
        installed, so a rebuilt virtualenv or another host sharing the store reuses the vectors).
        """
        embedder = self.embedder
        assert embedder is not None
        name = (
            getattr(embedder, "name", None)
            or getattr(embedder, "model_name", None)
            or getattr(embedder, "model_path", None)
        )
        return f"{type(embedder).__name__}:{name or ''}:{embedder.dimension}"

    async def _embed(self, texts: list[str]) -> numpy.ndarray:
        assert self.embedder is not None
        return await asyncio.to_thread(self.embedder.embed, texts)

    async def _embed_ahead(self, texts: Sequence[str]) -> None:
        """Embed ``texts`` about to be written in one worker-thread call; their writes reuse the vectors.

        A model costs far less per text in one large call than in many small ones (MiniLM: 400 texts
        took 5.9 s in calls of 8, 2.85 s in one), and the eviction writer stores evicted messages a few
        per loop step. The vectors are kept by text, for the embedder that made them, until ``close()``:
        those of the latest calls, up to :data:`_AHEAD_TEXTS` texts (the oldest go first), since several
        writers share one memory manager (the managers of a process sharing a store) and a group
        embedded ahead must not be pushed out by another writer's before its writes use it.
        """
        embedder = self.embedder
        unique = list(dict.fromkeys(texts))
        if embedder is None or not unique:
            return
        try:
            vectors = await self._embed(unique)
        except Exception as error:  # each write tries again (and stores its memory whatever happens)
            embedder_failed(error, "the memories about to be written are embedded one write at a time")
            return
        ahead = self._embedded_ahead
        known = dict(ahead[1]) if ahead is not None and ahead[0] is embedder else {}
        for text, vector in zip(unique, vectors, strict=True):
            known.pop(text, None)  # moved to the newest end
            known[text] = vector
        for text in list(itertools.islice(known, max(0, len(known) - _AHEAD_TEXTS))):
            del known[text]
        self._embedded_ahead = (embedder, known)

    async def _embed_and_store(self, memories: Sequence[Memory]) -> None:
        """Embed stored memories and save their vectors; cancelled, a background task does it soon after."""
        if not memories or self.embedder is None:
            return
        try:
            await self._embed_and_save(memories)
        except asyncio.CancelledError:
            # the memories are stored: found by their words meanwhile, by their meaning once embedded (they
            # waited for the next open of the store)
            self._embed_later(memories)
            raise

    def _embed_later(self, memories: Sequence[Memory]) -> None:
        """Have :meth:`_embed_unembedded` embed ``memories`` in the background (once the writer is done)."""
        if self._state != "ready" or self._closing:
            return  # the next open of the store embeds them
        self._unembedded.update(dict.fromkeys(memory.id for memory in memories))
        task = self._embed_task
        if task is None or task.done():
            self._embed_task = self._spawn(self._embed_unembedded())

    async def _embed_unembedded(self) -> None:
        """Embed the memories a cancelled write left without their vector, as they are stored now.

        A batch at a time, embedded without the write lock (a slow model call holds up no write, and
        ``close()`` cancels it: the next open embeds what is left); the vectors are saved under the lock,
        only for the memories still stored with the text embedded (one updated meanwhile has the vector
        its update made, one deleted meanwhile gets none).
        """
        while self._unembedded and self._state == "ready" and not self._closing and self.embedder is not None:
            ids = list(itertools.islice(self._unembedded, _EMBED_BATCH))
            for memory_id in ids:
                del self._unembedded[memory_id]
            memories = list((await self._get_many(ids)).values())
            texts = [memory.content for memory in memories]  # the stored objects may change meanwhile
            vectors = await self._vectors_of_texts(texts, len(memories)) if memories else None
            if vectors is None:
                continue
            # saved in a task of its own: a close() cancelling this one waits for the save to end
            await to_the_end(asyncio.ensure_future(self._save_unchanged(memories, texts, vectors)))

    async def _save_unchanged(self, memories: Sequence[Memory], texts: Sequence[str], vectors: Any) -> None:
        """Save the vectors of the memories still stored with the text they were made of."""
        async with self._write_lock:
            if self._state != "ready" or self.embedder is None:
                return
            now = await self._get_many([memory.id for memory in memories])
            kept = [
                position
                for position, memory in enumerate(memories)
                if memory.id in now and now[memory.id].content == texts[position]
            ]
            if kept:
                await self._require("embed").save_vectors(
                    self._embedding_model(), [memories[i] for i in kept], vectors[kept]
                )

    def _follow_up_later(self, memory_id: str, before: Memory | None, content: str) -> None:
        """Finish in the background an update of a text cancelled as it wrote (see :meth:`_follow_up`)."""
        if self._state != "ready" or self._closing:
            return
        self._spawn(self._follow_up(memory_id, before, content))

    async def _follow_up(self, memory_id: str, before: Memory | None, content: str) -> None:
        """The follow-up of an update to ``content`` cancelled as it committed, if it committed.

        On a shared storage an update cancelled while its commit was in flight may have committed; its
        caller got the cancellation before the follow-up. Once the write lock is free (the cancelled update
        has settled), the memory found stored with ``content`` gets it: the next turn's copy of its text
        (``before``: the memory as it was), and its vector, embedded without the lock.
        """
        async with self._write_lock:
            if self._state != "ready":
                return
            copies = await self._locate(memory_id)
            if not copies or copies[0].content != content:
                return  # rolled back (or deleted, or changed again by a write that did its own follow-up)
            if before is not None:
                await self._echo_new_text(before, content)
        if self.embedder is not None:
            self._embed_later(copies[:1])

    def _forget_later(self, memories: Sequence[Memory], copies: Sequence[Memory] = ()) -> None:
        """Erase in the background what remains of those of ``memories`` now in no tier (:meth:`_forget`).

        For a delete cancelled as it wrote: on a shared storage, one cancelled while its commit was in flight
        may have committed, and its caller got the cancellation before the rest. ``copies``: the copies of the
        memory it deleted (its own, not its originals'); the copy of the slowest tier, deleted first, gone
        while the others stay where they were means its first delete committed: the others are deleted too
        (once begun, to its end). A copy found in a tier it was not in means another process moved it (a
        delete rolled back while that move held the row): the memory stays. A store's next open erases the
        vectors of memories in no tier too (PostgreSQL).
        """
        if self._state != "ready" or self._closing or not memories:
            return
        self._spawn(self._forget_settled(list(memories), list(copies)))

    async def _forget_settled(self, memories: Sequence[Memory], copies: Sequence[Memory]) -> None:
        async with self._write_lock:  # the cancelled delete has settled once the lock is free
            if self._state != "ready":
                return
            if copies:
                memory_id = copies[0].id
                left = await self._locate(memory_id)
                tiers, left_tiers = {copy.tier for copy in copies}, {copy.tier for copy in left}
                first = max(tiers, key=TIER_ORDER.__getitem__)  # deleted first (_delete_every_copy)
                if left and first not in left_tiers and left_tiers <= tiers:
                    await self._delete_every_copy(memory_id, left)
                    self._pending_touches.pop(memory_id, None)
            await self._forget(memories)

    def _stop_embedding_later(self) -> None:
        """Cancel the background embedding (``close()``): the next open embeds what it left."""
        task = self._embed_task
        if task is not None and not task.done():
            task.cancel()
        self._unembedded.clear()

    async def _embed_and_save(self, memories: Sequence[Memory]) -> None:
        vectors = await self._vectors_of_texts([memory.content for memory in memories], len(memories))
        if vectors is not None:
            await self._require("embed").save_vectors(self._embedding_model(), memories, vectors)

    async def _vectors_of_texts(self, texts: Sequence[str], count: int) -> Any:
        """The vectors of ``texts`` (those of ``count`` stored memories); ``None`` if the embedder failed."""
        assert self.embedder is not None
        ahead = self._embedded_ahead
        try:
            if ahead is not None and ahead[0] is self.embedder:
                import numpy

                known = ahead[1]
                missing = list(dict.fromkeys(text for text in texts if text not in known))
                made = dict(zip(missing, await self._embed(missing), strict=True)) if missing else {}
                return numpy.stack([known[text] if text in known else made[text] for text in texts])
            return await self._embed(list(texts))
        except Exception as error:
            # the memories are stored already: the write succeeded; their vectors are made when a manager
            # next opens this store with this embedder (the vector channel catches up then)
            embedder_failed(
                error,
                f"{count} memories stored without their vectors (found by their words; embedded "
                "when the store is next opened with this embedder)",
            )
            return None

    async def _load_vectors(self) -> None:
        assert self.embedder is not None
        backend = self._require("vectors")
        missing = await backend.open_vectors(self._embedding_model(), int(self.embedder.dimension))
        for start in range(0, len(missing), _EMBED_BATCH):
            await self._embed_and_save(missing[start : start + _EMBED_BATCH])

    async def _cosine_function(self, memories: Sequence[Memory]) -> Callable[[str, str], float | None]:
        vectors = await self._require("vectors").vectors_of([memory.id for memory in memories])

        def cosine(first: str, second: str) -> float | None:
            a = vectors.get(first)
            b = vectors.get(second)
            return None if a is None or b is None else float(a @ b)

        return cosine
