"""The number of vectors a store reports (``get_memory_stats()["index"]["vectors"]``), on both backends."""

from __future__ import annotations

from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.testing import HashingEmbedder


async def vectors(manager: MemoryManager) -> int:
    stats = await manager.get_memory_stats()
    return int(stats["index"]["vectors"])


async def test_vectors_saved_again_count_once(config: ContextManagerConfig, tmp_path: Path) -> None:
    """PostgreSQL added every vector it saved to its count, also one replacing a memory's stored vector
    (an import of memories already stored embeds them again): 3 memories imported again counted 6 vectors,
    and search kept using a count the table did not hold. It now counts the vectors stored, as SQLite does
    (one per memory embedded with the current model), and a reopened store counts the same."""
    embedder = HashingEmbedder()
    export = tmp_path / "export.jsonl"
    async with MemoryManager(config, embedder=embedder) as manager:
        for text in ("the walrus sings at dawn", "herons fish at dusk", "owls hunt at night"):
            await manager.add_memory(text, tier="long")
        assert await vectors(manager) == 3
        await manager.export_memories(export)
        result = await manager.import_memories(export)  # the same memories, embedded and saved again
        assert result["replaced"] == 3
        assert await vectors(manager) == 3
        (first,) = [m for m in await manager.stored_copies() if m.content.startswith("owls")]
        await manager.delete_memory(first.id)
        assert await vectors(manager) == 2
    async with MemoryManager(config, embedder=embedder) as manager:
        assert await vectors(manager) == 2
