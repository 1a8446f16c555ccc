from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.async_operations import ConcurrencyController, TaskStatus, cancel_and_wait
from context_manager.core.errors import (
    ControllerStoppedError,
    DuplicateTaskError,
    InvalidSettingError,
    InvalidTaskError,
    QueueFullError,
    TaskCancelledError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from tests.pending_tasks import DESTROYED_PENDING, run_leaving_leftovers


async def add(a: int, b: int, *, scale: int = 1) -> int:
    await asyncio.sleep(0)
    return (a + b) * scale


def _others() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


# ------------------------------------------------------------------------------------------- basics


async def test_submit_and_wait_like_the_guide() -> None:
    controller = ConcurrencyController(max_concurrent_tasks=10)
    await controller.start()
    task_ids = []
    for i in range(5):
        task_id = await controller.submit_task(f"task_{i}", add, i, 10, priority="normal")
        task_ids.append(task_id)
    results = [await controller.wait_for_task(task_id) for task_id in task_ids]
    await controller.stop()
    assert task_ids == [f"task_{i}" for i in range(5)]
    assert results == [10, 11, 12, 13, 14]
    stats = controller.get_stats()
    assert (stats.completed, stats.failed, stats.running, stats.queued, stats.submitted) == (5, 0, 0, 0, 5)
    assert _others() == []


async def test_keyword_arguments_reach_the_function() -> None:
    async with ConcurrencyController() as controller:
        await controller.submit_task("k", add, 1, 2, scale=10)
        assert await controller.wait_for_task("k") == 30


async def test_higher_priority_queued_tasks_start_first() -> None:
    started: list[str] = []
    release = asyncio.Event()

    async def blocker() -> None:
        started.append("blocker")
        await release.wait()

    async def job(name: str) -> str:
        started.append(name)
        return name

    async with ConcurrencyController(max_concurrent_tasks=1) as controller:
        await controller.submit_task("blocker", blocker)
        plan = [("a", "low"), ("b", "normal"), ("c", "high"), ("d", "critical"), ("e", "low"), ("f", "high")]
        for name, priority in plan:
            await controller.submit_task(name, job, name, priority=priority)
        assert controller.get_stats().queued == 6
        assert controller.get_task_status("d").status is TaskStatus.QUEUED
        release.set()
        for name, _ in plan:
            assert await controller.wait_for_task(name) == name
    assert started == ["blocker", "d", "c", "f", "b", "a", "e"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["low", "normal", "high", "critical"]), min_size=1, max_size=12))
def test_start_order_is_priority_then_submission(priorities: list[str]) -> None:
    rank = {"low": 0, "normal": 1, "high": 2, "critical": 3}

    async def scenario() -> list[int]:
        started: list[int] = []
        release = asyncio.Event()

        async def blocker() -> None:
            await release.wait()

        async def job(index: int) -> None:
            started.append(index)

        async with ConcurrencyController(max_concurrent_tasks=1) as controller:
            await controller.submit_task("blocker", blocker)
            for index, priority in enumerate(priorities):
                await controller.submit_task(str(index), job, index, priority=priority)
            release.set()
        return started

    expected = sorted(range(len(priorities)), key=lambda index: (-rank[priorities[index]], index))
    assert asyncio.run(scenario()) == expected


async def test_never_more_than_the_limit_run_at_once() -> None:
    limit, total = 3, 10
    active = 0
    peak = 0
    gate = asyncio.Event()
    limit_reached = asyncio.Event()

    async def job() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == limit:
            limit_reached.set()
        await gate.wait()
        active -= 1

    async with ConcurrencyController(max_concurrent_tasks=limit) as controller:
        for index in range(total):
            await controller.submit_task(f"t{index}", job)
        await limit_reached.wait()
        stats = controller.get_stats()
        assert (stats.running, stats.queued) == (limit, total - limit)
        gate.set()
        for index in range(total):
            await controller.wait_for_task(f"t{index}")
    assert peak == limit
    stats = controller.get_stats()
    assert stats.peak_running == limit and stats.completed == total
    assert stats.mean_wait_seconds > 0.0


