"""Provider messages as the SDKs and APIs shape them go in through ``add_messages`` and back out.

Chat Completions takes a message's ``content`` as a string or as a list of content parts: text parts
(``{"type": "text", "text": ...}``) for every role, image, audio and file parts for the user. The window
keeps text: text parts are joined (as the Responses API import joins its parts), anything else is refused
naming what is taken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import InvalidArgumentError, InvalidMessageError
from context_manager.core.messages import REASONING_METADATA_KEY, Message
from context_manager.core.provider_formats import to_anthropic_messages
from tests.provider_rules import openai_violations


def config(tmp_path: Path) -> ContextManagerConfig:
    return ContextManagerConfig(cache_path=tmp_path / "cache", embedder="none")


def chat_completions_input(messages: list[dict[str, Any]]) -> None:
    """The OpenAI SDK's own type of ``chat.completions.create(messages=...)`` takes the messages."""
    from openai.types.chat import ChatCompletionMessageParam

    TypeAdapter(list[ChatCompletionMessageParam]).validate_python(messages)


def text_parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text} for text in texts]


async def test_chat_completions_text_parts_are_their_text_for_every_role(tmp_path: Path) -> None:
    history: list[dict[str, Any]] = [
        {"role": "developer", "content": text_parts("Answer briefly.", "Use tools.")},
        {"role": "system", "content": text_parts("Be kind.")},
        {"role": "user", "content": text_parts("Weather in Paris?", "And in Rome?"), "name": "alice"},
        {
            "role": "assistant",
            "content": text_parts("Let me check."),
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": text_parts("Paris: 21 °C", "Rome: 25 °C")},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say more."}]},
    ]
    chat_completions_input(history)  # valid Chat Completions input, as the SDK types it
    async with EnhancedContextManager(config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 6
        assert [(m.role.value, m.content) for m in manager.messages] == [
            ("system", "Answer briefly.\nUse tools."),  # parts: a line break between
            ("system", "Be kind."),
            ("user", "Weather in Paris?\nAnd in Rome?"),
            ("assistant", "Let me check."),
            ("tool", "Paris: 21 °C\nRome: 25 °C"),
            ("assistant", "I cannot say more."),
        ]
        assert manager.messages[2].name == "alice"
        exported = manager.get_context("openai")
        assert openai_violations(exported) == []
        chat_completions_input(exported)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "text"},
        {"type": "text", "text": 42},
        "plain string part",
    ],
)
async def test_parts_other_than_text_are_refused_naming_what_is_taken(tmp_path: Path, part: Any) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Before")
        with pytest.raises(InvalidMessageError) as caught:
            await manager.add_messages(
                [
                    {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": [*text_parts("What is this?"), part]},
                ]
            )
        message = str(caught.value)
        assert "messages[1].content[1]" in message
        assert "text parts" in message and "images, audio and files" in message
        assert [m.content for m in manager.messages] == ["Before"]  # nothing of the batch added


def long_text(chars: int) -> str:
    words = [
        "the",
        "model",
        "weighs",
        "which",
        "tool",
        "answers",
        "the",
        "question",
        "and",
        "what",
        "it",
        "returns",
    ]
    text = " ".join(f"{words[i % len(words)]}{i % 7}" for i in range(chars // 5))
    return text[:chars]


async def test_long_thinking_and_call_arguments_are_counted_off_the_event_loop(tmp_path: Path) -> None:
    """A message's content longer than ``OFF_LOOP_CHARS`` is counted in a worker thread; a thinking block of
    a million characters (or tool call arguments as long) was counted on the loop: about 40 ms of the loop's
    CPU per add. They are counted in the thread too; the loop is held well under 10 ms (best of 3 runs)."""
    from tests.loop_support import longest_loop_step

    text = long_text(1_000_000)
    settings = config(tmp_path)
    settings.max_tokens = 2_000_000
    async with EnhancedContextManager(settings) as manager:
        await manager.add_message("user", "Think hard.")
        longest: dict[str, float] = {}
        for attempt in range(3):
            thinking = [{"type": "thinking", "thinking": f"{attempt} {text}", "signature": "EqQBsig=="}]
            _, step = await longest_loop_step(
                lambda thinking=thinking: manager.add_message("assistant", "Done.", thinking=thinking)
            )
            longest["add_message thinking"] = min(longest.get("add_message thinking", 1.0), step)
            redacted = [{"type": "redacted_thinking", "data": f"{attempt} {text}"}]
            batch = [
                {"role": "user", "content": "Again."},
                {"role": "assistant", "content": "Ok.", "thinking": redacted},
            ]
            _, step = await longest_loop_step(lambda batch=batch: manager.add_messages(batch))
            longest["add_messages redacted"] = min(longest.get("add_messages redacted", 1.0), step)
            call = {"id": f"call_{attempt}", "name": "write_file", "arguments": {"text": f"{attempt} {text}"}}
            _, step = await longest_loop_step(
                lambda call=call: manager.add_message("assistant", "", tool_calls=[call])
            )
            longest["add_message arguments"] = min(longest.get("add_message arguments", 1.0), step)
            await manager.add_message("tool", "written", tool_call_id=f"call_{attempt}")
        assert max(longest.values()) < 0.010, {
            key: f"{value * 1000:.1f} ms" for key, value in longest.items()
        }
        exact = manager.context_window._counter  # the counts are the exact ones, wherever they were made
        assert all(m.token_count == exact.count_message(m) for m in manager.messages)


def search_model_response() -> Any:
    """A Chat Completions response of a search model: its message carries ``url_citation`` annotations."""
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-search-preview",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {
                        "role": "assistant",
                        "content": "Paris is 21 °C today (meteo.fr).",
                        "refusal": None,
                        "annotations": [
                            {
                                "type": "url_citation",
                                "url_citation": {
                                    "start_index": 20,
                                    "end_index": 31,
                                    "title": "Météo Paris",
                                    "url": "https://meteo.fr/paris",
                                },
                            }
                        ],
                    },
                }
            ],
        }
    )


async def test_a_response_message_with_url_citations_goes_in_as_its_text(tmp_path: Path) -> None:
    """A search model's message carries ``annotations`` (url citations): output only, the API takes none
    back (``ChatCompletionAssistantMessageParam`` has no such field; the Responses import already leaves
    its ``output_text`` annotations out). The message, its SDK object or its dump, was refused whole."""
    message = search_model_response().choices[0].message
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Weather in Paris?")
        assert await manager.add_messages([message]) == 1
        assert await manager.add_messages([message.model_dump()]) == 1
        assert await manager.add_messages([message.model_dump(exclude_none=True)]) == 1
        texts = [m.content for m in manager.messages[1:]]
        assert texts == ["Paris is 21 °C today (meteo.fr)."] * 3
        assert all(not m.metadata for m in manager.messages)
        exported = manager.get_context("openai")
        assert openai_violations(exported) == []
        chat_completions_input(exported)


def anthropic_response(content: list[dict[str, Any]], stop_reason: str = "tool_use") -> Any:
    """An Anthropic SDK ``Message`` (what ``client.messages.create`` returns), its blocks SDK objects."""
    from anthropic.types import Message as AnthropicMessage

    return AnthropicMessage.model_validate(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 20},
            "content": content,
        }
    )


