"""The context window: the message list, its running token total and the budget invariants.

:class:`ContextWindow` keeps every message counted once (the count is cached on the message) and a running
total, so adding a message is O(1). When an add would exceed ``max_tokens`` the window compresses itself to
``max_tokens * compression_ratio`` (the gap between the two is hysteresis: compressions are rare and the
exported prefix stays byte-identical between them, so provider prompt caches keep hitting):

* system, pinned and critical messages, the latest user message and the newest unit are kept;
* whole units (an assistant tool call with all its results, or one message) are evicted, lowest priority
  first and oldest first within a priority;
* one rolling summary message replaces what was evicted (a later compression folds it in again);
* a message larger than the budget on its own is kept as head + tail with a visible marker.

Evicted messages (and the full text of truncated ones) go to the eviction hook
(:meth:`ContextWindow.set_eviction_hook`); until one is set they are kept in
:attr:`ContextWindow.evicted_messages` so nothing is lost. After every public call the window holds
at most ``max_tokens`` tokens, every tool result has its call, and a rejected call leaves everything as
it was.

Example:
    >>> window = ContextWindow(max_tokens=1000)
    >>> await window.add(Message.create("user", "Hello!"))
    >>> window.token_count
    11
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from context_manager.core.compression import (
    SUMMARY_METADATA_KEY,
    TRUNCATED_METADATA_KEY,
    CompressionPlan,
    ExtractiveSummarizer,
    Summarizer,
    is_summary,
    plan_compression,
)
from context_manager.core.errors import (
    ContextBudgetError,
    InvalidArgumentError,
    NotFoundError,
    SummarizerError,
    SummarizerUnavailableError,
    ToolCallPairingError,
)
from context_manager.core.messages import Message, Role
from context_manager.core.tokens import (
    REPLY_PRIMING_TOKENS,
    TokenCounter,
    get_token_counter,
    truncate_to_tokens,
)

__all__ = ["CompressionRecord", "ContextWindow", "EvictionHook"]

logger = logging.getLogger(__name__)

EvictionHook = Callable[[list[Message]], Awaitable[None] | None]
"""A callback receiving the messages a compression removed (full text of truncated ones); sync or async."""

STRATEGY_EXTRACTIVE = "extractive"
STRATEGY_CUSTOM = "custom"
STRATEGY_FALLBACK = "custom_failed_fallback_extractive"


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


@dataclass(slots=True)
class _Outcome:
    text: str
    strategy: str
    error: str | None = None


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
        self._counter: TokenCounter = counter if counter is not None else get_token_counter()
        self._max_tokens = max_tokens
        self._compression_ratio = float(compression_ratio)
        self._extractive = ExtractiveSummarizer(self._counter)
        self._summarizer = summarizer
        self._summary_max_tokens = summary_max_tokens
        self._summarizer_timeout = float(summarizer_timeout)
        self.enable_compression = enable_compression
        """Whether a full window compresses (``True``) or rejects the add (``False``)."""
        self._messages: list[Message] = []
        self._by_id: dict[str, Message] = {}
        self._tokens = 0  # sum of the messages' token counts; the priming is added by token_count
        self._pending_calls: dict[str, str] = {}  # unanswered tool call id -> id of the assistant message
        self._call_ids: set[str] = set()  # every tool call id present in the window
        self._lock = asyncio.Lock()
        self._queued = 0  # adds waiting for the lock
        self._hook: EvictionHook | None = None
        self._archive: list[Message] = []
        self.compression_history: list[CompressionRecord] = []
        """One record per compression, oldest first."""
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
    def token_count(self) -> int:
        """Tokens the window costs in a prompt: every message plus the reply priming (0 when empty)."""
        return self._tokens + REPLY_PRIMING_TOKENS if self._messages else 0

    @property
    def messages(self) -> tuple[Message, ...]:
        """The messages in order (a snapshot)."""
        return tuple(self._messages)

    @property
    def summary(self) -> Message | None:
        """The rolling summary message, if a compression wrote one."""
        for message in self._messages:
            if is_summary(message):
                return message
        return None

    @property
    def pending_tool_calls(self) -> frozenset[str]:
        """Ids of tool calls in the window that have no result yet."""
        return frozenset(self._pending_calls)

    @property
    def evicted_messages(self) -> tuple[Message, ...]:
        """Evicted messages kept in process because no eviction hook took them (oldest first)."""
        return tuple(self._archive)

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(tuple(self._messages))

    def get(self, message_id: str) -> Message:
        """Return the message with ``message_id``.

        Raises:
            NotFoundError: no message in the window has this id.
        """
        message = self._by_id.get(message_id)
        if message is None:
            raise NotFoundError("message", message_id)
        return message

    # -- eviction hook --------------------------------------------------------------------------------

    def set_eviction_hook(self, hook: EvictionHook | None) -> None:
        """Send evicted messages to ``hook`` from now on (``None``: keep them in :attr:`evicted_messages`).

        The hook receives, after each compression, the list of evicted messages in conversation order,
        with the full original of any message the window kept as head + tail. It may be a plain function
        or a coroutine function; it runs before the add that triggered the compression returns. If it
        raises, the messages go to :attr:`evicted_messages` instead and a warning is logged.

        Raises:
            InvalidArgumentError: ``hook`` is not callable.
        """
        if hook is not None and not callable(hook):
            raise InvalidArgumentError("hook", hook, "a callable taking a list of messages, or None")
        self._hook = hook

    def take_evicted(self) -> list[Message]:
        """Return the archived evicted messages and empty the archive (to hand them to a store later)."""
        archived, self._archive = self._archive, []
        return archived

    async def _deliver_evicted(self, evicted: list[Message]) -> None:
        if not evicted:
            return
        hook = self._hook
        if hook is None:
            self._archive.extend(evicted)
            return
        try:
            result = hook(evicted)
            if inspect.isawaitable(result):
                await result
        except Exception as error:  # the hook's failure must not lose messages or break the add
            # the error's text may quote message content: only its type at WARNING (payloads at DEBUG only)
            kind = type(error).__name__
            logger.warning("eviction hook failed (%s); %d messages archived in process", kind, len(evicted))
            logger.debug("eviction hook failure: %s", error)
            self._archive.extend(evicted)

    # -- pins -----------------------------------------------------------------------------------------

    def pin(self, message_id: str) -> None:
        """Pin a message so compression never evicts it.

        Takes effect from the next compression (one already awaiting its summarizer keeps its plan).

        Raises:
            NotFoundError: no message in the window has this id.
        """
        self.get(message_id).pinned = True

    def unpin(self, message_id: str) -> None:
        """Unpin a message so compression may evict it again.

        Raises:
            NotFoundError: no message in the window has this id.
        """
        self.get(message_id).pinned = False

    # -- adding ---------------------------------------------------------------------------------------

    def _validate(self, message: Message) -> int:
        """Check ``message`` against the window (nothing mutated) and return its token count."""
        if not isinstance(message, Message):
            raise InvalidArgumentError("message", message, "a Message (use Message.create)")
        if message.id in self._by_id:
            raise InvalidArgumentError("message.id", message.id, "an id not already in the window")
        if message.role is Role.TOOL:
            if message.tool_call_id not in self._pending_calls:
                pending = ", ".join(sorted(self._pending_calls)) or "none pending"
                raise ToolCallPairingError(
                    "tool_call_id",
                    message.tool_call_id,
                    f"the id of an unanswered tool call in the window ({pending})",
                )
        elif message.tool_calls:
            for call in message.tool_calls:
                if call.id in self._call_ids:
                    raise ToolCallPairingError(
                        "tool_calls[].id", call.id, "an id not used by another tool call in the window"
                    )
        return self._counter.count_message(message)

    def _append(self, message: Message, tokens: int) -> None:
        message.token_count = tokens
        self._messages.append(message)
        self._by_id[message.id] = message
        self._tokens += tokens
        if message.role is Role.TOOL:
            del self._pending_calls[message.tool_call_id]  # type: ignore[arg-type]
        elif message.tool_calls:
            for call in message.tool_calls:
                self._pending_calls[call.id] = message.id
                self._call_ids.add(call.id)

    async def add(self, message: Message) -> CompressionRecord | None:
        """Append ``message``, compressing first if the window would exceed ``max_tokens``.

        Returns:
            The record of the compression this add triggered, or ``None``.

        Raises:
            InvalidArgumentError: ``message`` is not a ``Message`` or its id is already in the window.
            ToolCallPairingError: a tool message answers no unanswered call, or a call id is reused.
            ContextBudgetError: the message does not fit and compression is disabled, or protected
                messages cannot fit in ``max_tokens``.
        """
        if self._lock.locked() or self._queued:  # a compression is in flight: queue behind it, in order
            return await self._add_queued(message)
        if type(message) is Message and not message.tool_calls and message.role is not Role.TOOL:
            # The hot path, inlined: a plain message that fits. O(1), no await before the mutation.
            by_id = self._by_id
            if message.id in by_id:
                raise InvalidArgumentError("message.id", message.id, "an id not already in the window")
            tokens = self._counter.count_message(message)
            if self._tokens + tokens + REPLY_PRIMING_TOKENS <= self._max_tokens:
                message.token_count = tokens
                self._messages.append(message)
                by_id[message.id] = message
                self._tokens += tokens
                return None
        else:
            tokens = self._validate(message)
            if self._tokens + tokens + REPLY_PRIMING_TOKENS <= self._max_tokens:
                self._append(message, tokens)
                return None
        async with self._lock:
            return await self._add_locked(message, tokens)

    async def _add_queued(self, message: Message) -> CompressionRecord | None:
        # Counted while waiting, so an add arriving after the lock is released (but before the waiters
        # have run) does not overtake them through the lock-free hot path.
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        try:
            return await self._add_locked(message)
        finally:
            self._lock.release()

    async def _add_locked(self, message: Message, tokens: int | None = None) -> CompressionRecord | None:
        if tokens is None:
            tokens = self._validate(message)
        if self._tokens + tokens + REPLY_PRIMING_TOKENS <= self._max_tokens:
            self._append(message, tokens)
            return None
        if not self.enable_compression:
            needed = self._tokens + tokens + REPLY_PRIMING_TOKENS
            raise ContextBudgetError(
                f"max_tokens: got {self._max_tokens}; allowed at least {needed} to add this message "
                f"({tokens} tokens to a window of {self.token_count}); compression is disabled, "
                "so the message was not added",
                required_tokens=needed,
                max_tokens=self._max_tokens,
            )
        message.token_count = tokens
        candidate = [*self._messages, message]
        return await self._compress(candidate, self.target_tokens)

    async def compress(self, target_tokens: int | None = None) -> CompressionRecord | None:
        """Compress now to ``target_tokens`` (default :attr:`target_tokens`); ``None`` if already below it.

        Raises:
            InvalidArgumentError: ``target_tokens`` is not a positive integer.
            ContextBudgetError: protected messages cannot fit in ``max_tokens``.
        """
        if target_tokens is None:
            target_tokens = self.target_tokens
        if isinstance(target_tokens, bool) or not isinstance(target_tokens, int) or target_tokens <= 0:
            raise InvalidArgumentError("target_tokens", target_tokens, "a positive integer")
        async with self._lock:
            if self.token_count <= target_tokens:
                return None
            return await self._compress(list(self._messages), min(target_tokens, self._max_tokens))

    async def _compress(self, candidate: list[Message], target: int) -> CompressionRecord:
        started = time.perf_counter()
        tokens_before = sum(m.token_count for m in candidate) + REPLY_PRIMING_TOKENS
        plan = plan_compression(
            candidate,
            target_tokens=target,
            max_tokens=self._max_tokens,
            counter=self._counter,
            summary_max_tokens=self._summary_max_tokens,
        )  # raises ContextBudgetError before anything changes
        summary, outcome = await self._make_summary(plan)
        kept = plan.kept
        total = plan.kept_tokens - REPLY_PRIMING_TOKENS
        if summary is not None:
            kept.insert(plan.summary_index, summary)
            total += summary.token_count

        # Commit: from here on nothing can fail.
        self._messages = kept
        self._tokens = total
        self._rebuild_indexes()
        record = CompressionRecord(
            tokens_before=tokens_before,
            tokens_after=self.token_count,
            messages_before=len(candidate),
            messages_after=len(kept),
            removed_count=len(plan.evicted),
            truncated_count=len(plan.truncated),
            summary_tokens=summary.token_count if summary is not None else 0,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            timestamp=time.time(),
            strategy=outcome.strategy,
            target_tokens=target,
            error=outcome.error,
        )
        self.compression_history.append(record)
        handed_over = [m for m in plan.evicted if TRUNCATED_METADATA_KEY not in m.metadata]
        handed_over.extend(m for m in plan.truncated if TRUNCATED_METADATA_KEY not in m.metadata)
        await self._deliver_evicted(handed_over)
        record.duration_ms = (time.perf_counter() - started) * 1000.0
        logger.debug(
            "compressed %d -> %d tokens (%d evicted, %d truncated, %s)",
            record.tokens_before,
            record.tokens_after,
            record.removed_count,
            record.truncated_count,
            record.strategy,
        )
        return record

    def _rebuild_indexes(self) -> None:
        self._by_id = {m.id: m for m in self._messages}
        self._call_ids = {call.id for m in self._messages for call in m.tool_calls}
        answered = {m.tool_call_id for m in self._messages if m.role is Role.TOOL}
        self._pending_calls = {
            call.id: m.id for m in self._messages for call in m.tool_calls if call.id not in answered
        }

    async def _make_summary(self, plan: CompressionPlan) -> tuple[Message | None, _Outcome]:
        strategy = STRATEGY_CUSTOM if self._summarizer is not None else STRATEGY_EXTRACTIVE
        if plan.summary_budget <= 0:
            return None, _Outcome("", strategy)
        inputs = plan.summary_inputs
        framing = self._counter.count_message(Message(role=Role.SYSTEM, content=""))
        budget = plan.summary_budget - framing
        if budget <= 0:
            return None, _Outcome("", strategy)
        outcome = await self._run_summarizer(inputs, budget)
        text = outcome.text.strip()
        if not text:
            return None, outcome
        if self._counter.count(text) > budget:
            text = truncate_to_tokens(self._counter, text, budget)
        covered = len(plan.evicted)
        if plan.previous_summary is not None:
            previous = plan.previous_summary.metadata.get(SUMMARY_METADATA_KEY)
            covered += previous if isinstance(previous, int) else 0
        summary = Message(role=Role.SYSTEM, content=text, metadata={SUMMARY_METADATA_KEY: covered})
        summary.token_count = self._counter.count_message(summary)
        while summary.token_count > plan.summary_budget and summary.content:  # seams; rare
            summary.content = truncate_to_tokens(
                self._counter, summary.content, self._counter.count(summary.content) - 1
            )
            summary.token_count = self._counter.count_message(summary)
        if not summary.content:
            return None, outcome
        return summary, outcome

    async def _run_summarizer(self, inputs: Sequence[Message], budget: int) -> _Outcome:
        if self._summarizer is None:
            return _Outcome(self._extractive.summarize(inputs, budget), STRATEGY_EXTRACTIVE)
        try:
            async with asyncio.timeout(self._summarizer_timeout):
                text = await self._summarizer(list(inputs), budget)
            if not isinstance(text, str):
                raise SummarizerError(f"summarizer returned {type(text).__name__}; allowed str")
            return _Outcome(text, STRATEGY_CUSTOM)
        except TimeoutError:
            error = kind = f"timeout after {self._summarizer_timeout:g} s"
        except SummarizerUnavailableError as exception:  # circuit open: skipped on purpose, not a failure
            error = f"{type(exception).__name__}: {exception}"[:300]
            logger.debug("custom summarizer skipped: %s", error)
            return _Outcome(self._extractive.summarize(inputs, budget), STRATEGY_FALLBACK, error)
        except Exception as exception:  # any failure of user code falls back to the extractive summary
            error = f"{type(exception).__name__}: {exception}"[:300]
            kind = type(exception).__name__
        # the error's text may quote the conversation: only its type at WARNING (payloads at DEBUG only)
        logger.warning("custom summarizer failed (%s); using the extractive summary", kind)
        logger.debug("custom summarizer failure: %s", error)
        return _Outcome(self._extractive.summarize(inputs, budget), STRATEGY_FALLBACK, error)

    # -- budgeted views -------------------------------------------------------------------------------

    def select(self, budget: int | None = None) -> list[Message]:
        """Return the messages to send within ``budget`` tokens, without changing the window.

        With no budget (or one the window fits in) this is every message. Otherwise the same rules as a
        compression choose what to leave out (whole units, lowest priority and oldest first; the newest
        messages cut to head + tail if needed), and the rolling summary is kept when it fits.

        Raises:
            InvalidArgumentError: ``budget`` is not a positive integer.
            ContextBudgetError: protected messages alone exceed ``budget``.
        """
        if budget is None:
            return list(self._messages)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidArgumentError("budget", budget, "a positive integer or None")
        if budget >= self.token_count:
            return list(self._messages)
        try:
            plan = plan_compression(
                self._messages,
                target_tokens=budget,
                max_tokens=budget,
                counter=self._counter,
                allow_summary=False,
            )
        except ContextBudgetError as error:
            raise ContextBudgetError(
                f"budget: got {budget}; allowed at least {error.required_tokens}: system, pinned and "
                "critical messages plus the newest messages cut to a marker do not fit",
                required_tokens=error.required_tokens,
                max_tokens=budget,
            ) from None
        kept = plan.kept
        previous = plan.previous_summary
        if previous is not None and plan.kept_tokens + previous.token_count <= budget:
            kept.insert(plan.summary_index, previous)
        return kept
