from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import (
    InvalidMemoryError,
    LifecycleError,
    MemoryNotFoundError,
    StorageError,
    StorageLockedError,
)
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import MemoryTier
from context_manager.core.memory.ranking import RankingWeights
from context_manager.core.memory.validation import MAX_METADATA_DEPTH, json_depth

from .conftest import FakeClock

DAY = 86400.0


async def snapshot(manager: MemoryManager) -> list[dict[str, Any]]:
    """Every stored copy of every memory, for before/after comparisons."""
    await manager.flush()
    copies = await manager.stored_copies()
    return sorted((m.to_dict() for m in copies), key=lambda d: (d["id"], d["tier"]))


async def test_add_returns_a_copy_and_search_finds_it(manager: MemoryManager) -> None:
    added = await manager.add_memory("Python context managers use __enter__ and __exit__", tags=["python"])
    added.content = "changed by the caller"
    results = await manager.search_memory("context manager")
    assert [m.id for m in results] == [added.id]
    assert results[0].content.startswith("Python")
    assert results[0].score is not None and results[0].score > 0
    assert results[0].access_count == 1
    fetched = await manager.get_memory(added.id)
    assert fetched is not None and fetched.tier is MemoryTier.SHORT
    assert await manager.get_memory("nope") is None


async def test_important_memories_are_also_written_to_long_term(manager: MemoryManager) -> None:
    important = await manager.add_memory("the launch code is 1234", importance=0.9)
    casual = await manager.add_memory("it rained today", importance=0.2)
    tiers = {(m["id"], m["tier"]) for m in await snapshot(manager)}
    assert (important.id, "short") in tiers and (important.id, "long") in tiers
    assert (casual.id, "short") in tiers and (casual.id, "long") not in tiers
    # one result per memory even though it lives in two tiers
    assert [m.id for m in await manager.search_memory("launch code")] == [important.id]


async def test_explicit_tier(manager: MemoryManager) -> None:
    for tier in ("short", "medium", MemoryTier.LONG):
        memory = await manager.add_memory(f"note for the {tier} tier", tier=tier)
        assert memory.tier is MemoryTier.parse(tier)
    assert (await manager.get_memory_stats())["by_tier"] == {"short": 1, "medium": 1, "long": 1}


async def test_overflow_moves_down_and_nothing_is_lost(manager: MemoryManager, clock: FakeClock) -> None:
    ids = []
    for i in range(120):
        clock.advance(1)
        memory = await manager.add_memory(f"memory {i} about topic{i % 7}", importance=0.1 + (i % 5) / 10)
        ids.append(memory.id)
    await manager.flush()
    stats = await manager.get_memory_stats()
    assert stats["total_memories"] == 120
    assert stats["by_tier"]["short"] <= 20 and stats["by_tier"]["medium"] <= 30
    assert stats["by_tier"]["long"] >= 70
    found = await manager.search_memory("memory", limit=500)
    assert {m.id for m in found} == set(ids)
    # the least valuable went down first: what remains in short-term is at least as important on average
    short = [m for m in await manager.stored_copies() if m.tier is MemoryTier.SHORT]
    long_term = [m for m in await manager.stored_copies() if m.tier is MemoryTier.LONG]
    assert sum(m.importance for m in short) / len(short) >= sum(m.importance for m in long_term) / len(
        long_term
    )


