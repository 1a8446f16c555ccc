from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_manager.core.errors import ConfigurationError
from context_manager.core.messages import Message, ToolCall
from context_manager.core.tokens import (
    REPLY_PRIMING_TOKENS,
    ExactTokenCounter,
    count_tokens,
    cut_to_tokens,
    encoding_for_model,
    get_token_counter,
    largest_within,
    truncate_to_tokens,
)
from tests.loop_support import longest_thread_hold_beside_sleeper
from tests.tiktoken_reference import tiktoken_encoding

ENCODINGS = ["o200k_base", "cl100k_base"]

FIXTURE_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY name;",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "Emoji: 🎉👩‍👩‍👧‍👦🇫🇷 and flags 🏳️‍🌈",
    "   leading spaces\n\n\n\ttabs\t\tand   runs      of     spaces   ",
    "\n" * 50 + " " * 100,
    "Numbers 1234567890 3.14159 -42 1e10",
    "Ünïcödé çåſé and ligatures ﬁ ﬂ",
    "<|endoftext|> special tokens are plain text here",
    '{"json": [1, 2, {"nested": true}], "key": null}',
    "",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = Path(tmp_path_factory.mktemp("tiktoken_cache"))
    return {name: tiktoken_encoding(name, cache) for name in ENCODINGS}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("text", FIXTURE_TEXTS)
def test_ids_and_counts_equal_tiktoken(reference: dict[str, Any], encoding: str, text: str) -> None:
    counter = ExactTokenCounter(encoding)
    expected = reference[encoding].encode_ordinary(text)
    assert counter.encode(text) == expected
    assert counter.count(text) == len(expected)
    assert counter.count_uncached(text) == len(expected)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_counts_equal_tiktoken_on_random_text(reference: dict[str, Any], text: str) -> None:
    for encoding in ENCODINGS:
        assert ExactTokenCounter(encoding).count(text) == len(reference[encoding].encode_ordinary(text))


def _cookbook_count(encoding: Any, messages: list[dict[str, str]]) -> int:
    """OpenAI's published counting rule (openai-cookbook, How to count tokens with tiktoken)."""
    tokens_per_message, tokens_per_name = 3, 1
    total = 0
    for message in messages:
        total += tokens_per_message
        for key, value in message.items():
            total += len(encoding.encode(value))
            if key == "name":
                total += tokens_per_name
    return total + 3  # every reply is primed with <|start|>assistant<|message|>


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_message_counts_follow_the_published_chat_rule(reference: dict[str, Any], encoding: str) -> None:
    conversation = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "assistant", "content": "Things working well together will increase revenue."},
        {"role": "user", "content": "日本語 and emoji 🎉"},
    ]
    counter = ExactTokenCounter(encoding)
    messages = [Message.create(m["role"], m["content"], name=m.get("name")) for m in conversation]
    ours = sum(counter.count_message(m) for m in messages) + REPLY_PRIMING_TOKENS
    assert ours == _cookbook_count(reference[encoding], conversation)


def test_tool_calls_count_name_and_json_arguments() -> None:
    counter = get_token_counter("o200k_base")
    plain = Message.create("assistant", "Let me check.")
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris", "unit": "celsius"})
    with_call = Message.create("assistant", "Let me check.", tool_calls=[call])
    extra = counter.count_message(with_call) - counter.count_message(plain)
    assert extra == 3 + counter.count("get_weather") + counter.count('{"city":"Paris","unit":"celsius"}')
    result = Message.create("tool", '{"temperature": 18}', tool_call_id="call_1")
    assert counter.count_message(result) == 3 + counter.count("tool") + counter.count('{"temperature": 18}')


def test_model_names_map_to_encodings() -> None:
    assert encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_for_model("gpt-4-turbo") == "cl100k_base"
    assert get_token_counter(model="gpt-3.5-turbo").encoding_name == "cl100k_base"
    with pytest.raises(ConfigurationError, match="token_model: got 'llama-3'"):
        encoding_for_model("llama-3")


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="token_encoding: got 'p50k_base'"):
        ExactTokenCounter("p50k_base")


