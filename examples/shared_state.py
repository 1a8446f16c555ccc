"""Shared state: a conversation resumed by another process after a crash, and two workers on one conversation.

Give the manager a ``conversation_id`` and every change to its window is stored as it happens; a manager
opened later with the same id, in any process, resumes it. The first example kills a worker process with
``kill -9`` in the middle of a conversation and resumes it here (embedded SQLite storage, no server). The
second runs two workers on one conversation: by default two managers of this process on the embedded
storage (as two concurrent requests of one web worker would), and when
``CONTEXT_MANAGER_EXAMPLES_POSTGRES_DSN`` names a server, two managers with their own pools on PostgreSQL
(as workers in several processes would).
That variable is the example's own: ``PYTHON_CONTEXT_MANAGER_POSTGRES_DSN`` names your application's
database, which the examples never write to.

Run alone with ``python examples/shared_state.py [--verbose]`` or through ``main_example.py shared``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid

from _common import ExampleContext, ExampleFailure, example_context, expect

from context_manager import ContextManagerConfig, ConversationConflictError, EnhancedContextManager

WINDOW_TOKENS = 400
EXAMPLES_POSTGRES_DSN = "CONTEXT_MANAGER_EXAMPLES_POSTGRES_DSN"
"""A PostgreSQL server for the two workers, given to this example only (the library never reads it)."""

WORKER = f"""
import asyncio, json, os, signal, sys
from context_manager import ContextManagerConfig, EnhancedContextManager

async def main(storage, out):
    config = ContextManagerConfig(cache_path=storage, max_tokens={WINDOW_TOKENS})
    manager = EnhancedContextManager(config, conversation_id="ticket-1042")
    await manager.initialize()
    await manager.add_message("system", "You are a support assistant for an online bicycle shop.")
    await manager.add_message("user", "My order 1042 shipped with tracking number TRK-88231-PT.")
    await manager.add_message("assistant", "Thanks! I can see order 1042 on its way to Lisbon.")
    for turn in range(20):
        await manager.add_message("user", f"Question {{turn}}: may the courier leave it with a neighbour?")
        await manager.add_message("assistant", f"Answer {{turn}}: yes, if you add a note with the name.")
    with open(out, "w") as file:  # what this worker would have sent to the model next
        json.dump({{"export": manager.get_context(format="openai"),
                   "compressions": len(manager.compression_history),
                   "version": manager.conversation_version, "pid": os.getpid()}}, file)
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # a crash: no cleanup(), no flush()

