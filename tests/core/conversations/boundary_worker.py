"""A process writing a conversation whose compressions meet tool calls and pins (test_resume_boundaries.py).

Usage: python boundary_worker.py STORAGE DSN|- PHASE

``write``: a pinned message, a call answered, the same call id made again (the window holds it as
``call_0~2``) and left unanswered, a pinned assistant call, turns that compress around them; prints the
fingerprint and ``pending_tool_calls()``, then kills itself with SIGKILL (no cleanup).
``resume``: resumes, prints what it loaded, answers the call by the id the model gave (``call_0``),
unpins, compresses, prints the fingerprint, closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from conversation_worker import config_for, fingerprint  # type: ignore[import-not-found]

from context_manager import EnhancedContextManager


def report(manager: EnhancedContextManager, **extra: Any) -> None:
    state = {
        "export": fingerprint(manager),
        "pending": [call.id for call in manager.pending_tool_calls()],
        "pinned": [m.content for m in manager.messages if m.pinned],
        "count": manager.get_context_summary()["compression_count"],
        "version": manager.conversation_version,
    }
    print(json.dumps({**state, **extra}), flush=True)


async def write(storage: str, dsn: str) -> None:
    manager = EnhancedContextManager(config_for(storage, dsn), conversation_id="edge")
    await manager.initialize()
    await manager.add_message("user", "pin me: the account id is 7781 and it must stay in the prompt")
    manager.pin_message(manager.messages[-1].id)
    call = [{"id": "call_0", "name": "lookup", "arguments": {"account": 7781}}]
    await manager.add_message("assistant", "", tool_calls=call)
    await manager.add_message("tool", "account 7781: active", tool_call_id="call_0")
    for turn in range(12):
        await manager.add_message("user", f"turn {turn}: the parcel {turn} waits at gate {turn % 5} today")
    await manager.add_message("assistant", "", tool_calls=call)  # the server numbers calls per response
    manager.pin_message(manager.messages[-1].id)  # a pinned unanswered call
    for turn in range(12, 80):
        await manager.add_message("user", f"turn {turn}: the parcel {turn} waits at gate {turn % 5} today")
    await manager.flush()
    report(manager)
    os.kill(os.getpid(), signal.SIGKILL)


async def resume(storage: str, dsn: str) -> None:
    async with EnhancedContextManager(config_for(storage, dsn), conversation_id="edge") as manager:
        report(manager, phase="loaded")
        await manager.add_message("tool", "account 7781: closed yesterday", tool_call_id="call_0")
        for message in manager.messages:
            if message.pinned:
                manager.unpin_message(message.id)
        await manager.flush()
        await manager.compress_context(target_tokens=150)
        for turn in range(80, 88):
            await manager.add_message("user", f"turn {turn}: the parcel {turn} waits at gate {turn % 5}")
        await manager.flush()
        found = await manager.search_memory("account id 7781 must stay in the prompt")
        report(manager, phase="done", found=any("pin me" in memory.content for memory in found))


if __name__ == "__main__":
    storage_arg, dsn_arg, phase = sys.argv[1:4]
    asyncio.run((write if phase == "write" else resume)(storage_arg, dsn_arg))