async def test_an_important_memory_overflowing_short_term_keeps_only_its_long_term_copy(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """An overflow victim with a long-term copy only loses its short-term one (the long-term copy is
    the durable one). On SQLite it also went to medium-term: two copies of it in two tiers."""
    important = await manager.add_memory("the launch code is 1234", importance=0.7)
    clock.advance(3 * DAY)  # the least valuable memory of the short-term tier from now on
    for i in range(25):
        clock.advance(1)
        await manager.add_memory(f"filler number {i}", importance=0.5)
    tiers = sorted(m["tier"] for m in await snapshot(manager) if m["id"] == important.id)
    assert tiers == ["long"]
    assert [m.id for m in await manager.search_memory("launch code")] == [important.id]


async def test_an_add_that_waits_for_the_overflow_returns_the_memories_as_written(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """A batch that puts short-term well over its capacity waits for the overflow move; on SQLite it
    returned the memories with the tier the move had just given them (the tier keeps those objects)."""
    for i in range(20):
        clock.advance(1)
        await manager.add_memory(f"filler memory number {i}", importance=0.6)
    await manager.flush()
    added = await manager.add_memories([{"content": f"batch item {i}", "importance": 0.0} for i in range(10)])
    assert [memory.tier for memory in added] == [MemoryTier.SHORT] * 10
    await manager.flush()
    assert {memory.tier for memory in await manager.stored_copies()} == {MemoryTier.SHORT, MemoryTier.MEDIUM}


async def test_frequently_accessed_memories_move_up(config: ContextManagerConfig, clock: FakeClock) -> None:
    async with MemoryManager(config, clock=clock, promotion_access_count=3) as manager:
        hot = await manager.add_memory("the wifi password is hunter2", tier="medium")
        for _ in range(3):
            assert [m.id for m in await manager.search_memory("wifi password")] == [hot.id]
        await manager.flush()
        moved = await manager.get_memory(hot.id)
        assert moved is not None and moved.tier is MemoryTier.LONG and moved.access_count == 3


async def test_a_flush_reads_back_only_the_copies_that_could_move_up(
    config: ContextManagerConfig, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with MemoryManager(config, clock=clock, promotion_access_count=3) as manager:
        hot = await manager.add_memory("the wifi password is hunter2", tier="medium")
        settled = await manager.add_memory("the wifi router sits in the attic", tier="long")
        backend = manager._require("test")
        real_copies = backend.copies
        asked: list[str] = []

        async def copies(ids: list[str]) -> list[Any]:
            asked.extend(ids)
            return await real_copies(ids)

        monkeypatch.setattr(backend, "copies", copies)
        for _ in range(3):
            assert {m.id for m in await manager.search_memory("wifi")} == {hot.id, settled.id}
        await manager.flush()
        # the long-term memory's accesses are recorded, but its row is not read back: it cannot move up
        assert asked == [hot.id]
        moved = await manager.get_memory(hot.id)
        assert moved is not None and moved.tier is MemoryTier.LONG and moved.access_count == 3
        kept = await manager.get_memory(settled.id)
        assert kept is not None and kept.tier is MemoryTier.LONG and kept.access_count == 3


async def test_every_tier_survives_a_restart(config: ContextManagerConfig, clock: FakeClock) -> None:
    async with MemoryManager(config, clock=clock) as manager:
        added = {
            "short": await manager.add_memory("short tier sentinel alpha"),
            "medium": await manager.add_memory("medium tier sentinel beta", tier="medium"),
            "long": await manager.add_memory("long tier sentinel gamma", tier="long"),
            "both": await manager.add_memory("important sentinel delta", importance=0.95),
        }
        await manager.search_memory("alpha")
    async with MemoryManager(config, clock=clock) as reopened:
        short = await reopened.get_memory(added["short"].id)
        assert short is not None and short.tier is MemoryTier.SHORT and short.access_count == 1
        for name, memory in added.items():
            results = await reopened.search_memory(memory.content)
            assert results and results[0].id == memory.id, name
        assert (await reopened.get_memory_stats())["total_memories"] == 4


async def test_files_are_private(sqlite_manager: MemoryManager, storage: Path) -> None:
    await sqlite_manager.add_memory("secret", importance=0.9)
    assert stat.S_IMODE(os.stat(storage).st_mode) == 0o700
    for name in ("memories.jsonl", "memories.sqlite3", ".lock"):
        assert stat.S_IMODE(os.stat(storage / name).st_mode) == 0o600, name


async def test_second_manager_on_the_same_storage_is_refused(
    sqlite_manager: MemoryManager, sqlite_config: ContextManagerConfig
) -> None:
    other = MemoryManager(sqlite_config)
    expected = f"already open in this process \\(pid {os.getpid()}"
    with pytest.raises(StorageLockedError, match=expected) as caught:
        await other.initialize()
    assert caught.value.holder.startswith(f"pid {os.getpid()} on host") and caught.value.same_process
    assert "stop that process" not in str(caught.value)
    # through a symlink to the same directory: the same store, the same answer
    link = Path(str(sqlite_config.resolved_storage_path) + "-link")
    os.symlink(sqlite_config.resolved_storage_path, link)
    with pytest.raises(StorageLockedError, match="already open in this process"):
        await MemoryManager(ContextManagerConfig(storage_path=link)).initialize()


async def test_concurrent_initialize_and_close_are_serialised(config: ContextManagerConfig) -> None:
    manager = MemoryManager(config)
    await asyncio.gather(manager.initialize(), manager.initialize())
    memory = await manager.add_memory("stored once the racing opens are done", importance=0.9)
    assert (await manager.search_memory("racing opens"))[0].id == memory.id
    await asyncio.gather(manager.close(), manager.close())
    async with MemoryManager(config) as reopened:  # the lock was released
        assert await reopened.get_memory(memory.id) is not None


async def _holder_seen_from_another_process(storage: Path) -> str:
    """What ``StorageLockedError.holder`` says to another process opening ``storage`` (fails if it opens)."""
    script = (
        "import asyncio\n"
        "from context_manager.core.config import ContextManagerConfig\n"
        "from context_manager.core.errors import StorageLockedError\n"
        "from context_manager.core.memory.manager import MemoryManager\n"
        "async def main():\n"
        "    try:\n"
        f"        await MemoryManager(ContextManagerConfig(storage_path={str(storage)!r})).initialize()\n"
        "    except StorageLockedError as error:\n"
        "        print('LOCKED', repr((error.holder, str(error))))\n"
        "asyncio.run(main())\n"
    )
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.startswith("LOCKED "), result.stderr
    holder, message = ast.literal_eval(result.stdout.strip().removeprefix("LOCKED "))
    assert isinstance(holder, str)
    # the message says what to do: stop the holder, another path, or the server store for several workers
    assert f"is locked by {holder}; stop that process" in message
    assert 'memory_backend="postgres"' in message
    return holder


async def test_second_process_gets_storage_locked_error(sqlite_manager: MemoryManager, storage: Path) -> None:
    assert (await _holder_seen_from_another_process(storage)).startswith(f"pid {os.getpid()} ")


def _leave_stale_lock(storage: Path, stale: str) -> None:
    storage.mkdir(parents=True, exist_ok=True)
    (storage / ".lock").write_text(stale)


@pytest.mark.parametrize("stale", ["pid 4194303 on host a-much-longer-name-of-a-host-long-gone\n", "p\n", ""])
async def test_the_lock_file_names_only_its_current_holder(storage: Path, stale: str) -> None:
    # the holder is written over what an earlier process left (longer, shorter or nothing)
    await asyncio.to_thread(_leave_stale_lock, storage, stale)
    holder = f"pid {os.getpid()} on host {socket.gethostname()}"
    async with MemoryManager(ContextManagerConfig(storage_path=storage, embedder="none")):
        assert await asyncio.to_thread((storage / ".lock").read_text) == f"{holder}\n"
        assert await _holder_seen_from_another_process(storage) == holder


_FULL_DISK_OPEN = """
import asyncio, os, resource, signal, sys
from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageError
from context_manager.core.memory.manager import MemoryManager

def lock_files_open():
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except FileNotFoundError:  # the listing's own descriptor, closed since
            pass
    return [target for target in targets if target.endswith(".lock")]

async def main(path):
    config = ContextManagerConfig(storage_path=path, embedder="none")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG): a full disk
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        await MemoryManager(config).initialize()
    except StorageError as error:
        print("FAILED", type(error).__name__, error, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
    print("OPEN LOCK FILES", len(lock_files_open()), flush=True)
    async with MemoryManager(config) as manager:
        await manager.add_memory("stored once the disk had room")
        print("REOPENED", flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_lock_file_that_cannot_be_written_is_closed_and_released(storage: Path) -> None:
    """Writing the holder into a new lock file failed on a full disk: the error was a bare ``OSError``,
    the file stayed open and locked, and every later open in the process was refused with "locked by
    another process; stop that process". Now: a StorageError naming the lock file, nothing held, and the
    storage opens once the disk has room (in a subprocess: ``RLIMIT_FSIZE`` 0 makes every write fail)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _FULL_DISK_OPEN, str(storage)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    assert lines[:1] == [
        f"FAILED StorageError cannot write lock file {storage / '.lock'}: File too large; the storage was "
        "not opened (free space on its file system, then open it again)"
    ], result.stderr
    assert lines[1:] == ["OPEN LOCK FILES 0", "REOPENED"], result.stderr


async def test_cleanup_is_the_lifecycle_word_and_close_its_alias(config: ContextManagerConfig) -> None:
    # issue 17.5: initialize / cleanup, as on EnhancedContextManager
    manager = MemoryManager(config)
    await manager.initialize()
    memory = await manager.add_memory("kept across the cleanup", importance=0.9)
    await manager.cleanup()
    with pytest.raises(LifecycleError, match="closed"):
        await manager.search_memory("kept")
    await manager.close()  # the alias, safe after cleanup
    async with MemoryManager(config) as reopened:  # cleanup released the lock and persisted the write
        assert (await reopened.get_memory(memory.id)) is not None
    with pytest.raises(LifecycleError, match="closed"):
        await reopened.search_memory("kept")  # async with ended with cleanup()


async def test_lifecycle_errors(config: ContextManagerConfig) -> None:
    manager = MemoryManager(config)
    with pytest.raises(LifecycleError, match="initialize"):
        await manager.add_memory("too early")
    await manager.initialize()
    await manager.close()
    await manager.close()
    with pytest.raises(LifecycleError, match="closed"):
        await manager.search_memory("too late")


BAD_ADDS: list[tuple[dict[str, Any], str]] = [
    ({"content": "x", "importance": 1.5}, "importance"),
    ({"content": "x", "importance": -0.1}, "importance"),
    ({"content": "x", "importance": float("nan")}, "importance"),
    ({"content": "x", "importance": True}, "importance"),
    ({"content": ""}, "content"),
    ({"content": "   "}, "content"),
    ({"content": 42}, "content"),
    ({"content": None}, "content"),
    ({"content": "x", "tags": [1, 2]}, "tags"),
    ({"content": "x", "tags": "python"}, "tags"),
    ({"content": "x", "tags": [""]}, "tags"),
    ({"content": "x", "tier": "archive"}, "tier"),
    ({"content": "x", "metadata": {"a": object()}}, "metadata"),
    ({"content": "x", "metadata": {1: "a"}}, "metadata"),
    ({"content": "x", "user_id": 7}, "user_id"),
]


@pytest.mark.parametrize(("arguments", "field"), BAD_ADDS)
async def test_bad_add_raises_and_changes_nothing(
    manager: MemoryManager, arguments: dict[str, Any], field: str
) -> None:
    await manager.add_memory("existing memory", importance=0.9)
    before = await snapshot(manager)
    log = manager.storage_path / "memories.jsonl"
    log_size = log.stat().st_size if log.exists() else None  # the SQLite backend's journal
    with pytest.raises(InvalidMemoryError, match=f"^{field}: got .*; allowed") as caught:
        await manager.add_memory(**arguments)
    assert isinstance(caught.value, ValueError)
    assert await snapshot(manager) == before
    assert (log.stat().st_size if log.exists() else None) == log_size


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.search_memory("x", limit=-1), "limit"),
        (lambda m: m.search_memory("x", limit=2.5), "limit"),
        (lambda m: m.search_memory(None), "query"),
        (lambda m: m.search_memory("x", tiers=["nowhere"]), "tier"),
        (lambda m: m.search_memory("x", min_importance=2), "min_importance"),
        (lambda m: m.search_memory("x", since="yesterday"), "since"),
        (lambda m: m.search_memory("x", since=10**400), "since"),  # no float holds it
        (lambda m: m.search_memory("x", until=-(10**400)), "until"),
        (lambda m: m.search_by_tags([]), "tags"),
        (lambda m: m.search_by_tags(["a"], match="some"), "match"),
        (lambda m: m.search_by_tags(["a"], limit=-3), "limit"),
        (lambda m: m.cleanup_old_memories(-1), "max_age_days"),
        (lambda m: m.cleanup_old_memories(float("inf")), "max_age_days"),
        (lambda m: m.cleanup_old_memories(10**400), "max_age_days"),
        (lambda m: m.consolidate_memories(1.5), "similarity_threshold"),
        (lambda m: m.update_memory("x", importance=3), "importance"),
        (lambda m: m.get_memory(""), "memory_id"),
    ],
)
async def test_bad_arguments_raise_and_change_nothing(manager: MemoryManager, call: Any, field: str) -> None:
    await manager.add_memory("existing memory", importance=0.9, tags=["a"])
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match=f"^{field}: got"):
        await call(manager)
    assert await snapshot(manager) == before


async def test_update_and_delete(manager: MemoryManager) -> None:
    memory = await manager.add_memory("draft text", importance=0.9, tags=["draft"])
    updated = await manager.update_memory(memory.id, content="final text", tags=["final"])
    assert updated.content == "final text" and updated.tags == ["final"]
    copies = [m for m in await snapshot(manager) if m["id"] == memory.id]
    assert len(copies) == 2 and all(c["content"] == "final text" for c in copies)
    assert await manager.search_memory("draft") == []
    moved = await manager.update_memory(memory.id, tier="medium")
    assert moved.tier is MemoryTier.MEDIUM
    assert [m["tier"] for m in await snapshot(manager) if m["id"] == memory.id] == ["medium"]
    deleted = await manager.delete_memory(memory.id)
    assert deleted.id == memory.id
    assert await manager.get_memory(memory.id) is None
    with pytest.raises(MemoryNotFoundError):
        await manager.delete_memory(memory.id)
    with pytest.raises(MemoryNotFoundError):
        await manager.update_memory(memory.id, content="x")


