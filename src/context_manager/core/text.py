"""Checks on text the library stores, exports or tokenizes."""

from __future__ import annotations

__all__ = ["encodable"]


def encodable(text: str) -> bool:
    """True if ``text`` encodes to UTF-8 (no lone surrogates), as files, SQLite and tokenizers need."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
