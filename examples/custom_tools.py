"""Custom tools: typed and parameters-dict tools, provider schemas, every failure kind, caching,
approval, and a model's tool calls executed into the context window.

Run alone with ``python examples/custom_tools.py [--verbose]`` or through ``main_example.py tools``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from _common import ExampleContext, example_context, expect

from context_manager import (
    ContextManagerConfig,
    EnhancedContextManager,
    ToolCategory,
    ToolDefinition,
    ToolErrorType,
    ToolManager,
    ToolPermission,
    register_memory_tools,
    tool,
)

RUNS: dict[str, int] = {"exchange_rate": 0}


@tool(name="word_stats", category=ToolCategory.ANALYSIS, tags=["text"])
async def word_stats(text: str, top: int = 3) -> dict[str, Any]:
    """Count the words of a text and list the most frequent ones.

    Args:
        text: The text to analyse.
        top: How many frequent words to list.
    """
    words = [word.strip(".,!?").lower() for word in text.split()]
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    frequent = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {"word_count": len(words), "frequent": [word for word, _ in frequent]}


@tool(
    name="text_analyzer",
    description="Analyze text and provide statistics",
    category=ToolCategory.ANALYSIS,
    tags=["text", "analysis"],
)
async def text_analyzer(parameters: dict[str, Any]) -> dict[str, Any]:
    """The user guide's calling convention: all arguments in one dict."""
    text = parameters.get("text", "")
    return {"word_count": len(text.split()), "character_count": len(text)}


@tool(name="exchange_rate", cacheable=True, cache_ttl=60.0, category=ToolCategory.DATA_PROCESSING)
async def exchange_rate(base: str, quote: str) -> float:
    """Return a (fixed, offline) exchange rate; cacheable because it is pure."""
    RUNS["exchange_rate"] += 1
    rates = {("EUR", "USD"): 1.08, ("USD", "EUR"): 0.93}
    return rates.get((base.upper(), quote.upper()), 1.0)


@tool(name="delete_records", permission=ToolPermission.RESTRICTED, category=ToolCategory.SYSTEM)
async def delete_records(table: str) -> str:
    """Delete every record of a table (restricted: needs approval)."""
    return f"deleted all records of {table}"


@tool(name="send_sms", rate_limit=2, rate_window=60.0)
async def send_sms(to: str, text: str) -> str:
    """Send a text message (at most 2 per minute)."""
    return f"sent {len(text)} characters to {to}"


@tool(name="slow_report", timeout=0.2)
async def slow_report(days: int) -> str:
    """A report that takes far longer than its 0.2 s timeout."""
    await asyncio.Event().wait()  # never set: only the timeout ends this call
    return "unreachable"


@tool(name="flaky_lookup")
async def flaky_lookup(key: str) -> str:
    """A tool whose backend is down."""
    raise ConnectionError(f"inventory backend unreachable while looking up {key!r}")


async def define_and_describe(ctx: ExampleContext, manager: EnhancedContextManager) -> None:
    ctx.section("Defining tools: typed signatures and the parameters-dict convention")
    tools = manager.tool_manager
    for function in (
        word_stats,
        text_analyzer,
        exchange_rate,
        delete_records,
        send_sms,
        slow_report,
        flaky_lookup,
    ):
        tools.register_tool(function)
    expect(len(tools) == 7, f"7 tools registered, got {len(tools)}")

    result = await manager.execute_tool("word_stats", text="the cat and the hat and the bat", top=2)
    expect(result.success and result.result == {"word_count": 8, "frequent": ["the", "and"]}, str(result))
    ctx.ok(f"word_stats (typed, validated by pydantic) -> {result.result}")

    result = await manager.execute_tool("text_analyzer", text="Hello world! This is a test.")
    expect(result.success and result.result["word_count"] == 6, str(result))
    ctx.ok(f"text_analyzer (parameters dict, as in the user guide) -> {result.result}")

    schemas = tools.get_tool_schemas(format="openai")
    word_schema = next(s for s in schemas if s["function"]["name"] == "word_stats")
    expect(word_schema["function"]["parameters"]["required"] == ["text"], "schema generated from the hints")
    ctx.ok(
        f"get_tool_schemas('openai'): {len(schemas)} schemas; word_stats parameters "
        f"{sorted(word_schema['function']['parameters']['properties'])} from its type hints and docstring"
    )
    ctx.detail(json.dumps(word_schema, indent=2))
    anthropic = tools.get_tool_schemas(format="anthropic")
    ctx.ok(f"get_tool_schemas('anthropic'): {len(anthropic)} schemas with input_schema")


