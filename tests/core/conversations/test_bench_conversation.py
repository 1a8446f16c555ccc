"""``benchmarks/bench_conversation.py``: the command of docs/benchmarks.md, run at its smoke size.

The figures themselves are not asserted (timings belong to the benchmark, not to tests); what is checked is
that the command runs end to end on a real store, measures its baselines in the same run and reports them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "benchmarks" / "bench_conversation.py"


def test_the_quick_run_reports_resume_and_add_against_raw_baselines(tmp_path: Path) -> None:
    output = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--backend", "sqlite", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(output.read_text())
    assert figures["quick"] is True and len(figures["load_before"]) == 3
    sqlite = figures["backends"]["sqlite"]
    assert sqlite["resume"], "no resume size measured"
    for size in sqlite["resume"].values():
        assert size["raw_read"]["p50_ms"] > 0 and 0 < size["resume"]["p50_ms"] <= size["resume"]["p95_ms"]
        assert size["ratio_p50"] > 0
    add = sqlite["add"]
    assert {"persisted", "in_process", "raw_insert"} <= set(add)
    assert add["persisted_vs_raw_p50"] > 0
    assert "resume 1000" in completed.stdout and "raw insert" in completed.stdout
