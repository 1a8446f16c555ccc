"""The outcome of a tool call: :class:`ToolResult` and :class:`ToolErrorType`.

A :class:`ToolResult` is returned for every call, successful or not; the tool manager never raises for
tool-side problems (unknown tool, invalid arguments, permission denied, rate limited, timeout, an exception
inside the tool). ``error`` is written so a model can act on it: it names the field, what was given and
what is expected, or when to retry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from context_manager.core.errors import InvalidArgumentError

__all__ = ["REFUSED_TOOL_CALLS", "ToolErrorType", "ToolResult"]


class ToolErrorType(StrEnum):
    """Why a tool call failed. Members compare equal to their strings (``"timeout"``)."""

    UNKNOWN_TOOL = "unknown_tool"
    """No tool is registered under the requested name."""
    INVALID_ARGUMENTS = "invalid_arguments"
    """The arguments do not match the tool's parameters (the message names field, value and expectation)."""
    PERMISSION_DENIED = "permission_denied"
    """The permission policy (or the approval callback) refused the call."""
    RATE_LIMITED = "rate_limited"
    """The tool's rate limit is exhausted; ``retry_after`` says when a call will be admitted."""
    TIMEOUT = "timeout"
    """The tool ran past its effective timeout."""
    TOOL_ERROR = "tool_error"
    """The tool raised an exception, or returned a value that is not JSON-serialisable."""
    OVERLOADED = "overloaded"
    """Not run: the tool has ``max_abandoned_calls`` (its own, else ``ToolManager.max_abandoned_calls``)
    calls still running after their timeout (they ignored their cancellation, or are sync calls a thread
    cannot stop), its calls in flight counted too once it has ignored a cancellation; retry when they end."""
    CANCELLED = "cancelled"
    """The call was abandoned without a result (``EnhancedContextManager.cancel_tool_calls``): its worker
    was killed or its task cancelled before the result was added. ``ToolManager.get_tool_stats()`` also
    counts under it the calls their caller cancelled (which return no result)."""


REFUSED_TOOL_CALLS = frozenset(
    {
        ToolErrorType.UNKNOWN_TOOL,
        ToolErrorType.INVALID_ARGUMENTS,
        ToolErrorType.PERMISSION_DENIED,
        ToolErrorType.RATE_LIMITED,
    }
)
"""The failures that refuse the caller's (the model's) input (HTTP's 404, 400, 403, 429): counted as
rejected, not as failures of the service, by the performance monitors and OpenTelemetry."""


class _EncodedSlot:
    """The slot of the JSON text the manager keeps for a result.

    Not a dataclass field: ``asdict``, ``fields``, ``repr``, ``==``, pickling and ``replace`` leave it out.
    """

    __slots__ = ("_encoded",)
    _encoded: tuple[Any, str]

    def _keep_text(self, result: Any, text: str) -> None:
        """Keep ``text``, the JSON of ``result``, for ``to_content()`` (the manager's, once encoded)."""
        self._encoded = (result, text)


_KEPT_TEXT_CHARS = 1_000_000
"""From this length, ``to_content()`` gives the JSON text the manager kept (a few ms of encoding and more)."""


@dataclass(slots=True)
class ToolResult(_EncodedSlot):
    """The outcome of one tool call.

    Example:
        >>> result = ToolResult(success=True, result={"word_count": 6}, tool_name="text_analyzer")
        >>> result.to_content()
        '{"word_count": 6}'
    """

    success: bool
    """True when the tool ran and returned a JSON-serialisable value."""
    result: Any = None
    """What the tool returned (JSON-ready data: pydantic models and dataclasses are converted to dicts);
    None on failure."""
    error: str | None = None
    """On failure, a message a model can act on; None on success."""
    error_type: ToolErrorType | None = None
    """On failure, why it failed (compares equal to strings like ``"timeout"``); None on success."""
    execution_time: float = 0.0
    """Seconds the call took inside the manager (validation, waiting and the tool itself)."""
    tool_name: str = ""
    """The tool that was asked for."""
    cached: bool = False
    """True when the result came from the tool result cache and the tool did not run."""
    call_id: str | None = None
    """The provider's tool call id this result answers (for ``execute_tool_calls``), else None."""
    retry_after: float | None = None
    """For ``rate_limited`` failures, seconds until a call will be admitted; else None."""
    # _encoded (a slot of the base class, unset until the manager sets it): (result, its JSON text) as the
    # manager encoded it when the call returned. The window takes it as it is (_message_text), so a large
    # result is not encoded a second time on the event loop; to_content() reuses it only for a result of
    # megabytes, the caller may have changed a result in place since

    def __post_init__(self) -> None:
        kind = self.error_type
        if kind is not None and type(kind) is not ToolErrorType:
            # its string, as ``to_dict()`` writes it: ``ToolResult(**stored)`` rebuilds a stored result
            try:
                self.error_type = ToolErrorType(kind)
            except ValueError:
                allowed = "one of " + ", ".join(repr(member.value) for member in ToolErrorType) + ", or None"
                raise InvalidArgumentError("error_type", kind, allowed) from None

    def to_content(self) -> str:
        """Return the text a tool result message carries in the context window.

        A string result is used as is; any other result is JSON (of ``result`` as it is now); a failure
        reads ``"Error (<error_type>): <error>"``. A result whose JSON has a million characters or more
        gives the text the manager made when the call returned (encoding it again would hold the event
        loop): after changing such a result in place, assign it anew (``result.result = trimmed``).
        """
        if not self.success:
            kind = self.error_type.value if self.error_type is not None else "tool_error"
            return f"Error ({kind}): {self.error}"
        if isinstance(self.result, str):
            return self.result
        try:
            encoded = self._encoded
        except AttributeError:  # not set: a result made outside the manager
            pass
        else:
            if encoded[0] is self.result and len(encoded[1]) >= _KEPT_TEXT_CHARS:
                return encoded[1]
        return json.dumps(self.result, ensure_ascii=False, allow_nan=False)

    def _message_text(self) -> str:
        """:meth:`to_content` as the call returned: the text the manager kept, when it did.

        For the window (and whoever takes the text as the call returns): the result is not encoded again.
        """
        if self.success:
            try:
                encoded = self._encoded
            except AttributeError:
                pass
            else:
                if encoded[0] is self.result:
                    return encoded[1]
        return self.to_content()

    def to_dict(self) -> dict[str, Any]:
        """Return every field as a JSON-ready dict (``error_type`` as its string)."""
        return {
            "success": self.success,
            "result": self.result,
            "error": self.error,
            "error_type": None if self.error_type is None else self.error_type.value,
            "execution_time": self.execution_time,
            "tool_name": self.tool_name,
            "cached": self.cached,
            "call_id": self.call_id,
            "retry_after": self.retry_after,
        }
