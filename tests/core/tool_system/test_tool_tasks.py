"""Async tools run in a task of their own: a tool that swallows its cancellation cannot hold its caller.

Each tool here that ignores cancellation is released by the test after a few seconds at most (a
``call_later``), so on code that waited for such a tool the test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import InvalidArgumentError, ToolRegistrationError
from context_manager.core.tool_system import ToolErrorType, ToolManager, ToolResult, tool

RELEASE_AFTER = 3.0  # seconds after which a stubborn tool is let go (the old code's callers waited for it)


def stubborn_tool(release: asyncio.Event, swallowed: list[int]) -> Any:
    """An async tool that swallows every cancellation until ``release`` is set, then returns."""

    async def stubborn() -> str:
        while True:
            try:
                await release.wait()
                return "late answer"
            except BaseException:  # noqa: BLE001 - the misbehaviour under test
                swallowed.append(1)

    return stubborn


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler ("Task exception was never retrieved", ...)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


async def wait_until_no_abandoned_task(manager: ToolManager) -> None:
    for _ in range(300):
        if not manager.get_tool_stats()["tasks"]["abandoned"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the abandoned tool task did not end")


async def test_a_tool_that_swallows_every_cancellation_times_out_within_its_grace(
    caplog: pytest.LogCaptureFixture, loop_errors: list[dict[str, Any]]
) -> None:
    release = asyncio.Event()
    swallowed: list[int] = []
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager()  # the default grace: 0.5 s
    manager.register_function_tool("stubborn", stubborn_tool(release, swallowed), "Stubborn", timeout=0.1)
    caplog.set_level(logging.WARNING, logger="context_manager.core.tool_system.manager")
    started = time.perf_counter()
    result = await manager.execute_tool("stubborn")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5  # 0.1 s timeout + 0.5 s grace (the old code: until the tool chose to end, 3 s)
    assert result.error_type is ToolErrorType.TIMEOUT
    assert result.error == (
        "tool 'stubborn' timed out after 0.1 s (it ignored its cancellation and is left running; "
        "a late result is discarded)"
    )
    assert swallowed == [1]
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 1}
    assert manager.get_tool_stats()["tools"]["stubborn"]["errors"] == {"timeout": 1}
    assert any("'stubborn' ignored its cancellation" in record.getMessage() for record in caplog.records)
    release.set()
    await wait_until_no_abandoned_task(manager)
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_cleanup_cancels_left_running_tools_again_within_its_bound(
    caplog: pytest.LogCaptureFixture, loop_errors: list[dict[str, Any]]
) -> None:
    cleaned_up = asyncio.Event()

    async def ignores_once() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # ignores the first cancellation, not the second
            await asyncio.sleep(30)
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.set()
        return "never"

    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.05)
    manager.register_function_tool("ignores_once", ignores_once, "Ignores once", timeout=0.05)
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.05)
    first = await manager.execute_tool("ignores_once")
    second = await manager.execute_tool("stubborn")
    assert (first.error_type, second.error_type) == (ToolErrorType.TIMEOUT, ToolErrorType.TIMEOUT)
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 2}
    caplog.set_level(logging.WARNING, logger="context_manager.core.tool_system.manager")
    started = time.perf_counter()
    await manager.cleanup(wait=0.2)
    assert time.perf_counter() - started < 1.5  # bounded although one tool never honours a cancellation
    assert cleaned_up.is_set()
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 1}  # the stubborn one, still tracked
    assert any(
        "still running after cleanup" in record.getMessage() and "'stubborn'" in record.getMessage()
        for record in caplog.records
    )
    release.set()
    async with manager:  # cleanup() again: nothing left, returns at once
        pass
    await wait_until_no_abandoned_task(manager)
    assert loop_errors == []


async def test_a_cancelled_caller_cancels_the_tool_and_gets_its_cancellation() -> None:
    tool_cancelled = asyncio.Event()
    started = asyncio.Event()

    async def hangs() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # clean-up is awaited before the caller's cancellation propagates
            tool_cancelled.set()
            raise
        return "never"

    manager = ToolManager()
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=10)
    caller = asyncio.create_task(manager.execute_tool("hangs"))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert tool_cancelled.is_set()
    assert manager.get_tool_stats()["tools"]["hangs"]["errors"] == {"cancelled": 1}
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 0}


async def test_a_cancelled_caller_is_not_held_by_a_tool_that_swallows_it() -> None:
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager()
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=10)
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(manager.execute_tool("stubborn"), 0.1)
    assert time.perf_counter() - started < 1.5  # the old code: until the tool ended, 3 s
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 1}
    assert manager.get_tool_stats()["tools"]["stubborn"]["errors"] == {"cancelled": 1}
    release.set()
    await wait_until_no_abandoned_task(manager)


async def test_a_task_group_cancelling_its_children_cancels_their_tools() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return "never"

    async def fails() -> None:
        await started.wait()
        raise ValueError("sibling failed")

    manager = ToolManager()
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=10)
    with pytest.raises(ExceptionGroup) as raised:
        async with asyncio.TaskGroup() as group:
            group.create_task(manager.execute_tool("hangs"))
            group.create_task(fails())
    assert [type(error) for error in raised.value.exceptions] == [ValueError]
    assert cancelled.is_set()
    assert manager.get_tool_stats()["tools"]["hangs"]["errors"] == {"cancelled": 1}


@pytest.mark.parametrize("raised", [GeneratorExit(), type("Custom", (BaseException,), {})("odd")])
async def test_a_base_exception_a_tool_awaits_is_a_failed_result(raised: BaseException) -> None:
    async def awaits_it() -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        loop.call_soon(future.set_exception, raised)  # set while the tool waits: thrown into its task
        return await future

    manager = ToolManager()
    manager.register_function_tool("awaits_it", awaits_it, "Awaits a failed future")
    result = await manager.execute_tool("awaits_it")
    assert result.error_type is ToolErrorType.TOOL_ERROR
    assert result.error == f"tool 'awaits_it' raised {type(raised).__name__}" + (
        f": {raised}" if str(raised) else ""
    )
    assert manager.get_tool_stats()["tools"]["awaits_it"]["errors"] == {"tool_error": 1}


async def test_a_left_running_tool_never_cancels_its_former_caller() -> None:
    """The tool's own ``asyncio.timeout`` fires after its caller moved on: only the tool is cancelled."""

    async def own_timeout() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # ignores the timeout's cancellation
            await asyncio.sleep(30)
        try:
            async with asyncio.timeout(0.2):
                await asyncio.sleep(30)
        except TimeoutError:
            return "gave up"
        return "never"

    manager = ToolManager(cancel_grace=0.05)
    manager.register_function_tool("own_timeout", own_timeout, "Own timeout", timeout=0.05)
    result = await manager.execute_tool("own_timeout")
    assert result.error_type is ToolErrorType.TIMEOUT
    await asyncio.sleep(0.4)  # the tool's timeout fires meanwhile: this caller is not cancelled
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 0}


