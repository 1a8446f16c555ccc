"""Races between processes sharing one PostgreSQL memory, each forced at the moment that used to lose data.

Two managers on one DSN stand for two processes (each has its own connection pool). A step of the other
manager is run at a chosen point of the first one's operation, by wrapping a method of the first one's
backend or pool; nothing of the storage is mocked. The updates are tried with the other process's step after
*every* statement of the update in turn (:func:`_after_operation`), so they hold whatever statements the
update is made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidMemoryError, StorageError
from context_manager.core.memory.backend import Staleness
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.postgres import PostgresBackend
from context_manager.core.memory.postgres.database import PostgresDatabase
from tests.postgres_support import restart_server

_TIER_RANK = {"short": 0, "medium": 1, "long": 2}
_MAX_STATEMENTS = 40  # more statements than any update here makes: the loops below always end


def postgres_config(dsn: str) -> ContextManagerConfig:
    """Small capacities (as the memory tests' conftest), so a few adds overflow short-term."""
    return ContextManagerConfig(
        memory_backend="postgres",
        postgres_dsn=dsn,
        short_term_memory_size=20,
        medium_term_memory_size=30,
        long_term_memory_size=500,
    )


def _backend(manager: MemoryManager) -> PostgresBackend:
    backend = manager.backend
    assert isinstance(backend, PostgresBackend)
    return backend


async def _rows(dsn: str, memory_id: str) -> list[dict[str, Any]]:
    """Every stored row of a memory, read by a connection of its own, fastest tier first."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT tier, content, importance, tags, access_count, superseded_by FROM cm_memories "
            "WHERE id = %s",
            (memory_id,),
        )
        found = await cursor.fetchall()
    rows = [
        {
            "tier": tier,
            "content": content,
            "importance": float(importance),
            "tags": list(tags),
            "access_count": int(access_count),
            "superseded_by": superseded_by,
        }
        for tier, content, importance, tags, access_count, superseded_by in found
    ]
    return sorted(rows, key=lambda row: _TIER_RANK[row["tier"]])


async def _tiers(dsn: str, memory_id: str) -> list[str]:
    return [row["tier"] for row in await _rows(dsn, memory_id)]


async def _in_two_volatile_tiers(dsn: str) -> list[str]:
    """The ids with a short-term and a medium-term row at once (a memory is in one of them at most)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT id FROM cm_memories WHERE tier IN ('short', 'medium') GROUP BY id HAVING count(*) > 1 "
            "ORDER BY id"
        )
        return [row[0] for row in await cursor.fetchall()]


