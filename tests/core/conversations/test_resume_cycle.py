"""The cycle a web worker runs per request: open a manager with a conversation id, read, add, close.

Resuming does less than it used to (one trip to the storage thread to open memory, no reader thread until
a long read needs one, no write to the long-term database, no ``fsync`` of a memory log nobody wrote): the
same guarantees hold, at the same calls.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import weakref
from pathlib import Path

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import StorageLockedError
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.file_store import JsonlLog
from context_manager.core.memory.models import Memory

ROOT = Path(__file__).resolve().parents[3]

_HOLDER = """
import asyncio, sys
from context_manager import ContextManagerConfig, EnhancedContextManager

async def main():
    config = ContextManagerConfig(storage_path=sys.argv[1], embedder="none", enable_health_checks=False)
    async with EnhancedContextManager(config, conversation_id="chat") as manager:
        await manager.add_message("user", "written while the storage is held")
        print("holding", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


def config_for(storage: Path, **options: object) -> ContextManagerConfig:
    return ContextManagerConfig(
        storage_path=storage,
        embedder="none",
        enable_health_checks=False,
        **options,  # type: ignore[arg-type]
    )


def reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("context-manager-storage-read")]


async def test_a_resume_on_storage_another_process_holds_fails_at_initialize(tmp_path: Path) -> None:
    """The storage lock is still taken by ``initialize()`` (docs/conversations.md, reliability.md): the
    worker that cannot have the storage learns it there, not at its first add or search."""
    storage = tmp_path / "storage"
    async with EnhancedContextManager(config_for(storage), conversation_id="chat") as first:
        await first.add_message("user", "hello")
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER,
        str(storage),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout is not None and holder.stderr is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 60)
        assert line.strip() == b"holding", await holder.stderr.read()
        manager = EnhancedContextManager(config_for(storage), conversation_id="chat")
        with pytest.raises(StorageLockedError) as caught:
            await manager.initialize()
        assert not caught.value.same_process
        assert not manager.is_initialized
        await manager.cleanup()  # after a failed initialize: nothing to release, no error
    finally:
        assert holder.stdin is not None
        holder.stdin.write(b"\n")
        await holder.stdin.drain()
        holder.stdin.close()
        await asyncio.wait_for(holder.wait(), 60)
    assert holder.returncode == 0
    async with EnhancedContextManager(config_for(storage), conversation_id="chat") as resumed:
        assert [m.content for m in resumed.messages] == ["hello", "written while the storage is held"]


async def test_a_resume_closed_unused_then_resumed_again_keeps_everything(tmp_path: Path) -> None:
    """Open, read, close with no memory use, many times: nothing is lost, nothing is left open."""
    storage = tmp_path / "storage"
    config = config_for(storage, max_tokens=200)  # small: compressions evict to memory
    async with EnhancedContextManager(config, conversation_id="chat") as writer:
        for i in range(30):
            await writer.add_message("user", f"note {i}: the parcel for box {i} leaves on Friday")
        export = writer.get_context(format="openai")
        history = writer.compression_history
    assert history  # the window compressed: memory holds what it evicted
    for _ in range(3):
        manager = EnhancedContextManager(config, conversation_id="chat")
        await manager.initialize()
        assert manager.get_context(format="openai") == export
        await manager.cleanup()
        assert not reader_threads()
    async with EnhancedContextManager(config, conversation_id="chat") as resumed:
        assert resumed.compression_history == history
        found = await resumed.search_memory("parcel for box 3")
        assert any("box 3 " in memory.content for memory in found)


async def test_first_memory_use_after_a_resume_works_with_the_vector_channel(tmp_path: Path) -> None:
    """The stored vectors are loaded at ``initialize()`` without starting a reader thread; the first
    search (a long-term read) and the first add after the resume work, and are there after a restart."""
    storage = tmp_path / "storage"
    config = config_for(storage)
    embedder = HashingEmbedder(dimension=64)
    async with EnhancedContextManager(config, conversation_id="chat", embedder=embedder) as writer:
        await writer.add_message("user", "hello")
        await writer.memory_manager.add_memory("The invoice for order 1042 was paid in March", importance=0.9)
    manager = EnhancedContextManager(config, conversation_id="chat", embedder=embedder)
    await manager.initialize()
    try:
        assert not reader_threads()  # the open did not start one
        found = await manager.search_memory("invoice order 1042")
        assert [m.content for m in found][:1] == ["The invoice for order 1042 was paid in March"]
        await manager.memory_manager.add_memory("Order 1043 ships from Lyon", importance=0.9)
        await manager.add_message("user", "and order 1043?")
    finally:
        await manager.cleanup()
    assert not reader_threads()  # every storage thread stopped with cleanup
    async with EnhancedContextManager(config, conversation_id="chat", embedder=embedder) as again:
        assert [m.content for m in again.messages] == ["hello", "and order 1043?"]
        found = await again.search_memory("order 1043 Lyon")
        assert "Order 1043 ships from Lyon" in [m.content for m in found]


def test_a_memory_log_that_wrote_nothing_closes_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing fsynced the log even when this process wrote nothing to it (every resume paid an fsync);
    what it wrote is still fsynced at close."""
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "memories.jsonl"
    log = JsonlLog(path)
    log.open()
    log.append([{"op": "put", "m": Memory(id="a", content="kept", created_at=1.0).to_dict()}])
    written_fd = log._fd
    log.close()
    assert written_fd in synced  # what this log wrote is made durable at close
    synced.clear()
    untouched = JsonlLog(path)
    untouched.open()
    untouched.close()
    assert synced == []
    assert path.read_bytes().count(b"\n") == 1


@pytest.mark.parametrize("health_checks", [False, True])
async def test_a_manager_dropped_after_cleanup_is_freed_at_once_with_its_window(
    tmp_path: Path, health_checks: bool
) -> None:
    """A worker drops its manager after each request: it (and its window of resumed messages) is freed
    when the last reference goes, not left in a reference cycle (the manager and its health checker) for
    the cyclic garbage collector, whose full runs they lengthened."""
    storage = tmp_path / "storage"
    config = ContextManagerConfig(storage_path=storage, embedder="none", enable_health_checks=health_checks)
    async with EnhancedContextManager(config, conversation_id="chat") as writer:
        await writer.add_messages([{"role": "user", "content": f"message {i}"} for i in range(50)])
    manager = EnhancedContextManager(config, conversation_id="chat")
    await manager.initialize()
    export = manager.get_context()
    window = weakref.ref(manager.context_window)
    await manager.cleanup()
    checker = manager.health_checker
    assert checker is not None and checker.context_manager is manager  # still the checked manager
    status = await checker.perform_health_check()  # checks of a closed manager still see it
    assert status.checks["storage"].status.value == "healthy", status.checks["storage"]
    assert len(export) == 50 and manager.compression_history == []
    collecting = gc.isenabled()
    gc.disable()
    try:
        del manager, checker
        assert window() is None
    finally:
        if collecting:
            gc.enable()
