"""Property-based: an export added back with ``add_messages`` exports again the same bytes.

A saved ``get_context(format="openai")`` list, or a saved ``get_context(format="anthropic")`` body (its
``system`` text added back as a system message), goes back into a new manager through ``add_messages``;
exported again it must be the same JSON, byte for byte: names (valid and made valid), empty and blank
content, tool calls (ids and names the providers refuse, ids longer than OpenAI's 40 characters, calls
answered in any order or not yet), failed results (``is_error``), Anthropic thinking, a reasoning server's
``reasoning_content``, user messages whose text is the Anthropic export's filler.

One difference is by design (see ``docs/concepts.md``): two messages of one role in a row are one Anthropic
turn, which comes back as one message, so that turn's text blocks come back joined by a line break as one
block (the calls after it). The Anthropic round trip is checked byte for byte when no turn holds more than
one text block, and otherwise with each turn's text blocks joined.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.provider_formats import ANTHROPIC_CONTINUATION_TEXT

TEXTS = ["Hi", " ", "two words ", "line\n", "é 😀 日本語", ANTHROPIC_CONTINUATION_TEXT]
NAMES = [None, "alice", "bob smith!"]
FUNCTIONS = ["weather", "functions.Bash:0"]
CALL_IDS = ["call_{n}", "toolu:{n}", "call_{n}_" + "x" * 40]
THINKING = [
    {"type": "thinking", "thinking": "Two lookups.", "signature": "EqQBsig1=="},
    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
]

step = st.tuples(
    st.sampled_from(["system", "user", "user", "assistant", "assistant", "calls", "result", "result"]),
    st.integers(min_value=0, max_value=len(TEXTS) - 1),
    st.integers(min_value=0, max_value=len(NAMES) - 1),
    st.integers(min_value=0, max_value=5),  # calls made, the call answered, thinking, reasoning ...
)


def history(steps: list[tuple[str, int, int, int]]) -> list[dict[str, Any]]:
    """``add_messages`` dicts of a conversation: calls get results later, in any order, or never."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    numbers = itertools.count()
    for kind, text_at, name_at, choice in steps:
        text, name = TEXTS[text_at], NAMES[name_at]
        if kind == "system":
            messages.append({"role": "system", "content": text})
        elif kind == "user":
            messages.append({"role": "user", "content": text, **({"name": name} if name else {})})
        elif kind == "result":
            if pending:
                call_id = pending.pop(choice % len(pending))
                result: dict[str, Any] = {"role": "tool", "tool_call_id": call_id, "content": text.strip()}
                if choice == 5:
                    result["metadata"] = {"is_error": True}
                messages.append(result)
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if kind == "calls":
                calls = []
                for index in range(1 + choice % 2):
                    call_id = CALL_IDS[(choice + index) % len(CALL_IDS)].format(n=next(numbers))
                    function = {"name": FUNCTIONS[choice % 2], "arguments": json.dumps({"city": text})}
                    calls.append({"id": call_id, "type": "function", "function": function})
                    pending.append(call_id)
                message["tool_calls"] = calls
                if choice >= 4:
                    message["content"] = None  # as Chat Completions sends an assistant of calls alone
            if choice in (2, 3):
                message["thinking"] = [THINKING[choice % 2]]
            if choice in (1, 4):
                message["reasoning_content"] = f"Reasoning {text}"
            if name and kind == "assistant":
                message["name"] = name
            messages.append(message)
    return messages


def texts_joined(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each turn's text blocks joined (by a line break) into one, before its other blocks."""
    turns = []
    for turn in body["messages"]:
        texts = [block["text"] for block in turn["content"] if block["type"] == "text"]
        others = [block for block in turn["content"] if block["type"] != "text"]
        thinking = [block for block in others if block["type"] in ("thinking", "redacted_thinking")]
        rest = [block for block in others if block not in thinking]
        joined = [{"type": "text", "text": "\n".join(texts)}] if texts else []
        turns.append({"role": turn["role"], "content": thinking + joined + rest})
    return {**body, "messages": turns}


async def round_trip(messages: list[dict[str, Any]], cache: Path) -> None:
    config = ContextManagerConfig(cache_path=cache / "first", embedder="none", max_tokens=1_000_000)
    async with EnhancedContextManager(config) as manager:
        assert await manager.add_messages(messages) == len(messages)
        openai = manager.get_context(format="openai")
        anthropic = manager.get_context(format="anthropic")
        responses = manager.get_context(format="openai_responses")
    config = ContextManagerConfig(cache_path=cache / "openai", embedder="none", max_tokens=1_000_000)
    async with EnhancedContextManager(config) as again:
        await again.add_messages(openai)
        assert json.dumps(again.get_context(format="openai")) == json.dumps(openai)
    config = ContextManagerConfig(cache_path=cache / "responses", embedder="none", max_tokens=1_000_000)
    async with EnhancedContextManager(config) as again:
        await again.add_messages(responses)
        assert json.dumps(again.get_context(format="openai_responses")) == json.dumps(responses)
    config = ContextManagerConfig(cache_path=cache / "anthropic", embedder="none", max_tokens=1_000_000)
    async with EnhancedContextManager(config) as again:
        system = [{"role": "system", "content": anthropic["system"]}] if "system" in anthropic else []
        await again.add_messages([*system, *anthropic["messages"]])
        exported = again.get_context(format="anthropic")
    if all(sum(block["type"] == "text" for block in turn["content"]) <= 1 for turn in anthropic["messages"]):
        assert json.dumps(exported) == json.dumps(anthropic)
    else:  # two messages of one role in a row: one turn, one message again (its texts joined)
        assert json.dumps(texts_joined(exported)) == json.dumps(texts_joined(anthropic))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=12))
def test_an_export_added_back_exports_the_same_bytes(steps: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as cache:
        asyncio.run(round_trip(history(steps), Path(cache)))


def test_the_round_trip_cases_are_exercised() -> None:
    """The strategy reaches what the round trip is about (a guard against a strategy that drifts)."""
    steps = [
        ("system", 0, 0, 0),
        ("assistant", 0, 2, 1),  # first: the filler before it; a name made valid; reasoning
        ("user", 5, 1, 0),  # the filler's text, said by the user
        ("calls", 3, 0, 2),  # thinking, one call
        ("calls", 1, 0, 5),  # two calls, content None
        ("result", 0, 0, 1),
        ("result", 1, 0, 5),  # failed
        ("result", 2, 0, 0),
        ("user", 1, 0, 0),  # blank: left out of the Anthropic export
        ("assistant", 2, 0, 3),  # redacted thinking
    ]
    messages = history(steps)
    assert {"thinking", "reasoning_content", "name", "tool_calls"} <= {key for m in messages for key in m}
    assert any(len(call["id"]) > 40 for m in messages for call in m.get("tool_calls") or ())
    with tempfile.TemporaryDirectory() as cache:
        asyncio.run(round_trip(messages, Path(cache)))
