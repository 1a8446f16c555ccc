"""Tool definitions: :func:`tool`, :class:`ToolDefinition`, :class:`ToolCategory`, :class:`ToolPermission`.

``@tool(...)`` validates its options, analyses the function once (calling convention, argument model,
JSON schema) and attaches the resulting :class:`ToolDefinition` as ``fn.__tool_definition__``. The function
itself is returned unchanged and stays callable as before; decorating registers nothing (a
:class:`~context_manager.core.tool_system.manager.ToolManager` does)::

    @tool(name="word_count", category=ToolCategory.ANALYSIS, cacheable=True)
    async def word_count(text: str) -> int:
        '''Count the words of a text (Google-style ``Args:`` give parameter descriptions).'''
        return len(text.split())
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, overload

from pydantic import AliasChoices, AliasPath, BaseModel
from pydantic.fields import FieldInfo

from context_manager.core.errors import ToolRegistrationError, describe_value
from context_manager.core.tool_system.schema import (
    REDACTED,
    CallingConvention,
    analyse_function,
    check_declared_schema,
)

__all__ = [
    "REDACTED",
    "TOOL_DEFINITION_ATTRIBUTE",
    "TOOL_NAME_PATTERN",
    "ToolCategory",
    "ToolDefinition",
    "ToolPermission",
    "get_tool_definition",
    "tool",
]

TOOL_DEFINITION_ATTRIBUTE = "__tool_definition__"
"""The attribute ``@tool`` sets on a function to its :class:`ToolDefinition`."""
TOOL_NAME_PATTERN = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
"""Tool names every provider accepts (OpenAI's rule; Anthropic's is the same); anchored with ``\\Z``,
since ``$`` also matches before a final newline."""
DEFAULT_RATE_WINDOW = 60.0
"""Seconds of the sliding rate-limit window when ``rate_window`` is not given."""
DEFAULT_CACHE_TTL = 300.0
"""Seconds a cached result stays valid when ``cache_ttl`` is not given."""
_SHORTEST_SCRUBBED = 4  # shorter values are not searched for in texts (they would blank ordinary words)

F = TypeVar("F", bound=Callable[..., Any])


class ToolCategory(StrEnum):
    """What kind of work a tool does; used to filter ``list_tools(category=...)``."""

    GENERAL = "general"
    ANALYSIS = "analysis"
    DATA_PROCESSING = "data_processing"
    TEXT = "text"
    SEARCH = "search"
    MEMORY = "memory"
    COMPUTATION = "computation"
    FILE_SYSTEM = "file_system"
    NETWORK = "network"
    SYSTEM = "system"
    CUSTOM = "custom"


class ToolPermission(StrEnum):
    """How much trust running a tool needs, from least to most (ordered by :attr:`level`).

    The manager's permission policy lets tools up to some level run freely (by default ``STANDARD``);
    tools above it need an approval callback to allow each call.
    """

    PUBLIC = "public"
    """Harmless, read-only work (counting words, formatting)."""
    STANDARD = "standard"
    """Ordinary tools; the default permission of a tool."""
    RESTRICTED = "restricted"
    """Tools with side effects or access to sensitive data; need approval under the default policy."""
    DANGEROUS = "dangerous"
    """Tools that can do irreversible damage (deleting data, running commands)."""

    @property
    def level(self) -> int:
        """Numeric order: public=0, standard=1, restricted=2, dangerous=3."""
        return _PERMISSION_LEVEL[self]


_PERMISSION_LEVEL = {
    ToolPermission.PUBLIC: 0,
    ToolPermission.STANDARD: 1,
    ToolPermission.RESTRICTED: 2,
    ToolPermission.DANGEROUS: 3,
}


def _parse_enum(enum_type: type[StrEnum], value: Any, field_name: str) -> Any:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value.strip().lower())
        except ValueError:
            pass
    allowed = "one of " + ", ".join(repr(member.value) for member in enum_type)
    raise ToolRegistrationError(field_name, value, allowed)


def _positive_number(value: Any, field_name: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        allowed = "a finite number > 0" + (" or None" if optional else "")
        raise ToolRegistrationError(field_name, value, allowed)
    return float(value)


def _positive_int(value: Any, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ToolRegistrationError(field_name, value, "an integer > 0 or None")
    return value


def derived_name(function: Any) -> str:
    """The tool name a callable gets when none is given: its ``__name__``.

    Raises:
        ToolRegistrationError: that name is missing or not one providers accept (a ``functools.partial``,
            a callable object or a lambda); the message says how to give one.
    """
    name = getattr(function, "__name__", "")
    if isinstance(name, str) and TOOL_NAME_PATTERN.fullmatch(name):
        return name
    raise ToolRegistrationError(
        "name",
        name if isinstance(name, str) else "",
        f"{_NAME_RULE}; the name comes from the function's __name__ when none is given",
        detail="pass a name: @tool(name=...) or register_function_tool(name, function)",
    )


_NAME_RULE = "1-64 characters from a-z, A-Z, 0-9, '_' and '-' (what providers accept)"


def _validate_name(name: Any) -> str:
    if not isinstance(name, str) or not TOOL_NAME_PATTERN.fullmatch(name):
        raise ToolRegistrationError("name", name, _NAME_RULE)
    return name


@dataclass(frozen=True, slots=True, eq=False)
class ToolDefinition:
    """Everything the manager needs to expose, check and run one tool. Validated on construction.

    Build one with :func:`tool` or ``ToolManager.register_function_tool``; ``dataclasses.replace`` makes a
    validated copy with other options.

    Raises:
        ToolRegistrationError: an option is invalid (the message says which, what was given and what is
            allowed).
    """

    name: str
    """The name models call the tool by (``^[a-zA-Z0-9_-]{1,64}$``)."""
    function: Callable[..., Any]
    """The function that does the work (async, or sync and then run in a worker thread)."""
    description: str = ""
    """What the tool does, for the model; defaults to the docstring's description."""
    category: ToolCategory = ToolCategory.GENERAL
    """What kind of work the tool does."""
    tags: tuple[str, ...] = ()
    """Free-form labels for ``list_tools(tags=...)``."""
    timeout: float | None = None
    """Seconds the tool may run; None means ``config.max_tool_timeout``, which also caps this value."""
    permission: ToolPermission = ToolPermission.STANDARD
    """How much trust running the tool needs (see the manager's permission policy)."""
    rate_limit: int | None = None
    """At most this many calls per sliding ``rate_window``; None means unlimited."""
    rate_window: float = DEFAULT_RATE_WINDOW
    """Length in seconds of the sliding window ``rate_limit`` counts in."""
    cacheable: bool = False
    """Whether successful results may be cached (only for tools without side effects)."""
    cache_ttl: float = DEFAULT_CACHE_TTL
    """Seconds a cached result stays valid."""
    max_output_tokens: int | None = None
    """Longer results are cut, with a marker, in the context window (the ToolResult keeps all)."""
    parameters_schema: dict[str, Any] = field(default_factory=dict)
    """The JSON schema of the arguments; generated from the signature when not given."""
    sensitive_arguments: tuple[str, ...] = ()
    """Arguments holding secrets (API keys, passwords): the tool gets their values, but the context window
    (hence memory and exports) shows ``[REDACTED]`` instead, and their values are cut out of error messages
    and of the result text put in the window. The ``ToolResult`` returned to the caller keeps the result."""
    max_abandoned_calls: int | None = None
    """The most calls of this tool left running after their caller stopped waiting (and, once it has ignored
    a cancellation, the most of its calls running at all) before new calls are refused as ``overloaded``;
    None means the manager's ``ToolManager(max_abandoned_calls=...)``."""
    convention: CallingConvention = field(default="typed", init=False)
    """How the function receives its arguments (derived from its signature)."""
    is_async: bool = field(default=True, init=False)
    """Whether the function is awaited on the loop (True) or run in a worker thread (False)."""
    arguments_model: type[BaseModel] | None = field(default=None, init=False, repr=False)
    """The pydantic model that validates typed arguments (None for the parameters-dict convention)."""
    schema_declared: bool = field(default=False, init=False, repr=False)
    """True when ``parameters_schema`` was given explicitly rather than generated."""
    schema_checked: bool = field(default=False, init=False, repr=False)
    """True when calls of a parameters-dict tool are checked against ``parameters_schema`` (declared, or
    generated from a ``TypedDict`` or typed mapping annotation)."""
    sensitive_keys: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    """Every key a sensitive argument's value may be found under: its name and, for a typed tool's argument
    with an alias, the alias too (a model's call holds the alias, the function gets the name)."""

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        _validate_name(self.name)
        if not callable(self.function):
            raise ToolRegistrationError("function", self.function, "a callable (function or method)")
        if not isinstance(self.description, str):
            raise ToolRegistrationError("description", self.description, "a str")
        set_field(self, "category", _parse_enum(ToolCategory, self.category, "category"))
        set_field(self, "permission", _parse_enum(ToolPermission, self.permission, "permission"))
        tags = self.tags
        if isinstance(tags, str) or not isinstance(tags, Iterable):
            raise ToolRegistrationError("tags", tags, "a list of non-empty strings")
        tags = tuple(tags)
        if not all(isinstance(tag, str) and tag for tag in tags):
            raise ToolRegistrationError("tags", tags, "a list of non-empty strings")
        set_field(self, "tags", tuple(dict.fromkeys(tags)))
        set_field(self, "timeout", _positive_number(self.timeout, "timeout", optional=True))
        set_field(self, "rate_limit", _positive_int(self.rate_limit, "rate_limit"))
        set_field(self, "rate_window", _positive_number(self.rate_window, "rate_window", optional=False))
        if not isinstance(self.cacheable, bool):
            raise ToolRegistrationError("cacheable", self.cacheable, "True or False")
        set_field(self, "cache_ttl", _positive_number(self.cache_ttl, "cache_ttl", optional=False))
        set_field(self, "max_output_tokens", _positive_int(self.max_output_tokens, "max_output_tokens"))
        set_field(self, "max_abandoned_calls", _positive_int(self.max_abandoned_calls, "max_abandoned_calls"))
        sensitive = self.sensitive_arguments
        if isinstance(sensitive, str) or not isinstance(sensitive, Iterable):
            raise ToolRegistrationError("sensitive_arguments", sensitive, "a list of argument names")
        sensitive = tuple(sensitive)
        if not all(isinstance(name, str) and name for name in sensitive):
            raise ToolRegistrationError("sensitive_arguments", sensitive, "a list of argument names")
        set_field(self, "sensitive_arguments", tuple(dict.fromkeys(sensitive)))
        declared = self.parameters_schema
        if declared is None:
            declared = {}
        if not isinstance(declared, dict) or (declared and declared.get("type", "object") != "object"):
            raise ToolRegistrationError(
                "parameters_schema",
                declared,
                "a JSON schema dict describing an object ({'type': 'object', ...})",
            )
        if declared:
            check_declared_schema(declared)
        analysis = analyse_function(self.function, self.name)
        if not self.description and analysis.summary:
            set_field(self, "description", analysis.summary)
        set_field(self, "convention", analysis.convention)
        set_field(self, "is_async", analysis.is_async)
        set_field(self, "arguments_model", analysis.arguments_model)
        set_field(self, "schema_declared", bool(declared))
        set_field(self, "schema_checked", bool(declared) or analysis.schema_checks_arguments)
        if declared:
            if analysis.arguments_model is not None:
                _check_declared_names(declared, analysis.parameters_schema)
            schema = dict(declared)
            schema.setdefault("type", "object")
            schema.setdefault("properties", {})
            set_field(self, "parameters_schema", schema)
        else:
            set_field(self, "parameters_schema", analysis.parameters_schema)
        self._check_sensitive_names()
        set_field(self, "sensitive_keys", self._find_sensitive_keys())

    def _find_sensitive_keys(self) -> frozenset[str]:
        names = set(self.sensitive_arguments)
        if names and self.arguments_model is not None:
            for field_name, info in self.arguments_model.model_fields.items():
                keys = {field_name, *_alias_names(info)}
                if keys & names:
                    names |= keys
        return frozenset(names)

    def _check_sensitive_names(self) -> None:
        """Refuse a sensitive argument the tool cannot receive: a misspelt name would protect nothing."""
        if not self.sensitive_arguments:
            return
        properties = self.parameters_schema.get("properties") or {}
        if self.arguments_model is not None:  # typed: its parameters (and the names models send, aliases)
            names = [
                *properties,
                *(name for name in self.arguments_model.model_fields if name not in properties),
            ]
        elif self.parameters_schema.get("additionalProperties") is False:  # a closed parameters dict
            names = list(properties)
        else:  # any key may arrive
            return
        for name in self.sensitive_arguments:
            if name not in names:
                allowed = "names of the tool's arguments: " + (", ".join(names) or "it takes none")
                raise ToolRegistrationError("sensitive_arguments", name, allowed)

    def with_options(self, **options: Any) -> ToolDefinition:
        """Return a validated copy with some options changed (``name``, ``description``, ``timeout`` ...).

        Raises:
            ToolRegistrationError: an option is unknown or invalid.
        """
        allowed = {f.name for f in dataclasses.fields(self) if f.init}
        for key in options:
            if key not in allowed:
                raise ToolRegistrationError(
                    "options", key, "one of " + ", ".join(sorted(allowed)), detail="unknown tool option"
                )
        if "parameters_schema" not in options and self.schema_declared:
            options["parameters_schema"] = self.parameters_schema
        elif "parameters_schema" not in options:
            options["parameters_schema"] = {}
        return dataclasses.replace(self, **options)

    def options(self) -> dict[str, Any]:
        """Return the user-settable options (everything but the function) as a dict."""
        return {
            "name": self.name,
            "description": self.description,
            "category": self.category.value,
            "tags": list(self.tags),
            "timeout": self.timeout,
            "permission": self.permission.value,
            "rate_limit": self.rate_limit,
            "rate_window": self.rate_window,
            "cacheable": self.cacheable,
            "cache_ttl": self.cache_ttl,
            "max_output_tokens": self.max_output_tokens,
            "parameters_schema": self.parameters_schema,
            "sensitive_arguments": list(self.sensitive_arguments),
            "max_abandoned_calls": self.max_abandoned_calls,
        }

    def redact(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``arguments`` with each sensitive argument's value replaced by ``[REDACTED]``."""
        redacted = dict(arguments)
        for name in self.sensitive_keys:
            if name in redacted:
                redacted[name] = REDACTED
        return redacted

    def scrub(self, text: str, arguments: Mapping[str, Any]) -> str:
        """Return ``text`` with the values of the sensitive arguments in ``arguments`` cut out.

        Each whole value is cut out, and so is every string inside a nested value (a dict's values, a
        list's items, a model's fields), which an error message may quote on its own. Values shorter than
        4 characters are left alone (cutting them would blank ordinary words).
        """
        forms: set[str] = set()
        for name in self.sensitive_keys:
            if name not in arguments:
                continue
            value = arguments[name]
            # too big to print, or an object whose ``repr`` raises (a Python caller's): not in the text
            with contextlib.suppress(Exception):
                forms |= {str(value), repr(value)}
            with contextlib.suppress(Exception):
                forms.add(describe_value(value))  # as an error message shows it: a long one cut short
            for leaf in _string_leaves(value):
                forms |= {leaf, repr(leaf), describe_value(leaf)}
                # as a JSON result quotes it (a quote or backslash escaped)
                forms |= {json.dumps(leaf)[1:-1], json.dumps(leaf, ensure_ascii=False)[1:-1]}
        for form in sorted(forms, key=len, reverse=True):
            if len(form) >= _SHORTEST_SCRUBBED and form in text:
                text = text.replace(form, REDACTED)
        return text


def _check_declared_names(declared: dict[str, Any], generated: dict[str, Any]) -> None:
    """Refuse a declared schema whose arguments a typed function would not accept.

    A typed tool's calls are validated against its signature: a schema naming other arguments (or leaving
    out a required one) would have the model send calls that all fail.
    """
    accepted = list(generated.get("properties") or {})
    allowed = "the function's parameters: " + (", ".join(accepted) or "none")
    declared_names = list(declared.get("properties") or {})
    for name in declared_names:
        if name not in accepted:
            raise ToolRegistrationError("parameters_schema.properties", name, allowed)
    required = [name for name in generated.get("required") or () if name not in declared_names]
    if required:
        raise ToolRegistrationError(
            "parameters_schema.properties",
            declared_names,
            "properties naming every required parameter of the function (missing: "
            + ", ".join(repr(name) for name in required)
            + ")",
        )


def _alias_names(info: FieldInfo) -> list[str]:
    """The keys other than its name an argument is sent by: its alias, its validation aliases."""
    names = [info.alias] if isinstance(info.alias, str) else []
    alias = info.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    for choice in choices:
        if isinstance(choice, str):
            names.append(choice)
        elif isinstance(choice, AliasPath) and choice.path and isinstance(choice.path[0], str):
            names.append(choice.path[0])  # the top-level key the value is found under
    return names


def _string_leaves(value: Any, depth: int = 0) -> list[str]:
    """The strings in ``value`` and, recursively, in its dict values, list/set items and model fields."""
    if isinstance(value, str):
        return [value]
    if depth > 32:  # a deeper (or cyclic) value: its strings are not searched for
        return []
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, Mapping):
        children: Iterable[Any] = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        children = value
    else:
        return []
    leaves: list[str] = []
    for child in children:
        leaves.extend(_string_leaves(child, depth + 1))
    return leaves


