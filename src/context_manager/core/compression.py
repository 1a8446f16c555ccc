"""Compression of the context window: the :class:`Summarizer` protocol, its extractive default and planning.

Everything here is plain synchronous logic except calling a summarizer, which is async because a real one
(an LLM) does I/O. The window (:mod:`context_manager.core.context_window`) runs a compression in three steps:

1. :func:`plan_compression` decides, without mutating anything, which messages stay, which are evicted and
   which are cut to head + tail (:func:`truncate_message`), and how many tokens the summary may use;
2. a :class:`Summarizer` turns the evicted messages (and the previous rolling summary) into one text;
3. the window swaps the new message list in at once.

Messages are grouped into units (:func:`group_into_units`): an assistant message that calls tools and every
tool message answering it form one unit, which is kept or evicted whole, so a provider never sees a tool
result without its call. Units are evicted lowest priority first, oldest first within a priority; system,
pinned and critical messages, the latest user message and the newest unit are never evicted.

A custom summarizer is any async callable ``(messages, budget_tokens) -> str``::

    async def llm_summary(messages: Sequence[Message], budget_tokens: int) -> str:
        response = await client.chat.completions.create(...)
        return response.choices[0].message.content
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from context_manager.core.errors import ContextBudgetError
from context_manager.core.messages import Message, Priority, Role
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, TokenCounter, truncate_to_tokens

__all__ = [
    "SUMMARY_METADATA_KEY",
    "TRUNCATED_METADATA_KEY",
    "CompressionPlan",
    "ExtractiveSummarizer",
    "MessageUnit",
    "Summarizer",
    "group_into_units",
    "is_summary",
    "plan_compression",
    "truncate_message",
    "truncate_middle",
]

SUMMARY_METADATA_KEY = "context_manager.summary"
"""Metadata key marking the rolling summary message (value: number of messages it covers)."""
TRUNCATED_METADATA_KEY = "context_manager.truncated"
"""Metadata key on a message cut to head + tail (value: ``{"original_tokens", "omitted_tokens"}``)."""

MIN_SUMMARY_TOKENS = 16
"""A summary message smaller than this (framing included) is not worth adding."""

_MARKER_TEMPLATE = "\n[... {omitted} tokens omitted ...]\n"
_MARKER_RESERVE = 16  # tokens a marker can take, generously (the digits of a huge count included)


@runtime_checkable
class Summarizer(Protocol):
    """Turns evicted messages into a summary text of at most ``budget_tokens`` tokens.

    Any async callable with this signature qualifies, a plain ``async def`` function included. The
    messages are in conversation order; the previous rolling summary, if any, comes first (its
    metadata holds :data:`SUMMARY_METADATA_KEY`), so a summarizer folds it into the new summary.
    A result longer than the budget is cut; an exception or a timeout makes the window fall back to
    :class:`ExtractiveSummarizer` and record it in the compression history.
    """

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Return a summary of ``messages`` of at most ``budget_tokens`` tokens."""
        ...


def is_summary(message: Message) -> bool:
    """True if ``message`` is a rolling summary written by a compression."""
    return SUMMARY_METADATA_KEY in message.metadata


# ---------------------------------------------------------------------------------------------------------
# Units


@dataclass(slots=True)
class MessageUnit:
    """Messages that are kept or evicted together (a tool call and its results, or one message)."""

    indices: list[int]
    """Positions of the unit's messages in the window, ascending."""
    tokens: int = 0
    """Sum of the messages' token counts."""
    rank: int = 0
    """Highest priority rank among the messages (low=0 ... critical=3)."""
    protected: bool = False
    """True if a message of the unit may never be evicted (system, pinned, critical)."""


def group_into_units(messages: Sequence[Message]) -> list[MessageUnit]:
    """Group messages into units: an assistant message with tool calls plus every tool message answering it.

    A tool message whose call is not in ``messages`` forms a unit of its own (the window never holds one).
    Units are returned in the order of their first message.
    """
    units: list[MessageUnit] = []
    unit_of_call: dict[str, MessageUnit] = {}
    tool, system, critical = Role.TOOL, Role.SYSTEM, Priority.CRITICAL
    rank_of = _RANK
    for index, message in enumerate(messages):
        priority = message.priority
        protected = message.pinned or priority is critical or message.role is system
        unit: MessageUnit | None = None
        if message.role is tool and message.tool_call_id is not None:
            unit = unit_of_call.get(message.tool_call_id)
        if unit is None:
            unit = MessageUnit([index], message.token_count, rank_of[priority], protected)
            units.append(unit)
            if message.tool_calls:
                for call in message.tool_calls:
                    unit_of_call[call.id] = unit
            continue
        unit.indices.append(index)
        unit.tokens += message.token_count
        rank = rank_of[priority]
        if rank > unit.rank:
            unit.rank = rank
        if protected:
            unit.protected = True
    return units


