from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import InvalidArgumentError, InvalidMessageError
from context_manager.core.messages import ToolCall
from context_manager.core.tool_system import ToolErrorType, ToolManager, ToolResult
from tests.loop_support import longest_loop_step


async def add(a: int, b: int) -> int:
    return a + b


def openai_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def anthropic_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


async def test_mixed_formats_results_in_call_order() -> None:
    manager = ToolManager()
    manager.register_tool(add)
    results = await manager.execute_tool_calls(
        [
            openai_call("call_1", "add", {"a": 1, "b": 2}),
            anthropic_call("toolu_2", "add", {"a": 10, "b": 20}),
            ToolCall(id="call_3", name="add", arguments={"a": 100, "b": 200}),
            openai_call("call_4", "missing", {}),
        ]
    )
    assert [r.call_id for r in results] == ["call_1", "toolu_2", "call_3", "call_4"]
    assert [r.result for r in results[:3]] == [3, 30, 300]
    assert results[3].error_type == "unknown_tool"


async def test_unparseable_arguments_give_invalid_arguments_result() -> None:
    manager = ToolManager()
    manager.register_tool(add)
    results = await manager.execute_tool_calls(
        [openai_call("c1", "add", "{not json"), openai_call("c2", "add", {"a": 1, "b": 1})]
    )
    assert results[0].error_type == "invalid_arguments" and results[0].call_id == "c1"
    assert results[0].tool_name == "add"
    assert results[1].result == 2


async def test_malformed_batches_raise_before_running_anything() -> None:
    ran: list[int] = []

    async def record(x: int) -> int:
        ran.append(x)
        return x

    manager = ToolManager()
    manager.register_tool(record)
    with pytest.raises(InvalidMessageError, match="^calls: got"):
        await manager.execute_tool_calls([openai_call("same", "record", {"x": 1})] * 2)
    with pytest.raises(InvalidMessageError, match=r"^tool_calls\[\]\.id"):
        await manager.execute_tool_calls([openai_call("", "record", {"x": 1})])
    with pytest.raises(InvalidMessageError, match="^calls: got"):
        await manager.execute_tool_calls(openai_call("x", "record", {"x": 1}))  # type: ignore[arg-type]
    assert ran == []


async def test_concurrency_is_bounded_by_config() -> None:
    running = 0
    peak = 0

    async def busy(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1
        return n

    manager = ToolManager(ContextManagerConfig(max_concurrent_tool_calls=3))
    manager.register_tool(busy)
    results = await manager.execute_tool_calls([openai_call(f"c{i}", "busy", {"n": i}) for i in range(12)])
    assert [r.result for r in results] == list(range(12))
    assert peak == 3


async def test_openai_sdk_tool_call_objects_are_accepted() -> None:
    from openai.types.chat import ChatCompletionMessageToolCall
    from openai.types.chat.chat_completion_message_tool_call import Function

    manager = ToolManager()
    manager.register_tool(add)
    sdk_call = ChatCompletionMessageToolCall(
        id="call_sdk", type="function", function=Function(name="add", arguments='{"a": 4, "b": 5}')
    )
    results = await manager.execute_tool_calls([sdk_call])  # type: ignore[list-item]
    assert results[0].call_id == "call_sdk" and results[0].result == 9


async def test_responses_api_function_calls_run_and_answer_their_call_id(tmp_path: Path) -> None:
    """The items of an OpenAI Responses API response (``function_call``: the arguments a JSON string, the
    call id in ``call_id``, ``id`` the item's own) failed as "arguments: got '{...}'; allowed a JSON
    object", with the item id as the result's call id, which a ``function_call_output`` cannot quote. They
    run now, answered under their ``call_id`` (dicts and the SDK's objects), as ``parse_tool_calls``
    reads them."""
    from openai.types.responses import ResponseFunctionToolCall

    manager = ToolManager()
    manager.register_tool(add)
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "add",
        "arguments": '{"a": 1, "b": 2}',
    }
    sdk_item = ResponseFunctionToolCall(
        type="function_call", id="fc_2", call_id="call_2", name="add", arguments='{"a": 3, "b": 4}'
    )
    broken = {**item, "id": "fc_3", "call_id": "call_3", "arguments": '{"a": 1,'}
    results = await manager.execute_tool_calls([item, sdk_item, broken])  # type: ignore[list-item]
    assert [(result.call_id, result.result) for result in results[:2]] == [("call_1", 3), ("call_2", 7)]
    assert results[2].call_id == "call_3" and results[2].error_type is ToolErrorType.INVALID_ARGUMENTS
    async with EnhancedContextManager(ContextManagerConfig(cache_path=str(tmp_path))) as context:
        context.tool_manager.register_tool(add)
        answered = await context.execute_tool_calls([{**item, "call_id": "call_9"}])
        assert answered[0].result == 3
        tool_message = context.get_context()[-1]
        assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_9"


