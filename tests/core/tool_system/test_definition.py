from __future__ import annotations

import enum
import functools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import pytest
import typing_extensions
from pydantic import BaseModel, ConfigDict, Field, with_config

from context_manager.core.errors import ContextManagerError, ToolRegistrationError
from context_manager.core.tool_system import (
    ToolCategory,
    ToolDefinition,
    ToolErrorType,
    ToolManager,
    ToolPermission,
    ToolRegistry,
    get_tool_definition,
    tool,
)
from context_manager.core.tool_system.schema import check_arguments_against_schema, parse_docstring


def test_decorator_attaches_definition_and_leaves_function_callable() -> None:
    @tool(name="doubler", description="Double a number", category=ToolCategory.ANALYSIS, tags=["math"])
    def doubler(x: int) -> int:
        return x * 2

    assert doubler(21) == 42
    definition = get_tool_definition(doubler)
    assert definition is not None
    assert definition is doubler.__tool_definition__  # type: ignore[attr-defined]
    assert definition.name == "doubler"
    assert definition.description == "Double a number"
    assert definition.category is ToolCategory.ANALYSIS
    assert definition.tags == ("math",)
    assert definition.permission is ToolPermission.STANDARD
    assert definition.is_async is False
    assert definition.convention == "typed"


async def test_bare_decorator_uses_function_name_and_docstring() -> None:
    @tool
    async def summarise(text: str) -> str:
        """Summarise a text.

        Args:
            text: The text to summarise.
        """
        return text[:10]

    definition = get_tool_definition(summarise)
    assert definition is not None
    assert definition.name == "summarise"
    assert definition.description == "Summarise a text."
    assert definition.is_async is True
    assert definition.parameters_schema["properties"]["text"] == {
        "type": "string",
        "description": "The text to summarise.",
    }
    assert await summarise("hello") == "hello"


def test_parameters_convention_detected() -> None:
    async def plain(parameters):  # type: ignore[no-untyped-def]
        return parameters

    async def annotated(parameters: dict[str, Any]) -> dict[str, Any]:
        return parameters

    for function in (plain, annotated):
        definition = ToolDefinition(name="t", function=function)
        assert definition.convention == "parameters"
        assert definition.arguments_model is None
        open_object = {"type": "object", "properties": {}, "additionalProperties": True}
        assert definition.parameters_schema == open_object


class ParcelQuery(TypedDict):
    city: str
    weight_kg: float
    express: NotRequired[bool]


async def test_a_parameters_dict_tool_gets_the_schema_its_annotation_and_docstring_give() -> None:
    """Issue 18.11: a tool whose only argument is named ``parameters`` got an empty schema whatever its
    annotation or docstring said, so a model saw no argument at all."""

    async def documented(parameters):  # type: ignore[no-untyped-def]
        """Analyze a text.

        Args:
            text: The text to analyze.
            top: How many frequent words to list.
        """
        return parameters

    async def counts(parameters: dict[str, int]) -> dict[str, int]:
        return parameters

    async def quote(parameters: ParcelQuery) -> dict[str, Any]:
        """Quote a parcel.

        Args:
            parameters: The parcel to ship.
        """
        return dict(parameters)

    manager = ToolManager()
    for function in (documented, counts, quote):
        assert manager.register_function_tool(function.__name__, function, "").convention == "parameters"
    schemas = {
        schema["function"]["name"]: schema["function"]["parameters"]
        for schema in manager.get_tool_schemas("openai")
    }
    assert schemas["documented"] == {
        "type": "object",
        "properties": {
            "text": {"description": "The text to analyze."},
            "top": {"description": "How many frequent words to list."},
        },
        "additionalProperties": True,
    }
    assert schemas["counts"] == {
        "type": "object",
        "properties": {},
        "additionalProperties": {"type": "integer"},
    }
    assert schemas["quote"] == {
        "type": "object",
        "description": "The parcel to ship.",
        "properties": {
            "city": {"type": "string"},
            "weight_kg": {"type": "number"},
            "express": {"type": "boolean"},
        },
        "required": ["city", "weight_kg"],
        "additionalProperties": False,
    }
    # the typed schemas are checked before the call; the function still gets the plain dict
    assert (await manager.execute("quote", city="Porto", weight_kg=2)).result == {
        "city": "Porto",
        "weight_kg": 2,
    }
    missing = await manager.execute("quote", city="Porto")
    assert missing.error == "invalid arguments for tool 'quote': weight_kg: missing; a value is required"
    wrong = await manager.execute("counts", apples=3, pears="many")
    assert wrong.error == "invalid arguments for tool 'counts': pears: got 'many'; expected integer"
    assert (await manager.execute("documented", text="x", anything=1)).result == {"text": "x", "anything": 1}


class ForecastQuery(TypedDict, total=False):
    city: str
    days: int


class OpenQuery(typing_extensions.TypedDict, closed=False):
    city: str


@with_config(ConfigDict(extra="allow"))
class ExtensibleQuery(TypedDict):
    city: str


async def test_a_typed_dict_parameters_tool_refuses_keys_its_typed_dict_does_not_have() -> None:
    """A ``TypedDict`` is closed (pydantic's schema of one, OpenAI's strict mode): its schema was an open
    object, so a misspelt key (``unit`` for ``units``, ``day`` for ``days``) reached the tool, which read
    its default instead, and the model never learnt of its mistake. The schema now says
    ``additionalProperties: false`` and such a call fails, naming the key and the allowed ones; a
    ``TypedDict`` that says it is open (PEP 728 ``closed=False``) stays open."""
    ran: list[dict[str, Any]] = []

    async def quote(parameters: ParcelQuery) -> str:
        ran.append(dict(parameters))
        return "quoted"

    async def forecast(parameters: ForecastQuery) -> str:
        ran.append(dict(parameters))
        return "sunny"

    async def lookup(parameters: OpenQuery) -> str:
        ran.append(dict(parameters))
        return "found"

    async def locate(parameters: ExtensibleQuery) -> str:
        return "located"

    manager = ToolManager()
    for function in (quote, forecast, lookup, locate):
        manager.register_function_tool(function.__name__, function, "")
    schemas = {
        schema["function"]["name"]: schema["function"]["parameters"]
        for schema in manager.get_tool_schemas("openai")
    }
    assert schemas["quote"]["additionalProperties"] is False
    assert schemas["forecast"]["additionalProperties"] is False
    assert "additionalProperties" not in schemas["lookup"]
    assert "additionalProperties" not in schemas["locate"]

    misspelt = await manager.execute_tool("quote", city="Porto", weight_kg=2, expres=True)
    assert misspelt.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert misspelt.error == (
        "invalid arguments for tool 'quote': expres: unexpected argument; allowed city, weight_kg, express"
    )
    partial = await manager.execute_tool("forecast", city="Porto", day=3)
    assert partial.error == (
        "invalid arguments for tool 'forecast': day: unexpected argument; allowed city, days"
    )
    assert ran == []
    assert (await manager.execute_tool("forecast", days=3)).result == "sunny"
    assert (await manager.execute_tool("lookup", city="Porto", near="coast")).result == "found"
    assert ran == [{"days": 3}, {"city": "Porto", "near": "coast"}]
    assert (await manager.execute_tool("locate", city="Porto", near="coast")).result == "located"


