"""``SyncContextManager``: the blocking form of :class:`~context_manager.EnhancedContextManager`.

For synchronous code: a Flask or Django (WSGI) view, a thread pool, a script. Each
``SyncContextManager`` wraps an ``EnhancedContextManager`` that lives on one event loop shared by the
whole process, run by a daemon thread named ``context-manager-loop`` (started on first use, a new one
in a forked child). Every method blocks the calling thread until the loop has run the call. Because
all of a process's ``SyncContextManager`` objects live in that one loop, the managers of many threads
share the embedded store as the managers of one event loop do (``asyncio.run`` per request instead
gives each request a loop of its own, and the second request at once gets ``StorageLockedError``).

Example:
    >>> with SyncContextManager(config, conversation_id="chat-ana", user_id="ana") as manager:
    ...     manager.add_message("user", "Book a table for two.")
    ...     messages = manager.get_context(format="openai")

Rules of the facade:

* calling it from a thread that runs an event loop (async code, or the loop thread itself: an eviction
  hook, an async tool) raises :class:`~context_manager.core.errors.LifecycleError`: blocking there would
  stall that loop (or deadlock); async code uses ``EnhancedContextManager`` and ``await``;
* errors come out with their own types and messages (the ``ContextManagerError`` subclasses the async
  methods document);
* a ``KeyboardInterrupt`` while a call waits cancels that call on the loop, then is raised;
* managers still open when the interpreter exits are cleaned up then (at most
  :data:`EXIT_CLEANUP_TIMEOUT` seconds), so what compression evicted reaches memory: as the main thread
  ends, before other threads are joined and ``concurrent.futures`` stops the thread pools storage
  needs (join the threads still using a manager before the main thread returns); one garbage-collected
  without ``close()`` is cleaned up in the background then (with a ``ResourceWarning``);
* a manager made before ``os.fork()`` is refused in the child (``LifecycleError``): make new ones there.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.process  # noqa: F401 - its exit hook too (see _register_exit_hook)
import concurrent.futures.thread  # its exit hook must be registered before ours (ours runs first)
import contextlib
import inspect
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Never, ParamSpec, TypeVar, cast, overload

from context_manager.core.enhanced_context_manager import (
    NOT_GIVEN,
    EnhancedContextManager,
    check_constructor_arguments,
)
from context_manager.core.errors import LifecycleError
from context_manager.core.tool_system.window_calls import CANCELLED_REASON

if TYPE_CHECKING:
    from context_manager.core.compression import Summarizer
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.context_window import ContextWindow, EvictionHook
    from context_manager.core.conversations.store import ConversationStore
    from context_manager.core.health_checker import HealthChecker
    from context_manager.core.memory.embeddings import Embedder
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.memory.models import Memory
    from context_manager.core.messages import Message, ToolCall
    from context_manager.core.performance_monitor import PerformanceMonitor
    from context_manager.core.provider_formats import SupportsModelDump
    from context_manager.core.tokens import TokenCounter
    from context_manager.core.tool_system import ToolManager, ToolResult

__all__ = ["EXIT_CLEANUP_TIMEOUT", "LOOP_THREAD_NAME", "SyncContextManager"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")

LOOP_THREAD_NAME = "context-manager-loop"
"""The name of the daemon thread running the event loop of the process's ``SyncContextManager`` objects."""
EXIT_CLEANUP_TIMEOUT = 10.0
"""Seconds the interpreter's exit waits for the cleanup of the ``SyncContextManager`` objects still open."""
_CANCEL_WAIT = 5.0  # seconds a KeyboardInterrupt waits for the cancelled call to end on the loop


