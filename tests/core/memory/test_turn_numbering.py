"""Conversation turn numbers continue across restarts (issue 18, item 7).

Turn indices used to be counted from 0 in every process, so a second run of a conversation session wrote
turns 0, 1, ... again: two memories claimed each turn, and the neighbour feature (a turn scores with its
previous and next turn) joined turns of different runs. Each (user, session) now continues from the
highest turn index stored, in a new manager on the same storage, on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import StorageError
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.messages import Message
from tests.core.memory.conftest import FakeClock


def turns(memories: list[Memory]) -> dict[tuple[str | None, str], list[tuple[int, str]]]:
    """(turn index, content) of every conversation memory, per (user, session), in turn order."""
    found: dict[tuple[str | None, str], set[tuple[int, str]]] = defaultdict(set)
    for memory in memories:
        if memory.session_id is not None and memory.turn_index is not None:
            found[(memory.user_id, memory.session_id)].add((memory.turn_index, memory.content))
    return {key: sorted(values) for key, values in found.items()}


async def until(condition: Callable[[], bool]) -> None:
    """Wait (a few seconds at most) for ``condition`` to hold."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def said(*texts: str) -> list[Message]:
    return [Message.create("user" if n % 2 == 0 else "assistant", text) for n, text in enumerate(texts)]


async def test_a_second_manager_continues_each_sessions_turn_numbers(
    config: ContextManagerConfig, clock: FakeClock
) -> None:
    first = MemoryManager(config, clock=clock)
    await first.initialize()
    await first.remember_messages(said("hello", "hi, how can I help", "my parcel is late"), session_id="s1")
    await first.remember_messages(said("other topic", "sure"), session_id="s2")
    await first.remember_messages(said("bob speaking"), session_id="s1", user_id="bob")
    await first.close()

    second = MemoryManager(config, clock=clock)
    await second.initialize()
    try:
        written = await second.remember_messages(said("it is parcel 7", "it arrives Monday"), session_id="s1")
        assert [m.turn_index for m in written] == [3, 4]
        assert [m.turn_index for m in await second.remember_messages(said("back"), session_id="s2")] == [2]
        bob = await second.remember_messages(said("bob again"), session_id="s1", user_id="bob")
        assert [m.turn_index for m in bob] == [1]  # per user: bob's s1 is a session of its own
        new = await second.remember_messages(said("a new session"), session_id="s3")
        assert [m.turn_index for m in new] == [0]

        # every turn is claimed by exactly one memory, in the order the runs wrote them
        assert turns(await second.stored_copies()) == {
            (None, "s1"): [
                (0, "hello"),
                (1, "hi, how can I help"),
                (2, "my parcel is late"),
                (3, "it is parcel 7"),
                (4, "it arrives Monday"),
            ],
            (None, "s2"): [(0, "other topic"), (1, "sure"), (2, "back")],
            ("bob", "s1"): [(0, "bob speaking"), (1, "bob again")],
            (None, "s3"): [(0, "a new session")],
        }
    finally:
        await second.close()


async def test_a_resumed_persisted_conversation_continues_its_turn_numbers(tmp_path: Path) -> None:
    """The conversation id is the memory session of what compression evicts: a resumed conversation's
    evicted turns continue the numbering of the earlier run's."""
    config = ContextManagerConfig(storage_path=tmp_path / "storage", max_tokens=300)

    async def run(first_step: int) -> None:
        async with EnhancedContextManager(config, conversation_id="support-9") as manager:
            for step in range(first_step, first_step + 30):
                await manager.add_message("user", f"step {step}: notes about crate {step} in warehouse")
            assert manager.compression_history

    await run(0)
    await run(30)
    memory = MemoryManager(config)
    await memory.initialize()
    try:
        evicted = [m for m in await memory.stored_copies() if m.session_id == "support-9"]
    finally:
        await memory.close()
    numbered = turns(evicted)[(None, "support-9")]
    steps = [int(content.split(":")[0].removeprefix("step ")) for _, content in numbered]
    # both runs' evicted messages, each turn index once, numbered in the order they were said
    assert min(steps) < 30 <= max(steps)
    assert len({index for index, _ in numbered}) == len(numbered) == len(set(steps))
    assert steps == sorted(steps)


# -- a conversation written again, and by several processes ----------------------------------------------
#
# A persisted conversation's messages are written with ``id_namespace``: a message already stored is
# returned as it is. Its turn number used to be counted all the same (every re-write left a gap), and each
# process counted a session's turns from a number it had read once: two web workers writing one conversation
# on PostgreSQL gave different messages the same turn index (search reads turn_index +-1 as the neighbours).


