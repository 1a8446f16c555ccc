"""Anthropic prompt-cache breakpoints (``cache_control``) of tool definitions, developer messages and
LangChain messages: kept, and counted with the system's and the turns' in the 4 a request takes.

The API renders a request as tools, then system, then messages; it takes at most 4 blocks with a
``cache_control`` in all, and none of a longer ``ttl`` after one of a shorter (``"1h"`` after ``"5m"``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import InvalidArgumentError, InvalidMessageError
from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY, Message
from context_manager.core.provider_formats import to_anthropic_messages, to_provider_format
from context_manager.core.tool_system import ToolManager
from tests.provider_rules import anthropic_violations

FIVE = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def config(tmp_path: Path) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")


def marked(text: str, role: str = "user", cache_control: dict[str, Any] | None = None) -> Message:
    """A message holding an imported breakpoint (as the Anthropic import keeps one)."""
    return Message.create(role, text, metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: cache_control or FIVE})


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where the request's ``cache_control`` blocks are, in the API's order (tools, system, messages)."""
    where = [f"tools[{n}]" for n, tool in enumerate(body.get("tools", [])) if "cache_control" in tool]
    if isinstance(body.get("system"), list):
        where += [f"system[{n}]" for n, block in enumerate(body["system"]) if "cache_control" in block]
    for position, turn in enumerate(body["messages"]):
        where += [f"messages[{position}]" for block in turn["content"] if "cache_control" in block]
    return where


def weather_tools() -> ToolManager:
    tools = ToolManager()

    async def weather(city: str) -> str:
        return f"Sunny in {city}"

    async def clock(city: str) -> str:
        return f"Noon in {city}"

    tools.register_function_tool("weather", weather, "The weather of a city")
    tools.register_function_tool("clock", clock, "The time in a city")
    return tools


