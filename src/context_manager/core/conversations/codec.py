"""JSON encoding of snapshots and decoding of stored records (``orjson`` when installed, else ``json``).

Resuming a conversation parses every record after the snapshot; with the standard library that parse is
most of a resume (about 10 ms for 1,000 messages on a small machine). ``orjson`` comes with the
``postgres`` extra; nothing else changes when it is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["SNAPSHOT_CHUNK", "dumps_snapshot", "loads", "loads_many", "loads_records", "loads_snapshot"]

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


_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN = b"0" * 19


def _has_long_digit_run(text: str | bytes) -> bool:
    """Whether ``text`` holds 19 or more ASCII digits in a row (the only digits a JSON number has).

    Every digit is turned into ``0`` in the UTF-8 bytes (a multi-byte character has no ASCII byte), then
    the run of 19 is looked for as a substring: about 0.3 ms for a 1,000-message conversation (330 KB),
    where a regular expression took 4-5 ms, more than the parse it guards.
    """
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return _LONG_RUN in data.translate(_DIGITS_AS_ZERO)


def _decoder_for(text: str | bytes) -> Callable[[str | bytes], Any]:
    """``orjson`` unless the text may hold an integer beyond 64 bits (19 digits or more in a row).

    orjson reads such an integer as a float (10**20 came back as 1e+20, so a resumed window's tool
    arguments and metadata differed from the writer's) or refuses it (10**400 made the conversation
    impossible to open); ``json`` reads it as written. A long digit run elsewhere (in a string, a float's
    digits) only costs the slower parse.
    """
    if _has_long_digit_run(text):
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


def loads_records(conversation_id: str, versions: Sequence[int], texts: Sequence[str]) -> list[Any]:
    """A conversation's stored records (``texts``, of ``versions``), parsed as by :func:`loads_many`.

    Raises:
        StorageCorruptedError: a record is not JSON (a damaged file); it names the record.
    """
    from context_manager.core.errors import StorageCorruptedError

    try:
        return loads_many(texts)
    except (ValueError, RecursionError):
        pass
    for version, text in zip(versions, texts, strict=True):  # which one: parsed alone
        try:
            loads(text)
        except (ValueError, RecursionError) as error:
            raise StorageCorruptedError(
                f"conversation {conversation_id!r}: record {version} is not JSON ({type(error).__name__}: "
                f"{error}); nothing was changed"
            ) from None
    raise StorageCorruptedError(
        f"conversation {conversation_id!r}: its records are not JSON; nothing was changed"
    )


def loads_snapshot(conversation_id: str, version: int, text: str) -> Any:
    """A conversation's stored snapshot (taken at ``version``), parsed.

    Raises:
        StorageCorruptedError: it is not JSON (a damaged file).
    """
    from context_manager.core.errors import StorageCorruptedError

    try:
        return loads(text)
    except (ValueError, RecursionError) as error:
        raise StorageCorruptedError(
            f"conversation {conversation_id!r}: its snapshot (version {version}) is not JSON "
            f"({type(error).__name__}: {error}); {SNAPSHOT_ADVICE}"
        ) from None


SNAPSHOT_ADVICE = (
    "nothing was changed. Its records are kept: clearing the snapshot (snapshot NULL and snapshot_version "
    "0 in the conversations table) resumes it from them"
)
"""What to do about a damaged snapshot (the records hold the whole conversation)."""


SNAPSHOT_CHUNK = 128
"""Items of a snapshot's long list encoded by one call of the C encoder (about 2 ms, the GIL held)."""


def dumps_snapshot(snapshot: Mapping[str, Any], *, ensure_ascii: bool = True) -> str:
    """``json.dumps(snapshot, ensure_ascii=...)``, the same text, with its long lists encoded in chunks.

    Stores encode a snapshot in a thread, but ``json``'s C encoder holds the GIL for the whole call: at
    12,000 messages the event loop stood still 120-250 ms in one piece. A call per chunk of
    :data:`SNAPSHOT_CHUNK` items lets the loop run between them (its thread gets the GIL back within
    the interpreter's switch interval).
    """
    if not all(type(key) is str for key in snapshot):  # json.dumps writes other keys as strings
        return json.dumps(dict(snapshot), ensure_ascii=ensure_ascii)
    encode = json.JSONEncoder(ensure_ascii=ensure_ascii).encode
    parts = []
    for key, value in snapshot.items():
        if isinstance(value, list) and len(value) > SNAPSHOT_CHUNK:
            chunks = [
                encode(value[start : start + SNAPSHOT_CHUNK])[1:-1]
                for start in range(0, len(value), SNAPSHOT_CHUNK)
            ]
            text = "[" + ", ".join(chunks) + "]"
        else:
            text = encode(value)
        parts.append(f"{encode(key)}: {text}")
    return "{" + ", ".join(parts) + "}"
