"""Near-duplicate detection (issue 18.5): pairs that must merge, pairs that must not, no transitive chains."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.memory import consolidation
from context_manager.core.memory.consolidation import (
    identifiers,
    meaning_markers,
    near_duplicate_groups,
    same_identifiers,
)
from context_manager.core.memory.index import query_tokens
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory

MUST_MERGE = [
    ("The office wifi password changes every Monday", "The office wifi password changes every Monday."),
    ("I prefer window seats on long flights to Asia", "i prefer window seats on long flights to asia"),
    (
        "Deploy the staging cluster before the customer demo",
        "Deploy the staging cluster before the customer demo!",
    ),
    ("My account number at Acme Bank is 12345678", "my account number at acme bank is 12345678"),
    (
        "Alice's flight to Berlin lands at 10:30 on gate B12",
        "Alice's flight to Berlin lands at 10:30 on gate B12.",
    ),
    (
        "Send the weekly report to alice@example.com every Friday",
        "send the weekly report to alice@example.com every friday",
    ),
    (
        "The team budget for the offsite is $1,200 this quarter",
        "The team budget for the offsite is $1200 this quarter",
    ),
    (
        "The meeting with the design team is on Monday morning",
        "the meeting with the design team is on monday morning",
    ),
    (
        "Remember that the deploy key rotates every ninety days",
        "remember that the deploy key rotates every ninety days.",
    ),
    ("東京の天気は晴れです 2026年 の 計画", "東京の天気は晴れです 2026年 の 計画"),
]
"""Pairs at Jaccard >= 0.85 naming the same identifiers (case and punctuation aside): one fact each."""

_TAIL = ", as we agreed with the whole team during the planning call last week"

MUST_NOT_MERGE = [
    (first + _TAIL, second + _TAIL)
    for first, second in [
        ("My account number at Acme Bank is 12345678", "My account number at Acme Bank is 12345679"),
        (
            "Send the weekly report to alice@example.com on Friday",
            "Send the weekly report to bob@example.com on Friday",
        ),
        ("Alice prefers the aisle seat on long flights", "Bob prefers the aisle seat on long flights"),
        ("The production database runs in EU-WEST-1", "The production database runs in EU-WEST-2"),
        ("Order AB-1234 shipped from the Leeds warehouse", "Order AB-1243 shipped from the Leeds warehouse"),
        (
            "The dentist appointment is at 10:30 on Thursday",
            "The dentist appointment is at 11:30 on Thursday",
        ),
        (
            "Lunch with Priya on Thursday at the usual place",
            "Lunch with Marco on Thursday at the usual place",
        ),
        (
            "Call Dana about the overdue invoice from the supplier",
            "Call about the overdue invoice from the supplier",
        ),
        ("We upgraded the build compiler to version 3.11", "We upgraded the build compiler to version 3.12"),
        (
            "The staging API answers at https://staging.example.com/v1",
            "The staging API answers at https://stage.example.com/v1",
        ),
        (
            "The parking spot reserved for visitors is number 14",
            "The parking spot reserved for visitors is number 41",
        ),
        (
            "The kitchen remodel invoice came to 4,850 euros",
            "The kitchen remodel invoice came to 4,580 euros",
        ),
    ]
]
"""Pairs one identifier apart (a number, code, address or name): distinct facts, however similar."""


def _memories(*texts: str, user_id: str | None = None) -> list[Memory]:
    return [Memory(id=f"m{number}", content=text, user_id=user_id) for number, text in enumerate(texts)]


def _jaccard(first: str, second: str) -> float:
    a, b = set(query_tokens(first)), set(query_tokens(second))
    return len(a & b) / len(a | b)


@pytest.mark.parametrize(("first", "second"), MUST_MERGE)
def test_near_duplicates_naming_the_same_things_merge(first: str, second: str) -> None:
    groups = near_duplicate_groups(_memories(first, second), 0.85, None, 0.95)
    assert [[m.content for m in group] for group in groups] == [[first, second]]


@pytest.mark.parametrize(
    ("first", "second"),
    MUST_NOT_MERGE,
    ids=[
        "account",
        "email",
        "name",
        "region",
        "order",
        "time",
        "name-inside",
        "name-missing",
        "version",
        "url",
        "number",
        "amount",
    ],
)
def test_near_duplicates_naming_different_things_never_merge(first: str, second: str) -> None:
    # the premise: by words alone they would merge at the default threshold
    assert _jaccard(first, second) >= 0.85
    assert near_duplicate_groups(_memories(first, second), 0.85, None, 0.95) == []
    # not even when an embedder calls them identical
    assert near_duplicate_groups(_memories(first, second), 0.85, lambda a, b: 1.0, 0.95) == []


def test_similar_pairs_do_not_chain_into_one_group() -> None:
    """A ~ B and B ~ C, A not like C: A and C are never merged (it was one group of three)."""
    a = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
    b = a + " kilo"
    c = b + " lima"
    assert _jaccard(a, b) >= 0.9 and _jaccard(b, c) >= 0.9 and _jaccard(a, c) < 0.9
    groups = near_duplicate_groups(_memories(a, b, c), 0.9, None, 0.95)
    assert len(groups) == 1 and len(groups[0]) == 2
    assert {m.content for m in groups[0]} != {a, c}
    # the best pair wins: B is closer to C (11/12) than to A (10/11)
    assert {m.content for m in groups[0]} == {b, c}


def test_cosine_chains_are_cut_too() -> None:
    texts = ["one fact about sailing", "another fact about rowing", "a third about cycling"]
    close = {frozenset({"m0", "m1"}), frozenset({"m1", "m2"})}  # m0 and m2 are not alike

    def cosine(first: str, second: str) -> float:
        return 0.99 if frozenset({first, second}) in close else 0.1

    groups = near_duplicate_groups(_memories(*texts), 0.99, cosine, 0.95)
    assert len(groups) == 1 and len(groups[0]) == 2


def test_users_are_never_merged_together() -> None:
    text = "the quarterly planning meeting moved to the large room"
    memories = _memories(text, user_id="alice") + [Memory(id="b", content=text, user_id="bob")]
    assert near_duplicate_groups(memories, 0.85, None, 0.95) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My account number at Acme Bank is 12345678.", {"12345678", "acme", "bank"}),
        ("Alice prefers tea. The report is due Monday", {"alice", "monday"}),
        (
            "write to bob@example.com or see https://example.com/a.",
            {"bob@example.com", "https://example.com/a"},
        ),
        ("The db is in EU-WEST-1 behind the VPN", {"eu-west-1", "vpn"}),
        ("I think I'm fine, said I", set()),
        ("The budget is 1,200 euros", {"1200"}),
        ("the meeting moved to the large room", set()),
    ],
)
def test_identifiers(text: str, expected: set[str]) -> None:
    assert identifiers(text) == expected


words = st.sampled_from(
    ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "12", "34", "Alice", "Bob"]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(words, min_size=3, max_size=9).map(" ".join), min_size=2, max_size=12))
def test_every_pair_in_a_group_is_a_near_duplicate(texts: list[str]) -> None:
    """Property: groups are disjoint, and every two members are alike and name the same identifiers."""
    memories = _memories(*texts)
    groups = near_duplicate_groups(memories, 0.6, None, 0.95)
    seen: set[str] = set()
    for group in groups:
        assert len(group) >= 2
        ids = {m.id for m in group}
        assert not ids & seen
        seen |= ids
        for first, second in itertools.combinations(group, 2):
            assert _jaccard(first.content, second.content) >= 0.6
            assert same_identifiers(
                identifiers(first.content),
                frozenset(query_tokens(first.content)),
                identifiers(second.content),
                frozenset(query_tokens(second.content)),
            )


async def test_consolidation_keeps_facts_that_differ_in_an_identifier(manager: MemoryManager) -> None:
    """Through the manager, on both backends: the account numbers stay two findable memories."""
    first = await manager.add_memory("My account number at Acme Bank is 12345678")
    second = await manager.add_memory("My account number at Acme Bank is 12345679")
    a = await manager.add_memory("alpha bravo charlie delta echo foxtrot golf hotel india juliet")
    b = await manager.add_memory("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo")
    c = await manager.add_memory("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima")
    report = await manager.consolidate_memories(0.9)
    assert report["consolidated_count"] == 2  # B and C only: A is not like C
    assert [sorted(group["merged_from"]) for group in report["groups"]] == [sorted([b.id, c.id])]
    for memory_id in (first.id, second.id, a.id):
        stored = await manager.get_memory(memory_id)
        assert stored is not None and stored.superseded_by is None
    found = await manager.search_memory("12345679", limit=5)
    assert [m.id for m in found] == [second.id]


SYMBOL_PAIRS = [
    (
        "My rating of the Lisbon hotel after our long weekend stay there last spring: 👍",
        "My rating of the Lisbon hotel after our long weekend stay there last spring: 👎",
    ),
    (
        "the nightly backup of the staging cluster database was verified this morning ✓",
        "the nightly backup of the staging cluster database was verified this morning ✗",
    ),
    (
        "our team channel reacted to the release announcement of the new mobile app with 🎉",
        "our team channel reacted to the release announcement of the new mobile app with 😡",
    ),
]


@pytest.mark.parametrize(("first", "second"), SYMBOL_PAIRS, ids=["thumbs", "check", "reaction"])
def test_texts_an_emoji_apart_are_not_merged(first: str, second: str) -> None:
    """The words compared left symbols out (they split words): "... hotel: 👍" and "... hotel: 👎" were the
    same words, merged into one memory, and the other rating was lost. A symbol is now compared as an
    identifier: each text's symbols must be in the other."""
    assert near_duplicate_groups(_memories(first, second), 0.85, None, 0.95) == []
    assert near_duplicate_groups(_memories(first, second), 0.85, lambda a, b: 1.0, 0.95) == []
    # the same symbol (a skin tone left out, as in search) still merges
    same = first.replace("👍", "👍🏽")
    assert len(near_duplicate_groups(_memories(first, same + "!"), 0.85, None, 0.95)) == 1


