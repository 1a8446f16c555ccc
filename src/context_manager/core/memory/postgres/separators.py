"""The characters PostgreSQL's index must treat as word separators to split words as the query does.

:func:`~context_manager.core.memory.index.query_tokens` (and SQLite's FTS5 index) split a word at every
character that is not a letter or a digit, combining marks included (but for the diacritics FTS5 folds).
PostgreSQL's parser asks the server's locale instead, which calls the vowel signs of Devanagari, Bengali,
Tamil or Thai, the points of Hebrew or Arabic, or a zero-width non-joiner, parts of a word (in the ``C``
locale, every non-ASCII character): a memory in Hindi was indexed by whole words its query never asked for.
The search vector (``schema.py``) replaces these characters with spaces first, so both sides see the same
word pieces whatever the server's locale.

:data:`SEPARATOR_RANGES` is frozen (a migration is never edited): every non-ASCII code point that is not a
word character of ``query_tokens`` under Python 3.11's Unicode 14.0 (a letter, a number or a folded
diacritic), unassigned ones included, surrogates joined to their neighbours (text never holds them). A test
checks it against the running Python. The other ranges (Chinese and Japanese, symbols, numbers that are no
digits) are what the index writes differently from the text, frozen for their migrations in the same way.
"""

from __future__ import annotations

import re

__all__ = [
    "ACCENTS",
    "COMBINING",
    "COMBINING_RANGES",
    "GREEK_CAPITALS_RANGES",
    "GREEK_MARKED",
    "GREEK_PARTS",
    "HALF_WIDTH_MARKS",
    "HALF_WIDTH_MARK_RANGES",
    "MARKED_LATIN",
    "SPLIT_ACCENTS",
    "LATIN_LETTERS",
    "TOKEN_JOINERS",
    "COMPATIBILITY",
    "COMPATIBILITY_PARTS",
    "COMPATIBILITY_RANGES",
    "WORD_SEPARATORS",
    "CJK",
    "CJK_RANGES",
    "CJK_RUNS",
    "NUMBERS",
    "NUMBER_PARTS",
    "NUMBER_RANGES",
    "PIECES",
    "SEGMENTED",
    "SEPARATORS",
    "SEPARATOR_RANGES",
    "SYMBOLS",
    "SYMBOL_RANGES",
    "spell_numbers",
]

