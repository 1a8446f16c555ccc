"""The :class:`Summarizer` protocol and its deterministic default, :class:`ExtractiveSummarizer`.

A custom summarizer is any async callable ``(messages, budget_tokens) -> str``::

    async def llm_summary(messages: Sequence[Message], budget_tokens: int) -> str:
        response = await client.chat.completions.create(...)
        return response.choices[0].message.content
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from context_manager.core.errors import SummarizerError
from context_manager.core.messages import Message, Role
from context_manager.core.text import encodable
from context_manager.core.tokens import (
    ExactTokenCounter,
    TokenCounter,
    count_within,
    cut_to_tokens,
    truncate_to_tokens,
)

__all__ = [
    "SUMMARY_METADATA_KEY",
    "ExtractiveSummarizer",
    "Summarizer",
    "check_summary_text",
    "is_summary",
    "summary_call_abandoned",
    "strip_summary_header",
    "summary_call_deadline",
    "summary_header",
]

SUMMARY_METADATA_KEY = "context_manager.summary"
"""Metadata key marking the rolling summary message (value: number of messages it covers)."""


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


def check_summary_text(text: object) -> str:
    """Return ``text`` if a summary message can hold it, else raise (a failure of the summarizer).

    A summary becomes a system message's content, which must be a ``str`` of valid Unicode (no lone
    surrogates: it is counted, stored and exported as UTF-8) without NUL characters (memory and PostgreSQL
    cannot store them). The error names the problem only, never the text (it may quote the conversation).

    Raises:
        SummarizerError: ``text`` is not a ``str``, or holds a lone surrogate or a NUL character.
    """
    if not isinstance(text, str):
        raise SummarizerError(f"summarizer returned {type(text).__name__}; allowed str")
    if "\x00" in text:
        raise SummarizerError("summarizer returned text with a NUL character; allowed text without NUL")
    if not text.isascii() and not encodable(text):
        raise SummarizerError(
            "summarizer returned text with a lone surrogate; allowed valid Unicode text (no lone surrogates)"
        )
    return text


summary_call_deadline: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "summary_call_deadline", default=None
)
"""The window's ``summarizer_timeout`` scope, as seen from inside the summarizer call it bounds."""


def summary_call_abandoned() -> bool:
    """Inside a summarizer call the window cancelled: whether its caller gave up rather than it timing out.

    The window runs a custom summarizer in a task of its own under ``summarizer_timeout``; a cancellation
    reaches the call when that timeout expires (the summarizer hung: a failure), and also when the add
    waiting for it is cancelled by its caller or the window drains for a shutdown (nobody wants the summary
    any more: not the summarizer's fault). False outside a window's call (a caller's own timeout may be
    the summarizer hanging).
    """
    deadline = summary_call_deadline.get()
    return deadline is not None and not deadline.expired()


def summary_header(count: int) -> str:
    """The first line of a rolling summary covering ``count`` messages (the extractive and LLM summaries')."""
    return _HEADER.format(count=count)


def strip_summary_header(text: str) -> str:
    """``text`` without its :func:`summary_header` line, if it starts with one."""
    if text.startswith(_HEADER_START):
        first, _, rest = text.partition("\n")
        if first.endswith(" messages compressed):"):
            return rest
    return text


def is_summary(message: Message) -> bool:
    """True if ``message`` is a rolling summary written by a compression."""
    return SUMMARY_METADATA_KEY in message.metadata


# ---------------------------------------------------------------------------------------------------------
# Extractive summarizer

# Sentence boundaries: whitespace after . ! or ?, and runs of newlines: the pieces of
# re.split(r"(?<=[.!?])\s+|\n+", text). The regex engine only finds the characters that may start one (a
# one-character class is scanned in C, about 5x faster than the alternation with a group, which it tries
# at every character); _split_sentences looks at what follows each.
_BOUNDARY_START = re.compile(r"[.!?\n]")
_HAS_ASCII_DIGIT = re.compile(r"[0-9]")
_PUNCTUATION = ".,;:!?()[]{}<>\"'`*_~|/\\"
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
_HEADER_START = _HEADER.partition("{")[0]
_REQUEST_LINE_START = "Latest user request"
_REQUEST_PREFIX = _REQUEST_LINE_START + ": "
_REQUEST_CUT_PREFIX = "Latest user request (shown cut below; full text in memory): "
_TOOLS_PREFIX = "Tools used: "
_EARLIER = "earlier: "
_MAX_EARLIER_CHARS = 200
_MAX_TOOL_ENTRIES = 8
_SPOKEN = (Role.USER, Role.ASSISTANT)
_SHOWN_CHARS = 400
"""The most of one sentence a summary line shows (and weighs the words of)."""
_SHOWN_SCAN_CHARS = 640
"""How much of a long sentence is normalised first: enough for ``_SHOWN_CHARS`` unless it is mostly spaces."""
_PREFIX_WORDS = {prefix: len(prefix.split()) for prefix in (_REQUEST_PREFIX, _REQUEST_CUT_PREFIX)}


