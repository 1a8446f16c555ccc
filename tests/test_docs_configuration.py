from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_matches_the_config_model() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_option_is_documented() -> None:
    from context_manager.core.config import ContextManagerConfig

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in ContextManagerConfig.model_fields:
        assert f"`{name}`" in text
        assert f"PYTHON_CONTEXT_MANAGER_{name.upper()}" in text


def test_every_environment_variable_the_docs_name_exists() -> None:
    """A ``PYTHON_CONTEXT_MANAGER_*`` variable named in the README, the docs or the examples is read."""
    from context_manager.core.config import ENV_PREFIX, ContextManagerConfig

    known = {f"{ENV_PREFIX}{name.upper()}" for name in ContextManagerConfig.model_fields} | {
        f"{ENV_PREFIX}DEBUG"
    }
    pages = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*.py")),
    ]
    named = {
        (page.name, variable)
        for page in pages
        for variable in re.findall(rf"{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]", page.read_text(encoding="utf-8"))
    }
    assert named and sorted(item for item in named if item[1] not in known) == []


def test_a_keyword_wins_over_the_environment_which_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As docs/configuration.md says."""
    from context_manager import ContextManagerConfig

    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", raising=False)
    assert ContextManagerConfig().max_tokens == 2000
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", "1234")
    assert ContextManagerConfig().max_tokens == 1234
    assert ContextManagerConfig(max_tokens=99).max_tokens == 99
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_FSYNC", "on")
    assert ContextManagerConfig().fsync is True
