from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_manager.core.compression import TRUNCATED_METADATA_KEY
from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import (
    ContextBudgetError,
    InvalidArgumentError,
    LifecycleError,
    ToolCallPairingError,
)
from context_manager.core.messages import Message, Role, ToolCall
from context_manager.core.tokens import get_token_counter
from context_manager.core.tool_system import ToolErrorType, ToolResult
from context_manager.testing import ScriptedSummarizer
from tests.provider_rules import anthropic_violations, openai_violations

from .conftest import gated_tool

COUNTER = get_token_counter()


async def echo(n: int) -> str:
    """Return n words."""
    return " ".join(f"w{i}" for i in range(n))


async def add(a: int, b: int) -> int:
    return a + b


async def fail(reason: str = "boom") -> None:
    raise RuntimeError(reason)


def register_tools(manager: EnhancedContextManager) -> None:
    tools = manager.tool_manager
    tools.register_function_tool("echo", echo, "Echo words", max_output_tokens=40)
    tools.register_function_tool("echo_full", echo, "Echo words, uncut")
    tools.register_function_tool("add", add, "Add")
    tools.register_function_tool("fail", fail, "Fail")


@pytest.fixture
async def manager(tmp_path: Path) -> Any:
    context = EnhancedContextManager(ContextManagerConfig(max_tokens=2000, cache_path=tmp_path / "cache"))
    await context.initialize()
    register_tools(context)
    yield context
    await context.cleanup()


def tool_messages(manager: EnhancedContextManager) -> list[Message]:
    return [m for m in manager.messages if m.role is Role.TOOL]


async def test_execute_tool_delegates_and_needs_initialize(tmp_path: Path) -> None:
    context = EnhancedContextManager(ContextManagerConfig(cache_path=tmp_path))
    register_tools(context)
    with pytest.raises(LifecycleError, match="execute_tool"):
        await context.execute_tool("add", a=1, b=2)
    async with context:
        result = await context.execute_tool("add", a=1, b=2)
        assert result.success and result.result == 3
        assert (await context.execute_tool("missing")).error_type == "unknown_tool"
        assert context.tool_manager.get_tool_stats()["tools"]["add"]["calls"] == 1


async def test_calls_get_an_assistant_message_and_paired_results(manager: EnhancedContextManager) -> None:
    await manager.add_message("user", "Please add and echo")
    results = await manager.execute_tool_calls(
        [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
            },
            {"type": "tool_use", "id": "toolu_b", "name": "fail", "input": {}},
        ],
        content="Let me compute that.",
    )
    assert [r.call_id for r in results] == ["call_a", "toolu_b"]
    assistant = manager.messages[1]
    assert assistant.role is Role.ASSISTANT and assistant.content == "Let me compute that."
    assert [c.id for c in assistant.tool_calls] == ["call_a", "toolu_b"]
    replies = tool_messages(manager)
    assert [(m.tool_call_id, m.content) for m in replies] == [
        ("call_a", "5"),
        ("toolu_b", "Error (tool_error): tool 'fail' raised RuntimeError: boom"),
    ]
    assert replies[1].metadata["error_type"] == "tool_error"
    anthropic = manager.get_context("anthropic")
    results_turn = anthropic["messages"][-1]["content"]  # type: ignore[call-overload]
    assert [block.get("is_error", False) for block in results_turn] == [False, True]
    assert manager.context_window.pending_tool_calls == frozenset()
    openai = manager.get_context("openai")
    assert [m["role"] for m in openai] == ["user", "assistant", "tool", "tool"]  # type: ignore[index]


async def test_existing_assistant_message_is_reused(manager: EnhancedContextManager) -> None:
    calls = [ToolCall(id="c1", name="add", arguments={"a": 1, "b": 1})]
    await manager.add_message("assistant", "", tool_calls=calls)
    results = await manager.execute_tool_calls(calls)
    assert results[0].result == 2
    assert [m.role for m in manager.messages] == [Role.ASSISTANT, Role.TOOL]


async def test_calls_just_run_or_partly_pending_are_rejected_without_change(
    manager: EnhancedContextManager,
) -> None:
    calls = [ToolCall(id="c1", name="add", arguments={"a": 1, "b": 1})]
    await manager.execute_tool_calls(calls)
    before = manager.messages
    # the calls of the newest assistant message, answered: a step run twice, never run again
    with pytest.raises(ToolCallPairingError, match=r"^calls: got \['c1'\].*already ran"):
        await manager.execute_tool_calls(calls)
    assert manager.messages == before
    await manager.add_message("assistant", "", tool_calls=[ToolCall(id="c2", name="add", arguments={})])
    before = manager.messages
    with pytest.raises(ToolCallPairingError, match=r"^calls: got \['c2'\].*only part of them is pending"):
        third = ToolCall(id="c3", name="add", arguments={"a": 1, "b": 2})
        await manager.execute_tool_calls([ToolCall(id="c2", name="add", arguments={}), third])
    assert manager.messages == before


