"""The ``context-manager`` command: count tokens, inspect and maintain memory, check health, run examples.

::

    context-manager tokens notes.txt --encoding cl100k_base
    cat notes.txt | context-manager tokens -
    context-manager --storage ./cache/storage memory add "Paris is the capital of France" --tag geo
    git log -1 --format=%B | context-manager memory add - --tag release   # - : standard input
    context-manager memory search "capital of france" --limit 5
    context-manager memory delete 602dc6381aab4249a7cdd080681db0f3   # ids as search prints them
    context-manager --json memory stats
    context-manager memory export backup.jsonl          # and: memory import backup.jsonl
    context-manager memory export - | gzip > backup.jsonl.gz    # - : standard output (import - reads stdin)
    context-manager memory consolidate --threshold 0.85
    context-manager memory cleanup --max-age-days 30 --all-users   # every user's, not only the default's
    context-manager memory migrate --from ./cache/storage --to postgresql://app@db/app
    context-manager conversations list --user alice --limit 20   # persisted conversations, newest first
    context-manager conversations show chat-7 --format openai     # the window, as get_context gives it
    context-manager conversations delete chat-7 chat-8
    context-manager health
    context-manager examples basic
    context-manager mcp serve --storage ./memory --user alice     # an MCP server over stdio (mcp extra)

Global options come before the command: ``--storage PATH`` (the memory directory; by default the
configuration's ``storage_path``, i.e. ``<cache_path>/storage``), ``--json`` (machine-readable output on
stdout, strict JSON: a NaN or an infinity is ``null``) and ``--debug`` (tracebacks and DEBUG logs). The
``PYTHON_CONTEXT_MANAGER_*`` environment variables of
:class:`~context_manager.core.config.ContextManagerConfig` apply (one that names no option gives a
``warning:`` line on stderr). With ``memory_backend=postgres`` the memories are in the database and a
``--storage`` given is ignored, with a ``warning:`` line on stderr; so is a ``--storage`` given to ``memory
migrate`` (which uses ``--from`` and ``--to``), ``tokens`` and ``examples``, and ``--json`` given to
``examples`` or ``mcp serve``.

``memory stats``, ``memory export``, ``memory search`` and ``health`` move no memory between tiers (the
store is opened with ``rebalance_on_open=False``: the configuration's capacities need not be the ones it
was written with); ``memory search`` records its results as accessed, as ``search_memory`` does, and
prints each id whole on one line (to copy into ``memory delete``).

``memory search``, ``consolidate`` and ``cleanup`` work on the ``--user`` namespace (the default one
without it), ``memory stats`` and ``export`` on every user's; ``--all-users`` makes any of them cover every
user and the default namespace (with ``--user`` too it is bad usage, exit code 2).

``memory delete ID...`` deletes with ``MemoryManager.delete_memory`` (every tier, the vectors, erased from
the storage's files; a consolidated memory takes the originals it was merged from along) the memories of
the ``--user`` namespace (the shared one by default, as ``memory search``), or of any owner with
``--all-users`` (each printed with its owner); it moves no other memory. An id with no memory there
(another user's memory included: the error line names its owner) is reported after the others are
deleted, on one ``error:`` line, with exit code 1 (as ``rm`` does); ``--json`` prints ``{"user",
"all_users", "deleted", "originals_deleted", "not_found"}`` either way.

``conversations list`` and ``show`` replay the stored records as a resuming manager does and write
nothing (no fitting compression, whatever ``max_tokens`` is configured); ``conversations delete ID...``
deletes as ``delete_conversation`` does (any conversation, or with ``--user`` that user's and nobody's),
reporting the ids it did not delete as ``memory delete`` does (exit code 1).

Exit codes: 0 success; 1 an error (one line on stderr, ``error: ...``; ``error: internal error: ...``
for a bug, whose traceback ``--debug`` shows); 2 bad usage (unknown option,
bad argument); 3 ``health`` found the storage unhealthy, or no memory store at the path; 4 ``memory
migrate`` found the target different from the source (the counts and checksums are printed); 130
interrupted (Ctrl-C; ``memory migrate`` stops within a second, whatever it is doing, and the same command
run again finishes the copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from context_manager.core.config import ContextManagerConfig
    from context_manager.core.context_window import ContextWindow
    from context_manager.core.conversations.store import ConversationStore, StoredConversation
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.memory.models import Memory

__all__ = ["app", "main"]

EXIT_ERROR = 1
"""An operation failed (the reason is printed on stderr)."""
EXIT_UNHEALTHY = 3
"""``health`` found the storage unhealthy (or no memory store at the path)."""
EXIT_MISMATCH = 4
"""``memory migrate`` found the target different from the source after copying (or verifying)."""

_T = TypeVar("_T")

app = typer.Typer(
    name="context-manager",
    help="Context windows, memory and tools for LLM applications: command-line tools.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
memory_app = typer.Typer(
    help="Add, search, export, import and maintain the memory store.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(memory_app, name="memory")
mcp_app = typer.Typer(
    help="Serve the memory (and your tools) to MCP clients.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(mcp_app, name="mcp")
conversations_app = typer.Typer(
    help="List, show and delete persisted conversations.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(conversations_app, name="conversations")


class Encoding(StrEnum):
    """Token encodings the exact counter knows offline."""

    O200K_BASE = "o200k_base"
    CL100K_BASE = "cl100k_base"


class ExportFormat(StrEnum):
    """The provider formats ``conversations show --format`` exports, as ``get_context`` gives them."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_RESPONSES = "openai_responses"


class ExampleName(StrEnum):
    """Example categories of ``examples/main_example.py``."""

    ALL = "all"
    BASIC = "basic"
    ADVANCED = "advanced"
    TOOLS = "tools"
    PERFORMANCE = "performance"
    AGENT = "agent"
    SHARED = "shared"


@dataclasses.dataclass(slots=True)
class _Options:
    """The global options, shared with every command through the click context."""

    storage: Path | None
    """``--storage``: the memory directory, or None for the configuration's."""
    json_output: bool
    """``--json``: print machine-readable JSON on stdout."""
    debug: bool
    """``--debug``: tracebacks and DEBUG logs."""
    stdout: Console
    """Where results go."""
    stderr: Console
    """Where errors and progress go."""


class CommandError(Exception):
    """A failure the CLI reports as one line on stderr (exit code 1)."""


class _StandardStream:
    r"""``sys.stdout`` or ``sys.stderr`` (whichever it is when written) as the consoles write to it.

    A character the stream's encoding cannot take (``PYTHONIOENCODING=ascii``, a non-UTF-8 locale or
    console) is written as a ``\xe9`` escape instead of failing the command with ``UnicodeEncodeError``
    after its work was done (a search had counted its accesses, a delete had deleted). ``--json`` output
    never needs it (:func:`_print_json` writes ASCII then).
    """

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def _stream(self) -> Any:
        stream = getattr(sys, self._name)
        # as rich does: the stream itself, not the proxy a live progress display puts in its place
        return getattr(stream, "rich_proxied_file", stream)

    def write(self, text: str) -> int:
        stream = self._stream
        if stream is None:  # closed at the start (``>&-``): the output goes nowhere, as rich does
            return len(text)
        # what the stream's write returns is not used (an embedding program's tee may return None)
        try:
            stream.write(text)
        except UnicodeEncodeError:  # raised before any of the text is written
            encoding = getattr(stream, "encoding", None) or "ascii"
            try:
                degraded = text.encode(encoding, "backslashreplace").decode(encoding)
            except (UnicodeError, LookupError):
                degraded = text.encode("ascii", "backslashreplace").decode("ascii")
            stream.write(degraded)
        return len(text)

    def flush(self) -> None:
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()

    def isatty(self) -> bool:
        # as rich asks a stream: one without isatty (an embedding program's) is no terminal
        isatty = getattr(self._stream, "isatty", None)
        return isatty is not None and bool(isatty())

    def fileno(self) -> int:
        stream = self._stream
        if stream is None:
            raise OSError("the stream is closed")
        return int(stream.fileno())

    @property
    def encoding(self) -> str:
        stream = self._stream
        return (getattr(stream, "encoding", None) if stream is not None else None) or "utf-8"


# --------------------------------------------------------------------------------------- plumbing


def _options(ctx: typer.Context) -> _Options:
    options = ctx.find_root().obj
    if not isinstance(options, _Options):  # pragma: no cover - the callback always sets it
        raise CommandError("internal error: global options missing")
    return options


def _fail(options: _Options, message: str, code: int = EXIT_ERROR) -> NoReturn:
    options.stderr.print(f"error: {_shown(message)}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(
    ctx: typer.Context,
    coroutine_function: Callable[[_Options], Coroutine[Any, Any, _T]],
    named: dict[str, str] | None = None,
) -> _T:
    """Run an async command body under :func:`_guarded`."""
    return _guarded(ctx, lambda options: asyncio.run(coroutine_function(options)), named)


_USER_OPTION = {"user_id": "--user"}
"""The library argument a ``--user`` option passes (see ``named`` of :func:`_guarded`)."""


def _guarded(
    ctx: typer.Context, function: Callable[[_Options], _T], named: dict[str, str] | None = None
) -> _T:
    """Run a command body; turn library and OS errors into one line on stderr (or a traceback).

    ``named`` maps the library arguments the command's options pass to the options' names
    (``{"user_id": "--user"}``): an invalid value is reported as ``--user: got ''; allowed ...``, the
    option to fix, not as the library's argument.
    """
    from context_manager.core.errors import ContextManagerError

    options = _options(ctx)
    try:
        return function(options)
    except typer.Exit:
        raise
    except (ContextManagerError, CommandError, OSError, UnicodeError) as error:  # UnicodeError: bad paths too
        if options.debug:
            raise
        _fail(options, _describe(error, named))
    except KeyboardInterrupt:
        _fail(options, "interrupted", 130)
    except Exception as error:  # a bug: say so on one line, the traceback is one --debug away
        if options.debug:
            raise
        _fail(
            options,
            f"internal error: {type(error).__name__}: {_describe(error)} "
            "(a bug; rerun with --debug for the traceback and report it)",
        )


_INTERRUPT_GRACE_S = 0.5
"""After Ctrl-C, how long a command of :func:`_run_interruptible` may take to stop before it is ended."""