async def _tier_counts(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute("SELECT tier, count(*) FROM cm_memories GROUP BY tier")
        counts = {tier: 0 for tier in _TIER_RANK}
        counts.update({tier: int(count) for tier, count in await cursor.fetchall()})
        return counts


@contextlib.contextmanager
def _after_operation(
    database: PostgresDatabase, number: int, step: Callable[[], Awaitable[object]]
) -> Iterator[list[str]]:
    """Run ``step`` once, right after the ``number``-th operation on ``database`` returned.

    Every statement (or transaction) the backend sends goes through :meth:`PostgresDatabase.run`, and has
    committed when it returns: the step runs between two of them, as another process may. Yields the
    names of the operations seen so far (``what`` of ``run``).
    """
    seen: list[str] = []
    run = database.run

    async def run_then_step(operation: Any, what: str) -> Any:
        result = await run(operation, what)
        seen.append(what)
        if len(seen) == number:
            await step()
        return result

    database.run = run_then_step  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del database.run  # the class's method again


# -- 1. update_memory(tier=...) racing an overflow move ---------------------------------------------------


@pytest.mark.parametrize(
    ("case", "requested", "move_from", "move_to"),
    [
        # a short-term memory with a long-term copy, updated to short-term, while the other process's
        # overflow move of short -> medium (which only drops the short-term row of a memory with a
        # long-term copy) runs: the update deleted the long copy, the move the short row
        ("important memory to short", "short", MemoryTier.SHORT, MemoryTier.MEDIUM),
        # a medium-term memory updated to medium-term while the other process moves it to long-term: the
        # update's clean-up took the new long-term row for a stale extra copy and deleted it
        ("medium memory to medium", "medium", MemoryTier.MEDIUM, MemoryTier.LONG),
    ],
)
async def test_an_update_to_a_tier_racing_an_overflow_move_never_erases_the_memory(
    postgres_dsn: str, case: str, requested: str, move_from: MemoryTier, move_to: MemoryTier
) -> None:
    config = postgres_config(postgres_dsn)
    failures: list[str] = []
    async with MemoryManager(config) as updater, MemoryManager(config) as mover:
        for after in range(1, _MAX_STATEMENTS):
            if requested == "short":
                memory = await updater.add_memory(f"the vault code is 4471, try {after}", importance=0.95)
            else:
                memory = await updater.add_memory(f"the vault code is 4471, try {after}", tier="medium")
            assert await _tiers(postgres_dsn, memory.id) == (
                ["short", "long"] if requested == "short" else ["medium"]
            ), "setup: the memory is not where the race needs it"
            move = functools.partial(_backend(mover).move_down, [memory.id], move_from, move_to)
            error: BaseException | None = None
            with _after_operation(_backend(updater).database, after, move) as seen:
                try:
                    await updater.update_memory(
                        memory.id, content=f"the vault code is 9090, try {after}", tier=requested
                    )
                except Exception as raised:
                    error = raised
            if len(seen) < after:
                break  # the move came after the whole update: every point in it has been tried
            moment = (
                f"{case}: the other process's {move_from.value}->{move_to.value} overflow move ran after "
                f"statement {after} of the update ({seen[:after]})"
            )
            rows = await _rows(postgres_dsn, memory.id)
            tiers = [row["tier"] for row in rows]
            problems: list[str] = []
            if not rows:
                problems.append("the memory is gone from every tier")
            elif tiers not in ([requested], [move_to.value]):
                problems.append(f"the memory is in {tiers}, not in {requested} (or {move_to.value}) only")
            if rows and await mover.get_memory(memory.id) is None:
                problems.append("get_memory does not find it")
            if any(row["content"] != f"the vault code is 9090, try {after}" for row in rows):
                problems.append(f"the update is lost: {[row['content'] for row in rows]}")
            if error is not None:
                problems.append(f"update_memory raised {type(error).__name__}: {error}")
            if problems:
                failures.append(f"{moment}: {'; '.join(problems)}")
        else:
            pytest.fail(f"the update took more than {_MAX_STATEMENTS} statements")
        assert after > 1, "the update made no statement: the test proves nothing"
    assert not failures, "\n".join(failures)


# -- 2. consolidation wrote the originals back -----------------------------------------------------------


@pytest.mark.parametrize("change", ["deleted", "updated", "moved"])
async def test_a_consolidation_does_not_undo_what_another_process_did_to_an_original_after_its_scan(
    postgres_dsn: str, change: str
) -> None:
    """Between a consolidation's scan and its write, another process deletes, updates (content and
    importance) or moves one of the originals; none of these takes the consolidation's locks. The
    consolidation used to upsert the originals it had scanned (marked superseded): the deleted memory came
    back, the update was reverted, the moved memory ended in short- and medium-term."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as consolidator, MemoryManager(config) as other:
        first, second = await consolidator.add_memories(
            [{"content": "the deploy key is kept in the blue vault"} for _ in range(2)]
        )
        kept = await consolidator.add_memory("the office plants need water on fridays")
        backend = _backend(consolidator)
        scan = backend.scan
        done: list[str] = []

        async def other_process_step() -> None:
            if change == "deleted":
                await other.delete_memory(first.id)
            elif change == "updated":
                await other.update_memory(
                    first.id, content="the deploy key moved to the red safe", importance=0.9
                )
            else:
                await other.update_memory(first.id, tier="medium")
            done.append(change)

        async def scan_then_other_process(*args: Any, **kwargs: Any) -> list[Memory]:
            found = await scan(*args, **kwargs)
            if not kwargs.get("every_copy", True) and not done:
                await other_process_step()  # after the consolidation's scan, before its writes
            return found

        backend.scan = scan_then_other_process  # type: ignore[method-assign]
        try:
            await consolidator.consolidate_memories()
        finally:
            del backend.scan
        assert done == [change], "the other process's step did not run during the consolidation"

        rows = await _rows(postgres_dsn, first.id)
        if change == "deleted":
            assert rows == [], (
                f"the memory another process deleted during the consolidation came back: {rows}"
            )
            assert await other.get_memory(first.id) is None, "get_memory finds the deleted memory again"
        elif change == "updated":
            assert rows, "the updated memory is gone"
            assert all(row["content"] == "the deploy key moved to the red safe" for row in rows), (
                f"the consolidation reverted another process's content update: {rows}"
            )
            assert all(row["importance"] == 0.9 for row in rows), (
                f"the consolidation reverted another process's importance update: {rows}"
            )
            found = await other.get_memory(first.id)
            assert found is not None and found.content == "the deploy key moved to the red safe"
        else:
            tiers = [row["tier"] for row in rows]
            assert tiers == ["medium"], (
                f"the memory another process moved to medium-term during the consolidation is in {tiers}"
            )
        assert await _in_two_volatile_tiers(postgres_dsn) == [], "a memory in short- and medium-term at once"
        assert await other.get_memory(second.id) is not None and await other.get_memory(kept.id) is not None


async def test_a_consolidation_does_not_drop_metadata_another_process_set_after_its_scan(
    postgres_dsn: str,
) -> None:
    """Between a consolidation's scan and its write, another process sets the metadata of the original
    the merged memory is copied from. The merge checked content, importance and tags only: the merged
    memory got the metadata read before, the new metadata was left on the hidden original (and went with
    it at the next cleanup). The group is left for the next consolidation now, which takes the new one."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as consolidator, MemoryManager(config) as other:
        primary = await consolidator.add_memory("the deploy key is kept in the blue vault", importance=0.8)
        await consolidator.add_memory("the deploy key is kept in the blue vault.", importance=0.4)
        backend = _backend(consolidator)
        scan = backend.scan
        done: list[str] = []

        async def scan_then_other_process(*args: Any, **kwargs: Any) -> list[Memory]:
            found = await scan(*args, **kwargs)
            if not kwargs.get("every_copy", True) and not done:
                await other.update_memory(primary.id, metadata={"room": "B12"})
                done.append("metadata")
            return found

        backend.scan = scan_then_other_process  # type: ignore[method-assign]
        try:
            first = await consolidator.consolidate_memories()
        finally:
            del backend.scan
        assert done == ["metadata"], "the other process's step did not run during the consolidation"
        merged = [await other.get_memory(merged_id) for merged_id in first["merged_ids"]]
        assert all(memory is not None and memory.metadata == {"room": "B12"} for memory in merged), (
            f"the merged memory lost the metadata set during the consolidation: {merged}"
        )
        second = await consolidator.consolidate_memories()
        merged_id = (first["merged_ids"] + second["merged_ids"])[0]
        found = await other.get_memory(merged_id)
        assert found is not None and found.metadata == {"room": "B12"}


# -- 3. two updates of different fields ------------------------------------------------------------------


@pytest.mark.parametrize("meanwhile", ["importance update", "search access"])
async def test_concurrent_changes_of_different_fields_are_all_kept(postgres_dsn: str, meanwhile: str) -> None:
    """Manager B sets a memory's tags while manager A sets its importance (or records a search's access).

    B's update read the whole row and wrote it all back: a change A committed in between was lost (the
    importance reverted, the access count lowered).
    """
    config = postgres_config(postgres_dsn)
    raced: list[tuple[str, str]] = []  # (when A's change ran, the memory)
    async with MemoryManager(config) as a, MemoryManager(config) as b:
        for after in range(1, _MAX_STATEMENTS):
            memory = await b.add_memory(f"the lighthouse keeper prefers green tea {after}", importance=0.3)

            async def change_by_a(memory_id: str = memory.id, number: int = after) -> None:
                if meanwhile == "importance update":
                    await a.update_memory(memory_id, importance=0.65)
                    return
                found = await a.search_memory(f"lighthouse keeper green tea {number}", limit=1)
                assert [m.id for m in found] == [memory_id], "setup: A's search does not find the memory"
                await a.flush()  # A's access is stored (access_count 1)

            with _after_operation(_backend(b).database, after, change_by_a) as seen:
                await b.update_memory(memory.id, tags=["tea"])
            if len(seen) < after:
                break  # A's change came after the whole update: every point in it has been tried
            raced.append(
                (f"A's {meanwhile} ran after statement {after} of B's tag update {seen[:after]}", memory.id)
            )
        else:
            pytest.fail(f"the update took more than {_MAX_STATEMENTS} statements")
        assert len(raced) > 1, "the update made one statement at most: the test proves nothing"
    failures: list[str] = []
    async with MemoryManager(config) as fresh:  # what another process sees afterwards
        for moment, memory_id in raced:
            found = await fresh.get_memory(memory_id)
            rows = await _rows(postgres_dsn, memory_id)
            if found is None or not rows:
                failures.append(f"{moment}: the memory is gone")
                continue
            if found.tags != ["tea"] or any(row["tags"] != ["tea"] for row in rows):
                failures.append(f"{moment}: B's tags are lost: {[row['tags'] for row in rows]}")
            if meanwhile == "importance update" and (
                found.importance != 0.65 or any(row["importance"] != 0.65 for row in rows)
            ):
                failures.append(
                    f"{moment}: A's importance update (0.65) is lost: {[row['importance'] for row in rows]}"
                )
            if meanwhile == "search access" and (
                found.access_count < 1 or any(row["access_count"] < 1 for row in rows)
            ):
                failures.append(
                    f"{moment}: the access A stored is lost: access_count went back to "
                    f"{[row['access_count'] for row in rows]}"
                )
    assert not failures, "\n".join(failures)


# -- 4. lock connections after a server restart ----------------------------------------------------------


async def test_consolidation_after_a_server_restart_gets_a_new_lock_connection(postgres_dsn: str) -> None:
    async with MemoryManager(postgres_config(postgres_dsn)) as manager:
        await manager.add_memories([{"content": "the backup runs at midnight"} for _ in range(2)])
        first = await manager.consolidate_memories()  # its lock connection stays idle in the lock pool
        assert first["consolidated_count"] == 2
        await asyncio.to_thread(restart_server)  # every open connection is cut
        await manager.add_memories([{"content": "the printer is on the second floor"} for _ in range(2)])
        try:
            report = await manager.consolidate_memories()
        except Exception as error:
            pytest.fail(
                "consolidate_memories after a server restart (the server back up) raised "
                f"{type(error).__module__}.{type(error).__name__}: {error} (the lock connection cut by the "
                "restart was used again, not retried)"
            )
        assert report["consolidated_count"] == 2 and len(report["merged_ids"]) == 1, report


async def test_the_overflow_move_after_a_server_restart_gets_a_new_lock_connection(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with MemoryManager(postgres_config(postgres_dsn)) as manager:
        await manager.add_memories([{"content": f"early note {n}"} for n in range(21)])
        await manager.flush()  # the overflow moved: its lock connection stays idle in the lock pool
        assert (await _tier_counts(postgres_dsn))["short"] <= 20
        await asyncio.to_thread(restart_server)  # every open connection is cut
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            # one write over the capacity: one background move
            await manager.add_memories([{"content": f"late note {n}"} for n in range(5)])
            await manager.flush()
        counts = await _tier_counts(postgres_dsn)
        failed = [
            record.getMessage() for record in caplog.records if "background task failed" in record.message
        ]
        assert counts["short"] <= 20 and counts["medium"] <= 30, (
            f"after a server restart the overflow move did not run: tiers {counts} (capacities 20/30); "
            f"logged: {failed}"
        )
        assert sum(counts.values()) == 26, f"memories lost: {counts}"


# -- 5. a consolidation that lost its lock connection ----------------------------------------------------


async def test_a_consolidation_that_lost_its_lock_connection_merges_nothing_twice(postgres_dsn: str) -> None:
    """A's lock connection is cut after its scan (a network cut, a killed backend): the server releases its
    locks, so B's consolidation runs and merges the group; A then went on and merged the same originals a
    second time (two merged memories of one group, the originals' first merge left dangling)."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as a, MemoryManager(config) as b:
        originals = await a.add_memories([{"content": "the standup moved to ten thirty"} for _ in range(3)])
        backend = _backend(a)
        scan = backend.scan
        b_reports: list[dict[str, Any]] = []

        async def scan_then_lose_the_lock(*args: Any, **kwargs: Any) -> list[Memory]:
            found = await scan(*args, **kwargs)
            if not kwargs.get("every_copy", True) and not b_reports:
                async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as other:
                    # the session holding the consolidation's advisory lock (a one-key lock on a bigint:
                    # its high half in classid, its low half in objid)
                    cursor = await other.execute(
                        "WITH k AS (SELECT hashtext('context_manager:consolidate@' || current_schema())"
                        "::bigint AS key) "
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks, k WHERE locktype = 'advisory' "
                        "AND granted AND objsubid = 1 AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                        "AND classid = ((key >> 32) & 4294967295)::oid AND objid = (key & 4294967295)::oid"
                    )
                    assert [row[0] for row in await cursor.fetchall()] == [True], (
                        "setup: A's consolidation lock was not found"
                    )
                b_reports.append(await b.consolidate_memories())  # the locks are free: B consolidates
            return found

        backend.scan = scan_then_lose_the_lock  # type: ignore[method-assign]
        try:
            a_report = await a.consolidate_memories()
        finally:
            del backend.scan
        assert b_reports and b_reports[0]["consolidated_count"] == 3, f"setup: B merged nothing: {b_reports}"

        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute(
                "SELECT DISTINCT id, merged_from FROM cm_memories WHERE cardinality(merged_from) > 0"
            )
            merged = {row[0]: list(row[1]) for row in await cursor.fetchall()}
        ids = sorted(m.id for m in originals)
        assert len(merged) == 1, (
            f"one group of duplicates was merged {len(merged)} times: merged memories {merged} "
            f"(B merged {b_reports[0]['merged_ids']}, A then {a_report['merged_ids']})"
        )
        for original in ids:
            into = [merged_id for merged_id, sources in merged.items() if original in sources]
            assert len(into) == 1, f"original {original} was merged into {into}"
            superseded = {row["superseded_by"] for row in await _rows(postgres_dsn, original)}
            assert superseded == set(into), (
                f"original {original} is superseded by {superseded}, the merged memory is {into}"
            )


# -- 6. a cleanup beside an undo --------------------------------------------------------------------------


async def test_a_cleanup_does_not_delete_the_originals_another_process_just_restored(
    postgres_dsn: str,
) -> None:
    """A's cleanup scans (the originals are superseded), B undoes the consolidation (they are visible
    again, the merged memory deleted), then A deleted what its scan had marked: every copy of the text was
    gone. The cleanup's delete now re-checks that a copy is still stale."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as cleaner, MemoryManager(config) as undoer:
        originals = await cleaner.add_memories(
            [{"content": "the gate code is 5512"}, {"content": "The gate code is 5512."}]
        )
        merged_id = (await cleaner.consolidate_memories(similarity_threshold=0.9))["merged_ids"][0]
        backend = _backend(cleaner)
        scan = backend.scan
        undone: list[dict[str, Any]] = []

        async def scan_then_undo(*args: Any, **kwargs: Any) -> list[Memory]:
            found = await scan(*args, **kwargs)
            if not undone:
                undone.append(await undoer.undo_consolidation(merged_id))
            return found

        backend.scan = scan_then_undo  # type: ignore[method-assign]
        try:
            report = await cleaner.cleanup_old_memories(max_age_days=30)
        finally:
            del backend.scan
        assert undone and set(undone[0]["restored"]) == {m.id for m in originals}, f"setup: {undone}"
        assert report["removed_ids"] == [], f"the cleanup deleted what the undo restored: {report}"
        for original in originals:
            rows = await _rows(postgres_dsn, original.id)
            assert rows and all(row["superseded_by"] is None for row in rows), (
                f"original {original.id} after the undo and the cleanup: {rows}"
            )
        assert await _rows(postgres_dsn, merged_id) == []
        found = await undoer.search_memory("gate code")
        assert {m.id for m in found} == {m.id for m in originals}


# -- 7. one id added by two processes ---------------------------------------------------------------------


async def test_two_processes_adding_one_id_store_it_once_and_overwrite_nothing(postgres_dsn: str) -> None:
    """An idempotent add retried from two processes (or one message archived by both): A reads that the id
    is free; before A writes, B stores it and then moves it to medium-term and raises its importance. A's
    write was an upsert of every column: the memory ended in short- and medium-term, B's update reverted."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as a, MemoryManager(config) as b:
        backend = _backend(a)
        done: list[str] = []

        async def b_first() -> None:
            if not done:
                done.append("b")
                await b.add_memory("invoice 7781 is paid", memory_id="invoice-7781")
                await b.update_memory("invoice-7781", tier="medium", importance=0.8, tags=["billing"])

        originals = {
            name: getattr(backend, name) for name in ("put", "put_tiers", "put_new") if hasattr(backend, name)
        }

        def before(name: str) -> Callable[..., Awaitable[Any]]:
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                await b_first()  # between A's read of the id and its write
                return await originals[name](*args, **kwargs)

            return wrapped

        for name in originals:
            setattr(backend, name, before(name))
        try:
            returned = await a.add_memory("invoice 7781 is paid", memory_id="invoice-7781")
        finally:
            for name in originals:
                delattr(backend, name)
        assert done == ["b"], "setup: B's add did not run between A's read and write"
        rows = await _rows(postgres_dsn, "invoice-7781")
        assert [row["tier"] for row in rows] == ["medium"], f"the memory is in {rows}"
        assert rows[0]["importance"] == 0.8 and rows[0]["tags"] == ["billing"], f"B's update reverted: {rows}"
        assert returned.id == "invoice-7781" and returned.content == "invoice 7781 is paid"
        # other content under the id B stored meanwhile is still refused
        done.clear()
        with pytest.raises(InvalidMemoryError, match="memory_id"):
            await a.add_memory("invoice 7781 is overdue", memory_id="invoice-7781")


# -- 8. an idempotent retry completing a long-term copy ---------------------------------------------------


@pytest.mark.parametrize("meanwhile", ["merged", "updated", "deleted"])
async def test_a_retry_completing_the_long_term_copy_copies_the_memory_as_it_is_now(
    postgres_dsn: str, meanwhile: str
) -> None:
    """A retried important add finds its id stored without the long-term copy it should have and writes
    that copy. It wrote what it had read: B's merge, update or delete, committed between A's read and that
    write, was reverted (a merged memory visible again, an old importance back, a deleted memory back)."""
    config = postgres_config(postgres_dsn)
    text = "the garage door code is 4471 and the spare key is under the mat"
    async with MemoryManager(config) as a, MemoryManager(config) as b:
        await b.add_memory(text, memory_id="garage", importance=0.5)  # short-term only
        done: dict[str, Any] = {}

        async def b_step() -> None:
            if done:
                return
            done["ran"] = True
            if meanwhile == "merged":
                await b.add_memory(text.capitalize() + ".", importance=0.5)
                done["merged"] = (await b.consolidate_memories(similarity_threshold=0.85))["merged_ids"]
            elif meanwhile == "updated":
                await b.update_memory("garage", importance=0.1, tags=["changed"])
            else:
                done["deleted"] = await b.delete_memory("garage")

        backend = _backend(a)
        originals = {
            name: getattr(backend, name) for name in ("put", "add_long_copies") if hasattr(backend, name)
        }

        def before(name: str) -> Callable[..., Awaitable[Any]]:
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                if name != "put" or args[0] is MemoryTier.LONG:
                    await b_step()  # between A's read of the id and its long-term write
                return await originals[name](*args, **kwargs)

            return wrapped

        for name in originals:
            setattr(backend, name, before(name))
        try:
            await a.add_memory(text, memory_id="garage", importance=0.9)  # the same add, retried
        finally:
            for name in originals:
                delattr(backend, name)
        assert done.get("ran"), "setup: B's step did not run between A's read and write"
        rows = await _rows(postgres_dsn, "garage")
        if meanwhile == "merged":
            assert len(done["merged"]) == 1, f"setup: {done}"
            assert rows and all(row["superseded_by"] == done["merged"][0] for row in rows), rows
            found = await b.search_memory("garage door code spare key", limit=10)
            assert "garage" not in {m.id for m in found}, "the merged original is visible again"
        elif meanwhile == "updated":
            assert [row["tier"] for row in rows] == ["short", "long"], rows
            assert all(row["importance"] == 0.1 and row["tags"] == ["changed"] for row in rows), rows
        else:
            assert done["deleted"], f"setup: {done}"
            assert rows == [], f"the deleted memory came back: {rows}"


# -- 9. statements changing several rows take their row locks in one order -------------------------------


async def _store_rows(dsn: str, rows: list[tuple[str, str]]) -> None:
    """Rows (id, tier), stale (never used), in this physical order, after filler rows that make the planner
    choose the plans it chooses on a real store (index scans, nested loops; on a few rows it scans the
    table, and every statement meets the rows in the heap's one order)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        await connection.execute(
            "INSERT INTO cm_memories (id, tier, owner, user_id, content, importance, created_at, "
            "last_accessed, source) SELECT 'filler' || g, (ARRAY['short', 'medium', 'long'])[1 + g % 3], "
            "'', '', 'filler', 0.5, 1e12, 1e12, 'api' FROM generate_series(1, 3000) AS g"
        )
        for memory_id, tier in rows:
            await connection.execute(
                "INSERT INTO cm_memories (id, tier, owner, user_id, content, importance, created_at, "
                "last_accessed, source) VALUES (%s, %s, '', '', %s, 0.5, 0, 0, 'api')",
                (memory_id, tier, f"note about {memory_id}"),
            )
        await connection.execute("ANALYZE cm_memories")


async def _meet_in_opposite_orders(
    dsn: str, gate: tuple[str, str], first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]]
) -> None:
    """Run ``first`` until it waits for the ``gate`` row (locked by a third connection), then ``second``
    until it waits for one of the rows ``first`` holds, then open the gate: statements that lock their rows
    in different orders now wait for each other (a deadlock the server breaks after 1 s)."""
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute("SELECT 1 FROM cm_memories WHERE id = %s AND tier = %s FOR UPDATE", gate)
        started = asyncio.ensure_future(first())
        await asyncio.sleep(0.3)
        other = asyncio.ensure_future(second())
        await asyncio.sleep(0.3)
        await holder.commit()
        await asyncio.wait_for(asyncio.gather(started, other), timeout=30)


