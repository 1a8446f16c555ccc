from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import stat
import time
from pathlib import Path

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import (
    ContextBudgetError,
    InvalidArgumentError,
    InvalidMemoryError,
    InvalidMessageError,
    InvalidPriorityError,
    InvalidRoleError,
    LifecycleError,
    StorageError,
    ToolCallPairingError,
)
from context_manager.core.messages import Message, ToolCall
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, get_token_counter
from context_manager.testing import ScriptedSummarizer

HISTORY_KEYS = {
    "tokens_before",
    "tokens_after",
    "messages_before",
    "messages_after",
    "removed_count",
    "summary_tokens",
    "duration_ms",
    "timestamp",
    "strategy",
}


def make_config(tmp_path: Path, **overrides: object) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", **overrides)  # type: ignore[arg-type]


def state(manager: EnhancedContextManager) -> tuple[object, ...]:
    return (
        tuple((m.id, m.content, m.token_count) for m in manager.messages),
        manager.get_context_summary()["token_count"],
        len(manager.compression_history),
    )


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_initialize_creates_private_directories(tmp_path: Path) -> None:
    config = make_config(tmp_path, storage_path=tmp_path / "deep" / "store")
    manager = EnhancedContextManager(config)
    assert not config.cache_path.exists()  # constructing touches nothing
    await manager.initialize()
    try:
        for directory in (config.cache_path, tmp_path / "deep", tmp_path / "deep" / "store"):
            assert directory.is_dir()
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    finally:
        await manager.cleanup()


async def test_default_storage_path_is_under_cache(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with EnhancedContextManager(config):
        assert (config.cache_path / "storage").is_dir()


async def test_cache_path_that_became_a_file_raises_storage_error(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.cache_path.write_text("not a directory")
    manager = EnhancedContextManager(config)
    with pytest.raises(StorageError, match="is a file"):
        await manager.initialize()
    assert not manager.is_initialized


async def test_methods_before_initialize_and_after_cleanup_raise(tmp_path: Path) -> None:
    manager = EnhancedContextManager(make_config(tmp_path))
    with pytest.raises(LifecycleError, match="add_message: the context manager is not initialized"):
        await manager.add_message("user", "hi")
    with pytest.raises(LifecycleError, match="get_context_summary"):
        manager.get_context_summary()
    with pytest.raises(LifecycleError, match="get_context"):
        manager.get_context()
    assert manager.compression_history == []
    await manager.initialize()
    await manager.initialize()  # idempotent
    assert await manager.add_message("user", "hi") is True
    await manager.cleanup()
    await manager.cleanup()  # idempotent
    with pytest.raises(LifecycleError, match="cleaned up"):
        await manager.add_message("user", "again")
    with pytest.raises(LifecycleError, match="cleaned up"):
        await manager.initialize()
    status = manager.get_system_status()  # documented for every state, "closed" included
    assert status["state"] == "closed" and "context" not in status


@pytest.mark.parametrize(
    ("arguments", "options", "message"),
    [
        (
            (),
            {"max_tokens": 4000},
            "max_tokens: got 4000; allowed one of config, token_counter, summarizer, conversation_id, "
            "embedder, user_id (max_tokens is a ContextManagerConfig option: "
            "EnhancedContextManager(ContextManagerConfig(max_tokens=4000)))",
        ),
        (
            (),
            {"userid": "ana"},
            "userid: got 'ana'; allowed one of config, ... (unknown keyword; did you mean user_id?)",
        ),
        (
            ({"max_tokens": 4000},),
            {},
            "config: got {'max_tokens': 4000}; allowed a ContextManagerConfig or None (settings go in a "
            "ContextManagerConfig: EnhancedContextManager(ContextManagerConfig(**settings)))",
        ),
    ],
)
def test_settings_given_to_the_manager_are_pointed_at_the_config(
    arguments: tuple[object, ...],
    options: dict[str, object],
    message: str,
) -> None:
    """``EnhancedContextManager(max_tokens=4000)`` raised Python's bare ``TypeError: ... unexpected keyword
    argument 'max_tokens'``, and a dict of settings as ``config`` did not say where settings go."""
    before = sorted(Path.cwd().rglob("*"))  # the test's own working directory
    with pytest.raises(InvalidArgumentError) as caught:
        EnhancedContextManager(*arguments, **options)  # type: ignore[arg-type]
    head, _, tail = message.partition("...")
    assert str(caught.value).startswith(head) and str(caught.value).endswith(tail), str(caught.value)
    assert sorted(Path.cwd().rglob("*")) == before  # nothing created


async def test_concurrent_initialize_calls_are_serialised(tmp_path: Path) -> None:
    """Issue 18.3: two initialize() at once used to leave ``window: None`` and blame our own pid."""
    manager = EnhancedContextManager(make_config(tmp_path))
    try:
        await asyncio.gather(manager.initialize(), manager.initialize(), manager.initialize())
        assert manager.is_initialized
        assert await manager.add_message("user", "hello after a racing start")
        assert [m.content for m in manager.messages] == ["hello after a racing start"]
        assert manager.memory_manager.is_initialized
    finally:
        await manager.cleanup()
    # the storage lock was taken once and released once: a new manager opens the same storage
    async with EnhancedContextManager(make_config(tmp_path)) as again:
        assert again.is_initialized


async def test_cleanup_during_initialize_waits_and_then_cleans_up(tmp_path: Path) -> None:
    manager = EnhancedContextManager(make_config(tmp_path))
    starting = asyncio.create_task(manager.initialize())
    await asyncio.sleep(0)  # initialize() is under way (directories, memory opening in a thread)
    await manager.cleanup()
    await starting
    assert not manager.is_initialized and not manager.memory_manager.is_initialized
    with pytest.raises(LifecycleError, match="cleaned up"):
        await manager.add_message("user", "too late")
    async with EnhancedContextManager(make_config(tmp_path)) as again:  # nothing left locked
        assert again.is_initialized


async def test_cleanup_during_a_hanging_summary_writes_what_the_compression_evicted(tmp_path: Path) -> None:
    """An add caught in a hanging summarizer used to commit its compression seconds after cleanup()
    returned, queuing what it evicted for a writer already stopped: those messages never reached memory."""
    from context_manager.core.memory.manager import MemoryManager

    called, cancelled = asyncio.Event(), asyncio.Event()

    async def hanging(messages: list[Message], budget: int) -> str:
        called.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    config = make_config(tmp_path, max_tokens=300, summarizer_timeout=60)
    manager = EnhancedContextManager(config, summarizer=hanging)
    await manager.initialize()

    async def talk() -> int:
        for step in range(60):
            await manager.add_message(
                "user", f"note {step}: the tram 28 leaves Martim Moniz every twelve minutes"
            )
            if manager.compression_history:
                return step
        raise AssertionError("no compression")

    talking = asyncio.create_task(talk())
    await asyncio.wait_for(called.wait(), timeout=30)
    started = time.monotonic()
    await asyncio.wait_for(manager.cleanup(), timeout=30)
    assert time.monotonic() - started < 20  # not the summarizer's 60 s
    assert cancelled.is_set() and talking.done()
    await talking
    [record] = manager.compression_history
    assert record["strategy"] == "custom_failed_fallback_extractive"
    assert "draining" in record["error"]
    assert record["removed_count"] > 0
    async with MemoryManager(config) as memory:
        stored = await memory.search_memory("tram Martim Moniz", limit=50)
    assert len(stored) == record["removed_count"]


async def test_async_with(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        assert manager.is_initialized
        await manager.add_message("user", "hi")
    assert not manager.is_initialized


def test_constructor_rejects_wrong_types() -> None:
    with pytest.raises(InvalidArgumentError, match="config: got"):
        EnhancedContextManager({"max_tokens": 10})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="summarizer: got 'llm'"):
        EnhancedContextManager(summarizer="llm")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="token_counter"):
        EnhancedContextManager(token_counter=object())  # type: ignore[arg-type]


async def test_config_is_read_at_initialize(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    manager = EnhancedContextManager(config)
    config.max_tokens = 321
    async with manager:
        assert manager.get_context_summary()["max_tokens"] == 321


# -- messages ----------------------------------------------------------------------------------------


async def test_add_message_and_summary(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=1000)) as manager:
        await manager.add_message("system", "Be brief.")
        await manager.add_message(
            "user", "Important question", priority="high", metadata={"category": "technical"}
        )
        await manager.add_message("assistant", "Answer", pinned=True, name="bot")
        summary = manager.get_context_summary()
        counter = get_token_counter()
        expected = sum(counter.count_message(m) for m in manager.messages) + REPLY_PRIMING_TOKENS
        assert summary["message_count"] == 3
        assert summary["token_count"] == expected
        assert summary["max_tokens"] == 1000
        assert summary["utilization"] == pytest.approx(expected / 1000)
        assert summary["compression_count"] == 0
        assert summary["pinned_count"] == 1
        assert summary["token_encoding"] == "o200k_base"
        message = manager.messages[1]
        assert message.priority.value == "high" and message.metadata == {"category": "technical"}


async def test_tool_round_trip(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message("user", "2+2?")
        await manager.add_message(
            "assistant",
            "",
            tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"e":"2+2"}'}}
            ],
        )
        assert manager.get_context_summary()["pending_tool_calls"] == 1
        await manager.add_message("tool", "4", tool_call_id="c1")
        openai = manager.get_context("openai")
        assert openai[1]["tool_calls"][0]["function"] == {"name": "calc", "arguments": '{"e":"2+2"}'}
        assert openai[2] == {"role": "tool", "tool_call_id": "c1", "content": "4"}
        anthropic = manager.get_context(format="anthropic")
        assert anthropic["messages"][1]["content"][0]["type"] == "tool_use"
        assert anthropic["messages"][2]["content"][0]["type"] == "tool_result"


