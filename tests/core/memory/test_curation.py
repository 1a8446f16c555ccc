"""Merged memories and what becomes of their originals: nested undos, deletes and cleanups.

A consolidated memory hides its originals (``superseded_by``). No call may leave an original superseded by
a memory that no longer exists: hidden from every search, impossible to restore, its text kept. Every test
runs on both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from context_manager.core.errors import InvalidMemoryError, MemoryNotFoundError
from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import Memory, MemoryTier

from .conftest import FakeClock

DAY = 86400.0


async def copies_of(manager: MemoryManager, *ids: str) -> list[dict[str, Any]]:
    """Every stored copy of the memories ``ids``, comparable before and after."""
    await manager.flush()
    wanted = set(ids)
    return sorted(
        (copy.to_dict() for copy in await manager.stored_copies() if copy.id in wanted),
        key=lambda stored: (stored["id"], stored["tier"]),
    )


async def orphans(manager: MemoryManager) -> list[tuple[str, str]]:
    """``(id, superseded_by)`` of every copy superseded by a memory that is not stored."""
    stored = await manager.stored_copies()
    ids = {copy.id for copy in stored}
    return sorted(
        (copy.id, copy.superseded_by)
        for copy in stored
        if copy.superseded_by is not None and copy.superseded_by not in ids
    )


async def merge_one(manager: MemoryManager) -> str:
    """Run a consolidation that must merge exactly one group; its merged id."""
    report = await manager.consolidate_memories(similarity_threshold=0.9)
    assert len(report["merged_ids"]) == 1, report
    return str(report["merged_ids"][0])


async def nested_merge(manager: MemoryManager) -> tuple[Memory, Memory, Memory, str, str]:
    """A and B merged into M1, then M1 and C into M2 (the originals in three tiers)."""
    a = await manager.add_memory("The user lives in Berlin, Germany", importance=0.4)
    b = await manager.add_memory("the user lives in Berlin Germany!", importance=0.6, tier="medium")
    first = await merge_one(manager)
    c = await manager.add_memory("The user lives in Berlin, Germany.", importance=0.5, tier="long")
    second = await merge_one(manager)
    merged = await manager.get_memory(second)
    assert merged is not None and sorted(merged.merged_from) == sorted([first, c.id])
    return a, b, c, first, second


async def test_a_merge_a_later_merge_took_in_is_undone_after_that_one(manager: MemoryManager) -> None:
    """Undoing M1 after M2 = merge(M1, C) deleted M1 (which M2 names) and showed A and B beside M2 (the
    same text twice); M2 could then never be undone and C stayed hidden for good. Now the undo of M1 is
    refused, naming M2, and nothing changes; undone in order, M2 then M1, A, B and C are back as they were."""
    a = await manager.add_memory("The user lives in Berlin, Germany", importance=0.4)
    b = await manager.add_memory("the user lives in Berlin Germany!", importance=0.6, tier="medium")
    before_first = await copies_of(manager, a.id, b.id)
    first = await merge_one(manager)
    c = await manager.add_memory("The user lives in Berlin, Germany.", importance=0.5, tier="long")
    before_second = await copies_of(manager, c.id)
    second = await merge_one(manager)

    everything = await copies_of(manager, a.id, b.id, c.id, first, second)
    with pytest.raises(InvalidMemoryError, match=f"undo_consolidation\\('{second}'\\) first") as refused:
        await manager.undo_consolidation(first)
    assert refused.value.field == "merged_id" and refused.value.got == first
    assert await copies_of(manager, a.id, b.id, c.id, first, second) == everything
    assert [m.id for m in await manager.search_memory("Berlin")] == [second]

    undone = await manager.undo_consolidation(second)
    assert sorted(undone["restored"]) == sorted([first, c.id])
    assert {m.id for m in await manager.search_memory("Berlin")} == {first, c.id}
    undone = await manager.undo_consolidation(first)
    assert sorted(undone["restored"]) == sorted([a.id, b.id])
    assert await manager.get_memory(first) is None and await manager.get_memory(second) is None
    restored = await copies_of(manager, a.id, b.id, c.id)
    for stored in restored:  # the searches above counted accesses; nothing else changed
        stored.pop("access_count"), stored.pop("last_accessed")
    for stored in before_first + before_second:
        stored.pop("access_count"), stored.pop("last_accessed")
    assert restored == sorted(before_first + before_second, key=lambda s: (s["id"], s["tier"]))
    assert {m.id for m in await manager.search_memory("Berlin")} == {a.id, b.id, c.id}


async def test_deleting_a_merged_memory_deletes_the_originals_it_merged(manager: MemoryManager) -> None:
    """The originals stayed, superseded by a memory that no longer existed: hidden from search for good,
    undo_consolidation raised MemoryNotFoundError, and the deleted text was still stored in them."""
    a = await manager.add_memory("The office wifi password changes every Monday", importance=0.3)
    b = await manager.add_memory(  # a short-term row and a long-term copy
        "the office wifi password changes every Monday!", importance=0.9
    )
    other = await manager.add_memory("The office coffee machine is on the second floor")
    merged_id = await merge_one(manager)

    deleted = await manager.delete_memory(merged_id)
    assert deleted.id == merged_id and sorted(deleted.merged_from) == sorted([a.id, b.id])
    for memory_id in (merged_id, a.id, b.id):
        assert await manager.get_memory(memory_id) is None
    assert await copies_of(manager, merged_id, a.id, b.id) == []
    assert await orphans(manager) == []
    assert await manager.search_memory("wifi password") == []
    assert [m.id for m in await manager.search_memory("office")] == [other.id]
    with pytest.raises(MemoryNotFoundError):
        await manager.undo_consolidation(merged_id)


async def test_deleting_a_nested_merge_deletes_every_memory_it_was_made_of(manager: MemoryManager) -> None:
    a, b, c, first, second = await nested_merge(manager)
    other = await manager.add_memory("The user works in Potsdam")
    deleted = await manager.delete_memory(second)
    assert deleted.id == second
    assert await copies_of(manager, a.id, b.id, c.id, first, second) == []
    assert await orphans(manager) == []
    assert [m.id for m in await manager.stored_copies()] == [other.id]


async def test_deleting_a_merged_original_takes_its_own_originals_and_keeps_the_later_merge(
    manager: MemoryManager,
) -> None:
    """M1, merged into M2, holds A and B: deleting M1 deletes them too (else superseded by nothing); M2 is
    kept, as when any original is deleted, and its undo is refused (M1 is gone)."""
    a, b, c, first, second = await nested_merge(manager)
    await manager.delete_memory(first)
    assert await copies_of(manager, a.id, b.id, first) == []
    assert await orphans(manager) == []
    kept = await manager.get_memory(c.id)
    assert kept is not None and kept.superseded_by == second
    assert [m.id for m in await manager.search_memory("Berlin")] == [second]
    with pytest.raises(InvalidMemoryError, match="no longer are"):
        await manager.undo_consolidation(second)


async def test_a_cleanup_that_removes_a_merged_memory_removes_its_originals(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """An original is as old as its merged memory, but may be more important (changed after the merge):
    with ``keep_importance`` and ``remove_superseded=False`` the merged memory was removed and the original
    kept, superseded by a memory that no longer existed. It goes with the merged memory now."""
    a, b, c, first, second = await nested_merge(manager)
    await manager.update_memory(a.id, importance=0.95)
    vital = await manager.add_memory("the vault code is kept by the notary", importance=0.95)
    clock.advance(40 * DAY)
    fresh = await manager.add_memory("a fresh note about the tram pass")
    report = await manager.cleanup_old_memories(max_age_days=30, keep_importance=0.9, remove_superseded=False)
    assert sorted(report["removed_ids"]) == sorted([a.id, b.id, c.id, first, second])
    assert report["superseded_removed"] == 4 and report["removed_count"] == 5
    assert report["by_tier"] == {"short": 1, "medium": 1, "long": 3}  # A; B; C, M1 and M2
    assert {copy.id for copy in await manager.stored_copies()} == {fresh.id, vital.id}
    assert await orphans(manager) == []


async def test_a_cleanup_removes_originals_left_superseded_by_a_memory_that_is_gone(
    manager: MemoryManager,
) -> None:
    """Stores written before this fix (or by a delete cut short) hold such originals: a cleanup removes them,
    and what they merged in turn, even with ``remove_superseded=False``, which keeps every other original."""
    a, b, c, first, second = await nested_merge(manager)
    d = await manager.add_memory("the spare key is under the red pot", importance=0.4)
    e = await manager.add_memory("The spare key is under the red pot.", importance=0.4)
    kept_merge = await merge_one(manager)
    backend = manager.backend
    assert backend is not None
    await backend.delete(MemoryTier.LONG, [second])  # as an earlier version's delete_memory(second) did
    assert sorted(await orphans(manager)) == sorted([(c.id, second), (first, second)])

    report = await manager.cleanup_old_memories(max_age_days=365, remove_superseded=False)
    assert sorted(report["removed_ids"]) == sorted([a.id, b.id, c.id, first])
    assert report["superseded_removed"] == 4
    assert await orphans(manager) == []
    for original in (d, e):
        stored = await manager.get_memory(original.id)
        assert stored is not None and stored.superseded_by == kept_merge
    assert [m.id for m in await manager.search_memory("spare key")] == [kept_merge]


async def test_a_memory_used_during_a_cleanup_is_kept_whole_or_removed_whole(
    sqlite_manager: MemoryManager, clock: FakeClock
) -> None:
    """A search while a cleanup read the store (the scan of a large long-term tier) found an old important
    memory and so used it: its short-term copy (in process) was no longer stale and stayed, its long-term
    copy was deleted, and the cleanup reported the memory removed (``removed_ids``) while it was still
    found. A memory is now stale only when every copy of it is, and one still stored after the cleanup is
    not reported removed: it stays with both copies or goes with both."""
    manager = sqlite_manager
    memory = await manager.add_memory("the vault code is qzvault", importance=0.9)  # short + long
    clock.advance(3 * DAY)
    await manager.add_memories(
        [{"content": f"archive note {n} " + "ledger " * 20, "tier": "long"} for n in range(3000)]
    )
    cleanup = asyncio.create_task(manager.cleanup_old_memories(max_age_days=1))
    await asyncio.sleep(0)  # the cleanup has the write lock and scans the tiers on a storage thread
    found = await manager.search_memory("qzvault")
    report = await cleanup
    assert [m.id for m in found] == [memory.id]
    left = sorted(copy.tier.value for copy in await manager.stored_copies() if copy.id == memory.id)
    if memory.id in report["removed_ids"]:
        assert left == []
    else:
        assert left == ["long", "short"]
        assert report["by_tier"] == {"short": 0, "medium": 0, "long": 0}


async def test_a_memory_used_between_a_cleanups_tier_deletes_is_not_counted_in_by_tier(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """A cleanup deletes a stale memory's copies one tier at a time, each only if still stale. One used in
    between (a process sharing the storage wrote its access after the short-term copy was deleted) keeps
    its long-term copy and is not in ``removed_ids``, but ``by_tier`` still counted its short-term copy
    (short 2 for one memory removed); and the access a search of this process recorded meanwhile was
    dropped (the long-term copy kept the older count). Now ``by_tier`` counts the copies of the memories
    removed only, and the kept memory keeps every access."""
    kept = await manager.add_memory("the vault code is qzvault", importance=0.9)  # short + long
    gone = await manager.add_memory("an old note about the ferry timetable", importance=0.3)
    clock.advance(40 * DAY)
    backend = manager.backend
    assert backend is not None
    delete = backend.delete
    used: list[int] = []

    async def delete_then_use(tier: MemoryTier, ids: Any, **kwargs: Any) -> list[str]:
        present = await delete(tier, ids, **kwargs)
        if tier is MemoryTier.SHORT and kept.id in present and not used:
            # what a process sharing the storage does when it flushes its accesses (its backend's step:
            # this manager's write lock is held by the cleanup), then a search of this process
            await backend.touch({kept.id: (clock(), 3)})
            used.extend(m.access_count for m in await manager.search_memory("qzvault"))
        return list(present)

    backend.delete = delete_then_use  # type: ignore[method-assign]
    try:
        report = await manager.cleanup_old_memories(max_age_days=30)
    finally:
        backend.delete = delete  # type: ignore[method-assign]
    assert used == [4]
    assert report["removed_ids"] == [gone.id] and report["removed_count"] == 1
    assert report["by_tier"] == {"short": 1, "medium": 0, "long": 0}
    await manager.flush()
    left = [copy for copy in await manager.stored_copies() if copy.id == kept.id]
    assert [(copy.tier, copy.access_count) for copy in left] == [(MemoryTier.LONG, 4)]


async def test_an_export_of_merged_memories_imports_back_into_a_new_store_and_the_same_one(
    manager: MemoryManager,
    config: Any,
    clock: FakeClock,
    tmp_path: Any,
    other_storage: Any,
) -> None:
    """Import refuses a ``superseded_by`` naming no memory that merged it: an export of nested merges
    (two users, an undone merge) must still go back in as it was, on both backends."""
    _, _, _, first, second = await nested_merge(manager)
    await manager.add_memory("ana prefers tea in the morning", user_id="ana")
    await manager.add_memory("ana prefers tea in the morning!", user_id="ana")
    ana_merged = await merge_one_of(manager, "ana")
    undone = await manager.add_memory("the printer is on floor two", importance=0.5)
    await manager.add_memory("the printer is on floor two.", importance=0.5)
    undo_id = await merge_one(manager)
    await manager.undo_consolidation(undo_id)
    path = tmp_path / "backup.jsonl"
    written = await manager.export_memories(path, user_id=ALL_USERS)
    before = await every_copy(manager)
    assert written == len({copy["id"] for copy in before})
    # into a new store
    fresh = MemoryManager(other_storage(config), clock=clock)
    await fresh.initialize()
    try:
        report = await fresh.import_memories(path)
        assert report["imported"] == written
        assert await every_copy(fresh) == before
        assert [m.id for m in await fresh.search_memory("lives in Berlin")] == [second]
        assert await fresh.get_memory(undone.id) is not None
        restored = await fresh.undo_consolidation(second)
        assert first in restored["restored"]
    finally:
        await fresh.close()
    # ana's part alone
    ana_path = tmp_path / "ana.jsonl"
    await manager.export_memories(ana_path, user_id="ana")
    ana_store = MemoryManager(other_storage(config), clock=clock)
    await ana_store.initialize()
    try:
        assert (await ana_store.import_memories(ana_path))["imported"] == 3
        assert [m.id for m in await ana_store.search_memory("tea", user_id="ana")] == [ana_merged]
    finally:
        await ana_store.close()
    # back into the same store: every memory replaced by itself
    report = await manager.import_memories(path)
    assert report["replaced"] == written
    assert await every_copy(manager) == before


async def merge_one_of(manager: MemoryManager, user_id: str) -> str:
    report = await manager.consolidate_memories(similarity_threshold=0.9, user_id=user_id)
    assert len(report["merged_ids"]) == 1, report
    return str(report["merged_ids"][0])


async def every_copy(manager: MemoryManager) -> list[dict[str, Any]]:
    await manager.flush()
    return sorted(
        (copy.to_dict() for copy in await manager.stored_copies()),
        key=lambda stored: (stored["id"], stored["tier"]),
    )
