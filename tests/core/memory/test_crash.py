"""Crash test (invariant 6): a real subprocess adds memories and prints each acknowledged id; the test
kills it with SIGKILL at random moments, then checks every acknowledged id is present and the store
opens cleanly. 24 rounds by default; ``CM_FULL_RUN=1`` runs 100."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

ROUNDS = 100 if os.environ.get("CM_FULL_RUN") == "1" else 24

WRITER = """
import asyncio, random, sys
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager

async def main(path, seed):
    rng = random.Random(seed)
    config = ContextManagerConfig(storage_path=path, short_term_memory_size=10, medium_term_memory_size=20)
    async with MemoryManager(config) as manager:
        print("READY", flush=True)
        number = 0
        while True:
            number += 1
            tier = rng.choice([None, None, None, "medium", "long"])
            memory = await manager.add_memory(
                f"crash memory {seed} {number} " + "word " * rng.randint(0, 50),
                importance=rng.random(), tier=tier, tags=[f"t{number % 4}"],
            )
            print(memory.id, flush=True)
            if number % 7 == 0:
                await manager.search_memory(f"crash memory {number}")
            if number % 40 == 0:
                await manager.optimize()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def run_and_kill(storage: Path, seed: int, rng: random.Random) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(storage), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.strip() == "READY", process.stderr.read() if process.stderr else first
    acknowledged: list[str] = []
    target = rng.randint(1, 150)
    while len(acknowledged) < target:
        line = process.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    time.sleep(rng.random() * 0.01)  # let the kill land at an arbitrary point of the next write
    process.send_signal(signal.SIGKILL)
    # ids printed before the kill are acknowledged too
    rest, _ = process.communicate(timeout=30)
    acknowledged.extend(line.strip() for line in rest.splitlines() if line.strip())
    assert process.returncode == -signal.SIGKILL
    return acknowledged


async def test_acknowledged_memories_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    storage = tmp_path / "storage"
    everything: list[str] = []
    for round_number in range(ROUNDS):
        acknowledged = await asyncio.to_thread(run_and_kill, storage, round_number, rng)
        assert acknowledged, f"round {round_number}: the writer acknowledged nothing"
        everything.extend(acknowledged)
        if round_number % 6 == 5 or round_number == ROUNDS - 1:
            config = ContextManagerConfig(
                storage_path=storage, short_term_memory_size=10, medium_term_memory_size=20
            )
            async with MemoryManager(config) as manager:
                integrity = await manager.check_integrity()
                assert integrity["ok"], integrity
                found = await manager._get_many(everything)
                missing = [memory_id for memory_id in everything if memory_id not in found]
                assert not missing, f"round {round_number}: {len(missing)} acknowledged memories lost"
                assert all(found[i].content.startswith("crash memory") for i in everything)
