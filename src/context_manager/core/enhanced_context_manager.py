"""``EnhancedContextManager``: the entry point that wires the parts together and owns their lifecycles.

The message side lives here: :meth:`~EnhancedContextManager.add_message` validates and appends to a
:class:`~context_manager.core.context_window.ContextWindow` (which compresses itself when full),
:meth:`~EnhancedContextManager.get_context` exports provider-ready messages, and
:meth:`~EnhancedContextManager.get_context_summary` / :attr:`~EnhancedContextManager.compression_history`
report on it. Subsystems (memory, tools, monitoring) are started in one place,
:meth:`~EnhancedContextManager._start_subsystems`, and stopped in reverse order in
:meth:`~EnhancedContextManager._stop_subsystems`.

Example:
    >>> async with EnhancedContextManager(ContextManagerConfig(max_tokens=1000)) as manager:
    ...     await manager.add_message("user", "Hello, world!")
    ...     messages = manager.get_context(format="openai")
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import difflib
import functools
import gc
import inspect
import logging
import math
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Never, TypeVar, overload

from context_manager.core import forks
from context_manager.core.async_only import AsyncContextManagerOnly
from context_manager.core.compression import Summarizer
from context_manager.core.config import ContextManagerConfig
from context_manager.core.context_window import ContextWindow, EvictionHook, check_counter
from context_manager.core.conversations.persistence import PersistedConversation
from context_manager.core.conversations.store import ConversationStore, check_conversation_id
from context_manager.core.errors import (
    ConfigurationError,
    ContextBudgetError,
    ContextManagerError,
    ConversationConflictError,
    InvalidArgumentError,
    InvalidMessageError,
    LifecycleError,
    in_item,
)
from context_manager.core.eviction import EvictionWriter
from context_manager.core.health_checker import HealthChecker
from context_manager.core.memory.embeddings import Embedder
from context_manager.core.memory.file_store import LOG_FILE_NAME
from context_manager.core.memory.locking import make_private_directory
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.models import Memory
from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME
from context_manager.core.memory.validation import check_user
from context_manager.core.messages import (
    REASONING_FIELDS,
    REASONING_METADATA_KEY,
    Message,
    Role,
    ToolCall,
    chat_completions_text,
    check_reasoning,
    create_plain,
)
from context_manager.core.performance_monitor import (
    PerformanceMonitor,
    monitored_operation,
    record_library_operation,
    record_library_tokens,
    running_monitors,
)
from context_manager.core.provider_formats import (
    ANTHROPIC_CONTINUATION_TEXT,
    FORMATS,
    SupportsModelDump,
    anthropic_items_read,
    anthropic_request,
    is_anthropic_message,
    is_langchain_message,
    is_openai_responses_item,
    messages_from_langchain,
    responses_items_read,
    to_provider_format,
    tool_definitions_tokens,
)
from context_manager.core.shared_store import MemoryLease, lease_memory
from context_manager.core.summarizers.guard import SummarizerGuard, SummaryReport, observed
from context_manager.core.summarizers.llm import LLMSummarizer
from context_manager.core.telemetry import (
    MemorySizeSampler,
    Telemetry,
    memory_add_attributes,
    shared_memory_sampler,
    telemetry_for_current_providers,
    traced_add,
    traced_call,
    traced_search,
)
from context_manager.core.threads import to_the_end
from context_manager.core.tokens import (
    REPLY_PRIMING_TOKENS,
    ExactTokenCounter,
    TokenCounter,
    get_token_counter,
)
from context_manager.core.tool_system import ToolManager, ToolResult
from context_manager.core.tool_system.results import REFUSED_TOOL_CALLS
from context_manager.core.tool_system.window_calls import (
    CANCELLED_REASON,
    cancel_tool_calls_in_window,
    execute_tool_calls_in_window,
    pending_calls_in_window,
)
from context_manager.core.unclosed import close_in_background, warn_unclosed

__all__ = ["EnhancedContextManager"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_CHANGE: contextvars.ContextVar[asyncio.Future[None] | None] = contextvars.ContextVar(
    "context_manager_change", default=None
)
"""The tool-call change (:meth:`EnhancedContextManager._change_and_store`) the running code is part of."""
_LARGE_OUTPUT_CHARS = 65_536  # tool outputs above this are kept in the long-term (on-disk) tier
_MESSAGE_OPTIONS = frozenset(
    {"priority", "metadata", "pinned", "tool_calls", "tool_call_id", "name", "thinking"}
)
_OPENAI_RESPONSE_FIELDS = frozenset(
    {"refusal", "annotations", "audio", "function_call"}
    | {"reasoning_content", "reasoning", "reasoning_details"}
)
"""Fields of an OpenAI SDK response message's dump (``message.model_dump()``), empty unless used; the
reasoning of OpenAI-compatible servers (DeepSeek, vLLM: ``reasoning_content`` or ``reasoning``;
OpenRouter: ``reasoning`` and ``reasoning_details``) too."""
_IGNORED_RESPONSE_FIELDS = frozenset({"annotations"})
"""Output-only fields of an assistant message, ignored whatever they hold (see :func:`_new_message`)."""
_perf_counter = time.perf_counter


class _NotGiven:
    """The type of :data:`NOT_GIVEN`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN: Any = _NotGiven()
"""``add_message``'s ``content`` when left out: ``add_message(message)`` of one message-like object."""

_State = Literal["new", "ready", "closed"]


def _page_cursor(before: Any) -> tuple[float, str]:
    """The ``(updated_at, id)`` of ``before``, a conversation of ``list_conversations()``'s previous page.

    Raises:
        InvalidArgumentError: ``before`` is not a mapping with a finite number ``updated_at`` and a
            ``conversation_id`` (a valid id: a NUL or a lone surrogate would fail in storage).
    """
    allowed = (
        "the last conversation of the previous page: a dict list_conversations() returned (a mapping with "
        "its 'updated_at', a number, and 'conversation_id', a conversation id), or None for the first page"
    )
    if not isinstance(before, Mapping):
        raise InvalidArgumentError("before", before, allowed)
    updated_at, conversation_id = before.get("updated_at"), before.get("conversation_id")
    moment = math.nan
    if isinstance(updated_at, int | float) and not isinstance(updated_at, bool):
        with contextlib.suppress(OverflowError):  # an int beyond a float
            moment = float(updated_at)
    try:
        identifier = check_conversation_id(conversation_id)
    except InvalidArgumentError:
        identifier = None
    if not math.isfinite(moment) or identifier is None:
        raise InvalidArgumentError("before", dict(before), allowed)
    return moment, identifier