class _Interrupt:
    """Ctrl-C (SIGINT) for a command that must stop at once, whatever it is doing (``memory migrate``).

    asyncio's own handling cancels the command's task, which stops at its next ``await`` only, then waits
    for the work the storages' threads are doing (opening a large storage directory replays its log, reading
    one takes seconds): Ctrl-C took that long to answer. Here the task is cancelled too (its ``finally``
    blocks close what it opened); if it has not stopped within :data:`_INTERRUPT_GRACE_S`, or on a second
    Ctrl-C, the message is printed and the process ends at once (``os._exit``), as a kill would end it: for
    commands that are safe to kill only.
    """

    def __init__(self, options: _Options, message: str) -> None:
        self._options = options
        self._message = message
        self._lock = threading.Lock()
        self._reported = False
        self.requested = False
        """Whether Ctrl-C was pressed."""
        self._cancel: Callable[[], object] | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT while the block runs (in the running task; the main thread only)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None or threading.current_thread() is not threading.main_thread():
            yield  # not where signals arrive (an in-process runner's thread): nothing to handle
            return
        self._cancel = functools.partial(loop.call_soon_threadsafe, task.cancel)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: no more waiting
            self.abandon()
        self.requested = True
        timer = threading.Timer(_INTERRUPT_GRACE_S, self.abandon)
        timer.daemon = True  # fires even while the interpreter waits for threads at exit
        timer.start()
        if self._cancel is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the timer ends it
                self._cancel()

    def report(self) -> None:
        """Print the message (once)."""
        with self._lock:
            if self._reported:
                return
            self._reported = True
            with contextlib.suppress(Exception):
                self._options.stderr.show_cursor(True)  # a progress bar hides it on a terminal
                self._options.stderr.print(
                    f"error: {self._message}", markup=False, highlight=False, soft_wrap=True
                )

    def abandon(self) -> None:
        """Print the message (unless printed already) and end the process now, with exit code 130."""
        self.report()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)


def _run_interruptible(
    ctx: typer.Context,
    coroutine_function: Callable[[_Options], Coroutine[Any, Any, _T]],
    message: str,
    named: dict[str, str] | None = None,
) -> _T:
    """:func:`_run` for a command that Ctrl-C must stop within a second (see :class:`_Interrupt`).

    ``message`` is what the error line says then (exit code 130); ``named`` as for :func:`_guarded`.
    """
    interrupt = _Interrupt(_options(ctx), message)

    async def main(options: _Options) -> tuple[bool, Any]:
        with interrupt.installed():
            try:
                return True, await coroutine_function(options)
            except (asyncio.CancelledError, Exception):
                if not interrupt.requested:  # (cancelled, an operation may fail otherwise: still Ctrl-C)
                    raise
                return False, None

    completed, result = _guarded(ctx, lambda options: asyncio.run(main(options)), named)
    if not completed:
        interrupt.report()
        raise typer.Exit(130)
    return result  # type: ignore[no-any-return]


def _describe(error: BaseException, named: dict[str, str] | None = None) -> str:
    from context_manager.core.errors import ConfigurationError, InvalidArgumentError

    text = str(error).strip() or type(error).__name__
    field = error.field if isinstance(error, InvalidArgumentError | ConfigurationError) else None
    if named and field is not None and field in named and text.startswith(f"{field}: "):  # as the option
        text = named[field] + text[len(field) :]
    # one line, whatever the exception's message looks like; the spaces inside a line stay (a quoted
    # value's spaces may be what was wrong with it)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if isinstance(error, OSError) and not _is_library_error(error) and error.filename is not None:
        reason = error.strerror or text
        return f"{error.filename}: {reason}"
    return text


def _is_library_error(error: BaseException) -> bool:
    from context_manager.core.errors import ContextManagerError

    return isinstance(error, ContextManagerError)


def _plain(value: object) -> Text:
    """``value`` as literal text for a table cell or title, its control characters shown (:func:`_shown`).

    Rich reads ``[...]`` in a plain ``str`` as markup (and ``:name:`` as an emoji): memory contents,
    queries and paths are user data, so they are never parsed.
    """
    return Text(_shown(str(value)))


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls but tab and newline, DEL, and C1 controls (U+009B is a CSI to many terminals)."""


def _shown(text: str) -> str:
    r"""``text`` with each control character but tab and newline written as an escape (``\x1b``).

    Memory contents, ids and tags are untrusted data (a conversation, an import): printed as they are,
    their escape sequences reached the operator's terminal (colours, hidden text, the window title, the
    clipboard through OSC 52). ``--json`` escapes them itself.
    """
    return _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


_DEL_AND_C1 = re.compile("[\x7f-\x9f]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw of the controls :func:`_shown` escapes."""


def _print_json(options: _Options, value: Any) -> None:
    """Print ``value`` as strict JSON (RFC 8259): what a JSON parser other than Python's accepts.

    NaN and infinities are written as ``null`` (:func:`json_ready`): ``json.dumps`` wrote them as ``NaN``
    and ``Infinity``, which ``jq``, JavaScript's ``JSON.parse`` and most parsers refuse (a memory whose
    metadata another program wrote into the store holding one made ``memory search --json`` unreadable).
    """
    from context_manager.core.health_checker.models import json_ready

    value = json_ready(value)
    text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        text.encode(options.stdout.encoding)
    except (UnicodeError, LookupError):  # stdout cannot take the text (PYTHONIOENCODING=ascii, a cp1252
        # console; a lone surrogate anywhere): JSON written in ASCII, with \u escapes, is the same JSON
        text = json.dumps(value, indent=2, ensure_ascii=True, allow_nan=False)
    # DEL and C1 (U+009B is a CSI) can only be inside strings: their \u escapes are the same JSON
    text = _DEL_AND_C1.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    options.stdout.out(text, highlight=False)


def _config(options: _Options) -> ContextManagerConfig:
    """The configuration: defaults, then environment variables, then ``--storage``."""
    from context_manager.core.config import ContextManagerConfig

    if options.storage is None:
        return ContextManagerConfig()
    if options.storage.exists() and not options.storage.is_dir():
        raise CommandError(f"--storage {options.storage} is a file; pass the memory directory")
    return ContextManagerConfig(storage_path=options.storage)


def _memory_config(options: _Options) -> ContextManagerConfig:
    """The configuration of a command that opens the memory store.

    With ``memory_backend=postgres`` the memories are in the database ``postgres_dsn`` names, so a
    ``--storage`` directory is not used: one line on stderr says so (it was silently ignored, and the
    user believed the memories to be in the directory).
    """
    config = _config(options)
    if options.storage is not None and not _uses_directory(config):
        _warn_storage_ignored(options, options.storage, config)
    return config


def _warn_storage_ignored(options: _Options, storage: Path, config: ContextManagerConfig) -> None:
    _warn_ignored(
        options,
        f"--storage {storage}",
        f"memory_backend is {config.memory_backend}, the memories are in the database postgres_dsn names "
        f"({_storage_location(config)})",
    )


def _warn_ignored(options: _Options, option: str, reason: str) -> None:
    """A ``warning: OPTION is ignored: REASON`` line on stderr (a global option the command does not use)."""
    options.stderr.print(
        f"warning: {option} is ignored: {reason}", markup=False, highlight=False, soft_wrap=True
    )


def _storage_argument(value: str | None) -> Path | None:
    """A ``--storage`` value as a path (``None`` when not given).

    Taken as text: typer turns ``''`` into ``Path('')``, which is the working directory, so an empty
    value (an unset shell variable, ``--storage "$DIR"``) would silently put a store there.
    """
    if value is None:
        return None
    if not value.strip():
        raise CommandError(f"--storage: got {value!r}; allowed a non-empty path (the memory directory)")
    from context_manager.core.config import is_connection_string, is_keyword_dsn

    # a connection string, as a URL or key=value, was a directory (./postgresql:/..., ./host=db password=...)
    if is_connection_string(value):
        from context_manager.core.memory.postgres.database import redact_dsn

        kind = ", a key=value connection string" if is_keyword_dsn(value) else ""
        raise CommandError(
            f"--storage: got {redact_dsn(value)!r}{kind}; allowed a directory. For PostgreSQL set "
            "PYTHON_CONTEXT_MANAGER_MEMORY_BACKEND=postgres and PYTHON_CONTEXT_MANAGER_POSTGRES_DSN "
            "(a DSN on the command line is in the shell history and the process list)"
        )
    return Path(value)


def _refuse_keyword_dsn(option: str, location: str) -> None:
    """Refuse a ``key=value`` connection string where a directory or a URL is taken.

    It was a storage directory named ``host=db password=...`` in the working directory, the memories
    copied there and the password printed.
    """
    from context_manager.core.config import is_keyword_dsn

    if not location.lower().lstrip().startswith(("postgresql://", "postgres://")) and is_keyword_dsn(
        location
    ):
        from context_manager.core.memory.postgres.database import redact_dsn

        raise CommandError(
            f"{option}: got {redact_dsn(location)!r}, a key=value connection string; allowed a storage "
            "directory or a postgresql:// URL (postgresql://user:password@host:5432/database)"
        )


def _storage_path(options: _Options) -> Path:
    return _config(options).resolved_storage_path


def _missing_store(path: Path) -> str | None:
    """Why there is no memory store at ``path`` (``None`` when there is one).

    A store is a directory holding the memory log or the long-term database (both are created when a
    store is first opened); an empty or unrelated directory is not one.
    """
    from context_manager.core.memory.file_store import LOG_FILE_NAME
    from context_manager.core.memory.sqlite_store import DATABASE_FILE_NAME

    if not path.exists():
        return f"no memory store at {path} (the directory does not exist)"
    if not path.is_dir():
        return f"no memory store at {path} (it is a file, not a directory)"
    if not any((path / name).exists() for name in (LOG_FILE_NAME, DATABASE_FILE_NAME)):
        return f"no memory store at {path} (the directory holds no {LOG_FILE_NAME} or {DATABASE_FILE_NAME})"
    return None


_STORE_ADVICE = "pass --storage PATH or set PYTHON_CONTEXT_MANAGER_STORAGE_PATH"


def _require_existing_store(path: Path) -> None:
    """Read-only commands must not create an empty store where the user mistyped a path."""
    reason = _missing_store(path)
    if reason is not None:
        raise CommandError(f"{reason}; {_STORE_ADVICE}")


