"""OpenTelemetry (core/telemetry.py): the SDK's in-memory span exporter and metric reader after a workload."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from context_manager import ContextManagerConfig, EnhancedContextManager
from context_manager.core.errors import InvalidArgumentError, InvalidMemoryError, InvalidRoleError
from context_manager.core.memory.manager import ALL_USERS
from context_manager.core.messages import ToolCall
from context_manager.core.summarizers import (
    AnthropicSummarizer,
    LLMSummarizer,
    OpenAISummarizer,
    SummaryPrompt,
    SummaryUsage,
)
from context_manager.core.summarizers.llm import RequestFailure
from context_manager.core.telemetry import (
    DURATION_BUCKETS,
    MemorySizeSampler,
    configure_opentelemetry,
    telemetry_for_current_providers,
)
from context_manager.core.tool_system import ToolErrorType, ToolManager, tool
from tests.chat_completions_server import USAGE, Fault, running_server


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        return spans if name is None else [span for span in spans if span.name == name]

    def points(self, metric_name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == metric_name:
                        found.extend(metric.data.data_points)
        return found

    def point(self, metric_name: str, **attributes: Any) -> Any:
        matching = [
            point
            for point in self.points(metric_name)
            if all(point.attributes.get(key) == value for key, value in attributes.items())
        ]
        assert len(matching) == 1, (metric_name, attributes, [p.attributes for p in self.points(metric_name)])
        return matching[0]


@pytest.fixture
def otel() -> Iterator[Otel]:
    state = Otel()
    configure_opentelemetry(
        tracer_provider=state.tracer_provider,
        meter_provider=state.meter_provider,
        memory_sample_interval=0.05,
    )
    try:
        yield state
    finally:
        configure_opentelemetry()
        state.tracer_provider.shutdown()
        state.meter_provider.shutdown()


@tool(name="word_count")
async def word_count(text: str) -> int:
    """Count words."""
    return len(text.split())


@tool(name="flaky_lookup")
async def flaky_lookup(key: str) -> str:
    """A tool whose backend is down: a failure of the service, not of the caller's input."""
    raise ConnectionError(f"lookup service unreachable for {key}")


def config_for(tmp_path: Path, **options: Any) -> ContextManagerConfig:
    values: dict[str, Any] = {
        "max_tokens": 300,
        "cache_path": tmp_path / "cache",
        "enable_health_checks": False,
    }
    values.update(options)
    return ContextManagerConfig(**values)