class Shade(enum.Enum):
    RED = "red"
    GREEN = "green"


class Canvas(typing_extensions.TypedDict):
    width: int


class PaintQuery(typing_extensions.TypedDict):
    shade: Shade
    canvas: NotRequired[Canvas]
    layers: NotRequired[int | None]
    finish: NotRequired[Literal["matte", "gloss"] | None]


async def test_a_typed_dict_key_behind_a_ref_or_a_union_is_checked() -> None:
    """The check of a ``TypedDict`` parameters dict read only a key's own ``type`` and ``enum``: a key whose
    schema is a ``$ref`` (an ``Enum``, a nested ``TypedDict``) or an ``anyOf`` (``int | None``, the usual
    optional key) took anything, so ``{"shade": "purple", "layers": "two"}`` reached the tool. Those keys
    are checked now, with what is expected said once."""
    ran: list[dict[str, Any]] = []

    async def paint(parameters: PaintQuery) -> str:
        ran.append(dict(parameters))
        return "painted"

    manager = ToolManager()
    manager.register_function_tool("paint", paint, "Paint")
    refused = await manager.call_tool(
        "paint", {"shade": "purple", "canvas": 5, "layers": "two", "finish": "satin"}
    )
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == (
        "invalid arguments for tool 'paint': shade: got 'purple'; expected one of 'red', 'green'; "
        "canvas: got 5; expected object; layers: got 'two'; expected integer or null; "
        "finish: got 'satin'; expected one of 'matte', 'gloss' or null"
    )
    assert ran == []
    for arguments in (
        {"shade": "red"},
        {"shade": "green", "canvas": {"width": 3}, "layers": None, "finish": "gloss"},
        {"shade": "red", "layers": 2, "finish": None},
    ):
        assert (await manager.call_tool("paint", arguments)).success, arguments
    assert len(ran) == 3


class WeatherQuery(TypedDict):
    city: Annotated[str, Field(description="The city, in English", min_length=2)]
    days: NotRequired[Annotated[int, Field(ge=1, le=7)]]
    units: NotRequired[str]
    note: typing_extensions.ReadOnly[NotRequired[Annotated[str, "Anything the forecaster should know"]]]


def test_a_typed_dict_parameters_tool_keeps_the_descriptions_and_constraints_of_its_keys() -> None:
    """The schema of a ``TypedDict`` was built from its hints stripped of ``Annotated``: a key's
    ``Field(description=..., ge=1)`` vanished, and so did the descriptions the docstring's ``Args:`` gave
    its keys; a model saw bare types. A ``ReadOnly[NotRequired[...]]`` key was taken for a required one."""

    async def weather(parameters: WeatherQuery) -> str:
        """Forecast the weather.

        Args:
            units: "metric" or "imperial".
            city: Not used: the key's own description wins.
        """
        return "sunny"

    definition = ToolDefinition(name="weather", function=weather)
    assert definition.parameters_schema == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city, in English", "minLength": 2},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "units": {"type": "string", "description": '"metric" or "imperial".'},
            "note": {"type": "string", "description": "Anything the forecaster should know"},
        },
        "required": ["city"],
        "additionalProperties": False,
    }


class BookingQuery(TypedDict):
    room: str
    nights: Annotated[NotRequired[int], Field(ge=1, description="How many nights")]
    guest: Annotated[typing_extensions.ReadOnly[NotRequired[str]], "Who stays"]


def test_a_typed_dict_key_may_wrap_its_qualifier_in_annotated() -> None:
    """PEP 655 lets ``Annotated`` wrap ``NotRequired`` (and PEP 705 ``ReadOnly``) as well as be wrapped by
    it: ``Annotated[NotRequired[int], Field(ge=1)]`` refused the tool at registration ("contains the
    'typing.NotRequired' type qualifier, which is invalid"), where a key of the other order was kept."""

    def book(parameters: BookingQuery) -> str:
        """Book a room."""
        return "booked"

    definition = ToolDefinition(name="book", function=book)
    assert definition.parameters_schema == {
        "type": "object",
        "properties": {
            "room": {"type": "string"},
            "nights": {"type": "integer", "minimum": 1, "description": "How many nights"},
            "guest": {"type": "string", "description": "Who stays"},
        },
        "required": ["room"],
        "additionalProperties": False,
    }


def _define_local_order_tool() -> Any:
    class Address(typing_extensions.TypedDict):
        street: str

    class Order(typing_extensions.TypedDict):
        item: str
        address: Address

    @tool
    async def place_order(parameters: Order) -> str:
        return f"{parameters['item']} to {parameters['address']['street']}"

    return place_order


async def test_a_local_typed_dict_naming_another_local_class_registers() -> None:
    """With ``from __future__ import annotations`` (as in this module), a TypedDict defined in a function
    whose keys name another class of that function refused the tool ("name 'Address' is not defined"),
    although the tool function's own hints resolve such names. Registered later elsewhere (another
    name), the tool keeps the schema."""
    place_order = _define_local_order_tool()
    definition = get_tool_definition(place_order)
    assert definition is not None
    assert definition.parameters_schema["properties"]["address"] == {"$ref": "#/$defs/Address"}
    assert definition.parameters_schema["$defs"]["Address"]["required"] == ["street"]
    manager = ToolManager()
    manager.register_function_tool("order", place_order, "Place an order")
    result = await manager.execute_tool("order", item="tea", address={"street": "Rua A"})
    assert result.result == "tea to Rua A"


