"""Helpers shared by the examples: a rich console, section titles and checks that fail loudly.

The examples assert what they show (``expect``), so ``python examples/main_example.py all`` exits
non-zero when a feature stops working, instead of printing something wrong and exiting 0.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table


class ExampleFailure(RuntimeError):
    """An example observed something other than what it demonstrates."""


def expect(condition: bool, message: str) -> None:
    """Fail the example with ``message`` unless ``condition`` holds (works under ``python -O`` too)."""
    if not condition:
        raise ExampleFailure(message)


@dataclass
class ExampleContext:
    """What every example function receives."""

    console: Console
    """Where to print (rich)."""
    verbose: bool
    """Print the details (full contexts, every figure)."""
    workdir: Path
    """A private temporary directory for this run's storage."""

    def section(self, title: str) -> None:
        """Print a section title."""
        self.console.print()
        self.console.rule(f"[bold cyan]{title}")

    def ok(self, text: str) -> None:
        """Print one line saying what was shown to work."""
        self.console.print(f"[green]✓[/green] {text}")

    def info(self, text: str) -> None:
        """Print a line of explanation."""
        self.console.print(f"  {text}")

    def detail(self, renderable: Any) -> None:
        """Print only with ``--verbose``."""
        if self.verbose:
            self.console.print(renderable)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> Table:
        """Build a rich table from rows of values."""
        table = Table(title=title, title_justify="left", show_lines=False)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(format_value(value) for value in row))
        return table

    def panel(self, text: str, title: str) -> None:
        """Print a text in a panel."""
        self.console.print(Panel(text, title=title, expand=False))

    def storage(self, name: str) -> Path:
        """A fresh directory under the run's work directory."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def format_value(value: Any) -> str:
    """Format a table cell: floats with 2-3 significant decimals, everything else with str()."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@contextlib.contextmanager
def example_context(verbose: bool = False, console: Console | None = None) -> Iterator[ExampleContext]:
    """Yield an :class:`ExampleContext` with a temporary work directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="context-manager-example-") as directory:
        yield ExampleContext(console or Console(), verbose, Path(directory))
