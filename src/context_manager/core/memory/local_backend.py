"""``LocalBackend``: the embedded default, three tiers in files under ``storage_path``, one process.

* short-term: :class:`~.in_memory_store.InMemoryStore` in process, every change journaled to the log;
* medium-term: :class:`~.file_store.FileStore`, the append-only JSONL log (``memories.jsonl``) with an
  in-memory FTS5 index;
* long-term: :class:`~.sqlite_store.SQLiteStore` (``memories.sqlite3``, WAL, FTS5, versioned schema).

A lock file (``storage_path/.lock``) keeps a second manager (in this process or another) from opening
the same storage: it gets :class:`~context_manager.core.errors.StorageLockedError`. Blocking work runs on
the backend's own threads (never queued behind user code on the default executor): one writer thread for
every write (database transactions, journal writes with fsync, compaction), in order, and two reader
threads for long reads (large searches, scans). Reads use the database's read connections, so a write
never queues behind a search, in the thread pool or on the database (issue 15.6: with 8 readers at 100k
memories a commit waited seconds behind searches while the manager's write lock was held). A short
long-term read runs inline on the loop's own read connection.

Every tier has its own FTS5 index: scores are made comparable by scaling each tier's BM25 with the IDF of
every tier searched (:func:`~context_manager.core.memory.ranking.idf_corrections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from context_manager.core import forks
from context_manager.core.errors import StorageError
from context_manager.core.memory.backend import (
    TIER_ORDER,
    BackendStats,
    LexicalQuery,
    Staleness,
    UserScope,
    VectorHit,
    in_scope,
    merged_again,
    originals_gone,
    owner_label,
    tier_value,
    unchanged_since_read,
)
from context_manager.core.memory.file_store import LOG_FILE_NAME, FileStore, JsonlLog
from context_manager.core.memory.in_memory_store import IndexChange, InMemoryStore
from context_manager.core.memory.index import (
    ColumnWeights,
    Stemmer,
    VectorIndex,
    build_match,
    index_terms,
    owner_token,
    segment_tokens,
)
from context_manager.core.memory.locking import (
    LOCK_FILE_NAME,
    acquire_lock,
    lock_fault,
    make_private_directory,
    release_lock,
    replace_lock,
)
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.memory.ranking import idf_corrections, prune_common_terms, uniform_correction
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME, SQLiteStore
from context_manager.core.memory.store import MemoryStore, TurnKey
from context_manager.core.threads import to_the_end

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = ["LocalBackend"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_MOVE_CHUNK = 64  # short-term memories moved down to medium-term per event-loop step
_DELETE_CHUNK = 128  # volatile copies dropped per event-loop step after a move to long-term
_EDITABLE = ("content", "tags", "importance", "metadata", "context")
"""What a change of a memory held in two tiers writes to both (see ``_match_long_copies``)."""
_LARGE_WRITE_CHARS = 65_536
"""A write of the in-process tiers with more text than this is journaled and indexed on the writer thread:
tokenizing a 5 MB text held the event loop about 250 ms (its JSON line about 40 ms)."""


class LocalBackend:
    """The three tiers in files under one directory (see the module docstring).

    Args:
        path: The storage directory (created with mode 0o700).
        fsync: fsync every acknowledged write (survives power loss).
        weights: BM25 column weights of the full-text indexes.
    """

    kind = "sqlite"
    shared = False
    move_chunk = 64  # a chunk moved to long-term is one SQLite commit: larger chunks, fewer syncs

    def __init__(self, path: Path, *, fsync: bool = False, weights: ColumnWeights | None = None) -> None:
        self.path = path
        """The storage directory."""
        self._fsync = fsync
        self._weights = weights or ColumnWeights()
        self._lock_fd: int | None = None
        self._log: JsonlLog | None = None
        self.short: InMemoryStore | None = None
        """The short-term store (``None`` until opened)."""
        self.medium: FileStore | None = None
        """The medium-term store (``None`` until opened)."""
        self.long: SQLiteStore | None = None
        """The long-term store (``None`` until opened)."""
        self._executor: ThreadPoolExecutor | None = None  # long reads
        self._writer: ThreadPoolExecutor | None = None  # every write, one at a time, in order
        self._stemmer: Stemmer | None = None
        self._owners: set[str | None] = set()  # every user_id that ever had a memory here (superset)
        self._long_copies: set[str] = set()  # short-term ids that also have a long-term copy
        # ids whose delete record (delete_together) a refused write left in the database: dropped before
        # a copy of one is written again (else the next open deleted that new copy), or at close
        self._stale_deletes: set[str] = set()
        self._vectors: dict[str, VectorIndex] = {}
        self._vector_model: str | None = None
        # whether the database may hold vectors (None: not read yet): an update of a text deletes its vector
        # only then (a store that never had an embedder pays no write for it); only this process writes them
        self._vectors_stored: bool | None = None
        self._indexing: asyncio.Future[Any] | None = None  # large work on the in-process indexes
        self._pid = forks.pid  # the process whose storage threads, files and lock these are (see forks)

    @property
    def location(self) -> str:
        """The storage directory."""
        return str(self.path)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory, take the lock, open the database, replay the log."""
        self._pid = forks.pid
        self._vectors_stored = None
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="context-manager-storage-read")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="context-manager-storage-write")
        try:
            await self._write(self._open_locked)  # one trip to the storage thread, not one per step
        except BaseException:
            await self.close()
            raise

    def _open_locked(self) -> None:
        """Create the directory, take the lock, then open the stores (on the writer thread)."""
        make_private_directory(self.path)
        self._lock_fd = acquire_lock(self.path / LOCK_FILE_NAME)
        self._open_stores()

    def _open_stores(self) -> None:
        long_store = SQLiteStore(self.path / DATABASE_FILE_NAME, fsync=self._fsync, weights=self._weights)
        self.long = long_store
        long_store.open()
        log = JsonlLog(self.path / LOG_FILE_NAME, fsync=self._fsync)
        self._log = log
        live = log.open()
        self.short = InMemoryStore(MemoryTier.SHORT, journal=log, weights=self._weights)
        self.medium = FileStore(log, weights=self._weights)
        short = [memory for memory in live.values() if memory.tier is MemoryTier.SHORT]
        medium = [memory for memory in live.values() if memory.tier is not MemoryTier.SHORT]
        self.short.load(short)
        self.medium.load(medium)
        self._owners = {memory.user_id for memory in live.values()} | long_store.owners()
        if medium:
            # a move to long-term commits the long-term copy, then drops the medium-term one: finish a move
            # a crash or a full disk stopped in between (the long-term copy is the later write)
            moved = sorted(long_store.existing_ids([memory.id for memory in medium]))
            if moved:
                self.medium.delete(moved)
        if short:
            self._long_copies = long_store.existing_ids([memory.id for memory in short])
        # a crash between a delete and its erasure: records of memories in no tier are erased now
        dead = log.recorded_ids - live.keys()
        if dead:
            log.erase(dead - long_store.existing_ids(sorted(dead)))
        pending = long_store.pending_merges()
        if pending:
            self._finish_merges(pending)
        undone = long_store.pending_unmerges()
        if undone:
            self._finish_unmerges(undone)
        deleting = long_store.pending_deletes()
        if deleting:
            self._finish_deletes(deleting)
        if self._long_copies:
            self._match_long_copies()

    def _match_long_copies(self) -> None:
        """Give short-term copies what their long-term copy holds (at open, on the storage thread).

        A change of a memory held in both tiers (``update_memory``, a turn's ``context`` rewritten) commits
        the long-term copy before it journals the short-term one: one stopped in between (a crash, a full
        disk; never acknowledged) left two texts under one id, found by the words of either. The long-term
        copy holds the later write: the short-term copy takes its text, tags, importance and metadata.
        """
        short, log = self.short, self._log
        assert short is not None and log is not None
        stale: list[Memory] = []
        for memory_id, durable in self._long_store.get_many(sorted(self._long_copies)).items():
            fast = short.get(memory_id)
            if fast is not None and any(getattr(fast, name) != getattr(durable, name) for name in _EDITABLE):
                stale.append(fast.copy(**{name: getattr(durable, name) for name in _EDITABLE}))
        if stale:
            log.append([{"op": "put", "m": memory.to_dict()} for memory in stale])
            short.load(stale)

    def _finish_merges(self, merged_ids: Sequence[str]) -> None:
        """Finish consolidations stopped after their merged memory was committed (at open, storage thread).

        Marks every copy of their originals not marked yet (a volatile one in the log first), so the text is
        no longer found twice; the merge can then be undone like any other. A merged memory deleted since
        leaves its originals as they are.
        """
        long_store, short, medium, log = self._long_store, self.short, self.medium, self._log
        assert short is not None and medium is not None and log is not None
        volatile: list[tuple[InMemoryStore, Memory]] = []
        long_marks: list[Memory] = []
        for merged in long_store.get_many(merged_ids).values():
            originals = long_store.get_many(merged.merged_from)
            for original_id in merged.merged_from:
                for store in (short, medium):
                    copy = store.get(original_id)
                    if copy is not None and copy.superseded_by is None:
                        volatile.append((store, copy.copy(superseded_by=merged.id)))
                copy = originals.get(original_id)
                if copy is not None and copy.superseded_by is None:
                    long_marks.append(copy.copy(superseded_by=merged.id))
        if volatile:
            log.append([{"op": "put", "m": memory.to_dict()} for _, memory in volatile])
            for store, memory in volatile:
                store.load([memory])
        long_store.put(long_marks)
        long_store.finish_merges(merged_ids)

    def _finish_unmerges(self, merged_ids: Sequence[str]) -> None:
        """Finish undoing merges stopped before their merged memory was deleted (at open, storage thread).

        :meth:`unmerge` records the undo with its first write: here, every copy of the originals still
        marked as merged into one of them is restored, then the merged memory is deleted from every tier
        (its log records and vectors with it), so the text is never left visible twice.
        """
        long_store, short, medium, log = self._long_store, self.short, self.medium, self._log
        assert short is not None and medium is not None and log is not None
        volatile_puts: list[tuple[InMemoryStore, Memory]] = []
        long_puts: list[Memory] = []
        gone: list[str] = []
        for merged in long_store.get_many(merged_ids).values():
            originals = long_store.get_many(merged.merged_from)
            for original_id in merged.merged_from:
                for store in (short, medium):
                    copy = store.get(original_id)
                    if copy is not None and copy.superseded_by == merged.id:
                        volatile_puts.append((store, copy.copy(superseded_by=None)))
                copy = originals.get(original_id)
                if copy is not None and copy.superseded_by == merged.id:
                    long_puts.append(copy.copy(superseded_by=None))
            gone.append(merged.id)
        if volatile_puts:
            log.append([{"op": "put", "m": memory.to_dict()} for _, memory in volatile_puts])
            for store, memory in volatile_puts:
                store.load([memory])
        long_store.put(long_puts)
        for store in (short, medium):
            held = [memory_id for memory_id in gone if memory_id in store]
            if held:
                log.append([{"op": "delete", "ids": held}])
                store.delete(held, log=False)
        long_store.delete(gone)
        if gone:
            self._long_copies.difference_update(gone)
            log.erase(gone)
            long_store.delete_vectors(gone)
        long_store.finish_unmerges(merged_ids)

    def _finish_deletes(self, ids: Sequence[str]) -> None:
        """Finish deletes stopped after their long-term copies were deleted (at open, on the storage thread).

        :meth:`delete_together` records the delete of the volatile copies in the transaction deleting the
        long-term ones: here those volatile copies are deleted (a merged memory is never left without the
        originals it was deleted with, nor they without it), with their log records and vectors.
        """
        long_store, short, medium, log = self._long_store, self.short, self.medium, self._log
        assert short is not None and medium is not None and log is not None
        held = [memory_id for memory_id in ids if memory_id in short or memory_id in medium]
        if held:
            log.append([{"op": "delete", "ids": held}])
            for store in (short, medium):
                store.delete(held, log=False)
        self._long_copies.difference_update(ids)
        gone = sorted(set(ids) - long_store.existing_ids(list(ids)))
        if gone:
            log.erase(gone)
            long_store.delete_vectors(gone)
        long_store.finish_deletes(ids)

    async def close(self) -> None:
        """Close the stores and the log, release the lock and the storage threads.

        In a process forked after :meth:`open` it only forgets them: they are the parent's (its threads do
        not run here, and releasing the lock, a ``flock`` the child shares, would release the parent's).
        """
        if self._pid != forks.pid:
            self._executor = self._writer = None
            self._lock_fd = None
            return
        if self._writer is not None:
            if self._stale_deletes:
                with contextlib.suppress(StorageError):
                    await self._drop_stale_deletes()
            with contextlib.suppress(Exception):
                await self._write(self._close_stores)
        for executor in (self._executor, self._writer):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._writer = None
        release_lock(self._lock_fd)
        self._lock_fd = None

    def abandon(self) -> None:
        """Release the lock now, without closing anything: the loop that opened the storage has ended.

        For a manager garbage-collected after its event loop ended (see ``core.unclosed``): nothing can
        run on that loop any more, and without this the storage stayed locked for the process's life. The
        stores and threads, unreachable, are closed as the garbage collector frees them (every acknowledged
        write is already in the files).
        """
        if self._pid != forks.pid:
            return
        release_lock(self._lock_fd)
        self._lock_fd = None

    def _check_process(self) -> None:
        """Refuse to hand work, in a forked child, to the parent's storage threads (it would wait for ever).

        Raises:
            LifecycleError: this process is not the one that opened the storage.
        """
        if self._pid != forks.pid:
            raise forks.forked_error("memory storage", f"storage at {self.path}", self._pid)

    def _close_stores(self) -> None:
        if self._stemmer is not None:
            self._stemmer.close()
            self._stemmer = None
        for store in (self.short, self.medium):
            if store is not None:
                store.close()
        if self._log is not None:
            self._log.close()
        if self.long is not None:
            self.long.close()
        self.short = self.medium = None
        self.long = None
        self._log = None

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking read on the reader threads."""
        if self._executor is None:
            raise StorageError(f"memory storage at {self.path} is closed", path=self.path)
        self._check_process()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(function, *args)
        )

    async def _write(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run blocking writing work on the writer thread (one at a time, in the order submitted)."""
        if self._writer is None:
            raise StorageError(f"memory storage at {self.path} is closed", path=self.path)
        self._check_process()
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, functools.partial(function, *args)
        )

    async def _read_long(self, read: Callable[..., _T], *args: Any) -> _T:
        """Run a short read of the long-term store inline on the loop's own read connection.

        That connection never waits for a write in progress (WAL). When the store cannot read in
        parallel (its file was replaced: reads share the write connection), inline only when the lock
        is free, else on a reader thread: the loop never waits on the lock.
        """
        store = self._long_store
        if store.can_read_now():
            return read(*args)
        with store.held_if_free() as free:
            if free:
                return read(*args)
        return await self._run(read, *args)

    @property
    def _stores(self) -> tuple[InMemoryStore, FileStore, SQLiteStore]:
        if self.short is None or self.medium is None or self.long is None:
            raise StorageError(f"memory storage at {self.path} is closed", path=self.path)
        return self.short, self.medium, self.long

    @property
    def _long_store(self) -> SQLiteStore:
        return self._stores[2]

    def _volatile(self, tier: MemoryTier) -> InMemoryStore:
        short, medium, _ = self._stores
        return short if tier is MemoryTier.SHORT else medium

    @property
    def log(self) -> JsonlLog | None:
        """The journal of the volatile tiers (``None`` until opened)."""
        return self._log

    # -- tiers -------------------------------------------------------------------------------------

    async def _journal(self, records: list[dict[str, Any]], *, large: bool = False) -> None:
        """Append records to the log: with fsync or ``large`` (texts of megabytes) on the writer thread.

        Inline, a journal write is one small buffered ``write()`` of whole lines: cheaper than a thread
        hop. With fsync every append waits for the disk, which must never happen on the event loop.
        """
        if not records:
            return
        log = self._log
        if log is None:
            raise StorageError(f"memory storage at {self.path} is closed", path=self.path)
        if self._fsync or large:
            await self._write(log.append, records)
        else:
            log.append(records)

    async def put_tiers(self, groups: Sequence[tuple[MemoryTier, Sequence[Memory]]]) -> None:
        """See :meth:`MemoryBackend.put_tiers` (one process: the manager's write lock keeps others out).

        Once begun it runs to its end: a caller cancelled meanwhile waits for it, then gets its
        cancellation. (Cancelled between two groups, an important memory stayed in short-term without
        its long-term copy, for good; cancelled during the long-term write, which its thread commits all
        the same, the copy was not noted.) The common add, a few memories to one volatile tier with
        nothing to wait for, never gives the loop a turn: it is written inline, without a task more.
        """
        written = [(tier, memories) for tier, memories in groups if memories]
        if not written:
            return
        if len(written) == 1 and self._puts_inline(*written[0]):
            await self.put(*written[0])
            return

        async def put_all() -> None:
            for tier, memories in written:
                await self.put(tier, memories)

        await to_the_end(asyncio.ensure_future(put_all()))

    def _puts_inline(self, tier: MemoryTier, memories: Sequence[Memory]) -> bool:
        """Whether :meth:`put` of ``memories`` in ``tier`` runs without an await that yields to the loop.

        A volatile tier, no fsync, no index work on the writer thread, small texts, none held in the
        other volatile tier: the journal line and the index change are then written in one loop step.
        """
        if tier is MemoryTier.LONG or self._fsync or self._indexing is not None:
            return False
        store = self._volatile(tier)
        other = self._volatile(MemoryTier.MEDIUM if tier is MemoryTier.SHORT else MemoryTier.SHORT)
        chars = 0  # as the index change counts them: the new texts and those they replace
        for memory in memories:
            if memory.id in other:
                return False
            replaced = store.get(memory.id)
            chars += len(memory.content) + (0 if replaced is None else len(replaced.content))
        return chars <= _LARGE_WRITE_CHARS

    async def put(
        self,
        tier: MemoryTier,
        memories: Sequence[Memory],
        *,
        pending_merges: Sequence[str] = (),
        pending_unmerges: Sequence[str] = (),
    ) -> None:
        """Insert or replace memories in ``tier``: journaled (volatile tiers) or committed (long-term).

        ``pending_merges``, ``pending_unmerges`` (long-term only): merges and undone merges recorded with
        the write, even of no memory for an undo (:meth:`SQLiteStore.put`).
        """
        if not memories and not (pending_unmerges and tier is MemoryTier.LONG):
            return
        if self._stale_deletes:
            await self._drop_stale_deletes([memory.id for memory in memories])
        self._owners.update(memory.user_id for memory in memories)
        if tier is MemoryTier.LONG:
            write = functools.partial(
                self._long_store.put, pending_merges=pending_merges, pending_unmerges=pending_unmerges
            )
            await self._write(write, list(memories))
            short = self._stores[0]
            self._long_copies.update(memory.id for memory in memories if memory.id in short)
            return
        store = self._volatile(tier)
        chars = 0
        for memory in memories:
            memory.tier = tier
            chars += len(memory.content)
        # the journal first (off the loop with fsync or megabytes of text), then the in-process index
        records = [{"op": "put", "m": memory.to_dict()} for memory in memories]
        await self._journal(records, large=chars > _LARGE_WRITE_CHARS)
        if self._indexing is not None:
            await self._settled()
        change = store.stage_load(memories)
        # the journal holds one volatile copy per id (a replay sees the last put): so does the process,
        # and a copy in the other volatile tier is gone with this put (as a move between them is)
        other = self._volatile(MemoryTier.MEDIUM if tier is MemoryTier.SHORT else MemoryTier.SHORT)
        elsewhere = [memory.id for memory in memories if memory.id in other]
        if not elsewhere and change.chars <= _LARGE_WRITE_CHARS:
            store.apply(change)  # the common write, without a coroutine more (see _apply)
            return
        await self._apply((store, change), (other, other.stage_delete(elsewhere)[1]))
        if elsewhere and tier is MemoryTier.MEDIUM:
            self._long_copies.difference_update(elsewhere)

    async def replace(self, tier: MemoryTier, memories: Sequence[Memory]) -> list[str]:
        """Replace the memories still stored in ``tier``; return the ids replaced (see the protocol).

        A memory whose text changes loses its vector first (committed before the new text is written, as
        in :meth:`update`): a process killed before its caller embeds the new text leaves it without one,
        embedded when the store next opens, not with the old text's vector for good.
        """
        present = {
            copy.id: copy
            for copy in await self.copies([memory.id for memory in memories])
            if copy.tier is tier
        }
        kept = [memory for memory in memories if memory.id in present]
        retexted = [memory.id for memory in kept if present[memory.id].content != memory.content]
        if retexted and await self._may_hold_vectors():
            await self.delete_vectors(list(dict.fromkeys(retexted)))
        await self.put(tier, kept)
        return [memory.id for memory in kept]

    async def move(self, memories: Sequence[Memory], source: MemoryTier, target: MemoryTier) -> None:
        """Move memories down or up a tier, a bounded chunk per event-loop step.

        Between volatile tiers the journal's ``put`` record is the move (a replay sees one tier); to
        long-term the copy is committed before the volatile copy is dropped. A short-term memory moved
        to long-term keeps its fast copy (the long-term one is the durable one).
        """
        if not memories or source is target:
            return
        ids = [memory.id for memory in memories]
        if target is MemoryTier.LONG:
            await self.put(MemoryTier.LONG, [memory.copy() for memory in memories])
            if source is MemoryTier.MEDIUM:
                medium = self._stores[1]
                present = [i for i in ids if i in medium]
                for start in range(0, len(present), _DELETE_CHUNK):
                    if start:
                        await asyncio.sleep(0)  # FTS deletes: a bounded chunk per event-loop step
                    await self._drop(medium, present[start : start + _DELETE_CHUNK])
            return
        if source is MemoryTier.LONG:
            await self.put(target, memories)
            await self.delete(MemoryTier.LONG, ids)
            return
        origin, destination = self._volatile(source), self._volatile(target)
        for start in range(0, len(memories), _MOVE_CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = list(memories[start : start + _MOVE_CHUNK])
            for memory in chunk:
                memory.tier = target
            large = sum(len(memory.content) for memory in chunk) > _LARGE_WRITE_CHARS
            await self._journal(
                [{"op": "put", "m": memory.to_dict()} for memory in chunk], large=large
            )  # the move
            await self._settled()
            moved = destination.stage_load(chunk)
            await self._apply((destination, moved), (origin, origin.stage_delete([m.id for m in chunk])[1]))
            if source is MemoryTier.SHORT:
                self._long_copies.difference_update(memory.id for memory in chunk)

    async def move_down(self, ids: Sequence[str], source: MemoryTier, target: MemoryTier) -> int:
        """Move the ``source`` copies of ``ids`` down to ``target`` as they are now; return how many left."""
        if source is MemoryTier.LONG or source is target:
            return 0
        origin = self._volatile(source)
        current = [memory for memory in (origin.get(memory_id) for memory_id in ids) if memory is not None]
        leaving = len(current)
        if target is not MemoryTier.LONG:
            with_copy = sorted(memory.id for memory in current if memory.id in self._long_copies)
            if with_copy:
                # only their source copy goes, the long-term one stays (the delete forgets that they had
                # one: the set of ids with a long-term copy follows the short-term tier)
                await self.delete(source, with_copy)
                dropped = set(with_copy)
                current = [memory for memory in current if memory.id not in dropped]
        await self.move(current, source, target)
        return leaving

    async def _drop(self, store: InMemoryStore, ids: Sequence[str]) -> list[str]:
        """Delete ids from a volatile tier: the journal's delete record first, then the index."""
        present = [memory_id for memory_id in ids if memory_id in store]
        if present:
            await self._journal([{"op": "delete", "ids": present}])
            await self._settled()
            await self._apply((store, store.stage_delete(present)[1]))
        return present

    async def _settled(self) -> None:
        """Wait until no work on an in-process index runs on the writer thread (see :meth:`_apply`)."""
        while self._indexing is not None:
            indexing = self._indexing
            if not indexing.done():
                await asyncio.wait({indexing})
            if self._indexing is indexing:
                self._indexing = None

    async def _apply(self, *changes: tuple[InMemoryStore, IndexChange]) -> None:
        """Apply changes of the in-process indexes staged since :meth:`_settled` returned (no await since).

        Inline, or with megabytes of text all of them on the writer thread: FTS5 tokenizes a text it indexes
        or deletes (a 5 MB text: about 250 ms) without the interpreter lock, so the loop runs meanwhile.
        Every read of these indexes waits for that work first (:meth:`_settled`): it never waits on the loop
        for the thread's connection, and never reads an index behind the store's records (a staged delete's
        rows still there). Staging and starting the work happen in one loop step, so a reader sees both or
        neither.
        """
        if sum(change.chars for _, change in changes) <= _LARGE_WRITE_CHARS:
            for store, change in changes:
                store.apply(change)
            return
        await self._off_loop(_apply_changes, changes)

    async def _on_index(self, chars: int, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work`` reading or rewriting an in-process index: inline, or on the writer thread.

        On the writer thread over ``chars`` of text; readers wait for it there, as for :meth:`_apply`.
        """
        await self._settled()
        if chars <= _LARGE_WRITE_CHARS:
            return work(*args)
        return await self._off_loop(work, *args)

    async def _off_loop(self, work: Callable[..., _T], *args: Any) -> _T:
        """Start ``work`` on the writer thread at once (settled, no await since) and wait for it."""
        if self._writer is None:
            raise StorageError(f"memory storage at {self.path} is closed", path=self.path)
        self._check_process()
        running = asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(work, *args))
        self._indexing = running
        # shielded: a caller cancelled meanwhile leaves the work running; readers wait for it all the same
        return await asyncio.shield(running)

    async def put_new(self, groups: Sequence[tuple[MemoryTier, Sequence[Memory]]]) -> list[str]:
        """See :meth:`MemoryBackend.put_new` (one process: the manager's write lock keeps others out)."""
        ids = [memory.id for _, memories in groups for memory in memories]
        stored = {copy.id for copy in await self.copies(ids)}
        if stored:
            groups = [(tier, [m for m in memories if m.id not in stored]) for tier, memories in groups]
        await self.put_tiers(groups)
        return [memory_id for memory_id in dict.fromkeys(ids) if memory_id in stored]

    async def add_long_copies(self, ids: Sequence[str]) -> list[str]:
        """See :meth:`MemoryBackend.add_long_copies` (one process: the write lock keeps others out)."""
        found = await self.copies(list(dict.fromkeys(ids)))  # fastest tier first per id
        has_long = {copy.id for copy in found if copy.tier is MemoryTier.LONG}
        fastest: dict[str, Memory] = {}
        for copy in found:
            fastest.setdefault(copy.id, copy)
        missing = [copy.copy(tier=MemoryTier.LONG) for i, copy in fastest.items() if i not in has_long]
        await self.put(MemoryTier.LONG, missing)
        return [memory.id for memory in missing]

    async def delete(
        self, tier: MemoryTier, ids: Sequence[str], *, only: Staleness | None = None
    ) -> list[str]:
        """See :meth:`MemoryBackend.delete`."""
        if only is not None and ids:
            ids = [
                copy.id for copy in await self.copies(list(ids)) if copy.tier is tier and only.applies(copy)
            ]
        if not ids:
            return []
        if tier is MemoryTier.LONG:
            present = await self._write(self._long_store.delete, list(ids))
            self._long_copies.difference_update(ids)
            return present
        present = await self._drop(self._volatile(tier), ids)
        if tier is MemoryTier.SHORT:
            self._long_copies.difference_update(ids)
        return present

    async def _drop_stale_deletes(self, written: Sequence[str] = ()) -> None:
        """Drop the delete records a refused write left (see :meth:`delete_together`).

        Raises:
            StorageError: the database refused again and ``written`` (ids about to be written) holds one
                of them: the write must not go on (the next open would delete its copy).
        """
        stale = sorted(self._stale_deletes)
        try:
            await self._write(self._long_store.finish_deletes, stale)
        except StorageError:
            if not self._stale_deletes.isdisjoint(written):
                raise
            return
        self._stale_deletes.difference_update(stale)

    async def delete_together(self, ids: Sequence[str]) -> list[tuple[str, MemoryTier]]:
        """See :meth:`MemoryBackend.delete_together`: all of them or none, even if the process is killed.

        Once begun it runs to its end: a caller cancelled meanwhile waits for it, then gets its
        cancellation (cancelled after the long-term transaction, the process kept the volatile copies
        until it next opened the store, and their delete record, which then deleted a copy written again
        meanwhile).
        """
        deleted: list[tuple[str, MemoryTier]] = await to_the_end(
            asyncio.ensure_future(self._delete_together(ids))
        )
        return deleted

    async def _delete_together(self, ids: Sequence[str]) -> list[tuple[str, MemoryTier]]:
        """The work of :meth:`delete_together`.

        The long-term copies go in one database transaction that also records the delete of the volatile
        copies; those go in one log record after it, then the record is dropped. A process killed in
        between leaves the record: the store finishes the delete when it opens (:meth:`_finish_deletes`).
        A log write refused after the transaction (a full disk) puts the long-term copies back and drops
        the record before raising: nothing is deleted.
        """
        found = await self.copies(list(dict.fromkeys(ids)))
        long_copies = [copy for copy in found if copy.tier is MemoryTier.LONG]
        volatile = [copy for copy in found if copy.tier is not MemoryTier.LONG]
        volatile_ids = list(dict.fromkeys(copy.id for copy in volatile))
        pending = volatile_ids if long_copies else []
        if long_copies or pending:
            write = functools.partial(self._long_store.delete, pending_deletes=pending)
            present = set(await self._write(write, [copy.id for copy in long_copies]))
            long_copies = [copy for copy in long_copies if copy.id in present]
        if volatile_ids:
            try:
                await self._journal([{"op": "delete", "ids": volatile_ids}])
            except StorageError:
                if pending:
                    with contextlib.suppress(StorageError):  # else the next open finishes the delete
                        await self._write(self._long_store.put, [copy.copy() for copy in long_copies])
                        # put back: the delete record must go (the next open deleted the volatile copies)
                        self._stale_deletes.update(pending)
                        await self._drop_stale_deletes()
                raise
            await self._settled()
            await self._apply(
                *(
                    (store, store.stage_delete([copy.id for copy in volatile if copy.tier is tier])[1])
                    for tier in (MemoryTier.SHORT, MemoryTier.MEDIUM)
                    for store in (self._volatile(tier),)
                )
            )
        self._long_copies.difference_update(copy.id for copy in found)
        if pending:
            # the delete is done: a refused drop of its record is not an error (the memory is gone), but
            # the record is dropped before any of these ids is written again
            self._stale_deletes.update(pending)
            await self._drop_stale_deletes()
        return [(copy.id, copy.tier) for copy in [*long_copies, *volatile]]

    async def _may_hold_vectors(self) -> bool:
        """Whether the database may hold vectors (read once per open; then this process writes them)."""
        if self._vectors_stored is None:
            stored = await self._run(self._long_store.has_vectors)
            if self._vectors_stored is None:  # not a vector saved meanwhile
                self._vectors_stored = stored
        return bool(self._vectors_stored)

    async def update(
        self, ids: Sequence[str], changes: Mapping[str, Any], tier: MemoryTier | None = None
    ) -> list[str]:
        """See :meth:`MemoryBackend.update` (one process: the manager's write lock keeps others out).

        A new ``content`` deletes the memories' vectors first (the manager embeds the new text; a process
        killed before that leaves them without one, embedded when the store next opens).

        A write that fails (``StorageError``: the log refusing a fast copy on a full disk, the database
        refusing the delete of a long-term copy) puts the memories back as they were before raising: the
        fast copy a move took away put back (a short- and long-term memory moved to medium-term whose
        long-term copy could not be deleted stays in short- and long-term, not in long-term alone), a fast
        copy a failed move made removed, the long-term tier as it was (not two texts under one id, which
        the next open would settle as the update's, nor in two tiers); if that fails too, the memory keeps
        at least one copy, and the next open settles them.
        """
        found = await self.copies(list(dict.fromkeys(ids)))
        if "content" in changes and found and await self._may_hold_vectors():
            # the vectors of the old text go first, committed before the new text is written (the fast
            # tiers are a log, the vectors in the database: no transaction holds both): a process killed
            # before the manager embeds the new text leaves the memory without a vector, which the next
            # open embeds, not with its old text's vector for good
            await self.delete_vectors(list(dict.fromkeys(copy.id for copy in found)))
        try:
            return await self._update(found, changes, tier)
        except StorageError:
            # the fast copies first: a long-term copy the call made goes with them only once the memory is
            # held in its tier again (_restore_long keeps the only copy left)
            with contextlib.suppress(StorageError):
                await self._restore_volatile(found)
            with contextlib.suppress(StorageError):
                await self._restore_long(found)
            raise

    async def _restore_volatile(self, found: Sequence[Memory]) -> None:
        """Put the volatile copies of ``found``'s memories back as ``found`` holds them.

        A volatile copy the call changed or moved to the other volatile tier is put back (a put in a
        volatile tier replaces the id's copy in the other one, as the journal's replay does); a volatile
        copy the call made of a memory that had none (a long-term memory moved to a volatile tier whose
        long-term copy could not be deleted) is deleted while the memory still has its long-term copy.
        """
        before = {copy.id: copy for copy in found if copy.tier is not MemoryTier.LONG}
        current = await self.copies(list(dict.fromkeys(copy.id for copy in found)))
        now = {copy.id: copy for copy in current if copy.tier is not MemoryTier.LONG}
        with_long = {copy.id for copy in current if copy.tier is MemoryTier.LONG}
        for volatile_tier in (MemoryTier.MEDIUM, MemoryTier.SHORT):
            restored = [
                copy.copy()
                for memory_id, copy in before.items()
                if copy.tier is volatile_tier and now.get(memory_id) != copy
            ]
            await self.put(volatile_tier, restored)
            if volatile_tier is MemoryTier.SHORT:  # a short-term copy beside a long-term one: both written
                self._long_copies.update(copy.id for copy in restored if copy.id in with_long)
        for memory_id, copy in now.items():
            if memory_id not in before and memory_id in with_long:
                await self.delete(copy.tier, [memory_id])

    async def _restore_long(self, found: Sequence[Memory]) -> None:
        """Put the long-term copies of ``found``'s memories back as ``found`` holds them (none: none).

        A long-term copy made by the call is deleted only while the memory still has another copy: one
        moved to long-term (``tier=``) whose faster copy's removal was already logged keeps it, with the
        text ``found`` holds (deleting it would lose the memory).
        """
        before = {copy.id: copy for copy in found if copy.tier is MemoryTier.LONG}
        current = await self.copies(list(dict.fromkeys(copy.id for copy in found)))
        now = {copy.id: copy for copy in current if copy.tier is MemoryTier.LONG}
        held_elsewhere = {copy.id for copy in current if copy.tier is not MemoryTier.LONG}
        changed = [copy for memory_id, copy in before.items() if now.get(memory_id) != copy]
        for memory_id, copy in now.items():
            if memory_id not in before and memory_id not in held_elsewhere:  # its only copy left
                kept = fastest_first([old for old in found if old.id == memory_id])[0].copy(
                    tier=MemoryTier.LONG
                )
                if copy != kept:
                    changed.append(kept)
        await self.put(MemoryTier.LONG, changed)  # nothing written when nothing changed (a locked database)
        await self.delete(
            MemoryTier.LONG,
            [memory_id for memory_id in now if memory_id not in before and memory_id in held_elsewhere],
        )

    async def _update(
        self, found: Sequence[Memory], changes: Mapping[str, Any], tier: MemoryTier | None
    ) -> list[str]:
        if tier is None:
            by_tier: dict[MemoryTier, list[Memory]] = {}
            for copy in found:
                by_tier.setdefault(copy.tier, []).append(copy.copy(**changes))
            for copy_tier in (MemoryTier.LONG, MemoryTier.MEDIUM, MemoryTier.SHORT):
                await self.put(copy_tier, by_tier.get(copy_tier, []))
            return list(dict.fromkeys(copy.id for copy in found))
        by_id: dict[str, list[Memory]] = {}
        for copy in found:
            by_id.setdefault(copy.id, []).append(copy.copy())  # moves change a copy's tier: not found's
        for memory_id, held in by_id.items():
            held = fastest_first(held)
            kept = next((copy for copy in held if copy.tier is tier), None)
            if kept is None:
                # moved as the journal records a move (a put in the new tier: a replay sees one volatile
                # tier), never as a put then a delete of the id (the replay would delete the new copy)
                await self.move([held[0]], held[0].tier, tier)
                kept = held[0].copy(tier=tier)
            await self.put(tier, [kept.copy(**changes)])
            for copy in await self.copies([memory_id]):
                if copy.tier is not tier:
                    await self.delete(copy.tier, [memory_id])
        return list(by_id)

    async def merge(self, groups: Sequence[tuple[Memory, Sequence[Memory]]]) -> list[bool]:
        """See :meth:`MemoryBackend.merge`: the merged memories first, then the marks on the originals."""
        # the originals' text on a reader thread: megabytes of it read inline held the loop tens of ms
        found = await self.copies(
            [original.id for _, originals in groups for original in originals], on_thread=True
        )
        by_id: dict[str, list[Memory]] = {}
        for copy in found:
            by_id.setdefault(copy.id, []).append(copy)
        merged_flags = [
            all(unchanged_since_read(original, by_id.get(original.id, [])) for original in originals)
            for _, originals in groups
        ]
        winners = [group for group, merged in zip(groups, merged_flags, strict=True) if merged]
        marked: dict[MemoryTier, list[Memory]] = {}
        for merged, originals in winners:
            for original in originals:
                for copy in by_id[original.id]:
                    marked.setdefault(copy.tier, []).append(copy.copy(superseded_by=merged.id))
        # the merged memories, the marks of the long-term originals and a record of the merges in one
        # transaction; the volatile originals are marked in the log after it: a merge stopped in between
        # (a crash, a failed log write) is finished when the store opens (_finish_merges), not left with
        # its text visible twice
        merged_ids = [merged.id for merged, _ in winners]
        long_writes = [merged.copy() for merged, _ in winners] + marked.get(MemoryTier.LONG, [])
        await self.put(MemoryTier.LONG, long_writes, pending_merges=merged_ids)
        for copy_tier in (MemoryTier.MEDIUM, MemoryTier.SHORT):
            await self.put(copy_tier, marked.get(copy_tier, []))
        if merged_ids:
            await self._write(self._long_store.finish_merges, merged_ids)
        return merged_flags

    async def unmerge(self, merged_id: str, original_ids: Sequence[str]) -> tuple[list[str], list[Memory]]:
        """See :meth:`MemoryBackend.unmerge`."""
        merged_copies = await self.copies([merged_id])
        later = next((copy.superseded_by for copy in merged_copies if copy.superseded_by is not None), None)
        if later is not None:
            raise merged_again(merged_id, later)
        restored: dict[MemoryTier, list[Memory]] = {}
        for copy in await self.copies(list(original_ids)):
            if copy.superseded_by == merged_id:
                restored.setdefault(copy.tier, []).append(copy.copy(superseded_by=None))
        found = {copy.id for copies in restored.values() for copy in copies}
        missing = [memory_id for memory_id in original_ids if memory_id not in found]
        if missing:
            raise originals_gone(merged_id, missing)
        # the long-term originals and a record of the undo in one transaction, then the volatile originals,
        # then the merged memory deleted: an undo stopped in between (a crash, a failed write) is finished
        # when the store opens (_finish_unmerges), not left with its text visible twice
        await self.put(MemoryTier.LONG, restored.get(MemoryTier.LONG, []), pending_unmerges=[merged_id])
        for copy_tier in (MemoryTier.MEDIUM, MemoryTier.SHORT):
            await self.put(copy_tier, restored.get(copy_tier, []))
        for copy in merged_copies:
            await self.delete(copy.tier, [merged_id])
        await self._write(self._long_store.finish_unmerges, [merged_id])
        return sorted({copy.id for copies in restored.values() for copy in copies}), merged_copies

    async def forget(self, erased: Sequence[str], rewritten: Sequence[str] = ()) -> None:
        """Scrub the files of memories deleted from every tier (and of earlier versions of ``rewritten``).

        The log's ``put`` records of ``erased`` (and all but the newest of ``rewritten``) are overwritten
        in place; their vectors are deleted (zeroed by ``secure_delete``). The database zeroes deleted
        rows itself; the words left in its FTS5 segments go when the store closes
        (:meth:`SQLiteStore.finish_erasure`).
        """
        log = self._log
        if log is None:
            raise StorageError(f"memory storage at {self.path} is closed", path=self.path)
        erased, rewritten = list(erased), list(rewritten)

        def scrub() -> None:
            log.erase(erased)
            log.erase(rewritten, keep_latest=True)

        if erased or rewritten:
            if self._fsync:
                await self._write(scrub)
            else:  # a few pwrite() calls
                scrub()
        if erased:
            for index in self._vectors.values():
                index.remove(erased)
            await self._write(self._long_store.delete_vectors, erased)

    async def touch(self, updates: Mapping[str, tuple[float, int]]) -> None:
        """Record access times and counts in every tier (one journal record, one transaction)."""
        if not updates:
            return
        short, medium, long_store = self._stores
        held = [
            [memory_id, last_accessed, access_count]
            for memory_id, (last_accessed, access_count) in updates.items()
            if memory_id in short or memory_id in medium
        ]
        if held:
            await self._journal([{"op": "touch", "u": held}])
        short.touch(updates, log=False)
        medium.touch(updates, log=False)
        await self._write(long_store.touch, dict(updates))

    async def copies(self, ids: Sequence[str], *, on_thread: bool = False) -> list[Memory]:
        """Every stored copy of the memories among ``ids``, fastest tier first per id.

        The long-term copies are read inline (a short read), or on a reader thread with ``on_thread``.
        """
        short, medium, long_store = self._stores
        wanted = list(ids)
        read = self._run if on_thread else self._read_long
        in_long = await read(long_store.get_many, wanted) if wanted else {}
        found: list[Memory] = []
        for memory_id in wanted:
            for store_copy in (short.get(memory_id), medium.get(memory_id), in_long.get(memory_id)):
                if store_copy is not None:
                    found.append(store_copy)
        return found

    async def count(self, tier: MemoryTier) -> int:
        """How many memories ``tier`` holds."""
        short, medium, long_store = self._stores
        if tier is MemoryTier.LONG:
            return long_store.count()
        return (short if tier is MemoryTier.SHORT else medium).count()

    def known_count(self, tier: MemoryTier) -> tuple[int, bool] | None:
        """The short- and medium-term tiers are counted in process (exactly); long-term: ask :meth:`count`."""
        if tier is MemoryTier.LONG:
            return None
        short, medium, _ = self._stores
        return (short if tier is MemoryTier.SHORT else medium).count(), False

    async def members(self, tier: MemoryTier) -> list[Memory]:
        """Every memory of ``tier``."""
        if tier is MemoryTier.LONG:
            return await self._run(lambda: list(self._long_store.all()))
        return list(self._volatile(tier).all())

    async def overflow_victims(self, tier: MemoryTier, capacity: int, keep: int, now: float) -> list[str]:
        """See :meth:`MemoryBackend.overflow_victims` (ranked in process: the volatile tiers live here)."""
        members = await self.members(tier)
        excess = len(members) - keep
        if len(members) <= capacity or excess <= 0:
            return []
        ranked = sorted(
            members,
            key=lambda m: (
                tier_value(m.importance, m.created_at, m.last_accessed, m.access_count, now),
                m.id,
            ),
        )
        return [m.id for m in ranked[:excess]]

    async def long_copies(self, ids: Sequence[str]) -> set[str]:
        """The short-term ids among ``ids`` that also have a long-term copy."""
        return {memory_id for memory_id in ids if memory_id in self._long_copies}

    async def scan(self, scope: UserScope, *, every_copy: bool) -> list[Memory]:
        """Every memory of the scope (one per memory, fastest tier; or every stored copy)."""
        short, medium, long_store = self._stores
        volatile = list(short.all()) + list(medium.all())
        long_memories = await self._run(lambda: list(long_store.all()))
        if every_copy:
            return [m for m in volatile + long_memories if in_scope(m, scope)]
        return self._one_copy_each(long_memories, scope)

    def _one_copy_each(self, long_memories: Sequence[Memory], scope: UserScope) -> list[Memory]:
        """The scope's memories, one copy each (the fastest tier's), given the long-term ones as read."""
        short, medium, _ = self._stores
        found: dict[str, Memory] = {}
        for memory in long_memories:
            found[memory.id] = memory
        for memory in list(medium.all()) + list(short.all()):
            found[memory.id] = memory
        return [memory for memory in found.values() if in_scope(memory, scope)]

    async def newest(self, scope: UserScope, limit: int) -> list[Memory]:
        """The scope's ``limit`` newest memories not superseded, newest first (one per memory, fastest tier).

        The long-term database answers from its (user, created_at) index; the in-process tiers are scanned.
        """
        short, medium, long_store = self._stores
        every_user = scope is ALL_USERS
        user_id = None if every_user else cast("str | None", scope)
        long_memories = await self._run(lambda: long_store.newest(user_id, limit, every_user=every_user))
        found: dict[str, Memory] = {memory.id: memory for memory in long_memories}
        for store in (medium, short):
            for memory in store.all():
                if memory.superseded_by is None and in_scope(memory, scope):
                    found[memory.id] = memory
        # ties in id order, newest first, as PostgreSQL orders them
        return heapq.nlargest(limit, found.values(), key=lambda memory: (memory.created_at, memory.id))

    async def with_tags(
        self, tags: Sequence[str], scope: UserScope, tiers: frozenset[MemoryTier] | None
    ) -> list[Memory]:
        """Memories of the scope carrying any of ``tags`` (one per memory, fastest tier)."""
        short, medium, long_store = self._stores
        found: dict[str, Memory] = {}
        if tiers is None or MemoryTier.LONG in tiers:
            for memory in await self._run(long_store.with_tags, list(tags)):
                found[memory.id] = memory
        for store in (medium, short):
            if tiers is None or store.tier in tiers:
                for memory in store.with_tags(tags):
                    found[memory.id] = memory
        return [memory for memory in found.values() if in_scope(memory, scope)]

    async def find_turns(self, keys: Sequence[TurnKey]) -> list[Memory]:
        """The memories that are the given conversation turns (one per memory, fastest tier)."""
        short, medium, long_store = self._stores
        found: dict[str, Memory] = {}
        if long_store.count():  # an empty long-term tier is not asked (a query per key)
            for memory in await self._read_long(long_store.find_turns, list(keys)):
                found[memory.id] = memory
        for memory in medium.find_turns(keys) + short.find_turns(keys):
            found[memory.id] = memory
        return list(found.values())

    async def last_turn_index(self, user_id: str | None, session_id: str) -> int | None:
        """The highest turn index stored for a conversation session, or ``None``."""
        short, medium, long_store = self._stores
        values = [short.last_turn_index(user_id, session_id), medium.last_turn_index(user_id, session_id)]
        values.append(await self._read_long(long_store.last_turn_index, user_id, session_id))
        present = [value for value in values if value is not None]
        return max(present) if present else None

    # -- search ------------------------------------------------------------------------------------

    def _stems(self, tokens: Sequence[str]) -> list[str]:
        if self._stemmer is None:
            self._stemmer = Stemmer()
        return self._stemmer.stems(tokens)

    async def _tier_frequencies(
        self, stems: Sequence[str], volatile: Sequence[MemoryStore], search_long: bool
    ) -> tuple[dict[MemoryTier, dict[str, int]], dict[MemoryTier, int]]:
        """Each tier's document frequency of ``stems`` and row count.

        An index seek per word, bounded and fast, so on the loop; the long-term store's only while its
        lock is free (a writer thread may hold it for a long commit).
        """
        if self._indexing is not None:  # the volatile indexes are read below, on the loop
            await self._settled()
        long_store = self._stores[2]
        tier_totals: dict[MemoryTier, int] = {store.tier: store.count() for store in volatile}
        tier_frequencies: dict[MemoryTier, dict[str, int]] = {
            store.tier: store.document_frequencies(stems) for store in volatile
        }
        if search_long:
            tier_frequencies[MemoryTier.LONG] = await self._read_long(long_store.document_frequencies, stems)
            tier_totals[MemoryTier.LONG] = long_store.count()
        return tier_frequencies, tier_totals

    async def term_frequencies(self, tokens: Sequence[str]) -> tuple[dict[str, int], int]:
        """How many memories of every tier contain each word (a memory in two tiers counts twice).

        A word counts as the terms it is searched by (``index_terms``: a symbol's term, a Chinese or
        Japanese run's pairs); a word of several terms, the fewest memories of one of them.
        """
        if not tokens:
            return {}, 0
        terms_of = {token: index_terms(token) for token in tokens}
        terms = list(dict.fromkeys(term for token_terms in terms_of.values() for term in token_terms))
        stems = self._stems(terms)
        short, medium, _ = self._stores
        tier_frequencies, tier_totals = await self._tier_frequencies(stems, (short, medium), True)
        counts = {
            term: sum(frequency.get(stem, 0) for frequency in tier_frequencies.values())
            for term, stem in zip(terms, stems, strict=True)
        }
        frequencies = {token: min(counts[term] for term in terms_of[token]) for token in tokens}
        return frequencies, sum(tier_totals.values())

    async def search(self, query: LexicalQuery) -> list[tuple[Memory, float]]:
        """BM25 candidates of every tier searched, scored with the IDF of all of them (comparable)."""
        short, medium, long_store = self._stores
        tokens = segment_tokens(query.tokens)  # the terms Chinese, Japanese and symbols are indexed as
        if not tokens or query.limit <= 0:
            return []
        tiers = query.tiers
        search_long = tiers is None or MemoryTier.LONG in tiers
        # the owner clause costs a join with a long doclist: skip it while only this owner has memories
        scope = query.scope
        single_owner = scope is not ALL_USERS and self._owners <= {scope}
        owner = None if scope is ALL_USERS or single_owner else owner_token(scope)
        stems = self._stems(tokens)
        volatile: list[MemoryStore] = [s for s in (short, medium) if tiers is None or s.tier in tiers]
        tier_frequencies, tier_totals = await self._tier_frequencies(stems, volatile, search_long)
        frequencies: dict[str, int] = {}
        for tier_counts in tier_frequencies.values():
            for term, count in tier_counts.items():
                frequencies[term] = frequencies.get(term, 0) + count
        total = sum(tier_totals.values())
        kept = prune_common_terms(
            tokens,
            stems,
            frequencies,
            total,
            query.common_term_ratio,
            query.common_term_min_documents,
            query.common_term_max_documents,
        )
        stem_of = dict(zip(tokens, stems, strict=True))
        match = build_match(kept, owner)
        filters = query if query.filtered else None

        def tier_search(store: MemoryStore | SQLiteStore) -> list[tuple[Memory, float]]:
            corrections = idf_corrections(
                [stem_of[token] for token in kept],
                tier_frequencies[store.tier],
                tier_totals[store.tier],
                frequencies,
                total,
            )
            factor = uniform_correction(corrections)
            if factor is not None:
                return [
                    (memory, bm25 * factor)
                    for memory, bm25 in store.search(match, query.limit, filters=filters)  # type: ignore[call-arg]
                ]
            parts = [(build_match([token], owner), corrections.get(stem_of[token], 1.0)) for token in kept]
            return store.search_weighted(parts, query.limit, filters=filters)  # type: ignore[call-arg]

        # the volatile tiers first, in this loop step: a memory an overflow move takes to long-term
        # while the long-term search below runs is dropped from medium-term only after its long-term
        # copy committed, so it is found in one or the other (searched after, the medium-term tier could
        # have lost it to a long-term search that had already started)
        if self._indexing is not None:  # a large write began while the long-term frequencies were read
            await self._settled()
        found: dict[str, tuple[Memory, float]] = {}
        for store in volatile:
            for memory, bm25 in tier_search(store):
                if query.accepts(memory):
                    found[memory.id] = (memory, bm25)
        long_hits: list[tuple[Memory, float]] = []
        if search_long and tier_frequencies[MemoryTier.LONG]:
            # scored on a reader thread, on its own connection: concurrent searches score in parallel
            # instead of taking turns on the loop, where they starved every other coroutine (writers
            # too); a lone search pays a thread hop (about 0.4 ms at 10k memories)
            long_hits = await self._run(tier_search, long_store)
        for memory, bm25 in long_hits:
            if not query.accepts(memory):
                continue
            previous = found.get(memory.id)
            if previous is None:
                found[memory.id] = (memory, bm25)
            elif bm25 > previous[1]:
                found[memory.id] = (previous[0], bm25)  # keep the fastest tier's copy
        return sorted(found.values(), key=lambda pair: -pair[1])

    # -- vectors -----------------------------------------------------------------------------------

    async def open_vectors(self, model: str, dimension: int) -> list[Memory]:
        """Load the stored vectors of ``model`` into per-owner indexes; return memories without one."""
        long_store = self._long_store

        def read() -> tuple[tuple[list[str], numpy.ndarray], list[Memory]]:
            return long_store.load_vectors(model, dimension), list(long_store.all())

        # one trip for both reads, on the writer thread the open started (nothing else is queued there
        # yet): a reader thread is started by the first long read that needs one, not by every open
        (ids, matrix), long_memories = await self._write(read)
        self._vector_model = model
        rows = dict(zip(ids, range(len(ids)), strict=True))
        missing: list[Memory] = []
        owners: dict[str, str] = {}
        for memory in self._one_copy_each(long_memories, ALL_USERS):
            owners[memory.id] = owner_token(memory.user_id)
            if memory.id not in rows:
                missing.append(memory)
        for memory_id, row in rows.items():
            owner = owners.get(memory_id)
            if owner is None:
                continue
            index = self._vectors.get(owner)
            if index is None:
                index = self._vectors[owner] = VectorIndex(dimension)
            index.add([memory_id], matrix[row : row + 1])
        return missing

    async def save_vectors(self, model: str, memories: Sequence[Memory], vectors: numpy.ndarray) -> None:
        """Keep vectors in the per-owner indexes and in the database."""
        for memory, vector in zip(memories, vectors, strict=True):
            owner = owner_token(memory.user_id)
            index = self._vectors.get(owner)
            if index is None:
                index = self._vectors[owner] = VectorIndex(int(vectors.shape[1]))
            index.add([memory.id], vector[None, :])
        self._vectors_stored = True
        await self._write(self._long_store.save_vectors, model, [m.id for m in memories], vectors)

    async def delete_vectors(self, ids: Sequence[str]) -> None:
        """Forget the vectors of ``ids`` in the indexes and the database."""
        if not ids:
            return
        for index in self._vectors.values():
            index.remove(ids)
        await self._write(self._long_store.delete_vectors, list(ids))

    async def nearest(self, vector: numpy.ndarray, scope: UserScope, limit: int) -> list[VectorHit]:
        """The most similar vectors of the scope's owners, best first."""
        if scope is ALL_USERS:
            indexes = list(self._vectors.values())
        else:
            index = self._vectors.get(owner_token(scope))
            indexes = [] if index is None else [index]
        hits = [hit for index in indexes for hit in index.search(vector, limit)]
        hits.sort(key=lambda hit: -hit[1])
        return hits[:limit]

    async def similarities(self, vector: numpy.ndarray, ids: Sequence[str]) -> dict[str, float]:
        """Cosine similarity with the stored vector of each id."""
        scores: dict[str, float] = {}
        for index in self._vectors.values():
            scores.update(index.scores_for(vector, [i for i in ids if i not in scores]))
        return scores

    async def vectors_of(self, ids: Sequence[str]) -> dict[str, numpy.ndarray]:
        """The stored vectors of ``ids``."""
        found: dict[str, numpy.ndarray] = {}
        for memory_id in ids:
            for index in self._vectors.values():
                vector = index.get(memory_id)
                if vector is not None:
                    found[memory_id] = vector
                    break
        return found

    def vector_count(self) -> int:
        """How many vectors the indexes hold."""
        return sum(len(index) for index in self._vectors.values())

    async def vector_models(self) -> list[tuple[str, int]]:
        """Every ``(model, dimension)`` with vectors in the database."""
        return await self._run(self._long_store.vector_models)

    async def load_vectors(self, model: str, dimension: int) -> tuple[list[str], numpy.ndarray]:
        """The ids and the matrix of the vectors stored in the database for ``model``."""
        return await self._run(self._long_store.load_vectors, model, dimension)

    # -- coordination and upkeep -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, *names: str) -> AsyncIterator[None]:
        """One process owns the storage (the lock file): the manager's own write lock is enough."""
        yield

    @contextlib.asynccontextmanager
    async def try_exclusive(self, name: str) -> AsyncIterator[bool]:
        """One process owns the storage: always ``True``."""
        yield True

    async def stats(self, scope: UserScope) -> BackendStats:
        """Counts of the scope: the volatile tiers walked in process, long-term by SQL aggregates."""
        short, medium, long_store = self._stores
        stats = BackendStats()
        seen: set[str] = set()
        # the in-process tiers are bounded: walked on the loop (a consistent snapshot, fastest tier first)
        for memory in list(short.all()) + list(medium.all()):
            if not in_scope(memory, scope):
                continue
            stats.by_tier[memory.tier.value] += 1
            if memory.id in seen:
                continue
            seen.add(memory.id)
            superseded = 1 if memory.superseded_by is not None else 0
            _count_memory(
                stats, memory.user_id, 1, superseded, memory.created_at, memory.created_at, memory.importance
            )
        # the long-term tier: SQL aggregates, leaving out the memories already counted from a faster tier
        for tally in await self._run(long_store.tally, list(seen)):
            if scope is not ALL_USERS and tally.user_id != scope:
                continue
            stats.by_tier[MemoryTier.LONG.value] += tally.copies
            if tally.count == 0:
                continue
            assert tally.oldest is not None and tally.newest is not None
            _count_memory(
                stats,
                tally.user_id,
                tally.count,
                tally.superseded,
                tally.oldest,
                tally.newest,
                tally.importance_total,
            )
        return stats

    async def size(self) -> dict[str, int]:
        """Bytes on disk: the log, the database (with its WAL) and their total."""
        log_bytes = self._log.size() if self._log is not None else 0
        database_bytes = self._long_store.size()
        return {"log": log_bytes, "database": database_bytes, "total": log_bytes + database_bytes}

    def file_faults(self) -> dict[str, str]:
        """Storage files changed behind this process's back, by name: removed, replaced or truncated.

        Each of them is still open here (the log's and the database's descriptors, the in-process
        tiers), so :meth:`restore_files` can write them again, except a truncated database.
        """
        faults: dict[str, str] = {}
        if self._log is not None:
            problem = self._log.fault()
            if problem is not None:
                faults[self._log.path.name] = problem
        if self.long is not None:
            faults.update(self.long.faults())
        problem = lock_fault(self._lock_fd, self.path / LOCK_FILE_NAME)
        if problem is not None:
            faults[LOCK_FILE_NAME] = problem
        return faults

    async def restore_files(self) -> dict[str, Any]:
        """Write the faulty files again from what is open; call with the manager's write lock held.

        The directory is recreated (0o700); the lock is taken on a new lock file; the database is
        written from the open connection with SQLite's backup API and reopened; the log is rewritten
        from the in-process tiers. A file that had replaced one of ours is kept under
        ``<name>.replaced-<time>``. Returns ``restored`` (what was done) and ``failed`` (file ->
        why it could not be restored: a truncated database).
        """
        short, medium, long_store = self._stores
        log = self._log
        assert log is not None
        live = [memory.copy() for memory in list(medium.all()) + list(short.all())]
        self._vectors_stored = None  # read again from the database as restored

        def restore() -> dict[str, Any]:
            faults = self.file_faults()
            restored: list[str] = []
            failed: dict[str, str] = {}
            if not faults:
                return {"restored": restored, "failed": failed}
            make_private_directory(self.path)
            if LOCK_FILE_NAME in faults:
                self._lock_fd = replace_lock(self._lock_fd, self.path / LOCK_FILE_NAME)
                restored.append(f"took the storage lock again on a new {LOCK_FILE_NAME}")
            if any(name.startswith(long_store.path.name) for name in faults):
                try:
                    restored.append(long_store.restore())
                except StorageError as error:
                    failed[long_store.path.name] = str(error)
            problem = faults.get(log.path.name)
            if problem is not None:
                if problem == "replaced":  # keep the stranger's file, whatever it is
                    aside = log.path.with_name(f"{log.path.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
                    os.replace(log.path, aside)
                    restored.append(f"kept what had replaced {log.path.name} as {aside.name}")
                log.compact(live)
                memories = "1 memory" if len(live) == 1 else f"{len(live)} memories"
                restored.append(f"rewrote {log.path.name} from the {memories} in process")
            return {"restored": restored, "failed": failed}

        return await self._write(restore)

    def needs_compaction(self) -> bool:
        """Whether the log holds many more records than live memories."""
        log, short, medium = self._log, self.short, self.medium
        if log is None or short is None or medium is None:
            return False
        return log.record_count > 2 * (short.count() + medium.count()) + 10_000

    async def compact(self) -> tuple[int, int]:
        """Rewrite the log with the live memories (call with the manager's write lock held)."""
        short, medium, _ = self._stores
        assert self._log is not None
        live = [memory.copy() for memory in list(medium.all()) + list(short.all())]
        return await self._write(self._log.compact, live)

    async def optimize(self) -> dict[str, Any]:
        """Compact the log, merge the FTS5 segments, checkpoint the WAL (call with the write lock)."""
        short, medium, long_store = self._stores
        database_before = long_store.size()
        log_before, log_after = await self.compact()
        for store in (short, medium):
            await self._on_index(store.chars, store.optimize_index)
        await self._write(long_store.optimize)
        return {
            "log_bytes_before": log_before,
            "log_bytes_after": log_after,
            "database_bytes_before": database_before,
            "database_bytes_after": long_store.size(),
        }

    async def check_integrity(self, *, quick: bool = False) -> dict[str, Any]:
        """Check the database and every FTS5 index: ``"ok"`` or the problems.

        ``PRAGMA integrity_check``, or with ``quick`` ``quick_check`` on a separate read-only connection.
        """
        short, medium, long_store = self._stores
        check = functools.partial(long_store.check_integrity, quick=quick)
        # the full check holds the write connection: the writer thread's turn; the quick one reads
        result: dict[str, Any] = dict(await (self._run(check) if quick else self._write(check)))
        # the in-process indexes: on the loop, or with megabytes of text on the writer thread (FTS5 reads
        # every text again), a search waiting meanwhile; no write interleaves with the check either way
        result["short_index"] = await self._on_index(short.chars, short.check_index)
        result["medium_index"] = await self._on_index(medium.chars, medium.check_index)
        return result

    async def rebuild_index(self) -> dict[str, int]:
        """Rebuild every FTS5 index from the stored memories; rows indexed per tier."""
        short, medium, long_store = self._stores
        for store in (short, medium):
            await self._settled()
            await self._apply((store, store.stage_rebuild(self._weights)))
        long_count = await self._write(long_store.rebuild_index)
        return {"short": short.count(), "medium": medium.count(), "long": long_count}


def _apply_changes(changes: Sequence[tuple[InMemoryStore, IndexChange]]) -> None:
    for store, change in changes:
        store.apply(change)


def _count_memory(
    stats: BackendStats,
    user_id: str | None,
    count: int,
    superseded: int,
    oldest: float,
    newest: float,
    importance_total: float,
) -> None:
    stats.total += count
    owner = owner_label(user_id)
    stats.by_user[owner] = stats.by_user.get(owner, 0) + count
    stats.superseded += superseded
    stats.oldest = oldest if stats.oldest is None else min(stats.oldest, oldest)
    stats.newest = newest if stats.newest is None else max(stats.newest, newest)
    stats.importance_total += importance_total


def fastest_first(copies: Sequence[Memory]) -> list[Memory]:
    """Copies ordered fastest tier first (stable within a tier)."""
    return sorted(copies, key=lambda memory: TIER_ORDER[memory.tier])
