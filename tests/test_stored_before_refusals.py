"""Conversations stored by an earlier version meet this version's refusals and changed texts.

Anthropic ``cache_control`` values other than ``{"type": "ephemeral"}`` with a ttl of 5m or 1h are now
refused where they come in, and a tool result converted to a text (a datetime, bytes) is now the tool
message's text as it is (it was JSON-quoted). A conversation written before either change must still
resume, export and show (CLI) as stored: a record is replayed, never validated or rendered again.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from context_manager import ContextManagerConfig, EnhancedContextManager, register_memory_tools, tool
from tests.cli_support import run_cli

MARKER_KEY = "context_manager.anthropic_cache_control"


def settings(storage: Path, max_tokens: int = 4000) -> ContextManagerConfig:
    return ContextManagerConfig(storage_path=storage, max_tokens=max_tokens, embedder="none")


def rewrite_records(storage: Path, old: str, new: str) -> int:
    """Edit the stored records as an earlier version wrote them (what it took, this one refuses)."""
    with sqlite3.connect(storage / "conversations.sqlite3") as connection:
        changed = connection.execute(
            "UPDATE conversation_records SET payload = replace(payload, ?, ?) WHERE instr(payload, ?) > 0",
            (old, new, old),
        ).rowcount
    return changed


async def test_a_refused_cache_control_stored_before_resumes_exports_and_shows_without_it(
    tmp_path: Path,
) -> None:
    """A marker an earlier version stored (ttl '10m': the API refuses it, HTTP 400) is left out of the
    export, by the resumed manager and by ``conversations show --format anthropic`` alike; the
    conversation resumes, and compresses, with it in its metadata."""
    storage = tmp_path / "storage"
    document = "The contract runs for three years from signature. " * 30
    async with EnhancedContextManager(settings(storage), conversation_id="old-1") as manager:
        await manager.add_message("system", "You answer questions about the contract.")
        await manager.add_message("user", document, metadata={MARKER_KEY: {"type": "ephemeral", "ttl": "5m"}})
        await manager.add_message("assistant", "Three years.")
        marked = manager.get_context(format="anthropic")["messages"][0]["content"][-1]
        assert marked["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert (
        rewrite_records(storage, '"ttl": "5m"', '"ttl": "10m"')
        + rewrite_records(storage, '"ttl":"5m"', '"ttl":"10m"')
        >= 1
    )

    async with EnhancedContextManager(settings(storage), conversation_id="old-1") as manager:
        stored = [message for message in manager.messages if message.role.value == "user"]
        assert stored[0].metadata[MARKER_KEY] == {"type": "ephemeral", "ttl": "10m"}  # replayed as stored
        exported = manager.get_context(format="anthropic")
        assert "cache_control" not in json.dumps(exported)
        assert exported["messages"][0]["content"][-1]["text"] == document
    shown = run_cli("--storage", str(storage), "conversations", "show", "old-1", "--format", "anthropic")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout) == exported
    listed = run_cli("--storage", str(storage), "--json", "conversations", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [row["error"] for row in json.loads(listed.stdout)] == [None]

    async with EnhancedContextManager(settings(storage, max_tokens=900), conversation_id="old-1") as manager:
        for turn in range(12):  # compressions cut and copy the marked message: no validation on the way
            await manager.add_message("user", f"Question {turn} about clause {turn}. " * 8)
            await manager.add_message("assistant", f"Answer {turn}: see clause {turn}. " * 8)
        assert manager.get_context_summary()["compression_count"] >= 1
        assert "10m" not in json.dumps(manager.get_context(format="anthropic"))


@tool(name="when_shipped")
def when_shipped() -> datetime.datetime:
    """When the order shipped."""
    return datetime.datetime(2026, 1, 2, 3, 4, 5)


async def test_a_tool_message_stored_json_quoted_replays_byte_for_byte(tmp_path: Path) -> None:
    """An earlier version stored a datetime result JSON-quoted ('"2026-01-02T03:04:05"'); this one writes
    it as it is. The stored text is what the resumed window exports (the same bytes, the same count),
    while a new call's message has the new text."""
    storage = tmp_path / "storage"
    call = {"id": "call_1", "type": "function", "function": {"name": "when_shipped", "arguments": "{}"}}
    async with EnhancedContextManager(settings(storage), conversation_id="old-2") as manager:
        manager.tool_manager.register_tool(when_shipped)
        await manager.add_message("user", "When did it ship?")
        await manager.execute_tool_calls([call])
        assert manager.get_context()[-1]["content"] == "2026-01-02T03:04:05"
    assert rewrite_records(storage, '"2026-01-02T03:04:05"', '"\\"2026-01-02T03:04:05\\""') == 1
    async with EnhancedContextManager(settings(storage), conversation_id="old-2") as manager:
        manager.tool_manager.register_tool(when_shipped)
        before: list[dict[str, Any]] = manager.get_context()
        assert before[-1]["content"] == '"2026-01-02T03:04:05"'
        await manager.execute_tool_calls([{**call, "id": "call_2"}])
        after = manager.get_context()
        assert after[: len(before)] == before
        assert after[-1]["content"] == "2026-01-02T03:04:05"


def test_the_examples_and_the_memory_tools_register_no_tool_without_a_description(tmp_path: Path) -> None:
    """The no-description ``UserWarning`` (hidden in the tests by pyproject's filter) is not printed to a
    newcomer running the examples, nor raised by the memory tools the MCP server offers."""
    main = Path(__file__).resolve().parents[1] / "examples" / "main_example.py"
    completed = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", str(main), "tools"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=dict(os.environ, COLUMNS="250"),
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "has no description" not in completed.stderr

    async def memory_tools() -> list[str]:
        async with EnhancedContextManager(settings(tmp_path / "storage")) as manager:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                registered = register_memory_tools(manager.tool_manager, manager)
            return [definition.name for definition in registered]

    assert asyncio.run(memory_tools()) == ["memory_search", "memory_add"]
