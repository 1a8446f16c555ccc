"""The :class:`MemoryBackend` protocol: where the memory tiers live.

:class:`~context_manager.core.memory.manager.MemoryManager` decides *what* goes where (placement by
importance, overflow moves, promotion, consolidation, ranking); a backend stores the three tiers and
answers queries about them. Two backends implement the protocol and run the same test suites:

* :class:`~context_manager.core.memory.local_backend.LocalBackend` (``memory_backend="sqlite"``, the
  default): one process, files under ``storage_path``: the short-term tier in process (journaled),
  the medium-term tier in an append-only JSONL log, the long-term tier in SQLite with FTS5.
* :class:`~context_manager.core.memory.postgres.PostgresBackend` (``memory_backend="postgres"``): many
  processes and hosts share one PostgreSQL database; every tier is a row set of one table (a tier is a
  column), searched with ``tsvector`` and pgvector.

Every method is a coroutine; a backend runs its blocking I/O off the event loop. A memory may have a
copy in two tiers (a short-term memory with a long-term copy); methods that return memories say
whether they return every copy or one per memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.models import ALL_USERS, AllUsers, Memory, MemoryTier
from context_manager.core.memory.store import TurnKey

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = [
    "DEFAULT_NAMESPACE_LABEL",
    "SUPERSEDED_ONLY",
    "TIER_ORDER",
    "BackendStats",
    "KnownCounts",
    "LexicalQuery",
    "MemoryBackend",
    "Staleness",
    "VectorHit",
    "in_scope",
    "merged_again",
    "originals_gone",
    "owner_label",
    "tier_value",
    "unchanged_since_read",
]

UserScope = str | None | AllUsers

TIER_ORDER: dict[MemoryTier, int] = {MemoryTier.SHORT: 0, MemoryTier.MEDIUM: 1, MemoryTier.LONG: 2}
"""Fastest tier first: when a memory has two copies, the faster one is the one reported."""

VectorHit = tuple[str, float]
"""``(memory_id, cosine)``."""

DEFAULT_NAMESPACE_LABEL = ""
"""The owner label of the default namespace (``user_id=None``) in counts and reports: user ids are never
empty, so no user's label is this one (a user whose id is ``"default"`` is not the default namespace)."""


def owner_label(user_id: str | None) -> str:
    """The label of an owner in counts and reports: the user id, or :data:`DEFAULT_NAMESPACE_LABEL`."""
    return DEFAULT_NAMESPACE_LABEL if user_id is None else user_id


# How much a memory deserves a faster tier (overflow moves keep the most valuable): importance, recency of
# its last use (half-life one day), access count (saturating at 100). The PostgreSQL backend computes the
# same value in SQL from these constants (``postgres/backend.py``, ``_TIER_VALUE``).
TIER_VALUE_IMPORTANCE = 0.5
TIER_VALUE_RECENCY = 0.3
TIER_VALUE_ACCESS = 0.2
TIER_VALUE_HALF_LIFE_SECONDS = 86_400.0
TIER_VALUE_ACCESS_SATURATION = 100
TIER_VALUE_FORGOTTEN_SECONDS = 1_000 * TIER_VALUE_HALF_LIFE_SECONDS  # older: recency counts 0 (no underflow)


def tier_value(
    importance: float, created_at: float, last_accessed: float, access_count: int, now: float
) -> float:
    """How much a memory deserves a faster tier: 0.5 importance + 0.3 recency of use + 0.2 access count."""
    age = now - max(created_at, last_accessed)
    if age <= 0:
        recency = 1.0
    elif age >= TIER_VALUE_FORGOTTEN_SECONDS:
        recency = 0.0
    else:
        recency = 0.5 ** (age / TIER_VALUE_HALF_LIFE_SECONDS)
    access = min(1.0, math.log1p(access_count) / math.log1p(TIER_VALUE_ACCESS_SATURATION))
    return TIER_VALUE_IMPORTANCE * importance + TIER_VALUE_RECENCY * recency + TIER_VALUE_ACCESS * access


