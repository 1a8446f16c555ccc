"""Anthropic extended thinking with tool use: an assistant message carries its thinking blocks.

With thinking enabled, the API refuses a request whose assistant turn of ``tool_use`` blocks does not start
with the ``thinking`` / ``redacted_thinking`` blocks the model sent, signatures unchanged (HTTP 400
``Expected `thinking` or `redacted_thinking`, but found `tool_use```). The window keeps them with the
message (persisted conversations too), the Anthropic export puts them first in that turn, the OpenAI
export never shows them, and they count against the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import InvalidMessageError
from context_manager.core.messages import Message, ToolCall
from context_manager.core.provider_formats import to_anthropic_messages
from context_manager.core.tokens import get_token_counter
from tests.provider_rules import anthropic_violations, openai_violations

THINKING = {
    "type": "thinking",
    "thinking": "The user wants the weather: call the tool.",
    "signature": "EqQBCkYIAxgCIkD+sig==",
}
REDACTED = {
    "type": "redacted_thinking",
    "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr",
}


def response_content(call_id: str = "toolu_01A", turn: int = 0) -> list[dict[str, Any]]:
    """``response.content`` of a Claude response with thinking, text and a tool call."""
    return [
        dict(THINKING, thinking=f"{THINKING['thinking']} (turn {turn})"),
        REDACTED,
        {"type": "text", "text": "Let me check the weather."},
        {"type": "tool_use", "id": call_id, "name": "weather", "input": {"city": "Paris", "turn": turn}},
    ]


def tool_uses(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for block in content if block["type"] == "tool_use"]


async def add_tool_turn(manager: EnhancedContextManager, call_id: str, turn: int = 0) -> None:
    content = response_content(call_id, turn)
    await manager.add_message(
        "assistant", "Let me check the weather.", tool_calls=tool_uses(content), thinking=content
    )
    await manager.add_message("tool", f"21 °C, sunny (turn {turn})", tool_call_id=call_id)


async def test_the_anthropic_export_sends_the_thinking_blocks_first_and_openai_never(tmp_path: Path) -> None:
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("system", "You are helpful.")
        await manager.add_message("user", "Weather in Paris?")
        await add_tool_turn(manager, "toolu_01A")
        request = manager.get_context(format="anthropic")
        assert anthropic_violations(request) == []
        assistant = request["messages"][1]
        assert assistant["role"] == "assistant"
        assert assistant["content"] == [
            dict(THINKING, thinking=f"{THINKING['thinking']} (turn 0)"),
            REDACTED,
            {"type": "text", "text": "Let me check the weather."},
            {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Paris", "turn": 0}},
        ]
        openai = manager.get_context(format="openai")
        assert openai_violations(openai) == []
        assert "thinking" not in str(openai) and "signature" not in str(openai)
        responses = manager.get_context(format="openai_responses")
        assert "thinking" not in str(responses) and "signature" not in str(responses)


async def test_thinking_of_an_assistant_message_merged_into_a_turn_goes_before_the_turn_s_text() -> None:
    """Two assistant messages in a row make one Anthropic turn; the thinking must still open it."""
    window = ContextWindow(max_tokens=4000)
    await window.extend(
        [
            Message.create("user", "Weather in Paris?"),
            Message.create("assistant", "One moment."),
            Message.create(
                "assistant",
                "",
                tool_calls=[ToolCall("toolu_01A", "weather", {"city": "Paris"})],
                thinking=[THINKING],
            ),
            Message.create("tool", "21 °C", tool_call_id="toolu_01A"),
        ]
    )
    turn = to_anthropic_messages(window.messages)["messages"][1]
    assert [block["type"] for block in turn["content"]] == ["thinking", "text", "tool_use"]
    assert turn["content"][0] == THINKING
    assert anthropic_violations(to_anthropic_messages(window.messages)) == []


async def test_thinking_counts_against_the_budget() -> None:
    counter = get_token_counter()
    call = ToolCall("toolu_01A", "weather", {"city": "Paris"})
    plain = Message.create("assistant", "Checking.", tool_calls=[call])
    thinking = Message.create("assistant", "Checking.", tool_calls=[call], thinking=[THINKING, REDACTED])
    extra = counter.count(THINKING["thinking"]) + counter.count(REDACTED["data"])
    assert counter.count_message(thinking) == counter.count_message(plain) + extra
    window = ContextWindow(max_tokens=4000, counter=counter)
    await window.add(Message.create("user", "Weather?"))
    before = window.token_count
    await window.add(thinking)
    assert window.token_count - before == counter.count_message(thinking)


async def test_a_persisted_conversation_keeps_the_thinking_blocks(tmp_path: Path) -> None:
    config = ContextManagerConfig(storage_path=tmp_path / "storage", embedder="none")
    async with EnhancedContextManager(config, conversation_id="thinking") as first:
        await first.add_message("user", "Weather in Paris?")
        await add_tool_turn(first, "toolu_01A")
        exported = first.get_context(format="anthropic")
        tokens = first.get_context_summary()["token_count"]
    async with EnhancedContextManager(config, conversation_id="thinking") as again:
        assert again.get_context(format="anthropic") == exported
        assert again.get_context_summary()["token_count"] == tokens
        assert again.messages[1].thinking == (
            dict(THINKING, thinking=f"{THINKING['thinking']} (turn 0)"),
            REDACTED,
        )


async def test_compression_never_sends_a_tool_use_without_its_thinking(tmp_path: Path) -> None:
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none", max_tokens=700)
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "Track the weather every hour.")
        for turn in range(25):  # compresses several times
            await add_tool_turn(manager, f"toolu_{turn:02d}", turn)
            request = manager.get_context(format="anthropic")
            assert anthropic_violations(request) == [], request
            for message in request["messages"]:
                if tool_uses(message["content"]):
                    assert message["content"][0]["type"] == "thinking", message
            for budget in (200, 400):
                assert anthropic_violations(manager.get_context(format="anthropic", budget=budget)) == []
        assert manager.get_context_summary()["compression_count"] >= 2


@pytest.mark.parametrize(
    ("role", "thinking"),
    [
        ("user", [THINKING]),
        ("assistant", [{"type": "thinking", "thinking": "no signature"}]),
        ("assistant", [{"type": "redacted_thinking"}]),
        ("assistant", [{"type": "thinkng", "thinking": "typo", "signature": "s"}]),
        ("assistant", "a string"),
    ],
)
async def test_bad_thinking_is_refused_and_changes_nothing(tmp_path: Path, role: str, thinking: Any) -> None:
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "Hi")
        with pytest.raises(InvalidMessageError, match="thinking"):
            await manager.add_message(role, "text", thinking=thinking)
        assert len(manager.messages) == 1


async def test_a_whole_response_message_can_be_given_as_thinking() -> None:
    response = {"id": "msg_01", "role": "assistant", "content": response_content()}
    message = Message.create(
        "assistant", "Let me check the weather.", tool_calls=tool_uses(response["content"]), thinking=response
    )
    assert [block["type"] for block in message.thinking] == ["thinking", "redacted_thinking"]
    from anthropic.types import Message as AnthropicMessage  # the SDK's response object, as it comes

    sdk_response = AnthropicMessage.model_validate(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": response_content(),
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    )
    calls = [block for block in sdk_response.content if block.type == "tool_use"]
    for given in (sdk_response, sdk_response.content):
        from_sdk = Message.create("assistant", "Let me check the weather.", tool_calls=calls, thinking=given)
        assert from_sdk.thinking == message.thinking
    assert Message.create("assistant", "Hello").thinking == ()
    assert "thinking" not in Message.create("assistant", "Hello").to_dict()


async def test_execute_tool_calls_keeps_the_thinking_of_the_assistant_message_it_adds(tmp_path: Path) -> None:
    """The documented Anthropic loop: ``execute_tool_calls(tool_use blocks, content=..., thinking=...)``."""

    async def weather(city: str, turn: int) -> str:
        return f"sunny in {city}"

    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as manager:
        manager.tool_manager.register_function_tool("weather", weather, "The weather of a city.")
        await manager.add_message("user", "Weather in Paris?")
        content = response_content("toolu_01A")
        [result] = await manager.execute_tool_calls(
            tool_uses(content), content="Let me check the weather.", thinking=content
        )
        assert result.success, result
        turn = manager.get_context(format="anthropic")["messages"][1]
        kinds = [block["type"] for block in turn["content"]]
        assert kinds == ["thinking", "redacted_thinking", "text", "tool_use"]
        assert turn["content"][1] == REDACTED
        assert anthropic_violations(manager.get_context(format="anthropic")) == []


async def test_no_turn_of_thinking_alone_while_the_calls_wait_for_their_results() -> None:
    window = ContextWindow(max_tokens=4000)
    await window.add(Message.create("user", "Weather?"))
    call = ToolCall("toolu_01A", "weather", {"city": "Paris"})
    await window.add(Message.create("assistant", " ", tool_calls=[call], thinking=[THINKING]))
    body = to_anthropic_messages(window.messages)
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Weather?"}]}]
    await window.add(Message.create("tool", "sunny", tool_call_id="toolu_01A"))
    body = to_anthropic_messages(window.messages)
    assert [block["type"] for block in body["messages"][1]["content"]] == ["thinking", "tool_use"]
    assert anthropic_violations(body) == []


async def test_thinking_for_calls_already_in_the_window_is_never_dropped_silently(tmp_path: Path) -> None:
    """``add_message`` of the calls without thinking, then ``execute_tool_calls(..., thinking=...)``.

    The assistant message is not added again, so the thinking was dropped and the next Anthropic request
    (thinking enabled) refused with HTTP 400; it is refused now, before any tool runs.
    """
    ran: list[str] = []

    async def weather(city: str, turn: int) -> str:
        ran.append(city)
        return f"sunny in {city}"

    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as manager:
        manager.tool_manager.register_function_tool("weather", weather, "The weather of a city.")
        await manager.add_message("user", "Weather in Paris?")
        content = response_content("toolu_01A")
        await manager.add_message("assistant", "Let me check the weather.", tool_calls=tool_uses(content))
        with pytest.raises(InvalidMessageError, match="thinking.*add_message"):
            await manager.execute_tool_calls(tool_uses(content), thinking=content)
        assert ran == [] and len(manager.messages) == 2
        assert manager.pending_tool_calls()[0].id == "toolu_01A"
        # the same thinking as the message holds (added with it) is fine, as is none
        await manager.add_message("user", "And in Rome?")
        rome = response_content("toolu_01B", turn=1)
        await manager.add_message("assistant", "Checking Rome.", tool_calls=tool_uses(rome), thinking=rome)
        [result] = await manager.execute_tool_calls(tool_uses(rome), thinking=rome)
        assert result.success and ran == ["Paris"]
        [result] = await manager.execute_tool_calls(tool_uses(content))
        assert result.success


class _WordCounter:
    """A user's own counter (another provider's tokenizer): words, knowing nothing of thinking."""

    encoding_name = "words"

    def count(self, text: str) -> int:
        return len(text.split())

    def count_message(self, message: Message) -> int:
        return (
            3 + self.count(message.content) + sum(self.count(c.arguments_json()) for c in message.tool_calls)
        )


async def test_thinking_counts_against_the_budget_with_a_user_s_own_counter(tmp_path: Path) -> None:
    """A custom ``TokenCounter`` counts content and calls; the window adds the thinking's ``count()``."""
    counter = _WordCounter()
    call = ToolCall("toolu_01A", "weather", {"city": "Paris"})
    long_thinking = dict(THINKING, thinking="reasoning " * 300)
    window = ContextWindow(max_tokens=4000, counter=counter)
    await window.add(Message.create("user", "Weather?"))
    before = window.token_count
    await window.add(Message.create("assistant", "Checking.", tool_calls=[call], thinking=[long_thinking]))
    plain = counter.count_message(Message.create("assistant", "Checking.", tool_calls=[call]))
    assert window.token_count - before == plain + 300
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none", max_tokens=600)
    async with EnhancedContextManager(config, token_counter=counter) as manager:
        await manager.add_message("user", "Track the weather.")
        for turn in range(6):  # 300 words of thinking a turn: compresses, never over the budget
            content = response_content(f"toolu_{turn:02d}", turn)
            content[0] = dict(long_thinking)
            await manager.add_message(
                "assistant", "Checking.", tool_calls=tool_uses(content), thinking=content
            )
            await manager.add_message("tool", "sunny", tool_call_id=f"toolu_{turn:02d}")
            assert manager.get_context_summary()["token_count"] <= 600
        assert manager.get_context_summary()["compression_count"] >= 1


