"""The diagnostic report on storage that does not answer: a real hung filesystem (FUSE, nobody serving)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from context_manager.core.health_checker import HealthChecker, HealthState


class HungMount:
    """A mounted FUSE filesystem nobody serves; :meth:`release` aborts it (the blocked calls return)."""

    def __init__(self, path: Path, device: int) -> None:
        self.path = path
        self._device: int | None = device

    def release(self) -> None:
        if self._device is not None:
            os.close(self._device)
            self._device = None


@pytest.fixture
def hung_mount(tmp_path: Path) -> Iterator[HungMount]:
    """A directory on a FUSE filesystem whose server never answers: every stat or listing of it blocks.

    The kernel queues the requests until the server answers its FUSE_INIT, which nobody reads; closing
    the device aborts the connection, and the blocked calls then fail with ENOTCONN (the test's threads
    end). Needs root and /dev/fuse (a hung NFS or SMB mount behaves the same way for the caller).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounting a FUSE filesystem needs root and /dev/fuse")
    libc = ctypes.CDLL(None, use_errno=True)
    mount_point = tmp_path / "hung"
    mount_point.mkdir()
    device = os.open("/dev/fuse", os.O_RDWR)
    options = f"fd={device},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"hung", str(mount_point).encode(), b"fuse", 0, options) != 0:
        os.close(device)
        pytest.skip(f"cannot mount FUSE here: {os.strerror(ctypes.get_errno())}")
    mount = HungMount(mount_point, device)
    try:
        yield mount
    finally:
        mount.release()
        libc.umount2(str(mount_point).encode(), 2)  # MNT_DETACH


async def test_report_on_a_hung_filesystem_ends_and_says_the_storage_read_timed_out(
    hung_mount: HungMount,
) -> None:
    """The report's storage facts (directory sizes, free disk) are read within ``check_timeout``.

    Before, they were read with no time limit: the report (and ``context-manager health``) on storage on
    a hung network filesystem never returned, although every check is bounded.
    """
    hung_directory = hung_mount.path
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
        hung_mount.release()
