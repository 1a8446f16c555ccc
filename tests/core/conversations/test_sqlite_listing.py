"""list_conversations(user_id=...) on SQLite reads one user's rows through an index."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.conversations.sqlite_store import SQLiteConversationStore
from context_manager.core.conversations.store import listing_query


async def test_listing_one_users_conversations_does_not_scan_everyones(tmp_path: Path) -> None:
    """With 50,000 conversations of 500 users, listing one user's scanned the whole table and sorted it
    (3 ms, growing with every user's conversations; a "my chats" page of a web app runs it per request):
    there was no index on the owner. A database written before has it from its next open; the listing is
    the same."""
    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:  # a database as the earlier version left it: no index
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        for (name,) in indexes.fetchall():
            db.execute(f"DROP INDEX {name}")
        db.executemany(
            "INSERT INTO conversations (id, version, created_at, updated_at, owner) VALUES (?, 1, ?, ?, ?)",
            [(f"chat-{i}", 1.0e9 + i, 1.0e9 + (i * 7919) % 50_000, f"user-{i % 500}") for i in range(50_000)],
        )
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        listed = await store.list_conversations("user-42")
        expected = sorted(
            ((f"chat-{i}", 1.0e9 + (i * 7919) % 50_000) for i in range(42, 50_000, 500)),
            key=lambda row: (-row[1], row[0]),
        )
        assert [(info.conversation_id, info.updated_at) for info in listed] == expected
        assert [info.conversation_id for info in await store.list_conversations("user-42", limit=3)] == [
            row[0] for row in expected[:3]
        ]
        assert await store.list_conversations("nobody") == []
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        # the listing query the store runs for one user, as SQLite plans it
        plan = " / ".join(
            row[3]
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT id, version, created_at, updated_at, owner FROM conversations "
                "WHERE owner = ? ORDER BY updated_at DESC, id",
                ("user-42",),
            )
        )
    assert "SEARCH conversations USING INDEX" in plan and "(owner=?)" in plan, plan


async def test_listing_everyones_recent_conversations_reads_one_page(tmp_path: Path) -> None:
    """list_conversations() without a user (a single-user app's "recent chats", limit=20) scanned all
    50,000 conversations and sorted them for each page: 8-12 ms, growing with every conversation. An index
    in the listing's order makes it read the page (0.06 ms); a database written before gets it on its
    next open, and the listing (ties on updated_at ordered by id) is the same."""
    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:  # a database as the earlier version left it: no index
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        for (name,) in indexes.fetchall():
            db.execute(f"DROP INDEX {name}")
        db.executemany(
            "INSERT INTO conversations (id, version, created_at, updated_at, owner) VALUES (?, 1, ?, ?, ?)",
            [(f"chat-{i}", 1.0e9 + i, 1.0e9 + (i * 7919) % 997, f"user-{i % 50}") for i in range(5_000)],
        )
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        expected = sorted(
            ((f"chat-{i}", 1.0e9 + (i * 7919) % 997) for i in range(5_000)), key=lambda row: (-row[1], row[0])
        )
        listed = await store.list_conversations()
        assert [(info.conversation_id, info.updated_at) for info in listed] == expected
        page = await store.list_conversations(limit=20)
        assert [(info.conversation_id, info.updated_at) for info in page] == expected[:20]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        # the listing query the store runs without a user, as SQLite plans it
        plan = " / ".join(
            row[3]
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT id, version, created_at, updated_at, owner FROM conversations "
                "ORDER BY updated_at DESC, id LIMIT 20"
            )
        )
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan


async def test_a_page_of_one_users_conversations_is_read_in_order_without_sorting(tmp_path: Path) -> None:
    """list_conversations(user_id, limit=20) found the user's rows by the owner index, then sorted all of
    them in a temporary b-tree for every page (EXPLAIN QUERY PLAN: "USE TEMP B-TREE FOR ORDER BY"): a
    "my chats" page cost a sort of every conversation the user has. An index in the listing's order per
    owner reads the page; a database of the earlier version (its owner index) gets it on its next open,
    and the pages (the first, and the next after a cursor) are the same."""
    path = tmp_path / "conversations.sqlite3"
    with sqlite3.connect(path) as db:  # the schema as the earlier version created it, and its indexes
        db.execute(
            "CREATE TABLE conversations (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "snapshot_version INTEGER NOT NULL DEFAULT 0, snapshot TEXT, indexed_version INTEGER NOT NULL "
            "DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL, owner TEXT)"
        )
        db.execute("CREATE INDEX conversations_owner ON conversations (owner)")
        db.execute("CREATE INDEX conversations_recent ON conversations (updated_at DESC, id)")
        rows = [
            (f"chat-{i}", 1.0e9 + i, 1.0e9 + (i * 7919) % 997, None if i % 7 == 0 else f"user-{i % 50}")
            for i in range(20_000)
        ]
        db.executemany(
            "INSERT INTO conversations (id, version, created_at, updated_at, owner) VALUES (?, 1, ?, ?, ?)",
            rows,
        )
    db.close()
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        expected = sorted(
            ((row[0], row[2]) for row in rows if row[3] == "user-3"), key=lambda row: (-row[1], row[0])
        )
        first = await store.list_conversations("user-3", limit=20)
        assert [(info.conversation_id, info.updated_at) for info in first] == expected[:20]
        cursor = (first[-1].updated_at, first[-1].conversation_id)
        second = await store.list_conversations("user-3", limit=20, before=cursor)
        assert [(info.conversation_id, info.updated_at) for info in second] == expected[20:40]
        everyone = await store.list_conversations(limit=5)
        assert [info.conversation_id for info in everyone] == [
            row[0] for row in sorted(rows, key=lambda row: (-row[2], row[0]))[:5]
        ]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plans = []
        for before in (None, cursor):  # the statements the store runs for these pages, as SQLite plans them
            query, parameters = listing_query("conversations", "user-3", before, 20, "?")
            plans.append(" / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + query, parameters)))
    db.close()
    for plan in plans:
        assert "USING INDEX conversations_owner_recent (owner=?" in plan and "TEMP B-TREE" not in plan, plan
    assert "conversations_owner" not in indexes, indexes  # the new index's prefix does its work


async def test_the_snapshot_lives_apart_from_the_row_every_append_updates(tmp_path: Path) -> None:
    """The window's snapshot was a column of the conversations row, which every append updates (version,
    updated_at): SQLite read and wrote the whole snapshot again each time (an append 14 us without one, 114 us
    with an 800 KB one; a loop of adds to a long conversation slowed as its snapshot grew). It is kept in a
    table of its own; a database where an earlier version kept it in the row is moved on open, and resumes
    the same."""
    from context_manager.core.context_window import ContextWindow
    from context_manager.core.conversations.persistence import PersistedConversation
    from context_manager.core.messages import Message

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    window = ContextWindow(4000)
    persisted = PersistedConversation(store, "c", window, snapshot_every=1)
    await persisted.open()
    for number in range(6):
        await window.add(Message.create("user", f"message {number} about the ferry to Porto"))
        await persisted.sync()
    await persisted.close()
    stored = await store.load("c")
    assert stored.snapshot is not None and stored.snapshot_version > 0
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT snapshot FROM conversations WHERE id = 'c'").fetchone() == (None,)
        [(kept,)] = db.execute("SELECT snapshot FROM conversation_snapshots WHERE conversation_id = 'c'")
        # as an earlier version left it: the snapshot in the row, no snapshot table
        db.execute("UPDATE conversations SET snapshot = ? WHERE id = 'c'", (kept,))
        db.execute("DROP TABLE conversation_snapshots")
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        moved = await store.load("c")
        assert (moved.snapshot, moved.snapshot_version, moved.records) == (
            stored.snapshot,
            stored.snapshot_version,
            stored.records,
        )
        resumed = ContextWindow(4000)
        await PersistedConversation(store, "c", resumed).open()
        assert [message.content for message in resumed.messages] == [
            message.content for message in window.messages
        ]
        dump = await store.dump("c")
        assert dump is not None and dump.snapshot == stored.snapshot
        assert await store.delete("c")
        await store.restore(dump)  # a copy between stores keeps it apart too
        assert (await store.load("c")).snapshot == stored.snapshot
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM conversations WHERE snapshot IS NOT NULL").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM conversation_snapshots").fetchone() == (1,)
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        assert await store.delete("c")
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM conversation_snapshots").fetchone() == (0,)


async def test_a_conversation_an_earlier_version_deleted_does_not_resume_from_its_snapshot(
    tmp_path: Path,
) -> None:
    """An earlier version's delete (a rollback of a deploy, or a process not yet upgraded) removes the row and
    the records but not the snapshot kept apart: the conversation created again under that id (another
    user's) resumed the deleted one's window from it. A snapshot counts from the first one the row records
    (snapshot_version); the move on open removes such left-overs."""
    from context_manager.core.conversations.store import ConversationRecord

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    version = await store.append("chat-1", 0, [ConversationRecord("noop", {})], writer="w", user_id="ana")
    await store.save_snapshot("chat-1", version, {"messages": [{"content": "ana's window"}], "history": []})
    await store.close()
    with sqlite3.connect(path) as db:  # the earlier version's delete
        db.execute("DELETE FROM conversation_records WHERE conversation_id = 'chat-1'")
        db.execute("DELETE FROM conversations WHERE id = 'chat-1'")
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        await store.append("chat-1", 0, [ConversationRecord("noop", {})], writer="w", user_id="bob")
        stored = await store.load("chat-1")
        assert (stored.snapshot_version, stored.snapshot) == (0, None)
        dump = await store.dump("chat-1")
        assert dump is not None and dump.snapshot is None
    finally:
        await store.close()
    with sqlite3.connect(path) as db:  # an earlier version snapshots another conversation (in its row)
        db.execute("UPDATE conversations SET snapshot = '{}', snapshot_version = 1 WHERE id = 'chat-1'")
        db.execute("INSERT INTO conversation_snapshots VALUES ('deleted-before', '{}')")
    store = SQLiteConversationStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT conversation_id, snapshot FROM conversation_snapshots").fetchall() == [
            ("chat-1", "{}")
        ]


async def test_snapshots_are_moved_one_conversation_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier database's snapshots were moved in one transaction: 28 s for 900 MB of snapshots, during
    which every other process's append (and a second process's open) failed with "database is locked" after
    its 5 s busy_timeout. Each conversation's is moved in a transaction of its own (an interrupted move
    leaves the rest in their rows, read from there and moved on the next open)."""
    from context_manager.core.conversations import sqlite_store

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:  # as an earlier version left them: in the rows
        db.executemany(
            "INSERT INTO conversations (id, version, snapshot_version, snapshot, created_at, updated_at) "
            "VALUES (?, 2, 2, ?, 1.0, 1.0)",
            [(f"c{i}", f'{{"messages": [], "history": [], "n": {i}}}') for i in range(3)],
        )
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", traced)
    store = SQLiteConversationStore(path)
    await store.open()
    monkeypatch.undo()
    try:
        assert statements.count("BEGIN IMMEDIATE") == 3
        for i in range(3):
            stored = await store.load(f"c{i}")
            assert stored.snapshot == {"messages": [], "history": [], "n": i}
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM conversations WHERE snapshot IS NOT NULL").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM conversation_snapshots").fetchone() == (3,)


async def test_snapshots_left_by_an_earlier_delete_are_removed_on_every_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots an earlier version's delete left behind were removed only together with a move of in-row
    snapshots: a database with none to move kept them for ever (its size, and a conversation created again
    under that id found a snapshot that was not its own). Every open now finds them with a read of the two
    id indexes (no write lock when there are none) and removes each; a delete removes its conversation's
    snapshot in its own transaction."""
    from context_manager.core.conversations import sqlite_store
    from context_manager.core.conversations.store import ConversationRecord

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        for name in ("kept", "gone", "deleted-here"):
            version = await store.append(name, 0, [ConversationRecord("noop", {})], writer="w")
            await store.save_snapshot(name, version, {"messages": [], "history": [], "of": name})
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        assert await store.delete("deleted-here")
        store._db.set_trace_callback(None)
        begin, commit = statements.index("BEGIN IMMEDIATE"), statements.index("COMMIT")
        assert any("DELETE FROM conversation_snapshots" in s for s in statements[begin:commit]), statements
    finally:
        await store.close()
    with sqlite3.connect(path) as db:  # an earlier version's delete: the snapshot stays, nothing in a row
        db.execute("DELETE FROM conversation_records WHERE conversation_id = 'gone'")
        db.execute("DELETE FROM conversations WHERE id = 'gone'")
        assert db.execute("SELECT count(*) FROM conversations WHERE snapshot IS NOT NULL").fetchone() == (0,)
        assert sorted(db.execute("SELECT conversation_id FROM conversation_snapshots")) == [
            ("gone",),
            ("kept",),
        ]

    opened: list[list[str]] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        opened.append([])
        connection.set_trace_callback(opened[-1].append)
        return connection

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", traced)
    for _ in range(2):
        store = SQLiteConversationStore(path)
        await store.open()
        try:
            assert (await store.load("kept")).snapshot == {"messages": [], "history": [], "of": "kept"}
        finally:
            await store.close()
    monkeypatch.undo()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT conversation_id FROM conversation_snapshots").fetchall() == [("kept",)]
    assert opened[0].count("BEGIN IMMEDIATE") == 1  # the one left-over, removed
    assert opened[1].count("BEGIN IMMEDIATE") == 0  # none left: the open only read


async def _database_with_an_orphan_snapshot(path: Path) -> None:
    """A conversation and the snapshot of one an earlier version's delete left behind."""
    store = SQLiteConversationStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO conversations (id, version, snapshot_version, created_at, updated_at) "
            "VALUES ('kept', 1, 1, 1, 1)"
        )
        empty = json.dumps({"messages": [], "history": []})
        for name in ("kept", "gone"):
            db.execute("INSERT INTO conversation_snapshots VALUES (?, ?)", (name, empty))


