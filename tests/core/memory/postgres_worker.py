"""One of several processes sharing a PostgreSQL memory (run by test_postgres.py as a subprocess).

Usage:
  python postgres_worker.py write DSN WORKER_NUMBER TASKS ROUNDS OUTPUT_JSON
  python postgres_worker.py verify DSN INPUT_JSON... > report

``write``: each of TASKS concurrent tasks adds one duplicate of a shared sentence and ROUNDS memories for its
user (``user-<worker % 2>-<task % 2>``), each with a unique marker word, searches for one of them, and now
and then consolidates, cleans up, updates one of its memories (importance, tags and a tier, while other
processes move the tiers' overflow) or deletes one (some tasks also delete their duplicate while other
processes consolidate). Every acknowledged memory (the add returned) goes to OUTPUT_JSON with its user and
marker, with the last acknowledged update of each, the acknowledged deletes and the results of every search
(to check that no user saw another's memories).

``verify`` (a fresh process): looks every acknowledged memory up by id and by search for its user (with its
last update; a deleted one must stay deleted), searches each marker as another user, and checks the
consolidations; prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

from context_manager.core.config import ContextManagerConfig
from context_manager.core.errors import MemoryNotFoundError
from context_manager.core.memory.manager import MemoryManager


async def main(dsn: str, worker: int, tasks: int, rounds: int) -> dict[str, Any]:
    config = ContextManagerConfig(
        memory_backend="postgres",
        postgres_dsn=dsn,
        short_term_memory_size=40,
        medium_term_memory_size=60,
        postgres_pool_size=4,
    )
    acknowledged: list[dict[str, Any]] = []
    searches: list[dict[str, Any]] = []
    updates: dict[str, dict[str, Any]] = {}
    deleted: list[str] = []
    async with MemoryManager(config) as memory:

        async def task(number: int) -> None:
            user = f"user-{worker % 2}-{number % 2}"
            generator = random.Random(worker * 1000 + number)
            duplicate = await memory.add_memory(DUPLICATE, user_id=user)
            own: list[str] = []
            for round_number in range(rounds):
                marker = f"marker{worker}x{number}x{round_number}"
                added = await memory.add_memory(
                    f"note {marker} about {generator.choice(['apples', 'boats', 'clouds', 'drums'])}",
                    importance=generator.choice([0.2, 0.5, 0.9]),
                    user_id=user,
                )
                acknowledged.append({"id": added.id, "user": user, "marker": marker})
                own.append(added.id)
                if round_number % 3 == 2:
                    # a change and a move of one of its memories, beside other processes' overflow moves
                    target = generator.choice(own)
                    change = {"importance": generator.choice([0.3, 0.6, 0.8]), "tags": [f"r{round_number}"]}
                    await memory.update_memory(
                        target, tier=generator.choice(["short", "medium", "long", None]), **change
                    )
                    updates[target] = change
                if round_number % 9 == 4 and len(own) > 1:
                    gone = own.pop(generator.randrange(len(own) - 1))
                    await memory.delete_memory(gone)
                    deleted.append(gone)
                    updates.pop(gone, None)
                if number % 4 == 0 and round_number == rounds // 2:
                    try:  # beside the other processes' consolidations
                        await memory.delete_memory(duplicate.id)
                        deleted.append(duplicate.id)
                    except MemoryNotFoundError:
                        pass  # merged, then cleaned up
                probe = generator.choice(acknowledged)
                found = await memory.search_memory(probe["marker"], limit=5, user_id=user)
                searches.append(
                    {"user": user, "ids": [m.id for m in found], "users": [m.user_id for m in found]}
                )
                if round_number % 7 == 3:
                    await memory.consolidate_memories(user_id=user)
                if round_number % 11 == 5:
                    await memory.cleanup_old_memories(max_age_days=365, user_id=user)

        await asyncio.gather(*(task(number) for number in range(tasks)))
    return {"acknowledged": acknowledged, "searches": searches, "updates": updates, "deleted": deleted}


DUPLICATE = "the harbour ferry leaves at seven every morning"


async def verify(dsn: str, written: list[dict[str, Any]]) -> dict[str, Any]:
    acknowledged: list[dict[str, Any]] = [item for data in written for item in data["acknowledged"]]
    searches: list[dict[str, Any]] = [item for data in written for item in data["searches"]]
    updates: dict[str, dict[str, Any]] = {
        key: value for data in written for key, value in data["updates"].items()
    }
    deleted = {memory_id for data in written for memory_id in data["deleted"]}
    report: dict[str, Any] = {
        "acknowledged": len(acknowledged),
        "updated": len(updates),
        "deleted": len(deleted),
        "missing_by_id": [],
        "missing_by_search": [],
        "update_lost": [],
        "deleted_back": [],
    }
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn)
    async with MemoryManager(config) as memory:
        users = sorted({item["user"] for item in acknowledged})
        for item in acknowledged:
            stored = await memory.get_memory(item["id"])
            found = await memory.search_memory(item["marker"], limit=3, user_id=item["user"])
            if item["id"] in deleted:
                if stored is not None or item["id"] in [m.id for m in found]:
                    report["deleted_back"].append(item["id"])
                continue
            if stored is None or stored.user_id != item["user"]:
                report["missing_by_id"].append(item["id"])
            elif item["id"] in updates:
                change = updates[item["id"]]
                if (stored.importance, stored.tags) != (change["importance"], change["tags"]):
                    report["update_lost"].append(item["id"])
            if item["id"] not in [m.id for m in found]:
                report["missing_by_search"].append(item["id"])
        report["deleted_back"] += [
            memory_id for memory_id in deleted if await memory.get_memory(memory_id) is not None
        ]
        leaks = [s for s in searches if any(user != s["user"] for user in s["users"])]
        for item in acknowledged[::7]:
            for user in users:
                if user != item["user"]:
                    found = await memory.search_memory(item["marker"], limit=10, user_id=user)
                    leaks += [{"user": user, "ids": [m.id for m in found]}] if found else []
        report["leaks"] = leaks
        copies = await memory.stored_copies()
        by_id = {m.id: m for m in copies}
        merged_into: dict[str, list[str]] = {}
        for merged in by_id.values():
            for original in merged.merged_from:
                merged_into.setdefault(original, []).append(merged.id)
        report["merged_twice"] = {key: value for key, value in merged_into.items() if len(value) > 1}
        report["dangling_supersede"] = [
            m.id for m in by_id.values() if m.superseded_by is not None and m.superseded_by not in by_id
        ]
        for user in users:
            await memory.consolidate_memories(user_id=user)
        live_duplicates = {
            user: sum(
                1
                for m in await memory.stored_copies(user_id=user)
                if m.content == DUPLICATE and m.superseded_by is None
            )
            for user in users
        }
        report["live_duplicates"] = live_duplicates
    return report


if __name__ == "__main__":
    if sys.argv[1] == "write":
        result = asyncio.run(main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
        Path(sys.argv[6]).write_text(json.dumps(result), encoding="utf-8")
    else:
        inputs = [json.loads(Path(path).read_text(encoding="utf-8")) for path in sys.argv[3:]]
        print(json.dumps(asyncio.run(verify(sys.argv[2], inputs))))
