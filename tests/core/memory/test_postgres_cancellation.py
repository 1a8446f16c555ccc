"""Calls to a PostgreSQL memory cancelled part-way: the pool hands out only healthy connections afterwards.

Each operation is cancelled at its k-th suspension (:class:`_CancelAt`, a wrapper that cancels the task from
inside the step that suspends it for the k-th time), for every k until it completes uncancelled. After each
cancellation no exception but ``CancelledError`` came out, the next calls work on the same pool (of one
connection, so it is the connection the cancelled call used), and the rows, read by a connection of their
own, are those of before the call or those of the call done: nothing half done.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy
import psycopg
import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import MemoryTier
from context_manager.core.memory.postgres import PostgresBackend
from context_manager.core.messages import Message, Role
from context_manager.testing import HashingEmbedder

_MAX_SUSPENSIONS = 200  # more than any call here suspends: the sweeps always end with a completed call

Rows = frozenset[tuple[Any, ...]]


@pytest.fixture(scope="module")
def shared_dsn() -> Iterator[str]:
    """One schema for the module's tests, each of which clears its rows first: migrating a fresh schema
    (three seconds) took most of each sweep's time."""
    from tests.postgres_support import create_schema, drop_schema

    schema, dsn = create_schema()  # skips (or fails on CI) without a server, as postgres_dsn does
    try:
        yield _named(dsn, schema)
    finally:
        drop_schema(schema)


def _named(dsn: str, name: str) -> str:
    """``dsn`` with an ``application_name`` of its own: the locks of its sessions are told from others'."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


class _CancelAt:
    """Await ``awaitable``, cancelling the running task when it suspends for the ``at``-th time."""

    def __init__(self, awaitable: Awaitable[Any], at: int) -> None:
        self._awaitable = awaitable
        self._at = at
        self._count = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            self._count += 1
            if self._count == self._at:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()  # delivered at this suspension (the future it waits for is cancelled)
            try:
                value, error = (yield yielded), None
            except BaseException as raised:  # noqa: BLE001 - handed to the awaitable, as a task would
                value, error = None, raised


async def _run_cancelled_at(call: Callable[[], Awaitable[Any]], at: int) -> bool:
    """Run ``call()`` in a task cancelled at its ``at``-th suspension; whether it completed anyway."""

    async def wrapped() -> Any:
        return await _CancelAt(call(), at)

    try:
        await asyncio.ensure_future(wrapped())
    except asyncio.CancelledError:
        return False
    return True


def _config(dsn: str, storage: Path) -> ContextManagerConfig:
    return ContextManagerConfig(
        storage_path=storage,
        memory_backend="postgres",
        postgres_dsn=dsn,
        postgres_pool_size=1,
        short_term_memory_size=20,
        medium_term_memory_size=30,
        long_term_memory_size=500,
    )


async def _rows(dsn: str) -> Rows:
    """Every stored row, read by a connection of its own."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT id, tier, content, importance, superseded_by, source FROM cm_memories"
        )
        return frozenset(tuple(row) for row in await cursor.fetchall())


def _idle_connections_in_pipeline_mode(manager: MemoryManager) -> int:
    backend = manager.backend
    assert isinstance(backend, PostgresBackend)
    pool = backend.database._pool
    assert pool is not None
    return sum(1 for connection in list(pool._pool) if connection.pgconn.pipeline_status)


async def test_a_cancelled_update_leaves_no_connection_in_pipeline_mode(
    shared_dsn: str, tmp_path: Path
) -> None:
    """The reported failure: ``get_memory`` after a cancelled ``update_memory`` raised ``IndexError``.

    psycopg, cancelled while syncing the pipeline of the update's transaction, left the connection in pipeline
    mode; the pool handed it out again, and a read finding no row failed in ``cursor.scroll``.
    """
    await _clear(shared_dsn)
    manager = MemoryManager(_config(shared_dsn, tmp_path / "storage"))
    await manager.initialize()
    try:
        memory = await manager.add_memory("the deploy key rotates on mondays")
        for at in range(1, _MAX_SUSPENSIONS):
            change = functools.partial(manager.update_memory, memory.id, content=f"on day {at}", tier="long")
            done = await _run_cancelled_at(change, at)
            assert await manager.get_memory("no-such-memory") is None, at
            stored = await manager.get_memory(memory.id)
            assert stored is not None
            assert stored.content in (
                "the deploy key rotates on mondays",
                *(f"on day {k}" for k in range(at + 1)),
            )
            assert _idle_connections_in_pipeline_mode(manager) == 0, at
            if done:
                break
        else:
            pytest.fail("the update never completed")
    finally:
        await manager.close()