@pytest.mark.parametrize("other", ["cleanup delete", "access record", "update", "overflow move"])
async def test_access_records_and_other_changes_of_the_same_memories_never_deadlock(
    postgres_dsn: str, other: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A search's access record locked its rows in the order the memories were first found; a cleanup's
    delete, another process's access record, an update or an overflow move in the order of their plan (the
    index's, or the heap's). Two of them on the same memories could deadlock: the server aborts one after
    its 1 s ``deadlock_timeout``, the backend retries it (a warning; every add and search of that process
    waiting meanwhile). Every statement now locks the rows it changes ordered by (id, tier)."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as first, MemoryManager(config) as second:
        recorder, changer = _backend(first), _backend(second)
        rows = [("x", "short"), ("y", "short"), ("g", "short")]
        if other == "update":
            rows = [("x", "short"), ("x", "long")]  # the update meets short first (heap), touch long first
        await _store_rows(postgres_dsn, rows)
        now = time.time()
        # the access record first (it waits for the gate after locking y), then the other change
        first: Callable[[], Awaitable[Any]] = functools.partial(
            recorder.touch, {memory_id: (now, 5) for memory_id in ("y", "g", "x")}
        )
        gate = ("g", "short")
        then: Callable[[], Awaitable[Any]]
        if other == "cleanup delete":
            stale = Staleness(cutoff=now + 1000)  # x and y stale even once the access is recorded
            then = functools.partial(changer.delete, MemoryTier.SHORT, ["x", "y"], only=stale)
        elif other == "access record":
            then = functools.partial(changer.touch, {"x": (now, 7), "y": (now, 7)})
        elif other == "update":  # the update first (it waits for the gate, its short row), then the access
            first = functools.partial(changer.update, ["x"], {"importance": 0.7})
            gate = ("x", "short")
            then = functools.partial(recorder.touch, {"x": (now, 5)})
        else:
            then = functools.partial(changer.move_down, ["x", "y"], MemoryTier.SHORT, MemoryTier.MEDIUM)
        with caplog.at_level(logging.WARNING, logger="context_manager"):
            await _meet_in_opposite_orders(postgres_dsn, gate, first, then)
        retried = [record.getMessage() for record in caplog.records if "Deadlock" in record.getMessage()]
        assert retried == [], f"two statements deadlocked: {retried}"
        # both changes are made
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute(
                "SELECT id, tier, importance, access_count FROM cm_memories WHERE id = ANY(%s)",
                (["g", "x", "y"],),
            )
            stored = {(row[0], row[1]): (float(row[2]), int(row[3])) for row in await cursor.fetchall()}
        if other == "cleanup delete":
            assert stored == {("g", "short"): (0.5, 5)}
        elif other == "access record":
            assert stored == {("g", "short"): (0.5, 5), ("x", "short"): (0.5, 7), ("y", "short"): (0.5, 7)}
        elif other == "update":
            assert stored == {("x", "long"): (0.7, 5), ("x", "short"): (0.7, 5)}
        else:
            assert set(stored) == {("g", "short"), ("x", "medium"), ("y", "medium")}
            assert stored["g", "short"] == (0.5, 5)


