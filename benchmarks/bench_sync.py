"""What the blocking facade costs: ``SyncContextManager.add_message`` against ``await add_message``.

    python benchmarks/bench_sync.py [--messages 400] [--rounds 5] [--json results.json] [--quick]

Each round adds ``--messages`` short messages, one call timed at a time with the wall clock, first to an
``EnhancedContextManager`` awaited on the caller's event loop, then to a ``SyncContextManager`` (the
call is handed to the ``context-manager-loop`` thread and the caller blocks for its result), alternating
so both meet the same machine load. Two set-ups: a window only (no ``conversation_id``) and a persisted
conversation (each add is also written to SQLite). The window is large enough that nothing is
compressed. Figures: p50 and p90 per call in microseconds, and the ratio of the p50s (sync / async) and
their difference (the hand-over to the loop thread and back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from context_manager import ContextManagerConfig, EnhancedContextManager, SyncContextManager  # noqa: E402

clock = time.perf_counter


def _config(directory: str) -> ContextManagerConfig:
    return ContextManagerConfig(
        cache_path=directory, max_tokens=128_000, embedder="none", enable_health_checks=False
    )


async def _async_round(config: ContextManagerConfig, conversation_id: str | None, count: int) -> list[float]:
    times = []
    async with EnhancedContextManager(config, conversation_id=conversation_id) as manager:
        for n in range(count):
            start = clock()
            await manager.add_message("user", f"Async message {n}: where is my order, and when does it ship?")
            times.append(clock() - start)
    return times


def _sync_round(config: ContextManagerConfig, conversation_id: str | None, count: int) -> list[float]:
    times = []
    with SyncContextManager(config, conversation_id=conversation_id) as manager:
        for n in range(count):
            start = clock()
            manager.add_message("user", f"Sync message {n}: where is my order, and when does it ship?")
            times.append(clock() - start)
    return times


def _figures(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p90_us": ordered[int(len(ordered) * 0.9)] * 1e6,
        "calls": len(ordered),
    }


def measure(messages: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for setup in ("window", "persisted"):
        async_times: list[float] = []
        sync_times: list[float] = []
        with tempfile.TemporaryDirectory() as directory:
            config = _config(directory)
            for round_number in range(rounds):
                conversation = None if setup == "window" else f"bench-{round_number}"
                async_times += asyncio.run(
                    _async_round(config, None if conversation is None else f"{conversation}-a", messages)
                )
                sync_times += _sync_round(
                    config, None if conversation is None else f"{conversation}-s", messages
                )
        async_figures, sync_figures = _figures(async_times), _figures(sync_times)
        results[setup] = {
            "async": async_figures,
            "sync": sync_figures,
            "sync_vs_async_p50": sync_figures["p50_us"] / async_figures["p50_us"],
            "sync_overhead_p50_us": sync_figures["p50_us"] - async_figures["p50_us"],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=400, help="messages added per round and manager")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (alternating async and sync)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="a short run (100 messages, 2 rounds)")
    args = parser.parse_args()
    messages, rounds = (100, 2) if args.quick else (args.messages, args.rounds)
    results = measure(messages, rounds)
    print(f"add_message, {messages} messages x {rounds} rounds per manager kind (microseconds per call)")
    for setup, figures in results.items():
        print(
            f"  {setup:9}  async p50 {figures['async']['p50_us']:7.1f}  p90 {figures['async']['p90_us']:7.1f}"
            f"   sync p50 {figures['sync']['p50_us']:7.1f}  p90 {figures['sync']['p90_us']:7.1f}"
            f"   sync/async p50 {figures['sync_vs_async_p50']:.2f}x"
            f"  (+{figures['sync_overhead_p50_us']:.1f} us)"
        )
    if args.json is not None:
        document = {
            "benchmark": "sync",
            "quick": args.quick,
            "messages": messages,
            "rounds": rounds,
            **results,
        }
        args.json.write_text(json.dumps(document, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
