"""The PostgreSQL schema: ordered, named migrations (applied under an advisory lock, recorded in a table).

Add a migration by appending to :data:`MIGRATIONS` (or :data:`VECTOR_MIGRATIONS`); never edit or reorder one
that has shipped. Tables live in the first schema of the connection's ``search_path``.

``cm_memories`` holds every tier: one row per stored copy, keyed by ``(id, tier)`` (a short-term memory
with a long-term copy has two rows). ``owner`` is the user id, or ``''`` for the default namespace (user ids
are never empty), so user isolation is an indexed equality in every query. ``search`` is the weighted
``tsvector`` (content A, tags B, previous turn C, session date D), computed by the server: a trigger fills it
when a row is inserted without one and when an update changes its text (migration ``0003``; it was a generated
column before). An overflow move copies it with the row instead of parsing the text again. The text is parsed
with the characters the query splits words at replaced by spaces (``0006``, ``separators.py``), Chinese and
Japanese runs first spread into their characters and pairs as the embedded store indexes them (``0007``),
emoji and other symbols each made an ASCII term of its code point (``0008``), superscripts, subscripts,
fractions and the other numbers that are no digits spelled in ASCII inside their word (``0010``), the text
folded as the query folds its words and ASCII text split at every character no letter or digit (``0011``),
an accent split off with a mark FTS5 does not fold and Greek capitals composed, ASCII text on a short path
(``0012``), the rows holding a half-width voiced or semi-voiced sound mark given ``0012``'s vector (``0014``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from context_manager.core.memory.postgres.separators import (
    ACCENTS,
    CJK,
    CJK_RUNS,
    COMBINING,
    COMPATIBILITY,
    COMPATIBILITY_PARTS,
    GREEK_MARKED,
    GREEK_PARTS,
    HALF_WIDTH_MARKS,
    LATIN_LETTERS,
    MARKED_LATIN,
    NUMBER_PARTS,
    NUMBER_TERM_PREFIX,
    NUMBER_TERM_SUFFIX,
    NUMBERS,
    PIECES,
    SEGMENTED,
    SEPARATORS,
    SPLIT_ACCENTS,
    SYMBOLS,
    TOKEN_JOINERS,
    WORD_SEPARATORS,
)

__all__ = [
    "MIGRATIONS",
    "SEARCH_CONSTANTS",
    "SPLIT_SEARCH_CONSTANTS",
    "split_fold_sql",
    "fold_sql",
    "folded_search_vector_sql",
    "rederive_candidates_sql",
    "rederive_search_sql",
    "TEXT_SEARCH_CONFIG",
    "VECTOR_MIGRATIONS",
    "hnsw_index_name",
    "hnsw_index_statement",
    "numbers_sql",
    "pieces_sql",
    "search_vector_sql",
    "segments_sql",
    "tier_rank_sql",
    "words_sql",
]

TEXT_SEARCH_CONFIG = "english"
"""Text search configuration: English stemming (Snowball) and stop words, like FTS5's Porter stemmer."""

_SEARCH_VECTOR = (
    f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, content), 'A') || "
    f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, tags_text), 'B') || "
    f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, left(context, 300)), 'C') || "
    f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, coalesce(session_date, '')), 'D')"
)


def _search_vector_of(row: str) -> str:
    """:data:`_SEARCH_VECTOR` over the columns of the record ``row`` (a trigger's ``NEW``)."""
    return (
        _SEARCH_VECTOR.replace("content)", f"{row}.content)")
        .replace("tags_text)", f"{row}.tags_text)")
        .replace("left(context,", f"left({row}.context,")
        .replace("coalesce(session_date,", f"coalesce({row}.session_date,")
    )


def _search_trigger_function(
    create: str, vector: str, *, declare: str = "", prepare: str = "", assign: str | None = None
) -> str:
    """The trigger function that fills ``search`` with ``vector`` (see migration ``0003``).

    ``declare``: PL/pgSQL variable declarations; ``prepare``: statements run before ``vector`` is computed
    (not when the row keeps its vector); ``assign``: the statements that set ``NEW.search`` instead of
    ``NEW.search := vector;``.
    """
    declarations = f"DECLARE\n                {declare}\n            " if declare else ""
    return f"""
            {create} cm_memories_search() RETURNS trigger LANGUAGE plpgsql AS $$
            {declarations}BEGIN
                IF NEW.search IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.search IS DISTINCT FROM OLD.search OR (
                    NEW.content IS NOT DISTINCT FROM OLD.content
                    AND NEW.tags_text IS NOT DISTINCT FROM OLD.tags_text
                    AND NEW.context IS NOT DISTINCT FROM OLD.context
                    AND NEW.session_date IS NOT DISTINCT FROM OLD.session_date)) THEN
                    -- copied with its row (an overflow move), given with the new text, or the text unchanged
                    RETURN NEW;
                END IF;
                {prepare}{assign or f"NEW.search := {vector};"}
                RETURN NEW;
            END
            $$
            """


SEARCHED_CONTENT_CHARS = 100_000
"""PostgreSQL indexes the first this many characters of a memory's content (a ``tsvector`` holds at most
1 MB, which a few megabytes of distinct words exceed); SQLite's FTS5 indexes all of it."""


SEGMENTED_CONTENT_CHARS = 30_000
"""A memory whose content holds Chinese or Japanese is indexed by its first this many characters (``0007``):
each of them and each pair is a term, and 100,000 characters of varied text made a vector over 1 MB."""


def _bounded_search_vector_of(row: str) -> str:
    """:func:`_search_vector_of` over at most :data:`SEARCHED_CONTENT_CHARS` characters of the content."""
    return _search_vector_of(row).replace(
        f"{row}.content)", f"left({row}.content, {SEARCHED_CONTENT_CHARS}))", 1
    )


