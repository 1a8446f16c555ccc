"""``memory migrate``: every copy between a storage directory and PostgreSQL, verified and resumable.

Real storages on both sides (files in ``tmp_path``, a real PostgreSQL server), the real command (typer's
runner, and a real subprocess killed with SIGKILL in the middle of a copy).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from context_manager.cli import EXIT_MISMATCH, app
from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidArgumentError, StorageError
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.transfer import migrate_storage, open_storage, verify_storage

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


SMALL_TIERS = {"short_term_memory_size": 8, "medium_term_memory_size": 12}


def sqlite_config(path: Path, **options: Any) -> ContextManagerConfig:
    return ContextManagerConfig(storage_path=path, **{**SMALL_TIERS, **options})


def pg_config(dsn: str, **options: Any) -> ContextManagerConfig:
    return ContextManagerConfig(
        memory_backend="postgres",
        postgres_dsn=dsn,  # type: ignore[arg-type]
        **{**SMALL_TIERS, **options},
    )


def roomy_config(location: str) -> ContextManagerConfig:
    """Tiers large enough that nothing moves while a test fills them."""
    roomy = {"short_term_memory_size": 100_000, "medium_term_memory_size": 100_000}
    if location.startswith("postgresql://"):
        return pg_config(location, **roomy)
    return ContextManagerConfig(storage_path=Path(location), **roomy)


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder that counts the texts it embedded (to see that vectors were not recomputed)."""

    def __init__(self) -> None:
        super().__init__(dimension=64)
        self.embedded = 0

    def embed(self, texts: list[str]) -> Any:
        self.embedded += len(texts)
        return super().embed(texts)


async def populate(config: ContextManagerConfig, embedder: HashingEmbedder | None = None) -> None:
    """Memories in every tier, with long-term copies, several users, access counts and a consolidation."""
    async with MemoryManager(config, embedder=embedder) as memory:
        for number in range(30):
            await memory.add_memory(
                f"note {number}: the {['red', 'green', 'blue'][number % 3]} kite flew over hill {number}",
                importance=0.9 if number % 4 == 0 else 0.4,
                tags=[f"tag{number % 3}"],
                user_id=[None, "alice", "bob"][number % 3],
                metadata={"n": number, "nested": {"x": [1, 2.5, "y"]}},
            )
        for turn in range(6):
            await memory.add_memory(
                f"turn {turn} of the trip to Lisbon",
                metadata={
                    "session_id": "s1",
                    "turn_index": turn,
                    "speaker": "user",
                    "session_date": "2024-05-01",
                },
                user_id="alice",
            )
        await memory.add_memory("Paris is the capital of France", importance=0.5, user_id="carol")
        await memory.add_memory("Paris is the capital of France.", importance=0.6, user_id="carol")
        for _ in range(3):
            await memory.search_memory("kite hill", user_id="alice")
        await memory.flush()
        result = await memory.consolidate_memories(0.8, user_id="carol")
        assert result["consolidated_count"] == 2


async def copies_of(location: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every stored copy at a location, read by the backend itself (a manager would rebalance the tiers)."""
    backend = open_storage(str(location), create=False)
    await backend.open()
    try:
        return {(m.id, m.tier.value): m.to_dict() for m in await backend.scan(ALL_USERS, every_copy=True)}
    finally:
        await backend.close()


async def vectors_of(location: str) -> dict[str, tuple[int, dict[str, bytes]]]:
    backend = open_storage(location, create=False)
    await backend.open()
    try:
        found = {}
        for model, dimension in await backend.vector_models():
            ids, matrix = await backend.load_vectors(model, dimension)
            found[model] = (dimension, {i: matrix[row].astype("<f4").tobytes() for row, i in enumerate(ids)})
        return found
    finally:
        await backend.close()


async def cli(*arguments: str) -> Any:
    """The command through typer's runner, on a thread (the command runs its own event loop)."""
    return await asyncio.to_thread(runner.invoke, app, list(arguments))


async def test_sqlite_to_postgres_and_back_keeps_every_copy_and_vector(
    tmp_path: Path, postgres_dsn: str
) -> None:
    source = tmp_path / "source"
    embedder = CountingEmbedder()
    await populate(sqlite_config(source), embedder)
    original = await copies_of(source)
    tiers = {tier for _, tier in original}
    assert tiers == {"short", "medium", "long"}
    ids = [memory_id for memory_id, _ in original]
    assert len(ids) > len(set(ids)), "some memory must have two copies (short + long)"
    assert any(copy["superseded_by"] for copy in original.values())
    assert any(copy["merged_from"] for copy in original.values())
    assert any(copy["access_count"] > 0 for copy in original.values())
    original_vectors = await vectors_of(str(source))
    assert sum(len(v) for _, v in original_vectors.values()) == len(set(ids))

    report = await migrate_storage(str(source), postgres_dsn, batch_size=7)
    assert report.ok, report.to_dict()
    assert report.copied == report.total_copies == len(original)
    assert report.vectors_copied == len(set(ids))
    assert {(g.tier, g.user) for g in report.groups} >= {
        ("long", "alice"),
        ("short", "bob"),
        ("medium", ""),
    }
    assert await copies_of(postgres_dsn) == original
    assert await vectors_of(postgres_dsn) == original_vectors

    back = tmp_path / "back"
    report = await migrate_storage(postgres_dsn, str(back))
    assert report.ok and report.copied == len(original)
    assert await copies_of(back) == original
    assert await vectors_of(str(back)) == original_vectors

    # a manager on the copy with the same embedder finds every vector: nothing is embedded again
    embedder.embedded = 0
    async with MemoryManager(pg_config(postgres_dsn), embedder=embedder) as memory:
        assert embedder.embedded == 0
        found = await memory.search_memory("kite hill", user_id="alice", limit=3)
        assert found and all(m.user_id == "alice" for m in found)
        assert (await memory.get_memory_stats(user_id=ALL_USERS))["total_memories"] == len(set(ids))


async def test_rerun_copies_nothing_and_a_changed_source_is_followed(
    tmp_path: Path, postgres_dsn: str
) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source))
    first = await migrate_storage(str(source), postgres_dsn)
    assert first.ok
    again = await migrate_storage(str(source), postgres_dsn)
    assert again.ok and again.copied == 0 and again.already_present == first.total_copies

    async with MemoryManager(sqlite_config(source)) as memory:
        short = [m for m in await memory.stored_copies() if m.tier is MemoryTier.SHORT]
        moved = short[0]
        await memory.update_memory(moved.id, tier="medium", content="moved and changed")
    report = await migrate_storage(str(source), postgres_dsn)
    assert report.ok, report.to_dict()
    assert report.removed_stale >= 1 and report.copied >= 1
    assert await copies_of(postgres_dsn) == await copies_of(source)


