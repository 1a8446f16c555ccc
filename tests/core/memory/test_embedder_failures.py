"""A failing embedder (out of memory, a model file missing) costs the vector channel, never a memory.

Before: ``add_memory`` raised the model's own error after its memory was committed (a retry stored it
twice), ``search_memory`` failed although the words could answer, and the eviction writer kept evicted
messages out of memory while the model failed. Both backends, a real embedder that fails on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.memory import tiers
from context_manager.core.memory.manager import MemoryManager
from context_manager.testing import HashingEmbedder


class FailingEmbedder(HashingEmbedder):
    """The hashing embedder, failing while ``failing`` is set (as a model out of memory would)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def embed(self, texts: Sequence[str]) -> Any:
        if self.failing:
            raise RuntimeError("CUDA out of memory")
        return super().embed(texts)


async def test_a_failing_embedder_stores_the_memory_once_and_words_still_find_it(
    config: ContextManagerConfig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiers, "_last_embed_warning", -tiers._EMBED_WARNING_EVERY)  # a warning a minute
    embedder = FailingEmbedder()
    async with MemoryManager(config, embedder=embedder) as manager:
        await manager.add_memory("the invoice for March was paid by bank transfer")
        embedder.failing = True
        with caplog.at_level(logging.WARNING, logger="context_manager"):
            stored = await manager.add_memory("the customer asked for a refund of the helmet")
            found = await manager.search_memory("refund helmet")
            again = await manager.add_memory("a second refund request arrived on Friday")
        assert [m.id for m in found][:1] == [stored.id]
        contents = sorted(m.content for m in await manager.stored_copies())
        assert contents == sorted(
            [
                "the invoice for March was paid by bank transfer",
                "the customer asked for a refund of the helmet",
                "a second refund request arrived on Friday",
            ]
        )
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings  # one warning, not one per call
        assert "CUDA out of memory" in warnings[0] and "without their vectors" in warnings[0]
        assert manager.backend is not None
        assert set(await manager.backend.vectors_of([stored.id, again.id])) == set()
    embedder.failing = False
    async with MemoryManager(config, embedder=embedder) as manager:  # the vector channel catches up
        assert manager.backend is not None
        assert set(await manager.backend.vectors_of([stored.id, again.id])) == {stored.id, again.id}


async def test_evicted_messages_reach_memory_while_the_embedder_fails(tmp_path: Path) -> None:
    embedder = FailingEmbedder()
    embedder.failing = True
    config = ContextManagerConfig(max_tokens=300, cache_path=tmp_path / "cache", enable_health_checks=False)
    async with EnhancedContextManager(config, embedder=embedder) as manager:
        await manager.add_message("user", "My order 1042 shipped with tracking number TRK-88231-PT.")
        for turn in range(20):
            await manager.add_message("user", f"Question {turn}: can I change the delivery address?")
            await manager.add_message("assistant", f"Answer {turn}: yes, until the parcel ships.")
        assert manager.compression_history
        await manager.flush()
        found = await manager.search_memory("tracking number of order 1042", limit=5)
        assert any(m.content.startswith("My order 1042 shipped") for m in found), found
        assert manager.context_window.evicted_messages == ()
