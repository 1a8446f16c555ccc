"""Fixtures of the memory tests: a config on a real storage directory and an open manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager


class FakeClock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def config(storage: Path) -> ContextManagerConfig:
    return ContextManagerConfig(
        storage_path=storage, short_term_memory_size=20, medium_term_memory_size=30, long_term_memory_size=500
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def manager(config: ContextManagerConfig, clock: FakeClock) -> AsyncIterator[MemoryManager]:
    memory = MemoryManager(config, clock=clock)
    await memory.initialize()
    try:
        yield memory
    finally:
        await memory.close()