THINKING_1 = {"type": "thinking", "thinking": "Two lookups.", "signature": "EqQBsig1=="}
THINKING_2 = {"type": "thinking", "thinking": "Now the clock.", "signature": "EqQBsig2=="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
CALLING = [
    THINKING_1,
    {"type": "text", "text": "Let me check both."},
    {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Paris"}},
    THINKING_2,
    REDACTED,
    {"type": "tool_use", "id": "toolu_01B", "name": "clock", "input": {"city": "Tokyo"}},
]
RESULTS = [
    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "21 °C"},
    {
        "type": "tool_result",
        "tool_use_id": "toolu_01B",
        "content": [{"type": "text", "text": "clock"}, {"type": "text", "text": "offline"}],
        "is_error": True,
    },
]


def anthropic_history() -> list[Any]:
    """An Anthropic agent loop's ``messages`` as its docs build it: ``response.content`` (SDK block objects)
    appended as the assistant turn, the results as a user turn of ``tool_result`` blocks."""
    calling = anthropic_response(CALLING)
    final = anthropic_response([{"type": "text", "text": "Paris: 21 °C; the clock is offline."}], "end_turn")
    return [
        {"role": "user", "content": "Weather in Paris and time in Tokyo?"},
        {"role": "assistant", "content": calling.content},
        {"role": "user", "content": RESULTS},
        {"role": "assistant", "content": final.content},
    ]


def anthropic_accepts(body: dict[str, Any]) -> None:
    """The Anthropic SDK's own type of ``messages.create(messages=...)`` takes the turns."""
    from anthropic.types import MessageParam

    TypeAdapter(list[MessageParam]).validate_python(body["messages"])


async def test_an_anthropic_history_goes_in_and_comes_back_out_as_it_was(tmp_path: Path) -> None:
    """``add_messages`` took Chat Completions and Responses API history, but refused Anthropic's (``content``
    a list of blocks: "content: got [ThinkingBlock(...), ...]; allowed a str"). A turn's text blocks are its
    text, ``tool_use`` blocks its calls, ``thinking`` blocks its thinking (interleaved: in place), and a
    user turn's ``tool_result`` blocks tool messages (``is_error`` kept); the Anthropic export gives the
    turns back."""
    from tests.provider_rules import anthropic_violations

    history = anthropic_history()
    async with EnhancedContextManager(config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 5
        messages = manager.messages
        assert [(m.role.value, m.content) for m in messages] == [
            ("user", "Weather in Paris and time in Tokyo?"),
            ("assistant", "Let me check both."),
            ("tool", "21 °C"),
            ("tool", "clock\noffline"),
            ("assistant", "Paris: 21 °C; the clock is offline."),
        ]
        assert [call.id for call in messages[1].tool_calls] == ["toolu_01A", "toolu_01B"]
        assert messages[3].metadata == {"is_error": True}
        body = manager.get_context(format="anthropic")
        assert anthropic_violations(body) == []
        anthropic_accepts(body)
        assert body["messages"][1]["content"] == CALLING  # the response's blocks, in its order
        assert body["messages"][2]["content"] == [
            RESULTS[0],
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01B",
                "content": "clock\noffline",
                "is_error": True,
            },
        ]
        assert openai_violations(manager.get_context("openai")) == []
    async with EnhancedContextManager(config(tmp_path / "again")) as again:  # the export goes back in
        assert await again.add_messages(body["messages"]) == 5
        assert again.get_context(format="anthropic") == body


async def test_anthropic_cache_control_is_kept_and_sent_back_where_its_block_is_unchanged(
    tmp_path: Path,
) -> None:
    """``cache_control`` on imported Anthropic blocks (the prompt-cache breakpoints a client set) was
    dropped: the export of the same history cached nothing. A breakpoint on the block that ends a message
    (a user turn's last text, a ``tool_result``, an assistant turn's last call or text) is kept in the
    message's metadata and put back on that message's block by the Anthropic export, through the real
    Anthropic client; the OpenAI export leaves it out, a message the window cut loses it."""
    from anthropic import AsyncAnthropic

    from context_manager.core.compression.truncation import TRUNCATED_METADATA_KEY
    from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY, Message
    from context_manager.core.provider_formats import to_anthropic_messages
    from tests.chat_completions_server import running_server
    from tests.provider_rules import anthropic_violations

    ephemeral = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    call = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
    history: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Long instructions.", "cache_control": ephemeral},  # not its last
                {"type": "text", "text": "Weather in Paris?", "cache_control": hour},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Checking."}, {**call, "cache_control": hour}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "21 °C",
                    "cache_control": ephemeral,
                }
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "21 °C in Paris.", "cache_control": ephemeral}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
    ]
    anthropic_accepts({"messages": history})
    settings = config(tmp_path)
    async with EnhancedContextManager(settings, conversation_id="cached") as manager:
        assert await manager.add_messages(history) == 5
        kept = [m.metadata.get(ANTHROPIC_CACHE_CONTROL_METADATA_KEY) for m in manager.messages]
        assert kept == [hour, hour, ephemeral, ephemeral, None]
        body = manager.get_context(format="anthropic")
        assert anthropic_violations(body) == []
        turns = body["messages"]
        assert turns[0]["content"] == [
            {"type": "text", "text": "Long instructions.\nWeather in Paris?", "cache_control": hour}
        ]
        assert turns[1]["content"] == [{"type": "text", "text": "Checking."}, {**call, "cache_control": hour}]
        assert turns[2]["content"][0]["cache_control"] == ephemeral
        assert turns[3]["content"] == [
            {"type": "text", "text": "21 °C in Paris.", "cache_control": ephemeral}
        ]
        assert "cache_control" not in turns[4]["content"][0]
        assert "cache_control" not in json.dumps(manager.get_context("openai"))
        with running_server() as server:
            client = AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test-key", max_retries=0)
            await client.messages.create(model="claude-test", max_tokens=50, messages=turns)
            await client.close()
            assert server.requests[-1].body["messages"] == turns  # sent as exported
    async with EnhancedContextManager(settings, conversation_id="cached") as again:
        assert again.get_context(format="anthropic") == body  # persisted with the messages
    async with EnhancedContextManager(config(tmp_path / "round-trip")) as copy:
        assert await copy.add_messages(body["messages"]) == 5  # the export goes back in as it came out
        assert copy.get_context(format="anthropic") == body
    # a message the window cut: its copy's text is not the block that was marked
    cut = Message.create(
        "user",
        "Weather in [... 40 tokens omitted ...] Paris?",
        metadata={
            ANTHROPIC_CACHE_CONTROL_METADATA_KEY: ephemeral,
            TRUNCATED_METADATA_KEY: {
                "original_tokens": 50,
                "omitted_tokens": 40,
                "head_chars": 10,
                "tail_chars": 7,
            },
        },
    )
    assert "cache_control" not in to_anthropic_messages([cut])["messages"][0]["content"][0]
    # the API takes at most 4 breakpoints in a request: the latest 4 are sent
    many = [
        Message.create("user", f"Question {n}", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: ephemeral})
        for n in range(6)
    ]
    [turn] = to_anthropic_messages(many)["messages"]
    assert ["cache_control" in block for block in turn["content"]] == [False, False, True, True, True, True]
    with pytest.raises(InvalidMessageError, match=r"^messages\[0\]\.content\[0\]\.cache_control: got 'yes'"):
        async with EnhancedContextManager(config(tmp_path / "bad")) as manager:
            await manager.add_messages(
                [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": "yes"}]}]
            )


async def test_anthropic_cache_control_breakpoints_kept_from_several_requests_keep_the_ttl_order(
    tmp_path: Path,
) -> None:
    """The API refuses a 1-hour ``cache_control`` after a 5-minute one. Breakpoints imported by several
    ``add_messages`` calls (each request valid alone: a 5-minute one first, a 1-hour one later) were all
    sent back, in that refused order; a 5-minute breakpoint before a later 1-hour one is left out now."""
    five = {"type": "ephemeral"}
    five_named = {"type": "ephemeral", "ttl": "5m"}
    hour = {"type": "ephemeral", "ttl": "1h"}

    def said(text: str, cache_control: dict[str, Any]) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": cache_control}]}

    async with EnhancedContextManager(config(tmp_path)) as manager:
        for text, cache_control in [("Hi", five), ("Doc", hour), ("More", five_named), ("Then", five)]:
            await manager.add_messages([said(text, cache_control)])
            await manager.add_message("assistant", f"Read {text}.")
        turns = manager.get_context(format="anthropic")["messages"]
        marks = [block.get("cache_control") for turn in turns for block in turn["content"]]
        assert [mark for mark in marks if mark] == [hour, five_named, five]  # the first 5-minute one went
        assert turns[0]["content"] == [{"type": "text", "text": "Hi"}]


async def test_a_cached_system_prompt_keeps_its_breakpoint_within_the_four_a_request_takes(
    tmp_path: Path,
) -> None:
    """An Anthropic request's ``system`` blocks added as a system message lost their ``cache_control`` (read
    as Chat Completions text parts), and the export sent the latest 4 breakpoints of the turns, leaving no
    room for one on ``system``: the cached system prompt, the prefix every request shares, was no longer
    cached. The system message keeps its breakpoint and the export puts it back (``system`` then a list of
    text blocks), first among the 4 the API takes; the turns keep their latest 3, none of a longer ``ttl``
    than the system's (the API refuses a 1-hour breakpoint after a 5-minute one)."""
    from anthropic import AsyncAnthropic

    from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY
    from tests.chat_completions_server import running_server
    from tests.provider_rules import anthropic_violations

    five = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    system = [
        {"type": "text", "text": "You answer questions about the attached manual."},
        {"type": "text", "text": "Manual: ...", "cache_control": hour},
    ]
    turns = [
        {"role": role, "content": [{"type": "text", "text": f"{role} {n}", "cache_control": five}]}
        for n in range(3)
        for role in ("user", "assistant")
    ] + [{"role": "user", "content": [{"type": "text", "text": "And chapter 4?"}]}]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        assert await manager.add_messages([{"role": "system", "content": system}, *turns]) == 8
        [prompt] = [m for m in manager.messages if m.role.value == "system"]
        assert prompt.content == "You answer questions about the attached manual.\nManual: ..."
        assert prompt.metadata == {ANTHROPIC_CACHE_CONTROL_METADATA_KEY: hour}
        body = manager.get_context(format="anthropic")
        assert body["system"] == [{"type": "text", "text": prompt.content, "cache_control": hour}]
        marks = [block.get("cache_control") for turn in body["messages"] for block in turn["content"]]
        assert marks == [None, None, None, five, five, five, None]  # the latest 3 with the system's: 4
        assert anthropic_violations(body) == []
        assert manager.get_context("openai")[0] == {"role": "system", "content": prompt.content}
        with running_server() as server:
            client = AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test-key", max_retries=0)
            await client.messages.create(model="claude-test", max_tokens=50, **body)
            await client.close()
            assert server.requests[-1].body["system"] == body["system"]  # sent as exported
    async with EnhancedContextManager(config(tmp_path / "again")) as again:  # the export goes back in
        await again.add_messages([{"role": "system", "content": body["system"]}, *body["messages"]])
        assert again.get_context(format="anthropic") == body
    # a 5-minute system breakpoint: the turns' 1-hour ones after it would be refused, so they go
    async with EnhancedContextManager(config(tmp_path / "short")) as short:
        await short.add_messages(
            [
                {"role": "system", "content": [{"type": "text", "text": "Rules.", "cache_control": five}]},
                {"role": "user", "content": [{"type": "text", "text": "Doc", "cache_control": hour}]},
                {"role": "assistant", "content": "Read."},
                {"role": "user", "content": [{"type": "text", "text": "Q", "cache_control": five}]},
            ]
        )
        body = short.get_context(format="anthropic")
        marks = [block.get("cache_control") for turn in body["messages"] for block in turn["content"]]
        assert body["system"][0]["cache_control"] == five and marks == [None, None, five]
        assert anthropic_violations(body) == []
    # five system messages marked (added one by one): the latest 4 of them, none of the turns'
    messages = [
        Message.create("system", f"Part {n}.", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: five})
        for n in range(5)
    ] + [Message.create("user", "Q", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: five})]
    body = to_anthropic_messages(messages)
    assert ["cache_control" in block for block in body["system"]] == [False, True, True, True, True]
    assert "cache_control" not in body["messages"][0]["content"][0]
    assert anthropic_violations(body) == []
    # a system message of blocks with a breakpoint before its last one: it ends a system message, the
    # block after it another; a block other than text is refused, nothing added
    plain = [{"type": "text", "text": "A", "cache_control": five}, {"type": "text", "text": "B"}]
    async with EnhancedContextManager(config(tmp_path / "plain")) as manager:
        await manager.add_messages([{"role": "system", "content": plain}, {"role": "user", "content": "Hi"}])
        assert manager.get_context(format="anthropic")["system"] == plain
        with pytest.raises(InvalidMessageError, match=r"^messages\[0\]\.content\[1\]: got .*text blocks"):
            await manager.add_messages(
                [{"role": "system", "content": [plain[0], {"type": "image", "source": {}}]}]
            )
        assert len(manager.messages) == 3


