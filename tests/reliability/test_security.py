"""Security review, as tests.

1. Store files and directories are private to their owner (0600 / 0700), whatever the umask.
2. No ``pickle``/``marshal``/``shelve``, ``eval``/``exec``/``compile``, ``os.system``/``os.popen`` or
   ``subprocess`` with ``shell=True`` anywhere in the package (an AST scan of ``src/``); the only
   subprocess is the CLI's ``examples`` command, with an argument list.
3. Tool permission checks cannot be bypassed: not through ``execute_tool_calls`` (OpenAI, Anthropic or
   ``ToolCall`` shapes, on the ToolManager or the EnhancedContextManager), not with look-alike names, not
   with an approval callback that returns something truthy that is not ``True``, raises, or mutates the
   arguments it is shown; and the CLI has no command that runs tools.
4. Rate limits are exact under concurrency (async tools, sync tools in threads, per caller key, batches).
5. Message and tool payloads never reach a log record at INFO or above.
6. Secrets in tool arguments can be redacted from the history (window, memory, errors) and stats.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from context_manager import (
    ContextManagerConfig,
    ContextManagerError,
    EnhancedContextManager,
    PermissionPolicy,
    ToolCall,
    ToolManager,
    ToolPermission,
    tool,
)
from context_manager.cli import app
from context_manager.core.tool_system.rate_limit import SlidingWindowRateLimiter

SOURCE = Path(__file__).resolve().parents[2] / "src" / "context_manager"
SECRET = "SECRET-7f3a9c-DO-NOT-LOG"


def config_for(tmp_path: Path, **overrides: Any) -> ContextManagerConfig:
    values: dict[str, Any] = {
        "cache_path": tmp_path / "cache",
        "max_tokens": 400,
        "enable_health_checks": False,
        "short_term_memory_size": 5,
        "medium_term_memory_size": 5,
    }
    values.update(overrides)
    return ContextManagerConfig(**values)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop_runner:
        yield loop_runner


# -- 1. private files -------------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 000, so only explicit modes keep files private."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def assert_private(root: Path) -> list[str]:
    """Every directory under ``root`` is 0700 and every file 0600 or stricter; return what was checked."""
    checked = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:o}: readable by group or others"
        if path.is_dir():
            assert mode == 0o700, f"{path} is mode {mode:o}"
        checked.append(path.name)
    return checked


def test_store_files_and_directories_are_private(
    tmp_path: Path, runner: asyncio.Runner, open_umask: None
) -> None:
    cache = tmp_path / "deep" / "cache"
    config = config_for(tmp_path, cache_path=cache, max_tokens=200)

    async def scenario() -> None:
        async with EnhancedContextManager(config) as manager:
            memory = manager.memory_manager
            await memory.add_memory("a short-term memory")
            await memory.add_memory("a long-term memory", importance=0.95)
            await memory.add_memories([{"content": f"batch {i}"} for i in range(30)])  # overflow: tiers move
            for index in range(40):  # compression evicts to memory
                await manager.add_message("user", f"message {index} about the deployment pipeline")
            checked = assert_private(tmp_path / "deep")  # while open: WAL and SHM files too
            assert {"memories.jsonl", "memories.sqlite3", ".lock"} <= set(checked), checked
            assert any(name.endswith("-wal") for name in checked), checked
            await manager.optimize_system()  # log compaction writes a new file
            await memory.export_memories(tmp_path / "deep" / "export.jsonl")
            assert_private(tmp_path / "deep")

    runner.run(scenario())
    assert_private(tmp_path / "deep")
    export = tmp_path / "deep" / "export.jsonl"
    assert stat.S_IMODE(export.stat().st_mode) == 0o600


def test_cli_created_store_is_private(tmp_path: Path, open_umask: None) -> None:
    store = tmp_path / "a" / "b" / "store"
    result = CliRunner().invoke(app, ["--storage", str(store), "memory", "add", "from the command line"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        app, ["--storage", str(store), "memory", "export", str(tmp_path / "out.jsonl")]
    )
    assert result.exit_code == 0, result.output
    assert_private(tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o600


# -- 2. no pickle, eval, exec or shell ---------------------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRIBUTES = {
    ("os", "system"),
    ("os", "popen"),
    ("os", "execv"),
    ("os", "execve"),
    ("os", "execvp"),
    ("os", "spawnv"),
    ("os", "spawnl"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
}
SUBPROCESS_ALLOWED_IN = {"cli.py"}


def source_files() -> list[Path]:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20, "the scan must see the package"
    return files


def test_source_has_no_pickle_eval_exec_or_shell() -> None:
    problems: list[str] = []
    subprocess_users: set[str] = set()
    for path in source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = str(path.relative_to(SOURCE))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names]
                module = node.module if isinstance(node, ast.ImportFrom) else None
                for name in [*(names if module is None else []), *([module] if module else [])]:
                    root = name.split(".")[0]
                    if root in FORBIDDEN_MODULES:
                        problems.append(f"{where}:{node.lineno} imports {name}")
                    if root == "subprocess":
                        subprocess_users.add(path.name)
            if isinstance(node, ast.Call):
                function = node.func
                if isinstance(function, ast.Name) and function.id in FORBIDDEN_CALLS:
                    problems.append(f"{where}:{node.lineno} calls {function.id}()")
                if (
                    isinstance(function, ast.Attribute)
                    and isinstance(function.value, ast.Name)
                    and (function.value.id, function.attr) in FORBIDDEN_ATTRIBUTES
                ):
                    problems.append(f"{where}:{node.lineno} calls {function.value.id}.{function.attr}()")
                for keyword in node.keywords:
                    if keyword.arg == "shell" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                    ):
                        problems.append(f"{where}:{node.lineno} passes shell=... to a call")
    assert problems == []
    assert subprocess_users <= SUBPROCESS_ALLOWED_IN, subprocess_users


def test_the_scan_catches_what_it_forbids(tmp_path: Path) -> None:
    """The scan above is able to fail: run its checks on a file that breaks every rule."""
    bad = "import pickle\nimport subprocess\neval('1')\nsubprocess.run('ls', shell=True)\nos.system('ls')\n"
    tree = ast.parse(bad)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert any(isinstance(c.func, ast.Name) and c.func.id in FORBIDDEN_CALLS for c in calls)
    assert any(k.arg == "shell" for c in calls for k in c.keywords)
    assert any(
        isinstance(c.func, ast.Attribute)
        and isinstance(c.func.value, ast.Name)
        and (c.func.value.id, c.func.attr) in FORBIDDEN_ATTRIBUTES
        for c in calls
    )


# -- 3. permissions cannot be bypassed ---------------------------------------------------------------------


class Ran:
    """Counts the calls of the guarded tools."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []


