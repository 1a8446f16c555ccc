"""Run a model's tool calls and record them in a context window, correctly paired.

:func:`execute_tool_calls_in_window` is what ``EnhancedContextManager.execute_tool_calls`` does:

1. the calls are parsed (OpenAI ``tool_calls`` items, Anthropic ``tool_use`` blocks or ``ToolCall``);
   malformed batches (no id, repeated ids) raise before anything changes;
2. the assistant message carrying the calls is put in the window unless it is already there (all the
   calls pending), so a tool result never appears without its call. An id an answered call in the window
   has (servers that number calls per response: ``call_0`` every turn) makes a new call, held as
   ``call_0~2`` (see ``ContextWindow.resolve_tool_call_id``); the very calls of the newest assistant
   message, already answered, are refused (a step run twice);
3. the calls run concurrently through the :class:`~context_manager.core.tool_system.manager.ToolManager`
   (every check applies);
4. one tool result message per call is added, in call order, right after the call (the window puts it
   there even when other messages were added while the tools ran), all in one batch. A result longer
   than the tool's ``max_output_tokens`` is cut in the window with a visible marker; the returned
   ``ToolResult`` keeps the full output (and ``on_truncated`` receives it, e.g. to store it in memory).
   Cutting costs about as much as the part kept; an output of more than 100,000 characters is counted and
   cut in a worker thread, so a megabyte output does not hold the event loop.

Once tools ran, their results are never lost. Before anything runs (or is added), the window is checked
to have room for the assistant message and the smallest answer of every call (a tool message with no
text); if not, ``ContextBudgetError`` is raised and nothing runs. Afterwards, when the results do not fit
(protected messages fill the window), the largest is replaced by :data:`OMITTED_CONTENT`, then by no text
at all (metadata ``omitted: True``), until they fit; ``on_truncated`` receives each omitted output. Only
if the window changed *while the tools ran* so as to take that room (a system, pinned or critical
message added, a pin) can the results not be added: they are still returned, ``on_truncated`` receives
each output, a warning is logged, and the calls stay pending (answer them with
:func:`cancel_tool_calls_in_window` once there is room). A call answered or evicted while its tool ran
(``cancel_tool_calls``, a compression) is skipped: its result is returned, not added.

:func:`cancel_tool_calls_in_window` answers calls that will never get their result (the worker that ran
them was killed, or its task cancelled) with a failed result, so their unit can be compressed like any
other and the model sees that they did not complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import (
    ContextBudgetError,
    ConversationConflictError,
    InvalidArgumentError,
    InvalidMessageError,
    NotFoundError,
    ToolCallPairingError,
)
from context_manager.core.messages import Message, Role, ToolCall, json_copy, thinking_blocks
from context_manager.core.text import storable
from context_manager.core.tokens import OFF_LOOP_CHARS, TokenCounter, cut_to_tokens
from context_manager.core.tool_system.manager import ParsedToolCall, ToolManager
from context_manager.core.tool_system.results import ToolErrorType, ToolResult

__all__ = [
    "CANCELLED_REASON",
    "TRUNCATION_MARKER",
    "TruncationCallback",
    "cancel_tool_calls_in_window",
    "execute_tool_calls_in_window",
    "pending_calls_in_window",
]

logger = logging.getLogger(__name__)

TRUNCATION_MARKER = "\n[tool output truncated: {shown} of {total} tokens shown]"
"""Appended to a tool result cut to ``max_output_tokens`` in the window."""
OMITTED_CONTENT = "[tool output omitted: it does not fit in the context budget]"
"""Stands in for a tool result that cannot fit in the window even after compression (metadata
``omitted: True``); a result with no text at all when even this does not fit."""

CANCELLED_REASON = "the call was interrupted before it returned a result; it may not have run"
"""The default ``error`` of the failed results :func:`cancel_tool_calls_in_window` adds."""

TruncationCallback = Callable[[ToolCall, ToolResult, str], Awaitable[None] | None]
"""Receives ``(call, result, full_text)`` for each result cut in the window (sync or async)."""


def _full_text(manager: ToolManager, call: ToolCall, result: ToolResult) -> str:
    """The result's text, with the values of the tool's sensitive arguments cut out.

    A NUL character or a lone surrogate (a subprocess's output, a file name read with
    ``surrogateescape``) becomes U+FFFD: a message cannot hold them, and the result must find its call.
    """
    text = result._message_text()  # the text the manager kept as the call returned: not encoded again
    if call.name in manager:
        definition = manager.get_tool(call.name)
        if definition.sensitive_arguments:
            text = definition.scrub(text, call.arguments)
    return storable(text)


def _cut_output(counter: TokenCounter, text: str, limit: int) -> tuple[str, int | None]:
    """The text for the window and, when cut, the full text's token count (sync: may run in a thread)."""
    total = counter.count(text)
    if total <= limit:
        return text, None
    marker_budget = counter.count(TRUNCATION_MARKER.format(shown=limit, total=total))
    head = cut_to_tokens(counter, text, max(limit - marker_budget, 1))
    shown = counter.count(head)
    return head + TRUNCATION_MARKER.format(shown=shown, total=total), total


