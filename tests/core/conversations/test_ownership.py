"""A conversation created by a manager with a user_id belongs to that user (both backends)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from context_manager import (
    ContextManagerConfig,
    ContextManagerError,
    ConversationAccessError,
    ConversationConflictError,
    EnhancedContextManager,
    HealthChecker,
    HealthState,
)
from context_manager.core.shared_store import _registry


@pytest.fixture
def config(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> ContextManagerConfig:
    options: dict[str, Any] = {"storage_path": tmp_path / "storage", "max_tokens": 600}
    if backend_name == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        options.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
    return ContextManagerConfig(**options)


async def test_only_the_owner_opens_a_users_conversation(config: ContextManagerConfig) -> None:
    async with EnhancedContextManager(config, conversation_id="chat-1", user_id="ana") as ana:
        await ana.add_message("user", "my card number ends in 4242")
        exported = ana.get_context()
    for intruder in ("bo", None):
        manager = EnhancedContextManager(config, conversation_id="chat-1", user_id=intruder)
        with pytest.raises(ConversationAccessError) as caught:
            await manager.initialize()
        assert isinstance(caught.value, ContextManagerError) and isinstance(caught.value, PermissionError)
        assert caught.value.conversation_id == "chat-1" and caught.value.user_id == intruder
        assert "belongs to another end user" in str(caught.value)
        assert "'ana'" not in str(caught.value)  # whose it is stays private
        if intruder is None:  # a manager without a user_id deletes any conversation: it is told so
            assert "a manager without a user_id cannot open it (" in str(caught.value)
        assert not manager.is_initialized
        assert not _registry  # the refused manager gave the store back
        await manager.cleanup()
    async with EnhancedContextManager(config, conversation_id="chat-1", user_id="ana") as again:
        assert again.get_context() == exported  # the refusals changed nothing
        await again.add_message("user", "and it expires next year")
    async with EnhancedContextManager(config, user_id="bo") as bo:  # bo's own work is unaffected
        assert await bo.list_conversations() == []


async def test_listing_and_deleting_see_the_users_own(config: ContextManagerConfig) -> None:
    for conversation, user in (("a-1", "ana"), ("a-2", "ana"), ("b-1", "bo"), ("anyone", None)):
        async with EnhancedContextManager(config, conversation_id=conversation, user_id=user) as manager:
            await manager.add_message("user", f"hello from {conversation}")
    async with EnhancedContextManager(config, user_id="ana") as ana:
        listed = await ana.list_conversations()
        assert sorted(row["conversation_id"] for row in listed) == ["a-1", "a-2"]
        assert {row["user_id"] for row in listed} == {"ana"}
        with pytest.raises(ConversationAccessError):
            await ana.delete_conversation("b-1")
        assert await ana.delete_conversation("a-2")
        assert not await ana.delete_conversation("a-2")  # gone
    async with EnhancedContextManager(config) as everyone:  # no user_id: every conversation
        listed = await everyone.list_conversations()
        owners = {row["conversation_id"]: row["user_id"] for row in listed}
        assert owners == {"a-1": "ana", "b-1": "bo", "anyone": None}
        assert await everyone.delete_conversation("b-1")


async def test_a_conversation_of_nobody_stays_open_to_every_manager(config: ContextManagerConfig) -> None:
    async with EnhancedContextManager(config, conversation_id="legacy") as manager:
        await manager.add_message("user", "written before users")
    async with EnhancedContextManager(config, conversation_id="legacy", user_id="ana") as ana:
        assert [m.content for m in ana.messages] == ["written before users"]
        await ana.add_message("user", "ana goes on")
        assert await ana.list_conversations() == []  # not hers: nobody's
    async with EnhancedContextManager(config) as everyone:
        [row] = await everyone.list_conversations()
        assert row["conversation_id"] == "legacy" and row["user_id"] is None


async def test_a_conversations_file_from_before_owners_opens(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir(mode=0o700)
    database = sqlite3.connect(storage / "conversations.sqlite3")
    database.executescript(
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "snapshot_version INTEGER NOT NULL DEFAULT 0, snapshot TEXT, indexed_version INTEGER NOT NULL "
        "DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL);"
        "INSERT INTO conversations VALUES ('old', 0, 0, NULL, 0, 1.0, 1.0);"
    )
    database.close()
    config = ContextManagerConfig(storage_path=storage, max_tokens=600)
    async with EnhancedContextManager(config, conversation_id="new", user_id="ana") as ana:
        await ana.add_message("user", "hello")
        assert [row["conversation_id"] for row in await ana.list_conversations()] == ["new"]
    async with EnhancedContextManager(config) as everyone:
        owners = {row["conversation_id"]: row["user_id"] for row in await everyone.list_conversations()}
        assert owners == {"new": "ana", "old": None}


async def test_losing_the_race_to_create_an_id_says_it_is_another_users(config: ContextManagerConfig) -> None:
    """Two users' managers open one new id; the first add creates it for its user. The other's add is
    refused, and its automatic reload is refused too (the id is another user's): the error said "call
    reload()", which can never succeed there."""
    ana = EnhancedContextManager(config, conversation_id="new-chat", user_id="ana")
    bo = EnhancedContextManager(config, conversation_id="new-chat", user_id="bo")
    async with ana, bo:
        await ana.add_message("user", "ana's first message")
        with pytest.raises(ConversationConflictError) as caught:
            await bo.add_message("user", "bo's first message")
        text = str(caught.value)
        assert caught.value.needs_reload
        assert "belongs to another end user" in text and "another conversation_id" in text, text
        assert "call it, then make the change again" not in text, text
        assert "'ana'" not in text  # whose it is stays private
        assert caught.value.owned_by_another_user
        assert bo.get_context() == []  # bo's change was taken back
        # the health check says what to do, and offers no repair (a reload can never succeed)
        status = await HealthChecker(context_manager=bo, enable_auto_recovery=True).perform_health_check()
        writes = status.checks["storage_writes"]
        assert writes.status is HealthState.DEGRADED and writes.details["conversation_stale"] is True
        assert "another end user's manager created this id first" in writes.message
        assert writes.recommendation is not None and "another conversation_id" in writes.recommendation
        assert "reload()" not in writes.recommendation and status.recoveries == []
    async with EnhancedContextManager(config, conversation_id="new-chat", user_id="ana") as again:
        assert [message["content"] for message in again.get_context()] == ["ana's first message"]