def guarded_tools(manager: ToolManager, ran: Ran) -> None:
    async def restricted(path: str) -> str:
        """Read a private file.

        Args:
            path: Which file.
        """
        ran.calls.append(("restricted", {"path": path}))
        return "contents"

    async def dangerous(command: str) -> str:
        """Run a command.

        Args:
            command: The command.
        """
        ran.calls.append(("dangerous", {"command": command}))
        return "done"

    async def banned(parameters: dict[str, Any]) -> str:
        ran.calls.append(("banned", dict(parameters)))
        return "done"

    manager.register_function_tool("restricted", restricted, permission=ToolPermission.RESTRICTED)
    manager.register_function_tool("dangerous", dangerous, permission=ToolPermission.DANGEROUS)
    manager.register_function_tool("banned", banned, permission=ToolPermission.PUBLIC)


def call_shapes(name: str, arguments: dict[str, Any], call_id: str) -> list[Any]:
    return [
        {
            "id": call_id + "o",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        },
        {"type": "tool_use", "id": call_id + "a", "name": name, "input": arguments},
        ToolCall(id=call_id + "t", name=name, arguments=arguments),
        {"id": call_id + "p", "name": name, "arguments": arguments},
    ]


def test_permissions_hold_through_every_entry_point(tmp_path: Path, runner: asyncio.Runner) -> None:
    ran = Ran()
    approvals: list[Any] = []

    async def approve_everything(definition: Any, arguments: dict[str, Any]) -> Any:
        approvals.append(definition.name)
        return "yes"  # truthy, but not True: must not approve

    async def scenario() -> None:
        async with EnhancedContextManager(config_for(tmp_path, max_tokens=4000)) as manager:
            tools = manager.tool_manager
            tools.permission_policy = PermissionPolicy(always_deny=frozenset({"banned"}))
            tools.approval_callback = approve_everything
            guarded_tools(tools, ran)
            attempts = [
                ("restricted", {"path": "/etc/shadow"}),
                ("dangerous", {"command": "rm -rf /"}),
                ("banned", {}),
            ]
            for index, (name, arguments) in enumerate(attempts):
                result = await manager.execute_tool(name, **arguments)
                assert result.error_type is not None and result.error_type.value == "permission_denied"
                result = await tools.call_tool(name, arguments, caller_key="someone")
                assert result.error_type is not None and result.error_type.value == "permission_denied"
                shapes = call_shapes(name, arguments, f"c{index}")
                for results in (
                    await tools.execute_tool_calls(shapes),
                    await manager.execute_tool_calls(shapes),
                ):
                    assert [r.error_type.value for r in results if r.error_type] == ["permission_denied"] * 4
            # look-alike names do not reach the guarded tools
            for name in (
                "Restricted",
                "restricted ",
                " dangerous",
                "dangerous\x00",
                "danger\u200bous",
                "ｄangerous",
            ):
                result = await tools.call_tool(name, {"command": "x"})
                assert result.error_type is not None and result.error_type.value == "unknown_tool"
            assert ran.calls == []
            assert "banned" not in approvals, "always_deny is decided before any approval callback"
            # the window holds one paired, failed result per call: nothing ran
            tool_messages = [m for m in manager.messages if m.role.value == "tool"]
            assert tool_messages and all(
                m.metadata["error_type"] == "permission_denied" for m in tool_messages
            )

    runner.run(scenario())


