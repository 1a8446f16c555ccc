"""Running the ``context-manager`` CLI in a subprocess, as an operator's shell does."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m context_manager ARGUMENTS`` with a wide terminal (tables unwrapped), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "context_manager", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="200"),
    )
