from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from context_manager.core.compression import (
    SUMMARY_METADATA_KEY,
    TRUNCATED_METADATA_KEY,
    group_into_units,
    is_summary,
    min_readable_tokens,
    min_truncated_tokens,
)
from context_manager.core.context_window import CompressionRecord, ContextWindow
from context_manager.core.errors import (
    ContextBudgetError,
    InvalidArgumentError,
    InvalidMessageError,
    NotFoundError,
    ToolCallPairingError,
)
from context_manager.core.messages import Message, Role, ToolCall
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, get_token_counter
from context_manager.testing import ScriptedSummarizer

COUNTER = get_token_counter()


def text_of(tokens: int, seed: int = 0) -> str:
    """A text of about ``tokens`` tokens (" wordN" is one or two tokens)."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "cloud"]
    return " ".join(words[(seed + i) % len(words)] for i in range(max(tokens, 1)))


def snapshot(window: ContextWindow) -> tuple[object, ...]:
    return (
        tuple((m.id, m.role, m.content, m.token_count, m.pinned) for m in window.messages),
        window.token_count,
        window.pending_tool_calls,
        len(window.compression_history),
        tuple(m.id for m in window.evicted_messages),
    )


def assert_invariants(window: ContextWindow) -> None:
    messages = window.messages
    # Invariant 1: the running total is exact and within the budget.
    expected = sum(COUNTER.count_message(m) for m in messages) + (REPLY_PRIMING_TOKENS if messages else 0)
    assert window.token_count == expected
    assert all(m.token_count == COUNTER.count_message(m) for m in messages)
    assert window.token_count <= window.max_tokens
    # Invariant 2: every tool result follows its call; a call's unit is never split.
    calls_seen: dict[str, Message] = {}
    for message in messages:
        for call in message.tool_calls:
            calls_seen[call.id] = message
        if message.role is Role.TOOL:
            assert message.tool_call_id in calls_seen
    assert sum(1 for m in messages if is_summary(m)) <= 1


# -- basics ------------------------------------------------------------------------------------------


async def test_running_total_counts_each_message_once_plus_priming() -> None:
    window = ContextWindow(max_tokens=1000)
    assert window.token_count == 0
    first = Message.create("user", "Hello, world!")
    await window.add(first)
    assert first.token_count == COUNTER.count_message(first)
    assert window.token_count == first.token_count + REPLY_PRIMING_TOKENS
    second = Message.create("assistant", "Hi there!")
    await window.add(second)
    assert window.token_count == first.token_count + second.token_count + REPLY_PRIMING_TOKENS
    assert window.messages == (first, second)
    assert window.get(second.id) is second


async def test_overflow_compresses_to_target_with_one_rolling_summary() -> None:
    window = ContextWindow(max_tokens=400, compression_ratio=0.6)
    await window.add(Message.create("system", "You are terse."))
    records: list[CompressionRecord] = []
    for i in range(60):
        record = await window.add(
            Message.create("user" if i % 2 == 0 else "assistant", f"Turn {i}: " + text_of(20, i))
        )
        if record is not None:
            records.append(record)
            assert record.tokens_after <= window.target_tokens
            assert record.tokens_after == window.token_count
        assert_invariants(window)
    assert len(records) >= 3
    assert records[0].strategy == "extractive"
    assert records[0].removed_count > 0 and records[0].summary_tokens > 0
    summaries = [m for m in window.messages if is_summary(m)]
    assert len(summaries) == 1
    assert window.messages[0].content == "You are terse."
    assert window.messages[1] is summaries[0]
    # The summary counts every message it replaced, across compressions.
    assert summaries[0].metadata[SUMMARY_METADATA_KEY] == len(window.evicted_messages)


async def test_hysteresis_makes_compression_rare() -> None:
    window = ContextWindow(max_tokens=2000, compression_ratio=0.5)
    for i in range(400):
        await window.add(Message.create("user", text_of(20, i)))
    assert 0 < len(window.compression_history) <= 400 * 23 // 900 + 1


async def test_priority_low_is_evicted_before_older_normal() -> None:
    window = ContextWindow(max_tokens=500, compression_ratio=0.8, summary_max_tokens=16)
    normal = Message.create("user", "old normal " + text_of(150))
    low = Message.create("assistant", "newer low " + text_of(150), priority="low")
    high = Message.create("user", "newer high " + text_of(30), priority="high")
    for message in (normal, low, high):
        await window.add(message)
    record = await window.add(Message.create("assistant", text_of(175)))
    assert record is not None
    assert [m.id for m in window.evicted_messages] == [low.id]
    assert normal.id in {m.id for m in window.messages}


async def test_system_pinned_and_critical_survive_compression() -> None:
    window = ContextWindow(max_tokens=600)
    system = Message.create("system", "Be precise.")
    pinned = Message.create("user", "My account id is 77.", pinned=True)
    critical = Message.create("assistant", "Never share the key.", priority="critical")
    for message in (system, pinned, critical):
        await window.add(message)
    for i in range(100):
        await window.add(Message.create("user", text_of(30, i)))
    ids = {m.id for m in window.messages}
    assert {system.id, pinned.id, critical.id} <= ids
    assert window.compression_history


async def test_pin_and_unpin_by_id() -> None:
    window = ContextWindow(max_tokens=300)
    message = Message.create("assistant", "remember this")
    await window.add(message)
    window.pin(message.id)
    for i in range(40):
        await window.add(Message.create("assistant", text_of(20, i)))
    assert message.id in {m.id for m in window.messages}
    window.unpin(message.id)
    for i in range(40):
        await window.add(Message.create("assistant", text_of(20, i)))
    assert message.id not in {m.id for m in window.messages}
    with pytest.raises(NotFoundError, match="message not found: 'nope'"):
        window.pin("nope")


@pytest.mark.parametrize("bad_id", [["id"], {"id": 1}, 42, None, b"id"])
async def test_a_message_id_that_is_not_a_string_is_an_invalid_argument(bad_id: object) -> None:
    # unhashable ids (a list, a dict) raised a bare TypeError from the id lookup
    window = ContextWindow(max_tokens=300)
    await window.add(Message.create("user", "hello"))
    before = snapshot(window)
    for operation in (window.pin, window.unpin, window.get):
        with pytest.raises(InvalidArgumentError, match=r"message_id: got .*; allowed a message id \(str\)"):
            operation(bad_id)  # type: ignore[operator]
    assert snapshot(window) == before


async def test_oversized_message_is_kept_as_head_and_tail_and_full_text_archived() -> None:
    window = ContextWindow(max_tokens=300)
    huge = Message.create("user", "BEGIN " + text_of(3000) + " END")
    record = await window.add(huge)
    assert record is not None and record.truncated_count == 1
    kept = window.get(huge.id)
    assert kept.content.startswith("BEGIN") and kept.content.endswith("END")
    omitted = kept.metadata[TRUNCATED_METADATA_KEY]["omitted_tokens"]
    assert "[... " in kept.content and "tokens omitted ...]" in kept.content
    assert omitted > 2500
    assert window.token_count <= window.target_tokens
    archived = {m.id: m for m in window.evicted_messages}
    assert archived[huge.id].content == huge.content


async def test_huge_tool_result_is_cut_and_pairing_kept() -> None:
    window = ContextWindow(max_tokens=400)
    await window.add(Message.create("user", "search please"))
    await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c1", name="search")]))
    await window.add(Message.create("tool", text_of(5000), tool_call_id="c1"))
    assert_invariants(window)
    roles = [m.role for m in window.messages]
    assert roles[-2:] == [Role.ASSISTANT, Role.TOOL]


async def test_compression_observer_sees_every_compression_and_cannot_break_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[CompressionRecord] = []
    window = ContextWindow(max_tokens=200)
    with pytest.raises(InvalidArgumentError, match="observer"):
        window.set_compression_observer("not callable")  # type: ignore[arg-type]
    window.set_compression_observer(seen.append)
    for i in range(12):
        await window.add(Message.create("user", text_of(15, i)))
    await window.extend([Message.create("user", text_of(15, i)) for i in range(12, 24)])
    await window.compress(60)
    assert seen == window.compression_history and len(seen) >= 3

    def broken(record: CompressionRecord) -> None:
        raise RuntimeError("observer down")

    window.set_compression_observer(broken)
    before = len(window.compression_history)
    assert await window.compress(40) is not None  # logged, and the compression stands
    assert len(window.compression_history) == before + 1 and window.token_count <= 200
    assert "compression observer failed (RuntimeError)" in caplog.text


@dataclass
class RecordingTrace:
    """A compression trace keeping what the window told it (a :class:`CompressionTrace`)."""

    events: list[str]
    fail: bool = False

    @contextlib.contextmanager
    def summary_call(self) -> Iterator[None]:
        self.events.append("summary call")
        if self.fail:
            raise RuntimeError("trace down")
        yield

    def end(self, record: CompressionRecord | None, error: BaseException | None) -> None:
        self.events.append("end " + ("record" if record is not None else type(error).__name__))
        if self.fail:
            raise RuntimeError("trace down")


async def test_compression_tracer_brackets_each_compression_and_cannot_break_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []
    window = ContextWindow(max_tokens=200, summarizer=ScriptedSummarizer(["a short summary"] * 10))
    with pytest.raises(InvalidArgumentError, match="tracer"):
        window.set_compression_tracer("not callable")  # type: ignore[arg-type]
    window.set_compression_tracer(lambda: RecordingTrace(events))
    for i in range(12):
        await window.add(Message.create("user", text_of(15, i)))
    compressions = len(window.compression_history)
    assert compressions >= 1 and events == ["summary call", "end record"] * compressions
    events.clear()
    window.set_compression_tracer(lambda: RecordingTrace(events, fail=True))
    assert await window.compress(40) is not None  # logged, and the compression stands with its summary
    assert events == ["summary call", "end record"]
    assert window.compression_history[-1].strategy == "custom"
    assert "compression trace failed (RuntimeError)" in caplog.text


async def test_eviction_hook_receives_evicted_messages_sync_and_async() -> None:
    received: list[list[Message]] = []
    window = ContextWindow(max_tokens=200, eviction_hook=received.append)
    added = []
    for i in range(30):
        message = Message.create("user", text_of(15, i))
        added.append(message.id)
        await window.add(message)
    assert received and not window.evicted_messages
    handed = [m.id for batch in received for m in batch]
    assert set(handed) | {m.id for m in window.messages if not is_summary(m)} == set(added)
    assert handed == [i for i in added if i in handed]  # conversation order

    got: list[Message] = []
    done = asyncio.Event()

    async def async_hook(messages: list[Message]) -> None:
        got.extend(messages)
        done.set()

    window.set_eviction_hook(async_hook)
    for i in range(30):
        await window.add(Message.create("assistant", text_of(15, i)))
    assert done.is_set() and got


async def test_failing_hook_falls_back_to_archive() -> None:
    def broken(messages: list[Message]) -> None:
        raise RuntimeError("store down")

    window = ContextWindow(max_tokens=150, eviction_hook=broken)
    for i in range(20):
        await window.add(Message.create("user", text_of(15, i)))
    assert window.evicted_messages
    taken = window.take_evicted()
    assert taken and not window.evicted_messages


async def test_compression_disabled_rejects_add_and_changes_nothing() -> None:
    window = ContextWindow(max_tokens=100, enable_compression=False)
    await window.add(Message.create("user", text_of(40)))
    before = snapshot(window)
    with pytest.raises(ContextBudgetError, match="compression is disabled"):
        await window.add(Message.create("assistant", text_of(80)))
    assert snapshot(window) == before


async def test_custom_summarizer_is_used_and_can_fold() -> None:
    summarizer = ScriptedSummarizer(["first summary", "second summary"])
    window = ContextWindow(max_tokens=200, summarizer=summarizer)
    for i in range(40):
        await window.add(Message.create("user", text_of(15, i)))
    assert [r.strategy for r in window.compression_history][:2] == ["custom", "custom"]
    assert summarizer.calls[1].messages[0].content == "first summary"
    assert window.summary is not None


async def test_failing_summarizer_falls_back_to_extractive() -> None:
    summarizer = ScriptedSummarizer(fail_with=RuntimeError("LLM down"))
    window = ContextWindow(max_tokens=200, summarizer=summarizer)
    for i in range(20):
        await window.add(Message.create("user", text_of(15, i)))
    record = window.compression_history[0]
    assert record.strategy == "custom_failed_fallback_extractive"
    assert record.error == "RuntimeError: LLM down"
    assert window.summary is not None and window.summary.content.startswith("Summary of the earlier")


async def test_hanging_summarizer_times_out_and_adds_wait_their_turn() -> None:
    summarizer = ScriptedSummarizer(hang=True)
    window = ContextWindow(max_tokens=200, summarizer=summarizer, summarizer_timeout=0.05)
    for i in range(9):
        await window.add(Message.create("user", text_of(15, i)))
    trigger = asyncio.ensure_future(window.add(Message.create("user", text_of(60))))
    await summarizer.started.wait()
    queued = asyncio.ensure_future(window.add(Message.create("assistant", "queued reply")))
    record = await trigger
    await queued
    assert record is not None and record.strategy == "custom_failed_fallback_extractive"
    assert record.error == "timeout after 0.05 s"
    assert window.messages[-1].content == "queued reply"
    assert_invariants(window)


async def test_summarizer_returning_non_text_falls_back() -> None:
    async def bad(messages: object, budget: int) -> object:
        return 42

    window = ContextWindow(max_tokens=200, summarizer=bad)  # type: ignore[arg-type]
    for i in range(20):
        await window.add(Message.create("user", text_of(15, i)))
    assert window.compression_history[0].strategy == "custom_failed_fallback_extractive"


@pytest.mark.parametrize(
    ("junk", "problem"),
    [("summary \ud800 of the talk", "lone surrogate"), ("summary\x00 of the talk", "NUL character")],
)
async def test_summarizer_returning_text_no_message_can_hold_falls_back(junk: str, problem: str) -> None:
    # a lone surrogate failed the (real) token count outside the summarizer's guard: every add that needed
    # a compression raised a bare UnicodeEncodeError and the window stayed full for good
    summarizer = ScriptedSummarizer(default=junk)
    window = ContextWindow(max_tokens=200, summarizer=summarizer)
    for i in range(40):
        await window.add(Message.create("user", text_of(15, i)))
    history = window.compression_history
    assert len(history) >= 2 and len(summarizer.calls) == len(history)
    for record in history:
        assert record.strategy == "custom_failed_fallback_extractive"
        assert record.error is not None and record.error.startswith("SummarizerError: ")
        assert problem in record.error and "of the talk" not in record.error  # never quotes the text
    assert window.summary is not None and window.summary.content.startswith("Summary of the earlier")
    assert_invariants(window)


async def test_overlong_custom_summary_is_cut_to_budget() -> None:
    summarizer = ScriptedSummarizer(default=text_of(5000))
    window = ContextWindow(max_tokens=300, summarizer=summarizer, summary_max_tokens=50)
    for i in range(30):
        await window.add(Message.create("user", text_of(15, i)))
    assert window.summary is not None and window.summary.token_count <= 50
    assert_invariants(window)


async def test_explicit_compress_and_select_budget_view() -> None:
    window = ContextWindow(max_tokens=5000)
    await window.add(Message.create("system", "sys"))
    for i in range(100):
        await window.add(Message.create("user", text_of(30, i)))
    before = snapshot(window)
    view = window.select(500)
    assert sum(m.token_count for m in view) + REPLY_PRIMING_TOKENS <= 500
    assert view[0].content == "sys" and view[-1] is window.messages[-1]
    assert snapshot(window) == before
    assert window.select() == list(window.messages)
    record = await window.compress(1000)
    assert record is not None and window.token_count <= 1000
    assert await window.compress(5000) is None


async def test_compress_with_nothing_left_to_take_changes_nothing_and_calls_no_summarizer() -> None:
    """compress() when the window holds nothing more it may take (a long system prompt, the newest turn and
    the summary are all that is left) evicted nothing, yet had the summarizer rewrite its own summary at
    every call (an LLM call, the summary a summary of a summary, the prompt prefix changed) and added a
    record of nothing done. It returns None now, the window and its history unchanged."""
    calls: list[int] = []

    async def summarizer(messages: object, budget: int) -> str:
        calls.append(budget)
        return f"summary {len(calls)}: Aurora deploys on Thursday."

    window = ContextWindow(max_tokens=300, summarizer=summarizer)
    await window.add(Message.create("system", text_of(150)))
    for i in range(12):
        await window.add(Message.create("user", text_of(8, i)))
    assert window.summary is not None and len(window) == 3  # the adds compressed: system, summary, newest
    state, summaries, history = snapshot(window), len(calls), len(window.compression_history)
    for _ in range(3):
        assert await window.compress(50) is None
    assert (
        snapshot(window) == state
        and window.summary.content == f"summary {summaries}: Aurora deploys on Thursday."
    )
    assert len(calls) == summaries and len(window.compression_history) == history
    alone = ContextWindow(max_tokens=300)  # no summary: nothing to evict, nothing to cut
    await alone.add(Message.create("system", text_of(150)))
    await alone.add(Message.create("user", "hello"))
    assert await alone.compress(20) is None and alone.compression_history == []
    assert_invariants(window)


async def test_a_message_added_to_two_windows_with_other_counters_keeps_each_windows_count() -> None:
    """The window caches its count on the message it takes: the same Message added to a second window with
    another counter (a cl100k and an o200k model, a custom counter) had its count overwritten, and the
    first window, planning its compressions with the counts on its messages, went on believing it held
    about a third of what it did (316 tokens said, 943 held, max_tokens 400)."""
    o200k, cl100k = get_token_counter("o200k_base"), get_token_counter("cl100k_base")
    first = ContextWindow(max_tokens=400, counter=o200k)
    second = ContextWindow(max_tokens=100_000, counter=cl100k)
    for i in range(40):
        message = Message.create(
            "user" if i % 2 else "assistant", f"note {i} " + "日本語のテキスト " * (i % 7 + 1)
        )
        await first.add(message)
        await second.add(message)
        for window, counter in ((first, o200k), (second, cl100k)):
            held = window.messages
            assert all(m.token_count == counter.count_message(m) for m in held)
            assert window.token_count == sum(m.token_count for m in held) + REPLY_PRIMING_TOKENS
        assert first.token_count <= first.max_tokens
    assert first.compression_history
    fresh = Message.create("user", "shared as it is when the counts agree")
    await first.add(fresh)
    await ContextWindow(max_tokens=400, counter=o200k).add(fresh)
    assert first.messages[-1] is fresh  # nothing copied when the counts agree


class _QuarterCharacters:
    """The "a token is about 4 characters" estimate, written with ``/``: counts that are not integers."""

    encoding_name = "chars/4"

    def count(self, text: str) -> float:
        return len(text) / 4

    def count_message(self, message: Message) -> float:
        return 3 + len(message.content) / 4


async def test_a_counter_giving_counts_that_are_not_integers_is_refused_when_the_window_is_made() -> None:
    """A counter returning floats was taken, the adds went in, and the first compression failed with a bare
    TypeError from deep in the summary ("slice indices must be integers"), at every add from then on."""
    with pytest.raises(InvalidArgumentError, match=r"counter: got .*; allowed a TokenCounter whose count"):
        ContextWindow(max_tokens=200, counter=_QuarterCharacters())  # type: ignore[arg-type]


class _RequestBodyCounter:
    """Counts a message as the JSON of the request body it goes out in, with the real o200k tokenizer.

    Framing and content are counted together (not additive): JSON escapes every non-ASCII character
    (``\\u65e5``), so a Japanese text costs about four times its own count, and ``include_metadata``
    counts the metadata a cut copy carries too.
    """

    encoding_name = "o200k_base (request JSON)"

    def __init__(self, *, include_metadata: bool = False) -> None:
        self._exact = get_token_counter()
        self._include_metadata = include_metadata

    def count(self, text: str) -> int:
        return self._exact.count(text)

    def count_message(self, message: Message) -> int:
        body: dict[str, object] = {"role": message.role.value, "content": message.content}
        if self._include_metadata:
            body["metadata"] = message.metadata
        return self._exact.count(json.dumps(body))


async def test_a_counter_counting_framing_and_text_together_keeps_the_window_and_views_in_budget() -> None:
    """A cut copy that such a counter counted above the room planned for it was silently not cut: the add
    returned with a 300-token window holding 714 tokens, and views of 150, 250 and 400 tokens returned all
    698 tokens of a window. The cut now shrinks until the counter says the copy fits."""
    counter = _RequestBodyCounter()
    request = "この文章を英語に翻訳してください。" * 12
    window = ContextWindow(max_tokens=300, counter=counter)
    await window.add(Message.create("system", "You are a translator."))
    await window.add(Message.create("user", "Translate: good morning"))
    await window.add(Message.create("assistant", "おはようございます"))
    record = await window.add(Message.create("user", request))
    assert record is not None and record.truncated_count == 1
    held = window.messages
    assert window.token_count == sum(counter.count_message(m) for m in held) + REPLY_PRIMING_TOKENS <= 300
    head, _, rest = held[-1].content.partition("\n[... ")
    assert head and request.startswith(head) and request.endswith(rest.partition(" ...]\n")[2])

    alone = ContextWindow(max_tokens=2000, counter=counter)
    await alone.add(Message.create("user", request))
    assert alone.token_count > 400
    for budget in (150, 250, 400):
        view = alone.select(budget)
        assert sum(counter.count_message(m) for m in view) + REPLY_PRIMING_TOKENS <= budget
        assert view[0].content != request


class _CountingRequestBodyCounter(_RequestBodyCounter):
    """:class:`_RequestBodyCounter` tallying how many texts it counts and their characters."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.chars = 0

    def count(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return super().count(text)

    def count_message(self, message: Message) -> int:
        self.calls += 1
        self.chars += len(message.content)
        return super().count_message(message)


async def test_a_view_cut_with_a_counter_of_ones_own_counts_a_few_times_the_piece_kept() -> None:
    """select() runs on the event loop. With a counter whose first cut of a long request comes out too
    large (JSON escapes its accented words), the cut searched the room by halving it, each try searching
    its head and tail by halving the text: a 510k-character request in a 128k budget took 4.1 s (here 100k
    characters in 25k tokens: 679 counts of 22.6M characters). The searches now guess in proportion to
    what was counted, and the view is the same (it fits, as large as before)."""
    counter = _CountingRequestBodyCounter()
    words = "the café served a naïve résumé of our plan while the queue drained after the deploy"
    shuffled = words.split()  # a word in 7 and numbers: the text does not repeat a short period
    text = " ".join(f"{shuffled[i * 7 % len(shuffled)]}{i % 97}" for i in range(40_000))[:100_000]
    window = ContextWindow(max_tokens=1_000_000, counter=counter)
    await window.add(Message.create("user", text))
    counter.calls = counter.chars = 0
    [cut] = window.select(25_000)
    assert counter.calls <= 150 and counter.chars <= 40 * len(text), (counter.calls, counter.chars)
    assert 24_990 <= counter.count_message(cut) == cut.token_count <= 25_000 - REPLY_PRIMING_TOKENS
    head, _, rest = cut.content.partition("\n[... ")
    assert head and text.startswith(head) and text.endswith(rest.partition(" ...]\n")[2])


async def test_check_fits_and_add_agree_on_a_request_with_large_first_and_last_characters() -> None:
    """Default counter, a fresh 71-token window, a request of emoji families ending in a 26-token flag:
    check_fits let it through and the add refused it (its readable cut found no copy at the room the plan
    gave it, 'the token counter counts the cut messages above the room planned'). Both now accept it."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    flag = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    window = ContextWindow(max_tokens=71, compression_ratio=0.5)
    request = Message.create("user", family + "\U0001f44d\U0001f3fd" + family * 3 + flag)
    window.check_fits([request])
    await window.add(request)
    held = window.get(request.id)
    assert window.token_count <= 71
    assert held.content.startswith(family) and held.content.endswith(flag)


async def test_cuts_the_counter_finds_too_large_are_refused_and_leave_the_window_as_it_was() -> None:
    """A counter that also counts the metadata of a cut copy (its truncation record) gives every cut more
    than the plan allowed; with no cut fitting, the add returned all the same with a 52-token window holding
    219 tokens. It is now refused (ContextBudgetError) before anything changes, and so is a view."""
    counter = _RequestBodyCounter(include_metadata=True)
    window = ContextWindow(max_tokens=52, counter=counter)
    await window.add(Message.create("user", "hello"))
    before = snapshot(window)
    with pytest.raises(ContextBudgetError, match=r"max_tokens: got 52; allowed more: .* as far as the token"):
        await window.add(Message.create("user", "word " * 200))
    assert snapshot(window) == before
    big = ContextWindow(max_tokens=1000, counter=counter)
    await big.add(Message.create("user", "word " * 200))
    with pytest.raises(ContextBudgetError, match=r"budget: got 47; allowed more"):
        big.select(47)


async def test_check_fits_refuses_what_extend_refuses_when_the_counter_finds_the_cuts_too_large() -> None:
    """check_fits (what execute_tool_calls asks before any tool runs) made the plan but not the cuts: with a
    counter that counts a cut copy's truncation record, it let a tool call and its answer through that
    extend() then refused (a 100-token window holding a 30-word request), so the tools would have run with
    no room for their results. It now refuses exactly the batches extend() refuses."""
    counter = _RequestBodyCounter(include_metadata=True)
    compared = 0
    for max_tokens in range(60, 160, 4):
        for words in (10, 30, 60, 120):
            window = ContextWindow(max_tokens=max_tokens, counter=counter)
            with contextlib.suppress(ContextBudgetError):
                await window.add(Message.create("user", "word " * words))
            call = Message.create("assistant", "", tool_calls=[ToolCall("c1", "search", {"q": "x"})])
            answer = Message.create("tool", "", tool_call_id="c1")
            try:
                window.check_fits([call, answer])
            except ContextBudgetError:
                checked = False
            else:
                checked = True
            before = snapshot(window)
            try:
                await window.extend([call, answer])
            except ContextBudgetError:
                added = False
                assert snapshot(window) == before
            else:
                added = True
            assert checked == added, (max_tokens, words)
            compared += 1
    assert compared == 100


async def test_a_budgeted_view_leaves_out_older_messages_before_the_summary_of_the_oldest() -> None:
    """select(budget) (get_context(budget=...)) evicted just enough messages for the budget, then left the
    rolling summary out because it no longer fitted: a budget one token below the window dropped the
    summary (the only trace of the oldest turns, "Aurora deploys on Thursday" here) and kept 117 tokens
    unused. Older messages now make room for the summary, as a compression makes room for its summary."""
    window = ContextWindow(max_tokens=600)
    await window.add(Message.create("system", "You are the release assistant."))
    await window.add(Message.create("user", "Project Aurora deploys on Thursday at 14:00 UTC. Remember it."))
    for i in range(40):
        await window.add(Message.create("user", f"How is build {i} of the payments service doing today?"))
        await window.add(Message.create("assistant", f"Build {i} passed {40 + i} tests."))
    summary = window.summary
    assert summary is not None and "Aurora" in summary.content
    before = snapshot(window)
    for shortfall in (1, 10, 50, 150, 300):
        budget = window.token_count - shortfall
        view = window.select(budget)
        total = sum(m.token_count for m in view) + REPLY_PRIMING_TOKENS
        assert summary in view, shortfall
        assert budget - 30 <= total <= budget  # about as much as allowed: nothing dropped for nothing
        assert view[-1] is window.messages[-1] and view[0].content == "You are the release assistant."
        body = [m for m in window.messages if not is_summary(m)]
        kept = [m for m in view if not is_summary(m)]
        assert kept == [body[0], *body[len(body) - len(kept) + 1 :]]  # the oldest turns left out first
    assert snapshot(window) == before
    # a budget the summary cannot share with what must stay still gets a view, without the summary
    tight = window.select(summary.token_count + 20)
    assert summary not in tight and sum(m.token_count for m in tight) + REPLY_PRIMING_TOKENS <= 138


# -- bad input: specific error, window unchanged -----------------------------------------------------


async def test_orphan_tool_result_is_rejected() -> None:
    window = ContextWindow(max_tokens=500)
    await window.add(Message.create("user", "hi"))
    before = snapshot(window)
    with pytest.raises(
        ToolCallPairingError, match="tool_call_id: got 'nope'; allowed the id of an unanswered"
    ):
        await window.add(Message.create("tool", "result", tool_call_id="nope"))
    assert snapshot(window) == before


async def test_second_result_for_one_call_and_id_of_a_pending_call_are_rejected() -> None:
    window = ContextWindow(max_tokens=500)
    await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c1", name="f")]))
    assert window.pending_tool_calls == {"c1"}
    await window.add(Message.create("tool", "ok", tool_call_id="c1"))
    assert window.pending_tool_calls == frozenset()
    before = snapshot(window)
    with pytest.raises(ToolCallPairingError):
        await window.add(Message.create("tool", "again", tool_call_id="c1"))
    await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c2", name="f")]))
    before = snapshot(window)
    with pytest.raises(ToolCallPairingError, match="tool_calls\\[\\].id: got 'c2'.*'c2' has none yet"):
        await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c2", name="f")]))
    assert snapshot(window) == before


async def test_protected_message_that_cannot_fit_is_rejected() -> None:
    window = ContextWindow(max_tokens=200)
    await window.add(Message.create("user", "hello"))
    before = snapshot(window)
    for message in (
        Message.create("system", text_of(400)),
        Message.create("user", text_of(400), pinned=True),
        Message.create("assistant", text_of(400), priority="critical"),
    ):
        with pytest.raises(ContextBudgetError, match="max_tokens: got 200") as info:
            await window.add(message)
        assert info.value.required_tokens > 200 and info.value.max_tokens == 200
        assert snapshot(window) == before


async def test_non_message_and_duplicate_ids_are_rejected() -> None:
    window = ContextWindow(max_tokens=200)
    message = Message.create("user", "hello")
    await window.add(message)
    before = snapshot(window)
    with pytest.raises(InvalidArgumentError, match="message: got 'hello'; allowed a Message"):
        await window.add("hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="message.id"):
        await window.add(message)
    assert snapshot(window) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, "max_tokens: got 0"),
        ({"max_tokens": True}, "max_tokens: got True"),
        ({"compression_ratio": 1.5}, "compression_ratio: got 1.5; allowed a number > 0 and < 1"),
        ({"summary_max_tokens": -1}, "summary_max_tokens"),
        ({"summarizer_timeout": 0}, "summarizer_timeout"),
        ({"summarizer": "llm"}, "summarizer: got 'llm'"),
        ({"counter": len}, "counter: got <built-in function len>; allowed a TokenCounter"),
    ],
)
def test_invalid_constructor_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        ContextWindow(**kwargs)  # type: ignore[arg-type]


async def test_budget_view_smaller_than_protected_messages_raises() -> None:
    window = ContextWindow(max_tokens=1000)
    await window.add(Message.create("system", text_of(200)))
    await window.add(Message.create("user", "hi"))
    with pytest.raises(ContextBudgetError, match="budget: got 100; allowed at least") as info:
        window.select(100)
    assert info.value.max_tokens == 100 and info.value.required_tokens > 200


async def test_invalid_budget_for_select_and_compress() -> None:
    window = ContextWindow(max_tokens=200)
    with pytest.raises(InvalidArgumentError, match="budget: got 0"):
        window.select(0)
    with pytest.raises(InvalidArgumentError, match="target_tokens: got -5"):
        await window.compress(-5)


# -- property-based: invariants 1, 2, 3, 5 after every call -----------------------------------------


@dataclass
class Model:
    """What the test knows must hold, independent of the implementation."""

    added: list[str] = field(default_factory=list)
    protected: set[str] = field(default_factory=set)
    latest_user: str | None = None
    full_text: dict[str, str] = field(default_factory=dict)


rarely = st.sampled_from([False] * 7 + [True])
operation = st.one_of(
    st.tuples(
        st.just("message"),
        st.sampled_from(["user"] * 3 + ["assistant"] * 3 + ["system"]),
        st.sampled_from(["low", "normal", "normal", "high"] * 2 + ["critical"]),
        rarely,  # pinned
        st.floats(min_value=0.0, max_value=1.0),  # size as a fraction of 3x the budget
    ),
    st.tuples(
        st.just("tools"),
        st.integers(min_value=1, max_value=3),  # calls
        st.sampled_from(["low", "normal", "high"]),
        rarely,
        st.floats(min_value=0.0, max_value=1.0),
    ),
    st.tuples(st.just("orphan"), st.just(""), st.just("normal"), st.just(False), st.just(0.0)),
    st.tuples(
        st.just("batch"),
        st.integers(min_value=2, max_value=7),
        st.sampled_from(["low", "normal", "high"]),
        rarely,
        st.floats(min_value=0.0, max_value=1.0),
    ),
)


def size_for(fraction: float, budget: int) -> int:
    # Mostly small messages, sometimes up to 3x the budget.
    return max(1, int((fraction**3) * 3 * budget))


async def run_operations(max_tokens: int, ratio: float, ops: list[tuple[object, ...]], hook: bool) -> None:
    archive: list[Message] = []
    window = ContextWindow(
        max_tokens=max_tokens, compression_ratio=ratio, eviction_hook=archive.extend if hook else None
    )
    model = Model()
    call_counter = 0

    async def attempt(message: Message | list[Message]) -> None:
        batch = message if isinstance(message, list) else [message]
        before = snapshot(window)
        has_user = any(m.role is Role.USER for m in batch)
        own_before = request_own_tokens(window, model) if not has_user else None
        history = len(window.compression_history)
        try:
            record = await (window.extend(batch) if isinstance(message, list) else window.add(message))
        except ContextBudgetError as error:
            event("rejected: protected messages cannot fit")
            assert any(m.is_protected for m in batch) or error.required_tokens > max_tokens
            assert snapshot(window) == before  # invariant 5
            return
        except ToolCallPairingError:
            event("rejected: orphan tool result")
            assert snapshot(window) == before
            return
        if isinstance(message, list):
            event("batch added" + (" with a compression" if record is not None else ""))
        for added in batch:
            model.added.append(added.id)
            model.full_text[added.id] = added.content
            if added.is_protected:
                model.protected.add(added.id)
            if added.role is Role.USER:
                model.latest_user = added.id
        handed = archive if hook else list(window.evicted_messages)
        check_newest_request_is_readable(window, model, handed, own_before)
        if record is not None:
            event("compressed" + (" with truncation" if record.truncated_count else ""))
            assert len(window.compression_history) == history + 1
            originals = {m.id: m for m in handed}
            check_compression_target(window, record, originals)

    for kind, a, priority, pinned, fraction in ops:
        if kind == "message":
            size = size_for(float(fraction), max_tokens)  # type: ignore[arg-type]
            await attempt(Message.create(str(a), text_of(size), priority=str(priority), pinned=bool(pinned)))
        elif kind == "tools":
            calls = [ToolCall(id=f"call_{call_counter + i}", name=f"tool{i}") for i in range(int(a))]  # type: ignore[call-overload]
            call_counter += len(calls)
            await attempt(Message.create("assistant", "", tool_calls=calls, priority=str(priority)))
            for call in calls:
                size = size_for(float(fraction), max_tokens)  # type: ignore[arg-type]
                await attempt(
                    Message.create("tool", text_of(size, 3), tool_call_id=call.id, pinned=bool(pinned))
                )
        elif kind == "batch":  # extend(): a history added at once (a tool unit in it when `a` is odd)
            size = size_for(float(fraction), max_tokens)  # type: ignore[arg-type]
            batch = [
                Message.create(
                    "user" if i % 2 == 0 else "assistant", text_of(size // 2 + i, i), priority=str(priority)
                )
                for i in range(int(a))  # type: ignore[call-overload]
            ]
            if int(a) % 2:  # type: ignore[call-overload]
                call = ToolCall(id=f"call_{call_counter}", name="lookup")
                call_counter += 1
                batch.insert(1, Message.create("assistant", "", tool_calls=[call], pinned=bool(pinned)))
                batch.insert(2, Message.create("tool", text_of(size, 5), tool_call_id=call.id))
            await attempt(batch)
        else:
            await attempt(Message.create("tool", "stray", tool_call_id="missing-call"))
        assert_invariants(window)
        ids = {m.id for m in window.messages}
        # Invariant 3: protected messages are never evicted.
        assert model.protected <= ids
        # The newest user message is always present.
        if model.latest_user is not None:
            assert model.latest_user in ids

        # Nothing is lost: every added message is in the window or was handed to the hook/archive,
        # and the full text of a truncated one is there.
        handed = {m.id: m for m in (archive if hook else window.evicted_messages)}
        assert set(model.added) <= ids | set(handed)
        for message in window.messages:
            if TRUNCATED_METADATA_KEY in message.metadata:
                assert handed[message.id].content == model.full_text[message.id]
    # A budgeted view never exceeds its budget and never changes the window.
    before = snapshot(window)
    budget = max(max_tokens // 2, 10)
    try:
        view = window.select(budget)
    except ContextBudgetError:
        event("budget view: protected messages exceed the budget")
    else:
        assert sum(m.token_count for m in view) + (REPLY_PRIMING_TOKENS if view else 0) <= budget
        assert all(
            m.tool_call_id in {c.id for v in view for c in v.tool_calls} for m in view if m.tool_call_id
        )
    assert snapshot(window) == before


def split_cut(content: str) -> tuple[str, str]:
    """Head and tail of a text cut by the window (around its "[... N tokens omitted ...]" marker)."""
    head, _, rest = content.partition("\n[... ")
    _, _, tail = rest.partition(" tokens omitted ...]\n")
    return head, tail


def request_own_tokens(window: ContextWindow, model: Model) -> int | None:
    """Tokens of its own text the newest user message has in the window (head + tail when cut)."""
    if model.latest_user is None:
        return None
    kept = window.get(model.latest_user)
    if TRUNCATED_METADATA_KEY not in kept.metadata:
        return COUNTER.count(kept.content)
    head, tail = split_cut(kept.content)
    return COUNTER.count(head) + COUNTER.count(tail)


def check_newest_request_is_readable(
    window: ContextWindow, model: Model, handed: list[Message], own_before: int | None
) -> None:
    """Issue 14.1: the newest user message keeps text from its start and its end; a compression that has
    the room (what may not be evicted, with the request at a quarter of max_tokens, fits max_tokens)
    leaves it at least min(its size, max_tokens // 4) tokens of its text, or what it had before."""
    if model.latest_user is None:
        return
    kept = window.get(model.latest_user)
    if TRUNCATED_METADATA_KEY not in kept.metadata:
        assert kept.content == model.full_text[kept.id]
        return
    event("newest request cut")
    original = next(m for m in handed if m.id == kept.id)
    head, tail = split_cut(kept.content)
    assert head and tail, f"the newest request lost its start or its end: {kept.content!r}"
    assert original.content.startswith(head) and original.content.endswith(tail)
    own = COUNTER.count(head) + COUNTER.count(tail)
    wanted = min(COUNTER.count(original.content), window.max_tokens // 4)
    if own_before is not None:
        wanted = min(wanted, own_before)  # a cut made earlier without room cannot grow back
    if (
        unavoidable_tokens(window, {original.id: original}, request_as="readable")
        - min_readable_tokens(original, COUNTER)
        + request_floor(original, window.max_tokens)
        <= window.max_tokens
    ):
        event("newest request cut with room for a quarter of max_tokens")
        assert own >= wanted, (own, wanted, kept.content)


def request_floor(request: Message, max_tokens: int) -> int:
    """What the newest user request costs at least when cut: a quarter of max_tokens of its own text
    (plus the two tokens of slack the window budgets for a cut)."""
    content = COUNTER.count(request.content)
    base = request.token_count - content
    marker = COUNTER.count(f"\n[... {content} tokens omitted ...]\n")
    quarter = max_tokens // 4
    if content <= quarter + marker + 2:
        return request.token_count
    return max(base + marker + quarter + 2, min_readable_tokens(request, COUNTER))


def unavoidable_tokens(window: ContextWindow, originals: dict[str, Message], *, request_as: str) -> int:
    """What compression may not go below: protected units whole, plus the newest unit, units waiting for
    tool results and the newest user message cut as far as the rules allow (``request_as="floor"``: the
    user message keeping a quarter of max_tokens of its text; ``"readable"``: a short head and tail)."""
    messages = [m for m in window.messages if not is_summary(m)]
    latest_user = max((i for i, m in enumerate(messages) if m.role is Role.USER), default=-1)
    units = group_into_units(messages)
    pending = window.pending_tool_calls
    unavoidable = REPLY_PRIMING_TOKENS
    for unit in units:
        waiting = any(call.id in pending for i in unit.indices for call in messages[i].tool_calls)
        if unit.protected:  # a unit with a pinned/critical/system message is kept whole
            unavoidable += unit.tokens
        elif unit is units[-1] or latest_user in unit.indices or waiting:
            for i in unit.indices:
                # a message already cut is measured as the original it came from (its marker counts the
                # original's omitted tokens, a longer number than a re-cut of the cut copy would show)
                original = originals.get(messages[i].id, messages[i])
                if i != latest_user:
                    unavoidable += min_truncated_tokens(original, COUNTER)
                elif request_as == "floor":
                    unavoidable += request_floor(original, window.max_tokens)
                else:
                    unavoidable += min_readable_tokens(original, COUNTER)
    return unavoidable


def check_compression_target(
    window: ContextWindow, record: CompressionRecord, originals: dict[str, Message]
) -> None:
    if record.tokens_after <= window.target_tokens:
        return
    # Allowed only when what may not be evicted exceeds the target.
    unavoidable = unavoidable_tokens(window, originals, request_as="floor")
    assert unavoidable > window.target_tokens, (record, unavoidable)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_tokens=st.integers(min_value=120, max_value=700),
    ratio=st.floats(min_value=0.3, max_value=0.95),
    ops=st.lists(operation, min_size=1, max_size=40),
    hook=st.booleans(),
)
def test_invariants_hold_after_every_call(
    max_tokens: int, ratio: float, ops: list[tuple[object, ...]], hook: bool
) -> None:
    asyncio.run(run_operations(max_tokens, ratio, ops, hook))


async def test_concurrent_adds_during_slow_compressions_keep_invariants() -> None:
    async def yielding_summarizer(messages: object, budget: int) -> str:
        for _ in range(3):
            await asyncio.sleep(0)  # let other adds run while the compression is in flight
        return "summary so far"

    window = ContextWindow(max_tokens=300, summarizer=yielding_summarizer)
    messages = [Message.create("user" if i % 2 == 0 else "assistant", text_of(20, i)) for i in range(120)]
    await asyncio.gather(*(window.add(message) for message in messages))
    assert_invariants(window)
    assert window.compression_history and all(r.strategy == "custom" for r in window.compression_history)
    present = {m.id for m in window.messages} | {m.id for m in window.evicted_messages}
    assert {m.id for m in messages} <= present
    # Adds queued behind a compression keep their order.
    order = [m.id for m in window.messages if not is_summary(m)]
    assert order == [m.id for m in messages if m.id in set(order)]


async def test_an_add_never_overtakes_adds_queued_behind_a_compression() -> None:
    summarizer = ScriptedSummarizer(hang=True)
    window = ContextWindow(max_tokens=200, summarizer=summarizer)
    for i in range(9):
        await window.add(Message.create("user", text_of(15, i)))
    trigger = asyncio.ensure_future(window.add(Message.create("user", text_of(60))))
    await summarizer.started.wait()
    queued = [asyncio.ensure_future(window.add(Message.create("assistant", f"queued {i}"))) for i in range(3)]
    await asyncio.sleep(0)
    summarizer.release()
    await trigger
    late = Message.create("user", "late")
    await window.add(late)
    await asyncio.gather(*queued)
    contents = [m.content for m in window.messages]
    assert contents[-4:] == ["queued 0", "queued 1", "queued 2", "late"]


# -- issue 14.1: the newest request keeps its text ---------------------------------------------------


async def test_newest_request_and_reply_are_cut_in_proportion_keeping_head_and_tail() -> None:
    """Budget 300, ratio 0.7: a 122-token request and a 121-token reply used to leave the request a bare
    marker while the reply stayed nearly whole, and the summary quoted an older request."""
    window = ContextWindow(max_tokens=300, compression_ratio=0.7)
    for i in range(19):
        await window.add(Message.create("user" if i % 2 == 0 else "assistant", f"m{i} short note"))
    request = Message.create("user", "REQUEST START " + text_of(115, 1) + " REQUEST END")
    await window.add(request)
    reply = Message.create("assistant", "REPLY START " + text_of(115, 2) + " REPLY END")
    record = await window.add(reply)
    assert record is not None and record.truncated_count == 2
    assert window.token_count <= window.target_tokens
    own = {}
    for original, start, end in (
        (request, "REQUEST START", "REQUEST END"),
        (reply, "REPLY START", "REPLY END"),
    ):
        head, tail = split_cut(window.get(original.id).content)
        assert head.startswith(start) and tail.endswith(end), window.get(original.id).content
        own[original.id] = COUNTER.count(head) + COUNTER.count(tail)
    assert own[request.id] >= min(COUNTER.count(request.content), window.max_tokens // 4)
    assert own[reply.id] >= 2 * 8  # the reply keeps a real head and tail too
    summary = window.summary
    assert summary is not None
    request_line = next(
        line for line in summary.content.splitlines() if line.startswith("Latest user request")
    )
    assert request_line.startswith(
        "Latest user request (shown cut below; full text in memory): REQUEST START"
    )
    assert_invariants(window)


async def test_summary_names_the_real_latest_request_when_it_stays_whole() -> None:
    window = ContextWindow(max_tokens=400, compression_ratio=0.5)
    for i in range(12):
        await window.add(
            Message.create("user" if i % 2 == 0 else "assistant", f"older turn {i} " + text_of(20, i))
        )
    await window.add(Message.create("user", "What is the status of invoice 4471?"))
    await window.add(Message.create("assistant", "Checking. " + text_of(120)))
    summary = window.summary
    assert summary is not None
    assert "Latest user request: What is the status of invoice 4471?" in summary.content


# -- issue 18: cancellation, hooks, reserved keys, immutable messages ------------------------------


async def test_cancelled_add_still_hands_its_evicted_messages_over() -> None:
    """Issue 18.1: cancelling an add while the hook stored its evicted messages used to lose them."""
    received: list[Message] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_hook(messages: list[Message]) -> None:
        started.set()
        await release.wait()
        received.extend(messages)

    window = ContextWindow(max_tokens=200, eviction_hook=slow_hook)
    added = []
    for i in range(9):
        message = Message.create("user", text_of(15, i))
        added.append(message.id)
        await window.add(message)
    trigger = asyncio.ensure_future(window.add(Message.create("user", text_of(60))))
    await started.wait()
    trigger.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trigger
    evicted = {m.id for m in window.evicted_messages}
    assert evicted and evicted <= set(added)  # held in process while the hook works
    assert set(added) <= evicted | {m.id for m in window.messages}
    release.set()
    await window.flush()
    assert not window.evicted_messages
    assert {m.id for m in received} == evicted


async def test_eviction_hook_may_add_messages_to_the_window() -> None:
    """Issue 18.11: a hook that called window.add deadlocked (the window's lock was held)."""
    window = ContextWindow(max_tokens=200)
    notes: list[str] = []

    async def hook(messages: list[Message]) -> None:
        note = Message.create("assistant", f"(archived {len(messages)} messages)", priority="low")
        notes.append(note.id)
        await window.add(note)

    window.set_eviction_hook(hook)

    async def conversation() -> None:
        for i in range(30):
            await window.add(Message.create("user", text_of(15, i)))

    await asyncio.wait_for(conversation(), timeout=30)
    assert notes and window.compression_history
    assert_invariants(window)


async def test_reserved_metadata_keys_are_rejected() -> None:
    """Issue 18.11: a message carrying the summary key was taken for the summary (two: one dropped)."""
    window = ContextWindow(max_tokens=500)
    await window.add(Message.create("user", "hello"))
    before = snapshot(window)
    for key in (SUMMARY_METADATA_KEY, TRUNCATED_METADATA_KEY):
        with pytest.raises(InvalidMessageError, match=f"metadata.{key}: got 3; allowed no value"):
            await window.add(Message.create("user", "hello again", metadata={key: 3}))
    assert snapshot(window) == before


async def test_messages_are_immutable_so_the_token_total_stays_exact() -> None:
    """Issue 18.11: `.messages` handed out live objects; changing one made the running total wrong."""
    window = ContextWindow(max_tokens=500)
    message = Message.create("user", "short")
    await window.add(message)
    await window.add(
        Message.create("assistant", "", tool_calls=[ToolCall(id="c1", name="f", arguments={"q": 1})])
    )
    total = window.token_count
    with pytest.raises(dataclasses.FrozenInstanceError):
        window.messages[0].content = text_of(300)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.pinned = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        window.messages[1].tool_calls.append(ToolCall(id="c2", name="g"))  # type: ignore[attr-defined]
    assert window.token_count == total
    assert_invariants(window)
    window.pin(message.id)
    assert window.get(message.id).pinned and not message.pinned  # pinning replaced the window's copy
    assert window.pinned_count == 1


async def test_a_pin_made_while_the_summarizer_runs_is_honoured() -> None:
    summarizer = ScriptedSummarizer(hang=True)
    window = ContextWindow(max_tokens=200, summarizer=summarizer, summarizer_timeout=5.0)
    first = Message.create("user", "remember: " + text_of(12))
    await window.add(first)
    for i in range(8):
        await window.add(Message.create("user", text_of(15, i)))
    trigger = asyncio.ensure_future(window.add(Message.create("user", text_of(60))))
    await summarizer.started.wait()
    window.pin(first.id)  # the plan in flight evicts it: the window plans again
    summarizer.release()
    await trigger
    assert window.get(first.id).pinned
    assert_invariants(window)


async def test_summary_cannot_be_pinned() -> None:
    window = ContextWindow(max_tokens=150)
    for i in range(20):
        await window.add(Message.create("user", text_of(15, i)))
    summary = window.summary
    assert summary is not None
    with pytest.raises(
        InvalidArgumentError, match="message_id: got .*allowed the id of a conversation message"
    ):
        window.pin(summary.id)


# -- extend: a batch (a history) in one go ------------------------------------------------------------


async def test_extend_adds_a_long_history_with_one_compression() -> None:
    window = ContextWindow(max_tokens=2000, compression_ratio=0.8)
    await window.add(Message.create("system", "Be brief."))
    history = [
        Message.create("user" if i % 2 == 0 else "assistant", f"turn {i}: " + text_of(40, i))
        for i in range(300)
    ]
    record = await window.extend(history)
    assert record is not None and len(window.compression_history) == 1
    assert record.messages_before == 301 and record.removed_count > 250
    assert_invariants(window)
    kept = [m.id for m in window.messages if not is_summary(m) and m.role is not Role.SYSTEM]
    assert kept == [m.id for m in history[-len(kept) :]]  # the newest turns stay, in order
    handed = {m.id for m in window.evicted_messages}
    assert {m.id for m in history} == handed | set(kept)  # the rest went to the queue: nothing lost
    assert window.messages[0].content == "Be brief." and window.summary is window.messages[1]


async def test_extend_is_all_or_nothing() -> None:
    window = ContextWindow(max_tokens=500)
    await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c1", name="f")]))
    before = snapshot(window)
    good = Message.create("tool", "result", tool_call_id="c1")
    for bad, error, match in (
        (Message.create("tool", "again", tool_call_id="c1"), ToolCallPairingError, "tool_call_id: got 'c1'"),
        (Message.create("user", "x", metadata={SUMMARY_METADATA_KEY: 1}), InvalidMessageError, "metadata"),
        (good, InvalidArgumentError, "ids that differ within the batch"),
    ):
        with pytest.raises(error, match=match):
            await window.extend([good, Message.create("user", "fine"), bad])
        assert snapshot(window) == before
    with pytest.raises(InvalidArgumentError, match="messages: got 'hello'"):
        await window.extend("hello")  # type: ignore[arg-type]
    call = ToolCall(id="c2", name="g")
    await window.extend(
        [
            good,
            Message.create("assistant", "", tool_calls=[call]),
            Message.create("tool", "r2", tool_call_id="c2"),
        ]
    )
    assert window.pending_tool_calls == frozenset()
    assert_invariants(window)


# -- check_fits: the budget decision of extend(), without adding ---------------------------------------

_KINDS = st.sampled_from(["user", "assistant", "system", "pinned", "critical", "calls"])


async def _window_of(
    max_tokens: int, specs: list[tuple[str, int]], prefix: str
) -> tuple[ContextWindow, list[str]]:
    """A window of ``specs`` (added one by one, those that fit) and its pending calls."""
    window = ContextWindow(max_tokens=max_tokens)
    for number, (kind, size) in enumerate(specs):
        with contextlib.suppress(ContextBudgetError):
            await window.add(_spec_message(kind, size, f"{prefix}{number}"))
    return window, sorted(window.pending_tool_calls)


def _spec_message(kind: str, size: int, call_id: str) -> Message:
    text = text_of(size, size)
    if kind == "calls":
        return Message.create("assistant", "", tool_calls=[ToolCall(id=call_id, name="lookup")])
    if kind == "pinned":
        return Message.create("user", text, pinned=True)
    if kind == "critical":
        return Message.create("assistant", text, priority="critical")
    return Message.create(kind, text)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_tokens=st.integers(min_value=100, max_value=500),
    state=st.lists(st.tuples(_KINDS, st.integers(min_value=1, max_value=120)), max_size=12),
    batch=st.lists(st.tuples(_KINDS, st.integers(min_value=1, max_value=120)), max_size=4),
    answer_pending=st.booleans(),
)
def test_check_fits_raises_exactly_when_extend_would_and_changes_nothing(
    max_tokens: int, state: list[tuple[str, int]], batch: list[tuple[str, int]], answer_pending: bool
) -> None:
    async def scenario() -> None:
        checked, pending = await _window_of(max_tokens, state, "c")
        extended, _ = await _window_of(max_tokens, state, "c")
        messages = [_spec_message(kind, size, f"b{n}") for n, (kind, size) in enumerate(batch)]
        if answer_pending:
            messages += [Message.create("tool", "result", tool_call_id=call_id) for call_id in pending]
        if not messages:
            return
        before = snapshot(checked)
        try:
            checked.check_fits(messages)
        except ContextBudgetError:
            fits = False
        else:
            fits = True
        assert snapshot(checked) == before and all(m.token_count == 0 for m in messages)
        event("fits" if fits else "refused")
        try:
            await extended.extend(messages)
        except ContextBudgetError:
            assert not fits, "check_fits passed, extend refused"
        else:
            assert fits, "check_fits refused, extend took the batch"

    asyncio.run(scenario())


async def test_check_fits_of_a_lone_tool_result_matches_extend() -> None:
    """A single tool result keeps the unit it joins (extend plans it as one message), so check_fits must
    not count on evicting that unit: it said the answer fit, then extend refused it (found by the state
    machine of tests/core/conversations/test_manager_state_machine.py)."""
    window = ContextWindow(max_tokens=200)
    await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c1", name="lookup")]))
    room = window.max_tokens - window.token_count
    words = 1
    while COUNTER.count_message(Message.create("user", "word " * (words + 1), pinned=True)) <= room:
        words += 1
    await window.add(Message.create("user", "word " * words, pinned=True))  # fills the window exactly
    answer = Message.create("tool", "", tool_call_id="c1")
    before = snapshot(window)
    with pytest.raises(ContextBudgetError, match="max_tokens: got 200"):
        await window.extend([answer])
    with pytest.raises(ContextBudgetError, match="max_tokens: got 200"):
        window.check_fits([answer])
    assert snapshot(window) == before


async def test_check_fits_checks_the_batch_like_extend() -> None:
    window = ContextWindow(max_tokens=300)
    await window.add(Message.create("user", "hello"))
    with pytest.raises(ToolCallPairingError, match="tool_call_id: got 'nope'"):
        window.check_fits([Message.create("tool", "x", tool_call_id="nope")])
    with pytest.raises(InvalidArgumentError, match="messages"):
        window.check_fits(Message.create("user", "x"))  # type: ignore[arg-type]
    window.check_fits([])
    window.enable_compression = False
    with pytest.raises(ContextBudgetError, match="compression is disabled"):
        window.check_fits([Message.create("user", text_of(400))])


@pytest.mark.parametrize("timestamp", [1e20, -1e12, float("nan"), float("inf"), "yesterday", None])
async def test_a_message_with_a_timestamp_no_date_has_is_refused_at_the_door(timestamp: object) -> None:
    """A hand-built message dated 1e20 (or NaN, or a string) entered the window; once evicted, memory could
    not date it (OverflowError) and the eviction writer retried the whole batch, with every good message in
    it, for good: nothing evicted reached memory again. The window now refuses such a message."""
    window = ContextWindow(2_000)
    good = Message.create("user", "kept")
    await window.add(good)
    for bad in (
        Message(role=Role.USER, content="a plain message", timestamp=timestamp),  # type: ignore[arg-type]
        Message(role=Role.USER, content="with metadata", metadata={"k": 1}, timestamp=timestamp),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidMessageError, match="timestamp") as raised:
            await window.add(bad)
        assert "year 9999" in str(raised.value)
        with pytest.raises(InvalidMessageError, match="timestamp"):
            await window.extend([Message.create("user", "batch"), bad])
    assert list(window.messages) == [good]
    for edge in (-62135596800.0, 0, 253402300799.0):  # year 1, the epoch (an int), year 9999
        await window.add(Message(role=Role.USER, content=f"dated {edge}", timestamp=edge))
    assert len(window.messages) == 4


async def test_restore_takes_messages_the_counter_gives_no_tokens_and_refuses_uncounted_ones() -> None:
    """A custom counter may count a message 0 tokens (its text only, and a tool-call-only message has
    none): the window took such a message but restore() refused it as not counted, so a persisted
    conversation holding one could not be resumed. A message never counted is still refused."""

    class ContentWords:
        encoding_name = "content-words"

        def count(self, text: str) -> int:
            return len(text.split())

        def count_message(self, message: Message) -> int:
            return len(message.content.split())

    window = ContextWindow(max_tokens=100, counter=ContentWords())
    await window.add(Message.create("user", "look it up"))
    await window.add(Message.create("assistant", "", tool_calls=[ToolCall(id="c1", name="f")]))
    await window.add(Message.create("tool", "", tool_call_id="c1"))
    assert [message.token_count for message in window.messages] == [3, 0, 0]
    again = ContextWindow(max_tokens=100, counter=ContentWords())
    await again.restore(window.messages, [])
    assert again.messages == window.messages and again.token_count == window.token_count == 3 + 3
    with pytest.raises(InvalidArgumentError, match="token counts set"):
        await ContextWindow(max_tokens=100).restore([Message.create("user", "never counted")], [])


async def test_restore_with_fit_compresses_a_window_too_large_or_leaves_the_window_unchanged() -> None:
    """restore(fit=True) of messages exceeding max_tokens compresses them to the target at once (the
    compression recorded and journaled like an add's); when its protected messages cannot fit, or
    compression is disabled, it refuses them on max_tokens and the window is the one before."""
    wide = ContextWindow(max_tokens=4000)
    for turn in range(30):
        await wide.add(Message.create("user", f"turn {turn}: {text_of(20, turn)}"))
    journal: list[str] = []
    window = ContextWindow(max_tokens=300)
    window.set_journal(lambda kind, payload: journal.append(kind))
    record = await window.restore(wide.messages, [], fit=True)
    assert record is not None and record.tokens_before == wide.token_count
    assert window.token_count <= window.target_tokens and window.compression_history == [record]
    assert journal == ["compress"]
    assert window.messages[-1].content.startswith("turn 29")
    assert await ContextWindow(max_tokens=4000).restore(wide.messages, [], fit=True) is None  # it fits

    protected = ContextWindow(max_tokens=4000)
    await protected.add(Message.create("system", text_of(400)))
    await protected.add(Message.create("user", "hello"))
    for enable_compression, messages in ((True, protected.messages), (False, wide.messages)):
        window = ContextWindow(max_tokens=300, enable_compression=enable_compression)
        kept = Message.create("user", "kept")
        await window.add(kept)
        with pytest.raises(InvalidArgumentError, match=r"^max_tokens: got 300; allowed at least \d+"):
            await window.restore(messages, [], fit=True)
        assert window.messages == (kept,) and window.compression_history == []


async def test_a_long_running_window_keeps_the_newest_compression_records() -> None:
    """compression_history grew by a record per compression for the life of the window (about 300 bytes
    each: 6 MB after 20,000 compressions of one small window). It keeps the newest
    COMPRESSION_HISTORY_LIMIT records; compression_count counts every compression."""
    from context_manager.core.context_window import COMPRESSION_HISTORY_LIMIT

    seen: list[CompressionRecord] = []
    window = ContextWindow(max_tokens=120, eviction_hook=lambda messages: None)
    window.set_compression_observer(seen.append)
    turn = 0
    while len(seen) < COMPRESSION_HISTORY_LIMIT + 150:
        await window.add(Message.create("user", f"Build {turn} of the payments service passed."))
        turn += 1
    assert window.compression_count == len(seen)
    assert window.compression_history == seen[-COMPRESSION_HISTORY_LIMIT:]
    assert await window.compress(30) is not None
    assert window.compression_count == len(seen)
    assert len(window.compression_history) == COMPRESSION_HISTORY_LIMIT
    assert window.compression_history[-1] is seen[-1]
    # a history restored longer than the limit keeps its newest records, and counts the others
    fresh = ContextWindow(max_tokens=120)
    await fresh.restore(window.messages, seen, earlier_compressions=5)
    assert fresh.compression_history == seen[-COMPRESSION_HISTORY_LIMIT:]
    assert fresh.compression_count == len(seen) + 5
