"""Statistics, JSONL export/import and index upkeep of the memory manager."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from context_manager.core.errors import (
    InvalidMemoryError,
    StorageCorruptedError,
    StorageError,
)
from context_manager.core.memory.backend import TIER_ORDER
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.memory.state import UserScope
from context_manager.core.memory.tiers import _EMBED_BATCH, TierMovement
from context_manager.core.memory.validation import (
    check_content,
    check_importance,
    check_memory_id,
    check_metadata,
    check_moment,
    check_path,
    check_tags,
    check_text,
    check_tier,
    check_user,
)
from context_manager.core.memory.write_health import records_write_outcome
from context_manager.core.threads import to_the_end

__all__ = [
    "MemoryMaintenance",
    "check_supersession_rings",
    "check_unique_id",
    "exported_line",
    "parse_exported_line",
]

_IMPORT_CHUNK = 500
"""Copies an import writes per hold of the locks (other writers go on between chunks)."""
_TURN_LOCKS = 32
"""Sessions whose turn locks one step of an import holds at most (on a shared storage)."""

ImportProgress = Callable[[str, int, int], None]
"""What ``import_memories(progress=...)`` calls: the stage (``"writing"``, ``"embedding"``), done, total."""

logger = logging.getLogger(__name__)


def _check_record(data: dict[str, Any]) -> None:
    """The fields of an exported line that ``Memory.from_dict`` takes loosely, as the API would take them.

    ``from_dict`` also reads the storage's own log, so it stays lenient: a bool metadata became ``{}``, a
    number source or context its text, and any finite time was kept (one past the year 9999 broke every
    search naming a month).
    """
    if "tier" in data:
        check_tier(data["tier"])
    for name in ("created_at", "last_accessed"):
        if name in data:
            check_moment(data[name], name)
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidMemoryError("metadata", metadata, "a JSON object with JSON values, or null")
    if "source" in data and not isinstance(data["source"], str):
        raise InvalidMemoryError("source", data["source"], "a non-empty string")
    context = data.get("context")
    if context is not None and not isinstance(context, str):
        raise InvalidMemoryError("context", context, "a string or null")
    check_user(data.get("user_id"), allow_all=False)


def _check_imported_fields(memory: Memory) -> None:
    """The text fields of an imported memory as the API would take them (ids, source, context).

    ``Memory.from_dict`` checks their types; a lone surrogate or a NUL would fail only at the write.
    """
    check_memory_id(memory.id, field="id")
    check_text(memory.source, "source")
    check_text(memory.context, "context", empty=True)
    check_memory_id(memory.superseded_by, field="superseded_by", optional=True)
    if memory.superseded_by == memory.id:  # hidden from search for good, and no undo could restore it
        raise InvalidMemoryError(
            "superseded_by",
            memory.superseded_by,
            "null or the id of another memory (the one that consolidated this one)",
            detail="a memory cannot supersede itself",
        )
    for original in memory.merged_from:
        check_memory_id(original, field="merged_from")
    if memory.id in memory.merged_from:
        raise InvalidMemoryError(
            "merged_from",
            memory.merged_from,
            "the ids of other memories (the originals this one consolidates)",
            detail="a memory cannot consolidate itself",
        )


def check_supersession_rings(
    links: dict[str, tuple[str | None, str, str]], *, expected: str = "a memory as written by export_memories"
) -> None:
    """Refuse memories of one import that supersede one another in a ring (``a`` by ``b``, ``b`` by ``a``).

    Every memory of a ring would stay hidden from search for good, and no undo could restore one.

    Args:
        links: Each imported memory's id: its ``superseded_by``, where its line is (``"path:line"``) and
            the line.
        expected: What a line should be, for the error.

    Raises:
        InvalidMemoryError: a ring (``field`` is the location of the line of one of its memories).
    """
    finished: set[str] = set()
    for start in links:
        path: list[str] = []
        position: dict[str, int] = {}
        node: str | None = start
        while node is not None and node in links and node not in finished:
            if node in position:
                ring = path[position[node] :]
                chain = " -> ".join(repr(memory_id) for memory_id in [*ring, node])
                _, location, line = links[node]
                raise InvalidMemoryError(
                    location,
                    line[:80],
                    expected,
                    detail=f"superseded_by: memories superseded by one another in a ring ({chain}); allowed "
                    "null or the id of the memory that consolidated this one, itself never superseded by it",
                )
            position[node] = len(path)
            path.append(node)
            node = links[node][0]
        finished.update(path)


def check_unique_id(
    links: dict[str, tuple[str | None, str, str]],
    memory_id: str,
    location: str,
    line: str,
    *,
    expected: str = "a memory as written by export_memories",
) -> None:
    """Refuse a second line of one import holding the id of an earlier one.

    One of the two would be lost without a word (the later line replaced the earlier one, and the summary
    counted one memory): which is right only the user can tell.

    Args:
        links: The memories of the lines read so far, as :func:`check_supersession_rings` takes them.
        memory_id: The id of the line at ``location``.
        location: Where the line is (``"path:line"``).
        line: The line.
        expected: What a line should be, for the error.

    Raises:
        InvalidMemoryError: the id is on an earlier line (``field`` is ``location``; the message names both).
    """
    earlier = links.get(memory_id)
    if earlier is not None:
        raise InvalidMemoryError(
            location,
            line[:80],
            expected,
            detail=f"id {memory_id!r} is on {earlier[1]} too; each memory once: remove one of the two lines",
        )


def _another_users_id(memory_id: str, link: tuple[str | None, str, str]) -> InvalidMemoryError:
    """The error refusing an imported line whose id holds another user's memory in the store.

    Replacing it would delete that user's memory without a word (ids are unique across users, and
    ``add_memory(memory_id=...)`` refuses another user's id for the same reason). Whose memory it is is
    not named: the file may come from someone who may not know.
    """
    _, location, line = link
    return InvalidMemoryError(
        location,
        line[:80],
        "a memory whose id is new to this store or holds a memory of the same user (which it replaces)",
        detail=f"id {memory_id!r} holds another user's memory here; nothing was imported: give the line "
        "another id, or delete that memory first",
    )


def _recorded_tiers(value: Any) -> set[MemoryTier] | None:
    """The ``tiers`` of an exported line (``None`` when absent); raises ``ValueError`` when malformed."""
    if value is None:
        return None
    allowed = "a non-empty list of 'short', 'medium', 'long'"
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ValueError(f"tiers: got {value!r}; allowed {allowed}")
    try:
        return {MemoryTier.parse(item) for item in value}
    except ValueError:
        raise ValueError(f"tiers: got {value!r}; allowed {allowed}") from None


def _non_finite(value: Any, path: str) -> str | None:
    """Where in ``value`` (JSON values of a memory) a NaN or an infinity is: ``path.key[0]``, or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def non_finite_memory_error(record: Mapping[str, Any], doing: str, kept: str) -> StorageCorruptedError:
    """The error for a stored memory holding a NaN or an infinity (JSON holds neither).

    Args:
        record: The memory's JSON fields (``Memory.to_dict()``).
        doing: What could not be done, e.g. ``"export memory"``.
        kept: What was left as it was, e.g. ``"nothing was exported (an earlier export file is kept)"``.
    """
    where = next(
        (found for key, value in record.items() if (found := _non_finite(value, key)) is not None),
        "a value",
    )
    return StorageCorruptedError(
        f"cannot {doing} {record.get('id')!r}: its {where} is not a finite number (NaN or an "
        "infinity, which JSON cannot hold; another program wrote it into the store, since adding a "
        f"memory refuses one); {kept}: correct the value in the store, or delete the memory "
        f"(context-manager memory delete {record.get('id')} --all-users), and try again"
    )


