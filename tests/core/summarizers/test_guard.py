"""The summarizer circuit breaker (issue 15, item 5): a hanging summarizer is not waited for on every
compression; it is skipped for a cooldown, the extractive summary is used and recorded, and it is tried
again later."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import InvalidArgumentError, SummarizerError, SummarizerUnavailableError
from context_manager.core.messages import Message
from context_manager.core.summarizers import CircuitState, SummarizerGuard, SummaryReport
from context_manager.testing import ScriptedSummarizer


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """Fails while ``failing`` is set; counts calls."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        self.calls += 1
        if self.failing:
            raise RuntimeError("model down")
        return "a summary"


MESSAGES = [Message.create("user", "hello there")]


async def test_summarizer_circuit_opens_after_consecutive_failures_and_refuses_at_once() -> None:
    clock, inner = ManualClock(), Flaky()
    guard = SummarizerGuard(inner, failure_threshold=2, cooldown=10.0, clock=clock)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="model down"):
            await guard(MESSAGES, 50)
    assert guard.state is CircuitState.OPEN
    with pytest.raises(
        SummarizerUnavailableError, match=r"circuit open after 2 consecutive failures"
    ) as refused:
        await guard(MESSAGES, 50)
    assert inner.calls == 2  # not called while open
    assert refused.value.retry_in == pytest.approx(10.0)
    status = guard.status()
    assert status["state"] == "open" and status["refused"] == 1 and status["trips"] == 1
    assert status["last_error"] == "RuntimeError" and status["retry_in"] == pytest.approx(10.0)


async def test_summarizer_circuit_trial_after_cooldown_closes_or_reopens_longer() -> None:
    clock, inner = ManualClock(), Flaky()
    guard = SummarizerGuard(inner, failure_threshold=1, cooldown=10.0, max_cooldown=25.0, clock=clock)
    with pytest.raises(RuntimeError):
        await guard(MESSAGES, 50)
    clock.now += 9.9
    with pytest.raises(SummarizerUnavailableError):
        await guard(MESSAGES, 50)
    clock.now += 0.1  # cooled down: one trial call, which fails -> open for 20 s
    with pytest.raises(RuntimeError):
        await guard(MESSAGES, 50)
    assert guard.state is CircuitState.OPEN and guard.status()["cooldown"] == 20.0
    clock.now += 19.0
    with pytest.raises(SummarizerUnavailableError):
        await guard(MESSAGES, 50)
    clock.now += 1.0
    with pytest.raises(RuntimeError):  # fails again -> 40 s, capped at 25
        await guard(MESSAGES, 50)
    assert guard.status()["cooldown"] == 25.0
    clock.now += 25.0
    inner.failing = False
    assert await guard(MESSAGES, 50) == "a summary"  # the trial succeeds: closed, cooldown reset
    assert guard.state is CircuitState.CLOSED and guard.consecutive_failures == 0
    assert guard.status()["cooldown"] == 10.0 and guard.status()["trips"] == 3
    assert inner.calls == 4


async def test_summarizer_circuit_counts_only_consecutive_failures() -> None:
    inner = Flaky()
    guard = SummarizerGuard(inner, failure_threshold=2, cooldown=10.0)
    with pytest.raises(RuntimeError):
        await guard(MESSAGES, 50)
    inner.failing = False
    await guard(MESSAGES, 50)
    inner.failing = True
    with pytest.raises(RuntimeError):
        await guard(MESSAGES, 50)
    assert guard.state is CircuitState.CLOSED and guard.consecutive_failures == 1


async def test_summarizer_circuit_refuses_other_calls_while_a_trial_is_in_flight() -> None:
    clock = ManualClock()
    hanging = ScriptedSummarizer(hang=True)
    guard = SummarizerGuard(hanging, failure_threshold=1, cooldown=5.0, clock=clock)
    first = asyncio.create_task(guard(MESSAGES, 50))
    await hanging.started.wait()
    first.cancel()  # as the window's timeout does
    with pytest.raises(asyncio.CancelledError):
        await first
    assert guard.state is CircuitState.OPEN
    # not called a timeout: a shutdown or the caller's own cancellation ends a call the same way
    assert guard.status()["last_error"] == "cancelled after 0.0 s"
    clock.now += 5.0
    hanging.started.clear()
    trial = asyncio.create_task(guard(MESSAGES, 50))
    await hanging.started.wait()
    assert guard.state is CircuitState.HALF_OPEN
    with pytest.raises(SummarizerUnavailableError, match="a trial call is in flight"):
        await guard(MESSAGES, 50)
    hanging.release()
    assert await trial == hanging.default
    assert guard.state is CircuitState.CLOSED


