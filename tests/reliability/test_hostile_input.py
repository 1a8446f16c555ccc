"""Hostile input: every public entry point fuzzed with arbitrary values.

The promise: a call either works or raises a :class:`ContextManagerError` subclass; nothing else escapes,
and nothing is corrupted (the window stays within budget, the store still opens afterwards and the data
written before the attack is intact and searchable).

Values: text with NUL, lone surrogates, bidi controls and emoji; strings that look like paths
(``../../etc``), SQL and FTS5 query syntax; NaN, infinities and huge integers; deeply nested and
arbitrary JSON; objects that are not JSON at all. Entry points: ``add_message``, ``search_memory``,
``add_memory``, ``search_by_tags``, ``update_memory``, ``get_memory``/``delete_memory``, ``execute_tool``,
``execute_tool_calls``, ``import_memories`` (JSON bombs too), ``ContextManagerConfig``,
``count_tokens`` and the CLI. 10 MB strings and 100,000-level nesting are tried explicitly.

Examples per test: ``scaled(ci, full)`` (``RELIABILITY_FULL=1`` for the full run).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from context_manager import (
    ConfigurationError,
    ContextBudgetError,
    ContextManagerConfig,
    ContextManagerError,
    EnhancedContextManager,
    InvalidArgumentError,
    InvalidMemoryError,
    InvalidMessageError,
    Memory,
    MemoryManager,
    MemoryNotFoundError,
    ToolResult,
    count_tokens,
)
from context_manager.cli import app
from context_manager.core.text import encodable
from tests.reliability.conftest import scaled

cli_runner = CliRunner()
SENTINEL = "The sentinel memory: the vault code is kept in the blue binder"

HOSTILE_STRINGS = [
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "/etc/shadow",
    "'; DROP TABLE memories; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM memories_fts; --",
    "NEAR(vault binder, 2)",
    "vault* OR binder NOT blue",
    '"unterminated',
    "content:vault",
    "^vault",
    "{content tags}: vault",
    "AND",
    "OR",
    "NOT",
    "*",
    "(",
    ")",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\udc80y",
    "\u202eevil",
    "\ufeff",
    "🙂" * 8,
    "",
    " ",
    "\n\r\t",
    "%s%s%n",
    "{0.__class__}",
    "${HOME}",
]
_SURROGATES = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
TEXT = st.one_of(
    st.lists(st.one_of(st.characters(), _SURROGATES, st.sampled_from(HOSTILE_STRINGS)), max_size=12).map(
        "".join
    ),
    st.sampled_from(HOSTILE_STRINGS),
)
# built by map so hypothesis never has to repr a 5000-digit literal
HUGE_INTS = st.sampled_from([(2, 63), (-2, 63), (2, 64), (10, 400), (-10, 400), (10, 5000)]).map(
    lambda pair: pair[0] ** pair[1]
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), HUGE_INTS, st.sampled_from([0, -1, 1, 0.5])
)


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value nested ``depth`` levels deep (alternating dicts and lists), built without recursion."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


DEEP = st.integers(min_value=60, max_value=5000).map(nested)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)),
    max_leaves=16,
)
JUNK = st.sampled_from([b"bytes", bytearray(b"x"), {1, 2}, object(), 1j, Path("/etc/passwd"), print])
ANYTHING = st.one_of(JSON_VALUES, DEEP, JUNK, TEXT, NUMBERS)
EXAMPLES = scaled(40, 400)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def survive(call: Awaitable[Any]) -> Any:
    """Await ``call``; a ContextManagerError is an accepted outcome (returned), anything else escapes."""
    try:
        return await call
    except ContextManagerError as error:
        return error


def survive_sync(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ContextManagerError as error:
        return error


def check_search_outcome(found: Any, limit: Any) -> None:
    """A search refuses a bad query or limit, naming it, or returns ranked memories within the limit."""
    if isinstance(found, ContextManagerError):
        assert isinstance(found, InvalidMemoryError) and found.field in ("query", "limit"), found
        return
    assert isinstance(found, list) and all(isinstance(memory, Memory) for memory in found), found
    assert all(memory.user_id is None for memory in found)  # the default namespace only
    if isinstance(limit, int) and not isinstance(limit, bool):
        assert len(found) <= limit
    scores = [memory.score or 0.0 for memory in found]
    assert scores == sorted(scores, reverse=True)


def check_batch_outcome(outcome: Any, calls: Any, *, budget_may_refuse: bool = False) -> None:
    """A batch of tool calls is refused as a whole for malformed calls (or, in a window, a message that
    cannot fit), or gives one paired result per call, in call order."""
    if isinstance(outcome, ContextManagerError):
        allowed: tuple[type[Exception], ...] = (InvalidMessageError,)
        if budget_may_refuse:
            allowed += (ContextBudgetError,)
        assert isinstance(outcome, allowed), outcome
        return
    assert isinstance(outcome, list) and len(outcome) == len(calls), (outcome, calls)
    ids = [result.call_id for result in outcome]
    assert all(isinstance(call_id, str) and call_id for call_id in ids) and len(set(ids)) == len(ids)
    for result in outcome:
        assert isinstance(result, ToolResult)
        assert result.success or (result.error and result.error_type is not None)


FUZZED: Counter[str] = Counter()
"""Inputs tried per entry point in this session (printed as a FUZZ-FIGURES line for the full run)."""


@pytest.fixture(scope="module", autouse=True)
def _report_fuzzed() -> Iterator[None]:
    yield
    total = sum(FUZZED.values())
    parts = ", ".join(f"{name} {count}" for name, count in sorted(FUZZED.items()))
    print(f"\nFUZZ-FIGURES {total} generated inputs ({parts})")


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop_runner:
        yield loop_runner


def config_for(tmp_path: Path, **overrides: Any) -> ContextManagerConfig:
    values: dict[str, Any] = {
        "cache_path": tmp_path / "cache",
        "max_tokens": 600,
        "enable_health_checks": False,
        "short_term_memory_size": 20,
        "medium_term_memory_size": 40,
    }
    values.update(overrides)
    return ContextManagerConfig(**values)


async def assert_store_intact(config: ContextManagerConfig, sentinel_id: str, minimum: int = 1) -> None:
    """The store opens again, the sentinel is intact by id and by search, stats work."""
    async with MemoryManager(config) as memory:
        found = await memory.get_memory(sentinel_id)
        assert found is not None and found.content == SENTINEL
        hits = await memory.search_memory("vault code blue binder", limit=5)
        assert sentinel_id in [hit.id for hit in hits]
        stats = await memory.get_memory_stats()
        assert stats["total_memories"] >= minimum
        check = await memory.check_integrity()
        assert check.get("ok", True) is not False, check


# -- the context window ------------------------------------------------------------------------------


def test_add_message_and_search_memory_survive_anything(tmp_path: Path, runner: asyncio.Runner) -> None:
    config = config_for(tmp_path)
    manager = EnhancedContextManager(config)
    runner.run(manager.initialize())
    sentinel = runner.run(manager.memory_manager.add_memory(SENTINEL, importance=0.9))
    accepted = 0

    @FUZZ
    @given(
        role=st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), ANYTHING),
        content=st.one_of(TEXT, ANYTHING),
        options=st.fixed_dictionaries(
            {},
            optional={
                "priority": st.one_of(st.sampled_from(["low", "high", "critical"]), ANYTHING),
                "metadata": ANYTHING,
                "pinned": ANYTHING,
                "tool_calls": ANYTHING,
                "tool_call_id": ANYTHING,
            },
        ),
        query=ANYTHING,
        limit=st.one_of(st.integers(min_value=-5, max_value=50), NUMBERS, ANYTHING),
    )
    def attack(role: Any, content: Any, options: dict[str, Any], query: Any, limit: Any) -> None:
        nonlocal accepted
        FUZZED["add_message+search_memory"] += 1
        outcome = runner.run(survive(manager.add_message(role, content, **options)))
        accepted += outcome is True
        summary = manager.get_context_summary()
        assert summary["token_count"] <= config.max_tokens
        found = runner.run(survive(manager.search_memory(query, limit)))
        check_search_outcome(found, limit)
        manager.get_context(format="openai")
        manager.get_context(format="anthropic")

    try:
        attack()
    finally:
        runner.run(manager.cleanup())
    runner.run(assert_store_intact(config, sentinel.id))


# -- memory ------------------------------------------------------------------------------------------


def test_memory_entry_points_survive_anything(tmp_path: Path, runner: asyncio.Runner) -> None:
    config = config_for(tmp_path)
    memory = MemoryManager(config)
    runner.run(memory.initialize())
    sentinel = runner.run(memory.add_memory(SENTINEL, importance=0.9, tags=["sentinel"]))
    stored: dict[str, str] = {sentinel.id: SENTINEL}

    @FUZZ
    @given(
        content=st.one_of(TEXT, ANYTHING),
        importance=st.one_of(NUMBERS, ANYTHING),
        tags=st.one_of(st.lists(TEXT, max_size=4), ANYTHING),
        metadata=st.one_of(st.dictionaries(TEXT, JSON_VALUES, max_size=4), ANYTHING),
        user_id=st.one_of(st.none(), TEXT, ANYTHING),
        tier=st.one_of(st.none(), st.sampled_from(["short", "medium", "long"]), ANYTHING),
        query=st.one_of(TEXT, ANYTHING),
        limit=st.one_of(st.integers(min_value=-3, max_value=20), NUMBERS, ANYTHING),
        match=st.one_of(st.sampled_from(["any", "all"]), ANYTHING),
        target=st.one_of(st.none(), TEXT, ANYTHING),
    )
    def attack(
        content: Any,
        importance: Any,
        tags: Any,
        metadata: Any,
        user_id: Any,
        tier: Any,
        query: Any,
        limit: Any,
        match: Any,
        target: Any,
    ) -> None:
        FUZZED["memory API"] += 1
        added = runner.run(survive(memory.add_memory(content, importance, tags, metadata, user_id, tier)))
        if not isinstance(added, ContextManagerError):
            stored[added.id] = added.content
            again = runner.run(memory.get_memory(added.id))
            assert again is not None and again.content == content
        runner.run(survive(memory.search_memory(query, limit, tags=tags, user_id=user_id)))
        runner.run(survive(memory.search_by_tags(tags, match, limit, user_id=user_id)))
        # update / get / delete by an arbitrary id, never the sentinel
        runner.run(survive(memory.get_memory(target)))
        if not (isinstance(target, str) and target in stored):
            runner.run(survive(memory.update_memory(target, content=content, importance=importance)))
            runner.run(survive(memory.delete_memory(target)))
        elif target != sentinel.id:
            updated = runner.run(
                survive(memory.update_memory(target, content=content, tags=tags, metadata=metadata))
            )
            if not isinstance(updated, ContextManagerError):
                stored[target] = updated.content

    try:
        attack()
        for memory_id, content in list(stored.items())[-50:]:
            found = runner.run(memory.get_memory(memory_id))
            assert found is not None and found.content == content
    finally:
        runner.run(memory.close())
    runner.run(assert_store_intact(config, sentinel.id))


# -- tools -------------------------------------------------------------------------------------------


async def echo(parameters: dict[str, Any]) -> dict[str, Any]:
    return parameters


async def typed(count: int, label: str = "", options: dict[str, Any] | None = None) -> str:
    """A typed tool.

    Args:
        count: A number.
        label: A label.
        options: Anything.
    """
    return f"{label}:{count}"


def sync_echo(text: str) -> str:
    """A sync tool.

    Args:
        text: Echoed.
    """
    return text


CALL_SHAPES = st.one_of(
    st.fixed_dictionaries(
        {
            "id": st.one_of(TEXT, ANYTHING),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {
                    "name": st.one_of(st.sampled_from(["echo", "typed", "sync_echo"]), TEXT),
                    "arguments": st.one_of(
                        JSON_VALUES.map(lambda value: json.dumps(value, allow_nan=True)),
                        TEXT,
                        st.integers(min_value=2, max_value=200_000).map(lambda depth: "[" * depth),
                        st.sampled_from(['{"count": ' + "9" * 5000 + "}", '{"count": NaN}', "{" * 50_000]),
                        ANYTHING,
                    ),
                }
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": st.one_of(TEXT, ANYTHING),
            "name": st.one_of(st.sampled_from(["echo", "typed"]), TEXT),
            "input": ANYTHING,
        }
    ),
    ANYTHING,
)


def test_tool_entry_points_survive_anything(tmp_path: Path, runner: asyncio.Runner) -> None:
    config = config_for(tmp_path)
    manager = EnhancedContextManager(config)
    runner.run(manager.initialize())
    for function in (echo, typed, sync_echo):
        manager.tool_manager.register_function_tool(function.__name__, function)
    sentinel = runner.run(manager.memory_manager.add_memory(SENTINEL, importance=0.9))

    @FUZZ
    @given(
        name=st.one_of(st.sampled_from(["echo", "typed", "sync_echo"]), TEXT, ANYTHING),
        arguments=st.dictionaries(
            st.one_of(st.sampled_from(["count", "label", "options", "text", "parameters"]), TEXT),
            ANYTHING,
            max_size=4,
        ),
        calls=st.one_of(st.lists(CALL_SHAPES, max_size=4), ANYTHING),
    )
    def attack(name: Any, arguments: dict[str, Any], calls: Any) -> None:
        FUZZED["execute_tool+execute_tool_calls"] += 1
        # execute_tool never raises for tool-side problems: the outcome is always a ToolResult
        result = runner.run(manager.execute_tool(name, **arguments))
        assert isinstance(result, ToolResult)
        assert result.success or (result.error and result.error_type is not None)
        outcome = runner.run(survive(manager.tool_manager.execute_tool_calls(calls)))
        check_batch_outcome(outcome, calls)
        outcome = runner.run(survive(manager.execute_tool_calls(calls)))
        check_batch_outcome(outcome, calls, budget_may_refuse=True)
        assert manager.get_context_summary()["token_count"] <= config.max_tokens
        json.dumps(manager.tool_manager.get_tool_stats())

    try:
        attack()
    finally:
        runner.run(manager.cleanup())
    runner.run(assert_store_intact(config, sentinel.id))


# -- import_memories -----------------------------------------------------------------------------


MEMORY_FIELDS = st.fixed_dictionaries(
    {
        "id": st.one_of(st.uuids().map(lambda value: value.hex), TEXT, ANYTHING),
        "content": st.one_of(TEXT, ANYTHING),
    },
    optional={
        "importance": ANYTHING,
        "tags": ANYTHING,
        "metadata": ANYTHING,
        "user_id": ANYTHING,
        "tier": st.one_of(st.sampled_from(["short", "medium", "long"]), ANYTHING),
        "created_at": ANYTHING,
        "last_accessed": ANYTHING,
        "access_count": ANYTHING,
        "source": ANYTHING,
        "superseded_by": ANYTHING,
        "merged_from": ANYTHING,
    },
)


def _as_line(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        try:
            return repr(value)
        except (ValueError, RecursionError):  # a 5000-digit int, a 5000-level nesting
            return "<unrepresentable>"


def test_import_memories_survives_hostile_files(tmp_path: Path, runner: asyncio.Runner) -> None:
    config = config_for(tmp_path)
    memory = MemoryManager(config)
    runner.run(memory.initialize())
    sentinel = runner.run(memory.add_memory(SENTINEL, importance=0.9))
    source = tmp_path / "import.jsonl"

    @FUZZ
    @given(lines=st.lists(st.one_of(MEMORY_FIELDS.map(_as_line), TEXT, ANYTHING.map(_as_line)), max_size=5))
    def attack(lines: list[str]) -> None:
        FUZZED["import_memories"] += 1
        text = "\n".join(lines)
        try:
            source.write_text(text, encoding="utf-8", errors="surrogatepass")
        except ValueError:
            return
        before = runner.run(memory.get_memory_stats())["total_memories"]
        outcome = runner.run(survive(memory.import_memories(source)))
        after = runner.run(memory.get_memory_stats())["total_memories"]
        if isinstance(outcome, ContextManagerError):
            assert after == before, "a rejected import must change nothing"
        else:
            for imported in outcome.get("ids", []):
                assert runner.run(memory.get_memory(imported)) is not None
        assert runner.run(memory.get_memory(sentinel.id)) is not None

    try:
        attack()
    finally:
        runner.run(memory.close())
    runner.run(assert_store_intact(config, sentinel.id))


JSON_BOMBS = {
    "deep array": "[" * 100_000 + "]" * 100_000,
    "deep object": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "deep content": '{"id": "deep", "content": ' + "[" * 50_000 + "]" * 50_000 + "}",
    "deep metadata": '{"id": "deep2", "content": "x", "metadata": '
    + '{"a":' * 5_000
    + "1"
    + "}" * 5_000
    + "}",
    "huge integer": '{"id": "big", "content": "x", "created_at": ' + "9" * 6000 + "}",
    "infinite time": '{"id": "inf", "content": "x", "created_at": 1e400}',
    "nan importance": '{"id": "nan", "content": "x", "importance": NaN}',
    "non-string id": '{"id": 5, "content": "x"}',
    "list of tags as a string": '{"id": "t", "content": "x", "tags": "abc"}',
    "10 MB content": json.dumps({"id": "wide", "content": "word " * 2_000_000}),
    "many lines": "\n".join(json.dumps({"id": f"m{i}", "content": f"line {i}"}) for i in range(20_000))
    + "\n{broken",
}


@pytest.mark.parametrize("bomb", list(JSON_BOMBS))
def test_import_memories_json_bombs(bomb: str, tmp_path: Path, runner: asyncio.Runner) -> None:
    config = config_for(tmp_path)
    source = tmp_path / "bomb.jsonl"
    source.write_text(JSON_BOMBS[bomb] + "\n", encoding="utf-8")

    async def scenario() -> str:
        async with MemoryManager(config) as memory:
            sentinel = await memory.add_memory(SENTINEL, importance=0.9)
            before = (await memory.get_memory_stats())["total_memories"]
            outcome = await survive(memory.import_memories(source))
            after = (await memory.get_memory_stats())["total_memories"]
            if isinstance(outcome, ContextManagerError):
                assert after == before
            else:  # whatever was accepted must be sane: finite numbers, string ids, list tags
                exported = tmp_path / "out.jsonl"
                await memory.export_memories(exported)
                for line in exported.read_text(encoding="utf-8").splitlines():
                    data = json.loads(line)  # strict JSON: no NaN/Infinity written
                    assert isinstance(data["id"], str) and isinstance(data["tags"], list)
                    for key in ("created_at", "importance"):
                        assert math.isfinite(data[key])
            return sentinel.id

    sentinel_id = runner.run(scenario())
    runner.run(assert_store_intact(config, sentinel_id))


# -- explicit extremes: 10 MB strings and 100,000-level nesting ------------------------------------------

TEN_MB = "word " * 2_000_000
VERY_DEEP = nested(100_000)


def test_ten_megabyte_strings_and_deep_nesting_everywhere(tmp_path: Path, runner: asyncio.Runner) -> None:
    config = config_for(tmp_path, max_tokens=4000)

    async def scenario() -> str:
        async with EnhancedContextManager(config) as manager:
            manager.tool_manager.register_function_tool("echo", echo)
            manager.tool_manager.register_function_tool("typed", typed)
            memory = manager.memory_manager
            sentinel = await memory.add_memory(SENTINEL, importance=0.9)
            attempts: list[Awaitable[Any]] = [
                manager.add_message("user", TEN_MB),
                manager.add_message("user", "x", metadata={"deep": VERY_DEEP}),
                manager.add_message("user", "x", metadata={"big": 10**5000}),
                manager.add_message("user", "x", metadata={"\ud800": 1}),
                manager.add_message("user", "x", metadata={"k": "\udfff"}),
                manager.add_message(
                    "assistant", "", tool_calls=[{"id": "c0", "name": "echo", "arguments": VERY_DEEP}]
                ),
                manager.search_memory(TEN_MB),
                manager.search_memory("x", limit=10**100),
                memory.search_memory("x", limit=2**63),
                memory.add_memory(TEN_MB),
                memory.add_memory("x", metadata={"deep": VERY_DEEP}),
                memory.add_memory("x", metadata={"deep": nested(1500)}),
                memory.add_memory("x", tags=[TEN_MB]),
                memory.search_by_tags([TEN_MB]),
                memory.update_memory("\ud800", content="x"),
                memory.get_memory("x\udc80"),
                memory.delete_memory("\udfff"),
                memory.import_memories("a\x00b"),
                memory.import_memories("a\ud800b"),
                memory.export_memories("a\x00b"),
                memory.export_memories("a\udfffb"),
            ]
            for attempt in attempts:
                await survive(attempt)
            for name, arguments in [
                ("echo", {"deep": VERY_DEEP}),
                ("echo", {"deep": nested(1500)}),
                ("echo", {"text": TEN_MB}),
                ("typed", {"count": 10**5000}),
                ("echo", {"\ud800": "\udfff"}),
            ]:
                result = await manager.execute_tool(name, **arguments)
                assert isinstance(result, ToolResult)
            for calls in [
                [{"id": "c1", "name": "echo", "arguments": VERY_DEEP}],
                [{"id": "c2", "type": "function", "function": {"name": "echo", "arguments": "[" * 200_000}}],
                [
                    {
                        "id": "c3",
                        "type": "function",
                        "function": {"name": "typed", "arguments": '{"count": ' + "9" * 5000 + "}"},
                    }
                ],
                [{"id": "c4\ud800", "name": "echo", "arguments": {"a": "\udfff"}}],
                [{"id": "c5", "name": "echo", "arguments": {"text": TEN_MB}}],
            ]:
                await survive(manager.execute_tool_calls(calls))
                await survive(manager.tool_manager.execute_tool_calls(calls))
            assert manager.get_context_summary()["token_count"] <= config.max_tokens
            json.dumps(manager.get_context(format="openai"))
            return sentinel.id

    sentinel_id = runner.run(scenario())
    runner.run(assert_store_intact(config, sentinel_id))


# -- regressions: each defect the fuzzing found, pinned to the input that found it ------------------------

BOMB_ARGUMENTS = "[" * 200_000
BIG_INT_JSON = '{"count": ' + "9" * 5000 + "}"
REGRESSIONS: dict[str, tuple[Callable[[EnhancedContextManager], Awaitable[Any]], type[Exception]]] = {
    # messages.py: provider arguments that are a JSON bomb or hold a 5000-digit number
    "tool call arguments JSON bomb": (
        lambda m: m.execute_tool_calls(
            [{"id": "c", "type": "function", "function": {"name": "echo", "arguments": BOMB_ARGUMENTS}}]
        ),
        list,  # a failed invalid_arguments result, paired in the window
    ),
    "tool call arguments huge integer": (
        lambda m: m.tool_manager.execute_tool_calls(
            [{"id": "c", "type": "function", "function": {"name": "echo", "arguments": BIG_INT_JSON}}]
        ),
        list,
    ),
    # messages.py: accepted, then failed when the message was evicted to memory / counted
    "message metadata huge integer": (
        lambda m: m.add_message("user", "x", metadata={"n": 10**5000}),
        InvalidMessageError,
    ),
    "message metadata surrogate key": (
        lambda m: m.add_message("user", "x", metadata={"\ud800": 1}),
        InvalidMessageError,
    ),
    "tool call surrogate id": (
        lambda m: m.execute_tool_calls([{"id": "c\ud800", "name": "echo", "arguments": {}}]),
        InvalidMessageError,
    ),
    "tool call surrogate argument": (  # that call's failure only: the others of its batch still run
        lambda m: m.execute_tool_calls([{"id": "c", "name": "echo", "arguments": {"a": "\udfff"}}]),
        list,
    ),
    # memory validation: huge limits, deep metadata, paths with NUL or surrogates
    "search limit beyond SQLite": (lambda m: m.memory_manager.search_memory("x", limit=10**100), type(None)),
    "memory metadata nested 1500 levels": (
        lambda m: m.memory_manager.add_memory("x", metadata={"deep": nested(1500)}),
        InvalidMemoryError,
    ),
    "tag nested too deeply to print": (
        lambda m: m.memory_manager.search_by_tags([nested(5000)]),
        InvalidMemoryError,
    ),
    "update_memory surrogate id": (
        lambda m: m.memory_manager.update_memory("\ud800", content="x"),
        MemoryNotFoundError,
    ),
    "delete_memory surrogate id": (lambda m: m.memory_manager.delete_memory("x\udc80"), MemoryNotFoundError),
    "import path with NUL": (lambda m: m.memory_manager.import_memories("a\x00b"), InvalidMemoryError),
    "export path with surrogate": (
        lambda m: m.memory_manager.export_memories("a\ud800b"),
        InvalidMemoryError,
    ),
}


async def _echo_deep(parameters: dict[str, Any]) -> Any:
    return VERY_DEEP  # deeper than the JSON encoder's stack on every Python (3.13's takes 1,500 levels)


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_regressions_found_by_fuzzing(case: str, tmp_path: Path, runner: asyncio.Runner) -> None:
    call, expected = REGRESSIONS[case]

    async def scenario() -> None:
        async with EnhancedContextManager(config_for(tmp_path)) as manager:
            manager.tool_manager.register_function_tool("echo", echo)
            if expected is type(None):
                await call(manager)  # works
            elif expected is list:
                results = await call(manager)
                assert [result.error_type.value for result in results] == ["invalid_arguments"]
            else:
                with pytest.raises(expected):
                    await call(manager)
            assert manager.get_context_summary()["token_count"] <= 600

    runner.run(scenario())


def test_regressions_in_tools_config_and_tokens(tmp_path: Path, runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        async with EnhancedContextManager(config_for(tmp_path)) as manager:
            tools = manager.tool_manager
            tools.register_function_tool("deep", _echo_deep)
            tools.register_function_tool("cached_echo", echo, cacheable=True)
            # a result nested deeper than the JSON encoder's stack is a failed result, not a RecursionError
            result = await manager.execute_tool("deep")
            assert not result.success and result.error_type is not None
            # deeply nested arguments to a cacheable tool: not cached, not a RecursionError
            result = await manager.execute_tool("cached_echo", deep=nested(1500))
            assert isinstance(result, ToolResult)
            # a tool name that is not a str (unhashable, or too big to print) is an unknown tool
            for name in ({"a": 1}, 10**5000):
                result = await tools.call_tool(name)  # type: ignore[arg-type]
                assert not result.success and result.error_type is not None
                assert result.error_type.value == "unknown_tool"

    runner.run(scenario())
    with pytest.raises(ConfigurationError):
        ContextManagerConfig(cache_path="cache\x00dir")
    with pytest.raises(ConfigurationError):
        ContextManagerConfig(storage_path="store\ud800")
    for text in (b"bytes", None, "x\ud800"):
        with pytest.raises(InvalidArgumentError):
            count_tokens(text)  # type: ignore[arg-type]
    # the CLI turns a path it cannot encode into one line on stderr, not a traceback
    for path in ("notes\ud800.txt", "notes\x00.txt"):
        result = cli_runner.invoke(app, ["tokens", path])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "line",
    [
        '{"id": "inf", "content": "x", "created_at": 1e400}',
        '{"id": "big", "content": "x", "last_accessed": ' + "9" * 400 + "}",
        '{"id": 5, "content": "x"}',
        '{"id": "t", "content": "x", "tags": "abc"}',
        '{"id": "s", "content": "x", "superseded_by": {"a": 1}}',
        '{"id": "a", "content": "x", "access_count": 1e400}',
        "[" * 100_000,
    ],
)
def test_import_rejects_what_it_cannot_store_faithfully(
    line: str, tmp_path: Path, runner: asyncio.Runner
) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(line + "\n", encoding="utf-8")

    async def scenario() -> None:
        async with MemoryManager(config_for(tmp_path)) as memory:
            with pytest.raises(InvalidMemoryError, match="one.jsonl:1"):
                await memory.import_memories(source)
            assert (await memory.get_memory_stats())["total_memories"] == 0

    runner.run(scenario())


# -- configuration and count_tokens ----------------------------------------------------------------------

OPTIONS = sorted(ContextManagerConfig.model_fields)


@FUZZ
@given(
    values=st.dictionaries(st.one_of(st.sampled_from(OPTIONS), TEXT), st.one_of(ANYTHING, TEXT), max_size=4)
)
def test_config_construction_survives_anything(values: dict[str, Any]) -> None:
    FUZZED["ContextManagerConfig"] += 1
    config = survive_sync(lambda: ContextManagerConfig(**values))
    if isinstance(config, ContextManagerConfig):
        # an accepted path must be usable as a path (no NUL, encodable)
        for path in (config.cache_path, config.resolved_storage_path):
            str(path).encode("utf-8")
            assert "\x00" not in str(path)


@FUZZ
@given(
    text=st.one_of(TEXT, ANYTHING), encoding=st.one_of(st.sampled_from(["o200k_base", "cl100k_base"]), TEXT)
)
def test_count_tokens_survives_anything(text: Any, encoding: Any) -> None:
    FUZZED["count_tokens"] += 1
    count = survive_sync(lambda: count_tokens(text, encoding))
    if isinstance(count, ContextManagerError):
        # refused only for what cannot be counted, naming it: an unknown encoding; not a string or lone
        # surrogates
        if isinstance(count, ConfigurationError):
            assert count.field == "token_encoding" and encoding not in ("o200k_base", "cl100k_base"), count
        else:
            assert isinstance(count, InvalidArgumentError) and count.field == "text", count
            assert not (isinstance(text, str) and encodable(text)), count
    else:
        # every token covers at least one byte of UTF-8, and text has at least one token
        assert isinstance(count, int) and not isinstance(count, bool)
        assert (count >= 1) == (text != "") and count <= len(text.encode("utf-8"))


# -- the CLI --------------------------------------------------------------------------------------------

cli_runner = CliRunner()


@settings(
    max_examples=scaled(8, 150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=TEXT.filter(lambda text: not text.startswith("-")),
    tag=TEXT.filter(lambda text: not text.startswith("-")),
    user=TEXT.filter(lambda text: not text.startswith("-")),
    number=st.one_of(st.sampled_from(["nan", "inf", "-1", "1e400", "9" * 5000, "0.5"]), TEXT),
)
def test_cli_survives_anything(tmp_path: Path, content: str, tag: str, user: str, number: str) -> None:
    FUZZED["CLI"] += 1
    store = str(tmp_path / "cli-store")
    invocations = [
        ["--storage", store, "memory", "add", content, "--tag", tag, "--user", user, "--importance", number],
        ["--storage", store, "--json", "memory", "add", content, "--tag", tag],
        ["--storage", store, "memory", "search", content, "--tag", tag, "--user", user],
        ["--storage", store, "--json", "memory", "search", content, "--limit", number],
        ["--storage", store, "memory", "import", content or "missing"],
        ["--storage", store, "memory", "export", str(tmp_path / "export.jsonl"), "--user", user],
        ["--storage", store, "memory", "cleanup", "--max-age-days", number],
        ["--storage", content or "x", "memory", "stats"],
        ["tokens", "-"],
        ["tokens", content or "missing"],
    ]
    for arguments in invocations:
        # stdin carries bytes: a lone surrogate becomes invalid UTF-8, as it would from a real pipe
        result = cli_runner.invoke(app, arguments, input=content.encode("utf-8", "surrogatepass"))
        assert result.exit_code in (0, 1, 2), (arguments, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            arguments,
            repr(result.exception),
        )
        assert "Traceback" not in result.output
