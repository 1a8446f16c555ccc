"""OpenTelemetry spans and metrics, through ``opentelemetry-api`` (``pip install '...[otel]'``).

The library never configures OpenTelemetry: it reports to the tracer and meter providers your application
sets up (the SDK with an exporter to a collector, say). Without an SDK, or without ``opentelemetry-api``
installed, nothing is recorded and nothing costs: a manager looks at the global providers when it
initializes and skips instrumentation if neither is configured (so configure the SDK before
``initialize()``, or pass providers to :func:`configure_opentelemetry`). ``enable_opentelemetry=False``
turns it off. The :class:`~context_manager.core.performance_monitor.PerformanceMonitor` is independent and
keeps working either way.

Spans (no message, query or tool payload is ever put in an attribute or event: a failure's exception is
recorded by its type only, its message may quote the rejected input):

* ``context_manager.add_message``: ``context_manager.message.role``, ``context_manager.message.tokens``,
  ``context_manager.window.tokens`` (after), ``context_manager.window.max_tokens``,
  ``context_manager.compressed``;
* ``context_manager.compression`` (a child of the operation that triggered it, and the current span of
  its summarizer calls: what an instrumented client records during the summary nests under it):
  ``context_manager.compression.tokens_before``/``tokens_after``, ``.evicted``, ``.truncated``,
  ``.summary_tokens``, ``.strategy`` and ``.fallback_reason`` when the custom summarizer was not used; an
  error status and ``error.type`` when the compression was given up without a record;
* ``context_manager.search_memory``: ``context_manager.search.limit``, ``context_manager.search.hits``;
* from the MCP server's memory tools: ``context_manager.search_memory`` as above (``memory_search``),
  ``context_manager.add_memory`` (``context_manager.memory.importance``, ``context_manager.memory.tags``:
  the tag count), ``context_manager.delete_memory`` and ``context_manager.memory_stats``;
* ``execute_tool {name}`` (the GenAI semantic conventions' tool span; ``execute_tool`` for a tool that is
  not registered: a name a model made up is no span name): ``gen_ai.operation.name``,
  ``gen_ai.tool.name``, ``gen_ai.tool.type`` (``function``, for a registered tool), ``gen_ai.tool.call.id``,
  ``context_manager.tool.outcome`` (``success`` or the
  error type), ``context_manager.tool.cached``; failures set the span status to error with ``error.type``.

Metrics (meter ``context_manager``):

* ``context_manager.operation.duration`` (histogram, s, buckets 0.5 ms ... 30 s; its count is the number
  of operations), by ``context_manager.operation`` (``add_message``, ``compression``, ``search_memory``,
  ``execute_tool``, ``summarize``; from the MCP server also ``add_memory``, ``delete_memory``,
  ``memory_stats``), ``context_manager.outcome`` (``success``, ``error``) and, for ``execute_tool``,
  ``gen_ai.tool.name`` (``_OTHER`` for a tool that is not registered);
  ``context_manager.errors`` (counter) by operation and ``error.type``;
* ``context_manager.window.utilization`` (gauge, 0..1) and ``context_manager.window.tokens`` (gauge);
* ``context_manager.compression.evicted_messages`` (counter);
* ``context_manager.memory.count`` (gauge, by ``context_manager.memory.tier``) and
  ``context_manager.memory.storage.size`` (gauge, By), sampled every ``memory_sample_interval`` seconds;
* ``gen_ai.client.token.usage`` (histogram, by ``gen_ai.token.type``, ``gen_ai.provider.name``: the
  GenAI conventions' name of the endpoint's provider, ``_OTHER`` for a self-hosted server or a gateway,
  ``gen_ai.request.model``: the model asked for, ``gen_ai.response.model``: the one that answered,
  ``server.address``, ``server.port``) for LLM summaries; a count the server did not report has no point;
* ``gen_ai.client.operation.duration`` (histogram, s, the GenAI conventions' buckets) of each LLM summary
  call (``LLMSummarizer``), by the same attributes as the token usage but ``gen_ai.token.type``, and
  ``error.type`` for a failed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from context_manager.core.async_operations import cancel_and_wait
from context_manager.core.errors import InvalidArgumentError

if TYPE_CHECKING:
    from context_manager.core.context_window import CompressionRecord, CompressionTrace, ContextWindow
    from context_manager.core.memory.manager import MemoryManager
    from context_manager.core.memory.models import Memory
    from context_manager.core.messages import Message
    from context_manager.core.tool_system.results import ToolResult

_T = TypeVar("_T")

__all__ = [
    "DURATION_BUCKETS",
    "MemorySizeSampler",
    "Telemetry",
    "configure_opentelemetry",
    "memory_add_attributes",
    "shared_memory_sampler",
    "telemetry_for_current_providers",
    "traced_add",
    "traced_call",
    "traced_search",
]

logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "context_manager"
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Bucket boundaries of ``context_manager.operation.duration``, in seconds."""
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
"""Bucket boundaries of ``gen_ai.client.token.usage`` (the GenAI semantic conventions' advice)."""
GENAI_DURATION_BUCKETS = tuple(0.01 * 2**power for power in range(14))  # 0.01, 0.02, 0.04 ... 81.92
"""Bucket boundaries of ``gen_ai.client.operation.duration``, in seconds (the GenAI conventions' advice)."""
DEFAULT_MEMORY_SAMPLE_INTERVAL = 30.0
OTHER_VALUE = "_OTHER"
"""The semantic conventions' value for one outside the known set: ``gen_ai.tool.name`` of a tool that is
not registered (a name the model made up) in the metrics."""

