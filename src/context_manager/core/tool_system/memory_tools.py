"""Built-in, opt-in tools that let a model search and extend its own memory.

``register_memory_tools(tool_manager, memory_manager)`` registers two tools of category ``MEMORY``:

* ``memory_search(query, limit=5, tags=None)`` - the most relevant memories, best first, as
  ``{"id", "content", "score", "tags", "importance", "created_at"}`` dicts;
* ``memory_add(content, importance=0.5, tags=None)`` - stores a fact and returns ``{"id", "tier"}``.

Nothing is registered unless you call it. Both tools run with the manager's normal checks (the default
permission is ``STANDARD``; pass ``permission=`` to require approval); both act in one ``user_id``
namespace, fixed at registration, so a model can never reach another user's memories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from context_manager.core.memory.validation import MAX_TAG_CHARS
from context_manager.core.tool_system.definition import ToolCategory, ToolDefinition, ToolPermission

if TYPE_CHECKING:
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.tool_system.manager import ToolManager

__all__ = ["MEMORY_TOOL_NAMES", "register_memory_tools"]

MEMORY_TOOL_NAMES = ("memory_search", "memory_add")
"""Names of the tools :func:`register_memory_tools` registers."""

SearchLimit = Annotated[int, Field(ge=1, le=50)]
Importance = Annotated[float, Field(ge=0.0, le=1.0)]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]
"""A tag as the memory accepts it (the schema tells the model; a bad one is ``invalid_arguments``)."""
Fact = Annotated[str, Field(min_length=1)]


def register_memory_tools(
    tool_manager: ToolManager,
    memory_manager: MemoryManager,
    *,
    user_id: str | None = None,
    permission: ToolPermission | str = ToolPermission.STANDARD,
    replace: bool = False,
) -> list[ToolDefinition]:
    """Register ``memory_search`` and ``memory_add`` on ``tool_manager``, backed by ``memory_manager``.

    Args:
        tool_manager: Where to register the tools.
        memory_manager: The memory they read and write (must be initialized before the tools run).
        user_id: The memory namespace both tools use (None: the default namespace).
        permission: Permission of both tools (``STANDARD`` by default: they run under the default policy).
        replace: Replace tools already registered under these names.

    Returns:
        The two definitions, search first.

    Raises:
        ToolRegistrationError: a name is taken (without ``replace=True``) or ``permission`` is invalid;
            nothing is registered.
        InvalidMemoryError: a ``user_id`` the memory refuses (every call of both tools would fail on it);
            nothing is registered.
    """
    from context_manager.core.memory.validation import check_user

    check_user(user_id, allow_all=False)

    async def memory_search(
        query: str, limit: SearchLimit = 5, tags: list[Tag] | None = None
    ) -> list[dict[str, Any]]:
        """Search long-term memory for facts relevant to a query; best matches first.

        Args:
            query: What to look for, in plain words.
            limit: How many memories to return at most.
            tags: Only memories carrying at least one of these tags (none or empty: every memory).
        """
        # a model fills an optional array with [] when it means no filter (not "no memory matches")
        found = await memory_manager.search_memory(query, limit, tags=tags or None, user_id=user_id)
        return [
            {
                "id": memory.id,
                "content": memory.content,
                "score": memory.score,
                "tags": list(memory.tags),
                "importance": memory.importance,
                "created_at": memory.created_at,
            }
            for memory in found
        ]

    async def memory_add(
        content: Fact, importance: Importance = 0.5, tags: list[Tag] | None = None
    ) -> dict[str, Any]:
        """Remember a fact for later conversations.

        Args:
            content: The fact to remember, self-contained.
            importance: 0 (trivial) to 1 (critical); important facts are kept longest.
            tags: Labels to find the fact by later.
        """
        memory = await memory_manager.add_memory(
            content, importance=importance, tags=tags, user_id=user_id, source="tool"
        )
        return {"id": memory.id, "tier": memory.tier.value}

    definitions = [
        ToolDefinition(
            name=function.__name__,
            function=function,
            category=ToolCategory.MEMORY,
            tags=("memory",),
            permission=permission,  # type: ignore[arg-type]  # parsed in __post_init__
        )
        for function in (memory_search, memory_add)
    ]
    if not replace:
        for definition in definitions:
            if definition.name in tool_manager:
                tool_manager.register_tool(definition)  # raises the duplicate-name error, nothing added
    return [tool_manager.register_tool(definition, replace=replace) for definition in definitions]
