from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import threading
import warnings
from typing import Any

import pydantic
import pytest
import typing_extensions
from pydantic import AliasChoices, AliasPath, BaseModel

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidArgumentError, ToolNotFoundError, ToolRegistrationError
from context_manager.core.tool_system import (
    ToolCategory,
    ToolDefinition,
    ToolErrorType,
    ToolManager,
    ToolPermission,
    ToolResult,
    tool,
)
from context_manager.core.tool_system.booleans import nested_booleans
from tests.loop_support import longest_loop_step

from .conftest import ManualClock, gated_tool


async def summarise(text: str, max_length: int = 100, suffix: str = "...") -> str:
    """Shorten a text.

    Args:
        text: The text to shorten.
        max_length: Longest result in characters.
        suffix: Appended when the text was cut.
    """
    return text if len(text) <= max_length else text[:max_length] + suffix


@pytest.fixture
def manager() -> ToolManager:
    tools = ToolManager()
    tools.register_function_tool("summarise", summarise, "Shorten a text")
    return tools


# ---------------------------------------------------------------- registration


def test_register_function_tool_with_options(manager: ToolManager) -> None:
    definition = manager.get_tool("summarise")
    assert definition.description == "Shorten a text"
    assert "summarise" in manager and len(manager) == 1

    async def search(query: str) -> list[str]:
        return [query]

    registered = manager.register_function_tool(
        "search", search, "Search", category="search", tags=["web"], timeout=3.0, cacheable=True
    )
    assert registered.category is ToolCategory.SEARCH
    assert registered.timeout == 3.0 and registered.cacheable


def test_decorated_function_registered_under_its_own_name_is_not_a_duplicate() -> None:
    @tool(name="text_analyzer", description="Analyze text", category=ToolCategory.ANALYSIS)
    async def text_analyzer(parameters: dict[str, Any]) -> dict[str, Any]:
        return {}

    manager = ToolManager()
    definition = manager.register_function_tool("text_analyzer", text_analyzer, "Text analysis tool")
    assert definition.description == "Text analysis tool"  # the registration's description wins
    assert definition.category is ToolCategory.ANALYSIS  # decorator options are kept
    # registering the very same tool again is a no-op, not a duplicate
    again = manager.register_function_tool("text_analyzer", text_analyzer, "Text analysis tool")
    assert again is definition
    manager.register_tool(text_analyzer, replace=True)
    assert manager.get_tool("text_analyzer").description == "Analyze text"


def test_duplicate_name_raises_and_leaves_registry_unchanged(manager: ToolManager) -> None:
    async def other(text: str) -> str:
        return text

    before = manager.get_tool("summarise")
    with pytest.raises(ToolRegistrationError, match="^name: got 'summarise'; allowed a name not already"):
        manager.register_function_tool("summarise", other, "Other")
    assert manager.get_tool("summarise") is before
    replaced = manager.register_function_tool("summarise", other, "Other", replace=True)
    assert manager.get_tool("summarise") is replaced


@pytest.mark.parametrize(
    ("name", "function", "options", "match"),
    [
        ("bad name", summarise, {}, "^name: got 'bad name'"),
        ("n" * 65, summarise, {}, "^name: got"),
        ("", summarise, {}, "^name: got ''"),
        ("web.search", summarise, {}, "^name: got 'web.search'"),
        ("café", summarise, {}, "^name: got 'café'"),
        ("ok", "not callable", {}, "^function: got 'not callable'"),
        ("ok", summarise, {"timeout": -1}, "^timeout: got -1"),
        ("ok", summarise, {"rate_limit": -3}, "^rate_limit: got -3"),
        ("ok", summarise, {"rate_window": 0}, "^rate_window: got 0"),
        ("ok", summarise, {"colour": "red"}, "^options: got 'colour'"),
    ],
)
def test_invalid_registrations_leave_registry_unchanged(
    manager: ToolManager, name: str, function: Any, options: dict[str, Any], match: str
) -> None:
    before = manager.list_tools()
    with pytest.raises(ToolRegistrationError, match=match):
        manager.register_function_tool(name, function, "desc", **options)
    assert manager.list_tools() == before


def test_longest_provider_name_is_accepted(manager: ToolManager) -> None:
    name = "A-z_0" + "9" * 59
    assert len(name) == 64
    assert manager.register_function_tool(name, summarise, "desc").name == name


def test_register_tool_accepts_definitions_and_plain_functions() -> None:
    manager = ToolManager()

    def plain_tool(x: int) -> int:
        """Return x."""
        return x

    assert manager.register_tool(plain_tool).description == "Return x."
    definition = ToolDefinition(name="defined", function=plain_tool)
    assert manager.register_tool(definition) is definition
    with pytest.raises(ToolRegistrationError, match="^name: got '<lambda>'"):
        manager.register_tool(lambda: None)
    with pytest.raises(ToolRegistrationError, match="^tool: got 5"):
        manager.register_tool(5)  # type: ignore[arg-type]


def test_unregister_and_lookup(manager: ToolManager) -> None:
    removed = manager.unregister_tool("summarise")
    assert removed.name == "summarise"
    assert "summarise" not in manager
    with pytest.raises(ToolNotFoundError, match="tool not found: 'summarise'"):
        manager.unregister_tool("summarise")
    with pytest.raises(ToolNotFoundError):
        manager.get_tool("summarise")


def test_list_tools_filters_by_category_and_tags() -> None:
    manager = ToolManager()

    async def a(parameters: dict[str, Any]) -> None:
        return None

    manager.register_function_tool("a", a, "", category=ToolCategory.ANALYSIS, tags=["text", "fast"])
    manager.register_function_tool("b", a, "", category="analysis", tags=["text"])
    manager.register_function_tool("c", a, "", category=ToolCategory.DATA_PROCESSING, tags=["fast"])
    assert [t.name for t in manager.list_tools()] == ["a", "b", "c"]
    assert [t.name for t in manager.list_tools(category=ToolCategory.ANALYSIS)] == ["a", "b"]
    assert [t.name for t in manager.list_tools(category="DATA_PROCESSING")] == ["c"]
    assert [t.name for t in manager.list_tools(tags=["fast"])] == ["a", "c"]
    assert [t.name for t in manager.list_tools(category="analysis", tags=["fast", "text"])] == ["a"]
    with pytest.raises(InvalidArgumentError, match="^category: got 'nope'"):
        manager.list_tools(category="nope")
    with pytest.raises(InvalidArgumentError, match="^tags: got 'fast'"):
        manager.list_tools(tags="fast")


def test_constructor_validates_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="^config: got"):
        ToolManager(config={"max_tokens": 5})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="^approval_callback"):
        ToolManager(approval_callback=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="^cache_size"):
        ToolManager(cache_size=0)
    with pytest.raises(InvalidArgumentError, match="^allow_up_to: got 'everything'"):
        ToolManager(permission_policy="everything")


# ---------------------------------------------------------------- execution


async def test_typed_tool_runs_with_validated_arguments(manager: ToolManager) -> None:
    result = await manager.execute("summarise", text="abcdef", max_length="3")
    assert result == ToolResult(
        success=True, result="abc...", execution_time=result.execution_time, tool_name="summarise"
    )
    assert result.execution_time > 0
    assert result.error is None and result.error_type is None and result.cached is False


