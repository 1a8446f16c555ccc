"""``context-manager conversations list/show/delete``, as a real subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, ConversationConflictError, EnhancedContextManager
from tests.cli_support import run_cli


def run_json(*arguments: str) -> Any:
    result = run_cli("--json", *arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # strict JSON: json.loads takes NaN, so check no NaN is written too


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The configuration of the app and of the command: a storage directory, or a PostgreSQL DSN."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND", "postgres")
        monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_DSN", dsn)
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_STORAGE_PATH", str(tmp_path / "store"))
    yield request.param


async def _write_conversations() -> dict[str, Any]:
    """Three conversations as an app writes them: ana's (compressed), nobody's, bo's; what the app saw."""
    config = ContextManagerConfig(max_tokens=400)
    seen: dict[str, Any] = {}
    async with EnhancedContextManager(config, conversation_id="ticket-1", user_id="ana") as manager:
        await manager.add_message("system", "You are a support assistant.")
        for turn in range(12):
            await manager.add_message("user", f"Question {turn} about order {turn * 7}: where is it now?")
            await manager.add_message("assistant", f"Answer {turn}: it left the warehouse on day {turn}.")
        seen["summary"] = manager.get_context_summary()
        seen["messages"] = [message.to_dict() for message in manager.messages]
        seen["openai"] = manager.get_context(format="openai")
        seen["anthropic"] = manager.get_context(format="anthropic")
        seen["version"] = manager.conversation_version
    async with EnhancedContextManager(config, conversation_id="shared-2") as manager:
        await manager.add_message("user", "a note for everyone")
    async with EnhancedContextManager(config, conversation_id="bo-3", user_id="bo") as manager:
        await manager.add_message("user", "bo's question")
    return seen


def test_conversations_list_show_and_delete(backend: str) -> None:
    seen = asyncio.run(_write_conversations())
    assert seen["summary"]["compression_count"] >= 1 and seen["summary"]["has_summary"]

    listed = run_json("conversations", "list")
    assert [row["conversation_id"] for row in listed] == ["bo-3", "shared-2", "ticket-1"]  # newest first
    ticket = listed[2]
    assert (ticket["user_id"], ticket["version"]) == ("ana", seen["version"])
    assert ticket["message_count"] == seen["summary"]["message_count"]
    assert ticket["token_count"] == seen["summary"]["token_count"]
    assert ticket["compression_count"] == seen["summary"]["compression_count"]
    assert ticket["updated_at"] >= ticket["created_at"] > 0
    anas = run_json("conversations", "list", "--user", "ana")
    assert [row["conversation_id"] for row in anas] == ["ticket-1"]
    assert [row["conversation_id"] for row in run_json("conversations", "list", "-n", "1")] == ["bo-3"]
    table = run_cli("conversations", "list")
    assert table.returncode == 0 and "ticket-1" in table.stdout and "ana" in table.stdout

    shown = run_json("conversations", "show", "ticket-1")
    assert shown["messages"] == seen["messages"]
    assert shown["compression_count"] == seen["summary"]["compression_count"]
    assert shown["summary"] is not None and shown["summary"].startswith("Summary of the earlier conversation")
    assert run_json("conversations", "show", "ticket-1", "--format", "openai") == seen["openai"]
    assert run_json("conversations", "show", "ticket-1", "--format", "anthropic") == seen["anthropic"]
    text = run_cli("conversations", "show", "ticket-1", "--user", "ana")
    assert text.returncode == 0, text.stderr
    assert "[system, summary] Summary of the earlier conversation" in text.stdout
    assert "[assistant] Answer 11: it left the warehouse on day 11." in text.stdout

    another = run_cli("conversations", "show", "ticket-1", "--user", "bo")
    assert_one_line_error(another, "belongs to user 'ana'")
    assert_one_line_error(run_cli("conversations", "show", "nope"), "no conversation with id 'nope'")
    assert_one_line_error(run_cli("conversations", "show", " "), "ID: got ' '")
    assert run_cli("conversations", "list", "--limit", "0").returncode == 2

    refused = run_cli("--json", "conversations", "delete", "ticket-1", "--user", "bo")
    assert_one_line_error(refused, "'ticket-1' belongs to user 'ana': pass --user ana")
    assert json.loads(refused.stdout) == {"user": "bo", "deleted": [], "not_found": ["ticket-1"]}
    result = run_cli("--json", "conversations", "delete", "ticket-1", "nope", "--user", "ana")
    assert_one_line_error(result, "'nope'", "the other 1 deleted")
    assert json.loads(result.stdout) == {"user": "ana", "deleted": ["ticket-1"], "not_found": ["nope"]}
    deleted = run_cli("conversations", "delete", "bo-3")  # no --user: any owner's, as the API's admin
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted bo-3", deleted.stderr
    assert [row["conversation_id"] for row in run_json("conversations", "list")] == ["shared-2"]


