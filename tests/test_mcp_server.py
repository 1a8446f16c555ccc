"""The MCP server (context_manager/mcp_server.py, ``context-manager mcp serve``).

Over stdio the MCP SDK's own client starts the real command in a subprocess with a stripped environment
(only the SDK's safe defaults plus the path to this checkout), as MCP clients do; the rest uses the SDK's
in-process client, and one test the streamable HTTP transport on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from typer.testing import CliRunner

import context_manager
from context_manager import ContextManagerConfig
from context_manager.cli import app
from context_manager.core.errors import ConfigurationError, InvalidArgumentError, ToolRegistrationError
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.tool_system import ToolManager, ToolPermission, tool
from context_manager.mcp_server import create_mcp_server, load_tool_registry

SOURCE_ROOT = str(Path(context_manager.__file__).resolve().parents[1])
SERVER_ENV = {"PYTHONPATH": SOURCE_ROOT, "PYTHON_CONTEXT_MANAGER_EMBEDDER": "none"}
"""The environment of the servers these tests start (the SDK passes a stripped one, without the tests'
``PYTHON_CONTEXT_MANAGER_EMBEDDER=none``): each server loaded MiniLM from its start (~6 s of CPU), and a
``memory_add`` waited for that load, which took over the 30 s a closed stdin grants on a loaded machine."""
MEMORY_TOOLS = {"memory_add", "memory_search", "memory_delete", "memory_stats"}


def stdio_server(storage: Path | None, *extra: str, env: dict[str, str] | None = None) -> Client:
    where = ["--storage", str(storage)] if storage is not None else []
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "context_manager.cli", "mcp", "serve", *where, *extra],
        env={**SERVER_ENV, **(env or {})},  # merged over the SDK's stripped default environment
    )
    return Client(parameters, read_timeout_seconds=60)


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


INITIALIZE_PARAMS = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"},
}


class RawStdioServer:
    """``context-manager mcp serve`` over stdio in a subprocess, spoken to in raw JSON-RPC lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, storage: Path, *extra: str, stderr: int = asyncio.subprocess.PIPE) -> RawStdioServer:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(storage), *extra],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=SERVER_ENV,
        )
        return cls(process)

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 60))
        return reply

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a JSON-RPC message; its answer if it is a request (has an id), else ``{}``."""
        await self.send(json.dumps({"jsonrpc": "2.0", **message}))
        return await self.answer() if "id" in message else {}


# --- over stdio, the real command ------------------------------------------------------------------------


async def test_mcp_stdio_lists_tools_and_finds_what_was_added(tmp_path: Path) -> None:
    async with stdio_server(tmp_path / "memory", "--user", "alice") as client:
        assert client.server_info is not None and client.server_info.name == "context-manager"
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == MEMORY_TOOLS
        add_schema = tools["memory_add"].input_schema
        assert add_schema["required"] == ["content"]
        assert add_schema["properties"]["importance"]["maximum"] == 1.0
        assert (
            tools["memory_search"].annotations is not None
            and tools["memory_search"].annotations.read_only_hint
        )

        added = await client.call_tool(
            "memory_add",
            {"content": "Alice's flat is on Rua Augusta 31", "importance": 0.8, "tags": ["home"]},
        )
        assert not added.is_error, text_of(added)
        assert added.structured_content is not None
        memory_id = added.structured_content["id"]
        found = await client.call_tool(
            "memory_search", {"query": "where does Alice live? Rua Augusta", "limit": 3}
        )
        assert not found.is_error
        results = found.structured_content["results"]  # type: ignore[index]
        assert results[0]["id"] == memory_id and results[0]["content"] == "Alice's flat is on Rua Augusta 31"
        assert results[0]["tags"] == ["home"] and results[0]["score"] > 0

        resources = {str(resource.uri) for resource in (await client.list_resources()).resources}
        assert resources == {"memory://stats", "memory://recent"}
        stats = json.loads((await client.read_resource("memory://stats")).contents[0].text)  # type: ignore[union-attr]
        assert stats["total_memories"] == 1


async def test_mcp_stdio_bad_argument_is_an_error_result_and_the_session_continues(tmp_path: Path) -> None:
    async with stdio_server(tmp_path / "memory") as client:
        too_important = await client.call_tool("memory_add", {"content": "x", "importance": 5})
        assert too_important.is_error and "importance" in text_of(too_important)
        missing = await client.call_tool("memory_add", {"importance": 0.5})
        assert missing.is_error and "content" in text_of(missing)
        wrong_type = await client.call_tool("memory_search", {"query": "tea", "limit": "many"})
        assert wrong_type.is_error and "limit" in text_of(wrong_type)
        empty = await client.call_tool("memory_search", {"query": ""})
        assert empty.is_error
        typo = await client.call_tool("memory_search", {"query": "tea", "limt": 3})
        assert typo.is_error and "limt: unexpected argument; allowed query, limit" in text_of(typo)
        unknown = await client.call_tool("memory_forget_everything", {})
        assert unknown.is_error and "memory_forget_everything" in text_of(unknown)
        bad_delete = await client.call_tool("memory_delete", {"memory_id": "no-such-id"})
        assert bad_delete.is_error and "no memory with id 'no-such-id'" in text_of(bad_delete)
        # the session is still up and works
        added = await client.call_tool("memory_add", {"content": "Bob drinks green tea", "tags": ["drinks"]})
        assert not added.is_error
        found = await client.call_tool("memory_search", {"query": "green tea"})
        assert [item["content"] for item in found.structured_content["results"]] == ["Bob drinks green tea"]  # type: ignore[index]


async def test_mcp_stdio_a_server_for_bob_does_not_see_alices_memories(tmp_path: Path) -> None:
    storage = tmp_path / "memory"
    async with stdio_server(storage, "--user", "alice") as alice:
        added = await alice.call_tool(
            "memory_add", {"content": "Alice's locker code is 4417", "importance": 0.9}
        )
        alice_id = added.structured_content["id"]  # type: ignore[index]
    async with stdio_server(storage, "--user", "bob") as bob:
        found = await bob.call_tool("memory_search", {"query": "locker code 4417"})
        assert found.structured_content == {"results": []}
        stats = await bob.call_tool("memory_stats", {})
        assert stats.structured_content["total_memories"] == 0  # type: ignore[index]
        recent = json.loads((await bob.read_resource("memory://recent")).contents[0].text)  # type: ignore[union-attr]
        assert recent == []
        deleted = await bob.call_tool("memory_delete", {"memory_id": alice_id})
        assert deleted.is_error and "no memory with id" in text_of(deleted)  # not "someone else's"
    async with stdio_server(storage, "--user", "alice") as alice:
        found = await alice.call_tool("memory_search", {"query": "locker code"})
        assert [item["id"] for item in found.structured_content["results"]] == [alice_id]  # type: ignore[index]


async def test_mcp_stdio_a_restarted_server_finds_what_was_stored(tmp_path: Path) -> None:
    storage = tmp_path / "memory"
    async with stdio_server(storage) as client:
        ids = []
        for text in ("The staging database is db-stg-02", "Deploys happen on Thursdays at 14:00 UTC"):
            result = await client.call_tool("memory_add", {"content": text})
            ids.append(result.structured_content["id"])  # type: ignore[index]
    async with stdio_server(storage) as client:  # a new process on the same storage
        found = await client.call_tool("memory_search", {"query": "when are deploys?"})
        assert found.structured_content["results"][0]["id"] == ids[1]  # type: ignore[index]
        recent = json.loads((await client.read_resource("memory://recent")).contents[0].text)  # type: ignore[union-attr]
        assert [item["id"] for item in recent] == [ids[1], ids[0]]  # newest first
        deleted = await client.call_tool("memory_delete", {"memory_id": ids[0]})
        assert deleted.structured_content == {"deleted": ids[0], "originals_deleted": []}
    async with stdio_server(storage) as client:
        stats = await client.call_tool("memory_stats", {})
        assert stats.structured_content["total_memories"] == 1  # type: ignore[index]


async def test_mcp_stdio_servers_share_one_postgresql_memory(postgres_dsn: str) -> None:
    # the DSN (a secret) goes through the client's env block, not the command line
    env = {"PYTHON_CONTEXT_MANAGER_POSTGRES_DSN": postgres_dsn}
    postgres = ("--set", "memory_backend=postgres")
    async with (
        stdio_server(None, *postgres, "--user", "alice", env=env) as first,
        stdio_server(None, *postgres, "--user", "alice", env=env) as second,
        stdio_server(None, *postgres, "--user", "bob", env=env) as bob,
    ):
        added = await first.call_tool(
            "memory_add", {"content": "Alice's standup moved to 09:30", "importance": 0.8}
        )
        assert not added.is_error, text_of(added)
        found = await second.call_tool("memory_search", {"query": "when is the standup?"})
        assert found.structured_content["results"][0]["id"] == added.structured_content["id"]  # type: ignore[index]
        nothing = await bob.call_tool("memory_search", {"query": "standup"})
        assert nothing.structured_content == {"results": []}
        deleted = await second.call_tool("memory_delete", {"memory_id": added.structured_content["id"]})  # type: ignore[index]
        assert not deleted.is_error
        gone = await first.call_tool("memory_search", {"query": "standup"})
        assert gone.structured_content == {"results": []}


# --- streamable HTTP on 127.0.0.1 ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_for_port(port: int) -> None:
    """Until the server's port takes connections (its banner comes just before uvicorn binds it)."""
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.05)