async def test_a_conversation_written_again_leaves_no_gap_in_its_turn_numbers(
    config: ContextManagerConfig, clock: FakeClock
) -> None:
    messages = said(*(f"line {number} about the crane" for number in range(7)))
    async with MemoryManager(config, clock=clock) as memory:
        first = await memory.remember_messages(messages[:3], session_id="c", id_namespace="c")
        again = await memory.remember_messages(messages[:5], session_id="c", id_namespace="c")
        assert [m.id for m in again[:3]] == [m.id for m in first]  # the stored ones, as they are
        assert [m.turn_index for m in again] == [0, 1, 2, 3, 4]
        rest = await memory.remember_messages(messages[4:], session_id="c", id_namespace="c")
        assert [m.turn_index for m in rest] == [4, 5, 6]
        assert [index for index, _ in turns(await memory.stored_copies())[(None, "c")]] == list(range(7))
    # a plain call (no id_namespace) numbers as before: every message is a new memory
    async with MemoryManager(config, clock=clock) as memory:
        plain = await memory.remember_messages(said("once more", "and again"), session_id="c")
        assert [m.turn_index for m in plain] == [7, 8]


async def test_two_managers_writing_one_conversation_in_turn_number_its_turns_in_sequence(
    postgres_dsn: str,
) -> None:
    """Two managers on one PostgreSQL schema stand for two web workers of one conversation: each writes a
    batch in turn (the second re-writing part of the first's, as a worker re-indexing after a reload)."""
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn)
    messages = said(*(f"turn {number} of the support chat" for number in range(12)))
    async with MemoryManager(config) as a, MemoryManager(config) as b:
        batches = [(a, messages[0:3]), (b, messages[2:6]), (a, messages[6:8]), (b, messages[5:10])]
        batches += [(a, messages[10:12])]
        for writer, batch in batches:
            await writer.remember_messages(batch, session_id="chat", id_namespace="chat")
        stored = turns(await a.stored_copies())[(None, "chat")]
    assert stored == [(number, f"turn {number} of the support chat") for number in range(12)]


async def test_a_batch_written_between_another_managers_read_and_write_takes_its_own_turns(
    postgres_dsn: str,
) -> None:
    """B writes a batch of the conversation while A has read the last turn number and not yet written:
    A's batch waits for B's (or B's for A's), so no turn number is given twice."""
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn)
    async with MemoryManager(config) as a, MemoryManager(config) as b:
        await b.remember_messages(said("hello", "hi there"), session_id="chat", id_namespace="chat")
        backend = a.backend
        assert backend is not None
        read = backend.last_turn_index
        b_batch: list[asyncio.Task[list[Memory]]] = []

        async def read_then_let_b_write(user_id: str | None, session_id: str) -> int | None:
            last = await read(user_id, session_id)
            if not b_batch:
                b_batch.append(
                    asyncio.create_task(
                        b.remember_messages(said("b one", "b two"), session_id="chat", id_namespace="chat")
                    )
                )
                # B's batch either completes now (nothing keeps it from using the number A just read) or
                # waits for A's batch to be written
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(b_batch[0]), timeout=1.0)
            return last

        backend.last_turn_index = read_then_let_b_write  # type: ignore[method-assign]
        try:
            await a.remember_messages(said("a one", "a two"), session_id="chat", id_namespace="chat")
        finally:
            del backend.last_turn_index
        assert b_batch, "setup: A did not read the last turn number"
        await b_batch[0]
        indexes = [index for index, _ in turns(await a.stored_copies())[(None, "chat")]]
    assert indexes == list(range(6))


