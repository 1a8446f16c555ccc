"""The context window: the message list, its running token total and the budget invariants.

:class:`ContextWindow` keeps every message counted once (the count is cached on the message) and a running
total, so adding a message is O(1). When an add would exceed ``max_tokens`` the window compresses itself to
``max_tokens * compression_ratio`` (the gap between the two is hysteresis: compressions are rare and the
exported prefix stays byte-identical between them, so provider prompt caches keep hitting):

* system, pinned and critical messages, the latest user message, the newest unit and units waiting for
  tool results are kept;
* whole units (an assistant tool call with all its results, or one message) are evicted, lowest priority
  first and oldest first within a priority;
* one rolling summary message replaces what was evicted (a later compression folds it in again);
* when the kept messages are still too large they are cut to head + marker + tail in proportion, the
  newest user request keeping at least ``min(its size, max_tokens // 4)`` tokens of its own text.

The units are kept up to date as messages come and go (:class:`~context_manager.core.compression.UnitIndex`),
so a compression costs about as much as what it evicts, not as much as the window holds.

State changes have one commit point each, with no ``await`` inside: :meth:`ContextWindow._commit_append`
(a message enters), :meth:`ContextWindow._commit_compression` (a compression's plan and summary) and
:meth:`ContextWindow._commit_pin` (a pin changes). A compression puts what it evicts (and the full text of
what it cuts) into the window's :class:`~context_manager.core.eviction.EvictedQueue` in its commit, so a
cancelled add never loses them; they leave the queue when a consumer (the eviction hook, or the
``EnhancedContextManager``'s background memory writer) acknowledges them. Until then they are in
:attr:`ContextWindow.evicted_messages`: a window used alone, without a hook, keeps every message it evicts
there (the queue grows with each compression, without bound) until :meth:`ContextWindow.take_evicted`
takes them.

A tool result always sits right after its call: a result arriving after other messages (a user spoke
while the tools ran) is placed after its call's unit, not at the end.

Each call id is held once. A server that numbers the calls of each response (``call_0`` every turn) makes
an id again once the earlier call has its result: the window holds the later call as ``call_0~2`` (the
smallest ``~n`` from 2 that no call in the window has), and a result quoting ``call_0`` answers the newest
unanswered call of that id (:meth:`ContextWindow.resolve_tool_call_id`). The stored messages carry the
new ids, so exports, compressions and persisted conversations see unique ids. An id whose newest call
still waits for its result is refused (``ToolCallPairingError``).

Messages are immutable, so :attr:`ContextWindow.messages` hands out the window's own objects safely.
After every public call the window holds at most ``max_tokens`` tokens, every tool result has its call,
and a rejected call leaves everything as it was.

Example:
    >>> window = ContextWindow(max_tokens=1000)
    >>> await window.add(Message.create("user", "Hello!"))
    >>> window.token_count
    11
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from context_manager.core.compression import (
    MIN_SUMMARY_TOKENS,
    SUMMARY_METADATA_KEY,
    TRUNCATED_METADATA_KEY,
    EvictionDecision,
    ExtractiveSummarizer,
    Summarizer,
    UnitIndex,
    check_summary_text,
    decide_eviction,
)
from context_manager.core.compression.planning import cut_messages
from context_manager.core.compression.summarizer import summary_call_deadline
from context_manager.core.errors import (
    ContextBudgetError,
    InvalidArgumentError,
    InvalidMessageError,
    NotFoundError,
    SummarizerUnavailableError,
    ToolCallPairingError,
    in_item,
)
from context_manager.core.eviction import EvictedQueue
from context_manager.core.messages import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    REASONING_METADATA_KEY,
    Message,
    Role,
    ToolCall,
    check_timestamp,
    reasoning_texts,
)
from context_manager.core.threads import wait_for_all
from context_manager.core.tokens import (
    OFF_LOOP_CHARS,
    REPLY_PRIMING_TOKENS,
    ExactTokenCounter,
    TokenCounter,
    counting_thinking,
    get_token_counter,
    truncate_to_tokens,
)

__all__ = [
    "COMPRESSION_HISTORY_LIMIT",
    "RESERVED_METADATA_KEYS",
    "CompressionRecord",
    "CompressionTrace",
    "ContextWindow",
    "EvictionHook",
    "Journal",
    "JournalEntry",
    "OverflowCheck",
]

logger = logging.getLogger(__name__)

EvictionHook = Callable[[list[Message]], Awaitable[None] | None]
"""A callback receiving the messages a compression removed (full text of truncated ones); sync or async."""

JournalEntry = tuple[str, dict[str, Any]]
"""A change of the window as ``(kind, payload)``: the record kinds of
:mod:`context_manager.core.conversations.replay` (``"add"``, ``"compress"``, ``"pin"``)."""

Journal = Callable[[str, dict[str, Any]], None]
"""Receives every committed change, synchronously, inside its commit point: ``journal(kind, payload)``
with the record's JSON payload."""

OverflowCheck = Callable[[], Awaitable[None]]
"""Awaited when a change overflows the window, before it compresses or refuses the change for lack of room
(under the window's lock, before anything changes): an error it raises is the call's, nothing changed."""

RESERVED_METADATA_KEYS = frozenset({SUMMARY_METADATA_KEY, TRUNCATED_METADATA_KEY})
"""Metadata keys only the window sets (on its summary and on the messages it cuts)."""

COMPRESSION_HISTORY_LIMIT = 100
"""How many records (the newest) :attr:`ContextWindow.compression_history` keeps.

A window run for days would otherwise hold a record for every compression it ever made (about 300 bytes
each: 6 MB after 20,000 compressions). :attr:`ContextWindow.compression_count` counts every compression.
A persisted conversation's snapshots keep the same newest records (its records keep them all).
"""

STRATEGY_EXTRACTIVE = "extractive"
STRATEGY_CUSTOM = "custom"
STRATEGY_FALLBACK = "custom_failed_fallback_extractive"

_TOOL = Role.TOOL
_EARLIEST, _LATEST = EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
_set = object.__setattr__  # the window fills in token_count on the (frozen) messages it accepts


def check_counter(counter: TokenCounter, field: str) -> None:
    """Refuse a token counter whose counts are not integers (``len(text) / 4``), naming ``field``.

    One count of a short text and message (skipped for the built-in counter): a float count would be
    taken by every add and fail the first compression with a bare ``TypeError``.

    Raises:
        InvalidArgumentError: ``count`` or ``count_message`` returned something else than an int >= 0.
    """
    if type(counter) is ExactTokenCounter:
        return
    counts = (counter.count("probe"), counter.count_message(Message.create("user", "probe")))
    if any(isinstance(count, bool) or not isinstance(count, int) or count < 0 for count in counts):
        raise InvalidArgumentError(
            field,
            counter,
            "a TokenCounter whose count and count_message return integers >= 0",
            detail=f"count('probe') gave {counts[0]!r}, count_message of a message 'probe' {counts[1]!r}",
        )


def _counted_chars(message: Message, *, content: bool = True) -> int:
    """The characters counting ``message`` reads: its content, thinking text and tool call arguments.

    What decides whether it is counted in a worker thread (beyond ``OFF_LOOP_CHARS``): a thinking block or
    the arguments of a call can be as long as any content.
    """
    chars = len(message.content) if content else 0
    for block in message.thinking:
        chars += len(block.get("thinking") or block.get("data") or "")
    for call in message.tool_calls:
        chars += len(call.arguments_json())
    if message.metadata and REASONING_METADATA_KEY in message.metadata:  # a reasoning server's, kept
        chars += sum(len(text) for text in reasoning_texts(message))
    return chars


def _own(message: Message, tokens: int) -> Message:
    """``message`` with its token count set to ``tokens``: itself, or a copy if it holds another count.

    The window caches its count on the messages it takes. A message already counted differently (by
    another window with another counter) keeps that window's count: this window takes a copy, or the
    other window would plan its compressions with this window's counts. A fresh message (no count yet)
    or one counted the same is taken as it is.
    """
    held = message.token_count
    if held and held != tokens:
        message = dataclasses.replace(message)
    _set(message, "token_count", tokens)
    return message


def _renamed_from(call_id: str, pending: dict[str, str]) -> str | None:
    """The newest unanswered call of ``pending`` renamed from ``call_id`` (``call_id~n``), or None."""
    prefix = call_id + "~"
    for held in reversed(pending):
        if held.startswith(prefix) and held[len(prefix) :].isdigit():
            return held
    return None


def _saved_by_cuts(cuts: Sequence[tuple[Message, int]], replacements: Mapping[str, Message]) -> int:
    """The tokens the cut copies (``replacements``, by the id of the message cut) save on the originals."""
    return sum(o.token_count - replacements[o.id].token_count for o, _ in cuts if o.id in replacements)


