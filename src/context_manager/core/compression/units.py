"""Units: the messages a compression keeps or evicts together.

An assistant message that calls tools and every tool message answering it form one unit, so a provider
never sees a tool result without its call; any other message is a unit of its own. Two ways to get them:

* :func:`group_into_units` groups a list of messages once (pure; what :func:`plan_compression` uses for a
  list it is given);
* :class:`UnitIndex` keeps the units of a context window up to date as messages are added, evicted, cut
  or pinned: O(1) per added message and O(units removed) per eviction, and it hands out eviction
  candidates lowest priority first, oldest first within a priority, without sorting or regrouping the
  window. This is what keeps a compression's cost proportional to what it evicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from context_manager.core.messages import Message, Priority, Role

__all__ = ["MessageUnit", "Unit", "UnitIndex", "group_into_units"]

_RANK = {priority: priority.rank for priority in Priority}
_EVICTABLE_RANKS = 3  # low, normal, high; a critical message makes its unit protected
_SETTLE_EVERY = 256  # plain messages whose units wait for a read; about 0.15 ms of work at most


@dataclass(slots=True)
class MessageUnit:
    """Messages that are kept or evicted together (a tool call and its results, or one message)."""

    indices: list[int]
    """Positions of the unit's messages in the window, ascending."""
    tokens: int = 0
    """Sum of the messages' token counts."""
    rank: int = 0
    """Highest priority rank among the messages (low=0 ... critical=3)."""
    protected: bool = False
    """True if a message of the unit may never be evicted (system, pinned, critical)."""


def group_into_units(messages: Sequence[Message]) -> list[MessageUnit]:
    """Group messages into units: an assistant message with tool calls plus every tool message answering it.

    A tool message whose call is not in ``messages`` forms a unit of its own (the window never holds one).
    Units are returned in the order of their first message.
    """
    units: list[MessageUnit] = []
    unit_of_call: dict[str, MessageUnit] = {}
    tool, system, critical = Role.TOOL, Role.SYSTEM, Priority.CRITICAL
    rank_of = _RANK
    for index, message in enumerate(messages):
        priority = message.priority
        protected = message.pinned or priority is critical or message.role is system
        unit: MessageUnit | None = None
        if message.role is tool and message.tool_call_id is not None:
            unit = unit_of_call.get(message.tool_call_id)
        if unit is None:
            unit = MessageUnit([index], message.token_count, rank_of[priority], protected)
            units.append(unit)
            if message.tool_calls:
                for call in message.tool_calls:
                    unit_of_call[call.id] = unit
            continue
        unit.indices.append(index)
        unit.tokens += message.token_count
        rank = rank_of[priority]
        if rank > unit.rank:
            unit.rank = rank
        if protected:
            unit.protected = True
    return units


class Unit:
    """A live unit of a :class:`UnitIndex` (read its fields; only the index changes them)."""

    __slots__ = ("messages", "pending", "protected", "rank", "seq", "tokens")

    def __init__(self, seq: int, message: Message, rank: int, protected: int, pending: int) -> None:
        self.seq = seq
        """Order of the unit's first message (ascending in the window)."""
        self.messages = [message]
        """The unit's messages in window order."""
        self.tokens = message.token_count
        """Sum of the messages' token counts."""
        self.rank = rank
        """Highest priority rank among the messages."""
        self.protected = protected
        """How many of its messages are protected (system, pinned, critical): kept whole if any."""
        self.pending = pending
        """Tool calls of the unit without a result yet."""

    def __repr__(self) -> str:
        return f"Unit(seq={self.seq}, messages={len(self.messages)}, tokens={self.tokens}, rank={self.rank})"


