"""JSON decoding of stored records: ``orjson`` when it is installed (several times faster), else ``json``.

Resuming a conversation parses every record after the snapshot; with the standard library that parse is
most of a resume (about 10 ms for 1,000 messages on a small machine). ``orjson`` comes with the
``postgres`` extra; nothing else changes when it is missing.
"""

from __future__ import annotations

import json
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


def loads(text: str | bytes) -> Any:
    """One JSON document."""
    return _decoder()(text)


def loads_many(texts: Sequence[str]) -> list[Any]:
    """Several JSON documents in one parse (as one array): the per-call overhead is paid once."""
    if not texts:
        return []
    values = _decoder()("[" + ",".join(texts) + "]")
    if not isinstance(values, list) or len(values) != len(texts):
        raise ValueError("a stored record is not one JSON document")
    return values
