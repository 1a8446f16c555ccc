"""A process writing a persisted conversation (run by test_persisted.py as a subprocess).

Usage:
  python conversation_worker.py STORAGE DSN|- CONVERSATION_ID COUNT SELF_KILL_AT|-

Adds COUNT messages (users, assistants, tool calls with late results, pins, a batch) to the conversation
on a small window, so it compresses many times. After each acknowledged change it prints one JSON line:
``{"step": n, "acked": [contents added so far], "export": sha256 of the exports and the history}``. With
SELF_KILL_AT it sends itself SIGKILL right after printing the change numbered SELF_KILL_AT (memory
writes of the latest compressions may be in flight), otherwise it runs until killed or done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from context_manager import ContextManagerConfig, EnhancedContextManager


def fingerprint(manager: EnhancedContextManager) -> str:
    """A digest of what a resumed manager must reproduce byte for byte."""
    state = {
        "openai": manager.get_context(format="openai"),
        "anthropic": manager.get_context(format="anthropic"),
        "history": manager.compression_history,
        "tokens": manager.get_context_summary()["token_count"],
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def config_for(storage: str, dsn: str) -> ContextManagerConfig:
    options: dict[str, Any] = {"storage_path": Path(storage), "max_tokens": 600}
    if dsn != "-":
        options.update(memory_backend="postgres", postgres_dsn=dsn, postgres_pool_size=2)
    return ContextManagerConfig(**options)


async def main(storage: str, dsn: str, conversation_id: str, count: int, kill_at: int | None) -> None:
    acked: list[str] = []
    async with EnhancedContextManager(config_for(storage, dsn), conversation_id=conversation_id) as manager:
        for step in range(count):
            if step % 7 == 3:  # a tool call; the user speaks before its result arrives
                call_id = f"call-{step}"
                await manager.add_message(
                    "assistant",
                    "",
                    tool_calls=[{"id": call_id, "name": "lookup", "arguments": {"order": step}}],
                )
                await manager.add_message("user", f"while you look: order {step} was a gift")
                acked.append(f"while you look: order {step} was a gift")
                result = f"order {step}: shipped, tracking T{step:05d}"
                await manager.add_message("tool", result, tool_call_id=call_id)
                acked.append(result)
            elif step % 11 == 5:
                batch = [
                    {"role": "user", "content": f"batch question {step}: where is parcel {step}?"},
                    {"role": "assistant", "content": f"batch answer {step}: parcel {step} is in Lyon."},
                ]
                await manager.add_messages(batch)
                acked.extend(item["content"] for item in batch)
            else:
                role = "user" if step % 2 == 0 else "assistant"
                priority = "high" if step % 13 == 0 else "normal"
                text = f"message {step}: the delivery window for box {step} is {step % 24}:00"
                await manager.add_message(role, text, priority=priority)
                acked.append(text)
                if step % 17 == 0:
                    manager.pin_message(manager.messages[-1].id)
                    await manager.flush()
            print(json.dumps({"step": step, "acked": acked, "export": fingerprint(manager)}), flush=True)
            if kill_at is not None and step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    storage_arg, dsn_arg, conversation_arg, count_arg, kill_arg = sys.argv[1:6]
    asyncio.run(
        main(
            storage_arg, dsn_arg, conversation_arg, int(count_arg), None if kill_arg == "-" else int(kill_arg)
        )
    )
