"""context-manager: context windows that never overflow, memory that finds the right thing, safe tools.

The public names below load lazily on first use, so ``import context_manager`` stays fast::

    from context_manager import EnhancedContextManager, ContextManagerConfig, ContextManagerError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "ContextManagerError": "context_manager.core.errors",
    "ConfigurationError": "context_manager.core.errors",
    "MissingDependencyError": "context_manager.core.errors",
    "InvalidArgumentError": "context_manager.core.errors",
    "InvalidRoleError": "context_manager.core.errors",
    "InvalidPriorityError": "context_manager.core.errors",
    "InvalidMessageError": "context_manager.core.errors",
    "ToolCallPairingError": "context_manager.core.errors",
    "InvalidMemoryError": "context_manager.core.errors",
    "InvalidTaskError": "context_manager.core.errors",
    "ContextBudgetError": "context_manager.core.errors",
    "LifecycleError": "context_manager.core.errors",
    "MonitoringError": "context_manager.core.errors",
    "NotFoundError": "context_manager.core.errors",
    "MemoryNotFoundError": "context_manager.core.errors",
    "ToolNotFoundError": "context_manager.core.errors",
    "TaskNotFoundError": "context_manager.core.errors",
    "StorageError": "context_manager.core.errors",
    "ConversationAccessError": "context_manager.core.errors",
    "ConversationConflictError": "context_manager.core.errors",
    "StorageLockedError": "context_manager.core.errors",
    "StorageCorruptedError": "context_manager.core.errors",
    "ToolError": "context_manager.core.errors",
    "ToolRegistrationError": "context_manager.core.errors",
    "ToolTimeoutError": "context_manager.core.errors",
    "SummarizerError": "context_manager.core.errors",
    "SummarizerRequestError": "context_manager.core.errors",
    "SummarizerUnavailableError": "context_manager.core.errors",
    "ConcurrencyError": "context_manager.core.errors",
    "ControllerLoopError": "context_manager.core.errors",
    "ControllerStoppedError": "context_manager.core.errors",
    "DuplicateTaskError": "context_manager.core.errors",
    "QueueFullError": "context_manager.core.errors",
    "TaskTimeoutError": "context_manager.core.errors",
    "TaskCancelledError": "context_manager.core.errors",
    "InvalidSettingError": "context_manager.core.errors",
    "InvalidMetricError": "context_manager.core.errors",
    "InvalidHealthCheckError": "context_manager.core.errors",
    # configuration, messages, tokens
    "ContextManagerConfig": "context_manager.core.config",
    "Message": "context_manager.core.messages",
    "Role": "context_manager.core.messages",
    "Priority": "context_manager.core.messages",
    "ToolCall": "context_manager.core.messages",
    "TokenCounter": "context_manager.core.tokens",
    "ExactTokenCounter": "context_manager.core.tokens",
    "count_tokens": "context_manager.core.tokens",
    "get_token_counter": "context_manager.core.tokens",
    # context window, compression, provider formats, the manager
    "EnhancedContextManager": "context_manager.core.enhanced_context_manager",
    "SyncContextManager": "context_manager.sync",
    "ContextWindow": "context_manager.core.context_window",
    "CompressionRecord": "context_manager.core.context_window",
    "Summarizer": "context_manager.core.compression",
    "ExtractiveSummarizer": "context_manager.core.compression",
    "OpenAISummarizer": "context_manager.core.summarizers.openai_chat",
    "AnthropicSummarizer": "context_manager.core.summarizers.anthropic_messages",
    "SummarizerGuard": "context_manager.core.summarizers.guard",
    "LLMSummarizer": "context_manager.core.summarizers.llm",
    "to_openai_messages": "context_manager.core.provider_formats",
    "to_openai_responses_input": "context_manager.core.provider_formats",
    "to_anthropic_messages": "context_manager.core.provider_formats",
    "parse_tool_calls": "context_manager.core.provider_formats",
    # memory
    "MemoryManager": "context_manager.core.memory.manager",
    "ALL_USERS": "context_manager.core.memory.manager",
    "Memory": "context_manager.core.memory.models",
    "MemoryTier": "context_manager.core.memory.models",
    "MemoryStore": "context_manager.core.memory.store",
    "MemoryBackend": "context_manager.core.memory.backend",
    "RankingWeights": "context_manager.core.memory.ranking",
    # embeddings (the vector channel of memory search)
    "Embedder": "context_manager.core.memory.embeddings",
    "SentenceTransformerEmbedder": "context_manager.core.memory.embeddings",
    # operations: monitoring, concurrency
    "PerformanceMonitor": "context_manager.core.performance_monitor",
    "PerformanceMetrics": "context_manager.core.performance_monitor",
    "PerformanceThresholds": "context_manager.core.performance_monitor",
    "PrometheusCollector": "context_manager.core.performance_monitor",
    "monitored_operation": "context_manager.core.performance_monitor",
    "warming_up": "context_manager.core.warmup",
    "configure_opentelemetry": "context_manager.core.telemetry",
    "ConcurrencyController": "context_manager.core.async_operations",
    "TaskStatus": "context_manager.core.async_operations",
    "ControllerStats": "context_manager.core.async_operations",
    "HealthChecker": "context_manager.core.health_checker",
    "CheckOutcome": "context_manager.core.health_checker",
    "HealthState": "context_manager.core.health_checker",
    "HealthStatus": "context_manager.core.health_checker",
    "DiagnosticReport": "context_manager.core.health_checker",
    "CheckResult": "context_manager.core.health_checker",
    "HealthThresholds": "context_manager.core.health_checker",
    # tools
    "tool": "context_manager.core.tool_system",
    "ToolCategory": "context_manager.core.tool_system",
    "ToolPermission": "context_manager.core.tool_system",
    "ToolDefinition": "context_manager.core.tool_system",
    "ToolManager": "context_manager.core.tool_system",
    "ToolRegistry": "context_manager.core.tool_system",
    "ToolResult": "context_manager.core.tool_system",
    "ToolErrorType": "context_manager.core.tool_system",
    "PermissionPolicy": "context_manager.core.tool_system",
    "register_memory_tools": "context_manager.core.tool_system",
    # the MCP server (the SDK itself loads only when a server is created; the 'mcp' extra)
    "create_mcp_server": "context_manager.mcp_server",
    "run_mcp_server": "context_manager.mcp_server",
}

# Written out (not computed from _EXPORTS) so type checkers see the re-exports; a test keeps the two equal.
__all__ = [
    "__version__",
    "ALL_USERS",
    "AnthropicSummarizer",
    "CheckOutcome",
    "CheckResult",
    "CompressionRecord",
    "ConcurrencyController",
    "ConcurrencyError",
    "ConfigurationError",
    "ContextBudgetError",
    "ContextManagerConfig",
    "ContextManagerError",
    "ContextWindow",
    "ControllerLoopError",
    "ControllerStats",
    "ControllerStoppedError",
    "ConversationAccessError",
    "ConversationConflictError",
    "DiagnosticReport",
    "DuplicateTaskError",
    "Embedder",
    "EnhancedContextManager",
    "ExactTokenCounter",
    "ExtractiveSummarizer",
    "HealthChecker",
    "HealthState",
    "HealthStatus",
    "HealthThresholds",
    "InvalidArgumentError",
    "InvalidHealthCheckError",
    "InvalidMemoryError",
    "InvalidMessageError",
    "InvalidMetricError",
    "InvalidPriorityError",
    "InvalidRoleError",
    "InvalidSettingError",
    "InvalidTaskError",
    "LLMSummarizer",
    "LifecycleError",
    "Memory",
    "MemoryBackend",
    "MemoryManager",
    "MemoryNotFoundError",
    "MemoryStore",
    "MemoryTier",
    "Message",
    "MissingDependencyError",
    "MonitoringError",
    "NotFoundError",
    "OpenAISummarizer",
    "PerformanceMetrics",
    "PerformanceMonitor",
    "PerformanceThresholds",
    "PermissionPolicy",
    "Priority",
    "PrometheusCollector",
    "QueueFullError",
    "RankingWeights",
    "Role",
    "SentenceTransformerEmbedder",
    "StorageCorruptedError",
    "StorageError",
    "StorageLockedError",
    "Summarizer",
    "SummarizerError",
    "SummarizerGuard",
    "SummarizerRequestError",
    "SummarizerUnavailableError",
    "SyncContextManager",
    "TaskCancelledError",
    "TaskNotFoundError",
    "TaskStatus",
    "TaskTimeoutError",
    "TokenCounter",
    "ToolCall",
    "ToolCallPairingError",
    "ToolCategory",
    "ToolDefinition",
    "ToolError",
    "ToolErrorType",
    "ToolManager",
    "ToolNotFoundError",
    "ToolPermission",
    "ToolRegistrationError",
    "ToolRegistry",
    "ToolResult",
    "ToolTimeoutError",
    "configure_opentelemetry",
    "count_tokens",
    "create_mcp_server",
    "get_token_counter",
    "monitored_operation",
    "parse_tool_calls",
    "register_memory_tools",
    "run_mcp_server",
    "to_anthropic_messages",
    "to_openai_messages",
    "to_openai_responses_input",
    "tool",
    "warming_up",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'context_manager' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from context_manager.core.async_operations import ConcurrencyController, ControllerStats, TaskStatus
    from context_manager.core.compression import ExtractiveSummarizer, Summarizer
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.context_window import CompressionRecord, ContextWindow
    from context_manager.core.enhanced_context_manager import EnhancedContextManager
    from context_manager.core.errors import (
        ConcurrencyError,
        ConfigurationError,
        ContextBudgetError,
        ContextManagerError,
        ControllerLoopError,
        ControllerStoppedError,
        ConversationAccessError,
        ConversationConflictError,
        DuplicateTaskError,
        InvalidArgumentError,
        InvalidHealthCheckError,
        InvalidMemoryError,
        InvalidMessageError,
        InvalidMetricError,
        InvalidPriorityError,
        InvalidRoleError,
        InvalidSettingError,
        InvalidTaskError,
        LifecycleError,
        MemoryNotFoundError,
        MissingDependencyError,
        NotFoundError,
        QueueFullError,
        StorageCorruptedError,
        StorageError,
        StorageLockedError,
        SummarizerError,
        SummarizerRequestError,
        SummarizerUnavailableError,
        TaskCancelledError,
        TaskNotFoundError,
        TaskTimeoutError,
        ToolCallPairingError,
        ToolError,
        ToolNotFoundError,
        ToolRegistrationError,
        ToolTimeoutError,
    )
    from context_manager.core.health_checker import (
        CheckOutcome,
        CheckResult,
        DiagnosticReport,
        HealthChecker,
        HealthState,
        HealthStatus,
        HealthThresholds,
    )
    from context_manager.core.memory.backend import MemoryBackend
    from context_manager.core.memory.embeddings import Embedder, SentenceTransformerEmbedder
    from context_manager.core.memory.manager import ALL_USERS, MemoryManager
    from context_manager.core.memory.models import Memory, MemoryTier
    from context_manager.core.memory.ranking import RankingWeights
    from context_manager.core.memory.store import MemoryStore
    from context_manager.core.messages import Message, Priority, Role, ToolCall
    from context_manager.core.performance_monitor import (
        PerformanceMetrics,
        PerformanceMonitor,
        PerformanceThresholds,
        PrometheusCollector,
        monitored_operation,
    )
    from context_manager.core.provider_formats import (
        parse_tool_calls,
        to_anthropic_messages,
        to_openai_messages,
        to_openai_responses_input,
    )
    from context_manager.core.summarizers.anthropic_messages import AnthropicSummarizer
    from context_manager.core.summarizers.guard import SummarizerGuard
    from context_manager.core.summarizers.llm import LLMSummarizer
    from context_manager.core.summarizers.openai_chat import OpenAISummarizer
    from context_manager.core.telemetry import configure_opentelemetry
    from context_manager.core.tokens import ExactTokenCounter, TokenCounter, count_tokens, get_token_counter
    from context_manager.core.tool_system import (
        PermissionPolicy,
        ToolCategory,
        ToolDefinition,
        ToolErrorType,
        ToolManager,
        ToolPermission,
        ToolRegistry,
        ToolResult,
        register_memory_tools,
        tool,
    )
    from context_manager.core.warmup import warming_up
    from context_manager.mcp_server import create_mcp_server, run_mcp_server
    from context_manager.sync import SyncContextManager
