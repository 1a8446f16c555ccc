"""``SyncContextManager``: the blocking facade, used as a synchronous web app or script would use it."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
import typing
import weakref
from pathlib import Path
from typing import Any

import pytest

import context_manager
from context_manager import (
    ConfigurationError,
    ContextManagerConfig,
    ConversationConflictError,
    EnhancedContextManager,
    InvalidArgumentError,
    InvalidRoleError,
    LifecycleError,
    Message,
    SyncContextManager,
)
from context_manager.sync import LOOP_THREAD_NAME

SRC = str(Path(context_manager.__file__).resolve().parents[1])


def _config(tmp_path: Path, **options: Any) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", enable_health_checks=False, **options)


def _run_script(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# -- the threaded web app ------------------------------------------------------------------------------


def test_threads_with_a_manager_per_request_share_the_store_and_keep_every_message(tmp_path: Path) -> None:
    # 8 request threads x 15 requests over 3 persisted conversations, a manager per request: the scenario
    # where asyncio.run per request gets StorageLockedError as soon as two requests overlap
    config = _config(tmp_path, max_tokens=16_000)
    acknowledged: dict[str, list[str]] = {f"chat-{n}": [] for n in range(3)}
    errors: list[str] = []
    conflicts = 0
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(worker_id: int) -> None:
        nonlocal conflicts
        start.wait()
        for request in range(15):
            conversation = f"chat-{(worker_id + request) % 3}"
            text = f"worker {worker_id} request {request}"
            try:
                with SyncContextManager(config, conversation_id=conversation) as manager:
                    while True:  # optimistic concurrency: the manager reloaded, make the change again
                        try:
                            manager.add_message("user", text)
                            break
                        except ConversationConflictError:
                            with lock:
                                conflicts += 1
                    assert any(message.content == text for message in manager.messages)
                    manager.get_context()
                with lock:
                    acknowledged[conversation].append(text)
            except Exception as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sum(len(texts) for texts in acknowledged.values()) == 120

    for conversation, texts in acknowledged.items():  # resumed: every acknowledged message is there
        with SyncContextManager(config, conversation_id=conversation) as manager:
            stored = [message.content for message in manager.messages]
        assert sorted(stored) == sorted(texts), conversation
    # every wrapped manager ran on the one loop thread
    assert [thread.name for thread in threading.enumerate()].count(LOOP_THREAD_NAME) == 1


# -- parity with EnhancedContextManager -----------------------------------------------------------------


def _public_members(cls: type) -> dict[str, Any]:
    return {name: value for name, value in inspect.getmembers(cls) if not name.startswith("_")}


def test_every_public_member_of_the_async_manager_has_a_blocking_form_with_the_same_signature() -> None:
    facade = _public_members(SyncContextManager)
    checked = []
    for name, member in _public_members(EnhancedContextManager).items():
        assert name in facade, f"SyncContextManager lacks {name}"
        ours = facade[name]
        if isinstance(member, property):
            assert isinstance(ours, property), name
            assert (
                inspect.signature(ours.fget).return_annotation
                == inspect.signature(member.fget).return_annotation
            ), name
        else:
            assert callable(ours) and not inspect.iscoroutinefunction(ours), name
            assert inspect.signature(ours) == inspect.signature(member), name
            assert [inspect.signature(f) for f in typing.get_overloads(ours)] == [
                inspect.signature(f) for f in typing.get_overloads(member)
            ], name
        doc = inspect.getdoc(ours) or ""
        assert doc.startswith(f"Blocking form of EnhancedContextManager.{name}"), name
        checked.append(name)
    # instance attributes (config, memory_manager, tool_manager, performance_monitor, health_checker)
    for name in vars(EnhancedContextManager()):
        if name.startswith("_"):
            continue
        assert isinstance(facade.get(name), property), f"SyncContextManager lacks {name}"
        checked.append(name)
    assert {"add_message", "search_memory", "get_context", "messages", "memory_manager", "config"} <= set(
        checked
    )
    # and nothing else public but the facade's own
    assert set(facade) - set(checked) == {"call", "close", "manager"}
    # the lifecycle's context manager protocol
    assert hasattr(SyncContextManager, "__enter__") and hasattr(SyncContextManager, "__exit__")


def test_the_blocking_methods_work_end_to_end(tmp_path: Path) -> None:
    def lookup_order(order_id: str) -> str:
        return f"order {order_id} shipped"

    with SyncContextManager(_config(tmp_path), conversation_id="support", user_id="ana") as manager:
        assert manager.is_initialized
        assert manager.add_message("system", "You are a support agent.")
        assert manager.add_messages([{"role": "user", "content": "Where is order 1042?"}]) == 1
        first = manager.messages[1]
        assert isinstance(first, Message)
        manager.pin_message(first.id)
        manager.flush()
        manager.unpin_message(first.id)
        assert manager.get_context()[1] == {"role": "user", "content": "Where is order 1042?"}
        assert manager.get_context("anthropic")["system"] == "You are a support agent."
        assert manager.get_context_summary()["message_count"] == 2
        assert manager.conversation_id == "support" and manager.user_id == "ana"
        assert manager.conversation_version >= 2
        assert manager.reload() == manager.conversation_version
        assert [info["conversation_id"] for info in manager.list_conversations()] == ["support"]

        manager.call(manager.tool_manager.register_function_tool, "lookup_order", lookup_order)
        assert manager.execute_tool("lookup_order", order_id="1042").result == "order 1042 shipped"
        call = {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}
        manager.add_message("assistant", None, tool_calls=[call])
        assert [c.id for c in manager.pending_tool_calls()] == ["call_1"]
        assert [r.success for r in manager.cancel_tool_calls()] == [False]

        manager.call(manager.memory_manager.add_memory, "Ana prefers the window seat", user_id="ana")
        assert [m.content for m in manager.search_memory("window seat")] == ["Ana prefers the window seat"]
        assert manager.add_memory("Ana's desk is seat 4B", tags=["office"]).user_id == "ana"
        assert [m.content for m in manager.search_memory("seat", tags=["office"])] == [
            "Ana's desk is seat 4B"
        ]
        assert manager.get_system_status()["state"] == "ready"
        assert "memory" in manager.optimize_system(consolidate=False)
        assert manager.compress_context() is not None or manager.compression_history == []
        assert manager.config.enable_health_checks is False
        assert manager.manager.is_initialized
        assert manager.delete_conversation("other") is False
    assert not manager.is_initialized
    manager.close()  # again: nothing to do


# -- errors ---------------------------------------------------------------------------------------------


def test_errors_come_out_with_their_own_types_and_messages(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="config: got"):
        SyncContextManager("not a config")  # type: ignore[arg-type]
    manager = SyncContextManager(_config(tmp_path))
    with pytest.raises(LifecycleError, match="add_message: the context manager is not initialized"):
        manager.add_message("user", "too early")
    with manager:
        with pytest.raises(InvalidRoleError, match="role: got 'robot'"):
            manager.add_message("robot", "beep")
        with pytest.raises(ConfigurationError, match="conversation_id"):
            manager.reload()  # no conversation id
        with pytest.raises(ZeroDivisionError):
            manager.call(lambda: 1 / 0)
        assert manager.messages == ()  # state intact
    with pytest.raises(LifecycleError, match="cleaned up"):
        manager.get_context()
    with pytest.raises(LifecycleError, match="initialize: this manager was cleaned up") as reopened:
        manager.initialize()
    assert "EnhancedContextManager" not in str(reopened.value)  # a blocking user makes a SyncContextManager


def test_a_call_before_initialize_says_how_to_initialize_without_await(tmp_path: Path) -> None:
    # a Flask view that forgot `with`: the hint must be one a synchronous caller can follow
    manager = SyncContextManager(_config(tmp_path))
    for call in (lambda: manager.add_message("user", "too early"), lambda: manager.messages):
        with pytest.raises(LifecycleError, match="not initialized") as early:
            call()
        assert "manager.initialize()" in str(early.value) and "with SyncContextManager(" in str(early.value)
        assert "await" not in str(early.value) and "async with" not in str(early.value)
    with manager:
        assert manager.add_message("user", "now it works")
    # the async manager keeps its own hint
    async_hint = "call `await manager.initialize\\(\\)` first or use `async with`"
    with pytest.raises(LifecycleError, match=async_hint):
        asyncio.run(EnhancedContextManager(_config(tmp_path)).add_message("user", "too early"))


def test_settings_given_to_the_facade_are_pointed_at_the_config(tmp_path: Path) -> None:
    """``SyncContextManager(max_tokens=4000)`` raised Python's bare ``TypeError``; now the error names the
    config, with the facade's own name, before any thread or loop is touched."""
    with pytest.raises(
        InvalidArgumentError,
        match=r"^max_tokens: got 4000; .*SyncContextManager\(ContextManagerConfig\(max_tokens=4000\)\)\)$",
    ):
        SyncContextManager(max_tokens=4000)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgumentError, match=r"settings go in a ContextManagerConfig: SyncContextManager"
    ):
        SyncContextManager({"max_tokens": 4000})  # type: ignore[arg-type]