async def _window_text(window: ContextWindow, text: str, limit: int | None) -> tuple[str, int | None]:
    """Return the text for the window and, when it was cut, the full text's token count."""
    if limit is None or not text:
        return text, None
    if len(text) > OFF_LOOP_CHARS:
        return await asyncio.to_thread(_cut_output, window.counter, text, limit)
    return _cut_output(window.counter, text, limit)


async def execute_tool_calls_in_window(
    manager: ToolManager,
    window: ContextWindow,
    calls: Sequence[ToolCall | Mapping[str, Any]],
    *,
    content: str = "",
    thinking: Any = None,
    caller_key: str | None = None,
    on_truncated: TruncationCallback | None = None,
    store: Callable[[], Awaitable[None]] | None = None,
    recover: Callable[[ConversationConflictError], Awaitable[None]] | None = None,
) -> list[ToolResult]:
    """Run ``calls`` and append one paired tool result message per call to ``window``.

    Args:
        manager: Runs the tools.
        window: Receives the assistant message (if absent) and the tool result messages.
        calls: The model's tool calls.
        content: Text of the assistant message when it has to be added (what the model said with the calls).
        thinking: Anthropic thinking blocks of that assistant message (``Message.create``'s ``thinking``).
        caller_key: Rate-limit key of the caller (see ``ToolManager.call_tool``).
        on_truncated: Receives each result that was cut in the window, with its full text.
        store: Stores the window's changes (a persisted conversation). Awaited once the assistant message
            is in the window, before any tool runs (a worker killed while its tools run leaves the calls
            pending; a conflict is met before any side effect: what it raises then is raised, and no tool
            runs), and once the results are added. When it raises ``ConversationConflictError`` then
            (another writer stored a change while the tools ran, and the window now holds what storage
            holds), the results are added again to the calls still pending and stored again: the tools
            ran, so their results are returned, never the conflict. The same when adding the results
            meets the conflict (the window's overflow check, before a compression).
        recover: Awaited with such a conflict before the results are added again (a persisted
            conversation's ``recover``: the window is put back to what storage holds).

    Returns:
        The results, in call order (full output, never cut), with the call ids given (the window may
        hold a call made again as ``id~n``).

    Raises:
        InvalidMessageError: a call has no id or name, or ids repeat (nothing changes).
        ToolCallPairingError: the calls are those of the newest assistant message (ids, names,
            arguments) and already answered, only part of them is pending, a call reuses the id of a
            call still waiting for its result, two of them name one pending call (``call_0`` and the
            window's ``call_0~2``), or another call of this function is running some of them now (nothing
            changes, nothing runs).
        ContextBudgetError: the assistant message and the smallest answer of every call (a result with no
            text) cannot fit in the window (nothing runs, nothing changes). Once the tools ran, results
            are always returned (see the module docstring).
    """
    parsed = manager._parse_tool_calls(calls)
    ids = [item.call.id for item in parsed]
    # the unanswered calls they are in the window (a call reusing an answered call's id is held as id~n)
    held = [window.resolve_tool_call_id(call_id) for call_id in ids]
    _refuse_one_call_twice(ids, held)
    running = _RUNNING.setdefault(window, set())
    already = [
        call_id
        for call_id, window_id in zip(ids, held, strict=True)
        if call_id in running or (window_id is not None and window_id in running)
    ]
    if already:  # another execute_tool_calls runs them now: running them again would do everything twice
        raise ToolCallPairingError(
            "calls", already, "calls not already running (another execute_tool_calls is running them)"
        )
    assistant: Message | None = None
    if not all(window_id is not None for window_id in held):
        partly = [call_id for call_id, window_id in zip(ids, held, strict=True) if window_id is not None]
        if partly:
            raise ToolCallPairingError(
                "calls",
                partly,
                "calls that are all unanswered in the window, or all new (only part of them is pending)",
            )
        # the window (and so memory and exports) gets the calls with sensitive arguments redacted
        shown = [
            ToolCall(
                item.call.id, item.call.name, manager.redact_arguments(item.call.name, item.call.arguments)
            )
            for item in parsed
        ]
        _refuse_rerun(window, shown)
        assistant = Message.create("assistant", content, tool_calls=list(shown), thinking=thinking)
    elif thinking is not None and held and held[0] is not None:  # the thinking must not be lost
        _check_pending_thinking(window, held[0], thinking)
    # Once the tools ran their results must find room: check it before anything runs or is added, with the
    # smallest answer every call can get (a result with no text)
    smallest = [_answer_message(item.call.id, "", {"omitted": True}) for item in parsed]
    window.check_fits(smallest if assistant is None else [assistant, *smallest])
    claimed = {*ids, *(window_id for window_id in held if window_id is not None)}
    running.update(claimed)
    try:
        return await _run_and_answer(
            manager, window, parsed, held, assistant, caller_key, on_truncated, store, recover, claimed
        )
    finally:
        running.difference_update(claimed)


