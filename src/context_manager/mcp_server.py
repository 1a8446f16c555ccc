"""An MCP server over the memory (and optionally your tools): ``context-manager mcp serve``.

Any MCP client (Claude Desktop, Claude Code, Cursor, an agent framework) can then remember and recall
through the same three-tier memory the library uses. Needs the ``mcp`` extra
(``pip install 'python-context-manager[mcp]'``, the official SDK 2.x)::

    context-manager mcp serve --storage /data/memory --user alice            # stdio
    context-manager mcp serve --storage /data/memory --user alice --http 8765  # http://127.0.0.1:8765/mcp

What the server offers:

* tools ``memory_add`` (content, importance, tags), ``memory_search`` (query, limit), ``memory_delete``
  (memory_id; a consolidated memory goes with its originals, which the result lists) and ``memory_stats``,
  each with an input and an output schema (an unknown argument, or a value of another JSON type such as
  ``"3"`` for ``limit``, is an error);
* resources ``memory://stats`` and ``memory://recent`` (the newest memories, JSON);
* optionally the application's own tools (``--tools module:registry``: a ``ToolManager``, a list of
  ``@tool`` functions or a function returning either), run through the ``ToolManager`` so their schemas,
  permission policy, rate limits (per server user) and timeouts stay in force.

Every call is scoped to the server's user (``--user``; the default namespace without it): no tool takes a
user id, a search never crosses users and a delete of another user's memory answers "not found". A bad
argument, an unknown tool (its message lists the tools there are) or a failed call is an MCP error
result (``isError``), as the SDK answers them; it never ends the session. The server is
configured explicitly (command-line options, ``--set OPTION=VALUE`` for any configuration option), because
stdio clients start it with a stripped environment and an arbitrary working directory.

In Python, :func:`create_mcp_server` returns the ``MCPServer`` to run or to mount yourself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import (
    ConfigurationError,
    ContextManagerError,
    InvalidArgumentError,
    MissingDependencyError,
    ToolRegistrationError,
    describe_value,
)
from context_manager.core.health_checker.models import json_ready
from context_manager.core.memory.embeddings import SentenceTransformerEmbedder
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory
from context_manager.core.memory.validation import check_memory_id, check_user
from context_manager.core.memory.writing import merged_originals
from context_manager.core.telemetry import (
    Telemetry,
    memory_add_attributes,
    telemetry_for_current_providers,
    traced_call,
    traced_search,
)
from context_manager.core.text import storable
from context_manager.core.tool_system.definition import ToolDefinition, ToolPermission, get_tool_definition
from context_manager.core.tool_system.manager import ToolManager
from context_manager.core.tool_system.schema import check_arguments_against_schema, describe_validation_error

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
    from mcp_types import JSONRPCError, JSONRPCMessage

__all__ = [
    "MEMORY_TOOL_NAMES",
    "MemoryItem",
    "create_mcp_server",
    "load_tool_registry",
    "run_mcp_server",
]

logger = logging.getLogger(__name__)

MEMORY_TOOL_NAMES = ("memory_add", "memory_search", "memory_delete", "memory_stats")
"""The memory tools every server offers (application tools may not use these names)."""
STATS_URI = "memory://stats"
"""Resource: the memory statistics of the server's user (JSON)."""
RECENT_URI = "memory://recent"
"""Resource: the server user's newest memories, newest first (JSON)."""
DEFAULT_RECENT_LIMIT = 20
SERVER_NAME = "context-manager"

_INSTRUCTIONS = (
    "Long-term memory for this user. Call memory_search before answering questions that may depend on "
    "earlier conversations or the user's preferences; call memory_add to keep a durable fact (importance "
    "0-1: {threshold:g}+ keeps it in long-term memory, for things that must not be forgotten). Memories "
    "persist across sessions."
)


class _StoredMemory(BaseModel):
    """What the MCP tools say of every memory they return."""

    id: str = Field(description="The memory's id (pass it to memory_delete).")
    importance: float = Field(description="0 (trivial) to 1 (critical).")
    tags: list[str] = Field(description="Labels.")
    tier: str = Field(
        description=(
            "The tier of this copy: short, medium or long. A memory stored with an importance at or above "
            "the long-term threshold comes back as short but also has a long-term copy."
        )
    )
    created_at: float = Field(description="When it was stored, seconds since the epoch.")


class MemoryItem(_StoredMemory):
    """One memory as the MCP tools return it."""

    content: str = Field(description="The remembered text.")
    score: float | None = Field(None, description="Relevance of a search result (higher is better).")


PREVIEW_CHARS = 200
"""How much of a stored memory's text ``memory_add`` answers with (its start)."""


class AddedMemory(_StoredMemory):
    """What ``memory_add`` returns: the stored memory without its whole text (the caller has it)."""

    preview: str = Field(
        description=f"The start of the remembered text (at most {PREVIEW_CHARS} characters, '…' when cut)."
    )
    characters: int = Field(description="How long the remembered text is, in characters.")


def _preview(text: str) -> str:
    """The start of ``text``: whole up to :data:`PREVIEW_CHARS` characters, else cut with '…'."""
    if len(text) <= PREVIEW_CHARS:
        return text
    return text[: PREVIEW_CHARS - 1].rstrip() + "…"


class SearchResults(BaseModel):
    """What ``memory_search`` returns."""

    results: list[MemoryItem] = Field(description="The best matches, best first.")