SEPARATOR_RANGES = (
    "80-a9,ab-b1,b4,b6-b8,bb,bf,d7,f7,2c2-2c5,2d2-2df,2e5-2eb,2ed,2ef-2ff,305,30d-30e,310,312-31a,"
    "31c-322,329-32c,32f,332-36f,375,378-379,37e,380-385,387,38b,38d,3a2,3f6,482-489,530,557-558,"
    "55a-55f,589-5cf,5eb-5ee,5f3-61f,64b-65f,66a-66d,670,6d4,6d6-6e4,6e7-6ed,6fd-6fe,700-70f,711,"
    "730-74c,7a6-7b0,7b2-7bf,7eb-7f3,7f6-7f9,7fb-7ff,816-819,81b-823,825-827,829-83f,859-85f,86b-86f,"
    "888,88f-89f,8ca-903,93a-93c,93e-94f,951-957,962-965,970,981-984,98d-98e,991-992,9a9,9b1,9b3-9b5,"
    "9ba-9bc,9be-9cd,9cf-9db,9de,9e2-9e5,9f2-9f3,9fa-9fb,9fd-a04,a0b-a0e,a11-a12,a29,a31,a34,a37,"
    "a3a-a58,a5d,a5f-a65,a70-a71,a75-a84,a8e,a92,aa9,ab1,ab4,aba-abc,abe-acf,ad1-adf,ae2-ae5,af0-af8,"
    "afa-b04,b0d-b0e,b11-b12,b29,b31,b34,b3a-b3c,b3e-b5b,b5e,b62-b65,b70,b78-b82,b84,b8b-b8d,b91,"
    "b96-b98,b9b,b9d,ba0-ba2,ba5-ba7,bab-bad,bba-bcf,bd1-be5,bf3-c04,c0d,c11,c29,c3a-c3c,c3e-c57,"
    "c5b-c5c,c5e-c5f,c62-c65,c70-c77,c7f,c81-c84,c8d,c91,ca9,cb4,cba-cbc,cbe-cdc,cdf,ce2-ce5,cf0,"
    "cf3-d03,d0d,d11,d3b-d3c,d3e-d4d,d4f-d53,d57,d62-d65,d79,d80-d84,d97-d99,db2,dbc,dbe-dbf,dc7-de5,"
    "df0-e00,e31,e34-e3f,e47-e4f,e5a-e80,e83,e85,e8b,ea4,ea6,eb1,eb4-ebc,ebe-ebf,ec5,ec7-ecf,eda-edb,"
    "ee0-eff,f01-f1f,f34-f3f,f48,f6d-f87,f8d-fff,102b-103e,104a-104f,1056-1059,105e-1060,1062-1064,"
    "1067-106d,1071-1074,1082-108d,108f,109a-109f,10c6,10c8-10cc,10ce-10cf,10fb,1249,124e-124f,1257,"
    "1259,125e-125f,1289,128e-128f,12b1,12b6-12b7,12bf,12c1,12c6-12c7,12d7,1311,1316-1317,135b-1368,"
    "137d-137f,1390-139f,13f6-13f7,13fe-1400,166d-166e,1680,169b-169f,16eb-16ed,16f9-16ff,1712-171e,"
    "1732-173f,1752-175f,176d,1771-177f,17b4-17d6,17d8-17db,17dd-17df,17ea-17ef,17fa-180f,181a-181f,"
    "1879-187f,1885-1886,18a9,18ab-18af,18f6-18ff,191f-1945,196e-196f,1975-197f,19ac-19af,19ca-19cf,"
    "19db-19ff,1a17-1a1f,1a55-1a7f,1a8a-1a8f,1a9a-1aa6,1aa8-1b04,1b34-1b44,1b4d-1b4f,1b5a-1b82,"
    "1ba1-1bad,1be6-1bff,1c24-1c3f,1c4a-1c4c,1c7e-1c7f,1c89-1c8f,1cbb-1cbc,1cc0-1ce8,1ced,1cf4,"
    "1cf7-1cf9,1cfb-1cff,1dc0-1dff,1f16-1f17,1f1e-1f1f,1f46-1f47,1f4e-1f4f,1f58,1f5a,1f5c,1f5e,"
    "1f7e-1f7f,1fb5,1fbd,1fbf-1fc1,1fc5,1fcd-1fcf,1fd4-1fd5,1fdc-1fdf,1fed-1ff1,1ff5,1ffd-206f,"
    "2072-2073,207a-207e,208a-208f,209d-2101,2103-2106,2108-2109,2114,2116-2118,211e-2123,2125,2127,"
    "2129,212e,213a-213b,2140-2144,214a-214d,214f,218a-245f,249c-24e9,2500-2775,2794-2bff,2ce5-2cea,"
    "2cef-2cf1,2cf4-2cfc,2cfe-2cff,2d26,2d28-2d2c,2d2e-2d2f,2d68-2d6e,2d70-2d7f,2d97-2d9f,2da7,2daf,"
    "2db7,2dbf,2dc7,2dcf,2dd7,2ddf-2e2e,2e30-3004,3008-3020,302a-3030,3036-3037,303d-3040,3097-309c,"
    "30a0,30fb,3100-3104,3130,318f-3191,3196-319f,31c0-31ef,3200-321f,322a-3247,3250,3260-327f,"
    "328a-32b0,32c0-33ff,4dc0-4dff,a48d-a4cf,a4fe-a4ff,a60d-a60f,a62c-a63f,a66f-a67e,a69e-a69f,"
    "a6f0-a716,a720-a721,a789-a78a,a7cb-a7cf,a7d2,a7d4,a7da-a7f1,a802,a806,a80b,a823-a82f,a836-a83f,"
    "a874-a881,a8b4-a8cf,a8da-a8f1,a8f8-a8fa,a8fc,a8ff,a926-a92f,a947-a95f,a97d-a983,a9b3-a9ce,"
    "a9da-a9df,a9e5,a9ff,aa29-aa3f,aa43,aa4c-aa4f,aa5a-aa5f,aa77-aa79,aa7b-aa7d,aab0,aab2-aab4,"
    "aab7-aab8,aabe-aabf,aac1,aac3-aada,aade-aadf,aaeb-aaf1,aaf5-ab00,ab07-ab08,ab0f-ab10,ab17-ab1f,"
    "ab27,ab2f,ab5b,ab6a-ab6f,abe3-abef,abfa-abff,d7a4-d7af,d7c7-d7ca,d7fc-f8ff,fa6e-fa6f,fada-faff,"
    "fb07-fb12,fb18-fb1c,fb1e,fb29,fb37,fb3d,fb3f,fb42,fb45,fbb2-fbd2,fd3e-fd4f,fd90-fd91,fdc8-fdef,"
    "fdfc-fe6f,fe75,fefd-ff0f,ff1a-ff20,ff3b-ff40,ff5b-ff65,ffbf-ffc1,ffc8-ffc9,ffd0-ffd1,ffd8-ffd9,"
    "ffdd-ffff,1000c,10027,1003b,1003e,1004e-1004f,1005e-1007f,100fb-10106,10134-1013f,10179-10189,"
    "1018c-1027f,1029d-1029f,102d1-102e0,102fc-102ff,10324-1032c,1034b-1034f,10376-1037f,1039e-1039f,"
    "103c4-103c7,103d0,103d6-103ff,1049e-1049f,104aa-104af,104d4-104d7,104fc-104ff,10528-1052f,"
    "10564-1056f,1057b,1058b,10593,10596,105a2,105b2,105ba,105bd-105ff,10737-1073f,10756-1075f,"
    "10768-1077f,10786,107b1,107bb-107ff,10806-10807,10809,10836,10839-1083b,1083d-1083e,10856-10857,"
    "10877-10878,1089f-108a6,108b0-108df,108f3,108f6-108fa,1091c-1091f,1093a-1097f,109b8-109bb,"
    "109d0-109d1,10a01-10a0f,10a14,10a18,10a36-10a3f,10a49-10a5f,10a7f,10aa0-10abf,10ac8,10ae5-10aea,"
    "10af0-10aff,10b36-10b3f,10b56-10b57,10b73-10b77,10b92-10ba8,10bb0-10bff,10c49-10c7f,10cb3-10cbf,"
    "10cf3-10cf9,10d24-10d2f,10d3a-10e5f,10e7f,10eaa-10eaf,10eb2-10eff,10f28-10f2f,10f46-10f50,"
    "10f55-10f6f,10f82-10faf,10fcc-10fdf,10ff7-11002,11038-11051,11070,11073-11074,11076-11082,"
    "110b0-110cf,110e9-110ef,110fa-11102,11127-11135,11140-11143,11145-11146,11148-1114f,11173-11175,"
    "11177-11182,111b3-111c0,111c5-111cf,111db,111dd-111e0,111f5-111ff,11212,1122c-1127f,11287,11289,"
    "1128e,1129e,112a9-112af,112df-112ef,112fa-11304,1130d-1130e,11311-11312,11329,11331,11334,"
    "1133a-1133c,1133e-1134f,11351-1135c,11362-113ff,11435-11446,1144b-1144f,1145a-1145e,11462-1147f,"
    "114b0-114c3,114c6,114c8-114cf,114da-1157f,115af-115d7,115dc-115ff,11630-11643,11645-1164f,"
    "1165a-1167f,116ab-116b7,116b9-116bf,116ca-116ff,1171b-1172f,1173c-1173f,11747-117ff,1182c-1189f,"
    "118f3-118fe,11907-11908,1190a-1190b,11914,11917,11930-1193e,11940,11942-1194f,1195a-1199f,"
    "119a8-119a9,119d1-119e0,119e2,119e4-119ff,11a01-11a0a,11a33-11a39,11a3b-11a4f,11a51-11a5b,"
    "11a8a-11a9c,11a9e-11aaf,11af9-11bff,11c09,11c2f-11c3f,11c41-11c4f,11c6d-11c71,11c90-11cff,11d07,"
    "11d0a,11d31-11d45,11d47-11d4f,11d5a-11d5f,11d66,11d69,11d8a-11d97,11d99-11d9f,11daa-11edf,"
    "11ef3-11faf,11fb1-11fbf,11fd5-11fff,1239a-123ff,1246f-1247f,12544-12f8f,12ff1-12fff,1342f-143ff,"
    "14647-167ff,16a39-16a3f,16a5f,16a6a-16a6f,16abf,16aca-16acf,16aee-16aff,16b30-16b3f,16b44-16b4f,"
    "16b5a,16b62,16b78-16b7c,16b90-16e3f,16e97-16eff,16f4b-16f4f,16f51-16f92,16fa0-16fdf,16fe2,"
    "16fe4-16fff,187f8-187ff,18cd6-18cff,18d09-1afef,1aff4,1affc,1afff,1b123-1b14f,1b153-1b163,"
    "1b168-1b16f,1b2fc-1bbff,1bc6b-1bc6f,1bc7d-1bc7f,1bc89-1bc8f,1bc9a-1d2df,1d2f4-1d35f,1d379-1d3ff,"
    "1d455,1d49d,1d4a0-1d4a1,1d4a3-1d4a4,1d4a7-1d4a8,1d4ad,1d4ba,1d4bc,1d4c4,1d506,1d50b-1d50c,1d515,"
    "1d51d,1d53a,1d53f,1d545,1d547-1d549,1d551,1d6a6-1d6a7,1d6c1,1d6db,1d6fb,1d715,1d735,1d74f,1d76f,"
    "1d789,1d7a9,1d7c3,1d7cc-1d7cd,1d800-1deff,1df1f-1e0ff,1e12d-1e136,1e13e-1e13f,1e14a-1e14d,"
    "1e14f-1e28f,1e2ae-1e2bf,1e2ec-1e2ef,1e2fa-1e7df,1e7e7,1e7ec,1e7ef,1e7ff,1e8c5-1e8c6,1e8d0-1e8ff,"
    "1e944-1e94a,1e94c-1e94f,1e95a-1ec70,1ecac,1ecb0,1ecb5-1ed00,1ed2e,1ed3e-1edff,1ee04,1ee20,1ee23,"
    "1ee25-1ee26,1ee28,1ee33,1ee38,1ee3a,1ee3c-1ee41,1ee43-1ee46,1ee48,1ee4a,1ee4c,1ee50,1ee53,"
    "1ee55-1ee56,1ee58,1ee5a,1ee5c,1ee5e,1ee60,1ee63,1ee65-1ee66,1ee6b,1ee73,1ee78,1ee7d,1ee7f,1ee8a,"
    "1ee9c-1eea0,1eea4,1eeaa,1eebc-1f0ff,1f10d-1fbef,1fbfa-1ffff,2a6e0-2a6ff,2b739-2b73f,2b81e-2b81f,"
    "2cea2-2ceaf,2ebe1-2f7ff,2fa1e-2ffff,3134b-10ffff"
)
"""Inclusive code point ranges (hexadecimal, ``first-last`` or one code point), comma-separated."""


