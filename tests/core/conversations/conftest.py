"""Fixtures of the conversation tests: a store on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from context_manager.core.conversations.store import ConversationStore

StoreFactory = Callable[[], Awaitable[ConversationStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def open_store(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """Opens stores on one storage (a file, or a PostgreSQL schema): two of them act as two processes."""
    opened: list[Callable[[], Awaitable[None]]] = []

    async def open_one() -> ConversationStore:
        if backend_name == "sqlite":
            from context_manager.core.conversations.sqlite_store import SQLiteConversationStore

            store: ConversationStore = SQLiteConversationStore(tmp_path / "conversations.sqlite3")
            await store.open()
            opened.append(store.close)
            return store
        from context_manager.core.conversations.postgres_store import PostgresConversationStore
        from context_manager.core.memory.postgres.database import PostgresDatabase
        from context_manager.core.memory.postgres.schema import MIGRATIONS

        database = PostgresDatabase(request.getfixturevalue("postgres_dsn"), pool_size=2)
        await database.open()
        await database.migrate(MIGRATIONS)
        opened.append(database.close)
        store = PostgresConversationStore(database)
        await store.open()
        return store

    try:
        yield open_one
    finally:
        for close in reversed(opened):
            await close()
