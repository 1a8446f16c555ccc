"""Every ```python block of README.md and docs/*.md runs, as a reader would run it.

The convention (CONTRIBUTING.md, "Code blocks in the documentation"): a block is a complete script,
to be saved as a file and run with ``python`` (async code inside ``async def main()`` and
``asyncio.run(main())``), unless its first line is ``# run in: python -m asyncio``, in which case it is
pasted into the asyncio REPL, where ``await`` works at the top level.

So a script block is compiled as a module, without top-level ``await`` (a ``SyntaxError`` there is a
block a reader could not run), and executed as ``__main__``; an asyncio-REPL block is fed line by line
to the same interactive console ``python -m asyncio`` uses (``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT``), so
a blank line inside an indented block, which ends the statement early in that console, fails here too.
Each block runs in a fresh namespace, in the test's temporary working directory. Markers in an HTML
comment on the line before a block:

* ``<!-- fragment -->``: the block continues the previous one (same namespace and event loop);
* ``<!-- needs-server -->``: the block talks to an OpenAI-compatible endpoint or to the Anthropic Messages
  API; it runs with ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` and ``ANTHROPIC_BASE_URL``/``ANTHROPIC_API_KEY``
  pointing at a local stand-in server on 127.0.0.1.

A script line that prints a caught exception with a comment (``print(error)  # priority: got ...``)
claims the message: each time the line runs, what it prints must match the comment, ``...`` standing for
left-out text. A ``print(...)`` line ending in a comment that is a Python literal
(``print(config.compression_target_tokens)  # 800``) claims the whole output: the literal as written or
as ``print`` shows it, ``...`` again standing for left-out text.

There is no marker to skip a block.
"""

from __future__ import annotations

import ast
import asyncio
import code
import inspect
import io
import json
import logging
import os
import re
import shlex
import sys
import tokenize
import types
import warnings
from collections.abc import Callable
from contextlib import ExitStack, redirect_stdout
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.chat_completions_server import running_server

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*([a-z-]+)\s*-->\s*$")
KNOWN_MARKERS = {"fragment", "needs-server"}
ASYNCIO_REPL = "# run in: python -m asyncio"
"""First line of a block meant to be pasted into ``python -m asyncio`` (any other block is a script)."""
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

    @property
    def in_asyncio_repl(self) -> bool:
        """Whether the block is meant for ``python -m asyncio`` rather than a ``.py`` file."""
        return self.code.split("\n", 1)[0].strip() == ASYNCIO_REPL


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


class AsyncioConsole(code.InteractiveConsole):
    """The console of ``python -m asyncio``, reporting errors by raising instead of printing them.

    Lines are pushed one at a time, as pasted: the console compiles each complete statement with
    top-level ``await`` allowed and runs it (a coroutine to completion on ``loop``) before reading on.
    """

    def __init__(self, namespace: dict[str, object], loop: asyncio.AbstractEventLoop, filename: str) -> None:
        super().__init__(namespace, filename=filename)
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.loop = loop

    def runcode(self, code: types.CodeType) -> None:
        outcome = types.FunctionType(code, self.locals)()
        if inspect.iscoroutine(outcome):
            self.loop.run_until_complete(outcome)

    def showsyntaxerror(self, filename: str | None = None, **kwargs: object) -> None:
        error = sys.exc_info()[1]
        raise SyntaxError(f"the asyncio REPL rejects this paste: {error!r}") from error

    def paste(self, source: str) -> None:
        """Push ``source`` line by line, then an empty line (the reader's final Enter).

        An expression line ending in a comment that is a Python literal (``sorted(ids)  # ['a', 'b']``)
        claims what the REPL echoes: the echo must be that literal's ``repr``.
        """
        for line in [*source.splitlines(), ""]:
            echoed = io.StringIO()
            with redirect_stdout(echoed):
                self.push(line)
            sys.stdout.write(echoed.getvalue())
            claimed = claimed_echo(line)
            if claimed is not None:
                assert echoed.getvalue().strip() == claimed, f"{line!r} echoed {echoed.getvalue()!r}"


def claimed_echo(line: str) -> str | None:
    """The ``repr`` an asyncio-REPL line's trailing comment says it echoes, or None if it claims none."""
    expression, _, comment = line.partition("  # ")
    if not comment or line.startswith((" ", "\t")):
        return None
    try:
        ast.parse(expression, mode="eval")
        return repr(ast.literal_eval(comment.strip()))
    except (SyntaxError, ValueError):
        return None