async def test_consolidation_keeps_facts_that_differ_in_an_emoji(manager: MemoryManager) -> None:
    first, second = SYMBOL_PAIRS[0]
    liked = await manager.add_memory(first, tier="long")
    disliked = await manager.add_memory(second, tier="long")
    report = await manager.consolidate_memories(0.85)
    assert report["consolidated_count"] == 0
    assert [m.id for m in await manager.search_memory("👍", limit=5)] == [liked.id]
    assert [m.id for m in await manager.search_memory("👎", limit=5)] == [disliked.id]


async def test_consolidation_breaks_ties_alike_on_every_backend(manager: MemoryManager) -> None:
    """Groups were numbered in the backend's scan order (SQLite: long-term first, then the in-process
    tiers; PostgreSQL: by id), which broke the ties: the originals' order, the text kept when importance
    and time are equal, and which pair is merged when two pairs are alike."""
    await manager.add_memories(
        [  # one batch: the same importance and time
            {
                "content": "office wifi password changes every monday morning",
                "memory_id": "z-long",
                "tier": "long",
            },
            {"content": "office wifi password changes every monday", "memory_id": "a-short"},
        ]
    )
    await manager.add_memory("alpha beta gamma delta xray", memory_id="z1", tier="long")
    await manager.add_memory("alpha beta gamma delta", memory_id="m")  # as like z1 as like a1
    await manager.add_memory("alpha beta gamma delta yankee", memory_id="a1")
    report = await manager.consolidate_memories(0.8)
    groups = {group["merged_from"][0]: group for group in report["groups"]}
    assert sorted(groups) == ["a-short", "a1"]
    assert groups["a-short"]["merged_from"] == ["a-short", "z-long"]
    assert groups["a-short"]["content"] == "office wifi password changes every monday"
    assert groups["a1"]["merged_from"] == ["a1", "m"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (  # a negation more: the opposite fact
            "My daughter is allergic to peanuts and tree nuts so never pack them in her lunch box",
            "My daughter is not allergic to peanuts and tree nuts so never pack them in her lunch box",
        ),
        ("the printer on floor two is broken", "the printer on floor two isn't broken"),
        (  # the same words, the order reversed around "before"
            "the backup job runs before the deploy job on the staging cluster every night",
            "the deploy job runs before the backup job on the staging cluster every night",
        ),
        (  # a number in words
            "the server room door code is seven four one nine and it changes monthly here",
            "the server room door code is seven four one eight and it changes monthly here",
        ),
        (  # another day
            "Remember the meeting is at 10:30 in the main room with the whole team today",
            "Remember the meeting is at 10:30 in the main room with the whole team tomorrow",
        ),
    ],
)
def test_texts_a_word_apart_in_meaning_are_not_merged(first: str, second: str) -> None:
    assert near_duplicate_groups(_memories(first, second), 0.8, None, 0.95) == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            "The office wifi password changes every Monday",
            "The office wifi password changes every Monday morning",
        ),
        (
            "Room temperature must stay at twenty degrees for the experiment to work at all today",
            "Room temperature must stay at twenty degrees for the experiment to work at all today!",
        ),
        ("the printer on floor two is not working", "The printer on floor two is not working!"),
        ("tea is better than coffee for the team", "tea is better than coffee for the whole team"),
        (  # the order word starts the sentence: its one neighbour agrees
            "Always back up the production database before the weekly deploy",
            "Before the weekly deploy always back up the production database",
        ),
        ("The cat sleeps under the desk most of the day", "Most of the day the cat sleeps under the desk"),
        (
            "The user prefers tea over coffee in the morning at work",
            "In the morning at work the user prefers tea over coffee",
        ),
        ("the one I like is the blue kite on the hill", "the blue kite on the hill is the one I like"),
    ],
)
def test_near_duplicates_saying_the_same_still_merge(first: str, second: str) -> None:
    assert len(near_duplicate_groups(_memories(first, second), 0.8, None, 0.95)) == 1