def test_cache_returns_the_same_counts() -> None:
    counter = ExactTokenCounter("o200k_base")
    text = "repeated text " * 20
    first = counter.count(text)
    assert counter.count(text) == first == counter.count_uncached(text)
    assert count_tokens(text) == first


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=400),
    limit=st.integers(min_value=1, max_value=60),
    from_end=st.booleans(),
)
def test_truncate_to_tokens_returns_the_longest_fitting_piece(text: str, limit: int, from_end: bool) -> None:
    counter = get_token_counter()
    piece = truncate_to_tokens(counter, text, limit, from_end=from_end)
    assert counter.count(piece) <= limit
    assert text.endswith(piece) if from_end else text.startswith(piece)
    if piece != text:  # one more character would not fit
        longer = text[len(text) - len(piece) - 1 :] if from_end else text[: len(piece) + 1]
        assert counter.count(longer) > limit


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=3000),
    limit=st.integers(min_value=1, max_value=120),
    from_end=st.booleans(),
    generic=st.booleans(),
)
def test_cut_to_tokens_fits_and_is_nearly_the_longest_piece(
    text: str, limit: int, from_end: bool, generic: bool
) -> None:
    exact = get_token_counter()

    class CountOnly:  # any TokenCounter: cut_to_tokens falls back to a search on character offsets
        encoding_name = "o200k_base"

        def count(self, value: str) -> int:
            return exact.count(value)

        def count_message(self, message: Any) -> int:  # pragma: no cover - not used here
            return exact.count_message(message)

    counter: Any = CountOnly() if generic else exact
    piece = cut_to_tokens(counter, text, limit, from_end=from_end)
    assert exact.count(piece) <= limit
    assert text.endswith(piece) if from_end else text.startswith(piece)
    longest = truncate_to_tokens(exact, text, limit, from_end=from_end)
    assert exact.count(longest) - exact.count(piece) <= 4  # "nearly": a split character at worst


@pytest.mark.parametrize("from_end", [False, True])
def test_cut_to_tokens_keeps_every_token_asked_of_text_with_long_tokens(from_end: bool) -> None:
    """A run of one letter packs 8 characters a token: the window cut_to_tokens encodes (6 characters a
    token asked) held a token or three more than asked, and the 4 tokens it never keeps at its far edge
    came out of the piece (the newest request then kept fewer tokens than its quarter of the window)."""
    counter = get_token_counter()
    text = "a" * 1032
    for limit in range(1, 120):
        piece = cut_to_tokens(counter, text, limit, from_end=from_end)
        assert counter.count(piece) == limit, (limit, counter.count(piece))


def test_cutting_a_megabyte_text_costs_about_the_piece_kept() -> None:
    """Issue 18.8: cutting a large output binary-searched (and cached) the whole text."""
    counter = ExactTokenCounter("o200k_base")
    text = "".join(
        f"row {i}: status ok, latency {i % 97} ms, region eu-west-{i % 3}\n" for i in range(25_000)
    )
    assert len(text) > 1_000_000
    head = cut_to_tokens(counter, text, 500)
    tail = cut_to_tokens(counter, text, 500, from_end=True)
    assert 495 <= counter.count(head) <= 500 and 495 <= counter.count(tail) <= 500
    assert text.startswith(head) and text.endswith(tail)
    # nothing of the megabyte text was cached: the cache stays within its bound
    assert counter.cache_chars <= 16_384 * 2


def test_the_count_cache_is_bounded_in_bytes() -> None:
    counter = ExactTokenCounter("o200k_base")
    for i in range(400):  # 400 distinct texts of 16,000 characters: 6.4 M characters counted
        text = f"{i} " + "x" * 16_000
        counter.count(text)
        assert counter.cache_chars <= 2_000_000
    huge = "y " * 100_000
    assert counter.count(huge) == counter.count_uncached(huge)
    assert counter.cache_chars <= 2_000_000


