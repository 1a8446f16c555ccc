"""Run every benchmark script and write one report (markdown + JSON) with the figures and ratios.

    python benchmarks/run_all.py            # full runs (several minutes on a small machine)
    python benchmarks/run_all.py --quick    # smoke runs with small sizes (about a minute)
    python benchmarks/run_all.py --only tools --only context

Every ``benchmarks/bench_*.py`` script is run in its own process with ``--json <file>`` (each script
measures its baselines in the same run, so the ratios hold on any machine). ``--quick`` passes each
script's own ``--quick`` flag when it has one (read from its ``--help``), or a smaller setting known for
that script. The report goes to ``benchmarks/results/`` (git-ignored): ``report.md`` (a summary table
of headline figures, every figure per script, and each script's printed output) and ``report.json``
(the scripts' JSON as they wrote it, plus run metadata). The exit status is non-zero if a script failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Smaller settings for scripts without a --quick flag of their own.
QUICK_FALLBACK: dict[str, list[str]] = {
    "bench_tools": ["--iterations", "2000"],
    "bench_retrieval": ["--no-embeddings", "--no-ablations"],
    "bench_contention": ["--preload", "20000", "--seconds", "5", "--runs", "1"],
}
HEADLINE_WORDS = {"ratio", "vs", "speedup", "faster", "recall", "mrr", "meets", "overhead"}
MAX_HEADLINES = 10
MAX_FIGURES = 150


def discover(directory: Path, only: list[str]) -> list[Path]:
    scripts = sorted(directory.glob("bench_*.py"))
    if only:
        wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in only}
        wanted = {name.removesuffix(".py") for name in wanted}
        unknown = wanted - {script.stem for script in scripts}
        if unknown:
            raise SystemExit(f"error: no benchmark script named {', '.join(sorted(unknown))} in {directory}")
        scripts = [script for script in scripts if script.stem in wanted]
    return scripts


def script_flags(script: Path) -> set[str]:
    """The long options a script's ``--help`` lists."""
    completed = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, env=_env()
    )
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", completed.stdout))


def _env() -> dict[str, str]:
    environment = dict(os.environ)
    source = str(HERE.parent / "src")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
    environment.setdefault("HF_HUB_OFFLINE", "1")
    environment.setdefault("TRANSFORMERS_OFFLINE", "1")
    return environment


def run_script(script: Path, results: Path, *, quick: bool, timeout: float) -> dict[str, Any]:
    flags = script_flags(script)
    json_path = results / f"{script.stem}.json"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, str(script)]
    if quick:
        command += ["--quick"] if "--quick" in flags else QUICK_FALLBACK.get(script.stem, [])
    if "--json" not in flags:
        return {"script": script.name, "status": "skipped", "reason": "no --json option", "command": command}
    command += ["--json", str(json_path)]
    print(f"running {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return {
            "script": script.name,
            "status": "timeout",
            "seconds": time.perf_counter() - started,
            "command": command,
            "stdout": output,
            "stderr": f"timed out after {timeout:g} s",
        }
    seconds = time.perf_counter() - started
    figures: Any = None
    if json_path.exists():
        try:
            figures = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            figures = {"unreadable_json": str(error)}
    ok = completed.returncode == 0 and figures is not None
    status = "ok" if ok else "failed"
    print(f"  {status} in {seconds:.1f} s", flush=True)
    return {
        "script": script.name,
        "status": status,
        "returncode": completed.returncode,
        "seconds": seconds,
        "command": command,
        "figures": figures,
        "stdout": completed.stdout,
        "stderr": completed.stderr,
    }


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar figures of a JSON value as (dotted.path, value) pairs, in order."""
    if isinstance(value, dict):
        pairs: list[tuple[str, Any]] = []
        for key, item in value.items():
            pairs.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    if isinstance(value, list):
        if all(not isinstance(item, dict | list) for item in value):
            return [(prefix, ", ".join(str(item) for item in value))]
        pairs = []
        for index, item in enumerate(value):
            label = item.get("name") or item.get("configuration") if isinstance(item, dict) else None
            pairs.extend(flatten(item, f"{prefix}[{label if label else index}]"))
        return pairs
    return [(prefix, value)]


def format_figure(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def headlines(figures: Any) -> list[tuple[str, Any]]:
    pairs = [
        (key, value)
        for key, value in flatten(figures)
        if HEADLINE_WORDS & set(re.split(r"[^a-z0-9]+", key.rsplit(".", 1)[-1].lower()))
    ]
    return pairs[:MAX_HEADLINES]


def write_report(runs: list[dict[str, Any]], results: Path, *, quick: bool, total_seconds: float) -> Path:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    metadata = {
        "generated": generated,
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "total_seconds": total_seconds,
    }
    report = {"metadata": metadata, "runs": [{k: v for k, v in run.items() if k != "stdout"} for run in runs]}
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    lines = [
        "# Benchmark report",
        "",
        f"Generated {generated} ({metadata['mode']} run) on Python {metadata['python']}, "
        f"{metadata['platform']}, {metadata['cpu_count']} CPUs, in {total_seconds:.0f} s. "
        "Each script measures its baseline in the same run; compare ratios, not absolute times.",
        "",
        "| script | status | seconds | headline figures |",
        "|---|---|---|---|",
    ]
    for run in runs:
        figures = "<br>".join(
            f"{key}: {format_figure(value)}" for key, value in headlines(run.get("figures"))
        )
        seconds = f"{run['seconds']:.1f}" if "seconds" in run else "-"
        lines.append(f"| `{run['script']}` | {run['status']} | {seconds} | {figures or '-'} |")
    for run in runs:
        lines += [
            "",
            f"## {run['script']}",
            "",
            f"`{' '.join(Path(part).name if part.endswith('.py') else part for part in run['command'][1:])}`",
            "",
        ]
        if run["status"] != "ok":
            error = (run.get("stderr") or run.get("reason") or "").strip().splitlines()[-15:]
            lines += ["Failed:", "", "```", *error, "```"]
        pairs = flatten(run.get("figures")) if run.get("figures") is not None else []
        if pairs:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {key} | {format_figure(value)} |" for key, value in pairs[:MAX_FIGURES]]
            if len(pairs) > MAX_FIGURES:
                lines.append(f"| ... | {len(pairs) - MAX_FIGURES} more in report.json |")
        if run.get("stdout"):
            lines += [
                "",
                "<details><summary>printed output</summary>",
                "",
                "```",
                run["stdout"].rstrip(),
                "```",
                "",
                "</details>",
            ]
    path = results / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs with small sizes")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this script (e.g. tools or bench_tools; repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds each script may take")
    parser.add_argument("--benchmarks-dir", type=Path, default=HERE, help=argparse.SUPPRESS)
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=HERE / "results",
        help="where to write report.md and report.json (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)
    scripts = discover(args.benchmarks_dir, args.only)
    if not scripts:
        print(f"error: no bench_*.py scripts in {args.benchmarks_dir}", file=sys.stderr)
        return 1
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = [
        run_script(script, args.results_dir, quick=args.quick, timeout=args.timeout) for script in scripts
    ]
    path = write_report(runs, args.results_dir, quick=args.quick, total_seconds=time.perf_counter() - started)
    failed = [run["script"] for run in runs if run["status"] not in ("ok", "skipped")]
    print(f"wrote {path} and {path.with_suffix('.json')}")
    if failed:
        print(f"error: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