def _uses_directory(config: ContextManagerConfig) -> bool:
    """Whether the memories are in a local storage directory (``memory_backend`` ``sqlite``).

    With ``postgres`` they are in the database named by ``postgres_dsn``: no directory is looked for.
    """
    return config.memory_backend == "sqlite"


def _storage_location(config: ContextManagerConfig) -> str:
    """Where the memories are, for messages: the directory, or the DSN without its password."""
    if _uses_directory(config):
        return str(config.resolved_storage_path)
    if config.postgres_dsn is None:  # not the storage directory: no memory is there
        return "postgres_dsn is not set"
    from context_manager.core.memory.postgres.database import redact_dsn

    return redact_dsn(config.postgres_dsn.get_secret_value())


@contextlib.asynccontextmanager
async def _open_memory(
    options: _Options, *, create: bool, embedder: bool = True, inspect: bool = False
) -> Any:
    """Open the configured memory store (``create=False``: a storage directory must hold one already).

    ``embedder=False`` opens it without the configured embedder, for commands that use no vectors: with
    one, opening embeds every memory that has no vector yet first (minutes for a large store).
    ``inspect=True`` opens it without moving a tier's overflow (``rebalance_on_open=False``): the
    capacities of the configuration may not be the ones the store was written with, and a command that
    looks at the store must not move its memories.
    """
    from context_manager.core.memory.manager import MemoryManager

    try:  # the configuration checks the path and the store is looked for: on a hung filesystem both wait
        config = await _within(_PROBE_SECONDS, _store_to_open, options, create)
    except TimeoutError:  # a hung network filesystem: a monitoring script's memory stats never returned
        raise _not_answering(options.storage) from None
    if not embedder:
        config = config.model_copy(update={"embedder": "none"})
    manager: MemoryManager = MemoryManager(config, rebalance_on_open=not inspect)
    await manager.initialize()
    try:
        yield manager
    finally:
        await manager.close()


def _not_answering(storage: Path | None) -> CommandError:
    """The error of a command whose storage directory did not answer within :data:`_PROBE_SECONDS`."""
    where = str(storage) if storage is not None else "the configured storage_path"
    return CommandError(
        f"the storage at {where} does not answer within {_PROBE_SECONDS:g} s: its filesystem hangs "
        "(a hung NFS or SMB mount?); check the mount and its server"
    )


def _store_to_open(options: _Options, create: bool) -> ContextManagerConfig:
    """The configuration :func:`_open_memory` opens, after a look at its storage directory.

    ``create=False``: the directory must hold a store (:func:`_require_existing_store`).
    """
    config = _memory_config(options)
    if _uses_directory(config):
        if create:
            config.resolved_storage_path.exists()  # only to see that its filesystem answers
        else:
            _require_existing_store(config.resolved_storage_path)
    return config


_ALL_USERS_HELP = "Every user's memories and the default namespace's (not with --user)."


def _user_scope(ctx: typer.Context, user: str | None, all_users: bool) -> Any:
    """Whose memories a command covers: ``--user``'s namespace, or every one with ``--all-users``.

    Both together are bad usage (exit code 2), checked before anything is opened.
    """
    if not all_users:
        return user
    if user is not None:
        raise typer.BadParameter("pass one of them, not both", ctx, param_hint="'--user' / '--all-users'")
    from context_manager import ALL_USERS

    return ALL_USERS


def _memory_row(memory: Memory) -> dict[str, Any]:
    data = memory.to_dict()
    data["score"] = memory.score
    return data


# ----------------------------------------------------------------------------------- global options


def _print_version(value: bool) -> None:
    if value:
        from context_manager import __version__

        typer.echo(f"context-manager {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Memory directory (default: the configuration's storage_path, <cache_path>/storage); "
            "ignored, with a warning, when memory_backend is postgres.",
            envvar=None,
            metavar="PATH",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and DEBUG logs.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Context windows, memory and tools for LLM applications: command-line tools."""
    # :name: in user data stays as written
    stderr = Console(file=_StandardStream("stderr"), stderr=True, emoji=False)  # type: ignore[arg-type]
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("context_manager").setLevel(logging.DEBUG)
    else:
        # the pool's connection attempts: the command reports the failure on its one error line
        logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    stdout = Console(file=_StandardStream("stdout"), highlight=False, emoji=False)  # type: ignore[arg-type]
    options = _Options(None, json_output, debug, stdout, stderr)
    ctx.obj = options
    try:
        options.storage = _storage_argument(storage)
    except CommandError as error:
        _fail(options, str(error))


# ------------------------------------------------------------------------------------------ tokens


def _not_utf8(name: object, error: UnicodeDecodeError, advice: str) -> CommandError:
    """The error for input that is not UTF-8: which byte, at which offset, and what to pass instead."""
    return CommandError(
        f"{name} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); {advice}"
    )


def _read_text_file(path: Path, advice: str) -> str:
    """The UTF-8 text of ``path`` (universal newlines); a :class:`CommandError` when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:  # read() decodes the whole file at once: the offset is the file's
        raise _not_utf8(path, error, advice) from error


def _read_standard_input() -> str:
    """All of standard input, decoded as UTF-8 here (not by the locale's text stream).

    Python's ``sys.stdin`` may decode with ``surrogateescape`` (a C or POSIX locale), which turned a
    non-UTF-8 byte into a lone surrogate and a confusing error much later; and it is ``None`` when the
    process was started with standard input closed (``<&-``).
    """
    stream = sys.stdin
    if stream is None:
        raise CommandError("standard input is closed; pass a file, or pipe the text in")
    binary = getattr(stream, "buffer", None)
    try:
        data: bytes | str = binary.read() if binary is not None else stream.read()
    except ValueError as error:  # "I/O operation on closed file"
        raise CommandError("standard input is closed; pass a file, or pipe the text in") from error
    if isinstance(data, str):  # a text-only stream (an embedding program's): already decoded
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8("<stdin>", error, "pipe UTF-8 text in") from error


@app.command(short_help="Count the tokens of a file or standard input, exactly, offline.")
def tokens(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A text file, or - for standard input.", metavar="FILE|-")],
    encoding: Annotated[
        Encoding | None,
        typer.Option(
            "--encoding",
            "-e",
            help="Token encoding (default: the encoding of the configuration's token_model, else its "
            "token_encoding).",
        ),
    ] = None,
) -> None:
    """Count the tokens of a text file (or standard input) exactly, offline."""

    def body(options: _Options) -> None:
        from context_manager.core.tokens import get_token_counter

        if options.storage is not None:
            _warn_ignored(options, f"--storage {options.storage}", "tokens reads no memory store")
        if encoding is not None:
            counter = get_token_counter(encoding.value)
        else:  # as the library counts: token_model's encoding when it is set, else token_encoding
            # only those two options: no storage is used (a file or a hung mount there is no matter)
            config = _environment_settings("token_encoding", "token_model")
            counter = get_token_counter(config.token_encoding, model=config.token_model)
        name = counter.encoding_name
        if source == "-":
            text = _read_standard_input()
            label = "<stdin>"
        else:
            if "\x00" in source:  # not from a shell, but from programs calling the CLI in-process
                raise CommandError(f"{source!r} is not a file path (it holds a NUL character)")
            path = Path(source)
            if path.is_dir():
                raise CommandError(f"{path} is a directory; pass a text file or - for standard input")
            text = _read_text_file(path, "pass a text file")
            label = str(path)
        count = counter.count(text)
        result = {"source": label, "encoding": name, "tokens": count, "characters": len(text)}
        if options.json_output:
            _print_json(options, result)
        else:
            options.stdout.print(
                f"{count} tokens ({name}) in {label}, {len(text)} characters", markup=False, soft_wrap=True
            )

    _guarded(ctx, body)


# ------------------------------------------------------------------------------------------ memory


@memory_app.command("add")
def memory_add(
    ctx: typer.Context,
    content: Annotated[
        str,
        typer.Argument(
            help="The text to remember, or - for standard input (its final newlines dropped).",
            metavar="TEXT|-",
        ),
    ],
    importance: Annotated[float, typer.Option(metavar="0..1", help="0 (trivial) to 1 (critical).")] = 0.5,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", metavar="TAG", help="A tag (repeatable).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(metavar="NAME", help="Owner namespace (default: the shared one).")
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            metavar="short|medium|long",
            help="Put it in this tier only (default: the placement rules, by importance).",
        ),
    ] = None,
) -> None:
    """Store a memory durably and print its id."""

    async def body(options: _Options) -> None:
        from context_manager.core.memory.validation import (
            check_content,
            check_importance,
            check_tags,
            check_tier,
            check_user,
        )

        # as tokens and import read it: "-" stored as the memory was a wrong result, not a text
        text = _read_standard_input().rstrip("\r\n") if content == "-" else content
        # add_memory's own checks, first: a rejected memory must not leave a new, empty store behind
        check_content(text)
        check_importance(importance)
        check_tags(tag or [])
        check_user(user, allow_all=False)
        if tier is not None:
            check_tier(tier)
        async with _open_memory(options, create=True) as manager:
            memory = await manager.add_memory(text, importance, tag or [], None, user, tier, source="cli")
            # as add_memory places it: without --tier, an important memory also gets a long-term copy
            copied = tier is None and importance >= manager.config.long_term_importance_threshold
        if options.json_output:
            _print_json(options, _memory_row(memory))
        else:
            where = f"{memory.tier.value} tier" + (", with a long-term copy" if copied else "")
            options.stdout.print(f"added {memory.id} ({where})", markup=False, soft_wrap=True)

    _run(ctx, body, {**_USER_OPTION, "importance": "--importance", "tags": "--tag", "tier": "--tier"})