class _LoopThread:
    """An event loop run for ever by a daemon thread; the managers of this process's facades live on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.open_managers: set[EnhancedContextManager] = set()
        """Initialized through a facade and not cleaned up yet (touched on the loop's thread only)."""
        self.cleanups: set[asyncio.Task[None]] = set()
        """Cleanups of managers whose facade was garbage-collected open (touched on the loop's thread)."""
        self.thread = threading.Thread(target=self._run, name=LOOP_THREAD_NAME, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        while True:
            try:
                self.loop.run_forever()
                return
            except (KeyboardInterrupt, SystemExit):
                # raised by a task (sys.exit() in a coroutine run through call()): asyncio stores it in
                # the task, whose caller gets it, then lets it out of run_forever; the loop must go on
                # for every other manager of the process (and the caller's outcome is set by a callback)
                continue

    def run(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``function`` on the loop's thread (awaiting what it returns if awaitable); wait for it.

        A ``KeyboardInterrupt`` while waiting cancels the call on the loop, waits (a few seconds at most)
        for it to end, then is raised.
        """
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        running: list[asyncio.Future[Any]] = []  # the call's task, once started (read on the loop only)

        def done(task: asyncio.Future[Any]) -> None:
            if task.cancelled():
                outcome.cancel()
                outcome.set_running_or_notify_cancel()  # cancel() alone wakes no concurrent.futures.wait
                return
            error = task.exception()
            if error is None:
                outcome.set_result(task.result())
            else:
                outcome.set_exception(error)

        def start() -> None:
            try:
                result = function(*args, **kwargs)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result, loop=self.loop)
                    running.append(task)
                    task.add_done_callback(done)
                    return
            except BaseException as error:  # a plain function's error (or a construction's): the caller's
                outcome.set_exception(error)
                return
            outcome.set_result(result)

        def cancel() -> None:
            if running:
                running[0].cancel()

        self.loop.call_soon_threadsafe(start)
        try:
            return outcome.result()
        except KeyboardInterrupt:
            self.loop.call_soon_threadsafe(cancel)
            concurrent.futures.wait([outcome], timeout=_CANCEL_WAIT)
            raise


_loop_thread: _LoopThread | None = None
_loop_thread_lock = threading.Lock()
_exit_hook_registered = False


def _current_loop_thread() -> _LoopThread:
    """The loop thread of this process, started on first use (and again in a forked child)."""
    global _loop_thread, _exit_hook_registered
    loop_thread = _loop_thread
    if loop_thread is not None and loop_thread.pid == os.getpid():
        return loop_thread
    with _loop_thread_lock:
        loop_thread = _loop_thread
        if loop_thread is None or loop_thread.pid != os.getpid():
            loop_thread = _loop_thread = _LoopThread()
            if not _exit_hook_registered:
                _register_exit_hook(_clean_up_at_exit)
                _exit_hook_registered = True
    return loop_thread


def _register_exit_hook(hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit before thread pools shut down (the cleanup needs theirs).

    ``atexit`` functions run after ``concurrent.futures`` has stopped its executors, when the storage
    threads accept no more work; ``threading._register_atexit`` (what ``concurrent.futures`` itself
    uses) runs before, in reverse order of registration. It refuses registrations once shutdown began:
    ``concurrent.futures.process`` is imported up front because the cleanup may be the first to load the
    default embedder, whose imports (joblib) import it.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython has it since 3.9
        atexit.register(hook)
        return
    try:
        register(hook)
    except RuntimeError:  # the interpreter is already shutting down
        atexit.register(hook)


def _clean_up_at_exit() -> None:
    """Clean up the managers still open (so queued evicted messages reach memory), waiting a bounded time."""
    loop_thread = _loop_thread
    if loop_thread is None or loop_thread.pid != os.getpid() or not loop_thread.thread.is_alive():
        return

    async def clean_up_all() -> None:
        managers = list(loop_thread.open_managers)
        loop_thread.open_managers.clear()
        outcomes = await asyncio.gather(
            *(manager.cleanup() for manager in managers), *loop_thread.cleanups, return_exceptions=True
        )
        outcomes = outcomes[: len(managers)]  # the cleanups of collected facades log their own failures
        for manager, outcome in zip(managers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.warning(
                    "SyncContextManager (conversation %r): cleanup at exit failed: %s: %s",
                    manager.conversation_id,
                    type(outcome).__name__,
                    outcome,
                )

    future = asyncio.run_coroutine_threadsafe(clean_up_all(), loop_thread.loop)
    try:
        future.result(timeout=EXIT_CLEANUP_TIMEOUT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        logger.warning(
            "SyncContextManager: the cleanup of the managers left open did not end within %.0f s at exit",
            EXIT_CLEANUP_TIMEOUT,
        )
    except Exception as error:  # pragma: no cover - clean_up_all reports each manager's failure itself
        logger.warning("SyncContextManager: cleanup at exit failed: %s", error)


def _clean_up_collected(loop_thread: _LoopThread, manager: EnhancedContextManager) -> None:
    """A facade was garbage-collected: clean its manager up if still open, in the background, then drop it.

    Without this the loop would keep the manager (its window, messages and store handles) until exit.
    """
    if loop_thread.pid != os.getpid() or loop_thread.loop.is_closed():
        return

    def start() -> None:
        if manager not in loop_thread.open_managers:
            return
        loop_thread.open_managers.discard(manager)
        task = loop_thread.loop.create_task(manager.cleanup())
        loop_thread.cleanups.add(task)
        task.add_done_callback(finished)

    def finished(task: asyncio.Task[None]) -> None:
        loop_thread.cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.warning(
                "SyncContextManager (conversation %r): cleanup after garbage collection failed: %s: %s",
                manager.conversation_id,
                type(error).__name__,
                error,
            )

    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
        loop_thread.loop.call_soon_threadsafe(start)


def _forget_parent_loop() -> None:
    """In a forked child: the parent's loop thread does not exist here (a new one starts on first use)."""
    global _loop_thread, _loop_thread_lock
    _loop_thread = None
    _loop_thread_lock = threading.Lock()  # it may have been held by another thread of the parent


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_parent_loop)


class SyncContextManager:
    """Blocking form of :class:`~context_manager.EnhancedContextManager`, for synchronous code.

    Same constructor arguments, same methods with the same parameters and return values, and the same
    errors (see ``EnhancedContextManager`` for each); every method blocks until the call has run on the
    process's ``context-manager-loop`` thread. Use it as a context manager (``with``: ``initialize()``
    then ``cleanup()``), or call ``initialize()`` and ``close()``. Many threads may each use their own
    ``SyncContextManager`` at once (one per request); one object is not meant to be shared by threads
    running calls at the same time (their calls would interleave, as concurrent tasks on one async
    manager do).

    Objects the properties return (``context_window``, ``memory_manager``, ``tool_manager`` ...) are the
    async manager's own: run their coroutine methods (and any change to them) with :meth:`call`.

    Raises:
        LifecycleError: created or called from a thread running an event loop (use
            ``EnhancedContextManager`` with ``await`` there), or in a forked child when the object was
            made before the fork.
    """

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
        """Create the wrapped manager on the loop's thread (touches no file; ``initialize()`` does).

        Args and errors: as :class:`~context_manager.EnhancedContextManager`.
        """
        check_constructor_arguments(type(self).__name__, config, options)
        self._loop_thread = _current_loop_thread()
        self._collected: weakref.finalize[Any, Any] | None = None  # cleans up after a collection, not closed
        self._manager: EnhancedContextManager = self._plain(
            "SyncContextManager()",
            lambda: EnhancedContextManager(
                config,
                token_counter=token_counter,
                summarizer=summarizer,
                conversation_id=conversation_id,
                embedder=embedder,
                user_id=user_id,
            ),
        )
        # its "not initialized" error must give a hint a blocking caller can follow (no await)
        self._manager._initialize_hint = (
            "call `manager.initialize()` first or use `with SyncContextManager(...) as manager:`"
        )

    # -- running calls on the loop ---------------------------------------------------------------------

    def _loop_for(self, operation: str) -> _LoopThread:
        loop_thread = self._loop_thread
        if loop_thread.pid != os.getpid():
            raise LifecycleError(
                f"{operation}: this SyncContextManager was created in process {loop_thread.pid}, before "
                "os.fork(); its event loop does not run in this process: create a new SyncContextManager "
                "in the child"
            )
        if asyncio._get_running_loop() is not None:
            where = (
                "the SyncContextManager loop's own thread (an eviction hook, an async tool): await the "
                "methods of SyncContextManager.manager there"
                if threading.current_thread() is loop_thread.thread
                else "a thread running an event loop: in async code use EnhancedContextManager and await "
                "its methods"
            )
            raise LifecycleError(f"{operation}: SyncContextManager blocks, and was called from {where}")
        if not loop_thread.thread.is_alive():
            raise LifecycleError(f"{operation}: the {LOOP_THREAD_NAME} thread has stopped")
        return loop_thread

    def _await(
        self, operation: str, function: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Await ``function(*args, **kwargs)`` on the loop; block for its result."""
        return cast(_T, self._loop_for(operation).run(function, args, kwargs))

    def _plain(self, operation: str, function: Callable[[], _T]) -> _T:
        """Call ``function()`` on the loop's thread (the manager is not thread-safe); block for its result."""
        return cast(_T, self._loop_for(operation).run(function, (), {}))

    @overload
    def call(self, function: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...

    @overload
    def call(self, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...

    def call(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on the loop's thread (awaiting it if it is async); block for it.

        For what has no blocking method here: the memory manager's and tool manager's methods, say
        ``manager.call(manager.memory_manager.add_memory, "Ana is vegetarian", user_id="ana")`` or
        ``manager.call(manager.tool_manager.register_function_tool, "lookup_order", lookup_order)``. A
        plain function runs on the loop's thread itself: keep it short, it holds up every other call.

        Raises:
            LifecycleError: see the class.
            Whatever ``function`` raises.
        """
        return self._loop_for("call").run(function, args, kwargs)

    @property
    def manager(self) -> EnhancedContextManager:
        """The wrapped manager, which lives on the loop thread (use it through :meth:`call`)."""
        return self._manager

    # -- lifecycle -------------------------------------------------------------------------------------

    def initialize(self) -> None:
        """Blocking form of EnhancedContextManager.initialize.

        From then on the manager is cleaned up at interpreter exit if :meth:`close` was not called.
        """
        self._await("initialize", self._initialize_on_loop)

    async def _initialize_on_loop(self) -> None:
        await self._manager.initialize()
        self._loop_thread.open_managers.add(self._manager)
        if self._collected is None:
            self._collected = weakref.finalize(
                self, self._warn_and_clean_up, self._loop_thread, self._manager
            )
            self._collected.atexit = False  # the exit hook cleans up what is still open then

    @staticmethod
    def _warn_and_clean_up(loop_thread: _LoopThread, manager: EnhancedContextManager) -> None:
        if manager.is_initialized:  # read only: a stale answer at worst warns about a manager closing now
            conversation = manager.conversation_id
            which = f" (conversation {conversation!r})" if conversation is not None else ""
            warnings.warn(
                f"unclosed SyncContextManager{which}: garbage-collected without close(), cleaned up in the "
                "background; use `with SyncContextManager(...) as manager:` or call close()",
                ResourceWarning,
                stacklevel=1,
            )
        _clean_up_collected(loop_thread, manager)

    def cleanup(self) -> None:
        """Blocking form of EnhancedContextManager.cleanup."""
        self._await("cleanup", self._cleanup_on_loop)

    async def _cleanup_on_loop(self) -> None:
        try:
            await self._manager.cleanup()
        finally:
            self._loop_thread.open_managers.discard(self._manager)

    def close(self) -> None:
        """Clean up (the same as :meth:`cleanup`)."""
        self.cleanup()

    def __enter__(self) -> SyncContextManager:
        self.initialize()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- messages --------------------------------------------------------------------------------------

    @overload
    def add_message(
        self, role: str, content: str | Sequence[Mapping[str, Any]] | None, **kwargs: Any
    ) -> bool: ...

    @overload
    def add_message(self, role: Mapping[str, Any], /, **kwargs: Any) -> bool: ...  # options as keywords

    @overload
    def add_message(self, role: SupportsModelDump, /) -> bool: ...

    def add_message(  # type: ignore[misc]  # a keyword content= with a dict is the (role, content) form
        self, role: Any, content: str | Sequence[Mapping[str, Any]] | None = NOT_GIVEN, **kwargs: Any
    ) -> bool:
        """Blocking form of EnhancedContextManager.add_message (``add_message(message)`` too)."""
        add: Callable[..., Awaitable[bool]] = self._manager.add_message
        return self._await("add_message", add, role, content, **kwargs)

    def add_messages(self, messages: Sequence[Mapping[str, Any] | SupportsModelDump]) -> int:
        """Blocking form of EnhancedContextManager.add_messages."""
        return self._await("add_messages", self._manager.add_messages, messages)

    def compress_context(self, target_tokens: int | None = None) -> dict[str, Any] | None:
        """Blocking form of EnhancedContextManager.compress_context."""
        return self._await("compress_context", self._manager.compress_context, target_tokens)

    def pin_message(self, message_id: str) -> None:
        """Blocking form of EnhancedContextManager.pin_message (stored in the background: see flush)."""
        self._plain("pin_message", lambda: self._manager.pin_message(message_id))

    def unpin_message(self, message_id: str) -> None:
        """Blocking form of EnhancedContextManager.unpin_message (stored in the background)."""
        self._plain("unpin_message", lambda: self._manager.unpin_message(message_id))

    def set_eviction_hook(self, hook: EvictionHook | None) -> None:
        """Blocking form of EnhancedContextManager.set_eviction_hook.

        The hook runs on the ``context-manager-loop`` thread: it must not call this object's blocking
        methods (they raise ``LifecycleError`` there); an async hook awaits ``self.manager``'s methods.
        """
        self._plain("set_eviction_hook", lambda: self._manager.set_eviction_hook(hook))

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
        """Blocking form of EnhancedContextManager.get_context."""
        return self._plain("get_context", lambda: self._manager.get_context(format, budget, tools=tools))

    def get_context_summary(self) -> dict[str, Any]:
        """Blocking form of EnhancedContextManager.get_context_summary."""
        return self._plain("get_context_summary", self._manager.get_context_summary)

    @property
    def messages(self) -> tuple[Message, ...]:
        """Blocking form of EnhancedContextManager.messages (read on the loop's thread)."""
        return self._plain("messages", lambda: self._manager.messages)

    @property
    def compression_history(self) -> list[dict[str, Any]]:
        """Blocking form of EnhancedContextManager.compression_history (read on the loop's thread)."""
        return self._plain("compression_history", lambda: self._manager.compression_history)

    @property
    def context_window(self) -> ContextWindow:
        """Blocking form of EnhancedContextManager.context_window (read on the loop's thread).

        The window itself is not thread-safe: change it only through :meth:`call`.
        """
        return self._plain("context_window", lambda: self._manager.context_window)

    @property
    def is_initialized(self) -> bool:
        """Blocking form of EnhancedContextManager.is_initialized (read on the loop's thread)."""
        return self._plain("is_initialized", lambda: self._manager.is_initialized)

    # -- persisted conversations -----------------------------------------------------------------------

    @property
    def conversation_id(self) -> str | None:
        """Blocking form of EnhancedContextManager.conversation_id (read on the loop's thread)."""
        return self._plain("conversation_id", lambda: self._manager.conversation_id)

    @property
    def user_id(self) -> str | None:
        """Blocking form of EnhancedContextManager.user_id (read on the loop's thread)."""
        return self._plain("user_id", lambda: self._manager.user_id)

    @property
    def conversation_store(self) -> ConversationStore | None:
        """Blocking form of EnhancedContextManager.conversation_store (read on the loop's thread)."""
        return self._plain("conversation_store", lambda: self._manager.conversation_store)

    @property
    def conversation_version(self) -> int:
        """Blocking form of EnhancedContextManager.conversation_version (read on the loop's thread)."""
        return self._plain("conversation_version", lambda: self._manager.conversation_version)

    def reload(self) -> int:
        """Blocking form of EnhancedContextManager.reload."""
        return self._await("reload", self._manager.reload)

    def list_conversations(
        self, *, limit: int | None = None, before: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Blocking form of EnhancedContextManager.list_conversations."""
        return self._await("list_conversations", self._manager.list_conversations, limit=limit, before=before)

    def delete_conversation(self, conversation_id: str) -> bool:
        """Blocking form of EnhancedContextManager.delete_conversation."""
        return self._await("delete_conversation", self._manager.delete_conversation, conversation_id)

    # -- tools -----------------------------------------------------------------------------------------

    def execute_tool(self, tool_name: str, /, **kwargs: Any) -> ToolResult:
        """Blocking form of EnhancedContextManager.execute_tool."""
        return self._await("execute_tool", self._manager.execute_tool, tool_name, **kwargs)

    def execute_tool_calls(
        self, calls: Sequence[ToolCall | Mapping[str, Any]], *, content: str = "", thinking: Any = None
    ) -> list[ToolResult]:
        """Blocking form of EnhancedContextManager.execute_tool_calls."""
        return self._await(
            "execute_tool_calls", self._manager.execute_tool_calls, calls, content=content, thinking=thinking
        )

    def pending_tool_calls(self) -> list[ToolCall]:
        """Blocking form of EnhancedContextManager.pending_tool_calls."""
        return self._plain("pending_tool_calls", self._manager.pending_tool_calls)

    def cancel_tool_calls(
        self, call_ids: Sequence[str] | None = None, *, reason: str = CANCELLED_REASON
    ) -> list[ToolResult]:
        """Blocking form of EnhancedContextManager.cancel_tool_calls."""
        return self._await("cancel_tool_calls", self._manager.cancel_tool_calls, call_ids, reason=reason)

    # -- memory and operations -------------------------------------------------------------------------

    def flush(self) -> None:
        """Blocking form of EnhancedContextManager.flush."""
        self._await("flush", self._manager.flush)

    def add_memory(
        self,
        content: str,
        importance: float = 0.5,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        memory_id: str | None = None,
    ) -> Memory:
        """Blocking form of EnhancedContextManager.add_memory."""
        return self._await(
            "add_memory", self._manager.add_memory, content, importance, tags, metadata, memory_id=memory_id
        )

    def search_memory(
        self, query: str, limit: int = 10, *, tags: Sequence[str] | None = None
    ) -> list[Memory]:
        """Blocking form of EnhancedContextManager.search_memory."""
        return self._await("search_memory", self._manager.search_memory, query, limit, tags=tags)

    def get_system_status(self) -> dict[str, Any]:
        """Blocking form of EnhancedContextManager.get_system_status."""
        return self._plain("get_system_status", self._manager.get_system_status)

    def optimize_system(self, *, consolidate: bool = True) -> dict[str, Any]:
        """Blocking form of EnhancedContextManager.optimize_system."""
        return self._await("optimize_system", self._manager.optimize_system, consolidate=consolidate)

    @property
    def config(self) -> ContextManagerConfig:
        """Blocking form of EnhancedContextManager.config (read on the loop's thread)."""
        return self._plain("config", lambda: self._manager.config)

    @property
    def memory_manager(self) -> MemoryManager:
        """Blocking form of EnhancedContextManager.memory_manager (read on the loop's thread).

        Its methods are coroutines of the loop: run them with :meth:`call`.
        """
        return self._plain("memory_manager", lambda: self._manager.memory_manager)

    @property
    def tool_manager(self) -> ToolManager:
        """Blocking form of EnhancedContextManager.tool_manager (read on the loop's thread).

        Register tools with :meth:`call` (``manager.call(manager.tool_manager.register_function_tool, f)``).
        """
        return self._plain("tool_manager", lambda: self._manager.tool_manager)

    @property
    def performance_monitor(self) -> PerformanceMonitor | None:
        """Blocking form of EnhancedContextManager.performance_monitor (read on the loop's thread)."""
        return self._plain("performance_monitor", lambda: self._manager.performance_monitor)

    @property
    def health_checker(self) -> HealthChecker | None:
        """Blocking form of EnhancedContextManager.health_checker (read on the loop's thread)."""
        return self._plain("health_checker", lambda: self._manager.health_checker)