async def test_delete_together_deletes_every_copy_of_the_ids_and_nothing_else(manager: MemoryManager) -> None:
    """``MemoryBackend.delete_together`` (the delete of a merged memory with its originals on a shared
    storage) deletes every copy of the ids in every tier and returns each; the other memories stay."""
    backend = manager.backend
    assert backend is not None
    both = await manager.add_memory("an important fact", importance=0.9)  # short-term and long-term
    medium = await manager.add_memory("a medium fact", tier="medium")
    long = await manager.add_memory("a long fact", tier="long")
    kept = await manager.add_memory("a fact that stays", importance=0.9)
    ids = [both.id, medium.id, long.id]
    deleted = await backend.delete_together([*ids, both.id, "no-such-id"])
    assert sorted((memory_id, tier.value) for memory_id, tier in deleted) == sorted(
        [(both.id, "short"), (both.id, "long"), (medium.id, "medium"), (long.id, "long")]
    )
    assert await backend.copies(ids) == []
    assert sorted(copy.tier.value for copy in await backend.copies([kept.id])) == ["long", "short"]
    assert await backend.delete_together(ids) == []
    assert await backend.delete_together([]) == []


async def refuse_long_term_deletes(config: ContextManagerConfig) -> None:
    """Make the storage refuse every delete of a long-term row (a real trigger raising, on either backend)."""
    if config.memory_backend == "postgres":
        import psycopg

        assert config.postgres_dsn is not None
        dsn = config.postgres_dsn.get_secret_value()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
            await connection.execute(
                "CREATE FUNCTION cm_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF OLD.tier = 'long' THEN RAISE EXCEPTION 'deletes refused'; END IF; RETURN OLD; END $$"
            )
            await connection.execute(
                "CREATE TRIGGER cm_test_refuse BEFORE DELETE ON cm_memories "
                "FOR EACH ROW EXECUTE FUNCTION cm_test_refuse()"
            )
        return
    with sqlite3.connect(config.resolved_storage_path / "memories.sqlite3") as connection:
        connection.execute(
            "CREATE TRIGGER cm_test_refuse BEFORE DELETE ON memories "
            "BEGIN SELECT RAISE(ABORT, 'deletes refused'); END"
        )
    connection.close()


async def test_a_move_failing_part_way_leaves_the_memory_in_the_tiers_it_was_in(
    manager: MemoryManager, config: ContextManagerConfig
) -> None:
    """``update_memory(id, tier="medium")`` of a memory in short- and long-term moved its short-term copy
    to medium-term, then met a refused delete of its long-term copy: the medium-term copy was removed again
    and the memory was left in long-term only, a tier nobody asked for. It is left where it was, unchanged,
    and the error is a StorageError (SQLite's refusal came out as a bare sqlite3.IntegrityError)."""
    memory = await manager.add_memory("the vault code is qzvaultxq", importance=0.9, tags=["vault"])
    other = await manager.add_memory("the shed code is qzshedxq", importance=0.9)
    before = await snapshot(manager)
    assert [c["tier"] for c in before if c["id"] == memory.id] == ["long", "short"]
    await refuse_long_term_deletes(config)
    with pytest.raises(StorageError, match="deletes refused"):
        await manager.update_memory(memory.id, tier="medium", importance=0.5, tags=["moved"])
    assert await snapshot(manager) == before
    assert (await manager.get_memory_stats())["in_two_tiers"] == 2
    found = await manager.search_memory("qzvaultxq")
    assert [(m.id, m.tier, m.importance) for m in found] == [(memory.id, MemoryTier.SHORT, 0.9)]
    await manager.close()
    async with MemoryManager(config) as reopened:  # the journal replays to the same tiers
        stored = await reopened.stored_copies()
        copies = sorted((m.id, m.tier.value, m.importance, tuple(m.tags)) for m in stored)
        assert copies == sorted(
            [(memory.id, tier, 0.9, ("vault",)) for tier in ("long", "short")]
            + [(other.id, tier, 0.9, ()) for tier in ("long", "short")]
        )


async def test_updating_a_turns_text_updates_the_next_turns_copy_of_it(manager: MemoryManager) -> None:
    """The next turn indexes its predecessor's text (``context``): a redaction by update_memory reaches it."""
    first = await manager.add_memory(
        "my bank pin is qzpinxq", metadata={"session_id": "s1", "turn_index": 0, "speaker": "user"}
    )
    second = await manager.add_memory(
        "noted, I will remember it", metadata={"session_id": "s1", "turn_index": 1, "speaker": "assistant"}
    )
    stored = await manager.get_memory(second.id)
    assert stored is not None and "qzpinxq" in stored.context  # the test's premise
    await manager.update_memory(first.id, content="my bank pin is redacted")
    assert await manager.search_memory("qzpinxq", limit=5) == []
    after = await manager.get_memory(second.id)
    assert after is not None and after.context == "my bank pin is redacted"
    assert after.content == second.content
    assert [m.id for m in await manager.search_memory("redacted", limit=5)][:1] == [first.id]
    # the latest turn updated: the turn added after it takes its new text, not the old one
    third = await manager.add_memory(
        "the bike lock code is qzlastxq", metadata={"session_id": "s1", "turn_index": 2, "speaker": "user"}
    )
    await manager.update_memory(third.id, content="the bike lock code is gone")
    fourth = await manager.add_memory(
        "and the garage?", metadata={"session_id": "s1", "turn_index": 3, "speaker": "user"}
    )
    assert fourth.context == "the bike lock code is gone"
    assert await manager.search_memory("qzlastxq", limit=5) == []


