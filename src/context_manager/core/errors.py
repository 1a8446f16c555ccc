"""The exception tree of context-manager.

Every exception the library raises on purpose derives from :class:`ContextManagerError`,
and each subclass also derives from the builtin a caller would naturally catch, so
``except ValueError`` keeps working for code that does not know this library::

    ContextManagerError
    ├── ConfigurationError            (ValueError)   invalid configuration value
    │   └── MissingDependencyError    (ImportError)  an optional extra is not installed
    ├── InvalidArgumentError          (ValueError)   a public call got a bad argument
    │   ├── InvalidRoleError                          unknown message role
    │   ├── InvalidPriorityError                      unknown priority
    │   ├── InvalidMessageError                       bad content, metadata, tool calls ...
    │   │   └── ToolCallPairingError                  tool result without its call (or vice versa)
    │   ├── InvalidMemoryError                        bad importance, tags, tier, content ...
    │   ├── InvalidTaskError                          bad task id, priority, callable ...
    │   ├── InvalidSettingError                       bad monitor/controller/checker setting
    │   ├── InvalidMetricError                        bad operation name or duration
    │   └── InvalidHealthCheckError                   bad or duplicate health check
    ├── ContextBudgetError            (ValueError)   protected messages cannot fit the budget
    ├── LifecycleError                (RuntimeError) used before initialize() or after cleanup()
    ├── MonitoringError               (RuntimeError) the performance monitor could not sample the process
    ├── NotFoundError                 (KeyError)     an id that does not exist
    │   ├── MemoryNotFoundError
    │   ├── ToolNotFoundError
    │   └── TaskNotFoundError
    ├── StorageError                  (OSError)      storage could not be used
    │   ├── StorageLockedError                        another process holds the store
    │   └── StorageCorruptedError                     a store file is damaged (never overwritten)
    ├── ConversationConflictError     (RuntimeError) another writer changed a persisted conversation first
    ├── ConversationAccessError       (PermissionError) the conversation belongs to another end user
    ├── ToolError                                     a problem with a tool definition or registry
    │   ├── ToolRegistrationError     (ValueError)   duplicate name, invalid name, not callable ...
    │   └── ToolTimeoutError          (TimeoutError) a tool ran past its timeout
    ├── SummarizerError                               a summarizer failed (the window falls back)
    │   ├── SummarizerRequestError                    an LLM request failed (status, attempts)
    │   └── SummarizerUnavailableError                the circuit breaker is open: not called
    └── ConcurrencyError                              the concurrency controller refused a request
        ├── ControllerLoopError       (RuntimeError) called from another event loop than its own
        ├── ControllerStoppedError    (RuntimeError) submit to a stopped controller
        ├── DuplicateTaskError        (ValueError)   a task id already in use
        ├── QueueFullError                            the bounded queue is full
        ├── TaskCancelledError                        the task was cancelled before it finished
        └── TaskTimeoutError          (TimeoutError) a task ran past its timeout

Errors carry structured fields (``field``, ``got``, ``allowed``, ``path`` ...) besides the message,
which always says what was wrong and what is allowed: ``"priority: got 'urgent'; allowed one of
'low', 'normal', 'high', 'critical'"``.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, TypeVar

__all__ = [
    "ConcurrencyError",
    "ConfigurationError",
    "ContextBudgetError",
    "ContextManagerError",
    "ControllerLoopError",
    "ControllerStoppedError",
    "ConversationAccessError",
    "ConversationConflictError",
    "DuplicateTaskError",
    "InvalidArgumentError",
    "InvalidHealthCheckError",
    "InvalidMemoryError",
    "InvalidMessageError",
    "InvalidMetricError",
    "InvalidPriorityError",
    "InvalidRoleError",
    "InvalidSettingError",
    "InvalidTaskError",
    "LifecycleError",
    "MemoryNotFoundError",
    "MissingDependencyError",
    "MonitoringError",
    "NotFoundError",
    "QueueFullError",
    "StorageCorruptedError",
    "StorageError",
    "StorageLockedError",
    "SummarizerError",
    "SummarizerRequestError",
    "SummarizerUnavailableError",
    "TaskCancelledError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "ToolCallPairingError",
    "ToolError",
    "ToolNotFoundError",
    "ToolRegistrationError",
    "ToolTimeoutError",
    "describe_value",
]

_MAX_REPR = 80


def describe_value(value: Any) -> str:
    """Return a short, safe ``repr`` of a value for an error message (long values are cut).

    Paths are shown as the quoted path (``'/data/x'``), not as ``PosixPath('/data/x')``.
    """
    try:
        text = repr(str(value)) if isinstance(value, PurePath) else repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > _MAX_REPR:
        text = f"{text[: _MAX_REPR - 20]}...<{len(text)} chars>"
    return text


class ContextManagerError(Exception):
    """Base class of every error context-manager raises on purpose."""


class _FieldError(ContextManagerError):
    """An error about one named field: message ``"<field>: got <value>; allowed <allowed>"``."""

    def __init__(self, field: str, got: Any, allowed: str, *, detail: str | None = None) -> None:
        self.field = field
        """The argument or option that was wrong."""
        self.got = got
        """The value that was given."""
        self.allowed = allowed
        """A description of the values that are accepted."""
        message = f"{field}: got {describe_value(got)}; allowed {allowed}"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)


_Field = TypeVar("_Field", bound="_FieldError")


def in_item(error: _Field, item: str) -> _Field:
    """``error`` naming its field within ``item`` (``messages[3]``): ``messages[3].role: got ...``.

    The error is changed in place (its class and traceback kept) and returned, to be raised again. A field
    already naming an item of a list (``messages[5]...``, a position in a converted batch) is renamed.
    """
    old = error.field
    new = item + old[old.index("]") + 1 :] if old.startswith("messages[") else f"{item}.{old}"
    text = str(error)
    error.field = new
    error.args = (new + text[len(old) :] if text.startswith(old) else f"{new}: {text}",)
    return error


class ConfigurationError(_FieldError, ValueError):
    """A configuration option has an invalid value."""


class MissingDependencyError(ConfigurationError, ImportError):
    """A feature needs an optional package that is not installed (message names the extra to install)."""

    def __init__(self, feature: str, package: str, extra: str) -> None:
        self.package = package
        """The distribution that could not be imported."""
        self.extra = extra
        """The ``python-context-manager`` extra that installs it."""
        super().__init__(
            feature,
            f"{package} not installed",
            f"{package} installed: pip install 'python-context-manager[{extra}]'",
        )


class InvalidArgumentError(_FieldError, ValueError):
    """A public call received an invalid argument; nothing was changed."""


class InvalidRoleError(InvalidArgumentError):
    """A message role is not one of system, user, assistant, tool."""


class InvalidPriorityError(InvalidArgumentError):
    """A priority is not one of low, normal, high, critical."""


class InvalidMessageError(InvalidArgumentError):
    """A message's content, metadata, name or tool calls are invalid."""