async def test_sync_callables_run_in_threads_without_blocking_the_loop() -> None:
    entered = threading.Event()
    proceed = threading.Event()
    loop_thread = threading.get_ident()

    def blocking_job(value: int) -> tuple[int, int]:
        entered.set()
        proceed.wait(5)
        return value * 2, threading.get_ident()

    async with ConcurrencyController(max_concurrent_tasks=2) as controller:
        await controller.submit_task("sync", blocking_job, 21)
        await asyncio.to_thread(entered.wait, 5)  # the loop keeps running while the thread blocks
        assert controller.get_task_status("sync").status is TaskStatus.RUNNING
        proceed.set()
        value, thread = await controller.wait_for_task("sync")
    assert value == 42 and thread != loop_thread


async def test_a_hung_sync_task_does_not_starve_the_next_one() -> None:
    """Issue 18.9: the pool had one thread per slot, so a timed-out sync task kept the only thread and
    a trivial task started after it timed out waiting for a thread while stats said running=1."""
    gate = threading.Event()

    def hangs() -> None:
        gate.wait(30)

    def trivial() -> str:
        return threading.current_thread().name

    controller = ConcurrencyController(max_concurrent_tasks=1)
    await controller.start()
    try:
        await controller.submit_task("hung", hangs, timeout=0.1)
        with pytest.raises(TaskTimeoutError):
            await controller.wait_for_task("hung")
        assert controller.get_stats().abandoned_threads == 1
        await controller.submit_task("trivial", trivial, timeout=5.0)
        thread_name = await controller.wait_for_task("trivial")
        assert thread_name.startswith("ConcurrencyController")  # its own pool, not the loop's default
        stats = controller.get_stats()
        assert (stats.completed, stats.timed_out, stats.running) == (1, 1, 0)
        assert stats.abandoned_threads == 1 and not gate.is_set()
    finally:
        gate.set()
        await controller.stop()
    for _ in range(500):
        if controller.get_stats().abandoned_threads == 0:
            break
        await asyncio.sleep(0.01)
    assert controller.get_stats().abandoned_threads == 0


async def test_spare_threads_is_validated() -> None:
    with pytest.raises(InvalidSettingError, match=r"^spare_threads: got -1; allowed an integer >= 0"):
        ConcurrencyController(spare_threads=-1)


async def test_the_tasks_exception_is_raised_and_the_record_released() -> None:
    async def broken() -> None:
        raise ValueError("broken task")

    async with ConcurrencyController() as controller:
        await controller.submit_task("x", broken)
        with pytest.raises(ValueError, match="broken task"):
            await controller.wait_for_task("x")
        with pytest.raises(TaskNotFoundError, match="task not found: 'x'"):
            await controller.wait_for_task("x")
        assert controller.get_stats().failed == 1
        # a released id can be used again
        await controller.submit_task("x", add, 1, 1)
        assert await controller.wait_for_task("x") == 2


async def test_results_are_released_once_fetched() -> None:
    async with ConcurrencyController() as controller:
        await controller.submit_task("r", add, 2, 3)
        assert await controller.wait_for_task("r") == 5
        with pytest.raises(TaskNotFoundError):
            controller.get_task_status("r")
        assert controller.get_stats().retained_results == 0


async def test_unfetched_results_are_bounded() -> None:
    controller = ConcurrencyController(max_concurrent_tasks=2, max_retained_results=3)
    await controller.start()
    for index in range(5):
        await controller.submit_task(f"t{index}", add, index, 0)
    await controller.stop(drain=True)
    assert controller.get_stats().retained_results == 3
    for dropped in ("t0", "t1"):
        with pytest.raises(TaskNotFoundError):
            await controller.wait_for_task(dropped)
    assert [await controller.wait_for_task(f"t{index}") for index in (2, 3, 4)] == [2, 3, 4]


# ----------------------------------------------------------------------------- timeouts, cancelling


