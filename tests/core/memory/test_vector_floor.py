"""The vector channel's similarity floor: a memory only the embedder found must be similar enough.

Without it, a query about something the store never mentions returned the nearest vectors anyway, however
unrelated ("quantum chromodynamics" on a store about cooking returned the recipes). Tests on both backends
(the ``config`` fixture), with the real MiniLM model where the floor's value matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import ConfigurationError, InvalidArgumentError
from context_manager.core.memory.embeddings import (
    MINILM_MIN_SIMILARITY,
    HashingEmbedder,
    SentenceTransformerEmbedder,
)
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.ranking import RankingWeights

COOKING = [
    "Simmer the tomato sauce for forty minutes before adding basil",
    "Knead the bread dough until it is smooth and elastic",
    "Sear the steak in a very hot cast iron pan",
    "Whisk eggs and sugar until pale for the sponge cake",
    "Roast the vegetables at 200 degrees with olive oil",
]
PUPPY = "My daughter adopted a puppy from the animal shelter"


@pytest.fixture(scope="module")
def minilm() -> Iterator[SentenceTransformerEmbedder]:
    yield SentenceTransformerEmbedder()


async def _cooking_store(memory: MemoryManager, *extra: str) -> None:
    await memory.add_memories([{"content": text} for text in [*COOKING, PUPPY, *extra]])


@pytest.mark.embeddings
async def test_an_unrelated_query_finds_nothing_and_a_paraphrase_still_finds_its_memory(
    config: ContextManagerConfig, minilm: SentenceTransformerEmbedder
) -> None:
    """The packaged MiniLM's floor (0.2, chosen on the development conversations) is the default."""
    assert minilm.min_similarity == MINILM_MIN_SIMILARITY
    async with MemoryManager(config, embedder=minilm) as memory:
        await _cooking_store(memory)
        assert await memory.search_memory("quantum chromodynamics") == []
        assert await memory.search_memory("stock market crash") == []
        # no word in common with the memory (nor with any other): found by its meaning alone
        found = await memory.search_memory("Did we get a new dog?")
        assert [result.content for result in found] == [PUPPY]
        found = await memory.search_memory("which pet joined the family", limit=3)
        assert found and found[0].content == PUPPY


@pytest.mark.embeddings
async def test_a_one_word_query_does_not_find_short_memories_that_say_nothing(
    config: ContextManagerConfig, minilm: SentenceTransformerEmbedder
) -> None:
    """Under MiniLM a one-word query has a cosine of 0.2-0.35 with any short text, over the floor of 0.2:
    "seats" returned "qwerty", "placeholder", "TBD" ... after the one memory about seats, and "budget"
    returned them alone. Such a memory is closer still to text that says nothing ("ok", ``CONTENTLESS_TEXTS``,
    none of these), and a memory found by meaning alone must now be closer to the query than to that."""
    seats = "Alice prefers aisle seats"
    junk = ["x7", "asdf", "TBD", "qwerty", "placeholder", "Thanks, bye!"]
    async with MemoryManager(config, embedder=minilm) as memory:
        await memory.add_memories([{"content": text} for text in [seats, *junk, *COOKING, PUPPY]])
        assert [result.content for result in await memory.search_memory("seats")] == [seats]
        assert await memory.search_memory("budget") == []
        assert await memory.search_memory("password") == []
        # a one-word query still finds a memory by meaning alone, first, and none of the short ones
        for query, expected in (("chairs", seats), ("dog", PUPPY), ("cats", PUPPY)):
            found = [result.content for result in await memory.search_memory(query)]
            assert found[:1] == [expected], query
            assert not set(found) & set(junk), (query, found)
        # and a question, the memory it is about (an unrelated one-word memory would not come before it)
        found = await memory.search_memory("Did we get a new dog?")
        assert [result.content for result in found] == [PUPPY]
    # a floor of 0 keeps every nearest neighbour, contentless or not
    ranking = RankingWeights.learned(embedder=True, vector_min_similarity=0)
    async with MemoryManager(config, embedder=minilm, ranking=ranking) as memory:
        found = await memory.search_memory("budget", limit=20)
        assert set(junk) <= {result.content for result in found}


@pytest.mark.embeddings
async def test_a_memory_matching_a_word_is_kept_whatever_its_similarity(
    config: ContextManagerConfig, minilm: SentenceTransformerEmbedder
) -> None:
    """The floor leaves out memories found by the vector channel alone, never a lexical match."""
    court = "The court set the quantum of damages at ten thousand euros"
    ranking = RankingWeights.learned(embedder=True, vector_min_similarity=1.0)
    async with MemoryManager(config, embedder=minilm, ranking=ranking) as memory:
        await _cooking_store(memory, court)
        found = await memory.search_memory("quantum chromodynamics")
        assert [result.content for result in found] == [court]
        # a floor of 1: nothing is similar enough, so a paraphrase without a shared word finds nothing
        assert await memory.search_memory("Did we get a new dog?") == []


@pytest.mark.embeddings
async def test_a_floor_of_zero_keeps_every_nearest_neighbour(
    config: ContextManagerConfig, minilm: SentenceTransformerEmbedder
) -> None:
    """0 switches the floor off: the nearest memories come back, however unrelated (the old behaviour)."""
    ranking = RankingWeights.learned(embedder=True, vector_min_similarity=0)
    async with MemoryManager(config, embedder=minilm, ranking=ranking) as memory:
        await _cooking_store(memory)
        found = await memory.search_memory("quantum chromodynamics")
        assert len(found) == len(COOKING) + 1


async def test_an_embedders_own_floor_applies_and_an_explicit_one_overrides_it(
    config: ContextManagerConfig,
) -> None:
    """``min_similarity`` of an embedder is its default floor; ``RankingWeights`` overrides it. An
    embedder without one (scale unknown) has no floor."""
    embedder = HashingEmbedder(dimension=64)
    async with MemoryManager(config, embedder=embedder) as memory:
        await memory.add_memory("Clara is allergic to celery")
        assert await memory.search_memory("allergies") != []  # shares word pieces only: vector channel
    embedder.min_similarity = 0.99  # type: ignore[attr-defined]
    async with MemoryManager(config, embedder=embedder) as memory:
        assert await memory.search_memory("allergies") == []
    ranking = RankingWeights.learned(embedder=True, vector_min_similarity=0.0)
    async with MemoryManager(config, embedder=embedder, ranking=ranking) as memory:
        assert await memory.search_memory("allergies") != []


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, "0.2", True, [0.2]])
def test_a_bad_floor_is_rejected_with_what_is_allowed(value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"vector_min_similarity: got .*allowed None .* from 0"):
        RankingWeights(vector_min_similarity=value)
    with pytest.raises(InvalidArgumentError, match="vector_min_similarity"):
        RankingWeights().with_changes(vector_min_similarity=value)


@pytest.mark.parametrize("value", [0, 0.0, 0.35, 1])
def test_a_floor_in_range_is_accepted(value: float) -> None:
    assert RankingWeights(vector_min_similarity=value).vector_min_similarity == value


async def test_an_embedder_with_a_bad_floor_fails_the_search_with_a_clear_error(
    config: ContextManagerConfig,
) -> None:
    embedder = HashingEmbedder(dimension=64)
    embedder.min_similarity = 2  # type: ignore[attr-defined]
    async with MemoryManager(config, embedder=embedder) as memory:
        await memory.add_memory("Clara is allergic to celery")
        with pytest.raises(ConfigurationError, match=r"min_similarity: got 2.*from 0 \(no floor\) to 1"):
            await memory.search_memory("allergies")
