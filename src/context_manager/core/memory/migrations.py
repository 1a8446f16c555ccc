"""Versioned schema of the long-term SQLite store: ordered, named migrations recorded in a table.

Each migration is a function that takes a connection and changes the schema inside the transaction
that also records its name in ``schema_migrations``. Opening a store applies, in order, every
migration whose name is not recorded yet. Add a migration by appending to :data:`MIGRATIONS`; never
edit or reorder one that has shipped.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable

from context_manager.core.memory.index import (
    CONTEXT_CHARS,
    FOLDED_RANGES,
    GREEK_CAPITALS,
    INDEX_SEPARATOR_RANGES,
    ColumnWeights,
    create_fts_table,
    lower_greek_capitals,
    normalize_text,
    segment_cjk,
    segment_text,
)

__all__ = ["MIGRATIONS", "apply_migrations", "applied_migrations"]

FTS_TABLE = "memories_fts"


def m001_memories(connection: sqlite3.Connection) -> None:
    """Memories, their tags, turn lookup and the FTS5 index."""
    connection.execute(
        """
        CREATE TABLE memories (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            content TEXT NOT NULL,
            importance REAL NOT NULL,
            tags TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_accessed REAL NOT NULL,
            access_count INTEGER NOT NULL,
            metadata TEXT NOT NULL,
            user_id TEXT,
            source TEXT NOT NULL,
            superseded_by TEXT,
            merged_from TEXT NOT NULL,
            context TEXT NOT NULL,
            session_id TEXT,
            turn_index INTEGER
        )
        """
    )
    connection.execute(
        "CREATE INDEX memories_turn ON memories(session_id, turn_index) WHERE session_id IS NOT NULL"
    )
    connection.execute("CREATE INDEX memories_user_created ON memories(user_id, created_at)")
    connection.execute(
        "CREATE TABLE memory_tags (tag TEXT NOT NULL, memory_rowid INTEGER NOT NULL, "
        "PRIMARY KEY (tag, memory_rowid)) WITHOUT ROWID"
    )
    create_fts_table(connection, FTS_TABLE, ColumnWeights())


def m002_vectors(connection: sqlite3.Connection) -> None:
    """Embedding vectors (float32 blobs) of memories of any tier, by memory id and model."""
    connection.execute(
        "CREATE TABLE memory_vectors (id TEXT PRIMARY KEY, model TEXT NOT NULL, "
        "dimension INTEGER NOT NULL, vector BLOB NOT NULL)"
    )


def m003_store_state(connection: sqlite3.Connection) -> None:
    """Flags of the store's own upkeep (``fts_erasure_pending``: deleted words still in FTS5 segments)."""
    connection.execute("CREATE TABLE store_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def m004_superseded_index(connection: sqlite3.Connection) -> None:
    """A partial index of the superseded memories: a search counts them to take enough FTS5 candidates.

    Superseded originals stay in the FTS5 index (hidden from search); an unfiltered search takes its
    candidates from the top ``limit + superseded`` FTS5 matches, and this count must cost an index seek.
    """
    connection.execute(
        "CREATE INDEX memories_superseded ON memories(superseded_by) WHERE superseded_by IS NOT NULL"
    )


def m005_cjk_segments(connection: sqlite3.Connection) -> None:
    """Index Chinese and Japanese text as its characters and their pairs (:func:`segment_cjk`).

    Rows indexed before held such a sentence as one term, found by no word of it: their FTS5 text
    columns are written again (other rows are unchanged).
    """
    last = 0
    while True:  # a chunk at a time: a large store's text is never all in memory at once
        rows = connection.execute(
            "SELECT rowid, content, tags, context FROM memories WHERE rowid > ? ORDER BY rowid LIMIT 1000",
            (last,),
        ).fetchall()
        if not rows:
            return
        for rowid, content, tags, context in rows:
            columns = (content, " ".join(json.loads(tags)), context[:CONTEXT_CHARS])
            segmented = tuple(segment_cjk(text) for text in columns)
            if segmented != columns:
                connection.execute(
                    f"UPDATE {FTS_TABLE} SET content = ?, tags = ?, context = ? WHERE rowid = ?",
                    (*segmented, rowid),
                )
        last = rows[-1][0]


def m006_pending_merges(connection: sqlite3.Connection) -> None:
    """Consolidations under way: a merged memory is recorded here in the transaction that stores it.

    Its originals in the volatile tiers are marked in the log after that commit; the record is removed once
    they are. A store opening with records left (a crash, a failed log write in between) marks them then.
    """
    connection.execute("CREATE TABLE pending_merges (merged_id TEXT PRIMARY KEY)")


def m007_symbol_terms(connection: sqlite3.Connection) -> None:
    """Index emoji and other symbols as terms of their own (:func:`segment_text`, ``SYMBOL_RANGES``).

    FTS5 splits words at them, so "🍕" was no term and found nothing: the FTS5 text columns of the rows
    holding one are written again (other rows, ASCII ones first of all, are unchanged).
    """
    last = 0
    while True:  # a chunk at a time, as 0005
        rows = connection.execute(
            "SELECT rowid, content, tags, context FROM memories WHERE rowid > ? ORDER BY rowid LIMIT 1000",
            (last,),
        ).fetchall()
        if not rows:
            return
        for rowid, content, tags, context in rows:
            columns = (content, " ".join(json.loads(tags)), context[:CONTEXT_CHARS])
            if all(text.isascii() for text in columns):
                continue
            segmented = tuple(segment_text(text) for text in columns)
            if segmented != tuple(segment_cjk(text) for text in columns):  # what 0005 and writes indexed
                connection.execute(
                    f"UPDATE {FTS_TABLE} SET content = ?, tags = ?, context = ? WHERE rowid = ?",
                    (*segmented, rowid),
                )
        last = rows[-1][0]


_NON_ASCII = " OR ".join(
    f"length(CAST({column} AS BLOB)) != length({column})" for column in ("content", "tags", "context")
)
"""Whether a row of ``memories`` holds text that is not ASCII: a text's length in bytes (UTF-8) differs from
its length in characters (or it holds a NUL, where ``length`` stops counting: read, and left as it is)."""

_REWRITTEN = re.compile(
    "["
    + "".join(
        re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last)))
        for first, last in (
            (int(start, 16), int(stop or start, 16))
            for start, _, stop in (
                part.partition("-") for part in f"{INDEX_SEPARATOR_RANGES},{FOLDED_RANGES}".split(",")
            )
        )
        if last <= 0xFFFF
    )
    + "\U00010000-\U0010ffff]"
)
"""The characters of :data:`INDEX_SEPARATOR_RANGES` and :data:`FOLDED_RANGES` in the Basic Multilingual
Plane, and every one above it (one range: Python's regular expressions test a class's ranges above U+FFFF
one by one); a text holding none was indexed by 0007 as :func:`segment_text` indexes it now, but for
:func:`normalize_text`."""


