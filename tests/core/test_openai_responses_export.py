"""``get_context(format="openai_responses")``: the OpenAI Responses API ``input`` list, and back.

The Responses API takes ``input`` items, not Chat Completions messages: text as role messages, each tool
call a ``function_call`` item and each result a ``function_call_output`` item quoting its ``call_id``. The
export was missing (only Chat Completions and Anthropic), so an agent on the Responses API converted by
hand. The items go back in through ``add_messages`` (a saved export, or a response's ``output``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from context_manager import ContextManagerConfig, EnhancedContextManager, SyncContextManager
from context_manager.core.errors import InvalidArgumentError
from tests.provider_rules import openai_responses_violations


def sdk_accepts(items: list[dict[str, Any]]) -> None:
    """The OpenAI SDK's own type of ``responses.create(input=...)`` takes the items."""
    from openai.types.responses import ResponseInputParam

    TypeAdapter(ResponseInputParam).validate_python(items)


def config(tmp_path: Path, **settings: Any) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none", **settings)


async def fill(manager: EnhancedContextManager) -> None:
    await manager.add_message("system", "Answer in one sentence.")
    await manager.add_message("user", "Weather in Paris, and 2+2?", name="alice")
    weather = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
    }
    calc = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "calc", "arguments": '{"expression":"2+2"}'},
    }
    await manager.add_message("assistant", "Let me check.", tool_calls=[weather, calc])
    await manager.add_message("tool", "21 °C, sunny", tool_call_id="call_1")
    await manager.add_message("tool", "boom", tool_call_id="call_2", metadata={"is_error": True})
    await manager.add_message("assistant", "It is 21 °C; the calculator failed.")


EXPECTED = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "Weather in Paris, and 2+2?"},
    {"role": "assistant", "content": "Let me check."},
    {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
    {"type": "function_call", "call_id": "call_2", "name": "calc", "arguments": '{"expression":"2+2"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "21 °C, sunny"},
    {"type": "function_call_output", "call_id": "call_2", "output": "boom"},
    {"role": "assistant", "content": "It is 21 °C; the calculator failed."},
]


async def test_get_context_exports_the_responses_api_input(tmp_path: Path) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await fill(manager)
        items = manager.get_context(format="openai_responses")
        assert items == EXPECTED
        assert openai_responses_violations(items) == []
        sdk_accepts(items)
        assert manager.get_context(format="openai")[2]["tool_calls"][0]["id"] == "call_1"  # unchanged
        budgeted = manager.get_context(format="openai_responses", budget=60)
        assert openai_responses_violations(budgeted) == [] and len(budgeted) < len(items)


async def test_a_pending_call_is_left_out_until_its_output_is_in(tmp_path: Path) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Weather?")
        call = {"type": "function_call", "call_id": "call_7", "name": "weather", "arguments": "{}"}
        await manager.add_message("assistant", None, tool_calls=[call])
        assert manager.get_context(format="openai_responses") == [{"role": "user", "content": "Weather?"}]
        await manager.add_message("tool", "sunny", tool_call_id="call_7")
        items = manager.get_context(format="openai_responses")
        assert items[1:] == [
            {"type": "function_call", "call_id": "call_7", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_7", "output": "sunny"},
        ]
        assert openai_responses_violations(items) == []


async def test_the_export_goes_back_in_through_add_messages(tmp_path: Path) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await fill(manager)
        items = manager.get_context(format="openai_responses")
        openai = manager.get_context(format="openai")
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        assert await again.add_messages(items) == 6
        assert again.get_context(format="openai_responses") == items
        assert [m for m in again.get_context(format="openai")] == [
            {key: value for key, value in m.items() if key != "name"} for m in openai
        ]


async def test_a_responses_api_output_goes_in_as_the_assistant_turn(tmp_path: Path) -> None:
    """``add_messages(response.output)``: the SDK's items (or their dumps), reasoning left out."""
    from openai.types.responses import Response

    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": "gpt-5-mini",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Let me look it up.", "annotations": []}],
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_9",
                    "name": "lookup",
                    "arguments": '{"order": 1042}',
                    "status": "completed",
                },
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
    )
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Where is order 1042?")
        assert await manager.add_messages(response.output) == 1
        assert manager.pending_tool_calls()[0].id == "call_9"
        await manager.add_messages(
            [{"type": "function_call_output", "call_id": "call_9", "output": "shipped"}]
        )
        items = manager.get_context(format="openai_responses")
        assert items == [
            {"role": "user", "content": "Where is order 1042?"},
            {"role": "assistant", "content": "Let me look it up."},
            {"type": "function_call", "call_id": "call_9", "name": "lookup", "arguments": '{"order":1042}'},
            {"type": "function_call_output", "call_id": "call_9", "output": "shipped"},
        ]
        assert openai_responses_violations(items) == []
        dumped = [item.model_dump() for item in response.output]
    async with EnhancedContextManager(config(tmp_path / "dumps")) as again:
        await again.add_message("user", "Where is order 1042?")
        await again.add_messages(
            [*dumped, {"type": "function_call_output", "call_id": "call_9", "output": "shipped"}]
        )
        assert again.get_context(format="openai_responses") == items


