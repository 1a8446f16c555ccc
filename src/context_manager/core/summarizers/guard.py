"""A circuit breaker around a summarizer: stop calling one that keeps failing, try it again later.

Without it, a summarizer that hangs costs ``summarizer_timeout`` on every compression. A
:class:`SummarizerGuard` counts consecutive failures (exceptions, timeouts, cancellations, and text no
message can hold: not a ``str``, a lone surrogate, a NUL; not a window's call whose add was cancelled by
its caller or cut short by a shutdown: nobody waited for it any more); after ``failure_threshold`` of them it
*opens*: for ``cooldown`` seconds every call raises
:class:`~context_manager.core.errors.SummarizerUnavailableError` at once, so the window uses the extractive
summary without waiting and records why in ``compression_history``. When the cooldown has passed, one
trial call goes through (*half-open*): a success closes the circuit, a failure opens it again for twice
the previous cooldown (at most ``max_cooldown``).

``EnhancedContextManager`` wraps the summarizer it is given (or builds from ``config.summarizer``) in a
guard with ``config.summarizer_failure_threshold`` and ``config.summarizer_cooldown``; its state is in
``get_system_status()["summarizer"]``. Wrap one yourself to use it with a bare ``ContextWindow``::

    window = ContextWindow(4000, summarizer=SummarizerGuard(my_summarizer, failure_threshold=3, cooldown=60))

An :class:`~context_manager.core.summarizers.llm.LLMSummarizer` (the OpenAI and Anthropic adapters, or your
subclass) has the token usage of every summary passed to ``on_report``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from context_manager.core.compression import Summarizer, check_summary_text
from context_manager.core.compression.summarizer import summary_call_abandoned
from context_manager.core.errors import (
    InvalidArgumentError,
    SummarizerRequestError,
    SummarizerUnavailableError,
)
from context_manager.core.messages import Message
from context_manager.core.summarizers.llm import LLMSummarizer, SummaryUsage

__all__ = ["CircuitState", "SummarizerGuard", "SummaryReport"]

logger = logging.getLogger(__name__)

_call_observer: contextvars.ContextVar[Callable[[SummaryReport], None] | None] = contextvars.ContextVar(
    "context_manager_summary_call_observer", default=None
)
"""Also receives the report of the guard's call made in this context (see :func:`observed`)."""


class CircuitState(StrEnum):
    """The state of a :class:`SummarizerGuard`."""

    CLOSED = "closed"
    """Calls go through (normal operation)."""
    OPEN = "open"
    """Calls are refused until the cooldown has passed."""
    HALF_OPEN = "half_open"
    """One trial call is in flight; others are refused until it ends."""


@dataclass(frozen=True, slots=True)
class SummaryReport:
    """One call of a guarded summarizer, as passed to ``on_report`` (not sent for refused calls)."""

    duration_s: float
    """Wall time of the call."""
    success: bool
    """Whether it returned a summary."""
    error: str | None
    """For a failure, the exception's type (its text may quote the conversation, so it is left out);
    ``"TimeoutError"`` for a call cancelled by a timeout (the window's ``summarizer_timeout``)."""
    usage: SummaryUsage | None
    """Tokens the summary cost, when the summarizer reports them (the LLM adapters do)."""


