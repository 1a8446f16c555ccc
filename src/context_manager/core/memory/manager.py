"""``MemoryManager``: three durable tiers behind one async API with ranked search.

Placement and movement:

* a new memory enters the short-term tier (in process, journaled to the medium-term log so it survives
  a crash); one with ``importance >= config.long_term_importance_threshold`` is also written to the
  long-term database at once. An explicit ``tier=`` puts it in that tier only.
* when the short-term tier overflows, its least valuable memories (importance, recency, access count)
  move to the medium-term tier (or are dropped from short-term if they already have a long-term copy);
  when the medium-term tier overflows, its least valuable memories move to the long-term database. Both
  moves run in the background, a chunk at a time, never inside the write that finds the overflow; a
  write finding a tier far over its capacity waits for the move (``flush()`` waits for it too).
* memories searched often (``promotion_access_count`` hits) and consolidated memories move up to the
  long-term tier.
* the long-term capacity is a soft limit: going over it logs a warning and shows in the stats, because
  nothing leaves the system except through :meth:`MemoryManager.cleanup_old_memories` or
  :meth:`MemoryManager.delete_memory`, which both report what they removed.

Every acknowledged write is durable: the journal line is flushed to the OS (fsynced with
``config.fsync``) and long-term writes are committed in WAL mode before the call returns. A lock file
(``storage_path/.lock``, holding pid and host) stops a second process from opening the same storage:
it gets :class:`~context_manager.core.errors.StorageLockedError`.

Storage: ``config.memory_backend`` picks the backend (:mod:`~context_manager.core.memory.backend`):
``"sqlite"`` (the default, files under ``storage_path``, one process) or ``"postgres"`` (one PostgreSQL
database at ``config.postgres_dsn`` shared by many processes and hosts; every acknowledged write is
committed on the server, and no lock file is used). The placement, movement and ranking rules above are
the same on both.

Example:
    >>> async with MemoryManager(ContextManagerConfig(storage_path="/tmp/mem")) as memory:
    ...     await memory.add_memory("Paris is the capital of France", importance=0.8, tags=["geo"])
    ...     results = await memory.search_memory("capital of france")
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from types import TracebackType
from typing import Any

from context_manager.core import forks
from context_manager.core.async_only import AsyncContextManagerOnly
from context_manager.core.errors import LifecycleError
from context_manager.core.memory.backend import AccessCounter, MemoryBackend
from context_manager.core.memory.curation import MemoryCuration
from context_manager.core.memory.maintenance import MemoryMaintenance
from context_manager.core.memory.models import ALL_USERS, AllUsers
from context_manager.core.memory.search import MemorySearch
from context_manager.core.memory.writing import MemoryWriting
from context_manager.core.threads import to_the_end
from context_manager.core.unclosed import close_in_background, warn_unclosed

__all__ = ["ALL_USERS", "AllUsers", "MemoryManager"]

logger = logging.getLogger(__name__)


class MemoryManager(MemoryWriting, MemorySearch, MemoryCuration, MemoryMaintenance, AsyncContextManagerOnly):
    """Three memory tiers (short, medium, long) with ranked search, consolidation and cleanup.

    Args:
        config: Settings (``storage_path``, tier sizes, long-term threshold, recency half-life, fsync).
        embedder: An :class:`~context_manager.core.memory.embeddings.Embedder` for the vector channel;
            ``None`` takes the built-in one ``config.embedder`` names (``"auto"``: MiniLM when the
            ``embeddings`` extra is installed, else lexical search only).
        ranking: Ranking weights and feature switches (default: the learned weights, with or without an
            embedder: ``RankingWeights.learned``).
        clock: Returns the current time in seconds since the epoch (``time.time`` by default).
        promotion_access_count: Search hits after which a memory moves up to the long-term tier.
        rebalance_on_open: ``True`` (default): ``initialize()`` moves the overflow of a tier holding more
            memories than this config's capacity down a tier, as a write would. ``False``: opening moves
            nothing, so a store can be inspected (stats, export, health) with a config whose capacities
            differ from the ones it was written with (capacities are not recorded in the store); a later
            write that finds a tier over its capacity still moves the overflow.
    """

    async def initialize(self) -> None:
        """Open (creating if needed) the storage, replay the log and rebuild the volatile tiers.

        Calling it again on an open manager does nothing; a call made while another runs waits for it.

        Raises:
            StorageLockedError: another process (or another manager of this process) holds
                ``storage_path``.
            StorageCorruptedError: the log or the database is damaged (nothing is overwritten).
            StorageError: the directory cannot be created, a file cannot be opened, or the PostgreSQL
                server cannot be reached.
            MissingDependencyError: ``memory_backend="postgres"`` without the ``postgres`` extra.
            LifecycleError: the manager was closed, or opened in the process that forked this one
                (``gunicorn --preload``): create and open one in each worker, after the fork.
        """
        if self._state == "ready" and self._pid != forks.pid:
            raise forks.forked_error("initialize", "MemoryManager", self._pid)
        async with self._lifecycle_lock:
            await self._initialize_locked()

    async def _initialize_locked(self) -> None:
        if self._state == "ready":
            return
        if self._state == "closed":
            raise LifecycleError("initialize: this MemoryManager was closed; create a new one")
        backend = self._create_backend()
        self._path = self.config.resolved_storage_path
        self._pid = forks.pid
        try:
            await backend.open()
            self._backend = backend
            if self.embedder is not None:
                self._state = "ready"  # the vector channel reads and writes through the backend
                await self._load_vectors()
        except BaseException:
            self._state = "new"
            self._backend = None
            await backend.close()
            raise
        self._state = "ready"
        # collected while open (no cleanup()): warn, and close the storage in the background. It holds
        # the backend, never this manager, so the manager stays collectable
        self._unclosed = weakref.finalize(
            self, _close_collected, asyncio.get_running_loop(), backend, self._pending_touches, forks.pid
        )
        self._unclosed.atexit = False  # at exit the process's end releases the lock and files
        if self.rebalance_on_open:
            try:
                await self._rebalance()
            except BaseException:
                # failed or cut short (a cancelled initialize): close what opened, in a task a second
                # cancellation does not reach, so the storage lock is not held with nobody to release it
                await to_the_end(asyncio.ensure_future(self._close_unopened()))
                raise
        logger.debug("memory opened (%s at %s)", backend.kind, backend.location)

    async def _close_unopened(self) -> None:
        """Close what a failed ``initialize()`` opened; ``initialize()`` may be called again."""
        await self._close_locked()
        self._state = "new"
        self._closing = False

    def _create_backend(self) -> MemoryBackend:
        config = self.config
        weights = self.ranking.effective_columns
        if config.memory_backend == "postgres":
            from context_manager.core.memory.postgres import PostgresBackend

            return PostgresBackend.from_config(config, weights=weights)
        from context_manager.core.memory.local_backend import LocalBackend

        return LocalBackend(config.resolved_storage_path, fsync=config.fsync, weights=weights)

    async def cleanup(self) -> None:
        """Finish background work, persist pending access updates, close files and release the lock.

        The counterpart of :meth:`initialize`, as on ``EnhancedContextManager`` (``async with`` calls both).
        Safe to call more than once; made while ``initialize()`` runs, it waits for it. On the
        ``memory_manager`` that ``EnhancedContextManager``s of this process share, it does nothing (with
        a warning) while any of them holds it: the last one's ``cleanup()`` closes it. In a process forked
        after ``initialize()`` it only marks this copy closed: the storage (its files, lock, connections and
        threads) is the parent's, which keeps it open.
        """
        if self._state == "ready" and self._pid != forks.pid:
            self._state = "closed"  # closing would release the parent's lock, end its connections
            self._backend = None
            self._forget_unclosed()
            logger.debug("memory of process %d left to it (cleanup in a forked child)", self._pid)
            return
        if self._lease_holders:
            logger.warning(
                "MemoryManager.cleanup(): %d EnhancedContextManager(s) of this process share this memory "
                "manager; it stays open, and the last one's cleanup() closes it",
                self._lease_holders,
            )
            return
        async with self._lifecycle_lock:
            await self._close_locked()

    async def close(self) -> None:
        """Alias of :meth:`cleanup`."""
        await self.cleanup()

    def _forget_unclosed(self) -> None:
        """Being closed (or not this process's to close): nothing to close if it is collected later."""
        if self._unclosed is not None:
            self._unclosed.detach()

    async def _close_locked(self) -> None:
        if self._state != "ready":
            self._state = "closed"
            return
        self._closing = True  # from here every add takes the write lock, which the close takes last
        self._stop_embedding_later()  # a slow model call does not hold the close up
        await self._drain_background()
        while self._open_adds:  # adds made without the write lock (a shared storage) finish first
            await self._no_open_adds.wait()
        try:
            async with self._write_lock:
                await self._flush_touches_locked()
        finally:
            self._state = "closed"
            self._embedded_ahead = None
            backend, self._backend = self._backend, None
            if backend is not None:
                await backend.close()
            # only now: a close cut short (the loop's shutdown cancelling it) leaves the finalizer to
            # release the storage once this manager is collected
            self._forget_unclosed()
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
        await self.cleanup()


def _close_collected(
    loop: asyncio.AbstractEventLoop,
    backend: MemoryBackend,
    touches: dict[str, tuple[float, int, int, str | None]],
    pid: int,
) -> None:
    """A MemoryManager was garbage-collected while open: close its storage in the background.

    Every acknowledged write is already durable; the access counts of its latest search hits (``touches``,
    written in batches) are written before the storage closes. Its loop ended: the lock file is released
    at once (those counts are lost, as in a crash).
    """
    if pid != forks.pid:  # a forked child's copy: the parent's storage (as cleanup() there leaves it)
        return
    detail = f" ({backend.kind} at {backend.location})"

    async def close() -> None:
        try:
            await _write_touches(backend, touches)
        except Exception as error:  # counts only: the storage closes all the same
            logger.warning(
                "access counts of a collected MemoryManager not written (%s)", type(error).__name__
            )
        await backend.close()

    if close_in_background(loop, "MemoryManager", close, pid):
        warn_unclosed("MemoryManager", detail)
        return
    abandon: Any = getattr(backend, "abandon", None)
    if abandon is not None:
        abandon()
        warn_unclosed("MemoryManager", detail, "its event loop has ended: its storage lock released")
    else:
        warn_unclosed("MemoryManager", detail, "its event loop has ended: nothing could be closed")


async def _write_touches(
    backend: MemoryBackend, touches: dict[str, tuple[float, int, int, str | None]]
) -> None:
    """Write search hits not yet written (the simple form of ``_flush_touches_locked``, without promotion)."""
    if not touches:
        return
    if isinstance(backend, AccessCounter):  # other processes count too: add this one's accesses
        await backend.add_accesses({i: (at, added) for i, (at, _, added, _) in touches.items()}, [])
    else:
        await backend.touch({i: (at, count) for i, (at, count, _, _) in touches.items()})
