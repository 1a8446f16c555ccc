"""Short-term store: memories in process with an in-memory SQLite FTS5 index.

The store itself keeps nothing on disk; when given a journal (the medium-term JSONL log) it writes a
record of every change to it, which is how the short-term tier survives a crash and a restart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from context_manager.core.memory.index import (
    ColumnWeights,
    FrequencyCache,
    create_fts_table,
    create_vocabulary_table,
    document_frequencies,
    fts_row,
    search_fts,
    search_fts_weighted,
)
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.store import CandidateFilter, TurnKey

__all__ = ["InMemoryStore", "IndexChange", "Journal"]

_TABLE = "memory_index"
_INSERT = f"INSERT INTO {_TABLE}(rowid, content, tags, context, date, owner) VALUES (?, ?, ?, ?, ?, ?)"
_DELETE = f"DELETE FROM {_TABLE} WHERE rowid = ?"


class Journal(Protocol):
    """Where a volatile store records its changes (see :class:`~.file_store.JsonlLog`)."""

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write records durably (flushed to the OS, fsync if configured) before returning."""
        ...


@dataclass(slots=True)
class IndexChange:
    """The rows a write takes out of and puts into a store's FTS5 index (:meth:`InMemoryStore.apply`).

    Staging updates the store's own records at once; the index rows change when the change is applied, which
    may happen on another thread (tokenizing megabytes of text takes a few hundred milliseconds).
    """

    deleted: list[int] = field(default_factory=list)
    """Row ids to delete."""
    added: list[tuple[int, Memory]] = field(default_factory=list)
    """Rows to insert: a row id and the memory it indexes."""
    chars: int = 0
    """Characters of text the change indexes or deletes (what applying it costs)."""
    recreate: ColumnWeights | None = None
    """Drop the index first and create it again with these weights (a rebuild)."""


