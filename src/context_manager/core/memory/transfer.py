"""Copy a whole memory storage to another backend, verified and resumable (``memory migrate``).

A *location* is a storage directory (the embedded SQLite/JSONL backend) or a PostgreSQL DSN (a value
starting with ``postgresql://`` or ``postgres://``). :func:`migrate_storage` copies every stored copy of
every memory, tier by tier, as it is: a short-term memory with a long-term copy keeps both, and ids,
times, access counts, ``superseded_by``/``merged_from``, metadata and context are unchanged. The
vectors of every embedding model stored at the source are copied too (a manager opening the target with
the same embedder finds them and embeds nothing again). Persisted conversations (``conversation_id``) are
copied too, every record as it is (versions, writers, times, the snapshot and the indexing watermark).

Resuming: every write is an upsert keyed by ``(id, tier)``, and a run first reads what the target
already holds, copying only the copies that are missing or differ. A run interrupted anywhere (even by
``kill -9``) is finished by running the same command again: nothing is duplicated, nothing lost, and
copies a previous run already wrote are not written twice. Copies the target holds for a source id in a
tier where the source no longer has one (the source changed between runs) are removed. Memories and
conversations deleted from the source between runs are not told apart from another store's: the target is
refused unless ``prune`` (remove everything the source does not have) or ``merge`` (keep it).
A target conversation under one of the source's ids but created apart from it (its ``created_at``, the
conversation's generation, differs) is never overwritten: the target is refused unless ``prune``. Nor is
a target memory under one of the source's ids with another owner or ``created_at`` (another store's).

Verification: after copying, both sides are read again and compared per ``(tier, user)``: the number of
copies and an order-independent checksum (SHA-256 over the canonical JSON of every copy), and per
embedding model the number of vectors and a checksum of their float32 values, and for the persisted
conversations their number, their records and a checksum of everything stored. Any difference is reported;
nothing is written during verification.

The source is opened read-only in spirit: nothing is written to it (a storage directory is locked for the
duration, like any manager would lock it). Stop the applications using a PostgreSQL source while it is
copied, or the verification reports what they changed meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from context_manager.core.errors import InvalidArgumentError, describe_value
from context_manager.core.memory.backend import TIER_ORDER, MemoryBackend, owner_label
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.text import encodable

if TYPE_CHECKING:  # pragma: no cover
    import numpy

    from context_manager.core.conversations.store import ConversationDump, ConversationStore

__all__ = [
    "DSN_PREFIXES",
    "GroupCheck",
    "MigrationReport",
    "ConversationCheck",
    "VectorCheck",
    "copy_digest",
    "is_dsn",
    "migrate_storage",
    "open_storage",
    "verify_storage",
]

logger = logging.getLogger(__name__)

DSN_PREFIXES = ("postgresql://", "postgres://")
"""A location starting with one of these is a PostgreSQL DSN; anything else is a storage directory."""

_ONE_SLASH_URL = re.compile(r"\s*postgres(?:ql)?:/(?!/)", re.IGNORECASE)
"""A PostgreSQL URL whose ``//`` is ``/`` (a typo, or a ``Path`` made of it): no directory is meant."""

Progress = Callable[[int, int], None]
"""Called with ``(copies written or found in place so far, copies in all)`` after each batch."""


