"""``PostgresDatabase``: the connection pool, bounded retries and migrations shared by every PostgreSQL part.

One :class:`PostgresDatabase` per process and DSN is enough: memory and persisted conversations use the
same pool. Connections are ``psycopg`` 3 async connections in autocommit mode (a statement that returns
has committed; a multi-statement change runs in ``connection.transaction()``).

A statement that fails because the connection was lost (server restarted, network cut, a failover) or
because of a serialisation conflict is retried a bounded number of times with a growing pause, on a
fresh connection; then :class:`~context_manager.core.errors.StorageError` is raised. Every write the
library retries is idempotent (upserts by key, deletes, absolute updates, appends checked by version)
or asks the server whether its earlier attempt committed (the access counts' additions, by transaction
id), so a retry after a commit whose acknowledgement was lost changes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from context_manager.core import forks
from context_manager.core.errors import (
    ConfigurationError,
    LifecycleError,
    MissingDependencyError,
    StorageError,
)

if TYPE_CHECKING:  # pragma: no cover
    import psycopg
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresDatabase", "own_table", "redact_dsn"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)
"""Seconds to wait before each retry of an operation that lost its connection (then StorageError)."""

# A named advisory lock's key: the name within the schema the memory lives in (an advisory lock is
# database-wide: two memories in two schemas of one database must not take each other's turns)
_LOCK_KEY = "hashtext(%s || '@' || current_schema())"
_MIGRATION_LOCK = 0x636D5F6D6967  # "cm_mig": the database-wide migration lock of earlier releases
# Migrations take their schema's lock (two workers on one schema take turns, two schemas' do not wait for
# each other), and the earlier releases' lock shared: a process of an earlier release, which takes it
# alone, still takes turns with them during a rolling upgrade
_MIGRATION_KEY = "context_manager:migrations"
# two statements: one that failed (a cancellation, lock_timeout) while waiting for the schema's lock kept the
# shared one it had taken (a session lock outlives an error) on a pooled connection, for an earlier release
# to wait for
_LOCK_EARLIER_SHARED = "SELECT pg_advisory_lock_shared(%s)"
_UNLOCK_EARLIER_SHARED = "SELECT pg_advisory_unlock_shared(%s)"
_LOCK_SCHEMA_MIGRATIONS = "SELECT pg_advisory_lock(" + _LOCK_KEY + ")"
_MIGRATION_LOCKED = (_MIGRATION_LOCK, _MIGRATION_KEY)  # the parameters of the statements below
_UNLOCK_MIGRATIONS = "SELECT pg_advisory_unlock_shared(%s), pg_advisory_unlock(" + _LOCK_KEY + ")"
_LOCK_MIGRATIONS_IN_TRANSACTION = (
    "SELECT pg_advisory_xact_lock_shared(%s), pg_advisory_xact_lock(" + _LOCK_KEY + ")"
)
_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE: no transaction open, no statement running
_OPEN_POLL = 0.1  # seconds between two looks at the pool's failed connection attempts while it opens
RECONNECT_TIMEOUT = 2.0
"""Seconds a pool's attempt to replace a lost connection lasts before it starts over (``reconnect_timeout``).

