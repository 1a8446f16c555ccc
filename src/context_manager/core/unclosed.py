"""Managers garbage-collected without ``cleanup()``: warned about, then closed in the background.

An :class:`~context_manager.EnhancedContextManager` or :class:`~context_manager.MemoryManager` that its
code forgot to clean up (no ``async with``, no ``await cleanup()``) is still freed once nothing refers to
it: its background tasks refer to what they work on, never to the manager. A ``weakref.finalize`` of the
manager then emits a ``ResourceWarning`` naming it (as ``aiohttp.ClientSession`` and ``asyncio`` streams
do) and schedules the close of what it held on its event loop, as a task kept here until it ends: what it
evicted or changed is stored, its hold on a shared store given back (the last holder closes the store),
its files, lock and connections closed. The finalizer itself never blocks nor awaits (it may run in the
middle of any code, in any thread, when the garbage collector does): it only hands the close to the loop.
When that loop has ended, nothing can run there any more: a :class:`MemoryManager` then releases its lock
file at once (the rest is closed as the garbage collector frees it).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from context_manager.core import forks

__all__ = ["close_in_background", "wait_for_background_closes", "warn_unclosed"]

logger = logging.getLogger(__name__)

_closing: set[asyncio.Future[Any]] = set()  # the background closes of collected managers, running


def warn_unclosed(name: str, detail: str, outcome: str = "closed in the background") -> None:
    """Emit the ``ResourceWarning`` for a ``name`` collected while open.

    Args:
        name: The class.
        detail: Which one (a conversation, a storage location), in parentheses with a leading space.
        outcome: What happens to what it held.
    """
    warnings.warn(
        f"unclosed {name}{detail}: garbage-collected without cleanup(), {outcome}; use `async with` or "
        "await cleanup()",
        ResourceWarning,
        stacklevel=2,
    )


def close_in_background(
    loop: asyncio.AbstractEventLoop, name: str, close: Callable[[], Awaitable[None]], pid: int
) -> bool:
    """Run ``close()`` as a task on ``loop``, from any thread; False when the loop can run nothing more.

    Called by a finalizer: it only hands the close to the loop (``call_soon_threadsafe``), which starts it
    at its next step. ``pid`` is the process that opened what is closed: in a forked child nothing of it
    is closed (it is the parent's).
    """
    if pid != forks.pid or loop.is_closed():
        return False

    def start() -> None:
        task = asyncio.ensure_future(close())
        _closing.add(task)
        task.add_done_callback(finished)

    def finished(task: asyncio.Future[None]) -> None:
        _closing.discard(task)
        if task.cancelled():
            logger.warning("the background close of a collected %s was cancelled (the loop ended)", name)
        elif task.exception() is not None:
            error = task.exception()
            logger.warning(
                "the background close of a collected %s failed: %s: %s", name, type(error).__name__, error
            )

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:  # closed meanwhile
        return False
    return True


async def wait_for_background_closes() -> None:
    """Wait until the background closes of collected managers on this event loop have ended.

    Those started so far and meanwhile; for a test or a shutdown that must see them done (their failures
    are logged, not raised). Only this loop's: a close running on another thread's loop is that loop's to
    run (awaiting its task here would raise, the task being tied to its own loop).
    """
    loop = asyncio.get_running_loop()
    while True:
        # tuple() copies the set at once (other threads' loops add to it and discard from it)
        mine = [task for task in tuple(_closing) if task.get_loop() is loop]
        if not mine:
            return
        await asyncio.gather(*mine, return_exceptions=True)
        _closing.difference_update(mine)  # their done callbacks run only at a later step of the loop
