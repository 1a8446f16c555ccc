from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import InvalidArgumentError, InvalidMessageError
from context_manager.core.messages import Message, ToolCall
from context_manager.core.provider_formats import (
    ANTHROPIC_CONTINUATION_TEXT,
    paired_for_provider,
    parse_tool_calls,
    to_anthropic_messages,
    to_openai_messages,
    to_provider_format,
)
from tests.provider_rules import (
    ANTHROPIC_TOOL_USE_ID_PATTERN,
    NAME_PATTERN,
    anthropic_violations,
    openai_violations,
)


def tool_conversation() -> list[Message]:
    return [
        Message.create("system", "You are helpful."),
        Message.create("user", "Weather in Paris and 2+2?", name="alice"),
        Message.create(
            "assistant",
            "Let me check.",
            tool_calls=[
                ToolCall(id="call_1", name="weather", arguments={"city": "Paris", "unit": "°C"}),
                ToolCall(id="call_2", name="calculator", arguments={"expression": "2+2"}),
            ],
        ),
        Message.create("tool", "21 °C, sunny", tool_call_id="call_1"),
        Message.create("tool", "boom", tool_call_id="call_2", metadata={"is_error": True}),
        Message.create("assistant", "It is 21 °C; the calculator failed."),
    ]


def test_openai_export() -> None:
    exported = to_openai_messages(tool_conversation())
    assert exported[0] == {"role": "system", "content": "You are helpful."}
    assert exported[1] == {"role": "user", "content": "Weather in Paris and 2+2?", "name": "alice"}
    assert exported[2] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris","unit":"°C"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression":"2+2"}'},
            },
        ],
    }
    assert exported[3] == {"role": "tool", "tool_call_id": "call_1", "content": "21 °C, sunny"}
    assert json.loads(exported[2]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris",
        "unit": "°C",
    }


def test_openai_assistant_with_only_tool_calls_has_null_content() -> None:
    message = Message.create("assistant", "", tool_calls=[ToolCall(id="c", name="f")])
    result = Message.create("tool", "done", tool_call_id="c")
    assert to_openai_messages([message, result])[0]["content"] is None


def test_anthropic_export() -> None:
    body = to_anthropic_messages(tool_conversation())
    assert body["system"] == "You are helpful."
    turns = body["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris", "unit": "°C"}},
        {"type": "tool_use", "id": "call_2", "name": "calculator", "input": {"expression": "2+2"}},
    ]
    # Both tool results merged into one user turn.
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "21 °C, sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "boom", "is_error": True},
    ]


def test_anthropic_merges_consecutive_roles_and_joins_system() -> None:
    messages = [
        Message.create("system", "Rule one."),
        Message.create("user", "first"),
        Message.create("user", "second"),
        Message.create("system", "Rule two."),
        Message.create("assistant", "reply"),
    ]
    body = to_anthropic_messages(messages)
    assert body["system"] == "Rule one.\n\nRule two."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "reply"}]},
    ]


def test_anthropic_never_starts_with_assistant_and_omits_empty_system() -> None:
    body = to_anthropic_messages([Message.create("assistant", "hello")])
    assert "system" not in body
    assert body["messages"][0] == {
        "role": "user",
        "content": [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}],
    }