def test_approval_sees_a_copy_and_only_true_approves(runner: asyncio.Runner) -> None:
    ran = Ran()
    answers: list[Any] = [1, "True", object(), None, False]

    def callback(definition: Any, arguments: dict[str, Any]) -> Any:
        arguments["command"] = "rm -rf /"  # tries to change what will run
        if answers:
            return answers.pop(0)
        raise RuntimeError("approval service down")

    async def scenario() -> None:
        tools = ToolManager(approval_callback=callback)
        guarded_tools(tools, ran)
        for _ in range(6):
            result = await tools.execute("dangerous", command="ls")
            assert result.error_type is not None and result.error_type.value == "permission_denied"
        assert ran.calls == []
        tools.approval_callback = lambda definition, arguments: arguments.update(command="rm -rf /") or True
        result = await tools.execute("dangerous", command="ls")
        assert result.success
        assert ran.calls == [("dangerous", {"command": "ls"})], (
            "the callback's changes must not reach the tool"
        )

    runner.run(scenario())


def test_the_cli_has_no_command_that_runs_tools() -> None:
    import typer.main

    command = typer.main.get_command(app)
    names: set[str] = set()

    def walk(group: Any, prefix: str) -> None:
        for name, sub in getattr(group, "commands", {}).items():
            names.add(prefix + name)
            walk(sub, prefix + name + " ")

    walk(command, "")
    assert names == {
        "tokens",
        "memory",
        "memory add",
        "memory search",
        "memory stats",
        "memory export",
        "memory import",
        "memory consolidate",
        "memory cleanup",
        "memory migrate",  # copies memories between storages; runs no tool
        "memory delete",  # deletes memories by id (delete_memory); runs no tool
        "health",
        "examples",
        # reviewed: read and delete persisted conversations through the conversation store (the same
        # ownership rules as delete_conversation with --user); replaying a record runs no tool
        "conversations",
        "conversations list",
        "conversations show",
        "conversations delete",
        # reviewed: runs the application's tools only through its ToolManager (policy, approval callback,
        # rate limits per server user, timeouts); the module comes from the operator's command line, never
        # from a client; HTTP only on 127.0.0.1 with the SDK's DNS-rebinding checks (test_mcp_server.py)
        "mcp",
        "mcp serve",
    }, "a new CLI command must be reviewed for the permission model"
    source = (SOURCE / "cli.py").read_text(encoding="utf-8")
    assert "ToolManager" not in source and "execute_tool" not in source and "call_tool" not in source


