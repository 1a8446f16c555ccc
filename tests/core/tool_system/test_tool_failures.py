"""Ways a tool can fail that once escaped as crashes, hangs or leaks (found by probing the tool system)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import time
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.errors import ToolRegistrationError
from context_manager.core.tool_system import ToolErrorType, ToolManager, tool


def stopper(count: int) -> str:
    """Call next() on an empty iterator."""
    return str(next(iter([])))


async def test_a_sync_tool_raising_stop_iteration_fails_at_once() -> None:
    """A future cannot carry StopIteration: the call waited for its timeout and was called a timeout."""
    manager = ToolManager(ContextManagerConfig(max_tool_timeout=5.0))
    manager.register_function_tool("stopper", stopper, "Stops")
    started = time.monotonic()
    result = await manager.execute_tool("stopper", count=1)
    assert time.monotonic() - started < 2.0
    assert result.error_type is ToolErrorType.TOOL_ERROR
    assert result.error is not None and "StopIteration" in result.error


class Abort(BaseException):
    """A BaseException of the tool's own."""


async def test_a_tool_raising_cancelled_error_or_a_base_exception_is_a_failed_result() -> None:
    """A tool awaiting something cancelled raised CancelledError out of execute_tool (and so out of a whole
    execute_tool_calls); a BaseException subclass likewise."""

    async def awaits_a_cancelled_future(x: int) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.cancel()
        return await future

    async def aborts(x: int) -> int:
        raise Abort("stop")

    manager = ToolManager()
    manager.register_function_tool("awaits", awaits_a_cancelled_future, "Awaits")
    manager.register_function_tool("aborts", aborts, "Aborts")
    for name, kind in (("awaits", "CancelledError"), ("aborts", "Abort")):
        result = await manager.execute_tool(name, x=1)
        assert result.error_type is ToolErrorType.TOOL_ERROR and result.error is not None
        assert kind in result.error
    # a call that is itself cancelled still propagates
    started = asyncio.Event()

    async def hangs(x: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return x

    manager.register_function_tool("hangs", hangs, "Hangs")
    call = asyncio.create_task(manager.execute_tool("hangs", x=1))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def test_a_parameter_named_model_config_is_refused_at_registration() -> None:
    """pydantic took it as the arguments model's setting: the parameter vanished from the schema and the
    tool could never be called."""

    def apply(model_config: str) -> str:
        return model_config

    with pytest.raises(ToolRegistrationError, match="model_config"):
        ToolManager().register_function_tool("apply", apply, "Apply")


@tool(sensitive_arguments=["password"])
async def login(user: str, password: str) -> dict[str, str]:
    """Log in."""
    return {"user": user, "debug": f"authenticated with {password}"}


@tool(sensitive_arguments=["token"])
async def lookup(token: int) -> str:
    """Look up."""
    return "ok"


@tool(sensitive_arguments=["api_key"])
async def fetch(api_key: str) -> str:
    """Fetch."""
    raise PermissionError(f"key {api_key} rejected")


async def test_sensitive_arguments_stay_out_of_results_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = ToolManager()
    for definition in (login, lookup, fetch):
        manager.register_tool(definition)
    # (a) a JSON result quotes a secret with a quote or a backslash escaped
    password = 'se"cret\\pass-123'
    call = await manager.call_tool("login", {"user": "bob", "password": password}, call_id="c1")
    from context_manager.core.messages import ToolCall
    from context_manager.core.tool_system.window_calls import _full_text

    text = _full_text(manager, ToolCall("c1", "login", {"user": "bob", "password": password}), call)
    assert "cret" not in text and "[REDACTED]" in text
    # (b) a long secret cut short in a validation error
    secret = "sk-live-" + "A1b2C3d4" * 20
    invalid = await manager.execute_tool("lookup", token=secret)
    assert invalid.error_type is ToolErrorType.INVALID_ARGUMENTS and invalid.error is not None
    assert "A1b2C3d4" not in invalid.error
    # (c) the traceback of a failing tool at DEBUG quotes the exception's message
    with caplog.at_level(logging.DEBUG, logger="context_manager"):
        failed = await manager.execute_tool("fetch", api_key="sk-test-999999")
    assert failed.error is not None and "sk-test-999999" not in failed.error
    assert "sk-test-999999" not in caplog.text


async def test_a_result_with_keys_that_are_not_strings_is_a_failure() -> None:
    """JSON turned the keys into strings: {1: "a", "1": "b"} became {"1": "a", "1": "b"} in the window and
    the cached result read back differed from the first."""

    async def histogram(n: int) -> dict[Any, str]:
        return {"counts": {1: "a", "1": "b"}}  # type: ignore[dict-item]

    async def looped(n: int) -> list[Any]:
        items: list[Any] = [{"ok": "yes"}]
        items.append(items)
        return items

    manager = ToolManager()
    manager.register_function_tool("histogram", histogram, "Histogram", cacheable=True)
    manager.register_function_tool("looped", looped, "Looped")
    for _ in range(2):  # and nothing cached
        result = await manager.execute_tool("histogram", n=1)
        assert result.error_type is ToolErrorType.TOOL_ERROR and not result.cached
        assert result.error is not None and "dict key is int 1" in result.error
    result = await manager.execute_tool("looped", n=1)
    assert result.error_type is ToolErrorType.TOOL_ERROR  # a cycle: the encoder's error, no endless walk


async def test_a_result_keyed_by_string_subclasses_is_a_success() -> None:
    class Field(enum.StrEnum):
        NAME = "name"

    async def row(n: int) -> dict[Any, Any]:
        return {Field.NAME: "Ada", "rows": [{Field.NAME: "Bo"}]}

    manager = ToolManager()
    manager.register_function_tool("row", row, "Row")
    result = await manager.execute_tool("row", n=1)
    assert result.success and result.to_content() == '{"name": "Ada", "rows": [{"name": "Bo"}]}'


async def test_each_caller_has_a_cache_of_its_own() -> None:
    """The cache ignored caller_key: on a server with users (the MCP server passes the user as the caller
    key), one user got the result another user's call had cached."""
    runs: list[str] = []

    async def profile(field: str) -> str:
        runs.append(field)
        return f"value {len(runs)}"

    manager = ToolManager()
    manager.register_function_tool("profile", profile, "Profile", cacheable=True)
    alice = await manager.call_tool("profile", {"field": "email"}, caller_key="alice")
    again = await manager.call_tool("profile", {"field": "email"}, caller_key="alice")
    bob = await manager.call_tool("profile", {"field": "email"}, caller_key="bob")
    shared = await manager.call_tool("profile", {"field": "email"})
    assert (alice.result, alice.cached) == ("value 1", False)
    assert (again.result, again.cached) == ("value 1", True)
    assert (bob.result, bob.cached) == ("value 2", False)
    assert (shared.result, shared.cached) == ("value 3", False)
    assert len(runs) == 3


class Credentials(BaseModel):
    user: str
    password: Annotated[str, Field(min_length=12)]


@tool(sensitive_arguments=["credentials"])
async def sign_in(credentials: Credentials) -> str:
    """Sign in."""
    return "ok"


@tool(sensitive_arguments=["api_keys"])
async def rotate_keys(api_keys: list[Annotated[str, Field(pattern="^sk-live-")]]) -> str:
    """Rotate keys."""
    return "ok"


@tool(sensitive_arguments=["headers"], parameters_schema={"properties": {"headers": {"type": "object"}}})
async def send(parameters: dict[str, Any]) -> str:
    """Send."""
    return "ok"


async def test_a_sensitive_argument_failing_validation_in_a_nested_part_is_not_quoted() -> None:
    """Pydantic quotes the failing part (credentials.password), which a search for the whole value missed."""
    manager = ToolManager()
    for definition in (sign_in, rotate_keys, send):
        manager.register_tool(definition)
    login = await manager.call_tool("sign_in", {"credentials": {"user": "bob", "password": "hunter2-pw"}})
    assert login.error_type is ToolErrorType.INVALID_ARGUMENTS and login.error is not None
    assert "hunter2-pw" not in login.error
    assert "credentials.password: got [REDACTED]; expected String should have at least 12" in login.error
    rotate = await manager.call_tool("rotate_keys", {"api_keys": ["sk-live-aaaa", "sk-test-SECRET-42"]})
    assert (
        rotate.error is not None
        and "SECRET" not in rotate.error
        and "api_keys.1: got [REDACTED]" in rotate.error
    )
    sent = await manager.call_tool("send", {"headers": "Bearer tok_SECRET"})
    assert (
        sent.error is not None and "tok_SECRET" not in sent.error and "headers: got [REDACTED]" in sent.error
    )


async def test_a_tool_error_quoting_a_part_of_a_sensitive_argument_is_scrubbed() -> None:
    @tool(sensitive_arguments=["headers"])
    async def call_api(headers: dict[str, str]) -> str:
        raise PermissionError(f"token {headers['Authorization']} rejected")

    manager = ToolManager()
    manager.register_tool(call_api)
    result = await manager.call_tool("call_api", {"headers": {"Authorization": "Bearer tok_SECRET"}})
    assert result.error is not None and "tok_SECRET" not in result.error and "[REDACTED]" in result.error


async def test_a_nested_sensitive_value_stays_out_of_the_window(tmp_path: Path) -> None:
    async with EnhancedContextManager(ContextManagerConfig(cache_path=tmp_path)) as context:
        context.tool_manager.register_tool(sign_in)
        arguments = {"credentials": {"user": "bob", "password": "hunter2-pw"}}
        await context.execute_tool_calls([{"id": "call_1", "name": "sign_in", "arguments": arguments}])
        history = json.dumps(context.get_context(format="openai"))
    assert "hunter2-pw" not in history and "[REDACTED]" in history


async def test_a_malformed_declared_schema_is_refused_at_registration_and_breaks_nothing() -> None:
    """Accepted before: call_tool then raised AttributeError, get_tool_schemas() TypeError for every tool."""

    async def analyze(parameters: dict[str, Any]) -> int:
        return len(parameters)

    async def word_count(text: str) -> int:
        return len(text.split())

    manager = ToolManager()
    manager.register_function_tool("word_count", word_count, "Count words")
    bad_schemas: list[dict[str, Any]] = [
        {"type": "object", "properties": ["text"]},
        {"type": "object", "properties": {"tag": {"type": "string", "enum": {"a", "b"}}}},
    ]
    for schema in bad_schemas:
        with pytest.raises(ToolRegistrationError, match=r"^parameters_schema.*; allowed"):
            manager.register_function_tool("analyze", analyze, "Analyze", parameters_schema=schema)
    assert "analyze" not in manager
    assert [item["function"]["name"] for item in manager.get_tool_schemas("openai")] == ["word_count"]


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    street: str
    city: str


class Parcel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float


async def test_an_unknown_key_in_a_nested_object_names_that_objects_keys() -> None:
    """It said "allowed" with the tool's top-level arguments, whatever the depth."""

    async def ship(
        order_id: str,
        address: Address,
        stops: list[Address | None] = [],  # noqa: B006
        item: Address | Parcel | None = None,
    ) -> str:
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("ship", ship, "Ship")
    address = {"street": "Rua A", "city": "Lisbon"}
    nested = await manager.call_tool("ship", {"order_id": "1", "address": {**address, "zip": "1100"}})
    assert nested.error is not None and "address.zip: unexpected key; allowed street, city" in nested.error
    in_list = await manager.call_tool("ship", {"order_id": "1", "address": address, "stops": [{"zip": "1"}]})
    assert in_list.error is not None and "stops.0.zip: unexpected key; allowed street, city" in in_list.error
    top = await manager.call_tool("ship", {"order_id": "1", "address": address, "zip": "1"})
    assert (
        top.error is not None
        and "zip: unexpected argument; allowed order_id, address, stops, item" in top.error
    )
    # a union of models: which one was meant is unknown, so each names its keys
    union = await manager.call_tool("ship", {"order_id": "1", "address": address, "item": {"zip": "1"}})
    assert union.error is not None and "item.zip: unexpected key; allowed street, city;" in union.error
    assert "item.zip: unexpected key; allowed weight" in union.error
    assert "order_id" not in union.error.partition("item.zip")[2]


@dataclasses.dataclass
class Stop:
    street: str
    city: str = "Lisbon"


async def test_an_unknown_key_in_a_dataclass_argument_names_the_dataclass_fields() -> None:
    """Pydantic reports it as ``unexpected_keyword_argument``: the message read "stop.zip: got '1100';
    expected Unexpected keyword argument", quoting the value and naming nothing allowed."""

    async def deliver(stop: Stop, stops: list[Stop] | None = None) -> str:
        return "ok"

    manager = ToolManager()
    manager.register_function_tool("deliver", deliver, "Deliver")
    nested = await manager.call_tool("deliver", {"stop": {"street": "Rua A", "zip": "1100"}})
    assert (
        nested.error == "invalid arguments for tool 'deliver': stop.zip: unexpected key; allowed street, city"
    )
    in_list = await manager.call_tool(
        "deliver", {"stop": {"street": "A"}, "stops": [{"street": "B", "zip": 1}]}
    )
    assert in_list.error is not None and in_list.error.endswith(
        "stops.0.zip: unexpected key; allowed street, city"
    )


async def test_common_parameter_names_and_unwritable_defaults_register_without_warnings() -> None:
    """``schema``, ``json``, ``copy`` and ``dict`` are BaseModel attribute names: pydantic warned for each at
    registration, and under ``-W error`` (pytest's ``filterwarnings = ["error"]``) the tool was refused."""
    import warnings

    sentinel = object()

    async def run_query(
        schema: str, json: bool = False, copy: int = 1, dict: str = "d", hint: Any = sentinel
    ) -> str:
        return f"{schema} {json} {copy} {dict} {hint is sentinel}"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = ToolManager()
        manager.register_function_tool("run_query", run_query, "Run a query")
    properties = manager.get_tool_schemas("openai")[0]["function"]["parameters"]["properties"]
    assert list(properties) == ["schema", "json", "copy", "dict", "hint"]
    assert "default" not in properties["hint"]  # not JSON: left out of the schema
    result = await manager.execute_tool("run_query", schema="public", json=True)
    assert result.result == "public True 1 d True"


async def test_a_cacheable_tool_with_arguments_json_cannot_write_runs_uncached() -> None:
    """The cache key fell back to ``model_dump(mode="json")``, which raised for an object argument (a
    sentinel default, an object passed from Python): the exception escaped execute_tool."""
    missing = object()
    runs: list[str] = []

    async def describe(table: str, hint: Any = missing) -> str:
        runs.append(table)
        return f"{table}: {hint is missing}"

    manager = ToolManager()
    manager.register_function_tool("describe", describe, "Describe a table", cacheable=True)
    first = await manager.execute_tool("describe", table="orders")
    second = await manager.execute_tool("describe", table="orders", hint={1, 2})
    third = await manager.execute_tool("describe", table="orders", hint=["x"])
    fourth = await manager.execute_tool("describe", table="orders", hint=["x"])
    assert [r.result for r in (first, second, third, fourth)] == ["orders: True"] + ["orders: False"] * 3
    assert [r.cached for r in (first, second, third, fourth)] == [False, False, False, True]
    assert runs == ["orders"] * 3
    cycle: list[Any] = []
    cycle.append(cycle)
    assert (await manager.execute_tool("describe", table="orders", hint=cycle)).success


async def test_an_exception_that_cannot_be_printed_is_a_failed_result() -> None:
    """``str(error)`` of an exception whose ``__str__`` raises escaped execute_tool."""

    class ApiError(Exception):
        def __init__(self, response: Any) -> None:
            super().__init__()
            self.response = response

        def __str__(self) -> str:
            return f"status {self.response['status']}"  # the response is None: TypeError

    async def call_api(path: str) -> str:
        raise ApiError(None)

    manager = ToolManager()
    manager.register_function_tool("call_api", call_api, "Call the API", timeout=5)
    result = await manager.execute_tool("call_api", path="/orders")
    assert result.error_type == "tool_error"
    assert result.error == "tool 'call_api' raised ApiError (its message cannot be shown: TypeError)"


def test_a_sensitive_argument_that_is_not_a_parameter_is_refused_at_registration() -> None:
    """A misspelt name (``apikey`` for ``api_key``) was accepted and protected nothing: the key reached
    error messages, the window, memory and exports."""

    async def fetch(url: str, api_key: str) -> str:
        return url

    async def fetch_dict(parameters: dict[str, Any]) -> str:
        return "ok"

    manager = ToolManager()
    with pytest.raises(
        ToolRegistrationError, match=r"sensitive_arguments: got 'apikey'; allowed .*url, api_key"
    ):
        manager.register_function_tool("fetch", fetch, "Fetch", sensitive_arguments=["apikey"])
    closed = {"properties": {"token": {"type": "string"}}, "additionalProperties": False}
    with pytest.raises(ToolRegistrationError, match="sensitive_arguments: got 'secret'"):
        manager.register_function_tool(
            "fetch_dict", fetch_dict, "Fetch", parameters_schema=closed, sensitive_arguments=["secret"]
        )
    assert len(manager) == 0
    manager.register_function_tool("fetch", fetch, "Fetch", sensitive_arguments=["api_key"])
    # an open parameters dict may receive any key: any name is accepted
    manager.register_function_tool("fetch_dict", fetch_dict, "Fetch", sensitive_arguments=["secret"])
    assert len(manager) == 2


async def test_an_unknown_argument_is_answered_with_the_names_the_schema_shows() -> None:
    """With aliases (``from_`` shown as ``from``), the error listed the Python names: a model following it
    sent ``from_`` and was refused again."""

    async def route(
        from_: Annotated[str, Field(alias="from")], to: str, mode: str = Field("car", alias="type")
    ) -> str:
        return f"{from_}->{to} by {mode}"

    manager = ToolManager()
    manager.register_function_tool("route", route, "Plan a route")
    properties = manager.get_tool_schemas("openai")[0]["function"]["parameters"]["properties"]
    assert list(properties) == ["from", "to", "type"]
    wrong = await manager.call_tool("route", {"start": "Lisbon", "from": "Lisbon", "to": "Porto"})
    assert wrong.error == (
        "invalid arguments for tool 'route': start: unexpected argument; allowed from, to, type"
    )
    right = await manager.call_tool("route", {"from": "Lisbon", "to": "Porto", "type": "bus"})
    assert right.result == "Lisbon->Porto by bus"


async def test_a_sync_tool_exiting_fails_and_the_application_goes_on() -> None:
    """A sync tool wrapping a command line (argparse exits on bad arguments) raised SystemExit in its
    worker thread, and the manager raised it on the event loop: the whole application stopped. In a worker
    thread it can only be the tool's own exit, never the process being stopped."""
    import argparse

    def run_report(args: list[str]) -> str:
        """Run the report command line."""
        parser = argparse.ArgumentParser(prog="report")  # exits on bad arguments on every Python
        parser.add_argument("--days", type=int, required=True)
        return f"report for {parser.parse_args(args).days} days"

    def interrupted(x: int) -> int:
        raise KeyboardInterrupt

    manager = ToolManager()
    manager.register_function_tool("run_report", run_report, "Report")
    manager.register_function_tool("interrupted", interrupted, "Interrupted")
    bad = await manager.execute_tool("run_report", args=["--weeks", "3"])
    assert bad.error_type == "tool_error"
    assert bad.error == "tool 'run_report' raised SystemExit: 2 (it exited; the process goes on)"
    stopped = await manager.execute_tool("interrupted", x=1)
    assert stopped.error == "tool 'interrupted' raised KeyboardInterrupt (it exited; the process goes on)"
    assert (await manager.execute_tool("run_report", args=["--days", "3"])).result == "report for 3 days"


async def test_an_exception_group_names_the_errors_inside_it() -> None:
    """A tool using a TaskGroup fails with an ExceptionGroup, whose message is only "unhandled errors in a
    TaskGroup (2 sub-exceptions)": the model could not tell what went wrong."""

    async def fetch(url: str) -> str:
        raise ConnectionError(f"{url} unreachable")

    async def fetch_all(urls: list[str]) -> list[str]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(fetch(url)) for url in urls]
        return [task.result() for task in tasks]

    manager = ToolManager()
    manager.register_function_tool("fetch_all", fetch_all, "Fetch pages", sensitive_arguments=["urls"])
    result = await manager.execute_tool("fetch_all", urls=["https://a.example", "https://b.example"])
    assert result.error_type == "tool_error"
    assert result.error == (
        "tool 'fetch_all' raised ExceptionGroup: unhandled errors in a TaskGroup (2 sub-exceptions): "
        "ConnectionError: [REDACTED] unreachable; ConnectionError: [REDACTED] unreachable"
    )
    many = ExceptionGroup("batch failed", [ValueError(f"item {n}") for n in range(12)])

    async def batch() -> None:
        raise many

    manager.register_function_tool("batch", batch, "Batch")
    error = (await manager.execute_tool("batch")).error or ""
    assert error.startswith(
        "tool 'batch' raised ExceptionGroup: batch failed (12 sub-exceptions): ValueError: item 0;"
    )
    assert error.endswith("ValueError: item 4; and 7 more")


