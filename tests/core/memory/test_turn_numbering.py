"""Conversation turn numbers continue across restarts (issue 18, item 7).

Turn indices used to be counted from 0 in every process, so a second run of a conversation session wrote
turns 0, 1, ... again: two memories claimed each turn, and the neighbour feature (a turn scores with its
previous and next turn) joined turns of different runs. Each (user, session) now continues from the
highest turn index stored, in a new manager on the same storage, on both backends.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory
from context_manager.core.messages import Message
from tests.core.memory.conftest import FakeClock


def turns(memories: list[Memory]) -> dict[tuple[str | None, str], list[tuple[int, str]]]:
    """(turn index, content) of every conversation memory, per (user, session), in turn order."""
    found: dict[tuple[str | None, str], set[tuple[int, str]]] = defaultdict(set)
    for memory in memories:
        if memory.session_id is not None and memory.turn_index is not None:
            found[(memory.user_id, memory.session_id)].add((memory.turn_index, memory.content))
    return {key: sorted(values) for key, values in found.items()}


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