def search_vector_sql(
    row: str,
    separators: str,
    cjk: tuple[str, str] | None = None,
    *,
    pieces: tuple[str, str, str] | None = None,
    numbers: tuple[str, str] | None = None,
) -> str:
    """The search vector of the record ``row``: the columns' text parsed after :func:`words_sql`.

    ``separators`` is an SQL expression whose value is :data:`SEPARATORS` (a literal, a PL/pgSQL variable);
    ``cjk``, two such expressions whose values are :data:`CJK` and :data:`CJK_RUNS`: Chinese and Japanese
    text of the content, tags and previous turn is indexed as its characters and pairs (:func:`segments_sql`).
    ``pieces`` (instead of ``cjk``), three whose values are :data:`CJK`, :data:`SEGMENTED` and :data:`PIECES`:
    the same, and each symbol as the term of its code point too (:func:`pieces_sql`). ``numbers``, two
    whose values are :data:`NUMBERS` and :data:`NUMBER_PARTS`: every column's numbers that are no digits
    spelled in ASCII (:func:`numbers_sql`). The trigger of migration ``0010`` computes this with ``pieces``
    and ``numbers``, that of ``0008`` with ``pieces``, that of ``0007`` with ``cjk``, that of ``0006`` with
    neither; :func:`_bounded_search_vector_of` (``0005``) is the same without the separators.
    """
    columns = (
        (f"{row}.content", SEARCHED_CONTENT_CHARS, "A", True, SEGMENTED_CONTENT_CHARS),
        (f"{row}.tags_text", None, "B", True, None),
        (f"{row}.context", 300, "C", True, None),
        (f"coalesce({row}.session_date, '')", None, "D", False, None),  # as SQLite: a date is not segmented
    )
    return " || ".join(
        f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, "
        + words_sql(
            text,
            separators,
            chars,
            cjk=cjk if segment else None,
            pieces=pieces if segment else None,
            segmented_chars=segmented,
            numbers=numbers,
        )
        + f"), '{weight}')"
        for text, chars, weight, segment, segmented in columns
    )


def words_sql(
    text: str,
    separators: str,
    chars: int | None = None,
    *,
    cjk: tuple[str, str] | None = None,
    pieces: tuple[str, str, str] | None = None,
    segmented_chars: int | None = None,
    numbers: tuple[str, str] | None = None,
    joiners: str | None = None,
) -> str:
    """SQL: ``text`` (its first ``chars`` characters) with each character of ``separators`` made a space.

    The server's parser then splits the words where ``query_tokens`` does (see ``separators.py``). All-ASCII
    text (one byte per character) holds none of them and skips the regular expression. With ``cjk`` (see
    :func:`search_vector_sql`), text holding a Chinese or Japanese character is first :func:`segments_sql`
    (as the embedded store's ``segment_cjk``, before its tokenizer splits at the separators): its first
    ``segmented_chars`` characters, if given. With ``pieces``, text holding such a character or a symbol is
    first :func:`pieces_sql` (as ``segment_text``): its first ``segmented_chars`` characters if it holds
    Chinese or Japanese (two terms a character), else what ``chars`` says (a symbol is one term). With
    ``numbers`` (see :func:`search_vector_sql`), text holding a number that is no digit then has each
    spelled in ASCII (:func:`numbers_sql`). With ``joiners`` (an SQL expression whose value is
    :data:`TOKEN_JOINERS`), all-ASCII text has each of those characters made a space too (``0011``;
    ``separators`` holds them for other text).
    """
    value = text if chars is None else f"left({text}, {chars})"
    words = value
    if pieces is not None:
        characters, special, parts = pieces
        segmented = value if segmented_chars is None else f"left({text}, {segmented_chars})"
        if segmented == value:
            spread = pieces_sql(value, parts)
        else:
            spread = (
                f"CASE WHEN {value} ~ {characters} THEN {pieces_sql(segmented, parts)} "
                f"ELSE {pieces_sql(value, parts)} END"
            )
        words = f"CASE WHEN {value} ~ {special} THEN {spread} ELSE {value} END"
    elif cjk is not None:
        characters, runs = cjk
        segmented = value if segmented_chars is None else f"left({text}, {segmented_chars})"
        words = f"CASE WHEN {value} ~ {characters} THEN {segments_sql(segmented, runs)} ELSE {value} END"
    if numbers is not None:
        digits, parts = numbers
        words = f"CASE WHEN {value} ~ {digits} THEN {numbers_sql(words, parts)} ELSE {words} END"
    plain = value if joiners is None else f"regexp_replace({value}, {joiners}, ' ', 'g')"
    return (
        f"CASE WHEN octet_length({text}) = length({text}) THEN {plain} "
        f"ELSE regexp_replace({words}, {separators}, ' ', 'g') END"
    )


def segments_sql(text: str, runs: str) -> str:
    """SQL: ``text`` with each Chinese or Japanese run as its characters, then its pairs of neighbours.

    The terms ``index.segment_cjk`` writes for the embedded store (the query asks for a run's pairs, a lone
    character as itself). ``runs`` is an SQL expression whose value is :data:`CJK_RUNS`; ``text`` must hold
    a character of a run (the aggregate of no run is NULL). Migration ``0007`` is made of this: a change
    here needs a new function and a new migration.
    """
    run = "r.part[1]"
    return (
        f"(SELECT string_agg(CASE WHEN {run} IS NULL THEN r.part[2] ELSE {_spread_run_sql(run)} END, '' "
        "ORDER BY r.n) "
        f"FROM regexp_matches({text}, {runs}, 'g') WITH ORDINALITY AS r(part, n))"
    )


def _spread_run_sql(run: str) -> str:
    """SQL: the Chinese or Japanese run ``run`` as its characters, then its pairs (:func:`segments_sql`)."""
    pairs = "regexp_replace({}, '(..)|.', '\\1 ', 'g')"  # the pairs at even offsets (a last lone one dropped)
    return (
        f"' ' || regexp_replace({run}, '(.)', '\\1 ', 'g') || {pairs.format(run)} || "
        f"{pairs.format(f'substr({run}, 2)')} || ' '"
    )


def pieces_sql(text: str, pieces: str) -> str:
    """SQL: ``text`` as ``index.segment_text`` writes it for the embedded store.

    Each Chinese or Japanese run as its characters, then its pairs (as :func:`segments_sql`); each symbol
    (a flag: its two regional indicators) as ``sym`` and its code point in hexadecimal, between spaces.
    ``pieces`` is an SQL expression whose value is :data:`PIECES`; ``text`` must not be empty (the aggregate
    of no piece is NULL). Migration ``0008`` is made of this: a change here needs a new function and a new
    migration.
    """
    symbol = "r.part[2]"
    term = (
        f"' sym' || to_hex(ascii({symbol})) || "
        f"CASE WHEN length({symbol}) > 1 THEN to_hex(ascii(substr({symbol}, 2))) ELSE '' END || ' '"
    )
    return (
        f"(SELECT string_agg(CASE WHEN r.part[1] IS NOT NULL THEN {_spread_run_sql('r.part[1]')} "
        f"WHEN {symbol} IS NOT NULL THEN {term} ELSE r.part[3] END, '' ORDER BY r.n) "
        f"FROM regexp_matches({text}, {pieces}, 'g') WITH ORDINALITY AS r(part, n))"
    )