async def test_task_timeout() -> None:
    never = asyncio.Event()
    async with ConcurrencyController(default_timeout=5.0) as controller:
        await controller.submit_task("slow", never.wait, timeout=0.05)
        with pytest.raises(TaskTimeoutError, match=r"task 'slow' timed out after 0.05 s") as caught:
            await controller.wait_for_task("slow")
        assert caught.value.task_id == "slow" and caught.value.timeout_seconds == 0.05
        assert controller.get_stats().timed_out == 1


async def test_default_timeout_applies() -> None:
    never = asyncio.Event()
    async with ConcurrencyController(default_timeout=0.05) as controller:
        await controller.submit_task("slow", never.wait)
        with pytest.raises(TaskTimeoutError):
            await controller.wait_for_task("slow")


async def test_a_timeout_error_raised_by_the_function_is_a_failure_not_a_timeout() -> None:
    async def raises_timeout() -> None:
        raise TimeoutError("upstream timed out")

    async with ConcurrencyController() as controller:
        await controller.submit_task("t", raises_timeout, timeout=10.0)
        with pytest.raises(TimeoutError, match="upstream") as caught:
            await controller.wait_for_task("t")
        assert not isinstance(caught.value, TaskTimeoutError)
        stats = controller.get_stats()
        assert (stats.failed, stats.timed_out) == (1, 0)


async def test_a_wait_timeout_leaves_the_task_running() -> None:
    release = asyncio.Event()

    async def job() -> str:
        await release.wait()
        return "done"

    async with ConcurrencyController() as controller:
        await controller.submit_task("j", job)
        with pytest.raises(TaskTimeoutError):
            await controller.wait_for_task("j", timeout=0.02)
        assert controller.get_task_status("j").status is TaskStatus.RUNNING
        release.set()
        assert await controller.wait_for_task("j") == "done"


async def test_cancel_a_queued_task() -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def job(name: str) -> None:
        ran.append(name)
        await release.wait()

    async with ConcurrencyController(max_concurrent_tasks=1) as controller:
        await controller.submit_task("first", job, "first")
        await controller.submit_task("queued", job, "queued")
        assert await controller.cancel_task("queued") is True
        info = controller.get_task_status("queued")
        assert info.status is TaskStatus.CANCELLED and info.run_seconds is None
        with pytest.raises(TaskCancelledError, match="task 'queued' was cancelled"):
            await controller.wait_for_task("queued")
        release.set()
        await controller.wait_for_task("first")
    assert ran == ["first"]
    assert controller.get_stats().cancelled == 1


async def test_cancel_a_running_task_wakes_its_waiters() -> None:
    started = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    async with ConcurrencyController() as controller:
        await controller.submit_task("run", job)
        waiter = asyncio.create_task(controller.wait_for_task("run"))
        await started.wait()
        assert await controller.cancel_task("run") is True
        assert cleaned_up.is_set()
        with pytest.raises(TaskCancelledError):
            await waiter
        with pytest.raises(TaskNotFoundError):
            await controller.cancel_task("missing")


async def test_cancel_right_after_submit_ends_the_task_and_stop_returns() -> None:
    """A task cancelled before its runner took its first step used to stay RUNNING and hang stop()."""
    ran = asyncio.Event()

    async def work() -> None:
        ran.set()

    controller = ConcurrencyController(max_concurrent_tasks=2)
    await controller.start()
    await controller.submit_task("t", work)
    assert await controller.cancel_task("t") is True  # no await between submit and cancel
    assert controller.get_task_status("t").status is TaskStatus.CANCELLED
    assert controller.get_stats().running == 0
    assert not ran.is_set()
    await controller.submit_task("unstarted", work)  # stop() cancelling a runner that never started
    await controller.stop(drain=False)
    assert controller.get_task_status("unstarted").status is TaskStatus.CANCELLED
    assert controller.get_stats().running == 0


