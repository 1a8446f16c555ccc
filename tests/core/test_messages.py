from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import InvalidMessageError, InvalidPriorityError, InvalidRoleError
from context_manager.core.messages import Message, Priority, Role, ToolCall, create_plain
from context_manager.core.text import encodable


def test_strings_and_enums_are_accepted() -> None:
    message = Message.create("USER", "hi", priority="High")
    assert message.role is Role.USER and message.priority is Priority.HIGH
    assert Message.create(Role.ASSISTANT, "ok", priority=Priority.LOW).priority.rank == 0
    assert [p.rank for p in Priority] == [0, 1, 2, 3]


def test_unknown_role_and_priority_name_the_allowed_values() -> None:
    with pytest.raises(InvalidRoleError, match=r"role: got 'robot'; allowed one of 'system', 'user'"):
        Message.create("robot", "hi")
    with pytest.raises(InvalidRoleError, match=r"'tool' \('developer' is 'system'\)"):  # OpenAI's name
        Message.create("robot", "hi")
    with pytest.raises(InvalidPriorityError, match=r"priority: got 'urgent'; allowed one of 'low'"):
        Message.create("user", "hi", priority="urgent")
    assert issubclass(InvalidRoleError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"role": "user", "content": 42}, "content: got 42; allowed a str"),
        ({"role": "user", "content": ""}, "content: got ''"),
        ({"role": "user", "content": "a\x00b"}, "without NUL"),
        ({"role": "user", "content": "\ud800"}, "lone surrogates"),
        ({"role": "user", "content": "x", "metadata": {"n": math.nan}}, r"metadata\.n"),
        ({"role": "user", "content": "x", "metadata": {1: "a"}}, "string keys"),
        ({"role": "user", "content": "x", "metadata": {"o": object()}}, "JSON values"),
        ({"role": "user", "content": "x", "metadata": {"a": ["b\x00"]}}, r"metadata\.a\[0\].*without NUL"),
        ({"role": "user", "content": "x", "metadata": {"a\x00": 1}}, "without NUL"),
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c", "name": "f", "arguments": {"q": "\x00"}}],
            },
            r"arguments\.q.*without NUL",
        ),
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "user", "content": "x", "tool_call_id": "c1"}, "tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": [{"id": "1", "name": "f"}]}, "only on assistant"),
    ],
)
def test_invalid_messages_are_rejected(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(InvalidMessageError, match=pattern):
        Message.create(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"role": "user", "content": "x", "name": "Zo\x00e"}, r"name: got 'Zo\\x00e'; allowed .*without NUL"),
        ({"role": "tool", "content": "x", "tool_call_id": "c\x001"}, r"tool_call_id: .*without NUL"),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c\x001", "name": "f"}]},
            r"tool_calls\[\]\.id: .*without NUL",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [ToolCall(id="c1", name="look\x00up")]},
            r"tool_calls\[\]\.name: .*without NUL",
        ),
    ],
)
def test_a_nul_in_a_name_or_a_call_id_is_rejected_like_in_content(
    kwargs: dict[str, object], pattern: str
) -> None:
    """Names and call ids reach memory (a tool call is remembered as ``[tool call NAME] ARGUMENTS``) and the
    conversation store, which refuse NUL as they do in content: a message holding one was accepted, then
    its memory was refused at every eviction write (flush() raised, cleanup() dropped it)."""
    with pytest.raises(InvalidMessageError, match=pattern):
        Message.create(**kwargs)  # type: ignore[arg-type]


