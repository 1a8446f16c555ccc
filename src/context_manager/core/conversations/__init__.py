"""Persisted conversations: a context window's changes as append-only records, resumable anywhere.

The interface of the package::

    from context_manager.core.conversations import ConversationStore, ConversationInfo

``EnhancedContextManager(config, conversation_id="...")`` persists its window through a store: the SQLite
one (``conversations.sqlite3`` under ``storage_path``) or the PostgreSQL one (``memory_backend="postgres"``).
Submodules load lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "ConversationInfo": "context_manager.core.conversations.store",
    "ConversationRecord": "context_manager.core.conversations.store",
    "ConversationStore": "context_manager.core.conversations.store",
    "StoredConversation": "context_manager.core.conversations.store",
    "SQLiteConversationStore": "context_manager.core.conversations.sqlite_store",
    "PersistedConversation": "context_manager.core.conversations.persistence",
    "PostgresConversationStore": "context_manager.core.conversations.postgres_store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'context_manager.core.conversations' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    # ruff: noqa: F401 - re-exported lazily through __all__
    from context_manager.core.conversations.persistence import PersistedConversation
    from context_manager.core.conversations.postgres_store import PostgresConversationStore
    from context_manager.core.conversations.sqlite_store import SQLiteConversationStore
    from context_manager.core.conversations.store import (
        ConversationInfo,
        ConversationRecord,
        ConversationStore,
        StoredConversation,
    )