class ToolCallPairingError(InvalidMessageError):
    """A tool result does not answer an earlier tool call (or a call id is reused)."""


class InvalidMemoryError(InvalidArgumentError):
    """A memory's content, importance, tags, tier or a search argument is invalid."""


class InvalidTaskError(InvalidArgumentError):
    """A task submission has an invalid id, priority, timeout or callable."""


class InvalidSettingError(InvalidArgumentError):
    """A monitor, concurrency controller or health checker got an invalid setting (interval, limit ...)."""


class InvalidMetricError(InvalidArgumentError):
    """An operation was recorded with an invalid name or duration."""


class InvalidHealthCheckError(InvalidArgumentError):
    """A health check has an invalid or duplicate name or is not callable."""


class ContextBudgetError(ContextManagerError, ValueError):
    """Messages that may not be evicted (system, pinned, critical) cannot fit in the budget."""

    def __init__(self, message: str, *, required_tokens: int, max_tokens: int) -> None:
        self.required_tokens = required_tokens
        """Tokens the protected messages would need."""
        self.max_tokens = max_tokens
        """The budget that could not hold them."""
        super().__init__(message)


class LifecycleError(ContextManagerError, RuntimeError):
    """A component was used before ``initialize()``/``start()`` or after ``cleanup()``/``stop()``.

    Also raised by a plain ``with`` on a component that opens with ``async with``.
    """


class MonitoringError(ContextManagerError, RuntimeError):
    """The performance monitor could not sample the process (psutil failed: permissions, platform)."""


class NotFoundError(ContextManagerError, KeyError):
    """An id that does not exist was asked for."""

    def __init__(self, kind: str, identifier: str, *, allowed: str | None = None) -> None:
        self.kind = kind
        """What was looked up (``"memory"``, ``"tool"``, ``"task"``)."""
        self.identifier = identifier
        """The id that was not found."""
        self.allowed = allowed
        """Which ids exist, when that helps (e.g. ``"one of 'a', 'b'"``)."""
        message = f"{kind} not found: {describe_value(identifier)}"
        super().__init__(f"{message}; allowed {allowed}" if allowed else message)

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class MemoryNotFoundError(NotFoundError):
    """No memory has the given id (for this user)."""

    def __init__(self, identifier: str) -> None:
        super().__init__("memory", identifier)


class ToolNotFoundError(NotFoundError):
    """No tool is registered under the given name."""

    def __init__(self, identifier: str) -> None:
        super().__init__("tool", identifier)


