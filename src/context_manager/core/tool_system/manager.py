"""The tool executor: :class:`ToolManager`, a tool registry that also runs the tools.

Every call goes through the same steps, in this order, and comes back as a
:class:`~context_manager.core.tool_system.results.ToolResult` - the manager never raises for tool-side
problems:

1. **lookup** - an unknown name gives ``error_type="unknown_tool"`` (the message lists the known tools);
2. **permission** - the :class:`~context_manager.core.tool_system.permissions.PermissionPolicy` allows,
   denies, or asks (see step 4) - ``permission_denied``;
3. **validation** - typed tools through their pydantic model, parameters-dict tools against a declared
   ``parameters_schema`` if any - ``invalid_arguments`` naming the field, the value and what is expected;
4. **approval** - for calls the policy asks about, the approval callback must return ``True``;
5. **cache** - a cacheable tool (with ``config.enable_tool_caching``) answers repeated arguments from the
   cache without running and without counting against its rate limit (``cached=True``); a hit is a fresh
   copy of the result (a large one decoded in a worker thread, in pieces), a text result the text itself;
6. **rate limit** - at most ``rate_limit`` calls per sliding ``rate_window`` per tool (and per
   ``caller_key`` when one is given) - ``rate_limited`` with ``retry_after``;
7. **run** - async tools run on the loop in a task of their own (with a copy of the caller's context
   variables, as sync tools have in their thread), sync tools in a worker thread of the manager's own
   pool, under the effective timeout ``min(tool.timeout, config.max_tool_timeout)`` - ``timeout``.
   An async tool is cancelled and given :attr:`ToolManager.cancel_grace` (0.5 s) to unwind; one that
   ignores its cancellation is left running in its task (tracked, its end logged, counted in
   ``get_tool_stats()["tasks"]["abandoned"]``, cancelled again by :meth:`ToolManager.cleanup`) and the
   caller gets its ``timeout`` result all the same. A thread cannot be killed: a sync tool that times out
   keeps running in its thread and its late result is discarded. An exception in the tool gives
   ``tool_error`` (any ``BaseException`` it raises or awaits: ``GeneratorExit`` too), and so does its own
   exit (``sys.exit``, argparse: ``SystemExit``), async or sync; an exit a signal handler raises while it
   runs (the process stopping) propagates, as does the caller's cancellation (which cancels the tool,
   waits the same grace for it, and is counted in the statistics as a ``cancelled`` failure);
8. **result** - the value must be JSON-serialisable because it goes into the context window. Plain JSON
   values are returned as they are (tuples as lists, as a cache hit reads them back); pydantic models
   (``model_dump(mode="json")``), dataclasses (their fields as a model's: datetimes, enums, sets),
   datetimes, dates, times, durations, decimals, UUIDs, enums, paths, numpy scalars and arrays, and bytes
   holding UTF-8 text (as a model's bytes field is) are converted; anything else (sets, binary bytes,
   arbitrary objects, NaN, cycles) gives a failed result with ``error_type="tool_error"``. The result is
   encoded once (``to_content()`` reuses the text); one holding more than about 10,000 values (or megabytes
   of text) is checked and encoded in a worker thread, in pieces, so the event loop goes on meanwhile.

Sync tools run in the manager's own threads (:class:`~context_manager.core.threads.UserThreads`, up to
``max_threads``, created on demand), not in the event loop's default pool that memory storage uses: hung
tools never make storage I/O wait. A tool that timed out keeps its thread until it returns
(``get_tool_stats()["threads"]["abandoned"]`` counts them); once ``max_threads`` calls hang, a new sync
call waits for a thread inside its own timeout (timing out there, it did not run, and its error says so).
The threads are daemon threads: a tool that never returns does not keep the process from exiting.

Calls still running after their caller stopped waiting (an async tool that ignored its cancellation, a
sync tool in its thread; timed out or cancelled) are counted per tool (``get_tool_stats()["tools"][name]
["abandoned"]``). Once a tool has ``max_abandoned_calls`` (16; the tool's own option, else the manager's) of
them, a new call to it comes back at once as an ``overloaded`` failure, without running and without using
its rate limit (a cache hit is still answered); the count drops as those calls end. Calls already running
are not stopped (nothing can stop them), and a first burst of concurrent calls, all started before any
timed out, runs whole; but once an async tool has ignored a cancellation (for the life of its
registration) its calls in flight count toward the bound too, so later bursts cannot leave more than the
bound running. The count belongs to the registration: a tool registered again starts at 0. Together, the
calls left running of every tool (and the calls in flight of tools that ignored a cancellation) are bounded
by ``config.max_abandoned_tool_calls`` (64): past it, a call to a tool that left calls running is refused
as ``overloaded`` too, while tools that never did run freely. A sync callable that returns a coroutine has
it run as an async tool's (its own task, the rest of the timeout, the same grace and tracking).

The manager is meant for one event loop. Its only background tasks are async tools that ignored their
cancellation: :meth:`ToolManager.cleanup` (or ``async with ToolManager() as tools``) cancels them again and
waits a bounded time; ``EnhancedContextManager.cleanup()`` calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import decimal
import enum
import functools
import inspect
import itertools
import json
import logging
import math
import operator
import pathlib
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import InvalidArgumentError, InvalidMessageError, describe_value
from context_manager.core.messages import ToolCall
from context_manager.core.telemetry import Telemetry, telemetry_for_current_providers
from context_manager.core.threads import ThreadCall, UserThreads, WorkerExit, is_async_callable
from context_manager.core.tool_system.booleans import (
    booleans_read_as_numbers,
    nested_booleans,
    nested_numeric_arguments,
    numeric_arguments,
)
from context_manager.core.tool_system.cache import TEXT_RESULT, ToolResultCache, canonical_arguments
from context_manager.core.tool_system.definition import ToolDefinition, ToolPermission
from context_manager.core.tool_system.permissions import (
    ApprovalCallback,
    PermissionDecision,
    PermissionPolicy,
)
from context_manager.core.tool_system.rate_limit import SlidingWindowRateLimiter
from context_manager.core.tool_system.registry import SchemaFormat, ToolRegistry
from context_manager.core.tool_system.results import ToolErrorType, ToolResult
from context_manager.core.tool_system.schema import (
    _json_path,
    check_arguments_against_schema,
    describe_validation_error,
)

__all__ = ["SchemaFormat", "ToolManager"]

logger = logging.getLogger(__name__)

_perf_counter = time.perf_counter
_LISTED_TOOLS = 30  # an unknown-tool error names at most this many registered tools
_ARGUMENT_FIELDS = ("tool_calls[].arguments", "tool_calls[].function.arguments")


class _ToolStats:
    """Running counters of one tool."""

    __slots__ = ("cache_hits", "calls", "errors", "failures", "last_called", "successes", "total_time")

    def __init__(self) -> None:
        self.calls = 0
        self.successes = 0
        self.failures = 0
        self.cache_hits = 0
        self.total_time = 0.0
        self.last_called: float | None = None
        self.errors: dict[str, int] = {}

    def record(
        self, elapsed: float, error_type: ToolErrorType | None = None, *, cached: bool = False
    ) -> None:
        """Count one finished call: a success when ``error_type`` is None, else a failure of that type."""
        self.calls += 1
        self.total_time += elapsed
        self.last_called = time.time()
        if error_type is None:
            self.successes += 1
            self.cache_hits += cached
        else:
            self.failures += 1
            self.errors[error_type.value] = self.errors.get(error_type.value, 0) + 1

    def as_dict(self, abandoned: int, ignored_cancellation: bool) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "cache_hits": self.cache_hits,
            "success_rate": self.successes / self.calls if self.calls else None,
            "total_time": self.total_time,
            "average_time": self.total_time / self.calls if self.calls else None,
            "last_called": self.last_called,
            "errors": dict(self.errors),
            "abandoned": abandoned,
            "ignored_cancellation": ignored_cancellation,
        }


class _CallsLeftRunning:
    """One registration's calls still running after their caller stopped waiting, and what bounds them.

    Kept per :class:`ToolDefinition`, not per name: a tool registered again under the same name (a new
    function) starts with none, while the old registration's calls stay tracked until they end.
    """

    __slots__ = ("abandoned", "in_flight", "stubborn")

    def __init__(self) -> None:
        self.abandoned = 0
        """Calls still running after their caller stopped waiting (async tasks left running, sync threads)."""
        self.in_flight = 0
        """Calls whose caller still waits, counted once the tool is :attr:`stubborn`."""
        self.stubborn = False
        """Whether one of its async calls ignored its cancellation (for the registration's life): from then
        on its calls in flight count toward its bound too, so a burst cannot leave more than the bound."""

    def idle(self) -> bool:
        return not (self.abandoned or self.in_flight or self.stubborn)


@dataclasses.dataclass(slots=True)
class ParsedToolCall:
    """One provider tool call, normalised; ``failure`` is set when its arguments could not be parsed."""

    call: ToolCall
    """The call (with empty arguments when they could not be parsed)."""
    failure: ToolResult | None = None
    """An ``invalid_arguments`` result for a call whose arguments were not a JSON object, else None."""


_CONVERTED_VALUES = (
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
    enum.Enum,
    pathlib.PurePath,
)
"""Values a result may hold that JSON has no type for, converted as pydantic converts a model's fields."""


class _ResultEncoder(json.JSONEncoder):
    """Compact JSON that also converts pydantic models and dataclasses, and refuses NaN."""

    def __init__(self) -> None:
        super().__init__(ensure_ascii=False, allow_nan=False)
        self.converted = False

    def default(self, o: Any) -> Any:
        if isinstance(o, BaseModel):
            self.converted = True
            return o.model_dump(mode="json")
        if type(o).__module__ == "numpy" and callable(getattr(o, "tolist", None)):
            # numpy scalars and arrays (a data tool's ``sum()``): their Python values; NaN is still refused
            self.converted = True
            return o.tolist()
        if isinstance(o, _BYTES):
            # as a pydantic model's bytes field is (UTF-8 text); other bytes have no text to show a model
            try:
                text = bytes(o).decode()
            except UnicodeDecodeError:
                raise TypeError(
                    f"a {type(o).__name__} value of {len(o)} bytes that are not UTF-8 text (decode them, or "
                    "base64-encode them: base64.b64encode(data).decode())"
                ) from None
            self.converted = True
            return text
        if (dataclasses.is_dataclass(o) and not isinstance(o, type)) or isinstance(o, _CONVERTED_VALUES):
            self.converted = True
            if isinstance(o, pathlib.PurePath):  # pydantic writes a Path, not a PurePosixPath
                return str(o)
            # as a model's fields are (datetimes in ISO 8601, enums as their values, decimals as strings),
            # not dataclasses.asdict's raw values
            return to_jsonable_python(o)
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


_PLAIN_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _encode_result(value: Any) -> tuple[Any, str]:
    """Return the JSON-ready result and its JSON text, or raise TypeError/ValueError."""
    tuples = isinstance(value, dict | list | tuple) and _check_keys(value)
    try:  # the common case: plain JSON values, with one shared encoder (no per-call setup)
        text = _PLAIN_ENCODER.encode(value)
    except TypeError:
        pass
    else:
        # JSON has no tuples: the caller gets lists, as a cache hit (decoded from the text) gives them
        return (json.loads(text) if tuples else value), text
    encoder = _ResultEncoder()  # converts pydantic models and dataclasses, refuses anything else
    text = encoder.encode(value)
    return (json.loads(text) if encoder.converted or tuples else value), text


_OFF_LOOP_ITEMS = 10_000
"""A result holding more values than this (list items and dict entries, all levels) is checked and encoded
in a worker thread: about 5 ms of work and more."""
_CHUNK_ITEMS = 2_000
"""Values the C encoder is given at once when a large result is encoded in a thread: it keeps the GIL
while it runs, so a whole large result in one call would hold the event loop all the same."""
_CHARS_PER_VALUE = 256
"""Characters of text that weigh as much as one value (to encode or to decode): a long text counts by its
length, so a result of megabytes of text in a few values goes to the thread too."""
_CHUNK_CHARS = _CHUNK_ITEMS * _CHARS_PER_VALUE
"""A longer text is encoded (and decoded) in slices of this many characters."""
_CONTAINERS = (dict, list, tuple)
_BYTES = (bytes, bytearray, memoryview)
_TEXTS = (str, *_BYTES)  # weighed by their length (bytes are converted to their UTF-8 text)
_length = operator.length_hint  # a text's length, 0 for a number, True or None (at C speed over a map)


def _weight(value: Any, limit: int) -> int:
    """How many values ``value`` holds, counted up to ``limit``.

    List items and dict entries count at every level, and a long text as many values as its length weighs.

    Stops as soon as the count passes ``limit``: the cost is bounded by it, whatever the size.
    """
    if not isinstance(value, _CONTAINERS):
        return 1 + len(value) // _CHARS_PER_VALUE if isinstance(value, _TEXTS) else 1
    total = 0
    pending: list[Any] = [value]
    scalar = _SCALAR_TYPES.issuperset
    while pending:
        item = pending.pop()
        values = item.values() if isinstance(item, dict) else item
        try:
            total += len(item) + sum(map(_length, values)) // _CHARS_PER_VALUE
        except Exception:  # an object's own __len__ raising: weigh it as heavy (its pieces are encoded apart)
            return limit + 1
        if total > limit:
            return total
        if scalar(map(type, values)):
            continue
        pending.extend(inner for inner in values if isinstance(inner, _CONTAINERS))
        if len(pending) > limit:
            return limit + 1
    return total


def _is_large(value: Any) -> bool:
    """Whether a result is large enough to be checked and encoded off the event loop (an estimate)."""
    if isinstance(value, _CONTAINERS):
        return _estimate(value, 0) > _OFF_LOOP_ITEMS
    # bytes are decoded to their text: 20 MB of it held the event loop for 0.65 s
    return isinstance(value, _BYTES) and len(value) // _CHARS_PER_VALUE > _OFF_LOOP_ITEMS


_SAMPLED = 3  # a list's size is estimated from this many of its items (rows are alike)
_SAMPLED_ENTRIES = 16  # a dict's, from this many of its values
_ESTIMATE_DEPTH = 4


def _estimate(value: Any, depth: int) -> int:
    """About how many values ``value`` holds at every level, from a few samples (cost bounded, small)."""
    if not isinstance(value, _CONTAINERS):
        return 1 + len(value) // _CHARS_PER_VALUE if isinstance(value, _TEXTS) else 1
    size = len(value)
    if not size or depth >= _ESTIMATE_DEPTH:
        return size
    if isinstance(value, dict):
        values = value.values()
        if _SCALAR_TYPES.issuperset(map(type, values)):  # texts and numbers: their texts' lengths
            if size <= _SAMPLED_ENTRIES:
                return size + sum(map(_length, values)) // _CHARS_PER_VALUE
            chars = sum(map(_length, itertools.islice(values, _SAMPLED_ENTRIES)))
            return size + chars * size // (_SAMPLED_ENTRIES * _CHARS_PER_VALUE)
        sample = list(itertools.islice(values, _SAMPLED_ENTRIES))
    else:
        sample = list(value) if size <= _SAMPLED else [value[0], value[size // 2], value[-1]]
    inner = sum(_estimate(item, depth + 1) for item in sample)
    return size + inner * size // len(sample)


class _ChunkedEncoding:
    """The JSON text of a large value, made by the C encoder in pieces of at most about ``_CHUNK_ITEMS``.

    The pieces are joined as ``json.dumps`` writes them (``", "`` and ``": "``). Beside the text comes its
    piece tree, which :func:`_decode_pieces` reads to rebuild the JSON value from the text one piece at a
    time as well (a worker thread decoding it lets the event loop run between pieces): a piece encoded at
    once is its length (an int), a list's run of small items a :class:`_Batch`, a container a
    :class:`_Pieces`. The tree holds lengths, not copies of the text.
    """

    def __init__(self, encoder: json.JSONEncoder) -> None:
        self._encode = encoder.encode
        # bytes holding text: the converting encoder's text of them, encoded in slices as a long text is
        self._bytes_text = encoder.default if isinstance(encoder, _ResultEncoder) else None
        self._path: set[int] = set()  # the containers being encoded: a cycle through them is refused

    def encode(self, value: Any) -> tuple[str, Any]:
        """Return the text and its piece tree."""
        if type(value) is str and len(value) > _CHUNK_CHARS:
            return self._encode_text(value)
        if self._bytes_text is not None and isinstance(value, _BYTES) and len(value) > _CHUNK_CHARS:
            return self._encode_text(self._bytes_text(value))  # (refused, TypeError, unless UTF-8 text)
        if not isinstance(value, _CONTAINERS) or _weight(value, _CHUNK_ITEMS) <= _CHUNK_ITEMS:
            text = self._encode(value)
            return text, len(text)
        if id(value) in self._path:
            raise ValueError("Circular reference detected")
        self._path.add(id(value))
        try:
            if isinstance(value, dict):
                texts: list[str] = []
                entries: list[tuple[int, Any]] = []
                for key, item in value.items():
                    text, tree = self.encode(item)
                    key_text = self._encode(key)
                    texts.append(f"{key_text}: {text}")
                    entries.append((len(key_text), tree))
                return "{" + ", ".join(texts) + "}", _Pieces(entries, is_dict=True)
            return self._encode_items(value)
        finally:
            self._path.discard(id(value))

    def _encode_text(self, value: str) -> tuple[str, Any]:
        """A long text, encoded in slices (JSON escapes one character at a time: the slices join up)."""
        encode = self._encode
        parts = [
            encode(value[start : start + _CHUNK_CHARS])[1:-1] for start in range(0, len(value), _CHUNK_CHARS)
        ]
        return '"' + "".join(parts) + '"', _Text([len(part) for part in parts])

    def _encode_items(self, items: list[Any] | tuple[Any, ...]) -> tuple[str, Any]:
        texts: list[str] = []
        parts: list[Any] = []  # _Batch (several small items) or a large item's tree
        batch: list[Any] = []
        weight = 0

        def flush() -> None:
            nonlocal weight
            if batch:
                texts.append(self._encode(batch)[1:-1])
                parts.append(_Batch(len(texts[-1])))
                batch.clear()
            weight = 0

        for item in items:
            size = _weight(item, _CHUNK_ITEMS)
            if size > _CHUNK_ITEMS:
                flush()
                text, tree = self.encode(item)
                texts.append(text)
                parts.append(tree)
                continue
            batch.append(item)
            weight += size
            if weight >= _CHUNK_ITEMS:
                flush()
        flush()
        return "[" + ", ".join(texts) + "]", _Pieces(parts, is_dict=False)


def _decode_pieces(text: str, tree: Any) -> Any:
    """The JSON value (tuples as lists, converted values as their JSON) of a text and its piece tree."""
    return _decode_at(text, tree, 0)[0]


def _decode_at(text: str, tree: Any, start: int) -> tuple[Any, int]:
    """Decode the piece ``tree`` describes at ``start`` of ``text``; return it and where it ends."""
    if type(tree) is int:
        end = start + tree
        return json.loads(text[start:end]), end
    position = start + 1  # past "{", "[" or '"'
    if type(tree) is _Text:
        texts: list[str] = []
        for length in tree.lengths:
            end = position + length
            texts.append(json.loads(f'"{text[position:end]}"'))
            position = end
        return "".join(texts), position + 1
    if tree.is_dict:
        entries: dict[str, Any] = {}
        for index, (key_length, part) in enumerate(tree.parts):
            if index:
                position += 2  # ", "
            key = json.loads(text[position : position + key_length])
            entries[key], position = _decode_at(text, part, position + key_length + 2)  # past ": "
        return entries, position + 1
    values: list[Any] = []
    for index, part in enumerate(tree.parts):
        if index:
            position += 2
        if type(part) is _Batch:
            end = position + part.length
            values.extend(json.loads(f"[{text[position:end]}]"))
            position = end
        else:
            value, position = _decode_at(text, part, position)
            values.append(value)
    return values, position + 1


@dataclasses.dataclass(slots=True)
class _Pieces:
    parts: list[Any]  # a dict's (key text length, value tree) pairs; a list's _Batch and item trees
    is_dict: bool


@dataclasses.dataclass(slots=True)
class _Text:
    lengths: list[int]  # of the encoded slices of a long text, without the quotes


@dataclasses.dataclass(slots=True)
class _Batch:
    length: int  # of several items of a list, without the brackets


def _encode_large_result(value: Any) -> tuple[Any, str, Any]:
    """:func:`_encode_result` for a large value, in pieces (run in a worker thread); also the piece tree."""
    tuples = isinstance(value, _CONTAINERS) and _check_keys(value)
    encoder: json.JSONEncoder = _PLAIN_ENCODER
    try:
        text, tree = _ChunkedEncoding(encoder).encode(value)
    except TypeError:
        encoder = _ResultEncoder()  # converts pydantic models and dataclasses, refuses anything else
        text, tree = _ChunkedEncoding(encoder).encode(value)
    converted = isinstance(encoder, _ResultEncoder) and encoder.converted
    if not (converted or tuples):
        return value, text, tree
    return _decode_pieces(text, tree), text, tree


_STR_TYPES = frozenset({str})
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _check_keys(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> bool:
    """Refuse dicts with keys that are not strings (TypeError); return whether ``value`` holds a tuple.

    ``json`` turns such keys into strings: ``{1: "a", "1": "b"}`` became ``{"1": "a", "1": "b"}``, and the
    cached result read back differed from the first. The walk runs on the event loop for every result:
    flat dicts and lists inside a container (a list of rows) are checked where they are found, at C speed,
    without a trip through the pending list.
    """
    pending: list[Any] = [value]
    seen: set[int] = set()  # a container holding itself: the encoder reports the cycle
    tuples = False
    scalar = _SCALAR_TYPES.issuperset
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            if not _STR_TYPES.issuperset(map(type, item)):  # C-level: the usual flat dict costs little
                _check_dict_keys(item)
            values: Any = item.values()
        else:
            tuples = tuples or isinstance(item, tuple)
            values = item
        if scalar(map(type, values)):
            continue
        for inner in values:
            kind = type(inner)
            if kind is dict:
                if not _STR_TYPES.issuperset(map(type, inner)):
                    _check_dict_keys(inner)
                if scalar(map(type, inner.values())):
                    continue  # a flat dict: checked (no container inside it, so no cycle through it)
                pending.append(inner)
            elif kind is list or kind is tuple:
                tuples = tuples or kind is tuple
                if not scalar(map(type, inner)):
                    pending.append(inner)
            elif isinstance(inner, dict | list | tuple):  # subclasses
                pending.append(inner)
    return tuples


def _check_dict_keys(item: dict[Any, Any]) -> None:
    for key in item:  # (str subclasses, StrEnum members say, are strings)
        if not isinstance(key, str):
            raise TypeError(f"a dict key is {type(key).__name__} {describe_value(key)}, not a string")


class ToolManager(ToolRegistry):
    """Registers tools, describes them to models and runs them safely.

    Registration, listing and schemas come from :class:`ToolRegistry`; this class runs the calls. One
    method per job:

    * register: :meth:`register_tool` (a ``@tool`` function or a :class:`ToolDefinition`);
      :meth:`register_function_tool` is the user guide's form, naming a function at the call;
    * run one tool: :meth:`execute_tool` (keyword arguments; :meth:`call_tool` takes them as one mapping,
      with a call id and a per-caller rate-limit key; :meth:`execute` is an alias);
    * run a model's tool calls: :meth:`execute_tool_calls`;
    * describe the tools to a model: :meth:`get_tool_schemas`.

    Args:
        config: Supplies ``max_tool_timeout``, ``enable_tool_caching`` and ``max_concurrent_tool_calls``
            (read at each call, so later assignments take effect). Defaults to ``ContextManagerConfig()``.
        permission_policy: Which permission levels run freely. The default, ``PermissionPolicy()``, lets
            ``PUBLIC`` and ``STANDARD`` tools run and asks the approval callback about ``RESTRICTED`` and
            ``DANGEROUS`` ones. A :class:`ToolPermission` is accepted as shorthand for ``allow_up_to``.
        approval_callback: ``async (definition, arguments) -> bool`` consulted for calls above the policy;
            only ``True`` lets the call run. Without one, such calls are denied. A sync callable is
            accepted too: it runs in one of the manager's threads, so the event loop goes on meanwhile
            (one call at a time: the next waits until the previous call has returned in its thread,
            even when that call's caller stopped waiting).
        clock: Monotonic seconds for rate limits and cache expiry (tests pass a controllable clock).
        cache_size: How many tool results the LRU cache keeps.
        max_threads: The most threads sync tools run in at once (the manager's own pool).
        cancel_grace: Seconds a cancelled async tool (its timeout, or its caller cancelled) is given to
            unwind before the call returns without it (see :attr:`cancel_grace`); from 0 to 60.
        max_abandoned_calls: The most calls of one tool left running after their caller stopped waiting
            before new calls to it are refused (``overloaded``, not run); None for no bound (see
            :attr:`max_abandoned_calls`). A tool's own ``max_abandoned_calls`` option overrides it.

    Example:
        >>> manager = ToolManager()
        >>> async def shout(text: str) -> str:
        ...     return text.upper()
        >>> manager.register_function_tool("shout", shout, "Upper-case a text").name
        'shout'
        >>> # result = await manager.execute_tool("shout", text="hi")  -> result.result == "HI"
    """

    def __init__(
        self,
        config: ContextManagerConfig | None = None,
        *,
        permission_policy: PermissionPolicy | ToolPermission | str = PermissionPolicy(),  # noqa: B008
        approval_callback: ApprovalCallback | None = None,
        clock: Callable[[], float] | None = None,
        cache_size: int = 1024,
        max_threads: int = 64,
        cancel_grace: float = 0.5,
        max_abandoned_calls: int | None = 16,
    ) -> None:
        if config is not None and not isinstance(config, ContextManagerConfig):
            raise InvalidArgumentError("config", config, "a ContextManagerConfig or None")
        if clock is not None and not callable(clock):
            raise InvalidArgumentError("clock", clock, "a callable returning monotonic seconds, or None")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size <= 0:
            raise InvalidArgumentError("cache_size", cache_size, "an integer > 0")
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads <= 0:
            raise InvalidArgumentError("max_threads", max_threads, "an integer > 0")
        self.config = config if config is not None else ContextManagerConfig()
        """The configuration the manager reads its limits from."""
        self._policy = PermissionPolicy.coerce(permission_policy)
        self.approval_callback = approval_callback
        # per typed tool, its integer and number arguments (name -> what is expected): true is refused there
        self._numeric_arguments: dict[str, dict[str, str]] = {}
        # ... and the arguments inside whose values (nested objects, arrays) a number is expected somewhere
        self._nested_numeric_arguments: dict[str, tuple[str, ...]] = {}
        super().__init__()
        self._clock = clock if clock is not None else time.monotonic
        self._stats: dict[str, _ToolStats] = {}
        self._unknown_calls = 0
        self._limiter = SlidingWindowRateLimiter(self._clock)
        self._cache = ToolResultCache(cache_size, clock=self._clock)
        self._threads = UserThreads("context-manager-tool", max_threads=max_threads)
        self.cancel_grace = cancel_grace
        self.max_abandoned_calls = max_abandoned_calls
        # per registration, its calls still running after their caller stopped waiting (async tasks left
        # running, sync calls in their thread), and, once it ignored a cancellation, its calls in flight; a
        # tool without any has no entry, so the check on each call is one test of an empty dict
        self._abandoned_calls: dict[ToolDefinition, _CallsLeftRunning] = {}
        # of every registration together (a replaced one's too, until its calls end): the calls left running,
        # and the calls in flight of tools that ignored a cancellation (config.max_abandoned_tool_calls)
        self._total_abandoned = 0
        self._total_in_flight = 0
        # a sync call ending after its event loop closed reports its end from its own thread
        self._abandoned_calls_lock = threading.Lock()
        # async tools that ignored their cancellation and still run (task -> its tool): referenced here so
        # they are not collected mid-flight, and cancelled again by cleanup()
        self._abandoned_tasks: dict[asyncio.Task[Any], tuple[ToolDefinition, _CallsLeftRunning]] = {}
        # per event loop (an asyncio.Lock is bound to the loop it first waits on: a second asyncio.run
        # would fail on it): the lock that asks a sync approval callback about one call at a time
        self._sync_approvals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self.telemetry: Telemetry | None | Literal["auto"] = "auto"
        """OpenTelemetry of the calls: ``"auto"`` looks up the configured providers at the first call (see
        :mod:`~context_manager.core.telemetry`); ``None`` records nothing."""

    @property
    def permission_policy(self) -> PermissionPolicy:
        """The policy deciding which tools run freely.

        Assign a :class:`PermissionPolicy`, or a :class:`ToolPermission` (or its string) as shorthand for
        ``allow_up_to``, to change the rules; an invalid value raises ``InvalidArgumentError``.
        """
        return self._policy

    @permission_policy.setter
    def permission_policy(self, value: PermissionPolicy | ToolPermission | str) -> None:
        self._policy = PermissionPolicy.coerce(value)

    @property
    def approval_callback(self) -> ApprovalCallback | None:
        """Consulted for calls the policy asks about; None denies them (assignable; checked)."""
        return self._approval_callback

    @approval_callback.setter
    def approval_callback(self, value: ApprovalCallback | None) -> None:
        self._approval_callback = _checked_callback(value)
        self._approval_is_async = is_async_callable(value)

    def _tool_added(self, definition: ToolDefinition) -> None:
        self._stats[definition.name] = _ToolStats()
        if definition.arguments_model is None:
            return
        numeric = numeric_arguments(definition.parameters_schema)
        if numeric:
            self._numeric_arguments[definition.name] = numeric
        nested = nested_numeric_arguments(definition.parameters_schema)
        if nested:
            self._nested_numeric_arguments[definition.name] = nested

    def _tool_removed(self, name: str) -> None:
        self._stats.pop(name, None)
        self._numeric_arguments.pop(name, None)
        self._nested_numeric_arguments.pop(name, None)
        self._cache.invalidate(name)
        self._limiter.reset(lambda key: isinstance(key, tuple) and key[0] == name)
        if self._abandoned_calls:
            # its calls left running stay tracked (until they end; cleanup() cancels them) through the record
            # each of them holds, but a new registration under this name (even of the same definition)
            # starts with none, and without the old one's record
            with self._abandoned_calls_lock:
                for definition, calls in list(self._abandoned_calls.items()):
                    if definition.name == name:
                        calls.stubborn = False
                        del self._abandoned_calls[definition]

    # ------------------------------------------------------------------ execution

    async def execute_tool(self, name: str, /, **arguments: Any) -> ToolResult:
        """Run the tool ``name`` with keyword arguments; never raises for tool-side problems.

        The same call as ``EnhancedContextManager.execute_tool`` (the user guide's), on the tool manager
        alone. ``name`` is positional-only, so a tool may have a parameter called ``name``. With the
        arguments already in a dict (parsed JSON), or to rate-limit one caller separately, use
        :meth:`call_tool`; for a model's tool calls, :meth:`execute_tool_calls`.

        Returns:
            A ToolResult; failures carry ``error`` and ``error_type`` (never raised).
        """
        return await self.call_tool(name, arguments)

    async def execute(self, name: str, /, **arguments: Any) -> ToolResult:
        """Alias of :meth:`execute_tool` (kept for code written against earlier versions)."""
        return await self.call_tool(name, arguments)

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        /,
        *,
        call_id: str | None = None,
        caller_key: str | None = None,
    ) -> ToolResult:
        """Run the tool ``name`` with its arguments as one mapping (the steps are in the module docstring).

        ``execute_tool(name, **arguments)`` is ``call_tool(name, arguments)``; this form takes arguments
        already held in a dict (a tool call's parsed JSON, an MCP request) and the call's options.

        Args:
            name: The tool to run.
            arguments: Its arguments (None means none), or their JSON object text as OpenAI sends it
                (``tool_call.function.arguments``; an empty text or ``null`` means none); text that is no
                JSON object gives an ``invalid_arguments`` result.
            call_id: A provider tool call id, copied to the result.
            caller_key: Rate-limit this caller separately (e.g. a user or session id), and cache its
                results apart from other callers'; None shares the tool's limit and cache among all.

        Returns:
            A ToolResult; failures carry ``error`` and ``error_type`` (never raised).

        Raises:
            InvalidArgumentError: ``call_id`` or ``caller_key`` is neither a string nor None (a programming
                error, not a tool-side problem; nothing runs).
        """
        if caller_key is not None and type(caller_key) is not str:
            _check_caller_key(caller_key)
        if call_id is not None and not isinstance(call_id, str):
            raise InvalidArgumentError("call_id", call_id, "a string (the provider's tool call id) or None")
        telemetry = self.telemetry
        if telemetry == "auto":
            telemetry = self.telemetry = (
                telemetry_for_current_providers() if self.config.enable_opentelemetry else None
            )
        if telemetry is None:
            return await self._call_tool(name, arguments, call_id, caller_key)
        known = isinstance(name, str) and name in self._tools  # a made-up name is no span name
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name if known else _attribute_text(name),
        }
        if known:
            attributes["gen_ai.tool.type"] = "function"  # the conventions' value for a function the app runs
        if call_id is not None:
            attributes["gen_ai.tool.call.id"] = _attribute_text(call_id)
        with telemetry.span(f"execute_tool {name}" if known else "execute_tool", attributes) as span:
            result = await self._call_tool(name, arguments, call_id, caller_key)
            telemetry.record_tool_result(span, result)
        return result

    async def _call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None,
        call_id: str | None,
        caller_key: str | None,
    ) -> ToolResult:
        started = _perf_counter()
        definition = self._tools.get(name) if isinstance(name, str) else None
        if definition is None:
            self._unknown_calls += 1
            names = sorted(self._tools)
            known = ", ".join(names[:_LISTED_TOOLS]) or "none registered"
            if len(names) > _LISTED_TOOLS:
                known += f" and {len(names) - _LISTED_TOOLS} more"
            return ToolResult(
                success=False,
                error=f"unknown tool {describe_value(name)}; available tools: {known}",
                error_type=ToolErrorType.UNKNOWN_TOOL,
                execution_time=_perf_counter() - started,
                tool_name=name if isinstance(name, str) else describe_value(name),
                call_id=call_id,
            )
        if arguments is None:
            arguments = {}
        elif isinstance(arguments, str):  # OpenAI's function.arguments, the JSON text of an object
            parsed = _arguments_from_text(arguments)
            if isinstance(parsed, str):  # (the text is not quoted: it may hold a sensitive argument)
                message = f"invalid arguments for tool {name!r}: {parsed}"
                return self._fail(definition, ToolErrorType.INVALID_ARGUMENTS, message, started, call_id)
            arguments = parsed
        if not isinstance(arguments, Mapping):
            return self._fail(
                definition,
                ToolErrorType.INVALID_ARGUMENTS,
                f"arguments: got {type(arguments).__name__}; expected a JSON object (dict)",
                started,
                call_id,
            )

        decision = self._policy.decide(definition)
        if decision is PermissionDecision.DENY:
            return self._fail(
                definition,
                ToolErrorType.PERMISSION_DENIED,
                f"tool {name!r} is denied by the permission policy",
                started,
                call_id,
            )

        model = definition.arguments_model
        if model is not None:
            # a JSON boolean is no number (pydantic's lax mode takes true as 1): checked only when one came
            numeric = self._numeric_arguments.get(name)
            booleans = (
                {
                    field: f"{field}: got {'true' if value else 'false'}; expected {expected}"
                    for field, expected in numeric.items()
                    if type(value := arguments.get(field)) is bool
                }
                if numeric is not None and bool in map(type, arguments.values())
                else None
            )
            unsure: dict[tuple[int | str, ...], str] | None = None
            if booleans is not None:
                # a field given by its name, not its alias (populate_by_name): pydantic says how it read it
                listed = definition.parameters_schema["properties"]
                unsure = {
                    (field,): ""
                    for field, value in arguments.items()
                    if type(value) is bool and field not in listed
                }
            nested = self._nested_numeric_arguments.get(name)
            nested_found = None
            if nested is not None:
                nested_found, nested_unsure = nested_booleans(
                    arguments,
                    nested,
                    definition.parameters_schema,
                    sensitive_arguments=definition.sensitive_keys,
                )
                if nested_unsure:
                    unsure = {**(unsure or {}), **nested_unsure}
            try:
                validated = model.__pydantic_validator__.validate_python(arguments)
            except ValidationError as error:
                message = describe_validation_error(
                    error,
                    name,
                    definition.parameters_schema["properties"],  # the names models see (aliases)
                    sensitive_arguments=definition.sensitive_keys,
                    arguments_model=model,
                    arguments=arguments,
                )
                if booleans or nested_found:  # but those pydantic refused itself (Optional[IntEnum] does)
                    errors = error.errors(include_url=False)
                    refused = {item["loc"][0] for item in errors if item["loc"]}
                    refused_paths = {
                        tuple(_json_path(item["loc"], arguments, item["type"])) for item in errors
                    }
                    message = "; ".join(
                        [
                            message,
                            *(text for field, text in (booleans or {}).items() if field not in refused),
                            *(text for at, text in (nested_found or {}).items() if at not in refused_paths),
                        ]
                    )
                return self._fail(
                    definition, ToolErrorType.INVALID_ARGUMENTS, message, started, call_id, arguments
                )
            except Exception as error:
                # the tool's own code (a validator raising KeyError or TypeError, which pydantic does not
                # turn into a ValidationError; a default that cannot be copied): its failure, not a crash
                logger.debug("validating the arguments of tool %r raised %s", name, type(error).__name__)
                message = (
                    f"tool {name!r} raised {_describe_error(error)} while its arguments were validated "
                    "(in the tool's own validators or defaults)"
                )
                return self._fail(definition, ToolErrorType.TOOL_ERROR, message, started, call_id, arguments)
            if unsure:  # booleans a union's members (or a field's name) left open: read as numbers?
                read = booleans_read_as_numbers(
                    validated, unsure, arguments, sensitive_arguments=definition.sensitive_keys
                )
                if read:
                    nested_found = {**(nested_found or {}), **read}
            if booleans or nested_found:
                problems = [*(booleans or {}).values(), *(nested_found or {}).values()]
                message = f"invalid arguments for tool {name!r}: " + "; ".join(problems)
                return self._fail(
                    definition, ToolErrorType.INVALID_ARGUMENTS, message, started, call_id, arguments
                )
            call_arguments: dict[str, Any] = validated.__dict__
        else:
            call_arguments = dict(arguments)
            if definition.schema_checked:
                problems = check_arguments_against_schema(
                    call_arguments,
                    definition.parameters_schema,
                    sensitive_arguments=definition.sensitive_keys,
                )
                if problems:
                    message = f"invalid arguments for tool {name!r}: " + "; ".join(problems)
                    return self._fail(
                        definition, ToolErrorType.INVALID_ARGUMENTS, message, started, call_id, arguments
                    )

        if decision is PermissionDecision.ASK:
            if self._abandoned_calls and (overloaded := self._overloaded(definition, started, call_id)):
                return overloaded  # (not a question for a person about a call that would not run)
            refusal = await self._ask_approval(definition, call_arguments, started)
            if refusal is not None:
                return self._fail(definition, ToolErrorType.PERMISSION_DENIED, refusal, started, call_id)

        cache_key: str | None = None
        generation = 0
        if definition.cacheable and self.config.enable_tool_caching:
            cache_key = canonical_arguments(call_arguments)
            if cache_key is None and model is not None:  # e.g. a nested model or a datetime argument
                try:
                    cache_key = canonical_arguments(validated.model_dump(mode="json"))
                except Exception:  # not JSON (an object sentinel, a cycle, a serializer raising): uncached
                    cache_key = None
            if cache_key is not None and caller_key is not None:
                # one cache per caller: callers are kept apart (an MCP server's users), so is what they got
                cache_key = f"{json.dumps(caller_key)}:{cache_key}"
            if cache_key is not None:
                found = self._cache.entry(name, cache_key)
                if found is not None:
                    return await self._cached_result(definition, found, started, call_id)
                generation = self._cache.generation(name)  # an invalidation while it runs: not cached

        if self._abandoned_calls and (overloaded := self._overloaded(definition, started, call_id)):
            return overloaded
        if definition.rate_limit is not None:
            retry_after = self._limiter.try_acquire(
                (name, caller_key), limit=definition.rate_limit, window=definition.rate_window
            )
            if retry_after is not None:
                result = self._fail(
                    definition,
                    ToolErrorType.RATE_LIMITED,
                    f"tool {name!r} allows {definition.rate_limit} "
                    f"call{'' if definition.rate_limit == 1 else 's'} per "
                    f"{_seconds(definition.rate_window)} s; retry after {_seconds(retry_after)} s",
                    started,
                    call_id,
                )
                result.retry_after = retry_after
                return result

        timeout = self.config.max_tool_timeout
        if definition.timeout is not None and definition.timeout < timeout:
            timeout = definition.timeout
        function = definition.function
        # once the tool has ignored a cancellation, its calls in flight count toward its bound: from here
        # (a sync callable's too, whose coroutine runs in a task once its thread returned it)
        counted = self._count_in_flight(definition) if self._abandoned_calls else None
        try:
            if definition.is_async:
                outcome = await self._run_async_tool(
                    definition,
                    function,
                    ((call_arguments,), {}) if model is None else ((), call_arguments),
                    timeout,
                    None,
                    started,
                    call_id,
                    call_arguments,
                )
                if isinstance(outcome, ToolResult):
                    return outcome
                value = outcome[0]
            else:
                scope = asyncio.timeout(timeout)
                thread_call: ThreadCall | None = None
                returned_awaitable = False
                try:
                    async with scope:
                        if model is None:
                            thread_call = self._threads.start(function, (call_arguments,), {})
                        else:
                            thread_call = self._threads.start(function, (), call_arguments)
                        value = await self._threads.wait(thread_call)
                        returned_awaitable = inspect.isawaitable(value)
                except TimeoutError as error:
                    if scope.expired():
                        if thread_call is None or thread_call.finished:  # the coroutine a sync one returned
                            late = ""
                        elif not thread_call.started:  # every thread is held (by hung calls, most likely)
                            self._refund_rate_limit(definition, caller_key)  # it did not run
                            threads = self._threads
                            late = (
                                f" waiting for a worker thread (all {threads.max_threads} are busy, "
                                f"{threads.abandoned} with timed-out calls still running); it did not run"
                            )
                        else:
                            late = " (its thread keeps running; a late result is discarded)"
                            self._abandon_thread_call(definition, thread_call)
                        return self._fail(
                            definition,
                            ToolErrorType.TIMEOUT,
                            f"tool {name!r} timed out after {timeout:g} s{late}",
                            started,
                            call_id,
                        )
                    return self._tool_error(definition, error, started, call_id, call_arguments)
                except Exception as error:
                    if scope.expired():
                        # the timeout cancelled the coroutine a sync callable returned, whose clean-up raised
                        return self._fail(
                            definition,
                            ToolErrorType.TIMEOUT,
                            f"tool {name!r} timed out after {timeout:g} s (cancelled, it raised "
                            f"{_describe_error(error)})",
                            started,
                            call_id,
                            call_arguments,
                        )
                    return self._tool_error(definition, error, started, call_id, call_arguments)
                except BaseException as error:
                    current = asyncio.current_task()
                    if isinstance(error, KeyboardInterrupt | SystemExit):
                        if _stops_the_process(error, current):
                            raise
                        # the tool's own exit (sys.exit, argparse on bad arguments): failed, as in a thread
                        exit_error = WorkerExit(error)
                        exit_error.__cause__ = error
                        return self._tool_error(definition, exit_error, started, call_id, call_arguments)
                    if (
                        isinstance(error, asyncio.CancelledError)
                        and current is not None
                        and current.cancelling()
                    ):
                        if thread_call is not None and not thread_call.started:  # it never runs
                            self._refund_rate_limit(definition, caller_key)
                        elif thread_call is not None:  # it runs on in its thread
                            self._abandon_thread_call(definition, thread_call)
                        self._count_cancelled(definition, started)
                        raise
                    return self._tool_error(definition, error, started, call_id, call_arguments)
                if scope.expired():
                    return self._fail(
                        definition,
                        ToolErrorType.TIMEOUT,
                        f"tool {name!r} timed out after {timeout:g} s (it ignored its cancellation; the "
                        "value it returned late is discarded)",
                        started,
                        call_id,
                    )
                if returned_awaitable:
                    # a sync callable that returned a coroutine (a lambda, a wrapper): run as an async tool
                    # is, in a task of its own for the rest of the time, with the same grace when cancelled
                    outcome = await self._run_async_tool(
                        definition,
                        _awaited,
                        ((value,), {}),
                        timeout,
                        scope.when(),
                        started,
                        call_id,
                        call_arguments,
                    )
                    if isinstance(outcome, ToolResult):
                        return outcome
                    value = outcome[0]

        finally:
            if counted is not None:
                self._in_flight_ended(definition, counted)
        text: str
        pieces: Any = None
        try:
            if type(value) is str:  # a text is its own content (and the cache keeps it as it is)
                text, pieces = value, TEXT_RESULT
            elif _is_large(value):
                # checked and encoded in a thread, in pieces: the event loop goes on meanwhile
                value, text, pieces = await asyncio.to_thread(_encode_large_result, value)
            else:
                value, text = _encode_result(value)
        except asyncio.CancelledError:
            self._count_cancelled(definition, started)
            raise
        except (TypeError, ValueError, RecursionError) as error:  # RecursionError: nested too deeply
            return self._fail(
                definition,
                ToolErrorType.TOOL_ERROR,
                f"tool {name!r} returned a value that is not JSON-serialisable ({error}); "
                "return str, int, float, bool, None, lists, dicts with str keys, "
                "datetimes, enums, pydantic models or dataclasses",
                started,
                call_id,
            )
        except Exception as error:
            # the value's own code failed while it was read (a list subclass's __len__, a numpy-like
            # object's tolist, a float subclass's __repr__): the tool's failure, not the caller's crash
            return self._fail(
                definition,
                ToolErrorType.TOOL_ERROR,
                f"tool {name!r} returned a value that could not be read as JSON ({_describe_error(error)}); "
                "return str, int, float, bool, None, lists, dicts with str keys, "
                "datetimes, enums, pydantic models or dataclasses",
                started,
                call_id,
                call_arguments,
            )
        if pieces is not TEXT_RESULT and type(value) is str:
            # a value converted to a text (bytes, a datetime): its own content, as a text returned is (the
            # window carried it JSON-quoted, '"hello"', where to_content() gave 'hello')
            text, pieces = value, TEXT_RESULT
        if cache_key is not None and self._tools.get(name) is definition:
            # (unless replaced meanwhile)
            self._cache.put(name, cache_key, text, definition.cache_ttl, pieces=pieces, generation=generation)
        elapsed = _perf_counter() - started
        stats = self._stats.get(name)  # None when the tool was unregistered while it ran
        if stats is not None:
            stats.record(elapsed)
        result = ToolResult(
            success=True, result=value, execution_time=elapsed, tool_name=name, call_id=call_id
        )
        if pieces is not TEXT_RESULT:
            result._keep_text(value, text)  # to_content() gives this text: the result is not encoded again
        return result

    async def _run_async_tool(
        self,
        definition: ToolDefinition,
        function: Callable[..., Any],
        arguments: tuple[tuple[Any, ...], dict[str, Any]],
        seconds: float,
        deadline: float | None,
        started: float,
        call_id: str | None,
        call_arguments: Mapping[str, Any],
    ) -> ToolResult | tuple[Any]:
        """Run an async tool in a task of its own for at most ``seconds``: ``(value,)`` or a failure.

        ``deadline`` (loop time), when given, is when those seconds end (they began before: a sync callable
        ran first in its thread and returned the coroutine ``function`` awaits); else they begin now.

        The caller waits on a future the tool's task resolves, never on the tool itself: a tool that swallows
        its cancellation cannot hold the caller. At the timeout the task is cancelled and given
        :attr:`cancel_grace` seconds to unwind; one still running then is left to run, tracked (see
        :meth:`cleanup`). The caller cancelled, the tool is cancelled too (and given the same grace) before
        the caller's cancellation propagates.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        args, kwargs = arguments
        task = loop.create_task(_run_tool(function, args, kwargs, waiter))
        if deadline is None:
            timer = loop.call_later(seconds, _wake, waiter)
        else:
            timer = loop.call_at(deadline, _wake, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # the caller is cancelled (wait_for, a TaskGroup): so is the tool, which may clean up meanwhile
            task.cancel()
            await self._unwind(definition, task, loop)
            self._count_cancelled(definition, started)
            raise
        finally:
            timer.cancel()
        if task.done():
            if task.cancelled():  # it cancelled its own task (asyncio.current_task().cancel())
                error = asyncio.CancelledError()
                return self._tool_error(definition, error, started, call_id, call_arguments)
            outcome: tuple[bool, Any] = task.result()
            return self._async_outcome(definition, outcome, started, call_id, call_arguments)
        # the timeout: the tool is cancelled, and waited for a little (its clean-up: closing a connection)
        task.cancel()
        cancelled_at = loop.time()
        timed_out = f"tool {definition.name!r} timed out after {seconds:g} s"
        try:
            unwound = await _wait_for_task(task, self._cancel_grace, loop)
        except asyncio.CancelledError:  # the caller's own cancellation cut the grace short
            self._leave_running(definition, task, loop.time() - cancelled_at)
            self._count_cancelled(definition, started)
            raise
        if not unwound:
            self._leave_running(definition, task, loop.time() - cancelled_at)
            return self._fail(
                definition,
                ToolErrorType.TIMEOUT,
                f"{timed_out} (it ignored its cancellation and is left running; a late result is discarded)",
                started,
                call_id,
            )
        if task.cancelled():
            return self._fail(definition, ToolErrorType.TIMEOUT, timed_out, started, call_id)
        succeeded, value = task.result()
        if succeeded:
            # it caught the cancellation and returned anyway: it ran past its time all the same, and what it
            # returned after being cancelled is not its answer
            message = f"{timed_out} (it ignored its cancellation; the value it returned late is discarded)"
            return self._fail(definition, ToolErrorType.TIMEOUT, message, started, call_id)
        if isinstance(value, asyncio.CancelledError):  # cancelled, it raised a CancelledError of its own
            return self._fail(definition, ToolErrorType.TIMEOUT, timed_out, started, call_id)
        # the timeout cancelled the tool, whose clean-up raised an error of its own (a ``finally`` closing a
        # connection): it ran out of time, and that is what the model must read
        return self._fail(
            definition,
            ToolErrorType.TIMEOUT,
            f"{timed_out} (cancelled, it raised {_describe_error(value)})",
            started,
            call_id,
            call_arguments,
        )

    def _async_outcome(
        self,
        definition: ToolDefinition,
        outcome: tuple[bool, Any],
        started: float,
        call_id: str | None,
        call_arguments: Mapping[str, Any],
    ) -> ToolResult | tuple[Any]:
        """``(value,)`` of a tool that returned in time, or the failed result of one that raised."""
        succeeded, value = outcome
        if succeeded:
            return (value,)
        error: BaseException = value
        if isinstance(error, KeyboardInterrupt | SystemExit):
            if _stops_the_process(error, asyncio.current_task()):
                raise error
            # the tool's own exit (sys.exit, argparse on bad arguments): failed, as in a sync tool
            exit_error = WorkerExit(error)
            exit_error.__cause__ = error
            error = exit_error
        # any other exception, a CancelledError the tool raised itself (it awaited something cancelled), a
        # GeneratorExit it awaited: the tool's failure
        return self._tool_error(definition, error, started, call_id, call_arguments)

    async def _unwind(
        self, definition: ToolDefinition, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Give a cancelled tool :attr:`cancel_grace` seconds to unwind; leave it running after that.

        A further cancellation of the caller stops the wait (the caller's own cancellation is raised by
        the caller afterwards).
        """
        cancelled_at = loop.time()
        with contextlib.suppress(asyncio.CancelledError):
            await _wait_for_task(task, self._cancel_grace, loop)
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved (a process-stopping exit propagated from the loop already)
        else:
            self._leave_running(definition, task, loop.time() - cancelled_at)

    def _leave_running(self, definition: ToolDefinition, task: asyncio.Task[Any], waited: float) -> None:
        """Track a tool that ignored its cancellation: kept referenced, its end logged, counted in stats.

        ``waited``: the seconds it was given (the grace, or less when the caller's cancellation cut it short).
        """
        calls = self._abandoned_call_began(definition)
        self._abandoned_tasks[task] = (definition, calls)
        if self._tools.get(definition.name) is definition:  # (not a registration replaced meanwhile)
            calls.stubborn = True  # from now on its calls in flight count toward its bound too
        task.add_done_callback(self._abandoned_task_ended)
        logger.warning(
            "tool %r ignored its cancellation for %.3g s; it is left running in its task "
            "(cleanup() cancels it again)",
            definition.name,
            waited,
        )

    def _abandon_thread_call(self, definition: ToolDefinition, call: ThreadCall) -> None:
        """Count a sync call whose caller stopped waiting while it runs on in its thread, until it ends."""
        calls = self._abandoned_call_began(definition)
        if not call.on_late_end(functools.partial(self._abandoned_call_ended, definition, calls)):
            self._abandoned_call_ended(definition, calls)  # it ended meanwhile

    def _abandoned_call_began(self, definition: ToolDefinition) -> _CallsLeftRunning:
        """Count a call of ``definition`` left running; the record it counts down when it ends."""
        with self._abandoned_calls_lock:
            calls = self._abandoned_calls.get(definition)
            if calls is None:
                calls = self._abandoned_calls[definition] = _CallsLeftRunning()
            calls.abandoned += 1
            self._total_abandoned += 1
            return calls

    def _abandoned_call_ended(self, definition: ToolDefinition, calls: _CallsLeftRunning) -> None:
        """Count down a call left running that ended (on the loop; in its thread if the loop was closed).

        ``calls`` is the record that counted it: that of a registration since removed is no longer looked up
        (a tool registered again, even the same definition, starts with a record of its own).
        """
        with self._abandoned_calls_lock:
            calls.abandoned -= 1
            self._total_abandoned -= 1
            if calls.idle() and self._abandoned_calls.get(definition) is calls:
                del self._abandoned_calls[definition]  # no entry: the check on each call stays one dict test

    def _count_in_flight(self, definition: ToolDefinition) -> _CallsLeftRunning | None:
        """Count a call about to run of a tool that ignored a cancellation before; its record, else None."""
        calls = self._abandoned_calls.get(definition)
        if calls is None or not calls.stubborn:
            return None
        with self._abandoned_calls_lock:
            calls.in_flight += 1
            self._total_in_flight += 1
        return calls

    def _in_flight_ended(self, definition: ToolDefinition, calls: _CallsLeftRunning) -> None:
        """Count down a call :meth:`_count_in_flight` counted, its caller answered (or cancelled)."""
        with self._abandoned_calls_lock:
            calls.in_flight -= 1
            self._total_in_flight -= 1
            if calls.idle() and self._abandoned_calls.get(definition) is calls:
                del self._abandoned_calls[definition]

    def _overloaded(
        self, definition: ToolDefinition, started: float, call_id: str | None
    ) -> ToolResult | None:
        """The ``overloaded`` failure of a call to a tool at its bound of calls left running, else None.

        The bound is the tool's ``max_abandoned_calls``, else the manager's. Once one of the tool's calls
        has ignored its cancellation, its calls in flight count as well as those left running.
        """
        calls = self._abandoned_calls.get(definition)
        if calls is None:
            return None
        limit = definition.max_abandoned_calls
        if limit is None:
            limit = self._max_abandoned_calls
            bound = f"ToolManager(max_abandoned_calls={limit})"
        else:
            bound = f"its max_abandoned_calls={limit}"
        if limit is None or calls.abandoned + calls.in_flight < limit:
            return self._overloaded_in_all(definition, calls, started, call_id)
        if self._forget_dead_tasks() and calls.abandoned + calls.in_flight < limit:
            return self._overloaded_in_all(definition, calls, started, call_id)
        left, in_flight = calls.abandoned, calls.in_flight
        plural = left != 1
        counted, they, their = (f"{left} calls", "they", "their") if plural else ("1 call", "it", "its")
        if in_flight:  # a tool known to ignore its cancellation: its calls running at all are bounded
            total = left + in_flight
            running = f"{total} calls" if total != 1 else "1 call"
            after = f"{left} still running after {their} timeout, {in_flight} " if left else ""
            message = (
                f"tool {definition.name!r} has ignored its cancellation before and has {running} running "
                f"({after}not timed out yet; {bound} allows no more at once), so this call did not run: "
                f"retry when {'they end' if total != 1 else 'it ends'}, or make the tool stop when it is "
                "cancelled"
            )
        else:
            if definition.is_async or calls.stubborn:  # (a sync callable's coroutine runs in a task)
                why, remedy = (
                    f"{they} ignored {their} cancellation",
                    "make the tool stop when it is cancelled",
                )
            else:  # a sync call: its thread cannot be cancelled
                threads = "their threads" if plural else "its thread"
                why, remedy = f"{threads} cannot be stopped", "give its blocking work an async version"
            message = (
                f"tool {definition.name!r} has {counted} still running after {their} timeout ({why}; "
                f"{bound} allows no more), so this call did not run: retry "
                f"when {they} end{'' if plural else 's'}, or {remedy}"
            )
        return self._fail(definition, ToolErrorType.OVERLOADED, message, started, call_id)

    def _overloaded_in_all(
        self, definition: ToolDefinition, calls: _CallsLeftRunning, started: float, call_id: str | None
    ) -> ToolResult | None:
        """The ``overloaded`` failure of a call to a tool that left calls running, at the bound in all.

        That is when the manager's tools together have ``config.max_abandoned_tool_calls`` such calls (the
        calls in flight of tools that ignored a cancellation included); else None.

        Without it, each tool's own bound held, but 50 tools each leaving 16 calls running left 800 tasks or
        threads. Tools that never left a call running are not refused: they are not what fills the count.
        """
        cap = self.config.max_abandoned_tool_calls
        if cap is None or self._total_abandoned + self._total_in_flight < cap:
            return None
        if self._forget_dead_tasks() and self._total_abandoned + self._total_in_flight < cap:
            return None
        left, in_flight = self._total_abandoned, self._total_in_flight
        if definition.is_async or calls.stubborn:
            why = "has ignored its cancellation before"
        else:
            mine = calls.abandoned
            why = (
                f"has {mine} calls still running in their threads after their timeout"
                if mine != 1
                else "has 1 call still running in its thread after its timeout"
            )
        running = f"{left} call{'s' if left != 1 else ''} still running after their caller stopped waiting"
        if in_flight:
            running += f" and {in_flight} in flight of tools that ignored their cancellation"
        message = (
            f"tool {definition.name!r} {why}, and the tools of this manager have {running} "
            f"(config.max_abandoned_tool_calls={cap} allows no more in all), so this call did not run: retry "
            'when some of them end; get_tool_stats()["tools"] shows which tools have calls "abandoned"'
        )
        return self._fail(definition, ToolErrorType.OVERLOADED, message, started, call_id)

    def _forget_dead_tasks(self) -> bool:
        """Stop tracking tasks left running whose event loop was closed; whether there were any.

        Such a task never runs again and never ends (``run_until_complete`` then ``close()`` leaves it
        pending): counted for ever, it would have its tool refused as overloaded on every later loop.
        """
        dead = [task for task in self._abandoned_tasks if task.get_loop().is_closed()]
        for task in dead:
            task.remove_done_callback(self._abandoned_task_ended)
            self._abandoned_call_ended(*self._abandoned_tasks.pop(task))
        return bool(dead)

    def _abandoned_task_ended(self, task: asyncio.Task[Any]) -> None:
        tracked = self._abandoned_tasks.pop(task, None)
        if tracked is None:  # no longer tracked (its loop was closed)
            return
        definition = tracked[0]
        name = definition.name
        self._abandoned_call_ended(*tracked)
        if task.cancelled():
            logger.debug("abandoned tool %r ended, cancelled", name)
            return
        error = task.exception()
        if error is None:
            succeeded, value = task.result()
            if succeeded:
                logger.debug("abandoned tool %r ended; its late result is discarded", name)
                return
            error = value
        traceback = None if definition.sensitive_arguments else error
        logger.warning("abandoned tool %r ended raising %s", name, type(error).__name__, exc_info=traceback)

    @property
    def cancel_grace(self) -> float:
        """Seconds a cancelled async tool is given to unwind before its caller is answered without it.

        At its timeout (or its caller's cancellation) a tool is cancelled and waited for this long, so its
        clean-up (closing a connection, its subtasks) is done before the result comes back; a tool still
        running then (one that swallows cancellations) is left running in its task, counted in
        ``get_tool_stats()["tasks"]["abandoned"]``, and cancelled again by :meth:`cleanup`.
        """
        return self._cancel_grace

    @cancel_grace.setter
    def cancel_grace(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60:
            raise InvalidArgumentError("cancel_grace", value, "seconds, a number from 0 to 60")
        self._cancel_grace = float(value)

    @property
    def max_abandoned_calls(self) -> int | None:
        """The most calls of one tool left running after their caller stopped waiting; None: no bound.

        Such calls are async tools that ignored their cancellation (after :attr:`cancel_grace`) and sync
        tools whose thread runs on (a thread cannot be stopped), after their timeout or their caller's
        cancellation: ``get_tool_stats()["tools"][name]["abandoned"]`` counts them. While a tool has this
        many, a new call to it fails at once with ``error_type="overloaded"`` without running (nor using
        its rate limit); the count drops as they end. Once an async tool has ignored a cancellation, its
        calls in flight count too (a burst of concurrent calls to it is bounded). A tool's own
        ``max_abandoned_calls`` option takes precedence. Assignable; an integer >= 1 or None (default 16).
        """
        return self._max_abandoned_calls

    @max_abandoned_calls.setter
    def max_abandoned_calls(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidArgumentError(
                "max_abandoned_calls",
                value,
                "an integer >= 1 (calls of one tool left running after their timeout), or None",
            )
        self._max_abandoned_calls = value

    async def cleanup(self, *, wait: float = 1.0) -> None:
        """Cancel again the tools left running after ignoring a cancellation; wait up to ``wait`` seconds.

        A tool still running after that is logged (a warning naming it) and stays tracked. Safe to call
        more than once; the manager stays usable.

        Raises:
            InvalidArgumentError: ``wait`` is not a number >= 0.
        """
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise InvalidArgumentError("wait", wait, "seconds, a number >= 0")
        loop = asyncio.get_running_loop()
        self._forget_dead_tasks()
        tasks = [task for task in self._abandoned_tasks if task.get_loop() is loop]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=wait)
        if pending:
            names = sorted(
                {tracked[0].name for task in pending if (tracked := self._abandoned_tasks.get(task))}
            )
            logger.warning(
                "%d tool task(s) still running after cleanup (they ignore cancellation; asyncio.run() "
                "waits for them at its end): %s",
                len(pending),
                ", ".join(map(repr, names)),
            )

    async def __aenter__(self) -> ToolManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup()

    def _refund_rate_limit(self, definition: ToolDefinition, caller_key: str | None) -> None:
        """Give back the rate-limit slot of a call that was admitted but never ran (no thread took it)."""
        if definition.rate_limit is not None and self._tools.get(definition.name) is definition:
            self._limiter.release((definition.name, caller_key))

    async def _cached_result(
        self, definition: ToolDefinition, found: tuple[str, Any], started: float, call_id: str | None
    ) -> ToolResult:
        """The result of a cache hit: a fresh copy of the cached value, whose text ``to_content()`` reuses.

        A large value is decoded in a worker thread, piece by piece, so the event loop goes on meanwhile.
        """
        text, pieces = found
        if pieces is TEXT_RESULT:  # a string: nothing a caller can change, so nothing to copy
            value: Any = text
        elif pieces is None:
            value = json.loads(text)
        else:
            try:
                value = await asyncio.to_thread(_decode_pieces, text, pieces)
            except asyncio.CancelledError:
                self._count_cancelled(definition, started)
                raise
        elapsed = _perf_counter() - started
        stats = self._stats.get(definition.name)
        if stats is not None:
            stats.record(elapsed, cached=True)
        result = ToolResult(
            success=True,
            result=value,
            execution_time=elapsed,
            tool_name=definition.name,
            cached=True,
            call_id=call_id,
        )
        if pieces is not TEXT_RESULT:
            result._keep_text(value, text)
        return result

    async def _ask_approval(
        self, definition: ToolDefinition, arguments: dict[str, Any], started: float
    ) -> str | None:
        """Return None when the approval callback allows the call, else why it is denied."""
        callback = self._approval_callback
        needed = (
            f"tool {definition.name!r} needs permission {definition.permission.value!r}, above the policy's "
            f"{self._policy.allow_up_to.value!r}"
        )
        if callback is None:
            return f"{needed}, and no approval callback is set"
        # a copy: what the callback changes (a nested secret redacted for its log) never reaches the tool
        try:
            shown = copy.deepcopy(arguments)
        except Exception:  # an argument object that cannot be copied (from a Python caller): its dict
            shown = dict(arguments)
        try:
            if self._approval_is_async:
                outcome = callback(definition, shown)
            else:
                outcome = await self._ask_in_thread(callback, definition, shown)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except (Exception, asyncio.CancelledError) as error:
            # a CancelledError of the callback's own (a dialog's future cancelled) denies too; the call
            # itself being cancelled propagates
            current = asyncio.current_task()
            if isinstance(error, asyncio.CancelledError) and current is not None and current.cancelling():
                self._count_cancelled(definition, started)
                raise
            logger.warning("approval callback failed for tool %r: %s", definition.name, type(error).__name__)
            return f"{needed}; the approval check failed ({type(error).__name__}), so the call was denied"
        if outcome is True:
            return None
        return f"{needed}; the call was not approved"

    async def _ask_in_thread(
        self, callback: ApprovalCallback, definition: ToolDefinition, shown: dict[str, Any]
    ) -> Any:
        """Ask a sync callback (a prompt, a policy service's client) in a thread, not on the loop.

        One call at a time, as on the loop: a terminal prompt must not ask two questions at once. The
        lock is released when the callback's thread is done with it, not when this call stops waiting: a
        call that times out (or is cancelled) returns at once, but its prompt goes on in its thread, and
        the next prompt waits for it to end.
        """
        loop = asyncio.get_running_loop()
        lock = self._sync_approvals.get(loop)
        if lock is None:
            lock = self._sync_approvals[loop] = asyncio.Lock()

        def ask() -> Any:
            try:
                return callback(definition, shown)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: so is its lock
                    loop.call_soon_threadsafe(lock.release)

        await lock.acquire()
        try:
            call = self._threads.start(ask, (), {})
        except BaseException:
            lock.release()
            raise
        try:
            return await self._threads.wait(call)
        except asyncio.CancelledError:
            if not call.started:  # abandoned before a thread took it: it never runs, nor releases the lock
                lock.release()
            raise

    def _count_cancelled(self, definition: ToolDefinition, started: float) -> None:
        """Count a call its caller cancelled (``wait_for``, ``task.cancel()``) as a ``cancelled`` failure."""
        stats = self._stats.get(definition.name)
        if stats is not None:
            stats.record(_perf_counter() - started, ToolErrorType.CANCELLED)

    def _tool_error(
        self,
        definition: ToolDefinition,
        error: BaseException,
        started: float,
        call_id: str | None,
        arguments: Mapping[str, Any],
    ) -> ToolResult:
        # the traceback's last line quotes the exception's message, which may hold a sensitive argument
        traceback = None if definition.sensitive_arguments else error
        logger.debug("tool %r raised %s", definition.name, type(error).__name__, exc_info=traceback)
        message = f"tool {definition.name!r} raised {_describe_error(error)}"
        return self._fail(definition, ToolErrorType.TOOL_ERROR, message, started, call_id, arguments)

    def _fail(
        self,
        definition: ToolDefinition,
        error_type: ToolErrorType,
        message: str,
        started: float,
        call_id: str | None,
        arguments: Mapping[str, Any] | None = None,
    ) -> ToolResult:
        """A failed result; given ``arguments``, sensitive argument values are cut out of ``message``."""
        if arguments and definition.sensitive_arguments:
            message = definition.scrub(message, arguments)
        elapsed = _perf_counter() - started
        stats = self._stats.get(definition.name)
        if stats is not None:
            stats.record(elapsed, error_type)
        logger.debug("tool %r failed: %s", definition.name, error_type.value)
        return ToolResult(
            success=False,
            error=message,
            error_type=error_type,
            execution_time=elapsed,
            tool_name=definition.name,
            call_id=call_id,
        )

    # ------------------------------------------------------------------ provider tool calls

    @staticmethod
    def _parse_tool_calls(calls: Sequence[ToolCall | Mapping[str, Any]]) -> list[ParsedToolCall]:
        """Normalise tool calls: OpenAI ``tool_calls`` items, Anthropic ``tool_use`` blocks or ToolCall.

        Provider SDK objects (``ChatCompletionMessageToolCall``, ``ToolUseBlock``) are accepted as well, and
        so are OpenAI Responses API ``function_call`` items (their id is their ``call_id``).

        A call whose arguments are not a JSON object is kept, with empty arguments and an
        ``invalid_arguments`` failure, so it still gets a paired result.

        Raises:
            InvalidMessageError: a call has no id or name, is not a dict/ToolCall, or ids repeat.
        """
        if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
            raise InvalidMessageError("calls", calls, "a list of tool calls (OpenAI, Anthropic or ToolCall)")
        parsed: list[ParsedToolCall] = []
        for raw in calls:
            dump = getattr(raw, "model_dump", None)
            if callable(dump) and not isinstance(raw, ToolCall):  # provider SDK objects (pydantic models)
                raw = dump()
            try:  # (an OpenAI Responses API item is read under its call_id, as add_message reads it)
                parsed.append(ParsedToolCall(ToolCall.from_value(raw)))
            except InvalidMessageError as error:
                # the arguments, or a value inside them (NaN, a NUL character...): that call's failure only
                if not error.field.startswith(_ARGUMENT_FIELDS) or not isinstance(raw, Mapping):
                    raise
                shell = ToolCall.from_value(ToolCall(id=_raw_id(raw), name=_raw_name(raw), arguments={}))
                failure = ToolResult(
                    success=False,
                    error=f"invalid arguments for tool {shell.name!r}: {error}",
                    error_type=ToolErrorType.INVALID_ARGUMENTS,
                    tool_name=shell.name,
                    call_id=shell.id,
                )
                parsed.append(ParsedToolCall(shell, failure))
        ids = [item.call.id for item in parsed]
        if len(set(ids)) != len(ids):
            raise InvalidMessageError("calls", ids, "distinct call ids")
        return parsed

    async def execute_tool_calls(
        self, calls: Sequence[ToolCall | Mapping[str, Any]], *, caller_key: str | None = None
    ) -> list[ToolResult]:
        """Run a model's tool calls concurrently and return their results in call order.

        The one way to run provider tool calls: OpenAI ``tool_calls`` items (dicts or SDK objects),
        Responses API ``function_call`` items (answered under their ``call_id``), Anthropic ``tool_use``
        blocks or :class:`ToolCall` objects. At most
        ``config.max_concurrent_tool_calls`` run at once. Each call goes through every check of
        :meth:`call_tool` (permissions cannot be bypassed this way); each result carries its ``call_id``.
        A call whose arguments are not a JSON object gets a failed ``invalid_arguments`` result. To also
        append the paired tool messages to a context window, use
        ``EnhancedContextManager.execute_tool_calls``.

        Raises:
            InvalidMessageError: a call has no id or name, or ids repeat (nothing runs).
            InvalidArgumentError: ``caller_key`` is neither a string nor None (nothing runs).
        """
        if caller_key is not None:
            _check_caller_key(caller_key)
        return await self._run_parsed_calls(self._parse_tool_calls(calls), caller_key=caller_key)

    async def _run_parsed_calls(
        self, parsed: Sequence[ParsedToolCall], *, caller_key: str | None = None
    ) -> list[ToolResult]:
        """Run calls from :meth:`_parse_tool_calls` concurrently (bounded); results in call order."""
        semaphore = asyncio.Semaphore(self.config.max_concurrent_tool_calls)

        async def run(item: ParsedToolCall) -> ToolResult:
            if item.failure is not None:
                return item.failure
            async with semaphore:
                return await self.call_tool(
                    item.call.name, item.call.arguments, call_id=item.call.id, caller_key=caller_key
                )

        return list(await asyncio.gather(*(run(item) for item in parsed)))

    # ------------------------------------------------------------------ cache and statistics

    def invalidate_cache(self, name: str | None = None) -> int:
        """Drop cached results of every tool (or of ``name``); return how many were dropped.

        Raises:
            InvalidArgumentError: ``name`` is neither a string nor None (nothing is dropped).
        """
        if name is not None and not isinstance(name, str):
            raise InvalidArgumentError("name", name, "a tool name (a string), or None for every tool")
        return self._cache.invalidate(name)

    def purge_expired_cache(self) -> int:
        """Drop cached results whose TTL has passed; return how many were dropped.

        Also forgets rate-limit state that no longer counts (keys whose calls all left their window), so
        many distinct ``caller_key`` values do not accumulate.
        """
        self._limiter.prune(self._rate_window_of)
        return self._cache.purge_expired()

    def _rate_window_of(self, key: Hashable) -> float | None:
        definition = self._tools.get(key[0]) if isinstance(key, tuple) else None
        return None if definition is None else definition.rate_window

    def get_tool_stats(self) -> dict[str, Any]:
        """Return call statistics: totals, cache counters and one entry per registered tool.

        Per tool: ``calls``, ``successes``, ``failures``, ``cache_hits``, ``success_rate``, ``total_time``,
        ``average_time`` (seconds), ``last_called`` (epoch seconds) and ``errors`` (count per error_type).
        Every call is counted: ``calls == successes + failures``; a call its caller cancelled
        (``asyncio.wait_for``, ``task.cancel()``) is a failure of type ``cancelled``.
        ``rate_limit_keys``: (tool, caller_key) pairs the rate limiter tracks (bounded: expired ones
        are forgotten as new ones come). ``threads``: the sync tools' pool: ``busy`` (running a call),
        ``abandoned`` (timed-out calls still running in their thread) and ``max``. ``tasks``:
        ``abandoned``, the async tools that ignored their cancellation and still run in their task.
        Per tool, ``abandoned`` counts its calls of either kind still running after their caller stopped
        waiting, and ``ignored_cancellation`` says whether one of its async calls ignored its cancellation
        (for the life of its registration: its calls in flight count toward the bounds too);
        ``max_abandoned_calls`` is the bound past which new calls to a tool are refused (``overloaded``).
        ``abandoned_calls`` counts such calls of every tool together (a replaced registration's too), and
        ``max_abandoned_tool_calls`` (``config.max_abandoned_tool_calls``) is the bound on them together
        past which new calls to tools that left calls running are refused.
        """
        if self._abandoned_tasks:
            self._forget_dead_tasks()
        registered = self._tools
        abandoned = {  # the current registrations' (one replaced keeps its own until its calls end)
            definition.name: calls
            for definition, calls in list(self._abandoned_calls.items())
            if registered.get(definition.name) is definition
        }
        tools = {
            name: stats.as_dict(calls.abandoned, calls.stubborn)
            if (calls := abandoned.get(name)) is not None
            else stats.as_dict(0, False)
            for name, stats in self._stats.items()
        }
        return {
            "registered_tools": len(self._tools),
            "total_calls": sum(stats.calls for stats in self._stats.values()) + self._unknown_calls,
            "unknown_tool_calls": self._unknown_calls,
            "cache": {"entries": len(self._cache), "hits": self._cache.hits, "misses": self._cache.misses},
            "rate_limit_keys": len(self._limiter),
            "threads": {
                "busy": self._threads.busy,
                "abandoned": self._threads.abandoned,
                "max": self._threads.max_threads,
            },
            "tasks": {"abandoned": len(self._abandoned_tasks)},
            "max_abandoned_calls": self._max_abandoned_calls,
            "abandoned_calls": self._total_abandoned,
            "max_abandoned_tool_calls": self.config.max_abandoned_tool_calls,
            "tools": tools,
        }


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_ARGUMENTS_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""JSON as a provider's tool call is read (``execute_tool_calls`` refuses NaN and Infinity too)."""


def _arguments_from_text(text: str) -> dict[str, Any] | str:
    """Arguments given as JSON text (OpenAI's ``function.arguments``): the object, else what is wrong.

    An empty text or ``null`` is no arguments, as in a provider's tool call.
    """
    if not text.strip():
        return {}
    try:
        value = _ARGUMENTS_DECODER.decode(text)
    except (ValueError, RecursionError) as error:  # bad JSON, NaN, a number too large, nesting too deep
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        return f"arguments: got {len(text)} characters that are no JSON ({detail}); expected a JSON object"
    if value is None:
        return {}
    if not isinstance(value, dict):
        return f"arguments: got a JSON {_JSON_KINDS.get(type(value), 'value')}; expected a JSON object"
    return value


def _checked_callback(callback: ApprovalCallback | None) -> ApprovalCallback | None:
    if callback is not None and not callable(callback):
        raise InvalidArgumentError("approval_callback", callback, "an async callable or None")
    return callback


_ATTRIBUTE_CHARS = 128
"""The most of a made-up tool name or a call id a span attribute carries."""


def _attribute_text(value: Any) -> str:
    """A span attribute for a name or id the caller gave: cut to :data:`_ATTRIBUTE_CHARS` characters.

    A name a model made up can be a paragraph (or a pasted document), and an object's ``str()`` can raise:
    the span carried all of it (or ``execute_tool`` raised), for every such call.
    """
    text = value if isinstance(value, str) else describe_value(value)
    if len(text) <= _ATTRIBUTE_CHARS:
        return text
    return f"{text[: _ATTRIBUTE_CHARS - 20]}...<{len(text)} chars>"


def _check_caller_key(caller_key: object) -> None:
    """Refuse a ``caller_key`` that is not a string (a dict or list cannot key a rate limit or a cache)."""
    if not isinstance(caller_key, str):
        raise InvalidArgumentError("caller_key", caller_key, "a string (a user or session id) or None")


def _stops_the_process(error: BaseException, current: asyncio.Task[Any] | None) -> bool:
    """Whether a ``SystemExit`` or ``KeyboardInterrupt`` raised while a tool ran stops the process.

    It does when a signal handler raised it (a SIGTERM handler calling ``sys.exit``, Python's own SIGINT
    handler, ``asyncio.run``'s second Ctrl-C, which follows the cancellation of the main task at the first);
    otherwise it is the tool's own exit (``sys.exit`` in the tool, argparse refusing its arguments).
    """
    if current is not None and current.cancelling():
        return True
    if isinstance(error, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        return True  # Python's SIGINT handler has no frame to recognise: a Ctrl-C is not swallowed
    handlers: set[Any] = set()
    for signum in signal.valid_signals():
        with contextlib.suppress(ValueError, OSError):
            handler = signal.getsignal(signum)
            while isinstance(handler, functools.partial):
                handler = handler.func
            code = getattr(getattr(handler, "__func__", handler), "__code__", None)
            if code is not None:
                handlers.add(code)
    frames = error.__traceback__
    while frames is not None:
        if frames.tb_frame.f_code in handlers:
            return True
        frames = frames.tb_next
    return False


async def _run_tool(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], waiter: asyncio.Future[None]
) -> tuple[bool, Any]:
    """The body of an async tool's task: ``(True, value)`` or ``(False, exception)``; resolves ``waiter``.

    Whatever the tool raises is its outcome, not the task's exception: a ``GeneratorExit`` it awaited (which
    the loop would throw into the outermost coroutine), its own ``sys.exit``. A cancellation of the task
    itself propagates; an exit a signal handler raised (the process stopping) is raised in the caller (or,
    with nobody waiting, out of the loop).
    """
    # (the failure is returned from its ``except``, never kept in a local: its traceback holds this frame,
    # and the cycle would keep the call's arguments until the garbage collector ran)
    try:
        value = await function(*args, **kwargs)
    except asyncio.CancelledError as error:
        _wake(waiter)
        if _cancelling():  # cancelled by its caller or its timeout
            raise
        return False, error  # a CancelledError of its own (it awaited something cancelled)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit) and _stops_the_process(error, None):
            if waiter.done():  # nobody waits for it (left running): out of the loop, as from any task
                raise
            waiter.set_exception(error)  # raised in the caller, as when the tool ran in the caller's task
        _wake(waiter)
        return False, error
    _wake(waiter)
    return True, value


async def _awaited(awaitable: Any) -> Any:
    """Await what a sync callable returned (a coroutine, any awaitable): a task runs only a coroutine."""
    return await awaitable


def _cancelling() -> bool:
    """Whether the running task is being cancelled (a request not yet taken back)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _wait_for_task(task: asyncio.Task[Any], seconds: float, loop: asyncio.AbstractEventLoop) -> bool:
    """Wait at most ``seconds`` for ``task`` to end, without cancelling it; whether it ended."""
    if task.done():
        return True
    waiter: asyncio.Future[None] = loop.create_future()

    def ended(_: object = None) -> None:
        _wake(waiter)

    task.add_done_callback(ended)
    timer = loop.call_later(seconds, ended)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(ended)
    return task.done()


def _seconds(value: float) -> str:
    """Seconds as a person writes them: ``0.05``, ``45``, ``3600`` (never ``3.6e+03``)."""
    return f"{value:.3g}" if value < 100 else str(math.ceil(value))


_GROUP_LISTED = 5  # an exception group's message names at most this many of its exceptions
_GROUP_DEPTH = 3  # ... in groups nested at most this deep


def _describe_error(error: BaseException, depth: int = 0) -> str:
    """``"Type: message"`` of an exception, or its type alone (no message, or one that cannot be printed).

    An exception group (a ``TaskGroup``'s) is followed by the exceptions it holds (the first few).
    """
    if isinstance(error, WorkerExit):  # a sync tool's SystemExit or KeyboardInterrupt: its message says so
        return str(error)
    kind = type(error).__name__
    try:
        text = str(error)
    except Exception as failure:  # a __str__ that raises must not turn a failed result into a crash
        return f"{kind} (its message cannot be shown: {type(failure).__name__})"
    described = f"{kind}: {text}" if text else kind
    if isinstance(error, BaseExceptionGroup) and depth < _GROUP_DEPTH:
        # a TaskGroup's "unhandled errors in a TaskGroup (2 sub-exceptions)" says nothing of what failed
        inner = error.exceptions
        parts = [_describe_error(item, depth + 1) for item in inner[:_GROUP_LISTED]]
        if len(inner) > _GROUP_LISTED:
            parts.append(f"and {len(inner) - _GROUP_LISTED} more")
        described += ": " + "; ".join(parts)
    return described


def _raw_id(raw: Mapping[str, Any]) -> str:
    if raw.get("type") == "function_call":  # a Responses API item: answered under its call_id
        return str(raw.get("call_id") or raw.get("id", ""))
    return str(raw.get("id", ""))


def _raw_name(raw: Mapping[str, Any]) -> str:
    function = raw.get("function")
    if isinstance(function, Mapping):
        return str(function.get("name", ""))
    return str(raw.get("name", ""))
