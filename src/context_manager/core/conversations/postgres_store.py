"""``PostgresConversationStore``: persisted conversations in PostgreSQL, shared by many processes and hosts.

``cm_conversations`` holds one row per conversation (its version, the latest snapshot, the indexing
watermark); ``cm_conversation_records`` the records, keyed by ``(conversation_id, version)``. An append
moves the conversation's version forward with a conditional ``UPDATE ... WHERE version = expected`` in the
same transaction as its records: of two writers based on one version exactly one commits, the other gets
:class:`~context_manager.core.errors.ConversationConflictError`. A retried append (the connection dropped
after the commit) recognises its own records by writer and version and does not store them twice.

Times of changes (a conversation's ``updated_at``, its records' ``created_at``) are the server's clock, not
the writer's: the hosts writing one database may disagree on the time, and the listing orders and pages by
``updated_at``. A writer's clock an hour behind listed the conversations it changed an hour down, below
ones changed before them, and moved a conversation's ``updated_at`` back (listed twice when paging). An
append never moves it back (``greatest``: not even when the server's clock steps back). ``created_at`` of a
conversation stays the creating writer's: it is its generation, which the writer keeps to check its writes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from context_manager.core.conversations.codec import loads_records, loads_snapshot
from context_manager.core.conversations.replay import PendingSnapshot, encode_snapshot
from context_manager.core.conversations.store import (
    ConversationDump,
    ConversationInfo,
    ConversationRecord,
    StoredConversation,
    generation_filter,
    listing_query,
)
from context_manager.core.errors import ConversationAccessError, ConversationConflictError

if TYPE_CHECKING:  # pragma: no cover
    import psycopg

    from context_manager.core.memory.postgres.database import PostgresDatabase

__all__ = ["PostgresConversationStore"]

_SERVER_NOW = "extract(epoch FROM now())::double precision"
"""The server's time (seconds since the epoch) at the start of the statement's transaction."""


class _Conflict(Exception):
    def __init__(self, current: int | None) -> None:
        self.current = current


class PostgresConversationStore:
    """Conversations in PostgreSQL (see the module docstring).

    Args:
        database: The pool (shared with the memory backend); its migrations create the tables.
    """

    kind = "postgres"
    encodes_pending_snapshots = True
    """:meth:`save_snapshot` also takes a ``PendingSnapshot`` (see ``conversations.replay``)."""

    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database
        """The connection pool."""

    async def open(self) -> None:
        """Nothing to do: the memory backend opened the pool and applied the migrations."""

    async def close(self) -> None:
        """Nothing to do: the memory backend closes the pool."""

    async def load(self, conversation_id: str) -> StoredConversation:
        """The latest snapshot and the records after it (one consistent read)."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> StoredConversation:
            async with connection.transaction():
                await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor = await connection.execute(
                    "SELECT version, snapshot_version, snapshot::text, indexed_version, created_at, owner "
                    "FROM cm_conversations WHERE id = %s",
                    (conversation_id,),
                )
                row = await cursor.fetchone()
                if row is None:
                    return StoredConversation(conversation_id=conversation_id, version=0)
                version, snapshot_version, snapshot, indexed_version, created_at, owner = row
                cursor = await connection.execute(
                    "SELECT version, kind, payload::text FROM cm_conversation_records "
                    "WHERE conversation_id = %s AND version > %s ORDER BY version",
                    (conversation_id, snapshot_version),
                )
                rows = await cursor.fetchall()
            # one parse, not one per row
            payloads = loads_records(conversation_id, [row[0] for row in rows], [row[2] for row in rows])
            records = [
                (int(record_version), ConversationRecord(kind, payload))
                for (record_version, kind, _), payload in zip(rows, payloads, strict=True)
            ]
            return StoredConversation(
                conversation_id=conversation_id,
                version=int(version),
                snapshot_version=int(snapshot_version),
                snapshot=None
                if snapshot is None
                else loads_snapshot(conversation_id, snapshot_version, snapshot),
                records=records,
                indexed_version=int(indexed_version),
                created_at=float(created_at),
                user_id=owner,
            )

        return await self.database.run(read, "conversation load")

    async def version_of(self, conversation_id: str) -> tuple[int, float] | None:
        """The stored version and generation of a conversation, or ``None``."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> tuple[int, float] | None:
            cursor = await connection.execute(
                "SELECT version, created_at FROM cm_conversations WHERE id = %s", (conversation_id,)
            )
            row = await cursor.fetchone()
            return None if row is None else (int(row[0]), float(row[1]))

        return await self.database.run(read, "conversation version")

    async def append(
        self,
        conversation_id: str,
        expected_version: int,
        records: Sequence[ConversationRecord],
        *,
        writer: str,
        created_at: float | None = None,
        user_id: str | None = None,
    ) -> int:
        """Store records after ``expected_version`` in one transaction; return the new version."""
        from psycopg.types.json import Json

        new_version = expected_version + len(records)
        rows = [
            (conversation_id, expected_version + offset, record.kind, writer, Json(dict(record.payload)))
            for offset, record in enumerate(records, start=1)
        ]
        versions = [row[1] for row in rows]
        kinds = [row[2] for row in rows]
        payloads = [row[4] for row in rows]
        # One statement, one round trip, its own transaction: the version moves only if it still is the
        # expected one (the row lock makes a concurrent writer wait and then miss), and the records go in
        # only if it moved.
        if expected_version == 0:
            move = (
                "INSERT INTO cm_conversations (id, version, created_at, updated_at, owner) "
                f"VALUES (%(id)s, %(new)s, %(created)s, {_SERVER_NOW}, %(owner)s) "
                "ON CONFLICT (id) DO NOTHING RETURNING id"
            )
        else:
            # the same generation: deleted and created again, it may be at our version once more
            generation = "" if created_at is None else " AND created_at = %(created)s"
            move = (
                "UPDATE cm_conversations SET version = %(new)s, "
                f"updated_at = greatest(updated_at, {_SERVER_NOW}) "
                f"WHERE id = %(id)s AND version = %(expected)s{generation} RETURNING id"
            )
        statement = (
            f"WITH moved AS ({move}) "
            "INSERT INTO cm_conversation_records "
            "(conversation_id, version, kind, writer, payload, created_at) "
            f"SELECT moved.id, r.version, r.kind, %(writer)s, r.payload, {_SERVER_NOW} FROM moved, "
            "unnest(%(versions)s::bigint[], %(kinds)s::text[], %(payloads)s::json[]) "
            "AS r(version, kind, payload) RETURNING version"
        )
        parameters = {
            "id": conversation_id,
            "new": new_version,
            "created": time.time() if created_at is None else created_at,
            "expected": expected_version,
            "owner": user_id,
            "writer": writer,
            "versions": versions,
            "kinds": kinds,
            "payloads": payloads,
        }

        async def write(connection: psycopg.AsyncConnection[Any]) -> int:
            cursor = await connection.execute(statement, parameters)
            if not await cursor.fetchall():
                raise _Conflict(
                    await self._settled(connection, conversation_id, expected_version, writer, rows)
                )
            return new_version

        try:
            return await self.database.run(write, "conversation append")
        except _Conflict as conflict:
            if conflict.current == -1:  # our own append, committed before a lost acknowledgement
                return new_version
            raise ConversationConflictError(conversation_id, expected_version, conflict.current) from None

    @staticmethod
    async def _settled(
        connection: psycopg.AsyncConnection[Any],
        conversation_id: str,
        expected_version: int,
        writer: str,
        rows: Sequence[tuple[Any, ...]],
    ) -> int | None:
        """The stored version (0: the conversation is not stored), or -1 when the append already happened.

        -1: the records after ``expected_version`` are exactly these ones, stored by this writer (an append
        retried after its commit's acknowledgement was lost).
        """
        cursor = await connection.execute(
            "SELECT kind, writer, payload FROM cm_conversation_records WHERE conversation_id = %s "
            "AND version > %s AND version <= %s ORDER BY version",
            (conversation_id, expected_version, expected_version + len(rows)),
        )
        stored = await cursor.fetchall()
        wanted = [(row[2], writer, json.loads(json.dumps(row[4].obj))) for row in rows]
        if len(stored) == len(rows) and [tuple(item) for item in stored] == wanted:
            return -1
        cursor = await connection.execute(
            "SELECT version FROM cm_conversations WHERE id = %s", (conversation_id,)
        )
        current = await cursor.fetchone()
        return 0 if current is None else int(current[0])  # deleted: version 0, as on SQLite

    async def save_snapshot(
        self,
        conversation_id: str,
        version: int,
        state: Mapping[str, Any] | PendingSnapshot,
        *,
        created_at: float | None = None,
    ) -> None:
        """Keep ``state`` as the window at ``version`` (only if newer than the stored snapshot)."""
        # in a thread: a large window takes a while (0.3 s at 30,000 messages), which the loop would wait
        payload = await asyncio.to_thread(encode_snapshot, state)
        generation, extra = generation_filter(created_at, "%s")

        async def write(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(
                "UPDATE cm_conversations SET snapshot_version = %s, snapshot = %s::json "
                f"WHERE id = %s AND snapshot_version < %s AND version >= %s{generation}",
                (version, payload, conversation_id, version, version, *extra),
            )

        await self.database.run(write, "conversation snapshot")

    async def mark_indexed(
        self, conversation_id: str, version: int, *, created_at: float | None = None
    ) -> None:
        """Move the indexing watermark forward (never back)."""
        generation, extra = generation_filter(created_at, "%s")

        async def write(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(
                "UPDATE cm_conversations SET indexed_version = greatest(indexed_version, %s) "
                f"WHERE id = %s{generation}",
                (version, conversation_id, *extra),
            )

        await self.database.run(write, "conversation watermark")

    async def list_conversations(
        self,
        user_id: str | None = None,
        *,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[ConversationInfo]:
        """Every conversation (or ``user_id``'s), most recently changed first; the first ``limit`` only.

        With ``before`` (the last one's ``(updated_at, id)``), the ones after it (the next page).
        """
        query, parameters = listing_query("cm_conversations", user_id, before, limit, "%s")

        async def read(connection: psycopg.AsyncConnection[Any]) -> list[ConversationInfo]:
            cursor = await connection.execute(
                query,
                parameters,
            )
            return [
                ConversationInfo(row[0], int(row[1]), float(row[2]), float(row[3]), row[4])
                for row in await cursor.fetchall()
            ]

        return await self.database.run(read, "conversation list")

    async def delete(self, conversation_id: str, *, user_id: str | None = None) -> bool:
        """Delete a conversation and its records (cascade); whether it existed (with ``user_id``: its own)."""

        async def write(connection: psycopg.AsyncConnection[Any]) -> bool:
            if user_id is None:
                cursor = await connection.execute(
                    "DELETE FROM cm_conversations WHERE id = %s RETURNING 1", (conversation_id,)
                )
                return await cursor.fetchone() is not None
            # one statement: the owner read and the delete see the same row
            cursor = await connection.execute(
                "WITH target AS (SELECT id, owner FROM cm_conversations WHERE id = %(id)s FOR UPDATE), "
                "deleted AS (DELETE FROM cm_conversations c USING target t WHERE c.id = t.id "
                "AND (t.owner IS NULL OR t.owner = %(user)s) RETURNING 1) "
                "SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM deleted)",
                {"id": conversation_id, "user": user_id},
            )
            row = await cursor.fetchone()
            assert row is not None
            existed, deleted = row
            if existed and not deleted:
                raise ConversationAccessError(conversation_id, user_id)
            return bool(deleted)

        return await self.database.run(write, "conversation delete")

    # -- copying between stores ----------------------------------------------------------------------

    async def dump(self, conversation_id: str) -> ConversationDump | None:
        """The whole conversation as stored (one consistent read), or ``None``."""

        async def read(connection: psycopg.AsyncConnection[Any]) -> ConversationDump | None:
            async with connection.transaction():
                await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor = await connection.execute(
                    "SELECT version, snapshot_version, snapshot, indexed_version, created_at, updated_at, "
                    "owner FROM cm_conversations WHERE id = %s",
                    (conversation_id,),
                )
                row = await cursor.fetchone()
                if row is None:
                    return None
                cursor = await connection.execute(
                    "SELECT version, kind, writer, payload, created_at FROM cm_conversation_records "
                    "WHERE conversation_id = %s ORDER BY version",
                    (conversation_id,),
                )
                records = [
                    (int(version), kind, writer, payload, float(created_at))
                    for version, kind, writer, payload, created_at in await cursor.fetchall()
                ]
            return ConversationDump(
                conversation_id=conversation_id,
                version=int(row[0]),
                snapshot_version=int(row[1]),
                snapshot=row[2],
                indexed_version=int(row[3]),
                created_at=float(row[4]),
                updated_at=float(row[5]),
                records=records,
                user_id=row[6],
            )

        return await self.database.run(read, "conversation dump")

    async def restore(self, dump: ConversationDump) -> None:
        """Store ``dump`` under its id, replacing what is there, in one transaction."""
        from psycopg.types.json import Json

        snapshot = None if dump.snapshot is None else Json(dump.snapshot)
        records = [
            (dump.conversation_id, version, kind, writer, Json(payload), created_at)
            for version, kind, writer, payload, created_at in dump.records
        ]

        async def write(connection: psycopg.AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute(
                    "DELETE FROM cm_conversations WHERE id = %s", (dump.conversation_id,)
                )
                await connection.execute(
                    "INSERT INTO cm_conversations (id, version, snapshot_version, snapshot, indexed_version, "
                    "created_at, updated_at, owner) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        dump.conversation_id,
                        dump.version,
                        dump.snapshot_version,
                        snapshot,
                        dump.indexed_version,
                        dump.created_at,
                        dump.updated_at,
                        dump.user_id,
                    ),
                )
                async with connection.cursor() as cursor:
                    await cursor.executemany(
                        "INSERT INTO cm_conversation_records "
                        "(conversation_id, version, kind, writer, payload, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
                        records,
                    )

        await self.database.run(write, "conversation restore")
