"""A plain ``with`` on a component that opens with ``async with`` says so (``core/async_only.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from context_manager import (
    ConcurrencyController,
    ContextManagerConfig,
    EnhancedContextManager,
    HealthChecker,
    LifecycleError,
    MemoryManager,
    PerformanceMonitor,
)


def config(directory: Path) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=directory / "cache", embedder="none")


COMPONENTS: dict[str, Callable[[Path], Any]] = {
    "EnhancedContextManager": lambda directory: EnhancedContextManager(config(directory)),
    "MemoryManager": lambda directory: MemoryManager(config(directory)),
    "ConcurrencyController": lambda directory: ConcurrencyController(),
    "PerformanceMonitor": lambda directory: PerformanceMonitor(),
    "HealthChecker": lambda directory: HealthChecker(),
}


@pytest.mark.parametrize("name", list(COMPONENTS))
async def test_a_plain_with_names_async_with_and_leaves_the_component_usable(
    name: str, tmp_path: Path
) -> None:
    """``with EnhancedContextManager(config) as manager:`` raised Python's ``TypeError: ... does not support
    the context manager protocol``, which does not say that ``async with`` is what to write."""
    component = COMPONENTS[name](tmp_path)
    with (
        pytest.raises(
            LifecycleError, match=rf"^with {name}\(\.\.\.\): {name} is asynchronous: write `async with"
        ),
        component,
    ):
        pytest.fail("the body of a plain with ran")
    assert not (tmp_path / "cache").exists(), "nothing was opened"
    async with component:  # still the component it was: it opens as documented
        pass


def test_the_manager_points_synchronous_code_at_the_sync_facade(tmp_path: Path) -> None:
    with (
        pytest.raises(
            LifecycleError, match=r"in synchronous code, `with SyncContextManager\(\.\.\.\) as manager:`"
        ),
        EnhancedContextManager(config(tmp_path)),
    ):
        pass
