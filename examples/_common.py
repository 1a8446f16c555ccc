"""Helpers shared by the examples: a rich console, section titles and checks that fail loudly.

The examples assert what they show (``expect``), so ``python examples/main_example.py all`` exits
non-zero when a feature stops working, instead of printing something wrong and exiting 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


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
        """Print only with ``--verbose`` (a text as it is: a summary or an error quotes the conversation)."""
        if self.verbose:
            self.console.print(renderable, markup=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> Table:
        """Build a rich table from rows of values."""
        table = Table(title=title, title_justify="left", show_lines=False)
        for column in columns:  # a narrow terminal folds the cells, never cuts a header to "strate…"
            table.add_column(column, min_width=max(len(word) for word in column.split() or [""]))
        for row in rows:  # values, not markup: a "[tool call x]" in a memory's text prints as it is
            table.add_row(*(Text(format_value(value)) for value in row))
        return table

    def panel(self, text: str, title: str) -> None:
        """Print a text in a panel."""
        self.console.print(Panel(text, title=title, expand=False))

    @contextlib.contextmanager
    def expected_logs(
        self, why: str, logger_name: str = "context_manager"
    ) -> Iterator[list[logging.LogRecord]]:
        """Hold back the library's log lines while an example provokes a failure on purpose.

        They would print as WARNINGs and read like real failures; instead, one line says what was logged
        and why it is expected (every record with ``--verbose``). Yields the captured records.
        """
        records: list[logging.LogRecord] = []
        handler = _ListHandler(records)
        library = logging.getLogger(logger_name)
        propagate = library.propagate
        library.addHandler(handler)
        library.propagate = False
        try:
            yield records
        finally:
            library.removeHandler(handler)
            library.propagate = propagate
        counts = Counter((record.levelname, record.getMessage()) for record in records)
        if not counts:
            return
        total = sum(counts.values())
        self.info(f"[dim]the library logged {total} line(s), expected here ({why}):[/dim]")
        shown = counts.most_common() if self.verbose else counts.most_common(2)
        for (level, message), count in shown:
            repeat = f" (x{count})" if count > 1 else ""  # a Text: the message prints as written
            self.console.print(Text(f"    {level.lower()}: {message}{repeat}", style="dim"))

    def storage(self, name: str) -> Path:
        """A fresh directory under the run's work directory."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:  # what would have been printed
            self.records.append(record)


def format_value(value: Any) -> str:
    """Format a table cell: floats with 2-3 significant decimals, everything else with str()."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


PIPED_WIDTH = 120
"""Columns used when the output is not a terminal (a pipe, a file, CI logs) and COLUMNS is unset."""


def make_console(*, stderr: bool = False) -> Console:
    """A console for the examples' output.

    On a terminal, its width. Piped (``make examples | cat``, CI logs), rich would assume 80 columns:
    tables would wrap and cut their headers, and every long line would be broken. Then: COLUMNS if set,
    else a wide page, with text lines left unbroken (the reader's viewer wraps them).
    """
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)


LOCATION_VARIABLES = tuple(
    f"PYTHON_CONTEXT_MANAGER_{option}"
    for option in ("STORAGE_PATH", "CACHE_PATH", "MEMORY_BACKEND", "POSTGRES_DSN", "CONVERSATION_ID")
)
"""Where the library stores what it writes: set for the reader's application, they would send the
examples' memories and conversations into its store (or database). The examples ignore them (the shared
example runs on a PostgreSQL server only when ``CONTEXT_MANAGER_EXAMPLES_POSTGRES_DSN`` names one)."""


@contextlib.contextmanager
def example_context(verbose: bool = False, console: Console | None = None) -> Iterator[ExampleContext]:
    """Yield an :class:`ExampleContext` with a temporary work directory removed afterwards.

    The examples store everything in that directory: the environment variables that point the library
    elsewhere (:data:`LOCATION_VARIABLES`) are set aside while they run, and put back afterwards.
    """
    console = console or make_console()
    # the configuration reads its variables whatever their case (python_context_manager_storage_path too)
    set_aside = {
        name: os.environ.pop(name) for name in list(os.environ) if name.upper() in LOCATION_VARIABLES
    }
    try:
        if set_aside:
            console.print(
                f"[dim]ignoring {', '.join(sorted(set_aside))}: the examples store everything in a temporary "
                "directory, never in your application's storage[/dim]"
            )
        with tempfile.TemporaryDirectory(prefix="context-manager-example-") as directory:
            yield ExampleContext(console, verbose, Path(directory))
    finally:
        os.environ.update(set_aside)