async def test_an_openai_export_is_added_back_as_it_is(tmp_path: Path) -> None:
    """The Chat Completions format gives a tool-call-only assistant message ``"content": null`` (our export
    does, as the OpenAI SDK's ``message.model_dump()``): ``add_messages`` rejected its own export."""
    call = {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"e":"2+2"}'}}
    async with EnhancedContextManager(make_config(tmp_path / "a")) as manager:
        await manager.add_message("system", "Be brief.")
        await manager.add_message("user", "2+2?")
        await manager.add_message("assistant", "", tool_calls=[call])
        await manager.add_message("tool", "4", tool_call_id="c1")
        await manager.add_message("assistant", "4.")
        exported = manager.get_context("openai")
    assert exported[2]["content"] is None
    async with EnhancedContextManager(make_config(tmp_path / "b")) as manager:
        assert await manager.add_messages(exported) == 5
        assert manager.get_context("openai") == exported
        assert manager.messages[2].content == ""
        await manager.add_message("assistant", None, tool_calls=[{**call, "id": "c2"}])  # as the SDK has it
        assert manager.messages[-1].content == "" and manager.messages[-1].tool_calls[0].id == "c2"
        before = state(manager)
        for role, options in (("assistant", {}), ("user", {"tool_calls": [{**call, "id": "c3"}]})):
            with pytest.raises(InvalidMessageError, match="content: got None; allowed a str"):
                await manager.add_message(role, None, **options)
        assert state(manager) == before


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("robot", "hi"), {}, InvalidRoleError, "role: got 'robot'; allowed one of 'system', 'user'"),
        (("user", "hi"), {"priority": "urgent"}, InvalidPriorityError, "priority: got 'urgent'"),
        (("user", 42), {}, InvalidMessageError, "content: got 42; allowed a str"),
        (("user", None), {}, InvalidMessageError, "content: got None"),
        (("user", "caf\u00e9 \ud800"), {}, InvalidMessageError, "lone surrogates"),
        (("assistant", "\udfff"), {}, InvalidMessageError, "lone surrogates"),
        (("user", "na\u00efve\x00"), {}, InvalidMessageError, "without NUL"),
        (("user", "\U0001f642\x00\ud800"), {}, InvalidMessageError, "without NUL"),
        (("user", ""), {}, InvalidMessageError, "non-empty text"),
        (("tool", "res"), {}, InvalidMessageError, "tool_call_id"),
        (
            ("user", "hi"),
            {"importance": 0.5},
            InvalidArgumentError,
            "importance: got 0.5; allowed one of metadata",
        ),
        (("tool", "res"), {"tool_call_id": "ghost"}, ToolCallPairingError, "tool_call_id: got 'ghost'"),
        (("user", "hi"), {"metadata": {"x": float("nan")}}, InvalidMessageError, "metadata.x"),
        (("user", "hi"), {"tool_calls": [ToolCall(id="c", name="f")]}, InvalidMessageError, "tool_calls"),
    ],
)
async def test_bad_input_raises_and_changes_nothing(
    tmp_path: Path, args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message("user", "first")
        before = state(manager)
        with pytest.raises(error, match=match) as info:
            await manager.add_message(*args, **kwargs)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)
        assert state(manager) == before


class _WordCounter:
    """A counter of the TokenCounter protocol that never looks at the text's encoding."""

    encoding_name = "words"

    def count(self, text: str) -> int:
        return len(text.split())

    def count_message(self, message: Message) -> int:
        return 4 + self.count(message.content)


