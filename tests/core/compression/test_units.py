"""UnitIndex (core/compression/units.py): the window's units, kept up to date change by change."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from context_manager.core.compression.units import UnitIndex, group_into_units
from context_manager.core.messages import Message, ToolCall
from context_manager.core.tokens import get_token_counter

COUNTER = get_token_counter()


def counted(role: str, content: str, **options: Any) -> Message:
    """A message with its exact token count set, as a window hands it to the index."""
    message = Message.create(role, content, **options)
    return dataclasses.replace(message, token_count=COUNTER.count_message(message))


def call(call_id: str, name: str = "search") -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments={"q": call_id})


def ids(units: Any) -> list[list[str]]:
    return [[message.id for message in unit.messages] for unit in units]


def test_a_tool_call_and_its_results_are_one_unit_and_pending_until_answered() -> None:
    index = UnitIndex()
    question = counted("user", "Where is order 1042?")
    asking = counted("assistant", "", tool_calls=[call("c1"), call("c2", "fetch")])
    first = counted("tool", "order 1042 shipped Monday", tool_call_id="c1")
    second = counted("tool", "carrier: DHL", tool_call_id="c2")
    index.add_plain(question)
    index.add(asking)
    assert index.has_call("c1") and index.has_call("c2") and not index.has_call("c3")
    assert index.pending_calls == {"c1": asking.id, "c2": asking.id}
    assert [unit.messages[0] for unit in index.pending_units] == [asking]
    index.add(first)
    assert index.pending_calls == {"c2": asking.id}
    index.add(second)
    assert index.pending_calls == {} and list(index.pending_units) == []
    assert ids(index) == [[question.id], [asking.id, first.id, second.id]]
    tool_unit = index.unit_of(second.id)
    assert tool_unit is index.unit_of_call("c1") and tool_unit is index.unit_of(asking.id)
    assert tool_unit is not None
    assert tool_unit.tokens == asking.token_count + first.token_count + second.token_count
    assert index.tokens == question.token_count + tool_unit.tokens
    assert index.latest_user is index.unit_of(question.id)
    assert index.newest is tool_unit


def test_eviction_order_is_lowest_priority_first_then_oldest_and_skips_protected_units() -> None:
    index = UnitIndex()
    system = counted("system", "You are terse.")
    old_normal = counted("user", "first normal question")
    high = counted("assistant", "an important answer", priority="high")
    low = counted("user", "a low-priority aside", priority="low")
    pinned = counted("user", "keep this", pinned=True)
    critical = counted("assistant", "never drop this", priority="critical")
    new_normal = counted("assistant", "a later normal answer")
    for message in (system, old_normal, high, low, pinned, critical, new_normal):
        index.add_plain(message)  # made into units lazily, when the index is read
    assert index.tokens == sum(
        m.token_count for m in (system, old_normal, high, low, pinned, critical, new_normal)
    )
    order = [unit.messages[0] for unit in index.eviction_order()]
    assert order == [low, old_normal, new_normal, high]
    assert index.protected_tokens == system.token_count + pinned.token_count + critical.token_count
    assert len(index) == 7


def test_a_result_raising_the_priority_or_protecting_the_unit_moves_it() -> None:
    index = UnitIndex()
    before = counted("user", "a question before the tools")
    asking = counted("assistant", "", tool_calls=[call("c1"), call("c2")])
    after = counted("user", "a question after the tools")
    index.add_plain(before)
    index.add(asking)
    index.add_plain(after)
    assert [u.messages[0] for u in index.eviction_order()] == [before, asking, after]
    index.add(counted("tool", "result one", tool_call_id="c1", priority="high"))
    assert [u.messages[0] for u in index.eviction_order()] == [before, after, asking]  # rank raised
    protected_before = index.protected_tokens
    critical_result = counted("tool", "result two", tool_call_id="c2", priority="critical")
    index.add(critical_result)
    unit = index.unit_of(asking.id)
    assert unit is not None and unit.protected
    assert [u.messages[0] for u in index.eviction_order()] == [before, after]
    assert index.protected_tokens == protected_before + unit.tokens  # the whole unit is kept now


def test_remove_forgets_units_their_calls_and_the_latest_user_message() -> None:
    index = UnitIndex()
    question = counted("user", "What is the vault code?")
    asking = counted("assistant", "", tool_calls=[call("c1")])
    answer = counted("tool", "7341", tool_call_id="c1")
    reply = counted("assistant", "It is 7341.")
    index.add_plain(question)
    index.add(asking)
    index.add(answer)
    index.add_plain(reply)
    total = index.tokens
    evicted = [index.unit_of(question.id), index.unit_of(asking.id)]
    assert all(unit is not None for unit in evicted)
    index.remove(unit for unit in evicted if unit is not None)
    assert ids(index) == [[reply.id]]
    assert index.tokens == total - question.token_count - asking.token_count - answer.token_count
    assert index.unit_of(answer.id) is None and not index.has_call("c1")
    assert index.latest_user is None
    assert [u.messages[0] for u in index.eviction_order()] == [reply]


def test_replace_with_a_pinned_copy_protects_and_unpinning_restores_the_order() -> None:
    index = UnitIndex()
    messages = [counted("user" if i % 2 == 0 else "assistant", f"message number {i}") for i in range(5)]
    for message in messages:
        index.add_plain(message)
    middle = messages[2]
    pinned = dataclasses.replace(middle, pinned=True)
    index.replace(middle, pinned)
    assert [u.messages[0] for u in index.eviction_order()] == [messages[0], messages[1], *messages[3:]]
    assert index.protected_tokens == middle.token_count
    shorter = dataclasses.replace(pinned, pinned=False, content="msg 2", token_count=3)
    index.replace(pinned, shorter)  # unpinned and cut: back in its place in the order, with its new size
    assert [u.messages[0] for u in index.eviction_order()] == [*messages[:2], shorter, *messages[3:]]
    assert index.protected_tokens == 0
    assert index.tokens == sum(m.token_count for m in messages) - middle.token_count + 3


def test_the_index_agrees_with_grouping_the_list_at_once() -> None:
    """Random chat and tool turns, added one by one: the same units as group_into_units on the list."""
    rng = random.Random(14)
    for _ in range(20):
        index = UnitIndex()
        messages: list[Message] = []
        open_calls: list[str] = []
        for number in range(rng.randint(1, 60)):
            kind = rng.random()
            if open_calls and kind < 0.35:
                call_id = open_calls.pop(rng.randrange(len(open_calls)))
                message = counted("tool", f"result {number}", tool_call_id=call_id)
                index.add(message)
            elif kind < 0.5:
                new = [f"c{number}_{i}" for i in range(rng.randint(1, 3))]
                open_calls.extend(new)
                message = counted("assistant", "", tool_calls=[call(call_id) for call_id in new])
                index.add(message)
            else:
                priority = rng.choice(["low", "normal", "high"])
                message = counted(rng.choice(["user", "assistant"]), f"turn {number}", priority=priority)
                index.add_plain(message)
            messages.append(message)
        # group_into_units wants the window's order: each tool result right after its call's unit
        ordered = [message for unit in index for message in unit.messages]
        grouped = group_into_units(ordered)
        assert [[ordered[i].id for i in unit.indices] for unit in grouped] == ids(index)
        assert [unit.tokens for unit in grouped] == [unit.tokens for unit in index]
        assert [unit.rank for unit in grouped] == [unit.rank for unit in index]
        assert index.tokens == sum(message.token_count for message in messages)
        assert set(index.pending_calls) == set(open_calls)