async def test_a_tool_with_its_own_timeout_and_subtasks_finishes_its_clean_up_first() -> None:
    subtask_cleaned = asyncio.Event()

    async def child() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.01)
            subtask_cleaned.set()

    async def spawns() -> str:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(30)
        except TimeoutError:
            pass  # its own timeout, handled
        async with asyncio.TaskGroup() as group:
            group.create_task(child())
        return "never"

    manager = ToolManager()
    manager.register_function_tool("spawns", spawns, "Spawns", timeout=0.2)
    result = await manager.execute_tool("spawns")
    assert result.error == "tool 'spawns' timed out after 0.2 s"
    assert subtask_cleaned.is_set()  # awaited by the tool's TaskGroup before the result came back


async def test_a_tool_sees_the_callers_context_variables_and_its_changes_stay_its_own() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")

    async def reads_and_sets() -> str:
        seen = request_id.get()
        request_id.set("set by the tool")
        return seen

    manager = ToolManager()
    manager.register_function_tool("reads_and_sets", reads_and_sets, "Context")
    request_id.set("caller's")
    result = await manager.execute_tool("reads_and_sets")
    assert result.result == "caller's"
    assert request_id.get() == "caller's"  # as with a sync tool in its thread, or asyncio.create_task


async def test_an_httpx_request_cut_by_the_timeout_cleans_up_in_its_task(
    loop_errors: list[dict[str, Any]],
) -> None:
    httpx = pytest.importorskip("httpx")

    finished = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"GET /slow"):
                await finished.wait()  # never answers in time
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client gave up (httpx closing the connection it cut)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def fetch(path: str) -> str:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get(path)
            return str(response.text)

    manager = ToolManager()
    manager.register_function_tool("fetch", fetch, "Fetch", timeout=0.2)
    # the request that answers gets time to spare: a new client's set-up (its SSL context) can take longer
    # than 0.2 s on a loaded machine
    manager.register_function_tool("fetch_in_time", fetch, "Fetch", timeout=30.0)
    try:
        slow = await manager.execute_tool("fetch", path="/slow")
        fast = await manager.execute_tool("fetch_in_time", path="/fast")
    finally:
        finished.set()
        server.close()
    # anyio's clean-up ran in the task that entered its cancel scopes: no "different task" error
    assert slow.error == "tool 'fetch' timed out after 0.2 s"
    assert (fast.success, fast.result) == (True, "ok")
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 0}
    assert loop_errors == []


async def test_the_context_managers_cleanup_cancels_left_running_tools(tmp_path: Path) -> None:
    ended = asyncio.Event()

    async def ignores_once() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # ignores the timeout's cancellation
            await asyncio.sleep(30)
        try:
            await asyncio.sleep(30)
        finally:
            ended.set()
        return "never"

    config = ContextManagerConfig(cache_path=tmp_path, max_tool_timeout=0.05)
    async with EnhancedContextManager(config) as manager:
        tools = manager.tool_manager
        tools.cancel_grace = 0.05
        tools.register_function_tool("ignores_once", ignores_once, "Ignores once")
        result = await manager.execute_tool("ignores_once")
        assert result.error_type is ToolErrorType.TIMEOUT
        assert tools.get_tool_stats()["tasks"] == {"abandoned": 1}
    assert ended.is_set()
    assert tools.get_tool_stats()["tasks"] == {"abandoned": 0}


def test_cancel_grace_is_checked() -> None:
    allowed = "allowed seconds, a number from 0 to 60"
    with pytest.raises(InvalidArgumentError, match=f"cancel_grace: got -1; {allowed}"):
        ToolManager(cancel_grace=-1)
    manager = ToolManager()
    with pytest.raises(InvalidArgumentError, match=f"cancel_grace: got True; {allowed}"):
        manager.cancel_grace = True  # type: ignore[assignment]
    assert manager.cancel_grace == 0.5