async def open_raw_session(http: Any, url: str) -> dict[str, str]:
    """Initialize an MCP session over raw HTTP; the headers its later requests carry."""
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    opened = await http.post(
        url,
        headers=headers,
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE_PARAMS},
    )
    headers["mcp-session-id"] = opened.headers["mcp-session-id"]
    headers["mcp-protocol-version"] = INITIALIZE_PARAMS["protocolVersion"]
    await http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


async def call_until_started(http: Any, url: str, tool: str, started: Path) -> asyncio.Future[Any]:
    """Call ``tool`` (argument name "q3") in a new session; the pending call, once ``started`` exists."""
    headers = await open_raw_session(http, url)
    params = {"name": tool, "arguments": {"name": "q3"}}
    call = asyncio.ensure_future(
        http.post(
            url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
        )
    )
    for _ in range(3000):  # until the call runs
        if await asyncio.to_thread(started.exists):
            break
        await asyncio.sleep(0.02)
    return call


async def test_mcp_http_serves_the_same_tools_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "context_manager.cli",
        "mcp",
        "serve",
        "--storage",
        str(tmp_path / "memory"),
        "--user",
        "carol",
        "--http",
        str(port),
        env={**SERVER_ENV, "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        banner = await asyncio.wait_for(process.stderr.readline(), timeout=60)
        assert f"serving on http://127.0.0.1:{port}/mcp" in banner.decode()
        await wait_for_port(port)
        import httpx

        async with httpx.AsyncClient() as raw:  # DNS rebinding: a page on another host reaching the port
            refused = await raw.post(
                f"http://127.0.0.1:{port}/mcp",
                headers={"Host": "attacker.example", "Content-Type": "application/json"},
                content=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',
            )
            assert refused.status_code in (400, 403, 421)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            assert set(tool.name for tool in (await client.list_tools()).tools) == MEMORY_TOOLS
            await client.call_tool("memory_add", {"content": "Carol's badge number is 88"})
            bad = await client.call_tool("memory_search", {"query": "badge", "limit": 0})
            assert bad.is_error
            found = await client.call_tool("memory_search", {"query": "badge number"})
            assert found.structured_content["results"][0]["content"] == "Carol's badge number is 88"  # type: ignore[index]
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


# --- in process ------------------------------------------------------------------------------------------


@asynccontextmanager
async def in_process(tmp_path: Path, **options: Any) -> AsyncIterator[Client]:
    config = ContextManagerConfig(storage_path=tmp_path / "memory")
    server = create_mcp_server(config, **options)
    async with Client(server) as client:
        yield client


async def test_mcp_memory_add_describes_the_configured_long_term_threshold(tmp_path: Path) -> None:
    """The importance argument said "0.7+ is kept long-term" whatever the store's threshold was."""
    config = ContextManagerConfig(storage_path=tmp_path / "memory", long_term_importance_threshold=0.85)
    async with Client(create_mcp_server(config)) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        described = listed["memory_add"].input_schema["properties"]["importance"]["description"]
        assert "0.85+ is kept long-term" in described
        # and so do the server's instructions (they said "0.8+ for things that must not be forgotten",
        # which a threshold of 0.85 keeps short-term only)
        assert client.instructions is not None and "0.85+" in client.instructions
        assert "0.8+" not in client.instructions
        # the stored memory comes back as its short-term copy: the output schema says the long-term one
        # exists too (it read "where it is kept: short", contradicting the importance given)
        tier = listed["memory_add"].output_schema["properties"]["tier"]["description"]  # type: ignore[index]
        assert "long-term copy" in tier
        stored = await client.call_tool(
            "memory_add", {"content": "Dana owns the billing API", "importance": 0.85}
        )
        assert not stored.is_error
    async with MemoryManager(config) as memory:
        copies = await memory.stored_copies()
        assert sorted(copy.tier.value for copy in copies) == ["long", "short"]  # as the description says


@tool(name="word_count", rate_limit=2, rate_window=60.0, timeout=5.0)
async def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: The text to count.
    """
    return len(text.split())


@tool(name="slow_report", timeout=0.2)
async def slow_report(topic: str) -> str:
    """Write a report (slowly)."""
    await asyncio.sleep(30)
    return topic


@tool(name="wipe_disk", permission=ToolPermission.DANGEROUS)
async def wipe_disk(device: str) -> str:
    """Erase a device."""
    raise AssertionError("must never run without approval")


async def test_mcp_application_tools_keep_their_schemas_limits_permissions_and_timeouts(
    tmp_path: Path,
) -> None:
    tools = ToolManager()
    for function in (word_count, slow_report, wipe_disk):
        tools.register_tool(function)
    async with in_process(tmp_path, user_id="alice", tools=tools) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == MEMORY_TOOLS | {"word_count", "slow_report", "wipe_disk"}
        assert listed["word_count"].input_schema == tools.get_tool("word_count").parameters_schema
        assert listed["word_count"].description.startswith("Count the words")
        assert listed["wipe_disk"].annotations.destructive_hint  # type: ignore[union-attr]

        ok = await client.call_tool("word_count", {"text": "one two three"})
        assert not ok.is_error and text_of(ok) == "3"
        invalid = await client.call_tool("word_count", {"text": 7})
        assert invalid.is_error and text_of(invalid).startswith("Error (invalid_arguments)")
        await client.call_tool("word_count", {"text": "four"})
        limited = await client.call_tool("word_count", {"text": "five"})
        assert limited.is_error and text_of(limited).startswith("Error (rate_limited)")
        denied = await client.call_tool("wipe_disk", {"device": "/dev/sda"})
        assert denied.is_error and text_of(denied).startswith("Error (permission_denied)")
        timed_out = await client.call_tool("slow_report", {"topic": "q3"})
        assert timed_out.is_error and text_of(timed_out).startswith("Error (timeout)")
        still_fine = await client.call_tool("memory_add", {"content": "the session survived every failure"})
        assert not still_fine.is_error
    stats = tools.get_tool_stats()["tools"]
    assert stats["word_count"]["calls"] == 4 and stats["wipe_disk"]["successes"] == 0


async def test_mcp_rate_limits_are_per_server_user(tmp_path: Path) -> None:
    tools = ToolManager()
    tools.register_tool(word_count)
    config = ContextManagerConfig(storage_path=tmp_path / "memory")
    memory = MemoryManager(config)
    async with memory:
        for user in ("alice", "bob"):
            server = create_mcp_server(config, user_id=user, memory=memory, tools=tools)
            async with Client(server) as client:
                results = [await client.call_tool("word_count", {"text": "a b"}) for _ in range(3)]
                assert [result.is_error for result in results] == [False, False, True]


async def test_mcp_delete_is_scoped_to_the_server_user(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "memory")
    async with MemoryManager(config) as memory:
        theirs = await memory.add_memory("Dana's passport expires in May", user_id="dana")
        shared = await memory.add_memory("The office closes at 18:00")  # default namespace
        server = create_mcp_server(config, user_id="erin", memory=memory)
        async with Client(server) as client:
            for memory_id in (theirs.id, shared.id):
                result = await client.call_tool("memory_delete", {"memory_id": memory_id})
                assert result.is_error and f"no memory with id {memory_id!r}" in text_of(result)
            found = await client.call_tool("memory_search", {"query": "passport office"})
            assert found.structured_content == {"results": []}
        assert await memory.get_memory(theirs.id) is not None
        assert await memory.get_memory(shared.id) is not None


async def test_mcp_recent_resource_lists_the_newest_first_within_its_limit(tmp_path: Path) -> None:
    async with in_process(tmp_path, user_id="frank", recent_limit=3) as client:
        for number in range(5):
            await client.call_tool("memory_add", {"content": f"fact number {number} about the garden"})
            await asyncio.sleep(0.002)  # distinct creation times
        recent = json.loads((await client.read_resource("memory://recent")).contents[0].text)  # type: ignore[union-attr]
        assert [item["content"] for item in recent] == [
            f"fact number {n} about the garden" for n in (4, 3, 2)
        ]
        stats = json.loads((await client.read_resource("memory://stats")).contents[0].text)  # type: ignore[union-attr]
        assert stats["total_memories"] == 5


async def test_mcp_two_sessions_share_one_open_store(tmp_path: Path) -> None:
    server = create_mcp_server(ContextManagerConfig(storage_path=tmp_path / "memory"), user_id="gina")
    async with Client(server) as first, Client(server) as second:
        await first.call_tool("memory_add", {"content": "Gina's cat is called Miso"})
        found = await second.call_tool("memory_search", {"query": "cat name"})
        assert found.structured_content["results"][0]["content"] == "Gina's cat is called Miso"  # type: ignore[index]
    async with Client(server) as third:  # the store was closed with the last session and opens again
        found = await third.call_tool("memory_search", {"query": "Miso"})
        assert len(found.structured_content["results"]) == 1  # type: ignore[index]


async def test_mcp_memory_stats_do_not_show_the_servers_storage_location(tmp_path: Path) -> None:
    """``memory_stats`` and ``memory://stats`` gave the client (and the model) the server's storage path, a
    file path on the server (with PostgreSQL, the DSN's user, host and database): nothing the model can
    use, and what the server's file system or network looks like is the server's business (the reference
    MCP memory server does not show its file either). The figures stay; the location is left out."""
    storage = tmp_path / "home" / "alice" / "private-memory"
    async with Client(create_mcp_server(ContextManagerConfig(storage_path=storage), user_id="ivy")) as client:
        await client.call_tool("memory_add", {"content": "Ivy's train leaves at 7:40"})
        tool = await client.call_tool("memory_stats", {})
        resource = (await client.read_resource("memory://stats")).contents[0].text  # type: ignore[union-attr]
    for name, stats in (("tool", tool.structured_content), ("resource", json.loads(resource))):
        assert stats is not None and stats["total_memories"] == 1, name
        assert "storage_path" not in stats, name
        assert "private-memory" not in json.dumps(stats) and str(tmp_path) not in json.dumps(stats), name
        assert stats["backend"] == "sqlite" and stats["bytes_on_disk"]["total"] > 0, name
    assert "private-memory" not in text_of(tool)


def test_mcp_memory_stats_are_strict_json_even_with_a_nan_figure() -> None:
    """The statistics went through ``json.dumps(default=str)``: a NaN or an infinity in a figure came out
    as ``NaN``/``Infinity``, which is no JSON (a client's strict parser refuses the whole answer). No
    figure of the built-in stores is NaN today (importance and dates are checked on the way in); a
    backend's figure that is one now reads ``null``, as in :meth:`DiagnosticReport.to_dict`."""
    from context_manager.mcp_server import _client_stats

    stats = {
        "total_memories": 0,
        "mean_importance": float("nan"),
        "oldest": float("inf"),
        "index": {"problems": ("a", "b"), "vectors": float("-inf")},
        "storage_path": "/srv/memory",
    }
    ready = _client_stats(stats)
    text = json.dumps(ready, allow_nan=False)  # raised ValueError: out of range float values
    assert json.loads(text) == {
        "total_memories": 0,
        "mean_importance": None,
        "oldest": None,
        "index": {"problems": ["a", "b"], "vectors": None},
    }


async def test_mcp_memory_stats_after_a_failed_write_do_not_show_the_storage_location(tmp_path: Path) -> None:
    """After a failed write, ``memory_stats`` still gave the client the server's storage path, in
    ``writes.last_error`` ("StorageError: long-term memory database /srv/.../memories.sqlite3: database is
    locked"), which ``storage_path`` was left out of the statistics to hide. The error stays, its
    location written ``<storage>``."""
    storage = tmp_path / "home" / "alice" / "private-memory"
    async with Client(create_mcp_server(ContextManagerConfig(storage_path=storage), user_id="ivy")) as client:
        await client.call_tool("memory_add", {"content": "Ivy's bus leaves at 7:10"})
        lock = sqlite3.connect(storage / "memories.sqlite3", timeout=0.1, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # another process holds the database: the next write fails
            failed = await client.call_tool(
                "memory_add", {"content": "Ivy's train leaves at 7:40", "importance": 0.95}
            )
            assert failed.is_error
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        tool = await client.call_tool("memory_stats", {})
        resource = (await client.read_resource("memory://stats")).contents[0].text  # type: ignore[union-attr]
    for name, stats in (("tool", tool.structured_content), ("resource", json.loads(resource))):
        assert stats is not None, name
        assert stats["writes"]["failures"] == 1, name
        last_error = stats["writes"]["last_error"]
        assert "database is locked" in last_error and "<storage>" in last_error, (name, last_error)
        assert "private-memory" not in json.dumps(stats) and str(tmp_path) not in json.dumps(stats), name


async def test_mcp_a_failed_call_does_not_show_the_storage_location(tmp_path: Path) -> None:
    """A memory tool failing on storage answered the client (and the model) with the server's file path
    ("long-term memory database /home/alice/private-memory/memories.sqlite3: database is locked"), which
    ``memory_stats`` hides. The error stays, its location written ``<storage>``; the resources too."""
    storage = tmp_path / "home" / "alice" / "private-memory"
    async with Client(create_mcp_server(ContextManagerConfig(storage_path=storage), user_id="ivy")) as client:
        important = {"content": "Ivy's bus leaves at 7:10", "importance": 0.95}
        kept = await client.call_tool("memory_add", important)
        kept_id = kept.structured_content["id"]  # type: ignore[index]
        lock = sqlite3.connect(storage / "memories.sqlite3", timeout=0.1, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # another process holds the database: writes fail
            failures = [
                await client.call_tool("memory_add", {**important, "content": "Ivy's train leaves at 7:40"}),
                await client.call_tool("memory_delete", {"memory_id": kept_id}),
            ]
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    for failed in failures:
        text = text_of(failed)
        assert failed.is_error and "database is locked" in text and "<storage>" in text, text
        assert "private-memory" not in text and str(tmp_path) not in text, text


async def test_mcp_a_refused_call_answers_while_the_storage_filesystem_hangs(tmp_path: Path) -> None:
    """Hiding the storage location in a tool's error resolved the storage path (``realpath``) on the event
    loop at every error: with the storage's network filesystem hung after the server started, a call
    refused for its arguments alone (no storage touched) blocked the whole server, every session, until
    the filesystem answered. The path is resolved once, when the server is made."""
    from tests.hung_filesystem import hung_mount

    storage = tmp_path / "hung"
    server = create_mcp_server(ContextManagerConfig(storage_path=storage), user_id="ivy")
    async with Client(server) as client:
        kept = await client.call_tool("memory_add", {"content": "Ivy's bus leaves at 7:10"})
        assert not kept.is_error, text_of(kept)
        with hung_mount(tmp_path) as hung:  # over the storage directory: its server went down
            unblock = threading.Timer(10, hung.release)  # a blocked event loop: the test ends all the same
            unblock.start()
            try:
                started = time.monotonic()
                refused = await client.call_tool("memory_delete", {"memory_id": "x" * 10_000})
                elapsed = time.monotonic() - started
            finally:
                unblock.cancel()
                hung.release()
    text = text_of(refused)
    assert refused.is_error and "memory_id" in text, text
    assert elapsed < 5, f"the refusal took {elapsed:.1f} s"


async def test_mcp_a_failed_call_on_postgresql_does_not_show_the_server(postgres_dsn: str) -> None:
    """With PostgreSQL, a failed call quoted the server's user, host and database ("PostgreSQL at
    host=/srv/... dbname=app user=app: insert failed: ..."): written ``<storage>`` too."""
    from tests.postgres_support import ServerOutage

    outage = ServerOutage(postgres_dsn)
    await outage.restore()
    try:
        config = ContextManagerConfig(
            memory_backend="postgres", postgres_dsn=outage.dsn, postgres_connect_timeout=1.0
        )
        async with Client(create_mcp_server(config, user_id="ivy")) as client:
            added = await client.call_tool("memory_add", {"content": "Ivy's bus leaves at 7:10"})
            assert not added.is_error, text_of(added)
            await outage.cut()
            failed = await client.call_tool("memory_add", {"content": "Ivy's train leaves at 7:40"})
            await outage.restore()
    finally:
        await outage.close()
    text = text_of(failed)
    assert failed.is_error and "PostgreSQL" in text and "<storage>" in text, text
    assert "cm-relay-" not in text and "search_path" not in text, text


async def test_mcp_a_memory_given_but_not_initialized_is_named_in_the_error(tmp_path: Path) -> None:
    """Every call answered "the server is starting or stopping" when the MemoryManager passed in was never
    initialized: nothing pointed at the caller's missing ``initialize()``."""
    memory = MemoryManager(ContextManagerConfig(storage_path=tmp_path / "memory"))
    async with Client(create_mcp_server(memory=memory, user_id="hana")) as client:
        refused = await client.call_tool("memory_add", {"content": "Hana prefers tea"})
        assert refused.is_error and "initialize" in text_of(refused)
        async with memory:  # opened later: the same server then works
            added = await client.call_tool("memory_add", {"content": "Hana prefers tea"})
            assert not added.is_error, text_of(added)


def test_mcp_server_rejects_bad_arguments_clearly(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "memory")
    with pytest.raises(InvalidArgumentError, match="user_id: got ''"):
        create_mcp_server(config, user_id="")
    with pytest.raises(InvalidArgumentError, match="recent_limit"):
        create_mcp_server(config, recent_limit=0)
    clash = ToolManager()

    @tool(name="memory_add")
    async def my_memory_add(content: str) -> str:
        """Shadow the built-in."""
        return content

    clash.register_tool(my_memory_add)
    with pytest.raises(ToolRegistrationError, match="name: got 'memory_add'"):
        create_mcp_server(config, tools=clash)


# --- loading the application's tools, and the command's errors --------------------------------------------


def write_tools_module(directory: Path) -> None:
    (directory / "shop_tools.py").write_text(
        textwrap.dedent(
            '''
            from context_manager.core.tool_system import ToolManager, tool

            @tool(name="order_status")
            async def order_status(order_id: int) -> str:
                """Look up an order."""
                return f"order {order_id}: shipped"

            TOOLS = [order_status]
            registry = ToolManager()
            registry.register_tool(order_status)

            def make_registry():
                return registry

            def broken_factory():
                raise RuntimeError("database not reachable")

            not_tools = 42
            '''
        ),
        encoding="utf-8",
    )


@pytest.mark.parametrize("attribute", ["registry", "TOOLS", "make_registry"])
def test_mcp_load_tool_registry_accepts_a_manager_a_list_or_a_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attribute: str
) -> None:
    write_tools_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shop_tools", raising=False)
    manager = load_tool_registry(f"shop_tools:{attribute}")
    assert [definition.name for definition in manager.list_tools()] == ["order_status"]


def test_mcp_load_tool_registry_errors_name_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tools_module(tmp_path)
    (tmp_path / "crashing_tools.py").write_text("import os\nDSN = os.environ['SHOP_DSN']\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shop_tools", raising=False)
    monkeypatch.delenv("SHOP_DSN", raising=False)
    for spec, fragment in (
        ("shop_tools", "allowed 'module:attribute'"),
        ("no_such_module_xyz:registry", "cannot import 'no_such_module_xyz'"),
        ("shop_tools:missing", "has no 'missing'"),
        ("shop_tools:not_tools", "got a int"),
        # the application's own failures were "internal error ... (a bug; ... report it)" in the command
        ("shop_tools:broken_factory", r"broken_factory\(\) raised RuntimeError: database not reachable"),
        ("crashing_tools:registry", "importing 'crashing_tools' raised KeyError: 'SHOP_DSN'"),
    ):
        with pytest.raises(ConfigurationError, match=fragment):
            load_tool_registry(spec)


async def test_mcp_stdio_serves_application_tools_from_the_command_line(tmp_path: Path) -> None:
    write_tools_module(tmp_path)
    async with stdio_server(
        tmp_path / "memory", "--tools", "shop_tools:TOOLS", "--app-dir", str(tmp_path), "--set", "fsync=true"
    ) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == MEMORY_TOOLS | {"order_status"}
        result = await client.call_tool("order_status", {"order_id": 1042})
        assert not result.is_error and text_of(result) == "order 1042: shipped"


async def test_mcp_stdio_a_tool_output_with_a_lone_surrogate_is_answered(tmp_path: Path) -> None:
    """A lone surrogate (a file name read with ``surrogateescape``) cannot be written as JSON: the call never
    got its answer and the server died with an internal error."""
    (tmp_path / "file_tools.py").write_text(
        textwrap.dedent(
            '''
            from context_manager import tool

            @tool
            async def list_files(folder: str) -> str:
                """List the files of a folder."""
                return "report-\\udcff.txt\\nnotes.md"

            TOOLS = [list_files]
            '''
        ),
        encoding="utf-8",
    )
    async with stdio_server(
        tmp_path / "memory", "--tools", "file_tools:TOOLS", "--app-dir", str(tmp_path)
    ) as client:
        result = await client.call_tool("list_files", {"folder": "."})
        assert not result.is_error and text_of(result) == "report-\ufffd.txt\nnotes.md"
        assert not (await client.call_tool("memory_stats", {})).is_error  # the session goes on


def test_mcp_serve_without_storage_or_with_a_bad_option_fails_clearly(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["mcp", "serve"])
    assert result.exit_code == 1 and "mcp serve needs --storage PATH" in result.stderr
    assert not (tmp_path / "cwd" / "cache").exists()  # nothing created in the working directory
    result = runner.invoke(app, ["mcp", "serve", "--storage", str(tmp_path / "m"), "--set", "max_tokens"])
    assert result.exit_code == 1 and "expected OPTION=VALUE" in result.stderr
    result = runner.invoke(app, ["mcp", "serve", "--storage", str(tmp_path / "m"), "--set", "max_tokens=-5"])
    assert result.exit_code == 1 and "max_tokens: got '-5'" in result.stderr
    result = runner.invoke(
        app, ["mcp", "serve", "--storage", str(tmp_path / "m"), "--tools", "nowhere:tools"]
    )
    assert result.exit_code == 1 and "error: --tools: got 'nowhere:tools'" in result.stderr  # the option


def test_mcp_serve_on_a_locked_store_exits_with_the_reason(tmp_path: Path) -> None:
    storage = tmp_path / "memory"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from context_manager import ContextManagerConfig, MemoryManager\n"
            "async def main():\n"
            f"    async with MemoryManager(ContextManagerConfig(storage_path={str(storage)!r})):\n"
            "        print('open', flush=True); sys.stdin.readline()\n"
            "asyncio.run(main())\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=SERVER_ENV,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        completed = subprocess.run(
            [sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(storage)],
            capture_output=True,
            text=True,
            env=SERVER_ENV,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert completed.returncode == 1
        assert completed.stderr.startswith("error: ") and "lock" in completed.stderr
        assert completed.stdout == ""  # nothing on the protocol channel
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


def test_mcp_serve_on_a_hung_filesystem_ends_and_says_so(tmp_path: Path) -> None:
    """``mcp serve`` with its storage on a hung network filesystem never started and never ended: an MCP
    client's start waited for ever, and every retry left one more stuck process (the path's first look, in
    the configuration, blocked). As the memory commands, it ends within about 10 s saying the storage does
    not answer (exit code 1, nothing on the protocol channel), whether the path is --storage or set by the
    environment."""
    from tests.hung_filesystem import hung_mount

    processes: dict[str, subprocess.Popen[str]] = {}
    results: dict[str, tuple[str, str, int]] = {}
    with hung_mount(tmp_path) as hung:
        storage = str(hung.path / "memory")
        started = time.monotonic()
        try:
            for name, extra, env in (
                ("option", ["--storage", storage], {}),
                ("environment", [], {"PYTHON_CONTEXT_MANAGER_STORAGE_PATH": storage}),
            ):
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "context_manager.cli", "mcp", "serve", *extra],
                    stdin=subprocess.PIPE,  # open, as an MCP client keeps it
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**SERVER_ENV, **env},
                )
            for name, process in processes.items():
                remaining = max(1.0, 45 - (time.monotonic() - started))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stdout, stderr = process.communicate(timeout=remaining)
                    results[name] = (stdout, stderr, process.returncode)
            elapsed = time.monotonic() - started
        finally:
            hung.release()  # a process blocked on the mount cannot even be killed before
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                process.communicate()
    assert set(results) == set(processes), f"never returned: {set(processes) - set(results)}"
    for name, (stdout, stderr, code) in results.items():
        assert code == 1, (name, stdout, stderr)
        assert stdout == "", name  # nothing on the protocol channel
        where = storage if name == "option" else "the configured storage_path"
        assert stderr.startswith(f"error: the storage at {where} does not answer within 10 s"), (name, stderr)
        assert "hung NFS or SMB mount" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert elapsed < 45


def test_mcp_serve_http_on_a_port_in_use_exits_with_the_reason(tmp_path: Path) -> None:
    """The banner said "serving on http://127.0.0.1:PORT/mcp", then uvicorn's own log line and exit code 3
    followed; the command now fails as on a locked store, before the banner (the store is closed again)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(tmp_path / "m")]
            + ["--http", str(port)],
            capture_output=True,
            text=True,
            env=SERVER_ENV,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    assert completed.returncode == 1, completed.stderr
    assert completed.stderr.startswith("error: --http: got ") and f"127.0.0.1:{port}" in completed.stderr
    assert "in use" in completed.stderr and "serving on" not in completed.stderr

    async def reopen() -> None:  # the store was closed (its lock released)
        async with MemoryManager(ContextManagerConfig(storage_path=tmp_path / "m")) as memory:
            assert memory.is_initialized

    asyncio.run(reopen())


async def test_mcp_memory_tools_refuse_unknown_arguments_naming_the_allowed_ones(tmp_path: Path) -> None:
    async with in_process(tmp_path, user_id="hana") as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        for name in MEMORY_TOOLS:  # the schema tells the client, too
            assert listed[name].input_schema["additionalProperties"] is False
        typo = await client.call_tool("memory_search", {"query": "tea", "limt": 3})
        assert typo.is_error
        assert text_of(typo) == (
            "invalid arguments for tool 'memory_search': limt: unexpected argument; allowed query, limit"
        )
        foreign = await client.call_tool("memory_add", {"content": "Hana likes oolong", "user_id": "ivan"})
        allowed = "user_id: unexpected argument; allowed content, importance, tags"
        assert foreign.is_error and allowed in text_of(foreign)
        stats = await client.call_tool("memory_stats", {"verbose": True})
        assert stats.is_error and "verbose: unexpected argument; allowed no arguments" in text_of(stats)
        bad_type = await client.call_tool("memory_search", {"query": "tea", "limit": "many"})
        assert bad_type.is_error and text_of(bad_type) == (
            "invalid arguments for tool 'memory_search': limit: got 'many'; expected integer"
        )
        nothing = await client.call_tool("memory_stats", {})
        assert nothing.structured_content["total_memories"] == 0  # type: ignore[index]  # the refused add stored nothing


async def test_mcp_memory_add_answers_the_id_and_a_preview_not_the_whole_text(tmp_path: Path) -> None:
    """memory_add answered the whole memory, its text twice (the structured result and its JSON as text):
    a 200 kB add sent 400 kB back into the model's context. It answers the id and the text's start now."""
    long_text = "Kim's lab notes: " + "the sample was stable at 4 C; " * 7000
    async with in_process(tmp_path, user_id="kim") as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        schema = listed["memory_add"].output_schema
        assert schema is not None and "content" not in schema["properties"]
        added = await client.call_tool("memory_add", {"content": long_text, "tags": ["lab"]})
        assert not added.is_error, text_of(added)
        answered = added.structured_content
        assert answered is not None and set(answered) == {
            "id", "preview", "characters", "importance", "tags", "tier", "created_at",
        }  # fmt: skip
        assert answered["characters"] == len(long_text) > 200_000
        assert answered["preview"].endswith("…") and len(answered["preview"]) <= 200
        assert long_text.startswith(answered["preview"][:-1])
        assert len(text_of(added)) < 1_000  # the text block is the same small result, as JSON
        assert json.loads(text_of(added)) == answered
        assert answered["tags"] == ["lab"] and answered["tier"] == "short"
        found = await client.call_tool("memory_search", {"query": "sample stable lab notes", "limit": 1})
        [item] = found.structured_content["results"]  # type: ignore[index]
        assert item["id"] == answered["id"] and item["content"] == long_text  # stored whole
        short = await client.call_tool("memory_add", {"content": "Kim's desk is 4.12"})
        assert short.structured_content is not None
        assert short.structured_content["preview"] == "Kim's desk is 4.12"
        assert short.structured_content["characters"] == len("Kim's desk is 4.12")


async def test_mcp_out_of_range_numbers_are_refused_naming_the_allowed_range(tmp_path: Path) -> None:
    """A huge limit (1e300) was refused with pydantic's parser's words ("expected Unable to parse input
    string as an integer, exceeded maximum size"), and others named one bound only."""
    async with in_process(tmp_path, user_id="lia") as client:
        search = "an integer from 1 to 50"
        refused = [
            ("memory_search", {"query": "tea", "limit": 1e300}, f"limit: got 1e+300; expected {search}"),
            ("memory_search", {"query": "tea", "limit": 10**30}, f"limit: got {10**30}; expected {search}"),
            ("memory_search", {"query": "tea", "limit": 500}, f"limit: got 500; expected {search}"),
            ("memory_search", {"query": "tea", "limit": 0}, f"limit: got 0; expected {search}"),
            (
                "memory_add",
                {"content": "tea", "importance": 3},
                "importance: got 3; expected a number from 0 to 1",
            ),
        ]
        for name, arguments, problem in refused:
            result = await client.call_tool(name, arguments)
            assert result.is_error, (name, arguments)
            assert text_of(result) == f"invalid arguments for tool {name!r}: {problem}"
        stats = await client.call_tool("memory_stats", {})
        assert stats.structured_content["total_memories"] == 0  # type: ignore[index]


async def test_mcp_memory_tools_refuse_values_of_another_json_type(tmp_path: Path) -> None:
    """limit "3", importance "0.5" and true were coerced (pydantic's lax mode) and the call ran, though the
    schema the client was given says integer and number. JSON Schema's rules now hold, as for the
    ToolManager's schema check: 3.0 is an integer and 1 a number; a list sent as a JSON string (the SDK
    parses it for Claude Desktop) still works."""
    async with in_process(tmp_path, user_id="lea") as client:
        tea = "Lea likes tea"
        refused = [
            ("memory_search", {"query": "tea", "limit": "3"}, "limit: got '3'; expected integer"),
            ("memory_search", {"query": "tea", "limit": True}, "limit: got true; expected integer"),
            ("memory_add", {"content": tea, "importance": "0.5"}, "importance: got '0.5'; expected number"),
            ("memory_add", {"content": tea, "importance": True}, "importance: got true; expected number"),
        ]
        for name, arguments, problem in refused:
            result = await client.call_tool(name, arguments)
            assert result.is_error, (name, arguments)
            assert text_of(result) == f"invalid arguments for tool {name!r}: {problem}"
        nothing = await client.call_tool("memory_stats", {})
        assert nothing.structured_content["total_memories"] == 0  # type: ignore[index]
        added = await client.call_tool("memory_add", {"content": tea, "importance": 1, "tags": '["drinks"]'})
        assert not added.is_error, text_of(added)
        stored = added.structured_content
        assert stored is not None and stored["importance"] == 1.0 and stored["tags"] == ["drinks"]
        found = await client.call_tool("memory_search", {"query": "tea", "limit": 3.0})
        assert not found.is_error, text_of(found)
        assert len(found.structured_content["results"]) == 1  # type: ignore[index]


async def test_mcp_delete_of_a_merged_memory_reports_the_originals_deleted_with_it(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "memory")
    async with MemoryManager(config) as memory:
        a = await memory.add_memory("Jack lives in Berlin, Germany", importance=0.4, user_id="jack")
        b = await memory.add_memory("jack lives in Berlin Germany!", importance=0.6, user_id="jack")
        first = (await memory.consolidate_memories(0.9, user_id="jack"))["merged_ids"]
        c = await memory.add_memory("Jack lives in Berlin, Germany.", importance=0.5, user_id="jack")
        second = (await memory.consolidate_memories(0.9, user_id="jack"))["merged_ids"]
        assert len(first) == 1 and len(second) == 1  # second merged first (which merged a, b) with c
        desk = await memory.add_memory("Jack's desk is by the window", user_id="jack")
        server = create_mcp_server(config, user_id="jack", memory=memory)
        async with Client(server) as client:
            plain = await client.call_tool("memory_delete", {"memory_id": desk.id})
            assert plain.structured_content == {"deleted": desk.id, "originals_deleted": []}
            merged = await client.call_tool("memory_delete", {"memory_id": second[0]})
            assert not merged.is_error, text_of(merged)
            assert merged.structured_content is not None and merged.structured_content["deleted"] == second[0]
            originals = merged.structured_content["originals_deleted"]
            assert sorted(originals) == sorted([first[0], a.id, b.id, c.id])
        for memory_id in (second[0], first[0], a.id, b.id, c.id):
            assert await memory.get_memory(memory_id) is None


async def test_mcp_blank_text_is_refused_and_quoted_as_given(tmp_path: Path) -> None:
    async with in_process(tmp_path, user_id="kim") as client:
        await client.call_tool("memory_add", {"content": "Kim parks on level 3"})
        blank = await client.call_tool("memory_add", {"content": "   "})
        assert blank.is_error and "content: got '   '; allowed a non-empty string" in text_of(blank)
        for query in ("   ", "\t\n"):  # like "": an error, not an empty result the model takes for "nothing"
            searched = await client.call_tool("memory_search", {"query": query})
            assert searched.is_error, text_of(searched)
            assert f"query: got {query!r}; allowed text with a word to look for" in text_of(searched)


@pytest.mark.parametrize("user_id", ["u" * 257, "bad\udcff", "a\x00b", "   ", "ana\nlima"])
def test_mcp_server_refuses_a_user_id_the_memory_would_refuse(tmp_path: Path, user_id: str) -> None:
    # it started, and then every call failed on a user_id no tool lets the model change
    allowed = "user_id: got .*; allowed a non-empty string of at most 256"
    with pytest.raises(InvalidArgumentError, match=allowed):
        create_mcp_server(ContextManagerConfig(storage_path=tmp_path / "memory"), user_id=user_id)


def test_mcp_serve_with_a_bad_user_exits_before_opening_the_store(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(tmp_path / "m")]
        + ["--user", "u" * 300],
        capture_output=True,
        text=True,
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert completed.returncode == 1 and completed.stdout == ""
    assert completed.stderr.startswith("error: --user: got 'uuu")  # the option to fix
    assert not (tmp_path / "m").exists()  # nothing created for a command that cannot serve


def test_mcp_serve_without_the_mcp_extra_says_so_before_creating_a_store(tmp_path: Path) -> None:
    # a newcomer who has not installed the extra yet: it opened (created) the store, then failed
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['mcp'] = None  # as if the extra were not installed\n"
            "from context_manager.cli import main; main()",
            "mcp",
            "serve",
            "--storage",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert completed.returncode == 1 and completed.stdout == ""
    assert completed.stderr.startswith("error: mcp server: ") and "[mcp]" in completed.stderr
    assert not (tmp_path / "m").exists()  # nothing created for a command that cannot serve


async def test_mcp_stdio_stops_on_ctrl_c_while_the_client_keeps_stdin_open(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) stops a stdio server at once, closing its memory, while its client keeps stdin open.

    The SDK's own stdio transport reads stdin in a worker thread that cancellation waits for, so the server
    ignored Ctrl-C until stdin closed.
    """
    storage = tmp_path / "memory"
    server = await RawStdioServer.start(storage, "--user", "alice")
    process = server.process
    assert process.stderr is not None
    try:
        initialized = await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        assert initialized["result"]["serverInfo"]["name"]
        await server.request({"method": "notifications/initialized"})
        added = await server.request(
            {
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "memory_add",
                    "arguments": {"content": "The spare key is under the blue pot."},
                },
            }
        )
        assert added["result"]["isError"] is False
        process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends; stdin stays open
        returncode = await asyncio.wait_for(process.wait(), 15)
        stderr = (await process.stderr.read()).decode()
        assert returncode == 130, stderr
        assert "error: interrupted" in stderr and "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    # the store was closed: this process opens it and finds what the server acknowledged
    async with MemoryManager(ContextManagerConfig(storage_path=str(storage))) as memory:
        [found] = await memory.search_memory("spare key", user_id="alice", limit=1)
        assert "blue pot" in found.content


def write_report_tools(directory: Path) -> None:
    """A tools module (``report_tools:TOOLS``) in ``directory`` whose ``slow_report`` takes a second; each
    call creates ``started-NAME`` there when it starts."""
    (directory / "report_tools.py").write_text(
        textwrap.dedent(
            f'''
            import asyncio
            from pathlib import Path

            from context_manager import tool

            @tool
            async def slow_report(name: str) -> str:
                """Write a report (takes a second)."""
                Path({str(directory)!r}, "started-" + name).touch()
                await asyncio.sleep(1.0)
                return f"report {{name}}: done"

            TOOLS = [slow_report]
            '''
        ),
        encoding="utf-8",
    )


async def test_mcp_stdio_closing_stdin_lets_the_calls_in_flight_finish_and_answer(tmp_path: Path) -> None:
    """A client that closes stdin right after its last requests (the MCP shutdown: close stdin, wait for the
    exit) got "Connection closed" for every call still running: the SDK cancelled them at the end of input.
    A cancelled ``memory_add`` had stored part of its memory all the same (the client, told it failed,
    would add it again), here without the long-term copy an important memory has. The calls now finish and
    are answered before the server exits; a call the client cancelled stays unanswered."""
    write_report_tools(tmp_path)
    storage = tmp_path / "memory"
    server = await RawStdioServer.start(
        storage, "--user", "uma", "--tools", "report_tools:TOOLS", "--app-dir", str(tmp_path)
    )
    process = server.process
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        await server.request({"method": "notifications/initialized"})
        calls = {
            2: ("slow_report", {"name": "q3"}),
            3: ("memory_add", {"content": "Uma's passport expires in March 2031", "importance": 0.9}),
            4: ("slow_report", {"name": "cancelled"}),
        }
        for request_id, (name, arguments) in calls.items():
            call = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call"}
            await server.send(json.dumps({**call, "params": {"name": name, "arguments": arguments}}))
        await server.request({"method": "notifications/cancelled", "params": {"requestId": 4}})
        process.stdin.close()  # at once: the calls are still running
        lines = (await asyncio.wait_for(process.stdout.read(), 60)).decode().splitlines()
        returncode = await asyncio.wait_for(process.wait(), 60)
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode == 0, stderr
    answers = {answer["id"]: answer for answer in map(json.loads, lines)}
    assert set(answers) == {2, 3}, (answers, stderr)  # the cancelled call is not answered
    assert "error" not in answers[2] and answers[2]["result"]["content"][0]["text"] == "report q3: done"
    assert "error" not in answers[3] and answers[3]["result"]["isError"] is False, answers[3]
    added = answers[3]["result"]["structuredContent"]
    async with MemoryManager(ContextManagerConfig(storage_path=str(storage))) as memory:
        stored = await memory.get_memory(added["id"])
        assert stored is not None and stored.content == "Uma's passport expires in March 2031"
        stats = await memory.get_memory_stats(user_id="uma")
        assert stats["total_memories"] == 1 and stats["in_two_tiers"] == 1  # with its long-term copy


async def test_mcp_run_stdio_async_lets_the_calls_in_flight_finish_when_stdin_closes(tmp_path: Path) -> None:
    """``await create_mcp_server(...).run_stdio_async()`` (the documented way to run the server from Python)
    was the SDK's own stdio transport, which cancelled the calls still running when the client closed stdin
    (answered "Connection closed"). It is the transport the command uses now: they finish and answer."""
    write_report_tools(tmp_path)
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys
            sys.path.insert(0, {str(tmp_path)!r})
            from report_tools import TOOLS
            from context_manager import ContextManagerConfig, ToolManager, create_mcp_server

            tools = ToolManager()
            for function in TOOLS:
                tools.register_tool(function)
            config = ContextManagerConfig(storage_path={str(tmp_path / "memory")!r})
            asyncio.run(create_mcp_server(config, user_id="vic", tools=tools).run_stdio_async())
            """
        ),
        encoding="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=SERVER_ENV,
    )
    server = RawStdioServer(process)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        await server.request({"method": "notifications/initialized"})
        call = {"name": "slow_report", "arguments": {"name": "q4"}}
        await server.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}))
        for _ in range(3000):  # until the call runs
            if (tmp_path / "started-q4").exists():
                break
            await asyncio.sleep(0.02)
        process.stdin.close()  # the call is still running
        lines = (await asyncio.wait_for(process.stdout.read(), 60)).decode().splitlines()
        returncode = await asyncio.wait_for(process.wait(), 60)
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode == 0, stderr
    [answer] = map(json.loads, lines)
    assert answer["id"] == 2 and "error" not in answer, answer
    assert answer["result"]["content"][0]["text"] == "report q4: done"