async def test_arguments_json_cannot_hold_are_a_failed_result_for_that_call_only() -> None:
    # json.loads accepts NaN, Infinity, 1e999 (inf), a NUL escape and a lone surrogate: what a model may
    # write, and what no message can hold
    manager = ToolManager()
    manager.register_tool(add)
    bad = ['{"a": NaN, "b": 1}', '{"a": 1e999, "b": 1}']
    bad += ['{"a": "\\u0000", "b": 1}', '{"a": "\\ud800", "b": 1}']
    calls = [openai_call(f"c{n}", "add", text) for n, text in enumerate(bad)]
    results = await manager.execute_tool_calls([*calls, openai_call("ok", "add", {"a": 1, "b": 2})])
    assert [r.call_id for r in results] == ["c0", "c1", "c2", "c3", "ok"]
    for result in results[:4]:
        assert result.error_type == "invalid_arguments" and result.tool_name == "add"
        assert "tool_calls[].arguments.a" in (result.error or "")
    assert results[4].result == 3


async def test_langchain_tool_calls_keep_their_arguments() -> None:
    """LangChain's ``AIMessage.tool_calls`` items (``{"name", "args", "id", "type": "tool_call"}``) ran with
    no arguments at all: ``args`` was not read, so a tool with defaults silently ran with them."""

    async def search(query: str = "everything", limit: int = 10) -> str:
        return f"{query}:{limit}"

    manager = ToolManager()
    manager.register_tool(search)
    arguments = {"query": "lisbon weather", "limit": 3}
    langchain_calls = [{"name": "search", "args": arguments, "id": "call_1", "type": "tool_call"}]
    results = await manager.execute_tool_calls(langchain_calls)
    assert results[0].result == "lisbon weather:3"
    assert ToolCall.from_value(langchain_calls[0]).arguments == {"query": "lisbon weather", "limit": 3}


async def test_null_arguments_of_a_call_without_parameters_run_it() -> None:
    """Some OpenAI-compatible servers send ``"arguments": null`` (or the text ``"null"``) for a tool that
    takes nothing: the call got ``invalid_arguments`` and the tool never ran."""

    async def now() -> str:
        return "12:00"

    manager = ToolManager()
    manager.register_tool(now)
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "now", "arguments": None}},
        openai_call("c2", "now", "null"),
        {"id": "c3", "type": "function", "function": {"name": "now"}},
    ]
    results = await manager.execute_tool_calls(calls)
    assert [(r.call_id, r.success, r.result) for r in results] == [
        ("c1", True, "12:00"),
        ("c2", True, "12:00"),
        ("c3", True, "12:00"),
    ]
    assert ToolCall.from_value(calls[0]).arguments == {}
    failed = await manager.execute_tool_calls([openai_call("c4", "now", "[1, 2]")])  # still not an object
    assert failed[0].error_type == "invalid_arguments"


class _CountingRows(dict):  # type: ignore[type-arg]
    """A result dict counting how often it is JSON-encoded (the encoder reads a dict subclass's items())."""

    encodes = 0

    def items(self) -> Any:
        type(self).encodes += 1
        return super().items()