_providers: tuple[Any, Any] | None = None  # set by configure_opentelemetry
_memory_sample_interval = DEFAULT_MEMORY_SAMPLE_INTERVAL
_cache: weakref.WeakKeyDictionary[Any, Telemetry] = weakref.WeakKeyDictionary()


def configure_opentelemetry(
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    memory_sample_interval: float = DEFAULT_MEMORY_SAMPLE_INTERVAL,
) -> None:
    """Report to these providers instead of the global ones (managers initialized from now on).

    Args:
        tracer_provider: An ``opentelemetry.trace.TracerProvider`` (``None``: the global one).
        meter_provider: An ``opentelemetry.metrics.MeterProvider`` (``None``: the global one).
        memory_sample_interval: Seconds between two samples of the memory size gauges.

    Raises:
        InvalidArgumentError: ``memory_sample_interval`` is not a positive number.
    """
    global _providers, _memory_sample_interval
    valid = isinstance(memory_sample_interval, int | float) and not isinstance(memory_sample_interval, bool)
    if not valid or not memory_sample_interval > 0:
        raise InvalidArgumentError(
            "memory_sample_interval", memory_sample_interval, "a number of seconds > 0"
        )
    _providers = (
        None if tracer_provider is None and meter_provider is None else (tracer_provider, meter_provider)
    )
    _memory_sample_interval = float(memory_sample_interval)


def telemetry_for_current_providers() -> Telemetry | None:
    """A :class:`Telemetry` on the configured providers, or ``None`` when nothing would record.

    ``None`` when ``opentelemetry-api`` is not installed, or when neither a tracer provider nor a meter
    provider is configured (globally or through :func:`configure_opentelemetry`). When the process has not
    imported ``opentelemetry.trace`` nor ``opentelemetry.metrics`` (nothing can have set a global provider)
    and no ``OTEL_PYTHON_TRACER_PROVIDER`` / ``OTEL_PYTHON_METER_PROVIDER`` names one, OpenTelemetry is not
    imported at all: importing it to find no provider cost a process's first ``initialize()`` 40-190 ms in
    an application that does not use it.
    """
    if _providers is None and not _may_have_providers():
        return None
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
    except ImportError:
        return None
    tracer_provider, meter_provider = _providers if _providers is not None else (None, None)
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
    if meter_provider is None:
        meter_provider = metrics.get_meter_provider()
    tracing = not isinstance(tracer_provider, ProxyTracerProvider | NoOpTracerProvider)
    metering = not isinstance(meter_provider, NoOpMeterProvider) and type(meter_provider).__name__ != (
        "_ProxyMeterProvider"  # the API's stand-in until an SDK provider is set
    )
    if not tracing and not metering:
        return None
    key = meter_provider if metering else tracer_provider
    cached = _cache.get(key)
    if cached is not None and cached.tracer_provider is tracer_provider and cached.tracing == tracing:
        return cached
    telemetry = Telemetry(tracer_provider if tracing else None, meter_provider if metering else None)
    _cache[key] = telemetry
    return telemetry