@memory_app.command("search")
def memory_search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for (plain text).", metavar="QUERY")],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, metavar="N", help="At most this many results.")
    ] = 10,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", metavar="TAG", help="Only memories with this tag (repeatable: any of them)."
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option(metavar="NAME", help="Owner namespace (default: the shared one).")
    ] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help=_ALL_USERS_HELP)] = False,
) -> None:
    """Search the memory store, best match first.

    Moves no memory between tiers on opening; the results count as accessed, as with the library's
    search_memory (access counts and times, which ranking uses; a memory found often moves up to
    long-term).
    """
    whose = _user_scope(ctx, user, all_users)

    async def body(options: _Options) -> None:
        from context_manager.core.errors import InvalidArgumentError

        if not query.strip():  # an unset shell variable: "no matching memories" would be a wrong answer
            raise InvalidArgumentError("query", query, "text with a word to look for")
        async with _open_memory(options, create=False, inspect=True) as manager:
            found = await manager.search_memory(query, limit, tags=tag or None, user_id=whose)
        if options.json_output:
            _print_json(options, [_memory_row(memory) for memory in found])
            return
        if not found:
            options.stdout.print("no matching memories", markup=False, soft_wrap=True)
            return
        from rich.table import Table

        # the id whole on one line, to copy into `memory delete` (folded at 80 columns, it could not be):
        # the tier, importance and tags go under the content, which keeps the rest of the width; an id
        # too long to leave room for the rest (an imported one) is folded, not cut off
        table = Table(title=_plain(f"{len(found)} result(s) for {query!r}"), title_justify="left")
        longest = max(len(_shown(memory.id)) for memory in found)
        room = max(8, options.stdout.width - 30)
        table.add_column("id", overflow="fold", width=min(longest, room))  # a fixed width: never squeezed
        table.add_column("score", no_wrap=True)
        table.add_column("memory", overflow="fold")
        for memory in found:
            content = memory.content if len(memory.content) <= 200 else memory.content[:197] + "..."
            details = f"{memory.tier.value} tier, importance {memory.importance:.2f}"
            if memory.tags:
                details += f", tags: {', '.join(memory.tags)}"
            if all_users:  # whose, since they are mixed
                details += f", {'default namespace' if memory.user_id is None else f'user {memory.user_id}'}"
            cell = _plain(content)
            cell.append(f"\n{_shown(details)}", style="dim")
            table.add_row(_plain(memory.id), _plain(f"{memory.score or 0.0:.3f}"), cell)
        options.stdout.print(table)

    _run(ctx, body, {**_USER_OPTION, "tags": "--tag"})


@memory_app.command("delete", short_help="Delete memories by id, erased from the storage.")
def memory_delete(
    ctx: typer.Context,
    ids: Annotated[
        list[str],
        typer.Argument(help="Ids as `memory search` or `memory add` print them.", metavar="ID"),
    ],
    user: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Owner namespace (default: the shared one); another owner's memory is not found.",
        ),
    ] = None,
    all_users: Annotated[
        bool,
        typer.Option(
            "--all-users",
            help="Delete the ids whoever owns them, any user or the default namespace (not with --user).",
        ),
    ] = False,
) -> None:
    """Delete memories by id: from every tier, with their vectors, erased from the storage's files.

    A consolidated memory goes with the originals it was merged from (printed). Only memories of the
    owner namespace (--user; the shared one by default) are deleted, or of any owner with --all-users
    (each printed with its owner). An id with no memory there is reported on stderr after the others
    are deleted, and the command exits with code 1 (as rm does). Moves no other memory between tiers.
    """
    _user_scope(ctx, user, all_users)  # both: bad usage

    async def body(options: _Options) -> int:
        from context_manager.core.errors import MemoryNotFoundError
        from context_manager.core.memory.validation import check_memory_id, check_user
        from context_manager.core.memory.writing import merged_originals

        check_user(user, allow_all=False)
        wanted = list(dict.fromkeys(ids))  # each once, in the order given
        for memory_id in wanted:
            check_memory_id(memory_id)
        deleted: list[str] = []
        originals: list[str] = []  # deleted with a consolidated memory, not asked for
        missing: list[str] = []
        owners: dict[str, str | None] = {}  # a missing id's memory in another namespace: whose
        deleted_owners: dict[str, str | None] = {}  # with --all-users: whose each deleted memory was
        async with _open_memory(options, create=False, embedder=False, inspect=True) as manager:
            for memory_id in wanted:
                if memory_id in originals:  # asked for, and gone with a consolidated memory asked before
                    originals.remove(memory_id)
                    deleted.append(memory_id)
                    continue
                existing = await manager.get_memory(memory_id)
                if existing is None or (existing.user_id != user and not all_users):
                    missing.append(memory_id)
                    if existing is not None:
                        owners[memory_id] = existing.user_id
                    continue
                deleted_owners[memory_id] = existing.user_id
                along = await merged_originals(manager, existing)
                try:
                    await manager.delete_memory(memory_id)
                except MemoryNotFoundError:  # another process sharing the storage deleted it meanwhile
                    missing.append(memory_id)
                    continue
                deleted.append(memory_id)
                originals += [item for item in along if await manager.get_memory(item) is None]
        if options.json_output:
            _print_json(
                options,
                {
                    "user": user,
                    "all_users": all_users,
                    "deleted": deleted,
                    "originals_deleted": originals,
                    "not_found": missing,
                },
            )
        else:
            for memory_id in deleted:
                whose = ""
                if all_users and memory_id in deleted_owners:  # whose, since any owner's may go
                    owner = deleted_owners[memory_id]
                    whose = " (default namespace)" if owner is None else f" (user {_shown(owner)})"
                options.stdout.print(f"deleted {_shown(memory_id)}{whose}", markup=False, soft_wrap=True)
            for memory_id in originals:
                options.stdout.print(
                    f"deleted {_shown(memory_id)} (an original of a consolidated memory)",
                    markup=False,
                    soft_wrap=True,
                )
        if not missing:
            return 0
        where = "in the default namespace" if user is None else f"of user {user!r}"
        if all_users:
            where = "of any user or the default namespace"
        message = f"no memory {where} with id{'s' if len(missing) > 1 else ''} " + ", ".join(
            map(repr, missing)
        )
        hints = [
            f"{memory_id!r} is in the default namespace: omit --user"
            if owner is None
            else f"{memory_id!r} belongs to user {owner!r}: pass --user {shlex.quote(owner)}"
            for memory_id, owner in owners.items()
        ]
        if hints:
            message += f" ({'; '.join(hints)})"
        if deleted:
            message += f"; the other {len(deleted)} deleted"
        options.stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_ERROR

    code = _run(ctx, body, _USER_OPTION)
    if code:
        raise typer.Exit(code)


@memory_app.command("stats", short_help="Counts per tier and user, capacity, size on disk, index status.")
def memory_stats(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Only this user's memories (default: every user's, counted per user)."
        ),
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Every user's memories, counted per user (the default).")
    ] = False,
) -> None:
    """Counts per tier and user, capacity, size on disk and index status (read-only: moves nothing)."""
    _user_scope(ctx, user, all_users)  # both: bad usage

    async def body(options: _Options) -> None:
        from context_manager import ALL_USERS

        async with _open_memory(options, create=False, inspect=True) as manager:
            await manager.check_integrity(quick=True)  # so the index status is measured, not assumed
            stats = await manager.get_memory_stats(user_id=ALL_USERS if user is None else user)
        if options.json_output:
            _print_json(options, stats)
            return
        from rich.table import Table

        whose = "" if user is None else f" (user {user!r})"
        table = Table(
            title=_plain(f"memory at {stats['storage_path']}{whose}"), title_justify="left", show_header=False
        )
        table.add_column("figure")
        table.add_column("value")

        def row(figure: str, value: str) -> None:
            table.add_row(_plain(figure), _plain(value))

        row("memories", str(stats["total_memories"]))
        two = stats["in_two_tiers"]
        if two:  # the tiers add up to more than the memories: say why
            memories = "1 memory has" if two == 1 else f"{two} memories have"
            row(
                "stored copies",
                f"{stats['stored_copies']} ({memories} copies in two tiers: short-term plus a durable "
                "long-term copy; each copy counts in its tier)",
            )
        for tier, count in stats["by_tier"].items():
            row(f"  {tier}-term", f"{count} / {stats['capacity'][tier]}")
        for owner, count in stats.get("by_user", {}).items():  # memories, not copies
            row(_owner(owner), f"{count} memories" if count != 1 else "1 memory")
        row("superseded", str(stats["superseded"]))
        mean = stats["mean_importance"]
        row("mean importance", "-" if mean is None else f"{mean:.2f}")
        row("bytes on disk", f"{stats['bytes_on_disk']['total']:,}")
        index = stats["index"]
        problems = "; ".join(f"{name}: {text}" for name, text in index["problems"].items())
        shown = f"{index['status']} ({index['engine']})" + (f": {problems}" if problems else "")
        row("index", shown)
        if stats["over_capacity"]:
            row("over capacity", ", ".join(stats["over_capacity"]))
        options.stdout.print(table)

    _run(ctx, body, _USER_OPTION)


_SHOWN_CHECKSUM_DIGITS = 8
"""Hex digits of a checksum ``memory migrate``'s text table shows (``--json`` gives all 16)."""


def _owner(label: str) -> str:
    """An owner label of the memory API as shown: ``user NAME``, or ``default namespace`` for ``""``."""
    from context_manager.core.memory.backend import DEFAULT_NAMESPACE_LABEL

    return "default namespace" if label == DEFAULT_NAMESPACE_LABEL else f"user {label}"


@contextlib.contextmanager
def _progress(options: _Options) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=options.stderr,
        disable=options.json_output or not options.stderr.is_terminal,  # no bar in logs and pipes
        transient=False,
    )
    with progress:
        yield progress


