"""What one backend stores, the other stores too, as given: values PostgreSQL's types changed or refused
(found by migrating stores between the backends), on both backends with the same assertions."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidMemoryError, StorageError
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.transfer import migrate_storage
from context_manager.core.memory.validation import MAX_TAG_CHARS


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


async def test_metadata_comes_back_as_written(manager: MemoryManager) -> None:
    """jsonb turned 1e16 into the int 10000000000000000 and -0.0 into 0.0."""
    metadata = {"reading": 1e16, "offset": -0.0, "huge": 1.5e300, "count": 10**20, "z": {"b": 1, "a": [0.1]}}
    memory = await manager.add_memory("a sensor reading", metadata=metadata, tier="long")
    stored = await manager.get_memory(memory.id)
    assert stored is not None
    assert canonical(stored.metadata) == canonical(metadata)
    assert type(stored.metadata["reading"]) is float and type(stored.metadata["count"]) is int
    await manager.update_memory(memory.id, metadata={**metadata, "offset": -0.0, "more": 2e16})
    updated = await manager.get_memory(memory.id)
    assert updated is not None and canonical(updated.metadata) == canonical({**metadata, "more": 2e16})


async def test_a_memory_of_megabytes_of_distinct_words_is_stored_and_found(manager: MemoryManager) -> None:
    """A tool's log output of a few megabytes: its tsvector went over PostgreSQL's 1 MB, so storing it
    failed (after five retries of a statement that could never succeed)."""
    generator = random.Random(7)
    words = [f"w{generator.getrandbits(40):010x}" for _ in range(160_000)]  # ~1.9 MB, all distinct
    text = "incident log: disk quota exceeded on volume kestrel\n" + " ".join(words)
    memory = await manager.add_memory(text, tier="long", tags=["tool_output"])
    stored = await manager.get_memory(memory.id)
    assert stored is not None and stored.content == text
    found = await manager.search_memory("kestrel disk quota", limit=3)
    assert [hit.id for hit in found] == [memory.id]


async def test_tags_longer_than_the_limit_are_refused_on_every_backend(manager: MemoryManager) -> None:
    """A random 3,000-character tag was accepted by SQLite and refused by PostgreSQL's tag index."""
    generator = random.Random(3)
    longest = "".join(chr(generator.randrange(0x4E00, 0x9FFF)) for _ in range(MAX_TAG_CHARS))  # 1.5 KB
    kept = await manager.add_memory("a tagged memory", tags=[longest, "short"])
    assert (await manager.search_by_tags([longest]))[0].id == kept.id
    with pytest.raises(InvalidMemoryError, match=f"tags: .*at most {MAX_TAG_CHARS} characters"):
        await manager.add_memory("too long a tag", tags=["x" * (MAX_TAG_CHARS + 1)])
    with pytest.raises(InvalidMemoryError, match="tags"):
        await manager.update_memory(kept.id, tags=["y" * (MAX_TAG_CHARS + 1)])
    assert [m.id for m in await manager.search_memory("tagged", limit=5)] == [kept.id]
    assert (await manager.get_memory(kept.id)).tags == [longest, "short"]  # type: ignore[union-attr]


async def test_a_turn_index_beyond_64_bits_is_kept_in_the_metadata_only(manager: MemoryManager) -> None:
    """SQLite raised a raw OverflowError writing it to the long-term tier; PostgreSQL a StorageError."""
    metadata = {"session_id": "s1", "turn_index": 2**63, "speaker": "Ann"}
    memory = await manager.add_memory("the turn after the last", metadata=metadata, tier="long")
    short = await manager.add_memory("a short-term turn", metadata={**metadata, "turn_index": -(2**64)})
    assert memory.turn_index is None and short.turn_index is None
    stored = await manager.get_memory(memory.id)
    assert stored is not None and stored.metadata["turn_index"] == 2**63
    found = await manager.search_memory("turn after the last", limit=2)
    assert memory.id in [hit.id for hit in found]


