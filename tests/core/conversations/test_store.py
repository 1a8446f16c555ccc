"""The conversation stores: append-only records with optimistic concurrency, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from context_manager.core.conversations.store import ConversationRecord
from context_manager.core.errors import ContextManagerError, ConversationConflictError

from .conftest import StoreFactory


def records(*texts: str) -> list[ConversationRecord]:
    return [ConversationRecord("add", {"message": {"text": text}}) for text in texts]


async def test_append_then_load_returns_every_record_in_order(open_store: StoreFactory) -> None:
    store = await open_store()
    assert (await store.load("c1")).version == 0
    assert await store.append("c1", 0, records("a", "b"), writer="w") == 2
    assert await store.append("c1", 2, records("c"), writer="w") == 3
    loaded = await store.load("c1")
    assert loaded.version == 3
    assert [version for version, _ in loaded.records] == [1, 2, 3]
    assert [record.payload["message"]["text"] for _, record in loaded.records] == ["a", "b", "c"]
    assert (await store.load("other")).records == []


async def test_version_of_reads_the_version_and_generation(open_store: StoreFactory) -> None:
    first, second = await open_store(), await open_store()
    assert await first.version_of("c1") is None
    await first.append("c1", 0, records("a", "b"), writer="w", created_at=1000.25)
    assert await second.version_of("c1") == (2, 1000.25)
    await second.append("c1", 2, records("c"), writer="other", created_at=1000.25)
    assert await first.version_of("c1") == (3, 1000.25)
    assert await first.delete("c1")
    assert await second.version_of("c1") is None


async def test_a_writer_of_a_deleted_conversation_is_refused_when_it_is_created_again(
    open_store: StoreFactory,
) -> None:
    """Deleted, then created again by another writer up to the same version: the version alone matched,
    so the first writer's change went on top of the new conversation (and its snapshot and watermark
    could land there too)."""
    first, second = await open_store(), await open_store()
    await first.append("c1", 0, records("a"), writer="first", created_at=1000.0)
    generation = (await first.load("c1")).created_at
    assert generation == 1000.0
    assert await second.delete("c1")
    await second.append("c1", 0, records("b"), writer="second", created_at=2000.0)
    with pytest.raises(ConversationConflictError):
        await first.append("c1", 1, records("from first"), writer="first", created_at=generation)
    await first.save_snapshot("c1", 1, {"stale": True}, created_at=generation)
    await first.mark_indexed("c1", 1, created_at=generation)
    loaded = await second.load("c1")
    assert [record.payload["message"]["text"] for _, record in loaded.records] == ["b"]
    assert (loaded.created_at, loaded.snapshot, loaded.indexed_version) == (2000.0, None, 0)
    # the same generation goes on as before
    assert await second.append("c1", 1, records("c"), writer="second", created_at=2000.0) == 2


async def test_a_stale_writer_is_refused_and_stores_nothing(open_store: StoreFactory) -> None:
    first, second = await open_store(), await open_store()  # two processes on one storage
    await first.append("c1", 0, records("a"), writer="first")
    await second.append("c1", 1, records("from second"), writer="second")
    with pytest.raises(ConversationConflictError) as caught:
        await first.append("c1", 1, records("from first"), writer="first")
    error = caught.value
    assert isinstance(error, ContextManagerError) and isinstance(error, RuntimeError)
    assert (error.expected_version, error.current_version) == (1, 2)
    assert "reload" in str(error)
    loaded = await first.load("c1")
    assert [record.payload["message"]["text"] for _, record in loaded.records] == ["a", "from second"]


async def test_racing_writers_exactly_one_wins_each_version(open_store: StoreFactory) -> None:
    stores = [await open_store() for _ in range(4)]
    won: list[str] = []

    async def writer(number: int) -> None:
        store = stores[number]
        for _ in range(30):
            loaded = await store.load("race")
            try:
                await store.append("race", loaded.version, records(f"w{number}"), writer=f"w{number}")
            except ConversationConflictError:
                continue
            won.append(f"w{number}")

    await asyncio.gather(*(writer(number) for number in range(4)))
    loaded = await stores[0].load("race")
    stored = [record.payload["message"]["text"] for _, record in loaded.records]
    assert loaded.version == len(stored) == len(won)  # every acknowledged append stored, once
    assert sorted(stored) == sorted(won)
    assert [version for version, _ in loaded.records] == list(range(1, len(stored) + 1))


async def test_new_conversation_race_has_one_creator(open_store: StoreFactory) -> None:
    first, second = await open_store(), await open_store()
    outcomes = await asyncio.gather(
        first.append("fresh", 0, records("one"), writer="one"),
        second.append("fresh", 0, records("two"), writer="two"),
        return_exceptions=True,
    )
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["ConversationConflictError", "int"]
    assert (await first.load("fresh")).version == 1


async def test_snapshot_then_tail(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.append("c1", 0, records("a", "b", "c"), writer="w")
    await store.save_snapshot("c1", 2, {"messages": ["a", "b"]})
    loaded = await store.load("c1")
    assert loaded.snapshot_version == 2 and loaded.snapshot == {"messages": ["a", "b"]}
    assert [version for version, _ in loaded.records] == [3]
    await store.save_snapshot("c1", 1, {"messages": ["older"]})  # never goes back
    assert (await store.load("c1")).snapshot == {"messages": ["a", "b"]}


async def test_indexing_watermark_only_moves_forward(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.append("c1", 0, records("a", "b"), writer="w")
    await store.mark_indexed("c1", 2)
    await store.mark_indexed("c1", 1)
    assert (await store.load("c1")).indexed_version == 2


async def test_list_and_delete(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.append("older", 0, records("a"), writer="w")
    await store.append("newer", 0, records("a", "b"), writer="w")
    listed = await store.list_conversations()
    assert [(info.conversation_id, info.version) for info in listed] == [("newer", 2), ("older", 1)]
    assert listed[0].to_dict()["conversation_id"] == "newer"
    assert await store.delete("older") is True
    assert await store.delete("older") is False
    assert [info.conversation_id for info in await store.list_conversations()] == ["newer"]
    assert (await store.load("older")).version == 0


@contextlib.contextmanager
def clock_behind(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """This process's clock ``seconds`` behind (a host whose clock is wrong, or stepped back by NTP)."""
    real = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real() - seconds)
        yield