async def test_mcp_stdio_a_client_gone_with_calls_in_flight_ends_the_server_cleanly(tmp_path: Path) -> None:
    """A client that died (both its pipes closed) while a call ran: the server lets the call finish, as for
    a closed stdin, then its answer finds no reader. That broken pipe ended the server with "error:
    internal error ... (a bug ...)" and exit code 1; a client gone is the end of the session (exit 0)."""
    write_report_tools(tmp_path)
    read_end, write_end = os.pipe()  # the server's stdout, whose reading end this test closes
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(tmp_path / "memory")],
        *["--tools", "report_tools:TOOLS", "--app-dir", str(tmp_path)],
        stdin=asyncio.subprocess.PIPE,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
        env=SERVER_ENV,
    )
    os.close(write_end)
    answers = os.fdopen(read_end, "rb")
    assert process.stdin is not None and process.stderr is not None
    call = {"name": "slow_report", "arguments": {"name": "orphan"}}
    try:
        for message in (
            {"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS},
            {"method": "notifications/initialized"},
            {"id": 2, "method": "tools/call", "params": call},
        ):
            process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
            await process.stdin.drain()
            if message.get("id") == 1:
                assert json.loads(await asyncio.wait_for(asyncio.to_thread(answers.readline), 60))["id"] == 1
        for _ in range(3000):  # until the call runs
            if (tmp_path / "started-orphan").exists():
                break
            await asyncio.sleep(0.02)
        process.stdin.close()
        answers.close()  # nobody reads the answer any more
        returncode = await asyncio.wait_for(process.wait(), 60)
        stderr = (await process.stderr.read()).decode()
    finally:
        answers.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode == 0 and "error" not in stderr, stderr


async def test_mcp_stdio_answers_a_line_that_is_not_json_rpc_with_an_error(tmp_path: Path) -> None:
    """JSON-RPC 2.0: invalid JSON gets a parse error (-32700), a JSON value that is no message an invalid
    request error (-32600, with the request's id when it has one); blank lines are skipped; the session goes
    on.
    """
    server = await RawStdioServer.start(tmp_path / "memory", stderr=asyncio.subprocess.DEVNULL)
    send, answer = server.send, server.answer
    try:
        await send('{"jsonrpc": "2.0", "id": 1, "method": "ping"')  # cut short: not JSON
        parse_error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
        assert await answer() == parse_error
        await send("   ")  # a blank line: nothing to answer
        await send('{"jsonrpc": "2.0", "id": 7, "params": {}}')  # JSON, but no method
        invalid = await answer()
        assert (
            invalid["id"] == 7
            and invalid["error"]["code"] == -32600
            and "Invalid Request" in (invalid["error"]["message"])
        )
        await send('[{"jsonrpc": "2.0", "id": 8, "method": "ping"}]')  # a batch: MCP has none
        batch = await answer()
        assert batch["id"] is None and batch["error"]["code"] == -32600
        initialized = await server.request(  # the session goes on
            {"id": 9, "method": "initialize", "params": INITIALIZE_PARAMS}
        )
        assert initialized["id"] == 9 and initialized["result"]["serverInfo"]["name"]
    finally:
        assert server.process.stdin is not None
        server.process.stdin.close()
        await asyncio.wait_for(server.process.wait(), 60)


async def test_mcp_stdio_a_lone_surrogate_escape_becomes_a_replacement_character(tmp_path: Path) -> None:
    """A JavaScript client that cuts a text inside an emoji sends its half as a JSON escape (``"\\ud83d"``):
    valid JSON, but no Unicode. The request was answered "Invalid Request: not a JSON-RPC 2.0 request"; it
    now runs with U+FFFD in its place, as an invalid UTF-8 byte on the same channel does."""
    server = await RawStdioServer.start(tmp_path / "memory", stderr=asyncio.subprocess.DEVNULL)
    try:
        await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        await server.request({"method": "notifications/initialized"})
        call = '"method": "tools/call", "params": {"name": "memory_add", "arguments": {"content": '
        await server.send('{"jsonrpc": "2.0", "id": 2, ' + call + '"Ada loves caf\\u00e9 \\ud83d"}}}')
        added = await server.answer()
        assert added["id"] == 2 and not added["result"].get("isError"), added
        assert added["result"]["structuredContent"]["preview"] == "Ada loves café \ufffd"
        search = '"method": "tools/call", "params": {"name": "memory_search", "arguments": {"query": '
        await server.send('{"jsonrpc": "2.0", "id": 3, ' + search + '"caf\\u00e9 \\udc00"}}}')
        found = await server.answer()
        assert found["result"]["structuredContent"]["results"][0]["content"] == "Ada loves café \ufffd"
        assert server.process.stdin is not None  # an invalid UTF-8 byte: replaced as before
        server.process.stdin.write(b'{"jsonrpc": "2.0", "id": 4, "method": "ping", "params": {"x": "\xff"}}')
        server.process.stdin.write(b"\n")
        assert (await server.answer()) == {"jsonrpc": "2.0", "id": 4, "result": {}}
    finally:
        assert server.process.stdin is not None
        server.process.stdin.close()
        await asyncio.wait_for(server.process.wait(), 60)


def test_mcp_serve_says_storage_is_ignored_with_postgresql(postgres_dsn: str, tmp_path: Path) -> None:
    """``--storage`` was silently ignored with ``memory_backend=postgres``."""
    directory = tmp_path / "m"
    completed = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(directory)]
        + ["--set", "memory_backend=postgres"],
        capture_output=True,
        text=True,
        env={**SERVER_ENV, "PYTHON_CONTEXT_MANAGER_POSTGRES_DSN": postgres_dsn},
        stdin=subprocess.DEVNULL,  # the client closes stdin at once: the server ends
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""  # the warning is not on the protocol channel
    warning = f"warning: --storage {directory} is ignored: memory_backend is postgres"
    assert completed.stderr.startswith(warning)
    assert not directory.exists()