_RANK = {priority: priority.rank for priority in Priority}


# ---------------------------------------------------------------------------------------------------------
# Truncation


def truncate_middle(counter: TokenCounter, text: str, max_tokens: int) -> tuple[str, int]:
    """Cut ``text`` to head + marker + tail within ``max_tokens`` tokens.

    Returns:
        The new text and how many tokens of the original were omitted (0 if it already fits).
    """
    total = counter.count(text)
    if total <= max_tokens:
        return text, 0
    keep = max_tokens - _MARKER_RESERVE
    if keep <= 1:
        marker = _MARKER_TEMPLATE.format(omitted=total).strip()
        return (marker if counter.count(marker) <= max_tokens else ""), total
    for _ in range(4):
        head_budget = (keep + 1) // 2
        tail_budget = keep - head_budget
        head = _cut(counter, text, head_budget, from_end=False)
        tail = _cut(counter, text[len(head) :], tail_budget, from_end=True) if tail_budget > 0 else ""
        omitted = max(total - counter.count(head) - counter.count(tail), 1)
        result = head + _MARKER_TEMPLATE.format(omitted=omitted) + tail
        excess = counter.count(result) - max_tokens
        if excess <= 0:
            return result, omitted
        keep -= excess  # tokens merged differently at the seams; shrink and try again
        if keep <= 1:
            break
    marker = _MARKER_TEMPLATE.format(omitted=total).strip()
    return (marker if counter.count(marker) <= max_tokens else ""), total


def _cut(counter: TokenCounter, text: str, max_tokens: int, *, from_end: bool) -> str:
    """Longest prefix/suffix within ``max_tokens``, searching a window of the text first (fast path)."""
    if max_tokens <= 0:
        return ""
    window_chars = max_tokens * 24  # a token rarely spans more than a few characters
    if window_chars < len(text):
        window = text[len(text) - window_chars :] if from_end else text[:window_chars]
        if counter.count(window) > max_tokens:
            return truncate_to_tokens(counter, window, max_tokens, from_end=from_end)
    return truncate_to_tokens(counter, text, max_tokens, from_end=from_end)


def _base_tokens(message: Message, counter: TokenCounter) -> int:
    """What ``message`` costs without its content (framing, role, name, tool calls)."""
    if not message.content:
        return message.token_count
    return message.token_count - counter.count(message.content)


def truncate_message(message: Message, max_tokens: int, counter: TokenCounter) -> Message | None:
    """Return a copy of ``message`` cut to head + tail so it costs at most ``max_tokens`` tokens.

    The copy keeps the id and every other field; its metadata records the original and omitted token
    counts under :data:`TRUNCATED_METADATA_KEY`. Returns ``message`` itself if it already fits and
    ``None`` if even the framing and the marker cannot fit.
    """
    if message.token_count <= max_tokens:
        return message
    base = _base_tokens(message, counter)
    content_budget = max_tokens - base
    if content_budget < 1 or not message.content:
        return None
    content, omitted = truncate_middle(counter, message.content, content_budget)
    if not content:
        return None
    previous = message.metadata.get(TRUNCATED_METADATA_KEY)
    original_tokens = previous["original_tokens"] if isinstance(previous, dict) else message.token_count
    metadata = dict(message.metadata)
    metadata[TRUNCATED_METADATA_KEY] = {
        "original_tokens": original_tokens,
        "omitted_tokens": original_tokens - base - counter.count(content),
    }
    copy = dataclasses.replace(message, content=content, metadata=metadata)
    copy.token_count = counter.count_message(copy)
    if copy.token_count > max_tokens:  # pragma: no cover - truncate_middle guarantees the content budget
        return None
    return copy


