"""Erasure (issue 18.6): a deleted memory's text is on no byte of the storage files once the delete is
acknowledged and the store closed; its vectors go too; the next conversation turn does not keep it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.file_store import LOG_FILE_NAME, JsonlLog
from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME
from tests.core.memory.conftest import FakeClock


def storage_bytes(storage: Path) -> dict[str, bytes]:
    """Every file under the storage directory (the log, the database and any -wal/-shm), by name."""
    return {path.name: path.read_bytes() for path in sorted(storage.rglob("*")) if path.is_file()}


def files_holding(storage: Path, *markers: str) -> dict[str, list[str]]:
    """Which files hold which marker (as UTF-8 bytes, and in lower case: the FTS5 index stores terms)."""
    found: dict[str, list[str]] = {}
    for name, data in storage_bytes(storage).items():
        for marker in markers:
            if marker.encode() in data or marker.lower().encode() in data:
                found.setdefault(name, []).append(marker)
    return found


@pytest.mark.parametrize("fsync", [False, True])
async def test_a_deleted_memory_is_on_no_byte_of_the_storage_files(
    sqlite_config: ContextManagerConfig, fsync: bool, clock: FakeClock
) -> None:
    config = sqlite_config.model_copy(update={"fsync": fsync})
    storage = config.resolved_storage_path
    # a unique word per placement (the FTS5 index keeps stemmed words: no suffix porter would strip)
    async with MemoryManager(config, clock=clock) as memory:
        for number in range(60):  # enough to push memories down the tiers
            await memory.add_memory(f"kept filler note {number} about the harbour", importance=0.3)
        short = await memory.add_memory("the locker code is qzshortxq", importance=0.4)
        both = await memory.add_memory("the alarm code is qzbothxq", importance=0.95)  # short + long copy
        medium = await memory.add_memory("the gate code is qzmediumxq", tier="medium")
        long = await memory.add_memory("the safe code is qzlongxq", tier="long")
        moved = await memory.add_memory("the bike lock code is qzmovedxq", importance=0.0)
        for number in range(60):  # pushes the unimportant one down: short -> medium (-> long)
            await memory.add_memory(f"more filler {number} about the lighthouse", importance=0.6)
        copies = {copy.tier for copy in await memory.stored_copies() if copy.id == moved.id}
        assert copies and MemoryTier.SHORT not in copies, "the moved memory must have left short-term"
        markers = ["qzshortxq", "qzbothxq", "qzmediumxq", "qzlongxq", "qzmovedxq"]
        # the text was written to the files: the test can see it (else it proves nothing)
        await memory.flush()
        assert set(files_holding(storage, *markers)) >= {LOG_FILE_NAME}
        for victim in (short, both, medium, long, moved):
            await memory.delete_memory(victim.id)
        # the log is scrubbed when the delete is acknowledged, not at close
        assert markers[0] not in (storage / LOG_FILE_NAME).read_text()
        assert files_holding(storage / LOG_FILE_NAME, *markers) == {}
    assert files_holding(storage, *markers) == {}
    async with MemoryManager(config, clock=clock) as memory:  # everything else is intact
        assert len(await memory.search_memory("harbour", limit=200)) == 60
        assert len(await memory.search_memory("lighthouse", limit=200)) == 60
        assert await memory.search_memory("code", limit=10) == []


async def test_cleanup_and_undone_consolidations_are_erased_too(
    sqlite_manager: MemoryManager, sqlite_config: ContextManagerConfig, clock: FakeClock
) -> None:
    memory = sqlite_manager
    storage = sqlite_config.resolved_storage_path
    await memory.add_memory("an old reminder about qzoldxq", importance=0.9)
    await memory.add_memory("the wifi password is qzdupxq at the office", importance=0.5)
    await memory.add_memory("the wifi password is qzdupxq at the office.", importance=0.5)
    clock.advance(40 * 86400)
    await memory.add_memory("a fresh note", importance=0.2)
    report = await memory.consolidate_memories(0.9)
    assert len(report["merged_ids"]) == 1
    await memory.undo_consolidation(report["merged_ids"][0])  # the merged copy is deleted
    removed = await memory.cleanup_old_memories(30)
    assert removed["removed_count"] == 3
    await memory.close()
    assert files_holding(storage, "qzoldxq", "qzdupxq") == {}


async def test_deleting_a_merged_memory_erases_the_originals_it_merged(
    sqlite_manager: MemoryManager, sqlite_config: ContextManagerConfig
) -> None:
    """The originals hold the merged memory's text (and more: the merged memory keeps one text only). They
    were kept, superseded by the deleted memory, so the text it was made of stayed in the files."""
    memory = sqlite_manager
    storage = sqlite_config.resolved_storage_path
    await memory.add_memory("the wifi password is qzdupxq at the office qzonlyxq", importance=0.4)
    await memory.add_memory("the wifi password is qzdupxq at the office", importance=0.6, tier="medium")
    await memory.add_memory("a note that stays", importance=0.5)
    report = await memory.consolidate_memories(0.85)
    assert len(report["merged_ids"]) == 1 and "qzonlyxq" not in report["groups"][0]["content"]
    await memory.flush()
    assert files_holding(storage, "qzonlyxq")  # the test can see the text (else it proves nothing)
    await memory.delete_memory(report["merged_ids"][0])
    await memory.close()
    assert files_holding(storage, "qzdupxq", "qzonlyxq") == {}


async def test_a_crash_after_the_delete_is_finished_at_the_next_open(
    sqlite_config: ContextManagerConfig, tmp_path: Path
) -> None:
    """The delete is acknowledged, then the process is killed before closing: the next open erases."""
    storage = sqlite_config.resolved_storage_path
    script = f"""
