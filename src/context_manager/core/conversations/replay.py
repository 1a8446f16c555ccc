"""The window as a fold of its records: building records from changes and replaying them (pure functions).

Record payloads (JSON):

* ``add``: ``{"message": {...}}``: a message appended, with its token count; ``"after": id`` when it was
  placed right after that message instead of at the end (a tool result arriving after other messages);
* ``compress``: ``{"kept": [ids], "new": [{...}], "evicted": [ids], "record": {...}}``: the window after a
  compression, as the ids of the messages it kept in order; ``new`` holds the messages the compression
  created (the summary, the head + tail copies of cut messages), ``record`` the ``compression_history``
  entry, ``evicted`` the ids handed to memory;
* ``pin``: ``{"id": ..., "pinned": true|false}``.

A snapshot holds the newest :data:`SNAPSHOT_HISTORY` ``compression_history`` entries and, as
``"earlier_compressions"``, how many compressions came before them (the records hold every entry).

The first record of every append, and every snapshot, also hold ``"counter"``: the ``encoding_name`` of
the token counter whose counts its messages carry (the records after it in the append are the same
writer's). A window resumed with another counter counts its messages again (see :attr:`WindowState.counters`).

Replaying gives messages equal field by field to the ones the writer held (ids, timestamps, token counts
and metadata included), so the exported request is byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from context_manager.core.compression.truncation import TRUNCATED_METADATA_KEY
from context_manager.core.context_window import COMPRESSION_HISTORY_LIMIT
from context_manager.core.conversations.codec import SNAPSHOT_ADVICE, SNAPSHOT_CHUNK, dumps_snapshot
from context_manager.core.conversations.store import ConversationRecord, StoredConversation
from context_manager.core.errors import StorageCorruptedError
from context_manager.core.messages import Message, Priority, Role, ToolCall

__all__ = [
    "COUNTER_KEY",
    "SNAPSHOT_HISTORY",
    "PendingSnapshot",
    "WindowState",
    "add_record",
    "compress_record",
    "encode_snapshot",
    "fold",
    "message_from_dict",
    "pin_record",
    "snapshot_of",
    "take_back",
]


COUNTER_KEY = "counter"
"""The payload (and snapshot) key naming the token counter whose counts the messages carry."""

SNAPSHOT_HISTORY = COMPRESSION_HISTORY_LIMIT
"""How many ``compression_history`` entries (the newest) a snapshot keeps: the ones the live window keeps.

A conversation that compressed thousands of times would otherwise write its whole history in every
snapshot (about 290 bytes a compression: 575 kB after 2,000, where the window itself is a few kB) and
read it back on every resume. The older entries stay in the conversation's records; the count of
compressions (``WindowState.earlier_compressions`` + the entries) stays whole.
"""
_EARLIER_KEY = "earlier_compressions"

_ROLES = {role.value: role for role in Role}
_PRIORITIES = {priority.value: priority for priority in Priority}
_new = object.__new__
_set_role = Message.__dict__["role"].__set__
_set_content = Message.__dict__["content"].__set__
_set_priority = Message.__dict__["priority"].__set__
_set_pinned = Message.__dict__["pinned"].__set__
_set_metadata = Message.__dict__["metadata"].__set__
_set_tool_calls = Message.__dict__["tool_calls"].__set__
_set_tool_call_id = Message.__dict__["tool_call_id"].__set__
_set_name = Message.__dict__["name"].__set__
_set_id = Message.__dict__["id"].__set__
_set_timestamp = Message.__dict__["timestamp"].__set__
_set_token_count = Message.__dict__["token_count"].__set__
_set_thinking = Message.__dict__["thinking"].__set__


def message_from_dict(data: Mapping[str, Any]) -> Message:
    """The message :meth:`Message.to_dict` wrote (every field, the token count included).

    Built field by field through the slots (what the window stored was checked when it was added): a
    resume rebuilds thousands of messages.

    Raises:
        KeyError, TypeError, ValueError: ``data`` is not what ``to_dict`` writes.
    """
    message: Message = _new(Message)
    _set_role(message, _ROLES[data["role"]])
    get = data.get
    _set_priority(message, _PRIORITIES[get("priority", "normal")])
    _set_pinned(message, bool(get("pinned", False)))
    metadata = get("metadata")
    _set_metadata(message, dict(metadata) if metadata else {})
    calls = get("tool_calls")
    _set_tool_calls(
        message,
        tuple(
            ToolCall(id=call["id"], name=call["name"], arguments=dict(call.get("arguments") or {}))
            for call in calls
        )
        if calls
        else (),
    )
    _set_id(message, str(data["id"]))
    content = data["content"]
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}, not str")
    _set_content(message, content)
    _set_tool_call_id(message, get("tool_call_id"))
    _set_name(message, get("name"))
    timestamp = get("timestamp")
    token_count = get("token_count", 0)
    if not isinstance(timestamp, int | float) or not isinstance(token_count, int):
        raise TypeError("timestamp and token_count must be numbers")
    _set_timestamp(message, timestamp)
    _set_token_count(message, token_count)
    thinking = get("thinking")
    _set_thinking(message, tuple(dict(block) for block in thinking) if thinking else ())
    return message


def add_record(message: Message, after: str | None = None) -> ConversationRecord:
    """The record of a message appended to the window (``after``: placed right after that message)."""
    if after is None:
        return ConversationRecord("add", {"message": message.to_dict()})
    return ConversationRecord("add", {"message": message.to_dict(), "after": after})


def compress_record(
    kept: Sequence[Message],
    created: Iterable[Message],
    evicted: Iterable[Message],
    history_entry: Mapping[str, Any],
) -> ConversationRecord:
    """The record of a compression: the kept ids in order, the messages it created, what it evicted."""
    return ConversationRecord(
        "compress",
        {
            "kept": [message.id for message in kept],
            "new": [message.to_dict() for message in created],
            "evicted": [message.id for message in evicted],
            "record": dict(history_entry),
        },
    )


def pin_record(message_id: str, pinned: bool) -> ConversationRecord:
    """The record of a pin or unpin."""
    return ConversationRecord("pin", {"id": message_id, "pinned": pinned})


@dataclass(slots=True)
class WindowState:
    """A window rebuilt from records."""

    messages: list[Message] = field(default_factory=list)
    """The window's messages, in order."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """``compression_history`` entries, oldest first (the newest :data:`SNAPSHOT_HISTORY` after a fold)."""
    earlier_compressions: int = 0
    """Compressions before the first entry of :attr:`history` (no longer listed)."""
    unindexed: list[Message] = field(default_factory=list)
    """Messages evicted after the indexing watermark: they may be missing from memory."""
    version: int = 0
    """The version of the last record applied."""
    counters: set[str] = field(default_factory=set)
    """The token counters (``encoding_name``) whose counts the snapshot and the records replayed carry."""