def numbers_sql(text: str, parts: str) -> str:
    """SQL: ``text`` with each character of :data:`NUMBERS` spelled in ASCII where it stands.

    ``"m²"`` as ``mnumb2x`` (``separators.spell_numbers``, which spells a query's word the same way): the
    server's parser took these characters for blanks, where FTS5 (and the query) keep them in their word.
    ``parts`` is an SQL expression whose value is :data:`NUMBER_PARTS`. Migration ``0010`` is made of this:
    a change here needs a new function and a new migration.
    """
    number = "r.part[1]"
    spelled = f"'{NUMBER_TERM_PREFIX}' || to_hex(ascii({number})) || '{NUMBER_TERM_SUFFIX}'"
    return (
        f"coalesce((SELECT string_agg(CASE WHEN {number} IS NOT NULL THEN {spelled} ELSE r.part[2] END, '' "
        "ORDER BY r.n) "
        f"FROM regexp_matches({text}, {parts}, 'g') WITH ORDINALITY AS r(part, n)), '')"
    )


def fold_sql(text: str, compatibility: str, parts: str, accents: str) -> str:
    """SQL: ``text`` as ``index.fold_accents(index.normalize_text(text))`` writes it (see migration ``0011``).

    Its :data:`COMPATIBILITY` runs in NFKC (``"ﬁ"`` as ``"fi"``, full-width letters in ASCII), then
    NFD, the diacritics on an ASCII letter removed (:data:`ACCENTS`), then NFC: the accents SQLite's
    FTS5 folds, without the ``unaccent`` extension. ``compatibility``, ``parts`` and ``accents`` are SQL
    expressions whose values are :data:`COMPATIBILITY`, :data:`COMPATIBILITY_PARTS` and :data:`ACCENTS`.
    All-ASCII text is left as it is. Needs PostgreSQL 13 (``normalize``) and a UTF8 database. Migration
    ``0011`` is made of this: a change here needs a new function and a new migration.
    """
    compatible = f"CASE WHEN {text} ~ {compatibility} THEN {_compatible_sql(text, parts)} ELSE {text} END"
    return (
        f"CASE WHEN octet_length({text}) = length({text}) THEN {text} "
        f"ELSE {_unaccented_sql(compatible, accents)} END"
    )


def _compatible_sql(text: str, parts: str) -> str:
    """SQL: ``text`` (holding a character of :data:`COMPATIBILITY`) with each run of them in NFKC."""
    return _each_run_sql(text, parts, "normalize(r.part[1], NFKC)")


def _each_run_sql(text: str, parts: str, changed: str) -> str:
    """SQL: ``text`` with each run ``parts`` matches changed by ``changed``, joined again.

    ``parts``: group 1 a run to change, group 2 the text between; ``changed``: an SQL expression of
    ``r.part[1]``.
    """
    return (
        f"(SELECT string_agg(CASE WHEN r.part[1] IS NOT NULL THEN {changed} "
        f"ELSE r.part[2] END, '' ORDER BY r.n) FROM regexp_matches({text}, {parts}, 'g') "
        "WITH ORDINALITY AS r(part, n))"
    )


def _unaccented_sql(text: str, accents: str) -> str:
    """SQL: ``text`` in NFD, the :data:`ACCENTS` on ASCII letters removed, in NFC."""
    return f"normalize(regexp_replace(normalize({text}, NFD), {accents}, '\\1', 'g'), NFC)"


SEARCH_CONSTANTS = {
    "separators": WORD_SEPARATORS,
    "joiners": TOKEN_JOINERS,
    "latin": LATIN_LETTERS,
    "cjk": CJK,
    "special": SEGMENTED,
    "pieces": PIECES,
    "numbers": NUMBERS,
    "parts": NUMBER_PARTS,
    "compatibility": COMPATIBILITY,
    "compatible": COMPATIBILITY_PARTS,
    "accents": ACCENTS,
}
"""The regular expressions the search vector of migration ``0011`` is computed with, by name: PL/pgSQL
variables of its trigger, columns of a subquery ``s`` in its re-derivation (:func:`rederive_search_sql`)."""


def _folded_columns(row: str, constant: Callable[[str], str]) -> list[tuple[str, str]]:
    """``(name, SQL)`` of the text of the record ``row`` that migration ``0011`` indexes, folded.

    The first :data:`SEARCHED_CONTENT_CHARS` characters of the content, the tags, the first 300 characters
    of the previous turn, the session date. ``constant`` turns a name of :data:`SEARCH_CONSTANTS` into SQL.
    """
    fold = functools.partial(
        fold_sql,
        compatibility=constant("compatibility"),
        parts=constant("compatible"),
        accents=constant("accents"),
    )
    return [(name, fold(text)) for name, text in _raw_columns(row)]


def _raw_columns(row: str) -> list[tuple[str, str]]:
    """``(name, SQL)`` of the text of the record ``row`` that migration ``0011`` indexes, before folding."""
    return [
        ("content_words", f"left({row}.content, {SEARCHED_CONTENT_CHARS})"),
        ("tags_words", f"{row}.tags_text"),
        ("context_words", f"left({row}.context, 300)"),
        ("date_words", f"coalesce({row}.session_date, '')"),
    ]


def folded_search_vector_sql(words: str, constant: Callable[[str], str]) -> str:
    """The search vector of migration ``0011`` over the folded text of :func:`_folded_columns`.

    Its names are prefixed by ``words``; ``constant`` turns a name of :data:`SEARCH_CONSTANTS` into SQL.
    As :func:`search_vector_sql` with ``pieces`` and ``numbers``, every column's text first folded
    (:func:`fold_sql`), its ASCII text split at :data:`TOKEN_JOINERS` as well.
    """
    columns = (
        (f"{words}content_words", "A", True, SEGMENTED_CONTENT_CHARS),
        (f"{words}tags_words", "B", True, None),
        (f"{words}context_words", "C", True, None),
        (f"{words}date_words", "D", False, None),
    )
    pieces = (constant("cjk"), constant("special"), constant("pieces"))
    return " || ".join(
        f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, "
        + words_sql(
            text,
            constant("separators"),
            pieces=pieces if segment else None,
            segmented_chars=segmented,
            numbers=(constant("numbers"), constant("parts")),
            joiners=constant("joiners"),
        )
        + f"), '{weight}')"
        for text, weight, segment, segmented in columns
    )


