from __future__ import annotations

import asyncio

import pytest

from context_manager.core.errors import InvalidArgumentError
from context_manager.core.tool_system import SlidingWindowRateLimiter, ToolManager

from .conftest import ManualClock


def test_sliding_window_admits_limit_then_reports_retry_after(clock: ManualClock) -> None:
    limiter = SlidingWindowRateLimiter(clock)
    assert limiter.try_acquire("k", limit=2, window=10.0) is None
    clock.advance(4.0)
    assert limiter.try_acquire("k", limit=2, window=10.0) is None
    assert limiter.try_acquire("k", limit=2, window=10.0) == pytest.approx(6.0)
    clock.advance(6.0)  # the first call leaves the window
    assert limiter.try_acquire("k", limit=2, window=10.0) is None
    assert limiter.try_acquire("k", limit=2, window=10.0) == pytest.approx(4.0)
    assert limiter.in_window("k", window=10.0) == 2
    assert limiter.try_acquire("other", limit=2, window=10.0) is None  # keys are independent


def test_release_refunds_the_last_call(clock: ManualClock) -> None:
    limiter = SlidingWindowRateLimiter(clock)
    assert limiter.try_acquire("k", limit=1, window=5.0) is None
    limiter.release("k")
    assert limiter.try_acquire("k", limit=1, window=5.0) is None


async def test_rate_limited_tool_reports_retry_after(clock: ManualClock) -> None:
    async def ping() -> str:
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=2, rate_window=60.0)
    assert (await manager.execute("ping")).success
    clock.advance(10.0)
    assert (await manager.execute("ping")).success
    refused = await manager.execute("ping")
    assert not refused.success
    assert refused.error_type == "rate_limited"
    assert refused.retry_after == pytest.approx(50.0)
    assert refused.error == "tool 'ping' allows 2 calls per 60 s; retry after 50 s"
    clock.advance(50.0)
    assert (await manager.execute("ping")).success
    assert manager.get_tool_stats()["tools"]["ping"]["errors"] == {"rate_limited": 1}


async def test_exact_under_concurrency(clock: ManualClock) -> None:
    release = asyncio.Event()
    ten_running = asyncio.Event()
    running = 0
    peak = 0

    async def slow() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 10:
            ten_running.set()
        await release.wait()
        running -= 1
        return "done"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("slow", slow, "Slow", rate_limit=10, rate_window=1.0)
    tasks = [asyncio.create_task(manager.execute("slow")) for _ in range(100)]
    await ten_running.wait()
    release.set()
    results = await asyncio.gather(*tasks)
    assert sum(result.success for result in results) == 10
    refused = [result for result in results if not result.success]
    assert len(refused) == 90
    assert all(result.error_type == "rate_limited" and result.retry_after == 1.0 for result in refused)
    assert peak == 10


async def test_per_caller_key_limits_are_separate(clock: ManualClock) -> None:
    async def ping() -> str:
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=1, rate_window=60.0)
    assert (await manager.call_tool("ping", {}, caller_key="alice")).success
    assert (await manager.call_tool("ping", {}, caller_key="bob")).success
    assert (await manager.call_tool("ping", {}, caller_key="alice")).error_type == "rate_limited"
    assert (await manager.call_tool("ping", {})).success  # the shared (no key) bucket is its own


async def test_replacing_a_tool_resets_its_rate_limit(clock: ManualClock) -> None:
    async def ping() -> str:
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=1)
    assert (await manager.execute("ping")).success
    assert (await manager.execute("ping")).error_type == "rate_limited"
    manager.register_function_tool("ping", ping, "Ping v2", rate_limit=1, replace=True)
    assert (await manager.execute("ping")).success


def test_prune_forgets_keys_outside_their_window(clock: ManualClock) -> None:
    limiter = SlidingWindowRateLimiter(clock)
    for caller in ("a", "b", "c"):
        limiter.try_acquire(("ping", caller), limit=5, window=10.0)
    clock.advance(5.0)
    limiter.try_acquire(("ping", "c"), limit=5, window=10.0)
    clock.advance(6.0)
    assert limiter.prune(lambda key: 10.0) == 2  # a and b: every call left the window
    assert len(limiter) == 1
    assert limiter.prune(lambda key: None) == 1  # keys of tools that no longer exist


async def test_purge_expired_cache_also_prunes_rate_limit_state(clock: ManualClock) -> None:
    async def ping() -> str:
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=1, rate_window=10.0)
    for caller in range(50):
        await manager.call_tool("ping", {}, caller_key=f"user{caller}")
    clock.advance(11.0)
    manager.purge_expired_cache()
    assert (await manager.call_tool("ping", {}, caller_key="user1")).success


