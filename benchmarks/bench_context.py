"""Context window benchmark: token counting, add_message latency and scaling, compression vs LangChain.

Run:  python benchmarks/bench_context.py [--json PATH] [--quick]

Everything is measured in one run, next to its baseline:
1. counting throughput of ExactTokenCounter vs the raw bpe-openai tokenizer (uncached: first sight of
   each text; cached: the same texts again);
2. EnhancedContextManager.add_message p50/p99 (µs) and its cost relative to the raw count of the same text,
   next to the floor of any add (one awaited call that builds the Message and counts it);
3. cost per add at 1k, 10k and 100k messages added to an 8k and a 200k window (compressions amortised),
   as the ratio to the first 1k;
4. compressing a 200k-token history to an 8k budget, and adding that history message by message to an 8k
   window, vs langchain_core.messages.trim_messages on the same messages (and whether the peer leaves
   orphaned tool messages);
5. event-loop stalls while EnhancedContextManager compresses a full 128k window: the longest step of the
   loop (CPU time of the loop's thread, which other processes on a shared machine do not inflate, and
   wall time) while the add that compresses runs and the background writer stores what it evicted.
Bounded to a few minutes on a small machine (``--quick`` for a smoke run).
"""

# No `from __future__ import annotations`: trim_messages inspects the counter's annotation at run time.

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bpe_openai import _bindings

from context_manager.core.config import ContextManagerConfig
from context_manager.core.context_window import ContextWindow
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.messages import Message, Role, ToolCall, create_plain
from context_manager.core.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_TOOL_CALL,
    ExactTokenCounter,
)

# these figures are of lexical search: the default embedder="auto" would add MiniLM where it is installed
os.environ.setdefault("PYTHON_CONTEXT_MANAGER_EMBEDDER", "none")

ENCODING = "o200k_base"
_VOCABULARY_TEXT = (
    "the deployment pipeline failed because the cache key changed after we upgraded the compiler "
    "please check invoice 4471 for Acme Corp due on March 3rd and send the summary to Dana "
    "retrieval quality improved by eight points when we added stemming and neighbour context "
    "def handler(event): return json.dumps({'status': 200, 'body': event['payload']}) "
    "東京の天気は晴れです 🙂 naïve café résumé — okay, let's continue with the migration plan"
)
VOCABULARY = _VOCABULARY_TEXT.split()


def make_text(rng: random.Random, words: int, tag: int) -> str:
    body = " ".join(rng.choice(VOCABULARY) for _ in range(words))
    return f"[{tag}] {body}."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1. counting ---------------------------------------------------------------------------------------


def bench_counting(quick: bool) -> dict[str, Any]:
    rng = random.Random(1)
    texts = [make_text(rng, rng.randint(10, 400), i) for i in range(1500 if quick else 6000)]
    raw = _bindings.tokenizer_for_encoding(ENCODING).count
    total_chars = sum(len(t) for t in texts)
    rounds = 2 if quick else 5
    best_raw = best_uncached = best_cached = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        tokens = sum(raw(t) for t in texts)
        best_raw = min(best_raw, time.perf_counter() - start)
        counter = ExactTokenCounter(ENCODING)  # empty cache: every text is seen for the first time
        count = counter.count
        start = time.perf_counter()
        for t in texts:
            count(t)
        best_uncached = min(best_uncached, time.perf_counter() - start)
        start = time.perf_counter()
        for t in texts:
            count(t)
        best_cached = min(best_cached, time.perf_counter() - start)
    return {
        "texts": len(texts),
        "tokens": tokens,
        "chars": total_chars,
        "raw_mtokens_per_s": tokens / best_raw / 1e6,
        "uncached_mtokens_per_s": tokens / best_uncached / 1e6,
        "cached_mtokens_per_s": tokens / best_cached / 1e6,
        "uncached_vs_raw": best_raw / best_uncached,
        "cached_vs_raw": best_raw / best_cached,
    }


# -- 2. add_message latency ------------------------------------------------------------------------------


async def build_and_count(count: Any, role: str, content: str) -> int:
    """What every add costs at least: the message object built (add_message's fast path) and counted."""
    create_plain(role, content, check_unicode=False)
    return int(count(content))