_Setup = Callable[[MemoryManager, Path], Awaitable[dict[str, Any]]]
_Call = Callable[[MemoryManager, dict[str, Any]], Awaitable[Any]]


async def _one_memory(manager: MemoryManager, _: Path) -> dict[str, Any]:
    memory = await manager.add_memory("the staging database lives in frankfurt", importance=0.4)
    return {"id": memory.id}


async def _two_near_duplicates(manager: MemoryManager, _: Path) -> dict[str, Any]:
    await manager.add_memory("the office wifi password is changed every friday", importance=0.4)
    await manager.add_memory("the office wifi password is changed every friday evening", importance=0.4)
    return {}


async def _nothing(manager: MemoryManager, _: Path) -> dict[str, Any]:
    return {}


async def _export_file(manager: MemoryManager, directory: Path) -> dict[str, Any]:
    path = directory / "import.jsonl"
    lines = [
        {"id": f"imported-{n}", "content": f"imported fact number {n}", "tier": "medium", "importance": 0.5}
        for n in range(3)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"path": path}


_OPERATIONS: dict[str, tuple[_Setup, _Call]] = {
    "add_memory": (
        _nothing,
        lambda m, c: m.add_memory("the cafeteria closes at three", memory_id="fixed-id"),
    ),
    "add_memory important (two tiers)": (
        _nothing,
        lambda m, c: m.add_memory("the root password is in the vault", importance=0.95, memory_id="fixed-id"),
    ),
    "update_memory": (_one_memory, lambda m, c: m.update_memory(c["id"], content="it moved to dublin")),
    "update_memory with a tier": (
        _one_memory,
        lambda m, c: m.update_memory(c["id"], content="it moved to dublin", importance=0.7, tier="long"),
    ),
    "update_memory tier only": (_one_memory, lambda m, c: m.update_memory(c["id"], tier="medium")),
    "delete_memory": (_one_memory, lambda m, c: m.delete_memory(c["id"])),
    "consolidate_memories": (_two_near_duplicates, lambda m, c: m.consolidate_memories(0.5)),
    "search_memory": (_one_memory, lambda m, c: m.search_memory("staging database frankfurt")),
    "remember_messages": (
        _nothing,
        lambda m, c: m.remember_messages(
            [
                Message(role=Role.USER, content="my flight leaves at nine"),
                Message(role=Role.ASSISTANT, content="noted: nine o'clock"),
                Message(role=Role.USER, content="and returns on sunday"),
            ],
            session_id="trip",
        ),
    ),
    "import_memories": (_export_file, lambda m, c: m.import_memories(c["path"])),
}


@pytest.mark.parametrize("name", list(_OPERATIONS))
async def test_every_memory_operation_cancelled_anywhere_is_all_or_nothing(
    name: str, shared_dsn: str, tmp_path: Path
) -> None:
    setup, call = _OPERATIONS[name]
    # one manager for the whole sweep, as an application keeps its manager after a cancelled call, and one
    # schema for the module: each k starts from cleared rows (a schema migrated per case and a manager
    # opened per k made the module take 80 s)
    manager = MemoryManager(_config(shared_dsn, tmp_path / "storage"))
    await manager.initialize()
    try:
        # the outcome of the call done, uncancelled, on the same storage (ids and times aside)
        await _clear(shared_dsn)
        await call(manager, await setup(manager, tmp_path))
        completed = await _rows(shared_dsn)
        for at in range(1, _MAX_SUSPENSIONS):
            await _clear(shared_dsn)
            context = await setup(manager, tmp_path)
            before = await _rows(shared_dsn)
            done = await _run_cancelled_at(functools.partial(call, manager, context), at)
            # the next calls work, on the pool's one connection
            assert await manager.get_memory("no-such-memory") is None, at
            await manager.search_memory("anything at all")
            await manager.add_memory(f"a later write {at}", memory_id="later-write")
            await manager.delete_memory("later-write")
            # no session of the manager's still holds a cross-process lock of the cancelled call
            assert await _advisory_locks_held(shared_dsn) == 0, at
            after = await _rows(shared_dsn)
            if done:
                _assert_same_shape(after, completed, at)
                return
            if after != before:
                # a cancelled call that went through: it must be the whole call
                _assert_same_shape(after, completed, at)
        pytest.fail(f"{name} never completed")
    finally:
        await manager.close()


