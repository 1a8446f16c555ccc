"""Value objects of the memory system: :class:`Memory` and :class:`MemoryTier`.

A memory is a piece of text with an importance, tags and metadata, owned by one user (or the
default namespace, ``user_id=None``). Times are seconds since the epoch (like :func:`time.time`).

Memories that come from a conversation carry the metadata keys :data:`CONVERSATION_KEYS`
(``session_id``, ``turn_index``, ``speaker``, ``session_date``); search uses them for neighbour
context, speaker boosts and session-level scores.
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Final

from context_manager.core.errors import describe_value

__all__ = ["ALL_USERS", "CONVERSATION_KEYS", "AllUsers", "Memory", "MemoryTier", "new_memory_id"]

CONVERSATION_KEYS = ("session_id", "turn_index", "speaker", "session_date")

MAX_USER_ID_CHARS = 256
"""The longest user id, in characters (PostgreSQL indexes it, with the session id, in bounded entries)."""
MAX_SESSION_ID_CHARS = 256
"""The longest ``session_id`` that makes a memory a conversation turn (see :attr:`Memory.session_id`)."""
"""Metadata keys that mark a memory as a turn of a conversation."""

MAX_ACCESS_COUNT = 2**31 - 1
"""The largest access count a memory can hold (PostgreSQL stores it as a 32-bit integer)."""


class MemoryTier(enum.StrEnum):
    """Where a memory lives; tiers differ in speed and retention, every tier is durable.

    * ``SHORT``: in process, the newest memories, fastest (persisted through the medium-term log).
    * ``MEDIUM``: an append-only JSONL log under ``storage_path`` with an in-memory index.
    * ``LONG``: a SQLite database under ``storage_path`` for important and consolidated memories.
    """

    SHORT = "short"
    MEDIUM = "medium"
    LONG = "long"

    @classmethod
    def parse(cls, value: MemoryTier | str) -> MemoryTier:
        """Return the tier named by ``value`` (a tier or its name, any case); raise ``ValueError``."""
        if isinstance(value, MemoryTier):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise ValueError(value)


class AllUsers(enum.Enum):
    """Type of :data:`ALL_USERS`."""

    ALL_USERS = "all users"


ALL_USERS: Final = AllUsers.ALL_USERS
"""Pass as ``user_id`` to search, count or clean up across every user explicitly."""


def new_memory_id() -> str:
    """Return a fresh, unguessable memory id (32 hex characters)."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Memory:
    """One remembered piece of text.

    Example:
        >>> memory = Memory(id="m1", content="Paris is the capital of France", importance=0.8)
        >>> memory.tier
        <MemoryTier.SHORT: 'short'>
    """

    id: str
    """Unique id (32 hex characters unless imported with another)."""
    content: str
    """The remembered text (never empty)."""
    importance: float = 0.5
    """How important the memory is, from 0 (trivial) to 1 (critical); drives placement and ranking."""
    tags: list[str] = field(default_factory=list)
    """Free-form labels, searchable with ``search_by_tags``."""
    tier: MemoryTier = MemoryTier.SHORT
    """The tier the memory lives in (a memory copied to long-term reports its fastest tier)."""
    created_at: float = 0.0
    """When the memory was added, in seconds since the epoch."""
    last_accessed: float = 0.0
    """When the memory was last returned by a search or get, in seconds since the epoch."""
    access_count: int = 0
    """How many times the memory was returned by a search (updated in batches)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable extra data; conversation turns carry ``session_id``, ``turn_index``,
    ``speaker`` and ``session_date``; evicted context also ``role``, ``message_id``, ``timestamp``."""
    user_id: str | None = None
    """The owner; ``None`` is the default namespace. Searches never cross owners unless asked."""
    source: str = "api"
    """Where the memory came from: ``"api"``, ``"context"`` (evicted messages), ``"consolidation"``,
    ``"import"``."""
    superseded_by: str | None = None
    """Id of the memory that consolidated this one; superseded memories are hidden from search."""
    merged_from: list[str] = field(default_factory=list)
    """Ids of the memories this one consolidates (provenance; lets a merge be undone)."""
    context: str = ""
    """Text of the previous turn of the same conversation (indexed at a low weight so a turn that
    answers a question is found by the words of the question); empty for other memories."""
    score: float | None = None
    """Relevance score filled in on search results (higher is better); ``None`` elsewhere."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of every field except ``score``."""
        return {
            "id": self.id,
            "content": self.content,
            "importance": self.importance,
            "tags": list(self.tags),
            "tier": self.tier.value,
            "created_at": self.created_at,
            "last_accessed": self.last_accessed,
            "access_count": self.access_count,
            "metadata": self.metadata,
            "user_id": self.user_id,
            "source": self.source,
            "superseded_by": self.superseded_by,
            "merged_from": list(self.merged_from),
            "context": self.context,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Memory:
        """Build a memory from :meth:`to_dict` output; raise ``KeyError``/``ValueError``/``TypeError``.

        Field types are checked (an imported file is untrusted): a non-empty string id, finite times,
        a non-negative integer access count, lists of strings for tags and ``merged_from``.
        """
        memory_id = data["id"]
        if not isinstance(memory_id, str) or not memory_id:
            raise TypeError(f"id: got {memory_id!r}; allowed a non-empty string")
        superseded_by = data.get("superseded_by")
        if superseded_by is not None and not isinstance(superseded_by, str):
            raise TypeError(f"superseded_by: got {type(superseded_by).__name__}; allowed a string or null")
        access_count = data.get("access_count", 0)
        if (
            isinstance(access_count, bool)
            or not isinstance(access_count, int)
            or not 0 <= access_count <= MAX_ACCESS_COUNT
        ):
            raise ValueError(
                f"access_count: got {describe_value(access_count)}; "
                f"allowed an integer from 0 to {MAX_ACCESS_COUNT}"
            )
        return cls(
            id=memory_id,
            content=data["content"],
            importance=float(data.get("importance", 0.5)),
            tags=_string_list(data.get("tags"), "tags"),
            tier=MemoryTier.parse(data.get("tier", "short")),
            created_at=_finite(data.get("created_at", 0.0), "created_at"),
            last_accessed=_finite(data.get("last_accessed", 0.0), "last_accessed"),
            access_count=access_count,
            metadata=dict(data.get("metadata") or {}),
            user_id=data.get("user_id"),
            source=str(data.get("source", "api")),
            superseded_by=superseded_by,
            merged_from=_string_list(data.get("merged_from"), "merged_from"),
            context=str(data.get("context") or ""),
        )

    def copy(self, **changes: Any) -> Memory:
        """Return a copy with ``changes`` applied (lists and metadata are copied, not shared)."""
        # every field is an init field: building the instance directly skips ``replace``'s own field walk
        # (a copy is made for each search result)
        base = {name: getattr(self, name) for name in _MEMORY_FIELDS}
        base["tags"] = list(self.tags)
        metadata = dict(self.metadata)
        for value in metadata.values():  # nested lists and objects too: a caller's change stays its own
            if type(value) in _CONTAINERS:
                metadata = _json_copy(metadata)
                break
        base["metadata"] = metadata
        base["merged_from"] = list(self.merged_from)
        base.update(changes)
        return Memory(**base)

    # --- conversation metadata, read by the stores and the ranking ---------------------------------

    @property
    def session_id(self) -> str | None:
        """The conversation session this memory is a turn of, if any.

        At most :data:`MAX_SESSION_ID_CHARS` characters: a longer value stays in the metadata but is no
        session (the stores index it with the user id, in an index of bounded entries on PostgreSQL).
        """
        value = self.metadata.get("session_id")
        if value is None:
            return None
        text = str(value)
        return text if len(text) <= MAX_SESSION_ID_CHARS else None

    @property
    def turn_index(self) -> int | None:
        """The position of this turn within its session, if any.

        A 64-bit integer: any other value stays in the metadata but is no position (the stores index it
        as a 64-bit column).
        """
        value = self.metadata.get("turn_index")
        if isinstance(value, bool):
            return None
        if not isinstance(value, int):
            try:
                value = int(value) if value is not None else None
            except (TypeError, ValueError, OverflowError):  # int(1e400) overflows
                return None
        return value if value is not None and -(2**63) < value < 2**63 - 1 else None

    @property
    def speaker(self) -> str | None:
        """Who said this turn (a name, or a role such as ``"user"``), if known."""
        value = self.metadata.get("speaker")
        return None if value is None else str(value)

    @property
    def session_date(self) -> str | None:
        """The date of the session as text (e.g. ``"2023-05-08"``), if known."""
        value = self.metadata.get("session_date")
        return None if value is None else str(value)


_MEMORY_FIELDS: Final = tuple(memory_field.name for memory_field in fields(Memory))


_CONTAINERS: Final = frozenset({dict, list})


def _json_copy(value: Any) -> Any:
    """A copy of a JSON value sharing no list or object with it (strings and numbers are immutable).

    Without recursion: metadata is as deep as ``json`` accepts it, which on Python 3.13 is deeper than
    the interpreter's recursion limit (a recursive copy raised ``RecursionError`` there).
    """
    if type(value) not in _CONTAINERS:
        return value
    root: Any = {} if type(value) is dict else []
    pending: list[tuple[Any, Any]] = [(value, root)]
    while pending:
        source, target = pending.pop()
        if type(source) is dict:
            for key, item in source.items():
                if type(item) in _CONTAINERS:
                    copied: Any = {} if type(item) is dict else []
                    target[key] = copied
                    pending.append((item, copied))
                else:
                    target[key] = item
        else:
            for item in source:
                if type(item) in _CONTAINERS:
                    copied = {} if type(item) is dict else []
                    target.append(copied)
                    pending.append((item, copied))
                else:
                    target.append(item)
    return root


def _finite(value: Any, field: str) -> float:
    """A finite number (not a bool) as a float; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: allowed a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{field}: allowed a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"{field}: allowed a finite number")
    return number


def _string_list(value: Any, field: str) -> list[str]:
    """``None`` (empty) or a list of strings; TypeError otherwise (a bare string is not a list)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{field}: got {describe_value(value)}; allowed a list of strings")
    return list(value)
