"""Exact, offline token counting.

The default :class:`ExactTokenCounter` gives the same counts as ``tiktoken`` for the OpenAI encodings
``o200k_base`` (GPT-4o and later) and ``cl100k_base`` (GPT-4, GPT-3.5). It uses the encodings shipped
inside the ``bpe-openai`` wheel, so it works on a fresh machine without network access.

A message is counted with the chat-format rule OpenAI publishes: every message costs
``TOKENS_PER_MESSAGE`` (3) plus its role and content, a ``name`` costs its text plus
``TOKENS_PER_NAME`` (1), and a conversation is primed for the reply with ``REPLY_PRIMING_TOKENS`` (3).
Tool calls cost their name and JSON arguments plus ``TOKENS_PER_TOOL_CALL`` (3) of framing each.

Other providers plug in through the :class:`TokenCounter` protocol::

    class MyCounter:
        encoding_name = "my-model"
        def count(self, text: str) -> int: ...
        def count_message(self, message: Message) -> int: ...
"""

from __future__ import annotations

import math
import os
import re
import string
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from context_manager.core.errors import ConfigurationError, InvalidArgumentError
from context_manager.core.messages import REASONING_METADATA_KEY, reasoning_texts

if TYPE_CHECKING:
    from context_manager.core.messages import Message

__all__ = [
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "ExactTokenCounter",
    "TokenCounter",
    "count_tokens",
    "count_within",
    "encoding_for_model",
    "cut_to_tokens",
    "get_token_counter",
    "truncate_to_tokens",
]

TOKENS_PER_MESSAGE = 3
"""Framing tokens every chat message costs (``<|start|>{role}\\n ... <|end|>``)."""
TOKENS_PER_NAME = 1
"""Extra token a message's ``name`` field costs besides its text."""
REPLY_PRIMING_TOKENS = 3
"""Tokens that prime the assistant's reply; counted once per conversation."""
TOKENS_PER_TOOL_CALL = 3
"""Framing tokens per tool call, besides its name and JSON arguments."""

# Never letters, digits, marks or whitespace in either encoding's pre-split (see count_lines)
_SEAM_PUNCTUATION = frozenset(string.punctuation + "\u2026")
_TRAILING_PUNCTUATION_MAX = 8


def _trailing_punctuation(text: str) -> str | None:
    """The run of ASCII punctuation (or ``…``) ending ``text`` after a letter or ASCII digit ("" if none).

    ``None`` when ``text`` does not end that way (it ends with whitespace, a mark, other punctuation, is
    empty, or the run is long): then where the tokenizer's last piece starts is not known without it.
    """
    position = len(text)
    stop = max(position - _TRAILING_PUNCTUATION_MAX - 1, -1)
    while position > 0 and position > stop:
        character = text[position - 1]
        if character in _SEAM_PUNCTUATION:
            position -= 1
            continue
        if character.isalpha() or "0" <= character <= "9":  # a letter (any script) or an ASCII digit
            return text[position:]
        return None
    return None


_TEXT_CACHE_SIZE = 8192
_TEXT_CACHE_CHARS = 2_000_000  # at most 8 MB of cached text (4 bytes a character at worst)
OFF_LOOP_CHARS = 100_000
"""Texts longer than this (about 5 ms of counting and more) are counted, cut or turned into a prompt in a
worker thread, not on the event loop."""
_TEXT_CACHE_MAX_TEXT = 16_384  # longer texts are counted each time: caching them is what grows memory
_PIECE_CHARS = 65_536
"""A text longer than this is counted a piece at a time (about 2 ms each), so a thread counting megabytes
lets the event loop's thread take the interpreter between pieces: the tokenizer holds it while it counts."""
_WORD_SEAM = re.compile(r"[A-Za-z](?= [A-Za-z])|[!-/:-@\[-`{-~](?= )")
"""Where a text can be cut without changing its count: after an ASCII letter followed by a space and an
ASCII letter, or after ASCII punctuation followed by a space (``, "`` in JSON, which has few words). Both
encodings' pre-split ends a word, or a run of punctuation, there and starts the next piece with the space
(``" word"``, ``' "'``), so the pieces count alone what they count together (property-tested on both)."""

