"""Type-checked callers of ``add_message(message)``: each form the docs show passes ``mypy --strict``."""

from __future__ import annotations

from pathlib import Path

from tests.test_typing import run_mypy

CALLER = """\
from typing import Any

from openai.types.chat import ChatCompletionMessage

from context_manager import EnhancedContextManager, SyncContextManager


async def add(manager: EnhancedContextManager, reply: ChatCompletionMessage, turn: dict[str, Any]) -> None:
    await manager.add_message({"role": "user", "content": "hi"})
    await manager.add_message({"role": "user", "content": "hi"}, pinned=True)  # options as keywords
    await manager.add_message(turn, priority="high")
    await manager.add_message(reply)
    await manager.add_message("user", "hi", pinned=True)
    await manager.add_message(role="user", content="hi")


def blocking(manager: SyncContextManager, reply: ChatCompletionMessage) -> None:
    manager.add_message({"role": "user", "content": "hi"}, pinned=True)
    manager.add_message(reply)
"""

MISTYPED = """\
from openai.types.chat import ChatCompletionMessage

from context_manager import EnhancedContextManager


async def add(manager: EnhancedContextManager, reply: ChatCompletionMessage) -> None:
    await manager.add_message("user")
    await manager.add_message(reply, pinned=True)
"""


def test_add_message_of_one_message_type_checks_with_its_options_as_keywords(tmp_path: Path) -> None:
    """``add_message({...}, pinned=True)`` (docs/concepts.md: "options as keys of the dict or as keywords")
    was ``No overload variant of "add_message" matches`` under mypy: the message overload took no keywords."""
    output = run_mypy(tmp_path, caller=CALLER, mistyped=MISTYPED)
    assert [line for line in output.splitlines() if line.startswith("caller.py")] == []
    errors = [line for line in output.splitlines() if line.startswith("mistyped.py") and ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["7", "8"], output