def _refuse_one_call_twice(ids: list[str], held: list[str | None]) -> None:
    """Refuse two ids given that name one pending call: the model's ``call_0`` and the window's ``call_0~2``.

    Raises:
        ToolCallPairingError: two of them do (nothing changes, nothing runs).
    """
    if len(held) < 2:
        return
    first: dict[str, str] = {}
    for call_id, window_id in zip(ids, held, strict=True):
        if window_id is None:
            continue
        if window_id in first:
            raise ToolCallPairingError(
                "calls",
                [first[window_id], call_id],
                f"ids of distinct calls: both name the pending call {window_id!r} (an id made again is "
                "held as id~n, and the id the model made names the newest pending call of that id)",
            )
        first[window_id] = call_id


def _check_pending_thinking(window: ContextWindow, call_id: str, thinking: Any) -> None:
    """Refuse ``thinking`` for calls already in the window when their assistant message holds other thinking.

    The message is not added again, so thinking given now would be lost silently, and Anthropic refuses
    the next request of a tool-use turn without its thinking blocks (HTTP 400).

    Raises:
        InvalidMessageError: the blocks are invalid, or they are not the thinking of that message.
    """
    # the thinking blocks themselves (the places of renamed calls between them may read otherwise)
    blocks = tuple(block for block in thinking_blocks(thinking) if block["type"] != "tool_use")
    for message in reversed(window.messages):
        if any(call.id == call_id for call in message.tool_calls):
            held = tuple(block for block in message.thinking if block["type"] != "tool_use")
            if held != blocks:
                raise InvalidMessageError(
                    "thinking",
                    thinking,
                    "the thinking of the assistant message that made the calls, or none: that message is "
                    "in the window already, so give thinking= to add_message when adding it (or leave "
                    "adding it to execute_tool_calls)",
                    detail=f"it holds {len(held)} thinking block(s), {len(blocks)} given",
                )
            return


