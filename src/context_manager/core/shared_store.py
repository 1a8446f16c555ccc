"""One open store per storage location, shared by the managers of a process.

A web app that opens an :class:`~context_manager.EnhancedContextManager` per request or per conversation
runs many of them at once on one store. They share it: the :class:`~context_manager.MemoryManager` (on
the embedded store the storage lock, the in-process tiers and their journal; on PostgreSQL the connection
pool; the embedder and its loaded model) and the conversations store. The first manager to start opens
them; the others borrow them (a :class:`MemoryLease`); the last one to stop closes them. The embedded
store's files can be open once per process (a lock file), so sharing is what lets its managers run side
by side; on PostgreSQL it keeps a process to one pool (a pool per request would soon exhaust the
server's connections) and makes opening a manager cheap.

Managers share a store only within one event loop and with the same memory settings (the
:data:`MEMORY_SETTINGS` of their configs, and the same embedder object when one was passed). Otherwise
a second manager of the embedded store gets :class:`~context_manager.core.errors.StorageLockedError`
saying why, and one of PostgreSQL opens its own (with its own pool). A :class:`MemoryManager` created and
opened directly is never shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from context_manager.core.conversations.store import ConversationStore
from context_manager.core.errors import LifecycleError, StorageLockedError
from context_manager.core.memory.locking import holder_text
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.threads import to_the_end

__all__ = ["MEMORY_SETTINGS", "MemoryLease", "lease_memory"]

logger = logging.getLogger(__name__)

MEMORY_SETTINGS = (
    "memory_backend",
    "short_term_memory_size",
    "medium_term_memory_size",
    "long_term_memory_size",
    "long_term_importance_threshold",
    "recency_half_life_days",
    "fsync",
    "embedder",
    "postgres_pool_size",
    "postgres_connect_timeout",
    "postgres_statement_timeout",
)
"""The settings managers sharing one store must agree on (besides the location itself; the last three on
PostgreSQL only)."""


class _Share:
    """An open store and the managers holding it."""

    def __init__(
        self,
        key: tuple[str, str] | None,
        memory: MemoryManager,
        fingerprint: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.key = key  # None: a store of one manager's own, not in the registry
        self.memory = memory
        self.fingerprint = fingerprint
        self.loop = loop
        self.users = 1
        self.opened: asyncio.Future[BaseException | None] = loop.create_future()
        self.closed: asyncio.Future[None] | None = None  # set when the last user began to close it
        self.conversations: ConversationStore | None = None
        self.conversations_lock = asyncio.Lock()


_registry: dict[tuple[str, str], _Share] = {}
_registry_lock = threading.Lock()  # the registry is read from every thread running an event loop


def _forget_parent_stores() -> None:
    """In a forked child: the parent's open stores are not this process's to share (see ``forks``).

    A manager of the child then opens its own store: on PostgreSQL a pool of its own; on the embedded
    store the lock file tells it the parent process holds it (not "a manager of this process").
    """
    global _registry_lock
    _registry_lock = threading.Lock()  # another thread of the parent may have held it at the fork
    _registry.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_parent_stores)


def _key(memory: MemoryManager) -> tuple[str, str]:
    """The store's identity: the DSN, or the directory with symlinks resolved (a few ``stat`` calls)."""
    config = memory.config
    if config.memory_backend == "postgres":
        dsn = config.postgres_dsn
        return ("postgres", "" if dsn is None else dsn.get_secret_value())
    return ("sqlite", os.path.realpath(config.resolved_storage_path))


def _fingerprint(memory: MemoryManager, explicit_embedder: bool) -> tuple[Any, ...]:
    config = memory.config
    postgres = config.memory_backend == "postgres"
    values = tuple(
        getattr(config, name) if postgres or not name.startswith("postgres_") else None
        for name in MEMORY_SETTINGS
    )
    return (*values, id(memory.embedder) if explicit_embedder else None)


def _differences(share: _Share, fingerprint: tuple[Any, ...]) -> str:
    names = (*MEMORY_SETTINGS, "embedder object")
    changed = [
        f"{name} {theirs!r} there, {ours!r} here"
        for name, theirs, ours in zip(names, share.fingerprint, fingerprint, strict=True)
        if theirs != ours and name != "embedder object"
    ]
    if share.fingerprint[-1] != fingerprint[-1]:
        changed.append(
            "another embedder object, or none (create the embedder once and pass that object to every "
            "manager)"
        )
    return "; ".join(changed)


class MemoryLease:
    """One manager's hold on a shared store (see the module docstring).

    Attributes:
        memory: The open memory manager (the same object for every manager holding the store).
        shared: True when the store is in the registry (other managers of this process may hold it).
    """

    def __init__(self, share: _Share) -> None:
        self._share: _Share | None = share
        self.memory = share.memory
        self.shared = share.key is not None

    async def conversation_store(self) -> ConversationStore:
        """The conversations store next to the memory (opened by the first manager that needs it)."""
        share = self._share
        if share is None:
            raise _released()
        async with share.conversations_lock:
            if self._share is None:  # released while this call waited for another one's open
                raise _released()
            store = share.conversations
            if store is None:
                store = _new_conversation_store(share.memory)
                try:
                    await store.open()
                except asyncio.CancelledError:
                    # the open goes on in the store's thread (for up to the store's busy timeout, 5 s, while
                    # another process holds the file's lock): closed after it in the background, not left
                    # to the garbage collector, nor keeping the cancelled caller (a timeout) waiting
                    closing = asyncio.ensure_future(store.close())
                    _closing.add(closing)
                    closing.add_done_callback(_closed)
                    raise
                except BaseException:
                    await to_the_end(asyncio.ensure_future(store.close()))  # the open is over: a quick close
                    raise
                if share.closed is not None:
                    # the last holder's release began meanwhile (it found no store to close): this one
                    # would stay open, unowned, for as long as its caller lived
                    await to_the_end(asyncio.ensure_future(store.close()))
                    raise _released()
                share.conversations = store  # closed by the last holder
                if self._share is None:  # released meanwhile, the store still held by other managers
                    raise _released()
        return store

    async def release(self) -> None:
        """Give the store back; the last manager holding it closes it (conversations, then memory)."""
        share, self._share = self._share, None
        if share is None:
            return
        with _registry_lock:
            share.users -= 1
            share.memory._lease_holders = share.users
            if share.users > 0:
                return
            share.closed = share.loop.create_future()
        try:
            store, share.conversations = share.conversations, None
            try:
                if store is not None:
                    await store.close()
            finally:
                await share.memory.cleanup()
        finally:
            with _registry_lock:
                if share.key is not None and _registry.get(share.key) is share:
                    del _registry[share.key]
            share.closed.set_result(None)


