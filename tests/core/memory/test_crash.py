"""Crash test (invariant 6): a real subprocess adds memories and prints each acknowledged id; the test
kills it with SIGKILL at random moments, then checks every acknowledged id is present and the store
opens cleanly. 24 rounds by default; ``CM_FULL_RUN=1`` runs 100."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy
import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.testing import HashingEmbedder

ROUNDS = 100 if os.environ.get("CM_FULL_RUN") == "1" else 24

# What every script below starts with: its imports, and for the full-disk tests the store's settings, the
# memories that make one file of the store the next to be refused, and the full disk itself.
PREAMBLE = """
import asyncio, contextlib, json, os, random, resource, signal, sys
from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageError
from context_manager.core.memory.manager import MemoryManager

def settings(path, medium=5000):
    return ContextManagerConfig(storage_path=path, embedder="none", medium_term_memory_size=medium)

async def fill(manager, full="log"):
    if full == "database":  # a database WAL far larger than the log: the next database write fails
        await manager.add_memories(
            [{"content": f"archive {n} " + "ledger entry " * 150, "tier": "long"} for n in range(200)]
        )
    else:  # a log far larger than the database's WAL: the next log write fails
        await manager.add_memories(
            [{"content": f"filler {n} " + "padding " * 60, "tier": "medium"} for n in range(400)]
        )

@contextlib.contextmanager
def disk_full(path, name, room=0, crash=False):
    # writes past the size of the store's file `name` (plus `room` bytes) fail (EFBIG: a full disk; Python
    # ignores SIGXFSZ), or with crash=True the signal's default action kills the process at that very write
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL if crash else signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, ((Path(path) / name).stat().st_size + room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))

async def report(operation, done):
    # FAILED when the storage refused the operation, else `done`
    try:
        await operation
    except StorageError:
        print("FAILED", flush=True)
    else:
        print(done, flush=True)
