"""The diagnostic report on storage that does not answer: a real hung filesystem (FUSE, nobody serving)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from context_manager.core.health_checker import HealthChecker, HealthState
from tests.hung_filesystem import HungMount, hung_mount


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[HungMount]:
    with hung_mount(tmp_path) as mount:
        yield mount


async def test_report_on_a_hung_filesystem_ends_and_says_the_storage_read_timed_out(
    hung: HungMount,
) -> None:
    """The report's storage facts (directory sizes, free disk) are read within ``check_timeout``.

    Before, they were read with no time limit: the report (and ``context-manager health``) on storage on
    a hung network filesystem never returned, although every check is bounded.
    """
    hung_directory = hung.path
    try:
        checker = HealthChecker(storage_path=hung_directory, check_timeout=0.3)
        started = time.monotonic()
        report = await asyncio.wait_for(checker.generate_diagnostic_report(), 10.0)
        assert time.monotonic() - started < 5.0
        assert report.status is not HealthState.HEALTHY
        assert report.checks["storage"].message == "timed out after 0.3 s"
        storage = report.storage
        assert storage["timed_out_s"] == 0.3
        assert storage["directories"] == [{"path": str(hung_directory)}]  # what it was reading
        assert "no answer within 0.3 s" in storage["error"]
        assert any("storage" in line and "do not answer" in line for line in report.recommendations)
        assert any(error["source"] == "report:storage" for error in report.recent_errors)
        report.to_dict()  # still JSON-friendly

        # a second report while the first read still hangs: reported at once, no second thread stuck on it
        threads = threading.active_count()
        again = await asyncio.wait_for(checker.generate_diagnostic_report(), 10.0)
        assert "still hung" in again.storage["error"]
        assert threading.active_count() == threads
    finally:  # before the event loop ends: its executor waits for its threads
        hung.release()


async def test_report_on_a_dead_mount_says_what_failed_instead_of_raising(hung: HungMount) -> None:
    """A mount whose server went away for good (aborted: every call fails at once with ENOTCONN, as on a
    dead sshfs or a stale NFS handle): the storage facts step caught only its timeout, so the OSError
    escaped and ``generate_diagnostic_report()`` (and ``context-manager health``) raised instead of
    reporting."""
    hung.release()  # aborted: "Transport endpoint is not connected" from now on
    checker = HealthChecker(storage_path=hung.path, check_timeout=2.0)
    report = await asyncio.wait_for(checker.generate_diagnostic_report(), 10.0)
    assert report.status is not HealthState.HEALTHY
    storage = report.storage
    assert storage["directories"] == [{"path": str(hung.path)}]
    assert "not connected" in storage["error"] and "timed_out_s" not in storage
    assert any(error["source"] == "report:storage" for error in report.recent_errors)
    report.to_dict()
