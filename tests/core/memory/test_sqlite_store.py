from __future__ import annotations

import concurrent.futures
import functools
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from context_manager.core.errors import StorageCorruptedError
from context_manager.core.memory.index import build_match, owner_token
from context_manager.core.memory.migrations import MIGRATIONS, applied_migrations
from context_manager.core.memory.models import Memory, MemoryTier
from context_manager.core.memory.sqlite_store import SQLiteStore


def memory(identifier: str, content: str, **fields: object) -> Memory:
    return Memory(id=identifier, content=content, created_at=1.0, last_accessed=1.0, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    opened = SQLiteStore(tmp_path / "memories.sqlite3")
    opened.open()
    yield opened  # type: ignore[misc]
    opened.close()


def test_migrations_are_recorded_in_order_and_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    first = SQLiteStore(path)
    assert first.open() == [name for name, _ in MIGRATIONS]
    first.close()
    second = SQLiteStore(path)
    assert second.open() == []
    second.close()
    with sqlite3.connect(path) as connection:
        assert applied_migrations(connection) == [name for name, _ in MIGRATIONS]
        assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_file_is_private(tmp_path: Path, store: SQLiteStore) -> None:
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_put_search_update_delete(store: SQLiteStore) -> None:
    store.put([memory("a", "the quick brown fox jumps", tags=["animal"]), memory("b", "a lazy dog sleeps")])
    hits = store.search(build_match(["jumping"], owner_token(None)), 10)  # porter stemming
    assert [(m.id, m.tier) for m, _ in hits] == [("a", MemoryTier.LONG)]
    assert hits[0][1] > 0
    store.put([memory("a", "a cat purrs", tags=["pet"])])  # replace
    assert store.search(build_match(["fox"], None), 10) == []
    assert [m.id for m in store.with_tags(["pet"])] == ["a"]
    assert store.with_tags(["animal"]) == []
    assert store.delete(["a", "missing"]) == ["a"]
    assert store.get("a") is None
    assert store.count() == 1


def test_owner_token_isolates_users(store: SQLiteStore) -> None:
    store.put([memory("a", "shared words", user_id="alice"), memory("b", "shared words", user_id="bob")])
    assert [m.id for m, _ in store.search(build_match(["shared"], owner_token("alice")), 10)] == ["a"]
    assert {m.id for m, _ in store.search(build_match(["shared"], None), 10)} == {"a", "b"}


def _index_rows(store: SQLiteStore) -> int:
    """Rows of the FTS5 index's segment table: a re-indexed memory adds to them, until a merge."""
    with sqlite3.connect(store.path) as connection:
        return int(connection.execute("SELECT count(*) FROM memories_fts_data").fetchone()[0])


def test_a_put_that_changes_nothing_indexed_does_not_index_again(store: SQLiteStore) -> None:
    """Marking a merge's originals (or a new importance) deleted and re-inserted each one's index row:
    its whole text read and tokenised twice, most of a consolidation's writing time for long memories.
    What is indexed is left alone now; a change to any of it is indexed as before."""
    store.put([memory("a", "the quick brown fox jumps", tags=["a b"])])
    before = _index_rows(store)
    store.put([memory("a", "the quick brown fox jumps", tags=["a b"], superseded_by="m", importance=0.9)])
    assert _index_rows(store) == before
    stored = store.get("a")
    assert stored is not None and stored.superseded_by == "m" and stored.importance == 0.9
    store.put([memory("a", "the quick brown fox jumps", tags=["a b"])])  # restored (an undo)
    assert [m.id for m, _ in store.search(build_match(["fox"], None), 10)] == ["a"]
    # the same indexed text of tags, other tags: the tag table follows
    store.put([memory("a", "the quick brown fox jumps", tags=["a", "b"])])
    assert [m.id for m in store.with_tags(["b"])] == ["a"]
    # another owner, another session date, other text: each indexed
    store.put([memory("a", "the quick brown fox jumps", tags=["a", "b"], user_id="alice")])
    assert [m.id for m, _ in store.search(build_match(["fox"], owner_token("alice")), 10)] == ["a"]
    assert store.search(build_match(["fox"], owner_token(None)), 10) == []
    dated = memory("a", "the quick brown fox jumps", user_id="alice", metadata={"session_date": "2026-01-02"})
    store.put([dated])
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("SELECT date FROM memories_fts").fetchall() == [("2026-01-02",)]
    store.put([memory("a", "a lazy dog sleeps", user_id="alice")])
    assert store.search(build_match(["fox"], None), 10) == []
    assert [m.id for m, _ in store.search(build_match(["dog"], None), 10)] == ["a"]


def test_superseded_memories_take_no_place_of_the_limit(store: SQLiteStore) -> None:
    """Superseded originals rank first here; an unfiltered search still returns ``limit`` visible ones."""
    store.put([memory(f"old{i}", "apple apple apple apple", superseded_by="merged") for i in range(50)])
    store.put([memory(f"new{i}", f"apple and pear number {i} of a longer text") for i in range(5)])
    visible = {f"new{i}" for i in range(5)}
    match = build_match(["apple"], None)
    found = [m.id for m, _ in store.search(match, 3)]
    assert len(found) == 3 and set(found) <= visible
    assert {m.id for m, _ in store.search(match, 100)} == visible
    parts = [(build_match(["apple"], None), 1.0), (build_match(["pear"], None), 0.5)]
    found = [m.id for m, _ in store.search_weighted(parts, 3)]
    assert len(found) == 3 and set(found) <= visible
    # un-superseded again (an undone consolidation): found again, and counted in the same statement
    store.put([memory(f"old{i}", "apple apple apple apple") for i in range(50)])
    assert {m.id for m, _ in store.search(match, 3)} <= {f"old{i}" for i in range(50)}


def _search_steps(store: SQLiteStore, search: Callable[[], object]) -> int:
    """SQLite VM instructions a search runs on this thread's read connection (its nested FTS5 ones too)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with store._read() as db:  # this thread's read connection: the one the search below uses
        db.set_progress_handler(count, 1)
    try:
        search()
    finally:
        with store._read() as db:
            db.set_progress_handler(None, 1)
    return steps


def test_search_does_not_visit_superseded_memories_that_do_not_match(tmp_path: Path) -> None:
    """A search's work does not grow with the superseded originals it does not return.

    Consolidation leaves its originals as rows (hidden, until cleanup); a search used to count every one
    of them (to take enough FTS5 matches) and join each superseded match with its row: with thousands
    of merged memories every search paid for all of them.
    """
    stores = []
    for name, superseded in (("plain", 0), ("merged", 3000)):
        opened = SQLiteStore(tmp_path / f"{name}.sqlite3")
        opened.open()
        opened.put([memory(f"live{i}", f"apple and pear number {i} of a text") for i in range(30)])
        opened.put([memory(f"old{i}", f"zeta note {i}", superseded_by="merged") for i in range(superseded)])
        stores.append(opened)
    try:
        match = build_match(["apple"], None)
        parts = [(build_match(["apple"], None), 1.0), (build_match(["pear"], None), 0.5)]
        for search in (
            lambda s: s.search(match, 5),
            lambda s: s.search_weighted(parts, 5),
        ):
            plain, merged = (_search_steps(s, functools.partial(search, s)) for s in stores)
            assert [m.id for m, _ in search(stores[0])] == [m.id for m, _ in search(stores[1])]
            assert merged <= plain * 1.1 + 50, (plain, merged)
    finally:
        for opened in stores:
            opened.close()


def test_search_joins_no_more_rows_than_it_returns_past_the_superseded(tmp_path: Path) -> None:
    """The superseded matches that rank first are skipped; the rest of the matches are not read."""
    opened = SQLiteStore(tmp_path / "m.sqlite3")
    opened.open()
    try:
        opened.put([memory(f"live{i}", f"apple and pear number {i} of a longer text") for i in range(3000)])
        opened.put([memory(f"old{i}", "apple apple apple", superseded_by="merged") for i in range(5)])
        match = build_match(["apple"], None)
        few = _search_steps(opened, lambda: opened.search(match, 5))
        found = opened.search(match, 5)
        assert len(found) == 5 and all(m.id.startswith("live") for m, _ in found)
        # scoring 3000 FTS5 matches is the same either way; reading 3000 rows instead of 5 is not
        many = _search_steps(opened, lambda: opened.search(match, 3000))
        assert many - few > 10 * 3000, (few, many)
        parts = [(build_match(["apple"], None), 1.0), (build_match(["pear"], None), 0.5)]
        few = _search_steps(opened, lambda: opened.search_weighted(parts, 5))
        weighted = opened.search_weighted(parts, 5)
        assert len(weighted) == 5 and all(m.id.startswith("live") for m, _ in weighted)
        many = _search_steps(opened, lambda: opened.search_weighted(parts, 3000))
        assert many - few > 10 * 3000, (few, many)
    finally:
        opened.close()


def test_weighted_search_returns_the_best_visible_memories_best_first(store: SQLiteStore) -> None:
    """The top ``limit`` of every visible match, in score order, whatever the superseded ones among them."""
    store.put([memory(f"live{i}", "apple pear " + "filler " * (i % 37) + f"n{i}") for i in range(300)])
    store.put(
        [memory(f"old{i}", "apple apple pear " + "x " * i, superseded_by="m") for i in range(0, 300, 3)]
    )
    parts = [(build_match(["apple"], None), 1.0), (build_match(["pear"], None), 0.4)]
    everything = store.search_weighted(parts, 1000)
    assert len(everything) == 300 and all(m.superseded_by is None for m, _ in everything)
    scores = [score for _, score in everything]
    assert scores == sorted(scores, reverse=True)
    for limit in (1, 7, 31, 32, 33, 100):
        assert store.search_weighted(parts, limit) == everything[:limit]


def test_find_turns(store: SQLiteStore) -> None:
    store.put(
        [
            memory("t1", "hello", metadata={"session_id": "s", "turn_index": 1}),
            memory("t2", "world", metadata={"session_id": "s", "turn_index": 2}, user_id="x"),
        ]
    )
    assert [m.id for m in store.find_turns([(None, "s", 1), (None, "s", 2)])] == ["t1"]


def test_rebuild_index_and_integrity(store: SQLiteStore) -> None:
    store.put([memory(str(i), f"note number {i}") for i in range(20)])
    assert store.rebuild_index() == 20
    assert store.check_integrity() == {"sqlite": "ok", "fts": "ok"}
    assert store.check_integrity(quick=True) == {"sqlite": "ok", "fts": "ok"}
    assert len(store.search(build_match(["note"], None), 100)) == 20


def test_quick_check_uses_its_own_connection_and_finds_a_damaged_index(store: SQLiteStore) -> None:
    """Issue 18.10: the quick check reads through a separate read-only connection, so it runs while
    another thread holds the store's lock (a long write), and still finds missing index pages."""
    store.put([memory(str(i), f"invoice number {i} for the payment run") for i in range(200)])
    held, release = threading.Event(), threading.Event()

    def writer_holding_the_lock() -> None:
        with store.held_if_free() as acquired:
            assert acquired
            held.set()
            release.wait(10)

    writer = threading.Thread(target=writer_holding_the_lock)
    writer.start()
    try:
        assert held.wait(5)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            result = pool.submit(store.check_integrity, quick=True).result(timeout=5)
        assert result == {"sqlite": "ok", "fts": "ok"}
    finally:
        release.set()
        writer.join()
    with sqlite3.connect(store.path) as damage:  # lose the index's segment pages, rows intact
        damage.execute("DELETE FROM memories_fts_data WHERE id > 1")
    quick = store.check_integrity(quick=True)
    assert quick["sqlite"] == "ok" and "malformed" in quick["fts"]
    assert store.check_integrity()["fts"] != "ok"  # the full check agrees


def test_garbage_file_is_reported_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memories.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageCorruptedError, match="not modified") as caught:
        SQLiteStore(path).open()
    assert caught.value.path == path
    assert path.read_bytes() == before


