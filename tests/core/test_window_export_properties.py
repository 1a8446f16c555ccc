"""Property-based: the window driven as an agent loop drives it, its exports checked after every call.

``test_context_window.py`` answers every tool call at once and checks the window; this mixes what a real
loop does: results arriving late (after the user spoke), in any order or never, a second result for a call
(refused, nothing changed), call ids made again by a server numbering the calls of each response (held
renamed ``id~n`` once the earlier call has its result; refused while it waits), pins and unpins, explicit
compressions, batches, budgeted views, text in many scripts with emoji, combining marks and invisible
characters. After every call the window and the exports of it (and of a budgeted view) must hold:

* the window within ``max_tokens``, a view within its budget;
* prompt-cache breakpoints (Anthropic ``cache_control`` kept from an import, some of 1 hour) on system
  messages, requests, answers, calls and results: the Anthropic export within the API's 4 and its ttl order;
* every tool result after its call; each export accepted by its provider (``tests/provider_rules.py``);
* system, pinned and critical messages kept; the newest user request present with its head and tail;
* the OpenAI export, added to a new window as a history, exports again the same (ids, order, pairing);
* nothing silently lost: every message added is in the window or queued as evicted (the full text of a
  message cut), and an export leaves out only calls still waiting for their result.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from context_manager.core.compression import TRUNCATED_METADATA_KEY, is_summary
from context_manager.core.context_window import ContextWindow
from context_manager.core.errors import ContextBudgetError, ToolCallPairingError
from context_manager.core.messages import ANTHROPIC_CACHE_CONTROL_METADATA_KEY, Message, Role, ToolCall
from context_manager.core.provider_formats import (
    to_anthropic_messages,
    to_openai_messages,
    to_openai_responses_input,
)
from context_manager.core.tokens import REPLY_PRIMING_TOKENS, TokenCounter, get_token_counter
from tests.provider_rules import anthropic_violations, openai_responses_violations, openai_violations

COUNTER = get_token_counter()

PIECES = [
    "alpha ",
    "beta. ",
    " ",
    "\n",
    "é",
    "日本語",
    "😀",
    "👨\u200d👩\u200d👧",
    "e\u0301",
    "\u200b",
    "\u202e",
    "ﷺ",
    "\r\n",
    "𝔘",
    "x",
    "١٢٣",
    "\t",
]


def text_of(size: int, seed: int) -> str:
    """A text of ``size`` pieces mixing scripts, emoji, combining marks and invisible characters."""
    return "".join(PIECES[(seed * 7 + i * 3) % len(PIECES)] for i in range(max(size, 1)))


def split_cut(content: str) -> tuple[str, str]:
    head, _, rest = content.partition("\n[... ")
    _, _, tail = rest.partition(" tokens omitted ...]\n")
    return head, tail


rarely = st.sampled_from([False] * 9 + [True])
message_spec = st.tuples(
    st.sampled_from(
        ["user"] * 4
        + ["assistant"] * 3
        + ["calls", "numbered"] * 2
        + ["result"] * 2
        + ["late_result", "system"]
    ),
    st.integers(min_value=0, max_value=300),  # size
    st.integers(min_value=0, max_value=50),  # seed
    st.sampled_from(["low", "normal", "normal", "high"] * 3 + ["critical"]),
    rarely,  # pinned
)
operation = st.one_of(
    st.tuples(st.just("add"), message_spec),
    st.tuples(st.just("batch"), st.lists(message_spec, min_size=1, max_size=6)),
    st.tuples(st.just("again"), st.integers(min_value=0, max_value=50)),  # a second result / a call id again
    st.tuples(st.just("pin"), st.tuples(st.integers(min_value=0, max_value=100), st.booleans())),
    st.tuples(st.just("compress"), st.integers(min_value=1, max_value=100)),
    st.tuples(st.just("view"), st.integers(min_value=1, max_value=120)),
)


@dataclass
class Model:
    added: dict[str, str] = field(default_factory=dict)  # id -> full text
    protected: set[str] = field(default_factory=set)
    latest_user: str | None = None
    calls: list[str] = field(default_factory=list)  # every call id made, oldest first
    numbers: int = 0


def snapshot(window: ContextWindow) -> tuple[object, ...]:
    return (
        tuple((m.id, m.content, m.token_count, m.pinned) for m in window.messages),
        window.token_count,
        window.pending_tool_calls,
        tuple(m.id for m in window.evicted_messages),
    )


def made_as(call_id: str) -> str:
    """The id the model made for a call the window holds as ``call_id`` (``tool_0~2``: ``tool_0``)."""
    made, _, number = call_id.rpartition("~")
    return made if made and number.isdigit() else call_id


CACHE_CONTROLS = [
    {"type": "ephemeral"},
    {"type": "ephemeral", "ttl": "1h"},
    {"type": "ephemeral", "ttl": "5m"},
]


def cached(size: int, seed: int, metadata: dict[str, object] | None = None) -> dict[str, object]:
    """``metadata`` with, for one message in three, the ``cache_control`` an Anthropic import keeps."""
    metadata = dict(metadata or {})
    if (size + seed) % 3 == 0:
        metadata[ANTHROPIC_CACHE_CONTROL_METADATA_KEY] = CACHE_CONTROLS[(size // 3 + seed) % 3]
    return metadata


def build(spec: tuple[str, int, int, str, bool], pending: list[str], model: Model) -> Message | None:
    kind, size, seed, priority, pinned = spec
    if kind == "numbered":  # a server numbering the calls of each response: tool_0, tool_1 ... every time
        waiting = {made_as(call_id) for call_id in pending}
        calls = [ToolCall(f"tool_{i}", "lookup", {"i": i}) for i in range(1 + seed % 3)]
        if any(call.id in waiting for call in calls):
            return None  # the server would not reuse the id of a call still waiting (refusal: see "again")
        pending.extend(call.id for call in calls)
        thinking = None
        if seed % 4 == 0:  # interleaved thinking: a thinking block before each call (their ids made again)
            thinking = []
            for number, call in enumerate(calls):
                thinking.append(thinking_block(f"{seed}-{model.numbers}-{number}"))
                thinking.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                )
            model.numbers += 1
        return Message.create(
            "assistant", "", tool_calls=calls, priority=priority, pinned=pinned, thinking=thinking
        )
    if kind == "calls":
        calls = []
        for _ in range(1 + seed % 3):
            model.numbers += 1
            # ids as OpenAI makes them, as some OpenAI-compatible servers do (Anthropic refuses them unmapped)
            # and as gateways do, longer than the 40 characters OpenAI takes
            number = model.numbers
            made = (f"call_{number}", f"functions.f:{number}", f"gateway-{number:036d}")[number % 3]
            calls.append(ToolCall(made, "lookup", {}))
        pending.extend(call.id for call in calls)
        content = text_of(size, seed) if seed % 2 else ""
        return Message.create(
            "assistant",
            content,
            tool_calls=calls,
            priority=priority,
            pinned=pinned,
            metadata=cached(size, seed),
        )
    if kind in ("result", "late_result"):
        if not pending:
            return None
        call_id = pending.pop(0 if kind == "result" else -1)  # oldest first, or newest first
        if seed % 2:  # quoted as the model made it (the window answers the newest call of that id)
            call_id = made_as(call_id)
        content = text_of(size, seed) if size % 5 else ""  # some results are empty
        metadata = cached(size, seed, {"is_error": True} if seed % 7 == 0 else {})
        return Message.create(
            "tool", content, tool_call_id=call_id, priority=priority, pinned=pinned, metadata=metadata
        )
    if kind == "assistant" and seed % 3 == 0:  # a response with thinking (two in a row: two turns)
        model.numbers += 1
        thinking = [thinking_block(f"{seed}-{model.numbers}")]
        return Message.create(
            kind,
            text_of(size, seed),
            priority=priority,
            pinned=pinned,
            thinking=thinking,
            metadata=cached(size, seed),
        )
    return Message.create(
        kind, text_of(size, seed), priority=priority, pinned=pinned, metadata=cached(size, seed)
    )


def thinking_block(name: str) -> dict[str, str]:
    return {"type": "thinking", "thinking": f"thinking {name}", "signature": f"sig-{name}"}


def check_thinking(
    messages: list[Message] | tuple[Message, ...], anthropic: dict[str, object], pending: frozenset[str]
) -> None:
    """Each message's thinking goes out whole, in order, the calls between its blocks where they were made."""
    turns: list[dict[str, list[dict[str, object]]]] = anthropic["messages"]  # type: ignore[assignment]
    exported = [block for turn in turns for block in turn["content"]]
    signatures = [block["signature"] for block in exported if block["type"] == "thinking"]
    for message in messages:
        own = [block["signature"] for block in message.thinking if block["type"] == "thinking"]
        if not own or own[0] not in signatures:
            continue  # not exported (its calls wait for their results)
        at = signatures.index(own[0])
        assert signatures[at : at + len(own)] == own, (own, signatures)
        if any(block["type"] == "tool_use" for block in message.thinking) and all(
            call.id not in pending for call in message.tool_calls
        ):  # (a call still waiting is left out, and its place with it)
            start = next(i for i, b in enumerate(exported) if b.get("signature") == own[0])
            kinds = [b["type"] for b in exported[start:] if b["type"] != "text"][: len(message.thinking)]
            assert kinds == [block["type"] for block in message.thinking], (kinds, message.thinking)