class InMemoryStore:
    """Memories held in a dict, indexed by an in-memory FTS5 table.

    Args:
        tier: The tier this store holds (``SHORT`` by default).
        journal: Where to record changes so they survive a restart; ``None`` keeps nothing.
        weights: BM25 column weights of the index.
    """

    def __init__(
        self,
        tier: MemoryTier = MemoryTier.SHORT,
        *,
        journal: Journal | None = None,
        weights: ColumnWeights | None = None,
    ) -> None:
        self.tier = tier
        """The tier this store holds."""
        self._journal = journal
        self._memories: dict[str, Memory] = {}
        self._rowids: dict[str, int] = {}
        self._ids_by_rowid: dict[int, str] = {}
        self._next_rowid = 1
        self._tags: dict[str, set[str]] = {}
        self._turns: dict[TurnKey, str] = {}
        self._last_turns: dict[tuple[str | None, str], int] = {}
        self._superseded = 0
        self._chars = 0  # characters of text indexed (what checking or merging the index costs)
        self._connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        create_fts_table(self._connection, _TABLE, weights or ColumnWeights())
        self._vocabulary = create_vocabulary_table(self._connection, _TABLE)
        self._frequencies = FrequencyCache()

    # --- writing ---------------------------------------------------------------------------------

    def put(self, memories: Sequence[Memory], *, log: bool = True) -> None:
        """Insert or replace memories (their ``tier`` is set to this store's), journaled when ``log``."""
        if not memories:
            return
        for memory in memories:
            memory.tier = self.tier
        if log and self._journal is not None:
            self._journal.append([{"op": "put", "m": memory.to_dict()} for memory in memories])
        self.load(memories)

    def load(self, memories: Sequence[Memory]) -> None:
        """Index memories without journaling them (replay of the log, moves already recorded)."""
        self.apply(self.stage_load(memories))

    def stage_load(self, memories: Sequence[Memory]) -> IndexChange:
        """Hold memories (replacing those with the same id); return their index change, to :meth:`apply`.

        Until it is applied, the memories are held (``get``, ``count`` ...) but not found by a search.
        """
        change = IndexChange()
        for memory in memories:
            memory.tier = self.tier
            if memory.id in self._memories:
                self._unstage(memory.id, change)
            rowid = self._next_rowid
            self._next_rowid += 1
            self._memories[memory.id] = memory
            self._rowids[memory.id] = rowid
            self._ids_by_rowid[rowid] = memory.id
            for tag in memory.tags:
                self._tags.setdefault(tag, set()).add(memory.id)
            key = _turn_key(memory)
            if key is not None:
                self._turns[key] = memory.id
                session = (key[0], key[1])
                self._last_turns[session] = max(self._last_turns.get(session, key[2]), key[2])
            if memory.superseded_by is not None:
                self._superseded += 1
            change.added.append((rowid, memory))
            size = len(memory.content)
            change.chars += size
            self._chars += size
        self._frequencies.changed(len(change.added))
        return change

    def apply(self, change: IndexChange) -> None:
        """Write a staged change to the FTS5 index (safe on another thread while nothing else reads it)."""
        if change.recreate is not None:
            self._connection.execute(f"DROP TABLE IF EXISTS temp.{self._vocabulary}")
            self._connection.execute(f"DROP TABLE IF EXISTS {_TABLE}")
            create_fts_table(self._connection, _TABLE, change.recreate)
            self._vocabulary = create_vocabulary_table(self._connection, _TABLE)
        if change.deleted:
            self._connection.executemany(_DELETE, [(rowid,) for rowid in change.deleted])
        if change.added:
            rows = [(rowid, *fts_row(memory)) for rowid, memory in change.added]
            self._connection.executemany(_INSERT, rows)

    def delete(self, ids: Sequence[str], *, log: bool = True) -> list[str]:
        """Delete memories; journal the deletion when ``log`` (a move to another tier does not)."""
        present = [memory_id for memory_id in ids if memory_id in self._memories]
        if not present:
            return []
        if log and self._journal is not None:
            self._journal.append([{"op": "delete", "ids": present}])
        self.apply(self.stage_delete(present)[1])
        return present

    def stage_delete(self, ids: Sequence[str]) -> tuple[list[str], IndexChange]:
        """Drop the memories among ``ids`` held here; return their ids and the index change to apply."""
        present = [memory_id for memory_id in ids if memory_id in self._memories]
        change = IndexChange()
        for memory_id in present:
            self._unstage(memory_id, change)
        self._frequencies.changed(len(present))
        return present, change

    def touch(self, updates: Mapping[str, tuple[float, int]], *, log: bool = True) -> None:
        """Record access times and counts (one journal record for the whole batch)."""
        changed = []
        for memory_id, (last_accessed, access_count) in updates.items():
            memory = self._memories.get(memory_id)
            if memory is not None:
                memory.last_accessed = last_accessed
                memory.access_count = access_count
                changed.append([memory_id, last_accessed, access_count])
        if changed and log and self._journal is not None:
            self._journal.append([{"op": "touch", "u": changed}])

    def _unstage(self, memory_id: str, change: IndexChange) -> None:
        memory = self._memories.pop(memory_id)
        if memory.superseded_by is not None:
            self._superseded -= 1
        rowid = self._rowids.pop(memory_id)
        del self._ids_by_rowid[rowid]
        change.deleted.append(rowid)
        change.chars += len(memory.content)
        self._chars -= len(memory.content)
        for tag in memory.tags:
            holders = self._tags.get(tag)
            if holders is not None:
                holders.discard(memory_id)
                if not holders:
                    del self._tags[tag]
        key = _turn_key(memory)
        if key is not None and self._turns.get(key) == memory_id:
            del self._turns[key]

    # --- reading ---------------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory | None:
        """Return the memory with this id, or ``None``."""
        return self._memories.get(memory_id)

    def get_many(self, ids: Sequence[str]) -> dict[str, Memory]:
        """Return the memories among ``ids`` held here, by id."""
        found = {}
        for memory_id in ids:
            memory = self._memories.get(memory_id)
            if memory is not None:
                found[memory_id] = memory
        return found

    def search(
        self, match: str, limit: int, *, filters: CandidateFilter | None = None
    ) -> list[tuple[Memory, float]]:
        """Run a safe FTS5 MATCH expression; return ``(memory, bm25)`` best first.

        With ``filters`` (or superseded memories present) every match is scored and filtered before the
        limit: the tier is bounded, and a filter applied after a fixed top-N would miss matches.
        """
        if not self._memories:
            return []
        if filters is None and not self._superseded:
            return [
                (self._memories[self._ids_by_rowid[rowid]], score)
                for rowid, score in search_fts(self._connection, _TABLE, match, limit)
            ]
        found = [
            (self._memories[self._ids_by_rowid[rowid]], score)
            for rowid, score in search_fts(self._connection, _TABLE, match, len(self._memories))
        ]
        return [pair for pair in found if _passes(pair[0], filters)][:limit]

    def search_weighted(
        self, parts: Sequence[tuple[str, float]], limit: int, *, filters: CandidateFilter | None = None
    ) -> list[tuple[Memory, float]]:
        """Rank by the summed ``factor x bm25`` of ``(match, factor)`` parts, best first.

        ``filters`` apply as in :meth:`search`.
        """
        if not self._memories:
            return []
        unfiltered = filters is None and not self._superseded
        found = [
            (self._memories[self._ids_by_rowid[rowid]], score)
            for rowid, score in search_fts_weighted(
                self._connection, _TABLE, parts, limit if unfiltered else len(self._memories)
            )
        ]
        if unfiltered:
            return found
        return [pair for pair in found if _passes(pair[0], filters)][:limit]

    def document_frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many memories contain each indexed (stemmed) term."""
        if not self._memories:
            return {}
        return self._frequencies.lookup(
            terms,
            len(self._memories),
            lambda missing: document_frequencies(self._connection, self._vocabulary, missing),
        )

    def with_tags(self, tags: Sequence[str]) -> list[Memory]:
        """Return the memories carrying any of ``tags``."""
        ids: set[str] = set()
        for tag in tags:
            ids.update(self._tags.get(tag, ()))
        return [self._memories[memory_id] for memory_id in ids]

    def find_turns(self, keys: Sequence[TurnKey]) -> list[Memory]:
        """Return the memories that are the given conversation turns."""
        found = []
        for key in keys:
            memory_id = self._turns.get(key)
            if memory_id is not None:
                found.append(self._memories[memory_id])
        return found

    def last_turn_index(self, user_id: str | None, session_id: str) -> int | None:
        """The highest turn index this store has held for a conversation session, or ``None``."""
        return self._last_turns.get((user_id, session_id))

    def all(self) -> Iterator[Memory]:
        """Iterate over every memory (a snapshot, safe to mutate the store meanwhile)."""
        return iter(list(self._memories.values()))

    def count(self) -> int:
        """How many memories the store holds."""
        return len(self._memories)

    @property
    def chars(self) -> int:
        """Characters of text the store's index holds (what checking or optimizing it costs)."""
        return self._chars

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._memories

    def optimize_index(self) -> None:
        """Merge the FTS5 index segments (faster queries after many changes)."""
        self._connection.execute(f"INSERT INTO {_TABLE}({_TABLE}) VALUES('optimize')")

    def check_index(self) -> str:
        """Run the FTS5 integrity check; return ``"ok"`` or the error text."""
        try:
            self._connection.execute(f"INSERT INTO {_TABLE}({_TABLE}, rank) VALUES('integrity-check', 1)")
        except sqlite3.DatabaseError as error:
            return str(error)
        return "ok"

    def rebuild_index(self, weights: ColumnWeights | None = None) -> None:
        """Drop and rebuild the FTS5 index from the memories held."""
        self.apply(self.stage_rebuild(weights))

    def stage_rebuild(self, weights: ColumnWeights | None = None) -> IndexChange:
        """Return the change that drops the FTS5 index, creates it again and indexes every memory."""
        memories = list(self._memories.values())
        self._frequencies.clear()
        self._memories.clear()
        self._rowids.clear()
        self._ids_by_rowid.clear()
        self._tags.clear()
        self._turns.clear()
        self._last_turns.clear()
        self._superseded = 0
        self._chars = 0
        change = self.stage_load(memories)
        change.recreate = weights or ColumnWeights()
        return change

    def close(self) -> None:
        """Release the in-memory index."""
        self._connection.close()


def _passes(memory: Memory, filters: CandidateFilter | None) -> bool:
    if memory.superseded_by is not None:
        return False
    if filters is None:
        return True
    if filters.tags is not None and filters.tags.isdisjoint(memory.tags):
        return False
    if filters.min_importance is not None and memory.importance < filters.min_importance:
        return False
    if filters.since is not None and memory.created_at < filters.since:
        return False
    return not (filters.until is not None and memory.created_at > filters.until)


def _turn_key(memory: Memory) -> TurnKey | None:
    session_id = memory.session_id
    turn_index = memory.turn_index
    if session_id is None or turn_index is None:
        return None
    return (memory.user_id, session_id, turn_index)