async def test_parameters_convention_receives_one_dict() -> None:
    received: list[dict[str, Any]] = []

    async def collect(parameters):  # type: ignore[no-untyped-def]
        received.append(parameters)
        return {"keys": sorted(parameters)}

    manager = ToolManager()
    manager.register_function_tool("collect", collect, "Collect")
    result = await manager.execute("collect", a=1, b="two")
    assert result.success and result.result == {"keys": ["a", "b"]}
    assert received == [{"a": 1, "b": "two"}]


async def test_tool_parameter_called_name_is_allowed() -> None:
    async def greet(name: str) -> str:
        return f"hi {name}"

    manager = ToolManager()
    manager.register_function_tool("greet", greet, "Greet")
    assert (await manager.execute_tool("greet", name="Ada")).result == "hi Ada"


def test_one_public_method_per_job() -> None:
    # issue 17.5: register (register_tool; the guide's register_function_tool), run one tool
    # (execute_tool; call_tool takes a mapping; execute is an alias), run a model's calls
    # (execute_tool_calls). Parsing and running parsed calls are internal.
    public = {  # methods (approval_callback is a property)
        name for name in dir(ToolManager) if not name.startswith("_") and callable(getattr(ToolManager, name))
    }
    running = {name for name in public if "execute" in name or "call" in name or "run" in name}
    assert running == {"execute_tool", "execute", "call_tool", "execute_tool_calls"}
    registering = {name for name in public if name.startswith("register")}
    assert registering == {"register_tool", "register_function_tool"}
    assert "parse_tool_calls" not in public and "run_parsed_calls" not in public


async def test_execute_is_an_alias_of_execute_tool_and_call_tool_the_mapping_form(
    manager: ToolManager,
) -> None:
    by_keywords = await manager.execute_tool("summarise", text="abcdef", max_length=3)
    by_alias = await manager.execute("summarise", text="abcdef", max_length=3)
    by_mapping = await manager.call_tool("summarise", {"text": "abcdef", "max_length": 3}, call_id="c1")
    assert by_keywords.result == by_alias.result == by_mapping.result == "abc..."
    assert by_mapping.call_id == "c1" and by_keywords.call_id is None
    assert manager.get_tool_stats()["tools"]["summarise"]["calls"] == 3


async def test_sync_tool_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def blocking(x: int) -> int:
        seen.append(threading.get_ident())
        return x + 1

    manager = ToolManager()
    manager.register_function_tool("blocking", blocking, "Blocking")
    result = await manager.execute("blocking", x=1)
    assert result.success and result.result == 2
    assert seen and seen[0] != loop_thread


async def test_unknown_tool(manager: ToolManager) -> None:
    result = await manager.execute("text_summarizer", text="x")
    assert not result.success
    assert result.error_type == "unknown_tool"
    assert result.error_type is ToolErrorType.UNKNOWN_TOOL
    assert result.error == "unknown tool 'text_summarizer'; available tools: summarise"
    assert result.tool_name == "text_summarizer"


async def test_invalid_arguments_name_field_value_and_expectation(manager: ToolManager) -> None:
    result = await manager.execute("summarise", text=12, max_length="many", colour="red")
    assert not result.success and result.error_type == "invalid_arguments"
    assert result.error is not None
    assert "text: got 12; expected a valid string" in result.error
    assert "max_length: got 'many'; expected a valid integer" in result.error
    assert "colour: unexpected argument; allowed text, max_length, suffix" in result.error
    missing = await manager.execute("summarise")
    assert missing.error is not None and "text: missing; a value is required" in missing.error


async def test_an_argument_to_a_tool_without_arguments_says_it_takes_none() -> None:
    @tool(name="server_time")
    async def server_time() -> str:
        """The server's clock."""
        return "12:00"

    manager = ToolManager()
    manager.register_tool(server_time)
    result = await manager.execute("server_time", zone="UTC")
    assert not result.success and result.error_type == "invalid_arguments"
    assert result.error == (
        "invalid arguments for tool 'server_time': zone: unexpected argument; allowed no arguments"
    )


async def test_invalid_arguments_against_declared_schema() -> None:
    ran: list[Any] = []

    @tool(
        name="lookup",
        parameters_schema={
            "type": "object",
            "properties": {"key": {"type": "string"}},
            "required": ["key"],
            "additionalProperties": False,
        },
    )
    async def lookup(parameters: dict[str, Any]) -> str:
        ran.append(parameters)
        return "ok"

    manager = ToolManager()
    manager.register_tool(lookup)
    result = await manager.execute("lookup", key=3)
    assert result.error_type == "invalid_arguments"
    assert result.error == "invalid arguments for tool 'lookup': key: got 3; expected string"
    assert ran == []
    assert (await manager.execute("lookup", key="k")).success


async def test_non_mapping_arguments_are_invalid(manager: ToolManager) -> None:
    result = await manager.call_tool("summarise", ["text"])  # type: ignore[arg-type]
    assert result.error_type == "invalid_arguments"
    assert result.error == "arguments: got list; expected a JSON object (dict)"


async def test_arguments_as_openai_json_text_are_parsed() -> None:
    """OpenAI sends a call's arguments as JSON text (``tool_call.function.arguments``); ``call_tool`` refused
    it ("arguments: got str; expected a JSON object (dict)"), so passing a call's fields on failed."""
    ran: list[dict[str, Any]] = []

    def lookup(key: str, limit: int = 1) -> str:
        ran.append({"key": key, "limit": limit})
        return f"{key}:{limit}"

    manager = ToolManager()
    manager.register_function_tool("lookup", lookup, "Look up", sensitive_arguments=["key"])
    result = await manager.call_tool("lookup", '{"key": "a", "limit": 2}', call_id="call_1")
    assert (result.success, result.result, result.call_id) == (True, "a:2", "call_1")
    assert ran == [{"key": "a", "limit": 2}]
    for empty in ("", "  ", "null"):  # no arguments, as in a provider's tool call
        missing = await manager.call_tool("lookup", empty)
        assert missing.error_type == "invalid_arguments" and "key: missing" in (missing.error or "")
    bad = await manager.call_tool("lookup", '{"key": "s3cret-value"')
    assert bad.error_type == "invalid_arguments"
    assert bad.error is not None and bad.error.startswith(
        "invalid arguments for tool 'lookup': arguments: got 22 characters that are no JSON (Expecting"
    )
    assert bad.error.endswith("; expected a JSON object")
    assert "s3cret" not in bad.error  # the text is not quoted: it may hold a sensitive argument
    listed = await manager.call_tool("lookup", "[1, 2]")
    assert listed.error == (
        "invalid arguments for tool 'lookup': arguments: got a JSON array; expected a JSON object"
    )
    assert ran == [{"key": "a", "limit": 2}]  # the refused calls did not run
    assert manager.get_tool_stats()["tools"]["lookup"]["errors"] == {"invalid_arguments": 5}


async def test_arguments_as_json_text_holding_nan_are_refused_as_a_providers_call_is() -> None:
    """``call_tool`` read JSON text with Python's extensions (``NaN``, ``Infinity``), which is no JSON: the
    tool ran with ``nan``, while the same call through ``execute_tool_calls`` was refused."""
    ran: list[float] = []

    def scale(factor: float) -> float:
        ran.append(factor)
        return factor

    manager = ToolManager()
    manager.register_function_tool("scale", scale, "Scale")
    for constant in ("NaN", "Infinity", "-Infinity"):
        text = '{"factor": ' + constant + "}"
        refused = await manager.call_tool("scale", text)
        assert refused.error == (
            f"invalid arguments for tool 'scale': arguments: got {len(text)} characters that are no JSON "
            f"({constant} is not JSON); expected a JSON object"
        )
        call = {"id": "1", "type": "function", "function": {"name": "scale", "arguments": text}}
        assert (await manager.execute_tool_calls([call]))[0].error_type == "invalid_arguments"
    assert ran == []
    assert (await manager.call_tool("scale", '{"factor": 1e3}')).result == 1000.0