async def test_cancelling_a_finished_task_returns_false() -> None:
    async with ConcurrencyController() as controller:
        await controller.submit_task("done", add, 1, 2)
        await controller.stop(drain=True)
        assert await controller.cancel_task("done") is False
        assert await controller.wait_for_task("done") == 3


# --------------------------------------------------------------------------------------------- stop


async def test_stop_with_drain_finishes_queued_tasks() -> None:
    controller = ConcurrencyController(max_concurrent_tasks=1)
    await controller.start()
    for index in range(4):
        await controller.submit_task(f"t{index}", add, index, 1)
    await controller.stop(drain=True)
    stats = controller.get_stats()
    assert (stats.completed, stats.running, stats.queued) == (4, 0, 0)
    assert _others() == []
    with pytest.raises(ControllerStoppedError, match=r"^controller: got 'stopped'; allowed 'running'"):
        await controller.submit_task("late", add, 1, 1)


async def test_stop_without_drain_cancels_everything_and_leaves_nothing_pending() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    controller = ConcurrencyController(max_concurrent_tasks=2)
    await controller.start()
    for index in range(5):
        await controller.submit_task(f"t{index}", forever)
    waiter = asyncio.create_task(controller.wait_for_task("t4"))  # a queued task's waiter
    await started.wait()
    await controller.stop(drain=False)
    with pytest.raises(TaskCancelledError):
        await waiter
    stats = controller.get_stats()
    assert (stats.cancelled, stats.running, stats.queued) == (5, 0, 0)
    assert _others() == []


async def test_stop_drain_timeout_cancels_the_rest() -> None:
    async with ConcurrencyController() as controller:
        await controller.submit_task("stuck", asyncio.Event().wait)
        await controller.stop(drain=True, drain_timeout=0.02)
        assert controller.get_task_status("stuck").status is TaskStatus.CANCELLED
    assert _others() == []


@pytest.mark.parametrize("drain_timeout", ["1", -1.0, float("nan"), float("inf"), True])
async def test_a_bad_drain_timeout_is_refused_before_anything_stops(drain_timeout: Any) -> None:
    """``stop(drain_timeout="1")`` raised TypeError with the controller already refusing work and its tasks
    left running; NaN waited for ever and a negative number cancelled everything at once."""
    controller = ConcurrencyController()
    await controller.start()
    gate = asyncio.Event()
    await controller.submit_task("running", gate.wait)
    with pytest.raises(InvalidSettingError, match="drain_timeout: got .*; allowed None or a finite number"):
        await asyncio.wait_for(controller.stop(drain_timeout=drain_timeout), 5.0)
    assert controller.is_running
    assert controller.get_task_status("running").status is TaskStatus.RUNNING
    gate.set()
    await controller.stop(drain_timeout=5.0)
    assert await controller.wait_for_task("running") is True


def test_no_task_is_destroyed_pending_in_debug_mode(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        controller = ConcurrencyController(max_concurrent_tasks=3)
        await controller.start()
        for index in range(6):
            await controller.submit_task(f"t{index}", forever)
        await controller.submit_task("sync", sum, [1, 2, 3])
        await started.wait()
        await controller.stop(drain=False)
        assert _others() == []

    log = run_leaving_leftovers(main, caplog)
    assert DESTROYED_PENDING not in log
    assert "never awaited" not in log


def test_the_leftover_detector_sees_a_task_left_pending(caplog: pytest.LogCaptureFixture) -> None:
    """The debug-mode tests above can fail: a task nobody stops is reported."""

    class Leaky:
        async def start(self) -> None:
            self.task = asyncio.create_task(asyncio.Event().wait())

    async def main() -> None:
        await Leaky().start()
        await asyncio.sleep(0)

    assert DESTROYED_PENDING in run_leaving_leftovers(main, caplog)


async def test_async_with_drains_on_normal_exit() -> None:
    async with ConcurrencyController(max_concurrent_tasks=1) as controller:
        for index in range(3):
            await controller.submit_task(f"t{index}", add, index, index)
    assert controller.get_stats().completed == 3
    assert not controller.is_running


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks"),
        ({"max_concurrent_tasks": 2.5}, "max_concurrent_tasks"),
        ({"max_queue_size": -1}, "max_queue_size"),
        ({"default_timeout": 0}, "default_timeout"),
        ({"max_retained_results": 0}, "max_retained_results"),
    ],
)
def test_invalid_settings(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSettingError, match=rf"^{field}: got .*; allowed "):
        ConcurrencyController(**kwargs)


