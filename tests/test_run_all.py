"""benchmarks/run_all.py runs every bench_*.py script and writes one markdown + JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"

GOOD = """
import argparse, json
parser = argparse.ArgumentParser()
parser.add_argument("--json")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
print("quick" if args.quick else "full")
figures = {"benchmark": "good", "quick": args.quick, "speed": {"library_vs_baseline": 1.25, "p50_us": 3.5}}
json.dump(figures, open(args.json, "w"))
"""
BROKEN = """
import argparse, sys
parser = argparse.ArgumentParser()
parser.add_argument("--json")
parser.parse_args()
sys.exit("the baseline could not be measured")
"""


def run(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(RUN_ALL),
            "--benchmarks-dir",
            str(tmp_path / "bench"),
            "--results-dir",
            str(tmp_path / "results"),
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_collects_figures_ratios_and_failures(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_good.py").write_text(GOOD)
    (tmp_path / "bench" / "bench_broken.py").write_text(BROKEN)
    (tmp_path / "bench" / "helper.py").write_text("raise SystemExit('not a benchmark')")
    completed = run(tmp_path, "--quick")
    assert completed.returncode == 1
    assert "1 benchmark(s) failed: bench_broken.py" in completed.stderr
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert report["metadata"]["mode"] == "quick"
    runs = {entry["script"]: entry for entry in report["runs"]}
    assert set(runs) == {"bench_good.py", "bench_broken.py"}
    assert runs["bench_good.py"]["figures"]["quick"] is True and "--quick" in runs["bench_good.py"]["command"]
    assert runs["bench_broken.py"]["status"] == "failed"
    markdown = (tmp_path / "results" / "report.md").read_text()
    assert "| `bench_good.py` | ok |" in markdown
    assert "speed.library_vs_baseline: 1.25" in markdown  # ratios are headline figures
    assert "| speed.p50_us | 3.5 |" in markdown
    assert "the baseline could not be measured" in markdown


def test_only_selects_scripts_and_full_mode_passes_no_quick(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_good.py").write_text(GOOD)
    (tmp_path / "bench" / "bench_broken.py").write_text(BROKEN)
    completed = run(tmp_path, "--only", "good")
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert [entry["script"] for entry in report["runs"]] == ["bench_good.py"]
    assert report["runs"][0]["figures"]["quick"] is False
    unknown = run(tmp_path, "--only", "nothing")
    assert unknown.returncode != 0 and "no benchmark script named bench_nothing" in unknown.stderr