async def test_verify_reports_a_difference_per_tier_and_user(tmp_path: Path, postgres_dsn: str) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source))
    assert (await migrate_storage(str(source), postgres_dsn)).ok
    async with MemoryManager(pg_config(postgres_dsn)) as memory:
        bob_long = next(m for m in await memory.stored_copies(user_id="bob") if m.tier is MemoryTier.LONG)
        await memory.update_memory(bob_long.id, importance=0.11)

    report = await verify_storage(str(source), postgres_dsn)
    assert not report.ok
    different = {(g.tier, g.user) for g in report.groups if not g.match}
    assert ("long", "bob") in different
    assert all(g.source_count == g.target_count for g in report.groups)

    result = await cli("memory", "migrate", "--from", str(source), "--to", postgres_dsn, "--verify-only")
    assert result.exit_code == EXIT_MISMATCH, result.stdout + result.stderr
    assert "DIFFERENT" in result.stdout
    assert "differs from the source" in result.stderr
    arguments = ["memory", "migrate", "--from", str(source), "--to", postgres_dsn]
    data = json.loads((await cli("--json", *arguments, "--verify-only")).stdout)
    assert data["ok"] is False
    assert any(g["tier"] == "long" and g["user"] == "bob" and not g["match"] for g in data["groups"])

    # migrating again repairs it
    result = await cli("--json", "memory", "migrate", "--from", str(source), "--to", postgres_dsn)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["copied"] >= 1