import asyncio, os, sys
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

async def main():
    async with MemoryManager(ContextManagerConfig(storage_path={str(storage)!r})) as memory:
        for number in range(30):
            await memory.add_memory(f"durable filler {{number}}", tier="long")
        victim = await memory.add_memory("the vault code is qzcrashxq", tier="long")
        await memory.delete_memory(victim.id)
        print("DELETED", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    assert line.strip() == b"DELETED", (await process.stderr.read()) if process.stderr else line
    process.send_signal(signal.SIGKILL)
    await process.wait()
    # the deleted row's words are still in the FTS5 segments (or the WAL): the crash came before the close
    assert files_holding(storage, "qzcrashxq") != {}
    async with MemoryManager(sqlite_config) as memory:
        assert len(await memory.search_memory("durable filler", limit=50)) == 30
    assert files_holding(storage, "qzcrashxq") == {}


async def test_log_records_of_a_memory_deleted_before_a_crash_are_erased_at_open(
    sqlite_config: ContextManagerConfig,
) -> None:
    """A crash between the delete record and the erasure of the put records: opening erases them."""
    storage = sqlite_config.resolved_storage_path
    storage.mkdir(parents=True)
    log = JsonlLog(storage / LOG_FILE_NAME)
    log.open()
    kept = Memory(id="kept", content="a memory that stays")
    gone = Memory(id="gone", content="the door code is qzlogxq")
    log.append([{"op": "put", "m": kept.to_dict()}, {"op": "put", "m": gone.to_dict()}])
    log.append([{"op": "delete", "ids": ["gone"]}])
    log.close()
    assert files_holding(storage, "qzlogxq") == {LOG_FILE_NAME: ["qzlogxq"]}
    async with MemoryManager(sqlite_config) as memory:
        assert files_holding(storage, "qzlogxq") == {}
        assert (await memory.get_memory("kept")) is not None
        assert await memory.get_memory("gone") is None


async def test_an_erasure_cut_short_by_a_power_loss_is_skipped_when_replayed(
    sqlite_config: ContextManagerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    storage = sqlite_config.resolved_storage_path
    storage.mkdir(parents=True)
    kept = json.dumps({"op": "put", "m": Memory(id="kept", content="stays").to_dict()})
    torn = json.dumps({"op": "put", "m": Memory(id="torn", content="qztornxq").to_dict()})
    erased = '{"op": "erased"}'.ljust(len(torn))
    # the tail of the overwrite reached the disk, its start did not (or the other way round)
    half = len(torn) // 2
    lines = [kept, torn[:half] + " " * (len(torn) - half), erased[:half] + torn[half:], erased]
    (storage / LOG_FILE_NAME).write_text("".join(line + "\n" for line in lines))
    with caplog.at_level(logging.WARNING):
        async with MemoryManager(sqlite_config) as memory:
            assert [m.id for m in await memory.stored_copies()] == ["kept"]
    assert "erasure was interrupted" in caplog.text


async def test_a_deleted_turn_is_not_found_through_the_next_turn(manager: MemoryManager) -> None:
    """The next turn indexes its predecessor's text (``context``): deleting the turn clears that copy."""
    first = await manager.add_memory(
        "my locker code is qzturnxq", metadata={"session_id": "s1", "turn_index": 0, "speaker": "user"}
    )
    second = await manager.add_memory(
        "noted, I will remember it", metadata={"session_id": "s1", "turn_index": 1, "speaker": "assistant"}
    )
    stored = await manager.get_memory(second.id)
    assert stored is not None and "qzturnxq" in stored.context  # the test's premise
    assert {m.id for m in await manager.search_memory("qzturnxq", limit=5)} == {first.id, second.id}
    await manager.delete_memory(first.id)
    assert await manager.search_memory("qzturnxq", limit=5) == []
    after = await manager.get_memory(second.id)
    assert after is not None and after.context == "" and after.content == second.content
    # the latest turn deleted: the turn added after it does not pick its text up
    third = await manager.add_memory(
        "the bike lock code is qzlastxq", metadata={"session_id": "s1", "turn_index": 2, "speaker": "user"}
    )
    await manager.delete_memory(third.id)
    fourth = await manager.add_memory(
        "and the garage?", metadata={"session_id": "s1", "turn_index": 3, "speaker": "user"}
    )
    assert "qzlastxq" not in fourth.context
    assert await manager.search_memory("qzlastxq", limit=5) == []


async def test_a_turn_updated_then_deleted_is_on_no_byte_of_the_storage_files(
    sqlite_config: ContextManagerConfig,
) -> None:
    """The next turn kept the text the turn had before an update_memory, which its delete did not clear."""
    storage = sqlite_config.resolved_storage_path
    async with MemoryManager(sqlite_config) as memory:
        first = await memory.add_memory("my pin is qzoldpinxq", metadata={"session_id": "s", "turn_index": 0})
        second = await memory.add_memory("noted", metadata={"session_id": "s", "turn_index": 1})
        await memory.update_memory(first.id, content="my pin is qznewpinxq")
        await memory.delete_memory(first.id)
        after = await memory.get_memory(second.id)
        assert after is not None and after.context == ""
        assert await memory.search_memory("qzoldpinxq qznewpinxq") == []
    assert files_holding(storage, "qzoldpinxq", "qznewpinxq") == {}


async def test_a_turn_another_process_redacted_is_not_copied_into_the_next_turn(postgres_dsn: str) -> None:
    """PostgreSQL, two processes: one writes a turn, the other redacts it (update_memory) or deletes it; the
    next turn the first one wrote took the previous turn's text from its own memory of it, the secret,
    which a search then found (in the next turn's context, and the redacted turn through it). The previous
    turn is read from the storage now, where another process may have changed it."""
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config) as writer, MemoryManager(config) as other:
        turn = {"session_id": "s"}
        first = await writer.add_memory("my pin is qzpinxq", metadata={**turn, "turn_index": 0})
        await other.update_memory(first.id, content="my pin is redacted")
        second = await writer.add_memory("noted", metadata={**turn, "turn_index": 1})
        assert second.context == "my pin is redacted"
        assert await other.search_memory("qzpinxq") == []
        await other.update_memory(second.id, content="noted the code qzcodexq")
        await other.delete_memory(second.id)
        third = await writer.add_memory("anything else?", metadata={**turn, "turn_index": 2})
        assert third.context == ""
        assert await writer.search_memory("qzcodexq") == []
        # within one write the turn before is the one just written
        fourth, fifth = await writer.add_memories(
            [
                {"content": "the boat is blue", "metadata": {**turn, "turn_index": 3}},
                {"content": "and the sail?", "metadata": {**turn, "turn_index": 4}},
            ]
        )
        assert fourth.context == "anything else?" and fifth.context == "the boat is blue"


def stored_vector_ids(config: ContextManagerConfig) -> set[str]:
    """The ids in the storage's vector table, read with the database's own client."""
    if config.memory_backend == "sqlite":
        connection = sqlite3.connect(config.resolved_storage_path / DATABASE_FILE_NAME)
        try:
            return {row[0] for row in connection.execute("SELECT id FROM memory_vectors")}
        finally:
            connection.close()
    import psycopg

    assert config.postgres_dsn is not None
    with psycopg.connect(config.postgres_dsn.get_secret_value()) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM cm_memory_vectors")}


async def test_vectors_of_deleted_memories_are_deleted_in_every_tier(config: ContextManagerConfig) -> None:
    """Deleted without an embedder in this session (a plain CLI run, say): the vectors go all the same."""
    async with MemoryManager(config, embedder=HashingEmbedder(dimension=32)) as memory:
        short = await memory.add_memory("short-term fact about sailing")
        medium = await memory.add_memory("medium-term fact about sailing", tier="medium")
        long = await memory.add_memory("long-term fact about sailing", tier="long")
        kept = await memory.add_memory("a fact that stays")
        await memory.add_memory("an old one about rowing", tier="medium", importance=0.2)
    assert stored_vector_ids(config) >= {short.id, medium.id, long.id, kept.id}
    async with MemoryManager(config) as memory:
        for victim in (short, medium, long):
            await memory.delete_memory(victim.id)
        await memory.cleanup_old_memories(0, user_id=ALL_USERS, keep_importance=0.5)  # the rowing one
        remaining = {copy.id for copy in await memory.stored_copies()}
    assert remaining == {kept.id}
    assert stored_vector_ids(config) == {kept.id}
    # moving a memory between tiers keeps its vector
    async with MemoryManager(config, embedder=HashingEmbedder(dimension=32)) as memory:
        await memory.update_memory(kept.id, tier="long")
        await memory.update_memory(kept.id, tier="short")
    assert stored_vector_ids(config) == {kept.id}


async def test_deleting_a_merged_memory_deletes_the_vectors_of_its_originals(
    config: ContextManagerConfig,
) -> None:
    async with MemoryManager(config, embedder=HashingEmbedder(dimension=32)) as memory:
        a = await memory.add_memory("the ferry to the island leaves at noon", importance=0.4)
        b = await memory.add_memory("The ferry to the island leaves at noon.", importance=0.6, tier="long")
        kept = await memory.add_memory("a fact that stays")
        merged_ids = (await memory.consolidate_memories(0.9))["merged_ids"]
        assert len(merged_ids) == 1
        assert stored_vector_ids(config) == {a.id, b.id, kept.id, merged_ids[0]}
        await memory.delete_memory(merged_ids[0])
    assert stored_vector_ids(config) == {kept.id}


async def test_updating_a_memory_keeps_its_words_out_of_the_index_after_close(
    sqlite_config: ContextManagerConfig,
) -> None:
    """Replaced text (update_memory) leaves the long-term index the same way a deleted row does."""
    storage = sqlite_config.resolved_storage_path
    async with MemoryManager(sqlite_config) as memory:
        stored = await memory.add_memory("the old pin is qzpinxq", tier="long")
        await memory.update_memory(stored.id, content="the pin was changed")
    assert files_holding(storage, "qzpinxq") == {}
    assert DATABASE_FILE_NAME in storage_bytes(storage)
