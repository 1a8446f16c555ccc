"""``benchmarks/bench_resume_cycle.py``: the command of docs/benchmarks.md, run at its smoke size.

Timings are not asserted; what is checked is that every stage of the cycle is measured for both trees of
an interleaved comparison (here the same tree twice), in both configurations.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench_support import ROOT, run_benchmark

STAGES = ["config", "construct", "initialize", "get_context", "add_message", "cleanup", "total"]


def test_the_quick_run_times_every_stage_for_both_trees(tmp_path: Path) -> None:
    figures, printed = run_benchmark(
        "bench_resume_cycle.py",
        "--quick",
        "--baseline-src",
        str(ROOT / "src"),
        directory=tmp_path,
        timeout=300,
    )
    assert figures["quick"] is True and figures["messages"] == 200
    for config in ("defaults", "peers-bench"):
        for tree in ("baseline", "this tree"):
            for stage in STAGES:
                assert figures[f"{config} {tree} {stage} p50 ms"] > 0
        assert figures[f"{config} total speedup vs baseline"] > 0
    assert "total p50:" in printed
