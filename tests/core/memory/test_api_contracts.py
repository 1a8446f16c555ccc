"""Contracts of the memory API an experienced user of mem0 or Letta relies on: an import never replaces
another user's memory, numbers computed with numpy are taken where Python numbers are, and a failed
update leaves the memory as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from context_manager.core.errors import InvalidMemoryError
from context_manager.core.memory.manager import ALL_USERS, MemoryManager


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
