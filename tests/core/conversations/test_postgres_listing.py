"""list_conversations() without a user on PostgreSQL reads one page through an index (migration 0013)."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from context_manager.core.conversations.postgres_store import PostgresConversationStore
from context_manager.core.memory.postgres.database import PostgresDatabase
from context_manager.core.memory.postgres.schema import MIGRATIONS

_LISTING = (
    "SELECT id, version, created_at, updated_at, owner FROM cm_conversations "
    "ORDER BY updated_at DESC, id LIMIT 20"
)


async def _migrated(dsn: str, *, before: str | None = None) -> PostgresDatabase:
    database = PostgresDatabase(dsn, pool_size=2)
    await database.open()
    await database.migrate([m for m in MIGRATIONS if before is None or m[0] < before])
    return database


async def test_listing_everyones_recent_conversations_reads_one_page(postgres_dsn: str) -> None:
    """With 50,000 conversations, a page of recent chats (limit=20) scanned the whole table and sorted it
    (15-20 ms, growing with every conversation): the only index was (owner, updated_at). A schema of the
    earlier version gets the index from migration 0013; the listing (ties on updated_at ordered by id) is
    the same."""
    database = await _migrated(postgres_dsn, before="0013")
    await database.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO cm_conversations (id, version, created_at, updated_at, owner) "
            "SELECT 'chat-' || i, 1, 1e9 + i, 1e9 + (i * 7919) % 997, 'user-' || (i % 50) "
            "FROM generate_series(0, 49999) AS i"
        )
        connection.execute("ANALYZE cm_conversations")
    database = await _migrated(postgres_dsn)
    try:
        store = PostgresConversationStore(database)
        expected = sorted(
            ((f"chat-{i}", 1.0e9 + (i * 7919) % 997) for i in range(50_000)),
            key=lambda row: (-row[1], row[0]),
        )
        page = await store.list_conversations(limit=20)
        assert [(info.conversation_id, info.updated_at) for info in page] == expected[:20]
        listed = await store.list_conversations()
        assert [(info.conversation_id, info.updated_at) for info in listed] == expected
        mine = await store.list_conversations("user-7", limit=3)
        assert [info.conversation_id for info in mine] == [
            conversation_id for conversation_id, _ in expected if int(conversation_id[5:]) % 50 == 7
        ][:3]
    finally:
        await database.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        plan = "\n".join(row[0] for row in connection.execute("EXPLAIN " + _LISTING).fetchall())
    assert "Index Scan using cm_conversations_recent" in plan and "Sort" not in plan, plan


async def test_an_invalid_index_left_by_a_failed_concurrent_build_is_built_again(postgres_dsn: str) -> None:
    """docs/postgres.md suggests building the index beforehand with CREATE INDEX CONCURRENTLY on a large
    table; one that failed leaves an invalid index of that name, which the planner never uses and IF NOT
    EXISTS alone would have kept for good."""
    database = await _migrated(postgres_dsn, before="0013")
    await database.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO cm_conversations (id, version, created_at, updated_at, owner) "
            "SELECT 'chat-' || i, 1, 1e9, 1e9 + i, 'same owner' FROM generate_series(0, 999) AS i"
        )
        try:  # fails on the duplicate owners, leaving the index behind, invalid
            connection.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY cm_conversations_recent ON cm_conversations (owner)"
            )
        except psycopg.errors.UniqueViolation:
            pass
        else:  # pragma: no cover - the set-up did not stage what it should
            raise AssertionError("the concurrent build did not fail")
    database = await _migrated(postgres_dsn)
    await database.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        row = connection.execute(
            "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indexrelid = to_regclass('cm_conversations_recent')"
        ).fetchone()
    assert row is not None
    valid, definition = row
    assert valid and "(updated_at DESC, id)" in definition, definition


async def test_a_concurrent_build_still_running_is_left_to_finish(postgres_dsn: str) -> None:
    """An operator building the index beforehand (CREATE INDEX CONCURRENTLY, as docs/postgres.md suggests)
    while a process of this version starts: the build's index is invalid until it ends, and the migration
    dropped it, waiting for the build, which waited for the migration's transaction. PostgreSQL cancelled
    the build as a deadlock, and the migration then built the index locking the table, what the operator
    meant to avoid. The migration now fails saying the build is running; run again after it, it records
    itself."""
    from context_manager.core.errors import StorageError

    database = await _migrated(postgres_dsn, before="0013")
    await database.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO cm_conversations (id, version, created_at, updated_at, owner) "
            "SELECT 'chat-' || i, 1, 1e9, 1e9 + i, 'o' FROM generate_series(0, 999) AS i"
        )
    writer = psycopg.connect(postgres_dsn)  # an append in flight: the build waits for it
    writer.execute("UPDATE cm_conversations SET version = 2 WHERE id = 'chat-1'")
    built: list[str] = []

    def build() -> None:
        try:
            with psycopg.connect(postgres_dsn, autocommit=True) as connection:
                connection.execute(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS cm_conversations_recent "
                    "ON cm_conversations (updated_at DESC, id)"
                )
            built.append("ok")
        except psycopg.Error as error:
            built.append(repr(error))

    thread = threading.Thread(target=build)
    thread.start()
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            for _ in range(200):
                if connection.execute("SELECT to_regclass('cm_conversations_recent')").fetchone() != (None,):
                    break
                await asyncio.sleep(0.05)
        database = PostgresDatabase(postgres_dsn, pool_size=2)
        await database.open()
        # the append ends meanwhile: the build goes on to wait for the transactions older than it
        committing = asyncio.get_running_loop().call_later(1.5, writer.commit)
        try:
            with pytest.raises(StorageError, match="being built"):
                await asyncio.wait_for(database.migrate(MIGRATIONS), 30)
        finally:
            committing.cancel()
            await database.close()
    finally:
        writer.commit()
        writer.close()
        await asyncio.to_thread(thread.join, 60)
    assert built == ["ok"]
    database = await _migrated(postgres_dsn)
    await database.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        row = connection.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('cm_conversations_recent')"
        ).fetchone()
        recorded = connection.execute(
            "SELECT count(*) FROM cm_schema_migrations WHERE name = '0013_conversations_recent'"
        ).fetchone()
    assert row == (True,) and recorded == (1,)


async def test_a_role_not_owning_the_table_records_the_index_built_beforehand(postgres_dsn: str) -> None:
    """docs/postgres.md: build the index beforehand, then upgrade, "the migration finds it and only records
    itself". Not for an application role that does not own ``cm_conversations`` (the docs' set-up where the
    owner migrates from a release step): ``CREATE INDEX IF NOT EXISTS`` checks ownership before existence,
    so its start failed with ``must be owner of table cm_conversations`` though the index was there. It finds
    the index and records the migration; without the index it still fails naming the cause."""
    import uuid

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from context_manager.core.errors import StorageError

    database = await _migrated(postgres_dsn, before="0013")
    await database.close()
    schema = conninfo_to_dict(postgres_dsn)["options"].split("=", 1)[1].split(",")[0]
    name = f"cm_app_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'app'")
            connection.execute(f"GRANT USAGE ON SCHEMA {schema} TO {name}")
            connection.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {name}"
            )
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test server does not let this test create a role")
    application = make_conninfo(postgres_dsn, user=name, password="app")
    try:
        with pytest.raises(StorageError, match="must be owner of table cm_conversations"):
            await _migrated(application)  # no index yet: only the owner can build it
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:  # the operator, beforehand
            connection.execute(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS cm_conversations_recent "
                "ON cm_conversations (updated_at DESC, id)"
            )
        database = await _migrated(application)
        await database.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            recorded = connection.execute(
                "SELECT count(*) FROM cm_schema_migrations WHERE name = '0013_conversations_recent'"
            ).fetchone()
        assert recorded == (1,)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {name}")
            connection.execute(f"DROP ROLE IF EXISTS {name}")


async def test_the_index_of_a_schema_later_on_the_search_path_is_not_taken_for_this_one(
    postgres_dsn: str,
) -> None:
    """The tables are created in the first schema of the DSN's ``search_path`` (docs/postgres.md), and a
    path often names more (``app,public``: pgvector lives in ``public``). Migration 0013 looked for the
    index by its name along the whole path: a store in a schema further on (an earlier install in
    ``public``, another tenant) having it, this schema's conversations got none, and every listing scanned
    and sorted them all. It looks in the schema of this ``cm_conversations``, as ``CREATE INDEX IF NOT
    EXISTS`` did."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.postgres_support import create_schema, drop_schema, server_dsn, with_search_path

    database = await _migrated(postgres_dsn)  # a complete store, its index built, later on the path
    await database.close()
    later = conninfo_to_dict(postgres_dsn)["options"].split("=", 1)[1].split(",")[0]
    first, alone = create_schema()
    try:
        database = await _migrated(alone, before="0013")  # this store, of the earlier version
        await database.close()
        database = await _migrated(with_search_path(server_dsn(), f"{first},{later}"))  # its upgrade
        await database.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            indexes = connection.execute(
                "SELECT schemaname FROM pg_indexes WHERE indexname = 'cm_conversations_recent' "
                "AND schemaname IN (%s, %s) ORDER BY schemaname = %s",
                (first, later, later),
            ).fetchall()
        assert indexes == [(first,), (later,)]
    finally:
        drop_schema(first)
