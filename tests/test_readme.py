"""The README's first screen (issue 17.1): what it is, the install line, a short example, the two commands.

The short example is run the way a reader runs it, as a script in a fresh directory, and must print
exactly the output the README shows under it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST_SCREEN = 80
"""Lines a newcomer sees first; the install line, the short example and the two commands must fit."""


@dataclass
class Fence:
    language: str
    start: int
    """Line number (1-based) of the opening fence."""
    end: int
    """Line number of the closing fence."""
    body: str


def fences(text: str) -> list[Fence]:
    found, lines, number = [], text.splitlines(), 0
    while number < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[number])
        if opening:
            close = next(index for index in range(number + 1, len(lines)) if lines[index].rstrip() == "```")
            found.append(
                Fence(opening.group(1), number + 1, close + 1, "\n".join(lines[number + 1 : close]) + "\n")
            )
            number = close
        number += 1
    return found


def short_example() -> tuple[Fence, Fence]:
    """The first Python block of the README and the ```text block that shows its output."""
    blocks = fences(README.read_text(encoding="utf-8"))
    position = next(index for index, fence in enumerate(blocks) if fence.language == "python")
    output = blocks[position + 1]
    assert output.language == "text", "the short example is followed by its output, in a ```text block"
    return blocks[position], output


def run_script(source: str, directory: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    script = directory / "quickstart.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_first_screen_keeps_the_opening_then_install_short_example_and_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    install = next(
        n for n, line in enumerate(lines, 1) if line.startswith("pip install python-context-manager")
    )
    example, output = short_example()
    make_examples = next(n for n, line in enumerate(lines, 1) if line.startswith("make examples"))
    make_test = next(n for n, line in enumerate(lines, 1) if line.startswith("make test"))
    # the two opening paragraphs come first
    opening = "\n".join(lines[: install - 1])
    assert "A Python library for LLM applications and agents" in opening
    assert "Why: long conversations outgrow the model's context window." in opening
    assert install < example.start < output.end < make_examples < make_test <= FIRST_SCREEN, (
        install,
        example.start,
        output.end,
        make_examples,
        make_test,
    )
    # about ten lines of code, flat imports, a window that compresses itself, a recall from memory,
    # and no hand-built tool-call dict
    statements = [
        line for line in example.body.splitlines() if line.strip() and not line.startswith("import")
    ]
    assert len(statements) <= 16, len(statements)
    assert "from context_manager import " in example.body and "context_manager.core" not in example.body
    assert "compression_history" in example.body and "search_memory" in example.body
    assert "tool_calls" not in example.body and '"function"' not in example.body
    assert example.body.rstrip().endswith("asyncio.run(main())")


def test_the_short_example_runs_as_a_script_and_prints_what_the_readme_says(tmp_path: Path) -> None:
    example, output = short_example()
    first = run_script(example.body, tmp_path)  # the suite's default: no embedder (lexical search)
    assert first.returncode == 0, first.stderr
    assert first.stdout == output.body
    assert (tmp_path / "cache" / "storage").is_dir()  # "memory persists under ./cache"
    again = run_script(example.body, tmp_path)  # with the memory of the first run still there
    assert again.returncode == 0, again.stderr
    assert again.stdout == output.body


@pytest.mark.embeddings
def test_the_short_example_prints_the_same_with_minilm_the_default_once_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_EMBEDDER")  # the library's own default: embedder="auto"
    example, output = short_example()
    source = example.body + (
        "\n\nasync def vectors() -> int:\n"
        "    from context_manager import MemoryManager\n"
        "    async with MemoryManager(ContextManagerConfig()) as memory:\n"
        "        return (await memory.get_memory_stats())['index']['vectors']\n"
        "\n\nprint('vectors:', asyncio.run(vectors()))\n"
    )
    result = run_script(source, tmp_path)
    assert result.returncode == 0, result.stderr
    printed, vectors = result.stdout.rsplit("vectors: ", 1)
    assert printed == output.body
    assert int(vectors) > 0  # the default embedder embedded what was stored (MiniLM, the extra is installed)


@pytest.mark.parametrize(
    "embedder", ["none", pytest.param("auto", marks=pytest.mark.embeddings, id="auto-minilm")]
)
def test_the_tool_call_example_prints_what_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder: str
) -> None:
    """Also with the library's default once the embeddings extra is installed (MiniLM), as a reader who
    followed the README runs it: it failed there, its recall ranking differently from lexical search."""
    if embedder == "auto":
        monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_EMBEDDER")
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Tool calls") :]
    block = next(fence for fence in fences(section) if fence.language == "python")
    claimed = re.search(r"Output: `([^`]+)`", section)
    assert claimed is not None
    result = run_script(block.body, tmp_path)
    assert result.returncode == 0, result.stderr
    first_line, recalled = result.stdout.splitlines()[:2]
    assert first_line == claimed.group(1)
    assert recalled.startswith("recalled:") and "TRK-88231-PT" in recalled


def test_readme_says_what_is_on_by_default_for_memory_search_and_how_to_switch() -> None:
    from context_manager import ContextManagerConfig

    assert ContextManagerConfig.model_fields["embedder"].default == "auto"
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert 'The default, `embedder="auto"`, uses MiniLM when the `embeddings` extra is installed' in text
    assert 'ContextManagerConfig(embedder="none")' in text and "PYTHON_CONTEXT_MANAGER_EMBEDDER=none" in text
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        assert "real default" not in path.read_text(encoding="utf-8"), path.name


def test_the_install_section_lists_every_extra() -> None:
    """A newcomer finds every optional extra of pyproject.toml in the README's install lines."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Install") :]
    install = next(fence for fence in fences(section) if fence.language == "bash").body
    listed = set(re.findall(r"python-context-manager\[(\w+)\]", install))
    assert listed == set(extras) - {"dev"}, sorted(set(extras) - {"dev"} - listed)
    assert '".[dev,embeddings,postgres]"' in install  # what `make test` installs


def test_the_readme_command_line_finds_what_the_short_example_stored(tmp_path: Path) -> None:
    """The README's command-line block searches the memory the short example left in ./cache/storage."""
    example, _ = short_example()
    assert run_script(example.body, tmp_path).returncode == 0
    text = README.read_text(encoding="utf-8")
    block = next(fence for fence in fences(text[text.index("The command line, after installing") :]))
    search = next(line for line in block.body.splitlines() if " memory search " in line)
    words = shlex.split(search)
    assert words[0] == "context-manager"
    result = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", "--json", *words[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "TRK-88231-PT" in result.stdout
