"""Property-based tests: any query is plain text (invariant: never raises), users never see each
other's memories (invariant 7), rejected calls change nothing (invariant 5)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.manager import ALL_USERS, MemoryManager

FTS_SYNTAX = [
    '"',
    "*",
    "NEAR(",
    "NEAR(a b, 3)",
    "AND",
    "OR",
    "NOT",
    "-",
    ":",
    "^",
    "(",
    ")",
    "((",
    "content:",
    "owner : x",
    "{content tags}: x",
    "'; DROP TABLE memories; --",
    "1 OR 1=1",
    "\x00",
    "\ud800",
    "🙂",
    "é",
]


@pytest.fixture(scope="module")
def open_manager() -> Iterator[tuple[asyncio.AbstractEventLoop, MemoryManager]]:
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as directory:
        manager = MemoryManager(ContextManagerConfig(storage_path=Path(directory) / "s"))
        loop.run_until_complete(manager.initialize())
        for text in ["alpha beta", "NEAR and OR words", 'quote " inside', "drop table memories"]:
            loop.run_until_complete(manager.add_memory(text, importance=0.9))
            loop.run_until_complete(manager.add_memory(text, tier="medium"))
        try:
            yield loop, manager
        finally:
            loop.run_until_complete(manager.close())
            loop.close()


query_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(FTS_SYNTAX) | st.text(max_size=5), max_size=12).map(" ".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=query_text, limit=st.integers(0, 30))
def test_any_query_is_plain_text_and_never_raises(
    open_manager: tuple[asyncio.AbstractEventLoop, MemoryManager], query: str, limit: int
) -> None:
    loop, manager = open_manager
    results = loop.run_until_complete(manager.search_memory(query, limit))
    assert len(results) <= limit
    assert len({m.id for m in results}) == len(results)
    try:
        tags = loop.run_until_complete(manager.search_by_tags([query], limit=5))
    except InvalidMemoryError:  # a tag must be non-empty, valid Unicode, without NUL
        assert not query.strip() or "\x00" in query or any(0xD800 <= ord(c) <= 0xDFFF for c in query)
    else:
        assert isinstance(tags, list)


def test_every_syntax_fragment_is_searchable(
    open_manager: tuple[asyncio.AbstractEventLoop, MemoryManager],
) -> None:
    loop, manager = open_manager
    for fragment in FTS_SYNTAX:
        loop.run_until_complete(manager.search_memory(fragment))
    found = loop.run_until_complete(manager.search_memory('NEAR( "and" OR'))
    assert found and found[0].content == "NEAR and OR words"


operation = st.tuples(
    st.sampled_from(["add", "search", "tags", "stats", "consolidate"]),
    st.sampled_from(["alice", "bob"]),
    st.sampled_from(["apple", "banana", "cherry", "apple banana"]),
    st.sampled_from([None, "short", "medium", "long"]),
)


@settings(max_examples=25, deadline=None)
@given(operations=st.lists(operation, min_size=1, max_size=25))
def test_users_never_see_each_other(operations: list[tuple[str, str, str, str | None]]) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            config = ContextManagerConfig(
                storage_path=Path(directory), short_term_memory_size=3, medium_term_memory_size=3
            )
            owned: dict[str, set[str]] = {"alice": set(), "bob": set()}
            async with MemoryManager(config) as manager:
                for kind, user, word, tier in operations:
                    if kind == "add":
                        memory = await manager.add_memory(
                            f"{word} from {user}", user_id=user, tier=tier, tags=[word]
                        )
                        owned[user].add(memory.id)
                    elif kind == "search":
                        results = await manager.search_memory(f"{word} alice bob from", 50, user_id=user)
                        assert {m.id for m in results} <= owned[user]
                        assert all(m.user_id == user for m in results)
                    elif kind == "tags":
                        results = await manager.search_by_tags(word.split(), limit=50, user_id=user)
                        assert {m.id for m in results} <= owned[user]
                    elif kind == "stats":
                        stats = await manager.get_memory_stats(user_id=user)
                        assert stats["total_memories"] == len(owned[user])
                    else:
                        report = await manager.consolidate_memories(0.5, user_id=user)
                        for group in report["groups"]:
                            assert set(group["merged_from"]) <= owned[user]
                        owned[user].update(report["merged_ids"])
                        for merged_id in report["merged_ids"]:
                            merged = await manager.get_memory(merged_id)
                            assert merged is not None and merged.user_id == user
                assert await manager.search_memory("apple banana cherry") == []  # default namespace is empty
                everyone = await manager.search_memory("apple banana cherry", 500, user_id=ALL_USERS)
                visible = {m.id for m in everyone}
                assert visible <= owned["alice"] | owned["bob"]

    asyncio.run(run())


@settings(max_examples=40, deadline=None)
@given(
    importance=st.one_of(st.floats(allow_nan=True), st.integers(), st.booleans(), st.text(max_size=3)),
    tags=st.one_of(st.none(), st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=3)),
)
def test_rejected_add_changes_nothing(importance: object, tags: object) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            async with MemoryManager(ContextManagerConfig(storage_path=Path(directory))) as manager:
                await manager.add_memory("anchor", importance=0.9)
                before = sorted(m.to_dict()["id"] + m.tier.value for m in await manager.stored_copies())
                log_size = (Path(directory) / "memories.jsonl").stat().st_size
                try:
                    await manager.add_memory("candidate", importance=importance, tags=tags)  # type: ignore[arg-type]
                except InvalidMemoryError:
                    after = sorted(m.to_dict()["id"] + m.tier.value for m in await manager.stored_copies())
                    assert after == before
                    assert (Path(directory) / "memories.jsonl").stat().st_size == log_size

    asyncio.run(run())
