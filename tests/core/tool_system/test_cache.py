from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.tool_system import ToolManager, ToolResult, ToolResultCache
from tests.loop_support import longest_loop_step as _longest_loop_step

from .conftest import ManualClock


def make_manager(clock: ManualClock, **config: Any) -> tuple[ToolManager, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    async def lookup(key: str, limit: int = 3) -> dict[str, Any]:
        calls.append({"key": key, "limit": limit})
        if key == "fail":
            raise ValueError("no such key")
        return {"key": key, "values": list(range(limit))}

    manager = ToolManager(ContextManagerConfig(**config), clock=clock)
    manager.register_function_tool("lookup", lookup, "Lookup", cacheable=True, cache_ttl=30.0)
    return manager, calls


async def test_hit_returns_cached_copy_without_running(clock: ManualClock) -> None:
    manager, calls = make_manager(clock)
    first = await manager.execute("lookup", key="a", limit=2)
    second = await manager.execute("lookup", limit="2", key="a")  # same validated arguments
    assert first.success and not first.cached
    assert second.success and second.cached
    assert second.result == first.result
    assert len(calls) == 1
    second.result["values"].append(99)  # mutating a result does not change the cache
    third = await manager.execute("lookup", key="a", limit=2)
    assert third.result == {"key": "a", "values": [0, 1]}
    stats = manager.get_tool_stats()
    assert stats["tools"]["lookup"]["cache_hits"] == 2
    assert stats["cache"]["hits"] == 2


async def test_different_arguments_miss(clock: ManualClock) -> None:
    manager, calls = make_manager(clock)
    await manager.execute("lookup", key="a")
    await manager.execute("lookup", key="b")
    await manager.execute("lookup", key="a", limit=4)
    assert len(calls) == 3


async def test_ttl_expiry(clock: ManualClock) -> None:
    manager, calls = make_manager(clock)
    await manager.execute("lookup", key="a")
    clock.advance(29.9)
    assert (await manager.execute("lookup", key="a")).cached
    clock.advance(0.2)
    assert not (await manager.execute("lookup", key="a")).cached
    assert len(calls) == 2


async def test_failures_are_not_cached(clock: ManualClock) -> None:
    manager, calls = make_manager(clock)
    first = await manager.execute("lookup", key="fail")
    second = await manager.execute("lookup", key="fail")
    assert first.error_type == second.error_type == "tool_error"
    assert not second.cached
    assert len(calls) == 2


async def test_caching_disabled_by_config(clock: ManualClock) -> None:
    manager, calls = make_manager(clock, enable_tool_caching=False)
    await manager.execute("lookup", key="a")
    assert not (await manager.execute("lookup", key="a")).cached
    assert len(calls) == 2


async def test_non_cacheable_tool_runs_every_time(clock: ManualClock) -> None:
    count = 0

    async def counter() -> int:
        nonlocal count
        count += 1
        return count

    manager = ToolManager(clock=clock)
    manager.register_tool(counter)
    assert [(await manager.execute("counter")).result for _ in range(3)] == [1, 2, 3]


async def test_invalidate_and_purge(clock: ManualClock) -> None:
    manager, calls = make_manager(clock)
    await manager.execute("lookup", key="a")
    await manager.execute("lookup", key="b")
    assert manager.invalidate_cache("other") == 0
    assert manager.invalidate_cache("lookup") == 2
    await manager.execute("lookup", key="a")
    assert len(calls) == 3
    assert manager.invalidate_cache() == 1
    await manager.execute("lookup", key="c")
    clock.advance(31.0)
    assert manager.purge_expired_cache() == 1
    assert manager.get_tool_stats()["cache"]["entries"] == 0


async def test_cache_hits_do_not_count_against_rate_limit(clock: ManualClock) -> None:
    async def pure(x: int) -> int:
        return x

    manager = ToolManager(clock=clock)
    manager.register_function_tool("pure", pure, "", cacheable=True, rate_limit=1)
    assert (await manager.execute("pure", x=1)).success
    for _ in range(5):
        assert (await manager.execute("pure", x=1)).cached
    assert (await manager.execute("pure", x=2)).error_type == "rate_limited"


def test_lru_bound(clock: ManualClock) -> None:
    cache = ToolResultCache(max_entries=2, clock=clock)
    cache.put("t", "1", "1", 60.0)
    cache.put("t", "2", "2", 60.0)
    assert cache.lookup("t", "1") == (True, 1)  # 1 is now the most recently used
    cache.put("t", "3", "3", 60.0)
    assert cache.lookup("t", "2") == (False, None)
    assert cache.lookup("t", "1") == (True, 1)
    assert cache.lookup("t", "3") == (True, 3)
    assert len(cache) == 2


async def test_unregister_drops_cached_results(clock: ManualClock) -> None:
    manager, _ = make_manager(clock)
    await manager.execute("lookup", key="a")
    manager.unregister_tool("lookup")
    assert manager.get_tool_stats()["cache"]["entries"] == 0


async def test_manager_cache_is_a_bounded_lru(clock: ManualClock) -> None:
    ran: list[int] = []

    async def square(x: int) -> int:
        ran.append(x)
        return x * x

    manager = ToolManager(clock=clock, cache_size=2)
    manager.register_function_tool("square", square, "Square", cacheable=True)
    for x in (1, 2, 1, 3):  # 1 is used again before 3 arrives, so 2 is the least recently used
        await manager.execute("square", x=x)
    assert manager.get_tool_stats()["cache"]["entries"] == 2
    assert (await manager.execute("square", x=1)).cached
    assert (await manager.execute("square", x=3)).cached
    assert not (await manager.execute("square", x=2)).cached
    assert ran == [1, 2, 3, 2]


async def test_large_arguments_and_results_do_not_pile_up_in_the_cache() -> None:
    """The cache kept up to ``cache_size`` (1,024) entries whatever their size: each key was the whole JSON of
    the arguments and each entry the whole result, so a cacheable tool reading 1 MB documents held about
    2 MB per call (150 calls: over 300 MB) until entries were evicted by count."""
    calls: list[int] = []

    async def annotate(text: str) -> dict[str, Any]:
        calls.append(len(text))
        return {"spaces": text.count(" "), "annotated": text.upper()}

    manager = ToolManager(ContextManagerConfig(enable_tool_caching=True))
    manager.register_function_tool("annotate", annotate, "Annotate a document", cacheable=True)
    documents = [f"document {index} " + "word " * 200_000 for index in range(150)]  # about 1 MB each
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for document in documents:
            assert (await manager.execute_tool("annotate", text=document)).success
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 100_000_000, f"{held / 1e6:.0f} MB held by the cache"
    repeat = await manager.execute_tool("annotate", text=documents[-1])  # recent results are still cached
    assert repeat.cached and repeat.result["spaces"] == 200_002
    other = await manager.execute_tool("annotate", text=documents[-1] + " more")  # a different key: runs
    assert not other.cached and len(calls) == 151


async def test_a_result_holding_tuples_is_the_same_from_the_tool_and_the_cache(clock: ManualClock) -> None:
    """The first call returned the tool's tuples, a cache hit lists (JSON has no tuples): the same call gave
    ``(48.85, 2.35)`` and then ``[48.85, 2.35]``, which compare unequal."""

    async def locate(city: str) -> dict[str, Any]:
        return {"city": city, "position": (48.85, 2.35), "neighbours": [("Versailles", 17)]}

    manager = ToolManager(ContextManagerConfig(), clock=clock)
    manager.register_function_tool("locate", locate, "Locate a city", cacheable=True)
    first = await manager.execute_tool("locate", city="Paris")
    second = await manager.execute_tool("locate", city="Paris")
    assert not first.cached and second.cached
    assert (
        first.result
        == second.result
        == {
            "city": "Paris",
            "position": [48.85, 2.35],
            "neighbours": [["Versailles", 17]],
        }
    )
    pair = manager.register_function_tool("pair", lambda: (1, 2), "A pair")
    assert (await manager.execute_tool(pair.name)).result == [1, 2]


async def test_a_cache_hit_on_a_large_result_does_not_hold_the_event_loop() -> None:
    """A hit decoded the whole cached JSON text on the event loop, and ``to_content()`` encoded the copy
    again: for 300,000 rows the loop stood still for 0.7-0.8 s on every hit (the miss, encoded in a worker
    thread, held it a few ms). A 30 MB text result was encoded on the miss and decoded on every hit, both
    on the loop. Large hits are now decoded in a worker thread in pieces, the cached text is reused for the
    tool message, and a text result is kept as it is (a string cannot be changed by its caller)."""
    rows: list[Any] = [
        {"id": n, "name": f"customer {n}", "score": n * 0.5, "tags": ["a", "b"], "when": None}
        for n in range(300_000)
    ]
    page = "lorem ipsum " * 2_500_000  # 30 MB of text

    async def query(shape: str) -> Any:
        return {"count": len(rows), "rows": rows} if shape == "rows" else page

    manager = ToolManager(ContextManagerConfig(enable_tool_caching=True))
    manager.register_function_tool("query", query, "Query customers", cacheable=True)

    async def call(shape: str) -> tuple[ToolResult, str]:
        result = await manager.execute_tool("query", shape=shape)
        return result, result.to_content()  # the tool message's text, as the context window takes it

    async def hit_holds_the_loop(shape: str) -> float:
        (first, first_text), _ = await _longest_loop_step(lambda: call(shape))
        longest = float("inf")
        for _ in range(3):  # the best of three: a step of the shared machine's own passes another run
            (hit, hit_text), step = await _longest_loop_step(lambda: call(shape))
            longest = min(longest, step)
            assert hit.cached and hit.result == first.result and hit_text == first_text
        return longest

    longest = await hit_holds_the_loop("rows")
    assert longest < 0.030, f"a hit on 300,000 rows held the loop {longest * 1000:.0f} ms"
    hit, _ = await call("rows")
    hit.result["rows"][0]["name"] = "changed"  # each hit is still a copy of its own
    again, text = await call("rows")
    assert again.cached and again.result["rows"][0]["name"] == "customer 0"
    assert text == json.dumps({"count": len(rows), "rows": rows}, ensure_ascii=False)
    longest = await hit_holds_the_loop("page")
    assert longest < 0.015, f"a hit on a 30 MB text held the loop {longest * 1000:.0f} ms"
    assert (await call("page"))[1] == page


async def test_a_result_of_megabytes_of_text_in_few_values_does_not_hold_the_event_loop() -> None:
    """Only results of many values went to a worker thread: a file reader's ``{"path": ..., "content": ...}``
    with 20 MB of text was encoded on the event loop on the miss (about 50 ms) and decoded there on every
    hit (200 ms for text with quotes, backslashes and line breaks, each an escape in JSON). Long texts
    now count by their length, and are encoded and decoded in slices in the thread."""
    content = 'línea "citada" con \\ barra\t\x01 🙂\n' * 600_000  # 20 MB, with every kind of escape

    async def read_file(path: str) -> dict[str, Any]:
        return {"path": path, "size": len(content), "content": content, "lines": [content[:80]] * 3}

    manager = ToolManager(ContextManagerConfig(enable_tool_caching=True))
    manager.register_function_tool("read_file", read_file, "Read a file", cacheable=True)

    async def call() -> tuple[ToolResult, str]:
        result = await manager.execute_tool("read_file", path="/var/log/app.log")
        return result, result.to_content()

    expected = json.dumps(await read_file("/var/log/app.log"), ensure_ascii=False)
    steps: list[float] = []
    for _ in range(3):  # the best of three: a step of the shared machine's own passes another run
        manager.invalidate_cache()
        (miss, miss_text), miss_step = await _longest_loop_step(call)
        (hit, hit_text), hit_step = await _longest_loop_step(call)
        assert not miss.cached and hit.cached and miss_text == hit_text == expected
        assert hit.result == miss.result and hit.result["content"] == content
        steps.append(max(miss_step, hit_step))
        if steps[-1] < 0.030:
            break
    assert min(steps) < 0.030, f"the loop was held {min(steps) * 1000:.0f} ms"


async def test_a_call_running_when_the_cache_is_invalidated_does_not_cache_its_stale_result() -> None:
    """``invalidate_cache`` after the data changed (a price updated) while a call was running: the call,
    which read the old price, stored its result when it ended, and every later call was answered the
    stale price from the cache for the whole TTL. A result of a call that started before an invalidation
    of its tool (or of all tools) is returned to its caller but no longer cached."""
    import asyncio

    prices = {"tea": 1}
    gate = asyncio.Event()

    async def price(item: str) -> int:
        value = prices[item]
        await gate.wait()
        return value

    manager = ToolManager(ContextManagerConfig(enable_tool_caching=True))
    manager.register_function_tool("price", price, "Price of an item", cacheable=True)
    for invalidate in (lambda: manager.invalidate_cache("price"), manager.invalidate_cache):
        gate.clear()
        running = asyncio.create_task(manager.execute_tool("price", item="tea"))
        await asyncio.sleep(0.01)
        prices["tea"] += 1
        invalidate()
        gate.set()
        assert (await running).result == prices["tea"] - 1  # what it read, for its own caller
        fresh = await manager.execute_tool("price", item="tea")
        assert (fresh.result, fresh.cached) == (prices["tea"], False)
        again = await manager.execute_tool("price", item="tea")
        assert (again.result, again.cached) == (prices["tea"], True)  # results cache as before


async def test_invalidating_many_tool_names_holds_bounded_memory_and_keeps_stale_results_out() -> None:
    """The cache kept one invalidation counter per tool name it was ever asked to invalidate, forever:
    tools registered and removed by the thousand (one per session: unregistering invalidates), or
    ``invalidate_cache(name)`` over many names, grew it without end. It now remembers the most recent
    1,024 names; a call that began before an invalidation it has forgotten still does not store its result
    (the stale-result rule holds), and calls begun later cache as before."""
    import asyncio

    manager = ToolManager(ContextManagerConfig(enable_tool_caching=True))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(50_000):
            manager.invalidate_cache(f"session-{index:06d}-search-tool")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held / 1e6:.1f} MB held for invalidated tool names"

    prices = {"tea": 1}
    gate = asyncio.Event()

    async def price(item: str) -> int:
        value = prices[item]
        await gate.wait()
        return value

    manager.register_function_tool("price", price, "Price of an item", cacheable=True)
    running = asyncio.create_task(manager.execute_tool("price", item="tea"))
    await asyncio.sleep(0.01)
    prices["tea"] += 1
    manager.invalidate_cache("price")
    for index in range(2_000):  # enough names for the cache to forget the one of "price"
        manager.invalidate_cache(f"other-{index}")
    gate.set()
    assert (await running).result == prices["tea"] - 1
    fresh = await manager.execute_tool("price", item="tea")
    assert (fresh.result, fresh.cached) == (prices["tea"], False)
    again = await manager.execute_tool("price", item="tea")
    assert (again.result, again.cached) == (prices["tea"], True)