def get_tool_definition(function: Any) -> ToolDefinition | None:
    """Return the :class:`ToolDefinition` ``@tool`` attached to ``function``, or None.

    The definition runs ``function`` itself. For a bound method whose function was decorated (``@tool`` on
    a method in a class body) that is the bound method: it runs on its instance, and ``self`` is not one of
    its arguments. For a wrapper made with ``functools.wraps`` around a decorated function (which copies
    the definition onto it), that is the wrapper: the decorator that made it is not bypassed.

    Raises:
        ToolRegistrationError: ``function`` cannot be a tool (as for the decorator).
    """
    definition = getattr(function, TOOL_DEFINITION_ATTRIBUTE, None)
    if not isinstance(definition, ToolDefinition):
        return None
    if definition.function is not function and _wraps(function, definition.function):
        return definition.with_options(function=function)
    return definition


def _wraps(function: Any, inner: Any) -> bool:
    """Whether ``function`` (or a bound method's function) is ``inner`` or wraps it (``__wrapped__``)."""
    current = function.__func__ if inspect.ismethod(function) else function
    for _ in range(64):  # a chain of decorators; a cycle ends here
        if current is inner:
            return True
        current = getattr(current, "__wrapped__", None)
        if current is None:
            return False
    return False


@overload
def tool(function: F, /) -> F: ...


