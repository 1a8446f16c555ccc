"""Parameter schemas of tools: signature analysis, pydantic argument models, JSON schema, docstrings.

Two calling conventions are recognised (see :func:`analyse_function`):

* **parameters dict** - the user guide's ``async def f(parameters)``: exactly one parameter, named
  ``parameters``, unannotated or annotated with a mapping type (``dict``, ``Dict[str, Any]``, ``Mapping``,
  ``dict[str, int]``) or a ``TypedDict``. It receives the keyword arguments of the call as one dict. Its
  schema, unless the tool declares ``parameters_schema``, says what is known: a ``TypedDict``'s keys and
  types (closed: ``additionalProperties: false``, unless it says ``closed=False``, ``extra_items=`` or
  pydantic's ``extra="allow"``);
  a mapping's value type (``dict[str, int]``: every argument an integer); otherwise the keys documented
  in the docstring's ``Args:`` section (names other than ``parameters``), with their descriptions; an
  open object only when nothing is known. Declared and typed schemas are checked with
  :func:`check_arguments_against_schema` before the call.
* **typed** - any other signature (``async def f(text: str, max_length: int = 100)``). A pydantic model is
  built once, at registration, from the type hints; it validates every call (lax mode: ``"5"`` is accepted
  for an ``int``; unknown arguments are refused) and gives the JSON schema, with parameter descriptions
  taken from a Google-style ``Args:`` section of the docstring or from ``Annotated[..., Field(...)]``.
  A parameter whose default is None takes null (``limit: int = None`` is ``int | None``, PEP 484's
  implicit Optional): the schema and the validation agree on it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import functools
import inspect
import json
import math
import re
import sys
import types
import typing
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import PydanticJsonSchemaWarning

from context_manager.core.errors import _MAX_REPR, ToolRegistrationError, describe_value
from context_manager.core.threads import is_async_callable

__all__ = [
    "REDACTED",
    "CallingConvention",
    "FunctionAnalysis",
    "analyse_function",
    "check_arguments_against_schema",
    "check_declared_schema",
    "describe_argument",
    "describe_validation_error",
    "parse_docstring",
]

REDACTED = "[REDACTED]"
"""Stands in for the value of a ``sensitive_arguments`` argument in the history and in error messages."""

CallingConvention = Literal["parameters", "typed"]
"""How a tool function receives its arguments: one ``parameters`` dict, or typed keyword arguments."""

_OPEN_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": True}
_MAPPING_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping, typing.Dict)  # noqa: UP006
_SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|Returns|Return"
    r"|Yields|Raises|Example|Examples|Note|Notes|Attributes|Warning|Warnings|See Also)\s*:\s*$"
)
# a section named on its line with its text ("Returns: the status."): after an argument section, not one
# more argument
_INLINE_SECTION_RE = re.compile(
    r"^(Returns|Return|Yields|Raises|Example|Examples|Note|Notes|Attributes|Warning|Warnings|See Also)"
    r"\s*:\s*\S"
)
_ARG_LINE_RE = re.compile(r"^\*{0,2}(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)$")
_ARGUMENT_SECTIONS = frozenset(
    {"Args", "Arguments", "Parameters", "Params", "Keyword Args", "Keyword Arguments", "Other Parameters"}
)
_NUMPY_SECTIONS = frozenset(
    {
        "Parameters", "Other Parameters", "Returns", "Yields", "Receives", "Raises", "Warns", "Warnings",
        "See Also", "Notes", "References", "Examples", "Attributes", "Methods",
    }
)  # fmt: skip
_NUMPY_UNDERLINE_RE = re.compile(r"^-{3,}\s*$")
_NUMPY_ARG_LINE_RE = re.compile(
    r"^(?P<names>\*{0,2}[A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*\*{0,2}[A-Za-z_][A-Za-z0-9_]*)*)\s*(?::.*)?$"
)
_SPHINX_FIELD_RE = re.compile(
    r"^:(?P<field>param|parameter|arg|argument|key|keyword|type|raises|raise|except|exception|var|ivar"
    r"|cvar|vartype|returns|return|rtype|yields|yield|ytype|meta)"
    r"(?P<middle>(?:\s[^:]*)?):(?:\s+(?P<text>.*))?$"
)  # (a role starting a line, ":class:`Item` objects", is text: a field's body follows a space)
_SPHINX_PARAMETER_FIELDS = frozenset({"param", "parameter", "arg", "argument", "key", "keyword"})


@dataclass(frozen=True, slots=True)
class FunctionAnalysis:
    """What registration learns from a tool function's signature and docstring."""

    convention: CallingConvention
    """How the function receives its arguments."""
    is_async: bool
    """True when calling the function returns an awaitable (it runs on the event loop); sync functions
    run in a worker thread."""
    arguments_model: type[BaseModel] | None
    """The pydantic model validating typed arguments (None for the parameters-dict convention)."""
    parameters_schema: dict[str, Any]
    """The JSON schema of the arguments object."""
    schema_checks_arguments: bool
    """True when the schema carries types worth checking calls against (a parameters-dict tool
    annotated with a ``TypedDict`` or a typed mapping)."""
    summary: str
    """The docstring's description (text before its first section), or an empty string."""


_RESERVED_FIELD_NAMES = frozenset({"model_config"})
"""Parameter names a typed tool cannot have: ``create_model`` takes them as its own arguments."""


