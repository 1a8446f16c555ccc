"""Filtered search finds a match buried under hundreds of better lexical matches (issue 18, item 4).

Tag, importance and time filters used to be applied after a fixed top-N (30) of BM25 candidates: with 400
memories mentioning "invoice" and one of them tagged ``finance``, ``search_memory("invoice", limit=5,
tags=["finance"])`` returned nothing, because the tagged memory (the longest text, so the lowest BM25) was
never among the candidates. The filters now go into the candidate query itself (SQL predicates next to
FTS5 / ``tsvector``), on both backends and in every tier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory
from tests.core.memory.conftest import FakeClock, backend_options

DAY = 86_400.0
PLAIN = 400
TARGET = (
    "invoice for the quarterly stationery order from the office supplies vendor, paid by bank transfer "
    "after the usual approval by the head of the department"
)
"""Long, so that it has the lowest BM25 of all 401 memories for "invoice" (the others are 3 words)."""


@pytest.fixture(params=["short", "long"])
def tier(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def roomy(
    storage: Path, backend_name: str, request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[MemoryManager]:
    """A manager whose short-term tier holds all 401 memories (no overflow moves)."""
    config = ContextManagerConfig(
        storage_path=storage,
        short_term_memory_size=1_000,
        medium_term_memory_size=1_000,
        long_term_memory_size=1_000,
        **backend_options(backend_name, request),
    )
    memory = MemoryManager(config, clock=clock)
    await memory.initialize()
    try:
        yield memory
    finally:
        await memory.close()


async def _fill(memory: MemoryManager, clock: FakeClock, tier: str) -> Memory:
    """400 short "invoice" memories, then a day later the one long, tagged, important one."""
    await memory.add_memories(
        [
            {"content": f"invoice {number} sent", "importance": 0.4, "tags": ["misc"], "tier": tier}
            for number in range(PLAIN)
        ]
    )
    clock.advance(DAY)
    target = await memory.add_memory(TARGET, importance=0.8, tags=["finance"], tier=tier)
    stored = await memory.get_memory(target.id)
    assert stored is not None and stored.tier.value == tier
    return target


FILTERS: dict[str, Callable[[float], dict[str, Any]]] = {
    "tag": lambda now: {"tags": ["finance"]},
    "importance": lambda now: {"min_importance": 0.7},
    "time": lambda now: {"since": now - DAY / 2},
    "all three": lambda now: {"tags": ["finance"], "min_importance": 0.7, "since": now - DAY / 2},
}


@pytest.mark.parametrize("kind", list(FILTERS))
async def test_a_filter_finds_the_one_match_below_400_better_matches(
    roomy: MemoryManager, clock: FakeClock, tier: str, kind: str
) -> None:
    target = await _fill(roomy, clock, tier)
    # unfiltered, the target ranks below the pool each tier contributes before fusion: a filter applied
    # to that pool afterwards finds nothing
    unfiltered = await roomy.search_memory("invoice", limit=roomy.ranking.candidates)
    assert len(unfiltered) == roomy.ranking.candidates and target.id not in {m.id for m in unfiltered}

    filters = FILTERS[kind](clock.now)
    assert [m.id for m in await roomy.search_memory("invoice", limit=5, **filters)] == [target.id]
    in_tier = await roomy.search_memory("invoice", limit=5, tiers=[tier], **filters)
    assert [m.id for m in in_tier] == [target.id]


async def test_the_opposite_filters_keep_the_400_and_drop_the_one(
    roomy: MemoryManager, clock: FakeClock, tier: str
) -> None:
    target = await _fill(roomy, clock, tier)
    earlier = await roomy.search_memory("invoice", limit=PLAIN + 10, until=clock.now - DAY / 2)
    assert len(earlier) == PLAIN and target.id not in {m.id for m in earlier}
    misc = await roomy.search_memory("invoice", limit=PLAIN + 10, tags=["misc"])
    assert len(misc) == PLAIN and target.id not in {m.id for m in misc}
    # filters combine with AND
    assert await roomy.search_memory("invoice", limit=5, tags=["finance"], min_importance=0.9) == []
    assert await roomy.search_memory("invoice", limit=5, tags=["misc"], min_importance=0.7) == []
