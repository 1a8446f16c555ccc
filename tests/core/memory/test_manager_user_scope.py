"""``EnhancedContextManager(user_id=...)``: one store, many end users, no user sees another's memories.

A web app runs one manager per request or conversation on one storage. What a manager's compression
evicts (and the full text of the tool outputs it cuts) is written to memory under its user, and its
``search_memory`` and ``optimize_system`` see that user's memories only. Without a ``user_id`` the
manager uses memory's default namespace, as before. On SQLite the managers take turns (a storage is
held by one manager of a process at a time); on PostgreSQL they run side by side.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from context_manager import ALL_USERS, ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import InvalidArgumentError, InvalidMemoryError

from .conftest import backend_options

ROOT = Path(__file__).resolve().parents[3]
FILLER = "filler turn {step} about the weather, the traffic and nothing in particular"


@pytest.fixture
def make_config(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Configs on one storage (a directory, or a PostgreSQL schema), with a small window."""
    options = backend_options(backend_name, request)
    if options:
        options["postgres_pool_size"] = 2

    def make(**extra: Any) -> ContextManagerConfig:
        base: dict[str, Any] = {
            "storage_path": tmp_path / "storage",
            "cache_path": tmp_path / "cache",
            "max_tokens": 400,
            "compression_ratio": 0.7,
        }
        return ContextManagerConfig(**{**base, **options, **extra})

    return make


async def tell_and_evict(manager: EnhancedContextManager, fact: str) -> None:
    """Add ``fact`` then enough filler that compression evicts it from the window."""
    await manager.add_message("user", fact)
    fact_id = manager.messages[-1].id
    await manager.add_message("user", "thanks")  # the newest request is always kept
    for step in range(40):
        await manager.add_message("assistant", FILLER.format(step=step))
    assert fact_id not in {m.id for m in manager.messages}, "not evicted: the test proves nothing"


def contents(found: list[Any]) -> str:
    return " | ".join(memory.content for memory in found)


async def test_evicted_messages_are_found_only_by_their_users_manager(
    make_config: Any, backend_name: str
) -> None:
    ana_fact = "my locker code is 4417 at the north gate"
    bo_fact = "my locker code is 9902 at the south gate"
    if backend_name == "sqlite":  # one manager of a process holds the storage at a time
        async with EnhancedContextManager(make_config(), user_id="ana") as ana:
            await tell_and_evict(ana, ana_fact)
            assert "4417" in contents(await ana.search_memory("locker code gate"))
        async with EnhancedContextManager(make_config(), user_id="bo") as bo:
            await tell_and_evict(bo, bo_fact)
            found = contents(await bo.search_memory("locker code gate"))
            assert "9902" in found and "4417" not in found
    else:  # two workers at once on one PostgreSQL
        async with (
            EnhancedContextManager(make_config(), user_id="ana") as ana,
            EnhancedContextManager(make_config(), user_id="bo") as bo,
        ):
            await asyncio.gather(tell_and_evict(ana, ana_fact), tell_and_evict(bo, bo_fact))
            ana_found, bo_found = await asyncio.gather(
                ana.search_memory("locker code gate"), bo.search_memory("locker code gate")
            )
            assert "4417" in contents(ana_found) and "9902" not in contents(ana_found)
            assert "9902" in contents(bo_found) and "4417" not in contents(bo_found)
    async with EnhancedContextManager(make_config()) as anonymous:  # the default namespace
        assert anonymous.user_id is None
        found = await anonymous.search_memory("locker code gate")
        assert "4417" not in contents(found) and "9902" not in contents(found)
        stored = await anonymous.memory_manager.stored_copies(user_id=ALL_USERS)
        owners = {m.user_id for m in stored if "locker code" in m.content}
        assert owners == {"ana", "bo"}
        # whoever administers the store reaches any user through memory_manager
        as_ana = await anonymous.memory_manager.search_memory("locker code gate", user_id="ana")
        assert "4417" in contents(as_ana) and "9902" not in contents(as_ana)


async def test_without_a_user_id_evicted_messages_go_to_the_default_namespace(make_config: Any) -> None:
    async with EnhancedContextManager(make_config()) as manager:
        await tell_and_evict(manager, "the spare key hangs behind the boiler")
        assert "boiler" in contents(await manager.search_memory("spare key"))
        await manager.flush()
        default = await manager.memory_manager.search_memory("spare key", user_id=None)
        assert "boiler" in contents(default)
        assert manager.get_system_status()["memory"]["user_id"] is None