def _refuse_rerun(window: ContextWindow, calls: list[ToolCall]) -> None:
    """Refuse calls that are those of the newest assistant message, already answered: a step run twice.

    A server numbering calls per response makes ids again (the window then holds the new calls as
    ``id~n``), so an answered id alone does not mean the calls ran; the same calls (ids, names, arguments)
    as the newest assistant message, with only their results after it, do (a retried agent step).

    Raises:
        ToolCallPairingError: they are (nothing changes).
    """
    for message in reversed(window.messages):
        if message.role is Role.TOOL:
            continue
        made = message.tool_calls
        if len(made) != len(calls) or not all(
            _same_call(earlier, call) for earlier, call in zip(made, calls, strict=True)
        ):
            return
        raise ToolCallPairingError(
            "calls",
            [call.id for call in calls],
            "calls other than those of the newest assistant message, which already ran and have their "
            "results (the same ids, names and arguments: a step run twice?); if the model did make them "
            "again, add its message with add_message('assistant', ..., tool_calls=...) first: "
            "execute_tool_calls then runs the calls pending",
        )


def _same_call(earlier: ToolCall, call: ToolCall) -> bool:
    """Whether ``earlier`` (as the window holds it, maybe renamed ``id~n``) is ``call`` made again."""
    if earlier.name != call.name or earlier.arguments != call.arguments:
        return False
    held, made = earlier.id, call.id
    return held == made or (held.startswith(made + "~") and held[len(made) + 1 :].isdigit())


async def _run_and_answer(
    manager: ToolManager,
    window: ContextWindow,
    parsed: list[ParsedToolCall],
    held: list[str | None],
    assistant: Message | None,
    caller_key: str | None,
    on_truncated: TruncationCallback | None,
    store: Callable[[], Awaitable[None]] | None,
    recover: Callable[[ConversationConflictError], Awaitable[None]] | None,
    claimed: set[str],
) -> list[ToolResult]:
    """Add the assistant message (if new), run the calls and add their answers (see the caller).

    The ids the window holds new calls under join ``claimed`` and the window's running ids.
    """
    if assistant is not None:
        await window.add(assistant)
        # the ids the window holds the calls under (one reusing an answered call's id is renamed id~n)
        try:
            held = [call.id for call in window.get(assistant.id).tool_calls]
        except NotFoundError:  # evicted meanwhile (cancelled, then compressed): the results are not added
            held = [None] * len(parsed)
        renamed = {window_id for window_id in held if window_id is not None}
        claimed.update(renamed)
        _RUNNING.setdefault(window, set()).update(renamed)
    if store is not None:
        await store()

    results = await manager._run_parsed_calls(
        [_with_own_arguments(item) for item in parsed], caller_key=caller_key
    )

    answers: list[_Answer] = []
    for item, result, window_id in zip(parsed, results, held, strict=True):
        call = item.call
        if window_id is None or window_id not in window.pending_tool_calls:
            # compression evicted the whole unit (assistant message and earlier results) meanwhile, or the
            # call was cancelled: a result without its call (or a second one) must not enter the window
            logger.debug("tool call %s was answered or evicted before its result; result not added", call.id)
            continue
        limit = manager.get_tool(call.name).max_output_tokens if call.name in manager else None
        full_text = _full_text(manager, call, result)
        text, total = await _window_text(window, full_text, limit)
        metadata = _result_metadata(call, result)
        if total is not None:
            metadata["truncated"] = True
            metadata["original_tokens"] = total
        answers.append(_Answer(call, window_id, result, full_text, text, metadata, total))

    if store is None:
        answers, stored = await _add_answers(window, answers)
    else:
        answers, stored = await _add_and_store_answers(window, answers, store, recover)
    if not stored:
        # messages added while the tools ran took the room checked above: the outputs are kept (returned,
        # and given to on_truncated), the calls stay pending
        logger.warning(
            "the results of tool calls %s do not fit in the window (protected messages added while the tools "
            "ran fill it); returned but not added, the calls stay pending",
            ", ".join(answer.window_id for answer in answers),
        )
    if on_truncated is not None:
        for answer in answers:
            if stored and answer.total is None and answer.level == _WHOLE:
                continue  # in the window whole
            outcome = on_truncated(answer.call, answer.result, answer.full_text)
            if inspect.isawaitable(outcome):
                await outcome
    return results


def _with_own_arguments(item: ParsedToolCall) -> ParsedToolCall:
    """``item`` with a copy of its nested argument values (lists, objects).

    Flat arguments are shared: the manager copies the top level itself.
    """
    arguments = item.call.arguments
    if not any(isinstance(value, dict | list | tuple) for value in arguments.values()):
        return item
    call = ToolCall(item.call.id, item.call.name, json_copy(arguments))
    return dataclasses.replace(item, call=call)


