"""Restoring the embedded store's files from what the process holds open (issue 15.1).

The storage directory removed, a file replaced or truncated while the manager runs: the database is still
open (its connection reads the unlinked file), the short- and medium-term tiers are in process. Auto-
recovery writes the files again from them, switches to them, records the repair, and the next health
check is healthy with every memory searchable, in this process and after a restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.conversations.sqlite_store import CONVERSATIONS_FILE_NAME
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import StorageLockedError
from context_manager.core.health_checker import HealthState
from context_manager.core.memory.file_store import LOG_FILE_NAME
from context_manager.core.memory.locking import LOCK_FILE_NAME
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME
from tests.core.conversations.conversation_worker import fingerprint


def _config(tmp_path: Path) -> ContextManagerConfig:
    return ContextManagerConfig(
        cache_path=tmp_path / "cache",
        enable_auto_recovery=True,
        health_check_interval=3600,  # the test runs the checks
        short_term_memory_size=20,
        medium_term_memory_size=30,
    )


async def _fill(memory: MemoryManager) -> dict[str, str]:
    """One memory per placement (and enough long-term rows that the database spans many pages)."""
    for number in range(200):
        await memory.add_memory(f"durable filler {number} " + "padding " * 30, tier="long")
    return {
        "short": (await memory.add_memory("short tier marker quokka", importance=0.3)).id,
        "important": (await memory.add_memory("important marker wombat", importance=0.9)).id,
        "medium": (await memory.add_memory("medium tier marker numbat", tier="medium")).id,
        "long": (await memory.add_memory("long tier marker bilby", tier="long")).id,
    }


async def _all_found(memory: MemoryManager, ids: dict[str, str]) -> None:
    for word, memory_id in zip(
        ("quokka", "wombat", "numbat", "bilby", "dunnart"), ids.values(), strict=False
    ):
        found = await memory.search_memory(word, limit=3)
        assert [m.id for m in found] == [memory_id], word
    assert len(await memory.search_memory("durable filler", limit=500)) == 200


async def test_a_removed_storage_directory_is_restored_from_the_open_store(tmp_path: Path) -> None:
    config = _config(tmp_path)
    storage = config.resolved_storage_path
    async with EnhancedContextManager(config) as manager:
        memory = manager.memory_manager
        checker = manager.health_checker
        assert checker is not None
        ids = await _fill(memory)
        shutil.rmtree(config.cache_path)  # the fault: everything under cache_path, storage included
        # a write after the deletion lands in the open (unlinked) files: it must come back too
        ids["after"] = (await memory.add_memory("written after the deletion dunnart", tier="long")).id
        assert memory.storage_faults() == {
            LOG_FILE_NAME: "removed",
            DATABASE_FILE_NAME: "removed",
            LOCK_FILE_NAME: "removed",
        }

        status = await checker.perform_health_check()
        storage_check = status.checks["storage"]
        assert storage_check.status is HealthState.HEALTHY, storage_check.message  # checked after the repair
        assert status.status is HealthState.HEALTHY
        [repair] = status.recoveries
        assert repair.check == "storage" and repair.success
        assert f"restored {DATABASE_FILE_NAME} from the open database (203 memories)" in repair.action
        assert f"rewrote {LOG_FILE_NAME} from the 3 memories in process" in repair.action
        assert storage_check.details["last_restore"]["failed"] == {}
        assert memory.storage_faults() == {}

        report = await checker.generate_diagnostic_report()  # the next check: healthy, repair on record
        assert report.status is HealthState.HEALTHY
        assert [action.action for action in report.recoveries] == [repair.action]
        await _all_found(memory, ids)
        ids["later"] = (await memory.add_memory("written after the repair", tier="long")).id
        assert await asyncio.to_thread((storage / DATABASE_FILE_NAME).exists)
    async with MemoryManager(config) as reopened:  # the files on disk hold everything
        await _all_found(reopened, {key: value for key, value in ids.items() if key != "later"})
        assert await reopened.get_memory(ids["later"]) is not None
        assert (await reopened.check_integrity())["ok"]


async def test_a_replaced_database_is_restored_and_the_replacement_kept(tmp_path: Path) -> None:
    config = _config(tmp_path)
    storage = config.resolved_storage_path
    async with EnhancedContextManager(config) as manager:
        memory, checker = manager.memory_manager, manager.health_checker
        assert checker is not None
        ids = await _fill(memory)
        garbage = b"not a database\n" * 100
        (storage / "swap.tmp").write_bytes(garbage)
        os.replace(storage / "swap.tmp", storage / DATABASE_FILE_NAME)  # a sync tool swapping the file
        assert memory.storage_faults() == {DATABASE_FILE_NAME: "replaced"}
        checker.enable_auto_recovery = False
        status = await checker.perform_health_check()
        assert status.checks["storage"].message == f"memory files replaced while open: {DATABASE_FILE_NAME}"
        assert "restore_storage()" in (status.checks["storage"].recommendation or "")
        checker.enable_auto_recovery = True
        status = await checker.perform_health_check()
        assert status.status is HealthState.HEALTHY and status.recoveries[0].success
        kept = [path for path in storage.iterdir() if path.name.startswith(f"{DATABASE_FILE_NAME}.replaced-")]
        assert [path.read_bytes() for path in kept if not path.name.endswith(("-wal", "-shm"))] == [garbage]
        assert "kept what had replaced it as" in status.recoveries[0].action
        await _all_found(memory, ids)
    async with MemoryManager(config) as reopened:
        await _all_found(reopened, ids)


async def test_a_truncated_or_replaced_log_is_rewritten_from_the_tiers_in_process(tmp_path: Path) -> None:
    config = _config(tmp_path)
    storage = config.resolved_storage_path
    async with MemoryManager(config) as memory:
        ids = await _fill(memory)
        log = storage / LOG_FILE_NAME
        os.truncate(log, log.stat().st_size // 2)  # the fault: the same file, fewer bytes
        assert memory.storage_faults() == {LOG_FILE_NAME: "truncated"}
        report = await memory.restore_storage()
        assert report["restored"] == [f"rewrote {LOG_FILE_NAME} from the 3 memories in process"]
        assert report["failed"] == {} and memory.storage_faults() == {}
        (storage / "other.jsonl").write_text("{}\n")
        os.replace(storage / "other.jsonl", log)
        assert memory.storage_faults() == {LOG_FILE_NAME: "replaced"}
        report = await memory.restore_storage()
        assert report["restored"][0].startswith(f"kept what had replaced {LOG_FILE_NAME} as ")
        again = await memory.restore_storage()  # nothing left to do
        assert (again["restored"], again["failed"]) == ([], {})
        assert len(memory.storage_restorations) == 2
    async with MemoryManager(config) as reopened:
        await _all_found(reopened, ids)


async def test_a_truncated_database_is_reported_not_restored(tmp_path: Path) -> None:
    """Its pages are gone from the file the connection reads: no restore from this process, say so."""
    config = _config(tmp_path)
    storage = config.resolved_storage_path
    async with EnhancedContextManager(config) as manager:
        memory, checker = manager.memory_manager, manager.health_checker
        assert checker is not None
        await _fill(memory)
        await memory.optimize()  # the rows in the main file, not only in the WAL
        os.truncate(storage / DATABASE_FILE_NAME, 8192)
        assert memory.storage_faults() == {DATABASE_FILE_NAME: "truncated"}
        status = await checker.perform_health_check()
        storage_check = status.checks["storage"]
        assert storage_check.status is HealthState.UNHEALTHY
        assert storage_check.message == f"memory files truncated while open: {DATABASE_FILE_NAME}"
        assert "restore it from a backup" in (storage_check.recommendation or "")
        [repair] = status.recoveries
        assert not repair.success and f"could not restore {DATABASE_FILE_NAME}" in repair.action
        assert (storage / DATABASE_FILE_NAME).stat().st_size == 8192  # left for recovery tools


async def test_another_process_holding_the_recreated_lock_is_not_overrun(tmp_path: Path) -> None:
    """The lock file went with the directory; if another process opened the storage meanwhile (it found no
    lock), restoring refuses instead of writing under its feet."""
    config = _config(tmp_path)
    storage = config.resolved_storage_path
    script = f"""