async def test_opentelemetry_spans_and_metrics_after_a_workload(otel: Otel, tmp_path: Path) -> None:
    config = config_for(tmp_path)
    async with EnhancedContextManager(config) as manager:
        manager.tool_manager.register_tool(word_count)
        manager.tool_manager.register_tool(flaky_lookup)
        for turn in range(30):
            await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
        with pytest.raises(InvalidRoleError):
            await manager.add_message("narrator", "not a role")
        hits = [len(await manager.search_memory("harbour lanterns", limit=limit)) for limit in (3, 5)]
        ok = await manager.execute_tool("word_count", text="one two three")
        missing = await manager.execute_tool("no_such_tool")
        broken = await manager.execute_tool("flaky_lookup", key="k1")
        history = manager.compression_history
        final = manager.get_context_summary()
        stats = await manager.memory_manager.get_memory_stats(user_id=ALL_USERS)
        monitor = manager.performance_monitor
        assert monitor is not None
        monitored = monitor.operation_stats()
    assert ok.success and not missing.success and not broken.success and history

    # spans
    adds = otel.finished("context_manager.add_message")
    assert len(adds) == 31
    failed = [span for span in adds if span.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].events[0].name == "exception"
    assert failed[0].attributes["error.type"] == "InvalidRoleError"
    good = [span for span in adds if span.status.status_code is not StatusCode.ERROR]
    assert all(span.attributes["context_manager.message.role"] == "user" for span in good)
    assert all(0 < span.attributes["context_manager.window.tokens"] <= 300 for span in good)
    assert sum(span.attributes["context_manager.compressed"] for span in good) == len(history)

    compressions = otel.finished("context_manager.compression")
    assert len(compressions) == len(history)
    add_ids = {span.context.span_id: span for span in good}
    for span, record in zip(compressions, history, strict=True):
        parent = add_ids[span.parent.span_id]  # a child of the add that triggered it
        assert parent.attributes["context_manager.compressed"] is True
        assert span.attributes["context_manager.compression.tokens_before"] == record["tokens_before"]
        assert span.attributes["context_manager.compression.tokens_after"] == record["tokens_after"]
        assert span.attributes["context_manager.compression.evicted"] == record["removed_count"]
        assert span.attributes["context_manager.compression.strategy"] == "extractive"
        assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time

    searches = otel.finished("context_manager.search_memory")
    assert [span.attributes["context_manager.search.hits"] for span in searches] == hits
    assert [span.attributes["context_manager.search.limit"] for span in searches] == [3, 5]

    [tool_span] = otel.finished("execute_tool word_count")
    assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool_span.attributes["gen_ai.tool.name"] == "word_count"
    assert tool_span.attributes["gen_ai.tool.type"] == "function"  # the GenAI conventions' tool type
    assert tool_span.attributes["context_manager.tool.outcome"] == "success"
    [unknown_span] = otel.finished("execute_tool")  # a name the model made up is not a span name
    assert unknown_span.attributes["gen_ai.tool.name"] == "no_such_tool"
    assert "gen_ai.tool.type" not in unknown_span.attributes  # no tool: no type
    assert unknown_span.attributes["context_manager.tool.outcome"] == "unknown_tool"
    assert unknown_span.status.status_code is StatusCode.ERROR
    for span in otel.finished():  # no payload in any attribute
        assert not any(
            "harbour" in str(value) or "one two three" in str(value) for value in span.attributes.values()
        )

    # metrics
    duration = otel.point(
        "context_manager.operation.duration",
        **{"context_manager.operation": "add_message", "context_manager.outcome": "success"},
    )
    assert duration.count == 30 and tuple(duration.explicit_bounds) == DURATION_BUCKETS
    durations = "context_manager.operation.duration"  # its count is the operation count
    assert (
        otel.point(
            durations, **{"context_manager.operation": "add_message", "context_manager.outcome": "success"}
        ).count
        == 30
    )
    # a message refused for its bad role is the caller's error (rejected, as the monitor counts it), not
    # the service's: its duration is counted under outcome "rejected", not in the errors counter
    rejected = otel.point(
        durations, **{"context_manager.operation": "add_message", "context_manager.outcome": "rejected"}
    )
    assert rejected.count == 1 and rejected.attributes["error.type"] == "InvalidRoleError"
    assert not [
        point
        for point in otel.points(durations)
        if point.attributes.get("context_manager.outcome") == "error"
        and point.attributes["context_manager.operation"] != "execute_tool"
    ]
    assert otel.point(durations, **{"context_manager.operation": "search_memory"}).count == 2
    assert otel.point(durations, **{"context_manager.operation": "compression"}).count == len(history)
    errors = "context_manager.errors"
    [failure] = otel.points(errors)  # the tool that raised; not the bad role, not the unknown tool
    assert failure.value == 1
    assert failure.attributes["context_manager.operation"] == "execute_tool"
    assert failure.attributes["error.type"] == "tool_error"
    assert failure.attributes["gen_ai.tool.name"] == "flaky_lookup"
    unknown = otel.point(durations, **{"gen_ai.tool.name": "_OTHER"})
    assert unknown.attributes["context_manager.outcome"] == "rejected"
    assert unknown.attributes["error.type"] == "unknown_tool"
    evicted = otel.point("context_manager.compression.evicted_messages")
    assert evicted.value == sum(record["removed_count"] for record in history)
    assert otel.point("context_manager.window.utilization").value == pytest.approx(final["utilization"])
    assert otel.point("context_manager.window.tokens").value == final["token_count"]
    for tier, count in stats["by_tier"].items():  # sampled again when the manager closed
        assert (
            otel.point("context_manager.memory.count", **{"context_manager.memory.tier": tier}).value == count
        )
    assert otel.point("context_manager.memory.storage.size").value > 0

    # the monitor keeps working alongside
    assert monitored["add_message"].count == 31 and monitored["search_memory"].count == 2


async def test_opentelemetry_records_summary_token_usage(otel: Otel, tmp_path: Path) -> None:
    with running_server() as server:
        summarizer = OpenAISummarizer("stub-model", base_url=server.base_url)
        async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
            for turn in range(30):
                await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
            summaries = len(manager.compression_history)
        await summarizer.aclose()
    assert summaries >= 1
    # a local OpenAI-compatible server is not OpenAI: no well-known provider name, its address says which
    host, port = urlsplit(server.base_url).hostname, urlsplit(server.base_url).port
    labels = {
        "gen_ai.provider.name": "_OTHER",
        "gen_ai.request.model": "stub-model",
        "server.address": host,
        "server.port": port,
    }
    used_input = otel.point("gen_ai.client.token.usage", **labels, **{"gen_ai.token.type": "input"})
    used_output = otel.point("gen_ai.client.token.usage", **labels, **{"gen_ai.token.type": "output"})
    assert used_input.count == summaries and used_input.sum == USAGE["prompt_tokens"] * summaries
    assert used_output.sum == USAGE["completion_tokens"] * summaries
    # the GenAI semantic conventions' advice for this histogram (it stopped at 1048576: a backend merging
    # these series with another instrumentation's, e.g. opentelemetry-instrumentation-openai-v2, saw two
    # bucket layouts)
    assert tuple(used_input.explicit_bounds) == tuple(4**power for power in range(14))
    summarize = otel.point("context_manager.operation.duration", **{"context_manager.operation": "summarize"})
    assert summarize.count == summaries
    for span in otel.finished("context_manager.compression"):
        assert span.attributes["context_manager.compression.strategy"] == "custom"