@pytest.mark.embeddings
async def test_mcp_the_embedding_model_loads_from_the_start_without_a_tool_call(
    tmp_path: Path, cold_models: None
) -> None:
    """The packaged MiniLM loaded on first use: a server's first ``memory_add`` took ~7 s. The server now
    loads it on a thread from its start: it is loaded a few seconds after the session opened, with no tool
    call; a tool that embeds nothing answers meanwhile; a call that embeds waits for that load."""
    from context_manager.core.memory.embeddings import SentenceTransformerEmbedder

    config = ContextManagerConfig(storage_path=tmp_path / "memory", embedder="minilm")
    async with MemoryManager(config) as memory:
        embedder = memory.embedder
        assert isinstance(embedder, SentenceTransformerEmbedder) and embedder._model is None
        started = time.monotonic()
        async with Client(create_mcp_server(memory=memory, user_id="ines")) as client:
            stats = await client.call_tool("memory_stats", {})
            answered = time.monotonic() - started
            assert not stats.is_error, text_of(stats)
            for _ in range(1800):  # 90 s
                if embedder._model is not None:
                    break
                await asyncio.sleep(0.05)
            loaded = time.monotonic() - started
            assert embedder._model is not None, "the model was not loaded 90 s after the session opened"
            assert answered < loaded, (
                f"memory_stats answered after {answered:.1f} s, the load took {loaded:.1f} s"
            )
            added = await client.call_tool("memory_add", {"content": "Ines moved to Porto last spring"})
            assert not added.is_error, text_of(added)
            found = await client.call_tool("memory_search", {"query": "which city does she live in now"})
            results = found.structured_content["results"]  # type: ignore[index]
            assert [item["content"] for item in results] == ["Ines moved to Porto last spring"]