class UnitIndex:
    """The units of a window's messages, kept up to date change by change (see the module docstring).

    The summary message is not part of it. Every message must have its ``token_count`` set when added.
    """

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        """Create an index, optionally of ``messages`` (in order)."""
        self._units: dict[int, Unit] = {}  # seq -> unit, oldest first
        self._seq = itertools.count()
        self._unit_of_message: dict[str, Unit] = {}
        self._unit_of_call: dict[str, Unit] = {}
        self._pending_calls: dict[str, str] = {}  # unanswered call id -> id of the assistant message
        self._evictable: tuple[dict[int, Unit], ...] = tuple({} for _ in range(_EVICTABLE_RANKS))
        self._pending_units: dict[int, Unit] = {}
        self._latest_user: Unit | None = None
        self._tail: list[Message] = []  # plain messages added since the last _settle(), not in units yet
        self.tokens = 0
        """Sum of every message's token count."""
        self._protected_tokens = 0
        for message in messages:
            if message.tool_calls or message.role is Role.TOOL:
                self.add(message)
            else:  # its unit is made at the first read, with the others in one loop (a resume's 1,000s)
                self.add_plain(message)

    # -- reading ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        self._settle()
        return len(self._units)

    def __iter__(self) -> Iterator[Unit]:
        self._settle()
        return iter(self._units.values())

    @property
    def protected_tokens(self) -> int:
        """Sum of the token counts of protected units (kept whole by every compression)."""
        self._settle()
        return self._protected_tokens

    @property
    def newest(self) -> Unit | None:
        """The unit whose first message is the newest."""
        self._settle()
        return next(reversed(self._units.values()), None)

    @property
    def latest_user(self) -> Unit | None:
        """The unit of the newest user message (a user message is always a unit of its own)."""
        self._settle()
        return self._latest_user

    @property
    def pending_units(self) -> Iterable[Unit]:
        """Units with tool calls still waiting for a result, oldest first."""
        return self._pending_units.values()

    @property
    def pending_calls(self) -> dict[str, str]:
        """Unanswered tool call id -> id of the assistant message that made it (do not modify)."""
        return self._pending_calls

    def has_call(self, call_id: str) -> bool:
        """True if a message in the index made the tool call ``call_id``."""
        return call_id in self._unit_of_call

    def unit_of(self, message_id: str) -> Unit | None:
        """The unit holding the message ``message_id``, or ``None``."""
        self._settle()
        return self._unit_of_message.get(message_id)

    def unit_of_call(self, call_id: str) -> Unit | None:
        """The unit whose assistant message made the tool call ``call_id``, or ``None``."""
        return self._unit_of_call.get(call_id)

    def eviction_order(self) -> Iterator[Unit]:
        """Unprotected units, lowest priority first and oldest first within a priority (lazily)."""
        self._settle()
        for by_seq in self._evictable:
            yield from by_seq.values()

    # -- changing ---------------------------------------------------------------------------------

    def add_plain(self, message: Message) -> None:
        """Add a message that calls no tool and answers none (token count set), in O(1).

        Its unit is made when the index is next read (by a compression, a budgeted view, a pin), so the
        add_message hot path only appends; the work moves to the compression, which is proportional to
        what it evicts anyway.
        """
        tail = self._tail
        tail.append(message)
        self.tokens += message.token_count
        if len(tail) >= _SETTLE_EVERY:  # bounds the work a compression finds waiting (and its loop stall)
            self._settle()

    def _settle(self) -> None:
        """Make the units of the plain messages added since the last call.

        This loop is the hot part of a compression of a large window, hence the local names.
        """
        tail = self._tail
        if not tail:
            return
        self._tail = []
        units, by_message, evictable, seq = self._units, self._unit_of_message, self._evictable, self._seq
        rank_of, critical, system, user = _RANK, Priority.CRITICAL, Role.SYSTEM, Role.USER
        latest_user = self._latest_user
        protected_tokens = 0
        for message in tail:
            number = next(seq)
            priority = message.priority
            if message.pinned or priority is critical or message.role is system:
                unit = Unit(number, message, rank_of[priority], 1, 0)
                protected_tokens += message.token_count
            else:
                unit = Unit(number, message, rank_of[priority], 0, 0)
                evictable[unit.rank][number] = unit
            units[number] = unit
            by_message[message.id] = unit
            if message.role is user:
                latest_user = unit
        self._latest_user = latest_user
        self._protected_tokens += protected_tokens

    def add(self, message: Message) -> Unit:
        """Add ``message`` (token count set): a tool result joins its call's unit, others start one."""
        self._settle()
        unit = None
        if message.role is Role.TOOL and message.tool_call_id is not None:
            unit = self._unit_of_call.get(message.tool_call_id)
        tokens = message.token_count
        self.tokens += tokens
        if unit is None:
            return self._start_unit(message)
        return self._join(unit, message)

    def _start_unit(self, message: Message) -> Unit:
        """A message that is a unit of its own (any message but a tool result whose call is known)."""
        unit = Unit(
            next(self._seq),
            message,
            _RANK[message.priority],
            1 if message.is_protected else 0,
            len(message.tool_calls),
        )
        self._units[unit.seq] = unit
        self._unit_of_message[message.id] = unit
        if unit.protected:
            self._protected_tokens += message.token_count
        else:
            self._evictable[unit.rank][unit.seq] = unit
        for call in message.tool_calls:
            self._unit_of_call[call.id] = unit
            self._pending_calls[call.id] = message.id
        if unit.pending:
            self._pending_units[unit.seq] = unit
        if message.role is Role.USER:
            self._latest_user = unit
        return unit

    def _join(self, unit: Unit, message: Message) -> Unit:
        """A tool result joins the unit of its call."""
        tokens = message.token_count
        self._unit_of_message[message.id] = unit
        old_rank, was_protected = unit.rank, unit.protected > 0
        unit.messages.append(message)
        unit.tokens += tokens
        unit.rank = max(unit.rank, _RANK[message.priority])
        if message.is_protected:
            unit.protected += 1
        if was_protected:
            self._protected_tokens += tokens
        elif unit.protected:
            del self._evictable[old_rank][unit.seq]
            self._protected_tokens += unit.tokens
        elif unit.rank != old_rank:
            del self._evictable[old_rank][unit.seq]
            self._insert_evictable(unit)
        if self._pending_calls.pop(message.tool_call_id, None) is not None:  # type: ignore[arg-type]
            unit.pending -= 1
            if not unit.pending:
                del self._pending_units[unit.seq]
        return unit

    def remove(self, units: Iterable[Unit]) -> None:
        """Remove whole units (evicted by a compression); O(their messages)."""
        self._settle()
        all_units, by_message, evictable = self._units, self._unit_of_message, self._evictable
        pending_units, unit_of_call = self._pending_units, self._unit_of_call
        pending_calls = self._pending_calls
        tokens = protected_tokens = 0
        for unit in units:
            seq = unit.seq
            del all_units[seq]
            tokens += unit.tokens
            if unit.protected:
                protected_tokens += unit.tokens
            else:
                del evictable[unit.rank][seq]
            if unit.pending:
                del pending_units[seq]
            for message in unit.messages:
                del by_message[message.id]
                for call in message.tool_calls:
                    unit_of_call.pop(call.id, None)
                    pending_calls.pop(call.id, None)
            if unit is self._latest_user:
                self._latest_user = None
        self.tokens -= tokens
        self._protected_tokens -= protected_tokens

    def replace(self, old: Message, new: Message) -> None:
        """Put ``new`` in place of ``old`` (same id and priority: a cut copy, or a pinned/unpinned copy)."""
        self._settle()
        unit = self._unit_of_message[old.id]
        position = next(i for i, message in enumerate(unit.messages) if message is old)
        was_protected = unit.protected > 0
        unit.messages[position] = new
        delta = new.token_count - old.token_count
        unit.tokens += delta
        self.tokens += delta
        unit.protected += (1 if new.is_protected else 0) - (1 if old.is_protected else 0)
        if was_protected and unit.protected:
            self._protected_tokens += delta
        elif was_protected:
            self._protected_tokens -= unit.tokens - delta
            self._insert_evictable(unit)
        elif unit.protected:
            del self._evictable[unit.rank][unit.seq]
            self._protected_tokens += unit.tokens

    def _insert_evictable(self, unit: Unit) -> None:
        by_seq = self._evictable[unit.rank]
        by_seq[unit.seq] = unit  # a new key goes last
        if len(by_seq) > 1:
            keys = reversed(by_seq)
            next(keys)
            if next(keys) > unit.seq:  # not the newest of its rank (unpinned, rank raised): restore order
                ordered = sorted(by_seq.items())
                by_seq.clear()
                by_seq.update(ordered)