def exported_line(record: Mapping[str, Any]) -> str:
    """A memory's line of an export: strict JSON (RFC 8259), which any JSON parser reads.

    Raises:
        StorageCorruptedError: a value is NaN or an infinity (no memory the library writes holds one:
            another program wrote it into the store). ``json.dumps`` wrote it as ``NaN`` or ``Infinity``,
            which ``jq``, JavaScript and most parsers refuse, and which the import refused only when it
            read the file back: a backup found unusable when it was needed.
    """
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        raise non_finite_memory_error(
            record, "export memory", "nothing was exported (an earlier export file is kept)"
        ) from None


def _refuse_constant(name: str) -> Any:
    """``json.loads``'s ``parse_constant``: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise ValueError(f"{name} is not a JSON number; allowed finite numbers (an export holds no other)")


def _finite_float(text: str) -> float:
    """``json.loads``'s ``parse_float``: a number too large for a float (``1e999``) was an infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range; allowed finite numbers (an export holds no other)")
    return value


def parse_exported_line(
    line: str, location: str, *, expected: str = "a memory as written by export_memories"
) -> tuple[Memory, set[MemoryTier] | None]:
    """One line of an export: the memory, checked as :meth:`~MemoryMaintenance.import_memories` takes it.

    Args:
        line: A non-blank line of the file (lines are split at newline characters only).
        location: Where it is, for the error (``"path:line"``).
        expected: What a line should be, for the error (the CLI names its own command).

    Returns:
        The memory and the tiers its line records (``None`` for an older export without ``tiers``).

    Raises:
        InvalidMemoryError: the line is not a valid memory (``field`` is ``location``).
    """
    try:
        # strict JSON: NaN and infinities are refused here, each named (not as a field's odd value later)
        data = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        importance = check_importance(data.get("importance", 0.5))  # as written: not true, not "0.7"
        _check_record(data)
        memory = Memory.from_dict(data)
        _check_imported_fields(memory)
        check_content(memory.content)
        memory.importance = importance
        memory.tags = check_tags(memory.tags)
        memory.metadata = check_metadata(memory.metadata)
        recorded = _recorded_tiers(data.get("tiers"))
    except (ValueError, KeyError, TypeError, ArithmeticError, RecursionError) as error:
        # InvalidMemoryError is a ValueError; RecursionError: a JSON bomb too deep to parse. A KeyError is a
        # field the line lacks: its str() is only the quoted name ("'id'")
        detail = f"{error.args[0]}: missing" if isinstance(error, KeyError) and error.args else str(error)
        raise InvalidMemoryError(location, line[:80], expected, detail=detail) from error
    return memory, recorded