_PROVIDER_MODULES = ("opentelemetry.trace", "opentelemetry.metrics")
_PROVIDER_VARIABLES = ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")


def _may_have_providers() -> bool:
    """Whether a global provider may be set: the API's modules are loaded, or a variable names a provider.

    Setting one (``trace.set_tracer_provider``, the SDK's auto-configuration, ``opentelemetry-instrument``)
    imports the API's module first; the API also makes the provider an ``OTEL_PYTHON_*_PROVIDER`` variable
    names on first use.
    """
    import os
    import sys

    return any(name in sys.modules for name in _PROVIDER_MODULES) or any(
        os.environ.get(name) for name in _PROVIDER_VARIABLES
    )


def memory_sample_interval() -> float:
    """Seconds between two samples of the memory size gauges (see :func:`configure_opentelemetry`)."""
    return _memory_sample_interval


class Telemetry:
    """The tracer and the instruments of one pair of providers (see the module docstring).

    Created by :func:`telemetry_for_current_providers`; the instruments are made once per meter provider.
    """

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from context_manager import __version__

        self.tracer_provider = tracer_provider
        """The tracer provider spans go to (``None``: no spans)."""
        self.meter_provider = meter_provider
        """The meter provider metrics go to (``None``: no metrics)."""
        self.tracing = tracer_provider is not None
        """Whether spans are recorded."""
        self.metering = meter_provider is not None
        """Whether metrics are recorded."""
        self._tracer: Any = None
        if tracer_provider is not None:
            self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        if meter_provider is None:
            return
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME, __version__)
        self._duration = meter.create_histogram(
            "context_manager.operation.duration",
            unit="s",
            description="Duration of context-manager operations.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._errors = meter.create_counter(
            "context_manager.errors", unit="{error}", description="Failed operations, by error type."
        )
        self._utilization = meter.create_gauge(
            "context_manager.window.utilization",
            unit="1",
            description="Context window tokens / max_tokens after the latest change.",
        )
        self._window_tokens = meter.create_gauge(
            "context_manager.window.tokens", unit="{token}", description="Context window tokens."
        )
        self._evicted = meter.create_counter(
            "context_manager.compression.evicted_messages",
            unit="{message}",
            description="Messages evicted from context windows (they go to memory).",
        )
        self._memory_count = meter.create_gauge(
            "context_manager.memory.count", unit="{memory}", description="Memories per tier (all users)."
        )
        self._memory_bytes = meter.create_gauge(
            "context_manager.memory.storage.size", unit="By", description="Bytes of the memory store on disk."
        )
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used by LLM calls (context-manager's summaries).",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._genai_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of LLM calls (context-manager's summaries).",
            explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS,
        )

    # -- spans ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """A span (the current one inside the block); ``None`` is yielded when tracing is off.

        An exception escaping the block ends the span with an error status, ``error.type`` and an
        ``exception`` event holding the exception's type only: its message and traceback quote what was
        given (a rejected message's text, a query), which must not leave in telemetry.
        """
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except Exception as error:
                kind = type(error)
                span.set_attribute("error.type", kind.__name__)
                span.add_event("exception", {"exception.type": f"{kind.__module__}.{kind.__qualname__}"})
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, kind.__name__))
                raise

    def compression_trace(self) -> CompressionTrace:
        """A trace of one compression, for :meth:`ContextWindow.set_compression_tracer`.

        Its span starts when the compression does, as a child of the current span (the operation that
        triggered it), and is the current span of its summarizer calls: what the summarizer records (an
        instrumented HTTP client's spans) nests under it. It ends with the compression, with the
        attributes of its record (the duration and evicted-messages metrics are recorded then too), or
        with an error status when the compression ended without a record (a cancelled add ...).
        """
        return _CompressionTrace(self)

    def compression_span(
        self,
        record: CompressionRecord,
        span: Any = None,
        start_ns: int | None = None,
        start_monotonic_ns: int | None = None,
    ) -> None:
        """Record a finished compression as a span (child of the current one) timed from its record.

        ``span``: the compression's span, started already (see :meth:`compression_trace`), to end with the
        record's attributes; ``start_ns``: when the compression started (``time.time_ns()``; else taken from
        the record), and ``start_monotonic_ns`` the same moment on ``time.monotonic_ns()``: the span ends
        that long after ``start_ns`` as the monotonic clock measured (a step of the wall clock during the
        compression made its span end before it started, or last an hour).
        """
        if self._tracer is None:
            return
        if start_ns is None:
            end = time.time_ns()
            start = end - int(record.duration_ms * 1e6)
        else:
            start = start_ns
            end = _end_ns(start_ns, start_monotonic_ns)
        attributes: dict[str, Any] = {
            "context_manager.compression.tokens_before": record.tokens_before,
            "context_manager.compression.tokens_after": record.tokens_after,
            "context_manager.compression.evicted": record.removed_count,
            "context_manager.compression.truncated": record.truncated_count,
            "context_manager.compression.summary_tokens": record.summary_tokens,
            "context_manager.compression.strategy": record.strategy,
        }
        if record.error is not None:
            attributes["context_manager.compression.fallback_reason"] = record.error.split(":", 1)[0]
        if span is None:
            span = self._tracer.start_span(
                "context_manager.compression", start_time=start, attributes=attributes
            )
        else:
            span.set_attributes(attributes)
        span.end(end_time=end)

    # -- metrics --------------------------------------------------------------------------------------

    def record_operation(
        self,
        operation: str,
        duration_s: float,
        error_type: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        *,
        rejected: bool = False,
    ) -> None:
        """Count one operation and its duration (and its error, if ``error_type`` is set).

        ``rejected``: the call failed on the caller's input (outcome ``rejected``, not in the errors
        counter), as :attr:`PerformanceMonitor.CLIENT_ERRORS` and refused tool calls are for the monitor.
        """
        if not self.metering:
            return
        labels = {"context_manager.operation": operation, **(attributes or {})}
        if error_type is None:
            self._duration.record(duration_s, {**labels, "context_manager.outcome": "success"})
            return
        # the histogram's count is the operation count (as in the OpenTelemetry HTTP conventions)
        outcome = "rejected" if rejected else "error"
        self._duration.record(
            duration_s, {**labels, "context_manager.outcome": outcome, "error.type": error_type}
        )
        if not rejected:
            self._errors.add(1, {**labels, "error.type": error_type})

    def record_window(self, tokens: int, max_tokens: int) -> None:
        """Set the window gauges after a change."""
        if self.metering:
            self._window_tokens.set(tokens)
            self._utilization.set(tokens / max_tokens if max_tokens else 0.0)

    def record_compression(
        self,
        record: CompressionRecord,
        span: Any = None,
        start_ns: int | None = None,
        start_monotonic_ns: int | None = None,
    ) -> None:
        """A compression's span (see :meth:`compression_span`), duration and evicted messages."""
        self.compression_span(record, span, start_ns, start_monotonic_ns)
        if self.metering:
            self.record_operation("compression", record.duration_ms / 1000.0)
            self._evicted.add(record.removed_count)

    def record_tool_result(self, span: Any, result: ToolResult) -> None:
        """Outcome of a tool call: span attributes and status, duration and counts."""
        # (the package imports us)
        from context_manager.core.tool_system.results import REFUSED_TOOL_CALLS, ToolErrorType

        error_type = None if result.error_type is None else result.error_type.value
        # a name the model made up is no series of its own: each one was, until the SDK's limit folded every
        # later series (a real tool's) into an overflow one
        tool_name = OTHER_VALUE if result.error_type is ToolErrorType.UNKNOWN_TOOL else result.tool_name
        if span is not None:
            span.set_attributes(
                {
                    "context_manager.tool.outcome": error_type or "success",
                    "context_manager.tool.cached": result.cached,
                }
            )
            if error_type is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
        self.record_operation(
            "execute_tool",
            result.execution_time,
            error_type,
            {"gen_ai.tool.name": tool_name},
            rejected=result.error_type in REFUSED_TOOL_CALLS,
        )

    def record_memory_sizes(
        self, backend: str, by_tier: Mapping[str, int], bytes_on_disk: int | None
    ) -> None:
        """Set the memory gauges from a statistics sample."""
        if not self.metering:
            return
        for tier, count in by_tier.items():
            self._memory_count.set(
                count, {"context_manager.memory.tier": tier, "context_manager.memory.backend": backend}
            )
        if bytes_on_disk is not None:
            self._memory_bytes.set(bytes_on_disk, {"context_manager.memory.backend": backend})

    def record_llm_call(
        self,
        provider: str,
        model: str,
        duration_s: float,
        error_type: str | None = None,
        response_model: str | None = None,
        server: Mapping[str, str | int] | None = None,
    ) -> None:
        """One LLM summary call (``gen_ai.client.operation.duration``), as the GenAI conventions record it.

        Attributes: ``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name``, ``gen_ai.request.model``,
        ``gen_ai.response.model`` when known, ``server.address``/``server.port`` (``server``) and, for a
        failed call, ``error.type``.
        """
        if not self.metering:
            return
        labels = _genai_chat_labels(provider, model, response_model, server)
        if error_type is not None:
            labels["error.type"] = error_type
        self._genai_duration.record(duration_s, labels)

    def record_token_usage(
        self,
        provider: str,
        model: str,
        input_tokens: int | None,
        output_tokens: int | None,
        response_model: str | None = None,
        server: Mapping[str, str | int] | None = None,
    ) -> None:
        """Tokens of one LLM summary (``gen_ai.client.token.usage``).

        ``model`` is the model requested (``gen_ai.request.model``), ``response_model`` the one that answered
        as the response named it (``gen_ai.response.model``, e.g. a dated snapshot), when known. A count
        the server did not report (``None``) is not recorded: a point of 0 would be a false figure.
        ``server``: more attributes (``server.address``, ``server.port``).
        """
        if not self.metering:
            return
        labels = _genai_chat_labels(provider, model, response_model, server)
        labels["context_manager.operation"] = "summarize"
        if input_tokens is not None:
            self._token_usage.record(input_tokens, {**labels, "gen_ai.token.type": "input"})
        if output_tokens is not None:
            self._token_usage.record(output_tokens, {**labels, "gen_ai.token.type": "output"})