def nested_metadata(levels: int) -> dict[str, Any]:
    """Metadata nesting ``levels`` dicts and lists (itself included), built without recursion."""
    deep: dict[str, Any] = {}
    for _ in range((levels - 2) // 2):
        deep = {"k": [deep]}
    metadata = {"deep": deep if levels % 2 == 0 else [deep]}
    assert json_depth(metadata) == levels
    return metadata


async def test_deeply_nested_metadata_is_returned_without_a_recursion_error(manager: MemoryManager) -> None:
    """Metadata as deep as allowed (MAX_METADATA_DEPTH, 500 levels) is copied for every read: a recursive
    copy raised RecursionError on get_memory and search_memory."""
    metadata = nested_metadata(MAX_METADATA_DEPTH)
    added = await manager.add_memory("okapi sighting log", metadata=metadata)
    got = await manager.get_memory(added.id)
    assert got is not None and got.metadata == metadata
    assert [m.id for m in await manager.search_memory("okapi")] == [added.id]


async def test_metadata_nested_deeper_than_the_limit_is_refused_on_every_python(
    manager: MemoryManager,
) -> None:
    """json takes metadata about 990 levels deep on Python 3.11 and 2,500 on 3.13: a store written on 3.13
    held metadata that 3.11 could not read (every search of it raised RecursionError there). The limit is
    500 levels on every Python: deeper is refused by add_memory and update_memory, nothing changed."""
    kept = await manager.add_memory("okapi sighting log", metadata={"a": 1})
    for levels in (MAX_METADATA_DEPTH + 1, 1_100):
        with pytest.raises(InvalidMemoryError, match=f"nested at most {MAX_METADATA_DEPTH} levels"):
            await manager.add_memory("another okapi", metadata=nested_metadata(levels))
        with pytest.raises(InvalidMemoryError, match=f"nested at most {MAX_METADATA_DEPTH} levels"):
            await manager.update_memory(kept.id, metadata=nested_metadata(levels))
    wide = {f"row{index}": [{"a": [index]}] for index in range(2_000)}  # many brackets, 4 levels
    await manager.update_memory(kept.id, metadata=wide)
    assert [m.metadata for m in await manager.search_memory("okapi")] == [wide]


async def test_changing_a_returned_memory_changes_nothing_stored(manager: MemoryManager) -> None:
    """Nested metadata (a list, an object) of a returned memory was the stored memory's own: appending to it
    changed what every later read returned, without a write (and a restart brought the old value back)."""
    metadata = {"history": ["created"], "owner": {"team": "red"}}
    added = await manager.add_memory("giraffe habitat notes", tags=["zoo"], metadata=metadata)
    readers = [
        lambda: manager.get_memory(added.id),
        lambda: manager.search_memory("giraffe"),
        lambda: manager.search_by_tags(["zoo"]),
        lambda: manager.recent_memories(),
        lambda: manager.update_memory(added.id, importance=0.4),
    ]
    returned = [added]
    for read in readers:
        result = await read()
        returned.append(result[0] if isinstance(result, list) else result)
    for memory in returned:
        assert memory is not None
        memory.metadata["history"].append("changed by the caller")
        memory.metadata["owner"]["team"] = "blue"
        memory.tags.append("changed")
    stored = await manager.get_memory(added.id)
    assert stored is not None
    assert (stored.metadata, stored.tags) == (metadata, ["zoo"])


async def test_search_filters(manager: MemoryManager, clock: FakeClock) -> None:
    old = await manager.add_memory("apple pie recipe", importance=0.2, tags=["food"])
    clock.advance(10 * DAY)
    new = await manager.add_memory("apple stock price", importance=0.8, tags=["finance"], tier="long")
    assert {m.id for m in await manager.search_memory("apple")} == {old.id, new.id}
    assert [m.id for m in await manager.search_memory("apple", tags=["food"])] == [old.id]
    assert [m.id for m in await manager.search_memory("apple", tiers=["long"])] == [new.id]
    assert [m.id for m in await manager.search_memory("apple", min_importance=0.5)] == [new.id]
    assert [m.id for m in await manager.search_memory("apple", since=clock.now - DAY)] == [new.id]
    assert [m.id for m in await manager.search_memory("apple", until=clock.now - DAY)] == [old.id]
    assert await manager.search_memory("apple", limit=0) == []
    assert await manager.search_memory("   ") == []


async def test_search_by_tags_any_and_all(manager: MemoryManager) -> None:
    a = await manager.add_memory("a", tags=["python", "important"], importance=0.9)
    b = await manager.add_memory("b", tags=["python"], importance=0.4, tier="medium")
    c = await manager.add_memory("c", tags=["important"], importance=0.6, tier="long")
    assert [m.id for m in await manager.search_by_tags(["important"])] == [a.id, c.id]
    assert [m.id for m in await manager.search_by_tags(["python", "important"])] == [a.id, c.id, b.id]
    assert [m.id for m in await manager.search_by_tags(["python", "important"], match="all")] == [a.id]
    assert len(await manager.search_by_tags(["python", "important"], limit=1)) == 1


async def test_access_counts_are_batched_and_persisted(config: ContextManagerConfig) -> None:
    async with MemoryManager(config) as manager:
        memory = await manager.add_memory("counted memory", tier="long")
        for expected in range(1, 4):
            results = await manager.search_memory("counted")
            assert results[0].access_count == expected
        assert (await manager.get_memory_stats())["pending_access_updates"] == 1
    async with MemoryManager(config) as reopened:
        stored = await reopened.get_memory(memory.id)
        assert stored is not None and stored.access_count == 3


async def test_pending_access_updates_are_counted_per_user(manager: MemoryManager) -> None:
    """``get_memory_stats(user_id=...)["pending_access_updates"]`` counted every user's search hits not
    written yet; it counts that user's (everyone's for ALL_USERS), and the flush writes them all."""
    for owner in ("alice", "alice", "bob", None):
        await manager.add_memory(f"a ripe apple for {owner}", user_id=owner, tier="long")
    assert len(await manager.search_memory("apple", user_id="alice")) == 2
    assert len(await manager.search_memory("apple", user_id="bob")) == 1

    async def pending(user_id: Any = None) -> int:
        return int((await manager.get_memory_stats(user_id=user_id))["pending_access_updates"])

    counts = [await pending("alice"), await pending("bob"), await pending(), await pending("carol")]
    assert counts == [2, 1, 0, 0]
    assert await pending(ALL_USERS) == 3
    await manager.search_memory("apple")
    assert [await pending(), await pending(ALL_USERS)] == [1, 4]
    await manager.flush()
    assert await pending(ALL_USERS) == 0
    hits = [m.access_count for m in await manager.search_memory("apple", user_id=ALL_USERS, limit=10)]
    assert sorted(hits) == [2, 2, 2, 2]


async def test_turns_imported_over_a_session_are_what_its_next_turn_reads(
    manager: MemoryManager, tmp_path: Path
) -> None:
    """An import replacing a conversation turn's text (a redacted export) left the manager's memory of that
    session's last turn as it was: the next turn indexed the old text as its context, so the redacted words
    still found it (SQLite). An import adding turns to a session left its turn counter as it was: the next
    evicted message took a number an imported turn held."""
    from context_manager.core.messages import Message, Role

    [first] = await manager.remember_messages([Message(role=Role.USER, content="my pin is qzpinxq")])
    exported = tmp_path / "turns.jsonl"
    await manager.export_memories(exported)
    record = json.loads(exported.read_text(encoding="utf-8"))
    redacted = {**record, "content": "my pin is redacted"}
    added = {**record, "id": "imported-turn", "content": "an imported turn", "tiers": ["medium"]}
    added["metadata"] = {**record["metadata"], "turn_index": 1}
    exported.write_text(json.dumps(redacted) + "\n" + json.dumps(added) + "\n", encoding="utf-8")
    assert (await manager.import_memories(exported))["imported"] == 2
    [after] = await manager.remember_messages([Message(role=Role.ASSISTANT, content="noted")])
    assert after.turn_index == 2  # after the imported turn 1
    assert after.context == "an imported turn"
    [next_turn] = await manager.remember_messages([Message(role=Role.USER, content="thanks")])
    assert next_turn.turn_index == 3 and next_turn.context == "noted"
    assert await manager.search_memory("qzpinxq") == []
    assert first.turn_index == 0


async def test_consolidation_merges_hides_and_can_be_undone(manager: MemoryManager) -> None:
    a = await manager.add_memory("The user lives in Berlin, Germany", importance=0.4, tags=["home"])
    b = await manager.add_memory(
        "the user lives in Berlin Germany!", importance=0.7, tags=["city"], tier="long"
    )
    other = await manager.add_memory("The user likes green tea", importance=0.5)
    await manager.search_memory("Berlin")
    report = await manager.consolidate_memories(similarity_threshold=0.9)
    assert report["consolidated_count"] == 2
    assert len(report["merged_ids"]) == 1 and len(report["groups"]) == 1
    merged_id = report["merged_ids"][0]
    assert set(report["groups"][0]["merged_from"]) == {a.id, b.id}
    merged = await manager.get_memory(merged_id)
    assert merged is not None
    assert merged.importance == 0.7 and set(merged.tags) == {"home", "city"}
    assert merged.tier is MemoryTier.LONG and merged.access_count == 2 and merged.source == "consolidation"
    assert [m.id for m in await manager.search_memory("Berlin")] == [merged_id]
    original = await manager.get_memory(a.id)
    assert original is not None and original.superseded_by == merged_id
    assert (await manager.get_memory(other.id)) is not None

    undone = await manager.undo_consolidation(merged_id)
    assert set(undone["restored"]) == {a.id, b.id}
    assert {m.id for m in await manager.search_memory("Berlin")} == {a.id, b.id}

    again = await manager.consolidate_memories(similarity_threshold=0.9)
    cleanup = await manager.cleanup_old_memories(max_age_days=365)
    assert cleanup["superseded_removed"] == 2 and set(cleanup["removed_ids"]) == {a.id, b.id}
    assert [m.id for m in await manager.search_memory("Berlin")] == again["merged_ids"]


async def test_cleanup_reports_by_tier(manager: MemoryManager, clock: FakeClock) -> None:
    old_short = await manager.add_memory("old short")
    old_medium = await manager.add_memory("old medium", tier="medium")
    old_long = await manager.add_memory("old long", tier="long")
    old_important = await manager.add_memory("old but vital", importance=0.95, tier="long")
    clock.advance(40 * DAY)
    fresh = await manager.add_memory("fresh")
    report = await manager.cleanup_old_memories(max_age_days=30, keep_importance=0.9)
    assert report["by_tier"] == {"short": 1, "medium": 1, "long": 1}
    assert report["removed_count"] == 3
    assert set(report["removed_ids"]) == {old_short.id, old_medium.id, old_long.id}
    assert await manager.get_memory(fresh.id) is not None
    assert await manager.get_memory(old_important.id) is not None


async def test_stats(manager: MemoryManager) -> None:
    await manager.add_memory("one", importance=0.2)
    await manager.add_memory("two", importance=0.8)
    await manager.add_memory("three", importance=0.5, user_id="alice")
    stats = await manager.get_memory_stats()
    assert stats["total_memories"] == 2
    assert stats["by_tier"] == {"short": 2, "medium": 0, "long": 1}
    assert stats["mean_importance"] == pytest.approx(0.5)
    assert stats["bytes_on_disk"]["total"] > 0
    assert stats["oldest"] <= stats["newest"]
    assert "by_user" not in stats
    everyone = await manager.get_memory_stats(user_id=ALL_USERS)
    assert everyone["by_user"] == {"": 2, "alice": 1}
    assert (await manager.get_memory_stats(user_id="alice"))["total_memories"] == 1


@pytest.mark.parametrize(
    "user_id",
    ["", " ", "   ", "\t", "\n", "\u3000", "ana\n", "tab\there", "bell\x07", "red\x1b[31m", "del\x7f"]
    + ["nel\x85"],
)
async def test_a_blank_or_control_character_user_id_is_refused(manager: MemoryManager, user_id: str) -> None:
    """A whitespace-only user id (or one with a newline, an escape sequence...) was a namespace of its own:
    memories stored under ``" "`` that ``by_user`` listed as a blank owner and a CLI line broke apart."""
    from context_manager.core.messages import Message

    kept = await manager.add_memory("the spare key is under the blue pot", user_id="ana")
    before = await snapshot(manager)
    allowed = (
        "user_id: got .*; allowed a non-empty string of at most 256 characters, not only whitespace, "
        "without control characters"
    )
    with pytest.raises(InvalidMemoryError, match=allowed):
        await manager.add_memory("a memory of nobody", user_id=user_id)
    with pytest.raises(InvalidMemoryError, match=allowed):
        await manager.search_memory("spare key", user_id=user_id)
    with pytest.raises(InvalidMemoryError, match=allowed):
        await manager.get_memory_stats(user_id=user_id)
    with pytest.raises(InvalidMemoryError, match=allowed):
        await manager.remember_messages([Message.create("user", "an evicted line")], user_id=user_id)
    assert await snapshot(manager) == before
    assert [m.id for m in await manager.search_memory("spare key", user_id="ana")] == [kept.id]


@pytest.mark.parametrize(
    "user_id",
    ["ana", "Ana Lima", " ana ", "José", "用户", "\u00a0ana", "ک\u200cک"]
    + ["\U0001f468\u200d\U0001f469\u200d\U0001f467"],  # a family: three emoji joined by zero-width joiners
)
async def test_user_ids_with_spaces_accents_emoji_or_joiners_are_kept(
    manager: MemoryManager, user_id: str
) -> None:
    """Only blank ids and control characters are refused: a no-break space or a zero-width joiner (emoji
    sequences, Persian) is part of a name."""
    stored = await manager.add_memory("the spare key is under the blue pot", user_id=user_id)
    assert [m.id for m in await manager.search_memory("spare key", user_id=user_id)] == [stored.id]
    assert await manager.search_memory("spare key") == []
    assert (await manager.get_memory_stats(user_id=ALL_USERS))["by_user"] == {user_id: 1}


async def test_a_user_named_default_is_not_the_default_namespace(manager: MemoryManager) -> None:
    """A user whose id is ``"default"`` was counted with the default namespace in ``by_user``."""
    await manager.add_memory("the shared wifi password is tulip", importance=0.9, tier="long")
    await manager.add_memory("the shared printer is on floor two")
    named = await manager.add_memory("my wifi password is orchid", user_id="default")
    found = await manager.search_memory("wifi password", user_id="default")
    assert [memory.id for memory in found] == [named.id]  # never the default namespace's
    assert "orchid" not in " ".join(m.content for m in await manager.search_memory("wifi password"))
    everyone = await manager.get_memory_stats(user_id=ALL_USERS)
    assert everyone["by_user"] == {"": 2, "default": 1}  # "": the default namespace (no user id is empty)
    assert (await manager.get_memory_stats(user_id="default"))["total_memories"] == 1
    assert (await manager.get_memory_stats())["total_memories"] == 2


async def test_export_import_round_trip(
    manager: MemoryManager,
    tmp_path: Path,
    config: ContextManagerConfig,
    other_storage: Callable[[ContextManagerConfig], ContextManagerConfig],
) -> None:
    for i in range(25):
        await manager.add_memory(f"exported memory {i}", importance=i / 25, tags=[f"t{i % 3}"])
    await manager.flush()  # the overflow moves run in the background: let the tiers settle first
    path = tmp_path / "export.jsonl"
    assert await manager.export_memories(path) == 25
    lines = path.read_text().splitlines()
    assert len(lines) == 25 and json.loads(lines[0])["content"].startswith("exported")

    source_stats = await manager.get_memory_stats()
    async with MemoryManager(other_storage(config)) as other:
        report = await other.import_memories(path)
        assert report["imported"] == 25 and report["replaced"] == 0
        assert report["by_tier"] == source_stats["by_tier"]  # copies: the important ones count twice
        assert len(await other.search_memory("exported", limit=100)) == 25
        again = await other.import_memories(path)
        assert again["replaced"] == 25
        stats = await other.get_memory_stats()
        assert stats["total_memories"] == 25 and stats["by_tier"] == source_stats["by_tier"]


async def _tiers_by_id(manager: MemoryManager) -> dict[str, set[str]]:
    tiers: dict[str, set[str]] = {}
    for copy in await manager.stored_copies():
        tiers.setdefault(copy.id, set()).add(copy.tier.value)
    return tiers


async def test_export_then_import_restores_every_memorys_tiers(
    manager: MemoryManager,
    tmp_path: Path,
    config: ContextManagerConfig,
    other_storage: Callable[[ContextManagerConfig], ContextManagerConfig],
) -> None:
    """Issue 15.4: an important memory (short-term + long-term copy) came back short-term only."""
    important = await manager.add_memory("the deploy freeze starts on Friday", importance=0.9)
    plain = await manager.add_memory("lunch is at noon", importance=0.3)
    medium = await manager.add_memory("an older note", tier="medium")
    durable = await manager.add_memory("a durable fact", tier="long")
    before = await _tiers_by_id(manager)
    assert before[important.id] == {"short", "long"}  # the premise
    stats = await manager.get_memory_stats()
    assert (stats["total_memories"], stats["by_tier"]) == (4, {"short": 2, "medium": 1, "long": 2})
    path = tmp_path / "export.jsonl"
    assert await manager.export_memories(path) == 4
    exported = {record["id"]: record for record in map(json.loads, path.read_text().splitlines())}
    assert exported[important.id]["tier"] == "short" and exported[important.id]["tiers"] == ["short", "long"]
    async with MemoryManager(other_storage(config)) as other:
        report = await other.import_memories(path)
        assert report["by_tier"] == {"short": 2, "medium": 1, "long": 2}
        assert await _tiers_by_id(other) == before
        restored = await other.get_memory_stats()
        assert restored["by_tier"] == stats["by_tier"] and restored["in_two_tiers"] == 1
        # and the long-term copy is the durable copy the short-term overflow relies on
        assert {plain.id, medium.id, durable.id} <= set(before)


async def test_import_of_an_older_export_places_memories_as_add_memory_would(
    manager: MemoryManager, tmp_path: Path
) -> None:
    """Lines without ``tiers``: an important short-term memory gets its long-term copy back."""
    lines = [
        {"id": "important", "content": "the alarm code changed", "importance": 0.9, "tier": "short"},
        {"id": "plain", "content": "lunch is at noon", "importance": 0.3, "tier": "short"},
        {"id": "old", "content": "an older note", "importance": 0.9, "tier": "medium"},
    ]
    path = tmp_path / "old-export.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    await manager.import_memories(path)
    assert await _tiers_by_id(manager) == {
        "important": {"short", "long"},
        "plain": {"short"},
        "old": {"medium"},
    }


async def test_import_refuses_bad_tiers(manager: MemoryManager, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "content": "text", "tiers": ["short", "attic"]}) + "\n")
    with pytest.raises(InvalidMemoryError, match="bad.jsonl:1"):
        await manager.import_memories(path)
    assert await manager.stored_copies() == []