async def test_a_clock_set_back_does_not_keep_cached_results_past_their_ttl(clock: ManualClock) -> None:
    """With a clock that went back (a wall clock set back by an hour), an entry stored before the jump
    expired at its old time: a result cached for 30 s was served, stale, for an hour and 30 s. An entry
    stored "after now" is expired now: the tool runs again, and its new result caches as before."""
    manager, calls = make_manager(clock)
    assert not (await manager.execute("lookup", key="a")).cached
    assert (await manager.execute("lookup", key="a")).cached
    clock.now -= 3600.0
    assert not (await manager.execute("lookup", key="a")).cached
    assert (await manager.execute("lookup", key="a")).cached
    clock.advance(30.0)
    assert not (await manager.execute("lookup", key="a")).cached
    assert len(calls) == 3
    clock.now -= 100.0
    assert manager.purge_expired_cache() == 1


async def test_invalidating_the_cache_of_a_name_that_is_not_a_string_is_refused(clock: ManualClock) -> None:
    """``invalidate_cache(["lookup"])`` raised a bare ``TypeError`` (unhashable list) and
    ``invalidate_cache(7)`` dropped nothing and said nothing; both are ``InvalidArgumentError`` now, and the
    cache is left as it was."""
    from context_manager.core.errors import InvalidArgumentError

    manager, calls = make_manager(clock)
    await manager.execute("lookup", key="a")
    for name in (["lookup"], 7, b"lookup"):
        with pytest.raises(InvalidArgumentError, match=r"name: got .*; allowed a tool name \(a string\)"):
            manager.invalidate_cache(name)  # type: ignore[arg-type]
    assert (await manager.execute("lookup", key="a")).cached
    assert manager.invalidate_cache("lookup") == 1