@pytest.mark.parametrize("counter", ["built-in", "custom"])
@pytest.mark.parametrize("where", ["counted at once", "counted in a thread", "behind a compression"])
async def test_a_lone_surrogate_is_rejected_on_every_path_of_add_message(
    tmp_path: Path, counter: str, where: str
) -> None:
    """The built-in count checks a plain message's Unicode (one UTF-8 conversion); every path rejects it."""
    token_counter = _WordCounter() if counter == "custom" else None
    async with EnhancedContextManager(make_config(tmp_path), token_counter=token_counter) as manager:
        await manager.add_message("user", "first")
        before = state(manager)
        text = "na\u00efve \ud800 text"
        if where == "counted in a thread":
            text = "caf\u00e9 " * 20_001 + "\ud800"  # over 100,000 characters: counted off the loop
        window = manager._window
        assert window is not None
        if where == "behind a compression":
            await window._lock.acquire()  # as a compression in flight holds it: the add would queue
        try:
            with pytest.raises(InvalidMessageError, match="lone surrogates"):
                await manager.add_message("user", text)
        finally:
            if window._lock.locked():
                window._lock.release()
        assert state(manager) == before
        await manager.add_message("user", "caf\u00e9 \U0001f642 after")  # valid non-ASCII text still goes in
        assert manager.get_context()[-1]["content"] == "caf\u00e9 \U0001f642 after"


async def test_system_message_that_cannot_fit_is_rejected(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=100)) as manager:
        await manager.add_message("user", "hello")
        before = state(manager)
        with pytest.raises(ContextBudgetError, match="max_tokens: got 100"):
            await manager.add_message("system", "rule " * 500)
        with pytest.raises(ContextBudgetError):
            await manager.add_message("user", "keep me " * 200, pinned=True)
        assert state(manager) == before


async def test_compression_disabled_rejects_when_full(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_tokens=100, enable_compression=False)
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "word " * 60)
        before = state(manager)
        with pytest.raises(ContextBudgetError, match="compression is disabled"):
            await manager.add_message("assistant", "word " * 60)
        assert state(manager) == before


# -- compression -------------------------------------------------------------------------------------


async def test_compression_history_records(tmp_path: Path) -> None:
    async with EnhancedContextManager(
        make_config(tmp_path, max_tokens=300, compression_ratio=0.5)
    ) as manager:
        started_at, started = time.time(), time.perf_counter()
        for i in range(40):
            await manager.add_message("user", f"Long message {i} " + "about things " * 5)
            await manager.add_message("assistant", f"Long response {i} " + "with details " * 5)
            assert manager.get_context_summary()["token_count"] <= 300
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        history = manager.compression_history
        assert history and set(history[-1]) >= HISTORY_KEYS
        latest = history[-1]
        assert latest["strategy"] == "extractive"
        assert latest["tokens_after"] <= 150 < latest["tokens_before"]
        assert latest["messages_after"] < latest["messages_before"]
        assert latest["removed_count"] > 0 and latest["summary_tokens"] > 0
        # milliseconds of real work, within the time the loop took (not seconds, not microseconds)
        assert all(0.0 < record["duration_ms"] <= elapsed_ms for record in history)
        assert sum(record["duration_ms"] for record in history) <= elapsed_ms
        assert started_at <= latest["timestamp"] <= time.time()
        assert manager.get_context_summary()["compression_count"] == len(history)
        assert manager.get_context_summary()["has_summary"]


async def test_custom_summarizer_and_fallback_on_timeout(tmp_path: Path) -> None:
    summarizer = ScriptedSummarizer(default="The user discussed invoices.")
    config = make_config(tmp_path, max_tokens=200)
    async with EnhancedContextManager(config, summarizer=summarizer) as manager:
        for i in range(20):
            await manager.add_message("user", f"invoice {i} " + "details " * 10)
        assert manager.compression_history[0]["strategy"] == "custom"
        assert manager.messages[0].content == "The user discussed invoices."
        assert summarizer.calls[0].budget_tokens > 0

    hanging = ScriptedSummarizer(hang=True)
    config = make_config(tmp_path, max_tokens=200, summarizer_timeout=0.05)
    async with EnhancedContextManager(config, summarizer=hanging) as manager:
        for i in range(20):
            await manager.add_message("user", f"invoice {i} " + "details " * 10)
        record = manager.compression_history[0]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        assert record["error"] == "timeout after 0.05 s"
        hanging.release()


async def test_get_context_budget_leaves_window_unchanged(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=4000)) as manager:
        await manager.add_message("system", "Rules.")
        for i in range(60):
            await manager.add_message("user" if i % 2 == 0 else "assistant", f"message {i} " + "text " * 20)
        before = state(manager)
        limited = manager.get_context("openai", budget=300)
        counter = get_token_counter()
        from context_manager.core.messages import Message

        rebuilt = [
            Message.create(m["role"], m["content"], tool_call_id=m.get("tool_call_id")) for m in limited
        ]
        assert sum(counter.count_message(m) for m in rebuilt) + REPLY_PRIMING_TOKENS <= 300
        assert limited[0] == {"role": "system", "content": "Rules."}
        assert limited[-1]["content"] == manager.messages[-1].content
        assert state(manager) == before
        with pytest.raises(InvalidArgumentError, match="format: got 'xml'"):
            manager.get_context("xml")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="budget: got 0"):
            manager.get_context(budget=0)


async def test_pin_and_compress_context(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=2000)) as manager:
        await manager.add_message("assistant", "keep this fact: 42")
        kept_id = manager.messages[0].id
        manager.pin_message(kept_id)
        for i in range(30):
            await manager.add_message("user", f"message {i} " + "text " * 20)
        record = await manager.compress_context(300)
        assert record is not None and record["tokens_after"] <= 300
        assert kept_id in {m.id for m in manager.messages}
        manager.unpin_message(kept_id)
        assert not manager.context_window.get(kept_id).pinned


