"""list_conversations(before=...): the next page of a chat list, on SQLite and PostgreSQL.

list_conversations() took only ``limit``: a web chat list showed the 20 most recent chats and could not
fetch the next 20. ``before=`` the last conversation of a page (keyset paging on the listing's order,
``updated_at DESC, id``) returns the next page; paging lists each conversation once, ties included.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_manager import ContextManagerConfig, EnhancedContextManager, SyncContextManager
from context_manager.core.conversations.postgres_store import PostgresConversationStore
from context_manager.core.conversations.sqlite_store import CONVERSATIONS_FILE_NAME, SQLiteConversationStore
from context_manager.core.conversations.store import ConversationInfo, listing_query
from context_manager.core.errors import ContextManagerError, InvalidArgumentError
from context_manager.core.memory.postgres.database import PostgresDatabase
from context_manager.core.memory.postgres.schema import MIGRATIONS

Row = tuple[str, float, str | None]  # id, updated_at, owner

# few distinct times: many ties, which must neither be skipped nor repeated
TIMES = [1.0e9, 1.0e9 + 0.5, 1.0e9 + 1.0, 1.7e9 + 0.123456789]
rows_strategy = st.lists(
    st.tuples(
        st.text(alphabet="ab-é9", min_size=1, max_size=4),
        st.sampled_from(TIMES),
        st.sampled_from([None, "ana", "bo"]),
    ),
    max_size=14,
    unique_by=lambda row: row[0],
)


def expected_order(rows: list[Row], user_id: str | None) -> list[str]:
    mine = [row for row in rows if user_id is None or row[2] == user_id]
    return [row[0] for row in sorted(mine, key=lambda row: (-row[1], row[0]))]


async def page_through(store: Any, user_id: str | None, limit: int) -> list[str]:
    listed: list[ConversationInfo] = []
    page = await store.list_conversations(user_id, limit=limit)
    while page:
        assert len(page) <= limit
        listed.extend(page)
        last = page[-1]
        page = await store.list_conversations(
            user_id, limit=limit, before=(last.updated_at, last.conversation_id)
        )
    return [info.conversation_id for info in listed]


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, limit=st.integers(1, 5), user_id=st.sampled_from([None, "ana"]))
def test_paging_through_sqlite_lists_each_conversation_once_in_order(
    rows: list[Row], limit: int, user_id: str | None
) -> None:
    async def run(directory: Path) -> None:
        path = directory / "conversations.sqlite3"
        store = SQLiteConversationStore(path)
        await store.open()
        try:
            with sqlite3.connect(path) as db:
                db.executemany(
                    "INSERT INTO conversations (id, version, created_at, updated_at, owner) "
                    "VALUES (?, 1, 1.0, ?, ?)",
                    rows,
                )
            db.close()
            assert await page_through(store, user_id, limit) == expected_order(rows, user_id)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, limit=st.integers(1, 5), user_id=st.sampled_from([None, "ana"]))
def test_paging_through_postgres_lists_each_conversation_once_in_order(
    postgres_dsn: str, rows: list[Row], limit: int, user_id: str | None
) -> None:
    async def run() -> None:
        database = PostgresDatabase(postgres_dsn, pool_size=1)
        await database.open()
        try:
            await database.migrate(MIGRATIONS)
            with psycopg.connect(postgres_dsn, autocommit=True) as connection:
                connection.execute("DELETE FROM cm_conversations")
                with connection.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO cm_conversations (id, version, created_at, updated_at, owner) "
                        "VALUES (%s, 1, 1.0, %s, %s)",
                        rows,
                    )
            store = PostgresConversationStore(database)
            assert await page_through(store, user_id, limit) == expected_order(rows, user_id)
        finally:
            await database.close()

    asyncio.run(run())


def _page_query(placeholder: str, table: str) -> tuple[str, tuple[Any, ...]]:
    """The statement the store runs for a next page of 20 (all users)."""
    return listing_query(table, None, (1.0e9 + 500.0, "chat-77"), 20, placeholder)


def test_a_next_page_on_sqlite_reads_the_recent_index_without_sorting(tmp_path: Path) -> None:
    async def create() -> None:
        store = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
        await store.open()
        await store.close()

    asyncio.run(create())
    with sqlite3.connect(tmp_path / "conversations.sqlite3") as db:
        db.executemany(
            "INSERT INTO conversations (id, version, created_at, updated_at, owner) VALUES (?, 1, 1.0, ?, ?)",
            [(f"chat-{i}", 1.0e9 + (i * 7919) % 997, f"user-{i % 50}") for i in range(5_000)],
        )
        db.execute("ANALYZE")
        query, parameters = _page_query("?", "conversations")
        plan = " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + query, parameters))
    db.close()
    assert "USING INDEX conversations_recent (updated_at<?)" in plan and "TEMP B-TREE" not in plan, plan


async def test_a_next_page_on_postgres_reads_the_recent_index_without_sorting(postgres_dsn: str) -> None:
    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    await database.migrate(MIGRATIONS)
    await database.close()
    query, parameters = _page_query("%s", "cm_conversations")
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO cm_conversations (id, version, created_at, updated_at, owner) "
            "SELECT 'chat-' || i, 1, 1e9, 1e9 + (i * 7919) % 997, 'user-' || (i % 50) "
            "FROM generate_series(0, 49999) AS i"
        )
        connection.execute("ANALYZE cm_conversations")
        rows = connection.execute("EXPLAIN " + query, parameters).fetchall()
    plan = "\n".join(row[0] for row in rows)
    assert "Index Scan using cm_conversations_recent" in plan and "Sort" not in plan, plan


@pytest.fixture
def config(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else None

    def make(**options: Any) -> ContextManagerConfig:
        base: dict[str, Any] = {"storage_path": tmp_path / "storage"}
        if dsn is not None:
            base.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
        return ContextManagerConfig(**{**base, **options})

    return make


async def test_a_chat_list_pages_through_a_users_conversations(config: Any) -> None:
    """The manager's listing (one user's conversations): pages of two, each conversation once, newest
    first; the dicts it returned are the cursors; another user's conversations never appear."""
    for number in range(5):
        async with EnhancedContextManager(
            config(), conversation_id=f"ana-{number}", user_id="ana"
        ) as manager:
            await manager.add_message("user", f"chat {number}")
    async with EnhancedContextManager(config(), conversation_id="bo-1", user_id="bo") as manager:
        await manager.add_message("user", "bo's chat")
    async with EnhancedContextManager(config(), user_id="ana") as ana:
        everything = await ana.list_conversations()
        assert [row["conversation_id"] for row in everything] == [f"ana-{n}" for n in range(4, -1, -1)]
        pages = [await ana.list_conversations(limit=2)]
        while pages[-1]:
            pages.append(await ana.list_conversations(limit=2, before=pages[-1][-1]))
        assert [[row["conversation_id"] for row in page] for page in pages] == [
            ["ana-4", "ana-3"],
            ["ana-2", "ana-1"],
            ["ana-0"],
            [],
        ]
        # the two fields a web client sends back are enough (a JSON round trip keeps the float exact)
        cursor = {"updated_at": everything[1]["updated_at"], "conversation_id": "ana-3"}
        assert await ana.list_conversations(before=cursor) == everything[2:]
        # a conversation changed meanwhile moves to the first page: the next pages do not repeat it
        async with EnhancedContextManager(config(), conversation_id="ana-1", user_id="ana") as manager:
            await manager.add_message("user", "back to chat 1")
        assert [row["conversation_id"] for row in await ana.list_conversations(before=pages[0][-1])] == [
            "ana-2",
            "ana-0",
        ]