async def test_a_caller_cancelled_during_the_grace_logs_the_time_the_tool_was_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller's own timeout cut the grace short (0.2 s of 5): the warning said the tool "ignored its
    cancellation for 5 s"; it says how long it was waited for."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=5)
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.1)
    caplog.set_level(logging.WARNING, logger="context_manager.core.tool_system.manager")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await manager.execute_tool("stubborn")
    (warning,) = [record.getMessage() for record in caplog.records if "ignored its" in record.getMessage()]
    assert re.search(r"'stubborn' ignored its cancellation for 0\.\d+ s;", warning), warning
    release.set()
    await wait_until_no_abandoned_task(manager)


class _Payload:
    """An argument a failing tool is given (weakly referenced by the test)."""


async def test_a_failed_calls_arguments_are_freed_when_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    """The failure was kept in a local of the tool's finished task, whose traceback holds that frame: a
    cycle, so the exception, its frames and the call's arguments (a large payload) stayed in memory until
    the garbage collector ran; they are freed when the call returns, as before tools had their own task.

    (The manager's debug log of the failure carries its traceback: a log handler that keeps records, as
    pytest's does once an earlier test turned the library's debug logging on, keeps the frames with them.)
    """
    caplog.set_level(logging.INFO, logger="context_manager.core.tool_system.manager")

    async def fails(payload: Any) -> str:
        """Fails.

        Args:
            payload: Anything.
        """
        raise ValueError("refused")

    async def own_cancellation(payload: Any) -> str:
        """Awaits something cancelled.

        Args:
            payload: Anything.
        """
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.cancel()
        return str(await future)

    manager = ToolManager()
    manager.register_function_tool("fails", fails, "Fails")
    manager.register_function_tool("own_cancellation", own_cancellation, "Own cancellation")
    gc.collect()
    gc.disable()
    try:
        for name in ("fails", "own_cancellation"):
            payload = _Payload()
            freed = weakref.ref(payload)
            result = await manager.execute_tool(name, payload=payload)
            assert result.error_type is ToolErrorType.TOOL_ERROR
            del payload, result
            assert freed() is None, name
    finally:
        gc.enable()


# ---------------------------------------------------------------- a bound on calls left running


