"""The examples run as a newcomer runs them: ``python examples/main_example.py <category> [--verbose]``."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from context_manager.core.config import ENV_PREFIX

MAIN = Path(__file__).resolve().parents[1] / "examples" / "main_example.py"

KEY_LINES = {
    "basic": [
        "4 messages,",
        "InvalidPriorityError: priority: got 'urgent'",
        "the window still holds 1 message",
        "after the restart: 3 memories",
    ],
    "advanced": [
        "compressions; the window holds",
        "the system message and the pinned instruction are still in the window",
        "evicted message recalled from medium-term memory (source='context')",
        "strategy='custom_failed_fallback_extractive'",
        "consolidate_memories(): merged 2 memories into 1",
        "import_memories() into a fresh store: 4 imported",
    ],
    "tools": [
        "six failure kinds: unknown_tool, invalid_arguments, permission_denied, rate_limited, "
        "timeout, tool_error",
        "second call cached=True; the tool ran 1 time",
        "staging_orders -> ran; orders -> permission_denied",
        "3 calls -> assistant message + 3 paired tool messages",
    ],
    "performance": [
        "get_current_metrics()",
        "health score",
        "optimize_system(): merged 2 near-duplicate memories",
        "timeout delivered through wait_for_task: task 'too-slow' timed out after 0.1 s",
        "(critical 'urgent' jumped the queue)",
        "diagnostic report: status",
        "compressions kept 2000 messages within 4,000 tokens",
    ],
    "agent": ["was compressed out of the window", "every request fit its 550-token budget", "recall worked"],
    "shared": [
        "and was killed without closing anything",
        "get_context() exports the same",
        "evicted before the crash, recalled from memory: 'My order 1042 shipped",
        "stored conversations: ['ticket-1042']",
        "(two managers of this process, embedded storage)",
        "worker B wrote on a stale version: ConversationConflictError",
        "worker A reloaded: both hold 2 messages at version 2",
    ],
}
EXAMPLE_TIME_LIMIT_S = 30.0  # issue 7: each example runs in under 30 seconds
VERBOSE_ONLY = {
    "basic": "'storage_path':",
    "advanced": "rolling summary:",
    "tools": '"parameters": {',
    "performance": "'samples':",
    "agent": "request tokens per step:",
    "shared": "'role': 'assistant', 'content': 'Answer 19",
}


def run_example(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the examples' entry point. The subprocess timeout only guards against a hang: "all" runs every
    category in one process, so its guard is the sum of the categories' limits, not one category's. The
    time each example may take is asserted from its own measured seconds, not from this guard."""
    hang_guard_s = EXAMPLE_TIME_LIMIT_S * (len(KEY_LINES) if "all" in arguments else 4)
    environment = dict(os.environ if env is None else env)
    environment["COLUMNS"] = "250"  # rich wraps at the terminal width; keep key lines on one line
    return subprocess.run(
        [sys.executable, str(MAIN), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=hang_guard_s,
    )


def category_seconds(stdout: str) -> dict[str, float]:
    """The per-category times of the final "All examples passed (basic 2.9 s, ...)" line."""
    summary = stdout.strip().splitlines()[-1]
    return {name: float(seconds) for name, seconds in re.findall(r"(\w+) (\d+(?:\.\d+)?) s", summary)}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("category", sorted(KEY_LINES))
def test_category_runs_and_shows_its_features(category: str, verbose: bool, tmp_path: Path) -> None:
    started = time.perf_counter()
    completed = run_example(category, *(["--verbose"] if verbose else []))
    elapsed = time.perf_counter() - started  # the whole process: interpreter start, imports, example
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert elapsed < EXAMPLE_TIME_LIMIT_S, f"{category} took {elapsed:.1f} s"
    for line in KEY_LINES[category]:
        assert line in completed.stdout, f"{line!r} missing from the {category} output"
    assert "All examples passed" in completed.stdout
    assert (VERBOSE_ONLY[category] in completed.stdout) is verbose
    assert "Traceback" not in completed.stderr
    assert list(Path.cwd().iterdir()) == [], "examples must not write to the working directory"
    assert category_seconds(completed.stdout)[category] < EXAMPLE_TIME_LIMIT_S


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_all_runs_every_category(verbose: bool) -> None:
    completed = run_example("all", *(["--verbose"] if verbose else []))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for lines in KEY_LINES.values():
        assert lines[-1] in completed.stdout
    summary = completed.stdout.strip().splitlines()[-1]
    assert summary.startswith("All examples passed")
    seconds = category_seconds(completed.stdout)
    assert sorted(seconds) == sorted(KEY_LINES)
    assert all(value < EXAMPLE_TIME_LIMIT_S for value in seconds.values()), seconds
    assert all((VERBOSE_ONLY[category] in completed.stdout) is verbose for category in KEY_LINES)


@pytest.mark.embeddings
def test_all_runs_with_the_default_embedder_where_the_embeddings_extra_is_installed() -> None:
    """The suite pins ``embedder="none"``; a reader's environment does not. Where the extra is installed
    (``make test``'s .venv, ``pip install '...[embeddings]'``) memory search uses MiniLM by default, and
    the advanced example counted a weak vector match (the lunch memory) as a second wifi memory."""
    environment = {key: value for key, value in os.environ.items() if key != f"{ENV_PREFIX}EMBEDDER"}
    completed = run_example("all", env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith("All examples passed")


def test_shared_runs_two_workers_on_one_conversation_on_postgresql(postgres_dsn: str) -> None:
    environment = dict(os.environ, CONTEXT_MANAGER_EXAMPLES_POSTGRES_DSN=postgres_dsn)
    completed = run_example("shared", env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "worker B wrote on a stale version: ConversationConflictError" in completed.stdout
    assert "worker A reloaded: both hold 2 messages at version 2" in completed.stdout
    assert "Two workers on one conversation (PostgreSQL)" in completed.stdout
    assert list(Path.cwd().iterdir()) == [], "examples must not write to the working directory"


def test_the_examples_never_write_where_the_environment_points_the_library(tmp_path: Path) -> None:
    # A reader's shell (or .env) configures their application's store: the examples, which promise a
    # temporary directory, wrote into it (and failed on the reader's memories); on postgres, into the database
    real_store = tmp_path / "my-app-memory"
    environment = dict(
        os.environ,
        **{
            f"{ENV_PREFIX}STORAGE_PATH": str(real_store),
            f"{ENV_PREFIX}CACHE_PATH": str(tmp_path / "my-app-cache"),
            f"{ENV_PREFIX}CONVERSATION_ID": "my-app-conversation",
        },
    )
    completed = run_example("basic", env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert not real_store.exists() and not (tmp_path / "my-app-cache").exists()
    assert f"{ENV_PREFIX}STORAGE_PATH" in completed.stdout  # says what it ignored, and why
    assert "after the restart: 3 memories" in completed.stdout
    postgres = dict(
        os.environ,
        **{
            f"{ENV_PREFIX}MEMORY_BACKEND": "postgres",
            f"{ENV_PREFIX}POSTGRES_DSN": "postgresql://u@127.0.0.1:9/db",
        },
    )
    completed = run_example("advanced", env=postgres)  # the embedded store, not the database
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(Path.cwd().iterdir()) == [], "examples must not write to the working directory"


def test_the_shared_example_never_uses_the_database_of_the_readers_application() -> None:
    """docs/postgres.md has the reader ``export PYTHON_CONTEXT_MANAGER_POSTGRES_DSN=...`` for their
    application: the shared example then ran its two workers in that database (its tables created there,
    a conversation written), and without the ``postgres`` extra (``make examples`` installs none) crashed
    with MissingDependencyError. It runs them on the embedded storage unless its own variable names a
    server."""
    environment = dict(
        os.environ,
        **{
            f"{ENV_PREFIX}MEMORY_BACKEND": "postgres",
            f"{ENV_PREFIX}POSTGRES_DSN": "postgresql://app@127.0.0.1:9/app",  # nothing listens there
        },
    )
    environment.pop("CONTEXT_MANAGER_EXAMPLES_POSTGRES_DSN", None)
    completed = run_example("shared", env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "(two managers of this process, embedded storage)" in completed.stdout
    notice = next(line for line in completed.stdout.splitlines() if line.startswith("ignoring "))
    assert f"{ENV_PREFIX}POSTGRES_DSN" in notice and f"{ENV_PREFIX}MEMORY_BACKEND" in notice
    assert list(Path.cwd().iterdir()) == [], "examples must not write to the working directory"


def test_the_examples_set_aside_a_location_variable_written_in_lower_case(tmp_path: Path) -> None:
    # the configuration reads its variables whatever their case (``python_context_manager_storage_path``
    # too): the examples set aside only the upper-case names and wrote into the reader's store
    real_store = tmp_path / "my-app-memory"
    environment = dict(
        os.environ,
        **{
            f"{ENV_PREFIX}STORAGE_PATH".lower(): str(real_store),
            f"{ENV_PREFIX}Cache_Path": str(tmp_path / "my-app-cache"),
        },
    )
    completed = run_example("basic", env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert not real_store.exists() and not (tmp_path / "my-app-cache").exists()
    assert f"{ENV_PREFIX}STORAGE_PATH".lower() in completed.stdout  # named as it was set
    assert list(Path.cwd().iterdir()) == [], "examples must not write to the working directory"


def test_example_context_puts_the_variables_back_even_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables are set aside while an example runs and put back afterwards, also when the example
    fails or the console cannot print the notice (a closed pipe)."""
    monkeypatch.syspath_prepend(str(MAIN.parent))
    from _common import example_context

    class ClosedConsole:
        def print(self, *args: object, **kwargs: object) -> None:
            raise BrokenPipeError("stdout closed")

    monkeypatch.setenv(f"{ENV_PREFIX}STORAGE_PATH", "/srv/app-memory")
    with pytest.raises(RuntimeError, match="the example failed"), example_context():
        assert f"{ENV_PREFIX}STORAGE_PATH" not in os.environ
        raise RuntimeError("the example failed")
    assert os.environ[f"{ENV_PREFIX}STORAGE_PATH"] == "/srv/app-memory"
    with pytest.raises(BrokenPipeError), example_context(console=ClosedConsole()):  # type: ignore[arg-type]
        pass
    assert os.environ[f"{ENV_PREFIX}STORAGE_PATH"] == "/srv/app-memory"


def test_help_lists_the_categories() -> None:
    completed = run_example("--help")
    assert completed.returncode == 0
    for category in ("all", *KEY_LINES):
        assert category in completed.stdout
    assert "basic_usage.py" in completed.stdout and "--verbose" in completed.stdout


def test_no_category_runs_them_all_as_the_command_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``context-manager examples`` runs every category; ``python examples/main_example.py`` alone was a
    usage error ("the following arguments are required: category")."""
    monkeypatch.syspath_prepend(str(MAIN.parent))
    from main_example import build_parser

    assert build_parser().parse_args([]).category == "all"
    assert build_parser().parse_args(["--verbose"]).category == "all"
    assert build_parser().parse_args(["tools"]).category == "tools"


def test_unknown_category_is_a_usage_error() -> None:
    completed = run_example("everything")
    assert completed.returncode == 2
    assert "invalid choice: 'everything'" in completed.stderr


def test_a_failing_example_exits_non_zero() -> None:
    # An invalid environment override makes every ContextManagerConfig() fail: the run must not pass.
    env = dict(os.environ, PYTHON_CONTEXT_MANAGER_COMPRESSION_RATIO="1.5")
    completed = run_example("basic", env=env)
    assert completed.returncode == 1
    assert "example crashed: ConfigurationError: compression_ratio: got '1.5'" in completed.stdout
    assert "All examples passed" not in completed.stdout


def test_a_failure_message_with_brackets_is_printed_as_it_is() -> None:
    """The failure line printed the error's text as rich markup: a value such as ``[/x]`` in it raised
    MarkupError from the handler, and the reader got that traceback instead of the error."""
    env = dict(os.environ, PYTHON_CONTEXT_MANAGER_MAX_TOKENS="[/x]")
    completed = run_example("basic", env=env)
    assert completed.returncode == 1
    assert "example crashed: ConfigurationError: max_tokens: got '[/x]'" in completed.stdout
    assert "MarkupError" not in completed.stdout + completed.stderr


def test_a_failure_message_ending_in_a_backslash_is_printed_as_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich's ``escape()`` doubles a text's final backslash: a failure naming ``C:\\data\\`` printed
    ``C:\\data\\\\``."""
    monkeypatch.syspath_prepend(str(MAIN.parent))
    monkeypatch.delenv("COLUMNS", raising=False)
    import main_example

    async def fail(names: list[str], ctx: object) -> list[tuple[str, float]]:
        raise main_example.ExampleFailure("nothing stored in C:\\data\\")

    monkeypatch.setattr(main_example, "run_categories", fail)
    monkeypatch.setattr(main_example.logging, "basicConfig", lambda **_: None)  # the root logger as it is
    assert main_example.main(["basic"]) == 1
    assert "example failed: nothing stored in C:\\data\\\n" in capsys.readouterr().out


def test_expected_log_lines_print_as_written(tmp_path: Path) -> None:
    """The held-back log lines were escaped markup before ``[/dim]``: a message's two final backslashes
    printed as one."""
    sys.path.insert(0, str(MAIN.parent))
    try:
        from _common import ExampleContext
        from rich.console import Console
    finally:
        sys.path.remove(str(MAIN.parent))
    ctx = ExampleContext(Console(width=200, record=True), False, tmp_path)
    with ctx.expected_logs("a test"):
        for _ in range(2):
            logging.getLogger("context_manager").warning("cannot write [/share] \\\\")
    assert "    warning: cannot write [/share] \\\\ (x2)" in ctx.console.export_text().splitlines()


def test_table_cells_and_details_are_values_not_markup(tmp_path: Path) -> None:
    """A cell holding ``[tool call lookup] {...}`` (a remembered tool call) lost its brackets' text, and so
    did a ``--verbose`` detail such as the rolling summary, which quotes the conversation."""
    sys.path.insert(0, str(MAIN.parent))
    try:
        from _common import ExampleContext
        from rich.console import Console
    finally:
        sys.path.remove(str(MAIN.parent))
    ctx = ExampleContext(Console(width=200, record=True), True, tmp_path)
    ctx.console.print(ctx.table("t", ["content"], [["[tool call lookup] {}"], ["[/etc/hosts]"]]))
    ctx.detail("rolling summary: - assistant: [tool call lookup] {} and [/etc/hosts]")
    printed = ctx.console.export_text()
    assert "[tool call lookup] {}" in printed and "[/etc/hosts]" in printed
    assert "rolling summary: - assistant: [tool call lookup] {} and [/etc/hosts]" in printed


def test_piped_output_reads_right() -> None:
    """Issue 15.8, ``make examples | cat`` read by a newcomer: not on a terminal (and COLUMNS unset)
    tables wrapped at 80 columns and cut headers ("strate…"); the deliberate summarizer failure printed
    WARNING lines that read like real failures; the agent's "largest request 541 tokens (budget 550);
    window now 594 tokens" read like an overflow; its recall showed a greeting as the top hit."""
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    completed = subprocess.run(
        [sys.executable, str(MAIN), "all"], capture_output=True, text=True, env=environment, timeout=180
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert not [line for line in lines if "…" in line], "a table cut a header or a cell"
    # long lines stay whole (a pipe is not an 80-column terminal)
    assert any(line.startswith("┃ #") and "strategy" in line for line in lines), "compression table header"
    assert (
        "✓ the system message and the pinned instruction are still in the window; the Aurora fact is not"
        in lines
    )
    # the deliberate failure is explained, not logged as if something were broken
    assert "WARNING" not in completed.stderr and not [line for line in lines if "WARNING" in line]
    assert any("expected here (the summarizer fails on purpose)" in line for line in lines)
    # the agent's figures say what they compare
    window = next(line for line in lines if "the window holds" in line and "of its 700 tokens" in line)
    assert int(re.search(r"holds (\d+) of its 700", window).group(1)) <= 700  # type: ignore[union-attr]
    budget = next(line for line in lines if "every request fit its 550-token budget" in line)
    assert int(re.search(r"the largest used (\d+)", budget).group(1)) <= 550  # type: ignore[union-attr]
    # the last question's top recalled memory is the delivery preference, not the greeting
    question = lines.index("user: What delivery times do I prefer?")
    assert "deliveries" in lines[question + 1] and "recalled:" in lines[question + 1], lines[question + 1]
