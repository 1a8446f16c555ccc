"""Search answers the same on both backends whatever the Unicode form of the text and of the query.

1. Text stored in one normal form was not found by a query in another: Hangul typed as conjoining jamo (NFD,
   as macOS file names hold it) was found by no word typed as syllables on either backend, and on PostgreSQL
   "café" written decomposed ("cafe" and U+0301) was not found by "cafe". Both indexes and the query now
   read text in NFC, with full-width and half-width forms and ligatures in their usual form (NFKC of those).
2. SQLite's index folds accents ("cafe" finds "café"), PostgreSQL's did not: the two backends answered the
   same query differently. PostgreSQL now folds the same accents, without the ``unaccent`` extension.
3. A memory of number-dense text (circled numbers, superscripts: each spelled in ASCII in PostgreSQL's index)
   with many tags made a search vector over PostgreSQL's 1 MB and failed to store; it is stored whole and
   indexed as far as fits.
4. PostgreSQL's parser kept e-mail addresses, host names, URLs, file paths, decimal, version and signed
   numbers whole, where the query (and SQLite) splits them into words: "alice" did not find
   "alice@example.com" there, nor "usr" "/usr/local/bin", nor "3.14" "pi is 3.14".
5. PostgreSQL kept the accent of a Latin letter NFC composed across a mark that ends the word ("é̩"), and
   lower-cased a Greek capital without composing it with its mark ("Ϊ́"): migration 0012 indexes both as
   the query reads them, and derives the vectors of the rows holding a combining mark again.
"""

from __future__ import annotations

import asyncio
import random
import unicodedata
from pathlib import Path

import pytest

import context_manager
from context_manager.core.memory.manager import MemoryManager


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


FORMS = {
    # name: (stored text, queries that must find it)
    "accent folded": ("We met in a naïve café in Zürich", ["cafe", "naive", "zurich", "café", nfd("café")]),
    "decomposed text": (nfd("We met in a naïve café in Zürich"), ["cafe", "café", "zürich", "zurich"]),
    "accented query of plain text": ("We met in a naive cafe in Zurich", ["café", nfd("naïve"), "Zürich"]),
    "Spanish": ("Mañana vamos a la estación", ["manana", "estacion", "mañana", "ESTACIÓN"]),
    "Hangul jamo": (nfd("한국어 공부를 합니다"), ["한국어", "공부를"]),
    "Hangul syllables, jamo query": ("한국어 공부를 합니다", [nfd("한국어")]),
    "full-width": ("Ｔｏｋｙｏ office opens at ９ am", ["tokyo", "Tokyo", "Ｔｏｋｙｏ"]),
    "full-width query": ("Tokyo office opens at 9 am", ["Ｔｏｋｙｏ"]),
    "ligature": ("The ﬁnal ofﬁce ﬂoor plan", ["final", "office", "floor", "ﬁnal"]),
    "half-width katakana": ("ｶﾀｶﾅ で書いた", ["カタカナ"]),
    "half-width sound marks": ("ｶﾞｲﾄﾞﾌﾞｯｸ と ﾊﾟﾝ", ["ガイドブック", "ｶﾞｲﾄﾞﾌﾞｯｸ", "パン", "ﾊﾟﾝ"]),
    "half-width query of full-width kana": ("ガイドブック と パン", ["ｶﾞｲﾄﾞﾌﾞｯｸ", "ﾊﾟﾝ", "ガイドブック"]),
    "half-width sound mark after an accent": ("un caféﾞ crème", ["cafe", "café", "creme"]),
    "Cyrillic decomposed": (nfd("Мой район у моря"), ["район", "мой"]),
    "Greek decomposed": (nfd("Καλημέρα από την Αθήνα"), ["καλημέρα", "αθήνα"]),
    "e-mail": ("Write to alice@example.com today", ["alice", "example", "alice@example.com"]),
    "URL": ("Docs at https://docs.example.org/guide/setup", ["docs", "guide", "setup"]),
    "path": ("The binary is in /usr/local/bin", ["usr", "local", "/usr/local/bin"]),
    "decimal": ("Pi is about 3.14159 here", ["3.14159", "14159"]),
    "version": ("Upgrade to release 2.7.1 now", ["2.7.1"]),
    "signed number": ("The freezer is at -18 degrees", ["-18", "18"]),
    "accented e-mail": ("Écris à josé@exemple.fr demain", ["jose", "exemple", "josé"]),
}


@pytest.mark.parametrize("case", list(FORMS))
@pytest.mark.parametrize("tier", ["short", "long"])
async def test_a_memory_is_found_whatever_the_unicode_form_of_text_and_query(
    manager: MemoryManager, case: str, tier: str
) -> None:
    text, queries = FORMS[case]
    target = await manager.add_memory(text, tier=tier)
    await manager.add_memory("An unrelated note about the weather in Paris", tier=tier)
    for query in queries:
        found = await manager.search_memory(query, limit=3)
        assert [memory.id for memory in found] == [target.id], (case, query)
        assert found[0].content == text  # stored as given


async def test_a_csv_of_numbers_is_stored_whole_and_found_by_a_number(manager: MemoryManager) -> None:
    """A 600 KB CSV of decimal numbers: stored whole, found by its words and by a number of it (PostgreSQL's
    parser kept "123.4567" whole, where the query asks for "123" and "4567": it found nothing there)."""
    import random

    draw = random.Random(11)
    rows = [",".join(f"{draw.random() * 1e6:.4f}" for _ in range(8)) for _ in range(8_000)]
    content = "sensor export kiwi\n" + "\n".join(rows)
    assert len(content) > 600_000
    stored = await manager.add_memory(content, tier="long")
    other = await manager.add_memory("An unrelated kiwi note", tier="long")
    copy = await manager.get_memory(stored.id)
    assert copy is not None and copy.content == content
    assert [m.id for m in await manager.search_memory("sensor export", limit=3)] == [stored.id]
    assert {m.id for m in await manager.search_memory("kiwi", limit=3)} == {stored.id, other.id}
    first = rows[0].split(",")[0]
    assert [m.id for m in await manager.search_memory(first, limit=3)] == [stored.id]


