"""A manager dropped without cleanup() is garbage-collected and gives back what it held (with a warning)."""

from __future__ import annotations

import asyncio
import gc
import os
import warnings
import weakref
from pathlib import Path

from context_manager import ContextManagerConfig, EnhancedContextManager, MemoryManager
from context_manager.core.memory import locking
from context_manager.core.shared_store import _registry


def make_config(tmp_path: Path, **overrides: object) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", max_tokens=300, **overrides)  # type: ignore[arg-type]


def words(index: int) -> str:
    return f"turn {index}: the harbour crane number {index} needs a new cable before the winter storms"


async def drop(held: list[object], expected: str) -> list[warnings.WarningMessage]:
    """Drop the one reference to a manager, collect, let the background closes started finish.

    Returns the ResourceWarnings whose message holds ``expected``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held.clear()
        gc.collect()
        # the finalizers schedule their closes on the loop (call_soon_threadsafe): let them start
        for _ in range(3):
            await asyncio.sleep(0)
        from context_manager.core import unclosed

        await asyncio.wait_for(unclosed.wait_for_background_closes(), 30)
    found = [w for w in caught if issubclass(w.category, ResourceWarning) and expected in str(w.message)]
    return found


def held_locks(path: Path) -> int:
    real = os.path.realpath(path / locking.LOCK_FILE_NAME)
    return sum(1 for held_path, _ in locking._held_here.values() if held_path == real)


async def test_dropped_managers_are_collected_and_the_last_cleanup_closes_the_store(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    keeper = EnhancedContextManager(config)
    await keeper.initialize()
    tasks_before = len(asyncio.all_tasks())
    share = next(iter(_registry.values()))
    for round_number in range(3):
        manager = EnhancedContextManager(config, user_id="ana")
        await manager.initialize()
        await manager.add_message("user", words(round_number))
        assert share.users == 2
        dropped = weakref.ref(manager)
        held: list[object] = [manager]
        del manager
        warned = await drop(held, "unclosed EnhancedContextManager")
        assert dropped() is None, gc.get_referrers(dropped())
        assert len(warned) == 1, [str(w.message) for w in warned]
        # its hold on the store is given back: only the keeper holds it, no task of it is left running
        assert share.users == 1
        assert len(asyncio.all_tasks()) == tasks_before
    assert held_locks(config.resolved_storage_path) == 1
    await keeper.cleanup()
    assert not _registry
    assert held_locks(config.resolved_storage_path) == 0
    async with MemoryManager(config) as memory:  # closed: a manager of its own opens it
        assert memory.is_initialized


async def test_the_last_dropped_manager_closes_the_store(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    manager = EnhancedContextManager(config)
    await manager.initialize()
    dropped = weakref.ref(manager)
    held: list[object] = [manager]
    del manager
    warned = await drop(held, "unclosed EnhancedContextManager")
    assert dropped() is None
    assert not _registry
    assert held_locks(config.resolved_storage_path) == 0
    assert len(warned) == 1


async def test_what_a_dropped_manager_evicted_and_pinned_is_stored(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    manager = EnhancedContextManager(config, conversation_id="harbour", user_id="ana")
    await manager.initialize()
    await manager.add_messages([{"role": "user", "content": words(index)} for index in range(40)])
    pinned_id = manager.messages[-1].id
    manager.pin_message(pinned_id)  # stored in the background
    queued = len(manager.context_window.evicted_queue)
    assert queued > 0  # the writer has not stored them yet: the collection's close must
    dropped = weakref.ref(manager)
    held: list[object] = [manager]
    del manager
    warned = await drop(held, "unclosed EnhancedContextManager")
    assert dropped() is None
    assert len(warned) == 1
    async with EnhancedContextManager(config, conversation_id="harbour", user_id="ana") as resumed:
        assert [message.id for message in resumed.messages if message.pinned] == [pinned_id]
        found = await resumed.search_memory("harbour crane number 0 cable", limit=50)
        assert any(memory.content == words(0) for memory in found)


async def test_a_dropped_memory_manager_releases_its_storage(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    for index in range(3):
        memory = MemoryManager(config)
        await memory.initialize()
        await memory.add_memory(f"note {index} about the harbour crane", tier="long")
        await memory.add_memory(f"medium note {index} about the harbour crane")
        dropped = weakref.ref(memory)
        held: list[object] = [memory]
        del memory
        warned = await drop(held, "unclosed MemoryManager")
        assert dropped() is None
        assert held_locks(config.resolved_storage_path) == 0  # was held until the process exited
        assert len(warned) == 1
    async with MemoryManager(config) as memory:  # every acknowledged memory is there
        found = await memory.search_memory("harbour crane", limit=20)
        assert len(found) == 6


def test_a_manager_dropped_after_its_loop_ended_releases_the_lock(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    async def forgotten() -> MemoryManager:
        memory = MemoryManager(config)
        await memory.initialize()
        await memory.add_memory("a note about the harbour crane", tier="long")
        return memory

    memory = asyncio.run(forgotten())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del memory
        gc.collect()
    assert held_locks(config.resolved_storage_path) == 0
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == [
        f"unclosed MemoryManager (sqlite at {config.resolved_storage_path}): garbage-collected without "
        "cleanup(), its event loop has ended: its storage lock released; use `async with` or await cleanup()"
    ]

    async def later() -> int:
        async with MemoryManager(config) as again:
            return len(await again.search_memory("harbour crane"))

    assert asyncio.run(later()) == 1


async def test_a_cleaned_up_manager_gives_no_warning(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", words(1))
    memory = MemoryManager(config)
    async with memory:
        pass
    dropped = weakref.ref(manager)
    held: list[object] = [manager, memory]
    del manager, memory
    assert not await drop(held, "unclosed")
    assert dropped() is None


async def test_dropped_postgresql_managers_close_their_pools(postgres_dsn: str) -> None:
    config = ContextManagerConfig(
        memory_backend="postgres",
        postgres_dsn=postgres_dsn,  # type: ignore[arg-type]
        postgres_pool_size=2,
        max_tokens=300,
    )
    manager = EnhancedContextManager(config, conversation_id="harbour-pg", user_id="ana")
    await manager.initialize()
    await manager.add_messages([{"role": "user", "content": words(index)} for index in range(30)])
    memory = manager.memory_manager
    dropped = weakref.ref(manager)
    held: list[object] = [manager]
    del manager
    warned = await drop(held, "unclosed EnhancedContextManager")
    assert dropped() is None
    assert not _registry  # the last holder gone: the shared memory, and its pool, closed
    assert not memory.is_initialized
    assert len(warned) == 1
    own = MemoryManager(config)  # opened directly: a pool of its own, closed once it is collected
    await own.initialize()
    note = await own.add_memory("a note about the harbour crane", tier="long", user_id="ana")
    assert note.id in [found.id for found in await own.search_memory("note harbour crane", user_id="ana")]
    database = own._backend.database  # type: ignore[union-attr]
    assert database.is_open
    dropped = weakref.ref(own)
    held = [own]
    del own, memory
    warned = await drop(held, "unclosed MemoryManager")
    assert dropped() is None
    assert not database.is_open  # its pool closed
    assert len(warned) == 1
    async with EnhancedContextManager(config, conversation_id="harbour-pg", user_id="ana") as resumed:
        found = await resumed.search_memory("harbour crane number 0 cable", limit=50)
        assert any(found_memory.content == words(0) for found_memory in found)
        stored = await resumed.memory_manager.get_memory(note.id)
        assert stored is not None and stored.access_count == 1  # the collected manager's search hit


def test_a_memory_manager_whose_close_was_cut_short_releases_the_lock_once_collected(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    async def closed_as_the_loop_ends() -> MemoryManager:
        memory = MemoryManager(config)
        await memory.initialize()
        await memory.add_memory("a note about the harbour crane", tier="long")
        # not awaited: asyncio.run's shutdown cancels it while the storage closes in its thread
        asyncio.ensure_future(memory.cleanup())  # noqa: RUF006
        return memory

    memory = asyncio.run(closed_as_the_loop_ends())
    assert held_locks(config.resolved_storage_path) == 1  # the close was cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del memory
        gc.collect()
    assert held_locks(config.resolved_storage_path) == 0
    assert any("unclosed MemoryManager" in str(w.message) for w in caught)

    async def later() -> int:
        async with MemoryManager(config) as again:
            return len(await again.search_memory("harbour crane"))

    assert asyncio.run(later()) == 1


async def test_a_dropped_memory_managers_search_hits_are_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    memory = MemoryManager(config)
    await memory.initialize()
    added = await memory.add_memory("a note about the harbour crane", tier="long")
    assert [found.id for found in await memory.search_memory("harbour crane")] == [added.id]
    assert memory._pending_touches  # counted in batches: not written yet
    held: list[object] = [memory]
    del memory
    assert await drop(held, "unclosed MemoryManager")
    async with MemoryManager(config) as again:
        stored = await again.get_memory(added.id)
        assert stored is not None and stored.access_count == 1


async def test_waiting_for_background_closes_waits_for_this_loops_closes_only(tmp_path: Path) -> None:
    """Another thread's loop closing a manager of its own: waiting here does not touch its task."""
    import threading

    from context_manager.core import unclosed

    started, release = threading.Event(), threading.Event()

    def other_loop() -> None:
        async def forget() -> None:
            memory = MemoryManager(make_config(tmp_path / "other"))
            await memory.initialize()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del memory
                gc.collect()
            await asyncio.sleep(0)  # its close task has started on this loop
            started.set()
            release.wait(30)  # this loop is busy while the other one waits
            await unclosed.wait_for_background_closes()

        asyncio.run(forget())

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        assert await asyncio.to_thread(started.wait, 30)
        config = make_config(tmp_path / "here")
        memory = MemoryManager(config)
        await memory.initialize()
        held: list[object] = [memory]
        del memory
        assert await drop(held, "unclosed MemoryManager")  # waits for this loop's close: no RuntimeError
        assert held_locks(config.resolved_storage_path) == 0
    finally:
        release.set()
        await asyncio.to_thread(thread.join, 30)
    assert held_locks(tmp_path / "other" / "storage") == 0