# endings that decide how the tokenizer splits around a seam: letters, digits, contractions, punctuation
# runs, marks, spaces, non-ASCII punctuation
_SEAM_TEXT = st.lists(
    st.sampled_from(
        list("aZ7 .,;:!?')(/-\n\t\u2026\u00e9\u0301\u6771\u00a0\u3002\"{}[]_`~")
        + ["e\u0301", "'s", "...", "'t", "123", "don't", "東京の天気は晴れ", "résumé", "ǅ", "ʰ", "٣", "五"]
        + [", ", '", "', '": ', ": [", "}, {", "], ", " \u0301"]
    ),
    max_size=12,
).map("".join)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=500, deadline=None)
@given(
    parts=st.lists(
        st.one_of(_SEAM_TEXT, st.text(max_size=12), st.sampled_from([" a", "b c", "Ab Cd", "x  y"])),
        max_size=40,
    ),
    piece_chars=st.integers(1, 40),
)
def test_a_long_text_counted_in_pieces_counts_as_a_whole(
    encoding: str, parts: list[str], piece_chars: int
) -> None:
    """Megabytes are counted a piece at a time (cut after an ASCII letter followed by a space and a letter,
    so a worker thread lets the event loop in between): the pieces add up to the whole text's count."""
    counter = ExactTokenCounter(encoding)
    text = "".join(parts)
    assert counter._count_long(text, piece_chars) == counter.count_uncached(text)


def _count_in_a_thread(counter: ExactTokenCounter, text: str) -> int:
    """Count ``text`` in a worker thread while this one wakes every millisecond; the worker must never run
    50 ms of CPU time between two wakes of this thread (the tokenizer holds the interpreter for one piece at
    a time). CPU time, not the wall-clock gap: other processes on a busy machine stretch that, not this.
    The shortest of up to three counts: the tokenizer holding the interpreter shows in every one."""
    holds: list[float] = []
    for _ in range(3):
        counted, longest = longest_thread_hold_beside_sleeper(counter.count, text)
        holds.append(longest)
        if longest < 0.05:
            break
    assert min(holds) < 0.05, f"the counting thread held the interpreter {min(holds) * 1000:.0f} ms"
    return counted


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_megabytes_are_counted_exactly_while_another_thread_runs(encoding: str) -> None:
    """The tokenizer holds the interpreter while it counts: a thread counting 5 MB at once held the
    event loop's thread for the whole count (160 ms here), though the count ran in a worker thread."""

    counter = ExactTokenCounter(encoding)
    text = " ".join(f"w{i} lorem{i % 97} ipsum" for i in range(300_000))
    expected = counter.count_uncached(text + " end")
    assert _count_in_a_thread(counter, text + " end") == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=400, deadline=None)
@given(lines=st.lists(st.tuples(st.text(max_size=20), _SEAM_TEXT).map("".join), min_size=1, max_size=5))
def test_count_lines_equals_counting_the_joined_text(encoding: str, lines: list[str]) -> None:
    counter = ExactTokenCounter(encoding)
    assert counter.count_lines(lines, [counter.count(line) for line in lines]) == counter.count(
        "\n".join(lines)
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=400, deadline=None)
@given(
    text=st.tuples(st.text(max_size=20), _SEAM_TEXT).map("".join),
    suffix=st.sampled_from(["\u2026", "...", ".", "?)", "/", "'"]),
)
def test_count_with_suffix_equals_counting_the_whole(encoding: str, text: str, suffix: str) -> None:
    counter = ExactTokenCounter(encoding)
    assert counter.count_with_suffix(text, counter.count(text), suffix) == counter.count(text + suffix)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400), limit=st.integers(1, 60), from_end=st.booleans())
