"""Merged memories and what becomes of their originals: nested undos.

Every test runs on both backends.
"""

from __future__ import annotations

from typing import Any

import pytest

from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.manager import MemoryManager


async def copies_of(manager: MemoryManager, *ids: str) -> list[dict[str, Any]]:
    """Every stored copy of the memories ``ids``, comparable before and after."""
    await manager.flush()
    wanted = set(ids)
    return sorted(
        (copy.to_dict() for copy in await manager.stored_copies() if copy.id in wanted),
        key=lambda stored: (stored["id"], stored["tier"]),
    )


async def merge_one(manager: MemoryManager) -> str:
    """Run a consolidation that must merge exactly one group; its merged id."""
    report = await manager.consolidate_memories(similarity_threshold=0.9)
    assert len(report["merged_ids"]) == 1, report
    return str(report["merged_ids"][0])


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
