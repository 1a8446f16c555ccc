"""Search quality cases found in use (each failed before its fix)."""

from __future__ import annotations

from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

SHOP_TURNS = [
    ("user", "Hi, I'm Ana. Where is my order 1042?"),
    ("assistant", "Order 1042 is in transit with DHL, tracking number TRK-1042-PT."),
    ("user", "Please remember that I prefer deliveries after 6 pm."),
    ("assistant", "Noted: deliveries after 6 pm."),
    ("user", "How much does shipping 2 kg to Porto cost?"),
    ("assistant", "Shipping 2 kg to Porto costs 7.5 EUR; delivery in 2 days."),
    ("user", "And 5 kg to Lisbon?"),
    ("assistant", "Shipping 5 kg to Lisbon costs 11 EUR; delivery in 2 days."),
    ("user", "What about 1 kg to Braga?"),
    ("assistant", "Shipping 1 kg to Braga costs 5 EUR; delivery in 3 days."),
    ("user", "What was the tracking number of order 1042 again?"),
    ("assistant", "The tracking number of order 1042 is TRK-1042-PT."),
]


async def test_a_tiny_store_finds_the_preference_not_a_greeting(tmp_path: Path) -> None:
    """A tiny short-term tier (a store of a few turns, the preference also copied to long-term) ranked the
    preference 25th of 26 for "my deliveries" and a greeting was the top hit: in a small store function words
    like "my" get a high IDF (now left out of the full-text query), and FTS5 gives a word found in half the
    rows of a tiny index an IDF of 1e-6, so matching "deliveries" counted for nothing (now ``bm25_idf``)."""
    async with MemoryManager(ContextManagerConfig(storage_path=tmp_path)) as memory:
        for index, (speaker, text) in enumerate(SHOP_TURNS):
            await memory.add_memory(
                text, metadata={"session_id": "chat", "turn_index": index, "speaker": speaker}
            )
        preference = await memory.add_memory(
            "Ana prefers deliveries after 6 pm", importance=0.9, tags=["pref"]
        )
        results = await memory.search_memory("When do I like my deliveries?", limit=10)
        assert results, "nothing found"
        assert "deliveries" in results[0].content
        assert preference.id in {result.id for result in results}
        assert all("Hi, I'm Ana" not in result.content for result in results[:3])