def test_a_call_from_a_thread_running_an_event_loop_is_refused_without_deadlock(tmp_path: Path) -> None:
    manager = SyncContextManager(_config(tmp_path))

    async def from_async_code() -> None:
        with pytest.raises(LifecycleError, match="use EnhancedContextManager and await"):
            SyncContextManager(_config(tmp_path))
        with pytest.raises(LifecycleError, match="use EnhancedContextManager and await"):
            manager.initialize()

    asyncio.run(from_async_code())
    assert not manager.is_initialized


def test_an_eviction_hook_calling_the_facade_gets_lifecycle_error(tmp_path: Path) -> None:
    # the hook runs on the loop thread: a blocking call there would wait for itself for ever
    seen: list[BaseException] = []
    with SyncContextManager(_config(tmp_path, max_tokens=120)) as manager:

        def hook(evicted: list[Message]) -> None:
            try:
                manager.get_context_summary()
            except LifecycleError as error:
                seen.append(error)

        manager.set_eviction_hook(hook)
        for n in range(30):
            manager.add_message("user", f"message number {n} about the weather in several towns")
        assert manager.compression_history
    assert seen, "the hook ran"
    assert "the SyncContextManager loop's own thread" in str(seen[0])


def test_keyboard_interrupt_cancels_the_call_on_the_loop_then_is_raised(tmp_path: Path) -> None:
    result = _run_script(
        """
        import asyncio, os, signal, sys, threading
        from context_manager import ContextManagerConfig, SyncContextManager

        cancelled = threading.Event()

        async def slow() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        manager = SyncContextManager(ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False))
        manager.initialize()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            manager.call(slow)
        except KeyboardInterrupt:
            print("interrupted; cancelled on the loop:", cancelled.is_set())
        manager.add_message("user", "still usable")
        print(len(manager.messages))
        manager.close()
        """,
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["interrupted; cancelled on the loop: True", "1"]


def test_keyboard_interrupt_is_raised_as_soon_as_the_cancelled_call_has_ended(tmp_path: Path) -> None:
    # the wait for the cancelled call never saw it end (a cancelled outcome woke no waiter): Ctrl-C took
    # the full 5 s every time, even when the call stopped at once
    result = _run_script(
        """
        import asyncio, os, signal, sys, threading, time
        from context_manager import ContextManagerConfig, SyncContextManager

        async def slow() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # a short cleanup, then stop
                raise

        manager = SyncContextManager(ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False))
        manager.initialize()
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        try:
            manager.call(slow)
        except KeyboardInterrupt:
            print(f"{time.monotonic() - started:.2f}")
        manager.close()
        """,
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert 0.3 <= float(result.stdout) < 2.0


def test_system_exit_raised_by_an_async_call_reaches_the_caller_and_the_loop_survives(tmp_path: Path) -> None:
    # sys.exit() (or a KeyboardInterrupt) raised inside a coroutine run on the shared loop used to escape
    # the loop's run_forever: the loop thread died, the caller waited for ever and every manager of the
    # process was dead (close() refused, nothing flushed at exit)
    result = _run_script(
        """
        import sys, threading
        from context_manager import ContextManagerConfig, SyncContextManager

        manager = SyncContextManager(ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False))
        manager.initialize()

        async def quit_now(code: int) -> None:
            sys.exit(code)

        async def interrupt() -> None:
            raise KeyboardInterrupt("stop there")

        def request(function, *args) -> None:
            try:
                manager.call(function, *args)
            except BaseException as error:
                print(type(error).__name__, error, flush=True)

        for function, args in ((quit_now, (3,)), (interrupt, ())):
            thread = threading.Thread(target=request, args=(function, *args), daemon=True)
            thread.start()
            thread.join(10)
            print("caller still waiting:", thread.is_alive(), flush=True)
        manager.add_message("user", "still usable")
        print(len(manager.messages))
        manager.close()
        """,
        str(tmp_path / "cache"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "SystemExit 3",
        "caller still waiting: False",
        "KeyboardInterrupt stop there",
        "caller still waiting: False",
        "1",
    ]


def test_a_manager_garbage_collected_without_close_is_cleaned_up_and_released(tmp_path: Path) -> None:
    # a view that forgets close(): the process's loop kept every such manager (window, messages, store
    # handles) until the interpreter exited, growing by each request in a long-running web worker
    config = _config(tmp_path, max_tokens=2000)

    def forgetful_request(n: int) -> weakref.ref[EnhancedContextManager]:
        manager = SyncContextManager(config, conversation_id=f"chat-{n}", user_id="ana")
        manager.initialize()
        manager.add_messages(
            [{"role": "user", "content": f"Request {n}, filler {k} about trains, buses."} for k in range(300)]
            + [{"role": "user", "content": f"The door code of flat {n} is KESTREL-{n}."}]
            + [{"role": "user", "content": f"More filler {k} about the weather."} for k in range(300)]
        )
        assert manager.compression_history
        return weakref.ref(manager.manager)

    with pytest.warns(ResourceWarning, match="close"):
        released = [forgetful_request(n) for n in range(3)]
        gc.collect()
    deadline = time.monotonic() + 30
    while any(ref() is not None for ref in released) and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert [ref() is None for ref in released] == [True, True, True]
    with SyncContextManager(config, user_id="ana") as manager:
        # cleaned up, not dropped: what compression evicted reached memory
        for n in range(3):
            assert any(
                f"KESTREL-{n}" in memory.content for memory in manager.search_memory(f"door code flat {n}")
            )


# -- processes ------------------------------------------------------------------------------------------


def test_managers_left_open_are_cleaned_up_at_exit_so_evicted_messages_reach_memory(tmp_path: Path) -> None:
    # a script that exits right after a large eviction, without close(): the evicted messages are still
    # queued for memory; the exit hook cleans the managers up, which writes them
    cache = str(tmp_path / "cache")
    writer = _run_script(
        """
        import sys
        from context_manager import ContextManagerConfig, SyncContextManager

        config = ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False, max_tokens=2000)
        removed = 0
        for conversation_id, secret in (("trip", "4711-KESTREL"), (None, "8812-HERON")):
            manager = SyncContextManager(config, conversation_id=conversation_id)
            manager.initialize()
            history = [
                {"role": "user", "content": f"Filler message {n} about trains, buses and the weather."}
                for n in range(400)
            ]
            history[200] = {"role": "user", "content": f"The door code of the holiday flat is {secret}."}
            manager.add_messages(history)
            removed += sum(record["removed_count"] for record in manager.compression_history)
        print(removed)
        # exits without close()
        """,
        cache,
    )
    assert writer.returncode == 0, writer.stderr
    removed = int(writer.stdout)
    assert removed > 400
    assert "Traceback" not in writer.stderr and "could not be written" not in writer.stderr

    reader = _run_script(
        """
        import sys
        from context_manager import ContextManagerConfig, SyncContextManager

        config = ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False, max_tokens=2000)
        with SyncContextManager(config, conversation_id="trip") as manager:
            print(manager.conversation_version)
            for secret in ("KESTREL", "HERON"):
                found = manager.search_memory(f"door code {secret}")
                print(any(secret in memory.content for memory in found))
            print(manager.call(manager.memory_manager.get_memory_stats)["total_memories"])
        """,
        cache,
    )
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.splitlines() == ["401", "True", "True", str(removed)]


@pytest.mark.embeddings
def test_the_exit_cleanup_can_load_the_default_embedder_for_the_first_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the script ends right after an eviction, before anything was embedded: the exit cleanup is the first
    # to load the default embedder, whose imports (joblib) import concurrent.futures.process, which
    # registers a threading exit hook; during shutdown that raised "can't register atexit after shutdown",
    # so the evicted messages were stored without their embeddings (and a warning was printed)
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_EMBEDDER")  # the library's default: MiniLM
    cache = str(tmp_path / "cache")
    writer = _run_script(
        """
        import sys
        import context_manager.sync
        from context_manager import ContextManagerConfig, SyncContextManager

        # what is tested is that the exit cleanup can load the embedder, not how fast: loading torch and
        # the model takes longer than the default 10 s on a loaded machine
        context_manager.sync.EXIT_CLEANUP_TIMEOUT = 240.0
        config = ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False, max_tokens=2000)
        manager = SyncContextManager(config, conversation_id="trip")
        manager.initialize()
        manager.add_messages(
            [{"role": "user", "content": f"Filler {n} about trains and the weather."} for n in range(300)]
        )
        print(sum(record["removed_count"] for record in manager.compression_history))
        # exits without close()
        """,
        cache,
        timeout=300,
    )
    assert writer.returncode == 0, writer.stderr
    assert int(writer.stdout) > 100
    assert "embedder failed" not in writer.stderr, writer.stderr
    assert "after shutdown" not in writer.stderr, writer.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_refuses_the_parents_managers_and_runs_new_ones(tmp_path: Path) -> None:
    result = _run_script(
        """
        import os, sys
        from context_manager import ContextManagerConfig, LifecycleError, SyncContextManager

        def config(name):
            path = os.path.join(sys.argv[1], name)
            return ContextManagerConfig(cache_path=path, enable_health_checks=False)

        parent = SyncContextManager(config("parent"), conversation_id="p")
        parent.initialize()
        parent.add_message("user", "before the fork")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    parent.add_message("user", "from the child")
                except LifecycleError as error:
                    print("child refused:", "before os.fork()" in str(error), flush=True)
                with SyncContextManager(config("child"), conversation_id="c") as child:
                    child.add_message("user", "in the child")
                    print("child messages:", len(child.messages), flush=True)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print("child exit:", os.waitstatus_to_exitcode(status), flush=True)
        parent.add_message("user", "after the fork")
        print("parent messages:", len(parent.messages), flush=True)
        parent.close()
        """,
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "child refused: True",
        "child messages: 1",
        "child exit: 0",
        "parent messages: 2",
    ]


def test_add_message_takes_one_message_dict_as_the_async_manager_does(tmp_path: Path) -> None:
    """The blocking form matches ``EnhancedContextManager.add_message(message)``."""
    with SyncContextManager(_config(tmp_path)) as manager:
        assert manager.add_message({"role": "user", "content": "hi"}) is True
        manager.add_message({"role": "assistant", "content": "hello"}, pinned=True)
        with pytest.raises(InvalidArgumentError, match=r"^content: got <not given>"):
            manager.add_message("user")  # type: ignore[call-overload]
        assert [(m.role, m.content, m.pinned) for m in manager.messages] == [
            ("user", "hi", False),
            ("assistant", "hello", True),
        ]


def test_the_warning_for_a_manager_left_open_reads_as_the_async_managers(tmp_path: Path) -> None:
    """It said "SyncContextManager (conversation None) was garbage-collected ..." for a manager with no
    conversation; the async manager's says "unclosed EnhancedContextManager: ..." and names none."""

    def forgetful(conversation_id: str | None) -> None:
        manager = SyncContextManager(_config(tmp_path), conversation_id=conversation_id)
        manager.initialize()
        manager.add_message("user", "hi")

    with pytest.warns(ResourceWarning) as caught:
        forgetful(None)
        forgetful("chat-1")
        gc.collect()
    texts = sorted(str(warning.message) for warning in caught if "SyncContextManager" in str(warning.message))
    assert texts == [
        "unclosed SyncContextManager (conversation 'chat-1'): garbage-collected without close(), cleaned up "
        "in the background; use `with SyncContextManager(...) as manager:` or call close()",
        "unclosed SyncContextManager: garbage-collected without close(), cleaned up in the background; use "
        "`with SyncContextManager(...) as manager:` or call close()",
    ]
