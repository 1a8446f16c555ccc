"""A long-lived web worker on PostgreSQL (run by test_postgres.py as a subprocess).

Usage: ``python postgres_web_worker.py DSN CONNECT_TIMEOUT``

It opens one manager on a persisted conversation, as a FastAPI lifespan would keep it, prints ``ready``,
then serves one request per line of its input: ``add TEXT`` adds a user message; ``read`` prints the
conversation's messages. Each answer is one JSON line: ``{"ok": true, "seconds": ...}`` or
``{"ok": false, "error": "StorageError", "message": ..., "seconds": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from context_manager import ContextManagerConfig, ContextManagerError, EnhancedContextManager


async def main(dsn: str, connect_timeout: float) -> None:
    config = ContextManagerConfig(
        memory_backend="postgres",
        postgres_dsn=dsn,
        postgres_pool_size=2,
        postgres_connect_timeout=connect_timeout,
        embedder="none",
    )
    loop = asyncio.get_running_loop()
    async with EnhancedContextManager(config, conversation_id="web-1", user_id="ana") as manager:
        print("ready", flush=True)
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            command, _, text = line.partition(" ")
            started = time.monotonic()
            answer: dict[str, object]
            try:
                if command == "add":
                    await manager.add_message("user", text)
                    answer = {"ok": True}
                else:
                    answer = {"ok": True, "messages": [m.content for m in manager.messages]}
            except ContextManagerError as error:
                answer = {"ok": False, "error": type(error).__name__, "message": str(error)}
            answer["seconds"] = time.monotonic() - started
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
