"""``PersistedConversation``: keeps a context window and its stored records in step.

The window reports each committed change to :meth:`PersistedConversation.journal` (synchronously, in
commit order); :meth:`PersistedConversation.sync` appends every change not yet stored in one transaction
(group commit: concurrent callers share one write) and returns once the caller's changes are committed.
``EnhancedContextManager.add_message`` awaits it, so an acknowledged message is a stored message.

Optimistic concurrency: an append carries the version this process last stored. When another writer got
there first the store refuses it (nothing stored), the window is put back to what storage holds (the
other writer's changes included, the refused ones not) and every caller waiting on the refused changes
gets :class:`~context_manager.core.errors.ConversationConflictError`. If that reload fails too, the
changes not stored are taken back out of the window (it is the version last stored or loaded again, so
nothing unacknowledged is exported) and the conversation is *stale*: changes are refused until
:meth:`PersistedConversation.reload` succeeds.

Evicted messages are written to memory in the background with ids derived from the conversation and the
message, so writing one twice (after a crash, by two workers) stores it once. What a compression evicts
is held in the window's evicted queue until the compression's record is stored, and dropped when storage
refuses it (the reload puts those messages back in the window): memory never holds a message the stored
conversation still has in its window. The store keeps a
watermark of the compressions whose evicted messages are in memory, and resuming re-queues those after it.
A snapshot of the window is stored every ``snapshot_every`` records, so resuming replays a bounded tail.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from context_manager.core.context_window import CompressionRecord, ContextWindow
from context_manager.core.conversations.replay import (
    COUNTER_KEY,
    SNAPSHOT_HISTORY,
    PendingSnapshot,
    WindowState,
    fold,
    snapshot_of,
    take_back,
)
from context_manager.core.conversations.store import ConversationRecord, ConversationStore
from context_manager.core.errors import (
    ContextManagerError,
    ConversationAccessError,
    ConversationConflictError,
    InvalidArgumentError,
)
from context_manager.core.messages import Message
from context_manager.core.threads import to_the_end, wait_for_all

__all__ = ["PersistedConversation"]

logger = logging.getLogger(__name__)


class PersistedConversation:
    """One conversation's window, written to a :class:`ConversationStore` as it changes.

    Args:
        store: An open store.
        conversation_id: The conversation.
        window: The (empty) window to keep in step.
        snapshot_every: Store a snapshot after this many records since the last one (0: never).
        user_id: The end user of the manager: a conversation it creates belongs to this user, and one that
            belongs to another user (or to a user, when this is ``None``) is refused with
            :class:`~context_manager.core.errors.ConversationAccessError`.
    """

    def __init__(
        self,
        store: ConversationStore,
        conversation_id: str,
        window: ContextWindow,
        *,
        snapshot_every: int = 1000,
        user_id: str | None = None,
    ) -> None:
        self.store = store
        """Where the records go."""
        self.conversation_id = conversation_id
        """The conversation."""
        self._window = window
        self._snapshot_every = snapshot_every
        self._user_id = user_id
        self._writer = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._version = 0  # the version this process last stored or loaded
        self._created_at: float | None = None  # the stored conversation's generation (None: not created)
        self._snapshot_version = 0
        self._indexed_version = 0
        self._last_compress_version = 0
        self._fit_sequence = 0  # the compression that fitted the window loaded last (0: none)
        # while a load restores the window: the compressions journaled, with their sequence numbers
        self._loading_compressions: list[tuple[CompressionRecord, int]] | None = None
        self._pending: list[ConversationRecord] = []
        # the task whose operation committed each pending change (its caller's sync raises its refusal)
        self._pending_tasks: list[asyncio.Task[Any] | None] = []
        # the window before each pending compression, by its sequence number (to take it back)
        self._before: dict[int, tuple[tuple[Message, ...], tuple[CompressionRecord, ...], int]] = {}
        self._journaled = 0  # records journaled since the start (a sequence number)
        self._resolved = 0  # of those, how many are stored or were refused (a prefix)
        # (first, last, why, the task of each change first..last)
        self._refused: list[tuple[int, int, ConversationConflictError, list[asyncio.Task[Any] | None]]] = []
        self._snapshotting = False
        self._conflict: ConversationConflictError | None = None  # set while stale
        self._found_stale: ConversationConflictError | None = None  # check_current's, until recover()
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- state ----------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The stored version this process's window is at (changes not yet stored excluded)."""
        return self._version

    @property
    def pending(self) -> int:
        """Changes in the window not yet stored."""
        return len(self._pending)

    @property
    def journaled(self) -> int:
        """How many changes were journaled since the conversation was opened (a sequence number)."""
        return self._journaled

    @property
    def is_stale(self) -> bool:
        """True after a refused write whose reload failed: changes are refused until :meth:`reload`.

        The window is then at :attr:`version` (the changes not stored were taken back).
        """
        return self._conflict is not None

    def check_writable(self) -> int:
        """Raise the pending conflict while stale (before a change is made to the window).

        Returns the number of changes journaled so far: what :meth:`sync` takes as ``since`` after the
        change.

        Raises:
            ConversationConflictError: another writer changed the conversation and it was not reloaded.
        """
        if self._conflict is not None:
            raise self._conflict
        return self._journaled

    def refusal_of(self, sequences: list[int]) -> ConversationConflictError | None:
        """The refusal that dropped one of the changes journaled as ``sequences``, or ``None``.

        (Among the latest refusals: what :meth:`sync` remembers.)
        """
        for sequence in sequences:
            for first, last, why, _ in self._refused:
                if first <= sequence <= last:
                    return why
        return None

    async def check_current(self) -> None:
        """Raise the conflict the next write would meet, before a change that reads the whole window.

        The window awaits it before it compresses or refuses a change for lack of room (see
        :meth:`ContextWindow.set_overflow_check`): on a window another writer has moved past, a compression
        (a summarizer call, evictions) or a budget refusal would be about a state storage no longer holds;
        the conflict is the real cause. One row read. Once it raised, the conversation is stale until
        :meth:`recover` (the caller's, once the window's lock is free) reloads it. When storage cannot be
        read, or a write of this process is being stored (it meets any conflict itself), it raises nothing.

        Raises:
            ConversationConflictError: another writer changed (or deleted) the conversation.
        """
        if self._conflict is not None:
            raise self._conflict
        known = (self._version, self._created_at)
        if self._write_lock.locked():
            return
        try:
            stored = await self.store.version_of(self.conversation_id)
        except ContextManagerError as unread:  # the write that follows meets it, or the conflict
            logger.debug("conversation %r: version unread (%s)", self.conversation_id, type(unread).__name__)
            return
        if self._write_lock.locked() or (self._version, self._created_at) != known or self._conflict:
            return  # this process stored (or reloaded) meanwhile: what was read may be its own write
        if stored == known or (stored is None and known == (0, None)):
            return
        current = 0 if stored is None else stored[0]
        conflict = ConversationConflictError(self.conversation_id, self._version, current)
        logger.info(
            "conversation %r: another writer stored version %s first; refusing before the window changes",
            self.conversation_id,
            current,
        )
        self._conflict = self._found_stale = conflict
        raise conflict

    async def recover(self, error: ConversationConflictError) -> None:
        """Reload after :meth:`check_current` raised ``error`` (else do nothing).

        The window is put back to what storage holds, as after a refused write. If the load fails the
        changes not stored are taken back and the conversation stays stale (changes are refused until
        :meth:`reload`).
        """
        async with self._write_lock:
            if self._found_stale is not error or self._conflict is not error:
                return
            self._found_stale = None
            try:
                # to its end: cancelled, the conversation would stay stale until an explicit reload()
                await to_the_end(asyncio.ensure_future(self._reload_locked()))
            except Exception as reload_error:  # stay stale: changes are refused until reload()
                error._reload_failed(reload_error)
                logger.warning(
                    "conversation %r: reload after a conflict failed (%s); its changes are refused",
                    self.conversation_id,
                    type(reload_error).__name__,
                )
                await self._take_back_locked(error)

    # -- loading --------------------------------------------------------------------------------------

    async def open(self) -> int:
        """Load the stored conversation into the window and start journaling; return its version.

        Messages evicted after the indexing watermark are put back in the window's evicted queue, so the
        memory writer stores them (idempotently) if a crash stopped it before.

        Raises:
            StorageError: the store cannot be read.
            StorageCorruptedError: a stored record does not apply (nothing is guessed).
            InvalidArgumentError: the window's ``max_tokens`` cannot hold the stored window, which
                cannot be compressed to fit either (a window that can is compressed as it loads: that
                compression is a pending change, stored with the next :meth:`sync`).
            ConversationAccessError: the conversation belongs to another end user.
        """
        # journaling from the start: a window too large for max_tokens is compressed as it loads, and
        # that compression is a change to store
        self._window.set_journal(self._journal_entry)
        try:
            state = await self._load()
        except BaseException:
            self._window.set_journal(None)
            raise
        self._window.set_overflow_check(self.check_current)
        return state.version

    async def _load(self, deliveries: list[asyncio.Task[None]] | None = None) -> WindowState:
        """Load the stored conversation into the window (see :meth:`open`).

        ``deliveries``: when given, the eviction hook's handing of what a compression fitting the window
        evicted is appended to it instead of awaited (see :meth:`_reload_locked`).
        """
        stored = await self.store.load(self.conversation_id)
        if stored.user_id is not None and stored.user_id != self._user_id:
            raise ConversationAccessError(self.conversation_id, self._user_id)
        # Thousands of new objects would trigger full collections mid-replay (tens of ms, and nothing to
        # collect): the cyclic collector waits until the window is rebuilt.
        collecting = gc.isenabled()
        gc.disable()
        try:
            state = fold(stored)
        finally:
            if collecting:
                gc.enable()
        history = [CompressionRecord(**entry) for entry in state.history]
        others = self._count_again(state)
        self._fit_sequence = 0
        compressions: list[tuple[CompressionRecord, int]] = []
        self._loading_compressions = compressions
        try:
            fitted = await self._window.restore(
                state.messages,
                history,
                fit=True,
                earlier_compressions=state.earlier_compressions,
                deliveries=deliveries,
            )
        except InvalidArgumentError as error:
            if error.field != "max_tokens":
                raise
            if others:
                counted = (
                    f"as counted with {self._window.counter.encoding_name} (it was written with {others}: "
                    "open it with that token encoding, or a larger max_tokens)"
                )
            else:
                counted = "as stored (open it with the max_tokens of the managers that wrote it)"
            if self._window.enable_compression:
                counted += "; compressing it cannot make it fit (its protected messages are too large)"
            raise InvalidArgumentError(
                "max_tokens",
                error.got,
                f"{error.allowed}: the window of conversation {self.conversation_id!r} {counted}",
            ) from None
        finally:
            self._loading_compressions = None
        if fitted is not None:
            # identified by the record its commit journaled, not by position: restoring may wait for the
            # eviction hook out of the window's lock, and another task's change may be journaled after
            # it meanwhile. It stays pending (with the changes after it) when a reload drops the others.
            self._fit_sequence = next((seq for record, seq in compressions if record is fitted), 0)
            logger.warning(
                "conversation %r: its window holds %d tokens, more than max_tokens (%d)%s; compressed "
                "to %d tokens (stored with the next write)",
                self.conversation_id,
                fitted.tokens_before,
                self._window.max_tokens,
                f" as counted with {self._window.counter.encoding_name}" if others else "",
                fitted.tokens_after,
            )
        # Everything evicted after the watermark is this process's to store from now on, whoever evicted
        # it: another writer may have crashed before storing it, and this process moves the watermark up
        # to its own version once its queue is drained. In the same step as the version (a snapshot
        # taken at this version holds them); the queue keeps one entry per message id.
        self._window.evicted_queue.put(state.unindexed)
        self._version = state.version
        self._created_at = stored.created_at if stored.version else None
        self._snapshot_version = stored.snapshot_version
        self._indexed_version = stored.indexed_version
        self._last_compress_version = max(
            (version for version, record in stored.records if record.kind == "compress"),
            default=stored.snapshot_version if state.unindexed else 0,
        )
        return state

    def _count_again(self, state: WindowState) -> str:
        """Count the messages of ``state`` with the window's counter if another one counted them.

        The stored token counts are the writers' (resuming does not count again): a manager opened with
        another ``token_encoding`` (another model) would plan the window with counts of another
        tokenizer. Returns the other counters' names (empty when every count is this counter's).
        """
        counter = self._window.counter
        others = sorted(state.counters - {counter.encoding_name})
        if not others:
            return ""
        count_message = counter.count_message
        before = after = 0
        for message in state.messages:
            tokens = count_message(message)
            before += message.token_count
            after += tokens
            object.__setattr__(message, "token_count", tokens)  # this load's own objects
        named = ", ".join(others)
        logger.warning(
            "conversation %r: its token counts were made with %s; counted again with %s (%d tokens "
            "of messages instead of %d)",
            self.conversation_id,
            named,
            counter.encoding_name,
            after,
            before,
        )
        return named

    async def reload(self) -> int:
        """Drop the changes not stored yet and load what storage holds; return the version.

        Raises:
            StorageError: the store cannot be read (the conversation stays as it was).
        """
        async with self._write_lock:
            # A cancellation (a timeout around it) stops it at once: while storage is read, the window's
            # lock or the summarizer awaited, nothing has changed yet; once the window holds the version
            # loaded, the bookkeeping follows without an await, and only then is the eviction hook
            # waited for (it goes on by itself if that wait is cancelled).
            return await self._reload_locked()

    async def _reload_locked(self) -> int:
        # The journal stays on: a change another task makes to the window while the stored conversation
        # loads is journaled, so it counts among the changes this reload drops (its sync() raises the
        # refusal), instead of vanishing acknowledged (restoring the window journals nothing).
        deliveries: list[asyncio.Task[None]] = []
        state = await self._load(deliveries)
        # the compression that fitted the window just loaded is a change to the version loaded, and so
        # are the changes other tasks made to the window after it (while restoring waited for the
        # eviction hook): they stay pending, the changes before it are dropped
        keep = self._journaled - self._fit_sequence + 1 if self._fit_sequence else 0
        dropped = len(self._pending) - keep
        if dropped:
            why = self._conflict or ConversationConflictError(
                self.conversation_id, self._version, None, reloaded=True
            )
            self._refused.append(
                (self._resolved + 1, self._journaled - keep, why, self._pending_tasks[:dropped])
            )
            del self._refused[:-64]  # waiters of older refusals are long gone
        del self._pending[:dropped]
        del self._pending_tasks[:dropped]
        self._resolved = self._journaled - keep
        self._before = {seq: b for seq, b in self._before.items() if seq > self._resolved}
        # what the dropped compressions evicted is back in the window (or evicted in storage too: the load
        # queued it again), so none of it goes to memory
        self._window.evicted_queue.settle_held(self._resolved, stored=False)
        self._conflict = None
        for delivery in deliveries:  # the window and this conversation are at the version loaded
            await asyncio.shield(delivery)
        return state.version

    async def _take_back_locked(self, why: ConversationConflictError) -> None:
        """Stale (the reload after ``why`` failed): take every change not stored back out of the window.

        They can never be stored (storage moved past this version), so the window goes back to the
        version this process last stored or loaded, and exports nothing storage did not acknowledge;
        their callers get ``why``. A change committed while this waits for a compression in flight is
        taken back with the rest (the window's lock is held from the list to the replacement).
        """
        taken = 0

        def undo(messages: list[Message], history: list[CompressionRecord], earlier: int) -> int:
            nonlocal taken
            first = self._resolved + 1
            changes = [
                (record, self._before.get(sequence)) for sequence, record in enumerate(self._pending, first)
            ]
            earlier = take_back(messages, history, changes, earlier)
            taken = len(changes)
            return earlier

        try:
            await self._window.rewind(undo, over=True)  # (the loaded window a compression fitted)
        except Exception as error:  # pragma: no cover - a change take_back cannot undo: a bug
            logger.error(
                "conversation %r: the changes refused could not be taken back (%s: %s)",
                self.conversation_id,
                type(error).__name__,
                error,
            )
            return
        if taken:
            tasks = self._pending_tasks[:taken]
            self._refused.append((self._resolved + 1, self._resolved + taken, why, tasks))
            del self._refused[:-64]
            del self._pending[:taken]
            del self._pending_tasks[:taken]
            self._resolved += taken
            self._before = {seq: b for seq, b in self._before.items() if seq > self._resolved}
            self._window.evicted_queue.settle_held(self._resolved, stored=False)

    # -- writing --------------------------------------------------------------------------------------

    def _journal_entry(self, kind: str, payload: dict[str, Any]) -> None:
        """The window's journal: queue a committed change (synchronous, inside the commit point)."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a pin made where no event loop runs: the next sync stores it
            task = None
        self._pending.append(ConversationRecord(kind, payload))
        self._pending_tasks.append(task)
        self._journaled += 1
        if kind == "compress":
            # what it evicts (queued right after this, in the same step) reaches memory once it is stored
            self._window.evicted_queue.hold_next(self._journaled)
            before = self._window.compressed_from
            if before is not None:
                self._before[self._journaled] = before
            if self._loading_compressions is not None:
                self._loading_compressions.append((self._window.compression_history[-1], self._journaled))

    async def sync(self, *, since: int | None = None) -> None:
        """Store every change journaled so far (one transaction for all of them); return when committed.

        Args:
            since: What :meth:`check_writable` returned before the caller's own change: the caller's
                changes are the ones its task journaled after it (another task's changes journaled
                meanwhile are not), and only their refusal is raised (a sync with no change of its own, a
                flush, raises only its own write's conflict). ``None``: the last change journaled is the
                caller's.

        Raises:
            ConversationConflictError: another writer stored a change first; the window now holds what
                storage holds (or, if that load failed, is stale until :meth:`reload`, every change
                not stored taken back out of it).
            StorageError: the store could not be written; the changes stay in the window and are written
                by the next call.
        """
        target = self._journaled
        own = target if since is None else since + 1  # the caller's first change
        while self._resolved < target:
            async with self._write_lock:
                if self._resolved < target:
                    # the write runs in a thread a cancellation cannot stop: what follows its commit
                    # (the stored version) must happen all the same, under this lock, or the next write
                    # carries a version the store no longer has: a conflict that never was
                    await to_the_end(asyncio.ensure_future(self._write_pending()))
        if own <= target:
            task = asyncio.current_task()
            for first, last, why, tasks in self._refused:
                # the caller's changes are the ones its own task journaled: every window change is
                # committed by the task that then calls sync() (an add commits under the window's lock
                # in its own task; a summarizer's task commits nothing)
                mine = tasks[max(own, first) - first : min(last, target) - first + 1]
                if (
                    first <= target and own <= last and (since is None or any(t is task for t in mine))
                ):  # a reload dropped some of the caller's changes: refused
                    raise why
        if self._snapshot_every and self._version - self._snapshot_version >= self._snapshot_every:
            self._start_snapshot()

    async def _write_pending(self) -> None:
        if self._conflict is not None:  # stale: a reload must come first
            if self._pending:  # committed while it went stale: never stored, never exported
                await self._take_back_locked(self._conflict)
            raise self._conflict
        batch = list(self._pending)
        # the records of one append carry the counts of this window's counter: the first one says which
        if batch:
            first = batch[0]
            batch[0] = ConversationRecord(
                first.kind, {**first.payload, COUNTER_KEY: self._window.counter.encoding_name}
            )
        expected = self._version
        created_at = self._created_at if self._created_at is not None else time.time()
        try:
            version = await self.store.append(
                self.conversation_id,
                expected,
                batch,
                writer=self._writer,
                created_at=created_at,
                user_id=self._user_id,
            )
        except ConversationConflictError as error:
            logger.info(
                "conversation %r: another writer stored version %s first; reloading",
                self.conversation_id,
                error.current_version,
            )
            self._conflict = error
            try:
                await self._reload_locked()
            except Exception as reload_error:  # stay stale: changes are refused until reload()
                self._conflict = error
                error._reload_failed(reload_error)
                logger.warning(
                    "conversation %r: reload after a conflict failed (%s); its changes are refused",
                    self.conversation_id,
                    type(reload_error).__name__,
                )
                await self._take_back_locked(error)
            raise error from None
        del self._pending[: len(batch)]
        del self._pending_tasks[: len(batch)]
        self._resolved += len(batch)
        if self._before:
            self._before = {seq: b for seq, b in self._before.items() if seq > self._resolved}
        self._version = version
        self._created_at = created_at
        if any(record.kind == "compress" for record in batch):
            self._last_compress_version = version
            self._window.evicted_queue.settle_held(self._resolved, stored=True)

    async def mark_indexed_if_drained(self) -> None:
        """Move the indexing watermark once the memory writer has stored every evicted message.

        The queue holds every message evicted after the watermark up to this process's version (its own
        evictions, and the others' it loaded; those of a compression not stored yet are held in it too),
        so an empty queue means they are all in memory.
        """
        if self._last_compress_version > self._indexed_version and not len(self._window.evicted_queue):
            version = self._version
            await self.store.mark_indexed(self.conversation_id, version, created_at=self._created_at)
            self._indexed_version = version

    def _start_snapshot(self) -> None:
        """Store a snapshot of the window in the background, if it is the version stored.

        The window is captured here, synchronously: the caller's write has just been stored and no change
        is pending. Captured in the background task instead, it was taken while the next change was being
        stored (a loop of adds) and given up, every time: no snapshot while the loop ran.
        """
        if self._snapshotting or self._pending or self._conflict is not None:
            return
        window = self._window
        history = [record.to_dict() for record in window.compression_history[-SNAPSHOT_HISTORY:]]
        state = WindowState(
            messages=list(window.messages),  # (messages are immutable: a copy of the list is the window)
            history=history,
            unindexed=list(window.evicted_queue),
            version=self._version,
            earlier_compressions=window.compression_count - len(history),
        )
        self._snapshotting = True
        self._start(self._save_snapshot(state, window.counter.encoding_name, self._created_at))

    async def _save_snapshot(self, state: WindowState, counter: str, created_at: float | None) -> None:
        """Store ``state`` as the snapshot (of generation ``created_at``, as captured)."""
        version = state.version
        try:
            # off the loop (0.3 s at 30,000 messages): the built-in stores build and encode it a chunk at
            # a time in their thread (see PendingSnapshot); another store gets JSON values (its protocol)
            store: Any = self.store
            snapshot: Mapping[str, Any] | PendingSnapshot
            if getattr(store, "encodes_pending_snapshots", False):
                snapshot = PendingSnapshot(state, counter)
            else:
                snapshot = await asyncio.to_thread(snapshot_of, state, counter)
            await store.save_snapshot(self.conversation_id, version, snapshot, created_at=created_at)
        except Exception as error:  # a snapshot only makes resuming faster: the records are there
            logger.warning(
                "conversation %r: snapshot failed (%s)", self.conversation_id, type(error).__name__
            )
            return
        finally:
            self._snapshotting = False
        self._snapshot_version = max(self._snapshot_version, version)

    def _start(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_background(self) -> None:
        """Wait for background snapshots and pin writes."""
        await wait_for_all(self._tasks)

    async def close(self) -> None:
        """Wait for background snapshots; stop journaling (pending changes are the caller's to sync)."""
        await self._wait_background()
        self._window.set_journal(None)
        self._window.set_overflow_check(None)