async def test_long_results_are_cut_in_the_window_only(manager: EnhancedContextManager) -> None:
    truncated = await manager.execute_tool_calls([ToolCall(id="c1", name="echo", arguments={"n": 200})])
    full = truncated[0].result
    assert isinstance(full, str) and len(full.split()) == 200
    message = tool_messages(manager)[0]
    counter = manager.context_window.counter
    assert counter.count(message.content) <= 40
    assert message.content.endswith("tokens shown]") and "of " in message.content
    assert message.metadata["truncated"] is True
    assert message.metadata["original_tokens"] == counter.count(full)
    assert full.startswith(message.content.split("\n[")[0])
    uncut = await manager.execute_tool_calls([ToolCall(id="c2", name="echo_full", arguments={"n": 200})])
    assert tool_messages(manager)[1].content == uncut[0].result


async def test_unparseable_arguments_still_get_a_paired_result(manager: EnhancedContextManager) -> None:
    results = await manager.execute_tool_calls(
        [{"id": "bad", "type": "function", "function": {"name": "add", "arguments": "{oops"}}]
    )
    assert results[0].error_type == "invalid_arguments"
    message = tool_messages(manager)[0]
    assert message.tool_call_id == "bad"
    assert message.content.startswith("Error (invalid_arguments)")


# ---------------------------------------------------------------- property: pairing and budget invariants

_ids = itertools.count()

call_strategy = st.tuples(
    st.sampled_from(["openai", "anthropic", "toolcall", "openai_bad_json"]),
    st.sampled_from(["echo", "echo_full", "add", "fail", "no_such_tool"]),
    st.integers(min_value=0, max_value=400),
    st.booleans(),
)
batch_strategy = st.tuples(
    st.integers(min_value=0, max_value=60),  # words of a user message sent before the batch
    st.lists(call_strategy, min_size=1, max_size=4),
)