def test_damaged_pages_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "memories.sqlite3"
    store = SQLiteStore(path)
    store.open()
    store.put([memory(str(i), "words " * 200) for i in range(200)])
    store.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 2, len(data), 4096):  # scribble over every page header but the first two
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    reopened = SQLiteStore(path)
    with pytest.raises(StorageCorruptedError, match=str(path)):
        reopened.open()
        reopened.count()
        list(reopened.all())
    reopened.close()
    assert path.read_bytes() == before


def test_weighted_search_is_the_sum_of_per_word_bm25(store: SQLiteStore) -> None:
    store.put(
        [memory(str(i), f"note {i} " + ("apple " * (i % 3)) + ("pear " * (i % 5))) for i in range(40)]
        + [memory("x", "apple pear plum", tags=["fruit"])]
    )
    owner = owner_token(None)
    plain = {m.id: score for m, score in store.search(build_match(["apple", "pear"], owner), 100)}
    parts = [(build_match(["apple"], owner), 1.0), (build_match(["pear"], owner), 1.0)]
    summed = {m.id: score for m, score in store.search_weighted(parts, 100)}
    assert summed.keys() == plain.keys() and len(plain) > 20
    assert all(abs(summed[key] - plain[key]) < 1e-9 * max(1.0, plain[key]) for key in plain)
    # a factor scales one word's share only: doubling "pear" lifts the rows that contain it
    pear_only = {m.id: s for m, s in store.search(build_match(["pear"], owner), 100)}
    doubled = {m.id: s for m, s in store.search_weighted([parts[0], (parts[1][0], 2.0)], 100)}
    assert all(abs(doubled[key] - plain[key] - pear_only.get(key, 0.0)) < 1e-9 for key in plain)
    ranked = store.search_weighted(parts, 3)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    assert store.search_weighted([], 10) == []