def _genai_chat_labels(
    provider: str, model: str, response_model: str | None, server: Mapping[str, str | int] | None
) -> dict[str, str | int]:
    """The GenAI conventions' attributes of one LLM summary call (its duration and token usage points)."""
    labels: dict[str, str | int] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }
    if response_model:
        labels["gen_ai.response.model"] = response_model
    if server:
        labels.update(server)
    return labels


def memory_add_attributes(importance: object, tags: object) -> dict[str, Any]:
    """The attributes of an ``add_memory`` span: importance and the tag count.

    A value of a wrong type (which the store then refuses) is left out.
    """
    attributes: dict[str, Any] = {}
    if isinstance(importance, (int, float)) and not isinstance(importance, bool):
        attributes["context_manager.memory.importance"] = importance
    if tags is None:
        attributes["context_manager.memory.tags"] = 0
    elif isinstance(tags, (list, tuple)):
        attributes["context_manager.memory.tags"] = len(tags)
    return attributes


class _CompressionTrace:
    """One compression's span (see :meth:`Telemetry.compression_trace`).

    Started by the compression's first summarizer call, else made at its end from its record.
    """

    __slots__ = ("_span", "_start_monotonic_ns", "_start_ns", "_telemetry")

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._start_ns = time.time_ns()  # the span's start as a date; its length is measured monotonically
        self._start_monotonic_ns = time.monotonic_ns()
        self._span: Any = None

    @contextlib.contextmanager
    def summary_call(self) -> Iterator[None]:
        tracer = self._telemetry._tracer
        if tracer is None:
            yield
            return
        from opentelemetry import trace

        if self._span is None:  # a child of the current span: the operation that triggered the compression
            self._span = tracer.start_span("context_manager.compression", start_time=self._start_ns)
        with trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield

    def end(self, record: CompressionRecord | None, error: BaseException | None) -> None:
        span, self._span = self._span, None
        if record is not None:
            self._telemetry.record_compression(record, span, self._start_ns, self._start_monotonic_ns)
            return
        if span is None:
            return
        if error is not None:  # e.g. the add was cancelled while the summarizer ran: no record
            from opentelemetry.trace import Status, StatusCode

            kind = type(error).__name__
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end(end_time=_end_ns(self._start_ns, self._start_monotonic_ns))