@memory_app.command("export", short_help="Write the memories to a JSON Lines file (or standard output).")
def memory_export(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="The JSONL file to write (replaced atomically), or - for standard output.", metavar="FILE|-"
        ),
    ],
    user: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only this user's memories (default: every user's).")
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Every user's memories (the default).")
    ] = False,
) -> None:
    """Write the memories of every user, or of --user, to a JSON Lines file (superseded ones too; read-only).

    With - the memories go to standard output, and the summary line to stderr.
    """
    _user_scope(ctx, user, all_users)  # both: bad usage

    async def body(options: _Options) -> None:
        if str(path) == "-":
            await export_to_standard_output(options)
            return
        if path.is_dir():
            raise CommandError(f"{path} is a directory; pass a file path such as {path / 'memories.jsonl'}")
        if not path.parent.exists():
            raise CommandError(f"cannot write {path}: directory {path.parent} does not exist")
        from context_manager import ALL_USERS

        whose = ALL_USERS if user is None else user
        from context_manager.core.memory.maintenance import written_through

        # a pipe, /dev/stdout: written through, not replaced
        through = path.exists() and not path.is_dir() and written_through(path)
        async with _open_memory(options, create=False, embedder=False, inspect=True) as manager:
            total = (await manager.get_memory_stats(user_id=whose))["total_memories"]
            with _progress(options) as progress:
                task = progress.add_task("exporting", total=total or None)
                count = await manager.export_memories(path, user_id=whose)
                progress.update(task, total=count, completed=count)
        summary = f"exported {_memories(count)} to {path}"
        if through:  # it may be standard output: the summary goes to stderr, as with -
            options.stderr.print(summary, markup=False, soft_wrap=True)
        elif options.json_output:
            _print_json(options, {"exported": count, "path": str(path)})
        else:
            options.stdout.print(summary, markup=False, soft_wrap=True)

    async def export_to_standard_output(options: _Options) -> None:
        """The export written to a private temporary file, then copied to stdout (nothing else goes there)."""
        import shutil
        import tempfile

        from context_manager import ALL_USERS

        stream = sys.stdout
        if stream is None:
            raise CommandError("standard output is closed; pass a file path")
        with tempfile.TemporaryDirectory(prefix="context-manager-") as directory:
            exported = Path(directory) / "export.jsonl"
            async with _open_memory(options, create=False, embedder=False, inspect=True) as manager:
                count = await manager.export_memories(exported, user_id=ALL_USERS if user is None else user)
            try:
                with exported.open("rb") as source:
                    binary = getattr(stream, "buffer", None)
                    if binary is not None:
                        stream.flush()
                        shutil.copyfileobj(source, binary)
                        binary.flush()
                    else:  # a text-only stream (an embedding program's)
                        stream.write(source.read().decode("utf-8"))
                        stream.flush()
            except BrokenPipeError:  # `memory export - | head`: the reader is gone
                with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes at exit
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
                raise CommandError(
                    f"standard output was closed before the whole export ({count} memories) was written"
                ) from None
        options.stderr.print(f"exported {_memories(count)} to <stdout>", markup=False, soft_wrap=True)

    _run(ctx, body, _USER_OPTION)


@memory_app.command("import", short_help="Load memories from a JSON Lines export (all or nothing).")
def memory_import(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="A JSONL file written by `memory export` (a pipe works too), or - for standard input.",
            metavar="FILE|-",
        ),
    ],
) -> None:
    """Load memories from a JSON Lines export (all or nothing: one bad line imports nothing)."""

    async def body(options: _Options) -> None:
        import tempfile

        from context_manager.core.memory.maintenance import (
            check_supersession_rings,
            check_unique_id,
            parse_exported_line,
        )

        advice = "pass a file written by `memory export`"
        if str(path) == "-":
            text, label = _read_standard_input(), "<stdin>"
        elif path.is_dir() or not path.exists():
            raise CommandError(
                f"cannot read {path}: " + ("it is a directory" if path.is_dir() else "no such file")
            )
        else:  # a file, or a pipe (``<(zcat backup.jsonl.gz)``): read once, here
            text, label = _read_text_file(path, advice), str(path)
        lines = text.removesuffix("\n").split("\n")  # "\n" only, as import_memories splits
        expected = "a memory as written by `memory export`"
        with contextlib.ExitStack() as stack:
            source = path
            if not path.is_file():  # a pipe or standard input cannot be read a second time: a copy is
                directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="context-manager-")))
                source = directory / "import.jsonl"
                source.write_text(text, encoding="utf-8", newline="")
            progress = stack.enter_context(_progress(options))
            checking = progress.add_task("checking", total=len(lines))
            # every check import_memories makes, before the store is opened (and perhaps created)
            links: dict[str, tuple[str | None, str, str]] = {}
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    location = f"{label}:{number}"
                    memory, _ = parse_exported_line(line, location, expected=expected)
                    check_unique_id(links, memory.id, location, line, expected=expected)
                    links[memory.id] = (memory.superseded_by, location, line)
                progress.advance(checking)
            check_supersession_rings(links, expected=expected)
            async with _open_memory(options, create=True) as manager:
                importing = progress.add_task("importing", total=len(lines))
                embedding = progress.add_task("embedding", total=len(links), visible=False)
                if manager.embedder is not None and links and not options.json_output:
                    model = getattr(manager.embedder, "name", None) or type(manager.embedder).__name__
                    options.stderr.print(
                        f"embedding {_memories(len(links))} with {model} (a model on the CPU: from a few to "
                        "about 100 ms each); PYTHON_CONTEXT_MANAGER_EMBEDDER=none imports without vectors "
                        "(made when the store is next opened with an embedder)",
                        markup=False,
                        highlight=False,
                        soft_wrap=True,
                    )

                def advance(stage: str, done: int, total: int) -> None:
                    if stage == "writing":
                        progress.update(importing, completed=done, total=total)
                        return
                    progress.update(embedding, completed=done, total=total, visible=True)
                    if progress.disable and not options.json_output:  # no bar (a log, a pipe): a line
                        line = f"embedded {done}/{_memories(total)}"
                        options.stderr.print(line, markup=False, highlight=False, soft_wrap=True)

                report = await manager.import_memories(source, progress=advance)
        if options.json_output:
            _print_json(options, report)
        else:
            tiers = ", ".join(f"{tier} {count}" for tier, count in report["by_tier"].items())
            options.stdout.print(
                f"imported {_memories(report['imported'])} ({report['replaced']} replaced; {tiers})",
                markup=False,
                soft_wrap=True,
            )

    _run(ctx, body)


def _memories(count: int) -> str:
    return "1 memory" if count == 1 else f"{count} memories"


@memory_app.command("consolidate", short_help="Merge near-duplicates (originals kept until cleanup).")
def memory_consolidate(
    ctx: typer.Context,
    threshold: Annotated[
        float,
        typer.Option(
            metavar="SIMILARITY",
            help="Word-set (Jaccard) similarity from which two memories merge, in (0, 1] "
            "(with an embedder, a cosine similarity of 0.95 merges them too).",
        ),
    ] = 0.85,
    user: Annotated[
        str | None, typer.Option(metavar="NAME", help="Owner namespace (default: the shared one).")
    ] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help=_ALL_USERS_HELP)] = False,
) -> None:
    """Merge near-duplicate memories (originals are kept as superseded until cleanup).

    Memories of two users are never merged, with --all-users too.
    """
    whose = _user_scope(ctx, user, all_users)

    async def body(options: _Options) -> None:
        from context_manager.core.errors import InvalidArgumentError

        if not 0.0 < threshold <= 1.0:  # named as the option (the library names its own argument)
            raise InvalidArgumentError("--threshold", threshold, "a similarity above 0 and at most 1")
        async with _open_memory(options, create=False) as manager:
            result = await manager.consolidate_memories(threshold, user_id=whose)
        if options.json_output:
            _print_json(options, result)
            return
        options.stdout.print(
            f"merged {_memories(result['consolidated_count'])} into {len(result['groups'])} "
            f"(examined {result['examined']})",
            markup=False,
            soft_wrap=True,
        )
        for group in result["groups"]:
            options.stdout.print(
                f"  {group['merged_id']}: {_shown(group['content'][:100])}", markup=False, soft_wrap=True
            )

    _run(ctx, body, _USER_OPTION)


@memory_app.command("cleanup", short_help="Delete old memories and superseded originals.")
def memory_cleanup(
    ctx: typer.Context,
    max_age_days: Annotated[
        float, typer.Option(metavar="DAYS", help="Remove memories not created or used for this many days.")
    ] = 30.0,
    keep_importance: Annotated[
        float | None,
        typer.Option(metavar="0..1", help="Keep memories at least this important, whatever their age."),
    ] = None,
    user: Annotated[
        str | None, typer.Option(metavar="NAME", help="Owner namespace (default: the shared one).")
    ] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help=_ALL_USERS_HELP)] = False,
) -> None:
    """Delete old memories and superseded originals; print what was removed."""
    whose = _user_scope(ctx, user, all_users)

    async def body(options: _Options) -> None:
        from context_manager.core.errors import InvalidArgumentError

        if not 0.0 <= max_age_days < float("inf"):  # named as the option, as for --threshold
            raise InvalidArgumentError("--max-age-days", max_age_days, "a finite number >= 0")
        async with _open_memory(options, create=False) as manager:
            result = await manager.cleanup_old_memories(
                max_age_days, user_id=whose, keep_importance=keep_importance
            )
        if options.json_output:
            _print_json(options, result)
            return
        tiers = ", ".join(f"{tier} {count}" for tier, count in result["by_tier"].items())
        options.stdout.print(
            f"removed {_memories(result['removed_count'])} "
            f"({tiers}; superseded {result['superseded_removed']})",
            markup=False,
            soft_wrap=True,
        )

    _run(ctx, body, {**_USER_OPTION, "keep_importance": "--keep-importance"})