async def test_summarizer_circuit_reports_calls_and_survives_a_broken_observer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports: list[SummaryReport] = []
    clock, flaky = ManualClock(), Flaky()
    took = iter([0.25, 1.5, 0.0])

    async def inner(messages: Sequence[Message], budget_tokens: int) -> str:
        clock.now += next(took)  # the call takes this long on the guard's clock
        return await flaky(messages, budget_tokens)

    guard = SummarizerGuard(inner, failure_threshold=5, on_report=reports.append, clock=clock)
    with pytest.raises(RuntimeError):
        await guard(MESSAGES, 50)
    flaky.failing = False
    await guard(MESSAGES, 50)
    assert [(r.success, r.error, r.usage) for r in reports] == [
        (False, "RuntimeError", None),
        (True, None, None),
    ]
    assert [r.duration_s for r in reports] == [pytest.approx(0.25), pytest.approx(1.5)]

    def broken(report: SummaryReport) -> None:
        raise ValueError("observer bug")

    guard.on_report = broken
    with caplog.at_level(logging.WARNING):
        assert await guard(MESSAGES, 50) == "a summary"
    assert "report callback failed (ValueError)" in caplog.text


async def test_summarizer_circuit_counts_a_non_text_result_as_a_failure() -> None:
    async def returns_number(messages: Sequence[Message], budget_tokens: int) -> Any:
        return 42

    guard = SummarizerGuard(returns_number, failure_threshold=1)
    with pytest.raises(SummarizerError, match="returned int; allowed str"):
        await guard(MESSAGES, 50)
    assert guard.state is CircuitState.OPEN


@pytest.mark.parametrize(
    ("junk", "problem"),
    [("summary \ud800 of the talk", "lone surrogate"), ("summary\x00 of the talk", "NUL character")],
)
async def test_summarizer_circuit_counts_text_no_message_can_hold_as_a_failure(
    junk: str, problem: str
) -> None:
    reports: list[SummaryReport] = []
    guard = SummarizerGuard(ScriptedSummarizer(default=junk), failure_threshold=2, on_report=reports.append)
    for _ in range(2):
        with pytest.raises(SummarizerError, match=problem):
            await guard(MESSAGES, 50)
    assert guard.state is CircuitState.OPEN
    assert guard.status()["failures"] == 2 and guard.status()["last_error"] == "SummarizerError"
    assert [(r.success, r.error) for r in reports] == [(False, "SummarizerError")] * 2


def test_summarizer_circuit_bad_settings_are_clear_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="failure_threshold: got 0; allowed an integer >= 1"):
        SummarizerGuard(Flaky(), failure_threshold=0)
    with pytest.raises(InvalidArgumentError, match="cooldown: got -1"):
        SummarizerGuard(Flaky(), cooldown=-1)
    with pytest.raises(InvalidArgumentError, match="max_cooldown: got 5"):
        SummarizerGuard(Flaky(), cooldown=10, max_cooldown=5)
    with pytest.raises(InvalidArgumentError, match="summarizer"):
        SummarizerGuard("not callable")  # type: ignore[arg-type]


# --- through the manager: the regression of issue 15 item 5 ---------------------------------------------


async def _fill(manager: EnhancedContextManager, compressions: int) -> None:
    for number in range(400):
        await manager.add_message("user", f"message {number} about harbours lanterns and orchards " * 3)
        if len(manager.compression_history) >= compressions:
            return
    raise AssertionError("not enough compressions")


def _config(tmp_path: Path, **options: Any) -> ContextManagerConfig:
    values: dict[str, Any] = {
        "max_tokens": 250,
        "cache_path": tmp_path / "cache",
        "enable_health_checks": False,
        "summarizer_timeout": 0.3,
        "summarizer_failure_threshold": 2,
        "summarizer_cooldown": 60.0,
    }
    values.update(options)
    return ContextManagerConfig(**values)