def _end_ns(start_ns: int, start_monotonic_ns: int | None) -> int:
    """The end of a span that started at ``start_ns`` (wall clock) and ``start_monotonic_ns`` (monotonic).

    Its start plus the monotonic time since; without ``start_monotonic_ns``, now on the wall clock.
    """
    if start_monotonic_ns is None:
        return time.time_ns()
    return start_ns + max(time.monotonic_ns() - start_monotonic_ns, 0)


# ------------------------------------------------------------------------------------- instrumented calls


def _rejected(error: BaseException) -> bool:
    """Whether ``error`` refuses the caller's input (the monitor's ``CLIENT_ERRORS``, loaded on first use)."""
    from context_manager.core.performance_monitor.monitor import CLIENT_ERRORS

    return isinstance(error, CLIENT_ERRORS)


async def traced_add(telemetry: Telemetry, window: ContextWindow, build: Callable[[], Message]) -> None:
    """Build a message and add it to ``window`` inside an ``add_message`` span, with its metrics.

    A message rejected while built (bad role, content ...) is a failed ``add_message`` too.
    """
    started = time.perf_counter()
    with telemetry.span("context_manager.add_message") as span:
        try:
            message = build()
            record = await window.add(message)
        except Exception as error:
            telemetry.record_operation(
                "add_message", time.perf_counter() - started, type(error).__name__, rejected=_rejected(error)
            )
            if span is not None:
                span.set_attribute("error.type", type(error).__name__)
            raise
        if span is not None:
            span.set_attributes(
                {
                    "context_manager.message.role": message.role.value,
                    "context_manager.message.tokens": message.token_count,
                    "context_manager.window.tokens": window.token_count,
                    "context_manager.window.max_tokens": window.max_tokens,
                    "context_manager.compressed": record is not None,
                }
            )
    telemetry.record_operation("add_message", time.perf_counter() - started)
    telemetry.record_window(window.token_count, window.max_tokens)


