"""Invariant 4: every message evicted by compression is retrievable from memory afterwards.

A background writer indexes evicted messages after ``add_message`` returns; ``search_memory`` waits for
it, and ``flush()`` (or ``cleanup()``) does before anything reads memory directly.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.memory.models import MemoryTier


async def test_fact_from_an_evicted_message_is_found(tmp_path: Path) -> None:
    config = ContextManagerConfig(max_tokens=400, compression_ratio=0.7, cache_path=tmp_path / "cache")
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("system", "You are a helpful assistant.")
        await manager.add_message("user", "By the way, my dentist appointment is on the fourteenth at 9am.")
        fact_id = manager.messages[-1].id
        for i in range(80):
            await manager.add_message(
                "user", f"Question {i}: tell me about sorting algorithms and their costs."
            )
            await manager.add_message(
                "assistant", f"Answer {i}: merge sort is O(n log n); quicksort averages that."
            )
        assert len(manager.compression_history) >= 3
        assert fact_id not in {m.id for m in manager.messages}
        results = await manager.search_memory("when is my dentist appointment", limit=3)
        assert results, "the evicted fact was not found"
        top = results[0]
        assert "dentist" in top.content
        assert top.source == "context" and top.tier is MemoryTier.MEDIUM
        assert top.metadata["role"] == "user" and top.metadata["message_id"] == fact_id
        assert top.metadata["speaker"] == "user"
        assert {"timestamp", "session_id", "turn_index", "session_date"} <= set(top.metadata)


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=20, max_size=60))
def test_every_evicted_message_is_in_memory(lengths: list[int]) -> None:
    import asyncio
    import tempfile

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            config = ContextManagerConfig(max_tokens=300, compression_ratio=0.6, cache_path=directory)
            async with EnhancedContextManager(config) as manager:
                added = []
                for number, length in enumerate(lengths):
                    role = "user" if number % 2 == 0 else "assistant"
                    await manager.add_message(role, f"message {number} " + "lorem " * length)
                    added.append(manager.messages[-1].id)
                kept = {m.id for m in manager.messages}
                await manager.flush()  # the background writer stores what is still queued
                assert not manager.context_window.evicted_messages
                export = Path(directory) / "export.jsonl"
                await manager.memory_manager.export_memories(export)
                remembered = {
                    json.loads(line)["metadata"].get("message_id") for line in export.read_text().splitlines()
                }
                evicted = [message_id for message_id in added if message_id not in kept]
                assert set(evicted) <= remembered

    asyncio.run(run())
