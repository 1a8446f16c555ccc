"""Long-term store: SQLite under ``storage_path`` (WAL, FTS5 BM25, versioned schema).

Every write is one transaction committed before the call returns; with WAL and
``synchronous=NORMAL`` a committed write survives a crash of the process (``fsync=True`` switches to
``synchronous=FULL``, which also survives power loss). Embedding vectors are kept as float32 blobs
and scored with numpy by the manager. The methods block: the manager calls them off the event loop.

Connections: writes go through one connection, under the store's lock. Reads go through a connection of
their own thread (``query_only``, opened on first use): WAL lets them run while a write transaction is
open, so a search never makes a write wait and a write never makes a search wait. When the file at
``path`` is not the one open (deleted or replaced behind the store's back), a new connection would read
the wrong file: reads then share the write connection, under the lock, until :meth:`SQLiteStore.restore`.

Erasure: ``secure_delete`` is on, so SQLite overwrites deleted rows and freed pages with zeros. FTS5
(this SQLite has no ``secure-delete`` option, added in 3.42) keeps a deleted row's words in its index
segments until they are merged: a delete or a text change sets ``fts_erasure_pending`` in the same
transaction, and :meth:`SQLiteStore.finish_erasure` merges every segment into one (``optimize``) and
truncates the WAL. It runs on close, on :meth:`SQLiteStore.optimize`, and on open when a crash came
between the delete and the close.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import StorageCorruptedError, StorageError
from context_manager.core.memory.index import (
    ColumnWeights,
    FrequencyCache,
    create_fts_table,
    create_vocabulary_table,
    document_frequencies,
    fts_row,
    weighted_search_parameters,
    weighted_search_sql,
)
from context_manager.core.memory.migrations import FTS_TABLE, apply_migrations
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.store import CandidateFilter, TurnKey
from context_manager.core.text import encodable

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = ["DATABASE_FILE_NAME", "SQLiteStore", "UserTally"]

DATABASE_FILE_NAME = "memories.sqlite3"
"""Name of the long-term database under ``storage_path``."""

_SQLITE_HEADER = b"SQLite format 3\x00"
# store_state names of undone merges not finished yet (LocalBackend.unmerge): the prefix, then the merged id
_UNMERGE_PREFIX = "unmerge:"
# store_state names of deletes whose volatile copies are not deleted yet (LocalBackend.delete_together)
_DELETE_PREFIX = "delete:"
_COLUMNS = (
    "id, content, importance, tags, created_at, last_accessed, access_count, metadata, user_id, source, "
    "superseded_by, merged_from, context"
)
_SELECT = f"SELECT rowid, {_COLUMNS} FROM memories"
_QUALIFIED = ", ".join("m." + column.strip() for column in _COLUMNS.split(","))


@dataclass(frozen=True)
class UserTally:
    """Aggregates of one user's long-term memories (see :meth:`SQLiteStore.tally`)."""

    user_id: str | None
    """Whose memories (``None``: the default namespace)."""
    copies: int
    """Rows of this user, skipped ones included."""
    count: int
    """Rows of this user not skipped."""
    superseded: int
    """Of ``count``, the superseded ones."""
    oldest: float | None
    """Smallest ``created_at`` of ``count`` (``None`` when it is 0)."""
    newest: float | None
    """Largest ``created_at`` of ``count`` (``None`` when it is 0)."""
    importance_total: float
    """Sum of the importance of ``count``."""


