"""Tool call ids made again in a later response (servers numbering calls per response: ``call_0`` each turn).

vLLM, Ollama and llama.cpp versions number the calls of each response from 0, so ``call_0`` comes back while
the earlier ``call_0`` and its result are still in the window. The window refused the later assistant
message (``ToolCallPairingError``); it now holds the later call as ``call_0~2`` (``~3`` ...), a result
quoting ``call_0`` answers the newest unanswered call of that id, and exports, compressions and persisted
conversations see ids unique within the window. Reusing the id of a call still waiting for its result
stays an error.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import ToolCallPairingError
from context_manager.core.messages import Message, Role, ToolCall
from context_manager.core.provider_formats import to_anthropic_messages, to_openai_messages
from context_manager.core.tokens import get_token_counter
from context_manager.core.tool_system.window_calls import _RUNNING
from tests.provider_rules import anthropic_violations, openai_violations

ROOT = Path(__file__).resolve().parents[2]


def numbered_turn(turn: int, calls: int = 2) -> tuple[Message, list[Message]]:
    """An assistant message whose calls a numbering server made (``call_0`` ...), and their results."""
    assistant = Message.create(
        "assistant",
        f"checking, turn {turn}",
        tool_calls=[ToolCall(f"call_{i}", "lookup", {"turn": turn, "item": i}) for i in range(calls)],
    )
    results = [
        Message.create("tool", f"turn {turn} item {i}: found", tool_call_id=f"call_{i}") for i in range(calls)
    ]
    return assistant, results


def check_exports(messages: tuple[Message, ...] | list[Message]) -> None:
    """Both exports valid for the providers, every call id once, each result the answer to its own call."""
    openai = to_openai_messages(messages)
    assert openai_violations(openai) == [], openai
    call_ids = [call["id"] for m in openai for call in m.get("tool_calls") or ()]
    assert len(call_ids) == len(set(call_ids)), call_ids
    # a result follows the call with the same turn (arguments) it answers
    turn_of = {
        call["id"]: json.loads(call["function"]["arguments"])
        for m in openai
        for call in m.get("tool_calls") or ()
    }
    for m in openai:
        if m["role"] == "tool" and "turn" in turn_of[m["tool_call_id"]]:
            arguments = turn_of[m["tool_call_id"]]
            assert m["content"].startswith(f"turn {arguments['turn']} item {arguments['item']}:"), m
    anthropic = to_anthropic_messages(messages)
    assert anthropic_violations(anthropic) == [], anthropic
    uses = [b["id"] for t in anthropic["messages"] for b in t["content"] if b["type"] == "tool_use"]
    answered = [
        b["tool_use_id"] for t in anthropic["messages"] for b in t["content"] if b["type"] == "tool_result"
    ]
    assert len(uses) == len(set(uses)) and sorted(answered) == sorted(uses)


async def test_a_call_id_made_again_after_its_result_is_accepted_and_held_once() -> None:
    window = ContextWindow(max_tokens=4000, counter=get_token_counter())
    await window.add(Message.create("user", "look up my two orders, three times"))
    for turn in range(3):
        assistant, results = numbered_turn(turn)
        await window.add(assistant)
        for result in results:
            await window.add(result)
    held = [[call.id for call in m.tool_calls] for m in window.messages if m.tool_calls]
    assert held == [["call_0", "call_1"], ["call_0~2", "call_1~2"], ["call_0~3", "call_1~3"]]
    answers = [(m.tool_call_id, m.content) for m in window.messages if m.role is Role.TOOL]
    assert answers == [
        ("call_0", "turn 0 item 0: found"),
        ("call_1", "turn 0 item 1: found"),
        ("call_0~2", "turn 1 item 0: found"),
        ("call_1~2", "turn 1 item 1: found"),
        ("call_0~3", "turn 2 item 0: found"),
        ("call_1~3", "turn 2 item 1: found"),
    ]
    assert window.pending_tool_calls == frozenset()
    # counted with the real tokenizer as the window holds them
    counter = get_token_counter()
    assert all(m.token_count == counter.count_message(m) for m in window.messages)
    check_exports(window.messages)
    anthropic = to_anthropic_messages(window.messages)
    uses = [b["id"] for t in anthropic["messages"] for b in t["content"] if b["type"] == "tool_use"]
    assert uses[:2] == ["call_0", "call_1"] and all(
        use.startswith(("call_0_", "call_1_")) for use in uses[2:]
    )


async def test_a_result_quoting_the_id_answers_the_newest_unanswered_call_even_after_other_messages() -> None:
    window = ContextWindow(max_tokens=4000)
    first, [first_result] = numbered_turn(0, calls=1)
    await window.extend([Message.create("user", "go"), first, first_result])
    second, [second_result] = numbered_turn(1, calls=1)
    await window.add(second)
    assert window.pending_tool_calls == {"call_0~2"}
    assert window.resolve_tool_call_id("call_0") == "call_0~2"
    await window.add(Message.create("user", "while it runs: hurry"))
    await window.add(second_result)  # placed right after its call, before the user's message
    roles = [(m.role.value, m.tool_call_id) for m in window.messages]
    assert roles[-3:] == [("assistant", None), ("tool", "call_0~2"), ("user", None)]
    assert window.resolve_tool_call_id("call_0") is None
    check_exports(window.messages)


async def test_reusing_the_id_of_a_call_still_waiting_for_its_result_is_refused() -> None:
    window = ContextWindow(max_tokens=4000)
    first, [first_result] = numbered_turn(0, calls=1)
    await window.extend([Message.create("user", "go"), first, first_result])
    second, _ = numbered_turn(1, calls=1)
    await window.add(second)  # held as call_0~2, unanswered
    before = window.messages
    third, _ = numbered_turn(2, calls=1)
    with pytest.raises(
        ToolCallPairingError, match=r"tool_calls\[\]\.id: got 'call_0'.*'call_0~2' has none yet"
    ):
        await window.add(third)
    with pytest.raises(ToolCallPairingError, match="'call_0~2' has none yet"):
        await window.extend([Message.create("user", "again"), third])
    assert window.messages == before
    # a second result for an answered call (nothing renamed pending) is still refused
    await window.add(Message.create("tool", "turn 1 item 0: found", tool_call_id="call_0"))
    with pytest.raises(ToolCallPairingError, match="tool_call_id: got 'call_0'"):
        await window.add(Message.create("tool", "again", tool_call_id="call_0"))


async def test_a_history_with_numbered_calls_is_imported_in_one_batch() -> None:
    window = ContextWindow(max_tokens=4000)
    batch: list[Message] = [Message.create("user", "import")]
    for turn in range(4):
        assistant, results = numbered_turn(turn)
        batch += [assistant, *results]
    await window.extend(batch)
    held = [call.id for m in window.messages for call in m.tool_calls]
    assert held == [
        "call_0",
        "call_1",
        "call_0~2",
        "call_1~2",
        "call_0~3",
        "call_1~3",
        "call_0~4",
        "call_1~4",
    ]
    check_exports(window.messages)
    # within one batch, a call made again before its earlier call was answered is refused
    assistant, _ = numbered_turn(9, calls=1)
    again, _ = numbered_turn(10, calls=1)
    with pytest.raises(ToolCallPairingError, match="'call_0~5' has none yet"):
        await window.extend([Message.create("user", "x"), assistant, again])


async def test_compression_never_splits_a_renamed_call_from_its_result() -> None:
    window = ContextWindow(max_tokens=420, compression_ratio=0.6)
    await window.add(Message.create("user", "many lookups"))
    for turn in range(12):
        assistant, results = numbered_turn(turn)
        await window.add(assistant)
        for result in results:
            await window.add(result)
        check_exports(window.messages)
        calls = {call.id for m in window.messages for call in m.tool_calls}
        answers = [m.tool_call_id for m in window.messages if m.role is Role.TOOL]
        assert set(answers) == calls and len(answers) == len(calls)
    assert window.compression_history


@pytest.fixture
async def manager(tmp_path: Path) -> Any:
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as context:
        yield context


async def test_execute_tool_calls_runs_each_response_of_a_numbering_server(
    manager: EnhancedContextManager,
) -> None:
    runs: list[int] = []

    async def lookup(order: int) -> str:
        runs.append(order)
        return f"order {order}: shipped"

    manager.tool_manager.register_function_tool("lookup", lookup, "Look up an order")
    await manager.add_message("user", "where are orders 1, 2 and 3?")
    for order in (1, 2, 3):
        # each response's single call is call_0; the results come back under the id the model made
        [result] = await manager.execute_tool_calls(
            [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": f'{{"order": {order}}}'},
                }
            ]
        )
        assert result.success and result.result == f"order {order}: shipped" and result.call_id == "call_0"
    assert runs == [1, 2, 3]
    assert manager.tool_manager.get_tool_stats()["tools"]["lookup"]["calls"] == 3
    assert not _RUNNING.get(manager.context_window)  # no id stays marked as running
    pairs = [(m.tool_call_id, m.content) for m in manager.messages if m.role is Role.TOOL]
    assert pairs == [
        ("call_0", "order 1: shipped"),
        ("call_0~2", "order 2: shipped"),
        ("call_0~3", "order 3: shipped"),
    ]
    openai = manager.get_context(format="openai")
    assert openai_violations(openai) == []  # type: ignore[arg-type]
    assert anthropic_violations(manager.get_context(format="anthropic")) == []  # type: ignore[arg-type]
    # the same calls again right after they ran (a retried step) are not run a second time
    with pytest.raises(ToolCallPairingError, match="already ran"):
        await manager.execute_tool_calls([ToolCall("call_0", "lookup", {"order": 3})])
    assert runs == [1, 2, 3]
    # a call added first with add_message runs once execute_tool_calls gets it under the id the model made
    await manager.add_message("assistant", "", tool_calls=[ToolCall("call_0", "lookup", {"order": 3})])
    assert [call.id for call in manager.pending_tool_calls()] == ["call_0~4"]
    [result] = await manager.execute_tool_calls([ToolCall("call_0", "lookup", {"order": 3})])
    assert result.result == "order 3: shipped" and runs == [1, 2, 3, 3]
    assert manager.pending_tool_calls() == []
    # cancel_tool_calls takes the id the model made as well
    await manager.add_message("assistant", "", tool_calls=[ToolCall("call_0", "lookup", {"order": 4})])
    [cancelled] = await manager.cancel_tool_calls(["call_0"])
    assert cancelled.call_id == "call_0~5" and manager.pending_tool_calls() == []


async def test_execute_tool_calls_naming_one_pending_call_twice_is_refused_naming_the_calls(
    manager: EnhancedContextManager,
) -> None:
    """The model's id (``call_0``) and the window's (``call_0~2``) name the same pending call: refused before
    anything runs, naming the calls given; the error named ``messages[1].tool_call_id`` of a list the
    caller never gave (the window's check of the results to come) and said ``none pending``."""
    runs: list[int] = []

    async def lookup(order: int) -> str:
        runs.append(order)
        return f"order {order}: shipped"

    manager.tool_manager.register_function_tool("lookup", lookup, "Look up an order")
    await manager.add_message("user", "where are orders 1 and 2?")
    await manager.add_message("assistant", "", tool_calls=[ToolCall("call_0", "lookup", {"order": 1})])
    await manager.add_message("tool", "order 1: shipped", tool_call_id="call_0")
    await manager.add_message("assistant", "", tool_calls=[ToolCall("call_0", "lookup", {"order": 2})])
    before = manager.messages
    for ids in (["call_0", "call_0~2"], ["call_0~2", "call_0"]):
        calls = [ToolCall(call_id, "lookup", {"order": 2}) for call_id in ids]
        with pytest.raises(ToolCallPairingError) as caught:
            await manager.execute_tool_calls(calls)
        assert caught.value.field == "calls"
        assert "messages[" not in str(caught.value) and "'call_0~2'" in str(caught.value)
        assert runs == [] and manager.messages == before
    assert not _RUNNING.get(manager.context_window)
    [result] = await manager.execute_tool_calls([ToolCall("call_0", "lookup", {"order": 2})])
    assert result.result == "order 2: shipped" and runs == [2]


RESUME = """
import asyncio, hashlib, json, sys
from context_manager import ContextManagerConfig, EnhancedContextManager
from tests.core.conversations.conversation_worker import fingerprint

async def main():
    config = ContextManagerConfig(storage_path=sys.argv[1], max_tokens=600)
    async with EnhancedContextManager(config, conversation_id="numbered") as manager:
        print(json.dumps({"fingerprint": fingerprint(manager), "openai": manager.get_context(format="openai"),
                          "pending": [call.id for call in manager.pending_tool_calls()]}))
        await manager.add_message("tool", "turn 99 item 0: found", tool_call_id="call_0")
        print(json.dumps({"fingerprint": fingerprint(manager)}))

asyncio.run(main())
"""


async def test_a_persisted_conversation_with_numbered_calls_resumes_in_another_process(
    tmp_path: Path,
) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "storage", max_tokens=600)
    async with EnhancedContextManager(config, conversation_id="numbered") as first:
        await first.add_message("user", "track every parcel")
        for turn in range(20):  # compresses several times on 600 tokens
            assistant, results = numbered_turn(turn)
            await first.add_message(
                "assistant", assistant.content, tool_calls=[call for call in assistant.tool_calls]
            )
            if turn % 3 == 1:
                await first.add_message("user", f"while you look (turn {turn}): parcel {turn} is fragile")
            for result in results:
                await first.add_message("tool", result.content, tool_call_id=result.tool_call_id)
        await first.add_message(
            "assistant", "", tool_calls=[ToolCall("call_0", "lookup", {"turn": 99, "item": 0})]
        )  # left pending
        await first.flush()
        assert len(first.compression_history) >= 2
        expected = fingerprint_of(first)
        openai = first.get_context(format="openai")
        check_exports(first.messages)
        pending = [call.id for call in first.pending_tool_calls()]
        assert len(pending) == 1 and pending[0].startswith("call_0~")
    process = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", RESUME, str(tmp_path / "storage")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    resumed, answered = (json.loads(line) for line in process.stdout.splitlines())
    assert resumed["fingerprint"] == expected
    assert resumed["openai"] == openai and resumed["pending"] == pending
    # the other process answered the pending call by the id the model made; this one resumes that too
    async with EnhancedContextManager(config, conversation_id="numbered") as again:
        assert fingerprint_of(again) == answered["fingerprint"]
        assert again.pending_tool_calls() == []
        assert again.messages[-1].tool_call_id == pending[0]
        check_exports(again.messages)


def fingerprint_of(manager: EnhancedContextManager) -> str:
    from tests.core.conversations.conversation_worker import fingerprint

    return fingerprint(manager)