class MemoryMaintenance(TierMovement):
    """``get_memory_stats``, ``export_memories``, ``import_memories``, ``optimize``, integrity, ``flush``."""

    async def get_memory_stats(self, *, user_id: UserScope = None) -> dict[str, Any]:
        """Counts and health of the memory.

        Args:
            user_id: Whose memories (``None``: the default namespace; :data:`ALL_USERS`: everyone's,
                with a ``by_user`` breakdown).

        Returns:
            ``total_memories`` (distinct memories), ``by_tier`` (stored copies per tier: an important
            memory is in short-term *and* has a long-term copy, so it counts in two tiers and the
            tiers can add up to more than the total), ``stored_copies`` (the sum of ``by_tier``),
            ``in_two_tiers`` (memories counted in two tiers), ``capacity``, ``over_capacity`` (tiers),
            ``superseded``,
            ``oldest``/``newest`` (epoch seconds or ``None``), ``mean_importance``, ``bytes_on_disk``
            (``log``, ``database``, ``total``), ``pending_access_updates`` (of these memories: search hits
            not written yet), ``index`` (``status``:
            ``"ok"``, ``"damaged"`` or ``"unchecked"``, from the latest :meth:`check_integrity` (the
            periodic health check runs one) or :meth:`rebuild_index`; ``checked_at``, ``check``
            (``"quick"``, ``"full"`` or ``"rebuilt"``), ``problems``, ``engine``, ``vectors``),
            ``writes`` (outcomes of writes since opening: ``writes``, ``failures``,
            ``consecutive_failures``, ``last_error``, ``last_failure_at``, ``last_success_at``),
            ``storage_path`` and, for :data:`ALL_USERS`, ``by_user``.
        """
        check_user(user_id, allow_all=True)
        backend = self._require("get_memory_stats")
        counted = await backend.stats(user_id)
        by_tier = counted.by_tier
        total = counted.total
        capacity = {
            "short": self.config.short_term_memory_size,
            "medium": self.config.medium_term_memory_size,
            "long": self.config.long_term_memory_size,
        }
        sizes = await backend.size()
        stored_copies = sum(by_tier.values())
        stats: dict[str, Any] = {
            "total_memories": total,
            "by_tier": by_tier,
            "stored_copies": stored_copies,
            "in_two_tiers": stored_copies - total,
            "capacity": capacity,
            "over_capacity": [tier for tier, count in by_tier.items() if count > capacity[tier]],
            "superseded": counted.superseded,
            "oldest": counted.oldest,
            "newest": counted.newest,
            "mean_importance": counted.importance_total / total if total else None,
            "bytes_on_disk": sizes,
            "pending_access_updates": self._pending_access_updates(user_id),
            "index": {
                **self._index_status(),
                "engine": "sqlite-fts5 bm25" if backend.kind == "sqlite" else "postgresql tsvector",
                "vectors": backend.vector_count(),
            },
            "backend": backend.kind,
            "writes": self.write_health.to_dict(),
            "storage_path": str(self.storage_path) if backend.kind == "sqlite" else backend.location,
        }
        if user_id is ALL_USERS:
            stats["by_user"] = counted.by_user
        return stats

    def _pending_access_updates(self, user_id: UserScope) -> int:
        """How many of ``user_id``'s memories have search hits not yet written (everyone's: all of them)."""
        if user_id is ALL_USERS:
            return len(self._pending_touches)
        return sum(1 for *_, owner in self._pending_touches.values() if owner == user_id)

    async def export_memories(self, path: str | Path, *, user_id: UserScope = None) -> int:
        """Write memories (one JSON object per line, every field, superseded ones too) to ``path``.

        A memory held in two tiers is written once: its fastest tier's copy, with ``tiers`` listing
        every tier holding a copy (``["short", "long"]`` for an important memory), which
        :meth:`import_memories` restores. A file is replaced atomically (a temporary file beside it, then
        renamed; through a symbolic link, the file it leads to, and the link stays); a path that is no
        regular file (a named pipe, a shell's ``>(...)``) or leads into ``/dev``
        or ``/proc`` (``/dev/stdout``, redirected to a file too) is written through. Returns how many
        memories were written. The file is strict JSON Lines, which any JSON parser reads.

        Raises:
            StorageCorruptedError: a memory holds a NaN or an infinity (only another program can have
                written one into the store): the message names the memory and the field; a file is
                left as it was (nothing is renamed over it).
        """
        check_user(user_id, allow_all=True)
        target = check_path(path)
        backend = self._require("export_memories")
        self._refuse_storage_file(target)
        async with self._write_lock:
            await self._flush_touches_locked()
            copies = await backend.scan(user_id, every_copy=True)
        fastest: dict[str, Memory] = {}
        tiers: dict[str, set[MemoryTier]] = {}
        for memory in copies:
            tiers.setdefault(memory.id, set()).add(memory.tier)
            held = fastest.get(memory.id)
            if held is None or TIER_ORDER[memory.tier] < TIER_ORDER[held.tier]:
                fastest[memory.id] = memory

        def records() -> Iterator[str]:
            for memory_id, memory in fastest.items():
                record = memory.to_dict()
                record["tiers"] = [
                    tier.value for tier in sorted(tiers[memory_id], key=TIER_ORDER.__getitem__)
                ]
                yield exported_line(record)

        def write_through() -> int:
            """Into a pipe or device (``mkfifo``, ``>(gzip > b.gz)``, ``/dev/stdout``): it is not replaced."""
            count = 0
            with open(target, "w", encoding="utf-8") as handle:  # noqa: PTH123
                for line in records():
                    handle.write(line)
                    count += 1
            return count

        def write() -> int:
            if target.exists() and not target.is_dir() and written_through(target):
                # a temporary file renamed over a pipe replaced it (its reader got nothing), and none can
                # be made beside /dev/fd/63
                return write_through()
            count = 0
            # a link (``backup.jsonl -> /backups/2026/backup.jsonl``) stays a link: the file it leads to
            # is replaced, from a temporary file in that file's directory (a rename replaced the link)
            final = Path(os.path.realpath(target)) if target.is_symlink() else target
            temporary = final.with_name(final.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    for line in records():
                        handle.write(line)
                        count += 1
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, final)
            except BaseException:
                # a copy of the memories must not stay behind (it would keep text deleted afterwards)
                temporary.unlink(missing_ok=True)
                raise
            return count

        try:
            return await asyncio.to_thread(write)
        except StorageError:  # a memory that cannot be written (it says which), not the file
            raise
        except OSError as error:
            raise StorageError(f"cannot export memories to {target}: {error}", path=target) from error

    def _refuse_storage_file(self, path: Path) -> None:
        """Refuse a path inside the embedded storage's directory (export would replace its own files)."""
        if self._require("export_memories").kind != "sqlite":
            return
        storage = self.storage_path.expanduser().resolve()
        resolved = path.resolve()
        if resolved == storage or storage in resolved.parents:
            raise InvalidMemoryError(
                "path", str(path), f"a file outside the memory storage directory {storage}"
            )

    @records_write_outcome
    async def import_memories(
        self, path: str | Path, *, progress: ImportProgress | None = None
    ) -> dict[str, Any]:
        """Load memories written by :meth:`export_memories` (ids kept; existing ids are replaced).

        Every line is validated first: one bad line raises and nothing is imported (a line holding the id
        of an earlier one too, or the id of another user's memory in this store: only a memory of the same
        user, or of the default namespace for a line without ``user_id``, is replaced; or a
        ``superseded_by`` naming no consolidated memory of the same user, in the file or the store, whose
        ``merged_from`` names it: hidden for good, nothing could restore it). Each memory gets
        back the tiers it had (``tiers``: a short-term memory with a long-term copy gets both); a line
        without ``tiers`` (an older export) goes to its ``tier``, plus a long-term copy when it is
        short-term and at least ``long_term_importance_threshold`` important, as :meth:`add_memory`
        places it. What does not fit a tier's capacity flows to the next one (a short-term copy whose
        memory has a long-term copy is just not made; the counts are read once, before the first write: an
        overflow that writes between the chunks add is moved in the background once they are written).

        The memories are written :data:`_IMPORT_CHUNK` copies at a time, then embedded (with an
        embedder) a batch at a time: the manager's locks are held only while a chunk is written or a
        batch's vectors saved, so other writes (the indexing of evicted messages among them) go on during
        a long import; new turns that ``remember_messages`` writes meanwhile to a session the file holds
        are numbered after the file's turns of it (on PostgreSQL in any process: each session's last turn
        in the file is written first, under the lock ``remember_messages`` numbers that session's turns
        with). Stopped midway by an error or a cancellation, the
        chunks written stay (and get their vectors in the background): the error has a note saying how
        many memories were written, and importing the file again finishes the import. A memory whose text
        the file changes loses its old text's vector as its chunk is written (embedded again after).

        Args:
            path: A file written by :meth:`export_memories`.
            progress: Called on the event loop (keep it quick) after each chunk with the stage
                (``"writing"``: copies written; ``"embedding"``: memories embedded), the count done and
                the total: a command line shows it while a large import runs.

        Returns:
            ``imported`` (memories), ``replaced`` (ids that already existed) and ``by_tier`` (copies
            placed per tier: a memory with a long-term copy counts in two).

        Raises:
            InvalidMemoryError: a line is not a valid memory, its id holds another user's memory, or its
                ``superseded_by`` names no memory that could restore it (its line number is in the message).
            StorageError: the file cannot be read.
        """
        source = check_path(path)
        backend = self._require("import_memories")
        try:
            lines = await asyncio.to_thread(source.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise StorageError(f"cannot read memories from {source}: {error}", path=source) from error
        memories: dict[str, Memory] = {}
        long_copies: set[str] = set()  # memories with a long-term copy besides their faster one
        links: dict[str, tuple[str | None, str, str]] = {}  # id: superseded_by, location, line
        threshold = self.config.long_term_importance_threshold
        # "\n" only: export writes U+2028, U+0085 and the like as they are, and splitlines() breaks at them
        for number, line in enumerate(lines.split("\n"), start=1):
            if not line.strip():
                continue
            location = f"{source}:{number}"
            memory, recorded = parse_exported_line(line, location)
            check_unique_id(links, memory.id, location, line)
            links[memory.id] = (memory.superseded_by, location, line)
            if recorded is None:  # an older export: place it as add_memory would
                recorded = {memory.tier}
                if memory.tier is MemoryTier.SHORT and memory.importance >= threshold:
                    recorded.add(MemoryTier.LONG)
            memory.tier = min(recorded, key=TIER_ORDER.__getitem__)
            memories[memory.id] = memory
            if MemoryTier.LONG in recorded and memory.tier is not MemoryTier.LONG:
                long_copies.add(memory.id)
            else:
                long_copies.discard(memory.id)
        check_supersession_rings(links)
        # the turn numbers the import holds per (user, session): remember_messages numbers new turns of
        # these sessions after them while the import runs (its turns are written a chunk at a time)
        floors: dict[tuple[str | None, str], int] = {}
        for memory in memories.values():
            if memory.session_id is not None:
                key = (memory.user_id, memory.session_id)
                turn = memory.turn_index
                floors[key] = max(floors.get(key, 0), 0 if turn is None else turn + 1)
        # the turn lock first, as remember_messages takes it: a chunk of turns numbered before the import
        # and written after it would take numbers of imported turns (and count on from there)
        async with self._turn_lock, self._write_lock:
            self._victim_reserve.clear()  # the imported memories replace some: rank the tiers again
            replaced = await backend.copies(list(memories))
            for copy in replaced:  # nothing is written yet: a refusal imports nothing
                if copy.user_id != memories[copy.id].user_id:
                    raise _another_users_id(copy.id, links[copy.id])
            await self._check_merged_into(memories, links)
            existing = {copy.id for copy in replaced}
            placement = await self._place_for_import(list(memories.values()), long_copies, replaced)
            self._import_turn_floors.append(floors)
            self._forget_turn_state(floors)
        try:
            await self._write_imported(memories, placement, floors, links, progress)
        finally:
            self._import_turn_floors[:] = [held for held in self._import_turn_floors if held is not floors]
        await self._move_overflow_of_import()
        by_tier = {tier.value: len(placement[tier]) for tier in MemoryTier}
        await self._embed_imported(list(memories.values()), progress)
        self._maybe_compact()
        return {"imported": len(memories), "replaced": len(existing), "by_tier": by_tier}

    async def _write_imported(
        self,
        memories: Mapping[str, Memory],
        placement: Mapping[MemoryTier, list[Memory]],
        floors: Mapping[tuple[str | None, str], int],
        links: Mapping[str, tuple[str | None, str, str]],
        progress: ImportProgress | None,
    ) -> int:
        """Write the placed copies of an import, :data:`_IMPORT_CHUNK` at a time; return the memories written.

        Each chunk holds the turn and write locks only while it is written (other writers, the indexing
        of evicted messages among them, go on between chunks): in the order one long hold wrote them
        (short-term first: the backend notes which short-term memories also have a long-term copy). A
        memory's copies it replaces, in the tiers its placement does not use, are deleted with the chunk
        writing its new copy (never before: killed anywhere, every memory has a copy, old or new; the
        copies in tiers it does use are replaced by the puts). On a shared storage the copies of each
        session's last turn come first, with the cross-process turn locks of up to :data:`_TURN_LOCKS`
        sessions held (see :meth:`import_memories`).

        Stopped midway (an error or a cancellation), the chunks written stay: the error gets a note of
        how many memories were written (``progress`` says it too), those written get their vectors in
        the background; importing the file again finishes the import (its ids are replaced).
        """
        backend = self._require("import_memories")
        tiers_of: dict[str, set[MemoryTier]] = {}
        for tier, items in placement.items():
            for memory in items:
                tiers_of.setdefault(memory.id, set()).add(tier)
        order = (MemoryTier.SHORT, MemoryTier.MEDIUM, MemoryTier.LONG)
        heads = _last_turns(memories, floors) if backend.shared else {}
        first_written = set(heads.values())
        head_copies = [
            (tier, memory) for tier in order for memory in placement[tier] if memory.id in first_written
        ]
        chunks = [
            (tier, rest[start : start + _IMPORT_CHUNK])
            for tier in order
            for rest in ([memory for memory in placement[tier] if memory.id not in first_written],)
            for start in range(0, len(rest), _IMPORT_CHUNK)
        ]
        total = sum(len(items) for items in placement.values())
        done = 0
        written: dict[str, None] = {}
        try:
            # on a shared storage each session's last turn first, under the lock remember_messages numbers
            # a session's turns with: another process numbering a turn of it between two chunks read the
            # highest turn written so far (499 of 700) and gave out numbers the next chunk wrote again
            keys = sorted(heads, key=json.dumps)
            for first in range(0, len(keys), _TURN_LOCKS):
                batch = keys[first : first + _TURN_LOCKS]
                head_ids = {heads[key] for key in batch}
                names = [f"turns:{json.dumps(key)}" for key in batch]
                async with self._turn_lock, backend.exclusive(*names), self._write_lock:
                    for tier in order:
                        items = [memory for at, memory in head_copies if at is tier and memory.id in head_ids]
                        if items:
                            await self._write_import_chunk(
                                tier, items, memories, tiers_of, floors, links, written
                            )
                            done += len(items)
                if progress is not None:
                    progress("writing", done, total)
            for tier, items in chunks:
                async with self._turn_lock, self._write_lock:
                    await self._write_import_chunk(tier, items, memories, tiers_of, floors, links, written)
                done += len(items)
                if progress is not None:
                    progress("writing", done, total)
                await asyncio.sleep(0)  # a write started meanwhile takes the free locks before the next chunk
        except BaseException as error:
            count = len(written)
            if isinstance(error, Exception):
                error.add_note(
                    f"import_memories: {count} of {len(memories)} memories were written before this error "
                    "and stay; import the file again to finish (the ids it holds are replaced)"
                )
            logger.warning(
                "import_memories stopped (%s) after writing %d of %d memories; they stay",
                type(error).__name__,
                count,
                len(memories),
            )
            if self.embedder is not None and written:
                self._embed_later([memories[memory_id] for memory_id in written])
            if written and self._state == "ready" and not self._closing:
                # the chunks written may have filled a tier past its capacity (a write between two chunks
                # took room they were placed in): moved now, not left over until the next write
                self._start_rebalance()
            raise
        return len(written)

    async def _write_import_chunk(
        self,
        tier: MemoryTier,
        items: list[Memory],
        memories: Mapping[str, Memory],
        tiers_of: Mapping[str, set[MemoryTier]],
        floors: Mapping[tuple[str | None, str], int],
        links: Mapping[str, tuple[str | None, str, str]],
        written: dict[str, None],
    ) -> None:
        """Write one chunk of an import's copies in ``tier`` (call with the turn and write locks).

        The copies it replaces in tiers the memory's placement does not use are deleted after the put;
        the ids are added to ``written`` once put.
        """
        backend = self._require("import_memories")
        ids = [memory.id for memory in items]
        stored = await backend.copies(ids)
        for copy in stored:  # written meanwhile by another user (an id given to add_memory)
            if copy.user_id != memories[copy.id].user_id:
                raise _another_users_id(copy.id, links[copy.id])
        # a memory whose text the import replaces loses the old text's vector first (as an update of a
        # text does): embedded after every chunk is written, an import stopped before that (killed, its
        # model failing) left the old vector for good (the next open embeds memories without one only)
        retexted = [copy.id for copy in stored if copy.content != memories[copy.id].content]
        if retexted:
            await backend.delete_vectors(list(dict.fromkeys(retexted)))
        try:
            await backend.put(tier, items)
            written.update(dict.fromkeys(ids))
            stale: dict[MemoryTier, list[str]] = {}
            for copy in stored:
                if copy.tier not in tiers_of[copy.id]:
                    stale.setdefault(copy.tier, []).append(copy.id)
            for stale_tier, stale_ids in stale.items():
                await backend.delete(stale_tier, stale_ids)
        finally:  # the tiers and sessions changed: ranked and read again from the storage
            self._victim_reserve.clear()
            self._forget_turn_state(floors)

    async def _embed_imported(self, memories: list[Memory], progress: ImportProgress | None) -> None:
        """Embed imported memories (stored already) and save their vectors, a batch at a time.

        The model runs without the locks (it is nearly all of an import's time with the default
        embedder): only saving a batch's vectors takes the write lock, for the memories still stored with
        the text embedded. Stopped (a cancellation, an error: the memories are all written), what is
        left is embedded in the background; a batch whose vectors were saved is not embedded again, and
        an error gets a note saying the memories were written.
        """
        if self.embedder is None:
            return
        done = 0  # memories whose batch is embedded and saved
        try:
            for start in range(0, len(memories), _EMBED_BATCH):
                batch = memories[start : start + _EMBED_BATCH]
                texts = [memory.content for memory in batch]
                vectors = await self._vectors_of_texts(texts, len(batch))
                if vectors is not None:
                    # saved in a task of its own: a cancellation of the import waits for the save to end
                    save = asyncio.ensure_future(self._save_unchanged(batch, texts, vectors))
                    try:
                        await to_the_end(save)
                    except asyncio.CancelledError:
                        if save.done() and not save.cancelled() and save.exception() is None:
                            done = start + len(batch)  # saved before the cancellation was raised
                        raise
                done = start + len(batch)
                if progress is not None:
                    progress("embedding", done, len(memories))
        except BaseException as error:
            if isinstance(error, Exception):
                error.add_note(
                    f"import_memories: all {len(memories)} memories were written before this error; "
                    f"{len(memories) - done} get their vectors in the background"
                )
            self._embed_later(memories[done:])
            raise

    async def _move_overflow_of_import(self) -> None:
        """Start the overflow move if the import left a tier over its capacity.

        The copies are placed by the counts read before the first chunk: a write between two chunks (which
        found the tier within its capacity) and the chunks after it can fill a tier past its capacity.
        """
        backend = self._require("import_memories")
        short_count = await backend.count(MemoryTier.SHORT)
        medium_count = await backend.count(MemoryTier.MEDIUM)
        over = (
            short_count > self.config.short_term_memory_size
            or medium_count > self.config.medium_term_memory_size
        )
        if over and self._state == "ready" and not self._closing:
            self._start_rebalance()

    def _forget_turn_state(self, floors: Mapping[tuple[str | None, str], int]) -> None:
        """Drop what is cached of the sessions of an import: their last turn and its number are read again.

        Conversation turns imported may replace a session's last turn (its text, which the next turn
        indexes as its context) or continue its numbering.
        """
        for key in floors:
            self._last_turn.pop(key, None)
            self._turn_counters.pop(key, None)

    async def _check_merged_into(
        self, memories: Mapping[str, Memory], links: Mapping[str, tuple[str | None, str, str]]
    ) -> None:
        """Refuse an imported memory superseded by a memory that cannot restore it (call with the lock).

        Its ``superseded_by`` must name a memory of the file, or else of the store, of the same user,
        whose ``merged_from`` names it: otherwise it would be hidden from search for good, with no
        ``undo_consolidation`` to restore it, and the next cleanup would delete it as an orphan.

        Raises:
            InvalidMemoryError: such a line (``field`` is its location); nothing is imported.
        """
        wanted = {
            memory.superseded_by
            for memory in memories.values()
            if memory.superseded_by is not None and memory.superseded_by not in memories
        }
        stored: dict[str, Memory] = {}
        if wanted:
            for copy in await self._require("import_memories").copies(sorted(wanted)):
                stored.setdefault(copy.id, copy)
        for memory in memories.values():
            merged_id = memory.superseded_by
            if merged_id is None:
                continue
            merged = memories.get(merged_id) or stored.get(merged_id)
            if merged is None:
                problem = f"{merged_id!r} is no memory of this file or of this store"
            elif merged.user_id != memory.user_id:
                problem = f"{merged_id!r} is another user's memory"
            elif memory.id not in merged.merged_from:
                problem = f"{merged_id!r} does not name it in merged_from"
            else:
                continue
            _, location, line = links[memory.id]
            raise InvalidMemoryError(
                location,
                line[:80],
                "a memory as written by export_memories",
                detail=f"superseded_by: {problem}, so nothing could show or restore it; allowed null or the "
                "id of the consolidated memory of the same user whose merged_from names it (in the file or "
                "the store); nothing was imported: set superseded_by to null to import it visible, import it "
                "with its consolidated memory, or leave the line out (cleanup_old_memories would delete it)",
            )

    async def _place_for_import(
        self, memories: list[Memory], long_copies: set[str], replaced: list[Memory]
    ) -> dict[MemoryTier, list[Memory]]:
        """Put each memory in its fastest recorded tier, plus a long-term copy for ``long_copies``.

        Overflow (least valuable first) flows down a tier; a memory that has a long-term copy anyway
        just loses the faster copy that does not fit. The ``replaced`` copies (of the imported ids, still
        stored) leave room in their tier.
        """
        backend = self._require("import_memories")
        now = self._clock()
        placement: dict[MemoryTier, list[Memory]] = {tier: [] for tier in MemoryTier}
        for memory in memories:
            placement[memory.tier].append(memory)
        leaving = {tier: sum(1 for copy in replaced if copy.tier is tier) for tier in MemoryTier}
        room = {
            tier: capacity - await backend.count(tier) + leaving[tier]
            for tier, capacity in (
                (MemoryTier.SHORT, self.config.short_term_memory_size),
                (MemoryTier.MEDIUM, self.config.medium_term_memory_size),
            )
        }
        for tier, lower in ((MemoryTier.SHORT, MemoryTier.MEDIUM), (MemoryTier.MEDIUM, MemoryTier.LONG)):
            items = placement[tier]
            space = max(0, room[tier])
            if len(items) > space:
                items.sort(key=lambda m: self._value(m, now), reverse=True)
                placement[tier], overflow = items[:space], items[space:]
                placement[lower].extend(m for m in overflow if m.id not in long_copies)
        placement[MemoryTier.LONG].extend(
            memory.copy(tier=MemoryTier.LONG) for memory in memories if memory.id in long_copies
        )
        return placement

    @records_write_outcome
    async def optimize(self) -> dict[str, Any]:
        """Persist access updates, compact the log, merge FTS5 segments, checkpoint the WAL.

        Returns:
            ``log_bytes_before``/``after``, ``database_bytes_before``/``after``, ``duration_ms``.
        """
        backend = self._require("optimize")
        started = time.perf_counter()
        async with self._write_lock:
            await self._flush_touches_locked()
            report = dict(await backend.optimize())
        report["duration_ms"] = (time.perf_counter() - started) * 1000.0
        return report

    async def check_integrity(self, *, quick: bool = False) -> dict[str, Any]:
        """Check the database and every FTS5 index.

        Args:
            quick: ``False`` (default): ``PRAGMA integrity_check`` and FTS5's ``integrity-check``, under
                the write lock (writes wait: about 1 s at 200k memories). ``True``: ``PRAGMA
                quick_check`` and a full read of the long-term FTS5 index on a separate read-only
                connection, without the write lock, so writes go on meanwhile; finds damaged pages and
                index pages, not rows that disagree with an intact index. The periodic health check
                uses it.

        Returns:
            ``ok`` (bool), ``mode`` (``"full"`` or ``"quick"``), ``sqlite``, ``fts``, ``short_index``,
            ``medium_index`` (``"ok"`` or problems).
        """
        backend = self._require("check_integrity")
        if quick:  # writes go on meanwhile (a separate read-only connection)
            result: dict[str, Any] = dict(await backend.check_integrity(quick=True))
        else:
            async with self._write_lock:
                result = dict(await backend.check_integrity())
        result["ok"] = all(value == "ok" for value in result.values())
        result["mode"] = "quick" if quick else "full"
        problems = {key: text for key, text in result.items() if key not in ("ok", "mode") and text != "ok"}
        self._index_report = {"checked_at": self._clock(), "check": result["mode"], "problems": problems}
        return result

    def _index_status(self) -> dict[str, Any]:
        """What is known of the indexes: the latest integrity check or rebuild (none yet: unchecked)."""
        report = self._index_report
        if report is None:
            return {"status": "unchecked", "checked_at": None, "check": None, "problems": {}}
        return {"status": "damaged" if report["problems"] else "ok", **report}

    @records_write_outcome
    async def rebuild_index(self) -> dict[str, int]:
        """Rebuild every FTS5 index from the stored memories; return the rows indexed per tier."""
        backend = self._require("rebuild_index")
        async with self._write_lock:
            rebuilt = await backend.rebuild_index()
            self._index_report = {"checked_at": self._clock(), "check": "rebuilt", "problems": {}}
        return rebuilt

    def storage_faults(self) -> dict[str, str]:
        """Storage files deleted, replaced or truncated behind this process's back, by file name.

        Values are ``"removed"``, ``"replaced"`` or ``"truncated"``; empty when every file is the one
        open (always, on PostgreSQL). Writes to a deleted or replaced file land in a file that has no
        name any more and is gone when the process ends: :meth:`restore_storage` writes them back.
        Cheap (a few ``stat`` calls); safe to call from any thread.
        """
        backend = self._backend
        if self._state != "ready" or backend is None:
            return {}
        return backend.file_faults()

    @records_write_outcome
    async def restore_storage(self) -> dict[str, Any]:
        """Write the storage files again from what this process holds open, and switch to them.

        After the storage directory was deleted, or a file replaced or truncated behind the process's
        back, the data is still here: the database in its open connection (copied with SQLite's backup
        API), the short- and medium-term tiers in process (the log is rewritten from them). The
        directory and the lock file are recreated; a file that had replaced one of ours is kept as
        ``<name>.replaced-<time>``. A truncated database cannot be restored this way (its pages are gone
        from the file the connection reads): it is reported under ``failed``. The health checker's
        auto-recovery calls this for the ``storage`` check.

        Returns:
            ``restored`` (one line per action), ``failed`` (file -> why), ``at`` (epoch seconds).
        """
        backend = self._require("restore_storage")
        async with self._write_lock:
            report = dict(await backend.restore_files())
        report["at"] = self._clock()
        if report["restored"] or report["failed"]:
            self._restorations.append(report)
            del self._restorations[:-20]
            logger.warning(
                "memory storage at %s restored from the open files: %s%s",
                self.storage_path,
                "; ".join(report["restored"]) or "nothing",
                "".join(f"; {name} NOT restored: {why}" for name, why in report["failed"].items()),
            )
        return report

    @property
    def storage_restorations(self) -> list[dict[str, Any]]:
        """The latest :meth:`restore_storage` runs that did something, oldest first (at most 20)."""
        return [dict(report) for report in self._restorations]

    @records_write_outcome
    async def flush(self) -> None:
        """Persist pending access-count updates and finish background moves now."""
        self._require("flush")
        await self._drain_background()
        await self._flush_touches()


def _last_turns(
    memories: Mapping[str, Memory], floors: Mapping[tuple[str | None, str], int]
) -> dict[tuple[str | None, str], str]:
    """The id of the memory holding each session's highest turn in an import (``floors``: that turn + 1)."""
    heads: dict[tuple[str | None, str], str] = {}
    for memory in memories.values():
        if memory.session_id is None or memory.turn_index is None:
            continue
        key = (memory.user_id, memory.session_id)
        if memory.turn_index + 1 == floors.get(key) and key not in heads:
            heads[key] = memory.id
    return heads


_OPEN_FILE_PREFIXES = ("/dev/", "/proc/")


def written_through(path: Path) -> bool:
    """Whether an export to the existing ``path`` is written into it rather than replacing it.

    A named pipe or a device is; so is a path leading (itself or through its links) into ``/dev`` or
    ``/proc``: ``/dev/stdout`` or ``/dev/fd/1`` names an open file, a regular one when standard output is
    redirected (``> out.jsonl``), and a file renamed over it replaced the link (as root, ``/dev/stdout``).
    """
    if not path.is_file():
        return True
    current = os.path.abspath(path)
    for _ in range(40):  # a chain of links (a loop is no file: is_file() said False)
        if current.startswith(_OPEN_FILE_PREFIXES):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False
