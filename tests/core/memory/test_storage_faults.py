"""Damaged storage seen through the manager: a corrupted database or log raises
``StorageCorruptedError`` naming the file and what to do, nothing is overwritten and the lock is released;
a torn last log line (a crash mid-write) is skipped with a warning; every store file is private."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageCorruptedError, StorageError
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import MemoryTier


async def fill(config: ContextManagerConfig) -> dict[str, str]:
    """Memories in every tier; returns tier name -> id."""
    async with MemoryManager(config) as manager:
        for number in range(40):
            await manager.add_memory(f"filler note {number} " + "padding " * 60, tier="long")
        return {
            "short": (await manager.add_memory("short tier marker quokka")).id,
            "medium": (await manager.add_memory("medium tier marker wombat", tier="medium")).id,
            "long": (await manager.add_memory("long tier marker numbat", tier="long")).id,
        }


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def file_modes(directory: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}


def snapshot_files(storage: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in storage.iterdir() if path.name != ".lock"}


@pytest.mark.parametrize("damage", ["garbage", "scribbled pages", "truncated"])
async def test_corrupted_database_is_reported_and_never_overwritten(
    sqlite_config: ContextManagerConfig, storage: Path, damage: str
) -> None:
    ids = await fill(sqlite_config)
    database = storage / "memories.sqlite3"
    data = bytearray(database.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a database " * 500)
    elif damage == "scribbled pages":
        for offset in range(4096 * 2, len(data), 4096):
            data[offset : offset + 64] = b"\xff" * 64
    else:
        data = data[: len(data) // 2]
    database.write_bytes(bytes(data))
    before = snapshot_files(storage)

    manager = MemoryManager(sqlite_config)
    with pytest.raises(StorageCorruptedError, match="it was not modified") as caught:
        await manager.initialize()
    assert caught.value.path == database
    assert str(database) in str(caught.value) and "backup" in str(caught.value)
    assert snapshot_files(storage) == before
    assert not manager.is_initialized

    # the lock was released: once the damaged file is moved aside, the volatile tiers open intact
    database.rename(storage / "damaged.sqlite3")
    async with MemoryManager(sqlite_config) as reopened:
        for tier in ("short", "medium"):
            found = await reopened.get_memory(ids[tier])
            assert found is not None and found.tier is MemoryTier(tier)
        assert await reopened.get_memory(ids["long"]) is None
    assert (storage / "damaged.sqlite3").read_bytes() == before["memories.sqlite3"]


async def test_corrupted_log_is_reported_and_never_overwritten(
    sqlite_config: ContextManagerConfig, storage: Path
) -> None:
    ids = await fill(sqlite_config)
    log = storage / "memories.jsonl"
    lines = log.read_bytes().split(b"\n")
    lines[0] = lines[0][: len(lines[0]) // 2]  # a damaged line in the middle of the log
    log.write_bytes(b"\n".join(lines))
    before = snapshot_files(storage)

    manager = MemoryManager(sqlite_config)
    with pytest.raises(StorageCorruptedError, match="line 1") as caught:
        await manager.initialize()
    assert caught.value.path == log
    assert "not modified" in str(caught.value) and "backup" in str(caught.value)
    assert log.read_bytes() == before["memories.jsonl"]  # the healthy database may be opened and closed

    log.rename(storage / "damaged.jsonl")
    async with MemoryManager(sqlite_config) as reopened:  # the long-term tier is unaffected
        found = await reopened.get_memory(ids["long"])
        assert found is not None and found.tier is MemoryTier.LONG
    assert (storage / "damaged.jsonl").read_bytes() == before["memories.jsonl"]


async def test_torn_last_log_line_is_skipped_with_a_warning(
    sqlite_config: ContextManagerConfig, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await fill(sqlite_config)
    append_bytes(storage / "memories.jsonl", b'{"op": "put", "m": {"id": "torn", "content": "never acknow')
    with caplog.at_level(logging.WARNING, logger="context_manager.core.memory.file_store"):
        async with MemoryManager(sqlite_config) as reopened:
            for memory_id in ids.values():
                assert await reopened.get_memory(memory_id) is not None
            assert await reopened.get_memory("torn") is None
            after = await reopened.add_memory("written after the torn line", tier="medium")
    assert "incomplete record" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="context_manager.core.memory.file_store"):
        async with MemoryManager(sqlite_config) as again:  # the next append started on its own line
            assert await again.get_memory(after.id) is not None
            assert (await again.check_integrity())["ok"]
    assert "incomplete record" not in caplog.text


async def test_every_store_file_is_private(
    sqlite_config: ContextManagerConfig, storage: Path, tmp_path: Path
) -> None:
    previous = os.umask(0o002)  # a permissive umask must not leak into the store's modes
    try:
        async with MemoryManager(sqlite_config) as manager:
            await manager.add_memory("private note", importance=0.95)
            await manager.add_memory("medium note", tier="medium")
            await manager.optimize()  # rewrites the log through a temporary file
            await manager.add_memory("after optimize", tier="long")
            export = tmp_path / "export.jsonl"
            await manager.export_memories(export)
            modes = file_modes(storage)
            assert file_modes(tmp_path)["export.jsonl"] == 0o600
    finally:
        os.umask(previous)
    assert file_modes(tmp_path)["storage"] == 0o700
    assert {"memories.jsonl", "memories.sqlite3", "memories.sqlite3-wal", ".lock"} <= set(modes)
    assert all(mode == 0o600 for mode in modes.values()), modes


async def test_an_add_that_failed_part_way_is_retried_with_its_id_into_one_complete_memory(
    sqlite_config: ContextManagerConfig, storage: Path
) -> None:
    """Issue 15.3 with a real fault: an important memory is written to the short-term log, then copied to
    the database; another connection (a backup tool, the sqlite3 shell) holds the database's write lock,
    so the second step raises ``StorageError`` after the first went in. A retry with the same
    ``memory_id`` stores one memory, with the long-term copy the failed call did not write."""
    text = "the gate code for the north warehouse is 4417"
    async with MemoryManager(sqlite_config) as manager:
        assert sqlite_config.long_term_importance_threshold <= 0.9
        await manager.add_memory("a warm-up note", importance=0.9)
        blocker = sqlite3.connect(storage / "memories.sqlite3", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # held until the store's 5 s busy timeout gives up
            with pytest.raises(StorageError, match="database is locked"):
                await manager.add_memory(text, importance=0.9, memory_id="gate-code")
        finally:
            blocker.close()
        # part-way: the short-term copy is in the log, the long-term copy is missing
        partial = [m.tier for m in await manager.stored_copies() if m.content == text]
        assert partial == [MemoryTier.SHORT]
        assert text in (storage / "memories.jsonl").read_text()

        retried = await manager.add_memory(text, importance=0.9, memory_id="gate-code")
        assert retried.id == "gate-code"
        again = await manager.add_memory(text, importance=0.9, memory_id="gate-code")  # a second retry
        assert again.id == "gate-code"
        copies = [m for m in await manager.stored_copies() if m.content == text]
        assert sorted((m.id, m.tier.value) for m in copies) == [("gate-code", "long"), ("gate-code", "short")]
        assert [m.id for m in await manager.search_memory("gate code warehouse")] == ["gate-code"]
        writes = (await manager.get_memory_stats())["writes"]
        assert (writes["failures"], writes["consecutive_failures"]) == (1, 0)
    async with MemoryManager(sqlite_config) as reopened:  # both copies are stored, once each
        copies = [m for m in await reopened.stored_copies() if m.content == text]
        assert sorted((m.id, m.tier.value) for m in copies) == [("gate-code", "long"), ("gate-code", "short")]
        assert (await reopened.get_memory_stats())["total_memories"] == 2