async def test_number_dense_text_with_many_tags_is_stored_whole_and_indexed_as_far_as_fits(
    manager: MemoryManager,
) -> None:
    """100,000 characters of words of circled numbers and superscripts (each spelled in eight bytes on
    PostgreSQL) with 80,000 tags made a vector over 1 MB there: "memory write failed ... string is too long
    for tsvector". Now stored whole, found by its first words and its tags."""
    import random

    draw = random.Random(5)
    numbers = [chr(point) for point in range(0x2460, 0x2474)] + list("⁰¹²³⁴⁵⁶⁷⁸⁹₀₁₂₃₄₅₆₇₈₉")
    words = ["".join(draw.choice(numbers) for _ in range(12)) for _ in range(9_000)]
    content = "kiwi harvest " + " ".join(words)
    tags = [f"customer{number:06d}account" for number in range(80_000)]
    stored = await manager.add_memory(content, tags=tags, tier="long")
    other = await manager.add_memory("An unrelated kiwi note", tier="long")
    copy = await manager.get_memory(stored.id)
    assert copy is not None and copy.content == content and copy.tags == tags
    assert [m.id for m in await manager.search_memory("harvest", limit=3)] == [stored.id]
    assert [m.id for m in await manager.search_memory(words[0], limit=3)] == [stored.id]
    assert [m.id for m in await manager.search_memory("customer000001account", limit=3)] == [stored.id]
    assert {m.id for m in await manager.search_memory("kiwi", limit=3)} == {stored.id, other.id}
    await manager.update_memory(other.id, content=content.replace("kiwi harvest", "lime crop"), tags=tags)
    assert [m.id for m in await manager.search_memory("lime crop", limit=3)] == [other.id]


ACCENT_TEXTS = [
    "Crème brûlée at the café in Zürich, naïve façade, Ångström, Łódź, Ærø",
    nfd("Crème brûlée at the café in Zürich"),
    "Ｔｏｋｙｏ ﬁnal ｶﾀｶﾅ ﬃ Ｎｏ.９",
    "Мой район, Αθήνα, 한국어, " + nfd("한국어"),
    "m² ½ CO₂ 🍕 東京 naïve² e\u0301\u0327t",
    "mail josé@exemple.fr, https://exemple.fr/ça, v2.7.1, -18, 3.14",
    "Ọjọ́ ilé\u0329 abé\u0329de agbe\u0301\u0329re q\u0329\u0301wak e\u031b\u0329\u0301x",
    "ΠΡΟΪ́ΟΝ ΚΑΫ́ΚΙ ΤΩ͂Ν " + nfd("ΠΡΟΪ́ΟΝ") + " Άͅ ῬἘ",
]


async def test_the_server_folds_text_as_the_query_does(postgres_dsn: str) -> None:
    """Migration 0011's vector reads the text folded as the query's words are (``normalize_text``, then
    ``fold_accents``): the server's fold and Python's give the same text."""
    import psycopg

    from context_manager.core.memory.index import (
        COMPATIBILITY_RANGES,
        fold_accents,
        normalize_text,
    )
    from context_manager.core.memory.postgres import separators
    from context_manager.core.memory.postgres.schema import fold_sql

    assert separators.COMPATIBILITY_RANGES == COMPATIBILITY_RANGES
    fold = fold_sql(
        "t", f"'{separators.COMPATIBILITY}'", f"'{separators.COMPATIBILITY_PARTS}'", f"'{separators.ACCENTS}'"
    )
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        cursor = await connection.execute(f"SELECT {fold} FROM unnest(%s::text[]) AS t", (ACCENT_TEXTS,))
        folded = [row[0] for row in await cursor.fetchall()]
        assert folded == [fold_accents(normalize_text(text)) for text in ACCENT_TEXTS]
        assert folded[0] == "Creme brulee at the cafe in Zurich, naive facade, Angstrom, Łodz, Ærø"
        assert folded[2] == "Tokyo final カタカナ ffi No.9"
        assert folded[3].endswith("한국어, 한국어") and "район" in folded[3] and "Αθήνα" in folded[3]


