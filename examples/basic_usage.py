"""Basic usage: messages, token counts, provider-ready context, memory that survives a restart.

Run alone with ``python examples/basic_usage.py [--verbose]`` or through ``main_example.py basic``.
"""

from __future__ import annotations

import asyncio
import sys

from _common import ExampleContext, ExampleFailure, example_context, expect

from context_manager import (
    ContextManagerConfig,
    EnhancedContextManager,
    InvalidPriorityError,
    count_tokens,
)


async def quick_start(ctx: ExampleContext) -> None:
    ctx.section("Quick start: a context window with exact token counts")
    config = ContextManagerConfig(max_tokens=1000, compression_ratio=0.8, cache_path=ctx.storage("quick"))
    async with EnhancedContextManager(config=config) as manager:
        await manager.add_message("system", "You are a concise assistant for a bicycle shop.")
        await manager.add_message("user", "Hello! Do you repair carbon frames?")
        await manager.add_message("assistant", "Yes, we repair carbon frames; a quote takes two days.")
        await manager.add_message(
            "user", "What does a quote cost?", priority="high", metadata={"category": "pricing"}
        )
        summary = manager.get_context_summary()
        ctx.console.print(
            ctx.table(
                "get_context_summary()",
                ["message_count", "token_count", "max_tokens", "utilization", "encoding"],
                [
                    [
                        summary["message_count"],
                        summary["token_count"],
                        summary["max_tokens"],
                        f"{summary['utilization']:.1%}",
                        summary["token_encoding"],
                    ]
                ],
            )
        )
        expect(summary["message_count"] == 4, f"expected 4 messages, got {summary['message_count']}")
        expect(0 < summary["token_count"] <= 1000, "token count must be within the budget")
        ctx.ok(f"4 messages, {summary['token_count']} tokens counted exactly (chat-format overhead included)")

        text = "Hello! Do you repair carbon frames?"
        ctx.info(
            f"count_tokens({text!r}) = {count_tokens(text)} (o200k_base), "
            f"{count_tokens(text, 'cl100k_base')} (cl100k_base)"
        )

        openai_messages = manager.get_context(format="openai")
        anthropic_request = manager.get_context(format="anthropic")
        expect(
            isinstance(openai_messages, list) and openai_messages[0]["role"] == "system",
            "OpenAI export keeps the system message first",
        )
        expect(
            isinstance(anthropic_request, dict) and "system" in anthropic_request,
            "Anthropic export moves system text to the 'system' field",
        )
        ctx.ok(
            f"get_context('openai') -> {len(openai_messages)} chat messages; "
            f"get_context('anthropic') -> system + {len(anthropic_request['messages'])} messages"
        )
        ctx.detail(openai_messages)
        ctx.detail(anthropic_request)


async def validation(ctx: ExampleContext) -> None:
    ctx.section("Bad input raises a clear error and changes nothing")
    config = ContextManagerConfig(cache_path=ctx.storage("validation"))
    async with EnhancedContextManager(config=config) as manager:
        await manager.add_message("user", "First message")
        before = manager.get_context_summary()["message_count"]
        try:
            await manager.add_message("user", "Second message", priority="urgent")
        except InvalidPriorityError as error:
            ctx.ok(f"InvalidPriorityError: {error}")
        else:
            raise ExampleFailure("priority='urgent' was accepted")
        after = manager.get_context_summary()["message_count"]
        expect(before == after == 1, "a rejected call must leave the window unchanged")
        ctx.ok("the window still holds 1 message")


async def memory_survives_restart(ctx: ExampleContext) -> None:
    ctx.section("Memory: importance, tags, search, and a restart on the same storage")
    storage = ctx.storage("memory")
    config = ContextManagerConfig(cache_path=storage)

    manager = EnhancedContextManager(config=config)
    await manager.initialize()
    try:
        await manager.memory_manager.add_memory(
            content="Python context managers use __enter__ and __exit__",
            importance=0.9,
            tags=["python", "programming", "important"],
        )
        await manager.memory_manager.add_memory(
            content="Casual conversation about the weather in Lisbon", importance=0.3, tags=["casual"]
        )
        await manager.memory_manager.add_memory(
            content="The customer prefers delivery on Saturdays", importance=0.6, tags=["customer"]
        )
        results = await manager.search_memory("python context manager", limit=5)
        expect(
            bool(results) and "__enter__" in results[0].content, "search must rank the Python memory first"
        )
        ctx.console.print(
            ctx.table(
                "search_memory('python context manager')",
                ["score", "tier", "importance", "content"],
                [[m.score, m.tier.value, m.importance, m.content] for m in results],
            )
        )
        tagged = await manager.memory_manager.search_by_tags(["important"])
        expect(len(tagged) == 1, f"one memory is tagged 'important', got {len(tagged)}")
        ctx.ok("search_by_tags(['important']) -> 1 memory")
    finally:
        await manager.cleanup()
    ctx.info("closed the manager; opening a new one on the same storage ...")

    async with EnhancedContextManager(config=ContextManagerConfig(cache_path=storage)) as reopened:
        results = await reopened.search_memory("which day does the customer want delivery", limit=3)
        expect(
            bool(results) and "Saturdays" in results[0].content,
            "memories must survive closing and reopening the manager",
        )
        stats = await reopened.memory_manager.get_memory_stats()
        ctx.ok(
            f"after the restart: {stats['total_memories']} memories, {stats['stored_copies']} stored "
            f"copies by tier {stats['by_tier']} (an important memory stays short-term with a durable "
            f"long-term copy: {stats['in_two_tiers']} in two tiers); best match: {results[0].content!r}"
        )
        ctx.detail(stats)


async def run(ctx: ExampleContext) -> None:
    """Run every basic example."""
    await quick_start(ctx)
    await validation(ctx)
    await memory_survives_restart(ctx)


if __name__ == "__main__":
    with example_context(verbose="--verbose" in sys.argv[1:]) as context:
        asyncio.run(run(context))