async def bench_add_message(quick: bool) -> dict[str, Any]:
    raw = _bindings.tokenizer_for_encoding(ENCODING).count
    results: dict[str, Any] = {}
    n = 1500 if quick else 5000
    for label, words in (("short ~20 tokens", 12), ("medium ~150 tokens", 110), ("long ~1000 tokens", 750)):
        rng = random.Random(hash(label) & 0xFFFF)
        base = [make_text(rng, words, i) for i in range(n)]
        # Both sides count the same texts, each in its own new string object: nothing the raw pass does
        # (a string keeps its UTF-8 form once a C extension asked for it) is reused by the adds.
        raw_ns = []
        for t in [t + " " for t in base]:
            start = time.perf_counter_ns()
            raw(t)
            raw_ns.append(time.perf_counter_ns() - start)
        texts = [t + " " for t in base]
        with tempfile.TemporaryDirectory() as directory:
            config = ContextManagerConfig(max_tokens=10_000_000, cache_path=directory)
            async with EnhancedContextManager(config) as manager:
                add = manager.add_message
                add_ns = []
                gc.disable()
                try:
                    for i, t in enumerate(texts):
                        role = "user" if i % 2 == 0 else "assistant"
                        start = time.perf_counter_ns()
                        await add(role, t)
                        add_ns.append(time.perf_counter_ns() - start)
                finally:
                    gc.enable()
        # Where the time goes: building the Message (validation, id) and the window's own add.
        texts = [t + " " for t in base]
        create_ns = []
        messages = []
        for i, t in enumerate(texts):
            role = "user" if i % 2 == 0 else "assistant"
            start = time.perf_counter_ns()
            messages.append(Message.create(role, t))
            create_ns.append(time.perf_counter_ns() - start)
        # The floor of any add_message in this design: one awaited call that builds the message the window
        # keeps (the public, frozen Message: create_plain is add_message's own fast path) and counts it.
        texts = [t + " " for t in base]
        floor_ns = []
        for i, t in enumerate(texts):
            role = "user" if i % 2 == 0 else "assistant"
            start = time.perf_counter_ns()
            await build_and_count(raw, role, t)
            floor_ns.append(time.perf_counter_ns() - start)
        window = ContextWindow(10_000_000)
        window_ns = []
        for message in messages:
            start = time.perf_counter_ns()
            await window.add(message)
            window_ns.append(time.perf_counter_ns() - start)
        raw_p50 = statistics.median(raw_ns) / 1000
        add_p50 = statistics.median(add_ns) / 1000
        results[label] = {
            "raw_count_p50_us": raw_p50,
            "add_message_p50_us": add_p50,
            "add_message_p99_us": percentile(add_ns, 0.99) / 1000,
            "overhead_vs_raw_count": add_p50 / raw_p50,
            "message_create_p50_us": statistics.median(create_ns) / 1000,
            "window_add_p50_us": statistics.median(window_ns) / 1000,
            "window_add_vs_raw_count": statistics.median(window_ns) / 1000 / raw_p50,
            "build_and_count_p50_us": statistics.median(floor_ns) / 1000,
            "build_and_count_vs_raw_count": statistics.median(floor_ns) / 1000 / raw_p50,
        }
    return results


# -- 3. scaling ------------------------------------------------------------------------------------------