async def wait_until_tool_has_no_abandoned_call(manager: ToolManager, name: str) -> None:
    for _ in range(500):
        if not manager.get_tool_stats()["tools"][name]["abandoned"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the abandoned calls of {name!r} did not end")


async def test_a_tool_with_too_many_calls_left_running_is_refused_at_once_without_running() -> None:
    """Each call to a tool that swallows its cancellation left one more task running after its timeout,
    without bound (500 calls: 500 tasks); the callers, no longer held, did not limit it either. Past
    ``max_abandoned_calls`` such calls of one tool, a new call is refused at once (``overloaded``) without
    starting the tool and without using its rate limit; the count drops as the tasks end."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    started_calls: list[int] = []
    stubborn = stubborn_tool(release, [])

    async def counted() -> str:
        started_calls.append(1)
        return str(await stubborn())

    manager = ToolManager(cancel_grace=0.02, max_abandoned_calls=2)
    manager.register_function_tool(
        "stubborn", counted, "Stubborn", timeout=0.3, rate_limit=3, rate_window=3600
    )
    first = await manager.execute_tool("stubborn")
    second = await manager.execute_tool("stubborn")
    assert (first.error_type, second.error_type) == (ToolErrorType.TIMEOUT, ToolErrorType.TIMEOUT)
    stats = manager.get_tool_stats()
    assert (stats["tasks"], stats["tools"]["stubborn"]["abandoned"]) == ({"abandoned": 2}, 2)
    assert stats["max_abandoned_calls"] == 2
    began = time.perf_counter()
    refused = await manager.call_tool("stubborn", {}, call_id="call_3")
    assert time.perf_counter() - began < 0.3  # at once: not after the tool's timeout
    assert not refused.success and refused.error_type is ToolErrorType.OVERLOADED
    assert refused.error == (
        "tool 'stubborn' has 2 calls still running after their timeout (they ignored their cancellation; "
        "ToolManager(max_abandoned_calls=2) allows no more), so this call did not run: retry when they "
        "end, or make the tool stop when it is cancelled"
    )
    assert (refused.tool_name, refused.call_id, refused.retry_after) == ("stubborn", "call_3", None)
    assert len(started_calls) == 2  # the tool was not started
    assert manager.get_tool_stats()["tools"]["stubborn"]["errors"] == {"timeout": 2, "overloaded": 1}
    release.set()
    await wait_until_tool_has_no_abandoned_call(manager, "stubborn")
    assert manager.get_tool_stats()["tasks"] == {"abandoned": 0}
    again = await manager.execute_tool("stubborn")  # the refused call used no rate-limit slot: the 3rd
    assert again.success and again.result == "late answer"
    assert len(started_calls) == 3


async def test_a_sync_tool_left_running_in_its_thread_counts_against_the_same_bound() -> None:
    """A timed-out sync tool keeps its thread: such calls of one tool count as left-running calls too, so one
    hung sync tool cannot take every thread of the pool (``max_threads``) from the other sync tools."""
    gate = threading.Event()
    entered: list[int] = []

    def hangs() -> str:
        entered.append(1)
        gate.wait(timeout=10.0)
        return "late"

    def quick() -> str:
        return "quick"

    manager = ToolManager(max_abandoned_calls=1)
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=0.5)
    manager.register_function_tool("quick", quick, "Quick", timeout=1.0)
    try:
        assert (await manager.execute_tool("hangs")).error_type is ToolErrorType.TIMEOUT
        assert entered == [1]  # it ran (and runs on in its thread)
        assert manager.get_tool_stats()["tools"]["hangs"]["abandoned"] == 1
        refused = await manager.execute_tool("hangs")
        assert refused.error_type is ToolErrorType.OVERLOADED
        assert refused.error == (
            "tool 'hangs' has 1 call still running after its timeout (its thread cannot be stopped; "
            "ToolManager(max_abandoned_calls=1) allows no more), so this call did not run: retry when it "
            "ends, or give its blocking work an async version"
        )  # not "it ignored its cancellation": a sync tool is never cancelled
        assert entered == [1]
        assert (await manager.execute_tool("quick")).result == "quick"  # other tools are not limited
    finally:
        gate.set()
    await wait_until_tool_has_no_abandoned_call(manager, "hangs")
    assert (await manager.execute_tool("hangs")).result == "late"
    assert manager.get_tool_stats()["tools"]["hangs"]["errors"] == {"timeout": 1, "overloaded": 1}


async def test_a_cancelled_sync_call_left_running_counts_too() -> None:
    gate = threading.Event()
    entered = threading.Event()

    def hangs() -> str:
        entered.set()
        gate.wait(timeout=10.0)
        return "late"

    manager = ToolManager(max_abandoned_calls=1)
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=10.0)
    try:
        caller = asyncio.create_task(manager.execute_tool("hangs"))
        assert await asyncio.to_thread(entered.wait, 5.0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert manager.get_tool_stats()["tools"]["hangs"]["abandoned"] == 1
        assert (await manager.execute_tool("hangs")).error_type is ToolErrorType.OVERLOADED
    finally:
        gate.set()
    await wait_until_tool_has_no_abandoned_call(manager, "hangs")


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
async def test_max_abandoned_calls_must_be_a_positive_integer_or_none(value: Any) -> None:
    allowed = r"allowed an integer >= 1 \(calls of one tool left running after their timeout\), or None"
    with pytest.raises(InvalidArgumentError, match=rf"^max_abandoned_calls: got .*; {allowed}$"):
        ToolManager(max_abandoned_calls=value)
    manager = ToolManager()
    assert manager.max_abandoned_calls == 16  # the default
    with pytest.raises(InvalidArgumentError, match=allowed):
        manager.max_abandoned_calls = value
    assert manager.max_abandoned_calls == 16  # unchanged
    manager.max_abandoned_calls = None  # no bound (as before it existed)
    assert manager.get_tool_stats()["max_abandoned_calls"] is None


async def test_without_a_bound_calls_left_running_are_not_refused() -> None:
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=None)
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.02)
    results = [await manager.execute_tool("stubborn") for _ in range(3)]
    assert [result.error_type for result in results] == [ToolErrorType.TIMEOUT] * 3
    assert manager.get_tool_stats()["tools"]["stubborn"]["abandoned"] == 3
    release.set()
    await wait_until_no_abandoned_task(manager)


def test_a_sync_call_ending_after_its_loop_closed_is_no_longer_counted() -> None:
    """A timed-out sync call whose thread ends after its event loop was closed (``asyncio.run`` per request)
    could not report its end on that loop: it stayed counted for ever, and with ``max_abandoned_calls`` of
    them the tool was refused (``overloaded``) on every later loop although nothing of it ran any more."""
    gate = threading.Event()

    def hangs() -> str:
        gate.wait(timeout=10.0)
        return "late"

    manager = ToolManager(max_abandoned_calls=1)
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=0.2)

    async def call() -> ToolResult:
        return await manager.execute_tool("hangs")

    try:
        assert asyncio.run(call()).error_type is ToolErrorType.TIMEOUT  # its loop closes, the thread runs on
    finally:
        gate.set()
    deadline = time.monotonic() + 5.0
    while manager.get_tool_stats()["threads"]["abandoned"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.get_tool_stats()["threads"]["abandoned"] == 0  # the thread ended
    assert manager.get_tool_stats()["tools"]["hangs"]["abandoned"] == 0
    again = asyncio.run(call())
    assert (again.error_type, again.result) == (None, "late")


def test_an_async_call_left_running_in_a_loop_closed_under_it_is_no_longer_counted() -> None:
    """An async tool left running (it ignored its cancellation) in an event loop closed without ending its
    tasks (``run_until_complete`` then ``close()``) never runs again and never ends: it stayed counted for
    ever, so with ``max_abandoned_calls`` of them the tool was refused (``overloaded``) on every later loop,
    and ``cleanup()`` there did not look at it."""

    async def stubborn() -> str:
        for _ in range(3):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        return "answer"

    manager = ToolManager(cancel_grace=0, max_abandoned_calls=1)
    manager.register_function_tool("stubborn", stubborn, "Stubborn", timeout=0.01)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(manager.execute_tool("stubborn")).error_type is ToolErrorType.TIMEOUT
        assert manager.get_tool_stats()["tasks"]["abandoned"] == 1
    finally:
        loop.close()  # its task left running goes with it, pending

    async def later() -> ToolResult:
        await manager.cleanup(wait=0.1)
        return await manager.execute_tool("stubborn")

    again = asyncio.run(later())
    assert (again.error_type, again.result) == (ToolErrorType.TIMEOUT, None)  # it ran (and timed out)
    stats = manager.get_tool_stats()
    assert stats["tools"]["stubborn"]["errors"] == {"timeout": 2}
    assert stats["tasks"]["abandoned"] == 0  # asyncio.run ended its own at shutdown; the first is forgotten


async def test_several_calls_of_a_tool_at_its_bound_in_one_batch_are_all_refused() -> None:
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=1)
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.02)
    assert (await manager.execute_tool("stubborn")).error_type is ToolErrorType.TIMEOUT
    calls = [{"id": f"call_{index}", "name": "stubborn", "arguments": {}} for index in range(3)]
    results = await manager.execute_tool_calls(calls)
    assert [(result.call_id, result.error_type) for result in results] == [
        (f"call_{index}", ToolErrorType.OVERLOADED) for index in range(3)
    ]
    assert manager.get_tool_stats()["tools"]["stubborn"]["abandoned"] == 1  # none of them ran
    release.set()
    await wait_until_no_abandoned_task(manager)
    assert manager.get_tool_stats()["tools"]["stubborn"]["abandoned"] == 0


def counted_stubborn_tool(release: asyncio.Event, started_calls: list[int]) -> Any:
    """:func:`stubborn_tool` that also counts the calls that started."""
    stubborn = stubborn_tool(release, [])

    async def counted() -> str:
        started_calls.append(1)
        return str(await stubborn())

    return counted


async def test_a_burst_of_calls_to_a_tool_that_ignored_its_cancellation_is_bounded() -> None:
    """Calls in flight were not counted: a burst of concurrent calls all started before any of them had
    timed out, so 20 calls to a tool already known to swallow its cancellation left 20 more tasks running
    (the bound, 4, was only checked against calls already left running). Once a tool has ignored its
    cancellation, its calls in flight count too: a burst starts only as many as the bound leaves room for,
    and the others are refused at once (``overloaded``)."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    started_calls: list[int] = []
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=4)
    manager.register_function_tool(
        "stubborn", counted_stubborn_tool(release, started_calls), "Stubborn", timeout=0.05
    )
    assert (await manager.execute_tool("stubborn")).error_type is ToolErrorType.TIMEOUT
    assert manager.get_tool_stats()["tools"]["stubborn"]["abandoned"] == 1
    calls = [{"id": f"call_{index}", "name": "stubborn", "arguments": {}} for index in range(20)]
    manager.config.max_concurrent_tool_calls = 20
    results = await manager.execute_tool_calls(calls)
    kinds = [result.error_type for result in results]
    assert kinds.count(ToolErrorType.TIMEOUT) == 3  # 1 left running + 3 in flight = the bound
    assert kinds.count(ToolErrorType.OVERLOADED) == 17
    assert len(started_calls) == 4  # the refused calls did not start
    assert manager.get_tool_stats()["tools"]["stubborn"]["abandoned"] == 4
    refused = next(result for result in results if result.error_type is ToolErrorType.OVERLOADED)
    assert refused.error == (
        "tool 'stubborn' has ignored its cancellation before and has 4 calls running (1 still running after "
        "its timeout, 3 not timed out yet; ToolManager(max_abandoned_calls=4) allows no more at once), so "
        "this call did not run: retry when they end, or make the tool stop when it is cancelled"
    )
    release.set()
    await wait_until_tool_has_no_abandoned_call(manager, "stubborn")
    # the tool has shown it ignores cancellation: its concurrent calls stay bounded after those ended
    quick = await asyncio.gather(*(manager.execute_tool("stubborn") for _ in range(6)))
    assert [result.error_type for result in quick] == [None] * 4 + [ToolErrorType.OVERLOADED] * 2
    assert manager.get_tool_stats()["tools"]["stubborn"]["abandoned"] == 0
    assert (await manager.execute_tool("stubborn")).result == "late answer"  # one at a time: admitted