def unchanged_since_read(original: Memory, copies: Sequence[Memory]) -> bool:
    """Whether a memory read earlier is still stored (``copies``), not superseded, with the same text.

    "The same" is its content, importance, tags and metadata: what a merge takes from it (see ``merge``;
    the merged memory is a copy of one original: metadata another process set since the read would be
    left on a hidden original).
    """
    return bool(copies) and all(
        copy.superseded_by is None
        and copy.content == original.content
        and copy.importance == original.importance
        and list(copy.tags) == list(original.tags)
        and copy.metadata == original.metadata
        for copy in copies
    )


@dataclass(frozen=True, slots=True)
class Staleness:
    """What a cleanup removes: superseded originals, and memories neither created nor used since ``cutoff``.

    A backend deletes a copy only if it is stale *when it is deleted* (:meth:`MemoryBackend.delete`): a
    memory another process used, restored (an undone consolidation) or made important since the cleanup
    read it stays.
    """

    cutoff: float
    """Epoch seconds: older than this (creation and last access) is stale."""
    keep_importance: float | None = None
    """Memories at least this important are never stale by age."""
    superseded: bool = True
    """Superseded originals (``superseded_by`` set) are stale."""

    def applies(self, memory: Memory) -> bool:
        """Whether ``memory`` (as read now) is stale."""
        if self.superseded and memory.superseded_by is not None:
            return True
        return max(memory.created_at, memory.last_accessed) < self.cutoff and (
            self.keep_importance is None or memory.importance < self.keep_importance
        )


SUPERSEDED_ONLY = Staleness(cutoff=-math.inf)
"""Stale only while superseded, whatever its age: the originals of a merged memory that was deleted."""