def test_single_typed_parameter_not_named_parameters_is_typed() -> None:
    async def lookup(data: dict[str, int]) -> int:
        return len(data)

    definition = ToolDefinition(name="lookup", function=lookup)
    assert definition.convention == "typed"
    assert definition.parameters_schema["required"] == ["data"]


def test_schema_from_hints_docstring_and_annotated_fields() -> None:
    class Point(BaseModel):
        x: float
        y: float

    async def plot(
        title: str,
        points: list[Point],
        style: Literal["line", "scatter"] = "line",
        width: Annotated[int, Field(ge=1, description="Width in pixels.")] = 640,
        note: str | None = None,
    ) -> str:
        """Plot points.

        Args:
            title: Title of the chart.
            points (list[Point]): The points,
                in drawing order.
            style: How to draw.
        """
        return title

    definition = ToolDefinition(name="plot", function=plot)
    schema = definition.parameters_schema
    assert definition.description == "Plot points."
    assert schema["type"] == "object"
    assert schema["required"] == ["title", "points"]
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["title"] == {"type": "string", "description": "Title of the chart."}
    assert properties["points"]["description"] == "The points, in drawing order."
    assert properties["style"] == {
        "type": "string",
        "enum": ["line", "scatter"],
        "default": "line",
        "description": "How to draw.",
    }
    assert properties["width"] == {
        "type": "integer",
        "minimum": 1,
        "default": 640,
        "description": "Width in pixels.",
    }
    assert "title" not in schema  # pydantic titles are dropped
    assert "title" not in schema["$defs"]["Point"]
    assert "title" not in schema["$defs"]["Point"]["properties"]["x"]


def test_property_named_title_survives_title_stripping() -> None:
    async def f(title: str) -> str:
        return title

    schema = ToolDefinition(name="f", function=f).parameters_schema
    assert set(schema["properties"]) == {"title"}


class Page(BaseModel):
    title: str = "Untitled"
    body: str = ""


def test_title_stripping_keeps_title_keys_in_defaults_examples_and_constants() -> None:
    """Every ``title`` key holding a string was dropped, data included: a default lost its ``title``."""

    async def publish(
        meta: dict[str, Any] = {"title": "Report", "pages": 3},  # noqa: B006
        page: Page = Page(title="Cover"),  # noqa: B008
        tags: Annotated[list[dict[str, str]], Field(examples=[[{"title": "draft"}]])] = [],  # noqa: B006
    ) -> str:
        return "ok"

    schema = ToolDefinition(name="publish", function=publish).parameters_schema
    properties = schema["properties"]
    assert properties["meta"]["default"] == {"title": "Report", "pages": 3}
    assert properties["page"]["default"] == {"title": "Cover", "body": ""}
    assert properties["tags"]["examples"] == [[{"title": "draft"}]]
    # the keyword itself is still dropped, at every level
    assert schema["$defs"]["Page"]["properties"]["title"] == {"type": "string", "default": "Untitled"}
    assert (
        "title" not in schema and "title" not in schema["$defs"]["Page"] and "title" not in properties["meta"]
    )


def test_parse_docstring_google_style() -> None:
    summary, arguments = parse_docstring(
        """Search the web.

        Longer explanation.

        Args:
            query: What to look for.
            limit (int): How many results
                to return.

        Returns:
            A list.
        """
    )
    assert summary == "Search the web.\n\nLonger explanation."
    assert arguments == {"query": "What to look for.", "limit": "How many results to return."}
    assert parse_docstring(None) == ("", {})


def test_numpy_and_sphinx_docstrings_describe_the_parameters_not_the_tool() -> None:
    """A NumPy-style ``Parameters`` section (underlined with dashes) or Sphinx ``:param:`` fields were not
    read: the whole section became the tool's description and the parameters had none."""

    def forecast_numpy(city: str, days: int = 3, *, units: str = "metric") -> str:
        """Get the weather forecast.

        Parameters
        ----------
        city : str
            The city name,
            as written locally.
        days, units : optional
            How many days, and in which units.

        Returns
        -------
        str
            The forecast.
        """
        return city

    def forecast_sphinx(city: str, days: int = 3, *, units: str = "metric") -> str:
        """Get the weather forecast.

        :param city: The city name,
            as written locally.
        :type city: str
        :param int days: How many days.
        :keyword units: Metric or imperial.
        :returns: The forecast.
        """
        return city

    manager = ToolManager()
    described = {
        "forecast_numpy": {
            "city": "The city name, as written locally.",
            "days": "How many days, and in which units.",
            "units": "How many days, and in which units.",
        },
        "forecast_sphinx": {
            "city": "The city name, as written locally.",
            "days": "How many days.",
            "units": "Metric or imperial.",
        },
    }
    for function in (forecast_numpy, forecast_sphinx):
        definition = manager.register_function_tool(function.__name__, function)
        assert definition.description == "Get the weather forecast."
        properties = definition.parameters_schema["properties"]
        expected = described[function.__name__]
        assert {name: item["description"] for name, item in properties.items()} == expected
        assert properties["days"] == {"default": 3, "description": expected["days"], "type": "integer"}
    # a parameter listed with its type alone has no description (not an empty one)
    assert parse_docstring("Go.\n\nParameters\n----------\ncity : str\ndays : int\n    How many.\n") == (
        "Go.",
        {"days": "How many."},
    )
    # a role starting a line of the description is text, not a field
    summary, _ = parse_docstring("Find items.\n:class:`Item` objects, sorted.\n\n:param city: The city.")
    assert summary == "Find items.\n:class:`Item` objects, sorted."
    # Google style's keyword section is read as its Args: section is
    google = "Search.\n\nArgs:\n    query: What to find.\n\nKeyword Args:\n    limit: At most this many.\n"
    assert parse_docstring(google) == ("Search.", {"query": "What to find.", "limit": "At most this many."})


