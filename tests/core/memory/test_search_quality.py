"""Search quality cases found in use (each failed before its fix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.embeddings import HashingEmbedder
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.ranking import RankingWeights

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


NATE_SESSIONS = [
    [
        ("Nate", "I adopted a pet turtle last week, her name is Shelly!"),
        ("Joanna", "Congrats! How is she settling in?"),
        ("Nate", "Slowly, she hides most of the day."),
    ],
    *[
        [
            ("Joanna", f"I spent the {day} rewriting the second act of my screenplay."),
            ("Nate", f"Nice! I played video games all {day} with friends."),
            ("Joanna", f"I also baked a dairy-free cake on {day} evening."),
            ("Nate", "Sounds delicious, send me the recipe."),
        ]
        for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
    ],
    [
        ("Joanna", "How was the tournament?"),
        ("Nate", "I lost in the semifinal, still proud though."),
        ("Joanna", "That is a great result!"),
        ("Nate", "Thanks. At home Shelly the turtle now eats lettuce straight from my hand."),
    ],
]


async def _add_nate_conversation(memory: MemoryManager) -> dict[str, str]:
    ids = {}
    for session, turns in enumerate(NATE_SESSIONS):
        added = await memory.add_memories(
            [
                {
                    "content": text,
                    "metadata": {"session_id": f"s{session}", "turn_index": index, "speaker": speaker},
                }
                for index, (speaker, text) in enumerate(turns)
            ]
        )
        ids.update((item.content, item.id) for item in added)
    return ids


async def test_feedback_finds_the_turn_that_shares_no_word_with_the_question(
    config: ContextManagerConfig,
) -> None:
    """A multi-hop question: "What pets does Nate have?" names the turtle's first turn ("pet"), but the later
    turn about Shelly shares no word with it. The feedback query (the question plus the rarest words of the
    best hits: "shelly", "turtle") finds it; without it the turn is not even a candidate."""
    later = "Thanks. At home Shelly the turtle now eats lettuce straight from my hand."
    expanded = RankingWeights(feedback=1.0, feedback_min_memories=30)
    async with MemoryManager(config, ranking=expanded) as memory:
        ids = await _add_nate_conversation(memory)
        theirs = await memory.add_memories(  # another owner's turn about a Shelly and a turtle
            [
                {
                    "content": "Our turtle Shelly escaped again",
                    "user_id": "bob",
                    "metadata": {"session_id": "s9"},
                }
            ]
        )
        results = await memory.search_memory("What pets does Nate have?", limit=10)
        assert results and "adopted a pet turtle" in results[0].content
        assert ids[later] in [result.id for result in results]
        assert theirs[0].id not in [
            result.id for result in results
        ]  # the feedback query keeps to my memories
        assert all(result.user_id is None for result in results)
        assert all(result.score > 0 for result in results)
    # without the feedback query, or in a store too small for it (32 memories, fewer than 40)
    for weights in (RankingWeights(feedback=0.0), expanded.with_changes(feedback_min_memories=40)):
        async with MemoryManager(config, ranking=weights) as memory:
            results = await memory.search_memory("What pets does Nate have?", limit=10)
            assert results and ids[later] not in [result.id for result in results]


JAPANESE_SESSIONS = [  # the conversation above, in Japanese (no spaces between words)
    [
        ("ネイト", "先週ペットのカメを飼い始めた、名前はシェリー！"),
        ("ジョアンナ", "おめでとう！もう慣れた？"),
        ("ネイト", "ゆっくりね、一日中隠れている。"),
    ],
    *[
        [
            ("ジョアンナ", f"{day}は脚本の第二幕を書き直した。"),
            ("ネイト", f"{day}は友達とずっとゲームをしていた。"),
            ("ジョアンナ", f"{day}の夜に乳製品なしのケーキも焼いた。"),
            ("ネイト", "おいしそう、レシピを送って。"),
        ]
        for day in ("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日")
    ],
    [
        ("ジョアンナ", "大会はどうだった？"),
        ("ネイト", "準決勝で負けたけど、誇りに思う。"),
        ("ジョアンナ", "すごい結果だね！"),
        ("ネイト", "ありがとう。家ではシェリーが私の手からレタスを食べるようになった。"),
    ],
]


async def test_feedback_lends_the_pairs_of_a_japanese_turn(config: ContextManagerConfig) -> None:
    """The multi-hop question above in Japanese: "ネイトのペットは何？" names the turtle's first turn
    ("ペット"), the later turn about シェリー shares no pair of characters with it. The feedback query
    took the best hits' words as query_tokens split them, a whole run of Japanese each ("名前はシェリー"):
    no index term, counted in no memory (term_frequencies), so none was lent and the later turn was never
    found. The words are now the pairs the index holds ("シェ", "ェリ", "リー")."""
    later = JAPANESE_SESSIONS[-1][-1][1]
    expanded = RankingWeights(feedback=1.0, feedback_min_memories=30)
    async with MemoryManager(config, ranking=expanded) as memory:
        ids = {}
        for session, turns in enumerate(JAPANESE_SESSIONS):
            added = await memory.add_memories(
                [
                    {
                        "content": text,
                        "metadata": {"session_id": f"s{session}", "turn_index": index, "speaker": speaker},
                    }
                    for index, (speaker, text) in enumerate(turns)
                ]
            )
            ids.update((item.content, item.id) for item in added)
        results = await memory.search_memory("ネイトのペットは何？", limit=10)
        assert results and "ペットのカメ" in results[0].content
        assert ids[later] in [result.id for result in results]
    async with MemoryManager(config, ranking=RankingWeights(feedback=0.0)) as memory:
        results = await memory.search_memory("ネイトのペットは何？", limit=10)
        assert results and ids[later] not in [result.id for result in results]


async def test_a_question_asking_when_prefers_the_turn_that_says_when(config: ContextManagerConfig) -> None:
    """Both turns name the adoption and Shelly; "When did ..." is answered by the one that says when."""
    turns = [
        ("Nate", "I adopted Shelly two weeks ago, she is a turtle."),
        ("Joanna", "Nice!"),
        ("Nate", "Shelly is the turtle I adopted, she loves lettuce."),
    ]
    contents = [text for _, text in turns]
    scores: dict[float, dict[str, float]] = {}
    for weight in (2.0, 0.0):
        async with MemoryManager(config, ranking=RankingWeights(time=weight)) as memory:
            if weight:
                await memory.add_memories(
                    [
                        {
                            "content": text,
                            "metadata": {"session_id": "s1", "turn_index": index, "speaker": who},
                        }
                        for index, (who, text) in enumerate(turns)
                    ]
                )
            results = await memory.search_memory("When did Nate adopt Shelly?", limit=3)
            scores[weight] = {result.content: result.score for result in results}
            if weight:
                assert results[0].content == contents[0]
    # the time feature raised the turn that says when, and only that one (the second search differs
    # otherwise by the access counts of the first)
    assert scores[2.0][contents[0]] - scores[0.0][contents[0]] > 0.5
    assert scores[2.0][contents[2]] == pytest.approx(scores[0.0][contents[2]], abs=0.01)


class _RecordingEmbedder(HashingEmbedder):
    """The hashing embedder, remembering every text it embedded (queries included)."""

    def __init__(self) -> None:
        super().__init__(dimension=64)
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        self.texts.extend(texts)
        return super().embed(texts)


async def test_the_vector_channel_embeds_the_question_without_the_speakers_names(
    config: ContextManagerConfig,
) -> None:
    """A turn's text rarely names its own speaker (that is metadata): the question is embedded with the
    names of the candidate turns' speakers replaced by "they", the stored turns as they are."""
    question = "What did Nate say about Joanna's tournament?"
    expected = {True: "What did they say about their tournament?", False: question}
    for without_names in (True, False):
        embedder = _RecordingEmbedder()
        weights = RankingWeights.learned(embedder=True, vector_query_without_speakers=without_names)
        async with MemoryManager(config, embedder=embedder, ranking=weights) as memory:
            await _add_nate_conversation(memory)
            stored = list(embedder.texts)
            results = await memory.search_memory(question, limit=3)
            assert results and "semifinal" in " ".join(result.content for result in results)
        assert embedder.texts[len(stored) :] == [expected[without_names]]
        assert not any("they" in text.split() for text in stored)  # the turns are embedded unchanged