_RUNNING: weakref.WeakKeyDictionary[ContextWindow, set[str]] = weakref.WeakKeyDictionary()
"""The ids of the calls ``execute_tool_calls_in_window`` is running, per window."""

_WHOLE = 0
"""The result's text (cut to ``max_output_tokens`` when longer)."""
_OMITTED_TEXT = 1
""":data:`OMITTED_CONTENT` instead of the text."""
_NO_TEXT = 2
"""No text at all: the smallest answer a call can get."""


@dataclass(slots=True)
class _Answer:
    """One call's result on its way into the window."""

    call: ToolCall
    """The call it answers, as given (its id as the model made it)."""
    window_id: str
    """The id the window holds the call under (``call.id``, or ``call.id~n`` when the id was made again)."""
    result: ToolResult
    """What the tool returned (returned to the caller as it is)."""
    full_text: str
    """The result's whole text (sensitive arguments cut out)."""
    text: str
    """The text for the window (cut to ``max_output_tokens`` when longer)."""
    metadata: dict[str, Any]
    """The tool message's metadata."""
    total: int | None
    """Tokens of ``full_text`` when ``text`` is cut, else None."""
    level: int = _WHOLE
    """How much of the text the message holds: :data:`_WHOLE`, :data:`_OMITTED_TEXT` or :data:`_NO_TEXT`."""

    def message(self) -> Message:
        """The tool message at the current level."""
        if self.level == _WHOLE:
            return _answer_message(self.window_id, self.text, self.metadata)
        content = OMITTED_CONTENT if self.level == _OMITTED_TEXT else ""
        return _answer_message(self.window_id, content, {**self.metadata, "omitted": True})

    def shrink(self) -> None:
        """Go to the next smaller level (straight to no text when the text is not longer than the marker)."""
        if self.level == _WHOLE and len(self.text) > len(OMITTED_CONTENT):
            self.level = _OMITTED_TEXT
        else:
            self.level = _NO_TEXT


_STORE_ATTEMPTS = 5
"""How many times the results are added again after other writers' changes refused their write."""


async def _add_and_store_answers(
    window: ContextWindow,
    answers: list[_Answer],
    store: Callable[[], Awaitable[None]],
    recover: Callable[[ConversationConflictError], Awaitable[None]] | None,
) -> tuple[list[_Answer], bool]:
    """Add the answers and store them; after another writer's change, add them again and store again.

    The change is met by the write, or by the window's overflow check while adding. The conflict put (or
    ``recover`` puts) the window back to what storage holds: the calls (stored before the tools ran) are
    pending there unless the other writer answered them or they are gone. Returns as :func:`_add_answers`.
    """
    for attempt in range(_STORE_ATTEMPTS):
        try:
            answers, stored = await _add_answers(window, answers)
            await store()
        except ConversationConflictError as error:
            if recover is not None:
                await recover(error)
            if attempt == _STORE_ATTEMPTS - 1:
                logger.warning(
                    "the results of tool calls %s were refused %d times by other writers' changes (%s); "
                    "returned but not added, the calls stay pending",
                    ", ".join(answer.window_id for answer in answers),
                    _STORE_ATTEMPTS,
                    error,
                )
                return answers, False
            pending = window.pending_tool_calls
            answers = [answer for answer in answers if answer.window_id in pending]
            if not answers:
                return answers, True  # answered or gone meanwhile: nothing left to add
        else:
            return answers, stored
    return answers, False  # pragma: no cover - the loop returns


def _answer_message(call_id: str, text: str, metadata: dict[str, Any]) -> Message:
    return Message.create("tool", text, tool_call_id=call_id, metadata=metadata)