def test_explicit_parameters_schema_wins() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    @tool(name="search", parameters_schema=schema)
    async def search(parameters: dict[str, Any]) -> list[str]:
        return [parameters["q"]]

    definition = get_tool_definition(search)
    assert definition is not None
    assert definition.parameters_schema == schema
    assert definition.schema_declared is True


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": ""}, "name"),
        ({"name": "dot.name"}, "name"),
        ({"name": "get_weather\n"}, "name"),
        ({"name": "a" * 64 + "\n"}, "name"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"rate_limit": -5}, "rate_limit"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": 2.5}, "rate_limit"),
        ({"rate_window": -1.0}, "rate_window"),
        ({"cache_ttl": 0}, "cache_ttl"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"category": "astrology"}, "category"),
        ({"permission": "root"}, "permission"),
        ({"tags": "text"}, "tags"),
        ({"tags": ["", "x"]}, "tags"),
        ({"cacheable": "yes"}, "cacheable"),
        ({"parameters_schema": {"type": "array"}}, "parameters_schema"),
        ({"parameters_schema": {"properties": ["text"]}}, "parameters_schema.properties"),
        ({"parameters_schema": {"properties": {"text": "string"}}}, "parameters_schema.properties"),
        ({"parameters_schema": {"properties": {"a": {}}, "required": "a"}}, "parameters_schema.required"),
        ({"parameters_schema": {"properties": {"a": {}}, "required": ["b"]}}, "parameters_schema.required"),
        ({"parameters_schema": {"additionalProperties": "no"}}, "parameters_schema.additionalProperties"),
        (
            {"parameters_schema": {"properties": {"n": {"type": "int"}}}},
            "parameters_schema.properties.n.type",
        ),
        ({"parameters_schema": {"properties": {"n": {"type": [{}]}}}}, "parameters_schema.properties.n.type"),
        (
            {"parameters_schema": {"properties": {"n": {"enum": "abc"}}}},
            "parameters_schema.properties.n.enum",
        ),
        ({"parameters_schema": {"properties": {"t": {"enum": {"a", "b"}}}}}, "parameters_schema"),
        ({"parameters_schema": {"properties": {"x": {"default": float("nan")}}}}, "parameters_schema"),
    ],
)
def test_invalid_options_raise_registration_error(options: dict[str, Any], field: str) -> None:
    async def f(parameters: dict[str, Any]) -> None:
        return None

    with pytest.raises(ToolRegistrationError, match=rf"^{field}: got .*; allowed") as info:
        tool(**{"name": "ok", **options})(f)
    assert info.value.field == field
    assert isinstance(info.value, ContextManagerError)
    assert isinstance(info.value, ValueError)
    assert get_tool_definition(f) is None  # nothing attached


def test_unsupported_signatures_rejected() -> None:
    async def star_args(*values: int) -> int:
        return sum(values)

    async def star_kwargs(**values: int) -> int:
        return sum(values.values())

    for function in (star_args, star_kwargs):
        with pytest.raises(ToolRegistrationError, match="no \\*args, \\*\\*kwargs"):
            ToolDefinition(name="bad", function=function)


def test_non_callable_rejected() -> None:
    with pytest.raises(ToolRegistrationError, match="^function: got 42; allowed a callable"):
        ToolDefinition(name="bad", function=42)  # type: ignore[arg-type]
    with pytest.raises(ToolRegistrationError, match="^function: got"):
        tool(name="bad")(42)  # type: ignore[type-var]


def test_unresolvable_hint_rejected() -> None:
    namespace: dict[str, Any] = {}
    exec("async def f(x: 'Missing') -> int:\n    return 1\n", namespace)
    with pytest.raises(ToolRegistrationError, match="type hints that resolve"):
        ToolDefinition(name="f", function=namespace["f"])


def test_with_options_validates_and_keeps_function() -> None:
    async def f(x: int) -> int:
        return x

    definition = ToolDefinition(name="f", function=f, timeout=5.0)
    changed = definition.with_options(name="g", permission="restricted")
    assert changed.name == "g"
    assert changed.permission is ToolPermission.RESTRICTED
    assert changed.function is f
    assert changed.timeout == 5.0
    assert definition.name == "f"
    with pytest.raises(ToolRegistrationError, match="^options: got 'colour'"):
        definition.with_options(colour="red")
    with pytest.raises(ToolRegistrationError, match="^timeout"):
        definition.with_options(timeout=-2)


def test_permission_levels_are_ordered() -> None:
    levels = [p.level for p in (ToolPermission.PUBLIC, ToolPermission.STANDARD, ToolPermission.RESTRICTED)]
    assert levels == sorted(levels)
    assert ToolPermission.DANGEROUS.level > ToolPermission.RESTRICTED.level


def test_light_schema_check_for_parameters_tools() -> None:
    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string"},
            "n": {"type": "integer"},
            "mode": {"type": "string", "enum": ["a", "b"]},
        },
        "required": ["q"],
        "additionalProperties": False,
    }
    assert check_arguments_against_schema({"q": "x", "n": 3, "mode": "a"}, schema) == []
    problems = check_arguments_against_schema({"n": True, "mode": "c", "zzz": 1}, schema)
    assert "q: missing; a value is required" in problems
    assert "n: got true; expected integer" in problems
    assert "mode: got 'c'; expected one of 'a', 'b'" in problems
    assert "zzz: unexpected argument; allowed q, n, mode" in problems


async def test_light_schema_check_accepts_an_integral_float_as_an_integer() -> None:
    """JSON Schema (and a typed tool) counts 3.0 as an integer; the light check refused it."""

    class Repeat(TypedDict):
        count: int

    async def repeat(parameters: Repeat) -> int:
        return int(parameters["count"])

    manager = ToolManager()
    manager.register_function_tool("repeat", repeat, "Repeat")
    assert (await manager.call_tool("repeat", {"count": 3.0})).result == 3
    refused = await manager.call_tool("repeat", {"count": 3.5})
    assert refused.error is not None and "count: got 3.5; expected integer" in refused.error
    schema = {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}}
    assert check_arguments_against_schema({"n": 2.0}, schema) == []
    assert check_arguments_against_schema({"n": True}, schema) == ["n: got true; expected integer or null"]


