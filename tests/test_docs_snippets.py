"""Every ```python block of README.md and docs/*.md runs, as written.

Blocks run in order, each in a fresh namespace and working directory (the test's temporary cwd), with
top-level ``await`` allowed (the block is run on an event loop). Markers in an HTML comment on the line
before a block:

* ``<!-- fragment -->``: the block continues the previous one (same namespace and event loop);
* ``<!-- needs-server -->``: the block talks to an OpenAI-compatible endpoint; it runs with
  ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` pointing at a local stand-in server on 127.0.0.1.

There is no marker to skip a block.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import logging
import os
import re
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chat_completions_server import running_server

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*([a-z-]+)\s*-->\s*$")
KNOWN_MARKERS = {"fragment", "needs-server"}
REQUIRED_PAGES = [
    "concepts",
    "configuration",
    "memory",
    "tools",
    "operations",
    "benchmarks",
    "troubleshooting",
    "integrations",
    "conversations",
]


@dataclass
class Block:
    path: Path
    line: int
    code: str
    markers: set[str]


@dataclass
class Group:
    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        first = self.blocks[0]
        return f"{first.path.relative_to(ROOT)}:{first.line}"


def read_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        markers: set[str] = set()
        preceding = text[: match.start()].rstrip("\n").splitlines()
        while preceding and (found := MARKER.search(preceding[-1])):
            markers.add(found.group(1))
            preceding.pop()
        blocks.append(Block(path, line, match.group(1), markers))
    return blocks


def groups() -> list[Group]:
    result: list[Group] = []
    for path in DOCUMENTS:
        for index, block in enumerate(read_blocks(path)):
            if "fragment" in block.markers and index > 0:
                result[-1].blocks.append(block)
            else:
                result.append(Group([block]))
    return result


def run_block(block: Block, namespace: dict[str, object], loop: asyncio.AbstractEventLoop) -> str:
    name = f"{block.path.name}:{block.line}"
    code = compile(block.code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    output = io.StringIO()
    with redirect_stdout(output):
        if code.co_flags & inspect.CO_COROUTINE:
            loop.run_until_complete(eval(code, namespace))  # noqa: S307 - our own documentation
        else:
            exec(code, namespace)  # noqa: S102
    return output.getvalue()


@pytest.fixture
def restore_process_state() -> object:
    environment = dict(os.environ)
    root = logging.getLogger()
    package = logging.getLogger("context_manager")
    saved = (root.level, list(root.handlers), package.level)
    yield
    os.environ.clear()
    os.environ.update(environment)
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    package.setLevel(saved[2])


@pytest.mark.parametrize("group", groups(), ids=lambda group: group.name)
def test_block_runs(group: Group, restore_process_state: object) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    try:
        for block in group.blocks:
            with ExitStack() as stack:
                if "needs-server" in block.markers:
                    server = stack.enter_context(running_server())
                    os.environ["OPENAI_BASE_URL"] = server.base_url
                    os.environ["OPENAI_API_KEY"] = "test-key"
                try:
                    run_block(block, namespace, loop)
                except BaseException as error:
                    raise AssertionError(f"{block.path.name}:{block.line} failed: {error!r}") from error
                if "needs-server" in block.markers:
                    assert server.requests, f"{block.path.name}:{block.line} never called the server"
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_markers_are_known_and_fragments_follow_a_block() -> None:
    for path in DOCUMENTS:
        for index, block in enumerate(read_blocks(path)):
            assert block.markers <= KNOWN_MARKERS, f"{path.name}:{block.line}: unknown marker {block.markers}"
            assert not ("fragment" in block.markers and index == 0), f"{path.name}:{block.line}"


def test_every_documentation_page_exists_and_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in REQUIRED_PAGES:
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
    for path in sorted((ROOT / "docs").glob("*.md")):  # every page, including ones added later
        assert f"(docs/{path.name})" in readme, f"README does not link docs/{path.name}"
    assert sum(len(read_blocks(path)) for path in DOCUMENTS) >= 25


def test_readme_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make examples" in readme and "make test" in readme and "pytest" in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "examples/main_example.py all" in makefile and "-m pytest" in makefile