class TaskNotFoundError(NotFoundError):
    """No task has the given id."""

    def __init__(self, identifier: str, *, allowed: str | None = None) -> None:
        super().__init__("task", identifier, allowed=allowed)


class StorageError(ContextManagerError, OSError):
    """Storage could not be read or written."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        """The file or directory concerned, when there is one."""
        super().__init__(message)

    def __str__(self) -> str:  # OSError formats (errno, strerror); keep our message
        return str(self.args[0])


class StorageLockedError(StorageError):
    """Another process, or another manager in this process, holds the store at this path."""

    def __init__(
        self, path: str | Path, holder: str, *, same_process: bool = False, detail: str | None = None
    ) -> None:
        self.holder = holder
        """Who holds the lock (pid and host, as recorded in the lock file)."""
        self.same_process = same_process
        """True when the holder is another manager of this very process."""
        if same_process and detail is not None:
            message = f"storage at {path} is already open in this process ({holder}) {detail}"
        elif same_process:
            message = (
                f"storage at {path} is already open in this process ({holder}) by another "
                "MemoryManager or EnhancedContextManager; use that one, close it first, or give this "
                "one another storage_path"
            )
        else:
            message = (
                f"storage at {path} is locked by {holder}; stop that process or use another storage_path "
                "(the embedded store serves one process: for several workers or hosts sharing memory and "
                'conversations use memory_backend="postgres", see docs/postgres.md)'
            )
        super().__init__(message, path=path)


class StorageCorruptedError(StorageError):
    """A store file is damaged. It is never overwritten; the message says what to do."""


class ConversationConflictError(ContextManagerError, RuntimeError):
    """A change to a persisted conversation was based on a version another writer has moved past.

    Nothing of the rejected change was stored. The manager reloads the conversation by itself before
    raising this (its window then holds what storage holds, the rejected change not), so making the
    change again is enough. Only when that automatic reload failed (``needs_reload`` is True, and the
    message says why) is the conversation stale: its window is put back to the last version this manager
    stored or loaded (the rejected change, and any other not stored, taken back), and every change raises
    this error until ``await manager.reload()`` succeeds.
    """

    def __init__(
        self,
        conversation_id: str,
        expected_version: int,
        current_version: int | None,
        *,
        reloaded: bool = False,
    ) -> None:
        self.conversation_id = conversation_id
        """The conversation."""
        self.expected_version = expected_version
        """The version the change was based on."""
        self.current_version = current_version
        """The stored version when the change was refused (0: the conversation is no longer stored;
        ``None`` if unknown)."""
        self.needs_reload = False
        """True when the manager's automatic reload after the conflict failed: call ``reload()``."""
        self.owned_by_another_user = False
        """True when that reload failed because another end user's manager created this conversation id
        first: no ``reload()`` succeeds; use another conversation id."""
        if reloaded:  # this manager's own reload() dropped the change
            super().__init__(
                f"conversation {conversation_id!r} was reloaded from storage (`reload()`) while this "
                "change was being made; the change was not made. Make it again"
            )
            return
        super().__init__(
            f"{self._refusal()}. This manager has reloaded the conversation from storage (its window "
            "holds what storage holds): make the change again"
        )

    def _refusal(self, outcome: str = "made") -> str:
        current = self.current_version
        if current is None:
            now = "storage has an unknown version (another manager wrote to it)"
        elif current == 0:
            now = "storage no longer has it (it was deleted)"
        elif current <= self.expected_version:  # a version never goes back: a new conversation
            now = (
                f"storage has another conversation under this id at version {current} (it was deleted "
                "and created again)"
            )
        else:
            now = f"storage has version {current} (another manager wrote to it)"
        return (
            f"conversation {self.conversation_id!r} changed in storage: this manager was at version "
            f"{self.expected_version}, {now}; the change was not {outcome}"
        )

    def _reload_failed(self, cause: BaseException) -> None:
        """Say that the automatic reload after this conflict failed (before the error is raised)."""
        self.needs_reload = True
        if isinstance(cause, ConversationAccessError):  # another user's manager created the id first
            self.owned_by_another_user = True
            self.args = (
                f"{self._refusal('stored')}: another end user's manager created this conversation id first, "
                "so it belongs to another end user and this manager cannot reload it. The window was put "
                f"back to the last stored version this manager had ({self.expected_version}; the change and "
                "any other not stored were taken back) and every change is refused: open a manager with "
                "another conversation_id for this user",
            )
            return
        self.args = (
            f"{self._refusal('stored')}, and reloading the conversation failed "
            f"({type(cause).__name__}: {cause}): the window was put back to the last stored version "
            f"this manager had ({self.expected_version}; the change and any other not stored were taken "
            "back, so it exports only what storage acknowledged), and every change is refused until "
            "`await manager.reload()` succeeds; call it, then make the change again",
        )