def _escape(code_point: int) -> str:
    return f"\\u{code_point:04x}" if code_point <= 0xFFFF else f"\\U{code_point:08x}"


def _bracket_expression(ranges: str) -> str:
    parts = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        parts.append(_escape(int(first, 16)) + (f"-{_escape(int(last, 16))}" if last else ""))
    return "[" + "".join(parts) + "]"


SEPARATORS = _bracket_expression(SEPARATOR_RANGES)
"""A PostgreSQL regular expression (in ASCII: escapes) matching one character of :data:`SEPARATOR_RANGES`."""


CJK_RANGES = "3005-3006,3040-30ff,31f0-31ff,3400-4dbf,4e00-9fff,f900-faff,ff66-ff9f,20000-3134f"
"""The characters the embedded store indexes as characters and pairs (``index._CJK``: Chinese characters,
kana and their iteration marks), frozen for migration ``0007`` as :data:`SEPARATOR_RANGES` is for ``0006``."""

CJK = _bracket_expression(CJK_RANGES)
"""A PostgreSQL regular expression matching one character of :data:`CJK_RANGES`."""

CJK_RUNS = f"({CJK}+)|([^{CJK[1:]}+)"
"""Text as its runs, in order: a run of :data:`CJK` characters (group 1) or of other characters (group 2)."""


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
"""The symbols the embedded store indexes as terms of their own (``index.SYMBOL_RANGES``: emoji, pictographs,
signs), frozen for migration ``0008`` as :data:`CJK_RANGES` is for ``0007``."""