async def bench_scaling(quick: bool) -> dict[str, Any]:
    rng = random.Random(3)
    pool = [make_text(rng, rng.randint(20, 60), i) for i in range(4000)]
    results: dict[str, Any] = {}
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    for max_tokens in (8_000, 200_000):
        per_window: dict[str, Any] = {}
        for n in sizes:
            best = float("inf")
            compressions = 0
            for run in range(2 if n >= 100_000 else 3):  # best of a few runs: the machine is shared
                # New texts on every run, so no count comes from the counter's cache.
                texts = [f"{pool[i % len(pool)]} #{run}.{i}" for i in range(n)]
                messages = [
                    Message.create("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)
                ]
                window = ContextWindow(max_tokens, compression_ratio=0.8)
                add = window.add
                take = window.take_evicted  # the consumer (the manager's writer) takes what is evicted
                gc.collect()
                start = time.perf_counter()
                for message in messages:
                    if await add(message) is not None:
                        take()
                best = min(best, time.perf_counter() - start)
                compressions = window.compression_count
                del window, messages
            per_window[f"{n}"] = {"us_per_add": best / n * 1e6, "compressions": compressions}
        first = per_window[str(sizes[0])]["us_per_add"]
        for n in sizes:
            per_window[str(n)]["vs_1k"] = per_window[str(n)]["us_per_add"] / first
        results[f"{max_tokens}"] = per_window
    return results


# -- 4. compression vs trim_messages -------------------------------------------------------------------


def build_history(target_tokens: int) -> list[Message]:
    rng = random.Random(4)
    messages = [Message.create("system", "You are a meticulous assistant for an operations team.")]
    counter = ExactTokenCounter(ENCODING)
    total = 0
    i = 0
    while total < target_tokens:
        if i % 4 == 3:
            call = ToolCall(
                id=f"call_{i}", name=rng.choice(["search", "fetch_invoice", "run_sql"]), arguments={"q": i}
            )
            unit = [
                Message.create("assistant", "", tool_calls=[call]),
                Message.create("tool", make_text(rng, rng.randint(40, 300), i), tool_call_id=call.id),
            ]
        else:
            role = "user" if i % 2 == 0 else "assistant"
            unit = [Message.create(role, make_text(rng, rng.randint(20, 200), i))]
        for message in unit:
            total += counter.count_message(message)
        messages.extend(unit)
        i += 1
    return messages


def to_langchain(messages: list[Message]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    converted: list[Any] = []
    for m in messages:
        if m.role is Role.SYSTEM:
            converted.append(SystemMessage(m.content))
        elif m.role is Role.USER:
            converted.append(HumanMessage(m.content))
        elif m.role is Role.ASSISTANT:
            converted.append(
                AIMessage(
                    m.content,
                    tool_calls=[{"id": c.id, "name": c.name, "args": c.arguments} for c in m.tool_calls],
                )
            )
        else:
            converted.append(ToolMessage(m.content, tool_call_id=m.tool_call_id))
    return converted


def orphaned_tool_messages(messages: list[Any]) -> int:
    from langchain_core.messages import AIMessage, ToolMessage

    seen: set[str] = set()
    orphans = 0
    for m in messages:
        if isinstance(m, AIMessage):
            seen.update(c["id"] for c in m.tool_calls)
        elif isinstance(m, ToolMessage) and m.tool_call_id not in seen:
            orphans += 1
    return orphans


async def bench_compression(quick: bool) -> dict[str, Any]:
    from langchain_core.messages import BaseMessage, trim_messages

    history_tokens = 200_000
    budget = 8_000
    history = build_history(history_tokens)
    raw = _bindings.tokenizer_for_encoding(ENCODING).count
    role_tokens = {"system": raw("system"), "human": raw("user"), "ai": raw("assistant"), "tool": raw("tool")}

    def count_message(message: BaseMessage) -> int:
        # The same chat-format rule as ours, on the raw tokenizer (what a user would plug in).
        total = TOKENS_PER_MESSAGE + role_tokens[message.type] + raw(message.content)  # type: ignore[arg-type]
        for call in getattr(message, "tool_calls", ()):
            total += (
                TOKENS_PER_TOOL_CALL
                + raw(call["name"])
                + raw(json.dumps(call["args"], separators=(",", ":")))
            )
        return total

    cache: dict[int, int] = {}

    def count_message_cached(message: BaseMessage) -> int:
        key = id(message)
        value = cache.get(key)
        if value is None:
            value = cache[key] = count_message(message)
        return value

    lc_history = to_langchain(history)
    rounds = 2 if quick else 5
    ours_ms: list[float] = []
    ours_cpu: list[float] = []
    record = None
    for _ in range(rounds):
        window = ContextWindow(history_tokens * 2, compression_ratio=0.8)
        for message in history:
            copy = Message(
                role=message.role,
                content=message.content,
                tool_calls=message.tool_calls,
                tool_call_id=message.tool_call_id,
            )
            await window.add(copy)
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        record = await window.compress(budget)
        ours_ms.append((time.perf_counter() - start) * 1000)
        ours_cpu.append((time.process_time() - start_cpu) * 1000)
        assert window.token_count <= budget
    peer_ms: list[float] = []
    peer_cached_ms: list[float] = []
    peer_cpu: list[float] = []
    peer_cached_cpu: list[float] = []
    trimmed: list[Any] = []
    for _ in range(rounds):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        trimmed = trim_messages(
            lc_history,
            max_tokens=budget - REPLY_PRIMING_TOKENS,
            token_counter=count_message,
            strategy="last",
            include_system=True,
            start_on="human",
        )
        peer_ms.append((time.perf_counter() - start) * 1000)
        peer_cpu.append((time.process_time() - start_cpu) * 1000)
        cache.clear()
        for m in lc_history:  # the best case for the peer: every count already known
            count_message_cached(m)
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        trim_messages(
            lc_history,
            max_tokens=budget - REPLY_PRIMING_TOKENS,
            token_counter=count_message_cached,
            strategy="last",
            include_system=True,
            start_on="human",
        )
        peer_cached_ms.append((time.perf_counter() - start) * 1000)
        peer_cached_cpu.append((time.process_time() - start_cpu) * 1000)
    # The same history added message by message to an 8k window (what a conversation replayed into the
    # window costs), against one trim_messages call with the per-message counter, interleaved.
    adds_ms: list[float] = []
    extend_ms: list[float] = []
    trim_once_ms: list[float] = []
    adds_cpu: list[float] = []  # CPU time too: other processes on a shared machine inflate wall time
    extend_cpu: list[float] = []
    trim_once_cpu: list[float] = []
    adds_compressions = 0
    for _ in range(rounds):
        copies = [
            Message(role=m.role, content=m.content, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
            for m in history
        ]
        window = ContextWindow(budget, compression_ratio=0.8)
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        for message in copies:
            await window.add(message)
        adds_ms.append((time.perf_counter() - start) * 1000)
        adds_cpu.append((time.process_time() - start_cpu) * 1000)
        adds_compressions = window.compression_count
        assert window.token_count <= budget
        copies = [
            Message(role=m.role, content=m.content, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
            for m in history
        ]
        window = ContextWindow(budget, compression_ratio=0.8)
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        await window.extend(copies)  # the history at once: counted, then one compression
        extend_ms.append((time.perf_counter() - start) * 1000)
        extend_cpu.append((time.process_time() - start_cpu) * 1000)
        assert window.token_count <= budget and window.compression_count == 1
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        trim_messages(
            lc_history,
            max_tokens=budget - REPLY_PRIMING_TOKENS,
            token_counter=count_message,
            strategy="last",
            include_system=True,
            start_on="human",
        )
        trim_once_ms.append((time.perf_counter() - start) * 1000)
        trim_once_cpu.append((time.process_time() - start_cpu) * 1000)
    plain = trim_messages(
        lc_history,
        max_tokens=budget,
        token_counter=count_message_cached,
        strategy="last",
        include_system=True,
    )
    # How often does the peer's plain "last" strategy cut between a tool call and its result?
    budgets = range(budget - 1000, budget + 1000, 20)
    orphaned_budgets = sum(
        1
        for b in budgets
        if orphaned_tool_messages(
            trim_messages(
                lc_history,
                max_tokens=b,
                token_counter=count_message_cached,
                strategy="last",
                include_system=True,
            )
        )
    )
    ours = statistics.median(ours_ms)
    peer = statistics.median(peer_ms)
    peer_cached = statistics.median(peer_cached_ms)
    assert record is not None
    return {
        "history_messages": len(history),
        "history_tokens": record.tokens_before,
        "budget": budget,
        "ours_ms": ours,
        "ours_cpu_ms": statistics.median(ours_cpu),
        "trim_messages_cpu_ms": statistics.median(peer_cpu),
        "trim_messages_counts_cached_cpu_ms": statistics.median(peer_cached_cpu),
        "ours_tokens_after": record.tokens_after,
        "ours_summary_tokens": record.summary_tokens,
        "ours_evicted": record.removed_count,
        "trim_messages_ms": peer,
        "trim_messages_counts_cached_ms": peer_cached,
        "speedup": peer / ours,
        "speedup_vs_cached_peer": peer_cached / ours,
        "peer_kept_messages": len(trimmed),
        "peer_orphans_with_start_on_human": orphaned_tool_messages(trimmed),
        "peer_orphans_plain_last": orphaned_tool_messages(plain),
        "peer_budgets_tried": len(budgets),
        "peer_budgets_with_orphans_plain_last": orphaned_budgets,
        "peer_keeps_summary_of_dropped": False,
        "history_adds_ms": statistics.median(adds_ms),
        "history_adds_compressions": adds_compressions,
        "history_trim_once_ms": statistics.median(trim_once_ms),
        "history_adds_vs_trim": statistics.median(adds_ms) / statistics.median(trim_once_ms),
        "history_extend_ms": statistics.median(extend_ms),
        "history_extend_vs_trim": statistics.median(extend_ms) / statistics.median(trim_once_ms),
        "history_adds_cpu_ms": statistics.median(adds_cpu),
        "history_extend_cpu_ms": statistics.median(extend_cpu),
        "history_trim_once_cpu_ms": statistics.median(trim_once_cpu),
        "history_adds_vs_trim_cpu": statistics.median(adds_cpu) / statistics.median(trim_once_cpu),
        "history_extend_vs_trim_cpu": statistics.median(extend_cpu) / statistics.median(trim_once_cpu),
    }


# -- 5. event-loop stalls during a compression of a 128k window -------------------------------------------


async def bench_stalls(quick: bool) -> dict[str, Any]:
    max_tokens = 128_000
    rng = random.Random(6)
    steps_cpu: list[float] = []
    steps_wall: list[float] = []
    recording = False

    async def ticker() -> None:
        while True:
            cpu, wall = time.thread_time(), time.perf_counter()
            await asyncio.sleep(0)
            if recording:
                steps_cpu.append(time.thread_time() - cpu)
                steps_wall.append(time.perf_counter() - wall)

    with tempfile.TemporaryDirectory() as directory:
        config = ContextManagerConfig(max_tokens=max_tokens, cache_path=directory)
        async with EnhancedContextManager(config) as manager:
            number = 0
            while manager.get_context_summary()["token_count"] < max_tokens - 400:
                await manager.add_message(
                    "user" if number % 2 == 0 else "assistant", make_text(rng, 110, number)
                )
                number += 1
            ticking = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            recording = True
            compress_ms: list[float] = []
            for _ in range(1 if quick else 3):
                before = manager.get_context_summary()["compression_count"]
                while manager.get_context_summary()["compression_count"] == before:
                    start = time.perf_counter()
                    await manager.add_message(
                        "user" if number % 2 == 0 else "assistant", make_text(rng, 110, number)
                    )
                    elapsed = (time.perf_counter() - start) * 1000
                    number += 1
                    await asyncio.sleep(0)  # one add per loop step, as a server handling requests would
                compress_ms.append(elapsed)
                await asyncio.sleep(0)
                start = time.perf_counter()
                await manager.flush()  # the ticker runs between the writer's batches
                flush_ms = (time.perf_counter() - start) * 1000
            recording = False
            ticking.cancel()
            history = manager.compression_history
    return {
        "max_tokens": max_tokens,
        "compressions": len(compress_ms),
        "evicted": sum(record["removed_count"] for record in history),
        "compress_add_ms": max(compress_ms),
        "flush_ms": flush_ms,
        "max_step_cpu_ms": max(steps_cpu) * 1000,
        "max_step_wall_ms": max(steps_wall) * 1000,
        "steps": len(steps_cpu),
    }


async def bench_megabyte_stalls(quick: bool) -> dict[str, Any]:
    """The longest wall-clock loop step while megabytes of text go through the window.

    Wall time, not the loop thread's CPU time: the tokenizer holds the interpreter while it counts, so a
    worker thread counting megabytes stalls the loop's thread without using its CPU.
    """
    from context_manager.core.tool_system import ToolManager
    from context_manager.core.tool_system.window_calls import execute_tool_calls_in_window

    steps: list[float] = []

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0)
            steps.append(time.perf_counter() - started)

    rows = 10_000 if quick else 30_000
    output = "".join(f"row {i}: status ok, latency {i % 97} ms, region eu-{i % 5}\n" for i in range(rows))

    async def dump(part: int) -> str:
        """Return a megabyte of log rows."""
        return f"part {part}\n" + output

    tools = ToolManager()
    tools.register_function_tool("dump", dump, "Dump logs", max_output_tokens=800)
    window = ContextWindow(max_tokens=8000, counter=ExactTokenCounter(ENCODING))
    outputs = 2 if quick else 8
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    for part in range(outputs):
        call = ToolCall(id=f"d{part}", name="dump", arguments={"part": part})
        await execute_tool_calls_in_window(tools, window, [call])
    ticking.cancel()
    tool_output_ms = max(steps) * 1000

    async def plain_summary(messages: list[Message], budget: int) -> str:
        await asyncio.sleep(0.01)
        return "summary of a long paste"

    words = 100_000 if quick else 300_000
    pasted = " ".join(f"w{i} lorem{i % 97} ipsum" for i in range(words))
    steps.clear()
    with tempfile.TemporaryDirectory() as directory:
        config = ContextManagerConfig(max_tokens=4000, cache_path=directory, enable_health_checks=False)
        async with EnhancedContextManager(config, summarizer=plain_summary) as manager:
            batch = [{"role": "user", "content": pasted}]
            batch += [{"role": "user", "content": f"short {i}"} for i in range(10)]
            ticking = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            await manager.add_messages(batch)
            await manager.flush()  # the evicted paste written to memory, the ticker running meanwhile
            ticking.cancel()
    return {
        "tool_outputs": outputs,
        "tool_output_chars": len(output),
        "tool_output_max_step_wall_ms": tool_output_ms,
        "pasted_chars": len(pasted),
        "pasted_max_step_wall_ms": max(steps) * 1000,
    }


# -- report --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()

    load_before = os.getloadavg()  # the machine may be shared: report the load next to the figures
    started = time.perf_counter()
    counting = bench_counting(args.quick)
    adds = asyncio.run(bench_add_message(args.quick))
    scaling = asyncio.run(bench_scaling(args.quick))
    compression = asyncio.run(bench_compression(args.quick))
    stalls = asyncio.run(bench_stalls(args.quick))
    megabytes = asyncio.run(bench_megabyte_stalls(args.quick))

    load_after = os.getloadavg()
    print(
        f"Context window benchmark ({ENCODING}, Python {sys.version.split()[0]}"
        f"{', quick run' if args.quick else ''}; load average "
        f"{' / '.join(f'{value:.2f}' for value in load_before)} before, "
        f"{' / '.join(f'{value:.2f}' for value in load_after)} after)\n"
    )
    print("1. Token counting (best of rounds)")
    print(f"   {counting['texts']} distinct texts, {counting['tokens']:,} tokens")
    print(f"   raw bpe-openai count     {counting['raw_mtokens_per_s']:8.2f} Mtok/s")
    print(
        f"   ExactTokenCounter uncached {counting['uncached_mtokens_per_s']:6.2f} Mtok/s"
        f"  = {counting['uncached_vs_raw']:.2f}x raw (target >= 0.90x)"
    )
    print(
        f"   ExactTokenCounter cached   {counting['cached_mtokens_per_s']:6.2f} Mtok/s"
        f"  = {counting['cached_vs_raw']:.1f}x raw"
    )
    print("\n2. EnhancedContextManager.add_message (no compression; distinct texts)")
    print(
        f"   {'size':<20}{'raw count':>10}{'add p50':>10}{'add p99':>10}{'add/raw':>9}"
        f"{'Message.create':>16}{'window.add':>12}{'window/raw':>12}{'floor/raw':>11}"
    )
    for label, row in adds.items():
        print(
            f"   {label:<20}{row['raw_count_p50_us']:>8.1f}µs{row['add_message_p50_us']:>8.1f}µs"
            f"{row['add_message_p99_us']:>8.1f}µs{row['overhead_vs_raw_count']:>8.2f}x"
            f"{row['message_create_p50_us']:>14.1f}µs{row['window_add_p50_us']:>10.1f}µs"
            f"{row['window_add_vs_raw_count']:>11.2f}x{row['build_and_count_vs_raw_count']:>10.2f}x"
        )
    print(
        "   target: add/raw <= 1.50x at every size, <= 1.30x from ~150 tokens "
        "(p50 of each; window.add includes the exact count)"
    )
    print("   floor: one awaited call that builds the Message (add_message's fast path) and counts its text")
    print("\n3. Cost per add (ContextWindow.add, compressions amortised; evicted messages queued)")
    for window_size, rows in scaling.items():
        print(f"   {int(window_size):,}-token window")
        for n, row in rows.items():
            print(
                f"   {int(n):>9,} adds  {row['us_per_add']:7.2f} µs/add  {row['vs_1k']:.2f}x the 1k figure"
                f"  ({row['compressions']} compressions)"
            )
    print("   target: 100k within 1.5x of 1k at both sizes")
    c = compression
    print(
        f"\n4. Compress {c['history_tokens']:,} tokens ({c['history_messages']} messages) to {c['budget']:,}"
    )
    print(
        f"   ContextWindow.compress        {c['ours_ms']:8.2f} ms  -> {c['ours_tokens_after']} tokens "
        f"({c['ours_evicted']} evicted, summary {c['ours_summary_tokens']} tokens, units kept whole)"
    )
    print(
        f"   trim_messages (raw counter)   {c['trim_messages_ms']:8.2f} ms  = {c['speedup']:.1f}x slower "
        "(target >= 5x)"
    )
    print(
        f"   trim_messages (counts cached) {c['trim_messages_counts_cached_ms']:8.2f} ms  "
        f"= {c['speedup_vs_cached_peer']:.2f}x our time (best case for the peer: counts known, no summary)"
    )
    print(
        f"   CPU time (less sensitive to a busy machine): ours {c['ours_cpu_ms']:.2f} ms, "
        f"trim_messages {c['trim_messages_cpu_ms']:.2f} ms, counts cached "
        f"{c['trim_messages_counts_cached_cpu_ms']:.2f} ms"
    )
    print(
        f"   peer orphaned tool messages: {c['peer_orphans_plain_last']} with strategy='last', "
        f"{c['peer_orphans_with_start_on_human']} with start_on='human'; "
        "the peer keeps no summary of what it drops"
    )
    print(
        f"   over {c['peer_budgets_tried']} budgets from 7,000 to 9,000 tokens, strategy='last' left an "
        f"orphaned tool result for {c['peer_budgets_with_orphans_plain_last']} "
        "(ours: never, by construction and test)"
    )
    print(
        f"   the history added message by message to an 8k window: {c['history_adds_ms']:.1f} ms "
        f"({c['history_adds_compressions']} compressions) against {c['history_trim_once_ms']:.1f} ms for one "
        f"trim_messages call = {c['history_adds_vs_trim']:.2f}x (target < 1x)"
    )
    print(
        f"   the history added at once (ContextWindow.extend, one compression): {c['history_extend_ms']:.1f} "
        f"ms = {c['history_extend_vs_trim']:.2f}x one trim_messages call"
    )
    print(
        f"   same, CPU time: one add at a time {c['history_adds_cpu_ms']:.1f} ms, at once "
        f"{c['history_extend_cpu_ms']:.1f} ms, trim_messages {c['history_trim_once_cpu_ms']:.1f} ms = "
        f"{c['history_adds_vs_trim_cpu']:.2f}x / {c['history_extend_vs_trim_cpu']:.2f}x"
    )
    s = stalls
    print(f"\n5. Event loop while EnhancedContextManager compresses a full {s['max_tokens']:,}-token window")
    print(
        f"   {s['compressions']} compressions evicting {s['evicted']} messages; "
        f"the background writer stored them in {s['flush_ms']:.0f} ms"
    )
    print(
        f"   longest loop step: {s['max_step_cpu_ms']:.1f} ms of the loop thread's CPU time "
        f"(wall {s['max_step_wall_ms']:.1f} ms); the add that compressed: {s['compress_add_ms']:.1f} ms "
        "(target: no stall over 20 ms)"
    )
    m = megabytes
    print("\n6. Event loop while megabytes of text go through the window (wall clock)")
    print(
        f"   {m['tool_outputs']} tool outputs of {m['tool_output_chars'] / 1e6:.1f} MB cut to 800 tokens "
        f"(execute_tool_calls): longest loop step {m['tool_output_max_step_wall_ms']:.1f} ms"
    )
    print(
        f"   a pasted message of {m['pasted_chars'] / 1e6:.1f} MB added, evicted and written to memory: "
        f"longest loop step {m['pasted_max_step_wall_ms']:.1f} ms (target: no stall over 20 ms)"
    )
    elapsed = time.perf_counter() - started
    print(f"\n(total {elapsed:.1f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "load_before": list(load_before),
                    "load_after": list(load_after),
                    "counting": counting,
                    "add_message": adds,
                    "scaling": scaling,
                    "compression": compression,
                    "stalls": stalls,
                    "megabytes": megabytes,
                    "seconds": elapsed,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