async def test_a_writer_whose_clock_is_behind_does_not_move_a_conversation_back(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """updated_at was each writer's own clock: a writer an hour behind (another host, or this one after
    its clock stepped back) moved the conversation it changed an hour back in the listing, so a client
    paging by (updated_at, id) that had listed it on an earlier page listed it again."""
    first, second = await open_store(), await open_store()
    await first.append("c1", 0, records("a"), writer="first")
    await first.append("c2", 0, records("a"), writer="first")
    listed = {info.conversation_id: info for info in await first.list_conversations()}
    earlier = listed["c1"].updated_at
    with clock_behind(monkeypatch, 3600):
        assert await second.append("c1", 1, records("b"), writer="second") == 2
    listed = {info.conversation_id: info for info in await first.list_conversations()}
    assert listed["c1"].version == 2
    assert listed["c1"].updated_at >= earlier


async def test_postgres_orders_changes_by_the_servers_clock_not_the_writers(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts sharing one database disagree on the time: a conversation changed last by a host an hour
    behind was listed an hour down, below conversations changed before it (the first page of recent chats
    missed it). The server's clock dates every change."""
    from context_manager.core.conversations.postgres_store import PostgresConversationStore
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    databases = [PostgresDatabase(postgres_dsn, pool_size=1) for _ in range(2)]
    for database in databases:
        await database.open()
    try:
        await databases[0].migrate(MIGRATIONS)
        right, behind = (PostgresConversationStore(database) for database in databases)
        await right.append("older", 0, records("a"), writer="right host", created_at=1000.0)
        await right.append("changed", 0, records("a"), writer="right host", created_at=1000.0)
        await right.append("newer", 0, records("a"), writer="right host", created_at=1000.0)
        with clock_behind(monkeypatch, 3600):
            await behind.append("created", 0, records("a"), writer="host behind")
            await behind.append("changed", 1, records("b"), writer="host behind", created_at=1000.0)
        started = time.time()
        listed = await right.list_conversations()
        assert [info.conversation_id for info in listed] == ["changed", "created", "newer", "older"]
        assert all(started - 60 < info.updated_at <= started + 60 for info in listed), listed
        assert [info.conversation_id for info in await right.list_conversations(limit=1)] == ["changed"]
        dump = await right.dump("changed")
        assert dump is not None and dump.created_at == 1000.0  # the generation stays the creating writer's
        assert dump.records[-1][4] == dump.updated_at  # the records' times are the server's too
    finally:
        for database in databases:
            await database.close()


@pytest.mark.parametrize("decoder", ["stdlib", "default"])
async def test_loading_gives_the_same_records_with_either_json_decoder(
    open_store: StoreFactory, decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson is used when installed; without it the standard library reads the same values."""
    import json

    from context_manager.core.conversations import codec

    if decoder == "stdlib":
        monkeypatch.setattr(codec, "_loads", json.loads)
    store = await open_store()
    payloads = [{"message": {"text": "é ✓ \u2028", "n": 1.5, "none": None, "list": [1, "x"]}}, {"k": {}}]
    await store.append("c1", 0, [ConversationRecord("add", payload) for payload in payloads], writer="w")
    loaded = await store.load("c1")
    assert [record.payload for _, record in loaded.records] == payloads


def test_long_integers_are_read_exactly_whatever_text_surrounds_them() -> None:
    """A run of 19 or more ASCII digits (a JSON integer orjson cannot hold exactly) is found anywhere,
    right after a multi-byte character too, so it is read by the standard library: as written."""
    from context_manager.core.conversations.codec import loads, loads_many

    texts = ['{"t": "東京", "n": 100000000000000000000}', '{"t": "é", "m": -9223372036854775809}']
    assert loads_many(texts) == [{"t": "東京", "n": 10**20}, {"t": "é", "m": -(2**63) - 1}]
    assert loads('{"a": "٠١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩", "b": 123456789012345678}') == {
        "a": "٠١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩",
        "b": 123456789012345678,
    }
    assert loads(b'{"x": 12345678901234567890123}') == {"x": 12345678901234567890123}


def test_a_record_that_is_not_one_json_document_is_refused() -> None:
    from context_manager.core.conversations.codec import loads_many

    assert loads_many([]) == []
    assert loads_many(['{"a": 1}', "[2]"]) == [{"a": 1}, [2]]
    with pytest.raises(ValueError):
        loads_many(['{"a": 1}, {"b": 2}'])  # two documents where one was expected


async def test_a_replaced_sqlite_file_is_restored_from_the_open_connection(tmp_path: Path) -> None:
    """Issue 15.1: a sync tool swaps conversations.sqlite3 while it is open; appends go on into the
    unlinked file. ``restore_file`` writes the open database back, keeps the stranger's file aside, and
    every record (those after the swap too) is in the file at the path."""
    from context_manager.core.conversations.sqlite_store import SQLiteConversationStore

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        assert store.file_faults() == {}
        await store.append("c1", 0, records("a", "b"), writer="w")
        (tmp_path / "swap.tmp").write_bytes(b"not a database\n" * 50)
        os.replace(tmp_path / "swap.tmp", path)
        await store.append("c1", 2, records("after the swap"), writer="w")
        assert store.file_faults() == {"conversations.sqlite3": "replaced"}
        report = await store.restore_file()
        assert report.startswith(
            "restored conversations.sqlite3 from the open database (1 conversation, 3 records)"
        )
        names = [p.name for p in await asyncio.to_thread(lambda: list(tmp_path.iterdir()))]
        [kept] = [
            n
            for n in names
            if n.startswith("conversations.sqlite3.replaced-") and not n.endswith(("-wal", "-shm"))
        ]
        assert (tmp_path / kept).read_bytes() == b"not a database\n" * 50  # the stranger's file, untouched
        assert store.file_faults() == {}
        await store.append("c1", 3, records("after the restore"), writer="w")
    finally:
        await store.close()
    reopened = SQLiteConversationStore(path)
    await reopened.open()
    try:
        loaded = await reopened.load("c1")
        texts = [record.payload["message"]["text"] for _, record in loaded.records]
        assert texts == ["a", "b", "after the swap", "after the restore"]
    finally:
        await reopened.close()


async def test_two_restores_at_once_restore_once(tmp_path: Path) -> None:
    """The health checkers of several managers sharing the store repair it at once: the second restore,
    queued behind the first, found the file restored and moved that healthy database aside."""
    from context_manager.core.conversations.sqlite_store import SQLiteConversationStore

    path = tmp_path / "conversations.sqlite3"
    store = SQLiteConversationStore(path)
    await store.open()
    try:
        await store.append("c1", 0, records("a", "b"), writer="w")
        path.unlink()
        assert store.file_faults() == {"conversations.sqlite3": "removed"}
        first, second = await asyncio.gather(store.restore_file(), store.restore_file())
        assert first.startswith("restored conversations.sqlite3 from the open database")
        assert second == "conversations.sqlite3 needed no restore (restored meanwhile)"
        names = [p.name for p in await asyncio.to_thread(lambda: list(tmp_path.iterdir()))]
        assert "conversations.sqlite3" in names
        moved = [n for n in names if n.startswith("conversations.sqlite3.replaced-")]
        assert all(n.endswith(("-wal", "-shm")) for n in moved), moved  # the deleted file's leftovers only
        assert store.file_faults() == {}
        await store.append("c1", 2, records("after the restore"), writer="w")
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("bad", "said"),
    [("   ", "not only whitespace"), ("a\ud800", "lone surrogates"), ("x" * 201, "200"), ("a\x00b", "NUL")],
)
def test_a_bad_conversation_id_is_refused_saying_what_is_allowed(bad: str, said: str) -> None:
    """A whitespace-only id was refused with "allowed a non-empty string": it is one."""
    from context_manager.core.conversations.store import check_conversation_id
    from context_manager.core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="conversation_id") as caught:
        check_conversation_id(bad)
    assert said in str(caught.value)
    assert check_conversation_id("  padded  ") == "  padded  "  # what is allowed stays allowed
