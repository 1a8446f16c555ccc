"""The lexical and vector indexes shared by every memory store.

One lexical engine for every tier: an SQLite FTS5 table (``porter unicode61`` stemming, BM25 with
per-column weights) in an in-memory database for the volatile tiers and in the long-term file for
the durable one, so scores compare across tiers. User text never reaches FTS5 as query syntax:
:func:`query_tokens` keeps only word characters and :func:`build_match` quotes every token and restricts it
to the text columns (:data:`SEARCHED_COLUMNS`; the internal ``owner`` column is never searched by a word).
:func:`query_tokens` splits words where the FTS5 tokenizer does: a diacritic written as a combining mark
(``"nai\u0308ve"``, text in NFD) stays inside its word, as FTS5's ``remove_diacritics`` folds it away.
Text is indexed after :func:`segment_text`: Chinese and Japanese as characters and pairs, each emoji or other
symbol as an ASCII term of its code point (FTS5 splits words at symbols), the characters FTS5 keeps inside a
word where the query splits (private-use characters, signs newer than FTS5's tables:
``INDEX_SEPARATOR_RANGES``) as spaces, the capitals FTS5 does not fold (Cherokee, Georgian Mtavruli:
``FOLDED_RANGES``) in lower case; :func:`segment_tokens` turns a query's words into the same terms.

The vector index keeps float32 rows in a numpy matrix and scores them with one matrix product
(SQLite extensions cannot be loaded by this Python, so there is no sqlite-vec).
"""

from __future__ import annotations

import bisect
import hashlib
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from context_manager.core.memory.models import Memory

if TYPE_CHECKING:  # pragma: no cover
    import numpy

__all__ = [
    "FOLDED_RANGES",
    "FTS_COLUMNS",
    "INDEX_SEPARATOR_RANGES",
    "SEARCHED_COLUMNS",
    "TOKENIZER",
    "ColumnWeights",
    "FrequencyCache",
    "VectorIndex",
    "build_match",
    "create_fts_table",
    "COMPATIBILITY_RANGES",
    "fold_accents",
    "fold_case",
    "normalize_text",
    "fts_row",
    "owner_token",
    "query_tokens",
    "search_fts",
    "search_fts_weighted",
    "segment_cjk",
    "segment_text",
    "segment_tokens",
    "index_terms",
    "GREEK_CAPITALS",
    "lower_greek_capitals",
    "SYMBOL_RANGES",
    "SYMBOL_TERM_PREFIX",
    "weighted_search_parameters",
    "weighted_search_sql",
]

FTS_COLUMNS = ("content", "tags", "context", "date", "owner")
"""Columns of every FTS5 table: the text, its tags, the previous turn, the session date, the owner."""

SEARCHED_COLUMNS = ("content", "tags", "context", "date")
"""The columns a query word can match: every column but ``owner`` (an internal token per user, matched only
by the owner clause of :func:`build_match`)."""

TOKENIZER = "porter unicode61 remove_diacritics 2"
"""FTS5 tokenizer: Unicode word splitting, diacritics folded, Porter stemming."""

MAX_QUERY_TOKENS = 32
"""Longer queries keep their first distinct tokens (bounds the cost of one search)."""

CONTEXT_CHARS = 300
"""How much of the previous turn is indexed with a turn (lower-weighted column)."""

_FOLDED_DIACRITICS = "\u0300-\u0304\u0306-\u030c\u030f\u0311\u031b\u0323-\u0328\u032d\u032e\u0330\u0331"
"""The combining marks FTS5's ``unicode61 remove_diacritics 2`` drops from inside a word (measured on this
SQLite: every other combining mark separates words there, as it does for ``[^\\W_]``)."""

_WORD = re.compile(rf"[^\W_](?:[^\W_]|[{_FOLDED_DIACRITICS}])*")
"""A word: letters and digits, with the diacritics FTS5 folds (NFD text) kept inside it.

PostgreSQL's index splits words at the other non-ASCII characters and spells the numbers that are no digits
(``²``, ``½``) in ASCII in their word (``postgres/separators.py``, frozen in migrations): a change here needs
new ranges and a migration there."""

_CJK = (
    "\u3005\u3006\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f"
)
"""Chinese characters, kana and their iteration marks: scripts written without spaces between words.

PostgreSQL's index segments the same characters (``postgres/separators.py``, frozen in a migration): a
change here needs new ranges and a migration there."""

_CJK_RUN = re.compile(f"[{_CJK}]+")
_CJK_SPLIT = re.compile(f"([{_CJK}]+)")
_SEGMENT_CHUNK = 65_536
"""Characters :func:`segment_text` scans per regex call (about 1 ms each)."""
_NORMALIZE_CHUNK = 16_384
"""Characters :func:`normalize_text` reads per call (about 1 ms each: NFC of text in NFD, NFKC of
full-width forms take 5-10 times a regex scan)."""