async def test_a_resumed_conversation_keeps_writing_and_searching_as_its_user(make_config: Any) -> None:
    async with EnhancedContextManager(make_config(), conversation_id="c-1", user_id="ana") as first:
        await tell_and_evict(first, "my locker code is 4417 at the north gate")
    async with EnhancedContextManager(make_config(), conversation_id="c-1", user_id="ana") as resumed:
        await tell_and_evict(resumed, "my bike is the red one by the east door")
        found = contents(await resumed.search_memory("locker code gate"))
        assert "4417" in found
        assert "red one" in contents(await resumed.search_memory("bike east door"))
        status = resumed.get_system_status()
        assert status["memory"]["user_id"] == "ana"
        assert status["conversation"]["conversation_id"] == "c-1"
        stored = await resumed.memory_manager.stored_copies(user_id=ALL_USERS)
        context = [m for m in stored if m.source == "context"]
        assert context and {m.user_id for m in context} == {"ana"}
    async with EnhancedContextManager(make_config(), user_id="bo") as bo:
        assert "4417" not in contents(await bo.search_memory("locker code gate"))
        assert "red one" not in contents(await bo.search_memory("bike east door"))


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from context_manager import ContextManagerConfig, EnhancedContextManager

    async def main(storage, dsn):
        options = {"storage_path": Path(storage), "cache_path": Path(storage) / "cache",
                   "max_tokens": 400, "compression_ratio": 0.7}
        if dsn != "-":
            options.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
        manager = EnhancedContextManager(ContextManagerConfig(**options), conversation_id="c-2",
                                         user_id="ana")
        await manager.initialize()
        await manager.add_message("user", "my locker code is 4417 at the north gate")
        fact_id = manager.messages[-1].id
        await manager.add_message("user", "thanks")
        step = 0
        while fact_id in {m.id for m in manager.messages}:
            await manager.add_message("assistant", f"filler turn {step} about nothing in particular")
            step += 1
        print(len(manager.context_window.evicted_queue), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # before memory stored what the compression evicted

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_messages_reindexed_after_a_crash_are_written_under_the_resuming_user(
    make_config: Any, backend_name: str, request: pytest.FixtureRequest
) -> None:
    config = make_config()
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else "-"
    process = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", KILLED_WRITER, str(config.storage_path), dsn],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert process.returncode == -9, process.stderr[-3000:]
    if backend_name == "postgres":  # (on SQLite the writer is usually done before the kill)
        assert int(process.stdout.split()[-1]) > 0, "nothing left to re-index: the test proves nothing"
    async with EnhancedContextManager(config, conversation_id="c-2", user_id="ana") as resumed:
        found = contents(await resumed.search_memory("locker code gate"))
        assert "4417" in found
        stored = await resumed.memory_manager.stored_copies(user_id=ALL_USERS)
        assert {m.user_id for m in stored if m.source == "context"} == {"ana"}
    async with EnhancedContextManager(config) as anonymous:
        assert "4417" not in contents(await anonymous.search_memory("locker code gate"))


async def test_cut_tool_outputs_are_kept_under_the_managers_user(make_config: Any) -> None:
    async def report(n: int) -> str:
        return " ".join(f"line{i}" for i in range(n)) + " zebra-unique-marker"

    async with EnhancedContextManager(make_config(max_tokens=4000), user_id="ana") as ana:
        ana.tool_manager.register_function_tool("report", report, "Report", max_output_tokens=30)
        await ana.execute_tool_calls([{"id": "call_1", "name": "report", "arguments": {"n": 300}}])
        assert "zebra-unique-marker" not in ana.messages[-1].content
        found = await ana.search_memory("zebra-unique-marker", limit=3)
        assert found and found[0].user_id == "ana" and "tool_output" in found[0].tags
    async with EnhancedContextManager(make_config(max_tokens=4000)) as anonymous:
        assert not await anonymous.search_memory("zebra-unique-marker", limit=3)


async def test_optimize_system_consolidates_the_managers_user(make_config: Any) -> None:
    async with EnhancedContextManager(make_config(), user_id="ana") as ana:
        memory = ana.memory_manager
        for text in (
            "Ana prefers window seats on long flights",
            "Ana prefers window seats on long flights!",
        ):
            await memory.add_memory(text, user_id="ana")
            await memory.add_memory(text, user_id="bo")
        report = await ana.optimize_system()
        assert report["memory"]["consolidated_count"] == 2
        assert report["memory"]["memories_before"] == 2 and report["memory"]["memories_after"] == 1
        bo = await memory.get_memory_stats(user_id="bo")
        assert bo["total_memories"] - bo["superseded"] == 2  # another user's memories are left alone


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "ana\tbo", "ana\n", "a\x00b", "x" * 257, 7, b"ana", ALL_USERS],
    ids=["empty", "spaces", "tab", "newline", "nul", "too-long", "int", "bytes", "all-users"],
)
def test_an_invalid_user_id_is_refused_and_nothing_is_created(tmp_path: Path, bad: Any) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "storage", cache_path=tmp_path / "cache")
    with pytest.raises(InvalidMemoryError, match="user_id") as raised:
        EnhancedContextManager(config, user_id=bad)
    assert isinstance(raised.value, InvalidArgumentError)
    assert "control characters" in str(raised.value)
    assert not (tmp_path / "storage").exists() and not (tmp_path / "cache").exists()


def test_user_id_is_a_read_only_property(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "storage")
    manager = EnhancedContextManager(config, conversation_id="c", user_id="ana 🚀")
    assert manager.user_id == "ana 🚀"
    with pytest.raises(AttributeError):
        manager.user_id = "bo"  # type: ignore[misc]
    assert EnhancedContextManager(config).user_id is None
    assert EnhancedContextManager(config).get_system_status()["memory"]["user_id"] is None