def _distinct_words(count: int, prefix: str) -> list[str]:
    """``count`` distinct lower-case words, no English word, no digit (no identifier, no marker)."""
    letters = "bcdfghjklmnpqrstvwxz"
    words = []
    for number in range(count):
        word = ""
        while True:
            number, digit = divmod(number, len(letters))
            word += letters[digit]
            if not number:
                break
        words.append(f"{prefix}{word}")
    return words


PREAMBLE = " ".join(_distinct_words(12_000, "q"))
"""The same first 12,000 distinct words of two long memories: search's 10,000-token cap read no further."""


def test_long_memories_are_compared_to_their_end() -> None:
    """Word sets stopped at 10,000 distinct words and symbols at 10,000 tokens: two long documents alike in
    their first pages were merged whatever followed, one of them hidden from search."""
    other_chapter = PREAMBLE + " " + " ".join(_distinct_words(3_000, "k"))
    another_chapter = PREAMBLE + " " + " ".join(_distinct_words(3_000, "j"))
    assert near_duplicate_groups(_memories(other_chapter, another_chapter), 0.85, None, 0.95) == []
    # an emoji apart at the end: different ratings
    liked, disliked = PREAMBLE + " rated 👍", PREAMBLE + " rated 👎"
    assert near_duplicate_groups(_memories(liked, disliked), 0.85, None, 0.95) == []
    # a number apart in the last sentence (the words compared end before it)
    first, second = PREAMBLE + " ticket 4711", PREAMBLE + " ticket 4712"
    assert near_duplicate_groups(_memories(first, second), 0.85, None, 0.95) == []
    # the same long text, a full stop and a capital apart, still merges
    again = PREAMBLE.capitalize() + " rated 👍."
    assert len(near_duplicate_groups(_memories(liked, again), 0.85, None, 0.95)) == 1


