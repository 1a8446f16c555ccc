"""``benchmarks/bench_context.py``: the command of docs/benchmarks.md (issue 14), run at its smoke size.

The figures themselves are not asserted (timings belong to the benchmark, not to tests); what is checked is
that the command runs end to end with the real tokenizer and LangChain, measures each figure next to its
baseline in the same run, and that what it reports about the window holds (budget kept, units kept whole,
a compression evicting messages, the event loop measured while it ran).
"""

from __future__ import annotations

from pathlib import Path

from tests.bench_support import run_benchmark


def test_the_quick_run_reports_every_section_against_its_baseline(tmp_path: Path) -> None:
    figures, printed = run_benchmark("bench_context.py", "--quick", directory=tmp_path)
    assert figures["quick"] is True and len(figures["load_before"]) == 3

    counting = figures["counting"]
    assert counting["tokens"] > 0 and counting["uncached_vs_raw"] > 0 and counting["cached_vs_raw"] > 0

    adds = figures["add_message"]
    assert set(adds) == {"short ~20 tokens", "medium ~150 tokens", "long ~1000 tokens"}
    for row in adds.values():
        assert row["raw_count_p50_us"] > 0 and 0 < row["add_message_p50_us"] <= row["add_message_p99_us"]
        assert row["overhead_vs_raw_count"] == row["add_message_p50_us"] / row["raw_count_p50_us"]
        # the floor (build the message, count it) is measured next to the same raw count
        assert row["build_and_count_p50_us"] > 0
        assert row["build_and_count_vs_raw_count"] == row["build_and_count_p50_us"] / row["raw_count_p50_us"]
    # the sizes are what their labels say: a longer text costs the raw tokenizer more
    raw = [adds[label]["raw_count_p50_us"] for label in adds]
    assert raw[0] < raw[1] < raw[2]

    for window in ("8000", "200000"):
        rows = figures["scaling"][window]
        assert set(rows) == {"1000", "10000"}
        assert rows["1000"]["vs_1k"] == 1.0 and rows["10000"]["compressions"] > 0

    compression = figures["compression"]
    assert compression["history_tokens"] >= 200_000
    assert 0 < compression["ours_tokens_after"] <= compression["budget"]
    assert compression["ours_evicted"] > 0 and compression["ours_summary_tokens"] > 0
    assert compression["peer_orphans_with_start_on_human"] == 0
    assert compression["history_adds_compressions"] > 50  # one add at a time: a compression every few
    assert compression["history_adds_vs_trim"] > 0 and compression["history_extend_vs_trim"] > 0
    assert compression["history_adds_vs_trim_cpu"] > 0 and compression["history_extend_vs_trim_cpu"] > 0

    stalls = figures["stalls"]
    assert stalls["max_tokens"] == 128_000 and stalls["compressions"] == 1 and stalls["evicted"] > 0
    assert stalls["steps"] > 0 and stalls["max_step_cpu_ms"] > 0

    megabytes = figures["megabytes"]  # wall-clock steps: a thread holding the interpreter shows there
    assert megabytes["tool_outputs"] == 2 and megabytes["tool_output_chars"] > 400_000
    assert megabytes["pasted_chars"] > 2_000_000
    assert megabytes["tool_output_max_step_wall_ms"] > 0 and megabytes["pasted_max_step_wall_ms"] > 0

    assert "1. Token counting" in printed and "5. Event loop" in printed and "6. Event loop" in printed
    assert "load average" in printed