async def test_pin_and_unpin_refuse_an_id_that_is_not_a_string(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message("user", "Hello")
        before = state(manager)
        for bad_id in (["id"], {"id": 1}):
            for operation in (manager.pin_message, manager.unpin_message):
                with pytest.raises(InvalidArgumentError, match="message_id: got"):
                    operation(bad_id)  # type: ignore[arg-type]
        assert state(manager) == before


# -- evicted messages: handed over before the commit, written off the add_message path -----------------


def message_ids_in(path: Path) -> set[str]:
    return {json.loads(line)["metadata"].get("message_id") for line in path.read_text().splitlines()}


async def exported_message_ids(config: ContextManagerConfig, path: Path) -> set[str]:
    from context_manager.core.memory.manager import MemoryManager

    async with MemoryManager(config) as memory:
        await memory.export_memories(path)
    return await asyncio.to_thread(message_ids_in, path)


async def test_a_cancelled_add_message_loses_no_evicted_message(tmp_path: Path) -> None:
    """Issue 18.1: cancelled while its evicted messages were written to memory, they were lost."""
    config = make_config(tmp_path, max_tokens=6000, compression_ratio=0.3)
    manager = EnhancedContextManager(config)
    await manager.initialize()
    added = []
    while manager.get_context_summary()["token_count"] < 5900:  # the next add evicts over a hundred
        role = "user" if len(added) % 2 == 0 else "assistant"
        await manager.add_message(role, f"turn {len(added)} " + "words " * 30)
        added.append(manager.messages[-1].id)
    assert not manager.compression_history
    task = asyncio.create_task(manager.add_message("user", "one more " * 120))
    # step the loop one callback at a time until the compression has committed
    while not manager.compression_history and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0)
    task.cancel()  # mid-write on the old code; a no-op once add_message has returned
    with contextlib.suppress(asyncio.CancelledError):
        await task
    evicted = [message_id for message_id in added if message_id not in {m.id for m in manager.messages}]
    assert len(evicted) > 100
    await manager.cleanup()
    assert set(evicted) <= await exported_message_ids(config, tmp_path / "export.jsonl")


async def test_add_message_is_recorded_in_the_own_and_running_monitors(tmp_path: Path) -> None:
    """add_message records itself (inline, no decorator): successes, failures with their error, the adds
    that compress; in the manager's own monitor and in a running one that collects library operations."""
    from context_manager.core.performance_monitor import PerformanceMonitor

    running = PerformanceMonitor(collect_library_operations=True, sample_interval=60)
    await running.start_monitoring()
    try:
        async with EnhancedContextManager(make_config(tmp_path, max_tokens=300)) as manager:
            own = manager.performance_monitor
            assert own is not None
            await manager.add_message("user", "hello there")
            with pytest.raises(InvalidRoleError):
                await manager.add_message("robot", "beep")
            added = 1
            while not manager.compression_history:  # the slow path (a compression) is recorded too
                await manager.add_message("assistant", "filler words " * 20)
                added += 1
            assert added >= 3
            for monitor in (own, running):
                stats = monitor.operation_stats()["add_message"]
                assert (stats.successes, stats.failures, stats.rejected) == (added, 0, 1)
                assert monitor.recent_rejections()[-1]["error_type"] == "InvalidRoleError"
    finally:
        await running.stop_monitoring()
    # a cancelled add (here while a compression waits for the summarizer) is not a failure
    hanging = ScriptedSummarizer(hang=True)
    async with EnhancedContextManager(
        make_config(tmp_path, max_tokens=200, summarizer_timeout=30), summarizer=hanging
    ) as waiting:
        own = waiting.performance_monitor
        assert own is not None
        added = 0
        while True:  # add until an add compresses, and waits for the summarizer
            task = asyncio.create_task(waiting.add_message("user", "invoice details " * 10))
            while not task.done() and not hanging.calls:  # noqa: ASYNC110 - one loop step at a time
                await asyncio.sleep(0)
            if hanging.calls:
                break
            await task
            added += 1
        assert added > 0 and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hanging.release()
        stats = own.operation_stats()["add_message"]
        assert (stats.successes, stats.failures) == (added, 0)
    async with EnhancedContextManager(
        make_config(tmp_path, enable_performance_monitor=False)
    ) as quiet:  # no own monitor and none running: nothing is timed, the message still goes in
        assert quiet.performance_monitor is None
        assert await quiet.add_message("user", "hi") is True
        assert [m.content for m in quiet.messages] == ["hi"]


async def test_evicted_messages_are_indexed_in_the_background(tmp_path: Path) -> None:
    """Issue 14.2: add_message no longer waits for memory; search and flush wait for the writer."""
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=400)) as manager:
        await manager.add_message("user", "The vault code is 7341, remember it.")
        fact = manager.messages[-1].id
        await manager.add_message("user", "Now, about something else.")
        while not manager.compression_history:
            await manager.add_message("assistant", "Noted. " + "filler words " * 20)
        # the add that compressed returned before memory saw the evicted messages: they wait in the queue
        queued = {m.id for m in manager.context_window.evicted_messages}
        assert fact in queued
        assert manager.get_context_summary()["archived_evicted_count"] == len(queued)
        found = await manager.search_memory("vault code", limit=3)  # waits for the writer first
        assert found and found[0].metadata["message_id"] == fact
        await manager.add_message("user", "And the door code? " + "more words " * 60)
        await manager.flush()
        assert not manager.context_window.evicted_messages


async def test_compressing_a_128k_window_never_holds_the_loop_over_20_ms(tmp_path: Path) -> None:
    """Issue 14.2: a compression of a 128k window held the loop 55-70 ms (plan, summary, memory writes).

    The loop's thread CPU time between two turns of a ticker task is what the loop could not run other
    tasks for; unlike wall time, other processes on a shared machine do not inflate it. The objects the
    test process already holds (pytest, hypothesis, other tests' modules) are frozen out of the garbage
    collector first: a full collection of that heap would be a stall of the test runner, not of ours.
    """
    # medium-term memory holds what is evicted without overflowing: moving a full tier down to long-term is
    # memory's own background work (tests/core/memory), not part of a compression
    config = make_config(tmp_path, max_tokens=128_000, medium_term_memory_size=20_000)
    words = ["the", "deployment", "pipeline", "failed", "because", "cache", "key", "changed"]
    words += ["after", "upgrade", "invoice", "4471", "Dana"]

    def text(number: int) -> str:  # 4 to 30 words, chat turns: about 5,000 messages fill the window
        length = 4 + number * 13 % 27
        return f"{number}: " + " ".join(words[(number * 7 + i) % len(words)] for i in range(length))

    async with EnhancedContextManager(config) as manager:
        number = 0
        while manager.get_context_summary()["token_count"] < 127_800:
            await manager.add_message("user" if number % 2 else "assistant", text(number))
            number += 1
        steps: list[float] = []

        async def ticker() -> None:
            while True:
                started = time.thread_time()
                await asyncio.sleep(0)
                steps.append(time.thread_time() - started)

        gc.collect()
        gc.freeze()
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            for _ in range(3):  # three compressions, each evicting hundreds of messages, and their writes
                before = len(manager.compression_history)
                while len(manager.compression_history) == before:
                    await manager.add_message("user" if number % 2 else "assistant", text(number))
                    number += 1
                    await asyncio.sleep(0)  # one add per step, as a server handling requests would
                await manager.flush()
        finally:
            gc.unfreeze()
            ticking.cancel()
        evicted = sum(record["removed_count"] for record in manager.compression_history)
        assert evicted > 2000 and not manager.context_window.evicted_messages
        assert len(steps) > 10  # the ticker ran between the writer's batches
        assert max(steps) < 0.020, f"the loop was held {max(steps) * 1000:.1f} ms of CPU time"


