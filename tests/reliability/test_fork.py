"""Managers and ``os.fork()``: what a pre-fork server (``gunicorn --preload``, ``multiprocessing``) meets.

Each test runs a real script in a subprocess that forks (forking the test process itself, with its
threads, is not safe). A manager opened before the fork must be refused in the child with a
``LifecycleError`` saying what to do, never used there: a PostgreSQL socket shared by two processes
corrupts the protocol, the parent's storage threads do not exist in the child (work handed to them
waits for ever), and the child's copy of the tiers and of the window silently diverges. The child's
``cleanup()`` of it must leave the parent's store, lock and connections alone. A manager made in the
child (or only constructed before the fork) works.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import context_manager

SRC = str(Path(context_manager.__file__).resolve().parents[1])

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_PRELUDE = """
import asyncio, os, sys
from context_manager import (
    ContextManagerConfig, ConversationConflictError, EnhancedContextManager, LifecycleError, MemoryManager,
    StorageLockedError,
)

def child_process(body):
    '''Fork; run the coroutine function ``body`` in the child (bounded), print its outcome; the exit code.'''
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            asyncio.run(asyncio.wait_for(body(), 20))
            code = 0
        except BaseException as error:
            print("child failed:", type(error).__name__, str(error)[:300], flush=True)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

async def refused(what, call):
    try:
        await call()
    except LifecycleError as error:
        text = str(error)
        print(what, "refused:", "before os.fork()" in text and "after the fork" in text, flush=True)
    else:
        print(what, "ran", flush=True)
