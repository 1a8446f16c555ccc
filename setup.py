"""Build hook: ship ``examples/`` in the wheel as ``context_manager/_examples``.

Everything else about the package is declared in ``pyproject.toml``. From a clone (or an editable
install) ``context-manager examples`` runs ``examples/main_example.py`` itself; from an installed wheel it
runs the copy made here, so ``pip install python-context-manager && context-manager examples`` works.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXAMPLES = Path(__file__).resolve().parent / "examples"


class BuildWithExamples(build_py):
    """``build_py`` that also copies the example scripts next to the package's modules."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "context_manager" / "_examples"
        self.mkpath(str(target))
        for script in sorted(EXAMPLES.glob("*.py")):
            self.copy_file(str(script), str(target / script.name))


setup(cmdclass={"build_py": BuildWithExamples})
