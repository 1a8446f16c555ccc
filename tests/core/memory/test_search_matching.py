"""Search finds what matches and only that, on both backends (three bugs found by a bug hunt).

1. Superseded originals (left in the long-term tier by consolidation, hidden from search) took the places of
   an unfiltered SQLite candidate query, which applied its LIMIT before dropping them: with 80 of them
   outranking every visible match of "apple", ``search_memory("apple")`` returned nothing.
2. A memory could not be found by its own words when they held combining marks (text in NFD) or a Turkish
   capital dotted I: the query was split where the index does not split ("nai|ve", "i|zmir").
3. The internal owner column was searchable: the query word ``ownerdefault`` found every memory of the
   default namespace, and ``owner<hash>`` a user's memories with ``ALL_USERS``.
4. Text in scripts that write vowels as combining marks inside a word (Hindi, Bengali, Tamil, Thai, pointed
   Hebrew) was not found by its words on PostgreSQL: the query (and SQLite) splits a word at those marks,
   PostgreSQL's parser kept it whole.
5. Chinese and Japanese text was found by no word of it on PostgreSQL (then only on SQLite): the server's
   parser kept a run of it as one token; both backends now index its characters and pairs.
6. An emoji ("🍕", "🎉🎉") or another symbol ("✓") found nothing on either backend: both indexes and the query
   split words at it; both now index each symbol as a term of its own, and the query asks for it.
7. A superscript, subscript, vulgar fraction or circled number ("m²", "CO₂", "½ cup", "①") is part of a word
   on SQLite (FTS5 keeps every number in a word) and was a blank on PostgreSQL: "m²" searched for "m" there
   (finding "5 m long" too) and "½" or "①" found nothing. PostgreSQL now indexes such a word whole as well.
8. A private-use character (an icon-font glyph: "\ue0a0main"), a currency sign newer than FTS5's Unicode
   tables ("500₽") or a bidirectional isolate around a name was part of a word in SQLite's index, where the
   query and PostgreSQL's index split words at it: on SQLite "main", "500" or "Alice" found nothing.
9. Text in capitals that FTS5's tables (Unicode 6.1) do not fold (Cherokee, Georgian Mtavruli, Adlam) was
   found by nothing on SQLite, its own words included: the query lower-cases them, as PostgreSQL does.
10. A Latin letter carrying a mark FTS5 does not fold before a folded accent (Yoruba and IPA "é̩": "e",
    U+0329, U+0301) was found by its folded word ("ile") on SQLite, not on PostgreSQL: NFC composed the
    accent across the mark there, where the query ends the word at the mark.
11. A Greek capital with no composed form with its mark ("Ϊ́", "Ϋ́") was found by nothing on PostgreSQL:
    the query lower-cases and composes it ("ΐ"), the server's parser only lower-cased it.
"""

from __future__ import annotations

import unicodedata

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.index import owner_token
from context_manager.core.memory.manager import ALL_USERS, MemoryManager


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


async def test_superseded_originals_take_no_place_of_a_visible_match(manager: MemoryManager) -> None:
    for number in range(40):
        # near-duplicates: the less important one says "apple" more often, so it outranks the merged memory
        await manager.add_memory(
            f"apple apple apple apple apple apple kiwi{number} lime{number}", tier="long", importance=0.3
        )
        await manager.add_memory(f"apple kiwi{number} lime{number}", tier="long", importance=0.6)
    merged = await manager.consolidate_memories(0.85)
    assert merged["consolidated_count"] == 80
    target = await manager.add_memory("apple apple apple apple banana", tier="long", importance=0.5)
    visible = {memory.id for memory in await manager.recent_memories(1_000)}
    assert len(visible) == 41 and target.id in visible

    for limit in (1, 5, 10):
        found = await manager.search_memory("apple", limit=limit)
        assert len(found) == limit
        assert all(memory.superseded_by is None and memory.id in visible for memory in found)
    assert target.id in {memory.id for memory in await manager.search_memory("apple", limit=5)}
    assert [memory.id for memory in await manager.search_memory("banana", limit=5)] == [target.id]