SYMBOL_RANGES = (
    "a6,a9,ae,b0,482,58d-58e,60e-60f,6de,6e9,6fd-6fe,7f6,9fa,b70,bf3-bf8,bfa,c7f,d4f,d79,f01-f03,f13,"
    "f15-f17,f1a-f1f,f34,f36,f38,fbe-fc5,fc7-fcc,fce-fcf,fd5-fd8,109e-109f,1390-1399,166d,1940,19de-19ff,"
    "1b61-1b6a,1b74-1b7c,203c,2049,2100-2101,2103-2106,2108-2109,2114,2116-2117,211e-2123,2125,2127,2129,"
    "212e,213a-213b,214a,214c-214d,214f,218a-218b,2194-2199,219c-219f,21a1-21a2,21a4-21a5,21a7-21ad,"
    "21af-21cc,21d0-21d1,21d3,21d5-21f3,2300-2307,230c-231f,2322-2328,232b-237b,237d-239a,23b4-23db,"
    "23e2-2426,2440-244a,249c-24b5,24d0-24e9,25a0-25b6,25b8-25c0,25c2-25f7,25fb-25fe,2600-266e,2670-2767,"
    "2794-27bf,2934-2935,2b00-2b2f,2b45-2b46,2b4d-2b73,2b76-2b95,2b97-2bff,2ce5-2cea,2e50-2e51,2e80-2e99,"
    "2e9b-2ef3,2f00-2fd5,2ff0-2ffb,3004,3012-3013,3020,3030,3036-3037,303d-303f,3190-3191,3196-319f,"
    "31c0-31e3,3200-321e,322a-3247,3250,3260-327f,328a-32b0,32c0-33ff,4dc0-4dff,a490-a4c6,a828-a82b,"
    "a836-a837,a839,aa77-aa79,fd40-fd4f,fdcf,fdfd-fdff,ffe4,ffe8,ffed-ffee,10137-1013f,10179-10189,"
    "1018c-1018e,10190-1019c,101a0,101d0-101fc,10877-10878,10ac8,1173f,11fd5-11fdc,11fe1-11ff1,"
    "16b3c-16b3f,16b45,1bc9c,1cf50-1cfc3,1d000-1d0f5,1d100-1d126,1d129-1d15d,1d16a-1d16c,1d183-1d184,"
    "1d18c-1d1a9,1d1ae-1d1ba,1d1c1-1d1ea,1d200-1d241,1d245,1d300-1d356,1d800-1d9ff,1da37-1da3a,"
    "1da6d-1da74,1da76-1da83,1da85-1da86,1e14f,1ecac,1ed2e,1f000-1f0ff,1f10d-1f1ad,1f1af-1f3fa,"
    "1f400-1f773,1f780-1f7d8,1f7dc-1f7f0,1f800-1f8b1,1f8bc-1f8bf,1f8c2-1f8cf,1f8d9-1fa53,1fa58-1fb92,"
    "1fb94-1fbca,1fc00-1fffd"
)
"""The symbols indexed as terms of their own (:func:`segment_text`): inclusive code point ranges (hexadecimal,
``first-last`` or one code point), comma-separated.

Both indexes split words at these characters (they are no letters or digits), so "🍕" alone was no term and
found nothing. They are the characters of category ``So`` (other symbols: pictographs, dingbats, signs such
as ``©`` ``°`` ``™`` ``✓`` ``★``) under Python 3.11's Unicode 14.0 and those Unicode calls
``Extended_Pictographic`` (every emoji, ``‼`` and ``↔`` too, and the code points kept for future emoji),
but for box drawing, block elements and braille patterns (drawings, not words), the replacement characters
``U+FFFC``-``U+FFFD``, and the few that change under :func:`fold_case` or have a decomposition (``Ⓐ``: the
query's form differs from the stored one). Emoji modifiers (skin tones), variation selectors and joiners
are not in it: they separate words, so "👍🏽" is found by "👍". Frozen, as ``_CJK``: PostgreSQL's index
holds the same (``postgres/separators.py``); a change needs new ranges and a migration on both backends."""

SYMBOL_TERM_PREFIX = "sym"
"""A symbol is indexed as this prefix and its code point in hexadecimal (``"🍕"`` as ``sym1f355``; a flag,
two regional indicators, as one term of both: ``"🇯🇵"`` as ``sym1f1ef1f1f5``): an ASCII word, which FTS5
and PostgreSQL's parser both keep whole."""


INDEX_SEPARATOR_RANGES = (
    "605,61c-61d,7fd-7ff,888,890-891,898-89f,8ca-8e3,8ff,9fd-9fe,a76,afa-aff,b55,c00,c04,c3c,c77,c81,c84,cf3,"
    "d00-d01,d3b-d3c,d81,eba,ece,1715,180f,1885-1886,1ab0-1ace,1b7d-1b7e,1cf7-1cf9,1de7-1dfb,2066-2069,"
    "20ba-20c0,2e3c-2e4f,2e52-2e5d,2ffc-2fff,31ef,a69e,a82c,a8c5,a8fc,a8ff,a9e5,aa7c-aa7d,ab5b,ab6a-ab6b,"
    "e000-f8ff,fbc2,fe27-fe2f,102e0,10376-1037a,1056f,10ae5-10ae6,10af0-10af6,10b99-10b9c,10d24-10d27,"
    "10eab-10ead,10efd-10eff,10f46-10f50,10f55-10f59,10f82-10f89,11070,11073-11074,1107f,110c2,110cd,"
    "11145-11146,11173-11175,111c9-111cf,111db,111dd-111df,1122c-1123e,11241,112a9,112df-112ea,11300-11303,"
    "1133b-1133c,1133e-11344,11347-11348,1134b-1134d,11357,11362-11363,11366-1136c,11370-11374,11435-11446,"
    "1144b-1144f,1145a-1145b,1145d-1145e,114b0-114c3,114c6,115af-115b5,115b8-115d7,115dc-115dd,11630-11643,"
    "11660-1166c,116b9,1171d-1172b,1173c-1173e,1182c-1183b,11930-11935,11937-11938,1193b-1193e,11940,"
    "11942-11946,119d1-119d7,119da-119e0,119e2,119e4,11a01-11a0a,11a33-11a39,11a3b-11a47,11a51-11a5b,"
    "11a8a-11a9c,11a9e-11aa2,11b00-11b09,11c2f-11c36,11c38-11c3f,11c41-11c45,11c70-11c71,11c92-11ca7,"
    "11ca9-11cb6,11d31-11d36,11d3a,11d3c-11d3d,11d3f-11d45,11d47,11d8a-11d8e,11d90-11d91,11d93-11d97,"
    "11ef3-11ef8,11f00-11f01,11f03,11f34-11f3a,11f3e-11f4f,11fdd-11fe0,11fff,12474,12ff1-12ff2,13430-13440,"
    "13447-13455,16a6e-16a6f,16af0-16af5,16b30-16b3b,16b44,16e97-16e9a,16f4f,16f7f-16f87,16fe2,16fe4,"
    "16ff0-16ff1,1bc9d-1bca3,1cf00-1cf2d,1cf30-1cf46,1da00-1da36,1da3b-1da6c,1da75,1da84,1da87-1da8b,"
    "1da9b-1da9f,1daa1-1daaf,1e000-1e006,1e008-1e018,1e01b-1e021,1e023-1e024,1e026-1e02a,1e08f,1e130-1e136,"
    "1e2ae,1e2ec-1e2ef,1e2ff,1e4ec-1e4ef,1e8d0-1e8d6,1e944-1e94a,1e95e-1e95f,1ecb0,1f3fb-1f3ff,1f774-1f776,"
    "1f77b-1f77f,1f7d9,f0000-ffffd,100000-10fffd"
)
"""The characters the embedded store's index makes spaces (:func:`segment_text`): inclusive code point
ranges (hexadecimal, ``first-last`` or one code point), comma-separated.

FTS5's ``unicode61`` (its tables are of Unicode 6.1) keeps them inside a word, where :func:`query_tokens`
and PostgreSQL's index (``postgres/separators.py``) split words at them: the private-use characters
(``U+E000``-``U+F8FF`` and planes 15 and 16: icon-font glyphs such as Powerline's branch sign), and the
characters assigned since Unicode 6.1 that are no letter or digit: currency signs (``₺`` ``₽`` ``₿``), the
bidirectional isolates apps wrap names in (``U+2066``-``U+2069``), combining marks and punctuation of
several scripts (historic ones above all), the skin tone modifiers. ``"\\ue0a0main"`` or ``"500₽"`` was
one term there, found neither by "main" or "500" nor by itself (the query asked for its pieces). Measured
on SQLite 3.40.1 over every assigned code point of Python 3.11's Unicode 14.0 that is no symbol of
:data:`SYMBOL_RANGES` (those are terms of their own) and that NFC leaves as it is; an SQLite whose tables
split at some of them already is not affected. With them, the marks, punctuation and symbols of Unicode 15.0
and 15.1 (measured as above on Python 3.13): the query splits at those on every Python (3.11 has them
unassigned), where FTS5 kept them in a word. Letters and digits unassigned in the running Python's Unicode
(FTS5 keeps them in a word, the query splits at them) are left as they are. Long-term memories indexed
before are indexed again by the embedded store's migration ``0008_normal_forms``."""