def _min_truncated_tokens(message: Message, counter: TokenCounter) -> int:
    """The smallest size :func:`truncate_message` can bring ``message`` to (its framing plus a marker)."""
    if not message.content:
        return message.token_count
    content_tokens = counter.count(message.content)
    marker = _MARKER_TEMPLATE.format(omitted=content_tokens).strip()
    return min(message.token_count, message.token_count - content_tokens + counter.count(marker))


# ---------------------------------------------------------------------------------------------------------
# Planning


@dataclass(slots=True)
class CompressionPlan:
    """What a compression will do; computed by :func:`plan_compression` without mutating anything."""

    kept: list[Message]
    """The messages that stay, in order (truncated copies in place of the originals they replace)."""
    evicted: list[Message]
    """Messages removed from the window, in conversation order (the previous summary excluded)."""
    truncated: list[Message]
    """Originals of the messages kept as head + tail (their full text goes with the evicted ones)."""
    previous_summary: Message | None
    """The rolling summary being replaced, if the window had one."""
    summary_budget: int
    """Tokens the new summary message may cost, framing included (0: no summary)."""
    summary_index: int
    """Where the summary goes in :attr:`kept` (after the leading system messages)."""
    kept_tokens: int
    """Tokens of :attr:`kept` plus the reply priming, before the summary is added."""
    goal_tokens: int
    """The size the compression aims for (the target, or ``max_tokens`` if protected messages exceed it)."""

    @property
    def summary_inputs(self) -> list[Message]:
        """What the summarizer reads: the previous summary first, then the evicted messages."""
        if self.previous_summary is None:
            return list(self.evicted)
        return [self.previous_summary, *self.evicted]