def test_light_schema_enum_check_tells_booleans_from_numbers() -> None:
    """``True in [0, 1, 2]`` is true in Python, but JSON Schema's true is not 1."""
    schema = {"type": "object", "properties": {"level": {"enum": [0, 1, 2]}, "flag": {"enum": [True, [1]]}}}
    assert check_arguments_against_schema({"level": 1, "flag": True}, schema) == []
    assert check_arguments_against_schema({"level": 1.0, "flag": [1.0]}, schema) == []
    assert check_arguments_against_schema({"level": True, "flag": 1}, schema) == [
        "level: got true; expected one of 0, 1, 2",
        "flag: got 1; expected one of true, [1]",
    ]
    assert check_arguments_against_schema({"flag": [True]}, schema) == [
        "flag: got [true]; expected one of true, [1]"
    ]


async def test_partials_and_callable_objects() -> None:
    import functools

    async def scale(value: float, factor: float) -> float:
        return value * factor

    doubled = ToolDefinition(name="double", function=functools.partial(scale, factor=2.0))
    assert doubled.is_async
    assert doubled.parameters_schema["required"] == ["value"]

    class Counter:
        """Count characters."""

        async def __call__(self, text: str) -> int:
            return len(text)

    counter = ToolDefinition(name="count", function=Counter())
    assert counter.is_async and counter.convention == "typed"
    assert counter.parameters_schema["properties"] == {"text": {"type": "string"}}
    assert counter.description == "Count characters."


async def test_a_field_default_is_the_field_as_in_pydantic_validate_call() -> None:
    """``n: int = Field(3, ge=1)`` was wrapped in another Field: no constraint, a FieldInfo as the value."""

    async def top_words(
        text: str,
        n: int = Field(3, ge=1, description="How many words to list"),
        cutoff: float = Field(0.5, le=1.0),
        language: str = Field(min_length=2),
    ) -> dict[str, Any]:
        """List frequent words.

        Args:
            text: The text.
            cutoff: Lowest relative frequency kept.
        """
        return {"n": n, "cutoff": cutoff, "language": language}

    manager = ToolManager()
    manager.register_function_tool("top_words", top_words, "List frequent words")
    schema = manager.get_tool("top_words").parameters_schema
    assert schema["properties"]["n"] == {
        "type": "integer",
        "default": 3,
        "minimum": 1,
        "description": "How many words to list",
    }
    assert schema["properties"]["cutoff"]["description"] == "Lowest relative frequency kept."
    assert schema["properties"]["cutoff"]["maximum"] == 1.0
    assert schema["required"] == ["text", "language"]
    omitted = await manager.call_tool("top_words", {"text": "a b", "language": "en"})
    assert omitted.success and omitted.result == {"n": 3, "cutoff": 0.5, "language": "en"}
    refused = await manager.call_tool("top_words", {"text": "a b", "n": 0, "language": "e"})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS and refused.error is not None
    assert "n: got 0; expected greater than or equal to 1" in refused.error
    assert "language: got 'e'" in refused.error