FOLDED_RANGES = (
    "37f,528,52a,52c,52e,13a0-13f5,1c90-1cba,1cbd-1cbf,2c2f,a698,a69a,a796,a798,a79a,a79c,a79e,a7ab-a7ae,"
    "a7b0-a7b4,a7b6,a7b8,a7ba,a7bc,a7be,a7c0,a7c2,a7c4-a7c7,a7c9,a7d0,a7d6,a7d8,a7f5,104b0-104d3,"
    "10570-1057a,1057c-1058a,1058c-10592,10594-10595,10c80-10cb2,118a0-118bf,16e40-16e5f,1e900-1e921"
)
"""The capital letters the embedded store's index writes in lower case (:func:`segment_text`): inclusive code
point ranges, as :data:`INDEX_SEPARATOR_RANGES`.

FTS5's ``unicode61`` folds the case of the letters of its Unicode 6.1 tables only, and :func:`fold_case`
(the query) and PostgreSQL's index lower-case these too: Cherokee (written in these letters, whose lower
case came with Unicode 8.0), Georgian Mtavruli (capitals since Unicode 11.0), Adlam, Osage, Warang Citi,
Medefaidrin, Old Hungarian, Vithkuqi, and the Latin, Greek and Cyrillic capitals added since. Text in them
was found by nothing on SQLite, its own words included (the query asked for them in lower case). Measured
as :data:`INDEX_SEPARATOR_RANGES` (letters that NFC leaves as they are). Long-term memories indexed before
are indexed again by the embedded store's migration ``0008_normal_forms``."""


COMPATIBILITY_RANGES = "fb00-fb06,fb13-fb17,ff01-ff5e,ff61-ffdc,ffe0-ffe2,ffe5-ffe6,ffe9-ffec"
"""The compatibility characters both indexes and the query read in their usual form (their NFKC, in
:func:`normalize_text`): the Latin and Armenian ligatures (``"ﬁ"`` as ``"fi"``), the full-width forms
of ASCII (``"Ｔｏｋｙｏ"`` as ``"Tokyo"``, ``"９"`` as ``"9"``) and the half-width katakana and Hangul
(``"ｶﾀｶﾅ"`` as ``"カタカナ"``), as typed by East Asian input methods and held by text copied from PDFs.
Other compatibility characters keep their own terms, where a search engine indexing NFKC would not:
superscripts, subscripts, fractions and circled numbers stay in their word (``"m²"`` is no ``"m2"``),
symbols such as ``"™"`` and the half-width ones are terms of their own (:data:`SYMBOL_RANGES`). Frozen:
PostgreSQL's index holds the same (``postgres/separators.py``, migration ``0011``)."""

_COMPATIBILITY_RUN = re.compile(
    "["
    + "".join(
        chr(int(first, 16)) + ("-" + chr(int(last, 16)) if last else "")
        for first, _, last in (part.partition("-") for part in COMPATIBILITY_RANGES.split(","))
    )
    + "]+"
)
_LATIN_ACCENTS = re.compile(f"(?<=[A-Za-z])[{_FOLDED_DIACRITICS}]+")
"""The diacritics FTS5 folds away (``remove_diacritics 2``) when written on a Latin letter, in NFD text."""