async def test_refusals_leave_both_sides_as_they_were(tmp_path: Path, postgres_dsn: str) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source))
    before = await copies_of(source)

    with pytest.raises(InvalidArgumentError, match="target: .*a storage other than the source"):
        await migrate_storage(str(source), str(source) + "/")
    with pytest.raises(InvalidArgumentError, match="source: .*memory storage directory"):
        await migrate_storage(str(tmp_path / "nothing"), str(tmp_path / "elsewhere"))
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "elsewhere").exists()
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        await migrate_storage(str(source), postgres_dsn, batch_size=0)
    for timeout in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(InvalidArgumentError, match="connect_timeout: .*a finite number of seconds > 0"):
            await migrate_storage(str(source), str(tmp_path / "elsewhere"), connect_timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="connect_timeout"):
            await verify_storage(str(source), postgres_dsn, connect_timeout=timeout)  # type: ignore[arg-type]
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(InvalidArgumentError, match="target: got 'postgresql:/cm:\\*\\*\\*@db/x'"):
        await migrate_storage(str(source), "postgresql:/cm:s3cret-word@db/x")
    assert not any(Path.cwd().glob("postgresql*"))

    other = tmp_path / "other"
    async with MemoryManager(sqlite_config(other)) as memory:
        stranger = await memory.add_memory("a memory of another storage")
    with pytest.raises(InvalidArgumentError, match="holds 1 memories and 0 conversations"):
        await migrate_storage(str(source), str(other))
    assert [memory_id for memory_id, _ in await copies_of(other)] == [stranger.id]
    report = await migrate_storage(str(source), str(other), merge=True)
    assert report.ok
    merged = await copies_of(other)
    assert set(merged) == set(before) | {(stranger.id, stranger.tier.value)}
    assert await copies_of(source) == before

    result = await cli(
        "memory", "migrate", "--from", str(source), "--to", "postgresql://cm:s3cret-word@127.0.0.1:1/none"
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "s3cret-word" not in result.stderr and "cannot connect to PostgreSQL" in result.stderr
    with pytest.raises(StorageError):
        await migrate_storage("postgres://cm@127.0.0.1:1/none", str(tmp_path / "t"))


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://cm:s3cret-word@[::1/none",  # libpq cannot parse it
        "postgresql://cm:s3cret-word@localhost/none?bogus=1",  # an unknown parameter
        "postgresql://cm:s3cret-word@127.0.0.1:1/none",  # parses; nothing listens there
    ],
)
async def test_a_bad_dsn_gets_one_error_line_without_its_password(tmp_path: Path, dsn: str) -> None:
    """As a process runs the CLI: libpq's message quotes an unparseable DSN whole, and the pool logged it
    on every connection attempt (four lines on stderr, password included) for 10 s before the error."""
    source = tmp_path / "source"
    async with MemoryManager(sqlite_config(source)) as memory:
        await memory.add_memory("a memory")
    started = asyncio.get_running_loop().time()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "context_manager.cli",
        "memory",
        "migrate",
        "--from",
        str(source),
        "--to",
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    _, stderr_bytes = await asyncio.wait_for(process.communicate(), timeout=120)
    stderr = stderr_bytes.decode()
    assert process.returncode == 1, stderr
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert "s3cret-word" not in stderr
    if "127.0.0.1:1" not in dsn:
        assert "postgres_dsn" in stderr and "connection string" in stderr
        assert asyncio.get_running_loop().time() - started < 8  # refused at once, not after the pool's 10 s


async def test_a_schema_without_a_store_is_refused_and_left_as_it_was(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A DSN missing its search_path (or naming an empty schema) as the source was "migrated": the tables
    were created in it and an empty copy verified. --verify-only created them in an empty target."""
    import psycopg

    from tests.postgres_support import create_schema, drop_schema

    source = tmp_path / "source"
    await populate(sqlite_config(source))
    schema, empty_dsn = create_schema()
    try:
        with pytest.raises(
            InvalidArgumentError, match="source: .*holds a memory store.*no cm_memories table"
        ):
            await migrate_storage(empty_dsn, str(tmp_path / "target"))
        assert not (tmp_path / "target").exists()
        with pytest.raises(InvalidArgumentError, match="target: .*no cm_memories table"):
            await verify_storage(str(source), empty_dsn)
        with psycopg.connect(empty_dsn) as connection:
            tables = connection.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchone()
        assert tables == (0,)
    finally:
        drop_schema(schema)
    # the same database spelled another way is the source itself
    assert (await migrate_storage(str(source), postgres_dsn)).ok
    respelled = postgres_dsn.replace("postgresql://", "postgres://", 1)
    with pytest.raises(InvalidArgumentError, match="target: .*a storage other than the source"):
        await migrate_storage(postgres_dsn, respelled)


# --- many vectors into PostgreSQL: the HNSW index built once, not row by row -----------------------


def _index_oid(dsn: str, dimension: int) -> int | None:
    """The oid of the HNSW index of ``dimension`` in the DSN's schema (``None``: there is none)."""
    import psycopg

    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT c.oid::bigint FROM pg_class AS c JOIN pg_index AS i ON i.indexrelid = c.oid "
            "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace AND i.indisvalid",
            (f"cm_memory_vectors_hnsw_{dimension}",),
        ).fetchone()
    return None if row is None else int(row[0])


