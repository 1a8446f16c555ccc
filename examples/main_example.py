"""Run the examples: ``python examples/main_example.py [CATEGORY] [--verbose]`` (all of them by default);
``--help`` lists the categories.

Every example runs offline on the embedded defaults (SQLite and JSONL files in a temporary directory, no
server, no API key) and checks what it demonstrates: the exit status is non-zero when something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the example modules live next to this file

from _common import ExampleContext, ExampleFailure, example_context, make_console  # noqa: E402
from rich.logging import RichHandler  # noqa: E402
from rich.text import Text  # noqa: E402

CATEGORIES: dict[str, tuple[str, str]] = {
    "basic": ("basic_usage", "messages, token counts, provider formats, memory surviving a restart"),
    "advanced": (
        "advanced_features",
        "compression history, recall of evicted context, summarizers, consolidation, cleanup, export/import",
    ),
    "tools": (
        "custom_tools",
        "typed tools, schemas, every failure kind, caching, approval, model tool calls",
    ),
    "performance": ("performance_demo", "monitor figures, concurrency controller, health report, throughput"),
    "agent": (
        "agent_loop",
        "a full agent loop driven by the scripted model (run alone, it can call an OpenAI endpoint)",
    ),
    "shared": (
        "shared_state",
        "a conversation resumed by another process after kill -9; two workers on one, with a conflict",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    epilog = (
        "categories:\n"
        + "\n".join(f"  {name:<12} {module}.py: {text}" for name, (module, text) in CATEGORIES.items())
        + "\n  all          every category above, in order"
    )
    parser = argparse.ArgumentParser(
        prog="main_example.py",
        description="Run the context-manager examples (offline, temporary storage).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(  # as `context-manager examples`: none given runs them all
        "category",
        nargs="?",
        default="all",
        choices=["all", *CATEGORIES],
        help="which examples to run (default: all)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print details and INFO logs")
    return parser


def load(category: str) -> Callable[[ExampleContext], Awaitable[None]]:
    module = importlib.import_module(CATEGORIES[category][0])
    return module.run  # type: ignore[no-any-return]


async def run_categories(names: list[str], ctx: ExampleContext) -> list[tuple[str, float]]:
    timings = []
    for name in names:
        ctx.console.print()
        ctx.console.rule(f"[bold magenta]{name}: {CATEGORIES[name][0]}.py", characters="═")
        started = time.perf_counter()
        await load(name)(ctx)
        timings.append((name, time.perf_counter() - started))
    return timings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = make_console()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=make_console(stderr=True), show_time=False, show_path=False)],
    )
    names = list(CATEGORIES) if args.category == "all" else [args.category]
    try:
        with example_context(verbose=args.verbose, console=console) as ctx:
            timings = asyncio.run(run_categories(names, ctx))
    except ExampleFailure as failure:
        console.print(Text.assemble(("example failed:", "bold red"), f" {failure}"))
        if args.verbose:
            traceback.print_exc()
        return 1
    except Exception as error:  # an example crashed: say where, non-zero exit
        console.print(Text.assemble(("example crashed:", "bold red"), f" {type(error).__name__}: {error}"))
        traceback.print_exc()
        return 1
    console.print()
    summary = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings)
    console.print(f"[bold green]All examples passed[/bold green] ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