@pytest.mark.embeddings
async def test_mcp_a_call_that_embeds_before_the_model_loaded_waits_for_that_load(
    tmp_path: Path, cold_models: None
) -> None:
    """A ``memory_add`` sent as the session opens embeds with the model the server's start is loading (one
    load, the event loop free meanwhile: a ``memory_stats`` sent with it answers first)."""
    from context_manager.core.memory.embeddings import SentenceTransformerEmbedder

    config = ContextManagerConfig(storage_path=tmp_path / "memory", embedder="minilm")
    async with MemoryManager(config) as memory:
        embedder = memory.embedder
        assert isinstance(embedder, SentenceTransformerEmbedder) and embedder._model is None
        async with Client(create_mcp_server(memory=memory)) as client:
            order: list[str] = []

            async def call(name: str, arguments: dict[str, Any]) -> Any:
                result = await client.call_tool(name, arguments)
                order.append(name)
                return result

            added, stats = await asyncio.gather(
                call("memory_add", {"content": "The staging database moved to eu-west-2"}),
                call("memory_stats", {}),
            )
            assert not added.is_error and not stats.is_error, (text_of(added), text_of(stats))
            assert order == ["memory_stats", "memory_add"]
            model = embedder._model
            loaders = [
                thread for thread in threading.enumerate() if thread.name == "context-manager-embedder-load"
            ]
            for thread in loaders:
                await asyncio.to_thread(thread.join, 60)
            assert embedder._model is model, "the model was loaded twice"
            assert memory.backend is not None and memory.backend.vector_count() == 1


