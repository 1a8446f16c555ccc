"""Cutting a message to head + marker + tail, and what a cut message costs at least.

The cuts use :func:`~context_manager.core.tokens.cut_to_tokens`, which encodes only a window near the
kept end of the text, so cutting a megabyte tool output costs about as much as the piece kept. A message
the window already cut is cut again from its head and its tail (never through its marker), so the
marker always counts every token omitted from the original.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from context_manager.core.messages import Message
from context_manager.core.text import grapheme_end, grapheme_start
from context_manager.core.tokens import TokenCounter, cut_to_tokens, largest_within

__all__ = [
    "MIN_EDGE_TOKENS",
    "TRUNCATED_METADATA_KEY",
    "base_tokens",
    "content_tokens",
    "marker_tokens",
    "min_keeping_tokens",
    "min_readable_tokens",
    "min_truncated_tokens",
    "own_tokens",
    "truncate_message",
    "truncate_middle",
]

TRUNCATED_METADATA_KEY = "context_manager.truncated"
"""Metadata key on a message cut to head + tail: ``{"original_tokens", "omitted_tokens", "head_chars",
"tail_chars"}`` (the original's token count, the tokens the marker stands for, and the lengths in
characters of the kept head and tail)."""

MIN_EDGE_TOKENS = 8
"""Tokens of its start and of its end a message keeps at least when it is cut to stay readable."""

_MARKER_TEMPLATE = "\n[... {omitted} tokens omitted ...]\n"
_CUT_SLACK = 2  # the cut may keep a token or two less than its budget (a character split across tokens)


def marker_tokens(counter: TokenCounter, omitted: int) -> int:
    """Tokens of the marker that replaces ``omitted`` tokens in a cut text."""
    return counter.count(_MARKER_TEMPLATE.format(omitted=omitted))


def _whole_head(source: str, piece: str) -> str:
    """``piece`` (a prefix of ``source``) without a grapheme cluster it splits at its end."""
    return piece[: grapheme_start(source, len(piece))]


def _whole_tail(source: str, piece: str) -> str:
    """``piece`` (a suffix of ``source``) without a grapheme cluster it splits at its start."""
    return source[grapheme_end(source, len(source) - len(piece)) :] if piece else ""


def _pieces(
    counter: TokenCounter, head_source: str, tail_source: str | None, keep: int, readable: bool
) -> tuple[str, int, str, int]:
    """A head and a tail of about ``keep`` tokens together, each cut between grapheme clusters.

    Returns ``(head, head_tokens, tail, tail_tokens)``. The head gets half, the tail what the head left,
    the head what the tail could not take, and the tail the rest. When a cluster at each edge is too large
    for what is left, taking one of them whole (the other end shorter) is tried as well: the pair keeping
    the most tokens within ``keep`` wins.
    """

    def after(head: str) -> str:  # where the tail is cut from
        return head_source[len(head) :] if tail_source is None else tail_source

    def before(tail: str) -> str:  # where the head is cut from
        return head_source[: len(head_source) - len(tail)] if tail_source is None else head_source

    def fill_tail(head: str, head_tokens: int) -> tuple[str, int]:
        source = after(head)
        tail = _whole_tail(source, cut_to_tokens(counter, source, keep - head_tokens, from_end=True))
        if readable and not tail and source:
            tail = source[grapheme_start(source, len(source) - 1) :]
        return tail, counter.count(tail)

    def fill_head(tail: str, tail_tokens: int) -> tuple[str, int]:
        source = before(tail)
        head = _whole_head(source, cut_to_tokens(counter, source, keep - tail_tokens))
        return head, counter.count(head)

    head = _whole_head(head_source, cut_to_tokens(counter, head_source, (keep + 1) // 2))
    if readable and not head:
        head = head_source[: grapheme_end(head_source, 1)]
    head_tokens = counter.count(head)
    tail, tail_tokens = fill_tail(head, head_tokens)
    if readable and head_tokens + tail_tokens > keep:  # the last cluster, kept whole, needs the head's room
        shorter, shorter_tokens = fill_head(tail, tail_tokens)
        if not shorter:
            source = before(tail)
            shorter = source[: grapheme_end(source, 1)]
            shorter_tokens = counter.count(shorter)
        if shorter_tokens < head_tokens:
            head, head_tokens = shorter, shorter_tokens
    if head_tokens + tail_tokens < keep:  # the tail's edge split a character: the head takes the rest
        longer, longer_tokens = fill_head(tail, tail_tokens)
        if len(longer) > len(head):
            head, head_tokens = longer, longer_tokens
    if head_tokens + tail_tokens < keep:  # the head's edge split a character: the tail takes the rest
        longer, longer_tokens = fill_tail(head, head_tokens)
        if len(longer) > len(tail):
            tail, tail_tokens = longer, longer_tokens
    best = (head, head_tokens, tail, tail_tokens)
    if head_tokens + tail_tokens >= keep:
        return best
    candidates: list[tuple[str, int, str, int]] = []
    room = before(tail)
    if len(head) < len(room):  # the head's next cluster whole, the tail shorter
        wider = room[: grapheme_end(room, len(head) + 1)]
        wider_tokens = counter.count(wider)
        if wider_tokens <= keep:
            candidates.append((wider, wider_tokens, *fill_tail(wider, wider_tokens)))
    source = after(head)
    if len(tail) < len(source):  # the tail's previous cluster whole, the head shorter
        wider = source[grapheme_start(source, len(source) - len(tail) - 1) :]
        wider_tokens = counter.count(wider)
        if wider_tokens <= keep:
            candidates.append((*fill_head(wider, wider_tokens), wider, wider_tokens))
    for candidate in candidates:
        kept = candidate[1] + candidate[3]
        if best[1] + best[3] < kept <= keep and (candidate[0] and candidate[2] or not readable):
            best = candidate
    return best


def _cut(
    counter: TokenCounter,
    head_source: str,
    tail_source: str | None,
    total: int,
    max_tokens: int,
    *,
    readable: bool = False,
) -> tuple[str, str, str, int]:
    """Head + marker + tail within ``max_tokens``; ``tail_source`` None: the tail comes after the head.

    Head and tail end and start between grapheme clusters: an emoji ZWJ sequence, a letter with its
    combining marks or a flag is kept whole or left out. With ``readable`` both must keep at least one
    (the first and the last cluster are kept when their share is smaller than they are).

    Returns ``(text, head, tail, omitted)``; ``text`` is ``""`` when not even the marker fits, or, with
    ``readable``, when no head and tail fit.
    """
    keep = max_tokens - marker_tokens(counter, total)
    # The pieces' counts do not add up exactly (tokens merge at the seams, the marker's number is
    # shorter than the total's): shrink when over, grow when under, between the largest keep that fit
    # and the smallest that did not.
    fitted: tuple[str, str, str, int] | None = None
    fitted_keep, too_big = 0, max_tokens + 1
    for _ in range(6):
        if keep <= 1 or keep <= fitted_keep:
            break
        head, head_tokens, tail, tail_tokens = _pieces(counter, head_source, tail_source, keep, readable)
        omitted = max(total - head_tokens - tail_tokens, 1)
        result = head + _MARKER_TEMPLATE.format(omitted=omitted) + tail
        excess = counter.count(result) - max_tokens
        if readable and not (head and tail):
            if not head or tail_source is not None or len(head) < len(head_source):
                break  # nothing to show of one end
            excess = max(excess, keep - head_tokens + 1)  # the head took the whole text: leave a tail room
        if excess == 0:
            return result, head, tail, omitted
        if excess < 0:
            fitted, fitted_keep = (result, head, tail, omitted), keep
        else:
            too_big = keep
        keep = min(keep - excess, too_big - 1)
    if fitted is not None:
        return fitted
    marker = _MARKER_TEMPLATE.format(omitted=total).strip()
    return (marker if not readable and counter.count(marker) <= max_tokens else ""), "", "", total


def truncate_middle(
    counter: TokenCounter, text: str, max_tokens: int, *, total: int | None = None
) -> tuple[str, int]:
    """Cut ``text`` to head + marker + tail within ``max_tokens`` tokens, head and tail of equal budgets.

    Args:
        counter: The token counter.
        text: The text to cut.
        max_tokens: The most the result may cost.
        total: The token count of ``text`` if known (saves counting a long text again).

    Returns:
        The new text and how many tokens of the original were omitted (0 if it already fits). When not
        even the marker fits, the text is ``""``; when only the marker fits, it is the bare marker.
    """
    if total is None:
        total = counter.count(text)
    if total <= max_tokens:
        return text, 0
    result, _, _, omitted = _cut(counter, text, None, total, max_tokens)
    return result, omitted


def base_tokens(message: Message, counter: TokenCounter) -> int:
    """What ``message`` costs without its content (framing, role, name, tool calls); content not counted."""
    if not message.content:
        return message.token_count
    framing = getattr(counter, "count_framing", None)  # the default counter has it: no copy needed
    if framing is not None:
        result: int = framing(message)
        return result
    return counter.count_message(dataclasses.replace(message, content=""))


def content_tokens(message: Message, counter: TokenCounter) -> int:
    """Tokens of ``message``'s content, from its cached count (a long content is not counted again)."""
    return message.token_count - base_tokens(message, counter) if message.content else 0


