"""The ``memory_pressure`` check judges a container's cgroup memory limit, not only the host's memory.

The cgroup file systems are real directory trees in ``tmp_path`` written as the kernel lays them out
(``check_memory_pressure(root=...)`` reads ``proc/self/cgroup`` and ``sys/fs/cgroup`` under that root);
one test reads this machine's own.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from context_manager.core.health_checker import HealthChecker, HealthState, HealthThresholds
from context_manager.core.health_checker.cgroup import read_cgroup_memory
from context_manager.core.health_checker.checks import check_memory_pressure

MB = 1048576
V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1 writes for "no limit" (the largest page count)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _v2_tree(
    root: Path, *, limit: str, current: int, inactive_file: int = 0, parent_limit: str | None = None
) -> Path:
    """A cgroup v2 file system with the process in ``/kubepods/pod1/ctr`` (its parent the pod)."""
    _write(root / "proc" / "self" / "cgroup", "0::/kubepods/pod1/ctr\n")
    mount = root / "sys" / "fs" / "cgroup"
    _write(mount / "cgroup.controllers", "cpuset cpu io memory pids\n")
    pod = mount / "kubepods" / "pod1"
    _write(pod / "memory.max", (parent_limit or "max") + "\n")
    _write(pod / "memory.current", f"{current}\n")
    container = pod / "ctr"
    _write(container / "memory.max", limit + "\n")
    _write(container / "memory.current", f"{current}\n")
    _write(
        container / "memory.stat",
        f"anon {current - inactive_file}\nfile {inactive_file}\n"
        f"active_file 0\ninactive_file {inactive_file}\n",
    )
    return container


def _v1_tree(root: Path, *, limit: str, usage: int, hierarchical: str | None = None) -> Path:
    """A cgroup v1 file system (its memory controller at ``sys/fs/cgroup/memory``), the process in
    ``/docker/abc``."""
    _write(
        root / "proc" / "self" / "cgroup",
        "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
    )
    hierarchy = root / "sys" / "fs" / "cgroup" / "memory"
    _write(hierarchy / "memory.limit_in_bytes", V1_NO_LIMIT + "\n")  # the root cgroup's, as on a host
    _write(hierarchy / "memory.usage_in_bytes", f"{64 * 1024 * MB}\n")
    directory = hierarchy / "docker" / "abc"
    _write(directory / "memory.limit_in_bytes", limit + "\n")
    _write(directory / "memory.usage_in_bytes", f"{usage}\n")
    _write(
        directory / "memory.stat",
        f"cache 0\nrss {usage}\nhierarchical_memory_limit {hierarchical or limit}\ntotal_inactive_file 0\n",
    )
    # a hybrid system's v2 hierarchy without the memory controller is not the one to read
    _write(root / "sys" / "fs" / "cgroup" / "unified" / "cgroup.controllers", "")
    return directory


def _small_limit() -> int:
    """A container limit far below this host's memory (a 512 MB pod on a 64 GB node)."""
    return min(512 * MB, psutil.virtual_memory().total // 16)


def test_a_container_near_its_cgroup_v2_limit_is_unhealthy_on_a_big_host(tmp_path: Path) -> None:
    """In a container with a 512 MB limit on a 64 GB host the check read only the host's memory: it never
    warned, and the pod was OOM-killed. The cgroup's working set against its limit is judged now."""
    limit = _small_limit()
    container = _v2_tree(tmp_path, limit=str(limit), current=int(limit * 0.99))
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.status is HealthState.UNHEALTHY, outcome.message
    assert outcome.details["memory_limit"] == "cgroup v2"
    assert outcome.details["memory_percent"] == 99.0
    assert outcome.details["memory_limit_mb"] == round(limit / MB, 1)
    assert outcome.details["cgroup"]["path"] == str(container)
    assert outcome.message.startswith("container memory 99% used")
    assert "the cgroup v2 limit" in outcome.message
    assert "container's memory limit" in (outcome.recommendation or "")
    assert "system_memory_percent" in outcome.details  # the host's figure is still reported

    _v2_tree(tmp_path, limit=str(limit), current=int(limit * 0.92))
    degraded = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert degraded.status is HealthState.DEGRADED and degraded.details["memory_limit"] == "cgroup v2"
    _v2_tree(tmp_path, limit=str(limit), current=int(limit * 0.30))
    healthy = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert healthy.status is HealthState.HEALTHY
    assert healthy.details["cgroup_memory_percent"] == 30.0


def test_the_pods_limit_above_the_container_cgroup_applies(tmp_path: Path) -> None:
    limit = _small_limit()
    _v2_tree(tmp_path, limit="max", parent_limit=str(limit), current=int(limit * 0.98))
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.status is HealthState.UNHEALTHY and outcome.details["memory_limit"] == "cgroup v2"
    assert outcome.details["cgroup"]["limit_mb"] == round(limit / MB, 1)


def test_reclaimable_file_cache_is_no_pressure(tmp_path: Path) -> None:
    """SQLite's pages in the page cache count in ``memory.current``; the kernel reclaims the inactive ones
    before an OOM kill, so the working set (as the kubelet judges it) is what counts."""
    limit = _small_limit()
    _v2_tree(tmp_path, limit=str(limit), current=int(limit * 0.99), inactive_file=int(limit * 0.6))
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.status is HealthState.HEALTHY, outcome.message
    assert outcome.details["cgroup_memory_percent"] == 39.0
    assert outcome.details["cgroup"]["usage_mb"] > outcome.details["cgroup"]["working_set_mb"]


def test_cgroup_v1_limit_and_hierarchical_limit(tmp_path: Path) -> None:
    limit = _small_limit()
    _v1_tree(tmp_path, limit=str(limit), usage=int(limit * 0.98))
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.status is HealthState.UNHEALTHY and outcome.details["memory_limit"] == "cgroup v1"
    # no limit on the cgroup itself, one on an ancestor (memory.stat's hierarchical_memory_limit)
    _v1_tree(tmp_path, limit=V1_NO_LIMIT, hierarchical=str(limit), usage=int(limit * 0.95))
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.status is HealthState.DEGRADED and outcome.details["memory_limit"] == "cgroup v1"


def test_no_cgroup_limit_or_a_limit_above_the_hosts_memory_uses_the_host(tmp_path: Path) -> None:
    total = psutil.virtual_memory().total
    for name, write in {
        "v1 no limit": lambda root: _v1_tree(root, limit=V1_NO_LIMIT, usage=100 * MB),
        "v2 max": lambda root: _v2_tree(root, limit="max", current=100 * MB),
        "v2 above the host": lambda root: _v2_tree(root, limit=str(total * 4), current=total),
    }.items():
        root = tmp_path / name.replace(" ", "_")
        write(root)
        outcome = check_memory_pressure(HealthThresholds(), root=root)
        assert outcome.details["memory_limit"] == "host", name
        assert outcome.details["memory_percent"] == outcome.details["system_memory_percent"], name
        assert outcome.message.startswith("system memory"), name
        assert "cgroup_memory_percent" not in outcome.details, name
    assert read_cgroup_memory(tmp_path / "v1_no_limit").limit_bytes is None  # type: ignore[union-attr]


def test_a_container_seeing_only_its_own_cgroup_reads_the_mount_point(tmp_path: Path) -> None:
    """Without a cgroup namespace ``/proc/self/cgroup`` names the host's path, while only the container's
    own cgroup is mounted at ``/sys/fs/cgroup``: its files are at the mount point."""
    limit = _small_limit()
    _write(tmp_path / "proc" / "self" / "cgroup", "0::/system.slice/docker-abc.scope\n")
    mount = tmp_path / "sys" / "fs" / "cgroup"
    _write(mount / "cgroup.controllers", "memory pids\n")
    _write(mount / "memory.max", f"{limit}\n")
    _write(mount / "memory.current", f"{int(limit * 0.99)}\n")
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.status is HealthState.UNHEALTHY and outcome.details["cgroup"]["path"] == str(mount)


def test_unreadable_or_garbled_cgroup_files_fall_back_to_the_host(tmp_path: Path) -> None:
    _v2_tree(tmp_path, limit="a lot", current=100)
    outcome = check_memory_pressure(HealthThresholds(), root=tmp_path)
    assert outcome.details["memory_limit"] == "host" and "cgroup" not in outcome.details
    nothing = check_memory_pressure(HealthThresholds(), root=tmp_path / "nothing")
    assert nothing.details["memory_limit"] == "host"


async def test_this_machines_cgroup_is_read_and_the_check_says_which_limit_it_used() -> None:
    """The real ``/proc`` and ``/sys/fs/cgroup`` (cgroup v1 without a limit on the development machine)."""
    found = read_cgroup_memory()
    if found is not None:
        assert found.version in (1, 2) and found.path.is_dir()
        assert found.usage_bytes > 0 and 0 <= found.working_set_bytes <= found.usage_bytes
        assert found.limit_bytes is None or found.limit_bytes > 0
    report = await HealthChecker().generate_diagnostic_report()
    result = report.checks["memory_pressure"]
    assert (report.system.get("cgroup_memory") is None) == (found is None)  # the report's system facts
    limited = found is not None and found.limit_bytes is not None
    if limited and found.limit_bytes < psutil.virtual_memory().total:  # type: ignore[union-attr,operator]
        # the higher of the two percentages is judged (both move between the readings: either may be it)
        assert result.details["memory_limit"] in ("host", f"cgroup v{found.version}")  # type: ignore[union-attr]
        assert "cgroup_memory_percent" in result.details
    else:  # no limit (the development machine) or one above the host's memory
        assert result.details["memory_limit"] == "host"
        assert result.details["memory_percent"] == result.details["system_memory_percent"]
    assert (result.details.get("cgroup") is None) == (found is None)
