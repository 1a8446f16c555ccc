"""Managers of one process share one embedded store: many conversations at once on one storage_path."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from context_manager import (
    ContextManagerConfig,
    ConversationConflictError,
    EnhancedContextManager,
    LifecycleError,
    MemoryManager,
    StorageError,
    StorageLockedError,
    register_memory_tools,
)
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.shared_store import _registry


def make_config(tmp_path: Path, **overrides: object) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", max_tokens=400, **overrides)  # type: ignore[arg-type]


def words(user: str, index: int) -> str:
    return f"{user} note {index}: the {user}-project milestone {index} needs review before the demo"


async def test_managers_of_one_loop_share_the_store_and_keep_users_apart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-bo", user_id="bo") as bo:
        async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as ana:
            assert ana.memory_manager is bo.memory_manager
            for index in range(40):
                await ana.add_message("user", words("ana", index))
                await bo.add_message("user", words("bo", index))
            assert ana.compression_history and bo.compression_history
            await ana.flush()
            await bo.flush()
            found_by_ana = await ana.search_memory("milestone review", limit=50)
            found_by_bo = await bo.search_memory("milestone review", limit=50)
            assert found_by_ana and found_by_bo
            assert all(memory.content.startswith("ana ") for memory in found_by_ana)
            assert all(memory.content.startswith("bo ") for memory in found_by_bo)
            assert [info["conversation_id"] for info in await ana.list_conversations()] == ["c-ana"]
            assert [info["conversation_id"] for info in await bo.list_conversations()] == ["c-bo"]
            ana_export = ana.get_context()
        # ana's manager stopped: bo's goes on with the store open
        assert bo.memory_manager.is_initialized
        await bo.add_message("user", "still writing after the other manager stopped")
        bo_export = bo.get_context()
    assert not bo.memory_manager.is_initialized  # the last one closed it
    assert not _registry
    async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as again:
        assert again.get_context() == ana_export
    async with EnhancedContextManager(config, conversation_id="c-bo", user_id="bo") as again:
        assert again.get_context() == bo_export
    async with MemoryManager(config) as memory:  # the lock was released
        assert await memory.search_memory("milestone", user_id="ana", limit=5)


async def serve(config: ContextManagerConfig, number: int, exports: dict[str, Any]) -> None:
    """A request of user ``number``: a manager on the user's conversation adds 30 turns (it compresses)."""
    user = f"user{number}"
    async with EnhancedContextManager(config, conversation_id=f"conv-{number}", user_id=user) as manager:
        for index in range(30):
            await manager.add_message("user", words(user, index))
            await asyncio.sleep(0)
        assert manager.compression_history
        exports[f"conv-{number}"] = manager.get_context()


