"""Resuming a window too large for ``max_tokens`` (compressed to fit as it loads) and long-lived
conversations' snapshots, on a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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
    window holds (and a fresh reader saw another window than this one's). (After a refused write the
    conversation is stale until its reload ends: an add in that wait is refused before it is made.)"""
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


async def test_a_reload_cancelled_while_the_fitting_compression_is_delivered_still_ends(
    tmp_path: Path,
) -> None:
    """reload() cancelled (a timeout around it) while it waited for the eviction hook: the window already
    held the version loaded, compressed to fit, but the conversation still said it was at the version
    before, so the next add met a conflict with a change the window had already loaded (and the
    compression fitted to it was dropped and made again). The reload ends first, then the cancellation
    is raised."""
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
        await conversation.open()
        await conversation.sync()  # the compression fitting the window, stored
        other = ContextWindow(4000)
        writer = PersistedConversation(store, "c", other)
        await writer.open()
        for turn in range(30):  # another worker's turns: too large for 600 tokens again
            await other.add(Message.create("assistant", f"reply {turn}: crate {turn} left dock {turn % 7}"))
        await writer.sync()
        await writer.close()
        blocking = True
        reloading = asyncio.create_task(conversation.reload())
        await asyncio.wait_for(entered.wait(), 10)
        reloading.cancel()
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await reloading
        assert window.messages[-1].content == "reply 29: crate 29 left dock 1"
        assert conversation.version == writer.version
        since = conversation.check_writable()
        await window.add(Message.create("user", "after the cancelled reload"))
        await conversation.sync(since=since)  # no conflict: the window is at the stored version
        stored = fold(await store.load("c"))
        assert [m.to_dict() for m in stored.messages] == [m.to_dict() for m in window.messages]
        assert stored.history == [record.to_dict() for record in window.compression_history]
        await conversation.close()
    finally:
        await store.close()


async def test_a_reload_under_a_timeout_does_not_wait_for_a_slow_eviction_hook(tmp_path: Path) -> None:
    """reload() under a caller's timeout, loading a window compressed to fit while the eviction hook is
    slow (an archive to a remote store): the reload ran to its end whatever its caller asked, so the
    timeout around it waited as long as the hook (and as long as a slow storage read). It stops at the
    cancellation now, the window and the conversation both at the version loaded; the hook goes on by
    itself."""
    store = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
    await store.open()
    try:
        await write_wide(store, "c")
        entered, release = asyncio.Event(), asyncio.Event()
        blocking = False
        delivered: list[str] = []

        async def hook(messages: list[Message]) -> None:
            if blocking:
                entered.set()
                await release.wait()
            delivered.extend(message.id for message in messages)

        window = ContextWindow(600, eviction_hook=hook)
        conversation = PersistedConversation(store, "c", window)
        await conversation.open()
        await conversation.sync()  # the compression fitting the window, stored
        other = ContextWindow(4000)
        writer = PersistedConversation(store, "c", other)
        await writer.open()
        for turn in range(30):  # another worker's turns: too large for 600 tokens again
            await other.add(Message.create("assistant", f"reply {turn}: crate {turn} left dock {turn % 7}"))
        await writer.sync()
        await writer.close()
        blocking = True
        reloading = asyncio.create_task(conversation.reload())
        await asyncio.wait_for(entered.wait(), 10)
        reloading.cancel()
        done, _ = await asyncio.wait({reloading}, timeout=3)
        try:
            assert reloading in done, "the cancelled reload waited for the eviction hook"
            assert reloading.cancelled()
            assert window.messages[-1].content == "reply 29: crate 29 left dock 1"
            assert conversation.version == writer.version
            since = conversation.check_writable()
            await window.add(Message.create("user", "after the cancelled reload"))
            await conversation.sync(since=since)  # no conflict: the window is at the stored version
        finally:
            release.set()
            await asyncio.wait({reloading}, timeout=10)
        await window.flush()  # the hook went on by itself and took the evicted messages
        assert any(message_id not in {m.id for m in window.messages} for message_id in delivered)
        stored = fold(await store.load("c"))
        assert [m.to_dict() for m in stored.messages] == [m.to_dict() for m in window.messages]
        assert stored.history == [record.to_dict() for record in window.compression_history]
        await conversation.close()
    finally:
        await store.close()