def plan_compression(
    messages: Sequence[Message],
    *,
    target_tokens: int,
    max_tokens: int,
    counter: TokenCounter,
    summary_max_tokens: int = 200,
    allow_summary: bool = True,
) -> CompressionPlan:
    """Plan how to bring ``messages`` down to ``target_tokens`` (pure: nothing is mutated).

    Keeps system, pinned and critical messages, the latest user message and the newest unit; evicts whole
    units lowest priority first and oldest first within a priority; then, if the kept messages are still
    too large, cuts the largest unprotected ones among them to head + tail. The previous rolling summary
    is always folded into the new one. When protected messages alone exceed ``target_tokens`` the plan
    aims for ``max_tokens`` instead.

    Args:
        messages: The window's messages, each with its ``token_count`` set.
        target_tokens: The size to aim for (``max_tokens * compression_ratio``).
        max_tokens: The hard limit.
        counter: The token counter the window uses.
        summary_max_tokens: Upper bound of the summary message's size.
        allow_summary: ``False`` plans no summary at all (for example a read-only budget view).

    Raises:
        ContextBudgetError: protected messages (with the newest cut to a marker) exceed ``max_tokens``.
    """
    key = SUMMARY_METADATA_KEY
    body = [message for message in messages if key not in message.metadata]
    previous_summary: Message | None = None
    if len(body) != len(messages):  # a stray second summary would be folded as well
        previous_summary = next(m for m in reversed(messages) if key in m.metadata)
    units = group_into_units(body)
    latest_user = next((i for i in range(len(body) - 1, -1, -1) if body[i].role is Role.USER), -1)
    newest_unit = units[-1] if units else None

    keep_whole: list[MessageUnit] = []  # system/pinned/critical units
    keep_cuttable: list[MessageUnit] = []  # the latest user message and the newest unit
    evictable: list[MessageUnit] = []
    for unit in units:
        if unit.protected:
            keep_whole.append(unit)
        elif unit is newest_unit or latest_user in unit.indices:
            keep_cuttable.append(unit)
        else:
            evictable.append(unit)

    fixed = REPLY_PRIMING_TOKENS + sum(unit.tokens for unit in keep_whole)
    minimal = fixed + sum(
        _min_truncated_tokens(body[i], counter) for unit in keep_cuttable for i in unit.indices
    )
    if minimal > max_tokens:
        raise ContextBudgetError(
            f"max_tokens: got {max_tokens}; allowed at least {minimal}: system, pinned and critical messages "
            f"({fixed} tokens with reply priming) plus the newest messages cut to a marker do not fit",
            required_tokens=minimal,
            max_tokens=max_tokens,
        )
    goal = target_tokens if minimal <= target_tokens else max_tokens
    reserve = min(summary_max_tokens, goal // 4) if allow_summary else 0
    if reserve < MIN_SUMMARY_TOKENS:
        reserve = 0

    total = fixed + sum(unit.tokens for unit in keep_cuttable) + sum(unit.tokens for unit in evictable)
    is_evicted = [False] * len(body)
    any_evicted = False
    if total > goal - reserve:
        evictable.sort(key=lambda unit: (unit.rank, unit.indices[0]))
        for unit in evictable:
            if total <= goal - reserve:
                break
            for index in unit.indices:
                is_evicted[index] = True
            total -= unit.tokens
            any_evicted = True

    replacements: dict[int, Message] = {}
    if total > goal - reserve:
        # Every evictable unit is gone; cut the newest messages, giving up summary room if they need it.
        if minimal > goal - reserve:
            reserve = goal - minimal
            if reserve < MIN_SUMMARY_TOKENS:
                reserve = 0
        total = _cut_largest(body, keep_cuttable, total - (goal - reserve), counter, replacements, total)

    if any_evicted:
        kept = [message for message, gone in zip(body, is_evicted, strict=True) if not gone]
        evicted = [message for message, gone in zip(body, is_evicted, strict=True) if gone]
    else:
        kept, evicted = list(body), []
    if replacements:
        kept_positions = [index for index, gone in enumerate(is_evicted) if not gone]
        for position, index in enumerate(kept_positions):
            copy = replacements.get(index)
            if copy is not None:
                kept[position] = copy
    summary_index = 0  # after the leading system messages
    while summary_index < len(kept) and kept[summary_index].role is Role.SYSTEM:
        summary_index += 1
    truncated = [body[index] for index in sorted(replacements)]

    summary_budget = 0
    if allow_summary and (evicted or previous_summary is not None):
        summary_budget = min(summary_max_tokens, goal - total)
        if summary_budget < MIN_SUMMARY_TOKENS:
            summary_budget = 0
    return CompressionPlan(
        kept=kept,
        evicted=evicted,
        truncated=truncated,
        previous_summary=previous_summary,
        summary_budget=summary_budget,
        summary_index=summary_index,
        kept_tokens=total,
        goal_tokens=goal,
    )


def _cut_largest(
    body: Sequence[Message],
    cuttable: list[MessageUnit],
    excess: int,
    counter: TokenCounter,
    replacements: dict[int, Message],
    total: int,
) -> int:
    """Cut the largest cuttable messages to head + tail until ``excess`` tokens are saved; return total."""
    candidates = sorted(
        (i for unit in cuttable for i in unit.indices if body[i].content and not body[i].is_protected),
        key=lambda i: (-body[i].token_count, i),
    )
    for index in candidates:
        if excess <= 0:
            break
        message = body[index]
        floor = _min_truncated_tokens(message, counter)
        limit = max(floor, message.token_count - excess)
        if limit >= message.token_count:
            continue
        copy = truncate_message(message, limit, counter)
        if copy is None or copy is message:
            continue
        saved = message.token_count - copy.token_count
        replacements[index] = copy
        excess -= saved
        total -= saved
    return total


# ---------------------------------------------------------------------------------------------------------
# Extractive summarizer

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_PUNCTUATION = ".,;:!?()[]{}<>\"'`*_~|/\\"
_DIGITS = frozenset("0123456789")
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just let me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your yours
    yourself yourselves ok okay yes sure thanks thank please hi hello hey also like get got one""".split()  # noqa: SIM905
)
_HEADER = "Summary of the earlier conversation ({count} messages compressed):"
_REQUEST_PREFIX = "Latest user request: "
_TOOLS_PREFIX = "Tools used: "
_MAX_TOOL_ENTRIES = 8


@dataclass(slots=True)
class _Sentence:
    position: int
    speaker: str
    text: str
    words: frozenset[str]
    score: float = 0.0
    tokens: int = field(default=0)


class ExtractiveSummarizer:
    """The default summarizer: deterministic, offline, no LLM.

    Within its budget it keeps the latest user request among the evicted messages (cut if needed, never
    dropped), the tools that were called with their outcome, and the most informative sentences of the
    evicted user and assistant messages (many distinct content words, numbers and names; little repetition),
    in conversation order. Lines of a previous rolling summary compete with the new sentences, so summaries
    fold into one instead of stacking. Work is bounded by the budget, not by how much was evicted.

    Example:
        >>> summarizer = ExtractiveSummarizer(get_token_counter())
        >>> text = summarizer.summarize(evicted_messages, budget_tokens=150)
    """

    def __init__(self, counter: TokenCounter | None = None, *, scan_chars_per_token: int = 12) -> None:
        """Create a summarizer.

        Args:
            counter: Token counter for the budget (default: the shared ``o200k_base`` counter).
            scan_chars_per_token: How many characters of recent evicted text are read per budget token.
        """
        if counter is None:
            from context_manager.core.tokens import get_token_counter

            counter = get_token_counter()
        self.counter = counter
        """The counter that measures the budget."""
        self.scan_chars_per_token = scan_chars_per_token
        """Characters of evicted text read per budget token (bounds the work on huge evictions)."""

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Summarize ``messages`` within ``budget_tokens`` (see :meth:`summarize`)."""
        return self.summarize(messages, budget_tokens)

    def summarize(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Return a summary of ``messages`` costing at most ``budget_tokens`` tokens ("" if nothing fits)."""
        if budget_tokens <= 0 or not messages:
            return ""
        count = self.counter.count
        previous_lines: list[str] = []
        covered = 0
        key = SUMMARY_METADATA_KEY
        body = [message for message in messages if key not in message.metadata]
        if len(body) != len(messages):
            for message in messages:
                if key in message.metadata:
                    previous_lines.extend(message.content.splitlines()[1:])
                    value = message.metadata[key]
                    covered += value if isinstance(value, int) else 0
        covered += len(body)
        lines_budget = budget_tokens

        header = _HEADER.format(count=covered)
        lines_budget -= count(header) + 1
        if lines_budget <= 0:
            return truncate_to_tokens(self.counter, header, budget_tokens)

        # 1. The latest user request is never dropped (cut to at most half the budget if long).
        request_line = ""
        latest_request = next((m for m in reversed(body) if m.role is Role.USER and m.content), None)
        if latest_request is not None:
            # Only the head can be kept; read a bounded prefix of a long request.
            request_text = " ".join(latest_request.content[: max(lines_budget, 1) * 24].split())
            request_line = _REQUEST_PREFIX + request_text
        else:
            request_line = next((line for line in previous_lines if line.startswith(_REQUEST_PREFIX)), "")
        previous_lines = [line for line in previous_lines if not line.startswith(_REQUEST_PREFIX)]
        if request_line:
            cap = max(lines_budget // 2, 1)
            if count(request_line) > cap:
                request_line = truncate_to_tokens(self.counter, request_line, cap - 1) + "…"
            lines_budget -= count(request_line) + 1

        # 2. Tools called and their outcome.
        tools_line = self._tools_line(body, previous_lines)
        previous_lines = [line for line in previous_lines if not line.startswith(_TOOLS_PREFIX)]
        if tools_line:
            cap = max(lines_budget // 3, 0)
            if cap < 4:
                tools_line = ""
            elif count(tools_line) > cap:
                tools_line = truncate_to_tokens(self.counter, tools_line, cap - 1) + "…"
            if tools_line:
                lines_budget -= count(tools_line) + 1

        # 3. The most informative sentences, newest evicted text first, bounded scan.
        chosen = self._choose_sentences(body, previous_lines, latest_request, lines_budget)

        lines = [header]
        if request_line:
            lines.append(request_line)
        if tools_line:
            lines.append(tools_line)
        lines.extend(f"- {s.speaker}: {s.text}" if s.speaker else f"- {s.text}" for s in chosen)
        text = "\n".join(lines)
        while count(text) > budget_tokens and len(lines) > 1:
            lines.pop()  # seams can merge differently than the per-line estimate
            text = "\n".join(lines)
        if count(text) > budget_tokens:
            text = truncate_to_tokens(self.counter, text, budget_tokens)
        return text

    def _tools_line(self, body: Sequence[Message], previous_lines: list[str]) -> str:
        calls = [
            (call.id, call.name) for message in body if message.tool_calls for call in message.tool_calls
        ]
        earlier = next((line for line in previous_lines if line.startswith(_TOOLS_PREFIX)), "")
        if not calls and not earlier:
            return ""
        shown_calls = calls[-_MAX_TOOL_ENTRIES:]
        wanted = {call_id for call_id, _ in shown_calls}
        results = {m.tool_call_id: m for m in body if m.role is Role.TOOL and m.tool_call_id in wanted}
        entries: list[str] = []
        for call_id, name in shown_calls:
            result = results.get(call_id)
            if result is None:
                outcome = "no result"
            else:
                status = "error" if _is_error(result) else "ok"
                snippet = " ".join(result.content[:120].split()[:8])
                outcome = f"{status}: {snippet}" if snippet else status
            entries.append(f"{name} ({outcome})")
        dropped = len(calls) - len(shown_calls)
        if earlier:
            entries.insert(0, "earlier: " + earlier[len(_TOOLS_PREFIX) :][:200])
        if dropped:
            entries.insert(1 if earlier else 0, f"{dropped} more calls")
        return _TOOLS_PREFIX + "; ".join(entries)

    def _choose_sentences(
        self,
        body: Sequence[Message],
        previous_lines: list[str],
        latest_request: Message | None,
        budget: int,
    ) -> list[_Sentence]:
        if budget <= 4:
            return []
        scan_limit = budget * self.scan_chars_per_token
        candidates: list[_Sentence] = []
        scanned = 0
        position = 1_000_000
        for message in reversed(body):
            if scanned >= scan_limit:
                break
            if message is latest_request or message.role not in (Role.USER, Role.ASSISTANT):
                continue
            text = message.content
            if not text:
                continue
            if len(text) > scan_limit - scanned:
                text = text[: scan_limit - scanned]
            scanned += len(text)
            position -= 1000
            for offset, piece in enumerate(_SENTENCE_SPLIT.split(text)):
                sentence = " ".join(piece.split())
                if len(sentence) < 12:
                    continue
                words = _content_words(sentence)
                if not words:
                    continue
                candidates.append(_Sentence(position + offset, message.role.value, sentence[:400], words))
        for offset, line in enumerate(previous_lines):
            sentence = line[2:] if line.startswith("- ") else line
            if len(sentence) < 12:
                continue
            words = _content_words(sentence)
            if words:
                candidates.append(_Sentence(offset, "", sentence[:400], words, score=-0.5))

        document_frequency: dict[str, int] = {}
        for candidate in candidates:
            for word in candidate.words:
                document_frequency[word] = document_frequency.get(word, 0) + 1
        for candidate in candidates:
            rarity = sum(1.0 / document_frequency[word] for word in candidate.words)
            bonus = sum(1 for word in candidate.words if not _DIGITS.isdisjoint(word)) * 0.5
            bonus += 0.5 if candidate.text.endswith("?") and candidate.speaker == "user" else 0.0
            candidate.score += (rarity + bonus) / math.sqrt(len(candidate.text) / 40 + 1)

        ranked = sorted(candidates, key=lambda c: (-c.score, -c.position))
        chosen: list[_Sentence] = []
        covered_words: set[str] = set()
        count = self.counter.count
        for candidate in ranked:
            if budget <= 4:
                break
            if covered_words and len(candidate.words & covered_words) > 0.6 * len(candidate.words):
                continue
            line = f"- {candidate.speaker}: {candidate.text}" if candidate.speaker else f"- {candidate.text}"
            tokens = count(line) + 1
            if tokens > budget:
                continue
            candidate.tokens = tokens
            chosen.append(candidate)
            covered_words |= candidate.words
            budget -= tokens
        chosen.sort(key=lambda c: c.position)
        return chosen


def _content_words(sentence: str) -> frozenset[str]:
    """Lower-cased words of ``sentence`` without punctuation and stop words (cheap: str.split)."""
    words = {word.strip(_PUNCTUATION) for word in sentence.lower().split()}
    words.discard("")
    return frozenset(words - _STOPWORDS)


def _is_error(message: Message) -> bool:
    flag: Any = message.metadata.get("is_error", message.metadata.get("error"))
    if isinstance(flag, bool):
        return flag
    if flag:
        return True
    lowered = message.content.lstrip()[:12].lower()
    return lowered.startswith(("error", "exception", "traceback"))
