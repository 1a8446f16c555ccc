"""Writes under contention (issue 15.6): a write queues neither behind searches nor behind a whole move.

At 100k memories with 8 writers and 8 readers, write p99 was 4.4-6.4 s: a long-term commit waited in the
storage thread pool behind searches, and on the database connection they held, while the manager's write
lock kept every other writer waiting; overflow moves held the lock for a whole batch. The figures are
in ``benchmarks/bench_contention.py`` and docs/benchmarks.md; these tests pin the mechanisms.
"""

from __future__ import annotations

import asyncio
import threading

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import MemoryTier
from tests.core.memory.conftest import FakeClock


async def test_a_long_term_write_does_not_queue_behind_long_reads(sqlite_manager: MemoryManager) -> None:
    """Both reader threads busy (two long searches, say): a long-term add still commits at once."""
    manager = sqlite_manager
    backend = manager.backend
    executor = backend._executor  # type: ignore[union-attr]  # the backend's reader threads
    release = threading.Event()
    busy = [executor.submit(release.wait, 10.0) for _ in range(2)]
    try:
        added = await asyncio.wait_for(manager.add_memory("committed while reads run", tier="long"), 5.0)
        found = await asyncio.wait_for(manager.get_memory(added.id), 5.0)
        assert found is not None and found.tier is MemoryTier.LONG
        assert not any(future.done() for future in busy), "the reads must still be running: else no proof"
    finally:
        release.set()
    await asyncio.gather(*(asyncio.wrap_future(future) for future in busy))


async def test_writes_go_on_between_chunks_of_an_overflow_move(
    config: ContextManagerConfig, clock: FakeClock
) -> None:
    """The medium-term overflow moves to long-term a chunk per hold of the write lock (both backends)."""
    config = config.model_copy(update={"medium_term_memory_size": 1000})
    async with MemoryManager(config, clock=clock) as manager:
        await manager.add_memories(
            [{"content": f"medium note {n}", "tier": "medium", "importance": n / 1000} for n in range(300)]
        )
        by_importance = sorted(await manager.stored_copies(), key=lambda m: m.importance)
        config.medium_term_memory_size = 100  # 300 > 100: 210 least important move, in chunks of 64
        late = by_importance[209]  # the most important victim: in the last chunk
        order: list[str] = []
        rebalance = asyncio.ensure_future(manager._rebalance())
        rebalance.add_done_callback(lambda _: order.append("rebalance"))
        for _ in range(10_000):  # until the rebalance holds the lock for its first chunk
            if manager._write_lock.locked():
                break
            await asyncio.sleep(0)
        assert manager._write_lock.locked() and not rebalance.done()
        await manager.delete_memory(late.id)  # a write arriving while the move runs
        order.append("delete")
        await rebalance
        assert order == ["delete", "rebalance"]  # the delete did not wait for the whole move
        # the move did not bring the deleted memory back: each chunk moves the copies there are now
        assert await manager.get_memory(late.id) is None
        tiers = [m.tier for m in await manager.stored_copies()]
        assert (tiers.count(MemoryTier.MEDIUM), tiers.count(MemoryTier.LONG)) == (90, 209)


async def test_writes_far_over_the_medium_capacity_wait_for_the_move(
    config: ContextManagerConfig, clock: FakeClock
) -> None:
    """Back-pressure: the chunked move lets writes in, so writes faster than it must not grow the tier."""
    config = config.model_copy(update={"medium_term_memory_size": 100})
    async with MemoryManager(config, clock=clock) as manager:
        for batch in range(5):
            await manager.add_memories(
                [{"content": f"note {batch}-{n}", "tier": "medium", "importance": 0.3} for n in range(150)]
            )
            medium = (await manager.get_memory_stats())["by_tier"]["medium"]
            assert medium <= 100, (batch, medium)  # the write returned once the move was done
        stats = await manager.get_memory_stats()
        assert stats["total_memories"] == 750 and stats["by_tier"]["long"] == 750 - stats["by_tier"]["medium"]