async def test_a_system_prompt_with_its_breakpoint_before_its_last_block_keeps_it(tmp_path: Path) -> None:
    """The export's ``system`` is a text block per system message: a cached manual then today's date is
    ``[{"text": manual, "cache_control": ...}, {"text": date}]``. Added back as a system message, as the
    docs say, its texts were joined and the last block's breakpoint alone kept: the manual's was dropped,
    and the export sent ``system`` as a string, nothing cached (so too a request's own system prompt cached
    up to a block before its last, or at two blocks: the earlier breakpoint dropped). A block with a
    ``cache_control`` ends a system message now: each breakpoint stays on the block that ends its text."""
    from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY
    from tests.provider_rules import anthropic_violations

    five = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message(
            "system", "Manual: ...", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: hour}
        )
        await manager.add_message("system", "Today is Monday.")
        await manager.add_message("user", "Hi")
        body = manager.get_context(format="anthropic")
    assert body["system"] == [
        {"type": "text", "text": "Manual: ...", "cache_control": hour},
        {"type": "text", "text": "Today is Monday."},
    ]
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        assert (
            await again.add_messages([{"role": "system", "content": body["system"]}, *body["messages"]]) == 3
        )
        assert again.get_context(format="anthropic") == body
    system = [
        {"type": "text", "text": "Tools guide."},
        {"type": "text", "text": "Manual: ...", "cache_control": hour},
        {"type": "text", "text": "Answer briefly.", "cache_control": five},
    ]
    async with EnhancedContextManager(config(tmp_path / "two")) as manager:
        assert (
            await manager.add_messages(
                [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
            )
            == 3
        )
        kept = [(m.content, m.metadata.get(ANTHROPIC_CACHE_CONTROL_METADATA_KEY)) for m in manager.messages]
        assert kept == [("Tools guide.\nManual: ...", hour), ("Answer briefly.", five), ("Hi", None)]
        body = manager.get_context(format="anthropic")
        assert body["system"] == [
            {"type": "text", "text": "Tools guide.\nManual: ...", "cache_control": hour},
            {"type": "text", "text": "Answer briefly.", "cache_control": five},
        ]
        assert anthropic_violations(body) == []


async def test_langchain_messages_keep_the_cache_control_langchain_anthropic_sends(tmp_path: Path) -> None:
    """langchain-anthropic users mark prompt-cache breakpoints on content blocks (``HumanMessage(content=
    [{"type": "text", "text": ..., "cache_control": {"type": "ephemeral"}}])``, on a ``SystemMessage`` too)
    or in ``additional_kwargs["cache_control"]`` (a ``ToolMessage``); ``add_messages`` dropped them, so the
    Anthropic export of the same conversation cached nothing. They are kept as an Anthropic import keeps
    them and the export puts them back."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage, messages_to_dict

    from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY
    from tests.provider_rules import anthropic_violations

    five = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    history = [
        SystemMessage(content=[{"type": "text", "text": "Be brief.", "cache_control": hour}]),
        HumanMessage(content=[{"type": "text", "text": "Weather in Paris?", "cache_control": five}]),
        AIMessage(
            content=[
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}, "cache_control": five},
            ],
            tool_calls=[{"id": "toolu_1", "name": "weather", "args": {}}],
        ),
        ToolMessage(content="21 °C", tool_call_id="toolu_1", additional_kwargs={"cache_control": five}),
        AIMessage(content=[{"type": "text", "text": "21 °C.", "cache_control": five}]),
        HumanMessage(content=[{"type": "text", "text": "Thanks", "cache_control": {}}]),  # empty: none
    ]
    for given in (history, messages_to_dict(history)):
        async with EnhancedContextManager(config(tmp_path / str(len(str(given))))) as manager:
            assert await manager.add_messages(given) == 6
            kept = [m.metadata.get(ANTHROPIC_CACHE_CONTROL_METADATA_KEY) for m in manager.messages]
            assert kept == [hour, five, five, five, five, None]
            body = manager.get_context(format="anthropic")
            assert body["system"] == [{"type": "text", "text": "Be brief.", "cache_control": hour}]
            turns = body["messages"]
            assert turns[0]["content"] == [{"type": "text", "text": "Weather in Paris?"}]  # 5th of 5: out
            assert turns[1]["content"][-1]["cache_control"] == five
            assert turns[2]["content"][0]["cache_control"] == five
            assert turns[3]["content"] == [{"type": "text", "text": "21 °C.", "cache_control": five}]
            assert anthropic_violations(body) == []
    async with EnhancedContextManager(config(tmp_path / "bad")) as manager:
        bad = HumanMessage(content="Hi", additional_kwargs={"cache_control": "yes"})
        with pytest.raises(InvalidMessageError, match=r"^messages\[0\]\.additional_kwargs\.cache_control"):
            await manager.add_messages([bad])
        assert manager.messages == ()


async def test_an_anthropic_export_converted_to_langchain_messages_goes_back_in_as_it_was(
    tmp_path: Path,
) -> None:
    """A langchain-anthropic user sends the Anthropic export through LangChain (``convert_to_messages``,
    the cache breakpoints kept in the blocks). Added back, its ``AIMessage`` of ``tool_use`` blocks (its
    ``tool_calls`` empty) lost its calls, and its ``HumanMessage`` of ``tool_result`` blocks was refused
    ("got {'type': 'tool_result' ...}; allowed a string, or text parts"). They are read as the Anthropic
    turns they hold, as ``convert_to_openai_messages`` reads them: the same export comes out."""
    from langchain_core.messages import SystemMessage, convert_to_messages

    from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY

    hour = {"type": "ephemeral", "ttl": "1h"}
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message(
            "system", "Be brief.", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: hour}
        )
        await manager.add_messages(anthropic_history())
        await manager.add_message("user", "Thanks", metadata={ANTHROPIC_CACHE_CONTROL_METADATA_KEY: hour})
        body = manager.get_context(format="anthropic")
        held = [(m.role, m.content, m.tool_calls, m.tool_call_id, m.metadata) for m in manager.messages]
    langchain = [SystemMessage(content=body["system"]), *convert_to_messages(body["messages"])]
    assert [type(m).__name__ for m in langchain][2:4] == ["AIMessage", "HumanMessage"]
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        assert await again.add_messages(langchain) == len(held)
        assert [(m.role, m.content, m.tool_calls, m.tool_call_id, m.metadata) for m in again.messages] == held
        assert again.get_context(format="anthropic") == body


async def test_a_langchain_message_read_as_an_anthropic_turn_keeps_what_langchain_messages_keep(
    tmp_path: Path,
) -> None:
    """An ``AIMessage`` of ``tool_use`` blocks without ``tool_calls`` (or a ``HumanMessage`` of
    ``tool_result`` blocks) is read as the Anthropic turn it holds; that turn was built of its blocks
    alone, so such an ``AIMessage`` with ``invalid_tool_calls`` was taken (its broken call held with the
    block's ``input``) where every other ``AIMessage`` with them is refused, and its ``name`` and
    langchain-deepseek's ``reasoning_content`` were dropped where every other message keeps them."""
    from langchain_core.messages import AIMessage, HumanMessage

    use = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}
    broken = {"name": "weather", "args": '{"city": ', "id": "toolu_1", "error": "no JSON"}
    async with EnhancedContextManager(config(tmp_path)) as manager:
        with pytest.raises(InvalidMessageError, match=r"^messages\[1\]\.invalid_tool_calls: .*JSON object"):
            await manager.add_messages(
                [HumanMessage("Hi"), AIMessage(content=[use], invalid_tool_calls=[broken])]
            )
        assert manager.messages == ()
        ai = AIMessage(content=[use], name="forecaster", additional_kwargs={"reasoning_content": "A lookup."})
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 °C"}
        assert (
            await manager.add_messages([HumanMessage("Hi"), ai, HumanMessage([result], name="weather")]) == 3
        )
        _, call, answer = manager.messages
        assert (call.name, call.metadata[REASONING_METADATA_KEY], [c.id for c in call.tool_calls]) == (
            "forecaster",
            {"reasoning_content": "A lookup."},
            ["toolu_1"],
        )
        assert (answer.role.value, answer.tool_call_id, answer.name) == ("tool", "toolu_1", "weather")


async def test_an_openai_message_of_text_parts_with_cache_control_is_still_read_as_openai(
    tmp_path: Path,
) -> None:
    """A text part with ``cache_control`` made a Chat Completions message (OpenRouter and LiteLLM take
    that shape) read as an Anthropic turn: its image part was refused naming Anthropic blocks, an empty
    ``cache_control`` ({}) refused where it had been ignored."""
    cc = {"type": "ephemeral"}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    async with EnhancedContextManager(config(tmp_path)) as manager:
        with pytest.raises(InvalidMessageError, match=r"images, audio and files are refused"):
            await manager.add_messages(
                [{"role": "user", "content": [{"type": "text", "text": "Look", "cache_control": cc}, image]}]
            )
        empty = {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]}
        assert await manager.add_messages([empty]) == 1
        assert manager.messages[-1].content == "Hi" and manager.messages[-1].metadata == {}


