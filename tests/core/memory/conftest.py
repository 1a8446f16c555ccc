"""Fixtures of the memory tests: a config on a real storage directory and an open manager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

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


BACKENDS = ["sqlite", "postgres"]
"""Every memory test that takes ``config`` or ``manager`` runs on both backends, with the same assertions."""


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def backend_options(backend_name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config options selecting the backend (a fresh PostgreSQL schema for ``"postgres"``)."""
    if backend_name == "sqlite":
        return {}
    return {"memory_backend": "postgres", "postgres_dsn": request.getfixturevalue("postgres_dsn")}


@pytest.fixture
def config(storage: Path, backend_name: str, request: pytest.FixtureRequest) -> ContextManagerConfig:
    return ContextManagerConfig(
        storage_path=storage,
        short_term_memory_size=20,
        medium_term_memory_size=30,
        long_term_memory_size=500,
        **backend_options(backend_name, request),
    )


@pytest.fixture
def sqlite_config(storage: Path) -> ContextManagerConfig:
    """For tests of the SQLite backend's own files (log, database, lock)."""
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


@pytest.fixture
async def sqlite_manager(
    sqlite_config: ContextManagerConfig, clock: FakeClock
) -> AsyncIterator[MemoryManager]:
    """An open manager on the SQLite backend (for tests of its files and lock)."""
    memory = MemoryManager(sqlite_config, clock=clock)
    await memory.initialize()
    try:
        yield memory
    finally:
        await memory.close()


@pytest.fixture
def other_storage(
    tmp_path: Path, backend_name: str, request: pytest.FixtureRequest
) -> Callable[[ContextManagerConfig], ContextManagerConfig]:
    """Turns a config into one on another, empty storage of the same backend."""
    from tests.postgres_support import create_schema, drop_schema

    schemas: list[str] = []

    def other(config: ContextManagerConfig) -> ContextManagerConfig:
        if backend_name == "sqlite":
            return config.model_copy(update={"storage_path": tmp_path / f"other{len(schemas)}"})
        schema, dsn = create_schema()
        schemas.append(schema)
        return ContextManagerConfig(**{**config.model_dump(), "postgres_dsn": dsn})

    request.addfinalizer(lambda: [drop_schema(schema) for schema in schemas])
    return other
