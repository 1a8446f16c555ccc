"""Persisted conversations through EnhancedContextManager, on SQLite and PostgreSQL (issue 12.1).

A conversation written by one manager (or process, killed with SIGKILL) is resumed by another with an
identical export and compression history; a stale writer is refused, never interleaved; nothing
acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager, SyncContextManager
from context_manager.core.conversations.sqlite_store import CONVERSATIONS_FILE_NAME, SQLiteConversationStore
from context_manager.core.conversations.store import ConversationRecord
from context_manager.core.errors import (
    ConfigurationError,
    ContextBudgetError,
    ContextManagerError,
    ConversationConflictError,
    InvalidArgumentError,
    InvalidMessageError,
)
from context_manager.core.tokens import REPLY_PRIMING_TOKENS

from .conversation_worker import fingerprint

WORKER = Path(__file__).with_name("conversation_worker.py")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def make_config(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Configs on one storage (a directory, or a PostgreSQL schema)."""
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else None

    def make(**options: Any) -> ContextManagerConfig:
        base: dict[str, Any] = {"storage_path": tmp_path / "storage", "max_tokens": 600}
        if dsn is not None:
            base.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
        base.update(options)
        return ContextManagerConfig(**base)

    make.dsn = dsn  # type: ignore[attr-defined]
    return make


async def write_conversation(manager: EnhancedContextManager, turns: int) -> None:
    """Users, assistants, a tool call answered after the user spoke, a batch, pins: many compressions."""
    for step in range(turns):
        if step % 9 == 4:
            call = f"call-{step}"
            await manager.add_message(
                "assistant", "", tool_calls=[{"id": call, "name": "track", "arguments": {"parcel": step}}]
            )
            await manager.add_message("user", f"and parcel {step} is fragile")
            await manager.add_message("tool", f"parcel {step}: out for delivery", tool_call_id=call)
        elif step % 10 == 7:
            await manager.add_messages(
                [
                    {"role": "user", "content": f"question {step}: is the Oslo office open on day {step}?"},
                    {"role": "assistant", "content": f"answer {step}: yes, from 9 to 17", "priority": "low"},
                ]
            )
        else:
            role = "user" if step % 2 == 0 else "assistant"
            await manager.add_message(role, f"turn {step}: notes about warehouse {step % 5} and crate {step}")
            if step % 12 == 0:
                manager.pin_message(manager.messages[-1].id)


async def test_a_resumed_conversation_exports_the_same_bytes(make_config: Any) -> None:
    async with EnhancedContextManager(make_config(), conversation_id="support-1") as first:
        await write_conversation(first, 60)
        first.unpin_message(next(m.id for m in first.messages if m.pinned))
        await first.flush()
        assert len(first.compression_history) >= 3
        expected = fingerprint(first)
        history = first.compression_history
        version = first.conversation_version
        tool_pairs = [
            (m.tool_calls[0].id, first.messages[i + 1].tool_call_id)
            for i, m in enumerate(first.messages)
            if m.tool_calls
        ]
    async with EnhancedContextManager(make_config(), conversation_id="support-1") as resumed:
        assert fingerprint(resumed) == expected
        assert resumed.compression_history == history
        assert resumed.conversation_version == version
        assert [
            (m.tool_calls[0].id, resumed.messages[i + 1].tool_call_id)
            for i, m in enumerate(resumed.messages)
            if m.tool_calls
        ] == tool_pairs
        # it goes on from there: the next change is the next version (one more if the add compressed)
        compressions = len(resumed.compression_history)
        await resumed.add_message("user", "one more thing")
        changes = 1 + len(resumed.compression_history) - compressions
        assert resumed.conversation_version == version + changes
        status = resumed.get_system_status()["conversation"]
        assert status["conversation_id"] == "support-1" and status["version"] == version + changes
        assert status["pending_changes"] == 0 and status["stale"] is False


async def test_resuming_keeps_tool_arguments_and_metadata_as_written(make_config: Any) -> None:
    """PostgreSQL stored the records as jsonb, which sorts an object's keys and rewrites numbers: the
    resumed window's tool-call arguments (and so its export) differed from the writer's. A NUL character
    in metadata (jsonb refuses it) stopped every later write: it is refused when the message is added,
    as in its content (memory cannot store it either)."""
    arguments = {"order": 1, "id": 2, "big": 1e16, "z": [0.1, {"b": 1, "a": 2}]}
    async with EnhancedContextManager(make_config(), conversation_id="args") as manager:
        with pytest.raises(InvalidMessageError, match="NUL"):
            await manager.add_message("user", "look it up", metadata={"alpha": "nul\u0000here"})
        await manager.add_message("user", "look it up", metadata={"zeta": 1, "alpha": "here"})
        call = {"id": "c1", "name": "lookup", "arguments": arguments}
        await manager.add_message("assistant", "", tool_calls=[call])
        await manager.add_message("tool", "found", tool_call_id="c1")
        written = (json.dumps(manager.get_context()), json.dumps(manager.get_context(format="anthropic")))
        metadata = manager.messages[0].metadata
    async with EnhancedContextManager(make_config(), conversation_id="args") as resumed:
        resumed_export = (
            json.dumps(resumed.get_context()),
            json.dumps(resumed.get_context(format="anthropic")),
        )
        assert resumed_export == written
        assert list(resumed.messages[0].metadata.items()) == list(metadata.items())


async def test_integers_beyond_64_bits_resume_as_written(make_config: Any) -> None:
    """orjson read 10**20 as 1e+20 (a resumed export differed, a reload changed the window) and refused
    10**400, after which the conversation could not be opened at all."""
    metadata = {"above": 2**64, "below": -(2**63) - 1, "wide": 10**20, "huge": 10**400, "ok": 2**64 - 1}
    arguments = {"amount": 10**20, "id": "12345678901234567890123"}
    async with EnhancedContextManager(make_config(), conversation_id="ints") as manager:
        await manager.add_message("user", "transfer it", metadata=metadata)
        await manager.add_message(
            "assistant", "", tool_calls=[{"id": "c1", "name": "transfer", "arguments": arguments}]
        )
        await manager.add_message("tool", "done", tool_call_id="c1")
        written = json.dumps(manager.get_context())
        assert "100000000000000000000" in written and "1e+20" not in written
        await manager.reload()
        assert json.dumps(manager.get_context()) == written
        assert manager.messages[0].metadata == metadata
    async with EnhancedContextManager(make_config(), conversation_id="ints") as resumed:
        assert json.dumps(resumed.get_context()) == written
        assert resumed.messages[0].metadata == metadata
        assert resumed.messages[1].tool_calls[0].arguments == arguments


async def test_a_pin_made_just_before_a_reload_is_kept(make_config: Any) -> None:
    """The pin's background write had not run when reload() took the conversation: the pin was dropped,
    with a warning that another manager had written first (none had)."""
    async with EnhancedContextManager(make_config(), conversation_id="pins") as manager:
        await manager.add_message("user", "keep me")
        await manager.add_message("user", "and then me")
        manager.pin_message(manager.messages[0].id)
        await manager.reload()
        assert [m.pinned for m in manager.messages] == [True, False]
        manager.unpin_message(manager.messages[0].id)
        manager.pin_message(manager.messages[1].id)
        await manager.reload()
        assert [m.pinned for m in manager.messages] == [False, True]
    async with EnhancedContextManager(make_config(), conversation_id="pins") as resumed:
        assert [m.pinned for m in resumed.messages] == [False, True]


def test_a_pin_made_where_no_event_loop_runs_is_stored_by_the_next_flush_or_cleanup(tmp_path: Path) -> None:
    """A synchronous script between two asyncio.run calls pins a message: the pin was made, then a bare
    RuntimeError (no running event loop) was raised, and the journal's counters went out of step."""
    config = ContextManagerConfig(storage_path=tmp_path / "storage", max_tokens=600)
    manager = EnhancedContextManager(config, conversation_id="no-loop")

    async def start() -> None:
        await manager.initialize()
        await manager.add_message("user", "keep me")
        await manager.add_message("user", "and then me")

    asyncio.run(start())
    first, second = (m.id for m in manager.messages)
    manager.pin_message(first)  # no event loop runs here
    manager.pin_message(second)
    manager.unpin_message(second)
    assert [m.pinned for m in manager.messages] == [True, False]
    asyncio.run(manager.flush())
    assert manager.conversation_version == 5  # two adds, three pin records, nothing counted twice

    manager.unpin_message(first)
    manager.pin_message(second)

    async def finish() -> None:
        await manager.add_message("user", "a third")
        assert manager.conversation_version == 8
        await manager.cleanup()

    asyncio.run(finish())

    async def resume() -> list[bool]:
        async with EnhancedContextManager(config, conversation_id="no-loop") as resumed:
            return [m.pinned for m in resumed.messages]

    assert asyncio.run(resume()) == [False, True, False]


async def test_a_writer_is_refused_after_its_conversation_was_deleted_and_created_again(
    make_config: Any,
) -> None:
    """Managers sharing conversations (workers on PostgreSQL, managers of one process on SQLite): A wrote
    version 1, B deleted the conversation, C created it again up to version 1; A's next add was accepted on
    top of C's conversation."""

    def config(name: str) -> ContextManagerConfig:
        return make_config()  # type: ignore[no-any-return]

    async with EnhancedContextManager(config("a"), conversation_id="aba") as first:
        await first.add_message("user", "X from the first writer")
        async with EnhancedContextManager(config("b"), conversation_id="other") as deleter:
            assert await deleter.delete_conversation("aba")
        async with EnhancedContextManager(config("c"), conversation_id="aba") as again:
            await again.add_message("user", "Y from the new conversation")
        with pytest.raises(ConversationConflictError):
            await first.add_message("user", "Z from the first writer")
        assert [m.content for m in first.messages] == ["Y from the new conversation"]  # reloaded
    async with EnhancedContextManager(config("d"), conversation_id="aba") as resumed:
        assert [m.content for m in resumed.messages] == ["Y from the new conversation"]


class _ContentWords:
    """A TokenCounter that counts the words of a message's text only (no framing): a tool-call-only
    assistant message and an empty tool result cost 0 tokens."""

    encoding_name = "content-words"

    def count(self, text: str) -> int:
        return len(text.split())

    def count_message(self, message: Any) -> int:
        return len(message.content.split())


async def test_a_message_a_custom_counter_gives_no_tokens_resumes(make_config: Any) -> None:
    """The window took a message counted 0 by a custom token counter, stored it, then refused it when
    resuming ("messages with their token counts set"): the conversation could not be opened again."""
    config = make_config()
    async with EnhancedContextManager(config, conversation_id="c", token_counter=_ContentWords()) as manager:
        await manager.add_message("user", "look up parcel 7")
        await manager.add_message(
            "assistant", "", tool_calls=[{"id": "c7", "name": "track", "arguments": {}}]
        )
        await manager.add_message("tool", "", tool_call_id="c7")
        assert [message.token_count for message in manager.messages] == [4, 0, 0]
        before = manager.get_context(format="openai")
    async with EnhancedContextManager(config, conversation_id="c", token_counter=_ContentWords()) as manager:
        assert manager.get_context(format="openai") == before
        assert manager.get_context_summary()["token_count"] == 4 + 3