async def test_mcp_stdio_an_unknown_tool_is_an_error_result_naming_the_tools_there_are(
    tmp_path: Path,
) -> None:
    """The MCP SDK's convention (``MCPServer``: an unknown tool is a ``CallToolResult`` with ``isError``,
    "Unknown tool: NAME", not the JSON-RPC error -32602 the specification's example shows), so the model
    reads it and can correct itself; but the message did not say which tools there are (a model that
    guessed ``memory_remember`` guessed again). It lists them now, application tools included."""
    write_tools_module(tmp_path)
    server = await RawStdioServer.start(
        tmp_path / "memory",
        "--tools",
        "shop_tools:TOOLS",
        "--app-dir",
        str(tmp_path),
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        await server.request({"method": "notifications/initialized"})
        call = {"name": "memory_remember", "arguments": {"content": "Ana likes tea"}}
        answer = await server.request({"id": 2, "method": "tools/call", "params": call})
        assert "error" not in answer and answer["result"]["isError"] is True, answer
        [block] = answer["result"]["content"]
        assert block["text"] == (
            "Unknown tool: memory_remember; available tools: memory_add, memory_search, memory_delete, "
            "memory_stats, order_status"
        )
        call = {"name": "memory_add", "arguments": {"content": "Ana likes tea"}}  # the session goes on
        added = await server.request({"id": 3, "method": "tools/call", "params": call})
        assert (
            added["result"]["isError"] is False
            and added["result"]["structuredContent"]["preview"] == "Ana likes tea"
        )
    finally:
        assert server.process.stdin is not None
        server.process.stdin.close()
        await asyncio.wait_for(server.process.wait(), 60)


def _access_counts(storage: Path) -> dict[str, int]:
    """Each memory's access count as the store holds it (read by another process, as a later run would)."""
    exported = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", "--storage", str(storage), "memory", "export", "-"],
        capture_output=True,
        text=True,
        env=SERVER_ENV,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    return {row["content"]: row["access_count"] for row in map(json.loads, exported.stdout.splitlines())}


async def test_mcp_stdio_sigterm_closes_the_memory_and_keeps_the_session_s_access_counts(
    tmp_path: Path,
) -> None:
    """MCP clients stop a stdio server that does not exit on its own with SIGTERM (the specification's
    shutdown: close stdin, then SIGTERM, then SIGKILL; containers and systemd send it too). SIGTERM killed
    the process without closing the memory: the access counts and times of the session's searches (batched
    in memory) were lost, so memories used every day looked unused to ``cleanup --max-age-days``. It now
    stops the server as a closed stdin does: the memory is closed, exit code 0."""
    storage = tmp_path / "memory"
    server = await RawStdioServer.start(storage, "--user", "alice")
    process = server.process
    assert process.stderr is not None
    try:
        await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        await server.request({"method": "notifications/initialized"})
        for number, content in enumerate(("Alice's locker is 41", "Alice parks on level 3"), start=2):
            call = {"name": "memory_add", "arguments": {"content": content}}
            assert (await server.request({"id": number, "method": "tools/call", "params": call}))["result"]
        call = {"name": "memory_search", "arguments": {"query": "locker", "limit": 1}}
        found = await server.request({"id": 9, "method": "tools/call", "params": call})
        assert found["result"]["structuredContent"]["results"][0]["content"] == "Alice's locker is 41"
        process.send_signal(signal.SIGTERM)  # stdin stays open, as a client that gave up waiting leaves it
        returncode = await asyncio.wait_for(process.wait(), 15)
        stderr = (await process.stderr.read()).decode()
        assert returncode == 0, stderr
        assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert _access_counts(storage) == {"Alice's locker is 41": 1, "Alice parks on level 3": 0}


async def test_mcp_http_sigterm_closes_the_memory_and_keeps_the_session_s_access_counts(
    tmp_path: Path,
) -> None:
    """Over HTTP uvicorn shut down on SIGTERM, then raised it again: the process died before the memory
    was closed (exit -15), losing the session's access counts, as over stdio."""
    storage, port = tmp_path / "memory", free_port()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(storage)],
        *["--http", str(port)],
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        await asyncio.wait_for(process.stderr.readline(), timeout=60)  # the banner, just before the bind
        await wait_for_port(port)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            await client.call_tool("memory_add", {"content": "the printer is on floor 2"})
            found = await client.call_tool("memory_search", {"query": "printer"})
            assert not found.is_error, text_of(found)
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 30)
        stderr = (await process.stderr.read()).decode()
        assert returncode == 0, stderr
        assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert _access_counts(storage) == {"the printer is on floor 2": 1}


