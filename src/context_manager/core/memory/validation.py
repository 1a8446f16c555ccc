"""Argument checks of the memory API: each raises :class:`InvalidMemoryError` naming the field.

They run before anything is changed, so a rejected call leaves every store as it was.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from context_manager.core.errors import InvalidMemoryError, describe_value
from context_manager.core.memory.models import ALL_USERS, MAX_USER_ID_CHARS, MemoryTier
from context_manager.core.messages import DATABLE_TIMES, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, is_datable
from context_manager.core.text import encodable

_NO_NUL = "text without NUL characters (PostgreSQL cannot store them)"
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # an escaped NUL, not an escaped backslash + "u0000"


def check_content(content: Any) -> None:
    """Content must be a non-empty string of valid Unicode, without NUL characters."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidMemoryError("content", content, "a non-empty string")
    if not encodable(content):
        raise InvalidMemoryError("content", content, "valid Unicode text (no lone surrogates)")
    if "\x00" in content:
        raise InvalidMemoryError("content", content, _NO_NUL)


MAX_ID_CHARS = 200
"""The longest memory id, in characters."""


def check_memory_id(memory_id: Any, *, field: str = "memory_id", optional: bool = False) -> str | None:
    """A non-empty string of at most :data:`MAX_ID_CHARS` characters of valid Unicode without NUL.

    With ``optional``, ``None`` is allowed too (and returned).
    """
    if optional and memory_id is None:
        return None
    if (
        not isinstance(memory_id, str)
        or not memory_id.strip()
        or len(memory_id) > MAX_ID_CHARS
        or "\x00" in memory_id
        or not encodable(memory_id)
    ):
        allowed = f"a non-empty string of at most {MAX_ID_CHARS} characters"
        raise InvalidMemoryError(field, memory_id, ("None or " if optional else "") + allowed)
    return memory_id


def check_text(value: Any, field: str, *, empty: bool = False) -> str:
    """A string of valid Unicode without NUL characters (non-empty unless ``empty``)."""
    if not isinstance(value, str) or not (empty or value) or "\x00" in value or not encodable(value):
        allowed = "a string" if empty else "a non-empty string"
        raise InvalidMemoryError(field, value, allowed + " of valid Unicode text without NUL characters")
    return value


def check_importance(value: Any, *, field: str = "importance") -> float:
    """A number from 0 to 1 (not a bool, not NaN); returned as a float.

    Any real number type is taken (``numpy.float32``, ``fractions.Fraction``), as its float.
    """
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else _real(value)
    if number is None or not (0.0 <= number <= 1.0):
        raise InvalidMemoryError(field, value, "a number from 0 to 1")
    return float(number)


def _real(value: Any) -> float | None:
    """Another real number type's value (``numpy.float32``, ``numpy.int64``) as a float, else ``None``.

    ``None`` for anything else: a bool, ``numpy.bool_``, a string, a complex number.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _integer(value: Any) -> int | None:
    """Another integer type's value (``numpy.int64``: ``__index__``) as an int, else ``None``.

    ``None`` for anything else: a bool, ``numpy.bool_``, a float.
    """
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


MAX_TAG_CHARS = 500
"""The longest tag, in characters: PostgreSQL's tag index takes entries of at most about 2.7 KB."""


def check_tags(tags: Any) -> list[str]:
    """A list (or set) of non-empty strings of at most :data:`MAX_TAG_CHARS` characters.

    ``None`` is no tags. Duplicates are dropped, order kept.
    """
    if tags is None:
        return []
    if isinstance(tags, str | bytes) or not isinstance(tags, Sequence | set | frozenset):
        raise InvalidMemoryError("tags", tags, "a list of non-empty strings")
    result: dict[str, None] = {}
    for tag in tags:
        if type(tag) is not str and isinstance(tag, str):
            tag = str(tag)  # a subclass (numpy.str_) is stored and returned as a plain string
        if (
            not isinstance(tag, str)
            or not tag.strip()
            or len(tag) > MAX_TAG_CHARS
            or not encodable(tag)
            or "\x00" in tag
        ):
            detail = f"bad tag {describe_value(tag)}"  # describe_value: a tag may be too deep to repr
            raise InvalidMemoryError(
                "tags",
                tags,
                f"a list of non-empty strings of at most {MAX_TAG_CHARS} characters, without NUL",
                detail=detail,
            )
        result[tag] = None
    return list(result)