@pytest.mark.parametrize(
    "item",
    [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_image"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
    ],
)
async def test_items_the_window_cannot_hold_are_refused_whole(tmp_path: Path, item: dict[str, Any]) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Hi")
        with pytest.raises(InvalidArgumentError) as raised:
            await manager.add_messages([{"role": "user", "content": "more"}, item])
        assert (
            "function_call" in str(raised.value)
            or "text parts" in str(raised.value)
            or "string" in str(raised.value)
        )
        assert len(manager.messages) == 1


def test_the_blocking_facade_exports_it_too(tmp_path: Path) -> None:
    with SyncContextManager(config(tmp_path)) as manager:
        manager.add_message("user", "Hi")
        assert manager.get_context(format="openai_responses") == [{"role": "user", "content": "Hi"}]
        with pytest.raises(InvalidArgumentError, match="openai_responses"):
            manager.get_context(format="responses")
    assert json.dumps(EXPECTED)  # plain JSON


def test_tool_schemas_in_the_responses_api_shape() -> None:
    """``tools=`` of ``responses.create`` is flat (no ``function`` wrapper) and needs ``strict``."""
    from openai.types.responses import FunctionToolParam

    from context_manager.core.tool_system import ToolManager

    async def weather(city: str) -> str:
        """The weather of a city."""
        return "sunny"

    manager = ToolManager()
    manager.register_function_tool("weather", weather, "The weather of a city.")
    [schema] = manager.get_tool_schemas("openai_responses")
    [chat] = manager.get_tool_schemas("openai")
    assert schema == {
        "type": "function",
        "name": "weather",
        "description": "The weather of a city.",
        "parameters": chat["function"]["parameters"],
        "strict": False,
    }
    TypeAdapter(FunctionToolParam).validate_python(schema)  # the SDK's own request type


async def test_a_reasoning_item_between_the_text_and_the_calls_keeps_them_one_message(tmp_path: Path) -> None:
    """Reasoning models put ``reasoning`` items anywhere in ``output``; they are left out, nothing else."""
    output = [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me look it up.", "annotations": []}],
        },
        {"type": "reasoning", "id": "rs_2", "summary": []},
        {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "lookup", "arguments": "{}"},
    ]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Where is order 1042?")
        assert await manager.add_messages(output) == 1
        assistant = manager.messages[-1]
        assert assistant.content == "Let me look it up."
        assert [call.id for call in assistant.tool_calls] == ["call_9"]


async def test_a_function_call_output_of_text_parts_is_their_text(tmp_path: Path) -> None:
    """``output`` may be a list of content parts (the SDK's ``ResponseFunctionCallOutputItemListParam``)."""
    call = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
    parts = [{"type": "input_text", "text": "Order 1042:"}, {"type": "input_text", "text": "shipped Monday"}]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Where is order 1042?")
        sdk_accepts([call, {"type": "function_call_output", "call_id": "call_1", "output": parts}])
        await manager.add_messages(
            [call, {"type": "function_call_output", "call_id": "call_1", "output": parts}]
        )
        assert manager.messages[-1].content == "Order 1042:\nshipped Monday"  # a line break between parts
        assert manager.get_context(format="openai_responses")[-1] == {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": "Order 1042:\nshipped Monday",
        }


async def test_a_role_message_of_input_text_parts_is_its_text(tmp_path: Path) -> None:
    """``{"role": "user", "content": [{"type": "input_text", ...}]}`` is a Responses API input message."""
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Where is "}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "order 1042?"}]},
    ]
    sdk_accepts(items)
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages(items[:1])
        await manager.add_messages(items)
        assert [m.content for m in manager.messages] == ["Where is ", "Where is ", "order 1042?"]
        with pytest.raises(InvalidArgumentError, match="text parts"):
            await manager.add_messages(
                [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_image"}]}]
            )
        assert len(manager.messages) == 3
