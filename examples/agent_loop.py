"""A complete agent loop: messages, context packing, tool calls, tool results and memory recall.

By default a deterministic scripted model (``context_manager.testing.ScriptedChatModel``) plays the LLM, so
the example runs offline and checks its own results. With ``OPENAI_BASE_URL`` and/or ``OPENAI_API_KEY``
set (and the ``openai`` extra installed: ``pip install 'python-context-manager[openai]'``) the same loop
talks to any OpenAI-compatible Chat Completions endpoint instead (``OPENAI_MODEL``, default gpt-4o-mini)::

    python examples/agent_loop.py [--verbose]
    python examples/agent_loop.py --scripted   # the scripted model, offline, even with OPENAI_* set
    OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=... python examples/agent_loop.py

Each user turn: (1) the message goes into the context window (which compresses itself when full and
writes what it evicts to memory); (2) memories relevant to the turn are recalled and packed into the
request with the window's messages, within the token budget; (3) the model answers or calls tools; tool
calls run through the ToolManager and their results are paired into the window; (4) repeat until the model
answers in text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ExampleContext, example_context, expect  # noqa: E402
from rich.text import Text  # noqa: E402

from context_manager import (  # noqa: E402
    ContextManagerConfig,
    EnhancedContextManager,
    Memory,
    Message,
    MissingDependencyError,
    register_memory_tools,
    tool,
)
from context_manager.testing import ScriptedChatModel  # noqa: E402

SYSTEM_PROMPT = (
    "You are the support assistant of a small online shop. Use the tools to look up orders and quotes, "
    "memory_search to recall earlier parts of the conversation, and memory_add to remember preferences."
)
USER_TURNS = [
    "Hi, I'm Ana. Where is my order 1042?",
    "Please remember that I prefer deliveries after 6 pm.",
    "How much does shipping 2 kg to Porto cost?",
    "And 5 kg to Lisbon?",
    "What about 1 kg to Braga?",
    "And 3 kg to Faro?",
    "And 4 kg to Coimbra?",
    "And 2 kg to Madrid?",
    "What was the tracking number of order 1042 again?",
    "What delivery times do I prefer?",
]


class ChatModel(Protocol):
    """What the loop needs from a model: Chat Completions messages and tools in, an assistant message out."""

    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Any]: ...


class OpenAIChatModel:
    """Adapter for any OpenAI-compatible endpoint through the official ``openai`` client (lazy import)."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None) -> None:
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise MissingDependencyError("agent_loop (OpenAI mode)", "openai", "openai") from None
        self.model = model
        self.client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=60.0
        )

    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        options: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if tools:
            options["tools"] = list(tools)
        response = await self.client.chat.completions.create(**options)
        message = response.choices[0].message
        reply: dict[str, Any] = message.model_dump(exclude_none=True)
        return reply

    async def close(self) -> None:
        await self.client.close()


# --- the shop's tools (offline fakes of real back ends) ---------------------------------------------

ORDERS = {1042: {"status": "in transit", "carrier": "CTT", "tracking_number": "TRK-88231-PT"}}
RATES = {"porto": 4.5, "lisbon": 4.0, "braga": 5.0, "faro": 6.5, "coimbra": 4.8, "madrid": 9.0}