def run_block(block: Block, namespace: dict[str, object], loop: asyncio.AbstractEventLoop) -> str:
    """Run ``block`` the way its reader would; return what it printed."""
    name = f"{block.path.name}:{block.line}"
    output = io.StringIO()
    with redirect_stdout(output):
        if block.in_asyncio_repl:
            namespace.setdefault("asyncio", asyncio)  # the asyncio REPL imports it for you
            AsyncioConsole(namespace, loop, name).paste(block.code)
        else:
            try:
                compiled = compile(block.code, name, "exec")
            except SyntaxError as error:
                raise SyntaxError(
                    f"{name} does not run as a script ({error.msg}, line {error.lineno}): wrap top-level "
                    f"await in 'async def main()' + 'asyncio.run(main())', or start the block with "
                    f"{ASYNCIO_REPL!r}"
                ) from error
            values = printed_value_claims(block.code)
            claims = {**printed_error_claims(block.code), **values}
            if claims:
                tree = ast.fix_missing_locations(ClaimedPrints(claims).visit(ast.parse(block.code)))
                compiled = compile(tree, name, "exec")
            printed: dict[int, list[str]] = {}
            namespace[CLAIMED_PRINT] = recording_print(printed)
            exec(compiled, namespace)  # noqa: S102 - our own documentation
            for line, texts in printed.items():
                matches = partial(prints_value if line in values else shows, claims[line])
                assert all(matches(text) for text in texts), (
                    f"{name}, line {line} claims it prints {claims[line]!r}; it printed {texts}"
                )
    return output.getvalue()


CLAIMED_PRINT = "__claimed_print__"
"""The name a claimed ``print`` is rewritten to call (it prints, and records what it printed)."""


def printed_error_claims(source: str) -> dict[int, str]:
    """Lines of a script block that print a caught exception and say in a comment what that prints.

    ``print(error)  # priority: got 'urgent'; allowed ...``, where ``error`` is bound by an
    ``except ... as error`` of the block: the comment is the message, ``...`` standing for left-out text.
    Error messages are reworded as the library evolves; the comments quoting them must follow.
    """
    tree = ast.parse(source)
    caught = {node.name for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler) and node.name}
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    claims = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
            and node.end_lineno in comments
            and any(isinstance(name, ast.Name) and name.id in caught for name in ast.walk(node))
        ):
            claims[node.end_lineno] = comments[node.end_lineno]
    return claims


def printed_value_claims(source: str) -> dict[int, str]:
    """Lines of a script block whose ``print(...)`` ends in a comment that is a Python literal, and that
    comment: what the line prints (``print(config.compression_target_tokens)  # 800``; see
    :func:`prints_value`).

    Only error messages were checked: a value a page said a line prints went unchecked (a comment that
    is no literal, ``# an integer`` or ``# /tmp/context_cache/storage``, claims nothing).
    """
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    claims = {}
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
            and node.end_lineno in comments
        ):
            try:
                ast.literal_eval(comments[node.end_lineno])
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                continue  # no literal (``{[]}`` parses but does not evaluate)
            claims[node.end_lineno] = comments[node.end_lineno]
    return claims


def prints_value(claim: str, text: str) -> bool:
    """Whether ``text`` is what a literal comment says a print shows: the comment as written (``0.80``,
    ``'ana'`` after ``repr``) or the literal's ``str`` (``# 'user'`` for ``user``), the whole text, not a
    part of it; ``...`` stands for left-out text (``['a', ...]``, or ``...`` alone) as in printed errors.
    """
    if text in (claim, str(ast.literal_eval(claim))):
        return True
    pattern = ".*".join(re.escape(part) for part in claim.split("..."))
    return "..." in claim and re.fullmatch(pattern, text, re.DOTALL) is not None


class ClaimedPrints(ast.NodeTransformer):
    """Rewrite ``print(...)`` on a claimed line to ``__claimed_print__(line, ...)``."""

    def __init__(self, claims: dict[int, str]) -> None:
        self.claims = claims

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "print" and node.end_lineno in self.claims:
            line = ast.Constant(node.end_lineno)
            return ast.copy_location(
                ast.Call(ast.Name(CLAIMED_PRINT, ast.Load()), [line, *node.args], node.keywords), node
            )
        return node