# -- 10. processes with an embedder starting together -----------------------------------------------------


async def test_processes_with_an_embedder_starting_together_all_open(postgres_dsn: str) -> None:
    """Web workers starting at once on a store whose vector index for their dimension is not there yet:
    each ran ``CREATE INDEX IF NOT EXISTS`` outside the migration lock, and PostgreSQL lets two of them
    race on the catalog, so all but one failed to open with StorageError (duplicate key value violates
    unique constraint "pg_class_relname_nsp_index"). Each round uses a new dimension: a new index."""
    from context_manager.core.memory.embeddings import HashingEmbedder

    config = postgres_config(postgres_dsn)
    async with MemoryManager(config):  # the tables exist: only the index of each dimension is new
        pass
    for dimension in range(16, 22):
        managers = [MemoryManager(config, embedder=HashingEmbedder(dimension=dimension)) for _ in range(4)]
        try:
            opened = await asyncio.gather(*(m.initialize() for m in managers), return_exceptions=True)
            failures = [f"{type(error).__name__}: {error}" for error in opened if error is not None]
            assert failures == [], f"dimension {dimension}: {failures}"
            stored = await managers[0].add_memory(f"the gate code for dimension {dimension} is 4471")
            found = await managers[-1].search_memory(f"gate code dimension {dimension}")
            assert stored.id in [memory.id for memory in found]
        finally:
            for manager in managers:
                await manager.cleanup()