SYMBOLS = _bracket_expression(SYMBOL_RANGES)
"""A PostgreSQL regular expression matching one character of :data:`SYMBOL_RANGES`."""

SEGMENTED = f"[{CJK[1:-1]}{SYMBOLS[1:-1]}]"
"""One character that migration ``0008``'s segmentation rewrites: of :data:`CJK` or of :data:`SYMBOLS`."""

_FLAG = "[\\U0001f1e6-\\U0001f1ff]{2}"
"""Two regional indicators: a flag, one term."""

PIECES = f"({CJK}+)|({_FLAG}|{SYMBOLS})|([^{SEGMENTED[1:]}+)"
"""Text as its pieces, in order: a run of :data:`CJK` characters (group 1), a flag or one symbol (group 2),
or a run of other characters (group 3). A match is the longest one (an alternation is greedy): a flag
rather than its first half."""


NUMBER_RANGES = (
    "b2-b3,b9,bc-be,9f4-9f9,b72-b77,bf0-bf2,c78-c7e,d58-d5e,d70-d78,f2a-f33,1369-137c,17f0-17f9,19da,2070,"
    "2074-2079,2080-2089,2150-215f,2189,2460-249b,24ea-24ff,2776-2793,2cfd,3192-3195,3220-3229,3248-324f,"
    "3251-325f,3280-3289,32b1-32bf,a830-a835,10107-10133,10175-10178,1018a-1018b,102e1-102fb,10320-10323,"
    "10858-1085f,10879-1087f,108a7-108af,108fb-108ff,10916-1091b,109bc-109bd,109c0-109cf,109d2-109ff,"
    "10a40-10a48,10a7d-10a7e,10a9d-10a9f,10aeb-10aef,10b58-10b5f,10b78-10b7f,10ba9-10baf,10cfa-10cff,"
    "10e60-10e7e,10f1d-10f26,10f51-10f54,10fc5-10fcb,11052-11065,111e1-111f4,1173a-1173b,118ea-118f2,"
    "11c5a-11c6c,11fc0-11fd4,16b5b-16b61,16e80-16e96,1d2e0-1d2f3,1d360-1d378,1e8c7-1e8cf,1ec71-1ecab,"
    "1ecad-1ecaf,1ecb1-1ecb4,1ed01-1ed2d,1ed2f-1ed3d,1f100-1f10c"
)
"""The numbers that are no digits (category ``No`` under Python 3.11's Unicode 14.0: superscripts and
subscripts ``²`` ``₂``, vulgar fractions ``½``, circled and parenthesised numbers ``①``, the numbers of
other scripts), frozen for migration ``0010`` as :data:`SYMBOL_RANGES` is for ``0008``.

They are the only characters that SQLite's ``unicode61`` tokenizer (and ``query_tokens``) keeps inside a
word while PostgreSQL's parser takes them for blanks (measured on PostgreSQL 18, ``C.UTF-8``, over every
code point): "m²" was the term "m²" on SQLite and "m" on PostgreSQL, "½" none. PostgreSQL's index writes
each as an ASCII spelling of its code point in its place (:func:`spell_numbers`), so the word stays one
term, and the query asks for the word spelled the same way."""

