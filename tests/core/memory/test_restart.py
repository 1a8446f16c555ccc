"""Restart (invariant 6): memories of every tier, added and acknowledged through one
``EnhancedContextManager``, are all found, in the same tiers, by a new one on the same ``storage_path``."""

from __future__ import annotations

from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.memory.models import MemoryTier


async def test_every_tier_is_found_by_a_new_context_manager(tmp_path: Path) -> None:
    config = ContextManagerConfig(
        cache_path=tmp_path / "cache",
        storage_path=tmp_path / "memory",
        short_term_memory_size=5,
        medium_term_memory_size=50,
    )
    async with EnhancedContextManager(config=config) as first:
        memory = first.memory_manager
        added = {
            "short": await memory.add_memory("ocelot sighting near the short river", importance=0.2),
            "medium": await memory.add_memory("pangolin notes kept on medium shelf", tier="medium"),
            "long": await memory.add_memory("axolotl facts stored for the long haul", tier="long"),
            "short and long": await memory.add_memory("critical capybara allergy", importance=0.95),
        }
        # overflow: the oldest, least important short-term memories move down to medium-term
        overflow = [await memory.add_memory(f"overflow filler {n} tapir", importance=0.1) for n in range(8)]
        # the overflow moves in the background: read the tiers once it is over (a close waits for it too,
        # so tiers read while it ran were not those the second manager finds)
        await memory.flush()
        stats = await memory.get_memory_stats()
        assert stats["by_tier"]["medium"] > 1 and stats["by_tier"]["long"] == 2
        placed = {name: await memory.get_memory(m.id) for name, m in added.items()}
        tiers_before = {name: m.tier for name, m in placed.items() if m is not None}

    async with EnhancedContextManager(config=config) as second:
        memory = second.memory_manager
        for name, original in added.items():
            results = await second.search_memory(original.content, limit=3)
            assert results and results[0].id == original.id, name
            reopened = await memory.get_memory(original.id)
            assert reopened is not None and reopened.tier is tiers_before[name], name
        assert tiers_before["long"] is MemoryTier.LONG and tiers_before["medium"] is MemoryTier.MEDIUM
        found = {m.id for m in await second.search_memory("overflow filler tapir", limit=20)}
        assert found == {m.id for m in overflow}
        assert (await memory.get_memory_stats())["by_tier"] == stats["by_tier"]
