"""``MemoryManager``: three durable tiers behind one async API with ranked search.

Placement and movement:

* a new memory enters the short-term tier (in process, journaled to the medium-term log so it survives
  a crash); one with ``importance >= config.long_term_importance_threshold`` is also written to the
  long-term database at once. An explicit ``tier=`` puts it in that tier only.
* when the short-term tier overflows, its least valuable memories (importance, recency, access count)
  move to the medium-term tier (or are dropped from short-term if they already have a long-term copy);
  when the medium-term tier overflows, its least valuable memories move to the long-term database.
* memories searched often (``promotion_access_count`` hits) and consolidated memories move up to the
  long-term tier.
* the long-term capacity is a soft limit: going over it logs a warning and shows in the stats, because
  nothing leaves the system except through :meth:`MemoryManager.cleanup_old_memories` or
  :meth:`MemoryManager.delete_memory`, which both report what they removed.

Every acknowledged write is durable: the journal line is flushed to the OS (fsynced with
``config.fsync``) and long-term writes are committed in WAL mode before the call returns. A lock file
(``storage_path/.lock``, holding pid and host) stops a second process from opening the same storage:
it gets :class:`~context_manager.core.errors.StorageLockedError`.

Example:
    >>> async with MemoryManager(ContextManagerConfig(storage_path="/tmp/mem")) as memory:
    ...     await memory.add_memory("Paris is the capital of France", importance=0.8, tags=["geo"])
    ...     results = await memory.search_memory("capital of france")
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType

from context_manager.core.errors import LifecycleError
from context_manager.core.memory.curation import MemoryCuration
from context_manager.core.memory.file_store import LOG_FILE_NAME, FileStore, JsonlLog
from context_manager.core.memory.in_memory_store import InMemoryStore
from context_manager.core.memory.locking import (
    LOCK_FILE_NAME,
    acquire_lock,
    make_private_directory,
    release_lock,
)
from context_manager.core.memory.maintenance import MemoryMaintenance
from context_manager.core.memory.models import ALL_USERS, AllUsers, MemoryTier
from context_manager.core.memory.search import MemorySearch
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME, SQLiteStore
from context_manager.core.memory.writing import MemoryWriting

__all__ = ["ALL_USERS", "AllUsers", "MemoryManager"]

logger = logging.getLogger(__name__)


class MemoryManager(MemoryWriting, MemorySearch, MemoryCuration, MemoryMaintenance):
    """Three memory tiers (short, medium, long) with ranked search, consolidation and cleanup.

    Args:
        config: Settings (``storage_path``, tier sizes, long-term threshold, recency half-life, fsync).
        embedder: Optional :class:`~context_manager.core.memory.embeddings.Embedder` for the vector
            channel (e.g. ``SentenceTransformerEmbedder()``); lexical search only when ``None``.
        ranking: Ranking weights and feature switches (defaults are the best measured).
        clock: Returns the current time in seconds since the epoch (``time.time`` by default).
        promotion_access_count: Search hits after which a memory moves up to the long-term tier.
    """

    async def initialize(self) -> None:
        """Open (creating if needed) the storage, replay the log and rebuild the volatile tiers.

        Calling it again on an open manager does nothing; a call made while another runs waits for it.

        Raises:
            StorageLockedError: another process (or another manager of this process) holds
                ``storage_path``.
            StorageCorruptedError: the log or the database is damaged (nothing is overwritten).
            StorageError: the directory cannot be created or a file cannot be opened.
            LifecycleError: the manager was closed.
        """
        async with self._lifecycle_lock:
            await self._initialize_locked()

    async def _initialize_locked(self) -> None:
        if self._state == "ready":
            return
        if self._state == "closed":
            raise LifecycleError("initialize: this MemoryManager was closed; create a new one")
        path = self.config.resolved_storage_path
        await asyncio.to_thread(make_private_directory, path)
        self._path = path
        self._lock_fd = await asyncio.to_thread(acquire_lock, path / LOCK_FILE_NAME)
        try:
            await asyncio.to_thread(self._open_stores, path)
            if self.embedder is not None:
                await self._load_vectors()
        except BaseException:
            self._close_stores()
            release_lock(self._lock_fd)
            self._lock_fd = None
            raise
        self._state = "ready"
        await self._rebalance()
        logger.debug("memory opened at %s", path)

    def _open_stores(self, path: Path) -> None:
        weights = self.ranking.effective_columns
        long_store = SQLiteStore(path / DATABASE_FILE_NAME, fsync=self.config.fsync, weights=weights)
        self._long = long_store
        long_store.open()
        log = JsonlLog(path / LOG_FILE_NAME, fsync=self.config.fsync)
        self._log = log
        live = log.open()
        self._short = InMemoryStore(MemoryTier.SHORT, journal=log, weights=weights)
        self._medium = FileStore(log, weights=weights)
        short = [memory for memory in live.values() if memory.tier is MemoryTier.SHORT]
        medium = [memory for memory in live.values() if memory.tier is not MemoryTier.SHORT]
        self._short.load(short)
        self._medium.load(medium)
        self._owners = {memory.user_id for memory in live.values()} | long_store.owners()
        if short:
            self._long_copies = set(long_store.get_many([memory.id for memory in short]))

    def _close_stores(self) -> None:
        if self._stemmer is not None:
            self._stemmer.close()
            self._stemmer = None
        for store in (self._short, self._medium):
            if store is not None:
                store.close()
        if self._log is not None:
            self._log.close()
        if self._long is not None:
            self._long.close()

    async def close(self) -> None:
        """Finish background work, persist pending access updates, close files and release the lock.

        Safe to call more than once; made while ``initialize()`` runs, it waits for it.
        """
        async with self._lifecycle_lock:
            await self._close_locked()

    async def _close_locked(self) -> None:
        if self._state != "ready":
            self._state = "closed"
            return
        await self._drain_background()
        try:
            async with self._write_lock:
                await self._flush_touches_locked()
        finally:
            self._state = "closed"
            await asyncio.to_thread(self._close_stores)
            release_lock(self._lock_fd)
            self._lock_fd = None
            logger.debug("memory closed")

    async def __aenter__(self) -> MemoryManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
