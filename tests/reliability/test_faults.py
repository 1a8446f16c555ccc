"""Fault suite: storage that fails under the library, and plug-ins that misbehave.

Each fault must give a clear ``ContextManagerError`` (or a failed ``ToolResult``, or a degraded health
status), lose no acknowledged write, and recover where DESIGN.md promises it. Disk-full and read-only
storage run in a real subprocess (``crash_worker.py``): ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored makes
writes past the limit fail with ``EFBIG`` the way a full disk fails them with ``ENOSPC``; as root the
read-only worker drops to the storage directory's owner so permissions apply.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.async_operations import ConcurrencyController
from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import (
    ConcurrencyError,
    ContextManagerError,
    StorageCorruptedError,
    StorageError,
)
from context_manager.core.health_checker import HealthState
from context_manager.core.memory.file_store import LOG_FILE_NAME
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME
from context_manager.core.messages import Message
from tests.reliability.conftest import start_worker
from tests.reliability.crash_worker import memory_config
from tests.reliability.test_crash_matrix import Ledger, verify


def run_to_end(*args: str, timeout: float = 120.0) -> list[str]:
    """Run the worker to completion and return its protocol lines (fails on a crash)."""
    process = start_worker(*args)
    output, errors = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"worker {args[0]} failed: {errors[-3000:]}"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    assert lines[-1] == "DONE", errors[-3000:]
    assert not [line for line in lines if line.startswith("ESCAPED")], lines
    return lines


def config_for(storage: Path, **overrides: Any) -> ContextManagerConfig:
    settings: dict[str, Any] = {"enable_health_checks": False, "max_tokens": 300, "compression_ratio": 0.6}
    settings.update(overrides)
    return memory_config(str(storage), **settings)


# --- storage faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "limit"),
    [("medium", 200_000), ("long", 400_000), ("default,medium,long", 300_000)],
    ids=["log", "database", "mixed"],
)
async def test_disk_full_fails_cleanly_then_recovers_without_losing_writes(
    tiers: str, limit: int, storage: Path
) -> None:
    lines = await asyncio.to_thread(run_to_end, "disk_full", str(storage), "3", str(limit), tiers)
    errors = [line for line in lines if line.startswith("ERROR")]
    assert errors, "the file-size limit was never reached"
    for line in errors:
        _, kind, message = line.split(" ", 2)
        assert kind == "StorageError", line
        # the error names the cause, not a follow-up failure (e.g. a ROLLBACK with no transaction)
        assert "too large" in message or "full" in message or "I/O" in message, line
    assert any(line.startswith("SEARCH") for line in lines)  # reads keep working while writes fail
    # issue 15.2: health sees the failing writes (the 2-byte directory probe still passes), then recovers
    during, after = [line.split() for line in lines if line.startswith("HEALTH")]
    assert during[3] in (HealthState.DEGRADED.value, HealthState.UNHEALTHY.value), during
    assert during[1] == during[3], during  # nothing else is wrong: storage_writes decides the status
    assert "storage_writes" in during[2].split(",") and "storage" not in during[2].split(","), during
    assert after[3] == HealthState.HEALTHY.value and "storage_writes" not in after[2].split(","), after
    ledger = Ledger()
    ledger.read(lines)
    after_recovery = [line for line in lines[lines.index(next(iter(errors))) :] if line.startswith("ACK")]
    assert len(after_recovery) >= 5, "writes did not resume once the disk had room"
    # the store reopens with every acknowledged write (including those before and after the fault)
    stored = await verify(storage, ledger, {"medium_term_memory_size": 100_000}, f"disk full ({tiers})")
    print(
        f"FAULT-FIGURES disk_full[{tiers}]: limit_bytes={limit} acknowledged={len(ledger.acked)} "
        f"storage_errors={len(errors)} acknowledged_after_first_error={len(after_recovery)} stored={stored}"
    )


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="POSIX permissions")
def test_read_only_storage_directory_gives_storage_errors_and_degraded_health() -> None:
    # outside tmp_path: pytest's base directory is private to the user running the tests
    base = Path(tempfile.mkdtemp(prefix="cm-read-only-"))
    try:
        storage = base / "storage"
        storage.mkdir(mode=0o700)
        if os.geteuid() == 0:
            base.chmod(0o755)
            os.chown(base, 65534, 65534)
            os.chown(storage, 65534, 65534)
        lines = run_to_end("read_only", str(storage), "5")
        # compaction needs a new file: a StorageError, not a PermissionError
        assert any(line.startswith("ERROR StorageError optimize") for line in lines), lines
        health = next(line for line in lines if line.startswith("HEALTH"))
        assert health.split()[1] in (HealthState.DEGRADED.value, HealthState.UNHEALTHY.value), health
        assert "storage" in health.split()[2].split(","), health
        # the failed compaction is a failed write: storage_writes is degraded (one failure so far)
        assert health.split()[3] == HealthState.DEGRADED.value, health
        assert any(line.startswith("ERROR StorageError reopen") for line in lines), lines
        ledger = Ledger()
        ledger.read(lines)
        assert len(ledger.acked) == 7
        asyncio.run(verify(storage, ledger, {}, "read-only storage"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_storage_directory_deleted_while_running_is_restored(storage: Path) -> None:
    """Issue 15.1: auto-recovery rebuilds every file from what the process holds open, the long-term
    database included (it used to stay "removed while open" for ever, rescued only by export/import)."""
    config = config_for(storage, enable_auto_recovery=True)
    ledger = Ledger()
    async with EnhancedContextManager(config) as manager:
        memory = manager.memory_manager
        for number, tier in enumerate(["short", "medium", "long", None, "medium", "long"]):
            stored = await memory.add_memory(f"m9x{number} before deletion", importance=0.5, tier=tier)
            ledger.acked[stored.id] = f"m9x{number}"
        shutil.rmtree(storage)
        stored = await memory.add_memory("m9x50 after deletion", tier="medium")
        ledger.acked[stored.id] = "m9x50"
        stored = await memory.add_memory("m9x51 after deletion", tier="long")
        ledger.acked[stored.id] = "m9x51"
        assert manager.health_checker is not None
        status = await manager.health_checker.perform_health_check()
        storage_check = status.checks["storage"]
        assert storage_check.status is HealthState.HEALTHY, storage_check.message  # re-checked after repair
        [repair] = [action for action in status.recoveries if action.check == "storage"]
        assert repair.success, repair.action
        assert "restored memories.sqlite3 from the open database (3 memories)" in repair.action
        assert "rewrote memories.jsonl from the 5 memories in process" in repair.action
        again = await manager.health_checker.perform_health_check()
        assert again.checks["storage"].status is HealthState.HEALTHY and again.recoveries == []
        stored = await memory.add_memory("m9x52 after the repair", tier="long")
        ledger.acked[stored.id] = "m9x52"
    assert await verify(storage, ledger, {}, "directory deleted")  # no export/import needed


async def test_store_file_replaced_while_running_is_detected_and_the_log_rewritten(storage: Path) -> None:
    ledger = Ledger()
    async with EnhancedContextManager(config_for(storage, enable_auto_recovery=True)) as manager:
        memory = manager.memory_manager
        for number, tier in enumerate(["short", "medium", None, "medium"]):
            stored = await memory.add_memory(f"m8x{number} before the swap", tier=tier)
            ledger.acked[stored.id] = f"m8x{number}"
        garbage = storage / "garbage.tmp"
        garbage.write_bytes(b"not a memory log\n" * 50)
        os.replace(garbage, storage / LOG_FILE_NAME)  # e.g. a restore or a sync tool swapping the file
        stored = await memory.add_memory("m8x50 after the swap", tier="medium")  # lands in the old file
        ledger.acked[stored.id] = "m8x50"
        assert manager.health_checker is not None
        status = await manager.health_checker.perform_health_check()
        # found and repaired in this run: the log was rewritten from the live memories
        repairs = [action.action for action in status.recoveries if action.check == "storage"]
        assert any("rewrote memories.jsonl from the 5 memories in process" in action for action in repairs), (
            status.recoveries
        )
        assert any("kept what had replaced memories.jsonl as" in action for action in repairs)
        assert status.checks["storage"].status is HealthState.HEALTHY  # checked again after the repair
    assert await verify(storage, ledger, {}, "log replaced while running")


@pytest.mark.parametrize("file_name", [LOG_FILE_NAME, DATABASE_FILE_NAME])
async def test_store_file_replaced_by_garbage_is_refused_and_left_untouched(
    file_name: str, storage: Path
) -> None:
    async with MemoryManager(memory_config(str(storage))) as memory:
        await memory.add_memory("a memory in every tier", importance=0.9)
        await memory.add_memory("a medium one", tier="medium")
    garbage = os.urandom(3000).replace(b"\n", b"x") + b"\n" + os.urandom(5000) + b"\n"
    target = storage / file_name
    for suffix in ("-wal", "-shm"):
        (storage / (DATABASE_FILE_NAME + suffix)).unlink(missing_ok=True)
    target.write_bytes(garbage)
    for attempt in range(2):  # the failed open releases the lock: the second attempt fails the same way
        manager = EnhancedContextManager(config_for(storage))
        with pytest.raises(StorageCorruptedError, match="damaged") as caught:
            await manager.initialize()
        assert caught.value.path == target, attempt
    assert target.read_bytes() == garbage  # never overwritten


async def test_database_damaged_inside_is_reported_not_silently_used(storage: Path) -> None:
    async with MemoryManager(memory_config(str(storage))) as memory:
        for number in range(200):
            await memory.add_memory(f"long memory {number} " + "filler " * 30, tier="long")
    database = storage / DATABASE_FILE_NAME
    data = bytearray(database.read_bytes())
    assert len(data) > 3 * 4096
    data[2 * 4096 : len(data) - 4096] = os.urandom(len(data) - 3 * 4096)  # header intact, pages garbage
    database.write_bytes(bytes(data))
    try:
        async with EnhancedContextManager(config_for(storage)) as manager:
            assert manager.health_checker is not None
            status = await manager.health_checker.perform_health_check()
            database_check = status.checks["database"]
            assert database_check.status is not HealthState.HEALTHY
            assert status.status is not HealthState.HEALTHY
    except StorageError as error:  # refusing to open is the other clear outcome
        assert isinstance(error, ContextManagerError)


# --- plug-ins that misbehave --------------------------------------------------------------------------


async def test_slow_and_hanging_tools_time_out_as_failed_results(storage: Path) -> None:
    never = asyncio.Event()
    release = threading.Event()

    async def hanging_async(parameters: dict[str, Any]) -> str:
        await never.wait()
        return "never"

    def hanging_sync(parameters: dict[str, Any]) -> str:
        release.wait(30)
        return "released"

    async def slow(parameters: dict[str, Any]) -> str:
        await asyncio.sleep(0.05)  # the tool's own work, well inside its timeout
        return "slow but fine"

    async with EnhancedContextManager(config_for(storage, max_tool_timeout=5.0)) as manager:
        tools = manager.tool_manager
        tools.register_function_tool("hang_async", hanging_async, "hangs", timeout=0.2)
        tools.register_function_tool("hang_sync", hanging_sync, "hangs in a thread", timeout=0.2)
        tools.register_function_tool("slow", slow, "slow", timeout=2.0)
        try:
            started = time.perf_counter()
            results = await asyncio.gather(
                manager.execute_tool("hang_async"),
                manager.execute_tool("hang_sync"),
                manager.execute_tool("slow"),
            )
            elapsed = time.perf_counter() - started
            assert [r.success for r in results] == [False, False, True]
            assert [r.error_type for r in results[:2]] == ["timeout", "timeout"]
            assert all("timed out" in (r.error or "") for r in results[:2])
            assert results[2].result == "slow but fine"
            assert elapsed < 3.0
            # through a model's tool calls: the window gets a paired, failed result and stays usable
            calls = [
                {"id": "call_1", "type": "function", "function": {"name": "hang_async", "arguments": "{}"}}
            ]
            (result,) = await manager.execute_tool_calls(calls)
            assert result.success is False
            context = manager.get_context()
            assert isinstance(context, list)
            assert context[-1]["role"] == "tool" and context[-1]["tool_call_id"] == "call_1"
        finally:
            release.set()


async def test_tool_returning_a_value_that_is_not_json_is_a_failed_result(storage: Path) -> None:
    values = {"an_object": object(), "a_set": {1, 2}, "nan": float("nan"), "bytes": b"\xff\x00"}

    def returning(value: Any) -> Any:
        def tool_function(parameters: dict[str, Any]) -> Any:
            return value

        return tool_function

    async with EnhancedContextManager(config_for(storage)) as manager:
        for name, value in values.items():
            manager.tool_manager.register_function_tool(name, returning(value), f"returns {name}")
        for name in values:
            result = await manager.execute_tool(name)
            assert result.success is False, name
            assert result.error_type == "tool_error", name
            assert "JSON" in (result.error or ""), name
        calls = [
            {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": "{}"}}
            for name in values
        ]
        results = await manager.execute_tool_calls(calls)
        assert [r.success for r in results] == [False] * len(values)
        context = manager.get_context()
        assert isinstance(context, list)
        assert [m.get("tool_call_id") for m in context if m["role"] == "tool"] == [c["id"] for c in calls]


async def _fill_until_compressed(manager: EnhancedContextManager) -> list[Message]:
    added: list[Message] = []
    for number in range(60):
        await manager.add_message("user", f"s7x{number} a message about orchards harbors and lanterns " * 3)
        added.append(manager.messages[-1])
        if manager.compression_history:
            return added
    raise AssertionError("the window never compressed")


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_failing_summarizer_falls_back_to_extractive(failure: str, storage: Path) -> None:
    never = asyncio.Event()

    async def summarizer(messages: Sequence[Message], budget: int) -> str:
        if failure == "raises":
            raise RuntimeError("the model is down")
        await never.wait()
        return "never"

    config = config_for(storage, summarizer_timeout=0.2)
    async with EnhancedContextManager(config, summarizer=summarizer) as manager:
        added = await _fill_until_compressed(manager)
        record = manager.compression_history[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        expected = "the model is down" if failure == "raises" else "timeout"
        assert expected in (record["error"] or "")
        assert manager.get_context_summary()["token_count"] <= config.max_tokens
        in_window = {message.id for message in manager.messages}
        evicted = [message for message in added if message.id not in in_window]
        assert evicted
        for message in evicted:  # nothing the summarizer failed on is lost
            marker = message.content.split(" ", 1)[0]
            found = await manager.search_memory(marker, limit=5)
            assert any(m.metadata.get("message_id") == message.id for m in found), marker


# --- an event loop closed under a running controller --------------------------------------------------


def test_event_loop_closed_under_a_running_controller() -> None:
    release = threading.Event()
    controller = ConcurrencyController(max_concurrent_tasks=2)
    never_set: list[asyncio.Event] = []

    async def hang() -> None:
        event = asyncio.Event()
        never_set.append(event)
        await event.wait()

    def block() -> str:
        release.wait(30)
        return "released"

    async def start_and_submit() -> None:
        await controller.start()
        await controller.submit_task("async", hang)
        await controller.submit_task("sync", block)
        await controller.submit_task("queued", hang)
        await asyncio.sleep(0)  # let the tasks start

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start_and_submit())
    finally:
        loop.close()  # closed with the controller running and its tasks pending
    try:

        async def afterwards() -> None:
            for task_id in ("async", "sync", "queued"):
                with pytest.raises(ConcurrencyError):
                    await asyncio.wait_for(controller.wait_for_task(task_id), 5)
            with pytest.raises(ConcurrencyError):
                await controller.submit_task("new", hang)
            await asyncio.wait_for(controller.stop(drain=False), 5)
            assert not controller.is_running

        asyncio.run(afterwards())
    finally:
        release.set()


def test_controller_survives_asyncio_run_ending_under_it() -> None:
    controller = ConcurrencyController(max_concurrent_tasks=1)

    async def hang() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        await controller.start()
        await controller.submit_task("running", hang)
        await controller.submit_task("queued", hang)
        await asyncio.sleep(0)

    asyncio.run(main())  # cancels the running task, closes the loop

    async def afterwards() -> None:
        for task_id in ("running", "queued"):
            with pytest.raises(ConcurrencyError):
                await asyncio.wait_for(controller.wait_for_task(task_id), 5)
        await asyncio.wait_for(controller.stop(drain=False), 5)

    asyncio.run(afterwards())