async def test_many_vectors_are_copied_to_postgres_with_the_index_built_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Every vector went through the HNSW index one insert at a time: ~260 copies/s for 5,000 memories with
    384-dimension vectors (and slower as the index grew), where building the index after the copy does the
    same work several times faster (benchmarks/bench_migrate.py). The index is there after the copy, built
    anew, and finds the vectors."""
    source = tmp_path / "source"
    embedder = HashingEmbedder(dimension=48)
    async with MemoryManager(roomy_config(str(source)), embedder=embedder) as memory:
        await memory.add_memories(
            [{"content": f"kite number {n} flew over hill {n * 7}"} for n in range(1200)]
        )
    async with MemoryManager(pg_config(postgres_dsn), embedder=embedder) as memory:
        await memory.add_memory("the target's own memory about a lighthouse")
    before = _index_oid(postgres_dsn, 48)
    assert before is not None

    report = await migrate_storage(str(source), postgres_dsn, merge=True)
    assert report.ok and report.vectors_copied == 1200, report.to_dict()
    after = _index_oid(postgres_dsn, 48)
    assert after is not None and after != before, "the index is built again after the copy"
    copied = await vectors_of(postgres_dsn)
    for model, (dimension, found) in (await vectors_of(str(source))).items():
        assert copied[model][0] == dimension and found.items() <= copied[model][1].items()
    async with MemoryManager(pg_config(postgres_dsn), embedder=embedder) as memory:
        found = await memory.search_memory("kite number 613 flew over hill 4291", limit=1)
        assert found and found[0].content == "kite number 613 flew over hill 4291"

    # a run writing few vectors (here none) leaves the index as it is
    assert (await migrate_storage(str(source), postgres_dsn, merge=True)).ok
    assert _index_oid(postgres_dsn, 48) == after


async def test_bulk_vectors_drops_the_index_only_for_a_large_load_and_builds_it_again(
    postgres_dsn: str,
) -> None:
    import numpy as np

    from context_manager.core.errors import StorageError

    backend = open_storage(postgres_dsn, create=True)
    await backend.open()
    try:
        await backend.open_vectors("m", 8)
        rows = np.random.default_rng(7).standard_normal((2500, 8)).astype(np.float32)
        memories = [Memory(id=f"m{n:04d}", content=f"memory {n}") for n in range(2500)]
        await backend.put(MemoryTier.LONG, memories[:1500])
        await backend.save_vectors("m", memories[:1500], rows[:1500])
        kept = _index_oid(postgres_dsn, 8)
        assert kept is not None

        for count in (999, 1400):  # too few, or fewer than the 1,500 stored: the index stays
            async with backend.bulk_vectors(8, count):
                assert _index_oid(postgres_dsn, 8) == kept

        with pytest.raises(StorageError):  # a failure in the block: the index is built again
            async with backend.bulk_vectors(8, 1500):
                assert _index_oid(postgres_dsn, 8) is None
                await backend.save_vectors("m", memories[1500:], rows[1500:] * np.nan)  # refused
        rebuilt = _index_oid(postgres_dsn, 8)
        assert rebuilt is not None and rebuilt != kept

        entered = asyncio.Event()

        async def interrupted_load() -> None:
            async with backend.bulk_vectors(8, 1500):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(interrupted_load())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _index_oid(postgres_dsn, 8) is None  # cancelled: not built then, the next open does
        await backend.open_vectors("m", 8)
        assert _index_oid(postgres_dsn, 8) is not None
        hits = await backend.nearest(rows[42], ALL_USERS, 1)
        assert hits[0][0] == "m0042"
    finally:
        await backend.close()


# --- interrupted and resumed: a real process killed with SIGKILL in the middle ---------------------


async def _fill(config: ContextManagerConfig, count: int) -> None:
    async with MemoryManager(config) as memory:
        for start in range(0, count, 500):
            await memory.add_memories(
                [
                    {
                        "content": f"bulk memory {n} about topic {n % 17}",
                        "importance": 0.9 if n % 5 == 0 else 0.3,
                        "user_id": f"user{n % 3}",
                        "tier": None if n % 2 else ["short", "medium", "long"][n % 3],
                    }
                    for n in range(start, min(count, start + 500))
                ]
            )


async def _count_copies(location: str) -> tuple[int, int]:
    """(stored copies, distinct (id, tier) keys) at a location."""
    backend = open_storage(location, create=False)
    await backend.open()
    try:
        copies = await backend.scan(ALL_USERS, every_copy=True)
    finally:
        await backend.close()
    return len(copies), len({(m.id, m.tier) for m in copies})


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["sqlite-to-postgres", "postgres-to-sqlite"])
async def test_kill_9_in_the_middle_then_run_again_finishes_the_copy(
    tmp_path: Path, postgres_dsn: str, direction: str
) -> None:
    directory = str(tmp_path / "storage")
    source, target = (
        (directory, postgres_dsn) if direction == "sqlite-to-postgres" else (postgres_dsn, directory)
    )
    await _fill(roomy_config(source), 4000)
    total, _ = await _count_copies(source)
    assert total > 4000  # some memories have two copies

    command = [
        sys.executable,
        "-m",
        "context_manager.cli",
        "memory",
        "migrate",
        "--from",
        source,
        "--to",
        target,
        "--batch-size",
        "10",
    ]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    pipes: dict[str, Any] = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    process = await asyncio.create_subprocess_exec(*command, env=environment, cwd=tmp_path, **pipes)
    assert process.stderr is not None
    async with asyncio.timeout(120):
        while line := (await process.stderr.readline()).decode():
            if line.startswith("copied ") and int(line.split()[1].split("/")[0]) > 0:
                process.send_signal(signal.SIGKILL)
                break
        await process.wait()
    assert process.returncode == -signal.SIGKILL, "the copy must be interrupted in the middle"

    written, distinct = await _count_copies(target)
    assert 0 < written < total, (written, total)
    assert written == distinct

    rerun = await asyncio.create_subprocess_exec(
        *command[:3], "--json", *command[3:], env=environment, cwd=tmp_path, **pipes
    )
    async with asyncio.timeout(300):
        stdout, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["already_present"] >= written - 10  # the batch being written when killed may be redone
    assert report["already_present"] + report["copied"] == total
    assert report["copied"] < total
    assert sum(group["target_count"] for group in report["groups"]) == total
    assert await _count_copies(target) == (total, total)
    assert await copies_of(target) == await copies_of(source)


INTERRUPTED = (
    "error: interrupted; the target keeps what was copied: run the same command again to finish the copy\n"
)


@pytest.mark.slow
async def test_ctrl_c_stops_at_once_even_while_the_storages_are_read_and_the_copy_resumes(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Ctrl-C while ``memory migrate`` opened a large storage directory (its log replayed on a storage
    thread) took the whole opening to answer: 5-8 s here with 30,000 medium-term memories. It now stops
    within a second (exit code 130, one line saying how to finish), here and in the middle of the copy,
    and the same command run again finishes the copy."""
    source = tmp_path / "source"
    roomy = {"short_term_memory_size": 100_000, "medium_term_memory_size": 100_000}
    async with MemoryManager(ContextManagerConfig(storage_path=source, embedder="none", **roomy)) as memory:
        for start in range(0, 30_000, 3000):
            await memory.add_memories(
                [
                    {"content": f"memory {n} about topic {n % 17}", "tier": "medium", "user_id": f"u{n % 3}"}
                    for n in range(start, start + 3000)
                ]
            )
    command = [
        sys.executable,
        "-m",
        "context_manager.cli",
        "memory",
        "migrate",
        "--from",
        str(source),
        "--to",
        postgres_dsn,
        "--batch-size",
        "50",
    ]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    pipes: dict[str, Any] = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    loop = asyncio.get_running_loop()

    # 1. while the source is being opened: its lock file names the process from the start of the opening
    process = await asyncio.create_subprocess_exec(*command, env=environment, cwd=tmp_path, **pipes)

    def opening(pid: int) -> None:
        while str(pid) not in (source / ".lock").read_text():
            time.sleep(0.01)

    await asyncio.wait_for(asyncio.to_thread(opening, process.pid), timeout=60)
    process.send_signal(signal.SIGINT)
    signalled = loop.time()
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert loop.time() - signalled < 1.0
    assert process.returncode == 130
    assert (stdout, stderr.decode()) == (b"", INTERRUPTED)

    # 2. in the middle of the copy
    process = await asyncio.create_subprocess_exec(*command, env=environment, cwd=tmp_path, **pipes)
    assert process.stderr is not None
    lines = []
    async with asyncio.timeout(120):
        while line := (await process.stderr.readline()).decode():
            lines.append(line)
            if line.startswith("copied ") and int(line.split()[1].split("/")[0]) > 0:
                process.send_signal(signal.SIGINT)
                signalled = loop.time()
                break
        rest = await process.stderr.read()
        await process.wait()
    assert loop.time() - signalled < 1.0
    assert process.returncode == 130, lines
    assert rest.decode() == INTERRUPTED
    written, distinct = await _count_copies(postgres_dsn)
    assert 0 < written < 30_000 and written == distinct

    # 3. the same command again finishes the copy
    rerun = await asyncio.create_subprocess_exec(
        *command[:3], "--json", *command[3:], env=environment, cwd=tmp_path, **pipes
    )
    async with asyncio.timeout(300):
        stdout, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["ok"] is True and report["already_present"] >= written
    assert report["already_present"] + report["copied"] == report["total_copies"] == 30_000
    assert await copies_of(postgres_dsn) == await copies_of(source)