def test_cli_searches_stay_in_their_user_namespace(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    cli = CliRunner()
    assert (
        cli.invoke(
            app, ["--storage", store, "memory", "add", "alice's vault code", "--user", "alice"]
        ).exit_code
        == 0
    )
    assert (
        cli.invoke(app, ["--storage", store, "memory", "add", "bob's vault code", "--user", "bob"]).exit_code
        == 0
    )
    found = cli.invoke(app, ["--storage", store, "--json", "memory", "search", "vault code", "--user", "bob"])
    assert found.exit_code == 0
    assert [row["content"] for row in json.loads(found.stdout)] == ["bob's vault code"]
    shared = cli.invoke(app, ["--storage", store, "--json", "memory", "search", "vault code"])
    assert json.loads(shared.stdout) == []


# -- 4. exact rate limits under concurrency ----------------------------------------------------------------


def test_rate_limits_are_exact_under_concurrency(tmp_path: Path, runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        config = config_for(tmp_path, max_tokens=100_000, max_concurrent_tool_calls=64)
        async with EnhancedContextManager(config) as manager:
            tools = manager.tool_manager
            release = asyncio.Event()
            all_admitted = asyncio.Event()
            running = 0

            async def slow(value: int) -> int:
                """Waits until released, so admitted calls overlap.

                Args:
                    value: Echoed.
                """
                nonlocal running
                running += 1
                if running == 10:
                    all_admitted.set()
                await release.wait()
                return value

            def blocking(value: int) -> int:
                """A sync tool (worker threads).

                Args:
                    value: Echoed.
                """
                return value

            tools.register_function_tool("slow", slow, rate_limit=10, rate_window=3600)
            tools.register_function_tool("blocking", blocking, rate_limit=7, rate_window=3600)
            tools.register_function_tool("per_user", slow, rate_limit=3, rate_window=3600)

            calls = [asyncio.ensure_future(tools.execute("slow", value=i)) for i in range(200)]
            await all_admitted.wait()  # 10 calls are running at once; the other 190 are refused
            release.set()
            outcomes = await asyncio.gather(*calls)
            assert sum(result.success for result in outcomes) == 10
            assert {r.error_type.value for r in outcomes if not r.success and r.error_type} == {
                "rate_limited"
            }
            assert all(r.retry_after and r.retry_after > 0 for r in outcomes if not r.success)

            outcomes = await asyncio.gather(*(tools.execute("blocking", value=i) for i in range(60)))
            assert sum(result.success for result in outcomes) == 7

            batch = [{"id": f"b{i}", "name": "per_user", "arguments": {"value": i}} for i in range(40)]
            by_user = await asyncio.gather(
                *(tools.execute_tool_calls(batch, caller_key=user) for user in ("ann", "ben", "cy"))
            )
            assert [sum(r.success for r in results) for results in by_user] == [3, 3, 3]
            # through the window path too: the shared key has its own 3
            results = await manager.execute_tool_calls(batch)
            assert sum(r.success for r in results) == 3
            stats = tools.get_tool_stats()["tools"]
            assert stats["slow"]["errors"] == {"rate_limited": 190}
            assert stats["per_user"]["successes"] == 12

    runner.run(scenario())


def test_rate_limiter_is_exact_across_threads() -> None:
    limiter = SlidingWindowRateLimiter()
    admitted = 0
    lock = threading.Lock()
    start = threading.Barrier(8)

    def hammer() -> None:
        nonlocal admitted
        start.wait()
        mine = sum(limiter.try_acquire("tool", limit=100, window=3600.0) is None for _ in range(2000))
        with lock:
            admitted += mine

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted == 100


def test_sliding_window_boundary_is_exact() -> None:
    now = [1000.0]
    limiter = SlidingWindowRateLimiter(clock=lambda: now[0])
    assert [limiter.try_acquire("k", limit=3, window=10.0) is None for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    now[0] = 1009.999
    assert limiter.try_acquire("k", limit=3, window=10.0) is not None
    now[0] = 1010.0  # the first three calls leave the window exactly now
    assert [limiter.try_acquire("k", limit=3, window=10.0) is None for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


# -- 5. payloads never logged at INFO or above --------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    package = logging.getLogger("context_manager")
    previous = package.level
    package.setLevel(logging.DEBUG)
    package.addHandler(handler)
    try:
        yield handler
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)


def record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        text += record.stack_info
    return text


def test_payloads_never_logged_at_info_or_above(
    tmp_path: Path, runner: asyncio.Runner, captured: Capture
) -> None:
    async def leaky_summarizer(messages: Any, budget: int) -> str:
        raise RuntimeError(f"LLM refused the prompt: {messages[0].content}")

    async def leaky_tool(text: str) -> str:
        """Raises with its argument in the message.

        Args:
            text: Anything.
        """
        raise ValueError(f"cannot handle {text}")

    async def slow_tool(text: str) -> str:
        """Never finishes in time.

        Args:
            text: Anything.
        """
        await asyncio.sleep(10)
        return text

    def leaky_approval(definition: Any, arguments: dict[str, Any]) -> bool:
        raise PermissionError(f"refused {arguments}")

    def leaky_hook(messages: Any) -> None:
        raise RuntimeError(f"archive refused {messages[0].content}")

    async def scenario() -> None:
        config = config_for(tmp_path, max_tokens=300, summarizer_timeout=1.0, max_tool_timeout=0.05)
        async with EnhancedContextManager(config, summarizer=leaky_summarizer) as manager:
            tools = manager.tool_manager
            tools.approval_callback = leaky_approval
            tools.register_function_tool("leaky", leaky_tool)
            tools.register_function_tool("slow", slow_tool)
            tools.register_function_tool("guarded", leaky_tool, permission=ToolPermission.DANGEROUS)
            tools.register_function_tool("echo", lambda text: text)
            memory = manager.memory_manager
            for index in range(12):  # compression: the custom summarizer fails with the payload in its error
                await manager.add_message("user", f"{SECRET} message {index} " + "filler words " * 10)
            await manager.execute_tool("leaky", text=SECRET)
            await manager.execute_tool("slow", text=SECRET)
            await manager.execute_tool("guarded", text=SECRET)
            await manager.execute_tool("echo", text=SECRET)
            await manager.execute_tool("leaky", text=12)  # invalid arguments
            await manager.execute_tool("missing", text=SECRET)
            await manager.execute_tool_calls([{"id": "c1", "name": "leaky", "arguments": {"text": SECRET}}])
            await memory.add_memory(f"{SECRET} in a memory", tags=[SECRET], metadata={"k": SECRET})
            await memory.search_memory(SECRET)
            await memory.search_by_tags([SECRET])
            manager.set_eviction_hook(leaky_hook)
            for index in range(12):  # the eviction hook fails with the payload in its error
                await manager.add_message("assistant", f"{SECRET} answer {index} " + "more words " * 10)
            (tmp_path / "bad.jsonl").write_text(f'{{"id": "x", "content": "{SECRET}", "importance": 7}}\n')
            with contextlib.suppress(ContextManagerError):
                await memory.import_memories(tmp_path / "bad.jsonl")
            await manager.optimize_system()

    runner.run(scenario())
    assert captured.records, "the capture must see the package's records"
    loud = [r for r in captured.records if r.levelno >= logging.INFO]
    leaks = [f"{r.levelname} {r.name}: {record_text(r)[:200]}" for r in loud if SECRET in record_text(r)]
    assert leaks == []
    assert any(r.levelno >= logging.WARNING for r in loud), "the scenario must provoke warnings to check"


# -- 6. secrets in tool arguments redacted from history and stats ----------------------------------------


@tool(sensitive_arguments=["api_key"])
async def call_service(query: str, api_key: str) -> dict[str, Any]:
    """Call a service with a key.

    Args:
        query: What to ask.
        api_key: The credential.
    """
    if query == "fail":
        raise PermissionError(f"key {api_key} was rejected")
    return {"answer": f"ok for {query}", "echo": api_key}


def test_secret_tool_arguments_are_redacted_from_history_and_stats(
    tmp_path: Path, runner: asyncio.Runner, captured: Capture
) -> None:
    received: list[str] = []

    async def scenario() -> None:
        config = config_for(tmp_path, max_tokens=600)
        async with EnhancedContextManager(config) as manager:
            tools = manager.tool_manager
            tools.register_function_tool("call_service", call_service)

            async def spy(query: str, api_key: str) -> str:
                """Records what it received.

                Args:
                    query: What to ask.
                    api_key: The credential.
                """
                received.append(api_key)
                return "done"

            tools.register_function_tool("spy", spy, sensitive_arguments=("api_key",))
            calls = [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "call_service",
                        "arguments": json.dumps({"query": "weather", "api_key": SECRET}),
                    },
                },
                {"id": "c2", "name": "call_service", "arguments": {"query": "fail", "api_key": SECRET}},
                {"id": "c3", "name": "call_service", "arguments": {"query": "typo", "api_key": 12345}},
                {"id": "c4", "name": "spy", "arguments": {"query": "q", "api_key": SECRET}},
            ]
            results = await manager.execute_tool_calls(calls)
            assert received == [SECRET], "the tool itself gets the real value"
            assert results[0].success and results[0].result["echo"] == SECRET  # the caller's own result
            assert not results[1].success and SECRET not in (results[1].error or "")
            assert not results[2].success
            direct = await manager.execute_tool("call_service", query="fail", api_key=SECRET)
            assert SECRET not in (direct.error or "")

            history = json.dumps(manager.get_context(format="openai")) + json.dumps(
                manager.get_context(format="anthropic")
            )
            assert SECRET not in history
            assert "[REDACTED]" in history and "weather" in history, "other arguments stay visible"
            assert SECRET not in json.dumps(tools.get_tool_stats())
            assert SECRET not in json.dumps(manager.get_system_status(), default=str)
            # compression moves the unit to memory: the secret is not there either
            for index in range(40):
                await manager.add_message("user", f"later message {index} " + "words " * 10)
            assert manager.compression_history
            await manager.flush()  # what compression evicted is written to memory in the background
            export = tmp_path / "export.jsonl"
            await manager.memory_manager.export_memories(export)
            stored = export.read_text(encoding="utf-8")
            assert "weather" in stored and SECRET not in stored
            assert await manager.memory_manager.search_memory(SECRET) == []

    runner.run(scenario())
    assert all(
        SECRET not in record_text(record) for record in captured.records if record.levelno >= logging.INFO
    )


def test_redact_arguments_for_messages_the_application_adds(tmp_path: Path, runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        async with EnhancedContextManager(config_for(tmp_path, max_tokens=2000)) as manager:
            tools = manager.tool_manager
            tools.register_function_tool("call_service", call_service)
            arguments = {"query": "weather", "api_key": SECRET}
            redacted = tools.redact_arguments("call_service", arguments)
            assert redacted == {"query": "weather", "api_key": "[REDACTED]"}
            assert arguments["api_key"] == SECRET, "the caller's dict is not changed"
            assert tools.redact_arguments("unknown_tool", arguments) == arguments
            definition = tools.get_tool("call_service")
            assert definition.sensitive_arguments == ("api_key",)
            assert definition.options()["sensitive_arguments"] == ["api_key"]

    runner.run(scenario())


def test_sensitive_arguments_option_is_validated() -> None:
    from context_manager import ToolRegistrationError

    async def plain(text: str) -> str:
        """Echo.

        Args:
            text: Echoed.
        """
        return text

    tools = ToolManager()
    for bad in ("api_key", [1], [""], None):
        with pytest.raises(ToolRegistrationError, match="sensitive_arguments"):
            tools.register_function_tool("plain", plain, sensitive_arguments=bad)
    assert "plain" not in tools