def test_anthropic_requests_are_never_empty_and_hold_no_blank_text() -> None:
    """The API refuses ``messages: []``, a whitespace-only text block and a request whose final assistant
    content ends with whitespace; the exporter made all three."""
    only_system = to_anthropic_messages([Message.create("system", "Be brief.")])
    assert only_system == {
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]}],
    }
    assert anthropic_violations(only_system) == []
    assert anthropic_violations(to_anthropic_messages([])) == []
    call = ToolCall(id="c1", name="lookup")
    body = to_anthropic_messages(
        [
            Message.create("user", "Hi"),
            Message.create("assistant", " \n"),
            Message.create("user", "\t"),
            Message.create("assistant", "  ", tool_calls=[call]),
            Message.create("tool", "   ", tool_call_id="c1"),
            Message.create("assistant", "Done.  \n"),
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ]
    assert anthropic_violations(body) == []
    # a user's text keeps its whitespace (only an assistant's final text may not end with it)
    assert to_anthropic_messages([Message.create("user", "  indented\n")])["messages"][0]["content"] == [
        {"type": "text", "text": "  indented\n"}
    ]


def test_a_whitespace_only_system_message_is_left_out_of_the_anthropic_system() -> None:
    """Anthropic answers 400 to a ``system`` of whitespace only; it was exported as is."""
    blank = Message.create("system", "  \n")
    body = to_anthropic_messages([blank, Message.create("user", "Hello")])
    assert body == {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}
    assert anthropic_violations(body) == []
    rules = Message.create("system", "Be brief.")
    body = to_anthropic_messages([blank, rules, Message.create("system", "\t"), Message.create("user", "Hi")])
    assert body["system"] == "Be brief."
    # OpenAI accepts whitespace-only content: the message is kept, as whitespace-only user text is
    assert to_openai_messages([blank]) == [{"role": "system", "content": "  \n"}]


def _suffix(value: str) -> str:
    return "_" + hashlib.sha256(value.encode()).hexdigest()[:10]


def test_ids_and_names_the_providers_refuse_are_made_valid_on_export() -> None:
    """OpenAI and Anthropic answer 400 to these; they were exported verbatim."""
    long_name = "lookup_" + "x" * 70  # valid characters, over 64
    messages = [
        Message.create("user", "List the files.", name="Zoë Smith"),
        Message.create(
            "assistant",
            "",
            tool_calls=[
                ToolCall(id="functions.Bash:0", name="Bash", arguments={"cmd": "ls"}),  # a Kimi-style id
                ToolCall(id="c2", name="list files"),
                ToolCall(id="c3", name=long_name),
            ],
        ),
        Message.create("tool", "a.txt", tool_call_id="functions.Bash:0"),
        Message.create("tool", "b.txt", tool_call_id="c2"),
        Message.create("tool", "c.txt", tool_call_id="c3"),
    ]
    openai = to_openai_messages(messages)
    assert openai[0]["name"] == "Zo__Smith" + _suffix("Zoë Smith")
    functions = [call["function"]["name"] for call in openai[1]["tool_calls"]]
    truncated = long_name[: 64 - 11] + _suffix(long_name)
    assert functions == ["Bash", "list_files" + _suffix("list files"), truncated]
    assert len(truncated) == 64
    assert [call["id"] for call in openai[1]["tool_calls"]] == ["functions.Bash:0", "c2", "c3"]  # any string
    assert openai_violations(openai) == []

    anthropic = to_anthropic_messages(messages)
    uses = [b for b in anthropic["messages"][1]["content"] if b["type"] == "tool_use"]
    results = anthropic["messages"][2]["content"]
    mapped = "functions_Bash_0" + _suffix("functions.Bash:0")
    assert [b["id"] for b in uses] == [mapped, "c2", "c3"]
    assert [b["tool_use_id"] for b in results] == [mapped, "c2", "c3"]  # the pair still matches
    assert [b["name"] for b in uses] == functions
    assert anthropic_violations(anthropic) == []
    # the stored messages keep what was given
    assert messages[0].name == "Zoë Smith" and messages[1].tool_calls[0].id == "functions.Bash:0"


OPENAI_CALL_ID = re.compile(r".{1,40}", re.DOTALL)
"""An OpenAI call id the API takes: any string of at most 40 characters."""


def test_openai_call_ids_longer_than_40_characters_are_shortened_on_export() -> None:
    """OpenAI answers 400 ``string_above_max_length`` to a ``tool_calls[].id`` over 40 characters; ids that
    long come from gateways (``portkey-<uuid4>``) and other providers' conversations continued with GPT."""
    gateway = "portkey-6aa6db90-1b84-4155-9f32-f658c97d6b1b"  # 44 characters
    sibling = "portkey-6aa6db90-1b84-4155-9f32-f658c97d6b1c"  # the same first 43
    forty = "c" * 40
    messages = [
        Message.create("user", "Check both servers."),
        Message.create(
            "assistant",
            "",
            tool_calls=[ToolCall(gateway, "ping", {"host": "a"}), ToolCall(sibling, "ping", {"host": "b"})],
        ),
        Message.create("tool", "a is up", tool_call_id=gateway),
        Message.create("tool", "b is down", tool_call_id=sibling),
        Message.create("assistant", "", tool_calls=[ToolCall(forty, "ping", {"host": "c"})]),
        Message.create("tool", "c is up", tool_call_id=forty),
        Message.create("assistant", "b is down."),
    ]
    openai = to_openai_messages(messages)
    assert openai_violations(openai) == []
    exported = [call["id"] for call in openai[1]["tool_calls"]]
    assert exported == [gateway[:29] + _suffix(gateway), sibling[:29] + _suffix(sibling)]
    assert [len(call_id) for call_id in exported] == [40, 40]
    assert [m["tool_call_id"] for m in openai[2:4]] == exported  # each result still quotes its call
    assert openai[4]["tool_calls"][0]["id"] == forty and openai[5]["tool_call_id"] == forty  # as it is
    assert to_openai_messages(messages) == openai  # deterministic
    assert messages[1].tool_calls[0].id == gateway  # the message keeps what was given
    # the Anthropic API takes such ids: exported as they are
    anthropic = to_anthropic_messages(messages)
    assert [b["id"] for b in anthropic["messages"][1]["content"]] == [gateway, sibling]


async def test_an_openai_export_with_shortened_call_ids_imports_and_exports_the_same() -> None:
    """The export, added to a new window as a history, exports again exactly as it was."""
    long_id = "toolu_vrtx_01" + "Xy9" * 12  # 49 characters
    window = ContextWindow(max_tokens=2000)
    await window.extend(
        [
            Message.create("user", "What is in /tmp?"),
            Message.create("assistant", "Listing.", tool_calls=[ToolCall(long_id, "ls", {"path": "/tmp"})]),
            Message.create("tool", "a.txt", tool_call_id=long_id),
            Message.create("assistant", "One file: a.txt."),
        ]
    )
    openai = to_openai_messages(window.messages)
    assert openai_violations(openai) == []
    again = ContextWindow(max_tokens=2000)
    await again.extend(
        [
            Message.create(
                m["role"],
                m["content"] or "",
                tool_calls=m.get("tool_calls"),
                tool_call_id=m.get("tool_call_id"),
            )
            for m in openai
        ]
    )
    assert to_openai_messages(again.messages) == openai


_VALID_VALUE = st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
# (no NUL: a message refuses one in a name or a call id, as in its content)
_ANY_VALUE = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=80
)
_VALUE = st.one_of(_VALID_VALUE, _ANY_VALUE, st.sampled_from(["a.b", "a_b", "a:b", "a b", "Zoë", "x" * 65]))


