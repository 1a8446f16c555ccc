from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from openai.types.chat import ChatCompletionToolParam
from pydantic import BaseModel, TypeAdapter

from context_manager.core.errors import InvalidArgumentError, ToolNotFoundError
from context_manager.core.tool_system import ToolManager, tool

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


async def get_weather(parameters: dict[str, Any]) -> str:
    return "sunny"


def test_openai_format_matches_documented_shape() -> None:
    expected = load("openai_tools.json")
    manager = ToolManager()
    manager.register_function_tool(
        "get_weather",
        get_weather,
        expected[0]["function"]["description"],
        parameters_schema=expected[0]["function"]["parameters"],
    )
    schemas = manager.get_tool_schemas("openai")
    assert schemas == expected
    TypeAdapter(ChatCompletionToolParam).validate_python(schemas[0])  # the SDK's own request type


def test_anthropic_format_matches_documented_shape() -> None:
    expected = load("anthropic_tools.json")
    manager = ToolManager()
    manager.register_function_tool(
        "get_weather",
        get_weather,
        expected[0]["description"],
        parameters_schema=expected[0]["input_schema"],
    )
    assert manager.get_tool_schemas("anthropic") == expected


def test_generated_schema_fits_both_documented_shapes() -> None:
    @tool(name="get_weather")
    async def weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        """Get the current weather in a given location

        Args:
            location: The city and state, e.g. San Francisco, CA
            unit: The unit of temperature, either 'celsius' or 'fahrenheit'
        """
        return "sunny"

    manager = ToolManager()
    manager.register_tool(weather)
    documented = load("anthropic_tools.json")[0]
    anthropic = manager.get_tool_schemas("anthropic")[0]
    assert set(anthropic) == set(documented)
    assert anthropic["name"] == documented["name"]
    assert anthropic["description"] == documented["description"]
    generated = anthropic["input_schema"]
    # same as the documentation's schema plus what pydantic states exactly: the default and no extras
    expected_schema = json.loads(json.dumps(documented["input_schema"]))
    expected_schema["properties"]["unit"]["default"] = "celsius"
    expected_schema["additionalProperties"] = False
    assert generated == expected_schema
    openai = manager.get_tool_schemas("openai")[0]
    assert set(openai) == {"type", "function"} and openai["type"] == "function"
    assert openai["function"] == {
        "name": "get_weather",
        "description": documented["description"],
        "parameters": expected_schema,
    }
    TypeAdapter(ChatCompletionToolParam).validate_python(openai)


def test_schemas_are_copies_and_selectable() -> None:
    manager = ToolManager()
    manager.register_function_tool("a", get_weather, "A")
    manager.register_function_tool("b", get_weather, "B")
    first = manager.get_tool_schemas("openai", names=["b"])
    assert [s["function"]["name"] for s in first] == ["b"]
    first[0]["function"]["parameters"]["properties"]["x"] = {}
    assert manager.get_tool_schemas("openai", names=["b"])[0]["function"]["parameters"]["properties"] == {}
    with pytest.raises(ToolNotFoundError):
        manager.get_tool_schemas(names=["zzz"])
    allowed = "'openai', 'anthropic' or 'openai_responses'"
    with pytest.raises(InvalidArgumentError, match=f"^format: got 'gemini'; allowed {allowed}"):
        manager.get_tool_schemas("gemini")  # type: ignore[arg-type]


def dangling_references(schema: dict[str, Any]) -> list[str]:
    """The ``#/...`` references of ``schema`` that do not resolve from its root."""
    dangling: list[str] = []

    def resolves(reference: str) -> bool:
        target: Any = schema
        for part in reference.removeprefix("#/").split("/"):
            if not isinstance(target, dict) or part not in target:
                return False
            target = target[part]
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/") and not resolves(reference):
                dangling.append(reference)
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    return dangling


def test_a_mapping_of_models_keeps_its_definitions_at_the_root() -> None:
    """``dict[str, list[Item]]`` nested the value type's ``$defs`` in additionalProperties: dangling refs."""

    class Item(BaseModel):
        sku: str
        qty: int

    async def restock(parameters: dict[str, list[Item]]) -> int:
        return len(parameters)

    manager = ToolManager()
    manager.register_function_tool("restock", restock, "Restock")
    openai_schema = manager.get_tool_schemas("openai")[0]["function"]["parameters"]
    anthropic_schema = manager.get_tool_schemas("anthropic")[0]["input_schema"]
    for schema in (openai_schema, anthropic_schema):
        assert "$defs" not in schema["additionalProperties"]
        assert schema["additionalProperties"] == {"type": "array", "items": {"$ref": "#/$defs/Item"}}
        assert set(schema["$defs"]["Item"]["properties"]) == {"sku", "qty"}
        assert dangling_references(schema) == []


