"""The agent-loop example: scripted mode, and the real ``openai`` client against a local stand-in server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from context_manager.core.errors import SummarizerError
from context_manager.testing import ChatCall, ScriptedChatModel
from tests.chat_completions_server import running_server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def agent_loop() -> Iterator[ModuleType]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import agent_loop as module

        yield module
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture
def example_ctx(tmp_path: Path) -> Any:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from _common import ExampleContext
        from rich.console import Console

        yield ExampleContext(Console(width=200, record=True), False, tmp_path)
    finally:
        sys.path.remove(str(EXAMPLES))


def _check_pairing(messages: list[dict[str, Any]]) -> None:
    """Every tool message answers a call of an earlier assistant message in the same request, and back."""
    open_calls: set[str] = set()
    for message in messages:
        if message["role"] == "assistant":
            open_calls |= {call["id"] for call in message.get("tool_calls") or []}
        if message["role"] == "tool":
            assert message["tool_call_id"] in open_calls, message
            open_calls.discard(message["tool_call_id"])
    assert not open_calls, f"calls without results: {open_calls}"


# --- ScriptedChatModel ---------------------------------------------------------------------------


async def test_scripted_model_follows_its_script_and_records_requests() -> None:
    model = ScriptedChatModel(
        [
            ScriptedChatModel.call_tool("lookup", {"key": 1}),
            lambda messages, tools: ScriptedChatModel.reply(f"{len(messages)} messages, {len(tools)} tools"),
        ],
        default="done",
    )
    request = [{"role": "user", "content": "hi"}]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    first = await model.complete(request, tools)
    assert first["tool_calls"][0]["id"] == "call_0_0"
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {"key": 1}
    request.append({"role": "assistant", "content": "x"})  # the recorded copy must not change
    second = await model.complete(request, tools)
    assert second == {"role": "assistant", "content": "2 messages, 1 tools"}
    assert await model.complete(request) == {"role": "assistant", "content": "done"}
    assert model.remaining == 0
    assert [len(call.messages) for call in model.calls] == [1, 2, 2]
    assert isinstance(model.calls[0], ChatCall) and model.calls[2].tools == []


async def test_scripted_model_replies_are_fresh_copies_and_can_fail() -> None:
    step = ScriptedChatModel.call_tool("lookup", call_id="fixed")
    model = ScriptedChatModel([step, step])
    first = await model.complete([])
    first["tool_calls"].clear()
    assert (await model.complete([]))["tool_calls"][0]["id"] == "fixed"
    failing = ScriptedChatModel(fail_with=SummarizerError("503"))
    with pytest.raises(SummarizerError, match="503"):
        await failing.complete([{"role": "user", "content": "hi"}])
    assert len(failing.calls) == 1


# --- the loop, scripted ------------------------------------------------------------------------


async def test_scripted_loop_packs_context_pairs_tools_and_recalls(
    agent_loop: ModuleType, example_ctx: Any
) -> None:
    model = agent_loop.scripted_model()
    reports = await agent_loop.run_agent(example_ctx, model, scripted=True)
    assert len(reports) == len(agent_loop.USER_TURNS)
    assert model.remaining == 0  # every scripted step was used: the loop made exactly the expected requests
    assert "TRK-88231-PT" in reports[0].answer and "TRK-88231-PT" in reports[8].answer
    assert reports[8].tool_calls[0][0] == "memory_search"
    assert "after 6 pm" in reports[9].answer
    assert any("after 6 pm" in memory for memory in reports[9].recalled)
    for call in model.calls:
        _check_pairing(call.messages)
        assert call.messages[0]["role"] == "system"
        assert {tool["function"]["name"] for tool in call.tools} >= {"lookup_order", "memory_search"}
    budget = 700 - 150
    assert max(max(report.request_tokens) for report in reports) <= budget


async def test_scripted_loop_with_a_server_numbering_calls_per_response(
    agent_loop: ModuleType, example_ctx: Any
) -> None:
    """vLLM, Ollama and llama.cpp versions number each response's calls from 0: ``call_0`` every turn. The
    second tool turn failed with ToolCallPairingError (the id was in the window); every turn now runs and
    each request pairs every call with its own result, ids unique."""
    scripted = agent_loop.scripted_model()
    steps = []
    for step in scripted.script:
        if isinstance(step, dict) and step.get("tool_calls"):
            step = {**step, "tool_calls": [{**call, "id": "call_0"} for call in step["tool_calls"]]}
        steps.append(step)
    model = ScriptedChatModel(steps)
    reports = await agent_loop.run_agent(example_ctx, model, scripted=True)
    assert model.remaining == 0 and len(reports) == len(agent_loop.USER_TURNS)
    assert "TRK-88231-PT" in reports[0].answer and "TRK-88231-PT" in reports[8].answer
    assert [report.tool_calls[0][0] for report in reports if report.tool_calls][:3] == [
        "lookup_order",
        "memory_add",
        "shipping_quote",
    ]
    assert all("error" not in output.lower() for r in reports for _, _, output in r.tool_calls)
    for call in model.calls:
        _check_pairing(call.messages)
        ids = [c["id"] for m in call.messages for c in m.get("tool_calls") or []]
        assert len(ids) == len(set(ids)), ids


def run_offline(**variables: str) -> subprocess.CompletedProcess[str]:
    """Run examples/agent_loop.py with no OPENAI_* variables (its scripted model) and ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(variables)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_loop.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_agent_loop_script_runs_offline_by_default(tmp_path: Path) -> None:
    completed = run_offline(COLUMNS="200")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "recall worked" in completed.stdout
    assert "tool lookup_order" in completed.stdout