def test_is_dsn_and_copy_digest() -> None:
    from context_manager.core.memory.transfer import copy_digest, is_dsn

    assert is_dsn("postgresql://u@h/db") and is_dsn("postgres://h/db") and is_dsn(" POSTGRESQL://h/db")
    assert not is_dsn("./storage") and not is_dsn("/var/lib/postgresql/data")
    a = Memory(id="m1", content="x", metadata={"b": 1, "a": 2})
    b = Memory(id="m1", content="x", metadata={"a": 2, "b": 1})
    assert copy_digest(a) == copy_digest(b)
    assert copy_digest(a) != copy_digest(a.copy(tier=MemoryTier.LONG))
    assert copy_digest(a) != copy_digest(a.copy(access_count=1))


# --- persisted conversations --------------------------------------------------------------------------


async def _write_conversations(location: str) -> None:
    """Two conversations through the store API: records by two writers, a snapshot, a watermark."""
    from context_manager.core.conversations.store import ConversationRecord
    from context_manager.core.memory.transfer import _conversation_store

    backend = open_storage(location, create=True)
    await backend.open()
    store = await _conversation_store(location, backend, create=True)
    assert store is not None
    try:
        version = await store.append(
            "support-42",
            0,
            [ConversationRecord("add", {"role": "user", "content": "my order is late", "n": 1.5})],
            writer="worker-a",
        )
        version = await store.append(
            "support-42",
            version,
            [
                ConversationRecord(
                    "add", {"role": "assistant", "content": "checking", "meta": {"b": 1, "a": [2]}}
                ),
                ConversationRecord("compress", {"removed": ["m1"], "summary": "late order"}),
            ],
            writer="worker-b",
        )
        await store.save_snapshot(
            "support-42", version, {"messages": [{"content": "late order"}], "tokens": 12}
        )
        await store.append(
            "support-42", version, [ConversationRecord("pin", {"id": "m2"})], writer="worker-a"
        )
        await store.mark_indexed("support-42", version)
        await store.append(
            "café-7", 0, [ConversationRecord("add", {"content": "ünïcode ✓"})], writer="w", user_id="ana"
        )
    finally:
        await store.close()
        await backend.close()