def recording_print(printed: dict[int, list[str]]) -> Callable[..., None]:
    def claimed_print(line: int, *values: object, sep: str | None = " ", **options: Any) -> None:
        printed.setdefault(line, []).append((" " if sep is None else sep).join(map(str, values)))
        print(*values, sep=sep, **options)

    return claimed_print


def shows(claim: str, text: str) -> bool:
    """Whether ``text`` is what ``claim`` says, ``...`` in the claim standing for any text."""
    position = 0
    for fragment in (part.strip() for part in claim.split("...")):
        found = text.find(fragment, position)
        if found < 0:
            return False
        position = found + len(fragment)
    return True


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


@pytest.mark.parametrize(
    "embedder", ["none", pytest.param("auto", marks=pytest.mark.embeddings, id="auto-minilm")]
)
@pytest.mark.parametrize("group", groups(), ids=lambda group: group.name)
def test_block_runs(group: Group, embedder: str, restore_process_state: object) -> None:
    """With lexical search (the suite's default) and with the library's own default once the embeddings
    extra is installed (MiniLM), as a reader who followed the README runs the blocks."""
    if embedder == "auto":
        os.environ.pop("PYTHON_CONTEXT_MANAGER_EMBEDDER", None)  # restore_process_state puts it back
    namespace: dict[str, object] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    try:
        for block in group.blocks:
            with ExitStack() as stack:
                # pyproject.toml ignores it for the tests' throwaway tools; a reader running a block sees it
                stack.enter_context(warnings.catch_warnings())
                warnings.filterwarnings("error", r"tool '.*' has no description", UserWarning)
                if "needs-server" in block.markers:
                    server = stack.enter_context(running_server())
                    os.environ["OPENAI_BASE_URL"] = server.base_url
                    os.environ["OPENAI_API_KEY"] = "test-key"
                    os.environ["ANTHROPIC_BASE_URL"] = server.anthropic_base_url
                    os.environ["ANTHROPIC_API_KEY"] = "test-key"
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


def test_the_docs_index_lists_every_page_once() -> None:
    """docs/ had no index: a newcomer opening the folder saw eleven files in alphabetical order."""
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = sorted(path.name for path in (ROOT / "docs").glob("*.md") if path.name != "README.md")
    listed = re.findall(r"^\d+\. \[([a-z_]+\.md)\]\(\1\): ", index, flags=re.MULTILINE)
    assert sorted(listed) == pages
    assert listed[0] == "concepts.md"  # reading order: the concepts first


def test_readme_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make examples" in readme and "make test" in readme and "pytest" in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "examples/main_example.py all" in makefile and "-m pytest" in makefile


def test_every_block_is_a_script_or_marked_for_the_asyncio_repl() -> None:
    scripts, repl_blocks = 0, 0
    for path in DOCUMENTS:
        for block in read_blocks(path):
            if block.in_asyncio_repl:
                repl_blocks += 1
                continue
            try:
                compile(block.code, f"{path.name}:{block.line}", "exec")
            except SyntaxError as error:
                pytest.fail(f"{path.name}:{block.line} is not a complete script: {error}")
            scripts += 1
    assert scripts >= 40 and repl_blocks >= 1


def _run_alone(source: str) -> str:
    loop = asyncio.new_event_loop()
    try:
        return run_block(Block(ROOT / "README.md", 1, source, set()), {"__name__": "__main__"}, loop)
    finally:
        loop.close()


def test_a_script_block_with_top_level_await_fails_as_it_would_in_a_file() -> None:
    with pytest.raises(SyntaxError, match="does not run as a script.*asyncio.run"):
        _run_alone("import asyncio\n\nawait asyncio.sleep(0)\n")
    assert (
        _run_alone("import asyncio\n\nasync def main():\n    print('ran')\n\nasyncio.run(main())\n")
        == "ran\n"
    )