def test_tool_calls_from_provider_shapes() -> None:
    openai_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    anthropic_call = {"type": "tool_use", "id": "toolu_1", "name": "g", "input": {"b": 2}}
    message = Message.create("assistant", "", tool_calls=[openai_call, anthropic_call])
    assert message.tool_calls == (ToolCall("call_1", "f", {"a": 1}), ToolCall("toolu_1", "g", {"b": 2}))
    with pytest.raises(InvalidMessageError, match="arguments"):
        Message.create(
            "assistant", "", tool_calls=[{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]
        )
    with pytest.raises(InvalidMessageError, match="distinct call ids"):
        Message.create("assistant", "", tool_calls=[ToolCall("c", "f"), ToolCall("c", "g")])


def test_a_calls_json_text_is_kept_and_stays_out_of_copies_and_comparisons() -> None:
    """The arguments' JSON text is encoded once (the window's size check, its count and every export read
    it); the kept text is no dataclass field, so equality, ``asdict``, pickling and ``replace`` ignore it."""
    import dataclasses
    import json
    import pickle

    call = ToolCall("c1", "lookup", {"city": "Zürich", "days": [1, 2]})
    text = call.arguments_json()
    assert text == json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
    assert call.arguments_json() is text  # kept, not encoded again
    assert dataclasses.asdict(call) == {"id": "c1", "name": "lookup", "arguments": call.arguments}
    assert call == ToolCall("c1", "lookup", {"city": "Zürich", "days": [1, 2]})
    copy = pickle.loads(pickle.dumps(call))
    assert copy == call and copy.arguments_json() == text
    changed = dataclasses.replace(call, arguments={"city": "Bern"})
    assert changed.arguments_json() == '{"city":"Bern"}'
    with pytest.raises((AttributeError, TypeError)):
        call._json = "{}"  # type: ignore[misc]


async def test_arguments_edited_before_the_call_enters_a_message_are_what_the_window_holds(
    tmp_path: Path,
) -> None:
    """The arguments' JSON text is kept from its first encoding: a call shown for review
    (``arguments_json()``) and edited before ``add_message``, or edited after an add refused as too large,
    was held, counted and exported with its old arguments (the tool ran with the new ones). The text is
    encoded again when the call enters a message."""
    from context_manager.core.errors import ContextBudgetError
    from context_manager.core.provider_formats import parse_tool_calls

    completion = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "send", "arguments": '{"to":"bob@a.x"}'}}
        ],
    }
    [call] = parse_tool_calls(completion)
    assert call.arguments_json() == '{"to":"bob@a.x"}'  # shown to a reviewer
    call.arguments["to"] = "bob@b.x"  # who edits it before it runs
    big = ToolCall("c2", "write", {"text": "word " * 3000})
    config = ContextManagerConfig(
        cache_path=tmp_path, enable_health_checks=False, embedder="none", max_tokens=2000
    )
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "mail bob, then write the file")
        await manager.add_message("assistant", "", tool_calls=[call])
        await manager.add_message("tool", "sent", tool_call_id="c1")
        with pytest.raises(ContextBudgetError):
            await manager.add_message("assistant", "", tool_calls=[big])
        big.arguments["text"] = "word"  # made small: the add goes in now
        await manager.add_message("assistant", "", tool_calls=[big])
        await manager.add_message("tool", "written", tool_call_id="c2")
        exported = manager.get_context(format="openai")
        assert [m["tool_calls"][0]["function"]["arguments"] for m in exported if m.get("tool_calls")] == [
            '{"to":"bob@b.x"}',
            '{"text":"word"}',
        ]
        counter = manager.context_window.counter
        for message in manager.messages[1::2]:  # counted with the arguments they hold
            fresh = [ToolCall(c.id, c.name, dict(c.arguments)) for c in message.tool_calls]
            expected = counter.count_message(Message.create("assistant", "", tool_calls=fresh))
            assert message.token_count == expected


