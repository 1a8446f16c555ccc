"""Provider messages as the SDKs and APIs shape them go in through ``add_messages`` and back out.

Chat Completions takes a message's ``content`` as a string or as a list of content parts: text parts
(``{"type": "text", "text": ...}``) for every role, image, audio and file parts for the user. The window
keeps text: text parts are joined (as the Responses API import joins its parts), anything else is refused
naming what is taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import InvalidMessageError
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
        {"role": "developer", "content": text_parts("Answer briefly. ", "Use tools.")},
        {"role": "system", "content": text_parts("Be kind.")},
        {"role": "user", "content": text_parts("Weather in ", "Paris?"), "name": "alice"},
        {
            "role": "assistant",
            "content": text_parts("Let me check."),
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": text_parts("21 °C, ", "sunny")},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say more."}]},
    ]
    chat_completions_input(history)  # valid Chat Completions input, as the SDK types it
    async with EnhancedContextManager(config(tmp_path)) as manager:
        assert await manager.add_messages(history) == 6
        assert [(m.role.value, m.content) for m in manager.messages] == [
            ("system", "Answer briefly. Use tools."),
            ("system", "Be kind."),
            ("user", "Weather in Paris?"),
            ("assistant", "Let me check."),
            ("tool", "21 °C, sunny"),
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
