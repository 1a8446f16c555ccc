"""Loop-blocking measurement shared by the tests that check an operation never holds the event loop."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def longest_loop_step(operation: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run ``operation`` beside a ticker task; return its result and the loop's longest step in CPU time.

    The CPU time of the loop's thread between two turns of the ticker is what the loop could not run other
    tasks for (other processes on a shared machine do not inflate it, unlike wall time). The objects the test
    process already holds are frozen out of the garbage collector: a full collection of that heap would be a
    stall of the test runner, not of ours.
    """
    steps: list[float] = []
    last = time.thread_time()

    async def ticker() -> None:
        nonlocal last
        while True:
            await asyncio.sleep(0)
            now = time.thread_time()
            steps.append(now - last)
            last = now

    gc.collect()
    gc.freeze()
    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    try:
        last = time.thread_time()
        result = await operation()
        steps.append(time.thread_time() - last)  # the step that ends the operation
    finally:
        gc.unfreeze()
        ticking.cancel()
    return result, max(steps)
