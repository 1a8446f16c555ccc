"""Handing evicted messages over: the window's pending queue and the background writer that drains it.

A compression moves the messages it evicts into the window's :class:`EvictedQueue` in the same step that
commits the new window (no ``await`` in between), so a cancelled ``add`` cannot lose them: from then on
they are held in process until a consumer acknowledges them. Consumers:

* an eviction hook (``ContextWindow.set_eviction_hook``): the add that evicted the messages calls it after
  releasing the window's lock, shielded from the caller's cancellation;
* an :class:`EvictionWriter` (what ``EnhancedContextManager`` runs): a background task that writes queued
  messages to memory in small batches, one per event-loop step, off the ``add_message`` path. With an
  embedder the manager gives it a ``prepare`` step: a group of up to 256 messages is embedded in one
  worker-thread call before its small batches are written (the model costs about twice as much in calls
  of 8). ``flush()`` waits until everything queued is written; ``stop()`` flushes, then ends the task.

A consumer *claims* a batch (others skip it), then *acknowledges* it once stored or *releases* it when the
write failed, so it goes back to the queue and is tried again. Delivery is at least once: a write cut
short by a cancellation is retried in full.

A persisted conversation *holds* what a compression evicts (:meth:`EvictedQueue.hold_next`) until the
compression's record is stored: no consumer claims a held message, and when storage refuses the record
(another writer got there first) the held messages are dropped (the reload put them back in the window).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.messages import Message

__all__ = ["EvictedQueue", "EvictionWriter"]

logger = logging.getLogger(__name__)


class EvictedQueue:
    """Evicted messages not yet acknowledged by a consumer, oldest first (owned by a ``ContextWindow``)."""

    def __init__(self) -> None:
        """Create an empty queue."""
        self._entries: dict[int, Message] = {}  # ticket (sequence number) -> message, oldest first
        self._claimed: set[int] = set()
        self._queued_ids: dict[str, int] = {}  # message id -> its ticket
        self._next_ticket = 0
        self._listeners: list[Callable[[], None]] = []
        self._hold_key: int | None = None  # the next put is held under this key
        self._held: dict[int, list[int]] = {}  # key -> its tickets (not claimable until released)
        self._held_tickets: dict[int, int] = {}  # ticket -> its key

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Message]:
        return iter(tuple(self._entries.values()))

    @property
    def unclaimed(self) -> int:
        """Messages waiting for a consumer."""
        return len(self._entries) - len(self._claimed) - len(self._held_tickets)

    @property
    def held(self) -> int:
        """Messages held until the compression that evicted them is stored (see :meth:`hold_next`)."""
        return len(self._held_tickets)

    def hold_next(self, key: int) -> None:
        """Hold the messages of the next :meth:`put` under ``key`` (until :meth:`settle_held`).

        A persisted conversation calls it as its journal receives a compression (the put of what that
        compression evicted follows in the same synchronous step): a held message is claimed by no
        consumer, so nothing reaches memory before the compression is stored.
        """
        self._hold_key = key

    def settle_held(self, up_to: int, *, stored: bool) -> None:
        """The holds with a key up to ``up_to`` are settled: released (``stored``) or dropped.

        A dropped message stays queued when a put without hold queued it again meanwhile (storage holds
        its eviction: a reload found it evicted).
        """
        keys = [key for key in self._held if key <= up_to]
        if not keys:
            return
        released = False
        for key in keys:
            for ticket in self._held.pop(key):
                if self._held_tickets.get(ticket) != key:
                    continue  # confirmed, or held again under a later key
                del self._held_tickets[ticket]
                if stored:
                    released = True
                    continue
                message = self._entries.pop(ticket, None)
                if message is not None and self._queued_ids.get(message.id) == ticket:
                    del self._queued_ids[message.id]
                self._claimed.discard(ticket)
        if released:
            for listener in tuple(self._listeners):
                listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (synchronously; keep it cheap) whenever messages are put."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def put(self, messages: Sequence[Message], *, claim: bool = False) -> range:
        """Queue ``messages`` (synchronous: the commit that evicted them calls it); return their tickets.

        A message whose id is queued already is left out (one entry per message: a compression refused
        by a persisted conversation and made again hands the same messages over twice). With ``claim``
        they are claimed at once by the caller (who will deliver them itself).
        """
        queued = self._queued_ids
        hold, self._hold_key = self._hold_key, None
        if claim:
            hold = None  # an eviction hook gets them at once (the add waits for it)
        held = self._held_tickets
        confirmed = False
        fresh: dict[str, Message] = {}
        for message in messages:
            ticket = queued.get(message.id)
            if ticket is None:
                fresh.setdefault(message.id, message)
            elif ticket in held:
                if hold is None:  # queued again unheld: storage holds its eviction
                    del held[ticket]
                    confirmed = True
                else:  # evicted again by a later compression (a reload's fit): its hold now
                    held[ticket] = hold
                    self._held.setdefault(hold, []).append(ticket)
        messages = list(fresh.values())
        first = self._next_ticket
        tickets = range(first, first + len(messages))
        self._next_ticket = tickets.stop
        self._entries.update(zip(tickets, messages, strict=True))
        queued.update(zip((message.id for message in messages), tickets, strict=True))
        if claim:
            self._claimed.update(tickets)
        elif hold is not None:
            self._held.setdefault(hold, []).extend(tickets)
            held.update(dict.fromkeys(tickets, hold))
        if (tickets and hold is None) or confirmed:
            for listener in tuple(self._listeners):
                listener()
        return tickets

    def claim(self, limit: int) -> tuple[list[int], list[Message]]:
        """Claim up to ``limit`` of the oldest unclaimed messages; return their tickets and the messages."""
        tickets: list[int] = []
        messages: list[Message] = []
        claimed = self._claimed
        held = self._held_tickets
        for ticket, message in self._entries.items():
            if ticket in claimed or ticket in held:
                continue
            tickets.append(ticket)
            messages.append(message)
            if len(tickets) >= limit:
                break
        claimed.update(tickets)
        return tickets, messages

    def messages_of(self, tickets: Sequence[int]) -> list[Message]:
        """The messages still queued under ``tickets``, in order."""
        return [self._entries[ticket] for ticket in tickets if ticket in self._entries]

    def acknowledge(self, tickets: Sequence[int]) -> None:
        """The messages of ``tickets`` are stored: drop them from the queue."""
        for ticket in tickets:
            message = self._entries.pop(ticket, None)
            if message is not None:
                del self._queued_ids[message.id]
            self._claimed.discard(ticket)

    def release(self, tickets: Sequence[int]) -> None:
        """The delivery of ``tickets`` failed: make them available to consumers again."""
        self._claimed.difference_update(tickets)
        if any(ticket in self._entries for ticket in tickets):
            for listener in tuple(self._listeners):
                listener()

    def take_all(self) -> list[Message]:
        """Remove and return every unclaimed message (claimed and held ones stay queued)."""
        kept = self._claimed | self._held_tickets.keys()
        taken = [message for ticket, message in self._entries.items() if ticket not in kept]
        self._entries = {ticket: message for ticket, message in self._entries.items() if ticket in kept}
        self._queued_ids = {message.id: ticket for ticket, message in self._entries.items()}
        return taken


WriteBatch = Callable[[list[Message]], Awaitable[object]]
"""Stores a batch of evicted messages (for example ``MemoryManager.remember_messages``); raises on failure."""

PrepareBatches = Callable[[list[Message]], Awaitable[object]]
"""Work done once for several batches before they are written (embedding their texts in one call)."""


class EvictionWriter:
    """Writes a window's evicted messages to a store in the background, a small batch per loop step.

    Example:
        >>> writer = EvictionWriter(window.evicted_queue, memory.remember_messages)
        >>> writer.start()
        >>> ...  # adds compress the window; the writer stores what they evict
        >>> await writer.stop()  # everything queued is written first
    """

    def __init__(
        self,
        queue: EvictedQueue,
        write: WriteBatch,
        *,
        batch_size: int = 8,
        prepare: PrepareBatches | None = None,
        prepare_size: int = 256,
        retry_delay: float = 1.0,
        on_drained: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Create a stopped writer.

        Args:
            queue: The queue to drain (``ContextWindow.evicted_queue``).
            write: Stores one batch (awaited; an exception leaves the batch queued for a retry).
            batch_size: Messages per write; each write runs in one event-loop step, so this bounds how long
                the writer holds the loop.
            prepare: Awaited once with up to ``prepare_size`` messages before they are written
                ``batch_size`` at a time: work that costs less in one large call than in many small
                ones and runs off the loop (``EnhancedContextManager`` embeds their texts in a worker
                thread, and the writes reuse the vectors). Its failure is logged and the writes go on
                without it (they do the work themselves).
            prepare_size: Messages per ``prepare`` call (claimed together; those not written when a write
                fails or is cancelled go back to the queue).
            retry_delay: Seconds before the background task retries after a failed write (doubled after
                each further failure, up to a minute).
            on_drained: Awaited after a drain that wrote messages and left the queue empty (a persisted
                conversation moves its indexing watermark); it handles its own errors.
        """
        self._queue = queue
        self._write = write
        self._batch_size = batch_size
        self._prepare = prepare
        self._prepare_size = max(prepare_size, batch_size) if prepare is not None else batch_size
        self._retry_delay = retry_delay
        self._on_drained = on_drained
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        """The exception of the latest failed write (``None`` after a successful drain)."""
        self.written = 0
        """Messages written since the writer was created."""

    @property
    def is_running(self) -> bool:
        """True while the background task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background task (it drains what is already queued at once)."""
        if self.is_running:
            return
        self._queue.add_listener(self._wake.set)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="context-manager-eviction-writer"
        )
        self._wake.set()

    async def _run(self) -> None:
        delay = self._retry_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain()
            except Exception as error:
                # only the type at WARNING: an error's text may quote message content
                logger.warning(
                    "could not write %d evicted messages to memory (%s); retrying in %.0f s",
                    len(self._queue),
                    type(error).__name__,
                    delay,
                )
                logger.debug("eviction writer failure: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                self._wake.set()
            else:
                delay = self._retry_delay

    async def _drain(self) -> None:
        async with self._drain_lock:
            queue = self._queue
            wrote = False
            while True:
                group_tickets, group = queue.claim(self._prepare_size)
                if not group_tickets:
                    break
                wrote = True
                pending = group_tickets  # claimed, not yet acknowledged: released if we stop early
                try:
                    if self._prepare is not None:
                        await self._prepared(group)
                    size = self._batch_size
                    for start in range(0, len(group_tickets), size):
                        tickets, batch = group_tickets[start : start + size], group[start : start + size]
                        pending = group_tickets[start:]
                        await self._write_batch(tickets, batch)
                        await asyncio.sleep(0)  # one batch per loop step: the loop never waits long for us
                    pending = []
                finally:
                    if pending:
                        queue.release(pending)
            self.last_error = None
            if wrote and self._on_drained is not None and not len(queue):
                await self._on_drained()

    async def _prepared(self, group: list[Message]) -> None:
        """Run ``prepare`` on a claimed group; a failure is only logged (the writes do without it)."""
        assert self._prepare is not None
        try:
            await self._prepare(group)
        except Exception as error:
            logger.debug("eviction writer: preparing %d messages failed: %r", len(group), error)

    async def _write_batch(self, tickets: list[int], batch: list[Message]) -> None:
        """Write one batch and acknowledge it; on failure leave it claimed (the caller releases it)."""
        queue = self._queue
        try:
            await self._write(batch)
        except BaseException as error:
            if len(batch) > 1 and isinstance(error, InvalidArgumentError):
                # the store refused something in the batch (not an outage): one message it will
                # never take must not hold back the others, so they are written one at a time
                await self._write_singly(tickets, batch, error)
                return
            if isinstance(error, Exception):
                self.last_error = error
            raise
        queue.acknowledge(tickets)
        self.written += len(batch)

    async def _write_singly(self, tickets: list[int], batch: list[Message], error: Exception) -> None:
        """Write a refused batch a message at a time; the refused ones stay queued and the error is raised.

        Returns when every message was stored after all.

        Raises:
            InvalidArgumentError: the last refusal (once every message of the batch was tried).
            Exception: an outage, after which the rest of the batch is queued again.
        """
        queue = self._queue
        refused: list[int] = []
        last: Exception = error
        for position, (ticket, message) in enumerate(zip(tickets, batch, strict=True)):
            try:
                await self._write([message])
            except BaseException as single_error:
                if isinstance(single_error, InvalidArgumentError):
                    refused.append(ticket)
                    last = single_error
                    continue
                queue.release([*refused, *tickets[position:]])  # an outage or a cancellation: all retried
                if isinstance(single_error, Exception):
                    self.last_error = single_error
                raise
            queue.acknowledge([ticket])
            self.written += 1
        if not refused:
            return
        queue.release(refused)
        self.last_error = last
        logger.warning(
            "memory refused %d of %d evicted messages (%s); they stay in context_window.evicted_messages",
            len(refused),
            len(batch),
            type(last).__name__,
        )
        raise last

    async def flush(self) -> None:
        """Write everything queued now and return when it is stored.

        Raises:
            Exception: the write's own error (the messages stay queued; the background task retries).
        """
        await self._drain()

    async def stop(self) -> None:
        """Write what is queued (a failure is logged; the messages stay in the queue), then end the task."""
        try:
            await self.flush()
        except Exception as error:
            logger.warning(
                "%d evicted messages could not be written to memory before stopping (%s); "
                "they remain in context_window.evicted_messages",
                len(self._queue),
                type(error).__name__,
            )
        finally:
            self._queue.remove_listener(self._wake.set)
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                except Exception:  # pragma: no cover - _run handles its errors
                    logger.exception("eviction writer task failed")