"""


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SRC},
        check=False,
    )


def test_an_embedded_store_opened_before_the_fork_is_refused_in_the_child_and_stays_the_parents(
    tmp_path: Path,
) -> None:
    result = _run(
        """
        config = ContextManagerConfig(
            storage_path=sys.argv[1], cache_path=sys.argv[2], enable_health_checks=False
        )
        loop = asyncio.new_event_loop()  # the preloaded app's: the master opened the manager at import
        manager = EnhancedContextManager(config, conversation_id="chat")
        memory = MemoryManager(ContextManagerConfig(storage_path=sys.argv[3]))
        loop.run_until_complete(manager.initialize())
        loop.run_until_complete(memory.initialize())
        loop.run_until_complete(manager.add_message("user", "before the fork"))

        async def child():
            await refused("add_message", lambda: manager.add_message("user", "from the child"))
            await refused("search_memory", lambda: manager.search_memory("fork"))
            await refused("initialize", manager.initialize)
            await refused("add_memory", lambda: memory.add_memory("from the child"))
            await refused("memory initialize", memory.initialize)
            await manager.cleanup()  # closes nothing of the parent's
            await memory.cleanup()
            for path in (sys.argv[1], sys.argv[3]):  # still the parent's: its lock was not released
                try:
                    async with MemoryManager(ContextManagerConfig(storage_path=path)):
                        print("opened the parent's store", flush=True)
                except StorageLockedError as error:
                    print("locked by the parent:", f"pid {os.getppid()} " in str(error), flush=True)
                    print("said to be this process:", "in this process" in str(error), flush=True)
            other = ContextManagerConfig(cache_path=sys.argv[4], enable_health_checks=False)
            async with EnhancedContextManager(other, conversation_id="chat") as own:
                await own.add_message("user", "in the child")
                print("own manager:", len(own.messages), flush=True)

        print("child exit:", child_process(child), flush=True)
        loop.run_until_complete(manager.add_message("user", "after the fork"))
        loop.run_until_complete(memory.add_memory("after the fork"))
        print("parent:", [m.content for m in manager.messages], flush=True)
        print("parent memory:", len(loop.run_until_complete(memory.search_memory("fork"))), flush=True)
        loop.run_until_complete(manager.cleanup())
        loop.run_until_complete(memory.cleanup())
        """,
        str(tmp_path / "storage"),
        str(tmp_path / "cache"),
        str(tmp_path / "memory"),
        str(tmp_path / "child"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "add_message refused: True",
        "search_memory refused: True",
        "initialize refused: True",
        "add_memory refused: True",
        "memory initialize refused: True",
        "locked by the parent: True",
        "said to be this process: False",
        "locked by the parent: True",
        "said to be this process: False",
        "own manager: 1",
        "child exit: 0",
        "parent: ['before the fork', 'after the fork']",
        "parent memory: 1",
    ]


def test_a_postgres_pool_opened_before_the_fork_is_refused_in_the_child_and_left_to_the_parent(
    postgres_dsn: str, tmp_path: Path
) -> None:
    result = _run(
        """
        config = ContextManagerConfig(
            memory_backend="postgres", postgres_dsn=sys.argv[1], cache_path=sys.argv[2],
            enable_health_checks=False, postgres_pool_size=2,
        )
        loop = asyncio.new_event_loop()
        manager = EnhancedContextManager(config, conversation_id="chat")
        memory = MemoryManager(config)
        loop.run_until_complete(manager.initialize())
        loop.run_until_complete(memory.initialize())
        loop.run_until_complete(manager.add_message("user", "before the fork"))

        async def child():
            await refused("add_message", lambda: manager.add_message("user", "from the child"))
            await refused("search", lambda: manager.memory_manager.search_memory("fork"))
            await refused("add_memory", lambda: memory.add_memory("from the child"))
            await refused("list", lambda: manager.list_conversations())
            await manager.cleanup()  # must not close the parent's connections
            await memory.cleanup()
            async with EnhancedContextManager(config, conversation_id="chat") as own:  # a pool of its own
                await own.add_message("user", "in the child")
                print("own manager:", [m.content for m in own.messages], flush=True)

        print("child exit:", child_process(child), flush=True)
        loop.run_until_complete(memory.add_memory("after the fork"))
        try:
            loop.run_until_complete(manager.add_message("user", "after the fork"))
        except ConversationConflictError:  # the child's own manager wrote: reloaded, made again
            loop.run_until_complete(manager.add_message("user", "after the fork"))
        print("parent:", [m.content for m in manager.messages], flush=True)
        print("parent memory:", len(loop.run_until_complete(memory.search_memory("fork"))), flush=True)
        loop.run_until_complete(manager.cleanup())
        loop.run_until_complete(memory.cleanup())
        """,
        postgres_dsn,
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "add_message refused: True",
        "search refused: True",
        "add_memory refused: True",
        "list refused: True",
        "own manager: ['before the fork', 'in the child']",
        "child exit: 0",
        "parent: ['before the fork', 'in the child', 'after the fork']",
        "parent memory: 1",
    ]
    # the parent's connections outlived the child's cleanup(): no statement of the parent was retried
    assert "retrying" not in result.stderr, result.stderr


def test_a_child_outliving_its_crashed_parent_does_not_keep_the_storage_locked(tmp_path: Path) -> None:
    # the master of a pre-fork server opened the embedded store and died (killed) while a worker it forked
    # still runs: the store must open again (a restarted master) though that worker still lives
    result = _run(
        """
        import signal, time
        storage = sys.argv[1]
        reader, writer = os.pipe()
        parent = os.fork()
        if parent == 0:  # the master: opens the store, forks a worker, dies without closing anything
            memory = MemoryManager(ContextManagerConfig(storage_path=storage))
            asyncio.run(memory.initialize())
            worker = os.fork()
            if worker == 0:
                time.sleep(60)
                os._exit(0)
            os.write(writer, str(worker).encode())
            os._exit(0)
        os.close(writer)
        worker = int(os.read(reader, 20))
        os.waitpid(parent, 0)

        async def reopen():
            async with MemoryManager(ContextManagerConfig(storage_path=storage)) as memory:
                await memory.add_memory("after the restart")
                print("reopened:", len(await memory.search_memory("restart")), flush=True)

        try:
            asyncio.run(reopen())
        except StorageLockedError as error:
            print("still locked:", error, flush=True)
        finally:
            os.kill(worker, signal.SIGKILL)
        """,
        str(tmp_path / "storage"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["reopened: 1"]


def test_managers_constructed_before_the_fork_and_opened_in_the_workers_share_one_conversation(
    postgres_dsn: str, tmp_path: Path
) -> None:
    # the gunicorn --preload pattern: the app module makes its manager at import (in the master); each
    # worker initializes its copy at start-up; two workers then serve one conversation's requests
    result = _run(
        """
        config = ContextManagerConfig(
            memory_backend="postgres", postgres_dsn=sys.argv[1], cache_path=sys.argv[2],
            enable_health_checks=False, postgres_pool_size=2,
        )
        manager = EnhancedContextManager(config, conversation_id="chat")  # constructed, not initialized

        def worker(name):
            async def serve():
                await manager.initialize()  # the worker's start-up (a lifespan handler)
                for request in range(10):
                    while True:
                        try:
                            await manager.add_message("user", f"{name} {request}")
                            break
                        except ConversationConflictError:  # the other worker wrote first: reloaded
                            continue
                await manager.cleanup()
            return serve

        workers = []
        for name in ("a", "b"):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    asyncio.run(asyncio.wait_for(worker(name)(), 60))
                    code = 0
                except BaseException as error:
                    print("worker failed:", type(error).__name__, error, flush=True)
                finally:
                    os._exit(code)
            workers.append(pid)
        print("exits:", [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers], flush=True)

        async def read():
            async with EnhancedContextManager(config, conversation_id="chat") as reader:
                return [m.content for m in reader.messages]

        contents = asyncio.run(read())
        print("stored:", sorted(contents) == sorted(f"{n} {r}" for n in "ab" for r in range(10)), flush=True)
        print("in order per worker:", all(
            [c for c in contents if c.startswith(n)] == [f"{n} {r}" for r in range(10)] for n in "ab"
        ), flush=True)
        """,
        postgres_dsn,
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["exits: [0, 0]", "stored: True", "in order per worker: True"]


def test_a_postgres_pool_whose_event_loop_ended_is_refused_with_what_to_do(
    postgres_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # an app that initializes its manager at import time (asyncio.run), then serves in the server's loop:
    # the pool's tasks died with the first loop, so a lost connection was never replaced and every call
    # then failed after connect_timeout as if the server were down; now the first call says what to do
    from context_manager import ContextManagerConfig, LifecycleError, MemoryManager

    config = ContextManagerConfig(
        memory_backend="postgres", postgres_dsn=postgres_dsn, cache_path=tmp_path / "cache"
    )
    memory = MemoryManager(config)
    asyncio.run(memory.initialize())

    async def serve() -> list[str]:
        with pytest.raises(LifecycleError, match="opened in an event loop that has ended") as refused:
            await memory.add_memory("Ana prefers window seats", user_id="ana")
        assert "lifespan" in str(refused.value)
        await memory.cleanup()  # closes what it can without the ended loop (no RuntimeError)
        assert not memory.is_initialized
        async with MemoryManager(config) as fresh:  # opened in this loop: works
            await fresh.add_memory("Ana prefers window seats", user_id="ana")
            return [found.content for found in await fresh.search_memory("window seats", user_id="ana")]

    assert asyncio.run(serve()) == ["Ana prefers window seats"]
    assert "closed after the event loop that opened it ended" in caplog.text


@pytest.mark.parametrize(
    ("module", "lock", "first_use"),
    [
        (  # a thread of the parent loading a tokenizer (the first count of an encoding) at the fork
            "context_manager.core.tokens",
            "_backends_lock",
            "from context_manager.core.tokens import ExactTokenCounter\n"
            "print('used', ExactTokenCounter('cl100k_base').count('hello world'), flush=True)",
        ),
        (  # a thread of the parent starting or stopping a performance monitor at the fork
            "context_manager.core.performance_monitor.registry",
            "_registry_lock",
            "from context_manager.core.performance_monitor import PerformanceMonitor\n"
            "monitor = PerformanceMonitor()\n"
            "asyncio.run(monitor.start_monitoring()); asyncio.run(monitor.stop_monitoring())\n"
            "print('used', 1, flush=True)",
        ),
        (  # a thread of the parent running a health check of a store (its own event loop) at the fork
            "context_manager.core.health_checker.checker",
            "_shared_lock",
            "import tempfile\n"
            "async def check():\n"
            "    config = ContextManagerConfig(storage_path=tempfile.mkdtemp(), enable_health_checks=False)\n"
            "    async with EnhancedContextManager(config) as manager:\n"
            "        status = await manager.health_checker.perform_health_check()\n"
            "        return len(status.checks)\n"
            "print('used', asyncio.run(check()), flush=True)",
        ),
        (  # a thread of the parent in a warm-up (an application's own start-up work) at the fork
            "context_manager.core.warmup",
            "_lock",
            "from context_manager import warming_up\n"
            "with warming_up('search index'):\n"
            "    pass\n"
            "print('used', 1, flush=True)",
        ),
        pytest.param(  # a thread of the parent loading an embedding model (an MCP server's preload)
            "context_manager.core.memory.embeddings",
            "_loaded_models_lock",
            "import pathlib, tempfile\n"
            "from context_manager.core.memory.embeddings import SentenceTransformerEmbedder\n"
            "class Small(SentenceTransformerEmbedder):\n"
            "    def _read_model(self): return object(), 3\n"
            "directory = pathlib.Path(tempfile.mkdtemp())\n"
            "(directory / 'modules.json').write_text('[]')\n"
            "embedder = Small(directory)\n"
            "embedder.load()\n"
            "print('used', embedder.dimension, flush=True)",
            marks=pytest.mark.embeddings,
        ),
    ],
)
def test_a_lock_held_by_another_thread_at_the_fork_does_not_hang_the_child(
    module: str, lock: str, first_use: str
) -> None:
    """A module-level threading lock held by another thread of the parent at ``os.fork()`` stays held
    in the child for ever (that thread does not exist there): the child's first use of it hung.

    The lock is held the way the loading thread holds it, by a thread of the parent; the child uses the
    module as an application would, within an alarm that kills it if it hangs.
    """
    result = _run(
        f"""
        import importlib, signal, threading
        lock = getattr(importlib.import_module({module!r}), {lock!r})
        held, release = threading.Event(), threading.Event()

        def holding():
            with lock:
                held.set()
                release.wait()

        threading.Thread(target=holding, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a hung child is killed by SIGALRM
            try:
                exec({first_use!r})
            finally:
                os._exit(0)
        release.set()
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "child exit 0", result.stdout + result.stderr
    assert lines[0].startswith("used ") and int(lines[0].split()[1]) > 0


def test_a_warm_up_a_thread_of_the_parent_ran_at_the_fork_is_over_in_the_child() -> None:
    """That thread does not exist in the child: its warm-up never ended there, and the child's monitor
    judged no event-loop lag, CPU or memory growth for as long as the child ran."""
    result = _run(
        """
        import threading, time
        from context_manager import PerformanceMonitor, warming_up
        from context_manager.core.warmup import warm_ups

        started, release = threading.Event(), threading.Event()

        def warm():
            with warming_up("search index"):
                started.set()
                release.wait()

        threading.Thread(target=warm, daemon=True).start()
        started.wait()

        async def blocked_loop():
            print("running", [span.what for span in warm_ups() if span.ended is None], flush=True)
            monitor = PerformanceMonitor(sample_interval=0.05)
            async with monitor:
                await monitor.wait_for_sample()
                time.sleep(0.3)  # the child's own block of its loop
                await monitor.wait_for_sample()
                advice = monitor.recommendations()
                print("judged", any("Event loop lag" in line for line in advice), flush=True)

        code = child_process(blocked_loop)
        print("parent running", [span.what for span in warm_ups() if span.ended is None], flush=True)
        release.set()
        print("child exit", code, flush=True)
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "running []",
        "judged True",
        "parent running ['search index']",
        "child exit 0",
    ], result.stdout + result.stderr


@pytest.mark.embeddings
def test_a_worker_forked_after_the_parent_embedded_embeds(tmp_path: Path) -> None:
    """torch's thread pool does not survive a fork: a worker forked from a master that had embedded
    (``gunicorn --preload`` warming the model, a ``multiprocessing`` pool) hung for ever in its first
    embed. The worker's own manager finds its memory by meaning, with the model the parent loaded."""
    result = _run(
        """
        import signal
        from context_manager.core.memory.embeddings import SentenceTransformerEmbedder

        parent_vector = SentenceTransformerEmbedder().embed(["the parent warms the model up"])[0]

        async def worker():
            signal.alarm(60)  # a hung child is killed by SIGALRM
            config = ContextManagerConfig(
                storage_path=sys.argv[1], embedder="minilm", enable_health_checks=False
            )
            async with MemoryManager(config) as memory:
                await memory.add_memory("I moved to Lisbon last spring", user_id="worker")
                hits = await memory.search_memory("which city do I live in?", user_id="worker")
                print("found", [hit.content for hit in hits][:1], flush=True)
            again = SentenceTransformerEmbedder().embed(["the parent warms the model up"])[0]
            print("same vector", float(again @ parent_vector) > 0.9999, flush=True)

        print("child exit", child_process(worker), flush=True)
        """,
        str(tmp_path / "store"),
        timeout=150,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "found ['I moved to Lisbon last spring']",
        "same vector True",
        "child exit 0",
    ], result.stdout + result.stderr


@pytest.mark.embeddings
def test_only_the_forking_thread_of_a_worker_embeds_on_one_core() -> None:
    """The forking thread's first embed sets torch to one thread there; torch gives every thread that
    first runs it afterwards the count last set, so the worker's other threads (``asyncio.to_thread``,
    where managers embed) embedded on one core too."""
    result = _run(
        """
        import signal, threading
        import torch
        from context_manager.core.memory.embeddings import SentenceTransformerEmbedder

        torch.set_num_threads(2)
        SentenceTransformerEmbedder().embed(["the parent warms the model up"])

        async def worker():
            signal.alarm(60)  # a hung child is killed by SIGALRM
            SentenceTransformerEmbedder().embed(["the forking thread embeds"])
            print("forking thread", torch.get_num_threads(), flush=True)
            counts = []
            def other():
                SentenceTransformerEmbedder().embed(["another thread embeds"])
                counts.append(torch.get_num_threads())
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
            print("other thread", counts, flush=True)
            SentenceTransformerEmbedder().embed(["the forking thread embeds again"])
            print("forking thread again", torch.get_num_threads(), flush=True)

        print("child exit", child_process(worker), flush=True)
        """,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "forking thread 1",
        "other thread [2]",
        "forking thread again 1",
        "child exit 0",
    ], result.stdout + result.stderr