async def test_an_infinite_default_or_bound_leaves_the_schemas_plain_json() -> None:
    """``radius_km: float = math.inf`` put ``Infinity`` in the schema: get_tool_schemas raised ValueError."""
    import math

    from pydantic import Field

    async def find_shops(
        city: str, radius_km: float = math.inf, score: float = Field(0.5, le=math.inf)
    ) -> str:
        return f"{city} {radius_km} {score}"

    async def ping() -> str:
        return "pong"

    manager = ToolManager()
    manager.register_function_tool("find_shops", find_shops, "Find shops")
    manager.register_function_tool("ping", ping, "Ping")
    for format in ("openai", "anthropic"):
        schemas = manager.get_tool_schemas(format)  # type: ignore[arg-type]
        assert len(schemas) == 2
        json.dumps(schemas, allow_nan=False)  # what providers are sent: strict JSON
    parameters = manager.get_tool_schemas("anthropic")[0]["input_schema"]
    assert parameters["required"] == ["city"]  # still optional: the default only is not shown
    assert "default" not in parameters["properties"]["radius_km"]
    assert parameters["properties"]["score"]["default"] == 0.5
    assert "maximum" not in parameters["properties"]["score"]
    result = await manager.execute_tool("find_shops", city="Porto")
    assert result.result == "Porto inf 0.5"


def test_a_name_listed_twice_is_described_once() -> None:
    """``names=[*common_tools, *task_tools]`` with a tool in both lists described it twice, and providers
    refuse a request whose tools repeat a name (OpenAI answers 400)."""
    manager = ToolManager()
    manager.register_function_tool("a", get_weather, "A")
    manager.register_function_tool("b", get_weather, "B")
    for format in ("openai", "anthropic"):
        schemas = manager.get_tool_schemas(format, names=["b", "a", "b"])  # type: ignore[arg-type]
        names = [s["function"]["name"] if format == "openai" else s["name"] for s in schemas]
        assert names == ["b", "a"]


def test_a_plain_string_in_annotated_describes_the_parameter() -> None:
    """``width: Annotated[int, "Width in pixels"]`` (LangChain's and FastMCP's way to describe a parameter)
    lost its description: pydantic ignores a string in ``Annotated``, so the model saw a bare integer."""
    from typing import Annotated

    from pydantic import Field

    @tool
    async def resize(
        width: Annotated[int, "Width in pixels"],
        height: Annotated[int, Field(ge=1), "Height in pixels"],
        keep_ratio: Annotated[bool, "Keep the aspect ratio"] = True,
        unit: Annotated[str, Field(description="From the Field")] = "px",
        mode: Annotated[str, "From the annotation"] = "fit",
    ) -> str:
        """Resize an image.

        Args:
            mode: From the docstring.
        """
        return f"{width}x{height}"

    manager = ToolManager()
    manager.register_tool(resize)
    properties = manager.get_tool_schemas("anthropic")[0]["input_schema"]["properties"]
    assert properties["width"] == {"type": "integer", "description": "Width in pixels"}
    assert properties["height"] == {"type": "integer", "minimum": 1, "description": "Height in pixels"}
    assert properties["keep_ratio"]["description"] == "Keep the aspect ratio"
    assert properties["unit"]["description"] == "From the Field"
    assert properties["mode"]["description"] == "From the docstring."


def _arrays_without_items(schema: Any, path: str = "") -> list[str]:
    """Where ``schema`` has an array schema with no ``items`` (OpenAI refuses such a tool)."""
    found: list[str] = []
    if isinstance(schema, dict):
        if schema.get("type") == "array" and "items" not in schema:
            found.append(path or "/")
        for key, value in schema.items():
            if key not in ("default", "examples", "enum", "const"):
                found.extend(_arrays_without_items(value, f"{path}/{key}"))
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found.extend(_arrays_without_items(value, f"{path}/{index}"))
    return found


async def test_a_tuple_parameter_has_an_items_schema_openai_accepts() -> None:
    """``lat_lng: tuple[float, float]`` became ``prefixItems`` alone (pydantic's JSON Schema 2020-12), and
    OpenAI refuses the whole request ("Invalid schema for function 'elevation': In context=('properties',
    'lat_lng'), array schema missing items"). Such arrays now also say ``items`` (which, with ``maxItems``
    the length of the prefix, changes nothing for a 2020-12 validator); calls validate as before."""
    import typing

    class Span(typing.NamedTuple):
        start: int
        end: int

    class Route(BaseModel):
        stops: list[tuple[str, float]]

    async def elevation(
        lat_lng: tuple[float, float], label: tuple[int, str] | None = None, span: Span | None = None
    ) -> str:
        return f"{lat_lng} {label} {span}"

    async def plan(route: Route) -> int:
        return len(route.stops)

    manager = ToolManager()
    manager.register_function_tool("elevation", elevation, "Elevation")
    manager.register_function_tool("plan", plan, "Plan")
    for schema in [item["function"]["parameters"] for item in manager.get_tool_schemas("openai")]:
        assert _arrays_without_items(schema) == []
    properties = manager.get_tool("elevation").parameters_schema["properties"]
    assert properties["lat_lng"]["items"] == {"type": "number"}
    assert properties["lat_lng"]["prefixItems"] == [{"type": "number"}, {"type": "number"}]
    assert properties["lat_lng"]["maxItems"] == properties["lat_lng"]["minItems"] == 2
    label = properties["label"]["anyOf"][0]
    assert label["items"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert (await manager.execute_tool("elevation", lat_lng=[1, 2.5], label=[3, "x"])).result == (
        "(1.0, 2.5) (3, 'x') None"
    )
    too_long = await manager.execute_tool("elevation", lat_lng=[1, 2, 3])
    assert too_long.error_type == "invalid_arguments"
    assert (await manager.execute_tool("plan", route={"stops": [["Porto", 1.5]]})).result == 1