async def test_an_anthropic_response_object_goes_in_as_its_assistant_turn(tmp_path: Path) -> None:
    response = anthropic_response(CALLING)
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Weather in Paris and time in Tokyo?")
        assert await manager.add_messages([response]) == 1
        assert await manager.add_messages([{"role": "user", "content": RESULTS}]) == 2
        turns = manager.get_context(format="anthropic")["messages"]
        assert turns[1] == {"role": "assistant", "content": CALLING}


@pytest.mark.parametrize("dump", [{}, {"exclude_none": True}, {"mode": "json"}])
async def test_an_anthropic_response_saved_as_a_dict_goes_in_as_its_assistant_turn(
    tmp_path: Path, dump: dict[str, Any]
) -> None:
    """A response kept as ``response.model_dump()`` (a JSON history) was refused for its own fields ("id:
    got 'msg_01'; allowed one of metadata, ...", or "container: got None"), and a text-only one was read
    as a Responses API item; it goes in as the response object does: its turn, not its id or usage."""
    calling = anthropic_response(CALLING).model_dump(**dump)
    final = anthropic_response([{"type": "text", "text": "Paris: 21 °C."}], "end_turn").model_dump(**dump)
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Weather in Paris and time in Tokyo?")
        assert await manager.add_messages([calling, {"role": "user", "content": RESULTS}, final]) == 4
        assert [(m.role.value, m.content) for m in manager.messages[1:]] == [
            ("assistant", "Let me check both."),
            ("tool", "21 °C"),
            ("tool", "clock\noffline"),
            ("assistant", "Paris: 21 °C."),
        ]
        assert manager.messages[1].metadata == {}
        turns = manager.get_context(format="anthropic")["messages"]
        assert turns[1] == {"role": "assistant", "content": CALLING}
        assert turns[3] == {"role": "assistant", "content": [{"type": "text", "text": "Paris: 21 °C."}]}


@pytest.mark.parametrize(
    ("turn", "where"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                    {"type": "text", "text": "What is this?"},
                ],
            },
            "messages[1].content[0]",
        ),
        (
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "iVBO"}}],
                    }
                ],
            },
            "messages[1].content[0].content[0]",
        ),
        (
            {
                "role": "assistant",
                "content": [
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                    {"type": "text", "text": "Found it."},
                ],
            },
            "messages[1].content[0]",
        ),
    ],
)
async def test_anthropic_blocks_the_window_cannot_hold_are_refused_naming_them(
    tmp_path: Path, turn: dict[str, Any], where: str
) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Before")
        with pytest.raises(InvalidMessageError) as caught:
            await manager.add_messages([{"role": "assistant", "content": "Sure."}, turn])
        assert where in str(caught.value)
        assert [m.content for m in manager.messages] == ["Before"]


