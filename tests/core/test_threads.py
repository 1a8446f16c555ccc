"""``UserThreads``: the pool user code (sync tools, controller tasks, health checks) runs in."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from context_manager.core.threads import UserThreads

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