def _folded_trigger() -> str:
    """The trigger function of migration ``0011``: the folded text in variables, then the vector of it."""
    declare = "\n                ".join(
        [f"{name} text;" for name in SEARCH_CONSTANTS]
        + [f"{name} text;" for name, _ in _folded_columns("NEW", str)]
    )
    prepare = "".join(f"{name} := '{value}';\n                " for name, value in SEARCH_CONSTANTS.items())
    # the text folded in statements of their own, each step only when it changes something (fold_sql's
    # result): ASCII text takes only simple expressions (an expression holding a subquery, as the
    # compatibility forms' does, runs as a query: 0.1 ms each), text without an accented Latin letter
    # no NFD
    for name, text in _raw_columns("NEW"):
        prepare += (
            f"{name} := {text};\n                "
            f"IF octet_length({name}) <> length({name}) THEN\n                "
            f"    IF {name} ~ compatibility THEN\n                "
            f"        {name} := {_compatible_sql(name, 'compatible')};\n                "
            "    END IF;\n                "
            f"    IF NOT {name} IS NFC NORMALIZED THEN\n                "
            f"        {name} := normalize({name}, NFC);\n                "
            "    END IF;\n                "
            f"    IF {name} ~ latin THEN\n                "
            f"        {name} := {_unaccented_sql(name, 'accents')};\n                "
            "    END IF;\n                "
            "END IF;\n                "
        )
    vector = folded_search_vector_sql("", str)
    size = " + ".join(f"octet_length({name})" for name, _ in _folded_columns("NEW", str))
    # A vector holds at most 1 MB, lexemes and positions: text of fewer bytes than FITTING_TEXT_BYTES
    # always fits (no word becomes more than six times its bytes). Longer text is indexed in a block
    # that catches the overflow (a subtransaction: only for them) and indexes less of it: the first
    # 20,000 characters of the content, then 2,000 and 20,000 of the tags; the row is stored whole.
    assign = _overflow_assign(vector, size)
    return _search_trigger_function(
        "CREATE OR REPLACE FUNCTION", vector, declare=declare, prepare=prepare, assign=assign
    )


FITTING_TEXT_BYTES = 150_000
"""Folded text of at most this many bytes (content, tags, previous turn and date together) always fits a
search vector; longer text may not (a word of circled numbers is spelled in eight bytes a character, each
distinct word takes four more for its position): migration ``0011`` indexes it in a block that catches the
overflow."""

FALLBACK_CONTENT_CHARS = 20_000
"""The characters of the content indexed when all of it made a vector over PostgreSQL's 1 MB (``0011``)."""


SPLIT_SEARCH_CONSTANTS = {
    **SEARCH_CONSTANTS,
    "combining": COMBINING,
    "marked": MARKED_LATIN,
    "split": SPLIT_ACCENTS,
    "greek": GREEK_MARKED,
    "greek_parts": GREEK_PARTS,
}
"""The regular expressions of the search vector of migration ``0012``: those of ``0011``
(:data:`SEARCH_CONSTANTS`) and its own, by name, as there."""


def _greek_lowered_sql(text: str, parts: str) -> str:
    """SQL: ``text`` (holding a :data:`GREEK_MARKED` run) with each such run lower-cased in NFC (``0012``).

    ``"Ϊ"`` and U+0301 as ``"ΐ"``, the word the query asks for (``fold_case``); ``parts`` is an SQL
    expression whose value is :data:`GREEK_PARTS`.
    """
    return _each_run_sql(text, parts, "normalize(lower(r.part[1]), NFC)")


def _split_unaccented_sql(text: str, split: str) -> str:
    """SQL: ``text`` in NFD, the :data:`SPLIT_ACCENTS` removed, in NFC (``0012``)."""
    return f"normalize(regexp_replace(normalize({text}, NFD), {split}, '', 'g'), NFC)"


def split_fold_sql(columns: list[tuple[str, str]], constant: Callable[[str], str]) -> str:
    """SQL: ``CROSS JOIN LATERAL`` subqueries giving each ``(name, SQL)`` of ``columns`` folded (``0012``).

    The last one is ``f``: ``f.<name>`` is the text as the query's words read it (``normalize_text``, then
    ``fold_accents`` of each word): NFC, :data:`COMPATIBILITY` in NFKC, a :data:`GREEK_MARKED` run
    lower-cased and composed, the accents of ASCII letters removed, across the other marks of the letter
    too where one of them ends the word (:data:`MARKED_LATIN`). ``constant`` turns a name of
    :data:`SPLIT_SEARCH_CONSTANTS` into SQL. All-ASCII text is left as it is.
    """
    ascii_text = "octet_length({0}) = length({0})"
    normal = ", ".join(
        f"CASE WHEN {ascii_text.format(text)} THEN {text} ELSE normalize(CASE WHEN {text} ~ "
        f"{constant('compatibility')} THEN {_compatible_sql(text, constant('compatible'))} ELSE {text} END, "
        f"NFC) END AS {name}"
        for name, text in columns
    )
    greek = ", ".join(
        f"CASE WHEN {ascii_text.format(f'f1.{name}')} THEN f1.{name} WHEN f1.{name} ~ {constant('greek')} "
        f"THEN {_greek_lowered_sql(f'f1.{name}', constant('greek_parts'))} ELSE f1.{name} END AS {name}"
        for name, _ in columns
    )
    folded = ", ".join(
        f"CASE WHEN {ascii_text.format(f'f2.{name}')} THEN f2.{name} "
        f"WHEN f2.{name} ~ {constant('marked')} "
        f"THEN {_split_unaccented_sql(f'f2.{name}', constant('split'))} "
        f"WHEN f2.{name} ~ {constant('latin')} THEN {_unaccented_sql(f'f2.{name}', constant('accents'))} "
        f"ELSE f2.{name} END AS {name}"
        for name, _ in columns
    )
    return (
        f"CROSS JOIN LATERAL (SELECT {normal}) AS f1 CROSS JOIN LATERAL (SELECT {greek}) AS f2 "
        f"CROSS JOIN LATERAL (SELECT {folded}) AS f"
    )


