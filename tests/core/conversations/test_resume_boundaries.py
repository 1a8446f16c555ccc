"""Resuming across processes where compressions meet tool-call pairs and pinned messages (both backends)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from context_manager import EnhancedContextManager

from .conversation_worker import config_for, fingerprint

WORKER = Path(__file__).with_name("boundary_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def run(storage: Path, dsn: str, phase: str) -> list[dict[str, Any]]:
    process = subprocess.run(
        [sys.executable, str(WORKER), str(storage), dsn, phase],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=WORKER.parent,
    )
    if phase == "write":
        assert process.returncode == -9, process.stderr[-3000:]
    else:
        assert process.returncode == 0, process.stderr[-3000:]
    return [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]


async def test_calls_and_pins_at_compression_boundaries_resume_in_another_process(
    backend_name: str, tmp_path: Path, request: Any
) -> None:
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else "-"
    storage = tmp_path / "storage"
    [written] = run(storage, dsn, "write")
    assert written["count"] >= 2
    assert written["pending"] == ["call_0~2"]  # made again while call_0 was in the window
    assert written["pinned"][0].startswith("pin me") and len(written["pinned"]) == 2
    loaded, done = run(storage, dsn, "resume")
    for key in ("export", "pending", "pinned", "count", "version"):
        assert loaded[key] == written[key], key
    assert done["pending"] == [] and done["pinned"] == []
    assert done["count"] > written["count"]
    assert done["found"]  # the unpinned message, evicted by the compression after the resume
    async with EnhancedContextManager(config_for(str(storage), dsn), conversation_id="edge") as resumed:
        assert fingerprint(resumed) == done["export"]
        assert resumed.get_context_summary()["compression_count"] == done["count"]
        export = resumed.get_context(format="openai")
        calls = [m for m in export if m.get("tool_calls")]
        results = [m for m in export if m["role"] == "tool"]
        # every call in the export has its result right after it; every result its call
        assert {c["id"] for m in calls for c in m["tool_calls"]} == {m["tool_call_id"] for m in results}
        for position, message in enumerate(export):
            if message["role"] == "tool":
                assert export[position - 1].get("tool_calls") or export[position - 1]["role"] == "tool"