@settings(max_examples=200, deadline=None)
@given(
    turns=st.lists(
        st.tuples(_VALUE, st.lists(st.tuples(_VALUE, _VALUE), min_size=0, max_size=3)), min_size=1, max_size=6
    )
)
def test_exported_ids_and_names_always_match_the_providers_patterns(
    turns: list[tuple[str, list[tuple[str, str]]]],
) -> None:
    """Whatever ids and names a conversation holds, exports match the providers' patterns, keep valid values
    as they are, map distinct values to distinct ones, keep each tool_use and its tool_result paired, and
    stay append-only."""
    messages: list[Message] = []
    seen_ids: set[str] = set()
    for speaker, calls in turns:
        messages.append(Message.create("user", "hi", name=speaker))
        fresh = [(call_id, name) for call_id, name in dict(calls).items() if call_id not in seen_ids]
        seen_ids.update(call_id for call_id, _ in fresh)
        if fresh:
            made = [ToolCall(id=call_id, name=name) for call_id, name in fresh]
            messages.append(Message.create("assistant", "", tool_calls=made))
            messages.extend(Message.create("tool", "ok", tool_call_id=call.id) for call in made)
    openai = to_openai_messages(messages)
    anthropic = to_anthropic_messages(messages)
    assert openai_violations(openai) == []
    assert anthropic_violations(anthropic) == []
    assert to_openai_messages(messages) == openai and to_anthropic_messages(messages) == anthropic

    def check_mapping(pairs: list[tuple[str, str]], pattern: re.Pattern[str]) -> None:
        mapping = dict(pairs)
        assert len(mapping) == len(set(pairs))  # one original, one exported value
        assert len(set(mapping.values())) == len(mapping)  # one-to-one
        for original, exported in mapping.items():
            if pattern.fullmatch(original):
                assert exported == original

    names = [m.name for m in messages if m.name]
    check_mapping(list(zip(names, [m["name"] for m in openai if "name" in m], strict=True)), NAME_PATTERN)
    calls = [call for m in messages for call in m.tool_calls]
    exported_calls = [call for m in openai for call in m.get("tool_calls") or ()]
    check_mapping(
        [(c.name, e["function"]["name"]) for c, e in zip(calls, exported_calls, strict=True)], NAME_PATTERN
    )
    check_mapping([(c.id, e["id"]) for c, e in zip(calls, exported_calls, strict=True)], OPENAI_CALL_ID)
    uses = [b for turn in anthropic["messages"] for b in turn["content"] if b["type"] == "tool_use"]
    check_mapping([(c.id, b["id"]) for c, b in zip(calls, uses, strict=True)], ANTHROPIC_TOOL_USE_ID_PATTERN)
    check_mapping([(c.name, b["name"]) for c, b in zip(calls, uses, strict=True)], NAME_PATTERN)
    longer = to_openai_messages([*messages, Message.create("user", "more", name=names[0])])
    assert longer[: len(openai)] == openai