async def test_rate_limit_state_stays_bounded_without_purging(clock: ManualClock) -> None:
    """Issue 18.11: one entry per caller_key ever seen stayed until someone called
    purge_expired_cache(); a service with a key per session grew without bound."""

    async def ping() -> str:
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=1, rate_window=10.0)
    peak = 0
    for caller in range(20_000):
        result = await manager.call_tool("ping", {}, caller_key=f"session-{caller}")
        assert result.success
        clock.advance(0.01)  # 1,000 new sessions per 10 s window
        peak = max(peak, manager.get_tool_stats()["rate_limit_keys"])
    assert peak <= 2 * 1024, peak
    # the limit still holds for keys inside their window
    assert (await manager.call_tool("ping", {}, caller_key="session-19999")).error_type == "rate_limited"
    clock.advance(10.0)
    assert (await manager.call_tool("ping", {}, caller_key="session-19999")).success


def test_the_limiter_forgets_expired_keys_by_itself(clock: ManualClock) -> None:
    limiter = SlidingWindowRateLimiter(clock)
    for number in range(5_000):
        assert limiter.try_acquire(("tool", number), limit=1, window=1.0) is None
        clock.advance(0.01)
    assert len(limiter) <= 2 * 1024
    assert limiter.try_acquire(("tool", 4_999), limit=1, window=1.0) is not None  # still counted
    before = len(limiter)
    removed = limiter.prune()  # defaults to each key's own window: the last second's keys stay
    assert len(limiter) in (99, 100) and removed == before - len(limiter)


async def test_an_hourly_limit_says_when_to_retry_in_plain_seconds(clock: ManualClock) -> None:
    """``retry after 3.6e+03 s`` for an hourly limit: the wait was written in exponent notation."""

    async def send_report(to: str) -> str:
        return "sent"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("send_report", send_report, "Send", rate_limit=1, rate_window=3600.0)
    assert (await manager.execute_tool("send_report", to="ops")).success
    clock.advance(0.5)
    refused = await manager.execute_tool("send_report", to="ops")
    assert refused.error == "tool 'send_report' allows 1 call per 3600 s; retry after 3600 s"
    clock.advance(3599.45)
    refused = await manager.execute_tool("send_report", to="ops")
    assert refused.error == "tool 'send_report' allows 1 call per 3600 s; retry after 0.05 s"


async def test_a_caller_key_that_is_not_a_string_is_refused_before_anything_runs(clock: ManualClock) -> None:
    """A dict or list caller_key (a whole user record passed by mistake) raised a bare TypeError
    ("unhashable type") out of call_tool and execute_tool_calls."""
    ran: list[str] = []

    async def ping() -> str:
        ran.append("ping")
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=1, cacheable=True)
    for bad in ({"id": "alice"}, ["alice"]):
        with pytest.raises(InvalidArgumentError, match=r"^caller_key: got .*; allowed a string"):
            await manager.call_tool("ping", {}, caller_key=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match=r"^caller_key: got .*; allowed a string"):
            await manager.execute_tool_calls(
                [{"id": "c1", "name": "ping", "arguments": {}}],
                caller_key=bad,  # type: ignore[arg-type]
            )
    with pytest.raises(InvalidArgumentError, match=r"^call_id: got 7; allowed a string"):
        await manager.call_tool("ping", {}, call_id=7)  # type: ignore[arg-type]
    assert ran == []
    assert (await manager.call_tool("ping", {}, caller_key="alice")).success  # its one call was not used


async def test_a_clock_set_back_never_holds_the_window_shut_longer_than_a_window(clock: ManualClock) -> None:
    """With a clock that went back (a wall clock, ``time.time``, set back by an hour), the calls stamped
    before the jump were "in the future": a tool limited to 2 calls a minute refused every call for the
    hour and the minute, and told the model to retry after 3660 s. Such calls now count as made at the new
    time: the retry is at most a window away, and the limit holds as before."""

    async def ping() -> str:
        return "pong"

    manager = ToolManager(clock=clock)
    manager.register_function_tool("ping", ping, "Ping", rate_limit=2, rate_window=60.0)
    assert (await manager.execute("ping")).success
    assert (await manager.execute("ping")).success
    clock.now -= 3600.0  # set back an hour
    refused = await manager.execute("ping")
    assert refused.error_type == "rate_limited"
    assert refused.retry_after == pytest.approx(60.0)
    clock.advance(60.0)
    assert (await manager.execute("ping")).success
    assert (await manager.execute("ping")).success
    again = await manager.execute("ping")
    assert again.error_type == "rate_limited" and again.retry_after == pytest.approx(60.0)