def parse_docstring(docstring: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and its parameter descriptions.

    Google style (an ``Args:`` section), NumPy style (a ``Parameters`` section underlined with dashes)
    and Sphinx style (``:param name: text`` fields) are read; the description is the text before the first
    section or field.

    Example:
        >>> parse_docstring('''Count words.
        ...
        ... Args:
        ...     text: The text to count.
        ...     limit (int): Stop after this many
        ...         words.
        ... ''')
        ('Count words.', {'text': 'The text to count.', 'limit': 'Stop after this many words.'})
    """
    if not docstring:
        return "", {}
    lines = inspect.cleandoc(docstring).splitlines()
    summary_lines: list[str] = []
    arguments: dict[str, str] = {}
    section: str | None = None
    numpy = False  # the section is NumPy style: "name : type" lines, their descriptions indented below
    section_indent: int | None = None
    current: list[str] = []  # the arguments the lines being read describe
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not indent:
            if (
                stripped in _NUMPY_SECTIONS
                and index < len(lines)
                and _NUMPY_UNDERLINE_RE.match(lines[index].strip())
            ):
                section, numpy, section_indent, current = stripped, True, None, []
                index += 1  # the dashes
                continue
            header = _SECTION_RE.match(stripped)
            if header is None and section in _ARGUMENT_SECTIONS:
                header = _INLINE_SECTION_RE.match(stripped)
            if header:
                section, numpy, section_indent, current = header.group(1), False, None, []
                continue
            field = _SPHINX_FIELD_RE.match(stripped)
            if field and (section is None or section == ":"):
                section, current = ":", []
                name = field.group("middle").split()
                if field.group("field") in _SPHINX_PARAMETER_FIELDS and name:
                    current = [name[-1].lstrip("*")]  # ":param str city:" names its type first
                    arguments[current[0]] = (field.group("text") or "").strip()
                continue
        if section is None:
            summary_lines.append(line)
            continue
        if section == ":":  # a Sphinx field's continued text
            if indent and current:
                arguments[current[0]] = f"{arguments[current[0]]} {stripped}".strip()
            elif stripped:
                current = []
            continue
        if section not in _ARGUMENT_SECTIONS or not stripped:
            continue
        if section_indent is None:
            section_indent = indent
        if indent <= section_indent:
            match = (_NUMPY_ARG_LINE_RE if numpy else _ARG_LINE_RE).match(stripped)
            if match and numpy:
                current = [name.strip().lstrip("*") for name in match.group("names").split(",")]
                for name in current:
                    arguments[name] = ""
                continue
            if match:
                current = [match.group("name")]
                arguments[current[0]] = match.group("text").strip()
                continue
        for name in current:
            arguments[name] = f"{arguments[name]} {stripped}".strip()
    summary = "\n".join(summary_lines).strip()
    # a parameter listed without a description ("city : str" alone) has none: not an empty one
    return summary, {name: text for name, text in arguments.items() if text}


def _is_typed_dict(annotation: Any) -> bool:
    """True for a ``TypedDict`` class from ``typing`` or from ``typing_extensions``.

    ``typing.is_typeddict`` misses ``typing_extensions.TypedDict`` classes before Python 3.13 (the kind
    pydantic asks for before 3.12); both kinds are dict subclasses with these attributes.
    """
    if typing.is_typeddict(annotation):
        return True
    return (
        isinstance(annotation, type)
        and issubclass(annotation, dict)
        and all(hasattr(annotation, name) for name in ("__required_keys__", "__optional_keys__", "__total__"))
    )


def _is_mapping_annotation(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any or _is_typed_dict(annotation):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_mapping_annotation(typing.get_args(annotation)[0])
    target = origin if origin is not None else annotation
    return isinstance(target, type) and target in _MAPPING_ORIGINS


def _caller_namespace(max_frames: int = 12) -> dict[str, Any]:
    """Locals of the frames that led here, innermost first wins (like pydantic's parent namespace).

    Lets ``from __future__ import annotations`` hints name classes defined in the function that
    defines the tool.
    """
    namespace: dict[str, Any] = {}
    frame: types.FrameType | None = sys._getframe(2)
    frames: list[types.FrameType] = []
    while frame is not None and len(frames) < max_frames:
        frames.append(frame)
        frame = frame.f_back
    for outer in reversed(frames):
        namespace.update(outer.f_locals)
    return namespace


def _working_function(function: Any) -> Any:
    """The callable doing ``function``'s work: a partial's function, the function an object wraps.

    An object made by ``functools.update_wrapper`` (a decorator written as a class) has the signature of
    the function it wraps: its hints and documentation are that function's too.
    """
    target = function
    for _ in range(64):  # (a bound: a ``__wrapped__`` cycle)
        if isinstance(target, functools.partial):
            target = target.func
        elif not (inspect.isfunction(target) or inspect.ismethod(target)) and hasattr(target, "__wrapped__"):
            target = target.__wrapped__
        else:
            break
    return target


def _resolve_hints(function: Any, tool_name: str) -> dict[str, Any]:
    target = _working_function(function)  # hints live on the wrapped function
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(target, "__call__", target)  # noqa: B004
    try:
        return typing.get_type_hints(target, include_extras=True)
    except NameError:
        pass
    except Exception as error:
        raise _unresolved(function, tool_name, error) from None
    owner = _hint_owner(target)
    try:  # a hint naming a class local to the caller (string annotations)
        hints = typing.get_type_hints(target, localns=_caller_namespace(), include_extras=True)
    except Exception as error:  # NameError for hints that only exist under TYPE_CHECKING, ...
        known = _LOCAL_HINTS.get(owner) if owner is not None else None
        if known is not None:  # resolved where the function was decorated (registered bound, wrapped)
            return dict(known)
        raise _unresolved(function, tool_name, error) from None
    if owner is not None:
        _LOCAL_HINTS[owner] = hints
    return hints


_LOCAL_HINTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
"""Hints resolved with a caller's local names, by function: ``@tool`` on a method resolves them where the
class is defined; registering the bound method (or a ``functools.wraps`` wrapper) elsewhere reuses them."""


def _hint_owner(target: Any) -> Any:
    """The plain function whose annotations ``target`` has (a bound method's, a wrapper's innermost)."""
    if inspect.ismethod(target):
        target = target.__func__
    try:
        target = inspect.unwrap(target) if inspect.isfunction(target) else target
    except ValueError:  # a cycle of __wrapped__
        return None
    return target if inspect.isfunction(target) else None


def _unresolved(function: Any, tool_name: str, error: Exception) -> ToolRegistrationError:
    return ToolRegistrationError(
        "function",
        function,
        "type hints that resolve at registration time",
        detail=f"tool {tool_name!r}: {type(error).__name__}: {error}",
    )


_DATA_KEYWORDS = frozenset({"default", "examples", "example", "const", "enum", "discriminator"})
"""Schema keywords whose value is data (or, for ``discriminator``, names), copied as they are."""
_SCHEMA_MAP_KEYWORDS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
"""Schema keywords mapping names (which may be ``title``) to schemas."""


def _clean_schema(schema: Any) -> Any:
    """Drop pydantic's ``title`` keywords (model tokens spent for nothing), and keywords JSON cannot write.

    A tuple's ``prefixItems`` get an ``items`` beside them: OpenAI refuses an array schema without it.

    Only the keyword is dropped: property names and data (``default``, ``examples``, ``const``, ``enum``
    values) are kept as they are, ``title`` keys included. A keyword whose value holds NaN or an infinity
    (``radius: float = math.inf``'s default, ``Field(le=math.inf)``) is dropped too: providers get strict
    JSON, which has no such numbers (the argument model still applies the default and the bound).
    """
    if isinstance(schema, list):
        return [_clean_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    cleaned: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _DATA_KEYWORDS:
            if _finite(value):
                cleaned[key] = value
        elif isinstance(value, float) and not math.isfinite(value):  # a bound: ``maximum: inf``
            continue
        elif key in _SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            cleaned[key] = {name: _clean_schema(item) for name, item in value.items()}
        else:
            cleaned[key] = _clean_schema(value)
    prefix = cleaned.get("prefixItems")
    if isinstance(prefix, list) and prefix and "items" not in cleaned:
        # a tuple: OpenAI refuses an array schema without ``items`` ("array schema missing items"); with
        # ``maxItems`` the length of the prefix (as pydantic writes a tuple) it changes nothing in 2020-12
        members = list({json.dumps(item, sort_keys=True, default=repr): item for item in prefix}.values())
        cleaned["items"] = members[0] if len(members) == 1 else {"anyOf": members}
    return cleaned


@contextlib.contextmanager
def _quiet_pydantic() -> collections.abc.Iterator[None]:
    """Silence what pydantic warns about the arguments model, which is ours, not the user's.

    A parameter named ``schema``, ``json``, ``copy`` or ``dict`` "shadows" a ``BaseModel`` attribute (the
    model works: arguments are read from its fields), and a default that is not JSON is left out of the
    schema. Under ``-W error`` such warnings refused the tool.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Field name .* shadows an attribute", category=UserWarning)
        warnings.filterwarnings("ignore", category=PydanticJsonSchemaWarning)
        yield


def _finite(value: Any) -> bool:
    """False for a float that is NaN or infinite, or for data holding one (JSON cannot write them)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


def _refuse_generator(function: Any, tool_name: str) -> None:
    """Refuse a generator or async generator function: a tool returns one result, it does not yield."""
    target = function
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(target, "__call__", target)  # noqa: B004
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        kind = "an async generator" if inspect.isasyncgenfunction(target) else "a generator"
        raise ToolRegistrationError(
            "function",
            function,
            "a function that returns its result (sync or async), not one that yields",
            detail=f"tool {tool_name!r} is {kind} function; collect what it yields and return that",
        )


def _documentation(function: Any) -> tuple[str, dict[str, str]]:
    """The description and parameter descriptions of the docstring of the function doing the work.

    A ``functools.partial``'s own docstring is ``functools.partial``'s: its function's is read. A callable
    object's class docstring is completed by its ``__call__``'s: the parameters ``__call__`` documents are
    the tool's (the class's ``Args:`` often document the constructor's), else the class's. An object
    wrapping a function (``functools.update_wrapper``: a decorator written as a class) is that function's.
    """
    target = _working_function(function)
    summary, arguments = parse_docstring(inspect.getdoc(target))
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = getattr(type(target), "__call__", None)  # noqa: B004
        if inspect.isfunction(call):
            call_summary, call_arguments = parse_docstring(_class_call_doc(type(target)))
            summary = summary or call_summary
            arguments = call_arguments or arguments
    return summary, arguments


def _class_call_doc(cls: type) -> str | None:
    """The docstring of ``cls``'s ``__call__``, or of the one it overrides in a base class.

    ``inspect.getdoc`` looks the method up on ``object`` too, where ``__call__`` is the type's ("Call self
    as a function."): an undocumented callable object was described to the model by that text.
    """
    for klass in cls.__mro__:
        if klass is object:
            break
        doc = getattr(vars(klass).get("__call__"), "__doc__", None)
        if isinstance(doc, str) and doc.strip():
            return inspect.cleandoc(doc)
    return None


def _partial_keywords(function: Any) -> set[str]:
    """The keyword arguments ``function`` binds, when it is a ``functools.partial`` (of partials)."""
    names: set[str] = set()
    while isinstance(function, functools.partial):
        names.update(function.keywords)
        function = function.func
    return names


def analyse_function(function: Any, tool_name: str) -> FunctionAnalysis:
    """Analyse a tool function: calling convention, sync or async, argument model and JSON schema.

    Raises:
        ToolRegistrationError: the function has ``*args``/``**kwargs`` or positional-only parameters,
            type hints that cannot be resolved or turned into a schema, or is a (sync or async) generator.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as error:
        raise ToolRegistrationError(
            "function", function, "a callable with an inspectable signature", detail=str(error)
        ) from None
    _refuse_generator(function, tool_name)
    is_async = is_async_callable(function)
    summary, argument_docs = _documentation(function)
    # the keywords a functools.partial binds are the application's (a user id, a connection), not the
    # model's: as ``self`` of a bound method, they are neither in the schema nor accepted in a call
    bound = _partial_keywords(function)
    parameters = [parameter for parameter in signature.parameters.values() if parameter.name not in bound]
    hints = _resolve_hints(function, tool_name)

    if (
        len(parameters) == 1
        and parameters[0].name == "parameters"
        and parameters[0].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)
        and _is_mapping_annotation(hints.get("parameters", inspect.Parameter.empty))
    ):
        annotation = hints.get("parameters", inspect.Parameter.empty)
        schema, checked = _parameters_dict_schema(annotation, argument_docs, tool_name)
        return FunctionAnalysis("parameters", is_async, None, schema, checked, summary)

    fields: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.POSITIONAL_ONLY,
        ):
            raise ToolRegistrationError(
                f"function.{parameter.name}",
                str(parameter),
                "named parameters that can be passed by keyword (no *args, **kwargs or positional-only); "
                "or the single `parameters` dict convention",
                detail=f"tool {tool_name!r}",
            )
        if parameter.name in _RESERVED_FIELD_NAMES:
            raise ToolRegistrationError(
                f"function.{parameter.name}",
                str(parameter),
                "parameter names other than " + ", ".join(sorted(_RESERVED_FIELD_NAMES)),
                detail=f"tool {tool_name!r}: pydantic reads this name as the model's own setting, so the "
                "parameter would vanish from the schema",
            )
        annotation = hints.get(parameter.name, Any)
        default_value = (
            parameter.default.default if isinstance(parameter.default, FieldInfo) else parameter.default
        )
        if default_value is None and not _admits_none(annotation):
            # ``x: int = None``: None is the function's own default, so null is one of its values (PEP 484's
            # implicit Optional); the schema says so (integer or null) and a model's null validates
            annotation = _nullable(annotation)
        description = argument_docs.get(parameter.name)
        if description is None:
            description = _annotated_description(annotation)
        if isinstance(parameter.default, FieldInfo):
            # pydantic's validate_call idiom, ``n: int = Field(3, ge=1)``: the FieldInfo is the field (its
            # default, constraints and description); the docstring's description fills in a missing one
            if description is not None:
                annotation = typing.Annotated[annotation, Field(description=description)]
            fields[parameter.name] = (annotation, parameter.default)
            continue
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        field_info = Field(default) if description is None else Field(default, description=description)
        fields[parameter.name] = (annotation, field_info)
    model_name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", tool_name) if part)
    try:
        with _quiet_pydantic():
            model = create_model(
                f"{model_name or 'Tool'}Arguments",
                __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                **fields,
            )
            schema = _clean_schema(model.model_json_schema())
    except Exception as error:  # pydantic cannot build a schema for some annotation
        raise ToolRegistrationError(
            "function",
            function,
            "parameters whose type hints pydantic can validate and describe in JSON schema",
            detail=f"tool {tool_name!r}: {error}",
        ) from None
    schema.setdefault("properties", {})
    schema.setdefault("type", "object")
    typed_model: type[BaseModel] = model
    return FunctionAnalysis("typed", is_async, typed_model, schema, False, summary)


def _admits_none(annotation: Any, depth: int = 0) -> bool:
    """Whether ``annotation`` takes None: ``Any``, ``object``, ``None``, ``X | None``, ``Literal[..., None]``.

    Also through ``Annotated`` and type aliases (``type MaybeInt = int | None``); a type variable is
    taken as pydantic takes an unbound one (anything, None included).
    """
    if depth > 16:  # (a bound: an alias naming itself)
        return True
    if annotation in (Any, object, None, type(None)) or isinstance(annotation, typing.TypeVar):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_none(typing.get_args(annotation)[0], depth + 1)
    if origin in (typing.Union, types.UnionType):
        return any(_admits_none(member, depth + 1) for member in typing.get_args(annotation))
    if origin is Literal:
        return None in typing.get_args(annotation)
    value = getattr(annotation, "__value__", None)  # a ``type X = ...`` alias (Python 3.12)
    if value is not None and type(annotation).__name__ == "TypeAliasType":
        return _admits_none(value, depth + 1)
    return False


def _nullable(annotation: Any) -> Any:
    """``annotation | None``, an ``Annotated``'s metadata kept outside (``Field(ge=1)`` bounds the value)."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        return typing.Annotated[(typing.Optional[inner], *metadata)]  # noqa: UP045
    return typing.Optional[annotation]  # noqa: UP045


def _annotated_description(annotation: Any) -> str | None:
    """The plain string in ``Annotated[int, "Width in pixels"]``, or None.

    That is how LangChain and FastMCP describe a parameter; pydantic ignores it. A ``Field`` there with a
    description of its own wins.
    """
    if typing.get_origin(annotation) is not typing.Annotated:
        return None
    metadata = typing.get_args(annotation)[1:]
    if any(isinstance(item, FieldInfo) and item.description for item in metadata):
        return None
    return next((item for item in metadata if isinstance(item, str) and item.strip()), None)


def _parameters_dict_schema(
    annotation: Any, argument_docs: dict[str, str], tool_name: str
) -> tuple[dict[str, Any], bool]:
    """The schema of a parameters-dict tool: from a TypedDict, a mapping's value type or the docstring.

    Returns the schema and whether it is typed (worth checking calls against).
    """
    inner = annotation
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    description = argument_docs.get("parameters")
    if _is_typed_dict(inner):
        schema = _typed_dict_schema(inner, tool_name, argument_docs)
    else:
        arguments = typing.get_args(inner)
        value_type = arguments[1] if len(arguments) == 2 else Any
        if value_type is not Any:
            value_schema = _adapter_schema(value_type, tool_name)
            schema = {"type": "object", "properties": {}, "additionalProperties": value_schema}
            # "#/$defs/..." references resolve from the document root: the definitions must live there
            definitions = value_schema.pop("$defs", None)
            if definitions:
                schema["$defs"] = definitions
        else:
            documented = {name: text for name, text in argument_docs.items() if name != "parameters"}
            schema = dict(_OPEN_OBJECT_SCHEMA)
            schema["properties"] = {name: {"description": text} for name, text in documented.items()}
            if description:
                schema["description"] = description
            return schema, False
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    if description:
        schema.setdefault("description", description)
    return schema, True


def _typed_dict_hints(typed_dict: Any, tool_name: str) -> dict[str, Any]:
    """A TypedDict's type hints, with their ``Annotated`` metadata.

    A TypedDict defined in a function, whose string annotations (``from __future__ import annotations``)
    name other classes of that function, resolves with the caller's local names (as the tool function's
    own hints do), kept for a later registration made elsewhere.
    """
    try:
        return typing.get_type_hints(typed_dict, include_extras=True)
    except NameError:
        pass
    except Exception as error:
        raise _unresolved_typed_dict(typed_dict, tool_name, error) from None
    try:
        hints = typing.get_type_hints(typed_dict, localns=_caller_namespace(), include_extras=True)
    except Exception as error:
        known = _LOCAL_HINTS.get(typed_dict)
        if known is not None:
            return dict(known)
        raise _unresolved_typed_dict(typed_dict, tool_name, error) from None
    with contextlib.suppress(TypeError):  # a class that cannot be weakly referenced: not kept
        _LOCAL_HINTS[typed_dict] = hints
    return hints


def _is_key_qualifier(hint: Any) -> bool:
    """Whether ``hint`` is ``Required[...]``, ``NotRequired[...]`` or ``ReadOnly[...]``."""
    origin = typing.get_origin(hint)
    if origin is typing.Required or origin is typing.NotRequired:
        return True
    return getattr(origin, "_name", None) == "ReadOnly"


def _unresolved_typed_dict(typed_dict: Any, tool_name: str, error: Exception) -> ToolRegistrationError:
    return ToolRegistrationError(
        "function.parameters",
        typed_dict,
        "a TypedDict whose type hints can be resolved",
        detail=f"tool {tool_name!r}: {error}",
    )


def _typed_dict_schema(
    typed_dict: Any, tool_name: str, argument_docs: dict[str, str] | None = None
) -> dict[str, Any]:
    """A TypedDict's JSON schema, built field by field (pydantic refuses ``typing.TypedDict`` before 3.12).

    A key's ``Annotated`` metadata is kept (``Field(description=..., ge=1)``, or a plain string describing
    it); a key without a description takes the one the docstring's ``Args:`` section gives it.
    """
    extras = _typed_dict_hints(typed_dict, tool_name)
    # from the resolved hints: __required_keys__ misses NotRequired[...] written as a string annotation
    total = bool(getattr(typed_dict, "__total__", True))
    required = set()
    fields: dict[str, Any] = {}
    descriptions: dict[str, str] = {}
    for name, hint in extras.items():
        marker = None
        metadata: tuple[Any, ...] = ()
        while True:  # Required[...], NotRequired[...] and ReadOnly[...] qualify the key, not its value
            origin = typing.get_origin(hint)
            if origin is typing.Annotated and _is_key_qualifier(hint.__origin__):
                # Annotated[NotRequired[int], ...]: PEP 655 allows either order; the metadata is the value's
                metadata += hint.__metadata__
                hint = hint.__origin__
                continue
            if origin is typing.Required or origin is typing.NotRequired:
                marker = origin
            elif not _is_key_qualifier(hint):
                break
            hint = typing.get_args(hint)[0]
        if metadata:
            hint = typing.Annotated[(hint, *metadata)]
        if marker is typing.Required or (total and marker is not typing.NotRequired):
            required.add(name)
        fields[name] = (hint, ... if name in required else None)
        description = (argument_docs or {}).get(name) or _annotated_description(hint)
        if description:
            descriptions[name] = description
    # a TypedDict is closed: its keys are all there are (as OpenAI's strict mode says of it), unless it
    # says otherwise (PEP 728: ``closed=False``, or ``extra_items=`` the type of the others; pydantic's
    # ``with_config(ConfigDict(extra="allow"))``)
    extra_items = getattr(typed_dict, "__extra_items__", None)
    if repr(extra_items).endswith("NoExtraItems"):  # the sentinel (typing_extensions', or typing's later)
        extra_items = None
    config = getattr(typed_dict, "__pydantic_config__", None)
    is_open = getattr(typed_dict, "__closed__", None) is False or (
        isinstance(config, dict) and config.get("extra") == "allow"
    )
    try:
        with _quiet_pydantic():
            model = create_model(
                f"{typed_dict.__name__}Schema",
                __config__=ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
                **fields,
            )
            schema: dict[str, Any] = _clean_schema(model.model_json_schema())
    except Exception as error:
        raise ToolRegistrationError(
            "function.parameters",
            typed_dict,
            "a TypedDict whose fields pydantic can describe in JSON schema",
            detail=f"tool {tool_name!r}: {error}",
        ) from None
    for name, field_schema in schema.get("properties", {}).items():
        if not isinstance(field_schema, dict):
            continue
        if name not in required:
            field_schema.pop("default", None)  # a key that may be left out, not a key that may be null
        if name in descriptions:
            field_schema.setdefault("description", descriptions[name])
    if is_open:
        schema.pop("additionalProperties", None)
    elif extra_items is not None:
        extra_schema = _adapter_schema(extra_items, tool_name)
        definitions = extra_schema.pop("$defs", None)
        if definitions:
            schema.setdefault("$defs", {}).update(definitions)
        schema["additionalProperties"] = extra_schema
    return schema


def _adapter_schema(annotation: Any, tool_name: str) -> dict[str, Any]:
    try:
        schema = _clean_schema(TypeAdapter(annotation).json_schema())
    except Exception as error:  # pydantic cannot describe the annotation
        raise ToolRegistrationError(
            "function.parameters",
            annotation,
            "a mapping or TypedDict type pydantic can describe in JSON schema",
            detail=f"tool {tool_name!r}: {error}",
        ) from None
    if not isinstance(schema, dict):  # pragma: no cover - pydantic always returns an object here
        return {}
    return schema


def _nested_keys(model: type[BaseModel] | None, location: tuple[int | str, ...]) -> list[str]:
    """The keys of the object at ``location`` inside ``model``'s arguments, or [] when its type is unknown."""
    annotation: Any = model
    for part in location:
        annotation = _unwrap_optional(annotation)
        origin = typing.get_origin(annotation)
        arguments = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):  # the part is the tag of the member that failed
            members = [member for member in arguments if getattr(member, "__name__", None) == part]
            if len(members) != 1:
                return []
            annotation = members[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif _is_typed_dict(annotation) or (
            isinstance(annotation, type) and dataclasses.is_dataclass(annotation)
        ):
            annotation = typing.get_type_hints(annotation).get(str(part))
        elif (
            isinstance(part, int) and origin in (list, set, frozenset, collections.abc.Sequence) and arguments
        ):
            annotation = arguments[0]
        elif isinstance(part, int) and origin is tuple and arguments:
            annotation = (
                arguments[0] if arguments[-1] is Ellipsis else arguments[min(part, len(arguments) - 1)]
            )
        elif origin in _MAPPING_ORIGINS and len(arguments) == 2:
            annotation = arguments[1]
        else:
            return []
    annotation = _unwrap_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return [item.name for item in dataclasses.fields(annotation) if item.init]
    if _is_typed_dict(annotation):
        return list(typing.get_type_hints(annotation))
    return []


def _unwrap_optional(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` as ``X`` (other unions stay: which member failed is unknown)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [member for member in typing.get_args(annotation) if member is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def describe_argument(value: Any) -> str:
    """A value a model sent, as JSON writes it, for an error message: ``null``, ``true``, ``{"a": 1}``.

    A model sent JSON: ``got None`` or ``got {'a': 1}`` would speak of Python values it never wrote.
    Strings and numbers are shown as :func:`describe_value` shows them (``'many'``, ``3.5``), and so is a
    value JSON has no form for (an object a Python caller passed). Long values are cut.
    """
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):  # not JSON (a cycle, an object, NaN)
            return describe_value(value)
        if len(text) > _MAX_REPR:
            text = f"{text[: _MAX_REPR - 20]}...<{len(text)} chars>"
        return text
    return describe_value(value)


_JSON_EXPECTED = {
    "dict_type": "an object",
    "mapping_type": "an object",
    "ordered_dict_type": "an object",
    "frozen_dict_type": "an object",
    "counter_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "frozen_set_type": "an array",
    "deque_type": "an array",
    "named_tuple_type": "an array",
    "none_required": "null",
    # 1e300 (a float past 64 bits, though 10**300 in digits is taken) or a string of over 4300 digits
    "int_parsing_size": "an integer written out in digits (at most 4300)",
}
"""What pydantic's errors of these types expect, in JSON terms (it says "a valid dictionary", "a valid
list", "None", "a dictionary or an instance of Point": Python's words, and a class the model never saw;
for ``1e300`` where an integer is expected, "Unable to parse input string as an integer, exceeded maximum
size", though the input was no string)."""


_UNEXPECTED_KEY_ERRORS = frozenset({"extra_forbidden", "unexpected_keyword_argument"})
"""Pydantic's error types for a key that is not allowed (the second for a dataclass's fields)."""


def describe_validation_error(
    error: ValidationError,
    tool_name: str,
    allowed_fields: collections.abc.Iterable[str] = (),
    *,
    sensitive_arguments: collections.abc.Iterable[str] = (),
    arguments_model: type[BaseModel] | None = None,
    arguments: collections.abc.Mapping[str, Any] | None = None,
) -> str:
    """Turn pydantic's errors into one message a model can act on: field, value given, what is expected.

    Given the ``arguments`` that were validated, locations are paths in them (pydantic's union member
    tags left out), and what the members of a union expect of one value is said once, joined by "or".

    The value given is never quoted for a problem inside one of ``sensitive_arguments`` (``[REDACTED]``
    stands in for it): pydantic reports the failing *part* of a value (``credentials.password``), which a
    search for the whole value would not find. An unknown argument is answered with ``allowed_fields`` (the
    tool's arguments; "allowed no arguments" when it takes none), an unknown key inside a nested object
    with that object's keys, found from ``arguments_model`` (nothing is said about allowed keys when they
    are not known).
    """
    model_fields = list(allowed_fields)
    sensitive = frozenset(sensitive_arguments)
    parts: dict[str, list[str]] = {}  # a problem's text up to "expected" -> what is expected there
    for item in error.errors(include_url=False):
        loc = item.get("loc", ())
        kind = item.get("type", "")
        path = _json_path(loc, arguments, kind) if arguments is not None else loc
        location = ".".join(str(part) for part in path) or "arguments"
        if kind == "missing":
            parts.setdefault(f"{location}: missing; a value is required", [])
        elif kind in _UNEXPECTED_KEY_ERRORS:
            if len(loc) <= 1:  # the tool's arguments (``allowed_fields``), maybe none
                allowed = "; allowed " + (", ".join(model_fields) or "no arguments")
            else:  # a key inside a nested object: the keys of that object, when its type says them
                try:
                    names = _nested_keys(arguments_model, loc[:-1])
                except Exception:  # a hint that only resolved where the tool was defined: say nothing
                    names = []
                allowed = f"; allowed {', '.join(names)}" if names else ""
            unexpected = f"{location}: unexpected {'argument' if len(loc) <= 1 else 'key'}{allowed}"
            parts.setdefault(unexpected, [])
        else:
            expected = _JSON_EXPECTED.get(kind) or str(item.get("msg", "a valid value"))
            expected = expected.removeprefix("Input should be ").removeprefix("Value error, ")
            context = item.get("ctx") or {}
            if kind == "union_tag_invalid" and "expected_tags" in context:  # a discriminated union
                expected = f"an object whose {context['discriminator']} is one of {context['expected_tags']}"
            elif kind == "union_tag_not_found" and "discriminator" in context:
                expected = f"an object with a {context['discriminator']} key"
            given = REDACTED if loc and loc[0] in sensitive else describe_argument(item.get("input"))
            # the members of a union each say what they expect of the same value: one "or" list
            options = parts.setdefault(f"{location}: got {given}; expected ", [])
            if expected not in options:
                options.append(expected)
    problems = [problem + " or ".join(options) for problem, options in parts.items()]
    return f"invalid arguments for tool {tool_name!r}: " + "; ".join(problems)


_JSON_VALUES = (collections.abc.Mapping, list, tuple, str, int, float, type(None))
"""Values a location can be followed through: other objects (a model a Python caller passed) are not."""


def _json_path(loc: tuple[int | str, ...], arguments: Any, kind: str) -> list[int | str]:
    """``loc`` as a path in the arguments the model sent: without pydantic's union member tags.

    Pydantic puts the member of a union in the location of its errors (``shape.Circle.radius``,
    ``limit.int``, a tagged union's tag): a model would read it as a key to nest its value under. A part
    that names no key (no index) of the value sent there is such a tag, unless it is the key an error
    about a missing or unexpected key names.
    """
    path: list[int | str] = []
    value: Any = arguments
    known = True  # whether ``value`` is the part of the arguments at ``path``
    last = len(loc) - 1
    for index, part in enumerate(loc):
        if known:
            if isinstance(value, collections.abc.Mapping):
                found = part in value
            else:
                found = isinstance(part, int) and isinstance(value, list | tuple) and 0 <= part < len(value)
            if found:
                value = value[part]
            elif isinstance(part, str) and part != "[key]" and isinstance(value, _JSON_VALUES):
                if index == last and (kind == "missing" or kind in _UNEXPECTED_KEY_ERRORS):
                    path.append(part)
                continue  # a union member's tag
            else:
                known = False
        path.append(part)
    return path


def check_declared_schema(schema: dict[str, Any]) -> None:
    """Check a declared ``parameters_schema`` at registration, so a malformed one fails there, not later.

    The schema must be plain JSON (providers get it as is), and the keywords the light argument check
    (:func:`check_arguments_against_schema`) reads must have their JSON Schema shapes: ``properties`` an
    object of schemas, ``required`` a list of property names, ``additionalProperties`` a boolean or a schema,
    each property's ``type`` a JSON type name or a list of them and its ``enum`` a list.

    Raises:
        ToolRegistrationError: the schema breaks one of these rules (the field says where).
    """
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise ToolRegistrationError(
            "parameters_schema", schema, "a JSON schema made of JSON values only", detail=str(error)
        ) from None
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(
        isinstance(item, dict | bool) for item in properties.values()
    ):
        raise ToolRegistrationError(
            "parameters_schema.properties", properties, "an object mapping each argument name to its schema"
        )
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(
        isinstance(name, str) and name in properties for name in required
    ):
        raise ToolRegistrationError(
            "parameters_schema.required",
            required,
            "a list of property names (" + (", ".join(properties) or "no properties declared") + ")",
        )
    if not isinstance(schema.get("additionalProperties", True), dict | bool):
        raise ToolRegistrationError(
            "parameters_schema.additionalProperties",
            schema["additionalProperties"],
            "true, false or the schema of the other arguments",
        )
    located = [(f"parameters_schema.properties.{name}", item) for name, item in properties.items()]
    located.append(("parameters_schema.additionalProperties", schema.get("additionalProperties")))
    for location, declared in located:
        if not isinstance(declared, dict):
            continue
        if "type" in declared:
            kind = declared["type"]
            kinds = kind if isinstance(kind, list) else [kind]
            if not kinds or not all(isinstance(option, str) and option in _JSON_TYPES for option in kinds):
                allowed = "a JSON type name or a list of them (" + ", ".join(_JSON_TYPES) + ")"
                raise ToolRegistrationError(f"{location}.type", kind, allowed)
        if "enum" in declared and not isinstance(declared["enum"], list):
            raise ToolRegistrationError(f"{location}.enum", declared["enum"], "a list of the allowed values")


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


def _matches_type(value: Any, expected: str) -> bool:
    kinds = _JSON_TYPES.get(expected)
    if kinds is None:
        return True  # a type this light check does not know: accept
    if isinstance(value, bool) and expected in ("integer", "number"):
        return False
    if expected == "integer" and isinstance(value, float):
        return value.is_integer()  # JSON Schema counts 3.0 as an integer, as pydantic does
    return isinstance(value, kinds)


def _json_equal(value: Any, option: Any) -> bool:
    """Equality as JSON Schema's ``enum`` means it: ``true`` is not ``1``, ``1.0`` is ``1``."""
    if isinstance(value, bool) or isinstance(option, bool):
        return isinstance(value, bool) and isinstance(option, bool) and value == option
    if isinstance(value, int | float) and isinstance(option, int | float):
        return value == option
    if isinstance(value, dict) and isinstance(option, dict):
        return value.keys() == option.keys() and all(_json_equal(value[key], option[key]) for key in value)
    if isinstance(value, list | tuple) and isinstance(option, list | tuple):
        return len(value) == len(option) and all(map(_json_equal, value, option))
    return bool(value == option)


def check_arguments_against_schema(
    arguments: dict[str, Any],
    schema: dict[str, Any],
    *,
    sensitive_arguments: collections.abc.Iterable[str] = (),
) -> list[str]:
    """Check a parameters-dict tool's arguments against its declared schema (top level only).

    This light check covers what models most often get wrong: ``required`` properties, the JSON ``type``
    of each declared property (and of the others, when ``additionalProperties`` is a schema), ``enum``
    values and ``additionalProperties: false``, with JSON Schema's rules (``3.0`` is an integer; ``true``
    is not ``1``, so it does not pass an enum of numbers). A property's local ``$ref`` is followed (an
    ``Enum``, a nested ``TypedDict``: its type), and ``anyOf``/``oneOf`` pass when one member does
    (``int | None``). What is inside objects and arrays is not checked; validate inside the tool if you need
    more.

    The values of ``sensitive_arguments`` are never quoted (``[REDACTED]`` stands in for them).

    Returns:
        One message per problem, empty when the arguments pass.
    """
    sensitive = frozenset(sensitive_arguments)
    problems: list[str] = []
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for name in schema.get("required") or ():
        if name not in arguments:
            problems.append(f"{name}: missing; a value is required")
    if schema.get("additionalProperties") is False:
        for name in arguments:
            if name not in properties:
                allowed = ", ".join(properties) or "no arguments"
                problems.append(f"{name}: unexpected argument; allowed {allowed}")
    definitions = schema.get("$defs")
    for name, value in arguments.items():
        declared = properties.get(name, extra if name not in properties else None)
        if not isinstance(declared, dict):
            continue
        expected = _expected_of(value, declared, definitions)
        if expected is not None:
            given = REDACTED if name in sensitive else describe_argument(value)
            problems.append(f"{name}: got {given}; expected {expected}")
    return problems


def _expected_of(value: Any, declared: Any, definitions: Any, depth: int = 0) -> str | None:
    """None when ``value`` passes ``declared``'s ``type`` and ``enum``, else what is expected.

    A local ``$ref`` (``#/$defs/Name``: an ``Enum``, a nested ``TypedDict``) is followed, and a value
    passes an ``anyOf`` or ``oneOf`` when it passes one of its members (``int | None``).
    """
    while isinstance(declared, dict) and isinstance(declared.get("$ref"), str) and depth < 16:
        reference = declared["$ref"]
        if not (reference.startswith("#/$defs/") and isinstance(definitions, dict)):
            return None  # a reference this light check does not follow: accept
        declared = definitions.get(reference.removeprefix("#/$defs/"))
        depth += 1
    if not isinstance(declared, dict):
        return None
    kind = declared.get("type")
    if kind is not None:
        options = kind if isinstance(kind, list) else [kind]
        if not any(_matches_type(value, option) for option in options):
            return " or ".join(options)
    allowed = declared.get("enum")
    if isinstance(allowed, list) and not any(_json_equal(value, option) for option in allowed):
        return "one of " + ", ".join(describe_argument(option) for option in allowed)
    members = declared.get("anyOf") or declared.get("oneOf")
    if isinstance(members, list) and members and depth < 16:
        expected: list[str] = []
        for member in members:
            found = _expected_of(value, member, definitions, depth + 1)
            if found is None:
                return None
            expected.append(found)
        return " or ".join(dict.fromkeys(expected))
    return None
