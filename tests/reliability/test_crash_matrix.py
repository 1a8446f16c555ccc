"""Crash matrix (invariant 6): a real subprocess is killed with SIGKILL in the middle of each storage
operation, round after round on the same storage; after every kill the store must open, hold every
acknowledged write exactly once, not hold what was acknowledged as removed, and answer searches.

Operations: concurrent ``add_memory``/``add_memories``, ``consolidate_memories``, medium-term log
compaction (``optimize``), ``cleanup_old_memories``, ``EnhancedContextManager.optimize_system`` and
compression that evicts messages to memory (``add_message`` through a 400-token window).

The kill lands at a random moment: after a random number of operations the test waits a random
fraction of the operation's measured duration (``BEGIN``..``END`` lines of the worker), so most kills
land inside the operation. Rounds: ``scaled(ci, full)`` per operation (``RELIABILITY_FULL=1``: 20+).
``tests/core/memory/test_crash.py`` covers sequential ``add_memory``; this adds concurrent writes,
the other operations and the duplicate, removal and search checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from context_manager.core.memory.manager import ALL_USERS, MemoryManager
from tests.reliability.conftest import scaled, start_worker
from tests.reliability.crash_worker import memory_config

OPERATIONS = {
    # operation: (CI rounds, full rounds, operations run before the kill, memory config of the worker)
    "add_memory": (4, 24, (1, 4), {}),
    "consolidate_memories": (4, 24, (1, 4), {}),
    "log_compaction": (4, 24, (1, 4), {"medium_term_memory_size": 5000}),
    "cleanup_old_memories": (4, 24, (1, 4), {}),
    "optimize_system": (4, 24, (1, 4), {}),
    # the window (400 tokens) compresses every few messages, and only once it is full
    "compression_eviction": (4, 24, (8, 40), {}),
}


@dataclass
class Ledger:
    """Everything the workers acknowledged over all rounds on one storage."""

    acked: dict[str, str] = field(default_factory=dict)
    """Memory id -> marker of every acknowledged write."""
    gone: set[str] = field(default_factory=set)
    """Ids acknowledged as removed (cleanup, delete)."""
    deleting: set[str] = field(default_factory=set)
    """Ids whose delete was in flight when the worker was killed (either outcome is right)."""
    merged: dict[str, list[str]] = field(default_factory=dict)
    """Merged memory id -> the ids it merged."""
    evicted: dict[str, str] = field(default_factory=dict)
    """Message id -> marker of every message acknowledged as evicted from the window."""
    kills_inside: int = 0
    """Kills that landed between a BEGIN and its END."""

    def read(self, lines: list[str]) -> None:
        inside = False
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "ACK":
                memory_id, marker = rest.split()
                self.acked[memory_id] = marker
            elif kind == "DELETING":
                self.deleting.add(rest)
            elif kind == "GONE":
                self.gone.add(rest)
                self.deleting.discard(rest)
            elif kind == "MERGED":
                merged_id, originals = rest.split()
                self.merged[merged_id] = originals.split(",")
            elif kind == "EVICTED":
                message_id, marker = rest.split()
                self.evicted[message_id] = marker
            elif kind in ("BEGIN", "END"):
                inside = kind == "BEGIN"
        self.kills_inside += inside


def run_and_kill(
    operation: str,
    storage: Path,
    seed: int,
    rng: random.Random,
    duration: list[float],
    before: tuple[int, int],
) -> list[str]:
    """One round: start the worker, kill it inside the operation, return every line it printed."""
    process = start_worker(operation, str(storage), str(seed))
    assert process.stdout is not None
    first = process.stdout.readline()
    if first.strip() != "READY":
        _, errors = process.communicate(timeout=30)
        pytest.fail(f"{operation} worker did not start: {first!r} {errors[-3000:]}")
    lines: list[str] = []
    begins = rng.randint(*before)
    began_at = 0.0
    while begins:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith("BEGIN"):
            began_at = time.perf_counter()
            begins -= 1
        elif line.startswith("END") and began_at:
            # a running mean of the operation's duration aims the next kill
            duration[0] = 0.8 * duration[0] + 0.2 * (time.perf_counter() - began_at)
    time.sleep(rng.random() * duration[0] * 1.2)
    process.send_signal(signal.SIGKILL)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{operation} worker ended by itself: {errors[-3000:]}"
    lines.extend(line.strip() for line in rest.splitlines() if line.strip())
    return lines


def active(records: dict[str, dict[str, Any]], memory_id: str) -> str:
    """Follow ``superseded_by`` from ``memory_id`` to the memory that stands for it now."""
    seen = set()
    while records[memory_id].get("superseded_by") and memory_id not in seen:
        seen.add(memory_id)
        memory_id = records[memory_id]["superseded_by"]
    return memory_id


async def verify(storage: Path, ledger: Ledger, overrides: dict[str, Any], label: str) -> int:
    """Open the store after a kill and check it; return how many memories it holds."""
    async with MemoryManager(memory_config(str(storage), **overrides)) as manager:
        integrity = await manager.check_integrity()
        assert integrity["ok"], f"{label}: {integrity}"
        export = storage.parent / "export.jsonl"
        count = await manager.export_memories(export, user_id=ALL_USERS)
        records = {record["id"]: record for record in map(json.loads, export.read_text().splitlines())}
        assert len(records) == count
        stats = await manager.get_memory_stats(user_id=ALL_USERS)
        assert stats["total_memories"] == count, f"{label}: stats disagree with the stored memories"

        lost = [i for i in ledger.acked if i not in ledger.gone | ledger.deleting and i not in records]
        assert not lost, f"{label}: {len(lost)} acknowledged memories lost, e.g. {lost[:3]}"
        for memory_id, marker in ledger.acked.items():
            if memory_id in records:
                assert records[memory_id]["content"].split(" ", 1)[0] == marker, label
        resurrected = [i for i in ledger.gone if i in records]
        assert not resurrected, f"{label}: memories acknowledged as removed came back: {resurrected[:3]}"

        # nothing duplicated: each written text once (merges excepted), each evicted message once
        contents = Counter(r["content"] for r in records.values() if r.get("source") != "consolidation")
        doubled = [text for text, times in contents.items() if times > 1]
        assert not doubled, f"{label}: {len(doubled)} texts stored twice, e.g. {doubled[0][:60]!r}"
        message_ids = Counter(
            r["metadata"]["message_id"] for r in records.values() if "message_id" in (r.get("metadata") or {})
        )
        assert all(times == 1 for times in message_ids.values()), f"{label}: an evicted message stored twice"
        merged_members: Counter[str] = Counter()
        for record in records.values():
            if record.get("source") == "consolidation" and not record.get("superseded_by"):
                merged_members.update(record.get("merged_from") or [])
        assert all(times == 1 for times in merged_members.values()), f"{label}: a memory merged twice"
        for merged_id, originals in ledger.merged.items():
            if merged_id not in ledger.gone:
                assert merged_id in records, f"{label}: acknowledged merge {merged_id} lost"
                assert records[merged_id]["merged_from"] == originals, label
        for message_id, marker in ledger.evicted.items():
            assert message_id in message_ids, (
                f"{label}: evicted message {message_id} ({marker}) not in memory"
            )

        # searches work and find what was acknowledged (or the merge that stands for it)
        sample_rng = random.Random(len(records))
        candidates = [i for i in ledger.acked if i in records and i not in ledger.deleting]
        for memory_id in sample_rng.sample(candidates, min(12, len(candidates))):
            found = await manager.search_memory(ledger.acked[memory_id], limit=10, user_id=ALL_USERS)
            ids = [memory.id for memory in found]
            assert len(ids) == len(set(ids)), f"{label}: a search returned a memory twice"
            assert active(records, memory_id) in ids, f"{label}: search misses {ledger.acked[memory_id]}"
        for message_id in sample_rng.sample(sorted(ledger.evicted), min(6, len(ledger.evicted))):
            found = await manager.search_memory(ledger.evicted[message_id], limit=10)
            assert any(m.metadata.get("message_id") == message_id for m in found), label
        return count


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_acknowledged_writes_survive_sigkill(operation: str, storage: Path) -> None:
    ci_rounds, full_rounds, before, overrides = OPERATIONS[operation]
    rounds = scaled(ci_rounds, full_rounds)
    rng = random.Random(f"crash-{operation}")
    ledger = Ledger()
    duration = [0.05]
    stored = 0
    for round_number in range(rounds):
        lines = await asyncio.to_thread(run_and_kill, operation, storage, round_number, rng, duration, before)
        ledger.read(lines)
        stored = await verify(storage, ledger, overrides, f"{operation} round {round_number}")
    assert ledger.acked or ledger.evicted, f"{operation}: the workers acknowledged nothing"
    print(  # collected by scripts/run_reliability.sh for docs/reliability.md
        f"CRASH-FIGURES {operation}: rounds={rounds} kills_inside_operation={ledger.kills_inside} "
        f"acknowledged={len(ledger.acked) + len(ledger.evicted)} removed={len(ledger.gone)} "
        f"merges={len(ledger.merged)} stored_at_end={stored}"
    )