async def test_summarizer_circuit_stops_waiting_for_a_hanging_summarizer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hanging = ScriptedSummarizer(hang=True)
    async with EnhancedContextManager(_config(tmp_path), summarizer=hanging) as manager:
        with caplog.at_level(logging.WARNING, logger="context_manager"):
            await _fill(manager, compressions=6)
        history = manager.compression_history
        assert len(hanging.calls) == 2  # only the first two compressions waited for it
        assert all("timeout after 0.3 s" in (record["error"] or "") for record in history[:2])
        assert all(record["duration_ms"] >= 300 for record in history[:2])
        for record in history[2:]:
            assert record["strategy"] == "custom_failed_fallback_extractive"
            assert "circuit open after 2 consecutive failures" in record["error"]
            assert record["duration_ms"] < 150  # no waiting for the timeout
        assert manager.context_window.summary is not None
        status = manager.get_system_status()["summarizer"]
        assert status["state"] == "open" and status["refused"] == 4 and status["trips"] == 1
        monitor = manager.performance_monitor
        assert monitor is not None and monitor.operation_stats()["summarize"].failures == 2
    opened = [r for r in caplog.records if "summarizer circuit open" in r.getMessage()]
    assert len(opened) == 1  # one warning when it opens, not one per skipped compression
    assert sum("custom summarizer failed" in r.getMessage() for r in caplog.records) == 2


async def test_a_timed_out_summary_reports_its_error_type_not_a_duration() -> None:
    """``SummaryReport.error`` is the failure's type (what the monitors and the OpenTelemetry
    ``error.type`` label group by); a summary cut by the window's timeout reported "cancelled after 0.3 s",
    a new label value for every duration."""
    reports: list[SummaryReport] = []
    hanging = ScriptedSummarizer(hang=True)
    guard = SummarizerGuard(hanging, failure_threshold=5, on_report=reports.append)
    window = ContextWindow(200, summarizer=guard, summarizer_timeout=0.2)
    while len(window.compression_history) < 2:
        await window.add(Message.create("user", "the lanterns of the harbour were lit at nine " * 3))
    assert [report.error for report in reports] == ["TimeoutError", "TimeoutError"]
    assert guard.status()["last_error"].startswith("cancelled after 0.")  # the description stays here


async def test_summarizer_circuit_tries_again_after_the_cooldown(tmp_path: Path) -> None:
    hanging = ScriptedSummarizer(hang=True)
    config = _config(tmp_path, summarizer_cooldown=0.5)
    async with EnhancedContextManager(config, summarizer=hanging) as manager:
        await _fill(manager, compressions=3)
        assert "circuit open" in manager.compression_history[-1]["error"]
        hanging.release()  # the model is back
        await asyncio.sleep(0.55)  # the cooldown is a duration: nothing to wait on but time
        await _fill(manager, compressions=4)
        record = manager.compression_history[-1]
        assert record["strategy"] == "custom" and record["error"] is None
        assert manager.get_system_status()["summarizer"]["state"] == "closed"
        assert len(hanging.calls) == 3


async def test_summarizer_circuit_a_guard_works_with_a_bare_window() -> None:
    inner = Flaky()
    window = ContextWindow(200, summarizer=SummarizerGuard(inner, failure_threshold=1, cooldown=60))
    for number in range(80):
        await window.add(Message.create("user", f"message {number} about harbours and lanterns " * 2))
        if len(window.compression_history) >= 3:
            break
    errors = [record.error or "" for record in window.compression_history]
    assert errors[0] == "RuntimeError: model down"
    assert all("circuit open" in error for error in errors[1:])
    assert inner.calls == 1


async def test_summarizer_circuit_passes_a_user_guard_through(tmp_path: Path) -> None:
    guard = SummarizerGuard(Flaky(), failure_threshold=7, cooldown=1.0)
    async with EnhancedContextManager(_config(tmp_path), summarizer=guard) as manager:
        assert manager.get_system_status()["summarizer"]["failure_threshold"] == 7