class ConversationAccessError(ContextManagerError, PermissionError):
    """A persisted conversation belongs to another end user than the manager's ``user_id``.

    A conversation created by a manager with a ``user_id`` belongs to that user: only a manager with the
    same ``user_id`` opens it, and no manager with another ``user_id`` deletes it (one without a
    ``user_id`` may). Nothing was loaded or changed.
    """

    def __init__(self, conversation_id: str, user_id: str | None) -> None:
        self.conversation_id = conversation_id
        """The conversation."""
        self.user_id = user_id
        """The ``user_id`` of the manager that was refused (``None``: it had none)."""
        # a manager without a user_id is refused only the opening (it lists and deletes every one)
        who = (
            "without a user_id cannot open it"
            if user_id is None
            else f"with user_id {user_id!r} cannot open or delete it"
        )
        super().__init__(
            f"conversation {conversation_id!r} belongs to another end user: a manager {who} (open it "
            "with the user_id it was created with, or use another conversation id)"
        )


class ToolError(ContextManagerError):
    """A problem with a tool definition or the tool registry."""


class ToolRegistrationError(_FieldError, ToolError, ValueError):
    """A tool cannot be registered (duplicate or invalid name, not callable, bad option)."""


class ToolTimeoutError(ToolError, TimeoutError):
    """A tool ran longer than its timeout."""

    def __init__(self, tool_name: str, timeout_seconds: float) -> None:
        self.tool_name = tool_name
        """The tool that timed out."""
        self.timeout_seconds = timeout_seconds
        """The timeout that was exceeded."""
        super().__init__(f"tool {tool_name!r} timed out after {timeout_seconds:g} s")


class SummarizerError(ContextManagerError):
    """A summarizer failed or timed out; the window falls back to the extractive summarizer."""

    usage: Any = None
    """The tokens the provider billed for the failed call (a ``SummaryUsage``), when it reported them:
    an answer with no text (a refusal) is billed too."""


class SummarizerRequestError(SummarizerError):
    """An LLM summarizer's request failed (after its retries, when the failure was worth retrying)."""

    def __init__(
        self, message: str, *, provider: str, status_code: int | None = None, attempts: int = 1
    ) -> None:
        self.provider = provider
        """``"openai"`` or ``"anthropic"``."""
        self.status_code = status_code
        """The HTTP status of the last attempt, or ``None`` (timeout, connection, malformed body)."""
        self.attempts = attempts
        """Requests sent, the first one included."""
        super().__init__(message)


class SummarizerUnavailableError(SummarizerError):
    """A guarded summarizer was not called: its circuit breaker is open after repeated failures."""

    def __init__(self, message: str, *, retry_in: float) -> None:
        self.retry_in = retry_in
        """Seconds until the guard lets a trial call through."""
        super().__init__(message)


class ConcurrencyError(ContextManagerError):
    """The concurrency controller refused a request."""


class ControllerLoopError(ConcurrencyError, RuntimeError):
    """The controller was called from another event loop than the one its tasks run on (another thread's)."""


class ControllerStoppedError(ConcurrencyError, RuntimeError):
    """The controller is not running (not started, or stopped)."""


class DuplicateTaskError(_FieldError, ConcurrencyError, ValueError):
    """A task id is already in use."""


class QueueFullError(ConcurrencyError):
    """The controller's bounded queue is full."""


class TaskCancelledError(ConcurrencyError):
    """The task was cancelled (``cancel_task`` or ``stop(drain=False)``) before it finished."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        """The task that was cancelled."""
        super().__init__(f"task {task_id!r} was cancelled")


class TaskTimeoutError(ConcurrencyError, TimeoutError):
    """A task ran longer than its timeout, or a wait for it (``wait_for_task(id, timeout=...)``) expired.

    ``task_finished`` tells them apart: after a wait's timeout the task still runs (or waits for a slot).
    """

    def __init__(self, task_id: str, timeout_seconds: float, *, task_finished: bool = True) -> None:
        self.task_id = task_id
        """The task that timed out (or that was waited for)."""
        self.timeout_seconds = timeout_seconds
        """The timeout that was exceeded: the task's, or the wait's."""
        self.task_finished = task_finished
        """True: the task was stopped by its own timeout. False: only the wait gave up; the task goes on
        and ``wait_for_task`` fetches its result later."""
        if task_finished:
            super().__init__(f"task {task_id!r} timed out after {timeout_seconds:g} s")
        else:
            super().__init__(
                f"waiting for task {task_id!r} timed out after {timeout_seconds:g} s; the task is still "
                "running or queued: wait for it again, or cancel_task() it"
            )