async def traced_search(telemetry: Telemetry, search: Awaitable[list[Memory]], limit: Any) -> list[Memory]:
    """Await a memory search inside a ``search_memory`` span, with its metrics."""
    started = time.perf_counter()
    attributes = {"context_manager.search.limit": limit} if isinstance(limit, int) else {}
    with telemetry.span("context_manager.search_memory", attributes) as span:
        try:
            found = await search
        except Exception as error:
            telemetry.record_operation(
                "search_memory",
                time.perf_counter() - started,
                type(error).__name__,
                rejected=_rejected(error),
            )
            if span is not None:
                span.set_attribute("error.type", type(error).__name__)
            raise
        if span is not None:
            span.set_attribute("context_manager.search.hits", len(found))
    telemetry.record_operation("search_memory", time.perf_counter() - started)
    return found


async def traced_call(
    telemetry: Telemetry | None,
    operation: str,
    call: Awaitable[_T],
    attributes: Mapping[str, Any] | None = None,
) -> _T:
    """Await ``call`` inside a ``context_manager.{operation}`` span, counting it and its duration.

    With ``telemetry`` ``None`` the call is simply awaited. A failure is recorded (``error.type``) and
    re-raised.
    """
    if telemetry is None:
        return await call
    started = time.perf_counter()
    with telemetry.span(f"context_manager.{operation}", attributes) as span:
        try:
            result = await call
        except Exception as error:
            telemetry.record_operation(
                operation, time.perf_counter() - started, type(error).__name__, rejected=_rejected(error)
            )
            if span is not None:
                span.set_attribute("error.type", type(error).__name__)
            raise
    telemetry.record_operation(operation, time.perf_counter() - started)
    return result