def originals_gone(merged_id: str, missing: Sequence[str]) -> InvalidMemoryError:
    """The error of an undo whose originals are not all stored any more (:meth:`MemoryBackend.unmerge`)."""
    shown = ", ".join(repr(memory_id) for memory_id in sorted(missing)[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return InvalidMemoryError(
        "merged_id",
        merged_id,
        f"a consolidated memory whose originals are all still stored ({shown}{more} no longer are: a "
        "cleanup removes superseded originals; the merged memory is kept, nothing was changed)",
    )


def merged_again(merged_id: str, later_id: str) -> InvalidMemoryError:
    """The error of an undo of a merged memory that a later consolidation merged in turn.

    Undoing it would delete a memory the later merged memory names in ``merged_from`` (that undo could
    then never be done) and show its originals beside the later merged memory, which holds the same text.
    """
    return InvalidMemoryError(
        "merged_id",
        merged_id,
        "a consolidated memory that no later consolidation merged",
        detail=(
            f"a later consolidation merged this one into {later_id!r}: "
            f"undo_consolidation({later_id!r}) first, then this one; nothing was changed"
        ),
    )


def in_scope(memory: Memory, scope: UserScope) -> bool:
    """Whether ``memory`` belongs to the user scope (``ALL_USERS`` covers everyone)."""
    return scope is ALL_USERS or memory.user_id == scope


@dataclass(frozen=True, slots=True)
class LexicalQuery:
    """A full-text query: the words of the user's text and the filters every candidate must pass.

    The backend ranks candidates by BM25 (or its closest equivalent) over every tier searched, so scores
    compare across tiers, and applies the filters in the candidate query itself (a filter applied after a
    fixed top-N would miss matches).
    """

    tokens: tuple[str, ...]
    """Distinct lower-case word tokens of the query (never query syntax)."""
    limit: int
    """How many candidates to return at most."""
    scope: UserScope
    """Whose memories: a user id, ``None`` (the default namespace) or ``ALL_USERS``."""
    tiers: frozenset[MemoryTier] | None = None
    """Only these tiers (``None``: every tier)."""
    tags: frozenset[str] | None = None
    """Only memories carrying at least one of these tags."""
    min_importance: float | None = None
    """Only memories at least this important."""
    since: float | None = None
    """Only memories created at or after this time (epoch seconds)."""
    until: float | None = None
    """Only memories created at or before this time."""
    common_term_ratio: float = 0.1
    """Words in more than this share of the memories are left out when rarer words remain."""
    common_term_min_documents: int = 1000
    """Words in at most this many memories are always kept."""
    common_term_max_documents: int = 2000
    """Words in more memories than this are left out when rarer words remain."""

    @property
    def filtered(self) -> bool:
        """Whether a tag, importance or time filter narrows the candidates."""
        return bool(
            self.tags or self.min_importance is not None or self.since is not None or self.until is not None
        )

    def accepts(self, memory: Memory) -> bool:
        """Whether ``memory`` passes every filter (superseded memories never do)."""
        if memory.superseded_by is not None or not in_scope(memory, self.scope):
            return False
        if self.tiers is not None and memory.tier not in self.tiers:
            return False
        if self.tags is not None and self.tags.isdisjoint(memory.tags):
            return False
        if self.min_importance is not None and memory.importance < self.min_importance:
            return False
        if self.since is not None and memory.created_at < self.since:
            return False
        return not (self.until is not None and memory.created_at > self.until)


@dataclass(slots=True)
class BackendStats:
    """Counts of one user scope (see :meth:`MemoryBackend.stats`)."""

    total: int = 0
    """Distinct memories."""
    by_tier: dict[str, int] = field(default_factory=lambda: {tier.value: 0 for tier in MemoryTier})
    """Stored copies per tier (a memory with a long-term copy counts in two tiers)."""
    by_user: dict[str, int] = field(default_factory=dict)
    """Distinct memories per owner (:func:`owner_label`: ``""`` for the default namespace)."""
    superseded: int = 0
    """Of ``total``, the ones a consolidation superseded."""
    oldest: float | None = None
    """Smallest ``created_at``."""
    newest: float | None = None
    """Largest ``created_at``."""
    importance_total: float = 0.0
    """Sum of the importance of ``total``."""


@runtime_checkable
class AccessCounter(Protocol):
    """A storage several processes write at once: accesses are added to the stored count, not set.

    Each process batches its searches' accesses; writing its own absolute count (the one it read plus its
    accesses) would overwrite what the other processes added meanwhile.
    """

    async def add_accesses(self, updates: Mapping[str, tuple[float, int]], attempts: list[str]) -> None:
        """Record ``id -> (last_accessed, accesses since the last batch)`` in every tier holding the id.

        The time never goes back; the accesses are added to the stored count, once even when the batch is
        retried after a commit whose acknowledgement was lost. ``attempts`` holds an id per transaction that
        tried to write this batch (empty for a new batch); each attempt appends its own before it writes, so
        a batch whose call was cancelled or failed can be passed again, with the same list, by a later call.
        """
        ...


class KnownCounts(Protocol):
    """Optional for a :class:`MemoryBackend`: its tier counts as known without asking the storage.

    Not part of :class:`MemoryBackend` (a backend of your own need not have it, and is one without it): the
    manager asks :meth:`MemoryBackend.count` after every write of a backend without ``known_count``.
    """

    def known_count(self, tier: MemoryTier) -> tuple[int, bool] | None:
        """:meth:`MemoryBackend.count` as known without asking the storage, and whether it is due a re-read.

        ``None``: not known (ask ``count``). A storage that counts in process knows it exactly (never
        due); one shared with other processes (PostgreSQL) keeps the count it read last with this process's
        own changes applied, due a re-read once it is older than the time it is kept (``count`` re-reads
        it).
        """
        ...


@runtime_checkable
class MemoryBackend(Protocol):
    """Storage of the three memory tiers (see the module docstring)."""

    kind: str
    """``"sqlite"`` or ``"postgres"``."""
    shared: bool
    """Whether other processes may use the same storage at the same time."""
    move_chunk: int
    """Memories an overflow move takes down a tier per statement (per hold of the write lock)."""

    @property
    def location(self) -> str:
        """Where the memories are (a directory, or a DSN with the password left out)."""
        ...

    async def open(self) -> None:
        """Open (creating and migrating if needed) the storage."""
        ...

    async def close(self) -> None:
        """Release files, connections and locks."""
        ...

    # -- tiers -----------------------------------------------------------------------------------

    async def put(self, tier: MemoryTier, memories: Sequence[Memory]) -> None:
        """Insert or replace memories in ``tier`` (durably) before returning."""
        ...

    async def put_tiers(self, groups: Sequence[tuple[MemoryTier, Sequence[Memory]]]) -> None:
        """:meth:`put` each ``(tier, memories)`` group, in this order; on a shared storage all at once.

        An important memory is added as a short-term row and a long-term copy: on a storage other processes
        read and write at the same moment, none of them may see one without the other (a delete or a
        cleanup coming between the two writes would leave the second alive).
        """
        ...

    async def replace(self, tier: MemoryTier, memories: Sequence[Memory]) -> list[str]:
        """Replace the memories still stored in ``tier`` (durably); return the ids replaced.

        An id no longer in ``tier`` (another process sharing the storage deleted it, or moved it to
        another tier, since it was read) is skipped, never written back: a change is written where the
        memory is now, not where it was. A memory whose ``content`` changes loses its stored vectors (made
        of the old text) no later than it is written, as with :meth:`update`.
        """
        ...

    async def move(self, memories: Sequence[Memory], source: MemoryTier, target: MemoryTier) -> None:
        """Move memories from ``source`` to ``target`` (never both lost and never left in neither)."""
        ...

    async def move_down(self, ids: Sequence[str], source: MemoryTier, target: MemoryTier) -> int:
        """Move the ``source`` copies of ``ids`` down to ``target`` as they are now (an overflow move).

        An id no longer in ``source`` (deleted or moved meanwhile) is skipped; one that has a long-term
        copy and moves to a tier other than long-term just loses its ``source`` copy (the long-term copy
        is the durable one). Never both lost and never left in neither.

        Returns:
            How many of ``ids`` left ``source`` (those skipped not counted).
        """
        ...

    async def put_new(self, groups: Sequence[tuple[MemoryTier, Sequence[Memory]]]) -> list[str]:
        """:meth:`put_tiers` of the memories whose id no tier holds yet; return the ids left out.

        For ids the caller chose (an idempotent retry, or the same message archived by two processes):
        on a shared storage the check and the write are one step per id, so two writers of one id store
        it once and never write over a copy another process has moved, merged or updated meanwhile.
        """
        ...

    async def add_long_copies(self, ids: Sequence[str]) -> list[str]:
        """Copy each memory among ``ids`` that has no long-term copy to long-term, as it is stored now.

        The copy is taken from the memory's fastest stored copy at the moment of the write (on a shared
        storage in one step per id, under the same serialisation as :meth:`update` and :meth:`merge`): a
        memory deleted meanwhile is not brought back, one merged or changed meanwhile is copied as it is
        now. Returns the ids copied.
        """
        ...

    async def delete(
        self, tier: MemoryTier, ids: Sequence[str], *, only: Staleness | None = None
    ) -> list[str]:
        """Delete memories from ``tier``; return the ids this call deleted.

        With ``only``, a copy is deleted only if it is stale as it is stored at that moment (a cleanup
        decides from a scan; what changed since the scan is kept).
        """
        ...

    async def delete_together(self, ids: Sequence[str]) -> list[tuple[str, MemoryTier]]:
        """Delete every copy of ``ids`` in every tier; return ``(id, tier)`` of each copy this call deleted.

        On a shared storage one transaction under the ids' locks (the serialisation of :meth:`update`): a
        call cut short (a caller's timeout, a lost connection) deleted all of them or none, and a copy
        another process moved meanwhile is deleted where it went. The embedded store deletes the
        long-term copies in one transaction recording the delete of the others (one log record): a
        process killed in between has its delete finished when the store next opens.
        """
        ...

    async def update(
        self, ids: Sequence[str], changes: Mapping[str, Any], tier: MemoryTier | None = None
    ) -> list[str]:
        """Change fields of memories in every tier holding them, each memory at once; return the ids found.

        ``changes`` maps fields of :class:`Memory` to their new values (``content``, ``importance``,
        ``tags``, ``metadata``, ``context``); only those fields are written, so a change made meanwhile to
        another field (or an access recorded meanwhile) stays. With ``tier`` each memory ends up in that
        tier only (its fastest copy, changed, moves there). On a shared storage every change to one
        memory's copies (this one, a move, a merge) is serialised with the others: a memory is never
        left in no tier, and a change is written where the memory is when it is applied. A new
        ``content`` deletes the memories' stored vectors (made of the old text) no later than it is
        written: the caller embeds the new text, and a memory left without a vector (its process killed
        first) is embedded when the store next opens with an embedder.
        """
        ...

    async def merge(self, groups: Sequence[tuple[Memory, Sequence[Memory]]]) -> list[bool]:
        """Store consolidated memories and mark their originals superseded, one group at a time, atomically.

        Each group is ``(merged, originals)``: ``merged`` (a new id) is written to long-term and every copy
        of the originals gets ``superseded_by = merged.id``, only if every original is still stored,
        not superseded, with the content, importance, tags and metadata it had when read; otherwise nothing
        of that group is written (another process deleted, changed or merged one meanwhile). Nothing else
        of the originals is written back. Returns, per group, whether it was merged.
        """
        ...

    async def unmerge(self, merged_id: str, original_ids: Sequence[str]) -> tuple[list[str], list[Memory]]:
        """Undo a merge at once: the originals superseded by ``merged_id`` visible again, it deleted.

        Returns:
            The ids of the originals made visible again, and the copies of the merged memory deleted.

        Raises:
            InvalidMemoryError: an original is no longer stored as superseded by ``merged_id`` (a cleanup
                removed it): nothing is changed, the merged memory is the only copy of its text. Or
                ``merged_id`` is itself superseded (a later consolidation merged it: :func:`merged_again`):
                nothing is changed, the later merge must be undone first.
        """
        ...

    async def forget(self, erased: Sequence[str], rewritten: Sequence[str] = ()) -> None:
        """Remove what is left of deleted memories once the manager has deleted every copy.

        ``erased``: memories now in no tier; their vectors and any trace the storage keeps of them
        (journal records, index entries) go. ``rewritten``: memories just rewritten because an earlier
        version held a deleted memory's text; earlier versions the storage still keeps go.
        """
        ...

    async def touch(self, updates: Mapping[str, tuple[float, int]]) -> None:
        """Record ``id -> (last_accessed, access_count)`` in every tier holding the id."""
        ...

    async def copies(self, ids: Sequence[str]) -> list[Memory]:
        """Every stored copy of the memories among ``ids`` (fastest tier first per id)."""
        ...

    async def count(self, tier: MemoryTier) -> int:
        """How many memories ``tier`` holds (every user)."""
        ...

    async def members(self, tier: MemoryTier) -> list[Memory]:
        """Every memory of ``tier`` (the bounded tiers: short and medium)."""
        ...

    async def overflow_victims(self, tier: MemoryTier, capacity: int, keep: int, now: float) -> list[str]:
        """The memories an overflow move takes out of ``tier``, least valuable first.

        When ``tier`` holds more than ``capacity`` memories: the ids of its least valuable ones (by
        :func:`tier_value` at ``now``, ties by id) beyond the ``keep`` most valuable; else ``[]``. The
        backend chooses them where the data is (PostgreSQL in SQL), so a move reads a few ids instead of
        a whole tier: reading and ranking 1,000-2,000 rows on the event loop held it 2-6 ms per move and
        made the add p99 (issue 12).
        """
        ...

    async def long_copies(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that also have a long-term copy."""
        ...

    async def scan(self, scope: UserScope, *, every_copy: bool) -> list[Memory]:
        """Every memory of the scope: one per memory (fastest tier) or every stored copy."""
        ...

    async def newest(self, scope: UserScope, limit: int) -> list[Memory]:
        """The scope's ``limit`` newest memories that are not superseded, newest first (one per memory)."""
        ...

    async def with_tags(
        self, tags: Sequence[str], scope: UserScope, tiers: frozenset[MemoryTier] | None
    ) -> list[Memory]:
        """Memories (one per memory, fastest tier) of the scope carrying any of ``tags``."""
        ...

    async def find_turns(self, keys: Sequence[TurnKey]) -> list[Memory]:
        """The memories that are the given conversation turns (one per memory)."""
        ...

    async def last_turn_index(self, user_id: str | None, session_id: str) -> int | None:
        """The highest turn index stored for a conversation session, or ``None``."""
        ...

    async def search(self, query: LexicalQuery) -> list[tuple[Memory, float]]:
        """Full-text candidates (one per memory, fastest tier), best first, with a positive BM25 score."""
        ...

    async def term_frequencies(self, tokens: Sequence[str]) -> tuple[dict[str, int], int]:
        """How many stored memories (every tier and owner) contain each word, and how many there are.

        Estimates are fine (they choose the words of a feedback query); a word the index does not know
        counts 0.
        """
        ...

    # -- vectors ---------------------------------------------------------------------------------

    async def open_vectors(self, model: str, dimension: int) -> list[Memory]:
        """Prepare the vector channel for an embedding model; return the memories without a vector."""
        ...

    async def save_vectors(self, model: str, memories: Sequence[Memory], vectors: numpy.ndarray) -> None:
        """Store one normalised vector per memory."""
        ...

    async def delete_vectors(self, ids: Sequence[str]) -> None:
        """Forget the vectors of ``ids``."""
        ...

    async def nearest(self, vector: numpy.ndarray, scope: UserScope, limit: int) -> list[VectorHit]:
        """The memories of the scope whose vectors are most similar to ``vector``, best first."""
        ...

    async def similarities(self, vector: numpy.ndarray, ids: Sequence[str]) -> dict[str, float]:
        """Cosine similarity of ``vector`` with the stored vector of each id that has one."""
        ...

    async def vectors_of(self, ids: Sequence[str]) -> dict[str, numpy.ndarray]:
        """The stored vectors of ``ids`` (for consolidation)."""
        ...

    def vector_count(self) -> int:
        """How many vectors the channel holds (as last known)."""
        ...

    async def vector_models(self) -> list[tuple[str, int]]:
        """Every ``(model, dimension)`` with stored vectors (whichever model the channel uses)."""
        ...

    async def load_vectors(self, model: str, dimension: int) -> tuple[list[str], numpy.ndarray]:
        """The ids and the matrix (float32, one row per id) of the vectors stored for ``model``."""
        ...

    # -- coordination and upkeep -----------------------------------------------------------------

    def exclusive(self, *names: str) -> AbstractAsyncContextManager[None]:
        """Hold locks named ``names`` (taken in this order) across every process using this storage.

        Consolidation holds ``"consolidate"`` and both overflow-move locks (see :meth:`try_exclusive`),
        so no process moves a memory between its tiers while it is read and marked superseded.
        """
        ...

    def try_exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Like :meth:`exclusive`, without waiting: ``True`` when this process holds the lock for the block.

        For work any process may do and one at a time is enough (moving a tier's overflow): the process
        that gets ``False`` skips it.
        """
        ...

    def needs_compaction(self) -> bool:
        """Whether :meth:`compact` would reclaim much (an append-only log full of dead records)."""
        ...

    async def compact(self) -> tuple[int, int]:
        """Rewrite append-only files with the live records; bytes before and after (0, 0 if none)."""
        ...

    def file_faults(self) -> dict[str, str]:
        """Storage files deleted, replaced or truncated behind the process's back (none without files)."""
        ...

    async def restore_files(self) -> dict[str, Any]:
        """Write such files again from what the process holds open: ``restored`` and ``failed``."""
        ...

    async def stats(self, scope: UserScope) -> BackendStats:
        """Counts of the scope, computed where the data is."""
        ...

    async def size(self) -> dict[str, int]:
        """Bytes used, by part (``log``, ``database`` ...; ``total``)."""
        ...

    async def optimize(self) -> dict[str, Any]:
        """Compact and tidy the storage; report sizes before and after."""
        ...

    async def check_integrity(self, *, quick: bool = False) -> dict[str, Any]:
        """Check the storage (``quick``: a cheaper check that lets writes go on); ``"ok"`` or the problems."""
        ...

    async def rebuild_index(self) -> dict[str, int]:
        """Rebuild the full-text indexes from the stored memories; rows indexed per tier."""
        ...