def normalize_text(text: str) -> str:
    """Text in the form both indexes and the query read it: NFC, :data:`COMPATIBILITY_RANGES` in NFKC.

    Text typed decomposed (``"cafe\u0301"``, as macOS file names hold it; Hangul as conjoining jamo) is
    the same words as composed, a full-width or ligature form the same as the usual one. The memory keeps
    its text as given: only what is indexed and searched for is normalised.

    Example:
        >>> normalize_text("Cafe\u0301 ﬁnal Ｔｏｋｙｏ") == "Café final Tokyo"
        True
    """
    if text.isascii():  # most text: nothing to normalise
        return text
    if len(text) <= _NORMALIZE_CHUNK:
        return _normalize(text)
    # A long text a slice at a time (as _segment): one regex or normalize call holds the GIL for all of
    # its text (80-200 ms over 10 MB), stalling the event loop while the writer thread indexes it. A
    # slice ends before a character of _NORMALIZATION_CUT, so it normalises as it does within the text.
    parts: list[str] = []
    start, length = 0, len(text)
    changed = False
    while start < length:
        end = _normalization_cut(text, start + _NORMALIZE_CHUNK)
        part = text[start:end]
        normal = part if part.isascii() else _normalize(part)
        changed = changed or normal is not part
        parts.append(normal)
        start = end
    return "".join(parts) if changed else text


def _normalize(text: str) -> str:
    """:func:`normalize_text` of a text in one pass (the text itself when it is normal)."""
    if _COMPATIBILITY_RUN.search(text) is not None:
        text = _COMPATIBILITY_RUN.sub(lambda run: unicodedata.normalize("NFKC", run.group(0)), text)
    elif unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


_NORMALIZATION_CUT = re.compile("[\x00-\x7f\u3041-\u3096\u30a1-\u30fa\u4e00-\u9fff\uac00-\ud7a3]")
"""Characters a text may be cut before for :func:`normalize_text`: ASCII, kana, the common Chinese
characters, Hangul syllables. Of combining class 0, no part of any compatibility run and the second
character of no canonical composition (checked over every code point), they join nothing before them
into one character and are reordered with nothing: NFC and NFKC of the slices are those of the text."""


def _normalization_cut(text: str, position: int) -> int:
    """The first place at or after ``position`` where :func:`normalize_text` may cut ``text`` (or its end)."""
    length = len(text)
    while position < length:  # a bounded window per call: a text with no such character is scanned stepwise
        cut = _NORMALIZATION_CUT.search(text, position, position + _NORMALIZE_CHUNK)
        if cut is not None:
            return cut.start()
        position += _NORMALIZE_CHUNK
    return length


def fold_accents(text: str) -> str:
    """Text with the accents of Latin letters folded as SQLite's FTS5 folds them (``"café"`` as ``"cafe"``).

    What PostgreSQL's index (migration ``0011``) and a query for it read, without the ``unaccent``
    extension: the text in NFD, the diacritics FTS5's ``remove_diacritics 2`` drops removed where they
    follow an ASCII letter, then NFC. Letters of other scripts keep their marks (``"й"``, ``"ά"``), as
    on SQLite. ``text`` is in NFC (:func:`normalize_text`).

    Example:
        >>> fold_accents("Mañana in Zürich, naïve café")
        'Manana in Zurich, naive cafe'
    """
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text)
    folded = _LATIN_ACCENTS.sub("", decomposed)
    return text if folded == decomposed else unicodedata.normalize("NFC", folded)


def _code_points(ranges: str) -> list[tuple[int, int]]:
    pairs = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        pairs.append((int(first, 16), int(last or first, 16)))
    return pairs


_SYMBOL_SPANS = _code_points(SYMBOL_RANGES)
_SYMBOL_STARTS = [first for first, _ in _SYMBOL_SPANS]
_INDEX_SEPARATOR_SPANS = _code_points(INDEX_SEPARATOR_RANGES)
_INDEX_SEPARATOR_STARTS = [first for first, _ in _INDEX_SEPARATOR_SPANS]
_FOLDED_SPANS = _code_points(FOLDED_RANGES)
_FOLDED_STARTS = [first for first, _ in _FOLDED_SPANS]


def _is_symbol(character: str) -> bool:
    """Whether one character is in :data:`SYMBOL_RANGES` (a binary search: no set of 7,600 at import)."""
    point = ord(character)
    position = bisect.bisect_right(_SYMBOL_STARTS, point) - 1
    return position >= 0 and point <= _SYMBOL_SPANS[position][1]


def _is_index_separator(character: str) -> bool:
    """Whether one character is in :data:`INDEX_SEPARATOR_RANGES`."""
    point = ord(character)
    position = bisect.bisect_right(_INDEX_SEPARATOR_STARTS, point) - 1
    return position >= 0 and point <= _INDEX_SEPARATOR_SPANS[position][1]


def _is_folded(character: str) -> bool:
    """Whether one character is in :data:`FOLDED_RANGES`."""
    point = ord(character)
    position = bisect.bisect_right(_FOLDED_STARTS, point) - 1
    return position >= 0 and point <= _FOLDED_SPANS[position][1]


_FLAG_FIRST, _FLAG_LAST = "\U0001f1e6", "\U0001f1ff"
_REGIONAL = f"{_FLAG_FIRST}-{_FLAG_LAST}"
"""Regional indicators: two of them are a flag."""
_SYMBOLS_BMP = "".join(
    re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last)))
    for first, last in _SYMBOL_SPANS
    if last <= 0xFFFF
)
_REWRITTEN_BMP = "".join(
    re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last)))
    for first, last in (*_INDEX_SEPARATOR_SPANS, *_FOLDED_SPANS)
    if last <= 0xFFFF
)
_SPECIAL = f"{_CJK}{_SYMBOLS_BMP}{_REWRITTEN_BMP}\U00010000-\U0001ffff\U000f0000-\U0010fffd"
"""A superset of the characters :func:`segment_text` rewrites (Chinese, Japanese, symbols, the characters of
:data:`INDEX_SEPARATOR_RANGES` and :data:`FOLDED_RANGES`), quick to match:
Python's regular expressions test a character against a class's ranges above U+FFFF one by one, and the
symbols' 46 there made a scan of non-ASCII text 10 times slower; which characters of a run are symbols,
separators or capitals is then looked up (:func:`_is_symbol`, :func:`_is_index_separator`,
:func:`_is_folded`)."""
_SPECIAL_RUN = re.compile(f"[{_SPECIAL}]+")
_PIECE = re.compile(f"([{_CJK}]+)|([{_REGIONAL}]{{2}}|.)", re.DOTALL)
"""A run of :data:`_SPECIAL_RUN` as its pieces: a Chinese or Japanese run (group 1), else a flag or one
character (group 2), whether a symbol or not."""
_QUERY_TOKEN = re.compile(
    f"(?P<word>{_WORD.pattern})|[{_REGIONAL}]{{2}}|[{_SYMBOLS_BMP}\U00010000-\U0001ffff]"
)
"""A query's word, flag or symbol candidate (a candidate that is no symbol is skipped)."""


