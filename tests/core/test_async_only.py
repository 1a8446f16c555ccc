"""A plain ``with`` on a component that opens with ``async with`` says so (``core/async_only.py``)."""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_the_component_is_still_no_synchronous_context_manager_to_code_that_asks(
    name: str, tmp_path: Path
) -> None:
    """The ``__enter__`` that raises made ``isinstance(component, AbstractContextManager)`` true, so code
    choosing between ``enter_context`` and ``enter_async_context`` by asking took the synchronous path."""
    component = COMPONENTS[name](tmp_path)
    assert not isinstance(component, contextlib.AbstractContextManager)
    assert isinstance(component, contextlib.AbstractAsyncContextManager)
    with contextlib.ExitStack() as stack, pytest.raises(LifecycleError, match="write `async with"):
        stack.enter_context(component)


class _Blocking:
    """A synchronous context manager a subclass may add after the asynchronous base."""

    def __enter__(self) -> str:
        return "entered"

    def __exit__(self, *exc_info: object) -> None:
        return None


def test_a_subclass_keeps_a_synchronous_context_manager_it_inherits(tmp_path: Path) -> None:
    """``class Mine(EnhancedContextManager, Blocking)``: the mixin comes before ``Blocking`` in the MRO, and
    its ``__enter__`` hid the one the subclass chose (a plain ``with`` raised LifecycleError)."""

    class Mine(EnhancedContextManager, _Blocking):
        pass

    class Plain(EnhancedContextManager):
        pass

    with Mine(config(tmp_path)) as entered:
        assert entered == "entered"
    with pytest.raises(LifecycleError, match=r"^with Plain\(\.\.\.\): Plain is asynchronous"), Plain():
        pass