async def _dumps(location: str) -> dict[str, dict[str, Any]]:
    from context_manager.core.memory.transfer import _conversation_store

    backend = open_storage(location, create=False)
    await backend.open()
    store = await _conversation_store(location, backend, create=False)
    try:
        if store is None:
            return {}
        found = {}
        for info in await store.list_conversations():
            dump = await store.dump(info.conversation_id)
            assert dump is not None
            found[info.conversation_id] = json.loads(json.dumps(dump.to_dict(), sort_keys=True))
        return found
    finally:
        if store is not None:
            await store.close()
        await backend.close()


async def test_persisted_conversations_move_with_every_record(tmp_path: Path, postgres_dsn: str) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source))
    await _write_conversations(str(source))
    original = await _dumps(str(source))
    assert set(original) == {"support-42", "café-7"}
    assert original["support-42"]["snapshot_version"] == 3 and len(original["support-42"]["records"]) == 4
    assert original["support-42"]["indexed_version"] == 3
    assert (original["café-7"]["user_id"], original["support-42"]["user_id"]) == ("ana", None)

    report = await migrate_storage(str(source), postgres_dsn)
    assert report.ok, report.to_dict()
    assert report.conversations_copied == 2 and report.conversations is not None
    assert (report.conversations.source_count, report.conversations.target_records) == (2, 5)
    assert await _dumps(postgres_dsn) == original

    again = await migrate_storage(str(source), postgres_dsn)
    assert again.ok and again.conversations_copied == 0 and again.conversations_already_present == 2

    back = tmp_path / "back"
    assert (await migrate_storage(postgres_dsn, str(back))).ok
    assert await _dumps(str(back)) == original

    # a conversation changed at the target is reported, and the next run repairs it
    from context_manager.core.conversations.store import ConversationRecord
    from context_manager.core.memory.transfer import _conversation_store

    backend = open_storage(postgres_dsn, create=False)
    await backend.open()
    store = await _conversation_store(postgres_dsn, backend, create=False)
    assert store is not None
    await store.append("café-7", 1, [ConversationRecord("add", {"content": "later"})], writer="w")
    await backend.close()
    checked = await verify_storage(str(source), postgres_dsn)
    assert not checked.ok and checked.conversations is not None and not checked.conversations.match
    assert all(group.match for group in checked.groups)
    result = await cli("--json", "memory", "migrate", "--from", str(source), "--to", postgres_dsn)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["conversations_copied"] == 1
    assert await _dumps(postgres_dsn) == original


async def test_a_storage_without_conversations_creates_none(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    await populate(sqlite_config(source))
    report = await migrate_storage(str(source), str(target))
    assert report.ok and report.conversations is None
    assert not (target / "conversations.sqlite3").exists()


async def _delete_conversation(location: str, conversation_id: str) -> None:
    from context_manager.core.memory.transfer import _conversation_store

    backend = open_storage(location, create=False)
    await backend.open()
    store = await _conversation_store(location, backend, create=False)
    assert store is not None
    try:
        assert await store.delete(conversation_id)
    finally:
        await store.close()
        await backend.close()


async def test_prune_finishes_a_copy_after_deletions_at_the_source(tmp_path: Path, postgres_dsn: str) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source), CountingEmbedder())
    await _write_conversations(str(source))
    assert (await migrate_storage(str(source), postgres_dsn)).ok

    # between runs, the source loses a memory with two copies (short + long), its vector and a conversation
    async with MemoryManager(sqlite_config(source), embedder=CountingEmbedder()) as memory:
        stored = await memory.stored_copies(user_id=ALL_USERS)
        tiers: dict[str, set[MemoryTier]] = {}
        for copy in stored:
            tiers.setdefault(copy.id, set()).add(copy.tier)
        gone = next(memory_id for memory_id, found in tiers.items() if len(found) == 2)
        assert await memory.delete_memory(gone)
    await _delete_conversation(str(source), "café-7")
    assert gone in {memory_id for memory_id, _ in await copies_of(postgres_dsn)}

    # a plain resume refuses the target and says what to do; the target is as it was
    before = await copies_of(postgres_dsn)
    with pytest.raises(InvalidArgumentError, match=r"holds 1 memories and 1 conversations.*--prune"):
        await migrate_storage(str(source), postgres_dsn)
    with pytest.raises(InvalidArgumentError, match="prune: .*False when merge is True"):
        await migrate_storage(str(source), postgres_dsn, merge=True, prune=True)
    assert await copies_of(postgres_dsn) == before

    result = await cli("--json", "memory", "migrate", "--from", str(source), "--to", postgres_dsn, "--prune")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert (report["pruned"], report["conversations_pruned"], report["copied"]) == (2, 1, 0)
    assert await copies_of(postgres_dsn) == await copies_of(source)
    assert await vectors_of(postgres_dsn) == await vectors_of(str(source))
    assert gone not in next(iter((await vectors_of(postgres_dsn)).values()))[1]
    assert await _dumps(postgres_dsn) == await _dumps(str(source))
    assert set(await _dumps(postgres_dsn)) == {"support-42"}

    # and back to a directory that holds an older copy: pruned there too
    back = tmp_path / "back"
    async with MemoryManager(sqlite_config(back)) as memory:
        await memory.add_memory("only in the old copy")
    plain = await cli("memory", "migrate", "--from", postgres_dsn, "--to", str(back), "--prune")
    assert plain.exit_code == 0, plain.stdout + plain.stderr
    assert "1 copies and 0 conversations pruned" in plain.stdout
    assert await copies_of(back) == await copies_of(source)