_samplers: weakref.WeakKeyDictionary[Any, MemorySizeSampler] = weakref.WeakKeyDictionary()


def shared_memory_sampler(telemetry: Telemetry, memory: MemoryManager, backend: str) -> MemorySizeSampler:
    """The sampler of ``memory`` for ``telemetry``, one for all the managers sharing that memory manager.

    The managers of one store (one per request or conversation, ``core/shared_store.py``) hold one memory
    manager: each with a sampler of its own read the whole store's statistics as it opened and as it
    closed (two reads per request) and every interval.
    """
    sampler = _samplers.get(memory)
    if sampler is None or sampler.telemetry is not telemetry:
        sampler = _samplers[memory] = MemorySizeSampler(telemetry, memory, backend)
    return sampler


class MemorySizeSampler:
    """Samples the memory statistics into the memory gauges: at start, every interval and at stop.

    Started and stopped by each ``EnhancedContextManager`` using it (see :func:`shared_memory_sampler`):
    the first start samples and starts the periodic sample, the last stop ends it and samples a last
    time; the others only count. A failed sample is logged at DEBUG and skipped.
    """

    def __init__(self, telemetry: Telemetry, memory: MemoryManager, backend: str) -> None:
        self.telemetry = telemetry
        self.memory = memory
        self.backend = backend
        self._task: asyncio.Task[None] | None = None
        self._users = 0  # the starts not stopped yet

    async def start(self) -> None:
        """Take a first sample and start the periodic one (a second start only counts)."""
        self._users += 1
        if self._users > 1:  # sampling already: the gauges are the store's, not a manager's
            return
        # started before the first sample: a start made meanwhile counts on it, this one may be cancelled
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="context_manager.telemetry")
        await self.sample()

    async def stop(self) -> None:
        """At the last stop, cancel the periodic sample and take a last one (while the memory is open).

        A cancellation of the caller while it waits for the periodic task propagates (no last sample).
        """
        self._users = max(0, self._users - 1)
        if self._users:
            return
        if _samplers.get(self.memory) is self:  # the value holds its key: left in, the key is never freed
            del _samplers[self.memory]
        task, self._task = self._task, None
        await cancel_and_wait(task, owner="memory telemetry sampler")  # re-raises the caller's cancellation
        await self.sample()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(_memory_sample_interval)
            await self.sample()

    async def sample(self) -> None:
        """Read the statistics of every user and set the gauges."""
        if not self.telemetry.metering or not self.memory.is_initialized:
            return
        from context_manager.core.memory.models import ALL_USERS

        try:
            stats = await self.memory.get_memory_stats(user_id=ALL_USERS)
        except Exception as error:  # telemetry must never break the manager
            logger.debug("memory telemetry sample failed: %s", type(error).__name__)
            return
        on_disk = stats.get("bytes_on_disk")
        total = on_disk.get("total") if isinstance(on_disk, dict) else None
        self.telemetry.record_memory_sizes(self.backend, stats.get("by_tier", {}), total)