async def check_exports(messages: list[Message] | tuple[Message, ...], pending: frozenset[str]) -> None:
    openai = to_openai_messages(messages)
    anthropic = to_anthropic_messages(messages)
    assert openai_violations(openai) == [], openai
    assert anthropic_violations(anthropic) == [], anthropic
    responses = to_openai_responses_input(messages)
    assert openai_responses_violations(responses) == [], responses
    check_thinking(messages, anthropic, pending)
    await check_round_trip(openai)
    # Nothing is left out but calls still waiting for their result (and their message if it has no text).
    exported_results = {m["tool_call_id"] for m in openai if m["role"] == "tool"}
    exported_calls = {call["id"] for m in openai for call in m.get("tool_calls") or ()}
    exported_texts = [m["content"] for m in openai]
    for message in messages:
        if message.role is Role.TOOL:
            assert openai_call_id(message.tool_call_id) in exported_results
        elif message.content:
            assert message.content in exported_texts
        for call in message.tool_calls:
            assert (openai_call_id(call.id) in exported_calls) is (call.id not in pending)


async def check_round_trip(openai: list[dict[str, object]]) -> None:
    """The OpenAI export, added to a new window as a history (as ``add_messages`` does), exports the same."""
    again = ContextWindow(max_tokens=1_000_000)
    await again.extend(
        [
            Message.create(
                m["role"],
                m["content"] or "",
                tool_calls=m.get("tool_calls"),  # type: ignore[arg-type]
                tool_call_id=m.get("tool_call_id"),  # type: ignore[arg-type]
                name=m.get("name"),  # type: ignore[arg-type]
            )
            for m in openai
        ]
    )
    assert to_openai_messages(again.messages) == openai