async def test_opentelemetry_records_the_genai_duration_of_each_summary_call(
    otel: Otel, tmp_path: Path
) -> None:
    """An LLM summary had no ``gen_ai.client.operation.duration`` point (the GenAI conventions' metric of a
    client's model call, which dashboards built on those conventions read): only the library's own
    ``context_manager.operation.duration``. Each call has one now, a failed one with ``error.type``."""
    with running_server() as server:
        server.faults.append(Fault(status=500))
        summarizer = OpenAISummarizer("stub-model", base_url=server.base_url, max_retries=0)
        async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
            turn = 0
            while len(manager.compression_history) < 2:
                await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
                turn += 1
            strategies = [record["strategy"] for record in manager.compression_history]
        await summarizer.aclose()
    assert strategies[0] != "custom" and strategies[1] == "custom"
    host, port = urlsplit(server.base_url).hostname, urlsplit(server.base_url).port
    labels = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "_OTHER",
        "gen_ai.request.model": "stub-model",
        "server.address": host,
        "server.port": port,
    }
    points = otel.points("gen_ai.client.operation.duration")
    failed = [point for point in points if "error.type" in point.attributes]
    succeeded = [point for point in points if "error.type" not in point.attributes]
    assert len(failed) == len(succeeded) == 1
    assert dict(failed[0].attributes) == {**labels, "error.type": "SummarizerRequestError"}
    assert dict(succeeded[0].attributes) == {**labels, "gen_ai.response.model": "stub-model"}
    assert failed[0].count == 1 and succeeded[0].count == len(strategies) - 1 and succeeded[0].sum > 0
    assert tuple(succeeded[0].explicit_bounds) == tuple(0.01 * 2**power for power in range(14))


async def test_opentelemetry_token_usage_names_the_requested_and_the_answering_model(
    otel: Otel, tmp_path: Path
) -> None:
    """OpenAI answers a request for ``gpt-4o-mini`` as ``gpt-4o-mini-2024-07-18``: that snapshot went into
    ``gen_ai.request.model`` (the GenAI conventions' name of the model asked for), splitting the series of
    one configured model by whatever snapshot served it."""
    with running_server() as server:
        server.reply_model = "stub-model-2026-01-01"
        summarizer = OpenAISummarizer("stub-model", base_url=server.base_url)
        async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
            for turn in range(30):
                await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
            summaries = len(manager.compression_history)
        await summarizer.aclose()
    assert summaries >= 1
    labels = {
        "gen_ai.request.model": "stub-model",
        "gen_ai.response.model": "stub-model-2026-01-01",
        "gen_ai.token.type": "input",
    }
    assert otel.point("gen_ai.client.token.usage", **labels).count == summaries


async def test_opentelemetry_a_rejected_input_leaves_no_payload_in_its_span(
    otel: Otel, tmp_path: Path
) -> None:
    """The error of a rejected add quotes what was given ("content: got 'my card is 4111 ...'"), and the
    span recorded the exception with its message and traceback: the user's text went to the trace
    backend, although no message or query payload is to leave the library in telemetry."""
    secret = "my card is 4111 1111 1111 1111"
    async with EnhancedContextManager(config_for(tmp_path)) as manager:
        with pytest.raises(InvalidArgumentError):
            await manager.add_message("user", secret + "\x00")
        with pytest.raises(InvalidArgumentError):
            await manager.add_message("user", "hello", metadata={"card": secret, "when": float("nan")})
    failed = otel.finished("context_manager.add_message")
    assert len(failed) == 2
    for span in failed:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "InvalidMessageError"
        [event] = span.events
        assert event.name == "exception" and event.attributes is not None
        assert event.attributes["exception.type"].endswith("InvalidMessageError")
        recorded = repr((dict(span.attributes), span.status.description, [dict(event.attributes)]))
        assert "4111" not in recorded and "card" not in recorded


async def test_opentelemetry_tool_manager_spans_without_a_context_manager(otel: Otel) -> None:
    tools = ToolManager()
    tools.register_tool(word_count)
    result = await tools.execute("word_count", text="a b")
    bad = await tools.execute("word_count", text=3)
    assert result.success and not bad.success
    outcomes = [
        span.attributes["context_manager.tool.outcome"] for span in otel.finished("execute_tool word_count")
    ]
    assert outcomes == ["success", "invalid_arguments"]