@tool(name="lookup_order", cacheable=True)
async def lookup_order(order_id: int) -> dict[str, Any]:
    """Look up an order's status, carrier and tracking number.

    Args:
        order_id: The order number.
    """
    order = ORDERS.get(order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    return {"order_id": order_id, **order}


@tool(name="shipping_quote")
async def shipping_quote(city: str, weight_kg: float) -> dict[str, Any]:
    """Quote the shipping price of a parcel to a city.

    Args:
        city: Destination city.
        weight_kg: Parcel weight in kilograms.
    """
    rate = RATES.get(city.strip().lower())
    if rate is None:
        raise LookupError(f"we do not ship to {city}")
    return {
        "city": city,
        "weight_kg": weight_kg,
        "price_eur": round(rate + 1.2 * weight_kg, 2),
        "notes": "Standard delivery in 2-3 working days; insurance included up to 100 EUR.",
    }


# --- the loop --------------------------------------------------------------------------------------


@dataclass
class TurnReport:
    """What happened in one user turn."""

    user: str
    answer: str = ""
    tool_calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    recalled: list[str] = field(default_factory=list)
    request_tokens: list[int] = field(default_factory=list)


class Agent:
    """Runs user turns through the context manager, a chat model and the tools."""

    def __init__(
        self,
        manager: EnhancedContextManager,
        model: ChatModel,
        *,
        reply_reserve: int = 150,
        recall_limit: int = 3,
        max_steps: int = 6,
    ) -> None:
        self.manager = manager
        self.model = model
        self.reply_reserve = reply_reserve
        self.recall_limit = recall_limit
        self.max_steps = max_steps
        self.counter = manager.context_window.counter

    def count_request(self, messages: Sequence[dict[str, Any]]) -> int:
        """Exact tokens of a request, counted like the window counts its own messages."""
        total = 0
        for item in messages:
            message = Message.create(
                item["role"],
                item.get("content") or "",
                tool_calls=item.get("tool_calls") or None,
                tool_call_id=item.get("tool_call_id"),
            )
            total += self.counter.count_message(message)
        return total

    async def recall(self, text: str) -> list[Memory]:
        """Memories relevant to ``text`` that are not already in the window."""
        in_window = {message.content for message in self.manager.messages}
        found = await self.manager.search_memory(text, limit=self.recall_limit + 3)
        return [memory for memory in found if memory.content not in in_window][: self.recall_limit]

    async def pack(self, recalled: list[Memory]) -> list[dict[str, Any]]:
        """The window's messages plus a recall note, all within ``max_tokens - reply_reserve``."""
        budget = self.manager.config.max_tokens - self.reply_reserve
        note: list[dict[str, Any]] = []
        if recalled:
            lines = "\n".join(f"- {memory.content}" for memory in recalled)
            note = [{"role": "system", "content": f"Possibly relevant memories:\n{lines}"}]
            budget -= self.count_request(note)
        context = self.manager.get_context(format="openai", budget=max(budget, 1))
        assert isinstance(context, list)
        system_count = next((i for i, m in enumerate(context) if m["role"] != "system"), len(context))
        return context[:system_count] + note + context[system_count:]

    async def ask(self, text: str) -> TurnReport:
        report = TurnReport(user=text)
        await self.manager.add_message("user", text)
        recalled = await self.recall(text)
        report.recalled = [memory.content for memory in recalled]
        schemas = self.manager.tool_manager.get_tool_schemas(format="openai")
        for _ in range(self.max_steps):
            request = await self.pack(recalled)
            report.request_tokens.append(self.count_request(request))
            reply = await self.model.complete(request, schemas)
            calls = reply.get("tool_calls") or []
            if not calls:
                report.answer = reply.get("content") or ""
                if report.answer:  # an empty answer (cut by max_tokens, a filter) has nothing to keep
                    await self.manager.add_message("assistant", report.answer)
                return report
            results = await self.manager.execute_tool_calls(calls, content=reply.get("content") or "")
            for call, result in zip(calls, results, strict=True):
                arguments = json.loads(call["function"].get("arguments") or "{}")
                report.tool_calls.append((call["function"]["name"], arguments, result.to_content()))
        report.answer = "(stopped: too many tool steps)"
        await self.manager.add_message("assistant", report.answer)
        return report


# --- the scripted model's side of the conversation ------------------------------------------------


def _last_tool_result(messages: list[dict[str, Any]]) -> dict[str, Any]:
    content = next(m["content"] for m in reversed(messages) if m["role"] == "tool")
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return {"text": content}
    return value if isinstance(value, dict) else {"results": value}


def _order_answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    order = _last_tool_result(messages)
    return ScriptedChatModel.reply(
        f"Order {order['order_id']} is {order['status']} with {order['carrier']}, "
        f"tracking number {order['tracking_number']}."
    )


def _quote_answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    quote = _last_tool_result(messages)
    return ScriptedChatModel.reply(
        f"Shipping {quote['weight_kg']} kg to {quote['city']} costs {quote['price_eur']} EUR; "
        f"{quote['notes']}"
    )


def _tracking_answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    found = re.search(r"TRK-[0-9]+-[A-Z]+", json.dumps(_last_tool_result(messages)))
    return ScriptedChatModel.reply(
        f"The tracking number of order 1042 is {found.group(0)}." if found else "I could not find it."
    )


def _preference_answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    notes = " ".join(m["content"] for m in messages if m["role"] == "system")
    found = re.search(r"deliveries after [0-9]+ ?[ap]m", notes)
    return ScriptedChatModel.reply(f"You prefer {found.group(0)}." if found else "I don't know yet.")


def scripted_model() -> ScriptedChatModel:
    steps: list[Any] = [
        ScriptedChatModel.call_tool("lookup_order", {"order_id": 1042}),
        _order_answer,
        ScriptedChatModel.call_tool(
            "memory_add",
            {"content": "Ana prefers deliveries after 6 pm", "importance": 0.9, "tags": ["preference"]},
        ),
        ScriptedChatModel.reply("Noted: deliveries after 6 pm."),
    ]
    for city, weight in (
        ("Porto", 2),
        ("Lisbon", 5),
        ("Braga", 1),
        ("Faro", 3),
        ("Coimbra", 4),
        ("Madrid", 2),
    ):
        steps += [
            ScriptedChatModel.call_tool("shipping_quote", {"city": city, "weight_kg": weight}),
            _quote_answer,
        ]
    steps += [
        ScriptedChatModel.call_tool("memory_search", {"query": "tracking number order 1042"}),
        _tracking_answer,
        _preference_answer,
    ]
    return ScriptedChatModel(steps)


# --- running it ----------------------------------------------------------------------------------


def model_from_environment() -> OpenAIChatModel | None:
    """An OpenAI-compatible model when OPENAI_BASE_URL or OPENAI_API_KEY is set, else None."""
    base_url = os.environ.get("OPENAI_BASE_URL")
    api_key = os.environ.get("OPENAI_API_KEY")
    if not base_url and not api_key:
        return None
    return OpenAIChatModel(os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), base_url=base_url, api_key=api_key)