async def test_a_rows_score_is_the_sum_of_its_scores_for_parts_of_the_query(manager: MemoryManager) -> None:
    # the feedback query relies on it: the expanded question's BM25 is the first pass's plus that of a
    # query of the added words alone, on every backend and across tiers
    from context_manager.core.memory.backend import LexicalQuery

    words = ["harbour", "lantern", "violin", "orchard", "glacier", "saffron"]
    for index in range(40):
        chosen = [
            word for position, word in enumerate(words) if (index >> position) & 1 or index % 7 == position
        ]
        tier = ("short", "medium", "long")[index % 3]
        await manager.add_memory(f"note {index}: " + " ".join(chosen) + " and nothing else", tier=tier)
    backend = manager._require("test")

    async def scores(tokens: tuple[str, ...]) -> dict[str, float]:
        hits = await backend.search(LexicalQuery(tokens=tokens, limit=100, scope=None))
        return {memory.id: bm25 for memory, bm25 in hits}

    await scores(tuple(words))  # PostgreSQL: reads the term statistics the IDF comes from (then cached)
    whole = await scores(tuple(words))
    first, second = await scores(tuple(words[:4])), await scores(tuple(words[4:]))
    assert len(whole) >= 30
    assert set(whole) == set(first) | set(second)
    for memory_id, score in whole.items():
        assert score == pytest.approx(first.get(memory_id, 0.0) + second.get(memory_id, 0.0), rel=1e-6)