async def test_opentelemetry_unknown_tool_names_make_no_series_of_their_own(otel: Otel) -> None:
    """Each tool name a model made up was a metric series and a span name of its own.

    Past the SDK's 2,000 series of an instrument, every new series (a real tool used for the first
    time) was folded into one ``otel.metric.overflow`` series: its durations were lost.
    """
    tools = ToolManager()
    made_up = [f"lookup_order_{index}" for index in range(5)]
    for name in made_up:
        assert (await tools.execute(name, text="a")).error_type is ToolErrorType.UNKNOWN_TOOL
    tools.register_tool(word_count)
    assert (await tools.execute("word_count", text="a b")).success
    durations = otel.points("context_manager.operation.duration")
    assert sorted(point.attributes["gen_ai.tool.name"] for point in durations) == ["_OTHER", "word_count"]
    unknown = otel.point("context_manager.operation.duration", **{"gen_ai.tool.name": "_OTHER"})
    assert unknown.count == 5 and unknown.attributes["error.type"] == "unknown_tool"
    spans = otel.finished()
    assert sorted(span.name for span in spans) == ["execute_tool"] * 5 + ["execute_tool word_count"]
    # the span still says which name the model asked for
    assert [span.attributes["gen_ai.tool.name"] for span in spans[:5]] == made_up


async def test_managers_sharing_a_store_share_one_memory_size_sampler(otel: Otel, tmp_path: Path) -> None:
    """Each manager on a shared store (one per request) read the whole store's statistics as it opened and
    as it closed, and sampled them every interval: 2 statistics reads per request (100 ms with 3,000
    memories, against 9 ms for the request without OpenTelemetry)."""

    def samplers() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if task.get_name() == "context_manager.telemetry"]

    config = config_for(tmp_path, storage_path=tmp_path / "memory")
    first = EnhancedContextManager(config, conversation_id="chat-a", user_id="a")
    await first.initialize()
    others = [EnhancedContextManager(config, conversation_id=f"chat-{i}", user_id=f"u{i}") for i in range(3)]
    for manager in others:
        await manager.initialize()
    assert all(manager.memory_manager is first.memory_manager for manager in others)
    assert len(samplers()) == 1
    await first.memory_manager.add_memory("the deploy window is Tuesday", importance=0.9, user_id="a")
    await first.cleanup()  # the manager that started sampling closes first: the others go on sampling it
    assert len(samplers()) == 1
    memory = others[0].memory_manager
    stats = await memory.get_memory_stats(user_id=ALL_USERS)
    for manager in others:
        await manager.cleanup()
    assert samplers() == []
    assert not memory.is_initialized
    assert sum(stats["by_tier"].values()) >= 1
    for tier, count in stats["by_tier"].items():
        point = otel.point("context_manager.memory.count", **{"context_manager.memory.tier": tier})
        assert point.value == count


async def test_a_closed_managers_memory_manager_is_freed(otel: Otel, tmp_path: Path) -> None:
    """The shared memory-size samplers were held by their memory manager, weakly, but each sampler held
    its memory manager: every manager made with OpenTelemetry metering kept its memory manager (its
    caches, its index) and a sampler alive for the life of the process after cleanup()."""
    freed = []
    for index in range(2):
        manager = EnhancedContextManager(config_for(tmp_path / str(index)))
        await manager.initialize()
        await manager.add_message("user", "hello")
        memory = weakref.ref(manager.memory_manager)
        await manager.cleanup()
        del manager
        gc.collect()
        freed.append(memory() is None)
    assert freed == [True, True]


async def test_a_shared_memory_sampler_samples_for_a_manager_started_while_another_was_cancelled(
    otel: Otel, tmp_path: Path
) -> None:
    """The first start took its sample before it started the periodic one: a second manager starting
    meanwhile only counted, and when the first one's initialize() was cancelled during that sample (a
    request's deadline) the second went on with no periodic sample at all: its gauges froze."""

    def periodic_samples() -> int:
        return sum(1 for task in asyncio.all_tasks() if task.get_name() == "context_manager.telemetry")

    async with EnhancedContextManager(config_for(tmp_path)) as manager:
        telemetry = telemetry_for_current_providers()
        assert telemetry is not None and telemetry.metering
        sampler = MemorySizeSampler(telemetry, manager.memory_manager, "sqlite")
        before = periodic_samples()  # the manager's own sampler
        first = asyncio.create_task(sampler.start())
        await asyncio.sleep(0)  # the first start reads the statistics in a worker thread
        await sampler.start()  # a second manager starts meanwhile
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await sampler.stop()  # the first manager's initialize() stops what it started
        await asyncio.sleep(0)
        assert periodic_samples() == before + 1  # the second manager still has its periodic sample
        await sampler.stop()
        assert periodic_samples() == before


async def test_opentelemetry_disabled_by_config_records_nothing(otel: Otel, tmp_path: Path) -> None:
    async with EnhancedContextManager(config_for(tmp_path, enable_opentelemetry=False)) as manager:
        await manager.add_message("user", "hello")
        await manager.search_memory("hello")
        await manager.execute_tool("no_such_tool")
    assert otel.finished() == []
    assert otel.points("context_manager.operation.duration") == []


