"""``benchmarks/bench_peers_conversation.py`` without its peers installed (the project's own venv, CI).

The peers (LangGraph, the OpenAI Agents SDK) are not dependencies: run in a venv without them, the script
must say so and exit 0 with a JSON ``run_all.py`` accepts, so ``benchmarks/run_all.py`` stays green.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.bench_support import run_benchmark


def test_without_the_peers_it_says_so_and_exits_zero(tmp_path: Path) -> None:
    if importlib.util.find_spec("langgraph") or importlib.util.find_spec("agents"):
        pytest.skip("the peers are installed here: the script would run the whole benchmark")
    figures, printed = run_benchmark(
        "bench_peers_conversation.py", "--quick", directory=tmp_path, timeout=120
    )
    assert "skipped" in printed and "separate venv" in printed
    assert "peer packages are not installed" in figures["skipped"]
    assert set(figures["peers"]) == {"langgraph", "langgraph_postgres", "agents"}
    assert all(reason for reason in figures["peers"].values())
