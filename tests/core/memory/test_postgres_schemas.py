"""PostgreSQL stores in several schemas of one database, and opening a pool on a server that never answers.

The tables of a store live in the first schema of the connection's ``search_path`` (docs/postgres.md); a
later schema of the path (``tenant_b,public``: pgvector's type lives in ``public``) may hold another store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import StorageError
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.postgres import PostgresDatabase
from context_manager.core.memory.postgres.backend import PostgresBackend
from context_manager.core.memory.postgres.schema import VECTOR_MIGRATIONS


def _config(dsn: str) -> ContextManagerConfig:
    return ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn)  # type: ignore[arg-type]


def _path_dsn(*schemas: str) -> str:
    from tests.postgres_support import server_dsn

    base = server_dsn()
    option = quote("-csearch_path=" + ",".join(schemas), safe="")
    return f"{base}{'&' if '?' in base else '?'}options={option}"


@pytest.fixture
def two_schemas(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    """``(first, second)``: two fresh schemas (no store in either yet)."""
    from tests.postgres_support import create_schema, drop_schema

    first, _ = create_schema()
    second, _ = create_schema()
    try:
        yield first, second
    finally:
        drop_schema(first)
        drop_schema(second)


async def _tables(schema: str) -> set[str]:
    import psycopg

    from tests.postgres_support import server_dsn

    async with await psycopg.AsyncConnection.connect(server_dsn(), autocommit=True) as connection:
        cursor = await connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        return {row[0] for row in await cursor.fetchall()}


async def test_a_store_in_a_later_schema_of_the_path_is_not_taken_for_the_first_ones(
    two_schemas: tuple[str, str],
) -> None:
    """With ``search_path=tenant_b,tenant_a`` and a store in tenant_a, the migrations found tenant_a's
    ``cm_schema_migrations`` and created nothing in tenant_b: every read and write then went to tenant_a's
    store (tenants mixed)."""
    tenant_a, tenant_b = two_schemas
    async with MemoryManager(_config(_path_dsn(tenant_a, "public"))) as first:
        await first.add_memory("the harbour master of tenant A")
    async with MemoryManager(_config(_path_dsn(tenant_b, tenant_a, "public"))) as second:
        assert (await second.get_memory_stats())["total_memories"] == 0
        assert await second.search_memory("harbour master") == []
        await second.add_memory("the lighthouse keeper of tenant B")
    assert {"cm_memories", "cm_schema_migrations", "cm_conversations"} <= await _tables(tenant_b)
    async with MemoryManager(_config(_path_dsn(tenant_a, "public"))) as first:
        contents = [m.content for m in await first.search_memory("keeper harbour")]
        assert contents == ["the harbour master of tenant A"]
        assert (await first.get_memory_stats())["total_memories"] == 1


async def test_the_vector_table_of_a_later_schema_is_not_read_as_this_stores(
    two_schemas: tuple[str, str],
) -> None:
    """A store without vectors yet (no embedder so far) listed, counted and deleted from the vector table
    of a store in a later schema of its path."""
    tenant_a, tenant_b = two_schemas
    other = PostgresDatabase(_path_dsn(tenant_a, "public"), pool_size=1)
    await other.open()
    try:
        await other.migrate(VECTOR_MIGRATIONS)

        async def insert(connection: Any) -> None:
            await connection.execute(
                "INSERT INTO cm_memory_vectors VALUES ('shared-id', '', 'their-model', 3, '[1,2,3]')"
            )

        await other.run(insert, "vector insert")
        backend = PostgresBackend(PostgresDatabase(_path_dsn(tenant_b, tenant_a, "public"), pool_size=1))
        await backend.open()
        try:
            assert await backend.vector_models() == []
            before = (await backend.size())["database"]
            await backend.forget(["shared-id"])
            assert (await backend.size())["database"] == before
        finally:
            await backend.close()

        async def count(connection: Any) -> int:
            cursor = await connection.execute("SELECT count(*) FROM cm_memory_vectors")
            row = await cursor.fetchone()
            return int(row[0])

        assert await other.run(count, "vector count") == 1  # tenant A's vector was not deleted
    finally:
        await other.close()


async def test_the_vector_table_size_is_this_stores_own(two_schemas: tuple[str, str]) -> None:
    tenant_a, tenant_b = two_schemas
    other = PostgresDatabase(_path_dsn(tenant_a, "public"), pool_size=1)
    await other.open()
    try:
        await other.migrate(VECTOR_MIGRATIONS)
        backend = PostgresBackend(PostgresDatabase(_path_dsn(tenant_b, tenant_a, "public"), pool_size=1))
        await backend.open()
        try:

            async def own_size(connection: Any) -> int:
                cursor = await connection.execute(
                    "SELECT pg_total_relation_size(format('%I.cm_memories', current_schema())::regclass)"
                )
                row = await cursor.fetchone()
                return int(row[0])

            assert (await backend.size())["database"] == await backend.database.run(own_size, "size")
        finally:
            await backend.close()
    finally:
        await other.close()


async def test_migrations_of_two_schemas_do_not_wait_for_each_other(two_schemas: tuple[str, str]) -> None:
    """The migration lock was one key for the whole database: a long migration of one schema held up the
    start of every store in the others. Two workers on the same schema must still take turns."""
    tenant_a, tenant_b = two_schemas
    slow = [("9001_slow", ["SELECT pg_sleep(2)"])]
    quick = [("9002_quick", ["SELECT 1"])]
    databases = [PostgresDatabase(_path_dsn(schema, "public"), pool_size=1) for schema in two_schemas]
    same = PostgresDatabase(_path_dsn(tenant_a, "public"), pool_size=1)
    for database in (*databases, same):
        await database.open()
    try:
        slow_migration = asyncio.ensure_future(databases[0].migrate(slow))
        await asyncio.sleep(0.5)  # it holds tenant A's lock now
        started = time.monotonic()
        assert await databases[1].migrate(quick) == ["9002_quick"]
        assert time.monotonic() - started < 1.0  # tenant B's did not wait for tenant A's
        started = time.monotonic()
        assert await same.migrate(quick) == ["9002_quick"]
        assert time.monotonic() - started > 0.8  # tenant A's second worker waited for the first
        assert await slow_migration == ["9001_slow"]
    finally:
        for database in (*databases, same):
            await database.close()


async def test_a_store_in_public_with_the_default_path_keeps_working(postgres_dsn: str) -> None:
    """The store a default ``search_path`` (``"$user", public``) found stays where it is (public here is
    this test's schema standing first in the path, as public does by default)."""
    async with MemoryManager(_config(postgres_dsn)) as manager:
        await manager.add_memory("a note in the first schema")
    async with MemoryManager(_config(postgres_dsn)) as manager:
        assert [m.content for m in await manager.search_memory("note")] == ["a note in the first schema"]


# -- opening a pool on a server that never answers -------------------------------------------------------


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung server, a black-holing proxy)."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for writer in accepted:
            writer.close()