async def test_evicted_messages_are_searchable_after_resuming(make_config: Any) -> None:
    async with EnhancedContextManager(make_config(), conversation_id="c") as first:
        await first.add_message("user", "my locker code is 4417 at the north gate")
        await first.add_message("user", "thanks")  # the newest request is always kept
        for step in range(80):
            await first.add_message("assistant", f"filler turn {step} about nothing in particular")
        summary = first.context_window.summary
        assert all("4417" not in m.content for m in first.messages if m is not summary)  # evicted
    async with EnhancedContextManager(make_config(), conversation_id="c") as resumed:
        found = await resumed.search_memory("locker code north gate")
        assert any("4417" in memory.content for memory in found)


async def test_without_a_conversation_id_nothing_is_persisted(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "storage", max_tokens=600)
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "hello")
        assert manager.conversation_id is None and manager.conversation_version == 0
        assert await manager.list_conversations() == []
        assert await manager.delete_conversation("anything") is False
        with pytest.raises(ConfigurationError, match="conversation_id"):
            await manager.reload()
    assert not (tmp_path / "storage" / CONVERSATIONS_FILE_NAME).exists()
    async with EnhancedContextManager(config) as manager:
        assert manager.messages == ()


async def test_conversation_id_from_the_config_and_bad_ids(make_config: Any) -> None:
    async with EnhancedContextManager(make_config(conversation_id="from-config")) as manager:
        await manager.add_message("user", "kept")
        assert manager.conversation_id == "from-config"
    async with EnhancedContextManager(make_config(), conversation_id="from-config") as manager:
        assert [m.content for m in manager.messages] == ["kept"]
    for bad in ("", "   ", "x" * 201, "a\x00b", 7):
        with pytest.raises(InvalidArgumentError, match="conversation_id"):
            EnhancedContextManager(make_config(), conversation_id=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="conversation_id"):
            make_config(conversation_id=bad)


