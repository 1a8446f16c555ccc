"""Advanced features: compression with its history, recall of evicted context, budgets, a custom
summarizer with its fallback, consolidation, cleanup and export/import of memory.

Run alone with ``python examples/advanced_features.py [--verbose]`` or through ``main_example.py advanced``.
"""

from __future__ import annotations

import asyncio
import sys

from _common import ExampleContext, example_context, expect

from context_manager import ContextManagerConfig, EnhancedContextManager, SummarizerError
from context_manager.testing import ScriptedSummarizer

FACT = "The deploy window for project Aurora is Thursday 14:00 UTC, approved by Dana."


async def compression_and_recall(ctx: ExampleContext) -> None:
    ctx.section("Compression: the window never overflows, and nothing is silently lost")
    config = ContextManagerConfig(max_tokens=300, compression_ratio=0.8, cache_path=ctx.storage("compress"))
    async with EnhancedContextManager(config=config) as manager:
        await manager.add_message("system", "You are the release assistant of the platform team.")
        await manager.add_message("user", "Remember: answers must cite the ticket number.", pinned=True)
        await manager.add_message("user", FACT)
        for turn in range(25):
            await manager.add_message("user", f"Status of build {turn} for the payments service, please?")
            await manager.add_message("assistant", f"Build {turn} passed all {40 + turn} integration tests.")
            summary = manager.get_context_summary()
            expect(summary["token_count"] <= config.max_tokens, "the window went over max_tokens")

        history = manager.compression_history
        expect(len(history) > 0, "50 messages in a 300-token window must have compressed")
        rows = [
            [
                i + 1,
                r["tokens_before"],
                r["tokens_after"],
                r["messages_before"],
                r["messages_after"],
                r["removed_count"],
                r["summary_tokens"],
                f"{r['duration_ms']:.2f}",
                r["strategy"],
            ]
            for i, r in enumerate(history)
        ]
        shown = (
            rows
            if ctx.verbose
            else rows[:3] + ([["...", "", "", "", "", "", "", "", ""]] if len(rows) > 4 else []) + rows[-1:]
        )
        ctx.console.print(
            ctx.table(
                "compression_history",
                [
                    "#",
                    "tokens before",
                    "after",
                    "msgs before",
                    "after",
                    "removed",
                    "summary tok",
                    "ms",
                    "strategy",
                ],
                shown,
            )
        )
        summary = manager.get_context_summary()
        ctx.ok(
            f"{len(history)} compressions; the window holds {summary['message_count']} messages, "
            f"{summary['token_count']}/{summary['max_tokens']} tokens (target {summary['target_tokens']} "
            "after each compression)"
        )

        contents = [message.content for message in manager.messages]
        expect(contents[0].startswith("You are the release assistant"), "the system message is never evicted")
        expect(
            any("cite the ticket number" in text for text in contents), "pinned messages are never evicted"
        )
        expect(all(text != FACT for text in contents), "the early fact should have been evicted by now")
        ctx.ok(
            "the system message and the pinned instruction are still in the window; the Aurora fact is not"
        )
        if manager.context_window.summary is not None:
            ctx.detail(f"rolling summary: {manager.context_window.summary.content}")

        ctx.section("Recall: search_memory finds what compression evicted")
        found = await manager.search_memory("When is the Aurora deploy window?", limit=3)
        expect(bool(found) and found[0].content == FACT, "the evicted fact must be the best match")
        ctx.console.print(
            ctx.table(
                "search_memory('When is the Aurora deploy window?')",
                ["score", "source", "tier", "content"],
                [[m.score, m.source, m.tier.value, m.content] for m in found],
            )
        )
        ctx.ok(
            f"evicted message recalled from {found[0].tier.value}-term memory (source={found[0].source!r})"
        )

        ctx.section("Budgets: get_context(budget=...) exports less without touching the window")
        before = manager.get_context_summary()["message_count"]
        small = manager.get_context(format="openai", budget=120)
        expect(isinstance(small, list) and len(small) < before, "a smaller budget exports fewer messages")
        expect(manager.get_context_summary()["message_count"] == before, "the window is unchanged")
        ctx.ok(f"budget=120 -> {len(small)} messages exported; the window still has {before}")