async def test_the_export_s_filler_user_turn_does_not_come_back_as_a_message(tmp_path: Path) -> None:
    """The Anthropic export puts a user turn of ``ANTHROPIC_CONTINUATION_TEXT`` before an assistant turn
    that would come first, or between two responses with thinking; read back, it is not a user message."""
    from context_manager.core.provider_formats import ANTHROPIC_CONTINUATION_TEXT

    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("assistant", "Hello, how can I help?")
        await manager.add_message("user", "Weather?")
        await manager.add_message("assistant", "Probably sunny.", thinking=[THINKING_1])
        await manager.add_message("assistant", "Checking is better.", thinking=[THINKING_2])
        body = manager.get_context(format="anthropic")
        fillers = [
            turn for turn in body["messages"] if turn["content"][0].get("text") == ANTHROPIC_CONTINUATION_TEXT
        ]
        assert len(fillers) == 2
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        assert await again.add_messages(body["messages"]) == 4
        assert [m.content for m in again.messages] == [
            "Hello, how can I help?",
            "Weather?",
            "Probably sunny.",
            "Checking is better.",
        ]
        assert again.get_context(format="anthropic") == body


async def test_a_user_message_of_the_filler_s_text_comes_back_where_the_export_inserts_none(
    tmp_path: Path,
) -> None:
    """A user message whose text is ``ANTHROPIC_CONTINUATION_TEXT`` was dropped when the export was read
    back (its turn looks like the filler), and the two assistant turns around it then merged on export.
    Only where the export inserts its filler (first before an assistant turn, alone, or between two
    assistant turns with thinking) is such a turn taken for it; elsewhere it is the user's message."""
    from context_manager.core.provider_formats import ANTHROPIC_CONTINUATION_TEXT

    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("system", "Be brief.")
        await manager.add_message("assistant", "Hello, how can I help?")  # the export inserts a filler first
        await manager.add_message("user", ANTHROPIC_CONTINUATION_TEXT)
        await manager.add_message("assistant", "Go on.")
        await manager.add_message("user", ANTHROPIC_CONTINUATION_TEXT)
        await manager.add_message("assistant", "Probably sunny.", thinking=[THINKING_1])
        await manager.add_message("user", ANTHROPIC_CONTINUATION_TEXT)  # between thinking and a plain answer
        await manager.add_message("assistant", "Sunny.")
        body = manager.get_context(format="anthropic")
        contents = [(m.role.value, m.content) for m in manager.messages]
    assert [turn["role"] for turn in body["messages"]] == ["user", "assistant"] * 4
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        # the export's system text goes back as a system message, before the turns
        system = {"role": "system", "content": body["system"]}
        assert await again.add_messages([system, *body["messages"]]) == 8
        assert [(m.role.value, m.content) for m in again.messages] == contents
        assert again.get_context(format="anthropic") == body


def reasoning_server_response(**reasoning: Any) -> Any:
    """A Chat Completions response of an OpenAI-compatible reasoning server (DeepSeek, vLLM, OpenRouter):
    its message carries the model's reasoning beside ``content`` (a field the OpenAI SDK keeps as extra)."""
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "deepseek-reasoner",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "logprobs": None,
                    "message": {
                        "role": "assistant",
                        "content": "Let me check.",
                        "refusal": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                            }
                        ],
                        **reasoning,
                    },
                }
            ],
        }
    )


@pytest.mark.parametrize(
    "reasoning",
    [
        {"reasoning_content": "The user wants the weather: call the tool."},  # DeepSeek, vLLM
        {"reasoning": "The user wants the weather: call the tool."},  # vLLM >= 0.10, OpenRouter
        {
            "reasoning": "The user wants the weather.",
            "reasoning_details": [{"type": "reasoning.text", "text": "The user wants the weather."}],
        },  # OpenRouter
    ],
)
async def test_a_reasoning_server_s_reasoning_is_kept_and_sent_back_by_the_openai_export(
    tmp_path: Path, reasoning: dict[str, Any]
) -> None:
    """DeepSeek's thinking mode refuses the next request (HTTP 400) unless an assistant message that called
    tools is sent back with its ``reasoning_content``; the window dropped it, so no export had it. The
    reasoning fields of the message (DeepSeek's, vLLM's, OpenRouter's) are kept in its metadata and the
    OpenAI export writes them back as they came, on that message only; persisted, they come back too."""
    message = reasoning_server_response(**reasoning).choices[0].message
    settings = config(tmp_path)
    async with EnhancedContextManager(settings, conversation_id="deepseek") as manager:
        await manager.add_message("user", "Weather in Paris?")
        assert await manager.add_messages([message]) == 1
        await manager.add_message("tool", "21 °C", tool_call_id="call_1")
        assert await manager.add_messages([message.model_dump()]) == 1  # the SDK object's dump too
        await manager.add_message("tool", "22 °C", tool_call_id="call_1")
        await manager.add_message("assistant", "Sunny, 22 °C.")  # no reasoning given: none invented
        exported = manager.get_context("openai")
        assert [{key: m[key] for key in reasoning if key in m} for m in exported] == [
            {},
            reasoning,
            {},
            reasoning,
            {},
            {},
        ]
        assert exported[1] == {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
            **reasoning,
        }
        assert manager.messages[1].metadata == {REASONING_METADATA_KEY: reasoning}
        assert openai_violations(exported) == []
        chat_completions_input(exported)
    async with EnhancedContextManager(settings, conversation_id="deepseek") as again:
        assert again.get_context("openai") == exported
    async with EnhancedContextManager(config(tmp_path / "round-trip")) as copy:
        assert await copy.add_messages(exported) == len(exported)  # the export goes back in as it came out
        assert json.dumps(copy.get_context("openai")) == json.dumps(exported)


@pytest.mark.parametrize("empty", [{"reasoning_content": None}, {"reasoning": ""}, {"reasoning_details": []}])
async def test_an_empty_reasoning_field_is_not_kept(tmp_path: Path, empty: dict[str, Any]) -> None:
    message = reasoning_server_response(**empty).choices[0].message
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Weather in Paris?")
        assert await manager.add_messages([message.model_dump()]) == 1
        assert manager.messages[1].metadata == {}
        assert not any("reasoning" in key for m in manager.get_context("openai") for key in m)


async def test_an_empty_reasoning_content_is_kept_as_present_and_sent_back(tmp_path: Path) -> None:
    """DeepSeek's thinking mode wants ``reasoning_content`` back on a turn that called tools, even when
    the model's reasoning was empty (``""``); the window dropped an empty one as absent, so the export
    sent the turn without the field. ``""`` is kept now (``None`` still means none), and sent back."""
    from langchain_core.messages import AIMessage

    message = reasoning_server_response(reasoning_content="").choices[0].message
    settings = config(tmp_path)
    async with EnhancedContextManager(settings, conversation_id="deepseek-empty") as manager:
        await manager.add_message("user", "Weather in Paris?")
        assert await manager.add_messages([message]) == 1
        await manager.add_message("tool", "21 °C", tool_call_id="call_1")
        assert await manager.add_messages([message.model_dump()]) == 1
        await manager.add_message("tool", "22 °C", tool_call_id="call_1")
        langchain = AIMessage(
            "",
            additional_kwargs={"reasoning_content": ""},
            tool_calls=[{"name": "weather", "args": {}, "id": "call_2"}],
        )
        assert await manager.add_messages([langchain]) == 1
        await manager.add_message("tool", "23 °C", tool_call_id="call_2")
        await manager.add_message("assistant", "Sunny, 22 °C.")  # none given: none invented
        for index in (1, 3, 5):
            assert manager.messages[index].metadata == {REASONING_METADATA_KEY: {"reasoning_content": ""}}
        exported = manager.get_context("openai")
        assert [m.get("reasoning_content") for m in exported] == [None, "", None, "", None, "", None, None]
        assert ["reasoning_content" in m for m in exported] == [
            False,
            True,
            False,
            True,
            False,
            True,
            False,
            False,
        ]
        assert openai_violations(exported) == []
        chat_completions_input(exported)
    async with EnhancedContextManager(settings, conversation_id="deepseek-empty") as again:
        assert again.get_context("openai") == exported  # persisted as it was
    async with EnhancedContextManager(config(tmp_path / "round-trip")) as copy:
        assert await copy.add_messages(exported) == len(exported)
        assert copy.get_context("openai") == exported