_MODEL_PREFIX_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)


@runtime_checkable
class TokenCounter(Protocol):
    """What the context window needs from a tokenizer."""

    encoding_name: str
    """A name for the encoding (shown in summaries and the CLI)."""

    def count(self, text: str) -> int:
        """Return the number of tokens of ``text``."""
        ...

    def count_message(self, message: Message) -> int:
        """Return what ``message`` costs in a prompt, chat-format overhead included.

        A window adds ``count()`` of the message's Anthropic thinking blocks (``message.thinking``) to
        what a counter of your own gives here.
        """
        ...


def encoding_for_model(model: str) -> str:
    """Return the encoding name of an OpenAI model (``"gpt-4o-mini"`` -> ``"o200k_base"``).

    Raises:
        ConfigurationError: the model is not known.
    """
    lowered = model.strip().lower()
    for prefix, encoding in _MODEL_PREFIX_ENCODINGS:
        if lowered.startswith(prefix):
            return encoding
    known = ", ".join(sorted({prefix + "*" for prefix, _ in _MODEL_PREFIX_ENCODINGS}))
    raise ConfigurationError(
        "token_model",
        model,
        f"a model name starting with one of: {known} (OpenAI models; another provider's model, such as a "
        "Claude or Llama model, counts with its own tokenizer: leave token_model unset and pass "
        "EnhancedContextManager(config, token_counter=...), see docs/concepts.md#tokens)",
    )


_backends: dict[str, Any] = {}
_backends_lock = threading.Lock()


def _renew_backends_lock() -> None:
    """In a forked child: a new lock.

    A thread of the parent loading a tokenizer at the fork held it, and that thread does not exist here:
    the child's first counter of an encoding not loaded yet waited for ever.
    """
    global _backends_lock
    _backends_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_renew_backends_lock)


def _backend(encoding_name: str) -> Any:
    """Load (once) the Rust BPE tokenizer of bpe-openai for an encoding; imported lazily."""
    backend = _backends.get(encoding_name)
    if backend is None:
        with _backends_lock:
            backend = _backends.get(encoding_name)
            if backend is None:
                from bpe_openai import _bindings  # heavy-ish native module: load on first use

                backend = _bindings.tokenizer_for_encoding(encoding_name)
                _backends[encoding_name] = backend
    return backend


