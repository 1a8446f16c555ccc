"""``benchmarks/bench_retrieval.py --locomo``: the dev-set command, run at a small size (one conversation).

It reads ``../shared/data/locomo_dev.json`` when that file exists (the development set is not part of the
project), otherwise ``tests/fixtures/locomo_tiny.json``, a small conversation written for this test in the
same format.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_retrieval.py"
DEV_SET = ROOT.parent / "shared" / "data" / "locomo_dev.json"
TINY = ROOT / "tests" / "fixtures" / "locomo_tiny.json"

sys.path.insert(0, str(ROOT / "benchmarks"))

from locomo import load_locomo, parse_locomo_date, score_ranking  # noqa: E402


def test_loader_reads_the_format() -> None:
    [conversation] = load_locomo(TINY)
    assert conversation.sample_id == "tiny-1"
    assert len(conversation.turns) == 14
    first = conversation.turns[0]
    assert (first.key, first.session, first.turn_index, first.speaker) == ("D1:1", 1, 0, "Ana")
    assert first.session_date == "2024-03-03T16:10:00"
    assert "[shares a photo: a photo of a dog running on grass]" in conversation.turns[3].text
    # the adversarial question (category 5) is skipped
    assert [q.category for q in conversation.questions] == [4, 1, 2, 4, 3]
    assert parse_locomo_date("1:56 pm on 8 May, 2023") == "2023-05-08T13:56:00"


def test_metrics() -> None:
    score = score_ranking(["D1:1", "D1:5", None, "D1:7"], ["D1:5", "D1:7"])
    assert score.recall == {1: 0.0, 5: 1.0, 10: 1.0}
    assert score.reciprocal_rank == 0.5
    assert 0.0 < score.ndcg10 < 1.0
    missing = score_ranking(["D1:1"], ["D2:1"])
    assert (missing.recall[10], missing.reciprocal_rank, missing.ndcg10) == (0.0, 0.0, 0.0)


def test_locomo_command_on_one_conversation(tmp_path: Path) -> None:
    data = DEV_SET if DEV_SET.is_file() else TINY
    output = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--locomo", str(data), "--conversations", "1", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["dataset"]["conversations"] == 1
    results = {result["name"].strip(): result for result in figures["results"]}
    raw = results["raw FTS5 BM25 (unicode61), as typed"]
    library = results["library, lexical (embedder=none)"]
    assert library["questions"] == raw["questions"] == figures["dataset"]["questions"] > 0
    for result in results.values():
        for metric in ("R@1", "R@5", "R@10", "MRR", "nDCG@10"):
            assert 0.0 <= result[metric] <= 1.0
        assert result["R@1"] <= result["R@5"] <= result["R@10"]
        assert result["search_p95_ms"] >= result["search_p50_ms"] > 0
    # an ablation row per ranking feature, each one feature off
    assert any(name.startswith("lexical - ") for name in results)
    # the library's conversation features find at least what plain BM25 finds
    assert library["R@5"] >= raw["R@5"]
    assert set(library["per_category"]) <= {"multi-hop", "temporal", "open-domain", "single-hop"}
    assert "R@5" in library["per_category"]["multi-hop"]