async def test_bytes_holding_text_are_converted_binary_bytes_are_a_clear_failure() -> None:
    """A tool returning bytes was refused ("bytes is not JSON-serialisable") although a pydantic model's or a
    dataclass's bytes field was converted to its UTF-8 text; binary bytes now say what to do instead."""

    @dataclasses.dataclass
    class Blob:
        data: bytes

    results: dict[str, Any] = {
        "raw": b"caf\xc3\xa9",
        "buffer": bytearray(b"abc"),
        "nested": {"body": b"ok", "rows": [memoryview(b"x")]},
        "field": Blob(b"text"),
        "binary": b"\xff\x00\x01",
    }
    manager = ToolManager()

    def returning(name: str) -> Any:
        return lambda: results[name]

    for name in results:
        manager.register_function_tool(name, returning(name), name)
    assert (await manager.execute_tool("raw")).result == "café"
    assert (await manager.execute_tool("buffer")).result == "abc"
    nested = await manager.execute_tool("nested")
    assert nested.result == {"body": "ok", "rows": ["x"]}
    assert nested.to_content() == '{"body": "ok", "rows": ["x"]}'
    assert (await manager.execute_tool("field")).result == {"data": "text"}  # as before
    binary = await manager.execute_tool("binary")
    assert not binary.success and binary.error_type == "tool_error"
    assert binary.error is not None and binary.error.startswith(
        "tool 'binary' returned a value that is not JSON-serialisable (a bytes value of 3 bytes that are not "
        "UTF-8 text (decode them, or base64-encode them: base64.b64encode(data).decode()));"
    )


async def test_megabytes_of_bytes_are_converted_off_the_event_loop() -> None:
    """Bytes were converted to their text on the event loop whatever their size: a file reader returning
    20 MB of bytes (alone or in a dict) held the loop for 0.4-0.65 s, where 20 MB of text in a dict goes to
    a worker thread. Bytes now weigh as a text of their length; binary ones are still refused."""
    text = 'línea "citada" \\ 🙂\n' * 800_000  # about 20 MB of UTF-8, with escapes
    data = text.encode()
    values: dict[str, Any] = {
        "top": data,
        "nested": {"path": "/var/log/app.log", "content": bytearray(data)},
        "binary": {"content": data + b"\xff"},
    }
    manager = ToolManager()
    for name, value in values.items():
        manager.register_function_tool(name, (lambda value=value: value), name)

    steps: list[float] = []
    for _ in range(3):  # the best of three: a step of the shared machine's own passes another run
        top, top_step = await longest_loop_step(lambda: manager.execute_tool("top"))
        nested, nested_step = await longest_loop_step(lambda: manager.execute_tool("nested"))
        binary, binary_step = await longest_loop_step(lambda: manager.execute_tool("binary"))
        assert top.result == text and top.to_content() == text
        assert nested.result == {"path": "/var/log/app.log", "content": text}
        assert nested.to_content() == json.dumps(nested.result, ensure_ascii=False)
        assert binary.error_type == "tool_error" and "not UTF-8 text" in (binary.error or "")
        steps.append(max(top_step, nested_step, binary_step))
        if steps[-1] < 0.030:
            break
    assert min(steps) < 0.030, f"the loop was held {min(steps) * 1000:.0f} ms"


async def test_exception_in_tool_is_a_tool_error() -> None:
    async def broken(x: int) -> int:
        raise RuntimeError("disk on fire")

    def broken_sync(x: int) -> int:
        raise KeyError("missing")

    async def raises_timeout_itself() -> None:
        raise TimeoutError("upstream timed out")

    manager = ToolManager()
    manager.register_function_tool("broken", broken, "")
    manager.register_function_tool("broken_sync", broken_sync, "")
    manager.register_function_tool("upstream", raises_timeout_itself, "")
    result = await manager.execute("broken", x=1)
    assert result.error_type == "tool_error"
    assert result.error == "tool 'broken' raised RuntimeError: disk on fire"
    sync_result = await manager.execute("broken_sync", x=1)
    assert sync_result.error == "tool 'broken_sync' raised KeyError: 'missing'"
    upstream = await manager.execute("upstream")
    assert upstream.error_type == "tool_error"  # a TimeoutError raised by the tool is not our timeout


async def test_results_must_be_json_serialisable() -> None:
    class Report(BaseModel):
        words: int

    @dataclasses.dataclass
    class Stats:
        lines: int

    async def model_result() -> Report:
        return Report(words=3)

    async def dataclass_result() -> Stats:
        return Stats(lines=2)

    async def set_result() -> set[int]:
        return {1, 2}

    async def nan_result() -> float:
        return float("nan")

    manager = ToolManager()
    for function in (model_result, dataclass_result, set_result, nan_result):
        manager.register_tool(function)
    assert (await manager.execute("model_result")).result == {"words": 3}
    assert (await manager.execute("dataclass_result")).result == {"lines": 2}
    for name in ("set_result", "nan_result"):
        result = await manager.execute(name)
        assert not result.success and result.error_type == "tool_error"
        assert result.error is not None and "not JSON-serialisable" in result.error


async def test_a_dataclass_result_converts_its_fields_as_a_pydantic_model_result_does() -> None:
    """A dataclass with a datetime, an enum or a set field was refused ("datetime is not
    JSON-serialisable"; the message said to return dataclasses), while a model with the same fields passed."""
    import datetime
    import enum
    import math

    class Status(enum.Enum):
        SHIPPED = "shipped"

    @dataclasses.dataclass
    class Order:
        id: int
        placed: datetime.datetime
        status: Status
        tags: set[str]

    class OrderModel(BaseModel):
        id: int
        placed: datetime.datetime
        status: Status
        tags: set[str]

    @dataclasses.dataclass
    class Reading:
        value: float

    placed = datetime.datetime(2026, 12, 1, 9, 30)

    async def get_order(order_id: int) -> Order:
        return Order(order_id, placed, Status.SHIPPED, {"gift"})

    async def get_order_model(order_id: int) -> OrderModel:
        return OrderModel(id=order_id, placed=placed, status=Status.SHIPPED, tags={"gift"})

    async def read() -> Reading:
        return Reading(math.nan)

    manager = ToolManager()
    for function in (get_order, get_order_model, read):
        manager.register_tool(function)
    expected = {"id": 7, "placed": "2026-12-01T09:30:00", "status": "shipped", "tags": ["gift"]}
    for name in ("get_order", "get_order_model"):
        result = await manager.execute_tool(name, order_id=7)
        assert result.success and result.result == expected
        assert json.loads(result.to_content()) == expected
    nan = await manager.execute_tool("read")  # still no NaN in a result
    assert nan.error_type == "tool_error" and "not JSON-serialisable" in (nan.error or "")