CASES = {
    "NFC": ("We met in a naïve café", "naïve"),
    "NFD": (nfd("We met in a naïve café"), nfd("naïve")),
    "NFD text, NFC query": (nfd("We met in a naïve café"), "naïve"),
    "NFC text, NFD query": ("We met in a naïve café", nfd("naïve")),
    "NFD tilde": (nfd("See you mañana at noon"), nfd("mañana")),
    "NFD tilde, NFC query": (nfd("See you mañana at noon"), "mañana"),
    "Turkish capital dotted I": ("The flight to İzmir leaves at noon", "İzmir"),
    "Turkish capital dotted I, lower-case query": ("The flight to İzmir leaves at noon", "izmir"),
    "ASCII": ("The staging cluster runs Kubernetes", "kubernetes"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_memory_is_found_by_its_own_words_in_any_unicode_form(
    manager: MemoryManager, case: str
) -> None:
    text, query = CASES[case]
    target = await manager.add_memory(text)
    await manager.add_memory("We met in a busy cafeteria near the flight desk at noon")
    assert [memory.id for memory in await manager.search_memory(query)] == [target.id]
    long_term = await manager.add_memory(text, tier="long")
    found = await manager.search_memory(query, tiers=["long"])
    assert [memory.id for memory in found] == [long_term.id]


async def test_the_owner_column_is_not_searched_by_query_words(manager: MemoryManager) -> None:
    await manager.add_memory("The staging cluster runs Kubernetes")
    await manager.add_memory("Lunch is at noon", tier="long", importance=0.9)
    await manager.add_memory("Ana's private note", user_id="ana")
    for query in ("ownerdefault", owner_token(None), owner_token("ana"), f"{owner_token('ana')} noon"):
        found = await manager.search_memory(query, user_id=ALL_USERS)
        assert [memory.content for memory in found] == (["Lunch is at noon"] if "noon" in query else [])
    assert await manager.search_memory("ownerdefault") == []
    assert await manager.search_memory(owner_token("ana"), user_id="ana") == []
    # a memory that says the word is found by it
    says = await manager.add_memory("the ownerdefault flag is set")
    assert [memory.id for memory in await manager.search_memory("ownerdefault")] == [says.id]


CJK = {
    "Japanese": ("東京の天気は晴れです", ["東京", "天気", "晴れ", "東京の天気"]),
    "Chinese": ("我喜欢在北京吃烤鸭", ["北京", "烤鸭", "北京烤鸭", "鸭"]),
    "Chinese mixed with Latin": ("会议定在2024年3月的Zoom上", ["会议", "Zoom", "2024"]),
}


@pytest.mark.parametrize("tier", ["short", "medium", "long"])
async def test_chinese_and_japanese_memories_are_found_by_a_word(manager: MemoryManager, tier: str) -> None:
    """Chinese and Japanese write no spaces between words, and both indexes split words only at spaces and
    punctuation: a whole sentence was one index term, found by no word of it ("東京" found nothing in
    "東京の天気は晴れです"). Both backends index such text as its characters and their pairs."""
    stored = {}
    for name, (text, _) in CJK.items():
        stored[name] = await manager.add_memory(text, tier=tier, tags=["日本語タグ"])
    await manager.add_memory("An unrelated English note about the weather", tier=tier)
    for name, (_, queries) in CJK.items():
        for query in queries:
            found = await manager.search_memory(query, limit=3)
            assert found and found[0].id == stored[name].id, (name, query, [m.content for m in found])
    tagged = await manager.search_memory("タグ", limit=5)
    assert {m.id for m in tagged} == {m.id for m in stored.values()}
    assert await manager.search_memory("大阪", limit=3) == []  # no character of it is stored


async def test_a_long_term_tier_indexed_before_cjk_segmentation_is_reindexed_on_open(
    sqlite_config: ContextManagerConfig,
) -> None:
    import sqlite3

    async with MemoryManager(sqlite_config) as memory:
        stored = await memory.add_memory("東京の天気は晴れです", tier="long")
        english = await memory.add_memory("The staging cluster runs Kubernetes", tier="long")
    database = sqlite_config.resolved_storage_path / "memories.sqlite3"
    with sqlite3.connect(database) as connection:  # the index as the previous version wrote it
        connection.execute(
            "UPDATE memories_fts SET content = (SELECT content FROM memories WHERE memories.rowid = "
            "memories_fts.rowid)"
        )
        connection.execute("DELETE FROM schema_migrations WHERE name = '0005_cjk_segments'")
    async with MemoryManager(sqlite_config) as memory:
        assert [m.id for m in await memory.search_memory("天気")] == [stored.id]
        assert [m.id for m in await memory.search_memory("kubernetes")] == [english.id]
        assert (await memory.check_integrity())["ok"]


SYMBOL_MEMORIES = {
    "pizza": "Team dinner was pizza 🍕 on Friday",
    "party": "Launch party tonight🎉",
    "france": "Trip to Paris 🇫🇷 in May",
    "germany": "Trip to Berlin 🇩🇪 in June",
    "thumbs": "Great job on the release 👍🏽",
    "heart": "I ❤️ the new design",
    "check": "Backups verified ✓ on the staging cluster",
    "plain": "An unrelated note about the weather in Paris",
}
SYMBOL_QUERIES = {
    "🍕": ["pizza"],
    "🎉🎉": ["party"],
    "🎉": ["party"],
    "🇫🇷": ["france"],
    "🇩🇪": ["germany"],
    "👍": ["thumbs"],
    "👍🏿": ["thumbs"],  # another skin tone: the same thumb
    "❤": ["heart"],
    "❤️": ["heart"],
    "✓": ["check"],
    "🍔": [],  # not stored
    "🇯🇵": [],
}


@pytest.mark.parametrize("tier", ["short", "medium", "long"])
async def test_emoji_and_symbols_are_found_by_themselves(manager: MemoryManager, tier: str) -> None:
    """Both indexes split words at emoji and other symbols, and so did the query: "🍕" alone was no word at
    all (nothing found) and "pizza 🍕" found "pizza" only. Each symbol is now a term of its own, a flag one
    term of its two regional indicators, skin tones and variation selectors left out."""
    stored = {name: await manager.add_memory(text, tier=tier) for name, text in SYMBOL_MEMORIES.items()}
    tagged = await manager.add_memory("a note filed under a tag", tier=tier, tags=["🔥hot"])
    for query, names in SYMBOL_QUERIES.items():
        found = await manager.search_memory(query, limit=5)
        assert [m.id for m in found] == [stored[name].id for name in names], (
            query,
            [m.content for m in found],
        )
    assert [m.id for m in await manager.search_memory("🔥", limit=5)] == [tagged.id]
    assert [m.id for m in await manager.search_memory("hot", limit=5)] == [tagged.id]


async def test_a_query_of_words_and_an_emoji_ranks_what_has_both_first(manager: MemoryManager) -> None:
    both = await manager.add_memory("Team dinner was pizza 🍕 on Friday")
    word = await manager.add_memory("A pizza recipe from my grandmother")
    emoji = await manager.add_memory("Movie night 🍕 with friends")
    await manager.add_memory("Team lunch was sushi on Monday")
    found = [m.id for m in await manager.search_memory("pizza 🍕", limit=5)]
    assert found[0] == both.id and set(found) == {both.id, word.id, emoji.id}
    assert {m.id for m in await manager.search_memory("pizza", limit=5)} == {both.id, word.id}
    assert {m.id for m in await manager.search_memory("🍕", limit=5)} == {both.id, emoji.id}


async def test_term_frequencies_count_a_word_as_the_terms_it_is_searched_by(manager: MemoryManager) -> None:
    """The ranking's document frequencies (the feedback query's) of an emoji or a run of Japanese were 0 on
    SQLite (no such index term) and of an emoji 0 on PostgreSQL too: they count the terms search asks for
    (PostgreSQL's are estimates from the server's statistics, so only the sign is compared)."""
    await manager.add_memory("Team dinner was pizza 🍕 on Friday")
    await manager.add_memory("東京の天気は晴れです", tier="long")
    await manager.add_memory("東京の天気は雨です 🍕")
    frequencies, _ = await manager._require("test").term_frequencies(["🍕", "東京の天気", "天気", "pizza"])
    assert all(frequencies[word] > 0 for word in ("🍕", "東京の天気", "天気", "pizza")), frequencies


async def test_a_long_term_tier_indexed_before_symbols_were_terms_is_reindexed_on_open(
    sqlite_config: ContextManagerConfig,
) -> None:
    import json
    import sqlite3

    from context_manager.core.memory.index import segment_cjk

    async with MemoryManager(sqlite_config) as memory:
        pizza = await memory.add_memory("Team dinner was pizza 🍕 on Friday", tier="long")
        flag = await memory.add_memory("a trip", tier="long", tags=["🇫🇷"])
        japanese = await memory.add_memory("東京の天気は晴れです🎉", tier="long")
        english = await memory.add_memory("The staging cluster runs Kubernetes", tier="long")
    database = sqlite_config.resolved_storage_path / "memories.sqlite3"
    with sqlite3.connect(database) as connection:  # the index as the previous version wrote it
        for rowid, content, tags in connection.execute(
            "SELECT rowid, content, tags FROM memories"
        ).fetchall():
            tag_text = " ".join(json.loads(tags))
            connection.execute(
                "UPDATE memories_fts SET content = ?, tags = ? WHERE rowid = ?",
                (segment_cjk(content), segment_cjk(tag_text), rowid),
            )
        connection.execute("DELETE FROM schema_migrations WHERE name = '0007_symbol_terms'")
    async with MemoryManager(sqlite_config) as memory:
        assert [m.id for m in await memory.search_memory("🍕")] == [pizza.id]
        assert [m.id for m in await memory.search_memory("🇫🇷")] == [flag.id]
        assert [m.id for m in await memory.search_memory("🎉")] == [japanese.id]
        assert [m.id for m in await memory.search_memory("天気")] == [japanese.id]
        assert [m.id for m in await memory.search_memory("kubernetes")] == [english.id]
        assert (await memory.check_integrity())["ok"]


NUMBER_MEMORIES = {
    "area": "The pipe diameter is 5 m² at the inlet",
    "metre": "A pipe 5 m long at the outlet",
    "co2": "CO₂ levels rose in the greenhouse",
    "co": "CO levels in the garage are low",
    "water": "H₂O boils at 100 degrees",
    "half": "Add ½ cup of sugar",
    "cup": "A cup of tea with milk",
    "footnote": "See note ① below the table",
    "chapter": "Chapter Ⅻ of the novel",  # a letter number: a word on both backends before
    "plain": "An unrelated note about the weather",
}
NUMBER_QUERIES = {
    "m²": ["area"],
    "5 m²": ["area", "metre"],  # both hold "5", the first "m²" too
    "CO₂": ["co2"],
    "co₂ levels": ["co2", "co"],
    "H₂O": ["water"],
    "½": ["half"],
    "½ cup": ["half", "cup"],
    "①": ["footnote"],
    "Ⅻ": ["chapter"],
    "m2": [],  # "²" is not "2" (on either backend)
    "¾": [],  # not stored
}


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_superscripts_subscripts_and_fractions_are_searched_as_parts_of_their_word(
    manager: MemoryManager, tier: str
) -> None:
    """SQLite's index keeps "²" "₂" "½" "①" in their word ("m²" is one term, neither "m" nor "m2");
    PostgreSQL's parser took them for blanks, so "m²" searched for "m" (finding "5 m long", ranked as it
    came) and "½" alone found nothing. Both backends now find and rank the same memories."""
    stored = {name: await manager.add_memory(text, tier=tier) for name, text in NUMBER_MEMORIES.items()}
    tagged = await manager.add_memory("a note filed under a tag", tier=tier, tags=["x²"])
    for query, names in NUMBER_QUERIES.items():
        found = await manager.search_memory(query, limit=5)
        assert [m.id for m in found] == [stored[name].id for name in names], (
            query,
            [m.content for m in found],
        )
    assert [m.id for m in await manager.search_memory("x²", limit=5)] == [tagged.id]
    assert await manager.search_memory("x", limit=5) == []


SCRIPTS = {
    "Hindi": ("मेरी बहन दिल्ली में डॉक्टर है", "दिल्ली"),
    "Bengali": ("আমার প্রিয় খাবার ইলিশ মাছ", "ইলিশ"),
    "Tamil": ("நாளை சென்னையில் கூட்டம் உள்ளது", "சென்னையில்"),
    "Thai": ("ประชุมทีม วันจันทร์ ที่กรุงเทพ", "กรุงเทพ"),
    "pointed Hebrew": ("שָׁלוֹם, אֲנִי גָּר בִּירוּשָׁלַיִם", "בִּירוּשָׁלַיִם"),
    "Persian (zero-width non-joiner)": ("من فردا به کتاب\u200cخانه می\u200cروم", "کتاب\u200cخانه"),
    "English": ("The quarterly budget review is on Friday", "budget"),
    "Russian": ("Встреча с командой перенесена на пятницу", "пятницу"),
    "Chinese": ("项目代号：凤凰。负责人：李明", "凤凰"),
}


async def test_a_memory_is_found_by_a_word_of_its_script(manager: MemoryManager) -> None:
    """Each memory is found by one of its words, and only it, on both backends, in every tier."""
    added = {script: await manager.add_memory(text) for script, (text, _) in SCRIPTS.items()}
    in_long = {script: await manager.add_memory(text, tier="long") for script, (text, _) in SCRIPTS.items()}
    found: dict[str, tuple[list[str], list[str]]] = {}
    for script, (_, word) in SCRIPTS.items():
        short = await manager.search_memory(word, tiers=["short"])
        long = await manager.search_memory(word, tiers=["long"])
        found[script] = ([memory.id for memory in short], [memory.id for memory in long])
    assert found == {script: ([added[script].id], [in_long[script].id]) for script in SCRIPTS}


SPLIT_MEMORIES = {
    "branch": "\ue0a0main is the default branch",  # Powerline's branch glyph (private use)
    "icon": "Build \U000f0001deploy finished",  # a Nerd Fonts glyph of plane 15 (private use)
    "apple": "Sent from my \uf8ffphone",  # the Apple logo (private use)
    "ruble": "The ticket cost 500₽ at the station",  # a currency sign of Unicode 7.0
    "lira": "Kahve 40₺ oldu",
    "isolate": "Message from \u2068Alice\u2069 about lunch",  # how chat apps wrap a name
    "plain": "An unrelated note about the weather",
}
SPLIT_QUERIES = {
    "main": ["branch"],
    "\ue0a0main": ["branch"],
    "deploy": ["icon"],
    "\U000f0001deploy": ["icon"],
    "phone": ["apple"],
    "500": ["ruble"],
    "500₽": ["ruble"],
    "40₺": ["lira"],
    "alice": ["isolate"],
    "\u2068Alice\u2069": ["isolate"],
    "\ue0a0": [],  # no word
    "₽": [],
}


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_a_word_next_to_a_private_use_character_or_a_newer_sign_is_found(
    manager: MemoryManager, tier: str
) -> None:
    """FTS5's tables (Unicode 6.1) keep private-use characters and characters assigned since inside a word,
    where the query and PostgreSQL split: "\ue0a0main" was one term on SQLite, found by no query (the query
    asked for "main"). Both backends now find and rank the same memories."""
    stored = {name: await manager.add_memory(text, tier=tier) for name, text in SPLIT_MEMORIES.items()}
    tagged = await manager.add_memory("a note filed under a tag", tier=tier, tags=["\ue0b0urgent"])
    for query, names in SPLIT_QUERIES.items():
        found = await manager.search_memory(query, limit=5)
        assert [m.id for m in found] == [stored[name].id for name in names], (
            query,
            [m.content for m in found],
        )
    assert [m.id for m in await manager.search_memory("urgent", limit=5)] == [tagged.id]


CASED_MEMORIES = {
    "cherokee": "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ is spoken in Oklahoma",  # Cherokee is written in these (capital) letters
    "mtavruli": "ᲡᲐᲥᲐᲠᲗᲕᲔᲚᲝ on the title page",  # Georgian in capitals (Mtavruli)
    "adlam": "𞤀𞤣𞤤𞤢𞤥 script for Fula",
    "plain": "An unrelated note about the weather",
}
CASED_QUERIES = {
    "ᏣᎳᎩ": ["cherokee"],
    "ꮳꮃꭹ": ["cherokee"],  # the same word in Cherokee's lower case
    "ᲡᲐᲥᲐᲠᲗᲕᲔᲚᲝ": ["mtavruli"],
    "საქართველო": ["mtavruli"],  # the same word in Mkhedruli (Georgian's lower case)
    "𞤀𞤣𞤤𞤢𞤥": ["adlam"],
}


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_text_in_capitals_newer_than_fts5s_tables_is_found_by_its_words(
    manager: MemoryManager, tier: str
) -> None:
    """FTS5 folds the case of the letters of Unicode 6.1 only; the query (and PostgreSQL) lower-cases
    Cherokee, Georgian Mtavruli or Adlam capitals: on SQLite such text was found by nothing, its own words
    included. Both backends find the same memories now."""
    stored = {name: await manager.add_memory(text, tier=tier) for name, text in CASED_MEMORIES.items()}
    for query, names in CASED_QUERIES.items():
        found = await manager.search_memory(query, limit=5)
        assert [m.id for m in found] == [stored[name].id for name in names], (
            query,
            [m.content for m in found],
        )


NEWER_SEPARATORS = {
    "kannada": "\u0cf3",  # a sign of Unicode 15.0 (combining: no letter or digit)
    "lao": "\u0ece",
    "ideographic": "\u2ffc",  # an ideographic description character of Unicode 15.1
    "devanagari": "\U00011b00",  # a head mark of Unicode 15.0 (punctuation)
    "kawi": "\U00011f43",  # Kawi's danda
    "hieroglyph": "\U00013439",  # a format control of Egyptian hieroglyphs
    "alchemical": "\U0001f774",  # a symbol of Unicode 15.0 that is no emoji
}


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_a_word_next_to_a_sign_newer_than_pythons_unicode_is_found(
    manager: MemoryManager, tier: str
) -> None:
    """The marks, punctuation and symbols of Unicode 15.0 and 15.1 that are no letter or digit: the query
    splits words at them (on Python 3.11, whose Unicode 14.0 has them unassigned, as on 3.12 and 3.13), FTS5
    (Unicode 6.1) kept them inside a word: "alpha\U00011f43omega" was one term, found by neither word."""
    stored = {
        name: await manager.add_memory(f"alpha{sign}omega {name}", tier=tier)
        for name, sign in NEWER_SEPARATORS.items()
    }
    for name, sign in NEWER_SEPARATORS.items():
        for query in (name, f"alpha {name}", f"omega {name}", f"alpha{sign}omega {name}"):
            found = await manager.search_memory(query, limit=20)
            assert [m.id for m in found][:1] == [stored[name].id], (query, [m.content for m in found])
        assert len(await manager.search_memory("omega", limit=20)) == len(NEWER_SEPARATORS), name


def test_the_embedded_index_holds_the_terms_the_query_asks_for() -> None:
    """Over every assigned code point (Python's Unicode) that NFC leaves as it is: FTS5 makes the same terms
    of what :func:`segment_text` makes of ``"qa<c>qb"`` as of the terms a search of it asks for
    (``query_tokens``, ``segment_tokens``), on the SQLite this Python runs: the query splits words where the
    index does, and folds case as it does. Private use: its first and last code points."""
    import sqlite3

    from context_manager.core.memory.index import TOKENIZER, query_tokens, segment_text, segment_tokens

    points = [
        point
        for point in range(0x80, 0x110000)
        if unicodedata.category(chr(point)) not in ("Cn", "Co", "Cs")
        and unicodedata.normalize("NFC", chr(point)) == chr(point)
    ]
    points += [0xE000, 0xF8FF, 0xF0000, 0xFFFFD, 0x100000, 0x10FFFD]
    connection = sqlite3.connect(":memory:")
    terms: dict[str, dict[int, set[str]]] = {}
    for table, text_of in (
        ("stored", lambda text: segment_text(text)),
        ("asked", lambda text: " ".join(segment_tokens(query_tokens(text, symbols=True)))),
    ):
        connection.execute(f"CREATE VIRTUAL TABLE {table} USING fts5(x, tokenize='{TOKENIZER}')")
        connection.execute(f"CREATE VIRTUAL TABLE {table}_terms USING fts5vocab({table}, 'instance')")
        connection.executemany(
            f"INSERT INTO {table}(rowid, x) VALUES (?, ?)",
            [(point, text_of(f"qa{chr(point)}qb")) for point in points],
        )
        found = terms[table] = {}
        for point, term in connection.execute(f"SELECT doc, term FROM {table}_terms"):
            found.setdefault(point, set()).add(term)
    differ = [point for point in points if terms["stored"].get(point) != terms["asked"].get(point)]
    # but the circled capitals "Ⓐ"-"Ⓩ": no symbol term (SYMBOL_RANGES), while the query folds them to "ⓐ"-"ⓩ"
    differ = [point for point in differ if not 0x24B6 <= point <= 0x24CF]
    assert not differ, [
        (f"{point:x}", terms["stored"].get(point), terms["asked"].get(point)) for point in differ[:10]
    ]
    # the characters of the two bugs: split (private use, a newer sign), folded (Cherokee, Mtavruli)
    assert terms["stored"][0xE000] == terms["stored"][0x20BD] == {"qa", "qb"}
    assert terms["stored"][0x13A0] == {"qa\uab70qb"} and terms["stored"][0x1C90] == {"qa\u10d0qb"}


async def test_a_memory_with_tens_of_thousands_of_tags_is_stored_and_found(manager: MemoryManager) -> None:
    """80,000 distinct tags made a search vector over PostgreSQL's 1 MB: the memory failed to store ("string
    is too long for tsvector"), also with several megabytes of content and a long session date; SQLite
    stored it. PostgreSQL now indexes the tags that fit (the first ones); the tag filter sees them all."""
    tags = [f"customer{number:06d}account" for number in range(80_000)]
    content = "Quarterly kiwi report. " + " ".join(f"entry{number:07d}" for number in range(400_000))
    date = " ".join(f"day{number:06d}" for number in range(100_000))
    stored = await manager.add_memory(content, tags=tags, tier="long", metadata={"session_date": date})
    other = await manager.add_memory("An unrelated kiwi note", tags=["other"], tier="long")
    assert len(content) > 4_000_000
    copy = await manager.get_memory(stored.id)
    assert copy is not None and copy.content == content and copy.tags == tags
    assert copy.metadata["session_date"] == date
    assert [m.id for m in await manager.search_memory("quarterly report")] == [stored.id]
    assert [m.id for m in await manager.search_memory("customer000001account")] == [stored.id]
    assert [m.id for m in await manager.search_memory("kiwi", tags=["customer079999account"])] == [stored.id]
    assert [m.id for m in await manager.search_by_tags(["customer079999account"])] == [stored.id]
    assert {m.id for m in await manager.search_memory("kiwi")} == {stored.id, other.id}

    more = [f"vendor{number:06d}contract" for number in range(80_000)]
    await manager.update_memory(other.id, tags=more)
    assert [m.id for m in await manager.search_memory("unrelated")] == [other.id]
    assert [m.id for m in await manager.search_by_tags(["vendor079999contract"])] == [other.id]
    assert [m.id for m in await manager.search_memory("vendor000000contract")] == [other.id]


async def test_a_memory_with_a_long_session_date_is_stored_and_found(manager: MemoryManager) -> None:
    """A session date of 100,000 distinct words went over PostgreSQL's 1 MB vector: the memory failed to
    store. PostgreSQL now indexes the date's first 1,000 characters; the metadata keeps all of it."""
    date = " ".join(f"day{number:06d}" for number in range(100_000))
    stored = await manager.add_memory("The kiwi harvest", metadata={"session_date": date})
    assert [m.id for m in await manager.search_memory("kiwi harvest")] == [stored.id]
    assert [m.id for m in await manager.search_memory("day000001")] == [stored.id]
    copy = await manager.get_memory(stored.id)
    assert copy is not None and copy.metadata["session_date"] == date


async def test_a_merge_whose_tags_add_up_to_tens_of_thousands_is_stored(manager: MemoryManager) -> None:
    """Two near-duplicates of 40,000 distinct tags each stored on PostgreSQL; their merge, carrying all
    80,000, failed there (its search vector over 1 MB) and consolidation stopped."""
    content = "The kiwi harvest report for the northern farm"
    for first in (0, 40_000):
        tags = [f"customer{number:06d}account" for number in range(first, first + 40_000)]
        await manager.add_memory(content, tags=tags, tier="long")
    result = await manager.consolidate_memories(0.85)
    assert result["consolidated_count"] == 2
    found = await manager.search_memory("kiwi harvest")
    assert len(found) == 1 and len(found[0].tags) == 80_000 and found[0].merged_from
    assert [m.id for m in await manager.search_by_tags(["customer079999account"])] == [found[0].id]


MARKED_MEMORIES = {
    "yoruba": "Ọjọ́ ilé\u0329 wa ni abé\u0329de",  # NFC: "é" and U+0329 (a vertical line below)
    "decomposed": nfd("Ìgbà ẹ̀ṣẹ́ kọ̀ọ̀kan ní abé\u0329de"),  # "e", U+0329, U+0301 (and NFD elsewhere)
    "reordered": "Mo ri agbe\u0301\u0329re lana",  # the accent typed first: the same text in NFC
    "ipa": "The vowel in the IPA as q\u0329\u0301wak",  # no composed "q́": the accent stays a mark
    "plain": "An unrelated note about the weather in Lagos",
}
MARKED_QUERIES = {
    "ile": ["yoruba"],
    "ilé\u0329": ["yoruba"],
    "ile\u0301": ["yoruba"],
    "abe": ["yoruba", "decomposed"],
    "abé\u0329de": ["yoruba", "decomposed"],
    "agbe": ["reordered"],
    "agbé\u0329re": ["reordered"],
    "ojo": ["yoruba"],
    "Ọjọ́": ["yoruba"],
    "ese": ["decomposed"],
    "q": ["ipa"],
    "wak": ["ipa"],
    "lagos": ["plain"],
}


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_a_latin_letter_with_an_unfolded_mark_before_its_accent_is_found_by_the_folded_word(
    manager: MemoryManager, tier: str
) -> None:
    """The query ends a word at a combining mark FTS5 does not fold (U+0329) and folds the accent of what
    it ends ("é" as "e"); PostgreSQL's index read the text in NFC, where the accent is composed with the
    letter across that mark, and kept it: "ile" found "ilé̩" on SQLite, nothing on PostgreSQL."""
    stored = {name: await manager.add_memory(text, tier=tier) for name, text in MARKED_MEMORIES.items()}
    tagged = await manager.add_memory("a note filed under a tag", tier=tier, tags=["ọmọ ifé\u0329"])
    for query, names in MARKED_QUERIES.items():
        found = await manager.search_memory(query, limit=5)
        assert {m.id for m in found} == {stored[name].id for name in names}, (
            query,
            [m.content for m in found],
        )
    assert [m.id for m in await manager.search_memory("omo", limit=5)] == [tagged.id]
    assert [m.id for m in await manager.search_memory("ife", limit=5)] == [tagged.id]


GREEK_CAPITALS = {
    "dialytika": "ΠΡΩΤΕΥΟΥΣΑ ΚΑΙ ΠΡΟΪ́ΟΝ",  # "Ϊ" and U+0301: no composed capital ("ΐ" in small letters)
    "upsilon": "ΤΟ ΚΑΫ́ΚΙ ΤΟΥ ΨΑΡΑ",  # "Ϋ" and U+0301 (small: "ΰ")
    "perispomeni": "ΤΩ͂Ν ΘΕΩ͂Ν",  # polytonic capitals: "Ω" and U+0342 (small: "ῶ")
    "small": "προΐον καΰκι τῶν θεῶν",
    "plain": "An unrelated note about Athens",
}
GREEK_QUERIES = {
    "ΠΡΟΪ́ΟΝ": ["dialytika", "small"],
    "προΐον": ["dialytika", "small"],
    "ΚΑΫ́ΚΙ": ["upsilon", "small"],
    "καΰκι": ["upsilon", "small"],
    "ΘΕΩ͂Ν": ["perispomeni", "small"],
    "θεῶν": ["perispomeni", "small"],
    "πρωτευουσα": ["dialytika"],
}


@pytest.mark.parametrize("tier", ["short", "long"])
async def test_a_greek_capital_without_a_composed_form_is_found_by_its_word(
    manager: MemoryManager, tier: str
) -> None:
    """The query lower-cases "ΠΡΟΪ́ΟΝ" and composes it ("προΐον", "ΐ" one character); both indexes lower-cased
    it without composing ("ϊ" and U+0301 on PostgreSQL, "ϊ" on SQLite, whose FTS5 drops the accent): the
    capital's word was no term the query asked for, found by nothing, in capitals or not. Both backends now
    index such a capital as the query reads it."""
    stored = {name: await manager.add_memory(text, tier=tier) for name, text in GREEK_CAPITALS.items()}
    for query, names in GREEK_QUERIES.items():
        found = await manager.search_memory(query, limit=5)
        assert {m.id for m in found} == {stored[name].id for name in names}, (
            query,
            [m.content for m in found],
        )


async def test_a_long_term_tier_indexed_before_greek_capitals_were_composed_is_reindexed_on_open(
    sqlite_config: ContextManagerConfig,
) -> None:
    import sqlite3

    from context_manager.core.memory.index import normalize_text

    async with MemoryManager(sqlite_config) as memory:
        greek = await memory.add_memory("ΠΡΩΤΕΥΟΥΣΑ ΚΑΙ ΠΡΟΪ́ΟΝ", tier="long")
        english = await memory.add_memory("The staging cluster runs Kubernetes", tier="long")
    database = sqlite_config.resolved_storage_path / "memories.sqlite3"
    with sqlite3.connect(database) as connection:  # the index as the previous version wrote it
        for rowid, content in connection.execute("SELECT rowid, content FROM memories").fetchall():
            connection.execute(
                "UPDATE memories_fts SET content = ? WHERE rowid = ?", (normalize_text(content), rowid)
            )
        connection.execute("DELETE FROM schema_migrations WHERE name = '0009_greek_capitals'")
    async with MemoryManager(sqlite_config) as memory:
        assert await memory.search_memory("kubernetes") and await memory.search_memory("πρωτευουσα")
        assert [m.id for m in await memory.search_memory("προΐον")] == [greek.id]
        assert [m.id for m in await memory.search_memory("ΠΡΟΪ́ΟΝ")] == [greek.id]
        assert [m.id for m in await memory.search_memory("kubernetes")] == [english.id]
        assert (await memory.check_integrity())["ok"]