def _parts(message: Message) -> tuple[str, str] | None:
    """Head and tail of a message the window cut (``None`` for any other message)."""
    info = message.metadata.get(TRUNCATED_METADATA_KEY)
    if not isinstance(info, dict) or "head_chars" not in info:
        return None
    content = message.content
    head_chars, tail_chars = int(info["head_chars"]), int(info["tail_chars"])
    return content[:head_chars], content[len(content) - tail_chars :] if tail_chars else ""


def own_tokens(message: Message, counter: TokenCounter) -> int:
    """Tokens of the message's own text: all of its content, or the head and tail of a cut message."""
    parts = _parts(message)
    if parts is None:
        return content_tokens(message, counter)
    return counter.count(parts[0]) + counter.count(parts[1])


def truncate_message(
    message: Message, max_tokens: int, counter: TokenCounter, *, readable: bool = False
) -> Message | None:
    """Return a copy of ``message`` cut to head + tail so it costs at most ``max_tokens`` tokens.

    The copy keeps the id and every other field; its metadata records the original and omitted token
    counts and where the marker is under :data:`TRUNCATED_METADATA_KEY`. A message cut before is cut
    again from its head and tail. Returns ``message`` itself if it already fits and ``None`` if even the
    framing and the marker cannot fit (with ``readable``: if no copy keeping a head and a tail fits).
    Head and tail never split a grapheme cluster (an emoji ZWJ sequence, a letter and its combining marks).

    The content gets what ``max_tokens`` leaves beside the framing. A counter that counts a message as a
    whole (the JSON of a request body, a chat template) may give the copy more than its framing plus its
    content counted alone: the content's room then shrinks until the copy fits.
    """
    if message.token_count <= max_tokens:
        return message
    base = base_tokens(message, counter)
    content_budget = max_tokens - base
    if content_budget < 1 or not message.content:
        return None
    copy = _cut_copy(message, content_budget, base, counter, readable)
    if copy is None or copy.token_count <= max_tokens:
        return copy
    # The largest content room whose copy fits (the copy grows with its room; below the marker's size
    # there is no copy at all). Rarely needed. The copy grows about in proportion to its room, so the
    # search guesses in proportion from the first copy's excess: a few cuts of the kept size.
    attempts: dict[int, Message | None] = {}

    def measure(room: int) -> int | None:
        attempt = attempts[room] = _cut_copy(message, room, base, counter, readable)
        return None if attempt is None else attempt.token_count

    largest_within(measure, 0, base, content_budget, copy.token_count, max_tokens)
    fitting = [room for room, attempt in attempts.items() if attempt and attempt.token_count <= max_tokens]
    return attempts[max(fitting)] if fitting else None