NUMBERS = _bracket_expression(NUMBER_RANGES)
"""A PostgreSQL regular expression matching one character of :data:`NUMBER_RANGES`."""

NUMBER_PARTS = f"({NUMBERS})|([^{NUMBERS[1:]}+)"
"""Text as its parts, in order: one character of :data:`NUMBERS` (group 1) or a run of other characters
(group 2)."""

NUMBER_TERM_PREFIX, NUMBER_TERM_SUFFIX = "num", "x"
"""A character of :data:`NUMBER_RANGES` is spelled as the prefix, its code point in hexadecimal and the
suffix (``"²"`` as ``numb2x``; ``"m²"`` as ``mnumb2x``): ASCII letters and digits, kept in their word by
every parser whatever the server's locale, and no hexadecimal digit after the code point."""

_NUMBER = re.compile(NUMBERS)  # Python reads the escapes as the server does


def _spell(match: re.Match[str]) -> str:
    return f"{NUMBER_TERM_PREFIX}{ord(match.group(0)):x}{NUMBER_TERM_SUFFIX}"


def spell_numbers(text: str) -> str:
    """``text`` with each character of :data:`NUMBER_RANGES` spelled as PostgreSQL's index writes it.

    A query's word is looked up in that spelling (the index holds no other). ASCII text is returned as it is.

    Example:
        >>> spell_numbers("m²"), spell_numbers("co₂"), spell_numbers("½")
        ('mnumb2x', 'conum2082x', 'numbdx')
    """
    if text.isascii():
        return text
    return _NUMBER.sub(_spell, text)