async def test_consolidation_keeps_long_memories_that_differ_late(manager: MemoryManager) -> None:
    """Through the manager, on both backends: the two chapters stay two memories, each found by its words."""
    first = await manager.add_memory(PREAMBLE + " " + " ".join(_distinct_words(3_000, "k")), tier="long")
    second = await manager.add_memory(PREAMBLE + " " + " ".join(_distinct_words(3_000, "j")), tier="long")
    copy = await manager.add_memory(PREAMBLE + " " + " ".join(_distinct_words(3_000, "j")) + ".")
    report = await manager.consolidate_memories(0.85)
    assert [sorted(group["merged_from"]) for group in report["groups"]] == [sorted([second.id, copy.id])]
    stored = await manager.get_memory(first.id)
    assert stored is not None and stored.superseded_by is None
    found = await manager.search_memory(_distinct_words(3_000, "k")[-1], limit=5)
    assert [m.id for m in found] == [first.id]


def test_a_long_run_without_spaces_is_read_once() -> None:
    """A run of letters and digits without a space (a hex dump, a key, a minified file) was read again
    from each of its characters by the e-mail pattern: 40 KB took 11 s, a megabyte hours, the write lock
    held all along. Its identifiers are found as in a short text."""
    digest = "0123456789abcdef" * 64_000  # 1 MB
    text = f"Checksum dump {digest} from the build of Tuesday, mail it to ops@example.com now."
    assert identifiers(text) == {"checksum", digest, "tuesday", "ops@example.com"}
    dotted = "a." * 500_000 + "b@example.org"  # one e-mail address of a megabyte: every dot is part of it
    assert identifiers(dotted) == {dotted}
    groups = near_duplicate_groups(
        _memories(text, text.lower(), text.replace("ops", "dev")), 0.85, None, 0.95
    )
    assert [[m.id for m in group] for group in groups] == [["m0", "m1"]]