async def test_submit_before_start() -> None:
    with pytest.raises(
        ControllerStoppedError, match=r"^controller: got 'not started'; allowed 'running' .*controller\.start"
    ):
        await ConcurrencyController().submit_task("x", add, 1, 2)


async def test_submit_to_a_stopped_controller_changes_nothing() -> None:
    controller = ConcurrencyController()
    await controller.start()
    await controller.submit_task("done", add, 1, 2)
    await controller.stop()
    before = controller.get_stats()
    with pytest.raises(ControllerStoppedError, match=r"^controller: got 'stopped'; allowed 'running'"):
        await controller.submit_task("late", add, 1, 2)
    assert controller.get_stats() == before
    with pytest.raises(TaskNotFoundError):
        controller.get_task_status("late")


async def test_rejected_submissions_change_nothing(recwarn: pytest.WarningsRecorder) -> None:
    release = asyncio.Event()
    async with ConcurrencyController(max_concurrent_tasks=1, max_queue_size=1) as controller:
        await controller.submit_task("held", release.wait)
        before = controller.get_stats()
        with pytest.raises(InvalidTaskError, match=r"priority: got 'urgent'; allowed one of 'low', 'normal'"):
            await controller.submit_task("p", add, 1, 2, priority="urgent")
        with pytest.raises(InvalidTaskError, match="task_id: got ''"):
            await controller.submit_task("", add, 1, 2)
        with pytest.raises(InvalidTaskError, match="fn: got 42; allowed a callable"):
            await controller.submit_task("n", 42)  # type: ignore[arg-type]
        coroutine = add(1, 2)
        with pytest.raises(InvalidTaskError, match="pass the coroutine function"):
            await controller.submit_task("c", coroutine)  # type: ignore[arg-type]
        with pytest.raises(InvalidTaskError, match="timeout: got -1"):
            await controller.submit_task("t", add, 1, 2, timeout=-1)
        with pytest.raises(DuplicateTaskError, match="task_id: got 'held'; allowed an id not in use"):
            await controller.submit_task("held", add, 1, 2)
        assert controller.get_stats() == before
        await controller.submit_task("queued", add, 1, 2)
        with pytest.raises(QueueFullError, match="max_queue_size=1"):
            await controller.submit_task("overflow", add, 1, 2)
        with pytest.raises(
            TaskNotFoundError, match=r"^task not found: 'unknown'; allowed the id of a task submitted"
        ):
            await controller.wait_for_task("unknown")
        with pytest.raises(TaskNotFoundError, match="'unknown'; allowed"):
            await controller.cancel_task("unknown")
        with pytest.raises(TaskNotFoundError, match="'unknown'; allowed"):
            controller.get_task_status("unknown")
        with pytest.raises(InvalidTaskError, match="timeout"):
            await controller.wait_for_task("held", timeout=0)
        release.set()
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


# ------------------------------------------------------------------------------------ cancel_and_wait


async def test_cancel_and_wait_finishes_the_task_and_swallows_its_end() -> None:
    entered = asyncio.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.Event().wait()

    async def died() -> None:
        raise RuntimeError("sampler crashed")

    running = asyncio.create_task(forever())
    dead = asyncio.create_task(died())
    await entered.wait()
    await asyncio.wait([dead])
    await cancel_and_wait(running)
    await cancel_and_wait(dead)  # its exception was reported when it happened: not raised again
    await cancel_and_wait(None)
    assert running.cancelled() and dead.done() and _others() == []


