"""Checks on text the library stores, exports or tokenizes."""

from __future__ import annotations

import re

__all__ = ["encodable", "storable"]

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