async def test_opentelemetry_without_an_sdk_is_off(tmp_path: Path) -> None:
    configure_opentelemetry()  # the global providers: none configured in this test process
    assert telemetry_for_current_providers() is None
    async with EnhancedContextManager(config_for(tmp_path)) as manager:
        await manager.add_message("user", "hello")
        assert manager.get_context_summary()["message_count"] == 1


def test_opentelemetry_configure_rejects_a_bad_interval() -> None:
    with pytest.raises(InvalidArgumentError, match="memory_sample_interval: got 0"):
        configure_opentelemetry(memory_sample_interval=0)


async def test_opentelemetry_mcp_memory_tools_record_spans_and_metrics(otel: Otel, tmp_path: Path) -> None:
    from mcp.client import Client

    from context_manager.mcp_server import create_mcp_server

    server = create_mcp_server(ContextManagerConfig(storage_path=tmp_path / "memory"), user_id="ida")
    async with Client(server) as client:
        added = await client.call_tool(
            "memory_add", {"content": "Ida's locker is 42", "tags": ["gym", "ida"]}
        )
        rejected = await client.call_tool("memory_add", {"content": "a bad tag", "tags": [""]})
        found = await client.call_tool("memory_search", {"query": "locker", "limit": 3})
        await client.call_tool("memory_stats", {})
        memory_id = added.structured_content["id"]  # type: ignore[index]
        deleted = await client.call_tool("memory_delete", {"memory_id": memory_id})
    assert not added.is_error and rejected.is_error and not found.is_error and not deleted.is_error

    adds = otel.finished("context_manager.add_memory")
    assert [span.status.status_code is StatusCode.ERROR for span in adds] == [False, True]
    assert adds[0].attributes["context_manager.memory.tags"] == 2
    assert adds[1].attributes["error.type"] == "InvalidMemoryError"
    (search,) = otel.finished("context_manager.search_memory")
    assert search.attributes["context_manager.search.limit"] == 3
    assert search.attributes["context_manager.search.hits"] == 1
    assert len(otel.finished("context_manager.memory_stats")) == 1
    assert len(otel.finished("context_manager.delete_memory")) == 1
    assert (
        otel.point(
            "context_manager.operation.duration",
            **{"context_manager.operation": "add_memory", "context_manager.outcome": "success"},
        ).count
        == 1
    )
    # the bad tag is the caller's error: rejected, not an error of the service
    assert (
        otel.point(
            "context_manager.operation.duration",
            **{"context_manager.operation": "add_memory", "context_manager.outcome": "rejected"},
        ).attributes["error.type"]
        == "InvalidMemoryError"
    )
    assert not [
        p
        for p in otel.points("context_manager.errors")
        if p.attributes.get("context_manager.operation") == "add_memory"
    ]


async def test_stopping_the_memory_sampler_keeps_the_callers_cancellation(otel: Otel, tmp_path: Path) -> None:
    """stop() suppressed every CancelledError while it waited for its periodic task, its caller's own
    cancellation too: the task calling stop() went on (and took a last sample) as if never cancelled."""

    def periodic_samples() -> int:
        return sum(1 for task in asyncio.all_tasks() if task.get_name() == "context_manager.telemetry")

    async with EnhancedContextManager(config_for(tmp_path)) as manager:
        telemetry = telemetry_for_current_providers()
        assert telemetry is not None and telemetry.metering
        sampler = MemorySizeSampler(telemetry, manager.memory_manager, "sqlite")
        before = periodic_samples()  # the manager's own sampler
        await sampler.start()
        assert periodic_samples() == before + 1
        stopping = asyncio.create_task(sampler.stop())
        await asyncio.sleep(0)  # stop() has cancelled the periodic task and waits for it to end
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert stopping.cancelled()
        await asyncio.sleep(0)
        assert periodic_samples() == before  # the periodic task ended all the same
        await sampler.stop()  # stopping again (not cancelled) takes the last sample and returns