async def test_long_user_and_session_ids_behave_alike_on_every_backend(manager: MemoryManager) -> None:
    """A 3,000-character user id or session id (9 KB) was stored by SQLite and failed on PostgreSQL
    (an index row of 9 KB). A user id is at most 256 characters on both; a longer session id stays in the
    metadata, as a turn of no session."""
    generator = random.Random(5)
    longest_user = "".join(chr(generator.randrange(0x4E00, 0x9FFF)) for _ in range(256))
    kept = await manager.add_memory("a memory of a long-named user", user_id=longest_user, tier="long")
    assert [m.id for m in await manager.search_memory("long-named user", user_id=longest_user)] == [kept.id]
    with pytest.raises(InvalidMemoryError, match="user_id: .*at most 256 characters"):
        await manager.add_memory("too long a user", user_id="u" * 257)
    session = "".join(chr(generator.randrange(0x4E00, 0x9FFF)) for _ in range(3000))
    turn = await manager.add_memory(
        "a turn of a long session", metadata={"session_id": session, "turn_index": 1}, tier="long"
    )
    assert turn.session_id is None
    stored = await manager.get_memory(turn.id)
    assert stored is not None and stored.metadata["session_id"] == session
    assert [m.id for m in await manager.search_memory("turn of a long session", limit=1)] == [turn.id]


async def test_an_empty_tag_filter_matches_nothing_on_every_backend(manager: MemoryManager) -> None:
    """PostgreSQL ignored tags=[] and returned every match; SQLite (and the docs) match nothing."""
    await manager.add_memory("a tagged kite", tags=["kites"])
    await manager.add_memory("an untagged kite")
    assert await manager.search_memory("kite", tags=[]) == []
    assert [m.content for m in await manager.search_memory("kite", tags=["kites"])] == ["a tagged kite"]


async def test_greek_capitals_are_found_by_their_own_words(manager: MemoryManager) -> None:
    """PostgreSQL lower-cases "ΣΟΦΟΣ" to "σοφοσ" where the query had "σοφος" (a final sigma)."""
    stored = await manager.add_memory("ΣΟΦΟΣ ΑΝΘΡΩΠΟΣ")
    assert [m.id for m in await manager.search_memory("ΣΟΦΟΣ ΑΝΘΡΩΠΟΣ")] == [stored.id]
    assert [m.id for m in await manager.search_memory("σοφος")] == [stored.id]


async def test_an_access_count_beyond_32_bits_is_refused_on_import(
    manager: MemoryManager, tmp_path: Path
) -> None:
    record = {"id": "m1", "content": "an imported memory", "access_count": 2**31, "tiers": ["long"]}
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    allowed = "access_count: got 2147483648; allowed an integer from 0 to 2147483647"
    with pytest.raises(InvalidMemoryError, match=allowed):
        await manager.import_memories(path)
    record["access_count"] = 2**31 - 1
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    await manager.import_memories(path)
    stored = await manager.get_memory("m1")
    assert stored is not None and stored.access_count == 2**31 - 1


class SignedZeroEmbedder(HashingEmbedder):
    """Vectors whose zero components are negative zeros (as some models' outputs are)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = super().embed(texts)
        vectors[vectors == 0] = -0.0
        return vectors


async def test_negative_zeros_of_vectors_survive_a_migration_to_postgres(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """PostgreSQL read a vector's -0 back as +0, so the vectors of such a store never verified."""
    source = tmp_path / "source"
    config = ContextManagerConfig(storage_path=source)
    async with MemoryManager(config, embedder=SignedZeroEmbedder(dimension=16)) as memory:
        await memory.add_memory("kites over the hill")
    report = await migrate_storage(str(source), postgres_dsn)
    assert report.vectors_copied == 1 and report.ok, report.to_dict()
    back = await migrate_storage(postgres_dsn, str(tmp_path / "back"))
    assert back.ok, back.to_dict()
    pg = ContextManagerConfig(
        storage_path=tmp_path / "pg", memory_backend="postgres", postgres_dsn=postgres_dsn
    )
    async with MemoryManager(pg, embedder=SignedZeroEmbedder(dimension=16)) as memory:
        vectors = await memory._require("vectors").vectors_of([m.id for m in await memory.recent_memories()])
    [vector] = vectors.values()
    assert np.signbit(vector[vector == 0]).all()


async def test_a_statement_over_the_servers_limits_is_not_retried(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ProgramLimitExceeded is an OperationalError, which the pool retried five times (about 4 s) as a lost
    connection; the statement fails again every time."""
    from context_manager.core.memory.postgres.database import PostgresDatabase

    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    statement = "SELECT to_tsvector('simple', string_agg(md5(i::text), ' ')) FROM generate_series(1, 40000) i"
    try:
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING), pytest.raises(StorageError, match="too long for tsvector"):
            await database.run(lambda connection: connection.execute(statement), "a huge tsvector")
        assert "retrying" not in caplog.text
        assert time.perf_counter() - started < 3.0
    finally:
        await database.close()