async def test_mcp_http_sigterm_answers_the_calls_in_flight_before_stopping(tmp_path: Path) -> None:
    """SIGTERM (how containers and service managers stop an HTTP server) while a call ran: the server cut
    the call's event stream at once (sse-starlette ends every stream on shutdown), so the call, finished or
    not, was never answered. Its answer now comes as a JSON response, which uvicorn's graceful shutdown
    waits for, and the server stops after it."""
    write_report_tools(tmp_path)
    storage, port = tmp_path / "memory", free_port()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "context_manager.cli", "mcp", "serve", "--storage", str(storage)],
        *["--http", str(port), "--tools", "report_tools:TOOLS", "--app-dir", str(tmp_path)],
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        assert process.stderr is not None
        await asyncio.wait_for(process.stderr.readline(), timeout=60)  # the banner, just before the bind
        await wait_for_port(port)
        async with httpx.AsyncClient(timeout=60) as http:
            call = await call_until_started(http, url, "slow_report", tmp_path / "started-q3")
            process.send_signal(signal.SIGTERM)
            answered = await asyncio.wait_for(call, 30)
        returncode = await asyncio.wait_for(process.wait(), 30)
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode == 0 and "stopped (SIGTERM)" in stderr, stderr
    answer = answered.json() if answered.headers["content-type"].startswith("application/json") else None
    assert answer is not None, (answered.headers["content-type"], answered.text)  # the stream was cut empty
    assert answer["id"] == 2 and answer["result"]["content"][0]["text"] == "report q3: done", answer