async def test_opentelemetry_records_compressions_of_add_messages_and_tool_results(
    otel: Otel, tmp_path: Path
) -> None:
    # add_messages (restoring a history) and execute_tool_calls (an agent loop) compress the window too:
    # each of their compressions is a span and is counted, as one triggered by add_message is
    config = config_for(tmp_path)
    async with EnhancedContextManager(config) as manager:
        manager.tool_manager.register_tool(word_count)
        history = [
            {"role": "user", "content": f"turn {turn}: the harbour lanterns were lit at {turn} pm"}
            for turn in range(40)
        ]
        await manager.add_messages(history)
        assert len(manager.compression_history) == 1
        for turn in range(40):
            call = ToolCall(f"call_{turn}", "word_count", {"text": f"lantern number {turn} is lit " * 4})
            await manager.execute_tool_calls([call])
            if len(manager.compression_history) > 1:
                break
        records = manager.compression_history
    assert len(records) == 2
    compressions = otel.finished("context_manager.compression")
    assert [span.attributes["context_manager.compression.tokens_before"] for span in compressions] == [
        record["tokens_before"] for record in records
    ]
    durations = "context_manager.operation.duration"
    assert otel.point(durations, **{"context_manager.operation": "compression"}).count == 2
    evicted = otel.point("context_manager.compression.evicted_messages")
    assert evicted.value == sum(record["removed_count"] for record in records)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_opentelemetry_records_no_token_usage_a_server_did_not_report(
    provider: str, otel: Otel, tmp_path: Path
) -> None:
    """A compatible server answering without ``usage`` (many local ones do) had its summaries recorded as
    0 input and 0 output tokens: false figures in ``gen_ai.client.token.usage`` and in the monitors' token
    usage. What was not reported is not recorded; a figure reported alone is."""
    with running_server() as server:
        server.omit_usage = True
        if provider == "openai":
            summarizer: LLMSummarizer = OpenAISummarizer("stub-model", base_url=server.base_url)
        else:
            summarizer = AnthropicSummarizer(
                "stub-model", base_url=server.anthropic_base_url, api_key="test-key"
            )
        async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
            for turn in range(30):
                await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
            summaries = len(manager.compression_history)
            assert summaries >= 1
            assert all(record["strategy"] == "custom" for record in manager.compression_history)
            monitor = manager.performance_monitor
            assert monitor is not None and "summarize" not in monitor.token_usage()
            assert monitor.operation_stats()["summarize"].successes == summaries
            assert otel.points("gen_ai.client.token.usage") == []
            # a server reporting the input tokens only: those are recorded, no output point of 0
            server.omit_usage = False
            server.reply_usage = {"prompt_tokens": 7} if provider == "openai" else {"input_tokens": 7}
            await manager.compress_context(80)
            assert len(manager.compression_history) == summaries + 1
        await summarizer.aclose()
    assert summarizer.input_tokens == 7 and summarizer.output_tokens == 0
    [point] = otel.points("gen_ai.client.token.usage")
    assert point.attributes["gen_ai.token.type"] == "input" and point.sum == 7 and point.count == 1


@pytest.mark.parametrize("in_a_thread", [False, True])
async def test_opentelemetry_summarizer_spans_are_children_of_their_compression(
    in_a_thread: bool, otel: Otel, tmp_path: Path
) -> None:
    """The compression span was made after the compression, so what the summarizer recorded while it ran
    (the HTTP or GenAI spans of an instrumented client: httpx, openai) hung under ``add_message``, beside
    the compression that caused it. A span the summarizer starts, in its task or in a worker thread, is a
    child of the compression span now, within its time."""
    instrumentation = otel.tracer_provider.get_tracer("an.http.instrumentation")

    def request() -> None:
        with instrumentation.start_as_current_span("POST"):
            time.sleep(0.001)

    async def summarizer(messages: list[Any], budget: int) -> str:
        if in_a_thread:
            await asyncio.to_thread(request)
        else:
            request()
        return "The harbour lanterns were lit."

    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        for turn in range(30):
            await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
        summaries = len(manager.compression_history)
    assert summaries >= 1
    compressions = otel.finished("context_manager.compression")
    requests = otel.finished("POST")
    assert len(compressions) == len(requests) == summaries
    adds = {span.context.span_id: span for span in otel.finished("context_manager.add_message")}
    for compression, http in zip(compressions, requests, strict=True):
        assert compression.attributes["context_manager.compression.strategy"] == "custom"
        assert http.parent is not None and http.parent.span_id == compression.context.span_id
        assert compression.parent is not None and compression.parent.span_id in adds
        assert compression.start_time <= http.start_time <= http.end_time <= compression.end_time


