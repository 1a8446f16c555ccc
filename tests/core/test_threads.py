"""``UserThreads``: the pool user code (sync tools, controller tasks, health checks) runs in."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from context_manager.core.threads import UserThreads, wait_for_all

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_runs_in_named_threads_with_the_callers_context() -> None:
    threads = UserThreads("user-code", max_threads=2)
    request_id.set("r-42")
    try:
        name, seen = await threads.run(lambda: (threading.current_thread().name, request_id.get()))
    finally:
        threads.shutdown()
    assert name.startswith("user-code") and seen == "r-42"


async def test_abandoned_calls_are_counted_until_they_return() -> None:
    threads = UserThreads("user-code", max_threads=4)
    gate = threading.Event()
    entered = threading.Event()

    def hangs() -> str:
        entered.set()
        gate.wait(30)
        return "late"

    try:
        waiting = asyncio.ensure_future(threads.run(hangs))
        assert await asyncio.to_thread(entered.wait, 5)
        assert (threads.busy, threads.abandoned) == (1, 0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await waiting
        assert (threads.busy, threads.abandoned) == (1, 1)
        assert await threads.run(lambda: 7) == 7  # a new call gets another thread at once
        gate.set()
        for _ in range(500):
            if threads.busy == 0:
                break
            await asyncio.sleep(0.01)
        assert (threads.busy, threads.abandoned) == (0, 0)
    finally:
        gate.set()
        threads.shutdown()


async def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    threads = UserThreads("user-code", max_threads=1)
    gate = threading.Event()
    ran: list[str] = []

    def occupy() -> None:
        gate.wait(30)

    try:
        first = asyncio.ensure_future(threads.run(occupy))
        queued = asyncio.ensure_future(threads.run(ran.append, "queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        gate.set()
        await first
        await threads.run(ran.append, "after")
        assert ran == ["after"] and threads.abandoned == 0
    finally:
        gate.set()
        threads.shutdown()


def test_max_threads_is_validated() -> None:
    with pytest.raises(ValueError, match=r"max_threads: got 0; allowed an integer >= 1"):
        UserThreads("x", max_threads=0)


async def _nothing() -> None:
    return None


async def test_waiting_for_tasks_that_ended_before_their_done_callbacks_ran_returns() -> None:
    # the state a close meets when a background task has just ended: done, its done callback (which takes
    # it out of the set) not yet run. On Python 3.12+ gather() of ended tasks completes without yielding
    # to the loop, so the callback never ran and a close spun forever (seen on 3.13 in the memory
    # manager's cleanup)
    tasks: set[asyncio.Task[None]] = set()
    task = asyncio.get_running_loop().create_task(_nothing())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    await asyncio.sleep(0)  # the task runs to its end; its done callback is scheduled after this resumes
    assert task.done() and task in tasks
    await asyncio.wait_for(wait_for_all(tasks), 5)
    assert not tasks


async def test_waiting_for_all_includes_tasks_added_meanwhile() -> None:
    tasks: set[asyncio.Task[None]] = set()
    finished: list[str] = []
    loop = asyncio.get_running_loop()

    def spawn(name: str, coroutine: object) -> None:
        task = loop.create_task(coroutine)  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def second() -> None:
        await asyncio.sleep(0.02)
        finished.append("second")

    async def first() -> None:
        await asyncio.sleep(0.01)
        spawn("second", second())
        finished.append("first")

    spawn("first", first())
    await asyncio.wait_for(wait_for_all(tasks), 5)
    assert finished == ["first", "second"] and not tasks