def test_unknown_format_is_rejected() -> None:
    allowed = "'openai', 'anthropic' or 'openai_responses'"
    with pytest.raises(InvalidArgumentError, match=f"format: got 'gemini'; allowed {allowed}"):
        to_provider_format([], "gemini")


async def test_export_is_append_only_between_compressions() -> None:
    """A provider prompt cache hits when the previous request is a prefix of the next one."""
    window = ContextWindow(max_tokens=600)
    await window.add(Message.create("system", "You are helpful."))
    previous_openai = to_openai_messages(window.messages)
    previous_anthropic = to_anthropic_messages(window.messages)
    compressions = 0
    checked = 0
    for i in range(120):
        if i % 5 == 3:
            call = ToolCall(id=f"call_{i}", name="lookup", arguments={"i": i})
            await window.add(Message.create("assistant", "", tool_calls=[call]))
            await window.add(Message.create("tool", f"result {i}", tool_call_id=call.id))
        else:
            await window.add(Message.create("user" if i % 2 else "assistant", f"turn {i} " + "words " * 15))
        openai = to_openai_messages(window.messages)
        anthropic = to_anthropic_messages(window.messages)
        if len(window.compression_history) == compressions:
            old = json.dumps(previous_openai, ensure_ascii=False)
            new = json.dumps(openai[: len(previous_openai)], ensure_ascii=False)
            assert new == old  # byte-identical prefix
            assert anthropic.get("system") == previous_anthropic.get("system")
            old_turns = previous_anthropic["messages"]
            new_turns = anthropic["messages"]
            if old_turns:
                assert json.dumps(new_turns[: len(old_turns) - 1]) == json.dumps(old_turns[:-1])
                last_old = old_turns[-1]
                last_new = new_turns[len(old_turns) - 1]
                assert last_new["role"] == last_old["role"]
                assert last_new["content"][: len(last_old["content"])] == last_old["content"]
            checked += 1
        compressions = len(window.compression_history)
        previous_openai, previous_anthropic = openai, anthropic
    assert compressions >= 2 and checked > 50


def test_parse_tool_calls_from_openai_and_anthropic() -> None:
    openai_message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
    }
    assert parse_tool_calls(openai_message) == [ToolCall(id="c1", name="f", arguments={"x": 1})]
    anthropic_response = {
        "content": [
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "tu_1", "name": "g", "input": {"y": "z"}},
        ]
    }
    assert parse_tool_calls(anthropic_response) == [ToolCall(id="tu_1", name="g", arguments={"y": "z"})]
    assert parse_tool_calls(anthropic_response["content"]) == parse_tool_calls(anthropic_response)
    assert parse_tool_calls({"role": "assistant", "content": "no tools"}) == []
    assert parse_tool_calls(None) == []


def test_parse_tool_calls_from_sdk_objects() -> None:
    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "h", "arguments": "{}"}}],
        }
    )
    assert parse_tool_calls(message) == [ToolCall(id="c9", name="h", arguments={})]


