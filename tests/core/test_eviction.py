"""The evicted-message queue and the background writer that drains it (issues 14.2 and 18.1)."""

from __future__ import annotations

import asyncio

import pytest

from context_manager.core.eviction import EvictedQueue, EvictionWriter
from context_manager.core.messages import Message


def messages(count: int) -> list[Message]:
    return [Message.create("user", f"message {i}") for i in range(count)]


def test_claimed_messages_are_skipped_until_released_or_acknowledged() -> None:
    queue = EvictedQueue()
    woken: list[int] = []
    queue.add_listener(lambda: woken.append(1))
    batch = messages(5)
    queue.put(batch)
    assert woken == [1] and len(queue) == 5 and queue.unclaimed == 5
    tickets, claimed = queue.claim(3)
    assert claimed == batch[:3] and queue.unclaimed == 2
    assert queue.claim(10)[1] == batch[3:]
    queue.release(tickets)  # the write failed: back to the queue, consumers woken
    assert queue.unclaimed == 3 and woken == [1, 1]
    tickets, again = queue.claim(10)
    assert again == batch[:3]
    queue.acknowledge(tickets)
    assert list(queue) == batch[3:]


def test_take_all_leaves_claimed_messages_with_their_consumer() -> None:
    queue = EvictedQueue()
    batch = messages(4)
    queue.put(batch[:2], claim=True)
    queue.put(batch[2:])
    assert queue.take_all() == batch[2:]
    assert list(queue) == batch[:2] and queue.unclaimed == 0


def test_held_messages_wait_for_their_compression_to_be_stored_or_refused() -> None:
    """A persisted conversation holds what a compression evicts until its record is stored: no consumer
    claims it before; a refused one is dropped, unless a reload found it evicted in storage too."""
    queue = EvictedQueue()
    woken: list[int] = []
    queue.add_listener(lambda: woken.append(1))
    batch = messages(6)
    queue.hold_next(1)
    queue.put(batch[:2])
    queue.hold_next(2)
    queue.put(batch[2:4])
    assert woken == [] and len(queue) == 4 and queue.unclaimed == 0
    assert queue.claim(10) == ([], []) and queue.take_all() == []
    queue.settle_held(1, stored=True)  # compression 1 stored: its messages go to the consumers
    assert woken == [1] and queue.unclaimed == 2
    assert queue.claim(10)[1] == batch[:2]
    queue.put([batch[2]])  # a reload found batch[2] evicted in storage: it is queued for good
    assert woken == [1, 1]
    queue.hold_next(3)
    queue.put([batch[3], batch[4]])  # evicted again by a later compression (the reload's fit)
    queue.settle_held(2, stored=False)  # compression 2 refused
    assert list(queue) == batch[:5] and queue.unclaimed == 1
    queue.settle_held(3, stored=False)
    assert list(queue) == batch[:3]
    queue.put([batch[3]])  # dropped ids can be queued again
    assert list(queue) == batch[:4] and queue.unclaimed == 2


def test_the_queue_holds_one_entry_per_message_id() -> None:
    """A compression refused by a persisted conversation and made again hands the same messages over
    twice: the second hand-over adds only what is new (memory refuses a batch with repeated ids)."""
    queue = EvictedQueue()
    batch = messages(4)
    queue.put(batch[:3])
    tickets = queue.put([batch[1], batch[3], batch[3]], claim=True)
    assert list(queue) == batch and len(tickets) == 1
    assert queue.messages_of(tickets) == [batch[3]]
    first, _ = queue.claim(2)
    queue.acknowledge(first)  # stored: the same message may be queued again (a later compression)
    assert len(queue.put([batch[0]])) == 1 and list(queue) == [batch[2], batch[3], batch[0]]
    assert queue.take_all() == [batch[2], batch[0]]
    assert len(queue.put([batch[2]])) == 1  # taken: no longer queued
    assert len(queue.put([batch[3]])) == 0  # still with its consumer


async def test_writer_drains_in_small_batches_one_per_loop_step() -> None:
    queue = EvictedQueue()
    written: list[list[Message]] = []
    steps = 0

    async def write(batch: list[Message]) -> None:
        written.append(batch)

    async def ticker() -> None:
        nonlocal steps
        while True:
            steps += 1
            await asyncio.sleep(0)

    writer = EvictionWriter(queue, write, batch_size=4)
    writer.start()
    ticking = asyncio.create_task(ticker())
    batch = messages(10)
    queue.put(batch)
    await writer.flush()
    ticking.cancel()
    assert [len(part) for part in written] == [4, 4, 2]
    assert [m for part in written for m in part] == batch
    assert steps >= 3  # the loop ran between the batches
    assert len(queue) == 0 and writer.written == 10
    await writer.stop()
    assert not writer.is_running