class EnhancedContextManager(AsyncContextManagerOnly):
    """Manages a conversation's context window, and the memory, tools and monitoring around it.

    Create it, ``await initialize()`` (or use ``async with``), use it, then ``await cleanup()``. Methods
    called before ``initialize()`` or after ``cleanup()`` raise
    :class:`~context_manager.core.errors.LifecycleError`. The configuration is read at ``initialize()``.
    """

    _initialize_hint = "call `await manager.initialize()` first or use `async with`"
    """How the LifecycleError of a call before ``initialize()`` says to start the manager
    (``SyncContextManager`` gives its own: a blocking caller cannot ``await``)."""

    _synchronous_alternative = "; in synchronous code, `with SyncContextManager(...) as manager:`"

    def __init__(
        self,
        config: ContextManagerConfig | None = None,
        *,
        token_counter: TokenCounter | None = None,
        summarizer: Summarizer | None = None,
        conversation_id: str | None = None,
        embedder: Embedder | None = None,
        user_id: str | None = None,
        **options: Never,
    ) -> None:
        """Create a manager (touches no file; ``initialize()`` does).

        Args:
            config: Settings; defaults from :class:`ContextManagerConfig` (and the environment) if omitted.
            token_counter: Token counter; by default the exact counter for ``config.token_model`` or
                ``config.token_encoding``.
            summarizer: An async callable ``(messages, budget_tokens) -> str`` used when the window
                compresses, e.g. ``OpenAISummarizer("gpt-4o-mini")`` (default: the one
                ``config.summarizer`` names, else the extractive summary). On failure or after
                ``config.summarizer_timeout`` seconds the extractive summary is used instead and the
                history says so; after ``config.summarizer_failure_threshold`` consecutive failures it is
                not called for ``config.summarizer_cooldown`` seconds (a circuit breaker,
                :class:`~context_manager.core.summarizers.guard.SummarizerGuard`; pass your own guard to
                choose other settings).
            conversation_id: Persist the window as this conversation (overrides
                ``config.conversation_id``): every change is written to the storage backend as it happens,
                and ``initialize()`` resumes what is stored under the id, written by any process on any
                host. See :meth:`reload`, :meth:`list_conversations` and :meth:`delete_conversation`.
            embedder: Any :class:`~context_manager.core.memory.embeddings.Embedder` for the vector channel
                of memory search (default: the built-in one ``config.embedder`` names).
            user_id: The end user this manager serves: the messages compression evicts and the full text of
                cut tool outputs are written to memory under this user, and :meth:`search_memory` and
                :meth:`optimize_system` see only this user's memories (``None``, the default: memory's
                default namespace). For work across users use ``memory_manager`` with an explicit
                ``user_id`` (or ``ALL_USERS``). A persisted conversation this manager creates belongs to
                this user: only a manager with the same ``user_id`` opens it, lists it or deletes it.
            **options: None are taken: a setting such as ``max_tokens`` goes in the ``config``
                (``EnhancedContextManager(ContextManagerConfig(max_tokens=4000))``), and the error says so.

        Raises:
            InvalidArgumentError: an argument has the wrong type, or an unknown keyword (a configuration
                option is named as such).
            InvalidMemoryError: ``user_id`` is not a valid user id (empty, only whitespace, control
                characters, over 256 characters); nothing is created.
        """
        check_constructor_arguments(type(self).__name__, config, options)
        if summarizer is not None and not callable(summarizer):
            raise InvalidArgumentError(
                "summarizer", summarizer, "an async callable (messages, budget) -> str"
            )
        if token_counter is not None and not isinstance(token_counter, TokenCounter):
            raise InvalidArgumentError(
                "token_counter", token_counter, "a TokenCounter (count, count_message)"
            )
        if token_counter is not None:
            check_counter(token_counter, "token_counter")
        if conversation_id is not None:
            check_conversation_id(conversation_id)
        check_user(user_id, allow_all=False)
        self._user_id = user_id
        self.config = config if config is not None else ContextManagerConfig()
        """The settings (read at ``initialize()``)."""
        self._conversation_id_argument = conversation_id
        self._conversation: PersistedConversation | None = None
        self._conversation_store: ConversationStore | None = None
        # the journal's sequence numbers of the pins made since the last flush() (it reports their refusal)
        self._unflushed_pins: list[int] = []
        # the refusal of one of them met by its background write, kept until flush() or cleanup() reports
        # it (the conversation remembers only its 64 latest refusals)
        self._pin_refusal: ConversationConflictError | None = None
        self._token_counter = token_counter
        self._summarizer = summarizer
        self._summarizer_guard: SummarizerGuard | None = None
        self._owned_summarizer: LLMSummarizer | None = None  # built from config.summarizer: closed by cleanup
        self._telemetry: Telemetry | None = None  # OpenTelemetry, resolved at initialize()
        self._memory_sampler: MemorySizeSampler | None = None
        self._state: _State = "new"
        self._pid = forks.pid  # the process that initialized it (set again by initialize())
        self._lifecycle_lock = asyncio.Lock()  # initialize() and cleanup() run one at a time
        # tool-call changes in flight (each one's end, and the task making it): cleanup() waits for them
        self._changes: dict[asyncio.Future[None], asyncio.Task[Any] | None] = {}
        self._window: ContextWindow | None = None
        self._count_checks_unicode = False
        self.tool_manager = ToolManager(self.config)
        """Registers and runs tools (``register_function_tool``, ``get_tool_schemas`` ...)."""
        self.memory_manager = MemoryManager(self.config, embedder=embedder)
        """Three-tier memory on ``config.storage_path`` (``add_memory``, ``search_by_tags`` ...); messages
        evicted by compression are written to it, so :meth:`search_memory` finds them. Managers of one
        event loop on one store share one memory manager: after ``initialize()`` this is the one open
        (see :mod:`~context_manager.core.shared_store`); leave closing it to ``cleanup()``."""
        self._embedder = embedder
        self._explicit_embedder = embedder is not None
        self._memory_lease: MemoryLease | None = None
        self._memory_session_id = uuid.uuid4().hex
        self._eviction_writer: EvictionWriter | None = None
        # warns and closes what it started if it is garbage-collected open (see core.unclosed)
        self._unclosed: weakref.finalize[Any, Any] | None = None
        self.performance_monitor: PerformanceMonitor | None = (
            PerformanceMonitor(collect_library_operations=False)
            if self.config.enable_performance_monitor
            else None
        )
        """This manager's own monitor (``config.enable_performance_monitor``): ``add_message``,
        ``search_memory`` and ``execute_tool`` are recorded in it and in every running monitor; it samples
        the process between ``initialize()`` and ``cleanup()``."""
        self.health_checker: HealthChecker | None = None
        """Health checks of this manager (created by ``initialize()``); they run every
        ``config.health_check_interval`` seconds in the background when ``config.enable_health_checks``."""

    # -- lifecycle ------------------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Create the directories in use (mode 0o700) and start the subsystems.

        The directories are ``config.created_directories``: the storage directory, and ``cache_path`` when
        it holds it or was set; with only ``storage_path`` set, the default ``./cache`` (which would hold
        nothing) is not created in the working directory.

        Calling it again on an initialized manager does nothing. Lifecycle calls are serialised: a
        second ``initialize()`` (or a ``cleanup()``) made while one runs waits for it to finish.

        Raises:
            StorageError: a directory cannot be created.
            StorageLockedError: another process has the embedded storage, or a manager of this process
                that this one cannot share it with (other memory settings, another event loop; the
                message says).
            ConversationAccessError: the persisted conversation belongs to another end user.
            ConfigurationError: the configured tokenizer is unknown, or ``config.summarizer`` needs an API
                key that is not set.
            MissingDependencyError: ``config.summarizer`` names a provider whose SDK is not installed.
            InvalidArgumentError: a persisted conversation's stored window needs more than ``max_tokens``
                and cannot be compressed to fit (``enable_compression=False``, or its protected messages
                are too large); otherwise it is compressed as it loads (a warning says so).
            LifecycleError: the manager was cleaned up, or initialized in the process that forked this
                one (``gunicorn --preload``): create it in each worker, after the fork.
        """
        if self._state == "ready" and self._pid != forks.pid:
            raise forks.forked_error("initialize", "EnhancedContextManager", self._pid)
        async with self._lifecycle_lock:
            await self._initialize_locked()

    async def _initialize_locked(self) -> None:
        if self._state == "ready":
            return
        if self._state == "closed":
            raise LifecycleError("initialize: this manager was cleaned up; create a new one")
        config = self.config
        for directory in config.created_directories:
            make_private_directory(directory)
        counter = self._token_counter
        if counter is None:
            counter = get_token_counter(config.token_encoding, model=config.token_model)
        self._telemetry = telemetry_for_current_providers() if config.enable_opentelemetry else None
        self.tool_manager.telemetry = self._telemetry
        summarizer = self._guarded_summarizer(counter)
        # the built-in counter fails on a lone surrogate before the window changes (see add_message)
        self._count_checks_unicode = type(counter) is ExactTokenCounter
        self._window = ContextWindow(
            config.max_tokens,
            compression_ratio=config.compression_ratio,
            counter=counter,
            summarizer=summarizer,
            summary_max_tokens=config.summary_max_tokens,
            summarizer_timeout=config.summarizer_timeout,
            enable_compression=config.enable_compression,
        )
        if self._telemetry is not None:  # every compression: of an add, a batch, a tool result, compress()
            self._window.set_compression_tracer(self._telemetry.compression_trace)
        try:
            await self._start_subsystems()
        except BaseException:
            # what started is stopped in a task of its own: a second cancellation (a deadline's scope
            # cancelling again) must not leave the store borrowed, and held, for the process's life
            await to_the_end(asyncio.ensure_future(self._release()))
            self._window = None
            if self.memory_manager._state == "closed":  # closed by the release: a new one for a retry
                self.memory_manager = MemoryManager(self.config, embedder=self._embedder)
            raise
        self._pid = forks.pid
        self._state = "ready"
        self._unclosed = weakref.finalize(
            self,
            _collected,
            asyncio.get_running_loop(),
            _Started(
                conversation_id=self.conversation_id,
                window=None if self._window is None else weakref.ref(self._window),
                tool_manager=weakref.ref(self.tool_manager),
                writer=self._eviction_writer,
                conversation=self._conversation,
                lease=self._memory_lease,
                checker=self.health_checker,
                monitor=self.performance_monitor,
                sampler=self._memory_sampler,
                owned_summarizer=self._owned_summarizer,
            ),
            forks.pid,
        )
        self._unclosed.atexit = False  # still open at exit: the interpreter's end closes what is left
        logger.debug("context manager initialized (max_tokens=%d)", config.max_tokens)

    async def cleanup(self) -> None:
        """Write what compressions evicted to memory, stop the subsystems and release resources.

        Safe to call more than once. Made while ``initialize()`` runs, it waits for it, then cleans up.
        Cancelled (``asyncio.wait_for(manager.cleanup(), t)``), it still stops everything, and gives the
        shared store back, before the cancellation is raised. In a process forked after ``initialize()``
        it only marks this copy cleaned up: the store, connections and threads are the parent's.
        """
        if self._state == "ready" and self._pid != forks.pid:
            self._forget_unclosed()
            self._state = "closed"  # nothing of it is this process's to close (see forks)
            logger.debug("context manager of process %d left to it (cleanup in a forked child)", self._pid)
            return
        async with self._lifecycle_lock:
            if self._state == "closed":
                return
            self._forget_unclosed()
            was_ready = self._state == "ready"
            self._state = "closed"
            if was_ready:
                try:
                    await self._finish_changes()
                except asyncio.CancelledError:
                    # cancelled while it waited: release everything all the same, then let the
                    # cancellation go on
                    await to_the_end(asyncio.ensure_future(self._release()))
                    raise
                # in a task of its own, which a cancellation of this call (asyncio.wait_for(cleanup(), t))
                # does not cut halfway: the shared store is always given back (and closed by its last
                # holder), the conversation's last changes written; the cancellation is raised after
                await to_the_end(asyncio.ensure_future(self._release()))
            logger.debug("context manager cleaned up")

    def _forget_unclosed(self) -> None:
        """Being cleaned up (or not this process's to close): nothing to close if it is collected later."""
        if self._unclosed is not None:
            self._unclosed.detach()

    async def _release(self) -> None:
        """Stop the subsystems and close the summarizer this manager made."""
        await self._stop_subsystems()
        await self._close_owned_summarizer()

    def _guarded_summarizer(self, counter: TokenCounter) -> Summarizer | None:
        """The summarizer the window calls: the given one or ``config.summarizer``, in a circuit breaker.

        A guard given as the summarizer is used as it is, its calls from this manager's window reported to
        :meth:`_record_summary` as those of the guard made here are.
        """
        config = self.config
        summarizer = self._summarizer
        if summarizer is None and config.summarizer is not None:
            from context_manager.core.summarizers.spec import summarizer_from_spec

            # a little under the window's timeout, so the adapter gives up (and says why) before it is cut
            summarizer = summarizer_from_spec(
                config.summarizer,
                base_url=config.summarizer_base_url,
                total_timeout=config.summarizer_timeout * 0.95,
                counter=counter,
            )
            self._owned_summarizer = summarizer
        if summarizer is None:
            return None
        # the window (which a background write's task may refer to) reports to this manager weakly: a
        # manager dropped without cleanup() is still freed (see core.unclosed)
        record = _weak_callback(self._record_summary)
        if isinstance(summarizer, SummarizerGuard):
            self._summarizer_guard = summarizer
            return observed(summarizer, record)
        guard = SummarizerGuard(
            summarizer,
            failure_threshold=config.summarizer_failure_threshold,
            cooldown=config.summarizer_cooldown,
            on_report=record,
        )
        self._summarizer_guard = guard
        return guard

    async def _close_owned_summarizer(self) -> None:
        owned, self._owned_summarizer = self._owned_summarizer, None
        if owned is not None:
            try:
                await owned.cleanup()
            except Exception as error:  # closing an HTTP client must not fail cleanup
                logger.warning("closing the summarizer's client failed (%s)", type(error).__name__)

    def _record_summary(self, report: SummaryReport) -> None:
        """Record a summarizer call as a ``summarize`` operation, and its token usage, in the monitors."""
        monitor = getattr(self, "performance_monitor", None)
        record_library_operation(
            "summarize",
            report.duration_s,
            report.success,
            own_monitor=monitor,
            error=None if report.error is None else f"summarizer failed ({report.error})",
        )
        usage = report.usage
        if usage is not None and not usage.reported:  # the server reported no count: nothing to record
            usage = None
        if usage is not None:  # a count not reported adds nothing to the sums
            record_library_tokens(
                "summarize", usage.input_tokens or 0, usage.output_tokens or 0, own_monitor=monitor
            )
        telemetry = self._telemetry
        if telemetry is not None:
            telemetry.record_operation("summarize", report.duration_s, report.error)
            guard = self._summarizer_guard
            asked = guard.summarizer if guard is not None else None
            if isinstance(asked, LLMSummarizer):  # an LLM call: the GenAI conventions' duration metric
                server = dict(asked.telemetry_attributes)
                telemetry.record_llm_call(
                    str(server.pop("gen_ai.provider.name")),
                    asked.model,
                    report.duration_s,
                    report.error,
                    None if report.usage is None else report.usage.model,
                    server,
                )
            if usage is not None:
                if isinstance(asked, LLMSummarizer):
                    # the conventions' provider name (not "openai" for any compatible server), the server
                    attributes = dict(asked.telemetry_attributes)
                    provider = str(attributes.pop("gen_ai.provider.name"))
                    requested = asked.model
                else:
                    attributes, provider, requested = {}, usage.provider, usage.model
                telemetry.record_token_usage(
                    provider,
                    requested,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.model,
                    attributes,
                )

    async def _start_subsystems(self) -> None:
        """Start what the manager owns, in dependency order (the window already exists).

        Each subsystem (memory, tools, performance monitoring) starts here and stops in
        :meth:`_stop_subsystems`, in reverse order. After memory, the eviction writer starts: a background
        task that writes what compressions evict (the window's queue) to medium-term memory, off the
        ``add_message`` path, so evicted messages stay searchable.
        """
        lease = await lease_memory(self.memory_manager, explicit_embedder=self._explicit_embedder)
        self._memory_lease = lease
        self.memory_manager = lease.memory
        conversation_id = self.conversation_id
        if conversation_id is not None and self._window is not None:
            self._memory_session_id = conversation_id
            store = await self._open_conversation_store()
            conversation = PersistedConversation(
                store,
                conversation_id,
                self._window,
                snapshot_every=self.config.conversation_snapshot_every,
                user_id=self._user_id,
            )
            await conversation.open()
            self._conversation = conversation
        if self._window is not None:
            # with an embedder, the writer embeds a group of 256 messages in one worker-thread call before
            # it writes them 8 per loop step (the model costs about twice as much in calls of 8)
            # its callbacks refer to what they write, not to this manager (a task refers to them): a
            # manager dropped without cleanup() is still freed, and its writer stopped (see core.unclosed)
            memory = self.memory_manager
            embedding = memory.embedder is not None
            writer = EvictionWriter(
                self._window.evicted_queue,
                functools.partial(
                    _remember_evicted,
                    memory,
                    user_id=self._user_id,
                    session_id=self._memory_session_id,
                    id_namespace=self._memory_id_namespace(),
                ),
                prepare=memory._embed_messages_ahead if embedding else None,
                on_drained=(
                    functools.partial(_mark_indexed, self._conversation)
                    if self._conversation is not None
                    else None
                ),
            )
            self._eviction_writer = writer
            writer.start()
        await self._start_operations()

    async def _stop_subsystems(self) -> None:
        """Stop what :meth:`_start_subsystems` started, in reverse order; tolerate partial starts.

        Evicted messages still queued are written to memory before memory closes.
        """
        await self._stop_operations()
        await self.tool_manager.cleanup()  # async tools left running after ignoring their cancellation
        if self._window is not None:
            # an add still compressing (its summarizer may hang) commits now, with the extractive summary,
            # so what it evicts is queued before the writer stops; then the deliveries of cancelled adds
            await self._window.drain()
        conversation = self._conversation
        pins, self._unflushed_pins = self._unflushed_pins, []
        held, self._pin_refusal = self._pin_refusal, None
        if conversation is not None:
            unstored: ContextManagerError | None = None
            if conversation.pending and not conversation.is_stale:
                try:  # changes made without an awaited add (a pin) are written before closing
                    await conversation.sync()
                except ContextManagerError as error:
                    unstored = error
            # a pin refused since the last flush(): nobody else will ever hear of it
            unstored = unstored or conversation.refusal_of(pins) or held
            if unstored is not None:
                logger.warning(
                    "conversation %r: last changes not stored (%s)", conversation.conversation_id, unstored
                )
        writer, self._eviction_writer = self._eviction_writer, None
        self._conversation = None
        self._conversation_store = None  # the lease's: closed with the memory by the last manager holding it
        lease, self._memory_lease = self._memory_lease, None
        await _stop_storage(writer, conversation, lease)

    async def _start_operations(self) -> None:
        """Start the monitor's sampler and the health checker (periodic only when enabled)."""
        monitor = self.performance_monitor
        checker = HealthChecker(check_interval=self.config.health_check_interval, context_manager=self)
        checker._hold_manager_weakly()  # its periodic task refers to it: the manager stays collectable
        self.health_checker = checker
        if monitor is not None:
            await monitor.start_monitoring()  # the checker watches its sampler (and restarts it)
        if self.config.enable_health_checks:
            await checker.start()
            checker.watch_background_task("health_checks", lambda: checker.is_running, checker.start)
        if self._telemetry is not None and self._telemetry.metering:
            # one for the managers sharing the store: each one's sampler read the whole store as it opened
            sampler = shared_memory_sampler(self._telemetry, self.memory_manager, self.config.memory_backend)
            self._memory_sampler = sampler
            await sampler.start()

    async def _stop_operations(self) -> None:
        """Stop the background tasks :meth:`_start_operations` started (each cancelled and awaited)."""
        sampler, self._memory_sampler = self._memory_sampler, None
        await _stop_operations(sampler, self.health_checker, self.performance_monitor)

    async def __aenter__(self) -> EnhancedContextManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.cleanup()

    @property
    def is_initialized(self) -> bool:
        """True between ``initialize()`` and ``cleanup()``."""
        return self._state == "ready"

    def _require_ready(self, operation: str) -> ContextWindow:
        window = self._window
        if self._state == "ready" and window is not None:
            if self._pid == forks.pid:
                return window
            raise forks.forked_error(operation, "EnhancedContextManager", self._pid)
        if self._state == "new":
            hint = self._initialize_hint
            raise LifecycleError(f"{operation}: the context manager is not initialized; {hint}")
        raise LifecycleError(f"{operation}: the context manager was cleaned up; create a new one")

    # -- messages -------------------------------------------------------------------------------------

    @property
    def context_window(self) -> ContextWindow:
        """The context window (messages, pins, eviction hook).

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        return self._require_ready("context_window")

    @overload
    async def add_message(
        self, role: str, content: str | Sequence[Mapping[str, Any]] | None, **kwargs: Any
    ) -> bool: ...

    @overload
    async def add_message(self, role: Mapping[str, Any], /, **kwargs: Any) -> bool: ...  # options as keywords

    @overload
    async def add_message(self, role: SupportsModelDump, /) -> bool: ...

    async def add_message(  # type: ignore[misc]  # a keyword content= with a dict is the (role, content) form
        self, role: Any, content: str | Sequence[Mapping[str, Any]] | None = NOT_GIVEN, **kwargs: Any
    ) -> bool:
        """Add a message to the context, compressing the window first if it would overflow.

        ``add_message(role, content, **options)``, or ``add_message(message)`` of one message as
        :meth:`add_messages` takes it: a dict (``{"role": "user", "content": "hi"}``, options as its keys),
        an OpenAI SDK message (``response.choices[0].message``), a LangChain message (``HumanMessage``) or
        an Anthropic turn; ``add_message(message)`` is ``add_messages([message])``.

        Args:
            role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"`` (or a :class:`Role`); or the
                whole message, with no ``content`` (see above).
            content: The text; ``None`` only for an assistant message with ``tool_calls`` (as the OpenAI
                API sends it), stored as empty text. Chat Completions text parts (``[{"type": "text",
                "text": ...}]``) are their texts joined by a line break, as in :meth:`add_messages`.
            **kwargs: ``priority`` (``"low"``, ``"normal"``, ``"high"``, ``"critical"``), ``metadata``
                (dict of JSON values), ``pinned`` (bool), ``tool_calls`` (assistant: ``ToolCall`` objects or
                OpenAI/Anthropic dicts or SDK objects, ``message.tool_calls`` of an OpenAI response as it is,
                Responses API ``function_call`` items too), ``tool_call_id``
                (tool: the call answered), ``name``, ``thinking`` (assistant: Anthropic extended thinking,
                ``response.content`` or the response itself: its ``thinking`` / ``redacted_thinking``
                blocks are kept, signatures unchanged, and go first in the turn of the Anthropic export, as
                the API requires with tool use; see :attr:`Message.thinking`), ``reasoning_content``,
                ``reasoning``, ``reasoning_details`` (assistant: the reasoning of an OpenAI-compatible
                server, kept in the metadata and sent back by the OpenAI export; see
                :data:`~context_manager.core.messages.REASONING_METADATA_KEY`).

        Returns:
            ``True`` once the message is in the window.

        Raises:
            InvalidArgumentError: an unknown keyword (or a subclass for a bad role, priority, content,
                metadata, tool calls: ``InvalidRoleError``, ``InvalidPriorityError``,
                ``InvalidMessageError``, ``ToolCallPairingError``). Nothing is changed.
            ContextBudgetError: the message cannot fit (protected messages too large, or compression
                disabled and the window full). Nothing is changed.
            ConversationConflictError: the conversation is persisted and another manager changed it first;
                the message was not added and the window now holds the stored conversation (add it again).
            StorageError: the conversation is persisted and could not be written; the message is in the
                window and is written with the next change (or :meth:`flush`): do not add it again.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        if content is NOT_GIVEN:  # add_message(message): the one message as add_messages takes it
            return await self._add_message_like(role, kwargs)
        # Recorded as ``monitored_operation("add_message")`` would (failures with their error, a
        # cancellation not at all), inline: the decorator's extra coroutine is a fifth of a short add.
        start = _perf_counter()
        try:
            window = self._require_ready("add_message")
            conversation = self._conversation
            since = 0
            if conversation is not None:
                since = conversation.check_writable()
            if self._telemetry is None:
                if kwargs:
                    message = _new_message(role, content, kwargs)
                    tokens = window._append_if_fits(message)  # no coroutine when no compression is needed
                else:
                    # with the built-in counter a non-ASCII text is checked for lone surrogates by its
                    # count (one UTF-8 conversion instead of two: 0.7 us of a 150-token add)
                    deferred = self._count_checks_unicode
                    message = create_plain(role, content, check_unicode=not deferred)
                    try:
                        tokens = window._append_if_fits(message)
                        if deferred and tokens is not None and tokens < 0:
                            message.content.encode()  # counted later (behind a compression, in a thread): now
                    except UnicodeEncodeError:
                        raise InvalidMessageError(
                            "content", content, "valid unicode text (no lone surrogates)"
                        ) from None
                if tokens is not None and tokens < 0:
                    await window._add_queued(message)
                elif tokens is not None:
                    await window._add_counted(message, tokens)
            else:
                await traced_add(self._telemetry, window, lambda: _new_message(role, content, kwargs))
            if conversation is not None:
                await conversation.sync(since=since)
        except Exception as error:
            if isinstance(error, ConversationConflictError):
                await self._recover(error)
            own = self.performance_monitor
            if own is not None or running_monitors():
                record_library_operation(
                    "add_message", _perf_counter() - start, False, own_monitor=own, error=error
                )
            raise
        own = self.performance_monitor
        if running_monitors():
            record_library_operation("add_message", _perf_counter() - start, True, own_monitor=own)
        elif own is not None:  # the usual case: only the manager's own monitor
            own._record_success("add_message", _perf_counter() - start)
        return True

    async def _add_message_like(self, message: Any, options: dict[str, Any]) -> bool:
        """``add_message(message)``: one message-like object added as ``add_messages([message])`` does.

        A dict's options may also come as keywords (a key given both ways is refused); errors name the
        argument ``message`` (``message.role: got ...``).
        """
        self._require_ready("add_message")  # not add_messages': the caller called add_message
        if isinstance(message, str | Role):
            raise InvalidArgumentError(
                "content",
                NOT_GIVEN,
                f"the message's text: add_message({str(message)!r}, content), or one message dict: "
                "add_message({'role': ..., 'content': ...})",
            )
        if isinstance(message, Sequence) and not isinstance(message, bytes):
            raise InvalidArgumentError(
                "message",
                message,
                "one message (a dict with 'role' and 'content', an SDK or LangChain message)",
                detail="add_messages(messages) takes a list",
            )
        if options:
            if not isinstance(message, Mapping):
                keyword = next(iter(options))
                raise InvalidArgumentError(
                    keyword,
                    options[keyword],
                    "no options with a message object: add_message(role, content, **options), or a dict "
                    "with the options as keys",
                )
            both = sorted(set(options) & set(message))
            if both:
                raise InvalidArgumentError(
                    both[0], options[both[0]], "each option given once: in the message dict or as a keyword"
                )
            message = {**message, **options}
        try:
            await self.add_messages([message])
        except InvalidArgumentError as error:
            if error.field.startswith("messages[0]"):
                raise in_item(error, "message") from None
            raise
        return True

    @monitored_operation("add_messages")
    async def add_messages(self, messages: Sequence[Mapping[str, Any] | SupportsModelDump]) -> int:
        """Add several messages in order, compressing at most once: a conversation history, say.

        Adding a long history one message at a time compresses every few messages; this checks and
        counts the whole batch, then plans one compression over the window and the batch together.

        Args:
            messages: Dicts of :meth:`add_message`'s arguments: ``role``, ``content`` (optional for an
                assistant message with ``tool_calls``, as in Chat Completions) and optionally
                ``priority``, ``metadata``, ``pinned``, ``tool_calls``, ``tool_call_id``, ``name``,
                ``thinking``; the OpenAI export of :meth:`get_context` is such a list, and the OpenAI
                SDK's ``message.model_dump()`` of a response message is such a dict (its empty
                ``refusal``, ``audio`` and ``function_call`` are ignored, and its ``annotations``, url
                citations no request takes back; a refusal is the text; the reasoning of an
                OpenAI-compatible server, ``reasoning_content``, ``reasoning`` or ``reasoning_details``, is
                kept and sent back by the OpenAI export, see
                :data:`~context_manager.core.messages.REASONING_METADATA_KEY`). A Chat Completions
                ``content`` of text parts (``[{"type": "text", "text": ...}]``, any role) is their texts
                joined by a line break; image, audio and file parts are refused (the window keeps text). The
                ``"openai_responses"`` export's items go in too (see :meth:`get_context`), and Anthropic
                turns: ``{"role", "content": [blocks]}`` (``response.content``, the SDK's objects or
                dicts; the response itself or its ``model_dump()``), the ``"anthropic"`` export's
                ``messages`` (see :func:`~context_manager.core.provider_formats.messages_from_anthropic`),
                and LangChain's messages or their dumps (see
                :func:`~context_manager.core.provider_formats.messages_from_langchain`).

        Returns:
            How many messages were added.

        Raises:
            InvalidArgumentError: ``messages`` is not a list of such dicts, or one is invalid (or a
                subclass, as for :meth:`add_message`; its ``field`` names the item as given,
                ``messages[3].role``, whatever it was converted to). Nothing is added.
            ContextBudgetError: the batch cannot fit (see :meth:`add_message`). Nothing is added.
            ConversationConflictError: the conversation is persisted and another manager changed it first;
                nothing of the batch was added and the window now holds the stored conversation (add it
                again).
            StorageError: the conversation is persisted and could not be written; the batch is in the
                window and is written with the next change (or :meth:`flush`): do not add it again.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.

        Example:
            >>> await manager.add_messages([
            ...     {"role": "user", "content": "Where is order 1042?"},
            ...     {"role": "assistant", "content": "It shipped on Monday."},
            ... ])
            2
        """
        window = self._require_ready("add_messages")
        if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
            one = isinstance(messages, Mapping) or callable(getattr(messages, "model_dump", None))
            raise InvalidArgumentError(
                "messages",
                messages,
                "a list of dicts with 'role' and 'content'",
                detail="one message goes in with add_message(message)" if one else None,
            )
        # converted items (a user turn of results is several messages): errors name the caller's item
        origins: list[int] | None = None
        if any(is_langchain_message(item) for item in messages):  # one dict each: positions kept
            messages = messages_from_langchain(messages)
        if any(is_anthropic_message(item) for item in messages):  # Anthropic turns: content blocks
            messages, origins = anthropic_items_read(messages)
        if any(is_openai_responses_item(item) for item in messages):
            messages, origins = responses_items_read(messages, origins)
        built = []
        for position, item in enumerate(messages):
            if origins is not None:
                position = origins[position]
            if (
                not isinstance(item, Mapping)
                or "role" not in item
                or ("content" not in item and not _calls_without_content(item))
            ):
                raise InvalidArgumentError(
                    f"messages[{position}]", item, "a dict with 'role', 'content' and add_message's options"
                )
            options = {key: value for key, value in item.items() if key not in ("role", "content")}
            content = item.get("content")
            try:
                built.append(_new_message(item["role"], content, options))
            except InvalidArgumentError as error:
                raise in_item(error, f"messages[{position}]") from None
        conversation = self._conversation
        since = 0
        if conversation is not None:
            since = conversation.check_writable()
        try:
            await window.extend(built)
        except ConversationConflictError as error:
            await self._recover(error)
            raise
        except InvalidArgumentError as error:  # names the message of the batch: the caller's item
            if origins is not None and error.field.startswith("messages["):
                converted = int(error.field[len("messages[") : error.field.index("]")])
                raise in_item(error, f"messages[{origins[converted]}]") from None
            raise
        if conversation is not None:
            await conversation.sync(since=since)
        return len(built)

    @property
    def messages(self) -> tuple[Message, ...]:
        """The messages in the window, in order (a snapshot).

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        return self._require_ready("messages").messages

    def pin_message(self, message_id: str) -> None:
        """Pin a message so compression never evicts it.

        Synchronous: callable where no event loop runs. On a persisted conversation the record is
        written in the background (``await flush()`` waits for it); without a running event loop it
        is written by the next write, :meth:`flush` or :meth:`cleanup`.

        Raises:
            InvalidArgumentError: ``message_id`` is not a string, or is the rolling summary's id.
            NotFoundError: no message in the window has this id.
            ConversationConflictError: the persisted conversation is stale (the reload after a conflict
                failed): nothing changes until ``await reload()`` succeeds.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._change_pin("pin_message", message_id, pin=True)

    def unpin_message(self, message_id: str) -> None:
        """Let compression evict a pinned message again.

        Synchronous: callable where no event loop runs. On a persisted conversation the record is
        written in the background (``await flush()`` waits for it); without a running event loop it
        is written by the next write, :meth:`flush` or :meth:`cleanup`.

        Raises:
            InvalidArgumentError: ``message_id`` is not a string, or is the rolling summary's id.
            NotFoundError: no message in the window has this id.
            ConversationConflictError: the persisted conversation is stale (the reload after a conflict
                failed): nothing changes until ``await reload()`` succeeds.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._change_pin("unpin_message", message_id, pin=False)

    def _change_pin(self, operation: str, message_id: str, *, pin: bool) -> None:
        """:meth:`pin_message` / :meth:`unpin_message`: refused on a stale conversation, else journaled."""
        window = self._require_ready(operation)
        conversation = self._conversation
        if conversation is None:
            (window.pin if pin else window.unpin)(message_id)
            return
        journaled = conversation.check_writable()  # stale: refused before the window changes
        (window.pin if pin else window.unpin)(message_id)
        if conversation.journaled == journaled:
            # pinned already (or not pinned): nothing to store, and no change whose refusal is its own
            # (the last one journaled is another call's, perhaps refused and raised to it already)
            return
        self._note_pin(conversation)
        self._sync_soon()

    def set_eviction_hook(self, hook: EvictionHook | None) -> None:
        """Receive the messages compression evicts (see :meth:`ContextWindow.set_eviction_hook`).

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("set_eviction_hook").set_eviction_hook(hook)

    async def compress_context(self, target_tokens: int | None = None) -> dict[str, Any] | None:
        """Compress the window now (to its target size by default); return the record or ``None``.

        Raises:
            InvalidArgumentError: ``target_tokens`` is not a positive integer.
            ConversationConflictError: the conversation is persisted and another manager changed it first;
                nothing was compressed and the window now holds the stored conversation.
            StorageError: the conversation is persisted and the compression could not be written; it is
                in the window and is written with the next change (or :meth:`flush`).
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        window = self._require_ready("compress_context")
        conversation = self._conversation
        since = 0
        if conversation is not None:
            since = conversation.check_writable()
        try:
            record = await window.compress(target_tokens)
        except ConversationConflictError as error:
            await self._recover(error)
            raise
        if conversation is not None:
            await conversation.sync(since=since)
        if record is None:
            return None
        return record.to_dict()

    @overload
    def get_context(
        self, format: Literal["openai"] = "openai", budget: int | None = None, *, tools: None = None
    ) -> list[dict[str, Any]]: ...

    @overload
    def get_context(
        self,
        format: Literal["anthropic"],
        budget: int | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]: ...

    @overload
    def get_context(
        self, format: Literal["openai_responses"], budget: int | None = None, *, tools: None = None
    ) -> list[dict[str, Any]]: ...

    @overload
    def get_context(
        self, format: str, budget: int | None = None, *, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]: ...

    def get_context(
        self,
        format: str = "openai",
        budget: int | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Return provider-ready messages for the next model call, within ``budget`` tokens if given.

        The return type follows ``format`` for type checkers: ``get_context(format="openai")`` is a
        ``list[dict[str, Any]]`` (as is ``"openai_responses"``) and ``get_context(format="anthropic")`` a
        ``dict[str, Any]``, no cast needed; a ``format`` only known at run time gives the union.

        Args:
            format: ``"openai"``: a list of Chat Completions messages. ``"anthropic"``: a dict with
                ``"system"`` (when there are system messages) and ``"messages"``, ready to unpack into
                ``client.messages.create(**request, model=..., max_tokens=...)``. ``"openai_responses"``:
                the Responses API ``input`` list (``client.responses.create(input=items, model=...)``):
                role messages for text, ``function_call`` and ``function_call_output`` items for calls and
                results; ``add_messages`` takes it back, and a response's ``output`` items too.
            budget: At most this many tokens; the window is left unchanged (older units are left out of
                this export, the newest messages cut to head + tail if needed). With ``"anthropic"`` it
                holds the user turns of ``"(continuing the conversation)"`` the export inserts too.
            tools: With ``"anthropic"``, the request's tool definitions
                (``tool_manager.get_tool_schemas("anthropic", cache_control=...)``): the dict holds them as
                ``"tools"``, and their prompt-cache breakpoints count in the 4 a request takes (kept first:
                the API caches tools, then system, then messages; see
                :func:`~context_manager.core.provider_formats.to_anthropic_messages`). Their tokens (each
                definition's JSON, counted with the window's tokenizer) count in the budget: ``budget``, or
                the window's ``max_tokens`` when it is ``None``. When messages and tools together exceed
                it, the export leaves out older messages as ``budget`` does (the window keeps them all).

        Raises:
            InvalidArgumentError: unknown format or a non-positive budget; ``tools`` with another format,
                or not Anthropic tool definitions the API takes (more than 4 breakpoints of their own ...).
            ContextBudgetError: protected messages alone exceed ``budget``, or with the newest messages
                cut as far as the counter allows (with ``tools``: their tokens and the messages' together
                exceed ``budget`` or ``max_tokens``).
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        window = self._require_ready("get_context")
        if format not in ("openai", "anthropic", "openai_responses"):
            raise InvalidArgumentError("format", format, FORMATS)
        if tools is not None:  # checked before the selection, which may raise ContextBudgetError
            to_provider_format((), format, tools=tools)
        if format != "anthropic" or (tools is None and budget is None):
            return to_provider_format(window.select(budget), format)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
            raise InvalidArgumentError("budget", budget, "a positive integer or None")
        return _anthropic_within(window, budget, tools)

    def get_context_summary(self) -> dict[str, Any]:
        """Return figures about the context window.

        Keys: ``message_count``, ``token_count``, ``max_tokens``, ``utilization`` (0..1),
        ``compression_count``, ``target_tokens``, ``compression_ratio``, ``compression_enabled``,
        ``pinned_count``, ``pending_tool_calls``, ``has_summary``, ``archived_evicted_count``,
        ``token_encoding``.

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        window = self._require_ready("get_context_summary")
        token_count = window.token_count
        return {
            "message_count": len(window),
            "token_count": token_count,
            "max_tokens": window.max_tokens,
            "utilization": token_count / window.max_tokens,
            "compression_count": window.compression_count,
            "target_tokens": window.target_tokens,
            "compression_ratio": self.config.compression_ratio,
            "compression_enabled": window.enable_compression,
            "pinned_count": window.pinned_count,
            "pending_tool_calls": len(window.pending_tool_calls),
            "has_summary": window.summary is not None,
            "archived_evicted_count": len(window.evicted_messages),
            "token_encoding": window.counter.encoding_name,
        }

    @property
    def compression_history(self) -> list[dict[str, Any]]:
        """One dict per compression, oldest first (readable at any time; empty before ``initialize()``).

        Keys: ``tokens_before``, ``tokens_after``, ``messages_before``, ``messages_after``,
        ``removed_count``, ``truncated_count``, ``summary_tokens``, ``duration_ms``, ``timestamp``,
        ``strategy`` (``"extractive"``, ``"custom"``, ``"custom_failed_fallback_extractive"``),
        ``target_tokens``, ``error``. The newest 100 compressions (``COMPRESSION_HISTORY_LIMIT``), the same
        before and after a persisted conversation resumes (the ones before are in its records);
        ``get_context_summary()["compression_count"]`` counts all.
        """
        if self._window is None:
            return []
        return [record.to_dict() for record in self._window.compression_history]

    # -- persisted conversations ----------------------------------------------------------------------

    @property
    def conversation_id(self) -> str | None:
        """The persisted conversation this manager writes (the argument, else ``config.conversation_id``)."""
        if self._conversation_id_argument is not None:
            return self._conversation_id_argument
        return self.config.conversation_id

    @property
    def user_id(self) -> str | None:
        """The user whose memory this manager writes and searches (``None``: the default namespace)."""
        return self._user_id

    @property
    def conversation_store(self) -> ConversationStore | None:
        """The store of persisted conversations, once a conversation was opened (``None`` before).

        On the embedded backend it is ``conversations.sqlite3`` under ``storage_path``; the health
        checker's ``storage`` check watches its file and auto-recovery restores it like the memory files.
        """
        return self._conversation_store

    @property
    def conversation_version(self) -> int:
        """How many changes of the persisted conversation are stored and in this window (0 without one)."""
        conversation = self._conversation
        return 0 if conversation is None else conversation.version

    async def _recover(self, error: ConversationConflictError) -> None:
        """Put the window back to what storage holds after the overflow check found another writer's change.

        The check runs under the window's lock, so the reload waits for the call that met it to end. The
        reload runs to its end even if the caller is cancelled meanwhile (as after a refused write): else
        the conversation stayed stale, every later change refused until :meth:`reload`.
        """
        conversation = self._conversation
        if conversation is not None:
            await to_the_end(asyncio.ensure_future(conversation.recover(error)))

    def _note_pin(self, conversation: PersistedConversation) -> None:
        """Remember the pin just journaled: :meth:`flush` raises its refusal, whoever wrote it."""
        pins = self._unflushed_pins
        pins.append(conversation.journaled)
        if len(pins) > 1024:  # pins never flushed: their refusals are long forgotten too
            del pins[:-1024]

    def _sync_soon(self) -> None:
        """Store a change made by a synchronous call (a pin) in the background.

        Where no event loop runs (a synchronous script between two ``asyncio.run`` calls), the change
        stays pending: the next write, :meth:`flush` or :meth:`cleanup` stores it.
        """
        conversation = self._conversation
        if conversation is None or conversation.is_stale:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return

        pin = conversation.journaled
        owner = weakref.ref(self)  # a manager dropped meanwhile is freed (see core.unclosed)

        async def sync() -> None:
            try:
                await conversation.sync()
            except ContextManagerError as error:
                # reported once, to a caller: a refusal by flush() (or, never flushed, logged by cleanup());
                # a storage failure leaves the pin pending, and the next write, flush() or cleanup() meets it
                logger.debug(
                    "conversation %r: a pin's background write failed (%s)",
                    conversation.conversation_id,
                    type(error).__name__,
                )
            refused = conversation.refusal_of([pin])  # dropped, by this write or another task's
            manager = owner()
            if refused is None or manager is None:
                return
            if manager._pin_refusal is None and pin in manager._unflushed_pins:
                manager._pin_refusal = refused  # flush() raises it (or cleanup() logs it), however late

        conversation._start(sync())

    async def _open_conversation_store(self) -> ConversationStore:
        """The store of persisted conversations next to memory (shared with it: see ``lease_memory``)."""
        store = self._conversation_store
        if store is not None:
            return store
        lease = self._memory_lease
        if lease is None:
            raise LifecycleError("the conversations store: the manager is not initialized")
        store = await lease.conversation_store()
        self._conversation_store = store
        return store

    async def reload(self) -> int:
        """Load the persisted conversation as storage holds it now; return its version.

        To see another worker's messages. After a
        :class:`~context_manager.core.errors.ConversationConflictError` (another manager, in this or
        another process, changed the conversation first) the manager has already reloaded by itself;
        this is needed only when that automatic reload failed (the error's ``needs_reload``). Changes
        of this manager not stored yet (a pin, written in the background) are stored first; if another
        manager wrote first they are dropped (an awaited ``add_message`` is always stored).

        Raises:
            ConfigurationError: the manager has no conversation id.
            StorageError: storage cannot be read (the window stays as it was).
            ConversationAccessError: the conversation was deleted and created again by another end
                user's manager (nothing of it is loaded; the window stays as it was).
            InvalidArgumentError: ``max_tokens`` cannot hold the stored window, even compressed (see
                :meth:`initialize`).
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("reload")
        conversation = self._conversation
        if conversation is None:
            raise ConfigurationError(
                "conversation_id",
                None,
                "a conversation id (EnhancedContextManager(config, conversation_id=...))",
            )
        self._unflushed_pins = []  # their outcome is this reload's (it drops them if they are refused)
        self._pin_refusal = None
        if conversation.pending and not conversation.is_stale:
            # a pin made just before: its background write may not have run yet, and the reload would
            # drop it as if another manager had written first
            with contextlib.suppress(ConversationConflictError):
                await conversation.sync()
        return await conversation.reload()

    async def list_conversations(
        self, *, limit: int | None = None, before: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The persisted conversations in the storage backend, most recently changed first.

        A manager with a ``user_id`` lists that user's conversations (the ones its managers created); one
        without lists every conversation. Each is a dict with ``conversation_id``, ``version`` (changes
        stored), ``created_at`` and ``updated_at`` (seconds since the epoch) and ``user_id`` (whose it
        is; ``None``: nobody's).

        Example (pages of a chat list)::

            page = await manager.list_conversations(limit=20)
            while page:
                ...
                page = await manager.list_conversations(limit=20, before=page[-1])

        Args:
            limit: At most this many (the most recently changed), e.g. for a list of recent chats;
                ``None`` (default): all of them.
            before: The last conversation of the previous page (a dict this returned, or any mapping with
                its ``updated_at`` and ``conversation_id``): only the ones after it in this order, i.e.
                changed earlier (or at the same time, with a greater id). Paging this way lists each
                conversation once; one changed meanwhile moves to the first page. ``None``: from the start.

        Raises:
            InvalidArgumentError: ``limit`` is not a positive integer or ``None``; ``before`` is not such a
                mapping (or ``None``).
            StorageError: storage cannot be read.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("list_conversations")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidArgumentError("limit", limit, "a positive integer, or None for every conversation")
        after = None if before is None else _page_cursor(before)
        if self._conversation_store is None and not self._conversations_exist():
            return []
        store = await self._open_conversation_store()
        listed = await store.list_conversations(self._user_id, limit=limit, before=after)
        return [info.to_dict() for info in listed]

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a persisted conversation and all its records; return whether it existed.

        Memories written from its evicted messages stay in memory (erase them with the memory API). A
        manager still writing the conversation gets ``ConversationConflictError`` on its next change. A
        manager deleting its own conversation empties its window (changes not stored yet are dropped):
        its next change starts the conversation again. A manager with a ``user_id`` deletes only that
        user's conversations (and nobody's).

        Raises:
            InvalidArgumentError: ``conversation_id`` is not a valid id.
            ConversationAccessError: the conversation belongs to another end user (nothing deleted).
            StorageError: storage cannot be written.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("delete_conversation")
        check_conversation_id(conversation_id)
        if self._conversation_store is None and not self._conversations_exist():
            return False
        store = await self._open_conversation_store()
        deleted = await store.delete(conversation_id, user_id=self._user_id)
        conversation = self._conversation
        if deleted and conversation is not None and conversation.conversation_id == conversation_id:
            # its own: the window empties as storage did (it exported the deleted messages, and its next
            # change was refused, until a reload)
            self._unflushed_pins = []
            self._pin_refusal = None
            try:
                await conversation.reload()
            except ContextManagerError as error:  # the next change is refused and reloads, as before
                logger.warning(
                    "conversation %r deleted; emptying this manager's window failed (%s: %s)",
                    conversation_id,
                    type(error).__name__,
                    error,
                )
        return deleted

    def _conversations_exist(self) -> bool:
        """Whether conversations may be stored (on SQLite: whether the file exists; creating none)."""
        backend = self.memory_manager.backend
        if backend is not None and backend.kind == "postgres":
            return True
        from context_manager.core.conversations.sqlite_store import CONVERSATIONS_FILE_NAME

        return (self.config.resolved_storage_path / CONVERSATIONS_FILE_NAME).exists()

    # -- tools ----------------------------------------------------------------------------------------

    async def execute_tool(self, tool_name: str, /, **kwargs: Any) -> ToolResult:
        """Run a registered tool with keyword arguments (see :class:`ToolManager` for the checks).

        Never raises for tool-side problems: an unknown tool, invalid arguments, a denied permission, a
        rate limit, a timeout or an exception in the tool give ``success=False`` with ``error`` and
        ``error_type``.

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("execute_tool")
        result = await self.tool_manager.execute_tool(tool_name, **kwargs)
        self._record_tool_result(result)
        return result

    async def execute_tool_calls(
        self, calls: Sequence[ToolCall | Mapping[str, Any]], *, content: str = "", thinking: Any = None
    ) -> list[ToolResult]:
        """Run a model's tool calls and append one paired tool result message per call to the window.

        The assistant message carrying the calls is added first unless it is already in the window (added
        with ``add_message("assistant", ..., tool_calls=...)``). Calls run concurrently, at most
        ``config.max_concurrent_tool_calls`` at once; results come back in call order. A result longer
        than its tool's ``max_output_tokens`` is cut with a marker in the window only; its full text goes
        to medium-term memory (tags ``tool_output`` and the tool's name), so :meth:`search_memory` finds it.

        Once the tools ran, their results are returned, never lost: results that do not fit in the window
        (protected messages fill it) are replaced, largest first, by ``[tool output omitted: ...]`` and then
        by no text at all (metadata ``omitted: True``), their full text going to memory. The room for that
        is checked before anything runs. Only when messages added while the tools ran took it (protected
        messages, a pin) do the results stay out of the window: still returned and in memory, the calls
        pending (a warning is logged). A call answered or evicted while its tool ran (by
        :meth:`cancel_tool_calls`, say) keeps that answer; its result is returned, not added.

        Calls whose ids answered calls in the window already have (servers that number the calls of each
        response, ``call_0`` every turn) are new calls: the window holds them as ``call_0~2`` (``~3`` ...)
        and their results go with them; the returned results keep the ids given. Refused, as a step run
        twice: the very calls (ids, names, arguments) of the newest assistant message, already answered.

        Args:
            calls: OpenAI ``tool_calls`` items, Anthropic ``tool_use`` blocks or ``ToolCall`` objects.
            content: Text of the assistant message, when it has to be added.
            thinking: Anthropic extended thinking of the assistant message, when it has to be added:
                ``response.content`` (or the response); its ``thinking`` / ``redacted_thinking`` blocks
                go first in that turn of the Anthropic export (see :attr:`Message.thinking`). When the
                calls are already in the window, it must be the thinking their message holds (or none).

        Raises:
            InvalidMessageError: a call has no id or name, or ids repeat, or ``thinking`` is given for
                calls already in the window whose message holds other thinking (it would be lost: give it
                to ``add_message``); nothing changes, nothing runs.
            ToolCallPairingError: the calls are those of the newest assistant message and already ran,
                only part of them is pending, two of them name one pending call (``call_0`` and the
                window's ``call_0~2``), or another ``execute_tool_calls`` is running some of them now
                (nothing runs twice).
            ContextBudgetError: the assistant message and the smallest answer of every call (a result
                with no text) cannot fit: nothing runs, nothing changes.
            ConversationConflictError: the conversation is persisted and another manager changed it
                first. The calls are stored before any tool runs, so this is usually met then: nothing
                runs, and the window holds the stored conversation (run the calls again).
            StorageError: the conversation is persisted and the calls could not be stored: nothing runs;
                the assistant message stays in the window, its calls pending (run them again).
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        window = self._require_ready("execute_tool_calls")
        results = await self._change_and_store(
            lambda store: execute_tool_calls_in_window(
                self.tool_manager,
                window,
                calls,
                content=content,
                thinking=thinking,
                on_truncated=self._remember_tool_output,
                store=store,  # the calls are stored before any tool runs
                recover=self._recover,  # the results are added again after another writer's change
            )
        )
        for result in results:
            self._record_tool_result(result)
        return results

    def pending_tool_calls(self) -> list[ToolCall]:
        """The tool calls in the window that have no result yet, in the order they were made.

        A call stays pending until its result is added; pending calls are never evicted (their result
        must find them), and exports leave them out. After a crash, or a cancelled
        :meth:`execute_tool_calls`, the calls that never got a result are still pending: answer them
        with :meth:`cancel_tool_calls`, or run them again with ``execute_tool_calls(pending)``. Arguments
        are as the window holds them: a tool's sensitive arguments are redacted, so such a call cannot be
        run again from here.

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        return pending_calls_in_window(self._require_ready("pending_tool_calls"))

    async def cancel_tool_calls(
        self, call_ids: Sequence[str] | None = None, *, reason: str = CANCELLED_REASON
    ) -> list[ToolResult]:
        """Answer pending tool calls with a failed result, so the model sees they did not complete.

        Each call gets a tool result message reading ``"Error (cancelled): <reason>"`` (metadata
        ``success: False``, ``error_type: "cancelled"``), added together in the order the calls were made.
        Use it when the results will never come: the worker running the tools was killed (a resumed
        conversation still has its calls pending) or its task was cancelled. Answered calls leave the
        pending set, so their unit can be compressed like any other. Nothing runs.

        Args:
            call_ids: The calls to answer; None (the default) for every pending call.
            reason: The text of each failed result.

        Returns:
            The failed results, one per call (``error_type`` ``ToolErrorType.CANCELLED``).

        Raises:
            InvalidArgumentError: ``call_ids`` is not a list of ids, or ``reason`` is empty.
            ToolCallPairingError: a call id is not pending: unknown, already answered or evicted.
            ContextBudgetError: the results cannot fit (the window is full of protected messages).
            ConversationConflictError: another manager changed the persisted conversation first.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
            (Nothing changes when any of these is raised.)
        """
        window = self._require_ready("cancel_tool_calls")
        return await self._change_and_store(
            lambda store: cancel_tool_calls_in_window(window, call_ids, reason=reason)
        )

    async def _change_and_store(
        self, change: Callable[[Callable[[], Awaitable[None]] | None], Awaitable[_T]]
    ) -> _T:
        """Make a change of several steps to the window, then store it in the persisted conversation.

        ``change`` receives an async ``store()`` that stores its steps so far (the tool calls, before the
        tools run), or ``None`` when the window is not persisted. Stored even when the change fails
        partway (the tool calls' assistant message was added, say): what the window holds is what storage
        holds. :meth:`cleanup` waits for changes in
        flight (tools still running), so their results are stored and what they evict reaches memory.
        """
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changes[end] = asyncio.current_task()
        inside = _CHANGE.set(end)  # seen by the tools it runs (their tasks copy this context)
        try:
            conversation = self._conversation
            if conversation is None:
                return await change(None)
            since = conversation.check_writable()

            async def store() -> None:
                nonlocal since
                try:
                    await conversation.sync(since=since)
                finally:  # stored, or refused and dropped: what comes next is the change's from here
                    since = conversation.journaled

            try:
                try:
                    return await change(store)
                finally:
                    await conversation.sync(since=since)
            except ContextBudgetError as error:
                # refused for lack of room before anything changed (the tool calls' check): on a window
                # another writer moved past, the conflict is the real cause
                try:
                    await conversation.check_current()
                except ConversationConflictError as conflict:
                    await self._recover(conflict)
                    raise conflict from error
                raise
            except ConversationConflictError as error:
                await self._recover(error)
                raise
        finally:
            _CHANGE.reset(inside)
            del self._changes[end]
            end.set_result(None)

    async def _finish_changes(self) -> None:
        """Wait for the tool-call changes in flight; cancel those still running after the tools' time limit.

        A tool runs for at most ``max_tool_timeout`` seconds, but an approval callback may wait for a
        person: past that limit (plus a second) the change is cancelled (its calls stay pending, as after a
        crash: ``cancel_tool_calls`` answers them in a resumed conversation).
        """
        # code inside a change (a tool calling cleanup(): an "end session" tool) does not wait for it
        inside = _CHANGE.get()
        waiting = {end: task for end, task in self._changes.items() if end is not inside}
        if not waiting:
            return
        _, late = await asyncio.wait(waiting, timeout=self.config.max_tool_timeout + 1.0)
        for end in late:
            task = waiting[end]
            if task is not None:
                task.cancel()
        if late:
            logger.warning("cleanup: %d tool-call changes still running were cancelled", len(late))
            await asyncio.wait(late, timeout=5.0)  # a change that ignores its cancellation is left

    async def _remember_tool_output(self, call: ToolCall, result: ToolResult, full_text: str) -> None:
        """Keep the full text of a tool output cut in the window in memory.

        Medium-term memory; an output over 64 KB goes to the long-term tier instead, which lives on disk
        and is indexed in a worker thread: megabyte outputs neither stay in the process nor hold the loop.
        """
        try:
            await self.memory_manager.add_memory(
                full_text,
                importance=0.3,
                tags=["tool_output", call.name],
                metadata={"tool_call_id": call.id, "tool_name": call.name, "success": result.success},
                tier="long" if len(full_text) > _LARGE_OUTPUT_CHARS else "medium",
                source="tool",
                user_id=self._user_id,
            )
        except ContextManagerError as error:  # the results already exist; losing the copy is not fatal
            logger.warning(
                "could not store the full output of tool call %s: %s", call.id, type(error).__name__
            )

    def _record_tool_result(self, result: ToolResult) -> None:
        """Record a tool call as an ``execute_tool`` operation in the running monitors and our own.

        Per-tool figures are in ``tool_manager.get_tool_stats()``; the error recorded is the
        ``error_type`` only (never arguments or output). A call refused for its input (an unknown tool,
        invalid arguments, permission denied, rate limited) is recorded as rejected, not as a failure.
        """
        error_type = result.error_type
        record_library_operation(
            "execute_tool",
            result.execution_time,
            result.success,
            own_monitor=getattr(self, "performance_monitor", None),
            error=None if error_type is None else f"{error_type.value} ({result.tool_name})",
            rejected=error_type in REFUSED_TOOL_CALLS,
        )

    # -- memory ---------------------------------------------------------------------------------------

    def _memory_id_namespace(self) -> str | None:
        """What the memory ids of this manager's evicted messages derive from (see :func:`_remember_evicted`).

        On a persisted conversation, the conversation (and the user, when there is one: a conversation
        resumed by another user's manager writes that user's own copy rather than colliding with the first
        user's); else none (random ids).
        """
        namespace = self.conversation_id
        user_id = self._user_id
        if namespace is not None and user_id is not None:
            namespace = f"{user_id}\x00{namespace}"  # neither id may hold a NUL: unambiguous
        return namespace

    async def flush(self) -> None:
        """Write every evicted message still queued to memory, then flush memory (``memory_manager.flush()``).

        ``add_message`` returns before what its compression evicted is indexed in memory (a background
        writer does it, a small batch per event-loop step); :meth:`search_memory` and :meth:`cleanup`
        wait for it, and so does this. On a persisted conversation it first stores the changes not yet
        stored (a pin, written in the background, or made where no event loop ran).

        Raises:
            StorageError: the messages could not be written (they stay queued in
                ``context_window.evicted_messages`` and the writer tries again).
            ConversationConflictError: storing the conversation's pending changes met another
                manager's change (they were dropped by the reload), or the conversation is stale.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        window = self._require_ready("flush")
        conversation = self._conversation
        if conversation is not None:  # what this process changed is written; an old refusal is not raised
            pins, self._unflushed_pins = self._unflushed_pins, []
            held, self._pin_refusal = self._pin_refusal, None
            await conversation.sync(since=conversation.journaled)
            # a pin's background write may have met another writer's change before this flush ran: the
            # reload dropped the pin, and only this call can say so
            refused = conversation.refusal_of(pins) or held
            if refused is not None:
                raise refused
        await window.flush()
        if self._eviction_writer is not None:
            await self._eviction_writer.flush()
        await self.memory_manager.flush()

    async def _await_evictions(self) -> None:
        """Let the eviction writer store what is queued, so a search sees every evicted message."""
        writer, window = self._eviction_writer, self._window
        if writer is None or window is None or not len(window.evicted_queue):
            return
        conversation = self._conversation
        if conversation is not None and window.evicted_queue.held and not conversation.is_stale:
            # a compression not stored yet (the one fitting a resumed window is stored with the next
            # write): what it evicted reaches memory once its record is stored, so store it now
            try:
                await conversation.sync(since=conversation.journaled)
            except ContextManagerError as error:  # refused: those messages are back in the window
                logger.info("searching before a compression is stored (%s)", type(error).__name__)
        try:
            await writer.flush()
        except Exception as error:  # search what is stored; the writer retries the rest
            logger.warning(
                "searching without %d evicted messages not yet in memory (%s)",
                len(window.evicted_queue),
                type(error).__name__,
            )

    @monitored_operation("add_memory")
    async def add_memory(
        self,
        content: str,
        importance: float = 0.5,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        memory_id: str | None = None,
    ) -> Memory:
        """Store a memory for this manager's :attr:`user_id` (durably) and return it.

        The memory :meth:`search_memory` of this manager (and of any manager of the same user) finds:
        ``memory_manager.add_memory(content)`` without ``user_id`` writes the default namespace instead,
        which a manager with a ``user_id`` never searches.

        Example::

            async with EnhancedContextManager(config, user_id="ana") as manager:
                await manager.add_memory("Ana prefers the window seat", tags=["travel"])
                [found] = await manager.search_memory("seat preference", tags=["travel"])

        Args:
            content: The text to remember (non-empty).
            importance: 0 (trivial) to 1 (critical); see :meth:`MemoryManager.add_memory`.
            tags: Labels, for ``search_memory(..., tags=...)``.
            metadata: JSON-serialisable data kept with the memory.
            memory_id: Your own id, which makes the add idempotent (by default a fresh random id).

        Returns:
            A copy of the stored memory.

        Raises:
            InvalidMemoryError: a bad argument; nothing is stored.
            StorageError: the write failed.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("add_memory")
        add = self.memory_manager.add_memory(
            content, importance, tags, metadata, user_id=self._user_id, memory_id=memory_id
        )
        if self._telemetry is None:
            return await add
        attributes = memory_add_attributes(importance, tags)  # as the MCP tool memory_add records them
        return await traced_call(self._telemetry, "add_memory", add, attributes)

    @monitored_operation("search_memory")
    async def search_memory(
        self, query: str, limit: int = 10, *, tags: Sequence[str] | None = None
    ) -> list[Memory]:
        """Search every memory tier (including evicted context) for ``query``; best first.

        Messages evicted from the window are written to memory in the background; the search first waits
        until those already evicted are stored, so it finds every one of them. It sees the memories of
        the manager's :attr:`user_id` only (the default namespace without one); to search another user's,
        or everyone's, call ``memory_manager.search_memory(query, user_id=...)``.

        Args:
            query: What to look for (plain text).
            limit: At most this many results.
            tags: Only memories carrying at least one of these tags (``None``: no filter).

        Raises:
            InvalidMemoryError: ``query`` is not a string, ``limit`` is negative or ``tags`` is not a list
                of tags.
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("search_memory")
        await self._await_evictions()
        user_id = self._user_id
        search = self.memory_manager.search_memory(query, limit, tags=tags, user_id=user_id)
        if self._telemetry is None:
            return await search
        return await traced_search(self._telemetry, search, limit)

    # -- operations -----------------------------------------------------------------------------------

    def get_system_status(self) -> dict[str, Any]:
        """Return the state of every subsystem (a section only for the subsystems that exist).

        Keys: ``state`` (``"new"``, ``"ready"``, ``"closed"``), ``timestamp``, and ``context`` (the context
        summary), ``memory`` (``initialized``, ``user_id`` (the manager's, ``None`` without one),
        ``storage_path`` (on PostgreSQL the DSN without its password), ``bytes_on_disk``), ``tools``
        (``tool_manager.get_tool_stats()``), ``conversation`` (with a conversation id:
        ``conversation_id``, ``version``, ``pending_changes`` not yet stored, ``stale``, ``backend``),
        ``monitor`` (the monitor's current metrics, ``rejected`` the calls refused for bad input, and
        advice) and
        ``health`` (``periodic``, the latest check's ``status``/``health_score``/failing checks and the
        number of repairs; ``memory`` also has ``backend`` and, on PostgreSQL, ``location``, the DSN without
        its password), and ``summarizer`` when a custom summarizer is in use (its circuit breaker:
        ``state``, ``consecutive_failures``, ``retry_in``, ``trips`` ...; see ``SummarizerGuard.status``).
        For memory counts use ``await memory_manager.get_memory_stats()``.
        """
        status: dict[str, Any] = {"state": self._state, "timestamp": time.time()}
        if self._window is not None and self._state == "ready":
            status["context"] = self.get_context_summary()
        conversation = self._conversation
        if conversation is not None:
            status["conversation"] = {
                "conversation_id": conversation.conversation_id,
                "version": conversation.version,
                "pending_changes": conversation.pending,
                "stale": conversation.is_stale,
                "backend": conversation.store.kind,
            }
        memory = getattr(self, "memory_manager", None)
        if memory is not None:
            backend = memory.backend
            on_postgres = memory.config.memory_backend == "postgres"
            sizes = {"log": 0, "database": 0}
            # on PostgreSQL no file holds the memories: the files under storage_path (an embedded store used
            # before, say) are not its size, and the path is not where they are
            files = () if on_postgres else (("log", LOG_FILE_NAME), ("database", DATABASE_FILE_NAME))
            for name, file_name in files:
                with contextlib.suppress(OSError):
                    sizes[name] = (memory.storage_path / file_name).stat().st_size
            sizes["total"] = sum(sizes.values())
            location = str(memory.storage_path)
            if backend is not None and backend.kind == "postgres":
                location = backend.location
            elif on_postgres:  # not opened yet: the DSN it will open, without its password
                from context_manager.core.memory.postgres.database import redact_dsn

                dsn = memory.config.postgres_dsn
                location = "" if dsn is None else redact_dsn(dsn.get_secret_value())
            status["memory"] = {
                "initialized": memory.is_initialized,
                "user_id": getattr(self, "_user_id", None),
                "backend": self.config.memory_backend,
                "storage_path": location,  # the DSN without its password with memory_backend="postgres"
                "bytes_on_disk": sizes,  # the embedded files (0 with memory_backend="postgres")
            }
            if on_postgres:
                status["memory"]["location"] = location
        tools = getattr(self, "tool_manager", None)
        if tools is not None:
            status["tools"] = tools.get_tool_stats()
        monitor = self.performance_monitor
        if monitor is not None:
            metrics = monitor.get_current_metrics()
            status["monitor"] = {
                "monitoring": monitor.is_monitoring,
                "total_operations": metrics.total_operations,
                "error_rate": metrics.error_rate,
                "rejected": metrics.rejected,
                "p95_latency_ms": metrics.p95_latency_ms,
                "memory_usage_mb": metrics.memory_usage_mb,
                "cpu_percent": metrics.cpu_percent,
                "event_loop_lag_ms": metrics.event_loop_lag_ms,
                "health_score": metrics.health_score,
                "recommendations": monitor.recommendations(),
            }
        guard = getattr(self, "_summarizer_guard", None)
        if guard is not None:
            status["summarizer"] = guard.status()
        checker = self.health_checker
        if checker is not None:
            last = checker.last_status
            status["health"] = {
                "periodic": checker.is_running,
                "check_interval": checker.check_interval,
                "status": None if last is None else last.status.value,
                "health_score": None if last is None else last.health_score,
                "failing_checks": [] if last is None else [result.name for result in last.failing_checks],
                "checked_at": None if last is None else last.timestamp,
                "recoveries": len(checker.recovery_history),
            }
        return status

    async def optimize_system(self, *, consolidate: bool = True) -> dict[str, Any]:
        """Tidy storage and caches; return what was done with sizes before and after.

        Memory: persist pending access updates, compact the medium-term log, merge the FTS5 index
        segments, checkpoint the SQLite WAL (``memory_manager.optimize()``), then merge near-duplicate
        memories of the manager's :attr:`user_id` (``consolidate_memories(user_id=...)``; reversible with
        ``undo_consolidation``); the memory counts reported are that user's too. Tools: drop
        expired cache entries and stale rate-limit state. Process: a garbage collection.

        Args:
            consolidate: Also merge near-duplicate memories.

        Returns:
            ``memory`` (``log_bytes_before``/``after``, ``database_bytes_before``/``after``,
            ``memories_before``/``after`` (active ones), ``superseded_after``, ``consolidated_count``),
            ``tools`` (``cache_entries_before``/
            ``after``, ``expired_cache_entries``), ``process`` (``memory_mb_before``/``after``,
            ``gc_collected``) and ``duration_ms``.

        Raises:
            LifecycleError: before ``initialize()`` or after ``cleanup()``.
        """
        self._require_ready("optimize_system")
        started = time.perf_counter()
        monitor = self.performance_monitor or PerformanceMonitor(collect_library_operations=False)
        memory_before_mb = monitor.get_current_metrics().memory_usage_mb
        result: dict[str, Any] = {}
        memory = self.memory_manager
        user_id = self._user_id
        before = await memory.get_memory_stats(user_id=user_id)
        memory_report = dict(await memory.optimize())
        memory_report.pop("duration_ms", None)
        consolidated = 0
        if consolidate:
            consolidated = int((await memory.consolidate_memories(user_id=user_id))["consolidated_count"])
        after = await memory.get_memory_stats(user_id=user_id)
        memory_report.update(  # active memories: superseded originals stay on disk until cleanup
            memories_before=before["total_memories"] - before["superseded"],
            memories_after=after["total_memories"] - after["superseded"],
            superseded_after=after["superseded"],
            consolidated_count=consolidated,
        )
        result["memory"] = memory_report
        tools = self.tool_manager
        entries_before = tools.get_tool_stats()["cache"]["entries"]
        expired = tools.purge_expired_cache()
        result["tools"] = {
            "cache_entries_before": entries_before,
            "cache_entries_after": tools.get_tool_stats()["cache"]["entries"],
            "expired_cache_entries": expired,
        }
        collected = gc.collect()
        monitor.sample_now()  # a fresh RSS reading after the work
        result["process"] = {
            "memory_mb_before": memory_before_mb,
            "memory_mb_after": monitor.get_current_metrics().memory_usage_mb,
            "gc_collected": collected,
        }
        result["duration_ms"] = (time.perf_counter() - started) * 1000.0
        return result


def _weak_callback(method: Callable[[SummaryReport], None]) -> Callable[[SummaryReport], None]:
    """``method`` (bound) called through a weak reference to its object: nothing once that is freed."""
    reference = weakref.WeakMethod(method)

    def call(report: SummaryReport) -> None:
        bound = reference()
        if bound is not None:
            bound(report)

    return call


async def _stop_operations(
    sampler: MemorySizeSampler | None, checker: HealthChecker | None, monitor: PerformanceMonitor | None
) -> None:
    """Stop a manager's memory sampler, health checker and monitor (each task cancelled and awaited)."""
    if sampler is not None:
        await sampler.stop()
    if checker is not None:
        # stopped on purpose: a later health check must not see a dead task to restart
        checker.unwatch_background_task("health_checks")
        await checker.stop()
    if monitor is not None:
        await monitor.stop_monitoring()


async def _stop_storage(
    writer: EvictionWriter | None, conversation: PersistedConversation | None, lease: MemoryLease | None
) -> None:
    """Write what is queued to memory, close the conversation, give the shared store back (in this order)."""
    if writer is not None:
        await writer.stop()
    if conversation is not None:
        try:
            await conversation.mark_indexed_if_drained()
        except ContextManagerError as error:
            logger.warning(
                "conversation %r: indexing watermark not moved (%s)", conversation.conversation_id, error
            )
        await conversation.close()
    if lease is not None:
        await lease.release()


@dataclasses.dataclass(slots=True)
class _Started:
    """What an initialized manager started, held apart from it (none of it refers to the manager).

    A manager garbage-collected without ``cleanup()`` is freed; its finalizer holds this, and the close it
    schedules on the loop (:func:`_close_collected`) stops and stores what cleanup() would have.
    """

    conversation_id: str | None
    # weakly: they hold the user's tools and eviction hook, which may refer to the manager (a tool searching
    # its memory); held here they kept it alive for ever. Freed with it, they have nothing running
    window: weakref.ref[ContextWindow] | None
    tool_manager: weakref.ref[ToolManager]
    writer: EvictionWriter | None
    conversation: PersistedConversation | None
    lease: MemoryLease | None
    checker: HealthChecker | None
    monitor: PerformanceMonitor | None
    sampler: MemorySizeSampler | None
    owned_summarizer: LLMSummarizer | None


def _collected(loop: asyncio.AbstractEventLoop, started: _Started, pid: int) -> None:
    """The finalizer of a manager collected while open: warn, and hand its close to its loop."""
    if pid != forks.pid:  # a forked child's copy: the parent's to close (as cleanup() there does)
        return
    conversation = "" if started.conversation_id is None else f" (conversation {started.conversation_id!r})"
    if close_in_background(loop, "EnhancedContextManager", functools.partial(_close_collected, started), pid):
        warn_unclosed("EnhancedContextManager", conversation)
    else:  # its tasks ended with the loop; the store it held stays open (see shared_store._refusal)
        warn_unclosed(
            "EnhancedContextManager", conversation, "its event loop has ended: nothing could be closed"
        )


async def _close_collected(started: _Started) -> None:
    """What ``cleanup()`` does, for a manager already freed: store what it evicted and changed, release."""
    await _stop_operations(started.sampler, started.checker, started.monitor)
    tool_manager = started.tool_manager()
    if tool_manager is not None:  # a tool left running after ignoring its cancellation holds it
        await tool_manager.cleanup()
    window = None if started.window is None else started.window()
    if window is not None:  # an eviction-hook delivery still running holds it
        await window.drain()
    conversation = started.conversation
    if conversation is not None and conversation.pending and not conversation.is_stale:
        try:  # a pin made just before the manager was dropped
            await conversation.sync()
        except ContextManagerError as error:
            logger.warning(
                "conversation %r: last changes not stored (%s)", conversation.conversation_id, error
            )
    await _stop_storage(started.writer, conversation, started.lease)
    if started.owned_summarizer is not None:
        try:
            await started.owned_summarizer.cleanup()
        except Exception as error:  # closing an HTTP client must not fail the close
            logger.warning("closing the summarizer's client failed (%s)", type(error).__name__)


async def _remember_evicted(
    memory: MemoryManager,
    messages: list[Message],
    *,
    user_id: str | None,
    session_id: str,
    id_namespace: str | None,
) -> None:
    """Write evicted messages to medium-term memory (invariant 4): the eviction writer's batches."""
    await memory.remember_messages(
        messages, user_id=user_id, session_id=session_id, id_namespace=id_namespace
    )


async def _mark_indexed(conversation: PersistedConversation) -> None:
    """The eviction writer drained its queue: move the conversation's indexing watermark up.

    Else it moved only at ``cleanup()``, and every reload (after another worker's change) queued every
    message evicted since the manager opened, to write them all to memory again.
    """
    try:
        await conversation.mark_indexed_if_drained()
    except ContextManagerError as error:  # moved by the next drain, or by cleanup()
        logger.debug(
            "conversation %r: indexing watermark not moved (%s)", conversation.conversation_id, error
        )


def _calls_without_content(item: Mapping[str, Any]) -> bool:
    """An assistant message of tool calls with no ``content`` key (Chat Completions makes it optional)."""
    role = item["role"]
    return bool(item.get("tool_calls")) and isinstance(role, str) and role.strip().lower() == Role.ASSISTANT


def _without_empty_response_fields(role: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the empty fields an OpenAI SDK response message's dump carries (see below)."""
    if role != Role.ASSISTANT:
        return options
    return {
        key: value
        for key, value in options.items()
        # None, [], "" and {}: not used; annotations (a search model's url citations) are output only,
        # which no request takes back (the Responses API import leaves its text parts' out too). But an
        # empty reasoning_content is kept: DeepSeek's thinking mode wants the field back on a turn that
        # called tools even when its reasoning was empty, and "" is not "absent"
        if key not in _OPENAI_RESPONSE_FIELDS
        or (value and key not in _IGNORED_RESPONSE_FIELDS)
        or (key == "reasoning_content" and value == "" and type(value) is str)
    }


def _with_reasoning_kept(options: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's options with its reasoning fields moved into its ``metadata``.

    Under :data:`~context_manager.core.messages.REASONING_METADATA_KEY`, as given (the empty ones are gone
    already); the message checks them (a bad one is refused naming its field).
    """
    kept = {key: options[key] for key in REASONING_FIELDS if key in options}
    if not kept:
        return options
    check_reasoning(kept, Role.ASSISTANT, given_as_fields=True)
    moved = {key: value for key, value in options.items() if key not in kept}
    metadata = moved.get("metadata")
    if metadata is None or isinstance(metadata, dict):  # anything else: refused as it is
        earlier = (metadata or {}).get(REASONING_METADATA_KEY)
        if isinstance(earlier, dict):  # given in the metadata too: the fields given as such win
            kept = {**earlier, **kept}
        moved["metadata"] = {**(metadata or {}), REASONING_METADATA_KEY: kept}
    return moved


def check_constructor_arguments(name: str, config: object, options: Mapping[str, object]) -> None:
    """Refuse a ``config`` that is not a :class:`ContextManagerConfig`, and any unknown keyword.

    ``EnhancedContextManager(max_tokens=4000)`` raised Python's ``TypeError: ... got an unexpected keyword
    argument 'max_tokens'`` and ``EnhancedContextManager({"max_tokens": 4000})`` said only what type was
    allowed: both now say that settings go in a ``ContextManagerConfig``. ``name`` is the class created.
    """
    if config is not None and not isinstance(config, ContextManagerConfig):
        hint = None
        if isinstance(config, Mapping):
            hint = f"settings go in a ContextManagerConfig: {name}(ContextManagerConfig(**settings))"
        raise InvalidArgumentError("config", config, "a ContextManagerConfig or None", detail=hint)
    if not options:
        return
    keyword, value = next(iter(options.items()))
    parameters = inspect.signature(EnhancedContextManager.__init__).parameters.values()
    keywords = [parameter.name for parameter in parameters if parameter.kind is parameter.KEYWORD_ONLY]
    keywords.insert(0, "config")
    allowed = "one of " + ", ".join(keywords)
    if keyword in ContextManagerConfig.model_fields:
        hint = (
            f"{keyword} is a ContextManagerConfig option: {name}(ContextManagerConfig({keyword}={value!r}))"
        )
    else:
        close = difflib.get_close_matches(keyword, [*keywords, *ContextManagerConfig.model_fields], 1)
        hint = f"unknown keyword; did you mean {close[0]}?" if close else "unknown keyword"
    raise InvalidArgumentError(keyword, value, allowed, detail=hint)


def _new_message(role: str, content: Any, options: dict[str, Any]) -> Message:
    """Validate ``add_message``'s keywords and build the message (nothing is changed on error).

    An assistant message with tool calls may have ``None`` content, as the Chat Completions format (our
    OpenAI export, the SDK's ``message.model_dump()``) gives it: it is stored as empty text. The SDK's
    dump of an assistant message also carries ``refusal``, ``annotations``, ``audio`` and
    ``function_call``: ignored when empty; a refusal with no content is the message's text; annotations
    (url citations) are ignored whatever they hold: output only, no request takes them back. The
    reasoning an OpenAI-compatible server adds to an assistant message (``reasoning_content`` of DeepSeek
    and vLLM, ``reasoning`` of vLLM and OpenRouter, OpenRouter's ``reasoning_details``) is kept, when not
    empty (``reasoning_content`` also when ``""``, which DeepSeek wants back as it came), in the message's
    metadata under ``REASONING_METADATA_KEY``: the OpenAI export writes it back
    (DeepSeek's thinking mode refuses a request without the reasoning of a turn that called tools). Any
    other value of them is refused as an unknown keyword (the window has nowhere to keep it).
    """
    if options and not _MESSAGE_OPTIONS.issuperset(options):
        options = _without_empty_response_fields(role, options)
        if content is None and role == Role.ASSISTANT and isinstance(options.get("refusal"), str):
            content = options.pop("refusal")  # a refusal is what the assistant said
        if role == Role.ASSISTANT:
            options = _with_reasoning_kept(options)
    if options and not _MESSAGE_OPTIONS.issuperset(options):
        unknown = sorted(set(options) - _MESSAGE_OPTIONS)
        close = difflib.get_close_matches(unknown[0], sorted(_MESSAGE_OPTIONS), 1)  # pin= for pinned=
        raise InvalidArgumentError(
            unknown[0],
            options[unknown[0]],
            "one of " + ", ".join(sorted(_MESSAGE_OPTIONS)),
            detail=f"unknown keyword; did you mean {close[0]}?" if close else None,
        )
    if content is None and role == Role.ASSISTANT and options.get("tool_calls"):
        content = ""
    elif type(content) is not str and isinstance(content, list | tuple):  # Chat Completions content parts
        content = chat_completions_text(content, "content")
    return Message.create(role, content, **options)


def _anthropic_within(
    window: ContextWindow, budget: int | None, tools: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """The Anthropic request of the window within ``budget`` (its ``max_tokens`` if ``None``), ``tools`` in.

    The request's cost: its messages as the window counts them, the user turns the export inserts
    (:data:`ANTHROPIC_CONTINUATION_TEXT`) and each tool definition's JSON. When it exceeds the budget,
    the selection aims lower by the excess (a smaller one may need an inserted turn the first did not).
    """
    field, limit = ("budget", budget) if budget is not None else ("max_tokens", window.max_tokens)
    counter = window.counter
    definitions = anthropic_request((), tools=tools)[0].get("tools", [])
    tool_tokens = tool_definitions_tokens(definitions, counter.count)
    filler_tokens = counter.count_message(Message.create("user", ANTHROPIC_CONTINUATION_TEXT))
    room = limit - tool_tokens
    required = tool_tokens + 1  # tools alone leaving no room
    for _ in range(_BUDGET_ATTEMPTS):
        if room <= 0:
            break
        try:
            if room >= window.token_count:
                selected, tokens = list(window.messages), window.token_count
            else:
                selected = window.select(room)
                tokens = sum(m.token_count or counter.count_message(m) for m in selected)
                tokens += REPLY_PRIMING_TOKENS if selected else 0
        except ContextBudgetError as error:
            required = error.required_tokens + limit - room
            break
        body, fillers = anthropic_request(selected, tools=tools)
        cost = tokens + tool_tokens + fillers * filler_tokens
        if cost <= limit:
            return body
        room -= cost - limit
        required = cost
    what = f"the {len(definitions)} tools' definitions take {tool_tokens} tokens, and " if definitions else ""
    raise ContextBudgetError(
        f"{field}: got {limit}; allowed at least {required}: {what}system, pinned and critical messages "
        "plus the newest messages cut as far as allowed do not fit",
        required_tokens=max(required, limit + 1),
        max_tokens=limit,
    )


_BUDGET_ATTEMPTS = 4
"""Selections :func:`_anthropic_within` tries, each aiming lower by what the last one exceeded."""