def _cut_copy(
    message: Message, content_budget: int, base: int, counter: TokenCounter, readable: bool = False
) -> Message | None:
    """``message`` with its content cut to ``content_budget`` tokens (counted); None if no marker fits."""
    parts = _parts(message)
    info: Any = message.metadata.get(TRUNCATED_METADATA_KEY)
    if parts is None:
        original_tokens = message.token_count
        total = message.token_count - base
        content, head, tail, _ = _cut(
            counter, message.content, None, total, content_budget, readable=readable
        )
    else:
        original_tokens = int(info["original_tokens"])
        total = original_tokens - base
        content, head, tail, _ = _cut(counter, parts[0], parts[1], total, content_budget, readable=readable)
    if not content:
        return None
    metadata = dict(message.metadata)
    metadata[TRUNCATED_METADATA_KEY] = {
        "original_tokens": original_tokens,
        "omitted_tokens": original_tokens - base - counter.count(head) - counter.count(tail),
        "head_chars": len(head),
        "tail_chars": len(tail),
    }
    copy = dataclasses.replace(message, content=content, metadata=metadata)
    object.__setattr__(copy, "token_count", counter.count_message(copy))
    return copy


def min_truncated_tokens(message: Message, counter: TokenCounter) -> int:
    """The smallest size :func:`truncate_message` can bring ``message`` to (its framing plus a marker)."""
    if not message.content:
        return message.token_count
    size = content_tokens(message, counter)
    info = message.metadata.get(TRUNCATED_METADATA_KEY)
    if isinstance(info, dict) and "original_tokens" in info:
        size = int(info["original_tokens"]) - (message.token_count - size)
    marker = _MARKER_TEMPLATE.format(omitted=size).strip()
    return min(message.token_count, base_tokens(message, counter) + counter.count(marker))


