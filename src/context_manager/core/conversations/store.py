"""The :class:`ConversationStore` protocol: append-only records of a context window's changes.

A persisted conversation is a numbered sequence of records (version 1, 2, ...), each one change of the
window: a message added, a compression applied (what it kept, the summary, the history entry), a pin
changed. The window is the fold of its records (:mod:`~context_manager.core.conversations.replay`), so
resuming is replaying, from the latest snapshot when there is one.

Optimistic concurrency: every append says which version it was based on; when another writer got there
first the store refuses it with :class:`~context_manager.core.errors.ConversationConflictError` and
stores nothing. Two stores implement the protocol: SQLite (a file under ``storage_path``) and
PostgreSQL (shared by many processes and hosts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ConversationDump",
    "ConversationInfo",
    "ConversationRecord",
    "ConversationStore",
    "StoredConversation",
    "check_conversation_id",
    "generation_filter",
    "limit_clause",
    "listing_query",
]


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    """One change of a window."""

    kind: str
    """``"add"``, ``"compress"`` or ``"pin"``."""
    payload: Mapping[str, Any]
    """The change (JSON values)."""


@dataclass(slots=True)
class StoredConversation:
    """What :meth:`ConversationStore.load` returns: the latest snapshot and the records after it."""

    conversation_id: str
    """The conversation."""
    version: int
    """The version of the newest record (0: the conversation does not exist yet)."""
    snapshot_version: int = 0
    """The version the snapshot was taken at (0: no snapshot)."""
    snapshot: dict[str, Any] | None = None
    """The window's state at ``snapshot_version``, or ``None``."""
    records: list[tuple[int, ConversationRecord]] = field(default_factory=list)
    """``(version, record)`` after the snapshot, oldest first."""
    indexed_version: int = 0
    """Compressions up to this version have had their evicted messages written to memory."""
    created_at: float = 0.0
    """When the conversation was created (0.0 when new): its generation. A conversation deleted and created
    again under the same id has another, so a writer of the deleted one is refused even where the new one's
    version equals its own."""
    user_id: str | None = None
    """The end user the conversation belongs to (set when it was created), or ``None``: nobody's."""


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """A row of :meth:`ConversationStore.list`."""

    conversation_id: str
    """The conversation."""
    version: int
    """How many changes it has had."""
    created_at: float
    """When it was created (seconds since the epoch)."""
    updated_at: float
    """When it last changed (PostgreSQL: by the server's clock; SQLite: by the writer's). Never goes back."""
    user_id: str | None = None
    """The end user it belongs to, or ``None``: nobody's."""

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict."""
        return {
            "conversation_id": self.conversation_id,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "user_id": self.user_id,
        }


@dataclass(slots=True)
class ConversationDump:
    """A whole stored conversation, as it is (for copying between stores: ``memory migrate``)."""

    conversation_id: str
    """The conversation."""
    version: int
    """The version of the newest record."""
    snapshot_version: int
    """The version of the snapshot (0: none)."""
    snapshot: dict[str, Any] | None
    """The snapshot, or ``None``."""
    indexed_version: int
    """The indexing watermark."""
    created_at: float
    """When it was created."""
    updated_at: float
    """When it last changed."""
    records: list[tuple[int, str, str, dict[str, Any], float]] = field(default_factory=list)
    """Every record, oldest first: ``(version, kind, writer, payload, created_at)``."""
    user_id: str | None = None
    """The end user it belongs to, or ``None``."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values."""
        return {
            "conversation_id": self.conversation_id,
            "user_id": self.user_id,
            "version": self.version,
            "snapshot_version": self.snapshot_version,
            "snapshot": self.snapshot,
            "indexed_version": self.indexed_version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "records": [list(record) for record in self.records],
        }


def check_conversation_id(value: Any) -> str:
    """A conversation id: 1 to 200 characters, not only whitespace, of valid text without NUL.

    Raises:
        InvalidArgumentError: anything else.
    """
    from context_manager.core.errors import InvalidArgumentError
    from context_manager.core.text import encodable

    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > 200
        or "\x00" in value
        or not encodable(value)
    ):
        raise InvalidArgumentError(
            "conversation_id",
            value,
            "1 to 200 characters, not only whitespace, of valid text (no NUL, no lone surrogates)",
        )
    return value


