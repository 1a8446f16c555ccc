"""Running a benchmark script of ``benchmarks/`` the way docs/benchmarks.md shows it, for the smoke tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(
    script: str, *arguments: str, directory: Path, timeout: float = 600
) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/SCRIPT ARGUMENTS --json FILE`` in ``directory``; check it exits 0.

    Returns:
        The figures it wrote (the JSON) and what it printed.
    """
    output = directory / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *arguments, "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=directory,
    )
    assert completed.returncode == 0, completed.stderr
    figures: dict[str, Any] = json.loads(output.read_text())
    return figures, completed.stdout