def test_an_asyncio_repl_block_runs_as_pasted_and_its_claimed_echoes_are_checked() -> None:
    pasted = f"{ASYNCIO_REPL}\nawait asyncio.sleep(0)\nvalues = [3, 1, 2]\nsorted(values)  # [1, 2, 3]\n"
    assert _run_alone(pasted) == "[1, 2, 3]\n"
    with pytest.raises(AssertionError, match="echoed"):
        _run_alone(f"{ASYNCIO_REPL}\nsorted([3, 1, 2])  # [3, 2, 1]\n")
    # in the REPL a blank line ends an indented block: the next indented line is a syntax error
    with pytest.raises(SyntaxError, match="asyncio REPL rejects"):
        _run_alone(f"{ASYNCIO_REPL}\nasync def answer():\n    value = 42\n\n    return value\n")
    # and a dedented line right after an indented block, without the blank line, is one too
    with pytest.raises(SyntaxError, match="asyncio REPL rejects"):
        _run_alone(f"{ASYNCIO_REPL}\nfor number in range(2):\n    print(number)\nprint('done')\n")


def test_a_printed_error_message_is_checked_against_the_comment_quoting_it() -> None:
    script = (
        "try:\n"
        "    int('x')\n"
        "except ValueError as error:\n"
        "    print(error)  # invalid literal for int() with base 10: ...\n"
    )
    assert _run_alone(script) == "invalid literal for int() with base 10: 'x'\n"
    with pytest.raises(AssertionError, match="claims it prints"):
        _run_alone(script.replace("base 10", "base 16"))
    # a branch that does not run claims nothing, and a comment on another print is not a claim
    assert _run_alone("print(1 + 1)  # an integer\nif False:\n    " + script.replace("\n", "\n    ")) == "2\n"
    # a line run twice must print what it claims both times (a loop over two bad values claimed only the
    # first message, and the second one went unchecked)
    body = script.replace("int('x')", "int(value)").replace("\n", "\n    ")
    looped = "for value in ('x', 'y'):\n    " + body
    with pytest.raises(AssertionError, match="claims it prints"):
        _run_alone(looped.replace("base 10: ...", "base 10: 'x'"))
    assert _run_alone(looped).count("invalid literal") == 2


def test_a_printed_value_is_checked_against_the_literal_comment_claiming_it() -> None:
    """docs/configuration.md's ``print(config.compression_target_tokens)  # 800`` was never checked: only
    printed error messages were."""
    assert _run_alone("print(4 * 200)  # 800\nprint(sorted([2, 1, 1]))  # [1, 1, 2]\n") == "800\n[1, 1, 2]\n"
    with pytest.raises(AssertionError, match="line 1 claims it prints '800'; it printed \\['1800'\\]"):
        _run_alone("print(9 * 200)  # 800\n")  # exactly: not found inside a longer output
    with pytest.raises(AssertionError, match="claims it prints"):
        _run_alone("print(sorted([2, 1]))  # [2, 1]\n")
    assert (
        _run_alone("print(2)  # an integer\nprint('/tmp')  # /tmp/x\n") == "2\n/tmp\n"
    )  # no literal: no claim


def test_a_literal_comment_written_as_the_output_shows_it_is_not_refused() -> None:
    """The claim was only the literal's ``str``: ``# 0.80`` after ``f"{x:.2f}"`` claimed ``0.8``, ``# 'ana'``
    after ``repr`` claimed ``ana``, and ``...`` (left-out text, as in a printed error) became ``Ellipsis``."""
    source = (
        'print(f"{0.8:.2f}")  # 0.80\n'
        "print(repr('ana'))  # 'ana'\n"
        "print(['a', 'b', 'c'])  # ['a', ...]\n"
        "print({'state': 'ready'})  # ...\n"
        "try:\n    int('x')\nexcept ValueError as error:\n    print(error)  # ...\n"
        "print('{}')  # {[]}\n"  # a literal that does not evaluate: no claim
    )
    assert _run_alone(source).splitlines()[:2] == ["0.80", "'ana'"]
    with pytest.raises(AssertionError, match=r"claims it prints \"\['b', ...\]\""):
        _run_alone("print(['a', 'b'])  # ['b', ...]\n")  # the text around ``...`` still counts


# ------------------------------------------------------------------ one way to import (issue 17.2)

DEEP_PATH = re.compile(r"context_manager.core")
"""What ``grep -r "context_manager.core"`` finds (the dot matches any character, ``/`` included)."""