async def test_a_tool_that_honours_cancellation_is_not_bounded_in_flight() -> None:
    """Only a tool that ignored a cancellation has its calls in flight counted: a tool that times out but
    stops when cancelled leaves nothing running, and its concurrent calls are never refused."""
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=1)

    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    manager.register_function_tool("slow", slow, "Slow", timeout=0.05)
    assert (await manager.execute_tool("slow", seconds=5.0)).error_type is ToolErrorType.TIMEOUT
    results = await asyncio.gather(*(manager.execute_tool("slow", seconds=0.0) for _ in range(5)))
    assert [result.result for result in results] == ["done"] * 5


async def test_a_tools_own_max_abandoned_calls_overrides_the_managers() -> None:
    """``max_abandoned_calls`` could only be set on the manager, for every tool alike: one tool known to
    hang could not get a tighter bound (nor one a looser bound). It is now a tool option as well, in the
    style of ``timeout`` and ``rate_limit``; None (the default) takes the manager's."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01)  # the manager's bound: 16
    manager.register_function_tool(
        "stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.05, max_abandoned_calls=1
    )
    assert manager.get_tool("stubborn").options()["max_abandoned_calls"] == 1
    assert (await manager.execute_tool("stubborn")).error_type is ToolErrorType.TIMEOUT
    refused = await manager.execute_tool("stubborn")
    assert refused.error_type is ToolErrorType.OVERLOADED
    assert refused.error == (
        "tool 'stubborn' has 1 call still running after its timeout (it ignored its cancellation; "
        "its max_abandoned_calls=1 allows no more), so this call did not run: retry when it ends, or make "
        "the tool stop when it is cancelled"
    )
    manager.max_abandoned_calls = None  # no bound on the manager: the tool's own still applies
    assert (await manager.execute_tool("stubborn")).error_type is ToolErrorType.OVERLOADED

    @tool(timeout=0.05, max_abandoned_calls=3)
    async def loose() -> str:
        return await stubborn_tool(release, [])()

    manager.max_abandoned_calls = 1
    manager.register_tool(loose)
    kinds = [(await manager.execute_tool("loose")).error_type for _ in range(4)]
    assert kinds == [ToolErrorType.TIMEOUT] * 3 + [ToolErrorType.OVERLOADED]  # 3, not the manager's 1
    release.set()
    await wait_until_no_abandoned_task(manager)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"])
def test_a_tools_max_abandoned_calls_is_checked(value: Any) -> None:
    manager = ToolManager()

    async def noop() -> str:
        return "ok"

    message = r"^max_abandoned_calls: got .*; allowed an integer > 0 or None$"
    with pytest.raises(ToolRegistrationError, match=message):
        manager.register_function_tool("noop", noop, "No-op", max_abandoned_calls=value)
    assert manager.list_tools() == []  # nothing registered
    with pytest.raises(ToolRegistrationError, match=message):
        tool(max_abandoned_calls=value)(noop)


async def test_a_tool_registered_again_starts_with_no_calls_left_running() -> None:
    """The count of calls left running was kept per tool name: a tool registered again under the same name
    (a fixed function, ``replace=True``) inherited the old one's calls, and was refused as ``overloaded``
    although none of its own calls ran. Each registration now has its own count; the old one's calls stay
    tracked (in ``tasks``) and ``cleanup()`` still cancels them."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=1)
    old_ended = asyncio.Event()

    async def swallows_one_cancellation() -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:
            try:
                await release.wait()  # the second cancellation (cleanup()) ends it
            finally:
                old_ended.set()
        return "old"

    manager.register_function_tool("lookup", swallows_one_cancellation, "Lookup", timeout=0.05)
    assert (await manager.execute_tool("lookup")).error_type is ToolErrorType.TIMEOUT
    assert (await manager.execute_tool("lookup")).error_type is ToolErrorType.OVERLOADED

    async def fixed() -> str:
        return "new"

    manager.register_function_tool("lookup", fixed, "Lookup", timeout=0.05, replace=True)
    stats = manager.get_tool_stats()
    assert (stats["tools"]["lookup"]["abandoned"], stats["tasks"]["abandoned"]) == (0, 1)
    again = await manager.execute_tool("lookup")
    assert (again.error_type, again.result) == (None, "new")
    await manager.cleanup(wait=2.0)
    assert old_ended.is_set()
    assert manager.get_tool_stats()["tasks"]["abandoned"] == 0


