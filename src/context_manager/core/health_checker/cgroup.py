"""The memory limit and use of the process's cgroup: a container's limit, which the host's figures hide.

In a container (Docker, Kubernetes) ``psutil.virtual_memory()`` reads the host's ``/proc/meminfo``: a pod
limited to 512 MB on a 64 GB node is OOM-killed while the host's memory looks nearly free. The
``memory_pressure`` check reads the cgroup's limit and use from the cgroup filesystem as well:

* cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` exists): ``memory.max`` of the process's cgroup and of
  its ancestors (the smallest applies), ``memory.current`` and ``inactive_file`` in ``memory.stat``;
* cgroup v1 (``/sys/fs/cgroup/memory``): ``memory.limit_in_bytes`` and ``hierarchical_memory_limit`` in
  ``memory.stat`` (the smallest), ``memory.usage_in_bytes`` and ``total_inactive_file``.

The process's cgroup comes from ``/proc/self/cgroup``; a container that sees only its own cgroup (a cgroup
namespace, or the subtree mounted at ``/sys/fs/cgroup``) reads the files at the mount point. ``max`` or a
huge value (cgroup v1 says "no limit" with 9223372036854771712) is no limit. The use judged is the
*working set*, the use less the inactive file cache (the kernel reclaims it before an OOM kill; the kubelet
judges the same figure): SQLite's page cache would otherwise look like pressure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CgroupMemory", "read_cgroup_memory"]

_NO_LIMIT = 1 << 60
"""A limit from this many bytes (1 EiB) on is none: cgroup v1 writes "no limit" as the largest page count."""


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """The memory figures of the process's cgroup."""

    version: int
    """1 or 2."""
    path: Path
    """The cgroup directory the figures were read from."""
    limit_bytes: int | None
    """The smallest memory limit of the cgroup and its ancestors; ``None``: no limit."""
    usage_bytes: int
    """All memory charged to the cgroup, page cache included."""
    working_set_bytes: int
    """``usage_bytes`` less the inactive file cache: what the kernel cannot reclaim before an OOM kill."""

    @property
    def percent(self) -> float | None:
        """The working set in percent of the limit (``None`` without a limit)."""
        if self.limit_bytes is None or self.limit_bytes <= 0:
            return None
        return 100.0 * self.working_set_bytes / self.limit_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures in MB (``limit_mb`` ``None`` without a limit)."""
        return {
            "version": self.version,
            "path": str(self.path),
            "limit_mb": None if self.limit_bytes is None else round(self.limit_bytes / 1048576.0, 1),
            "usage_mb": round(self.usage_bytes / 1048576.0, 1),
            "working_set_mb": round(self.working_set_bytes / 1048576.0, 1),
        }


def read_cgroup_memory(root: str | os.PathLike[str] = "/") -> CgroupMemory | None:
    """The memory limit and use of this process's cgroup, or ``None`` where there is none to read.

    Args:
        root: The file system root under which ``proc/self/cgroup`` and ``sys/fs/cgroup`` are read
            (another one in tests: a directory tree written like a cgroup file system).

    Returns:
        ``None`` without a cgroup file system with memory figures (not Linux, a hybrid system whose
        memory controller is not mounted) or when its files cannot be read or parsed: the host's figures
        are then all there is.
    """
    base = Path(root)
    mount = base / "sys" / "fs" / "cgroup"
    try:
        own = _own_cgroups(base / "proc" / "self" / "cgroup")
        if (mount / "cgroup.controllers").is_file():  # the unified hierarchy (cgroup v2) at the mount
            return _read_v2(mount, own.get("", "/"))
        if (mount / "memory").is_dir():  # cgroup v1's memory controller (or a hybrid system's)
            return _read_v1(mount / "memory", own.get("memory", "/"))
    except (OSError, ValueError):
        return None
    return None


def _own_cgroups(path: Path) -> dict[str, str]:
    """Controller -> the process's cgroup path, from ``/proc/self/cgroup`` (``""``: the v2 hierarchy)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    cgroups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, cgroup = parts
        if not controllers:
            cgroups[""] = cgroup
        for controller in controllers.split(","):
            if controller:
                cgroups[controller] = cgroup
    return cgroups


def _directory(hierarchy: Path, cgroup: str) -> Path:
    """The process's cgroup directory under ``hierarchy``; the mount point when only that is visible.

    A container without its own cgroup namespace sees the host's path in ``/proc/self/cgroup`` while
    only its own cgroup is mounted at ``/sys/fs/cgroup``.
    """
    relative = cgroup.strip().lstrip("/")
    if relative and ".." not in Path(relative).parts:
        candidate = hierarchy / relative
        if candidate.is_dir():
            return candidate
    return hierarchy


def _limit(text: str) -> int | None:
    value = text.strip()
    if value == "max":
        return None
    number = int(value)
    return None if number >= _NO_LIMIT or number < 0 else number


def _smallest(limits: list[int | None]) -> int | None:
    numbers = [limit for limit in limits if limit is not None]
    return min(numbers) if numbers else None


def _stat(path: Path) -> dict[str, int]:
    figures: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return figures
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            figures[name] = int(value)
    return figures


def _read_v2(mount: Path, cgroup: str) -> CgroupMemory | None:
    directory = _directory(mount, cgroup)
    current = directory / "memory.current"
    if not current.is_file():  # the root cgroup, or the memory controller not enabled for this one
        return None
    usage = int(current.read_text(encoding="utf-8").strip())
    limits: list[int | None] = []
    level = directory
    while True:  # every ancestor's limit applies too (a pod's limit sits above its container's cgroup)
        limit_file = level / "memory.max"
        if limit_file.is_file():
            limits.append(_limit(limit_file.read_text(encoding="utf-8")))
        if level == mount or mount not in level.parents:
            break
        level = level.parent
    inactive = _stat(directory / "memory.stat").get("inactive_file", 0)
    return CgroupMemory(2, directory, _smallest(limits), usage, max(0, usage - inactive))


def _read_v1(hierarchy: Path, cgroup: str) -> CgroupMemory | None:
    directory = _directory(hierarchy, cgroup)
    if not (directory / "memory.usage_in_bytes").is_file():
        return None
    usage = int((directory / "memory.usage_in_bytes").read_text(encoding="utf-8").strip())
    stat = _stat(directory / "memory.stat")
    limits: list[int | None] = [_limit((directory / "memory.limit_in_bytes").read_text(encoding="utf-8"))]
    if "hierarchical_memory_limit" in stat:  # the smallest limit of the cgroup and its ancestors
        limits.append(_limit(str(stat["hierarchical_memory_limit"])))
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return CgroupMemory(1, directory, _smallest(limits), usage, max(0, usage - inactive))