async def test_opentelemetry_a_wall_clock_step_leaves_the_compression_span_its_length(
    otel: Otel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compression span ended at the wall clock's time: stepped back an hour while the summarizer ran
    (NTP, a resumed VM), the span ended an hour before it started. Its length is measured monotonically."""
    wall_ns = time.time_ns

    async def summarizer(messages: list[Any], budget: int) -> str:
        monkeypatch.setattr(time, "time_ns", lambda: wall_ns() - 3600 * 10**9)  # the clock steps back
        await asyncio.sleep(0.01)
        return "The harbour lanterns were lit."

    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        turn = 0
        while not manager.compression_history:
            await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
            turn += 1
    [compression] = otel.finished("context_manager.compression")
    assert compression.start_time is not None and compression.end_time is not None
    assert 0.01 <= (compression.end_time - compression.start_time) / 1e9 < 60.0


async def test_opentelemetry_a_compression_given_up_ends_its_span(otel: Otel, tmp_path: Path) -> None:
    """An add given up by its caller while the summarizer ran leaves no record: its compression span ends
    all the same, with an error status, and the next compression has a span of its own."""
    hang = asyncio.Event()
    calls = 0

    async def summarizer(messages: list[Any], budget: int) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await hang.wait()
        return "The harbour lanterns were lit."

    async with EnhancedContextManager(config_for(tmp_path), summarizer=summarizer) as manager:
        turn = 0
        while calls == 0:
            text = f"turn {turn}: the harbour lanterns were lit at {turn} pm"
            try:
                await asyncio.wait_for(manager.add_message("user", text), timeout=0.5)
            except TimeoutError:
                break
            turn += 1
        assert calls == 1 and manager.compression_history == []
        while not manager.compression_history:
            turn += 1
            await manager.add_message("user", f"turn {turn}: the harbour lanterns were lit at {turn} pm")
    given_up, done = otel.finished("context_manager.compression")
    assert given_up.status.status_code is StatusCode.ERROR
    assert given_up.attributes is not None and given_up.attributes["error.type"] == "CancelledError"
    assert "context_manager.compression.strategy" not in given_up.attributes
    assert done.attributes is not None and done.attributes["context_manager.compression.strategy"] == "custom"
    assert done.context.span_id != given_up.context.span_id and done.start_time > given_up.end_time


@pytest.mark.parametrize(
    ("adapter", "base_url", "provider_name", "address", "port"),
    [
        ("openai", "https://api.openai.com/v1", "openai", "api.openai.com", 443),
        ("openai", "https://my-resource.openai.azure.com/openai/v1", "azure.ai.openai", None, 443),
        ("openai", "https://my-resource.cognitiveservices.azure.com/openai/v1", "azure.ai.openai", None, 443),
        ("openai", "https://api.groq.com/openai/v1", "groq", "api.groq.com", 443),
        ("openai", "https://api.mistral.ai/v1", "mistral_ai", "api.mistral.ai", 443),
        ("openai", "https://generativelanguage.googleapis.com/v1beta/openai", "gcp.gemini", None, 443),
        ("openai", "http://127.0.0.1:11434/v1", "_OTHER", "127.0.0.1", 11434),  # Ollama
        ("openai", "http://vllm.internal:8000/v1", "_OTHER", "vllm.internal", 8000),
        ("openai", "http://localhost/v1", "_OTHER", "localhost", 80),
        (
            "openai",
            "https://us-east5-aiplatform.googleapis.com/v1/projects/p/endpoints/openapi",
            "gcp.vertex_ai",
            None,
            443,
        ),
        ("openai", "http://ec2-1-2-3-4.compute-1.amazonaws.com:8000/v1", "_OTHER", None, 8000),
        ("anthropic", "https://bedrock-runtime.us-east-1.amazonaws.com", "aws.bedrock", None, 443),
        ("anthropic", "https://api.anthropic.com", "anthropic", "api.anthropic.com", 443),
        ("anthropic", "https://api.deepseek.com/anthropic", "deepseek", "api.deepseek.com", 443),
        ("anthropic", "http://127.0.0.1:4000", "_OTHER", "127.0.0.1", 4000),  # a gateway
    ],
)
def test_summarizer_names_its_provider_as_the_genai_conventions_do(
    adapter: str, base_url: str, provider_name: str, address: str | None, port: int
) -> None:
    """``gen_ai.provider.name`` was ``openai`` for every OpenAI-compatible server (vLLM, Ollama, a gateway):
    their token usage was reported as OpenAI's. The conventions' well-known value is used for the provider
    the endpoint belongs to, ``_OTHER`` for any other, and ``server.address`` / ``server.port`` say which."""
    if adapter == "openai":
        summarizer: LLMSummarizer = OpenAISummarizer("m", base_url=base_url, api_key="test-key")
    else:
        summarizer = AnthropicSummarizer("m", base_url=base_url, api_key="test-key")
    attributes = summarizer.telemetry_attributes
    assert attributes["gen_ai.provider.name"] == provider_name
    assert attributes["server.address"] == (address or urlsplit(base_url).hostname)
    assert attributes["server.port"] == port


class EchoSummarizer(LLMSummarizer):
    """A subclass of one's own for another provider (no network: it answers itself)."""

    async def _request(self, prompt: SummaryPrompt, request_timeout: float) -> tuple[str, SummaryUsage]:
        return "A summary.", SummaryUsage(3, 2, self.model, self.provider)

    def _classify(self, error: Exception) -> RequestFailure:
        return RequestFailure(type(error).__name__, retryable=False)


class HostedEchoSummarizer(EchoSummarizer):
    provider = "echo"

    @property
    def endpoint(self) -> str:
        return "https://api.mistral.ai/v1"


def test_a_summarizer_subclass_names_its_provider_from_its_endpoint() -> None:
    # no provider and no endpoint: the attribute was an empty string
    assert EchoSummarizer("m").telemetry_attributes == {"gen_ai.provider.name": "_OTHER"}
    assert HostedEchoSummarizer("m").telemetry_attributes == {
        "gen_ai.provider.name": "mistral_ai",
        "server.address": "api.mistral.ai",
        "server.port": 443,
    }


async def test_opentelemetry_a_made_up_tool_name_is_cut_in_its_span(otel: Otel) -> None:
    """A name a model made up went whole into ``gen_ai.tool.name`` (a paragraph, or a pasted document, on
    every such call); an object whose ``str()`` raises made ``execute_tool`` raise with telemetry on."""

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no text")

        def __repr__(self) -> str:
            return "<Hostile>"

    tools = ToolManager()
    long_name = "lookup " * 1000
    assert (await tools.execute(long_name, text="a")).error_type is ToolErrorType.UNKNOWN_TOOL
    hostile = await tools.execute_tool(Hostile())  # type: ignore[arg-type]
    assert hostile.error_type is ToolErrorType.UNKNOWN_TOOL
    first, second = otel.finished("execute_tool")
    name = first.attributes["gen_ai.tool.name"]
    assert len(name) <= 128 and name.startswith("lookup lookup")
    assert name.endswith(f"<{len(long_name)} chars>")
    assert second.attributes["gen_ai.tool.name"] == "<Hostile>"


_MANAGER_RUN = """
import asyncio, sys
from context_manager import ContextManagerConfig, EnhancedContextManager
{setup}
async def main():
    config = ContextManagerConfig(cache_path=sys.argv[1], enable_health_checks=False, max_tokens=300)
    async with EnhancedContextManager(config) as manager:
        await manager.add_message("user", "the harbour lanterns were lit")
        await manager.search_memory("lanterns")
asyncio.run(main())
print(sorted(name for name in sys.modules if name in ("opentelemetry.trace", "opentelemetry.metrics")))
{after}
"""


def run_manager(tmp_path: Path, setup: str = "", after: str = "") -> list[str]:
    script = _MANAGER_RUN.format(setup=textwrap.dedent(setup), after=textwrap.dedent(after))
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


def test_opentelemetry_is_not_imported_when_nothing_set_a_provider(tmp_path: Path) -> None:
    """A process's first initialize() imported opentelemetry's trace and metrics APIs (40-190 ms cold) to find
    that no provider was set, in applications that never use OpenTelemetry. Nothing is imported now; an
    application that sets a global provider (importing the API to do so) gets its spans as before."""
    assert run_manager(tmp_path / "plain") == ["[]"]
    setup = """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    """
    # not installed (as without the otel extra), though a variable or configure_opentelemetry names a provider
    absent = """
        import os
        from context_manager import configure_opentelemetry
        sys.modules["opentelemetry"] = None
        os.environ["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
        configure_opentelemetry(tracer_provider=object())
    """
    assert run_manager(tmp_path / "absent", absent) == ["[]"]
    after = "print(sorted(span.name for span in exporter.get_finished_spans()))"
    loaded, spans = run_manager(tmp_path / "traced", setup, after)
    assert "'opentelemetry.trace'" in loaded
    assert spans == "['context_manager.add_message', 'context_manager.search_memory']"


async def test_opentelemetry_the_managers_add_memory_records_a_span_as_its_search_does(
    otel: Otel, tmp_path: Path
) -> None:
    """``manager.add_memory`` (added with the manager's ``search_memory(tags=...)``) recorded no span and no
    ``operation.duration`` point, while the ``search_memory`` next to it, and the MCP tool ``memory_add``,
    record both: an application tracing its manager saw its searches but not its writes."""
    async with EnhancedContextManager(config_for(tmp_path), user_id="ana") as manager:
        await manager.add_memory("Ana prefers the window seat", importance=0.8, tags=["travel", "seat"])
        with pytest.raises(InvalidMemoryError):
            await manager.add_memory("a bad tag", tags=[""])
        assert len(await manager.search_memory("seat", tags=["travel"])) == 1

    adds = otel.finished("context_manager.add_memory")
    assert [span.status.status_code is StatusCode.ERROR for span in adds] == [False, True]
    assert adds[0].attributes["context_manager.memory.importance"] == 0.8
    assert adds[0].attributes["context_manager.memory.tags"] == 2
    assert adds[1].attributes["error.type"] == "InvalidMemoryError"
    assert len(otel.finished("context_manager.search_memory")) == 1
    durations = "context_manager.operation.duration"
    success = {"context_manager.operation": "add_memory", "context_manager.outcome": "success"}
    rejected = {"context_manager.operation": "add_memory", "context_manager.outcome": "rejected"}
    assert otel.point(durations, **success).count == 1
    assert otel.point(durations, **rejected).count == 1