def _indexed_otherwise(text: str) -> bool:
    """Whether an index written since 0007 may hold ``text`` otherwise than :func:`segment_text` does now.

    What changed since is :func:`normalize_text` and the rewriting of the characters of
    :data:`INDEX_SEPARATOR_RANGES` and :data:`FOLDED_RANGES`; text holding neither is indexed as it was.
    """
    return not text.isascii() and (_REWRITTEN.search(text) is not None or normalize_text(text) != text)


def m008_normal_forms(connection: sqlite3.Connection) -> None:
    r"""Index text as the query reads it (:func:`normalize_text`) and as :func:`segment_text` writes it now.

    Rows indexed before held text typed decomposed (``"cafe\u0301"``, Hangul as conjoining jamo),
    ligatures (``"ﬁnal"``) and full-width and half-width forms (``"Ｔｏｋｙｏ"``, ``"ｶﾀｶﾅ"``) as written,
    found by no query in the usual form until ``rebuild_index()``; rows indexed before
    :data:`INDEX_SEPARATOR_RANGES` and :data:`FOLDED_RANGES` kept those characters in their words. The FTS5
    text columns of the rows that may hold such text (:func:`_indexed_otherwise`) are written again where
    they differ from :func:`segment_text` of the text, in this migration's transaction: a process stopped
    in it leaves the store as it was, and the next open applies it.

    ASCII text is indexed as written, by this version and every one before: only the rows holding other
    text are read, picked out by SQLite (:data:`_NON_ASCII`), so a store of ASCII text costs one scan of
    its table (under 0.1 s at 100,000 memories), and those rows are segmented only when they hold a
    character whose indexing changed (text in Chinese or Japanese in their usual forms is read, and left
    as it is).
    """
    _index_again(connection, _indexed_otherwise)


