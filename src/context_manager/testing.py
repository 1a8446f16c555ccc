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