def test_parse_tool_calls_reads_a_whole_completion_and_a_responses_api_response() -> None:
    """``parse_tool_calls(completion)`` (the whole Chat Completions response rather than
    ``completion.choices[0].message``) and a Responses API response returned ``[]``: an agent loop saw
    no tool call and stopped, with the model waiting for its tools' results."""
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    function = {"name": "f", "arguments": '{"x":1}'}
    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "c1", "type": "function", "function": function}],
                    },
                }
            ],
        }
    )
    expected = [ToolCall(id="c1", name="f", arguments={"x": 1})]
    assert parse_tool_calls(completion) == expected
    assert parse_tool_calls(completion.model_dump()) == expected
    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": "gpt-4o-mini",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "function_call",
                    "id": "fc_1",  # the item's id; results quote the call_id
                    "call_id": "call_9",
                    "name": "lookup",
                    "arguments": '{"order": 1042}',
                    "status": "completed",
                },
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
    )
    expected = [ToolCall(id="call_9", name="lookup", arguments={"order": 1042})]
    assert parse_tool_calls(response) == expected
    assert parse_tool_calls(response.output) == expected
    assert parse_tool_calls(response.model_dump()) == expected
    with pytest.raises(InvalidMessageError, match="response"):  # a dict of no known shape: not "no calls"
        parse_tool_calls({"result": "ok"})


def test_parse_tool_calls_reads_a_list_of_tool_calls_as_given() -> None:
    """``parse_tool_calls(message.tool_calls)`` (the OpenAI SDK's list of calls, or LangChain's
    ``AIMessage.tool_calls``) returned ``[]``: only content blocks were read from a list, so an agent loop
    saw no call and stopped with the model waiting for its tools' results."""
    from langchain_core.messages import AIMessage
    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        }
    )
    expected = [ToolCall(id="c1", name="f", arguments={"x": 1}), ToolCall(id="c2", name="g", arguments={})]
    assert message.tool_calls is not None
    assert parse_tool_calls(message.tool_calls) == expected
    assert parse_tool_calls([call.model_dump() for call in message.tool_calls]) == expected
    ai = AIMessage(content="", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}])
    assert parse_tool_calls(ai) == parse_tool_calls(ai.tool_calls) == expected[:1]
    assert parse_tool_calls([{"id": "c1", "function": {"name": "f", "arguments": '{"x":1}'}}]) == expected[:1]


def test_parse_tool_calls_refuses_a_langchain_message_with_invalid_tool_calls() -> None:
    """LangChain puts a call whose arguments are no JSON in ``AIMessage.invalid_tool_calls``:
    ``parse_tool_calls`` returned ``[]`` (or the valid calls alone), so an agent loop stopped with the
    model's call unanswered, where the same call in an OpenAI message raises. Refused now, as
    ``add_messages`` refuses that message."""
    from langchain_core.messages import AIMessage

    broken = {"name": "f", "args": '{"x": ', "id": "c2", "error": "no JSON"}
    for message in (
        AIMessage(content="", invalid_tool_calls=[broken]),
        AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c1"}], invalid_tool_calls=[broken]),
    ):
        for shape in (message, message.model_dump()):
            with pytest.raises(InvalidMessageError, match=r"^response\.invalid_tool_calls: .*JSON object"):
                parse_tool_calls(shape)
    assert parse_tool_calls(AIMessage(content="no call")) == []


def test_parse_tool_calls_rejects_bad_arguments() -> None:
    bad = {
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]
    }
    with pytest.raises(InvalidMessageError, match="tool_calls\\[\\].function.arguments"):
        parse_tool_calls(bad)
    with pytest.raises(InvalidMessageError, match="response: got 42"):
        parse_tool_calls(42)


# -- issue 18.2: exports follow the pairing rules whatever the message order -------------------------