SECOND_THINKING = {
    "type": "thinking",
    "thinking": "Now the time in Tokyo.",
    "signature": "EqQBCkYIAxgCIkD+two==",
}


def interleaved_content() -> list[dict[str, Any]]:
    """``response.content`` of a Claude response with interleaved thinking: thinking between two calls."""
    return [
        THINKING,
        {"type": "text", "text": "Let me check both."},
        {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Paris"}},
        SECOND_THINKING,
        REDACTED,
        {"type": "tool_use", "id": "toolu_01B", "name": "clock", "input": {"city": "Tokyo"}},
    ]


async def test_interleaved_thinking_keeps_its_order_in_the_anthropic_export(tmp_path: Path) -> None:
    """Thinking, a call, thinking, a call in one response: the export sent all the thinking first
    (``[thinking, thinking, redacted, text, tool_use, tool_use]``), rearranging the blocks the API requires
    back unmodified in the turn of a tool-use loop. The turn is sent in the response's order now, also
    after the conversation is read back from its store."""
    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    content = interleaved_content()
    async with EnhancedContextManager(config, conversation_id="interleaved") as manager:
        await manager.add_message("user", "Weather in Paris and time in Tokyo?")
        await manager.add_message(
            "assistant", "Let me check both.", tool_calls=tool_uses(content), thinking=content
        )
        await manager.add_message("tool", "21 °C", tool_call_id="toolu_01A")
        await manager.add_message("tool", "09:00", tool_call_id="toolu_01B")
        body = manager.get_context(format="anthropic")
        assert body["messages"][1]["content"] == content  # the response's blocks, as sent
        assert anthropic_violations(body) == []
        assert openai_violations(manager.get_context()) == []
        tokens = manager.get_context_summary()["token_count"]
    async with EnhancedContextManager(config, conversation_id="interleaved") as again:
        assert again.get_context(format="anthropic") == body
        assert again.get_context_summary()["token_count"] == tokens


async def test_interleaved_thinking_survives_call_ids_made_again() -> None:
    """A server numbering calls per response (``call_0`` every turn) has the window rename the later
    calls; their places between the thinking blocks follow them."""
    window = ContextWindow(max_tokens=8000)
    for turn in range(2):
        content = [
            THINKING,
            {"type": "tool_use", "id": "call_0", "name": "weather", "input": {"turn": turn}},
            SECOND_THINKING,
            {"type": "tool_use", "id": "call_1", "name": "clock", "input": {"turn": turn}},
        ]
        await window.add(Message.create("user", f"Question {turn}"))
        await window.add(Message.create("assistant", "", tool_calls=tool_uses(content), thinking=content))
        await window.add(Message.create("tool", "sunny", tool_call_id="call_0"))
        await window.add(Message.create("tool", "09:00", tool_call_id="call_1"))
    body = to_anthropic_messages(window.messages)
    assert anthropic_violations(body) == []
    for turn in (1, 3):
        blocks = body["messages"][turn]["content"]
        assert [block["type"] for block in blocks] == ["thinking", "tool_use", "thinking", "tool_use"]
        assert [block["name"] for block in blocks if block["type"] == "tool_use"] == ["weather", "clock"]
        assert blocks[0] == THINKING and blocks[2] == SECOND_THINKING


async def test_two_responses_with_thinking_in_a_row_stay_two_assistant_turns() -> None:
    """Two assistant messages in a row merge into one turn; when both hold thinking (two responses), the
    turn carried two responses' thinking as one run (``[thinking, thinking, text, text, tool_use]``), a
    sequence no response made. A user turn of ``ANTHROPIC_CONTINUATION_TEXT`` separates them now, each
    turn as its response sent it."""
    from context_manager.core.provider_formats import ANTHROPIC_CONTINUATION_TEXT

    window = ContextWindow(max_tokens=8000)
    await window.add(Message.create("user", "Weather in Paris?"))
    await window.add(Message.create("assistant", "It is probably sunny.", thinking=[THINKING]))
    call = ToolCall("toolu_01C", "weather", {"city": "Paris"})
    await window.add(
        Message.create("assistant", "Let me check.", tool_calls=[call], thinking=[SECOND_THINKING, REDACTED])
    )
    await window.add(Message.create("tool", "21 °C", tool_call_id="toolu_01C"))
    turns = to_anthropic_messages(window.messages)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[1]["content"] == [THINKING, {"type": "text", "text": "It is probably sunny."}]
    assert turns[2]["content"] == [{"type": "text", "text": ANTHROPIC_CONTINUATION_TEXT}]
    assert [block["type"] for block in turns[3]["content"]] == [
        "thinking",
        "redacted_thinking",
        "text",
        "tool_use",
    ]
    assert anthropic_violations(to_anthropic_messages(window.messages)) == []


async def test_execute_tool_calls_keeps_interleaved_thinking_in_place(tmp_path: Path) -> None:
    """The documented loop with interleaved thinking, calls made again by id in a later turn (renamed in
    the window): each turn goes back as its response sent it; the same thinking given again for calls
    already in the window is taken (it is their message's)."""

    async def weather(city: str) -> str:
        return f"sunny in {city}"

    async def clock(city: str) -> str:
        return f"09:00 in {city}"

    config = ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")
    async with EnhancedContextManager(config) as manager:
        manager.tool_manager.register_function_tool("weather", weather, "The weather of a city.")
        manager.tool_manager.register_function_tool("clock", clock, "The time in a city.")
        content = interleaved_content()
        for turn in range(2):
            await manager.add_message("user", f"Weather in Paris and time in Tokyo? ({turn})")
            if turn:  # the calls added first, then run with the thinking given again
                await manager.add_message(
                    "assistant", "Let me check both.", tool_calls=tool_uses(content), thinking=content
                )
            results = await manager.execute_tool_calls(
                tool_uses(content), content="Let me check both.", thinking=content
            )
            assert all(result.success for result in results), results
        body = manager.get_context(format="anthropic")
        assert anthropic_violations(body) == []
        for at in (1, 3):
            blocks = body["messages"][at]["content"]
            assert [block["type"] for block in blocks] == [block["type"] for block in content]
            assert [block for block in blocks if block["type"] != "tool_use"] == [
                block for block in content if block["type"] != "tool_use"
            ]


SEARCH_USE = {
    "type": "server_tool_use",
    "id": "srvtoolu_01S",
    "name": "web_search",
    "input": {"query": "Paris weather"},
}
SEARCH_RESULT = {
    "type": "web_search_tool_result",
    "tool_use_id": "srvtoolu_01S",
    "content": [
        {
            "type": "web_search_result",
            "url": "https://example.com",
            "title": "Paris",
            "encrypted_content": "EqgfCioIARgBIiQ3",
        }
    ],
}
CALL = {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Paris"}}
SECOND_THINKING = dict(
    THINKING, thinking="The search found it; now the forecast.", signature="EqQBCkYIAxgCIkD+two=="
)


@pytest.mark.parametrize(
    "content",
    [
        # a web search between two thinking blocks: dropped, the two would read as one run of thinking
        [THINKING, SEARCH_USE, SEARCH_RESULT, SECOND_THINKING, {"type": "text", "text": "Sunny."}],
        # a web search in a tool-use turn, whose blocks the API needs back as they came
        [THINKING, SEARCH_USE, SEARCH_RESULT, {"type": "text", "text": "Checking."}, CALL],
        # a server call made with a client call (or paused: pause_turn) runs on the next request
        [{"type": "text", "text": "Checking."}, SEARCH_USE, CALL],
        [THINKING, SEARCH_USE],
    ],
    ids=["between-thinking", "tool-use-turn", "server-call-to-run", "paused"],
)
async def test_server_tool_blocks_the_next_request_needs_are_refused_not_dropped(content: list[Any]) -> None:
    """``thinking=response.content`` skipped server tool blocks (``server_tool_use``,
    ``web_search_tool_result`` ...) silently: the export then sent two runs of thinking as one, a tool-use
    turn rebuilt without its search, or lost a server call still to run. Refused now, naming the block."""
    window = ContextWindow(max_tokens=10_000, counter=get_token_counter())
    await window.add(Message.create("user", "Weather in Paris?"))
    calls = tool_uses(content)
    with pytest.raises(InvalidMessageError, match="server tool") as caught:
        Message.create("assistant", "Checking.", tool_calls=calls, thinking=content)
    assert caught.value.field == f"thinking[{content.index(SEARCH_USE)}]"
    from anthropic.types import Message as AnthropicMessage  # the SDK's objects, as they come

    sdk = AnthropicMessage.model_validate(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": content,
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    )
    with pytest.raises(InvalidMessageError, match="server tool"):
        Message.create("assistant", "Checking.", tool_calls=calls, thinking=sdk)
    assert len(window.messages) == 1


async def test_a_finished_web_search_answer_keeps_its_thinking_and_skips_the_search() -> None:
    """A response that searched and then answered (no call, no thinking after the search): nothing of it
    goes back in a tool-use loop, so its search blocks are skipped as its text blocks are."""
    content = [THINKING, SEARCH_USE, SEARCH_RESULT, {"type": "text", "text": "Sunny, 21 °C."}]
    message = Message.create("assistant", "Sunny, 21 °C.", thinking=content)
    assert message.thinking == (THINKING,)
    body = to_anthropic_messages([Message.create("user", "Weather in Paris?"), message])
    assert anthropic_violations(body) == []