async def test_many_concurrent_conversations_on_one_storage(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    exports: dict[str, Any] = {}
    await asyncio.gather(*(serve(config, number, exports) for number in range(12)))
    assert not _registry
    for number in range(12):
        conversation = f"conv-{number}"
        async with EnhancedContextManager(config, conversation_id=conversation, user_id=f"user{number}") as m:
            assert m.get_context() == exports[conversation]
            found = await m.search_memory(f"user{number} note 0 milestone", limit=100)
            assert found and all(memory.content.startswith(f"user{number} ") for memory in found)
            assert any(memory.content == words(f"user{number}", 0) for memory in found)


async def test_two_managers_on_one_conversation_in_one_process(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with (
        EnhancedContextManager(config, conversation_id="shared") as first,
        EnhancedContextManager(config, conversation_id="shared") as second,
    ):
        await first.add_message("user", "first writer")
        with pytest.raises(ConversationConflictError):
            await second.add_message("user", "stale writer")
        assert await second.add_message("user", "second writer, after its reload")
        await first.reload()
        contents = [message.content for message in first.messages]
        assert contents == ["first writer", "second writer, after its reload"]


async def test_concurrent_initialize_opens_the_store_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    managers = [EnhancedContextManager(config, conversation_id=f"c{n}") for n in range(5)]
    await asyncio.gather(*(manager.initialize() for manager in managers))
    try:
        assert len({id(manager.memory_manager) for manager in managers}) == 1
    finally:
        await asyncio.gather(*(manager.cleanup() for manager in managers))
    assert not _registry
    assert not managers[0].memory_manager.is_initialized


async def test_other_memory_settings_are_refused_and_say_which(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as first:
        second = EnhancedContextManager(make_config(tmp_path, short_term_memory_size=50))
        with pytest.raises(StorageLockedError, match="already open in this process") as caught:
            await second.initialize()
        assert caught.value.same_process
        assert "short_term_memory_size 1000 there, 50 here" in str(caught.value)
        assert "stop that process" not in str(caught.value)
        assert not second.is_initialized
        assert await first.add_message("user", "the first one is unaffected")
    async with EnhancedContextManager(make_config(tmp_path, short_term_memory_size=50)) as later:
        assert later.is_initialized  # once the first is gone, the other settings open it


async def test_an_embedder_object_is_shared_only_with_itself(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    embedder = HashingEmbedder()
    async with EnhancedContextManager(config, embedder=embedder) as first:
        async with EnhancedContextManager(config, embedder=embedder) as same:
            assert same.memory_manager is first.memory_manager
        with pytest.raises(StorageLockedError, match="another embedder object") as caught:
            await EnhancedContextManager(config, embedder=HashingEmbedder()).initialize()
        assert "create the embedder once and pass that object to every manager" in str(caught.value)
        with pytest.raises(StorageLockedError, match="another embedder object"):
            await EnhancedContextManager(config).initialize()


async def test_another_event_loop_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    outcome: list[BaseException | None] = []

    def other_loop() -> None:
        async def open_it() -> None:
            await EnhancedContextManager(config).initialize()

        try:
            asyncio.run(open_it())
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - the test reads what the thread met
            outcome.append(error)

    async with EnhancedContextManager(config) as first:
        thread = threading.Thread(target=other_loop)
        thread.start()
        await asyncio.to_thread(thread.join)
        [error] = outcome
        assert isinstance(error, StorageLockedError) and error.same_process
        assert "another event loop" in str(error) and "use SyncContextManager" in str(error)
        assert await first.add_message("user", "unaffected")


async def test_a_memory_manager_opened_directly_is_not_shared(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with MemoryManager(config):
        manager = EnhancedContextManager(config)
        with pytest.raises(StorageLockedError, match="already open in this process"):
            await manager.initialize()
    async with EnhancedContextManager(config):
        with pytest.raises(StorageLockedError, match="already open in this process"):
            await MemoryManager(config).initialize()


async def test_a_failed_open_leaves_nothing_behind(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    storage = config.resolved_storage_path
    storage.mkdir(parents=True)
    (storage / "memories.sqlite3").write_bytes(b"this is not a database" * 100)
    managers = [EnhancedContextManager(config, conversation_id=f"c{n}") for n in range(3)]
    outcomes = await asyncio.gather(*(m.initialize() for m in managers), return_exceptions=True)
    assert all(isinstance(outcome, OSError) for outcome in outcomes), outcomes
    assert not _registry
    os.remove(storage / "memories.sqlite3")
    async with EnhancedContextManager(config, conversation_id="c0") as manager:
        assert await manager.add_message("user", "opens once the file is fixed")


async def test_a_symlinked_path_is_the_same_store(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    link = tmp_path / "link"
    async with EnhancedContextManager(config) as first:
        os.symlink(config.resolved_storage_path, link)
        async with EnhancedContextManager(ContextManagerConfig(storage_path=link, max_tokens=400)) as second:
            assert second.memory_manager is first.memory_manager


def postgres_config(dsn: str, **overrides: object) -> ContextManagerConfig:
    options: dict[str, object] = {
        "memory_backend": "postgres",
        "postgres_dsn": dsn,
        "postgres_pool_size": 2,
        "max_tokens": 400,
    }
    options.update(overrides)
    return ContextManagerConfig(**options)  # type: ignore[arg-type]


async def test_managers_on_one_postgresql_database_share_one_pool(postgres_dsn: str) -> None:
    config = postgres_config(postgres_dsn)
    exports: dict[str, Any] = {}
    async with EnhancedContextManager(config) as holder:  # a server's long-lived manager
        memory = holder.memory_manager
        await asyncio.gather(*(serve(config, number, exports) for number in range(10)))  # one pool of 2
        async with EnhancedContextManager(config, conversation_id="conv-3", user_id="user3") as resumed:
            assert resumed.memory_manager is memory
            assert resumed.get_context() == exports["conv-3"]
            found = await resumed.search_memory("user3 note 0 milestone", limit=50)
            assert found and all(m.content.startswith("user3 ") for m in found)
        # other pool settings: a manager (and pool) of its own, as before, not a refusal
        async with EnhancedContextManager(postgres_config(postgres_dsn, postgres_pool_size=3)) as other:
            assert other.memory_manager is not memory
    assert not memory.is_initialized
    assert not _registry


class SlowEmbedder(HashingEmbedder):
    """A real embedder taking its time (a model on a busy CPU): every call sleeps in its worker thread."""

    def embed(self, texts: Any) -> Any:
        time.sleep(0.2)
        return super().embed(texts)


async def test_a_cleanup_cut_by_a_timeout_still_gives_the_store_back(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    embedder = SlowEmbedder()
    manager = EnhancedContextManager(config, conversation_id="c1", user_id="ana", embedder=embedder)
    await manager.initialize()
    for index in range(40):
        await manager.add_message("user", words("ana", index))
    assert manager.compression_history  # evicted messages for the writer to embed and store
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(manager.cleanup(), 0.01)  # a shutdown with a deadline
    assert not manager.is_initialized
    assert not _registry  # the store was given back, and closed (its last holder)
    assert not manager.memory_manager.is_initialized
    async with MemoryManager(config, embedder=embedder) as memory:  # the lock was released
        assert await memory.search_memory("ana milestone review", user_id="ana", limit=5)
    resumed = EnhancedContextManager(config, conversation_id="c1", user_id="ana", embedder=embedder)
    async with resumed:
        assert resumed.messages  # the conversation was stored


async def test_an_initialize_cancelled_once_memory_is_open_leaves_the_store_free(tmp_path: Path) -> None:
    config = make_config(tmp_path, short_term_memory_size=500)
    async with MemoryManager(config) as memory:  # a store whose short-term tier the next config overflows
        await memory.add_memories([{"content": words("ana", i), "importance": 0.1} for i in range(300)])
    smaller = make_config(tmp_path, short_term_memory_size=10)
    manager = EnhancedContextManager(smaller, conversation_id="c1")
    opening = manager.memory_manager
    task = asyncio.ensure_future(manager.initialize())
    for _ in range(100_000):  # one loop step at a time, until the files are open (the overflow moves next)
        if opening.is_initialized or task.done():
            break
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()  # what asyncio.wait_for(manager.initialize(), t) does when t runs out then
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not manager.is_initialized and not _registry
    assert not opening.is_initialized
    async with MemoryManager(smaller) as memory:  # nothing holds the store: not StorageLockedError
        assert (await memory.get_memory_stats())["total_memories"] == 300
    await manager.initialize()  # and the manager can be initialized again
    try:
        assert await manager.add_message("user", "opened at the second try")
    finally:
        await manager.cleanup()
    assert not _registry


async def test_a_shared_memorys_own_cleanup_leaves_it_open_while_managers_hold_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as first:
        await first.memory_manager.cleanup()  # the application closes "its" memory itself
        assert "share this memory manager; it stays open" in caplog.text
        assert first.memory_manager.is_initialized
        async with EnhancedContextManager(config, conversation_id="c-bo", user_id="bo") as second:
            assert second.memory_manager is first.memory_manager
            for index in range(40):
                await second.add_message("user", words("bo", index))
            await second.flush()
            found = await second.search_memory("bo milestone review", limit=50)
            assert found and all(memory.content.startswith("bo ") for memory in found)
        assert await first.add_message("user", "the first one goes on too")
    assert not _registry and not first.memory_manager.is_initialized  # closed by the last cleanup()
    async with MemoryManager(config) as memory:  # every lock released
        assert await memory.search_memory("milestone", user_id="bo", limit=5)


LOOP_ENDED_SCRIPT = """
import asyncio, sys
from context_manager import ContextManagerConfig, EnhancedContextManager, StorageLockedError

config = ContextManagerConfig(storage_path=sys.argv[1], max_tokens=400)

async def forgotten():  # a script's first asyncio.run: the manager is never cleaned up
    await EnhancedContextManager(config, conversation_id="c1").initialize()

async def later():
    await EnhancedContextManager(config, conversation_id="c1").initialize()

asyncio.run(forgotten())
try:
    asyncio.run(later())
except StorageLockedError as error:
    print(error)
"""


async def test_a_store_left_open_by_an_ended_loop_is_named_so(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOOP_ENDED_SCRIPT,
        str(tmp_path / "storage"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    message = out.decode()
    assert "already open in this process" in message
    assert "event loop has ended without cleanup()" in message, message
    assert "clean that one up first" not in message  # it cannot be: its loop is gone


async def test_postgresql_managers_share_again_after_a_loop_ended_without_cleanup(postgres_dsn: str) -> None:
    config = postgres_config(postgres_dsn)

    def forgotten() -> None:  # an earlier asyncio.run whose manager was never cleaned up
        asyncio.run(EnhancedContextManager(config, conversation_id="old").initialize())

    await asyncio.to_thread(forgotten)
    async with (
        EnhancedContextManager(config, conversation_id="a", user_id="ana") as first,
        EnhancedContextManager(config, conversation_id="b", user_id="bo") as second,
    ):
        assert first.memory_manager is second.memory_manager  # one pool again, not one per manager
        assert await first.add_message("user", "hello") and await second.add_message("user", "hi")
    assert not _registry


async def test_initialize_can_be_retried_after_a_failure_past_the_memory(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    storage = config.resolved_storage_path
    storage.mkdir(parents=True)
    (storage / "conversations.sqlite3").mkdir()  # the conversations database cannot be opened
    manager = EnhancedContextManager(config, conversation_id="c1", user_id="ana")
    with pytest.raises(StorageError, match="cannot open conversations database"):
        await manager.initialize()
    assert not _registry  # the memory it opened was closed
    (storage / "conversations.sqlite3").rmdir()  # fixed
    await manager.initialize()  # not "LifecycleError: this MemoryManager was closed"
    try:
        assert await manager.add_message("user", "opened at the second try")
        assert manager.memory_manager.is_initialized
    finally:
        await manager.cleanup()
    assert not _registry


async def test_memory_taken_before_initialize_by_a_borrowing_manager_says_what_to_use(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana"):
        manager = EnhancedContextManager(config, conversation_id="c-bo", user_id="bo")
        taken_early = manager.memory_manager  # e.g. register_memory_tools(..., manager.memory_manager)
        register_memory_tools(manager.tool_manager, taken_early, user_id="bo", replace=True)
        async with manager:
            assert manager.memory_manager is not taken_early  # it borrowed the open store
            result = await manager.execute_tool("memory_add", content="bo likes tea", importance=0.5)
            assert not result.success
            assert "the store another manager of this process has open" in (result.error or "")
            assert "manager.memory_manager after initialize()" in (result.error or "")
            register_memory_tools(manager.tool_manager, manager.memory_manager, user_id="bo", replace=True)
            assert (await manager.execute_tool("memory_add", content="bo likes tea", importance=0.5)).success


class CountingEmbedder(HashingEmbedder):
    """A real embedder that counts the texts it embeds (from the writers' worker threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0
        self.guard = threading.Lock()

    def embed(self, texts: Any) -> Any:
        with self.guard:
            self.texts += len(texts)
        time.sleep(0.001)  # a model takes a while: the managers' writers overlap
        return super().embed(texts)


async def test_concurrent_managers_embed_each_evicted_message_once(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    config = make_config(tmp_path).model_copy(update={"max_tokens": 2000})
    managers = [
        EnhancedContextManager(config, conversation_id=f"c{n}", user_id=f"u{n}", embedder=embedder)
        for n in range(4)
    ]
    await asyncio.gather(*(manager.initialize() for manager in managers))
    try:

        async def write(manager: EnhancedContextManager, user: str) -> None:
            for index in range(300):
                await manager.add_message("user", words(user, index))
            await manager.flush()

        await asyncio.gather(*(write(manager, f"u{n}") for n, manager in enumerate(managers)))
        evicted = sum(300 - len(manager.messages) for manager in managers)
        assert evicted > 800
        # each writer embeds its group ahead in one call; another writer's group must not push it out
        # (before: 1,600 texts embedded for 940 evicted, most of them again in calls of 8)
        assert embedder.texts <= evicted * 1.05, (embedder.texts, evicted)
    finally:
        await asyncio.gather(*(manager.cleanup() for manager in managers))


async def test_closing_a_finished_managers_memory_leaves_the_others_theirs(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-bo", user_id="bo") as bo:
        ana = EnhancedContextManager(config, conversation_id="c-ana", user_id="ana")
        await ana.initialize()
        await ana.add_message("user", words("ana", 0))
        await ana.cleanup()
        await ana.memory_manager.cleanup()  # shutdown code of before: "close its memory too"
        assert bo.memory_manager.is_initialized  # bo's manager still holds it
        for index in range(40):
            await bo.add_message("user", words("bo", index))
        await bo.flush()
        found = await bo.search_memory("bo milestone review", limit=50)
        assert found and all(memory.content.startswith("bo ") for memory in found)
    assert not _registry and not bo.memory_manager.is_initialized  # the last holder closed it


def open_files_under(directory: Path) -> list[str]:
    """The files under ``directory`` this process has open (Linux: ``/proc/self/fd``)."""
    found = []
    for descriptor in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            target = os.readlink(f"/proc/self/fd/{descriptor}")
            if target.startswith(str(directory)):
                found.append(os.path.basename(target))
    return sorted(found)


def conversation_files(directory: Path) -> list[str]:
    """The conversations store's files under ``directory`` this process has open."""
    return [name for name in open_files_under(directory) if name.startswith("conversations.")]


def store_threads() -> int:
    """The conversations stores' threads running (one per store open, or opening)."""
    threads = threading.enumerate()
    return sum(thread.name.startswith("context-manager-conversations") for thread in threads)


@contextlib.contextmanager
def conversations_locked(config: ContextManagerConfig) -> Iterator[None]:
    """Another process's long write to the conversations database: its lock is held until the block ends
    (a store's open waits for it, the busy timeout)."""
    writer = sqlite3.connect(config.resolved_storage_path / "conversations.sqlite3", isolation_level=None)
    try:
        writer.execute("PRAGMA locking_mode=EXCLUSIVE")
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("COMMIT")  # the lock stays until the connection closes
        yield
    finally:
        writer.close()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (a few seconds at most) for ``condition`` to hold: a cut open's store closes in the background.

    With the garbage collector off: a store it would close (a leak) must not pass for one closed.
    """
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    assert condition()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc/self/fd")
async def test_a_conversations_store_opened_while_the_last_manager_cleans_up_is_closed(
    tmp_path: Path,
) -> None:
    """The last manager's cleanup() closed the conversations store the share held: one a call of that
    manager was opening at that moment (its first use of the store) was handed over afterwards and stayed
    open for the manager's life, used after cleanup(). Such a call now gets LifecycleError, the store closed.
    """
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as ana:
        await ana.add_message("user", "a stored conversation")
    manager = EnhancedContextManager(config, user_id="ana")  # no conversation of its own: no store yet
    await manager.initialize()
    with conversations_locked(config):  # the store's open waits for another process's write
        listing = asyncio.ensure_future(manager.list_conversations())
        await asyncio.sleep(0)  # the listing opens the conversations store, and waits
        await manager.cleanup()
    with pytest.raises(LifecycleError, match="cleaned up"):
        await listing
    assert manager.conversation_store is None
    assert not _registry
    assert open_files_under(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc/self/fd")
async def test_an_initialize_cancelled_while_it_opens_the_conversations_store_leaves_no_connection(
    tmp_path: Path,
) -> None:
    """A cancelled open of the conversations store went on in its thread and left the connection (three
    open files) and the thread to the garbage collector; it is now closed when the open ends."""
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as ana:
        await ana.add_message("user", "a stored conversation")
    gc.disable()
    try:
        async with EnhancedContextManager(config, user_id="bo"):  # holds the memory, not the conversations
            for steps in range(12):  # cancelled a step later each time: the opens are cut in their thread
                manager = EnhancedContextManager(config, conversation_id="c-ana", user_id="ana")
                task = asyncio.ensure_future(manager.initialize())
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await manager.cleanup()
                # the store of a manager that got it stays open for the next one; a cut open's store is
                # closed once its open ends (its thread with it). Waited for here: closed after the next
                # manager opened the shared store, SQLite keeps its file descriptor until that one closes
                # (POSIX locks are the process's), which the file listing alone would take for a leak
                (share,) = _registry.values()
                stores = 0 if share.conversations is None else 1
                await eventually(
                    lambda stores=stores: store_threads() == stores and len(conversation_files(tmp_path)) <= 3
                )
        await eventually(lambda: open_files_under(tmp_path) == [])
    finally:
        gc.enable()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc/self/fd")
async def test_an_initialize_cancelled_while_the_conversations_store_waits_for_a_lock_is_not_held(
    tmp_path: Path,
) -> None:
    """An initialize cancelled (its timeout run out) while the conversations store's open waited for another
    process's lock got its cancellation only when the open gave up, the store's busy timeout (5 s) later.
    It gets it at once; the open goes on in its thread, and the store is closed after it."""
    config = make_config(tmp_path)
    async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as ana:
        await ana.add_message("user", "a stored conversation")

    async with EnhancedContextManager(config, user_id="bo"):  # holds the memory, not the conversations store
        with conversations_locked(config):
            held = conversation_files(tmp_path)  # the writer's
            manager = EnhancedContextManager(config, conversation_id="c-ana", user_id="ana")
            task = asyncio.ensure_future(manager.initialize())
            # the store's open waits for the lock in its thread (its file open)
            await eventually(lambda: len(conversation_files(tmp_path)) > len(held) or task.done())
            assert store_threads() == 1 and not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await manager.cleanup()
            assert store_threads() == 1  # the caller was not kept waiting: the open still waits for the lock
        await eventually(lambda: store_threads() == 0 and conversation_files(tmp_path) == [])
    assert open_files_under(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc/self/fd")
def test_a_cut_open_of_the_conversations_store_is_closed_after_its_event_loop_ended(tmp_path: Path) -> None:
    """A cut open's store is closed in the background once the open ends; when the request's event loop
    ended first (``asyncio.run`` per request), its shutdown cancelled that close, which cancelled the close
    queued behind the open in the store's thread: the connection (three open files) was left to the
    garbage collector. The close now runs in the store's thread after the open all the same."""
    config = make_config(tmp_path)

    async def store_a_conversation() -> None:
        async with EnhancedContextManager(config, conversation_id="c-ana", user_id="ana") as ana:
            await ana.add_message("user", "a stored conversation")

    async def request() -> None:
        manager = EnhancedContextManager(config, conversation_id="c-ana", user_id="ana")
        task = asyncio.ensure_future(manager.initialize())
        # the store's open waits for the lock in its thread (its file open)
        await eventually(lambda: len(conversation_files(tmp_path)) > len(held) or task.done())
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await manager.cleanup()

    asyncio.run(store_a_conversation())
    gc.disable()  # a connection the garbage collector would close must not pass for one closed
    try:
        with conversations_locked(config):  # the open goes on when it ends
            held = conversation_files(tmp_path)  # the writer's
            asyncio.run(request())  # its loop ends while the open still waits for the lock
        deadline = time.monotonic() + 8.0
        while (store_threads() or conversation_files(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store_threads() == 0
        assert conversation_files(tmp_path) == []
    finally:
        gc.enable()