async def test_a_responses_api_function_call_item_is_a_call_under_its_call_id(tmp_path: Path) -> None:
    """An OpenAI Responses API ``function_call`` output item (arguments a JSON string, ``id`` the item's
    own "fc_..." id) was refused as "arguments: not a JSON object", or read under the item id, which the
    ``function_call_output`` answering it does not quote. It is read under its ``call_id`` now."""
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": '{"order": 1042}',
        "status": "completed",
    }
    message = Message.create("assistant", "", tool_calls=[item])
    assert message.tool_calls == (ToolCall("call_1", "lookup", {"order": 1042}),)
    no_arguments = {**item, "arguments": ""}
    assert Message.create("assistant", "", tool_calls=[no_arguments]).tool_calls[0].arguments == {}
    with pytest.raises(InvalidMessageError, match=r"tool_calls\[\]\.arguments"):
        Message.create("assistant", "", tool_calls=[{**item, "arguments": "{bad"}])

    config = ContextManagerConfig(cache_path=tmp_path, enable_health_checks=False, embedder="none")
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "Where is order 1042?")
        await manager.add_message("assistant", None, tool_calls=[item])
        await manager.add_message("tool", "shipped on Monday", tool_call_id="call_1")
        exported = manager.get_context()
    assert exported[1]["tool_calls"][0]["id"] == "call_1"
    assert exported[1]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"order":1042}'}
    assert exported[2] == {"role": "tool", "tool_call_id": "call_1", "content": "shipped on Monday"}


def test_protected_messages() -> None:
    assert Message.create("system", "rules").is_protected
    assert Message.create("user", "x", pinned=True).is_protected
    assert Message.create("user", "x", priority="critical").is_protected
    assert not Message.create("user", "x", priority="high").is_protected


def test_message_ids_are_unique_within_and_across_processes() -> None:
    import os
    import sys

    from context_manager.core.messages import new_message_id

    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    if hasattr(os, "fork"):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: ids must not repeat the parent's sequence
            os.write(write_end, new_message_id().encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child_id = os.read(read_end, 200).decode()
        assert child_id not in ids and child_id != new_message_id()
    assert sys.modules["context_manager.core.messages"] is not None


_ROLE_VALUES = st.one_of(
    st.sampled_from(["user", "assistant", "system", "tool", "USER", " user", "robot"]),
    st.sampled_from(list(Role)),
)
_CONTENTS = st.one_of(
    st.text(alphabet=st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=20),
    st.sampled_from(["", "\x00", "caf\u00e9\x00", "\ud800", 42, None]),
)


def _outcome(make: Callable[[], Message]) -> tuple[object, ...]:
    try:
        message = make()
    except InvalidMessageError as error:
        return ("error", type(error), str(error))
    except InvalidRoleError as error:
        return ("error", type(error), str(error))
    return (
        message.role,
        message.content,
        message.priority,
        message.pinned,
        message.metadata,
        message.tool_calls,
        message.tool_call_id,
        message.name,
        message.token_count,
    )


@given(role=_ROLE_VALUES, content=_CONTENTS)
@settings(max_examples=300, deadline=None)
def test_create_plain_is_message_create_without_options(role: object, content: object) -> None:
    """add_message's fast path builds the same message, or raises the same error, as Message.create."""
    expected = _outcome(lambda: Message.create(role, content))  # type: ignore[arg-type]
    assert _outcome(lambda: create_plain(role, content, check_unicode=True)) == expected  # type: ignore[arg-type]
    unchecked = _outcome(lambda: create_plain(role, content, check_unicode=False))  # type: ignore[arg-type]
    if (
        isinstance(content, str)
        and not encodable(content)
        and "\x00" not in content
        and expected[0] == "error"
    ):
        # left to the count: only the lone-surrogate error is not raised here
        assert "lone surrogates" in str(expected[2]) or unchecked == expected
    else:
        assert unchecked == expected


@pytest.mark.parametrize(
    ("other", "meant"), [("human", "user"), ("AI", "assistant"), ("model", "assistant"), ("function", "tool")]
)
def test_another_librarys_role_name_is_refused_with_ours(other: str, meant: str) -> None:
    """LangChain's ``human`` / ``ai``, Gemini's ``model``: the error listed our roles and left the reader to
    map theirs; it now says which one is meant (still refused: the window keeps four roles)."""
    with pytest.raises(InvalidRoleError, match=rf"\('developer' is 'system'; '{other}' is '{meant}' here\)$"):
        Message.create(other, "hi")
    with pytest.raises(InvalidRoleError, match=r"\('developer' is 'system'\)$"):
        Message.create("bogus", "hi")