def test_the_scripted_run_shows_a_recalled_tool_call_as_memory_holds_it(tmp_path: Path) -> None:
    """A tool call evicted to memory is remembered as ``[tool call NAME] {...}``: rich read the
    brackets as markup and printed ``recalled:  {"city":"Porto",...}``, the call's name gone (lexical
    search recalls that call; MiniLM ranks other turns first)."""
    completed = run_offline(COLUMNS="250", PYTHON_CONTEXT_MANAGER_EMBEDDER="none")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    recalled = [line for line in completed.stdout.splitlines() if "recalled:" in line]
    assert any("recalled: [tool call shipping_quote] {" in line for line in recalled), recalled
    assert not [line for line in recalled if "recalled:  " in line], recalled


def test_a_turn_prints_brackets_of_the_model_and_the_user_as_written(
    agent_loop: ModuleType, example_ctx: Any
) -> None:
    """Against a real model the texts are the model's: a Markdown link lost its words, and a path such as
    ``[/etc/hosts]`` crashed the example with rich's MarkupError."""
    report = agent_loop.TurnReport(
        user="Is [/etc/hosts] the file?",
        answer="Yes: see [the hosts manual](https://example.org) and [/etc/hosts].",
        tool_calls=[("read_file", {"path": "[/etc/hosts]"}, '{"lines": ["[bold]127.0.0.1[/bold]"]}')],
        recalled=['[tool call read_file] {"path": "/etc"}'],
    )
    agent_loop.print_turn(example_ctx, report)
    printed = example_ctx.console.export_text()
    assert "user: Is [/etc/hosts] the file?" in printed
    assert "recalled: [tool call read_file] {" in printed
    assert 'tool read_file({"path": "[/etc/hosts]"}) -> {"lines": ["[bold]127.0.0.1[/bold]"]}' in printed
    assert "assistant: Yes: see [the hosts manual](https://example.org) and [/etc/hosts]." in printed


def test_a_turn_prints_backslashes_of_the_model_and_the_user_as_written(
    agent_loop: ModuleType, example_ctx: Any
) -> None:
    """rich's ``escape()`` doubles a text's final backslash (so that a tag after it stays a tag): at the end
    of a line a Windows path ``C:\\temp\\`` printed as ``C:\\temp\\\\``, and two final backslashes of a
    recalled memory, before its closing ``[/dim]``, printed as one."""
    example_ctx.verbose = True
    report = agent_loop.TurnReport(
        user="Is it in C:\\temp\\",
        answer="Yes: C:\\temp\\",
        tool_calls=[("list_dir", {"path": "C:\\temp\\"}, "C:\\temp\\")],
        recalled=["a share \\\\", "C:\\temp\\"],
    )
    agent_loop.print_turn(example_ctx, report)
    printed = example_ctx.console.export_text().splitlines()
    assert "user: Is it in C:\\temp\\" in printed
    assert "  recalled: a share \\\\" in printed and "  recalled: C:\\temp\\" in printed
    assert '  tool list_dir({"path": "C:\\\\temp\\\\"}) -> C:\\temp\\' in printed
    assert "assistant: Yes: C:\\temp\\" in printed


# --- the loop with the real openai client against a local Chat Completions server ------------------


async def test_openai_adapter_against_local_server(agent_loop: ModuleType, example_ctx: Any) -> None:
    with running_server() as server:
        model = agent_loop.OpenAIChatModel("stub-model", base_url=server.base_url, api_key="test-key")
        try:
            reports = await agent_loop.run_agent(example_ctx, model, scripted=False)
        finally:
            await model.close()
    turns = len(agent_loop.USER_TURNS)
    assert len(server.requests) == 2 * turns  # a tool call, then the answer, for every turn
    for index, request in enumerate(server.requests):
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer test-key"
        assert request.body["model"] == "stub-model"
        offered = {tool["function"]["name"] for tool in request.body["tools"]}
        assert {"lookup_order", "shipping_quote", "memory_search", "memory_add"} <= offered
        _check_pairing(request.body["messages"])
        if index % 2 == 1:  # the answer request carries the result of the call made just before
            last = request.body["messages"][-1]
            assert last["role"] == "tool" and last["tool_call_id"] == f"call_stub_{index - 1}"
            assert "TRK-88231-PT" in last["content"]
    for report in reports:
        assert report.tool_calls[0][0] == "lookup_order"
        assert report.answer.startswith("Final answer based on:")


def test_agent_loop_script_uses_openai_when_configured(tmp_path: Path) -> None:
    with running_server() as server:
        env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="test-key", COLUMNS="200")
        env.pop("OPENAI_MODEL", None)
        completed = subprocess.run(
            [sys.executable, str(EXAMPLES / "agent_loop.py")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "gpt-4o-mini" in completed.stdout
    assert len(server.requests) == 20
    assert all(request.body["model"] == "gpt-4o-mini" for request in server.requests)


def test_agent_loop_script_without_the_openai_extra_says_how_to_run_offline(tmp_path: Path) -> None:
    # OPENAI_API_KEY exported for other tools, the openai package not installed: one clear line, not a
    # traceback, naming the extra and --scripted (the offline mode)
    block_openai = (
        "import runpy, sys; sys.modules['openai'] = None; "
        f"sys.argv = [{str(EXAMPLES / 'agent_loop.py')!r}]; "
        f"runpy.run_path({str(EXAMPLES / 'agent_loop.py')!r}, run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY="sk-not-used", COLUMNS="200")
    completed = subprocess.run(
        [sys.executable, "-c", block_openai],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
    assert "python-context-manager[openai]" in completed.stderr
    assert "--scripted" in completed.stderr