async def test_mcp_http_sigterm_stops_the_server_when_a_call_outlasts_the_grace(tmp_path: Path) -> None:
    """JSON responses let uvicorn's graceful shutdown wait for a call in flight, but uvicorn waits for as
    long as the call runs: a call that never ends (a lock, a tool with a timeout of ten minutes) kept the
    server from stopping on SIGTERM, until a service manager killed it without closing the memory. The
    wait is bounded (``HTTP_SHUTDOWN_GRACE``, 1 s here): the call is cut and the server stops cleanly."""
    (tmp_path / "endless_tools.py").write_text(
        textwrap.dedent(
            f'''
            import asyncio
            from pathlib import Path

            from context_manager import ContextManagerConfig, ToolManager, tool

            @tool(timeout=600)
            async def endless_job(name: str) -> str:
                """A job of up to ten minutes."""
                Path({str(tmp_path)!r}, "started-" + name).touch()
                await asyncio.sleep(600)
                return "done"

            def make_tools():
                manager = ToolManager(ContextManagerConfig(max_tool_timeout=900))
                manager.register_tool(endless_job)
                return manager
            '''
        ),
        encoding="utf-8",
    )
    storage, port = tmp_path / "memory", free_port()
    with_short_grace = (
        "import context_manager.mcp_server as served; served.HTTP_SHUTDOWN_GRACE = 1; "
        "from context_manager.cli import main; main()"
    )
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", with_short_grace, "mcp", "serve", "--storage", str(storage)],
        *["--http", str(port), "--tools", "endless_tools:make_tools", "--app-dir", str(tmp_path)],
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        assert process.stderr is not None
        await asyncio.wait_for(process.stderr.readline(), timeout=60)  # the banner, just before the bind
        await wait_for_port(port)
        async with httpx.AsyncClient(timeout=60) as http:
            call = await call_until_started(http, url, "endless_job", tmp_path / "started-q3")
            process.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(process.wait(), 30)  # not the call's ten minutes
            with contextlib.suppress(httpx.HTTPError):
                await asyncio.wait_for(call, 10)  # cut: no answer
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode == 0 and "stopped (SIGTERM)" in stderr, stderr


async def test_mcp_delete_of_an_id_no_memory_can_have_says_what_ids_are(tmp_path: Path) -> None:
    """``memory_delete`` with a 100,000-character id (a model that pasted a content) echoed it whole in
    "no memory with id '...'", the whole text again in the model's context; an id no memory can have is
    refused as the library refuses it (at most 200 characters), quoted shortened."""
    async with in_process(tmp_path, user_id="fay") as client:
        pasted = "Fay's notes: " + "lorem ipsum " * 8_000
        refused = await client.call_tool("memory_delete", {"memory_id": pasted})
        assert refused.is_error and "at most 200 characters" in text_of(refused), text_of(refused)[:300]
        assert len(text_of(refused)) < 500
        added = await client.call_tool("memory_add", {"content": "Fay takes the 8:15 train"})
        deleted = await client.call_tool("memory_delete", {"memory_id": added.structured_content["id"]})  # type: ignore[index]
        assert not deleted.is_error, text_of(deleted)


def test_mcp_serve_says_a_global_json_is_ignored(tmp_path: Path) -> None:
    """``context-manager --json mcp serve`` served as if ``--json`` were not there, without a word, while
    ``examples`` (which prints text) says ``--json`` is ignored; ``mcp serve`` says so too, on stderr (stdout
    is the protocol channel), and serves."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "context_manager.cli",
            "--json",
            "mcp",
            "serve",
            "--storage",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,  # the client closes stdin at once: the server ends
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    first = completed.stderr.splitlines()[0]
    assert first.startswith("warning: --json is ignored: mcp serve answers in the MCP protocol"), (
        completed.stderr
    )
    assert "serving on stdio" in completed.stderr


async def test_run_mcp_server_from_python_leaves_sigterm_to_the_application(tmp_path: Path) -> None:
    """``run_mcp_server`` called from an application's main thread took SIGTERM over: the signal that
    should end the process stopped the server only, ``run_mcp_server`` returned and the application went
    on (a service manager's stop did not stop it). Only ``mcp serve`` (``stop_on_sigterm=True``) handles
    SIGTERM now; from Python the signal keeps its default action (or the application's handler)."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from context_manager import ContextManagerConfig
        from context_manager.mcp_server import run_mcp_server

        async def main():
            await run_mcp_server(ContextManagerConfig(storage_path={str(tmp_path / "memory")!r}))
            print("run_mcp_server returned: the application goes on", file=sys.stderr, flush=True)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", script],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=SERVER_ENV,
    )
    server = RawStdioServer(process)
    try:
        # answered: the server reads stdin, so whatever it does with SIGTERM is in place
        answer = await server.request({"id": 1, "method": "initialize", "params": INITIALIZE_PARAMS})
        assert answer["result"]["serverInfo"]["name"] == "context-manager"
        process.send_signal(signal.SIGTERM)  # stdin stays open
        returncode = await asyncio.wait_for(process.wait(), 15)
        assert process.stderr is not None
        stderr = (await process.stderr.read()).decode()
        assert returncode == -signal.SIGTERM, stderr
        assert "returned" not in stderr and "stopped (SIGTERM)" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_mcp_serve_takes_the_storage_path_given_as_an_option_or_in_the_environment(tmp_path: Path) -> None:
    """``mcp serve`` refused to start without ``--storage`` even when the location was given explicitly
    otherwise: ``--set storage_path=...`` (documented as taking any option) or
    ``PYTHON_CONTEXT_MANAGER_STORAGE_PATH`` in the client's ``env`` block (where the DSN goes too) got
    "mcp serve needs --storage PATH". Only the default location (relative to wherever the client starts
    the server) is refused now."""
    given = {
        "set": (["--set", f"storage_path={tmp_path / 'by-set'}"], {}),
        "environment": ([], {"PYTHON_CONTEXT_MANAGER_STORAGE_PATH": str(tmp_path / "by-env")}),
        "cache path": (["--set", f"cache_path={tmp_path / 'cache'}"], {}),
    }
    for name, (arguments, environment) in given.items():
        completed = subprocess.run(
            [sys.executable, "-m", "context_manager.cli", "mcp", "serve", *arguments],
            capture_output=True,
            text=True,
            env={**SERVER_ENV, **environment},
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            timeout=60,
        )
        assert completed.returncode == 0, (name, completed.stderr)
        assert completed.stdout == "" and "serving on stdio" in completed.stderr, (name, completed.stderr)
    for store in ("by-set", "by-env", "cache/storage"):
        assert (tmp_path / store / "memories.sqlite3").exists(), store
    assert not (tmp_path / "cache" / "cache").exists()
    refused = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", "mcp", "serve"],
        capture_output=True,
        text=True,
        env=SERVER_ENV,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        timeout=60,
    )
    assert refused.returncode == 1 and "mcp serve needs --storage PATH" in refused.stderr


def test_mcp_serve_over_stdio_with_standard_input_or_output_closed_says_so(tmp_path: Path) -> None:
    """Started with standard input closed (``<&-``) the stdio server opened the store, printed its banner
    and failed with "error: [Errno 22] Invalid argument"; with standard output closed, with "internal
    error: AttributeError ... (a bug ...)". It says which stream is closed now, before the store is
    opened, and what to do instead."""
    for closing, named in (("<&-", "standard input is closed"), (">&- <&-", "standard input and output are")):
        storage = tmp_path / "memory"
        completed = subprocess.run(
            ["bash", "-c", f'exec "$0" -m context_manager.cli mcp serve --storage "$1" {closing}']
            + [sys.executable, str(storage)],
            capture_output=True,
            text=True,
            env=SERVER_ENV,
            timeout=60,
        )
        assert completed.returncode == 1, completed.stderr
        lines = completed.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {named}"), completed.stderr
        assert "--http PORT" in lines[0]
        assert not storage.exists()


def test_mcp_serve_with_a_missing_app_dir_names_it(tmp_path: Path) -> None:
    """A mistyped ``--app-dir`` was put on ``sys.path`` as it was, and the command failed with "cannot
    import 'shop.tools': No module named 'shop'", which sent the user looking at the module. The
    directory is checked now: bad usage naming it (exit code 2), nothing opened."""
    runner = CliRunner()
    storage = tmp_path / "memory"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a directory", encoding="utf-8")
    for app_dir, reason in ((tmp_path / "shop-typo", "does not exist"), (notes, "is a file")):
        result = runner.invoke(
            app,
            [
                "mcp",
                "serve",
                "--storage",
                str(storage),
                "--app-dir",
                str(app_dir),
                "--tools",
                "shop.tools:registry",
            ],
        )
        assert result.exit_code == 2, result.stderr
        assert "--app-dir" in result.stderr and reason in result.stderr and str(app_dir) in result.stderr
        assert not storage.exists()
