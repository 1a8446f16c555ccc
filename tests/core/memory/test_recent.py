"""``MemoryManager.recent_memories``: the newest memories of a user, on both backends."""

from __future__ import annotations

import pytest

from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import MemoryTier
from tests.core.memory.conftest import FakeClock


async def test_recent_memories_are_the_newest_first_across_tiers_each_once(
    manager: MemoryManager, clock: FakeClock
) -> None:
    ids = []
    for number in range(45):  # more than the short (20) and medium (30) tiers hold: overflow moves happen
        clock.advance(1)
        tier = "long" if number % 3 == 0 else None
        importance = 0.9 if number % 5 == 0 else 0.5  # also written to the long-term tier at once
        stored = await manager.add_memory(f"note number {number}", importance, tier=tier)
        ids.append(stored.id)
    recent = await manager.recent_memories(7)
    assert [memory.id for memory in recent] == ids[::-1][:7]
    everything = await manager.recent_memories(100)
    assert [memory.id for memory in everything] == ids[::-1]  # each memory once, whatever its copies
    newest_with_two_copies = next(m for m in everything if m.content == "note number 40")
    assert newest_with_two_copies.tier is MemoryTier.SHORT  # the fastest tier's copy
    assert await manager.recent_memories(0) == []


async def test_memories_of_the_same_moment_come_in_one_order_on_every_backend(manager: MemoryManager) -> None:
    """Ties (one add_memories batch, or the same importance and time) came out in storage order on SQLite
    and in id order on PostgreSQL, so a limit inside a tie returned different memories."""
    batch = [
        {"content": f"note {name} of the batch", "memory_id": name, "tags": ["batch"], "tier": tier}
        for name, tier in (("m3", "long"), ("m1", "short"), ("m4", "medium"), ("m2", "long"), ("m5", "short"))
    ]
    await manager.add_memories(batch)  # one moment: the clock does not move
    assert [m.id for m in await manager.recent_memories(3)] == ["m5", "m4", "m3"]
    assert [m.id for m in await manager.search_by_tags(["batch"], limit=3)] == ["m1", "m2", "m3"]


async def test_recent_memories_is_not_an_access(manager: MemoryManager) -> None:
    stored = await manager.add_memory("The boiler was serviced in March")
    for _ in range(3):
        await manager.recent_memories(5)
    again = await manager.get_memory(stored.id)
    assert again is not None and again.access_count == 0


async def test_recent_memories_stay_within_the_user(manager: MemoryManager, clock: FakeClock) -> None:
    for user in ("ann", "ben", None, "ann"):
        clock.advance(1)
        await manager.add_memory(f"a note of {user}", user_id=user, tier="long" if user == "ben" else None)
    assert [m.content for m in await manager.recent_memories(10, user_id="ann")] == ["a note of ann"] * 2
    assert [m.user_id for m in await manager.recent_memories(10, user_id="ben")] == ["ben"]
    assert [m.content for m in await manager.recent_memories(10)] == ["a note of None"]  # default namespace
    assert len(await manager.recent_memories(10, user_id=ALL_USERS)) == 4


async def test_recent_memories_leave_out_merged_originals(manager: MemoryManager, clock: FakeClock) -> None:
    originals = []
    for text in (
        "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo",
        "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima",
    ):
        clock.advance(1)
        originals.append((await manager.add_memory(text)).id)
    report = await manager.consolidate_memories(0.9)
    assert report["consolidated_count"] == 2
    listed = [memory.id for memory in await manager.recent_memories(10)]
    assert len(listed) == 1 and not set(listed) & set(originals)


@pytest.mark.parametrize(("arguments", "field"), [({"limit": -1}, "limit"), ({"user_id": 5}, "user_id")])
async def test_recent_memories_reject_bad_arguments(
    manager: MemoryManager, arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidMemoryError, match=field):
        await manager.recent_memories(**arguments)  # type: ignore[arg-type]