async def test_a_store_indexed_before_0011_is_folded_in_batches_on_open(postgres_dsn: str) -> None:
    """Migration 0011 installs the folding trigger; every row gets its new vector afterwards, in batches of
    their own transactions, once, with two processes starting together; a new row gets it from the trigger."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    before = [(name, statements) for name, statements in MIGRATIONS if name < "0011"]
    assert len(before) == 10
    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    try:
        await database.migrate(before)
    finally:
        await database.close()
    rows = {  # content, a query that must find it
        "cafe": ("We met in a naïve café", "cafe"),
        "decomposed": (nfd("Meeting in Zürich on Monday"), "zurich"),
        "mail": ("Write to alice@example.com today", "alice"),
        "full-width": ("Ｔｏｋｙｏ office", "tokyo"),
        "plain": ("An unrelated note about the weather", "weather"),
    }
    filler = [(f"filler{number:05d}", f"Filler note number {number} about kiwi") for number in range(1_100)]
    async with (
        await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection,
        connection.cursor() as cursor,
    ):
        await cursor.executemany(
            # rows written by the earlier version: its trigger computed the vector
            "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, last_accessed, "
            "source) VALUES (%s, 'long', '', %s, 0.5, 1.0, 1.0, 'user')",
            [(memory_id, content) for memory_id, (content, _) in rows.items()] + filler,
        )

    def config() -> ContextManagerConfig:
        return ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")

    first, second = MemoryManager(config()), MemoryManager(config())
    try:
        await asyncio.gather(first.initialize(), second.initialize())
        for memory_id, (_, query) in rows.items():
            assert [m.id for m in await first.search_memory(query, limit=3)] == [memory_id], query
        assert len(await first.search_memory("kiwi", limit=2_000)) == 1_100
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute("SELECT count(*) FROM cm_search_rederive")
            assert await cursor.fetchone() == (0,)  # done: nothing left for the next start
            cursor = await connection.execute(
                "SELECT count(*) FROM cm_schema_migrations WHERE name LIKE '0011%' OR name LIKE '0012%'"
            )
            assert await cursor.fetchone() == (2,)
        new = await second.add_memory("Crème brûlée for dessert", tier="long")
        assert [m.id for m in await first.search_memory("creme brulee", limit=3)] == [new.id]
        await second.update_memory(new.id, content="Fondue in Gruyères")
        assert [m.id for m in await first.search_memory("gruyeres", limit=3)] == [new.id]
    finally:
        await first.close()
        await second.close()


async def test_the_trigger_and_the_upgrade_derive_the_same_vectors(postgres_dsn: str) -> None:
    """Migration 0011's trigger folds text in statements (each step only when it changes something), its
    re-derivation of existing rows in one expression (``fold_sql``): the same vector for every text."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.schema import rederive_search_sql

    draw = random.Random(12)
    punctuated = [  # ASCII: 0012's vector of it at once, 0011's through its regular expression
        "".join(
            draw.choice("abc019 -&+./:<>@_~,;'!?#$%*()[]{}|=\\\"`^\n") for _ in range(draw.randint(1, 40))
        )
        for _ in range(200)
    ]
    texts = (
        [text for text, _ in FORMS.values()]
        + ACCENT_TEXTS
        + ["plain", "Ångström ﬁ", "\u212b", "alice@example.com /usr/local/bin 3.14 -18 v2.7.1 a+b <b>"]
        + punctuated
    )
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config) as manager:
        for number, text in enumerate(texts):
            await manager.add_memory(text, tags=[text[:20]], tier="long", metadata={"session_date": text[:9]})
            await manager.add_memory(text, user_id=f"user{number}")
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        for number, text in enumerate(texts):  # a previous turn (a conversation memory's context)
            await connection.execute(
                "INSERT INTO cm_memories (id, tier, owner, content, context, importance, created_at, "
                "last_accessed, source) VALUES (%s, 'medium', '', 'turn', %s, 0.5, 1.0, 1.0, 'user')",
                (f"turn{number}", text),
            )
        cursor = await connection.execute("SELECT count(*) FROM cm_memories")
        assert await cursor.fetchone() == (3 * len(texts),)
        for migration in ("0011", "0012"):
            cursor = await connection.execute(rederive_search_sql(last=True, migration=migration), ("", ""))
            assert cursor.rowcount == 0  # no stored vector differs from the re-derived one


MARK_LETTERS = ["e", "q", "O", "H", "ж", "Ι", "Ϊ", "Α", "Ω", "Υ", "ά", "Ρ", "ø"]
MARKS = [
    "\u0301", "\u0300", "\u0329", "\u0323", "\u0305", "\u0342", "\u0345", "\u0313", "\u0308", "\u0331",
    "\u0327", "\u031b", "\u034f", "\u1dca", "\u20d7", "\u0e48",
]  # fmt: skip


async def test_the_server_indexes_every_word_the_query_makes_of_a_letter_and_its_marks(
    postgres_dsn: str,
) -> None:
    """Latin, Greek and Cyrillic letters, capital or small, with one or two combining marks (folded accents,
    marks FTS5 does not fold, marks of other blocks and of class 0), in every order: each word the query
    makes of the text (``query_tokens``, folded as a search asks for it) is a term of the row's vector.
    Before 0012: "e", U+0329, U+0301 was indexed "é" (asked for as "e"), "Ϊ", U+0301 as "ϊ" and U+0301
    (asked for as "ΐ")."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.index import fold_accents, query_tokens, segment_tokens
    from context_manager.core.memory.postgres.separators import spell_numbers

    sequences = [first + second for first in MARKS for second in ["", *MARKS]]
    texts = [f"qa{letter}{marks}qb {letter}{marks}" for letter in MARK_LETTERS for marks in sequences]
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config):  # the schema
        pass
    pairs = []
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, last_accessed, "
                "source) VALUES (%s, 'long', '', %s, 0.5, 1.0, 1.0, 'user')",
                [(f"m{number:05d}", text) for number, text in enumerate(texts)],
            )
        for number, text in enumerate(texts):
            words = segment_tokens(query_tokens(text, symbols=True))
            pairs += [(f"m{number:05d}", spell_numbers(fold_accents(word))) for word in words]
        cursor = await connection.execute(
            "SELECT c.content, p.word FROM unnest(%s::text[], %s::text[]) AS p(id, word) "
            "JOIN cm_memories AS c ON c.id = p.id "
            "WHERE numnode(plainto_tsquery('english', p.word)) > 0 "
            "AND NOT c.search @@ plainto_tsquery('english', p.word)",
            ([memory_id for memory_id, _ in pairs], [word for _, word in pairs]),
        )
        missed = await cursor.fetchall()
    assert len(pairs) > 2 * len(texts)
    assert missed == [], [
        (text.encode("unicode_escape"), word.encode("unicode_escape")) for text, word in missed[:10]
    ]


async def test_a_store_indexed_before_0012_derives_the_rows_holding_a_mark_again_on_open(
    postgres_dsn: str,
) -> None:
    """Migration 0012 installs its trigger; the rows holding a combining mark get its vector afterwards, in
    batches (``cm_search_rederive``), the other rows are not written."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    try:
        await database.migrate([(name, statements) for name, statements in MIGRATIONS if name < "0012"])
    finally:
        await database.close()
    rows = {  # content, a query that must find it
        "yoruba": ("Ọjọ́ ifé\u0329 wa", "ife"),
        "decomposed": (nfd("abé\u0329de"), "abe"),
        "greek": ("ΠΡΟΪ́ΟΝ", "προΐον"),
        "accented": ("We met in a naïve café", "cafe"),
        "plain": ("Write to alice@example.com today", "alice"),
    }
    filler = [(f"filler{number:05d}", f"Filler ilé\u0329 {number} about kiwi") for number in range(700)]
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        async with connection.cursor() as cursor:
            await cursor.executemany(  # written by the earlier version: 0011's trigger computed the vector
                "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, last_accessed, "
                "source) VALUES (%s, 'long', '', %s, 0.5, 1.0, 1.0, 'user')",
                [(memory_id, content) for memory_id, (content, _) in rows.items()] + filler,
            )
        await connection.execute("DELETE FROM cm_search_rederive")  # 0011's upgrade done
        cursor = await connection.execute("SELECT id, xmin::text FROM cm_memories")
        versions = dict(await cursor.fetchall())
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config) as manager:
        for memory_id, (_, query) in rows.items():
            assert [m.id for m in await manager.search_memory(query, limit=3)] == [memory_id], query
        assert len(await manager.search_memory("ile kiwi", limit=1_000)) == 700
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute("SELECT count(*) FROM cm_search_rederive")
            assert await cursor.fetchone() == (0,)
            cursor = await connection.execute("SELECT id, xmin::text FROM cm_memories")
            rewritten = {
                memory_id for memory_id, version in await cursor.fetchall() if versions[memory_id] != version
            }
        assert rewritten == {"yoruba", "decomposed", "greek"} | {memory_id for memory_id, _ in filler}


