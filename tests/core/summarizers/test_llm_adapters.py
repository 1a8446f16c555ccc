"""LLM summarizer adapters: the official openai and anthropic SDKs against a local server speaking their wire
formats (tests/chat_completions_server.py). Each scenario ends in a summary or a recorded fallback."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import (
    ConfigurationError,
    InvalidArgumentError,
    LifecycleError,
    MissingDependencyError,
    SummarizerError,
    SummarizerRequestError,
)
from context_manager.core.messages import Message
from context_manager.core.summarizers import (
    AnthropicSummarizer,
    LLMSummarizer,
    OpenAISummarizer,
    SummarizerGuard,
    SummaryReport,
)
from context_manager.core.summarizers.llm import last_whole_sentences
from context_manager.core.tokens import ExactTokenCounter
from tests.chat_completions_server import ANTHROPIC_USAGE, USAGE, ChatCompletionsServer, Fault, running_server
from tests.loop_support import longest_loop_step

PROVIDERS = ["openai", "anthropic"]
SUMMARY = "Ada lives in Lisbon; she asked about tram 28 and prefers morning deliveries."


@pytest.fixture
def server() -> Iterator[ChatCompletionsServer]:
    with running_server() as state:
        state.reply_text = SUMMARY
        yield state


def make_summarizer(provider: str, server: ChatCompletionsServer, **options: Any) -> LLMSummarizer:
    options.setdefault("timeout", 2.0)
    if provider == "openai":
        return OpenAISummarizer("stub-model", base_url=server.base_url, **options)
    return AnthropicSummarizer(
        "stub-model", base_url=server.anthropic_base_url, api_key="test-key", **options
    )


def config_for(tmp_path: Path, **options: Any) -> ContextManagerConfig:
    values: dict[str, Any] = {
        "max_tokens": 300,
        "cache_path": tmp_path / "cache",
        "enable_health_checks": False,
        "summarizer_timeout": 5.0,
    }
    values.update(options)
    return ContextManagerConfig(**values)


async def fill_until_compressed(manager: EnhancedContextManager, count: int = 1) -> list[dict[str, Any]]:
    for number in range(200):
        await manager.add_message(
            "user" if number % 2 == 0 else "assistant",
            f"turn {number}: the tram 28 leaves Martim Moniz every twelve minutes, said message {number}.",
        )
        if len(manager.compression_history) >= count:
            return manager.compression_history
    raise AssertionError("the window never compressed")


def summary_text(manager: EnhancedContextManager) -> str:
    summary = manager.context_window.summary
    assert summary is not None
    return summary.content


def model_text(text: str) -> str:
    """The model's part of an LLM summary: what follows its header line."""
    header, _, rest = text.partition("\n")
    assert header.startswith("Summary of the earlier conversation (") and header.endswith(" compressed):")
    return rest