class DeleteResult(BaseModel):
    """What ``memory_delete`` returns."""

    deleted: str = Field(description="The id of the deleted memory.")
    originals_deleted: list[str] = Field(
        description=(
            "The ids of the memories a consolidated memory was merged from, deleted with it (recursively, "
            "nearest first); empty for a memory that merged none."
        )
    )


def _item(memory: Memory) -> MemoryItem:
    return MemoryItem(
        id=memory.id,
        content=memory.content,
        importance=memory.importance,
        tags=list(memory.tags),
        tier=memory.tier.value,
        created_at=memory.created_at,
        score=memory.score,
    )


class _MemoryHandle:
    """The memory a server uses: given (and owned by the caller), or opened from the config on first use.

    Opening is reference-counted, so several in-process sessions share one open store (a storage path can
    be open once per process).
    """

    def __init__(self, config: ContextManagerConfig, memory: MemoryManager | None) -> None:
        self.config = config
        self._given = memory
        _resolve_storage(memory.storage_path if memory is not None else config.resolved_storage_path)
        self._opened: MemoryManager | None = None
        self._users = 0
        self._lock = asyncio.Lock()
        self.telemetry: Telemetry | None = None
        """OpenTelemetry for the memory tools, resolved when a session opens the server."""

    @property
    def given(self) -> MemoryManager | None:
        """The memory the caller passed in (its configuration is the one that applies), if any."""
        return self._given

    @property
    def opened_memory(self) -> MemoryManager | None:
        """The memory the server opened from the config, while a session uses it."""
        return self._opened

    def get(self) -> MemoryManager:
        memory = self._given or self._opened
        if memory is None or not memory.is_initialized:
            from mcp.server.mcpserver.exceptions import ToolError

            if self._given is not None:  # the caller opens and closes it
                raise ToolError(
                    "the memory store is not open (the MemoryManager given to create_mcp_server is not "
                    "initialized: await memory.initialize() before serving, or pass none)"
                )
            raise ToolError("the memory store is not open (the server is starting or stopping)")
        return memory

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        self.telemetry = telemetry_for_current_providers() if self.config.enable_opentelemetry else None
        if self._given is not None:
            _preload_embedder(self._given)
            yield
            return
        async with self._lock:
            if self._users == 0:
                memory = MemoryManager(self.config)
                await memory.initialize()
                self._opened = memory
                _preload_embedder(memory)
            self._users += 1
        try:
            yield
        finally:
            async with self._lock:
                self._users -= 1
                if self._users == 0 and self._opened is not None:
                    memory, self._opened = self._opened, None
                    await memory.cleanup()


_PRELOADING: weakref.WeakSet[Any] = weakref.WeakSet()
"""The embedders whose model a thread loads or loaded (:func:`_preload_embedder`)."""


def _preload_embedder(memory: MemoryManager) -> None:
    """Start loading the memory's embedding model on a thread of its own, if it loads on first use.

    The built-in MiniLM loads when it first embeds: the first ``memory_add`` or ``memory_search`` of a
    server waited ~7 s for it. Loaded from the server's start instead, off the event loop: the server
    answers meanwhile (tools that embed nothing do not wait), and a call that embeds before the load is
    done waits for the rest of it, not for a second load. A daemon thread: a server stopped meanwhile
    exits without waiting for it. A load that fails is logged; the call that embeds then reports it.
    """
    embedder = memory.embedder
    if not isinstance(embedder, SentenceTransformerEmbedder) or embedder.loaded or embedder in _PRELOADING:
        return
    _PRELOADING.add(embedder)

    def load() -> None:
        try:
            embedder.load()
        except Exception as error:  # the first embed raises it again, to the caller
            logger.warning("the embedding model did not load in the background: %s", _raised(error))

    threading.Thread(target=load, name="context-manager-embedder-load", daemon=True).start()


def _memory_config(handle: _MemoryHandle) -> ContextManagerConfig:
    """The configuration the memory applies: the given memory's, else the server's."""
    return handle.config if handle.given is None else handle.given.config


def _require_mcp() -> type[MCPServer[Any]]:
    """The server class (the SDK's, :func:`_server_class`), or ``MissingDependencyError`` naming the extra."""
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError:
        raise MissingDependencyError("mcp server", "mcp", "mcp") from None
    return _server_class(MCPServer)


@functools.cache
def _server_class(base: type[MCPServer[Any]]) -> type[MCPServer[Any]]:
    """``base`` whose answer to an unknown tool names the tools there are, served over our stdio transport.

    As the SDK answers it (and as ours is documented): a ``CallToolResult`` with ``isError`` saying
    "Unknown tool: NAME", which the model reads (the specification's example is the JSON-RPC error
    -32602, which a client may not show the model); followed by "; available tools: ..." so the model can
    correct the name. Only the failing call lists the tools: a known tool's call does no more work.
    """
    from mcp.server.mcpserver.exceptions import ToolError

    class ContextManagerMCPServer(base):  # type: ignore[valid-type,misc]
        async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as error:
                if type(error) is not ToolError or error.__cause__ is not None:
                    raise  # the tool's own failure
                names = [tool.name for tool in await self.list_tools()]
                if name in names:
                    raise
                raise ToolError(f"Unknown tool: {name}; available tools: {', '.join(names)}") from None

        async def run_stdio_async(self) -> None:
            """Serve over stdio with the transport ``context-manager mcp serve`` uses (:func:`_serve_stdio`).

            The SDK's own cancelled the calls in flight when the client closed stdin (answering them
            "Connection closed", a ``memory_add`` maybe half stored), ignored Ctrl-C until stdin closed
            and dropped a line that is no JSON-RPC message unanswered.
            """
            if getattr(self, "_lowlevel_server", None) is None:  # pragma: no cover - an SDK without it
                await super().run_stdio_async()
                return
            await _serve_stdio(self)

    return cast("type[MCPServer[Any]]", ContextManagerMCPServer)


