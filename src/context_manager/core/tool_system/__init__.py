"""The tool system: define tools with ``@tool``, register and run them with :class:`ToolManager`.

::

    from context_manager.core.tool_system import ToolCategory, ToolManager, tool

    @tool(name="word_count", category=ToolCategory.ANALYSIS, cacheable=True)
    async def word_count(text: str) -> int:
        '''Count the words of a text (Google-style ``Args:`` give parameter descriptions).'''
        return len(text.split())

    manager = ToolManager()
    manager.register_tool(word_count)
    result = await manager.execute_tool("word_count", text="one two three")   # result.result == 3
"""

from __future__ import annotations

from context_manager.core.tool_system.cache import ToolResultCache
from context_manager.core.tool_system.definition import (
    ToolCategory,
    ToolDefinition,
    ToolPermission,
    get_tool_definition,
    tool,
)
from context_manager.core.tool_system.manager import ToolManager
from context_manager.core.tool_system.memory_tools import MEMORY_TOOL_NAMES, register_memory_tools
from context_manager.core.tool_system.permissions import (
    ApprovalCallback,
    PermissionDecision,
    PermissionPolicy,
)
from context_manager.core.tool_system.rate_limit import SlidingWindowRateLimiter
from context_manager.core.tool_system.registry import ToolRegistry
from context_manager.core.tool_system.results import ToolErrorType, ToolResult
from context_manager.core.tool_system.window_calls import execute_tool_calls_in_window

__all__ = [
    "MEMORY_TOOL_NAMES",
    "ApprovalCallback",
    "PermissionDecision",
    "PermissionPolicy",
    "SlidingWindowRateLimiter",
    "ToolCategory",
    "ToolDefinition",
    "ToolErrorType",
    "ToolManager",
    "ToolPermission",
    "ToolRegistry",
    "ToolResult",
    "ToolResultCache",
    "execute_tool_calls_in_window",
    "get_tool_definition",
    "register_memory_tools",
    "tool",
]