async def test_cancel_and_wait_lets_the_callers_own_cancellation_through() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # slow to finish: the owner is still waiting when it is cancelled
            raise

    async def owner(task: asyncio.Task[None]) -> None:
        await cancel_and_wait(task)

    task = asyncio.create_task(stubborn())
    await entered.wait()
    stopping = asyncio.create_task(owner(task))
    await asyncio.sleep(0)  # let the owner start waiting (ordering, not timing)
    stopping.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.wait([task])
    assert task.cancelled()


class Abort(BaseException):
    """A BaseException of the task's own."""


async def test_tasks_raising_stop_iteration_or_a_base_exception_fail() -> None:
    """A sync task raising StopIteration stayed RUNNING for good (a future cannot carry it); an async one
    raising a BaseException subclass was counted COMPLETED with result None."""

    def stops() -> None:
        next(iter([]))

    async def aborts() -> None:
        raise Abort("stop")

    async with ConcurrencyController() as controller:
        await controller.submit_task("stops", stops)
        await controller.submit_task("aborts", aborts)
        for _ in range(500):  # both end within moments (the StopIteration one used to run for good)
            if not (controller.get_stats().running or controller.get_stats().queued):
                break
            await asyncio.sleep(0.01)
        assert controller.get_task_status("stops").status is TaskStatus.FAILED
        assert controller.get_task_status("aborts").status is TaskStatus.FAILED
        stats = controller.get_stats()
        assert (stats.failed, stats.completed) == (2, 0)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await controller.wait_for_task("stops")
        with pytest.raises(Abort):
            await controller.wait_for_task("aborts")


async def test_a_task_that_swallows_its_timeout_still_times_out() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "late answer"  # caught the timeout's cancellation and returned anyway
        return "never"

    async with ConcurrencyController() as controller:
        await controller.submit_task("t", stubborn, timeout=0.05)
        with pytest.raises(TaskTimeoutError):
            await controller.wait_for_task("t")
        stats = controller.get_stats()
        assert (stats.completed, stats.timed_out) == (0, 1)


async def test_two_stops_at_once_both_return_once_the_tasks_are_drained() -> None:
    """A second ``stop()`` while the first drained replaced the first one's drain signal: the first
    waited for ever (a service's shutdown handler and ``async with`` both stopping the controller)."""
    controller = ConcurrencyController(max_concurrent_tasks=2)
    await controller.start()
    gate = asyncio.Event()
    for index in range(4):
        await controller.submit_task(f"t{index}", gate.wait)
    first = asyncio.create_task(controller.stop())
    await asyncio.sleep(0)
    second = asyncio.create_task(controller.stop())
    await asyncio.sleep(0)
    gate.set()
    done, pending = await asyncio.wait([first, second], timeout=5.0)
    for task in pending:
        task.cancel()
    assert pending == set()
    assert [task.result() for task in (first, second)] == [None, None]
    stats = controller.get_stats()
    assert (stats.completed, stats.running, stats.queued) == (4, 0, 0)
    assert _others() == []


async def test_a_stop_with_a_drain_timeout_beside_a_plain_stop_ends_both() -> None:
    controller = ConcurrencyController()
    await controller.start()
    await controller.submit_task("stuck", asyncio.Event().wait)
    patient = asyncio.create_task(controller.stop())
    await asyncio.sleep(0)
    await asyncio.wait_for(controller.stop(drain_timeout=0.02), 5.0)
    await asyncio.wait_for(patient, 5.0)  # the cancellation the impatient stop made ended the drain
    assert controller.get_task_status("stuck").status is TaskStatus.CANCELLED
    assert _others() == []


@pytest.mark.parametrize("drain", ["no", 0, None])
async def test_a_drain_that_is_not_a_bool_is_refused_before_anything_stops(drain: Any) -> None:
    """``stop(drain="no")`` drained ("no" is truthy), waiting for every task it was told not to."""
    controller = ConcurrencyController()
    await controller.start()
    gate = asyncio.Event()
    await controller.submit_task("running", gate.wait)
    with pytest.raises(InvalidSettingError, match=r"^drain: got .*; allowed True or False"):
        await asyncio.wait_for(controller.stop(drain=drain), 5.0)
    assert controller.is_running
    assert controller.get_task_status("running").status is TaskStatus.RUNNING
    await controller.stop(drain=False)
    with pytest.raises(TaskCancelledError):
        await controller.wait_for_task("running")