@pytest.mark.parametrize(
    "before",
    [
        "ana-3",
        ("2026-01-01", "ana-3"),
        {"conversation_id": "ana-3"},
        {"updated_at": "1700000000", "conversation_id": "ana-3"},
        {"updated_at": float("nan"), "conversation_id": "ana-3"},
        {"updated_at": True, "conversation_id": "ana-3"},
        {"updated_at": 10**400, "conversation_id": "ana-3"},
        {"updated_at": 1.7e9, "conversation_id": 3},
        # what no conversation id holds (a web client's JSON can carry them): refused, not a codec error
        {"updated_at": 1.7e9, "conversation_id": "\ud800"},
        {"updated_at": 1.7e9, "conversation_id": "ana\x003"},
    ],
)
async def test_a_bad_cursor_is_refused_saying_what_is_allowed(config: Any, before: Any) -> None:
    async with EnhancedContextManager(config(), conversation_id="ana-3") as manager:
        await manager.add_message("user", "hello")
        with pytest.raises(InvalidArgumentError) as caught:
            await manager.list_conversations(limit=2, before=before)
        assert isinstance(caught.value, ContextManagerError)
        assert caught.value.field == "before"
        assert "the last conversation of the previous page" in str(caught.value)
        assert [row["conversation_id"] for row in await manager.list_conversations()] == ["ana-3"]


def test_the_sync_facade_pages_too(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "storage")
    with SyncContextManager(config, conversation_id="one") as manager:
        manager.add_message("user", "first")
    with SyncContextManager(config, conversation_id="two") as manager:
        manager.add_message("user", "second")
        first = manager.list_conversations(limit=1)
        assert [row["conversation_id"] for row in first] == ["two"]
        rest = manager.list_conversations(limit=1, before=first[-1])
        assert [row["conversation_id"] for row in rest] == ["one"]
        assert manager.list_conversations(before=rest[-1]) == []
        with pytest.raises(InvalidArgumentError, match="before"):
            manager.list_conversations(before="one")
    assert (tmp_path / "storage" / CONVERSATIONS_FILE_NAME).exists()