class _ProgressLines:
    """Progress of a long command as plain lines on stderr (logs and pipes: no bar).

    The start, the first step and the end are printed, and in between at most one line a second.
    """

    def __init__(self, options: _Options, what: str) -> None:
        self._options = options
        self._what = what
        self._printed_at = 0.0
        self._printed: list[int] = []

    def __call__(self, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        first_step = len(self._printed) == 1 and done > self._printed[0]
        if self._printed and not first_step and done < total and now - self._printed_at < 1.0:
            return
        if self._printed and self._printed[-1] == done:
            return
        self._printed_at = now
        self._printed.append(done)
        self._options.stderr.print(
            f"{self._what} {done}/{total}", markup=False, highlight=False, soft_wrap=True
        )


@memory_app.command("migrate", short_help="Copy memories and conversations between storages, verified.")
def memory_migrate(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="PATH|DSN",
            help="Where the memories are: a storage directory, or a postgresql:// (postgres://) DSN.",
        ),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="PATH|DSN",
            help="Where to copy them: a storage directory (created if needed) or a PostgreSQL DSN.",
        ),
    ],
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N", help="Copies per committed batch.")
    ] = 500,
    no_vectors: Annotated[bool, typer.Option("--no-vectors", help="Do not copy embedding vectors.")] = False,
    merge: Annotated[
        bool, typer.Option("--merge", help="Allow a target that already holds other memories (kept).")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Remove from the target the memories and conversations the source does not have "
            "(finishes an interrupted copy after deletions at the source).",
        ),
    ] = False,
    verify_only: Annotated[
        bool, typer.Option("--verify-only", help="Only compare the target with the source; write nothing.")
    ] = False,
) -> None:
    """Copy every memory (all tiers and copies, ids, times, vectors) and conversation between storages.

    Both directions (a directory and PostgreSQL, or two of a kind). Verified by counts and checksums per
    tier and user (exit code 4 on a difference); resumable: after an interruption run the same command
    again, it copies only what is missing. Stop the applications using the source first.
    """

    async def body(options: _Options) -> int:
        from context_manager.core.memory.transfer import migrate_storage, verify_storage

        if options.storage is not None:  # the storages are --from and --to
            _warn_ignored(options, f"--storage {options.storage}", "memory migrate uses --from and --to")
        for option, location in (("--from", source), ("--to", target)):
            _refuse_keyword_dsn(option, location)
        # PYTHON_CONTEXT_MANAGER_POSTGRES_CONNECT_TIMEOUT, as a manager waits for a server (10 s by default)
        connect_timeout = _connect_timeout_setting()
        if verify_only:
            report = await verify_storage(
                source, target, vectors=not no_vectors, connect_timeout=connect_timeout
            )
        else:
            lines = _ProgressLines(options, "copied")
            with _progress(options) as progress:
                task = progress.add_task("migrating", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, total=total, completed=done)
                    if progress.disable and not options.json_output:
                        lines(done, total)

                report = await migrate_storage(
                    source,
                    target,
                    batch_size=batch_size,
                    vectors=not no_vectors,
                    merge=merge,
                    prune=prune,
                    progress=advance,
                    connect_timeout=connect_timeout,
                )
        if options.json_output:
            _print_json(options, report.to_dict())
        else:
            _print_migration(options, report, verify_only=verify_only)
        if not report.ok:
            options.stderr.print(
                "error: the target differs from the source (see the rows marked DIFFERENT); "
                "run the command again to finish an interrupted copy",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return EXIT_MISMATCH
        return 0

    interrupted = "interrupted"
    if not verify_only:
        interrupted += "; the target keeps what was copied: run the same command again to finish the copy"
    # the library names the locations as its arguments: said as the options to fix
    code = _run_interruptible(ctx, body, interrupted, {"source": "--from", "target": "--to"})
    if code:
        raise typer.Exit(code)


def _connect_timeout_setting() -> float:
    """``postgres_connect_timeout`` as the environment sets it (10 s by default), for ``memory migrate``.

    Only that option is read (:func:`_environment_settings`): the command's storages are ``--from`` and
    ``--to``.
    """
    config = _environment_settings("postgres_connect_timeout")
    return float(config.postgres_connect_timeout)


def _environment_settings(*names: str) -> ContextManagerConfig:
    """A configuration of the defaults with only options ``names`` read from the environment (checked).

    For a command that uses a few options and no storage: the whole configuration checks options it never
    uses, so a ``storage_path`` or ``./cache`` that is a file failed it, and a ``storage_path`` on a hung
    mount made it wait for ever. A ``PYTHON_CONTEXT_MANAGER_*`` variable that names no option is warned
    about, as the configuration does.
    """
    from context_manager.core import config as configuration
    from context_manager.core.errors import ConfigurationError

    configuration._warn_unknown_variables()
    config = configuration.ContextManagerConfig.model_construct()  # the defaults, nothing read or checked
    for name in names:
        variable = f"{configuration.ENV_PREFIX}{name}".upper()
        set_as = next((key for key in os.environ if key.upper() == variable), None)
        if set_as is None:
            continue
        try:
            setattr(config, name, os.environ[set_as])  # validated as assigned
        except ConfigurationError as error:
            raise ConfigurationError(
                name, error.got, error.allowed, detail=f"set by the environment variable {set_as}"
            ) from None
    return config


def _print_migration(options: _Options, report: Any, *, verify_only: bool) -> None:
    from rich.table import Table

    out = options.stdout
    if not verify_only:
        pruned = ""
        if report.pruned or report.conversations_pruned:
            pruned = f", {report.pruned} copies and {report.conversations_pruned} conversations pruned"
        out.print(
            f"copied {report.copied} of {report.total_copies} stored copies from {report.source} to "
            f"{report.target} ({report.already_present} already there, {report.removed_stale} stale removed"
            f"{pruned}; vectors: {report.vectors_copied} copied, "
            f"{report.vectors_already_present} already there; "
            f"conversations: {report.conversations_copied} copied, "
            f"{report.conversations_already_present} already there) "
            f"in {report.duration_s:.1f} s",
            markup=False,
            soft_wrap=True,
        )
    # 80 columns (a terminal's default, and rich's width when piped) hold it with words whole: source and
    # target share a cell, and a checksum shows its first 8 hex digits (--json gives them whole)
    table = Table(title="verification (copies per tier and owner: source / target)", title_justify="left")
    tiers = ["tier", "vectors" if report.vectors else "", "conversations" if report.conversations else ""]
    table.add_column("tier", min_width=max(map(len, tiers)), overflow="fold")
    table.add_column("owner", overflow="fold")
    table.add_column("copies", overflow="fold")
    table.add_column("checksums", min_width=2 * _SHOWN_CHECKSUM_DIGITS + 3, overflow="fold")
    table.add_column("status", no_wrap=True)

    def row(tier: str, owner: str, source: int, target: int, checksums: tuple[str, str], match: bool) -> None:
        status = Text("ok") if match else Text("DIFFERENT", style="red")
        shown = " / ".join(checksum[:_SHOWN_CHECKSUM_DIGITS] for checksum in checksums)
        table.add_row(*map(_plain, (tier, owner, f"{source} / {target}", shown)), status)

    for group in report.groups:
        checksums = (group.source_checksum, group.target_checksum)
        row(group.tier, _owner(group.user), group.source_count, group.target_count, checksums, group.match)
    for check in report.vectors:
        owner = f"{check.model} ({check.dimension})"
        checksums = (check.source_checksum, check.target_checksum)
        row("vectors", owner, check.source_count, check.target_count, checksums, check.match)
    conversations = report.conversations
    if conversations is not None:
        row(
            "conversations",
            f"records {conversations.source_records} / {conversations.target_records}",
            conversations.source_count,
            conversations.target_count,
            (conversations.source_checksum, conversations.target_checksum),
            conversations.match,
        )
    out.print(table)
    out.print("verified: identical" if report.ok else "verified: DIFFERENT", markup=False)


# ----------------------------------------------------------------------------------- conversations


@contextlib.asynccontextmanager
async def _open_conversations(options: _Options) -> AsyncIterator[ConversationStore | None]:
    """The store of persisted conversations next to the configured memory (``None``: none stored yet).

    Opened as a manager opens it (the memory store's database on PostgreSQL, ``conversations.sqlite3``
    in the storage directory), after the memory store, which is opened as the read-only memory commands
    open it (no embedder, no memory moved): on SQLite a running application holding the storage gives
    ``StorageLockedError``, as for ``memory stats``. A storage directory without the conversations file
    has none, and none is created.
    """
    from context_manager.core.conversations.sqlite_store import CONVERSATIONS_FILE_NAME
    from context_manager.core.shared_store import _new_conversation_store

    async with _open_memory(options, create=False, embedder=False, inspect=True) as manager:
        backend = manager.backend
        on_postgres = backend is not None and backend.kind == "postgres"
        if not on_postgres and not (manager.config.resolved_storage_path / CONVERSATIONS_FILE_NAME).exists():
            yield None
            return
        store = _new_conversation_store(manager)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


@dataclasses.dataclass(slots=True)
class _ConversationView:
    """A stored conversation's window as a manager resuming it holds it (read-only: nothing is written)."""

    stored: StoredConversation
    """What the store holds."""
    window: ContextWindow
    """The window its records replay to."""
    updated_at: float | None = None
    """When it last changed (from the listing; ``None`` when not listed)."""

    def summary_row(self) -> dict[str, Any]:
        """The figures of ``conversations list``."""
        window = self.window
        return {
            "conversation_id": self.stored.conversation_id,
            "user_id": self.stored.user_id,
            "version": self.stored.version,
            "message_count": len(window),
            "token_count": window.token_count,
            "compression_count": window.compression_count,
            "created_at": self.stored.created_at,
            "updated_at": self.updated_at,
        }

    def details(self) -> dict[str, Any]:
        """What ``conversations show --json`` prints: the figures, the summary and every message."""
        window = self.window
        summary = window.summary
        return {
            **self.summary_row(),
            "pinned": window.pinned_count,
            "pending_tool_calls": sorted(window.pending_tool_calls),
            "summary": None if summary is None else summary.content,
            "compression_history": [record.to_dict() for record in window.compression_history],
            "messages": [message.to_dict() for message in window.messages],
        }


async def _conversation_view(store: ConversationStore, conversation_id: str) -> _ConversationView | None:
    """Replay a stored conversation into a window of its own (``None``: no such conversation).

    The records are folded as a resuming manager folds them, into a window large enough to hold them as
    stored: nothing is compressed, counted again, re-indexed or written (a manager opened to read a
    conversation would store the compression fitting it to its ``max_tokens``: see docs/conversations.md).
    """
    from context_manager.core.context_window import CompressionRecord, ContextWindow
    from context_manager.core.conversations.replay import fold
    from context_manager.core.tokens import REPLY_PRIMING_TOKENS

    stored = await store.load(conversation_id)
    if stored.version == 0:
        return None
    state = fold(stored)
    room = sum(message.token_count for message in state.messages) + REPLY_PRIMING_TOKENS + 1
    window = ContextWindow(max(room, 2000), enable_compression=False)
    await window.restore(
        state.messages,
        [CompressionRecord(**entry) for entry in state.history],
        earlier_compressions=state.earlier_compressions,
    )
    return _ConversationView(stored, window)


def _when(seconds: float | None) -> str:
    """A time of the conversations API (seconds since the epoch) as UTC, to the second."""
    import datetime

    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _whose(user_id: str | None) -> str:
    return "nobody's" if user_id is None else f"user {user_id}"


def _check_conversation_options(conversation_ids: list[str], user: str | None) -> None:
    """The ids and ``--user`` as the API checks them, before anything is opened."""
    from context_manager.core.conversations.store import check_conversation_id
    from context_manager.core.memory.validation import check_user

    check_user(user, allow_all=False)
    for conversation_id in conversation_ids:
        check_conversation_id(conversation_id)


def _owner_hint(conversation_id: str, owner: str | None) -> str:
    if owner is None:  # a nobody's conversation is every manager's: only the listing leaves it out
        return f"{conversation_id!r} is nobody's: omit --user"
    return f"{conversation_id!r} belongs to user {owner!r}: pass --user {shlex.quote(owner)}"


_CONVERSATION_USER_HELP = (
    "Only this end user's conversations (the user_id of the managers that wrote them); "
    "default: every conversation, as a manager without a user_id sees them."
)


@conversations_app.command("list", short_help="The stored conversations, most recently changed first.")
def conversations_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(metavar="NAME", help=_CONVERSATION_USER_HELP)] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, metavar="N", help="At most this many (the newest).")
    ] = 20,
) -> None:
    """List the stored conversations, most recently changed first: id, user, messages, tokens, updated.

    Read-only (each conversation is replayed to count its window; nothing is written). With --user, that
    end user's conversations only (as a manager with that user_id lists them: nobody's are left out).
    """

    async def body(options: _Options) -> int:
        from context_manager.core.errors import ContextManagerError

        _check_conversation_options([], user)
        rows: list[dict[str, Any]] = []
        unreadable: list[str] = []  # "'id': why", for the error line after the listing
        async with _open_conversations(options) as store:
            listed = [] if store is None else await store.list_conversations(user, limit=limit)
            for info in listed:
                assert store is not None  # (listed is empty otherwise)
                try:
                    view = await _conversation_view(store, info.conversation_id)
                except ContextManagerError as error:
                    # one conversation whose records do not replay (damaged, or a kind of record a newer
                    # version writes) is listed without its figures: the others, and its id to show or
                    # delete it, are still there, as list_conversations() lists it
                    unreadable.append(f"{info.conversation_id!r} ({type(error).__name__}: {error})")
                    row = {**info.to_dict(), "message_count": None, "token_count": None}
                    row["compression_count"] = None
                    row["error"] = f"{type(error).__name__}: {error}"
                    rows.append(row)
                    continue
                if view is None:  # deleted by another process since it was listed
                    continue
                view.updated_at = info.updated_at
                rows.append({**view.summary_row(), "error": None})
        code = 0
        if unreadable:
            code = EXIT_ERROR
            options.stderr.print(
                _shown(
                    f"error: cannot replay conversation{'s' if len(unreadable) > 1 else ''} "
                    f"{'; '.join(unreadable)}; listed without figures (`conversations delete ID` removes one)"
                ),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if options.json_output:
            _print_json(options, rows)
            return code
        if not rows:
            whose = "" if user is None else f" of user {user!r}"
            options.stdout.print(f"no conversations{whose}", markup=False, soft_wrap=True)
            return code
        from rich.table import Table

        table = Table(title=_plain(f"{len(rows)} conversation(s), newest first"), title_justify="left")
        table.add_column("id", overflow="fold")
        table.add_column("user", overflow="fold")
        table.add_column("messages", justify="right", no_wrap=True)
        table.add_column("tokens", justify="right", no_wrap=True)
        table.add_column("updated (UTC)", no_wrap=True)
        for row in rows:
            table.add_row(
                _plain(row["conversation_id"]),
                _plain("-" if row["user_id"] is None else row["user_id"]),
                "?" if row["message_count"] is None else str(row["message_count"]),
                "?" if row["token_count"] is None else str(row["token_count"]),
                _when(row["updated_at"]).removesuffix(" UTC"),
            )
        options.stdout.print(table)
        return code

    code = _run(ctx, body, {**_USER_OPTION, "limit": "--limit"})
    if code:
        raise typer.Exit(code)


@conversations_app.command("show", short_help="A conversation's window: messages, summary, compressions.")
def conversations_show(
    ctx: typer.Context,
    conversation_id: Annotated[
        str, typer.Argument(help="The id, as `conversations list` prints it.", metavar="ID")
    ],
    user: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="The end user it must belong to (or nobody); default: any owner, as for list and delete.",
        ),
    ] = None,
    export_format: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="openai, anthropic or openai_responses: print the messages as get_context(format=...) "
            "gives them to the model (JSON).",
        ),
    ] = None,
) -> None:
    """Show a stored conversation's window as the model sees it (read-only: nothing is written).

    The messages with their roles, the rolling summary and the count of compressions; with --format,
    the JSON request get_context() exports (openai, anthropic or openai_responses). With --user, a
    conversation of another end user is refused (exit code 1; the error names its owner).
    """

    async def body(options: _Options) -> None:
        _check_conversation_options([conversation_id], user)
        async with _open_conversations(options) as store:
            view = None if store is None else await _conversation_view(store, conversation_id)
        if view is None:
            raise CommandError(
                f"no conversation with id {conversation_id!r} (`conversations list` lists them)"
            )
        owner = view.stored.user_id
        if user is not None and owner != user and owner is not None:
            raise CommandError(
                f"no conversation of user {user!r} (or nobody's) with id {conversation_id!r} "
                f"({_owner_hint(conversation_id, owner)})"
            )
        if export_format is not None:
            from context_manager.core.provider_formats import to_provider_format

            _print_json(options, to_provider_format(view.window.select(None), export_format.value))
            return
        if options.json_output:
            _print_json(options, view.details())
            return
        details = view.details()
        out = options.stdout
        out.print(
            f"conversation {_shown(conversation_id)} ({_shown(_whose(owner))}): "
            f"{details['message_count']} messages, {details['token_count']} tokens (as get_context_summary "
            f"counts them), version {details['version']}, {details['compression_count']} compression(s), "
            f"created {_when(details['created_at'])}",
            markup=False,
            soft_wrap=True,
        )
        for message in view.window.messages:
            flags = []
            if message is view.window.summary:
                flags.append("summary")
            if message.pinned:
                flags.append("pinned")
            label = f"[{message.role.value}{', ' + ', '.join(flags) if flags else ''}]"
            line = f"{label} {message.content}"
            for call in message.tool_calls:
                line += f"\n  call {call.id}: {call.name}({json.dumps(call.arguments, ensure_ascii=False)})"
            out.print(_shown(line), markup=False, highlight=False, soft_wrap=True)

    _run(ctx, body, {**_USER_OPTION, "conversation_id": "ID"})