def make_call(kind: str, name: str, size: int, valid: bool) -> tuple[str, Any]:
    call_id = f"call_{next(_ids)}"
    if name in ("echo", "echo_full"):
        arguments: dict[str, Any] = {"n": size} if valid else {"n": "many"}
    elif name == "add":
        arguments = {"a": size, "b": 1} if valid else {"a": "x"}
    else:
        arguments = {}
    if kind == "openai":
        return call_id, {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
    if kind == "openai_bad_json":
        return call_id, {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{nope"}}
    if kind == "anthropic":
        return call_id, {"type": "tool_use", "id": call_id, "name": name, "input": arguments}
    return call_id, ToolCall(id=call_id, name=name, arguments=arguments)


def check_window(manager: EnhancedContextManager) -> None:
    window = manager.context_window
    assert window.token_count <= window.max_tokens
    seen_calls: set[str] = set()
    answered: Counter[str] = Counter()
    for message in window.messages:
        if message.role is Role.TOOL:
            assert message.tool_call_id in seen_calls, "tool result without its call"
            answered[message.tool_call_id] += 1  # type: ignore[index]
        seen_calls.update(call.id for call in message.tool_calls)
    assert all(count == 1 for count in answered.values()), "a call answered twice"
    assert window.pending_tool_calls == frozenset(), "a call left without its result"
    assert set(answered) == seen_calls


def check_results_match_messages(manager: EnhancedContextManager, results: list[ToolResult]) -> None:
    """Each call's one result message carries that call's outcome (whole, cut with a marker, or omitted).

    Compression may later cut a kept result in its middle; such a message is only checked for its outcome.
    """
    by_call = {m.tool_call_id: m for m in manager.messages if m.role is Role.TOOL}
    for result in results:
        message = by_call[result.call_id]
        assert message.metadata["success"] is result.success
        assert message.metadata["error_type"] == (
            None if result.error_type is None else result.error_type.value
        )
        full = result.to_content()
        if TRUNCATED_METADATA_KEY in message.metadata:
            continue  # compression cut it afterwards (head + tail around its own marker)
        if message.metadata.get("omitted"):
            assert message.content.startswith("[tool output omitted")
        elif message.metadata.get("truncated"):
            head, marker = message.content.rsplit("\n[tool output truncated: ", 1)
            assert full.startswith(head) and marker.endswith(" tokens shown]")
        else:
            assert message.content == full


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(max_tokens=st.integers(min_value=250, max_value=1200), batches=st.lists(batch_strategy, max_size=5))
def test_every_call_gets_exactly_one_paired_result(
    max_tokens: int, batches: list[tuple[int, list[tuple[str, str, int, bool]]]]
) -> None:
    async def scenario(directory: str) -> None:
        config = ContextManagerConfig(max_tokens=max_tokens, cache_path=directory)
        async with EnhancedContextManager(config) as manager:
            register_tools(manager)
            for user_words, specs in batches:
                if user_words:
                    await manager.add_message("user", " ".join(["hello"] * user_words))
                made = [make_call(*spec) for spec in specs]
                results: list[ToolResult] = await manager.execute_tool_calls([call for _, call in made])
                assert [r.call_id for r in results] == [call_id for call_id, _ in made]
                check_window(manager)
                in_window = {call.id for m in manager.messages for call in m.tool_calls}
                batch_ids = {call_id for call_id, _ in made}
                # a unit is kept or evicted whole
                assert batch_ids <= in_window or not (batch_ids & in_window)
                if batch_ids <= in_window:
                    check_results_match_messages(manager, results)

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(directory))


async def test_tool_calls_are_recorded_by_running_monitors(manager: EnhancedContextManager) -> None:
    from context_manager.core.performance_monitor import PerformanceMonitor

    monitor = PerformanceMonitor(sample_interval=60.0)
    await monitor.start_monitoring()
    try:
        await manager.execute_tool("add", a=1, b=2)
        await manager.execute_tool("add", a="x", b=2)
        await manager.execute_tool_calls([ToolCall(id="m1", name="add", arguments={"a": 1, "b": 1})])
    finally:
        await monitor.stop_monitoring()
    stats = monitor.operation_stats()["execute_tool"]
    assert (stats.count, stats.successes, stats.failures) == (3, 2, 1)
    assert monitor.recent_errors()[-1]["message"] == "invalid_arguments (add)"


async def test_message_added_while_tools_run_keeps_the_result_next_to_its_call(tmp_path: Path) -> None:
    """Issue 18.2: a user message added while the tools run used to land between the call and its result."""
    slow, started, release = gated_tool()
    config = ContextManagerConfig(max_tokens=2000, cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("slow", slow, "Slow")
        await context.add_message("user", "Look it up.")
        task = asyncio.create_task(
            context.execute_tool_calls([ToolCall(id="c1", name="slow", arguments={"x": 1})])
        )
        await started.wait()
        await context.add_message("user", "Also, hurry.")
        # while the call waits, exports leave it out (an unanswered call breaks both APIs)
        assert openai_violations(context.get_context(format="openai")) == []  # type: ignore[arg-type]
        assert anthropic_violations(context.get_context(format="anthropic")) == []  # type: ignore[arg-type]
        release.set()
        await task
        roles = [(m.role, m.tool_call_id) for m in context.messages]
        assert roles == [(Role.USER, None), (Role.ASSISTANT, None), (Role.TOOL, "c1"), (Role.USER, None)]
        openai = context.get_context(format="openai")
        assert [m["role"] for m in openai] == ["user", "assistant", "tool", "user"]  # type: ignore[index]
        assert openai_violations(openai) == []  # type: ignore[arg-type]
        anthropic = context.get_context(format="anthropic")
        assert anthropic_violations(anthropic) == []  # type: ignore[arg-type]
        last_turn = anthropic["messages"][-1]["content"]  # type: ignore[call-overload,index]
        assert [block["type"] for block in last_turn] == ["tool_result", "text"]


async def test_a_call_waiting_for_its_result_is_not_evicted(tmp_path: Path) -> None:
    slow, started, release = gated_tool()
    config = ContextManagerConfig(max_tokens=300, cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("slow", slow, "Slow")
        task = asyncio.create_task(
            context.execute_tool_calls([ToolCall(id="c1", name="slow", arguments={"x": 1})])
        )
        await started.wait()
        assert context.context_window.pending_tool_calls == frozenset({"c1"})
        for _ in range(10):  # the conversation moves on; compressions keep the waiting call
            await context.add_message("user", " ".join(["hello"] * 60))
        assert context.compression_history
        assert context.context_window.pending_tool_calls == frozenset({"c1"})
        release.set()
        results = await task
        assert results[0].success and results[0].result == 1
        messages = context.messages
        call_at = next(i for i, m in enumerate(messages) if m.tool_calls)
        assert messages[call_at + 1].tool_call_id == "c1"  # the result right after its call
        check_window(context)
        assert openai_violations(context.get_context(format="openai")) == []  # type: ignore[arg-type]


# -- random interleavings: exports always follow the providers' rules -----------------------------------

interleaving_step = st.one_of(
    st.tuples(st.just("user"), st.integers(min_value=1, max_value=120)),
    st.tuples(st.just("assistant"), st.integers(min_value=1, max_value=120)),
    st.tuples(st.just("calls"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("release"), st.integers(min_value=0, max_value=5)),
    st.tuples(st.just("export"), st.integers(min_value=40, max_value=900)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_tokens=st.integers(min_value=300, max_value=1500),
    steps=st.lists(interleaving_step, min_size=1, max_size=25),
)
def test_exports_follow_provider_rules_whatever_the_interleaving(
    max_tokens: int, steps: list[tuple[str, int]]
) -> None:
    async def scenario(directory: str) -> None:
        config = ContextManagerConfig(max_tokens=max_tokens, cache_path=directory)
        async with EnhancedContextManager(config) as manager:
            gates: list[asyncio.Event] = []

            async def gated(x: int) -> str:
                gate = asyncio.Event()
                gates.append(gate)
                await gate.wait()
                return "result " + " ".join(["data"] * x)

            manager.tool_manager.register_function_tool("gated", gated, "Waits for the test")
            running: list[asyncio.Task[list[ToolResult]]] = []
            numbers = itertools.count()

            def check_exports(budget: int | None = None) -> None:
                try:
                    openai = manager.get_context(format="openai", budget=budget)
                    anthropic = manager.get_context(format="anthropic", budget=budget)
                except ContextBudgetError:
                    return
                assert openai_violations(openai) == []  # type: ignore[arg-type]
                assert anthropic_violations(anthropic) == []  # type: ignore[arg-type]

            for kind, amount in steps:
                if kind in ("user", "assistant"):
                    with contextlib.suppress(ContextBudgetError):
                        await manager.add_message(kind, " ".join(["word"] * amount))
                elif kind == "calls":
                    # every other id as some OpenAI-compatible servers make them ("functions.gated:3"),
                    # which Anthropic refuses as a tool_use id unless the export maps it
                    calls = [
                        ToolCall(
                            id=f"c{n}" if n % 2 else f"functions.gated:{n}", name="gated", arguments={"x": 3}
                        )
                        for n in itertools.islice(numbers, amount)
                    ]
                    running.append(asyncio.create_task(manager.execute_tool_calls(calls)))
                    for _ in range(3):
                        await asyncio.sleep(0)  # let it add the call and start the tools
                elif kind == "release":
                    for gate in gates[:amount]:
                        gate.set()
                    del gates[:amount]
                    for _ in range(5):
                        await asyncio.sleep(0)
                else:
                    check_exports(amount)
                check_exports()
                window = manager.context_window
                assert window.token_count <= window.max_tokens
            for gate in gates:
                gate.set()
            while gates or not all(task.done() for task in running):
                for gate in gates:
                    gate.set()
                gates.clear()
                await asyncio.sleep(0)
            for task in running:
                task.result()
            check_exports()
            check_window(manager)

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(directory))


async def test_megabyte_outputs_are_cut_without_holding_the_loop() -> None:
    """Issue 18.8: 200 outputs of 1.3 MB took 16 s on the loop and left 474 MB in the count cache."""
    from context_manager.core.context_window import ContextWindow
    from context_manager.core.tokens import ExactTokenCounter
    from context_manager.core.tool_system import ToolManager
    from context_manager.core.tool_system.window_calls import execute_tool_calls_in_window

    output = "".join(f"row {i}: status ok, latency {i % 97} ms, region eu-{i % 5}\n" for i in range(30_000))
    assert len(output) > 1_200_000

    async def dump(part: int) -> str:
        """Return a megabyte of log rows."""
        return f"part {part}\n" + output

    tools = ToolManager()
    tools.register_function_tool("dump", dump, "Dump logs", max_output_tokens=800)
    counter = ExactTokenCounter("o200k_base")
    window = ContextWindow(max_tokens=8000, counter=counter)
    steps: list[float] = []

    async def ticker() -> None:  # the loop thread's CPU time between two turns of this task
        while True:
            started = time.thread_time()
            await asyncio.sleep(0)
            steps.append(time.thread_time() - started)

    ticking = asyncio.create_task(ticker())
    try:
        for part in range(8):
            calls = [ToolCall(id=f"d{part}", name="dump", arguments={"part": part})]
            [result] = await execute_tool_calls_in_window(tools, window, calls)
            assert result.success
            message = window.messages[-1]
            assert message.metadata["truncated"] and message.token_count <= 800 + 10
            assert message.content.startswith(f"part {part}\nrow 0: status ok")
    finally:
        ticking.cancel()
    assert max(steps) < 0.02, f"the loop was held {max(steps) * 1000:.1f} ms of CPU time"
    assert counter.cache_chars <= 2_000_000


# -- calls that will never get their result ---------------------------------------------------------------


async def test_calls_of_a_cancelled_execution_stay_pending_until_cancelled(tmp_path: Path) -> None:
    """A cancelled execute_tool_calls leaves its calls pending: never evicted, left out of exports, for
    good. cancel_tool_calls answers them with failed results, so compression can evict them again."""
    slow, started, release = gated_tool()
    config = ContextManagerConfig(max_tokens=300, cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("slow", slow, "Slow")
        await context.add_message("user", "Look both up.")
        task = asyncio.create_task(
            context.execute_tool_calls(
                [
                    ToolCall(id="c1", name="slow", arguments={"x": 1}),
                    ToolCall(id="c2", name="slow", arguments={"x": 2}),
                ]
            )
        )
        await started.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert [(call.id, call.arguments) for call in context.pending_tool_calls()] == [
            ("c1", {"x": 1}),
            ("c2", {"x": 2}),
        ]
        for _ in range(6):
            await context.add_message("user", " ".join(["hello"] * 60))
        assert context.compression_history
        assert context.context_window.pending_tool_calls == frozenset(
            {"c1", "c2"}
        )  # kept by every compression

        # bad calls change nothing
        before = context.messages
        with pytest.raises(ToolCallPairingError, match="c9.*still pending.*c1, c2"):
            await context.cancel_tool_calls(["c1", "c9"])
        with pytest.raises(InvalidArgumentError, match="reason"):
            await context.cancel_tool_calls(reason=" ")
        with pytest.raises(InvalidArgumentError, match="call_ids"):
            await context.cancel_tool_calls("c1")  # type: ignore[arg-type]
        assert context.messages == before

        results = await context.cancel_tool_calls(["c2"], reason="worker restarted")
        assert [(r.success, r.error_type, r.error, r.call_id, r.tool_name) for r in results] == [
            (False, ToolErrorType.CANCELLED, "worker restarted", "c2", "slow")
        ]
        assert [call.id for call in context.pending_tool_calls()] == ["c1"]
        release.set()  # or run a pending call again
        results = await context.execute_tool_calls(context.pending_tool_calls())
        assert [(r.call_id, r.success, r.result) for r in results] == [("c1", True, 1)]
        assert context.pending_tool_calls() == [] and await context.cancel_tool_calls() == []
        messages = context.messages
        call_at = next(i for i, m in enumerate(messages) if m.tool_calls)
        answers = messages[call_at + 1 : call_at + 3]
        assert [m.tool_call_id for m in answers] == ["c2", "c1"]  # right after the call, as answered
        assert answers[0].content == "Error (cancelled): worker restarted"
        assert answers[1].content == "1" and answers[1].metadata["success"] is True
        assert answers[0].metadata["error_type"] == "cancelled" and answers[0].metadata["is_error"] is True
        openai = context.get_context(format="openai")
        assert openai_violations(openai) == []  # type: ignore[arg-type]
        assert [m.get("tool_call_id") for m in openai if m["role"] == "tool"] == ["c2", "c1"]  # type: ignore[index,union-attr]
        anthropic = context.get_context(format="anthropic")
        assert anthropic_violations(anthropic) == []  # type: ignore[arg-type]
        blocks = [b for turn in anthropic["messages"] for b in turn["content"] if isinstance(b, dict)]  # type: ignore[call-overload,index]
        assert [b.get("is_error") for b in blocks if b["type"] == "tool_result"] == [True, None]

        # answered, the unit is an ordinary one: the conversation moving on evicts it
        for _ in range(6):
            await context.add_message("user", " ".join(["hello"] * 60))
        assert not any(m.tool_calls or m.role is Role.TOOL for m in context.messages)
        check_window(context)


async def test_cleanup_waits_for_tools_still_running(tmp_path: Path) -> None:
    """cleanup() while execute_tool_calls ran: the call returned success afterwards, but its result came
    into a window whose eviction writer had stopped, so what that result evicted never reached memory."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(x: int) -> str:
        started.set()
        await release.wait()
        return "tool output " + " ".join(f"word{i}" for i in range(60))

    config = ContextManagerConfig(max_tokens=300, cache_path=tmp_path / "cache", embedder="none")
    context = EnhancedContextManager(config)
    await context.initialize()
    context.tool_manager.register_function_tool("slow", slow, "Slow")
    await context.add_message("user", "Project zebracorn ships on Friday at noon, remember that.")
    for number in range(14):
        await context.add_message("user", f"filler question number {number} about the weather today")
    compressions = len(context.compression_history)
    running = asyncio.create_task(
        context.execute_tool_calls([ToolCall(id="c1", name="slow", arguments={"x": 7})])
    )
    await started.wait()
    closing = asyncio.create_task(context.cleanup())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the tool
    with pytest.raises(LifecycleError):  # while no new change may start
        await context.add_message("user", "too late")
    release.set()
    await closing
    [result] = await running
    assert result.success and result.result.startswith("tool output")
    # the result made room: the zebracorn message was evicted by it
    assert len(context.compression_history) > compressions
    async with EnhancedContextManager(config) as reopened:
        memories = await reopened.search_memory("zebracorn Friday noon", limit=5)
        assert any("zebracorn" in memory.content for memory in memories)


async def test_cleanup_cancels_a_change_still_waiting_past_the_tool_time_limit(tmp_path: Path) -> None:
    """An approval callback may wait for a person: cleanup() waits max_tool_timeout (+1 s), then cancels."""
    asked = asyncio.Event()

    async def approval(definition: Any, arguments: dict[str, Any]) -> bool:
        asked.set()
        await asyncio.Event().wait()  # nobody answers
        return True

    config = ContextManagerConfig(max_tokens=2000, cache_path=tmp_path / "cache", max_tool_timeout=0.2)
    context = EnhancedContextManager(config)
    await context.initialize()
    context.tool_manager.register_function_tool("danger", add, "Add", permission="dangerous")
    context.tool_manager.approval_callback = approval
    running = asyncio.create_task(
        context.execute_tool_calls([ToolCall(id="c1", name="danger", arguments={"a": 1, "b": 2})])
    )
    await asked.wait()
    started = time.perf_counter()
    await context.cleanup()
    assert 1.1 <= time.perf_counter() - started < 5
    with pytest.raises(asyncio.CancelledError):
        await running


# -- tools that ran: their results are never lost ----------------------------------------------------------


async def test_calls_whose_answers_cannot_fit_raise_before_anything_runs(tmp_path: Path) -> None:
    """A system message fills most of the budget: the budget error came after the tools ran (a card charged
    twice), their results lost and both calls pending. Now it comes first: nothing runs, nothing changes."""
    charged: list[int] = []

    async def charge_card(amount: int) -> str:
        charged.append(amount)
        return f"charged {amount} EUR, receipt R-{amount}"

    config = ContextManagerConfig(max_tokens=150, cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("charge_card", charge_card, "Charge a card")
        await context.add_message("system", "rule " * 110)  # protected: ~113 of 150 tokens
        await context.add_message("user", "pay both")
        calls = [
            {"type": "tool_use", "id": "toolu_1", "name": "charge_card", "input": {"amount": 10}},
            {"type": "tool_use", "id": "toolu_2", "name": "charge_card", "input": {"amount": 20}},
        ]
        before = context.messages
        with pytest.raises(ContextBudgetError, match="max_tokens: got 150; allowed at least"):
            await context.execute_tool_calls(calls)
        assert charged == []  # nothing ran
        assert context.messages == before and context.pending_tool_calls() == []

        # the same when the model's calls are already in the window: they do not run, and stay pending
        await context.add_message("assistant", "", tool_calls=calls)
        before = context.messages
        with pytest.raises(ContextBudgetError, match="max_tokens: got 150; allowed at least"):
            await context.execute_tool_calls(calls)
        assert charged == [] and context.messages == before
        assert [call.id for call in context.pending_tool_calls()] == ["toolu_1", "toolu_2"]


async def test_a_lone_pending_call_without_room_for_its_answer_does_not_run(tmp_path: Path) -> None:
    """A pinned message fills the window behind a pending call: running the call again ran the tool, then
    its answer did not fit (a warning blamed messages added while the tools ran; none were) and the call
    stayed pending, so every retry ran the tool once more. Now the budget error comes first."""
    charged: list[int] = []

    async def charge_card(amount: int) -> str:
        charged.append(amount)
        return f"charged {amount} EUR"

    config = ContextManagerConfig(max_tokens=200, cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("charge_card", charge_card, "Charge a card")
        call = ToolCall(id="c1", name="charge_card", arguments={"amount": 10})
        await context.add_message("assistant", "", tool_calls=[call])
        room = config.max_tokens - context.context_window.token_count
        words = 1
        while COUNTER.count_message(Message.create("user", "word " * (words + 1), pinned=True)) <= room:
            words += 1
        await context.add_message("user", "word " * words, pinned=True)  # the window is full
        before = context.messages
        with pytest.raises(ContextBudgetError, match="max_tokens: got 200; allowed at least"):
            await context.execute_tool_calls([call])
        assert charged == []  # nothing ran
        assert context.messages == before and context.pending_tool_calls() == [call]
        with pytest.raises(ContextBudgetError, match="max_tokens: got 200; allowed at least"):
            await context.cancel_tool_calls()
        context.unpin_message(before[-1].id)  # room again: the call runs once, and is answered
        results = await context.execute_tool_calls([call])
        assert results[0].success and charged == [10] and context.pending_tool_calls() == []


async def _fits(state: list[Message], extra: list[Message]) -> bool:
    """Whether ``extra`` fits in a window of 200 tokens holding ``state`` (tried on a probe window)."""
    from context_manager.core.context_window import ContextWindow

    probe = ContextWindow(max_tokens=200)
    await probe.extend([dataclasses.replace(m) for m in state])
    try:
        await probe.extend([dataclasses.replace(m) for m in extra])
    except ContextBudgetError:
        return False
    return True


async def _window_with_room_for(smallest_fits: bool, omitted_fits: bool) -> tuple[Any, list[ToolCall]]:
    """A window whose system message leaves room for two empty answers (``smallest_fits``) and for two
    omitted-marker answers (``omitted_fits``), found with the window's own planner and the real tokenizer."""
    from context_manager.core.context_window import ContextWindow
    from context_manager.core.tool_system.window_calls import OMITTED_CONTENT

    calls = [ToolCall(id=f"c{n}", name="report", arguments={"n": n}) for n in (1, 2)]
    for words in range(40, 200):
        state = [Message.create("system", "rule " * words), Message.create("user", "run both")]
        assistant = Message.create("assistant", "", tool_calls=calls)
        fits = [
            await _fits(state, [assistant, *[Message.create("tool", text, tool_call_id=c.id) for c in calls]])
            for text in ("", OMITTED_CONTENT)
        ]
        if fits == [smallest_fits, omitted_fits]:
            window = ContextWindow(max_tokens=200)
            await window.extend(state)
            return window, calls
    raise AssertionError("no such window")


async def test_results_that_fit_only_without_text_are_added_as_empty_omitted_answers() -> None:
    """Results that cannot fit even cut to the omitted marker answer their call with no text (metadata
    ``omitted``): the calls are answered, the outputs returned and handed to ``on_truncated``."""
    from context_manager.core.tool_system import ToolManager
    from context_manager.core.tool_system.window_calls import execute_tool_calls_in_window

    window, calls = await _window_with_room_for(smallest_fits=True, omitted_fits=False)
    ran: list[int] = []

    async def report(n: int) -> str:
        ran.append(n)
        return f"report {n}: " + "figures " * 300

    tools = ToolManager()
    tools.register_function_tool("report", report, "A long report")
    handed: list[tuple[str, str]] = []
    results = await execute_tool_calls_in_window(
        tools, window, calls, on_truncated=lambda call, result, text: handed.append((call.id, text))
    )
    assert ran == [1, 2] and [r.success for r in results] == [True, True]
    assert results[0].result.startswith("report 1: figures")  # returned whole
    answers = [m for m in window.messages if m.role is Role.TOOL]
    assert [m.tool_call_id for m in answers] == ["c1", "c2"]
    assert all(m.metadata["omitted"] is True and m.metadata["success"] is True for m in answers)
    assert any(m.content == "" for m in answers)
    assert window.pending_tool_calls == frozenset() and window.token_count <= window.max_tokens
    assert [(call_id, text[:9]) for call_id, text in handed] == [("c1", "report 1:"), ("c2", "report 2:")]
    from context_manager.core.provider_formats import to_anthropic_messages, to_openai_messages

    assert openai_violations(to_openai_messages(window.messages)) == []
    assert anthropic_violations(to_anthropic_messages(window.messages)) == []


async def test_results_crowded_out_while_the_tools_ran_are_returned_and_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Protected messages added while the tools run take the room their answers needed: the results
    are still returned and handed to ``on_truncated`` (memory), a warning says the calls stay pending."""
    from context_manager.core.tool_system import ToolManager
    from context_manager.core.tool_system.window_calls import execute_tool_calls_in_window

    slow, started, release = gated_tool()
    window, calls = await _window_with_room_for(smallest_fits=True, omitted_fits=True)
    tools = ToolManager()
    tools.register_function_tool("report", slow, "Slow")
    calls = [ToolCall(id=call.id, name="report", arguments={"x": n}) for n, call in enumerate(calls, 1)]
    handed: list[str] = []
    task = asyncio.create_task(
        execute_tool_calls_in_window(tools, window, calls, on_truncated=lambda c, r, t: handed.append(c.id))
    )
    await started.wait()
    # the calls' message pinned (its answers can no longer be evicted with it) and a system message that
    # fits now, but leaves no room for the two answers
    window.pin(next(m.id for m in window.messages if m.tool_calls))
    smallest = [Message.create("tool", "", tool_call_id=call.id) for call in calls]

    state = list(window.messages)
    for words in range(1, 200):
        rule = Message.create("system", "also " * words)
        assert await _fits(state, [rule])  # fits alone (else there is no such message)
        if not await _fits(state, [rule, *smallest]):
            break
    else:
        raise AssertionError("no such system message")
    await window.add(rule)
    release.set()
    with caplog.at_level(logging.WARNING, logger="context_manager"):
        results = await task
    assert [(r.call_id, r.success, r.result) for r in results] == [("c1", True, 1), ("c2", True, 2)]
    assert handed == ["c1", "c2"]
    assert window.pending_tool_calls == frozenset({"c1", "c2"})
    assert "returned but not added, the calls stay pending" in caplog.text
    assert window.token_count <= window.max_tokens


async def test_cancel_queued_behind_a_compression_does_not_break_the_running_execution(
    tmp_path: Path,
) -> None:
    """cancel_tool_calls(["c1"]) waits for the window behind a compression while c1 and c2 run; the
    execution then found c1 answered under the window's lock and raised ToolCallPairingError after both tools
    ran, c2's result lost and c2 pending for good. c1 keeps its cancelled answer, c2 gets its result."""
    slow, started, release = gated_tool()
    summarizer = ScriptedSummarizer(default="summary", hang=True)
    config = ContextManagerConfig(max_tokens=400, cache_path=tmp_path / "cache", summarizer_timeout=30)
    async with EnhancedContextManager(config, summarizer=summarizer) as context:
        context.tool_manager.register_function_tool("slow", slow, "Slow")
        await context.add_message("user", "please do two things")
        calls = [ToolCall(id=f"c{n}", name="slow", arguments={"x": n}) for n in (1, 2)]
        execution = asyncio.create_task(context.execute_tool_calls(calls))
        await started.wait()
        window = context.context_window
        number = 0
        while window.token_count < 330:
            await context.add_message("user", f"filler {number} " + "x " * 5)
            number += 1
        compressing = asyncio.create_task(context.add_message("user", "big " * 60))
        await summarizer.started.wait()  # the compression holds the window
        cancelling = asyncio.create_task(context.cancel_tool_calls(["c1"]))
        for _ in range(20):
            await asyncio.sleep(0)
        release.set()  # both tools return; the execution queues its results behind the cancel
        for _ in range(20):
            await asyncio.sleep(0)
        assert window._queued == 2  # precondition: the cancel and the execution both wait for the window
        summarizer.release()
        await compressing
        cancelled = await cancelling
        results = await execution
        assert [(r.call_id, r.success) for r in cancelled] == [("c1", False)]
        assert [(r.call_id, r.success, r.result) for r in results] == [("c1", True, 1), ("c2", True, 2)]
        assert context.pending_tool_calls() == []
        answers = {m.tool_call_id: m for m in context.messages if m.role is Role.TOOL}
        assert answers["c1"].metadata["error_type"] == "cancelled" and answers["c2"].content == "2"
        assert openai_violations(context.get_context(format="openai")) == []  # type: ignore[arg-type]
        assert anthropic_violations(context.get_context(format="anthropic")) == []  # type: ignore[arg-type]


async def test_a_cleanup_cancelled_while_it_waits_for_tools_still_releases_everything(tmp_path: Path) -> None:
    """cleanup() under the caller's time limit, a tool still running: the cancelled cleanup had marked the
    manager closed without stopping anything, so a second cleanup() did nothing and the storage stayed
    locked in this process."""
    slow, started, release = gated_tool()
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    context = EnhancedContextManager(config, conversation_id="c")
    await context.initialize()
    context.tool_manager.register_function_tool("slow", slow, "Slow")
    await context.add_message("user", "go")
    running = asyncio.create_task(
        context.execute_tool_calls([ToolCall(id="c1", name="slow", arguments={"x": 1})])
    )
    await started.wait()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(context.cleanup(), 0.2)
    await context.cleanup()
    async with EnhancedContextManager(config, conversation_id="c") as reopened:  # the lock was released
        assert [m.content for m in reopened.messages][0] == "go"
    release.set()
    assert [result.result for result in await running] == [1]


async def test_a_tool_that_calls_cleanup_is_not_waited_for_by_it(tmp_path: Path) -> None:
    """An "end session" tool calling cleanup(): cleanup waited for the change running this very tool, until
    the tool's own timeout cancelled both."""
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none", max_tool_timeout=2.0)
    context = EnhancedContextManager(config)

    async def end_session() -> str:
        await context.cleanup()
        return "bye"

    await context.initialize()
    context.tool_manager.register_function_tool("end_session", end_session, "End the session")
    await context.add_message("user", "bye")
    started = time.perf_counter()
    [result] = await context.execute_tool_calls([ToolCall(id="c1", name="end_session", arguments={})])
    assert result.success and result.result == "bye"
    assert time.perf_counter() - started < 1.5
    assert context.get_system_status()["state"] == "closed"


async def test_calls_already_running_are_not_run_a_second_time(tmp_path: Path) -> None:
    """Two execute_tool_calls with the same pending calls (a retried request, say) both ran the tools:
    every side effect happened twice, and the second results were dropped."""
    runs: list[int] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def charge(amount: int) -> str:
        runs.append(amount)
        started.set()
        await release.wait()
        return f"charged {amount}"

    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("charge", charge, "Charge a card")
        await context.add_message("user", "pay the invoice")
        calls = [ToolCall(id="c1", name="charge", arguments={"amount": 42})]
        first = asyncio.create_task(context.execute_tool_calls(calls))
        await started.wait()
        before = context.messages
        with pytest.raises(ToolCallPairingError, match="c1.*already running"):
            await context.execute_tool_calls(calls)
        assert context.messages == before
        release.set()
        assert [result.result for result in await first] == ["charged 42"]
        assert runs == [42]
        assert context.pending_tool_calls() == []
        # once done, the same ids are answered calls: refused as before, never run again
        with pytest.raises(ToolCallPairingError):
            await context.execute_tool_calls(calls)
        assert runs == [42]


async def test_a_tool_changing_its_arguments_leaves_the_calls_in_the_window_as_the_model_made_them(
    manager: EnhancedContextManager,
) -> None:
    """The tools got the window's own argument values: one sorting a list it was given, or popping a key of
    a nested object, rewrote what the model asked for in the history (exports, memory, a rerun)."""

    async def sort_items(parameters: dict[str, Any]) -> list[str]:
        parameters["items"].sort()
        parameters["items"].append("added")
        return list(parameters["items"])

    async def configure(options: Any) -> str:
        return str(options.pop("mode"))

    manager.tool_manager.register_function_tool("sort_items", sort_items, "Sort")
    manager.tool_manager.register_function_tool("configure", configure, "Configure")
    await manager.add_message("user", "Sort and configure")
    calls = [
        {"type": "tool_use", "id": "toolu_1", "name": "sort_items", "input": {"items": ["b", "a"]}},
        {"type": "tool_use", "id": "toolu_2", "name": "configure", "input": {"options": {"mode": "fast"}}},
        ToolCall("call_3", "configure", {"options": {"mode": "slow"}}),
    ]
    results = await manager.execute_tool_calls(calls)
    assert [r.result for r in results] == [["a", "b", "added"], "fast", "slow"]
    made = [call for message in manager.messages for call in message.tool_calls]
    assert [call.arguments for call in made] == [
        {"items": ["b", "a"]},
        {"options": {"mode": "fast"}},
        {"options": {"mode": "slow"}},
    ]
    exported = manager.get_context(format="anthropic")["messages"][1]["content"]
    assert [block["input"] for block in exported] == [call.arguments for call in made]

    # pending calls run again from the window's own ToolCall objects
    rerun = ToolCall("call_4", "sort_items", {"items": ["d", "c"]})
    await manager.add_message("assistant", "", tool_calls=[rerun])
    await manager.execute_tool_calls(manager.pending_tool_calls())
    assert manager.messages[-2].tool_calls[0].arguments == {"items": ["d", "c"]}


async def test_a_result_or_error_with_a_nul_or_a_lone_surrogate_is_answered_not_lost(
    manager: EnhancedContextManager,
) -> None:
    """A tool's text with a NUL (a subprocess's output) or a lone surrogate (a file name read with
    ``surrogateescape``) could not be a message: execute_tool_calls raised InvalidMessageError after the
    tools ran, their results were lost and the calls stayed pending."""

    async def run(command: str) -> str:
        if command == "raise":
            raise OSError("device \x00 gone")
        return {"nul": "exit\x00code 0", "surrogate": "file-\udcff.txt"}[command]

    manager.tool_manager.register_function_tool("run", run, "Run a command")
    manager.tool_manager.register_function_tool("run_cut", run, "Run, cut", max_output_tokens=2)
    await manager.add_message("user", "Run them")
    calls = [ToolCall(f"c_{n}", "run", {"command": n}) for n in ("nul", "surrogate", "raise")]
    results = await manager.execute_tool_calls([*calls, ToolCall("c_cut", "run_cut", {"command": "nul"})])
    assert [r.result for r in results] == ["exit\x00code 0", "file-\udcff.txt", None, "exit\x00code 0"]
    assert results[2].error_type == "tool_error"
    assert manager.pending_tool_calls() == []
    answers = [m.content for m in tool_messages(manager)]
    assert answers[:3] == [
        "exit\ufffdcode 0",
        "file-\ufffd.txt",
        "Error (tool_error): tool 'run' raised OSError: device \ufffd gone",
    ]
    assert answers[3].startswith("exit")
    full = await manager.search_memory("exit code", limit=5)
    assert any(memory.content == "exit\ufffdcode 0" for memory in full)