@pytest.mark.parametrize(
    "rows",
    [
        [{"id": 1}, {"id": 2, 3: "x"}],  # a flat row among flat rows
        [{"id": 1, "tags": ["a"]}, {"id": 2, "meta": {4: "x"}}],  # a nested dict in a row
        [[1, 2], [{"id": 1}, {5: "x"}]],  # rows inside lists
        ({"id": 1},) * 3 + ({6: "x"},),  # a tuple of rows
    ],
)
async def test_a_key_that_is_not_a_string_is_found_anywhere_in_large_results(rows: Any) -> None:
    """The key check walks every result on the event loop; rows (lists of flat dicts) are checked where
    they are found rather than one by one through the walk, and a bad key is still found in each."""
    many = [{"id": n, "name": f"customer {n}"} for n in range(1000)]

    async def query(n: int) -> list[Any]:
        return [*many, rows]

    manager = ToolManager()
    manager.register_function_tool("query", query, "Query")
    result = await manager.execute_tool("query", n=1)
    assert result.error_type is ToolErrorType.TOOL_ERROR
    assert result.error is not None and "a dict key is int" in result.error


async def test_an_async_tool_exiting_fails_like_a_sync_one_and_the_application_goes_on() -> None:
    """An async tool wrapping a command line (argparse exits on bad arguments) or calling sys.exit raised
    SystemExit out of execute_tool (and of a whole execute_tool_calls): the application stopped, where the
    same tool written sync gave a failed result. Both now give the same failed result; a signal handler
    stopping the process (and the call's own cancellation) still propagates."""
    import argparse
    import signal
    import sys

    async def run_report(args: list[str]) -> str:
        """Run the report command line."""
        parser = argparse.ArgumentParser(prog="report")  # exits on bad arguments on every Python
        parser.add_argument("--days", type=int, required=True)
        return f"report for {parser.parse_args(args).days} days"

    async def quits(code: int) -> None:
        sys.exit(code)

    async def interrupted(x: int) -> int:
        raise KeyboardInterrupt

    manager = ToolManager()
    manager.register_function_tool("run_report", run_report, "Report")
    manager.register_function_tool("quits", quits, "Quits")
    manager.register_function_tool("interrupted", interrupted, "Interrupted")
    bad = await manager.execute_tool("run_report", args=["--weeks", "3"])
    assert bad.error_type is ToolErrorType.TOOL_ERROR
    assert bad.error == "tool 'run_report' raised SystemExit: 2 (it exited; the process goes on)"
    results = await manager.execute_tool_calls(
        [
            {"id": "c1", "name": "quits", "arguments": {"code": 3}},
            {"id": "c2", "name": "interrupted", "arguments": {"x": 1}},
            {"id": "c3", "name": "run_report", "arguments": {"args": ["--days", "3"]}},
        ]
    )
    assert [result.error for result in results] == [
        "tool 'quits' raised SystemExit: 3 (it exited; the process goes on)",
        "tool 'interrupted' raised KeyboardInterrupt (it exited; the process goes on)",
        None,
    ]
    assert results[2].result == "report for 3 days"
    assert manager.get_tool_stats()["tools"]["quits"]["errors"] == {"tool_error": 1}

    # a SIGTERM handler calling sys.exit while a tool runs stops the process: that exit is not the tool's
    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    async def waits(x: int) -> int:
        await asyncio.sleep(0)
        signal.raise_signal(signal.SIGUSR1)
        return x

    manager.register_function_tool("waits", waits, "Waits")
    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        with pytest.raises(SystemExit):
            await manager.execute_tool("waits", x=1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


class Point(BaseModel):
    x: float
    y: float


async def test_a_wrong_json_value_is_described_in_json_terms() -> None:
    """A model sends JSON, but the failed result answered in Python's words: ``limit: got None; expected a
    valid integer``, ``got True``, ``got {'a': 1}; expected a valid list``, ``expected a valid dictionary
    or instance of Point`` (a class the model never saw). It now reads ``got null``, ``got true``,
    ``got {"a": 1}; expected an array``, ``expected an object``, for typed and parameters-dict tools."""

    async def plot(limit: int, scale: float, tags: list[str], where: Point, labels: dict[str, str]) -> str:
        return "plotted"

    async def filter_rows(parameters: dict[str, int]) -> str:
        return "filtered"

    async def pick(parameters: dict[str, Any]) -> str:
        return "picked"

    manager = ToolManager()
    manager.register_function_tool("plot", plot, "Plot")
    manager.register_function_tool("filter_rows", filter_rows, "Filter")
    schema = {"type": "object", "properties": {"mode": {"enum": ["fast", None, True]}}}
    manager.register_function_tool("pick", pick, "Pick", parameters_schema=schema)
    nulls = await manager.call_tool(
        "plot", {"limit": None, "scale": True, "tags": {"a": 1}, "where": None, "labels": ["x", None]}
    )
    assert nulls.error == (
        "invalid arguments for tool 'plot': limit: got null; expected a valid integer; "
        'tags: got {"a": 1}; expected an array; where: got null; expected an object; '
        'labels: got ["x", null]; expected an object; scale: got true; expected a valid number'
    )
    nested = await manager.call_tool(
        "plot", {"limit": 1, "scale": 1, "tags": ["a", None], "where": [1, 2], "labels": {"k": False}}
    )
    assert nested.error == (
        "invalid arguments for tool 'plot': tags.1: got null; expected a valid string; "
        "where: got [1, 2]; expected an object; labels.k: got false; expected a valid string"
    )
    light = await manager.call_tool("filter_rows", {"min": None, "max": False, "keep": {"a": [1]}})
    assert light.error == (
        "invalid arguments for tool 'filter_rows': min: got null; expected integer; "
        'max: got false; expected integer; keep: got {"a": [1]}; expected integer'
    )
    enum_refused = await manager.call_tool("pick", {"mode": False})
    assert enum_refused.error == (
        "invalid arguments for tool 'pick': mode: got false; expected one of 'fast', null, true"
    )


class Circle(BaseModel):
    kind: typing.Literal["circle"]
    radius: float


class Square(BaseModel):
    kind: typing.Literal["square"]
    side: float


async def test_an_argument_of_a_union_type_is_located_by_the_keys_the_model_sent() -> None:
    """Pydantic puts the union member that failed in an error's location: the model read
    ``shape.Circle.radius: missing`` and ``limit.int: got [1]``, paths through keys that do not exist (a
    model nests its next try under ``Circle``). The location is now the path in the arguments sent, and
    what the members expect of one value is said once: ``limit: got [1]; expected a valid integer or a
    valid string``. A discriminated union names its tags instead of pydantic's sentence."""

    async def draw(
        limit: int | str,
        shape: Circle | Square | None = None,
        layers: list[typing.Annotated[Circle | Square, Field(discriminator="kind")]] | None = None,
    ) -> str:
        return "drawn"

    manager = ToolManager()
    manager.register_function_tool("draw", draw, "Draw")
    both = await manager.call_tool("draw", {"limit": [1], "shape": {"kind": "circle", "side": 2}})
    assert both.error == (
        "invalid arguments for tool 'draw': limit: got [1]; expected a valid integer or a valid string; "
        "shape.radius: missing; a value is required; shape.kind: got 'circle'; expected 'square'"
    )
    tagged = await manager.call_tool(
        "draw", {"limit": 3, "layers": [{"kind": "square", "side": 1}, {"kind": "circle"}, {"kind": "oval"}]}
    )
    assert tagged.error == (
        "invalid arguments for tool 'draw': layers.1.radius: missing; a value is required; "
        """layers.2: got {"kind": "oval"}; expected an object whose 'kind' is one of 'circle', 'square'"""
    )
    assert (await manager.call_tool("draw", {"limit": "all", "shape": {"kind": "square", "side": 2}})).success


async def test_a_sensitive_argument_with_an_alias_is_redacted_under_either_name(tmp_path: Path) -> None:
    """A typed tool's argument with an alias arrives under the alias (``api-key``) but reaches the function
    under its name (``api_key``): a sensitive argument listed by its name was neither redacted in the
    window nor kept out of a validation error (the model's call holds the alias), and one listed by its
    alias was not cut out of the tool's own error (the function's arguments hold the name)."""

    async def fetch_report(
        report: str, api_key: Annotated[str, Field(alias="api-key", min_length=20)]
    ) -> str:
        raise PermissionError(f"key {api_key} rejected for {report}")

    for listed in ("api_key", "api-key"):
        async with EnhancedContextManager(ContextManagerConfig(cache_path=str(tmp_path / listed))) as manager:
            manager.tool_manager.register_function_tool(
                "fetch_report", fetch_report, "Fetch a report", sensitive_arguments=[listed]
            )
            short, valid = "sk-short-secret", "sk-live-0123456789abcdef"
            results = await manager.execute_tool_calls(
                [
                    {"id": "c1", "name": "fetch_report", "input": {"report": "q1", "api-key": short}},
                    {"id": "c2", "name": "fetch_report", "input": {"report": "q2", "api-key": valid}},
                ]
            )
            assert [result.error_type for result in results] == ["invalid_arguments", "tool_error"]
            assert "api-key: got [REDACTED]; expected" in (results[0].error or "")
            assert "key [REDACTED] rejected for q2" in (results[1].error or "")
            exported = json.dumps(manager.get_context())
            assert short not in exported and valid not in exported, listed
            assert manager.tool_manager.redact_arguments("fetch_report", {"api-key": valid}) == {
                "api-key": "[REDACTED]"
            }


class _DetachedSession:
    """An argument object whose ``str`` and ``repr`` raise (as SQLAlchemy's detached instances do)."""

    def __repr__(self) -> str:
        raise RuntimeError("instance is not bound to a session")

    __str__ = __repr__


async def test_a_sensitive_argument_that_cannot_be_printed_gives_a_failed_result_not_a_crash() -> None:
    """The scrubbing of a failed call's message printed each sensitive argument (``str``, ``repr``) to find
    it in the text: an object whose ``repr`` raises, passed by a Python caller, made ``call_tool`` raise
    that error instead of returning the failed result. Such a value cannot be in the message: it is
    skipped."""

    async def open_account(owner: str, session: str) -> str:
        return "opened"

    async def close_account(owner: str, session: Any) -> str:
        raise LookupError(f"no account for {owner}")

    manager = ToolManager()
    manager.register_function_tool("open_account", open_account, sensitive_arguments=["session"])
    manager.register_function_tool("close_account", close_account, sensitive_arguments=["session"])
    refused = await manager.call_tool("open_account", {"owner": "ada", "session": _DetachedSession()})
    assert refused.error_type is ToolErrorType.INVALID_ARGUMENTS
    assert refused.error == (
        "invalid arguments for tool 'open_account': session: got [REDACTED]; expected a valid string"
    )
    failed = await manager.call_tool("close_account", {"owner": "ada", "session": _DetachedSession()})
    assert failed.error_type is ToolErrorType.TOOL_ERROR
    assert failed.error == "tool 'close_account' raised LookupError: no account for ada"


async def test_a_sync_tool_raising_generator_exit_is_a_failed_result_not_a_crash() -> None:
    """A sync tool (or a sync approval callback) raising ``GeneratorExit`` in its thread: asyncio threw it
    into the waiting task's outermost coroutine, closing every coroutine in between, so the manager's
    handlers never saw it and ``execute_tool`` raised ``GeneratorExit`` to its caller. It is the tool's
    failure now, as ``StopIteration`` is."""

    def closes(text: str) -> str:
        raise GeneratorExit("closed")

    manager = ToolManager()
    manager.register_function_tool("closes", closes, "Raise GeneratorExit")
    result = await manager.execute_tool("closes", text="a")
    assert result.error_type is ToolErrorType.TOOL_ERROR
    assert result.error is not None and result.error.startswith("tool 'closes' raised RuntimeError: ")
    assert result.error.endswith("closes raised GeneratorExit")
    stats = manager.get_tool_stats()["tools"]["closes"]
    assert (stats["calls"], stats["failures"]) == (1, 1)
    assert manager.get_tool_stats()["threads"]["busy"] == 0


class _LyingList(list[int]):
    def __len__(self) -> int:
        raise RuntimeError("length unknown")


class _Unreadable(dict[str, Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("not iterable today")


class _FakeArray:
    """Looks like a numpy value to the encoder, whose ``tolist`` fails."""

    def tolist(self) -> Any:
        raise AttributeError("buffer released")


_FakeArray.__module__ = "numpy"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (_LyingList([1, 2]), "RuntimeError: length unknown"),
        ({"rows": _LyingList([1])}, "RuntimeError: length unknown"),
        (_Unreadable(a=1), "RuntimeError: not iterable today"),
        (_FakeArray(), "AttributeError: buffer released"),
    ],
)
async def test_a_result_whose_own_code_fails_while_it_is_encoded_is_a_failed_result(
    value: Any, problem: str
) -> None:
    """A result whose own methods raise while it is read (a list subclass's ``__len__``, a dict subclass's
    ``__iter__``, a numpy-like value's ``tolist``) made ``execute_tool`` raise that error: only
    ``TypeError``, ``ValueError`` and ``RecursionError`` of the encoding were turned into failed results."""

    def produce(name: str) -> Any:
        return value

    manager = ToolManager()
    manager.register_function_tool("produce", produce, "Return a value")
    result = await manager.execute_tool("produce", name="a")
    assert result.error_type is ToolErrorType.TOOL_ERROR and result.error is not None
    assert result.error.startswith(
        f"tool 'produce' returned a value that could not be read as JSON ({problem})"
    )
    assert manager.get_tool_stats()["tools"]["produce"]["failures"] == 1
