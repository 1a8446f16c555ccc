"""The :class:`MemoryStore` protocol: what one tier's embedded storage must do.

Embedded stores are synchronous and hold one tier each (:class:`~.in_memory_store.InMemoryStore`,
:class:`~.file_store.FileStore`, :class:`~.sqlite_store.SQLiteStore`);
:class:`~context_manager.core.memory.local_backend.LocalBackend` runs the blocking ones off the event loop,
ranks their candidates together and moves memories between them. Storage shared by many processes
(PostgreSQL) implements the tier-level :class:`~context_manager.core.memory.backend.MemoryBackend` instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from context_manager.core.memory.models import Memory, MemoryTier

__all__ = ["CandidateFilter", "MemoryStore", "TurnKey"]

TurnKey = tuple[str | None, str, int]
"""Identifies a conversation turn: ``(user_id, session_id, turn_index)``."""


class CandidateFilter(Protocol):
    """Predicates a search applies inside its candidate query (superseded memories are always left out)."""

    @property
    def tags(self) -> frozenset[str] | None:
        """Only memories carrying at least one of these tags."""
        ...

    @property
    def min_importance(self) -> float | None:
        """Only memories at least this important."""
        ...

    @property
    def since(self) -> float | None:
        """Only memories created at or after this time."""
        ...

    @property
    def until(self) -> float | None:
        """Only memories created at or before this time."""
        ...


@runtime_checkable
class MemoryStore(Protocol):
    """Storage of one memory tier with a BM25 full-text index.

    Memories returned by a store must be treated as read-only by callers (copy before changing).
    """

    tier: MemoryTier
    """The tier this store holds."""

    def put(self, memories: Sequence[Memory]) -> None:
        """Insert or replace memories (durably, for a durable store) before returning."""
        ...

    def get(self, memory_id: str) -> Memory | None:
        """Return the memory with this id, or ``None``."""
        ...

    def get_many(self, ids: Sequence[str]) -> dict[str, Memory]:
        """Return the memories among ``ids`` that this store holds, by id."""
        ...

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete memories; return the ids that were present."""
        ...

    def search(self, match: str, limit: int) -> list[tuple[Memory, float]]:
        """Run a safe FTS5 MATCH expression; return ``(memory, bm25)`` best first (bm25 > 0)."""
        ...

    def search_weighted(self, parts: Sequence[tuple[str, float]], limit: int) -> list[tuple[Memory, float]]:
        """Rank by the summed ``factor x bm25`` of ``(match, factor)`` parts, best first."""
        ...

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many memories contain each indexed (stemmed) term."""
        ...

    def with_tags(self, tags: Sequence[str]) -> list[Memory]:
        """Return the memories carrying any of ``tags`` (exact tag match)."""
        ...

    def find_turns(self, keys: Sequence[TurnKey]) -> list[Memory]:
        """Return the memories that are the given conversation turns."""
        ...

    def touch(self, updates: Mapping[str, tuple[float, int]]) -> None:
        """Record ``id -> (last_accessed, access_count)`` for the ids this store holds."""
        ...

    def all(self) -> Iterator[Memory]:
        """Iterate over every memory in the store."""
        ...

    def count(self) -> int:
        """How many memories the store holds."""
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...