async def custom_summarizer(ctx: ExampleContext) -> None:
    ctx.section("A custom (e.g. LLM) summarizer, and the fallback when it fails")
    scripted = ScriptedSummarizer(["The user asked about build statuses; all builds passed."])
    config = ContextManagerConfig(max_tokens=200, cache_path=ctx.storage("summarizer"))
    async with EnhancedContextManager(config=config, summarizer=scripted) as manager:
        for turn in range(25):
            await manager.add_message("user", f"How is build {turn} doing on the staging cluster?")
        history = manager.compression_history
        expect(
            bool(history) and history[0]["strategy"] == "custom", "the custom summarizer writes the summary"
        )
        expect(len(scripted.calls) >= 1, "the summarizer was called")
        ctx.ok(
            f"custom summarizer called {len(scripted.calls)} time(s); strategy={history[0]['strategy']!r}; "
            f"budget given: {scripted.calls[0].budget_tokens} tokens"
        )

    failing = ScriptedSummarizer(fail_with=SummarizerError("model endpoint returned 503"))
    config = ContextManagerConfig(max_tokens=200, cache_path=ctx.storage("summarizer-failing"))
    ctx.info("now a summarizer that always fails (a model endpoint answering 503), on purpose:")
    with ctx.expected_logs("the summarizer fails on purpose") as logged:
        async with EnhancedContextManager(config=config, summarizer=failing) as manager:
            for turn in range(25):
                await manager.add_message("user", f"How is build {turn} doing on the staging cluster?")
            history = manager.compression_history
    record = history[0]
    expect(record["strategy"] == "custom_failed_fallback_extractive", "a failing summarizer falls back")
    expect(bool(logged), "the library logs the summarizer's failures")
    ctx.ok(
        f"{len(history)} compressions still worked: strategy={record['strategy']!r}, "
        f"error={record['error']!r}"
    )


async def memory_maintenance(ctx: ExampleContext) -> None:
    ctx.section("Memory maintenance: consolidation, cleanup, export and import")
    config = ContextManagerConfig(cache_path=ctx.storage("maintenance"))
    async with EnhancedContextManager(config=config) as manager:
        memory = manager.memory_manager
        await memory.add_memory(
            "The office wifi password changes every Monday", importance=0.4, tags=["office"]
        )
        await memory.add_memory(
            "The office wifi password changes every Monday morning", importance=0.7, tags=["it"]
        )
        await memory.add_memory("Lunch is served at noon in the cafeteria", importance=0.2, tags=["office"])
        result = await memory.consolidate_memories(similarity_threshold=0.8)
        expect(
            result["consolidated_count"] == 2,
            f"two near-duplicates merge, got {result['consolidated_count']}",
        )
        # with an embedder (MiniLM is the default once the embeddings extra is installed) the lunch memory
        # is a weak match too: count the wifi memories, not the results
        found = await manager.search_memory("wifi password", limit=5)
        merged = [item for item in found if "wifi" in item.content]
        expect(
            len(merged) == 1 and set(merged[0].tags) == {"office", "it"},
            "one merged memory with the union of tags",
        )
        ctx.ok(
            f"consolidate_memories(): merged {result['consolidated_count']} memories into 1 "
            f"(importance {merged[0].importance}, tags {sorted(merged[0].tags)}, "
            f"merged_from {len(merged[0].merged_from)} ids)"
        )

        export_path = ctx.workdir / "memories.jsonl"
        exported = await memory.export_memories(export_path)
        ctx.ok(f"export_memories() wrote {exported} memories (superseded originals included) to a JSONL file")

        cleanup = await memory.cleanup_old_memories(max_age_days=30)
        ctx.ok(
            f"cleanup_old_memories(max_age_days=30): removed {cleanup['removed_count']} "
            f"(superseded originals: {cleanup['superseded_removed']})"
        )
        expect(cleanup["superseded_removed"] == 2, "the two superseded originals are removed by cleanup")

    async with EnhancedContextManager(
        config=ContextManagerConfig(cache_path=ctx.storage("imported"))
    ) as other:
        report = await other.memory_manager.import_memories(export_path)
        expect(report["imported"] == exported, "every exported memory is imported")
        found = await other.search_memory("when is lunch", limit=1)
        expect(bool(found) and "noon" in found[0].content, "imported memories are searchable")
        ctx.ok(
            f"import_memories() into a fresh store: {report['imported']} imported, "
            f"{sum(report['by_tier'].values())} stored copies by tier {report['by_tier']} (each memory "
            "back in every tier it had: an important one short-term with its long-term copy)"
        )


async def run(ctx: ExampleContext) -> None:
    """Run every advanced example."""
    await compression_and_recall(ctx)
    await custom_summarizer(ctx)
    await memory_maintenance(ctx)


if __name__ == "__main__":
    with example_context(verbose="--verbose" in sys.argv[1:]) as context:
        asyncio.run(run(context))
