"""Repairs auto-recovery runs for the faults the built-in checks know (each returns what it did)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from context_manager.core.health_checker.models import Repair
from context_manager.core.threads import UserThreads, is_async_callable

__all__ = [
    "rebuild_full_text_index",
    "recreate_storage",
    "restart_background_tasks",
    "restore_storage",
    "run_repair",
]

logger = logging.getLogger(__name__)


def recreate_storage(missing: list[Path], memory_manager: Any, rewrite_log: bool) -> Repair:
    """Recreate the ``missing`` directories (and, with ``rewrite_log``, restore the memory files).

    Kept for callers of the earlier API: :func:`restore_storage` is what the storage check uses.
    """
    restore = getattr(memory_manager, "restore_storage", None) if rewrite_log else None
    return restore_storage(missing, restore)


def restore_storage(missing: list[Path], restore: Callable[[], Awaitable[Any]] | None) -> Repair:
    """Recreate the ``missing`` directories, then run ``restore`` (``MemoryManager.restore_storage``).

    The memory manager writes its deleted, replaced or truncated files again from what it holds open
    (the database through SQLite's backup API, the log from the in-process tiers) and switches to them.
    """

    async def recreate() -> str:
        done = []
        for path in missing:
            await asyncio.to_thread(path.mkdir, mode=0o700, parents=True, exist_ok=True)
            done.append(f"recreated {path}")
        if restore is not None:
            report = await restore()
            done.extend(report.get("restored", []))
            done.extend(f"could not restore {name}: {why}" for name, why in report.get("failed", {}).items())
        return "; ".join(done) or "nothing to restore"

    return recreate


def rebuild_full_text_index(rebuild_index: Callable[[], Any]) -> Repair:
    """Rebuild the full-text indexes with ``rebuild_index`` (sync or async; returns row counts)."""

    async def rebuild() -> str:
        result = rebuild_index()
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, dict):
            counts = ", ".join(f"{tier}: {count}" for tier, count in result.items())
            return f"rebuilt the full-text indexes ({counts} rows)"
        return f"rebuilt the full-text index ({result} rows)"

    return rebuild


def restart_background_tasks(restarts: dict[str, Callable[[], Awaitable[Any] | Any]]) -> Repair:
    """Call each dead task's restart function (sync or async), in order."""

    async def restart() -> str:
        for restart_task in restarts.values():
            value = restart_task()
            if inspect.isawaitable(value):
                await value
        return "restarted " + ", ".join(restarts)

    return restart


async def run_repair(
    check_name: str, repair: Repair, *, time_limit: float | None = None, threads: UserThreads | None = None
) -> str:
    """Run ``repair`` for the check ``check_name``; return what it did, or why it failed.

    Never raises, but for the caller's own cancellation (a ``CancelledError`` out of something the repair
    awaited is the repair's failure).

    Args:
        check_name: The check the repair is for (in the log and the result).
        repair: A sync or async callable.
        time_limit: Seconds the repair may take; past them it counts as failed (an async one is cancelled, a
            sync one's thread runs on and its late result is discarded).
        threads: Where a sync repair runs (off the event loop); ``None`` runs it on the loop.
    """
    scope = asyncio.timeout(time_limit)
    try:
        async with scope:
            if threads is not None and not is_async_callable(repair):
                value = await threads.run(repair)
            else:
                value = repair()
            if inspect.isawaitable(value):
                value = await value
        if scope.expired():  # the time limit cancelled it; it caught that and returned late anyway
            logger.warning(
                "auto-recovery for %s timed out after %g s (it caught the cancellation and returned late)",
                check_name,
                time_limit,
            )
            return f"repair failed: timed out after {time_limit:g} s"
        logger.info("auto-recovery for %s: %s", check_name, value)
        return str(value)
    except TimeoutError as error:
        if not scope.expired():
            logger.warning("auto-recovery for %s failed: %r", check_name, error)
            return f"repair failed: {type(error).__name__}: {error}"
        logger.warning("auto-recovery for %s timed out after %g s", check_name, time_limit)
        return f"repair failed: timed out after {time_limit:g} s"
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the health check itself is being cancelled
        # something the repair awaited was cancelled: the repair failed (the run goes on)
        logger.warning("auto-recovery for %s failed: its own await was cancelled", check_name)
        return "repair failed: CancelledError (its own await was cancelled)"
    except Exception as error:
        logger.warning("auto-recovery for %s failed: %r", check_name, error)
        return f"repair failed: {type(error).__name__}: {error}"
