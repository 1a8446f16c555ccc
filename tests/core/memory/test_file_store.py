from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from context_manager.core.errors import StorageCorruptedError
from context_manager.core.memory.file_store import FileStore, JsonlLog
from context_manager.core.memory.in_memory_store import InMemoryStore
from context_manager.core.memory.index import build_match
from context_manager.core.memory.models import Memory, MemoryTier


def memory(identifier: str, content: str) -> Memory:
    return Memory(id=identifier, content=content, created_at=1.0, last_accessed=1.0)


def test_log_replays_puts_moves_touches_and_deletes(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "memories.jsonl")
    assert log.open() == {}
    short = InMemoryStore(MemoryTier.SHORT, journal=log)
    medium = FileStore(log)
    short.put([memory("a", "alpha"), memory("b", "beta"), memory("c", "gamma")])
    moving = short.get("b")
    assert moving is not None
    short.delete(["b"], log=False)
    medium.put([moving])
    short.touch({"a": (5.0, 3)})
    short.delete(["c"])
    log.close()
    assert stat.S_IMODE((tmp_path / "memories.jsonl").stat().st_mode) == 0o600

    replayed = JsonlLog(tmp_path / "memories.jsonl").open()
    assert {key: (m.tier, m.access_count) for key, m in replayed.items()} == {
        "a": (MemoryTier.SHORT, 3),
        "b": (MemoryTier.MEDIUM, 0),
    }


def test_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "memories.jsonl"
    log = JsonlLog(path)
    log.open()
    log.append([{"op": "put", "m": memory("a", "kept").to_dict()}])
    log.close()
    with open(path, "ab") as handle:
        handle.write(b'{"op": "put", "m": {"id": "b", "cont')  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING):
        reopened = JsonlLog(path)
        live = reopened.open()
    assert list(live) == ["a"]
    assert "incomplete record" in caplog.text
    reopened.append([{"op": "put", "m": memory("c", "after").to_dict()}])
    reopened.close()
    assert set(JsonlLog(path).open()) == {"a", "c"}


def test_damaged_middle_line_raises_and_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memories.jsonl"
    good = json.dumps({"op": "put", "m": memory("a", "x").to_dict()})
    path.write_text(good + "\n" + "{not json\n" + good + "\n")
    before = path.read_bytes()
    with pytest.raises(StorageCorruptedError, match="line 2") as caught:
        JsonlLog(path).open()
    assert caught.value.path == path
    assert "backup" in str(caught.value)
    assert path.read_bytes() == before


def test_compaction_keeps_only_live_records(tmp_path: Path) -> None:
    path = tmp_path / "memories.jsonl"
    log = JsonlLog(path)
    log.open()
    store = FileStore(log)
    for round_number in range(5):
        store.put([memory(str(i), f"version {round_number} of {i}") for i in range(50)])
    store.delete([str(i) for i in range(25)])
    before, after = log.compact(store.all())
    assert after < before
    assert log.record_count == 25
    store.put([memory("new", "written after compaction")])
    log.close()
    live = JsonlLog(path).open()
    assert len(live) == 26
    assert live["30"].content == "version 4 of 30"
    assert not path.with_name(path.name + ".compact").exists()


def test_in_memory_index_search_tags_and_rebuild() -> None:
    store = InMemoryStore()
    first = memory("a", "running shoes for marathons")
    first.tags = ["sport"]
    store.put([first, memory("b", "cooking pasta")])
    assert [m.id for m, _ in store.search(build_match(["run"], None), 5)] == ["a"]
    assert [m.id for m in store.with_tags(["sport"])] == ["a"]
    store.rebuild_index()
    assert [m.id for m, _ in store.search(build_match(["pasta"], None), 5)] == ["b"]
    assert store.check_index() == "ok"
    store.delete(["a"])
    assert store.with_tags(["sport"]) == []
    assert store.search(build_match(["run"], None), 5) == []


def test_a_journal_line_of_megabytes_decodes_by_slices_as_in_one_call(tmp_path: Path) -> None:
    """Replay decodes the text of a memory of megabytes in slices (``decode_line``): escapes, quotes,
    backslashes and characters of several bytes across a slice's end read back as one ``json.loads``
    reads them, and so do the lines it must decode whole (another layout, the key twice, damage)."""

    from context_manager.core.memory.file_store import _DECODE_BYTES, decode_line, record_pieces

    tricky = ['"', "\\", '\\"', "\n", "\x01", "é", "東京", "😀", "🇫🇷", '\\\\"', "\u2028"]
    records = []
    for shift in range(0, 14, 3):
        for text in tricky:
            content = (
                "a" * (_DECODE_BYTES - 40 - shift) + text * 7 + "b" * 50 + text * 3 + "z" * _DECODE_BYTES
            )
            for metadata in ({}, {"content": "x"}, {"note": 'v"\\'}):
                memory = Memory(id="m1", content=content + text, tags=["t"], metadata=metadata)
                records.append({"op": "put", "m": memory.to_dict()})
    for record in records:
        line = b"".join(record_pieces(record))
        assert decode_line(line) == json.loads(line) == record
    content = "x" * (_DECODE_BYTES - 3) + "😀" * 10  # escaped surrogate pairs, written by another tool
    for escaped in (json.dumps(content), json.dumps(content, ensure_ascii=False)):
        line = b'{"op": "put", "m": {"content": ' + escaped.encode() + b', "id": "m"}}\n'
        assert decode_line(line) == json.loads(line)
    start = b'{"op": "put", "m": {"content": "' + b"a" * (2 * _DECODE_BYTES)
    for damaged in (start, start + b'", "id": ', start + b"\\q"):
        with pytest.raises(ValueError):
            decode_line(damaged)
    path = tmp_path / "memories.jsonl"  # replayed from the file: the same memories
    path.write_bytes(b"".join(b"".join(record_pieces(record)) for record in records[:6]))
    replayed = JsonlLog(path).open()
    assert [memory.to_dict() for memory in replayed.values()] == [records[5]["m"]]