asyncio.run(main(*sys.argv[1:]))
"""


async def resume_after_a_crash(ctx: ExampleContext) -> None:
    ctx.section("A conversation resumed in another process after kill -9")
    storage = ctx.storage("conversations")
    out = storage / "worker.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, str(storage), str(out), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    killed = -getattr(signal, "SIGKILL", signal.SIGTERM)
    expect(process.returncode == killed, f"the worker should have been killed: {stderr.decode()[-2000:]}")
    written = json.loads(out.read_text(encoding="utf-8"))
    ctx.ok(
        f"worker process {written['pid']} stored {written['version']} changes of 'ticket-1042' "
        f"({written['compressions']} compressions) and was killed without closing anything"
    )
    expect(written["compressions"] > 0, "the worker's conversation should have outgrown its window")

    config = ContextManagerConfig(cache_path=storage, max_tokens=WINDOW_TOKENS)
    async with EnhancedContextManager(config, conversation_id="ticket-1042") as manager:
        expect(
            manager.get_context(format="openai") == written["export"],
            "the resumed window must export exactly what the worker would have sent",
        )
        expect(
            len(manager.compression_history) == written["compressions"],
            "the compression history must be resumed too",
        )
        ctx.ok(
            f"resumed in this process (pid {os.getpid()}): get_context() exports the same "
            f"{len(written['export'])} messages, compression_history has the same "
            f"{written['compressions']} entries"
        )
        ctx.detail(manager.get_context(format="openai"))
        # the message about the tracking number was compressed out of the window before the crash: the
        # resumed manager writes every evicted message memory may not have stored yet
        results = await manager.search_memory("tracking number of order 1042", limit=1)
        expect(
            bool(results) and "TRK-88231-PT" in results[0].content,
            "the message evicted before the crash must be found in memory",
        )
        ctx.ok(f"evicted before the crash, recalled from memory: {results[0].content!r}")
        await manager.add_message("user", "Thanks, that's all for today.")
        conversations = await manager.list_conversations()
        ctx.ok(
            f"the conversation goes on here: version {manager.conversation_version}; stored conversations: "
            f"{[row['conversation_id'] for row in conversations]}"
        )


async def add_with_retry(manager: EnhancedContextManager, role: str, content: str) -> int:
    """Add a message; on a conflict (another worker wrote first) try again. Returns the conflicts met."""
    for attempt in range(5):
        try:
            await manager.add_message(role, content)
            return attempt
        except ConversationConflictError:
            continue  # the window now holds what storage holds, the other worker's message included
    raise ExampleFailure("the conversation kept changing under this worker")


async def two_workers(ctx: ExampleContext) -> None:
    dsn = os.environ.get(EXAMPLES_POSTGRES_DSN)
    conversation = f"chat-{uuid.uuid4().hex[:8]}"
    if dsn:
        ctx.section("Two workers on one conversation (PostgreSQL)")
    else:
        # A storage directory belongs to one process; the managers of that process (one event loop, the
        # same memory settings) share it, as the requests of one web worker would. Across processes or
        # hosts, PostgreSQL: set CONTEXT_MANAGER_EXAMPLES_POSTGRES_DSN (see docs/postgres.md).
        ctx.section("Two workers on one conversation (two managers of this process, embedded storage)")
    shared = ctx.storage("two-workers")

    def config(worker: str) -> ContextManagerConfig:
        if not dsn:
            return ContextManagerConfig(cache_path=shared, max_tokens=WINDOW_TOKENS)
        return ContextManagerConfig(
            memory_backend="postgres",
            postgres_dsn=dsn,
            postgres_pool_size=2,
            cache_path=ctx.storage(worker),
            max_tokens=WINDOW_TOKENS,
        )

    async with (
        EnhancedContextManager(config("worker-a"), conversation_id=conversation) as first,
        EnhancedContextManager(config("worker-b"), conversation_id=conversation) as second,
    ):
        await first.add_message("user", "Hello, I'd like to return a helmet.")
        try:
            await second.add_message("assistant", "Of course: which order is it from?")
        except ConversationConflictError as error:
            ctx.ok(f"worker B wrote on a stale version: {type(error).__name__}, nothing of it stored")
            ctx.detail(str(error))
        else:
            raise ExampleFailure("worker B's stale write must be refused")
        expect(
            [m.content for m in second.messages] == ["Hello, I'd like to return a helmet."],
            "after the refusal, worker B's window must hold what storage holds",
        )
        conflicts = await add_with_retry(second, "assistant", "Of course: which order is it from?")
        await first.reload()  # see worker B's answer before going on
        expect(
            [m.content for m in first.messages] == [m.content for m in second.messages],
            "both workers must see the same conversation",
        )
        ctx.ok(
            f"worker B made its change again ({conflicts} more conflicts) and worker A reloaded: both hold "
            f"{len(first.messages)} messages at version {first.conversation_version}"
        )
        deleted = await first.delete_conversation(conversation)
        expect(deleted, "the example's conversation must be deleted at the end")


async def run(ctx: ExampleContext) -> None:
    """Run every shared-state example."""
    await resume_after_a_crash(ctx)
    await two_workers(ctx)


if __name__ == "__main__":
    with example_context(verbose="--verbose" in sys.argv[1:]) as context:
        asyncio.run(run(context))
