"""Run the user guide's snippets as written, and check they are verbatim copies of USER_GUIDE.md."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SHARED_GUIDE = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "USER_GUIDE.md"
"""The shared user guide (the contract), when it is next to this checkout."""
PINNED_GUIDE = Path(__file__).resolve().parent / "fixtures" / "USER_GUIDE.md"
"""A copy of the guide kept with the tests, so a clean clone checks against it too."""
GUIDE = SHARED_GUIDE if SHARED_GUIDE.is_file() else PINNED_GUIDE
"""The guide the verbatim checks read: the shared one when present, else the pinned copy."""


def is_guide_block(source: str) -> bool:
    """Whether ``source`` (a leading newline ignored) is exactly one of the guide's ```python blocks."""
    return "```python\n" + source.lstrip("\n") + "```" in GUIDE.read_text(encoding="utf-8")


async def run_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute ``source`` with top-level ``await`` allowed in ``namespace``; return the namespace."""
    code = compile(source, "<user guide>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, namespace)  # noqa: S307 - the guide's own code
    if inspect.isawaitable(outcome):
        await outcome
    return namespace


def verbatim_test(snippets: dict[str, str]) -> Callable[[str], None]:
    """Return a test checking each snippet (keyed by guide section) is verbatim in the guide.

    Use it as ``test_snippets_are_verbatim_copies_of_the_guide = verbatim_test(SNIPPETS)``.
    """

    @pytest.mark.parametrize("section", list(snippets))
    def test_snippets_are_verbatim_copies_of_the_guide(section: str) -> None:
        assert is_guide_block(snippets[section]), section

    return test_snippets_are_verbatim_copies_of_the_guide