@dataclass(frozen=True, slots=True)
class ColumnWeights:
    """BM25 weights of the FTS5 columns (the owner column always weighs 0)."""

    content: float = 1.0
    """Weight of the memory's own text."""
    tags: float = 0.5
    """Weight of its tags."""
    context: float = 0.3
    """Weight of the previous turn's text (conversation memories)."""
    date: float = 0.3
    """Weight of the session date."""

    def rank_expression(self) -> str:
        """The ``bm25(...)`` expression stored as the table's ``rank`` (what ``ORDER BY rank`` uses)."""
        return f"bm25({self.content!r}, {self.tags!r}, {self.context!r}, {self.date!r}, 0.0)"


def owner_token(user_id: str | None) -> str:
    """Return the single FTS token that stands for an owner (``None`` is the default namespace)."""
    if user_id is None:
        return "ownerdefault"
    digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return f"owner{digest}"


def fold_case(text: str) -> str:
    """Text as words are compared: :func:`normalize_text`, lower case, the Turkish capital dotted I as ``i``.

    ``str.lower`` turns ``İ`` into ``i`` and a combining dot, which neither index keeps (FTS5 folds it
    away, PostgreSQL lower-cases ``İ`` to ``i``). NFC makes a word typed in NFD (``"nai\u0308ve"``) the same
    token as in NFC (``"naïve"``).

    Example:
        >>> fold_case("İzmir"), fold_case("Nai\u0308ve") == "naïve"
        ('izmir', True)
    """
    lowered = normalize_text(text).replace("\u0130", "I").lower()
    return unicodedata.normalize("NFC", lowered)


def query_tokens(text: str, *, limit: int = MAX_QUERY_TOKENS, symbols: bool = False) -> list[str]:
    """Split free text into distinct word tokens (no FTS5 syntax can survive this).

    Words are split where the FTS5 tokenizer splits them and compared after :func:`fold_case`, so a memory
    is found by its own words whatever their Unicode form. With ``symbols``, each symbol of
    :data:`SYMBOL_RANGES` (an emoji, a flag) is a token too, in the order written (a search's query;
    :func:`segment_tokens` turns it into its index term).

    Example:
        >>> query_tokens("Mañana in İzmir? mañana!")
        ['mañana', 'in', 'izmir']
        >>> query_tokens("pizza🍕 🎉🎉", symbols=True)
        ['pizza', '🍕', '🎉']
    """
    folded = fold_case(text)
    seen: dict[str, None] = {}
    if symbols and not folded.isascii():  # ASCII text holds no symbol: the plain scan
        for match in _QUERY_TOKEN.finditer(folded):
            token = match.group(0)
            if match.group("word") is None and len(token) == 1 and not _is_symbol(token):
                continue  # a character above U+FFFF that is neither a word nor a symbol (a separator)
            if token not in seen:
                seen[token] = None
                if len(seen) >= limit:
                    break
        return list(seen)
    for match in _WORD.finditer(folded):
        token = match.group(0)
        if token not in seen:
            seen[token] = None
            if len(seen) >= limit:
                break
    return list(seen)


def segment_cjk(text: str) -> str:
    """Text with each run of Chinese or Japanese as its characters and pairs (no symbol as a term).

    What the index held from migration ``0005_cjk_segments`` until ``0007_symbol_terms``;
    :func:`segment_text` is what it holds now.

    Example:
        >>> segment_cjk("東京の天気 in May")
        ' 東 京 の 天 気 東京 京の の天 天気  in May'
    """
    if text.isascii():
        return text
    return _segment(text, _CJK_RUN, _spread_run)


GREEK_CAPITALS = (
    "\u0386\u0389\u038f\u0391\u0397\u0399\u03a1\u03a5\u03a9\u03aa\u03ab\u1fba\u1fbc\u1fca\u1fcc\u1ffa\u1ffc"
)
"""The capitals that have no composed form with a combining mark their small letter has one with (``"Ϊ"``
and U+0301; ``"ϊ"`` and U+0301 is ``"ΐ"``; polytonic ``"Ω"`` and U+0342, ``"ῶ"``), under Python 3.11's
Unicode 14.0. The query lower-cases such a word, then composes it (:func:`fold_case`: ``"προΐον"``); both
indexes lower-case it as they read it, without composing (FTS5: ``"ϊ"``, the accent dropped): a word of
them was found by nothing. :func:`segment_text` writes such a capital and its marks as the query reads
them; PostgreSQL's index the same (``postgres/separators.py``, migration ``0012``; the embedded store's
``0009``)."""

_GREEK_MARKED = re.compile(f"[{GREEK_CAPITALS}][^\\x00-\\u02ff\\u0370-\\u03ff\\u1f00-\\u1fff]")
"""A capital of :data:`GREEK_CAPITALS` and a character that may be a combining mark (no Latin or Greek letter,
no ASCII): a Greek word in capitals is scanned in C, a capital followed by a mark looked at."""


def lower_greek_capitals(text: str) -> str:
    """``text`` with each capital of :data:`GREEK_CAPITALS` that carries combining marks lower-cased, in NFC.

    Scanned a slice of :data:`_SEGMENT_CHUNK` characters per regex call (as :func:`_segment`): one call over
    megabytes held the GIL for tens of milliseconds.

    Example:
        >>> lower_greek_capitals("ΠΡΟΪ\u0301ΟΝ") == "ΠΡΟ\u0390ΟΝ"
        True
    """
    parts: list[str] = []
    done = 0
    length = len(text)
    for window in range(0, length, _SEGMENT_CHUNK):
        window_end = window + _SEGMENT_CHUNK
        # one character past the slice: a capital at its end with its mark in the next one
        for match in _GREEK_MARKED.finditer(text, max(window, done), min(window_end + 1, length)):
            start = match.start()
            if start >= window_end or start < done:
                continue
            end = start + 1
            while end < length and unicodedata.combining(text[end]):
                end += 1
            if end > start + 1:  # marks to compose with the small letter
                parts += [text[done:start], unicodedata.normalize("NFC", text[start:end].lower())]
                done = end
    return "".join([*parts, text[done:]]) if parts else text


