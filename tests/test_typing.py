"""Type-checked callers: what a user running ``mypy --strict`` on their own code gets from the library.

mypy runs in a subprocess on small callers written here, with the package's source first on the path and
errors in the package itself silenced (as for an installed package). Its cache lives in
``.mypy_cache/typed-callers`` at the repository root: the first run analyses the whole package (about a
minute on a loaded machine), later ones take seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TYPED_CALLER = '''\
import asyncio
from typing import Any, assert_type

from openai.types.responses import Response

from context_manager import (
    ContextManagerConfig,
    EnhancedContextManager,
    Memory,
    SyncContextManager,
    ToolDefinition,
    ToolResult,
)


async def main() -> None:
    async with EnhancedContextManager(ContextManagerConfig(max_tokens=1000)) as manager:
        await manager.add_message("user", "Where is order 1042?")
        messages = manager.get_context(format="openai")
        assert_type(messages, list[dict[str, Any]])
        first_role: str = messages[0]["role"]
        default = manager.get_context()
        assert_type(default, list[dict[str, Any]])
        request = manager.get_context(format="anthropic", budget=500)
        assert_type(request, dict[str, Any])
        turns: list[dict[str, Any]] = request["messages"]
        chosen: str = "openai"
        either = manager.get_context(format=chosen)
        assert_type(either, list[dict[str, Any]] | dict[str, Any])
        items = manager.get_context(format="openai_responses")
        assert_type(items, list[dict[str, Any]])
        result = await manager.execute_tool("lookup_order", order_id=1042)
        assert_type(result, ToolResult)
        print(first_role, len(turns), either)


def lookup_order(order_id: str) -> str:
    return f"order {order_id} shipped"


async def responses_turn(manager: EnhancedContextManager, response: Response) -> None:
    assert_type(await manager.add_messages(response.output), int)  # the SDK's items, as documented


def blocking_responses_turn(manager: SyncContextManager, response: Response) -> None:
    assert_type(manager.add_messages(response.output), int)


def blocking() -> None:
    with SyncContextManager(ContextManagerConfig(max_tokens=1000)) as manager:
        assert_type(manager, SyncContextManager)
        assert_type(manager.add_message("user", "Where is order 1042?"), bool)
        assert_type(manager.get_context(), list[dict[str, Any]])
        assert_type(manager.get_context(format="anthropic"), dict[str, Any])
        assert_type(manager.get_context(format="openai_responses"), list[dict[str, Any]])
        assert_type(manager.execute_tool("lookup_order", order_id="1042"), ToolResult)
        assert_type(manager.call(lookup_order, "1042"), str)
        tools = manager.tool_manager
        assert_type(manager.call(tools.register_function_tool, "lookup", lookup_order), ToolDefinition)
        assert_type(manager.call(manager.manager.search_memory, "order"), list[Memory])


asyncio.run(main())
blocking()
'''

# The same calls used the wrong way round: mypy must report each of these lines.
MISTYPED_CALLER = '''\
from context_manager import ContextManagerConfig, EnhancedContextManager, SyncContextManager


def use(manager: EnhancedContextManager) -> None:
    request = manager.get_context(format="anthropic")
    request.append({"role": "user", "content": "hi"})  # a dict has no append
    messages = manager.get_context(format="openai")
    messages["system"]  # a list is indexed by int


def lookup_order(order_id: str) -> str:
    return order_id


def blocking(manager: "SyncContextManager") -> None:
    manager.call(lookup_order, 1042)  # the arguments are checked against the function's


def plain_with() -> None:
    with EnhancedContextManager(ContextManagerConfig()) as manager:  # `async with` is needed
        print(manager)


def settings_as_keywords() -> None:
    EnhancedContextManager(max_tokens=4000)  # settings go in the ContextManagerConfig
'''


def run_mypy(tmp_path: Path, **files: str) -> str:
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text, encoding="utf-8")
    environment = dict(os.environ, MYPYPATH=str(ROOT / "src"))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # like an installed package: its own errors are not the caller's
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "typed-callers"),
            *(f"{name}.py" for name in files),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode in (0, 1), completed.stderr
    return completed.stdout


def test_get_context_is_typed_by_format_without_casts(tmp_path: Path) -> None:
    output = run_mypy(tmp_path, typed_caller=TYPED_CALLER, mistyped_caller=MISTYPED_CALLER)
    caller_errors = [line for line in output.splitlines() if line.startswith("typed_caller.py")]
    assert caller_errors == []
    mistakes = [line for line in output.splitlines() if line.startswith("mistyped_caller.py")]
    assert any(line.startswith("mistyped_caller.py:6:") and "append" in line for line in mistakes), output
    assert any(line.startswith("mistyped_caller.py:8:") for line in mistakes), output
    assert any(line.startswith("mistyped_caller.py:16:") and "call" in line for line in mistakes), output
    # the helpful LifecycleError of a plain ``with`` is raised at run time; a type checker still reports it
    assert any(line.startswith("mistyped_caller.py:20:") and "__enter__" in line for line in mistakes), output
    # an unknown keyword of the constructor (``**options: Never``) is reported too, not only at run time
    assert any(line.startswith("mistyped_caller.py:25:") and "max_tokens" in line for line in mistakes), (
        output
    )
