from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
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


async def test_hung_sync_tools_never_make_memory_storage_wait(tmp_path: Path) -> None:
    """Issue 18.9: 20 hung sync tools used to take every default-pool thread; a long-term add_memory
    (SQLite in a worker thread) then waited for one. Tools now have threads of their own."""
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def hangs() -> str:
        entered.release()
        gate.wait(timeout=30.0)
        return "late"

    config = ContextManagerConfig(cache_path=tmp_path, max_tool_timeout=0.2)
    async with EnhancedContextManager(config) as manager:
        manager.tool_manager.register_function_tool("hangs", hangs, "Blocks until released")
        try:
            results = await asyncio.gather(*(manager.execute_tool("hangs") for _ in range(20)))
            assert [result.error_type for result in results] == ["timeout"] * 20
            # every one of the 20 calls got a thread of its own (none waited behind another)
            assert all(entered.acquire(timeout=5.0) for _ in range(20))
            threads = manager.tool_manager.get_tool_stats()["threads"]
            assert threads == {"busy": 20, "abandoned": 20, "max": 64}
            # the default pool is free for storage: these complete while the 20 tools still hang
            stored = await asyncio.wait_for(
                manager.memory_manager.add_memory("written while tools hang", importance=0.95), 5.0
            )
            stats = await asyncio.wait_for(manager.memory_manager.get_memory_stats(), 5.0)
            assert stats["by_tier"]["long"] == 1  # the SQLite write and read ran in worker threads
            found = await asyncio.wait_for(manager.search_memory("written while tools hang"), 5.0)
            assert found and found[0].id == stored.id
            assert not gate.is_set()
        finally:
            gate.set()
    for _ in range(500):  # the released threads return within moments
        if not manager.tool_manager.get_tool_stats()["threads"]["busy"]:
            break
        await asyncio.sleep(0.01)
    assert manager.tool_manager.get_tool_stats()["threads"] == {"busy": 0, "abandoned": 0, "max": 64}


async def test_a_tool_that_swallows_its_timeout_still_times_out() -> None:
    # the timeout cancels the tool; it catches the cancellation and returns a value late
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
            return "late answer"
        return "never"

    manager = ToolManager()
    manager.register_function_tool("stubborn", stubborn, "Ignores cancellation", timeout=0.05)
    result = await manager.execute("stubborn")
    assert not result.success
    assert result.error_type == "timeout"
    assert result.result is None
    assert "ignored its cancellation" in (result.error or "")
    stats = manager.get_tool_stats()["tools"]["stubborn"]
    assert (stats["successes"], stats["failures"], stats["errors"]) == (0, 1, {"timeout": 1})


async def test_a_tool_that_fails_while_cancelled_at_its_timeout_times_out() -> None:
    """A tool whose clean-up raises when the timeout cancels it (a ``finally`` closing a connection, a
    library turning the cancellation into its own error) was a ``tool_error`` quoting that clean-up error:
    the model read a failure to retry at once, not that the tool ran out of time."""

    async def query(sql: str) -> str:
        try:
            await asyncio.sleep(10)
        finally:
            raise ConnectionError("connection closed while a query was running")

    async def wraps(sql: str) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("request aborted") from None
        return "never"

    async def fails_early(sql: str) -> str:
        raise ConnectionError("refused")

    manager = ToolManager()
    for function in (query, wraps, fails_early):
        manager.register_function_tool(function.__name__, function, "Query", timeout=0.05)
    results = [await manager.execute_tool(name, sql="select 1") for name in ("query", "wraps", "fails_early")]
    assert [r.error_type for r in results] == ["timeout", "timeout", "tool_error"]
    assert results[0].error == (
        "tool 'query' timed out after 0.05 s (cancelled, it raised ConnectionError: connection closed "
        "while a query was running)"
    )
    assert results[1].error == (
        "tool 'wraps' timed out after 0.05 s (cancelled, it raised RuntimeError: request aborted)"
    )
    assert results[2].error == "tool 'fails_early' raised ConnectionError: refused"
    stats = manager.get_tool_stats()["tools"]["query"]
    assert stats["errors"] == {"timeout": 1}