@runtime_checkable
class ConversationStore(Protocol):
    """Where persisted conversations live (see the module docstring)."""

    kind: str
    """``"sqlite"`` or ``"postgres"``."""

    async def open(self) -> None:
        """Open (creating and migrating if needed) the store."""
        ...

    async def close(self) -> None:
        """Release files and connections."""
        ...

    async def load(self, conversation_id: str) -> StoredConversation:
        """The latest snapshot and every record after it (version 0 when the conversation is new).

        Raises:
            StorageCorruptedError: a record or the snapshot is not JSON (a damaged file).
            StorageError: the store could not be read.
        """
        ...

    async def version_of(self, conversation_id: str) -> tuple[int, float] | None:
        """The stored version and generation (``created_at``) of a conversation, or ``None`` (a row read)."""
        ...

    async def append(
        self,
        conversation_id: str,
        expected_version: int,
        records: Sequence[ConversationRecord],
        *,
        writer: str,
        created_at: float | None = None,
        user_id: str | None = None,
    ) -> int:
        """Store records as versions ``expected_version + 1 ...`` in one transaction; return the new version.

        ``created_at``: the conversation's generation as loaded (:attr:`StoredConversation.created_at`);
        for a new conversation (``expected_version`` 0), the creation time to store (default: now).
        ``None`` does not check the generation. ``user_id``: for a new conversation, the end user it
        belongs to (``None``: nobody); ignored for an existing one.

        Raises:
            ConversationConflictError: the stored version is not ``expected_version``, or the conversation
                is not the generation ``created_at`` (deleted and created again); nothing stored.
            StorageError: the store could not be written.
        """
        ...

    async def save_snapshot(
        self, conversation_id: str, version: int, state: Mapping[str, Any], *, created_at: float | None = None
    ) -> None:
        """Keep ``state`` as the window at ``version`` (resuming starts there); drop older snapshots.

        With ``created_at``, only in that generation of the conversation.
        """
        ...

    async def mark_indexed(
        self, conversation_id: str, version: int, *, created_at: float | None = None
    ) -> None:
        """Record that the evicted messages of compressions up to ``version`` are in memory.

        With ``created_at``, only in that generation of the conversation.
        """
        ...

    async def list_conversations(
        self,
        user_id: str | None = None,
        *,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[ConversationInfo]:
        """The stored conversations, most recently changed first: every one, or ``user_id``'s only.

        With ``limit``, the first ``limit`` of them; with ``before``, the ``(updated_at, id)`` of the last
        one of the previous page, only those after it in this order (see :func:`page_clause`).
        """
        ...

    async def delete(self, conversation_id: str, *, user_id: str | None = None) -> bool:
        """Delete a conversation and its records; whether it existed.

        With ``user_id``, only a conversation of that user or of nobody.

        Raises:
            ConversationAccessError: with ``user_id``, the conversation belongs to another user (nothing
                deleted).
        """
        ...

    async def dump(self, conversation_id: str) -> ConversationDump | None:
        """The whole conversation as stored (every record, its writer and time), or ``None``."""
        ...

    async def restore(self, dump: ConversationDump) -> None:
        """Store ``dump`` as the conversation, replacing what is stored under its id (one transaction)."""
        ...


def limit_clause(limit: int | None) -> str:
    """`` LIMIT n`` for a listing (``""`` for ``None``), capped to what SQLite and PostgreSQL take.

    A limit beyond a 64-bit integer made SQLite refuse the query ("datatype mismatch") and PostgreSQL
    too ("bigint out of range"), reported as a storage failure; no store holds that many rows.
    """
    return "" if limit is None else f" LIMIT {min(int(limit), 2**63 - 1)}"


def page_clause(before: tuple[float, str] | None, placeholder: str) -> tuple[str, tuple[Any, ...]]:
    """The condition keeping the conversations listed after ``before`` (``(updated_at, id)``).

    The listing is ordered by ``updated_at DESC, id``: the next page holds the conversations changed
    earlier, and those changed at the same time with a greater id (ties neither skipped nor repeated).
    ``updated_at <= x`` bounds the scan of the ``(updated_at DESC, id)`` index; the rest filters ties.
    Returns the condition (without ``WHERE``/``AND``; ``""`` for ``None``) and its parameters.
    """
    if before is None:
        return "", ()
    updated_at, conversation_id = before
    p = placeholder
    return (
        f"updated_at <= {p} AND (updated_at < {p} OR id > {p})",
        (updated_at, updated_at, conversation_id),
    )


def listing_query(
    table: str,
    user_id: str | None,
    before: tuple[float, str] | None,
    limit: int | None,
    placeholder: str,
) -> tuple[str, tuple[Any, ...]]:
    """The query listing ``table``'s conversations (``user_id``'s, after ``before``, the first ``limit``).

    Most recently changed first (``updated_at DESC, id``: the order of the listing's index), with the
    paging condition of :func:`page_clause`. ``placeholder`` is the driver's (``?`` for sqlite3, ``%s`` for
    psycopg). Returns the statement and its parameters.
    """
    conditions: list[str] = []
    parameters: tuple[Any, ...] = ()
    if user_id is not None:
        conditions.append(f"owner = {placeholder}")
        parameters = (user_id,)
    page, bounds = page_clause(before, placeholder)
    if page:
        conditions.append(page)
        parameters += bounds
    where = " WHERE " + " AND ".join(conditions) if conditions else ""
    return (
        f"SELECT id, version, created_at, updated_at, owner FROM {table}{where} "
        "ORDER BY updated_at DESC, id" + limit_clause(limit),
        parameters,
    )


def generation_filter(created_at: float | None, placeholder: str) -> tuple[str, tuple[float, ...]]:
    """The condition (`` AND created_at = ?``) and parameter keeping a write to one generation.

    ``None`` checks nothing. ``placeholder`` is the driver's (``?`` for sqlite3, ``%s`` for psycopg).
    """
    if created_at is None:
        return "", ()
    return f" AND created_at = {placeholder}", (created_at,)