async def test_a_failed_write_keeps_the_messages_and_is_retried() -> None:
    queue = EvictedQueue()
    stored: list[Message] = []
    failures = 2

    async def flaky(batch: list[Message]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("disk full")
        stored.extend(batch)

    writer = EvictionWriter(queue, flaky, retry_delay=0.01)
    batch = messages(3)
    queue.put(batch)
    with pytest.raises(OSError, match="disk full"):
        await writer.flush()
    assert list(queue) == batch and isinstance(writer.last_error, OSError)
    writer.start()  # the background task retries (failing once more) until the write succeeds
    for _ in range(500):
        if stored:
            break
        await asyncio.sleep(0.01)
    assert stored == batch and len(queue) == 0
    await writer.stop()


async def test_cancelling_a_write_puts_its_batch_back() -> None:
    queue = EvictedQueue()
    entered = asyncio.Event()

    async def hanging(batch: list[Message]) -> None:
        entered.set()
        await asyncio.Event().wait()

    writer = EvictionWriter(queue, hanging)
    batch = messages(2)
    queue.put(batch)
    flushing = asyncio.create_task(writer.flush())
    await entered.wait()
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert list(queue) == batch and queue.unclaimed == 2


async def test_a_message_the_store_refuses_does_not_hold_back_the_others() -> None:
    """A refusal (an invalid argument, not an outage) of one message used to fail its whole batch on
    every retry: none of the batch reached memory. The others are now written one at a time."""
    from context_manager.core.errors import InvalidMemoryError

    queue = EvictedQueue()
    stored: list[Message] = []

    async def refusing(batch: list[Message]) -> None:
        if any("poison" in m.content for m in batch):
            raise InvalidMemoryError("memory_id", "x", "an id not used by another memory")
        stored.extend(batch)

    writer = EvictionWriter(queue, refusing, batch_size=8)
    batch = messages(3) + [Message.create("user", "poison")] + messages(4)
    queue.put(batch)
    with pytest.raises(InvalidMemoryError):
        await writer.flush()
    assert stored == [m for m in batch if m.content != "poison"]
    assert [m.content for m in queue] == ["poison"] and queue.unclaimed == 1
    assert isinstance(writer.last_error, InvalidMemoryError)
    # an outage is not split: the whole batch waits for the retry
    outage_queue = EvictedQueue()

    async def down(batch: list[Message]) -> None:
        raise OSError("connection refused")

    failing = EvictionWriter(outage_queue, down)
    outage_queue.put(messages(3))
    with pytest.raises(OSError):
        await failing.flush()
    assert len(outage_queue) == 3 and outage_queue.unclaimed == 3


async def test_prepare_sees_large_groups_while_writes_stay_small() -> None:
    """With ``prepare`` (the manager embeds there) a group is prepared in one call, then written in
    ``batch_size`` batches, one per loop step, in order."""
    queue = EvictedQueue()
    events: list[tuple[str, int]] = []

    async def prepare(group: list[Message]) -> None:
        events.append(("prepare", len(group)))

    async def write(batch: list[Message]) -> None:
        events.append(("write", len(batch)))
        stored.extend(batch)

    stored: list[Message] = []
    writer = EvictionWriter(queue, write, batch_size=4, prepare=prepare, prepare_size=10)
    batch = messages(23)
    queue.put(batch)
    await writer.flush()
    assert events == [
        ("prepare", 10), ("write", 4), ("write", 4), ("write", 2),
        ("prepare", 10), ("write", 4), ("write", 4), ("write", 2),
        ("prepare", 3), ("write", 3),
    ]  # fmt: skip
    assert stored == batch and len(queue) == 0 and writer.written == 23


async def test_a_failed_write_puts_the_rest_of_its_group_back() -> None:
    queue = EvictedQueue()
    stored: list[Message] = []
    prepared: list[int] = []

    async def prepare(group: list[Message]) -> None:
        prepared.append(len(group))
        if len(prepared) == 1:
            raise RuntimeError("model not loaded")  # only logged: the writes do without it

    async def write(batch: list[Message]) -> None:
        if len(stored) >= 6:
            raise OSError("disk full")
        stored.extend(batch)

    writer = EvictionWriter(queue, write, batch_size=3, prepare=prepare, prepare_size=12)
    batch = messages(14)
    queue.put(batch)
    with pytest.raises(OSError, match="disk full"):
        await writer.flush()
    assert stored == batch[:6] and list(queue) == batch[6:] and queue.unclaimed == 8
    assert prepared == [12]


@pytest.mark.parametrize("hang_in", ["prepare", "write"])
async def test_cancelling_a_prepare_or_a_write_puts_the_group_back(hang_in: str) -> None:
    queue = EvictedQueue()
    entered = asyncio.Event()
    stored: list[Message] = []

    async def prepare(group: list[Message]) -> None:
        if hang_in == "prepare":
            entered.set()
            await asyncio.Event().wait()

    async def write(batch: list[Message]) -> None:
        if hang_in == "write" and stored:
            entered.set()
            await asyncio.Event().wait()
        stored.extend(batch)

    writer = EvictionWriter(queue, write, batch_size=2, prepare=prepare, prepare_size=6)
    batch = messages(8)
    queue.put(batch)
    flushing = asyncio.create_task(writer.flush())
    await entered.wait()
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert len(stored) == (0 if hang_in == "prepare" else 2)
    assert list(queue) == batch[len(stored) :] and queue.unclaimed == len(queue)


async def test_a_refused_message_in_a_group_keeps_the_others_flowing() -> None:
    from context_manager.core.errors import InvalidMemoryError

    queue = EvictedQueue()
    stored: list[Message] = []

    async def prepare(group: list[Message]) -> None:
        pass

    async def refusing(batch: list[Message]) -> None:
        if any("poison" in m.content for m in batch):
            raise InvalidMemoryError("memory_id", "x", "an id not used by another memory")
        stored.extend(batch)

    writer = EvictionWriter(queue, refusing, batch_size=4, prepare=prepare, prepare_size=12)
    batch = messages(2) + [Message.create("user", "poison")] + messages(9)
    queue.put(batch)
    with pytest.raises(InvalidMemoryError):
        await writer.flush()
    # the poisoned batch was written one at a time; the rest of the group went back to the queue
    assert stored == batch[:2] + batch[3:4]
    assert list(queue) == [batch[2], *batch[4:]] and queue.unclaimed == len(queue)