def segment_text(text: str) -> str:
    r"""Text as the embedded store indexes it: Chinese and Japanese as characters and pairs, symbols as terms.

    FTS5's ``unicode61`` splits words at spaces, punctuation and symbols, so a Chinese or Japanese sentence
    (written without spaces) would be one term, found by no word of it, and an emoji no term at all. Each
    character of such a run and each pair of neighbouring characters is a term instead (the usual bigram
    indexing of these scripts), and each symbol of :data:`SYMBOL_RANGES` (a flag: its two regional
    indicators) the ASCII term of its code point (:data:`SYMBOL_TERM_PREFIX`), each character of
    :data:`INDEX_SEPARATOR_RANGES` a space (FTS5 keeps them inside a word, the query splits words at them),
    each capital of :data:`FOLDED_RANGES` in lower case (FTS5 does not fold them, the query does), all of
    it first in NFC (:func:`normalize_text`, as the query); other text is left as it is.
    :func:`segment_tokens` turns a query's words into the same terms.

    Example:
        >>> segment_text("東京の天気 in May")
        ' 東 京 の 天 気 東京 京の の天 天気  in May'
        >>> segment_text("pizza🍕!")
        'pizza sym1f355 !'
        >>> segment_text("\ue0a0main costs 500₽")
        ' main costs 500 '
        >>> segment_text("ᏣᎳᎩ")
        'ꮳꮃꭹ'
    """
    if text.isascii():  # O(1) in CPython: most text, and megabyte tool outputs, end here
        return text
    return _segment(lower_greek_capitals(normalize_text(text)), _SPECIAL_RUN, _spread_special)


def _segment(text: str, runs: re.Pattern[str], spread: Callable[[re.Match[str]], str]) -> str:
    """``runs.sub(spread, text)``, a long text a slice at a time (the text itself when nothing matches)."""
    if len(text) <= _SEGMENT_CHUNK:
        return runs.sub(spread, text) if runs.search(text) else text
    # A long text a slice at a time, each ending where no run goes on: the same result, but a regex call
    # holds the GIL for all of its text (50-120 ms over 5 MB), stalling the event loop while a worker
    # thread indexes it; between slices the loop gets its turn.
    parts: list[str] = []
    start = 0
    found = False
    while start < len(text):
        end = start + _SEGMENT_CHUNK
        run = runs.match(text, end) if end < len(text) else None
        if run is not None:  # a run crossing the slice's end stays whole in this slice
            end = run.end()
        part = text[start:end]
        if runs.search(part) is not None:
            found = True
            part = runs.sub(spread, part)
        parts.append(part)
        start = end
    return "".join(parts) if found else text


def _spread_run(match: re.Match[str]) -> str:
    run = match.group(0)
    pairs = [run[index : index + 2] for index in range(len(run) - 1)]
    return " " + " ".join([*run, *pairs]) + " "


def _symbol_term(symbol: str) -> str:
    return SYMBOL_TERM_PREFIX + "".join(f"{ord(character):x}" for character in symbol)


def _spread_special(match: re.Match[str]) -> str:
    run = match.group(0)
    if _CJK_RUN.fullmatch(run) is not None:  # Chinese or Japanese only (the usual case)
        return _spread_run(match)
    return _PIECE.sub(_spread_piece, run)


