"""The event loop never waits for the long-term store: a writer thread holding its lock stalls nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import MemoryTier


async def _while_store_is_held(manager: MemoryManager, operation: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``operation`` while another thread holds the long-term store's lock (as a writer's commit does).

    The holder releases the lock when the loop tells it to, after ``operation`` has had time to start and
    reach the store; it gives up after a few seconds (then the loop was blocked: it could not tell it).
    Returns the operation's result; fails when the loop could not run while the lock was held.
    """
    store = manager._long
    assert store is not None
    held = threading.Event()
    release = threading.Event()
    outcome: dict[str, bool] = {}

    def writer() -> None:
        with store._lock:
            held.set()
            outcome["released_by_loop"] = release.wait(timeout=3.0)

    thread = threading.Thread(target=writer)
    thread.start()
    await asyncio.to_thread(held.wait)
    task = asyncio.ensure_future(operation())
    ticks = 0
    for _ in range(20):  # the loop keeps running other coroutines while the operation waits
        await asyncio.sleep(0.005)
        ticks += 1
    release.set()
    result = await task
    await asyncio.to_thread(thread.join)
    assert outcome["released_by_loop"], "the event loop was blocked on the long-term store's lock"
    assert ticks == 20
    return result


async def test_small_search_does_not_wait_on_the_loop_for_a_writer(manager: MemoryManager) -> None:
    for number in range(12):
        await manager.add_memory(f"kept fact {number} about the harbour lighthouse", tier=MemoryTier.LONG)
    await manager.add_memory("the lighthouse keeper prefers tea", tier=MemoryTier.LONG)
    expected = await manager.search_memory("lighthouse keeper", limit=5)
    found = await _while_store_is_held(manager, lambda: manager.search_memory("lighthouse keeper", limit=5))
    assert [m.id for m in found] == [m.id for m in expected]


async def test_stats_do_not_wait_on_the_loop_for_a_writer(manager: MemoryManager) -> None:
    await manager.add_memory("a durable fact", tier=MemoryTier.LONG)
    stats = await _while_store_is_held(manager, lambda: manager.get_memory_stats(user_id=ALL_USERS))
    assert stats["total_memories"] == 1