MAX_METADATA_DEPTH = 500
"""The most levels of dicts and lists a memory's metadata nests (the metadata dict itself is one), on every
Python. ``json`` takes about 990 on Python 3.11 and 2,500 on 3.13: metadata a 3.13 process stored deeper
than 3.11 reads made every search of that store fail on 3.11 (another worker, a downgrade) with
``RecursionError``. 500 leaves a reader on 3.11 the stack of a deep call (a web framework's) to spare."""

_TOO_DEEP = f"a dict with string keys and JSON values nested at most {MAX_METADATA_DEPTH} levels"


def check_metadata(metadata: Any) -> dict[str, Any]:
    """A dict with string keys and JSON values at most :data:`MAX_METADATA_DEPTH` levels deep, as a copy."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
        raise InvalidMemoryError("metadata", metadata, "a dict with string keys and JSON values")
    try:
        text = json.dumps(dict(metadata), allow_nan=False, ensure_ascii=False, default=_numpy_value)
        text.encode("utf-8")
        copied = dict(json.loads(text))
        if "\\u0000" in text and _has_nul(copied):
            raise ValueError(f"a string holds a NUL character; allowed {_NO_NUL}")
    except RecursionError:  # nested deeper than the interpreter's stack: a JSON bomb
        raise InvalidMemoryError("metadata", "<nested too deeply>", _TOO_DEEP, detail="too deep") from None
    except (TypeError, ValueError) as error:
        raise InvalidMemoryError(
            "metadata", metadata, "a dict with string keys and JSON values", detail=str(error)
        ) from error
    # deeper than the limit needs more brackets than that (and twice as many characters): usually no walk
    if len(text) > 2 * MAX_METADATA_DEPTH and text.count("{") + text.count("[") > MAX_METADATA_DEPTH:
        depth = json_depth(copied)
        if depth > MAX_METADATA_DEPTH:
            raise InvalidMemoryError(
                "metadata", "<nested too deeply>", _TOO_DEEP, detail=f"nested {depth} levels"
            )
    return copied


def _numpy_value(value: Any) -> Any:
    """The JSON value of a numpy scalar or array (``numpy.float32(0.5)``: ``0.5``), for ``json.dumps``.

    Its Python value (``default=``), as tool results convert them (NaN is still refused). numpy is not
    imported for this: a value of its types exists only once it is. Anything else, and a
    numpy value without a JSON equivalent (``longdouble``, ``datetime64``), raises ``TypeError``.
    """
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic | numpy.ndarray):
        converted = value.tolist()
        if not isinstance(converted, numpy.generic):  # longdouble's is itself
            return converted
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_depth(value: Any) -> int:
    """How many levels of dicts and lists a parsed JSON value nests (a scalar: 0), without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        pending.extend((inner, level + 1) for inner in item if isinstance(inner, dict | list))
    return deepest


def _has_nul(value: Any) -> bool:
    """Whether a JSON value (already parsed, so bounded in depth) holds a NUL in a key or string."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def json_safe(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata made storable: values that are not JSON become strings, NUL characters become U+FFFD."""
    try:
        text = json.dumps(metadata, allow_nan=False, default=str)
    except (TypeError, ValueError):
        text = json.dumps({key: str(value) for key, value in metadata.items()}, default=str)
    return dict(json.loads(_JSON_NUL.sub(r"\1\\ufffd", text)))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0, DEL and C1 controls

USER_ID_ALLOWED = (
    f"a non-empty string of at most {MAX_USER_ID_CHARS} characters, not only whitespace, "
    "without control characters (tab, newline, NUL...) or lone surrogates"
)
"""What a user id may be (the ``allowed`` part of the error that refuses one)."""