_HUNG_TOOL_SCRIPT = """
import asyncio, threading
from context_manager import ToolManager

def hangs() -> str:
    threading.Event().wait()  # never returns
    return "never"

async def main() -> None:
    tools = ToolManager()
    tools.register_function_tool("hangs", hangs, "Hangs for ever", timeout=0.1)
    result = await tools.execute_tool("hangs")
    print(result.error_type.value, flush=True)

asyncio.run(main())
print("done", flush=True)
"""


def test_a_hung_sync_tool_does_not_keep_the_process_from_exiting() -> None:
    """A sync tool that timed out and never returns used to keep its pool thread, which the interpreter
    joined at exit: a script whose work was done never ended."""
    source = str(Path(__file__).resolve().parents[3] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", _HUNG_TOOL_SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["timeout", "done"]
    assert time.perf_counter() - started < 30


async def test_a_sync_call_that_never_got_a_thread_says_so() -> None:
    """With every thread held by a hung call, a quick tool timed out waiting for one; its error said its
    thread kept running, as if it were slow."""
    gate = threading.Event()
    entered = threading.Event()

    def hangs() -> str:
        entered.set()
        gate.wait(timeout=10.0)
        return "late"

    def quick() -> str:
        return "quick"

    manager = ToolManager(max_threads=1)
    # a second for the hung call to get its thread and time out: 0.05 s was too short for the thread to
    # start in a loaded full run (the call then never ran: nothing held the thread)
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=1.0)
    manager.register_function_tool("quick", quick, "Quick", timeout=0.1)
    try:
        hung = asyncio.ensure_future(manager.execute_tool("hangs"))
        assert await asyncio.to_thread(entered.wait, 5.0)
        assert (await hung).error_type == "timeout"
        result = await manager.execute_tool("quick")
        assert result.error_type == "timeout"
        assert result.error == (
            "tool 'quick' timed out after 0.1 s waiting for a worker thread (all 1 are busy, 1 with "
            "timed-out calls still running); it did not run"
        )
    finally:
        gate.set()
    for _ in range(500):
        if not manager.get_tool_stats()["threads"]["busy"]:
            break
        await asyncio.sleep(0.01)
    assert (await manager.execute_tool("quick")).result == "quick"  # the queued call never ran


async def test_a_sync_wrapper_of_an_async_tool_times_out_as_an_async_tool() -> None:
    """A plain ``functools.wraps`` decorator (logging, metrics) makes an async tool a sync callable returning
    a coroutine: the coroutine is awaited and cancelled at the timeout, but the error said "its thread
    keeps running", which was false (the thread had long returned)."""
    import functools

    cancelled = asyncio.Event()

    def logged(function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return wrapper

    @logged
    async def slow_report(days: int) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    manager = ToolManager()
    manager.register_function_tool("slow_report", slow_report, "A slow report", timeout=0.1)
    result = await manager.execute_tool("slow_report", days=7)
    assert result.error == "tool 'slow_report' timed out after 0.1 s"
    assert cancelled.is_set()
    assert manager.get_tool_stats()["threads"]["abandoned"] == 0


async def test_a_sync_call_that_never_got_a_thread_does_not_use_up_the_rate_limit() -> None:
    """A call that timed out (or was cancelled) waiting for a worker thread did not run, as its error
    says, but it counted against the tool's rate limit: the retry the model made was refused as
    ``rate_limited`` for the rest of the window, although the tool had never run."""
    gate = threading.Event()
    entered = threading.Event()
    ran: list[str] = []

    def hangs() -> str:
        entered.set()
        gate.wait(timeout=10.0)
        return "late"

    def charge(card: str) -> str:
        ran.append(card)
        return "charged"

    manager = ToolManager(max_threads=1)
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=0.05)
    manager.register_function_tool("charge", charge, "Charge", timeout=0.1, rate_limit=1, rate_window=3600)
    try:
        assert (await manager.execute_tool("hangs")).error_type == "timeout"
        assert await asyncio.to_thread(entered.wait, 5.0)
        waited = await manager.execute_tool("charge", card="a")
        assert waited.error is not None and waited.error.endswith("it did not run")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(manager.execute_tool("charge", card="b"), 0.05)
    finally:
        gate.set()
    for _ in range(500):
        if not manager.get_tool_stats()["threads"]["busy"]:
            break
        await asyncio.sleep(0.01)
    assert (await manager.execute_tool("charge", card="c")).result == "charged"
    assert ran == ["c"]
    assert (await manager.execute_tool("charge", card="d")).error_type == "rate_limited"
