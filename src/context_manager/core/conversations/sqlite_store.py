"""``SQLiteConversationStore``: persisted conversations in ``conversations.sqlite3`` under ``storage_path``.

WAL mode, one transaction per append, committed before the call returns (``synchronous=NORMAL`` survives a
crash of the process; ``fsync=True`` switches to ``FULL``, which also survives power loss). The versions
of a conversation are a primary key, so two writers can never store the same version: the second gets
:class:`~context_manager.core.errors.ConversationConflictError`. Blocking work runs on one thread of its own.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from context_manager.core import forks
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
from context_manager.core.errors import ConversationAccessError, ConversationConflictError, StorageError
from context_manager.core.memory.sqlite_store import move_database_aside

__all__ = ["CONVERSATIONS_FILE_NAME", "SQLiteConversationStore"]

CONVERSATIONS_FILE_NAME = "conversations.sqlite3"
"""Name of the conversations database under ``storage_path``."""

_T = TypeVar("_T")
logger = logging.getLogger(__name__)
_INLINE_BYTES = 64 * 1024  # appends up to this size run on the event loop when the connection is free

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "snapshot_version INTEGER NOT NULL DEFAULT 0, snapshot TEXT, indexed_version INTEGER NOT NULL DEFAULT 0, "
    "created_at REAL NOT NULL, updated_at REAL NOT NULL, owner TEXT)",
    "CREATE TABLE IF NOT EXISTS conversation_records (conversation_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, "
    "kind TEXT NOT NULL, writer TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL, "
    "PRIMARY KEY (conversation_id, version)) WITHOUT ROWID",
    # the window's snapshot, in a table of its own: in the conversations row, every append's update of
    # version and updated_at read and wrote it all again (14 us an append without one, 114 us with an
    # 800 KB snapshot). conversations.snapshot is then NULL (the column stays for earlier databases)
    "CREATE TABLE IF NOT EXISTS conversation_snapshots (conversation_id TEXT PRIMARY KEY, "
    "snapshot TEXT NOT NULL)",
]
# snapshots an earlier version kept in the conversations row, moved to their table (on open), one
# conversation a transaction: all in one held the write lock for as long as it took (28 s for 900 MB of
# snapshots), and every other process's append or open failed after its busy_timeout (5 s)
_MOVE_SNAPSHOT = [
    "INSERT OR REPLACE INTO conversation_snapshots (conversation_id, snapshot) "
    "SELECT id, snapshot FROM conversations WHERE id = ? AND snapshot IS NOT NULL",
    "UPDATE conversations SET snapshot = NULL WHERE id = ? AND snapshot IS NOT NULL",
]
# snapshots of conversations an earlier version deleted (its delete leaves them; this one's delete removes
# the snapshot in its own transaction). Found on every open by a read of the two id indexes only (the
# snapshots' pages are not read: 20 ms at 50,000 conversations with 1 GB of snapshots), without the write
# lock; each one found is then removed in a transaction of its own, if its conversation is still missing
# (created again meanwhile, the snapshot is the new conversation's)
_ORPHAN_SNAPSHOTS = (
    "SELECT conversation_id FROM conversation_snapshots "
    "WHERE conversation_id NOT IN (SELECT id FROM conversations)"
)
_BUSY_MS = 5000  # how long a statement waits for another process's write lock
_ORPHAN_BUSY_MS = 250  # how long removing them waits for another process's write (then: a later open)
_REMOVE_ORPHAN = (
    "DELETE FROM conversation_snapshots WHERE conversation_id = ? "
    "AND NOT EXISTS (SELECT 1 FROM conversations WHERE id = ?)"
)
# a snapshot in the row (written by an earlier version since this one last moved them) is the newer one.
# None before the first snapshot (snapshot_version 0): a conversation an earlier version deleted and
# created again would have resumed the deleted one's window from the snapshot its delete left behind
_SNAPSHOT = (
    "CASE WHEN conversations.snapshot_version > 0 THEN coalesce(conversations.snapshot, "
    "(SELECT snapshot FROM conversation_snapshots "
    "WHERE conversation_snapshots.conversation_id = conversations.id)) END"
)
# one user's conversations in the listing's order (list_conversations(user_id=...), a "my chats" page):
# a read of the page instead of a sort of all that user's rows. Partial: a single-user app's conversations
# (nobody's) are not in it, so their appends do not update it; an owned conversation's append does (one more
# index page in its commit: about 10 us of 50-60 on a loaded two-core machine). It replaces the owner index
# (owner) of earlier versions, whose work its prefix does
_OWNER_INDEX = (
    "CREATE INDEX IF NOT EXISTS conversations_owner_recent ON conversations (owner, updated_at DESC, id) "
    "WHERE owner IS NOT NULL"
)
_OLD_OWNER_INDEX = "DROP INDEX IF EXISTS conversations_owner"
# everyone's conversations in the listing's order (list_conversations() without a user, a page of recent
# chats): a page read instead of a scan and sort of every conversation (8-12 ms at 50,000). It costs an
# index update per append (about 2 us of the append's 20)
_RECENT_INDEX = "CREATE INDEX IF NOT EXISTS conversations_recent ON conversations (updated_at DESC, id)"


class SQLiteConversationStore:
    """Conversations in one SQLite file (see the module docstring).

    Args:
        path: The database file (created ``0o600`` when missing).
        fsync: ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``.
    """

    kind = "sqlite"
    encodes_pending_snapshots = True
    """:meth:`save_snapshot` also takes a ``PendingSnapshot`` (see ``conversations.replay``)."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        """The database file."""
        self._fsync = fsync
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._opened_file: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._pid = forks.pid  # the process whose thread and connection these are (see forks)

    async def open(self) -> None:
        """Open (creating if needed) the database."""
        if self._executor is None:
            self._pid = forks.pid
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="context-manager-conversations"
            )
        await self._run(self._open)

    def _open(self) -> None:
        if self._connection is not None:
            return
        try:
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            connection.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            for statement in _SCHEMA:
                connection.execute(statement)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(conversations)")}
            if "owner" not in columns:  # a database from before owners: its conversations are nobody's
                connection.execute("ALTER TABLE conversations ADD COLUMN owner TEXT")
            # after the owner column (older databases get it on their next open)
            connection.execute(_OWNER_INDEX)
            connection.execute(_OLD_OWNER_INDEX)
            connection.execute(_RECENT_INDEX)  # (older databases get it on their next open too)
            moving = [
                row[0]
                for row in connection.execute("SELECT id FROM conversations WHERE snapshot IS NOT NULL")
            ]
            for conversation_id in moving:
                _in_transaction(connection, _MOVE_SNAPSHOT, (conversation_id,))
            _remove_orphans(connection)
        except (OSError, sqlite3.Error) as error:
            raise StorageError(
                f"cannot open conversations database {self.path}: {error}", path=self.path
            ) from error
        self._connection = connection
        self._opened_file = _file_identity(self.path)

    async def close(self) -> None:
        """Close the database and its thread (in a process forked after :meth:`open`: forget them)."""
        executor, self._executor = self._executor, None
        if executor is None or self._pid != forks.pid:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        except asyncio.CancelledError:
            # a cancelled wait cancels the close still queued (behind an open waiting for a lock, say; the
            # loop ending under a close in the background): queued again, to run in the thread regardless
            executor.submit(self._close)
            executor.shutdown(wait=False)
            raise
        executor.shutdown(wait=True)

    def _close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- the file behind the process's back ---------------------------------------------------------

    def file_faults(self) -> dict[str, str]:
        """The open database's files removed or replaced behind the store's back, by name.

        ``"removed"`` (the database, or its ``-wal``: an open WAL database always has one) or
        ``"replaced"`` (another file at the path). Empty while the files are the ones open. A few
        ``stat`` calls; safe from any thread.
        """
        identity = self._opened_file
        if self._connection is None or identity is None:
            return {}
        current = _file_identity(self.path)
        if current is None:
            return {self.path.name: "removed"} if not self.path.exists() else {}
        if current != identity:
            return {self.path.name: "replaced"}
        wal = Path(f"{self.path}-wal")
        if not wal.exists():
            return {wal.name: "removed"}
        return {}

    async def restore_file(self) -> str:
        """Write the database open here to a new file at :attr:`path` and switch to it.

        After the file (or the storage directory) was deleted or replaced while open, the open
        connection still reads the old file: SQLite's backup API copies every page from it. A file that
        had replaced the database is kept as ``<name>.replaced-<time>``. Appends wait for the switch.
        Returns what was done.

        Raises:
            StorageError: the new file cannot be written.
        """
        return await self._run(self._restore_file)

    def _restore_file(self) -> str:
        with self._lock:
            db = self._db
            if not self.file_faults():  # another restore (the managers sharing this store) came first
                return f"{self.path.name} needed no restore (restored meanwhile)"
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".restore")
            for leftover in (temporary, Path(f"{temporary}-journal")):
                leftover.unlink(missing_ok=True)
            try:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT, 0o600))
                target = sqlite3.connect(temporary, isolation_level=None)
                try:
                    target.execute("PRAGMA synchronous=FULL")
                    db.backup(target)
                    conversations, records = target.execute(
                        "SELECT (SELECT count(*) FROM conversations), "
                        "(SELECT count(*) FROM conversation_records)"
                    ).fetchone()
                finally:
                    target.close()
            except (OSError, sqlite3.Error) as error:
                temporary.unlink(missing_ok=True)
                raise StorageError(f"cannot restore {self.path}: {error}", path=self.path) from error
            db.close()  # checkpoints into the old (unlinked or moved) files
            self._connection = None
            moved = move_database_aside(self.path)  # whatever is at the path now is not this database's
            os.replace(temporary, self.path)
            self._open()
        report = (
            f"restored {self.path.name} from the open database ({_count(conversations, 'conversation')}, "
            f"{_count(records, 'record')})"
        )
        if moved:
            report += f"; kept what had replaced it as {', '.join(moved)}"
        return report

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None:
            raise StorageError(f"conversations database {self.path} is closed", path=self.path)
        if self._pid != forks.pid:  # its thread is the parent's: the work would wait for ever
            raise forks.forked_error("conversations database", f"database {self.path}", self._pid)
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(function, *args))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StorageError(f"conversations database {self.path} is closed", path=self.path)
        return self._connection

    def _guarded(self, function: Callable[[], _T]) -> _T:
        with self._lock:
            return self._guarded_locked(function)

    def _guarded_locked(self, function: Callable[[], _T]) -> _T:
        try:
            return function()
        except sqlite3.Error as error:
            if self._connection is not None and self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise StorageError(f"conversations database {self.path}: {error}", path=self.path) from error

    # -- reading -----------------------------------------------------------------------------------

    async def load(self, conversation_id: str) -> StoredConversation:
        """The latest snapshot and the records after it."""
        return await self._run(self._guarded, functools.partial(self._load, conversation_id))

    def _load(self, conversation_id: str) -> StoredConversation:
        db = self._db
        row = db.execute(
            f"SELECT version, snapshot_version, {_SNAPSHOT}, indexed_version, created_at, owner "
            "FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            return StoredConversation(conversation_id=conversation_id, version=0)
        version, snapshot_version, snapshot, indexed_version, created_at, owner = row
        rows = db.execute(
            "SELECT version, kind, payload FROM conversation_records "
            "WHERE conversation_id = ? AND version > ? ORDER BY version",
            (conversation_id, snapshot_version),
        ).fetchall()
        payloads = loads_records(conversation_id, [row[0] for row in rows], [row[2] for row in rows])
        records = [
            (record_version, ConversationRecord(kind, payload))
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

    async def version_of(self, conversation_id: str) -> tuple[int, float] | None:
        """The stored version and generation of a conversation, or ``None``."""

        def read() -> tuple[int, float] | None:
            row = self._db.execute(
                "SELECT version, created_at FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            return None if row is None else (int(row[0]), float(row[1]))

        return await self._run(self._guarded, read)

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
        query, parameters = listing_query("conversations", user_id, before, limit, "?")

        def read() -> list[ConversationInfo]:
            rows = self._db.execute(
                query,
                parameters,
            ).fetchall()
            return [
                ConversationInfo(row[0], int(row[1]), float(row[2]), float(row[3]), row[4]) for row in rows
            ]

        return await self._run(self._guarded, read)

    # -- writing -----------------------------------------------------------------------------------

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
        rows = [(record.kind, json.dumps(record.payload, ensure_ascii=False)) for record in records]
        append = functools.partial(
            self._append, conversation_id, expected_version, rows, writer, created_at, user_id
        )
        # A small append without fsync commits in tens of microseconds: cheaper on the loop than a thread
        # hop, as long as nobody holds the connection (else it waits its turn in the thread).
        if (
            not self._fsync
            and self._connection is not None
            and sum(len(row[1]) for row in rows) <= _INLINE_BYTES
            and self._lock.acquire(blocking=False)
        ):
            try:
                return self._guarded_locked(append)
            finally:
                self._lock.release()
        return await self._run(self._guarded, append)

    def _append(
        self,
        conversation_id: str,
        expected: int,
        rows: list[tuple[str, str]],
        writer: str,
        created_at: float | None,
        user_id: str | None = None,
    ) -> int:
        db = self._db
        now = time.time()
        new_version = expected + len(rows)
        db.execute("BEGIN IMMEDIATE")
        try:
            # the version check and the move are one statement: it changes a row only if nobody else did
            # (and the same generation: deleted and created again, it may be at this version once more).
            # updated_at never goes back (the clock stepped back): the listing would page it twice
            generation, extra = generation_filter(created_at, "?")
            moved = db.execute(
                "UPDATE conversations SET version = ?, updated_at = max(updated_at, ?) "
                f"WHERE id = ? AND version = ?{generation}",
                (new_version, now, conversation_id, expected, *extra),
            ).rowcount
            if not moved:
                current = db.execute(
                    "SELECT version FROM conversations WHERE id = ?", (conversation_id,)
                ).fetchone()
                if current is not None or expected != 0:
                    db.execute("ROLLBACK")
                    raise ConversationConflictError(
                        conversation_id, expected, 0 if current is None else int(current[0])
                    )
                db.execute(
                    "INSERT INTO conversations (id, version, created_at, updated_at, owner) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (conversation_id, new_version, now if created_at is None else created_at, now, user_id),
                )
            db.executemany(
                "INSERT INTO conversation_records "
                "(conversation_id, version, kind, writer, payload, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (conversation_id, expected + offset, kind, writer, payload, now)
                    for offset, (kind, payload) in enumerate(rows, start=1)
                ],
            )
            db.execute("COMMIT")
        except ConversationConflictError:
            raise
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return new_version

    async def save_snapshot(
        self,
        conversation_id: str,
        version: int,
        state: Mapping[str, Any] | PendingSnapshot,
        *,
        created_at: float | None = None,
    ) -> None:
        """Keep ``state`` as the window at ``version`` (only if it is newer than the stored snapshot)."""
        generation, extra = generation_filter(created_at, "?")
        # in a thread of its own: a large window takes a while (0.3 s at 30,000 messages), which neither
        # the loop nor the appends waiting for the connection should wait for
        text = await asyncio.to_thread(functools.partial(encode_snapshot, state, ensure_ascii=False))

        def write() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                newer = db.execute(
                    "UPDATE conversations SET snapshot_version = ?, snapshot = NULL "
                    f"WHERE id = ? AND snapshot_version < ? AND version >= ?{generation}",
                    (version, conversation_id, version, version, *extra),
                ).rowcount
                if newer:
                    db.execute(
                        "INSERT OR REPLACE INTO conversation_snapshots (conversation_id, snapshot) "
                        "VALUES (?, ?)",
                        (conversation_id, text),
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        await self._run(self._guarded, write)

    async def mark_indexed(
        self, conversation_id: str, version: int, *, created_at: float | None = None
    ) -> None:
        """Move the indexing watermark forward (never back)."""
        generation, extra = generation_filter(created_at, "?")

        def write() -> None:
            self._db.execute(
                "UPDATE conversations SET indexed_version = max(indexed_version, ?) "
                f"WHERE id = ?{generation}",
                (version, conversation_id, *extra),
            )

        await self._run(self._guarded, write)

    async def delete(self, conversation_id: str, *, user_id: str | None = None) -> bool:
        """Delete a conversation and its records; whether it existed (with ``user_id``: only its own)."""

        def write() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if user_id is not None:
                    row = db.execute(
                        "SELECT owner FROM conversations WHERE id = ?", (conversation_id,)
                    ).fetchone()
                    if row is not None and row[0] is not None and row[0] != user_id:
                        db.execute("ROLLBACK")
                        raise ConversationAccessError(conversation_id, user_id)
                db.execute("DELETE FROM conversation_records WHERE conversation_id = ?", (conversation_id,))
                db.execute("DELETE FROM conversation_snapshots WHERE conversation_id = ?", (conversation_id,))
                deleted = db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return bool(deleted)

        return await self._run(self._guarded, write)

    # -- copying between stores ----------------------------------------------------------------------

    async def dump(self, conversation_id: str) -> ConversationDump | None:
        """The whole conversation as stored, or ``None``."""

        def read() -> ConversationDump | None:
            db = self._db
            row = db.execute(
                f"SELECT version, snapshot_version, {_SNAPSHOT}, indexed_version, created_at, updated_at, "
                "owner FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                return None
            records = [
                (int(version), kind, writer, json.loads(payload), float(created_at))
                for version, kind, writer, payload, created_at in db.execute(
                    "SELECT version, kind, writer, payload, created_at FROM conversation_records "
                    "WHERE conversation_id = ? ORDER BY version",
                    (conversation_id,),
                )
            ]
            return ConversationDump(
                conversation_id=conversation_id,
                version=int(row[0]),
                snapshot_version=int(row[1]),
                snapshot=None if row[2] is None else json.loads(row[2]),
                indexed_version=int(row[3]),
                created_at=float(row[4]),
                updated_at=float(row[5]),
                records=records,
                user_id=row[6],
            )

        return await self._run(self._guarded, read)

    async def restore(self, dump: ConversationDump) -> None:
        """Store ``dump`` under its id, replacing what is there, in one transaction."""
        snapshot = None if dump.snapshot is None else json.dumps(dump.snapshot, ensure_ascii=False)
        records = [
            (dump.conversation_id, version, kind, writer, json.dumps(payload, ensure_ascii=False), created_at)
            for version, kind, writer, payload, created_at in dump.records
        ]

        def write() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM conversation_records WHERE conversation_id = ?", (dump.conversation_id,)
                )
                db.execute(
                    "DELETE FROM conversation_snapshots WHERE conversation_id = ?", (dump.conversation_id,)
                )
                if snapshot is not None:
                    db.execute(
                        "INSERT INTO conversation_snapshots (conversation_id, snapshot) VALUES (?, ?)",
                        (dump.conversation_id, snapshot),
                    )
                db.execute(
                    "INSERT OR REPLACE INTO conversations (id, version, snapshot_version, snapshot, "
                    "indexed_version, created_at, updated_at, owner) VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
                    (
                        dump.conversation_id,
                        dump.version,
                        dump.snapshot_version,
                        dump.indexed_version,
                        dump.created_at,
                        dump.updated_at,
                        dump.user_id,
                    ),
                )
                db.executemany(
                    "INSERT INTO conversation_records "
                    "(conversation_id, version, kind, writer, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    records,
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        await self._run(self._guarded, write)


def _remove_orphans(connection: sqlite3.Connection) -> None:
    """Remove the snapshots an earlier version's delete left behind, if this process can write now.

    Housekeeping: on a database this process may only read, or while another process holds the write lock
    (a long write), the open goes on and a later open removes them (it neither fails nor waits 5 s).
    """
    orphans = connection.execute(_ORPHAN_SNAPSHOTS).fetchall()
    if not orphans:
        return
    connection.execute(f"PRAGMA busy_timeout={_ORPHAN_BUSY_MS}")
    try:
        for (orphan,) in orphans:
            _in_transaction(connection, [_REMOVE_ORPHAN], (orphan, orphan))
    except sqlite3.OperationalError as error:  # read-only, or locked: left to a later open
        logger.info("conversations database: %d left-over snapshots not removed (%s)", len(orphans), error)
    finally:
        connection.execute(f"PRAGMA busy_timeout={_BUSY_MS}")


def _in_transaction(
    connection: sqlite3.Connection, statements: Sequence[str], parameters: tuple[Any, ...]
) -> None:
    """Run ``statements`` with ``parameters`` in one write transaction (rolled back if one fails)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements:
            connection.execute(statement, parameters)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _count(number: int, noun: str) -> str:
    return f"{number} {noun if number == 1 else noun + 's'}"
