from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import InvalidMemoryError, ToolRegistrationError
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.tool_system import (
    MEMORY_TOOL_NAMES,
    ToolCategory,
    ToolManager,
    ToolPermission,
    register_memory_tools,
)


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[MemoryManager]:
    manager = MemoryManager(ContextManagerConfig(cache_path=tmp_path / "cache"))
    await manager.initialize()
    yield manager
    await manager.close()


async def test_memory_tools_are_opt_in_and_round_trip(memory: MemoryManager) -> None:
    tools = ToolManager()
    assert not any(name in tools for name in MEMORY_TOOL_NAMES)
    definitions = register_memory_tools(tools, memory)
    assert [d.name for d in definitions] == ["memory_search", "memory_add"]
    assert all(d.category is ToolCategory.MEMORY for d in definitions)

    added = await tools.execute(
        "memory_add", content="The user's dog is called Rex", importance=0.9, tags=["pets"]
    )
    assert added.success and set(added.result) == {"id", "tier"}
    found = await tools.execute("memory_search", query="what is the dog called")
    assert found.success
    assert found.result[0]["id"] == added.result["id"]
    assert found.result[0]["content"] == "The user's dog is called Rex"
    assert found.result[0]["tags"] == ["pets"]
    stored = await memory.get_memory(added.result["id"])
    assert stored is not None and stored.source == "tool"


@pytest.mark.parametrize("user_id", ["", "   ", "ana\n", "u" * 257])
async def test_memory_tools_refuse_a_user_id_the_memory_refuses_when_registered(
    memory: MemoryManager, user_id: str
) -> None:
    """They were registered, and then every call failed on a user id no tool argument can change."""
    tools = ToolManager()
    with pytest.raises(InvalidMemoryError, match="user_id: got .*; allowed a non-empty string"):
        register_memory_tools(tools, memory, user_id=user_id)
    assert not any(name in tools for name in MEMORY_TOOL_NAMES)


async def test_memory_tool_arguments_are_validated(memory: MemoryManager) -> None:
    tools = ToolManager()
    register_memory_tools(tools, memory)
    result = await tools.execute("memory_add", content="x", importance=3)
    assert result.error_type == "invalid_arguments"
    assert "importance: got 3; expected less than or equal to 1" in (result.error or "")
    result = await tools.execute("memory_search", query="x", limit=0)
    assert result.error_type == "invalid_arguments"
    empty = await tools.execute("memory_add", content="")  # the schema says minLength 1
    assert empty.error_type == "invalid_arguments"
    assert "content: got ''" in (empty.error or "")
    blank = await tools.execute("memory_add", content="   ")
    assert blank.error_type == "tool_error"  # the memory manager's own validation, as a message
    assert "content" in (blank.error or "")


async def test_memory_tools_stay_in_their_namespace(memory: MemoryManager) -> None:
    alice, bob = ToolManager(), ToolManager()
    register_memory_tools(alice, memory, user_id="alice")
    register_memory_tools(bob, memory, user_id="bob")
    await alice.execute("memory_add", content="alice likes green tea")
    assert (await alice.execute("memory_search", query="green tea")).result
    assert (await bob.execute("memory_search", query="green tea")).result == []


async def test_registration_is_all_or_nothing(memory: MemoryManager) -> None:
    tools = ToolManager()

    async def memory_add(parameters: dict[str, Any]) -> None:
        return None

    tools.register_function_tool("memory_add", memory_add, "Mine")
    with pytest.raises(ToolRegistrationError, match="^name: got 'memory_add'"):
        register_memory_tools(tools, memory)
    assert "memory_search" not in tools
    register_memory_tools(tools, memory, replace=True, permission=ToolPermission.RESTRICTED)
    assert tools.get_tool("memory_add").permission is ToolPermission.RESTRICTED


async def test_truncated_tool_output_is_kept_whole_in_memory(tmp_path: Path) -> None:
    async def report(n: int) -> str:
        return " ".join(f"line{i}" for i in range(n)) + " zebra-unique-marker"

    config = ContextManagerConfig(cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as context:
        context.tool_manager.register_function_tool("report", report, "Report", max_output_tokens=30)
        results = await context.execute_tool_calls(
            [{"type": "tool_use", "id": "toolu_1", "name": "report", "input": {"n": 300}}]
        )
        window_text = context.messages[-1].content
        assert "zebra-unique-marker" not in window_text
        found = await context.search_memory("zebra-unique-marker", limit=3)
        assert found and found[0].content == results[0].result
        assert set(found[0].tags) == {"tool_output", "report"}
        assert found[0].metadata["tool_call_id"] == "toolu_1"


async def test_memory_search_with_an_empty_tag_list_searches_every_memory(memory: MemoryManager) -> None:
    """Models often fill an optional array with ``[]``: ``memory_search(query=..., tags=[])`` found nothing
    (no memory carries one of no tags), and the model concluded it remembered nothing."""
    tools = ToolManager()
    register_memory_tools(tools, memory)
    added = await tools.execute_tool("memory_add", content="The user's dog is called Rex", tags=[])
    assert added.success
    found = await tools.execute_tool("memory_search", query="what is the dog called", tags=[])
    assert found.success and [item["id"] for item in found.result] == [added.result["id"]]


async def test_memory_tool_schemas_say_what_a_tag_and_a_fact_may_be(memory: MemoryManager) -> None:
    """The schemas allowed any string as a tag or a fact: a model sending ``tags: [""]`` or ``content: ""``
    got a ``tool_error`` (the memory refusing it inside the tool), not ``invalid_arguments``, and could not
    have known beforehand."""
    tools = ToolManager()
    register_memory_tools(tools, memory)
    schemas = {s["name"]: s["input_schema"]["properties"] for s in tools.get_tool_schemas("anthropic")}
    for name in ("memory_search", "memory_add"):
        tag = schemas[name]["tags"]["anyOf"][0]["items"]
        assert tag == {"type": "string", "minLength": 1, "maxLength": 500}
    assert schemas["memory_add"]["content"]["minLength"] == 1
    for name, arguments in (
        ("memory_add", {"content": "A fact", "tags": [""]}),
        ("memory_add", {"content": ""}),
        ("memory_search", {"query": "fact", "tags": ["x" * 501]}),
    ):
        result = await tools.execute_tool(name, **arguments)
        assert result.error_type == "invalid_arguments", result.error