@overload
def tool(
    function: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    category: ToolCategory | str = ToolCategory.GENERAL,
    tags: Iterable[str] = (),
    timeout: float | None = None,
    permission: ToolPermission | str = ToolPermission.STANDARD,
    rate_limit: int | None = None,
    rate_window: float = DEFAULT_RATE_WINDOW,
    cacheable: bool = False,
    cache_ttl: float = DEFAULT_CACHE_TTL,
    max_output_tokens: int | None = None,
    parameters_schema: dict[str, Any] | None = None,
    sensitive_arguments: Iterable[str] = (),
    max_abandoned_calls: int | None = None,
) -> Callable[[F], F]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    category: ToolCategory | str = ToolCategory.GENERAL,
    tags: Iterable[str] = (),
    timeout: float | None = None,
    permission: ToolPermission | str = ToolPermission.STANDARD,
    rate_limit: int | None = None,
    rate_window: float = DEFAULT_RATE_WINDOW,
    cacheable: bool = False,
    cache_ttl: float = DEFAULT_CACHE_TTL,
    max_output_tokens: int | None = None,
    parameters_schema: dict[str, Any] | None = None,
    sensitive_arguments: Iterable[str] = (),
    max_abandoned_calls: int | None = None,
) -> Any:
    """Mark a function as a tool: attach a validated :class:`ToolDefinition`, return the function unchanged.

    Usable bare (``@tool``) or with options (``@tool(name=..., timeout=...)``).

    Args:
        function: The function, when used bare.
        name: The tool's name; defaults to the function's ``__name__``.
        description: What the tool does; defaults to the docstring's description.
        category: A :class:`ToolCategory` (or its string).
        tags: Labels for ``list_tools(tags=...)``.
        timeout: Seconds the tool may run, capped by ``config.max_tool_timeout`` (None: the cap).
        permission: A :class:`ToolPermission` (default ``STANDARD``).
        rate_limit: At most this many calls per sliding ``rate_window`` seconds (None: unlimited).
        rate_window: Length of the rate-limit window in seconds.
        cacheable: Cache successful results (pure tools only).
        cache_ttl: Seconds a cached result stays valid.
        max_output_tokens: Cut longer results, with a marker, when they enter the context window.
        parameters_schema: An explicit JSON schema for the arguments (otherwise generated).
        sensitive_arguments: Names of arguments holding secrets, redacted from the context window, memory
            and error messages (see :attr:`ToolDefinition.sensitive_arguments`).
        max_abandoned_calls: The most calls of this tool left running after their timeout before new calls
            are refused (``overloaded``); None: the manager's bound (see
            :attr:`ToolDefinition.max_abandoned_calls`).

    Raises:
        ToolRegistrationError: an option is invalid or the function cannot be a tool.
    """

    def decorate(target: F) -> F:
        if isinstance(target, staticmethod | classmethod):
            # above @staticmethod / @classmethod: the definition goes on the function the class gives out
            # (``Cls.f``; a class method's is bound, and registering it drops ``cls``, as ``self`` is)
            decorate(target.__func__)
            return target
        if not callable(target):
            raise ToolRegistrationError("function", target, "a callable (function or method)")
        definition = ToolDefinition(
            name=name if name is not None else derived_name(target),
            function=target,
            description=description or "",
            category=category,  # type: ignore[arg-type]  # parsed in __post_init__
            tags=tags,  # type: ignore[arg-type]  # checked and made a tuple in __post_init__
            timeout=timeout,
            permission=permission,  # type: ignore[arg-type]
            rate_limit=rate_limit,
            rate_window=rate_window,
            cacheable=cacheable,
            cache_ttl=cache_ttl,
            max_output_tokens=max_output_tokens,
            parameters_schema=parameters_schema or {},
            sensitive_arguments=sensitive_arguments,  # type: ignore[arg-type]  # made a tuple in __post_init__
            max_abandoned_calls=max_abandoned_calls,
        )
        try:
            setattr(target, TOOL_DEFINITION_ATTRIBUTE, definition)
        except (AttributeError, TypeError):
            raise ToolRegistrationError(
                "function",
                target,
                "a function or object that accepts attributes; "
                "register this callable with ToolManager.register_function_tool instead",
            ) from None
        return target

    if function is not None:
        return decorate(function)
    return decorate
