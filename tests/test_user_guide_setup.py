"""The user guide's set-up snippets that no other test ran as written.

Basic Usage > Initialization, Configuration > Configuration Options, Performance Optimization >
Configuration Optimization, Troubleshooting > Import Errors and Troubleshooting > Debug Mode, copied
verbatim from USER_GUIDE.md (``test_snippets_are_verbatim_copies_of_the_guide``). Their relative paths
(``./cache``, ``./storage``, ``./src``) are the reader's working directory: each test runs in a temporary
one (the repository root for the import snippet, which is meant for a clone).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from tests.guide_snippets import run_snippet, verbatim_test

ROOT = Path(__file__).resolve().parents[1]
GUIDE_IMPORTS = {"ContextManagerConfig": ContextManagerConfig}
"""What the guide imported in an earlier block, for the blocks that use it without importing it."""

INITIALIZATION = """
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.config import ContextManagerConfig

# Create configuration
config = ContextManagerConfig(
    max_tokens=2000,           # Maximum tokens in context
    cache_path="./cache",       # Directory for cache files
    compression_ratio=0.8,     # Target compression ratio
    short_term_memory_size=1000, # Short-term memory capacity
)

# Initialize context manager
context_manager = EnhancedContextManager(config=config)
await context_manager.initialize()
"""

CONFIGURATION_OPTIONS = """
config = ContextManagerConfig(
    # Context settings
    max_tokens=2000,                    # Maximum tokens in context
    compression_ratio=0.8,              # Target compression ratio
    
    # Memory settings
    short_term_memory_size=1000,        # Short-term memory capacity
    medium_term_memory_size=2000,       # Medium-term memory capacity
    long_term_memory_size=5000,         # Long-term memory capacity
    
    # Storage settings
    cache_path="./cache",               # Cache directory
    storage_path="./storage",           # Storage directory
    
    # Performance settings
    enable_compression=True,            # Enable context compression
    enable_memory_index=True,           # Enable memory indexing
    enable_performance_monitor=True,    # Enable performance monitoring
    
    # Tool settings
    max_tool_timeout=30.0,             # Maximum tool execution time
    enable_tool_caching=True,           # Enable tool result caching
    
    # Health check settings
    health_check_interval=60.0,         # Health check interval
    enable_auto_recovery=True           # Enable automatic recovery
)
"""  # noqa: W293 - verbatim, trailing spaces included

CONFIGURATION_OPTIMIZATION = """
# Lightweight configuration for simple applications
lightweight_config = ContextManagerConfig(
    max_tokens=500,
    compression_ratio=0.9,
    short_term_memory_size=500
)

# Balanced configuration for general use
balanced_config = ContextManagerConfig(
    max_tokens=2000,
    compression_ratio=0.8,
    short_term_memory_size=1000,
    medium_term_memory_size=2000
)

# Heavy configuration for complex applications
heavy_config = ContextManagerConfig(
    max_tokens=5000,
    compression_ratio=0.6,
    short_term_memory_size=2000,
    medium_term_memory_size=5000,
    long_term_memory_size=10000
)
"""

IMPORT_ERRORS = """
# Ensure the src directory is in your path
import sys
sys.path.insert(0, "./src")

from context_manager.core.enhanced_context_manager import EnhancedContextManager
"""

DEBUG_MODE = """
import logging
logging.basicConfig(level=logging.DEBUG)

# Or using environment variable
import os
os.environ['PYTHON_CONTEXT_MANAGER_DEBUG'] = '1'
"""

SNIPPETS = {
    "Basic Usage > Initialization": INITIALIZATION,
    "Configuration > Configuration Options": CONFIGURATION_OPTIONS,
    "Performance Optimization > Configuration Optimization": CONFIGURATION_OPTIMIZATION,
    "Troubleshooting > Import Errors": IMPORT_ERRORS,
    "Troubleshooting > Debug Mode": DEBUG_MODE,
}

test_snippets_are_verbatim_copies_of_the_guide = verbatim_test(SNIPPETS)


async def test_initialization_opens_the_store_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = await run_snippet(INITIALIZATION, {})
    manager = namespace["context_manager"]
    try:
        await manager.add_message("user", "Hello!")
        await manager.memory_manager.add_memory("The guide's manager remembers this", importance=0.9)
        assert (tmp_path / "cache" / "storage" / "memories.sqlite3").is_file()
        assert manager.get_context_summary()["max_tokens"] == 2000
    finally:
        await manager.cleanup()
    # what the guide's manager stored is there for the next one opened the same way
    namespace = await run_snippet(INITIALIZATION, {})
    manager = namespace["context_manager"]
    try:
        [found] = await manager.search_memory("what does the manager remember", limit=1)
        assert found.content == "The guide's manager remembers this"
    finally:
        await manager.cleanup()


async def test_configuration_options_put_memory_in_the_storage_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = (await run_snippet(CONFIGURATION_OPTIONS, dict(GUIDE_IMPORTS)))["config"]
    assert config.resolved_storage_path == Path("storage")
    async with EnhancedContextManager(config=config) as manager:
        await manager.memory_manager.add_memory("Stored under ./storage", importance=0.9)
    assert {path.name for path in (tmp_path / "storage").iterdir()} >= {"memories.jsonl", "memories.sqlite3"}
    assert list((tmp_path / "cache").iterdir()) == []  # the cache directory holds no memory


@pytest.mark.parametrize("name", ["lightweight_config", "balanced_config", "heavy_config"])
async def test_each_optimization_configuration_runs_a_manager(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = (await run_snippet(CONFIGURATION_OPTIMIZATION, dict(GUIDE_IMPORTS)))[name]
    async with EnhancedContextManager(config=config) as manager:
        for turn in range(400):  # about 8,000 tokens: every configuration must compress
            await manager.add_message("user", f"Question {turn} about the release of the payments service?")
        assert manager.get_context_summary()["token_count"] <= config.max_tokens
        assert manager.compression_history
        found = await manager.search_memory("Question 3 about the release", limit=1)
        assert found and found[0].content == "Question 3 about the release of the payments service?"
        stats = await manager.memory_manager.get_memory_stats()
        assert stats["capacity"] == {
            "short": config.short_term_memory_size,
            "medium": config.medium_term_memory_size,
            "long": config.long_term_memory_size,
        }


async def test_import_errors_snippet_imports_from_a_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the snippet inserts ./src: undone after the test
    namespace = await run_snippet(IMPORT_ERRORS, {})
    assert sys.path[0] == "./src"
    assert namespace["EnhancedContextManager"] is EnhancedContextManager


async def test_debug_mode_shows_the_librarys_debug_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, package = logging.getLogger(), logging.getLogger("context_manager")
    monkeypatch.setattr(root, "handlers", [])  # basicConfig adds its handler only to a root without one
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(package, "level", package.level)
    monkeypatch.setenv("PYTHON_CONTEXT_MANAGER_DEBUG", "0")  # recorded, so the snippet's value is undone
    monkeypatch.delenv("PYTHON_CONTEXT_MANAGER_DEBUG")
    await run_snippet(DEBUG_MODE, {})
    config = ContextManagerConfig(cache_path=tmp_path, embedder="none")
    assert config.enable_debug and package.getEffectiveLevel() == logging.DEBUG
    async with EnhancedContextManager(config=config) as manager:
        await manager.add_message("user", "Hello")
    logged = capsys.readouterr().err
    assert "DEBUG:context_manager" in logged, logged[-2000:]
