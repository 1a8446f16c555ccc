"""The tool definitions of an Anthropic export count in its budget (``get_context(..., tools=...)``).

The exported request is measured from the outside: its messages read back (``add_messages``) into a fresh
manager of a window large enough, which counts them as the window counts messages, plus each tool
definition's JSON counted with the same tokenizer. It must fit the budget given, or the window's
``max_tokens`` without one, and keep every tool result after its call; the stored window is not changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import ContextBudgetError
from context_manager.core.messages import Message
from context_manager.core.provider_formats import ANTHROPIC_CONTINUATION_TEXT
from context_manager.core.tokens import get_token_counter
from tests.provider_rules import anthropic_violations

COUNTER = get_token_counter()
MAX_TOKENS = 2000
FILLER = [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]
FILLER_TOKENS = COUNTER.count_message(Message.create("user", ANTHROPIC_CONTINUATION_TEXT))


def config(path: Path, max_tokens: int = MAX_TOKENS) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=path, embedder="none", max_tokens=max_tokens)


def tool_tokens(tools: list[dict[str, Any]]) -> int:
    return sum(COUNTER.count(json.dumps(tool, ensure_ascii=False, separators=(",", ":"))) for tool in tools)


async def request_tokens(body: dict[str, Any], path: Path) -> int:
    """What the request costs: its messages as a window counts them, plus its tools' definitions."""
    items: list[Any] = []
    if "system" in body:
        items.append({"role": "system", "content": body["system"]})
    items.extend(body["messages"])
    async with EnhancedContextManager(config(path, 10**7)) as reader:
        await reader.add_messages(items)
        messages = int(reader.get_context_summary()["token_count"])
    # the user turns the export inserts (before an assistant turn that would come first ...) are not read back
    fillers = sum(1 for turn in body["messages"] if turn["content"] == FILLER)
    return messages + tool_tokens(body.get("tools", [])) + FILLER_TOKENS * fillers


def tool(index: int, words: int) -> dict[str, Any]:
    return {
        "name": f"tool_{index}",
        "description": " ".join(f"word{n}" for n in range(words)),
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }


async def fill(manager: EnhancedContextManager, turns: int) -> None:
    await manager.add_message("system", "You are a weather assistant.")
    for turn in range(turns):
        await manager.add_message("user", f"Question {turn}: what is the weather in city number {turn}?")
        await manager.add_message("assistant", f"Answer {turn}: sunny, {turn} degrees, light wind.")
    await manager.add_message("user", "And the newest question: Lisbon?")


async def test_thirty_tools_beside_a_full_window_fit_max_tokens(tmp_path: Path) -> None:
    async with EnhancedContextManager(config(tmp_path / "a")) as manager:
        for index in range(30):

            async def lookup(city: str) -> str:
                return city

            manager.tool_manager.register_function_tool(
                f"lookup_{index}", lookup, f"Look up fact number {index} about a city, its people and history"
            )
        schemas = manager.tool_manager.get_tool_schemas("anthropic")
        await fill(manager, 40)
        before = manager.get_context(format="openai")
        assert manager.get_context_summary()["token_count"] > MAX_TOKENS - tool_tokens(schemas)

        body = manager.get_context(format="anthropic", tools=schemas)

        assert body["tools"] == schemas
        assert await request_tokens(body, tmp_path / "b") <= MAX_TOKENS  # was 2 900+ before
        assert anthropic_violations(body) == []
        assert body["system"] == "You are a weather assistant."
        assert body["messages"][-1]["content"][-1]["text"] == "And the newest question: Lisbon?"
        assert manager.get_context(format="openai") == before  # the window keeps every message