def openai_call_id(call_id: str | None) -> str | None:
    """``call_id`` as an OpenAI export gives it: made to fit the 40 characters OpenAI takes if longer."""
    if call_id is None or len(call_id) <= 40:
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:10]
    return re.sub(r"[^a-zA-Z0-9_-]", "_", call_id)[:29] + "_" + digest


def check_newest_request(message: Message, full_text: str) -> None:
    if TRUNCATED_METADATA_KEY not in message.metadata:
        assert message.content == full_text
        return
    event("newest request cut")
    head, tail = split_cut(message.content)
    assert head and tail, message.content
    assert full_text.startswith(head) and full_text.endswith(tail)


async def run(
    max_tokens: int, ratio: float, ops: list[tuple[str, object]], counter: TokenCounter | None = None
) -> None:
    window = ContextWindow(max_tokens=max_tokens, compression_ratio=ratio, counter=counter)
    model = Model()
    for kind, argument in ops:
        before = snapshot(window)
        try:
            if kind in ("add", "batch"):
                pending = sorted(window.pending_tool_calls)
                specs = [argument] if kind == "add" else argument
                built = [build(spec, pending, model) for spec in specs]  # type: ignore[arg-type, union-attr]
                batch = [message for message in built if message is not None]
                if not batch:
                    continue
                record = await (window.add(batch[0]) if kind == "add" else window.extend(batch))
                if record is not None:
                    event("compressed" + (" with cuts" if record.truncated_count else ""))
                for message in batch:
                    held = next((m for m in window.messages if m.id == message.id), None)
                    if held is not None and held.tool_calls != message.tool_calls:
                        event("call ids made again: held renamed")
                    model.added[message.id] = message.content
                    model.calls.extend(call.id for call in message.tool_calls)
                    if message.is_protected:
                        model.protected.add(message.id)
                    if message.role is Role.USER:
                        model.latest_user = message.id
            elif kind == "again" and model.calls:
                call_id = model.calls[int(argument) % len(model.calls)]  # type: ignore[call-overload]
                waiting = window.resolve_tool_call_id(call_id)  # the newest call of that id, unanswered
                if int(argument) % 2:  # a result quoting the id: answers only a call still waiting
                    extra = Message.create("tool", "again", tool_call_id=call_id)
                else:  # the id in a new call: refused only while the newest call of that id waits
                    extra = Message.create("assistant", "", tool_calls=[ToolCall(call_id, "lookup")])
                try:
                    await window.add(extra)
                except ToolCallPairingError:
                    assert (waiting is None) if extra.role is Role.TOOL else (waiting is not None)
                    event(
                        "second result refused" if extra.role is Role.TOOL else "id of a waiting call refused"
                    )
                    assert snapshot(window) == before
                else:
                    if extra.role is Role.TOOL:
                        assert waiting is not None
                        assert window.get(extra.id).tool_call_id == waiting
                    else:
                        assert waiting is None
                        [held] = window.get(extra.id).tool_calls
                        if held.id != call_id:
                            event("a call id made again: held renamed")
                        model.calls.append(call_id)
                    model.added[extra.id] = extra.content
            elif kind == "pin":
                index, pin = argument  # type: ignore[misc]
                messages = window.messages
                if messages:
                    target = messages[index % len(messages)]
                    if not is_summary(target):
                        (window.pin if pin else window.unpin)(target.id)
                        if pin:
                            model.protected.add(target.id)
                        elif not (target.role is Role.SYSTEM or target.priority.value == "critical"):
                            model.protected.discard(target.id)
            elif kind == "compress":
                await window.compress(max(1, max_tokens * int(argument) // 100))  # type: ignore[call-overload]
            elif kind == "view":
                budget = max(1, max_tokens * int(argument) // 100)  # type: ignore[call-overload]
                try:
                    view = window.select(budget)
                except ContextBudgetError:
                    event("view refused: protected messages exceed the budget")
                    assert snapshot(window) == before
                    continue
                assert snapshot(window) == before
                assert sum(m.token_count for m in view) + (REPLY_PRIMING_TOKENS if view else 0) <= budget
                await check_exports(view, window.pending_tool_calls)
                if model.latest_user is not None:
                    request = next(m for m in view if m.id == model.latest_user)
                    check_newest_request(request, model.added[request.id])
        except ContextBudgetError:
            event("refused: protected messages cannot fit")
            assert snapshot(window) == before

        messages = window.messages
        counted = sum(window.counter.count_message(m) for m in messages)
        total = counted + (REPLY_PRIMING_TOKENS if messages else 0)
        assert window.token_count == total <= max_tokens
        calls_seen: set[str] = set()
        for message in messages:
            assert calls_seen.isdisjoint(call.id for call in message.tool_calls)  # each call id held once
            calls_seen.update(call.id for call in message.tool_calls)
            if message.role is Role.TOOL:
                assert message.tool_call_id in calls_seen
        ids = {message.id for message in messages}
        assert model.protected <= ids
        evicted = {message.id: message for message in window.evicted_messages}
        assert set(model.added) <= ids | set(evicted)
        for message in messages:
            if TRUNCATED_METADATA_KEY in message.metadata:
                assert evicted[message.id].content == model.added[message.id]
        if model.latest_user is not None:
            check_newest_request(window.get(model.latest_user), model.added[model.latest_user])
        await check_exports(messages, window.pending_tool_calls)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_tokens=st.integers(min_value=100, max_value=900),
    ratio=st.floats(min_value=0.3, max_value=0.95),
    ops=st.lists(operation, min_size=5, max_size=40),
)
def test_window_and_its_exports_keep_every_rule_whatever_the_agent_loop_does(
    max_tokens: int, ratio: float, ops: list[tuple[str, object]]
) -> None:
    asyncio.run(run(max_tokens, ratio, ops))


numbered_spec = st.tuples(
    st.sampled_from(["user", "numbered", "numbered", "result", "result", "late_result", "assistant"]),
    st.integers(min_value=0, max_value=120),  # size
    st.integers(min_value=0, max_value=50),  # seed
    st.sampled_from(["low", "normal", "normal", "high"]),
    st.sampled_from([False] * 19 + [True]),  # pinned
)
numbered_operation = st.one_of(
    st.tuples(st.just("add"), numbered_spec),
    st.tuples(st.just("batch"), st.lists(numbered_spec, min_size=1, max_size=6)),
    st.tuples(st.just("again"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("compress"), st.integers(min_value=1, max_value=100)),
    st.tuples(st.just("view"), st.integers(min_value=1, max_value=120)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_tokens=st.integers(min_value=300, max_value=1500),
    ratio=st.floats(min_value=0.3, max_value=0.95),
    ops=st.lists(numbered_operation, min_size=10, max_size=50),
)
def test_call_ids_made_again_every_response_keep_every_rule(
    max_tokens: int, ratio: float, ops: list[tuple[str, object]]
) -> None:
    """A server numbering the calls of each response (``tool_0`` every turn): the window holds a call made
    again as ``tool_0~2`` once the earlier one has its result, results quoting ``tool_0`` answer the newest
    call of that id, and compressions, budgeted views and both exports keep every call with its result."""
    asyncio.run(run(max_tokens, ratio, ops))


class RequestBodyCounter:
    """Counts a message as the JSON of its request body with the real o200k tokenizer: framing and text
    together, not additive (JSON escapes non-ASCII text and control characters, ``\\ud83d``...)."""

    encoding_name = "o200k_base (request JSON)"

    def count(self, text: str) -> int:
        return COUNTER.count(text)

    def count_message(self, message: Message) -> int:
        body: dict[str, object] = {"role": message.role.value, "content": message.content}
        if message.tool_calls:
            body["tool_calls"] = [[call.id, call.name, call.arguments] for call in message.tool_calls]
        if message.tool_call_id is not None:
            body["tool_call_id"] = message.tool_call_id
        return COUNTER.count(json.dumps(body))


FAMILY_REQUEST = (
    "user",
    3,
    1,
    "normal",
    False,
)  # '\U0001f468\u200d\U0001f469\u200d\U0001f467\u202e\U0001d518'


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_tokens=st.integers(min_value=20, max_value=600),
    ratio=st.floats(min_value=0.3, max_value=0.95),
    ops=st.lists(operation, min_size=3, max_size=30),
)
@example(max_tokens=41, ratio=0.5, ops=[("add", FAMILY_REQUEST), ("add", FAMILY_REQUEST)])
def test_every_rule_holds_with_a_counter_that_counts_framing_and_text_together(
    max_tokens: int, ratio: float, ops: list[tuple[str, object]]
) -> None:
    """A user's counter need not be additive: a cut copy it counts above the room planned for it is cut
    shorter, or the change is refused; the window and its views never exceed their budgets."""
    asyncio.run(run(max_tokens, ratio, ops, RequestBodyCounter()))


async def test_an_emoji_family_request_added_twice_at_41_tokens_keeps_whole_characters_at_both_ends() -> None:
    """Found by the property above: max_tokens 41, ratio 0.5, a counter of the request JSON; the second
    request of an emoji family was cut to the head '\U0001f468\u200d' (half a ZWJ sequence) and no tail.
    A cut of the newest request now keeps whole grapheme clusters at both ends, or the add is refused with
    the window as it was."""
    text = text_of(3, 1)
    assert text.startswith("\U0001f468\u200d\U0001f469\u200d\U0001f467")
    for counter in (RequestBodyCounter(), None):
        window = ContextWindow(max_tokens=41, compression_ratio=0.5, counter=counter)
        for _ in range(2):
            before = snapshot(window)
            request = Message.create("user", text)
            try:
                await window.add(request)
            except ContextBudgetError as error:
                assert "max_tokens: got 41; allowed" in str(error)
                assert snapshot(window) == before
                continue
            held = window.get(request.id)
            assert window.token_count <= 41
            if TRUNCATED_METADATA_KEY in held.metadata:
                head, tail = split_cut(held.content)
                assert head and tail, held.content
                assert head in ("\U0001f468\u200d\U0001f469\u200d\U0001f467", text[:-1], text[:-2])
                assert text.endswith(tail) and tail[0] in "\u202e\U0001d518\U0001f468", held.content
            else:
                assert held.content == text


async def test_the_default_counter_cuts_the_newest_request_between_whole_characters() -> None:
    """The default counter cuts at a token: a request of emoji families was cut inside a ZWJ sequence
    ('\U0001f468\u200d\U0001f469\u200d' kept). It now keeps whole families at both ends, with its
    marker counting what it left out."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    for max_tokens in range(60, 200, 7):
        window = ContextWindow(max_tokens=max_tokens, compression_ratio=0.5)
        request = Message.create("user", family * 40)
        await window.add(request)
        held = window.get(request.id)
        assert TRUNCATED_METADATA_KEY in held.metadata
        head, tail = split_cut(held.content)
        assert head and tail and not head.replace(family, "") and not tail.replace(family, ""), held.content
        assert window.token_count <= max_tokens
