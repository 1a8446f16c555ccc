"""The package as installed from a wheel, not from the clone: ``pip install .`` into a fresh virtualenv.

Offline: the wheel is built from a copy of the project with the setuptools already installed here
(``--no-build-isolation``), installed with ``--no-deps --no-index``, and the new environment finds the
dependencies through a ``.pth`` line naming this environment's site-packages (appended to ``sys.path``
after its own, so the installed copy of ``context_manager`` is the one imported).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"]


def run(command: list[str | Path], cwd: Path, **options: object) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project installed from its wheel; returns the environment's directory."""
    base = tmp_path_factory.mktemp("installed")
    project = base / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for directory in ("src", "examples"):
        shutil.copytree(ROOT / directory, project / directory, ignore=ignore)
    wheels = base / "wheels"
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            project,
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            wheels,
        ],
        cwd=base,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = wheels.glob("python_context_manager-*.whl")

    environment = base / "venv"
    created = run([sys.executable, "-m", "venv", "--without-pip", environment], cwd=base)
    assert created.returncode == 0, created.stderr
    python = environment / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    (Path(purelib.stdout.strip()) / "shared_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    added = run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", "--quiet", wheel],
        cwd=base,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    return environment


def imported_package(installed: Path, cwd: Path) -> Path:
    """The directory of the ``context_manager`` that the environment's python imports."""
    found = run(
        [installed / "bin" / "python", "-c", "import context_manager; print(context_manager.__file__)"],
        cwd=cwd,
    )
    assert found.returncode == 0, found.stderr
    return Path(found.stdout.strip()).parent


def test_the_installed_package_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    package = imported_package(installed, tmp_path)
    assert package.is_relative_to(installed), package
    shipped = sorted(path.name for path in (package / "_examples").glob("*.py"))
    assert shipped == sorted(path.name for path in (ROOT / "examples").glob("*.py"))


def test_context_manager_examples_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # not the clone: only the installed copy can be found
    elsewhere.mkdir()
    completed = run([installed / "bin" / "context-manager", "examples", "basic"], cwd=elsewhere)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "4 messages," in completed.stdout and "after the restart: 3 memories" in completed.stdout
    assert list(elsewhere.iterdir()) == []  # the examples work in a temporary directory


def test_without_the_examples_the_command_says_so_in_one_line(installed: Path, tmp_path: Path) -> None:
    shipped = imported_package(installed, tmp_path) / "_examples"
    hidden = shipped.with_name("_examples_hidden")
    shipped.rename(hidden)
    try:
        completed = run([installed / "bin" / "context-manager", "examples"], cwd=tmp_path)
    finally:
        hidden.rename(shipped)
    assert completed.returncode == 1
    assert completed.stdout == ""
    [line] = completed.stderr.splitlines()
    assert line.startswith("error: ") and "examples/main_example.py" in line