COMPATIBILITY_RANGES = "fb00-fb06,fb13-fb17,ff01-ff5e,ff61-ffdc,ffe0-ffe2,ffe5-ffe6,ffe9-ffec"
"""The compatibility characters indexed in their NFKC (``index.COMPATIBILITY_RANGES``: ligatures, full-width
and half-width forms), frozen for migration ``0011``."""

COMPATIBILITY = _bracket_expression(COMPATIBILITY_RANGES)
"""A PostgreSQL regular expression matching one character of :data:`COMPATIBILITY_RANGES`."""

COMPATIBILITY_PARTS = f"({COMPATIBILITY}+)|([^{COMPATIBILITY[1:]}+)"
"""Text as its parts, in order: a run of :data:`COMPATIBILITY` (group 1) or of other characters (group 2)."""

FOLDED_DIACRITIC_RANGES = "300-304,306-30c,30f,311,31b,323-328,32d-32e,330-331"
"""The combining diacritics SQLite's FTS5 folds away (``index._FOLDED_DIACRITICS``), frozen for ``0011``."""

ACCENTS = f"([A-Za-z]){_bracket_expression(FOLDED_DIACRITIC_RANGES)}+"
"""An ASCII letter (group 1) and the diacritics of :data:`FOLDED_DIACRITIC_RANGES` on it, in NFD text: the
accents migration ``0011`` folds (``index.fold_accents``)."""

TOKEN_JOINERS = "[-&+./:<>@_~]"
"""A PostgreSQL regular expression matching an ASCII character around which the server's parser makes one
token of several words (an e-mail address, a host, a URL, a path, a decimal, version or signed number, a
hyphenated word, an HTML tag or entity), where the query (and FTS5) splits words at every character that
is no letter or digit: migration ``0011`` makes them spaces (the parser splits at the other ASCII
characters itself). Found by parsing 20,000 random strings of letters, digits and punctuation both ways."""

LATIN_LETTERS = "[\\u00c0-\\u024f\\u1e00-\\u1eff\\u0300-\\u036f]"
"""A PostgreSQL regular expression matching the characters whose accents :data:`ACCENTS` may fold: text in
NFC without one is its own fold (checked over every code point: ``index.fold_accents``)."""