async def test_the_eviction_drain_embeds_in_large_batches_without_holding_the_loop(tmp_path: Path) -> None:
    """The eviction writer embedded evicted messages 8 per call, its per-loop-step write size: with MiniLM
    that cost about twice the model time of large calls (cleanup() of 1,373 queued messages: 12-15 s).
    It now embeds up to 256 in one worker-thread call and still writes 8 per loop step; the stored
    memories and vectors are the ones embedding each text on its own gives."""
    import numpy as np

    from context_manager.core.memory.embeddings import HashingEmbedder
    from context_manager.core.memory.models import MemoryTier

    class CountingEmbedder(HashingEmbedder):  # a real embedder; only counts the texts of each call
        def __init__(self) -> None:
            super().__init__(dimension=64)
            self.calls: list[int] = []

        def embed(self, texts: list[str]) -> np.ndarray:
            self.calls.append(len(texts))
            return super().embed(texts)

    embedder = CountingEmbedder()
    config = make_config(tmp_path, max_tokens=4000, medium_term_memory_size=20_000)
    history: list[dict[str, object]] = [
        {"role": "user" if i % 2 else "assistant", "content": f"turn {i}: the invoice {i * 7} was paid"}
        for i in range(600)
    ]
    history[10]["content"] = history[20]["content"] = "ok"  # the same text twice: one vector for both
    history[31] = {  # a tool call is part of the remembered text
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call-1", "name": "lookup", "arguments": {"invoice": 217}}],
    }
    history[32] = {"role": "tool", "content": "invoice 217: paid", "tool_call_id": "call-1"}
    async with EnhancedContextManager(config, embedder=embedder) as manager:
        steps: list[float] = []

        async def ticker() -> None:
            while True:
                started = time.thread_time()
                await asyncio.sleep(0)
                steps.append(time.thread_time() - started)

        gc.collect()
        gc.freeze()
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            await manager.add_messages(history)
            evicted = [m for m in manager.context_window.evicted_messages]
            await manager.flush()
        finally:
            gc.unfreeze()
            ticking.cancel()
        assert len(evicted) > 400 and not manager.context_window.evicted_messages
        assert max(embedder.calls) > 8, f"embedded in calls of {sorted(set(embedder.calls))} texts"
        assert sum(embedder.calls) < len(evicted)  # each text embedded once ("ok" twice, one vector)
        assert max(steps) < 0.020, f"the loop was held {max(steps) * 1000:.1f} ms of CPU time"
        memory = manager.memory_manager
        stored = await memory._require("vectors").members(MemoryTier.MEDIUM)
        assert [m.metadata["message_id"] for m in sorted(stored, key=lambda m: m.metadata["turn_index"])] == [
            m.id for m in evicted
        ]
        vectors = await memory._require("vectors").vectors_of([m.id for m in stored])
        alone = HashingEmbedder(dimension=64)
        for stored_memory in stored:
            assert np.array_equal(vectors[stored_memory.id], alone.embed([stored_memory.content])[0])
        assert any(m.content.startswith("[tool call lookup]") for m in stored)


async def test_add_messages_restores_a_history_with_one_compression(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=1500)) as manager:
        history = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "details " * 30}
            for i in range(120)
        ]
        history[3]["priority"] = "critical"
        assert await manager.add_messages(history) == 120
        assert len(manager.compression_history) == 1
        contents = [m.content for m in manager.messages]
        assert history[3]["content"] in contents and contents[-1] == history[-1]["content"]
        found = await manager.search_memory("turn 7", limit=3)  # what did not stay is in memory
        assert any(memory.content.startswith("turn 7:") for memory in found)
        before = state(manager)
        with pytest.raises(InvalidRoleError):
            await manager.add_messages(
                [{"role": "user", "content": "ok"}, {"role": "robot", "content": "no"}]
            )
        with pytest.raises(InvalidArgumentError, match=r"messages\[0\]: got 'hi'"):
            await manager.add_messages(["hi"])  # type: ignore[list-item]
        assert state(manager) == before


async def test_takes_any_embedder_for_the_vector_channel(tmp_path: Path) -> None:
    from context_manager.core.memory.embeddings import HashingEmbedder

    embedder = HashingEmbedder(dimension=64)
    config = ContextManagerConfig(storage_path=tmp_path / "store", embedder="none")
    async with EnhancedContextManager(config, embedder=embedder) as manager:
        assert manager.memory_manager.embedder is embedder
        await manager.memory_manager.add_memory(
            "The invoice for the kitchen renovation is overdue", importance=0.6
        )
        await manager.memory_manager.add_memory("We walked the dog along the river", importance=0.6)
        found = await manager.search_memory("renovation invoices", limit=1)
        assert "invoice" in found[0].content
        assert manager.memory_manager._require("test").vector_count() == 2  # both were embedded


async def test_every_evicted_message_has_a_memory_tool_calls_included(tmp_path: Path) -> None:
    """docs/concepts.md invariant 4: an assistant message that only calls tools (no text) was skipped, its
    call's arguments lost once it left the window."""
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=300)) as manager:
        seen: list[Message] = []
        await manager.add_message("user", "Look up order 1042")
        await manager.add_message(
            "assistant",
            "",
            tool_calls=[{"id": "c1", "name": "lookup_order", "arguments": {"order": "1042-ZETA"}}],
        )
        await manager.add_message("tool", "shipped", tool_call_id="c1")
        seen.extend(manager.messages)
        for i in range(40):
            await manager.add_message("user", f"question {i} about the build status of region eu-west")
            seen.append(manager.messages[-1])
        await manager.flush()
        in_window = {m.id for m in manager.messages}
        evicted = [m for m in seen if m.id not in in_window]
        assert any(m.tool_calls for m in evicted), "the tool call was not evicted: the test proves nothing"
        archived = {m.metadata.get("message_id") for m in await manager.memory_manager.stored_copies()}
        assert [m.id for m in evicted if m.id not in archived] == []
        found = await manager.search_memory("lookup_order 1042-ZETA")
        assert any("1042-ZETA" in memory.content for memory in found)