async def test_a_read_only_database_with_an_orphan_snapshot_still_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing an earlier version's left-over snapshot is housekeeping: on a database this process may
    only read, the open failed ("attempt to write a readonly database") where it opened before."""
    from context_manager.core.conversations import sqlite_store

    path = tmp_path / "conversations.sqlite3"
    await _database_with_an_orphan_snapshot(path)
    connect = sqlite3.connect

    def read_only(database: Any, **kwargs: Any) -> sqlite3.Connection:
        return connect(f"file:{database}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", read_only)
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        assert (await store.load("kept")).snapshot == {"messages": [], "history": []}
    finally:
        await store.close()


async def test_an_orphan_snapshot_waits_for_no_other_writer_on_open(tmp_path: Path) -> None:
    """Another process holding the write lock (a long write) made an open that found a left-over snapshot
    wait its busy_timeout (5 s) and then fail ("database is locked"); it opens at once and leaves the
    left-over to a later open."""
    path = tmp_path / "conversations.sqlite3"
    await _database_with_an_orphan_snapshot(path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        store = SQLiteConversationStore(path)
        started = time.perf_counter()
        await store.open()
        try:
            assert time.perf_counter() - started < 2.5
            assert (await store.load("kept")).snapshot == {"messages": [], "history": []}
        finally:
            await store.close()
    finally:
        writer.execute("COMMIT")
        writer.close()
    store = SQLiteConversationStore(path)
    await store.open()  # the lock is free: this open removes it
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT conversation_id FROM conversation_snapshots").fetchall() == [("kept",)]