async def test_a_store_indexed_before_0012_gives_the_rows_holding_a_half_width_sound_mark_its_vector(
    postgres_dsn: str,
) -> None:
    """A half-width voiced or semi-voiced sound mark ("ﾞ", "ﾟ") is a combining mark once folded (NFKC), so
    0012's trigger indexes "caféﾞ" as the query reads it ("cafe": the word ends at the mark); but 0012
    derived again only the rows holding a combining mark as stored, and such a row kept 0011's vector
    ("café"): "cafe" found it on SQLite, not on PostgreSQL. Migration 0014 gives those rows the vector."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    try:
        await database.migrate([(name, statements) for name, statements in MIGRATIONS if name < "0012"])
    finally:
        await database.close()
    rows = {  # content, queries that must find it
        "voiced": ("un caféﾞ crème", ["cafe", "café"]),
        "semi-voiced": ("the résuméﾟ file", ["resume", "résumé"]),
        "kana": ("ｶﾞｲﾄﾞﾌﾞｯｸ と ﾊﾟﾝ", ["ガイドブック", "ｶﾞｲﾄﾞﾌﾞｯｸ", "パン", "ﾊﾟﾝ"]),
        "full-width": ("カフェの メニュー", ["ｶﾌｪ", "ﾒﾆｭｰ", "メニュー"]),
    }
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        async with connection.cursor() as cursor:
            await cursor.executemany(  # written by the earlier version: 0011's trigger computed the vector
                "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, last_accessed, "
                "source) VALUES (%s, 'long', '', %s, 0.5, 1.0, 1.0, 'user')",
                [(memory_id, content) for memory_id, (content, _) in rows.items()],
            )
        await connection.execute("DELETE FROM cm_search_rederive")  # 0011's upgrade done
        cursor = await connection.execute("SELECT id, xmin::text FROM cm_memories")
        versions = dict(await cursor.fetchall())
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config) as manager:
        for memory_id, (_, queries) in rows.items():
            for query in queries:
                assert [m.id for m in await manager.search_memory(query, limit=5)] == [memory_id], query
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute("SELECT count(*) FROM cm_search_rederive")
            assert await cursor.fetchone() == (0,)
            cursor = await connection.execute("SELECT id, xmin::text FROM cm_memories")
            rewritten = {
                memory_id for memory_id, version in await cursor.fetchall() if versions[memory_id] != version
            }
        assert rewritten == {"voiced", "semi-voiced"}  # kana alone: the same vector under 0011 and 0012


async def test_the_0014_upgrade_passes_over_the_rows_it_has_nothing_to_change_for(postgres_dsn: str) -> None:
    """Migration 0014's rows (holding a half-width sound mark) are rare, but its upgrade locked every row of
    the store a batch at a time and ran the statement computing vectors on each batch (its planning alone
    0.3 to 1.5 s: 69 s for 100k memories without such a row, the opening process waiting, every row's
    writers waiting for its batch). A batch without such a row is passed over: a row another transaction
    holds (a write in progress) no longer holds up the opening, and the rows that need it still get it."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    try:
        await database.migrate([(name, statements) for name, statements in MIGRATIONS if name < "0012"])
    finally:
        await database.close()
    # in key order: a batch (500 rows) without a mark, then one holding the marked row
    rows = [("a-plain-1", "the weather in Paris"), ("a-plain-2", "a boat on the lake")]
    rows += [(f"b-filler-{number:04}", f"filler number {number}") for number in range(600)]
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, last_accessed, "
                "source) VALUES (%s, 'long', '', %s, 0.5, 1.0, 1.0, 'user')",
                [*rows, ("z-voiced", "un caféﾞ crème")],
            )
        await connection.execute("DELETE FROM cm_search_rederive")  # 0011's upgrade done
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    manager = MemoryManager(config)
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as writer:
        # a write in progress on a row without a mark (0012's rows first, then 0014's: none is marked as
        # stored, so both pass over it)
        await writer.execute("UPDATE cm_memories SET importance = 0.6 WHERE id = 'a-plain-2'")
        opening = asyncio.ensure_future(manager.initialize())
        try:
            done, _ = await asyncio.wait({opening}, timeout=20)
            assert opening in done, "the upgrade waited for a row it had nothing to change for"
        finally:
            await writer.rollback()
            await opening
    try:
        assert [m.id for m in await manager.search_memory("cafe", limit=5)] == ["z-voiced"]
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute("SELECT count(*) FROM cm_search_rederive")
            assert await cursor.fetchone() == (0,)
    finally:
        await manager.close()