_closing: set[asyncio.Future[None]] = set()  # the closes of stores whose open was cancelled, running


def _closed(closing: asyncio.Future[None]) -> None:
    _closing.discard(closing)
    if not closing.cancelled() and closing.exception() is not None:
        logger.debug("closing a conversations store whose open was cancelled failed: %s", closing.exception())


def _released() -> LifecycleError:
    return LifecycleError("the conversations store: the manager was cleaned up while this call ran")


def _new_conversation_store(memory: MemoryManager) -> ConversationStore:
    backend = memory.backend
    if backend is not None and backend.kind == "postgres":
        from context_manager.core.conversations.postgres_store import PostgresConversationStore

        return PostgresConversationStore(backend.database)  # type: ignore[attr-defined]
    from context_manager.core.conversations.sqlite_store import (
        CONVERSATIONS_FILE_NAME,
        SQLiteConversationStore,
    )

    config = memory.config
    return SQLiteConversationStore(config.resolved_storage_path / CONVERSATIONS_FILE_NAME, fsync=config.fsync)


async def lease_memory(candidate: MemoryManager, *, explicit_embedder: bool) -> MemoryLease:
    """Hold the store ``candidate.config`` names: the one open in this event loop, or ``candidate`` opened.

    Args:
        candidate: A new (not initialized) memory manager with the caller's settings; it is opened and
            shared when no manager of this process holds the store.
        explicit_embedder: Whether the caller passed its own embedder object (then only a store opened
            with that very object is shared).

    Raises:
        StorageLockedError: the embedded store is held in this process by a manager of another event
            loop or with other memory settings (the message says which), or by another process.
        Whatever ``MemoryManager.initialize()`` raises.
    """
    loop = asyncio.get_running_loop()
    fingerprint = _fingerprint(candidate, explicit_embedder)
    key = _key(candidate)
    while True:
        wait_for: asyncio.Future[Any] | None = None
        with _registry_lock:
            share = _registry.get(key)
            if share is None:
                share = _Share(key, candidate, fingerprint, loop)
                _registry[key] = share
                creator = True
            elif key[0] == "postgres" and share.loop is not loop and share.loop.is_closed():
                # its holders ended with their loop, never cleaned up: they cannot give it back, and
                # the process's managers would each open a pool of their own from now on
                del _registry[key]
                continue
            else:
                creator = False
                refusal = _refusal(share, loop, fingerprint)
                if refusal is None:
                    if share.closed is not None:
                        wait_for = share.closed
                    elif not share.opened.done():
                        wait_for = share.opened
                    elif share.opened.result() is None:
                        share.users += 1
                        share.memory._lease_holders = share.users
                        if candidate is not share.memory:  # a reference taken before says what to use
                            candidate._borrowed_instead = True
                        return MemoryLease(share)
        if creator:
            return await _open(share, candidate)
        if refusal is not None:
            if key[0] == "postgres":  # the server shares the state: a store (and pool) of its own
                return await _open(_Share(None, candidate, fingerprint, loop), candidate)
            raise StorageLockedError(
                candidate.config.resolved_storage_path, holder_text(), same_process=True, detail=refusal
            )
        if wait_for is not None:
            await asyncio.shield(wait_for)  # opened or closed by another manager: look again


def _refusal(share: _Share, loop: asyncio.AbstractEventLoop, fingerprint: tuple[Any, ...]) -> str | None:
    if share.loop is not loop and share.loop.is_closed():
        return (
            "by a manager whose event loop has ended without cleanup() (an earlier asyncio.run): it stays "
            "open until the process exits; clean managers up before their loop ends (async with "
            "EnhancedContextManager(...)), or give this one another storage_path"
        )
    if share.loop is not loop:
        return (
            "by a manager running in another event loop; managers of one process share a store within "
            "one event loop: clean that one up first, or give this one another storage_path (synchronous "
            "code running asyncio.run per request or thread: use SyncContextManager, whose managers all "
            "share one loop)"
        )
    if share.fingerprint != fingerprint:
        return (
            f"by a manager with other memory settings ({_differences(share, fingerprint)}); managers "
            "share a store only with the same memory settings: use the same ones, or another storage_path"
        )
    return None


async def _open(share: _Share, candidate: MemoryManager) -> MemoryLease:
    try:
        await candidate.initialize()
    except BaseException as error:
        with _registry_lock:
            if share.key is not None and _registry.get(share.key) is share:
                del _registry[share.key]
        share.opened.set_result(error)  # the managers waiting look again (and open it themselves)
        raise
    with _registry_lock:
        candidate._lease_holders = share.users
    share.opened.set_result(None)
    return MemoryLease(share)