def test_asyncio_run_ending_with_queued_tasks_starts_none_and_keeps_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``asyncio.run`` ending under a controller cancels its running tasks; each one's end started the next
    queued task, a task of the dying loop: a queued sync task began its work in a thread during shutdown,
    and once that task was destroyed pending its clean-up ran again in the next loop, so the controller
    counted -1 running tasks and then ran two at once with ``max_concurrent_tasks=1``."""
    controller = ConcurrencyController(max_concurrent_tasks=1)
    called: list[str] = []

    async def hang() -> None:
        await asyncio.Event().wait()

    def queued_sync_work() -> None:
        called.append("started during shutdown")

    async def main() -> None:
        await controller.start()
        await controller.submit_task("running", hang)
        for index in range(3):
            await controller.submit_task(f"queued-{index}", hang)
        await controller.submit_task("sync", queued_sync_work, priority="high")  # the next to start
        await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(main())
        gc.collect()
    assert called == []
    assert DESTROYED_PENDING not in caplog.text

    at_once = 0
    most_at_once = 0

    async def counted() -> None:
        nonlocal at_once, most_at_once
        at_once += 1
        most_at_once = max(most_at_once, at_once)
        await asyncio.sleep(0.01)
        at_once -= 1

    async def afterwards() -> None:
        await controller.start()
        gc.collect()
        assert controller.get_stats().running == 0
        for index in range(3):
            await controller.submit_task(f"new-{index}", counted)
        for index in range(3):
            await controller.wait_for_task(f"new-{index}")
        await controller.stop()

    asyncio.run(afterwards())
    gc.collect()
    stats = controller.get_stats()
    assert most_at_once == 1
    assert (stats.running, stats.queued, stats.failed, stats.completed, stats.cancelled) == (0, 0, 0, 3, 5)
    assert called == []


async def test_queued_tasks_cancelled_while_the_slots_stay_busy_are_released() -> None:
    """A queued task that was cancelled stayed in the priority queue until a slot freed: a service whose
    slots were held by long tasks while it cancelled queued requests (a user typing on) kept every one
    of them, about 1.3 KB each, without bound."""
    errors: list[weakref.ref[BaseException]] = []
    async with ConcurrencyController(max_concurrent_tasks=1) as controller:
        gate = asyncio.Event()
        await controller.submit_task("long", gate.wait)
        for index in range(2000):
            priority = "high" if index % 2 else "low"
            await controller.submit_task(f"request-{index}", add, index, 1, priority=priority)
            if index % 500 == 0:  # queued tasks that stay, in their order
                await controller.submit_task(f"kept-{index}", add, index, 1)
            assert await controller.cancel_task(f"request-{index}")
            with pytest.raises(TaskCancelledError) as caught:
                await controller.wait_for_task(f"request-{index}")
            errors.append(weakref.ref(caught.value))
            del caught
        gc.collect()
        assert sum(ref() is not None for ref in errors) < 200
        assert controller.get_stats().queued == 4
        gate.set()
        assert [await controller.wait_for_task(f"kept-{index}") for index in range(0, 2000, 500)] == [
            1,
            501,
            1001,
            1501,
        ]


async def test_after_an_outside_cancellation_the_queue_resumes_with_the_next_call() -> None:
    """A runner cancelled from outside the controller starts no queued task (see the asyncio.run test);
    when the loop goes on, the controller's next call starts them."""
    async with ConcurrencyController(max_concurrent_tasks=1) as controller:
        await controller.submit_task("running", asyncio.Event().wait)
        await controller.submit_task("queued", add, 2, 3)
        await asyncio.sleep(0)
        runners = [task for task in _others() if "ConcurrencyController._run" in repr(task)]
        assert len(runners) == 1
        runners[0].cancel()  # what cancelling every task of the loop does
        await asyncio.wait(runners)
        assert controller.get_task_status("running").status is TaskStatus.CANCELLED
        assert controller.get_task_status("queued").status is TaskStatus.QUEUED
        assert await asyncio.wait_for(controller.wait_for_task("queued"), 5.0) == 5


