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


def test_a_misspelled_environment_variable_is_named_with_the_closest_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``PYTHON_CONTEXT_MANAGER_MAX_TOKEN=500`` was silently ignored: the limit stayed 2000."""
    import warnings

    from context_manager import ContextManagerConfig

    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_MAX_TOKENS", raising=False)
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_MAX_TOKEN", "500")
    with pytest.warns(UserWarning) as caught:
        assert ContextManagerConfig().max_tokens == 2000
    messages = [str(warning.message) for warning in caught]
    assert messages == [
        "environment variable PYTHON_CONTEXT_MANAGER_MAX_TOKEN is not a configuration option and is "
        "ignored; did you mean PYTHON_CONTEXT_MANAGER_MAX_TOKENS?"
    ]
    assert caught[0].filename == __file__, "the warning points at the code creating the config"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ContextManagerConfig()  # once per variable and process
    monkeypatch.setenv("python_context_manager_nothing_like_it", "1")  # names are case-insensitive
    with pytest.warns(UserWarning, match=r"python_context_manager_nothing_like_it is not a configuration "):
        ContextManagerConfig()


def test_documented_environment_variables_give_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from context_manager.core.config import ENV_PREFIX, ContextManagerConfig

    for name in ("POSTGRES_DSN", "DEBUG", "ENABLE_DEBUG", "EMBEDDER", "STORAGE_PATH", "MEMORY_BACKEND"):
        monkeypatch.setenv(f"{ENV_PREFIX}{name}", "")
        monkeypatch.delenv(f"{ENV_PREFIX}{name}")
    monkeypatch.setenv(f"{ENV_PREFIX}POSTGRES_DSN", "postgresql://app@db/app")
    monkeypatch.setenv(f"{ENV_PREFIX}DEBUG", "0")
    monkeypatch.setenv(f"{ENV_PREFIX.lower()}embedder", "none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = ContextManagerConfig()
    assert config.postgres_dsn is not None and config.embedder == "none"


def test_the_command_line_names_a_misspelled_variable_once() -> None:
    import os

    environment = dict(os.environ, PYTHON_CONTEXT_MANAGER_EMBEDER="none", COLUMNS="200")
    completed = subprocess.run(
        [sys.executable, "-m", "context_manager.cli", "tokens", "-"],
        input="count me",
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("2 tokens")
    assert completed.stderr == (
        "warning: environment variable PYTHON_CONTEXT_MANAGER_EMBEDER is not a configuration option and is "
        "ignored; did you mean PYTHON_CONTEXT_MANAGER_EMBEDDER?\n"
    )


async def test_the_long_term_capacity_is_a_soft_limit_and_the_docs_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``long_term_memory_size`` read as a cap ("Long-term memory capacity"), but nothing is ever dropped
    to honour it: the tier grows past it, with one warning. A newcomer sizing a store must know that."""
    import logging

    from context_manager import ContextManagerConfig, MemoryManager

    config = ContextManagerConfig(
        storage_path=tmp_path, short_term_memory_size=2, medium_term_memory_size=2, long_term_memory_size=3
    )
    with caplog.at_level(logging.WARNING, logger="context_manager"):
        async with MemoryManager(config) as memory:
            for number in range(10):
                await memory.add_memory(f"fact number {number} about the lighthouse")
            await memory.flush()
            stats = await memory.get_memory_stats()
    assert (
        stats["total_memories"] == 10 and stats["by_tier"]["long"] > 3 and stats["over_capacity"] == ["long"]
    )
    warnings = [
        record.getMessage() for record in caplog.records if "over its capacity" in record.getMessage()
    ]
    assert len(warnings) == 1 and "nothing is dropped" in warnings[0]

    description = ContextManagerConfig.model_fields["long_term_memory_size"].description or ""
    assert "soft limit" in description and "nothing is dropped" in description
    memory_page = " ".join((ROOT / "docs" / "memory.md").read_text(encoding="utf-8").split())
    assert "`long_term_memory_size` is a soft limit" in memory_page