async def test_a_structured_result_is_encoded_once_for_the_window(tmp_path: Path) -> None:
    """The manager encoded the result to check it (and to cache it), then the window encoded it again for
    the tool message: a large result held the event loop twice as long. The text is now reused."""
    rows = _CountingRows(rows=[{"id": n, "name": f"customer {n}"} for n in range(50)], total=50)

    async def query(limit: int) -> dict[str, Any]:
        return rows

    context = EnhancedContextManager(ContextManagerConfig(max_tokens=20_000, cache_path=tmp_path / "cache"))
    async with context:
        context.tool_manager.register_function_tool("query", query, "Query customers")
        call = {"id": "c1", "name": "query", "arguments": {"limit": 50}}
        [result] = await context.execute_tool_calls([call])
        [answer] = [message for message in context.messages if message.role == "tool"]
    expected = json.dumps(dict(rows), ensure_ascii=False)
    assert answer.content == expected
    assert _CountingRows.encodes == 1
    assert result.to_content() == expected  # (the result as it is now: encoded again, it is small)


async def test_a_large_result_is_encoded_off_the_event_loop_unchanged() -> None:
    """A tool returning 300,000 rows held the event loop while its result was checked and JSON-encoded
    (about a second on a loaded machine, and as much again for the tool message text): every other task
    of the application stalled. Large results are now checked and encoded in a worker thread, in pieces
    (the C encoder keeps the GIL while it runs), and the text is the one json.dumps gives."""
    rows: list[Any] = [
        {"id": n, "name": f"customer {n}", "score": n * 0.5, "tags": ["a", "b"], "when": None}
        for n in range(300_000)
    ]
    wrapped = {"count": len(rows), "rows": rows, "pairs": [(n, "x") for n in range(30_000)]}

    async def query(shape: str) -> Any:
        return rows if shape == "rows" else wrapped

    manager = ToolManager()
    manager.register_function_tool("query", query, "Query customers")

    async def call_and_take_the_texts() -> tuple[list[ToolResult], list[str]]:
        results = await manager.execute_tool_calls(
            [
                {"id": "c1", "name": "query", "arguments": {"shape": "rows"}},
                {"id": "c2", "name": "query", "arguments": {"shape": "wrapped"}},
            ]
        )
        return results, [result.to_content() for result in results]  # the text kept: not encoded again

    # The CPU time of the whole process between two turns of the loop (the worker threads included: one
    # holding the interpreter in one long call stalls the loop too). Not the wall-clock gap: with other
    # processes on the 2 cores that reached 0.7-1.4 s with the encoding off the loop, while this stays near
    # 0.1 s, loaded or not (encoding on the loop: over a second). The 600,000 objects built above are
    # frozen out of the garbage collector (a full collection of them takes 0.1-0.3 s, whichever thread
    # allocates): what is measured is the encoding.
    (results, texts), longest = await longest_loop_step(call_and_take_the_texts, clock=time.process_time)
    assert [result.success for result in results] == [True, True]
    assert longest < 0.3, f"the loop waited {longest:.2f} s of the process's CPU time for one turn"
    assert results[0].result is rows
    assert texts[0] == json.dumps(rows, ensure_ascii=False)
    as_lists = {**wrapped, "pairs": [[n, "x"] for n in range(30_000)]}  # JSON has no tuples
    assert results[1].result == as_lists
    assert texts[1] == json.dumps(as_lists, ensure_ascii=False)


async def test_the_kept_result_text_is_no_field_of_a_tool_result() -> None:
    """The JSON text the manager keeps for ``to_content()`` was a dataclass field:
    ``dataclasses.asdict(result)`` (how applications serialise dataclasses) held a private ``_encoded``
    entry with a second copy of the result and all its text, ``fields()`` listed it, and pickling or
    ``replace`` carried it along."""
    rows = [{"id": n, "name": f"customer {n}"} for n in range(50)]

    async def query(limit: int) -> list[dict[str, Any]]:
        return rows[:limit]

    manager = ToolManager()
    manager.register_function_tool("query", query, "Query customers")
    result = await manager.execute_tool("query", limit=50)
    assert result.success and result.to_content() == json.dumps(rows, ensure_ascii=False)
    as_dict = dataclasses.asdict(result)
    assert set(as_dict) == set(result.to_dict()) == {field.name for field in dataclasses.fields(result)}
    assert as_dict["result"] == rows
    assert "_encoded" not in repr(result)
    plain = ToolResult(success=True, result=rows, tool_name="query", execution_time=result.execution_time)
    assert plain == result and plain.to_content() == result.to_content()
    copied = pickle.loads(pickle.dumps(result))
    assert copied == result and copied.to_content() == result.to_content()
    changed = dataclasses.replace(result, result=rows[:1])
    assert changed.to_content() == json.dumps(rows[:1], ensure_ascii=False)  # not the text kept for rows