def test_cut_counted_reports_the_count_of_its_piece(
    encoding: str, text: str, limit: int, from_end: bool
) -> None:
    counter = ExactTokenCounter(encoding)
    piece, tokens = counter.cut_counted(text, limit, from_end=from_end)
    assert piece == counter.cut(text, limit, from_end=from_end)
    assert tokens == counter.count(piece) <= limit


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_json_is_counted_in_pieces_while_another_thread_runs(encoding: str) -> None:
    """A tool's JSON result (rows of numbers and short strings) has no seam of a letter, a space and a
    letter: 20 MB of it was counted at once, holding the event loop's thread for about a second though the
    count ran in a worker thread. It is also cut after punctuation followed by a space (``, "``)."""
    import json

    counter = ExactTokenCounter(encoding)
    rows = [{"id": n, "name": f"customer {n}", "score": n * 0.5, "tags": ["a", "b"]} for n in range(60_000)]
    text = json.dumps(rows)
    expected = counter.count_uncached(text)
    assert _count_in_a_thread(counter, text) == expected


class _CountingCounter:
    """A counter of one's own (cut_to_tokens searches on character offsets with it) that tallies its work."""

    encoding_name = "o200k_base (counted)"

    def __init__(self) -> None:
        self._exact = get_token_counter()
        self.calls = 0
        self.chars = 0

    def count(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return self._exact.count(text)

    def count_message(self, message: Message) -> int:
        self.calls += 1
        self.chars += len(message.content)
        return self._exact.count_message(message)


@pytest.mark.parametrize("from_end", [False, True])
def test_a_counter_of_ones_own_finds_the_longest_piece_in_a_few_counts(from_end: bool) -> None:
    """With a counter of one's own the search halved the text (or a window of 24 characters a token asked)
    from its whole length: about 20 counts of the text, each as long as a good part of it. The first guess
    is now in proportion to what was counted (characters x limit / tokens), so a few counts of about the
    piece kept find a piece of the limit's tokens that one more character would overflow."""
    counter = _CountingCounter()
    exact = get_token_counter()
    text = " ".join(f"the café served résumé {i} while the queue drained" for i in range(4_000))
    for limit in (1_000, 7_000):
        counter.calls = counter.chars = 0
        longest = truncate_to_tokens(counter, text, limit, from_end=from_end)
        assert counter.calls <= 11, counter.calls  # (19 before)
        counter.calls = counter.chars = 0
        piece = cut_to_tokens(counter, text, limit, from_end=from_end)
        # (16 to 19 counts of 25 to 29 times the piece before)
        assert counter.calls <= 11 and counter.chars <= 12 * len(piece), (counter.calls, counter.chars)
        for found in (piece, longest):  # as long as a piece can be: within the limit, one more character not
            assert exact.count(found) == limit
            assert text.endswith(found) if from_end else text.startswith(found)
            one_more = text[len(text) - len(found) - 1 :] if from_end else text[: len(found) + 1]
            assert exact.count(one_more) > limit


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.integers(min_value=0, max_value=9), min_size=2, max_size=400),
    limit=st.integers(min_value=0, max_value=2_000),
)
def test_largest_within_finds_what_a_bisection_finds(steps: list[int], limit: int) -> None:
    """On any nondecreasing count (a piece's tokens as it grows, in steps of uneven size) the search in
    proportion ends where a bisection ends, in no more than about three times its steps."""
    counts = [sum(steps[: i + 1]) for i in range(len(steps))]
    if counts[0] > limit or counts[-1] <= limit:
        return
    measured: list[int] = []

    def measure(size: int) -> int:
        measured.append(size)
        return counts[size]

    found = largest_within(measure, 0, counts[0], len(counts) - 1, counts[-1], limit)
    assert found == max(i for i, count in enumerate(counts) if count <= limit)
    assert len(measured) <= 3 * (len(counts).bit_length() + 1)