def _ascii_search_vector_sql() -> str:
    """The search vector of migration ``0011`` of all-ASCII text, in the variables of :func:`_raw_columns`.

    Each character of :data:`TOKEN_JOINERS` a space (``translate``: what ``0011``'s regular expression makes
    of it), nothing to fold, segment or spell.
    """
    joiners = TOKEN_JOINERS[1:-1]
    spaces = " " * len(joiners)
    weights = {"content_words": "A", "tags_words": "B", "context_words": "C", "date_words": "D"}
    return " || ".join(
        f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, translate({name}, '{joiners}', "
        f"'{spaces}')), '{weight}')"
        for name, weight in weights.items()
    )


def _overflow_assign(vector: str, size: str) -> str:
    """``NEW.search := vector``, text over :data:`FITTING_TEXT_BYTES` indexed as far as it fits (``0011``)."""
    return f"""IF {size} <= {FITTING_TEXT_BYTES} THEN
                    NEW.search := {vector};
                ELSE
                    LOOP
                        BEGIN
                            NEW.search := {vector};
                            EXIT;
                        EXCEPTION WHEN program_limit_exceeded THEN
                            IF length(content_words) > {FALLBACK_CONTENT_CHARS} THEN
                                content_words := left(content_words, {FALLBACK_CONTENT_CHARS});
                            ELSE
                                content_words := left(content_words, {FALLBACK_CONTENT_CHARS // 10});
                                tags_words := left(tags_words, {FALLBACK_CONTENT_CHARS});
                            END IF;
                        END;
                    END LOOP;
                END IF;"""


def _split_trigger() -> str:
    """The trigger function of migration ``0012``.

    All-ASCII text (most text) that fits a vector: its vector at once (:func:`_ascii_search_vector_sql`),
    with none of the regular expressions assigned. Other text: as ``0011`` (:func:`_folded_trigger`), a
    :data:`GREEK_MARKED` run lower-cased and composed, and the accents of ASCII letters removed across their
    other marks where one of them ends the word (:data:`MARKED_LATIN`).
    """
    columns = _raw_columns("NEW")
    names = [name for name, _ in columns]
    declare = "\n                ".join(
        [f"{name} text;" for name in SPLIT_SEARCH_CONSTANTS] + [f"{name} text;" for name in names]
    )
    size = " + ".join(f"octet_length({name})" for name in names)
    prepare = "".join(f"{name} := {text};\n                " for name, text in columns)
    all_ascii = " AND ".join(f"octet_length({name}) = length({name})" for name in names)
    prepare += (
        f"IF {all_ascii} AND {size} <= {FITTING_TEXT_BYTES} THEN\n                "
        f"    NEW.search := {_ascii_search_vector_sql()};\n                "
        "    RETURN NEW;\n                "
        "END IF;\n                "
    )
    prepare += "".join(
        f"{name} := '{value}';\n                " for name, value in SPLIT_SEARCH_CONSTANTS.items()
    )
    for name in names:
        prepare += (
            f"IF octet_length({name}) <> length({name}) THEN\n                "
            f"    IF {name} ~ compatibility THEN\n                "
            f"        {name} := {_compatible_sql(name, 'compatible')};\n                "
            "    END IF;\n                "
            f"    IF NOT {name} IS NFC NORMALIZED THEN\n                "
            f"        {name} := normalize({name}, NFC);\n                "
            "    END IF;\n                "
            # a combining mark (rare in NFC text): a Greek capital, a Latin letter's mark to check
            f"    IF {name} ~ combining THEN\n                "
            f"        IF {name} ~ greek THEN\n                "
            f"            {name} := {_greek_lowered_sql(name, 'greek_parts')};\n                "
            "        END IF;\n                "
            f"        IF {name} ~ marked THEN\n                "
            f"            {name} := {_split_unaccented_sql(name, 'split')};\n                "
            f"        ELSIF {name} ~ latin THEN\n                "
            f"            {name} := {_unaccented_sql(name, 'accents')};\n                "
            "        END IF;\n                "
            f"    ELSIF {name} ~ latin THEN\n                "
            f"        {name} := {_unaccented_sql(name, 'accents')};\n                "
            "    END IF;\n                "
            "END IF;\n                "
        )
    vector = folded_search_vector_sql("", str)
    return _search_trigger_function(
        "CREATE OR REPLACE FUNCTION",
        vector,
        declare=declare,
        prepare=prepare,
        assign=_overflow_assign(vector, size),
    )


def rederive_search_sql(*, last: bool, migration: str = "0011") -> str:
    """SQL giving the rows of one key range the vector of the current trigger (``0012``) where it differs.

    Parameters: the key ``(id, tier)`` the range starts after, then (unless ``last``) the id it ends with
    (every tier of it). Run in batches after the migration (``PostgresBackend.open``), each its own short
    transaction that has locked the range's rows first, so writers wait for no more than a batch's rows.
    ``migration`` is the one whose rows these are: ``"0011"`` every row, ``"0012"`` those holding a
    combining mark (:data:`COMBINING`; the vector of other text is the same under both), ``"0014"`` those
    holding a half-width sound mark (:data:`HALF_WIDTH_MARKS`: a combining mark once folded, which ``0012``
    did not look for).
    """
    constants = _rederive_constants()
    folded = split_fold_sql(_raw_columns("c"), lambda name: f"s.{name}")
    end = ("" if last else " AND c.id <= %s") + _rederive_filter(migration)
    size = " + ".join(f"octet_length(f.{name})" for name, _ in _raw_columns("c"))
    vector = folded_search_vector_sql("f.", lambda name: f"s.{name}")
    # a row whose text may not fit a vector gets NULL: the trigger then computes it, catching an overflow
    return f"""
        UPDATE cm_memories AS m SET search = r.search
        FROM (
            SELECT c.id, c.tier, CASE WHEN {size} <= {FITTING_TEXT_BYTES} THEN {vector} END AS search
            FROM cm_memories AS c
            CROSS JOIN (SELECT {constants}) AS s
            {folded}
            WHERE (c.id, c.tier) > (%s, %s){end}
        ) AS r
        WHERE m.id = r.id AND m.tier = r.tier AND m.search IS DISTINCT FROM r.search
        """


def rederive_candidates_sql(*, last: bool, migration: str) -> str | None:
    """SQL telling whether a key range of :func:`rederive_search_sql` holds a row of ``migration`` (a bool).

    ``None`` for ``"0011"`` (every row is one). Parameters as :func:`rederive_search_sql`'s. A cheap read
    without locks, run before a batch: the rows of ``0012`` and ``0014`` are rare, and a batch without one
    needs neither its rows locked nor :func:`rederive_search_sql`, whose planning alone (a statement of
    thousands of subplans) took 0.3 to 1.5 s a batch: ``0014`` walking a store of 100k memories without
    such a row held the opening process 69 s, and locked every row in turn while it planned.
    """
    condition = _rederive_filter(migration)
    if not condition:
        return None
    end = ("" if last else " AND c.id <= %s") + condition
    return (
        f"SELECT EXISTS (SELECT 1 FROM cm_memories AS c CROSS JOIN (SELECT {_rederive_constants()}) AS s "
        f"WHERE (c.id, c.tier) > (%s, %s){end})"
    )


def _rederive_constants() -> str:
    return ", ".join(f"'{value}'::text AS {name}" for name, value in SPLIT_SEARCH_CONSTANTS.items())


def _rederive_filter(migration: str) -> str:
    """The condition on ``c`` (constants ``s``) of the rows ``migration`` derives again ("": every row)."""
    text = "concat_ws(' ', c.content, c.tags_text, c.context, c.session_date)"
    if migration == "0012":
        return f" AND {text} ~ s.combining"
    if migration == "0014":
        return f" AND {text} ~ '{HALF_WIDTH_MARKS}'"
    return ""


_PIECES_VECTOR = search_vector_sql("c", "s.separators", pieces=("s.cjk", "s.special", "s.pieces"))
"""The search vector of the row ``c`` in migration ``0008``'s update (see there for ``s``)."""

_NUMBERS_VECTOR = search_vector_sql(
    "c", "s.separators", pieces=("s.cjk", "s.special", "s.pieces"), numbers=("s.numbers", "s.parts")
)
"""The search vector of the row ``c`` in migration ``0010``'s update (see there for ``s``)."""

_RECENT_INDEX = (
    "to_regclass(format('%I.cm_conversations_recent', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n"
    " ON n.oid = c.relnamespace WHERE c.oid = 'cm_conversations'::regclass)))"
)
"""Migration 0013's index in the schema of ``cm_conversations`` (where it is built), not the first of that
name along the ``search_path`` (``app,public``: an earlier store in ``public`` has one)."""


MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_memories",
        [
            f"""
            CREATE TABLE cm_memories (
                id text NOT NULL,
                tier text NOT NULL CHECK (tier IN ('short', 'medium', 'long')),
                owner text NOT NULL,
                user_id text,
                content text NOT NULL,
                importance double precision NOT NULL,
                tags text[] NOT NULL DEFAULT '{{}}',
                tags_text text NOT NULL DEFAULT '',
                created_at double precision NOT NULL,
                last_accessed double precision NOT NULL,
                access_count integer NOT NULL DEFAULT 0,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                source text NOT NULL,
                superseded_by text,
                merged_from text[] NOT NULL DEFAULT '{{}}',
                context text NOT NULL DEFAULT '',
                session_id text,
                turn_index bigint,
                session_date text,
                search tsvector GENERATED ALWAYS AS ({_SEARCH_VECTOR}) STORED,
                PRIMARY KEY (id, tier)
            )
            """,
            "CREATE INDEX cm_memories_search ON cm_memories USING gin (search)",
            "CREATE INDEX cm_memories_owner_tier ON cm_memories (owner, tier)",
            "CREATE INDEX cm_memories_tier ON cm_memories (tier)",
            "CREATE INDEX cm_memories_turn ON cm_memories (owner, session_id, turn_index) "
            "WHERE session_id IS NOT NULL",
            "CREATE INDEX cm_memories_tags ON cm_memories USING gin (tags)",
            "CREATE INDEX cm_memories_owner_created ON cm_memories (owner, created_at)",
        ],
    ),
    (
        "0002_conversations",
        [
            """
            CREATE TABLE cm_conversations (
                id text PRIMARY KEY,
                version bigint NOT NULL,
                snapshot_version bigint NOT NULL DEFAULT 0,
                snapshot jsonb,
                indexed_version bigint NOT NULL DEFAULT 0,
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL
            )
            """,
            """
            CREATE TABLE cm_conversation_records (
                conversation_id text NOT NULL REFERENCES cm_conversations(id) ON DELETE CASCADE,
                version bigint NOT NULL,
                kind text NOT NULL,
                writer text NOT NULL,
                payload jsonb NOT NULL,
                created_at double precision NOT NULL,
                PRIMARY KEY (conversation_id, version)
            )
            """,
        ],
    ),
    (
        # the search vector was a generated column, parsed again by every INSERT: an overflow move (a copy
        # of the rows to the next tier) parsed each text again, about 30 us a row, half the move's server
        # time; now a move copies the stored vector, and an insert without one (or an update that changes
        # the text) gets it from the trigger
        "0003_search_vector_copied",
        [
            "ALTER TABLE cm_memories ALTER COLUMN search DROP EXPRESSION",
            _search_trigger_function("CREATE FUNCTION", _search_vector_of("NEW")),
            "CREATE TRIGGER cm_memories_search BEFORE INSERT OR UPDATE ON cm_memories "
            "FOR EACH ROW EXECUTE FUNCTION cm_memories_search()",
        ],
    ),
    (
        # a conversation's records and snapshot as written: jsonb reorders object keys and rewrites numbers
        # (1e16 came back as 10000000000000000), so a resumed window's tool-call arguments, and its export,
        # differed from the writer's; json keeps the text (and accepts \u0000, which jsonb refuses)
        "0004_conversations_json_as_written",
        [
            "ALTER TABLE cm_conversation_records ALTER COLUMN payload TYPE json USING payload::json",
            "ALTER TABLE cm_conversations ALTER COLUMN snapshot TYPE json USING snapshot::json",
        ],
    ),
    (
        # (1) a memory of a few megabytes of distinct words (a tool's log output) failed to store: its
        # tsvector went over PostgreSQL's 1 MB; the search vector now reads the first 100,000 characters.
        # (2) metadata as written, as 0004 did for conversations: jsonb turned 1e16 into an int and -0.0
        # into 0.0, so a memory migrated from SQLite never verified
        "0005_bounded_search_and_metadata_as_written",
        [
            _search_trigger_function("CREATE OR REPLACE FUNCTION", _bounded_search_vector_of("NEW")),
            "ALTER TABLE cm_memories ALTER COLUMN metadata DROP DEFAULT",
            "ALTER TABLE cm_memories ALTER COLUMN metadata TYPE json USING metadata::json",
            "ALTER TABLE cm_memories ALTER COLUMN metadata SET DEFAULT '{}'::json",
        ],
    ),
    (
        # text in scripts that write vowels as combining marks inside a word (Hindi, Bengali, Tamil, Thai,
        # pointed Hebrew) was not found by its words: the query (like SQLite's index) splits a word at those
        # marks, the server's parser kept it whole. The vector now parses the text with every character the
        # query does not keep in a word replaced by a space (separators.py), and the rows whose vector
        # changes get the new one. Writes wait for the migration (the table lock): a row written meanwhile
        # by a process still on 0005 would keep an old vector.
        "0006_search_words_split_as_queried",
        [
            "LOCK TABLE cm_memories IN SHARE ROW EXCLUSIVE MODE",
            _search_trigger_function(
                "CREATE OR REPLACE FUNCTION",
                search_vector_sql("NEW", "separators"),
                declare="separators text;",
                prepare=f"separators := '{SEPARATORS}';\n                ",
            ),
            f"""
            UPDATE cm_memories AS m SET search = r.search
            FROM (
                SELECT c.id, c.tier, {search_vector_sql("c", "s.separators")} AS search
                FROM cm_memories AS c, (SELECT '{SEPARATORS}'::text AS separators) AS s
                WHERE concat_ws(' ', c.content, c.tags_text, c.context, c.session_date) ~ s.separators
            ) AS r
            WHERE m.id = r.id AND m.tier = r.tier AND m.search IS DISTINCT FROM r.search
            """,
        ],
    ),
    (
        # Chinese and Japanese text (no spaces between words) was indexed as whole sentences, found by no
        # word of them; the embedded store indexes it as its characters and their pairs and asks a query's
        # run as its pairs (migration 0005 there). The vector now does the same (the CJK ranges frozen in
        # separators.py), and the rows holding such text get the new one, under the table lock as in 0006.
        "0007_search_cjk_as_characters_and_pairs",
        [
            "LOCK TABLE cm_memories IN SHARE ROW EXCLUSIVE MODE",
            _search_trigger_function(
                "CREATE OR REPLACE FUNCTION",
                search_vector_sql("NEW", "separators", ("cjk", "runs")),
                declare="separators text;\n                cjk text;\n                runs text;",
                prepare=(
                    f"separators := '{SEPARATORS}';\n                cjk := '{CJK}';\n"
                    f"                runs := '{CJK_RUNS}';\n                "
                ),
            ),
            f"""
            UPDATE cm_memories AS m SET search = r.search
            FROM (
                SELECT c.id, c.tier, {search_vector_sql("c", "s.separators", ("s.cjk", "s.runs"))} AS search
                FROM cm_memories AS c, (
                    SELECT '{SEPARATORS}'::text AS separators, '{CJK}'::text AS cjk,
                        '{CJK_RUNS}'::text AS runs
                ) AS s
                WHERE concat_ws(' ', c.content, c.tags_text, c.context) ~ s.cjk
            ) AS r
            WHERE m.id = r.id AND m.tier = r.tier AND m.search IS DISTINCT FROM r.search
            """,
        ],
    ),
    (
        # an emoji ("🍕", "🎉") or another symbol ("✓", "©", "★") was no term: the query (and SQLite's index)
        # split words at it, so a search for it found nothing. The embedded store now indexes each as an
        # ASCII term of its code point (its migration 0007); the vector does the same (the symbol ranges
        # frozen in separators.py), and the rows holding a symbol get the new one, under the lock as in 0006
        "0008_search_symbols_as_terms",
        [
            "LOCK TABLE cm_memories IN SHARE ROW EXCLUSIVE MODE",
            _search_trigger_function(
                "CREATE OR REPLACE FUNCTION",
                search_vector_sql("NEW", "separators", pieces=("cjk", "special", "pieces")),
                declare=(
                    "separators text;\n                cjk text;\n                special text;\n"
                    "                pieces text;"
                ),
                prepare=(
                    f"separators := '{SEPARATORS}';\n                cjk := '{CJK}';\n"
                    f"                special := '{SEGMENTED}';\n                pieces := '{PIECES}';\n"
                    "                "
                ),
            ),
            f"""
            UPDATE cm_memories AS m SET search = r.search
            FROM (
                SELECT c.id, c.tier, {_PIECES_VECTOR} AS search
                FROM cm_memories AS c, (
                    SELECT '{SEPARATORS}'::text AS separators, '{CJK}'::text AS cjk,
                        '{SEGMENTED}'::text AS special, '{PIECES}'::text AS pieces,
                        '{SYMBOLS}'::text AS symbols
                ) AS s
                WHERE concat_ws(' ', c.content, c.tags_text, c.context) ~ s.symbols
            ) AS r
            WHERE m.id = r.id AND m.tier = r.tier AND m.search IS DISTINCT FROM r.search
            """,
        ],
    ),
    (
        # the end user a conversation belongs to (NULL: nobody), set when it is created
        "0009_conversation_owner",
        [
            "ALTER TABLE cm_conversations ADD COLUMN owner text",
            "CREATE INDEX cm_conversations_owner ON cm_conversations (owner, updated_at)",
        ],
    ),
    (
        # a superscript, subscript, fraction or circled number ("m²", "CO₂", "½", "①") is part of its word
        # in SQLite's index and the query, and was a blank to the server's parser: "m²" was searched as "m"
        # (finding "5 m long") and "½" found nothing. The vector now spells each in ASCII in its place (the
        # ranges frozen in separators.py), the query spells its words the same way, and the rows holding
        # one get the new vector, under the lock as in 0006
        "0010_search_numbers_in_their_words",
        [
            "LOCK TABLE cm_memories IN SHARE ROW EXCLUSIVE MODE",
            _search_trigger_function(
                "CREATE OR REPLACE FUNCTION",
                search_vector_sql(
                    "NEW", "separators", pieces=("cjk", "special", "pieces"), numbers=("numbers", "parts")
                ),
                declare=(
                    "separators text;\n                cjk text;\n                special text;\n"
                    "                pieces text;\n                numbers text;\n                parts text;"
                ),
                prepare=(
                    f"separators := '{SEPARATORS}';\n                cjk := '{CJK}';\n"
                    f"                special := '{SEGMENTED}';\n                pieces := '{PIECES}';\n"
                    f"                numbers := '{NUMBERS}';\n                parts := '{NUMBER_PARTS}';\n"
                    "                "
                ),
            ),
            f"""
            UPDATE cm_memories AS m SET search = r.search
            FROM (
                SELECT c.id, c.tier, {_NUMBERS_VECTOR} AS search
                FROM cm_memories AS c, (
                    SELECT '{SEPARATORS}'::text AS separators, '{CJK}'::text AS cjk,
                        '{SEGMENTED}'::text AS special, '{PIECES}'::text AS pieces,
                        '{NUMBERS}'::text AS numbers, '{NUMBER_PARTS}'::text AS parts
                ) AS s
                WHERE concat_ws(' ', c.content, c.tags_text, c.context, c.session_date) ~ s.numbers
            ) AS r
            WHERE m.id = r.id AND m.tier = r.tier AND m.search IS DISTINCT FROM r.search
            """,
        ],
    ),
    (
        # (1) text stored in one Unicode form was not found by a query in another ("cafe" and a combining
        # accent against "café", full-width "Ｔｏｋｙｏ", the ligature "ﬁ"), and the accents SQLite's index
        # folds ("cafe" finds "café" there) were kept: the vector now reads the text folded (fold_sql, no
        # unaccent extension needed) and the query folds its words the same way. (2) The server's parser kept
        # e-mail addresses, host names, URLs, paths, decimal and signed numbers whole, where the query splits
        # them ("alice" did not find "alice@example.com", nor "3" "3.14"): ASCII text is now split at every
        # character that is no letter or digit. Every row's vector is derived again afterwards, in batches of
        # their own transactions (PostgresBackend.open, from the key range cm_search_rederive records), so
        # writers never wait for the whole table: new rows get the new vector from the trigger meanwhile
        "0011_search_folded_and_split_as_queried",
        [
            _folded_trigger(),
            "CREATE TABLE cm_search_rederive (migration text PRIMARY KEY, after_id text NOT NULL, "
            "after_tier text NOT NULL)",
            "INSERT INTO cm_search_rederive (migration, after_id, after_tier) VALUES ('0011', '', '')",
        ],
    ),
    (
        # (1) a Latin letter with a mark FTS5 does not fold before a folded accent (Yoruba and IPA "é̩":
        # "e", U+0329, U+0301) was indexed with its accent, NFC composing it across that mark, where the
        # query ends the word at the mark and folds it ("e"): found on SQLite, not here. (2) A Greek capital
        # that has no composed form with its mark ("Ϊ́", "Ϋ́", polytonic capitals with a perispomeni) was
        # lower-cased by the parser without composing, where the query composes it ("ΐ"): found by nothing.
        # (3) All-ASCII text, most text, takes a short path: its vector at once, no regular expression
        # assigned (server time per write back near that of 0010). The rows holding a combining mark (no
        # other text is indexed differently) are derived again as 0011's were (cm_search_rederive)
        "0012_search_split_at_unfolded_marks",
        [
            _split_trigger(),
            "INSERT INTO cm_search_rederive (migration, after_id, after_tier) VALUES ('0012', '', '')",
        ],
    ),
    (
        # list_conversations() without a user (a single-user app's "recent chats", limit=20) scanned every
        # conversation and sorted them for each page: 15-20 ms at 50,000, growing with the table; an index
        # in the listing's order reads the page (0.1 ms). The build holds a SHARE lock on cm_conversations
        # (appends wait; memories do not), about 1.5 s at 1,000,000 conversations. Only if missing: an
        # operator may build it beforehand with CREATE INDEX CONCURRENTLY under this name (docs/postgres.md);
        # one such build that failed left an invalid index, which the planner never uses: it is built again.
        # One still running is invalid too: dropping it waited for the build, which waited for this
        # transaction (a deadlock: the build was cancelled, then the table locked for a build here); the
        # migration fails saying so instead, to be run again once the build is over
        "0013_conversations_recent",
        [
            f"""
            DO $$
            DECLARE
                recent regclass := {_RECENT_INDEX};
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = recent AND NOT indisvalid) THEN
                    IF EXISTS (SELECT 1 FROM pg_stat_progress_create_index WHERE index_relid = recent) THEN
                        RAISE EXCEPTION 'index cm_conversations_recent is being built (CREATE INDEX '
                            'CONCURRENTLY in progress): start again once the build has finished';
                    END IF;
                    EXECUTE format('DROP INDEX %s', recent);
                END IF;
            END
            $$
            """,
            # not CREATE INDEX IF NOT EXISTS: it checks that the role owns the table before it looks for the
            # index, so an application role that does not (the owner migrating from a release step) failed
            # with "must be owner of table cm_conversations" though the operator had built the index
            f"""
            DO $$
            BEGIN
                IF {_RECENT_INDEX} IS NULL THEN
                    CREATE INDEX cm_conversations_recent ON cm_conversations (updated_at DESC, id);
                END IF;
            END
            $$
            """,
        ],
    ),
    (
        # The half-width katakana voiced and semi-voiced sound marks ("ﾞ", "ﾟ") are combining marks once
        # folded (NFKC: U+3099, U+309A), which 0012's trigger indexes as the query reads them, but 0012
        # derived again only the rows holding a combining mark as stored: a row holding one after an accented
        # Latin letter ("caféﾞ") kept 0011's vector ("café"), where the query asks for "cafe". Those rows
        # get the current vector, as 0012's did (cm_search_rederive); the trigger is unchanged
        "0014_search_half_width_sound_marks",
        ["INSERT INTO cm_search_rederive (migration, after_id, after_tier) VALUES ('0014', '', '')"],
    ),
]
"""The schema every PostgreSQL store needs, in the order it is applied."""