async def test_import_over_capacity_keeps_the_long_term_copy_instead_of_moving_down(
    manager: MemoryManager, tmp_path: Path, config: ContextManagerConfig
) -> None:
    """A short-term memory that does not fit, but has a long-term copy, just keeps that copy."""
    capacity = config.short_term_memory_size
    lines = [
        {
            "id": f"m{number}",
            "content": f"important fact {number}",
            "importance": 0.9,
            "tiers": ["short", "long"],
        }
        for number in range(capacity + 5)
    ]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = await manager.import_memories(path)
    assert report["by_tier"] == {"short": capacity, "medium": 0, "long": capacity + 5}
    tiers = await _tiers_by_id(manager)
    assert sorted(len(value) for value in tiers.values()).count(1) == 5  # long-term only
    assert all("long" in value and "medium" not in value for value in tiers.values())


async def test_stats_say_how_many_memories_are_counted_in_two_tiers(manager: MemoryManager) -> None:
    await manager.add_memory("important one", importance=0.95)
    await manager.add_memory("plain one", importance=0.2)
    await manager.add_memory("important two", importance=0.8)
    stats = await manager.get_memory_stats()
    assert stats["total_memories"] == 3 and stats["by_tier"] == {"short": 3, "medium": 0, "long": 2}
    assert stats["stored_copies"] == 5 and stats["in_two_tiers"] == 2


async def test_import_with_a_bad_line_imports_nothing(manager: MemoryManager, tmp_path: Path) -> None:
    await manager.add_memory("keep me")
    path = tmp_path / "bad.jsonl"
    good = {"id": "g", "content": "good", "importance": 0.5}
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({"id": "b", "content": "bad", "importance": 7}) + "\n"
    )
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match="bad.jsonl:2"):
        await manager.import_memories(path)
    assert await snapshot(manager) == before


