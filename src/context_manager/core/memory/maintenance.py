"""Statistics, JSONL export/import and index upkeep of the memory manager."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from context_manager.core.errors import (
    InvalidMemoryError,
    StorageError,
)
from context_manager.core.memory.models import ALL_USERS, Memory, MemoryTier
from context_manager.core.memory.state import UserScope
from context_manager.core.memory.tiers import TierMovement
from context_manager.core.memory.validation import (
    check_content,
    check_importance,
    check_metadata,
    check_path,
    check_tags,
    check_user,
)

__all__ = ["MemoryMaintenance"]

_IMPORT_BATCH = 2000


class MemoryMaintenance(TierMovement):
    """``get_memory_stats``, ``export_memories``, ``import_memories``, ``optimize``, integrity, ``flush``."""

    async def get_memory_stats(self, *, user_id: UserScope = None) -> dict[str, Any]:
        """Counts and health of the memory.

        Args:
            user_id: Whose memories (``None``: the default namespace; :data:`ALL_USERS`: everyone's,
                with a ``by_user`` breakdown).

        Returns:
            ``total_memories``, ``by_tier``, ``capacity``, ``over_capacity`` (tiers), ``superseded``,
            ``oldest``/``newest`` (epoch seconds or ``None``), ``mean_importance``, ``bytes_on_disk``
            (``log``, ``database``, ``total``), ``pending_access_updates``, ``index`` (``status``,
            ``vectors``), ``storage_path`` and, for :data:`ALL_USERS`, ``by_user``.
        """
        check_user(user_id, allow_all=True)
        short, medium, long_store = self._stores("get_memory_stats")
        by_tier = {tier.value: 0 for tier in MemoryTier}
        by_user: dict[str, int] = {}
        seen: set[str] = set()
        superseded = 0
        oldest: float | None = None
        newest: float | None = None
        importance_total = 0.0
        # the in-process tiers are bounded: walked on the loop (a consistent snapshot, fastest tier first)
        for memory in list(short.all()) + list(medium.all()):
            if user_id is not ALL_USERS and memory.user_id != user_id:
                continue
            by_tier[memory.tier.value] += 1
            if memory.id in seen:
                continue
            seen.add(memory.id)
            owner = "default" if memory.user_id is None else memory.user_id
            by_user[owner] = by_user.get(owner, 0) + 1
            if memory.superseded_by is not None:
                superseded += 1
            oldest = memory.created_at if oldest is None else min(oldest, memory.created_at)
            newest = memory.created_at if newest is None else max(newest, memory.created_at)
            importance_total += memory.importance
        total = len(seen)
        # the long-term tier: SQL aggregates, leaving out the memories already counted from a faster tier
        for tally in await asyncio.to_thread(long_store.tally, list(seen)):
            if user_id is not ALL_USERS and tally.user_id != user_id:
                continue
            by_tier[MemoryTier.LONG.value] += tally.copies
            if tally.count == 0:
                continue
            total += tally.count
            owner = "default" if tally.user_id is None else tally.user_id
            by_user[owner] = by_user.get(owner, 0) + tally.count
            superseded += tally.superseded
            assert tally.oldest is not None and tally.newest is not None
            oldest = tally.oldest if oldest is None else min(oldest, tally.oldest)
            newest = tally.newest if newest is None else max(newest, tally.newest)
            importance_total += tally.importance_total
        capacity = {
            "short": self.config.short_term_memory_size,
            "medium": self.config.medium_term_memory_size,
            "long": self.config.long_term_memory_size,
        }
        assert self._log is not None
        log_bytes = self._log.size()
        database_bytes = long_store.size()
        stats: dict[str, Any] = {
            "total_memories": total,
            "by_tier": by_tier,
            "capacity": capacity,
            "over_capacity": [tier for tier, count in by_tier.items() if count > capacity[tier]],
            "superseded": superseded,
            "oldest": oldest,
            "newest": newest,
            "mean_importance": importance_total / total if total else None,
            "bytes_on_disk": {
                "log": log_bytes,
                "database": database_bytes,
                "total": log_bytes + database_bytes,
            },
            "pending_access_updates": len(self._pending_touches),
            "index": {
                "status": "ok",
                "engine": "sqlite-fts5 bm25",
                "vectors": sum(len(index) for index in self._vectors.values()),
            },
            "storage_path": str(self.storage_path),
        }
        if user_id is ALL_USERS:
            stats["by_user"] = by_user
        return stats

    async def export_memories(self, path: str | Path, *, user_id: UserScope = None) -> int:
        """Write memories (one JSON object per line, every field, superseded ones too) to ``path``.

        A memory held in two tiers is written once (its fastest tier). Returns how many were written.
        """
        check_user(user_id, allow_all=True)
        target = check_path(path)
        self._stores("export_memories")
        async with self._write_lock:
            await self._flush_touches_locked()
            copies = await asyncio.to_thread(self._all_copies)

        def write() -> int:
            seen: set[str] = set()
            count = 0
            temporary = target.with_name(target.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for memory in copies:
                    if memory.id in seen or (user_id is not ALL_USERS and memory.user_id != user_id):
                        continue
                    seen.add(memory.id)
                    handle.write(json.dumps(memory.to_dict(), ensure_ascii=False) + "\n")
                    count += 1
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            return count

        try:
            return await asyncio.to_thread(write)
        except OSError as error:
            raise StorageError(f"cannot export memories to {target}: {error}", path=target) from error

    async def import_memories(self, path: str | Path) -> dict[str, Any]:
        """Load memories written by :meth:`export_memories` (ids kept; existing ids are replaced).

        Every line is validated first: one bad line raises and nothing is imported. Memories go to
        their recorded tier; what does not fit a tier's capacity flows to the next one.

        Returns:
            ``imported``, ``replaced`` (ids that already existed) and ``by_tier``.

        Raises:
            InvalidMemoryError: a line is not a valid memory (its line number is in the message).
            StorageError: the file cannot be read.
        """
        source = check_path(path)
        short, medium, long_store = self._stores("import_memories")
        try:
            lines = await asyncio.to_thread(source.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise StorageError(f"cannot read memories from {source}: {error}", path=source) from error
        memories: dict[str, Memory] = {}
        for number, line in enumerate(lines.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                memory = Memory.from_dict(data)
                check_content(memory.content)
                memory.importance = check_importance(memory.importance)
                memory.tags = check_tags(memory.tags)
                memory.metadata = check_metadata(memory.metadata)
                check_user(memory.user_id, allow_all=False)
            except (ValueError, KeyError, TypeError, ArithmeticError, RecursionError) as error:
                # InvalidMemoryError is a ValueError; RecursionError: a JSON bomb too deep to parse
                raise InvalidMemoryError(
                    f"{source}:{number}",
                    line[:80],
                    "a memory as written by export_memories",
                    detail=str(error),
                ) from error
            memories[memory.id] = memory
        self._owners.update(memory.user_id for memory in memories.values())
        by_tier = {tier.value: 0 for tier in MemoryTier}
        async with self._write_lock:
            existing = await self._get_many(list(memories))
            for memory_id in existing:
                for copy in await self._locate(memory_id):
                    await self._remove(memory_id, copy.tier, moving=True)
            placement = self._place_for_import(list(memories.values()))
            long_items = placement[MemoryTier.LONG]
            for start in range(0, len(long_items), _IMPORT_BATCH * 5):
                await asyncio.to_thread(long_store.put, long_items[start : start + _IMPORT_BATCH * 5])
            for store, tier in ((medium, MemoryTier.MEDIUM), (short, MemoryTier.SHORT)):
                items = placement[tier]
                for start in range(0, len(items), _IMPORT_BATCH):
                    store.put(items[start : start + _IMPORT_BATCH])
            for tier, items in placement.items():
                by_tier[tier.value] = len(items)
            if self.embedder is not None:
                values = list(memories.values())
                for start in range(0, len(values), 512):
                    await self._embed_and_store(values[start : start + 512])
        self._maybe_compact()
        return {"imported": len(memories), "replaced": len(existing), "by_tier": by_tier}

    def _place_for_import(self, memories: list[Memory]) -> dict[MemoryTier, list[Memory]]:
        """Put each memory in its recorded tier; overflow (least valuable first) flows down a tier."""
        short, medium, _ = self._stores("import_memories")
        now = self._clock()
        placement: dict[MemoryTier, list[Memory]] = {tier: [] for tier in MemoryTier}
        for memory in memories:
            placement[memory.tier].append(memory)
        room = {
            MemoryTier.SHORT: self.config.short_term_memory_size - short.count(),
            MemoryTier.MEDIUM: self.config.medium_term_memory_size - medium.count(),
        }
        for tier, lower in ((MemoryTier.SHORT, MemoryTier.MEDIUM), (MemoryTier.MEDIUM, MemoryTier.LONG)):
            items = placement[tier]
            space = max(0, room[tier])
            if len(items) > space:
                items.sort(key=lambda m: self._value(m, now), reverse=True)
                placement[tier], overflow = items[:space], items[space:]
                placement[lower].extend(overflow)
        return placement

    async def optimize(self) -> dict[str, Any]:
        """Persist access updates, compact the log, merge FTS5 segments, checkpoint the WAL.

        Returns:
            ``log_bytes_before``/``after``, ``database_bytes_before``/``after``, ``duration_ms``.
        """
        short, medium, long_store = self._stores("optimize")
        started = time.perf_counter()
        async with self._write_lock:
            await self._flush_touches_locked()
            database_before = long_store.size()
            log_before, log_after = await self._compact_locked()
            short.optimize_index()
            medium.optimize_index()
            await asyncio.to_thread(long_store.optimize)
            database_after = long_store.size()
        return {
            "log_bytes_before": log_before,
            "log_bytes_after": log_after,
            "database_bytes_before": database_before,
            "database_bytes_after": database_after,
            "duration_ms": (time.perf_counter() - started) * 1000.0,
        }

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
        short, medium, long_store = self._stores("check_integrity")
        if quick:
            result: dict[str, Any] = dict(
                await asyncio.to_thread(long_store.check_integrity, quick=True)
            )
            # the in-process indexes are checked on the loop: no write can interleave with the check
            result["short_index"] = short.check_index()
            result["medium_index"] = medium.check_index()
        else:
            async with self._write_lock:
                result = dict(await asyncio.to_thread(long_store.check_integrity))
                result["short_index"] = short.check_index()
                result["medium_index"] = medium.check_index()
        result["ok"] = all(value == "ok" for value in result.values())
        result["mode"] = "quick" if quick else "full"
        return result

    async def rebuild_index(self) -> dict[str, int]:
        """Rebuild every FTS5 index from the stored memories; return the rows indexed per tier."""
        short, medium, long_store = self._stores("rebuild_index")
        async with self._write_lock:
            weights = self.ranking.effective_columns
            short.rebuild_index(weights)
            medium.rebuild_index(weights)
            long_count = await asyncio.to_thread(long_store.rebuild_index)
        return {"short": short.count(), "medium": medium.count(), "long": long_count}

    async def flush(self) -> None:
        """Persist pending access-count updates and finish background moves now."""
        self._stores("flush")
        await self._drain_background()
        await self._flush_touches()
