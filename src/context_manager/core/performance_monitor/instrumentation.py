"""The :func:`monitored_operation` decorator: how the library's async operations reach the monitors."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.performance_monitor.monitor import PerformanceMonitor, check_operation_name
from context_manager.core.performance_monitor.registry import record_library_operation, running_monitors
from context_manager.core.threads import is_async_callable

__all__ = ["monitored_operation"]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def monitored_operation(
    name: str, *, succeeded: Callable[[Any], bool] | None = None
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R]]]:
    """Decorate an async method so each call is recorded by :func:`record_library_operation`.

    The instance's ``performance_monitor`` attribute (when present and not ``None``) is passed as
    ``own_monitor``. An exception counts as a failure and propagates. A cancellation (the caller's
    timeout, ``task.cancel()``) is not recorded: the caller gave up, the operation did not fail, and
    counting it would raise the error rate the health checks judge. Without an own monitor and with no
    monitor running, the call goes straight through (nothing is timed).

    Args:
        name: The operation's name in the monitors.
        succeeded: Decides success from the return value (e.g. ``lambda result: result.success`` for a
            tool result); without it, returning normally is a success. If it raises, the call is
            recorded as a failure, a warning is logged, and the result is still returned.

    Raises:
        InvalidMetricError: ``name`` is not a non-empty string of valid Unicode text.
        InvalidArgumentError: ``succeeded`` is not callable, or the decorated function is not an async
            function (checked when decorating, before anything runs).

    Example::

        class Service:
            @monitored_operation("lookup")
            async def lookup(self, key: str) -> str: ...
    """
    check_operation_name(name)
    if succeeded is not None and not callable(succeeded):
        raise InvalidArgumentError("succeeded", succeeded, "a callable taking the result, or None")

    def decorate(function: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
        if not is_async_callable(function):
            raise InvalidArgumentError(
                "function", function, "an async function (async def); time a plain one with operation_timer"
            )

        @functools.wraps(function)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            own = getattr(args[0], "performance_monitor", None) if args else None
            if own is not None and not isinstance(own, PerformanceMonitor):
                own = None
            if own is None and not running_monitors():
                return await function(*args, **kwargs)
            start = time.perf_counter()
            try:
                result = await function(*args, **kwargs)
            except Exception as error:
                record_library_operation(
                    name, time.perf_counter() - start, False, own_monitor=own, error=error
                )
                raise
            error_text = None
            try:
                success = True if succeeded is None else bool(succeeded(result))
            except Exception as error:  # monitoring must not change what the operation does
                success = False
                error_text = f"{name}: succeeded() raised {type(error).__name__}: {error}"
                logger.warning(
                    "monitored_operation(%r): its succeeded() raised %s on the result; the call is "
                    "recorded as a failure and its result returned. Fix the test.",
                    name,
                    type(error).__name__,
                    exc_info=True,
                )
            if not success and error_text is None:
                error_text = f"{name} reported failure"
            record_library_operation(
                name, time.perf_counter() - start, success, own_monitor=own, error=error_text
            )
            return result

        return wrapper

    return decorate