def is_dsn(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL database (rather than a storage directory)."""
    return location.strip().lower().startswith(DSN_PREFIXES)


def _dsn(location: str) -> str:
    """A DSN as libpq takes it: no surrounding blanks, and the scheme in lower case (libpq wants it so)."""
    text = location.strip()
    scheme, separator, rest = text.partition("://")
    return f"{scheme.lower()}{separator}{rest}"


def _quoted(location: Any) -> Any:
    """``location`` as an error quotes it: a password in it (a DSN, even a malformed one) as ``***``."""
    if not isinstance(location, str):
        return location
    from context_manager.core.memory.postgres.database import redact_dsn

    return redact_dsn(location)


def _location(location: Any, name: str) -> str:
    """``location`` as text: a str, or a path (``pathlib.Path``, any ``os.PathLike`` of str) made one.

    Raises:
        InvalidArgumentError: anything else (bytes, a number ...), an empty text, one holding a NUL or a
            lone surrogate; quoted with any password as ``***``.
    """
    if isinstance(location, os.PathLike):
        location = os.fspath(location)
    if isinstance(location, str):
        if not location.strip() or "\x00" in location:
            raise InvalidArgumentError(
                name, _quoted(location), "a storage directory or a postgresql:// DSN (non-empty, no NUL)"
            )
        if not encodable(location):  # a non-UTF-8 byte of a command line: no file name or DSN holds it
            raise InvalidArgumentError(
                name,
                _quoted(location),
                "a storage directory or a postgresql:// DSN of valid Unicode text (no lone surrogates)",
            )
        return location
    shown = (
        bytes(location).decode("utf-8", "replace")
        if isinstance(location, bytes | bytearray)
        else describe_value(location)
    )
    raise InvalidArgumentError(
        name,
        _quoted(shown),
        "a storage directory (a str or a path) or a postgresql:// DSN (a str)",
        detail=f"{type(location).__name__} given",
    )


def _describe_location(location: str) -> str:
    if is_dsn(location):
        from context_manager.core.memory.postgres.database import redact_dsn

        return redact_dsn(_dsn(location))
    return str(Path(location).expanduser())


_OPTIONS = {"source": "--from", "target": "--to"}
"""The options of ``context-manager memory migrate`` that give the source and the target."""


def _dsn_named(name: str) -> str:
    """What a failed connection's hint calls the DSN given as ``name``: ``the target DSN (--to)``.

    It said ``postgres_dsn / PYTHON_CONTEXT_MANAGER_POSTGRES_DSN``, which a migration never reads.
    """
    option = _OPTIONS.get(name)
    return f"the {name} DSN" + (f" ({option})" if option is not None else "")


def _storage_exists(path: Path) -> bool:
    from context_manager.core.memory.file_store import LOG_FILE_NAME
    from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME

    return path.is_dir() and any((path / name).exists() for name in (LOG_FILE_NAME, DATABASE_FILE_NAME))


def open_storage(
    location: str | os.PathLike[str],
    *,
    create: bool,
    fsync: bool = True,
    name: str = "location",
    connect_timeout: float = 10.0,
) -> MemoryBackend:
    """A backend (not yet opened) for a storage directory or a PostgreSQL DSN.

    Args:
        location: A directory (a str or a path), or a ``postgresql://``/``postgres://`` DSN.
        create: Allow a storage directory that holds no memory store yet (the target of a migration).
        fsync: fsync the files of a storage directory on every write (survives power loss).
        name: What to call the location in error messages (``"source"``, ``"target"``).
        connect_timeout: Seconds to wait for a PostgreSQL connection before StorageError (as
            ``postgres_connect_timeout``).

    Raises:
        InvalidArgumentError: an empty location, one neither text nor a path, a file, or (``create=False``)
            a directory with no store.
    """
    from context_manager.core.memory.ranking import RankingWeights

    location = _location(location, name)
    weights = RankingWeights().effective_columns  # what a default MemoryManager indexes with
    if is_dsn(location):
        from context_manager.core.memory.postgres import PostgresBackend, PostgresDatabase

        database = PostgresDatabase(
            _dsn(location), pool_size=2, connect_timeout=connect_timeout, named=_dsn_named(name)
        )
        return PostgresBackend(database, weights=weights)
    if _ONE_SLASH_URL.match(location):  # was a directory ./postgresql:/user:password@host/db, printed
        raise InvalidArgumentError(
            name,
            _quoted(location),
            "a storage directory or a postgresql:// DSN (postgresql://user:password@host:5432/database)",
            detail="a PostgreSQL URL with one slash after the scheme",
        )
    from context_manager.core.memory.local_backend import LocalBackend

    path = Path(location).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(
            name, _quoted(location), "a storage directory or a postgresql:// DSN (this is a file)"
        )
    if not create and not _storage_exists(path):
        raise InvalidArgumentError(
            name,
            _quoted(location),
            "a memory storage directory (it holds memories.jsonl or memories.sqlite3) or a postgresql:// DSN",
        )
    return LocalBackend(path, fsync=fsync, weights=weights)


def copy_digest(memory: Memory) -> str:
    """SHA-256 of one stored copy (every field, its tier included; canonical JSON).

    Raises:
        StorageCorruptedError: a field is NaN or an infinity (written into the store by another program:
            adding a memory refuses one), which canonical JSON cannot hold.
    """
    record = memory.to_dict()
    try:
        text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        from context_manager.core.memory.maintenance import non_finite_memory_error

        raise non_finite_memory_error(
            record, "copy memory", "the migration stops before it writes a memory (the source is unchanged)"
        ) from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _combine(digests: Sequence[str]) -> str:
    """An order-independent checksum of a set of digests (16 hex digits)."""
    combined = hashlib.sha256("".join(sorted(digests)).encode("ascii")).hexdigest()
    return combined[:16]


@dataclass(slots=True)
class GroupCheck:
    """The comparison of one ``(tier, user)`` group of copies."""

    tier: str
    """``short``, ``medium`` or ``long``."""
    user: str
    """The owner: the user id, or ``""`` for the default namespace (user ids are never empty)."""
    source_count: int
    """Copies at the source."""
    target_count: int
    """Copies at the target."""
    source_checksum: str
    """Checksum of the source's copies (16 hex digits; ``"-"`` for none)."""
    target_checksum: str
    """Checksum of the target's copies."""

    @property
    def match(self) -> bool:
        """Same number of copies and same checksum."""
        return self.source_count == self.target_count and self.source_checksum == self.target_checksum

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (with ``match``)."""
        return {
            "tier": self.tier,
            "user": self.user,
            "source_count": self.source_count,
            "target_count": self.target_count,
            "source_checksum": self.source_checksum,
            "target_checksum": self.target_checksum,
            "match": self.match,
        }


@dataclass(slots=True)
class VectorCheck:
    """The comparison of the vectors of one embedding model."""

    model: str
    """The embedding model's key (embedder class, model name, dimension)."""
    dimension: int
    """Vector length."""
    source_count: int
    """Vectors at the source (of memories that exist)."""
    target_count: int
    """Vectors at the target."""
    source_checksum: str
    """Checksum of the source's vectors (ids and float32 values)."""
    target_checksum: str
    """Checksum of the target's vectors."""

    @property
    def match(self) -> bool:
        """Same number of vectors and same checksum."""
        return self.source_count == self.target_count and self.source_checksum == self.target_checksum

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (with ``match``)."""
        return {
            "model": self.model,
            "dimension": self.dimension,
            "source_count": self.source_count,
            "target_count": self.target_count,
            "source_checksum": self.source_checksum,
            "target_checksum": self.target_checksum,
            "match": self.match,
        }


@dataclass(slots=True)
class ConversationCheck:
    """The comparison of the persisted conversations."""

    source_count: int
    """Conversations at the source."""
    target_count: int
    """Of those, conversations at the target."""
    source_records: int
    """Records (window changes) of the source's conversations."""
    target_records: int
    """Records of the same conversations at the target."""
    source_checksum: str
    """Checksum of every stored field and record of the source's conversations."""
    target_checksum: str
    """The same for the target's copies."""

    @property
    def match(self) -> bool:
        """Same conversations, records and checksum."""
        return (
            self.source_count == self.target_count
            and self.source_records == self.target_records
            and self.source_checksum == self.target_checksum
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (with ``match``)."""
        return {
            "source_count": self.source_count,
            "target_count": self.target_count,
            "source_records": self.source_records,
            "target_records": self.target_records,
            "source_checksum": self.source_checksum,
            "target_checksum": self.target_checksum,
            "match": self.match,
        }


@dataclass(slots=True)
class MigrationReport:
    """What :func:`migrate_storage` (or :func:`verify_storage`) did and found."""

    source: str
    """The source (a DSN without its password)."""
    target: str
    """The target (a DSN without its password)."""
    total_copies: int = 0
    """Stored copies at the source (a memory with two copies counts twice)."""
    copied: int = 0
    """Copies this run wrote to the target."""
    already_present: int = 0
    """Copies the target already held unchanged (written by an earlier, interrupted run)."""
    removed_stale: int = 0
    """Target copies of source memories in a tier the source no longer uses, removed."""
    pruned: int = 0
    """Target copies of memories the source does not have, removed (``prune``)."""
    conversations_pruned: int = 0
    """Target conversations the source does not have, removed (``prune``)."""
    vectors_copied: int = 0
    """Vectors this run wrote."""
    vectors_already_present: int = 0
    """Vectors the target already held unchanged."""
    vectors_without_memory: int = 0
    """Source vectors whose memory no longer exists (left behind)."""
    groups: list[GroupCheck] = field(default_factory=list)
    """The verification, per ``(tier, user)``."""
    vectors: list[VectorCheck] = field(default_factory=list)
    """The verification of the vectors, per embedding model."""
    conversations_copied: int = 0
    """Persisted conversations this run wrote."""
    conversations_already_present: int = 0
    """Persisted conversations the target already held unchanged."""
    conversations: ConversationCheck | None = None
    """The verification of the persisted conversations (``None``: the source has none)."""
    duration_s: float = 0.0
    """Wall time of the run."""

    @property
    def ok(self) -> bool:
        """Whether every group and every vector model matched."""
        conversations_match = self.conversations is None or self.conversations.match
        return (
            all(group.match for group in self.groups)
            and all(check.match for check in self.vectors)
            and conversations_match
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report (``ok`` included)."""
        return {
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "total_copies": self.total_copies,
            "copied": self.copied,
            "already_present": self.already_present,
            "removed_stale": self.removed_stale,
            "pruned": self.pruned,
            "conversations_pruned": self.conversations_pruned,
            "vectors_copied": self.vectors_copied,
            "vectors_already_present": self.vectors_already_present,
            "vectors_without_memory": self.vectors_without_memory,
            "groups": [group.to_dict() for group in self.groups],
            "vectors": [check.to_dict() for check in self.vectors],
            "conversations_copied": self.conversations_copied,
            "conversations_already_present": self.conversations_already_present,
            "conversations": None if self.conversations is None else self.conversations.to_dict(),
            "duration_s": round(self.duration_s, 3),
        }


def _same_database(first: str, second: str) -> bool:
    """Whether two DSNs name the same database (``postgres://`` and ``postgresql://``, parameter order)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return conninfo_to_dict(_dsn(first)) == conninfo_to_dict(_dsn(second))
    except Exception:  # psycopg missing, or a DSN it cannot parse (opening it says why)
        return False


def _check_locations(source: str, target: str) -> None:
    same = source.strip() == target.strip()
    if not same and not is_dsn(source) and not is_dsn(target):
        same = Path(source).expanduser().resolve() == Path(target).expanduser().resolve()
    if not same and is_dsn(source) and is_dsn(target):
        same = _same_database(source, target)
    if same:
        raise InvalidArgumentError(
            "target", _quoted(target), "a storage other than the source (a different directory or database)"
        )


async def _check_postgres_store(location: str, name: str, connect_timeout: float) -> None:
    """Refuse a DSN whose schema holds no memory store, before opening it creates the tables there."""
    from context_manager.core.memory.postgres import PostgresDatabase

    database = PostgresDatabase(
        _dsn(location), pool_size=1, connect_timeout=connect_timeout, named=_dsn_named(name)
    )
    await database.open()
    try:

        async def has_store(connection: Any) -> bool:
            cursor = await connection.execute(  # where the library puts its tables: the first schema
                "SELECT EXISTS (SELECT 1 FROM pg_tables "
                "WHERE schemaname = current_schema() AND tablename = 'cm_memories')"
            )
            row = await cursor.fetchone()
            return bool(row[0])

        found = await database.run(has_store, "store check")
    finally:
        await database.close()
    if not found:
        raise InvalidArgumentError(
            name,
            _describe_location(location),
            "a memory storage directory or a postgresql:// DSN whose schema holds a memory store",
            detail="no cm_memories table in the first schema of its search_path; "
            "a schema is picked with ?options=-csearch_path%3D<schema>",
        )


async def _open_pair(
    source: str, target: str, *, create_target: bool, connect_timeout: float
) -> tuple[MemoryBackend, MemoryBackend]:
    if (
        isinstance(connect_timeout, bool)
        or not isinstance(connect_timeout, int | float)
        or not math.isfinite(connect_timeout)
        or connect_timeout <= 0
    ):
        raise InvalidArgumentError("connect_timeout", connect_timeout, "a finite number of seconds > 0")
    _check_locations(source, target)
    source_backend = open_storage(source, create=False, name="source", connect_timeout=connect_timeout)
    target_backend = open_storage(
        target, create=create_target, name="target", connect_timeout=connect_timeout
    )
    if is_dsn(source):
        await _check_postgres_store(source, "source", connect_timeout)
    if is_dsn(target) and not create_target:
        await _check_postgres_store(target, "target", connect_timeout)
    await source_backend.open()
    try:
        await target_backend.open()
    except BaseException:
        await source_backend.close()
        raise
    return source_backend, target_backend


async def migrate_storage(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    batch_size: int = 500,
    vectors: bool = True,
    merge: bool = False,
    prune: bool = False,
    progress: Progress | None = None,
    connect_timeout: float = 10.0,
) -> MigrationReport:
    """Copy every memory (every tier, every copy) and its vectors from ``source`` to ``target``, then verify.

    Args:
        source: A storage directory (a str or a path) or a PostgreSQL DSN holding memories.
        target: A storage directory (created if needed) or a PostgreSQL DSN (tables created if needed).
        batch_size: Copies written per transaction (each batch is committed before the next).
        vectors: Copy the stored vectors of every embedding model.
        merge: Allow a target that holds memories the source does not have (they are kept, and the
            verification covers the source's memories only). Without it (or ``prune``) such a target is
            refused.
        prune: Remove from the target every memory (all its copies and vectors) and conversation the source
            does not have, so it ends as a copy of the source: what finishes an interrupted run after
            memories were deleted from the source. It also removes another store's memories: only for a
            target that is this source's copy.
        progress: Called after each batch with ``(done, total)``.
        connect_timeout: Seconds to wait for a PostgreSQL connection before StorageError (the CLI passes
            ``postgres_connect_timeout``).

    Returns:
        The report: counts, and the verification per ``(tier, user)`` and per embedding model.
        ``report.ok`` is ``False`` when the target differs from the source.

    Raises:
        InvalidArgumentError: a bad location or batch size, source and target the same, ``merge`` and
            ``prune`` together, a target holding other memories without either, or (without ``prune``) a
            target conversation under one of the source's ids that is another conversation, or a target
            memory under one of the source's ids with another owner or ``created_at``.
        StorageLockedError: a storage directory is in use by another process.
        StorageError: a storage cannot be opened or written.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError("batch_size", batch_size, "an integer >= 1")
    if merge and prune:
        raise InvalidArgumentError(
            "prune",
            prune,
            "False when merge is True (merge keeps the target's other memories, prune removes them)",
        )
    started = time.perf_counter()
    source, target = _location(source, "source"), _location(target, "target")
    source_backend, target_backend = await _open_pair(
        source, target, create_target=True, connect_timeout=connect_timeout
    )
    report = MigrationReport(_describe_location(source), _describe_location(target))
    source_conversations: ConversationStore | None = None
    target_conversations: ConversationStore | None = None
    try:
        source_copies = await source_backend.scan(ALL_USERS, every_copy=True)
        # each copy's checksum before anything is written to the target: a copy that has none (a NaN another
        # program wrote) stops the migration with the target as it was (prune and the stale copies' removal
        # had changed it before the copy stopped)
        source_digests = {(memory.id, memory.tier): copy_digest(memory) for memory in source_copies}
        target_copies = await target_backend.scan(ALL_USERS, every_copy=True)
        generations_of: dict[
            str, set[tuple[str | None, float]]
        ] = {}  # id -> (owner, created_at) of its copies
        for memory in source_copies:
            generations_of.setdefault(memory.id, set()).add((memory.user_id, memory.created_at))
        source_ids = set(generations_of)
        foreign = {memory.id for memory in target_copies if memory.id not in source_ids}
        # the same id, another owner or creation time: another store's memory (or one deleted and created
        # again at the source since an interrupted run), not a copy of the source's (an owner and a creation
        # time never change); replacing it would delete it, so only prune (a copy of the source) does
        taken = sorted(
            {
                memory.id
                for memory in target_copies
                if memory.id in generations_of
                and (memory.user_id, memory.created_at) not in generations_of[memory.id]
            }
        )
        if taken and not prune:
            allowed = (
                "a storage whose memories under the source's ids are copies of the source's; "
                "pass prune=True (--prune) to replace them with the source's"
            )
            if merge:
                allowed += " (--merge cannot keep two memories under one id)"
            shown = taken[:10] + (["..."] if len(taken) > 10 else [])
            raise InvalidArgumentError(
                "target",
                report.target,
                allowed,
                detail=f"it holds {len(taken)} memories {shown} created apart from the source's memories "
                "with the same ids (of another user or at another time: another store's, or ones deleted "
                "and created again at the source since an interrupted run of this migration)",
            )
        source_conversations = await _conversation_store(source, source_backend, create=False)
        generations: dict[str, float] = {}  # conversation id -> created_at: which conversation it is
        if source_conversations is not None:
            for info in await source_conversations.list_conversations():
                generations[info.conversation_id] = info.created_at
        conversation_ids = list(generations)
        if source_conversations is not None or prune:  # (a source without any: prune removes the target's)
            # not created before the target is accepted: a refused target is left as it was
            target_conversations = await _conversation_store(target, target_backend, create=False)
        present: dict[str, float] = {}
        if target_conversations is not None:
            for info in await target_conversations.list_conversations():
                present[info.conversation_id] = info.created_at
        foreign_conversations = set(present) - set(generations)
        # the same id, another conversation (created apart, not copied from this source): never overwritten
        # unless prune makes the target a copy of the source
        clashing = sorted(
            key for key, created in present.items() if key in generations and created != generations[key]
        )
        if clashing and not prune:
            allowed = (
                "a storage whose conversations under the source's ids are copies of the source's; "
                "pass prune=True (--prune) to replace them with the source's"
            )
            if merge:
                allowed += " (--merge cannot keep two conversations under one id)"
            raise InvalidArgumentError(
                "target",
                report.target,
                allowed,
                detail=f"it holds {len(clashing)} conversations {clashing} created apart from the source's "
                "conversations with the same ids (another store's, or ones deleted and created again at "
                "the source since an interrupted run of this migration)",
            )
        if (foreign or (foreign_conversations and source_conversations is not None)) and not (merge or prune):
            raise InvalidArgumentError(
                "target",
                report.target,
                "an empty storage, or one holding only memories of this source (an interrupted migration); "
                "pass merge=True (--merge) to keep its other memories, prune=True (--prune) to remove them",
                detail=f"it holds {len(foreign)} memories and {len(foreign_conversations)} conversations "
                "the source does not have: another store's, or ones deleted from the source since an "
                "interrupted run of this migration (then --prune removes them)",
            )
        if source_conversations is not None and target_conversations is None:
            target_conversations = await _conversation_store(target, target_backend, create=True)
        if prune:
            await _prune(target_backend, target_copies, foreign, batch_size, report)
            target_copies = [memory for memory in target_copies if memory.id not in foreign]
            if target_conversations is not None:
                for conversation_id in sorted(foreign_conversations):
                    report.conversations_pruned += bool(await target_conversations.delete(conversation_id))
        report.total_copies = len(source_copies)
        await _copy_memories(
            source_copies, source_digests, target_copies, target_backend, batch_size, report, progress
        )
        if vectors:
            await _copy_vectors(source_backend, target_backend, source_copies, batch_size, report)
        if source_conversations is not None and target_conversations is not None:
            await _copy_conversations(source_conversations, target_conversations, conversation_ids, report)
        await _verify(source_backend, target_backend, report, vectors=vectors)
        if source_conversations is not None and target_conversations is not None:
            report.conversations = await _verify_conversations(source_conversations, target_conversations)
    finally:
        try:
            for store in (target_conversations, source_conversations):
                if store is not None:
                    await store.close()
            await target_backend.close()
        finally:
            await source_backend.close()
    report.duration_s = time.perf_counter() - started
    return report


async def _conversation_store(
    location: str, backend: MemoryBackend, *, create: bool
) -> ConversationStore | None:
    """The persisted conversations next to a memory storage (``None``: a directory without any)."""
    store: ConversationStore
    if is_dsn(location):
        from context_manager.core.conversations.postgres_store import PostgresConversationStore

        store = PostgresConversationStore(backend.database)  # type: ignore[attr-defined]
    else:
        from context_manager.core.conversations.sqlite_store import (
            CONVERSATIONS_FILE_NAME,
            SQLiteConversationStore,
        )

        path = _conversations_path(location, CONVERSATIONS_FILE_NAME)
        if not create and not path.exists():
            return None
        store = SQLiteConversationStore(path, fsync=True)
    await store.open()
    return store


def _conversations_path(location: str, name: str) -> Path:
    return Path(location).expanduser() / name


def _dump_digest(dump: ConversationDump) -> str:
    text = json.dumps(dump.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def _copy_conversations(
    source: ConversationStore, target: ConversationStore, ids: list[str], report: MigrationReport
) -> None:
    for conversation_id in ids:
        dump = await source.dump(conversation_id)
        if dump is None:  # deleted since it was listed
            continue
        present = await target.dump(conversation_id)
        if present is not None and _dump_digest(present) == _dump_digest(dump):
            report.conversations_already_present += 1
            continue
        await target.restore(dump)
        report.conversations_copied += 1


async def _verify_conversations(
    source: ConversationStore, target: ConversationStore | None
) -> ConversationCheck:
    source_digests: list[str] = []
    target_digests: list[str] = []
    source_records = target_records = target_count = 0
    for info in await source.list_conversations():
        dump = await source.dump(info.conversation_id)
        if dump is None:
            continue
        source_digests.append(_dump_digest(dump))
        source_records += len(dump.records)
        copy = None if target is None else await target.dump(info.conversation_id)
        if copy is not None:
            target_count += 1
            target_records += len(copy.records)
            target_digests.append(_dump_digest(copy))
    return ConversationCheck(
        source_count=len(source_digests),
        target_count=target_count,
        source_records=source_records,
        target_records=target_records,
        source_checksum=_combine(source_digests) if source_digests else "-",
        target_checksum=_combine(target_digests) if target_digests else "-",
    )


async def verify_storage(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    vectors: bool = True,
    connect_timeout: float = 10.0,
) -> MigrationReport:
    """Compare ``target`` with ``source`` (counts and checksums per tier and user); write nothing.

    The target's memories that the source does not have are left out of the comparison.
    ``connect_timeout``: seconds to wait for a PostgreSQL connection before StorageError.

    Raises:
        InvalidArgumentError: a bad location, or source and target the same.
        StorageError: a storage cannot be opened.
    """
    started = time.perf_counter()
    source, target = _location(source, "source"), _location(target, "target")
    source_backend, target_backend = await _open_pair(
        source, target, create_target=False, connect_timeout=connect_timeout
    )
    report = MigrationReport(_describe_location(source), _describe_location(target))
    stores: list[ConversationStore] = []
    try:
        report.total_copies = len(await source_backend.scan(ALL_USERS, every_copy=True))
        await _verify(source_backend, target_backend, report, vectors=vectors)
        source_conversations = await _conversation_store(source, source_backend, create=False)
        if source_conversations is not None:
            stores.append(source_conversations)
            target_conversations = await _conversation_store(target, target_backend, create=False)
            if target_conversations is not None:
                stores.append(target_conversations)
            report.conversations = await _verify_conversations(source_conversations, target_conversations)
    finally:
        try:
            for store in stores:
                await store.close()
            await target_backend.close()
        finally:
            await source_backend.close()
    report.duration_s = time.perf_counter() - started
    return report


async def _prune(
    target: MemoryBackend,
    target_copies: list[Memory],
    foreign: set[str],
    batch_size: int,
    report: MigrationReport,
) -> None:
    """Delete from ``target`` every copy of the ``foreign`` ids (memories the source does not have)."""
    by_tier: dict[MemoryTier, list[str]] = {tier: [] for tier in MemoryTier}
    for memory in target_copies:
        if memory.id in foreign:
            by_tier[memory.tier].append(memory.id)
    for tier, ids in by_tier.items():
        for start in range(0, len(ids), batch_size):
            report.pruned += len(await target.delete(tier, ids[start : start + batch_size]))
    if foreign:
        await target.forget(sorted(foreign))  # their vectors and any trace the storage keeps go too


async def _copy_memories(
    source_copies: list[Memory],
    source_digests: dict[tuple[str, MemoryTier], str],
    target_copies: list[Memory],
    target: MemoryBackend,
    batch_size: int,
    report: MigrationReport,
    progress: Progress | None,
) -> None:
    wanted = {(memory.id, memory.tier): memory for memory in source_copies}
    source_ids = {memory.id for memory in source_copies}
    present = {(memory.id, memory.tier): copy_digest(memory) for memory in target_copies}
    stale: dict[MemoryTier, list[str]] = {tier: [] for tier in MemoryTier}
    for memory in target_copies:
        if memory.id in source_ids and (memory.id, memory.tier) not in wanted:
            stale[memory.tier].append(memory.id)
    for tier, ids in stale.items():
        for start in range(0, len(ids), batch_size):
            report.removed_stale += len(await target.delete(tier, ids[start : start + batch_size]))
    # fastest tier first, as MemoryManager writes them (a backend notes which short-term memories
    # have a long-term copy when the long-term copy is written)
    missing: list[Memory] = []
    for key, memory in sorted(wanted.items(), key=lambda item: (TIER_ORDER[item[0][1]], item[1].created_at)):
        if present.get(key) == source_digests[key]:
            report.already_present += 1
        else:
            missing.append(memory)
    done = report.already_present
    if progress is not None:
        progress(done, report.total_copies)
    for tier in sorted(MemoryTier, key=lambda value: TIER_ORDER[value]):
        batch_of_tier = [memory for memory in missing if memory.tier is tier]
        for start in range(0, len(batch_of_tier), batch_size):
            batch = [memory.copy() for memory in batch_of_tier[start : start + batch_size]]
            await target.put(tier, batch)
            report.copied += len(batch)
            done += len(batch)
            if progress is not None:
                progress(done, report.total_copies)


def _vector_digest(memory_id: str, vector: numpy.ndarray) -> str:
    import numpy as np

    data = memory_id.encode("utf-8") + b"\x00" + np.asarray(vector, dtype="<f4").tobytes()
    return hashlib.sha256(data).hexdigest()


async def _copy_vectors(
    source: MemoryBackend,
    target: MemoryBackend,
    source_copies: list[Memory],
    batch_size: int,
    report: MigrationReport,
) -> None:
    memories: dict[str, Memory] = {}
    for memory in sorted(source_copies, key=lambda m: -TIER_ORDER[m.tier]):
        memories[memory.id] = memory  # the fastest tier's copy wins: its owner is every copy's owner
    for model, dimension in await source.vector_models():
        ids, matrix = await source.load_vectors(model, dimension)
        kept = [(memory_id, row) for row, memory_id in enumerate(ids) if memory_id in memories]
        report.vectors_without_memory += len(ids) - len(kept)
        if not kept:
            continue
        await target.open_vectors(model, dimension)
        target_ids, target_matrix = await target.load_vectors(model, dimension)
        present = {
            memory_id: _vector_digest(memory_id, target_matrix[row])
            for row, memory_id in enumerate(target_ids)
        }
        to_write = []
        for memory_id, row in kept:
            if present.get(memory_id) == _vector_digest(memory_id, matrix[row]):
                report.vectors_already_present += 1
            else:
                to_write.append((memory_id, row))
        async with _bulk_vectors(target, dimension, len(to_write)):
            for start in range(0, len(to_write), batch_size):
                chunk = to_write[start : start + batch_size]
                owners = [memories[memory_id] for memory_id, _ in chunk]
                await target.save_vectors(model, owners, matrix[[row for _, row in chunk]])
                report.vectors_copied += len(chunk)


def _bulk_vectors(target: MemoryBackend, dimension: int, count: int) -> AbstractAsyncContextManager[None]:
    """Around writing ``count`` vectors to ``target`` (on PostgreSQL the HNSW index is built after them)."""
    from context_manager.core.memory.postgres import PostgresBackend

    if isinstance(target, PostgresBackend):
        return target.bulk_vectors(dimension, count)
    return contextlib.nullcontext()  # a storage directory's vector index takes them as cheaply one by one


def _group_digests(copies: list[Memory], ids: set[str] | None) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for memory in copies:
        if ids is not None and memory.id not in ids:
            continue
        groups.setdefault((memory.tier.value, owner_label(memory.user_id)), []).append(copy_digest(memory))
    return groups


async def _verify(
    source: MemoryBackend, target: MemoryBackend, report: MigrationReport, *, vectors: bool
) -> None:
    source_copies = await source.scan(ALL_USERS, every_copy=True)
    source_ids = {memory.id for memory in source_copies}
    source_groups = _group_digests(source_copies, None)
    target_groups = _group_digests(await target.scan(ALL_USERS, every_copy=True), source_ids)
    order = {tier.value: TIER_ORDER[tier] for tier in MemoryTier}
    keys = sorted(set(source_groups) | set(target_groups), key=lambda key: (order[key[0]], key[1]))
    report.groups = [
        GroupCheck(
            tier=tier,
            user=user,
            source_count=len(source_groups.get((tier, user), [])),
            target_count=len(target_groups.get((tier, user), [])),
            source_checksum=_combine(source_groups[(tier, user)]) if (tier, user) in source_groups else "-",
            target_checksum=_combine(target_groups[(tier, user)]) if (tier, user) in target_groups else "-",
        )
        for tier, user in keys
    ]
    if not vectors:
        return
    checks: list[VectorCheck] = []
    target_models = set(await target.vector_models())
    for model, dimension in await source.vector_models():
        ids, matrix = await source.load_vectors(model, dimension)
        source_digests = [_vector_digest(i, matrix[row]) for row, i in enumerate(ids) if i in source_ids]
        target_digests: list[str] = []
        if (model, dimension) in target_models:
            target_ids, target_matrix = await target.load_vectors(model, dimension)
            target_digests = [
                _vector_digest(i, target_matrix[row]) for row, i in enumerate(target_ids) if i in source_ids
            ]
        if not source_digests and not target_digests:
            continue
        checks.append(
            VectorCheck(
                model=model,
                dimension=dimension,
                source_count=len(source_digests),
                target_count=len(target_digests),
                source_checksum=_combine(source_digests) if source_digests else "-",
                target_checksum=_combine(target_digests) if target_digests else "-",
            )
        )
    report.vectors = checks
