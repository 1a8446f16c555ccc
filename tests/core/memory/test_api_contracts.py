"""Contracts of the memory API an experienced user of mem0 or Letta relies on: an import never replaces
another user's memory, numbers computed with numpy are taken where Python numbers are, and a failed
update leaves the memory as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.backend import MemoryBackend
from context_manager.core.memory.local_backend import LocalBackend
from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from context_manager.core.memory.models import MemoryTier
from tests.core.memory.conftest import FakeClock


async def test_import_refuses_a_line_whose_id_holds_another_users_memory(
    manager: MemoryManager, tmp_path: Path
) -> None:
    """Merging an export of another store (or another tenant's backup) whose ids clash with this store's:
    the import replaced alice's memory with bob's without a word (``replaced: 1``), and alice's memory was
    gone. ``add_memory(memory_id=...)`` refuses another user's id; so does the import now, importing
    nothing."""
    alice = await manager.add_memory("alice likes coffee", user_id="alice", memory_id="pref-1")
    await manager.add_memory("a note of the shared namespace", memory_id="note-1")
    path = tmp_path / "bob.jsonl"
    lines = [
        {"id": "pref-2", "content": "bob likes green tea", "user_id": "bob", "tiers": ["short"]},
        {"id": "pref-1", "content": "bob likes tea", "user_id": "bob", "tiers": ["short", "long"]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = sorted((m.id, m.tier.value, m.content, m.user_id) for m in await manager.stored_copies())
    with pytest.raises(InvalidMemoryError, match=r"bob\.jsonl:2.*'pref-1'.*another user") as raised:
        await manager.import_memories(path)
    assert "alice" not in str(raised.value)  # whose memory it is stays private
    after = sorted((m.id, m.tier.value, m.content, m.user_id) for m in await manager.stored_copies())
    assert after == before
    assert (await manager.get_memory("pref-1")) == alice
    assert await manager.search_memory("tea", user_id=ALL_USERS) == []

    # the shared namespace is an owner too: a user's line does not replace its memory either
    path.write_text(json.dumps({"id": "note-1", "content": "bob's note", "user_id": "bob"}) + "\n")
    with pytest.raises(InvalidMemoryError, match="another user"):
        await manager.import_memories(path)

    # the same owner's memory is restored from its backup, as before
    path.write_text(json.dumps({"id": "pref-1", "content": "alice likes tea now", "user_id": "alice"}) + "\n")
    report = await manager.import_memories(path)
    assert (report["imported"], report["replaced"]) == (1, 1)
    restored = await manager.get_memory("pref-1")
    assert restored is not None and restored.content == "alice likes tea now"


async def test_numbers_computed_with_numpy_are_taken_as_python_numbers(manager: MemoryManager) -> None:
    """A score computed with numpy (``np.float32``, ``np.int64``, ``np.bool_``) was refused in metadata
    ("Object of type float32 is not JSON serializable") and as an importance, a limit or a time, where the
    same number as a Python float or int (or ``np.float64``, a float subclass) was taken. They are taken as
    the Python number they hold (``.item()``), as json-serialising libraries do; a stored memory holds plain
    Python values. Arrays become lists, as tool results' do."""
    numpy = pytest.importorskip("numpy")
    metadata = {
        "score": numpy.float32(0.25),
        "rank": numpy.int64(3),
        "relevant": numpy.bool_(True),
        "nested": {"counts": [numpy.uint8(7), numpy.int32(-2)], "mean": numpy.float16(0.5)},
        "histogram": numpy.array([[1, 2], [3, 4]]),
    }
    memory = await manager.add_memory(
        "the quarterly churn model flagged the Lisbon account",
        importance=numpy.float32(0.75),
        metadata=metadata,
        tags=[numpy.str_("churn")],
    )
    expected = {
        "score": 0.25,
        "rank": 3,
        "relevant": True,
        "nested": {"counts": [7, -2], "mean": 0.5},
        "histogram": [[1, 2], [3, 4]],
    }
    stored = await manager.get_memory(memory.id)
    assert stored is not None
    for held in (memory, stored):
        assert held.metadata == expected and held.importance == 0.75 and held.tags == ["churn"]
        assert type(held.metadata["rank"]) is int and type(held.metadata["relevant"]) is bool
        assert type(held.importance) is float and type(held.tags[0]) is str
    found = await manager.search_memory(
        "churn model", limit=numpy.int64(5), min_importance=numpy.float32(0.5), since=numpy.int64(0)
    )
    assert [m.id for m in found] == [memory.id]
    assert [m.id for m in await manager.search_by_tags(["churn"], limit=numpy.int32(2))] == [memory.id]
    updated = await manager.update_memory(
        memory.id, importance=numpy.float64(0.5), metadata={"score": numpy.float32(0.5)}
    )
    assert updated.importance == 0.5 and updated.metadata == {"score": 0.5}


async def test_what_numpy_cannot_store_is_refused_with_what_to_do(manager: MemoryManager) -> None:
    """A NaN stays refused however it is typed (in an array too), a numpy type without a JSON value is
    refused, and a numpy bool is no importance or limit (as a Python bool is not); nothing is stored."""
    numpy = pytest.importorskip("numpy")
    with pytest.raises(InvalidMemoryError, match="metadata"):
        await manager.add_memory("a note", metadata={"score": numpy.float32("nan")})
    with pytest.raises(InvalidMemoryError, match="metadata"):
        await manager.add_memory("a note", metadata={"vector": numpy.array([0.5, numpy.nan])})
    with pytest.raises(InvalidMemoryError, match="metadata"):
        await manager.add_memory("a note", metadata={"when": numpy.datetime64("2026-01-02")})
    with pytest.raises(InvalidMemoryError, match="metadata"):
        await manager.add_memory("a note", metadata={"big": numpy.longdouble(1)})
    with pytest.raises(InvalidMemoryError, match="importance"):
        await manager.add_memory("a note", importance=numpy.bool_(True))
    with pytest.raises(InvalidMemoryError, match="importance"):
        await manager.add_memory("a note", importance=numpy.float32(1.5))
    with pytest.raises(InvalidMemoryError, match="limit"):
        await manager.search_memory("a note", limit=numpy.bool_(True))
    with pytest.raises(InvalidMemoryError, match="limit"):
        await manager.search_memory("a note", limit=numpy.int64(-1))
    assert await manager.stored_copies() == []


async def test_tags_are_compared_exactly_and_their_words_found_normalised(manager: MemoryManager) -> None:
    """What docs/memory.md says of tags, on both backends: the tag filters compare tags as stored (case,
    width, Unicode form), an empty filter list matches nothing, and the full-text query finds a tag's words
    normalised as text is."""
    full_width = await manager.add_memory("the quarterly plan", tags=["ｒｏａｄｍａｐ"])
    decomposed = await manager.add_memory("the espresso order", tags=["cafe\u0301"])
    assert await manager.search_by_tags(["roadmap"]) == []
    assert await manager.search_by_tags(["Ｒｏａｄｍａｐ"]) == []
    assert await manager.search_by_tags(["caf\u00e9"]) == []
    assert await manager.search_memory("plan", tags=["roadmap"]) == []
    assert [m.id for m in await manager.search_by_tags(["ｒｏａｄｍａｐ"])] == [full_width.id]
    assert [m.id for m in await manager.search_memory("order", tags=["cafe\u0301"])] == [decomposed.id]
    assert await manager.search_memory("plan", tags=[]) == []
    with pytest.raises(InvalidMemoryError, match="non-empty list"):
        await manager.search_by_tags([])
    assert [m.id for m in await manager.search_memory("roadmap")] == [full_width.id]
    assert [m.id for m in await manager.search_memory("caf\u00e9")] == [decomposed.id]


async def test_curation_takes_numpy_numbers_as_the_rest_of_the_memory_api_does(
    manager: MemoryManager, clock: FakeClock
) -> None:
    """Thresholds tuned with numpy (``np.float32(0.8)`` from a grid search, ``np.int64`` days) were
    refused by ``consolidate_memories`` and ``cleanup_old_memories`` ("a number > 0 and <= 1") while an
    importance, a limit or a time typed alike was taken. They are taken as the number they hold; a numpy
    bool or NaN stays refused, as a Python one is."""
    numpy = pytest.importorskip("numpy")
    for text in (
        "The office wifi password changes every Monday",
        "The office wifi password changes every Monday morning",
    ):
        await manager.add_memory(text)
    report = await manager.consolidate_memories(
        similarity_threshold=numpy.float32(0.8), semantic_threshold=numpy.float64(0.9)
    )
    assert report["consolidated_count"] == 2
    clock.advance(3 * 86400)
    removed = await manager.cleanup_old_memories(
        max_age_days=numpy.int64(2), keep_importance=numpy.float32(0.99)
    )
    assert removed["removed_count"] == 3 and removed["max_age_days"] == 2.0
    assert type(removed["max_age_days"]) is float
    for bad in (numpy.bool_(True), numpy.float32("nan"), numpy.float32(1.5)):
        with pytest.raises(InvalidMemoryError, match="similarity_threshold"):
            await manager.consolidate_memories(similarity_threshold=bad)
        with pytest.raises(InvalidMemoryError, match="semantic_threshold"):
            await manager.consolidate_memories(semantic_threshold=bad)
    for bad in (numpy.bool_(True), numpy.float64("inf"), numpy.int64(-1)):
        with pytest.raises(InvalidMemoryError, match="max_age_days"):
            await manager.cleanup_old_memories(max_age_days=bad)


async def test_import_refuses_a_memory_superseded_by_a_memory_it_cannot_restore_it(
    manager: MemoryManager, tmp_path: Path
) -> None:
    """A line whose ``superseded_by`` named no memory of the file or the store (a hand-picked part of an
    export, a backup of a delete cut short) was imported hidden from search, with nothing that could show
    or restore it: no ``undo_consolidation`` (its merged memory does not exist), and the next cleanup
    deleted it whatever its age or importance. The import now refuses it, naming the line and what to do,
    and imports nothing; an original whose merged memory is in the file or already stored (of the same
    user, naming it in ``merged_from``) is imported as before, and its merge can still be undone."""
    for text in (
        "The office wifi password changes every Monday",
        "The office wifi password changes every Monday morning",
    ):
        await manager.add_memory(text, user_id="alice")
    merged_id = (await manager.consolidate_memories(user_id="alice", similarity_threshold=0.8))["merged_ids"][
        0
    ]
    merged = await manager.get_memory(merged_id)
    assert merged is not None
    export = tmp_path / "alice.jsonl"
    await manager.export_memories(export, user_id="alice")
    lines = {json.loads(line)["id"]: json.loads(line) for line in export.read_text().splitlines()}
    original = lines[merged.merged_from[0]]
    before = sorted((m.id, m.tier.value, m.superseded_by) for m in await manager.stored_copies())
    path = tmp_path / "part.jsonl"

    async def refused(line: dict[str, object], why: str) -> None:
        path.write_text(json.dumps({"id": "new-1", "content": "a new note"}) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(InvalidMemoryError, match=rf"part\.jsonl:2.*superseded_by.*{why}"):
            await manager.import_memories(path)
        assert sorted((m.id, m.tier.value, m.superseded_by) for m in await manager.stored_copies()) == before

    await refused({**original, "id": "lost-1", "superseded_by": "gone"}, "'gone' is no memory")
    # a stored memory that does not name it in merged_from, or another user's, cannot restore it either
    await refused({**original, "id": "lost-2"}, "does not name it in merged_from")
    await refused({**original, "user_id": "bob", "id": "lost-3"}, "another user's")
    assert await manager.get_memory("new-1") is None

    # the original alone (its merged memory is stored): imported, still hidden, and the undo restores it
    path.write_text(json.dumps(original) + "\n")
    assert (await manager.import_memories(path))["replaced"] == 1
    # the whole export, the merged memory with its originals: imported as it was written
    assert (await manager.import_memories(export))["imported"] == 3
    assert sorted((m.id, m.tier.value, m.superseded_by) for m in await manager.stored_copies()) == before
    undone = await manager.undo_consolidation(merged_id)
    assert sorted(undone["restored"]) == sorted(merged.merged_from)


class _OwnBackend:
    """A backend of one's own, here built on the embedded one, without the optional ``known_count``."""

    def __init__(self, inner: LocalBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "known_count":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_a_backend_without_the_optional_known_count_is_a_memory_backend(
    sqlite_config: ContextManagerConfig,
) -> None:
    """``known_count`` is documented as optional (docs/memory.md), but it was declared in the
    ``MemoryBackend`` protocol itself: a backend without it was no ``MemoryBackend`` any more (nor to a type
    checker). Without it, the manager asks ``count()`` after each write, and still moves an overflow."""

    class OwnManager(MemoryManager):
        def _create_backend(self) -> MemoryBackend:
            inner = LocalBackend(self.config.resolved_storage_path, weights=self.ranking.effective_columns)
            return cast(MemoryBackend, _OwnBackend(inner))

    config = sqlite_config.model_copy(update={"short_term_memory_size": 3})
    async with OwnManager(config) as manager:
        backend = manager.backend
        assert isinstance(backend, _OwnBackend)
        assert isinstance(backend, MemoryBackend)
        for n in range(6):
            await manager.add_memory(f"kept by a backend of one's own {n}")
        await manager.flush()
        assert await backend.count(MemoryTier.SHORT) <= 3
        assert await backend.count(MemoryTier.MEDIUM) > 0