async def test_kept_reasoning_counts_against_the_token_budget(tmp_path: Path) -> None:
    """The reasoning sent back is input the model reads: counted, as thinking blocks are (the safe side)."""
    from context_manager.core.tokens import get_token_counter

    reasoning = "The user wants the weather in Paris, so I should call the weather tool first. " * 20
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages(
            [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Let me check.", "reasoning_content": reasoning},
                {"role": "assistant", "content": "Let me check."},
            ]
        )
        with_reasoning, without = manager.messages[1], manager.messages[2]
        assert with_reasoning.token_count == without.token_count + get_token_counter().count(reasoning)


async def test_a_user_s_own_openai_reasoning_metadata_stays_free_form(tmp_path: Path) -> None:
    """The kept reasoning's key is the library's, named as its others are (``context_manager.summary``
    ...): metadata a user keeps under ``"openai_reasoning"`` (free-form JSON in 0.1.0) was refused on a
    user message and, shaped as reasoning on an assistant message, sent to the provider and counted."""
    assert REASONING_METADATA_KEY.startswith("context_manager.")
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Weather?", metadata={"openai_reasoning": "routed by rule 4"})
        await manager.add_message("assistant", "Sunny.", metadata={"openai_reasoning": {"reasoning": "mine"}})
        await manager.add_message("assistant", "Sunny.")
        assert manager.get_context("openai") == [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Sunny."},
            {"role": "assistant", "content": "Sunny."},
        ]
        assert manager.messages[1].token_count == manager.messages[2].token_count
        assert manager.messages[0].metadata == {"openai_reasoning": "routed by rule 4"}


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"role": "assistant", "content": "Hi", "reasoning_content": 5}, "messages[1].reasoning_content"),
        ({"role": "assistant", "content": "Hi", "reasoning_details": "x"}, "messages[1].reasoning_details"),
        (
            {"role": "assistant", "content": "Hi", "metadata": {REASONING_METADATA_KEY: "thought"}},
            f"messages[1].metadata.{REASONING_METADATA_KEY}",
        ),
        (
            {"role": "assistant", "content": "Hi", "metadata": {REASONING_METADATA_KEY: {"role": "system"}}},
            f"messages[1].metadata.{REASONING_METADATA_KEY}.role",
        ),
        (
            {"role": "user", "content": "Hi", "metadata": {REASONING_METADATA_KEY: {"reasoning": "x"}}},
            f"messages[1].metadata.{REASONING_METADATA_KEY}",
        ),
        ({"role": "user", "content": "Hi", "reasoning_content": "x"}, "messages[1].reasoning_content"),
    ],
)
async def test_reasoning_the_export_could_not_send_is_refused_naming_it(
    tmp_path: Path, item: dict[str, Any], field: str
) -> None:
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "Before")
        with pytest.raises(InvalidArgumentError) as caught:
            await manager.add_messages([{"role": "user", "content": "Weather?"}, item])
        assert str(caught.value).startswith(field + ":")
        assert [m.content for m in manager.messages] == ["Before"]


async def test_a_langchain_deepseek_ai_message_keeps_its_reasoning(tmp_path: Path) -> None:
    """langchain-deepseek puts the reasoning in ``additional_kwargs["reasoning_content"]``."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    history = [
        HumanMessage("Weather?"),
        AIMessage(
            "",
            additional_kwargs={"reasoning_content": "Call the tool."},
            tool_calls=[{"name": "weather", "args": {}, "id": "call_1"}],
        ),
        ToolMessage("21 °C", tool_call_id="call_1"),
    ]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages(history)
        assert manager.get_context("openai")[1]["reasoning_content"] == "Call the tool."


CUSTOM_CALL = {"id": "call_1", "type": "custom", "custom": {"name": "run_sql", "input": "SELECT 1"}}


async def test_a_custom_tool_call_is_refused_naming_what_is_taken(tmp_path: Path) -> None:
    """An OpenAI custom tool's call (free-form text input) was refused as ``tool_calls[].name: got ''``,
    as if the name were missing; the error names the call's type and the calls the window takes."""
    from openai.types.chat import ChatCompletionMessage

    from context_manager import parse_tool_calls

    message = ChatCompletionMessage.model_validate(
        {"role": "assistant", "content": None, "tool_calls": [CUSTOM_CALL]}
    )
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", "How many rows?")
        for item in (message, message.model_dump(), {"role": "assistant", "tool_calls": [CUSTOM_CALL]}):
            with pytest.raises(InvalidMessageError) as caught:
                await manager.add_messages([item])
            text = str(caught.value)
            assert "tool_calls[].type: got 'custom'" in text
            assert "'function'" in text and "'tool_use'" in text and "free-form" in text
        with pytest.raises(InvalidMessageError, match="custom"):
            await manager.add_message("assistant", "", tool_calls=[CUSTOM_CALL])
        assert [m.content for m in manager.messages] == ["How many rows?"]
    with pytest.raises(InvalidMessageError, match="tool_calls\\[\\].type: got 'custom'"):
        parse_tool_calls(message)
    responses_call = {"type": "custom_tool_call", "call_id": "call_1", "name": "run_sql", "input": "SELECT 1"}
    with pytest.raises(InvalidMessageError, match="custom_tool_call"):  # not read as "no tool calls"
        parse_tool_calls({"output": [responses_call]})


TWO_RESULTS = {"role": "user", "content": RESULTS}  # one item: two tool messages


@pytest.mark.parametrize(
    ("bad", "field", "error"),
    [
        ({"role": "user"}, "messages[4]", "InvalidArgumentError"),
        ({"role": "bogus", "content": "Hi"}, "messages[4].role", "InvalidRoleError"),
        (
            {"role": "user", "content": "Hi", "priority": "urgent"},
            "messages[4].priority",
            "InvalidPriorityError",
        ),
        (
            {"role": "user", "content": [{"type": "image_url"}]},
            "messages[4].content[0]",
            "InvalidMessageError",
        ),
        (
            {"role": "tool", "tool_call_id": "toolu_09", "content": "?"},
            "messages[4].tool_call_id",
            "ToolCallPairingError",
        ),
    ],
)
async def test_errors_name_the_item_the_caller_passed(
    tmp_path: Path, bad: dict[str, Any], field: str, error: str
) -> None:
    """A user turn of two ``tool_result`` blocks is two messages: an error about the item after it named
    ``messages[5]`` for the caller's ``messages[4]``; the option errors (role, priority ...) and the window's
    pairing errors named no item at all ("role: got 'bogus'")."""
    history = [*anthropic_history()[:3], {"role": "assistant", "content": "Done."}, bad]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        with pytest.raises(InvalidArgumentError) as caught:
            await manager.add_messages(history)
        assert type(caught.value).__name__ == error
        assert caught.value.field == field
        assert str(caught.value).startswith(f"{field}: got ")
        assert manager.messages == ()


async def test_responses_errors_name_the_item_the_caller_passed(tmp_path: Path) -> None:
    """A reasoning item is left out, and ``function_call`` items join the message before them: an error
    named the converted message (or no item at all)."""
    output: list[dict[str, Any]] = [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "21 °C"},
        {"role": "user", "content": [{"type": "input_text", "text": "Thanks"}], "priority": "urgent"},
    ]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        with pytest.raises(InvalidArgumentError) as caught:
            await manager.add_messages(output)
        assert str(caught.value).startswith("messages[4].priority: got 'urgent'")
        output[2]["arguments"] = "{"
        with pytest.raises(InvalidMessageError) as bad_call:
            await manager.add_messages(output)
        assert str(bad_call.value).startswith("messages[1].tool_calls[].arguments: got '{'")
        assert manager.messages == ()