async def test_snapshots_of_a_long_lived_conversation_keep_the_newest_compression_records(
    tmp_path: Path,
) -> None:
    """Every snapshot held the whole compression_history: after 2,000 compressions a 575 kB snapshot
    (99% of it history, the window 4 kB), rewritten every snapshot_every records, and resuming ten times
    slower. Snapshots keep the newest SNAPSHOT_HISTORY records; the count of compressions stays right
    after resume (get_context_summary's compression_count), and goes on from there. The live manager keeps
    the same newest records (it kept every one, growing without bound), so its compression_history is the
    same before and after a resume."""
    from context_manager import ContextManagerConfig, EnhancedContextManager

    kept = 100  # SNAPSHOT_HISTORY
    config = ContextManagerConfig(
        storage_path=tmp_path / "storage",
        max_tokens=300,
        compression_ratio=0.9,
        conversation_snapshot_every=40,
    )
    async with EnhancedContextManager(config, conversation_id="long") as manager:
        turn = 0
        while manager.get_context_summary()["compression_count"] < kept + 30:
            await manager.add_message("user", f"turn {turn}: the crate {turn} goes to dock {turn % 7} today")
            turn += 1
        await manager.flush()
        written = manager.compression_history
        count = manager.get_context_summary()["compression_count"]
        # the live manager lists what a resumed one does: the newest records (it used to hold them all)
        assert count >= kept + 30 and len(written) == kept
    store = SQLiteConversationStore(config.resolved_storage_path / "conversations.sqlite3")
    await store.open()
    try:
        stored = await store.load("long")
        assert stored.snapshot is not None and stored.snapshot_version > 0
        assert len(stored.snapshot["history"]) == kept
    finally:
        await store.close()
    async with EnhancedContextManager(config, conversation_id="long") as resumed:
        assert resumed.get_context_summary()["compression_count"] == count
        assert resumed.compression_history == written
        compressions = count
        while resumed.get_context_summary()["compression_count"] == compressions:
            await resumed.add_message("user", f"turn {turn}: the crate {turn} goes to dock {turn % 7} today")
            turn += 1
        assert resumed.compression_history[:-1] == written[1:]
        assert resumed.get_context_summary()["compression_count"] == count + 1
        after = resumed.compression_history
        assert len(after) == kept
    async with EnhancedContextManager(config, conversation_id="long") as again:
        assert again.get_context_summary()["compression_count"] == count + 1
        assert again.compression_history == after
    from context_manager.core.conversations.replay import SNAPSHOT_HISTORY

    assert kept == SNAPSHOT_HISTORY


async def test_a_snapshot_whose_count_of_earlier_compressions_is_damaged_is_refused(tmp_path: Path) -> None:
    """The count of compressions a snapshot no longer lists is checked like the rest of the snapshot."""
    import json
    import sqlite3

    from context_manager.core.errors import StorageCorruptedError

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        window = ContextWindow(4000)
        persisted = PersistedConversation(store, "c", window, snapshot_every=1)
        await persisted.open()
        await window.add(Message.create("user", "hello"))
        await persisted.sync()
        await persisted.close()
        stored = await store.load("c")
        assert stored.snapshot is not None
        for bad in ("x", -1, True, 1.5):
            with sqlite3.connect(path) as db:
                snapshot = {**stored.snapshot, "earlier_compressions": bad}
                db.execute(
                    "UPDATE conversation_snapshots SET snapshot = ? WHERE conversation_id = 'c'",
                    (json.dumps(snapshot),),
                )
            with pytest.raises(StorageCorruptedError, match="earlier_compressions"):
                await PersistedConversation(store, "c", ContextWindow(4000)).open()
        with sqlite3.connect(path) as db:
            snapshot = {**stored.snapshot, "earlier_compressions": 7}
            db.execute(
                "UPDATE conversation_snapshots SET snapshot = ? WHERE conversation_id = 'c'",
                (json.dumps(snapshot),),
            )
        resumed = ContextWindow(4000)
        await PersistedConversation(store, "c", resumed).open()
        assert resumed.compression_count == 7 and resumed.compression_history == []
    finally:
        await store.close()


async def test_reading_within_a_smaller_budget_changes_nothing_stored(tmp_path: Path) -> None:
    """What docs/conversations.md advises for a reader that must not compress the stored window: open it
    with the writers' max_tokens and export with a budget; a reader opened with the smaller max_tokens
    stores its fitting compression at cleanup (the next reader loads it, no summarizer call)."""
    from context_manager import ContextManagerConfig, EnhancedContextManager

    calls: list[int] = []

    async def summarizer(messages: list[Message], budget: int) -> str:
        calls.append(len(messages))
        return f"summary {len(calls)}: earlier turns about crates"

    def config(max_tokens: int) -> ContextManagerConfig:
        return ContextManagerConfig(storage_path=tmp_path / "storage", max_tokens=max_tokens)

    async with EnhancedContextManager(config(4000), conversation_id="w") as writer:
        for turn in range(40):
            await writer.add_message("user", f"turn {turn}: the crate {turn} goes to dock {turn % 7}")
        version, export = writer.conversation_version, writer.get_context(format="openai")
    async with EnhancedContextManager(config(4000), conversation_id="w", summarizer=summarizer) as reader:
        selected = reader.get_context(format="openai", budget=600)
        assert len(selected) < len(export) and selected[-1] == export[-1]
    async with EnhancedContextManager(config(4000), conversation_id="w") as writer:
        assert writer.conversation_version == version
        assert writer.get_context(format="openai") == export
    assert calls == []
    exports = []
    for _ in range(2):
        async with EnhancedContextManager(config(600), conversation_id="w", summarizer=summarizer) as reader:
            exports.append(reader.get_context(format="openai"))
    assert len(calls) == 1 and exports[0] == exports[1]  # stored by the first reader, loaded by the second
    async with EnhancedContextManager(config(4000), conversation_id="w") as writer:
        assert writer.conversation_version == version + 1
