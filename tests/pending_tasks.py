"""Detect background tasks left pending by a component's ``stop()``/``cleanup()``.

``asyncio.run`` cancels every task still pending when its coroutine returns, which would hide a task a
component forgot to stop. :func:`run_leaving_leftovers` runs the coroutine on a debug-mode loop and
closes the loop *without* that clean-up, then collects garbage: a task left behind is destroyed
pending and asyncio logs "Task was destroyed but it is pending!" (at ERROR, logger ``asyncio``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

DESTROYED_PENDING = "Task was destroyed but it is pending"


def run_leaving_leftovers(
    main: Callable[[], Coroutine[Any, Any, None]], caplog: pytest.LogCaptureFixture
) -> str:
    """Run ``main()`` on a fresh debug-mode loop, close it without cancelling leftovers, return the log."""
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        del loop
        gc.collect()
    return caplog.text
