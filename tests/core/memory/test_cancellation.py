"""A public memory operation cancelled at any point is done whole or not at all (embedded SQLite store).

Each operation is started as a task, cancelled after ``k`` event-loop iterations for every ``k`` up to past
its end (an MCP client's cancel, a caller's timeout), and the storage is then read twice: by the manager
that was cancelled, and by a new one opening the same files. Both must see the operation either fully
done or fully not done, and the same one of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy
import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.testing import HashingEmbedder

_STEPS = [*range(0, 40, 2), 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.2]
"""Cancel after this many event-loop iterations, or (a float) this many seconds: the operations that wait
for worker threads (a long-term write, a consolidation's grouping) are still running after 40 iterations."""

Copies = frozenset[tuple[str, MemoryTier, str, str | None]]


def _config(path: Path) -> ContextManagerConfig:
    return ContextManagerConfig(
        storage_path=path, short_term_memory_size=20, medium_term_memory_size=30, long_term_memory_size=500
    )


async def _copies(memory: MemoryManager, ids: list[str]) -> Copies:
    """Every stored copy of ``ids``: id, tier, text and what supersedes it."""
    assert memory.backend is not None
    found = await memory.backend.copies(ids)
    return frozenset((copy.id, copy.tier, copy.content, copy.superseded_by) for copy in found)


async def _visible(memory: MemoryManager, query: str) -> frozenset[str]:
    return frozenset(found.id for found in await memory.search_memory(query, limit=20))


async def _cancel_after(steps: float, operation: Awaitable[object]) -> bool:
    """Run ``operation``, cancel it after ``steps`` loop iterations (a float: seconds); whether it ended."""
    task = asyncio.ensure_future(operation)
    if isinstance(steps, float):
        await asyncio.wait({task}, timeout=steps)
    for _ in range(int(steps) if isinstance(steps, int) else 0):
        if task.done():
            break
        await asyncio.sleep(0)
    finished = task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return finished


async def _check_whole_or_nothing(
    tmp_path: Path,
    name: str,
    prepare: Callable[[MemoryManager], Awaitable[list[str]]],
    operation: Callable[[MemoryManager, list[str]], Awaitable[object]],
    query: str,
    before: Callable[[Copies], bool],
    after: Callable[[Copies], bool],
) -> tuple[int, int]:
    """Cancel ``operation`` at every step of ``_STEPS``; return how many ended not done and done."""
    outcomes = [0, 0]
    for steps in _STEPS:
        config = _config(tmp_path / f"{name}-{steps}")
        async with MemoryManager(config) as memory:
            ids = await prepare(memory)
            await _cancel_after(steps, operation(memory, ids))
            await memory.flush()
            seen = await _copies(memory, ids)
            found = await _visible(memory, query)
        async with MemoryManager(config) as reopened:
            seen_again = await _copies(reopened, ids)
            found_again = await _visible(reopened, query)
        where = f"{name} cancelled after {steps} steps"
        assert before(seen) != after(seen), f"{where}: part-done: {sorted(seen)}"
        assert seen_again == seen, f"{where}: a new manager finds {sorted(seen_again)}, not {sorted(seen)}"
        assert found_again == found, where
        outcomes[after(seen)] += 1
    return outcomes[0], outcomes[1]


async def test_a_cancelled_important_add_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    """Cancelled between its short-term row and its long-term copy, an important memory stayed in short-term
    only, for good (14 of 16 tries)."""
    text = "the ferry leaves at nine from pier four"

    async def prepare(memory: MemoryManager) -> list[str]:
        return ["ferry-fact"]

    async def add(memory: MemoryManager, ids: list[str]) -> Memory:
        return await memory.add_memory(text, importance=0.9, memory_id=ids[0])

    def stored(copies: Copies) -> bool:
        return copies == {("ferry-fact", tier, text, None) for tier in (MemoryTier.SHORT, MemoryTier.LONG)}

    not_done, done = await _check_whole_or_nothing(
        tmp_path, "add", prepare, add, "ferry pier", lambda copies: not copies, stored
    )
    assert done > 0


async def test_a_cancelled_add_without_an_id_of_its_own_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    text = "the heron nests by the old mill"
    added: list[Memory] = []

    async def prepare(memory: MemoryManager) -> list[str]:
        await memory.add_memory("an unrelated fact about owls", importance=0.9)
        return []

    async def add(memory: MemoryManager, ids: list[str]) -> None:
        added.append(await memory.add_memory(text, importance=0.9))

    for steps in _STEPS:
        config = _config(tmp_path / f"plain-{steps}")
        async with MemoryManager(config) as memory:
            await prepare(memory)
            await _cancel_after(steps, add(memory, []))
            assert memory.backend is not None
            held = [m for m in await memory.backend.scan(None, every_copy=True) if m.content == text]
            tiers = sorted(copy.tier.value for copy in held)
        async with MemoryManager(config) as reopened:
            assert reopened.backend is not None
            again = [m for m in await reopened.backend.scan(None, every_copy=True) if m.content == text]
        assert tiers in ([], ["long", "short"]), f"cancelled after {steps} steps: {tiers}"
        assert sorted(copy.tier.value for copy in again) == tiers


async def test_a_cancelled_update_to_another_tier_is_done_whole_or_not_at_all(tmp_path: Path) -> None:
    """Cancelled, an update with new text and ``tier="medium"`` left the old long-term copy beside the new
    one (8 of 24 tries), and the next open undid the update."""
    old, new = "the lighthouse keeper is Ada", "the lighthouse keeper is Grace"

    async def prepare(memory: MemoryManager) -> list[str]:
        return [(await memory.add_memory(old, importance=0.9)).id]

    async def update(memory: MemoryManager, ids: list[str]) -> Memory:
        return await memory.update_memory(ids[0], content=new, tier="medium")

    def unchanged(copies: Copies) -> bool:
        return {(tier, text) for _, tier, text, _ in copies} == {
            (MemoryTier.SHORT, old),
            (MemoryTier.LONG, old),
        }

    def updated(copies: Copies) -> bool:
        return {(tier, text) for _, tier, text, _ in copies} == {(MemoryTier.MEDIUM, new)}

    not_done, done = await _check_whole_or_nothing(
        tmp_path, "update", prepare, update, "lighthouse keeper", unchanged, updated
    )
    assert not_done > 0 and done > 0


async def test_a_cancelled_delete_is_done_whole_or_not_at_all(tmp_path: Path) -> None:
    """Cancelled, a delete once left its memory in short-term only."""
    text = "the spare key is under the blue pot"

    async def prepare(memory: MemoryManager) -> list[str]:
        return [(await memory.add_memory(text, importance=0.9)).id]

    async def delete(memory: MemoryManager, ids: list[str]) -> Memory:
        return await memory.delete_memory(ids[0])

    def kept(copies: Copies) -> bool:
        return {tier for _, tier, _, _ in copies} == {MemoryTier.SHORT, MemoryTier.LONG}

    not_done, done = await _check_whole_or_nothing(
        tmp_path, "delete", prepare, delete, "spare key blue pot", kept, lambda copies: not copies
    )
    assert not_done > 0 and done > 0


async def test_a_cancelled_consolidation_is_done_whole_or_not_at_all(tmp_path: Path) -> None:
    """Cancelled, a consolidation once showed the originals (not superseded) until the next open."""
    texts = ["the quarterly report is due on friday", "the quarterly report is due on friday too"]

    async def prepare(memory: MemoryManager) -> list[str]:
        first = await memory.add_memory(texts[0], importance=0.9)
        second = await memory.add_memory(texts[1], importance=0.4)
        return [first.id, second.id]

    async def consolidate(memory: MemoryManager, ids: list[str]) -> object:
        return await memory.consolidate_memories(similarity_threshold=0.7)

    def separate(copies: Copies) -> bool:
        return all(superseded is None for *_, superseded in copies)

    def merged(copies: Copies) -> bool:
        return bool(copies) and all(superseded is not None for *_, superseded in copies)

    not_done, done = await _check_whole_or_nothing(
        tmp_path, "consolidate", prepare, consolidate, "quarterly report friday", separate, merged
    )
    assert done > 0


async def test_a_cancelled_undo_of_a_consolidation_is_done_whole_or_not_at_all(tmp_path: Path) -> None:
    texts = ["the boiler is serviced every march", "the boiler is serviced every march too"]

    async def prepare(memory: MemoryManager) -> list[str]:
        originals = [(await memory.add_memory(text, importance=0.9)).id for text in texts]
        report = await memory.consolidate_memories(similarity_threshold=0.7)
        return [*originals, *report["merged_ids"]]

    async def undo(memory: MemoryManager, ids: list[str]) -> object:
        return await memory.undo_consolidation(ids[2])

    def merged(copies: Copies) -> bool:  # the merged memory and its two originals, superseded by it
        superseded = {memory_id for memory_id, _, _, by in copies if by is not None}
        return len({copy[0] for copy in copies}) == 3 and len(superseded) == 2

    def undone(copies: Copies) -> bool:  # the two originals alone, neither superseded
        return len({copy[0] for copy in copies}) == 2 and all(by is None for *_, by in copies)

    not_done, done = await _check_whole_or_nothing(
        tmp_path, "undo", prepare, undo, "boiler serviced march", merged, undone
    )
    assert done > 0


class _GatedEmbedder(HashingEmbedder):
    """Embeds only once let through while armed (a slow model); at the latest after 5 s."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.gate = threading.Event()

    def embed(self, texts: list[str]) -> Any:
        if self.armed:
            self.gate.wait(timeout=5)
        return super().embed(texts)


async def test_a_consolidation_cancelled_while_embedding_its_merge_does_not_wait_for_the_embedder(
    tmp_path: Path,
) -> None:
    """The merge is stored whole; its vector is not part of it (a merged memory without one is found by its
    words, and embedded at the next open, as an add's): a caller's timeout during a slow embedding ended
    only when the embedding did (3 s for a 0.5 s timeout with a 3 s model)."""
    config = _config(tmp_path)
    embedder = _GatedEmbedder()
    async with MemoryManager(config, embedder=embedder) as memory:
        for text in ["the quarterly report is due on friday", "the quarterly report is due on friday too"]:
            await memory.add_memory(text, importance=0.9)
        embedder.armed = True
        started = time.perf_counter()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(memory.consolidate_memories(similarity_threshold=0.7), 0.5)
            waited = time.perf_counter() - started
        finally:
            embedder.gate.set()
        embedder.armed = False
        assert memory.backend is not None
        merged_ids = {copy.superseded_by for copy in await memory.backend.scan(None, every_copy=True)} - {
            None
        }
        assert waited < 2.5, f"the caller waited {waited:.1f} s for its 0.5 s timeout"
    assert len(merged_ids) == 1  # the merge was made whole
    async with MemoryManager(config, embedder=embedder) as reopened:
        assert reopened.backend is not None
        assert set(await reopened.backend.vectors_of(list(merged_ids))) == merged_ids  # embedded at the open


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_add_cancelled_while_embedding_gets_its_vector_soon_after(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """An add cancelled while its memory was embedded (a caller's timeout during a slow model call) stored
    the memory without its vector until the store was next opened: found by its words only meanwhile. Its
    vector is now made in the background once the embedder is free, while the manager stays open."""
    config = _config(tmp_path)
    if backend == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        config = ContextManagerConfig(storage_path=tmp_path, memory_backend="postgres", postgres_dsn=dsn)
    embedder = _GatedEmbedder()
    async with MemoryManager(config, embedder=embedder) as memory:
        assert memory.backend is not None
        embedder.armed = True
        started = time.perf_counter()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(memory.add_memory("the night ferry leaves at nine"), 0.3)
            waited = time.perf_counter() - started
        finally:
            embedder.armed = False
            embedder.gate.set()
        assert waited < 2.5, f"the caller waited {waited:.1f} s for its 0.3 s timeout"
        stored = [copy.id for copy in await memory.backend.scan(None, every_copy=False)]
        assert len(stored) == 1  # the add was stored (its vector is not part of the write)
        deadline = time.perf_counter() + 10
        while not await memory.backend.vectors_of(stored):
            assert time.perf_counter() < deadline, "the memory was never embedded while the manager was open"
            await asyncio.sleep(0.05)


class _TextGatedEmbedder(HashingEmbedder):
    """Embeds a text holding ``gated`` only once let through (a slow model call); at the latest after 5 s."""

    def __init__(self, gated: str) -> None:
        super().__init__()
        self.gated = gated
        self.gate = threading.Event()

    def embed(self, texts: list[str]) -> Any:
        if any(self.gated in text for text in texts):
            self.gate.wait(timeout=5)
        return super().embed(texts)


async def _add_timed_out(memory: MemoryManager, text: str) -> str:
    """Add ``text`` under a 0.3 s timeout its embedding outlasts; the id of the memory it stored."""
    assert memory.backend is not None
    before = {copy.id for copy in await memory.backend.scan(None, every_copy=False)}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(memory.add_memory(text), 0.3)
    [added] = {copy.id for copy in await memory.backend.scan(None, every_copy=False)} - before
    return added


async def test_the_background_embedding_of_a_cancelled_add_holds_up_no_write_nor_the_close(
    tmp_path: Path,
) -> None:
    """The vector of an add cancelled while it was embedded is made in the background; that slow model call
    holds up neither the writes that follow nor ``close()``. It held the write lock while it embedded: a
    delete waited for it (3 s with a 3 s model, where it took no time before), and so did close(). The
    close leaves the vector to the next open, as before."""
    config = _config(tmp_path)
    embedder = _TextGatedEmbedder("ferry")
    try:
        async with MemoryManager(config, embedder=embedder) as memory:
            other = await memory.add_memory("the bus leaves at ten")
            added = await _add_timed_out(memory, "the night ferry leaves at nine")
            await asyncio.sleep(0.05)  # the background embedding has begun, and waits for the model
            await asyncio.wait_for(memory.delete_memory(other.id), 2)
            await asyncio.wait_for(memory.add_memory("the tram leaves at eight"), 2)
            await asyncio.wait_for(memory.close(), 2)
    finally:
        embedder.gate.set()
    async with MemoryManager(config, embedder=_TextGatedEmbedder("never")) as reopened:
        assert reopened.backend is not None
        assert list(await reopened.backend.vectors_of([added])) == [added]  # embedded at the open


async def test_the_background_embedding_keeps_no_vector_of_a_text_changed_or_deleted_meanwhile(
    tmp_path: Path,
) -> None:
    """The background embedding of a cancelled add runs beside the writes: a memory updated while it embeds
    keeps the vector of its new text (the update's), one deleted meanwhile gets none back."""
    config = _config(tmp_path)
    embedder = _TextGatedEmbedder("ferry")
    async with MemoryManager(config, embedder=embedder) as memory:
        assert memory.backend is not None
        try:
            changed = await _add_timed_out(memory, "the night ferry leaves at nine")
            deleted = await _add_timed_out(memory, "the morning ferry leaves at six")
            await asyncio.sleep(0.05)
            await memory.update_memory(changed, content="the night bus leaves at nine")
            await memory.delete_memory(deleted)
        finally:
            embedder.gate.set()
        new_vector = (await memory.backend.vectors_of([changed]))[changed]
        deadline = time.perf_counter() + 10
        while memory._unembedded or (memory._embed_task is not None and not memory._embed_task.done()):
            assert time.perf_counter() < deadline, "the background embedding never ended"
            await asyncio.sleep(0.05)
        vectors = await memory.backend.vectors_of([changed, deleted])
        assert set(vectors) == {changed}
        assert (vectors[changed] == new_vector).all()
        assert numpy.allclose(vectors[changed], embedder.embed(["the night bus leaves at nine"])[0])


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_a_cancelled_access_count_flush_is_written_by_the_next_one(tmp_path: Path, tier: str) -> None:
    """A flush of search accesses cancelled anywhere (before, during or after its write) loses no access and
    counts none twice: the next flush writes the batch, merged with the accesses made since. The batch was
    dropped when the flush was cancelled: the stored count fell behind the searches. Each round searches,
    flushes cancelled after some steps, searches again and flushes; the stored count is then twice the rounds
    (re-read by a new manager too)."""
    config = _config(tmp_path)
    rounds = 0
    async with MemoryManager(config, promotion_access_count=1000) as memory:
        added = await memory.add_memory("the walrus sings at dawn", importance=0.9, tier=tier)
        for steps in _STEPS:
            rounds += 1
            assert [found.id for found in await memory.search_memory("walrus")] == [added.id]
            await _cancel_after(steps, memory.flush())
            assert [found.id for found in await memory.search_memory("walrus")] == [added.id]
            await memory.flush()
            assert memory.backend is not None
            counts = {copy.access_count for copy in await memory.backend.copies([added.id])}
            assert counts == {2 * rounds}, f"cancelled after {steps} steps"
    async with MemoryManager(config) as reopened:
        assert reopened.backend is not None
        assert {copy.access_count for copy in await reopened.backend.copies([added.id])} == {2 * rounds}