async def test_a_tool_result_rebuilt_from_its_dict_works_like_the_original() -> None:
    """``ToolResult(**result.to_dict())`` (a result stored as JSON, sent through a queue) kept ``error_type``
    as the string ``to_dict`` wrote: ``to_content()`` and ``to_dict()`` of the rebuilt result raised
    AttributeError ('str' object has no attribute 'value'). The string is read back as its ToolErrorType;
    one that names no error type is refused, naming the allowed ones."""

    async def slow_report(days: int) -> str:
        await asyncio.sleep(1)
        return "report"

    manager = ToolManager(ContextManagerConfig(max_tool_timeout=0.05))
    manager.register_function_tool("slow_report", slow_report, "A slow report")
    failed = await manager.execute_tool("slow_report", days=7)
    stored = json.loads(json.dumps(failed.to_dict()))
    rebuilt = ToolResult(**stored)
    assert rebuilt.error_type is ToolErrorType.TIMEOUT and rebuilt == failed
    assert rebuilt.to_content() == failed.to_content() == f"Error (timeout): {failed.error}"
    assert rebuilt.to_dict() == failed.to_dict()
    refused = r"^error_type: got 'slow'; allowed one of 'unknown_tool', "
    with pytest.raises(InvalidArgumentError, match=refused):
        ToolResult(success=False, error="x", error_type="slow")  # type: ignore[arg-type]


async def test_to_content_gives_the_result_as_it_is_after_a_change_in_place() -> None:
    """``to_content()`` returned the JSON text the manager made when the tool returned while ``result`` was
    the same object, even after the caller changed it in place: deleting an internal field from
    ``result.result`` before handing the text to the model still sent the field. The text the manager
    keeps is now used by the window and the MCP server, which take it as the call returns; ``to_content()``
    encodes the result as it is (only a result of megabytes reuses the kept text)."""

    async def lookup_customer(customer_id: str) -> dict[str, Any]:
        return {"id": customer_id, "name": "Ada", "internal_score": 0.93, "tags": ["vip"]}

    manager = ToolManager(ContextManagerConfig(enable_tool_caching=True))
    manager.register_function_tool("lookup_customer", lookup_customer, "Look a customer up", cacheable=True)
    for _ in range(2):  # the call, then a cache hit
        result = await manager.execute_tool("lookup_customer", customer_id="c-1")
        del result.result["internal_score"]
        result.result["tags"].append("checked")
        assert result.to_content() == '{"id": "c-1", "name": "Ada", "tags": ["vip", "checked"]}'
    assert result.cached


async def test_a_result_converted_to_a_text_is_the_tool_messages_text_as_to_content_says(
    tmp_path: Path,
) -> None:
    """A tool returning bytes (or a date) got ``result == "hello"`` and ``to_content() == "hello"``, but the
    tool message in the window carried the JSON text, ``'"hello"'`` with its quotes (``"2024-01-02"`` for
    the date), unlike a tool returning the text itself. A value converted to a text is now its own content,
    on a cache hit too."""
    import datetime

    values: dict[str, Any] = {"text": "hello", "raw": b"hello", "day": datetime.date(2024, 1, 2)}
    async with EnhancedContextManager(ContextManagerConfig(cache_path=str(tmp_path))) as context:
        for name, value in values.items():
            context.tool_manager.register_function_tool(
                name, (lambda value=value: value), name, cacheable=True
            )
        for round_ in range(2):  # a miss, then a cache hit
            calls = [{"id": f"{name}{round_}", "name": name, "arguments": {}} for name in values]
            results = await context.execute_tool_calls(calls)
            assert [result.cached for result in results] == [bool(round_)] * 3
            assert [result.to_content() for result in results] == ["hello", "hello", "2024-01-02"]
            answers = {
                message.tool_call_id: message.content
                for message in context.messages
                if message.role == "tool"
            }
            assert [answers[f"{name}{round_}"] for name in values] == ["hello", "hello", "2024-01-02"]