def _spread_piece(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return _spread_run(match)
    piece = match.group(2)
    if len(piece) == 2 or _is_symbol(piece):  # two characters: a flag
        return f" {_symbol_term(piece)} "
    if _is_index_separator(piece):  # FTS5 would keep it inside a word
        return " "
    if _is_folded(piece):  # FTS5 would keep its case
        return piece.lower()
    return piece  # a character above U+FFFF that is no symbol (a letter, a separator FTS5 splits at)


def index_terms(token: str) -> list[str]:
    """The terms of :func:`segment_text` text a query word asks for (see :func:`segment_tokens`)."""
    if token.isascii():
        return [token]
    if (len(token) == 1 and _is_symbol(token)) or (
        len(token) == 2 and all(_FLAG_FIRST <= c <= _FLAG_LAST for c in token)
    ):
        return [_symbol_term(token)]
    if _CJK_RUN.search(token) is None:
        return [token]
    terms: dict[str, None] = {}
    for part in _CJK_SPLIT.split(token):
        if not part:
            continue
        if _CJK_RUN.fullmatch(part) is None or len(part) == 1:
            terms[part] = None
        else:
            terms.update(dict.fromkeys(part[index : index + 2] for index in range(len(part) - 1)))
    return list(terms)


def segment_tokens(tokens: Sequence[str], *, limit: int = 2 * MAX_QUERY_TOKENS) -> list[str]:
    """Query words as terms of :func:`segment_text` text: a Chinese or Japanese run as pairs, a symbol's term.

    A run of one character stays one term; Latin letters or digits joined to a run are a word of their own
    (as :func:`segment_text` separates them). At most ``limit`` distinct terms (a long sentence of pairs).
    A term given again is itself (a pair, a symbol's term).

    Example:
        >>> segment_tokens(["東京の天気", "zoom会議", "猫", "🍕"])
        ['東京', '京の', 'の天', '天気', 'zoom', '会議', '猫', 'sym1f355']
    """
    terms: dict[str, None] = {}
    for token in tokens:
        terms.update(dict.fromkeys(index_terms(token)))
    return list(terms)[:limit]


def build_match(tokens: Sequence[str], owner: str | None, *, column: str | None = None) -> str:
    """Build a safe FTS5 MATCH expression: quoted tokens joined by OR, restricted to one owner.

    The tokens match only the :data:`SEARCHED_COLUMNS` (never the owner tokens), so a query word like
    ``ownerdefault`` finds what contains that word, not every memory of an owner.

    Args:
        tokens: Word tokens from :func:`query_tokens` (quotes are doubled anyway).
        owner: An :func:`owner_token`, or ``None`` for every owner.
        column: Restrict the tokens to this one column (e.g. ``"tags"``) instead.

    Example:
        >>> build_match(["kiwi"], None)
        '{content tags context date} : ("kiwi")'
    """
    quoted = " OR ".join('"' + token.replace('"', '""') + '"' for token in tokens)
    columns = column if column is not None else "{" + " ".join(SEARCHED_COLUMNS) + "}"
    quoted = f"{columns} : ({quoted})"
    if owner is None:
        return quoted
    return f'owner : "{owner}" AND ({quoted})'


def fts_row(memory: Memory) -> tuple[str, str, str, str, str]:
    """The FTS5 column values indexed for a memory."""
    return (
        segment_text(memory.content),
        segment_text(" ".join(memory.tags)),
        segment_text(memory.context[:CONTEXT_CHARS]),
        memory.session_date or "",
        owner_token(memory.user_id),
    )


def create_fts_table(connection: sqlite3.Connection, table: str, weights: ColumnWeights) -> None:
    """Create the FTS5 table if missing and (re)apply the column weights to its ``rank``.

    Column weights change ``ORDER BY rank`` only when stored this way, not as arguments to
    ``bm25()`` in the query; they are written only when the stored ones differ.
    """
    columns = ", ".join(FTS_COLUMNS)
    connection.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5({columns}, tokenize='{TOKENIZER}')"
    )
    expression = weights.rank_expression()
    # the weights are kept in the table's %_config: written only when they changed, so opening a store
    # whose weights are current writes nothing (no transaction to commit, nothing to checkpoint at close)
    stored = connection.execute(f"SELECT v FROM {table}_config WHERE k = 'rank'").fetchone()
    if stored is None or stored[0] != expression:
        connection.execute(f"INSERT INTO {table}({table}, rank) VALUES('rank', ?)", (expression,))


def create_vocabulary_table(connection: sqlite3.Connection, table: str, *, schema: str = "main") -> str:
    """Create (in the temp schema) an ``fts5vocab`` row table over ``table``; return its name."""
    name = f"{table}_vocabulary"
    connection.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{name} USING fts5vocab({schema}, {table}, 'row')"
    )
    return name


def document_frequencies(
    connection: sqlite3.Connection, vocabulary: str, terms: Iterable[str]
) -> dict[str, int]:
    """How many documents contain each (stemmed) term."""
    wanted = list(terms)
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = connection.execute(f"SELECT term, doc FROM temp.{vocabulary} WHERE term IN ({marks})", wanted)
    return {str(term): int(doc) for term, doc in rows}


class FrequencyCache:
    """Document frequencies of terms, reused until ``tolerance`` of the index's rows have changed.

    Counting a term's documents (``fts5vocab``) walks the term's whole doclist, which for a common word costs
    more than the query itself; common-word pruning and IDF need only approximate counts. A store reports
    its writes with :meth:`changed`; a small index (under ``1 / tolerance`` rows) recounts after any write.
    """

    def __init__(self, *, tolerance: float = 0.01, max_terms: int = 50_000) -> None:
        self.tolerance = tolerance
        """Share of the rows that may change before every cached count is dropped."""
        self.max_terms = max_terms
        """Cached terms at most (the cache is emptied when full)."""
        self._counts: dict[str, int] = {}
        self._changes = 0

    def changed(self, rows: int) -> None:
        """Record that ``rows`` rows were written or deleted."""
        self._changes += rows

    def clear(self) -> None:
        """Drop every cached count (after a rebuild)."""
        self._counts = {}
        self._changes = 0

    def lookup(
        self, terms: Sequence[str], total: int, count: Callable[[list[str]], dict[str, int]]
    ) -> dict[str, int]:
        """The document frequency of each term present in the index; ``count`` computes missing ones.

        Safe to call from several threads at once (reads of one store run in parallel): a cache that is
        dropped is replaced by a new dict, never emptied under another thread's feet.
        """
        if self._changes > total * self.tolerance:
            self.clear()
        counts = self._counts
        missing = [term for term in dict.fromkeys(terms) if term not in counts]
        if missing:
            if len(counts) + len(missing) > self.max_terms:
                counts = self._counts = {}
            found = count(missing)
            for term in missing:
                counts[term] = found.get(term, 0)
        return {term: counts[term] for term in terms if counts.get(term, 0) > 0}


