"""Facts for the diagnostic report: the process and machine, and the storage directories.

Both functions block (psutil, directory walks): the checker runs them in a worker thread.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from context_manager.core.health_checker.cgroup import read_cgroup_memory

__all__ = ["directory_size", "storage_facts", "system_facts"]


def system_facts() -> dict[str, Any]:
    """Python, platform, process (RSS, threads), machine (memory, CPUs, load) and cgroup memory facts."""
    import psutil

    process = psutil.Process()
    with process.oneshot():
        rss = process.memory_info().rss
        threads = process.num_threads()
    memory = psutil.virtual_memory()
    facts: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "pid": os.getpid(),
        "cpu_count": os.cpu_count(),
        "process_memory_mb": rss / 1048576.0,
        "process_threads": threads,
        "system_memory_total_mb": memory.total / 1048576.0,
        "system_memory_available_mb": memory.available / 1048576.0,
        "system_memory_percent": memory.percent,
    }
    cgroup = read_cgroup_memory()
    if cgroup is not None:  # a container's memory limit, which the host's figures above do not show
        facts["cgroup_memory"] = cgroup.to_dict()
    if hasattr(os, "getloadavg"):
        facts["load_average"] = list(os.getloadavg())
    return facts


def storage_facts(directories: list[Path]) -> dict[str, Any]:
    """Each directory (exists, size, free and total disk) and the SQLite files found in them."""
    entries = []
    database_files: list[Path] = []
    for path in directories:
        entry: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
        if entry["exists"]:
            entry["size_bytes"] = directory_size(path)
            usage = shutil.disk_usage(path)
            entry["free_disk_mb"] = usage.free / 1048576.0
            entry["total_disk_mb"] = usage.total / 1048576.0
            database_files.extend(sorted(path.glob("*.sqlite3")))
        entries.append(entry)
    facts: dict[str, Any] = {"directories": entries}
    if database_files:
        facts["database_files"] = {str(path): path.stat().st_size for path in database_files if path.exists()}
    return facts


def directory_size(path: Path, limit: int = 10_000) -> int:
    """Bytes in the files under ``path`` (stops counting after ``limit`` directories)."""
    total = 0
    for count, (root, _, files) in enumerate(os.walk(path)):
        if count > limit:
            break
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