VECTOR_MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0101_vectors",
        [
            "CREATE EXTENSION IF NOT EXISTS vector",
            """
            CREATE TABLE cm_memory_vectors (
                id text PRIMARY KEY,
                owner text NOT NULL,
                model text NOT NULL,
                dimension integer NOT NULL,
                embedding vector NOT NULL
            )
            """,
            "CREATE INDEX cm_memory_vectors_owner ON cm_memory_vectors (owner, model)",
        ],
    ),
]
"""Applied when an embedder is configured (needs the pgvector extension)."""


def hnsw_index_name(dimension: int) -> str:
    """The name of the HNSW index of the vectors of one dimension."""
    return f"cm_memory_vectors_hnsw_{dimension}"


def hnsw_index_statement(dimension: int) -> str:
    """An HNSW cosine index for the vectors of one dimension (pgvector indexes need a fixed dimension)."""
    return (
        f"CREATE INDEX IF NOT EXISTS {hnsw_index_name(dimension)} ON cm_memory_vectors "
        f"USING hnsw ((embedding::vector({dimension})) vector_cosine_ops) WHERE dimension = {dimension}"
    )


def tier_rank_sql(column: str = "tier") -> str:
    """SQL ordering the tiers fastest first (short 0, medium 1, long 2)."""
    return f"(CASE {column} WHEN 'short' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END)"