def test_tool_schemas_take_a_cache_breakpoint_on_the_last_tool() -> None:
    """Anthropic caches the tool definitions up to a tool with a ``cache_control``: the last one caches
    them all. ``get_tool_schemas`` had no way to mark them."""
    tools = weather_tools()
    schemas = tools.get_tool_schemas("anthropic", cache_control=HOUR)
    assert [schema.get("cache_control") for schema in schemas] == [None, HOUR]
    assert schemas[0] == tools.get_tool_schemas("anthropic")[0]
    assert (
        tools.get_tool_schemas("anthropic", names=["weather"], cache_control=FIVE)[0]["cache_control"] == FIVE
    )
    with pytest.raises(InvalidArgumentError, match=r"^cache_control: got 'yes'; allowed a JSON object"):
        tools.get_tool_schemas("anthropic", cache_control="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"^cache_control: .*only with format='anthropic'"):
        tools.get_tool_schemas("openai", cache_control=FIVE)


def test_the_anthropic_export_counts_the_tools_breakpoints_in_the_four() -> None:
    """A request whose tools carry a breakpoint and whose export already held 4 had 5: HTTP 400 ("A maximum
    of 4 blocks with cache_control may be provided. Found 5."). Given the tools, the export sends them
    first (as the API orders the prefix) and keeps the system's and the turns' latest in the room left."""
    tools = weather_tools().get_tool_schemas("anthropic", cache_control=FIVE)
    given = copy.deepcopy(tools)
    messages = [
        marked("Be brief.", "system"),
        marked("one"),
        marked("two", "assistant"),
        marked("three"),
        marked("four", "assistant"),
        marked("five"),
    ]
    assert breakpoints(to_anthropic_messages(messages)) == [
        "system[0]",
        "messages[2]",
        "messages[3]",
        "messages[4]",
    ]
    body = to_anthropic_messages(messages, tools=tools)
    assert list(body) == ["tools", "system", "messages"]
    assert body["tools"] == tools and body["tools"] is not tools and tools == given
    assert breakpoints(body) == ["tools[1]", "system[0]", "messages[3]", "messages[4]"]
    assert anthropic_violations(body) == []
    body["tools"][1]["cache_control"]["ttl"] = "1h"  # a new copy: the caller's list is not changed
    assert tools == given
    assert to_provider_format(messages, "anthropic", tools=tools) == to_anthropic_messages(
        messages, tools=tools
    )
    assert "tools" not in to_anthropic_messages(messages, tools=[])


def test_a_five_minute_tools_breakpoint_takes_the_later_one_hour_ones_away() -> None:
    """Tools come first: a 1-hour breakpoint of the system or a turn after a 5-minute one on the tools is
    refused by the API (longer ``ttl`` first), so the export leaves those out; 1-hour tools keep both."""
    messages = [marked("Be brief.", "system", HOUR), marked("one", "user", HOUR), marked("two", "assistant")]
    short = [{"name": "weather", "input_schema": {"type": "object"}, "cache_control": FIVE}]
    body = to_anthropic_messages(messages, tools=short)
    assert breakpoints(body) == ["tools[0]", "messages[1]"]
    assert anthropic_violations(body) == []
    long = [{**short[0], "cache_control": HOUR}]
    body = to_anthropic_messages(messages, tools=long)
    assert breakpoints(body) == ["tools[0]", "system[0]", "messages[0]", "messages[1]"]
    assert anthropic_violations(body) == []


def test_tools_the_api_would_refuse_are_refused() -> None:
    """Tools the caller gives are sent as given: a list whose own breakpoints break the API's rules, or
    entries of another format, raise naming what is wrong instead of reaching the API."""
    tool = {"name": "weather", "input_schema": {"type": "object"}}
    messages = [Message.create("user", "Hi")]
    too_many = [{**tool, "name": f"t{n}", "cache_control": FIVE} for n in range(5)]
    with pytest.raises(InvalidArgumentError, match=r"^tools: got '5 with a cache_control'; allowed at most"):
        to_anthropic_messages(messages, tools=too_many)
    backwards = [{**tool, "name": "a", "cache_control": FIVE}, {**tool, "name": "b", "cache_control": HOUR}]
    with pytest.raises(InvalidArgumentError, match=r"^tools\[1\]\.cache_control: .*'1h' after a '5m' one"):
        to_anthropic_messages(messages, tools=backwards)
    openai = weather_tools().get_tool_schemas("openai")
    with pytest.raises(InvalidArgumentError, match=r"^tools\[0\]: .*get_tool_schemas\('anthropic'\)"):
        to_anthropic_messages(messages, tools=openai)
    with pytest.raises(InvalidArgumentError, match=r"^tools\[0\]\.cache_control: got 'yes'"):
        to_anthropic_messages(messages, tools=[{**tool, "cache_control": "yes"}])
    with pytest.raises(InvalidArgumentError, match=r"^tools: got 'weather'; allowed a list"):
        to_anthropic_messages(messages, tools="weather")  # type: ignore[arg-type]


async def test_get_context_takes_the_tools_of_an_anthropic_request(tmp_path: Path) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        tools = manager.tool_manager
        for name in ("weather", "clock"):

            async def lookup(city: str) -> str:
                return city

            tools.register_function_tool(name, lookup, f"The {name} of a city")
        await manager.add_messages(
            [
                {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": HOUR}]},
                *(
                    {"role": "user", "content": [{"type": "text", "text": t, "cache_control": FIVE}]}
                    for t in "ab"
                ),
                {"role": "assistant", "content": [{"type": "text", "text": "c", "cache_control": FIVE}]},
                {"role": "user", "content": [{"type": "text", "text": "d", "cache_control": FIVE}]},
            ]
        )
        schemas = tools.get_tool_schemas("anthropic", cache_control=HOUR)
        body = manager.get_context(format="anthropic", tools=schemas)
        assert body["tools"] == schemas
        assert breakpoints(body) == ["tools[1]", "system[0]", "messages[1]", "messages[2]"]
        assert anthropic_violations(body) == []
        with pytest.raises(InvalidArgumentError, match=r"^tools: .*only with format='anthropic'"):
            manager.get_context(format="openai", tools=schemas)


async def test_a_developer_message_keeps_its_cache_control(tmp_path: Path) -> None:
    """OpenAI's ``developer`` role is a system message; its text block with a ``cache_control`` (the shape
    OpenRouter and LiteLLM take) lost the breakpoint, where a system message of the same blocks kept it."""
    developer = {
        "role": "developer",
        "content": [{"type": "text", "text": "Be brief.", "cache_control": HOUR}],
    }
    blocks = [
        {"type": "text", "text": "Tools guide.", "cache_control": HOUR},
        {"type": "text", "text": "Answer briefly."},
    ]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages(
            [developer, {"role": "developer", "content": blocks}, {"role": "user", "content": "Hi"}]
        )
        held = [
            (m.role.value, m.content, m.metadata.get(ANTHROPIC_CACHE_CONTROL_METADATA_KEY))
            for m in manager.messages
        ]
        assert held == [
            ("system", "Be brief.", HOUR),
            ("system", "Tools guide.", HOUR),
            ("system", "Answer briefly.", None),
            ("user", "Hi", None),
        ]
        body = manager.get_context(format="anthropic")
        assert body["system"][:2] == [
            {"type": "text", "text": "Be brief.", "cache_control": HOUR},
            {"type": "text", "text": "Tools guide.", "cache_control": HOUR},
        ]
        assert anthropic_violations(body) == []


async def test_a_langchain_anthropic_turn_keeps_the_cache_control_of_its_additional_kwargs(
    tmp_path: Path,
) -> None:
    """langchain-anthropic puts ``additional_kwargs["cache_control"]`` on the message's last block. A
    message read as an Anthropic turn (an ``AIMessage`` of ``tool_use`` blocks, a ``HumanMessage`` of
    ``tool_result`` blocks) dropped it; every other LangChain message kept it."""
    from langchain_core.messages import AIMessage, HumanMessage

    use = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 °C"}
    history = [
        HumanMessage("Weather in Paris?"),
        AIMessage(
            content=[{"type": "text", "text": "Checking."}, use], additional_kwargs={"cache_control": HOUR}
        ),
        HumanMessage(content=[result], additional_kwargs={"cache_control": FIVE}),
    ]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 3
        kept = [m.metadata.get(ANTHROPIC_CACHE_CONTROL_METADATA_KEY) for m in manager.messages]
        assert kept == [None, HOUR, FIVE]
        turns = manager.get_context(format="anthropic")["messages"]
        assert turns[1]["content"][-1] == {**use, "cache_control": HOUR}
        assert turns[2]["content"] == [{**result, "cache_control": FIVE}]
    # a breakpoint on the block itself wins over additional_kwargs (it is where langchain-anthropic sends it)
    own = AIMessage(content=[{**use, "cache_control": HOUR}], additional_kwargs={"cache_control": FIVE})
    async with EnhancedContextManager(config(tmp_path / "own")) as manager:
        await manager.add_messages([HumanMessage("Hi"), own])
        assert manager.messages[1].metadata[ANTHROPIC_CACHE_CONTROL_METADATA_KEY] == HOUR


def test_a_cache_control_that_is_no_json_object_is_refused_as_a_bad_argument() -> None:
    """Review: ``get_tool_schemas(cache_control=...)`` with a value JSON cannot hold raised a bare
    ``TypeError`` from ``json.dumps``, and a malformed ``cache_control`` on a tool given to the export raised
    ``InvalidMessageError`` (a message's error: the tools are an argument)."""
    tools = weather_tools()
    for bad in ({"type": "ephemeral", "ttl": object()}, {"type": "ephemeral", "ttl": float("nan")}):
        with pytest.raises(InvalidArgumentError, match=r"^cache_control: .*allowed a JSON object") as caught:
            tools.get_tool_schemas("anthropic", cache_control=bad)
        assert type(caught.value) is InvalidArgumentError
    assert "cache_control" not in tools.get_tool_schemas("anthropic")[-1]
    tool = {"name": "weather", "input_schema": {"type": "object"}}
    for bad_tool in ({**tool, "cache_control": "yes"}, {**tool, "cache_control": {"ttl": "1h"}}):
        with pytest.raises(InvalidArgumentError, match=r"^tools\[0\]\.cache_control: ") as caught:
            to_anthropic_messages([Message.create("user", "Hi")], tools=[bad_tool])
        assert type(caught.value) is InvalidArgumentError


REFUSED_BY_THE_API = [
    {"type": "persistent"},
    {"type": "Ephemeral"},
    {"type": "ephemeral", "ttl": "10m"},
    {"type": "ephemeral", "ttl": "2h"},
    {"type": "ephemeral", "ttl": 300},
    {"type": "ephemeral", "ttl": None},
    {"type": "ephemeral", "scope": "global"},
]
ALLOWED = r"allowed a JSON object \{'type': 'ephemeral'\} with an optional 'ttl' of '5m' or '1h'"


@pytest.mark.parametrize("bad", REFUSED_BY_THE_API)
async def test_a_cache_control_the_api_refuses_is_refused_where_it_comes_in(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    """An unknown ``type`` or ``ttl`` (or another key) in a ``cache_control`` was taken silently: on the tools
    (``get_tool_schemas``, the export's ``tools=``), on an imported block, in a message's metadata; the API
    refuses such a request (HTTP 400) at every call until the message leaves the window."""
    tools = weather_tools()
    with pytest.raises(InvalidArgumentError, match=rf"^cache_control: got .*; {ALLOWED}"):
        tools.get_tool_schemas("anthropic", cache_control=bad)
    tool = {"name": "weather", "input_schema": {"type": "object"}, "cache_control": bad}
    with pytest.raises(InvalidArgumentError, match=rf"^tools\[0\]\.cache_control: got .*; {ALLOWED}"):
        to_anthropic_messages([Message.create("user", "Hi")], tools=[tool])
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Hello")
        before = manager.get_context(format="anthropic")
        block = {"type": "text", "text": "Weather in Paris?", "cache_control": bad}
        with pytest.raises(
            InvalidMessageError, match=rf"^messages\[0\]\.content\[0\]\.cache_control: .*{ALLOWED}"
        ):
            await manager.add_messages([{"role": "user", "content": [block]}])
        with pytest.raises(InvalidMessageError, match=ALLOWED):
            await manager.add_message("user", "Hi", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: bad})
        with pytest.raises(InvalidArgumentError, match=r"^tools\[0\]\.cache_control: "):
            manager.get_context(format="anthropic", tools=[tool])
        assert manager.get_context(format="anthropic") == before  # nothing added


async def test_a_langchain_cache_control_the_api_refuses_is_refused(tmp_path: Path) -> None:
    from langchain_core.messages import HumanMessage

    async with EnhancedContextManager(config(tmp_path)) as manager:
        for bad in ({"type": "ephemeral", "ttl": "1d"}, {"type": "auto"}):
            message = HumanMessage("Hi", additional_kwargs={"cache_control": bad})
            with pytest.raises(InvalidMessageError, match=ALLOWED):
                await manager.add_messages([message])
        assert len(manager.messages) == 0


def test_a_stored_cache_control_the_api_refuses_is_left_out_of_the_export() -> None:
    """A conversation saved before such breakpoints were refused holds them: the export leaves them out
    (the request would be refused) and keeps the others."""
    from context_manager.core.conversations.replay import message_from_dict

    stored = [
        message_from_dict(
            {**marked(text).to_dict(), "metadata": {ANTHROPIC_CACHE_CONTROL_METADATA_KEY: cache}}
        )
        for text, cache in (
            ("a", {"type": "persistent"}),
            ("b", FIVE),
            ("c", {"type": "ephemeral", "ttl": "9m"}),
        )
    ]
    body = to_anthropic_messages([stored[0], Message.create("assistant", "x"), *stored[1:]])
    assert breakpoints(body) == ["messages[2]"]
    assert body["messages"][2]["content"][0] == {"type": "text", "text": "b", "cache_control": FIVE}
    assert anthropic_violations(body) == []


async def test_a_tool_definition_whose_name_the_api_refuses_is_refused(tmp_path: Path) -> None:
    """A definition named ``functions.Bash:0`` went into the request as given (HTTP 400: ``tools.0.name``
    must match ``^[a-zA-Z0-9_-]{1,128}$``, ``{1,64}`` until mid-2025), while the export made its calls'
    ``tool_use`` name valid (``functions_Bash_0_<hash>``): the definition and its calls no longer matched.
    Two definitions of one name went too (HTTP 400: ``tools: Tool names must be unique.``)."""
    schema = {"type": "object"}
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Hi")
        for name in ("functions.Bash:0", "", "x" * 129, "météo", "mcp.server.tool"):
            tools = [{"name": "weather", "input_schema": schema}, {"name": name, "input_schema": schema}]
            with pytest.raises(
                InvalidArgumentError, match=r"^tools\[1\]\.name: got .*; allowed 1 to 128 letters"
            ):
                manager.get_context(format="anthropic", tools=tools)
        twice = [{"name": "weather", "input_schema": schema}] * 2  # HTTP 400: "Tool names must be unique."
        with pytest.raises(
            InvalidArgumentError, match=r"^tools\[1\]\.name: got 'weather'; allowed a name no"
        ):
            manager.get_context(format="anthropic", tools=twice)
        tools = [  # the API takes names of 65 to 128 characters (an MCP server's namespaced tools ...)
            {"name": "x" * 128, "input_schema": schema},
            {"name": "mcp__server__" + "y" * 80, "input_schema": schema},
            {"name": "get-weather_2", "input_schema": schema},
        ]
        assert manager.get_context(format="anthropic", tools=tools)["tools"] == tools
