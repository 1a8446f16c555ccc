"""Property: whatever happens to a persisted window, replaying its stored records rebuilds it exactly.

Random sequences of adds (plain, priorities, tool calls answered at once or after other messages), batches
(``extend``), pins and unpins and explicit compressions run on a small window journaled to a real SQLite
store; after every step the fold of what is stored equals the window: the messages field by field (ids,
timestamps, token counts, metadata), their order, the compression history and the token total, and the
messages the window queued for memory are the ones the replay would queue.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_manager.core.context_window import CompressionRecord, ContextWindow
from context_manager.core.conversations.persistence import PersistedConversation
from context_manager.core.conversations.replay import fold
from context_manager.core.conversations.sqlite_store import SQLiteConversationStore
from context_manager.core.messages import Message, ToolCall

WORDS = ["parcel", "Oslo", "invoice", "refund", "crate", "gate", "ticket", "north", "blue", "seven"]

step = st.one_of(
    st.tuples(
        st.just("say"),
        st.sampled_from(["user", "assistant"]),
        st.integers(1, 60),
        st.sampled_from(["low", "normal", "high"]),
    ),
    st.tuples(st.just("call"), st.integers(1, 3), st.booleans(), st.integers(1, 40)),
    st.tuples(st.just("batch"), st.integers(1, 6), st.integers(1, 80)),
    st.tuples(st.just("pin"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("compress"), st.integers(40, 300)),
)


def text(seed: int, length: int) -> str:
    return " ".join(WORDS[(seed * 7 + i) % len(WORDS)] + str(i) for i in range(length))


async def apply(window: ContextWindow, action: tuple[Any, ...], counter: list[int]) -> None:
    counter[0] += 1
    n = counter[0]
    kind = action[0]
    if kind == "say":
        await window.add(Message.create(action[1], text(n, action[2]), priority=action[3]))
    elif kind == "call":
        calls = [ToolCall(id=f"c{n}-{i}", name="lookup", arguments={"n": i}) for i in range(action[1])]
        await window.add(Message.create("assistant", "", tool_calls=calls))
        if action[2]:  # the user speaks before the results arrive: they go right after the call
            await window.add(Message.create("user", text(n, 5)))
        for call in calls:
            await window.add(Message.create("tool", text(n, action[3]), tool_call_id=call.id))
    elif kind == "batch":
        await window.extend(
            [
                Message.create("user" if i % 2 else "assistant", text(n + i, action[2]))
                for i in range(action[1])
            ]
        )
    elif kind == "pin":
        candidates = [m for m in window.messages if m is not window.summary]
        if candidates:
            target = candidates[action[1] % len(candidates)]
            if action[2]:
                window.pin(target.id)
            else:
                window.unpin(target.id)
    else:
        await window.compress(action[1])


def state_of(window: ContextWindow) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    return (
        [m.to_dict() for m in window.messages],
        [record.to_dict() for record in window.compression_history],
        window.token_count,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(step, min_size=1, max_size=30), snapshot_every=st.sampled_from([0, 3]))
def test_replaying_the_stored_records_rebuilds_the_window(
    actions: list[tuple[Any, ...]], snapshot_every: int
) -> None:
    async def run(directory: Path) -> None:
        store = SQLiteConversationStore(directory / "conversations.sqlite3")
        await store.open()
        try:
            window = ContextWindow(500, summary_max_tokens=60)
            conversation = PersistedConversation(store, "p", window, snapshot_every=snapshot_every)
            await conversation.open()
            counter = [0]
            for action in actions:
                try:
                    await apply(window, action, counter)
                except Exception as error:  # a rejected change (too big to fit) must leave nothing behind
                    assert type(error).__name__ == "ContextBudgetError", error
                await conversation.sync()
                await conversation._wait_background()
                replayed = fold(await store.load("p"))
                rebuilt = ContextWindow(500, summary_max_tokens=60)
                await rebuilt.restore(replayed.messages, [CompressionRecord(**e) for e in replayed.history])
                assert state_of(rebuilt) == state_of(window)
                assert rebuilt.pending_tool_calls == window.pending_tool_calls
                # nothing reached memory (no memory here): the replay queues for memory exactly what the
                # window queued, the full originals of the messages it cut, never a cut copy
                assert [m.to_dict() for m in replayed.unindexed] == [
                    m.to_dict() for m in window.evicted_messages
                ]
            await conversation.close()
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))