def test_a_forked_childs_copy_of_a_manager_is_dropped_without_a_warning(tmp_path: Path) -> None:
    """The copy is not the child's to close (cleanup() there only marks it closed): nothing to warn about."""
    import subprocess
    import sys
    import textwrap

    import context_manager

    code = textwrap.dedent(
        """
        import asyncio, gc, os, sys, warnings
        from pathlib import Path
        from context_manager import ContextManagerConfig, EnhancedContextManager, MemoryManager

        async def main():
            memory = MemoryManager(ContextManagerConfig(cache_path=Path(sys.argv[1]) / "memory"))
            await memory.initialize()
            manager = EnhancedContextManager(ContextManagerConfig(cache_path=Path(sys.argv[1]) / "manager"))
            await manager.initialize()
            pid = os.fork()
            if pid == 0:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    del memory, manager
                    gc.collect()
                print("child:", [str(w.message) for w in caught if w.category is ResourceWarning], flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
            await manager.cleanup()
            await memory.cleanup()
            print("parent closed", flush=True)

        asyncio.run(main())
        """
    )
    source = str(Path(context_manager.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": source},
        check=False,
    )
    assert done.stdout.splitlines() == ["child: []", "parent closed"], done.stdout + done.stderr


async def test_a_manager_whose_tool_and_eviction_hook_refer_to_it_is_collected(tmp_path: Path) -> None:
    """A tool searching the manager's own memory (a closure over it): the cycle is garbage, not kept."""
    config = make_config(tmp_path)

    async def handler() -> weakref.ref[EnhancedContextManager]:
        manager = EnhancedContextManager(config)
        await manager.initialize()

        async def recall(query: str) -> str:
            """Search this conversation's memory."""
            return str(await manager.search_memory(query))

        manager.tool_manager.register_function_tool("recall", recall)
        manager.set_eviction_hook(lambda messages: None if manager.conversation_id else None)
        assert (await manager.execute_tool("recall", query="crane")).success
        return weakref.ref(manager)

    dropped = await handler()
    warned = await drop([], "unclosed EnhancedContextManager")
    assert dropped() is None
    assert not _registry  # its hold given back: the store closed
    assert held_locks(config.resolved_storage_path) == 0
    assert len(warned) == 1
