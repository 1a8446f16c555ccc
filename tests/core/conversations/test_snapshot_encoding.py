"""A large window's snapshot is stored without stopping the event loop (real SQLite, real asyncio timing)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from context_manager.core.context_window import ContextWindow
from context_manager.core.conversations.persistence import PersistedConversation
from context_manager.core.conversations.replay import add_record
from context_manager.core.conversations.sqlite_store import SQLiteConversationStore
from context_manager.core.messages import Message
from tests.loop_support import longest_loop_step


def conversation(count: int) -> list[Message]:
    """Users and assistants, a tool call and its answer now and then, metadata, non-ASCII text."""
    messages = []
    for number in range(count):
        if number % 50 == 3:
            message = Message.create(
                "assistant",
                "",
                tool_calls=[{"id": f"call-{number}", "name": "track", "arguments": {"n": number}}],
            )
        elif number % 50 == 4:
            message = Message.create(
                "tool", f"parcel {number}: in Porto ✓", tool_call_id=f"call-{number - 1}"
            )
        else:
            role = "user" if number % 2 == 0 else "assistant"
            message = Message.create(
                role,
                f"message {number}: the ferry to Porto leaves at {number % 24}:00 — ünïcode",
                metadata={"n": number},
            )
        object.__setattr__(message, "token_count", 20)
        messages.append(message)
    return messages


@pytest.mark.parametrize("count", [0, 1, 127, 128, 129, 300])
def test_the_chunked_snapshot_is_the_text_json_dumps_writes(count: int) -> None:
    """The snapshot built and encoded a chunk of messages at a time is the very text of ``json.dumps``."""
    from context_manager.core.conversations.codec import dumps_snapshot
    from context_manager.core.conversations.replay import PendingSnapshot, WindowState

    messages = conversation(count)
    state = WindowState(
        messages=messages,
        history=[{"tokens_before": 10, "tokens_after": 5}],
        unindexed=messages[: count // 3],
        version=7,
        earlier_compressions=2,
    )
    pending = PendingSnapshot(state, "cl100k_base")
    for ascii_only in (True, False):
        expected = json.dumps(pending.to_dict(), ensure_ascii=ascii_only)
        assert pending.to_json(ensure_ascii=ascii_only) == expected
        assert dumps_snapshot(pending.to_dict(), ensure_ascii=ascii_only) == expected
    assert json.loads(pending.to_json())["messages"] == [message.to_dict() for message in messages]


async def test_a_large_windows_snapshot_does_not_stop_the_event_loop(tmp_path: Path) -> None:
    """Snapshots were built off the loop, but as one ``json.dumps`` of the whole window (the C encoder holds
    the GIL throughout) from 3 dicts a message all alive at once (full collections of the cyclic collector):
    at 12,000 messages the loop stood still 120-250 ms, at 24,000 twice that. The messages are now built and
    encoded a chunk at a time: the loop runs between chunks.

    Measured as the process's CPU time (all threads) between two turns of the loop, the best of two: the
    wall-clock pause also counted the time a loaded machine ran other processes (257 and 420 ms at a load
    of 16 on 2 cores, with the chunks: it failed 2 runs of 2), while the CPU time of a thread holding the
    interpreter lock is what the loop waits for, whatever the load."""
    count = 24_000
    store = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
    await store.open()
    try:
        messages = conversation(count)
        await store.append("big", 0, [add_record(message) for message in messages], writer="other")
        window = ContextWindow(10_000_000)
        persisted = PersistedConversation(store, "big", window, snapshot_every=1)
        await persisted.open()
        pauses: list[float] = []
        for attempt in range(2):  # the best of two

            async def snapshot(attempt: int = attempt) -> None:
                await window.add(Message.create("user", f"one more ({attempt})"))
                await persisted.sync()  # stored: the snapshot of this version starts in the background
                await persisted._wait_background()

            _, longest = await longest_loop_step(snapshot, clock=time.process_time)
            pauses.append(longest)
        await persisted.close()
        stored = await store.load("big")
        assert stored.snapshot_version == count + 2 and stored.records == []
        assert stored.snapshot is not None and len(stored.snapshot["messages"]) == count + 2
        assert stored.snapshot["messages"][:count] == [message.to_dict() for message in messages]
        # about 10-16 ms of CPU time with the chunks; 72-82 ms with one json.dumps of the window
        assert min(pauses) < 0.035, pauses
    finally:
        await store.close()


async def test_a_store_of_ones_own_still_gets_the_snapshot_as_json_values(tmp_path: Path) -> None:
    """A ``ConversationStore`` written against the protocol (``state``: JSON values) gets a dict, not the
    built-in stores' ``PendingSnapshot``."""
    inner = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
    received: list[object] = []

    class OwnStore:
        def __getattr__(self, name: str) -> object:
            if name == "encodes_pending_snapshots":
                raise AttributeError(name)
            return getattr(inner, name)

        async def save_snapshot(
            self, conversation_id: str, version: int, state: object, **options: object
        ) -> None:
            received.append(state)
            await inner.save_snapshot(conversation_id, version, json.loads(json.dumps(state)), **options)  # type: ignore[arg-type]

    await inner.open()
    try:
        window = ContextWindow(100_000)
        persisted = PersistedConversation(OwnStore(), "own", window, snapshot_every=2)  # type: ignore[arg-type]
        await persisted.open()
        for message in conversation(4):
            await window.add(message)
            await persisted.sync()
            await persisted._wait_background()  # (one snapshot at a time: the next is not skipped)
        await persisted.close()
        assert received and all(type(state) is dict for state in received)
        stored = await inner.load("own")
        assert stored.snapshot_version == 4 and stored.snapshot is not None
        assert [m["content"] for m in stored.snapshot["messages"]] == [m.content for m in window.messages]
    finally:
        await inner.close()


async def test_a_snapshot_with_keys_json_turns_into_strings_is_stored_as_json(tmp_path: Path) -> None:
    """``json.dumps`` writes a key that is not a string as one (``{"7": ...}``); the chunked encoder wrote it
    bare (``{7: ...}``): not JSON, and the conversation's load then failed on its "damaged" snapshot."""
    from context_manager.core.conversations.codec import dumps_snapshot
    from context_manager.core.conversations.store import ConversationRecord

    odd = {"messages": [0] * 300, 7: "x", None: 1, True: 2, 1.5: 3}
    assert dumps_snapshot(odd) == json.dumps(odd)
    store = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
    await store.open()
    try:
        version = await store.append("c", 0, [ConversationRecord("noop", {})], writer="w")
        await store.save_snapshot("c", version, {"messages": [], "history": [], 7: "x"})  # type: ignore[dict-item]
        assert (await store.load("c")).snapshot == {"messages": [], "history": [], "7": "x"}
    finally:
        await store.close()