@pytest.mark.parametrize(
    "change",
    [
        {"source": "\ud800"},  # valid JSON ("\\ud800"), not storable text: failed at the write, after the
        {"id": "a\x00b"},  # replaced memory's copies were deleted, so the import lost it
        {"id": "x" * 201},
        {"context": "turn \x00 before"},
        {"superseded_by": "\udfff"},
        {"merged_from": ["fine", "bad\x00"]},
        {"importance": True},
        {"importance": "0.7"},
    ],
)
async def test_import_refuses_unstorable_fields_and_changes_nothing(
    manager: MemoryManager, tmp_path: Path, change: dict[str, Any]
) -> None:
    kept = await manager.add_memory("keep me", importance=0.9)
    path = tmp_path / "restore.jsonl"
    path.write_text(json.dumps({**kept.to_dict(), "content": "replaced", **change}) + "\n")
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match="restore.jsonl:1"):
        await manager.import_memories(path)
    assert await snapshot(manager) == before


async def _refused_import(
    manager: MemoryManager, tmp_path: Path, records: list[dict[str, Any] | str], match: str
) -> None:
    """Import ``records`` after a kept memory; the import must raise matching ``match`` and change nothing."""
    await manager.add_memory("keep me", importance=0.9)
    path = tmp_path / "restore.jsonl"
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match=match):
        await manager.import_memories(path)
    assert await snapshot(manager) == before


@pytest.mark.parametrize(
    ("records", "match"),
    [
        (
            [{"id": "a", "content": "fine"}, {"id": "m", "content": "merged", "superseded_by": "m"}],
            r"restore\.jsonl:2: .*superseded_by: got 'm'; allowed null or the id of another memory.*"
            "cannot supersede itself",
        ),
        (
            [{"id": "m", "content": "merged", "merged_from": ["a", "m"]}],
            r"restore\.jsonl:1: .*merged_from: got \['a', 'm'\]; allowed the ids of other memories",
        ),
        (
            [
                {"id": "a", "content": "one", "superseded_by": "b"},
                {"id": "b", "content": "two", "superseded_by": "c"},
                {"id": "c", "content": "three", "superseded_by": "a"},
                {"id": "d", "content": "four", "superseded_by": "a"},
            ],
            r"restore\.jsonl:1: .*superseded_by: memories superseded by one another in a ring "
            r"\('a' -> 'b' -> 'c' -> 'a'\)",
        ),
    ],
    ids=["superseded by itself", "merged from itself", "a ring"],
)
async def test_import_refuses_a_memory_superseding_itself_and_changes_nothing(
    manager: MemoryManager, tmp_path: Path, records: list[dict[str, Any] | str], match: str
) -> None:
    """Imported as is, such a memory was hidden from search for good and no undo could restore it."""
    await _refused_import(manager, tmp_path, records, match)


async def test_import_refuses_one_id_on_two_lines_naming_both(manager: MemoryManager, tmp_path: Path) -> None:
    """The later line replaced the earlier one without a word (the report said 1 imported): one of the two
    versions was lost silently. Which one is right only the user can tell: refused, both lines named."""
    records: list[dict[str, Any] | str] = [
        {"id": "a", "content": "the first version"},
        {"id": "b", "content": "another memory"},
        {"id": "a", "content": "the second version"},
    ]
    match = r"restore\.jsonl:3: .*id 'a' is on .*restore\.jsonl:1 too; each memory once"
    await _refused_import(manager, tmp_path, records, match)


async def test_import_takes_a_consolidated_memory_and_its_originals(
    manager: MemoryManager, tmp_path: Path
) -> None:
    records = [
        {"id": "a", "content": "the wifi password changes", "superseded_by": "m"},
        {"id": "b", "content": "the wifi password changes weekly", "superseded_by": "m"},
        {"id": "m", "content": "the wifi password changes every week", "merged_from": ["a", "b"]},
    ]
    path = tmp_path / "consolidated.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    assert (await manager.import_memories(path))["imported"] == 3
    assert [m.id for m in await manager.search_memory("wifi password")] == ["m"]
    undone = await manager.undo_consolidation("m")
    assert sorted(undone["restored"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"id": "t", "content": "x", "created_at": 1e20}', "created_at: got 1e\\+20"),
        ('{"id": "t", "content": "x", "created_at": -1e17}', "created_at: got -1e\\+17"),
        ('{"id": "t", "content": "x", "created_at": "2024-05-01"}', "created_at: got '2024-05-01'"),
        ('{"id": "t", "content": "x", "created_at": true}', "created_at: got True"),
        ('{"id": "t", "content": "x", "last_accessed": 253402300800}', "last_accessed: got 253402300800"),
    ],
)
async def test_import_refuses_times_outside_the_years_1_to_9999(
    manager: MemoryManager, tmp_path: Path, line: str, match: str
) -> None:
    """A created_at of 1e20 was imported, and every search naming a month then failed (year out of range)."""
    allowed = "seconds since the epoch, a number from -62135596800 \\(year 1\\) to 253402300799"
    await _refused_import(manager, tmp_path, [line], f"restore\\.jsonl:1: .*{match}; allowed {allowed}")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_import_refuses_a_time_that_is_not_a_finite_number(
    manager: MemoryManager, tmp_path: Path, constant: str
) -> None:
    """NaN and the infinities are not JSON: the line is refused as it is read, naming the line and the
    constant (before, a time holding one was refused as out of range, and one in another field not at all)."""
    line = f'{{"id": "t", "content": "x", "created_at": {constant}}}'
    await _refused_import(
        manager,
        tmp_path,
        [line],
        f"restore\\.jsonl:1: .*{constant} is not a JSON number; allowed finite numbers",
    )