async def test_a_tool_call_name_with_a_nul_is_refused_before_memory_has_to(tmp_path: Path) -> None:
    """Invariant 4 (every evicted message reaches memory): a call named with a NUL character was accepted,
    and memory refused its text (``[tool call NAME] ARGUMENTS``) at every eviction write: flush() raised
    InvalidMemoryError and the message never reached memory. It is refused at the door now."""
    async with EnhancedContextManager(make_config(tmp_path, max_tokens=300)) as manager:
        await manager.add_message("user", "Look up order 1042")
        before = state(manager)
        with pytest.raises(InvalidMessageError, match=r"tool_calls\[\]\.name: .*without NUL"):
            await manager.add_message(
                "assistant", "", tool_calls=[{"id": "c1", "name": "lookup\x00order", "arguments": {}}]
            )
        assert state(manager) == before
        await manager.add_message(
            "assistant", "", tool_calls=[{"id": "c1", "name": "lookup_order", "arguments": {"order": 1042}}]
        )
        await manager.add_message("tool", "shipped", tool_call_id="c1")
        for i in range(40):
            await manager.add_message("user", f"question {i} about the build status of region eu-west")
        await manager.flush()  # raised InvalidMemoryError when the NUL name got in
        assert manager.context_window.evicted_messages == ()


def test_a_token_counter_giving_counts_that_are_not_integers_is_refused_by_the_constructor(
    tmp_path: Path,
) -> None:
    """``len(text) / 4`` as a counter: refused at once, not by a TypeError at the first compression."""

    class QuarterCharacters:
        encoding_name = "chars/4"

        def count(self, text: str) -> float:
            return len(text) / 4

        def count_message(self, message: Message) -> float:
            return 3 + len(message.content) / 4

    with pytest.raises(
        InvalidArgumentError, match="token_counter: got .*; allowed a TokenCounter whose count"
    ):
        EnhancedContextManager(make_config(tmp_path), token_counter=QuarterCharacters())  # type: ignore[arg-type]


async def test_add_messages_takes_the_openai_sdks_dump_of_a_response_message(tmp_path: Path) -> None:
    """``message.model_dump()`` / ``to_dict()`` of an OpenAI SDK response message (what an OpenAI agent loop
    appends to its history) carries ``refusal``, ``annotations``, ``audio`` and ``function_call``, empty
    unless used: add_messages refused every such dict ("refusal: got None; allowed one of ..."), though its
    docs name the SDK's dump. Empty ones are ignored; a refusal is what the assistant said."""
    from openai.types.chat import ChatCompletionMessage

    def response(message: dict[str, object]) -> ChatCompletionMessage:
        return ChatCompletionMessage.model_validate({"refusal": None, "annotations": [], **message})

    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":2}'}}
    asked = response({"role": "assistant", "content": None, "tool_calls": [call]})
    answered = response({"role": "assistant", "content": "2 + 2 = 4."})
    refused = response({"role": "assistant", "content": None, "refusal": "I can't help with that."})
    history = [
        {"role": "user", "content": "What is 2 + 2?"},
        asked.model_dump(),
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        answered.to_dict(),
        {"role": "user", "content": "Now something else."},
        refused.model_dump(),
    ]
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 6
        assert [m.content for m in manager.messages] == [
            "What is 2 + 2?",
            "",
            "4",
            "2 + 2 = 4.",
            "Now something else.",
            "I can't help with that.",
        ]
        assert manager.messages[1].tool_calls[0].arguments == {"a": 2, "b": 2}
        await manager.add_message(**answered.model_dump())
        before = state(manager)
        with pytest.raises(InvalidArgumentError, match="audio: got .*; allowed one of metadata"):
            await manager.add_message("assistant", "spoken", audio={"id": "audio_1"})  # nowhere to keep it
        assert state(manager) == before


async def test_add_message_takes_the_sdks_tool_call_objects_as_execute_tool_calls_does(
    tmp_path: Path,
) -> None:
    """``add_message("assistant", message.content, tool_calls=message.tool_calls)`` with the OpenAI SDK's
    response message, or the ``tool_use`` blocks of an Anthropic SDK response, was refused ("tool_calls[]:
    got ChatCompletionMessageFunctionToolCall(...); allowed ToolCall objects or dicts"), though
    ``execute_tool_calls`` and ``parse_tool_calls`` take those very objects."""
    from anthropic.types import Message as AnthropicResponse
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city": "Lisbon"}'},
                            }
                        ],
                    },
                }
            ],
        }
    )
    claude = AnthropicResponse.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 10},
            "content": [
                {"type": "text", "text": "Checking Porto too."},
                {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Porto"}},
            ],
        }
    )
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message("user", "Weather in Lisbon and Porto?")
        message = completion.choices[0].message
        await manager.add_message("assistant", message.content, tool_calls=message.tool_calls)
        await manager.add_message("tool", "18 °C", tool_call_id="call_1")
        uses = [block for block in claude.content if block.type == "tool_use"]
        await manager.add_message("assistant", "Checking Porto too.", tool_calls=uses)
        await manager.add_message("tool", "16 °C", tool_call_id="toolu_01")
        assert [m.tool_calls for m in manager.messages if m.tool_calls] == [
            (ToolCall("call_1", "weather", {"city": "Lisbon"}),),
            (ToolCall("toolu_01", "weather", {"city": "Porto"}),),
        ]
        assert manager.get_context_summary()["pending_tool_calls"] == 0
        before = state(manager)
        with pytest.raises(InvalidMessageError, match=r"tool_calls\[\]: got .*; allowed ToolCall objects"):
            await manager.add_message("assistant", "", tool_calls=[object()])
        assert state(manager) == before


async def test_add_messages_takes_an_assistant_message_of_tool_calls_without_content(tmp_path: Path) -> None:
    """Chat Completions makes an assistant message's ``content`` optional when it has ``tool_calls``
    (``{"role": "assistant", "tool_calls": [...]}``, as many agent loops write their history): add_messages
    refused such a history ("messages[1]: ... allowed a dict with 'role', 'content' ...")."""
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":2}'}}
    history = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "4."},
    ]
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 4
        exported = manager.get_context("openai")
        assert exported[1] == {**history[1], "content": None}
        assert exported[2:] == history[2:]
        before = state(manager)
        for item in ({"role": "user"}, {"role": "assistant"}, {"role": "tool", "tool_call_id": "call_1"}):
            with pytest.raises(InvalidArgumentError, match=r"messages\[0\]: got .*'role', 'content'"):
                await manager.add_messages([item])
        assert state(manager) == before