WORD_SEPARATORS = f"[{TOKEN_JOINERS[1:-1]}{SEPARATORS[1:-1]}]"
""":data:`TOKEN_JOINERS` and :data:`SEPARATORS`: what migration ``0011`` makes spaces in text that is not
all ASCII."""


COMBINING_RANGES = (
    "300-34e,350-36f,483-487,591-5bd,5bf,5c1-5c2,5c4-5c5,5c7,610-61a,64b-65f,670,6d6-6dc,6df-6e4,6e7-6e8,"
    "6ea-6ed,711,730-74a,7eb-7f3,7fd,816-819,81b-823,825-827,829-82d,859-85b,898-89f,8ca-8e1,8e3-8ff,93c,"
    "94d,951-954,9bc,9cd,9fe,a3c,a4d,abc,acd,b3c,b4d,bcd,c3c,c4d,c55-c56,cbc,ccd,d3b-d3c,d4d,dca,e38-e3a,"
    "e48-e4b,eb8-eba,ec8-ecb,f18-f19,f35,f37,f39,f71-f72,f74,f7a-f7d,f80,f82-f84,f86-f87,fc6,1037,"
    "1039-103a,108d,135d-135f,1714-1715,1734,17d2,17dd,18a9,1939-193b,1a17-1a18,1a60,1a75-1a7c,1a7f,"
    "1ab0-1abd,1abf-1ace,1b34,1b44,1b6b-1b73,1baa-1bab,1be6,1bf2-1bf3,1c37,1cd0-1cd2,1cd4-1ce0,1ce2-1ce8,"
    "1ced,1cf4,1cf8-1cf9,1dc0-1dff,20d0-20dc,20e1,20e5-20f0,2cef-2cf1,2d7f,2de0-2dff,302a-302f,3099-309a,"
    "a66f,a674-a67d,a69e-a69f,a6f0-a6f1,a806,a82c,a8c4,a8e0-a8f1,a92b-a92d,a953,a9b3,a9c0,aab0,aab2-aab4,"
    "aab7-aab8,aabe-aabf,aac1,aaf6,abed,fb1e,fe20-fe2f,101fd,102e0,10376-1037a,10a0d,10a0f,10a38-10a3a,"
    "10a3f,10ae5-10ae6,10d24-10d27,10eab-10eac,10f46-10f50,10f82-10f85,11046,11070,1107f,110b9-110ba,"
    "11100-11102,11133-11134,11173,111c0,111ca,11235-11236,112e9-112ea,1133b-1133c,1134d,11366-1136c,"
    "11370-11374,11442,11446,1145e,114c2-114c3,115bf-115c0,1163f,116b6-116b7,1172b,11839-1183a,"
    "1193d-1193e,11943,119e0,11a34,11a47,11a99,11c3f,11d42,11d44-11d45,11d97,16af0-16af4,16b30-16b36,"
    "16ff0-16ff1,1bc9e,1d165-1d169,1d16d-1d172,1d17b-1d182,1d185-1d18b,1d1aa-1d1ad,1d242-1d244,"
    "1e000-1e006,1e008-1e018,1e01b-1e021,1e023-1e024,1e026-1e02a,1e130-1e136,1e2ae,1e2ec-1e2ef,"
    "1e8d0-1e8d6,1e944-1e94a"
)
"""The combining marks of a non-zero canonical combining class under Python 3.11's Unicode 14.0, frozen for
migration ``0012``: the marks NFC composes a letter with an accent across (``"e"``, U+0329, U+0301 is
``"é"`` and U+0329), and text holding none is indexed by ``0012`` as by ``0011``."""

COMBINING = _bracket_expression(COMBINING_RANGES)
"""A PostgreSQL regular expression matching one character of :data:`COMBINING_RANGES`."""