class SQLiteStore:
    """Memories in an SQLite database file with an FTS5 index.

    Args:
        path: The database file (created ``0o600`` when missing).
        fsync: Use ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``.
        weights: BM25 column weights of the index.
    """

    tier = MemoryTier.LONG

    def __init__(self, path: Path, *, fsync: bool = False, weights: ColumnWeights | None = None) -> None:
        self.path = path
        """The database file."""
        self._fsync = fsync
        self._weights = weights or ColumnWeights()
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._count = 0
        self._vocabulary = ""
        self._frequencies = FrequencyCache()
        self._opened_file: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._erasure_pending = False  # deleted words may remain in FTS5 segments
        self._marked = False  # the open transaction recorded a pending erasure
        self._size_seen = 0  # the file's largest size seen (it never shrinks: no VACUUM)
        self._local = threading.local()  # this thread's read connection and the generation it belongs to
        self._readers: list[sqlite3.Connection] = []  # every read connection open (closed on close/restore)
        self._readers_state = threading.Condition()
        self._active_reads = 0
        self._reopening = False
        self._generation = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def open(self) -> list[str]:
        """Open (creating if needed) and migrate the database; return the migrations applied."""
        self._check_header()
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with self._guard():
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._connection = connection
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA secure_delete=ON")  # deleted rows and freed pages are zeroed
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            applied = apply_migrations(connection)
            create_fts_table(connection, FTS_TABLE, self._weights)  # applies the current column weights
            self._vocabulary = create_vocabulary_table(connection, FTS_TABLE)
            self._count = int(connection.execute("SELECT count(*) FROM memories").fetchone()[0])
            self._opened_file = _file_identity(self.path)
            self._size_seen = self.path.stat().st_size
            pending = connection.execute(
                "SELECT value FROM store_state WHERE name = 'fts_erasure_pending'"
            ).fetchone()
            self._erasure_pending = bool(pending and pending[0])
            if self._erasure_pending:  # a crash came between a delete and the close that finishes it
                self.finish_erasure()
            return applied

    def _check_header(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(f"cannot read {self.path}: {error}", path=self.path) from error
        if header and header != _SQLITE_HEADER:
            raise self._corrupted("it is not an SQLite database")

    def _corrupted(self, reason: str) -> StorageCorruptedError:
        return StorageCorruptedError(
            f"long-term memory database {self.path} is damaged ({reason}); it was not modified. "
            f"Restore it from a backup, or move it (and its -wal/-shm files) aside to start the long-term "
            f"tier empty; `sqlite3 {self.path.name} .recover` may salvage its rows",
            path=self.path,
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock, self._errors():
            yield

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as error:
            raise StorageError(f"long-term memory database {self.path}: {error}", path=self.path) from error
        except sqlite3.IntegrityError as error:
            # the database refused the write (a constraint, a trigger of the user's raising): a failed write,
            # which the callers undo as they undo a full disk, not an error of the caller's
            raise StorageError(
                f"long-term memory database {self.path} refused the write: {error}", path=self.path
            ) from error
        except sqlite3.DatabaseError as error:
            if type(error) is sqlite3.DatabaseError or "malformed" in str(error):
                raise self._corrupted(str(error)) from error
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection to read with: this thread's own, or the write connection under the lock."""
        reader = self._enter_read()
        if reader is None:  # the file at path is not the one open: only the write connection reads it
            with self._guard():
                yield self._db
            return
        try:
            with self._errors():
                yield reader
        finally:
            with self._readers_state:
                self._active_reads -= 1
                if not self._active_reads:
                    self._readers_state.notify_all()

    def _enter_read(self) -> sqlite3.Connection | None:
        with self._readers_state:
            while self._reopening:
                self._readers_state.wait()
            if self._connection is None:
                raise StorageError(f"long-term memory database {self.path} is closed", path=self.path)
            reader: sqlite3.Connection | None = getattr(self._local, "connection", None)
            if reader is None or getattr(self._local, "generation", -1) != self._generation:
                reader = self._open_reader()
                if reader is None:
                    return None
            self._active_reads += 1
            return reader

    def _open_reader(self) -> sqlite3.Connection | None:
        """Open the calling thread's read connection (with ``_readers_state`` held); ``None`` if it cannot."""
        if self._opened_file is None or not _same_file(self.path, self._opened_file):
            return None
        try:
            reader = sqlite3.connect(
                f"file:{urllib.parse.quote(str(self.path))}?mode=rw",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error:
            return None
        try:
            reader.execute("PRAGMA busy_timeout=5000")
            create_vocabulary_table(reader, FTS_TABLE)  # in its temp schema, before it turns read-only
            reader.execute("PRAGMA query_only=ON")
        except sqlite3.Error:
            reader.close()
            return None
        self._readers.append(reader)
        self._local.connection = reader
        self._local.generation = self._generation
        return reader

    def _close_readers(self) -> None:
        """Wait for reads in progress, close every read connection; new reads wait until reopened."""
        with self._readers_state:
            self._reopening = True
            while self._active_reads:
                self._readers_state.wait()
            for reader in self._readers:
                with suppress(sqlite3.Error):
                    reader.close()
            self._readers.clear()
            self._generation += 1

    def _reopened(self) -> None:
        with self._readers_state:
            self._reopening = False
            self._readers_state.notify_all()

    def can_read_now(self) -> bool:
        """Whether this thread reads on a connection of its own (opening it if needed), never waiting.

        False while the store reopens (a restore) or when the file at ``path`` is not the one open.
        """
        with self._readers_state:
            if self._reopening or self._connection is None:
                return False
            if (
                getattr(self._local, "connection", None) is not None
                and self._local.generation == self._generation
            ):
                return True
            return self._open_reader() is not None

    @contextmanager
    def held_if_free(self) -> Iterator[bool]:
        """Hold the store's lock if no other thread holds it now; yield whether it is held.

        Never waits: the event loop uses it to run a short read inline only when that cannot block
        (a writer thread holding the lock for a long transaction would otherwise stall the loop).
        Do not ``await`` inside the block.
        """
        acquired = self._lock.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                self._lock.release()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StorageError(f"long-term memory database {self.path} is closed", path=self.path)
        return self._connection

    def close(self) -> None:
        """Finish a pending erasure, checkpoint the WAL and close the database."""
        with self._lock:
            if self._connection is not None:
                self._close_readers()
                try:
                    with suppress(sqlite3.DatabaseError, StorageError):
                        self.finish_erasure()
                    with suppress(sqlite3.DatabaseError):
                        self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    self._connection.close()
                    self._connection = None
                finally:
                    self._reopened()  # a read after the close gets "closed", not a wait for ever

    def faults(self) -> dict[str, str]:
        """Files of the open database changed behind the store's back, by name.

        ``"removed"`` (the database or its ``-wal``), ``"replaced"`` (another file at the path), or
        ``"truncated"`` (smaller than it was: the file never shrinks, this store runs no VACUUM).
        """
        identity = self._opened_file
        if self._connection is None or identity is None:
            return {}
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {self.path.name: "removed"}
        except OSError:
            return {}
        if (stat.st_dev, stat.st_ino) != identity:
            return {self.path.name: "replaced"}
        if stat.st_size < self._size_seen:
            return {self.path.name: "truncated"}
        self._size_seen = stat.st_size
        wal = Path(f"{self.path}-wal")
        if not wal.exists():  # an open WAL-mode database always has one: its commits were in it
            return {wal.name: "removed"}
        return {}

    def restore(self) -> str:
        """Write the database open here to a new file at :attr:`path`, and switch to it.

        For a database (or its ``-wal``) deleted or replaced while open: SQLite's backup API reads every
        page through the open connection, which still holds the old files. A file that replaced the
        database is kept, renamed ``<name>.replaced-<time>``. Returns what was done.

        Raises:
            StorageError: the database was truncated (its pages are gone from the file the connection
                reads: restore it from a backup), or the new file cannot be written.
        """
        with self._lock:
            db = self._db
            faults = self.faults()
            if faults.get(self.path.name) == "truncated":
                raise StorageError(
                    f"{self.path.name} was truncated while open: its rows are no longer in the file the "
                    "open connection reads, so it cannot be restored from this process; restore it from a "
                    "backup",
                    path=self.path,
                )
            temporary = self.path.with_name(self.path.name + ".restore")
            for leftover in (temporary, Path(f"{temporary}-journal")):
                leftover.unlink(missing_ok=True)
            try:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT, 0o600))
                target = sqlite3.connect(temporary, isolation_level=None)
                try:
                    target.execute("PRAGMA synchronous=FULL")
                    db.backup(target)
                    count = int(target.execute("SELECT count(*) FROM memories").fetchone()[0])
                finally:
                    target.close()
            except (OSError, sqlite3.Error) as error:
                temporary.unlink(missing_ok=True)
                raise StorageError(f"cannot restore {self.path}: {error}", path=self.path) from error
            # the old connections checkpoint into the old files; the last one removes its -wal by name
            self._close_readers()
            with suppress(sqlite3.Error):
                db.close()
            self._connection = None
            moved = move_database_aside(self.path)
            os.replace(temporary, self.path)
            _fsync_directory(self.path.parent)
            self._frequencies.clear()
            try:
                self.open()
            finally:
                self._reopened()
        memories = "1 memory" if count == 1 else f"{count} memories"
        report = f"restored {self.path.name} from the open database ({memories})"
        if moved:
            report += f"; kept what had replaced it as {', '.join(moved)}"
        return report

    @property
    def erasure_pending(self) -> bool:
        """Whether deleted or replaced text may remain in the FTS5 segments (see the module docstring)."""
        return self._erasure_pending

    def finish_erasure(self) -> bool:
        """If a delete is pending, merge the FTS5 segments (dropping deleted words) and truncate the WAL.

        Returns whether there was anything to do. About 0.5 s at 100k memories (the whole index is
        rewritten), which is why it runs on close rather than after every delete.
        """
        with self._guard():
            if not self._erasure_pending:
                return False
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('optimize')")
                db.execute("DELETE FROM store_state WHERE name = 'fts_erasure_pending'")
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._erasure_pending = False
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL's frames hold the old pages
            return True

    def _mark_erasure(self, db: sqlite3.Connection) -> None:
        """Record, in the open transaction, that deleted text remains in FTS5 segments until merged."""
        if not self._erasure_pending and not self._marked:
            db.execute("INSERT OR REPLACE INTO store_state(name, value) VALUES ('fts_erasure_pending', 1)")
        self._marked = True

    # --- writing ---------------------------------------------------------------------------------

    def put(
        self,
        memories: Sequence[Memory],
        *,
        pending_merges: Sequence[str] = (),
        pending_unmerges: Sequence[str] = (),
    ) -> None:
        """Insert or replace memories in one committed transaction.

        ``pending_merges``: ids of merged memories (among ``memories``) whose originals are still to be
        marked elsewhere, recorded in the same transaction (see :meth:`pending_merges`).
        ``pending_unmerges``: ids of merged memories being undone (their originals are restored elsewhere,
        then they are deleted), recorded in the same transaction, even with no memory to write (see
        :meth:`pending_unmerges`).
        """
        if not memories and not pending_unmerges:
            return
        with self._guard():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            inserted = 0
            self._marked = False
            try:
                for memory in memories:
                    memory.tier = MemoryTier.LONG
                    inserted += self._write_one(db, memory)
                db.executemany(
                    "INSERT OR IGNORE INTO pending_merges(merged_id) VALUES (?)",
                    [(merged_id,) for merged_id in pending_merges],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO store_state(name, value) VALUES (?, 1)",
                    [(_UNMERGE_PREFIX + merged_id,) for merged_id in pending_unmerges],
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._erasure_pending = self._erasure_pending or self._marked
            self._count += inserted
            self._frequencies.changed(len(memories))

    def pending_merges(self) -> list[str]:
        """The merged memories recorded by :meth:`put` whose merge is not finished (:meth:`finish_merges`)."""
        with self._read() as db:
            return [row[0] for row in db.execute("SELECT merged_id FROM pending_merges ORDER BY merged_id")]

    def finish_merges(self, merged_ids: Sequence[str]) -> None:
        """Forget the pending records of these merges (their originals are marked everywhere)."""
        if not merged_ids:
            return
        with self._guard():
            self._db.executemany(
                "DELETE FROM pending_merges WHERE merged_id = ?", [(merged_id,) for merged_id in merged_ids]
            )

    def pending_unmerges(self) -> list[str]:
        """The merged memories recorded by :meth:`put` whose undo is unfinished (:meth:`finish_unmerges`)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT name FROM store_state WHERE substr(name, 1, ?) = ? ORDER BY name",
                (len(_UNMERGE_PREFIX), _UNMERGE_PREFIX),
            )
            return [row[0][len(_UNMERGE_PREFIX) :] for row in rows]

    def finish_unmerges(self, merged_ids: Sequence[str]) -> None:
        """Forget the pending records of these undone merges (originals restored, merged memory deleted)."""
        if not merged_ids:
            return
        with self._guard():
            self._db.executemany(
                "DELETE FROM store_state WHERE name = ?",
                [(_UNMERGE_PREFIX + merged_id,) for merged_id in merged_ids],
            )

    def pending_deletes(self) -> list[str]:
        """The ids recorded by :meth:`delete` whose delete is unfinished (:meth:`finish_deletes`)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT name FROM store_state WHERE substr(name, 1, ?) = ? ORDER BY name",
                (len(_DELETE_PREFIX), _DELETE_PREFIX),
            )
            return [row[0][len(_DELETE_PREFIX) :] for row in rows]

    def finish_deletes(self, ids: Sequence[str]) -> None:
        """Forget the pending records of these deletes (their copies are deleted from every tier)."""
        if not ids:
            return
        with self._guard():
            self._db.executemany(
                "DELETE FROM store_state WHERE name = ?", [(_DELETE_PREFIX + memory_id,) for memory_id in ids]
            )

    def _write_one(self, db: sqlite3.Connection, memory: Memory) -> int:
        values = (
            memory.id,
            memory.content,
            memory.importance,
            json.dumps(memory.tags, ensure_ascii=False),
            memory.created_at,
            memory.last_accessed,
            memory.access_count,
            json.dumps(memory.metadata, ensure_ascii=False),
            memory.user_id,
            memory.source,
            memory.superseded_by,
            json.dumps(memory.merged_from),
            memory.context,
            memory.session_id,
            memory.turn_index,
        )
        existing = db.execute(f"{_SELECT} WHERE id = ?", (memory.id,)).fetchone()
        indexed = fts_row(memory)
        if existing is None:
            cursor = db.execute(
                f"INSERT INTO memories({_COLUMNS}, session_id, turn_index) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            rowid = cursor.lastrowid
        else:
            rowid = existing[0]
            same_text = (existing[2], existing[4], existing[13]) == (values[1], values[3], values[12])
            if not same_text:
                self._mark_erasure(db)  # text, tags or context replaced
            db.execute(
                "UPDATE memories SET id = ?, content = ?, importance = ?, tags = ?, created_at = ?, "
                "last_accessed = ?, access_count = ?, metadata = ?, user_id = ?, source = ?, "
                "superseded_by = ?, merged_from = ?, context = ?, session_id = ?, turn_index = ? "
                "WHERE rowid = ?",
                (*values, rowid),
            )
            if same_text and existing[9] == memory.user_id and fts_row(_memory(existing)) == indexed:
                # what is indexed is unchanged (a merge marking its originals, a tier move, a new
                # importance): re-indexing read and tokenised the whole text twice, 5 MB in ~0.3 s
                return 0
            db.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", (rowid,))
            db.execute("DELETE FROM memory_tags WHERE memory_rowid = ?", (rowid,))
        db.execute(
            f"INSERT INTO {FTS_TABLE}(rowid, content, tags, context, date, owner) VALUES (?, ?, ?, ?, ?, ?)",
            (rowid, *indexed),
        )
        if memory.tags:
            db.executemany(
                "INSERT OR IGNORE INTO memory_tags(tag, memory_rowid) VALUES (?, ?)",
                [(tag, rowid) for tag in memory.tags],
            )
        return 1 if existing is None else 0

    def delete(self, ids: Sequence[str], *, pending_deletes: Sequence[str] = ()) -> list[str]:
        """Delete memories in one transaction; return the ids that were present.

        Their vectors stay (a memory moved to a faster tier keeps its vector): :meth:`delete_vectors`
        forgets them when the memory is gone from every tier. ``pending_deletes``: ids whose copies in the
        log are still to be deleted, recorded in the same transaction (see :meth:`pending_deletes`).
        """
        if not ids and not pending_deletes:
            return []
        with self._guard():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            self._marked = False
            try:
                present = []
                for memory_id in ids:
                    row = db.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()
                    if row is None:
                        continue
                    present.append(memory_id)
                    db.execute("DELETE FROM memories WHERE rowid = ?", row)
                    db.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", row)
                    db.execute("DELETE FROM memory_tags WHERE memory_rowid = ?", row)
                if present:
                    self._mark_erasure(db)
                db.executemany(
                    "INSERT OR REPLACE INTO store_state(name, value) VALUES (?, 1)",
                    [(_DELETE_PREFIX + memory_id,) for memory_id in pending_deletes],
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._erasure_pending = self._erasure_pending or self._marked
            self._count -= len(present)
            self._frequencies.changed(len(present))
            return present

    def touch(self, updates: Mapping[str, tuple[float, int]]) -> None:
        """Record access times and counts in one transaction."""
        if not updates:
            return
        with self._guard():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "UPDATE memories SET last_accessed = ?, access_count = ? WHERE id = ?",
                    [(last, count, memory_id) for memory_id, (last, count) in updates.items()],
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

    # --- reading ---------------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """Return the memory with this id, or ``None``."""
        if not encodable(memory_id):
            return None
        with self._read() as db:
            row = db.execute(f"{_SELECT} WHERE id = ?", (memory_id,)).fetchone()
        return None if row is None else _memory(row)

    def get_many(self, ids: Sequence[str]) -> dict[str, Memory]:
        """Return the memories among ``ids`` held here, by id."""
        found: dict[str, Memory] = {}
        ids = [memory_id for memory_id in ids if encodable(memory_id)]
        with self._read() as db:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for row in db.execute(f"{_SELECT} WHERE id IN ({marks})", chunk):
                    memory = _memory(row)
                    found[memory.id] = memory
        return found

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` held here (no row is loaded)."""
        found: set[str] = set()
        ids = [memory_id for memory_id in ids if encodable(memory_id)]
        with self._read() as db:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0] for row in db.execute(f"SELECT id FROM memories WHERE id IN ({marks})", chunk)
                )
        return found

    def __contains__(self, memory_id: object) -> bool:
        with self._read() as db:
            return db.execute("SELECT 1 FROM memories WHERE id = ?", (memory_id,)).fetchone() is not None

    def search(
        self, match: str, limit: int, *, filters: CandidateFilter | None = None
    ) -> list[tuple[Memory, float]]:
        """Run a safe FTS5 MATCH expression; return ``(memory, bm25)`` best first.

        Superseded memories are never returned and never take a place of the ``limit``. ``filters``
        (importance, time and tag predicates) apply inside the query, before the limit, so a filtered
        search finds matches however many unfiltered ones rank higher.
        """
        where, parameters = _filter_sql(filters)
        with self._read() as db:
            if not where:
                # FTS5 hands its matches over best first (the ORDER BY is its own), so the join stops at the
                # ``limit``-th visible one: a superseded memory costs a row lookup only when it ranks above
                # one, and the superseded rows are never counted
                rows = db.execute(
                    f"SELECT m.rowid, {_QUALIFIED}, f.rank FROM {FTS_TABLE} AS f "
                    f"JOIN memories AS m ON m.rowid = f.rowid WHERE {FTS_TABLE} MATCH ? "
                    "AND m.superseded_by IS NULL ORDER BY f.rank LIMIT ?",
                    (match, limit),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT m.rowid, {_QUALIFIED}, r.score "
                    f"FROM (SELECT rowid, rank AS score FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?) AS r "
                    f"JOIN memories AS m ON m.rowid = r.rowid WHERE {where} ORDER BY r.score LIMIT ?",
                    (match, *parameters, limit),
                ).fetchall()
        return [(_memory(row), -float(row[-1])) for row in rows]

    def search_weighted(
        self, parts: Sequence[tuple[str, float]], limit: int, *, filters: CandidateFilter | None = None
    ) -> list[tuple[Memory, float]]:
        """Rank by the summed ``factor x bm25`` of ``(match, factor)`` parts, best first.

        Superseded memories and ``filters`` are left out as in :meth:`search`.
        """
        if not parts:
            return []
        where, parameters = _filter_sql(filters)
        inner = weighted_search_sql(FTS_TABLE, len(parts), limited=False)
        inner_parameters = weighted_search_parameters(parts, None)
        with self._read() as db:
            if not where:
                rows = _visible_best_first(db, f"{inner} ORDER BY score", inner_parameters, limit)
            else:
                rows = db.execute(
                    f"SELECT m.rowid, {_QUALIFIED}, r.score FROM ({inner}) AS r "
                    f"JOIN memories AS m ON m.rowid = r.rowid WHERE {where} ORDER BY r.score LIMIT ?",
                    (*inner_parameters, *parameters, limit),
                ).fetchall()
        return [(_memory(row), -float(row[-1])) for row in rows]

    def newest(self, user_id: str | None, limit: int, *, every_user: bool = False) -> list[Memory]:
        """The ``limit`` newest memories of ``user_id`` (or everyone's) not superseded, newest first."""
        where = "superseded_by IS NULL" if every_user else "user_id IS ? AND superseded_by IS NULL"
        parameters: tuple[Any, ...] = (limit,) if every_user else (user_id, limit)
        with self._read() as db:
            rows = db.execute(
                f"{_SELECT} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?", parameters
            ).fetchall()
        return [_memory(row) for row in rows]

    def with_tags(self, tags: Sequence[str]) -> list[Memory]:
        """Return the memories carrying any of ``tags``."""
        if not tags:
            return []
        marks = ",".join("?" * len(tags))
        with self._read() as db:
            rows = db.execute(
                f"SELECT DISTINCT m.rowid, {_QUALIFIED} "
                "FROM memory_tags AS t JOIN memories AS m ON m.rowid = t.memory_rowid "
                f"WHERE t.tag IN ({marks})",
                list(tags),
            ).fetchall()
        return [_memory(row) for row in rows]

    def find_turns(self, keys: Sequence[TurnKey]) -> list[Memory]:
        """Return the memories that are the given conversation turns."""
        found = []
        with self._read() as db:
            for user_id, session_id, turn_index in keys:
                for row in db.execute(
                    f"{_SELECT} WHERE session_id = ? AND turn_index = ?", (session_id, turn_index)
                ):
                    memory = _memory(row)
                    if memory.user_id == user_id:
                        found.append(memory)
        return found

    def last_turn_index(self, user_id: str | None, session_id: str) -> int | None:
        """The highest turn index stored for a conversation session of a user, or ``None``."""
        with self._read() as db:
            row = db.execute(
                "SELECT max(turn_index) FROM memories WHERE session_id = ? AND user_id IS ?",
                (session_id, user_id),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def all(self) -> Iterator[Memory]:
        """Iterate over every memory, in chunks (the lock is not held between chunks)."""
        last = 0
        while True:
            with self._read() as db:
                rows = db.execute(f"{_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT 1000", (last,)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _memory(row)
            last = rows[-1][0]

    def count(self) -> int:
        """How many memories the store holds (kept up to date by this store's writes)."""
        return self._count

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many memories contain each indexed (stemmed) term."""
        with self._read() as db:
            return self._frequencies.lookup(
                terms, self._count, lambda missing: document_frequencies(db, self._vocabulary, missing)
            )

    def owners(self) -> set[str | None]:
        """Every user_id with a memory in the store."""
        with self._read() as db:
            return {row[0] for row in db.execute("SELECT DISTINCT user_id FROM memories")}

    def tally(self, skip: Sequence[str] = ()) -> list[UserTally]:
        """Per user, SQL aggregates over the memories (no row is loaded into Python).

        ``copies`` counts every row; the other figures leave out the rows whose id is in ``skip`` (memories
        already counted from a faster tier's copy).
        """
        ids = json.dumps([memory_id for memory_id in skip if encodable(memory_id)])
        with self._read() as db:
            rows = db.execute(
                "SELECT user_id, count(*), sum(NOT skipped), sum(NOT skipped AND superseded), "
                "min(CASE WHEN skipped THEN NULL ELSE created_at END), "
                "max(CASE WHEN skipped THEN NULL ELSE created_at END), "
                "total(CASE WHEN skipped THEN NULL ELSE importance END) "
                "FROM (SELECT user_id, created_at, importance, superseded_by IS NOT NULL AS superseded, "
                "id IN (SELECT value FROM json_each(?)) AS skipped FROM memories) GROUP BY user_id",
                (ids,),
            ).fetchall()
        return [
            UserTally(
                user_id=row[0],
                copies=int(row[1]),
                count=int(row[2] or 0),
                superseded=int(row[3] or 0),
                oldest=None if row[4] is None else float(row[4]),
                newest=None if row[5] is None else float(row[5]),
                importance_total=float(row[6]),
            )
            for row in rows
        ]

    # --- vectors ---------------------------------------------------------------------------------

    def save_vectors(self, model: str, ids: Sequence[str], vectors: numpy.ndarray) -> None:
        """Store float32 vectors of memories (any tier) for the embedding ``model``."""
        import numpy as np

        rows = [
            (memory_id, model, int(vector.shape[0]), np.asarray(vector, dtype=np.float32).tobytes())
            for memory_id, vector in zip(ids, vectors, strict=True)
        ]
        with self._guard():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO memory_vectors(id, model, dimension, vector) VALUES (?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

    def load_vectors(self, model: str, dimension: int) -> tuple[list[str], numpy.ndarray]:
        """Return the ids and the matrix of vectors stored for ``model``."""
        import numpy as np

        with self._read() as db:
            rows = db.execute(
                "SELECT id, vector FROM memory_vectors WHERE model = ? AND dimension = ?", (model, dimension)
            ).fetchall()
        matrix = np.zeros((len(rows), dimension), dtype=np.float32)
        for position, (_, blob) in enumerate(rows):
            matrix[position] = np.frombuffer(blob, dtype=np.float32)
        return [row[0] for row in rows], matrix

    def vector_models(self) -> list[tuple[str, int]]:
        """Every ``(model, dimension)`` with stored vectors."""
        with self._read() as db:
            rows = db.execute(
                "SELECT model, dimension FROM memory_vectors GROUP BY model, dimension ORDER BY 1, 2"
            ).fetchall()
        return [(str(model), int(dimension)) for model, dimension in rows]

    def has_vectors(self) -> bool:
        """Whether any vector is stored (of any model)."""
        with self._read() as db:
            row = db.execute("SELECT EXISTS (SELECT 1 FROM memory_vectors)").fetchone()
        return bool(row[0])

    def delete_vectors(self, ids: Sequence[str]) -> None:
        """Forget the vectors of ``ids`` (their blobs are zeroed: ``secure_delete``)."""
        if not ids:
            return
        with self._guard():
            self._db.executemany("DELETE FROM memory_vectors WHERE id = ?", [(i,) for i in ids])

    # --- maintenance -----------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes on disk: the database and its WAL."""
        with suppress(OSError):
            if _same_file(self.path, self._opened_file or (-1, -1)):
                self._size_seen = max(self._size_seen, self.path.stat().st_size)
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    def optimize(self) -> None:
        """Merge FTS5 segments (finishing any erasure), refresh planner statistics, truncate the WAL."""
        with self._guard():
            db = self._db
            db.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('optimize')")
            db.execute("DELETE FROM store_state WHERE name = 'fts_erasure_pending'")
            self._erasure_pending = False
            db.execute("PRAGMA optimize")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def check_integrity(self, *, quick: bool = False) -> dict[str, str]:
        """Check the database and its FTS5 index; each entry is ``"ok"`` or the problems found.

        Args:
            quick: ``False``: ``PRAGMA integrity_check`` and FTS5's ``integrity-check`` (the index
                against the rows) on the store's connection, holding its lock: writes wait. ``True``:
                ``PRAGMA quick_check`` (page and b-tree structure, about 10x cheaper) and a read of the
                whole FTS5 index (finds missing or damaged index pages) on a separate read-only
                connection, without the store's lock: writes go on meanwhile (WAL readers never block
                writers). Falls back to the store's connection when the file at ``path`` is not the one
                open (deleted or replaced: a new connection would check the wrong file).
        """
        if quick:
            return self._quick_check()
        result = {}
        with self._lock:
            db = self._db
            try:
                rows = db.execute("PRAGMA integrity_check").fetchall()
                result["sqlite"] = "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:10])
            except sqlite3.DatabaseError as error:
                result["sqlite"] = str(error)
            try:
                db.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES('integrity-check', 1)")
                result["fts"] = "ok"
            except sqlite3.DatabaseError as error:
                result["fts"] = str(error)
        return result

    def _quick_check(self) -> dict[str, str]:
        if self._opened_file is None or not _same_file(self.path, self._opened_file):
            with self._lock:
                return _quick_check_on(self._db, self._vocabulary)
        try:
            connection = sqlite3.connect(
                f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True, check_same_thread=False
            )
        except sqlite3.Error as error:
            return {"sqlite": f"cannot open for reading: {error}"}
        try:
            connection.execute("PRAGMA busy_timeout=5000")
            return _quick_check_on(connection, create_vocabulary_table(connection, FTS_TABLE))
        finally:
            connection.close()

    def rebuild_index(self) -> int:
        """Rebuild the FTS5 index and the tag table from the memories table; return the rows indexed."""
        with self._guard():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                self._frequencies.clear()
                db.execute(f"DROP TABLE IF EXISTS temp.{self._vocabulary}")
                db.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
                create_fts_table(db, FTS_TABLE, self._weights)
                db.execute("DELETE FROM memory_tags")
                count = 0
                for row in db.execute(f"{_SELECT}").fetchall():
                    memory = _memory(row)
                    db.execute(
                        f"INSERT INTO {FTS_TABLE}(rowid, content, tags, context, date, owner) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (row[0], *fts_row(memory)),
                    )
                    db.executemany(
                        "INSERT OR IGNORE INTO memory_tags(tag, memory_rowid) VALUES (?, ?)",
                        [(tag, row[0]) for tag in memory.tags],
                    )
                    count += 1
                db.execute("DELETE FROM store_state WHERE name = 'fts_erasure_pending'")  # a fresh index
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self._erasure_pending = False
            self._vocabulary = create_vocabulary_table(db, FTS_TABLE)
            return count


def _quick_check_on(db: sqlite3.Connection, vocabulary: str) -> dict[str, str]:
    """``PRAGMA quick_check`` and a full read of the FTS5 index through its ``fts5vocab`` table."""
    result = {}
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        result["sqlite"] = "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:10])
    except sqlite3.DatabaseError as error:
        result["sqlite"] = str(error)
    try:  # walks every term's doclist: a missing or damaged index page raises
        db.execute(f"SELECT count(*), total(cnt) FROM temp.{vocabulary}").fetchone()
        result["fts"] = "ok"
    except sqlite3.DatabaseError as error:
        result["fts"] = str(error)
    return result


def move_database_aside(path: Path) -> list[str]:
    """Rename whatever SQLite files are at ``path`` (database, -wal, -shm) to ``NAME.replaced-TIME``.

    Used when restoring a database from its open connection: the files now at the path are not its own.
    Returns the new names.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        leftover = Path(f"{path}{suffix}")
        if leftover.exists():
            aside = leftover.with_name(f"{path.name}.replaced-{stamp}{suffix}")
            os.replace(leftover, aside)
            moved.append(aside.name)
    return moved


def _fsync_directory(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _same_file(path: Path, identity: tuple[int, int]) -> bool:
    return _file_identity(path) == identity


def _memory(row: Sequence[Any]) -> Memory:
    return Memory(
        id=row[1],
        content=row[2],
        importance=row[3],
        tags=json.loads(row[4]),
        tier=MemoryTier.LONG,
        created_at=row[5],
        last_accessed=row[6],
        access_count=row[7],
        metadata=json.loads(row[8]),
        user_id=row[9],
        source=row[10],
        superseded_by=row[11],
        merged_from=json.loads(row[12]),
        context=row[13],
    )


def _visible_best_first(
    db: sqlite3.Connection, ranking: str, parameters: Sequence[Any], limit: int
) -> list[tuple[Any, ...]]:
    """The rows of the ``limit`` best memories not superseded, each with its score, best first.

    ``ranking`` selects ``(rowid, score)`` of every match, best first. The memories are read in that order,
    a chunk at a time, until ``limit`` visible ones are found: a superseded memory costs a row lookup only
    when it ranks above the ``limit``-th visible one. (One SQL join could not stop early: SQLite drops the
    ORDER BY of a joined subquery, and a sort after the join reads every match.) Both queries read one
    snapshot (a read transaction), so a rowid deleted and reused meanwhile cannot pair a score with
    another memory.
    """
    own_transaction = not db.in_transaction  # (the write connection, shared, may be inside one already)
    if own_transaction:
        db.execute("BEGIN")
    try:
        ranked = db.execute(ranking, parameters).fetchall()
        rows: list[tuple[Any, ...]] = []
        chunk = max(limit, 32)
        for start in range(0, len(ranked), chunk):
            part = ranked[start : start + chunk]
            marks = ",".join("?" * len(part))
            found = {
                row[0]: row
                for row in db.execute(
                    f"{_SELECT} WHERE rowid IN ({marks}) AND superseded_by IS NULL",
                    [rowid for rowid, _ in part],
                )
            }
            for rowid, score in part:
                row = found.get(rowid)
                if row is not None:
                    rows.append((*row, score))
                    if len(rows) == limit:
                        return rows
        return rows
    finally:
        if own_transaction:
            db.execute("COMMIT")


def _filter_sql(filters: CandidateFilter | None) -> tuple[str, list[Any]]:
    """The SQL predicates (on ``m``, the memories table) and parameters of a candidate filter.

    No filter gives no predicate: the caller leaves the superseded memories out itself.
    """
    if filters is None:
        return "", []
    clauses = ["m.superseded_by IS NULL"]
    parameters: list[Any] = []
    if filters.min_importance is not None:
        clauses.append("m.importance >= ?")
        parameters.append(filters.min_importance)
    if filters.since is not None:
        clauses.append("m.created_at >= ?")
        parameters.append(filters.since)
    if filters.until is not None:
        clauses.append("m.created_at <= ?")
        parameters.append(filters.until)
    if filters.tags:
        tags = sorted(tag for tag in filters.tags if encodable(tag))
        marks = ",".join("?" * len(tags)) or "NULL"
        clauses.append(
            f"EXISTS (SELECT 1 FROM memory_tags AS t WHERE t.memory_rowid = m.rowid AND t.tag IN ({marks}))"
        )
        parameters.extend(tags)
    return " AND ".join(clauses), parameters


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so.

    After some errors (``SQLITE_FULL``, I/O errors) SQLite rolls back by itself; a second ``ROLLBACK``
    would raise "no transaction is active" and hide the real error.
    """
    if db.in_transaction:
        db.execute("ROLLBACK")