def _counts_beyond_content(message: Message) -> bool:
    """Whether a message's count holds more than its content: thinking, call arguments, kept reasoning."""
    return bool(message.thinking or message.tool_calls or REASONING_METADATA_KEY in (message.metadata or ()))


def _cuts_too_large(tokens: int, limit: int, field: str) -> ContextBudgetError:
    """The error for cuts whose copies the counter gives more tokens than the plan allowed them.

    A counter that counts a message as a whole (the JSON of a request body, a chat template) can count a
    cut copy above its framing plus its content counted alone; when no shorter cut fits either (the newest
    user message keeps at least a whole character of its start and of its end), the messages that must
    stay do not fit ``limit``.
    """
    return ContextBudgetError(
        f"{field}: got {limit}; allowed more: system, pinned and critical messages plus the newest messages "
        f"still hold {tokens} tokens cut as far as the token counter allows (it counts the cut messages "
        "above the room planned for them; the newest user message keeps whole characters of its start and "
        "its end), so nothing was changed",
        required_tokens=tokens,
        max_tokens=limit,
    )


def _no_call_error(call_id: str | None, pending: dict[str, str], where: str) -> ToolCallPairingError:
    listed = ", ".join(sorted(pending)) or "none pending"
    return ToolCallPairingError(
        "tool_call_id", call_id, f"the id of an unanswered tool call {where} ({listed})"
    )


def _reassign_calls(message: Message, pending: dict[str, str], taken: Callable[[str], bool]) -> Message:
    """``message`` with each call whose id a call in the window already has renamed ``id~n`` (n from 2).

    A server that numbers calls per response (``call_0`` every turn) makes an id again once the earlier
    call was answered; the window holds each call id once, so exports and persisted conversations keep
    every call paired with its own result.

    Raises:
        ToolCallPairingError: a call reuses the id of a call still waiting for its result.
    """
    own = {call.id for call in message.tool_calls}
    calls: list[ToolCall] = []
    renamed_ids: dict[str, str] = {}
    for call in message.tool_calls:
        call_id = call.id
        waiting = call_id if call_id in pending else _renamed_from(call_id, pending)
        if waiting is not None:
            raise ToolCallPairingError(
                "tool_calls[].id",
                call_id,
                "an id no unanswered call in the window has (an id is made again only once the earlier "
                f"call has its result; {waiting!r} has none yet: add its tool result or cancel it first)",
            )
        if taken(call_id):
            number = 2
            while taken(f"{call_id}~{number}") or f"{call_id}~{number}" in own:
                number += 1
            renamed = f"{call_id}~{number}"
            own.add(renamed)
            renamed_ids[call_id] = renamed
            call = ToolCall(renamed, call.name, call.arguments)
        calls.append(call)
    if not renamed_ids:
        return message
    thinking = message.thinking
    if any(block["type"] == "tool_use" for block in thinking):  # the places of calls (interleaved thinking)
        thinking = tuple(
            {"type": "tool_use", "id": renamed_ids.get(block["id"], block["id"])}
            if block["type"] == "tool_use"
            else block
            for block in thinking
        )
    return dataclasses.replace(message, tool_calls=tuple(calls), thinking=thinking)


@dataclass(slots=True)
class CompressionRecord:
    """What one compression did (one entry of ``compression_history``)."""

    tokens_before: int
    """Window tokens before, the message that triggered the compression included."""
    tokens_after: int
    """Window tokens after, the summary included."""
    messages_before: int
    """Messages before, the triggering message included."""
    messages_after: int
    """Messages after, the summary included."""
    removed_count: int
    """Messages evicted (the previous summary, folded into the new one, is not counted)."""
    truncated_count: int
    """Messages kept as head + tail."""
    summary_tokens: int
    """Tokens of the new summary message (0 if there is none)."""
    duration_ms: float
    """Wall time of the compression, summarizer included."""
    timestamp: float
    """When the compression finished, seconds since the epoch."""
    strategy: str
    """``"extractive"``, ``"custom"`` or ``"custom_failed_fallback_extractive"``."""
    target_tokens: int
    """The size the compression aimed for."""
    error: str | None = None
    """Why a custom summarizer was not used (``"timeout after 10 s"``, the exception), else ``None``."""

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (the shape of ``EnhancedContextManager.compression_history``)."""
        return {
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "messages_before": self.messages_before,
            "messages_after": self.messages_after,
            "removed_count": self.removed_count,
            "truncated_count": self.truncated_count,
            "summary_tokens": self.summary_tokens,
            "duration_ms": self.duration_ms,
            "timestamp": self.timestamp,
            "strategy": self.strategy,
            "target_tokens": self.target_tokens,
            "error": self.error,
        }


class CompressionTrace(Protocol):
    """What :meth:`ContextWindow.set_compression_tracer` calls for one compression."""

    def summary_call(self) -> contextlib.AbstractContextManager[object]:
        """Entered while a summarizer call of this compression is started (the call runs in its context)."""
        ...

    def end(self, record: CompressionRecord | None, error: BaseException | None) -> None:
        """The compression ended: its record, else the exception that ended it.

        Both are ``None`` when there was nothing to compress.
        """
        ...


def _start_trace(tracer: Callable[[], CompressionTrace]) -> CompressionTrace | None:
    try:
        return tracer()
    except Exception as error:  # tracing must not fail the compression
        logger.warning("compression tracer failed (%s)", type(error).__name__)
        return None


def _end_trace(
    trace: CompressionTrace | None, record: CompressionRecord | None, error: BaseException | None
) -> None:
    if trace is None:
        return
    try:
        trace.end(record, error)
    except Exception as failure:  # tracing must not fail the compression it reports
        logger.warning("compression trace failed (%s)", type(failure).__name__)


@contextlib.contextmanager
def _summary_scope(trace: CompressionTrace) -> Iterator[None]:
    """``trace.summary_call()`` around the block; a failure of the trace's own is logged, not raised."""
    try:
        scope = trace.summary_call()
        scope.__enter__()
    except Exception as error:
        logger.warning("compression trace failed (%s)", type(error).__name__)
        yield
        return
    try:
        yield
    finally:
        try:
            scope.__exit__(None, None, None)
        except Exception as error:
            logger.warning("compression trace failed (%s)", type(error).__name__)


@dataclass(slots=True)
class _Outcome:
    text: str
    strategy: str
    error: str | None = None
    tokens: int = -1
    """The exact token count of ``text`` when the summarizer knows it, else -1."""


@dataclass(slots=True)
class _Compression:
    """A compression ready to commit: the plan, its cuts made, its summary written."""

    decision: EvictionDecision
    evicted: list[Message]
    """Evicted messages in conversation order."""
    cuts: list[tuple[Message, Message]]
    """(original, cut copy) of each message cut, in window order."""
    summary: Message | None
    outcome: _Outcome
    kept_tokens: int
    """Body tokens after (priming included, summary excluded)."""