async def test_a_summarizer_returning_a_lone_surrogate_never_blocks_adds(tmp_path: Path) -> None:
    """Unusable summary text is a summarizer failure: extractive fallback, counted, then the circuit opens."""
    junk = ScriptedSummarizer(default="summary \ud800 of the talk")
    async with EnhancedContextManager(_config(tmp_path), summarizer=junk) as manager:
        await _fill(manager, compressions=4)  # every add succeeds (a bare UnicodeEncodeError before)
        history = manager.compression_history
        assert all(record["strategy"] == "custom_failed_fallback_extractive" for record in history)
        assert all("lone surrogate" in (record["error"] or "") for record in history[:2])
        assert all("circuit open after 2 consecutive failures" in (r["error"] or "") for r in history[2:])
        assert len(junk.calls) == 2
        status = manager.get_system_status()["summarizer"]
        assert status["state"] == "open" and status["failures"] == 2
        assert status["last_error"] == "SummarizerError"
        monitor = manager.performance_monitor
        assert monitor is not None and monitor.operation_stats()["summarize"].failures == 2
        summary = manager.context_window.summary
        assert summary is not None and summary.content.startswith("Summary of the earlier")


async def _cancel_a_compressing_add(manager: EnhancedContextManager, hanging: ScriptedSummarizer) -> None:
    """Start adds until one waits for the summarizer, then cancel it (the caller gives up)."""
    for number in range(400):
        hanging.started.clear()
        add = asyncio.create_task(manager.add_message("user", f"turn {number} about harbours " * 6))
        started = asyncio.create_task(hanging.started.wait())
        await asyncio.wait([add, started], return_when=asyncio.FIRST_COMPLETED)
        if started.done() and not add.done():
            add.cancel()
            assert (await asyncio.gather(add, return_exceptions=True))[0].__class__ is asyncio.CancelledError
            return
        started.cancel()
        await add
    raise AssertionError("no add waited for the summarizer")


async def test_a_caller_cancelling_its_add_is_not_a_summarizer_failure(tmp_path: Path) -> None:
    """An add cancelled by its caller (a client that went away) while the summarizer ran counted as a
    summarizer failure: two such cancellations opened the circuit (no model summaries for a minute) and
    each was a failed ``summarize`` in the monitor, raising the error rate the health checks judge."""
    hanging = ScriptedSummarizer(hang=True)
    config = _config(tmp_path, summarizer_timeout=30.0)
    async with EnhancedContextManager(config, summarizer=hanging) as manager:
        for _ in range(3):
            await _cancel_a_compressing_add(manager, hanging)
        status = manager.get_system_status()["summarizer"]
        assert status["state"] == "closed" and status["consecutive_failures"] == 0 and status["failures"] == 0
        monitor = manager.performance_monitor
        assert monitor is not None and "summarize" not in monitor.operation_stats()
        assert monitor.recent_error_rate() == (0.0, monitor.recent_error_rate()[1])
        hanging.release()
        await _fill(manager, compressions=1)
        assert manager.compression_history[-1]["strategy"] == "custom"


async def test_a_cancelled_trial_call_leaves_the_circuit_ready_for_another_trial() -> None:
    clock = ManualClock()
    flaky = Flaky()
    guard = SummarizerGuard(flaky, failure_threshold=1, cooldown=10.0, clock=clock)
    with pytest.raises(RuntimeError):
        await guard(MESSAGES, 50)
    assert guard.state is CircuitState.OPEN
    clock.now += 10.0
    gate = asyncio.Event()

    async def hanging(messages: Sequence[Message], budget_tokens: int) -> str:
        await gate.wait()
        return "late"

    guard.summarizer = hanging
    window = ContextWindow(200, summarizer=guard, summarizer_timeout=30.0)
    for number in range(40):
        add = asyncio.create_task(window.add(Message.create("user", f"note {number} " * 12)))
        await asyncio.sleep(0.01)
        if guard.state is CircuitState.HALF_OPEN:
            add.cancel()  # the trial's caller gives up
            await asyncio.gather(add, return_exceptions=True)
            break
        await add
    else:
        raise AssertionError("the trial call never started")
    assert guard.state is CircuitState.OPEN and guard.status()["retry_in"] == 0.0
    guard.summarizer = flaky
    flaky.failing = False
    assert await guard(MESSAGES, 50) == "a summary"  # the next call is the trial, not refused
    assert guard.state is CircuitState.CLOSED