async def test_a_sync_callable_returning_a_coroutine_runs_it_as_an_async_tool() -> None:
    """A sync callable that returns a coroutine (a lambda, a wrapper) had its coroutine awaited in the
    caller's own task: a coroutine that swallowed its cancellation held the caller until it ended (here the
    test's release after 3 s), past its timeout. It now runs as an async tool does: in a task of its own,
    cancelled at the timeout, given ``cancel_grace``, and left running (tracked) if it ignores that."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    swallowed: list[int] = []
    stubborn = stubborn_tool(release, swallowed)
    manager = ToolManager(cancel_grace=0.05, max_abandoned_calls=1)
    # 0.5 s: the lambda's thread must return the coroutine within the timeout, on a loaded machine too
    manager.register_function_tool("wrapped", lambda: stubborn(), "Wrapped", timeout=0.5)
    began = time.perf_counter()
    result = await manager.execute_tool("wrapped")
    assert time.perf_counter() - began < 2.5  # not held until the release
    assert result.error_type is ToolErrorType.TIMEOUT
    assert result.error == (
        "tool 'wrapped' timed out after 0.5 s (it ignored its cancellation and is left running; "
        "a late result is discarded)"
    )
    assert swallowed  # it was cancelled (in its own task)
    assert manager.get_tool_stats()["tasks"]["abandoned"] == 1
    refused = await manager.execute_tool("wrapped")  # counted against the bound as an async tool's call
    assert refused.error_type is ToolErrorType.OVERLOADED
    assert "(it ignored its cancellation; ToolManager(max_abandoned_calls=1) allows no more)" in str(
        refused.error
    )
    release.set()
    await wait_until_no_abandoned_task(manager)


async def test_a_sync_callable_returning_a_coroutine_gives_its_value() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")

    async def shout(text: str) -> str:
        await asyncio.sleep(0)
        return f"{text.upper()} {variable.get()}"

    def wrapper(text: str) -> Any:
        return shout(text)

    manager = ToolManager()
    manager.register_function_tool("shout", wrapper, "Shout", timeout=5.0)
    variable.set("caller")
    result = await manager.execute_tool("shout", text="hi")
    assert (result.error_type, result.result) == (None, "HI caller")


async def test_a_burst_of_calls_to_a_sync_callable_whose_coroutine_ignored_its_cancellation_is_bounded() -> (
    None
):
    """A sync callable returning a coroutine had its calls in flight counted only once its thread had
    returned the coroutine, and the bound was checked before the thread started: a burst of 20 calls after
    one was left running all passed the check and left 21 tasks running (bound 4). Its calls in flight now
    count from the start of the call, as an async tool's do: the burst starts 3, and 17 are refused at once
    without running."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    started_calls: list[int] = []
    stubborn = counted_stubborn_tool(release, started_calls)
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=4)
    manager.register_function_tool("wrapped", lambda: stubborn(), "Wrapped", timeout=0.5)
    assert (await manager.execute_tool("wrapped")).error_type is ToolErrorType.TIMEOUT
    manager.config.max_concurrent_tool_calls = 20
    calls = [{"id": f"call_{index}", "name": "wrapped", "arguments": {}} for index in range(20)]
    results = await manager.execute_tool_calls(calls)
    kinds = [result.error_type for result in results]
    assert kinds.count(ToolErrorType.OVERLOADED) == 17
    assert len(started_calls) == 4  # 1 + the 3 the bound left room for
    assert manager.get_tool_stats()["tasks"]["abandoned"] == 4
    release.set()
    await wait_until_no_abandoned_task(manager)


