"""Memory: three durable tiers (short, medium, long) with ranked full-text and vector search.

The interface of the package::

    from context_manager.core.memory import MemoryManager, Memory, MemoryTier, RankingWeights, ALL_USERS

Submodules load lazily, so importing this package does not import sqlite3 or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "ALL_USERS": "context_manager.core.memory.manager",
    "MemoryManager": "context_manager.core.memory.manager",
    "Memory": "context_manager.core.memory.models",
    "MemoryTier": "context_manager.core.memory.models",
    "RankingWeights": "context_manager.core.memory.ranking",
    "MemoryStore": "context_manager.core.memory.store",
    "InMemoryStore": "context_manager.core.memory.in_memory_store",
    "FileStore": "context_manager.core.memory.file_store",
    "JsonlLog": "context_manager.core.memory.file_store",
    "SQLiteStore": "context_manager.core.memory.sqlite_store",
    "ColumnWeights": "context_manager.core.memory.index",
    "Embedder": "context_manager.core.memory.embeddings",
    "HashingEmbedder": "context_manager.core.memory.embeddings",
    "SentenceTransformerEmbedder": "context_manager.core.memory.embeddings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'context_manager.core.memory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    # ruff: noqa: F401 - re-exported lazily through __all__
    from context_manager.core.memory.embeddings import Embedder, HashingEmbedder, SentenceTransformerEmbedder
    from context_manager.core.memory.file_store import FileStore, JsonlLog
    from context_manager.core.memory.in_memory_store import InMemoryStore
    from context_manager.core.memory.index import ColumnWeights
    from context_manager.core.memory.manager import ALL_USERS, MemoryManager
    from context_manager.core.memory.models import Memory, MemoryTier
    from context_manager.core.memory.ranking import RankingWeights
    from context_manager.core.memory.sqlite_store import SQLiteStore
    from context_manager.core.memory.store import MemoryStore