class ExactTokenCounter:
    """Exact, offline token counter for ``o200k_base`` and ``cl100k_base``.

    Counts of repeated texts are served from a small cache bounded in entries and in bytes (texts longer
    than 16,384 characters are not cached); a message is counted once by the window.

    Example:
        >>> counter = ExactTokenCounter("o200k_base")
        >>> counter.count("Hello, world!")
        4
    """

    def __init__(self, encoding_name: str = "o200k_base") -> None:
        from context_manager.core.config import SUPPORTED_ENCODINGS

        if encoding_name not in SUPPORTED_ENCODINGS:
            raise ConfigurationError(
                "token_encoding", encoding_name, "one of " + ", ".join(map(repr, SUPPORTED_ENCODINGS))
            )
        self.encoding_name = encoding_name
        self._tokenizer = _backend(encoding_name)
        self._count_raw = self._tokenizer.count
        self._cache: dict[str, int] = {}
        self._cache_chars = 0
        from context_manager.core.messages import Role

        # Roles are few: count them once instead of on every message.
        self._role_tokens: dict[Any, int] = {
            role: TOKENS_PER_MESSAGE + self._count_raw(role.value) for role in Role
        }

    def __repr__(self) -> str:
        return f"ExactTokenCounter({self.encoding_name!r})"

    def count(self, text: str) -> int:
        """Return the number of tokens of ``text`` (special-token text counts as ordinary text)."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        if len(text) > _TEXT_CACHE_MAX_TEXT:
            return self._count_long(text) if len(text) > _PIECE_CHARS else int(self._count_raw(text))
        result: int = self._count_raw(text)
        self._remember(text, result)
        return result

    def _count_long(self, text: str, piece_chars: int = _PIECE_CHARS) -> int:
        """Count a long text a piece of about ``piece_chars`` characters at a time, cut at word seams.

        The tokenizer holds the interpreter while it counts: between pieces another thread (the event
        loop's, when this runs in a worker thread) gets it. A text with no seam is counted whole.
        """
        count = self._count_raw
        total = 0
        start = 0
        end = len(text)
        search = _WORD_SEAM.search
        while end - start > piece_chars:
            seam = None
            window = start + piece_chars
            while seam is None and window < end:  # each search scans one piece's length at most
                seam = search(text, window, min(window + piece_chars, end))
                window += piece_chars
            if seam is None:
                break
            cut = seam.start() + 1
            total += count(text[start:cut])
            start = cut
        return total + int(count(text[start:] if start else text))

    def _remember(self, text: str, tokens: int) -> None:
        size = len(text)
        self._cache_chars += size
        if len(self._cache) >= _TEXT_CACHE_SIZE or self._cache_chars > _TEXT_CACHE_CHARS:
            self._cache.clear()  # cheap amortised bound; hot texts come back at once
            self._cache_chars = size
        self._cache[text] = tokens

    @property
    def cache_chars(self) -> int:
        """Characters of text held by the count cache (at most 2,000,000: about 8 MB at worst)."""
        return self._cache_chars

    def fits(self, text: str, max_tokens: int) -> bool:
        """True if ``text`` costs at most ``max_tokens`` tokens; stops counting once the limit is passed."""
        return self.count_within(text, max_tokens) is not None

    def count_within(self, text: str, max_tokens: int) -> int | None:
        """Return the token count of ``text`` if it is at most ``max_tokens``, else ``None``.

        Counting stops once the limit is passed, so the cost follows ``max_tokens``, not the text: what a
        summary line that may not fit the room left costs. A count within the limit is cached like
        :meth:`count`'s.
        """
        cached = self._cache.get(text)
        if cached is not None:
            return cached if cached <= max_tokens else None
        if max_tokens < 0:
            return None
        result: int | None = self._tokenizer.count_till_limit(text, max_tokens)
        if result is not None and len(text) <= _TEXT_CACHE_MAX_TEXT:
            self._remember(text, result)
        return result

    def cut(self, text: str, max_tokens: int, *, from_end: bool = False) -> str:
        """Return a prefix (or suffix) of ``text`` costing at most ``max_tokens`` tokens, cut at a token.

        Encodes only a window of the text near the kept end (growing it when the text is denser than
        expected), so the cost follows ``max_tokens``, not the length of ``text``. The piece is at most a
        few tokens shorter than the longest one that fits (a character split across tokens is dropped).
        """
        return self.cut_counted(text, max_tokens, from_end=from_end)[0]

    def cut_counted(self, text: str, max_tokens: int, *, from_end: bool = False) -> tuple[str, int]:
        """:meth:`cut`, with the exact token count of the piece (which the cut measures anyway)."""
        if max_tokens <= 0 or not text:
            return "", 0
        span = max_tokens * 6 + 64
        while True:
            whole = span >= len(text)
            window = text if whole else (text[len(text) - span :] if from_end else text[:span])
            tokens = self._tokenizer.encode(window)
            if whole:
                if len(tokens) <= max_tokens:
                    return text, len(tokens)
                break
            # The window's edge away from the kept end may tokenize differently from the full text: its
            # last 4 tokens there are never kept (a window that ends mid-word changes only the tokens at
            # that edge), so it must hold max_tokens + 4 (text of more than 6 characters a token: wider).
            if len(tokens) >= max_tokens + 4:
                break
            span *= 4
        keep = max_tokens
        while keep > 0:
            piece = tokens[len(tokens) - keep :] if from_end else tokens[:keep]
            try:
                cut: str = self._tokenizer.decode(piece)
            except ValueError:  # the piece splits a character's UTF-8 bytes
                keep -= 1
                continue
            if not (text.endswith(cut) if from_end else text.startswith(cut)):  # pragma: no cover
                keep -= 1
                continue
            # Alone, the piece may tokenize differently at its cut edge: count it and shrink by the excess.
            actual: int = self._count_raw(cut)
            if actual <= max_tokens:
                return cut, actual
            keep -= actual - max_tokens
        return "", 0

    def count_with_suffix(self, text: str, text_tokens: int, suffix: str) -> int:
        """Tokens of ``text + suffix``, given ``text_tokens`` (the exact count of ``text``).

        ``suffix`` is a run of punctuation (an ellipsis, say). When ``text`` ends with a letter or an
        ASCII digit, optionally followed by ASCII punctuation, the tokenizer's pre-split puts ``suffix``
        in a piece of its own or in the text's trailing punctuation piece, so the count follows from
        counting only that piece (short, and usually cached); otherwise the whole text is counted.
        """
        tail = _trailing_punctuation(text)
        if tail is None or not suffix or not _SEAM_PUNCTUATION.issuperset(suffix):
            return self.count(text + suffix)
        count = self.count
        return text_tokens - (count(tail) if tail else 0) + count(tail + suffix)

    def count_lines(self, lines: Sequence[str], line_tokens: Sequence[int]) -> int:
        r"""Tokens of ``"\n".join(lines)``, given the exact count of each line.

        A newline after a line ending with a letter or ASCII digit (optionally followed by punctuation)
        is a piece of its own or joins that trailing punctuation in the tokenizer's pre-split, and so does
        not change how the lines around it are split when the next line starts with neither whitespace nor
        ``/``: each seam costs what its short piece costs. Any other seam makes this count the whole text.
        """
        if not lines:
            return 0
        count = self.count
        total = line_tokens[0]
        for position in range(1, len(lines)):
            line = lines[position]
            tail = _trailing_punctuation(lines[position - 1])
            if tail is None or not line or line[0].isspace() or line[0] == "/":
                return count("\n".join(lines))
            seam = count(tail + "\n") - count(tail) if tail else count("\n")
            total += seam + line_tokens[position]
        return total

    def count_uncached(self, text: str) -> int:
        """Count ``text`` without touching the cache (what benchmarks compare with the raw tokenizer)."""
        result: int = self._count_raw(text)
        return result

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text`` (identical to tiktoken's ``encode_ordinary``)."""
        ids: list[int] = self._tokenizer.encode(text)
        return ids

    def decode(self, token_ids: list[int]) -> str:
        """Return the text of ``token_ids``."""
        text: str = self._tokenizer.decode(token_ids)
        return text

    def _count_uncached(self, texts: Iterable[str]) -> int:
        """Texts counted without the cache (a message's thinking, its kept reasoning)."""
        total = 0
        for text in texts:
            total += self._count_raw(text) if len(text) <= _PIECE_CHARS else self._count_long(text)
        return total

    def _count_thinking(self, message: Message) -> int:
        """A message's Anthropic thinking blocks: their text, a redacted block's data (uncached)."""
        texts = (block.get("thinking") or block.get("data") or "" for block in message.thinking)
        return self._count_uncached(texts)

    def _count_reasoning(self, message: Message) -> int:
        """A message's kept reasoning of an OpenAI-compatible server (``reasoning_content`` ...)."""
        return self._count_uncached(reasoning_texts(message))

    def count_framing(self, message: Message) -> int:
        """What ``message`` costs without its content: framing, role, name, tool calls and reasoning."""
        count = self.count
        total = self._role_tokens[message.role]
        if message.name:
            total += count(message.name) + TOKENS_PER_NAME
        for call in message.tool_calls:
            total += TOKENS_PER_TOOL_CALL + count(call.name) + count(call.arguments_json())
        if message.thinking:
            total += self._count_thinking(message)
        if message.metadata and REASONING_METADATA_KEY in message.metadata:  # most hold none
            total += self._count_reasoning(message)
        return total

    def count_message(self, message: Message) -> int:
        """Return what ``message`` costs in a prompt, with the chat-format overhead (module docstring).

        The content is counted without the cache: a window counts each message once, so caching contents
        would only cost time and evict the short texts (names, arguments, summary lines) that do repeat.
        """
        count = self.count
        total = self._role_tokens[message.role]
        content = message.content
        if content:
            total += self._count_raw(content) if len(content) <= _PIECE_CHARS else self._count_long(content)
        if message.name:
            total += count(message.name) + TOKENS_PER_NAME
        for call in message.tool_calls:
            total += TOKENS_PER_TOOL_CALL + count(call.name) + count(call.arguments_json())
        if message.thinking:
            total += self._count_thinking(message)
        if message.metadata and REASONING_METADATA_KEY in message.metadata:  # most hold none
            total += self._count_reasoning(message)
        return total


class _ThinkingCounted:
    """A user's :class:`TokenCounter` that also counts a message's Anthropic thinking blocks.

    ``count_message`` adds ``count()`` of each block's text (a redacted block's data) to the user's
    ``count_message``, which knows content, role, name and calls; everything else is the user's counter.
    """

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._count_message = counter.count_message
        self.encoding_name = counter.encoding_name

    def count(self, text: str) -> int:
        return self._counter.count(text)

    def count_message(self, message: Message) -> int:
        tokens = self._count_message(message)
        if message.thinking:
            count = self._counter.count
            for block in message.thinking:
                tokens += count(block.get("thinking") or block.get("data") or "")
        if message.metadata and REASONING_METADATA_KEY in message.metadata:
            for text in reasoning_texts(message):
                tokens += self._counter.count(text)
        return tokens

    def __getattr__(self, name: str) -> Any:
        if name == "count_framing" or name.startswith("_"):  # a user's count_framing misses the thinking
            raise AttributeError(name)
        return getattr(self._counter, name)

    def __repr__(self) -> str:
        return repr(self._counter)


def counting_thinking(counter: TokenCounter) -> TokenCounter:
    """``counter`` as the window uses it: a user's own counter gets thinking blocks counted too.

    The built-in :class:`ExactTokenCounter` counts them itself and is returned as it is.
    """
    if isinstance(counter, ExactTokenCounter | _ThinkingCounted):
        return counter
    return _ThinkingCounted(counter)


_counters: dict[str, ExactTokenCounter] = {}


def get_token_counter(encoding_name: str = "o200k_base", *, model: str | None = None) -> ExactTokenCounter:
    """Return the shared default counter for an encoding (or for ``model``'s encoding)."""
    name = encoding_for_model(model) if model else encoding_name
    counter = _counters.get(name)
    if counter is None:
        counter = _counters.setdefault(name, ExactTokenCounter(name))
    return counter


def count_tokens(text: str, encoding_name: str = "o200k_base") -> int:
    """Count the tokens of ``text`` with the default counter of ``encoding_name``.

    Raises:
        InvalidArgumentError: ``text`` is not a str, or holds lone surrogates (not valid Unicode).
        ConfigurationError: the encoding is unknown.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError("text", text, "a str")
    if not isinstance(encoding_name, str):
        raise ConfigurationError("encoding_name", encoding_name, "one of 'o200k_base', 'cl100k_base'")
    counter = get_token_counter(encoding_name)
    try:
        return counter.count(text)
    except UnicodeEncodeError:
        raise InvalidArgumentError("text", text, "valid Unicode text (no lone surrogates)") from None


def count_within(counter: TokenCounter, text: str, max_tokens: int) -> int | None:
    """Return the token count of ``text`` if it is at most ``max_tokens``, else ``None``.

    With the default counter counting stops once the limit is passed
    (:meth:`ExactTokenCounter.count_within`); another :class:`TokenCounter` counts the whole text.
    """
    within = getattr(counter, "count_within", None)
    if within is not None:
        result: int | None = within(text, max_tokens)
        return result
    tokens = counter.count(text)
    return tokens if tokens <= max_tokens else None


def cut_to_tokens(counter: TokenCounter, text: str, max_tokens: int, *, from_end: bool = False) -> str:
    """Return a prefix (or suffix) of ``text`` within ``max_tokens`` tokens, in time following ``max_tokens``.

    With the default counter the text is cut at a token boundary after encoding only a window near the
    kept end (:meth:`ExactTokenCounter.cut`); another :class:`TokenCounter` gets a binary search over a
    window of the text. Either way a megabyte text costs about as much as the piece kept. The piece may be
    a few tokens shorter than the longest that fits; :func:`truncate_to_tokens` finds the longest.
    """
    if max_tokens <= 0 or not text:
        return ""
    cut = getattr(counter, "cut", None)
    if cut is not None:
        piece: str = cut(text, max_tokens, from_end=from_end)
        return piece
    span = max_tokens * 4 + 64  # about the piece in prose; grown in proportion to what a window held
    while span < len(text):
        window = text[len(text) - span :] if from_end else text[:span]
        tokens = counter.count(window)
        if tokens > max_tokens:
            return _longest_piece(counter, window, max_tokens, tokens, from_end=from_end)
        span = max(span * 2, span * max_tokens * 5 // (4 * max(tokens, 1))) + 64
    return truncate_to_tokens(counter, text, max_tokens, from_end=from_end)


def truncate_to_tokens(counter: TokenCounter, text: str, max_tokens: int, *, from_end: bool = False) -> str:
    """Return the longest prefix (or suffix, with ``from_end``) of ``text`` costing at most ``max_tokens``.

    Works with any :class:`TokenCounter`: it searches on character offsets, so it needs only ``count``.
    It counts the whole text and then pieces of it: for long texts use :func:`cut_to_tokens`.
    """
    if max_tokens <= 0 or not text:
        return ""
    total = counter.count(text)
    if total <= max_tokens:
        return text
    return _longest_piece(counter, text, max_tokens, total, from_end=from_end)


def _longest_piece(counter: TokenCounter, text: str, max_tokens: int, total: int, *, from_end: bool) -> str:
    """The longest prefix (suffix) of ``text`` within ``max_tokens``, given ``total`` > ``max_tokens``."""

    def measure(length: int) -> int:
        return counter.count(text[len(text) - length :] if from_end else text[:length])

    length = largest_within(measure, 0, 0, len(text), total, max_tokens)
    return text[len(text) - length :] if from_end else text[:length]


def largest_within(
    measure: Callable[[int], int | None], low: int, low_tokens: int, high: int, high_tokens: int, limit: int
) -> int:
    """The largest size in ``[low, high)`` whose piece costs at most ``limit`` tokens (a search on sizes).

    ``measure(low)`` (``low_tokens``) is within ``limit`` and ``measure(high)`` (``high_tokens``) is not;
    ``measure`` may return ``None`` for a size that gives no piece (taken as within the limit). Tokens grow
    about in proportion to a piece's size, so the first guess is in proportion (size x limit / tokens) and
    each next one steps from the end just moved across the limit by what is missing (or over) and a margin
    of a tenth and one token, closing the bracket from both sides: a few steps instead of one a halving. A
    bracket that two steps did not halve is halved, so the search takes at most about three times a
    bisection's steps.
    """
    last: bool | None = None
    reference, since = high - low, 0
    while high - low > 1:
        per_token = (high - low) / max(high_tokens - low_tokens, 1)
        if since >= 2:
            guess = (low + high) // 2
        elif last is None:
            guess = low + int((limit - low_tokens) * per_token)
        elif last:  # the low end just moved: past the limit by a margin
            guess = low + math.ceil((limit + 1 - low_tokens) * per_token * 1.1) + 1
        else:  # the high end just moved: below the limit by a margin
            guess = high - math.ceil((high_tokens - limit) * per_token * 1.1) - 1
        guess = min(max(guess, low + 1), high - 1)
        tokens = measure(guess)
        last = tokens is None or tokens <= limit
        if last:
            low, low_tokens = guess, low_tokens if tokens is None else tokens
        else:
            assert tokens is not None
            high, high_tokens = guess, tokens
        if (high - low) * 2 <= reference:
            reference, since = high - low, 0
        else:
            since += 1
    return low
