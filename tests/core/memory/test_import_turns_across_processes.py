"""An import into a conversation session while another process writes turns to it (PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from tests.core.memory.test_import_chunks import write_export

# Imports the file in argv[2] into the schema of argv[1]; once the copy of the first turn (turn 0) is
# written it prints WRITTEN and waits for the file argv[3] before writing the rest of the import.
IMPORTER = """
import asyncio, os, sys, time
from pathlib import Path
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.memory.postgres.backend import PostgresBackend

put = PostgresBackend.put

async def put_then_wait(self, tier, memories):
    await put(self, tier, memories)
    if any(memory.id == "imported-00000" for memory in memories):
        os.write(1, b"WRITTEN\\n")
        while not Path(sys.argv[3]).exists():
            await asyncio.sleep(0.05)

PostgresBackend.put = put_then_wait

async def main(dsn, path):
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn, embedder="none")
    async with MemoryManager(config) as manager:
        result = await manager.import_memories(path)
        os.write(1, f"IMPORTED {result['imported']}\\n".encode())

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

# Writes one message to the session of the import in another process; prints the turn number it got.
REMEMBERER = """
import asyncio, sys
from context_manager.core.config import ContextManagerConfig
from context_manager.core.memory.manager import MemoryManager
from context_manager.core.messages import Message

async def main(dsn):
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=dsn, embedder="none")
    async with MemoryManager(config) as manager:
        (memory,) = await manager.remember_messages([Message.create("user", "a new turn")], session_id="s1")
        print(memory.turn_index, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def import_while_another_process_remembers(dsn: str, export: Path, go: Path) -> tuple[str, str]:
    """Run :data:`IMPORTER`; once it wrote its first chunk, :data:`REMEMBERER` to its end; then let the
    import finish. The outputs of both."""
    importer = subprocess.Popen(
        [sys.executable, "-c", IMPORTER, dsn, str(export), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert importer.stdout is not None
    try:
        marker = importer.stdout.readline().strip()
        if marker != "WRITTEN":
            importer.wait(timeout=60)
            raise AssertionError(f"the import never paused: {marker!r}, {importer.stderr.read()!r}")
        remembered = subprocess.run(
            [sys.executable, "-c", REMEMBERER, dsn], capture_output=True, text=True, timeout=300
        )
        assert remembered.returncode == 0, remembered.stderr
    finally:
        go.touch()
        out, err = importer.communicate(timeout=300)
    assert importer.returncode == 0, err
    return marker + "\n" + out, remembered.stdout


async def test_an_import_and_another_processs_turns_never_share_a_turn_number(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """Before: an import writes a session's turns a chunk (500) at a time; another process numbering a
    new turn of that session between two chunks read the highest turn stored (499) and gave out 500, a
    number the import's next chunk then wrote too (two memories claimed turn 500). The import now writes
    each session's highest turn first, under the lock ``remember_messages`` numbers turns with, so a
    process numbering a turn of the session after that continues after the file's turns."""
    count = 700  # two chunks
    export = write_export(tmp_path / "export.jsonl", count, session="s1")
    importer, remembered = await asyncio.to_thread(
        import_while_another_process_remembers, postgres_dsn, export, tmp_path / "go"
    )
    assert importer.split() == ["WRITTEN", "IMPORTED", str(count)]
    assert int(remembered) == count  # after the file's turns 0..699
    config = ContextManagerConfig(memory_backend="postgres", postgres_dsn=postgres_dsn, embedder="none")
    async with MemoryManager(config) as manager:
        numbers = [m.turn_index for m in await manager.stored_copies() if m.session_id == "s1"]
    assert len(numbers) == count + 1
    assert sorted(numbers) == list(range(count + 1)), json.dumps(
        sorted(n for n in set(numbers) if numbers.count(n) > 1)
    )