async def failure_kinds(ctx: ExampleContext, manager: EnhancedContextManager) -> None:
    ctx.section("Every failure comes back as a ToolResult (execute_tool never raises for tool problems)")
    cases = [
        ("unknown tool", "no_such_tool", {}, ToolErrorType.UNKNOWN_TOOL),
        ("invalid arguments", "word_stats", {"text": "hi", "top": "many"}, ToolErrorType.INVALID_ARGUMENTS),
        ("permission denied", "delete_records", {"table": "orders"}, ToolErrorType.PERMISSION_DENIED),
        ("timeout", "slow_report", {"days": 7}, ToolErrorType.TIMEOUT),
        ("tool error", "flaky_lookup", {"key": "SKU-42"}, ToolErrorType.TOOL_ERROR),
    ]
    rows = []
    for label, name, arguments, expected in cases:
        result = await manager.execute_tool(name, **arguments)
        expect(
            not result.success and result.error_type == expected,
            f"{label}: expected {expected.value}, got {result.error_type} ({result.error})",
        )
        rows.append([label, name, result.error_type.value if result.error_type else "", result.error])

    for _ in range(2):
        sent = await manager.execute_tool("send_sms", to="+351900000000", text="Your order shipped")
        expect(sent.success, f"the first two SMS are within the rate limit: {sent.error}")
    limited = await manager.execute_tool("send_sms", to="+351900000000", text="And another one")
    expect(
        limited.error_type == ToolErrorType.RATE_LIMITED and limited.retry_after is not None,
        f"the third SMS within a minute is rate limited: {limited}",
    )
    rows.insert(
        3,
        [
            "rate limited",
            "send_sms",
            limited.error_type.value if limited.error_type else "",
            f"{limited.error} (retry_after={limited.retry_after:.1f} s)",
        ],
    )
    ctx.console.print(ctx.table("failed ToolResults", ["kind", "tool", "error_type", "error"], rows))
    ctx.ok(
        "six failure kinds: unknown_tool, invalid_arguments, permission_denied, rate_limited, "
        "timeout, tool_error"
    )
    ctx.info(f"what a model sees in the window: {limited.to_content()!r}")


async def caching_and_approval(ctx: ExampleContext, manager: EnhancedContextManager) -> None:
    ctx.section("Caching of pure tools, and human-in-the-loop approval")
    first = await manager.execute_tool("exchange_rate", base="EUR", quote="USD")
    second = await manager.execute_tool("exchange_rate", base="EUR", quote="USD")
    expect(first.success and not first.cached and second.cached, "the second identical call is a cache hit")
    expect(RUNS["exchange_rate"] == 1, f"the tool ran once, not {RUNS['exchange_rate']} times")
    ctx.ok(
        f"exchange_rate EUR->USD = {second.result}; second call cached={second.cached}; the tool ran "
        f"{RUNS['exchange_rate']} time"
    )

    approvals: list[str] = []

    async def approve_staging_only(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        approvals.append(f"{definition.name}({arguments})")
        return bool(arguments.get("table", "").startswith("staging_"))

    approving = ToolManager(ContextManagerConfig(), approval_callback=approve_staging_only)
    approving.register_tool(delete_records)
    allowed = await approving.execute("delete_records", table="staging_orders")
    refused = await approving.execute("delete_records", table="orders")
    expect(
        allowed.success and refused.error_type == ToolErrorType.PERMISSION_DENIED,
        "the callback approves staging tables only",
    )
    ctx.ok(
        f"approval callback asked {len(approvals)} times: staging_orders -> ran; orders -> "
        f"{refused.error_type.value if refused.error_type else ''}"
    )


async def model_tool_calls(ctx: ExampleContext, manager: EnhancedContextManager) -> None:
    ctx.section("A model's tool calls, executed and paired into the context window")
    register_memory_tools(manager.tool_manager, manager.memory_manager)
    await manager.add_message(
        "user", "Compare 'to be or not to be' and look up SKU-7; remember my EUR preference."
    )
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "word_stats", "arguments": json.dumps({"text": "to be or not to be"})},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "flaky_lookup", "arguments": json.dumps({"key": "SKU-7"})},
        },
        {
            "id": "call_3",
            "type": "function",
            "function": {
                "name": "memory_add",
                "arguments": json.dumps({"content": "The user prefers prices in EUR", "importance": 0.8}),
            },
        },
    ]
    results = await manager.execute_tool_calls(calls)
    expect([r.call_id for r in results] == ["call_1", "call_2", "call_3"], "results come back in call order")
    expect(results[0].success and not results[1].success and results[2].success, str(results))
    context = manager.get_context(format="openai")
    assert isinstance(context, list)
    tool_messages = [m for m in context if m["role"] == "tool"]
    expect(
        [m["tool_call_id"] for m in tool_messages] == ["call_1", "call_2", "call_3"],
        "one paired tool message per call",
    )
    ctx.console.print(
        ctx.table(
            "tool messages in get_context('openai')",
            ["tool_call_id", "content"],
            [[m["tool_call_id"], m["content"]] for m in tool_messages],
        )
    )
    remembered = await manager.search_memory("which currency does the user prefer", limit=1)
    expect(bool(remembered) and "EUR" in remembered[0].content, "memory_add stored the preference")
    ctx.ok(
        "3 calls -> assistant message + 3 paired tool messages (one failed, reported to the model); "
        f"memory_add stored {remembered[0].content!r}"
    )

    stats = manager.tool_manager.get_tool_stats()
    rows = [
        [
            name,
            s["calls"],
            s["successes"],
            s["failures"],
            s["cache_hits"],
            f"{(s['average_time'] or 0.0) * 1000:.2f}",
        ]
        for name, s in sorted(stats["tools"].items())
    ]
    ctx.console.print(
        ctx.table("get_tool_stats()", ["tool", "calls", "ok", "failed", "cache hits", "avg ms"], rows)
    )
    ctx.ok(f"{stats['total_calls']} calls in total, {stats['unknown_tool_calls']} to unknown tools")


async def run(ctx: ExampleContext) -> None:
    """Run every tool example."""
    RUNS["exchange_rate"] = 0
    config = ContextManagerConfig(cache_path=ctx.storage("tools"), max_tokens=4000)
    async with EnhancedContextManager(config=config) as manager:
        await define_and_describe(ctx, manager)
        await failure_kinds(ctx, manager)
        await caching_and_approval(ctx, manager)
        await model_tool_calls(ctx, manager)


if __name__ == "__main__":
    with example_context(verbose="--verbose" in sys.argv[1:]) as context:
        asyncio.run(run(context))