async def test_a_refused_target_is_left_without_a_conversations_file(tmp_path: Path) -> None:
    source, other = tmp_path / "source", tmp_path / "other"
    await populate(sqlite_config(source))
    await _write_conversations(str(source))
    async with MemoryManager(sqlite_config(other)) as memory:
        await memory.add_memory("a memory of another storage")
    files = sorted(path.name for path in other.iterdir())

    with pytest.raises(InvalidArgumentError, match="holds 1 memories and 0 conversations"):
        await migrate_storage(str(source), str(other))
    result = await cli("memory", "migrate", "--from", str(source), "--to", str(other))
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1

    assert not (other / "conversations.sqlite3").exists()
    assert sorted(path.name for path in other.iterdir()) == files


async def _conversation_at(location: Path, text: str | None) -> list[Any]:
    """The window of conversation ``chat`` stored at ``location`` (after adding ``text``, if given)."""
    from context_manager import EnhancedContextManager

    config = ContextManagerConfig(storage_path=location, embedder="none")
    async with EnhancedContextManager(config, conversation_id="chat") as manager:
        if text is not None:
            await manager.add_message("user", text)
        return manager.get_context(format="openai")


async def test_another_stores_conversation_under_the_same_id_is_never_overwritten(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    await _conversation_at(source, "written at the source")
    kept = await _conversation_at(target, "the target's own conversation")
    stored = await _dumps(str(target))

    # the same id, created separately: not a copy of the source's conversation (its generation differs)
    for flags in ((), ("--merge",)):
        result = await cli("memory", "migrate", "--from", str(source), "--to", str(target), *flags)
        assert result.exit_code == 1, result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "'chat'" in result.stderr
    with pytest.raises(InvalidArgumentError, match=r"--prune.*1 conversations \['chat'\]"):
        await migrate_storage(str(source), str(target))
    with pytest.raises(InvalidArgumentError, match=r"\['chat'\]"):
        await migrate_storage(str(source), str(target), merge=True)
    assert await _dumps(str(target)) == stored
    assert await _conversation_at(target, None) == kept

    # --prune makes the target a copy of the source: the source's conversation replaces it
    report = await migrate_storage(str(source), str(target), prune=True)
    assert report.ok and report.conversations_copied == 1
    assert await _dumps(str(target)) == await _dumps(str(source))

    # the source's own conversation, continued after a copy, is still brought up to date
    await _conversation_at(source, "later at the source")
    again = await migrate_storage(str(source), str(target))
    assert again.ok and again.conversations_copied == 1
    assert await _conversation_at(target, None) == await _conversation_at(source, None)


async def test_another_users_memory_under_a_source_id_is_never_replaced(tmp_path: Path) -> None:
    """A target holding bob's memory under an id the source gives alice's: the migration removed bob's as a
    "stale copy" of alice's (``removed_stale: 1``, ``ok``), without ``--merge`` or ``--prune``; a memory of
    the same owner created apart (another store's own note under the same custom id) was overwritten. Both
    are refused now, as another conversation under a source's id is, unless ``prune`` makes the target a
    copy of the source."""
    source, target = tmp_path / "source", tmp_path / "target"
    async with MemoryManager(sqlite_config(source, embedder="none")) as memory:
        await memory.add_memory("alice likes coffee", user_id="alice", memory_id="pref-1")
        await memory.add_memory("a note of the shared namespace", memory_id="note-1")
    async with MemoryManager(sqlite_config(target, embedder="none")) as memory:
        await memory.add_memory("bob likes tea", user_id="bob", memory_id="pref-1", tier="long")
        await memory.add_memory("a note of the shared namespace", memory_id="note-1")
        before = sorted((m.id, m.tier.value, m.user_id, m.content) for m in await memory.stored_copies())

    for flags in ((), ("--merge",)):
        result = await cli("memory", "migrate", "--from", str(source), "--to", str(target), *flags)
        assert result.exit_code == 1, result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "'pref-1'" in result.stderr
    with pytest.raises(
        InvalidArgumentError, match=r"--prune.*2 memories \['note-1', 'pref-1'\].*another user"
    ):
        await migrate_storage(str(source), str(target))
    with pytest.raises(InvalidArgumentError, match=r"\['note-1', 'pref-1'\]"):
        await migrate_storage(str(source), str(target), merge=True)
    async with MemoryManager(sqlite_config(target, embedder="none")) as memory:
        after = sorted((m.id, m.tier.value, m.user_id, m.content) for m in await memory.stored_copies())
    assert after == before

    report = await migrate_storage(str(source), str(target), prune=True)
    assert report.ok
    async with MemoryManager(sqlite_config(target, embedder="none")) as memory:
        copies = sorted((m.id, m.user_id, m.content) for m in await memory.stored_copies())
    assert copies == [
        ("note-1", None, "a note of the shared namespace"),
        ("pref-1", "alice", "alice likes coffee"),
    ]


async def test_a_location_that_is_not_valid_unicode_is_refused_by_name(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source))
    undecodable = str(tmp_path / "t\udcffx")  # what Python makes of a non-UTF-8 byte in a command line
    with pytest.raises(InvalidArgumentError, match="target: .*valid Unicode"):
        await migrate_storage(str(source), undecodable)
    result = await cli("memory", "migrate", "--from", str(source), "--to", undecodable)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --to: ") and "no lone surrogates" in result.stderr
    assert not await asyncio.to_thread(Path(undecodable).exists)


