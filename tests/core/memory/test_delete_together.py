"""The embedded store's ``delete_together`` (a consolidated memory's delete): its delete record in the
database must never outlive the call, or the next open deletes copies written again since."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageError
from context_manager.core.memory.local_backend import LocalBackend
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory
from context_manager.core.memory.sqlite_store import SQLiteStore


def settings(path: Path) -> ContextManagerConfig:
    return ContextManagerConfig(storage_path=path, embedder="none", medium_term_memory_size=5000)


async def merged_memory(manager: MemoryManager) -> Memory:
    """A memory merged from three originals: one short-term with a long-term copy, two medium-term."""
    await manager.add_memory("the gate code is qzoldxq for the north gate", importance=0.9)
    for text in (
        "the gate code is qzoldxq for the north gate today",
        "the gate code is qzoldxq for the north gate, today",
    ):
        await manager.add_memory(text, tier="medium")
    await manager.consolidate_memories(similarity_threshold=0.8)
    (memory,) = await manager.search_memory("qzoldxq")
    assert len(memory.merged_from) == 3
    return memory


def layout(copies: list[Memory]) -> list[tuple[str, str]]:
    return sorted((copy.id, copy.tier.value) for copy in copies)


async def test_a_refused_drop_of_the_delete_record_neither_fails_the_delete_nor_deletes_a_reimport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of the delete, dropping its record (a full disk refused it), raised ``StorageError``
    although the memory and its originals were all deleted (nothing was put back), and the record stayed:
    the export re-imported then lost 3 of its 5 copies when the store next opened (both medium-term
    originals for good). The delete now returns, and the record is dropped before a copy of one of its
    ids is written again."""
    storage = tmp_path / "storage"
    export = tmp_path / "export.jsonl"
    async with MemoryManager(settings(storage)) as manager:
        memory = await merged_memory(manager)
        await manager.export_memories(export)
        with monkeypatch.context() as patch:

            def refuse(self: SQLiteStore, ids: object) -> None:
                raise StorageError("database or disk is full", path=storage)

            patch.setattr(SQLiteStore, "finish_deletes", refuse)
            await manager.delete_memory(memory.id)  # done: no StorageError
            assert await manager.stored_copies() == []
        assert (await manager.import_memories(export))["imported"] == 4
        restored = layout(await manager.stored_copies())
        assert len(restored) == 5
    async with MemoryManager(settings(storage)) as manager:
        assert layout(await manager.stored_copies()) == restored


async def test_a_cancelled_delete_together_deletes_every_copy_and_leaves_no_record(tmp_path: Path) -> None:
    """Cancelled while its long-term transaction ran, ``delete_together`` stopped there: the process kept
    the originals' short- and medium-term copies (the merged memory gone) and the delete record, which
    the next open used to delete a copy written again meanwhile. It now runs to its end."""
    storage = tmp_path / "storage"
    async with MemoryManager(settings(storage)) as manager:
        memory = await merged_memory(manager)
        backend = manager.backend
        assert isinstance(backend, LocalBackend)
        delete = SQLiteStore.delete
        entered, release = threading.Event(), threading.Event()

        def held_delete(self: SQLiteStore, *args: object, **kwargs: object) -> list[str]:
            entered.set()
            assert release.wait(60)
            return delete(self, *args, **kwargs)  # type: ignore[arg-type]

        SQLiteStore.delete = held_delete  # type: ignore[method-assign]
        try:
            task = asyncio.ensure_future(backend.delete_together([*memory.merged_from, memory.id]))
            assert await asyncio.to_thread(entered.wait, 60)
            task.cancel()
            await asyncio.sleep(0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release.set()
            SQLiteStore.delete = delete  # type: ignore[method-assign]
        assert await manager.stored_copies() == []
        original = memory.merged_from[1]
        await manager.add_memory("a new text under an old id", tier="medium", memory_id=original)
        kept = layout(await manager.stored_copies())
        assert kept == [(original, "medium")]
    async with MemoryManager(settings(storage)) as manager:
        assert layout(await manager.stored_copies()) == kept
