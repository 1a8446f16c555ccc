"""The tool registry: :class:`ToolRegistry` registers tool definitions and describes them to providers.

It is the I/O-free half of :class:`~context_manager.core.tool_system.manager.ToolManager`, which adds
running the tools (validation, permissions, rate limits, cache, timeouts). Used alone, a registry validates
and lists tools and produces their schemas in OpenAI or Anthropic format without running anything::

    registry = ToolRegistry()
    registry.register_tool(word_count)          # a @tool-decorated function
    registry.get_tool_schemas("anthropic")      # [{"name": "word_count", "input_schema": ...}]

Registration validates everything before changing anything: a rejected registration (a name taken without
``replace=True``, a name a provider would reject, a non-callable, an invalid option) raises
:class:`~context_manager.core.errors.ToolRegistrationError` and leaves the registry as it was.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from context_manager.core.errors import InvalidArgumentError, ToolNotFoundError, ToolRegistrationError
from context_manager.core.messages import CACHE_CONTROL_ALLOWED, is_cache_control
from context_manager.core.tool_system.definition import (
    ToolCategory,
    ToolDefinition,
    derived_name,
    get_tool_definition,
)

__all__ = ["SchemaFormat", "ToolRegistry"]

SchemaFormat = Literal["openai", "anthropic", "openai_responses"]
"""Provider formats :meth:`ToolRegistry.get_tool_schemas` can produce."""

_SCHEMA_FORMATS = ("openai", "anthropic", "openai_responses")
_REGISTRATION_OPTIONS = frozenset(
    {
        "category",
        "tags",
        "timeout",
        "permission",
        "rate_limit",
        "rate_window",
        "cacheable",
        "cache_ttl",
        "max_output_tokens",
        "parameters_schema",
        "sensitive_arguments",
        "max_abandoned_calls",
    }
)


class ToolRegistry:
    """Tool definitions by name, in registration order, with their provider schemas.

    Example:
        >>> registry = ToolRegistry()
        >>> async def shout(text: str) -> str:
        ...     return text.upper()
        >>> registry.register_function_tool("shout", shout, "Upper-case a text").name
        'shout'
        >>> registry.get_tool_schemas("anthropic")[0]["input_schema"]["required"]
        ['text']
    """

    def __init__(self) -> None:
        self._tools: dict[str, ToolDefinition] = {}

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def register_function_tool(
        self,
        name: str,
        function: Callable[..., Any],
        description: str | None = None,
        *,
        replace: bool = False,
        **options: Any,
    ) -> ToolDefinition:
        """Register ``function`` as the tool ``name`` (the user guide's form of :meth:`register_tool`).

        ``register_tool(tool(name=..., description=..., **options)(function))`` does the same; this form
        names and configures the function at the call. A function already decorated with ``@tool`` keeps
        its options, with ``name``, ``description`` and ``options`` given here taking precedence.
        Registering the same function under the same name with the same options again is a no-op.

        Args:
            name: The tool's name (``^[a-zA-Z0-9_-]{1,64}$``).
            function: An async or sync callable (see the module docstring for calling conventions).
            description: What the tool does; defaults to the decorator's or the docstring's.
            replace: Replace a different tool registered under ``name`` instead of raising.
            **options: Any ``@tool`` option: ``category``, ``tags``, ``timeout``, ``permission``,
                ``rate_limit``, ``rate_window``, ``cacheable``, ``cache_ttl``, ``max_output_tokens``,
                ``parameters_schema``, ``sensitive_arguments``, ``max_abandoned_calls``.

        Returns:
            The registered definition.

        Warns:
            UserWarning: the tool has no description (none given, no docstring): models choose and call
                tools by their descriptions.

        Raises:
            ToolRegistrationError: invalid name or option, not callable, or the name is taken; the registry
                is unchanged.
        """
        for key in options:
            if key not in _REGISTRATION_OPTIONS:
                raise ToolRegistrationError(
                    "options",
                    key,
                    "one of " + ", ".join(sorted(_REGISTRATION_OPTIONS)),
                    detail="unknown option",
                )
        if not callable(function):
            raise ToolRegistrationError("function", function, "a callable (function or method)")
        if description is not None and not isinstance(description, str):
            raise ToolRegistrationError("description", description, "a str or None")
        base = get_tool_definition(function)
        if base is not None:
            changes: dict[str, Any] = dict(options)
            if name != base.name:
                changes["name"] = name
            if description:
                changes["description"] = description
            definition = base.with_options(**changes) if changes else base
        else:
            definition = ToolDefinition(
                name=name, function=function, description=description or "", **options
            )
        return self._add(definition, replace=replace)

    def register_tool(
        self, tool: ToolDefinition | Callable[..., Any], *, replace: bool = False
    ) -> ToolDefinition:
        """Register a ``@tool``-decorated function, a :class:`ToolDefinition` or a plain function.

        The way to register a tool: the decorator carries its name, description and options. A plain
        function is registered under its ``__name__`` with its docstring as description;
        :meth:`register_function_tool` (the user guide's form) names and configures one at the call.

        Warns:
            UserWarning: the tool has no description (no docstring, no ``description=``): models choose
                and call tools by their descriptions.

        Raises:
            ToolRegistrationError: invalid definition, or the name is taken (without ``replace=True``).
        """
        if isinstance(tool, ToolDefinition):
            definition = tool
        elif callable(tool):
            found = get_tool_definition(tool)
            definition = (
                found if found is not None else ToolDefinition(name=derived_name(tool), function=tool)
            )
        else:
            raise ToolRegistrationError("tool", tool, "a ToolDefinition or a callable")
        return self._add(definition, replace=replace)

    def _add(self, definition: ToolDefinition, *, replace: bool) -> ToolDefinition:
        _refuse_unbound_method(definition)
        existing = self._tools.get(definition.name)
        if existing is not None and not replace:
            # bound methods by ==: each attribute access makes a new one (equal: same function and instance)
            same = existing.function is definition.function or (
                inspect.ismethod(existing.function) and existing.function == definition.function
            )
            if same and existing.options() == definition.options():
                return existing  # the same tool registered twice
            raise ToolRegistrationError(
                "name",
                definition.name,
                "a name not already registered",
                detail="pass replace=True to replace the registered tool",
            )
        if existing is not None:
            self._tool_removed(definition.name)
        self._tools[definition.name] = definition
        self._tool_added(definition)
        if not definition.description.strip():
            # a model picks a tool, and fills its arguments, by the description: without one it guesses
            # from the name (LangChain's @tool refuses such a function; a warning keeps it registrable)
            warnings.warn(
                f"tool {definition.name!r} has no description: models choose and call a tool by its "
                "description; give the function a docstring, or pass description= (@tool(description=...), "
                "register_function_tool(name, function, description))",
                UserWarning,
                stacklevel=3,
            )
        return definition

    def _tool_added(self, definition: ToolDefinition) -> None:
        """Hook called after ``definition`` entered the registry (subclasses set up per-tool state)."""

    def _tool_removed(self, name: str) -> None:
        """Hook called when ``name`` is unregistered or about to be replaced (subclasses drop its state)."""

    def unregister_tool(self, name: str) -> ToolDefinition:
        """Remove the tool ``name`` (with its cached results, rate-limit state and statistics).

        Returns:
            The definition that was removed.

        Raises:
            ToolNotFoundError: no tool has this name.
        """
        definition = self._tools.pop(name, None) if isinstance(name, str) else None
        if definition is None:
            raise ToolNotFoundError(name)
        self._tool_removed(name)
        return definition

    def get_tool(self, name: str) -> ToolDefinition:
        """Return the definition of ``name``.

        Raises:
            ToolNotFoundError: no tool has this name.
        """
        definition = self._tools.get(name) if isinstance(name, str) else None
        if definition is None:
            raise ToolNotFoundError(name)
        return definition

    def redact_arguments(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``arguments`` with the ``sensitive_arguments`` of tool ``name`` as ``[REDACTED]``.

        ``execute_tool_calls`` does this for the assistant message it adds; call it yourself before
        ``add_message("assistant", ..., tool_calls=...)`` when you add that message. Unknown tools: a copy.

        Raises:
            InvalidArgumentError: ``arguments`` is not a mapping.
        """
        if not isinstance(arguments, Mapping):
            raise InvalidArgumentError("arguments", arguments, "a mapping of argument names to values")
        definition = self._tools.get(name) if isinstance(name, str) else None
        return dict(arguments) if definition is None else definition.redact(arguments)

    def list_tools(
        self, category: ToolCategory | str | None = None, tags: Iterable[str] | None = None
    ) -> list[ToolDefinition]:
        """Return the registered tools in registration order, optionally filtered.

        Args:
            category: Keep tools of this category.
            tags: Keep tools carrying every one of these tags.

        Raises:
            InvalidArgumentError: unknown category, or ``tags`` is not a collection of strings.
        """
        wanted_category: ToolCategory | None = None
        if category is not None:
            try:
                wanted_category = ToolCategory(
                    category.strip().lower() if isinstance(category, str) else category
                )
            except ValueError:
                raise InvalidArgumentError(
                    "category", category, "one of " + ", ".join(repr(c.value) for c in ToolCategory)
                ) from None
        wanted_tags: set[str] = set()
        if tags is not None:
            if (
                isinstance(tags, str)
                or not isinstance(tags, Iterable)
                or not all(isinstance(tag, str) for tag in tags)
            ):
                raise InvalidArgumentError("tags", tags, "a list of strings")
            wanted_tags = set(tags)
        return [
            definition
            for definition in self._tools.values()
            if (wanted_category is None or definition.category is wanted_category)
            and wanted_tags.issubset(definition.tags)
        ]

    def get_tool_schemas(
        self,
        format: SchemaFormat = "openai",
        *,
        names: Iterable[str] | None = None,
        cache_control: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Describe the tools in a provider's request format.

        ``"openai"`` gives Chat Completions ``tools`` entries
        (``{"type": "function", "function": {"name", "description", "parameters"}}``); ``"anthropic"`` gives
        Messages API ``tools`` entries (``{"name", "description", "input_schema"}``); ``"openai_responses"``
        gives Responses API ``tools`` entries (``{"type": "function", "name", "description", "parameters",
        "strict": false}``: not strict, as in Chat Completions, where strict mode's schema rules do not
        hold every tool's parameters).

        Args:
            format: ``"openai"``, ``"anthropic"`` or ``"openai_responses"``.
            names: Only these tools, in this order, each once (default: all, in registration order).
            cache_control: An Anthropic prompt-cache breakpoint (``{"type": "ephemeral"}``, maybe with a
                ``"ttl"`` of ``"5m"`` or ``"1h"``) put on the last tool, which caches the definitions of
                them all (``"anthropic"`` only). Pass the schemas to ``get_context(format="anthropic",
                tools=...)``, which counts it in the 4 breakpoints a request takes.

        Raises:
            InvalidArgumentError: unknown format, ``names`` is not a list of names (a single string), or
                ``cache_control`` is not one the API takes (``{"type": "ephemeral"}``, an optional ``"ttl"``
                of ``"5m"`` or ``"1h"``, no other key) or is given with another format.
            ToolNotFoundError: a name in ``names`` is not registered.

        Example:
            >>> schemas = registry.get_tool_schemas("anthropic", cache_control={"type": "ephemeral"})
            >>> schemas[-1]["cache_control"]
            {'type': 'ephemeral'}
        """
        if format not in _SCHEMA_FORMATS:
            raise InvalidArgumentError("format", format, "'openai', 'anthropic' or 'openai_responses'")
        breakpoint_copy: dict[str, Any] | None = None
        if cache_control is not None:
            if not is_cache_control(cache_control):
                raise InvalidArgumentError("cache_control", cache_control, CACHE_CONTROL_ALLOWED)
            breakpoint_copy = dict(cache_control)  # a copy the caller cannot change (of strings alone)
            if format != "anthropic":
                raise InvalidArgumentError(
                    "cache_control",
                    cache_control,
                    "None: a prompt-cache breakpoint only with format='anthropic' (OpenAI caches prompts "
                    "without one)",
                )
        if names is None:
            definitions = list(self._tools.values())
        elif isinstance(names, str) or not isinstance(names, Iterable):
            raise InvalidArgumentError("names", names, "a list of tool names, or None for every tool")
        else:
            # each once: providers refuse a request whose tools repeat a name
            found = (self.get_tool(name) for name in names)
            definitions = list({definition.name: definition for definition in found}.values())
        schemas: list[dict[str, Any]] = []
        for definition in definitions:
            parameters = json.loads(json.dumps(definition.parameters_schema))  # callers may mutate it
            if format == "openai":
                schemas.append(
                    {
                        "type": "function",
                        "function": {
                            "name": definition.name,
                            "description": definition.description,
                            "parameters": parameters,
                        },
                    }
                )
            elif format == "openai_responses":
                schemas.append(
                    {
                        "type": "function",
                        "name": definition.name,
                        "description": definition.description,
                        "parameters": parameters,
                        "strict": False,
                    }
                )
            else:
                schemas.append(
                    {
                        "name": definition.name,
                        "description": definition.description,
                        "input_schema": parameters,
                    }
                )
        if breakpoint_copy is not None and schemas:  # the last tool's breakpoint caches every definition
            schemas[-1]["cache_control"] = breakpoint_copy
        return schemas


def _refuse_unbound_method(definition: ToolDefinition) -> None:
    """Refuse a method taken from its class (``Service.search``): the model would be asked for ``self``.

    Such a function is defined in a class body (its ``__qualname__`` names the class) and its first
    parameter is ``self``; registered, its schema required ``self`` and every call failed.
    """
    function = definition.function
    if definition.convention != "typed" or not inspect.isfunction(function):
        return
    owner, _, _ = function.__qualname__.rpartition(".")
    if not owner or owner.endswith("<locals>"):  # a module-level or local function, not a method
        return
    first = next(iter(inspect.signature(function).parameters), None)
    if first == "self":
        raise ToolRegistrationError(
            "function",
            function,
            "a function or a bound method (register_tool(instance."
            f"{function.__name__}), not {owner}.{function.__name__})",
            detail=f"tool {definition.name!r}: a method taken from its class would ask the model for `self`",
        )