def create_mcp_server(
    config: ContextManagerConfig | None = None,
    *,
    user_id: str | None = None,
    memory: MemoryManager | None = None,
    tools: ToolManager | None = None,
    recent_limit: int = DEFAULT_RECENT_LIMIT,
    name: str = SERVER_NAME,
) -> MCPServer[Any]:
    """Build an MCP server over the memory of ``config`` (and ``tools``), scoped to ``user_id``.

    Args:
        config: Where the memory is (``storage_path``, and any other option); defaults from the
            environment when omitted.
        user_id: Whose memories every call reads and writes (``None``: the default namespace).
        memory: An initialized ``MemoryManager`` to use (you open and close it); by default the server
            opens one from ``config`` when a session starts and closes it when the last one ends.
        tools: Application tools to offer besides the memory tools; calls go through this manager's
            checks (permission policy, validation, rate limits keyed by ``user_id``, timeouts).
        recent_limit: How many memories the ``memory://recent`` resource lists.
        name: The server name announced to clients.

    Returns:
        An ``mcp.server.mcpserver.MCPServer``: ``await server.run_stdio_async()``, or
        ``server.streamable_http_app()`` to mount, or ``mcp.client.Client(server)`` in tests.

    Raises:
        MissingDependencyError: the ``mcp`` extra is not installed.
        InvalidArgumentError: a bad argument.
        ToolRegistrationError: an application tool is named like a memory tool.
    """
    server_class = _require_mcp()
    if config is None:
        config = memory.config if memory is not None else ContextManagerConfig()
    if not isinstance(config, ContextManagerConfig):
        raise InvalidArgumentError("config", config, "a ContextManagerConfig or None")
    _check_server_user(user_id)
    if memory is not None and not isinstance(memory, MemoryManager):
        raise InvalidArgumentError("memory", memory, "an initialized MemoryManager or None")
    if tools is not None and not isinstance(tools, ToolManager):
        raise InvalidArgumentError("tools", tools, "a ToolManager or None")
    if isinstance(recent_limit, bool) or not isinstance(recent_limit, int) or not 1 <= recent_limit <= 1000:
        raise InvalidArgumentError("recent_limit", recent_limit, "an integer from 1 to 1000")
    handle = _MemoryHandle(config, memory)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with handle.opened():
            yield

    application_tools = _application_tools(tools, user_id) if tools is not None else []
    server: MCPServer[Any] = server_class(
        name,
        title="context-manager memory",
        # the threshold the store applies (configurable), as the memory_add schema says it
        instructions=_INSTRUCTIONS.format(threshold=_memory_config(handle).long_term_importance_threshold),
        version=_version(),
        lifespan=lifespan,
        log_level="WARNING",
        tools=[*_memory_tools(handle, user_id), *application_tools],
    )
    _add_resources(server, handle, user_id, recent_limit)
    return server


def _check_server_user(user_id: Any) -> None:
    """Refuse, up front, a user id the memory would refuse on every call (no tool lets the model fix it)."""
    # blank, too long, control characters, lone surrogates (a --user of undecodable bytes)
    check_user(user_id, allow_all=False)


# ------------------------------------------------------------------------------------------ memory tools


def _tool_error(error: ContextManagerError, handle: _MemoryHandle) -> Exception:
    """The error a memory tool answers with: one line, without where the server keeps the memory.

    A storage failure names its file ("long-term memory database /srv/.../memories.sqlite3: database is
    locked") or the PostgreSQL server: written ``<storage>``, as in :func:`_client_stats`.
    """
    from mcp.server.mcpserver.exceptions import ToolError

    # one line for the model; spaces inside the quoted value stay (they may be what was wrong with it)
    return ToolError(_hide_storage(re.sub(r"\s*\n\s*", " ", str(error)), handle))


def _hide_storage(text: str, handle: _MemoryHandle) -> str:
    """``text`` with the memory's storage location written ``<storage>``."""
    memory = handle.given or handle.opened_memory
    if memory is None:
        return text
    backend = memory.backend
    if backend is not None and backend.kind != "sqlite":
        location = str(getattr(backend, "location", "") or "")
    else:
        location = str(memory.storage_path)
    pattern = _location_pattern(location)
    return text if pattern is None else pattern.sub("<storage>", text)


_IMPORTANCE_TEXT = "0 (trivial) to 1 (critical); {threshold:g}+ is kept long-term."