class ContextWindow:
    """An ordered list of messages that never exceeds ``max_tokens`` (see the module docstring)."""

    def __init__(
        self,
        max_tokens: int = 2000,
        *,
        compression_ratio: float = 0.8,
        counter: TokenCounter | None = None,
        summarizer: Summarizer | None = None,
        summary_max_tokens: int = 200,
        summarizer_timeout: float = 10.0,
        enable_compression: bool = True,
        eviction_hook: EvictionHook | None = None,
    ) -> None:
        """Create an empty window.

        Args:
            max_tokens: Hard limit of the window, reply priming included.
            compression_ratio: A compression shrinks the window to ``max_tokens * compression_ratio``.
            counter: Token counter (default: the shared exact ``o200k_base`` counter).
            summarizer: Custom async summarizer; the deterministic :class:`ExtractiveSummarizer` when ``None``
                and as the fallback when the custom one fails or times out.
            summary_max_tokens: Upper bound of the rolling summary message's size.
            summarizer_timeout: Seconds a custom summarizer may take.
            enable_compression: When ``False`` a full window rejects adds with ``ContextBudgetError``.
            eviction_hook: Receives evicted messages (see :meth:`set_eviction_hook`).

        Raises:
            InvalidArgumentError: an argument is out of range.
        """
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or max_tokens <= REPLY_PRIMING_TOKENS
        ):
            raise InvalidArgumentError("max_tokens", max_tokens, f"an integer > {REPLY_PRIMING_TOKENS}")
        if not isinstance(compression_ratio, int | float) or not 0.0 < compression_ratio < 1.0:
            raise InvalidArgumentError("compression_ratio", compression_ratio, "a number > 0 and < 1")
        if (
            isinstance(summary_max_tokens, bool)
            or not isinstance(summary_max_tokens, int)
            or summary_max_tokens <= 0
        ):
            raise InvalidArgumentError("summary_max_tokens", summary_max_tokens, "an integer > 0")
        if not isinstance(summarizer_timeout, int | float) or not summarizer_timeout > 0:
            raise InvalidArgumentError("summarizer_timeout", summarizer_timeout, "a number of seconds > 0")
        if summarizer is not None and not callable(summarizer):
            raise InvalidArgumentError(
                "summarizer", summarizer, "an async callable (messages, budget) -> str"
            )
        if counter is not None:
            if not isinstance(counter, TokenCounter):
                raise InvalidArgumentError("counter", counter, "a TokenCounter (count, count_message)")
            check_counter(counter, "counter")
        # a user's counter gets the thinking blocks of Anthropic messages counted too (see counting_thinking)
        self._counter: TokenCounter = (
            counting_thinking(counter) if counter is not None else get_token_counter()
        )
        self._max_tokens = max_tokens
        self._compression_ratio = float(compression_ratio)
        self._extractive = ExtractiveSummarizer(self._counter)
        self._summarizer = summarizer
        self._summary_max_tokens = summary_max_tokens
        self._summarizer_timeout = float(summarizer_timeout)
        self.enable_compression = enable_compression
        """Whether a full window compresses (``True``) or rejects the add (``False``)."""
        self._messages: list[Message] = []  # in order, the summary included
        self._by_id: dict[str, Message] = {}  # the summary included
        self._index = UnitIndex()  # the units of every message but the summary
        self._summary: Message | None = None
        self._summary_tokens = 0
        self._summary_framing = -1  # what the summary message costs without its text (counted once)
        self._lock = asyncio.Lock()
        self._queued = 0  # adds waiting for the lock
        self._hook: EvictionHook | None = None
        self._journal: Journal | None = None
        # see compressed_from
        self._replaced: tuple[tuple[Message, ...], tuple[CompressionRecord, ...], int] | None = None
        self._overflow_check: OverflowCheck | None = None
        self._on_compression: Callable[[CompressionRecord], None] | None = None
        self._compression_tracer: Callable[[], CompressionTrace] | None = None
        self._trace: CompressionTrace | None = None  # the compression in progress (under the lock)
        self._evicted = EvictedQueue()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._summary_calls: set[asyncio.Future[Any]] = set()  # the summarizer calls in flight
        self._summaries_stopped = False  # drain(): compressions use the extractive summary from now on
        self.compression_history: list[CompressionRecord] = []
        """One record per compression, oldest first: the newest :data:`COMPRESSION_HISTORY_LIMIT`."""
        self._earlier_compressions = 0  # compressions before compression_history's first
        if eviction_hook is not None:
            self.set_eviction_hook(eviction_hook)

    # -- read-only views ------------------------------------------------------------------------------

    @property
    def max_tokens(self) -> int:
        """The hard limit of the window."""
        return self._max_tokens

    @property
    def target_tokens(self) -> int:
        """The size a compression aims for: ``int(max_tokens * compression_ratio)``."""
        return max(1, int(self._max_tokens * self._compression_ratio))

    @property
    def counter(self) -> TokenCounter:
        """The token counter of the window."""
        return self._counter

    @property
    def compression_count(self) -> int:
        """Compressions of this window, every one: :attr:`compression_history` lists the newest only."""
        return self._earlier_compressions + len(self.compression_history)

    @property
    def token_count(self) -> int:
        """Tokens the window costs in a prompt: every message plus the reply priming (0 when empty)."""
        if not self._messages:
            return 0
        return self._index.tokens + self._summary_tokens + REPLY_PRIMING_TOKENS

    @property
    def messages(self) -> tuple[Message, ...]:
        """The messages in order: a snapshot of immutable messages (the window's later changes don't show)."""
        return tuple(self._messages)

    @property
    def summary(self) -> Message | None:
        """The rolling summary message, if a compression wrote one."""
        return self._summary

    @property
    def pending_tool_calls(self) -> frozenset[str]:
        """Ids of tool calls in the window that have no result yet."""
        return frozenset(self._index.pending_calls)

    @property
    def pinned_count(self) -> int:
        """How many messages in the window are pinned."""
        return sum(1 for message in self._messages if message.pinned)

    @property
    def evicted_messages(self) -> tuple[Message, ...]:
        """Evicted messages no consumer (hook, the manager's memory writer) has stored yet, oldest first."""
        return tuple(self._evicted)

    @property
    def evicted_queue(self) -> EvictedQueue:
        """The queue of evicted messages waiting for a consumer (what a background writer drains)."""
        return self._evicted

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(tuple(self._messages))

    def get(self, message_id: str) -> Message:
        """Return the message with ``message_id``.

        Raises:
            InvalidArgumentError: ``message_id`` is not a string.
            NotFoundError: no message in the window has this id.
        """
        if not isinstance(message_id, str):  # an unhashable one (a list, a dict) would raise a bare TypeError
            raise InvalidArgumentError("message_id", message_id, "a message id (str)")
        message = self._by_id.get(message_id)
        if message is None:
            raise NotFoundError("message", message_id)
        return message

    # -- eviction hook --------------------------------------------------------------------------------

    def set_eviction_hook(self, hook: EvictionHook | None) -> None:
        """Send evicted messages to ``hook`` from now on (``None``: leave them in :attr:`evicted_messages`).

        The hook receives, after each compression, the list of evicted messages in conversation order,
        with the full original of any message the window kept as head + tail. It may be a plain function
        or a coroutine function; the add that triggered the compression calls it after releasing the
        window (so the hook may add messages to this window: they come after) and waits for it. If that
        add is cancelled, the hook still runs to the end (:meth:`flush` waits for it). If the hook raises,
        the messages stay in :attr:`evicted_messages` and a warning is logged. Until the hook returns, the
        messages it was given are in :attr:`evicted_messages` too.

        Raises:
            InvalidArgumentError: ``hook`` is not callable.
        """
        if hook is not None and not callable(hook):
            raise InvalidArgumentError("hook", hook, "a callable taking a list of messages, or None")
        self._hook = hook

    def take_evicted(self) -> list[Message]:
        """Return the evicted messages no consumer is handling and remove them (to store them yourself)."""
        return self._evicted.take_all()

    async def flush(self) -> None:
        """Wait for the eviction-hook deliveries still running (those of cancelled adds)."""
        await wait_for_all(self._deliveries)

    async def drain(self) -> None:
        """Let the operations in progress finish at once, for a shutdown; return when none holds the window.

        A summarizer call in flight is cancelled (its compression falls back to the extractive summary and
        commits, so what it evicts is queued like any evicted message), compressions from now on use the
        extractive summary, and this waits for the operations holding or waiting for the window, then for
        the eviction-hook deliveries. ``EnhancedContextManager.cleanup()`` calls it before writing the
        queued messages to memory: an add caught in a hanging summarizer neither delays the shutdown nor
        commits, after it, evictions nobody writes.
        """
        self._summaries_stopped = True
        for call in tuple(self._summary_calls):
            call.cancel()
        async with self._lock:
            pass
        await self.flush()

    def _start_delivery(self, tickets: Sequence[int]) -> asyncio.Task[None] | None:
        """Start handing ``tickets`` (claimed for us) to the hook in an owned task; None without a hook."""
        hook = self._hook
        if hook is None or not tickets:
            return None
        task = asyncio.get_running_loop().create_task(self._deliver(hook, tickets))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    async def _deliver(self, hook: EvictionHook, tickets: Sequence[int]) -> None:
        queue = self._evicted
        try:
            result = hook(queue.messages_of(tickets))
            if inspect.isawaitable(result):
                await result
        except Exception as error:  # the hook's failure must not lose messages or break the add
            queue.release(tickets)
            # the error's text may quote message content: only its type at WARNING (payloads at DEBUG only)
            kind = type(error).__name__
            logger.warning("eviction hook failed (%s); %d messages kept in process", kind, len(tickets))
            logger.debug("eviction hook failure: %s", error)
            return
        except BaseException:
            queue.release(tickets)
            raise
        queue.acknowledge(tickets)

    # -- persistence ----------------------------------------------------------------------------------

    def set_journal(self, journal: Journal | None) -> None:
        """Report every committed change to ``journal`` from now on (``None``: stop).

        The journal is called synchronously inside each commit point (an add, a compression, a pin), in
        commit order, with the change's kind and its JSON payload; it must not raise. A
        persisted conversation uses it to write the window's changes as append-only records.
        """
        if journal is not None and not callable(journal):
            raise InvalidArgumentError("journal", journal, "a callable (kind, payload) -> None, or None")
        self._journal = journal

    def set_overflow_check(self, check: OverflowCheck | None) -> None:
        """Await ``check()`` before each compression and each refusal for lack of room (``None``: stop).

        Called under the window's lock, before anything changes; what it raises, the add, ``extend`` or
        ``compress`` raises, the window unchanged. A persisted conversation uses it to learn that another
        writer changed the conversation before compressing (a summarizer call, evictions) or refusing a
        message on a window storage no longer holds.
        """
        if check is not None and not callable(check):
            raise InvalidArgumentError("check", check, "an async callable () -> None, or None")
        self._overflow_check = check

    def set_compression_observer(self, observer: Callable[[CompressionRecord], None] | None) -> None:
        """Call ``observer(record)`` after each compression, whatever made it (``None``: stop).

        Called synchronously when the compression is committed, inside the operation that triggered it
        (an add, ``extend``, ``compress``, a tool call's result); an exception it raises is logged and
        ignored. ``EnhancedContextManager`` reports compressions to OpenTelemetry through it.
        """
        if observer is not None and not callable(observer):
            raise InvalidArgumentError("observer", observer, "a callable taking a CompressionRecord, or None")
        self._on_compression = observer

    def set_compression_tracer(self, tracer: Callable[[], CompressionTrace] | None) -> None:
        """Trace each compression with ``tracer()``, a :class:`CompressionTrace` (``None``: stop).

        ``tracer()`` is called when a compression starts; the summarizer calls of that compression are
        started inside its :meth:`~CompressionTrace.summary_call` (they run in the context it sets: the
        spans a summarizer's instrumented client records nest under the compression's span), and its
        :meth:`~CompressionTrace.end` is called once when the compression ends, with its record or, when
        it ended without one, the exception (``None`` when there was nothing to compress). Exceptions the
        trace raises are logged and ignored. ``EnhancedContextManager`` reports compressions to
        OpenTelemetry through it.
        """
        if tracer is not None and not callable(tracer):
            raise InvalidArgumentError("tracer", tracer, "a callable returning a CompressionTrace, or None")
        self._compression_tracer = tracer

    @property
    def compressed_from(self) -> tuple[tuple[Message, ...], tuple[CompressionRecord, ...], int] | None:
        """While a journal receives a ``"compress"`` change: the window before it, else ``None``.

        The messages before the compression (the summary included), the ``compression_history`` entries
        and how many compressions came before them (``compression_count - len(history)``): what
        :meth:`rewind` needs to take the compression back (a journal that may have to, keeps it).
        """
        return self._replaced

    async def rewind(
        self, undo: Callable[[list[Message], list[CompressionRecord], int], int], *, over: bool = False
    ) -> None:
        """Take back changes: ``undo`` edits copies of the messages and history, which replace the window's.

        ``undo(messages, history, earlier)`` is given how many compressions came before the first entry
        of ``history`` and returns that count after its edits. It is called under the window's lock
        (after a compression in flight) with no await until the window is replaced, so the changes it
        takes back are every change committed so far. Like :meth:`restore`, nothing is journaled and
        evicted messages still queued stay queued. With ``over``, a window exceeding ``max_tokens`` is
        accepted (taking back the compression that fitted a restored window).

        Raises:
            InvalidArgumentError: what ``undo`` left is not a valid window (the window is unchanged).
        """
        async with self._lock:
            messages = list(self._messages)
            history = list(self.compression_history)
            earlier = undo(messages, history, self._earlier_compressions)
            self._install(messages, history, over=over)
            self._earlier_compressions = earlier

    async def _check_overflow(self) -> None:
        check = self._overflow_check
        if check is not None:
            await check()

    async def restore(
        self,
        messages: Sequence[Message],
        history: Sequence[CompressionRecord],
        *,
        fit: bool = False,
        earlier_compressions: int = 0,
        deliveries: list[asyncio.Task[None]] | None = None,
    ) -> CompressionRecord | None:
        """Replace the window's contents with ``messages`` (token counts set) and ``history``.

        Used to resume a persisted conversation: the messages are the replayed window, in order, the
        rolling summary (the message carrying the summary metadata key) included. Waits for a compression
        in flight. Evicted messages still queued for a consumer stay queued. Nothing is journaled, except
        the compression ``fit`` makes.

        Args:
            messages: The window's messages.
            history: Its compression history (the newest :data:`COMPRESSION_HISTORY_LIMIT` entries are
                kept, the others counted by :attr:`compression_count`).
            fit: When the messages exceed ``max_tokens``, compress them to :attr:`target_tokens` at once
                (as an add would: the compression is recorded and journaled) instead of refusing them,
                if compression is enabled.
            earlier_compressions: How many compressions came before the first of ``history`` (a
                resumed conversation keeps its newest entries only): counted by :attr:`compression_count`.
            deliveries: When given, the handing of what ``fit`` evicted to the eviction hook is appended
                to it instead of awaited (the caller finishes its own bookkeeping first, then waits for
                it: a cancellation during that wait leaves the window and the caller's state together).

        Returns:
            The compression ``fit`` made, else ``None``.

        Raises:
            InvalidArgumentError: the messages are not a valid window (duplicate ids, a message without
                its token count, a tool result without its call); ``max_tokens`` is too small for them
                (the error's field is ``"max_tokens"``) and ``fit`` is false, compression is disabled or
                the messages a compression keeps do not fit either (the window is unchanged).
        """
        if (
            isinstance(earlier_compressions, bool)
            or not isinstance(earlier_compressions, int)
            or earlier_compressions < 0
        ):
            raise InvalidArgumentError("earlier_compressions", earlier_compressions, "an integer >= 0")
        delivery: asyncio.Task[None] | None = None
        async with self._lock:
            # (_install replaces both lists: the ones held here stay as they are)
            previous_messages, previous_history = self._messages, self.compression_history
            previous_earlier = self._earlier_compressions
            dropped = max(0, len(history) - COMPRESSION_HISTORY_LIMIT)
            total = self._install(messages, history[dropped:], over=fit and self.enable_compression)
            self._earlier_compressions = earlier_compressions + dropped
            if total <= self._max_tokens:
                return None
            # over budget: installed unchecked; compress it now, or put the previous window back
            record: CompressionRecord | None = None
            try:
                record, delivery = await self._compress((), self.target_tokens)
            except ContextBudgetError:
                record = None
            finally:
                if record is None:
                    self._install(previous_messages, previous_history, over=True)
                    self._earlier_compressions = previous_earlier
            if record is None:
                raise self._too_small(total)
        if delivery is not None:
            if deliveries is not None:
                deliveries.append(delivery)
            else:
                await asyncio.shield(delivery)
        return record

    def _too_small(self, total: int) -> InvalidArgumentError:
        return InvalidArgumentError(
            "max_tokens", self._max_tokens, f"at least {total}: the messages restored hold {total} tokens"
        )

    def _install(
        self, messages: Sequence[Message], history: Sequence[CompressionRecord], *, over: bool = False
    ) -> int:
        """Check ``messages`` (see :meth:`restore`) and make them and ``history`` the window's.

        With ``over``, messages exceeding ``max_tokens`` are installed all the same. Returns their tokens.
        """
        summary: Message | None = None
        by_id: dict[str, Message] = {}
        for message in messages:
            if not isinstance(message, Message) or (
                message.token_count <= 0 and not self._counts_nothing(message)
            ):
                raise InvalidArgumentError("messages", message, "messages with their token counts set")
            if message.id in by_id:
                raise InvalidArgumentError("messages", message.id, "messages with distinct ids")
            by_id[message.id] = message
            if SUMMARY_METADATA_KEY in message.metadata:
                summary = message
        body = [message for message in messages if message is not summary]
        index = UnitIndex(body)
        results = {message.tool_call_id for message in body if message.role is Role.TOOL}
        calls = {call.id for message in body for call in message.tool_calls}
        if not results <= calls:
            orphan = min(results - calls, key=str)
            raise InvalidArgumentError("messages", orphan, "tool results whose calls are in the window")
        summary_tokens = summary.token_count if summary is not None else 0
        total = index.tokens + summary_tokens + (REPLY_PRIMING_TOKENS if messages else 0)
        if total > self._max_tokens and not over:
            raise self._too_small(total)
        self._messages = list(messages)
        self._by_id = by_id
        self._index = index
        self._summary = summary
        self._summary_tokens = summary_tokens
        self.compression_history = list(history)
        return total

    def _counts_nothing(self, message: Message) -> bool:
        """Whether a message with no token count is one the counter gives 0 tokens (so it is counted).

        A custom counter may give a message no tokens (one counting the text only, for a message that
        only calls tools); the window took it so, and a resumed conversation brings it back so.
        """
        return message.token_count == 0 and self._counter.count_message(message) == 0

    # -- pins -----------------------------------------------------------------------------------------

    def pin(self, message_id: str) -> None:
        """Pin a message so compression never evicts it (the window's copy is replaced by a pinned one).

        A compression already awaiting its summarizer plans again if it meant to evict or cut it.

        Raises:
            NotFoundError: no message in the window has this id.
            InvalidArgumentError: the id is not a string, or is the rolling summary's (each compression
                replaces it).
        """
        self._commit_pin(message_id, True)

    def unpin(self, message_id: str) -> None:
        """Unpin a message so compression may evict it again.

        Raises:
            NotFoundError: no message in the window has this id.
            InvalidArgumentError: the id is not a string, or is the rolling summary's.
        """
        self._commit_pin(message_id, False)

    def _commit_pin(self, message_id: str, pinned: bool) -> None:
        """Commit point: a pin changes (the only way ``pinned`` changes in the window)."""
        current = self.get(message_id)
        if current is self._summary:
            raise InvalidArgumentError(
                "message_id",
                message_id,
                "the id of a conversation message (the rolling summary is replaced "
                "by every compression, so it cannot be pinned)",
            )
        if current.pinned is pinned:
            return
        copy = dataclasses.replace(current, pinned=pinned)
        self._index.replace(current, copy)
        self._messages[self._position_of(current)] = copy
        self._by_id[message_id] = copy
        if self._journal is not None:
            self._journal("pin", {"id": message_id, "pinned": pinned})

    def _position_of(self, message: Message) -> int:
        """Index of ``message`` (this very object) in the list, searching from the newest end."""
        messages = self._messages
        for position in range(len(messages) - 1, -1, -1):
            if messages[position] is message:
                return position
        raise NotFoundError("message", message.id)  # pragma: no cover - callers pass window messages

    # -- adding ---------------------------------------------------------------------------------------

    def _check(self, message: Message) -> Message:
        """Check ``message`` against the window (nothing mutated; the count comes separately).

        Returns ``message``, or a copy with its call ids as the window holds them (see
        :meth:`resolve_tool_call_id`): a call reusing the id of an answered call is renamed ``id~n``, a
        result quoting the id of a call so renamed gets the new id.
        """
        self._check_identity(message)
        if message.role is Role.TOOL:
            pending = self._index.pending_calls
            call_id = message.tool_call_id
            if call_id not in pending:
                held = None if call_id is None else _renamed_from(call_id, pending)
                if held is None:
                    raise _no_call_error(call_id, pending, "in the window")
                return dataclasses.replace(message, tool_call_id=held)
        elif message.tool_calls:
            index = self._index
            if index.pending_calls or any(index.has_call(call.id) for call in message.tool_calls):
                return _reassign_calls(message, index.pending_calls, index.has_call)
        return message

    def resolve_tool_call_id(self, call_id: str) -> str | None:
        """The id under which the window holds the unanswered call a result quoting ``call_id`` answers.

        ``call_id`` when that call is unanswered; else the newest unanswered call the window renamed from
        it (``call_id~2``, ...: a server that numbers calls per response, ``call_0`` every turn, made
        ``call_id`` again once the earlier call had its result); else ``None``.
        """
        pending = self._index.pending_calls
        if call_id in pending:
            return call_id
        return _renamed_from(call_id, pending)

    def _check_identity(self, message: Message) -> None:
        """A Message, with an id new to the window and none of the window's own metadata keys."""
        if not isinstance(message, Message):
            raise InvalidArgumentError("message", message, "a Message (use Message.create)")
        if message.id in self._by_id:
            raise InvalidArgumentError("message.id", message.id, "an id not already in the window")
        # memory dates what is evicted: a hand-built message dated 1e20 would stall the eviction writer
        check_timestamp(message.timestamp, "message.timestamp")
        if message.metadata and not RESERVED_METADATA_KEYS.isdisjoint(message.metadata):
            key = min(RESERVED_METADATA_KEYS.intersection(message.metadata))
            raise InvalidMessageError(
                f"metadata.{key}",
                message.metadata[key],
                "no value: keys "
                + ", ".join(map(repr, sorted(RESERVED_METADATA_KEYS)))
                + " are set by the window on its own summary and cut messages",
            )

    def _commit_append(self, message: Message, tokens: int) -> None:
        """Commit point: ``message`` enters the window (a tool result right after its call's unit)."""
        held = message.token_count
        if held and held != tokens:  # another window's count: a copy (_own, inline)
            message = dataclasses.replace(message)
        _set(message, "token_count", tokens)
        messages = self._messages
        journal = self._journal
        if not message.tool_calls and message.role is not Role.TOOL:  # a unit of its own: O(1)
            self._index.add_plain(message)
            messages.append(message)
            self._by_id[message.id] = message
            if journal is not None:
                journal("add", {"message": message.to_dict()})
            return
        unit = self._index.add(message)
        if message.role is Role.TOOL and len(unit.messages) > 1:
            previous = unit.messages[-2]
            if messages[-1] is not previous:  # someone spoke while the tools ran: keep the pair together
                messages.insert(self._position_of(previous) + 1, message)
                self._by_id[message.id] = message
                if journal is not None:
                    journal("add", {"message": message.to_dict(), "after": previous.id})
                return
        messages.append(message)
        self._by_id[message.id] = message
        if journal is not None:
            journal("add", {"message": message.to_dict()})

    async def add(self, message: Message) -> CompressionRecord | None:
        """Append ``message``, compressing first if the window would exceed ``max_tokens``.

        A tool result goes right after its call's unit (after messages added while the tools ran, it is
        placed before them). The window takes the message as it is (messages are immutable), or a copy if
        another window with another counter counted it (each window caches its own count on its messages),
        or a copy with its call ids as the window holds them (a call made again as ``id~n``, a result
        quoting ``id`` answering it: see the module docstring).

        Returns:
            The record of the compression this add triggered, or ``None``.

        Raises:
            InvalidArgumentError: ``message`` is not a ``Message`` or its id is already in the window.
            InvalidMessageError: its metadata uses a key the window reserves for itself.
            ToolCallPairingError: a tool message answers no unanswered call, or a call reuses the id of a
                call still waiting for its result.
            ContextBudgetError: the message does not fit and compression is disabled, or protected
                messages cannot fit in ``max_tokens`` (with the newest cut as far as the counter allows).
        """
        tokens = self._append_if_fits(message)
        if tokens is None:
            return None
        if tokens < 0:  # behind a compression in flight, or counted in a thread
            return await self._add_queued(message)
        return await self._add_counted(message, tokens)

    def _append_if_fits(self, message: Message) -> int | None:
        """The synchronous part of :meth:`add`: check, count, and commit if no compression is needed.

        Returns:
            ``None`` once the message is in the window; else its count, for :meth:`_add_counted`; or
            ``-1`` (not checked or not counted yet) when it must go through :meth:`_add_queued`: a
            compression is in flight (queue behind it, in order) or the text is counted in a thread.

        Raises:
            The errors of :meth:`add`'s checks; nothing is changed.
        """
        if self._lock.locked() or self._queued:
            return -1
        if (
            type(message) is Message
            and not message.metadata
            and not message.tool_calls
            and message.role is not _TOOL
            and type(timestamp := message.timestamp) is float
            and _EARLIEST <= timestamp <= _LATEST
        ):
            # the hot path: a plain message with a time a date can be computed for has nothing to check
            # but its id
            if message.id in self._by_id:
                raise InvalidArgumentError("message.id", message.id, "an id not already in the window")
        elif self._check(message) is not message:  # call ids reassigned: added from a copy, under the lock
            return -1
        if len(message.content) > OFF_LOOP_CHARS or (  # counted in a thread, under the lock (keeps the order)
            _counts_beyond_content(message) and _counted_chars(message) > OFF_LOOP_CHARS
        ):
            return -1
        tokens = self._counter.count_message(message)
        if self._index.tokens + self._summary_tokens + tokens + REPLY_PRIMING_TOKENS <= self._max_tokens:
            self._commit_append(message, tokens)  # O(1), no await before the commit
            return None
        return tokens

    async def _add_counted(self, message: Message, tokens: int) -> CompressionRecord | None:
        """The rest of :meth:`add` for a checked, counted message that needs a compression."""
        async with self._lock:
            record, delivery = await self._add_locked(message, tokens)
        if delivery is not None:
            await asyncio.shield(delivery)
        return record

    async def extend(self, messages: Sequence[Message]) -> CompressionRecord | None:
        """Add several messages in order, compressing at most once: a conversation history, say.

        All or nothing: the batch is checked as a whole (each message as :meth:`add` would check it,
        tool results against the calls before them, in the window or the batch) before anything changes.
        When the batch does not fit, one compression plans over the window and the batch together, so a
        200k-token history costs its counting and one plan, not a compression every few messages;
        messages of the batch that do not stay go straight to :attr:`evicted_messages` like any evicted one.

        Returns:
            The record of the compression, or ``None`` if everything fit.

        Raises:
            InvalidArgumentError, InvalidMessageError, ToolCallPairingError: a message of the batch is
                invalid (as for :meth:`add`); nothing is added.
            ContextBudgetError: the batch does not fit and compression is disabled, or protected messages
                cannot fit in ``max_tokens`` (with the newest cut as far as the counter allows); nothing
                is added.
        """
        if isinstance(messages, Message | str) or not isinstance(messages, Sequence):
            raise InvalidArgumentError("messages", messages, "a list of Message objects")
        batch = list(messages)
        if not batch:
            return None
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            batch = self._check_batch(batch)
            chars = sum(len(message.content) for message in batch)
            if chars <= OFF_LOOP_CHARS:  # thinking and call arguments are counted too (a loop over few)
                chars += sum(_counted_chars(m, content=False) for m in batch if _counts_beyond_content(m))
            if chars > OFF_LOOP_CHARS:
                counts = await asyncio.to_thread(lambda: [self._counter.count_message(m) for m in batch])
            else:
                counts = [self._counter.count_message(message) for message in batch]
            if self._batch_fits(counts, refuse=False):
                for message, tokens in zip(batch, counts, strict=True):
                    self._commit_append(message, tokens)
                return None
            await self._check_overflow()
            self._batch_fits(counts)  # raises when compression is disabled
            owned = [_own(message, tokens) for message, tokens in zip(batch, counts, strict=True)]
            record, delivery = await self._compress(owned, self.target_tokens)
        finally:
            self._lock.release()
        if delivery is not None:
            await asyncio.shield(delivery)
        return record

    def check_fits(self, messages: Sequence[Message]) -> None:
        """Raise if ``messages``, added now in order, could not fit even after a compression; change nothing.

        The budget decision :meth:`extend` would make, without adding anything or calling the summarizer: a
        caller about to do something it cannot undo (run tools) checks first that what it will have to add
        has room. The messages are checked as :meth:`extend` checks them and are not changed (they are
        counted on copies). It reads the window as it is now: messages added later can take the room.
        Costs a count of ``messages``, and when they do not fit as they are, one plan over the window (and
        with a counter of your own, the cuts the plan makes).

        Raises:
            InvalidArgumentError, InvalidMessageError, ToolCallPairingError: as for :meth:`extend`.
            ContextBudgetError: the messages do not fit and compression is disabled, or protected messages
                plus these cannot fit in ``max_tokens`` (with the newest cut as far as the counter allows).
        """
        if isinstance(messages, Message | str) or not isinstance(messages, Sequence):
            raise InvalidArgumentError("messages", messages, "a list of Message objects")
        batch = list(messages)
        if not batch:
            return
        copies = [dataclasses.replace(message) for message in self._check_batch(batch)]
        for copy in copies:
            _set(copy, "token_count", self._counter.count_message(copy))
        if self._batch_fits([copy.token_count for copy in copies]):
            return
        # planned as extend() plans it: one message as the extra on the window's own index (a tool result
        # keeps the unit it joins), a batch staged on a new index
        index, extra = (self._index, copies[0]) if len(copies) == 1 else (self._stage(copies)[0], None)
        decision = decide_eviction(  # raises ContextBudgetError as the compression of extend() would
            index,
            extra,
            target_tokens=self.target_tokens,
            max_tokens=self._max_tokens,
            counter=self._counter,
            summary_max_tokens=self._summary_max_tokens,
        )
        if decision.cuts and type(self._counter) is not ExactTokenCounter:
            # a counter of your own may count a cut copy above its room: cut as the compression would (the
            # built-in counter counts framing and text apart, so its cuts always fit)
            replacements = cut_messages(decision.cuts, self._counter, decision.latest_request)
            kept = decision.total - _saved_by_cuts(decision.cuts, replacements)
            if kept > self._max_tokens:
                raise _cuts_too_large(kept, self._max_tokens, "max_tokens")

    def _batch_fits(self, counts: list[int], *, refuse: bool = True) -> bool:
        """Whether messages of ``counts`` tokens fit as they are; if not and compression is off, raise.

        Raises:
            ContextBudgetError: they do not fit and compression is disabled (unless ``refuse`` is False).
        """
        total = self._index.tokens + self._summary_tokens + sum(counts) + REPLY_PRIMING_TOKENS
        if total <= self._max_tokens:
            return True
        if refuse and not self.enable_compression:
            raise ContextBudgetError(
                f"max_tokens: got {self._max_tokens}; allowed at least {total} to add these "
                f"{len(counts)} messages; compression is disabled, so none was added",
                required_tokens=total,
                max_tokens=self._max_tokens,
            )
        return False

    def _check_batch(self, batch: list[Message]) -> list[Message]:
        """Check a batch as consecutive adds would (nothing mutated); the batch as the window would hold it.

        Call ids are reassigned as :meth:`_check` does, against the window and the batch before each message.
        """
        index = self._index
        pending = dict(index.pending_calls)  # in order: a result answers the newest renamed call
        ids: set[str] = set()
        calls: set[str] = set()  # ids of the calls made in the batch, as the window will hold them

        def taken(call_id: str) -> bool:
            return call_id in calls or index.has_call(call_id)

        checked: list[Message] = []
        for position, message in enumerate(batch):
            if not isinstance(message, Message):
                raise InvalidArgumentError(f"messages[{position}]", message, "a Message (use Message.create)")
            try:  # an error names the message of the batch it is about
                if message.id in ids:
                    raise InvalidArgumentError("message.id", message.id, "ids that differ within the batch")
                ids.add(message.id)
                if message.role is Role.TOOL:
                    call_id = message.tool_call_id
                    if call_id not in pending:
                        held = None if call_id is None else _renamed_from(call_id, pending)
                        if held is None:
                            raise _no_call_error(call_id, pending, "in the window or earlier in the batch")
                        call_id = held
                    self._check_identity(message)
                    if call_id != message.tool_call_id:
                        message = dataclasses.replace(message, tool_call_id=call_id)
                    del pending[call_id]
                else:
                    self._check_identity(message)
                    if message.tool_calls:
                        message = _reassign_calls(message, pending, taken)
                        for call in message.tool_calls:
                            calls.add(call.id)
                            pending[call.id] = message.id
            except InvalidArgumentError as error:
                raise in_item(error, f"messages[{position}]") from None
            checked.append(message)
        return checked

    async def _add_queued(self, message: Message) -> CompressionRecord | None:
        # Counted while waiting, so an add arriving after the lock is released (but before the waiters
        # have run) does not overtake them through the lock-free hot path.
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            record, delivery = await self._add_locked(message)
        finally:
            self._lock.release()
        if delivery is not None:
            await asyncio.shield(delivery)
        return record

    async def _count(self, message: Message) -> int:
        if _counted_chars(message) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(self._counter.count_message, message)
        return self._counter.count_message(message)

    async def _add_locked(
        self, message: Message, tokens: int | None = None
    ) -> tuple[CompressionRecord | None, asyncio.Task[None] | None]:
        if tokens is None:
            message = self._check(message)
            tokens = await self._count(message)  # the lock is held: nothing the check read can change
        total = self._index.tokens + self._summary_tokens + tokens + REPLY_PRIMING_TOKENS
        if total <= self._max_tokens:
            self._commit_append(message, tokens)
            return None, None
        await self._check_overflow()
        if not self.enable_compression:
            raise ContextBudgetError(
                f"max_tokens: got {self._max_tokens}; allowed at least {total} to add this message "
                f"({tokens} tokens to a window of {self.token_count}); compression is disabled, "
                "so the message was not added",
                required_tokens=total,
                max_tokens=self._max_tokens,
            )
        return await self._compress((_own(message, tokens),), self.target_tokens)

    async def compress(self, target_tokens: int | None = None) -> CompressionRecord | None:
        """Compress now to ``target_tokens`` (default :attr:`target_tokens`); ``None`` if nothing to do.

        Nothing to do: the window is already below the target, or the plan would take nothing (no unit
        evicted, no message cut, the rolling summary within its room); the summarizer is not called then.
        When the messages a compression must keep exceed the target, even cut, it aims at ``max_tokens``
        instead (see :mod:`~context_manager.core.compression.planning`): such a target can take less than
        a larger one the window can reach.

        Raises:
            InvalidArgumentError: ``target_tokens`` is not a positive integer.
            ContextBudgetError: protected messages cannot fit in ``max_tokens`` (with the newest cut as far
                as the counter allows).
        """
        if target_tokens is None:
            target_tokens = self.target_tokens
        if isinstance(target_tokens, bool) or not isinstance(target_tokens, int) or target_tokens <= 0:
            raise InvalidArgumentError("target_tokens", target_tokens, "a positive integer")
        async with self._lock:
            if self.token_count <= target_tokens:
                return None
            await self._check_overflow()
            record, delivery = await self._compress((), min(target_tokens, self._max_tokens))
        if delivery is not None:
            await asyncio.shield(delivery)
        return record

    # -- compressing ----------------------------------------------------------------------------------

    async def _compress(
        self, added: Sequence[Message], target: int
    ) -> tuple[CompressionRecord | None, asyncio.Task[None] | None]:
        """Plan, cut, summarize, then commit at once; ``added`` are the messages being added (maybe none).

        One message is planned as an extra on the window's own index (O(evicted)); a batch is staged on
        a new index of the window plus the batch (O(window + batch), once for the whole batch). With
        nothing added and nothing the plan would take (see :meth:`_prepare`), returns ``(None, None)``.
        """
        tracer = self._compression_tracer
        if tracer is None:
            return await self._compress_body(added, target)
        trace = self._trace = _start_trace(tracer)
        try:
            record, delivery = await self._compress_body(added, target)
        except BaseException as error:
            _end_trace(trace, None, error)
            raise
        finally:
            self._trace = None
        _end_trace(trace, record, None)
        return record, delivery

    async def _compress_body(
        self, added: Sequence[Message], target: int
    ) -> tuple[CompressionRecord | None, asyncio.Task[None] | None]:
        started = time.perf_counter()
        added_tokens = sum(message.token_count for message in added)
        tokens_before = self._index.tokens + self._summary_tokens + added_tokens + REPLY_PRIMING_TOKENS
        messages_before = len(self._messages) + len(added)
        while True:
            staged = self._stage(added) if len(added) > 1 else None
            index = self._index if staged is None else staged[0]
            extra = added[0] if len(added) == 1 else None
            # raises ContextBudgetError before a change
            prepared = await self._prepare(index, extra, target, idle=not added)
            if prepared is None:
                return None, None
            if self._still_current(prepared, staged):
                break
            # a pin replaced a message this plan evicts, cuts or keeps while the summarizer ran: plan again
            logger.debug("a pin changed during a compression; planning again")
        tickets = self._commit_compression(
            prepared,
            extra=extra,
            staged=staged,
            started=started,
            tokens_before=tokens_before,
            messages_before=messages_before,
            target=target,
        )
        record = self.compression_history[-1]
        logger.debug(
            "compressed %d -> %d tokens (%d evicted, %d truncated, %s)",
            record.tokens_before,
            record.tokens_after,
            record.removed_count,
            record.truncated_count,
            record.strategy,
        )
        return record, self._start_delivery(tickets)

    def _stage(self, batch: Sequence[Message]) -> tuple[UnitIndex, list[Message]]:
        """A new index and message list: the window's, with ``batch`` added as single adds would place it."""
        messages = list(self._messages)
        index = UnitIndex(message for message in messages if message is not self._summary)
        for message in batch:
            unit = index.add(message)
            if message.role is Role.TOOL and len(unit.messages) > 1 and messages[-1] is not unit.messages[-2]:
                previous = unit.messages[-2]
                position = next(i for i in range(len(messages) - 1, -1, -1) if messages[i] is previous)
                messages.insert(position + 1, message)
            else:
                messages.append(message)
        return index, messages

    async def _prepare(
        self, index: UnitIndex, extra: Message | None, target: int, *, idle: bool = False
    ) -> _Compression | None:
        """Plan a compression, make its cuts and write its summary (nothing committed).

        With ``idle`` (nothing being added: an explicit :meth:`compress`), ``None`` when the plan takes
        nothing: no unit evicted, no message cut, and the rolling summary, if any, within its room. The
        summarizer is not called then (it would only rewrite its own summary).
        """
        decision = decide_eviction(
            index,
            extra,
            target_tokens=target,
            max_tokens=self._max_tokens,
            counter=self._counter,
            summary_max_tokens=self._summary_max_tokens,
        )
        units = sorted(decision.evicted_units, key=lambda unit: unit.seq)
        evicted = [message for unit in units for message in unit.messages]
        cuts = decision.cuts
        if any(len(message.content) > OFF_LOOP_CHARS for message, _ in cuts):
            replacements = await asyncio.to_thread(cut_messages, cuts, self._counter, decision.latest_request)
        else:
            replacements = cut_messages(cuts, self._counter, decision.latest_request)
        pairs = [(original, replacements[original.id]) for original, _ in cuts if original.id in replacements]
        kept_tokens = decision.total - sum(
            original.token_count - copy.token_count for original, copy in pairs
        )
        if kept_tokens > self._max_tokens:  # the cuts came out larger than planned: refuse, nothing changed
            raise _cuts_too_large(kept_tokens, self._max_tokens, "max_tokens")
        previous = self._summary
        budget = 0
        if evicted or previous is not None:
            budget = min(self._summary_max_tokens, decision.goal - kept_tokens)
            if budget < MIN_SUMMARY_TOKENS:
                budget = 0
        if idle and not evicted and not pairs and (previous is None or previous.token_count <= budget > 0):
            return None
        request = decision.latest_request
        request_is_cut = request is not None and (
            request.id in replacements or TRUNCATED_METADATA_KEY in request.metadata
        )
        inputs = evicted if previous is None else [previous, *evicted]
        summary, outcome = await self._make_summary(
            inputs, budget, len(evicted), previous, request, request_is_cut
        )
        return _Compression(decision, evicted, pairs, summary, outcome, kept_tokens)

    def _still_current(
        self, prepared: _Compression, staged: tuple[UnitIndex, list[Message]] | None = None
    ) -> bool:
        """False if a pin replaced a message the plan uses while it waited for the summarizer."""
        by_id = self._by_id  # (messages being added are in the window's map not yet: they count as current)
        if staged is not None and not all(by_id.get(m.id, m) is m for m in staged[1]):
            return False
        return all(by_id.get(m.id, m) is m for m in prepared.evicted) and all(
            by_id.get(original.id, original) is original for original, _ in prepared.cuts
        )

    def _commit_compression(
        self,
        prepared: _Compression,
        *,
        extra: Message | None,
        staged: tuple[UnitIndex, list[Message]] | None,
        started: float,
        tokens_before: int,
        messages_before: int,
        target: int,
    ) -> Sequence[int]:
        """Commit point: apply a compression (plan, cuts, summary) and queue what it evicted; no await.

        The messages being added enter first (``extra``: one, on the window's index; ``staged``: a batch,
        on the index and list :meth:`_stage` built) and are evicted or cut like any other. Returns the queue
        tickets of the handed-over messages (claimed for the hook when one is set).
        """
        by_id = self._by_id
        before = self._messages  # replaced below, never changed in place
        added: list[Message] = []
        if staged is not None:
            index, source = staged
            self._index = index
            added = [m for m in source if m.id not in by_id]
        else:
            index, source = self._index, self._messages
            if extra is not None:
                index.add(extra)
                source = self._with(extra)
                added = [extra]
        index.remove(prepared.decision.evicted_units)
        replacements: dict[str, Message] = {}
        for original, copy in prepared.cuts:
            index.replace(original, copy)
            replacements[original.id] = copy
        gone = {message.id for message in prepared.evicted}
        previous = self._summary
        if previous is not None:
            gone.add(previous.id)
        if replacements:
            kept = [replacements.get(m.id, m) for m in source if m.id not in gone]
        else:
            kept = [m for m in source if m.id not in gone]
        for message_id in gone:
            by_id.pop(message_id, None)
        for message in added:
            if message.id not in gone:
                by_id[message.id] = message
        for message_id, copy in replacements.items():
            by_id[message_id] = copy
        summary = prepared.summary
        if summary is not None:
            position = 0  # after the leading system messages
            while position < len(kept) and kept[position].role is Role.SYSTEM:
                position += 1
            kept.insert(position, summary)
            by_id[summary.id] = summary
        self._messages = kept
        self._summary = summary
        self._summary_tokens = summary.token_count if summary is not None else 0
        record = CompressionRecord(
            tokens_before=tokens_before,
            tokens_after=self.token_count,
            messages_before=messages_before,
            messages_after=len(kept),
            removed_count=len(prepared.evicted),
            truncated_count=len(prepared.cuts),
            summary_tokens=self._summary_tokens,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            timestamp=time.time(),
            strategy=prepared.outcome.strategy,
            target_tokens=target,
            error=prepared.outcome.error,
        )
        journal = self._journal
        history = self.compression_history
        if journal is not None:
            self._replaced = (tuple(before), tuple(history), self._earlier_compressions)
        history.append(record)
        excess = len(history) - COMPRESSION_HISTORY_LIMIT
        if excess > 0:  # the oldest record leaves (compression_count still counts it)
            del history[:excess]
            self._earlier_compressions += excess
        if journal is not None:
            for message in added:  # the order of the window after this record is the "kept" list
                journal("add", {"message": message.to_dict()})
            created = [] if summary is None else [summary]
            created.extend(copy for _, copy in prepared.cuts)
            evicted_ids = [message.id for message in prepared.evicted]
            history_entry = record.to_dict()
            journal(
                "compress",
                {
                    "kept": [message.id for message in kept],
                    "new": [message.to_dict() for message in created],
                    "evicted": evicted_ids,
                    "record": history_entry,
                },
            )
            self._replaced = None
        observer = self._on_compression
        if observer is not None:
            try:
                observer(record)
            except Exception as error:  # an observer must not fail the compression it reports
                logger.warning("compression observer failed (%s)", type(error).__name__)
        # Hand over what left: evicted messages and the full text of the ones cut now, except copies the
        # window cut earlier (their original went when they were cut).
        handed = [m for m in prepared.evicted if TRUNCATED_METADATA_KEY not in m.metadata]
        handed.extend(o for o, _ in prepared.cuts if TRUNCATED_METADATA_KEY not in o.metadata)
        return self._evicted.put(handed, claim=self._hook is not None)

    def _with(self, extra: Message) -> list[Message]:
        """The message list with ``extra`` where :meth:`_commit_append` would put it."""
        messages = [*self._messages, extra]
        if extra.role is Role.TOOL:
            unit = self._index.unit_of(extra.id)
            if unit is not None and len(unit.messages) > 1 and self._messages[-1] is not unit.messages[-2]:
                messages.pop()
                messages.insert(self._position_of(unit.messages[-2]) + 1, extra)
        return messages

    async def _make_summary(
        self,
        inputs: Sequence[Message],
        budget: int,
        evicted_count: int,
        previous: Message | None,
        latest_request: Message | None,
        request_is_cut: bool,
    ) -> tuple[Message | None, _Outcome]:
        strategy = STRATEGY_CUSTOM if self._summarizer is not None else STRATEGY_EXTRACTIVE
        if budget <= 0:
            return None, _Outcome("", strategy)
        framing = self._summary_framing
        if framing < 0:  # what an empty system message costs: once per window
            framing = self._counter.count_message(Message(role=Role.SYSTEM, content=""))
            self._summary_framing = framing
        text_budget = budget - framing
        if text_budget <= 0:
            return None, _Outcome("", strategy)
        outcome = await self._run_summarizer(
            inputs, text_budget, latest_request=latest_request, request_is_cut=request_is_cut
        )
        text = outcome.text.strip()
        if not text:
            return None, outcome
        text_tokens = outcome.tokens if text == outcome.text else -1
        if text_tokens < 0:
            text_tokens = self._counter.count(text)
        if text_tokens > text_budget:
            text = truncate_to_tokens(self._counter, text, text_budget)
            text_tokens = self._counter.count(text)
        covered = evicted_count
        if previous is not None:
            earlier = previous.metadata.get(SUMMARY_METADATA_KEY)
            covered += earlier if isinstance(earlier, int) else 0
        summary = Message(role=Role.SYSTEM, content=text, metadata={SUMMARY_METADATA_KEY: covered})
        if type(self._counter) is ExactTokenCounter:  # framing + the content's count, known above
            _set(summary, "token_count", framing + text_tokens)
        else:
            _set(summary, "token_count", self._counter.count_message(summary))
        while summary.token_count > budget and summary.content:  # seams; rare
            shorter = truncate_to_tokens(
                self._counter, summary.content, self._counter.count(summary.content) - 1
            )
            summary = dataclasses.replace(summary, content=shorter)
            _set(summary, "token_count", self._counter.count_message(summary))
        if not summary.content:
            return None, outcome
        return summary, outcome

    async def _run_summarizer(
        self,
        inputs: Sequence[Message],
        budget: int,
        *,
        latest_request: Message | None = None,
        request_is_cut: bool = False,
    ) -> _Outcome:
        def extractive() -> str:
            return self._extractive.summarize(
                inputs, budget, latest_request=latest_request, request_is_cut=request_is_cut
            )

        summarizer = self._summarizer
        if summarizer is None:
            text, tokens = self._extractive.summarize_counted(
                inputs, budget, latest_request=latest_request, request_is_cut=request_is_cut
            )
            return _Outcome(text, STRATEGY_EXTRACTIVE, tokens=tokens)
        if self._summaries_stopped:
            return _Outcome(extractive(), STRATEGY_FALLBACK, "skipped: the window is draining (shutdown)")
        try:
            async with asyncio.timeout(self._summarizer_timeout) as deadline:
                # a task of its own, so drain() can cancel the call without cancelling this operation; it
                # sees the deadline, to tell its timeout from a caller giving up (summary_call_abandoned)
                entered = summary_call_deadline.set(deadline)
                try:
                    call = self._start_summary_call(summarizer, inputs, budget)
                finally:
                    summary_call_deadline.reset(entered)
                self._summary_calls.add(call)
                try:
                    text = await call
                finally:
                    self._summary_calls.discard(call)
            # a lone surrogate or a NUL would fail the count (or the storage) outside this try: a failure
            return _Outcome(check_summary_text(text), STRATEGY_CUSTOM)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this operation itself is cancelled
            error = kind = "cancelled: the window is draining (shutdown)"  # drain() cancelled the call
        except TimeoutError:
            error = kind = f"timeout after {self._summarizer_timeout:g} s"
        except SummarizerUnavailableError as exception:  # circuit open: skipped on purpose, not a failure
            error = f"{type(exception).__name__}: {exception}"[:300]
            logger.debug("custom summarizer skipped: %s", error)
            return _Outcome(extractive(), STRATEGY_FALLBACK, error)
        except Exception as exception:  # any failure of user code falls back to the extractive summary
            error = f"{type(exception).__name__}: {exception}"[:300]
            kind = type(exception).__name__
        # the error's text may quote the conversation: only its type at WARNING (payloads at DEBUG only)
        logger.warning("custom summarizer failed (%s); using the extractive summary", kind)
        logger.debug("custom summarizer failure: %s", error)
        return _Outcome(extractive(), STRATEGY_FALLBACK, error)

    def _start_summary_call(
        self, summarizer: Summarizer, inputs: Sequence[Message], budget: int
    ) -> asyncio.Future[str]:
        """The summarizer's call as a task, started in the context of the compression's trace if any.

        The task copies the context it is created in: its spans (and those of a thread it hands work to,
        ``asyncio.to_thread`` copies it again) have the compression's span for parent.
        """
        trace = self._trace
        if trace is None:
            return asyncio.ensure_future(summarizer(list(inputs), budget))
        with _summary_scope(trace):
            return asyncio.ensure_future(summarizer(list(inputs), budget))

    # -- budgeted views -------------------------------------------------------------------------------

    def select(self, budget: int | None = None) -> list[Message]:
        """Return the messages to send within ``budget`` tokens, without changing the window.

        With no budget (or one the window fits in) this is every message. Otherwise the same rules as a
        compression choose what to leave out (whole units, lowest priority and oldest first; the newest
        messages cut to head + tail in proportion if needed), making room for the rolling summary as a
        compression does (it stands for the oldest turns); it is left out only when what must stay (system,
        pinned and critical messages, the newest turn and request, cut as far as allowed) leaves no room.

        Raises:
            InvalidArgumentError: ``budget`` is not a positive integer.
            ContextBudgetError: protected messages alone exceed ``budget``, or with the newest messages
                cut as far as the counter allows.
        """
        if budget is None:
            return list(self._messages)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidArgumentError("budget", budget, "a positive integer or None")
        if budget >= self.token_count:
            return list(self._messages)
        summary = self._summary
        # the summary stands for the oldest turns: older messages make room for it (aiming at the budget
        # less the summary), unless what must stay leaves it none (the plan aims at the budget then)
        target = budget - (summary.token_count if summary is not None else 0)
        try:
            decision = decide_eviction(
                self._index,
                None,
                target_tokens=max(target, 1),
                max_tokens=budget,
                counter=self._counter,
                allow_summary=False,
            )
        except ContextBudgetError as error:
            raise ContextBudgetError(
                f"budget: got {budget}; allowed at least {error.required_tokens}: system, pinned and "
                "critical messages plus the newest messages cut as far as allowed do not fit",
                required_tokens=error.required_tokens,
                max_tokens=budget,
            ) from None
        replacements = cut_messages(decision.cuts, self._counter, decision.latest_request)
        saved = _saved_by_cuts(decision.cuts, replacements)
        if decision.total - saved > budget:  # the cuts came out larger than planned
            raise _cuts_too_large(decision.total - saved, budget, "budget")
        gone = {message.id for unit in decision.evicted_units for message in unit.messages}
        if summary is not None:
            gone.add(summary.id)
        kept = [replacements.get(m.id, m) for m in self._messages if m.id not in gone]
        if summary is not None and decision.total - saved + summary.token_count <= budget:
            position = 0
            while position < len(kept) and kept[position].role is Role.SYSTEM:
                position += 1
            kept.insert(position, summary)
        return kept