async def test_rebuild_index_normalises_long_term_memories_indexed_before(tmp_path: Path) -> None:
    """SQLite: a long-term memory indexed before text was normalised (Hangul jamo as typed) is found by its
    words typed as syllables after ``rebuild_index()`` (an index changed behind the store's back: migration
    ``0008_normal_forms`` indexes a store written before when it opens)."""
    import sqlite3

    from context_manager.core.config import ContextManagerConfig

    config = ContextManagerConfig(storage_path=tmp_path / "storage")
    text = nfd("한국어 공부를 합니다")
    async with MemoryManager(config) as memory:
        stored = await memory.add_memory(text, tier="long")
    database = config.resolved_storage_path / "memories.sqlite3"
    with sqlite3.connect(database) as connection:  # the index as the previous version wrote it
        connection.execute(
            "UPDATE memories_fts SET content = (SELECT content FROM memories WHERE memories.rowid = "
            "memories_fts.rowid)"
        )
    async with MemoryManager(config) as memory:
        assert await memory.search_memory("한국어") == []
        await memory.rebuild_index()
        assert [m.id for m in await memory.search_memory("한국어")] == [stored.id]
        assert (await memory.check_integrity())["ok"]


INDEXED_BEFORE = {
    # name: (stored text, tags, queries that must find it)
    "ligature": ("The ﬁnal report is due", [], ["final", "ﬁnal"]),
    "full-width": ("Ｔｏｋｙｏ office opens at ９ am", [], ["tokyo", "9"]),
    "half-width katakana": ("ｶﾀｶﾅ で書いた", [], ["カタカナ"]),
    "decomposed": ("We met at a cafe\u0301 downtown", [], ["café", "cafe"]),
    "Hangul jamo": (nfd("한국어 공부를 합니다"), [], ["한국어"]),
    "full-width tag": ("a note filed under a tag", ["ｒｏａｄｍａｐ"], ["roadmap"]),
    "private-use glyph": ("\ue0a0main branch is green", [], ["main"]),
    "Cherokee capitals": ("ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ", [], ["ᏣᎳᎩ"]),
    "Unicode 15.1 sign": ("alpha\u2ffcomega layout", [], ["alpha", "omega"]),
    "Japanese": ("東京の天気は晴れです🎉", [], ["天気", "🎉"]),
    "ASCII": ("The staging cluster runs Kubernetes", [], ["kubernetes"]),
}


async def test_a_long_term_tier_indexed_before_normalisation_is_found_on_open(tmp_path: Path) -> None:
    """SQLite: long-term memories indexed before text was normalised ("ﬁnal", "Ｔｏｋｙｏ", "ｶﾀｶﾅ", text typed
    decomposed) or split at the separators and capitals FTS5 does not know were found by no query in the
    usual form until the user ran ``rebuild_index()``, which nobody does after an upgrade. Migration
    ``0008_normal_forms`` indexes them again when the store opens."""
    import json
    import sqlite3

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.index import segment_cjk

    config = ContextManagerConfig(storage_path=tmp_path / "storage")
    async with MemoryManager(config) as memory:
        stored = {
            name: await memory.add_memory(text, tier="long", tags=tags)
            for name, (text, tags, _) in INDEXED_BEFORE.items()
        }
    database = config.resolved_storage_path / "memories.sqlite3"
    with sqlite3.connect(database) as connection:  # the index as 0007 wrote it: no symbol in these texts
        rows = connection.execute("SELECT rowid, content, tags FROM memories").fetchall()
        for rowid, content, tags in rows:
            if content != INDEXED_BEFORE["Japanese"][0]:
                connection.execute(
                    "UPDATE memories_fts SET content = ?, tags = ? WHERE rowid = ?",
                    (segment_cjk(content), segment_cjk(" ".join(json.loads(tags))), rowid),
                )
        connection.execute("DELETE FROM schema_migrations WHERE name = '0008_normal_forms'")
    async with MemoryManager(config) as memory:
        for name, (text, _, queries) in INDEXED_BEFORE.items():
            for query in queries:
                found = await memory.search_memory(query, limit=3)
                assert [m.id for m in found] == [stored[name].id], (name, query)
                assert found[0].content == text  # stored as given
        assert (await memory.check_integrity())["ok"]
    with sqlite3.connect(database) as connection:
        assert connection.execute(
            "SELECT count(*) FROM schema_migrations WHERE name = '0008_normal_forms'"
        ).fetchone() == (1,)


REPOSITORY = Path(__file__).resolve().parents[3]
SOURCE = str(Path(context_manager.__file__).resolve().parents[1])
"""The directory holding the package under test (a subprocess imports it from there)."""
PREVIOUS_RELEASE = "4eab135"
"""A commit of the code before text was normalised in the index (it wrote stores at migration 0007)."""

WRITE_WITH_PREVIOUS_RELEASE = """
import asyncio, json, sys
from pathlib import Path
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

async def main():
    texts = json.loads(sys.argv[2])
    async with MemoryManager(ContextManagerConfig(storage_path=Path(sys.argv[1]))) as memory:
        ids = {}
        for name, (text, tags) in texts.items():
            ids[name] = (await memory.add_memory(text, tier="long", tags=tags)).id
    print(json.dumps(ids))

asyncio.run(main())
"""