psycopg_pool doubles the wait after each failed attempt (1, 2, 4 ... 128 s) until ``reconnect_timeout`` (5
minutes by default): a long-lived process whose server was down for 33 s got its next attempt about 30 s after
the server was back, and failed every call meanwhile as if the server were still down. An attempt now gives up
after this long and :func:`_reconnect_again` starts a new one at once (psycopg_pool's public
``reconnect_failed`` hook), so a pool tries again at least every 2 s however long the outage.
"""
TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""libpq settings of every connection unless the DSN gives its own: a silent peer is probed after 10 s idle,
given up after three unanswered probes 5 s apart, and data unacknowledged for 30 s drops the connection."""
LOCK_CONNECTIONS = 3
"""Connections besides the pool that hold cross-process advisory locks (a consolidation, an overflow move,
the numbering of a chunk of conversation turns)."""


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (safe for messages and logs).

    Also a URL whose ``//`` a path made ``/`` (``Path("postgresql://user:pw@host/db")``).
    """
    # up to the last '@' before the path: a password written with an unencoded '@' (which libpq would
    # misread as the host's start) is hidden whole, not only up to its first '@'
    redacted = re.sub(r"(:/+[^:/@]*:)[^/?#]*@", r"\1***@", dsn)
    # a key=value value: quoted ('...' with \' and \\ escapes) or up to the next unescaped space
    return re.sub(
        r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)+\\?)",
        r"\1***",
        redacted,
        flags=re.IGNORECASE,
    )


def own_table(name: str) -> str:
    """SQL for the ``regclass`` of the store's table ``name``, or NULL when it has none.

    Looked up in ``current_schema()`` (the first schema of the ``search_path`` that exists, where the
    migrations create the tables), not along the whole path as ``to_regclass('name')`` is: with
    ``search_path=tenant_b,public`` that found ``public``'s table while ``tenant_b`` had none yet.
    ``name`` is one of the library's own table names (no quoting needed).
    """
    return f"to_regclass(quote_ident(current_schema()) || '.{name}')"


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("memory_backend='postgres'", "psycopg", "postgres") from error
    _quiet_own_closes()
    return psycopg, psycopg_pool


async def _reconnect_again(pool: AsyncConnectionPool) -> None:
    """Start a new attempt of ``pool`` to connect, its last one having given up (:data:`RECONNECT_TIMEOUT`).

    The pool counts a connection fewer once an attempt gives up; :meth:`check` (public) has it grow back by
    one when it is short of connections (at once, as a new attempt of its own) and drops the idle connections
    the server closed.
    """
    await pool.check()


_closed_on_purpose: weakref.WeakSet[Any] = weakref.WeakSet()
"""Connections this module closed on purpose before handing them back to their pool."""
_DISCARDING_CLOSED = "discarding closed connection: %s"
"""What psycopg_pool logs (WARNING) for a connection handed back closed."""


class _OwnClosesFilter(logging.Filter):
    """Drops psycopg_pool's "discarding closed connection" warning for a connection closed on purpose.

    A connection a cancellation left unsettled is closed, then handed back (:func:`_close_on_purpose`): the
    pool warned about it as it does about one the server closed, a warning for every caller's timeout
    (an MCP client's cancel) where nothing was wrong. Any other record, the same warning about a connection
    the server or the network closed included, passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _DISCARDING_CLOSED or not isinstance(record.args, tuple) or not record.args:
            return True
        return record.args[0] not in _closed_on_purpose


_own_closes_filter = _OwnClosesFilter()


def _quiet_own_closes() -> None:
    """Put :class:`_OwnClosesFilter` on psycopg_pool's logger (once; when psycopg is first used)."""
    pool_logger = logging.getLogger("psycopg.pool")
    if _own_closes_filter not in pool_logger.filters:
        pool_logger.addFilter(_own_closes_filter)


async def _close_on_purpose(connection: psycopg.AsyncConnection[Any], why: str) -> None:
    """Close ``connection`` (its pool then replaces it) without the pool warning about it."""
    _closed_on_purpose.add(connection)
    logger.debug("PostgreSQL connection closed: %s", why)
    with contextlib.suppress(Exception):
        await connection.close()


class PostgresDatabase:
    """A connection pool to one PostgreSQL database, with retries and ordered migrations.

    Args:
        dsn: Connection string (``postgresql://user:password@host:5432/db``, or ``key=value`` pairs);
            ``options=-csearch_path=...`` picks the schema the tables live in.
        pool_size: Most connections this process opens.
        connect_timeout: Seconds to wait for a connection before giving up.
        statement_timeout: Seconds a statement of the pool may run (or wait for a lock) before the server
            cancels it (its ``statement_timeout``, set on each new connection); ``None`` leaves the server's
            own. :meth:`migrate`, :meth:`create_if_missing` and ``run(..., unbounded=True)`` run without it.
        named: What the hint of a failed connection calls the DSN: where the user gave it (by default the
            ``postgres_dsn`` option).

    Connections also get TCP keepalives and a TCP user timeout (:data:`TCP_SETTINGS`) unless the DSN sets
    them: a server that vanished without closing the connection (a failover, a network cut) is found
    within about 30 s and the call retried on a fresh connection, instead of waiting for the kernel's own
    retransmission timeout (about 15 minutes on Linux).
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        statement_timeout: float | None = None,
        named: str = "the DSN (postgres_dsn / PYTHON_CONTEXT_MANAGER_POSTGRES_DSN)",
    ) -> None:
        self.dsn = dsn
        """The connection string (with its password: never log it; see :attr:`location`)."""
        self.pool_size = pool_size
        """Most connections of the pool."""
        self.connect_timeout = connect_timeout
        """Seconds to wait for a connection."""
        self.statement_timeout = statement_timeout
        """Seconds a pooled statement may run, or ``None`` (the server's setting)."""
        self.named = named
        """What a connection failure's hint calls the DSN (where it was given), to be checked."""
        self._pool: AsyncConnectionPool | None = None
        self._lock_pool: AsyncConnectionPool | None = None  # opened on first use (see lock_connection)
        self._lock_pool_opening = asyncio.Lock()  # two first uses at once open one pool
        self._psycopg: Any = None
        self._pid = forks.pid  # the process whose pool it is (set again by open())
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop the pool's tasks run in

    @property
    def location(self) -> str:
        """The DSN without its password."""
        return redact_dsn(self.dsn)

    @property
    def is_open(self) -> bool:
        """Whether the pool is open."""
        return self._pool is not None

    async def open(self) -> None:
        """Open the pool and check that the server answers (StorageError when it does not)."""
        if self._pool is not None:
            self._check_process("open")
            return
        psycopg, psycopg_pool = _import_psycopg()
        self._psycopg = psycopg
        self._check_dsn(psycopg)
        pool = psycopg_pool.AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs=self._connection_settings(psycopg),
            configure=self._configure if self.statement_timeout is not None else None,
            name="context-manager",
            reconnect_timeout=RECONNECT_TIMEOUT,
            reconnect_failed=_reconnect_again,
        )
        try:
            reason = await self._open_pool(pool, psycopg, psycopg_pool)
        except BaseException:
            await pool.close()
            raise
        if reason is not None:
            await pool.close()
            raise StorageError(
                f"cannot connect to PostgreSQL at {self.location}: {reason}; check that the server "
                f"runs and {self.named} is right"
            )
        self._pid = forks.pid
        self._loop = asyncio.get_running_loop()
        self._pool = pool

    async def _open_pool(self, pool: AsyncConnectionPool, psycopg: Any, psycopg_pool: Any) -> str | None:
        """Open ``pool``, waiting at most :attr:`connect_timeout`; ``None`` once connected, else why not.

        The pool retries a failing connection until its timeout and then says only "pool initialization
        incomplete": a database or role that does not exist, or a wrong password, read as a server that is
        down. Once one of its attempts has failed, one direct attempt, given what is left of the timeout,
        gets libpq's reason, which the error quotes; a server that never answers fails no attempt before
        the timeout (or the direct one too), and the timeout is the reason. The whole open so stays within
        :attr:`connect_timeout` (a direct attempt after the pool's timeout, of up to 2 s, came on top).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        await pool.open(wait=False)
        waiting = asyncio.ensure_future(pool.wait(self.connect_timeout))
        probe: asyncio.Future[str | None] | None = None
        try:
            while not (await asyncio.wait({waiting}, timeout=_OPEN_POLL))[0]:
                if probe is None and pool.get_stats().get("connections_errors", 0):
                    probe = asyncio.ensure_future(self._why_no_connection(psycopg, deadline - loop.time()))
            try:
                waiting.result()
            except Exception as error:
                reason = _describe(error)
                if isinstance(error, psycopg_pool.PoolTimeout) and probe is not None:
                    reason = await probe or reason  # it ends by the deadline
                return reason
            return None
        finally:
            for task in (waiting, probe):
                if task is not None:
                    task.cancel()  # a no-op once done

    async def _why_no_connection(self, psycopg: Any, budget: float) -> str | None:
        """Why a connection fails, in libpq's words, from one attempt of at most ``budget`` seconds.

        ``None`` if unknown (it connects, or does not answer in time).
        """
        try:
            connection = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.dsn, **self._connection_settings(psycopg)),
                max(0.0, budget),
            )
        except psycopg.Error as error:
            text = " ".join(str(error).split())
            return redact_dsn(f"{type(error).__name__}: {text}") if text else None
        except Exception:  # a timeout, or anything else: the pool's reason stands
            return None
        with contextlib.suppress(Exception):
            await connection.close()
        return None

    def _check_process(self, operation: str) -> None:
        """Refuse to use the pool in a forked child, or after the event loop it was opened in ended.

        Two processes sending statements on one connection interleave their messages: the server's
        answers go to either (``server sent data without prior row description``), or a call waits for
        ever (see :mod:`~context_manager.core.forks`). The pool's own tasks (replacing a lost connection,
        opening more, closing the pool) run in the loop that opened it: once that loop has ended (an
        ``asyncio.run`` that initialized the manager at import time), a lost connection is never
        replaced, and every later call would wait ``connect_timeout`` and fail as if the server were down.

        Raises:
            LifecycleError: this process is not the one that opened the pool, or its loop has ended.
        """
        if self._pid != forks.pid:
            raise forks.forked_error(
                f"PostgreSQL {operation}", f"PostgreSQL storage ({self.location})", self._pid
            )
        loop = self._loop
        if loop is not None and loop.is_closed():
            raise LifecycleError(
                f"PostgreSQL {operation}: the connection pool to {self.location} was opened in an event "
                "loop that has ended (an asyncio.run() that initialized the manager, at import time say); "
                "the pool's own tasks ran there, so no connection would be replaced or added any more. "
                "Initialize managers in the event loop that uses them (a FastAPI lifespan handler, "
                "SyncContextManager in synchronous code) and clean them up before it ends"
            )

    def _connection_settings(self, psycopg: Any) -> dict[str, Any]:
        """Keyword arguments of every connection: autocommit, the connect timeout, :data:`TCP_SETTINGS`.

        A setting the DSN gives itself is left to the DSN (keyword arguments would override it).
        """
        given = psycopg.conninfo.conninfo_to_dict(self.dsn)
        settings: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in given:
            settings["connect_timeout"] = max(1, round(self.connect_timeout))
        settings.update((key, value) for key, value in TCP_SETTINGS.items() if key not in given)
        if psycopg.pq.version() < 120000:  # libpq before 12 refuses the connection over an unknown setting
            settings.pop("tcp_user_timeout", None)
        return settings

    async def _configure(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Set the statement timeout of a new pooled connection (the pool calls this once per connection)."""
        assert self.statement_timeout is not None  # the pool calls this only with a timeout
        await connection.execute(
            "SELECT set_config('statement_timeout', %s, false)", (_milliseconds(self.statement_timeout),)
        )

    def _check_dsn(self, psycopg: Any) -> None:
        """Refuse a connection string libpq cannot parse, at once and without showing its password.

        Otherwise the pool would retry it for ``connect_timeout`` seconds, logging libpq's message (which
        quotes the whole DSN, password included) on every attempt.
        """
        try:
            psycopg.conninfo.conninfo_to_dict(self.dsn)
        except psycopg.Error as error:
            raise ConfigurationError(
                "postgres_dsn",
                self.location,
                "a libpq connection string: postgresql://user:password@host:5432/database or key=value pairs",
                detail=redact_dsn(str(error).strip()),
            ) from None

    async def close(self) -> None:
        """Close the pool (waits for connections in use to come back).

        In a process forked after :meth:`open` it only forgets the pool: closing its connections would
        end the parent's sessions (the server sees one connection, whichever process closes it).
        """
        pool, self._pool = self._pool, None
        lock_pool, self._lock_pool = self._lock_pool, None
        if self._pid != forks.pid:
            return
        loop, self._loop = self._loop, None
        if loop is not None and loop.is_closed():
            # its tasks cannot be stopped in a loop that has ended: the connections close when collected
            logger.warning(
                "PostgreSQL pool to %s closed after the event loop that opened it ended: its connections "
                "close when collected; initialize and clean up managers in the loop that uses them",
                self.location,
            )
            return
        if lock_pool is not None:
            await lock_pool.close()
        if pool is not None:
            await pool.close()

    async def _locks_pool(self) -> AsyncConnectionPool:
        """The pool of lock connections (opened on first use; see :meth:`lock_connection`)."""
        if self._pool is None:
            raise StorageError(f"PostgreSQL storage at {self.location} is closed")
        self._check_process("lock")
        lock_pool = self._lock_pool
        if lock_pool is None:
            async with self._lock_pool_opening:
                lock_pool = self._lock_pool
                if lock_pool is None:
                    _, psycopg_pool = _import_psycopg()
                    lock_pool = psycopg_pool.AsyncConnectionPool(
                        self.dsn,
                        min_size=0,
                        max_size=LOCK_CONNECTIONS,
                        max_idle=60.0,
                        open=False,
                        timeout=self.connect_timeout,
                        kwargs=self._connection_settings(self._psycopg),
                        name="context-manager-locks",
                        reconnect_timeout=RECONNECT_TIMEOUT,
                        reconnect_failed=_reconnect_again,
                    )
                    await lock_pool.open(wait=False)
                    self._lock_pool = lock_pool
        return lock_pool

    @contextlib.asynccontextmanager
    async def lock_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection to hold session advisory locks on for a block, taken outside the pool.

        A consolidation, an overflow move or a chunk of conversation turns holds its lock while its
        statements run on pooled connections: were the lock's connection one of the pool's, a small pool
        could be left with none for those statements (with ``pool_size=1`` a consolidation waited for
        itself until the pool timed out). These come from a second pool of :data:`LOCK_CONNECTIONS` (a
        process holds at most one consolidation's, one move's and one turn chunk's at a time), opened on
        first use, idle connections closed after a minute. :meth:`advisory_locks` takes the locks on one,
        retrying on a lost connection.

        Raises:
            StorageError: the storage is closed, or no connection could be made.
        """
        lock_pool = await self._locks_pool()
        async with contextlib.AsyncExitStack() as stack:
            try:
                connection = await stack.enter_async_context(lock_pool.connection())
            except Exception as error:  # PoolTimeout, OperationalError: no connection within the timeout
                raise StorageError(
                    f"PostgreSQL at {self.location}: no connection for a cross-process lock: "
                    f"{_describe(error)}"
                ) from None
            yield connection

    @contextlib.asynccontextmanager
    async def advisory_locks(self, keys: Sequence[str], *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the session advisory locks named ``keys`` (taken in this order) for the block.

        On a lock connection (:meth:`lock_connection`). Taking them is retried like :meth:`run` when the
        connection was lost (a server restart or failover closes every idle connection of the pool): the
        server released whatever that connection held. With ``wait=False`` (one key) the lock is only
        tried: the block gets ``False`` when another session holds it. Released in the reverse order at
        the end of the block; a connection lost inside the block released them already (the work in the
        block must not rely on them for its correctness, only to avoid doing the same work twice).

        Raises:
            StorageError: no connection could be made (after the retries), or the storage is closed.
        """
        psycopg = self._psycopg
        last: BaseException | None = None
        for attempt in range(len(RETRY_DELAYS) + 1):
            lock_pool = await self._locks_pool()
            try:
                connection = await lock_pool.getconn()
            except Exception as error:  # PoolTimeout: no connection within connect_timeout
                if type(error).__name__ == "PoolTimeout":  # as in run(): not worth another timeout
                    raise StorageError(
                        f"PostgreSQL at {self.location}: no connection for a cross-process lock: "
                        f"{self._no_connection(error)}"
                    ) from None
                last = error
            else:
                held: list[str] = []
                try:
                    acquired = True
                    for key in keys:
                        if wait:
                            await connection.execute("SELECT pg_advisory_lock(" + _LOCK_KEY + ")", (key,))
                        else:
                            cursor = await connection.execute(
                                "SELECT pg_try_advisory_lock(" + _LOCK_KEY + ")", (key,)
                            )
                            row = await cursor.fetchone()
                            acquired = bool(row is not None and row[0])
                            if not acquired:
                                break
                        held.append(key)
                except psycopg.OperationalError as error:
                    last = error  # the server closed it (and released its locks): a fresh one next
                    await lock_pool.putconn(connection)  # a broken connection is discarded by the pool
                except BaseException as error:
                    # a cancellation can come after the server granted a lock the list does not name yet
                    # (psycopg finishes the statement, then raises): closing the session releases all
                    if isinstance(error, Exception):
                        await _release(connection, held)
                    else:
                        await _close_on_purpose(connection, "a cancellation came while it took locks")
                    await lock_pool.putconn(connection)
                    raise
                else:
                    try:
                        yield acquired
                    finally:
                        try:
                            await _release(connection, held)
                        except BaseException:  # cancelled while releasing: the session must not keep one
                            await _close_on_purpose(connection, "a cancellation came while it released locks")
                            raise
                        finally:
                            await lock_pool.putconn(connection)
                    return
            if attempt < len(RETRY_DELAYS):
                logger.warning(
                    "PostgreSQL lock connection failed (%s); retrying in %.2f s",
                    type(last).__name__,
                    RETRY_DELAYS[attempt],
                )
                await asyncio.sleep(RETRY_DELAYS[attempt])
                with contextlib.suppress(Exception):
                    await lock_pool.check()  # drop the idle connections the server closed
        raise StorageError(
            f"PostgreSQL at {self.location}: no connection for a cross-process lock after "
            f"{len(RETRY_DELAYS) + 1} attempts: {_describe(last)}"
        )

    def _cancelled(self, error: BaseException) -> str:
        """Why the server cancelled a statement (for a StorageError)."""
        if self.statement_timeout is not None and "statement timeout" in str(error):
            return (
                f"was cancelled after {self.statement_timeout:g} s (postgres_statement_timeout): the server "
                "was overloaded, or another session held a lock it needed; raise postgres_statement_timeout "
                "if such statements are expected to take longer"
            )
        return f"was cancelled by the server: {_describe(error)}"

    def _no_connection(self, error: BaseException) -> str:
        """Why a call found no connection within :attr:`connect_timeout` (for a StorageError)."""
        return (
            f"no connection within {self.connect_timeout:g} s (postgres_connect_timeout): the server is "
            f"down or cannot be reached, or every connection of the pool stayed busy ({_describe(error)})"
        )

    async def run(
        self,
        operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]],
        what: str,
        *,
        unbounded: bool = False,
    ) -> _T:
        """Run ``operation`` with a pooled connection, retrying on a lost connection (bounded).

        ``operation`` must be idempotent: it may run again after a commit whose acknowledgement was lost.
        ``unbounded``: its statements run without :attr:`statement_timeout` (migrations, index builds).

        Raises:
            StorageError: the server could not be reached (after the retries), refused the statement, or
                cancelled it after :attr:`statement_timeout` (not retried: it would wait as long again).
            LifecycleError: the pool was opened by the process that forked this one.
        """
        self._check_process(what)
        if unbounded and self.statement_timeout is not None:
            operation = _without_timeout(operation, self.statement_timeout)
        psycopg = self._psycopg
        last: BaseException | None = None
        for attempt in range(len(RETRY_DELAYS) + 1):
            pool = self._pool
            if pool is None:
                raise StorageError(f"PostgreSQL storage at {self.location} is closed")
            try:
                async with pool.connection() as connection:
                    try:
                        return await operation(connection)
                    except BaseException as error:
                        await _discard_if_unsettled(connection, error)
                        raise
            except psycopg.errors.ProgramLimitExceeded as error:  # too large for the server: so it stays
                raise StorageError(
                    f"PostgreSQL at {self.location}: {what} failed: {_describe(error)}"
                ) from None
            except psycopg.errors.QueryCanceled as error:  # an OperationalError, but not a lost connection
                raise StorageError(
                    f"PostgreSQL at {self.location}: {what} {self._cancelled(error)}"
                ) from None
            except (psycopg.OperationalError, psycopg.errors.TransactionRollback) as error:
                if type(error).__name__ == "PoolTimeout":  # psycopg_pool's, an OperationalError
                    # the pool kept trying to connect for the whole timeout: waiting that long again,
                    # once per retry, held a call for a minute when the server was down
                    raise StorageError(
                        f"PostgreSQL at {self.location}: {what} failed: {self._no_connection(error)}"
                    ) from None
                last = error  # a lost connection (or TooManyRequests, a deadlock): retried
            except psycopg.Error as error:  # a statement the server refused: not worth retrying
                raise StorageError(
                    f"PostgreSQL at {self.location}: {what} failed: {_describe(error)}"
                ) from None
            if attempt < len(RETRY_DELAYS):
                logger.warning(
                    "PostgreSQL %s failed (%s); retrying in %.2f s",
                    what,
                    type(last).__name__,
                    RETRY_DELAYS[attempt],
                )
                await asyncio.sleep(RETRY_DELAYS[attempt])
                if self._pool is not None:
                    await self._pool.check()  # drop the connections the server closed
        raise StorageError(
            f"PostgreSQL at {self.location}: {what} failed after {len(RETRY_DELAYS) + 1} attempts: "
            f"{_describe(last)}"
        )

    async def migrate(
        self, migrations: list[tuple[str, list[str]]], *, optional: Iterable[str] = ()
    ) -> list[str]:
        """Apply the missing migrations in order, under an advisory lock; return the names applied.

        Two processes starting together: the second waits for the lock, then finds nothing left to do.
        Each migration runs in its own transaction with the row that records it. ``optional``: names of
        migrations this version knows but applies only when needed (the vector table): found applied,
        they are not taken for a newer version's.
        """
        known = {name for name, _ in migrations} | set(optional)

        async def applied_before(connection: psycopg.AsyncConnection[Any]) -> set[str] | None:
            cursor = await connection.execute(f"SELECT {own_table('cm_schema_migrations')} IS NULL")
            if (await cursor.fetchone() or (True,))[0]:
                return None
            cursor = await connection.execute("SELECT name FROM cm_schema_migrations")  # the own table
            return {row[0] for row in await cursor.fetchall()}

        # Nothing missing (every open but a store's first, or an upgrade's): no lock to wait for. A migration
        # commits with the row that records it, so a row read is a migration done. Taking the lock anyway
        # made every open wait, without a bound, while any process held it (another worker starting with a
        # slow migration to apply): a server opening a manager per request served none meanwhile.
        done = await self.run(applied_before, "migration check")
        if done is not None and all(name in done for name, _ in migrations):
            self._warn_unknown(done - known)
            return []

        async def apply(connection: psycopg.AsyncConnection[Any]) -> list[str]:
            await connection.execute(_LOCK_EARLIER_SHARED, (_MIGRATION_LOCK,))
            try:
                await connection.execute(_LOCK_SCHEMA_MIGRATIONS, (_MIGRATION_KEY,))
            except BaseException:
                with contextlib.suppress(Exception):  # a lost connection released it already
                    await connection.execute(_UNLOCK_EARLIER_SHARED, (_MIGRATION_LOCK,))
                raise
            try:
                # in the first schema of the path, where the tables are created, not the first of that name
                # along it (tenant_b,public: public's store would be taken for tenant_b's)
                cursor = await connection.execute(f"SELECT {own_table('cm_schema_migrations')} IS NULL")
                if (await cursor.fetchone() or (True,))[0]:
                    # only when missing: CREATE ... IF NOT EXISTS needs CREATE on the schema even when the
                    # table exists, which an application role opening a store migrated by its owner lacks
                    await connection.execute(
                        "CREATE TABLE IF NOT EXISTS cm_schema_migrations ("
                        "name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                cursor = await connection.execute("SELECT name FROM cm_schema_migrations")
                done = {row[0] for row in await cursor.fetchall()}
                applied = []
                for name, statements in migrations:
                    if name in done:
                        continue
                    async with connection.transaction():
                        for statement in statements:
                            await connection.execute(statement)
                        await connection.execute(
                            "INSERT INTO cm_schema_migrations(name) VALUES (%s)", (name,)
                        )
                    applied.append(name)
                self._warn_unknown(done - known)
                return applied
            finally:
                await connection.execute(_UNLOCK_MIGRATIONS, _MIGRATION_LOCKED)

        applied = await self.run(apply, "migration", unbounded=True)
        if applied:
            logger.info("PostgreSQL schema at %s migrated: %s", self.location, ", ".join(applied))
        return applied

    @staticmethod
    def _warn_unknown(unknown: set[str]) -> None:
        """Log the migrations found applied that this version does not know (a newer version's)."""
        if unknown:
            logger.warning(
                "the PostgreSQL schema has migrations this version does not know (%s): "
                "a newer version of context-manager migrated it",
                ", ".join(sorted(unknown)),
            )

    async def create_if_missing(self, statement: str, what: str) -> None:
        """Run a ``CREATE ... IF NOT EXISTS`` statement under the migration lock.

        PostgreSQL does not serialise two sessions creating the same object: both see it missing, and the
        second fails on the catalog's unique index (``pg_class_relname_nsp_index``). Under the lock (a
        transaction-level one, released at commit) the second waits, then finds it there.
        """

        async def create(connection: psycopg.AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute(_LOCK_MIGRATIONS_IN_TRANSACTION, _MIGRATION_LOCKED)
                await connection.execute(statement)

        await self.run(create, what, unbounded=True)

    def stats(self) -> dict[str, int]:
        """The pool's counters (size, available, waiting requests ...), for health reports."""
        if self._pool is None:
            return {}
        return {key: int(value) for key, value in self._pool.get_stats().items()}


async def _release(connection: psycopg.AsyncConnection[Any], held: Sequence[str]) -> None:
    """Release the advisory locks ``held`` on ``connection``, newest first (a lost connection did already)."""
    for key in reversed(held):
        with contextlib.suppress(Exception):
            await connection.execute("SELECT pg_advisory_unlock(" + _LOCK_KEY + ")", (key,))


async def _discard_if_unsettled(connection: psycopg.AsyncConnection[Any], error: BaseException) -> None:
    """Close ``connection`` (the pool then replaces it) when ``error`` left it unfit to be reused.

    psycopg, cancelled while it synced the pipeline a transaction opens in, finished the sync and raised
    with the pipeline's level still counted: the connection stayed in pipeline mode for good, and the pool,
    which looks only at the transaction status, handed it out again (a later read found no result,
    ``IndexError`` from ``cursor.scroll``, and its statements ran in one implicit transaction). So a
    connection still in pipeline mode after any error is closed, and one a cancellation (``CancelledError``,
    ``KeyboardInterrupt``: not an ``Exception``) left anywhere but idle, outside a transaction. Closing it
    rolls back what it had not committed: a cancelled write is all done (its commit reached the server) or
    not done at all.
    """
    pgconn = connection.pgconn
    if not pgconn.pipeline_status and (isinstance(error, Exception) or pgconn.transaction_status == _IDLE):
        return
    await _close_on_purpose(connection, f"{type(error).__name__} left it unsettled")


def _milliseconds(seconds: float) -> str:
    """A ``statement_timeout`` value: whole milliseconds, at least 1."""
    return f"{max(1, round(seconds * 1000))}ms"


def _without_timeout(
    operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]], statement_timeout: float
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]:
    """``operation`` run with the connection's statement timeout lifted, and set back after it."""

    async def unbounded(connection: psycopg.AsyncConnection[Any]) -> _T:
        await connection.execute("SELECT set_config('statement_timeout', '0', false)")
        try:
            return await operation(connection)
        finally:
            # a connection lost meanwhile is discarded by the pool; one in a failed transaction is rolled
            # back by the pool, which keeps session settings: set it back either way
            with contextlib.suppress(Exception):
                await connection.execute(
                    "SELECT set_config('statement_timeout', %s, false)", (_milliseconds(statement_timeout),)
                )

    return unbounded


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