def test_show_and_list_write_nothing_even_with_a_smaller_max_tokens(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manager opened to read a conversation with a smaller max_tokens compresses it and stores that
    (docs/conversations.md): the command replays it as stored and writes nothing."""
    seen = asyncio.run(_write_conversations())
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", "200")
    shown = run_json("conversations", "show", "ticket-1")
    assert shown["messages"] == seen["messages"] and shown["version"] == seen["version"]
    assert run_json("conversations", "list")[2]["token_count"] == seen["summary"]["token_count"]
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS")

    async def version() -> int | None:
        config = ContextManagerConfig(max_tokens=400)
        async with EnhancedContextManager(config, conversation_id="ticket-1", user_id="ana") as manager:
            return manager.conversation_version

    assert asyncio.run(version()) == seen["version"]


def test_a_storage_without_conversations_lists_none_and_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run_cli("--storage", str(store), "memory", "add", "a memory, no conversation").returncode == 0
    before = sorted(path.name for path in store.iterdir())
    assert run_json("--storage", str(store), "conversations", "list") == []
    empty = run_cli("--storage", str(store), "conversations", "list")
    assert empty.returncode == 0 and empty.stdout.strip() == "no conversations"
    assert_one_line_error(run_cli("--storage", str(store), "conversations", "show", "x"), "no conversation")
    assert_one_line_error(run_cli("--storage", str(store), "conversations", "delete", "x"), "'x'")
    assert sorted(path.name for path in store.iterdir()) == before
    missing = run_cli("--storage", str(tmp_path / "nowhere"), "conversations", "list")
    assert_one_line_error(missing, "no memory store at")
    assert not (tmp_path / "nowhere").exists()


def test_deleting_on_postgresql_refuses_the_next_change_of_a_running_writer(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator deletes a conversation a worker holds open: the worker's next change is refused."""
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND", "postgres")
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_POSTGRES_DSN", postgres_dsn)

    async def scenario() -> subprocess.CompletedProcess[str]:
        config = ContextManagerConfig()
        async with EnhancedContextManager(config, conversation_id="live-1", user_id="ana") as manager:
            await manager.add_message("user", "first")
            deleted = await asyncio.to_thread(run_cli, "conversations", "delete", "live-1", "--user", "ana")
            with pytest.raises(ConversationConflictError):
                await manager.add_message("user", "second")
            return deleted

    result = asyncio.run(scenario())
    assert result.returncode == 0 and result.stdout.strip() == "deleted live-1", result.stderr


async def _write_a_long_conversation() -> dict[str, Any]:
    """A writer with another token encoding, tool calls, a pin, snapshots and over 100 compressions."""
    config = ContextManagerConfig(max_tokens=300, token_encoding="cl100k_base", conversation_snapshot_every=7)
    async with EnhancedContextManager(config, conversation_id="long-1", user_id="ana") as manager:
        await manager.add_message("system", "You are a support assistant.")
        await manager.add_message("user", "My order number is 1042.", pinned=True)
        turn = 0
        while manager.get_context_summary()["compression_count"] <= 105:
            await manager.add_message("user", f"Question {turn}: where is parcel {turn * 13} now?")
            if turn % 5 == 0:
                call = {
                    "id": f"call_{turn}",
                    "type": "function",
                    "function": {"name": "track", "arguments": json.dumps({"parcel": turn * 13})},
                }
                await manager.add_message("assistant", None, tool_calls=[call])
                await manager.add_message(
                    "tool", f"parcel {turn * 13}: in transit", tool_call_id=f"call_{turn}"
                )
            await manager.add_message("assistant", f"Answer {turn}: it left the depot on day {turn}.")
            turn += 1
        seen = {
            "summary": manager.get_context_summary(),
            "messages": [message.to_dict() for message in manager.messages],
            "history": manager.compression_history,
            "formats": {
                name: manager.get_context(format=name) for name in ("openai", "anthropic", "openai_responses")
            },
        }
    async with EnhancedContextManager(config, conversation_id="long-1", user_id="ana") as resumed:
        seen["resumed"] = [message.to_dict() for message in resumed.messages]
        seen["resumed_summary"] = resumed.get_context_summary()
    return seen


def test_show_and_list_give_what_the_writer_and_a_resuming_manager_hold(backend: str) -> None:
    """After snapshots and more compressions than the history keeps, with the writer's token encoding
    other than the command's configuration: the same window, counts and exports, on both backends."""
    seen = asyncio.run(_write_a_long_conversation())
    assert seen["resumed"] == seen["messages"]
    shown = run_json("conversations", "show", "long-1")
    assert shown["messages"] == seen["messages"]
    assert shown["compression_history"] == seen["history"] and len(seen["history"]) == 100
    for key in ("message_count", "token_count", "compression_count"):
        assert shown[key] == seen["summary"][key] == seen["resumed_summary"][key], key
    assert shown["pinned"] == seen["summary"]["pinned_count"] >= 1
    for name, exported in seen["formats"].items():
        assert run_json("conversations", "show", "long-1", "--format", name) == exported, name
    (row,) = run_json("conversations", "list")
    assert (row["message_count"], row["token_count"], row["compression_count"]) == (
        shown["message_count"],
        shown["token_count"],
        shown["compression_count"],
    )


def test_list_shows_the_others_when_one_conversation_does_not_replay(tmp_path: Path) -> None:
    """A record of a kind a newer version writes (or a damaged one) in one conversation: list_conversations()
    lists it, and so does the command, without its figures, the others whole; exit code 1, one error line."""
    import sqlite3

    store = tmp_path / "store"

    async def write() -> None:
        config = ContextManagerConfig(storage_path=str(store))
        for conversation_id in ("a-1", "b-2"):
            async with EnhancedContextManager(config, conversation_id=conversation_id) as manager:
                await manager.add_message("user", f"hello from {conversation_id}")

    asyncio.run(write())
    with sqlite3.connect(store / "conversations.sqlite3") as db:
        db.execute("INSERT INTO conversation_records VALUES ('b-2', 2, 'rename', 'w', '{}', 0)")
        db.execute("UPDATE conversations SET version = 2, updated_at = updated_at + 1 WHERE id = 'b-2'")
    db.close()
    result = run_cli("--json", "--storage", str(store), "conversations", "list")
    assert_one_line_error(result, "cannot replay conversation 'b-2'", "unknown record kind 'rename'")
    rows = {row["conversation_id"]: row for row in json.loads(result.stdout)}
    assert rows["a-1"]["message_count"] == 1 and rows["a-1"]["error"] is None
    assert rows["b-2"]["message_count"] is None and rows["b-2"]["version"] == 2
    assert "unknown record kind 'rename'" in rows["b-2"]["error"]
    table = run_cli("--storage", str(store), "conversations", "list")
    assert table.returncode == 1 and "a-1" in table.stdout and "b-2" in table.stdout, table.stderr
    assert run_cli("--storage", str(store), "conversations", "delete", "b-2").returncode == 0
    assert [row["conversation_id"] for row in run_json("--storage", str(store), "conversations", "list")] == [
        "a-1"
    ]