async def test_the_overloaded_error_of_calls_in_flight_alone_counts_them_right() -> None:
    """With none of its calls left running any more, a tool known to ignore its cancellation refused a
    second concurrent call with "has 1 calls running (0 still running after their timeout, ...)"."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=1)
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.05)
    assert (await manager.execute_tool("stubborn")).error_type is ToolErrorType.TIMEOUT
    release.set()
    await wait_until_no_abandoned_task(manager)
    first, second = await asyncio.gather(manager.execute_tool("stubborn"), manager.execute_tool("stubborn"))
    assert first.result == "late answer"
    assert second.error == (
        "tool 'stubborn' has ignored its cancellation before and has 1 call running (not timed out yet; "
        "ToolManager(max_abandoned_calls=1) allows no more at once), so this call did not run: retry when "
        "it ends, or make the tool stop when it is cancelled"
    )


async def test_the_same_tool_registered_again_starts_with_no_calls_left_running() -> None:
    """Calls left running were counted per definition object: unregistering a ``@tool`` function and
    registering it again (the same definition) kept the old count, and its next call was refused as
    ``overloaded`` although none of the new registration's calls ran (the docs: a tool registered again
    starts with none)."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01, max_abandoned_calls=1)

    @tool(name="lookup", timeout=0.05)
    async def lookup(finish: bool = False) -> str:
        if finish:
            return "done"
        return str(await stubborn_tool(release, [])())

    manager.register_tool(lookup)
    assert (await manager.execute_tool("lookup")).error_type is ToolErrorType.TIMEOUT
    assert (await manager.execute_tool("lookup")).error_type is ToolErrorType.OVERLOADED
    manager.unregister_tool("lookup")
    manager.register_tool(lookup)
    stats = manager.get_tool_stats()
    assert (stats["tools"]["lookup"]["abandoned"], stats["tasks"]["abandoned"]) == (0, 1)
    assert (await manager.execute_tool("lookup", finish=True)).result == "done"
    release.set()
    await wait_until_no_abandoned_task(manager)
    assert manager.get_tool_stats()["tools"]["lookup"]["abandoned"] == 0