async def test_a_store_written_by_the_code_before_normalisation_finds_its_memories_on_open(
    tmp_path: Path,
) -> None:
    """The same, with a store the code before this change wrote (a checkout of it, from git)."""
    import json
    import os
    import sys

    from context_manager.core.config import ContextManagerConfig

    previous = tmp_path / "previous"
    extract = await asyncio.create_subprocess_shell(
        f"mkdir '{previous}' && git -C '{REPOSITORY}' archive {PREVIOUS_RELEASE} src "
        f"| tar -x -C '{previous}'",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await extract.wait() != 0 or not (previous / "src" / "context_manager").is_dir():
        pytest.skip(f"no git checkout holding commit {PREVIOUS_RELEASE}")
    storage = tmp_path / "storage"
    texts = {name: (text, tags) for name, (text, tags, _) in INDEXED_BEFORE.items()}
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITE_WITH_PREVIOUS_RELEASE,
        str(storage),
        json.dumps(texts),
        env={**os.environ, "PYTHONPATH": str(previous / "src")},
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await writer.communicate()
    assert writer.returncode == 0
    stored = json.loads(output)
    config = ContextManagerConfig(storage_path=storage)
    async with MemoryManager(config) as memory:
        for name, (text, _, queries) in INDEXED_BEFORE.items():
            for query in queries:
                found = await memory.search_memory(query, limit=3)
                assert [m.id for m in found] == [stored[name]], (name, query)
                assert found[0].content == text


KILLED_WHILE_INDEXING = """
import os, signal, sys
from pathlib import Path
from context_manager.core.memory import index
from context_manager.core.memory.sqlite_store import SQLiteStore

calls = 0

def kill_in_the_middle(frame, event, arg):
    global calls
    if event == "call" and frame.f_code is index.segment_text.__code__:
        calls += 1
        if calls == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(kill_in_the_middle)
SQLiteStore(Path(sys.argv[1])).open()
print("not killed")
"""


async def test_a_process_killed_while_0008_indexes_again_leaves_it_to_the_next_open(tmp_path: Path) -> None:
    """Migration 0008 writes its rows in the transaction that records it: a process killed in the middle
    (here after more than 2,000 of 3,000 rows) leaves the index as it was, and the next open applies it."""
    import os
    import signal
    import sqlite3
    import sys

    from context_manager.core.memory.index import build_match, owner_token, segment_cjk, segment_text
    from context_manager.core.memory.models import Memory
    from context_manager.core.memory.sqlite_store import SQLiteStore

    path = tmp_path / "memories.sqlite3"
    store = SQLiteStore(path)
    store.open()
    texts = [f"The ﬁnal report number {index} of Ｔｏｋｙｏ" for index in range(3_000)]
    store.put(
        [
            Memory(id=f"m{index}", content=text, created_at=1.0, last_accessed=1.0)
            for index, text in enumerate(texts)
        ]
    )
    store.close()
    with sqlite3.connect(path) as connection:  # the index as 0007 wrote it
        connection.execute(
            "UPDATE memories_fts SET content = (SELECT content FROM memories WHERE memories.rowid = "
            "memories_fts.rowid)"
        )
        connection.execute("DELETE FROM schema_migrations WHERE name = '0008_normal_forms'")
    opener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_WHILE_INDEXING,
        str(path),
        str(3 * 2_200),  # segment_text is called for 3 columns a row: in the row 2,200
        env={**os.environ, "PYTHONPATH": SOURCE},
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await opener.communicate()
    assert opener.returncode == -signal.SIGKILL, output
    with sqlite3.connect(path) as connection:  # nothing of the migration is in the store
        assert connection.execute(
            "SELECT count(*) FROM schema_migrations WHERE name = '0008_normal_forms'"
        ).fetchone() == (0,)
        indexed = [content for (content,) in connection.execute("SELECT content FROM memories_fts")]
        assert indexed == [segment_cjk(text) for text in texts]
    store = SQLiteStore(path)
    assert store.open() == ["0008_normal_forms"]
    try:
        assert len(store.search(build_match(["final", "tokyo"], owner_token(None)), 5_000)) == 3_000
        assert set(store.check_integrity().values()) == {"ok"}
    finally:
        store.close()
    with sqlite3.connect(path) as connection:
        indexed = [content for (content,) in connection.execute("SELECT content FROM memories_fts")]
        assert indexed == [segment_text(text) for text in texts]


def test_0008_segments_only_the_rows_whose_indexing_changed(tmp_path: Path) -> None:
    """Most stores hold no text 0008 changes: it picks out the rows holding text that is not ASCII in SQL
    and segments only those holding a character whose indexing changed (here 1 row of 2,011)."""
    import sqlite3
    import sys
    from types import FrameType
    from typing import Any

    from context_manager.core.memory import index
    from context_manager.core.memory.models import Memory
    from context_manager.core.memory.sqlite_store import SQLiteStore

    path = tmp_path / "memories.sqlite3"
    texts = [f"Plain note number {number} about the staging cluster" for number in range(2_000)]
    texts += [f"東京の天気は晴れです {number}" for number in range(10)] + ["The ﬁnal report"]
    store = SQLiteStore(path)
    store.open()
    store.put(
        [Memory(id=f"m{n}", content=text, created_at=1.0, last_accessed=1.0) for n, text in enumerate(texts)]
    )
    store.close()
    with sqlite3.connect(path) as connection:  # the index as 0007 wrote it (the same but for the ligature)
        connection.execute(
            "UPDATE memories_fts SET content = 'The ﬁnal report' WHERE content = 'The final report'"
        )
        connection.execute("DELETE FROM schema_migrations WHERE name = '0008_normal_forms'")
    segmented: list[str] = []

    def count(frame: FrameType, event: str, argument: Any) -> None:
        if event == "call" and frame.f_code is index.segment_text.__code__:
            segmented.append(frame.f_locals["text"])

    store = SQLiteStore(path)
    sys.setprofile(count)
    try:
        applied = store.open()
    finally:
        sys.setprofile(None)
    try:
        assert applied == ["0008_normal_forms"]
        assert segmented == ["The ﬁnal report", "", ""]  # its content, tags and context
        assert [m.id for m, _ in store.search(index.build_match(["final"], index.owner_token(None)), 5)] == [
            "m2010"
        ]
    finally:
        store.close()


async def test_the_upgrade_of_existing_rows_goes_on_where_it_stopped(postgres_dsn: str) -> None:
    """A process stopped while deriving the vectors again leaves the range it did in ``cm_search_rederive``:
    the next one to open goes on after it (the rows before are not parsed again), then removes the record."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    try:
        await database.migrate([(name, statements) for name, statements in MIGRATIONS if name < "0011"])
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            for memory_id in ("a-before", "m-after"):  # written by the earlier version's trigger
                await connection.execute(
                    "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, "
                    "last_accessed, source) VALUES (%s, 'long', '', %s, 0.5, 1.0, 1.0, 'user')",
                    (memory_id, f"{memory_id} a naïve café"),
                )
        await database.migrate(MIGRATIONS)  # the trigger replaced; no row derived again yet
    finally:
        await database.close()
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
        # as a process stopped after a batch ending with "a-before" left it
        await connection.execute("UPDATE cm_search_rederive SET after_id = 'a-before', after_tier = 'long'")
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config) as manager:
        assert [m.content for m in await manager.search_memory("cafe")] == ["m-after a naïve café"]
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            cursor = await connection.execute("SELECT count(*) FROM cm_search_rederive")
            assert await cursor.fetchone() == (0,)


def test_a_long_text_is_normalised_a_slice_at_a_time_with_the_same_result() -> None:
    # megabytes are normalised in slices (a worker thread indexing them lets the event loop run between
    # slices), each cut before a character nothing composes with: the same text as normalising it whole
    from context_manager.core.memory.index import COMPATIBILITY_RANGES, normalize_text

    def whole(text: str) -> str:  # normalize_text's rule over the whole text at once
        ranges = [tuple(int(x, 16) for x in part.split("-")) for part in COMPATIBILITY_RANGES.split(",")]
        out = []
        run: list[str] = []
        for character in text:
            if any(first <= ord(character) <= last for first, last in ranges):
                run.append(character)
                continue
            if run:
                out.append(unicodedata.normalize("NFKC", "".join(run)))
                run = []
            out.append(character)
        out.append(unicodedata.normalize("NFKC", "".join(run)))
        return unicodedata.normalize("NFC", "".join(out))

    rng = random.Random(7)
    alphabet = [
        chr(code)
        for block in ((0x20, 0x7F), (0xC0, 0x180), (0x300, 0x370), (0x1100, 0x1200), (0x3040, 0x30FF))
        + ((0xAC00, 0xAC40), (0xFB00, 0xFB07), (0xFF01, 0xFF60), (0x4E00, 0x4E20))
        for code in range(*block)
    ]
    for size in (70_000, 140_000, 200_000):
        text = "".join(rng.choice(alphabet) for _ in range(size))
        assert normalize_text(text) == whole(text)
    decomposed = "cafe\u0301 " * 30_000  # 180,000 characters, every accent to compose
    assert normalize_text(decomposed) == "café " * 30_000


async def test_rows_written_while_their_batch_is_derived_again_get_the_vector_of_their_text(
    postgres_dsn: str,
) -> None:
    """The upgrade computed a batch's vectors from the rows as its statement began, then wrote them.

    A row whose text another process changed meanwhile (its trigger had given it the new text's vector) got
    the vector of its old text back, for good: found by the replaced words (a redacted secret), not by the
    new ones. A row an overflow move copied to another tier meanwhile (its vector copied with it, as the
    earlier version computed it) was in no batch: "cafe" never found it. The batch now locks its rows
    (whole memories, in key order, as the moves do) before it reads them."""
    import psycopg

    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.memory.postgres.database import PostgresDatabase
    from context_manager.core.memory.postgres.schema import MIGRATIONS

    database = PostgresDatabase(postgres_dsn, pool_size=1)
    await database.open()
    try:
        await database.migrate([(name, statements) for name, statements in MIGRATIONS if name < "0011"])
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as connection:
            for memory_id, tier, content in (
                ("edited", "long", "the door code is Zürich walrus"),
                ("moved", "short", "a crème brûlée"),
                ("touched", "long", "a naïve café"),
            ):
                await connection.execute(  # written by the earlier version's trigger
                    "INSERT INTO cm_memories (id, tier, owner, content, importance, created_at, "
                    "last_accessed, source) VALUES (%s, %s, '', %s, 0.5, 1.0, 1.0, 'user')",
                    (memory_id, tier, content),
                )
        await database.migrate(MIGRATIONS)  # 0011's trigger; no row derived again yet
    finally:
        await database.close()
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    manager = MemoryManager(config)
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as writer:
        # another process's writes, its transaction open while the opening process derives the batch: an
        # update_memory, an overflow move (the row copied with its vector, as the backend's move does), a
        # change of another column
        await writer.execute(
            "UPDATE cm_memories SET content = 'the door code is [redacted]' WHERE id = 'edited'"
        )
        columns = (
            "owner, user_id, content, importance, tags, tags_text, created_at, last_accessed, "
            "access_count, metadata, source, superseded_by, merged_from, context, session_id, turn_index, "
            "session_date, search"
        )
        await writer.execute(
            f"INSERT INTO cm_memories (id, tier, {columns}) SELECT id, 'medium', {columns} "  # noqa: S608
            "FROM cm_memories WHERE id = 'moved' AND tier = 'short'"
        )
        await writer.execute("DELETE FROM cm_memories WHERE id = 'moved' AND tier = 'short'")
        await writer.execute("UPDATE cm_memories SET importance = 0.9 WHERE id = 'touched'")
        opening = asyncio.ensure_future(manager.initialize())
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as watcher:
            for _ in range(500):  # until the upgrade waits for the rows being written
                cursor = await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%%cm_memories%%' AND pid <> pg_backend_pid()"
                )
                row = await cursor.fetchone()
                if row is not None and row[0] > 0:
                    break
                assert not opening.done(), "the upgrade did not wait for the rows being written"
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the upgrade never reached the rows being written")
        await writer.commit()
        await opening
    try:
        assert [m.id for m in await manager.search_memory("redacted")] == ["edited"]
        assert await manager.search_memory("walrus zurich") == []
        assert [(m.id, m.tier.value) for m in await manager.search_memory("creme brulee")] == [
            ("moved", "medium")
        ]
        assert [m.id for m in await manager.search_memory("cafe")] == ["touched"]
    finally:
        await manager.close()


WORD_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßĀāĂăĄąĆćČčĎďĒēĘęĚěĞğĪīİıŁłŃńŇňŐőŒœŘřŚśŞşŠšŢţŤťŮůŰűŸŹźŻżŽž"
    "ǍǎǏǐǑǒǓǔǕǖạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ",
    "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώΑΒΓΔΣΩΆΈ",
    "egkozEỌ\u0329\u0329\u0301\u0300",  # Yoruba, IPA: a mark FTS5 does not fold, accents after it
    "ΑΙΥΩΡΪΫΚΛ\u0301\u0342\u0308\u0345",  # Greek capitals with marks (some with no composed form)
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяЁЙ",
    "한국어공부를합니다",
    "東京の天気日本語中文",
    "ｶﾀｶﾅﾊﾟﾊﾞ",
    "ＡＢＣａｂｃ０１２３",
    "ﬀﬁﬂﬃﬄ",
    "²³¹⁰⁴½¼¾①②③₀₁₂",
    "مرحبا",
    "שלום",
]
WORD_SEPARATORS = [" ", ", ", ". ", "-", "/", "@", "_", ":", "'", "(", ") ", "\n", "\u3000", "\u00a0"]


async def test_every_word_of_random_text_finds_its_memory(manager: MemoryManager) -> None:
    """Words of many scripts, in upper and lower case, composed or decomposed, full-width, ligatures,
    between punctuation: every word the query makes of a memory's text finds it, on both backends, in the
    volatile and the durable tier (the index and the query fold and split text the same way)."""
    import random

    draw = random.Random(2026)
    texts: list[str] = []
    for number in range(80):
        text = f"memo{number}"
        for _ in range(draw.randint(1, 6)):
            alphabet = draw.choice(WORD_ALPHABETS)
            word = "".join(draw.choice(alphabet) for _ in range(draw.randint(5, 9)))  # no stop word
            if draw.random() < 0.3:
                word = word.upper()
            if draw.random() < 0.2:
                word = nfd(word)
            text += draw.choice(WORD_SEPARATORS) + word
        texts.append(text)
    stored = [
        await manager.add_memory(text, tier="long" if number % 2 else "short")
        for number, text in enumerate(texts)
    ]
    from context_manager.core.memory.index import query_tokens

    missed = []
    for memory, text in zip(stored, texts, strict=True):
        for word in query_tokens(text, symbols=True):
            if memory.id not in {m.id for m in await manager.search_memory(word, limit=100)}:
                missed.append((text, word))
    assert missed == []


async def test_an_application_role_granted_the_tables_before_0011_opens_the_upgraded_store(
    postgres_dsn: str,
) -> None:
    """docs/postgres.md: where the application role may not create tables, a release step opens the store
    once with the owner's role (the migrations, the re-derivation of the vectors). The application role
    then failed to open it at all: every open ran ``CREATE TABLE IF NOT EXISTS cm_schema_migrations``
    ("permission denied for schema" without CREATE on it, the table there or not), and, granted the
    library's tables before this release, locked ``cm_search_rederive`` (migration 0011's, empty by then:
    "permission denied for table"). It opens now, and works."""
    import uuid

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from context_manager.core.config import ContextManagerConfig

    def config(dsn: str) -> ContextManagerConfig:
        return ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn, embedder="none")

    async with MemoryManager(config(postgres_dsn)) as owner:  # the release step
        await owner.add_memory("the lighthouse keeper's log")
    schema = conninfo_to_dict(postgres_dsn)["options"].split("=", 1)[1].split(",")[0]
    name = f"cm_app_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'app'")
            connection.execute(f"GRANT USAGE ON SCHEMA {schema} TO {name}")
            tables = connection.execute(  # what the application was granted before this release's table
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> 'cm_search_rederive'",
                (schema,),
            ).fetchall()
            assert {"cm_memories", "cm_schema_migrations"} <= {table for (table,) in tables}
            for (table,) in tables:
                connection.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {name}")
            connection.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {name}")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test server does not let this test create a role")
    try:
        async with MemoryManager(config(make_conninfo(postgres_dsn, user=name, password="app"))) as app:
            assert [m.content for m in await app.search_memory("lighthouse")] == [
                "the lighthouse keeper's log"
            ]
            await app.add_memory("a naïve café")
            assert len(await app.search_memory("cafe")) == 1
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {name}")
            connection.execute(f"DROP ROLE IF EXISTS {name}")