def min_keeping_tokens(message: Message, counter: TokenCounter, keep: int) -> int:
    """The smallest size at which ``message`` keeps ``keep`` tokens of its own text (head and tail).

    Its full size when cutting would not make it smaller than that.
    """
    if not message.content:
        return message.token_count
    own = own_tokens(message, counter)
    info = message.metadata.get(TRUNCATED_METADATA_KEY)
    if _parts(message) is None:
        marker = marker_tokens(counter, own)
        if own <= keep + marker + _CUT_SLACK:
            return message.token_count
    else:  # already cut: a new cut keeps a marker, counting at most the original's whole content
        assert isinstance(info, dict)
        marker = marker_tokens(counter, int(info["original_tokens"]) - base_tokens(message, counter))
        if own <= keep + _CUT_SLACK:
            return message.token_count
    return min(message.token_count, base_tokens(message, counter) + marker + keep + _CUT_SLACK)


def min_readable_tokens(message: Message, counter: TokenCounter) -> int:
    """The smallest size at which ``message`` keeps :data:`MIN_EDGE_TOKENS` of its start and of its end.

    A cut never splits a grapheme cluster: an end whose first (last) cluster costs more keeps that cluster.
    """
    if not message.content:
        return message.token_count
    head_source, tail_source = _parts(message) or (message.content, message.content)
    first = head_source[: grapheme_end(head_source, 1)]
    last = tail_source[grapheme_start(tail_source, len(tail_source) - 1) :]
    edges = max(MIN_EDGE_TOKENS, counter.count(first)) + max(MIN_EDGE_TOKENS, counter.count(last))
    return min_keeping_tokens(message, counter, edges)