@pytest.mark.parametrize("connect_timeout", [2.5, 3.0])
async def test_opening_on_a_server_that_never_answers_fails_within_the_connect_timeout(
    connect_timeout: float,
) -> None:
    """The open waited ``connect_timeout`` and then one more direct attempt of up to 2 s (for the
    server's reason), which a server that never answers let run out. (libpq waits at least 2 s for a
    connection, whatever its ``connect_timeout``: shorter timeouts are not tested.)"""
    async with _silent_server() as port:
        database = PostgresDatabase(
            f"postgresql://app@127.0.0.1:{port}/app?sslmode=disable", connect_timeout=connect_timeout
        )
        started = time.monotonic()
        with pytest.raises(StorageError, match="cannot connect to PostgreSQL"):
            await database.open()
        elapsed = time.monotonic() - started
    assert connect_timeout - 0.1 < elapsed < connect_timeout + 0.4, elapsed


async def test_a_refused_login_still_says_why_within_the_connect_timeout(postgres_dsn: str) -> None:
    """The direct attempt that reports the server's reason (a role that does not exist) is kept."""
    import psycopg

    wrong = psycopg.conninfo.make_conninfo(postgres_dsn, user="no_such_role_here")
    database = PostgresDatabase(wrong, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StorageError, match='role "no_such_role_here" does not exist'):
        await database.open()
    assert time.monotonic() - started < 1.4


async def test_a_migration_cancelled_while_its_schema_is_locked_keeps_no_lock(
    two_schemas: tuple[str, str],
) -> None:
    """The earlier releases' lock (taken shared) and the schema's were taken by one statement: a worker
    cancelled while waiting for the schema's (an ``asyncio.wait_for`` around the start, another worker
    migrating) kept the shared one on its pooled connection, and a process of an earlier release, which
    takes that lock alone, then waited for it as long as that connection lived."""
    import psycopg

    from tests.postgres_support import server_dsn

    tenant_a, _ = two_schemas
    first = PostgresDatabase(_path_dsn(tenant_a, "public"), pool_size=1)
    second = PostgresDatabase(_path_dsn(tenant_a, "public"), pool_size=1)
    for database in (first, second):
        await database.open()
    try:
        slow_migration = asyncio.ensure_future(first.migrate([("9001_slow", ["SELECT pg_sleep(1.5)"])]))
        await asyncio.sleep(0.5)  # it holds tenant A's lock now
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(second.migrate([("9002_quick", ["SELECT 1"])]), 0.3)
        assert await slow_migration == ["9001_slow"]
        async with await psycopg.AsyncConnection.connect(server_dsn(), autocommit=True) as earlier_release:
            cursor = await earlier_release.execute("SELECT pg_try_advisory_lock(%s)", (0x636D5F6D6967,))
            assert (await cursor.fetchone() or (False,))[0]  # nobody holds the earlier releases' lock
            await earlier_release.execute("SELECT pg_advisory_unlock(%s)", (0x636D5F6D6967,))
        assert await second.migrate([("9002_quick", ["SELECT 1"])]) == ["9002_quick"]
    finally:
        for database in (first, second):
            await database.close()