import asyncio, sys
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

async def main():
    async with MemoryManager(ContextManagerConfig(storage_path={str(storage)!r})):
        print("OPEN", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""
    async with MemoryManager(config) as memory:
        await memory.add_memory("a note", tier="long")
        shutil.rmtree(config.cache_path)
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert other.stdout is not None
            line = await asyncio.wait_for(other.stdout.readline(), timeout=60)
            assert line.strip() == b"OPEN", await other.stderr.read() if other.stderr else line
            with pytest.raises(StorageLockedError, match="pid"):
                await memory.restore_storage()
            assert await asyncio.to_thread(lambda: sorted(p.name for p in storage.iterdir())) == [
                LOCK_FILE_NAME,
                LOG_FILE_NAME,
                DATABASE_FILE_NAME,
                f"{DATABASE_FILE_NAME}-shm",
                f"{DATABASE_FILE_NAME}-wal",
            ]  # the other process's files, nothing of ours written over them
        finally:
            other.kill()
            await other.wait()


async def _talk(manager: EnhancedContextManager, steps: range) -> None:
    for step in steps:
        role = "user" if step % 2 == 0 else "assistant"
        await manager.add_message(role, f"turn {step}: notes about crate {step} in warehouse {step % 5}")


async def test_a_removed_storage_directory_restores_the_persisted_conversation(tmp_path: Path) -> None:
    """Issue 15.1 for conversations.sqlite3: a conversation written before and after the storage directory
    was removed is restored from the open connection, and a new manager resumes it with the same export."""
    config = _config(tmp_path).model_copy(update={"max_tokens": 600})
    storage = config.resolved_storage_path
    async with EnhancedContextManager(config, conversation_id="support-7") as manager:
        checker, store = manager.health_checker, manager.conversation_store
        assert checker is not None and store is not None
        await _talk(manager, range(40))
        compressions = [len(manager.compression_history)]
        shutil.rmtree(config.cache_path)
        await _talk(manager, range(40, 60))  # acknowledged into the open, unlinked file
        compressions.append(len(manager.compression_history))
        assert store.file_faults() == {CONVERSATIONS_FILE_NAME: "removed"}  # type: ignore[attr-defined]

        status = await checker.perform_health_check()
        storage_check = status.checks["storage"]
        assert storage_check.status is HealthState.HEALTHY, storage_check.message  # checked after the repair
        [repair] = status.recoveries
        assert repair.check == "storage" and repair.success, repair.action
        version = manager.conversation_version
        assert (
            f"restored {CONVERSATIONS_FILE_NAME} from the open database (1 conversation, {version} records)"
            in repair.action
        )
        assert store.file_faults() == {}  # type: ignore[attr-defined]
        await _talk(manager, range(60, 80))  # written to the restored file
        await manager.flush()
        compressions.append(len(manager.compression_history))
        assert 0 < compressions[0] < compressions[1] < compressions[2]  # compressions in every stage
        expected = fingerprint(manager)
        expected_version = manager.conversation_version
        assert (await checker.perform_health_check()).checks["storage"].status is HealthState.HEALTHY
    assert await asyncio.to_thread((storage / CONVERSATIONS_FILE_NAME).exists)
    async with EnhancedContextManager(config, conversation_id="support-7") as resumed:
        assert resumed.conversation_version == expected_version
        assert fingerprint(resumed) == expected
        found = await resumed.search_memory("crate 3 warehouse", limit=5)  # evicted before the deletion
        assert any("turn 3:" in memory.content for memory in found)
