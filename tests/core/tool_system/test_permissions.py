from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.tool_system import (
    PermissionDecision,
    PermissionPolicy,
    ToolDefinition,
    ToolManager,
    ToolPermission,
)

ran: list[str] = []


async def delete_file(path: str) -> str:
    ran.append(path)
    return f"deleted {path}"


async def read_file(path: str) -> str:
    return f"read {path}"


def make_manager(**kwargs: Any) -> ToolManager:
    ran.clear()
    manager = ToolManager(**kwargs)
    manager.register_function_tool("delete_file", delete_file, "Delete", permission=ToolPermission.RESTRICTED)
    manager.register_function_tool("read_file", read_file, "Read", permission=ToolPermission.PUBLIC)
    return manager


async def test_default_policy_denies_restricted_without_callback() -> None:
    manager = make_manager()
    assert (await manager.execute("read_file", path="a")).success
    result = await manager.execute("delete_file", path="a")
    assert not result.success
    assert result.error_type == "permission_denied"
    assert result.error == (
        "tool 'delete_file' needs permission 'restricted', above the policy's 'standard', "
        "and no approval callback is set"
    )
    assert ran == []


async def test_approval_callback_sees_validated_arguments_and_decides() -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def approve(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        asked.append((definition.name, arguments))
        return arguments["path"].startswith("/tmp/")

    manager = make_manager(approval_callback=approve)
    allowed = await manager.execute("delete_file", path="/tmp/x")
    denied = await manager.execute("delete_file", path="/etc/passwd")
    assert allowed.success and allowed.result == "deleted /tmp/x"
    assert denied.error_type == "permission_denied"
    assert denied.error is not None and denied.error.endswith("the call was not approved")
    assert asked == [("delete_file", {"path": "/tmp/x"}), ("delete_file", {"path": "/etc/passwd"})]
    assert ran == ["/tmp/x"]
    await manager.execute("read_file", path="a")
    assert len(asked) == 2  # tools within the policy never ask


async def test_only_true_approves_and_failing_callback_denies() -> None:
    def truthy(definition: ToolDefinition, arguments: dict[str, Any]) -> Any:
        return "yes"

    manager = make_manager(approval_callback=truthy)
    assert (await manager.execute("delete_file", path="a")).error_type == "permission_denied"

    async def broken(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        raise RuntimeError("approval service down")

    manager = make_manager(approval_callback=broken)
    result = await manager.execute("delete_file", path="a")
    assert result.error_type == "permission_denied"
    assert "approval check failed (RuntimeError)" in (result.error or "")
    assert ran == []


async def test_invalid_arguments_are_refused_before_asking() -> None:
    asked: list[Any] = []

    async def approve(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        asked.append(arguments)
        return True

    manager = make_manager(approval_callback=approve)
    assert (await manager.execute("delete_file")).error_type == "invalid_arguments"
    assert asked == []


async def test_policy_levels_allow_and_deny_lists() -> None:
    manager = make_manager(permission_policy=ToolPermission.RESTRICTED)
    assert (await manager.execute("delete_file", path="a")).success
    manager.permission_policy = PermissionPolicy(allow_up_to="public", always_deny=frozenset({"read_file"}))
    assert (await manager.execute("read_file", path="a")).error_type == "permission_denied"
    manager.permission_policy = PermissionPolicy(
        allow_up_to=ToolPermission.PUBLIC, always_allow=frozenset({"delete_file"})
    )
    assert (await manager.execute("delete_file", path="b")).success


async def test_always_deny_cannot_be_approved() -> None:
    async def approve(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        return True

    manager = make_manager(
        approval_callback=approve, permission_policy=PermissionPolicy(always_deny=frozenset({"delete_file"}))
    )
    result = await manager.execute("delete_file", path="a")
    assert result.error == "tool 'delete_file' is denied by the permission policy"


async def test_tool_calls_cannot_bypass_permissions() -> None:
    manager = make_manager()
    results = await manager.execute_tool_calls(
        [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "delete_file", "arguments": '{"path": "a"}'},
            },
            {"type": "tool_use", "id": "c2", "name": "delete_file", "input": {"path": "b"}},
        ]
    )
    assert [r.error_type for r in results] == ["permission_denied", "permission_denied"]
    assert ran == []


async def test_approval_may_wait_for_a_human() -> None:
    decision: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    asked = asyncio.Event()

    async def human(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        asked.set()
        return await decision

    manager = make_manager(approval_callback=human)
    task = asyncio.create_task(manager.execute("delete_file", path="/tmp/y"))
    await asked.wait()
    assert ran == []
    decision.set_result(True)
    assert (await task).success
    assert ran == ["/tmp/y"]


def test_policy_decisions_and_validation() -> None:
    definition = ToolDefinition(name="delete_file", function=delete_file, permission="dangerous")
    assert PermissionPolicy().decide(definition) is PermissionDecision.ASK
    assert PermissionPolicy(allow_up_to="dangerous").decide(definition) is PermissionDecision.ALLOW
    with pytest.raises(InvalidArgumentError, match="^always_deny: got 'rm'"):
        PermissionPolicy(always_deny="rm")  # type: ignore[arg-type]


def test_bad_arguments_to_the_tool_api_raise_the_librarys_errors() -> None:
    """These raised TypeError ('NoneType' object is not iterable, unhashable type), or, for a name given
    where a list of names is expected, looked up each of its letters ("tool not found: 'w'")."""
    from context_manager.core.errors import InvalidArgumentError, ToolNotFoundError, ToolRegistrationError
    from context_manager.core.tool_system import tool

    async def word_stats(text: str) -> int:
        return len(text.split())

    manager = ToolManager()
    manager.register_function_tool("word_stats", word_stats, "Count words")
    with pytest.raises(InvalidArgumentError, match=r"names: got 'word_stats'; allowed a list of tool names"):
        manager.get_tool_schemas("openai", names="word_stats")
    for field, value in (("always_deny", None), ("always_allow", 5)):
        with pytest.raises(InvalidArgumentError, match=f"{field}: got {value}; allowed a set of tool names"):
            PermissionPolicy(**{field: value})
    with pytest.raises(InvalidArgumentError, match="tags: got 5; allowed a list of strings"):
        manager.list_tools(tags=5)  # type: ignore[arg-type]
    for lookup in (manager.get_tool, manager.unregister_tool):
        with pytest.raises(ToolNotFoundError):
            lookup([])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="arguments: got None; allowed a mapping"):
        manager.redact_arguments("word_stats", None)  # type: ignore[arg-type]
    with pytest.raises(ToolRegistrationError, match="tags: got 5; allowed a list of non-empty strings"):
        tool(tags=5)(word_stats)  # type: ignore[arg-type]
    assert [definition.name for definition in manager.list_tools()] == ["word_stats"]


async def test_an_approval_whose_wait_is_cancelled_denies_the_call() -> None:
    """A callback awaiting a dialog's future that is cancelled (the user closed it) raised CancelledError
    out of execute_tool; a callback that raises denies the call, and so does this one. Cancelling the call
    itself still propagates."""
    loop = asyncio.get_running_loop()

    async def ask_in_dialog(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        answer: asyncio.Future[bool] = loop.create_future()
        loop.call_later(0.01, answer.cancel)  # the dialog is closed without an answer
        return await answer

    async def drop_table(table: str) -> str:
        return f"dropped {table}"

    manager = ToolManager(approval_callback=ask_in_dialog)
    manager.register_function_tool("drop_table", drop_table, "Drop", permission="restricted")
    result = await manager.execute_tool("drop_table", table="orders")
    assert result.error_type == "permission_denied"
    assert "the approval check failed (CancelledError)" in (result.error or "")

    waiting = asyncio.Event()

    async def slow_human(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        waiting.set()
        await asyncio.Event().wait()
        return True

    manager.approval_callback = slow_human
    call = asyncio.create_task(manager.execute_tool("drop_table", table="orders"))
    await waiting.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_replacing_the_policy_or_callback_later_is_checked_like_at_construction() -> None:
    """``tools.permission_policy = ToolPermission.RESTRICTED`` (the shorthand the constructor accepts) was
    stored as it was: every later call raised AttributeError ('ToolPermission' object has no attribute
    'decide') out of execute_tool, for every tool."""
    tools = make_manager()
    tools.permission_policy = ToolPermission.RESTRICTED  # type: ignore[assignment]
    assert tools.permission_policy == PermissionPolicy(allow_up_to=ToolPermission.RESTRICTED)
    assert (await tools.execute_tool("delete_file", path="/tmp/x")).success
    tools.permission_policy = "standard"  # type: ignore[assignment]
    denied = await tools.execute_tool("delete_file", path="/tmp/y")
    assert denied.error_type == "permission_denied" and ran == ["/tmp/x"]
    with pytest.raises(InvalidArgumentError, match="^allow_up_to: got 'root'; allowed one of"):
        tools.permission_policy = "root"  # type: ignore[assignment]
    with pytest.raises(InvalidArgumentError, match="^approval_callback: got 'yes'; allowed an async"):
        tools.approval_callback = "yes"  # type: ignore[assignment]
    assert tools.permission_policy.allow_up_to is ToolPermission.STANDARD and tools.approval_callback is None

    async def approve(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        return True

    tools.approval_callback = approve
    assert (await tools.execute_tool("delete_file", path="/tmp/z")).success


async def test_a_sync_approval_callback_does_not_hold_the_event_loop() -> None:
    """A sync approval callback (accepted, as documented: a CLI prompt, a policy service's HTTP client) was
    called on the event loop: while it waited, every other task of the application stood still, the calls
    of tools that need no approval included. It now runs in one of the manager's threads."""
    asked: list[tuple[str, dict[str, Any]]] = []
    answer = threading.Event()  # the service answers when the test tells it to (from the event loop)
    answered: list[bool] = []

    def slow_policy_service(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        asked.append((definition.name, arguments))
        answered.append(answer.wait(timeout=5.0))  # a blocking round trip to the service
        return arguments["path"].startswith("/tmp/")

    manager = make_manager(approval_callback=slow_policy_service)
    approving = asyncio.create_task(manager.execute("delete_file", path="/tmp/x"))
    for _ in range(500):  # until the approval is pending (on the loop, it ends only when the wait times out)
        await asyncio.sleep(0.01)
        if asked:
            break
    free = await manager.execute("read_file", path="a")  # a PUBLIC tool, while the approval is pending
    pending = not approving.done()
    answer.set()  # the loop runs: it can tell the service to answer
    approved = await approving
    denied = await manager.execute("delete_file", path="/etc/passwd")
    # On the loop, the callback would have held it until its wait timed out: the loop could not answer it,
    # nor run the call needing no approval before it. Events, not wall-clock thresholds (which a busy
    # machine stretches): the callback's 5 s are far from any scheduling delay.
    assert answered[0], "the loop stood still while the approval callback waited"
    assert free.success and pending, "a call needing no approval waited for a pending approval"
    assert approved.success and ran == ["/tmp/x"]
    assert denied.error_type == "permission_denied" and "was not approved" in (denied.error or "")
    assert asked == [("delete_file", {"path": "/tmp/x"}), ("delete_file", {"path": "/etc/passwd"})]

    def broken(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        raise ConnectionError("policy service down")

    manager.approval_callback = broken
    failed = await manager.execute("delete_file", path="/tmp/y")
    assert failed.error_type == "permission_denied"
    assert "the approval check failed (ConnectionError)" in (failed.error or "")
    manager.approval_callback = lambda definition, arguments: asyncio.sleep(0, result=True)  # an awaitable
    assert (await manager.execute("delete_file", path="/tmp/z")).success


async def test_an_approval_callback_changing_nested_arguments_does_not_change_the_call() -> None:
    """The callback got a shallow copy of the arguments: one that redacted a nested secret before logging
    the request (``arguments["credentials"]["password"] = "***"``) sent the tool ``"***"`` as the password,
    and one that added to a list argument widened what the tool did. It now gets a deep copy."""
    received: list[tuple[dict[str, str], list[str]]] = []

    async def deploy(credentials: dict[str, str], hosts: list[str]) -> str:
        received.append((credentials, hosts))
        return "deployed"

    def audit(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        arguments["credentials"]["password"] = "***"  # redacted for the audit log
        arguments["hosts"].append("prod-db")
        return True

    manager = ToolManager(approval_callback=audit)
    manager.register_function_tool("deploy", deploy, "Deploy", permission=ToolPermission.DANGEROUS)
    result = await manager.execute_tool(
        "deploy", credentials={"user": "ci", "password": "s3cret"}, hosts=["web-1"]
    )
    assert result.success
    assert received == [({"user": "ci", "password": "s3cret"}, ["web-1"])]


async def test_sync_approval_callbacks_are_asked_one_at_a_time() -> None:
    """A sync callback is run in a thread so that the loop goes on; it is still asked about one call at a
    time, as when it ran on the loop: a terminal prompt (``input()``) asked from several threads at once for
    a model's parallel calls would mix its questions and hand answers to the wrong call."""
    lock = threading.Lock()
    inside = 0
    most = 0
    asked: list[str] = []

    def prompt(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)  # the person reads the question
        asked.append(arguments["path"])
        with lock:
            inside -= 1
        return True

    manager = make_manager(approval_callback=prompt)
    calls = [{"id": f"c{n}", "name": "delete_file", "arguments": {"path": f"/tmp/{n}"}} for n in range(4)]
    results = await manager.execute_tool_calls(calls)
    assert [result.success for result in results] == [True] * 4
    assert most == 1 and sorted(asked) == [f"/tmp/{n}" for n in range(4)]


def test_sync_approval_callbacks_work_on_a_second_event_loop() -> None:
    """The lock that asks a sync callback about one call at a time was made once, with the manager: the
    first run of parallel calls needing approval bound it to that event loop, so the same calls in a later
    ``asyncio.run`` (a script, a notebook, a test suite) were denied ("the approval check failed
    (RuntimeError)") although the callback approved them."""
    asked: list[str] = []

    def prompt(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        time.sleep(0.02)
        asked.append(arguments["path"])
        return True

    manager = make_manager(approval_callback=prompt)
    calls = [{"id": f"c{n}", "name": "delete_file", "arguments": {"path": f"/tmp/{n}"}} for n in range(3)]
    for _ in range(2):
        results = asyncio.run(manager.execute_tool_calls(calls))
        assert [(result.success, result.error) for result in results] == [(True, None)] * 3
    assert len(asked) == 6


async def test_a_timed_out_sync_approval_keeps_the_next_prompt_waiting_until_its_thread_ends() -> None:
    """A sync callback runs in a thread, which cannot be stopped: when the call waiting for it timed out
    (``asyncio.wait_for``, a cleanup cancelling it), the lock was released at once while its prompt went on
    in its thread, and the next call's prompt ran beside it (two questions on one terminal). The next
    prompt now starts only once the previous prompt's thread has finished; the timed-out call still
    returns on time."""
    counting = threading.Lock()
    inside = 0
    most = 0
    asked: list[str] = []
    first_asked = threading.Event()
    first_answered = threading.Event()

    def prompt(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        nonlocal inside, most
        with counting:
            inside += 1
            most = max(most, inside)
        try:
            asked.append(arguments["path"])
            if arguments["path"] == "/tmp/first":
                first_asked.set()
                first_answered.wait(10)  # the person answers after the caller gave up
            return True
        finally:
            with counting:
                inside -= 1

    manager = make_manager(approval_callback=prompt)
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(manager.execute_tool("delete_file", path="/tmp/first"), 0.2)
    assert time.perf_counter() - started < 1.0, "the timed-out call waited for its prompt"
    assert first_asked.is_set()
    second = asyncio.create_task(manager.execute_tool("delete_file", path="/tmp/second"))
    await asyncio.sleep(0.3)  # time for a second prompt to start, were it allowed to
    assert asked == ["/tmp/first"] and not second.done()
    first_answered.set()
    result = await asyncio.wait_for(second, 10)
    assert result.success and ran == ["/tmp/second"]
    assert asked == ["/tmp/first", "/tmp/second"] and most == 1
    stats = manager.get_tool_stats()["tools"]["delete_file"]
    assert stats["errors"] == {"cancelled": 1} and stats["successes"] == 1


async def test_a_sync_approval_that_never_got_a_thread_does_not_block_later_approvals() -> None:
    """When every thread of the manager is held by hung tools, a sync approval waits for one; if its call
    times out meanwhile, its prompt never runs, and the next approval must not wait for it for ever."""
    hung_tool_may_end = threading.Event()
    asked: list[str] = []

    def hang(seconds: float) -> str:
        hung_tool_may_end.wait(10)
        return "late"

    def prompt(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        asked.append(arguments["path"])
        return True

    manager = make_manager(approval_callback=prompt, max_threads=1)
    manager.register_function_tool("hang", hang, "Hang", permission="public", timeout=0.1)
    assert (await manager.execute_tool("hang", seconds=1)).error_type == "timeout"  # holds the only thread
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(manager.execute_tool("delete_file", path="/tmp/never"), 0.2)
    hung_tool_may_end.set()
    result = await asyncio.wait_for(manager.execute_tool("delete_file", path="/tmp/later"), 5)
    assert result.success and asked == ["/tmp/later"] and ran == ["/tmp/later"]


async def test_tool_lists_given_as_generators_are_kept_whole() -> None:
    """``always_deny`` (or ``always_allow``) given as a generator was read once to check its names and
    then again to store them: the second read was empty, so ``PermissionPolicy(always_deny=(name for name in
    blocked))`` denied nothing and the tool it named ran. The names are read once now."""
    blocked = ["delete_file"]
    policy = PermissionPolicy(
        allow_up_to=ToolPermission.DANGEROUS,
        always_deny=(name for name in blocked),
        always_allow=map(str.strip, [" read_file "]),
    )
    assert policy.always_deny == frozenset({"delete_file"})
    assert policy.always_allow == frozenset({"read_file"})
    manager = make_manager(permission_policy=policy)
    denied = await manager.execute("delete_file", path="/etc/passwd")
    assert denied.error_type == "permission_denied"
    assert denied.error == "tool 'delete_file' is denied by the permission policy"
    assert ran == []
    with pytest.raises(InvalidArgumentError, match="always_deny: got .*allowed a set of tool names"):
        PermissionPolicy(always_deny=(item for item in ["rm", 3]))