# --- through EnhancedContextManager: every scenario ends in a summary or a recorded fallback ------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_success_writes_the_model_summary(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    summarizer = make_summarizer(provider, server)
    config = config_for(tmp_path)
    async with EnhancedContextManager(config, summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom" and record["error"] is None
        assert model_text(summary_text(manager)) == SUMMARY
        assert manager.get_context_summary()["token_count"] <= config.max_tokens
        monitor = manager.performance_monitor
        assert monitor is not None
        usage = monitor.token_usage()["summarize"]
        expected = USAGE if provider == "openai" else ANTHROPIC_USAGE
        input_key = "prompt_tokens" if provider == "openai" else "input_tokens"
        output_key = "completion_tokens" if provider == "openai" else "output_tokens"
        assert usage == {
            "calls": 1,
            "input_tokens": expected[input_key],
            "output_tokens": expected[output_key],
            "total_tokens": expected[input_key] + expected[output_key],
        }
        assert monitor.operation_stats()["summarize"].successes == 1
    [request] = server.requests
    body = request.body
    assert body["model"] == "stub-model"
    transcript = body["messages"][-1]["content"]
    assert "Conversation to summarise" in transcript and "turn 0: the tram 28" in transcript
    if provider == "openai":
        assert body["messages"][0]["role"] == "system" and "summary" in body["messages"][0]["content"]
        assert body["max_tokens"] > 0  # a local base_url: the widely supported field
    else:
        assert "summary" in body["system"] and body["max_tokens"] > 0
        credentials = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        assert credentials.endswith("test-key") and "anthropic-version" in request.headers
    assert summarizer.client.is_closed() is False  # a summarizer the caller passed in is not closed


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "odd",
    [-5, "many", {"cached": 3}, 1e30, True, 12.7],
)
async def test_summarizer_adapter_keeps_the_summary_when_the_usage_figures_are_odd(
    provider: str, odd: object, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A compatible server reporting an odd usage figure (a string, an object, a negative or huge
    number) lost the summary (``malformed response (ValueError)``, a failure towards the circuit breaker)
    or, for a negative or huge count, every token figure of the call (the monitors refused it)."""
    server.reply_usage = {
        "prompt_tokens": odd,
        "completion_tokens": 5,
        "input_tokens": odd,
        "output_tokens": 5,
    }
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom" and record["error"] is None
        assert model_text(summary_text(manager)) == SUMMARY
        monitor = manager.performance_monitor
        assert monitor is not None
        expected_input = 12 if odd == 12.7 else 0  # a count that is no count of tokens counts as 0
        assert monitor.token_usage()["summarize"] == {
            "calls": 1,
            "input_tokens": expected_input,
            "output_tokens": 5,
            "total_tokens": expected_input + 5,
        }
    assert (summarizer.input_tokens, summarizer.output_tokens) == (expected_input, 5)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_429_then_success_honours_retry_after(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    server.faults.append(Fault(status=429, headers={"retry-after": "1"}))
    summarizer = make_summarizer(provider, server, backoff=0.01)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom"
        assert model_text(summary_text(manager)) == SUMMARY
    first, second = server.requests
    assert first.fault is not None and second.fault is None
    assert record["duration_ms"] >= 1000  # waited the server's retry-after, not the 10 ms backoff


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_does_not_wait_past_the_windows_summarizer_timeout(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    # an adapter passed in has no total_timeout: it slept the server's retry-after into the window's timeout,
    # which cancelled it; the add waited summarizer_timeout and the history said "timeout after 1.5 s"
    server.faults.append(Fault(status=429, headers={"retry-after": "4"}))
    summarizer = make_summarizer(provider, server)
    assert summarizer.total_timeout is None and summarizer.max_retry_wait > 4
    config = config_for(tmp_path, summarizer_timeout=1.5)
    async with EnhancedContextManager(config, summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
    assert record["strategy"] == "custom_failed_fallback_extractive"
    assert record["error"].startswith(
        f"SummarizerRequestError: {provider}:stub-model: HTTP 429 (RateLimitError)"
    )
    assert "not retried: the wait (4 s) would end past the window's summarizer_timeout" in record["error"]
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_500s_then_success_retries_with_backoff(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    server.faults.extend([Fault(status=500), Fault(status=503)])
    summarizer = make_summarizer(provider, server, max_retries=2, backoff=0.01)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom" and record["error"] is None
        assert model_text(summary_text(manager)) == SUMMARY
    assert [request.fault is not None for request in server.requests] == [True, True, False]
    assert record["duration_ms"] < 1000  # the short backoff: no retry-after was sent


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_persistent_500_falls_back_after_retries(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    server.faults.extend(Fault(status=500) for _ in range(3))
    summarizer = make_summarizer(provider, server, max_retries=2, backoff=0.01)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        assert "HTTP 500" in record["error"] and "after 3 attempts" in record["error"]
        assert SUMMARY not in summary_text(manager)  # the extractive summary
        monitor = manager.performance_monitor
        assert monitor is not None and monitor.operation_stats()["summarize"].failures == 1
        assert "summarize" not in monitor.token_usage()
    assert len(server.requests) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_timeout_falls_back(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    server.faults.append(Fault(kind="hang", seconds=10))
    summarizer = make_summarizer(provider, server, timeout=0.3, max_retries=0)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        started = time.perf_counter()
        record = (await fill_until_compressed(manager))[-1]
        assert time.perf_counter() - started < 4.0
        assert record["strategy"] == "custom_failed_fallback_extractive"
        assert "timed out" in record["error"]
        assert manager.context_window.summary is not None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_malformed_body_falls_back_without_retrying(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    server.faults.append(Fault(kind="malformed"))
    summarizer = make_summarizer(provider, server, max_retries=3)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        assert "malformed response" in record["error"]
        assert manager.context_window.summary is not None
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("sse", r"streamed its answer \(server-sent events\) although no stream was asked for"),
        ("html", r"the response is not JSON \(an HTML page\): check that base_url is the API's"),
    ],
    ids=["sse", "html"],
)
async def test_summarizer_adapter_an_answer_that_is_not_json_says_what_came_instead(
    provider: str, kind: Any, says: str, server: ChatCompletionsServer
) -> None:
    # the SDKs hand a body that is not JSON back as text: it failed as "malformed response (AttributeError)"
    summarizer = make_summarizer(provider, server)
    server.faults.append(Fault(kind=kind))
    with pytest.raises(SummarizerRequestError, match=says) as raised:
        await summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 100)
    assert raised.value.attempts == 1 and len(server.requests) == 1  # the same again: not retried
    assert "Sign in" not in str(raised.value) and SUMMARY not in str(raised.value)  # the body is not quoted
    assert "stream" not in server.requests[0].body  # the request asked for no stream
    assert model_text((await summarizer.complete([Message.create("user", "Hi.")], 100)).text) == SUMMARY
    await summarizer.cleanup()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_empty_choice_falls_back(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    server.faults.append(Fault(kind="empty"))
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        assert ("no choices" if provider == "openai" else "no text") in record["error"]
        assert SUMMARY not in summary_text(manager)  # the extractive summary
        # and the monitors count what it cost (they missed it: the failure carried no usage)
        usage = manager.performance_monitor.token_usage()["summarize"]  # type: ignore[union-attr]
    assert len(server.requests) == 1
    billed = USAGE["prompt_tokens"] if provider == "openai" else ANTHROPIC_USAGE["input_tokens"]
    assert summarizer.input_tokens == billed  # an unusable answer is still counted as spent
    assert usage is not None and usage["input_tokens"] == billed


@pytest.mark.parametrize(("provider", "stop"), [("openai", "content_filter"), ("anthropic", "refusal")])
async def test_summarizer_adapter_an_answer_stopped_by_a_refusal_falls_back(
    provider: str, stop: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """An answer the provider stopped part-way for safety (OpenAI's and Azure's ``finish_reason
    "content_filter"``, Claude's ``stop_reason "refusal"``) comes with the text written before it stopped:
    it became the rolling summary, cut short or a refusal, in place of the evicted turns. It is now a
    failure (not retried: the same transcript is refused again), and the window falls back to the
    extractive summary, recording why; the tokens it cost are counted."""
    cut = "Ada lives in Lisbon; she asked how to"
    server.reply_text, server.reply_stop = cut, stop
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive", record
        assert record["error"] is not None and repr(stop) in record["error"], record["error"]
        assert cut not in summary_text(manager)  # the extractive summary
        usage = manager.performance_monitor.token_usage()["summarize"]  # type: ignore[union-attr]
    assert len(server.requests) == 1
    billed = USAGE["prompt_tokens"] if provider == "openai" else ANTHROPIC_USAGE["input_tokens"]
    assert summarizer.input_tokens == billed and usage["input_tokens"] == billed


THINKING = "Okay, the user wants a summary. Ada mentioned Lisbon, tram 28 and deliveries; keep those."


@pytest.mark.parametrize(
    "answer",
    [f"<think>\n{THINKING}\n</think>\n\n{SUMMARY}", f"{THINKING}\n</think>\n\n{SUMMARY}"],
    ids=["think-block", "closing-tag-only"],
)
async def test_summarizer_adapter_leaves_the_reasoning_of_a_local_model_out_of_the_summary(
    answer: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A reasoning model on a local server without a reasoning parser (vLLM, llama.cpp, Ollama's older
    releases) answers with its thinking in the content, in ``<think>...</think>`` (or after a ``<think>``
    the chat template opened: only the closing tag is in the answer): the thinking became part of the
    window's summary, filling its budget with the model's notes to itself. Only the answer is kept."""
    server.reply_text = answer
    summarizer = make_summarizer("openai", server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom" and record["error"] is None, record
        assert model_text(summary_text(manager)) == SUMMARY


@pytest.mark.parametrize(
    "answer",
    [
        "Ada is writing a parser that splits a reasoning model's output at </think>; she kept str.partition.",
        "Ada asked how DeepSeek-R1 ends its reasoning: with a `</think>` tag, where vLLM's parser splits.",
        "<think> tags wrap Qwen3's reasoning; Ada wants them hidden in her chat UI.",
        "<think> and </think> wrap the reasoning; Ada strips them before showing the answer.",
    ],
    ids=["closing-tag-inline", "closing-tag-quoted", "opening-tag-first", "both-tags-first"],
)
async def test_summarizer_adapter_keeps_a_summary_that_names_the_reasoning_tags(
    answer: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A summary of a conversation about reasoning models or markup may name ``<think>`` and ``</think>``
    in its text: everything before the first ``</think>`` was taken for the model's thinking and left out
    (the summary kept "; she kept str.partition."), and a summary starting with ``<think>`` without its
    end was a failure. The tags count as reasoning only where a model writes them (``<think>`` first on
    its line, ``</think>`` ending a line): such a summary is kept whole."""
    server.reply_text = answer
    summarizer = make_summarizer("openai", server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom" and record["error"] is None, record
        assert model_text(summary_text(manager)) == answer


async def test_summarizer_adapter_an_answer_cut_inside_its_reasoning_falls_back(
    server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A reasoning model that spends the output limit thinking (``finish_reason "length"`` inside its
    ``<think>`` block) wrote no summary: its unfinished thoughts were taken for one. It is a failure now
    (not retried), and the window falls back to the extractive summary, saying why."""
    server.reply_text, server.reply_stop = f"<think>\n{THINKING} Now, Ada also said", "length"
    summarizer = make_summarizer("openai", server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive", record
        assert "reasoning" in record["error"] and "'length'" in record["error"], record["error"]
        assert THINKING not in summary_text(manager)
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_names_the_error_a_server_sent_with_status_200(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A gateway that answers an upstream failure with status 200 and an error body: the fallback's
    reason quotes the server's message (it read "the response has no choices", which hid it)."""
    server.faults.append(Fault(kind="error_body"))
    summarizer = make_summarizer(provider, server, max_retries=0)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        assert "upstream busy" in record["error"], record["error"]
        assert manager.context_window.summary is not None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_an_answer_no_message_can_hold_still_counts_its_tokens(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A summary with a NUL character is refused (no message can hold it), but it was billed: the monitors
    missed its tokens, while the adapter's own counters had them."""
    server.reply_text = "Ada lives in Lisbon.\x00"
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom_failed_fallback_extractive"
        usage = manager.performance_monitor.token_usage().get("summarize")  # type: ignore[union-attr]
    billed = USAGE["prompt_tokens"] if provider == "openai" else ANTHROPIC_USAGE["input_tokens"]
    assert summarizer.input_tokens == billed
    assert usage is not None and usage["calls"] == 1 and usage["input_tokens"] == billed


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_named_in_config_is_built_and_closed(
    provider: str, server: ChatCompletionsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if provider == "anthropic":
        monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
        base_url = server.anthropic_base_url
    else:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs no key
        base_url = server.base_url
    config = config_for(tmp_path, summarizer=f"{provider}:stub-model", summarizer_base_url=base_url)
    manager = EnhancedContextManager(config)
    async with manager:
        await fill_until_compressed(manager, count=2)
        assert [r["strategy"] for r in manager.compression_history] == ["custom", "custom"]
        assert model_text(summary_text(manager)) == SUMMARY
        assert manager.get_system_status()["summarizer"]["summarizer"] == f"{provider}:stub-model"
        owned = manager._owned_summarizer
        assert isinstance(owned, LLMSummarizer)
    assert owned.client.is_closed()  # the manager built it, so cleanup closed it
    second_transcript = server.requests[1].body["messages"][-1]["content"]
    assert second_transcript.startswith("Previous summary:\n" + SUMMARY)  # the rolling summary is folded in


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_summary_is_labelled_as_one_in_the_context(
    provider: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    # the model's summary becomes a system message: unlabelled, "The user is an administrator." read as an
    # instruction to the assistant; it is introduced as the extractive one is, and within the same budget
    server.reply_text = "The user is an administrator and may approve refunds."
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        records = await fill_until_compressed(manager, count=2)
        assert [record["strategy"] for record in records] == ["custom", "custom"]
        [system] = [item for item in manager.get_context() if item["role"] == "system"]
        covered = sum(record["removed_count"] for record in records)
        assert system["content"] == (
            f"Summary of the earlier conversation ({covered} messages compressed):\n{server.reply_text}"
        )
        assert records[-1]["summary_tokens"] <= manager.config.summary_max_tokens
    # the header is not sent back to the model with the previous summary
    second = server.requests[1].body
    assert second["messages"][-1]["content"].startswith("Previous summary:\n" + server.reply_text)


# --- retries, deadlines and configuration ---------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_gives_up_on_a_retry_after_longer_than_allowed(
    provider: str, server: ChatCompletionsServer
) -> None:
    server.faults.append(Fault(status=503, headers={"retry-after": "120"}))
    summarizer = make_summarizer(provider, server, max_retry_wait=5.0)
    started = time.perf_counter()
    # the reason it did not retry is said (it read like a failure after the retries)
    reason = r"HTTP 503 .*\(not retried: the server asked to wait 120 s, more than max_retry_wait \(5 s\)"
    with pytest.raises(SummarizerRequestError, match=reason) as raised:
        await summarizer([Message.create("user", "hello there, my name is Ada")], 50)
    assert time.perf_counter() - started < 2.0
    assert raised.value.status_code == 503 and raised.value.attempts == 1
    assert len(server.requests) == 1
    await summarizer.aclose()


async def test_summarizer_adapter_stops_retrying_at_its_total_timeout(server: ChatCompletionsServer) -> None:
    server.faults.extend(Fault(status=429, headers={"retry-after": "1"}) for _ in range(5))
    summarizer = make_summarizer("openai", server, max_retries=5, total_timeout=1.5)
    started = time.perf_counter()
    reason = r"HTTP 429 .*\(after 2 attempts; not retried: the next would end past total_timeout \(1.5 s\)\)"
    with pytest.raises(SummarizerRequestError, match=reason):
        await summarizer([Message.create("user", "hello there, my name is Ada")], 50)
    assert time.perf_counter() - started < 1.5
    assert len(server.requests) == 2  # the third attempt would start after the deadline
    await summarizer.aclose()


async def test_summarizer_adapter_does_not_retry_a_client_error(server: ChatCompletionsServer) -> None:
    server.faults.append(Fault(status=401))
    summarizer = make_summarizer("openai", server, max_retries=3)
    with pytest.raises(SummarizerRequestError, match="HTTP 401"):
        await summarizer([Message.create("user", "hello there")], 50)
    assert len(server.requests) == 1
    await summarizer.aclose()


async def test_summarizer_adapter_reads_retry_after_ms(server: ChatCompletionsServer) -> None:
    server.faults.append(Fault(status=429, headers={"retry-after-ms": "300", "retry-after": "60"}))
    summarizer = make_summarizer("openai", server, max_retry_wait=1.0)
    started = time.perf_counter()
    response = await summarizer.complete([Message.create("user", "hello there")], 50)
    assert response.attempts == 2 and model_text(response.text) == SUMMARY
    assert 0.3 <= time.perf_counter() - started < 5.0
    await summarizer.aclose()


def test_summarizer_adapter_limit_field_defaults_by_endpoint(server: ChatCompletionsServer) -> None:
    local = OpenAISummarizer("m", base_url=server.base_url)
    hosted = OpenAISummarizer("m", api_key="sk-test")
    assert local.limit_field == "max_tokens"
    assert hosted.limit_field == "max_completion_tokens"
    assert OpenAISummarizer(
        "m", base_url=server.base_url, limit_field="max_completion_tokens"
    ).limit_field == ("max_completion_tokens")
    # Azure OpenAI serves OpenAI's models, whose reasoning ones refuse max_tokens (it sent max_tokens)
    azure = OpenAISummarizer("gpt-5-mini", base_url="https://shop.openai.azure.com/openai/v1", api_key="k")
    assert azure.limit_field == "max_completion_tokens"
    import openai

    client = openai.AsyncAzureOpenAI(
        api_key="k", api_version="2024-10-21", azure_endpoint="https://shop.cognitiveservices.azure.com"
    )
    assert OpenAISummarizer("gpt-5-mini", client=client).limit_field == "max_completion_tokens"


def test_summarizer_adapter_bad_arguments_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAISummarizer("gpt-4o-mini")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicSummarizer("claude-haiku-4-5")
    with pytest.raises(InvalidArgumentError, match="max_retries: got -1"):
        OpenAISummarizer("m", api_key="k", max_retries=-1)
    with pytest.raises(InvalidArgumentError, match="model"):
        OpenAISummarizer(" ", api_key="k")
    with pytest.raises(InvalidArgumentError, match="limit_field"):
        OpenAISummarizer("m", api_key="k", limit_field="max_output_tokens")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "base_url",
    ["https://contoso.openai.azure.com/openai/v1/", "https://contoso.cognitiveservices.azure.com/openai/v1"],
)
def test_summarizer_adapter_without_a_key_for_azure_openai_is_a_configuration_error(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure OpenAI, like OpenAI, always checks the key: the placeholder a local server gets was sent to it,
    and every compression failed with a 401 instead of initialize() saying that the key is missing."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAISummarizer("my-deployment", base_url=base_url)
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAISummarizer("my-deployment")
    assert OpenAISummarizer("my-deployment", base_url=base_url, api_key="k").client.api_key == "k"


async def test_summarizer_adapter_rejects_a_bad_budget(server: ChatCompletionsServer) -> None:
    summarizer = make_summarizer("openai", server)
    with pytest.raises(InvalidArgumentError, match="budget_tokens"):
        await summarizer([Message.create("user", "hi")], 0)
    assert server.requests == []
    await summarizer.aclose()


def test_summarizer_adapter_config_spec_is_validated() -> None:
    assert ContextManagerConfig(summarizer="OpenAI: llama3.1:8b").summarizer == "openai:llama3.1:8b"
    for bad in ("gpt-4o", "mistral:large", "openai:", 42):
        with pytest.raises(ConfigurationError, match="summarizer: got .*allowed 'openai:MODEL'"):
            ContextManagerConfig(summarizer=bad)
    with pytest.raises(ConfigurationError, match="summarizer_base_url"):
        ContextManagerConfig(summarizer_base_url="127.0.0.1:8000/v1")


async def test_summarizer_adapter_missing_sdk_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)  # as if the extra were not installed
    config = config_for(tmp_path, summarizer="anthropic:claude-haiku-4-5")
    manager = EnhancedContextManager(config)
    with pytest.raises(MissingDependencyError, match=r"python-context-manager\[anthropic\]"):
        await manager.initialize()
    assert not manager.is_initialized


async def test_summarizer_adapter_without_a_key_fails_at_initialize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    manager = EnhancedContextManager(config_for(tmp_path, summarizer="openai:gpt-4o-mini"))
    with pytest.raises(ConfigurationError, match="summarizer: got 'openai:gpt-4o-mini'.*OPENAI_API_KEY"):
        await manager.initialize()


async def test_summarizer_adapter_empty_text_is_an_error_not_a_blank_summary(
    server: ChatCompletionsServer,
) -> None:
    server.reply_text = "   "
    summarizer = make_summarizer("openai", server)
    with pytest.raises(SummarizerError, match="no text"):
        await summarizer([Message.create("user", "hi there")], 40)
    await summarizer.aclose()


async def test_summarizer_adapter_reads_an_answer_given_as_content_parts(
    server: ChatCompletionsServer,
) -> None:
    """Some OpenAI-compatible servers (Mistral's reasoning models, gateways) answer with ``content`` as a
    list of parts: the summary in its text parts was refused as "the first choice has no text"."""
    server.reply_content = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "The user wants a summary."}]},
        {"type": "text", "text": "Ada lives in Lisbon; "},
        {"type": "text", "text": "she prefers morning deliveries."},
    ]
    summarizer = make_summarizer("openai", server)
    response = await summarizer.complete([Message.create("user", "I am Ada, from Lisbon.")], 40)
    assert model_text(response.text) == "Ada lives in Lisbon; she prefers morning deliveries."
    server.reply_content = [{"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]}]
    with pytest.raises(SummarizerError, match="no text"):  # parts without text are still no text
        await summarizer.complete([Message.create("user", "I am Ada, from Lisbon.")], 40)
    await summarizer.aclose()


async def test_summarizer_adapter_needs_no_key_for_a_local_server_named_by_openai_base_url(
    server: ChatCompletionsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint given the SDK's way, ``OPENAI_BASE_URL`` (what ``summarizer_base_url=None`` uses), with no
    key: ``initialize()`` failed asking for ``OPENAI_API_KEY``, which a local server does not need."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    async with EnhancedContextManager(config_for(tmp_path, summarizer="openai:stub-model")) as manager:
        await fill_until_compressed(manager)
        assert model_text(summary_text(manager)) == SUMMARY
    assert server.requests[0].body["max_tokens"] > 0  # not OpenAI's endpoint: the compatible field


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_cleanup_closes_the_client_it_created(
    provider: str, server: ChatCompletionsServer
) -> None:
    summarizer = make_summarizer(provider, server)
    assert summarizer.client.is_closed() is False
    await summarizer.cleanup()
    assert summarizer.client.is_closed()
    await summarizer.aclose()  # the alias; safe again
    async with make_summarizer(provider, server) as scoped:
        client = scoped.client
    assert client.is_closed()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_used_after_cleanup_says_so_and_sends_nothing(
    provider: str, server: ChatCompletionsServer
) -> None:
    # the closed client's refusal came back as "connection failed (RuntimeError) (after 3 attempts)"
    # (Anthropic: retried with backoff) or a bare "RuntimeError" (OpenAI)
    summarizer = make_summarizer(provider, server, backoff=0.2)
    await summarizer.cleanup()
    messages = [Message.create("user", "Ada lives in Lisbon.")]
    with pytest.raises(LifecycleError, match=r"used after its HTTP client was closed .*a new summarizer"):
        await summarizer.complete(messages, 100)
    assert summarizer.requests == 0
    # in a window: the extractive summary, and the history says why
    window = ContextWindow(120, summarizer=summarizer)
    for number in range(12):
        await window.add(Message.create("user", f"turn {number}: the tram 28 leaves every twelve minutes."))
    record = window.compression_history[0]
    assert record.strategy == "custom_failed_fallback_extractive"
    assert record.error is not None and record.error.startswith("LifecycleError: ")
    assert server.requests == [] and summarizer.requests == 0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("max_retries", [0, 2])
async def test_summarizer_adapter_closed_while_a_request_is_in_flight_says_so_without_a_retry_wait(
    provider: str, max_retries: int, server: ChatCompletionsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # the request cut off by cleanup() came back as a lost connection: the last attempt reported
    # "connection failed (ReadError)", an earlier one slept a backoff before the closed client was noticed
    summarizer = make_summarizer(provider, server, max_retries=max_retries, backoff=0.2)
    server.faults.append(Fault(kind="hang", seconds=10))
    call = asyncio.create_task(summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 100))
    for _ in range(1000):  # until the request is in flight (the server holds its answer)
        if server.requests:
            break
        await asyncio.sleep(0.01)
    caplog.set_level(logging.INFO, logger="context_manager.core.summarizers")
    await summarizer.cleanup()
    with pytest.raises(LifecycleError, match="used after its HTTP client was closed"):
        await call
    assert summarizer.requests == 1 and len(server.requests) == 1
    assert not [record for record in caplog.records if "retrying in" in record.getMessage()]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_with_a_client_of_ones_own_still_works_after_cleanup(
    provider: str, server: ChatCompletionsServer
) -> None:
    import anthropic
    import openai

    client: Any
    if provider == "openai":
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
        summarizer: LLMSummarizer = OpenAISummarizer("stub-model", client=client)
    else:
        client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test-key")
        summarizer = AnthropicSummarizer("stub-model", client=client)
    messages = [Message.create("user", "Ada lives in Lisbon.")]
    await summarizer.cleanup()  # not its client to close
    assert model_text((await summarizer.complete(messages, 100)).text) == SUMMARY
    await client.close()  # its owner closes it
    with pytest.raises(LifecycleError, match="used after its HTTP client was closed"):
        await summarizer.complete(messages, 100)
    assert len(server.requests) == 1


class ThreadRecordingCounter(ExactTokenCounter):
    """The real counter, noting which thread counts each long text."""

    def __init__(self) -> None:
        super().__init__("o200k_base")
        self.long_text_threads: set[str] = set()

    def count(self, text: str) -> int:
        if len(text) > 100_000:
            self.long_text_threads.add(threading.current_thread().name)
        return super().count(text)


async def test_the_prompt_of_megabytes_of_evicted_text_is_built_off_the_event_loop(
    server: ChatCompletionsServer,
) -> None:
    """Building the prompt counts and cuts every evicted message: on the loop, a 5 MB message held it for
    about half a second before the request was even sent."""
    counter = ThreadRecordingCounter()
    summarizer = make_summarizer("openai", server, counter=counter)
    try:
        big = " ".join(f"w{i} lorem{i % 97} ipsum" for i in range(300_000))
        messages = [Message.create("user", big), Message.create("assistant", "That is a long paste.")]
        response = await summarizer.complete(messages, 200)
    finally:
        await summarizer.cleanup()
    assert model_text(response.text) == SUMMARY
    assert counter.long_text_threads and threading.main_thread().name not in counter.long_text_threads
    prompt = server.requests[-1].body["messages"]
    assert sum(len(part["content"]) for part in prompt) < 100_000  # cut to the adapter's input budget


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("field", ["stream", "model", "messages", "max_tokens", "timeout"])
def test_summarizer_adapter_refuses_extra_parameters_it_sets_itself(
    provider: str, field: str, server: ChatCompletionsServer
) -> None:
    """``extra_parameters={"stream": True}`` sent a request (billed) whose stream was then read as a
    malformed response; a ``model`` or ``max_tokens`` there was silently replaced (or sent next to
    ``max_completion_tokens``, which OpenAI refuses)."""
    with pytest.raises(InvalidArgumentError, match=f"extra_parameters: .*{field}.*set by the summarizer"):
        make_summarizer(provider, server, extra_parameters={field: True, "temperature": 0})
    assert server.requests == []


async def test_summarizer_adapter_sends_its_other_extra_parameters(server: ChatCompletionsServer) -> None:
    summarizer = make_summarizer("openai", server, extra_parameters={"temperature": 0, "seed": 7})
    async with summarizer:
        await summarizer.complete([Message.create("user", "I am Ada, from Lisbon.")], 40)
    body = server.requests[-1].body
    assert body["temperature"] == 0 and body["seed"] == 7 and body["model"] == "stub-model"


@pytest.mark.parametrize(
    ("provider", "variable"), [("openai", "OPENAI_BASE_URL"), ("anthropic", "ANTHROPIC_BASE_URL")]
)
def test_summarizer_adapter_reads_an_empty_base_url_variable_as_unset(
    provider: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OPENAI_BASE_URL=`` (an env file's empty line) made the SDK send every request to ``''``: three
    attempts, then "connection failed (UnsupportedProtocol)" instead of a call to the provider."""
    monkeypatch.setenv(variable, "")
    summarizer: LLMSummarizer
    if provider == "openai":
        summarizer = OpenAISummarizer("gpt-4o-mini", api_key="sk-test")
        assert summarizer.limit_field == "max_completion_tokens"
    else:
        summarizer = AnthropicSummarizer("claude-haiku-4-5", api_key="test-key")
    assert str(summarizer.client.base_url).startswith(f"https://api.{provider}.com")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("base_url", ["127.0.0.1:8000/v1", "", "ftp://host/v1"])
def test_summarizer_adapter_refuses_a_base_url_that_is_no_http_url(
    provider: str, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``base_url`` without its scheme was taken for a local server; every request then failed with
    "connection failed (UnsupportedProtocol)", after its retries."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    adapter = OpenAISummarizer if provider == "openai" else AnthropicSummarizer
    with pytest.raises(InvalidArgumentError, match=r"base_url: got .*; allowed an http:// or https:// URL"):
        adapter("m", base_url=base_url)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("source", ["argument", "variable"])
def test_summarizer_adapter_refusing_a_base_url_does_not_quote_its_credentials(
    provider: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal quoted ``base_url`` whole: ``user:token@`` in it went to the error (and the logs)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    adapter = OpenAISummarizer if provider == "openai" else AnthropicSummarizer
    for url in ("htps://alice:s3cr3t-pw@proxy.internal/v1", "proxy.internal:s3cr3t-pw@x/v1"):
        if source == "variable":
            monkeypatch.setenv(f"{provider.upper()}_BASE_URL", url)
        with pytest.raises(
            (InvalidArgumentError, ConfigurationError), match="an http:// or https:// URL"
        ) as caught:
            adapter("m", base_url=url if source == "argument" else None)
        assert "s3cr3t-pw" not in str(caught.value) and "s3cr3t-pw" not in repr(caught.value.got)
        assert "***@" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_endpoint_does_not_show_the_credentials_in_its_url(
    provider: str, server: ChatCompletionsServer
) -> None:
    """``endpoint`` returned the base URL whole: ``user:token@`` in it went wherever the endpoint was shown
    (a log line, a health page). It shows ``***@`` now; requests still go to the URL as given."""
    base_url = server.base_url if provider == "openai" else server.anthropic_base_url
    with_credentials = base_url.replace("http://", "http://alice:s3cr3t-pw@")
    adapter = OpenAISummarizer if provider == "openai" else AnthropicSummarizer
    summarizer = adapter("stub-model", base_url=with_credentials, api_key="test-key", timeout=2.0)
    async with summarizer:
        assert "s3cr3t-pw" not in summarizer.endpoint and "alice" not in summarizer.endpoint
        assert summarizer.endpoint.startswith("http://***@127.0.0.1:")
        assert "s3cr3t-pw" not in repr(summarizer) and "s3cr3t-pw" not in str(summarizer.telemetry_attributes)
        assert summarizer.telemetry_attributes["server.address"] == "127.0.0.1"
        assert SUMMARY in await summarizer([Message.create("user", "I am Ada, from Lisbon.")], 40)
    assert len(server.requests) == 1  # the request went to the real URL


async def test_anthropic_usage_counts_cached_input_tokens(server: ChatCompletionsServer) -> None:
    """Anthropic's ``input_tokens`` leaves out the tokens read from or written to the prompt cache (a gateway
    or ``extra_parameters`` may enable it): they are input all the same, billed, and the GenAI semantic
    conventions count them in ``gen_ai.usage.input_tokens``."""
    server.reply_usage = {
        "input_tokens": 3,
        "output_tokens": 40,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    }
    summarizer = make_summarizer("anthropic", server)
    async with summarizer:
        response = await summarizer.complete([Message.create("user", "I am Ada, from Lisbon.")], 40)
    assert response.usage.input_tokens == 1103 and response.usage.output_tokens == 40
    assert summarizer.input_tokens == 1103
    server.reply_usage = {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": None}
    async with make_summarizer("anthropic", server) as plain:
        assert (await plain.complete([Message.create("user", "hi there")], 40)).usage.input_tokens == 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_timeout_bounds_a_response_that_trickles_in(
    provider: str, server: ChatCompletionsServer
) -> None:
    """The SDKs' timeout bounds each read, not the request: an answer whose bytes kept coming (a gateway
    sending keep-alive whitespace before a slow answer) took its full time however small ``timeout``."""
    server.faults.append(Fault(kind="trickle", seconds=6.0))
    summarizer = make_summarizer(provider, server, timeout=0.5, max_retries=0)
    started = time.monotonic()
    async with summarizer:
        with pytest.raises(SummarizerRequestError, match="timed out"):
            await summarizer.complete([Message.create("user", "I am Ada, from Lisbon.")], 40)
    assert time.monotonic() - started < 3.0
    server.faults.append(Fault(kind="trickle", seconds=0.3))  # a trickle within the timeout is an answer
    async with make_summarizer(provider, server, timeout=3.0) as patient:
        assert model_text((await patient.complete([Message.create("user", "I am Ada.")], 40)).text) == SUMMARY


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("status", "hint"), [(401, "check the API key"), (403, "check the API key"), (404, "check the model")]
)
async def test_summarizer_adapter_says_what_to_check_on_a_client_error(
    provider: str, status: int, hint: str, server: ChatCompletionsServer
) -> None:
    """ "HTTP 404 (NotFoundError)" was all a user got for a base_url without its /v1 or a model the server
    does not have (the body is left out: some servers quote the request in it)."""
    server.faults.append(Fault(status=status))
    async with make_summarizer(provider, server) as summarizer:
        with pytest.raises(SummarizerRequestError, match=f"HTTP {status} .*{hint}"):
            await summarizer.complete([Message.create("user", "hello there, my name is Ada")], 50)


QUOTED = "Ada's passport number is X1234567"  # what a server's error message may quote of the request


@pytest.mark.parametrize(
    ("provider", "body", "expected"),
    [
        (  # OpenAI
            "openai",
            {
                "error": {
                    "message": f"This model's maximum context length is 4096 tokens ({QUOTED})",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            "HTTP 400 (BadRequestError: context_length_exceeded); the prompt does not fit the model's "
            "context window: lower max_input_tokens",
        ),
        (  # llama.cpp's server
            "openai",
            {
                "error": {
                    "code": 400,
                    "message": f"exceeds the context ({QUOTED})",
                    "type": "exceed_context_size_error",
                }
            },
            "HTTP 400 (BadRequestError: exceed_context_size_error); the prompt does not fit the model's "
            "context window: lower max_input_tokens",
        ),
        (
            "anthropic",
            {"type": "error", "error": {"type": "invalid_request_error", "message": f"too long: {QUOTED}"}},
            "HTTP 400 (BadRequestError); check extra_parameters, and that max_input_tokens fits the model's "
            "context window",
        ),
    ],
    ids=["openai", "llama.cpp", "anthropic"],
)
async def test_summarizer_adapter_says_what_to_check_on_a_bad_request(
    provider: str, body: dict[str, Any], expected: str, server: ChatCompletionsServer
) -> None:
    """A prompt larger than the model's context (a local model of 4,096 tokens, ``max_input_tokens`` 8,000 by
    default) failed every compression with "HTTP 400 (BadRequestError)", and nothing said what to change.
    The error's code is named when the body has a specific one, and the hint says what to check; the
    server's message (which may quote the request) is still left out."""
    server.faults.append(Fault(status=400, body=body))
    async with make_summarizer(provider, server) as summarizer:
        with pytest.raises(SummarizerRequestError) as raised:
            await summarizer.complete([Message.create("user", "hello there, my name is Ada")], 50)
    assert str(raised.value) == f"{provider}:stub-model: {expected}"
    assert QUOTED not in str(raised.value) and raised.value.attempts == 1


async def test_summarizer_adapter_on_a_base_url_without_v1_says_to_check_it(
    server: ChatCompletionsServer,
) -> None:
    base_url = server.base_url.removesuffix("/v1")  # Ollama's http://127.0.0.1:11434 instead of .../v1
    async with OpenAISummarizer("stub-model", base_url=base_url) as summarizer:
        with pytest.raises(SummarizerRequestError, match=r"HTTP 404 .*base_url .*/v1"):
            await summarizer.complete([Message.create("user", "hello there, my name is Ada")], 50)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_summarizer_adapter_refuses_a_synchronous_client(
    provider: str, server: ChatCompletionsServer
) -> None:
    """``client=OpenAI()`` (not ``AsyncOpenAI``) was accepted: each summary then sent its request from the
    event loop, blocking it, and failed on the answer with "malformed response (TypeError)"."""
    import anthropic
    import openai

    sync_client: Any
    if provider == "openai":
        sync_client = openai.OpenAI(base_url=server.base_url, api_key="test-key")
        with pytest.raises(InvalidArgumentError, match=r"client: got .*; allowed an openai\.AsyncOpenAI"):
            OpenAISummarizer("stub-model", client=sync_client)
    else:
        sync_client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test-key")
        with pytest.raises(
            InvalidArgumentError, match=r"client: got .*; allowed an anthropic\.AsyncAnthropic"
        ):
            AnthropicSummarizer("stub-model", client=sync_client)
    sync_client.close()
    adapter = OpenAISummarizer if provider == "openai" else AnthropicSummarizer
    with pytest.raises(InvalidArgumentError, match="client: got 'http://"):
        adapter("stub-model", client=server.base_url)  # type: ignore[arg-type]
    assert server.requests == []


async def test_anthropic_summarizer_on_a_base_url_with_v1_says_to_drop_it(
    server: ChatCompletionsServer,
) -> None:
    """The Anthropic SDK appends /v1/messages itself: an OpenAI-style base_url ending in /v1 is a 404."""
    base_url = server.anthropic_base_url + "/v1"
    async with AnthropicSummarizer("stub-model", base_url=base_url, api_key="test-key") as summarizer:
        with pytest.raises(SummarizerRequestError, match=r"HTTP 404 .*without the /v1"):
            await summarizer.complete([Message.create("user", "hello there, my name is Ada")], 50)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_a_wrong_key_shows_in_the_status_and_the_circuit_warning(
    provider: str, server: ChatCompletionsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After three 401s the status and the circuit's warning said "last: SummarizerRequestError", and so did
    every later compression record: the adapter's own message (no payload) says what to check."""
    server.faults.extend(Fault(status=401) for _ in range(3))
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        records = await fill_until_compressed(manager, count=4)
        status = manager.get_system_status()["summarizer"]
    assert status["state"] == "open"
    assert "HTTP 401" in status["last_error"] and "check the API key" in status["last_error"]
    assert "check the API key" in records[3]["error"]  # answered by the open circuit
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "circuit" in r.getMessage()
    ]
    assert warnings and "check the API key" in warnings[0]
    assert "test-key" not in repr(status) + "".join(warnings)  # never the key itself


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_connection_error_through_a_proxy_says_so(
    provider: str, server: ChatCompletionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY set (a corporate environment) the SDK sends a local server's requests to the proxy:
    "connection failed (ConnectError)" for a server that is up did not say where the request went."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://user:proxy-secret@127.0.0.1:9")  # nothing listens there
    message = [Message.create("user", "hello there, my name is Ada")]
    async with make_summarizer(provider, server, max_retries=0) as summarizer:
        with pytest.raises(SummarizerRequestError, match="connection failed") as failed:
            await summarizer.complete(message, 50)
    assert "HTTP_PROXY" in str(failed.value) and "NO_PROXY" in str(failed.value)
    assert "proxy-secret" not in str(failed.value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # what the message advises: the request goes straight
    async with make_summarizer(provider, server, max_retries=0) as summarizer:
        assert model_text((await summarizer.complete(message, 50)).text) == SUMMARY


async def test_summarizer_in_a_guard_of_ones_own_still_reports_to_each_manager(
    server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """ "Pass your own guard to choose other settings": a manager given a ``SummarizerGuard`` used it as it
    was, without its report, and its summaries went missing from the monitors (``summarize`` latency,
    failures, token usage). Each manager records the calls its own window made, also when two share the
    guard (one circuit breaker for one endpoint), and the guard's own ``on_report`` still gets them."""
    reports: list[SummaryReport] = []
    summarizer = make_summarizer("openai", server)
    guard = SummarizerGuard(summarizer, failure_threshold=5, cooldown=5.0, on_report=reports.append)
    first = EnhancedContextManager(config_for(tmp_path / "a"), summarizer=guard)
    second = EnhancedContextManager(config_for(tmp_path / "b"), summarizer=guard)
    async with first, second:
        await fill_until_compressed(first)
        calls = len(server.requests)
        assert calls >= 1
        for manager, expected in ((first, calls), (second, 0)):
            monitor = manager.performance_monitor
            assert monitor is not None
            usage = monitor.token_usage().get("summarize", {"calls": 0})
            stats = monitor.operation_stats().get("summarize")
            assert usage["calls"] == expected
            assert (stats.successes if stats is not None else 0) == expected
        assert len(reports) == calls
        assert first.get_system_status()["summarizer"]["calls"] == calls


@pytest.mark.parametrize(("provider", "stop"), [("openai", "length"), ("anthropic", "max_tokens")])
async def test_summarizer_adapter_a_summary_cut_at_its_output_limit_ends_at_its_last_whole_sentence(
    provider: str, stop: str, server: ChatCompletionsServer, tmp_path: Path
) -> None:
    """A model writing past the summary's output limit is stopped mid-sentence (the prompt asks for 0.7
    words a token of budget: English prose takes about 1.3 tokens a word). The cut answer became the
    summary as it was, its last words ("she asked how to") reading as something said. It now ends at its
    last whole sentence, and the response says it was cut."""
    server.reply_text, server.reply_stop = f"{SUMMARY} Later she asked how to", stop
    summarizer = make_summarizer(provider, server)
    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        record = (await fill_until_compressed(manager))[-1]
        assert record["strategy"] == "custom", record
        assert summary_text(manager).endswith(SUMMARY)
    response = await summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 120)
    assert response.cut_at_limit and response.usage.cut_at_limit
    assert response.text.endswith(SUMMARY)
    server.reply_stop = None  # a finished answer is kept whole
    response = await summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 120)
    assert not response.cut_at_limit and response.text.endswith("Later she asked how to")


LONG = "Ada lives in Lisbon and takes tram 28 to work every single morning."


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Ada lives in Lisbon. She likes trams. She asked how to", "Ada lives in Lisbon. She likes trams."),
        ('He said "take tram 28." Then she', 'He said "take tram 28."'),
        (
            "- Lisbon, tram 28\n- deliveries in the morning\n- she asked",
            "- Lisbon, tram 28\n- deliveries in the morning",
        ),
        ("アダはリスボンに住んでいる。トラムが好き。彼女は", "アダはリスボンに住んでいる。トラムが好き。"),
        ("Ada lives in Lisbon. She likes trams.", "Ada lives in Lisbon. She likes trams."),  # ends on one
        ("Version 3.5 of the app crashes when", "Version 3.5 of the app crashes when"),  # no sentence end
        ("Short. A very long sentence that goes on and on about trams and the city", None),  # under half
        (LONG + " Ask Mr. Jones and", LONG),
        (LONG + " Take e.g. tram 15", LONG),
        (LONG + " Tickets etc. and", LONG),
        (LONG + " She likes U.S. trams", LONG),
        ("1. First step.\n2. Second step.\n3. Third", "1. First step.\n2. Second step.\n"[:-1]),
        (LONG + " Ada met J. Smith", LONG),
    ],
)
def test_last_whole_sentences(text: str, kept: str | None) -> None:
    assert last_whole_sentences(text) == (text if kept is None else kept)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_reads_no_more_of_an_answer_than_its_budget_can_hold(
    provider: str, server: ChatCompletionsServer
) -> None:
    # a server ignoring the output limit answered 22 MB: the window counted and cut all of it after the call,
    # outside summarizer_timeout (an add under summarizer_timeout=1 took 5.5 s)
    server.reply_text = "Ada lives in Lisbon and likes trams a lot. " * 20_000
    summarizer = make_summarizer(provider, server)
    response = await summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 100)
    text = model_text(response.text)
    assert server.reply_text.startswith(text) and 100 * 4 < len(text) <= 100 * 64
    window = ContextWindow(150, summarizer=summarizer, summarizer_timeout=5)
    for number in range(12):
        await window.add(Message.create("user", f"turn {number}: the tram 28 leaves every twelve minutes."))
    record = window.compression_history[0]
    assert record.strategy == "custom" and window.token_count <= 150
    assert window.summary is not None and "Ada lives in Lisbon and likes trams" in window.summary.content
    await summarizer.cleanup()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_stops_reading_an_answer_far_past_its_output_limit(
    provider: str, server: ChatCompletionsServer
) -> None:
    # a server ignoring max_tokens answered 22 MB: the SDK read all of it and parsed it on the event loop
    # (the loop's longest step 330 ms with openai, 46 ms with anthropic) to keep a few kilobytes of it
    summarizer = make_summarizer(provider, server, timeout=30.0)
    messages = [Message.create("user", "Ada lives in Lisbon.")]
    assert model_text((await summarizer.complete(messages, 100)).text) == SUMMARY  # the SDK modules loaded
    server.reply_text = "Ada lives in Lisbon and likes trams a lot. " * 512_000

    async def summarize() -> BaseException | None:
        try:
            await summarizer.complete(messages, 100)
        except SummarizerRequestError as error:
            return error
        return None

    error, longest_step = await longest_loop_step(summarize)
    assert isinstance(error, SummarizerRequestError) and error.attempts == 1 and len(server.requests) == 2
    assert re.search(r"the response passed 1,1\d\d,\d\d\d bytes.*ignores the output limit", str(error))
    assert longest_step < 0.025, longest_step  # about 2 ms: read a chunk at a time, never parsed
    await summarizer.cleanup()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_keeps_a_long_answer_within_its_output_limit_whole(
    provider: str, server: ChatCompletionsServer
) -> None:
    # runs of '=' and spaces take 64 and 128 characters a token: an answer within its output limit was cut
    # at 64 characters a token of the limit, losing its end
    summarizer = make_summarizer(provider, server)
    counter = ExactTokenCounter()
    answer = "Ada lives in Lisbon.\n" + "=" * 4000 + "\n" + " " * 9000 + "She likes trams."
    server.reply_text = answer
    response = await summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 200)
    limit = response.prompt.max_output_tokens
    assert len(answer) > 64 * limit and counter.count(answer) <= limit
    assert model_text(response.text) == answer
    # an answer far past the limit in tokens is still cut, in tokens
    server.reply_text = (" " * 128 + "x") * 5000
    response = await summarizer.complete([Message.create("user", "Ada lives in Lisbon.")], 200)
    kept = model_text(response.text)
    assert server.reply_text.strip().startswith(kept) and limit < counter.count(kept) <= 2 * limit
    await summarizer.cleanup()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_summarizer_adapter_cuts_a_dense_answer_off_the_event_loop(
    provider: str, server: ChatCompletionsServer
) -> None:
    # an answer of more than 64 characters a token but under OFF_LOOP_CHARS (99,000 '=', 1,547 tokens) was
    # encoded on the event loop to cut it in tokens: '=' runs encode about 20 times slower than prose,
    # so the loop's longest step was about 80 ms
    summarizer = make_summarizer(provider, server)
    messages = [Message.create("user", "Ada lives in Lisbon.")]
    assert model_text((await summarizer.complete(messages, 100)).text) == SUMMARY  # tokenizer loaded
    server.reply_text = "=" * 99_000
    response, longest_step = await longest_loop_step(lambda: summarizer.complete(messages, 1000))
    assert len(server.reply_text) > 64 * response.prompt.max_output_tokens
    assert model_text(response.text) == server.reply_text  # within twice its limit in tokens: kept whole
    assert longest_step < 0.02, longest_step
    await summarizer.cleanup()


class SliceCountingText(str):
    """A text that counts the characters its slices and indexing copy."""

    copied = 0

    def __getitem__(self, key: Any) -> str:
        piece = str.__getitem__(self, key)
        SliceCountingText.copied += len(piece)
        return piece


@pytest.mark.parametrize("sentences", [1_000, 16_000])
def test_last_whole_sentences_reads_a_long_answer_in_linear_time(sentences: int) -> None:
    # a server ignoring the output limit answered 688 KB with finish_reason "length": each full stop sliced
    # the text up to it and from it, 5.4 s on the event loop (quadratic), past any summarizer_timeout
    text = SliceCountingText("Ada lives in Lisbon and likes trams a lot. " * sentences + "She asked how to")
    SliceCountingText.copied = 0
    kept = last_whole_sentences(text)
    assert kept == text[: -len(" She asked how to")]
    assert SliceCountingText.copied <= 4 * len(text)  # was about sentences / 2 times the text