def _without(ranges: str, removed: str) -> str:
    """The code points of ``ranges`` that are not in ``removed`` (both as :data:`SEPARATOR_RANGES` is)."""

    def points(text: str) -> set[int]:
        found: set[int] = set()
        for part in text.split(","):
            first, _, last = part.partition("-")
            found.update(range(int(first, 16), int(last or first, 16) + 1))
        return found

    kept = sorted(points(ranges) - points(removed))
    parts: list[str] = []
    start = previous = kept[0]
    for point in [*kept[1:], -1]:
        if point != previous + 1:
            parts.append(f"{start:x}" if start == previous else f"{start:x}-{previous:x}")
            start = point
        previous = point
    return ",".join(parts)


_FOLDED = _bracket_expression(FOLDED_DIACRITIC_RANGES)
_UNFOLDED = _bracket_expression(_without(COMBINING_RANGES, FOLDED_DIACRITIC_RANGES))

MARKED_LATIN = f"[A-Za-z\\u00c0-\\u024f\\u1e00-\\u1eff]{COMBINING}*{_UNFOLDED}"
"""A Latin letter whose combining marks include one FTS5 does not fold, in NFC text: the query ends the word
at that mark (``"é"`` of ``"é"`` and U+0329 is the word ``"é"``, folded ``"e"``), where migration ``0011``
kept the accent NFC composed across it. Only such text needs :data:`SPLIT_ACCENTS` (``0012``)."""

SPLIT_ACCENTS = f"(?<=[A-Za-z]{COMBINING}*){_FOLDED}+"
"""The diacritics of :data:`FOLDED_DIACRITIC_RANGES` on an ASCII letter, in NFD text, after other combining
marks as well (migration ``0012``; :data:`ACCENTS` only right after the letter): NFC no longer composes them
across a mark that ends the word, and elsewhere the query ends the word before them anyway."""

GREEK_CAPITALS_RANGES = "386,389,38f,391,397,399,3a1,3a5,3a9-3ab,1fba,1fbc,1fca,1fcc,1ffa,1ffc"
"""The capitals that have no composed form with a combining mark their small letter has one with (``"Ϊ"``
and U+0301; ``"ϊ"`` and U+0301 is ``"ΐ"``), under Python 3.11's Unicode 14.0, frozen for migration
``0012``. The query lower-cases such a word and composes it (``fold_case``: ``"ΐ"``); the server's parser
lower-cases it without composing, so the capital's word was no term the query asked for."""

_GREEK_CAPITALS = _bracket_expression(GREEK_CAPITALS_RANGES)

GREEK_MARKED = f"{_GREEK_CAPITALS}{COMBINING}+"
"""A capital of :data:`GREEK_CAPITALS_RANGES` and its combining marks: indexed lower-cased, in NFC."""

GREEK_PARTS = f"({GREEK_MARKED})|([^{_GREEK_CAPITALS[1:]}+|{_GREEK_CAPITALS})"
"""Text as its parts, in order: a :data:`GREEK_MARKED` run (group 1) or other text (group 2). A match is the
longest one: a capital with its marks rather than the capital alone."""


HALF_WIDTH_MARK_RANGES = "ff9e-ff9f"
"""The characters of :data:`COMPATIBILITY_RANGES` whose NFKC is a combining mark: the half-width katakana
voiced and semi-voiced sound marks (``"ﾞ"`` U+FF9E, ``"ﾟ"`` U+FF9F, in NFKC U+3099 and U+309A; checked over
every character of those ranges), frozen for migration ``0014``.

Migration ``0012`` derived again the vectors of the rows holding a :data:`COMBINING` mark in their stored
text; its trigger looks for the marks in the text folded (after NFKC), where these two have become marks.
A row holding one after an accented Latin letter (``"caféﾞ"``: the folded text ``"café"`` and U+3099)
kept ``0011``'s vector, the term ``"café"``, where the query asks for ``"cafe"`` (the word ends at the mark)
and the trigger of ``0012`` indexes it so: found on SQLite and in new rows, not in those rows."""

HALF_WIDTH_MARKS = _bracket_expression(HALF_WIDTH_MARK_RANGES)
"""A PostgreSQL regular expression matching one character of :data:`HALF_WIDTH_MARK_RANGES`."""
