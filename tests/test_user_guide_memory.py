"""The user guide's memory snippets, run as written (Memory System, Memory Operations, Memory
Management, API Reference), on a real storage directory."""

from __future__ import annotations

import tempfile

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager


@pytest.fixture
async def context_manager():  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as temp_dir:
        config = ContextManagerConfig(max_tokens=2000, compression_ratio=0.8, short_term_memory_size=1000)
        config.cache_path = temp_dir
        manager = EnhancedContextManager(config=config)
        await manager.initialize()
        try:
            yield manager
        finally:
            await manager.cleanup()


async def test_memory_system(context_manager: EnhancedContextManager) -> None:
    # Add to memory
    await context_manager.memory_manager.add_memory(
        content="Important concept", importance=0.8, tags=["important", "concept"]
    )

    # Search memory
    memories = await context_manager.search_memory("concept", limit=5)

    assert [m.content for m in memories] == ["Important concept"]


async def test_memory_operations(
    context_manager: EnhancedContextManager, capsys: pytest.CaptureFixture[str]
) -> None:
    # Add memories with different importance levels
    await context_manager.memory_manager.add_memory(
        content="Python context managers use __enter__ and __exit__",
        importance=0.9,
        tags=["python", "programming", "important"],
    )

    await context_manager.memory_manager.add_memory(
        content="Casual conversation about weather", importance=0.3, tags=["casual", "weather"]
    )

    # Search memories
    results = await context_manager.search_memory("python", limit=5)
    for memory in results:
        print(f"Found: {memory.content[:50]}...")

    # Search by tags
    tag_results = await context_manager.memory_manager.search_by_tags(["important"])

    assert capsys.readouterr().out == "Found: Python context managers use __enter__ and __exit__...\n"
    assert [m.content for m in tag_results] == ["Python context managers use __enter__ and __exit__"]


async def test_memory_management(
    context_manager: EnhancedContextManager, capsys: pytest.CaptureFixture[str]
) -> None:
    await context_manager.memory_manager.add_memory(content="The user lives in Paris", importance=0.6)
    await context_manager.memory_manager.add_memory(content="The user lives in Paris.", importance=0.4)
    await context_manager.memory_manager.add_memory(content="The user likes Paris in spring", importance=0.5)

    # Optimize memory usage
    await context_manager.optimize_system()

    # Clear old memories
    await context_manager.memory_manager.cleanup_old_memories(max_age_days=30)

    # Consolidate similar memories
    consolidation_result = await context_manager.memory_manager.consolidate_memories()
    print(f"Consolidated {consolidation_result['consolidated_count']} memories")

    # optimize_system() merged the two near-duplicates already; cleanup removed the superseded originals
    assert capsys.readouterr().out == "Consolidated 0 memories\n"
    found = [m.content for m in await context_manager.search_memory("Paris")]
    assert sorted(found) == ["The user likes Paris in spring", "The user lives in Paris"]
    stats = await context_manager.memory_manager.get_memory_stats()
    assert stats["total_memories"] == 2 and stats["superseded"] == 0


async def test_api_reference_memory_operations(context_manager: EnhancedContextManager) -> None:
    # Add memory
    await context_manager.memory_manager.add_memory(
        content="Memory content", importance=0.5, tags=["tag1", "tag2"]
    )

    # Search memory
    memories = await context_manager.search_memory("query", limit=10)
    assert memories == []
    memories = await context_manager.search_memory("content", limit=10)
    assert [m.content for m in memories] == ["Memory content"]

    # Search by tags
    memories = await context_manager.memory_manager.search_by_tags(["tag1"])
    assert [m.tags for m in memories] == [["tag1", "tag2"]]

    # Get memory statistics
    stats = await context_manager.memory_manager.get_memory_stats()
    assert stats["total_memories"] == 1
    assert stats["by_tier"] == {"short": 1, "medium": 0, "long": 0}


async def test_memory_survives_a_new_context_manager(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = ContextManagerConfig(cache_path=tmp_path)
    async with EnhancedContextManager(config=config) as first:
        short = await first.memory_manager.add_memory("short-lived note about kites")
        medium = await first.memory_manager.add_memory("medium note about kites", tier="medium")
        long = await first.memory_manager.add_memory("vital note about kites", importance=0.95)
    async with EnhancedContextManager(config=config) as second:
        found = {m.id for m in await second.search_memory("kites")}
        assert found == {short.id, medium.id, long.id}