async def test_a_none_default_on_a_plain_hint_makes_the_parameter_nullable() -> None:
    """``x: int = None`` was described as ``{"type": "integer", "default": null}`` and a model's ``null``
    (what a strict-mode model sends for an argument it leaves out, and the default the schema itself
    shows) was refused, though the function's own default is None. The None default makes the parameter
    nullable, as PEP 484's implicit Optional reads it: the schema says integer or null, and null runs the
    tool with None; constraints still apply to the value, and other values are refused as before."""
    ran: list[tuple[Any, ...]] = []

    async def find(
        query: str = None,  # type: ignore[assignment]
        limit: Annotated[int, Field(ge=1, description="At most this many")] = None,  # type: ignore[assignment]
        offset: int = Field(None, ge=0),
        kind: Literal["a", "b"] = None,  # type: ignore[assignment]
        exact: bool | None = None,
        anything: Any = None,
    ) -> str:
        ran.append((query, limit, offset, kind, exact, anything))
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("find", find, "Find")
    properties = manager.get_tool("find").parameters_schema["properties"]
    assert properties["query"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    assert properties["limit"] == {
        "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
        "default": None,
        "description": "At most this many",
    }
    null = {"type": "null"}
    assert properties["offset"] == {"anyOf": [{"type": "integer", "minimum": 0}, null], "default": None}
    assert properties["kind"] == {"anyOf": [{"type": "string", "enum": ["a", "b"]}, null], "default": None}
    assert properties["exact"] == {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": None}
    assert properties["anything"] == {"default": None}  # Any takes null already: unchanged
    nulls = {"query": None, "limit": None, "offset": None, "kind": None, "exact": None, "anything": None}
    assert (await manager.call_tool("find", nulls)).success
    assert (await manager.call_tool("find", {})).success
    assert (await manager.call_tool("find", {"query": "q", "limit": 2, "offset": 0, "kind": "b"})).success
    assert ran == [(None,) * 6, (None,) * 6, ("q", 2, 0, "b", None, None)]
    refused = await manager.call_tool("find", {"limit": 0, "offset": -1, "kind": "c", "query": True})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS and refused.error is not None
    assert "limit: got 0; expected greater than or equal to 1" in refused.error
    assert "offset: got -1; expected greater than or equal to 0" in refused.error
    assert "kind: got 'c'; expected 'a' or 'b'" in refused.error
    assert "query: got true; expected a valid string" in refused.error
    assert len(ran) == 3


class SearchArguments(typing_extensions.TypedDict):
    query: str
    limit: typing_extensions.NotRequired[int]


async def test_a_typing_extensions_typed_dict_is_the_parameters_dict_convention() -> None:
    """``typing.is_typeddict`` missed it before 3.13: the tool became a typed tool with one ``parameters``."""

    async def search(parameters: SearchArguments) -> dict[str, Any]:
        return dict(parameters)

    manager = ToolManager()
    definition = manager.register_function_tool("search", search, "Search")
    assert definition.convention == "parameters"
    assert definition.parameters_schema["properties"] == {
        "query": {"type": "string"},
        "limit": {"type": "integer"},
    }
    assert definition.parameters_schema["required"] == ["query"]
    result = await manager.execute_tool("search", query="llm", limit=3)
    assert result.success and result.result == {"query": "llm", "limit": 3}
    refused = await manager.execute_tool("search", limit="three")
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS


async def stream_rows(table: str) -> AsyncIterator[dict[str, str]]:
    yield {"table": table}


def count_rows(table: str, limit: int) -> Iterator[int]:
    yield from range(limit)


class RowStreamer:
    async def __call__(self, table: str) -> AsyncIterator[str]:
        yield table


@pytest.mark.parametrize(
    ("function", "kind"),
    [
        (stream_rows, "an async generator"),
        (count_rows, "a generator"),
        (functools.partial(count_rows, limit=3), "a generator"),
        (RowStreamer(), "an async generator"),
    ],
)
def test_a_generator_function_is_refused_at_registration(function: Any, kind: str) -> None:
    """It registered (an async generator as a sync tool run in a thread), then every call failed."""
    manager = ToolManager()
    with pytest.raises(
        ToolRegistrationError, match=rf"^function: got .*; allowed .*not one that yields.* {kind} "
    ):
        manager.register_function_tool("rows", function, "Rows")
    assert "rows" not in manager


class WeatherService:
    """Tools as methods: ``@tool`` on the method, the bound method registered."""

    def __init__(self, unit: str) -> None:
        self.unit = unit

    @tool(cacheable=True)
    async def get_weather(self, city: str) -> str:
        """Current weather of a city.

        Args:
            city: The city.
        """
        return f"{city}: 21 {self.unit}"

    @tool(name="forecast")
    def forecast(self, city: str, days: int = 3) -> str:
        """Forecast of a city (sync)."""
        return f"{city}: {days} days in {self.unit}"


async def test_a_decorated_method_registered_bound_is_a_tool_of_its_instance() -> None:
    """The definition kept the plain function: ``self`` was a required argument in the schema, and every
    call failed with "self: missing"."""
    celsius, fahrenheit = WeatherService("C"), WeatherService("F")
    manager = ToolManager()
    manager.register_tool(celsius.get_weather)
    manager.register_tool(celsius.get_weather)  # the same tool again: a no-op, as for a function
    manager.register_tool(celsius.forecast)
    manager.register_function_tool("get_weather_f", fahrenheit.get_weather)
    for schema in manager.get_tool_schemas("anthropic"):
        assert "self" not in schema["input_schema"]["properties"]
        assert schema["input_schema"]["required"] == ["city"]
    assert manager.get_tool("get_weather").cacheable and manager.get_tool("get_weather").description
    results = [
        await manager.execute_tool("get_weather", city="Lisbon"),
        await manager.execute_tool("forecast", city="Porto"),
        await manager.execute_tool("get_weather_f", city="Boston"),
    ]
    assert [r.result for r in results] == ["Lisbon: 21 C", "Porto: 3 days in C", "Boston: 21 F"]
    with pytest.raises(ToolRegistrationError, match="already registered"):
        manager.register_tool(fahrenheit.get_weather)  # another instance under the same name


def test_a_method_taken_from_its_class_is_refused_at_registration() -> None:
    """``register_tool(WeatherService.get_weather)`` (the class, not an instance) registered a tool whose
    schema asked the model for ``self``; every call then failed with "self: missing", or ran the method
    on whatever the model sent as ``self``."""
    manager = ToolManager()
    registry = ToolRegistry()
    expected = (
        r"^function: got .*get_weather.*; allowed a function or a bound method \(register_tool\(instance"
    )
    with pytest.raises(ToolRegistrationError, match=expected):
        manager.register_tool(WeatherService.get_weather)
    with pytest.raises(ToolRegistrationError, match=r"^function: got .*forecast"):
        manager.register_function_tool("forecast", WeatherService.forecast)
    with pytest.raises(ToolRegistrationError, match=r"^function: got .*forecast"):
        registry.register_tool(WeatherService.forecast)
    assert len(manager) == 0 and len(registry) == 0
    manager.register_tool(WeatherService("C").get_weather)  # bound: fine

    def self_named(self: str) -> str:  # a plain function may name a parameter self
        return self

    assert manager.register_function_tool("self_named", self_named).parameters_schema["required"] == ["self"]


async def test_tool_above_staticmethod_or_classmethod_keeps_its_options() -> None:
    """Above @staticmethod the options were set on the descriptor, not on what ``DiskAdmin.wipe`` gives: the
    dangerous tool registered as 'wipe' with permission 'standard' and ran without approval. Above
    @classmethod, @tool refused the descriptor as not callable."""

    class DiskAdmin:
        prefix = "/dev/"

        @tool(name="wipe_disk", permission="dangerous")
        @staticmethod
        def wipe(device: str) -> str:
            """Wipe a disk."""
            return f"wiped {device}"

        @tool(name="disk_path", cacheable=True)
        @classmethod
        def path(cls, name: str) -> str:
            """The path of a disk."""
            return cls.prefix + name

    manager = ToolManager()
    wipe = manager.register_tool(DiskAdmin.wipe)
    path = manager.register_tool(DiskAdmin.path)
    assert (wipe.name, wipe.permission) == ("wipe_disk", ToolPermission.DANGEROUS)
    assert (path.name, path.cacheable) == ("disk_path", True)
    assert manager.get_tool_schemas("anthropic")[1]["input_schema"]["required"] == ["name"]
    denied = await manager.execute_tool("wipe_disk", device="/dev/sda")
    assert denied.error_type == ToolErrorType.PERMISSION_DENIED
    assert (await manager.execute_tool("disk_path", name="sda")).result == "/dev/sda"
    assert DiskAdmin.wipe("sdb") == "wiped sdb" and DiskAdmin.path("sdc") == "/dev/sdc"  # still methods


async def test_a_decorator_wrapping_a_tool_is_not_bypassed() -> None:
    """``functools.wraps`` copies ``__tool_definition__`` onto the wrapper, whose definition still named the
    inner function: registering the wrapper ran the inner one, skipping the decorator (an audit log, an
    authorisation check) without a word."""
    import functools

    audit: list[dict[str, Any]] = []

    def audited(function: Any) -> Any:
        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            audit.append(kwargs)
            return await function(*args, **kwargs)

        return wrapper

    @audited
    @tool(name="transfer", permission="public")
    async def transfer(amount: int, to: str) -> str:
        """Transfer money."""
        return f"sent {amount} to {to}"

    class Bank:
        @audited
        @tool(name="balance")
        async def balance(self, account: str) -> int:
            """The balance of an account."""
            return 100

    manager = ToolManager()
    definition = manager.register_tool(transfer)
    assert (definition.name, definition.permission, definition.function) == ("transfer", "public", transfer)
    manager.register_tool(Bank().balance)
    assert list(manager.get_tool("balance").parameters_schema["properties"]) == ["account"]
    assert (await manager.execute_tool("transfer", amount=5, to="bob")).result == "sent 5 to bob"
    assert (await manager.execute_tool("balance", account="acc-1")).result == 100
    assert audit == [{"amount": 5, "to": "bob"}, {"account": "acc-1"}]


def _service_with_a_local_model() -> Any:
    class Query(BaseModel):  # local to this function: only its frame knows the name
        text: str

    class Search:
        @tool(name="search_local")
        async def search(self, query: Query) -> str:
            """Search."""
            return query.text

    return Search()


async def test_a_method_whose_hints_name_a_local_class_registers_bound() -> None:
    """``@tool`` resolved ``query: Query`` (a string under ``from __future__ import annotations``) where the
    class was defined; registering the bound method elsewhere could not find ``Query`` again."""
    manager = ToolManager()
    manager.register_tool(_service_with_a_local_model().search)
    assert manager.get_tool_schemas("anthropic")[0]["input_schema"]["required"] == ["query"]
    assert (await manager.execute_tool("search_local", query={"text": "found"})).result == "found"


def test_a_callable_without_a_usable_name_is_told_to_pass_one() -> None:
    """A partial, a callable object or a lambda was refused with "name: got ''" (or "'<lambda>'") although
    the caller never gave a name: it did not say the name comes from ``__name__``, nor how to give one."""

    async def convert(amount: float, currency: str = "EUR") -> str:
        return f"{amount} {currency}"

    class Counter:
        def __call__(self, n: int) -> int:
            return n

    manager = ToolManager()
    hint = r"pass a name: @tool\(name=\.\.\.\) or register_function_tool\(name, function\)"
    for callable_ in (functools.partial(convert, currency="USD"), Counter(), lambda x: x):
        with pytest.raises(ToolRegistrationError, match=r"^name: got '(<lambda>)?'; allowed .*" + hint):
            manager.register_tool(callable_)
        with pytest.raises(ToolRegistrationError, match=hint):
            tool(callable_)
    with pytest.raises(ToolRegistrationError) as given:
        manager.register_function_tool("bad name", convert)  # a name the caller gave: no such hint
    assert "pass a name" not in str(given.value)
    assert manager.register_function_tool("convert_usd", functools.partial(convert, currency="USD")).name


def test_a_declared_schema_that_does_not_match_a_typed_signature_is_refused() -> None:
    """A typed tool validates calls against its signature, not against a declared ``parameters_schema``: a
    schema naming other arguments was registered, the model followed it, and every call failed with
    "x: missing; ...; y: unexpected argument; allowed y"."""

    async def scale(x: int, factor: float = 2.0) -> float:
        return x * factor

    registry = ToolRegistry()
    extra = {"type": "object", "properties": {"y": {"type": "integer"}, "x": {"type": "integer"}}}
    with pytest.raises(
        ToolRegistrationError,
        match=r"^parameters_schema.properties: got 'y'; allowed the function's parameters: x, factor",
    ):
        registry.register_function_tool("scale", scale, parameters_schema=extra)
    missing = {"type": "object", "properties": {"factor": {"type": "number"}}}
    with pytest.raises(
        ToolRegistrationError, match=r"^parameters_schema.properties: got \['factor'\]; allowed .*'x'"
    ):
        registry.register_function_tool("scale", scale, parameters_schema=missing)
    assert len(registry) == 0
    richer = {
        "type": "object",
        "properties": {"x": {"type": "integer", "description": "The value"}, "factor": {"type": "number"}},
        "required": ["x"],
    }
    assert registry.register_function_tool("scale", scale, parameters_schema=richer).schema_declared


async def test_the_keywords_a_partial_binds_are_not_arguments_of_the_model() -> None:
    """``functools.partial(list_orders, user_id=current_user)`` binds the application's context to a tool,
    as a bound method binds ``self``. The bound keyword stayed in the schema with the bound value as its
    default (the model saw the user id), and a call passing ``user_id="bob"`` ran with it: a model could
    read another user's orders. Bound keywords are left out of the schema and refused in a call."""

    async def list_orders(user_id: str, status: str = "open") -> str:
        return f"{status} orders of {user_id}"

    async def export(parameters: dict[str, str], destination: str) -> str:
        return f"{sorted(parameters)} to {destination}"

    manager = ToolManager()
    orders = manager.register_function_tool(
        "list_orders", functools.partial(list_orders, user_id="alice"), "List the user's orders"
    )
    assert orders.parameters_schema["properties"] == {"status": {"default": "open", "type": "string"}}
    assert "alice" not in json.dumps(manager.get_tool_schemas())
    assert (await manager.execute_tool("list_orders", status="shipped")).result == "shipped orders of alice"
    refused = await manager.execute_tool("list_orders", user_id="bob")
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == (
        "invalid arguments for tool 'list_orders': user_id: unexpected argument; allowed status"
    )
    # with the context bound, the parameters dict convention applies to what is left
    exporter = manager.register_function_tool("export", functools.partial(export, destination="s3"), "Export")
    assert exporter.convention == "parameters"
    assert (await manager.execute_tool("export", b="1", a="2")).result == "['a', 'b'] to s3"


async def test_a_partial_is_described_by_its_function_s_docstring() -> None:
    """A ``functools.partial`` registered without a description was described to the model by the docstring
    of ``functools.partial`` itself ("partial(func, *args, **keywords) - new function with partial
    application of the given arguments and keywords."), and its parameters had no descriptions; a callable
    object documented on its ``__call__`` (its class has no docstring) lost its parameter descriptions
    too. Both are read from the function that does the work now."""

    async def list_orders(user_id: str, status: str = "open") -> str:
        """List the user's orders.

        Args:
            user_id: Whose orders.
            status: Which orders: open or shipped.
        """
        return f"{status} orders of {user_id}"

    class Catalogue:
        async def __call__(self, query: str) -> str:
            """Search the catalogue.

            Args:
                query: What to find, in plain words.
            """
            return query

    manager = ToolManager()
    orders = manager.register_function_tool("list_orders", functools.partial(list_orders, user_id="alice"))
    assert orders.description == "List the user's orders."
    assert orders.parameters_schema["properties"] == {
        "status": {"default": "open", "description": "Which orders: open or shipped.", "type": "string"}
    }
    search = manager.register_function_tool("search", Catalogue())
    assert search.description == "Search the catalogue."
    assert search.parameters_schema["properties"]["query"]["description"] == "What to find, in plain words."


async def test_a_callable_object_s_parameters_are_those_its_call_documents() -> None:
    """A callable object's class docstring describes it and often documents its constructor's arguments
    (``Args:`` of ``__init__``); its ``__call__`` documents the call's. The class's ``Args:`` won over
    ``__call__``'s: a call argument named like a constructor one was described as the constructor's, and a
    parameters-dict tool listed the constructor's arguments as keys the model should send. When ``__call__``
    documents its parameters, those are the tool's; the class docstring still gives the description."""

    class WebSearch:
        """Search the web.

        Args:
            max_results: The cap on results of every call, set once.
        """

        def __init__(self, max_results: int = 10) -> None:
            self.cap = max_results

        async def __call__(self, query: str, max_results: int = 5) -> str:
            """Run one search.

            Args:
                query: What to look for.
                max_results: How many results this call returns, at most the cap.
            """
            return query

    class OrderLookup:
        """Look up an order.

        Args:
            database: The connection orders are read from.
        """

        def __init__(self, database: str) -> None:
            self.database = database

        async def __call__(self, parameters: dict[str, Any]) -> str:
            """Look up one order.

            Args:
                order_id: The order's id.
            """
            return str(parameters)

    manager = ToolManager()
    search = manager.register_function_tool("web_search", WebSearch())
    assert search.description == "Search the web."
    properties = search.parameters_schema["properties"]
    assert properties["max_results"]["description"] == "How many results this call returns, at most the cap."
    assert properties["query"]["description"] == "What to look for."
    lookup = manager.register_function_tool("lookup", OrderLookup("orders.db"))
    assert lookup.description == "Look up an order."
    assert lookup.parameters_schema["properties"] == {"order_id": {"description": "The order's id."}}


async def test_a_one_line_returns_or_raises_after_args_is_not_a_parameter() -> None:
    """A Google-style docstring often writes its sections on one line (``Returns: the status.``). After an
    ``Args:`` section such a line was read as one more argument: a parameters-dict tool documented by its
    ``Args:`` told the model to send a ``Returns`` key, and ``Raises:``/``Note:`` lines did the same. A
    section named on one line (unindented) ends the ``Args:`` section now; the same words in the
    description stay there."""

    async def lookup(parameters: dict[str, Any]) -> str:
        """Look up an order.

        Note: orders older than a year are archived.

        Args:
            order_id: The order's id.
            carrier: The carrier,
                if known.
        Returns: the order's status.
        Raises: LookupError when no order has this id.
        Note: a cancelled order is found too.
        """
        return str(parameters)

    summary, arguments = parse_docstring(lookup.__doc__)
    assert summary == "Look up an order.\n\nNote: orders older than a year are archived."
    assert arguments == {"order_id": "The order's id.", "carrier": "The carrier, if known."}
    definition = ToolManager().register_function_tool("lookup", lookup)
    assert list(definition.parameters_schema["properties"]) == ["order_id", "carrier"]


async def test_a_callable_object_wrapping_a_function_is_documented_by_that_function() -> None:
    """A decorator written as a class (``functools.update_wrapper(self, function)``, a ``__call__`` passing
    ``*args, **kwargs`` through) takes the signature of the function it wraps: so must its documentation.
    Its ``__call__``'s docstring, which documents the pass-through, was read as the tool's: an undocumented
    function was described to the model as "Call the traced function and log the call."."""

    class traced:  # noqa: N801 (a decorator)
        def __init__(self, function: Any) -> None:
            functools.update_wrapper(self, function)
            self.function = function

        async def __call__(self, *args: Any, **kwargs: Any) -> Any:
            """Call the traced function and log the call.

            Args:
                *args: Positional arguments passed through.
                **kwargs: Keyword arguments passed through.
            """
            return await self.function(*args, **kwargs)

    @traced
    async def forecast(city: str, days: int = 3) -> str:
        """Get the weather forecast.

        Args:
            city: The city.
            days: How many days.
        """
        return city

    @traced
    async def undocumented(city: str) -> str:
        return city

    manager = ToolManager()
    described = manager.register_function_tool("forecast", forecast)
    assert described.description == "Get the weather forecast."
    properties = described.parameters_schema["properties"]
    assert {name: item.get("description") for name, item in properties.items()} == {
        "city": "The city.",
        "days": "How many days.",
    }
    assert manager.register_function_tool("undocumented", undocumented).description == ""


async def test_a_callable_object_wrapping_a_function_takes_that_function_s_types() -> None:
    """A decorator written as a class takes the signature of the function it wraps, but the type hints were
    read from its ``__call__(*args, **kwargs)``: the tool's parameters had no types in its schema and its
    calls were not validated (``days="many"`` reached the function). They are the wrapped function's now."""

    class traced:  # noqa: N801 (a decorator)
        def __init__(self, function: Any) -> None:
            functools.update_wrapper(self, function)
            self.function = function

        async def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return await self.function(*args, **kwargs)

    @traced
    async def forecast(city: str, days: int = 3) -> str:
        """Get the weather forecast."""
        return f"{city} {days!r}"

    manager = ToolManager()
    definition = manager.register_function_tool("forecast", forecast)
    properties = definition.parameters_schema["properties"]
    assert properties == {"city": {"type": "string"}, "days": {"default": 3, "type": "integer"}}
    refused = await manager.call_tool("forecast", {"city": "Porto", "days": "many"})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert (await manager.call_tool("forecast", {"city": "Porto", "days": "2"})).result == "Porto 2"