"""


def run_script(script: str, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``script`` after :data:`PREAMBLE` in a fresh interpreter (call it in a thread: it blocks)."""
    return subprocess.run(
        [sys.executable, "-c", PREAMBLE + script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def settings(storage: Path) -> ContextManagerConfig:
    """The full-disk tests' store, as the preamble's ``settings(path)`` opens it."""
    return ContextManagerConfig(storage_path=storage, embedder="none", medium_term_memory_size=5000)


WRITER = """
async def main(path, seed):
    rng = random.Random(seed)
    config = ContextManagerConfig(storage_path=path, short_term_memory_size=10, medium_term_memory_size=20)
    async with MemoryManager(config) as manager:
        print("READY", flush=True)
        number = 0
        while True:
            number += 1
            tier = rng.choice([None, None, None, "medium", "long"])
            memory = await manager.add_memory(
                f"crash memory {seed} {number} " + "word " * rng.randint(0, 50),
                importance=rng.random(), tier=tier, tags=[f"t{number % 4}"],
            )
            print(memory.id, flush=True)
            if number % 7 == 0:
                await manager.search_memory(f"crash memory {number}")
            if number % 40 == 0:
                await manager.optimize()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def run_and_kill(storage: Path, seed: int, rng: random.Random) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", PREAMBLE + WRITER, str(storage), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.strip() == "READY", process.stderr.read() if process.stderr else first
    acknowledged: list[str] = []
    target = rng.randint(1, 150)
    while len(acknowledged) < target:
        line = process.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    time.sleep(rng.random() * 0.01)  # let the kill land at an arbitrary point of the next write
    process.send_signal(signal.SIGKILL)
    # ids printed before the kill are acknowledged too
    rest, _ = process.communicate(timeout=30)
    acknowledged.extend(line.strip() for line in rest.splitlines() if line.strip())
    assert process.returncode == -signal.SIGKILL
    return acknowledged


async def test_acknowledged_memories_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    storage = tmp_path / "storage"
    everything: list[str] = []
    for round_number in range(ROUNDS):
        acknowledged = await asyncio.to_thread(run_and_kill, storage, round_number, rng)
        assert acknowledged, f"round {round_number}: the writer acknowledged nothing"
        everything.extend(acknowledged)
        if round_number % 6 == 5 or round_number == ROUNDS - 1:
            config = ContextManagerConfig(
                storage_path=storage, short_term_memory_size=10, medium_term_memory_size=20
            )
            async with MemoryManager(config) as manager:
                integrity = await manager.check_integrity()
                assert integrity["ok"], integrity
                found = await manager._get_many(everything)
                missing = [memory_id for memory_id in everything if memory_id not in found]
                assert not missing, f"round {round_number}: {len(missing)} acknowledged memories lost"
                assert all(found[i].content.startswith("crash memory") for i in everything)


IMPORTER = """
async def main(path, source):
    config = ContextManagerConfig(storage_path=path, embedder="none", short_term_memory_size=300,
                                  medium_term_memory_size=600)
    async with MemoryManager(config) as manager:
        os.write(1, b"READY\\n")
        await manager.import_memories(source)
        os.write(1, b"DONE\\n")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_an_import_killed_midway_loses_none_of_the_memories_it_replaces(tmp_path: Path) -> None:
    # A restore: the store imports an export of itself in which every memory changed (its text, and for
    # many their tier). Killed anywhere, each memory is still there, as it was or as imported, and
    # importing again finishes the job.
    count = 3000
    rng = random.Random(7)
    for round_number in range(5):
        storage = tmp_path / f"storage{round_number}"
        export = tmp_path / f"export{round_number}.jsonl"
        config = ContextManagerConfig(
            storage_path=storage, embedder="none", short_term_memory_size=300, medium_term_memory_size=600
        )
        async with MemoryManager(config) as manager:
            await manager.add_memories(
                [{"content": f"old text {i}", "importance": 0.9 if i % 3 == 0 else 0.3} for i in range(count)]
            )
            await manager.flush()
            assert await manager.export_memories(export) == count
            ids = [memory.id for memory in await manager.stored_copies()]
        lines = []
        for line in export.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            record["content"] = record["content"].replace("old", "new")
            record["tiers"] = [rng.choice(["short", "medium", "long"])]  # most change tier
            lines.append(json.dumps(record))
        export.write_text("\n".join(lines) + "\n", encoding="utf-8")

        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PREAMBLE + IMPORTER,
            str(storage),
            str(export),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        assert await process.stdout.readline() == b"READY\n"
        await asyncio.sleep(0.02 + rng.random() * 0.25)
        process.send_signal(signal.SIGKILL)
        out, _ = await process.communicate()
        async with MemoryManager(config) as manager:
            found = await manager._get_many(ids)
            missing = set(ids) - set(found)
            assert not missing, f"round {round_number} ({out!r}): {len(missing)} memories lost"
            assert all(
                memory.content.split()[:2] in (["old", "text"], ["new", "text"]) for memory in found.values()
            )
            await manager.import_memories(export)  # the interrupted import, run again
            copies = await manager.stored_copies()
            assert sorted(copy.id for copy in copies) == sorted(set(ids))  # one copy each, nothing extra
            assert all(copy.content.startswith("new text") for copy in copies)


CONSOLIDATOR = """
async def main(path):
    async with MemoryManager(settings(path)) as manager:
        await fill(manager)  # a log far larger than what the merge commits to the database (its WAL)
        for text in ("The office wifi password changes every Monday",
                     "The office wifi password changes every Monday morning"):
            await manager.add_memory(text, tier="medium")
        with disk_full(path, "memories.jsonl"):
            await report(manager.consolidate_memories(similarity_threshold=0.8), "MERGED")

asyncio.run(main(sys.argv[1]))
"""


async def test_a_consolidation_cut_short_after_its_merged_memory_is_finished_on_open(tmp_path: Path) -> None:
    """The merged memory was committed to the database before the originals were marked in the log: a
    consolidation stopped in between (a crash, a full disk) left the text visible twice, as the merged
    memory and as its originals, for good. The store now finishes such a merge when it opens."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(run_script, CONSOLIDATOR, storage)
    assert result.stdout.strip() == "FAILED", result.stdout + result.stderr  # the marks could not be logged
    config = settings(storage)
    async with MemoryManager(config) as manager:
        found = await manager.search_memory("office wifi password", limit=10)
        assert len(found) == 1 and found[0].source == "consolidation", [m.content for m in found]
        merged = found[0]
        for original_id in merged.merged_from:
            original = await manager.get_memory(original_id)
            assert original is not None and original.superseded_by == merged.id
        undone = await manager.undo_consolidation(merged.id)  # a merge like any other
        assert sorted(undone["restored"]) == sorted(merged.merged_from)
        assert len(await manager.search_memory("office wifi password", limit=10)) == 2
        assert (await manager.check_integrity())["ok"]
    async with MemoryManager(config) as manager:  # nothing left to finish: the undo stands
        assert len(await manager.search_memory("office wifi password", limit=10)) == 2


UNDOER = """
async def main(path, full):
    async with MemoryManager(settings(path)) as manager:
        await fill(manager, full)
        for text in ("The office wifi password changes every Monday",
                     "The office wifi password changes every Monday morning"):
            await manager.add_memory(text, tier="medium")
        await manager.consolidate_memories(similarity_threshold=0.8)
        (merged,) = await manager.search_memory("office wifi password", limit=10)
        print(merged.id, flush=True)
        with disk_full(path, "memories.sqlite3-wal" if full == "database" else "memories.jsonl"):
            await report(manager.undo_consolidation(merged.id), "UNDONE")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("full", ["database", "log"])
async def test_an_undo_consolidation_cut_short_never_leaves_the_text_visible_twice(
    tmp_path: Path, full: str
) -> None:
    """Undoing a merge restores the originals, then deletes the merged memory: stopped in between (the
    database full after the log's restore), the text was left visible three times for good. The undo is
    now recorded with its first write and finished when the store opens; a write refused before that
    record leaves the merge as it was."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(run_script, UNDOER, storage, full)
    lines = result.stdout.split()
    assert lines[-1:] == ["FAILED"], result.stdout + result.stderr
    merged_id = lines[0]
    config = settings(storage)
    async with MemoryManager(config) as manager:
        found = await manager.search_memory("office wifi password", limit=10)
        merged = await manager.get_memory(merged_id)
        if full == "database":  # the record could not be written: nothing changed, the merge stands
            assert [memory.id for memory in found] == [merged_id]
        else:  # recorded, then the log refused the originals: finished on open
            assert merged is None
            assert len(found) == 2 and all(memory.superseded_by is None for memory in found)
            assert all(memory.source != "consolidation" for memory in found)
        assert (await manager.check_integrity())["ok"]
    async with MemoryManager(config) as manager:  # nothing left to finish: the same state
        assert len(await manager.search_memory("office wifi password", limit=10)) == len(found)


UPDATER = """
async def main(path, crash, tier):
    async with MemoryManager(settings(path)) as manager:
        await fill(manager)  # the next log write fails, the database's does not
        memory = await manager.add_memory("the gate code is qzoldxq", importance=0.9)  # short + long
        print(memory.id, flush=True)
        with disk_full(path, "memories.jsonl", crash=crash):  # crash: killed at that very write
            new = "the gate code is qznewxq"
            await report(manager.update_memory(memory.id, content=new, tier=tier), "UPDATED")
        # what this process sees after the failure: each copy's text, and what each code finds
        copies = sorted(copy.content for copy in await manager.stored_copies() if copy.id == memory.id)
        print(json.dumps(copies), flush=True)
        print(json.dumps([len(await manager.search_memory(code)) for code in ("qzoldxq", "qznewxq")]))

asyncio.run(main(sys.argv[1], sys.argv[2] == "crash", sys.argv[3] if len(sys.argv) > 3 else None))
"""


async def test_an_update_cut_short_leaves_one_text_in_every_tier(tmp_path: Path) -> None:
    """An important memory's long-term copy is written before its short-term one: an update stopped in
    between (a crash) left two texts under one id, for good: found by the words of either, shown with the
    short-term one, until an overflow dropped that copy and the text changed by itself. The store now makes
    the short-term copy match the long-term one when it opens."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(run_script, UPDATER, storage, "crash")
    # killed at the short-term copy's log write, after the long-term copy was committed
    assert result.returncode == -signal.SIGXFSZ, result.stdout + result.stderr
    lines = result.stdout.split()
    assert len(lines) == 1, result.stdout + result.stderr
    memory_id = lines[0]
    config = settings(storage)
    for _ in range(2):  # the repair is made once, and stays
        async with MemoryManager(config) as manager:
            copies = [copy for copy in await manager.stored_copies() if copy.id == memory_id]
            assert sorted(copy.tier.value for copy in copies) == ["long", "short"]
            assert {copy.content for copy in copies} == {"the gate code is qznewxq"}
            assert await manager.search_memory("qzoldxq") == []
            assert [m.content for m in await manager.search_memory("qznewxq")] == ["the gate code is qznewxq"]


@pytest.mark.parametrize("tier", [None, "long"])
async def test_an_update_the_disk_refuses_leaves_the_memory_as_it_was(
    tmp_path: Path, tier: str | None
) -> None:
    """The same update failing on a full disk (the log write raises, the process goes on): it raised
    ``StorageError`` with its long-term copy already changed (with ``tier="long"``: before the short-term
    copy's removal was logged), so until the store was reopened the memory had two texts, found by the
    words of either, and once reopened the failed update had taken effect. The long-term copy is now put
    back: the memory is as it was before the call, in this process and after."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(run_script, UPDATER, storage, "full", *([tier] if tier else []))
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[1] == "FAILED", result.stdout + result.stderr
    memory_id = lines[0]
    old = "the gate code is qzoldxq"
    assert json.loads(lines[2]) == [old, old]  # both copies: the text before the call
    assert json.loads(lines[3]) == [1, 0]  # found by its old words only
    config = settings(storage)
    async with MemoryManager(config) as manager:
        copies = [copy for copy in await manager.stored_copies() if copy.id == memory_id]
        assert sorted((copy.tier.value, copy.content) for copy in copies) == [("long", old), ("short", old)]
        assert await manager.search_memory("qznewxq") == []
        assert [m.id for m in await manager.search_memory("qzoldxq")] == [memory_id]


MOVING_UPDATER = """
async def main(path):
    async with MemoryManager(settings(path)) as manager:
        await fill(manager)
        memory = await manager.add_memory("the gate code is qzoldxq", tier="medium")  # medium-term only
        print(memory.id, flush=True)
        # room for the log's small records, none for the database's write of the long new text: the move
        # commits the long-term copy and logs the medium-term one's removal, then the update's write fails
        with disk_full(path, "memories.jsonl", room=4096):
            new = "qznewxq " + "new words " * 100_000
            await report(manager.update_memory(memory.id, content=new, tier="long"), "UPDATED")
        copies = sorted((copy.tier.value, copy.content) for copy in await manager.stored_copies()
                        if copy.id == memory.id)
        print(json.dumps(copies), flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_failed_update_to_long_term_never_loses_a_memory_moved_there(tmp_path: Path) -> None:
    """``update_memory(id, ..., tier="long")`` of a medium-term memory moves it first (its long-term copy
    committed, its medium-term copy's removal logged); when the update's own write then failed (a full
    disk), putting the long-term tier "back as it was" deleted that copy too: the memory was gone, in the
    process and once reopened. It is kept now, with the text it had, back in medium-term."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(run_script, MOVING_UPDATER, storage)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[1] == "FAILED", result.stdout + result.stderr
    memory_id = lines[0]
    old = "the gate code is qzoldxq"
    # one copy, where it was and with the text it had before the call
    assert json.loads(lines[2]) == [["medium", old]]
    config = settings(storage)
    async with MemoryManager(config) as manager:
        copies = [copy for copy in await manager.stored_copies() if copy.id == memory_id]
        assert [(copy.tier.value, copy.content) for copy in copies] == [("medium", old)]
        assert [m.id for m in await manager.search_memory("qzoldxq")] == [memory_id]
        assert await manager.search_memory("qznewxq") == []


MOVER = """
async def opened(path):
    async with MemoryManager(settings(path, medium=500)):
        pass

async def main(path):
    # opening moves the medium-term overflow: committed to the database, then dropped from the log
    with disk_full(path, "memories.jsonl"):
        await report(opened(path), "MOVED")

asyncio.run(main(sys.argv[1]))
"""


async def test_a_move_to_long_term_cut_short_leaves_each_memory_in_one_tier(tmp_path: Path) -> None:
    """A medium-term memory moved to long-term is committed there before its medium-term copy is dropped:
    a move stopped in between (a crash, a full disk) left it in both tiers, counted twice by the stats and
    exported with both tiers. The store now finishes such a move when it opens."""
    storage = tmp_path / "storage"
    config = settings(storage)
    async with MemoryManager(config) as manager:
        await manager.add_memories(
            [{"content": f"filler {n} " + "padding " * 60, "tier": "medium"} for n in range(600)]
        )
    result = await asyncio.to_thread(run_script, MOVER, storage)
    assert result.stdout.strip() == "FAILED", result.stdout + result.stderr  # the drops could not be logged
    for _ in range(2):  # the move is finished once, and stays
        async with MemoryManager(config, rebalance_on_open=False) as manager:  # moves nothing itself
            stats = await manager.get_memory_stats()
            assert (stats["total_memories"], stats["stored_copies"], stats["in_two_tiers"]) == (600, 600, 0)
            assert stats["by_tier"]["long"] > 0  # the test's premise: the move had begun
            assert len(await manager.search_memory("filler padding", limit=1000)) == 600


DELETER = """
async def main(path, full, kind):
    async with MemoryManager(settings(path)) as manager:
        await fill(manager, full)
        if kind == "important":  # a short-term copy and a long-term one
            memory = await manager.add_memory("the gate code is qzoldxq", importance=0.9)
        else:  # a consolidated memory (long-term) with its two originals (medium-term)
            for text in ("the gate code is qzoldxq for the north gate",
                         "the gate code is qzoldxq for the north gate today"):
                await manager.add_memory(text, tier="medium")
            await manager.consolidate_memories(similarity_threshold=0.8)
            (memory,) = await manager.search_memory("qzoldxq")
        print(memory.id, flush=True)
        ids = [memory.id, *memory.merged_from]

        async def state():
            copies = sorted(
                [copy.id, copy.tier.value, copy.superseded_by]
                for copy in await manager.stored_copies() if copy.id in ids
            )
            return [copies, [m.id for m in await manager.search_memory("qzoldxq")]]

        print(json.dumps(await state()), flush=True)
        with disk_full(path, "memories.sqlite3-wal" if full == "database" else "memories.jsonl"):
            await report(manager.delete_memory(memory.id), "DELETED")
        print(json.dumps(await state()), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


@pytest.mark.parametrize("kind", ["important", "merged"])
@pytest.mark.parametrize("full", ["database", "log"])
async def test_a_delete_the_disk_refuses_leaves_the_memory_as_it_was(
    tmp_path: Path, full: str, kind: str
) -> None:
    """``delete_memory`` removes a memory's copies one tier at a time (a consolidated memory's originals
    before it): a later write refused (a full disk) raised ``StorageError`` with part of it deleted (the
    short-term copy of an important memory gone, its long-term one kept; a merged memory's originals gone,
    the merged memory kept), in this process and once reopened. What the failed delete removed is now put
    back: the memories are as they were before the call."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(run_script, DELETER, storage, full, kind)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[2:3] == ["FAILED"], result.stdout + result.stderr
    memory_id, before, after = lines[0], json.loads(lines[1]), json.loads(lines[3])
    tiers = sorted(copy[1] for copy in before[0])
    assert tiers == (["long", "short"] if kind == "important" else ["long", "medium", "medium"])
    assert before[1] == [memory_id]
    assert after == before  # every copy as it was, the memory found as before
    config = settings(storage)
    async with MemoryManager(config) as manager:
        ids = {copy[0] for copy in before[0]}
        copies = sorted(
            [copy.id, copy.tier.value, copy.superseded_by]
            for copy in await manager.stored_copies()
            if copy.id in ids
        )
        assert copies == before[0]
        assert [m.id for m in await manager.search_memory("qzoldxq")] == [memory_id]
        assert (await manager.check_integrity())["ok"]


USED_DELETER = """
import asyncio, json, resource, signal, sys
from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageError
from context_manager.core.memory.manager import MemoryManager

async def main(path, full):
    config = ContextManagerConfig(storage_path=path, embedder="none", medium_term_memory_size=5000)
    async with MemoryManager(config) as manager:
        if full == "database":
            await manager.add_memories(
                [{"content": f"archive {n} " + "ledger entry " * 150, "tier": "long"} for n in range(200)]
            )
        else:
            await manager.add_memories(
                [{"content": f"filler {n} " + "padding " * 60, "tier": "medium"} for n in range(400)]
            )
        memory = await manager.add_memory("the gate code is qzoldxq", importance=0.9)  # short + long
        for _ in range(3):  # three uses, recorded in a batch not yet written
            await manager.search_memory("qzoldxq")
        name = "memories.sqlite3-wal" if full == "database" else "memories.jsonl"
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG): a full disk
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, ((Path(path) / name).stat().st_size, hard))
        try:
            await manager.delete_memory(memory.id)
        except StorageError:
            print("FAILED", flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        await manager.flush()
        print(memory.id, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("full", ["database", "log"])
async def test_a_delete_the_disk_refuses_keeps_the_memorys_access_history(tmp_path: Path, full: str) -> None:
    """A delete dropped the memory's accesses not yet written (the batch of "last used" and access-count
    updates searches record) before deleting it; when the disk refused the delete and the memory was put
    back, those accesses were lost: once reopened the memory had been used 0 times, not 3. They are
    dropped only once the memory is deleted now."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", USED_DELETER, str(storage), full],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[:1] == ["FAILED"], result.stdout + result.stderr
    memory_id = lines[1]
    config = ContextManagerConfig(storage_path=storage, embedder="none", medium_term_memory_size=5000)
    async with MemoryManager(config) as manager:
        copies = [copy for copy in await manager.stored_copies() if copy.id == memory_id]
        assert sorted((copy.tier.value, copy.access_count) for copy in copies) == [("long", 3), ("short", 3)]


RAISING_UPDATER = """
import asyncio, json, resource, signal, sys
from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageError
from context_manager.core.memory.manager import MemoryManager

async def main(path):
    config = ContextManagerConfig(storage_path=path, embedder="none", medium_term_memory_size=5000)
    async with MemoryManager(config) as manager:
        # a database WAL far larger than the log: the log's writes pass, the next database write fails
        await manager.add_memories(
            [{"content": f"archive {n} " + "ledger entry " * 150, "tier": "long"} for n in range(200)]
        )
        memory = await manager.add_memory("the gate code is qzoldxq", tier="long")  # long-term only
        print(memory.id, flush=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG): a full disk
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        limit = (Path(path) / "memories.sqlite3-wal").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            await manager.update_memory(memory.id, importance=0.7, tier="short")
        except StorageError:
            print("FAILED", flush=True)
        else:
            print("UPDATED", flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        copies = sorted((copy.tier.value, copy.importance) for copy in await manager.stored_copies()
                        if copy.id == memory.id)
        stats = await manager.get_memory_stats()
        print(json.dumps([copies, stats["in_two_tiers"]]), flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_failed_move_of_a_long_term_memory_to_short_term_leaves_it_as_it_was(tmp_path: Path) -> None:
    """``update_memory(id, tier="short")`` of a long-term-only memory logs its short-term copy, then deletes
    the long-term one: when the database refused that delete (a full disk) the call raised ``StorageError``
    and left the memory in two tiers it was never placed in (counted in ``in_two_tiers``, in this process
    and once reopened). The copy the failed call made is removed now: the memory is as it was before the
    call."""
    storage = tmp_path / "storage"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", RAISING_UPDATER, str(storage)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[1:2] == ["FAILED"], result.stdout + result.stderr
    memory_id = lines[0]
    assert json.loads(lines[2]) == [[["long", 0.5]], 0]  # one copy, as before the call
    config = ContextManagerConfig(storage_path=storage, embedder="none", medium_term_memory_size=5000)
    async with MemoryManager(config) as manager:
        copies = [copy for copy in await manager.stored_copies() if copy.id == memory_id]
        assert [(copy.tier.value, copy.importance) for copy in copies] == [("long", 0.5)]
        assert (await manager.get_memory_stats())["in_two_tiers"] == 0


RE_EMBEDDER = """
import time
from context_manager.testing import HashingEmbedder as PlainHashingEmbedder

class HashingEmbedder(PlainHashingEmbedder):
    # the plain embedder's vectors, stored under its key (its class name and settings), except that the
    # updated text never gets one: the process is killed while this "model" embeds it
    def embed(self, texts):
        if any("herons" in text for text in texts):
            os.write(1, b"EMBEDDING\\n")
            time.sleep(300)
        return super().embed(texts)

async def main(path, dsn):
    backend = {"memory_backend": "postgres", "postgres_dsn": dsn} if dsn else {}
    config = ContextManagerConfig(storage_path=path, **backend)
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        memory = await manager.add_memory("the walrus sings at dawn")
        os.write(1, f"{memory.id}\\n".encode())
        await manager.update_memory(memory.id, content="herons fish at dusk")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run_until_marker(script: str, marker: str, *args: object) -> str:
    """Run ``script`` in a subprocess, SIGKILL it once it printed a memory id and then ``marker`` (the
    moment to kill it at); the id."""
    process = subprocess.Popen(
        [sys.executable, "-c", PREAMBLE + script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        memory_id = process.stdout.readline().strip()
        printed = process.stdout.readline().strip()
        failed = process.stderr.read() if process.poll() is not None else ""
        assert memory_id and printed == marker, failed
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return memory_id


def run_until_embedding(storage: Path, dsn: str) -> str:
    """Run :data:`RE_EMBEDDER` and SIGKILL it once its update committed and the new text is being embedded;
    the id of the memory it updated."""
    return run_until_marker(RE_EMBEDDER, "EMBEDDING", str(storage), dsn)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_update_killed_before_its_new_text_is_embedded_is_embedded_on_open(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """An update's new text is embedded after the update is stored: a process killed in between left the
    memory with the vector of its old text for good (the store's opening embeds only memories without a
    vector), found by the meaning of words it no longer holds and not by those it holds. The update now
    removes the old vector with it, and the next opening embeds the new text."""
    dsn = request.getfixturevalue("postgres_dsn") if backend == "postgres" else ""
    storage = tmp_path / "storage"
    memory_id = await asyncio.to_thread(run_until_embedding, storage, dsn)
    options: dict[str, Any] = {"memory_backend": "postgres", "postgres_dsn": dsn} if dsn else {}
    embedder = HashingEmbedder()
    config = ContextManagerConfig(storage_path=storage, **options)
    async with MemoryManager(config, embedder=embedder) as manager:
        stored = await manager.get_memory(memory_id)
        assert stored is not None and stored.content == "herons fish at dusk"
        assert manager.backend is not None
        vectors = await manager.backend.vectors_of([memory_id])
        assert numpy.allclose(vectors[memory_id], embedder.embed(["herons fish at dusk"])[0])
        found = await manager.search_memory("herons fishing", limit=1)
        assert [memory.id for memory in found] == [memory_id]


EMBEDDED_UPDATER = """
import numpy
from context_manager.testing import HashingEmbedder

async def main(path):
    embedder = HashingEmbedder()
    async with MemoryManager(settings(path), embedder=embedder) as manager:
        await fill(manager)  # the next log write fails, the database's does not
        old = "the gate code is qzoldxq"
        memory = await manager.add_memory(old, importance=0.9)  # short + long
        with disk_full(path, "memories.jsonl"):
            await report(manager.update_memory(memory.id, content="the gate code is qznewxq"), "UPDATED")
        for _ in range(1000):  # the background embedding, 10 s at most
            if not manager._unembedded and (manager._embed_task is None or manager._embed_task.done()):
                break
            await asyncio.sleep(0.01)
        vector = (await manager.backend.vectors_of([memory.id])).get(memory.id)
        print(json.dumps(vector is not None and bool(numpy.allclose(vector, embedder.embed([old])[0]))))

asyncio.run(main(sys.argv[1]))
"""


async def test_an_update_the_disk_refuses_keeps_the_vector_of_the_text_kept(tmp_path: Path) -> None:
    """An update of the text deletes the old text's vector before it writes (a process killed before the
    new text is embedded must not keep it): when the disk then refuses the write, the memory, put back as it
    was, gets its old text's vector again (in the background), not none until the store is next opened."""
    result = await asyncio.to_thread(run_script, EMBEDDED_UPDATER, tmp_path / "storage")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["FAILED", "true"], result.stdout + result.stderr


MERGED_DELETER = """
from context_manager.core.memory.sqlite_store import SQLiteStore

async def main(path):
    async with MemoryManager(settings(path)) as manager:
        # three originals: one short-term with a long-term copy, two medium-term
        await manager.add_memory("the gate code is qzoldxq for the north gate", importance=0.9)
        for text in ("the gate code is qzoldxq for the north gate today",
                     "the gate code is qzoldxq for the north gate, today"):
            await manager.add_memory(text, tier="medium")
        await manager.consolidate_memories(similarity_threshold=0.8)
        (memory,) = await manager.search_memory("qzoldxq")
        assert len(memory.merged_from) == 3, memory.merged_from
        os.write(1, f"{memory.id}\\n".encode())
        delete = SQLiteStore.delete

        def delete_then_hang(self, *args, **kwargs):  # killed once a database delete has committed
            present = delete(self, *args, **kwargs)
            os.write(1, b"COMMITTED\\n")
            import time
            time.sleep(300)
            return present

        SQLiteStore.delete = delete_then_hang
        await manager.delete_memory(memory.id)

asyncio.run(main(sys.argv[1]))
"""


def run_until_first_delete(storage: Path) -> str:
    """Run :data:`MERGED_DELETER`, SIGKILL it once its first database delete committed; the merged id."""
    return run_until_marker(MERGED_DELETER, "COMMITTED", str(storage))


async def test_a_merged_memory_delete_killed_midway_deletes_all_of_it_or_none(tmp_path: Path) -> None:
    """``delete_memory`` of a consolidated memory on SQLite deleted its originals one transaction per copy,
    then the memory: a process killed after the first committed left that original gone, the others and
    the merged memory stored (an undo then restored part of the originals). Its long-term copies now go in
    one transaction recording the delete of the volatile ones, finished when the store next opens: killed
    right after that transaction, the memory and its three originals are all gone, in every tier."""
    storage = tmp_path / "storage"
    merged_id = await asyncio.to_thread(run_until_first_delete, storage)
    config = settings(storage)
    for _ in range(2):  # as the open left it, and once more (nothing left to finish)
        async with MemoryManager(config) as manager:
            copies = await manager.stored_copies()
            assert [(copy.id, copy.tier.value) for copy in copies] == []
            assert await manager.search_memory("qzoldxq") == []
            assert await manager.get_memory(merged_id) is None
            assert (await manager.check_integrity())["ok"]


REPLACER = """
import time
from context_manager.core.memory.models import MemoryTier
from context_manager.testing import HashingEmbedder

async def main(path, dsn):
    backend = {"memory_backend": "postgres", "postgres_dsn": dsn} if dsn else {}
    config = ContextManagerConfig(storage_path=path, **backend)
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        memory = await manager.add_memory("the walrus sings at dawn", tier="long")
        os.write(1, f"{memory.id}\\n".encode())
        changed = memory.copy(content="herons fish at dusk")
        assert await manager.backend.replace(MemoryTier.LONG, [changed]) == [memory.id]
        os.write(1, b"REPLACED\\n")  # killed before anything embeds the new text
        time.sleep(300)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run_until_replaced(storage: Path, dsn: str) -> str:
    """Run :data:`REPLACER`, SIGKILL it once its ``replace`` returned; the id of the memory it replaced."""
    return run_until_marker(REPLACER, "REPLACED", str(storage), dsn)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_replace_killed_before_its_new_text_is_embedded_is_embedded_on_open(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """``MemoryBackend.replace`` with a new text kept the memory's vector of its old text (an ``update``
    drops it): a process killed before the new text was embedded left it for good, the memory found by the
    meaning of words it no longer holds. The replace now drops the old vector with the write (PostgreSQL:
    in its transaction), and the next opening embeds the new text."""
    dsn = request.getfixturevalue("postgres_dsn") if backend == "postgres" else ""
    storage = tmp_path / "storage"
    memory_id = await asyncio.to_thread(run_until_replaced, storage, dsn)
    options: dict[str, Any] = {"memory_backend": "postgres", "postgres_dsn": dsn} if dsn else {}
    embedder = HashingEmbedder()
    async with MemoryManager(
        ContextManagerConfig(storage_path=storage, **options), embedder=embedder
    ) as manager:
        stored = await manager.get_memory(memory_id)
        assert stored is not None and stored.content == "herons fish at dusk"
        assert manager.backend is not None
        vectors = await manager.backend.vectors_of([memory_id])
        assert numpy.allclose(vectors[memory_id], embedder.embed(["herons fish at dusk"])[0])