class Stemmer:
    """Maps query words to the terms FTS5 indexes (same tokenizer), with a bounded cache."""

    def __init__(self, cache_size: int = 50_000) -> None:
        self._connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._connection.execute(f"CREATE VIRTUAL TABLE scratch USING fts5(text, tokenize='{TOKENIZER}')")
        self._connection.execute("CREATE VIRTUAL TABLE scratch_terms USING fts5vocab(scratch, 'instance')")
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size

    def stems(self, tokens: Sequence[str]) -> list[str]:
        """The indexed term of each token (a token the tokenizer drops maps to itself)."""
        missing = [token for token in dict.fromkeys(tokens) if token not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self._cache_size:
                self._cache.clear()
            connection = self._connection
            connection.execute("BEGIN")
            connection.executemany(
                "INSERT INTO scratch(rowid, text) VALUES (?, ?)", list(enumerate(missing, start=1))
            )
            found = dict(
                connection.execute("SELECT doc, term FROM scratch_terms ORDER BY doc, offset").fetchall()[
                    ::-1
                ]
            )
            connection.execute("DELETE FROM scratch")
            connection.execute("COMMIT")
            for position, token in enumerate(missing, start=1):
                self._cache[token] = str(found.get(position, token))
        return [self._cache[token] for token in tokens]

    def close(self) -> None:
        """Release the scratch database."""
        self._connection.close()


def search_fts(connection: sqlite3.Connection, table: str, match: str, limit: int) -> list[tuple[int, float]]:
    """Return ``(rowid, bm25)`` pairs, best first, with BM25 made positive (higher is better)."""
    rows = connection.execute(
        f"SELECT rowid, rank FROM {table} WHERE {table} MATCH ? ORDER BY rank LIMIT ?", (match, limit)
    ).fetchall()
    return [(int(rowid), -float(rank)) for rowid, rank in rows]


def search_fts_weighted(
    connection: sqlite3.Connection, table: str, parts: Sequence[tuple[str, float]], limit: int
) -> list[tuple[int, float]]:
    """Like :func:`search_fts`, scoring each row by the sum of ``factor x bm25`` over ``(match, factor)``."""
    if not parts:
        return []
    rows = connection.execute(
        weighted_search_sql(table, len(parts)), weighted_search_parameters(parts, limit)
    ).fetchall()
    return [(int(rowid), -float(score)) for rowid, score in rows]


def weighted_search_sql(table: str, parts: int, *, limited: bool = True, limit: str = "?") -> str:
    """SQL ranking rows by a weighted sum of per-part BM25 scores (best first, as ``rowid, score``).

    Parameters: ``factor, match`` for each part, then those of the ``limit`` expression (when ``limited``).
    ``score`` is negative like FTS5's rank.
    """
    union = " UNION ALL ".join(
        f"SELECT rowid, rank * ? AS score FROM {table} WHERE {table} MATCH ?" for _ in range(parts)
    )
    tail = f" ORDER BY score LIMIT {limit}" if limited else ""
    return f"SELECT rowid, sum(score) AS score FROM ({union}) GROUP BY rowid{tail}"


def weighted_search_parameters(parts: Sequence[tuple[str, float]], limit: int | None) -> list[Any]:
    """The parameters of :func:`weighted_search_sql` for ``(match, factor)`` parts (no limit: unlimited)."""
    values: list[Any] = [value for match, factor in parts for value in (factor, match)]
    return values if limit is None else [*values, limit]


class VectorIndex:
    """Float32 vectors keyed by memory id, scored with numpy (rows are L2-normalised)."""

    def __init__(self, dimension: int) -> None:
        import numpy as np

        self.dimension = dimension
        """Length of every vector."""
        self._matrix: Any = np.zeros((0, dimension), dtype=np.float32)
        self._ids: list[str | None] = []
        self._rows: dict[str, int] = {}
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._rows

    def add(self, ids: Sequence[str], vectors: numpy.ndarray) -> None:
        """Add or replace the vectors of ``ids`` (``vectors`` has one row per id)."""
        import numpy as np

        for memory_id, vector in zip(ids, vectors, strict=True):
            row = self._rows.get(memory_id)
            if row is None:
                if self._free:
                    row = self._free.pop()
                else:
                    row = len(self._ids)
                    self._ids.append(None)
                    if row >= self._matrix.shape[0]:
                        grown = np.zeros((max(16, 2 * self._matrix.shape[0]), self.dimension), np.float32)
                        grown[: self._matrix.shape[0]] = self._matrix
                        self._matrix = grown
                self._ids[row] = memory_id
                self._rows[memory_id] = row
            self._matrix[row] = vector

    def remove(self, ids: Iterable[str]) -> None:
        """Forget the vectors of ``ids`` (unknown ids are ignored)."""
        for memory_id in ids:
            row = self._rows.pop(memory_id, None)
            if row is not None:
                self._ids[row] = None
                self._matrix[row] = 0.0
                self._free.append(row)

    def get(self, memory_id: str) -> numpy.ndarray | None:
        """The vector of one memory, or ``None``."""
        row = self._rows.get(memory_id)
        return None if row is None else self._matrix[row].copy()

    def search(self, query: numpy.ndarray, limit: int) -> list[tuple[str, float]]:
        """Return up to ``limit`` ``(id, cosine)`` pairs, most similar first."""
        import numpy as np

        used = len(self._ids)
        if used == 0 or limit <= 0:
            return []
        scores = self._matrix[:used] @ query.astype(np.float32)
        count = min(limit, used)
        top = np.argpartition(-scores, count - 1)[:count] if count < used else np.arange(used)
        top = top[np.argsort(-scores[top])]
        found: list[tuple[str, float]] = []
        for row in top.tolist():
            memory_id = self._ids[row]
            if memory_id is not None:
                found.append((memory_id, float(scores[row])))
        return found

    def scores_for(self, query: numpy.ndarray, ids: Iterable[str]) -> dict[str, float]:
        """Cosine similarity of ``query`` with each known id in ``ids``."""
        import numpy as np

        pairs = [(memory_id, row) for memory_id in ids if (row := self._rows.get(memory_id)) is not None]
        if not pairs:
            return {}
        rows = np.fromiter((row for _, row in pairs), dtype=np.int64, count=len(pairs))
        values = self._matrix[rows] @ query.astype(np.float32)
        return {memory_id: float(value) for (memory_id, _), value in zip(pairs, values.tolist(), strict=True)}


STOP_WORDS = frozenset(
    (
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "re",
        "ve",
        "don",
        "didn",
        "doesn",
        "isn",
        "wasn",
        "weren",
        "won",
        "wouldn",
        "couldn",
        "shouldn",
        "hasn",
        "haven",
        "hadn",
        "aren",
    )
)
"""English function words: weighed by BM25 like content words, they dominate rankings in small stores
(a store of 30 memories gives ``my`` a high IDF) and cost the most to score in large ones (the longest
doclists). Left out of the full-text query when the query has other words; the ranking still sees them
(``I``/``my`` name the user as the speaker)."""


def content_tokens(tokens: Sequence[str]) -> list[str]:
    """The tokens that are not :data:`STOP_WORDS` (all of them when every token is one)."""
    kept = [token for token in tokens if token not in STOP_WORDS]
    return kept or list(tokens)