async def test_import_takes_every_time_from_year_1_to_9999_and_search_names_months(
    manager: MemoryManager, tmp_path: Path
) -> None:
    times = {"first": -62135596800, "before-1970": -5.5, "may-2023": 1684000000.0, "last": 253402300799}
    path = tmp_path / "times.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": name, "content": f"trip notes {name}", "created_at": at, "last_accessed": at})
            + "\n"
            for name, at in times.items()
        ),
        encoding="utf-8",
    )
    assert (await manager.import_memories(path))["imported"] == 4
    found = await manager.search_memory("trip notes from May 2023", limit=10)
    assert {m.id for m in found} == set(times)
    assert {m.id: m.created_at for m in found} == times


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"metadata": []}, "metadata: got \\[\\]; allowed a JSON object"),
        ({"metadata": False}, "metadata: got False; allowed a JSON object"),
        ({"metadata": "notes"}, "metadata: got 'notes'; allowed a JSON object"),
        ({"source": 5}, "source: got 5; allowed a non-empty string"),
        ({"source": None}, "source: got None; allowed a non-empty string"),
        ({"context": ["previous turn"]}, "context: got \\['previous turn'\\]; allowed a string"),
        ({"tier": "attic"}, "tier: got 'attic'; allowed one of 'short', 'medium', 'long'"),
        ({"tags": "work"}, "tags: got 'work'; allowed a list of strings"),
        ({"importance": 1.5}, "importance: got 1.5; allowed a number from 0 to 1"),
        ({"user_id": "   "}, "user_id: got '   '; allowed a non-empty string .*not only whitespace"),
        ({"user_id": "ana\n"}, "user_id: got 'ana\\\\n'; allowed .*without control characters"),
    ],
)
async def test_import_refuses_fields_of_the_wrong_kind_naming_them(
    manager: MemoryManager, tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    """Metadata ``[]``/``false`` became ``{}``, a number source or context its text, a blank user id an
    owner no call could name; an unknown tier was reported as just ``(attic)``."""
    record = {"id": "r", "content": "an imported memory", **change}
    await _refused_import(manager, tmp_path, [record], f"restore\\.jsonl:1: .*\\({match}")


async def test_export_and_import_keep_every_line_separator_in_the_text(
    manager: MemoryManager,
    tmp_path: Path,
    config: ContextManagerConfig,
    other_storage: Callable[[ContextManagerConfig], ContextManagerConfig],
) -> None:
    # str.splitlines() also breaks at these; JSON strings hold them as they are (U+0085, U+2028...)
    texts = [f"before{separator}after {i}" for i, separator in enumerate("\x85\u2028\u2029\x0b\x0c\x1c\r")]
    for text in texts:
        await manager.add_memory(text, tags=["sep\u2028tag"])
    path = tmp_path / "export.jsonl"
    assert await manager.export_memories(path) == len(texts)
    async with MemoryManager(other_storage(config)) as other:
        assert (await other.import_memories(path))["imported"] == len(texts)
        assert sorted(copy.content for copy in await other.stored_copies()) == sorted(texts)


async def test_export_refuses_the_storage_directory_and_leaves_no_temporary_file(
    sqlite_manager: MemoryManager, tmp_path: Path
) -> None:
    manager = sqlite_manager
    await manager.add_memory("a memory in the journal")
    journal = manager.storage_path / "memories.jsonl"
    before = journal.read_bytes()
    for inside in (journal, manager.storage_path / "backup.jsonl", manager.storage_path):
        with pytest.raises(InvalidMemoryError, match="path: .*outside the memory storage directory"):
            await manager.export_memories(inside)
    assert journal.read_bytes() == before and not (manager.storage_path / "backup.jsonl").exists()
    # a failed export (the target is a directory) leaves no copy of the memories behind
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(StorageError, match="cannot export memories"):
        await manager.export_memories(folder)
    assert not (tmp_path / "folder.tmp").exists()


async def test_maintenance(manager: MemoryManager) -> None:
    for i in range(40):
        memory = await manager.add_memory(f"maintenance {i}", importance=0.8)
        await manager.update_memory(memory.id, content=f"maintenance edited {i}")
    report = await manager.optimize()
    assert set(report) >= {"database_bytes_before", "database_bytes_after", "duration_ms"}
    integrity = await manager.check_integrity()
    assert integrity["ok"] is True
    assert integrity["mode"] == "full"
    assert manager.backend is not None
    if manager.backend.kind == "sqlite":  # the journal is compacted; SQLite and every FTS5 index checked
        assert report["log_bytes_after"] < report["log_bytes_before"]
        assert integrity["sqlite"] == "ok" and integrity["fts"] == "ok"
    else:  # the server answers and the schema is there
        assert integrity["postgres"] == "ok"
    counts = await manager.rebuild_index()
    assert sum(counts.values()) >= 40
    assert len(await manager.search_memory("edited", limit=100)) == 40


async def test_conversation_turns_use_neighbours_and_speakers(manager: MemoryManager) -> None:
    turns = [
        ("Caroline", "What should I cook for the party on Saturday?"),
        ("Melanie", "Lasagna, definitely. Everyone loves it."),
        ("Caroline", "I went hiking yesterday."),
        ("user", "My favourite colour is teal."),
    ]
    ids = []
    for index, (speaker, text) in enumerate(turns):
        memory = await manager.add_memory(
            text,
            metadata={
                "session_id": "s1",
                "turn_index": index,
                "speaker": speaker,
                "session_date": "2023-05-08",
            },
        )
        ids.append(memory.id)
    # the answer (turn 1) follows the turn that named the topic: it is found through neighbour context
    results = await manager.search_memory("what to cook for the party", limit=3)
    assert ids[1] in [m.id for m in results[:2]]
    stored = await manager.get_memory(ids[1])
    assert stored is not None and stored.context.startswith("What should I cook")
    results = await manager.search_memory("what is my favourite colour")
    assert results[0].id == ids[3]


async def test_vector_channel_finds_what_words_miss(config: ContextManagerConfig) -> None:
    embedder = HashingEmbedder(dimension=256)
    async with MemoryManager(config, embedder=embedder) as manager:
        target = await manager.add_memory("I moved to Berlin last spring")
        await manager.add_memory("The weather is nice")
        results = await manager.search_memory("movd berlinn")  # misspelt: no token in common
        assert results and results[0].id == target.id
    async with MemoryManager(config, embedder=embedder, ranking=RankingWeights(vector=0.0)) as lexical_only:
        assert [m.id for m in await lexical_only.search_memory("movd berlinn")] == []
    async with MemoryManager(config, embedder=embedder) as reopened:  # vectors persisted
        assert (await reopened.get_memory_stats())["index"]["vectors"] == 2


async def test_scores_compare_across_tiers_of_different_sizes(manager: MemoryManager) -> None:
    # a two-memory long-term tier: FTS5 alone would weigh its words at ~0 (each in half its rows)
    exact = await manager.add_memory("axolotl facts stored for the long haul", tier="long")
    await manager.add_memory("unrelated archive entry", tier="long")
    # a larger short-term tier where "river" is rare, so FTS5 weighs it more there than any long-term word
    await manager.add_memory("ocelot sighting near the river")
    for number in range(6):
        await manager.add_memory(f"short note {number} about weather")
    results = await manager.search_memory("axolotl facts stored by the river for the long haul", limit=3)
    assert results[0].id == exact.id
    assert results[0].score > 2 * results[1].score
    only_long = await manager.search_memory("axolotl", tiers=["long"])
    assert [m.id for m in only_long] == [exact.id]


async def test_the_quick_check_runs_while_a_write_holds_the_lock(sqlite_manager: MemoryManager) -> None:
    """Issue 18.10: the periodic health check ran the full integrity_check under the memory write lock
    (about 1 s at 200k memories, every 60 s). The quick check takes no write lock: it completes while a
    writer holds it, and writes never wait for it."""
    manager = sqlite_manager
    for number in range(50):
        await manager.add_memory(f"invoice {number} paid", importance=0.9)
    async with manager._write_lock:  # a write in progress (e.g. a long consolidation)
        quick = await asyncio.wait_for(manager.check_integrity(quick=True), 5.0)
    assert quick == {
        "sqlite": "ok",
        "fts": "ok",
        "short_index": "ok",
        "medium_index": "ok",
        "ok": True,
        "mode": "quick",
    }


async def test_memory_stats_report_the_index_state_that_was_measured(
    sqlite_manager: MemoryManager, storage: Path
) -> None:
    """Issue 18.11: get_memory_stats() always said the index was "ok", damaged or not (the damage is
    done to the SQLite file; PostgreSQL's own check is in test_postgres.py)."""
    manager = sqlite_manager
    for number in range(30):
        await manager.add_memory(f"invoice {number} for the spring payment run", importance=0.9)
    index = (await manager.get_memory_stats())["index"]
    assert (index["status"], index["check"], index["checked_at"]) == ("unchecked", None, None)
    await manager.check_integrity(quick=True)
    index = (await manager.get_memory_stats())["index"]
    assert (index["status"], index["check"], index["problems"]) == ("ok", "quick", {})
    assert index["checked_at"] is not None

    def damage() -> None:
        with sqlite3.connect(storage / "memories.sqlite3") as connection:
            connection.execute("DELETE FROM memories_fts_data WHERE id > 1")

    await asyncio.to_thread(damage)
    await manager.check_integrity(quick=True)
    index = (await manager.get_memory_stats())["index"]
    assert index["status"] == "damaged" and "malformed" in index["problems"]["fts"]
    await manager.rebuild_index()
    index = (await manager.get_memory_stats())["index"]
    assert (index["status"], index["check"], index["problems"]) == ("ok", "rebuilt", {})
    assert (await manager.check_integrity())["ok"] and len(await manager.search_memory("invoice")) == 10


async def test_index_status_starts_unchecked_and_follows_the_checks(manager: MemoryManager) -> None:
    await manager.add_memory("a fact about the harbour", importance=0.9)
    assert (await manager.get_memory_stats())["index"]["status"] == "unchecked"
    await manager.check_integrity(quick=True)
    index = (await manager.get_memory_stats())["index"]
    assert (index["status"], index["check"], index["problems"]) == ("ok", "quick", {})
    await manager.check_integrity()
    assert (await manager.get_memory_stats())["index"]["check"] == "full"


async def test_an_add_with_an_id_is_idempotent(manager: MemoryManager) -> None:
    """Issue 15.3: a retried write (the first raised StorageError part-way) must not store the text twice."""
    first = await manager.add_memory("the boiler was serviced on 3 May", importance=0.9, memory_id="boiler-1")
    again = await manager.add_memory("the boiler was serviced on 3 May", importance=0.9, memory_id="boiler-1")
    assert first.id == again.id == "boiler-1"
    assert [m.id for m in await manager.search_memory("boiler serviced")] == ["boiler-1"]
    copies = [m for m in await manager.stored_copies() if m.id == "boiler-1"]
    assert sorted(m.tier.value for m in copies) == ["long", "short"]  # one memory (a short and a long copy)
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match="memory_id: got 'boiler-1'; allowed an id not used"):
        await manager.add_memory("something else entirely", memory_id="boiler-1")
    with pytest.raises(InvalidMemoryError, match="memory_id"):
        await manager.add_memory("same text, other owner", memory_id="boiler-1", user_id="eve")
    with pytest.raises(InvalidMemoryError, match="memory_id"):
        await manager.add_memory("bad id", memory_id="")
    assert await snapshot(manager) == before


async def test_add_memories_with_ids_keeps_order_and_skips_what_is_stored(manager: MemoryManager) -> None:
    await manager.add_memory("alpha note", memory_id="a")
    written = await manager.add_memories(
        [
            {"content": "beta note", "memory_id": "b"},
            {"content": "alpha note", "memory_id": "a"},
            {"content": "gamma note"},
        ]
    )
    assert [m.id for m in written[:2]] == ["b", "a"] and written[2].content == "gamma note"
    assert (await manager.get_memory_stats())["total_memories"] == 3
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match="differ within one call"):
        await manager.add_memories([{"content": "x", "memory_id": "z"}, {"content": "y", "memory_id": "z"}])
    with pytest.raises(InvalidMemoryError, match="memory_id"):  # one bad item: nothing is stored
        await manager.add_memories(
            [{"content": "delta", "memory_id": "d"}, {"content": "not beta", "memory_id": "b"}]
        )
    assert await snapshot(manager) == before


