"""A real hung filesystem for the tests: a FUSE mount whose server never answers.

Every stat or listing under it blocks, as on a hung NFS or SMB mount: the kernel queues the requests
until the server answers its FUSE_INIT, which nobody reads. :meth:`HungMount.release` closes the device,
which aborts the connection: the blocked calls then fail with ENOTCONN and their threads end. Needs root
and ``/dev/fuse`` (the tests using it skip otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


class HungMount:
    """A mounted FUSE filesystem nobody serves; :meth:`release` aborts it (the blocked calls return)."""

    def __init__(self, path: Path, device: int) -> None:
        self.path = path
        """The mount point: any access to it blocks until :meth:`release`."""
        self._device: int | None = device

    def release(self) -> None:
        """Abort the filesystem: calls blocked on it fail, new ones fail at once."""
        if self._device is not None:
            os.close(self._device)
            self._device = None


@contextlib.contextmanager
def hung_mount(directory: Path) -> Iterator[HungMount]:
    """Mount a hung filesystem at ``directory / "hung"``, new or existing (skips where it cannot be)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounting a FUSE filesystem needs root and /dev/fuse")
    libc = ctypes.CDLL(None, use_errno=True)
    mount_point = directory / "hung"
    mount_point.mkdir(exist_ok=True)  # existing: hung from now on, as when its server goes down
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
