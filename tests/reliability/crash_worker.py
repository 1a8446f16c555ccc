"""A worker the reliability tests run as a real subprocess (and kill with SIGKILL).

Usage: ``python crash_worker.py OPERATION STORAGE_PATH SEED [OPTION]``. It opens the store, prints
``READY`` and then repeats OPERATION until it is killed. Every write it prints has been acknowledged
(the call returned) and the line is flushed before the next call starts:

* ``ACK <memory id> <marker>``: ``add_memory``/``add_memories`` returned this memory.
* ``DELETING <memory id>``: ``delete_memory`` is about to be called (may or may not be done if killed).
* ``GONE <memory id>``: ``cleanup_old_memories``/``delete_memory`` reported this memory removed.
* ``MERGED <merged id> <original id>,<original id>...``: ``consolidate_memories`` returned this merge.
* ``EVICTED <message id> <marker>``: ``add_message`` returned and this message had left the window.
* ``BEGIN``/``END``: the operation under test starts/returned (a kill between them landed inside it).
* ``ERROR <exception type> <message>``, ``HEALTH <state> <failing checks>``, ``DONE``: fault runs.

Markers are unique words (``m<seed>x<number>``) so a test can search for each write.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import ContextManagerError
from context_manager.core.memory.manager import MemoryManager

WORDS = [
    "river",
    "mountain",
    "lantern",
    "harbor",
    "orchard",
    "copper",
    "violet",
    "meadow",
    "falcon",
    "glacier",
    "canyon",
    "thunder",
    "pepper",
    "marble",
    "saddle",
    "tunnel",
    "beacon",
    "walnut",
    "silver",
    "candle",
]


def emit(*parts: object) -> None:
    """Print one protocol line and flush it before anything else happens."""
    sys.stdout.write(" ".join(str(part) for part in parts) + "\n")
    sys.stdout.flush()


def memory_config(storage: str, **overrides: Any) -> ContextManagerConfig:
    """The configuration every worker and every verifying test uses for ``storage``."""
    settings: dict[str, Any] = {
        "storage_path": storage,
        "cache_path": str(Path(storage).parent / "cache"),
        "short_term_memory_size": 10,
        "medium_term_memory_size": 20,
        "long_term_memory_size": 100_000,
    }
    settings.update(overrides)
    return ContextManagerConfig(**settings)


def sentence(rng: random.Random, marker: str, words: int) -> str:
    return f"{marker} " + " ".join(rng.choice(WORDS) for _ in range(words))


async def add_loop(storage: str, seed: int) -> None:
    """Concurrent add_memory calls (three at a time) and add_memories batches, random tiers."""
    rng = random.Random(seed)
    async with MemoryManager(memory_config(storage)) as manager:
        emit("READY")
        number = 0

        async def add_one(serial: int) -> None:
            marker = f"m{seed}x{serial}"
            tier = rng.choice([None, None, None, "short", "medium", "long"])
            memory = await manager.add_memory(
                sentence(rng, marker, rng.randint(3, 40)), importance=rng.random(), tier=tier, tags=["crash"]
            )
            emit("ACK", memory.id, marker)

        while True:
            if number % 5 == 4:
                markers = [f"m{seed}x{number + offset}" for offset in range(4)]
                emit("BEGIN")
                stored = await manager.add_memories(
                    [{"content": sentence(rng, marker, 8), "importance": rng.random()} for marker in markers]
                )
                emit("END")
                for memory, marker in zip(stored, markers, strict=True):
                    emit("ACK", memory.id, marker)
                number += 4
            else:
                emit("BEGIN")
                await asyncio.gather(*(add_one(number + offset) for offset in range(3)))
                emit("END")
                number += 3
            if number % 11 == 0:
                await manager.search_memory(rng.choice(WORDS))


async def consolidate_loop(storage: str, seed: int) -> None:
    """Near-duplicate memories added, then consolidate_memories, over and over."""
    rng = random.Random(seed)
    async with MemoryManager(memory_config(storage)) as manager:
        emit("READY")
        number = 0
        while True:
            for _ in range(4):
                base = f"m{seed}x{number}"
                text = sentence(rng, base, 12)
                for copy in range(3):  # three near-duplicates share the marker of the first
                    variant = text if copy == 0 else f"{text} again{copy}"
                    memory = await manager.add_memory(
                        variant, importance=rng.random(), tier=rng.choice([None, "medium", "long"])
                    )
                    emit("ACK", memory.id, base)
                number += 1
            emit("BEGIN")
            report = await manager.consolidate_memories(0.8)
            emit("END")
            for group in report["groups"]:
                emit("MERGED", group["merged_id"], ",".join(group["merged_from"]))


async def compact_loop(storage: str, seed: int) -> None:
    """Medium-term log compaction (``optimize``) of a large log with deletes and access updates."""
    rng = random.Random(seed)
    config = memory_config(storage, medium_term_memory_size=5000)
    async with MemoryManager(config) as manager:
        emit("READY")
        number = 0
        while True:
            markers = [f"m{seed}x{number + offset}" for offset in range(60)]
            number += len(markers)
            stored = await manager.add_memories(
                [
                    {"content": sentence(rng, marker, 20), "importance": rng.random() * 0.5, "tier": "medium"}
                    for marker in markers
                ]
            )
            for memory, marker in zip(stored, markers, strict=True):
                emit("ACK", memory.id, marker)
            for memory in rng.sample(stored, 5):
                emit("DELETING", memory.id)  # a kill before GONE leaves it either way
                await manager.delete_memory(memory.id)
                emit("GONE", memory.id)
            await manager.search_memory(rng.choice(WORDS))  # access updates to persist
            emit("BEGIN")
            await manager.optimize()
            emit("END")


async def cleanup_loop(storage: str, seed: int) -> None:
    """cleanup_old_memories removing unimportant memories while important ones must stay."""
    rng = random.Random(seed)
    async with MemoryManager(memory_config(storage)) as manager:
        emit("READY")
        number = 0
        while True:
            for _ in range(12):
                marker = f"m{seed}x{number}"
                number += 1
                keeper = rng.random() < 0.5
                memory = await manager.add_memory(
                    sentence(rng, marker, 10),
                    importance=0.95 if keeper else 0.1,
                    tier=rng.choice([None, "medium", "long"]),
                )
                if keeper:
                    emit("ACK", memory.id, marker)
            emit("BEGIN")
            report = await manager.cleanup_old_memories(0, keep_importance=0.9)
            emit("END")
            for memory_id in report["removed_ids"]:
                emit("GONE", memory_id)


def context_config(storage: str) -> ContextManagerConfig:
    return memory_config(storage, max_tokens=400, compression_ratio=0.6, health_check_interval=0.5)


async def optimize_loop(storage: str, seed: int) -> None:
    """EnhancedContextManager.optimize_system (compaction, FTS merge, checkpoint, consolidation)."""
    rng = random.Random(seed)
    async with EnhancedContextManager(context_config(storage)) as manager:
        memory = manager.memory_manager
        emit("READY")
        number = 0
        while True:
            for _ in range(6):
                marker = f"m{seed}x{number}"
                number += 1
                text = sentence(rng, marker, 10)
                first = await memory.add_memory(
                    text, importance=rng.random(), tier=rng.choice([None, "long"])
                )
                emit("ACK", first.id, marker)
                if rng.random() < 0.5:  # a near-duplicate for consolidation to merge
                    second = await memory.add_memory(text + " again", importance=rng.random())
                    emit("ACK", second.id, marker)
            emit("BEGIN")
            await manager.optimize_system()
            emit("END")


async def evict_loop(storage: str, seed: int) -> None:
    """add_message through a small window: compression evicts messages to medium-term memory."""
    rng = random.Random(seed)
    async with EnhancedContextManager(context_config(storage)) as manager:
        emit("READY")
        await manager.add_message("system", "You are a test assistant.")
        markers: dict[str, str] = {}
        number = 0
        while True:
            marker = f"m{seed}x{number}"
            number += 1
            role = "user" if number % 2 else "assistant"
            emit("BEGIN")
            await manager.add_message(role, sentence(rng, marker, rng.randint(5, 60)))
            await manager.flush()  # evicted messages are written in the background; flush acknowledges them
            emit("END")
            in_window = {message.id for message in manager.messages}
            new = [message for message in manager.messages if message.id not in markers]
            for message in new:  # the conversation's own messages (not the system prompt or summaries)
                if message.content.startswith(f"m{seed}x"):
                    markers[message.id] = message.content.split(" ", 1)[0]
            for message_id in [i for i in markers if i not in in_window]:
                emit("EVICTED", message_id, markers.pop(message_id))


OPERATIONS = {
    "add_memory": add_loop,
    "consolidate_memories": consolidate_loop,
    "log_compaction": compact_loop,
    "cleanup_old_memories": cleanup_loop,
    "optimize_system": optimize_loop,
    "compression_eviction": evict_loop,
}


async def disk_full(storage: str, seed: int, limit_bytes: int, tiers: list[str | None]) -> None:
    """Write until the file-size limit makes writes fail, then lift it ("disk freed") and go on."""
    rng = random.Random(seed)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    config = context_config(storage).model_copy(update={"medium_term_memory_size": 100_000})
    async with EnhancedContextManager(config) as manager:
        memory = manager.memory_manager
        emit("READY")
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
        failures = 0
        number = 0
        while failures < 6 and number < 20_000:
            marker = f"m{seed}x{number}"
            number += 1
            try:
                stored = await memory.add_memory(
                    sentence(rng, marker, 30),
                    importance=rng.random(),
                    tier=rng.choice(tiers),
                )
            except ContextManagerError as error:
                failures += 1
                emit("ERROR", type(error).__name__, str(error).replace("\n", " ")[:200])
            except Exception as error:  # anything else escaping is what the test looks for
                failures += 1
                emit("ESCAPED", type(error).__name__, str(error).replace("\n", " ")[:200])
            else:
                emit("ACK", stored.id, marker)
        await emit_health(manager)
        found = await memory.search_memory(rng.choice(WORDS))
        emit("SEARCH", len(found))
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
        for _ in range(5):
            marker = f"m{seed}x{number}"
            number += 1
            stored = await memory.add_memory(sentence(rng, marker, 30), tier=rng.choice(tiers))
            emit("ACK", stored.id, marker)
        await emit_health(manager)
    emit("DONE")


async def emit_health(manager: EnhancedContextManager) -> None:
    """``HEALTH <state> <failing checks> <storage_writes state>``."""
    assert manager.health_checker is not None
    status = await manager.health_checker.perform_health_check()
    failing = ",".join(result.name for result in status.failing_checks) or "-"
    emit("HEALTH", status.status.value, failing, status.checks["storage_writes"].status.value)


def make_read_only(storage: Path, read_only: bool) -> None:
    """Take write permission away from the directory and its files (or give it back)."""
    for path in storage.iterdir():
        path.chmod(0o400 if read_only else 0o600)
    storage.chmod(0o500 if read_only else 0o700)


async def read_only_storage(storage: str, seed: int) -> None:
    """Run with the storage directory made read-only under an open manager, then reopen it."""
    if os.geteuid() == 0:  # root ignores permissions: run as the storage directory's owner instead
        with tempfile.TemporaryDirectory() as warm_up:  # import lazily loaded modules while we still can
            async with EnhancedContextManager(context_config(str(Path(warm_up) / "s"))) as manager:
                await manager.add_message("user", "warm up")
                await manager.memory_manager.add_memory("warm up", tier="long")
                await manager.memory_manager.optimize()
                assert manager.health_checker is not None
                await manager.health_checker.perform_health_check()
        owner = await asyncio.to_thread(Path(storage).stat)
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    rng = random.Random(seed)
    config = context_config(storage).model_copy(update={"enable_health_checks": False})
    path = Path(storage)
    async with EnhancedContextManager(config) as manager:
        memory = manager.memory_manager
        emit("READY")
        for number in range(6):
            marker = f"m{seed}x{number}"
            stored = await memory.add_memory(
                sentence(rng, marker, 8), tier=["short", "medium", "long"][number % 3]
            )
            emit("ACK", stored.id, marker)
        make_read_only(path, True)
        for step in ("add_memory", "optimize", "health"):
            try:
                if step == "add_memory":  # the files are open already: the write still lands
                    stored = await memory.add_memory(sentence(rng, f"m{seed}x99", 8), tier="medium")
                    emit("ACK", stored.id, f"m{seed}x99")
                elif step == "optimize":
                    await memory.optimize()
                    emit("OK", step)
                else:
                    await emit_health(manager)
            except ContextManagerError as error:
                emit("ERROR", type(error).__name__, step, str(error).replace("\n", " ")[:200])
            except Exception as error:
                emit("ESCAPED", type(error).__name__, step, str(error).replace("\n", " ")[:200])
    try:
        async with MemoryManager(memory_config(storage)):
            emit("OK", "reopen_read_only")
    except ContextManagerError as error:
        emit("ERROR", type(error).__name__, "reopen", str(error).replace("\n", " ")[:200])
    except Exception as error:
        emit("ESCAPED", type(error).__name__, "reopen", str(error).replace("\n", " ")[:200])
    make_read_only(path, False)
    emit("DONE")


async def main() -> None:
    operation, storage, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if operation == "read_only":
        await read_only_storage(storage, seed)
    elif operation == "disk_full":
        tiers = [None if name == "default" else name for name in sys.argv[5].split(",")]
        await disk_full(storage, seed, int(sys.argv[4]), tiers)
    else:
        await OPERATIONS[operation](storage, seed)


if __name__ == "__main__":
    os.environ.setdefault("PYTHON_CONTEXT_MANAGER_ENABLE_DEBUG", "false")
    asyncio.run(main())