def _out_of_range(arguments: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Problems of the numbers in ``arguments`` outside their schema's ``minimum`` / ``maximum``.

    Said with the whole range (``limit: got 500; expected an integer from 1 to 50``): pydantic named one
    bound, and a huge number (``1e300``) got its parser's words ("Unable to parse input string as an
    integer, exceeded maximum size") instead of the range.
    """
    problems: list[str] = []
    for name, value in arguments.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # the type check answers for other values
        spec = schema.get("properties", {}).get(name) or {}
        low, high = spec.get("minimum"), spec.get("maximum")
        if low is None and high is None:
            continue
        if value == value and (low is None or value >= low) and (high is None or value <= high):
            continue  # in range (NaN is not: it compares false)
        kind = "an integer" if spec.get("type") == "integer" else "a number"
        if low is not None and high is not None:
            allowed = f"{kind} from {low:g} to {high:g}"
        elif low is not None:
            allowed = f"{kind} of at least {low:g}"
        else:
            allowed = f"{kind} of at most {high:g}"
        problems.append(f"{name}: got {describe_value(value)}; expected {allowed}")
    return problems


def _memory_tools(handle: _MemoryHandle, user_id: str | None) -> list[Any]:
    """The memory tools, whose arguments are checked strictly (an unknown one is an error, not ignored)."""
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.mcpserver.tools import Tool
    from mcp_types import ToolAnnotations

    class MemoryTool(Tool):
        """A memory tool: arguments outside its schema are refused, errors say what is allowed."""

        async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
            # JSON Schema's types first, as the schema the client was given says (and as the ToolManager
            # checks a declared schema): pydantic's lax mode would turn "3" or true into a limit. The
            # SDK's parsing of a list sent as a JSON string (Claude Desktop does) comes before, as it
            # intends.
            parsed = self.fn_metadata.pre_parse_json(arguments)
            problems = check_arguments_against_schema(parsed, self.parameters) or _out_of_range(
                parsed, self.parameters
            )
            if problems:
                raise ToolError(f"invalid arguments for tool {self.name!r}: " + "; ".join(problems))
            try:
                self.fn_metadata.validate_arguments(arguments)
            except ValidationError as error:
                # the cause stays a ValidationError: the SDK then logs the fields only, not the values
                model = self.fn_metadata.arg_model
                raise ToolError(describe_validation_error(error, self.name, model.model_fields)) from error
            return await super().run(arguments, context, convert_result)

    def memory_tool(function: Any, annotations: Any) -> Tool:
        made = MemoryTool.from_function(function, annotations=annotations)
        lax = made.fn_metadata.arg_model
        strict = cast(
            "type[ArgModelBase]", type(lax.__name__, (lax,), {"model_config": ConfigDict(extra="forbid")})
        )
        made.fn_metadata.arg_model = strict
        made.parameters = strict.model_json_schema(by_alias=True)  # "additionalProperties": false
        return made

    async def memory_add(
        content: Annotated[str, Field(min_length=1, description="The fact to remember, in plain words.")],
        importance: Annotated[
            float,
            Field(ge=0.0, le=1.0, description=_IMPORTANCE_TEXT.format(threshold=0.7)),
        ] = 0.5,
        tags: Annotated[list[str] | None, Field(description="Labels to find it by.")] = None,
    ) -> AddedMemory:
        """Store a fact about the user or the work, durably (important ones also in long-term memory).

        Answers with the new memory's id and the start of its text, not the whole text: the caller sent
        it, and a long memory would come back twice (structured and as text) into the model's context.
        """
        try:
            stored = await traced_call(
                handle.telemetry,
                "add_memory",
                handle.get().add_memory(content, importance, tags, user_id=user_id, source="mcp"),
                memory_add_attributes(importance, tags),
            )
        except ContextManagerError as error:
            raise _tool_error(error, handle) from None
        return AddedMemory(
            id=stored.id,
            preview=_preview(stored.content),
            characters=len(stored.content),
            importance=stored.importance,
            tags=list(stored.tags),
            tier=stored.tier.value,
            created_at=stored.created_at,
        )

    async def memory_search(
        query: Annotated[str, Field(min_length=1, description="What to look for, in plain words.")],
        limit: Annotated[int, Field(ge=1, le=50, description="At most this many results.")] = 5,
    ) -> SearchResults:
        """Find the memories most relevant to a query, best first."""
        if not query.strip():  # as an empty query is refused: no answer the model could take for "nothing"
            raise ToolError(f"query: got {describe_value(query)}; allowed text with a word to look for")
        try:
            search = handle.get().search_memory(query, limit, user_id=user_id)
            telemetry = handle.telemetry
            found = await (search if telemetry is None else traced_search(telemetry, search, limit))
        except ContextManagerError as error:
            raise _tool_error(error, handle) from None
        return SearchResults(results=[_item(memory) for memory in found])

    async def memory_delete(
        memory_id: Annotated[
            str, Field(min_length=1, description="The id memory_add or memory_search gave.")
        ],
    ) -> DeleteResult:
        """Delete one memory by id; a consolidated memory goes with the originals it was merged from."""
        memory = handle.get()
        try:
            check_memory_id(memory_id)  # a pasted text is no id: said shortened, not echoed whole
            existing = await memory.get_memory(memory_id)
            if existing is None or existing.user_id != user_id:  # another user's memory does not exist here
                raise ToolError(f"memory_id: no memory with id {memory_id!r}")
            originals = await merged_originals(memory, existing)
            deleted = await traced_call(handle.telemetry, "delete_memory", memory.delete_memory(memory_id))
            # what the delete took with it: the originals (read before) no longer stored
            gone = [original for original in originals if await memory.get_memory(original) is None]
        except ContextManagerError as error:
            raise _tool_error(error, handle) from None
        return DeleteResult(deleted=deleted.id, originals_deleted=gone)

    async def memory_stats() -> dict[str, Any]:
        """Counts per tier, capacity, size on disk and index status of this user's memory."""
        try:
            stats = await traced_call(
                handle.telemetry, "memory_stats", handle.get().get_memory_stats(user_id=user_id)
            )
        except ContextManagerError as error:
            raise _tool_error(error, handle) from None
        return _client_stats(stats)

    remember = memory_tool(memory_add, ToolAnnotations(title="Remember", read_only_hint=False))
    # the threshold the store applies (configurable), not the default's 0.7 (the annotation is evaluated
    # where the function is defined, so the schema's text is set here)
    importance = remember.parameters["properties"]["importance"]
    threshold = _memory_config(handle).long_term_importance_threshold
    importance["description"] = _IMPORTANCE_TEXT.format(threshold=threshold)
    return [
        remember,
        memory_tool(
            memory_search, ToolAnnotations(title="Recall", read_only_hint=True, open_world_hint=False)
        ),
        memory_tool(
            memory_delete,
            ToolAnnotations(
                title="Forget", read_only_hint=False, destructive_hint=True, idempotent_hint=True
            ),
        ),
        memory_tool(memory_stats, ToolAnnotations(title="Memory statistics", read_only_hint=True)),
    ]


def _add_resources(server: MCPServer[Any], handle: _MemoryHandle, user_id: str | None, limit: int) -> None:
    async def stats() -> str:
        """Memory statistics of this server's user (JSON)."""
        return json.dumps(_client_stats(await handle.get().get_memory_stats(user_id=user_id)), indent=2)

    async def recent() -> str:
        """The newest memories of this server's user, newest first (JSON)."""
        memories = await handle.get().recent_memories(limit, user_id=user_id)
        return json.dumps([_item(memory).model_dump() for memory in memories], indent=2, ensure_ascii=False)

    server.resource(STATS_URI, name="memory_stats", title="Memory statistics", mime_type="application/json")(
        stats
    )
    server.resource(
        RECENT_URI, name="recent_memories", title="Recent memories", mime_type="application/json"
    )(recent)


def _client_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The memory statistics a client is given: JSON-ready, without where the server keeps the memory.

    ``storage_path`` (a directory on the server, or the PostgreSQL server's user, host and database) is of
    no use to a model and shows the server's file system or network to every client: the operator has
    it from the server's configuration, its start-up line on stderr and ``context-manager memory stats``.
    Where a figure's text quotes it (``writes.last_error``: a failed write names its database file), it
    reads ``<storage>``.
    """
    location = stats.get("storage_path")
    # strict JSON: json.dumps(default=str) wrote a NaN or an infinity as NaN/Infinity, which parsers refuse
    ready: dict[str, Any] = json_ready({key: value for key, value in stats.items() if key != "storage_path"})
    pattern = _location_pattern(location)
    if pattern is None:
        return ready
    hidden: dict[str, Any] = _without_location(ready, pattern)
    return hidden


_RESOLVED_STORAGE: dict[str, str] = {}
"""The storage directories of the servers made, resolved (``realpath``) when each was made."""


def _resolve_storage(path: os.PathLike[str] | str) -> None:
    """Resolve a server's storage directory once, when it is made (see :func:`_location_pattern`)."""
    location = str(path)
    if location not in _RESOLVED_STORAGE:
        _RESOLVED_STORAGE[location] = os.path.realpath(location)


def _location_pattern(location: Any) -> re.Pattern[str] | None:
    """What finds ``location`` (a storage directory or a redacted DSN) in a text; ``None`` if none."""
    if not isinstance(location, str) or not location.strip():
        return None
    # the location as given, made absolute and resolved, each where it stands whole (a relative "mem" is
    # not the start of "memory"), the longer first. Resolved when the server was made, not here: realpath
    # stats the directory, which on a hung network filesystem blocked the event loop (every session) at
    # every tool error, even one refusing the arguments alone
    spelled = {location}
    if "://" not in location:
        spelled |= {os.path.abspath(location), _RESOLVED_STORAGE.get(location, location)}
    ordered = sorted(spelled, key=len, reverse=True)
    return re.compile(r"(?<![\w.~/\\-])(?:" + "|".join(map(re.escape, ordered)) + r")(?=$|[/\\\s:;,'\")\]])")


def _without_location(value: Any, pattern: re.Pattern[str]) -> Any:
    """``value`` (JSON-ready) with what ``pattern`` finds written ``<storage>`` in every string it holds."""
    if isinstance(value, str):
        return pattern.sub("<storage>", value)
    if isinstance(value, dict):
        return {key: _without_location(item, pattern) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_location(item, pattern) for item in value]
    return value


# ------------------------------------------------------------------------------------ application tools


def _application_tools(tools: ToolManager, user_id: str | None) -> list[Any]:
    """MCP tools that run the application's tools through ``tools`` (its checks stay in force)."""
    from mcp.server.mcpserver.tools import Tool
    from mcp.server.mcpserver.utilities.func_metadata import func_metadata
    from mcp_types import CallToolResult, TextContent, ToolAnnotations

    async def _placeholder() -> None:  # pragma: no cover - never called; run() is overridden
        return None

    metadata = func_metadata(_placeholder, structured_output=False)

    class ApplicationTool(Tool):
        """An application tool: the arguments go to ``ToolManager.call_tool``, which validates them."""

        async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
            result = await tools.call_tool(self.name, arguments, caller_key=user_id)
            # a lone surrogate (a file name read with surrogateescape) cannot be written as JSON
            text = storable(result._message_text())  # the text the manager kept: not encoded again
            return CallToolResult(content=[TextContent(type="text", text=text)], is_error=not result.success)

    exposed: list[Any] = []
    for definition in tools.list_tools():
        if definition.name in MEMORY_TOOL_NAMES:
            raise ToolRegistrationError(
                "name",
                definition.name,
                "a name other than the memory tools' (" + ", ".join(MEMORY_TOOL_NAMES) + ")",
                detail="the MCP server offers those itself",
            )
        exposed.append(
            ApplicationTool(
                fn=_placeholder,
                name=definition.name,
                description=definition.description,
                parameters=json.loads(json.dumps(definition.parameters_schema)),
                fn_metadata=metadata,
                is_async=True,
                annotations=_annotations(definition, ToolAnnotations),
            )
        )
    return exposed


def _annotations(definition: ToolDefinition, annotation_type: Any) -> Any:
    read_only = definition.category.value in ("search", "analysis", "memory") and definition.permission in (
        ToolPermission.PUBLIC,
        ToolPermission.STANDARD,
    )
    return annotation_type(
        read_only_hint=read_only,
        destructive_hint=definition.permission is ToolPermission.DANGEROUS,
    )


def load_tool_registry(spec: str, config: ContextManagerConfig | None = None) -> ToolManager:
    """Import the application's tools from ``"module:attribute"``.

    The attribute may be a ``ToolManager`` (used as it is, with its policy and approval callback), a
    sequence of ``@tool``-decorated functions or ``ToolDefinition`` objects (registered on a new
    ``ToolManager(config)``), or a function without arguments returning either.

    Raises:
        ConfigurationError: a malformed spec, a module or attribute that cannot be imported (or whose
            import or factory raises), or an attribute of another kind.
    """
    allowed = (
        "'module:attribute' naming a ToolManager, a list of @tool functions, or a function returning one"
    )
    module_name, separator, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not separator or not module_name.strip() or not attribute.strip():
        raise ConfigurationError("tools", spec, allowed)
    try:
        module = importlib.import_module(module_name.strip())
    except ImportError as error:
        raise ConfigurationError(
            "tools", spec, allowed, detail=f"cannot import {module_name!r}: {error}"
        ) from None
    except Exception as error:  # the application's module failed (not a bug of this library)
        raise ConfigurationError(
            "tools", spec, allowed, detail=f"importing {module_name!r} raised {_raised(error)}"
        ) from error
    value: Any = module
    for part in attribute.strip().split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigurationError(
                "tools", spec, allowed, detail=f"{module_name} has no {attribute!r}"
            ) from None
    if callable(value) and not isinstance(value, ToolManager) and get_tool_definition(value) is None:
        if inspect.iscoroutinefunction(value):
            raise ConfigurationError(
                "tools", spec, allowed, detail="the factory must be a plain (sync) function"
            )
        try:
            value = value()
        except Exception as error:  # the application's factory failed (not a bug of this library)
            raise ConfigurationError(
                "tools", spec, allowed, detail=f"{attribute.strip()}() raised {_raised(error)}"
            ) from error
    if isinstance(value, ToolManager):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        manager = ToolManager(config)
        for item in value:
            if isinstance(item, ToolDefinition):
                manager.register_tool(item)
                continue
            if get_tool_definition(item) is None:
                raise ConfigurationError("tools", spec, allowed, detail=f"{item!r} is not a @tool function")
            manager.register_tool(item)
        return manager
    raise ConfigurationError("tools", spec, allowed, detail=f"got a {type(value).__name__}")


def _raised(error: Exception) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ------------------------------------------------------------------------------------------- running


async def run_mcp_server(
    config: ContextManagerConfig,
    *,
    user_id: str | None = None,
    tools: ToolManager | None = None,
    http_port: int | None = None,
    stop_on_sigterm: bool = False,
) -> None:
    """Open the memory, then serve MCP over stdio (default) or streamable HTTP on 127.0.0.1:``http_port``.

    The memory is opened before the transport starts, so a locked or damaged store fails here with a clear
    error instead of a dropped session. Over HTTP each call is answered with a JSON response (a shutdown
    waits for the calls in flight, at most :data:`HTTP_SHUTDOWN_GRACE` seconds). Returns when the client
    disconnects (stdio); raises ``CancelledError`` or ``KeyboardInterrupt`` on interruption, after closing
    the memory too (cancel the task running it, e.g. from
    ``loop.add_signal_handler(signal.SIGTERM, task.cancel)``, to stop it).

    The process's signals stay the application's: with ``stop_on_sigterm=True`` (what ``context-manager
    mcp serve`` passes) SIGTERM stops the server as a closed stdin does and it returns, the memory closed,
    with one ``stopped (SIGTERM)`` line on stderr; the handler is installed only on the main thread while
    SIGTERM has its default action, and the previous one is restored on return.

    Raises:
        ConfigurationError: ``http_port`` is in use (or not allowed) on 127.0.0.1.
        StorageError: the memory store cannot be opened (locked by another process, damaged ...).
        MissingDependencyError: the ``mcp`` extra is not installed.
        InvalidArgumentError: a ``user_id`` the memory refuses (checked before the store is opened).
    """
    _require_mcp()  # before the store is opened (or created): without the extra nothing can serve
    _check_server_user(user_id)
    if http_port is not None:
        _check_port_free(http_port)
    memory = MemoryManager(config)
    await memory.initialize()
    try:
        server = create_mcp_server(config, user_id=user_id, memory=memory, tools=tools)
        where = f"http://127.0.0.1:{http_port}/mcp" if http_port is not None else "stdio"
        place = "on PostgreSQL" if config.memory_backend == "postgres" else f"at {memory.storage_path}"
        print(  # stderr: stdout is the protocol channel on stdio
            f"context-manager MCP server: memory {place}, user "
            f"{user_id if user_id is not None else '(default)'}, "
            f"{len(tools) if tools is not None else 0} application tools, serving on {where}",
            file=sys.stderr,
            flush=True,
        )
        serving = _serve_stdio(server) if http_port is None else _serve_http(server, http_port)
        if not stop_on_sigterm:
            await serving
        elif await _served_until_sigterm(serving):
            print("context-manager MCP server: stopped (SIGTERM)", file=sys.stderr, flush=True)
    finally:
        await memory.cleanup()


async def _served_until_sigterm(serving: Coroutine[Any, Any, None]) -> bool:
    """Run ``serving`` until it returns or the process gets SIGTERM; whether SIGTERM came.

    MCP clients stop a stdio server that does not exit on its own with SIGTERM (the specification's
    shutdown: close stdin, then SIGTERM), as containers and service managers stop an HTTP one: it killed
    the process before the memory was closed, losing the access counts and times its searches batch in
    memory (a memory used every day then looked unused to a cleanup by age). Now SIGTERM stops the server
    as a closed stdin does, and the caller closes the memory. Uvicorn (HTTP) takes SIGTERM over while it
    serves (``signal.signal``), shuts down, restores this handler and raises the signal again: it lands
    here once the server has stopped. Only on the main thread (where signals arrive) and while SIGTERM has
    its default action (an application's own handler stays); elsewhere as before.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(serving)
    received: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:  # on the main thread, which runs the loop
        received.append(signum)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            loop.call_soon_threadsafe(task.cancel)

    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        try:
            await task
        except asyncio.CancelledError:
            if not received:  # this call was cancelled (Ctrl-C), not stopped by SIGTERM
                raise
        return bool(received)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _check_port_free(port: int) -> None:
    """Refuse a port another program listens on, before the banner says "serving on" it.

    uvicorn found it at its start, after the banner, and ended the process with its own log line and exit
    code 3.
    """
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise ConfigurationError(
                "http",
                port,
                "a port free on 127.0.0.1",
                detail=f"127.0.0.1:{port}: {error.strerror or error}",
            ) from None


class _StdinLines:
    """The process's standard input as an async iterator of lines, read by a daemon thread.

    The SDK's stdio transport reads stdin in a worker thread that a cancelled server waits for, so Ctrl-C
    did nothing until the client closed stdin. Here the blocking read is a daemon thread that a cancelled
    server leaves behind: waiting for the next line is an ``asyncio.Queue`` get, which cancels at once.
    As the SDK does, fd 0 then points at the null device (handlers and their children read EOF instead of
    protocol bytes) and is restored afterwards; the private descriptor the thread reads is never closed,
    since the thread may still be blocked on it.

    Closing stdin is how a client ends the session (the MCP shutdown), also right after its last request:
    the SDK cancelled the calls still running at the end of input and answered them "Connection closed",
    though a ``memory_add`` cancelled so may have stored part of its memory. The end of input waits
    instead until every request read has been answered (or cancelled by the client), at most
    :data:`STDIN_CLOSED_GRACE` seconds, which :class:`_AnswerWatch` tells from the answers written.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._unanswered: set[int | str | None] = set()  # ids of the requests read, not answered yet
        self._all_answered = asyncio.Event()
        self._all_answered.set()
        self._fd = os.dup(0)  # not inheritable: children never get the protocol channel
        self._restore: int | None = None
        self._write_stream: Any = None
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_RDONLY)
            try:
                os.dup2(null, 0)
                self._restore = self._fd
            finally:
                os.close(null)
        threading.Thread(target=self._read, name="context-manager-mcp-stdin", daemon=True).start()

    def _read(self) -> None:
        pending = b""
        try:
            while chunk := os.read(self._fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._put(line + b"\n")
        except OSError:
            pass  # the channel is gone: end of input
        finally:
            if pending:
                self._put(pending)
            self._put(None)

    def _put(self, item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def restore(self) -> None:
        """Point fd 0 back at the channel (the thread keeps its own descriptor)."""
        if self._restore is not None:
            with contextlib.suppress(OSError):
                os.dup2(self._restore, 0)
            self._restore = None

    def answer_errors(self, write_stream: Any) -> None:
        """Answer lines that are no JSON-RPC message through ``write_stream`` (the SDK drops them)."""
        self._write_stream = write_stream

    def answered(self, request_id: Any) -> None:
        """A request's answer was written (:class:`_AnswerWatch`), or the client cancelled it."""
        self._unanswered.discard(_request_key(request_id))
        if not self._unanswered:
            self._all_answered.set()

    def _read_message(self, message: Any) -> None:
        """Note a request read (its answer is waited for at the end of input), or a cancellation."""
        import mcp_types

        if isinstance(message, mcp_types.JSONRPCRequest):
            self._unanswered.add(_request_key(message.id))
            self._all_answered.clear()
        elif isinstance(message, mcp_types.JSONRPCNotification) and message.method == _CANCELLED:
            self.answered((message.params or {}).get("requestId"))  # never answered (a MUST NOT)

    async def _drain(self) -> None:
        """At the end of input: wait (bounded) until the requests in flight have been answered."""
        if self._all_answered.is_set():
            return
        try:
            async with asyncio.timeout(STDIN_CLOSED_GRACE):
                await self._all_answered.wait()
        except TimeoutError:
            logger.warning(
                "stdin closed: %d calls still running after %g s are cancelled",
                len(self._unanswered),
                STDIN_CLOSED_GRACE,
            )

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self._queue.get()
            if line is None:
                await self._drain()
                self._queue.put_nowait(None)  # the end stays the end
                raise StopAsyncIteration
            text = line.decode("utf-8", errors="replace")
            write_stream = self._write_stream
            if write_stream is None:
                return text
            if not text.strip():
                continue  # a blank line: nothing to parse, nothing to answer
            checked = _checked_line(text)
            if isinstance(checked, tuple):
                checked_text, message = checked
                self._read_message(message)
                return checked_text
            from mcp.shared.message import SessionMessage

            await write_stream.send(SessionMessage(checked))


STDIN_CLOSED_GRACE = 30.0
"""Seconds a stdio server whose client closed stdin waits for the calls still running to answer."""
_CANCELLED = "notifications/cancelled"


def _request_key(request_id: Any) -> int | str | None:
    """A request id as the SDK correlates them (``"7"`` and ``7`` are one id)."""
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    if isinstance(request_id, str):
        with contextlib.suppress(ValueError):
            return int(request_id)
    return request_id


class _AnswerWatch:
    """The server's write stream, telling ``lines`` which requests have been answered.

    An answer counts once the transport's writer has taken it (the stream has no buffer): it is written
    even when the input ends right after.
    """

    def __init__(self, inner: Any, lines: _StdinLines) -> None:
        self._inner = inner
        self._lines = lines

    async def send(self, item: Any) -> None:
        import mcp_types

        await self._inner.send(item)
        message = getattr(item, "message", None)
        if isinstance(message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            self._lines.answered(message.id)

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def clone(self) -> _AnswerWatch:
        return _AnswerWatch(self._inner.clone(), self._lines)

    async def __aenter__(self) -> _AnswerWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _checked_line(text: str) -> tuple[str, JSONRPCMessage] | JSONRPCError:
    r"""``(text, message)`` for a JSON-RPC message (repaired, see below), else the JSON-RPC error answer.

    Invalid JSON is a parse error (-32700, id null); JSON that is no request, notification or response an
    invalid request (-32600, with its id when it has a usable one). MCP has no batches: an array is invalid.
    A string escape of a lone UTF-16 surrogate (``"\ud83d"``, half an emoji, from a client that cut a
    text) is valid JSON but no Unicode, which the SDK refuses: it becomes U+FFFD, as an invalid UTF-8 byte
    does when the line is decoded.
    """
    import mcp_types

    try:
        return text, mcp_types.jsonrpc_message_adapter.validate_json(text, by_name=False)
    except ValueError:  # pydantic's ValidationError is a ValueError
        pass
    try:
        value = json.loads(text)
    except ValueError:
        error = mcp_types.ErrorData(code=mcp_types.PARSE_ERROR, message="Parse error")
        return mcp_types.JSONRPCError(jsonrpc="2.0", id=None, error=error)
    if "\\u" in text:  # only an escape can give a lone surrogate (the line was decoded with "replace")
        repaired = _without_lone_surrogates(value)
        if repaired != value:
            line = json.dumps(repaired, ensure_ascii=False)
            try:
                return line, mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValueError:
                pass
    request_id = value.get("id") if isinstance(value, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        request_id = None
    what = (
        "a batch (an array); MCP takes one message per line"
        if isinstance(value, list)
        else "not a JSON-RPC 2.0 request, notification or response"
    )
    error = mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST, message=f"Invalid Request: {what}")
    return mcp_types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` (parsed JSON) with each lone surrogate in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(key): _without_lone_surrogates(item) for key, item in value.items()}
    return value


async def _serve_stdio(server: Any) -> None:
    """Serve ``server`` over stdio so that cancelling it (Ctrl-C) never waits for the next line of stdin."""
    from mcp.server.stdio import stdio_server

    lowlevel = getattr(server, "_lowlevel_server", None)
    if lowlevel is None:  # pragma: no cover - an SDK without it: its own transport
        await server.run_stdio_async()  # ours falls back to the SDK's own then
        return
    lines = _StdinLines()
    try:
        async with stdio_server(stdin=cast(Any, lines)) as (read_stream, write_stream):
            lines.answer_errors(write_stream)
            answers = _AnswerWatch(write_stream, lines)
            await lowlevel.run(read_stream, cast(Any, answers), lowlevel.create_initialization_options())
    except* BrokenPipeError:
        # the client is gone (nobody reads stdout): the end of the session, as a closed stdin is
        logger.info("stdout closed by the client: stopping")
    finally:
        lines.restore()


HTTP_SHUTDOWN_GRACE = 30
"""Seconds an HTTP server stopping (SIGTERM) waits for the calls in flight to answer; then they are cut."""


async def _serve_http(server: Any, port: int) -> None:
    """Serve ``server`` over streamable HTTP on 127.0.0.1:``port`` until uvicorn stops (SIGTERM, Ctrl-C).

    Calls are answered with JSON responses, not event streams: on SIGTERM uvicorn waits for a response in
    progress, while sse-starlette ends every event stream at once (the call in flight was never answered).
    That wait is bounded by :data:`HTTP_SHUTDOWN_GRACE`: uvicorn's own default waits for as long as a call
    runs, so a call that never ends (a lock, a tool with a long timeout) kept the server from stopping.
    """
    import uvicorn

    app = server.streamable_http_app(json_response=True, host="127.0.0.1")
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level=server.settings.log_level.lower(),
        timeout_graceful_shutdown=HTTP_SHUTDOWN_GRACE,
    )
    await uvicorn.Server(config).serve()


def _version() -> str:
    from context_manager import __version__

    return __version__


def resolve_app_dir(app_dir: str | os.PathLike[str] | None) -> None:
    """Put ``app_dir`` (default: the working directory) first on ``sys.path`` for ``--tools`` imports."""
    directory = str(Path(app_dir).resolve()) if app_dir is not None else os.getcwd()
    if directory not in sys.path:
        sys.path.insert(0, directory)