async def test_a_developer_message_of_an_openai_history_is_a_system_message(tmp_path: Path) -> None:
    """OpenAI's ``developer`` role (its reasoning models' name for system instructions, in the SDK's
    examples and in histories written for them) was refused: ``add_messages`` of such a history raised
    ``InvalidRoleError``. It is a system message: protected, in the top-level ``system`` for Anthropic."""
    history = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour !"},
    ]
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 3
        await manager.add_message("Developer", "Be brief.")
        assert [m.role for m in manager.messages] == ["system", "user", "assistant", "system"]
        assert manager.get_context("openai")[0] == {"role": "system", "content": "Answer in French."}
        assert manager.get_context("anthropic")["system"] == "Answer in French.\n\nBe brief."
        with pytest.raises(InvalidRoleError, match="role: got 'robot'; allowed one of 'system', 'user'"):
            await manager.add_messages([{"role": "robot", "content": "beep"}])


async def test_storage_path_elsewhere_creates_no_cache_directory_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only ``storage_path`` set, ``initialize()`` created the default ``./cache`` anyway: an empty
    directory in whatever directory the process ran from, and where that is not writable (a container's
    read-only root file system) a StorageError ("cannot create directory cache"), though nothing is ever
    stored there. Only the directories in use are created (and checked by the health check) now."""
    work = tmp_path / "app"
    work.mkdir()
    monkeypatch.chdir(work)
    storage = tmp_path / "volume" / "memory"
    config = ContextManagerConfig(storage_path=storage, health_check_interval=3600.0)
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "hello")
        await manager.memory_manager.add_memory("kept on the volume", importance=0.9)
        assert manager.health_checker is not None
        status = await manager.health_checker.perform_health_check()
        storage_check = status.checks["storage"]
        assert storage_check.status.value == "healthy", storage_check.message
        assert list(storage_check.details) == [str(storage)]
    assert list(work.iterdir()) == []
    assert (storage / "memories.sqlite3").is_file()

    async with EnhancedContextManager(ContextManagerConfig(storage_path=storage)) as manager:  # reopened
        assert (await manager.search_memory("kept on the volume", limit=1))[0].content == "kept on the volume"
    assert list(work.iterdir()) == []

    # named explicitly, or holding the storage (the default), the cache directory is still created
    for config in (
        ContextManagerConfig(storage_path=storage, cache_path=tmp_path / "named-cache"),
        ContextManagerConfig(cache_path=tmp_path / "default-layout"),
    ):
        async with EnhancedContextManager(config):
            assert config.cache_path.is_dir()
    assert (tmp_path / "default-layout" / "storage" / "memories.sqlite3").is_file()


async def test_postgres_backend_creates_no_directory(postgres_dsn: str) -> None:
    """With memory_backend="postgres" nothing is stored in files: ``initialize()`` creates no directory.

    Before, it created ``./cache/storage`` (empty) in the working directory, or failed where that is
    read-only, and the health check watched those unused directories.
    """
    config = ContextManagerConfig(
        memory_backend="postgres", postgres_dsn=postgres_dsn, enable_health_checks=False
    )
    assert config.created_directories == []
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "hello")
        assert manager.health_checker is not None
        status = await manager.health_checker.perform_health_check()
        assert status.checks["storage"].message == "no storage configured"
    assert list(Path.cwd().iterdir()) == []  # the test's own empty working directory


async def test_system_status_on_postgres_names_the_database_not_a_directory(postgres_dsn: str) -> None:
    """On PostgreSQL ``get_system_status()["memory"]["storage_path"]`` was ``cache/storage``, a directory
    nothing is stored in, and ``bytes_on_disk`` the sizes of the files there: an application moved from the
    embedded backend reported its old, stale store's size as the live one. It names the database (the DSN,
    its password hidden, as ``get_memory_stats()`` does) and counts no file."""
    from psycopg.conninfo import make_conninfo

    from context_manager.core.memory.manager import MemoryManager

    async with MemoryManager(ContextManagerConfig()) as old:  # the embedded store used before: cache/storage
        await old.add_memory("a memory of the embedded store")
    dsn = make_conninfo(postgres_dsn, password="s3cr3t-pw")  # the test server trusts: any password works
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn, enable_health_checks=False)
    async with EnhancedContextManager(config) as manager:
        status = manager.get_system_status()["memory"]
        stats = await manager.memory_manager.get_memory_stats()
    assert status["backend"] == "postgres"
    assert status["storage_path"] == status["location"] == stats["storage_path"]
    assert "cache" not in status["storage_path"] and "***" in status["storage_path"]
    assert status["bytes_on_disk"] == {"log": 0, "database": 0, "total": 0}
    assert "s3cr3t-pw" not in repr(status)


# -- memory of the manager's user -------------------------------------------------------------------


async def test_add_memory_writes_the_managers_user_and_search_memory_filters_by_tags(tmp_path: Path) -> None:
    """A manager had ``search_memory`` (its user's memories) but no ``add_memory``: the documented way,
    ``manager.memory_manager.add_memory(text)``, wrote the default namespace, which a manager with a
    ``user_id`` never searches, and ``search_memory`` took no ``tags``. Now ``add_memory`` writes the
    manager's user and ``search_memory(..., tags=...)`` filters; bad input stores nothing."""
    config = make_config(tmp_path)
    async with (
        EnhancedContextManager(config, user_id="ana") as ana,
        EnhancedContextManager(config, user_id="bo") as bo,
    ):
        window = await ana.add_memory("Ana prefers the window seat", importance=0.8, tags=["travel"])
        assert window.user_id == "ana" and window.tags == ["travel"] and window.importance == 0.8
        await ana.add_memory("Ana's desk at the office is seat 4B", tags=["office"], memory_id="ana-desk")
        await bo.add_memory("Bo prefers the aisle seat", tags=["travel"], metadata={"source": "chat"})

        assert {m.content for m in await ana.search_memory("seat")} == {
            "Ana prefers the window seat",
            "Ana's desk at the office is seat 4B",
        }
        assert [m.content for m in await ana.search_memory("seat", tags=["travel"])] == [
            "Ana prefers the window seat"
        ]
        assert [m.content for m in await bo.search_memory("seat")] == ["Bo prefers the aisle seat"]
        assert await ana.search_memory("seat", tags=[]) == []

        stats = await ana.memory_manager.get_memory_stats(user_id="ana")
        with pytest.raises(InvalidMemoryError, match="content"):
            await ana.add_memory("")
        with pytest.raises(InvalidMemoryError, match="tags: got 'travel'"):
            await ana.search_memory("seat", tags="travel")  # type: ignore[arg-type]
        assert await ana.memory_manager.get_memory_stats(user_id="ana") == stats
    with pytest.raises(LifecycleError, match="add_memory: the context manager was cleaned up"):
        await ana.add_memory("too late")


async def test_an_empty_assistant_reply_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    """The README's loop added ``reply.content or ""`` when a model answered without tool calls; an empty
    answer (cut by max_tokens, a content filter) was refused as "non-empty text (or tool_calls on an
    assistant)", which says nothing about the reply that caused it. The message now says to skip it; the
    window is unchanged, and the docs' loops add a reply only when it has text."""
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message("user", "Summarise the report.")
        before = state(manager)
        with pytest.raises(
            InvalidMessageError, match=r"content: got ''; allowed non-empty text or tool_calls .*skip it"
        ):
            await manager.add_message("assistant", "")
        with pytest.raises(InvalidMessageError, match=r"messages\[0\]\.content: got ''; .*skip it"):
            await manager.add_messages([{"role": "assistant", "content": ""}])
        with pytest.raises(
            InvalidMessageError, match=r"content: got ''; allowed non-empty text \(or tool_calls"
        ):
            await manager.add_message("user", "")
        assert state(manager) == before


# -- add_message(message): one message-like object ------------------------------------------------------


async def test_add_message_takes_one_message_dict_as_add_messages_does(tmp_path: Path) -> None:
    """``add_message({"role": "user", "content": "hi"})`` (an OpenAI SDK or LangChain user's first call)
    failed with a bare ``TypeError: missing 1 required positional argument: 'content'``."""
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        assert await manager.add_message({"role": "user", "content": "hi"}) is True
        assert await manager.add_message({"role": "assistant", "content": "hello"}, pinned=True) is True
        await manager.add_message({"role": "user", "content": "again", "priority": "high"})
        assert [(m.role, m.content, m.pinned, m.priority) for m in manager.messages] == [
            ("user", "hi", False, "normal"),
            ("assistant", "hello", True, "normal"),
            ("user", "again", False, "high"),
        ]
        assert manager.get_context(format="openai")[0] == {"role": "user", "content": "hi"}


async def test_add_message_takes_an_sdk_or_langchain_message(tmp_path: Path) -> None:
    langchain_messages = pytest.importorskip("langchain_core.messages")
    chat = pytest.importorskip("openai.types.chat")
    reply = chat.ChatCompletionMessage(role="assistant", content="It shipped on Monday.")
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message(langchain_messages.HumanMessage("Where is order 1042?"))
        await manager.add_message(reply)  # response.choices[0].message, as it is
        await manager.add_message(langchain_messages.AIMessage("Anything else?"))
        assert [(m.role, m.content) for m in manager.messages] == [
            ("user", "Where is order 1042?"),
            ("assistant", "It shipped on Monday."),
            ("assistant", "Anything else?"),
        ]


@pytest.mark.parametrize(
    ("arguments", "options", "error", "match"),
    [
        (
            ("user",),
            {},
            InvalidArgumentError,
            r"^content: got <not given>; allowed the message's text: "
            r"add_message\('user', content\), or one message dict",
        ),
        (
            ([{"role": "user", "content": "hi"}],),
            {},
            InvalidArgumentError,
            r"^message: got \[.*; allowed one message .*\(add_messages\(messages\) takes a list\)",
        ),
        (
            ({"role": "human", "content": "hi"},),
            {},
            InvalidRoleError,
            r"^message\.role: got 'human'; allowed",
        ),
        (
            ({"content": "hi"},),
            {},
            InvalidArgumentError,
            r"^message: got \{'content': 'hi'\}; allowed a dict",
        ),
        (
            ({"role": "user", "content": "hi", "pinned": True},),
            {"pinned": False},
            InvalidArgumentError,
            r"^pinned: got False; allowed each option given once",
        ),
        (
            ({"role": "user", "content": "hi"},),
            {"pinnned": True},
            InvalidArgumentError,
            r"^message\.pinnned: got",
        ),
        (({"role": "user", "content": ""},), {}, InvalidMessageError, r"^message\.content: got ''"),
    ],
)
async def test_add_message_of_a_wrong_message_says_what_is_allowed_and_changes_nothing(
    tmp_path: Path,
    arguments: tuple[object, ...],
    options: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        await manager.add_message("user", "before")
        before = state(manager)
        with pytest.raises(error, match=match):
            await manager.add_message(*arguments, **options)  # type: ignore[call-overload]
        assert state(manager) == before


async def test_add_message_of_a_message_before_initialize_names_add_message(tmp_path: Path) -> None:
    """It said ``add_messages: the context manager is not initialized``: a method the caller never called."""
    manager = EnhancedContextManager(make_config(tmp_path))
    for arguments in [({"role": "user", "content": "hi"},), ("user", "hi")]:
        with pytest.raises(LifecycleError, match=r"^add_message: the context manager is not initialized"):
            await manager.add_message(*arguments)  # type: ignore[call-overload]


async def test_add_message_of_a_message_object_refuses_keyword_options(tmp_path: Path) -> None:
    langchain_messages = pytest.importorskip("langchain_core.messages")
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        with pytest.raises(
            InvalidArgumentError, match=r"^pinned: got True; allowed no options with a message"
        ):
            await manager.add_message(langchain_messages.HumanMessage("hi"), pinned=True)  # type: ignore[call-overload]
        assert manager.messages == ()


async def test_a_misspelt_add_message_keyword_names_the_option_meant(tmp_path: Path) -> None:
    """``add_message("user", "hi", pin=True)`` listed the seven options with no hint (the config's and the
    constructor's unknown keywords already said "did you mean")."""
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        with pytest.raises(
            InvalidArgumentError, match=r"^pin: got True; .* \(unknown keyword; did you mean pinned\?\)$"
        ):
            await manager.add_message("user", "hi", pin=True)
        with pytest.raises(
            InvalidArgumentError, match=r"^messages\[0\]\.priorty: .*did you mean priority\?\)$"
        ):
            await manager.add_messages([{"role": "user", "content": "hi", "priorty": "high"}])
        assert manager.messages == ()


async def test_add_messages_of_one_message_points_at_add_message(tmp_path: Path) -> None:
    async with EnhancedContextManager(make_config(tmp_path)) as manager:
        with pytest.raises(
            InvalidArgumentError,
            match=r"^messages: got \{'role': 'user', 'content': 'hi'\}; allowed a list of dicts with 'role' "
            r"and 'content' \(one message goes in with add_message\(message\)\)$",
        ):
            await manager.add_messages({"role": "user", "content": "hi"})  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match=r"^messages: got 'hi'; allowed a list of dicts[^(]*$"):
            await manager.add_messages("hi")  # type: ignore[arg-type]
        assert manager.messages == ()