def snapshot_of(state: WindowState, counter: str | None = None) -> dict[str, Any]:
    """A JSON-ready copy of a state (for :meth:`ConversationStore.save_snapshot`).

    ``counter``: the ``encoding_name`` of the token counter whose counts the messages carry.
    """
    history = state.history[-SNAPSHOT_HISTORY:]
    snapshot: dict[str, Any] = {
        "messages": [message.to_dict() for message in state.messages],
        "history": [dict(entry) for entry in history],
        "unindexed": [message.to_dict() for message in state.unindexed],
    }
    earlier = state.earlier_compressions + len(state.history) - len(history)
    if earlier:
        snapshot[_EARLIER_KEY] = earlier
    if counter is not None:
        snapshot[COUNTER_KEY] = counter
    return snapshot


@dataclass(frozen=True, slots=True)
class PendingSnapshot:
    """A window's state to store as a snapshot: the store turns it into JSON, off the event loop.

    :meth:`to_json` writes the text ``json.dumps(self.to_dict())`` writes, building and encoding the
    messages a chunk at a time: their dicts die young (all of them at once, 36,000 objects at 12,000
    messages, set off full collections of the cyclic collector, 70-110 ms with the GIL held) and no
    single call of the C encoder holds the GIL for the whole window.
    """

    state: WindowState
    """The window (its lists are copies: nothing changes them)."""
    counter: str | None = None
    """The ``encoding_name`` of the token counter whose counts the messages carry."""

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON values (:func:`snapshot_of`)."""
        return snapshot_of(self.state, self.counter)

    def to_json(self, *, ensure_ascii: bool = True) -> str:
        """The snapshot as JSON text: ``json.dumps(self.to_dict(), ensure_ascii=ensure_ascii)``."""
        state = self.state
        lists = {"messages": state.messages, "unindexed": state.unindexed}
        skeleton = snapshot_of(dataclasses.replace(state, messages=[], unindexed=[]), self.counter)
        encode = json.JSONEncoder(ensure_ascii=ensure_ascii).encode
        parts = []
        for key, value in skeleton.items():
            messages = lists.get(key)
            if messages is None:
                text = encode(value)
            else:
                chunks = [
                    encode([message.to_dict() for message in messages[start : start + SNAPSHOT_CHUNK]])[1:-1]
                    for start in range(0, len(messages), SNAPSHOT_CHUNK)
                ]
                text = "[" + ", ".join(chunks) + "]"
            parts.append(f"{encode(key)}: {text}")
        return "{" + ", ".join(parts) + "}"


def encode_snapshot(snapshot: Mapping[str, Any] | PendingSnapshot, *, ensure_ascii: bool = True) -> str:
    """A snapshot given to :meth:`ConversationStore.save_snapshot`, as JSON text (run it in a thread)."""
    if isinstance(snapshot, PendingSnapshot):
        return snapshot.to_json(ensure_ascii=ensure_ascii)
    return dumps_snapshot(snapshot, ensure_ascii=ensure_ascii)


def fold(stored: StoredConversation) -> WindowState:
    """Replay a stored conversation: its snapshot, then every record after it.

    The state's history is the newest :data:`SNAPSHOT_HISTORY` entries; ``earlier_compressions`` counts
    the ones before.

    Raises:
        StorageCorruptedError: a record does not fit the window it applies to (nothing is guessed).
    """
    state = WindowState(version=stored.snapshot_version)
    known: dict[str, Message] = {}
    if stored.snapshot is not None:
        snapshot = stored.snapshot
        try:
            state.messages = [message_from_dict(data) for data in snapshot.get("messages", [])]
            state.history = [dict(entry) for entry in snapshot.get("history", [])]
            earlier = snapshot.get(_EARLIER_KEY, 0)
            if isinstance(earlier, bool) or not isinstance(earlier, int) or earlier < 0:
                raise ValueError(f"{_EARLIER_KEY} is {earlier!r}, not a count")
            state.earlier_compressions = earlier
            if stored.indexed_version < stored.snapshot_version:  # else they are all in memory
                state.unindexed = [message_from_dict(data) for data in snapshot.get("unindexed", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StorageCorruptedError(
                f"conversation {stored.conversation_id!r}: its snapshot (version {stored.snapshot_version}) "
                f"does not hold a window ({type(error).__name__}: {error}); {SNAPSHOT_ADVICE}"
            ) from error
        if stored.records:  # else nothing looks a message up
            known = {message.id: message for message in state.messages}
        counter = snapshot.get(COUNTER_KEY)
        if isinstance(counter, str):
            state.counters.add(counter)
    counters = state.counters
    for version, record in stored.records:
        try:
            counter = record.payload.get(COUNTER_KEY)
            if counter is not None:
                counters.add(str(counter))
            _apply(state, known, record, track_evicted=version > stored.indexed_version)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StorageCorruptedError(
                f"conversation {stored.conversation_id!r}: record {version} ({record.kind}) does not apply "
                f"to the window before it ({type(error).__name__}: {error}); nothing was changed"
            ) from error
        state.version = version
    dropped = len(state.history) - SNAPSHOT_HISTORY
    if dropped > 0:
        del state.history[:dropped]
        state.earlier_compressions += dropped
    return state


def _apply(
    state: WindowState, known: dict[str, Message], record: ConversationRecord, *, track_evicted: bool
) -> None:
    payload = record.payload
    if record.kind == "add":
        message = message_from_dict(payload["message"])
        after = payload.get("after")
        if after is None:
            state.messages.append(message)
        else:
            previous = known[after]
            messages = state.messages
            position = next((i for i in range(len(messages) - 1, -1, -1) if messages[i] is previous), None)
            if position is None:
                raise ValueError(f"message {after!r} is no longer in the window")
            messages.insert(position + 1, message)
        known[message.id] = message
    elif record.kind == "compress":
        created = [message_from_dict(data) for data in payload["new"]]
        if track_evicted:
            # What the live window handed to memory (ContextWindow._commit_compression): the evicted
            # messages and the full text of the ones cut now; never a cut copy (its original went to
            # memory when it was cut).
            present = {message.id: message for message in state.messages}
            handed = [present[i] for i in payload["evicted"] if i in present]
            handed.extend(present[m.id] for m in created if m.id in present)
            state.unindexed.extend(m for m in handed if TRUNCATED_METADATA_KEY not in m.metadata)
        for message in created:
            known[message.id] = message
        kept_ids = list(payload["kept"])
        kept = [known[message_id] for message_id in kept_ids]
        state.messages = kept
        state.history.append(dict(payload["record"]))
        kept_set = set(kept_ids)
        for message_id in [i for i in known if i not in kept_set]:  # never referenced again
            del known[message_id]
    elif record.kind == "pin":
        target = known[payload["id"]]
        pinned = dataclasses.replace(target, pinned=bool(payload["pinned"]))  # messages are immutable
        known[target.id] = pinned
        state.messages = [pinned if message is target else message for message in state.messages]
    else:
        raise ValueError(f"unknown record kind {record.kind!r}")


def take_back(
    messages: list[Message],
    history: list[Any],
    changes: Sequence[tuple[ConversationRecord, tuple[Sequence[Message], Sequence[Any], int] | None]],
    earlier: int = 0,
) -> int:
    """Undo ``changes`` (oldest first, the last ones made) on a window's ``messages`` and ``history``.

    Each change is a record and, for a compression, the window before it
    (:attr:`ContextWindow.compressed_from`). An add is taken back by removing its message, a pin by
    flipping it back, a compression by putting back the messages and history before it. ``earlier``:
    how many compressions came before the first entry of ``history``; returns that count after the undo.

    Raises:
        ValueError: a compression without the window before it, or a record of an unknown kind.
    """
    for record, before in reversed(changes):
        payload = record.payload
        if record.kind == "add":
            message_id = payload["message"]["id"]
            messages[:] = [message for message in messages if message.id != message_id]
        elif record.kind == "pin":
            message_id, pinned = payload["id"], bool(payload["pinned"])
            messages[:] = [
                dataclasses.replace(message, pinned=not pinned) if message.id == message_id else message
                for message in messages
            ]
        elif record.kind == "compress" and before is not None:
            messages[:] = before[0]
            history[:] = before[1]
            earlier = before[2]
        else:
            raise ValueError(f"cannot take back a {record.kind!r} record")
    return earlier