async def _add_answers(window: ContextWindow, answers: list[_Answer]) -> tuple[list[_Answer], bool]:
    """Add the answers in one batch; return the answers still to add and whether they are in the window.

    A call answered or evicted meanwhile (checked under the window's lock) loses its answer; when the batch
    does not fit, the answer with the longest text shrinks (:meth:`_Answer.shrink`) and the batch is tried
    again. ``False`` when even with no text at all the answers do not fit (nothing added).
    """
    while answers:
        try:
            await window.extend([answer.message() for answer in answers])
        except ToolCallPairingError:
            pending = window.pending_tool_calls
            still = [answer for answer in answers if answer.window_id in pending]
            if len(still) == len(answers):
                raise
            for answer in answers:
                if answer.window_id not in pending:
                    logger.debug(
                        "tool call %s was answered or evicted meanwhile; result not added", answer.window_id
                    )
            answers = still
        except ContextBudgetError:
            shrinkable = [answer for answer in answers if answer.level != _NO_TEXT]
            if not shrinkable:
                return answers, False
            max(shrinkable, key=lambda answer: len(answer.message().content)).shrink()
        else:
            return answers, True
    return answers, True


def _result_metadata(call: ToolCall, result: ToolResult) -> dict[str, Any]:
    """The metadata of the tool result message that answers ``call`` with ``result``."""
    return {
        "tool_name": call.name,
        "success": result.success,
        "error_type": None if result.error_type is None else result.error_type.value,
        "cached": result.cached,
        "is_error": not result.success,  # Anthropic export marks the tool_result block
    }


def pending_calls_in_window(window: ContextWindow) -> list[ToolCall]:
    """The calls in ``window`` that have no result yet, in the order they were made.

    Their arguments are as the window holds them (a tool's sensitive arguments redacted).
    """
    pending = window.pending_tool_calls
    if not pending:
        return []
    return [call for message in window.messages for call in message.tool_calls if call.id in pending]


async def cancel_tool_calls_in_window(
    window: ContextWindow, call_ids: Sequence[str] | None = None, *, reason: str = CANCELLED_REASON
) -> list[ToolResult]:
    """Answer pending calls with a failed result (``error_type`` ``cancelled``), in the order they were made.

    Args:
        window: Holds the calls; receives one tool result message per call, added as one batch.
        call_ids: The calls to answer (the ids the window holds them under, or the ids the model made:
            ``call_0`` names the newest pending ``call_0~n``); None for every pending call.
        reason: The failed results' ``error``: the text the model reads in each result.

    Returns:
        The results added, one per call, in the order the calls were made (empty when nothing is pending).

    Raises:
        InvalidArgumentError: ``call_ids`` is not a list of strings, or ``reason`` is not a non-empty
            string (nothing changes).
        ToolCallPairingError: a call id is not pending in the window: unknown, already answered, or
            evicted with its unit (nothing changes).
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgumentError("reason", reason, "a non-empty string")
    calls = pending_calls_in_window(window)
    if call_ids is not None:
        if isinstance(call_ids, str | bytes) or not isinstance(call_ids, Sequence):
            raise InvalidArgumentError(
                "call_ids", call_ids, "a list of tool call ids, or None for every pending call"
            )
        wanted = list(call_ids)
        if not all(isinstance(call_id, str) for call_id in wanted):
            raise InvalidArgumentError("call_ids", call_ids, "a list of tool call ids (strings)")
        by_id = {call.id: call for call in calls}
        # an id made again (held as id~n, see ContextWindow.resolve_tool_call_id) names its newest call
        wanted = [window.resolve_tool_call_id(call_id) or call_id for call_id in wanted]
        missing = sorted({call_id for call_id in wanted if call_id not in by_id})
        if missing:
            listed = ", ".join(sorted(by_id)) or "none pending"
            raise ToolCallPairingError(
                "call_ids", missing, f"ids of calls still pending in the window ({listed})"
            )
        chosen = set(wanted)
        calls = [call for call in calls if call.id in chosen]
    if not calls:
        return []
    results = [
        ToolResult(
            success=False,
            error=reason,
            error_type=ToolErrorType.CANCELLED,
            tool_name=call.name,
            call_id=call.id,
        )
        for call in calls
    ]
    await window.extend(
        [
            Message.create(
                "tool", result.to_content(), tool_call_id=call.id, metadata=_result_metadata(call, result)
            )
            for call, result in zip(calls, results, strict=True)
        ]
    )
    return results