async def test_several_text_blocks_of_a_turn_read_with_a_line_break_between(tmp_path: Path) -> None:
    """Two user messages in a row are one Anthropic turn of two text blocks; read back they were glued
    ("Revenue grew 4%.Summarise it."), as were a Chat Completions message's text parts. Separate texts
    are joined by a line break (as vLLM reads such a message, and LangChain's and LlamaIndex's conversions
    join them); an answer's blocks cut around its citations are one text, joined as they are."""
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages(
            [
                {"role": "user", "content": "Revenue grew 4%."},
                {"role": "user", "content": "Summarise it."},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [RESULT_CALL]},
                {"role": "tool", "tool_call_id": "toolu_01A", "content": "Q3 report"},
                {"role": "user", "content": "Be brief."},
                {"role": "user", "content": "Use bullet points."},
            ]
        )
        body = manager.get_context(format="anthropic")
        assert [len(turn["content"]) for turn in body["messages"]] == [2, 2, 3]
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        await again.add_messages(body["messages"])
        await again.add_messages(
            [{"role": "assistant", "content": text_parts("Growth was 4%.", "Costs fell.")}]
        )
        assert [m.content for m in again.messages] == [
            "Revenue grew 4%.\nSummarise it.",
            "Let me check.",
            "Q3 report",
            "Be brief.\nUse bullet points.",
            "Growth was 4%.\nCosts fell.",
        ]
    cited = anthropic_response(
        [
            {"type": "text", "text": "According to the report, "},
            {
                "type": "text",
                "text": "revenue grew 4%",
                "citations": [
                    {
                        "type": "char_location",
                        "cited_text": "Revenue grew 4% in Q3.",
                        "document_index": 0,
                        "document_title": "Q3 report",
                        "start_char_index": 0,
                        "end_char_index": 22,
                    }
                ],
            },
            {"type": "text", "text": " in Q3."},
        ],
        "end_turn",
    )
    async with EnhancedContextManager(config(tmp_path / "cited")) as manager:
        await manager.add_message("user", "How did revenue do?")
        for answer in (cited, cited.model_dump(), {"role": "assistant", "content": cited.content}):
            await manager.add_messages([answer])
        assert [m.content for m in manager.messages[1:]] == [
            "According to the report, revenue grew 4% in Q3."
        ] * 3


RESULT_CALL = {"type": "tool_use", "id": "toolu_01A", "name": "read_report", "input": {}}


async def test_add_message_takes_text_parts_as_add_messages_does(tmp_path: Path) -> None:
    """``add_messages`` took a message of Chat Completions text parts; ``add_message`` with the same content
    refused it ("content: got [...]; allowed a str")."""
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message("user", text_parts("Revenue grew 4%.", "Summarise it."))
        await manager.add_message("assistant", text_parts("Growth: 4%."), priority="high")
        await manager.add_messages(
            [{"role": "user", "content": text_parts("Revenue grew 4%.", "Summarise it.")}]
        )
        assert [(m.role.value, m.content, m.priority.value) for m in manager.messages] == [
            ("user", "Revenue grew 4%.\nSummarise it.", "normal"),
            ("assistant", "Growth: 4%.", "high"),
            ("user", "Revenue grew 4%.\nSummarise it.", "normal"),
        ]
        image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        for options in ({}, {"priority": "high"}):
            with pytest.raises(InvalidMessageError, match=r"^content\[1\]: got .*images, audio and files"):
                await manager.add_message("user", [*text_parts("What is this?"), image], **options)
        assert len(manager.messages) == 3


async def test_two_assistant_messages_merged_by_the_anthropic_export_come_back_as_one(tmp_path: Path) -> None:
    """What docs/concepts.md says of a saved Anthropic export: two assistant messages in a row are one
    turn, read back as one message of both texts and the calls; exported again, one text block. The
    Responses API export of a text message then a message of calls alone reads back as one message too,
    and exports the same items."""
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Read the report."},
        {"role": "assistant", "content": "On it.", "metadata": {"step": 1}},
        {"role": "assistant", "content": "Opening it.", "tool_calls": [RESULT_CALL]},
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "Q3 report"},
    ]
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages(history)
        body = manager.get_context(format="anthropic")
        items = manager.get_context(format="openai_responses")
    assert [block["type"] for block in body["messages"][1]["content"]] == ["text", "text", "tool_use"]
    async with EnhancedContextManager(config(tmp_path / "again")) as again:
        await again.add_messages(body["messages"])
        [_, merged, _] = again.messages
        assert merged.content == "On it.\nOpening it." and [c.id for c in merged.tool_calls] == ["toolu_01A"]
        assert merged.metadata == {}
        turn = again.get_context(format="anthropic")["messages"][1]["content"]
        assert turn[0] == {"type": "text", "text": "On it.\nOpening it."} and turn[1]["type"] == "tool_use"
    calls_alone = [dict(history[2], content="")]
    async with EnhancedContextManager(config(tmp_path / "responses")) as manager:
        await manager.add_messages([*history[:2], *calls_alone, history[3]])
        items = manager.get_context(format="openai_responses")
    async with EnhancedContextManager(config(tmp_path / "responses-again")) as again:
        await again.add_messages(items)
        assert [m.role.value for m in again.messages] == ["user", "assistant", "tool"]
        assert again.get_context(format="openai_responses") == items


async def test_langchain_messages_go_in_as_the_messages_they_are(tmp_path: Path) -> None:
    """LangChain's message objects (and their ``model_dump()``) were taken for Responses API items and
    refused: ``messages[0].type: got 'system'; allowed Responses API input or output items``. They go in
    now as Chat Completions messages would (``convert_to_openai_messages``), a failed ``ToolMessage``
    (``status="error"``) marked ``is_error`` as ``execute_tool_calls`` marks its failures."""
    from langchain_core.messages import (
        AIMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        convert_to_openai_messages,
    )

    history = [
        SystemMessage("Answer briefly."),
        HumanMessage("Weather in Paris?", name="alice"),
        AIMessage(
            [{"type": "text", "text": "Let me check."}, "Both cities."],
            tool_calls=[
                {"name": "weather", "args": {"city": "Paris"}, "id": "call_1"},
                {"name": "weather", "args": {"city": "Rome"}, "id": "call_2"},
            ],
        ),
        ToolMessage([{"type": "text", "text": "Paris: 21 °C"}], tool_call_id="call_1"),
        ToolMessage("Rome: service down", tool_call_id="call_2", status="error"),
        ChatMessage("Thanks, Zoë 🎉", role="user"),
        AIMessage("Paris is sunny; Rome I could not check."),
    ]
    for n, given in enumerate([history, [message.model_dump() for message in history]]):
        async with EnhancedContextManager(config(tmp_path / str(n))) as manager:
            assert await manager.add_messages(given) == len(history)
            exported = manager.get_context(format="openai")
            # as LangChain's own conversion to Chat Completions reads them (its text parts joined)
            expected = convert_to_openai_messages(history)
            assert [m["role"] for m in exported] == [m["role"] for m in expected]
            assert [m.get("tool_calls") for m in exported] == [
                [
                    dict(
                        call,
                        function=dict(
                            call["function"], arguments=call["function"]["arguments"].replace(" ", "")
                        ),
                    )
                    for call in m["tool_calls"]
                ]
                if m.get("tool_calls")
                else None
                for m in expected
            ]
            assert [m.role.value for m in manager.messages] == [
                "system",
                "user",
                "assistant",
                "tool",
                "tool",
                "user",
                "assistant",
            ]
            said = manager.messages[2]
            assert said.content == "Let me check.\nBoth cities."
            assert [(c.id, c.arguments) for c in said.tool_calls] == [
                ("call_1", {"city": "Paris"}),
                ("call_2", {"city": "Rome"}),
            ]
            assert manager.messages[1].name == "alice"
            assert manager.messages[3].content == "Paris: 21 °C"
            assert manager.messages[4].metadata == {"is_error": True}
            assert manager.messages[5].content == "Thanks, Zoë 🎉"
            body = manager.get_context(format="anthropic")
            assert body["messages"][2]["content"][1]["is_error"] is True
            assert openai_violations(exported) == []  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match=r"messages\[1\]\.content\[0\]"):
        async with EnhancedContextManager(config(tmp_path / "image")) as manager:
            image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            await manager.add_messages([HumanMessage("Hi"), HumanMessage([image])])
    # langchain-openai's Responses API output: reasoning and function_call blocks beside the text
    responses_style = AIMessage(
        [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "text", "text": "Checking.", "annotations": []},
            {"type": "function_call", "call_id": "call_9", "name": "weather", "arguments": "{}"},
        ],
        tool_calls=[{"name": "weather", "args": {}, "id": "call_9"}],
    )
    async with EnhancedContextManager(config(tmp_path / "responses-style")) as manager:
        await manager.add_messages([HumanMessage("Weather?"), responses_style])
        [_, said] = manager.messages
        assert said.content == "Checking." and [c.id for c in said.tool_calls] == ["call_9"]