def test_frequency_cache_reuses_counts_until_one_percent_of_rows_change() -> None:
    from context_manager.core.memory.index import FrequencyCache

    calls: list[list[str]] = []
    truth = {"common": 600, "rare": 2}

    def count(terms: list[str]) -> dict[str, int]:
        calls.append(terms)
        return {term: truth[term] for term in terms if term in truth}

    cache = FrequencyCache(max_terms=3)
    assert cache.lookup(["common", "rare", "absent"], 1000, count) == {"common": 600, "rare": 2}
    assert cache.lookup(["common", "absent"], 1000, count) == {"common": 600}
    assert calls == [["common", "rare", "absent"]]  # absent words are cached too
    cache.changed(10)  # 1 % of 1,000 rows: still reused
    truth["common"] = 610
    assert cache.lookup(["common"], 1000, count) == {"common": 600}
    cache.changed(1)  # past 1 %: recounted
    assert cache.lookup(["common"], 1000, count) == {"common": 610}
    cache.changed(1)  # a small index (under 100 rows) recounts after any write
    assert cache.lookup(["rare"], 50, count) == {"rare": 2} and calls[-1] == ["rare"]
    cache.lookup(["a", "b", "c"], 50, count)  # over max_terms: emptied, then filled again
    assert cache.lookup(["rare"], 50, count) == {"rare": 2} and calls[-1] == ["rare"]