async def test_datetimes_enums_decimals_and_uuids_in_a_result_are_converted() -> None:
    """A dict holding a datetime (``{"placed": order.placed}``, the commonest result of a lookup tool) failed
    with "datetime is not JSON-serialisable", while the same values as fields of a dataclass or a model
    passed; they are now converted as a model's fields are."""
    import datetime
    import decimal
    import enum
    import pathlib
    import uuid

    class Status(enum.Enum):
        SHIPPED = "shipped"

    order_id = uuid.UUID(int=7)

    async def get_order(number: int) -> dict[str, Any]:
        return {
            "id": order_id,
            "placed": datetime.datetime(2026, 12, 1, 9, 30, tzinfo=datetime.UTC),
            "due": datetime.date(2026, 12, 5),
            "status": Status.SHIPPED,
            "total": decimal.Decimal("12.50"),
            "invoice": pathlib.PurePosixPath("/invoices/7.pdf"),
            "history": [(datetime.time(9, 30), Status.SHIPPED)],
        }

    manager = ToolManager()
    manager.register_function_tool("get_order", get_order, "Get an order", cacheable=True)
    expected = {
        "id": "00000000-0000-0000-0000-000000000007",
        "placed": "2026-12-01T09:30:00Z",
        "due": "2026-12-05",
        "status": "shipped",
        "total": "12.50",
        "invoice": "/invoices/7.pdf",
        "history": [["09:30:00", "shipped"]],
    }
    first = await manager.execute_tool("get_order", number=7)
    assert first.success and first.result == expected
    assert json.loads(first.to_content()) == expected
    cached = await manager.execute_tool("get_order", number=7)
    assert cached.cached and cached.result == expected
    manager.register_function_tool("when", lambda: datetime.datetime(2026, 1, 2, 3, 4), "The time")
    assert (await manager.execute_tool("when")).result == "2026-01-02T03:04:00"


async def test_numpy_values_in_a_result_are_converted() -> None:
    """A data tool's ``df["amount"].sum()`` is a numpy.int64: the result failed ("int64 is not
    JSON-serialisable") while a ``mean()`` (a numpy.float64, a float subclass) passed."""
    import math

    import numpy

    async def order_stats(region: str) -> dict[str, Any]:
        amounts = numpy.array([120, 80, 40])
        return {
            "total": amounts.sum(),
            "mean": amounts.mean(),
            "large": amounts > 100,
            "ratio": numpy.float32(0.25),
            "any_refund": numpy.bool_(False),
        }

    async def bad_reading() -> Any:
        return numpy.array([1.0, math.nan])

    manager = ToolManager()
    manager.register_tool(order_stats)
    manager.register_tool(bad_reading)
    result = await manager.execute_tool("order_stats", region="north")
    expected = {"total": 240, "mean": 80.0, "large": [True, False, False], "ratio": 0.25, "any_refund": False}
    assert result.success and result.result == expected
    assert json.loads(result.to_content()) == expected
    nan = await manager.execute_tool("bad_reading")
    assert nan.error_type == "tool_error" and "not JSON-serialisable" in (nan.error or "")


async def test_to_content_and_to_dict(manager: ToolManager) -> None:
    ok = await manager.execute("summarise", text="hello")
    assert ok.to_content() == "hello"
    assert json.loads(json.dumps(ok.to_dict()))["tool_name"] == "summarise"
    failed = await manager.execute("nope")
    assert failed.to_content().startswith("Error (unknown_tool): unknown tool 'nope'")
    assert failed.to_dict()["error_type"] == "unknown_tool"


async def test_stats_count_successes_failures_and_error_types(manager: ToolManager) -> None:
    await manager.execute("summarise", text="a")
    await manager.execute("summarise", text=1)
    await manager.execute("missing")
    stats = manager.get_tool_stats()
    assert stats["registered_tools"] == 1
    assert stats["total_calls"] == 3
    assert stats["unknown_tool_calls"] == 1
    entry = stats["tools"]["summarise"]
    assert entry["calls"] == 2 and entry["successes"] == 1 and entry["failures"] == 1
    assert entry["errors"] == {"invalid_arguments": 1}
    assert entry["success_rate"] == 0.5
    assert entry["average_time"] > 0


