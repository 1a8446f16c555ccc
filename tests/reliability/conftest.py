"""Shared helpers of the reliability suite (crash matrix, faults, load, hostile input, security).

``RELIABILITY_FULL=1`` switches every test of this directory to its full size (more crash rounds,
bigger loads); the default is the CI size. ``scripts/run_reliability.sh`` runs the full suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FULL_RUN = os.environ.get("RELIABILITY_FULL") == "1"
"""True for the documented full run (``RELIABILITY_FULL=1``)."""

WORKER = Path(__file__).with_name("crash_worker.py")
"""The script the crash and fault tests run as a real subprocess."""


def scaled(ci: int, full: int) -> int:
    """``full`` in the full run, ``ci`` otherwise (an env ``RELIABILITY_ROUNDS`` overrides both)."""
    override = os.environ.get("RELIABILITY_ROUNDS")
    if override:
        return int(override)
    return full if FULL_RUN else ci


def start_worker(*args: str, **popen: object) -> subprocess.Popen[str]:
    """Start ``crash_worker.py`` with ``args`` in a fresh interpreter, stdout/stderr piped as text."""
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage directory path under the test's ``tmp_path`` (not created)."""
    return tmp_path / "storage"