async def test_a_budget_holds_the_tools_too_and_tools_alone_too_large_are_refused(tmp_path: Path) -> None:
    async with EnhancedContextManager(config(tmp_path / "a")) as manager:
        await fill(manager, 10)
        tools = [tool(n, 20) for n in range(5)]
        body = manager.get_context(format="anthropic", budget=500, tools=tools)
        assert await request_tokens(body, tmp_path / "b") <= 500
        alone = manager.get_context(format="anthropic", budget=500 - tool_tokens(tools))
        assert body == {"tools": tools, **alone}
        # a window that fits beside them is sent whole
        assert (
            manager.get_context(format="anthropic", budget=10**6, tools=tools)["messages"]
            == (manager.get_context(format="anthropic")["messages"])
        )
        too_small = r"^budget: got 100; .*the 5 tools' definitions take"
        with pytest.raises(ContextBudgetError, match=too_small) as error:
            manager.get_context(format="anthropic", budget=100, tools=tools)
        assert error.value.required_tokens > 100
        assert error.value.max_tokens == 100


turn_spec = st.tuples(
    st.sampled_from(["user", "assistant", "call", "pinned"]), st.integers(1, 60), st.integers(1, 4)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    turns=st.lists(turn_spec, min_size=1, max_size=25),
    tool_words=st.one_of(st.none(), st.lists(st.integers(0, 80), max_size=30)),
    budget=st.one_of(st.none(), st.integers(150, 2500)),
)
def test_the_export_with_tools_never_exceeds_the_budget(
    tmp_path_factory: pytest.TempPathFactory,
    turns: list[tuple[str, int, int]],
    tool_words: list[int] | None,
    budget: int | None,
) -> None:
    """``tools=None`` with a budget too: the user turns the export inserts count in it."""
    import asyncio

    async def run() -> None:
        path = tmp_path_factory.mktemp("window")
        async with EnhancedContextManager(config(path / "a")) as manager:
            await manager.add_message("system", "Be brief.")
            for position, (kind, size, calls) in enumerate(turns):
                text = " ".join(f"w{position}x{n}" for n in range(size))
                if kind == "call":
                    ids = [f"call_{position}_{n}" for n in range(calls)]
                    await manager.add_messages(
                        [
                            {
                                "role": "assistant",
                                "content": text,
                                "tool_calls": [
                                    {
                                        "id": call_id,
                                        "type": "function",
                                        "function": {"name": "lookup", "arguments": '{"city": "Paris"}'},
                                    }
                                    for call_id in ids
                                ],
                            },
                            *({"role": "tool", "tool_call_id": call_id, "content": text} for call_id in ids),
                        ]
                    )
                elif kind == "pinned":
                    await manager.add_message("user", text[:200], pinned=True)
                else:
                    await manager.add_message(kind, text)
            tools = None if tool_words is None else [tool(n, words) for n, words in enumerate(tool_words)]
            asked = 400 if tools is None and budget is None else budget
            before = manager.get_context(format="openai")
            limit = MAX_TOKENS if asked is None else asked
            try:
                body = manager.get_context(format="anthropic", budget=asked, tools=tools)
            except ContextBudgetError as error:
                assert error.max_tokens == limit
                assert error.required_tokens > limit
            else:
                assert await request_tokens(body, path / "b") <= limit
                assert anthropic_violations(body) == []  # every tool_result after its tool_use
            assert manager.get_context(format="openai") == before

    asyncio.run(run())


async def test_a_budgeted_anthropic_export_counts_the_user_turn_it_inserts(tmp_path: Path) -> None:
    """A budget leaving out the oldest user message left an assistant message first: the export put a user
    turn of ``(continuing the conversation)`` before it, which the budget did not count (67: 72 tokens)."""
    async with EnhancedContextManager(config(tmp_path / "a")) as manager:
        for turn in range(10):
            await manager.add_message("user", f"Question {turn}: what is the weather in city number {turn}?")
            await manager.add_message("assistant", f"Answer {turn}: sunny, {turn} degrees, light wind.")
        await manager.add_message("user", "Lisbon?")
        for budget in (67, 90, 150, 250):
            body = manager.get_context(format="anthropic", budget=budget)
            assert await request_tokens(body, tmp_path / str(budget)) <= budget
            assert anthropic_violations(body) == []