# -- 11. a delete failing part-way puts back what it removed, and only that -------------------------------


async def _refuse_deletes(dsn: str, refuse: bool) -> None:
    """Make every ``DELETE`` of memories fail on the server (a real refusal), or succeed again.

    A statement-level trigger (it fires for a statement deleting no row too) raises while a flag is set;
    :func:`_install_delete_refusal` creates it, once the manager has created the tables.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        flag = "INSERT INTO cm_test_refuse_deletes VALUES (1)"
        await connection.execute(flag if refuse else "DELETE FROM cm_test_refuse_deletes")


async def _install_delete_refusal(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        await connection.execute("CREATE TABLE cm_test_refuse_deletes (flag int)")
        await connection.execute(
            "CREATE FUNCTION cm_test_refuse_deletes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF EXISTS (SELECT 1 FROM cm_test_refuse_deletes) THEN RAISE EXCEPTION 'deletes refused'; "
            "END IF; RETURN NULL; END $$"
        )
        await connection.execute(
            "CREATE TRIGGER cm_test_refuse_deletes BEFORE DELETE ON cm_memories "
            "FOR EACH STATEMENT EXECUTE FUNCTION cm_test_refuse_deletes()"
        )


async def test_a_delete_failing_part_way_does_not_bring_back_a_memory_another_process_deleted(
    postgres_dsn: str,
) -> None:
    """A delete removes a memory's copies one tier at a time, and puts back what it removed when a later
    statement fails. Another process deleting the same memory in between (its remaining short-term copy)
    reported it deleted, yet the failed delete put the long-term copy back: the memory was found again.
    A memory whose other copies another process deleted meanwhile is left deleted now."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as first, MemoryManager(config) as second:
        memory = await first.add_memory("the gate code is qzoldxq", importance=0.9)  # short + long
        other = await first.add_memory("the side door code is qzsidexq", importance=0.9)
        await _install_delete_refusal(postgres_dsn)
        backend = _backend(first)
        delete = backend.delete

        async def delete_then_other_process(tier: MemoryTier, ids: Any, **options: Any) -> list[str]:
            present = await delete(tier, ids, **options)
            if tier is MemoryTier.LONG and present:
                if present == [memory.id]:  # the short-term copy left: deleted, and reported so
                    await second.delete_memory(memory.id)
                await _refuse_deletes(postgres_dsn, True)  # the next statement of this delete fails
            return present

        backend.delete = delete_then_other_process  # type: ignore[method-assign]
        try:
            with pytest.raises(StorageError, match="deletes refused"):
                await first.delete_memory(memory.id)
        finally:
            backend.delete = delete  # type: ignore[method-assign]
        assert await _rows(postgres_dsn, memory.id) == []
        assert await first.get_memory(memory.id) is None and await second.get_memory(memory.id) is None
        assert await second.search_memory("qzoldxq") == []

        # a delete failing part-way with no other process involved still puts back what it removed
        await _refuse_deletes(postgres_dsn, False)
        backend.delete = delete_then_other_process  # type: ignore[method-assign]
        try:
            with pytest.raises(StorageError, match="deletes refused"):
                await first.delete_memory(other.id)
        finally:
            backend.delete = delete  # type: ignore[method-assign]
        assert await _tiers(postgres_dsn, other.id) == ["short", "long"]
        assert [m.id for m in await second.search_memory("qzsidexq")] == [other.id]