async def test_a_dsn_is_recognised_and_opened_whatever_the_case_of_its_scheme(
    tmp_path: Path, postgres_dsn: str
) -> None:
    source = tmp_path / "source"
    await populate(sqlite_config(source))
    shouted = " " + postgres_dsn.replace("postgresql://", "POSTGRESQL://", 1)
    report = await migrate_storage(str(source), shouted)
    assert report.ok and report.copied == report.total_copies > 0
    assert (await verify_storage(shouted, str(source))).ok


async def test_a_path_location_is_taken_and_a_non_text_one_is_refused_without_its_password(
    tmp_path: Path,
) -> None:
    """``migrate_storage``/``verify_storage`` given a ``pathlib.Path`` (as a storage directory often is)
    crashed with ``AttributeError: 'PosixPath' object has no attribute 'strip'``; ``open_storage`` refused
    it as "got '/the/dir'; allowed a storage directory". Bytes holding a DSN, or a ``Path`` made of one,
    were quoted with their password. A path is taken now; bytes or an int are refused with the password
    as ``***``, saying a str or a path is allowed."""
    source, target = tmp_path / "source", tmp_path / "target"
    await populate(sqlite_config(source))
    report = await migrate_storage(source, target)
    assert report.ok and report.copied == report.total_copies > 0
    assert (await verify_storage(source, target)).ok
    backend = open_storage(source, create=False)
    assert Path(backend.location) == source

    secret = "postgresql://ana:s3cretpw@db.example:5432/memories"
    for location in (secret.encode(), Path(secret), bytearray(secret.encode()), 42, [secret]):
        with pytest.raises(InvalidArgumentError) as refused:
            open_storage(location, create=True)  # type: ignore[arg-type]
        message = str(refused.value)
        assert "s3cretpw" not in message and "s3cretpw" not in repr(refused.value.got), message
        assert message.startswith("location: got "), message
        assert isinstance(location, Path) or "a str or a path" in message, message
        with pytest.raises(InvalidArgumentError, match="^source: ") as refused:
            await migrate_storage(location, str(target))  # type: ignore[arg-type]
        assert "s3cretpw" not in str(refused.value)
    made = await asyncio.to_thread(os.listdir, Path.cwd())
    assert not [name for name in made if name.startswith("postgres")]  # no directory made of the DSN


@pytest.mark.parametrize("side", ["source", "target"])
async def test_a_location_holding_a_nul_is_refused_by_name(tmp_path: Path, side: str) -> None:
    """A NUL in ``migrate_storage``'s or ``verify_storage``'s source or target escaped as a bare
    ``ValueError: embedded null byte`` (the check that source and target differ resolved it as a path
    before it was validated)."""
    store = tmp_path / "store"
    await populate(sqlite_config(store))
    locations = {"source": str(store), "target": str(tmp_path / "copy")}
    locations[side] = str(tmp_path / "bad\x00name")
    with pytest.raises(InvalidArgumentError, match=f"^{side}: .*no NUL"):
        await migrate_storage(locations["source"], locations["target"])
    with pytest.raises(InvalidArgumentError, match=f"^{side}: .*no NUL"):
        await verify_storage(locations["source"], locations["target"])
    assert sorted(set(await asyncio.to_thread(os.listdir, tmp_path)) - {"cwd"}) == ["store"]