async def test_langchain_messages_to_dict_items_go_in_as_their_messages(tmp_path: Path) -> None:
    """LangChain's ``messages_to_dict()`` items (``{"type": "human", "data": {...}}``, what its chat
    histories store) were refused as Responses API items (``messages[0].type: got 'human'``); they go in
    as the messages ``messages_from_dict`` makes of them."""
    from langchain_core.messages import (
        AIMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        messages_from_dict,
        messages_to_dict,
    )

    history = [
        SystemMessage("Answer briefly."),
        HumanMessage("Weather in Paris?", name="alice"),
        AIMessage("Let me check.", tool_calls=[{"name": "weather", "args": {}, "id": "call_1"}]),
        ToolMessage("Paris: 21 °C", tool_call_id="call_1", status="error"),
        ChatMessage("Thanks", role="user"),
    ]
    stored = messages_to_dict(history)
    assert messages_from_dict(stored) == history  # the shape LangChain reads back
    async with EnhancedContextManager(config(tmp_path / "objects")) as manager:
        await manager.add_messages(history)
        expected = manager.get_context(format="openai")
    async with EnhancedContextManager(config(tmp_path)) as manager:
        assert await manager.add_messages(stored) == len(history)
        assert manager.get_context(format="openai") == expected
        assert manager.messages[1].name == "alice"
        assert manager.messages[3].metadata == {"is_error": True}


async def test_langchain_function_and_remove_messages_are_refused_naming_them(tmp_path: Path) -> None:
    """A ``FunctionMessage`` and a ``RemoveMessage`` were refused as Responses API items (``messages[1].type:
    got 'function'; allowed Responses API input or output items``), an error about another API. A
    ``FunctionMessage`` answers a legacy ``function_call`` (``convert_to_openai_messages`` makes a
    ``role: "function"`` message of it, no call id: no tool result); a ``RemoveMessage`` is LangGraph's
    deletion of a message. The error names them and what to give instead; nothing is added."""
    from langchain_core.messages import FunctionMessage, HumanMessage, RemoveMessage, message_to_dict

    refused = {
        "FunctionMessage": FunctionMessage("21 °C", name="weather"),
        "RemoveMessage": RemoveMessage(id="msg_1"),
    }
    for n, (name, message) in enumerate(refused.items()):
        for form in (message, message.model_dump(), message_to_dict(message)):
            async with EnhancedContextManager(config(tmp_path / f"{n}-{type(form).__name__}")) as manager:
                await manager.add_message("user", "Before")
                with pytest.raises(InvalidMessageError) as caught:
                    await manager.add_messages([HumanMessage("Weather?"), form])
                text = str(caught.value)
                assert "messages[1]" in text and name in text and "Responses API" not in text
                assert ("ToolMessage" in text) is (name == "FunctionMessage")
                assert [m.content for m in manager.messages] == ["Before"]


async def test_langchain_message_chunks_go_in_as_their_messages(tmp_path: Path) -> None:
    """LangChain's chunk classes (what streaming gives, and what adding chunks makes) are its messages
    too: ``AIMessageChunk`` went in, but ``HumanMessageChunk``, ``SystemMessageChunk`` and
    ``ToolMessageChunk`` were taken for Responses API items and refused (``messages[0].type: got
    'SystemMessageChunk'; allowed Responses API input or output items``)."""
    from langchain_core.messages import (
        AIMessageChunk,
        HumanMessageChunk,
        SystemMessageChunk,
        ToolMessageChunk,
    )

    call = AIMessageChunk(content="", tool_call_chunks=[{"name": "f", "args": "{}", "id": "c1", "index": 0}])
    history = [
        SystemMessageChunk(content="Be brief."),
        HumanMessageChunk(content="Run ") + HumanMessageChunk(content="f."),
        call,
        ToolMessageChunk(content="done", tool_call_id="c1", status="error"),
    ]
    for n, given in enumerate([history, [message.model_dump() for message in history]]):
        async with EnhancedContextManager(config(tmp_path / str(n))) as manager:
            assert await manager.add_messages(given) == 4
            assert [(m.role.value, m.content) for m in manager.messages] == [
                ("system", "Be brief."),
                ("user", "Run f."),
                ("assistant", ""),
                ("tool", "done"),
            ]
            assert [c.id for c in manager.messages[2].tool_calls] == ["c1"]
            assert manager.messages[3].metadata == {"is_error": True}


async def test_a_langchain_ai_message_of_thinking_and_plain_strings_goes_in(tmp_path: Path) -> None:
    """An ``AIMessage`` content list may hold plain strings beside its blocks (LangChain's content is
    ``str | list[str | dict]``): with a thinking block among them, the message was refused naming
    ``messages[1].thinking[1]``, a field the caller never gave. The strings are its text, as without
    thinking."""
    from langchain_core.messages import AIMessage, HumanMessage

    thinking = {"type": "thinking", "thinking": "Easy.", "signature": "EqQBCkYIAxgCIkD=="}
    said = AIMessage([thinking, "Four.", {"type": "text", "text": "Sure."}])
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_messages([HumanMessage("2+2?"), said])
        [_, answer] = manager.messages
        assert answer.content == "Four.\nSure." and answer.thinking == (thinking,)


async def test_deepseek_s_tool_loop_sends_the_reasoning_back_with_the_calls_it_ran(tmp_path: Path) -> None:
    """The loop ``docs/tools.md`` shows for DeepSeek: the response's message added, then its calls run by
    ``execute_tool_calls``; the next request holds the message's ``reasoning_content`` and the result."""
    from context_manager import tool

    @tool
    def weather(city: str) -> str:
        """Current weather of a city."""
        return f"{city}: 21 °C"

    message = reasoning_server_response(reasoning_content="Call the tool.").choices[0].message
    async with EnhancedContextManager(config(tmp_path)) as manager:
        manager.tool_manager.register_tool(weather)
        await manager.add_message("user", "Weather in Paris?")
        await manager.add_messages([message])
        await manager.execute_tool_calls(message.model_dump()["tool_calls"])
        request = manager.get_context("openai")
        assert [m["role"] for m in request] == ["user", "assistant", "tool"]
        assert request[1]["reasoning_content"] == "Call the tool."
        assert request[2]["content"] == "Paris: 21 °C"
        chat_completions_input(request)


async def test_add_message_keeps_reasoning_given_as_a_field_beside_the_metadata(tmp_path: Path) -> None:
    """``add_message(**message.model_dump())`` and ``add_message(..., reasoning_content=...)`` keep it too,
    beside the caller's own metadata (and reasoning already in it)."""
    async with EnhancedContextManager(config(tmp_path)) as manager:
        await manager.add_message(
            "assistant",
            "Sunny.",
            reasoning_content="Answer.",
            metadata={"turn": 3, REASONING_METADATA_KEY: {"reasoning": "Earlier."}},
        )
        [message] = manager.messages
        assert message.metadata == {
            "turn": 3,
            REASONING_METADATA_KEY: {"reasoning": "Earlier.", "reasoning_content": "Answer."},
        }
        [exported] = manager.get_context("openai")
        assert exported == {
            "role": "assistant",
            "content": "Sunny.",
            "reasoning": "Earlier.",
            "reasoning_content": "Answer.",
        }