class SummarizerGuard:
    """A summarizer wrapped in a circuit breaker (see the module docstring).

    Args:
        summarizer: The async callable ``(messages, budget_tokens) -> str`` to protect.
        failure_threshold: Consecutive failures that open the circuit (>= 1).
        cooldown: Seconds the circuit stays open the first time (> 0).
        max_cooldown: Longest cooldown after repeated failed trials (default ``10 * cooldown``).
        on_report: Called after every call that went through, with a :class:`SummaryReport`; an exception
            it raises is logged and ignored.
        clock: Monotonic seconds (tests pass a controllable clock).

    Raises:
        InvalidArgumentError: an argument is out of range.
    """

    def __init__(
        self,
        summarizer: Summarizer,
        *,
        failure_threshold: int = 3,
        cooldown: float = 60.0,
        max_cooldown: float | None = None,
        on_report: Callable[[SummaryReport], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not callable(summarizer):
            raise InvalidArgumentError(
                "summarizer", summarizer, "an async callable (messages, budget) -> str"
            )
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise InvalidArgumentError("failure_threshold", failure_threshold, "an integer >= 1")
        _check_positive("cooldown", cooldown)
        if max_cooldown is None:
            max_cooldown = 10.0 * cooldown
        _check_positive("max_cooldown", max_cooldown)
        if max_cooldown < cooldown:
            raise InvalidArgumentError(
                "max_cooldown", max_cooldown, f"a number of seconds >= cooldown ({cooldown:g})"
            )
        if on_report is not None and not callable(on_report):
            raise InvalidArgumentError("on_report", on_report, "a callable taking a SummaryReport, or None")
        if clock is not None and not callable(clock):
            raise InvalidArgumentError("clock", clock, "a callable returning monotonic seconds, or None")
        self.summarizer = summarizer
        """The protected summarizer."""
        self.failure_threshold = failure_threshold
        """Consecutive failures that open the circuit."""
        self.cooldown = float(cooldown)
        """Seconds the circuit stays open the first time."""
        self.max_cooldown = float(max_cooldown)
        """Longest cooldown after repeated failed trials."""
        self.on_report = on_report
        """Receives a :class:`SummaryReport` after every call that went through."""
        self._clock = clock if clock is not None else time.monotonic
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._current_cooldown = self.cooldown
        self._retry_at = 0.0
        self._last_error: str | None = None
        self._calls = 0
        self._failures = 0
        self._refused = 0
        self._trips = 0

    # -- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """``closed``, ``open`` or ``half_open``.

        An open circuit whose cooldown has passed still says open until the next call tries.
        """
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._consecutive_failures

    def status(self) -> dict[str, Any]:
        """The guard's figures as a JSON-ready dict.

        Keys: ``summarizer`` (its repr or name), ``state``, ``consecutive_failures``,
        ``failure_threshold``, ``retry_in`` (seconds until a trial call, 0 unless open), ``cooldown`` (the
        current one), ``calls``, ``failures``, ``refused`` (calls answered by the open circuit), ``trips``
        (times it opened) and ``last_error`` (the exception's type; an adapter's ``SummarizerRequestError``
        with its message, which holds no payload).
        """
        retry_in = max(self._retry_at - self._clock(), 0.0) if self._state is CircuitState.OPEN else 0.0
        return {
            "summarizer": getattr(self.summarizer, "name", None) or _describe(self.summarizer),
            "state": self._state.value,
            "consecutive_failures": self._consecutive_failures,
            "failure_threshold": self.failure_threshold,
            "retry_in": retry_in,
            "cooldown": self._current_cooldown,
            "calls": self._calls,
            "failures": self._failures,
            "refused": self._refused,
            "trips": self._trips,
            "last_error": self._last_error,
        }

    def reset(self) -> None:
        """Close the circuit and forget the failures (e.g. after fixing the summarizer's configuration)."""
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._current_cooldown = self.cooldown
        self._retry_at = 0.0

    # -- calling --------------------------------------------------------------------------------------

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Call the summarizer unless the circuit is open.

        Raises:
            SummarizerUnavailableError: the circuit is open (the summarizer was not called).
            SummarizerError: the summarizer returned something other than a string, or text no message
                can hold (a lone surrogate, a NUL character).
            Exception: whatever the summarizer raised (counted as a failure).
        """
        self._admit()
        self._calls += 1
        started = self._clock()
        usage: SummaryUsage | None = None
        try:
            if isinstance(self.summarizer, LLMSummarizer):
                response = await self.summarizer.complete(messages, budget_tokens)
                text, usage = response.text, response.usage
            else:
                text = await self.summarizer(messages, budget_tokens)
            text = check_summary_text(text)  # unusable text counts as a failure, like an exception
        except asyncio.CancelledError:
            if summary_call_abandoned():
                # the window's caller gave up (or the window drains for a shutdown): the summarizer did
                # not fail; a trial call abandoned so leaves the next call to be the trial
                self._abandoned()
                raise
            # the window's summarizer_timeout (or the caller's own timeout) cancelled the call: a hang
            # counts like any failure
            elapsed = self._clock() - started
            self._failed(f"cancelled after {elapsed:.1f} s", elapsed, error_type="TimeoutError")
            raise
        except Exception as error:
            # an answer refused here (a NUL ...) was billed all the same: its usage is reported too
            billed = getattr(error, "usage", None) or usage
            kind = type(error).__name__
            # an LLM adapter's request error is its own text, without payload ("openai:m: HTTP 401
            # (AuthenticationError); check the API key"): what to fix, in the status and the warning
            description = f"{kind}: {error}"[:300] if isinstance(error, SummarizerRequestError) else kind
            self._failed(description, self._clock() - started, billed, error_type=kind)
            raise
        self._succeeded(self._clock() - started, usage)
        return text

    def _admit(self) -> None:
        """Let a call through, or raise if the circuit is open (moving to half-open once cooled down)."""
        if self._state is CircuitState.CLOSED:
            return
        now = self._clock()
        if self._state is CircuitState.OPEN and now >= self._retry_at:
            self._state = CircuitState.HALF_OPEN  # this call is the trial
            logger.info("summarizer circuit half-open: trying the summarizer again")
            return
        self._refused += 1
        retry_in = max(self._retry_at - now, 0.0)
        reason = (
            "a trial call is in flight"
            if self._state is CircuitState.HALF_OPEN
            else f"next try in {retry_in:.0f} s"
        )
        raise SummarizerUnavailableError(
            f"circuit open after {self._consecutive_failures} consecutive failures "
            f"(last: {self._last_error}); {reason}",
            retry_in=retry_in,
        )

    def _failed(
        self,
        description: str,
        elapsed: float,
        usage: SummaryUsage | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        self._last_error = description
        if self._state is CircuitState.HALF_OPEN:
            self._current_cooldown = min(self._current_cooldown * 2.0, self.max_cooldown)
            self._open(f"the trial call failed ({description})")
        elif self._state is CircuitState.CLOSED and self._consecutive_failures >= self.failure_threshold:
            self._open(f"{self._consecutive_failures} consecutive failures (last: {description})")
        self._report(SummaryReport(elapsed, False, error_type or description, usage))

    def _abandoned(self) -> None:
        """A call its caller gave up on: not counted; an abandoned trial is made again by the next call."""
        if self._state is CircuitState.HALF_OPEN:
            self._state = CircuitState.OPEN  # its cooldown has passed: the next call is admitted as the trial

    def _open(self, why: str) -> None:
        self._state = CircuitState.OPEN
        self._trips += 1
        self._retry_at = self._clock() + self._current_cooldown
        logger.warning(
            "summarizer circuit open: %s; extractive summaries for the next %.0f s",
            why,
            self._current_cooldown,
        )

    def _succeeded(self, elapsed: float, usage: SummaryUsage | None) -> None:
        if self._state is CircuitState.HALF_OPEN:
            logger.info("summarizer circuit closed: the trial call succeeded")
        self._state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._current_cooldown = self.cooldown
        self._report(SummaryReport(elapsed, True, None, usage))

    def _report(self, report: SummaryReport) -> None:
        extra = _call_observer.get()
        for observer in (self.on_report, None if extra is self.on_report else extra):
            if observer is None:
                continue
            try:
                observer(report)
            except Exception as error:  # a broken observer must not break compression
                logger.warning("summarizer report callback failed (%s)", type(error).__name__)

    def __repr__(self) -> str:
        return f"SummarizerGuard({_describe(self.summarizer)}, state={self._state.value})"


class _Observed:
    """A guard whose calls through this object are reported to ``observer`` too (see :func:`observed`)."""

    __slots__ = ("guard", "observer")

    def __init__(self, guard: SummarizerGuard, observer: Callable[[SummaryReport], None]) -> None:
        self.guard = guard
        self.observer = observer

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        token = _call_observer.set(self.observer)
        try:
            return await self.guard(messages, budget_tokens)
        finally:
            _call_observer.reset(token)

    def __repr__(self) -> str:
        return repr(self.guard)


def observed(guard: SummarizerGuard, observer: Callable[[SummaryReport], None]) -> Summarizer:
    """``guard``, with the reports of the calls made through the result also passed to ``observer``.

    How a manager given a guard of the caller's records the calls its own window makes, besides the
    guard's ``on_report``: a guard shared by several managers (one circuit breaker for one endpoint) has
    each call reported to the manager that made it only.
    """
    return _Observed(guard, observer)


def _describe(summarizer: Any) -> str:
    name = getattr(summarizer, "__qualname__", None) or type(summarizer).__qualname__
    return str(name)


def _check_positive(name: str, value: Any) -> None:
    valid = (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
    if not valid:
        raise InvalidArgumentError(name, value, "a finite number of seconds > 0")