def _index_again(connection: sqlite3.Connection, changed: Callable[[str], bool]) -> None:
    """Index again the rows holding text that ``changed`` says :func:`segment_text` indexes otherwise now.

    Their FTS5 text columns are written where they differ from it; only rows holding text that is not
    ASCII are read (:data:`_NON_ASCII`).
    """
    last = 0
    while True:  # the rowids a chunk at a time, each row's text on its own (a tool output may be megabytes)
        rowids = [
            rowid
            for (rowid,) in connection.execute(
                f"SELECT rowid FROM memories WHERE rowid > ? AND ({_NON_ASCII}) ORDER BY rowid LIMIT 1000",
                (last,),
            )
        ]
        if not rowids:
            return
        for rowid in rowids:
            content, tags, context = connection.execute(
                "SELECT content, tags, context FROM memories WHERE rowid = ?", (rowid,)
            ).fetchone()
            columns = (content, " ".join(json.loads(tags)), context[:CONTEXT_CHARS])
            if not any(changed(text) for text in columns):
                continue
            segmented = tuple(segment_text(text) for text in columns)
            indexed = connection.execute(
                f"SELECT content, tags, context FROM {FTS_TABLE} WHERE rowid = ?", (rowid,)
            ).fetchone()
            if indexed is not None and tuple(indexed) != segmented:
                connection.execute(
                    f"UPDATE {FTS_TABLE} SET content = ?, tags = ?, context = ? WHERE rowid = ?",
                    (*segmented, rowid),
                )
        last = rowids[-1]


_GREEK_CAPITAL = re.compile(f"[{GREEK_CAPITALS}]")


def _greek_capital_marked(text: str) -> bool:
    """Whether ``text`` holds a capital of :data:`GREEK_CAPITALS` with combining marks, in NFC."""
    if text.isascii() or _GREEK_CAPITAL.search(text) is None:
        return False
    normal = normalize_text(text)
    return lower_greek_capitals(normal) != normal


def m009_greek_capitals(connection: sqlite3.Connection) -> None:
    """Index a Greek capital that has no composed form with its marks as the query reads it (``"Ϊ́"``).

    FTS5 lower-cased it without composing (and dropped the accent: ``"ϊ"``), where the query asks for
    ``"ΐ"``: such a word was found by nothing. :func:`segment_text` now writes it lower-cased and composed
    (:func:`lower_greek_capitals`); the rows holding one are indexed again, as in ``0008``.
    """
    _index_again(connection, _greek_capital_marked)


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_memories", m001_memories),
    ("0002_vectors", m002_vectors),
    ("0003_store_state", m003_store_state),
    ("0004_superseded_index", m004_superseded_index),
    ("0005_cjk_segments", m005_cjk_segments),
    ("0006_pending_merges", m006_pending_merges),
    ("0007_symbol_terms", m007_symbol_terms),
    ("0008_normal_forms", m008_normal_forms),
    ("0009_greek_capitals", m009_greek_capitals),
]
"""Every migration in the order it is applied."""


def applied_migrations(connection: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in the database, in order."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    return [name for (name,) in connection.execute("SELECT name FROM schema_migrations ORDER BY name")]


def apply_migrations(connection: sqlite3.Connection) -> list[str]:
    """Apply the missing migrations in order, each in its own transaction; return their names.

    The connection must be in autocommit mode (``isolation_level=None``).
    """
    done = set(applied_migrations(connection))
    applied = []
    for version, (name, migrate) in enumerate(MIGRATIONS, start=1):
        if name in done:
            continue
        connection.execute("BEGIN IMMEDIATE")
        try:
            migrate(connection)
            connection.execute(
                "INSERT INTO schema_migrations(name, applied_at) VALUES (?, ?)", (name, time.time())
            )
            connection.execute(f"PRAGMA user_version = {version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied
