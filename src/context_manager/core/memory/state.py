"""The state every part of :class:`~context_manager.core.memory.manager.MemoryManager` shares.

:class:`ManagerState` holds the settings, the storage backend (the three tiers, see
:mod:`~context_manager.core.memory.backend`), the write lock, the pending access updates and the
background tasks, and reads memories by id across tiers. The other parts of the manager build on
it: :mod:`~context_manager.core.memory.tiers` (writes to a tier, movement between tiers, vectors, log
compaction), :mod:`~context_manager.core.memory.writing` (add, update, delete),
:mod:`~context_manager.core.memory.search`, :mod:`~context_manager.core.memory.curation` (consolidation,
cleanup) and :mod:`~context_manager.core.memory.maintenance` (stats, export/import, index upkeep).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from context_manager.core import forks
from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import (
    InvalidArgumentError,
    InvalidMemoryError,
    LifecycleError,
    StorageError,
)
from context_manager.core.memory.backend import TIER_ORDER, MemoryBackend
from context_manager.core.memory.models import ALL_USERS, AllUsers, Memory, MemoryTier
from context_manager.core.memory.ranking import RankingWeights
from context_manager.core.memory.write_health import WriteHealth, WriteTracker
from context_manager.core.threads import wait_for_all

if TYPE_CHECKING:  # pragma: no cover
    from context_manager.core.memory.embeddings import Embedder

__all__ = ["Clock", "ManagerState", "UserScope"]

logger = logging.getLogger(__name__)

_COPIES_PER_STEP = 1000
"""``stored_copies`` copies this many memories per loop step (a copy takes a few microseconds)."""

UserScope = str | None | AllUsers
"""Whose memories a call covers: a user id, ``None`` (the default namespace) or ``ALL_USERS``."""
Clock = Callable[[], float]
"""Returns the current time in seconds since the epoch."""


class ManagerState:
    """Settings, stores, locks and background tasks of a memory manager (see ``MemoryManager``)."""

    def __init__(
        self,
        config: ContextManagerConfig | None = None,
        *,
        embedder: Embedder | None = None,
        ranking: RankingWeights | None = None,
        clock: Clock | None = None,
        promotion_access_count: int = 5,
        rebalance_on_open: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, ContextManagerConfig):
            raise InvalidArgumentError("config", config, "a ContextManagerConfig or None")
        if ranking is not None and not isinstance(ranking, RankingWeights):
            raise InvalidArgumentError("ranking", ranking, "a RankingWeights or None")
        if embedder is not None and not (hasattr(embedder, "embed") and hasattr(embedder, "dimension")):
            raise InvalidArgumentError("embedder", embedder, "an Embedder (dimension, embed(texts)) or None")
        if clock is not None and not callable(clock):
            raise InvalidArgumentError("clock", clock, "a callable returning seconds since the epoch")
        if (
            isinstance(promotion_access_count, bool)
            or not isinstance(promotion_access_count, int)
            or (promotion_access_count < 1)
        ):
            raise InvalidArgumentError("promotion_access_count", promotion_access_count, "an integer >= 1")
        if not isinstance(rebalance_on_open, bool):
            raise InvalidArgumentError("rebalance_on_open", rebalance_on_open, "True or False")
        self.config = config if config is not None else ContextManagerConfig()
        """The settings (read at ``initialize()``)."""
        if embedder is None:  # config.embedder names a built-in one ("auto": the best installed)
            from context_manager.core.memory.embeddings import create_embedder

            embedder = create_embedder(self.config.embedder)
        self.ranking = (
            ranking if ranking is not None else RankingWeights.learned(embedder=embedder is not None)
        )
        """The ranking weights in force (by default the ones learned with or without an embedder)."""
        self.embedder = embedder
        """The embedder of the vector channel, or ``None``."""
        self.promotion_access_count = promotion_access_count
        """Search hits after which a memory moves up to the long-term tier."""
        self.rebalance_on_open = rebalance_on_open
        """Whether ``initialize()`` moves the overflow of a tier over its capacity (see ``MemoryManager``)."""
        self._clock: Clock = clock if clock is not None else time.time
        self._state: Literal["new", "ready", "closed"] = "new"
        self._pid = forks.pid  # the process that opened the storage (set again by initialize())
        # warns and closes the storage if this manager is garbage-collected open (see core.unclosed)
        self._unclosed: weakref.finalize[Any, Any] | None = None
        self._path: Path | None = None
        self._backend: MemoryBackend | None = None
        self._write_lock = asyncio.Lock()
        # adds running without the write lock (a shared storage: see MemoryWriting._add_many); close()
        # waits for them before it closes the storage
        self._open_adds = 0
        self._closing = False  # close() has begun: adds take the write lock (and so wait for it)
        self._no_open_adds = asyncio.Event()
        self._no_open_adds.set()
        # consolidations of this process one at a time before they wait for the cross-process locks: each
        # waiter holds a pooled connection (PostgreSQL), and eight waiting would starve the pool
        self._consolidation_lock = asyncio.Lock()
        self._lifecycle_lock = asyncio.Lock()  # initialize() and close() run one at a time
        self._write_tracker = WriteTracker(self._clock)  # outcomes of writes, for health checks
        self._index_report: dict[str, Any] | None = None  # the last integrity check or index rebuild
        # search hits not yet written: id -> (last accessed, access count, the memory's user id)
        self._pending_touches: dict[str, tuple[float, int, int, str | None]] = {}
        # the ids of _pending_touches whose copy found was short- or medium-term: only they can be promoted,
        # so a flush reads back only their copies (reading every touched long-term row cost 9 ms at 100k)
        self._touched_volatile: set[str] = set()
        # batches of accesses whose flush to a shared storage was cancelled or failed, each with the ids of
        # the transactions that tried to write it: the next flush adds each unless one of those committed
        self._unsettled_accesses: list[tuple[dict[str, tuple[float, int]], list[str]]] = []
        # memories stored without their vector (the write was cancelled while it embedded them), embedded
        # by a background task soon after (tiers.py, _embed_later)
        self._unembedded: dict[str, None] = {}
        self._embed_task: asyncio.Task[None] | None = None
        self._last_turn: dict[tuple[str | None, str], tuple[int, str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._over_capacity_warned = False
        self._rebalance_task: asyncio.Task[None] | None = None  # the pending or running rebalance (_add_many)
        self._rebalance_again = False  # a write found an overflow while the rebalance was finishing
        self._recount_task: asyncio.Task[None] | None = None  # a tier count re-read (_counts_after_write)
        # per tier: the next overflow victims of the last ranking, and when it was made (tiers.py)
        self._victim_reserve: dict[MemoryTier, tuple[list[str], float]] = {}
        self._compacting = False
        self._turn_counters: dict[tuple[str | None, str], int] = {}
        # per import running: the turn number after its last turn of each (user, session) it holds; new
        # turns of these sessions are numbered from there while it writes (maintenance.py, import_memories)
        self._import_turn_floors: list[dict[tuple[str | None, str], int]] = []
        # remember_messages numbers and writes a chunk of turns at a time (MemoryWriting._remember_chunk)
        self._turn_lock = asyncio.Lock()
        self._restorations: list[dict[str, Any]] = []  # restore_storage() runs: when, what, what failed
        # vectors made ahead of their writes (TierMovement._embed_ahead): the embedder, text -> vector
        self._embedded_ahead: tuple[Any, dict[str, Any]] | None = None
        # the embedder and its unit mean vector of CONTENTLESS_TEXTS (MemorySearch._gather_candidates)
        self._contentless: tuple[Any, Any] | None = None
        # an EnhancedContextManager's own, never opened: it borrowed the store another one had open
        self._borrowed_instead = False
        # EnhancedContextManagers holding this one (shared_store): while any does, cleanup() leaves it open
        self._lease_holders = 0

    @property
    def storage_path(self) -> Path:
        """The directory holding the log, the database and the lock file."""
        return self._path if self._path is not None else self.config.resolved_storage_path

    @property
    def write_health(self) -> WriteHealth:
        """How writes have been going: failures (``StorageError``), consecutive ones, the last error.

        The health checker's ``storage_writes`` check reads it: a full disk or a read-only directory
        shows there even when the directory probe passes.
        """
        return self._write_tracker.snapshot()

    @property
    def is_initialized(self) -> bool:
        """True between ``initialize()`` and ``close()``."""
        return self._state == "ready"

    @property
    def backend(self) -> MemoryBackend | None:
        """The storage backend holding the tiers (``None`` before ``initialize()``)."""
        return self._backend

    def _require(self, operation: str) -> MemoryBackend:
        backend = self._backend
        if self._state == "ready" and backend is not None:
            if self._pid == forks.pid:
                return backend
            raise forks.forked_error(operation, "MemoryManager", self._pid)
        if self._state == "new" and self._borrowed_instead:
            raise LifecycleError(
                f"{operation}: this MemoryManager is never opened: its EnhancedContextManager uses the store "
                "another manager of this process has open (a MemoryManager shared by them); use "
                "manager.memory_manager after initialize() (register_memory_tools after it, too)"
            )
        if self._state == "new":
            raise LifecycleError(
                f"{operation}: the memory manager is not initialized; call `await initialize()` first"
            )
        raise LifecycleError(f"{operation}: the memory manager was closed; create a new one")

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if isinstance(error, StorageError):  # a background tier move or compaction is a write too
                self._write_tracker.failed(error)
            logger.error("memory background task failed: %s", error)

    async def _drain_background(self) -> None:
        await wait_for_all(self._background)

    async def get_memory(self, memory_id: str) -> Memory | None:
        """Return the memory with this id (from its fastest tier), or ``None``.

        The ids ``add_memory`` makes are unguessable, so lookups by id are not restricted to a user; with
        ids of your own (``memory_id=``), check the returned memory's ``user_id``.
        """
        if not isinstance(memory_id, str) or not memory_id:
            raise InvalidMemoryError("memory_id", memory_id, "a non-empty string")
        found = await self._get_many([memory_id])
        memory = found.get(memory_id)
        return None if memory is None else memory.copy()

    async def _get_many(self, ids: Sequence[str]) -> dict[str, Memory]:
        """The fastest-tier copy of each memory among ``ids``."""
        found: dict[str, Memory] = {}
        for memory in await self._require("get_memory").copies(list(ids)):
            previous = found.get(memory.id)
            if previous is None or TIER_ORDER[memory.tier] < TIER_ORDER[previous.tier]:
                found[memory.id] = memory
        return found

    async def _get_all_copies(self, ids: Sequence[str]) -> list[Memory]:
        return await self._require("copies").copies(list(ids))

    async def _locate(self, memory_id: str) -> list[Memory]:
        """Every stored copy of a memory, fastest tier first."""
        copies = await self._require("locate").copies([memory_id])
        return sorted(copies, key=lambda memory: TIER_ORDER[memory.tier])

    async def stored_copies(self, *, user_id: UserScope = ALL_USERS) -> list[Memory]:
        """Every stored copy of every memory of ``user_id`` (all users by default), each with its tier.

        A memory with a long-term copy appears twice. Copies are returned, not the stored objects. Meant
        for inspection, migration and tests; a whole scan of the storage.

        Raises:
            LifecycleError: before ``initialize()`` or after ``close()``.
        """
        copies = await self._require("stored_copies").scan(user_id, every_copy=True)
        copied: list[Memory] = []
        for start in range(0, len(copies), _COPIES_PER_STEP):  # 100,000 copies: a quarter of a second
            if start:
                await asyncio.sleep(0)
            copied += [memory.copy() for memory in copies[start : start + _COPIES_PER_STEP]]
        return copied