async def test_the_calls_left_running_of_all_tools_together_are_bounded_by_the_config() -> None:
    """The bound on calls left running was per tool only: 50 tools each leaving 16 calls running left 800
    tasks, without bound. ``config.max_abandoned_tool_calls`` bounds them together: once the tools have that
    many, a new call to a tool that left calls running is refused at once (``overloaded``, not run), while
    tools that never did run freely; the count falls as the calls end."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    started_calls: list[str] = []

    def stubborn_named(name: str) -> Any:
        stubborn = stubborn_tool(release, [])

        async def run() -> str:
            started_calls.append(name)
            return str(await stubborn())

        return run

    async def well_behaved() -> str:
        return "fine"

    manager = ToolManager(ContextManagerConfig(max_abandoned_tool_calls=3), cancel_grace=0.02)
    assert manager.max_abandoned_calls == 16  # each tool's own bound is far from reached
    for name in ("a", "b", "c"):
        manager.register_function_tool(name, stubborn_named(name), "Stubborn", timeout=0.2)
    manager.register_function_tool("fine", well_behaved, "Fine")
    first = await asyncio.gather(*(manager.execute_tool(name) for name in ("a", "b", "c")))
    assert [result.error_type for result in first] == [ToolErrorType.TIMEOUT] * 3
    stats = manager.get_tool_stats()
    assert (stats["abandoned_calls"], stats["max_abandoned_tool_calls"]) == (3, 3)
    began = time.perf_counter()
    refused = await manager.call_tool("a", {}, call_id="call_4")
    assert time.perf_counter() - began < 0.2  # at once: not after the tool's timeout
    assert refused.error_type is ToolErrorType.OVERLOADED and refused.call_id == "call_4"
    assert refused.error == (
        "tool 'a' has ignored its cancellation before, and the tools of this manager have 3 calls still "
        "running after their caller stopped waiting (config.max_abandoned_tool_calls=3 allows no more in "
        'all), so this call did not run: retry when some of them end; get_tool_stats()["tools"] shows '
        'which tools have calls "abandoned"'
    )
    assert sorted(started_calls) == ["a", "b", "c"]  # the refused call did not start the tool
    assert (await manager.execute_tool("fine")).result == "fine"  # a tool that never left a call running
    release.set()
    await wait_until_no_abandoned_task(manager)
    assert manager.get_tool_stats()["abandoned_calls"] == 0
    again = await manager.execute_tool("a")
    assert again.success and again.result == "late answer"


async def test_sync_calls_left_in_their_threads_count_toward_the_bound_of_all_tools_together() -> None:
    gate = threading.Event()

    def hangs() -> str:
        gate.wait(timeout=10.0)
        return "late"

    def quick() -> str:
        return "quick"

    manager = ToolManager(ContextManagerConfig(max_abandoned_tool_calls=1))
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=0.3)
    manager.register_function_tool("quick", quick, "Quick", timeout=5.0)
    try:
        assert (await manager.execute_tool("hangs")).error_type is ToolErrorType.TIMEOUT
        refused = await manager.execute_tool("hangs")
        assert refused.error_type is ToolErrorType.OVERLOADED
        assert refused.error is not None and refused.error.startswith(
            "tool 'hangs' has 1 call still running in its thread after its timeout, and the tools of this "
            "manager have 1 call still running after their caller stopped waiting "
            "(config.max_abandoned_tool_calls=1 allows no more in all)"
        )
        assert (await manager.execute_tool("quick")).result == "quick"
        manager.config.max_abandoned_tool_calls = None  # read at each call: no bound in all
        assert (await manager.execute_tool("hangs")).error_type is ToolErrorType.TIMEOUT
    finally:
        gate.set()
    await wait_until_tool_has_no_abandoned_call(manager, "hangs")
    assert manager.get_tool_stats()["abandoned_calls"] == 0
    assert (await manager.execute_tool("hangs")).result == "late"


async def test_tool_stats_show_which_tool_ignored_its_cancellation() -> None:
    """An operator could not see which tool misbehaves: ``get_tool_stats()`` had no mark of a tool that
    ignored its cancellation (whose calls in flight count toward the bounds from then on)."""
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(cancel_grace=0.01)
    manager.register_function_tool("stubborn", stubborn_tool(release, []), "Stubborn", timeout=0.1)
    manager.register_function_tool("fine", lambda: "fine", "Fine")
    stats = manager.get_tool_stats()
    assert stats["tools"]["stubborn"]["ignored_cancellation"] is False
    assert stats["abandoned_calls"] == 0 and stats["max_abandoned_tool_calls"] == 64  # the default
    assert (await manager.execute_tool("stubborn")).error_type is ToolErrorType.TIMEOUT
    stats = manager.get_tool_stats()
    assert stats["tools"]["stubborn"]["ignored_cancellation"] is True
    assert stats["tools"]["stubborn"]["abandoned"] == 1 and stats["abandoned_calls"] == 1
    assert stats["tools"]["fine"]["ignored_cancellation"] is False
    release.set()
    await wait_until_no_abandoned_task(manager)
    stats = manager.get_tool_stats()
    assert stats["tools"]["stubborn"]["ignored_cancellation"] is True  # it may do it again
    assert (stats["tools"]["stubborn"]["abandoned"], stats["abandoned_calls"]) == (0, 0)
    manager.register_function_tool("stubborn", lambda: "fixed", "Fixed", replace=True)
    assert manager.get_tool_stats()["tools"]["stubborn"]["ignored_cancellation"] is False


async def test_a_replaced_tools_calls_left_running_count_in_all_until_they_end() -> None:
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(RELEASE_AFTER, release.set)
    manager = ToolManager(ContextManagerConfig(max_abandoned_tool_calls=1), cancel_grace=0.01)
    manager.register_function_tool("old", stubborn_tool(release, []), "Old", timeout=0.1)
    manager.register_function_tool("other", stubborn_tool(release, []), "Other", timeout=0.1)
    assert (await manager.execute_tool("other")).error_type is ToolErrorType.TIMEOUT
    manager.register_function_tool("other", lambda: "fixed", "Fixed", replace=True)
    stats = manager.get_tool_stats()
    assert stats["abandoned_calls"] == 1  # the old registration's call still runs
    assert stats["tools"]["other"]["abandoned"] == 0 and not stats["tools"]["other"]["ignored_cancellation"]
    assert (await manager.execute_tool("other")).result == "fixed"  # not known to leave calls running
    assert (await manager.execute_tool("old")).error_type is ToolErrorType.TIMEOUT  # first: not known yet
    refused = await manager.execute_tool("old")
    assert refused.error_type is ToolErrorType.OVERLOADED and "have 2 calls still running" in (
        refused.error or ""
    )
    release.set()
    await wait_until_no_abandoned_task(manager)
    assert manager.get_tool_stats()["abandoned_calls"] == 0
    assert (await manager.execute_tool("old")).result == "late answer"