@dataclass(slots=True)
class _Sentence:
    position: int
    speaker: str
    text: str
    words: frozenset[str]
    digit_words: int
    """How many of ``words`` hold an ASCII digit (ids, amounts, dates)."""
    min_tokens: int
    """A lower bound of the tokens of the sentence's summary line (0: unknown)."""
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
        # a previous summary's line -> its content words, digit words and the lower bound of its tokens
        self._line_words: dict[str, tuple[frozenset[str], int, int]] = {}

    async def __call__(self, messages: Sequence[Message], budget_tokens: int) -> str:
        """Summarize ``messages`` within ``budget_tokens`` (see :meth:`summarize`)."""
        return self.summarize(messages, budget_tokens)

    def summarize(
        self,
        messages: Sequence[Message],
        budget_tokens: int,
        *,
        latest_request: Message | None = None,
        request_is_cut: bool = False,
    ) -> str:
        """Return a summary of ``messages`` costing at most ``budget_tokens`` tokens ("" if nothing fits).

        Args:
            messages: The previous summary (if any) and the evicted messages, in conversation order.
            budget_tokens: The most the text may cost.
            latest_request: The conversation's newest user message, when the caller knows it (a window
                does: it is usually still in the window, after the summary). The request line quotes it;
                without it, the line quotes the newest user message among ``messages``.
            request_is_cut: ``latest_request`` is shown cut to head + tail in the window; the line says so.
        """
        return self.summarize_counted(
            messages, budget_tokens, latest_request=latest_request, request_is_cut=request_is_cut
        )[0]

    def summarize_counted(
        self,
        messages: Sequence[Message],
        budget_tokens: int,
        *,
        latest_request: Message | None = None,
        request_is_cut: bool = False,
    ) -> tuple[str, int]:
        """:meth:`summarize`, with the summary's token count when it is known without counting it again.

        Returns:
            The summary and its exact token count, or ``-1`` for the count when only counting the text
            would tell (a counter other than :class:`ExactTokenCounter`, or a summary cut at the end).
        """
        if budget_tokens <= 0 or not messages:
            return "", 0
        counter = self.counter
        count = counter.count
        exact = counter if type(counter) is ExactTokenCounter else None
        # The exact counter never gives a text fewer tokens than it has words separated by single spaces (no
        # token spans two words: tokens stay within the tokenizer's pre-split pieces, and each piece holds
        # the characters of one word at most): a line with more words than the room left is known not to fit
        # without counting it.
        words_bound = exact is not None
        previous_lines: list[str] = []
        covered = 0
        key = SUMMARY_METADATA_KEY
        body = [message for message in messages if key not in message.metadata]
        if len(body) != len(messages):
            for message in messages:
                if key in message.metadata:
                    # past the header line; a custom summarizer's summary may have none (its first line,
                    # often the whole summary, was dropped when a compression fell back to this one)
                    previous_lines.extend(strip_summary_header(message.content).splitlines())
                    value = message.metadata[key]
                    covered += value if isinstance(value, int) else 0
        covered += len(body)
        lines_budget = budget_tokens

        header = _HEADER.format(count=covered)
        header_tokens = count(header)
        lines_budget -= header_tokens + 1
        if lines_budget <= 0:
            return truncate_to_tokens(counter, header, budget_tokens), -1

        # 1. The latest user request is never dropped (cut to at most half the budget if long).
        request_line = request_text = ""
        prefix = _REQUEST_PREFIX
        if latest_request is None or not latest_request.content:
            latest_request = next((m for m in reversed(body) if m.role is Role.USER and m.content), None)
            request_is_cut = False
        if latest_request is not None:
            # Only the head can be kept (at most half the budget): read a bounded prefix of a long request.
            request_text = " ".join(latest_request.content[: max(lines_budget // 2, 1) * 12].split())
            prefix = _REQUEST_CUT_PREFIX if request_is_cut else _REQUEST_PREFIX
            request_line = prefix + request_text
        else:
            request_line = next((line for line in previous_lines if line.startswith(_REQUEST_LINE_START)), "")
        previous_lines = [line for line in previous_lines if not line.startswith(_REQUEST_LINE_START)]
        if request_line:
            cap = max(lines_budget // 2, 1)
            if (
                latest_request is not None
                and request_text
                and words_bound
                and (_PREFIX_WORDS[prefix] + request_text.count(" ") + 1 > cap)
            ):
                request_tokens = None  # more words than the cap: too long without counting (see words_bound)
            else:
                request_tokens = count_within(self.counter, request_line, cap)  # stops at the cap
            if request_tokens is None:
                request_line, request_tokens = self._cut_line(request_line, cap - 1)
            lines_budget -= request_tokens + 1

        # 2. Tools called and their outcome.
        tools_line = self._tools_line(body, previous_lines)
        previous_lines = [line for line in previous_lines if not line.startswith(_TOOLS_PREFIX)]
        tools_tokens: int | None = None
        if tools_line:
            cap = max(lines_budget // 3, 0)
            tools_tokens = count_within(counter, tools_line, cap) if cap >= 4 else None
            if cap < 4:
                tools_line = ""
            elif tools_tokens is None:
                tools_line, tools_tokens = self._cut_line(tools_line, cap - 1)
            if tools_line and tools_tokens is not None:
                lines_budget -= tools_tokens + 1

        # 3. The most informative sentences, newest evicted text first, bounded scan.
        chosen = self._choose_sentences(body, previous_lines, latest_request, lines_budget, words_bound)

        lines = [header]
        line_tokens = [header_tokens]
        if request_line:
            lines.append(request_line)
            line_tokens.append(request_tokens if request_tokens is not None else 0)
        if tools_line:
            lines.append(tools_line)
            line_tokens.append(tools_tokens if tools_tokens is not None else 0)
        lines.extend(f"- {s.speaker}: {s.text}" if s.speaker else f"- {s.text}" for s in chosen)
        line_tokens.extend(s.tokens - 1 for s in chosen)
        if exact is None:
            text = "\n".join(lines)
            while count(text) > budget_tokens and len(lines) > 1:
                lines.pop()  # seams can merge differently than the per-line estimate
                text = "\n".join(lines)
            if count(text) > budget_tokens:
                return truncate_to_tokens(counter, text, budget_tokens), -1
            return text, -1
        # the exact counter: the lines' own counts and their seams give the total (count_lines)
        total = exact.count_lines(lines, line_tokens)
        while total > budget_tokens and len(lines) > 1:
            lines.pop()  # seams can merge differently than the per-line estimate
            line_tokens.pop()
            total = exact.count_lines(lines, line_tokens)
        text = "\n".join(lines)
        if total > budget_tokens:
            return truncate_to_tokens(counter, text, budget_tokens), -1
        return text, total

    def _cut_line(self, line: str, max_tokens: int) -> tuple[str, int]:
        """``line`` cut to ``max_tokens`` tokens, with an ellipsis, and the count of the result."""
        counter = self.counter
        if type(counter) is ExactTokenCounter:
            piece, tokens = counter.cut_counted(line, max_tokens)
            return piece + "…", counter.count_with_suffix(piece, tokens, "…")
        cut = cut_to_tokens(counter, line, max_tokens) + "…"
        return cut, counter.count(cut)

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
        if dropped:
            entries.insert(0, f"{dropped} more calls")
        if earlier:
            # The previous line's entries come last, flat (its own "earlier: " marker dropped, so quotes never
            # nest), and bounded: a line cut to its room loses the oldest calls, never this batch's.
            quoted = "; ".join(
                entry.removeprefix(_EARLIER) for entry in earlier[len(_TOOLS_PREFIX) :].split("; ")
            )
            if len(quoted) > _MAX_EARLIER_CHARS:
                head = quoted[:_MAX_EARLIER_CHARS]
                quoted = head.rsplit("; ", 1)[0] if "; " in head else head
            entries.append(_EARLIER + quoted)
        return _TOOLS_PREFIX + "; ".join(entries)

    def _choose_sentences(
        self,
        body: Sequence[Message],
        previous_lines: list[str],
        latest_request: Message | None,
        budget: int,
        words_bound: bool = False,
    ) -> list[_Sentence]:
        if budget <= 4:
            return []
        scan_limit = budget * self.scan_chars_per_token
        candidates: list[_Sentence] = []
        scanned = 0
        position = 1_000_000
        has_digit = _HAS_ASCII_DIGIT.search
        for message in reversed(body):
            if scanned >= scan_limit:
                break
            if message is latest_request or message.role not in _SPOKEN:
                continue
            text = message.content
            if not text:
                continue
            if len(text) > scan_limit - scanned:
                text = text[: scan_limit - scanned]
            scanned += len(text)
            position -= 1000
            speaker = message.role.value
            for offset, piece in enumerate(_split_sentences(text)):
                # Only the first _SHOWN_CHARS of a sentence can reach the summary: it is normalised, and its
                # words weighed, from a bounded prefix (the whole piece when spaces shrink that prefix).
                sentence = " ".join(piece[:_SHOWN_SCAN_CHARS].split())
                if len(sentence) < _SHOWN_CHARS and len(piece) > _SHOWN_SCAN_CHARS:
                    sentence = " ".join(piece.split())
                if len(sentence) < 12:
                    continue
                shown = sentence[:_SHOWN_CHARS]
                if len(sentence) > _SHOWN_CHARS and sentence[_SHOWN_CHARS] != " " and " " in shown:
                    words = _content_words(shown.rpartition(" ")[0])  # not the word the line cuts
                else:
                    words = _content_words(shown)
                if not words:
                    continue
                digit_words = _digit_words(words) if has_digit(shown) else 0
                # "- speaker: " is two words; the shown text is normalised (single spaces, none leading)
                min_tokens = 2 + shown.count(" ") + (0 if shown[-1] == " " else 1)
                candidate = _Sentence(position + offset, speaker, shown, words, digit_words, min_tokens)
                candidates.append(candidate)
        line_words = self._line_words
        for offset, line in enumerate(previous_lines):
            sentence = line[2:] if line.startswith("- ") else line
            if len(sentence) < 12:
                continue
            known = line_words.get(sentence)
            if known is None:  # lines of the previous summary come back at every compression
                words = _content_words(sentence)
                digit_words = _digit_words(words) if has_digit(sentence) else 0
                shown = sentence[:_SHOWN_CHARS]
                normal = shown == " ".join(shown.split())  # a custom summary's lines may hold other spaces
                min_tokens = 2 + shown.count(" ") if normal else 0  # "- " is a word of its own
                known = (words, digit_words, min_tokens)
                if len(line_words) >= 1024:
                    line_words.clear()
                line_words[sentence] = known
            if known[0]:
                candidates.append(_Sentence(offset, "", sentence[:_SHOWN_CHARS], *known, score=-0.5))

        document_frequency: Counter[str] = Counter()
        for candidate in candidates:
            document_frequency.update(candidate.words)
        weight = {word: 1.0 / frequency for word, frequency in document_frequency.items()}.__getitem__
        for candidate in candidates:
            rarity = math.fsum(map(weight, candidate.words))  # exact: the same in any order (hash seed)
            bonus = candidate.digit_words * 0.5
            bonus += 0.5 if candidate.text.endswith("?") and candidate.speaker == "user" else 0.0
            candidate.score += (rarity + bonus) / math.sqrt(len(candidate.text) / 40 + 1)

        ranked = sorted(candidates, key=lambda c: (-c.score, -c.position))
        chosen: list[_Sentence] = []
        covered_words: set[str] = set()
        counter = self.counter
        for candidate in ranked:
            if budget <= 4:
                break
            if covered_words and len(candidate.words & covered_words) > 0.6 * len(candidate.words):
                continue
            if words_bound and candidate.min_tokens > budget - 1:  # more words than tokens left: cannot fit
                continue
            line = f"- {candidate.speaker}: {candidate.text}" if candidate.speaker else f"- {candidate.text}"
            line_tokens = count_within(counter, line, budget - 1)  # a line that cannot fit costs little
            if line_tokens is None:
                continue
            tokens = line_tokens + 1
            candidate.tokens = tokens
            chosen.append(candidate)
            covered_words |= candidate.words
            budget -= tokens
        chosen.sort(key=lambda c: c.position)
        return chosen


def _split_sentences(text: str) -> list[str]:
    """The pieces of ``text`` between sentence boundaries (see ``_BOUNDARY_START``)."""
    pieces: list[str] = []
    start = 0
    end = len(text)
    for match in _BOUNDARY_START.finditer(text):
        position = match.start()
        if position < start:  # inside the whitespace that ended the previous sentence
            continue
        after = position + 1
        if text[position] == "\n":  # a run of newlines
            while after < end and text[after] == "\n":
                after += 1
            pieces.append(text[start:position])
            start = after
        elif after < end and text[after].isspace():  # . ! or ? then whitespace (newlines included)
            after += 1
            while after < end and text[after].isspace():
                after += 1
            pieces.append(text[start : position + 1])
            start = after
    pieces.append(text[start:])
    return pieces


def _content_words(sentence: str) -> frozenset[str]:
    """Lower-cased words of ``sentence`` without punctuation and stop words (cheap: str.split)."""
    words = {word.strip(_PUNCTUATION) for word in set(sentence.lower().split())}  # each distinct word once
    words.discard("")
    return frozenset(words - _STOPWORDS)


def _digit_words(words: frozenset[str]) -> int:
    """How many of ``words`` hold an ASCII digit."""
    return len(list(filter(_HAS_ASCII_DIGIT.search, words)))


def _is_error(message: Message) -> bool:
    flag: Any = message.metadata.get("is_error", message.metadata.get("error"))
    if isinstance(flag, bool):
        return flag
    if flag:
        return True
    lowered = message.content[:64].lstrip()[:12].lower()  # a slice first: contents can be megabytes
    return lowered.startswith(("error", "exception", "traceback"))
