"""JSON decoding of stored records: ``orjson`` when it is installed (several times faster), else ``json``.

Resuming a conversation parses every record after the snapshot; with the standard library that parse is
most of a resume (about 10 ms for 1,000 messages on a small machine). ``orjson`` comes with the
``postgres`` extra; nothing else changes when it is missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["loads", "loads_many"]

_loads: Callable[[str | bytes], Any] | None = None


def _decoder() -> Callable[[str | bytes], Any]:
    global _loads
    if _loads is None:
        try:
            import orjson
        except ImportError:  # the standard library: same values, slower
            _loads = json.loads
        else:
            _loads = orjson.loads
    return _loads


_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")


def _decoder_for(text: str | bytes) -> Callable[[str | bytes], Any]:
    """``orjson`` unless the text may hold an integer beyond 64 bits (19 digits or more in a row).

    orjson reads such an integer as a float (10**20 came back as 1e+20, so a resumed window's tool
    arguments and metadata differed from the writer's) or refuses it (10**400 made the conversation
    impossible to open); ``json`` reads it as written. A long digit run elsewhere (in a string, a float's
    digits) only costs the slower parse.
    """
    pattern = _LONG_DIGITS if isinstance(text, str) else _LONG_DIGITS_BYTES
    if pattern.search(text) is not None:  # type: ignore[arg-type]
        return json.loads
    return _decoder()


def loads(text: str | bytes) -> Any:
    """One JSON document."""
    return _decoder_for(text)(text)


def loads_many(texts: Sequence[str]) -> list[Any]:
    """Several JSON documents in one parse (as one array): the per-call overhead is paid once."""
    if not texts:
        return []
    joined = "[" + ",".join(texts) + "]"
    values = _decoder_for(joined)(joined)
    if not isinstance(values, list) or len(values) != len(texts):
        raise ValueError("a stored record is not one JSON document")
    return values
