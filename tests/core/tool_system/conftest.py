"""Shared helpers for the tool system tests: a controllable clock and a tool the test releases."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest


class ManualClock:
    """A monotonic clock that only moves when a test advances it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def gated_tool() -> tuple[Callable[[int], Awaitable[int]], asyncio.Event, asyncio.Event]:
    """Return ``(slow, started, release)``: ``slow(x)`` sets ``started``, waits for ``release``, returns x."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(x: int) -> int:
        started.set()
        await release.wait()
        return x

    return slow, started, release