@conversations_app.command("delete", short_help="Delete conversations by id, with all their records.")
def conversations_delete(
    ctx: typer.Context,
    conversation_ids: Annotated[
        list[str], typer.Argument(help="Ids as `conversations list` prints them.", metavar="ID")
    ],
    user: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Delete only this end user's (and nobody's) conversations, as a manager with that user_id "
            "does; default: any, as a manager without a user_id does.",
        ),
    ] = None,
) -> None:
    """Delete stored conversations and all their records (delete_conversation of the API).

    Memories written from their evicted messages stay (memory delete erases them). A manager still
    writing one gets ConversationConflictError on its next change. An id with no conversation (or, with
    --user, another user's: the error line names its owner) is reported after the others are deleted,
    on one error line, with exit code 1 (as rm and memory delete do).
    """

    async def body(options: _Options) -> int:
        from context_manager.core.errors import ConversationAccessError

        _check_conversation_options(conversation_ids, user)
        wanted = list(dict.fromkeys(conversation_ids))  # each once, in the order given
        deleted: list[str] = []
        missing: list[str] = []
        owners: dict[str, str | None] = {}  # refused: another user's
        async with _open_conversations(options) as store:
            for conversation_id in wanted:
                if store is None:
                    missing.append(conversation_id)
                    continue
                try:
                    existed = await store.delete(conversation_id, user_id=user)
                except ConversationAccessError:
                    missing.append(conversation_id)
                    owners[conversation_id] = (await store.load(conversation_id)).user_id
                    continue
                (deleted if existed else missing).append(conversation_id)
        if options.json_output:
            _print_json(options, {"user": user, "deleted": deleted, "not_found": missing})
        else:
            for conversation_id in deleted:
                options.stdout.print(f"deleted {_shown(conversation_id)}", markup=False, soft_wrap=True)
        if not missing:
            return 0
        where = "" if user is None else f" of user {user!r} (or nobody's)"
        message = f"no conversation{where} with id{'s' if len(missing) > 1 else ''} " + ", ".join(
            map(repr, missing)
        )
        hints = [_owner_hint(conversation_id, owner) for conversation_id, owner in owners.items()]
        if hints:
            message += f" ({'; '.join(hints)})"
        if deleted:
            message += f"; the other {len(deleted)} deleted"
        options.stderr.print(f"error: {_shown(message)}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_ERROR

    code = _run(ctx, body, {**_USER_OPTION, "conversation_id": "ID"})
    if code:
        raise typer.Exit(code)


# ------------------------------------------------------------------------------------------ health


@dataclasses.dataclass(slots=True)
class _StoreUnderCheck:
    """What the health checker needs of a context manager: a config and a memory manager."""

    config: ContextManagerConfig
    memory_manager: MemoryManager | None


def _failing_check(message: str, recommendation: str, *, degraded: bool = False) -> Callable[[], Any]:
    """A check that reports the memory store unusable (missing, damaged), or not checked (in use)."""
    from context_manager.core.health_checker import CheckOutcome, HealthState

    state = HealthState.DEGRADED if degraded else HealthState.UNHEALTHY

    def check() -> CheckOutcome:
        return CheckOutcome(state, message, recommendation=recommendation)

    return check


_PROBE_SECONDS = 10.0
"""How long ``health`` and the commands opening a store wait for the storage directory to answer (the
health checks' own time limit)."""


def _store_under_check(options: _Options) -> tuple[ContextManagerConfig, str | None]:
    """The configuration ``health`` checks the store with, and why there is no store (``None``: one)."""
    config = _memory_config(options)
    path = config.resolved_storage_path
    # the cache directory is not checked: only the storage the command was pointed at; no embedder:
    # opening with one embeds every memory that has no vector first (minutes, and writes)
    config = config.model_copy(update={"cache_path": path, "storage_path": path, "embedder": "none"})
    return config, _missing_store(path) if _uses_directory(config) else None  # postgres: none to look for


async def _within(seconds: float, function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a daemon thread of its own, within ``seconds`` (else ``TimeoutError``).

    Not on the event loop's executor: a thread stuck on a hung filesystem would keep the command from
    exiting (``asyncio.run`` waits for those threads).
    """
    from context_manager.core.threads import UserThreads

    threads = UserThreads("context-manager-storage-probe", max_threads=1)
    async with asyncio.timeout(seconds):
        return await threads.run(function, *args)


@app.command(short_help="Check a memory store's health (exit code 3 when unhealthy).")
def health(ctx: typer.Context) -> None:
    """Run the health checks on a memory store (exit code 3 when unhealthy or when there is none).

    Read-only: a path with no store is reported (the 'memory_store' check, unhealthy), never created, and
    no memory moves between tiers. A store another running process holds (a service: one process at a
    time) is reported in use and not checked (degraded, exit code 0): that process checks it itself.
    """

    async def body(options: _Options) -> int:
        from context_manager.core.errors import StorageError, StorageLockedError
        from context_manager.core.health_checker import HealthChecker, HealthState
        from context_manager.core.memory.manager import MemoryManager

        advice = f"Check the path: {_STORE_ADVICE}."
        where = str(options.storage) if options.storage is not None else "the configured storage_path"
        config: ContextManagerConfig | None
        try:  # the configuration checks the path, and the store is looked for: on a hung filesystem both wait
            config, problem = await _within(_PROBE_SECONDS, _store_under_check, options)
        except TimeoutError:  # a hung network filesystem: every access to it waits for ever
            config, problem = None, f"the storage at {where} does not answer within {_PROBE_SECONDS:g} s"
            advice = (
                "The storage directory's filesystem does not answer (a hung NFS or SMB mount?): check "
                "the mount and its server; every access to it waits until they answer."
            )
        in_use = False
        memory: MemoryManager | None = None
        if problem is None and config is not None:
            memory = MemoryManager(config, rebalance_on_open=False)  # checking moves no memory
            try:
                await memory.initialize()
            except StorageLockedError as error:  # a running service holds it: not a fault of the store
                in_use, memory = True, None
                problem = f"in use by {error.holder}: not checked from here (one process opens a store)"
                advice = (
                    "The process holding the store runs its own health checks (an EnhancedContextManager's "
                    "get_system_status()); stop it to check the store from here."
                )
            except StorageError as error:  # damaged: report it as a failing check
                problem, memory = _describe(error), None
                advice = "The memory store cannot be opened; follow the advice in the message above."
        try:
            checker = HealthChecker(
                context_manager=None if config is None else _StoreUnderCheck(config, memory),
                enable_auto_recovery=False,
            )
            # nothing to probe; "recreate the directory" would be bad advice
            if config is None or not config.resolved_storage_path.is_dir():
                checker.unregister_check("storage")
            if memory is None:  # no store open: "healthy, no database to check" beside a database down
                for name in ("database", "storage_writes"):
                    if name in checker.check_names:
                        checker.unregister_check(name)
            if problem is not None:
                checker.register_check(
                    "memory_store", _failing_check(problem, advice, degraded=in_use), critical=True
                )
            report = await checker.generate_diagnostic_report()
        finally:
            if memory is not None:
                await memory.cleanup()
        if options.json_output:
            _print_json(options, report.to_dict())
        else:
            from rich.table import Table

            colour = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
            table = Table(
                title=_plain(
                    f"health of {_storage_location(config) if config is not None else where}: "
                    f"{report.status.value} "
                    f"(score {report.health_score:.2f})"
                ),
                title_justify="left",
            )
            for column in ("check", "status", "message"):
                table.add_column(column, overflow="fold")
            for result in report.checks.values():
                state = result.status.value
                table.add_row(_plain(result.name), Text(state, style=colour[state]), _plain(result.message))
            options.stdout.print(table)
            for line in report.recommendations:
                options.stdout.print(f"- {_shown(line)}", markup=False, soft_wrap=True)
        return EXIT_UNHEALTHY if report.status is HealthState.UNHEALTHY else 0

    code = _run(ctx, body)
    if code:
        raise typer.Exit(code)


# --------------------------------------------------------------------------------------------- mcp


def _config_overrides(settings: list[str]) -> dict[str, str]:
    """``--set OPTION=VALUE`` pairs as a dict (validated by ContextManagerConfig)."""
    overrides: dict[str, str] = {}
    for item in settings:
        name, separator, value = item.partition("=")
        if not separator or not name.strip():
            raise CommandError(f"--set {item!r}: expected OPTION=VALUE, e.g. --set fsync=true")
        overrides[name.strip()] = value
    return overrides


@mcp_app.command("serve", short_help="Serve the memory (and your tools) over stdio or HTTP.")
def mcp_serve(
    ctx: typer.Context,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Memory directory (required here or as the global --storage, unless storage_path is set "
            "with --set or in the environment, or memory_backend is postgres; created if missing).",
            metavar="PATH",
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", metavar="NAME", help="The user every call is scoped to (default namespace if omitted)."
        ),
    ] = None,
    http: Annotated[
        int | None,
        typer.Option(
            "--http",
            min=1,
            max=65535,
            metavar="PORT",
            help="Serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio.",
        ),
    ] = None,
    tools: Annotated[
        str | None,
        typer.Option(
            "--tools",
            help="Also offer your tools: module:attribute naming your tool manager, a list of @tool "
            "functions, or a function returning one.",
            metavar="MODULE:ATTRIBUTE",
        ),
    ] = None,
    app_dir: Annotated[
        Path | None,
        typer.Option(
            "--app-dir",
            metavar="DIR",
            help="Directory to import the --tools module from (default: the working one).",
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any configuration option, OPTION=VALUE (repeatable), e.g. --set fsync=true.",
            metavar="OPTION=VALUE",
        ),
    ] = None,
) -> None:
    """Serve memory_add/search/delete/stats (and your tools) to MCP clients, over stdio by default.

    MCP clients start stdio servers with a stripped environment and an arbitrary working directory:
    give the storage as an absolute path and every option on the command line.
    """
    if app_dir is not None and not app_dir.is_dir():  # mistyped: said, not "cannot import" the module later
        reason = "is a file, not a directory" if app_dir.exists() else "does not exist"
        raise typer.BadParameter(f"directory {str(app_dir)!r} {reason}", ctx, param_hint="'--app-dir'")

    def configured(options: _Options, path: Path | None, overrides: dict[str, str]) -> ContextManagerConfig:
        """The server's configuration, after a look at its storage directory (as :func:`_store_to_open`)."""
        from context_manager.core.config import ContextManagerConfig

        values: dict[str, Any] = dict(overrides)
        if path is not None:
            values["storage_path"] = path.expanduser().resolve()
        config = ContextManagerConfig(**values)
        if path is not None and not _uses_directory(config):
            _warn_storage_ignored(options, path, config)
        # a location given as an option (--set, or the client's env block) is explicit too: only the
        # default one (./cache/storage, in whatever directory the client starts the server) is refused
        located = {"storage_path", "cache_path"} & config.model_fields_set
        if path is None and config.memory_backend == "sqlite" and not located:
            raise CommandError(
                "mcp serve needs --storage PATH (MCP clients start the server in an unknown directory, "
                "so the memory location must be explicit), or --set memory_backend=postgres"
            )
        if _uses_directory(config):
            config.resolved_storage_path.exists()  # only to see that its filesystem answers
        return config

    async def body(options: _Options) -> None:
        from context_manager.mcp_server import load_tool_registry, resolve_app_dir, run_mcp_server

        if options.json_output:  # as with examples: said, not silently dropped
            _warn_ignored(options, "--json", "mcp serve answers in the MCP protocol (JSON-RPC), not a report")
        path = _storage_argument(storage) if storage is not None else options.storage
        overrides = _config_overrides(settings or [])
        # the path is resolved and checked, and the store looked for: on a hung filesystem each waited for
        # ever, and an MCP client's start of the server with it (each retry one more stuck process)
        try:
            config = await _within(_PROBE_SECONDS, configured, options, path, overrides)
        except TimeoutError:
            raise _not_answering(path) from None
        if http is None:  # before the store is opened (or created): stdio is the protocol's channel
            closed = [
                name for name, stream in (("input", sys.stdin), ("output", sys.stdout)) if stream is None
            ]
            if closed:
                verb = "is" if len(closed) == 1 else "are"
                raise CommandError(
                    f"standard {' and '.join(closed)} {verb} closed: a stdio MCP "
                    "server talks to its client through standard input and output (an MCP client starts it "
                    "with pipes); pass --http PORT to serve over HTTP"
                )
        tool_manager = None
        if tools is not None:
            resolve_app_dir(app_dir)
            tool_manager = load_tool_registry(tools, config)
        await run_mcp_server(config, user_id=user, tools=tool_manager, http_port=http, stop_on_sigterm=True)

    _run(ctx, body, {**_USER_OPTION, "tools": "--tools", "http": "--http"})


# ---------------------------------------------------------------------------------------- examples


def _examples_script() -> Path | None:
    """The examples' entry script, or None when this installation has none.

    From a clone (or an editable install) ``examples/main_example.py`` itself, so your edits run; from an
    installed wheel the copy ``setup.py`` ships in ``context_manager/_examples``.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package.parents[1] / "examples", package / "_examples"):
        script = candidate / "main_example.py"
        if script.is_file():
            return script
    return None


@app.command(short_help="Run the examples (offline, in a temporary directory).")
def examples(
    ctx: typer.Context,
    name: Annotated[
        ExampleName, typer.Argument(help="Which examples to run (a category).", metavar="CATEGORY")
    ] = ExampleName.ALL,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print details and INFO logs.")] = False,
) -> None:
    """Run the examples (offline, temporary storage; shipped in the wheel, or a clone's examples/)."""
    options = _options(ctx)
    if options.storage is not None:
        _warn_ignored(
            options, f"--storage {options.storage}", "the examples use temporary storage of their own"
        )
    if options.json_output:
        _warn_ignored(options, "--json", "the examples print text")
    script = _examples_script()
    if script is None:
        _fail(
            options,
            "this installation has no examples (context_manager/_examples is missing); run them from a "
            "clone of the repository: python examples/main_example.py all",
        )
    command = [sys.executable, str(script), name.value, *(["--verbose"] if verbose else [])]
    completed = subprocess.run(command, check=False)  # noqa: S603 - our own script, no shell
    if completed.returncode:
        raise typer.Exit(completed.returncode)


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as one line on stderr, like the errors (``warning: ...``), without the source line."""
    return f"warning: {message}\n"


def main(prog_name: str | None = None) -> None:
    """Entry point of the ``context-manager`` script (and of ``python -m context_manager``)."""
    import warnings

    warnings.formatwarning = _format_warning
    app(prog_name=prog_name)


if __name__ == "__main__":
    main()
