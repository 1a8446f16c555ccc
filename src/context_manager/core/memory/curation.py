"""Consolidation of near-duplicates (and its undo) and cleanup of old memories."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from context_manager.core.errors import (
    InvalidMemoryError,
    MemoryNotFoundError,
)
from context_manager.core.memory.backend import SUPERSEDED_ONLY, Staleness
from context_manager.core.memory.consolidation import near_duplicate_groups
from context_manager.core.memory.models import Memory, MemoryTier, new_memory_id
from context_manager.core.memory.state import UserScope
from context_manager.core.memory.tiers import _CONSOLIDATION_LOCKS, _WRITE_ROUNDS, TierMovement
from context_manager.core.memory.validation import (
    check_importance,
    check_number,
    check_user,
)
from context_manager.core.memory.write_health import records_write_outcome

__all__ = ["MemoryCuration"]

_A_FRACTION = "a number > 0 and <= 1"


def _is_fraction(value: float) -> bool:
    return 0 < value <= 1


class MemoryCuration(TierMovement):
    """``consolidate_memories``, ``undo_consolidation`` and ``cleanup_old_memories``."""

    @records_write_outcome
    async def consolidate_memories(
        self,
        similarity_threshold: float = 0.85,
        *,
        user_id: UserScope = None,
        semantic_threshold: float = 0.95,
    ) -> dict[str, Any]:
        """Merge near-duplicate memories into one long-term memory each.

        Two memories are near-duplicates when the Jaccard similarity of their word sets is at least
        ``similarity_threshold`` (or, with an embedder, their cosine is at least ``semantic_threshold``)
        and they name the same identifiers (numbers, codes, e-mail and web addresses, names): "account
        12345678" and "account 12345679" are never merged. A group is merged only when every two of
        its members are near-duplicates (no chains: A like B and B like C does not merge A with C).
        See :mod:`~context_manager.core.memory.consolidation`.

        The merged memory keeps the most important text (with that original's metadata: the others'
        metadata is not merged in), the highest importance, the union of tags, the summed access counts
        and ``merged_from``; the originals are marked ``superseded_by`` (hidden
        from search, kept until cleanup or until the merged memory is deleted) so
        :meth:`undo_consolidation` can reverse a wrong merge.

        Returns:
            ``consolidated_count`` (originals merged), ``groups`` (one dict per merge: ``merged_id``,
            ``merged_from``, ``content``), ``merged_ids`` (the new memories), ``examined``.
        """
        similarity_threshold = check_number(
            similarity_threshold, "similarity_threshold", _is_fraction, _A_FRACTION
        )
        semantic_threshold = check_number(semantic_threshold, "semantic_threshold", _is_fraction, _A_FRACTION)
        check_user(user_id, allow_all=True)
        backend = self._require("consolidate_memories")
        # one consolidation at a time across every process sharing the storage, reading inside the lock:
        # a memory another process merged meanwhile is superseded and is not merged twice
        async with self._consolidation_lock, backend.exclusive(*_CONSOLIDATION_LOCKS), self._write_lock:
            await self._flush_touches_locked()
            memories = [m for m in await backend.scan(user_id, every_copy=False) if m.superseded_by is None]
            memories.sort(key=lambda memory: memory.id)  # ties broken alike whatever order a backend scans
            cosine = await self._cosine_function(memories) if self.embedder is not None else None
            groups = await asyncio.to_thread(
                near_duplicate_groups,
                memories,
                similarity_threshold,
                cosine,
                semantic_threshold,
            )
            now = self._clock()
            report_groups: list[dict[str, Any]] = []
            candidates: list[tuple[Memory, list[Memory]]] = []
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
                candidates.append((merged, group))
            # each group at once, only if none of its originals was deleted, changed or merged by another
            # process since the scan (the originals themselves are not written back, only marked)
            self._unreserve(member.id for _, group in candidates for member in group)
            # once begun, to its end: cancelled part-way, the originals showed unmerged until the next open
            # finished the merge; a cancelled caller waits for it (not for the vectors below: a merged
            # memory without one is found by its words, and embedded in the background soon after). On a
            # shared storage the merge is one transaction: cancelled before it committed (waiting for
            # another process's row lock), it is rolled back and the caller is not kept waiting
            merge = self._require("consolidate_memories").merge
            done: list[bool] = []
            if candidates:
                merging = asyncio.ensure_future(merge(candidates))
                # begun only once done: the one transaction commits (or not) as a whole
                try:
                    done = await self._to_its_end("consolidate_memories", merging, merging.done)
                except asyncio.CancelledError:
                    # rolled back, or committed while its commit was in flight: the merged memories
                    # stored then are embedded in the background (the others are not stored: skipped)
                    if self.embedder is not None:
                        self._embed_later([merged for merged, _ in candidates])
                    raise
            for (merged, group), was_merged in zip(candidates, done, strict=True):
                if not was_merged:
                    continue
                merged_memories.append(merged)
                superseded.extend(group)
                report_groups.append(
                    {
                        "merged_id": merged.id,
                        "merged_from": list(merged.merged_from),
                        "content": merged.content,
                    }
                )
            if merged_memories and self.embedder is not None:
                await self._embed_and_store(merged_memories)
        return {
            "consolidated_count": len(superseded),
            "groups": report_groups,
            "merged_ids": [memory.id for memory in merged_memories],
            "examined": len(memories),
        }

    async def _unmerge_locked(self, merged: Memory, began: asyncio.Event) -> list[str]:
        """Undo a merge and erase the merged memory (:meth:`undo_consolidation`); call with the locks.

        ``began`` is set once the undo is written (the merged memory's vector is erased after it).
        """
        backend = self._require("undo_consolidation")
        try:
            restored, merged_copies = await backend.unmerge(merged.id, merged.merged_from)
        except asyncio.CancelledError:
            # cancelled before it was written (a shared storage's transaction, rolled back) or as its commit
            # went through: then the merged memory is gone, and its vector goes too (_forget erases only
            # what is in no tier)
            await self._forget([merged])
            raise
        began.set()
        self._pending_touches.pop(merged.id, None)
        await self._forget(merged_copies)
        return restored

    @records_write_outcome
    async def undo_consolidation(self, merged_id: str) -> dict[str, Any]:
        """Reverse a consolidation: delete the merged memory and make its originals visible again.

        Merges nest (a later consolidation may merge a merged memory with others); they are undone
        latest first: undoing the later one makes this one visible again, and this one can then be undone.

        Returns:
            ``restored`` (ids made visible again) and ``deleted`` (the merged id).

        Raises:
            MemoryNotFoundError: no memory has this id.
            InvalidMemoryError: the memory is not the result of a consolidation; or one of its originals is
                no longer stored (``cleanup_old_memories`` removes superseded originals; a delete); or a
                later consolidation merged it in turn (its ``superseded_by``; the message names it: undo
                that one first). Nothing is changed, the merged memory is kept.
        """
        merged = await self.get_memory(merged_id)
        if merged is None:
            raise MemoryNotFoundError(merged_id)
        if not merged.merged_from:
            raise InvalidMemoryError("merged_id", merged_id, "the id of a consolidated memory")
        backend = self._require("undo_consolidation")
        async with self._consolidation_lock, backend.exclusive(*_CONSOLIDATION_LOCKS), self._write_lock:
            self._unreserve([merged_id, *merged.merged_from])
            # once begun, to its end (a cancelled caller waits for it): never originals shown beside the
            # merged memory until the next open. On a shared storage the undo is one transaction: cancelled
            # before it committed (waiting for another process's row lock), it is rolled back and the
            # caller is not kept waiting
            began = asyncio.Event()
            unmerge = asyncio.ensure_future(self._unmerge_locked(merged, began))
            restored = await self._to_its_end("undo_consolidation", unmerge, began.is_set)
        return {"restored": restored, "deleted": merged_id}

    @records_write_outcome
    async def cleanup_old_memories(
        self,
        max_age_days: float = 30.0,
        *,
        user_id: UserScope = None,
        keep_importance: float | None = None,
        remove_superseded: bool = True,
    ) -> dict[str, Any]:
        """Delete memories not created or used for ``max_age_days`` days, and superseded originals.

        A consolidated memory removed takes the originals it merged with it (recursively, as
        :meth:`delete_memory` does), whatever ``remove_superseded`` and ``keep_importance``; so do
        originals whose consolidated memory is no longer stored (left by an interrupted delete, or by an
        earlier version).

        Args:
            max_age_days: Age (since creation or last access, whichever is later) beyond which a memory
                is removed; 0 removes every memory not used right now.
            user_id: Whose memories (``None``: the default namespace; :data:`ALL_USERS`: everyone's).
            keep_importance: Memories at least this important are kept whatever their age.
            remove_superseded: Also delete the originals that a consolidation superseded (which
                ``undo_consolidation`` then cannot restore).

        Returns:
            ``removed_count``, ``by_tier`` (``short``/``medium``/``long``: the copies of the memories
            removed, per tier; one with a long-term copy counts twice), ``superseded_removed``,
            ``removed_ids``, ``max_age_days``.
        """
        max_age_days = check_number(
            max_age_days, "max_age_days", lambda days: days >= 0, "a finite number >= 0"
        )
        if keep_importance is not None:
            keep_importance = check_importance(keep_importance, field="keep_importance")
        check_user(user_id, allow_all=True)
        backend = self._require("cleanup_old_memories")
        cutoff = self._clock() - max_age_days * 86400.0
        async with self._write_lock:
            await self._flush_touches_locked()
            copies = await backend.scan(user_id, every_copy=True)
            deleted: list[tuple[str, MemoryTier]] = []  # every copy this call deleted
            stale = Staleness(cutoff, keep_importance, remove_superseded)
            seen = {(memory.id, memory.tier) for memory in copies}
            # a memory is stale when every copy of it is: a search meanwhile updates the in-process copy
            # it finds (short- or medium-term) before the access is written to the others
            fresh = {memory.id for memory in copies if not stale.applies(memory)}
            doomed = [memory for memory in copies if memory.id not in fresh]
            removed = await self._delete_stale(doomed, stale, seen, deleted)
            # then the originals of merged memories no longer stored (deleted just now, or earlier by a
            # delete that was interrupted or by a version that left them), whatever ``remove_superseded``
            # and ``keep_importance``: superseded by a memory that does not exist, nothing could ever show
            # or restore them
            orphans = await self._orphaned(copies)
            if orphans:
                removed.update(await self._delete_stale(orphans, SUPERSEDED_ONLY, seen, deleted))
            # a memory in several tiers used while its copies were deleted one tier at a time (a process
            # sharing the storage wrote the access in between) keeps the copies still to be deleted then:
            # it stays, is not reported removed nor counted in by_tier, and keeps its pending accesses
            copy_counts = Counter(memory.id for memory in copies)
            several = [memory_id for memory_id in removed if copy_counts[memory_id] > 1]
            if several:
                for memory_id in {copy.id for copy in await backend.copies(several)}:
                    del removed[memory_id]
            by_tier = {tier.value: 0 for tier in MemoryTier}
            for memory_id, tier in deleted:
                if memory_id in removed:
                    by_tier[tier.value] += 1
            for memory_id in removed:
                self._pending_touches.pop(memory_id, None)
            await self._forget(list(removed.values()))
            superseded_removed = {
                memory_id for memory_id, memory in removed.items() if memory.superseded_by is not None
            }
        return {
            "removed_count": len(removed),
            "by_tier": by_tier,
            "superseded_removed": len(superseded_removed),
            "removed_ids": sorted(removed),
            "max_age_days": max_age_days,
        }

    async def _delete_stale(
        self,
        victims: Sequence[Memory],
        only: Staleness,
        seen: set[tuple[str, MemoryTier]],
        deleted: list[tuple[str, MemoryTier]],
    ) -> dict[str, Memory]:
        """Delete the copies ``victims`` (from a scan) that are still ``only``-stale; return what was removed.

        Call with the write lock held. ``seen`` holds every ``(id, tier)`` the scan saw (a copy found in
        another tier since was moved there meanwhile and is deleted there; one the scan saw and kept
        stays); each copy deleted is appended to ``deleted``.
        """
        backend = self._require("cleanup_old_memories")
        doomed: dict[MemoryTier, list[str]] = {tier: [] for tier in MemoryTier}
        memories: dict[str, Memory] = {}
        for memory in victims:
            doomed[memory.tier].append(memory.id)
            memories[memory.id] = memory
        removed: dict[str, Memory] = {}
        for _ in range(_WRITE_ROUNDS):
            absent: list[str] = []
            for tier, ids in doomed.items():
                # only what this call deleted counts (another process may have removed some meanwhile)
                # deleted only if still stale: a process sharing the storage may have used it, or an
                # undone consolidation restored it, since the scan
                present = await backend.delete(tier, ids, only=only)
                for memory_id in present:
                    removed[memory_id] = memories[memory_id]
                    deleted.append((memory_id, tier))
                gone = set(present)
                absent.extend(memory_id for memory_id in ids if memory_id not in gone)
            if not absent:
                break
            # a process sharing the storage may have moved a doomed copy to the next tier since the scan
            # (its move locks the rows: it saw the delete, or it finished first and the copy is found
            # here); a copy the scan saw and kept stays
            doomed = {tier: [] for tier in MemoryTier}
            for copy in await backend.copies(absent):
                if (copy.id, copy.tier) not in seen:
                    seen.add((copy.id, copy.tier))
                    doomed[copy.tier].append(copy.id)
            if not any(doomed.values()):
                break
        return removed

    async def _orphaned(self, copies: Sequence[Memory]) -> list[Memory]:
        """The copies (from a scan) superseded by a memory no longer stored, and those they merged in turn.

        Whether a merged memory is still stored is asked of the storage now, not taken from the scan. A
        consolidation merges memories of one user only, so what an orphan merged in turn is in the scan.
        """
        backend = self._require("cleanup_old_memories")
        children: dict[str, list[Memory]] = {}
        for copy in copies:
            if copy.superseded_by is not None:
                children.setdefault(copy.superseded_by, []).append(copy)
        if not children:
            return []
        stored = {copy.id for copy in await backend.copies(list(children))}
        parents = [merged_id for merged_id in children if merged_id not in stored]
        visited = set(parents)
        orphans: list[Memory] = []
        while parents:
            level = [copy for merged_id in parents for copy in children.get(merged_id, [])]
            orphans.extend(level)
            parents = [i for i in dict.fromkeys(copy.id for copy in level) if i not in visited]
            visited.update(parents)
        return orphans