async def test_resuming_with_a_smaller_max_tokens_compresses_the_window_to_fit(
    make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A deploy lowered max_tokens: a conversation written with the old one could not be opened at all
    (InvalidArgumentError at initialize()). It is compressed to fit as it loads, like an add would, the
    compression recorded and stored (a third manager sees the same window, without compressing again),
    a warning naming the conversation and both sizes."""
    async with EnhancedContextManager(make_config(max_tokens=4000), conversation_id="wide") as manager:
        for turn in range(40):
            await manager.add_message("user", f"turn {turn}: the crate {turn} goes to dock {turn % 7}")
        needed = manager.get_context_summary()["token_count"]
        history = manager.compression_history
        assert needed > 600
    async with EnhancedContextManager(make_config(), conversation_id="wide") as manager:
        summary = manager.get_context_summary()
        assert summary["token_count"] <= 600
        assert manager.compression_history[:-1] == history
        fitted = manager.compression_history[-1]
        assert fitted["tokens_before"] == needed and fitted["tokens_after"] == summary["token_count"]
        export = manager.get_context(format="openai")
        assert "turn 39" in export[-1]["content"]
        assert all("turn 0:" not in message["content"] for message in export[1:])  # evicted...
        found = await manager.search_memory("the crate 0 goes to dock 0")
        assert any("turn 0:" in memory.content for memory in found)  # ... to memory
        await manager.add_message("user", "one more")  # the window works as any other
        export = manager.get_context(format="openai")
        history = manager.compression_history
    assert "'wide'" in caplog.text and f"holds {needed} tokens, more than max_tokens (600)" in caplog.text
    caplog.clear()
    for max_tokens in (600, 4000):  # the compression was stored: nothing to do again
        async with EnhancedContextManager(
            make_config(max_tokens=max_tokens), conversation_id="wide"
        ) as manager:
            assert manager.get_context(format="openai") == export
            assert manager.compression_history == history
    assert "more than max_tokens" not in caplog.text


async def test_resuming_with_a_smaller_max_tokens_without_compression_says_which_setting_and_what_it_needs(
    make_config: Any,
) -> None:
    """With compression disabled the window cannot be made to fit: the error names max_tokens, what the
    conversation needs and which conversation; nothing is changed."""
    async with EnhancedContextManager(make_config(max_tokens=4000), conversation_id="wide") as manager:
        for turn in range(40):
            await manager.add_message("user", f"turn {turn}: the crate {turn} goes to dock {turn % 7}")
        needed = manager.get_context_summary()["token_count"]
        assert needed > 600
    with pytest.raises(InvalidArgumentError, match=r"^max_tokens: got 600; allowed at least \d+") as caught:
        await EnhancedContextManager(
            make_config(enable_compression=False), conversation_id="wide"
        ).initialize()
    assert caught.value.field == "max_tokens"
    assert "'wide'" in str(caught.value)
    assert int(caught.value.allowed.split()[2].rstrip(":")) >= needed
    async with EnhancedContextManager(make_config(max_tokens=4000), conversation_id="wide") as manager:
        assert len(manager.messages) == 40  # nothing was changed
        assert manager.compression_history == []


def window_tokens(manager: EnhancedContextManager) -> int:
    """What the manager's own counter gives its window now (every message counted afresh)."""
    window = manager.context_window
    counted = sum(window.counter.count_message(message) for message in window.messages)
    return counted + (REPLY_PRIMING_TOKENS if window.messages else 0)


async def test_resuming_with_another_token_encoding_counts_the_window_with_it(
    make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A deploy moved the model from gpt-4o (o200k_base) to gpt-4 (cl100k_base): the resumed window kept
    the o200k counts (733 tokens where cl100k counts 1,033) while its summary said cl100k_base, so the
    window let the prompt grow past the model's limit. It is counted again with the new encoding (a
    warning says so), both ways, with snapshots too; too big for max_tokens with the new counts, the
    error says which encoding and what it needs."""
    text = "Überprüfung der Bestellung: größer, schöner ✓ 数据 {}"
    written = make_config(max_tokens=4000, token_encoding="o200k_base", conversation_snapshot_every=4)
    async with EnhancedContextManager(written, conversation_id="moved") as manager:
        for turn in range(10):
            await manager.add_message("user", text.format(turn) * 6)
        await manager.compress_context(target_tokens=900)  # a summary, counted by o200k too
        for turn in range(3):
            await manager.add_message("assistant", text.format(turn) * 6)
        export = manager.get_context(format="openai")
        o200k_tokens = manager.get_context_summary()["token_count"]
        assert o200k_tokens == window_tokens(manager)
    async with EnhancedContextManager(written, conversation_id="moved") as manager:
        assert manager.get_context_summary()["token_count"] == o200k_tokens
    assert "counted again" not in caplog.text  # the same counter: nothing is counted again
    for encoding in ("cl100k_base", "o200k_base"):  # there and back
        config = make_config(max_tokens=4000, token_encoding=encoding)
        async with EnhancedContextManager(config, conversation_id="moved") as manager:
            assert manager.get_context(format="openai") == export  # the same messages
            summary = manager.get_context_summary()
            assert summary["token_encoding"] == encoding
            assert summary["token_count"] == window_tokens(manager)
            assert f"counted again with {encoding}" in caplog.text
            caplog.clear()
            if encoding == "cl100k_base":
                assert summary["token_count"] > o200k_tokens * 1.2
                await manager.add_message("user", "one more")  # stored with its cl100k count
                export = manager.get_context(format="openai")
    cl100k_needs = 0
    async with EnhancedContextManager(
        make_config(max_tokens=4000, token_encoding="cl100k_base"), conversation_id="moved"
    ) as manager:
        cl100k_needs = manager.get_context_summary()["token_count"]
    room = o200k_tokens + 60  # enough for the o200k counts, not for the cl100k ones
    assert cl100k_needs > room
    stuck = make_config(max_tokens=room, token_encoding="cl100k_base", enable_compression=False)
    with pytest.raises(InvalidArgumentError, match=r"^max_tokens: got \d+; allowed at least \d+") as caught:
        await EnhancedContextManager(stuck, conversation_id="moved").initialize()
    assert caught.value.field == "max_tokens"
    assert "cl100k_base" in str(caught.value) and "o200k_base" in str(caught.value)
    assert int(caught.value.allowed.split()[2].rstrip(":")) == cl100k_needs
    # with compression (the default) the window recounted too large is compressed to fit, and stored so
    o200k_room = make_config(max_tokens=room, token_encoding="cl100k_base")
    async with EnhancedContextManager(o200k_room, conversation_id="moved") as manager:
        assert manager.get_context_summary()["token_count"] == window_tokens(manager) <= room
        fitted = manager.compression_history[-1]
        assert fitted["tokens_before"] == cl100k_needs
        export = manager.get_context(format="openai")
    assert "'moved'" in caplog.text
    assert f"holds {cl100k_needs} tokens, more than max_tokens ({room})" in caplog.text
    async with EnhancedContextManager(
        make_config(max_tokens=4000, token_encoding="cl100k_base"), conversation_id="moved"
    ) as manager:
        assert manager.get_context(format="openai") == export


async def test_during_a_rolling_deploy_a_manager_whose_window_is_too_large_reloads_and_compresses_again(
    make_config: Any,
) -> None:
    """A manager on the new encoding (its recount exceeds max_tokens) and one on the old write the same
    conversation: the new one's reload after a conflict kept failing on the budget (stuck, every change
    refused). It loads the other writer's change, compresses to fit again, and its next write stores
    that compression with its own change."""
    text = "Überprüfung der Bestellung: größer, schöner ✓ 数据 {}"
    old = make_config(max_tokens=4000, token_encoding="o200k_base")
    async with EnhancedContextManager(old, conversation_id="rolling") as manager:
        for turn in range(8):
            await manager.add_message("user", text.format(turn) * 6)
        room = manager.get_context_summary()["token_count"] + 80
    new = make_config(max_tokens=room, token_encoding="cl100k_base")
    async with (
        EnhancedContextManager(old, conversation_id="rolling") as before,
        EnhancedContextManager(new, conversation_id="rolling") as after,
    ):
        compressions = len(after.compression_history)
        assert compressions == 1 and after.get_context_summary()["token_count"] <= room
        await before.add_message("user", "the old manager's turn")
        with pytest.raises(ConversationConflictError):
            await after.add_message("user", "the new manager's turn")  # refused: reloaded, fitted again
        assert after.get_context_summary()["token_count"] <= room
        assert "the old manager's turn" in after.get_context(format="openai")[-1]["content"]
        await after.add_message("user", "the new manager's turn")
        export = after.get_context(format="openai")
        history = after.compression_history
        assert len(history) == 1
    async with EnhancedContextManager(
        make_config(max_tokens=4000, token_encoding="cl100k_base"), conversation_id="rolling"
    ) as manager:
        assert manager.get_context(format="openai") == export
        assert manager.compression_history == history


async def damage(make_config: Any, backend_name: str, conversation: str, column: str, text: str) -> None:
    """Overwrite the stored snapshot, or the payload of the newest record, with ``text`` (a damaged disk)."""
    if backend_name == "sqlite":
        import sqlite3

        path = make_config().resolved_storage_path / CONVERSATIONS_FILE_NAME
        with sqlite3.connect(path) as db:
            if column == "snapshot":
                db.execute(
                    "UPDATE conversation_snapshots SET snapshot = ? WHERE conversation_id = ?",
                    (text, conversation),
                )
            else:
                db.execute(
                    "UPDATE conversation_records SET payload = ? WHERE conversation_id = ? AND version = "
                    "(SELECT max(version) FROM conversation_records WHERE conversation_id = ?)",
                    (text, conversation, conversation),
                )
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(make_config.dsn, autocommit=True) as connection:
        if column == "snapshot":
            await connection.execute(
                "UPDATE cm_conversations SET snapshot = %s::json WHERE id = %s", (text, conversation)
            )
        else:
            await connection.execute(
                "UPDATE cm_conversation_records SET payload = %s::json WHERE conversation_id = %s AND "
                "version = (SELECT max(version) FROM cm_conversation_records WHERE conversation_id = %s)",
                (text, conversation, conversation),
            )


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("record", "not json"),  # SQLite only: PostgreSQL's json column refuses it
        ("record", '{"message": {"id": "x", "role": "user"'),
        ("snapshot", '{"messages": [{"id": "x"'),
        ("snapshot", '{"messages": [5]}'),
        ("snapshot", "[1, 2]"),
        ("snapshot", '{"messages": [{"role": "user"}]}'),
    ],
)
async def test_a_damaged_record_or_snapshot_raises_storage_corrupted(
    make_config: Any, backend_name: str, column: str, text: str
) -> None:
    """The failures table: a damaged stored record gives StorageCorruptedError at initialize(). A record
    or snapshot that was not JSON escaped as orjson's JSONDecodeError (its position counted in all the
    records joined), a snapshot of another shape as a bare TypeError or AttributeError."""
    import json as json_module

    from context_manager.core.errors import StorageCorruptedError

    try:
        json_module.loads(text)
        not_json = False
    except ValueError:
        not_json = True
    # a snapshot after 4 records (taken in the background, at version 4 or 5), or none
    config = make_config(conversation_snapshot_every=4 if column == "snapshot" else 1000)
    async with EnhancedContextManager(config, conversation_id="damaged") as manager:
        for turn in range(5):
            await manager.add_message("user", f"turn {turn}")
    other = await open_other_store(config, backend_name)
    try:
        stored = await other.load("damaged")  # the snapshot is written once the manager closed
    finally:
        await other.close()
    assert (stored.snapshot is not None) == (column == "snapshot")
    if not_json and backend_name == "postgres":  # the server's json column cannot hold it at all
        import psycopg

        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            await damage(make_config, backend_name, "damaged", column, text)
        async with EnhancedContextManager(config, conversation_id="damaged") as manager:
            assert len(manager.messages) == 5  # the record is intact
        return
    await damage(make_config, backend_name, "damaged", column, text)
    opening = EnhancedContextManager(config, conversation_id="damaged")
    try:
        with pytest.raises(StorageCorruptedError, match="conversation 'damaged'") as caught:
            await opening.initialize()
    finally:
        await opening.cleanup()
    assert ("snapshot" if column == "snapshot" else "record 5") in str(caught.value)
    other = await open_other_store(config, backend_name)
    try:
        version = await other.version_of("damaged")  # nothing was overwritten
    finally:
        await other.close()
    assert version is not None and version[0] == 5


async def test_the_indexing_watermark_moves_once_evicted_messages_are_in_memory(
    make_config: Any, backend_name: str
) -> None:
    """The watermark moved only at cleanup(): a long-lived manager (one per web worker) that reloaded
    after another worker's change queued every message evicted since it opened and wrote them all to
    memory again, at each reload (two workers alternating on one conversation: 190 writes for 31 evicted
    messages after 40 turns, and the session's turn numbers skipped accordingly)."""
    async with EnhancedContextManager(make_config(), conversation_id="mark") as manager:
        for turn in range(40):
            await manager.add_message("user", f"turn {turn}: crate {turn} goes to dock {turn % 7} today")
        assert manager.compression_history, "setup: the window compressed"
        await manager.flush()  # every evicted message is in memory
        other = await open_other_store(make_config(), backend_name)
        try:
            stored = await other.load("mark")
        finally:
            await other.close()
        last_compression = max(version for version, record in stored.records if record.kind == "compress")
        assert stored.indexed_version >= last_compression  # every compression's evictions are in memory
        await write_elsewhere(make_config(), backend_name, "mark", "from the other worker")
        await manager.reload()
        assert manager.context_window.evicted_messages == ()  # nothing to write again
        assert [m.content for m in manager.messages][-1] == "from the other worker"


async def test_list_conversations_takes_a_limit_of_the_most_recent(make_config: Any) -> None:
    """A list of recent chats asks for the latest few, not every conversation of the store."""
    for name in ("one", "two", "three", "four"):
        async with EnhancedContextManager(make_config(), conversation_id=name) as manager:
            await manager.add_message("user", f"hello from {name}")
    async with EnhancedContextManager(make_config(), conversation_id="two") as manager:
        await manager.add_message("user", "two again")
        every = [row["conversation_id"] for row in await manager.list_conversations()]
        assert every == ["two", "four", "three", "one"]
        latest = await manager.list_conversations(limit=2)
        assert [row["conversation_id"] for row in latest] == ["two", "four"]
        assert latest == (await manager.list_conversations())[:2]  # the same rows, fields and all
        assert len(await manager.list_conversations(limit=10)) == 4
        for bad in (0, -1, True, 2.0, "2"):
            with pytest.raises(InvalidArgumentError, match="limit: .*a positive integer"):
                await manager.list_conversations(limit=bad)

    def listed_blocking() -> list[str]:
        with SyncContextManager(make_config(), conversation_id="four") as sync:
            return [row["conversation_id"] for row in sync.list_conversations(limit=1)]

    assert await asyncio.to_thread(listed_blocking) == ["two"]


async def test_a_limit_beyond_a_64_bit_integer_lists_every_conversation(make_config: Any) -> None:
    """list_conversations(limit=2**63) (any positive integer is allowed) raised StorageError, "datatype
    mismatch" on SQLite and "bigint out of range" on PostgreSQL, as if storage were broken. A limit beyond
    what storage counts is capped, as memory's limits are: every conversation is listed."""
    for name in ("one", "two"):
        async with EnhancedContextManager(make_config(), conversation_id=name) as manager:
            await manager.add_message("user", f"hello from {name}")
    async with EnhancedContextManager(make_config(), conversation_id="two") as manager:
        every = await manager.list_conversations()
        assert [row["conversation_id"] for row in every] == ["two", "one"]
        for huge in (2**63 - 1, 2**63, 10**30):
            assert await manager.list_conversations(limit=huge) == every


async def test_list_and_delete_conversations(make_config: Any) -> None:
    for name in ("alpha", "beta"):
        async with EnhancedContextManager(make_config(), conversation_id=name) as manager:
            await manager.add_message("user", f"hello from {name}")
    async with EnhancedContextManager(make_config(), conversation_id="beta") as manager:
        await manager.add_message("user", "beta again")
        listed = await manager.list_conversations()
        assert [row["conversation_id"] for row in listed] == ["beta", "alpha"]  # most recent first
        assert [row["version"] for row in listed] == [2, 1]
        assert await manager.delete_conversation("alpha") is True
        assert await manager.delete_conversation("alpha") is False
        assert [row["conversation_id"] for row in await manager.list_conversations()] == ["beta"]
        with pytest.raises(InvalidArgumentError):
            await manager.delete_conversation("")
    async with EnhancedContextManager(make_config(), conversation_id="alpha") as manager:
        assert manager.messages == ()  # deleted: a new, empty conversation


async def test_a_manager_deleting_its_own_conversation_starts_it_again_empty(make_config: Any) -> None:
    """A "clear this chat" that deletes the manager's own conversation left the deleted messages in its
    window: get_context() still exported them, and the next add_message raised ConversationConflictError
    (the change not made) before the window emptied. The window now empties with the delete; the next
    change starts the conversation again."""
    async with EnhancedContextManager(make_config(), conversation_id="mine") as manager:
        await manager.add_message("user", "My card number ends in 4242.")
        manager.pin_message(manager.messages[0].id)
        assert await manager.delete_conversation("mine") is True
        assert manager.messages == () and manager.get_context(format="openai") == []
        assert manager.conversation_version == 0
        await manager.add_message("user", "A new question.")  # no conflict
        assert [m.content for m in manager.messages] == ["A new question."]
        assert await manager.delete_conversation("mine") is True
        assert await manager.delete_conversation("mine") is False  # nothing left to empty
        await manager.add_message("user", "Again.")
    async with EnhancedContextManager(make_config(), conversation_id="mine") as resumed:
        assert [m.content for m in resumed.messages] == ["Again."]
        assert resumed.conversation_version == 1


async def test_concurrent_adds_in_one_manager_are_all_stored_in_window_order(make_config: Any) -> None:
    async with EnhancedContextManager(make_config(max_tokens=4000), conversation_id="busy") as manager:
        await asyncio.gather(*(manager.add_message("user", f"parallel message {i}") for i in range(40)))
        expected = fingerprint(manager)
        order = [m.content for m in manager.messages]
    async with EnhancedContextManager(make_config(max_tokens=4000), conversation_id="busy") as resumed:
        assert [m.content for m in resumed.messages] == order
        assert fingerprint(resumed) == expected


async def test_a_stale_writer_is_refused_and_reloaded(make_config: Any, backend_name: str) -> None:
    """Another writer (a store on the same storage, as another process) gets there first."""
    async with EnhancedContextManager(make_config(), conversation_id="shared") as manager:
        await manager.add_message("user", "first")
        other = await open_other_store(make_config(), backend_name)
        try:
            stored = await other.load("shared")
            assert stored.version == 1
            from context_manager.core.messages import Message

            theirs = Message.create("assistant", "written elsewhere")
            object.__setattr__(theirs, "token_count", 12)
            await other.append(
                "shared", 1, [ConversationRecord("add", {"message": theirs.to_dict()})], writer="other"
            )
        finally:
            await other.close()
        with pytest.raises(ConversationConflictError) as caught:
            await manager.add_message("user", "mine, refused")
        assert isinstance(caught.value, ContextManagerError)
        # the window now holds what storage holds: theirs, not the refused message
        assert [m.content for m in manager.messages] == ["first", "written elsewhere"]
        await manager.add_message("user", "mine, again")
        assert await manager.reload() == 3
    async with EnhancedContextManager(make_config(), conversation_id="shared") as resumed:
        assert [m.content for m in resumed.messages] == ["first", "written elsewhere", "mine, again"]


async def write_elsewhere(
    config: ContextManagerConfig, backend_name: str, conversation: str, text: str
) -> None:
    """Another writer (a store on the same storage, as another process) appends one message."""
    from context_manager.core.messages import Message

    other = await open_other_store(config, backend_name)
    try:
        stored = await other.load(conversation)
        theirs = Message.create("assistant", text)
        object.__setattr__(theirs, "token_count", 12)
        record = ConversationRecord("add", {"message": theirs.to_dict()})
        await other.append(conversation, stored.version, [record], writer="other")
    finally:
        await other.close()


async def test_a_conflict_says_the_manager_reloaded_and_when_reload_is_needed(
    make_config: Any, backend_name: str
) -> None:
    """The conflict said "Call `await manager.reload()` and make it again", though the manager had
    already reloaded by itself; reload() is needed only when that automatic reload failed."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "hello")
        await write_elsewhere(make_config(), backend_name, "c", "from the other worker")
        with pytest.raises(ConversationConflictError) as caught:
            await manager.add_message("user", "refused")
        message = str(caught.value)
        assert "the change was not made" in message
        assert "reloaded" in message and "make the change again" in message
        assert "call `await manager.reload()`" not in message.lower()
        assert caught.value.needs_reload is False
        assert [m.content for m in manager.messages] == ["hello", "from the other worker"]
        await manager.add_message("user", "made again")  # no reload() needed

        # a record the automatic reload cannot apply (a pin of a message that is not there): it fails
        other = await open_other_store(make_config(), backend_name)
        try:
            stored = await other.load("c")
            broken = ConversationRecord("pin", {"id": "no-such-message", "pinned": True})
            await other.append("c", stored.version, [broken], writer="other")
        finally:
            await other.close()
        with pytest.raises(ConversationConflictError) as failed:
            await manager.add_message("user", "refused again")
        message = str(failed.value)
        assert failed.value.needs_reload is True
        assert "not stored, and reloading the conversation failed (StorageCorruptedError" in message
        assert "every change is refused until `await manager.reload()` succeeds" in message
        assert manager.get_system_status()["conversation"]["stale"] is True
        with pytest.raises(ConversationConflictError, match="reloading the conversation failed") as again:
            await manager.add_message("user", "still stale")  # refused before anything changes
        assert again.value is failed.value
        assert "still stale" not in [m.content for m in manager.messages]


async def test_a_pin_on_a_stale_conversation_is_refused_before_it_is_made(
    make_config: Any, backend_name: str
) -> None:
    """Once a conflict's reload failed, a pin was made in the window (and shown by get_context) while
    every other change was refused; the next reload() dropped it without a word."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "hello")
        other = await open_other_store(make_config(), backend_name)
        try:
            broken = ConversationRecord("pin", {"id": "no-such-message", "pinned": True})
            await other.append("c", 1, [broken], writer="other")
        finally:
            await other.close()
        with pytest.raises(ConversationConflictError):
            await manager.add_message("user", "refused")
        hello = manager.messages[0].id
        with pytest.raises(ConversationConflictError, match=r"refused until `await manager\.reload\(\)`"):
            manager.pin_message(hello)
        assert manager.messages[0].pinned is False


async def test_flush_raises_the_refusal_of_a_pin_written_in_the_background(
    make_config: Any, backend_name: str
) -> None:
    """A pin's record is written in the background and ``flush()`` waits for it. When another writer had
    stored a change first, the background write met the conflict and the reload dropped the pin; if that
    write ran before the flush (the request awaited something in between), the flush returned without a
    word: the caller believed the message pinned. Now that flush raises the refusal (once)."""
    async with EnhancedContextManager(make_config(), conversation_id="pin-bg") as manager:
        await manager.add_message("user", "keep me")
        await write_elsewhere(make_config(), backend_name, "pin-bg", "written elsewhere")
        manager.pin_message(manager.messages[0].id)
        for _ in range(500):  # the request awaits something else: the background write runs meanwhile
            if manager.get_system_status()["conversation"]["pending_changes"] == 0:
                break
            await asyncio.sleep(0.01)
        assert manager.get_system_status()["conversation"]["pending_changes"] == 0
        with pytest.raises(ConversationConflictError):
            await manager.flush()
        assert [(m.content, m.pinned) for m in manager.messages] == [
            ("keep me", False),
            ("written elsewhere", False),
        ]
        await manager.flush()  # raised once
        manager.pin_message(manager.messages[0].id)  # made again: stored
        await asyncio.sleep(0.05)
        await manager.flush()
    async with EnhancedContextManager(make_config(), conversation_id="pin-bg") as resumed:
        assert [m.pinned for m in resumed.messages] == [True, False]


async def test_flush_raises_the_refusal_of_a_pin_it_writes_itself(
    make_config: Any, backend_name: str
) -> None:
    """The same when the flush writes the pin itself (the usual order): raised once, not by the next flush."""
    async with EnhancedContextManager(make_config(), conversation_id="pin-fg") as manager:
        await manager.add_message("user", "keep me")
        await write_elsewhere(make_config(), backend_name, "pin-fg", "written elsewhere")
        manager.pin_message(manager.messages[0].id)
        with pytest.raises(ConversationConflictError):
            await manager.flush()
        assert [m.pinned for m in manager.messages] == [False, False]
        await manager.flush()


async def test_a_refused_background_pin_is_reported_once_by_flush(
    make_config: Any, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pin whose background write met another writer's change was reported twice: its background task
    logged a warning ("a pin was not stored") and flush() raised the refusal. The caller who flushes hears
    of it once, from flush(); nothing is logged at WARNING for it."""
    async with EnhancedContextManager(make_config(), conversation_id="pin-once") as manager:
        await manager.add_message("user", "keep me")
        await write_elsewhere(make_config(), backend_name, "pin-once", "written elsewhere")
        caplog.clear()
        with caplog.at_level("DEBUG", logger="context_manager"):
            manager.pin_message(manager.messages[0].id)
            for _ in range(500):  # the background write meets the conflict before flush() runs
                if manager.get_system_status()["conversation"]["pending_changes"] == 0:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(ConversationConflictError):
                await manager.flush()
            await manager.flush()  # raised once
        assert not [r for r in caplog.records if r.levelname == "WARNING" and "pin-once" in r.getMessage()]
    caplog.clear()
    async with EnhancedContextManager(make_config(), conversation_id="pin-once") as resumed:
        assert [m.pinned for m in resumed.messages] == [False, False]


async def test_a_refused_pin_never_flushed_is_logged_once_by_cleanup(
    make_config: Any, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody flushes after the pin: the refusal can reach no caller, so cleanup logs it (once)."""
    manager = EnhancedContextManager(make_config(), conversation_id="pin-log")
    await manager.initialize()
    try:
        await manager.add_message("user", "keep me")
        await write_elsewhere(make_config(), backend_name, "pin-log", "written elsewhere")
        caplog.clear()
        manager.pin_message(manager.messages[0].id)
        for _ in range(500):
            if manager.get_system_status()["conversation"]["pending_changes"] == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        await manager.cleanup()
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "pin-log" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "last changes not stored" in warnings[0]
    assert "reloaded the conversation from storage" in warnings[0]  # the refusal, named


async def test_a_refused_pin_is_reported_after_many_later_refusals(
    make_config: Any, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal of a pin's background write was looked up, by flush() or cleanup(), among the
    conversation's 64 latest refusals only: after more refused adds (each raised to its own caller) the
    pin's was reported by neither, though its warning was no longer logged when it happened."""
    async with EnhancedContextManager(make_config(), conversation_id="pin-old") as manager:
        await manager.add_message("user", "keep me")
        await write_elsewhere(make_config(), backend_name, "pin-old", "written elsewhere")
        manager.pin_message(manager.messages[0].id)
        for _ in range(500):  # the background write meets the conflict
            if manager.get_system_status()["conversation"]["pending_changes"] == 0:
                break
            await asyncio.sleep(0.01)
        for turn in range(66):
            await write_elsewhere(make_config(), backend_name, "pin-old", f"elsewhere {turn}")
            with pytest.raises(ConversationConflictError):
                await manager.add_message("user", f"turn {turn}")
        with pytest.raises(ConversationConflictError):
            await manager.flush()
        await manager.flush()  # raised once
    manager = EnhancedContextManager(make_config(), conversation_id="pin-old")
    await manager.initialize()
    try:
        await manager.add_message("user", "keep me too")
        await write_elsewhere(make_config(), backend_name, "pin-old", "written elsewhere")
        manager.pin_message(manager.messages[-1].id)
        for _ in range(500):
            if manager.get_system_status()["conversation"]["pending_changes"] == 0:
                break
            await asyncio.sleep(0.01)
        for turn in range(66):
            await write_elsewhere(make_config(), backend_name, "pin-old", f"later {turn}")
            with pytest.raises(ConversationConflictError):
                await manager.add_message("user", f"later turn {turn}")
        caplog.clear()
    finally:
        await manager.cleanup()
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "pin-old" in r.getMessage()
    ]
    assert len(warnings) == 1 and "last changes not stored" in warnings[0], warnings


async def test_a_pin_that_changes_nothing_raises_no_earlier_refusal(
    make_config: Any, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pinning a message already pinned (or unpinning one that is not) changes nothing, but it took the
    manager's last change for its own: when that change had been refused (another worker wrote first),
    the pin's background write logged "a pin was not stored" and flush() raised that old conflict again,
    at every such pin, though nothing was refused and the window had reloaded. An application retrying
    the pin on the conflict looped for ever."""
    async with EnhancedContextManager(make_config(), conversation_id="pin-noop") as manager:
        await manager.add_message("user", "keep me")
        manager.pin_message(manager.messages[0].id)
        await manager.flush()
        await write_elsewhere(make_config(), backend_name, "pin-noop", "written elsewhere")
        with pytest.raises(ConversationConflictError):
            await manager.add_message("user", "refused")  # the manager reloaded: version 3
        caplog.clear()
        for _ in range(3):
            manager.pin_message(manager.messages[0].id)  # pinned already
            manager.unpin_message(manager.messages[1].id)  # not pinned
            await asyncio.sleep(0.05)  # what a pin writes in the background has run
            await manager.flush()
        assert "a pin was not stored" not in caplog.text
        assert manager.conversation_version == 3
        assert [(m.content, m.pinned) for m in manager.messages] == [
            ("keep me", True),
            ("written elsewhere", False),
        ]
        manager.unpin_message(manager.messages[0].id)  # a real change is still stored
        await manager.flush()
        assert manager.conversation_version == 4


async def store_unloadable_record(config: ContextManagerConfig, backend_name: str, conversation: str) -> None:
    """Another writer stores a record the manager's automatic reload cannot apply: that reload fails."""
    other = await open_other_store(config, backend_name)
    try:
        stored = await other.load(conversation)
        broken = ConversationRecord("pin", {"id": "no-such-message", "pinned": True})
        await other.append(conversation, stored.version, [broken], writer="other")
    finally:
        await other.close()


async def test_a_refused_change_is_taken_back_when_the_reload_fails(
    make_config: Any, backend_name: str
) -> None:
    """When the reload after a refused write failed, the window kept the refused message (and a pin stored
    with it): get_context() exported changes storage never acknowledged until reload() succeeded."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("system", "You are a support assistant.")
        await manager.add_message("user", "hello")
        await manager.flush()
        acknowledged, messages = fingerprint(manager), manager.messages
        version = manager.conversation_version
        await store_unloadable_record(make_config(), backend_name, "c")
        manager.pin_message(messages[1].id)  # written in the background, with the add below
        with pytest.raises(ConversationConflictError) as caught:
            await manager.add_message("user", "refused")
        assert caught.value.needs_reload is True
        assert fingerprint(manager) == acknowledged
        assert manager.messages == messages and manager.messages[1].pinned is False
        assert manager.conversation_version == version
        status = manager.get_system_status()["conversation"]
        assert status["stale"] is True and status["pending_changes"] == 0
        assert "the window was put back to the last stored version" in str(caught.value)
        with pytest.raises(ConversationConflictError):
            await manager.add_message("user", "still stale")
        assert fingerprint(manager) == acknowledged


async def test_a_refused_compression_is_taken_back_when_the_reload_fails(
    make_config: Any, backend_name: str
) -> None:
    """A refused add that compressed (another worker wrote while the summarizer ran), then a failed reload:
    the window kept the new summary, the evictions and the history entry of a compression never stored."""
    other_writes = False

    async def summarizer(messages: list[Any], budget: int) -> str:
        nonlocal other_writes
        if other_writes:
            other_writes = False
            await store_unloadable_record(make_config(), backend_name, "z")
        return f"earlier: {len(messages)} messages about the payments service build"

    config = make_config(max_tokens=300)
    async with EnhancedContextManager(config, conversation_id="z", summarizer=summarizer) as manager:
        for step in range(14):
            await manager.add_message("user", f"question {step} about the payments service build status")
            await manager.add_message("assistant", f"answer {step}: the build passed its tests in eu-west")
        await manager.flush()
        assert manager.compression_history and manager.context_window.summary is not None
        acknowledged, messages = fingerprint(manager), manager.messages
        history, summary = manager.compression_history, manager.context_window.summary
        tokens = manager.get_context_summary()["token_count"]
        other_writes = True
        with pytest.raises(ConversationConflictError) as caught:
            await manager.add_message("user", "A: " + " ".join(f"word{i}" for i in range(60)))
        assert caught.value.needs_reload is True and not other_writes  # it did compress
        assert fingerprint(manager) == acknowledged
        assert manager.messages == messages
        assert manager.compression_history == history
        assert manager.context_window.summary == summary
        assert manager.get_context_summary()["token_count"] == tokens
        assert manager.get_system_status()["conversation"]["pending_changes"] == 0


async def test_a_refused_compression_is_taken_back_with_a_full_compression_history(
    make_config: Any, backend_name: str
) -> None:
    """The window keeps its newest COMPRESSION_HISTORY_LIMIT records: a refused compression of a window
    whose history is full is taken back with the record it pushed out put back, the count unchanged."""
    from context_manager.core.context_window import COMPRESSION_HISTORY_LIMIT

    other_writes = False

    async def summarizer(messages: list[Any], budget: int) -> str:
        nonlocal other_writes
        if other_writes:
            other_writes = False
            await store_unloadable_record(make_config(), backend_name, "full")
        return f"earlier: {len(messages)} messages about the payments service build"

    config = make_config(max_tokens=300)
    async with EnhancedContextManager(config, conversation_id="full", summarizer=summarizer) as manager:
        step = 0
        while manager.get_context_summary()["compression_count"] <= COMPRESSION_HISTORY_LIMIT:
            await manager.add_message("user", f"question {step} about the payments service build status")
            step += 1
        await manager.flush()
        acknowledged, history = fingerprint(manager), manager.compression_history
        count = manager.get_context_summary()["compression_count"]
        assert len(history) == COMPRESSION_HISTORY_LIMIT
        other_writes = True
        with pytest.raises(ConversationConflictError) as caught:
            await manager.add_message("user", "A: " + " ".join(f"word{i}" for i in range(60)))
        assert caught.value.needs_reload is True and not other_writes  # it did compress
        assert fingerprint(manager) == acknowledged
        assert manager.compression_history == history
        assert manager.get_context_summary()["compression_count"] == count


async def test_changes_made_while_a_refusal_is_taken_back_are_taken_back_too(
    make_config: Any, backend_name: str
) -> None:
    """A pin's write refused and its reload failed while another task compressed (its summarizer
    running) and a third add waited behind it: both were committed to the stale window and stayed there,
    exported, though each call raised the conflict."""
    in_summarizer, gate = asyncio.Event(), asyncio.Event()
    hold = False

    async def summarizer(messages: list[Any], budget: int) -> str:
        if hold:
            await store_unloadable_record(make_config(), backend_name, "w")
            in_summarizer.set()
            await gate.wait()
        return "earlier: questions about the payments service build"

    config = make_config(max_tokens=300)
    async with EnhancedContextManager(config, conversation_id="w", summarizer=summarizer) as manager:
        for step in range(6):
            await manager.add_message("user", f"question {step} about the payments service build status")
            await manager.add_message("assistant", f"answer {step}: the build passed its tests in eu-west")
        await manager.flush()
        acknowledged, messages = fingerprint(manager), manager.messages
        hold = True
        compressing = asyncio.create_task(
            manager.add_message("user", "A: " + " ".join(f"word{i}" for i in range(60)))
        )
        await asyncio.wait_for(in_summarizer.wait(), 10)
        queued = asyncio.create_task(manager.add_message("user", "queued behind the compression"))
        await asyncio.sleep(0)
        manager.pin_message(messages[1].id)  # its background write is refused; the reload fails
        for _ in range(1000):
            if manager.get_system_status()["conversation"]["stale"]:
                break
            await asyncio.sleep(0.01)
        gate.set()
        for task in (compressing, queued):
            with pytest.raises(ConversationConflictError) as caught:
                await task
            assert caught.value.needs_reload is True
        assert fingerprint(manager) == acknowledged
        assert manager.messages == messages
        assert manager.get_system_status()["conversation"]["pending_changes"] == 0


async def test_health_reports_a_stale_conversation_and_auto_recovery_reloads_it(
    make_config: Any, backend_name: str
) -> None:
    """A conversation whose reload after a conflict failed refused every change, and the health check
    said "healthy": nothing told the operator, and nothing reloaded it once storage could be read."""
    from context_manager import HealthChecker, HealthState

    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "hello")
        healthy = (await HealthChecker(context_manager=manager).perform_health_check()).checks
        assert healthy["storage_writes"].status is HealthState.HEALTHY
        other = await open_other_store(make_config(), backend_name)
        try:
            broken = ConversationRecord("pin", {"id": "no-such-message", "pinned": True})
            await other.append("c", 1, [broken], writer="other")
        finally:
            await other.close()
        with pytest.raises(ConversationConflictError):
            await manager.add_message("user", "refused")
        watching = HealthChecker(context_manager=manager, enable_auto_recovery=False)
        result = (await watching.perform_health_check()).checks["storage_writes"]
        assert result.status is HealthState.DEGRADED
        assert "conversation 'c' is stale" in result.message and result.details["conversation_stale"] is True
        assert result.recommendation is not None and "await manager.reload()" in result.recommendation

        other = await open_other_store(make_config(), backend_name)
        try:  # storage can be read again (the damaged conversation is gone)
            assert await other.delete("c")
        finally:
            await other.close()
        repairing = HealthChecker(context_manager=manager, enable_auto_recovery=True)
        status = await repairing.perform_health_check()
        assert status.checks["storage_writes"].status is HealthState.HEALTHY
        assert [(r.check, r.success) for r in status.recoveries] == [("storage_writes", True)]
        assert "reloaded conversation 'c'" in status.recoveries[0].action
        await manager.add_message("user", "writes work again")
        assert [m.content for m in manager.messages] == ["writes work again"]


async def test_a_conflict_says_when_the_conversation_was_deleted_or_created_again(
    make_config: Any, backend_name: str
) -> None:
    """A deleted conversation gave "storage has version 0 (another manager wrote to it)"; one deleted and
    created again "this manager has version 1, storage has version 1": a conflict between equal versions."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "hello")
        other = await open_other_store(make_config(), backend_name)
        try:
            assert await other.delete("c")
        finally:
            await other.close()
        with pytest.raises(ConversationConflictError) as deleted:
            await manager.add_message("user", "refused")
        assert "storage no longer has it (it was deleted)" in str(deleted.value)
        assert manager.messages == ()  # reloaded: what storage holds
        await manager.add_message("user", "a new start")
        other = await open_other_store(make_config(), backend_name)
        try:
            assert await other.delete("c")
        finally:
            await other.close()
        await write_elsewhere(make_config(), backend_name, "c", "another conversation, same id")
        with pytest.raises(ConversationConflictError) as created_again:
            await manager.add_message("user", "refused too")
        message = str(created_again.value)
        assert "this manager was at version 1, storage has another conversation under this id" in message
        assert "(it was deleted and created again)" in message
        assert [m.content for m in manager.messages] == ["another conversation, same id"]


async def test_a_message_added_while_the_manager_reloads_is_refused_or_kept(make_config: Any) -> None:
    """The reload switched the journal off while it read storage: a message another task added then
    was acknowledged, then the restored window replaced it: gone from the window, storage and memory.
    It now counts among the changes the reload drops, and its add raises the conflict."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "first")

        async def add() -> bool:
            await asyncio.sleep(0)  # the reload is reading storage now
            try:
                return await manager.add_message("user", "added during the reload")
            except ConversationConflictError:
                return False

        _, acknowledged = await asyncio.gather(manager.reload(), add())
        in_window = "added during the reload" in [m.content for m in manager.messages]
        assert in_window == acknowledged
    async with EnhancedContextManager(make_config(), conversation_id="c") as resumed:
        stored = "added during the reload" in [m.content for m in resumed.messages]
        assert stored == acknowledged, (
            "an acknowledged message was lost" if acknowledged else "a refused one kept"
        )


async def test_a_refusal_is_raised_once_to_the_change_it_dropped(make_config: Any, backend_name: str) -> None:
    """After one refused change, every flush() and every compress_context() with nothing to compress
    raised that refusal again, even after reload(), until the next change."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "hello")
        await write_elsewhere(make_config(), backend_name, "c", "from the other worker")
        with pytest.raises(ConversationConflictError):
            await manager.add_message("user", "refused")
        await manager.flush()  # nothing of its own to store: no error
        await manager.reload()
        await manager.flush()
        assert await manager.compress_context() is None
        await manager.add_message("user", "made again")
    async with EnhancedContextManager(make_config(), conversation_id="c") as resumed:
        assert [m.content for m in resumed.messages] == ["hello", "from the other worker", "made again"]


async def open_other_store(config: ContextManagerConfig, backend_name: str) -> Any:
    if backend_name == "sqlite":
        store = SQLiteConversationStore(config.resolved_storage_path / CONVERSATIONS_FILE_NAME)
        await store.open()
        return store
    from context_manager.core.conversations.postgres_store import PostgresConversationStore
    from context_manager.core.memory.postgres.database import PostgresDatabase

    assert config.postgres_dsn is not None
    database = PostgresDatabase(config.postgres_dsn.get_secret_value(), pool_size=1)
    await database.open()

    class Owned(PostgresConversationStore):
        async def close(self) -> None:
            await database.close()

    return Owned(database)


async def test_two_managers_on_one_conversation_lose_nothing_acknowledged(make_config: Any) -> None:
    """Two writers on one conversation, reloading on conflicts: two workers on one PostgreSQL, or two
    managers of one process sharing one embedded store."""
    config = make_config(max_tokens=800)

    acknowledged: list[str] = []
    conflicts = 0

    async def worker(manager: EnhancedContextManager, name: str) -> None:
        nonlocal conflicts
        for step in range(25):
            text = f"{name} says {step}"
            while True:
                try:
                    await manager.add_message("user", text)
                except ConversationConflictError:
                    conflicts += 1
                    await manager.reload()
                    continue
                acknowledged.append(text)
                break
            await asyncio.sleep(0)

    async with (
        EnhancedContextManager(config, conversation_id="team") as first,
        EnhancedContextManager(config, conversation_id="team") as second,
    ):
        await asyncio.gather(worker(first, "A"), worker(second, "B"))
        await second.reload()
        final = fingerprint(second)
    assert conflicts > 0  # they did collide
    async with EnhancedContextManager(config, conversation_id="team") as reader:
        assert fingerprint(reader) == final
        store = reader._conversation_store
        assert store is not None
        dump = await store.dump("team")
        assert dump is not None
    added = [payload["message"]["content"] for _, kind, _, payload, _ in dump.records if kind == "add"]
    assert sorted(added) == sorted(acknowledged)  # each acknowledged message stored exactly once
    assert len(set(added)) == len(added) == 50


async def run_script(script: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script arguments...`` from the repository root (it imports the test helpers)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def run_worker(
    storage: Path, dsn: str | None, conversation: str, count: int, kill_at: int | None
) -> list[dict[str, Any]]:
    process = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            str(storage),
            dsn or "-",
            conversation,
            str(count),
            "-" if kill_at is None else str(kill_at),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if kill_at is not None:
        assert process.returncode == -9, process.stderr[-3000:]
    else:
        assert process.returncode == 0, process.stderr[-3000:]
    return [json.loads(line) for line in process.stdout.splitlines()]


async def test_killed_writer_resumes_in_another_process_with_the_same_export(make_config: Any) -> None:
    config = make_config()
    lines = run_worker(config.resolved_storage_path, make_config.dsn, "crash", 200, kill_at=70)
    last = lines[-1]
    assert last["step"] == 70
    async with EnhancedContextManager(config, conversation_id="crash") as resumed:
        assert len(resumed.compression_history) >= 5
        assert fingerprint(resumed) == last["export"]
        # what compressions evicted reaches memory even though the writer died before indexing it
        found = await resumed.search_memory("delivery window for box 2")
        assert any("box 2 " in memory.content for memory in found)


def run_and_kill(storage: Path, dsn: str | None, after_lines: int) -> list[dict[str, Any]]:
    """Run a writer, SIGKILL it once it printed ``after_lines`` acknowledgements; every line it printed."""
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(storage), dsn or "-", "random", "100000", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(json.loads(line))
        if len(lines) == after_lines:
            break
    process.kill()
    process.wait()
    lines.extend(json.loads(line) for line in process.stdout.read().splitlines() if line.endswith("}"))
    return lines


async def test_a_writer_killed_at_a_random_moment_loses_nothing_acknowledged(make_config: Any) -> None:
    config = make_config()
    lines = run_and_kill(config.resolved_storage_path, make_config.dsn, after_lines=60)
    acknowledged = lines[-1]["acked"]
    async with EnhancedContextManager(config, conversation_id="random") as resumed:
        store = resumed._conversation_store
        assert store is not None
        dump = await store.dump("random")
        assert dump is not None
        stored = {payload["message"]["content"] for _, kind, _, payload, _ in dump.records if kind == "add"}
        assert set(acknowledged) <= stored
        # the resumed manager works on: its change is the next version
        before = resumed.conversation_version
        compressions = len(resumed.compression_history)
        await resumed.add_message("user", "after the crash")
        changes = 1 + len(resumed.compression_history) - compressions
        assert resumed.conversation_version == before + changes
        dump = await store.dump("random")
        assert dump is not None
        assert dump.version == resumed.conversation_version
        assert any(
            kind == "add" and payload["message"]["content"] == "after the crash"
            for _, kind, _, payload, _ in dump.records
        )


async def test_snapshots_keep_resuming_short_and_exact(make_config: Any) -> None:
    async with EnhancedContextManager(
        make_config(conversation_snapshot_every=10), conversation_id="s"
    ) as first:
        await write_conversation(first, 50)
        await first.flush()
        await first._conversation._wait_background()  # type: ignore[union-attr]
        expected = fingerprint(first)
        store = first._conversation_store
        assert store is not None
        stored = await store.load("s")
        assert stored.snapshot_version > 0
        assert len(stored.records) < 10 + 5  # only the tail after the snapshot is replayed
    async with EnhancedContextManager(make_config(), conversation_id="s") as resumed:
        assert fingerprint(resumed) == expected


async def test_a_history_added_in_a_loop_keeps_snapshots_within_snapshot_every(make_config: Any) -> None:
    """A loop adding one message after another (an import of an earlier chat) stored no snapshot while
    it ran: the snapshot was taken in a background task, which ran while the next add's write was under
    way and, finding that change not stored yet, gave up, every time. A worker killed after such a loop
    (no cleanup's snapshot) left every record to replay on resume. The window is now captured when the
    write that reaches snapshot_every returns (the state stored), and stored in the background."""
    every = 20
    config = make_config(max_tokens=100_000, conversation_snapshot_every=every)
    async with EnhancedContextManager(config, conversation_id="imported") as manager:
        for step in range(10 * every):
            await manager.add_message("user", f"turn {step}: notes about crate {step}")
        store = manager._conversation_store
        assert store is not None
        stored = await store.load("imported")  # what a process resuming now would replay
        assert stored.version == 10 * every
        # snapshots were stored as the loop went (each in the background while the next adds are stored,
        # the latest ones may still be on their way: how far they got depends on the machine's load)
        assert stored.snapshot_version > 0
        expected = manager.get_context(format="openai")
    async with EnhancedContextManager(config, conversation_id="imported") as resumed:
        assert resumed.get_context(format="openai") == expected


CUT_THEN_CRASH = """
import asyncio, json, os, signal, sys
from tests.core.conversations.conversation_worker import config_for
from context_manager import EnhancedContextManager

async def main(storage, dsn, flush_first):
    manager = EnhancedContextManager(config_for(storage, dsn), conversation_id="cut")
    await manager.initialize()
    text = "START of the pasted log " + " ".join(f"line{i}" for i in range(600)) + " END of the log"
    await manager.add_message("user", text)
    long_id = manager.messages[-1].id
    assert manager.messages[-1].content != text  # the newest request, kept as head + tail
    if flush_first == "yes":
        await manager.flush()  # its full text is in memory before the crash
    step = 0
    first = "question 0 about the payments build"
    while any(m.id == long_id or m.content == first for m in manager.messages):  # until both are evicted
        await manager.add_message("user", f"question {step} about the payments build")
        await manager.add_message("assistant", f"answer {step}: the build passed")
        step += 1
    print(json.dumps({"long_id": long_id, "text": text, "steps": step}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the memory writes of the latest compressions may be pending

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("stored_before_the_crash", ["yes", "no"])
async def test_a_message_cut_then_evicted_reaches_memory_whole_after_a_crash(
    make_config: Any, stored_before_the_crash: str
) -> None:
    """A resumed conversation hands memory what the live window handed it: the original of a message it
    cut, never the cut copy (which once went to memory as marker text, or collided with the original
    already stored under the same id and blocked every other evicted message of the batch)."""
    config = make_config()
    process = await run_script(
        CUT_THEN_CRASH,
        str(config.resolved_storage_path),
        make_config.dsn or "-",
        stored_before_the_crash,
    )
    assert process.returncode == -9, process.stderr[-3000:]
    written = json.loads(process.stdout.splitlines()[-1])
    async with EnhancedContextManager(config, conversation_id="cut") as resumed:
        requeued = [m for m in resumed.context_window.evicted_messages if m.id == written["long_id"]]
        assert all(m.content == written["text"] for m in requeued), "a cut copy was queued for memory"
        await resumed.flush()  # raised InvalidMemoryError when the original was stored before the crash
        assert resumed.context_window.evicted_messages == ()
        copies = [
            m
            for m in await resumed.memory_manager.stored_copies()
            if m.metadata.get("message_id") == written["long_id"]
        ]
        assert copies and all(m.content == written["text"] for m in copies), [m.content[-80:] for m in copies]
        assert len({m.id for m in copies}) == 1
        # every other message no longer in the window is in memory too (the batch was not blocked)
        in_window = {m.content for m in resumed.messages}
        questions = {f"question {step} about the payments build" for step in range(written["steps"])}
        in_memory = {m.content for m in await resumed.memory_manager.stored_copies()}
        assert questions - in_window, "no question was evicted: the test proves nothing"
        assert questions - in_window <= in_memory


# A second writer of one conversation (on PostgreSQL, where processes share it) compresses and dies before
# memory stored what it evicted (its writes hang); the first writer is refused, reloads, and either closes
# or dies right after its snapshot. Run by test_another_writers_evictions_survive_its_crash.
CRASHED_WRITER = """
import asyncio, json, os, signal, sys
from tests.core.conversations.conversation_worker import config_for
from context_manager import EnhancedContextManager
from context_manager.core.memory.manager import MemoryManager

async def hang(self, *args, **kwargs):
    await asyncio.Event().wait()

async def main(storage, dsn):
    MemoryManager.remember_messages = hang  # memory too slow: nothing evicted is stored before the crash
    manager = EnhancedContextManager(config_for(storage, dsn), conversation_id="two")
    await manager.initialize()
    before = {m.id: m.content for m in manager.messages}
    await manager.add_message("user", "B: " + " ".join(f"figure{i}" for i in range(260)))  # compresses
    after = {m.id for m in manager.messages}
    print(json.dumps({i: text for i, text in before.items() if i not in after}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(*sys.argv[1:]))
"""

FIRST_WRITER = """
import asyncio, json, os, signal, subprocess, sys
from tests.core.conversations.conversation_worker import config_for
from context_manager import ConversationConflictError, EnhancedContextManager

async def main(storage, other_storage, dsn, ending, script):
    config = config_for(storage, dsn).model_copy(update={"conversation_snapshot_every": 1})
    manager = EnhancedContextManager(config, conversation_id="two")
    await manager.initialize()
    for step in range(6):
        await manager.add_message("user", f"question {step} about the payments service build")
        await manager.add_message("assistant", f"answer {step}: the build passed in eu-west")
    await manager.flush()
    other = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, other_storage, dsn], capture_output=True, text=True
    )
    assert other.returncode == -9, other.stderr[-3000:]
    print(other.stdout.strip().splitlines()[-1], flush=True)
    try:
        await manager.add_message("user", "A: next question")
    except ConversationConflictError:
        await manager.add_message("user", "A: next question")
    else:
        raise AssertionError("the other writer's compression was not seen")
    if ending == "close":
        await manager.cleanup()
        return
    await asyncio.sleep(0.5)  # the background snapshot of the reloaded window
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("first_writer", ["close", "crash"])
async def test_another_writers_evictions_survive_its_crash(
    postgres_dsn: str, tmp_path: Path, first_writer: str
) -> None:
    """B compressed and died before memory stored what it evicted. A, refused, reloaded B's compression;
    when A closed, it moved the indexing watermark past it (its own queue was empty) and a resume no longer
    re-queued B's messages; when A died after a snapshot, the snapshot listed only A's own queue. Either
    way B's evicted messages were in no memory and in no queue. A now takes them over when it loads."""
    process = await run_script(
        FIRST_WRITER,
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        postgres_dsn,
        first_writer,
        CRASHED_WRITER,
    )
    assert process.returncode == (0 if first_writer == "close" else -9), process.stderr[-3000:]
    evicted_by_b: dict[str, str] = json.loads(process.stdout.splitlines()[-1])
    assert evicted_by_b, "B's message compressed nothing: the test proves nothing"
    config = ContextManagerConfig(
        storage_path=tmp_path / "c",
        max_tokens=600,
        memory_backend="postgres",
        postgres_dsn=postgres_dsn,
        postgres_pool_size=2,
    )
    async with EnhancedContextManager(config, conversation_id="two") as resumed:
        await resumed.flush()
        stored = {
            m.metadata.get("message_id"): m.content for m in await resumed.memory_manager.stored_copies()
        }
    missing = {i: text for i, text in evicted_by_b.items() if stored.get(i) != text}
    assert not missing, f"evicted by B, in no memory: {missing}"


async def test_a_refused_compression_made_again_queues_each_message_once(
    make_config: Any, backend_name: str
) -> None:
    """The refused add's compression had queued what it evicted; the reload put those messages back in the
    window and left them queued, and the retried add queued them again: memory refused the batch (ids
    repeated in one call) and snapshots stored the duplicates. (Another worker writes while the summarizer
    runs: before the compression, the overflow check found the conversation current.)"""
    other_writes = False

    async def summarizer(messages: list[Any], budget: int) -> str:
        nonlocal other_writes
        if other_writes:  # another worker stores a change while this compression is being prepared
            other_writes = False
            await write_elsewhere(make_config(), backend_name, "dup", "short note from the other worker")
        return "earlier: questions about the payments service build"

    config = make_config(max_tokens=300)
    async with EnhancedContextManager(config, conversation_id="dup", summarizer=summarizer) as manager:
        for step in range(8):
            await manager.add_message("user", f"question {step} about the payments service build status")
            await manager.add_message("assistant", f"answer {step}: the build passed its tests in eu-west")
        await manager.flush()
        gate = asyncio.Event()
        remember = manager.memory_manager.remember_messages

        async def slow_memory(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await remember(*args, **kwargs)

        manager.memory_manager.remember_messages = slow_memory  # type: ignore[method-assign]
        other_writes = True
        big = "A: " + " ".join(f"word{i}" for i in range(60))
        try:
            with pytest.raises(ConversationConflictError):
                await manager.add_message("user", big)  # compresses, then the write is refused
            # what the refused compression evicted is back in the window: it is not queued for memory
            assert manager.context_window.evicted_messages == ()
            await manager.add_message("user", big)  # compresses again
            queued = [m.id for m in manager.context_window.evicted_messages]
            assert len(queued) == len(set(queued)), f"queued twice: {sorted(queued)}"
        finally:
            gate.set()
        await manager.flush()
        assert manager.context_window.evicted_messages == ()
        ids = [m.metadata.get("message_id") for m in await manager.memory_manager.stored_copies()]
        window = {m.id for m in manager.messages}
        assert set(queued) - window <= set(ids)


# A worker adds the model's tool calls, starts running them and dies before any result is added.
KILLED_WHILE_TOOLS_RUN = """
import asyncio, os, signal, sys
from tests.core.conversations.conversation_worker import config_for
from context_manager import EnhancedContextManager

async def main(storage, dsn):
    manager = EnhancedContextManager(config_for(storage, dsn), conversation_id="tools")
    await manager.initialize()
    await manager.add_message("user", "Where are parcels 7 and 8?")
    calls = [
        {"id": "call-7", "name": "track", "arguments": {"parcel": 7}},
        {"id": "call-8", "name": "track", "arguments": {"parcel": 8}},
    ]
    await manager.add_message("assistant", "Let me check both.", tool_calls=calls)
    os.kill(os.getpid(), signal.SIGKILL)  # the tools were running; no result was added

asyncio.run(main(*sys.argv[1:]))
"""


async def test_tool_calls_left_by_a_killed_worker_can_be_cancelled_after_resuming(make_config: Any) -> None:
    """The calls a killed worker was running stay pending in the resumed conversation, never evicted and
    left out of exports; cancel_tool_calls answers them (persisted), and then they compress like the rest."""
    config = make_config()
    process = await run_script(
        KILLED_WHILE_TOOLS_RUN,
        str(config.resolved_storage_path),
        make_config.dsn or "-",
    )
    assert process.returncode == -9, process.stderr[-3000:]
    async with EnhancedContextManager(config, conversation_id="tools") as resumed:
        assert [(c.id, c.name, c.arguments) for c in resumed.pending_tool_calls()] == [
            ("call-7", "track", {"parcel": 7}),
            ("call-8", "track", {"parcel": 8}),
        ]
        assert resumed.get_context_summary()["pending_tool_calls"] == 2
        assert "tool_calls" not in json.dumps(resumed.get_context(format="openai"))
        results = await resumed.cancel_tool_calls(reason="the worker running it stopped")
        assert [(r.call_id, r.error_type) for r in results] == [
            ("call-7", "cancelled"),
            ("call-8", "cancelled"),
        ]
        assert resumed.pending_tool_calls() == []
        expected = fingerprint(resumed)
        openai = resumed.get_context(format="openai")
        assert [m["role"] for m in openai] == ["user", "assistant", "tool", "tool"]  # type: ignore[index]
        assert openai[2]["content"] == "Error (cancelled): the worker running it stopped"  # type: ignore[index]
    async with EnhancedContextManager(config, conversation_id="tools") as again:
        assert fingerprint(again) == expected  # the answers were stored
        for step in range(12):
            await again.add_message("user", f"turn {step}: " + " ".join(["more"] * 40))
        assert again.compression_history
        assert not any(m.tool_calls or m.role.value == "tool" for m in again.messages)


# A worker runs the model's tool calls through execute_tool_calls and dies while the tool runs.
KILLED_INSIDE_EXECUTE_TOOL_CALLS = """
import asyncio, os, signal, sys
from tests.core.conversations.conversation_worker import config_for
from context_manager import EnhancedContextManager

async def main(storage, dsn):
    manager = EnhancedContextManager(config_for(storage, dsn), conversation_id="tools")
    await manager.initialize()

    async def charge(amount: int) -> str:
        print("charging", amount, flush=True)  # the side effect happened
        os.kill(os.getpid(), signal.SIGKILL)
        return "charged"

    manager.tool_manager.register_function_tool("charge", charge, "Charge the card")
    await manager.add_message("user", "Please pay the invoice of 40 euros.")
    await manager.execute_tool_calls(
        [{"id": "call-1", "name": "charge", "arguments": {"amount": 40}}], content="Paying it now."
    )

asyncio.run(main(*sys.argv[1:]))
"""


async def test_calls_of_execute_tool_calls_are_stored_before_the_tools_run(make_config: Any) -> None:
    """execute_tool_calls stored the assistant message with the calls only with the results: a worker
    killed while the tool ran left no trace of the calls (the tool had charged the card), so the resumed
    conversation could not see them pending, cancel them, or know that they ran."""
    config = make_config()
    process = await run_script(
        KILLED_INSIDE_EXECUTE_TOOL_CALLS,
        str(config.resolved_storage_path),
        make_config.dsn or "-",
    )
    assert process.returncode == -9, process.stderr[-3000:]
    assert "charging 40" in process.stdout
    async with EnhancedContextManager(config, conversation_id="tools") as resumed:
        contents = [m.content for m in resumed.messages]
        assert contents == ["Please pay the invoice of 40 euros.", "Paying it now."]
        assert [(c.id, c.name) for c in resumed.pending_tool_calls()] == [("call-1", "charge")]
        await resumed.cancel_tool_calls(reason="the worker stopped while charging")
        assert resumed.pending_tool_calls() == []


async def test_execute_tool_calls_runs_nothing_when_another_writer_wrote_first(
    make_config: Any, backend_name: str
) -> None:
    """The calls are stored before the tools run: a conflict is met then, before any side effect."""
    config = make_config()
    ran: list[int] = []

    async def charge(amount: int) -> str:
        ran.append(amount)
        return "charged"

    async with EnhancedContextManager(config, conversation_id="pay") as manager:
        manager.tool_manager.register_function_tool("charge", charge, "Charge the card")
        await manager.add_message("user", "Please pay the invoice of 40 euros.")
        await write_elsewhere(config, backend_name, "pay", "from the other worker")
        with pytest.raises(ConversationConflictError):
            await manager.execute_tool_calls(
                [{"id": "call-1", "name": "charge", "arguments": {"amount": 40}}], content="Paying it now."
            )
        assert ran == []
        assert manager.messages[-1].content == "from the other worker" and manager.pending_tool_calls() == []
        results = await manager.execute_tool_calls(
            [{"id": "call-1", "name": "charge", "arguments": {"amount": 40}}], content="Paying it now."
        )
        assert [r.result for r in results] == ["charged"] and ran == [40]
        final = fingerprint(manager)
    async with EnhancedContextManager(config, conversation_id="pay") as resumed:
        assert fingerprint(resumed) == final


async def test_results_of_tools_that_ran_survive_another_writers_change(
    make_config: Any, backend_name: str
) -> None:
    """Another writer stored a change while the tool ran: the results' write was refused, the reload
    dropped them and execute_tool_calls raised the conflict ("make it again"): the tool had run, its result
    was neither returned nor in the window, and the only way on was running it a second time."""
    config = make_config()
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    async def charge(amount: int) -> str:
        ran.append(amount)
        started.set()
        await release.wait()
        return f"charged {amount}"

    async with EnhancedContextManager(config, conversation_id="pay") as manager:
        manager.tool_manager.register_function_tool("charge", charge, "Charge the card")
        await manager.add_message("user", "Please pay the invoice of 40 euros.")
        running = asyncio.create_task(
            manager.execute_tool_calls(
                [{"id": "call-1", "name": "charge", "arguments": {"amount": 40}}], content="Paying it now."
            )
        )
        await started.wait()
        await write_elsewhere(config, backend_name, "pay", "from the other worker")
        release.set()
        results = await running
        assert [r.result for r in results] == ["charged 40"] and ran == [40]
        assert [m.content for m in manager.messages] == [
            "Please pay the invoice of 40 euros.",
            "Paying it now.",
            "charged 40",  # right after its call
            "from the other worker",
        ]
        assert manager.pending_tool_calls() == []
        final = fingerprint(manager)
    async with EnhancedContextManager(config, conversation_id="pay") as resumed:
        assert fingerprint(resumed) == final


async def test_results_that_need_a_compression_survive_another_writers_change(
    make_config: Any, backend_name: str
) -> None:
    """Another writer stored a change while the tool ran, and the window had no room for the result
    without compressing: the overflow check met the conflict while the result was being added, and
    execute_tool_calls raised it although the tool had run (result lost, call left pending, "make it
    again": the tool would run twice)."""
    config = make_config(max_tokens=300)
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    async def report(day: int) -> str:
        ran.append(day)
        started.set()
        await release.wait()
        return f"report of day {day}: " + " ".join(f"line{i}" for i in range(100))

    async with EnhancedContextManager(config, conversation_id="full") as manager:
        manager.tool_manager.register_function_tool("report", report, "Read a report")
        number = 0
        while manager.get_context_summary()["token_count"] < 200:
            await manager.add_message("user", f"question {number} about the payments service build status")
            number += 1
        assert manager.compression_history == []
        running = asyncio.create_task(
            manager.execute_tool_calls(
                [{"id": "call-1", "name": "report", "arguments": {"day": 3}}], content="Reading it."
            )
        )
        await started.wait()
        await write_elsewhere(config, backend_name, "full", "from the other worker")
        release.set()
        results = await running
        assert ran == [3] and results[0].success and results[0].result.startswith("report of day 3")
        assert manager.pending_tool_calls() == []
        answer = next(m for m in manager.messages if m.tool_call_id == "call-1")
        assert answer.content.startswith("report of day 3")
        assert "from the other worker" in [m.content for m in manager.messages]
        assert len(manager.compression_history) == 1  # the result made room on the stored window
        await manager.add_message("user", "thanks")  # not stale
        final = fingerprint(manager)
    async with EnhancedContextManager(config, conversation_id="full") as resumed:
        assert fingerprint(resumed) == final


async def test_an_add_cancelled_while_its_write_commits_breaks_no_later_write(make_config: Any) -> None:
    """The store committed a batch while the add that was writing it got cancelled: the manager missed
    the new version, so the next write (another add's, in the same manager) was refused as a conflict
    that never was, and that add was told its stored message was not made."""
    async with EnhancedContextManager(make_config(), conversation_id="c") as manager:
        await manager.add_message("user", "first")
        conversation = manager._conversation
        assert conversation is not None
        store = conversation.store
        real_append = store.append
        committed, release = asyncio.Event(), asyncio.Event()

        async def append(*args: Any, **kwargs: Any) -> int:
            version: int = await real_append(*args, **kwargs)  # the real write, committed
            committed.set()
            await release.wait()  # ...and the caller's await cancelled before it sees the version
            return version

        store.append = append  # type: ignore[method-assign]
        adding = asyncio.create_task(manager.add_message("user", "A"))
        await committed.wait()
        store.append = real_append  # type: ignore[method-assign]
        other = asyncio.create_task(manager.add_message("user", "B"))  # waits for the write lock
        await asyncio.sleep(0)
        adding.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await adding
        assert await other is True
        assert await manager.add_message("user", "C") is True
        assert [m.content for m in manager.messages] == ["first", "A", "B", "C"]
    async with EnhancedContextManager(make_config(), conversation_id="c") as resumed:
        assert [m.content for m in resumed.messages] == ["first", "A", "B", "C"]


async def test_an_add_made_after_a_reload_is_not_refused_with_the_changes_it_dropped(
    make_config: Any,
) -> None:
    """A compression (C) waits for its summarizer; reload() waits for the window; then X is added. The
    reload drops C's change, and X, committed after the reload, was told it was refused too (its range
    of changes was counted from before C's), although it is in the window and stored."""
    summarizing, gate = asyncio.Event(), asyncio.Event()

    async def summarizer(messages: Any, budget: int) -> str:
        summarizing.set()
        await gate.wait()
        return "summary of the earlier turns"

    config = make_config(max_tokens=300, summarizer_timeout=30)
    async with EnhancedContextManager(config, conversation_id="c", summarizer=summarizer) as manager:
        number = 0
        while manager.get_context_summary()["token_count"] < 250:
            await manager.add_message("user", f"filler message {number} about nothing in particular")
            number += 1
        compressing = asyncio.create_task(manager.add_message("user", "C compresses " + "word " * 80))
        await summarizing.wait()
        reloading = asyncio.create_task(manager.reload())
        window = manager.context_window
        for _ in range(400):  # the reload has read storage and waits for the window
            if window._lock._waiters:  # noqa: SLF001 - the moment this test is about
                break
            await asyncio.sleep(0.005)
        else:
            pytest.fail("the reload never waited for the window")
        adding = asyncio.create_task(manager.add_message("user", "X after the reload"))
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(ConversationConflictError, match=r"was reloaded from storage \(`reload\(\)`\)"):
            await compressing
        await reloading
        assert await adding is True
        assert "X after the reload" in [m.content for m in manager.messages]
    async with EnhancedContextManager(config, conversation_id="c") as resumed:
        assert "X after the reload" in [m.content for m in resumed.messages]


async def test_cleanup_stores_the_results_of_tools_still_running(make_config: Any) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(x: int) -> str:
        started.set()
        await release.wait()
        return f"result {x}"

    manager = EnhancedContextManager(make_config(), conversation_id="c")
    await manager.initialize()
    manager.tool_manager.register_function_tool("slow", slow, "Slow")
    await manager.add_message("user", "run the tool")
    running = asyncio.create_task(
        manager.execute_tool_calls([{"id": "call_1", "name": "slow", "arguments": {"x": 1}}])
    )
    await started.wait()
    closing = asyncio.create_task(manager.cleanup())
    await asyncio.sleep(0.02)
    release.set()
    await closing
    assert [result.result for result in await running] == ["result 1"]
    async with EnhancedContextManager(make_config(), conversation_id="c") as resumed:
        assert resumed.pending_tool_calls() == []
        assert [m.role.value for m in resumed.messages] == ["user", "assistant", "tool"]


async def fill(manager: EnhancedContextManager, turns: int) -> None:
    for step in range(turns):
        await manager.add_message("user", f"question {step} about the payments service build status")


async def compress_elsewhere(
    config: ContextManagerConfig, backend_name: str, conversation: str, target_tokens: int
) -> None:
    """Another writer (a window persisted through a store on the same storage) compresses the conversation."""
    from context_manager.core.context_window import ContextWindow
    from context_manager.core.conversations.persistence import PersistedConversation

    other = await open_other_store(config, backend_name)
    try:
        window = ContextWindow(config.max_tokens)
        persisted = PersistedConversation(other, conversation, window)
        await persisted.open()
        assert await window.compress(target_tokens) is not None
        await persisted.sync()
        await persisted.close()
    finally:
        await other.close()


@pytest.mark.parametrize("change", ["add_message", "add_messages", "execute_tool_calls"])
async def test_a_stale_writer_with_a_full_window_gets_the_conflict_not_a_budget_error(
    make_config: Any, backend_name: str, change: str
) -> None:
    """The stale window was full, so the change raised ContextBudgetError: misleading, as the stored
    conversation (another worker compressed it) has room. The conflict comes first, nothing is lost."""
    config = make_config(max_tokens=300, enable_compression=False)
    text = "one more question about the payments service build status, the eu-west one"
    ran: list[str] = []

    async def lookup(build: str) -> str:
        ran.append(build)
        return f"build {build} passed"

    async def make_change(manager: EnhancedContextManager) -> None:
        if change == "add_message":
            await manager.add_message("user", text)
        elif change == "add_messages":
            await manager.add_messages([{"role": "user", "content": text}])
        else:
            calls = [{"id": f"call_{len(ran)}", "name": "lookup", "arguments": {"build": "eu-west"}}]
            await manager.execute_tool_calls(calls, content=text)

    async with EnhancedContextManager(config, conversation_id="full") as manager:
        manager.tool_manager.register_function_tool("lookup", lookup, "Look a build up")
        with pytest.raises(ContextBudgetError):  # the window is full: a budget error on current state
            await fill(manager, 40)
        with pytest.raises(ContextBudgetError):  # still current: the budget error is the real one
            await make_change(manager)
        await compress_elsewhere(config, backend_name, "full", 120)
        with pytest.raises(ConversationConflictError):
            await make_change(manager)
        assert ran == []  # no tool ran
        assert len(manager.compression_history) == 1  # reloaded: the other worker's compression
        await make_change(manager)  # there is room in the stored window
        assert text in [m.content for m in manager.messages]
        final = fingerprint(manager)
    async with EnhancedContextManager(config, conversation_id="full") as resumed:
        assert fingerprint(resumed) == final


async def test_a_stale_writer_does_not_compress_its_stale_window_before_the_conflict(
    make_config: Any, backend_name: str
) -> None:
    """The stale add compressed its window (summarizer called, messages queued for memory) then met the
    conflict: the work thrown away, evictions queued from a window storage never held. The conflict
    comes first, before anything changes."""
    config = make_config(max_tokens=300)
    summarized: list[list[str]] = []

    async def summarizer(messages: list[Any], budget: int) -> str:  # an LLM call: money and seconds
        summarized.append([m.content for m in messages])
        return "earlier: questions about the payments service build"

    async with EnhancedContextManager(config, conversation_id="full", summarizer=summarizer) as manager:
        await fill(manager, 10)
        assert manager.compression_history == []
        await write_elsewhere(config, backend_name, "full", "from the other worker")
        big = "A: " + " ".join(f"word{i}" for i in range(120))
        with pytest.raises(ConversationConflictError):
            await manager.add_message("user", big)  # would compress its stale window
        assert summarized == []  # nothing was summarized or evicted for a window storage never held
        await manager.flush()
        assert await manager.memory_manager.stored_copies() == []
        assert manager.messages[-1].content == "from the other worker"  # reloaded
        await manager.add_message("user", big)  # compresses the stored window
        assert len(manager.compression_history) == len(summarized) == 1
        final = fingerprint(manager)
    async with EnhancedContextManager(config, conversation_id="full") as resumed:
        assert fingerprint(resumed) == final


async def test_an_add_cancelled_while_it_reloads_after_the_overflow_check_leaves_no_stale_window(
    make_config: Any, backend_name: str
) -> None:
    """The overflow check met another writer's change; the add was cancelled (its caller's timeout) while
    it reloaded: the conversation stayed stale, and every later change was refused with a conflict until
    reload() (a refused write reloads to the end, cancelled or not: this one now does too)."""
    config = make_config(max_tokens=300)
    async with EnhancedContextManager(config, conversation_id="full") as manager:
        await fill(manager, 10)
        await write_elsewhere(config, backend_name, "full", "from the other worker")
        conversation = manager._conversation
        assert conversation is not None
        store = conversation.store
        real_load = store.load
        loading, release = asyncio.Event(), asyncio.Event()

        async def load(*args: Any, **kwargs: Any) -> Any:
            loading.set()
            await release.wait()
            return await real_load(*args, **kwargs)

        store.load = load  # type: ignore[method-assign]
        big = "A: " + " ".join(f"word{i}" for i in range(120))
        adding = asyncio.create_task(manager.add_message("user", big))  # overflows: the check, the reload
        await loading.wait()
        adding.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await adding
        store.load = real_load  # type: ignore[method-assign]
        assert not conversation.is_stale
        assert manager.messages[-1].content == "from the other worker"  # reloaded
        await manager.add_message("user", "after the cancelled add")
        final = fingerprint(manager)
    async with EnhancedContextManager(config, conversation_id="full") as resumed:
        assert fingerprint(resumed) == final


async def test_a_refused_compression_writes_nothing_it_evicted_to_memory(make_config: Any) -> None:
    """Two managers on one conversation; the first one's compression waits on a slow summarizer while the
    second one adds a message. The compression is refused (a conflict), but the eviction writer had already
    written what it evicted to memory: after the reload, search_memory returned messages still in the
    window. Now a compression's evictions reach memory only once its record is stored."""
    in_summarizer = asyncio.Event()

    async def summarizer(messages: list[Any], budget: int) -> str:
        in_summarizer.set()
        await asyncio.sleep(0.5)  # a slow LLM call
        return "earlier: questions about the payments service build"

    config = make_config(max_tokens=300, summarizer_timeout=30)
    async with (
        EnhancedContextManager(config, conversation_id="slow", summarizer=summarizer) as first,
        EnhancedContextManager(make_config(max_tokens=300), conversation_id="slow") as second,
    ):
        for step in range(8):
            await first.add_message("user", f"question {step} about the quartz build of team {step}")
            await first.add_message("assistant", f"answer {step}: the quartz build {step} passed in eu-west")
        await first.flush()
        await second.reload()
        big = "A: " + " ".join(f"word{i}" for i in range(50))
        adding = asyncio.ensure_future(first.add_message("user", big))  # compresses, slowly
        await asyncio.wait_for(in_summarizer.wait(), 10)
        await second.add_message("user", "the other worker's short note")  # stored first
        with pytest.raises(ConversationConflictError):
            await adding
        window = {m.id for m in first.messages}
        assert any("quartz" in m.content for m in first.messages), "the reload kept nothing to check"
        found = await first.search_memory("quartz build", limit=50)
        in_memory = await first.memory_manager.stored_copies()
        assert not [m.content for m in found if m.metadata.get("message_id") in window]
        assert not [m.content for m in in_memory if m.metadata.get("message_id") in window]
        # nothing acknowledged is lost: the other worker's note and every message are in the window
        contents = [m.content for m in first.messages]
        assert "the other worker's short note" in contents
        assert sum("quartz" in c for c in contents) == 16
        # the add made again compresses, stores its record, and then what it evicted reaches memory
        await first.add_message("user", big)
        await first.flush()
        window = {m.id for m in first.messages}
        stored = {m.metadata.get("message_id") for m in await first.memory_manager.stored_copies()}
        assert stored, "the accepted compression wrote nothing to memory"
        assert not stored & window
