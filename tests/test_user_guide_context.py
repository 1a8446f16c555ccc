"""The user guide's context snippets, run as written.

Each snippet is copied verbatim from USER_GUIDE.md: Quick Start (a whole program), Core Concepts >
Context Management, Basic Usage > Message Operations, Advanced Features > Context Compression and
Troubleshooting > Error Handling. The fragments run with top-level ``await`` in a namespace holding what
the guide's surrounding text provides: an initialized ``context_manager`` (built as in Basic Usage >
Initialization, or with the guide's "lightweight" configuration where compression must happen) and
``ContextManagerError``.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerError
from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, get_token_counter

QUICK_START = """
import asyncio
import tempfile
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.config import ContextManagerConfig

async def main():
    # Create configuration
    config = ContextManagerConfig(
        max_tokens=1000,
        compression_ratio=0.8
    )
    
    # Create context manager
    with tempfile.TemporaryDirectory() as temp_dir:
        config.cache_path = temp_dir
        context_manager = EnhancedContextManager(config=config)
        await context_manager.initialize()
        
        try:
            # Add messages
            await context_manager.add_message("user", "Hello, world!")
            await context_manager.add_message("assistant", "Hello! How can I help you?")
            
            # Get context summary
            summary = context_manager.get_context_summary()
            print(f"Messages: {summary['message_count']}")
            print(f"Tokens: {summary['token_count']}")
            
        finally:
            await context_manager.cleanup()

if __name__ == "__main__":
    asyncio.run(main())
"""  # noqa: W293 - verbatim, trailing spaces included

CONTEXT_MANAGEMENT = """
# Add messages with priorities
await context_manager.add_message("user", "Important question", priority="high")
await context_manager.add_message("user", "Casual comment", priority="low")

# Context automatically compresses when token limit is reached
"""

MESSAGE_OPERATIONS = """
# Add messages
await context_manager.add_message("user", "Hello!")
await context_manager.add_message("assistant", "Hi there!")

# Add messages with metadata
await context_manager.add_message(
    "user", 
    "Important question",
    priority="high",
    metadata={"category": "technical"}
)

# Get context summary
summary = context_manager.get_context_summary()
print(f"Messages: {summary['message_count']}")
print(f"Tokens: {summary['token_count']}")
print(f"Utilization: {summary['utilization']:.2%}")
"""  # noqa: W291 - verbatim, trailing space included

CONTEXT_COMPRESSION = """
# Add many messages to trigger compression
for i in range(50):
    await context_manager.add_message("user", f"Long message {i}")
    await context_manager.add_message("assistant", f"Long response {i}")

# Check compression history
if context_manager.compression_history:
    latest = context_manager.compression_history[-1]
    print(f"Compressed {latest['tokens_before']} -> {latest['tokens_after']} tokens")
"""

ERROR_HANDLING = """
try:
    await context_manager.add_message("user", "Hello")
except ContextManagerError as e:
    print(f"Context manager error: {e}")
except Exception as e:
    print(f"Unexpected error: {e}")
"""


async def run_snippet(source: str, namespace: dict[str, Any]) -> None:
    code = compile(source, "<user guide>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, namespace)  # noqa: S307 - the guide's own code
    if outcome is not None:
        await outcome


def expected_tokens(manager: EnhancedContextManager) -> int:
    counter = get_token_counter()
    return sum(counter.count_message(m) for m in manager.messages) + REPLY_PRIMING_TOKENS


@pytest.fixture
async def guide_manager(tmp_path: Path) -> AsyncIterator[EnhancedContextManager]:
    # Basic Usage > Initialization
    config = ContextManagerConfig(
        max_tokens=2000,
        cache_path=tmp_path / "cache",
        compression_ratio=0.8,
        short_term_memory_size=1000,
    )
    manager = EnhancedContextManager(config=config)
    await manager.initialize()
    yield manager
    await manager.cleanup()


def test_quick_start_runs_as_a_program(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(QUICK_START, "<quick start>", "exec"), {"__name__": "__main__"})  # noqa: S102
    lines = capsys.readouterr().out.splitlines()
    counter = get_token_counter()
    from context_manager.core.messages import Message

    tokens = (
        counter.count_message(Message.create("user", "Hello, world!"))
        + counter.count_message(Message.create("assistant", "Hello! How can I help you?"))
        + REPLY_PRIMING_TOKENS
    )
    assert lines == ["Messages: 2", f"Tokens: {tokens}"]


async def test_context_management(guide_manager: EnhancedContextManager) -> None:
    await run_snippet(CONTEXT_MANAGEMENT, {"context_manager": guide_manager})
    assert [m.priority.value for m in guide_manager.messages] == ["high", "low"]


async def test_message_operations(
    guide_manager: EnhancedContextManager, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_snippet(MESSAGE_OPERATIONS, {"context_manager": guide_manager})
    tokens = expected_tokens(guide_manager)
    assert capsys.readouterr().out.splitlines() == [
        "Messages: 3",
        f"Tokens: {tokens}",
        f"Utilization: {tokens / 2000:.2%}",
    ]
    assert guide_manager.messages[2].metadata == {"category": "technical"}


async def test_context_compression_with_the_guides_lightweight_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Performance Optimization > Configuration Optimization: the lightweight configuration.
    lightweight_config = ContextManagerConfig(
        max_tokens=500,
        compression_ratio=0.9,
        short_term_memory_size=500,
    )
    lightweight_config.cache_path = tmp_path / "cache"
    async with EnhancedContextManager(config=lightweight_config) as manager:
        await run_snippet(CONTEXT_COMPRESSION, {"context_manager": manager})
        history = manager.compression_history
        assert history
        latest = history[-1]
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"Compressed {latest['tokens_before']} -> {latest['tokens_after']} tokens"
        )
        assert latest["tokens_before"] > 500 >= 450 >= latest["tokens_after"]
        assert manager.get_context_summary()["token_count"] <= 500
        assert manager.messages[-1].content == "Long response 49"


async def test_context_compression_with_basic_config_fits_without_compressing(
    guide_manager: EnhancedContextManager, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_snippet(CONTEXT_COMPRESSION, {"context_manager": guide_manager})
    # 100 short messages fit in 2000 tokens: nothing to compress, nothing printed.
    assert guide_manager.compression_history == []
    assert capsys.readouterr().out == ""
    assert guide_manager.get_context_summary()["message_count"] == 100


async def test_error_handling(
    guide_manager: EnhancedContextManager, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_snippet(
        ERROR_HANDLING, {"context_manager": guide_manager, "ContextManagerError": ContextManagerError}
    )
    assert capsys.readouterr().out == ""
    await guide_manager.cleanup()
    await run_snippet(
        ERROR_HANDLING, {"context_manager": guide_manager, "ContextManagerError": ContextManagerError}
    )
    assert capsys.readouterr().out.startswith(
        "Context manager error: add_message: the context manager was cleaned up"
    )