async def test_a_delete_the_server_refuses_keeps_the_memorys_access_history(postgres_dsn: str) -> None:
    """The accesses searches recorded (written in batches) were dropped when a delete began: a delete the
    server refused left the memory as it was, but used 0 times instead of 3, in every tier."""
    async with MemoryManager(postgres_config(postgres_dsn)) as manager:
        memory = await manager.add_memory("the gate code is qzoldxq", importance=0.9)  # short + long
        await _install_delete_refusal(postgres_dsn)
        for _ in range(3):
            assert [m.id for m in await manager.search_memory("qzoldxq")] == [memory.id]
        await _refuse_deletes(postgres_dsn, True)
        with pytest.raises(StorageError, match="deletes refused"):
            await manager.delete_memory(memory.id)
        await _refuse_deletes(postgres_dsn, False)
        await manager.flush()
        assert [row["access_count"] for row in await _rows(postgres_dsn, memory.id)] == [3, 3]


async def test_accesses_recorded_by_several_processes_all_count(postgres_dsn: str) -> None:
    """Each process's searches add to a memory's access count: the other processes' are not overwritten.

    Two processes searched a memory three times each before writing their batches: its count was 3 (the
    higher of the two absolute counts), not 6, so a memory used through four workers counted about a
    quarter of its uses (promotion to long-term and the ranking's access signal lagged accordingly).
    """
    async with (
        MemoryManager(postgres_config(postgres_dsn)) as first,
        MemoryManager(postgres_config(postgres_dsn)) as second,
    ):
        stored = await first.add_memory("the walrus sings at dawn", user_id="ana")
        for manager in (first, second):
            for _ in range(3):
                assert [m.id for m in await manager.search_memory("walrus", user_id="ana")] == [stored.id]
        await first.flush()
        await second.flush()
        # every stored copy (a memory used this often also gets a long-term copy)
        assert {row["access_count"] for row in await _rows(postgres_dsn, stored.id)} == {6}
        for _ in range(2):
            await second.search_memory("walrus", user_id="ana")
        await second.flush()
        assert {row["access_count"] for row in await _rows(postgres_dsn, stored.id)} == {8}


