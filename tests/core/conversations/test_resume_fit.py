"""Resuming a window too large for ``max_tokens`` (compressed to fit as it loads) and long-lived
conversations' snapshots, on a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from context_manager.core.context_window import ContextWindow
from context_manager.core.conversations.persistence import PersistedConversation
from context_manager.core.conversations.replay import fold
from context_manager.core.conversations.sqlite_store import SQLiteConversationStore
from context_manager.core.messages import Message


async def write_wide(store: SQLiteConversationStore, conversation: str, turns: int = 40) -> None:
    """A conversation written with max_tokens=4000: too large for a window of 600."""
    window = ContextWindow(4000)
    persisted = PersistedConversation(store, conversation, window)
    await persisted.open()
    for turn in range(turns):
        await window.add(Message.create("user", f"turn {turn}: the crate {turn} goes to dock {turn % 7}"))
    await persisted.sync()
    await persisted.close()


async def test_an_add_made_while_the_fitting_compression_is_delivered_is_not_taken_for_it(
    tmp_path: Path,
) -> None:
    """reload() compresses a window too large to fit and then waits, out of the window's lock, for the
    eviction hook to take what it evicted. Another task's add in that wait was journaled after the
    compression, and the reload, which took "the last change journaled" for the fitting compression,
    kept the add pending and dropped the compression: storage got the add without the compression the
    window holds (and a fresh reader saw another window than this one's)."""
    store = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
    await store.open()
    try:
        await write_wide(store, "c")
        entered, release = asyncio.Event(), asyncio.Event()
        blocking = False

        async def hook(messages: list[Message]) -> None:
            if blocking:
                entered.set()
                await release.wait()

        window = ContextWindow(600, eviction_hook=hook)
        conversation = PersistedConversation(store, "c", window)
        await conversation.open()  # compressed to fit (pending)
        assert len(window.compression_history) == 1
        blocking = True
        reloading = asyncio.create_task(conversation.reload())
        await asyncio.wait_for(entered.wait(), 10)  # compressed to fit again, delivering its evictions
        since = conversation.check_writable()
        await window.add(Message.create("user", "added while the evictions are delivered"))
        release.set()
        await reloading
        await conversation.sync(since=since)  # acknowledged: stored
        assert conversation.pending == 0
        stored = fold(await store.load("c"))
        assert [m.to_dict() for m in stored.messages] == [m.to_dict() for m in window.messages]
        assert stored.history == [record.to_dict() for record in window.compression_history]
        assert window.messages[-1].content == "added while the evictions are delivered"
        await conversation.close()
    finally:
        await store.close()