async def test_cancelling_the_caller_propagates() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    manager = ToolManager()
    manager.register_tool(forever)
    task = asyncio.create_task(manager.execute("forever"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_permission_defaults_documented() -> None:
    manager = ToolManager(config=ContextManagerConfig())
    assert manager.permission_policy.allow_up_to is ToolPermission.STANDARD


async def test_unregistering_while_a_call_runs_is_safe() -> None:
    slow, started, release = gated_tool()
    manager = ToolManager()
    manager.register_function_tool("slow", slow, "Slow", cacheable=True)
    task = asyncio.create_task(manager.execute("slow", x=1))
    await started.wait()
    manager.unregister_tool("slow")
    release.set()
    result = await task
    assert result.success and result.result == 1
    assert manager.get_tool_stats()["cache"]["entries"] == 0  # no stale entry for a removed tool


async def test_unknown_tool_error_lists_a_bounded_number_of_tools() -> None:
    manager = ToolManager()

    async def noop(parameters: dict[str, Any]) -> None:
        return None

    for index in range(40):
        manager.register_function_tool(f"tool_{index:02d}", noop, "")
    result = await manager.execute("nope")
    assert result.error is not None and result.error.endswith("tool_29 and 10 more")


# ---------------------------------------------------------------- every error type, never raised


async def test_every_error_type_comes_back_as_a_failed_result(clock: ManualClock) -> None:
    """One scenario per ToolErrorType; a new member without a scenario fails here."""

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def broken() -> None:
        raise RuntimeError("disk on fire")

    async def ping() -> str:
        return "pong"

    release = asyncio.Event()

    async def stubborn() -> str:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # swallows its cancellation
                await release.wait()
        return "late"

    manager = ToolManager(clock=clock, cancel_grace=0.01, max_abandoned_calls=1)
    manager.register_function_tool("stubborn", stubborn, "Stubborn", timeout=0.01)
    assert (await manager.execute("stubborn")).error_type == "timeout"  # left running: the bound is reached
    manager.register_function_tool("summarise", summarise, "Shorten a text")
    manager.register_function_tool("hangs", hangs, "Hangs", timeout=0.01)
    manager.register_function_tool("broken", broken, "Broken")
    manager.register_function_tool("wipe", ping, "Wipe", permission=ToolPermission.RESTRICTED)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=1, rate_window=60.0)
    assert (await manager.execute("ping")).success
    clock.advance(15.0)

    scenarios: dict[ToolErrorType, tuple[str, dict[str, Any], str]] = {
        ToolErrorType.UNKNOWN_TOOL: ("nope", {}, "unknown tool 'nope'; available tools: broken, hangs, ping"),
        ToolErrorType.INVALID_ARGUMENTS: ("summarise", {"text": 12}, "text: got 12; expected a valid string"),
        ToolErrorType.PERMISSION_DENIED: ("wipe", {}, "needs permission 'restricted'"),
        ToolErrorType.RATE_LIMITED: ("ping", {}, "allows 1 call per 60 s; retry after 45 s"),
        ToolErrorType.TIMEOUT: ("hangs", {}, "tool 'hangs' timed out after 0.01 s"),
        ToolErrorType.TOOL_ERROR: ("broken", {}, "tool 'broken' raised RuntimeError: disk on fire"),
        ToolErrorType.OVERLOADED: ("stubborn", {}, "'stubborn' has 1 call still running after its timeout"),
    }
    # CANCELLED is never a call's outcome: only cancel_tool_calls gives it (test_window_calls.py)
    assert set(scenarios) == set(ToolErrorType) - {ToolErrorType.CANCELLED}
    for error_type, (name, arguments, message) in scenarios.items():
        result = await manager.call_tool(name, arguments, call_id=f"call_{error_type.value}")
        assert not result.success, error_type
        assert result.error_type is error_type
        assert result.error is not None and message in result.error
        assert result.result is None and not result.cached
        assert (result.tool_name, result.call_id) == (name, f"call_{error_type.value}")
        assert result.to_content() == f"Error ({error_type.value}): {result.error}"
        if error_type is ToolErrorType.RATE_LIMITED:
            assert result.retry_after == 45.0
        else:
            assert result.retry_after is None
    errors = {name: entry["errors"] for name, entry in manager.get_tool_stats()["tools"].items()}
    assert errors == {
        "summarise": {"invalid_arguments": 1},
        "hangs": {"timeout": 1},
        "broken": {"tool_error": 1},
        "wipe": {"permission_denied": 1},
        "ping": {"rate_limited": 1},
        "stubborn": {"timeout": 1, "overloaded": 1},
    }
    release.set()
    await manager.cleanup()


async def test_rejected_replacement_keeps_the_tool_and_its_state(clock: ManualClock) -> None:
    calls = 0

    async def lookup(key: str) -> str:
        nonlocal calls
        calls += 1
        return key

    async def other(key: str) -> str:
        return "other"

    manager = ToolManager(clock=clock)
    before = manager.register_function_tool("lookup", lookup, "Lookup", cacheable=True, rate_limit=1)
    assert (await manager.execute("lookup", key="a")).success
    for options in ({"timeout": -1.0}, {"rate_limit": -1}, {"colour": "red"}):
        with pytest.raises(ToolRegistrationError):
            manager.register_function_tool("lookup", other, "Other", replace=True, **options)
    with pytest.raises(ToolRegistrationError, match="^function: got 3"):
        manager.register_function_tool("lookup", 3, "Other", replace=True)  # type: ignore[arg-type]
    with pytest.raises(ToolRegistrationError, match="^name: got 'lookup'"):
        manager.register_tool(ToolDefinition(name="lookup", function=other))
    assert manager.list_tools() == [before]
    assert (await manager.execute("lookup", key="a")).cached  # its cache entry survived
    assert (await manager.execute("lookup", key="b")).error_type == "rate_limited"  # and its window
    assert calls == 1
    assert manager.get_tool_stats()["tools"]["lookup"]["calls"] == 3


@pytest.mark.parametrize("convention", ["typed", "parameters"])
async def test_sync_tools_never_block_the_event_loop(convention: str) -> None:
    loop_ran = threading.Event()

    def typed_waits(label: str) -> bool:
        return loop_ran.wait(timeout=5.0)

    def parameters_waits(parameters: dict[str, Any]) -> bool:
        return loop_ran.wait(timeout=5.0)

    manager = ToolManager()
    manager.register_function_tool("waits", typed_waits if convention == "typed" else parameters_waits, "")
    task = asyncio.create_task(manager.execute("waits", label="x"))
    # run by the loop after the call started: if the tool held the loop, it would wait out its 5 s
    asyncio.get_running_loop().call_soon(loop_ran.set)
    result = await task
    assert result.success and result.result is True


async def test_cancelled_calls_are_counted_in_the_statistics() -> None:
    """A call its caller cancelled (``asyncio.wait_for`` expiring, ``task.cancel()``) ran, but was counted
    nowhere: ``calls`` missed it, so the statistics were not "every call made". It is now a failure of
    type ``cancelled``, next to timeouts (``timeout``), for async and sync tools, and while waiting for
    an approval."""
    release = threading.Event()

    async def hangs(x: int) -> int:
        await asyncio.Event().wait()
        return x

    def blocks(x: int) -> int:
        release.wait(5)
        return x

    asked = asyncio.Event()

    async def approve(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        asked.set()
        await asyncio.Event().wait()
        return True

    manager = ToolManager(approval_callback=approve)
    manager.register_function_tool("hangs", hangs, "Hangs")
    manager.register_function_tool("blocks", blocks, "Blocks")
    manager.register_function_tool("wipe", hangs, "Wipe", permission=ToolPermission.RESTRICTED)
    manager.register_function_tool("slow", hangs, "Slow", timeout=0.01)
    try:
        for name in ("hangs", "blocks"):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(manager.execute_tool(name, x=1), 0.05)
        call = asyncio.create_task(manager.execute_tool("wipe", x=1))
        await asked.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await manager.execute_tool("slow", x=1)).error_type is ToolErrorType.TIMEOUT
    finally:
        release.set()
    stats = manager.get_tool_stats()
    assert stats["total_calls"] == 4
    for name in ("hangs", "blocks", "wipe"):
        entry = stats["tools"][name]
        assert (entry["calls"], entry["successes"], entry["failures"]) == (1, 0, 1), name
        assert entry["errors"] == {"cancelled": 1}, name
        assert entry["total_time"] > 0 and entry["last_called"] is not None
    assert stats["tools"]["slow"]["errors"] == {"timeout": 1}


async def test_a_json_boolean_is_not_a_number_for_a_typed_tool() -> None:
    """A typed tool took ``true`` for an ``int`` or ``float`` parameter as 1 (pydantic's lax mode: a bool is
    an int in Python): ``{"limit": true}`` from a model ran ``limit=1`` without a word, though the schema
    the model was given says integer, and the library's own check of a parameters dict (as the MCP
    server's memory tools) refuses ``true`` for an integer. It is now ``invalid_arguments``; numbers as
    strings (``"5"``) are still read as pydantic reads them, and bool parameters still take booleans."""
    ran: list[tuple[Any, ...]] = []

    async def search(query: str, limit: int = 5, threshold: float | None = None, exact: bool = False) -> str:
        ran.append((limit, threshold, exact))
        return query

    manager = ToolManager()
    manager.register_function_tool("search", search, "Search")
    refused = await manager.execute_tool("search", query="q", limit=True)
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == "invalid arguments for tool 'search': limit: got true; expected a valid integer"
    both = await manager.call_tool("search", {"query": 3, "threshold": False})
    assert both.error == (
        "invalid arguments for tool 'search': query: got 3; expected a valid string; "
        "threshold: got false; expected a valid number"
    )
    assert ran == []
    for arguments in ({"limit": "5", "threshold": 0.5, "exact": True}, {"limit": 2.0, "threshold": None}):
        assert (await manager.call_tool("search", {"query": "q", **arguments})).success
    assert ran == [(5, 0.5, True), (2, None, False)]


class _Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


async def test_a_json_boolean_is_no_number_for_an_int_enum_or_a_union_with_a_number() -> None:
    """``true`` was still read as 1 where the schema's integer sits behind a ``$ref`` (an ``IntEnum``
    parameter, ``Optional[IntEnum]``) or in a union with another type (``float | str``): a model's
    ``{"priority": true}`` ran with ``Priority.LOW``, ``{"amount": true}`` with ``1.0``, though the schema
    it was given says integer (one of 1, 2) or number or string. Both are ``invalid_arguments`` now."""
    ran: list[tuple[Any, ...]] = []

    async def ticket(priority: _Priority, amount: float | str = 0, fallback: _Priority | None = None) -> str:
        ran.append((priority, amount, fallback))
        return "filed"

    manager = ToolManager()
    manager.register_function_tool("ticket", ticket, "File a ticket")
    refused = await manager.call_tool("ticket", {"priority": True})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == "invalid arguments for tool 'ticket': priority: got true; expected 1 or 2"
    union = await manager.call_tool("ticket", {"priority": 2, "amount": True, "fallback": False})
    assert union.error == (
        "invalid arguments for tool 'ticket': fallback: got false; expected 1 or 2; "
        "amount: got true; expected a valid number or a valid string"
    )
    assert ran == []
    assert (await manager.call_tool("ticket", {"priority": 2, "amount": "12.5", "fallback": 1})).success
    assert ran == [(_Priority.HIGH, "12.5", _Priority.LOW)]


class _Filter(BaseModel):
    min_age: int
    weight: float = 1.0
    active: bool = True


class _Window(typing_extensions.TypedDict):
    start: int
    label: str


@dataclasses.dataclass
class _Point:
    x: int
    y: int


class _Tree(BaseModel):
    value: int
    children: list[_Tree] = []


class _Cat(BaseModel):
    name: str
    lives: int


class _Robot(BaseModel):
    name: str
    lives: bool


async def test_a_json_boolean_is_no_number_inside_nested_objects_and_arrays() -> None:
    """The top level refused ``true`` for an ``int``, but inside a nested model, ``TypedDict``, dataclass,
    list, dict or tuple pydantic's lax mode still read it as 1 (``false`` as 0): ``{"filter": {"min_age":
    true}}`` ran with ``min_age=1`` though the schema the model was given says integer there. Such booleans
    are ``invalid_arguments`` now, at any depth, with their path; booleans where the schema takes one (a
    ``bool`` field, ``list[int | bool]``, a union member's boolean, ``Any``) still pass."""
    ran: list[dict[str, Any]] = []

    async def query(
        filter: _Filter | None = None,
        window: _Window | None = None,
        point: _Point | None = None,
        ids: list[int] | None = None,
        weights: dict[str, float] | None = None,
        pair: tuple[int, str] | None = None,
        tree: _Tree | None = None,
        mixed: list[int | bool] | None = None,
        pet: _Cat | _Robot | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        ran.append({"filter": filter, "window": window, "point": point, "ids": ids, "weights": weights})
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("query", query, "Query")
    refused = {
        "filter": ({"min_age": True}, "filter.min_age: got true; expected a valid integer"),
        "window": ({"start": False, "label": "a"}, "window.start: got false; expected a valid integer"),
        "point": ({"x": 1, "y": True}, "point.y: got true; expected a valid integer"),
        "ids": ([1, 2, True], "ids.2: got true; expected a valid integer"),
        "weights": ({"a": 0.5, "b": False}, "weights.b: got false; expected a valid number"),
        "pair": ([True, "a"], "pair.0: got true; expected a valid integer"),
        "tree": (
            {"value": 1, "children": [{"value": 2, "children": [{"value": True}]}]},
            "tree.children.0.children.0.value: got true; expected a valid integer",
        ),
    }
    for argument, (value, problem) in refused.items():
        result = await manager.call_tool("query", {argument: value})
        assert result.error_type is ToolErrorType.INVALID_ARGUMENTS, argument
        assert result.error == f"invalid arguments for tool 'query': {problem}"
    both = await manager.call_tool("query", {"filter": {"min_age": True, "weight": "heavy"}, "ids": [False]})
    assert both.error == (
        "invalid arguments for tool 'query': filter.weight: got 'heavy'; expected a valid number, unable to "
        "parse string as a number; "
        "filter.min_age: got true; expected a valid integer; ids.0: got false; expected a valid integer"
    )
    assert ran == []
    passing = {
        "filter": {"min_age": "30", "weight": 2, "active": False},
        "window": {"start": 3, "label": "a"},
        "ids": [1, 2.0, "3"],
        "mixed": [True, 2],
        "pet": {"name": "R2", "lives": True},
        "extra": {"deep": [True, {"x": False}]},
    }
    assert (await manager.call_tool("query", passing)).success
    assert ran[0]["filter"] == _Filter(min_age=30, weight=2.0, active=False)
    assert ran[0]["ids"] == [1, 2, 3]


class _Job(BaseModel):
    retries: int
    payload: Any = None


def _call_in_a_thread(manager: ToolManager, name: str, arguments: dict[str, Any]) -> ToolResult:
    """``call_tool`` on its own event loop in a thread: a call that never ends fails the test."""
    results: list[ToolResult] = []
    worker = threading.Thread(
        target=lambda: results.append(asyncio.run(manager.call_tool(name, arguments))), daemon=True
    )
    worker.start()
    worker.join(timeout=20)
    assert results, f"call_tool({name!r}) did not return within 20 s"
    return results[0]


def test_the_nested_boolean_check_does_not_walk_values_no_number_is_expected_in() -> None:
    """The nested boolean check walked every value inside an argument that held a number somewhere, also
    inside an ``Any`` field (which pydantic takes as it is, unwalked): a large JSON payload cost seconds of
    blocked event loop per call, and a payload holding itself twice (a cycle a Python caller may pass to an
    ``Any``) never returned (2**64 paths). A cyclic value where a recursive model is expected was walked as
    long; it is pydantic's ``invalid_arguments`` again."""
    ran: list[Any] = []

    async def submit(job: _Job) -> str:
        ran.append(job.payload)
        return "ok"

    async def grow(tree: _Tree) -> str:
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("submit", submit, "Submit")
    manager.register_function_tool("grow", grow, "Grow")
    payload: list[Any] = [True]
    payload += [payload, payload]
    result = _call_in_a_thread(manager, "submit", {"job": {"retries": 1, "payload": payload}})
    assert result.success, result.error
    assert ran[0] is payload
    tree: dict[str, Any] = {"value": 1, "children": []}
    tree["children"] += [tree, tree]
    result = _call_in_a_thread(manager, "grow", {"tree": tree})
    assert result.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert "Recursion error" in (result.error or "")
    # the check itself still runs where numbers are expected
    refused = _call_in_a_thread(manager, "submit", {"job": {"retries": True, "payload": payload}})
    assert refused.error == (
        "invalid arguments for tool 'submit': job.retries: got true; expected a valid integer"
    )


class _Lion(BaseModel):
    kind: typing_extensions.Literal["lion"]
    lives: int


class _Toy(BaseModel):
    kind: typing_extensions.Literal["toy"] = "toy"
    lives: bool
    squeaks: bool = False


async def test_a_nested_boolean_is_checked_against_the_union_member_its_tag_names() -> None:
    """In a union of models told apart by a ``Literal`` tag (a discriminated union, or a plain one), the
    check merged every member's schema: ``{"kind": "lion", "lives": true}`` passed (a ``_Toy`` takes a
    boolean ``lives``, another member no such key at all) and pydantic read it as ``lives=1``. The object's
    tag now picks the members it is checked against; without the tag, every member still counts."""
    ran: list[Any] = []

    async def adopt(
        pet: typing_extensions.Annotated[_Lion | _Toy, pydantic.Field(discriminator="kind")],
        pets: list[_Lion | _Toy] | None = None,
    ) -> str:
        ran.append((pet, pets))
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("adopt", adopt, "Adopt")
    lion = await manager.call_tool("adopt", {"pet": {"kind": "lion", "lives": True}})
    assert lion.error == "invalid arguments for tool 'adopt': pet.lives: got true; expected a valid integer"
    rows = [{"lives": True}, {"kind": "lion", "lives": 9}, {"kind": "lion", "lives": False}]
    refused = await manager.call_tool("adopt", {"pet": {"kind": "toy", "lives": True}, "pets": rows})
    assert refused.error == (
        "invalid arguments for tool 'adopt': pets.2.lives: got false; expected a valid integer"
    )
    assert ran == []
    passing = await manager.call_tool("adopt", {"pet": {"kind": "toy", "lives": True}, "pets": rows[:2]})
    assert passing.success, passing.error
    assert ran == [(_Toy(lives=True), [_Toy(lives=True), _Lion(kind="lion", lives=9)])]


class _Card(BaseModel):
    number: str
    pin: int


async def test_a_nested_boolean_inside_a_sensitive_argument_is_refused_without_quoting_it() -> None:
    """The nested boolean check names the place, not the value, inside a ``sensitive_arguments`` argument
    (as pydantic's own errors there are redacted)."""

    async def pay(card: _Card, amount: float) -> str:
        return "paid"

    manager = ToolManager()
    manager.register_function_tool("pay", pay, "Pay", sensitive_arguments=["card"])
    refused = await manager.call_tool("pay", {"card": {"number": "4111", "pin": True}, "amount": 3})
    assert (
        refused.error
        == "invalid arguments for tool 'pay': card.pin: got [REDACTED]; expected a valid integer"
    )


class _Count(BaseModel):
    v: int


class _Flag(BaseModel):
    v: bool
    reason: str


async def test_a_nested_boolean_in_an_untagged_union_is_refused_where_pydantic_reads_it_as_a_number() -> None:
    """In a union without a tag, the check let a boolean pass when any member took one: ``{"v": true}``
    for ``_Count | _Flag`` (``_Flag`` needs a ``reason`` too) came to the tool as ``_Count(v=1)``. Which
    member pydantic picked now decides: a boolean read as a number is refused."""
    ran: list[Any] = []

    async def record(entry: _Count | _Flag) -> str:
        ran.append(entry)
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("record", record, "Record")
    refused = await manager.call_tool("record", {"entry": {"v": True}})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == "invalid arguments for tool 'record': entry.v: got true; expected a valid integer"
    assert ran == []
    for arguments in ({"v": True, "reason": "set"}, {"v": 1}, {"v": False, "reason": "unset"}):
        result = await manager.call_tool("record", {"entry": arguments})
        assert result.success, result.error
    assert ran == [_Flag(v=True, reason="set"), _Count(v=1), _Flag(v=False, reason="unset")]
    assert [type(entry.v) for entry in ran] == [bool, int, bool]


class _AgeFilter(BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    min_age: int = pydantic.Field(alias="minAge")


class _AliasOnly(BaseModel):
    min_age: int = pydantic.Field(0, alias="minAge")


async def test_a_nested_boolean_given_by_a_fields_name_is_refused() -> None:
    """A model with ``populate_by_name`` takes a field by its name as well as its alias; the check looked
    up only the alias (the schema's key), so ``{"min_age": true}`` came to the tool as ``min_age=1``. A key
    pydantic ignores (no ``populate_by_name``) is still no problem."""
    ran: list[Any] = []

    async def search(where: _AgeFilter, also: _AliasOnly | None = None) -> str:
        ran.append((where, also))
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("search", search, "Search")
    for key in ("minAge", "min_age"):
        refused = await manager.call_tool("search", {"where": {key: True}})
        assert refused.error == (
            f"invalid arguments for tool 'search': where.{key}: got true; expected a valid integer"
        )
    assert ran == []
    ignored = await manager.call_tool("search", {"where": {"min_age": 3}, "also": {"min_age": True}})
    assert ignored.success, ignored.error
    assert ran == [(_AgeFilter(minAge=3), _AliasOnly())]


class _Inner(BaseModel):
    count: int


class _Outer(BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    items: list[_Inner] = pydantic.Field(default_factory=list, alias="Items")
    inner: _Inner | None = pydantic.Field(None, validation_alias=AliasChoices("Inner", "theInner"))


async def test_a_boolean_inside_a_container_given_by_a_fields_other_key_is_refused() -> None:
    """A nested object or array given under a key the schema does not list (a field's name under
    ``populate_by_name``, a later ``AliasChoices`` choice) was not walked: ``{"items": [{"count": true}]}``
    came to the tool as ``count=1``. A boolean left as a boolean there (an ``Any`` extra) is still taken."""
    ran: list[Any] = []

    async def tally(outer: _Outer) -> int:
        ran.append(outer)
        return sum(item.count for item in outer.items)

    manager = ToolManager()
    manager.register_function_tool("tally", tally, "Tally")
    for arguments, problem in (
        ({"Items": [{"count": 2}, {"count": True}]}, "outer.Items.1.count: got true"),
        ({"items": [{"count": 2}, {"count": True}]}, "outer.items.1.count: got true"),
        ({"Inner": {"count": False}}, "outer.Inner.count: got false"),
        ({"theInner": {"count": True}}, "outer.theInner.count: got true"),
    ):
        refused = await manager.call_tool("tally", {"outer": arguments})
        assert refused.error == f"invalid arguments for tool 'tally': {problem}; expected a valid integer"
    assert ran == []
    given = {"items": [{"count": 2}], "theInner": {"count": 3}}
    accepted = await manager.call_tool("tally", {"outer": given})
    assert (accepted.success, accepted.result) == (True, 2), accepted.error


class _Row(BaseModel):
    count: int  # (extra keys ignored, pydantic's default)


def test_a_container_under_an_ignored_key_is_not_walked_boolean_by_boolean() -> None:
    """Every boolean inside a value under a key the schema does not list was recorded as unsure and looked
    up again after validation, also under a key pydantic ignores (an extra key of a nested model): 100,000
    rows there took 1.6-3.9 s per call instead of 2.5 ms. The value is now one entry, looked at after
    validation only if pydantic took it (a field by its name)."""
    schema = pydantic.TypeAdapter(list[_Row]).json_schema()
    rows = {"rows": [{"count": 1, "junk": [{"flag": True, "n": index} for index in range(1000)]}]}
    parameters = {"type": "object", "properties": {"rows": schema}, "$defs": schema.pop("$defs", {})}
    found, unsure = nested_booleans(rows, ["rows"], parameters)
    assert (found, list(unsure)) == ({}, [("rows", 0, "junk")])


async def test_a_value_under_an_ignored_or_extra_key_keeps_its_booleans() -> None:
    """Under a key pydantic ignores (a nested model's extra) or keeps as given (``extra="allow"``), booleans
    are no problem; under a field's name they still are (deeper than the key)."""

    class _Open(BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        count: int = 0

    async def take(rows: list[_Row], open_row: _Open, outer: _Outer) -> str:
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("take", take, "Take")
    flags = [{"flag": True, "n": index} for index in range(100)]
    given = {"rows": [{"count": 1, "junk": flags}], "open_row": {"count": 2, "more": flags}, "outer": {}}
    result = await manager.call_tool("take", given)
    assert (result.success, result.result) == (True, "ok"), result.error
    refused = await manager.call_tool("take", {**given, "outer": {"items": [{"count": 1}, {"count": True}]}})
    assert refused.error == (
        "invalid arguments for tool 'take': outer.items.1.count: got true; expected a valid integer"
    )


class _AgeChoices(BaseModel):
    min_age: int = pydantic.Field(0, validation_alias=AliasChoices("min_age", "minAge", AliasPath("age", 0)))


async def test_a_nested_boolean_given_by_one_of_a_fields_alias_choices_is_refused() -> None:
    """A field with ``validation_alias=AliasChoices(...)`` is taken by each of its choices, but the schema
    lists only the first: ``{"minAge": true}`` came to the tool as ``min_age=1``."""
    ran: list[Any] = []

    async def search(where: _AgeChoices) -> str:
        ran.append(where)
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("search", search, "Search")
    for key in ("min_age", "minAge"):
        refused = await manager.call_tool("search", {"where": {key: True}})
        assert refused.error == (
            f"invalid arguments for tool 'search': where.{key}: got true; expected a valid integer"
        )
    assert ran == []
    accepted = await manager.call_tool("search", {"where": {"minAge": 4}})
    assert accepted.success, accepted.error
    assert ran == [_AgeChoices(min_age=4)]


class _Node(BaseModel):
    value: int = 0
    child: _Node | None = None


async def test_a_boolean_nested_deeper_than_64_levels_is_refused() -> None:
    """The walk stopped 64 levels down: a ``true`` deeper came to the tool as 1."""
    ran: list[Any] = []

    async def plant(root: _Node) -> str:
        ran.append(root)
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("plant", plant, "Plant")
    tree: dict[str, Any] = {"value": True}
    for _ in range(80):
        tree = {"value": 1, "child": tree}
    refused = await manager.call_tool("plant", {"root": tree})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == (
        "invalid arguments for tool 'plant': root"
        + ".child" * 80
        + ".value: got true; expected a valid integer"
    )
    assert ran == []


async def test_a_number_too_large_for_an_integer_parameter_is_described_plainly() -> None:
    """A model sending ``1e300`` (or a 5,000-digit string) for an integer was told the tool "expected
    Unable to parse input string as an integer, exceeded maximum size": pydantic's words, which name a
    string the model never sent."""
    manager = ToolManager()

    async def page(number: int) -> int:
        return number

    manager.register_function_tool("page", page, "A page")
    for given, shown in ((1e300, "1e+300"), ("9" * 5000, None)):
        result = await manager.call_tool("page", {"number": given})
        assert result.error_type is ToolErrorType.INVALID_ARGUMENTS
        assert result.error is not None and "Unable to parse" not in result.error, result.error
        assert result.error.endswith("; expected an integer written out in digits (at most 4300)"), (
            result.error
        )
        if shown is not None:
            assert f"number: got {shown};" in result.error
    assert (await manager.call_tool("page", {"number": 10**30})).result == 10**30  # big, but an integer


async def test_a_whole_number_in_exponent_form_is_told_to_write_its_digits() -> None:
    """``1e20`` for an integer is refused (a float beyond 64 bits), while ``10**300`` in digits is taken:
    "expected an integer small enough to read" sent the model looking for a smaller number."""
    manager = ToolManager()

    async def page(number: int) -> int:
        return number

    manager.register_function_tool("page", page, "A page")
    refused = await manager.call_tool("page", {"number": 1e20})
    assert refused.error is not None and "small enough" not in refused.error, refused.error
    assert "written out in digits" in refused.error, refused.error
    assert (await manager.call_tool("page", {"number": 10**20})).result == 10**20  # the advice works
    assert (await manager.call_tool("page", {"number": 10**300})).result == 10**300


# -- a tool without a description ------------------------------------------------------------------------


async def _undocumented(order_id: int) -> int:
    return order_id


def test_registering_a_tool_without_a_description_warns_naming_it() -> None:
    """A tool with no docstring and no ``description=`` was registered silently with ``"description": ""``
    in its schema (a model then guesses what it does from its name); LangChain's ``@tool`` refuses it."""
    manager = ToolManager()
    with pytest.warns(UserWarning, match=r"^tool 'lookup' has no description: models choose .* docstring"):
        manager.register_function_tool("lookup", _undocumented)
    with pytest.warns(UserWarning, match=r"^tool '_undocumented' has no description"):
        manager.register_tool(_undocumented)
    blank = tool(name="blank", description="   ")(lambda order_id: order_id)
    with pytest.warns(UserWarning, match=r"^tool 'blank' has no description"):
        manager.register_tool(blank)
    # still registered (a warning, not a refusal): existing code keeps working
    assert {"lookup", "_undocumented", "blank"} <= {
        schema["function"]["name"] for schema in manager.get_tool_schemas()
    }


def test_an_undocumented_callable_object_warns_and_is_not_described_as_calling_itself() -> None:
    """A callable object documented nowhere (class, ``__call__``) was described to the model as "Call self
    as a function." (``inspect.getdoc`` finds the type's ``__call__`` on ``object``), so it did not warn."""

    class Lookup:
        def __call__(self, order_id: int) -> int:
            return order_id

    class Base:
        def __call__(self, order_id: int) -> int:
            """Look up an order."""
            return order_id

    class Derived(Base):
        def __call__(self, order_id: int) -> int:
            return order_id + 1

    manager = ToolManager()
    with pytest.warns(UserWarning, match=r"^tool 'lookup' has no description"):
        definition = manager.register_function_tool("lookup", Lookup())
    assert definition.description == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inherited = manager.register_function_tool("derived", Derived())
    assert inherited.description == "Look up an order."  # a documented base class's __call__ still counts


def test_a_tool_with_a_docstring_or_a_description_registers_without_a_warning() -> None:
    manager = ToolManager()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager.register_tool(summarise)  # its docstring
        manager.register_function_tool("lookup", _undocumented, "Look up an order.")
        manager.register_tool(tool(name="find", description="Look up an order.")(lambda order_id: order_id))
        manager.register_function_tool("lookup", _undocumented, "Look up an order.")  # the same again: no-op
    assert len(manager.list_tools()) == 3


async def test_an_argument_validator_raising_an_error_pydantic_does_not_wrap_is_a_failed_result() -> None:
    """pydantic turns a validator's ValueError into a ValidationError, but not a KeyError or a TypeError:
    ``execute_tool`` raised it to the caller (a crash of the whole batch of tool calls), although a tool-side
    problem must come back as a failed ToolResult."""

    class Query(pydantic.BaseModel):
        key: str

        @pydantic.field_validator("key")
        @classmethod
        def known(cls, value: str) -> str:
            return {"a": "alpha"}[value]  # KeyError for any other key

    ran: list[str] = []

    async def lookup(query: Query) -> str:
        ran.append(query.key)
        return query.key

    manager = ToolManager()
    manager.register_function_tool("lookup", lookup, "Look up")
    assert (await manager.execute_tool("lookup", query={"key": "a"})).result == "alpha"
    failed = await manager.execute_tool("lookup", query={"key": "zzz"})
    assert not failed.success and failed.error_type == "tool_error"
    assert failed.error == (
        "tool 'lookup' raised KeyError: 'zzz' while its arguments were validated (in the tool's own "
        "validators or defaults)"
    )
    both = await manager.execute_tool_calls(
        [
            {
                "id": "1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"query": {"key": "b"}}'},
            },
            {
                "id": "2",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"query": {"key": "a"}}'},
            },
        ]
    )
    assert [(result.call_id, result.error_type, result.result) for result in both] == [
        ("1", "tool_error", None),
        ("2", None, "alpha"),
    ]
    assert ran == ["alpha", "alpha"]