def _shape(rows: Rows) -> list[tuple[Any, ...]]:
    """The rows without their random ids (an id kept only when it is one of the test's own)."""
    return sorted(
        (row[1], row[2], row[3], row[4] is not None, row[5], row[0] if not _is_random(row[0]) else "")
        for row in rows
    )


def _is_random(memory_id: str) -> bool:
    return not (memory_id == "fixed-id" or memory_id.startswith("imported-"))


def _assert_same_shape(after: Rows, completed: Rows, at: int) -> None:
    assert _shape(after) == _shape(completed), f"cancelled at suspension {at}: half done"


async def _advisory_locks_held(dsn: str) -> int:
    """How many advisory locks the sessions of ``dsn`` hold (none once every call ended).

    Only the sessions of its ``application_name`` (:func:`_named`): on a server shared with another test
    run, that run's locks (a migration's) are not the manager's.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE locktype = 'advisory' "
            "AND granted AND application_name = current_setting('application_name')"
        )
        row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0


async def _clear(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        table = await connection.execute("SELECT to_regclass('cm_memories') IS NOT NULL")
        row = await table.fetchone()
        if row is not None and row[0]:
            await connection.execute("DELETE FROM cm_memories")


async def _access_count(dsn: str, memory_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute("SELECT access_count FROM cm_memories WHERE id = %s", (memory_id,))
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def test_a_cancelled_access_count_flush_is_counted_once_by_a_later_flush(
    shared_dsn: str, tmp_path: Path
) -> None:
    """A flush of search accesses cancelled anywhere (before, during or after its commit) loses no access and
    counts none twice: the next flush adds the batch unless the cancelled attempt committed it. Each round
    searches once, flushes cancelled at its k-th suspension, then flushes again; the stored count is then the
    number of rounds. The batch was dropped when the flush was cancelled (the count stayed behind)."""
    await _clear(shared_dsn)
    manager = MemoryManager(_config(shared_dsn, tmp_path / "storage"))
    await manager.initialize()
    try:
        memory = await manager.add_memory("the walrus sings at dawn", importance=0.9, tier="long")
        for at in range(1, _MAX_SUSPENSIONS):
            assert [found.id for found in await manager.search_memory("walrus")] == [memory.id]
            done = await _run_cancelled_at(manager.flush, at)
            await manager.flush()
            assert await _access_count(shared_dsn, memory.id) == at, f"cancelled at suspension {at}"
            assert await manager.get_memory("no-such-memory") is None, at
            if done:
                return
        pytest.fail("the flush never completed")
    finally:
        await manager.close()


async def test_a_connection_a_cancellation_left_in_a_transaction_is_closed_quietly(
    shared_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``PostgresDatabase.run`` closes a connection a cancellation left inside a transaction (not in pipeline
    mode): its write is rolled back, the next call gets a fresh session, and the pool logs no warning.

    The operation opens its transaction itself and is cancelled inside it. Handed back open, the connection
    was rolled back by the pool with a warning ("rolling back returned connection") and served again; closed
    by ``run``, the pool warned "discarding closed connection" for it: a warning for every caller's timeout,
    where nothing was wrong with the server. A connection the server closed is still reported by the pool.
    """
    from context_manager.core.memory.postgres.database import PostgresDatabase

    async with await psycopg.AsyncConnection.connect(shared_dsn, autocommit=True) as connection:
        await connection.execute("DROP TABLE IF EXISTS left_open; CREATE TABLE left_open (id text)")
    caplog.set_level(logging.WARNING, logger="psycopg")
    database = PostgresDatabase(shared_dsn, pool_size=1, connect_timeout=10.0, statement_timeout=None)
    await database.open()
    try:
        in_transaction = asyncio.Event()

        async def write_then_wait(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute("BEGIN")
            await connection.execute("INSERT INTO left_open VALUES ('written')")
            in_transaction.set()
            await asyncio.Event().wait()  # cancelled here, the transaction open

        async def backend_pid(connection: psycopg.AsyncConnection[Any]) -> int:
            cursor = await connection.execute("SELECT pg_backend_pid()")
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        first = await database.run(backend_pid, "pid")
        call = asyncio.ensure_future(database.run(write_then_wait, "open transaction"))
        await in_transaction.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await database.run(backend_pid, "pid") != first  # a fresh session, not the one left open
        async with await psycopg.AsyncConnection.connect(shared_dsn, autocommit=True) as connection:
            cursor = await connection.execute("SELECT count(*) FROM left_open")
            assert await cursor.fetchone() == (0,)  # the insert was rolled back
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

        # a connection the server closed is no deliberate close: the pool's warning stays
        second = await database.run(backend_pid, "pid")
        async with await psycopg.AsyncConnection.connect(shared_dsn, autocommit=True) as killer:
            await killer.execute("SELECT pg_terminate_backend(%s)", (second,))

        async def read(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute("SELECT 1")

        await database.run(read, "read after a restart")  # retried on a fresh connection
        assert any("discarding closed connection" in r.getMessage() for r in caplog.records)
    finally:
        await database.close()


async def _background_settled(manager: MemoryManager) -> None:
    """Wait (at most 10 s) until the background work a cancelled write left (its follow-up, the embedding of
    its memories) has ended."""
    deadline = asyncio.get_running_loop().time() + 10
    while manager._unembedded or any(not task.done() for task in manager._background):
        assert asyncio.get_running_loop().time() < deadline, "the background embedding never ended"
        await asyncio.sleep(0.01)


def _slow_commits(dsn: str) -> str:
    """``dsn`` whose sessions take 0.1 s to commit (``commit_delay``, slept with interrupts held off, once
    the commit is under way): a caller's timeout during it cancels a write that commits all the same."""
    return dsn.replace("options=", "options=-ccommit_delay%3D100000%20-ccommit_siblings%3D0%20", 1)


async def _cancelled_as_it_commits(
    write: Callable[[], Awaitable[Any]], committed: Callable[[], Awaitable[bool]]
) -> None:
    """Run ``write()`` under ever longer timeouts until one cuts it short after it committed (``committed()``
    tells); each attempt starts from what the previous left (a write that was rolled back is tried again).
    The steps are 20 ms apart, a fifth of the 100 ms commit: under load, the time a write takes to reach its
    commit varies from one attempt to the next, and wider steps (200 ms) could jump over the commit."""
    for timeout in [step / 50 for step in range(1, 76)]:
        try:
            await asyncio.wait_for(write(), timeout)
        except TimeoutError:
            if await committed():
                return
        else:
            pytest.fail(f"the write ended within {timeout} s: no timeout cut it short after its commit")
    pytest.fail("no timeout cut the write short after its commit")


async def test_an_update_cancelled_as_it_commits_gets_the_vector_of_its_text(
    shared_dsn: str, tmp_path: Path
) -> None:
    """An update cancelled while its commit was in flight (a caller's timeout) was committed without its
    follow-up: the memory kept the vector of its old text, found by the meaning of words it no longer holds.
    Its new text is now embedded in the background right after."""
    await _clear(shared_dsn)
    embedder = HashingEmbedder()
    config = _config(_slow_commits(shared_dsn), tmp_path / "storage")
    async with MemoryManager(config, embedder=embedder) as manager:
        assert manager.backend is not None
        memory = await manager.add_memory("the walrus sings at dawn")

        async def updated() -> bool:
            stored = await manager.get_memory(memory.id)
            return stored is not None and stored.content == "herons fish at dusk"

        await _cancelled_as_it_commits(
            functools.partial(manager.update_memory, memory.id, content="herons fish at dusk"), updated
        )
        await _background_settled(manager)
        vectors = await manager.backend.vectors_of([memory.id])
        assert numpy.allclose(vectors[memory.id], embedder.embed(["herons fish at dusk"])[0])


async def _vector_ids(dsn: str, ids: list[str]) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute("SELECT id FROM cm_memory_vectors WHERE id = ANY(%s)", (ids,))
        return {row[0] for row in await cursor.fetchall()}


async def test_a_delete_cancelled_as_it_commits_leaves_no_vector(shared_dsn: str, tmp_path: Path) -> None:
    """A delete cancelled while its commit was in flight was committed without its follow-up: the deleted
    memory's vector stayed (and the store's opening did not remove it either). It is now erased."""
    await _clear(shared_dsn)
    config = _config(_slow_commits(shared_dsn), tmp_path / "storage")
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        memory = await manager.add_memory("the walrus sings at dawn")
        kept = await manager.add_memory("the heron fishes at dusk")

        async def deleted() -> bool:
            return await manager.get_memory(memory.id) is None

        await _cancelled_as_it_commits(functools.partial(manager.delete_memory, memory.id), deleted)
        await _background_settled(manager)
        assert await _vector_ids(shared_dsn, [memory.id, kept.id]) == {kept.id}


async def test_a_delete_of_two_copies_cancelled_as_the_first_commits_deletes_the_other(
    shared_dsn: str, tmp_path: Path
) -> None:
    """An important memory has a short-term row and a long-term copy, deleted one after the other (the long
    one first). Cancelled while the first delete's commit was in flight, the delete had begun but stopped
    there: the memory stayed, in short-term only. The delete is now finished in the background."""
    await _clear(shared_dsn)
    config = _config(_slow_commits(shared_dsn), tmp_path / "storage")
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        assert manager.backend is not None
        backend = manager.backend
        memory = await manager.add_memory("the walrus sings at dawn", importance=0.95)
        tiers = {copy.tier for copy in await backend.copies([memory.id])}
        assert tiers == {MemoryTier.SHORT, MemoryTier.LONG}

        async def begun() -> bool:
            return len(await backend.copies([memory.id])) < 2

        await _cancelled_as_it_commits(functools.partial(manager.delete_memory, memory.id), begun)
        await _background_settled(manager)
        assert await backend.copies([memory.id]) == []
        assert await _vector_ids(shared_dsn, [memory.id]) == set()


async def test_an_orphaned_vector_is_removed_when_the_store_opens(shared_dsn: str, tmp_path: Path) -> None:
    """A vector whose memory is in no tier (a process killed between a delete and the delete of its vector,
    an older version's cancelled delete) was kept for good: counted in the vector statistics and searched.
    The store's opening removes it; the vectors of stored memories stay."""
    await _clear(shared_dsn)
    config = _config(shared_dsn, tmp_path / "storage")
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        kept = await manager.add_memory("the walrus sings at dawn")
        gone = await manager.add_memory("the heron fishes at dusk")
    async with await psycopg.AsyncConnection.connect(shared_dsn, autocommit=True) as connection:
        await connection.execute("DELETE FROM cm_memories WHERE id = %s", (gone.id,))
    assert await _vector_ids(shared_dsn, [kept.id, gone.id]) == {kept.id, gone.id}
    async with MemoryManager(config, embedder=HashingEmbedder()):
        assert await _vector_ids(shared_dsn, [kept.id, gone.id]) == {kept.id}


async def test_a_merge_cancelled_as_it_commits_gets_its_vector_while_the_manager_is_open(
    shared_dsn: str, tmp_path: Path
) -> None:
    """A consolidation cancelled while its merge's commit was in flight left the merged memory without a
    vector until the store was next opened (found by its words only). It is now embedded right after."""
    await _clear(shared_dsn)
    config = _config(_slow_commits(shared_dsn), tmp_path / "storage")
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        assert manager.backend is not None
        for text in ["the quarterly report is due on friday", "the quarterly report is due on friday too"]:
            await manager.add_memory(text, importance=0.9)

        backend = manager.backend

        async def merged() -> bool:
            return any(copy.merged_from for copy in await backend.scan(None, every_copy=True))

        consolidate = functools.partial(manager.consolidate_memories, similarity_threshold=0.7)
        await _cancelled_as_it_commits(consolidate, merged)
        await _background_settled(manager)
        stored = {copy.id for copy in await manager.backend.scan(None, every_copy=True)}
        assert len(stored) == 3
        assert await _vector_ids(shared_dsn, sorted(stored)) == stored


async def test_a_retried_access_batch_moves_its_memories_up_to_long_term(
    shared_dsn: str, tmp_path: Path
) -> None:
    """A flush of accesses cancelled anywhere is added by the next one (unless it committed); the memories it
    made worth long-term are moved there by that flush. The retried batch skipped that check: a memory
    searched past the promotion threshold stayed in short-term until searched again."""
    await _clear(shared_dsn)
    manager = MemoryManager(_config(shared_dsn, tmp_path / "storage"))
    await manager.initialize()
    try:
        for at in range(1, _MAX_SUSPENSIONS):
            await _clear(shared_dsn)
            memory = await manager.add_memory(f"the walrus sings at dawn {at}", importance=0.1)
            for _ in range(manager.promotion_access_count):
                assert [found.id for found in await manager.search_memory("walrus")] == [memory.id]
            done = await _run_cancelled_at(manager.flush, at)
            await manager.flush()
            assert manager.backend is not None
            tiers = {copy.tier for copy in await manager.backend.copies([memory.id])}
            assert MemoryTier.LONG in tiers, f"cancelled at suspension {at}: tiers {sorted(tiers)}"
            if done:
                return
        pytest.fail("the flush never completed")
    finally:
        await manager.close()


async def test_a_delete_rolled_back_while_another_process_moved_the_memory_leaves_it_stored(
    shared_dsn: str, tmp_path: Path
) -> None:
    """A delete waiting for a row another process holds locked, cut short by the caller's timeout, is rolled
    back: the memory stays (docs/postgres.md). When that other process was moving the memory to another tier
    (an overflow of two memories, one of which this process updates meanwhile), the background follow-up of
    the cancelled delete took the missing short-term copy for the sign of a committed delete and deleted the
    memory the caller was told had not been deleted."""
    await _clear(shared_dsn)
    config = _config(shared_dsn, tmp_path / "storage")
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        assert manager.backend is not None
        memory = await manager.add_memory("the walrus sings at dawn", importance=0.2)
        other = await manager.add_memory("the heron fishes at dusk", importance=0.2)
        assert [copy.tier for copy in await manager.backend.copies([memory.id])] == [MemoryTier.SHORT]
        locked, release = asyncio.Event(), threading.Event()
        loop = asyncio.get_running_loop()

        def move_to_medium() -> None:  # another process's overflow move, holding the rows while it runs
            with psycopg.connect(shared_dsn) as connection, connection.transaction():
                connection.execute(
                    "UPDATE cm_memories SET tier = 'medium' WHERE id = ANY(%s) AND tier = 'short'",
                    ([memory.id, other.id],),
                )
                loop.call_soon_threadsafe(locked.set)
                release.wait(timeout=5)

        mover = asyncio.ensure_future(asyncio.to_thread(move_to_medium))
        try:
            await locked.wait()
            deleting = asyncio.ensure_future(asyncio.wait_for(manager.delete_memory(memory.id), 0.5))
            await asyncio.sleep(0.1)
            updating = asyncio.ensure_future(manager.update_memory(other.id, content="herons nap at noon"))
            with pytest.raises(TimeoutError):
                await deleting
        finally:
            release.set()
            await mover
        await updating
        await _background_settled(manager)
        assert [copy.tier for copy in await manager.backend.copies([memory.id])] == [MemoryTier.MEDIUM]
        assert await _vector_ids(shared_dsn, [memory.id]) == {memory.id}


async def test_a_delete_of_a_merged_memory_cancelled_as_it_commits_deletes_all_of_it_or_nothing(
    shared_dsn: str, tmp_path: Path
) -> None:
    """A merged memory is deleted with the originals it holds for an undo. They were deleted one copy per
    transaction, originals first: cancelled while the first original's delete was committing, the delete
    stopped there (nothing of the merged memory itself was gone, so the background follow-up did nothing):
    one original gone, the other and the merged memory left, and an undo then restored one original of two.
    The whole delete is now one transaction: whatever cut it short, every row of it is gone or none is."""
    await _clear(shared_dsn)
    config = _config(_slow_commits(shared_dsn), tmp_path / "storage")
    async with MemoryManager(config, embedder=HashingEmbedder()) as manager:
        assert manager.backend is not None
        backend = manager.backend
        for text in ["the quarterly report is due on friday", "the quarterly report is due on friday too"]:
            await manager.add_memory(text, importance=0.9)
        await manager.consolidate_memories(similarity_threshold=0.7)
        merged = [copy for copy in await backend.scan(None, every_copy=True) if copy.merged_from]
        assert len(merged) == 1
        ids = [merged[0].id, *merged[0].merged_from]
        rows_before = len(await backend.copies(ids))
        assert rows_before == 5  # the merged memory in long-term; each original in short- and long-term

        async def begun() -> bool:
            return len(await backend.copies(ids)) < rows_before

        await _cancelled_as_it_commits(functools.partial(manager.delete_memory, merged[0].id), begun)
        await _background_settled(manager)
        assert await backend.copies(ids) == []
        assert await _vector_ids(shared_dsn, ids) == set()