def test_document_frequencies_follow_writes(store: SQLiteStore) -> None:
    store.put([memory(str(i), "zebra crossing" if i % 2 else "plain text") for i in range(20)])
    assert store.document_frequencies(["zebra", "plain", "nothing"]) == {"zebra": 10, "plain": 10}
    store.put([memory("z", "zebra again")])
    assert store.document_frequencies(["zebra"]) == {"zebra": 11}
    store.delete(["1", "3"])
    assert store.document_frequencies(["zebra"]) == {"zebra": 9}


def test_reopening_with_the_same_column_weights_writes_nothing_and_other_weights_are_applied(
    tmp_path: Path,
) -> None:
    """Every open wrote the BM25 column weights again: a write transaction per resume (and a WAL to
    checkpoint at close) for a store nobody changed. Weights that changed are still applied."""
    from context_manager.core.memory.index import ColumnWeights
    from context_manager.core.memory.sqlite_store import FTS_TABLE

    path = tmp_path / "memories.sqlite3"
    first = SQLiteStore(path)
    first.open()
    first.put([memory("a", "alpha")])
    first.close()
    watcher = sqlite3.connect(path)
    try:
        before = watcher.execute("PRAGMA data_version").fetchone()[0]
        same = SQLiteStore(path)
        same.open()
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == before  # nothing committed
        assert [m.id for m in same.get_many(["a"]).values()] == ["a"]
        same.close()
        other = ColumnWeights(content=2.0)
        changed = SQLiteStore(path, weights=other)
        changed.open()
        changed.close()
        stored = watcher.execute(f"SELECT v FROM {FTS_TABLE}_config WHERE k = 'rank'").fetchone()[0]
        assert stored == other.rank_expression()
    finally:
        watcher.close()