def imports_section(text: str) -> tuple[int, int]:
    """Line numbers (1-based, inclusive) of the "## Imports" section of docs/concepts.md."""
    lines = text.splitlines()
    start = lines.index("## Imports") + 1
    end = next(number for number in range(start, len(lines)) if lines[number].startswith("## "))
    return start, end


def test_docs_and_examples_name_deep_paths_only_in_the_compatibility_note() -> None:
    concepts = ROOT / "docs" / "concepts.md"
    note_start, note_end = imports_section(concepts.read_text(encoding="utf-8"))
    hits, outside = [], []
    for path in [*DOCUMENTS, *sorted((ROOT / "examples").glob("*.py"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if DEEP_PATH.search(line):
                hits.append((path.relative_to(ROOT), number))
                if not (path == concepts and note_start <= number <= note_end):
                    outside.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert outside == [], "\n".join(outside)
    assert hits, "the compatibility note names the user guide's paths"


def test_the_user_guide_deep_paths_name_the_top_level_objects() -> None:
    import importlib

    import context_manager
    from tests.guide_snippets import GUIDE

    concepts = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    note_start, note_end = imports_section(concepts)
    note = "\n".join(concepts.splitlines()[note_start - 1 : note_end])
    guide_imports = re.findall(
        r"from (context_manager\.core[\w.]*) import ([\w, ]+)", GUIDE.read_text("utf-8")
    )
    assert guide_imports
    for module_name, names in guide_imports:
        assert f"`.{module_name.rsplit('.', 1)[1]}`" in note or f"`{module_name}`" in note, module_name
        module = importlib.import_module(module_name)
        for name in (name.strip() for name in names.split(",")):
            assert getattr(module, name) is getattr(context_manager, name), f"{module_name}.{name}"


def test_classes_the_user_docs_name_import_from_the_top_level() -> None:
    """The docs promise that everything imports from ``context_manager``: a class the README or a user
    page names (``ToolRegistry``, ``HealthThresholds`` ...) must be there, or in ``context_manager.testing``.
    Internals named by the pages about measurements and guarantees (benchmarks, reliability) are exempt."""
    import context_manager
    import context_manager.testing

    defined = {
        node.name
        for path in (ROOT / "src" / "context_manager").rglob("*.py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
    }
    user_pages = [path for path in DOCUMENTS if path.name not in ("benchmarks.md", "reliability.md")]
    missing = sorted(
        f"{path.name}: {name}"
        for path in user_pages
        for name in set(re.findall(r"`([A-Z][A-Za-z]+)[`(.]", path.read_text(encoding="utf-8")))
        if name in defined
        and name not in context_manager.__all__
        and not hasattr(context_manager.testing, name)
    )
    assert defined and missing == []


def test_the_error_tree_in_concepts_is_the_one_in_the_errors_module() -> None:
    """docs/concepts.md shows the tree drawn in ``context_manager.core.errors``; every name imports from
    ``context_manager`` and has the parent the tree gives it."""
    import builtins
    import textwrap

    import context_manager
    from context_manager.core import errors

    docstring = errors.__doc__ or ""
    start = docstring.index("    ContextManagerError\n")
    tree = textwrap.dedent(docstring[start : docstring.index("\n\n", start)])
    concepts = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert f"```text\n{tree}\n```" in concepts
    parents: list[type] = []
    for line in tree.splitlines():
        name = re.search(r"(\w+Error)", line)
        assert name is not None, line
        depth = (len(line) - len(line.lstrip(" │├└─"))) // 4
        error = getattr(context_manager, name.group(1))
        parents[depth:] = [error]
        assert depth == 0 or issubclass(error, parents[depth - 1]), line
        builtin = re.search(r"\((\w+)\)", line)
        assert builtin is None or issubclass(error, getattr(builtins, builtin.group(1))), line


# ------------------------------------------------------------------ links and command lines

LINK = re.compile(r"\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    """``text`` without its fenced code blocks (a ``#`` there is a comment, not a heading)."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.MULTILINE | re.DOTALL)


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path`` (lower case, punctuation dropped, ``-`` for
    spaces, ``-1``, ``-2`` ... for repeats)."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", without_code(path.read_text(encoding="utf-8")), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_relative_links_and_their_anchors_resolve() -> None:
    pages = [*DOCUMENTS, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
    broken = []
    for page in pages:
        for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == [], "\n".join(broken)


TEST_REFERENCE = re.compile(r"`((?:tests/)?[\w/]*test_\w+\.py)?((?:::[\w\[\]/,.* -]+?)+)`")
"""A test the docs cite: ``tests/x/test_y.py::test_z``, ``test_y.py::test_z`` (any ``test_y.py`` under
``tests/``) or ``::test_z`` (in the file named last in the same paragraph or table)."""


def test_the_tests_the_docs_cite_exist() -> None:
    """A guarantee "tested by ``test_restore.py::test_x``" must name a test a reader can find and run."""
    files: dict[str, list[Path]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        files.setdefault(path.name, []).append(path)
    wrong, cited = [], 0
    for page in [*DOCUMENTS, ROOT / "CONTRIBUTING.md"]:
        current: list[Path] = []
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                current = []  # a continuation ``::name`` refers to a file of its own paragraph
            for found in TEST_REFERENCE.finditer(line):
                if found.group(1):
                    named = found.group(1)
                    current = [ROOT / named] if named.startswith("tests/") else files.get(named, [])
                    if not all(path.is_file() for path in current) or not current:
                        wrong.append(f"{page.name}:{number}: {named}: no such test file")
                        current = []
                        continue
                elif not current:
                    wrong.append(f"{page.name}:{number}: {found.group(0)} names no test file before it")
                    continue
                for name in found.group(2).split("::")[1:]:
                    definition = re.compile(
                        rf"^\s*(?:async )?def {re.escape(name.split('[')[0].strip())}\b", re.M
                    )
                    cited += 1
                    if not any(definition.search(path.read_text(encoding="utf-8")) for path in current):
                        wrong.append(f"{page.name}:{number}: {found.group(1) or ''}::{name}: no such test")
    assert cited >= 50 and wrong == [], "\n".join(wrong)


COMMAND_LINE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*context-manager\s")


SHELL_COMMAND = re.compile(r"^(?:[^#]*?\s--\s+)?((?:[A-Z_]+=\S+\s+)*)(?:/\S*/)?(context-manager\s.*)$")
"""A ``context-manager`` command of a shell line (a pipe's part), also where another program starts it
after ``--`` (``claude mcp add memory -- /venv/bin/context-manager ...``)."""


def documented_command_lines() -> list[tuple[str, str, bool]]:
    """``(page, command line, complete)`` for every ``context-manager ...`` of the README and docs:
    commands of shell blocks (complete commands, continuation lines joined), the ``command`` and
    ``args`` of an MCP client's JSON configuration (complete too) and inline code spans (which may
    leave out arguments)."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for language, body in re.findall(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
            if language in ("bash", "sh", ""):
                for line in body.replace("\\\n", " ").splitlines():
                    for segment in re.split(r" \| ", line.strip()):
                        command = SHELL_COMMAND.search(segment.strip())
                        if command:
                            found.append((path.name, re.split(r" > ", "".join(command.groups()))[0], True))
            elif language == "json":
                found.extend((path.name, line, True) for line in json_command_lines(json.loads(body)))
        for span in re.findall(r"`((?:[A-Z_]+=\S+ )*context-manager [^`]*)`", without_code(text)):
            found.append((path.name, span, False))
    return found


def json_command_lines(value: object) -> list[str]:
    """``context-manager ARGS`` for each ``{"command": ".../context-manager", "args": [...]}`` of ``value``
    (an MCP client's configuration)."""
    if isinstance(value, list):
        return [line for item in value for line in json_command_lines(item)]
    if not isinstance(value, dict):
        return []
    lines = [line for item in value.values() for line in json_command_lines(item)]
    command = value.get("command")
    if isinstance(command, str) and command.rsplit("/", 1)[-1] == "context-manager":
        lines.append(shlex.join(["context-manager", *value.get("args", [])]))
    return lines


def parse_command_line(line: str, *, complete: bool) -> None:
    """Parse ``line`` with the real ``context-manager`` command (nothing runs): an unknown command or
    option, or a bad value, raises; so does a missing argument when the line is ``complete``."""
    import typer

    from context_manager.cli import app

    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)  # VARIABLE=value before the command
    assert words[0] == "context-manager", line
    command, arguments, context = typer.main.get_command(app), words[1:], None
    while True:
        try:
            context = command.make_context(command.name or "context-manager", arguments, parent=context)
        except Exception as error:
            if type(error).__name__ == "Exit" and getattr(error, "exit_code", None) == 0:
                return  # an eager option such as --version did its work
            if complete or type(error).__name__ != "MissingParameter":
                raise
            return
        if not hasattr(command, "resolve_command"):
            return
        rest = [*context._protected_args, *context.args]
        if not rest:
            return
        _, command, arguments = command.resolve_command(context, rest)


def test_command_lines_in_the_docs_parse() -> None:
    lines = documented_command_lines()
    assert len(lines) >= 30
    # also the commands an MCP client's JSON configuration, another program or a pipe starts
    commands = {line for _, line, _ in lines}
    assert "context-manager mcp serve --set memory_backend=postgres --user alice" in commands
    assert any(line.startswith("context-manager memory import -") for _, line, _ in lines)
    assert json_command_lines({"a": [{"command": "/v/bin/context-manager", "args": ["health"]}]}) == [
        "context-manager health"
    ]
    wrong = []
    for page, line, complete in lines:
        try:
            parse_command_line(line, complete=complete)
        except Exception as error:
            wrong.append(f"{page}: {line}: {type(error).__name__}: {error}")
    assert wrong == [], "\n".join(wrong)


def options_a_command_line_gives(line: str) -> set[tuple[str, str]]:
    """``(command, option)`` for each option ``line`` passes: ``("memory search", "--limit")``, or
    ``("", "--json")`` for a global one (whether it parses is ``test_command_lines_in_the_docs_parse``'s)."""
    import typer

    from context_manager.cli import app

    command: Any = typer.main.get_command(app)  # typer's own copy of click: no click.Group to check against
    path: list[str] = []
    given = set()
    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    for word in words[1:]:
        if word in getattr(command, "commands", {}):
            command = command.commands[word]
            path.append(word)
            continue
        flag = word.split("=", 1)[0]
        for parameter in command.params:
            if parameter.param_type_name == "option" and flag in (*parameter.opts, *parameter.secondary_opts):
                given.add((" ".join(path), max(parameter.opts, key=len)))
    return given


def command_line_options() -> set[tuple[str, str]]:
    """``(command, option)`` for every option of every ``context-manager`` command (``--help`` aside)."""
    import typer

    from context_manager.cli import app

    found = set()

    def walk(command: Any, path: list[str]) -> None:
        for parameter in command.params:
            if parameter.param_type_name == "option":
                found.add((" ".join(path), max(parameter.opts, key=len)))
        for name, child in getattr(command, "commands", {}).items():
            walk(child, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_option_of_the_command_line_is_shown_in_the_docs() -> None:
    """An option ``context-manager COMMAND --help`` lists is used in a command line of the README or the
    docs (a shell block or an inline ``context-manager ...`` span) for that very command, so a reader
    learns it exists from the docs and not only from ``--help``."""
    shown = set().union(*(options_a_command_line_gives(line) for _, line, _ in documented_command_lines()))
    options = command_line_options()
    assert ("memory search", "--limit") in options and ("", "--json") in options
    assert ("memory search", "--limit") in options_a_command_line_gives(
        "context-manager --json memory search 'x' -n 3  # --tag y"
    )
    missing = sorted(" ".join(["context-manager", *path.split(), option]) for path, option in options - shown)
    assert missing == [], "\n".join(missing)


def test_a_wrong_command_line_is_caught() -> None:
    parse_command_line("context-manager --storage ./s memory search 'x' --limit 5", complete=True)
    parse_command_line("context-manager memory migrate", complete=False)
    for line in (
        "context-manager memory search x --limt 5",
        "context-manager memry stats",
        "context-manager health --storage ./s",  # a global option after the command
        "context-manager tokens notes.txt --encoding p50k_base",
        "context-manager memory migrate",
    ):
        with pytest.raises(Exception, match="No such|Invalid value|not one of|Missing"):
            parse_command_line(line, complete=True)


# ------------------------------------------------------------------ where files go, and starting over


def section(path: Path, heading: str) -> str:
    """The text of ``path`` under ``heading`` (a ``## `` line), up to the next ``## `` heading."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_the_files_the_configuration_page_lists_are_the_files_a_store_writes() -> None:
    """docs/configuration.md lists every file the embedded store writes under ``storage_path``, for a
    newcomer who wants to know where the quick start's memory went and what ``rm -rf ./cache`` deletes."""
    listed = set(
        re.findall(
            r"^\| `([^`]+)` \|",
            section(ROOT / "docs" / "configuration.md", "Where files are written, and starting over"),
            re.MULTILINE,
        )
    )

    async def use_everything() -> None:
        from context_manager import ContextManagerConfig, EnhancedContextManager

        config = ContextManagerConfig(max_tokens=200)  # the defaults: ./cache/storage
        async with EnhancedContextManager(config, conversation_id="ticket-1") as manager:
            await manager.memory_manager.add_memory("The customer is Ana", importance=0.9)
            for turn in range(20):  # compressions: evicted messages go to memory
                await manager.add_message("user", f"Question {turn} about the delivery address?")

    asyncio.run(use_everything())
    written = {path.name for path in Path("cache", "storage").iterdir()}
    assert {path.name for path in Path().iterdir()} == {"cache"}  # the working directory of the test
    assert {path.name for path in Path("cache").iterdir()} == {"storage"}
    assert written == listed, (written, listed)


def test_the_postgres_reset_drops_every_object_the_backend_creates(postgres_dsn: str) -> None:
    """The SQL of docs/postgres.md "Starting over" leaves nothing of the library in the schema, and the
    next manager starts with an empty memory and no conversation."""
    import psycopg

    from context_manager import ContextManagerConfig, EnhancedContextManager
    from context_manager.testing import HashingEmbedder

    [reset] = re.findall(r"```sql\n(.*?)```", section(ROOT / "docs" / "postgres.md", "Starting over"), re.S)
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, max_tokens=200)
    options: dict[str, Any] = {"conversation_id": "c-1", "embedder": HashingEmbedder()}

    async def fill() -> None:
        async with EnhancedContextManager(config, **options) as manager:
            await manager.memory_manager.add_memory("The staging database is in Lisbon", importance=0.9)
            for turn in range(20):
                await manager.add_message("user", f"Question {turn} about the staging database?")

    async def reopen() -> tuple[int, list[dict[str, Any]], int]:
        async with EnhancedContextManager(config, **options) as manager:
            stats = await manager.memory_manager.get_memory_stats()
            state = (stats["total_memories"], await manager.list_conversations(), len(manager.messages))
            await manager.add_message("user", "A new start")
            assert await manager.search_memory("staging database") == []
            return state

    def library_objects() -> list[str]:
        with psycopg.connect(postgres_dsn) as connection:
            rows = connection.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() UNION ALL "
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema()"
            ).fetchall()
        return sorted(row[0] for row in rows)

    asyncio.run(fill())
    before = library_objects()
    assert {"cm_memories", "cm_memory_vectors", "cm_conversations", "cm_memories_search"} <= set(before)
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(reset)
    assert library_objects() == [], "the reset leaves objects of the library behind"
    assert asyncio.run(reopen()) == (0, [], 0)


# ------------------------------------------------------------------ figures the concepts page lists


def test_the_keys_concepts_lists_are_those_of_the_summary_and_of_a_compression_record(tmp_path: Path) -> None:
    """docs/concepts.md names every key of ``get_context_summary()`` and of a ``compression_history``
    record (the user guide reads ``message_count``, ``utilization``, ``tokens_before`` ...)."""
    from context_manager import ContextManagerConfig, EnhancedContextManager

    concepts = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")

    def listed(opening: str) -> set[str]:
        paragraph = concepts[concepts.index(opening) :].split("\n\n", 1)[0]
        return set(re.findall(r"`([a-z_]+)`", paragraph[len(opening) :]))

    async def keys() -> tuple[set[str], set[str]]:
        config = ContextManagerConfig(max_tokens=200, cache_path=tmp_path, embedder="none")
        async with EnhancedContextManager(config) as manager:
            for turn in range(25):
                await manager.add_message("user", f"Status of ticket {turn} in the billing queue?")
            return set(manager.get_context_summary()), set(manager.compression_history[0])

    summary, record = asyncio.run(keys())
    assert listed("`get_context_summary()` gives") == summary
    assert listed("Each `compression_history` record has") == record