async def run_agent(
    ctx: ExampleContext, model: ChatModel, *, scripted: bool, max_tokens: int = 700
) -> list[TurnReport]:
    config = ContextManagerConfig(max_tokens=max_tokens, cache_path=ctx.storage("agent"))
    reports: list[TurnReport] = []
    async with EnhancedContextManager(config=config) as manager:
        manager.tool_manager.register_tool(lookup_order)
        manager.tool_manager.register_tool(shipping_quote)
        register_memory_tools(manager.tool_manager, manager.memory_manager)
        await manager.add_message("system", SYSTEM_PROMPT)
        agent = Agent(manager, model)
        for text in USER_TURNS:
            if text.startswith("What was the tracking number") and scripted:
                summary_message = manager.context_window.summary
                window_text = " ".join(
                    message.content
                    for message in manager.messages
                    if summary_message is None or message.id != summary_message.id
                )
                expect(
                    "TRK-88231-PT" not in window_text,
                    "by now the order lookup should have been evicted from the window",
                )
                ctx.ok(
                    "turn 1 (the order lookup and its answer) was compressed out of the window; "
                    "only the rolling summary mentions it"
                )
            report = await agent.ask(text)
            reports.append(report)
            print_turn(ctx, report)
            expect(
                max(report.request_tokens) <= max_tokens - agent.reply_reserve,
                f"request of {max(report.request_tokens)} tokens exceeds the budget",
            )
        history = manager.compression_history
        summary = manager.get_context_summary()
    request_budget = max_tokens - agent.reply_reserve
    ctx.ok(
        f"{len(USER_TURNS)} turns, {sum(len(r.tool_calls) for r in reports)} tool calls, "
        f"{len(history)} compressions; the window holds {summary['token_count']} of its {max_tokens} tokens"
    )
    ctx.ok(
        f"every request fit its {request_budget}-token budget ({max_tokens} minus {agent.reply_reserve} kept "
        f"for the reply): the largest used {max(max(r.request_tokens) for r in reports)}"
    )
    expect(all(report.answer for report in reports), "every turn ends with an answer")
    if scripted:
        expect(len(history) > 0, "the conversation is longer than the window: it must have compressed")
        expect("TRK-88231-PT" in reports[0].answer, "turn 1 answers from the lookup_order result")
        expect(
            "TRK-88231-PT" in reports[8].answer,
            "the evicted tracking number is recalled through memory_search",
        )
        expect("after 6 pm" in reports[9].answer, "the preference is recalled from memory into the request")
        expect(
            bool(reports[9].recalled) and "deliveries" in reports[9].recalled[0],
            f"the top recalled memory should be about deliveries, got {reports[9].recalled[:1]}",
        )
        ctx.ok(
            "recall worked: the evicted tracking number came back through memory_search, the delivery "
            "preference through the automatic recall note"
        )
    return reports


def print_turn(ctx: ExampleContext, report: TurnReport) -> None:
    # the texts are the user's, the model's and memory's: Text, not markup, so brackets and backslashes
    # print as written (rich's escape() doubles a text's final backslash at the end of a line)
    ctx.console.print(Text.assemble(("user", "bold"), ": ", report.user))
    for memory in report.recalled if ctx.verbose else report.recalled[:1]:
        ctx.console.print(Text.assemble("  ", (f"recalled: {memory}", "dim")))
    for name, arguments, result in report.tool_calls:
        shown = result if ctx.verbose or len(result) < 90 else result[:87] + "..."
        call = f" {name}({json.dumps(arguments)}) -> {shown}"
        ctx.console.print(Text.assemble("  ", ("tool", "yellow"), call))
    ctx.console.print(Text.assemble(("assistant", "bold"), ": ", report.answer))
    ctx.detail(f"  request tokens per step: {report.request_tokens}")


async def run(ctx: ExampleContext) -> None:
    """Run the loop with the scripted model (used by ``main_example.py agent``; always offline)."""
    ctx.section("Agent loop with the deterministic scripted model")
    await run_agent(ctx, scripted_model(), scripted=True)


async def main_async(ctx: ExampleContext, *, force_scripted: bool) -> None:
    model = None if force_scripted else model_from_environment()
    if model is None:
        await run(ctx)
        return
    ctx.section(f"Agent loop against {os.environ.get('OPENAI_BASE_URL', 'api.openai.com')} ({model.model})")
    try:
        await run_agent(ctx, model, scripted=False)
    finally:
        await model.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="print recalled memories and token counts"
    )
    parser.add_argument(
        "--scripted", action="store_true", help="use the scripted model even if OPENAI_* is set"
    )
    args = parser.parse_args()
    try:
        with example_context(verbose=args.verbose) as context:
            asyncio.run(main_async(context, force_scripted=args.scripted))
    except MissingDependencyError as error:  # OPENAI_* set (for another tool, say) without the extra
        sys.exit(f"error: {error}; or use the scripted model: python examples/agent_loop.py --scripted")