def _reference_identifiers(text: str) -> frozenset[str]:
    """Identifiers word by word, as the module docstring states them (slow, for short texts)."""
    found: set[str] = {
        token for token in query_tokens(text, limit=10_000, symbols=True) if not token[0].isalnum()
    }
    for pattern in (consolidation._EMAIL, consolidation._URL):
        found.update(match.group(0).rstrip(consolidation._STRIP).lower() for match in pattern.finditer(text))
        text = pattern.sub(" ", text)
    sentence_start = True
    for raw in consolidation._DIGIT_GROUPS.sub("", text).split():
        starts, sentence_start = (
            sentence_start,
            raw.rstrip(consolidation._CLOSING).endswith((".", "!", "?", ":", ";")),
        )
        word = raw.strip(consolidation._STRIP)
        lower = word.lower()
        if not word or lower == "i" or lower.startswith(("i'", "i’")):
            continue
        code = any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:])
        name = word[0].isupper() and not (starts and lower in consolidation._COMMON_STARTS)
        if code or name:
            found.add(lower)
    return frozenset(found)


def _reference_markers(text: str) -> tuple[object, ...]:
    """Meaning markers word by word (a copy of the words per order word: slow for long texts)."""
    words = [w.replace("'", "").replace("’", "") for w in consolidation._WORD.findall(text.lower())]
    relations = []
    common = consolidation._COMMON_STARTS
    for position, word in enumerate(words):
        if word in consolidation._ORDER_WORDS:
            before = next((w for w in reversed(words[:position]) if w not in common), None)
            after = next((w for w in words[position + 1 :] if w not in common), None)
            relations.append((word, before, after))
    return (
        sum(word in consolidation._NEGATIONS for word in words),
        tuple(sorted(word for word in words if word in consolidation._NUMBER_WORDS)),
        frozenset(word for word in words if word in consolidation._TIME_WORDS),
        tuple(relations),
    )


_TRICKY_PIECES = [
    *"aZ .!?:;,'’\"”)(@+-_~*19\n\tİß👍🇫",
    "The",
    "I'm",
    "isn't",
    "a''b",
    "before",
    "than",
    "instead",
    "not",
    "two",
    "today",
    "x@y.z",
    "a@b.c+x@d.e",
    "www.",
    "https://",
    "1 200",
    "Alice",
]
_TRICKY = st.sampled_from(_TRICKY_PIECES)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TRICKY, max_size=40).map("".join) | st.text(max_size=60))
def test_identifiers_and_markers_read_each_word_as_stated(text: str) -> None:
    """Property: the linear-time reading finds what reading word by word finds."""
    assert identifiers(text) == _reference_identifiers(text)
    assert tuple(meaning_markers(text)) == _reference_markers(text)


def test_long_texts_are_read_in_pieces_as_a_whole() -> None:
    """Texts of megabytes are read a piece of about 64 KB at a time, so that no regex or split call holds
    the interpreter lock (and the event loop waiting on it) for all of their text. Cut between pieces, a
    word, an address or a digit group (``3 400 000``) is read as in the whole text."""
    pieces = [
        *_TRICKY_PIECES,
        "3 400 000",
        "9\n",
        "\n7",
        "a\u3000b",
        "ΟΔΟΣ ",
        "Σ\n",
        "http://a.b/c ",
    ]
    chooser = random.Random(7)
    for size in (100_000, 300_000):
        text = "".join(
            chooser.choice(pieces) + chooser.choice([" ", "", "\n", "\t", "1", "."]) for _ in range(size // 4)
        )
        assert len(text) > consolidation._PIECE_CHARACTERS
        assert identifiers(text) == _reference_identifiers(text)
        assert tuple(meaning_markers(text)) == _reference_markers(text)
