from __future__ import annotations

import asyncio
import threading
import time

from context_manager.core.config import ContextManagerConfig
from context_manager.core.tool_system import ToolManager


async def test_async_tool_is_cancelled_at_its_timeout() -> None:
    cancelled = asyncio.Event()

    async def hangs() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    manager = ToolManager()
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=0.05)
    started = time.perf_counter()
    result = await manager.execute("hangs")
    elapsed = time.perf_counter() - started
    assert not result.success
    assert result.error_type == "timeout"
    assert result.error == "tool 'hangs' timed out after 0.05 s"
    assert cancelled.is_set()
    assert 0.04 <= elapsed < 1.0


async def test_config_caps_the_tool_timeout() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    manager = ToolManager(ContextManagerConfig(max_tool_timeout=0.05))
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=600.0)
    started = time.perf_counter()
    result = await manager.execute("hangs")
    assert result.error_type == "timeout"
    assert "0.05 s" in (result.error or "")
    assert time.perf_counter() - started < 1.0


async def test_config_caps_tools_without_their_own_timeout() -> None:
    gate = threading.Event()

    async def hangs() -> None:
        await asyncio.Event().wait()

    def blocks() -> None:
        gate.wait(timeout=5.0)

    manager = ToolManager(ContextManagerConfig(max_tool_timeout=0.05))
    manager.register_function_tool("hangs", hangs, "Hangs")
    manager.register_function_tool("blocks", blocks, "Blocks")
    try:
        for name in ("hangs", "blocks"):
            result = await manager.execute(name)
            assert result.error_type == "timeout"
            assert f"tool {name!r} timed out after 0.05 s" in (result.error or "")
    finally:
        gate.set()


async def test_sync_tool_timeout_discards_the_late_result() -> None:
    gate = threading.Event()
    finished = threading.Event()

    def blocks() -> str:
        gate.wait(timeout=5.0)
        finished.set()
        return "late"

    manager = ToolManager()
    manager.register_function_tool("blocks", blocks, "Blocks", timeout=0.05, cacheable=True)
    result = await manager.execute("blocks")
    assert result.error_type == "timeout"
    assert result.result is None
    assert "a late result is discarded" in (result.error or "")
    assert not finished.is_set()  # the thread is still running ...
    gate.set()
    await asyncio.to_thread(finished.wait, 5.0)  # ... and finishes; its result goes nowhere
    assert finished.is_set()
    stats = manager.get_tool_stats()
    assert stats["tools"]["blocks"]["calls"] == 1 and stats["tools"]["blocks"]["errors"] == {"timeout": 1}
    assert stats["cache"]["entries"] == 0  # the late value was not cached either


async def test_fast_tool_within_timeout_succeeds() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 1

    manager = ToolManager()
    manager.register_function_tool("quick", quick, "Quick", timeout=5.0)
    assert (await manager.execute("quick")).result == 1