async def test_remembering_the_same_messages_twice_stores_them_once(manager: MemoryManager) -> None:
    from context_manager.core.messages import Message

    messages = [Message.create("user", f"evicted line {number} about kites") for number in range(5)]
    first = await manager.remember_messages(messages, session_id="conv", id_namespace="conv")
    second = await manager.remember_messages(messages, session_id="conv", id_namespace="conv")
    assert [m.id for m in first] == [m.id for m in second]
    assert (await manager.get_memory_stats())["total_memories"] == 5
    found = await manager.search_memory("kites", limit=20)
    assert len(found) == 5


async def test_a_message_archived_and_edited_since_is_not_a_conflict_when_archived_again(
    manager: MemoryManager,
) -> None:
    """A resumed conversation may hand memory messages it already archived (after a crash before the
    indexing mark moved); one edited since with update_memory is that message, not another memory: the
    batch is stored and the edit kept (it once raised InvalidMemoryError and blocked the whole batch)."""
    from context_manager.core.messages import Message

    messages = [Message.create("user", f"note {number} about the harbour crane") for number in range(4)]
    first = await manager.remember_messages(messages[:2], session_id="conv", id_namespace="conv")
    await manager.update_memory(first[0].id, content="note 0 was wrong: see the log")
    again = await manager.remember_messages(messages, session_id="conv", id_namespace="conv")
    assert [m.id for m in again[:2]] == [m.id for m in first]
    edited = await manager.get_memory(first[0].id)
    assert edited is not None and edited.content == "note 0 was wrong: see the log"
    found = {m.content for m in await manager.search_memory("harbour crane", limit=20)}
    assert {f"note {number} about the harbour crane" for number in (1, 2, 3)} <= found
    assert (await manager.get_memory_stats())["total_memories"] == 4
    # an id given by a caller is still checked: other content under a used id is refused
    with pytest.raises(InvalidMemoryError, match="memory_id"):
        await manager.add_memory("something else", memory_id=first[1].id)


async def test_tool_calls_of_an_archived_message_are_in_its_memory(manager: MemoryManager) -> None:
    """An assistant message that only calls tools has no text but is not empty: its calls are archived."""
    from context_manager.core.messages import Message, ToolCall

    call = ToolCall(id="c1", name="lookup_order", arguments={"order": "1042-ZETA"})
    messages = [
        Message.create("user", "where is my order?"),
        Message.create("assistant", "", tool_calls=[call]),
        Message.create("tool", "shipped on Monday", tool_call_id="c1"),
        Message.create("assistant", "Let me check both.", tool_calls=[ToolCall(id="c2", name="track")]),
        Message.create("assistant", "   "),
    ]
    written = await manager.remember_messages(messages, session_id="s")
    assert [m.metadata["message_id"] for m in written] == [
        m.id for m in messages[:4]
    ]  # the blank one skipped
    call_only = written[1]
    assert call_only.content == '[tool call lookup_order] {"order":"1042-ZETA"}'
    assert call_only.metadata["tool_calls"] == [{"id": "c1", "name": "lookup_order"}]
    assert written[2].metadata["tool_call_id"] == "c1"
    assert written[3].content == "Let me check both.\n[tool call track] {}"
    found = await manager.search_memory("1042-ZETA lookup_order")
    assert [m.id for m in found][:1] == [call_only.id]


async def test_an_undo_whose_originals_were_cleaned_up_is_refused_and_changes_nothing(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """A cleanup removes superseded originals; undoing the merge afterwards once deleted the merged memory
    too and reported success (every copy of the text gone). Now it is refused, the merged memory kept."""
    a = await manager.add_memory("The user lives in Berlin, Germany", importance=0.4)
    b = await manager.add_memory("the user lives in Berlin Germany!", importance=0.6)
    report = await manager.consolidate_memories(similarity_threshold=0.9)
    merged_id = report["merged_ids"][0]
    removed = await manager.cleanup_old_memories(max_age_days=365)
    assert set(removed["removed_ids"]) == {a.id, b.id}
    before = await snapshot(manager)
    with pytest.raises(InvalidMemoryError, match="no longer are") as raised:
        await manager.undo_consolidation(merged_id)
    assert a.id in str(raised.value) and b.id in str(raised.value)
    assert await snapshot(manager) == before
    assert [m.id for m in await manager.search_memory("Berlin")] == [merged_id]

    # one original deleted by hand: refused too, the other original stays superseded
    c = await manager.add_memory("the office wifi is called harbour-5", importance=0.5)
    d = await manager.add_memory("The office wifi is called harbour-5.", importance=0.5)
    merged_again = (await manager.consolidate_memories(similarity_threshold=0.9))["merged_ids"][0]
    await manager.delete_memory(c.id)
    with pytest.raises(InvalidMemoryError, match=c.id):
        await manager.undo_consolidation(merged_again)
    left = await manager.get_memory(d.id)
    assert left is not None and left.superseded_by == merged_again
    assert await manager.get_memory(merged_again) is not None


async def test_cleanup_keeps_what_was_used_or_restored_after_its_scan(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """The cleanup decides from a scan, then deletes: a copy that is no longer stale by then (restored by
    an undone consolidation, used, made important) stays. Forced here by acting right after the scan."""
    old = await manager.add_memory("an old note about the ferry timetable", importance=0.3)
    used = await manager.add_memory("an old note about the tram pass", importance=0.3)
    clock.advance(40 * DAY)
    a = await manager.add_memory("the spare key is under the red pot", importance=0.4)
    b = await manager.add_memory("The spare key is under the red pot.", importance=0.4)
    merged_id = (await manager.consolidate_memories(similarity_threshold=0.9))["merged_ids"][0]
    backend = manager.backend
    scan = backend.scan

    async def scan_then_change(*args: Any, **kwargs: Any) -> Any:
        found = await scan(*args, **kwargs)
        backend.scan = scan  # type: ignore[method-assign]  # once
        # what another process sharing the storage may do between the cleanup's scan and its deletes (its
        # backend's steps: this manager's write lock is held by the cleanup)
        await backend.unmerge(merged_id, [a.id, b.id])
        await backend.update([used.id], {"importance": 0.95})
        return found

    backend.scan = scan_then_change  # type: ignore[method-assign]
    try:
        report = await manager.cleanup_old_memories(max_age_days=30, keep_importance=0.9)
    finally:
        backend.scan = scan  # type: ignore[method-assign]
    assert old.id in report["removed_ids"]
    assert used.id not in report["removed_ids"] and await manager.get_memory(used.id) is not None
    for original in (a, b):
        restored = await manager.get_memory(original.id)
        assert restored is not None and restored.superseded_by is None, "a restored original was deleted"


@pytest.mark.parametrize("timestamp", [1e20, -1e12, float("nan"), "yesterday"])
async def test_remember_messages_refuses_a_message_no_date_can_be_given(
    manager: MemoryManager, timestamp: object
) -> None:
    """``remember_messages`` dates each message (its ``session_date``): a timestamp of 1e20 raised a bare
    OverflowError (NaN a ValueError) after the messages before it in the batch were written."""
    from context_manager.core.messages import Message, Role

    good = [Message.create("user", f"a fine message number {n}") for n in range(3)]
    bad = Message(role=Role.USER, content="a badly dated message", timestamp=timestamp)  # type: ignore[arg-type]
    with pytest.raises(InvalidMemoryError, match="timestamp"):
        await manager.remember_messages([*good, bad])
    assert await manager.search_memory("fine message number") == []  # nothing written


async def test_an_important_add_cancelled_part_way_keeps_its_long_term_copy(
    config: ContextManagerConfig, backend_name: str
) -> None:
    """Cancelled between its short-term row and its long-term copy (an MCP client's cancel, a timeout), an
    important memory stayed in short-term only, for good. A cancelled add is stored whole or not at all."""
    async with MemoryManager(config) as memory:
        for attempt in range(16):
            add = asyncio.ensure_future(
                memory.add_memory(f"ferry fact {attempt}: it leaves at nine", importance=0.9)
            )
            for _ in range(attempt % 8):
                await asyncio.sleep(0)
            add.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await add
    async with MemoryManager(config) as memory:
        assert memory.backend is not None
        fast = await memory.backend.count(MemoryTier.SHORT) + await memory.backend.count(MemoryTier.MEDIUM)
        assert fast == await memory.backend.count(MemoryTier.LONG)
        if backend_name == "sqlite":  # most adds got to their first write before the cancel
            assert fast > 0