def test_results_move_next_to_their_call_and_pending_calls_are_left_out() -> None:
    call = Message.create(
        "assistant", "Checking both.", tool_calls=[ToolCall(id="a", name="f"), ToolCall(id="b", name="g")]
    )
    interleaved = [
        Message.create("user", "Do two things."),
        call,
        Message.create("user", "Also this."),
        Message.create("tool", "result a", tool_call_id="a"),
    ]
    openai = to_openai_messages(interleaved)
    assert [m["role"] for m in openai] == ["user", "assistant", "tool", "user"]
    assert [c["id"] for c in openai[1]["tool_calls"]] == ["a"]  # "b" has no result yet: left out
    assert openai_violations(openai) == []
    anthropic = to_anthropic_messages(interleaved)
    assert anthropic_violations(anthropic) == []
    assert [b["type"] for b in anthropic["messages"][2]["content"]] == ["tool_result", "text"]


def test_an_assistant_message_of_pending_calls_only_and_orphan_results_are_left_out() -> None:
    messages = [
        Message.create("user", "Go."),
        Message.create("assistant", "", tool_calls=[ToolCall(id="p", name="f")]),
        Message.create("tool", "from nowhere", tool_call_id="missing"),
    ]
    assert to_openai_messages(messages) == [{"role": "user", "content": "Go."}]
    assert to_anthropic_messages(messages)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Go."}]}
    ]


def test_a_call_id_used_again_in_a_later_turn_pairs_each_result_with_its_own_call() -> None:
    """Some OpenAI-compatible servers number tool calls per response (``call_0``, ``functions.Bash:0``), so a
    history kept outside a window repeats ids across turns. Every result was paired with the first call of
    its id: the later call kept its ``tool_calls`` without a result (OpenAI: HTTP 400), and the Anthropic
    export repeated the ``tool_use`` id (HTTP 400: ids must be unique)."""
    messages = [
        Message.create("user", "Weather in Paris?"),
        Message.create("assistant", "", tool_calls=[ToolCall("call_0", "weather", {"c": 1})]),
        Message.create("tool", "21 °C", tool_call_id="call_0"),
        Message.create("assistant", "21 °C in Paris."),
        Message.create("user", "And in Oslo?"),
        Message.create("assistant", "", tool_calls=[ToolCall("call_0", "weather", {"c": 2})]),
        Message.create("tool", "3 °C", tool_call_id="call_0"),
        Message.create("assistant", "3 °C in Oslo."),
    ]
    assert paired_for_provider(messages) == messages
    openai = to_openai_messages(messages)
    assert openai_violations(openai) == []
    assert [m.get("content") for m in openai if m["role"] == "tool"] == ["21 °C", "3 °C"]
    anthropic = to_anthropic_messages(messages)
    assert anthropic_violations(anthropic) == []
    turns = anthropic["messages"]
    first_use, second_use = turns[1]["content"][0], turns[5]["content"][0]
    assert first_use["id"] == "call_0" and first_use["input"] == {"c": 1}  # the first keeps its id
    assert second_use["id"] != "call_0" and second_use["input"] == {"c": 2}
    second_result = turns[6]["content"][0]
    assert second_result == {"type": "tool_result", "tool_use_id": second_use["id"], "content": "3 °C"}
    # deterministic, and appending keeps the earlier export (provider prompt caches keep hitting)
    assert to_anthropic_messages(messages) == anthropic
    assert to_anthropic_messages(messages[:7])["messages"] == turns[:7]


def test_well_formed_messages_come_back_unchanged() -> None:
    messages = tool_conversation()
    assert paired_for_provider(messages) == messages


def test_changing_an_anthropic_export_leaves_the_stored_call_unchanged() -> None:
    """The export is the caller's to change (redact, annotate): nested arguments are copies, not shared."""
    call = ToolCall(
        id="call_1",
        name="book",
        arguments={"trip": {"city": "Paris", "nights": 2}, "guests": ["ana", "bo"], "note": "window"},
    )
    messages = [
        Message.create("user", "Book Paris."),
        Message.create("assistant", "", tool_calls=[call]),
        Message.create("tool", "booked", tool_call_id="call_1"),
    ]
    before = to_anthropic_messages(messages)
    body = to_anthropic_messages(messages)
    [block] = body["messages"][1]["content"]
    block["input"]["trip"]["city"] = "REDACTED"
    block["input"]["guests"].append("eve")
    block["input"]["note"] = "aisle"
    assert call.arguments == {
        "trip": {"city": "Paris", "nights": 2},
        "guests": ["ana", "bo"],
        "note": "window",
    }
    assert to_anthropic_messages(messages) == before