async def _search_and_flush_through(manager: MemoryManager, run: Any) -> None:
    """Search ana's "walrus" and flush its access counts with ``run`` in place of the database's."""
    database = _backend(manager).database
    original_run = database.run
    database.run = run  # type: ignore[method-assign]
    try:
        await manager.search_memory("walrus", user_id="ana")
        await manager.flush()
    finally:
        database.run = original_run  # type: ignore[method-assign]


async def test_an_access_batch_retried_after_its_commit_is_not_counted_twice(postgres_dsn: str) -> None:
    """A batch whose commit went through but whose acknowledgement was lost is not added again.

    The first attempt's commit is made to look failed (the connection is closed just after it, as a
    server restart or a network cut does), so the bounded retry runs the batch again.
    """
    async with MemoryManager(postgres_config(postgres_dsn)) as manager:
        stored = await manager.add_memory("the walrus sings at dawn", user_id="ana")
        backend = _backend(manager)
        database = backend.database
        original_run = database.run
        lost: list[bool] = []

        async def run_losing_the_first_acknowledgement(operation: Any, what: str, **options: Any) -> Any:
            async def once(connection: psycopg.AsyncConnection[Any]) -> Any:
                result = await operation(connection)
                if what == "access update" and not lost:
                    lost.append(True)
                    await connection.close()  # committed, then the connection is gone: no acknowledgement
                    raise psycopg.OperationalError("the connection was lost")
                return result

            return await original_run(once, what, **options)

        await _search_and_flush_through(manager, run_losing_the_first_acknowledgement)
        assert lost == [True]
        assert [row["access_count"] for row in await _rows(postgres_dsn, stored.id)] == [1]


