"""Checks on text the library stores, exports or tokenizes."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_CLUSTER_CHARS", "encodable", "grapheme_end", "grapheme_start", "storable"]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def encodable(text: str) -> bool:
    """True if ``text`` encodes to UTF-8 (no lone surrogates), as files, SQLite and tokenizers need."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(text: str) -> str:
    """``text`` with each NUL character and lone surrogate replaced by U+FFFD, so a message can hold it.

    For text the library did not write itself (a tool's output or error): a message refuses both (they
    cannot be stored, tokenized or sent as UTF-8).
    """
    if "\x00" in text or not encodable(text):
        return _UNSTORABLE.sub("\ufffd", text)
    return text


_ZWJ = "\u200d"


def _attaches(char: str) -> bool:
    """True if ``char`` joins the character before it in one grapheme cluster (UAX #29 Extend/SpacingMark).

    Combining marks of every kind, the zero-width joiner and non-joiner, variation selectors, emoji skin
    tone modifiers, emoji tag characters, Thai and Lao SARA AM and the halfwidth katakana sound marks.
    """
    point = ord(char)
    if point < 0x300:
        return False
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or point in (0x200C, 0x200D, 0x0E33, 0x0EB3, 0xFF9E, 0xFF9F)
        or 0x1F3FB <= point <= 0x1F3FF
        or 0xE0020 <= point <= 0xE007F
    )


# UAX #29 Prepend characters (Arabic and Syriac number signs, Brahmi-derived prefixed vowels and repha
# forms): each joins the character after it, so a cut must not fall right after one.
_PREPEND = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD, 0x111C2]
    + [0x111C3, 0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02]
)


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


_REGIONAL = "".join(map(chr, range(0x1F1E6, 0x1F200)))

# A cluster is looked for this many code points away at most: past it (a "zalgo" run of thousands of
# combining marks, a chain of joiners) a cut is made where it was asked for, as Unicode's stream-safe
# text format bounds a character's marks. An unbounded look made every cut of a megabyte of such text
# walk all of it, several times a cut, in Python (seconds where the cut took milliseconds).
MAX_CLUSTER_CHARS = 128


def _hangul(char: str) -> str:
    """The Hangul syllable type of ``char`` (L, V, T, LV, LVT) or ``""``."""
    point = ord(char)
    if 0x1100 <= point <= 0x115F or 0xA960 <= point <= 0xA97C:
        return "L"
    if 0x1160 <= point <= 0x11A7 or 0xD7B0 <= point <= 0xD7C6:
        return "V"
    if 0x11A8 <= point <= 0x11FF or 0xD7CB <= point <= 0xD7FB:
        return "T"
    if 0xAC00 <= point <= 0xD7A3:
        return "LV" if (point - 0xAC00) % 28 == 0 else "LVT"
    return ""


_HANGUL_JOINS = {("L", "L"), ("L", "V"), ("L", "LV"), ("L", "LVT"), ("LV", "V"), ("LV", "T"), ("V", "V")}
_HANGUL_JOINS |= {("V", "T"), ("LVT", "T"), ("T", "T")}


def _boundary(text: str, index: int) -> bool:
    """True if a cut between ``text[index - 1]`` and ``text[index]`` splits no grapheme cluster.

    Follows the extended grapheme cluster rules of UAX #29 that matter for cutting: CR LF, combining marks
    and other extenders, anything after a zero-width joiner (emoji ZWJ sequences), regional indicator
    pairs (flags), prepended marks (an Arabic number sign and its digits), Indic conjuncts and Hangul
    syllable sequences. It errs towards keeping characters together (a virama joins any letter after it).
    """
    if index <= 0 or index >= len(text):
        return True
    before, after = text[index - 1], text[index]
    if before == "\r" and after == "\n":
        return False
    if before in "\r\n" or after in "\r\n":
        return True
    if _attaches(after) or before == _ZWJ or ord(before) in _PREPEND:
        return False
    if _attaches(before) and unicodedata.category(after) == "Lo":
        at = index - 1  # a virama among the marks before a letter joins it (Indic conjuncts)
        while at >= max(0, index - MAX_CLUSTER_CHARS) and _attaches(text[at]):
            if unicodedata.combining(text[at]) == 9:
                return False
            at -= 1
    if _regional(before) and _regional(after):
        # a flag is a pair: the cut splits one when an odd number of indicators precede it (a run longer
        # than MAX_CLUSTER_CHARS is cut anywhere: counting a million indicators took a second a cut)
        near = text[max(0, index - MAX_CLUSTER_CHARS) : index]
        run = len(near) - len(near.rstrip(_REGIONAL))
        return run % 2 == 0 or run == len(near) < index
    if "\u1100" <= before <= "\ud7fb" and "\u1100" <= after <= "\ud7fb":
        return (_hangul(before), _hangul(after)) not in _HANGUL_JOINS
    return True


def grapheme_start(text: str, index: int) -> int:
    """The largest grapheme cluster boundary of ``text`` at or before ``index`` (a cut that splits none).

    ``text[:grapheme_start(text, i)]`` is the longest prefix of ``text[:i]`` ending with a whole character
    as a reader sees it: an emoji ZWJ sequence, a letter with its combining marks, a flag. ``index`` itself
    when no boundary is within :data:`MAX_CLUSTER_CHARS` code points.
    """
    index = max(0, min(index, len(text)))
    at = index
    while not _boundary(text, at):
        at -= 1
        if index - at > MAX_CLUSTER_CHARS:
            return index
    return at


def grapheme_end(text: str, index: int) -> int:
    """The smallest grapheme cluster boundary of ``text`` at or after ``index``.

    ``text[grapheme_end(text, i):]`` is the longest suffix of ``text[i:]`` starting with a whole character.
    ``index`` itself when no boundary is within :data:`MAX_CLUSTER_CHARS` code points.
    """
    index = max(0, min(index, len(text)))
    at = index
    while not _boundary(text, at):
        at += 1
        if at - index > MAX_CLUSTER_CHARS:
            return index
    return at