_WRITER = """
import asyncio, sys
from context_manager import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.messages import Message

async def main(dsn: str, worker: str) -> None:
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=3)
    messages = [Message.create("user", f"worker {worker} line {n}") for n in range(60)]
    async with MemoryManager(config) as memory:
        for batch in range(10):  # each batch re-writes the previous one's messages, as a re-index does
            await memory.remember_messages(
                messages[max(0, 6 * batch - 6) : 6 * batch + 6], session_id="chat", id_namespace="chat"
            )
            await asyncio.sleep(0.005)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_processes_writing_one_conversation_give_each_turn_one_number(postgres_dsn: str) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, postgres_dsn, str(worker), stderr=asyncio.subprocess.PIPE
        )
        for worker in range(2)
    ]
    errors = await asyncio.gather(*(process.communicate() for process in processes))
    for process, (_, error) in zip(processes, errors, strict=True):
        assert process.returncode == 0, error.decode()[-3000:]
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn)
    async with MemoryManager(config) as memory:
        stored = turns(await memory.stored_copies())[(None, "chat")]
    assert [index for index, _ in stored] == list(range(120))  # 120 messages, each turn number once
    for worker in range(2):  # each worker's messages in the order it said them
        lines = [int(text.split()[-1]) for _, text in stored if text.startswith(f"worker {worker} ")]
        assert lines == list(range(60))


async def test_a_conversation_chunk_that_failed_part_way_takes_new_numbers_after_the_stored_turns(
    sqlite_config: ContextManagerConfig, storage: Path
) -> None:
    """The medium-term memories of a chunk are in the log when its pasted document's long-term write fails
    (another connection holds the database's write lock): the retry numbers the document after the turns
    stored, not from the count the failed call had reached (which gave it a stored turn's number)."""
    messages = said("the invoice is attached", "thanks, reading it", "document: " + "ledger line " * 6_000)
    async with MemoryManager(sqlite_config) as memory:
        await memory.remember_messages(said("hello"), session_id="c", id_namespace="c")
        blocker = sqlite3.connect(storage / "memories.sqlite3", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # held until the store's 5 s busy timeout gives up
            with pytest.raises(StorageError, match="database is locked"):
                await memory.remember_messages(messages, session_id="c", id_namespace="c")
        finally:
            blocker.close()
        assert [index for index, _ in turns(await memory.stored_copies())[(None, "c")]] == [0, 1, 2]
        again = await memory.remember_messages(messages, session_id="c", id_namespace="c")
        assert [m.turn_index for m in again] == [1, 2, 3]
        assert [m.tier for m in again] == [MemoryTier.MEDIUM, MemoryTier.MEDIUM, MemoryTier.LONG]


@pytest.mark.parametrize("counted_before", [False, True], ids=["read-from-storage", "counted-here"])
async def test_turns_written_while_an_import_adds_turns_to_the_session_never_take_an_imported_number(
    sqlite_config: ContextManagerConfig, tmp_path: Path, clock: FakeClock, counted_before: bool
) -> None:
    """A chunk numbered from the storage (or from this manager's count) while an import was writing turns
    of the same session, then written after it, took numbers the import had just stored, and left the
    manager counting on from there: the next turns claimed imported numbers too (the import had cleared the
    count before the chunk stored it again). An import and the numbering of a chunk now run one at a time.
    """
    source_config = sqlite_config.model_copy(update={"storage_path": tmp_path / "source"})
    source = MemoryManager(source_config, clock=clock)
    await source.initialize()
    try:
        await source.remember_messages(said(*(f"turn {n} about parcels" for n in range(8))), session_id="s")
        export = tmp_path / "export.jsonl"
        await source.export_memories(export)
    finally:
        await source.close()
    lines = [line for line in export.read_text(encoding="utf-8").split("\n") if line.strip()]
    later = [line for line in lines if json.loads(line)["metadata"]["turn_index"] >= 3]  # turns 3 to 7
    export.write_text("\n".join(later) + "\n", encoding="utf-8")

    first = MemoryManager(sqlite_config, clock=clock)
    await first.initialize()
    await first.remember_messages(said("hello", "hi", "my parcel is late"), session_id="s")  # turns 0 to 2
    if not counted_before:
        await first.close()
        first = MemoryManager(sqlite_config, clock=clock)
        await first.initialize()
    try:
        waiting = lambda lock: len(lock._waiters or ())  # noqa: E731
        async with first._write_lock:  # a write in progress (a flush, an overflow move)
            import_task = asyncio.create_task(first.import_memories(export))
            await until(lambda: waiting(first._write_lock) == 1)  # the import waits to write
            remember = asyncio.create_task(first.remember_messages(said("while importing"), session_id="s"))
            # the turn waits too: numbered already and waiting to write (or waiting to be numbered)
            await until(lambda: waiting(first._write_lock) == 2 or waiting(first._turn_lock) == 1)
        await import_task
        during = await remember
        after = await first.remember_messages(said("after the import"), session_id="s")
        numbers = sorted(copy.turn_index for copy in await first.stored_copies() if copy.session_id == "s")
        # the import ran first: the turns after it continue after its numbers, each its own
        assert [during[0].turn_index, after[0].turn_index] == [8, 9], numbers
        assert numbers == list(range(10))
    finally:
        await first.close()
