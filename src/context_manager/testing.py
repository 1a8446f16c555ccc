"""Deterministic test doubles for your own tests of code built on context-manager.

What cannot run offline or deterministically (an LLM summarizer, an embedding model, the clock) has a
double here that behaves the same way on every run, records how it was called and can be told to fail,
so you can test your application's fallbacks too::

    from context_manager.testing import ScriptedSummarizer

    summarizer = ScriptedSummarizer(["The user asked about invoices."])
    manager = EnhancedContextManager(config, summarizer=summarizer)
    ...
    assert summarizer.calls[0].budget_tokens > 0
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from context_manager.core.messages import Message

__all__ = ["ScriptedSummarizer", "SummarizerCall"]


@dataclass(slots=True)
class SummarizerCall:
    """One call a :class:`ScriptedSummarizer` received."""

    messages: list[Message]
    """The messages it was asked to summarize (the previous summary first, if any)."""
    budget_tokens: int
    """The token budget it was given."""


class ScriptedSummarizer:
    """A summarizer that returns scripted texts in order and records every call.

    When the script runs out it repeats ``default``. Set ``fail_with`` to make every call raise that
    exception, or ``hang`` to make calls wait until :meth:`release` (to test the timeout fallback);
    ``started`` is set when a call begins, so a test can wait on it instead of sleeping.

    Example:
        >>> summarizer = ScriptedSummarizer(["first summary", "second summary"])
        >>> await summarizer([], 100)
        'first summary'
    """

    def __init__(
        self,
        script: Iterable[str] = (),
        *,
        default: str = "Summary of the earlier conversation.",
        fail_with: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        """Create a scripted summarizer.

        Args:
            script: Summaries returned by successive calls.
            default: What calls return once the script is used up.
            fail_with: If set, every call raises this exception (after being recorded).
            hang: If True, every call waits until :meth:`release` is called (or it is cancelled).
        """
        self.script: tuple[str, ...] = tuple(script)
        """Summaries returned by successive calls."""
        self.default = default
        """What calls return once the script is used up."""
        self.fail_with = fail_with
        """If set, every call raises this exception (after being recorded)."""
        self.hang = hang
        """If True, every call waits until :meth:`release`."""
        self.calls: list[SummarizerCall] = []
        """Every call received, in order."""
        self.started = asyncio.Event()
        """Set when a call begins."""
        self._released = asyncio.Event()

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Record the call, then fail, hang or return the next scripted summary."""
        index = len(self.calls)
        self.calls.append(SummarizerCall(list(messages), budget_tokens))
        self.started.set()
        if self.hang:
            await self._released.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return self.script[index] if index < len(self.script) else self.default

    def release(self) -> None:
        """Let hanging calls continue."""
        self._released.set()


# The deterministic embedder lives with the other embedders; it is re-exported here for tests.
from context_manager.core.memory.embeddings import HashingEmbedder  # noqa: E402

__all__ += ["HashingEmbedder"]


# --- a scripted chat model for agent loops -----------------------------------------------------------

import copy  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

ChatStep = dict[str, Any] | Callable[[list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]]
"""One step of a :class:`ScriptedChatModel` script: an OpenAI assistant message (a dict with ``content``
and optionally ``tool_calls``), or a function ``(messages, tools) -> assistant message`` computing it from
the request (to answer with what a tool returned, say)."""


@dataclass(slots=True)
class ChatCall:
    """One request a :class:`ScriptedChatModel` received."""

    messages: list[dict[str, Any]]
    """The Chat Completions messages it was sent (a deep copy)."""
    tools: list[dict[str, Any]]
    """The tool schemas it was offered (OpenAI format; empty when none)."""


class ScriptedChatModel:
    """A deterministic stand-in for a chat model: replies follow a script, every request is recorded.

    It speaks the OpenAI Chat Completions message shapes, so an agent loop written against it runs
    unchanged with a real client: :meth:`complete` takes the messages (as
    ``EnhancedContextManager.get_context("openai")`` exports them) and the tool schemas, and returns an
    assistant message dict (``{"role": "assistant", "content": ..., "tool_calls": [...]}``). Tool calls
    without an ``id`` get a deterministic one (``call_<request>_<n>``).

    Example:
        >>> model = ScriptedChatModel([
        ...     ScriptedChatModel.call_tool("lookup_order", {"order_id": 1042}),
        ...     lambda messages, tools: ScriptedChatModel.reply("Status: " + messages[-1]["content"]),
        ... ])
        >>> first = await model.complete([{"role": "user", "content": "Where is order 1042?"}])
        >>> first["tool_calls"][0]["function"]["name"]
        'lookup_order'
    """

    def __init__(
        self,
        script: Iterable[ChatStep] = (),
        *,
        default: str = "I have nothing more to add.",
        fail_with: BaseException | None = None,
    ) -> None:
        """Create a scripted model.

        Args:
            script: Replies of successive requests (dicts, or functions of the request).
            default: The text of every reply once the script is used up.
            fail_with: If set, every request raises this exception (after being recorded), to test how
                your loop handles a provider outage.
        """
        self.script: tuple[ChatStep, ...] = tuple(script)
        """Replies of successive requests."""
        self.default = default
        """The text of every reply once the script is used up."""
        self.fail_with = fail_with
        """If set, every request raises this exception (after being recorded)."""
        self.calls: list[ChatCall] = []
        """Every request received, in order."""

    @property
    def remaining(self) -> int:
        """How many scripted replies have not been used yet."""
        return max(0, len(self.script) - len(self.calls))

    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Record the request and return the next scripted assistant message (a fresh copy).

        Raises:
            Exception: ``fail_with``, when set.
        """
        recorded = ChatCall(copy.deepcopy(list(messages)), copy.deepcopy(list(tools or [])))
        index = len(self.calls)
        self.calls.append(recorded)
        if self.fail_with is not None:
            raise self.fail_with
        if index >= len(self.script):
            return self.reply(self.default)
        step = self.script[index]
        reply = step(recorded.messages, recorded.tools) if callable(step) else copy.deepcopy(step)
        for number, call in enumerate(reply.get("tool_calls") or []):
            call.setdefault("id", f"call_{index}_{number}")
        return reply

    @staticmethod
    def reply(content: str) -> dict[str, Any]:
        """An assistant message with text only (a final answer)."""
        return {"role": "assistant", "content": content}

    @staticmethod
    def call_tool(
        name: str, arguments: dict[str, Any] | None = None, *, call_id: str | None = None, content: str = ""
    ) -> dict[str, Any]:
        """An assistant message calling one tool (OpenAI shape; the id is filled in when omitted)."""
        call: dict[str, Any] = {
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments or {})},
        }
        if call_id is not None:
            call["id"] = call_id
        return {"role": "assistant", "content": content or None, "tool_calls": [call]}


__all__ += ["ChatCall", "ChatStep", "ScriptedChatModel"]
