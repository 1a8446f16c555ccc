"""The requirements files say what pyproject.toml says (they drifted: orjson was missing from dev)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements(name: str) -> set[str]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "-r"))}


def test_requirements_files_match_the_project_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert _requirements("requirements.txt") == set(project["dependencies"])
    assert _requirements("requirements-dev.txt") == set(project["optional-dependencies"]["dev"])


def test_the_typer_floor_works_with_the_click_installed_beside_it() -> None:
    """typer 0.12 to 0.17.4 (but 0.15.4) allow the click pip installs beside them (8.5) and break on it:
    with typer 0.12.5 every ``context-manager`` command printed ``context-manager 0.1.0`` and exited 0
    (``--version``'s callback ran on every call); with 0.14 or 0.15.0 a mistyped option was a traceback
    instead of ``No such option``; with 0.16.0 or 0.17.0 a missing argument (``context-manager tokens``)
    was ``error: internal error: TypeError ...`` instead of a usage error. typer 0.18.0 with click 8.5.1
    passes tests/test_cli.py, so the declared floor is 0.18."""
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dependencies = project["dependencies"]
    [typer] = [requirement for requirement in dependencies if re.match(r"typer\b", requirement)]
    floor = re.search(r">=\s*([\d.]+)", typer)
    assert floor is not None, typer
    assert tuple(int(part) for part in floor.group(1).split(".")) >= (0, 18), typer
