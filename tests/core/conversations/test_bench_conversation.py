"""``benchmarks/bench_conversation.py``: the command of docs/benchmarks.md, run at its smoke size.

The figures themselves are not asserted (timings belong to the benchmark, not to tests); what is checked is
that the command runs end to end on a real store, measures its baselines in the same run and reports them.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench_support import run_benchmark


def test_the_quick_run_reports_resume_and_add_against_raw_baselines(tmp_path: Path) -> None:
    figures, printed = run_benchmark(
        "bench_conversation.py", "--quick", "--backend", "sqlite", directory=tmp_path, timeout=300
    )
    assert figures["quick"] is True and len(figures["load_before"]) == 3
    sqlite = figures["backends"]["sqlite"]
    assert sqlite["resume"], "no resume size measured"
    for size in sqlite["resume"].values():
        assert size["raw_read"]["p50_ms"] > 0 and 0 < size["resume"]["p50_ms"] <= size["resume"]["p95_ms"]
        assert size["ratio_p50"] > 0
    add = sqlite["add"]
    assert {"persisted", "in_process", "raw_insert"} <= set(add)
    assert add["persisted_vs_raw_p50"] > 0
    assert "resume 1000" in printed and "raw insert" in printed