async def test_an_access_batch_retried_on_a_server_that_never_saw_the_first_attempt_is_written(
    postgres_dsn: str,
) -> None:
    """A retry after a failover asks about a transaction id the new primary has not assigned yet.

    The first attempt ran on a primary that failed before its commit reached the replica promoted in its
    place, whose transaction ids are behind (here: the first attempt's id is made to look 10^6 ahead).
    ``pg_xact_status`` refuses such an id ("transaction ID ... is in the future"): the batch was lost
    and the flush raised StorageError, where the retry was to write it.
    """
    async with MemoryManager(postgres_config(postgres_dsn)) as manager:
        stored = await manager.add_memory("the walrus sings at dawn", user_id="ana")
        database = _backend(manager).database
        original_run = database.run
        failed: list[bool] = []

        async def run_on_a_primary_that_fails(operation: Any, what: str, **options: Any) -> Any:
            async def once(connection: psycopg.AsyncConnection[Any]) -> Any:
                if what != "access update" or failed:
                    return await operation(connection)
                failed.append(True)
                execute = connection.execute

                async def ahead(sql: Any, *arguments: Any, **keywords: Any) -> Any:
                    if "UPDATE cm_memories" in str(sql):  # the primary is gone before the commit
                        raise psycopg.OperationalError("the server closed the connection")
                    sql = str(sql).replace(
                        "pg_current_xact_id()", "(pg_current_xact_id()::text::bigint + 1000000)::text::xid8"
                    )
                    return await execute(sql, *arguments, **keywords)

                connection.execute = ahead  # type: ignore[method-assign]
                try:
                    return await operation(connection)
                finally:
                    del connection.execute

            return await original_run(once, what, **options)

        await _search_and_flush_through(manager, run_on_a_primary_that_fails)
        assert failed == [True]
        assert [row["access_count"] for row in await _rows(postgres_dsn, stored.id)] == [1]


@pytest.mark.parametrize("operation", ["update", "delete"])
async def test_a_timeout_while_another_process_holds_the_row_cuts_the_wait_short(
    postgres_dsn: str, operation: str
) -> None:
    """An update or delete waiting for a row another process holds locked is one transaction not yet made:
    a caller's timeout (an MCP client's cancel) ends the wait at once and leaves the memory as it was. Run to
    its end whatever the cancellation, it kept the caller waiting as long as the other process held the row
    (5 s for a 1 s timeout), then did the change the caller was told had timed out."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as manager:
        memory = await manager.add_memory("the ferry leaves at nine", importance=0.9)
        waited = await _timed_out_while_another_holds(
            postgres_dsn,
            memory.id,
            lambda: (
                manager.update_memory(memory.id, content="the ferry leaves at ten")
                if operation == "update"
                else manager.delete_memory(memory.id)
            ),
        )
        assert waited < 3, f"the caller waited {waited:.1f} s for its 0.5 s timeout"
        kept = await manager.get_memory(memory.id)
        assert kept is not None and kept.content == "the ferry leaves at nine"
    async with MemoryManager(config) as reopened:
        kept = await reopened.get_memory(memory.id)
        assert kept is not None and kept.content == "the ferry leaves at nine"


@pytest.mark.parametrize("operation", ["consolidate", "undo"])
async def test_a_timeout_while_another_process_holds_a_row_cuts_a_merge_or_undo_short(
    postgres_dsn: str, operation: str
) -> None:
    """A consolidation's merge (or its undo) waiting for a row another process holds locked is one
    transaction not yet made: a caller's timeout ends the wait at once and nothing is merged (or undone).
    Run to its end whatever the cancellation, the caller waited as long as the other process held the row
    (5 s for a 0.5 s timeout), then got the merge it was told had timed out."""
    config = postgres_config(postgres_dsn)
    async with MemoryManager(config) as manager:
        first = await manager.add_memory("the office wifi password is changed every friday", importance=0.4)
        await manager.add_memory("the office wifi password is changed every friday evening", importance=0.4)
        merged_id = None
        if operation == "undo":
            merged_id = (await manager.consolidate_memories(0.5))["merged_ids"][0]
        before = await _all_rows(postgres_dsn)
        waited = await _timed_out_while_another_holds(
            postgres_dsn,
            first.id if merged_id is None else merged_id,
            lambda: (
                manager.consolidate_memories(0.5)
                if merged_id is None
                else manager.undo_consolidation(merged_id)
            ),
        )
        assert waited < 3, f"the caller waited {waited:.1f} s for its 0.5 s timeout"
        assert await _all_rows(postgres_dsn) == before  # nothing merged (or undone), nothing half done
        # the call works once the row is free (no lock of the cancelled one is left)
        if merged_id is None:
            report = await asyncio.wait_for(manager.consolidate_memories(0.5), 10)
            assert report["consolidated_count"] == 2
        else:
            report = await asyncio.wait_for(manager.undo_consolidation(merged_id), 10)
            assert sorted(report["restored"]) == sorted({row[0] for row in before if row[3] == merged_id})


async def _all_rows(dsn: str) -> set[tuple[Any, ...]]:
    """Every stored row (id, tier, content, superseded_by), read by a connection of its own."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute("SELECT id, tier, content, superseded_by FROM cm_memories")
        return {tuple(row) for row in await cursor.fetchall()}


async def _timed_out_while_another_holds(
    dsn: str, row_id: str, change: Callable[[], Awaitable[Any]]
) -> float:
    """Run ``change()`` under a 0.5 s timeout while another process holds the row ``row_id`` locked (at
    most 5 s, released once the caller gave up); how long the caller waited for its ``TimeoutError``."""
    locked, release = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()

    def hold_the_row() -> None:
        with psycopg.connect(dsn) as connection, connection.transaction():
            connection.execute("SELECT id FROM cm_memories WHERE id = %s FOR UPDATE", (row_id,))
            loop.call_soon_threadsafe(locked.set)
            release.wait(timeout=5)

    holder = asyncio.ensure_future(asyncio.to_thread(hold_the_row))
    try:
        await locked.wait()
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(change(), 0.5)
        return time.perf_counter() - started
    finally:
        release.set()
        await holder