def check_user(user_id: Any, *, allow_all: bool) -> None:
    """A user id (see :data:`USER_ID_ALLOWED`) or ``None`` (and :data:`ALL_USERS` where ``allow_all``)."""
    if user_id is None or (
        isinstance(user_id, str)
        and len(user_id) <= MAX_USER_ID_CHARS
        and user_id
        and not user_id.isspace()
        # isprintable(): a fast "no control character" for most ids (it is false for more than Cc, e.g.
        # a no-break space or a zero-width joiner, which a user id may hold)
        and (user_id.isprintable() or _CONTROL.search(user_id) is None)
        and encodable(user_id)
    ):
        return
    if allow_all and user_id is ALL_USERS:
        return
    allowed = USER_ID_ALLOWED + (", None or ALL_USERS" if allow_all else ", or None")
    raise InvalidMemoryError("user_id", user_id, allowed)


def check_tier(tier: Any) -> MemoryTier:
    """A tier or its name."""
    try:
        return MemoryTier.parse(tier)
    except ValueError:
        raise InvalidMemoryError("tier", tier, "one of 'short', 'medium', 'long'") from None


def check_tiers(tiers: Any) -> set[MemoryTier] | None:
    """``None`` (every tier), one tier, or an iterable of tiers."""
    if tiers is None:
        return None
    if isinstance(tiers, MemoryTier | str):
        return {check_tier(tiers)}
    if not isinstance(tiers, Iterable):
        raise InvalidMemoryError("tiers", tiers, "tiers among 'short', 'medium', 'long'")
    return {check_tier(tier) for tier in tiers}


MAX_LIMIT = 2**31 - 1
"""Larger limits mean "everything"; they are capped so SQLite (64-bit integers) can take them."""


def check_limit(limit: Any) -> int:
    """An integer >= 0 (not a bool); values above :data:`MAX_LIMIT` are capped to it."""
    number = limit if isinstance(limit, int) and not isinstance(limit, bool) else _integer(limit)
    if number is None or number < 0:  # _integer: numpy.int64 and the like
        raise InvalidMemoryError("limit", limit, "an integer >= 0")
    return min(number, MAX_LIMIT)


def check_time(value: Any, field: str) -> float | None:
    """``None``, seconds since the epoch or a datetime; returned as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else _real(value)
    if number is None or not is_finite(number):  # _real: numpy.int64 and the like
        raise InvalidMemoryError(field, value, "seconds since the epoch or a datetime")
    return float(number)


def check_number(value: Any, field: str, accepts: Callable[[float], bool], allowed: str) -> float:
    """A real number (not a bool) that ``accepts``; returned as a float (``numpy.float32`` too: ``_real``).

    ``accepts`` is given the float; NaN fails every comparison, so ``0 < x <= 1`` refuses it.
    """
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else _real(value)
    if number is None or not is_finite(number) or not accepts(float(number)):
        raise InvalidMemoryError(field, value, allowed)
    return float(number)


def is_finite(value: int | float) -> bool:
    """Whether a number is finite as a float (an int too large for a float is not: 10**400)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


EARLIEST_TIME = EARLIEST_TIMESTAMP
"""0001-01-01T00:00:00Z in seconds since the epoch: the earliest time a memory can hold."""
LATEST_TIME = LATEST_TIMESTAMP
"""9999-12-31T23:59:59Z in seconds since the epoch: the latest time a memory can hold."""


def check_moment(value: Any, field: str) -> float:
    """A time of a memory: seconds since the epoch from :data:`EARLIEST_TIME` to :data:`LATEST_TIME`.

    The years 1 to 9999, which a date can be computed for (search matches a named month against it).
    """
    if not is_datable(value):
        raise InvalidMemoryError(field, value, DATABLE_TIMES)
    return float(value)


def check_path(path: Any) -> Path:
    """A non-empty str or Path (``~`` expanded) without NUL characters or lone surrogates."""
    if not isinstance(path, str | Path) or not str(path).strip():
        raise InvalidMemoryError("path", path, "a file path (str or pathlib.Path)")
    if "\x00" in str(path) or not encodable(str(path)):
        raise InvalidMemoryError("path", path, "a file path without NUL characters or lone surrogates")
    return Path(path).expanduser()
