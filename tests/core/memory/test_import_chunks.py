"""A long ``import_memories`` lets other writers go on (session 26, import).

An import held the manager's turn and write locks for its whole length, embedding included (a 10k import with
the default embedder ~90-126 s): the indexing of evicted messages and every other write waited. It now
writes a chunk of copies per hold of the locks and embeds without them; stopped midway, the chunks written
stay and the error says how many; turns remembered meanwhile into a session of the file are numbered after
the file's turns of it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from context_manager import ContextManagerConfig
from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import MemoryTier
from context_manager.core.messages import Message

CHUNK = 500  # maintenance._IMPORT_CHUNK


def write_export(path: Path, count: int, *, session: str | None = None) -> Path:
    """An export of ``count`` long-term memories (conversation turns 0.. of ``session`` when given)."""
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            metadata = {} if session is None else {"session_id": session, "turn_index": number}
            record = {
                "id": f"imported-{number:05d}",
                "content": f"imported note {number} about the harbour crane",
                "tier": "long",
                "tiers": ["long"],
                "importance": 0.4,
                "created_at": 1_700_000_000.0 + number,
                "last_accessed": 1_700_000_000.0 + number,
                "metadata": metadata,
            }
            handle.write(json.dumps(record) + "\n")
    return path


class GatedEmbedder:
    """A hashing embedder whose call for many texts (the import's) waits for ``release`` (a slow model)."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(dimension=64)
        self.dimension = self.inner.dimension
        self.name = "gated-hashing"
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        if len(texts) > 10:
            self.entered.set()
            self.release.wait(30)
        return self.inner.embed(texts)


async def test_other_writers_complete_while_an_import_embeds(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    source = write_export(tmp_path / "export.jsonl", 40)
    embedder = GatedEmbedder()
    async with MemoryManager(config, embedder=embedder) as manager:
        importing = asyncio.create_task(manager.import_memories(source))
        try:
            # the import's model call is running (blocked)
            assert await asyncio.to_thread(embedder.entered.wait, 30)
            assert not importing.done()
            # before: both waited for the whole import (its locks were held while the model ran)
            added = await asyncio.wait_for(manager.add_memory("written during the import"), 20)
            remembered = await asyncio.wait_for(
                manager.remember_messages([Message.create("user", "evicted meanwhile")], session_id="live"),
                20,
            )
            assert not importing.done()
        finally:
            embedder.release.set()
        report = await importing
        assert report["imported"] == 40
        assert (await manager.get_memory(added.id)) is not None
        assert (await manager.get_memory(remembered[0].id)) is not None
        # every imported memory got its vector, as before (embedded batch by batch, saved under the lock)
        assert (await manager.get_memory_stats())["index"]["vectors"] == 42


async def test_a_write_goes_between_two_chunks_of_an_import(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    source = write_export(tmp_path / "export.jsonl", CHUNK + 100)
    async with MemoryManager(config) as manager:
        events: list[str] = []
        pending: list[asyncio.Task[None]] = []

        async def add() -> None:
            # an id of its own: the add takes the write lock on PostgreSQL too (a plain add there goes
            # side by side with other writes, over the connection pool)
            await manager.add_memory("written between two chunks", memory_id="between")
            events.append("added")

        def progress(stage: str, done: int, total: int) -> None:
            events.append(f"{stage} {done}/{total}")
            if done == CHUNK:
                pending.append(asyncio.create_task(add()))

        report = await manager.import_memories(source, progress=progress)
        await asyncio.gather(*pending)
        assert report["imported"] == CHUNK + 100
        # before: one hold of the locks for the whole import (and no progress)
        assert events == [f"writing {CHUNK}/{CHUNK + 100}", "added", f"writing {CHUNK + 100}/{CHUNK + 100}"]


async def test_turns_remembered_during_an_import_follow_the_files_turns(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    source = write_export(tmp_path / "export.jsonl", CHUNK + 100, session="s1")
    async with MemoryManager(config) as manager:
        pending: list[asyncio.Task[list[object]]] = []

        def progress(stage: str, done: int, total: int) -> None:
            # turns 0..499 are stored, 500..598 not yet (on PostgreSQL each session's last turn, 599, is
            # written first, in a step of its own: the first chunk ends at 501)
            if done >= CHUNK and not pending:
                pending.append(
                    asyncio.create_task(
                        manager.remember_messages([Message.create("user", "a new turn")], session_id="s1")
                    )
                )

        await manager.import_memories(source, progress=progress)
        (new,) = (await asyncio.gather(*pending))[0]
        assert new.turn_index == CHUNK + 100  # not 500: a turn the import writes next
        later = await manager.remember_messages([Message.create("user", "after")], session_id="s1")
        assert [memory.turn_index for memory in later] == [CHUNK + 101]


async def test_an_import_cancelled_midway_keeps_its_written_chunks(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    source = write_export(tmp_path / "export.jsonl", CHUNK + 100)
    async with MemoryManager(config) as manager:
        task: asyncio.Task[dict[str, object]] | None = None
        written: list[int] = []

        def progress(stage: str, done: int, total: int) -> None:
            written.append(done)
            assert task is not None
            task.cancel()

        task = asyncio.create_task(manager.import_memories(source, progress=progress))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert written == [CHUNK]
        assert (await manager.get_memory_stats())["total_memories"] == CHUNK  # the first chunk stays
        report = await manager.import_memories(source)  # run again: finishes it
        assert report == {
            "imported": CHUNK + 100,
            "replaced": CHUNK,
            "by_tier": {"short": 0, "medium": 0, "long": CHUNK + 100},
        }
        assert (await manager.get_memory_stats())["total_memories"] == CHUNK + 100


async def test_an_import_failing_midway_says_how_many_memories_it_wrote(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    source = write_export(tmp_path / "export.jsonl", CHUNK + 100)
    async with MemoryManager(config) as manager:
        pending: list[asyncio.Task[object]] = []

        def progress(stage: str, done: int, total: int) -> None:
            if done == CHUNK:  # bob takes an id of the second chunk between the two
                pending.append(
                    asyncio.create_task(
                        manager.add_memory("bob's", memory_id=f"imported-{CHUNK + 50:05d}", user_id="bob")
                    )
                )

        with pytest.raises(InvalidMemoryError, match="holds another user's memory") as raised:
            await manager.import_memories(source, progress=progress)
        await asyncio.gather(*pending)
        note = f"{CHUNK} of {CHUNK + 100} memories were written before this error"
        assert any(note in text for text in raised.value.__notes__)
        stats = await manager.get_memory_stats(user_id=None)
        assert stats["total_memories"] == CHUNK  # the first chunk stays; bob's memory is bob's
        bobs = await manager.get_memory(f"imported-{CHUNK + 50:05d}")
        assert bobs is not None and bobs.user_id == "bob" and bobs.content == "bob's"


async def vectors_made_in_the_background(manager: MemoryManager, count: int) -> None:
    """Wait for the background embedder, then check the ``count`` memories of the export have their vector."""
    task = manager._embed_task
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), 60)
    ids = [f"imported-{number:05d}" for number in range(count)]
    vectors = await manager._require("test").vectors_of(ids)
    assert sorted(vectors) == sorted(ids)


class CountingEmbedder:
    """A hashing embedder that counts the texts it embeds."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(dimension=64)
        self.dimension = self.inner.dimension
        self.name = "counting-hashing"
        self.texts = 0
        self.returned = 0  # texts whose vectors were returned

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        self.texts += len(texts)
        vectors = self.inner.embed(texts)
        self.returned += len(texts)
        return vectors


async def test_an_import_failing_as_it_embeds_says_so_and_leaves_the_rest_to_the_background(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    """Before: an error after the writes (here the caller's progress callback) had no note, and the memories
    of the batches after it stayed without vectors until the store was next opened."""
    source = write_export(tmp_path / "export.jsonl", CHUNK + 100)
    async with MemoryManager(config, embedder=CountingEmbedder()) as manager:

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "embedding":
                raise RuntimeError("the progress display broke")

        with pytest.raises(RuntimeError, match="progress display broke") as raised:
            await manager.import_memories(source, progress=progress)
        note = f"all {CHUNK + 100} memories were written"
        assert any(note in text for text in getattr(raised.value, "__notes__", [])), raised.value
        # the batch not embedded yet gets its vector in the background
        await vectors_made_in_the_background(manager, CHUNK + 100)


async def test_an_import_cancelled_as_it_saves_vectors_does_not_embed_that_batch_again(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    """Before: cancelled while a batch's vectors were being saved (the save ends first), the import handed
    that batch to the background embedder too: the model ran again on up to 512 texts already saved."""
    source = write_export(tmp_path / "export.jsonl", CHUNK + 100)
    embedder = CountingEmbedder()
    async with MemoryManager(config, embedder=embedder) as manager:
        importing: asyncio.Task[dict[str, object]] | None = None
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_the_write_lock() -> None:
            async with manager._write_lock:  # the save of the first batch waits for it
                held.set()
                await release.wait()

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "writing" and done == total:
                holder.append(asyncio.create_task(hold_the_write_lock()))

        holder: list[asyncio.Task[None]] = []
        importing = asyncio.create_task(manager.import_memories(source, progress=progress))
        await held.wait()
        # the import's first batch is embedded and its save waits for the lock (no event to await: polled)
        while embedder.returned < 512 or not manager._write_lock._waiters:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        importing.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await importing
        await asyncio.gather(*holder)
        await vectors_made_in_the_background(manager, CHUNK + 100)
        assert embedder.texts == CHUNK + 100  # each text once: 512 by the import, the rest in the background


class BrokenImportEmbedder(CountingEmbedder):
    """The counting embedder (same model name) whose call for many texts (an import's batch) fails."""

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        if len(texts) > 1:
            raise RuntimeError("the model ran out of memory")
        return super().embed(texts)


async def test_an_import_replacing_a_text_drops_the_old_texts_vector(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    """Before: an imported memory replacing a stored one with another text kept the old text's vector until
    the import embedded the new one (after every chunk is written); the import stopped first (here its model
    failed: a killed process does the same), the memory kept the old text's vector for good (the next open
    embeds only memories without one), as an update of a text did before it dropped the vector with it."""
    memory_id = "imported-00000"
    source = write_export(tmp_path / "export.jsonl", 3)  # "imported note 0 about the harbour crane", ...
    earlier = tmp_path / "earlier.jsonl"  # the same long-term memories, the first with another text
    lines = source.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["content"] = "an old note about bicycles and tyres"
    earlier.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n", encoding="utf-8")
    async with MemoryManager(config, embedder=CountingEmbedder()) as manager:
        await manager.import_memories(earlier)
        old = (await manager._require("vectors").vectors_of([memory_id]))[memory_id]
    async with MemoryManager(config, embedder=BrokenImportEmbedder()) as manager:
        result = await manager.import_memories(source)
        assert result["replaced"] == 3
    async with MemoryManager(config, embedder=CountingEmbedder()) as manager:  # embeds what has no vector
        stored = await manager.get_memory(memory_id)
        assert stored is not None and stored.content == "imported note 0 about the harbour crane"
        vector = (await manager._require("vectors").vectors_of([memory_id]))[memory_id]
        assert not np.allclose(vector, old)
        assert np.allclose(vector, HashingEmbedder(dimension=64).embed([stored.content])[0], atol=1e-5)


async def test_an_import_moves_the_overflow_a_write_between_its_chunks_made(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    """Before: the import places its copies by the tier counts read before its first chunk; a write between
    two chunks found the tier within its capacity, the import's next chunk filled it, and the tier stayed
    over its capacity after the import (nothing moved it until the next write)."""
    capacity = CHUNK + 100
    config = config.model_copy(update={"short_term_memory_size": capacity, "medium_term_memory_size": 2000})
    source = tmp_path / "export.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for number in range(capacity):  # exactly the short-term tier's capacity
            record = {
                "id": f"short-{number:05d}",
                "content": f"short note {number} about the harbour crane",
                "tier": "short",
                "tiers": ["short"],
                "importance": 0.3,
                "created_at": 1_700_000_000.0 + number,
                "last_accessed": 1_700_000_000.0 + number,
                "metadata": {},
            }
            handle.write(json.dumps(record) + "\n")
    async with MemoryManager(config) as manager:
        pending: list[asyncio.Task[object]] = []

        def progress(stage: str, done: int, total: int) -> None:
            if done == CHUNK:  # an id of its own: the add takes the write lock on PostgreSQL too
                pending.append(asyncio.create_task(manager.add_memory("between", memory_id="between")))

        report = await manager.import_memories(source, progress=progress)
        await asyncio.gather(*pending)
        assert report["by_tier"]["short"] == capacity
        backend = manager._require("count")
        task = manager._rebalance_task
        assert task is not None, f"short-term tier left at {await backend.count(MemoryTier.SHORT)}"
        await task
        assert await backend.count(MemoryTier.SHORT) <= capacity


async def test_an_import_stopped_after_filling_a_tier_past_its_capacity_moves_the_overflow(
    config: ContextManagerConfig, tmp_path: Path
) -> None:
    """Before: an import stopped by an error after a write between two chunks took room its next chunk
    was placed in left the tier over its capacity (601 of 600) until some later write found it so: the
    move of the overflow that ends a finished import was skipped. It now starts when the import stops
    too (here its progress callback fails after the chunk that filled the tier), and a later add finds
    the tier within its capacity."""
    capacity = CHUNK + 100
    config = config.model_copy(update={"short_term_memory_size": capacity, "medium_term_memory_size": 2000})
    source = tmp_path / "export.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for number in range(capacity + 1):  # the short-term tier's capacity, then one medium-term memory
            tier = "short" if number < capacity else "medium"
            record = {
                "id": f"note-{number:05d}",
                "content": f"short note {number} about the harbour crane",
                "tier": tier,
                "tiers": [tier],
                "importance": 0.3,
                "created_at": 1_700_000_000.0 + number,
                "last_accessed": 1_700_000_000.0 + number,
                "metadata": {},
            }
            handle.write(json.dumps(record) + "\n")
    async with MemoryManager(config) as manager:
        pending: list[asyncio.Task[object]] = []

        def progress(stage: str, done: int, total: int) -> None:
            if done == CHUNK:  # an id of its own: the add takes the write lock on PostgreSQL too
                pending.append(asyncio.create_task(manager.add_memory("between", memory_id="between")))
            elif done == capacity:  # the short-term copies are all written: the tier holds 601
                raise RuntimeError("the progress display failed")

        with pytest.raises(RuntimeError, match="progress display failed"):
            await manager.import_memories(source, progress=progress)
        await asyncio.gather(*pending)
        backend = manager._require("count")
        task = manager._rebalance_task
        assert task is not None, f"short-term tier left at {await backend.count(MemoryTier.SHORT)}"
        await task
        assert await backend.count(MemoryTier.SHORT) <= capacity
        await manager.add_memory("after the import", memory_id="after")
        if manager._rebalance_task is not None:
            await manager._rebalance_task
        assert await backend.count(MemoryTier.SHORT) <= capacity
        assert await manager.get_memory("note-00000") is not None