async def test_a_wait_that_times_out_says_the_task_still_runs() -> None:
    """wait_for_task(id, timeout=...) expiring raised "task 'x' timed out after 0.05 s", the task's own
    timeout's message: the caller took the task for stopped (and its result for lost) while it ran on."""
    gate = asyncio.Event()
    async with ConcurrencyController() as controller:
        await controller.submit_task("report", gate.wait, timeout=5.0)
        with pytest.raises(TaskTimeoutError) as caught:
            await controller.wait_for_task("report", timeout=0.05)
        message = str(caught.value)
        assert "waiting for task 'report'" in message and "still running" in message
        assert caught.value.task_finished is False and caught.value.timeout_seconds == 0.05
        assert controller.get_task_status("report").status is TaskStatus.RUNNING
        gate.set()
        assert await controller.wait_for_task("report") is True  # the result was not lost
        await controller.submit_task("own", asyncio.sleep, 10, timeout=0.05)
        with pytest.raises(TaskTimeoutError, match=r"^task 'own' timed out after 0.05 s") as own:
            await controller.wait_for_task("own")
        assert own.value.task_finished is True


async def test_a_call_from_another_threads_event_loop_is_refused_while_its_own_loop_runs() -> None:
    """Documented as "call it from the loop it was started in" but not checked: a task submitted from a
    second thread's ``asyncio.run`` while the slot was busy was started by the first loop when the slot
    freed, and its end woke the second loop's waiter from the first loop's thread, which the second loop
    never noticed: ``wait_for_task`` there hung for good (until some timer of that loop fired)."""
    from context_manager.core.errors import ConcurrencyError, ControllerLoopError

    gate = asyncio.Event()
    seen: dict[str, object] = {}

    async def from_another_loop() -> None:
        for name, call in (
            ("submit_task", lambda: controller.submit_task("other", asyncio.sleep, 0)),
            ("wait_for_task", lambda: controller.wait_for_task("busy")),
            ("cancel_task", lambda: controller.cancel_task("busy")),
            ("stop", lambda: controller.stop()),
            ("start", lambda: controller.start()),
        ):
            try:
                await asyncio.wait_for(call(), timeout=5)
            except Exception as error:
                seen[name] = error
            else:
                seen[name] = "accepted"

    async with ConcurrencyController(max_concurrent_tasks=1) as controller:
        await controller.submit_task("busy", gate.wait)
        thread = threading.Thread(target=asyncio.run, args=(from_another_loop(),), daemon=True)
        thread.start()
        await asyncio.to_thread(thread.join, 30)
        assert set(seen) == {"submit_task", "wait_for_task", "cancel_task", "stop", "start"}
        for name, outcome in seen.items():
            assert isinstance(outcome, ControllerLoopError), (name, outcome)
            assert isinstance(outcome, ConcurrencyError | RuntimeError)
            assert "another event loop" in str(outcome) and "allowed calls from that loop only" in str(
                outcome
            )
        stats = controller.get_stats()
        assert (stats.submitted, stats.running, stats.queued, controller.is_running) == (1, 1, 0, True)
        gate.set()
        assert await controller.wait_for_task("busy") is True

    async def restart_on_a_new_loop() -> None:  # nothing in flight: a stopped controller may move
        await controller.start()
        await controller.submit_task("later", asyncio.sleep, 0, "done")
        seen["later"] = await controller.wait_for_task("later")
        await controller.stop()

    thread = threading.Thread(target=asyncio.run, args=(restart_on_a_new_loop(),), daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, 30)
    assert seen["later"] == "done"
